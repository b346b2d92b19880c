//! Encoding one export window of a busy machine: OTLP request, Pyroscope
//! push (a gzipped pprof per resource), and what goes on the wire.
//! Samples are recorded for real at start (needs root).
//!
//!     sudo cargo bench -p hearth --bench export      (or cargo xtask criterion)

mod support;

use std::{hint::black_box, io::Write, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use hearth::{
    config::ServiceNameConfig,
    deliver::{
        otlp::encode_request,
        pyroscope::{encode_push, labelled_profiles},
        resource::ResourceNamer,
    },
    enrich::process::ProcessLimits,
    pipeline::Pipeline,
    profile::{Profile, ProfileMeta},
    symbolize::Symbolizer,
};
use prost::Message;

/// One window as `hearth run` makes it by default.
const WINDOW_SECONDS: u64 = 10;

fn gzip_len(bytes: &[u8]) -> usize {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap().len()
}

fn window(hz: u64) -> Profile {
    let samples = support::record(WINDOW_SECONDS, hz, true);
    let mut pipeline = Pipeline::new(ProcessLimits::default(), Symbolizer::default());
    for sample in &samples {
        pipeline.ingest(sample);
    }
    pipeline.profile(ProfileMeta {
        event: hearth::event::Event::Cpu,
        period_ns: 1_000_000_000 / hz,
        start_unix_ns: 1,
        duration_ns: WINDOW_SECONDS * 1_000_000_000,
    })
}

fn export(c: &mut Criterion) {
    let namer = ResourceNamer::new(&ServiceNameConfig::default(), "bench".into());
    let mut group = c.benchmark_group("export_window");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for hz in [19, 99] {
        let profile = window(hz);
        let groups = namer.group(&profile);
        let otlp = encode_request(&profile, &groups, &mut || [1; 16]).encode_to_vec();
        let push = encode_push(&labelled_profiles(&profile, &groups), &mut || "id".into());
        eprintln!(
            "{hz} Hz, {WINDOW_SECONDS} s window of a busy machine: {} samples, {} resources; \
             OTLP {} bytes ({} gzipped on the wire); Pyroscope push {} bytes",
            profile.total_samples(),
            groups.len(),
            otlp.len(),
            gzip_len(&otlp),
            push.len()
        );
        group.bench_function(format!("otlp_encode_{hz}hz"), |b| {
            b.iter(|| black_box(encode_request(&profile, &groups, &mut || [1; 16]).encode_to_vec()))
        });
        group.bench_function(format!("pyroscope_encode_{hz}hz"), |b| {
            b.iter(|| {
                black_box(encode_push(
                    &labelled_profiles(&profile, &groups),
                    &mut || "id".into(),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
