//! Off-CPU time on the real scheduler: a fixture that blocks in two named
//! functions (a pipe read and a nanosleep), built without frame pointers,
//! measures its own blocked time in each; the profile must split the same
//! way, carry the whole chain from `main`, and add up to what it measured.
//! Bad flags and config keys are refused by name.

use std::{path::Path, time::Duration};

use hearth_tests::{agent::*, *};

const LIMIT: Duration = Duration::from_secs(180);

/// Off-CPU nanoseconds of the fixture's stacks through `function`; with
/// `from_main`, only those that carry `main` above it.
fn blocked_in(stacks: &[FoldedStack], function: &str, from_main: bool) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames[0] == "libc_waits")
        .filter(
            |(frames, _)| match frames.iter().position(|f| f == function) {
                Some(at) => !from_main || frames[..at].iter().any(|f| f == "main"),
                None => false,
            },
        )
        .map(|(_, ns)| ns)
        .sum()
}

/// `pipe_ns=N sleep_ns=M` from the fixture's output.
fn measured(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pipe_ns="))
        .unwrap_or_else(|| panic!("the fixture printed no times: {stdout}"));
    let mut values = line
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap().1.parse::<u64>().unwrap());
    (values.next().unwrap(), values.next().unwrap())
}

fn record_blocks(fixture: &Path, dir: &Path, extra: &[&str]) -> (Vec<FoldedStack>, (u64, u64)) {
    let out = dir.join("off.folded");
    // The first block loads the fixture's unwind tables; the measured
    // ones start after the settling time.
    let settle = patience(Duration::from_millis(400)).as_millis().to_string();
    let mut args = vec![
        "record",
        "--event",
        "off-cpu",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend([
        "--",
        fixture.to_str().unwrap(),
        "block",
        "40",
        "30",
        "10",
        &settle,
    ]);
    let output = run_hearth(&args, LIMIT);
    assert_success(&output);
    eprintln!("{}", stderr(&output));
    let times = measured(&String::from_utf8_lossy(&output.stdout));
    (read_folded(&out), times)
}

#[test]
fn off_cpu_time_splits_as_the_fixture_measured_it_with_whole_chains() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c("libc_waits.c", dir.path(), &["-O2", "-fomit-frame-pointer"]);
    let (stacks, (pipe_ns, sleep_ns)) = record_blocks(&fixture, dir.path(), &[]);
    let pipe = blocked_in(&stacks, "wait_pipe", false);
    let sleep = blocked_in(&stacks, "nap", false);
    let whole = blocked_in(&stacks, "wait_pipe", true) + blocked_in(&stacks, "nap", true);
    let measured_total = pipe_ns + sleep_ns;
    let share = 100.0 * pipe as f64 / (pipe + sleep).max(1) as f64;
    let measured_share = 100.0 * pipe_ns as f64 / measured_total as f64;
    eprintln!(
        "wait_pipe {pipe} ns, nap {sleep} ns ({share:.1}% in the pipe); the fixture measured \
         {pipe_ns} and {sleep_ns} ({measured_share:.1}%); {whole} ns carry main"
    );
    assert!(
        (share - measured_share).abs() <= 3.0,
        "the pipe has {share:.1}% of the off-CPU time, the fixture measured {measured_share:.1}%"
    );
    assert!(
        whole as f64 >= 0.90 * measured_total as f64,
        "only {whole} of {measured_total} blocked ns carry the chain from main: {stacks:?}"
    );
    let total = (pipe + sleep) as f64;
    assert!(
        (total - measured_total as f64).abs() <= 0.15 * measured_total as f64,
        "{total} ns recorded, the fixture measured {measured_total} ns blocked"
    );
}

#[test]
fn sampled_off_cpu_time_is_scaled_and_short_blocks_are_left_out() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c("libc_waits.c", dir.path(), &["-O2", "-fomit-frame-pointer"]);
    // Half the blocks, scaled by two: the total stays near what was blocked.
    let (stacks, (pipe_ns, sleep_ns)) =
        record_blocks(&fixture, dir.path(), &["--off-cpu-probability", "0.5"]);
    let total = blocked_in(&stacks, "wait_pipe", false) + blocked_in(&stacks, "nap", false);
    let measured_total = (pipe_ns + sleep_ns) as f64;
    assert!(
        (total as f64 - measured_total).abs() <= 0.45 * measured_total,
        "{total} ns recorded at probability 0.5, {measured_total} ns blocked"
    );
    // 10 ms naps are under a 20 ms minimum; 30 ms pipe waits are not.
    let (stacks, _) = record_blocks(&fixture, dir.path(), &["--off-cpu-min", "20ms"]);
    assert_eq!(blocked_in(&stacks, "nap", false), 0, "{stacks:?}");
    assert!(blocked_in(&stacks, "wait_pipe", false) > 0, "{stacks:?}");
}

#[test]
fn bad_off_cpu_flags_and_keys_are_refused_by_name() {
    for (args, words) in [
        (&["--event", "offcpu"][..], &["--event", "off-cpu"][..]),
        (
            &["--event", "off-cpu", "--off-cpu-min", "-1ms"],
            &["--off-cpu-min", "negative"],
        ),
        (
            &["--event", "off-cpu", "--off-cpu-min", "soon"],
            &["--off-cpu-min", "not a duration"],
        ),
        (
            &["--event", "off-cpu", "--off-cpu-probability", "1.5"],
            &["--off-cpu-probability", "at most 1"],
        ),
        (
            &["--event", "off-cpu", "--off-cpu-probability", "0"],
            &["--off-cpu-probability"],
        ),
    ] {
        let mut all = vec!["record"];
        all.extend_from_slice(args);
        all.extend(["--", "true"]);
        let output = run_hearth(&all, Duration::from_secs(10));
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        for word in words {
            assert!(text.contains(word), "{args:?} must name {word}: {text}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (yaml, words) in [
        (
            "off_cpu:\n  probability: 2\n",
            &["off_cpu.probability", "at most 1"][..],
        ),
        ("off_cpu:\n  min_block: -1ms\n", &["off_cpu.min_block"]),
    ] {
        let config = dir.path().join("hearth.yaml");
        std::fs::write(&config, format!("events: [off-cpu]\n{yaml}")).unwrap();
        let output = run_hearth(
            &["run", "--config", config.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{yaml}: {text}");
        for word in words {
            assert!(text.contains(word), "{yaml} must name {word}: {text}");
        }
    }
}

/// `hearth run --event off-cpu` exports an `off_cpu`/`nanoseconds` profile
/// over OTLP (saying how it was gathered) and an `off_cpu` series to
/// Pyroscope, with the fixture's blocked time; `ctl capture --event
/// off-cpu` answers with what a process waits in right now.
#[test]
fn run_exports_off_cpu_time_and_ctl_captures_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let otlp = OtlpReceiver::start("grpc", 0, &dir.path().join("requests.jsonl"));
    let pyroscope_dir = tempfile::tempdir().unwrap();
    let pyroscope = PyroscopeReceiver::start(pyroscope_dir.path());
    let fixture = build_c("libc_waits.c", dir.path(), &["-O2", "-fomit-frame-pointer"]);
    let metrics_port = free_port();
    let socket = dir.path().join("control.sock");
    let agent = spawn_agent(
        &[
            "--event",
            "cpu",
            "--event",
            "off-cpu",
            "--otlp-endpoint",
            &otlp.endpoint(),
            "--pyroscope-url",
            &pyroscope.url(),
            "--export-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    let settle = patience(Duration::from_millis(400)).as_millis().to_string();
    let run = std::process::Command::new(&fixture)
        .args(["block", "40", "30", "10", &settle])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let blocks_pid = u64::from(run.id());
    let blocks = run.wait_with_output().unwrap();
    assert!(blocks.status.success());
    let (pipe_ns, _) = measured(&String::from_utf8_lossy(&blocks.stdout));

    // A capture of a process blocking now.
    let mut waiting = Running::spawn(&fixture, &["block", "200", "30", "10", "0"]);
    let capture = dir.path().join("now.folded");
    let output = std::process::Command::new(hearth_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(&socket)
        .args(["capture", "--event", "off-cpu", "--duration", "3s", "--pid"])
        .arg(waiting.pid().to_string())
        .arg("--output")
        .arg(&capture)
        .output()
        .unwrap();
    assert!(output.status.success(), "ctl capture: {}", stderr(&output));
    let captured = read_folded(&capture);
    assert!(
        blocked_in(&captured, "wait_pipe", true) > 1_000_000_000,
        "3 s of a process that waits mostly in its pipe: {captured:?}"
    );
    waiting.kill_and_output();

    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));

    let requests = otlp.requests();
    let mut in_pipe = 0;
    let mut notes = None;
    for resource in requests
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
    {
        let pid = resource["attributes"]["process.pid"].as_u64();
        for profile in resource["profiles"].as_array().unwrap() {
            if profile["sample_type"] != serde_json::json!(["off_cpu", "nanoseconds"]) {
                continue;
            }
            notes = Some(profile["attributes"].clone());
            if pid != Some(blocks_pid) {
                continue;
            }
            for sample in profile["samples"].as_array().unwrap() {
                let frames = sample["frames"].to_string();
                if frames.contains("\"wait_pipe\"") && frames.contains("\"main\"") {
                    in_pipe += sample["value"].as_u64().unwrap();
                }
            }
        }
    }
    let notes = notes.expect("an off_cpu profile over OTLP");
    assert_eq!(notes["hearth.off_cpu.sampling_probability"], "1", "{notes}");
    assert_eq!(notes["hearth.off_cpu.min_block_ns"], "1000000", "{notes}");
    assert!(
        (in_pipe as f64 - pipe_ns as f64).abs() <= 0.15 * pipe_ns as f64,
        "{in_pipe} ns in wait_pipe over OTLP, the fixture measured {pipe_ns}"
    );
    let timed = metric(&metrics, r#"hearth_off_cpu_blocks_total{reason="timed"}"#);
    assert!(timed.is_some_and(|n| n >= 40.0), "{metrics}");

    let names: std::collections::BTreeSet<String> = pyroscope
        .wait_for(1, Duration::from_secs(1))
        .iter()
        .flat_map(|r| r["series"].as_array().unwrap().clone())
        .map(|series| series["labels"]["__name__"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains("off_cpu"), "{names:?}");
}
