//! What any user on the node can do to the agent through the files it
//! reads and the paths it is given: libraries truncated while mapped and
//! ELF files with lying or exploding compressed sections (made and run by
//! `nobody`), outputs that are devices, FIFOs or links, a control socket
//! path that is someone's file, and a spool that is read back after a
//! restart. The agent must stay up, keep profiling, replace nothing it did
//! not create, and count what it could not use.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use hearth_tests::{agent::*, *};

/// Retries soon after the backend comes back.
const FAST_RETRY: [(&str, &str); 2] = [
    ("HEARTH_QUEUE__INITIAL_BACKOFF", "100ms"),
    ("HEARTH_QUEUE__MAX_BACKOFF", "500ms"),
];

/// uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// `program args` as `nobody` (no groups), through util-linux's setpriv,
/// which execs it: the PID is the program's.
fn spawn_as_nobody(program: &Path, args: &[&str]) -> Running {
    let child = Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start setpriv (util-linux)");
    Running::from_child(child)
}

/// A temporary directory everyone may enter and read (`nobody` runs the
/// fixtures built in it).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn chown_to_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// Samples of `pid` in the OTLP requests, whatever their frames.
fn otlp_samples_of(requests: &[serde_json::Value], pid: u32) -> u64 {
    requests
        .iter()
        .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
        .filter(|resource| resource["attributes"]["process.pid"] == pid)
        .flat_map(|resource| resource["profiles"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["samples"].as_array().cloned().unwrap_or_default())
        .map(|sample| sample["value"].as_u64().unwrap_or(0))
        .sum()
}

/// `hearth run` exporting over OTLP/gRPC to `endpoint` every second, with
/// its metrics on a free port (returned) and `extra` arguments.
fn start_agent(
    endpoint: &str,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Running, u16) {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "--otlp-endpoint",
        endpoint,
        "--export-interval",
        "1s",
        "--metrics-listen",
        &metrics,
        "--control-socket",
        socket.to_str().unwrap(),
    ];
    args.extend(extra);
    let agent = spawn_agent(&args, env);
    wait_ready(metrics_port, Duration::from_secs(20));
    (agent, metrics_port)
}

fn metrics_of(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(
        status, 200,
        "the agent's metrics endpoint stopped answering"
    );
    body
}

#[test]
fn a_library_truncated_while_mapped_by_an_unprivileged_user_is_counted_not_fatal() {
    require_root();
    let dir = shared_dir();
    let library = build_padded_library(dir.path());
    let fixture = build_c(
        "shrink_lib.c",
        dir.path(),
        &["-O2", "-fno-omit-frame-pointer"],
    );
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    chown_to_nobody(&scratch);

    let out = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("grpc", 0, &out.path().join("requests.jsonl"));
    let (agent, metrics_port) = start_agent(
        &receiver.endpoint(),
        &out.path().join("control.sock"),
        &["--unwind", "dwarf"],
        &[],
    );
    // Named for four windows, then truncated, then sampled at new
    // addresses for five more.
    let copy = scratch.join("libhot-copy.so");
    let mut target = spawn_as_nobody(
        &fixture,
        &[library.to_str().unwrap(), copy.to_str().unwrap(), "4", "5"],
    );
    let pid = target.pid();
    assert!(
        target.wait_for(Duration::from_secs(40)).success(),
        "shrink_lib failed"
    );
    let (full, cut) = (
        fs::metadata(&library).unwrap().len(),
        fs::metadata(&copy).unwrap().len(),
    );
    eprintln!("library {full} bytes, truncated to {cut}");
    assert!(
        cut + 64 * 1024 < full,
        "the fixture did not cut the symbol tables off"
    );
    std::thread::sleep(patience(Duration::from_millis(2500)));

    let metrics = metrics_of(metrics_port);
    let faults = metric(&metrics, "hearth_mapped_file_faults_total").unwrap_or(0.0);
    let shrunk = metric(
        &metrics,
        "hearth_symbolize_objects_skipped_total{reason=\"shrunk\"}",
    )
    .unwrap_or(0.0);
    let requests = receiver.requests();
    let named = otlp_leaf_counts(&requests, pid, &["leaf_a", "leaf_b"]);
    let total = otlp_samples_of(&requests, pid);
    eprintln!(
        "faults absorbed: {faults}; symbolizations thrown away: {shrunk}; samples of the \
         fixture: {total} (leaf_a named {}, leaf_b named {})",
        named[0], named[1]
    );
    let output = terminate(agent, Duration::from_secs(20));
    let log = stderr(&output);
    assert!(
        output.status.success(),
        "the agent did not stop cleanly: {log}"
    );
    assert!(
        faults >= 1.0,
        "no fault was absorbed — did the test reproduce it? {log}"
    );
    assert!(log.contains("shrank while it was read"), "{log}");
    assert!(
        named[0] > 0,
        "leaf_a, sampled before the truncation, is named"
    );
    assert!(
        total > named[0] + named[1],
        "samples after the truncation are exported (as module+offset): {total} vs {named:?}"
    );
}

/// A library with `leaf_a` and `leaf_b` (as libhot.so) and a symbol table
/// of a few hundred KiB after its loaded segments — 4,000 local functions
/// with long names — so that truncating it to its code leaves many pages
/// of a symbolizer's mapping without a file behind them.
fn build_padded_library(dir: &Path) -> PathBuf {
    let mut source = fs::read_to_string(fixture_source("libhot.c")).unwrap();
    for n in 0..4000 {
        source.push_str(&format!(
            "__attribute__((used)) static void padding_function_with_a_long_name_to_fill_the_string_table_{n:04}(void) {{}}\n"
        ));
    }
    let c = dir.join("libpadded.c");
    fs::write(&c, source).unwrap();
    let library = dir.join("libpadded.so");
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-fno-omit-frame-pointer", "-o"])
        .arg(&library)
        .arg(&c)
        .status()
        .unwrap();
    assert!(built.success(), "gcc libpadded.so");
    library
}

/// A copy of `binary` whose `.debug_info` is replaced by a zlib stream of
/// `inflated` zero bytes behind a compression header claiming `claimed`
/// bytes, owned by `nobody` as if they had written it.
fn with_compressed_debug_info(binary: &Path, out: &Path, claimed: u64, inflated: u64) -> PathBuf {
    let stream = out.with_extension("zlib");
    let script = format!(
        "import zlib\nc = zlib.compressobj(9)\nchunk = bytes(1 << 20)\n\
         with open({:?}, 'wb') as f:\n    left = {inflated}\n    while left > 0:\n\
         \x20       n = min(left, len(chunk))\n        f.write(c.compress(chunk[:n]))\n\
         \x20       left -= n\n    f.write(c.flush())\n",
        stream.to_str().unwrap()
    );
    assert!(
        Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success(),
        "making the zlib stream"
    );
    let stream = fs::read(&stream).unwrap();
    let mut elf = fs::read(binary).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let shoff = u64_at(&elf, 0x28) as usize;
    let (shnum, shstrndx) = (u16_at(&elf, 0x3c), u16_at(&elf, 0x3e));
    let names_at = u64_at(&elf, shoff + shstrndx * 64 + 0x18) as usize;
    let header = (0..shnum)
        .map(|i| shoff + i * 64)
        .find(|&h| {
            let name = names_at + u32_at(&elf, h);
            elf[name..].starts_with(b".debug_info\0")
        })
        .expect("the binary has .debug_info (built with -g)");
    while !elf.len().is_multiple_of(8) {
        elf.push(0);
    }
    let at = elf.len() as u64;
    elf.extend_from_slice(&1u32.to_le_bytes()); // ELFCOMPRESS_ZLIB
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&claimed.to_le_bytes());
    elf.extend_from_slice(&1u64.to_le_bytes());
    elf.extend_from_slice(&stream);
    let flags = u64_at(&elf, header + 0x08) | 0x800; // SHF_COMPRESSED
    elf[header + 0x08..header + 0x10].copy_from_slice(&flags.to_le_bytes());
    elf[header + 0x18..header + 0x20].copy_from_slice(&at.to_le_bytes());
    let size = 24 + stream.len() as u64;
    elf[header + 0x20..header + 0x28].copy_from_slice(&size.to_le_bytes());
    fs::write(out, &elf).unwrap();
    fs::set_permissions(out, fs::Permissions::from_mode(0o755)).unwrap();
    chown_to_nobody(out);
    out.to_owned()
}

/// Runs `hearth args` to the end; its output and its peak resident set in KiB.
fn run_measured(args: &[&str], dir: &Path) -> (i32, String, i64) {
    let err_path = dir.join("hearth.stderr");
    // Reaped by wait4 below, which std's wait cannot do: it drops the rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(hearth_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start hearth");
    let mut status = 0;
    // SAFETY: a zeroed rusage for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, fs::read_to_string(err_path).unwrap(), usage.ru_maxrss)
}

#[test]
fn compressed_sections_that_lie_or_explode_cost_a_bounded_read() {
    require_root();
    let dir = shared_dir();
    let binary = build_c(
        "two_leaves.c",
        dir.path(),
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let cases = [
        // The header claims 128 TiB (blazesym allocated that up front).
        (
            "lying",
            with_compressed_debug_info(&binary, &dir.path().join("lying"), (1 << 47) - 1, 4096),
        ),
        // 1 GiB of zeros in about 1 MB, behind a header claiming 4 KiB.
        (
            "bomb",
            with_compressed_debug_info(&binary, &dir.path().join("bomb"), 4096, 1 << 30),
        ),
    ];
    for (name, program) in cases {
        let folded = dir.path().join(format!("{name}.folded"));
        let (code, log, peak_kib) = run_measured(
            &[
                "record",
                "--duration",
                "3s",
                "--output",
                folded.to_str().unwrap(),
                "--",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                program.to_str().unwrap(),
                "2.5",
            ],
            dir.path(),
        );
        eprintln!("{name}: exit {code}, peak RSS {} MiB", peak_kib / 1024);
        assert_eq!(code, 0, "{name}: hearth record failed: {log}");
        assert!(log.contains("inflate past its limit"), "{name}: {log}");
        assert!(
            log.contains("hearth: symbols: 0 objects unreadable"),
            "{name}: {log}"
        );
        // The 1 GiB bomb took the agent to 1.08 GB; the check reads it
        // into nothing, so the agent stays at its usual size.
        assert!(
            peak_kib < 300 * 1024,
            "{name}: peak RSS {peak_kib} KiB: the section was inflated into memory"
        );
        let stacks = read_folded(&folded);
        let process = program.file_name().unwrap().to_str().unwrap();
        let counts = folded_leaf_counts(&stacks, process, &["leaf_a", "leaf_b"]);
        assert!(
            counts.iter().all(|&c| c > 0),
            "{name}: the leaves are named from the ELF symbols: {counts:?}"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".hearth-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

#[test]
fn outputs_are_written_through_devices_fifos_and_links_never_replaced() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let binary = build_two_leaves_c(dir.path());
    let record = |output: &Path| {
        spawn_hearth(&[
            "record",
            "--duration",
            "1s",
            "--output",
            output.to_str().unwrap(),
            "--format",
            "folded",
            "--",
            binary.to_str().unwrap(),
            "1.5",
        ])
    };
    let full = fs::metadata("/dev/full").unwrap();
    let output = record(Path::new("/dev/full")).output_within(Duration::from_secs(30));
    let log = stderr(&output);
    let after = fs::metadata("/dev/full").unwrap();
    assert!(
        after.file_type().is_char_device() && after.rdev() == full.rdev(),
        "/dev/full was replaced"
    );
    assert!(
        log.contains("/dev/full") && log.contains("No space left"),
        "{log}"
    );

    let fifo = dir.path().join("flame.pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            fs::File::open(fifo)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        })
    };
    let output = record(&fifo).output_within(Duration::from_secs(30));
    assert_success(&output);
    let text = reader.join().unwrap();
    assert!(
        text.contains("leaf_a"),
        "the FIFO's reader got the profile: {text}"
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    let real = dir.path().join("real.folded");
    fs::write(&real, "old\n").unwrap();
    let link = dir.path().join("link.folded");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_success(&record(&link).output_within(Duration::from_secs(30)));
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::read_to_string(&real).unwrap().contains("leaf_a"));
}

#[test]
fn a_control_socket_path_that_is_someones_file_is_left_alone() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious.txt");
    fs::write(&file, "keep me\n").unwrap();
    let output = run_hearth(
        &["run", "--control-socket", file.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let log = stderr(&output);
    assert!(
        !output.status.success(),
        "the agent started on someone's file"
    );
    assert!(
        log.contains("not a socket") && log.contains("precious.txt"),
        "{log}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me\n");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {log:?}"
    );
}

#[test]
fn the_spool_is_private_and_what_it_drops_is_what_was_lost() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let socket = dir.path().join("control.sock");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    // Something to profile in every window.
    let binary = build_two_leaves_c(dir.path());
    let _busy = Running::spawn(&binary, &["120"]);
    // The backend is down: windows queue up, spooled; the spool holds
    // about two, so older files are unspooled (still queued in memory).
    let (agent, metrics_port) = start_agent(
        &endpoint,
        &socket,
        &["--spool-dir", spool.to_str().unwrap()],
        &[
            ("HEARTH_SPOOL__MAX_BYTES", "1"),
            FAST_RETRY[0],
            FAST_RETRY[1],
        ],
    );
    std::thread::sleep(patience(Duration::from_secs(4)));
    let files = dir_files(&spool.join("otlp"));
    assert!(!files.is_empty(), "nothing spooled");
    assert_eq!(mode(&spool.join("otlp")), 0o700);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // The backend comes back: everything queued is delivered, nothing was dropped.
    let out = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("grpc", port, &out.path().join("requests.jsonl"));
    let mut agent = agent;
    let requests = receiver.wait_for_agent(&mut agent, 5, Duration::from_secs(30));
    std::thread::sleep(patience(Duration::from_secs(2)));
    let metrics = metrics_of(metrics_port);
    let windows = metric(&metrics, "hearth_export_windows_total").unwrap();
    let exported = metric(
        &metrics,
        "hearth_profiles_exported_total{exporter=\"otlp\"}",
    )
    .unwrap();
    let unspooled = metric(
        &metrics,
        "hearth_profiles_unspooled_total{exporter=\"otlp\"}",
    )
    .unwrap_or(0.0);
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hearth_profiles_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "windows {windows}, exported {exported}, unspooled {unspooled}, dropped {dropped}, requests {}",
        requests.len()
    );
    assert!(unspooled >= 1.0, "the spool bound was never reached");
    assert_eq!(
        dropped, 0.0,
        "nothing was lost, so nothing is counted as dropped"
    );
    assert!(
        exported + 1.0 >= windows,
        "every window but the newest is delivered"
    );
    drop(terminate(agent, Duration::from_secs(20)));

    // Corrupt what a stopped agent left; a restart sets it aside and counts it.
    let (agent, _) = start_agent(
        &endpoint.replace(&port.to_string(), &free_port().to_string()),
        &socket,
        &["--spool-dir", spool.to_str().unwrap()],
        &[],
    );
    std::thread::sleep(patience(Duration::from_secs(3)));
    drop(terminate(agent, Duration::from_secs(20)));
    let mut files = dir_files(&spool.join("otlp"));
    files.sort();
    assert!(
        files.len() >= 3,
        "a down backend leaves windows spooled: {files:?}"
    );
    let first = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &first[..first.len() - 5]).unwrap();
    fs::write(&files[1], vec![0x42; 300]).unwrap();
    fs::write(&files[2], b"").unwrap();
    let good = files.len() - 3;
    let (mut agent, metrics_port) = start_agent(
        &receiver.endpoint(),
        &socket,
        &["--spool-dir", spool.to_str().unwrap()],
        &FAST_RETRY,
    );
    let before = receiver.requests().len();
    receiver.wait_for_agent(&mut agent, before + good + 1, Duration::from_secs(30));
    let metrics = metrics_of(metrics_port);
    let corrupt = metric(
        &metrics,
        "hearth_profiles_dropped_total{exporter=\"otlp\",reason=\"spool_corrupt\"}",
    );
    let output = terminate(agent, Duration::from_secs(20));
    let log = stderr(&output);
    assert_eq!(corrupt, Some(3.0), "{log}");
    assert_eq!(dir_files(&spool.join("otlp/corrupt")).len(), 3);
    for name in &files[..3] {
        let name = name.file_name().unwrap().to_string_lossy().into_owned();
        assert!(log.contains(&name), "the log names {name}: {log}");
    }
}

fn dir_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o777
}
