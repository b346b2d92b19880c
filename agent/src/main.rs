use std::process::ExitCode;

use clap::Parser as _;
use hearth::{
    cli::{Cli, Command},
    config,
    event::Event,
    record::{self, RecordOptions, RecordReport, StopReason},
    run,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // inferno logs "No stack counts found" for empty profiles; hearth says so itself.
    // `run` is a daemon: its lifecycle belongs in the log by default.
    let quiet = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    let level = match cli.verbose {
        0 => format!("{quiet},inferno=off"),
        1 => "info,inferno=off".to_owned(),
        _ => "debug".to_owned(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; a file, a pipe or a
        // container's log collector gets plain text. NO_COLOR is honoured.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hearth: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Record(args) => {
                let options = RecordOptions::try_from(args)?;
                let report = record::record(options).await?;
                print_report(&report);
                anyhow::Ok(())
            }
            Command::Run(args) => {
                let sources = args.sources()?;
                let config = config::load(&sources)?;
                if args.print_config {
                    print!("{}", yaml_serde::to_string(&config)?);
                    return Ok(());
                }
                run::run(config).await
            }
            Command::Ctl(args) => hearth::control::client::run(args).await,
            Command::Check(args) => {
                let report = hearth::check::run()?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.text());
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hearth: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn print_report(report: &RecordReport) {
    let why = match &report.stopped_by {
        StopReason::DurationElapsed => "duration reached".to_owned(),
        StopReason::Interrupted => "interrupted".to_owned(),
        StopReason::TargetsExited => "the profiled processes exited".to_owned(),
        StopReason::CommandExited(status) => format!("the command exited, {status}"),
    };
    let k = &report.kernel;
    for written in &report.outputs {
        let what = match written.event {
            Event::Cpu => format!(
                "{} samples from {} processes, {} unique stacks",
                report.samples, report.processes, report.unique_stacks
            ),
            event => format!("{} {}", written.total, event.unit_label()),
        };
        eprintln!(
            "hearth: wrote {} ({}, {}): {what}, in {:.1} s ({why})",
            written.path.display(),
            written.event,
            report.format,
            report.elapsed.as_secs_f64(),
        );
    }
    tracing::info!(
        written = k.samples,
        ring_full = k.ring_full,
        kernel_stack_errors = k.kernel_stack_errors,
        user_stack_errors = k.user_stack_errors,
        task_read_errors = k.task_read_errors,
        filter_full = k.filter_full,
        "kernel counters"
    );
    if let Some(unwind) = &report.unwind {
        eprintln!("hearth: {}", unwind_summary(k, unwind));
    }
    let s = &report.symbolizer;
    if s.unreadable_objects + s.hostile_objects + s.shrunk_objects > 0 {
        eprintln!(
            "hearth: symbols: {} objects unreadable (corrupt or not ELF), {} limited because a \
             compressed section would inflate past its limit, {} thrown away because the file \
             shrank while read; their frames show as module+offset",
            s.unreadable_objects, s.hostile_objects, s.shrunk_objects
        );
    }
    let n = &report.net;
    if n.ring_full > 0 {
        eprintln!(
            "hearth: {} events (network, off-CPU) were lost because their ring buffer was full",
            n.ring_full
        );
    }
    if report.outputs.iter().any(|w| w.event == Event::OffCpu) {
        eprintln!(
            "hearth: off-cpu: {} blocks of the traced threads; {} sampled out, {} shorter \
             than --off-cpu-min, {} not timed (another thread blocked in its slot of \
             off_cpu.max_blocked_threads){}",
            n.off_cpu_blocks(),
            n.off_cpu_sampled_out,
            n.off_cpu_short,
            n.off_cpu_pending_full,
            if n.off_cpu_sampled_out > 0 {
                "; recorded time is scaled by 1/--off-cpu-probability"
            } else {
                ""
            }
        );
    }
    let cpu_asked = report.outputs.iter().any(|w| w.event == Event::Cpu);
    if cpu_asked && report.samples == 0 {
        eprintln!(
            "hearth: no samples were collected: nothing ran on a CPU while recording \
             (idle or sleeping processes are not sampled)"
        );
    }
    if k.ring_full > 0 {
        eprintln!(
            "hearth: {} samples were lost because the ring buffer was full; \
             raise --ring-buffer-size or lower --frequency",
            k.ring_full
        );
    }
    if k.filter_full > 0 {
        eprintln!(
            "hearth: {} new processes were not followed because the filter was full; \
             raise --max-traced-processes",
            k.filter_full
        );
    }
}

/// One line on the table unwinder: what it walked, where walks stopped
/// early and why, and what it loaded.
fn unwind_summary(
    k: &hearth::collect::probes::KernelCounters,
    u: &hearth::enrich::unwind::UnwindStats,
) -> String {
    let stopped = [
        (k.unwind_no_table, "no table"),
        (k.unwind_bad_cfa, "bad CFA"),
        (k.unwind_read_errors, "read failure"),
        (k.unwind_depth_limit, "depth limit"),
        (k.unwind_unsupported, "unsupported rule"),
        (k.unwind_tail_call_errors, "tail call failed"),
    ];
    let reasons: Vec<String> = stopped
        .iter()
        .map(|(count, why)| format!("{why} {count}"))
        .collect();
    let mut line = format!(
        "unwind tables: {} user stacks walked; stopped early: {}; {} objects ({} rows) \
         for {} processes; row store {} of {} rows in {} shards",
        k.unwind_samples,
        reasons.join(", "),
        u.objects,
        u.rows,
        u.processes,
        u.row_capacity,
        u.max_rows,
        u.shards,
    );
    if u.compile_errors > 0 {
        line += &format!(", {} objects without a usable .eh_frame", u.compile_errors);
    }
    if u.tables_full > 0 {
        line += &format!(", {} tables left out (row store full)", u.tables_full);
    }
    if u.compactions > 0 {
        line += &format!(
            ", row store compacted {} times ({} tables moved)",
            u.compactions, u.tables_moved
        );
    }
    line
}
