//! `hearth record`: profile the machine, some processes or a command for a
//! while, then write one profile file.

mod options;
mod output;
mod progress;
mod targets;

use std::{
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

pub use options::{DEFAULT_DURATION, OptionsError, RecordOptions};
pub use output::{OutputError, OutputFile};
pub use targets::TargetError;

use crate::{
    collect::preflight,
    collect::probes::{DRAIN_INTERVAL, KernelCounters, NetCounters, Probes, check_frequency},
    collect::{Collector, CollectorSettings},
    deliver::{self, OutputFormat, SvgOptions},
    enrich::unwind::UnwindStats,
    event::Event,
    pipeline::Pipeline,
    profile::{Profile, ProfileMeta},
};
use progress::Progress;

/// How often the status line and the lost-sample count refresh.
const STATUS_INTERVAL: Duration = Duration::from_millis(250);

/// Why recording ended.
#[derive(Debug)]
pub enum StopReason {
    DurationElapsed,
    Interrupted,
    CommandExited(ExitStatus),
    TargetsExited,
}

/// One file a recording wrote.
#[derive(Debug)]
pub struct Written {
    pub event: Event,
    pub path: PathBuf,
    /// Sum of the profile's values, in the event's unit.
    pub total: u64,
}

/// What a recording produced.
#[derive(Debug)]
pub struct RecordReport {
    pub outputs: Vec<Written>,
    pub format: OutputFormat,
    pub samples: u64,
    pub network_events: u64,
    pub processes: usize,
    pub unique_stacks: usize,
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    pub kernel: KernelCounters,
    pub net: NetCounters,
    /// What the table unwinder loaded (None in frame-pointer mode).
    pub unwind: Option<UnwindStats>,
    /// What the symbolizer could not read, and why.
    pub symbolizer: crate::symbolize::SymbolizerStats,
}

pub async fn record(options: RecordOptions) -> anyhow::Result<RecordReport> {
    // Everything that can be wrong with the request is checked before the
    // kernel is touched, so nothing is ever collected only to be lost.
    let outputs = options
        .outputs
        .iter()
        .map(|(event, path)| Ok((*event, OutputFile::prepare(path)?)))
        .collect::<Result<Vec<_>, OutputError>>()?;
    for &pid in &options.pids {
        targets::check_running(pid)?;
    }
    preflight::check_privileges()?;
    if let Err(problem) = check_frequency(options.frequency_hz) {
        bail!("--frequency {problem}");
    }
    preflight::raise_resource_limits();

    let mut collector =
        Collector::load(CollectorSettings::from(&options)).context("loading the probes")?;
    for (event, reason) in collector.refused_events() {
        eprintln!("hearth: event `{event}` is not recorded: {reason}; the other events are");
    }
    for &pid in &options.pids {
        collector.probes_mut().trace_process(pid)?;
    }
    let start_wall = SystemTime::now();
    let started = Instant::now();
    collector
        .set_sampling(true)
        .context("starting the probes")?;
    let child = if options.command.is_empty() {
        None
    } else {
        Some(spawn_traced(collector.probes_mut(), &options)?)
    };
    let progress = Progress::start();
    let stopped_by = collect(&mut collector, &options, child, &progress).await?;
    let elapsed = started.elapsed();
    collector.stop(|_, _| {}).context("stopping the probes")?;
    let kernel = collector.probes().counters()?;
    let net = collector.probes().net_counters()?;
    let unwind = collector.unwind_stats();
    let mut pipeline = collector.into_pipeline();

    let meta = ProfileMeta {
        event: Event::Cpu,
        period_ns: 1_000_000_000 / options.frequency_hz,
        start_unix_ns: start_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        duration_ns: elapsed.as_nanos() as u64,
    };
    let lost = |event| {
        if event == Event::Cpu {
            kernel.ring_full
        } else {
            net.ring_full
        }
    };
    let written = write_outputs(&mut pipeline, outputs, &options, meta, lost, &progress);
    progress.finish();
    Ok(RecordReport {
        outputs: written?,
        format: options.format,
        samples: pipeline.samples(),
        network_events: pipeline.network_events(),
        processes: pipeline.processes(),
        unique_stacks: pipeline.unique_stacks(),
        elapsed,
        stopped_by,
        kernel,
        net,
        unwind,
        symbolizer: pipeline.symbolizer_stats(),
    })
}

/// Reads the rings until the duration ends, the command or every target
/// exits, or the user interrupts.
async fn collect(
    collector: &mut Collector,
    options: &RecordOptions,
    mut child: Option<tokio::process::Child>,
    progress: &Progress,
) -> anyhow::Result<StopReason> {
    let duration = options.duration;
    let deadline = async move {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let command_exit = async {
        match child.as_mut() {
            Some(child) => child.wait().await,
            None => std::future::pending().await,
        }
    };
    let targets_exit = async {
        if options.pids.is_empty() {
            std::future::pending().await
        } else {
            targets::all_exited(&options.pids).await
        }
    };
    tokio::pin!(deadline, command_exit, targets_exit);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    loop {
        tokio::select! {
            ready = collector.ready() => {
                let ring = ready.context("waiting on the ring buffers")?;
                collector.drain_ready(ring, |_, _| {})?;
            }
            _ = drain_tick.tick() => collector.drain(|_, _| {})?,
            () = &mut deadline => return Ok(StopReason::DurationElapsed),
            exit = &mut command_exit => {
                return Ok(StopReason::CommandExited(exit.context("waiting for the command")?));
            }
            () = &mut targets_exit => return Ok(StopReason::TargetsExited),
            _ = interrupt.recv() => return Ok(StopReason::Interrupted),
            _ = terminate.recv() => return Ok(StopReason::Interrupted),
            _ = status.tick() => {
                collector.upkeep();
                let pipeline = collector.pipeline();
                progress.update(pipeline.samples() + pipeline.network_events(), collector.lost());
            }
        }
    }
}

/// Writes each event's profile; a file that fails does not keep the
/// others from being written, and the first failure is returned.
fn write_outputs(
    pipeline: &mut Pipeline,
    outputs: Vec<(Event, OutputFile)>,
    options: &RecordOptions,
    meta: ProfileMeta,
    lost: impl Fn(Event) -> u64,
    progress: &Progress,
) -> anyhow::Result<Vec<Written>> {
    let start_wall = UNIX_EPOCH + Duration::from_nanos(meta.start_unix_ns);
    let mut written = Vec::new();
    let mut failure = None;
    for (event, output) in outputs {
        progress.phase("symbolizing");
        let Some(profile) = pipeline.event_profile(event, meta) else {
            continue;
        };
        progress.phase("writing");
        let path = output.path().to_owned();
        let svg = svg_options(&profile, options, lost(event));
        match write_output(output, &profile, options, svg, start_wall) {
            Ok(()) => written.push(Written {
                event,
                path,
                total: profile.total_samples(),
            }),
            // The other events' files are still written.
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(written),
    }
}

fn svg_options(profile: &Profile, options: &RecordOptions, lost: u64) -> SvgOptions {
    let seconds = profile.duration_ns as f64 / 1e9;
    let total = profile.total_samples();
    match profile.event {
        Event::Cpu => SvgOptions {
            title: "Hearth CPU flamegraph".into(),
            subtitle: Some(format!(
                "{total} samples at {} Hz over {seconds:.1} s, {lost} lost",
                options.frequency_hz,
            )),
        },
        event => SvgOptions {
            title: format!("Hearth network flamegraph: {event}"),
            subtitle: Some(format!(
                "{total} {} over {seconds:.1} s, {lost} events lost",
                event.unit_label()
            )),
        },
    }
}

/// Writes one profile; when its destination fails, it is saved to the
/// temporary directory instead and the error says where.
fn write_output(
    output: OutputFile,
    profile: &Profile,
    options: &RecordOptions,
    svg: SvgOptions,
    start_wall: SystemTime,
) -> anyhow::Result<()> {
    let write =
        |out: &mut dyn std::io::Write| deliver::write_profile(profile, options.format, &svg, out);
    if let Err(err) = output.commit(write) {
        // The recording is not thrown away because its destination failed.
        let rescue = std::env::temp_dir().join(format!(
            "hearth-{}-{}.{}.{}",
            std::process::id(),
            start_wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            profile.event.name(),
            options.format.extension()
        ));
        let saved = OutputFile::prepare(&rescue).and_then(|o| o.commit(write));
        return Err(match saved {
            Ok(()) => anyhow::Error::new(err).context(format!(
                "the profile could not be written where asked, so it was saved to {}",
                rescue.display()
            )),
            Err(_) => anyhow::Error::new(err),
        });
    }
    Ok(())
}

/// Starts the command so that it is traced from its first instruction: the
/// agent traces itself while forking, so the kernel adds the child to the
/// filter at fork time, and stops tracing itself right after (its own
/// samples are never taken).
fn spawn_traced(
    sampler: &mut Probes,
    options: &RecordOptions,
) -> anyhow::Result<tokio::process::Child> {
    let own = std::process::id();
    sampler.trace_process(own)?;
    let child = targets::spawn(&options.command);
    sampler.untrace_process(own)?;
    Ok(child?)
}
