//! `hearth run` against real receivers: the official OpenTelemetry Python
//! bindings decode and check every OTLP request, `perf` measures the same
//! fixture at the same time, and the backend goes away and comes back.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use hearth_tests::{agent::*, *};

const LEAVES: [&str; 2] = ["leaf_a", "leaf_b"];
const HZ: u32 = 499;

/// Queued profiles are retried quickly in tests, so a returning backend
/// gets them within a second.
const FAST_RETRY: [(&str, &str); 2] = [
    ("HEARTH_QUEUE__INITIAL_BACKOFF", "100ms"),
    ("HEARTH_QUEUE__MAX_BACKOFF", "500ms"),
];

fn no_protocol_errors(requests: &[serde_json::Value]) {
    for (i, request) in requests.iter().enumerate() {
        let errors = request["errors"].as_array().unwrap();
        assert!(
            errors.is_empty(),
            "request {i} breaks the OTLP rules: {errors:?}"
        );
    }
}

/// Profiles the C fixture with perf and with the agent exporting over
/// `protocol`, and checks what the receiver decoded.
fn exports_valid_accurate_profiles(protocol: &str) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start(protocol, 0, &dir.path().join("requests.jsonl"));
    let fixture = build_two_leaves_c(dir.path());
    let target = Running::spawn(&fixture, &["20", "75"]);
    let metrics_port = free_port();
    let agent = spawn_agent(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-protocol",
            protocol,
            "-F",
            &HZ.to_string(),
            "--export-interval",
            "2s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    let perf_data = dir.path().join("perf.data");
    let perf = spawn_perf_record(target.pid(), 6.0, HZ, &perf_data);
    assert!(perf.output_within(Duration::from_secs(30)).status.success());
    receiver.wait_for(3, Duration::from_secs(20));

    // The agent's own telemetry, while it runs.
    let (status, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(status, 200);
    for series in [
        "hearth_samples_total",
        "hearth_kernel_samples_lost_total{reason=\"ring_full\"}",
        "hearth_profiles_exported_total{exporter=\"otlp\"}",
        "hearth_queue_bytes{exporter=\"otlp\"}",
        "hearth_symbol_cache_hits_total",
        "hearth_processes_tracked",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metric(&metrics, series).is_some(),
            "{series} missing from:\n{metrics}"
        );
    }
    assert!(metric(&metrics, "hearth_samples_total").unwrap() > 0.0);
    assert!(
        metric(
            &metrics,
            "hearth_profiles_exported_total{exporter=\"otlp\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(http_get(metrics_port, "/healthz").0, 200);

    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    let requests = receiver.requests();
    no_protocol_errors(&requests);
    assert!(requests.iter().all(|r| r["transport"] == protocol));

    let resource = requests
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .find(|r| r["attributes"]["process.pid"] == target.pid())
        .expect("a resource for the fixture process");
    let attributes = &resource["attributes"];
    assert_eq!(attributes["service.name"], "two_leaves");
    assert_eq!(attributes["process.executable.name"], "two_leaves");
    assert_eq!(
        attributes["process.executable.path"],
        fixture.to_str().unwrap()
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(attributes["host.name"], host.trim());
    let profile = &resource["profiles"][0];
    assert_eq!(
        profile["sample_type"],
        serde_json::json!(["samples", "count"])
    );
    assert_eq!(
        profile["period_type"],
        serde_json::json!(["cpu", "nanoseconds"])
    );
    assert_eq!(profile["period"], 1_000_000_000 / u64::from(HZ));

    let ours = otlp_leaf_counts(&requests, target.pid(), &LEAVES);
    let perfs = perf_leaf_counts(&perf_data, &LEAVES);
    let (ours_a, perf_a) = (percent_first(&ours), percent_first(&perfs));
    eprintln!(
        "{protocol}: leaf_a {ours_a:.2}% over OTLP ({ours:?}), perf {perf_a:.2}% ({perfs:?})"
    );
    assert!(
        (ours_a - perf_a).abs() <= 5.0,
        "OTLP says leaf_a has {ours_a:.2}%, perf says {perf_a:.2}%"
    );
}

#[test]
fn otlp_grpc_profiles_arrive_valid_and_agree_with_perf() {
    exports_valid_accurate_profiles("grpc");
}

#[test]
fn otlp_http_profiles_arrive_valid_and_agree_with_perf() {
    exports_valid_accurate_profiles("http");
}

/// The receiver refuses connections for a while, then comes up: every
/// window arrives, in order, none twice.
#[test]
fn a_backend_that_comes_back_gets_every_window_in_order() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let metrics_port = free_port();
    let agent = spawn_agent(
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--export-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &FAST_RETRY,
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let queued = metric(&metrics, "hearth_queue_profiles{exporter=\"otlp\"}").unwrap();
    assert!(
        queued >= 3.0,
        "windows should be queued while the backend is away:\n{metrics}"
    );
    assert!(metric(&metrics, "hearth_profiles_failed_total{exporter=\"otlp\"}").unwrap() >= 1.0);

    let receiver = OtlpReceiver::start("grpc", port, &dir.path().join("requests.jsonl"));
    receiver.wait_for(queued as usize, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    drop(target);

    let requests = receiver.requests();
    no_protocol_errors(&requests);
    let windows = windows(&requests);
    assert_contiguous(&windows);
    let produced = metric(&metrics, "hearth_export_windows_total").unwrap();
    assert!(
        windows.len() as f64 >= produced,
        "{} windows arrived, {produced} were made",
        windows.len()
    );
    assert!(
        metric(
            &metrics,
            "hearth_profiles_dropped_total{exporter=\"otlp\",reason=\"queue_bytes\"}"
        )
        .is_none()
    );
}

/// With a small queue bound the oldest windows are dropped and counted;
/// what arrives is the newest, contiguous, and memory stays bounded.
#[test]
fn a_full_queue_drops_the_oldest_and_counts_them() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["40"]);
    let metrics_port = free_port();
    let max_bytes = 4096.0;
    let mut env = FAST_RETRY.to_vec();
    env.push(("HEARTH_QUEUE__MAX_BYTES", "4KiB"));
    // Windows as small as the frame-pointer walk makes them: with full
    // machine-wide stacks (unwind tables) the final window alone can push
    // a queued one out at shutdown, after the drop counter was read.
    env.push(("HEARTH_UNWIND__MODE", "fp"));
    let agent = spawn_agent(
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--export-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &env,
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    let mut peak_rss: f64 = 0.0;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        let (_, metrics) = http_get(metrics_port, "/metrics");
        let bytes = metric(&metrics, "hearth_queue_bytes{exporter=\"otlp\"}").unwrap();
        assert!(
            bytes <= max_bytes,
            "queue holds {bytes} bytes, over its 4KiB bound"
        );
        peak_rss = peak_rss.max(metric(&metrics, "process_resident_memory_bytes").unwrap());
    }
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let dropped_series = "hearth_profiles_dropped_total{exporter=\"otlp\",reason=\"queue_bytes\"}";
    let dropped = metric(&metrics, dropped_series).unwrap_or(0.0);
    let queued = metric(&metrics, "hearth_queue_profiles{exporter=\"otlp\"}").unwrap();
    assert!(dropped >= 1.0, "nothing was dropped:\n{metrics}");
    // Bound + a fixed overhead: the agent's steady footprint target is 50 MiB.
    assert!(
        peak_rss <= max_bytes + 50.0 * 1048576.0,
        "RSS {peak_rss} bytes"
    );

    let receiver = OtlpReceiver::start("grpc", port, &dir.path().join("requests.jsonl"));
    receiver.wait_for(queued as usize, Duration::from_secs(20));
    // Stop half a window after one ended, so the final window has samples
    // (an empty window is not sent) and no other window ends meanwhile.
    let windows_now = || {
        let (_, metrics) = http_get(metrics_port, "/metrics");
        metric(&metrics, "hearth_export_windows_total").unwrap()
    };
    let before = windows_now();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while windows_now() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let dropped = metric(&metrics, dropped_series).unwrap();
    let produced = metric(&metrics, "hearth_export_windows_total").unwrap();
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    drop(target);

    let requests = receiver.requests();
    no_protocol_errors(&requests);
    let windows = windows(&requests);
    eprintln!(
        "{produced} windows made before the final one, {dropped} dropped, {} delivered (peak RSS {:.1} MiB)",
        windows.len(),
        peak_rss / 1048576.0
    );
    // The survivors are the newest windows, contiguous to the end, and with
    // the dropped ones they account for every window made: the final
    // window, and perhaps one more that ended while we scraped, come on top.
    assert_contiguous(&windows);
    let accounted = windows.len() as f64 + dropped;
    assert!(
        (produced + 1.0..=produced + 2.0).contains(&accounted),
        "{} delivered + {dropped} dropped should be the {produced} windows made, plus the final one",
        windows.len()
    );
}

/// Killed while the backend is down, restarted after it is back: the
/// spooled profiles arrive.
#[test]
fn spooled_profiles_survive_a_killed_agent() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let args = |metrics_port: u16| {
        vec![
            "--otlp-endpoint".to_owned(),
            format!("http://127.0.0.1:{port}"),
            "--export-interval".to_owned(),
            "1s".to_owned(),
            "--spool-dir".to_owned(),
            spool.to_str().unwrap().to_owned(),
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ]
    };
    let first_port = free_port();
    let first_args = args(first_port);
    let first: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let agent = spawn_agent(&first, &FAST_RETRY);
    wait_ready(first_port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    drop(agent); // SIGKILL: no chance to flush
    let spooled: Vec<_> = std::fs::read_dir(spool.join("otlp")).unwrap().collect();
    assert!(
        spooled.len() >= 2,
        "only {} spooled profiles",
        spooled.len()
    );
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    let receiver = OtlpReceiver::start("grpc", port, &dir.path().join("requests.jsonl"));
    let second_port = free_port();
    let second_args = args(second_port);
    let second: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let agent = spawn_agent(&second, &FAST_RETRY);
    let requests = receiver.wait_for(spooled.len(), Duration::from_secs(30));
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    drop(target);

    no_protocol_errors(&requests);
    let before_kill = windows(&receiver.requests())
        .iter()
        .filter(|(start, _)| *start < killed_at)
        .count();
    assert!(
        before_kill >= spooled.len(),
        "{before_kill} windows from before the kill arrived, {} were spooled",
        spooled.len()
    );
    let left = std::fs::read_dir(spool.join("otlp")).unwrap().count();
    assert_eq!(left, 0, "delivered profiles leave the spool");
}

/// SIGTERM mid-window: the partial window is exported and the agent exits 0.
#[test]
fn sigterm_exports_the_last_partial_window() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("grpc", 0, &dir.path().join("requests.jsonl"));
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let metrics_port = free_port();
    let agent = spawn_agent(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--export-interval",
            "1h",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "exactly the final window");
    no_protocol_errors(&requests);
    let counts = otlp_leaf_counts(&requests, target.pid(), &LEAVES);
    assert!(
        counts.iter().sum::<u64>() > 20,
        "the fixture's samples: {counts:?}"
    );
    let (_, duration) = windows(&requests)[0];
    assert!(
        (2_500_000_000..10_000_000_000).contains(&duration),
        "partial window of {duration} ns"
    );
}

/// Pushes to Pyroscope's API: labels, tenant header, and pprof that
/// `go tool pprof` reads with the hot leaf on top.
#[test]
fn pyroscope_pushes_carry_labels_and_readable_pprof() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let receiver = PyroscopeReceiver::start(dir.path());
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let metrics_port = free_port();
    let agent = spawn_agent(
        &[
            "--pyroscope-url",
            &receiver.url(),
            "--export-interval",
            "2s",
            "-F",
            "199",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[("HEARTH_PYROSCOPE__HEADERS", "X-Scope-OrgID=team-a")],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    receiver.wait_for(2, Duration::from_secs(20));
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));

    let requests = receiver.wait_for(2, Duration::from_secs(1));
    let pid = target.pid().to_string();
    let mut fixture_files = Vec::new();
    for request in &requests {
        assert_eq!(request["content_type"], "application/proto");
        assert_eq!(request["connect_version"], "1");
        assert_eq!(request["tenant"], "team-a");
        for series in request["series"].as_array().unwrap() {
            let labels = &series["labels"];
            assert_eq!(labels["__name__"], "process_cpu");
            assert!(
                labels["service_name"].is_string() && labels["host_name"].is_string(),
                "{labels}"
            );
            if labels["process_pid"] == pid.as_str() {
                assert_eq!(labels["service_name"], "two_leaves");
                assert_eq!(labels["process_executable_name"], "two_leaves");
                for file in series["files"].as_array().unwrap() {
                    fixture_files.push(file.as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(
        !fixture_files.is_empty(),
        "no series for the fixture: {requests:?}"
    );
    let first = Path::new(&fixture_files[0]);
    let top = pprof_top_functions(first);
    assert!(top.first().is_some_and(|f| names(f, "leaf_a")), "{top:?}");
    let header = go_pprof(&["-top", "-nodecount=1", first.to_str().unwrap()]);
    assert!(header.contains("Type: cpu"), "{header}");
}

/// TLS to a receiver whose certificate a private CA signed: refused with the
/// system roots alone, delivered once the CA is given.
fn tls_with_a_given_ca(protocol: &str) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let certificate = TestCertificate::create(dir.path());
    let receiver =
        OtlpReceiver::start_tls(protocol, &dir.path().join("requests.jsonl"), &certificate);
    let endpoint = format!("https://localhost:{}", receiver.port);
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let run = |env: &[(&str, &str)]| {
        let metrics_port = free_port();
        let agent = spawn_agent(
            &[
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                protocol,
                "--export-interval",
                "1s",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ],
            env,
        );
        wait_ready(metrics_port, Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(3));
        let (_, metrics) = http_get(metrics_port, "/metrics");
        let output = terminate(agent, Duration::from_secs(20));
        assert!(output.status.success(), "agent: {}", stderr(&output));
        (metrics, stderr(&output))
    };

    let (metrics, log) = run(&[]);
    assert!(
        receiver.requests().is_empty(),
        "an unknown CA must not be trusted"
    );
    assert!(metric(&metrics, "hearth_profiles_failed_total{exporter=\"otlp\"}").unwrap() >= 1.0);
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("tls"),
        "the failure should say why: {log}"
    );

    let ca = certificate.ca.to_str().unwrap().to_owned();
    run(&[("HEARTH_OTLP__CA_FILE", ca.as_str())]);
    let requests = receiver.requests();
    assert!(
        !requests.is_empty(),
        "nothing arrived over TLS with the CA given"
    );
    no_protocol_errors(&requests);
    assert!(
        otlp_leaf_counts(&requests, target.pid(), &LEAVES)
            .iter()
            .sum::<u64>()
            > 0
    );
}

#[test]
fn otlp_grpc_over_tls_trusts_the_given_ca() {
    tls_with_a_given_ca("grpc");
}

#[test]
fn otlp_http_over_tls_trusts_the_given_ca() {
    tls_with_a_given_ca("http");
}

/// Bad configuration stops the agent at start with the key and the fix.
#[test]
fn bad_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.yaml");
    std::fs::write(&config, "queue:\n  max_byte: 1MiB\n").unwrap();
    let output = run_hearth(
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("queue.max_byte") && text.contains("max_bytes"),
        "{text}"
    );
    assert!(text.contains(config.to_str().unwrap()), "{text}");

    let output = run_hearth(
        &["run", "--otlp-endpoint", "collector:4317"],
        Duration::from_secs(10),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("otlp.endpoint") && text.contains("--otlp-endpoint"),
        "{text}"
    );
}

/// `hearth run --event tx-bytes` exports a `tx_bytes` profile next to the
/// CPU one, over OTLP and to Pyroscope, with the peer as an attribute.
#[test]
fn network_profiles_are_exported_next_to_cpu() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let otlp = OtlpReceiver::start("grpc", 0, &dir.path().join("requests.jsonl"));
    let pyroscope_dir = tempfile::tempdir().unwrap();
    let pyroscope = PyroscopeReceiver::start(pyroscope_dir.path());
    let fixture = build_c(
        "net_bytes.c",
        dir.path(),
        &["-O2", "-fno-omit-frame-pointer"],
    );
    let busy = Running::spawn(&build_two_leaves_c(dir.path()), &["8"]);
    let metrics_port = free_port();
    let agent = spawn_agent(
        &[
            "--event",
            "cpu",
            "--event",
            "tx-bytes",
            "--otlp-endpoint",
            &otlp.endpoint(),
            "--pyroscope-url",
            &pyroscope.url(),
            "--export-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    const BYTES: u64 = 5_000_011;
    let transfer = Running::spawn(&fixture, &["pair", &BYTES.to_string()])
        .output_within(Duration::from_secs(30));
    assert!(transfer.status.success());
    std::thread::sleep(Duration::from_secs(3));
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    drop(busy);

    let requests = otlp.requests();
    no_protocol_errors(&requests);
    let mut types = std::collections::BTreeSet::new();
    let mut sent = 0;
    for resource in requests
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
    {
        let is_fixture = resource["attributes"]["process.executable.name"] == "net_bytes";
        for profile in resource["profiles"].as_array().unwrap() {
            let sample_type = profile["sample_type"].to_string();
            types.insert(sample_type.clone());
            if sample_type != r#"["tx_bytes","bytes"]"# || !is_fixture {
                continue;
            }
            assert_eq!(profile["period_type"].to_string(), sample_type);
            for sample in profile["samples"].as_array().unwrap() {
                assert_eq!(sample["attributes"]["network.peer.address"], "127.0.0.1");
                assert!(sample["attributes"]["network.peer.port"].is_u64());
                let frames = sample["frames"].to_string();
                assert!(frames.contains("send_all"), "{frames}");
                sent += sample["value"].as_u64().unwrap();
            }
        }
    }
    assert!(
        types.contains(r#"["samples","count"]"#),
        "a CPU profile too: {types:?}"
    );
    assert_eq!(sent, BYTES, "every byte the fixture sent, over OTLP");
    assert!(metric(&metrics, "hearth_network_events_total").unwrap() >= 1.0);

    let names: std::collections::BTreeSet<String> = pyroscope
        .wait_for(1, Duration::from_secs(1))
        .iter()
        .flat_map(|r| r["series"].as_array().unwrap().clone())
        .map(|series| series["labels"]["__name__"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains("network_tx_bytes") && names.contains("process_cpu"),
        "{names:?}"
    );
}
