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
    event::Event,
    export::{self, OutputFormat, SvgOptions},
    network::{self, NetAggregator},
    pipeline::{Pipeline, drain_cpu, drain_network},
    preflight,
    probes::{
        DRAIN_INTERVAL, KernelCounters, NetCounters, NetSettings, ProbeSettings, Probes,
        UnwindCapacity, check_frequency, online_cpu_count,
    },
    profile::{Profile, ProfileMeta},
    symbolize::Symbolizer,
    unwind::{self, UnwindLimits, UnwindRegistry, UnwindStats},
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

    let network_events = options.network_events();
    let network = (!network_events.is_empty()).then(|| NetSettings {
        emit: network::kernel_kinds(&network_events),
        ring_buffer_bytes: network::DEFAULT_RING_BYTES,
        socket_owners: network::DEFAULT_SOCKET_OWNERS,
        user_stacks: true,
        call_sites: network::DEFAULT_CALL_SITES,
    });
    let mut sampler = Probes::load(&ProbeSettings {
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
    })
    .context("loading the probes")?;
    for (event, reason) in network::refused_events(&network_events, sampler.refused_kinds()) {
        eprintln!("hearth: event `{event}` is not recorded: {reason}; the other events are");
    }
    let mut unwinder = sampler.take_unwind_maps()?.map(|maps| {
        UnwindRegistry::new(
            maps,
            UnwindLimits {
                max_rows_per_object: unwind::DEFAULT_MAX_ROWS_PER_OBJECT as usize,
                refresh_interval: unwind::MAX_REFRESH,
            },
        )
    });
    for &pid in &options.pids {
        sampler.trace_process(pid)?;
    }
    let mut ring = sampler.take_ring()?;
    let mut net_ring = sampler.take_net_ring()?;
    // A recording is short-lived: it affords DWARF for lines and inlined frames.
    let mut pipeline = Pipeline::new(options.process_limits, Symbolizer::default());
    if !network_events.is_empty() {
        pipeline = pipeline.with_network(NetAggregator::new(
            &network_events,
            network::DEFAULT_PENDING_CONNECTS,
            network::DEFAULT_CALL_SITES as usize,
            sampler.kernel().reasons.clone(),
        ));
    }

    let start_wall = SystemTime::now();
    let started = Instant::now();
    sampler.start().context("starting the probes")?;
    let mut child = if options.command.is_empty() {
        None
    } else {
        Some(spawn_traced(&mut sampler, &options)?)
    };

    let progress = Progress::start();
    let stopped_by = {
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
                ready = ring.wait() => {
                    ready.context("waiting on the sample ring buffer")?;
                    drain_cpu(&mut ring, &mut pipeline, unwinder.as_mut(), |_| {});
                }
                ready = net_ring.wait() => {
                    ready.context("waiting on the network event ring buffer")?;
                    net_ring.drain(|record| pipeline.ingest_net(record));
                }
                _ = drain_tick.tick() => {
                    drain_cpu(&mut ring, &mut pipeline, unwinder.as_mut(), |_| {});
                    drain_network(&mut net_ring, &mut pipeline, &mut sampler)?;
                }
                () = &mut deadline => break StopReason::DurationElapsed,
                exit = &mut command_exit => {
                    break StopReason::CommandExited(exit.context("waiting for the command")?);
                }
                () = &mut targets_exit => break StopReason::TargetsExited,
                _ = interrupt.recv() => break StopReason::Interrupted,
                _ = terminate.recv() => break StopReason::Interrupted,
                _ = status.tick() => {
                    if let Some(unwinder) = unwinder.as_mut() {
                        unwinder.reap();
                    }
                    let lost = sampler.counters().map(|c| c.ring_full).unwrap_or(0)
                        + sampler.net_counters().map(|c| c.ring_full).unwrap_or(0);
                    progress.update(pipeline.samples() + pipeline.network_events(), lost);
                }
            }
        }
    };
    let elapsed = started.elapsed();
    sampler.stop().context("stopping the probes")?;
    ring.drain(|record| pipeline.ingest(record));
    net_ring.drain(|record| pipeline.ingest_net(record));
    let kernel = sampler.counters()?;
    let net = sampler.net_counters()?;
    let unwind = unwinder.as_ref().map(UnwindRegistry::stats);
    drop(unwinder);
    drop(sampler);

    let meta = ProfileMeta {
        event: Event::Cpu,
        period_ns: 1_000_000_000 / options.frequency_hz,
        start_unix_ns: start_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        duration_ns: elapsed.as_nanos() as u64,
    };
    let mut written = Vec::new();
    let mut failure = None;
    for (event, output) in outputs {
        progress.phase("symbolizing");
        let Some(profile) = pipeline.event_profile(event, meta) else {
            continue;
        };
        let lost = if event == Event::Cpu {
            kernel.ring_full
        } else {
            net.ring_full
        };
        progress.phase("writing");
        let path = output.path().to_owned();
        let svg = svg_options(&profile, &options, lost);
        match write_output(output, &profile, &options, svg, start_wall) {
            Ok(()) => written.push(Written {
                event,
                path,
                total: profile.total_samples(),
            }),
            // The other events' files are still written.
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    progress.finish();
    if let Some(err) = failure {
        return Err(err);
    }

    Ok(RecordReport {
        outputs: written,
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
        |out: &mut dyn std::io::Write| export::write_profile(profile, options.format, &svg, out);
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
