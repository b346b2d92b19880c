//! `cargo xtask net-overhead`: loopback throughput of a bulk TCP transfer
//! with Hearth's network events off and on, measured in one run. Rounds
//! alternate the order of the two conditions so that drift in the machine
//! falls on both alike; the figure is the median of each.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::procs::median;

/// Every network event, as a production agent with all of them on.
const EVENTS: [&str; 6] = hearth_devtools::NETWORK_EVENTS;

pub struct Settings {
    pub rounds: usize,
    pub transfers_per_round: usize,
    pub bytes: u64,
}

pub struct NetOverhead {
    pub off_gbps: Vec<f64>,
    pub on_gbps: Vec<f64>,
    /// What the agent reported writing, for the last "on" round.
    pub agent_report: String,
}

impl NetOverhead {
    pub fn slowdown_percent(&self) -> f64 {
        let (off, on) = (median(&self.off_gbps), median(&self.on_gbps));
        100.0 * (off - on) / off
    }

    pub fn print(&self) {
        println!("| network events | transfers | median throughput | min | max |");
        println!("|---|---|---|---|---|");
        for (name, runs) in [("off", &self.off_gbps), ("on (all six)", &self.on_gbps)] {
            let (min, max) = runs
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            println!(
                "| {name} | {} | {:.2} GB/s | {min:.2} | {max:.2} |",
                runs.len(),
                median(runs)
            );
        }
        println!(
            "\nslowdown with network events on: {:.2}% (target <= 3%)",
            self.slowdown_percent()
        );
        println!("agent, last round: {}", self.agent_report.trim());
    }
}

/// One bulk transfer over loopback; its throughput in GB/s.
fn transfer(fixture: &Path, bytes: u64) -> anyhow::Result<f64> {
    let output = Command::new(fixture)
        .args(["pair", &bytes.to_string()])
        .output()
        .context("running the transfer fixture")?;
    if !output.status.success() {
        bail!(
            "transfer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let seconds: f64 = text
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected fixture output {text:?}"))?;
    Ok(bytes as f64 / seconds / 1e9)
}

fn start_agent(hearth: &Path, out: &Path) -> anyhow::Result<Child> {
    let mut args = vec!["record".to_owned(), "--duration".into(), "1h".into()];
    for event in EVENTS {
        args.extend(["--event".into(), event.into()]);
    }
    args.extend(["--output".into(), out.display().to_string()]);
    let child = Command::new(hearth)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting hearth")?;
    // Loaded and attached well within this.
    std::thread::sleep(Duration::from_secs(3));
    Ok(child)
}

fn stop_agent(child: Child) -> anyhow::Result<String> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("hearth failed: {report}");
    }
    Ok(report
        .lines()
        .filter(|l| l.starts_with("hearth:"))
        .collect::<Vec<_>>()
        .join("\n"))
}

pub fn run(root: &Path, settings: &Settings) -> anyhow::Result<NetOverhead> {
    let dir = root.join("target/net-overhead");
    std::fs::create_dir_all(&dir)?;
    let fixture = dir.join("net_bytes");
    let status = Command::new("gcc")
        .args(["-O2", "-fno-omit-frame-pointer", "-o"])
        .arg(&fixture)
        .arg(root.join("tests/fixtures/net_bytes.c"))
        .status()
        .context("running gcc")?;
    if !status.success() {
        bail!("building the transfer fixture failed");
    }
    let hearth = root.join("target/release/hearth");
    let mut result = NetOverhead {
        off_gbps: Vec::new(),
        on_gbps: Vec::new(),
        agent_report: String::new(),
    };
    transfer(&fixture, settings.bytes)?; // warm-up
    for round in 0..settings.rounds {
        let on_first = round % 2 == 1;
        for on in [on_first, !on_first] {
            eprintln!(
                "net-overhead: round {}/{}, events {}",
                round + 1,
                settings.rounds,
                if on { "on" } else { "off" }
            );
            let agent = on
                .then(|| start_agent(&hearth, &dir.join("net.folded")))
                .transpose()?;
            for _ in 0..settings.transfers_per_round {
                let gbps = transfer(&fixture, settings.bytes)?;
                if on {
                    result.on_gbps.push(gbps);
                } else {
                    result.off_gbps.push(gbps);
                }
            }
            if let Some(agent) = agent {
                result.agent_report = stop_agent(agent)?;
            }
        }
    }
    Ok(result)
}
