//! Helpers shared by Hearth's end-to-end tests (`tests/`), benchmarks
//! (`agent/benches/`) and developer tasks (`xtask/`); never part of the
//! agent itself.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

/// CPU-bound programs of several kinds (hashing, compression, an
/// interpreter, short-lived processes in a loop), as on a busy machine.
pub const BUSY_PROGRAMS: [&[&str]; 4] = [
    &["sha256sum", "/dev/zero"],
    &["sh", "-c", "exec gzip -1 -c < /dev/urandom > /dev/null"],
    &[
        "python3",
        "-c",
        "def f(n): return n if n < 2 else f(n-1) + f(n-2)\nwhile True: f(20)",
    ],
    &[
        "sh",
        "-c",
        "while :; do ls -R /usr/share/doc > /dev/null; done",
    ],
];

/// Every network event, by its command-line name.
pub const NETWORK_EVENTS: [&str; 6] = [
    "tx-bytes",
    "rx-bytes",
    "retransmits",
    "resets",
    "connect-latency",
    "drops",
];

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Makes `command` start in its own process group and be killed when the
/// process that started it dies, even without running its destructors
/// (killed by a timeout, say), so that no child outlives a run and skews
/// the next one.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs before exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// `argv` as a command with its output discarded, dying with its parent.
pub fn quiet_command(argv: &[&str]) -> Command {
    let mut command = Command::new(argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    command
}
