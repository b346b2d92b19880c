//! `cargo xtask bench`: Hearth's cost, measured on this machine side by
//! side with perf and bpftrace, in one run, and written to
//! docs/benchmarks.md.
//!
//! - CPU overhead: a fixed CPU-bound workload on every core runs alone and
//!   under each profiler, repetitions interleaved (the order rotates each
//!   round) so that drift in the machine falls on every condition alike.
//!   Each profiled run is paired with an unprofiled run just before it,
//!   and its slowdown is against that run.
//! - Churn: thousands of short-lived processes under `hearth run`.
//! - Many processes: hundreds of mostly idle processes with distinct
//!   binaries under `hearth run`.
//! - The userspace pipeline's criterion microbenchmarks, briefly.

mod report;
mod tools;

pub use tools::available;
mod workloads;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::procs::metric;
use tools::{Context, Tool};

pub struct Settings {
    /// Rounds of the CPU overhead comparison.
    pub rounds: usize,
    /// Seconds the CPU workload takes alone.
    pub work_seconds: f64,
    /// Short-lived processes per churn round.
    pub churn: usize,
    /// Idle processes for the many-processes run.
    pub processes: usize,
    /// Seconds the many-processes run is measured.
    pub many_seconds: u64,
    /// Where the report goes.
    pub output: PathBuf,
}

/// One profiler's figures over the rounds.
pub struct Condition {
    pub tool: Tool,
    /// Wall time of the workload alone, run just before each profiled run.
    pub baselines: Vec<f64>,
    /// Wall time of the workload under the tool, per round.
    pub walls: Vec<f64>,
    /// The tool's CPU time while the workload ran, % of one core, per round.
    pub tool_cpu: Vec<f64>,
    /// Time its BPF programs ran in the kernel, % of one core, per round.
    pub bpf_cpu: Vec<f64>,
    /// Nanoseconds per BPF program run, per round.
    pub bpf_ns_per_run: Vec<f64>,
    pub peak_rss: u64,
    pub lost: f64,
}

pub struct ChurnResult {
    pub per_round: usize,
    /// (processes per second, agent RSS after the round, processes tracked).
    pub rounds: Vec<(f64, u64, f64)>,
    /// (agent RSS, processes tracked) once the churned processes are idle.
    pub after_idle: (u64, f64),
    pub rss_before: u64,
    pub cpu_percent: f64,
    pub peak_rss: u64,
    pub lost: f64,
}

pub struct ManyResult {
    pub processes: usize,
    pub seconds: f64,
    pub cpu_percent: f64,
    pub steady_rss: u64,
    pub peak_rss: u64,
    pub tracked: f64,
    pub samples: f64,
    pub lost: f64,
}

pub struct Results {
    pub machine: Vec<(String, String)>,
    pub threads: usize,
    pub rounds_of_work: u64,
    pub conditions: Vec<Condition>,
    pub skipped: Vec<String>,
    pub churn: ChurnResult,
    pub many: ManyResult,
    pub micro: Vec<report::Micro>,
    pub took: Duration,
}

pub fn run(root: &Path, settings: &Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = root.join("target/xtask-bench");
    std::fs::create_dir_all(work.join("ctl"))?;
    let context = Context {
        hearth: root.join("target/release/hearth"),
        work: work.clone(),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu_work = workloads::CpuWork::build(&work, threads, settings.work_seconds)?;
    eprintln!(
        "bench: workload of {threads} threads x {} rounds (~{:.1} s alone)",
        cpu_work.rounds, settings.work_seconds
    );

    let mut tools = vec![
        Tool::HearthRecord(99),
        Tool::HearthRun(19, None),
        // Frame pointers against tables, on a workload built without them.
        Tool::HearthRun(99, Some("fp")),
        Tool::HearthRun(99, Some("dwarf")),
    ];
    let mut skipped = Vec::new();
    for (program, tool) in [("perf", Tool::Perf(99)), ("bpftrace", Tool::Bpftrace(99))] {
        if tools::available(program) {
            tools.push(tool);
        } else {
            skipped.push(format!(
                "{program} (not installed; `cargo xtask setup` installs it)"
            ));
        }
    }
    let mut conditions: Vec<Condition> = tools
        .iter()
        .map(|&tool| Condition {
            tool,
            baselines: Vec::new(),
            walls: Vec::new(),
            tool_cpu: Vec::new(),
            bpf_cpu: Vec::new(),
            bpf_ns_per_run: Vec::new(),
            peak_rss: 0,
            lost: 0.0,
        })
        .collect();
    // The BPF programs' own run time, for Hearth and bpftrace alike.
    let _bpf_stats = crate::procs::BpfStats::enable();
    for round in 0..settings.rounds {
        let n = conditions.len();
        for k in 0..n {
            let condition = &mut conditions[(k + round) % n];
            eprintln!(
                "bench: round {}/{}: alone, then {}",
                round + 1,
                settings.rounds,
                condition.tool.name()
            );
            // Each profiled run is paired with an unprofiled one just before.
            condition.baselines.push(cpu_work.run()?);
            let watcher = tools::start(condition.tool, &context)?;
            let cpu_before = watcher.cpu_seconds();
            let bpf_before = watcher.bpf_run_time();
            let wall = cpu_work.run()?;
            let cpu = watcher.cpu_seconds() - cpu_before;
            let bpf_after = watcher.bpf_run_time();
            let stopped = watcher.stop()?;
            let (bpf_ns, bpf_runs) = (bpf_after.0 - bpf_before.0, bpf_after.1 - bpf_before.1);
            condition.walls.push(wall);
            condition.tool_cpu.push(100.0 * cpu / wall);
            condition.bpf_cpu.push(100.0 * bpf_ns as f64 / 1e9 / wall);
            if bpf_runs > 0 {
                condition
                    .bpf_ns_per_run
                    .push(bpf_ns as f64 / bpf_runs as f64);
            }
            condition.peak_rss = condition.peak_rss.max(stopped.peak_rss);
            condition.lost += stopped.lost;
            tools::clean(&work);
        }
    }

    let churn = churn(&context, settings)?;
    let many = many(&context, settings)?;
    let micro = report::microbenchmarks(root)?;
    let results = Results {
        machine: report::machine(&context.hearth),
        threads,
        rounds_of_work: cpu_work.rounds,
        conditions,
        skipped,
        churn,
        many,
        micro,
        took: started.elapsed(),
    };
    let mut text = report::markdown(&results, settings);
    println!("{text}");
    // The off-CPU storm is measured by its own harness: keep its section.
    let old = std::fs::read_to_string(&settings.output).unwrap_or_default();
    if let Some(section) = crate::switchbench::section_of(&old) {
        text = format!(
            "{}

{section}
",
            text.trim_end()
        );
    }
    std::fs::write(&settings.output, &text)
        .with_context(|| format!("writing {}", settings.output.display()))?;
    eprintln!("bench: wrote {}", settings.output.display());
    let _ = std::fs::remove_dir_all(work.join("many"));
    Ok(())
}

/// How long each short-lived process of the churn burns.
const CHURN_BURN_US: u64 = 2000;

fn churn(context: &Context, settings: &Settings) -> anyhow::Result<ChurnResult> {
    eprintln!("bench: churn, {} processes x 3 rounds", settings.churn);
    let program = workloads::build_short_lived(&context.work)?;
    // Windows of 2 s and processes forgotten after 2 idle ones, so that
    // the forgetting shows within the run (defaults: 10 s and 6).
    let agent = tools::start_with(
        Tool::HearthRun(99, None),
        context,
        &[
            ("HEARTH_EXPORT_INTERVAL", "2s"),
            ("HEARTH_LIMITS__PROCESS_IDLE_WINDOWS", "2"),
        ],
    )?;
    let tracked = |agent: &tools::Watcher| {
        agent
            .metrics()
            .map_or(0.0, |m| metric(&m, "hearth_processes_tracked"))
    };
    let rss_before = agent.rss();
    let cpu_before = agent.cpu_seconds();
    let started = Instant::now();
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let round = Instant::now();
        workloads::churn(&program, CHURN_BURN_US, settings.churn, 2)?;
        let rate = settings.churn as f64 / round.elapsed().as_secs_f64();
        // Let a refresh of the agent's gauges pass.
        std::thread::sleep(Duration::from_secs(2));
        rounds.push((rate, agent.rss(), tracked(&agent)));
    }
    let cpu_percent = 100.0 * (agent.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64();
    // Three windows with nothing new: the churned processes are forgotten.
    std::thread::sleep(Duration::from_secs(8));
    let after_idle = (agent.rss(), tracked(&agent));
    let stopped = agent.stop()?;
    Ok(ChurnResult {
        per_round: settings.churn,
        rounds,
        after_idle,
        rss_before,
        cpu_percent,
        peak_rss: stopped.peak_rss,
        lost: stopped.lost,
    })
}

fn many(context: &Context, settings: &Settings) -> anyhow::Result<ManyResult> {
    eprintln!(
        "bench: {} idle processes with distinct binaries, {} s",
        settings.processes, settings.many_seconds
    );
    let idle = workloads::many_processes(&context.work, settings.processes, 1000, 1000)?;
    std::thread::sleep(Duration::from_secs(2));
    let agent = tools::start(Tool::HearthRun(99, None), context)?;
    let cpu_before = agent.cpu_seconds();
    let started = Instant::now();
    let mut second_half = Vec::new();
    while started.elapsed().as_secs() < settings.many_seconds {
        std::thread::sleep(Duration::from_secs(1));
        if started.elapsed().as_secs() * 2 >= settings.many_seconds {
            second_half.push(agent.rss());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_percent = 100.0 * (agent.cpu_seconds() - cpu_before) / seconds;
    let metrics = agent.metrics().unwrap_or_default();
    let stopped = agent.stop()?;
    drop(idle);
    Ok(ManyResult {
        processes: settings.processes,
        seconds,
        cpu_percent,
        steady_rss: second_half.iter().sum::<u64>() / second_half.len().max(1) as u64,
        peak_rss: stopped.peak_rss,
        tracked: metric(&metrics, "hearth_processes_tracked"),
        samples: metric(&metrics, "hearth_samples_total"),
        lost: stopped.lost,
    })
}
