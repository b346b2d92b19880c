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

pub struct CpuPipeline {
    processes: ProcessTable,
    stacks: StackTable,
    symbolizer: Symbolizer,
    /// Samples of this tgid are dropped (the agent's own, when asked).
    ignored_tgid: Option<u32>,
    malformed: u64,
}

impl CpuPipeline {
    pub fn new(limits: ProcessLimits) -> Self {
        Self {
            processes: ProcessTable::new(limits),
            stacks: StackTable::new(),
            symbolizer: Symbolizer::new(),
            ignored_tgid: None,
            malformed: 0,
        }
    }

    /// Drops every sample of `tgid` from now on.
    pub fn ignore_tgid(&mut self, tgid: u32) {
        self.ignored_tgid = Some(tgid);
    }

    /// Takes one ring-buffer record.
    pub fn ingest(&mut self, record: &[u8]) {
        match RawSample::decode(record) {
            Ok(sample) if Some(sample.header.tgid) == self.ignored_tgid => {}
            Ok(sample) => self.stacks.add(&sample, &mut self.processes),
            Err(err) => {
                self.malformed += 1;
                tracing::debug!(%err, "malformed ring record");
            }
        }
    }

    /// Samples counted so far.
    pub fn samples(&self) -> u64 {
        self.stacks.samples()
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

    /// Symbolizes what is needed and builds the profile of everything counted.
    pub fn profile(&mut self, meta: ProfileMeta) -> Profile {
        build_profile(&self.stacks, &self.processes, &mut self.symbolizer, meta)
    }
}
