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
    export::{self, OutputFormat, SvgOptions},
    pipeline::CpuPipeline,
    preflight,
    probes::{CpuSampler, KernelCounters, SamplerSettings, check_frequency, online_cpu_count},
    profile::ProfileMeta,
    symbolize::Symbolizer,
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

/// What a recording produced.
#[derive(Debug)]
pub struct RecordReport {
    pub output: PathBuf,
    pub format: OutputFormat,
    pub samples: u64,
    pub processes: usize,
    pub unique_stacks: usize,
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    pub kernel: KernelCounters,
}

pub async fn record(options: RecordOptions) -> anyhow::Result<RecordReport> {
    // Everything that can be wrong with the request is checked before the
    // kernel is touched, so nothing is ever collected only to be lost.
    let output = OutputFile::prepare(&options.output)?;
    for &pid in &options.pids {
        targets::check_running(pid)?;
    }
    preflight::check_privileges()?;
    if let Err(problem) = check_frequency(options.frequency_hz) {
        bail!("--frequency {problem}");
    }
    preflight::raise_resource_limits();

    let mut sampler = CpuSampler::load(&SamplerSettings {
        frequency_hz: options.frequency_hz,
        kernel_stacks: options.kernel_stacks,
        filter_processes: options.filters_processes(),
        ring_buffer_bytes: options
            .ring_buffer_size
            .bytes(online_cpu_count(), options.frequency_hz),
        filter_capacity: options.max_traced_processes,
    })
    .context("loading the CPU sampler")?;
    for &pid in &options.pids {
        sampler.trace_process(pid)?;
    }
    let mut ring = sampler.take_ring()?;
    // A recording is short-lived: it affords DWARF for lines and inlined frames.
    let mut pipeline = CpuPipeline::new(options.process_limits, Symbolizer::default());

    let start_wall = SystemTime::now();
    let started = Instant::now();
    sampler.start().context("starting the CPU sampler")?;
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
        loop {
            tokio::select! {
                ready = ring.wait() => {
                    ready.context("waiting on the sample ring buffer")?;
                    ring.drain(|record| pipeline.ingest(record));
                }
                () = &mut deadline => break StopReason::DurationElapsed,
                exit = &mut command_exit => {
                    break StopReason::CommandExited(exit.context("waiting for the command")?);
                }
                () = &mut targets_exit => break StopReason::TargetsExited,
                _ = interrupt.recv() => break StopReason::Interrupted,
                _ = terminate.recv() => break StopReason::Interrupted,
                _ = status.tick() => {
                    let lost = sampler.counters().map(|c| c.ring_full).unwrap_or(0);
                    progress.update(pipeline.samples(), lost);
                }
            }
        }
    };
    let elapsed = started.elapsed();
    sampler.stop().context("stopping the CPU sampler")?;
    ring.drain(|record| pipeline.ingest(record));
    let kernel = sampler.counters()?;
    drop(sampler);

    progress.phase("symbolizing");
    let profile = pipeline.profile(ProfileMeta {
        period_ns: 1_000_000_000 / options.frequency_hz,
        start_unix_ns: start_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        duration_ns: elapsed.as_nanos() as u64,
    });
    let svg = SvgOptions {
        title: "Hearth CPU flamegraph".into(),
        subtitle: Some(format!(
            "{} samples at {} Hz over {:.1} s, {} lost",
            profile.total_samples(),
            options.frequency_hz,
            elapsed.as_secs_f64(),
            kernel.ring_full
        )),
    };
    progress.phase("writing");
    let write =
        |out: &mut dyn std::io::Write| export::write_profile(&profile, options.format, &svg, out);
    let written = output.commit(write);
    progress.finish();
    if let Err(err) = written {
        // The recording is not thrown away because its destination failed.
        let rescue = std::env::temp_dir().join(format!(
            "hearth-{}-{}.{}",
            std::process::id(),
            start_wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
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

    Ok(RecordReport {
        output: options.output.clone(),
        format: options.format,
        samples: pipeline.samples(),
        processes: pipeline.processes(),
        unique_stacks: pipeline.unique_stacks(),
        elapsed,
        stopped_by,
        kernel,
    })
}

/// Starts the command so that it is traced from its first instruction: the
/// agent traces itself while forking, so the kernel adds the child to the
/// filter at fork time, and stops tracing itself right after (its own
/// samples are never taken).
fn spawn_traced(
    sampler: &mut CpuSampler,
    options: &RecordOptions,
) -> anyhow::Result<tokio::process::Child> {
    let own = std::process::id();
    sampler.trace_process(own)?;
    let child = targets::spawn(&options.command);
    sampler.untrace_process(own)?;
    Ok(child?)
}
