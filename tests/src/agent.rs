//! Running `hearth run` against real receivers: the Python OTLP receiver
//! built on the official bindings, and the Pyroscope push receiver.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::Running;

pub use hearth_devtools::free_port;

fn receiver_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("receivers")
        .join(name)
}

/// Starts a receiver script and waits for its "listening on PORT" line.
pub fn start_receiver(script: &str, args: &[&str]) -> (Running, u16) {
    let mut child = Command::new("python3")
        .arg(receiver_script(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3 (install the test tools: `cargo xtask setup`)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("{script} did not start: {line:?} (is PyPI opentelemetry-proto installed?)")
        });
    (Running::from_child(child), port)
}

/// The OTLP receiver; each request becomes one JSON line in `out`.
pub struct OtlpReceiver {
    _process: Running,
    pub port: u16,
    out: PathBuf,
}

impl OtlpReceiver {
    /// `port` 0 picks any free port.
    pub fn start(protocol: &str, port: u16, out: &Path) -> Self {
        Self::start_with(protocol, port, out, &[])
    }

    /// Serves TLS with the server certificate of `certificate` on a free port.
    pub fn start_tls(protocol: &str, out: &Path, certificate: &TestCertificate) -> Self {
        let cert = certificate.server_cert.to_str().unwrap();
        let key = certificate.server_key.to_str().unwrap();
        Self::start_with(protocol, 0, out, &["--tls-cert", cert, "--tls-key", key])
    }

    fn start_with(protocol: &str, port: u16, out: &Path, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec![
            "--protocol",
            protocol,
            "--port",
            &port_arg,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (process, port) = start_receiver("otlp_receiver.py", &args);
        Self {
            _process: process,
            port,
            out: out.to_owned(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        read_json_lines(&self.out)
    }

    /// Waits until at least `count` requests have arrived.
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Value> {
        wait_for_lines(&self.out, count, limit)
    }

    /// Waits until at least `count` requests have arrived from `agent`;
    /// if they do not, the panic shows what the agent printed.
    pub fn wait_for_agent(&self, agent: &mut Running, count: usize, limit: Duration) -> Vec<Value> {
        try_wait_for_lines(&self.out, count, limit).unwrap_or_else(|(got, limit)| {
            let output = agent.kill_and_output();
            panic!(
                "only {got} of {count} requests arrived within {limit:?}; the agent said:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// Requests recorded in `path` so far (a JSON object per line).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("receiver writes JSON lines"))
        .collect()
}

fn wait_for_lines(path: &Path, count: usize, limit: Duration) -> Vec<Value> {
    try_wait_for_lines(path, count, limit).unwrap_or_else(|(got, limit)| {
        panic!("only {got} of {count} requests arrived within {limit:?}")
    })
}

/// The requests once `count` have arrived, or how many came within the
/// (stretched) limit.
fn try_wait_for_lines(
    path: &Path,
    count: usize,
    limit: Duration,
) -> Result<Vec<Value>, (usize, Duration)> {
    let limit = crate::patience(limit);
    let deadline = Instant::now() + limit;
    loop {
        let requests = read_json_lines(path);
        if requests.len() >= count {
            return Ok(requests);
        }
        if Instant::now() >= deadline {
            return Err((requests.len(), limit));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Pyroscope push receiver; it writes pprof files and requests.jsonl to `dir`.
pub struct PyroscopeReceiver {
    _process: Running,
    pub port: u16,
    dir: PathBuf,
}

impl PyroscopeReceiver {
    pub fn start(dir: &Path) -> Self {
        let (process, port) =
            start_receiver("pyroscope_receiver.py", &["--dir", dir.to_str().unwrap()]);
        Self {
            _process: process,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Value> {
        wait_for_lines(&self.dir.join("requests.jsonl"), count, limit)
    }
}

/// Starts `hearth run` with `args` and `env`.
pub fn spawn_agent(args: &[&str], env: &[(&str, &str)]) -> Running {
    let child = Command::new(crate::hearth_bin())
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth run");
    Running::from_child(child)
}

/// `hearth run` exporting to `receiver` every second, its metrics endpoint
/// on a free port and its control socket `socket`, plus `extra` arguments
/// and `env`; returned once it is ready.
pub fn start_exporting_agent(
    receiver: &OtlpReceiver,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let endpoint = receiver.endpoint();
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--export-interval",
        "1s",
        "--metrics-listen",
        &metrics,
        "--control-socket",
        socket.to_str().expect("a UTF-8 socket path"),
    ];
    args.extend(extra);
    let agent = spawn_agent(&args, env);
    wait_ready(metrics_port, Duration::from_secs(20));
    agent
}

/// GET `path` from `127.0.0.1:port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Waits until the agent's /readyz answers 200.
pub fn wait_ready(port: u16, limit: Duration) {
    let limit = crate::patience(limit);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get(port, "/readyz").0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the agent was not ready within {limit:?}");
}

/// The value of the sample `series` (name with labels, as rendered) in
/// Prometheus text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// Asks the agent to stop (SIGTERM) and waits for it.
pub fn terminate(agent: Running, limit: Duration) -> std::process::Output {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    agent.output_within(limit)
}

/// Samples of the resource with `process.pid == pid`, per leaf function.
pub fn otlp_leaf_counts(requests: &[Value], pid: u32, leaves: &[&str]) -> Vec<u64> {
    let mut counts = vec![0; leaves.len()];
    for resource in requests
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
    {
        if resource["attributes"]["process.pid"] != pid {
            continue;
        }
        for sample in resource["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["samples"].as_array().unwrap())
        {
            let frames = sample["frames"].as_array().unwrap();
            let hit = frames.iter().rev().find_map(|f| {
                leaves
                    .iter()
                    .position(|l| crate::names(f.as_str().unwrap(), l))
            });
            if let Some(index) = hit {
                counts[index] += sample["value"].as_u64().unwrap();
            }
        }
    }
    counts
}

/// (start, duration) of each request's profiles, in arrival order (all
/// profiles of a request share the window).
pub fn windows(requests: &[Value]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .map(|r| {
            let profile = &r["resources"][0]["profiles"][0];
            (
                profile["time_unix_nano"].as_u64().unwrap(),
                profile["duration_nano"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Asserts windows follow each other without gaps or repeats.
pub fn assert_contiguous(windows: &[(u64, u64)]) {
    for pair in windows.windows(2) {
        let ((start, duration), (next, _)) = (pair[0], pair[1]);
        let gap = next as i128 - (start + duration) as i128;
        assert!(
            gap.abs() < 20_000_000,
            "window at {next} does not follow the one at {start} (+{duration} ns): gap {gap} ns in {windows:?}"
        );
    }
}

/// A throwaway CA and a server certificate it signed for `localhost` and
/// 127.0.0.1, made with the `openssl` command.
pub struct TestCertificate {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCertificate {
    pub fn create(dir: &Path) -> Self {
        let path = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        std::fs::write(
            path("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hearth test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
        }
    }
}
