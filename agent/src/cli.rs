//! The command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{export::OutputFormat, units::ByteSize};

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "eBPF CPU profiler: samples stacks on every CPU and writes flamegraphs and pprof profiles",
    long_about = "Hearth samples the kernel and user stacks of running programs from eBPF, \
        symbolizes them (ELF symbols, DWARF lines and inlined functions, kallsyms) and \
        writes them as an interactive flamegraph SVG, gzipped pprof or collapsed stacks.\n\n\
        Needs root, or CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE to name other \
        users' code), and a kernel with BTF (/sys/kernel/btf/vmlinux)."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the machine, some processes, or a command, and write one profile.
    #[command(after_help = "Examples:\n  \
            sudo hearth record --duration 30s --output flame.svg\n  \
            sudo hearth record --pid 1234 --output cpu.pb.gz\n  \
            sudo hearth record --frequency 999 --output stacks.folded -- ./my-benchmark --fast")]
    Record(RecordArgs),
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record (e.g. 10s, 2m). Default: 10s, or until COMMAND exits.
    #[arg(short, long, value_name = "DURATION")]
    pub duration: Option<humantime::Duration>,

    /// Samples per second on each CPU.
    #[arg(short = 'F', long, default_value_t = 99, value_name = "HZ",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frequency: u64,

    /// Profile this process, and children it starts while recording
    /// (repeatable). Recording ends early once all of them have exited.
    /// Default: every process.
    #[arg(short, long = "pid", value_name = "PID", conflicts_with = "command")]
    pub pids: Vec<u32>,

    /// Where to write the profile. Default: flame.<format's extension>.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Output format. Default: from the output file's extension
    /// (.svg, .pb.gz/.pprof, .folded/.txt), else svg.
    #[arg(short, long, value_enum)]
    pub format: Option<OutputFormat>,

    /// Leave out kernel stacks.
    #[arg(long)]
    pub no_kernel: bool,

    /// Size of the sample ring buffer shared by all CPUs (a power of two, at
    /// least one page, e.g. 4MiB). Samples that find it full are dropped and
    /// counted as lost.
    #[arg(long, default_value = "4MiB", value_name = "SIZE")]
    pub ring_buffer_size: ByteSize,

    /// Most processes the PID/command filter follows (the given ones and
    /// their descendants).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub max_traced_processes: u32,

    /// Most executable files held open for symbolization.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_open_objects: usize,

    /// Run this command and profile it and its descendants.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}
