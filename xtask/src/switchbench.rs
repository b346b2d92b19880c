//! `cargo xtask off-cpu-overhead`: what off-CPU profiling costs a
//! context-switch storm. Two processes hand a byte back and forth over
//! pipes (every hand-off blocks one and wakes the other) for a fixed time,
//! alone, under `hearth record --event off-cpu` (default settings, every
//! process on the machine), under `perf record -e sched:sched_switch
//! -g -a`, and under an empty bpftrace program on the same tracepoint
//! (the cost of any program on every switch). Rounds rotate the order,
//! so drift falls on all alike; the figure is each condition's median
//! round trips per second.
//! Writes its section of docs/benchmarks.md.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::procs::{BpfStats, bpf_run_time, cpu_seconds, median};

pub struct Settings {
    pub rounds: usize,
    /// Seconds of storm per condition and round.
    pub seconds: f64,
    pub output: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profiler {
    None,
    Hearth,
    Perf,
    /// An empty program on the hook: what any BPF on every switch costs.
    Bpftrace,
}

const PERF_NAME: &str = "perf record -e sched:sched_switch -g -a -o - (to /dev/null)";

impl Profiler {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Hearth => "hearth record --event off-cpu (defaults)",
            Self::Perf => PERF_NAME,
            Self::Bpftrace => "bpftrace -e 'tracepoint:sched:sched_switch {}' (an empty program)",
        }
    }
}

#[derive(Default)]
struct Runs {
    /// Round trips per second of each run.
    rates: Vec<f64>,
    /// Context switches per second on the machine during each run.
    switches: Vec<f64>,
    /// The profiler's CPU seconds per second of storm (its process, and
    /// for Hearth its BPF programs' kernel time too).
    cpu: Vec<f64>,
    bpf: Vec<f64>,
    /// Nanoseconds per program run, and the machine's switches per second, in that run.
    bpf_per_run: f64,
    stats_switches: f64,
    /// Hearth's off-CPU line of the last run.
    report: String,
}

/// The machine's context switches so far (`ctxt` in /proc/stat).
fn context_switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("ctxt "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One storm; its round trips per second and the machine's switches per second.
fn storm(fixture: &Path, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let before = context_switches();
    let output = Command::new(fixture)
        .arg(seconds.to_string())
        .output()
        .context("running the storm")?;
    let switched = context_switches() - before;
    if !output.status.success() {
        bail!(
            "the storm failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    let (Some(trips), Some(took)) = (field("round_trips="), field("seconds=")) else {
        bail!("unexpected storm output {text:?}");
    };
    Ok((trips / took, switched as f64 / took))
}

fn start(profiler: Profiler, hearth: &Path, dir: &Path) -> anyhow::Result<Option<Child>> {
    let mut command = match profiler {
        Profiler::None => return Ok(None),
        Profiler::Hearth => {
            let mut command = Command::new(hearth);
            command.args([
                "record",
                "--duration",
                "1h",
                "--event",
                "off-cpu",
                "--output",
            ]);
            command.arg(dir.join("storm.folded"));
            command
        }
        Profiler::Perf => {
            // Written to a pipe that discards it: at hundreds of thousands
            // of switches a second the file would fill the disk.
            let mut command = Command::new("perf");
            command.args([
                "record",
                "-e",
                "sched:sched_switch",
                "-g",
                "-a",
                "-q",
                "-o",
                "-",
            ]);
            command
        }
        Profiler::Bpftrace => {
            let mut command = Command::new("bpftrace");
            command.args(["-e", "tracepoint:sched:sched_switch {}"]);
            command
        }
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", profiler.name()))?;
    // Loaded and attached well within this.
    std::thread::sleep(Duration::from_secs(3));
    Ok(Some(child))
}

fn stop(child: Child) -> anyhow::Result<String> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    // perf re-raises the SIGINT it stopped on once its data is written.
    use std::os::unix::process::ExitStatusExt as _;
    let interrupted = output.status.signal() == Some(libc::SIGINT);
    if !output.status.success() && !interrupted {
        bail!("the profiler failed: {text}");
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with("hearth: off-cpu") || l.contains("lost"))
        .collect::<Vec<_>>()
        .join("\n"))
}

pub fn run(root: &Path, settings: &Settings) -> anyhow::Result<()> {
    let dir = root.join("target/off-cpu-overhead");
    std::fs::create_dir_all(&dir)?;
    let fixture = dir.join("storm");
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&fixture)
        .arg(root.join("xtask/src/bench/storm.c"))
        .status()
        .context("running gcc")?;
    if !status.success() {
        bail!("building the storm failed");
    }
    let hearth = root.join("target/release/hearth");
    let mut profilers = vec![Profiler::None, Profiler::Hearth];
    if crate::bench::available("perf") {
        profilers.push(Profiler::Perf);
    }
    if crate::bench::available("bpftrace") {
        profilers.push(Profiler::Bpftrace);
    }
    let mut runs: Vec<Runs> = profilers.iter().map(|_| Runs::default()).collect();
    storm(&fixture, 1.0)?; // warm-up
    // Throughput with `kernel.bpf_stats_enabled` off, as an agent runs: the
    // statistics add two clock reads to every program run.
    for round in 0..settings.rounds {
        for offset in 0..profilers.len() {
            let index = (round + offset) % profilers.len();
            let profiler = profilers[index];
            eprintln!(
                "off-cpu-overhead: round {}/{}, {}",
                round + 1,
                settings.rounds,
                profiler.name()
            );
            let child = start(profiler, &hearth, &dir)?;
            let pid = child.as_ref().map(|c| c.id());
            let cpu_before = pid.and_then(cpu_seconds).unwrap_or(0.0);
            let (rate, switches) = storm(&fixture, settings.seconds)?;
            let cpu = pid.and_then(cpu_seconds).unwrap_or(0.0) - cpu_before;
            let runs = &mut runs[index];
            runs.rates.push(rate);
            runs.switches.push(switches);
            runs.cpu.push(cpu / settings.seconds);
            if let Some(child) = child {
                runs.report = stop(child)?;
            }
        }
    }
    // Then Hearth's programs' own run time, in one more run with the
    // statistics on (its throughput is not counted).
    eprintln!("off-cpu-overhead: BPF run time, with kernel.bpf_stats_enabled");
    let stats = BpfStats::enable();
    let hearth_index = profilers.iter().position(|p| *p == Profiler::Hearth);
    if let (Some(index), Some(child)) = (hearth_index, start(Profiler::Hearth, &hearth, &dir)?) {
        let pid = child.id();
        let before = bpf_run_time(pid);
        let (_, switches) = storm(&fixture, settings.seconds)?;
        let after = bpf_run_time(pid);
        let (ns, count) = (after.0 - before.0, after.1 - before.1);
        runs[index].bpf.push(ns as f64 / 1e9 / settings.seconds);
        runs[index].bpf_per_run = ns as f64 / count.max(1) as f64;
        runs[index].stats_switches = switches;
        stop(child)?;
    }
    drop(stats);
    let section = report(&profilers, &runs, settings);
    println!("{section}");
    write_section(&settings.output, &section)
}

/// The markers around this harness's section of docs/benchmarks.md.
pub const START: &str =
    "<!-- off-cpu-overhead:start (cargo xtask off-cpu-overhead writes this) -->";
pub const END: &str = "<!-- off-cpu-overhead:end -->";

fn report(profilers: &[Profiler], runs: &[Runs], settings: &Settings) -> String {
    use std::fmt::Write as _;
    let mut w = String::new();
    let base = median(&runs[0].rates);
    let _ = writeln!(w, "{START}\n");
    let _ = writeln!(w, "## Off-CPU profiling under a context-switch storm\n");
    let _ = writeln!(
        w,
        "`cargo xtask off-cpu-overhead --rounds {} --seconds {}`: two processes hand a byte \
         back and forth over pipes for {} s per run (every hand-off blocks one and wakes the \
         other), alone and under each profiler of the whole machine, the order rotating each \
         round. Throughput is the storm's round trips per second; switches are the machine's \
         (`ctxt` in /proc/stat). Profiler process CPU is its process's user and system time \
         as a share of one core; the work its kernel programs do in the storm's own switches \
         shows as lost throughput.\n",
        settings.rounds, settings.seconds, settings.seconds
    );
    let _ = writeln!(
        w,
        "| profiler | round trips/s (median) | vs none | switches/s | profiler process CPU |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (profiler, runs) in profilers.iter().zip(runs) {
        let rate = median(&runs.rates);
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:+.1}% | {:.0} | {:.1}% |",
            profiler.name(),
            rate,
            100.0 * (rate - base) / base,
            median(&runs.switches),
            100.0 * median(&runs.cpu),
        );
    }
    if let Some(hearth) = profilers.iter().position(|p| *p == Profiler::Hearth) {
        let runs = &runs[hearth];
        let _ = writeln!(
            w,
            "\nHearth's BPF run time, from one more run with `kernel.bpf_stats_enabled` on \
             (not counted in the throughput above): {:.1}% of a core at {:.0} switches/s, \
             {:.0} ns per program run (the statistics' own clock reads included).",
            100.0 * median(&runs.bpf),
            runs.stats_switches,
            runs.bpf_per_run
        );
        let _ = writeln!(w, "\nHearth, last throughput run: {}", runs.report.trim());
    }
    let _ = writeln!(w, "\n{END}");
    w
}

/// Replaces this harness's section of `path` (or appends it).
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (old.find(START), old.find(END)) {
        (Some(start), Some(end)) if end > start => {
            format!(
                "{}{}{}",
                &old[..start],
                section.trim_end(),
                &old[end + END.len()..]
            )
        }
        _ => format!("{}\n{}", old.trim_end(), section),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("off-cpu-overhead: wrote its section of {}", path.display());
    Ok(())
}

/// This harness's section of `text`, if it has one (kept when `cargo
/// xtask bench` rewrites the rest of the file).
pub fn section_of(text: &str) -> Option<&str> {
    let start = text.find(START)?;
    let end = text[start..].find(END)? + start + END.len();
    Some(&text[start..end])
}
