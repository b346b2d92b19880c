//! Network events on real sockets: exact byte counts over loopback,
//! retransmits over a lossy veth link between two network namespaces
//! checked against the kernel's own `RetransSegs`, resets and connect
//! latency on real connections, and drops with their reason. Profiles are
//! read back as collapsed stacks and through `go tool pprof`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use hearth_tests::{
    PprofSample, agent::free_port, assert_success, build_c, patience, pprof_samples, read_folded,
    require_root, run_hearth, spawn_hearth, stderr,
};

const LIMIT: Duration = Duration::from_secs(120);

fn build_net_bytes(dir: &Path) -> PathBuf {
    build_c("net_bytes.c", dir, &["-O2", "-fno-omit-frame-pointer"])
}

/// Sum of the values of `process`'s stacks that hold `chain` in order (an
/// item `a|b` matches either frame).
fn value_through(stacks: &[(Vec<String>, u64)], process: &str, chain: &[&str]) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames[0] == process)
        .filter(|(frames, _)| {
            let mut wanted = chain.iter().peekable();
            for frame in frames {
                if wanted
                    .peek()
                    .is_some_and(|w| w.split('|').any(|w| w == frame))
                {
                    wanted.next();
                }
            }
            wanted.peek().is_none()
        })
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn bytes_sent_and_received_are_attributed_exactly_to_the_functions_that_moved_them() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_net_bytes(dir.path());
    // Not a multiple of any buffer size.
    const BYTES: u64 = 3_000_017;
    let out = dir.path().join("net.folded");
    let output = run_hearth(
        &[
            "record",
            "--event",
            "tx-bytes",
            "--event",
            "rx-bytes",
            "--output",
            out.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
            "pair",
            &BYTES.to_string(),
        ],
        LIMIT,
    );
    assert_success(&output);
    let tx = read_folded(&dir.path().join("net.tx-bytes.folded"));
    let rx = read_folded(&dir.path().join("net.rx-bytes.folded"));
    assert!(!out.exists(), "several events write one file each");

    let sent = value_through(
        &tx,
        "net_bytes",
        &["main", "send_to", "send_all", "tx_chunk"],
    );
    let received = value_through(
        &rx,
        "net_bytes",
        &["main", "receive", "receive_all", "rx_chunk"],
    );
    assert_eq!(sent, BYTES, "tx-bytes through send_all: {tx:?}");
    assert_eq!(received, BYTES, "rx-bytes through receive_all: {rx:?}");
    // Nothing else of the fixture's moved bytes: the totals are exact too.
    let total = |stacks: &[(Vec<String>, u64)]| -> u64 {
        stacks
            .iter()
            .filter(|(f, _)| f[0] == "net_bytes")
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!((total(&tx), total(&rx)), (BYTES, BYTES));
}

#[test]
fn bytes_through_libc_wrappers_sit_under_the_functions_that_called_them() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // No frame pointers in the fixture, nor in Debian's libc: only the
    // unwind tables find who called send() and recv().
    let fixture = build_c("libc_waits.c", dir.path(), &["-O2", "-fomit-frame-pointer"]);
    const UP: u64 = 3_000_017;
    const DOWN: u64 = 1_234_567;
    // The few handshake bytes come first; by the time the measured calls
    // start, the agent has loaded the fixture's tables.
    let settle = patience(Duration::from_millis(500)).as_millis().to_string();
    let out = dir.path().join("net.folded");
    let output = run_hearth(
        &[
            "record",
            "--event",
            "tx-bytes",
            "--event",
            "rx-bytes",
            "--output",
            out.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
            "net",
            &UP.to_string(),
            &DOWN.to_string(),
            &settle,
        ],
        LIMIT,
    );
    assert_success(&output);
    eprintln!("{}", stderr(&output));
    let tx = read_folded(&dir.path().join("net.tx-bytes.folded"));
    let rx = read_folded(&dir.path().join("net.rx-bytes.folded"));
    for (stacks, function, bytes, wrapper) in [
        (&tx, "upload", UP, "__libc_send"),
        (&tx, "serve_download", DOWN, "__libc_send"),
        (&rx, "accept_upload", UP, "__libc_recv"),
        (&rx, "download", DOWN, "__libc_recv"),
    ] {
        let under = value_through(
            stacks,
            "libc_waits",
            &["main", function, "send_bytes|recv_bytes", wrapper],
        );
        assert_eq!(under, bytes, "{function} moved {bytes} bytes: {stacks:?}");
    }
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Namespaces {
    sender: String,
    receiver: String,
}

const SENDER_ADDRESS: &str = "10.231.0.1";
const RECEIVER_ADDRESS: &str = "10.231.0.2";

fn sh(script: &str) {
    let output = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Namespaces {
    fn create() -> Self {
        let id = std::process::id();
        let (sender, receiver) = (format!("hearth-tx-{id}"), format!("hearth-rx-{id}"));
        let namespaces = Self { sender, receiver };
        let (a, b) = (&namespaces.sender, &namespaces.receiver);
        sh(&format!(
            "ip netns add {a}; ip netns add {b}
             ip link add veth-tx netns {a} type veth peer name veth-rx netns {b}
             ip -n {a} addr add {SENDER_ADDRESS}/24 dev veth-tx
             ip -n {b} addr add {RECEIVER_ADDRESS}/24 dev veth-rx
             ip -n {a} link set veth-tx up; ip -n {a} link set lo up
             ip -n {b} link set veth-rx up; ip -n {b} link set lo up"
        ));
        namespaces
    }

    /// Drops one in `one_in` of the packets arriving at the receiver for `port`.
    fn drop_incoming(&self, port: u16, one_in: u32) {
        sh(&format!(
            "ip netns exec {} nft -f - <<'EOF'
table inet hearth {{
  chain input {{
    type filter hook input priority 0;
    tcp dport {port} numgen random mod {one_in} == 0 drop
  }}
}}
EOF",
            self.receiver
        ));
    }

    /// `RetransSegs` of the sender's namespace (`/proc/net/snmp`).
    fn sender_retrans_segs(&self) -> u64 {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.sender, "cat", "/proc/net/snmp"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
        let column = names
            .split_whitespace()
            .position(|n| n == "RetransSegs")
            .expect("RetransSegs column");
        values
            .split_whitespace()
            .nth(column)
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn retransmits_over_a_lossy_link_agree_with_the_kernel_counter() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_net_bytes(dir.path());
    let namespaces = Namespaces::create();
    const PORT: u16 = 5001;
    const BYTES: u64 = 8_000_000;
    namespaces.drop_incoming(PORT, 20);

    let mut receiver = Command::new("ip")
        .args(["netns", "exec", &namespaces.receiver])
        .arg(&fixture)
        .args(["recv", &PORT.to_string(), &BYTES.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(receiver.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");

    // The whole machine, so that drops outside any socket are seen too.
    let out = dir.path().join("lossy.pb.gz");
    let agent = spawn_hearth(&[
        "record",
        "--event",
        "retransmits",
        "--event",
        "drops",
        "--duration",
        "60s",
        "--output",
        out.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_secs(2)); // loaded and attached
    let before = namespaces.sender_retrans_segs();
    let sender = Command::new("ip")
        .args(["netns", "exec", &namespaces.sender])
        .arg(&fixture)
        .args([
            "send",
            RECEIVER_ADDRESS,
            &PORT.to_string(),
            &BYTES.to_string(),
        ])
        .spawn()
        .unwrap();
    let sender_pid = sender.id().to_string();
    let sent = sender.wait_with_output().unwrap();
    assert!(sent.status.success());
    assert!(receiver.wait().unwrap().success());
    let retrans_segs = namespaces.sender_retrans_segs() - before;
    // SIGINT: stop early and write the files.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGINT) };
    assert_success(&agent.output_within(LIMIT));

    let retransmits = pprof_samples(&dir.path().join("lossy.retransmits.pb.gz"));
    let ours: Vec<&PprofSample> = retransmits
        .iter()
        .filter(|s| s.label("pid") == Some(sender_pid.as_str()))
        .collect();
    let segments: i64 = ours.iter().map(|s| s.value).sum();
    eprintln!("retransmitted segments: profile {segments}, RetransSegs {retrans_segs}");
    assert!(retrans_segs > 0, "the lossy link caused no retransmits");
    assert_eq!(
        segments as u64, retrans_segs,
        "the profile counts what the kernel counts"
    );
    for sample in &ours {
        assert_eq!(sample.label("process_name"), Some("net_bytes"));
        assert_eq!(sample.label("network.peer.address"), Some(RECEIVER_ADDRESS));
        assert_eq!(sample.label("network.peer.port"), Some("5001"));
        assert!(
            sample.functions.iter().any(|f| f.contains("retransmit")),
            "kernel stack of the retransmit: {:?}",
            sample.functions
        );
    }

    let drops = pprof_samples(&dir.path().join("lossy.drops.pb.gz"));
    // Kernels before 5.17 pass no drop reason; bpftool says which this is.
    let reason = if hearth_tests::kernel_has_btf_name("SKB_DROP_REASON_NETFILTER_DROP") {
        "NETFILTER_DROP"
    } else {
        "unknown"
    };
    let filtered: i64 = drops
        .iter()
        .filter(|s| s.label("drop.reason") == Some(reason))
        .filter(|s| s.functions.iter().any(|f| f == "nf_hook_slow"))
        .map(|s| s.value)
        .sum();
    assert!(filtered > 0, "no {reason} drops in netfilter: {drops:?}");
    assert!(
        drops.iter().any(|s| s
            .functions
            .first()
            .is_some_and(|f| *f == format!("[drop: {reason}]"))),
        "the reason is the leaf frame"
    );
}

#[test]
fn resets_and_connect_latency_are_measured_on_real_connections() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_net_bytes(dir.path());
    let closed = free_port();
    let out = dir.path().join("conn.pb.gz");
    let output = run_hearth(
        &[
            "record",
            "--event",
            "resets",
            "--event",
            "connect-latency",
            "--output",
            out.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
            "resets",
            &closed.to_string(),
        ],
        LIMIT,
    );
    assert_success(&output);
    let closed = closed.to_string();

    let resets = pprof_samples(&dir.path().join("conn.resets.pb.gz"));
    let received: Vec<&PprofSample> = resets
        .iter()
        .filter(|s| s.label("tcp.reset.direction") == Some("received"))
        .collect();
    assert!(
        received
            .iter()
            .any(|s| s.label("network.peer.port") == Some(closed.as_str())),
        "the refused connect's reset: {resets:?}"
    );
    assert!(
        received
            .iter()
            .any(|s| s.label("network.peer.port") != Some(closed.as_str())),
        "the reset of the lingering close, seen by the client: {resets:?}"
    );
    let sent: Vec<&PprofSample> = resets
        .iter()
        .filter(|s| s.label("tcp.reset.direction") == Some("sent"))
        .collect();
    assert!(
        sent.iter().any(|s| s.label("tcp.reset.reason").is_some()
            && s.functions.iter().any(|f| f == "tcp_send_active_reset")),
        "the server's reset, with its reason and kernel stack: {resets:?}"
    );
    assert!(
        resets
            .iter()
            .all(|s| s.label("process_name") == Some("net_bytes"))
    );

    let latency = pprof_samples(&dir.path().join("conn.connect-latency.pb.gz"));
    let outcome = |o: &str| -> Vec<&PprofSample> {
        latency
            .iter()
            .filter(|s| s.label("connect.outcome") == Some(o))
            .collect()
    };
    let (failed, established) = (outcome("failed"), outcome("established"));
    assert_eq!(failed.len(), 1, "{latency:?}");
    assert_eq!(established.len(), 1, "{latency:?}");
    assert_eq!(failed[0].label("network.peer.port"), Some(closed.as_str()));
    for sample in [failed[0], established[0]] {
        assert!(
            sample.value > 0 && sample.value < 1_000_000_000,
            "a loopback handshake takes well under a second: {sample:?}"
        );
        assert_eq!(
            sample.functions.first().map(String::as_str),
            Some("connect_to")
        );
        assert!(sample.functions.iter().any(|f| f == "main"));
    }
}
