//! The agent's own metrics, served as Prometheus/OpenMetrics text on
//! `/metrics`, with `/healthz` (the process is serving) and `/readyz`
//! (sampling is running and exporters are set up).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{
    aggregate::network::NetStats,
    collect::probes::{KernelCounters, NetCounters},
    deliver::retention::Dropped,
    enrich::unwind::UnwindStats,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabel {
    exporter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    exporter: &'static str,
    reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Reasons = Family<ReasonLabel, Counter>;
type PerExporter<M = Counter> = Family<ExporterLabel, M>;

/// The metric table: each metric's field, type, exposed name (with its
/// unit, if any) and help, registered in this order.
macro_rules! metric_table {
    ($($field:ident: $ty:ty = $name:literal $(in $unit:ident)?, $help:expr;)*) => {
        #[derive(Default)]
        struct Metrics {
            $($field: $ty,)*
        }

        impl Metrics {
            fn register(&self, registry: &mut Registry) {
                $(
                    let unit: Option<Unit> = None $(.or(Some(Unit::$unit)))?;
                    match unit {
                        Some(unit) => registry.register_with_unit(
                            $name, $help, unit, self.$field.clone()),
                        None => registry.register($name, $help, self.$field.clone()),
                    }
                )*
            }
        }
    };
}

metric_table! {
    samples: Counter = "hearth_samples", "CPU samples read from the kernel";
    kernel_samples_lost: Reasons = "hearth_kernel_samples_lost",
        "Samples the kernel could not deliver (ring_full: the ring-buffer reservation failed)";
    stack_errors: Reasons = "hearth_stack_walk_errors",
        "Samples kept without one of their stacks, by which walk failed";
    unwind_walks: Counter = "hearth_unwind_stack_walks",
        "User stacks walked with unwind tables in the kernel";
    unwind_stopped: Reasons = "hearth_unwind_stopped_early",
        "Table walks that stopped before the outermost frame, by why (no_table: no \
         table and no usable frame pointer; bad_cfa; read_error; depth_limit; \
         unsupported: a rule the unwinder does not follow; tail_call)";
    unwind_processes: Gauge = "hearth_unwind_processes",
        "Processes with unwind tables in the kernel";
    unwind_objects: Gauge = "hearth_unwind_objects",
        "Object files with a table in the kernel, shared by the processes mapping them";
    unwind_rows: Gauge = "hearth_unwind_rows",
        "Unwind table rows in use in the kernel (8 bytes each)";
    unwind_row_capacity: Gauge = "hearth_unwind_row_capacity",
        "Unwind table rows the shards made so far hold";
    unwind_max_rows: Gauge = "hearth_unwind_max_rows",
        "Unwind table rows the store may grow to (unwind.max_rows, in whole shards)";
    unwind_shards: Gauge = "hearth_unwind_row_shards",
        "Shards of the unwind row store made (unwind.shard_rows rows each)";
    unwind_shards_added: Counter = "hearth_unwind_shards_added",
        "Shards added to the unwind row store as tables needed room";
    unwind_shards_removed: Counter = "hearth_unwind_shards_removed",
        "Empty shards the unwind row store gave back";
    unwind_largest_free: Gauge = "hearth_unwind_largest_free_rows",
        "The longest run of free rows in the unwind row store (a table longer than this \
         needs a compaction or a new shard first; free rows minus this is the fragmentation)";
    unwind_compactions: Counter = "hearth_unwind_compactions",
        "Times the unwind row store was compacted to fit a table";
    unwind_tables_moved: Counter = "hearth_unwind_tables_moved",
        "Tables moved by compactions of the unwind row store";
    unwind_not_loaded: Reasons = "hearth_unwind_tables_not_loaded",
        "Tables or processes left to frame pointers (compile_error: unreadable or \
         malformed .eh_frame; rows_full: unwind.max_rows reached; processes_full: \
         unwind.max_processes reached)";
    network_events: Counter = "hearth_network_events",
        "Records read from the kernel's event ring (network events, and off-CPU stacks and times)";
    network_events_lost: Reasons = "hearth_network_events_lost",
        "Network events lost (ring_full: the ring was full; connect_unmatched: \
         a connect's start was not kept, so it has no latency)";
    off_cpu_blocks: Reasons = "hearth_off_cpu_blocks",
        "Blocks of threads in scope seen by the off-CPU program, by what became of them \
         (sampled_out: left out by off_cpu.probability; short: under off_cpu.min_block; \
         map_full: off_cpu.max_blocked_threads threads were blocked already; the rest were \
         timed)";
    malformed_records: Counter = "hearth_malformed_records",
        "Ring records that could not be decoded";
    windows: Counter = "hearth_export_windows", "Export intervals completed";
    exported: PerExporter = "hearth_profiles_exported", "Profiles delivered, per exporter";
    failed: PerExporter = "hearth_profiles_failed", "Failed delivery attempts, per exporter";
    retried: PerExporter = "hearth_profiles_retried", "Delivery retries scheduled, per exporter";
    dropped: Family<DropLabels, Counter> = "hearth_profiles_dropped",
        "Profiles given up, per exporter and reason (queue_bytes, queue_age, rejected, \
         spool_corrupt: a spool file that failed its checksum on recovery)";
    unspooled: PerExporter = "hearth_profiles_unspooled",
        "Queued profiles whose disk copy was deleted to keep the spool under \
         spool.max_bytes: still in memory and delivered, but lost if the agent restarts first";
    queue_bytes: PerExporter<Gauge> = "hearth_queue" in Bytes, "Bytes waiting for delivery";
    queue_profiles: PerExporter<Gauge> = "hearth_queue_profiles",
        "Profiles waiting for delivery";
    queue_oldest_age: PerExporter<FloatGauge> = "hearth_queue_oldest_age" in Seconds,
        "Age of the oldest profile waiting for delivery";
    symbol_cache_hits: Counter = "hearth_symbol_cache_hits",
        "Addresses named from the symbol cache";
    symbol_cache_misses: Counter = "hearth_symbol_cache_misses",
        "Addresses that had to be symbolized";
    symbol_objects_skipped: Reasons = "hearth_symbolize_objects_skipped",
        "Objects not symbolized (frames stay module+offset, or ELF symbols only), by why: \
         unreadable (corrupt or unreadable ELF); hostile (a compressed section would inflate \
         past symbolize.max_section_bytes); shrunk (the file was truncated while read)";
    mapped_file_faults: Counter = "hearth_mapped_file_faults",
        "Reads of memory-mapped object files that found the file shrunk underneath \
         (each absorbed; what was read is thrown away)";
    processes_tracked: Gauge = "hearth_processes_tracked", "Processes whose metadata is held";
    history_bytes: Gauge = "hearth_history" in Bytes, "Bytes of recent profiles kept";
    cpu_seconds: Counter<f64, AtomicU64> = "process_cpu" in Seconds, "CPU time used by the agent";
    resident_memory: Gauge = "process_resident_memory" in Bytes, "Resident memory of the agent";
}

/// Every metric the agent reports, written through the methods below. A
/// "profile" in the export metrics is the payload of one export interval
/// (all of its resources' profiles).
pub struct Telemetry {
    registry: Registry,
    ready: AtomicBool,
    m: Metrics,
}

/// Moves a counter up to an absolute total read from elsewhere.
fn advance_to(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// Moves each `reason`'s counter of `family` up to its total.
fn advance_reasons(family: &Reasons, totals: &[(&'static str, u64)]) {
    for &(reason, total) in totals {
        advance_to(&family.get_or_create(&ReasonLabel { reason }), total);
    }
}

/// How one delivery attempt ended, for the export counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The backend refused it for good: counted failed and dropped.
    Rejected,
    /// It stays queued and is tried again: counted failed and retried.
    Retrying,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
            m: metrics,
        })
    }

    /// Brings the pipeline's totals (samples, network events, records that
    /// could not be decoded) up to what it has counted.
    pub fn record_pipeline(&self, samples: u64, network_events: u64, malformed: u64) {
        advance_to(&self.m.samples, samples);
        advance_to(&self.m.network_events, network_events);
        advance_to(&self.m.malformed_records, malformed);
    }

    /// One export interval ended: `history_bytes` are kept locally now,
    /// and the metadata of `processes` is held.
    pub fn record_window(&self, history_bytes: u64, processes: usize) {
        self.m.windows.inc();
        self.m.history_bytes.set(history_bytes as i64);
        self.m.processes_tracked.set(processes as i64);
    }

    /// What `exporter`'s queue holds now.
    pub fn record_queue(&self, exporter: &'static str, bytes: u64, profiles: usize, age: Duration) {
        let label = ExporterLabel { exporter };
        self.m.queue_bytes.get_or_create(&label).set(bytes as i64);
        self.m
            .queue_profiles
            .get_or_create(&label)
            .set(profiles as i64);
        self.m
            .queue_oldest_age
            .get_or_create(&label)
            .set(age.as_secs_f64());
    }

    /// One delivery attempt of `exporter` and how it ended.
    pub fn record_delivery(&self, exporter: &'static str, outcome: Delivery) {
        let label = ExporterLabel { exporter };
        match outcome {
            Delivery::Delivered => self.m.exported.get_or_create(&label).inc(),
            Delivery::Rejected => {
                self.m.failed.get_or_create(&label).inc();
                let reason = "rejected";
                self.m
                    .dropped
                    .get_or_create(&DropLabels { exporter, reason })
                    .inc()
            }
            Delivery::Retrying => {
                self.m.failed.get_or_create(&label).inc();
                self.m.retried.get_or_create(&label).inc()
            }
        };
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Brings the kernel-side counters up to the totals read from BPF maps.
    pub fn record_kernel(&self, k: &KernelCounters) {
        advance_reasons(
            &self.m.kernel_samples_lost,
            &[("ring_full", k.ring_full), ("filter_full", k.filter_full)],
        );
        advance_reasons(
            &self.m.stack_errors,
            &[
                ("kernel", k.kernel_stack_errors),
                ("user", k.user_stack_errors),
                ("task_read", k.task_read_errors),
            ],
        );
        advance_to(&self.m.unwind_walks, k.unwind_samples);
        advance_reasons(
            &self.m.unwind_stopped,
            &[
                ("no_table", k.unwind_no_table),
                ("bad_cfa", k.unwind_bad_cfa),
                ("read_error", k.unwind_read_errors),
                ("depth_limit", k.unwind_depth_limit),
                ("unsupported", k.unwind_unsupported),
                ("tail_call", k.unwind_tail_call_errors),
            ],
        );
    }

    /// What the table unwinder holds and could not load.
    pub fn record_unwind(&self, u: &UnwindStats) {
        self.m.unwind_processes.set(u.processes as i64);
        self.m.unwind_objects.set(u.objects as i64);
        self.m.unwind_rows.set(u.rows as i64);
        self.m.unwind_row_capacity.set(u.row_capacity as i64);
        self.m.unwind_largest_free.set(u.largest_free_rows as i64);
        self.m.unwind_shards.set(u.shards as i64);
        self.m.unwind_max_rows.set(u.max_rows as i64);
        advance_to(&self.m.unwind_shards_added, u.shards_added);
        advance_to(&self.m.unwind_shards_removed, u.shards_removed);
        advance_to(&self.m.unwind_compactions, u.compactions);
        advance_to(&self.m.unwind_tables_moved, u.tables_moved);
        advance_reasons(
            &self.m.unwind_not_loaded,
            &[
                ("compile_error", u.compile_errors),
                ("rows_full", u.tables_full),
                ("processes_full", u.processes_full),
            ],
        );
    }

    pub fn record_net(&self, k: &NetCounters, stats: &NetStats) {
        advance_reasons(
            &self.m.network_events_lost,
            &[
                ("ring_full", k.ring_full),
                ("connect_unmatched", stats.pending_connects_dropped),
            ],
        );
        advance_reasons(
            &self.m.off_cpu_blocks,
            &[
                ("timed", k.off_cpu_timed),
                ("sampled_out", k.off_cpu_sampled_out),
                ("short", k.off_cpu_short),
                ("map_full", k.off_cpu_pending_full),
            ],
        );
    }

    /// The symbolizer's skipped objects and the mapped-file faults so far.
    pub fn record_symbolizer(&self, stats: &crate::symbolize::SymbolizerStats) {
        advance_to(&self.m.symbol_cache_hits, stats.hits);
        advance_to(&self.m.symbol_cache_misses, stats.misses);
        advance_reasons(
            &self.m.symbol_objects_skipped,
            &[
                ("unreadable", stats.unreadable_objects),
                ("hostile", stats.hostile_objects),
                ("shrunk", stats.shrunk_objects),
            ],
        );
        advance_to(&self.m.mapped_file_faults, crate::fault::faults());
    }

    pub fn record_dropped(&self, exporter: &'static str, dropped: Dropped) {
        for (reason, count) in [
            ("queue_bytes", dropped.over_bytes),
            ("queue_age", dropped.too_old),
            ("spool_corrupt", dropped.corrupt),
        ] {
            if count > 0 {
                self.m
                    .dropped
                    .get_or_create(&DropLabels { exporter, reason })
                    .inc_by(count);
            }
        }
        if dropped.unspooled > 0 {
            self.m
                .unspooled
                .get_or_create(&ExporterLabel { exporter })
                .inc_by(dropped.unspooled);
        }
    }

    /// Refreshes the agent's own CPU and memory gauges from procfs.
    fn refresh_process(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second().max(1) as f64;
            let total = (stat.utime + stat.stime) as f64 / ticks;
            let current = self.m.cpu_seconds.get();
            if total > current {
                self.m.cpu_seconds.inc_by(total - current);
            }
        }
        if let Ok(statm) = me.statm() {
            let page = procfs::page_size();
            self.m.resident_memory.set((statm.resident * page) as i64);
        }
    }

    /// The metrics as OpenMetrics text.
    pub fn render(&self) -> String {
        self.refresh_process();
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.render(),
    )
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    if telemetry.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves the endpoints on an already-bound listener until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    axum::serve(listener, app).await
}

/// How often kernel counters and gauges are refreshed between scrapes.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_units_and_kernel_totals() {
        let telemetry = Telemetry::new();
        telemetry.record_pipeline(42, 0, 0);
        telemetry.record_kernel(&KernelCounters {
            ring_full: 7,
            ..Default::default()
        });
        telemetry.record_kernel(&KernelCounters {
            ring_full: 9,
            ..Default::default()
        });
        telemetry.record_dropped(
            "otlp",
            Dropped {
                over_bytes: 3,
                ..Default::default()
            },
        );
        let text = telemetry.render();
        assert!(text.contains("hearth_samples_total 42"), "{text}");
        assert!(
            text.contains("hearth_kernel_samples_lost_total{reason=\"ring_full\"} 9"),
            "{text}"
        );
        assert!(
            text.contains(
                "hearth_profiles_dropped_total{exporter=\"otlp\",reason=\"queue_bytes\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_health_and_readiness_over_http() {
        let telemetry = Telemetry::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, telemetry.clone()));
        let get = |path: &str| {
            let url = format!("http://{address}{path}");
            async move { reqwest::get(url).await.unwrap() }
        };
        assert_eq!(get("/healthz").await.status(), 200);
        assert_eq!(get("/readyz").await.status(), 503);
        telemetry.set_ready(true);
        assert_eq!(get("/readyz").await.status(), 200);
        let metrics = get("/metrics").await.text().await.unwrap();
        assert!(metrics.contains("hearth_samples_total"), "{metrics}");
    }
}
