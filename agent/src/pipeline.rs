//! The CPU profile pipeline, one stage after another: ring records are
//! decoded (probes), interned and counted (aggregate, resolving new stacks'
//! addresses through process metadata), then symbolized and laid out as a
//! profile on demand (symbolize, profile) for the exporters.

use crate::{
    aggregate::StackTable,
    probes::RawSample,
    process::{ProcessLimits, ProcessTable},
    profile::{Profile, ProfileMeta, build_profile},
    symbolize::{Symbolizer, SymbolizerStats},
};

/// Bounds applied at every window boundary.
#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    pub idle_windows: u32,
}

pub struct CpuPipeline {
    processes: ProcessTable,
    stacks: StackTable,
    symbolizer: Symbolizer,
    malformed: u64,
    /// Samples counted in windows already ended.
    earlier_samples: u64,
}

impl CpuPipeline {
    pub fn new(limits: ProcessLimits, symbolizer: Symbolizer) -> Self {
        Self {
            processes: ProcessTable::new(limits),
            stacks: StackTable::new(),
            symbolizer,
            malformed: 0,
            earlier_samples: 0,
        }
    }

    /// Takes one ring-buffer record.
    pub fn ingest(&mut self, record: &[u8]) {
        match RawSample::decode(record) {
            Ok(sample) => self.stacks.add(&sample, &mut self.processes),
            Err(err) => {
                self.malformed += 1;
                tracing::debug!(%err, "malformed ring record");
            }
        }
    }

    /// Samples counted in the current window.
    pub fn samples(&self) -> u64 {
        self.stacks.samples()
    }

    /// Samples counted since the pipeline was made.
    pub fn total_samples(&self) -> u64 {
        self.earlier_samples + self.stacks.samples()
    }

    /// Records that could not be decoded (a kernel/agent version mismatch).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    pub fn unique_stacks(&self) -> usize {
        self.stacks.stacks().len()
    }

    /// Kernel timestamps of the first and last sample.
    pub fn time_span_ns(&self) -> Option<(u64, u64)> {
        self.stacks.time_span_ns()
    }

    pub fn symbolizer_stats(&self) -> SymbolizerStats {
        self.symbolizer.stats()
    }

    /// Symbolizes what is needed and builds the profile of everything
    /// counted in the current window.
    pub fn profile(&mut self, meta: ProfileMeta) -> Profile {
        build_profile(&self.stacks, &self.processes, &mut self.symbolizer, meta)
    }

    /// Starts a new window (take its profile first): its stacks are
    /// dropped, processes idle for `limits.idle_windows` windows forgotten
    /// with their files and what was cached for them, and the memory this
    /// freed handed back to the kernel.
    pub fn end_window(&mut self, limits: &WindowLimits) {
        self.earlier_samples += self.stacks.samples();
        self.stacks = StackTable::new();
        let forgotten = self.processes.end_window(limits.idle_windows);
        self.symbolizer.forget(&forgotten);
        self.symbolizer.trim();
        // Building a window allocates and frees a lot; without this the
        // allocator keeps the high-water mark resident.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
    }
}
