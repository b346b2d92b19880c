//! The userspace path a CPU sample takes: ring-buffer record → decode →
//! intern and count → symbolize (warm cache) → profile. Samples are
//! recorded for real from the kernel at start (needs root), while this
//! process runs threads with stacks of many depths, then replayed.
//!
//!     sudo cargo bench -p hearth --bench pipeline      (or cargo xtask criterion)

mod support;

use std::{hint::black_box, sync::OnceLock, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth::{
    aggregate::StackTable,
    collect::probes::RawSample,
    enrich::process::{ProcessLimits, ProcessTable},
    pipeline::Pipeline,
    profile::{ProfileMeta, build_profile},
    symbolize::Symbolizer,
};

const RECORD_SECONDS: u64 = 3;
const RECORD_HZ: u64 = 999;

const META: ProfileMeta = ProfileMeta {
    event: hearth::event::Event::Cpu,
    period_ns: 1_000_000_000 / RECORD_HZ,
    start_unix_ns: 0,
    duration_ns: RECORD_SECONDS * 1_000_000_000,
};

/// Ring-buffer records of the whole machine, this process's burners included.
fn recorded_samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| support::record(RECORD_SECONDS, RECORD_HZ, false))
}

fn warm_pipeline(samples: &[Vec<u8>]) -> Pipeline {
    let mut pipeline = Pipeline::new(ProcessLimits::default(), Symbolizer::default());
    for sample in samples {
        pipeline.ingest(sample);
    }
    black_box(pipeline.profile(META));
    pipeline
}

fn pipeline(c: &mut Criterion) {
    let samples = recorded_samples();
    let mut group = c.benchmark_group("cpu_samples");
    group.throughput(Throughput::Elements(samples.len() as u64));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));

    // The figure of merit: every sample decoded, interned and counted, and
    // one profile symbolized (warm cache) and laid out for the batch.
    let mut pipeline = warm_pipeline(samples);
    group.bench_function("ingest_symbolize_profile_warm", |b| {
        b.iter(|| {
            for sample in samples {
                pipeline.ingest(sample);
            }
            black_box(pipeline.profile(META))
        })
    });

    let mut pipeline = warm_pipeline(samples);
    group.bench_function("ingest_warm", |b| {
        b.iter(|| {
            for sample in samples {
                pipeline.ingest(sample);
            }
        })
    });

    // First-time symbolization of every unique stack, for scale.
    let mut processes = ProcessTable::new(ProcessLimits::default());
    let mut stacks = StackTable::new();
    for sample in samples {
        stacks.add(&RawSample::decode(sample).unwrap(), &mut processes);
    }
    group.sample_size(10);
    group.bench_function("symbolize_profile_cold", |b| {
        b.iter(|| {
            black_box(build_profile(
                &stacks,
                &processes,
                &mut Symbolizer::default(),
                META,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
