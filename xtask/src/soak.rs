//! `cargo xtask soak`: runs `hearth run` for minutes on a busy machine,
//! exporting over OTLP/HTTP to the test receiver, and reports the agent's
//! CPU (share of one core), resident memory, samples and bytes per window.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procs::{Group, free_port, http_get, metric, spawn_group, usage};

/// CPU-bound programs of several kinds, and a loop of short-lived ones.
pub fn busy_machine() -> anyhow::Result<Vec<Group>> {
    hearth_devtools::BUSY_PROGRAMS
        .iter()
        .map(|argv| spawn_group(argv))
        .collect()
}

pub struct SoakResult {
    pub frequency: u64,
    pub minutes: f64,
    pub cpu_percent: f64,
    pub peak_rss: u64,
    pub mean_rss: u64,
    pub samples: f64,
    pub lost: f64,
    pub windows: usize,
    pub mean_wire_bytes: f64,
    pub mean_message_bytes: f64,
}

/// Runs the agent at each frequency for `minutes` on a busy machine.
pub fn run(root: &Path, minutes: f64, frequencies: &[u64]) -> anyhow::Result<Vec<SoakResult>> {
    let hearth = root.join("target/release/hearth");
    let work = tempfile_dir()?;
    let requests = work.join("requests.jsonl");
    let mut receiver = Command::new("python3")
        .arg(root.join("tests/receivers/otlp_receiver.py"))
        .args(["--protocol", "http", "--out"])
        .arg(&requests)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the OTLP receiver (cargo xtask setup installs its packages)")?;
    let mut line = String::new();
    BufReader::new(receiver.stdout.take().unwrap()).read_line(&mut line)?;
    let _receiver = Group(receiver);
    let port: u16 = line
        .trim()
        .trim_start_matches("listening on ")
        .parse()
        .context("receiver port")?;
    let _busy = busy_machine()?;

    let mut results = Vec::new();
    for &frequency in frequencies {
        let before = read_lines(&requests).len();
        let metrics_port = free_port();
        let agent = Command::new(&hearth)
            .args(["run", "--otlp-protocol", "http", "--export-interval", "10s"])
            .args(["--otlp-endpoint", &format!("http://127.0.0.1:{port}")])
            .args(["--frequency", &frequency.to_string()])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting hearth run")?;
        let agent = Group(agent);
        let pid = agent.0.id();
        let ready_by = Instant::now() + Duration::from_secs(30);
        while http_get(metrics_port, "/readyz").is_none() {
            if Instant::now() > ready_by {
                bail!("hearth run did not become ready");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("soak: {frequency} Hz for {minutes} min ...");
        let (cpu_start, _) = usage(pid).context("agent usage")?;
        let started = Instant::now();
        let (mut peak, mut total, mut readings) = (0u64, 0u64, 0u64);
        while started.elapsed().as_secs_f64() < minutes * 60.0 {
            std::thread::sleep(Duration::from_secs(1));
            let (_, rss) = usage(pid).context("agent exited early")?;
            peak = peak.max(rss);
            total += rss;
            readings += 1;
        }
        let (cpu_end, _) = usage(pid).context("agent usage")?;
        let wall = started.elapsed().as_secs_f64();
        let metrics = http_get(metrics_port, "/metrics").unwrap_or_default();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_secs(3));
        drop(agent);
        let lines: Vec<String> = read_lines(&requests).split_off(before);
        let sizes = |key: &str| -> f64 {
            let values: Vec<f64> = lines
                .iter()
                .filter_map(|l| {
                    l.split(&format!("\"{key}\": "))
                        .nth(1)?
                        .split([',', '}'])
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let errors = lines
            .iter()
            .filter(|l| !l.contains("\"errors\": []"))
            .count();
        if errors > 0 {
            bail!("{errors} requests broke the OTLP rules during the soak");
        }
        results.push(SoakResult {
            frequency,
            minutes: wall / 60.0,
            cpu_percent: 100.0 * (cpu_end - cpu_start) / wall,
            peak_rss: peak,
            mean_rss: total / readings.max(1),
            samples: metric(&metrics, "hearth_samples_total"),
            lost: metric(
                &metrics,
                "hearth_kernel_samples_lost_total{reason=\"ring_full\"}",
            ),
            windows: lines.len(),
            mean_wire_bytes: sizes("wire_bytes"),
            mean_message_bytes: sizes("message_bytes"),
        });
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(results)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn print(results: &[SoakResult]) {
    println!();
    println!(
        "| rate | minutes | agent CPU (% of one core) | peak RSS | mean RSS | samples | lost | windows | wire bytes/window (gzip) | OTLP bytes/window |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} Hz | {:.1} | {:.3}% | {:.1} MiB | {:.1} MiB | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
            r.frequency,
            r.minutes,
            r.cpu_percent,
            r.peak_rss as f64 / 1048576.0,
            r.mean_rss as f64 / 1048576.0,
            r.samples,
            r.lost,
            r.windows,
            r.mean_wire_bytes,
            r.mean_message_bytes
        );
    }
}
