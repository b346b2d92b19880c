//! On-call control of a running agent through `hearth ctl`: on-demand mode
//! attaches nothing until enabled and detaches when the window ends (seen
//! from the kernel's side, in the agent's file descriptors), a capture
//! returns the fixture's hot function, the history comes back as pprof
//! `go tool pprof` reads, and the socket refuses anyone but root.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use hearth_tests::{
    Running, agent::*, build_two_leaves_c, hearth_bin, names, patience, pprof_top_functions,
    read_folded, require_root, stderr,
};
use serde_json::Value;

/// Perf events of `pid` with a program attached (the CPU sampler's, one
/// per CPU): BPF links of type perf from the kernel's fdinfo (5.15 and
/// later), or, on kernels that attach with an ioctl and have no such link,
/// the perf event files it holds open.
fn perf_event_links(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let links = fds
        .filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter(|info| {
            // "perf" on Linux 6.x ("perf_event" in some versions).
            info.lines().any(|l| {
                l.strip_prefix("link_type:")
                    .is_some_and(|kind| kind.trim().starts_with("perf"))
            })
        })
        .count();
    if links > 0 {
        return links;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:[perf_event]")
        .count()
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(hearth_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run hearth ctl")
}

fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let output = ctl(socket, args);
    assert!(
        output.status.success(),
        "hearth ctl {args:?}: {}",
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn status(socket: &Path) -> Value {
    serde_json::from_str(&ctl_ok(socket, &["status", "--json"])).expect("status is JSON")
}

/// An agent with its control socket in a fresh directory; `ready` once the
/// metrics endpoint answers.
fn start_agent(dir: &Path, extra: &[&str]) -> (Running, PathBuf) {
    let socket = dir.join("run/control.sock");
    let metrics_port = free_port();
    let mut args = vec![
        "--control-socket".to_owned(),
        socket.display().to_string(),
        "--metrics-listen".to_owned(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = spawn_agent(&args, &[]);
    wait_ready(metrics_port, Duration::from_secs(20));
    (agent, socket)
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let limit = patience(limit);
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn on_demand_attaches_nothing_until_enabled_and_detaches_when_the_window_ends() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = start_agent(dir.path(), &["--mode", "on-demand"]);
    let pid = agent.pid();

    let before = status(&socket);
    assert_eq!(before["enabled"], false, "{before}");
    assert_eq!(before["expires_in_seconds"], Value::Null);
    assert_eq!(perf_event_links(pid), 0, "nothing attached before enable");

    ctl_ok(&socket, &["enable", "--for", "3s"]);
    assert_eq!(
        perf_event_links(pid),
        online_cpus(),
        "one perf event per CPU"
    );
    let during = status(&socket);
    assert_eq!(during["enabled"], true, "{during}");
    let left = during["expires_in_seconds"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 3.0, "{during}");

    wait_until(Duration::from_secs(6), "the window ends", || {
        perf_event_links(pid) == 0
    });
    assert_eq!(status(&socket)["enabled"], false);

    // Enable, then disable before the end: detached at once.
    ctl_ok(&socket, &["enable", "--for", "10m"]);
    assert_eq!(perf_event_links(pid), online_cpus());
    ctl_ok(&socket, &["disable"]);
    assert_eq!(perf_event_links(pid), 0);

    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_capture_returns_the_hot_function_and_leaves_nothing_attached() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let (agent, socket) = start_agent(dir.path(), &["--mode", "on-demand", "-F", "199"]);
    let out = dir.path().join("now.folded");
    let pid = target.pid().to_string();
    ctl_ok(
        &socket,
        &[
            "capture",
            "--duration",
            "3s",
            "--pid",
            &pid,
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let stacks = read_folded(&out);
    assert!(
        stacks.iter().all(|(frames, _)| frames[0] == "two_leaves"),
        "{stacks:?}"
    );
    let hottest = stacks.iter().max_by_key(|(_, count)| *count).unwrap();
    assert!(
        names(hottest.0.last().unwrap(), "leaf_a"),
        "hottest stack: {hottest:?}"
    );
    assert_eq!(
        perf_event_links(agent.pid()),
        0,
        "detached after the capture"
    );

    // SVG by the extension; a filter that matches nothing is a clear 404.
    let svg = dir.path().join("now.svg");
    ctl_ok(
        &socket,
        &[
            "capture",
            "--duration",
            "1s",
            "--output",
            svg.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("leaf_a"));
    let none = ctl(
        &socket,
        &[
            "capture",
            "--duration",
            "1s",
            "--pid",
            "999999",
            "--output",
            "/tmp/x.svg",
        ],
    );
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no cpu samples in 1 s for pid 999999"),
        "{}",
        stderr(&none)
    );
    terminate(agent, Duration::from_secs(20));
}

#[test]
fn bad_requests_say_what_is_wrong_and_change_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = start_agent(dir.path(), &["--mode", "on-demand"]);
    let zero = ctl(&socket, &["enable", "--for", "0s"]);
    assert!(
        stderr(&zero).contains("longer than zero"),
        "{}",
        stderr(&zero)
    );
    let long = ctl(&socket, &["enable", "--for", "30days"]);
    assert!(
        stderr(&long).contains("control.max_enable"),
        "{}",
        stderr(&long)
    );
    let format = ctl(
        &socket,
        &["history", "--last", "5m", "--output", "/tmp/h.svg"],
    );
    assert!(stderr(&format).contains(".pb.gz"), "{}", stderr(&format));
    assert_eq!(status(&socket)["enabled"], false);
    assert_eq!(perf_event_links(agent.pid()), 0);

    let missing = ctl(&dir.path().join("nothing.sock"), &["status"]);
    assert!(
        stderr(&missing).contains("no agent answers"),
        "{}",
        stderr(&missing)
    );
    terminate(agent, Duration::from_secs(20));
}

#[test]
fn only_root_may_use_the_control_socket() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // The tempdir itself must be passable for the non-root attempt to
    // reach the socket's own permission check.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (agent, socket) = start_agent(dir.path(), &["--mode", "on-demand"]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let parent = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o777, 0o700);

    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hearth_bin())
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("status")
        .output()
        .expect("run setpriv (util-linux)");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("root-only"), "{}", stderr(&output));
    // Root still gets in.
    assert_eq!(status(&socket)["mode"], "on-demand");
    terminate(agent, Duration::from_secs(20));
}

#[test]
fn the_control_api_on_tcp_needs_the_bearer_token() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "7f3a9c0e5b1d4e8f2a6c9b0d3e7f1a5c\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "00000000000000000000000000000000\n").unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let (agent, socket) = start_agent(
        dir.path(),
        &[
            "--mode",
            "on-demand",
            "--control-listen",
            &address,
            "--control-token-file",
            token.to_str().unwrap(),
        ],
    );
    let pid = agent.pid();

    // Without a token, and with a wrong one: 401, and nothing happens.
    let (code, body) = http_get(port, "/v1/status");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let url = format!("http://{address}");
    let tcp_ctl = |token: &Path, args: &[&str]| {
        Command::new(hearth_bin())
            .args(["ctl", "--url", &url, "--token-file"])
            .arg(token)
            .args(args)
            .output()
            .expect("run hearth ctl")
    };
    let refused = tcp_ctl(&wrong, &["enable", "--for", "1m"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("(401): wrong bearer token"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        perf_event_links(pid),
        0,
        "a refused enable attaches nothing"
    );

    // With the token: the same API as the socket's.
    let enabled = tcp_ctl(&token, &["enable", "--for", "1m"]);
    assert!(enabled.status.success(), "{}", stderr(&enabled));
    assert_eq!(perf_event_links(pid), online_cpus());
    let answer = tcp_ctl(&token, &["status", "--json"]);
    let status_tcp: Value = serde_json::from_slice(&answer.stdout).expect("status is JSON");
    assert_eq!(status_tcp["enabled"], true, "{status_tcp}");
    assert_eq!(status(&socket)["enabled"], true, "one agent behind both");
    assert!(tcp_ctl(&token, &["disable"]).status.success());
    assert_eq!(perf_event_links(pid), 0);
    terminate(agent, Duration::from_secs(20));

    // No token file, or a short token: the agent says so and does not start.
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    for (extra, expected) in [
        (vec![], "control.listen needs a bearer token"),
        (
            vec!["--control-token-file", short.to_str().unwrap()],
            "is 3 characters; use at least 16",
        ),
    ] {
        let socket = dir.path().join("refused.sock");
        let mut args = vec!["run", "--control-listen", &address, "--control-socket"];
        args.push(socket.to_str().unwrap());
        args.extend(extra);
        let output = hearth_tests::run_hearth(&args, Duration::from_secs(20));
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}

#[test]
fn history_comes_back_as_pprof_of_the_chosen_process() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let (agent, socket) = start_agent(dir.path(), &["--export-interval", "1s", "-F", "199"]);
    wait_until(
        Duration::from_secs(20),
        "three windows in the history",
        || status(&socket)["history_profiles"].as_u64().unwrap_or(0) >= 3,
    );
    let out = dir.path().join("recent.pb.gz");
    let pid = target.pid().to_string();
    ctl_ok(
        &socket,
        &[
            "history",
            "--last",
            "10m",
            "--pid",
            &pid,
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let top = pprof_top_functions(&out);
    assert!(top.first().is_some_and(|f| names(f, "leaf_a")), "{top:?}");
    terminate(agent, Duration::from_secs(20));
}
