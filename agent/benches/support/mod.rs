//! Shared by the benchmarks: real samples recorded from the kernel while
//! this process and (optionally) a few busy programs run.

use std::{
    hint::black_box,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hearth::collect::probes::{ProbeSettings, Probes, RawSample};

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

/// Busy programs, each the leader of its own process group so that
/// stopping it stops whatever it started.
pub struct BusyPrograms(Vec<Child>);

impl Drop for BusyPrograms {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// CPU-bound programs of several kinds, as on a busy machine; killed
/// with the benchmark even if it dies before their drop runs.
pub fn busy_programs() -> BusyPrograms {
    let programs = hearth_devtools::BUSY_PROGRAMS
        .iter()
        .map(|argv| {
            hearth_devtools::quiet_command(argv)
                .spawn()
                .expect("start a busy program")
        })
        .collect();
    BusyPrograms(programs)
}

/// Ring-buffer records of the whole machine over `seconds` at `hz`, with
/// two threads of this process running stacks of many depths.
pub fn record(seconds: u64, hz: u64, busy: bool) -> Vec<Vec<u8>> {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks record real samples with BPF: run them as root"
    );
    let programs = busy.then(busy_programs);
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
        let mut sampler = Probes::load(&ProbeSettings {
            cpu: true,
            network: None,
            cgroup_capacity: None,
            // The burner threads of this process are what is measured.
            ignore_own_process: false,
            frequency_hz: hz,
            kernel_stacks: true,
            filter_processes: false,
            ring_buffer_bytes: 16 << 20,
            filter_capacity: 1,
            unwind_mode: hearth_common::unwind::UnwindMode::FramePointers,
            unwind_capacity: hearth::collect::probes::UnwindCapacity::new(1, 1, 1),
        })
        .expect("load the sampler");
        let mut ring = sampler.take_ring().unwrap();
        sampler.start().unwrap();
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
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
    drop(programs);
    let frames: usize = samples
        .iter()
        .map(|s| {
            let s = RawSample::decode(s).unwrap();
            s.kernel_stack().len() + s.user_stack().len()
        })
        .sum();
    eprintln!(
        "recorded {} samples at {hz} Hz over {seconds} s, {:.1} frames each on average",
        samples.len(),
        frames as f64 / samples.len().max(1) as f64
    );
    samples
}
