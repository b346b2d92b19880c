//! Unwind table compilation: time and table size per MB of `.eh_frame`,
//! for this machine's libc and for a large Rust binary (the hearth binary
//! this benchmark belongs to, or `HEARTH_BENCH_BINARY`).
//!
//!     cargo bench -p hearth --bench unwind      (or cargo xtask criterion)

use std::{hint::black_box, path::PathBuf, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth::enrich::unwind::compile_elf;
use object::{Object as _, ObjectSection as _};

const MAX_ROWS: usize = 1 << 24;

fn libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(PathBuf::from)
        .expect("this process maps libc")
}

fn rust_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HEARTH_BENCH_BINARY") {
        return path.into();
    }
    // target/release/deps/unwind-… → target/release/hearth
    let exe = std::env::current_exe().unwrap();
    let hearth = exe.parent().unwrap().parent().unwrap().join("hearth");
    if hearth.exists() { hearth } else { exe }
}

fn unwind(c: &mut Criterion) {
    let mut group = c.benchmark_group("unwind_compile");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    for (name, path) in [("libc", libc()), ("rust_binary", rust_binary())] {
        let data = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let eh_frame = file.section_by_name(".eh_frame").unwrap().size();
        let table = compile_elf(&data, MAX_ROWS).unwrap();
        let mb = eh_frame as f64 / 1e6;
        println!(
            "{name}: {} — .eh_frame {:.2} MB → {} rows, {:.2} MB of table ({:.2} MB per MB of .eh_frame)",
            path.display(),
            mb,
            table.rows.len(),
            table.size_bytes() as f64 / 1e6,
            table.size_bytes() as f64 / 1e6 / mb
        );
        group.throughput(Throughput::Bytes(eh_frame));
        group.bench_function(name, |b| {
            b.iter(|| black_box(compile_elf(&data, MAX_ROWS).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, unwind);
criterion_main!(benches);
