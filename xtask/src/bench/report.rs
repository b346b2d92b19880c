//! The report: the machine, the tables, and how to get them again, as
//! Markdown (docs/benchmarks.md is this output).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{Condition, Results, Settings, tools::Tool};
use crate::procs::{median, mib};

/// One criterion benchmark: its name, time per batch and throughput.
pub struct Micro {
    pub name: String,
    pub time: String,
    pub throughput: Option<String>,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// What the figures were measured on.
pub fn machine(hearth: &Path) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|m| m.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or_else(String::new, |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("CPU".into(), format!("{model}, {cores} cores")),
        ("memory".into(), memory),
        ("kernel".into(), first_line("uname", &["-sr"])),
        (
            "hearth".into(),
            first_line(hearth.to_str().unwrap_or("hearth"), &["--version"]),
        ),
        ("perf".into(), first_line("perf", &["--version"])),
        ("bpftrace".into(), first_line("bpftrace", &["--version"])),
    ]
}

/// Runs the pipeline and export criterion benchmarks briefly and reads
/// their results.
pub fn microbenchmarks(root: &Path) -> anyhow::Result<Vec<Micro>> {
    eprintln!("bench: userspace pipeline microbenchmarks (criterion)");
    let output = Command::new("cargo")
        .current_dir(root)
        .args([
            "bench", "-p", "hearth", "--bench", "pipeline", "--bench", "export", "--",
        ])
        .args(["--warm-up-time", "1", "--measurement-time", "3", "--noplot"])
        .output()
        .context("running cargo bench")?;
    if !output.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_criterion(&String::from_utf8_lossy(&output.stdout)))
}

/// Criterion's report: a name line, then `time: [lo mid hi]` and maybe
/// `thrpt: [lo mid hi]`; the middle figure is kept.
fn parse_criterion(text: &str) -> Vec<Micro> {
    let middle = |line: &str| -> Option<String> {
        let inside = line.split_once('[')?.1.split_once(']')?.0;
        let words: Vec<&str> = inside.split_whitespace().collect();
        (words.len() == 6).then(|| format!("{} {}", words[2], words[3]))
    };
    let mut found: Vec<Micro> = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some((before, after)) = line.split_once("time:") {
            // `name` on the line before, or on this one for short names.
            // A `change:` section's time line has no name and is skipped.
            let name = if before.trim().is_empty() {
                pending.take()
            } else {
                Some(before.trim().to_owned())
            };
            if let (Some(name), Some(time)) = (name, middle(after)) {
                found.push(Micro {
                    name,
                    time,
                    throughput: None,
                });
            }
        } else if let Some(rest) = line.strip_prefix("thrpt:") {
            if let Some(last) = found.last_mut().filter(|m| m.throughput.is_none()) {
                last.throughput = middle(rest);
            }
        } else if !line.is_empty() && !line.contains(' ') && line.contains('/') {
            pending = Some(line.to_owned());
        }
    }
    found
}

/// Each run's slowdown against its paired unprofiled run, in %.
fn slowdowns(condition: &Condition) -> Vec<f64> {
    condition
        .walls
        .iter()
        .zip(&condition.baselines)
        .map(|(with, without)| 100.0 * (with / without - 1.0))
        .collect()
}

fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

pub fn markdown(results: &Results, settings: &Settings) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Everything below the method was written by `cargo xtask bench` (as root) \
         in {:.1} minutes; run it again to regenerate this file.\n",
        results.took.as_secs_f64() / 60.0
    );
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "- **CPU overhead.** A C program does a fixed amount of hashing on {threads} \
         threads (one per core; {rounds} rounds of 1000 hashes each, through three call \
         levels, built without frame pointers like distribution packages) and exits. It \
         runs alone and under each profiler, machine-wide: `hearth record -F 99`, \
         `hearth run -F 19` (both with the default `--unwind auto`), `hearth run -F 99` \
         with `--unwind fp` (the kernel's frame-pointer walk) and with `--unwind dwarf` \
         (unwind tables, full stacks) (no exporter: profiles go to its local history), \
         `perf record -a -g -F 99` \
         and a bpftrace `profile:hz:99` aggregation of kernel and user stacks by command. \
         Each profiler is started, given 2 s to attach, then the workload runs; the \
         profiler is stopped as a user would (SIGINT, SIGTERM for the daemon) after it. \
         {n} rounds; within a round every profiler runs once, each right after an \
         unprofiled run of the workload, and the order rotates from round to round, so \
         drift falls on all alike. Slowdown is each profiled run's wall time against the \
         unprofiled run just before it; the table gives the median and the range over \
         the rounds. Profiler CPU is the user+system time of its own threads while the \
         workload ran (from `schedstat`), as a share of one core; work done in the \
         kernel on the sampled CPU is not in it. For Hearth and bpftrace that work is \
         their BPF programs, whose run time the kernel counts while \
         `kernel.bpf_stats_enabled` is on (the harness turns it on for the run); perf's \
         in-kernel stack copying has no such counter and shows only in the slowdown. \
         Peak RSS is the profiler's `VmHWM`.",
        threads = results.threads,
        rounds = results.rounds_of_work,
        n = settings.rounds,
    );
    let _ = writeln!(
        w,
        "- **Churn.** `hearth run -F 99` while 2 shells start {} short-lived processes \
         (each burns 2 ms in its own function and exits), three times; agent RSS and \
         tracked processes after each round, and again after 8 s without new ones. For \
         this run windows are 2 s and a process is forgotten after 2 idle windows \
         (defaults 10 s and 6), so that the forgetting shows within the run.",
        results.churn.per_round
    );
    let _ = writeln!(
        w,
        "- **Many processes.** {} copies of a small C program, each linked with its own \
         build id, each waking every second to burn 1 ms in its own function; \
         `hearth run -F 99` watches them for {:.0} s. Steady RSS is the mean over the \
         second half.",
        results.many.processes, results.many.seconds
    );
    let _ = writeln!(
        w,
        "- **Pipeline.** The criterion benchmarks in `agent/benches` (samples recorded \
         from the kernel, then replayed through decode, intern, symbolize and profile \
         building; OTLP and Pyroscope encoding of a window), with 3 s of measurement.\n"
    );

    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (key, value) in &results.machine {
        let _ = writeln!(w, "| {key} | {value} |");
    }

    let _ = writeln!(w, "\n## CPU overhead at the same rate\n");
    let _ = writeln!(
        w,
        "| condition | workload wall time (median) | slowdown (median) | slowdown range | profiler CPU, user space (% of one core) | BPF programs in the kernel (% of one core) | ns per BPF run | profiler peak RSS | samples lost |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
    let alone: Vec<f64> = results
        .conditions
        .iter()
        .flat_map(|c| c.baselines.iter().copied())
        .collect();
    let _ = writeln!(
        w,
        "| alone ({} runs) | {:.3} s | - | - | - | - | - | - | - |",
        alone.len(),
        median(&alone)
    );
    for condition in &results.conditions {
        let wall = median(&condition.walls);
        let slow = slowdowns(condition);
        let (lo, hi) = range(&slow);
        let hearth = matches!(condition.tool, Tool::HearthRun(..) | Tool::HearthRecord(_));
        let _ = writeln!(
            w,
            "| {} | {wall:.3} s | {:+.2}% | {lo:+.2}% … {hi:+.2}% | {:.2}% | {} | {} | {:.1} MiB | {} |",
            condition.tool.name(),
            median(&slow),
            median(&condition.tool_cpu),
            if condition.bpf_ns_per_run.is_empty() {
                "- (not BPF)".to_owned()
            } else {
                format!("{:.3}%", median(&condition.bpf_cpu))
            },
            if condition.bpf_ns_per_run.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(&condition.bpf_ns_per_run))
            },
            mib(condition.peak_rss),
            if hearth {
                format!("{:.0}", condition.lost)
            } else {
                "-".into()
            }
        );
    }
    for skipped in &results.skipped {
        let _ = writeln!(w, "\nNot measured: {skipped}.");
    }

    let churn = &results.churn;
    let _ = writeln!(w, "\n## Process churn (`hearth run -F 99`)\n");
    let _ = writeln!(w, "| after | processes/s | agent RSS | processes tracked |");
    let _ = writeln!(w, "|---|---|---|---|");
    let _ = writeln!(w, "| start | - | {:.1} MiB | - |", mib(churn.rss_before));
    for (i, (rate, rss, tracked)) in churn.rounds.iter().enumerate() {
        let _ = writeln!(
            w,
            "| round {} ({} processes) | {rate:.0} | {:.1} MiB | {tracked:.0} |",
            i + 1,
            churn.per_round,
            mib(*rss)
        );
    }
    let _ = writeln!(
        w,
        "| 8 s later | - | {:.1} MiB | {:.0} |",
        mib(churn.after_idle.0),
        churn.after_idle.1
    );
    let _ = writeln!(
        w,
        "\nAgent CPU during the churn: {:.2}% of one core; peak RSS {:.1} MiB; samples lost: {:.0}.",
        churn.cpu_percent,
        mib(churn.peak_rss),
        churn.lost
    );

    let many = &results.many;
    let _ = writeln!(w, "\n## Many processes (`hearth run -F 99`)\n");
    let _ = writeln!(
        w,
        "| processes | agent CPU (% of one core) | steady RSS | peak RSS | processes tracked | samples | lost |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        w,
        "| {} | {:.2}% | {:.1} MiB | {:.1} MiB | {:.0} | {:.0} | {:.0} |",
        many.processes,
        many.cpu_percent,
        mib(many.steady_rss),
        mib(many.peak_rss),
        many.tracked,
        many.samples,
        many.lost
    );

    let _ = writeln!(w, "\n## Userspace pipeline (criterion)\n");
    let _ = writeln!(w, "| benchmark | time per batch | throughput |");
    let _ = writeln!(w, "|---|---|---|");
    for micro in &results.micro {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            micro.name,
            micro.time,
            micro.throughput.as_deref().unwrap_or("-")
        );
    }

    let _ = writeln!(w, "\n## Reproduce\n");
    let _ = writeln!(
        w,
        "```sh\nsudo cargo xtask bench            # about 17 minutes; rewrites docs/benchmarks.md\n\
         sudo cargo xtask bench --rounds 9 --output /tmp/bench.md\n```\n\n\
         Run it on an otherwise idle machine: anything else running shows up as noise \
         in every condition."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_reports_of_both_layouts() {
        let text = "\
cpu_samples/ingest_symbolize_profile_warm
                        time:   [598.12 µs 599.00 µs 600.20 µs]
                        thrpt:  [9.9733 Melem/s 9.9931 Melem/s 10.008 Melem/s]
Found 2 outliers among 20 measurements (10.00%)
                        change:
                        time:   [-1.0201% -0.5130% -0.0139%] (p = 0.06 > 0.05)
                        thrpt:  [+0.0139% +0.5157% +1.0306%]
export_window/otlp_encode_19hz
                        time:   [1.2000 ms 1.2100 ms 1.2200 ms]
short/name              time:   [10.0 ns 11.0 ns 12.0 ns]
";
        let found = parse_criterion(text);
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cpu_samples/ingest_symbolize_profile_warm",
                "export_window/otlp_encode_19hz",
                "short/name"
            ]
        );
        assert_eq!(found[0].time, "599.00 µs");
        assert_eq!(found[0].throughput.as_deref(), Some("9.9931 Melem/s"));
        assert_eq!(found[1].throughput, None);
        assert_eq!(found[2].time, "11.0 ns");
    }

    #[test]
    fn slowdowns_pair_each_round_with_its_own_baseline() {
        let with = Condition {
            tool: Tool::Perf(99),
            baselines: vec![4.0, 5.0],
            walls: vec![4.04, 5.0],
            tool_cpu: vec![],
            bpf_cpu: vec![],
            bpf_ns_per_run: vec![],
            peak_rss: 0,
            lost: 0.0,
        };
        let slow = slowdowns(&with);
        assert!((slow[0] - 1.0).abs() < 1e-9 && slow[1].abs() < 1e-9);
        assert_eq!(range(&slow), (slow[1], slow[0]));
    }
}
