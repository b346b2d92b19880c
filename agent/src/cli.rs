//! The command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    collect::probes::RingBufferSize,
    config::{ConfigFlag, ConfigSources, OtlpProtocol},
    deliver::OutputFormat,
    event::Event,
};

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "eBPF continuous profiler: CPU stacks and network events as flamegraphs, pprof and OTLP profiles",
    long_about = "Hearth samples the kernel and user stacks of running programs from eBPF, \
        records network events (bytes sent and received, TCP retransmits, resets, connect \
        latency, drops) with the stack or process behind them, and symbolizes every frame \
        (ELF symbols, DWARF lines and inlined functions, kallsyms). `hearth record` writes \
        flamegraph SVGs, gzipped pprof or collapsed stacks; `hearth run` profiles continuously \
        and exports OTLP profiles or Pyroscope pushes; `hearth ctl` switches a running agent \
        on and off and captures profiles on the spot.\n\n\
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
            sudo hearth record --event tx-bytes --event retransmits --output net.folded\n  \
            sudo hearth record --frequency 999 --output stacks.folded -- ./my-benchmark --fast")]
    Record(RecordArgs),
    /// Profile the whole machine continuously and export a profile per
    /// process (or container) every interval, over OTLP or to Pyroscope.
    #[command(
        after_help = "Configuration comes from --config FILE (documented example: deploy/hearth.yaml), \
            then HEARTH_<KEY> environment variables (__ between nesting levels, e.g. \
            HEARTH_OTLP__ENDPOINT, HEARTH_QUEUE__MAX_BYTES), then these flags; later wins.\n\n\
            Examples:\n  \
            sudo hearth run --otlp-endpoint http://otel-collector:4317\n  \
            sudo hearth run --pyroscope-url http://pyroscope:4040 --metrics-listen 0.0.0.0:9464\n  \
            sudo hearth run --config /etc/hearth/hearth.yaml --print-config"
    )]
    Run(RunArgs),
    /// Control a running `hearth run` over its socket (as root) or its TCP
    /// address (with a bearer token): status, enable for a while, capture a
    /// profile now, or fetch recent ones.
    #[command(after_help = "Examples:\n  \
            sudo hearth ctl status --json\n  \
            hearth ctl --url http://10.0.3.7:7443 --token-file token status\n  \
            sudo hearth ctl enable --for 15m\n  \
            sudo hearth ctl capture --duration 30s --pid 1234 --output now.svg\n  \
            sudo hearth ctl history --last 10m --container 3f2a9c --output recent.pb.gz")]
    Ctl(CtlArgs),
    /// Load and attach every kernel program for a moment (as root), then
    /// say what this kernel serves: each event with the hooks behind it, or
    /// why it is refused.
    #[command(after_help = "Examples:\n  \
            sudo hearth check\n  \
            sudo hearth check --json")]
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,

    /// Reach the agent's control API over TCP instead (its control.listen),
    /// e.g. http://10.0.3.7:7443.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "socket",
        requires = "token_file"
    )]
    pub url: Option<url::Url>,

    /// File holding the bearer token for --url (the agent's control.token_file).
    #[arg(long, value_name = "FILE", env = "HEARTH_CTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Which processes a capture or history keeps (all when none is given).
#[derive(Debug, Args)]
pub struct CtlFilter {
    /// Only this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only this container (its id, or a unique prefix such as docker's 12 digits).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Only this Kubernetes pod, by UID.
    #[arg(long, value_name = "UID")]
    pub pod_uid: Option<String>,
    /// Only this Kubernetes pod, by namespace and name (the agent needs the
    /// Kubernetes API for this).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Whether the agent samples, until when, and what it has collected.
    Status {
        /// Print JSON: at least `enabled` and `expires_in_seconds`.
        #[arg(long)]
        json: bool,
    },
    /// Sample for a while (on-demand mode); sampling stops by itself after.
    Enable {
        /// How long, e.g. 15m.
        #[arg(long = "for", value_name = "DURATION")]
        duration: humantime::Duration,
    },
    /// Stop sampling now (on-demand mode).
    Disable,
    /// Record now for a while and write the profile (svg, pprof or folded,
    /// from the output's extension).
    Capture {
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        duration: humantime::Duration,
        /// What to capture: one of the agent's events (cpu, off-cpu, tx-bytes...).
        #[arg(short, long, value_name = "NAME", default_value = "cpu")]
        event: Event,
        #[command(flatten)]
        filter: CtlFilter,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Write the recent profiles of the agent's local history, merged, as
    /// gzipped pprof.
    History {
        /// How far back, e.g. 10m.
        #[arg(long, value_name = "DURATION")]
        last: humantime::Duration,
        /// Which profiles: one of the agent's events (cpu, off-cpu, tx-bytes...).
        #[arg(short, long, value_name = "NAME", default_value = "cpu")]
        event: Event,
        #[command(flatten)]
        filter: CtlFilter,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Samples per second on each CPU [key: frequency, default 19].
    #[arg(short = 'F', long, value_name = "HZ")]
    pub frequency: Option<String>,

    /// Profile to build (repeatable): cpu, tx-bytes, rx-bytes, retransmits,
    /// resets, connect-latency, drops, off-cpu [key: events, default cpu].
    #[arg(short, long = "event", value_name = "NAME")]
    pub events: Vec<String>,

    /// How often profiles are built and exported [key: export_interval, default 10s].
    #[arg(long, value_name = "DURATION")]
    pub export_interval: Option<String>,

    /// OTLP receiver URL; turns OTLP export on [key: otlp.endpoint].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport [key: otlp.protocol, default grpc].
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// Extra OTLP request header, e.g. `X-Scope-OrgID=team-a` (repeatable)
    /// [key: otlp.headers].
    #[arg(long = "otlp-header", value_name = "K=V")]
    pub otlp_headers: Vec<String>,

    /// Grafana Pyroscope base URL; turns the push export on [key: pyroscope.url].
    #[arg(long, value_name = "URL")]
    pub pyroscope_url: Option<String>,

    /// Address for /metrics, /healthz and /readyz, e.g. 0.0.0.0:9464 [key: metrics.listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// always: sample from start to stop; on-demand: only while enabled with
    /// `hearth ctl enable` or during a capture [key: mode, default always].
    #[arg(long, value_enum)]
    pub mode: Option<crate::config::Mode>,

    /// How user stacks are walked: fp (frame pointers), dwarf (unwind
    /// tables from .eh_frame for every process) or auto (tables once loaded
    /// for a process) [key: unwind.mode, default auto].
    #[arg(long, value_enum)]
    pub unwind: Option<crate::config::UnwindMethod>,

    /// Unix socket of the control API used by `hearth ctl`
    /// [key: control.socket, default /run/hearth/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<String>,

    /// Also serve the control API on this TCP address, e.g. 0.0.0.0:7443;
    /// every request needs the bearer token of --control-token-file
    /// [key: control.listen].
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<String>,

    /// File holding the control API's bearer token [key: control.token_file].
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<String>,

    /// Directory where queued profiles survive restarts [key: spool.dir].
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<String>,

    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// An `--otlp-header` that is not `NAME=VALUE`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--otlp-header {0:?} is not NAME=VALUE")]
pub struct BadHeader(pub String);

impl RunArgs {
    /// The configuration sources these arguments name, environment included.
    pub fn sources(&self) -> Result<ConfigSources, BadHeader> {
        let mut flags = Vec::new();
        let mut flag = |key: &str, value: &Option<String>, name: &'static str| {
            if let Some(value) = value {
                flags.push(ConfigFlag::new(key, value, name));
            }
        };
        flag("frequency", &self.frequency, "frequency");
        flag("export_interval", &self.export_interval, "export-interval");
        flag("otlp.endpoint", &self.otlp_endpoint, "otlp-endpoint");
        let protocol = self
            .otlp_protocol
            .map(|p| format!("{p:?}").to_ascii_lowercase());
        flag("otlp.protocol", &protocol, "otlp-protocol");
        flag("pyroscope.url", &self.pyroscope_url, "pyroscope-url");
        flag("metrics.listen", &self.metrics_listen, "metrics-listen");
        flag("spool.dir", &self.spool_dir, "spool-dir");
        let mode = self.mode.map(|m| match m {
            crate::config::Mode::Always => "always".to_owned(),
            crate::config::Mode::OnDemand => "on-demand".to_owned(),
        });
        flag("mode", &mode, "mode");
        let unwind = self.unwind.map(|u| u.name().to_owned());
        flag("unwind.mode", &unwind, "unwind");
        flag("control.socket", &self.control_socket, "control-socket");
        flag("control.listen", &self.control_listen, "control-listen");
        flag(
            "control.token_file",
            &self.control_token_file,
            "control-token-file",
        );
        if !self.events.is_empty() {
            flags.push(ConfigFlag {
                path: vec!["events".into()],
                value: yaml_serde::Value::Sequence(
                    self.events
                        .iter()
                        .map(|e| yaml_serde::Value::String(e.clone()))
                        .collect(),
                ),
                flag: "event",
            });
        }
        for header in &self.otlp_headers {
            let (name, value) = header
                .split_once('=')
                .ok_or_else(|| BadHeader(header.clone()))?;
            flags.push(ConfigFlag {
                path: vec!["otlp".into(), "headers".into(), name.trim().into()],
                value: yaml_serde::Value::String(value.trim().into()),
                flag: "otlp-header",
            });
        }
        Ok(ConfigSources {
            file: self.config.clone(),
            flags,
            ..ConfigSources::default()
        }
        .with_process_env())
    }
}

/// A block time: a duration of zero or more.
fn block_time(text: &str) -> Result<std::time::Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err(format!(
            "{text:?} is negative; give a duration of 0 or more (e.g. 1ms, 100us, 0s for every block)"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration ({err}); write e.g. 1ms, 100us or 0s"))
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

    /// What to profile (repeatable): cpu, tx-bytes, rx-bytes, retransmits,
    /// resets, connect-latency, drops, off-cpu. With several, one file per
    /// event, named <stem>.<event>.<ext> after --output.
    #[arg(short, long = "event", value_name = "NAME", default_value = "cpu")]
    pub events: Vec<Event>,

    /// off-cpu: the shortest block recorded (e.g. 1ms, 100us, 0s for all);
    /// shorter ones are counted in the summary.
    #[arg(long, value_name = "DURATION", default_value = "1ms", allow_hyphen_values = true,
          value_parser = block_time)]
    pub off_cpu_min: std::time::Duration,

    /// off-cpu: the chance a block is recorded, above 0 and at most 1; the
    /// time recorded is scaled by 1/probability.
    #[arg(long, value_name = "P", default_value = "1")]
    pub off_cpu_probability: crate::units::Probability,

    /// Leave out kernel stacks.
    #[arg(long)]
    pub no_kernel: bool,

    /// Size of the sample ring buffer shared by all CPUs: `auto` (about 2 s
    /// of samples from every CPU at the chosen rate, 256KiB to 64MiB), or a
    /// power of two of at least one page (e.g. 4MiB). Samples that find it
    /// full are dropped and counted as lost.
    #[arg(long, default_value = "auto", value_name = "SIZE")]
    pub ring_buffer_size: RingBufferSize,

    /// Most processes the PID/command filter follows (the given ones and
    /// their descendants).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub max_traced_processes: u32,

    /// Most executable files held open for symbolization.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_open_objects: usize,

    /// How user stacks are walked: fp (frame pointers), dwarf (unwind
    /// tables from .eh_frame for every process) or auto (tables once loaded
    /// for a process).
    #[arg(long, value_enum, default_value_t = crate::config::UnwindMethod::Auto)]
    pub unwind: crate::config::UnwindMethod,

    /// Run this command and profile it and its descendants.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}
