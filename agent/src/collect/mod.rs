//! Collection: the kernel programs and their ring buffers ([`probes`]),
//! what steers them ([`scope`]: the cgroups sampled; [`preflight`]: the
//! privileges and limits they need), and the [`Collector`], which owns
//! the loaded programs, their two ring buffers, the kernel unwinder's
//! tables and the pipeline they feed, as the one piece `hearth record`
//! and `hearth run` both drive. What differs between them
//! (a duration and an output file; windows, export and on-call control)
//! stays in their own modules.

pub mod preflight;
pub mod probes;
pub mod scope;
mod settings;

pub use settings::{CollectorSettings, SettingsError, SymbolizerSettings, network_probes};

use crate::{
    aggregate::network::{self, NetAggregator},
    collect::probes::{ProbeError, Probes, SampleRing},
    enrich::unwind::{UnwindRegistry, UnwindStats},
    event::Event,
    pipeline::Pipeline,
    symbolize::Symbolizer,
    telemetry::Telemetry,
};

/// Which ring has records waiting (or a record came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    Cpu,
    Network,
}

/// Loaded probes, their readers and the pipeline. Fields drop in order:
/// the unwinder's and rings' maps before the programs.
pub struct Collector {
    unwinder: Option<UnwindRegistry>,
    cpu_ring: SampleRing,
    net_ring: SampleRing,
    pipeline: Pipeline,
    refused: Vec<(Event, String)>,
    sampling: bool,
    probes: Probes,
}

impl Collector {
    /// Loads the programs (nothing is sampled until
    /// [`set_sampling`](Self::set_sampling)) and sets the pipeline up.
    pub fn load(settings: CollectorSettings) -> Result<Self, ProbeError> {
        let mut probes = Probes::load(&settings.probes)?;
        let refused = network::refused_events(&settings.network_events, probes.refused_kinds());
        let unwinder = probes
            .take_unwind_maps()?
            .map(|maps| UnwindRegistry::new(maps, settings.unwind));
        let cpu_ring = probes.take_ring()?;
        let net_ring = probes.take_net_ring()?;
        let symbolizer = Symbolizer::new(
            settings.symbolizer.cache_entries,
            settings.symbolizer.debug_info,
        )
        .with_max_section_bytes(settings.symbolizer.max_section_bytes);
        let mut pipeline = Pipeline::new(settings.processes, symbolizer);
        if !settings.network_events.is_empty() {
            pipeline = pipeline.with_network(
                NetAggregator::new(
                    &settings.network_events,
                    settings.pending_connects,
                    settings.call_sites,
                    probes.kernel().reasons.clone(),
                )
                .with_off_cpu(settings.off_cpu()),
            );
        }
        Ok(Self {
            unwinder,
            cpu_ring,
            net_ring,
            pipeline,
            refused,
            sampling: false,
            probes,
        })
    }

    /// Network events asked for that this kernel cannot serve, and why;
    /// the other events are collected.
    pub fn refused_events(&self) -> &[(Event, String)] {
        &self.refused
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The probes, for the process filter and the cgroup allow list.
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// Attaches the programs (`true`) or detaches them (`false`), if they
    /// are not so already.
    pub fn set_sampling(&mut self, wanted: bool) -> Result<(), ProbeError> {
        if wanted && !self.sampling {
            self.probes.start()?;
            tracing::debug!("probes attached");
        } else if !wanted && self.sampling {
            self.probes.stop()?;
            tracing::debug!("probes detached");
        }
        self.sampling = wanted;
        Ok(())
    }

    pub fn is_sampling(&self) -> bool {
        self.sampling
    }

    /// Waits until a ring has records (a full page of them, or a wake-up
    /// the kernel sends: batched records wait for [`drain`](Self::drain)).
    pub async fn ready(&mut self) -> std::io::Result<Ready> {
        tokio::select! {
            ready = self.cpu_ring.wait() => ready.map(|()| Ready::Cpu),
            ready = self.net_ring.wait() => ready.map(|()| Ready::Network),
        }
    }

    /// Reads what waits in `ring`; each record is also handed to `tee`.
    pub fn drain_ready(
        &mut self,
        ring: Ready,
        tee: impl FnMut(Ready, &[u8]),
    ) -> Result<(), ProbeError> {
        match ring {
            Ready::Cpu => {
                self.drain_cpu(tee);
                Ok(())
            }
            Ready::Network => self.drain_network(tee),
        }
    }

    /// Reads what waits in both rings.
    pub fn drain(&mut self, mut tee: impl FnMut(Ready, &[u8])) -> Result<(), ProbeError> {
        self.drain_cpu(&mut tee);
        self.drain_network(tee)
    }

    /// Reads the CPU ring (each record also handed to `tee`), then loads
    /// the unwind tables its samples asked for.
    pub fn drain_cpu(&mut self, mut tee: impl FnMut(Ready, &[u8])) {
        let pipeline = &mut self.pipeline;
        self.cpu_ring.drain(|record| {
            pipeline.ingest(record);
            tee(Ready::Cpu, record);
        });
        self.serve_unwind_requests();
    }

    /// Loads the unwind tables that records asked for.
    fn serve_unwind_requests(&mut self) {
        let requests = self.pipeline.take_unwind_requests();
        if let Some(unwinder) = self.unwinder.as_mut() {
            unwinder.serve(requests);
        }
    }

    /// Reads the event ring (network and off-CPU; each record also handed
    /// to `tee`), loads the unwind tables its records asked for, and tells
    /// the kernel when the agent forgot the stacks its call sites point at.
    fn drain_network(&mut self, mut tee: impl FnMut(Ready, &[u8])) -> Result<(), ProbeError> {
        let pipeline = &mut self.pipeline;
        self.net_ring.drain(|record| {
            pipeline.ingest_net(record);
            tee(Ready::Network, record);
        });
        self.serve_unwind_requests();
        match self.pipeline.take_stack_generation() {
            Some(generation) => self.probes.set_stack_generation(generation),
            None => Ok(()),
        }
    }

    /// The periodic upkeep: unwind tables of processes gone are released.
    pub fn upkeep(&mut self) {
        if let Some(unwinder) = self.unwinder.as_mut() {
            unwinder.reap();
        }
    }

    /// What the table unwinder holds (None in frame-pointer mode).
    pub fn unwind_stats(&self) -> Option<UnwindStats> {
        self.unwinder.as_ref().map(UnwindRegistry::stats)
    }

    /// Records lost because a ring was full, both rings together.
    pub fn lost(&self) -> u64 {
        self.probes.counters().map_or(0, |c| c.ring_full)
            + self.probes.net_counters().map_or(0, |c| c.ring_full)
    }

    /// Copies the kernel's, the unwinder's and the pipeline's counts into
    /// the metrics.
    pub fn report(&self, telemetry: &Telemetry) {
        if let Ok(counters) = self.probes.counters() {
            telemetry.record_kernel(&counters);
        }
        if let Ok(counters) = self.probes.net_counters() {
            telemetry.record_net(&counters, &self.pipeline.network_stats());
        }
        if let Some(stats) = self.unwind_stats() {
            telemetry.record_unwind(&stats);
        }
        let p = &self.pipeline;
        telemetry.record_pipeline(p.total_samples(), p.total_network_events(), p.malformed());
    }

    /// Detaches the programs and reads what the rings still hold (records
    /// handed to `tee` too); no unwind tables are loaded any more.
    pub fn stop(&mut self, mut tee: impl FnMut(Ready, &[u8])) -> Result<(), ProbeError> {
        self.set_sampling(false)?;
        let pipeline = &mut self.pipeline;
        self.cpu_ring.drain(|record| {
            pipeline.ingest(record);
            tee(Ready::Cpu, record);
        });
        self.net_ring.drain(|record| {
            pipeline.ingest_net(record);
            tee(Ready::Network, record);
        });
        Ok(())
    }

    /// Frees the kernel side and keeps what was collected.
    pub fn into_pipeline(self) -> Pipeline {
        self.pipeline
    }
}
