//! Hearth's developer tasks. Each one installs what it is missing first, so
//! the README's commands work on a fresh machine.

mod bench;
mod fuzz;
mod netbench;
mod procs;
mod setup;
mod soak;
mod switchbench;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Hearth's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and test tools Hearth needs (idempotent;
    /// apt packages need root): rust-src for nightly, LLVM 22, bpf-linker,
    /// perf, Go (for `go tool pprof`), gcc/g++.
    Setup,
    /// Set up, build once in release mode, and run every test (as root: the
    /// end-to-end tests load BPF programs), then the kernel tests in a VM
    /// of each kernel from 5.10 on (`vm-test`).
    Test {
        /// Skip the VM kernel tests.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter;
        /// the VM kernel tests are skipped then).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the end-to-end tests that touch the kernel inside Debian's
    /// kernels (5.10, 6.1, 6.12 and the newest) booted under qemu with this
    /// machine's root file system, and on the host; one line per kernel.
    /// Downloads are cached in ~/.cache/hearth/vm (as root).
    VmTest {
        /// Kernels to run (repeatable): 5.10, 6.1, 6.12, newest, host.
        /// Default: all of them, and README.md's kernel table is rewritten.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
    },
    /// Measure Hearth's cost against perf and bpftrace on this machine (CPU
    /// overhead at the same rate, churn, many processes, the userspace
    /// pipeline) in one run, print the tables and write them to
    /// docs/benchmarks.md (as root; about 10 minutes).
    Bench {
        /// Rounds of the CPU overhead comparison (each runs every profiler,
        /// each paired with an unprofiled run).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        /// Seconds the CPU workload takes alone.
        #[arg(long, default_value_t = 5.0)]
        work_seconds: f64,
        /// Short-lived processes per churn round.
        #[arg(long, default_value_t = 3000)]
        churn: usize,
        /// Idle processes with distinct binaries.
        #[arg(long, default_value_t = 500)]
        processes: usize,
        /// Seconds the many-processes run is measured.
        #[arg(long, default_value_t = 60)]
        many_seconds: u64,
        /// Where the report is written.
        #[arg(long, default_value = "docs/benchmarks.md")]
        output: PathBuf,
    },
    /// Run the criterion microbenchmarks alone (as root: they record real
    /// samples), passing on criterion's arguments.
    Criterion {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run each fuzz target (cargo-fuzz, nightly) for a bounded time over
    /// its corpus in fuzz/corpus; print the executions of each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Run `hearth run` on a busy machine for a while at each rate and
    /// report its CPU, memory and bytes per export window (as root).
    Soak {
        /// Minutes per rate.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Sampling rates to run at (repeatable).
        #[arg(long = "frequency", default_values_t = [19, 99])]
        frequencies: Vec<u64>,
    },
    /// Measure loopback TCP throughput with the network events off and on,
    /// alternating in one run, and report the slowdown (as root).
    NetOverhead {
        /// Rounds of off/on (the order alternates each round).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        /// Transfers per condition in each round.
        #[arg(long, default_value_t = 3)]
        transfers: usize,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 2_000_000_000)]
        bytes: u64,
    },
    /// Measure a context-switch storm alone, under `hearth record --event
    /// off-cpu` and under `perf record -e sched:sched_switch -g`, rotating
    /// in one run, and write the figures to docs/benchmarks.md (as root).
    OffCpuOverhead {
        /// Rounds (the order rotates each round).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds of storm per condition and round.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Set up, build the agent in release mode and run it, e.g.
    /// `cargo xtask run -- record --duration 10s --output flame.svg`.
    Run {
        #[arg(last = true, required = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test { no_vm, args } => {
            setup::run()?;
            // Default members only: the eBPF crate builds for the BPF target,
            // through the agent's build.rs.
            cargo(&root, &["build", "--release"])?;
            // Unit tests of the default members, in parallel.
            cargo_with(
                &root,
                &[
                    "test",
                    "--release",
                    "-p",
                    "hearth",
                    "-p",
                    "hearth-common",
                    "-p",
                    "hearth-unwind",
                    "-p",
                    "hearth-devtools",
                    "-p",
                    "xtask",
                ],
                &args,
            )?;
            // End-to-end tests one at a time: they time real programs on 2 cores.
            let mut e2e: Vec<OsString> = args.clone();
            e2e.push("--test-threads=1".into());
            cargo_with(&root, &["test", "--release", "-p", "hearth-tests"], &e2e)?;
            // Benchmarks must keep compiling even when not run.
            cargo(&root, &["bench", "-p", "hearth", "--no-run"])?;
            if no_vm || !args.is_empty() {
                return Ok(());
            }
            vm::run(&root, &vm::all_kernels(), true)
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(&root, seconds)
        }
        Task::VmTest { kernels } => {
            setup::run()?;
            let all = vm::all_kernels();
            for name in &kernels {
                if !all.contains(name) {
                    bail!("--kernel {name}: choose from {}", all.join(", "));
                }
            }
            let names = if kernels.is_empty() { all } else { kernels };
            vm::run(&root, &names, true)
        }
        Task::Bench {
            rounds,
            work_seconds,
            churn,
            processes,
            many_seconds,
            output,
        } => {
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "hearth"])?;
            let settings = bench::Settings {
                rounds,
                work_seconds,
                churn,
                processes,
                many_seconds,
                output: root.join(output),
            };
            bench::run(&root, &settings)
        }
        Task::Criterion { args } => {
            setup::run()?;
            cargo_with(&root, &["bench", "-p", "hearth"], &args)
        }
        Task::Soak {
            minutes,
            frequencies,
        } => {
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "hearth"])?;
            let results = soak::run(&root, minutes, &frequencies)?;
            soak::print(&results);
            Ok(())
        }
        Task::NetOverhead {
            rounds,
            transfers,
            bytes,
        } => {
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "hearth"])?;
            let settings = netbench::Settings {
                rounds,
                transfers_per_round: transfers,
                bytes,
            };
            netbench::run(&root, &settings)?.print();
            Ok(())
        }
        Task::OffCpuOverhead { rounds, seconds } => {
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "hearth"])?;
            let settings = switchbench::Settings {
                rounds,
                seconds,
                output: root.join("docs/benchmarks.md"),
            };
            switchbench::run(&root, &settings)
        }
        Task::Run { args } => {
            setup::run()?;
            cargo(&root, &["build", "--release", "-p", "hearth"])?;
            let hearth = root.join("target/release/hearth");
            let status = Command::new(&hearth)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", hearth.display()))?;
            if !status.success() {
                bail!("hearth exited with {status}");
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    cargo_with(root, args, &[])
}

/// Runs cargo with `args`, then `--` and `extra` when there are any.
fn cargo_with(root: &Path, args: &[&str], extra: &[OsString]) -> anyhow::Result<()> {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(args);
    if let Some(path) = setup::path_with_cargo_bin() {
        command.env("PATH", path);
    }
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    setup::run_command(&mut command)
}
