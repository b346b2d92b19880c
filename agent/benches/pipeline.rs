//! The userspace path a CPU sample takes: ring-buffer record → decode →
//! intern and count → symbolize (warm cache) → profile. Samples are
//! recorded for real from the kernel at start (needs root), while this
//! process runs threads with stacks of many depths, then replayed.
//!
//!     sudo cargo bench -p hearth --bench pipeline      (or cargo xtask bench)

use std::{
    hint::black_box,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth::{
    aggregate::StackTable,
    pipeline::CpuPipeline,
    probes::{CpuSampler, RawSample, SamplerSettings},
    process::{ProcessLimits, ProcessTable},
    profile::{ProfileMeta, build_profile},
    symbolize::Symbolizer,
};

const RECORD_SECONDS: u64 = 3;
const RECORD_HZ: u64 = 999;

const META: ProfileMeta = ProfileMeta {
    period_ns: 1_000_000_000 / RECORD_HZ,
    start_unix_ns: 0,
    duration_ns: RECORD_SECONDS * 1_000_000_000,
};

/// Recurses to `depth`, then spins; many depths give many distinct stacks.
#[inline(never)]
fn descend(depth: u32, spin: u64) -> u64 {
    if depth == 0 {
        (0..spin).fold(0u64, |acc, i| black_box(acc.wrapping_add(i)))
    } else {
        black_box(descend(depth - 1, spin)).wrapping_add(1)
    }
}

fn burner(stop: Arc<AtomicBool>, seed: u32) {
    let mut depth = seed;
    while !stop.load(Ordering::Relaxed) {
        depth = (depth * 7 + 3) % 40;
        black_box(descend(depth, 20_000));
    }
}

/// Ring-buffer records of the whole machine, this process's burners included.
fn recorded_samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this benchmark records real samples with BPF: run it as root"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let burners: Vec<_> = (0..2)
            .map(|seed| {
                let stop = stop.clone();
                std::thread::spawn(move || burner(stop, seed))
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let samples = runtime.block_on(async {
            let mut sampler = CpuSampler::load(&SamplerSettings {
                frequency_hz: RECORD_HZ,
                kernel_stacks: true,
                filter_processes: false,
                ring_buffer_bytes: 16 << 20,
                filter_capacity: 1,
            })
            .expect("load the sampler");
            let mut ring = sampler.take_ring().unwrap();
            sampler.start().unwrap();
            let mut samples = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(RECORD_SECONDS);
            while Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(100), ring.wait()).await;
                ring.drain(|record| samples.push(record.to_vec()));
            }
            sampler.stop().unwrap();
            ring.drain(|record| samples.push(record.to_vec()));
            samples
        });
        stop.store(true, Ordering::Relaxed);
        for burner in burners {
            burner.join().unwrap();
        }
        let frames: usize = samples
            .iter()
            .map(|s| {
                let s = RawSample::decode(s).unwrap();
                s.kernel_stack().len() + s.user_stack().len()
            })
            .sum();
        eprintln!(
            "recorded {} samples, {:.1} frames each on average",
            samples.len(),
            frames as f64 / samples.len() as f64
        );
        samples
    })
}

fn warm_pipeline(samples: &[Vec<u8>]) -> CpuPipeline {
    let mut pipeline = CpuPipeline::new(ProcessLimits::default());
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
                &mut Symbolizer::new(),
                META,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
