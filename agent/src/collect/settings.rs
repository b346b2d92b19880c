//! What a [`Collector`](super::Collector) is built from, and how `run`'s
//! configuration becomes it (`record` builds it from its options).

use crate::{
    aggregate::network,
    collect::probes::{
        FrequencyError, NetSettings, OffCpuSettings, ProbeSettings, UnwindCapacity,
        check_frequency, online_cpu_count,
    },
    config::Config,
    enrich::process::ProcessLimits,
    enrich::unwind::{self, UnwindLimits},
    event::Event,
    symbolize,
};

/// Everything the collector is made from.
#[derive(Clone, Debug)]
pub struct CollectorSettings {
    pub probes: ProbeSettings,
    /// The network events wanted (empty: none).
    pub network_events: Vec<Event>,
    /// Connects waiting for their end, for connection latency.
    pub pending_connects: usize,
    /// Call sites kept per socket for network stacks.
    pub call_sites: usize,
    pub unwind: UnwindLimits,
    pub processes: ProcessLimits,
    pub symbolizer: SymbolizerSettings,
}

/// How stacks are named.
#[derive(Clone, Copy, Debug)]
pub struct SymbolizerSettings {
    /// Addresses kept named.
    pub cache_entries: usize,
    /// Read DWARF for source lines and inlined frames.
    pub debug_info: bool,
    /// Largest inflated size of a compressed section of a file other users
    /// can write.
    pub max_section_bytes: u64,
}

impl CollectorSettings {
    /// How off-CPU blocks are chosen (None when off-CPU is off).
    pub fn off_cpu(&self) -> Option<OffCpuSettings> {
        self.probes.network.as_ref().and_then(|n| n.off_cpu)
    }
}

impl Default for SymbolizerSettings {
    fn default() -> Self {
        Self {
            cache_entries: symbolize::DEFAULT_CACHE_ENTRIES,
            debug_info: true,
            max_section_bytes: symbolize::DEFAULT_MAX_SECTION_BYTES,
        }
    }
}

/// A configuration the kernel cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config key `frequency`: {0}")]
    Frequency(#[from] FrequencyError),
}

/// The kernel side of the ring `events` (network, off-CPU): None when
/// none is wanted. Off-CPU time and socket events share the event ring
/// and the call-site cache.
pub fn network_probes(
    events: &[Event],
    ring_buffer_bytes: u32,
    socket_owners: u32,
    user_stacks: bool,
    call_sites: u32,
    off_cpu: OffCpuSettings,
) -> Option<NetSettings> {
    (!events.is_empty()).then(|| NetSettings {
        emit: network::kernel_kinds(events),
        ring_buffer_bytes,
        socket_owners,
        user_stacks,
        call_sites,
        off_cpu: events.contains(&Event::OffCpu).then_some(off_cpu),
    })
}

impl TryFrom<&Config> for CollectorSettings {
    type Error = SettingsError;

    fn try_from(config: &Config) -> Result<Self, SettingsError> {
        check_frequency(config.frequency)?;
        let network_events: Vec<Event> = config
            .events
            .iter()
            .copied()
            .filter(|e| e.is_ring_event())
            .collect();
        let net = &config.network;
        let probes = ProbeSettings {
            cpu: config.events.contains(&Event::Cpu),
            network: network_probes(
                &network_events,
                net.ring_buffer.0 as u32,
                net.socket_owners,
                net.user_stacks,
                net.call_sites,
                config.off_cpu.settings(),
            ),
            cgroup_capacity: config.scope.is_scoped().then_some(config.scope.max_cgroups),
            ignore_own_process: true,
            frequency_hz: config.frequency,
            kernel_stacks: config.kernel_stacks,
            filter_processes: false,
            ring_buffer_bytes: config
                .limits
                .ring_buffer_size
                .bytes(online_cpu_count(), config.frequency),
            filter_capacity: 1,
            unwind_mode: config.unwind.mode.kernel_mode(),
            unwind_capacity: UnwindCapacity::new(
                config.unwind.shard_rows,
                config.unwind.max_rows,
                config.unwind.max_processes,
            ),
        };
        Ok(Self {
            probes,
            network_events,
            pending_connects: net.max_pending_connects,
            call_sites: net.call_sites as usize,
            unwind: UnwindLimits {
                max_rows_per_object: config.unwind.max_rows_per_object as usize,
                refresh_interval: unwind::MAX_REFRESH,
            },
            processes: ProcessLimits {
                max_open_objects: config.limits.max_open_objects,
                ..ProcessLimits::default()
            },
            symbolizer: SymbolizerSettings {
                cache_entries: config.symbolize.cache_entries,
                debug_info: config.symbolize.debug_info,
                max_section_bytes: config.symbolize.max_section_bytes.0,
            },
        })
    }
}
