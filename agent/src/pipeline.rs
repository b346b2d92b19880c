//! The profile pipeline, one stage after another: ring records are decoded
//! (probes), interned and counted (aggregate, and network for network
//! events, resolving new stacks' addresses through process metadata), then
//! symbolized and laid out as profiles on demand (symbolize, profile) for
//! the exporters.

use crate::{
    aggregate::StackTable,
    aggregate::network::{NetAggregator, NetStats},
    collect::probes::{NetRecord, RawSample},
    enrich::process::{ProcessKey, ProcessLimits, ProcessTable},
    event::Event,
    profile::{Profile, ProfileMeta, build_profile},
    symbolize::{Symbolizer, SymbolizerStats},
};
use hearth_common::SAMPLE_NEEDS_TABLES;
use rustc_hash::FxHashSet;

/// Bounds applied at every window boundary.
#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    pub idle_windows: u32,
}

/// Most distinct processes asking for unwind tables between two drains.
const MAX_UNWIND_REQUESTS: usize = 1024;

pub struct Pipeline {
    processes: ProcessTable,
    /// Processes whose samples asked for unwind tables since the last drain.
    unwind_requests: FxHashSet<ProcessKey>,
    stacks: StackTable,
    network: Option<NetAggregator>,
    symbolizer: Symbolizer,
    malformed: u64,
    /// Samples counted in windows already ended.
    earlier_samples: u64,
    /// Network events counted in windows already ended.
    earlier_network_events: u64,
}

impl Pipeline {
    pub fn new(limits: ProcessLimits, symbolizer: Symbolizer) -> Self {
        Self {
            processes: ProcessTable::new(limits),
            stacks: StackTable::new(),
            network: None,
            symbolizer,
            unwind_requests: FxHashSet::default(),
            malformed: 0,
            earlier_samples: 0,
            earlier_network_events: 0,
        }
    }

    /// Processes whose samples asked for unwind tables since the last call.
    pub fn take_unwind_requests(&mut self) -> FxHashSet<ProcessKey> {
        std::mem::take(&mut self.unwind_requests)
    }

    /// Also aggregates network events, through `network`.
    pub fn with_network(mut self, network: NetAggregator) -> Self {
        self.network = Some(network);
        self
    }

    /// Takes one network ring record.
    pub fn ingest_net(&mut self, record: &[u8]) {
        let Some(network) = self.network.as_mut() else {
            return;
        };
        match NetRecord::decode(record) {
            Ok(event) => {
                let header = &event.sample.header;
                if header.flags & SAMPLE_NEEDS_TABLES != 0
                    && self.unwind_requests.len() < MAX_UNWIND_REQUESTS
                {
                    self.unwind_requests.insert(ProcessKey {
                        tgid: header.tgid,
                        exec_id: header.exec_id,
                        start_ns: header.process_start_ns,
                    });
                }
                network.add(&event, record, &mut self.processes);
            }
            Err(err) => {
                self.malformed += 1;
                tracing::debug!(%err, "malformed network record");
            }
        }
    }

    /// The aggregator of the event ring's records, when events are wanted.
    pub fn network(&self) -> Option<&NetAggregator> {
        self.network.as_ref()
    }

    /// Network events counted in the current window.
    pub fn network_events(&self) -> u64 {
        self.network
            .as_ref()
            .map_or(0, NetAggregator::events_counted)
    }

    /// A new stack generation the network programs must be told of (the
    /// agent forgot the stacks their call sites point at).
    pub fn take_stack_generation(&mut self) -> Option<u64> {
        self.network.as_mut()?.take_generation()
    }

    /// Network events counted since the pipeline was made.
    pub fn total_network_events(&self) -> u64 {
        self.earlier_network_events + self.network_events()
    }

    pub fn network_stats(&self) -> NetStats {
        self.network
            .as_ref()
            .map_or_else(NetStats::default, NetAggregator::stats)
    }

    /// Takes one CPU ring-buffer record.
    pub fn ingest(&mut self, record: &[u8]) {
        match RawSample::decode(record) {
            Ok(sample) => {
                let header = &sample.header;
                if header.flags & SAMPLE_NEEDS_TABLES != 0
                    && self.unwind_requests.len() < MAX_UNWIND_REQUESTS
                {
                    self.unwind_requests.insert(ProcessKey {
                        tgid: header.tgid,
                        exec_id: header.exec_id,
                        start_ns: header.process_start_ns,
                    });
                }
                self.stacks.add(&sample, &mut self.processes);
            }
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

    /// Symbolizes what is needed and builds the CPU profile of everything
    /// counted in the current window.
    pub fn profile(&mut self, meta: ProfileMeta) -> Profile {
        build_profile(&self.stacks, &self.processes, &mut self.symbolizer, meta)
    }

    /// The profile of `event` in the current window (`meta.event` and
    /// `meta.period_ns` are set here); `None` when the event is not aggregated.
    pub fn event_profile(&mut self, event: Event, meta: ProfileMeta) -> Option<Profile> {
        if event == Event::Cpu {
            return Some(self.profile(ProfileMeta { event, ..meta }));
        }
        let network = self.network.as_ref()?;
        let table = network.table(event)?;
        let meta = ProfileMeta {
            event,
            period_ns: 1,
            ..meta
        };
        let mut profile = build_profile(table, &self.processes, &mut self.symbolizer, meta);
        profile.notes = network.notes(event);
        Some(profile)
    }

    /// Starts a new window (take its profile first): its stacks are
    /// dropped, processes idle for `limits.idle_windows` windows forgotten
    /// with their files and what was cached for them, and the memory this
    /// freed handed back to the kernel.
    pub fn end_window(&mut self, limits: &WindowLimits) {
        self.earlier_samples += self.stacks.samples();
        self.earlier_network_events += self.network_events();
        self.stacks = StackTable::new();
        if let Some(network) = self.network.as_mut() {
            network.end_window();
        }
        let forgotten = self.processes.end_window(limits.idle_windows);
        self.symbolizer.forget(&forgotten);
        self.symbolizer.trim();
        // Building a window allocates and frees a lot; without this the
        // allocator keeps the high-water mark resident.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
    }
}
