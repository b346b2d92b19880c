//! `hearth record`'s settings, validated from its command line.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use crate::{
    aggregate::network,
    cli::RecordArgs,
    collect::probes::{
        OffCpuSettings, ProbeSettings, RingBufferSize, UnwindCapacity, online_cpu_count,
    },
    collect::{CollectorSettings, SymbolizerSettings, network_probes},
    deliver::{OutputFormat, UnknownFormat},
    enrich::process::ProcessLimits,
    enrich::unwind::{self, UnwindLimits},
    event::Event,
};

/// Default recording time when no command bounds it.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    /// None: until the command exits (or Ctrl-C).
    pub duration: Option<Duration>,
    pub frequency_hz: u64,
    pub pids: Vec<u32>,
    pub command: Vec<OsString>,
    /// What to profile, without repeats, in the order given.
    pub events: Vec<Event>,
    /// Where each event's profile goes: `output` itself for one event,
    /// `<stem>.<event>.<ext>` beside it for several.
    pub outputs: Vec<(Event, PathBuf)>,
    pub format: OutputFormat,
    pub kernel_stacks: bool,
    pub ring_buffer_size: RingBufferSize,
    pub max_traced_processes: u32,
    pub process_limits: ProcessLimits,
    pub unwind: crate::config::UnwindMethod,
    /// Which blocks off-CPU profiles record.
    pub off_cpu: OffCpuSettings,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(transparent)]
    Format(#[from] UnknownFormat),
    #[error("--duration must be longer than zero")]
    ZeroDuration,
    #[error("--pid 0 is not a process; give the PID of a running process")]
    PidZero,
    #[error("--{0} must be at least 1")]
    ZeroLimit(&'static str),
}

impl TryFrom<RecordArgs> for RecordOptions {
    type Error = OptionsError;

    fn try_from(args: RecordArgs) -> Result<Self, OptionsError> {
        let duration = match args.duration {
            Some(d) if d.is_zero() => return Err(OptionsError::ZeroDuration),
            Some(d) => Some(*d),
            None if args.command.is_empty() => Some(DEFAULT_DURATION),
            None => None,
        };
        let (output, format) = match (args.output, args.format) {
            (Some(output), Some(format)) => (output, format),
            (Some(output), None) => {
                let format = OutputFormat::from_path(&output)?;
                (output, format)
            }
            (None, format) => {
                let format = format.unwrap_or(OutputFormat::Svg);
                (
                    PathBuf::from(format!("flame.{}", format.extension())),
                    format,
                )
            }
        };
        let mut events = Vec::new();
        for event in args.events {
            if !events.contains(&event) {
                events.push(event);
            }
        }
        let outputs = if events.len() == 1 {
            vec![(events[0], output)]
        } else {
            events
                .iter()
                .map(|&event| (event, per_event_path(&output, format, event)))
                .collect()
        };
        if args.pids.contains(&0) {
            return Err(OptionsError::PidZero);
        }
        if args.max_traced_processes == 0 {
            return Err(OptionsError::ZeroLimit("max-traced-processes"));
        }
        Ok(Self {
            duration,
            frequency_hz: args.frequency,
            pids: args.pids,
            command: args.command,
            events,
            outputs,
            format,
            kernel_stacks: !args.no_kernel,
            ring_buffer_size: args.ring_buffer_size,
            max_traced_processes: args.max_traced_processes,
            process_limits: ProcessLimits {
                max_open_objects: args.max_open_objects,
                ..ProcessLimits::default()
            },
            unwind: args.unwind,
            off_cpu: OffCpuSettings {
                min_block_ns: args.off_cpu_min.as_nanos().min(u128::from(u64::MAX)) as u64,
                probability: args.off_cpu_probability.0,
                max_blocked_threads: network::DEFAULT_MAX_BLOCKED_THREADS,
            },
        })
    }
}

/// `net.folded` → `net.tx-bytes.folded`; `cpu.pb.gz` → `cpu.tx-bytes.pb.gz`.
fn per_event_path(output: &std::path::Path, format: OutputFormat, event: Event) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let known = [".pb.gz", ".pprof", ".svg", ".folded", ".txt"];
    let (stem, extension) = known
        .iter()
        .find_map(|ext| name.strip_suffix(ext).map(|stem| (stem, &ext[1..])))
        .or_else(|| name.rsplit_once('.'))
        .unwrap_or((name.as_str(), format.extension()));
    output.with_file_name(format!("{stem}.{}.{extension}", event.name()))
}

impl RecordOptions {
    /// True when sampling is limited to chosen processes.
    pub fn filters_processes(&self) -> bool {
        !self.pids.is_empty() || !self.command.is_empty()
    }

    /// True when CPU stacks are sampled.
    pub fn samples_cpu(&self) -> bool {
        self.events.contains(&Event::Cpu)
    }

    /// The network events asked for.
    pub fn network_events(&self) -> Vec<Event> {
        self.events
            .iter()
            .copied()
            .filter(|e| e.is_ring_event())
            .collect()
    }
}

impl From<&RecordOptions> for CollectorSettings {
    fn from(options: &RecordOptions) -> Self {
        let network_events = options.network_events();
        let network = network_probes(
            &network_events,
            network::DEFAULT_RING_BYTES,
            network::DEFAULT_SOCKET_OWNERS,
            true,
            network::DEFAULT_CALL_SITES,
            options.off_cpu,
        );
        let probes = ProbeSettings {
            cpu: options.samples_cpu(),
            frequency_hz: options.frequency_hz,
            kernel_stacks: options.kernel_stacks,
            filter_processes: options.filters_processes(),
            ring_buffer_bytes: options
                .ring_buffer_size
                .bytes(online_cpu_count(), options.frequency_hz),
            filter_capacity: options.max_traced_processes,
            network,
            cgroup_capacity: None,
            ignore_own_process: true,
            unwind_mode: options.unwind.kernel_mode(),
            unwind_capacity: UnwindCapacity::new(
                unwind::DEFAULT_SHARD_ROWS,
                unwind::DEFAULT_MAX_ROWS,
                options.max_traced_processes,
            ),
        };
        Self {
            probes,
            network_events,
            pending_connects: network::DEFAULT_PENDING_CONNECTS,
            call_sites: network::DEFAULT_CALL_SITES as usize,
            unwind: UnwindLimits {
                max_rows_per_object: unwind::DEFAULT_MAX_ROWS_PER_OBJECT as usize,
                refresh_interval: unwind::MAX_REFRESH,
            },
            processes: options.process_limits,
            // A recording is short-lived: it affords DWARF for lines and
            // inlined frames.
            symbolizer: SymbolizerSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<RecordOptions, String> {
        let cli = Cli::try_parse_from(["hearth", "record"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Record(args) = cli.command else {
            unreachable!("parsed `hearth record`")
        };
        RecordOptions::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_profile_the_machine_for_ten_seconds_into_an_svg() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.duration, Some(Duration::from_secs(10)));
        assert_eq!(options.frequency_hz, 99);
        assert_eq!(options.outputs, [(Event::Cpu, PathBuf::from("flame.svg"))]);
        assert_eq!(options.format, OutputFormat::Svg);
        assert!(options.kernel_stacks && !options.filters_processes());
        assert_eq!(options.ring_buffer_size, RingBufferSize::Auto);
    }

    #[test]
    fn format_comes_from_flag_then_extension() {
        assert_eq!(
            parse(&["-o", "x.pb.gz"]).unwrap().format,
            OutputFormat::Pprof
        );
        assert_eq!(
            parse(&["-o", "x.txt"]).unwrap().format,
            OutputFormat::Folded
        );
        let explicit = parse(&["-o", "x.data", "--format", "folded"]).unwrap();
        assert_eq!(
            (explicit.format, explicit.outputs[0].1.clone()),
            (OutputFormat::Folded, "x.data".into())
        );
        let named = parse(&["--format", "pprof"]).unwrap();
        assert_eq!(named.outputs[0].1, PathBuf::from("flame.pb.gz"));
    }

    #[test]
    fn several_events_write_one_file_each_named_after_the_output() {
        let one = parse(&["-e", "tx-bytes", "-o", "net.folded"]).unwrap();
        assert_eq!(one.outputs, [(Event::TxBytes, "net.folded".into())]);
        assert!(!one.samples_cpu());
        let several = parse(&[
            "-e",
            "tx-bytes",
            "-e",
            "cpu",
            "-e",
            "tx-bytes",
            "-o",
            "d/net.pb.gz",
        ])
        .unwrap();
        assert_eq!(
            several.outputs,
            [
                (Event::TxBytes, "d/net.tx-bytes.pb.gz".into()),
                (Event::Cpu, "d/net.cpu.pb.gz".into()),
            ]
        );
        assert_eq!(several.network_events(), [Event::TxBytes]);
        let data = parse(&["-e", "drops", "-e", "resets", "-o", "x.data", "-f", "svg"]).unwrap();
        assert_eq!(data.outputs[1].1, PathBuf::from("x.resets.data"));
        let err = parse(&["-e", "bytes"]).unwrap_err();
        assert!(err.contains("tx-bytes"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_what_would_work() {
        assert!(parse(&["-o", "x.json"]).unwrap_err().contains("--format"));
        assert!(parse(&["--format", "json"]).unwrap_err().contains("svg"));
        assert!(
            parse(&["--duration", "0s"])
                .unwrap_err()
                .contains("longer than zero")
        );
        assert!(parse(&["--duration", "soon"]).is_err());
        assert!(parse(&["--frequency", "0"]).is_err());
        let ring = parse(&["--ring-buffer-size", "3MiB"]).unwrap_err();
        assert!(
            ring.contains("power of two") && ring.contains("3MiB"),
            "{ring}"
        );
        assert!(
            parse(&["--ring-buffer-size", "1KiB"])
                .unwrap_err()
                .contains("one page")
        );
        assert!(parse(&["--ring-buffer-size", "lots"]).is_err());
        let small = parse(&["--ring-buffer-size", "64KiB"]).unwrap();
        let expected = RingBufferSize::Fixed(crate::units::ByteSize(64 << 10));
        assert_eq!(small.ring_buffer_size, expected);
        assert!(
            parse(&["--pid", "0"])
                .unwrap_err()
                .contains("running process")
        );
        assert!(parse(&["--pid", "abc"]).is_err());
    }

    #[test]
    fn a_command_runs_until_it_exits_unless_a_duration_is_given() {
        let options = parse(&["--", "sleep", "1"]).unwrap();
        assert_eq!(options.command, ["sleep", "1"]);
        assert_eq!(options.duration, None);
        assert!(options.filters_processes());
        let bounded = parse(&["-d", "2s", "--", "sleep", "5"]).unwrap();
        assert_eq!(bounded.duration, Some(Duration::from_secs(2)));
    }

    #[test]
    fn pids_and_a_command_cannot_be_combined() {
        assert!(parse(&["--pid", "1", "--", "true"]).is_err());
        let pids = parse(&["-p", "10", "-p", "20", "-d", "1m"]).unwrap();
        assert_eq!(pids.pids, [10, 20]);
        assert_eq!(pids.duration, Some(Duration::from_secs(60)));
    }
}
