//! Probes: the kernel programs, how they are loaded and attached, and the
//! ring buffer they write samples to. First stage of the data's way.

pub mod btf;
mod kernel;
mod limits;
mod net;
mod ring;
mod sample;
mod shard;
mod unwind;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FExit, PerfEvent, ProgramError, RawTracePoint,
        fexit::FExitLinkId,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
    },
    util::online_cpus,
};
use hearth_common::{
    Counter, SamplerConfig,
    net::{NetConfig, NetCounter, NetEventKind, OffCpuConfig},
    unwind::UnwindMode,
};

pub use kernel::{Hook, KernelSupport, NetProgram, ReasonNames, SocketHooks, kernel_release};
pub use limits::{
    AUTO_RING_SECONDS, FrequencyError, RingBufferSize, RingSizeError, check_frequency,
    check_ring_buffer_size,
};
pub use net::{NetCounters, NetRecord, NetSettings, OffCpuSettings, encode as encode_net_record};
pub use ring::SampleRing;
pub use sample::{RawSample, SampleDecodeError, comm_to_str, encode as encode_sample};
pub use unwind::{UnwindCapacity, UnwindMaps};

/// The kernel programs, built by `build.rs` and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hearth-ebpf"));

const SAMPLES_RING: &str = "CPU_SAMPLES";
const TGID_FILTER: &str = "TGID_FILTER";
const CGROUP_ALLOW: &str = "CGROUP_ALLOW";
const COUNTERS: &str = "COUNTERS";
const NET_RING: &str = "NET_EVENTS";
const NET_COUNTERS: &str = "NET_COUNTERS";
const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
const CALL_SITES: &str = "CALL_SITES";
const STACK_GENERATION: &str = "STACK_GENERATION";
const THREAD_SLOTS: &str = "THREAD_SLOTS";
const OFF_CPU_EPOCH: &str = "OFF_CPU_EPOCH";

impl ProbeSettings {
    /// Some program walks user stacks with the unwind tables: the CPU
    /// sampler, or event programs that collect user stacks.
    pub fn walks_tables(&self) -> bool {
        self.unwind_mode != UnwindMode::FramePointers
            && (self.cpu || self.network.as_ref().is_some_and(|n| n.user_stacks))
    }
}

/// How the probes are set up at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Sample CPU stacks (off when only network events are wanted).
    pub cpu: bool,
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// Collect kernel stacks as well as user stacks.
    pub kernel_stacks: bool,
    /// Sample only processes added with [`Probes::trace_process`] and
    /// their descendants (otherwise: every process on the machine).
    pub filter_processes: bool,
    /// Bytes of the sample ring buffer shared by all CPUs (a power of two,
    /// at least one page). Samples arriving when it is full are counted as lost.
    pub ring_buffer_bytes: u32,
    /// Most processes the filter can hold (traced processes and their descendants).
    pub filter_capacity: u32,
    /// Network events, when any are wanted.
    pub network: Option<NetSettings>,
    /// Sample only cgroups put in the allow list with
    /// [`Probes::set_allowed_cgroups`], at most this many; `None`: every cgroup.
    pub cgroup_capacity: Option<u32>,
    /// Leave the agent's own process out (always, except in benchmarks
    /// that measure the pipeline on their own threads).
    pub ignore_own_process: bool,
    /// How user stacks are walked.
    pub unwind_mode: UnwindMode,
    /// Sizes of the table unwinder's maps (unused in frame-pointer mode).
    pub unwind_capacity: UnwindCapacity,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("loading the eBPF programs into the kernel failed")]
    Load(#[source] aya::EbpfError),
    #[error(
        "the eBPF object has no {0}; the build is inconsistent, rebuild with `cargo build --release`"
    )]
    Missing(&'static str),
    #[error("the kernel's BTF cannot be parsed for fexit programs")]
    KernelBtf(#[source] aya::BtfError),
    #[error("preparing program {program} failed")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "attaching the CPU sampler to CPU {cpu} at {frequency_hz} Hz failed (the kernel caps the \
         rate at /proc/sys/kernel/perf_event_max_sample_rate)"
    )]
    Attach {
        cpu: u32,
        frequency_hz: u64,
        #[source]
        source: ProgramError,
    },
    #[error("cannot list the online CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("BPF map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("watching the sample ring buffer failed")]
    Ring(#[source] std::io::Error),
    #[error("making or mapping an unwind row shard failed")]
    Shard(#[source] std::io::Error),
}

/// CPUs the sampler attaches to.
pub fn online_cpu_count() -> u64 {
    online_cpus().map_or(1, |cpus| cpus.len() as u64)
}

/// The system's memory page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Totals of the kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub samples: u64,
    pub ring_full: u64,
    pub kernel_stack_errors: u64,
    pub user_stack_errors: u64,
    pub task_read_errors: u64,
    pub filter_full: u64,
    /// User stacks walked with unwind tables, and the walks that stopped
    /// before the outermost frame, by reason.
    pub unwind_samples: u64,
    pub unwind_no_table: u64,
    pub unwind_bad_cfa: u64,
    pub unwind_read_errors: u64,
    pub unwind_depth_limit: u64,
    pub unwind_unsupported: u64,
    pub unwind_tail_call_errors: u64,
}

impl KernelCounters {
    fn set(&mut self, counter: Counter, value: u64) {
        let slot = match counter {
            Counter::Samples => &mut self.samples,
            Counter::RingFull => &mut self.ring_full,
            Counter::KernelStackError => &mut self.kernel_stack_errors,
            Counter::UserStackError => &mut self.user_stack_errors,
            Counter::TaskReadError => &mut self.task_read_errors,
            Counter::FilterFull => &mut self.filter_full,
            Counter::UnwindSamples => &mut self.unwind_samples,
            Counter::UnwindNoTable => &mut self.unwind_no_table,
            Counter::UnwindBadCfa => &mut self.unwind_bad_cfa,
            Counter::UnwindReadError => &mut self.unwind_read_errors,
            Counter::UnwindDepthLimit => &mut self.unwind_depth_limit,
            Counter::UnwindUnsupported => &mut self.unwind_unsupported,
            Counter::UnwindTailCall => &mut self.unwind_tail_call_errors,
        };
        *slot = value;
    }
}

/// The loaded probes: the CPU sampler and the network programs. They run
/// between [`start`](Self::start) and [`stop`](Self::stop); dropping this
/// unloads everything from the kernel. The agent's own process is never
/// sampled: symbolizing itself would cost more than it shows, and its CPU
/// and memory are in its metrics.
pub struct Probes {
    ebpf: Ebpf,
    settings: ProbeSettings,
    support: KernelSupport,
    /// The network programs loaded, and the kinds this kernel cannot serve.
    net_programs: Vec<NetProgram>,
    refused: Vec<(NetEventKind, String)>,
    links: Vec<PerfEventLinkId>,
    net_links: Vec<(&'static str, NetLink)>,
}

enum NetLink {
    RawTracepoint(RawTracePointLinkId),
    Fexit(FExitLinkId),
    BtfTracepoint(BtfTracePointLinkId),
}

/// The programs wake the agent once 1/WAKEUP_FRACTION of their ring is
/// full; the agent drains the rings on a timer as well ([`DRAIN_INTERVAL`]).
const WAKEUP_FRACTION: u32 = 8;
/// How often the agent drains the rings without being woken.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The smallest ring the kernel takes, for a ring nothing writes to.
const UNUSED_RING_BYTES: u32 = 4096;

impl Probes {
    /// Loads the programs and maps; nothing is attached and nothing sampled yet.
    pub fn load(settings: &ProbeSettings) -> Result<Self, ProbeError> {
        let btf = btf::KernelBtf::running()?;
        let support = KernelSupport::detect(&btf)?;
        tracing::debug!("{}", support.describe());
        let (task, regs) = btf.task_offsets()?;
        let tables = settings.walks_tables();
        let config = SamplerConfig {
            task,
            filter_tgids: u8::from(settings.filter_processes),
            skip_kernel_stack: u8::from(!settings.kernel_stacks),
            filter_cgroups: u8::from(settings.cgroup_capacity.is_some()),
            unwind_mode: settings.unwind_mode as u8,
            regs,
            _pad: 0,
            ignored_tgid: if settings.ignore_own_process {
                std::process::id()
            } else {
                0
            },
            wakeup_bytes: (settings.ring_buffer_bytes / WAKEUP_FRACTION).max(1),
        };
        let net_config = match &settings.network {
            Some(net) => NetConfig {
                sock: btf.sock_offsets()?,
                emit: net.emit.iter().fold(0, |mask, kind| mask | kind.bit()),
                user_stacks: u32::from(net.user_stacks),
                wakeup_bytes: (net.ring_buffer_bytes / WAKEUP_FRACTION).max(1),
                _pad: 0,
            },
            None => NetConfig::default(),
        };
        let off_cpu = settings.network.as_ref().and_then(|n| n.off_cpu);
        let off_cpu_config = match off_cpu {
            Some(off_cpu) => {
                let (task_cfs_rq, cfs_rq_rq, rq_clock) = btf.rq_clock_offsets().unwrap_or_default();
                OffCpuConfig {
                    min_ns: off_cpu.min_block_ns,
                    threshold: off_cpu.threshold(),
                    task_state: btf.task_state_offset()?,
                    slot_mask: off_cpu.thread_slots() - 1,
                    task_cfs_rq,
                    cfs_rq_rq,
                    rq_clock,
                    _pad: 0,
                }
            }
            None => OffCpuConfig::default(),
        };
        let net = settings.network.as_ref();
        let (mut net_programs, mut refused) = match net {
            Some(net) => support.net_programs(&net.emit),
            None => Default::default(),
        };
        drop(btf);
        let mut ebpf = EbpfLoader::new()
            .override_global("SAMPLER_CONFIG", &config, true)
            .override_global("NET_CONFIG", &net_config, true)
            .override_global("USER_REGS_STACK_OFFSET", &support.regs_stack_offset, true)
            .override_global("NET_HOOK_ARGS", &support.net_hook_args, true)
            .override_global("OFF_CPU_CONFIG", &off_cpu_config, true)
            .map_max_entries(
                SAMPLES_RING,
                if settings.cpu {
                    settings.ring_buffer_bytes
                } else {
                    UNUSED_RING_BYTES
                },
            )
            .map_max_entries(TGID_FILTER, settings.filter_capacity)
            .map_max_entries(CGROUP_ALLOW, settings.cgroup_capacity.unwrap_or(1).max(1))
            .map_max_entries(
                NET_RING,
                net.map_or(UNUSED_RING_BYTES, |n| n.ring_buffer_bytes),
            )
            .map_max_entries(SOCKET_OWNERS, net.map_or(1, |n| n.socket_owners.max(1)))
            .map_max_entries(CALL_SITES, net.map_or(1, |n| n.call_sites.max(1)))
            .map_max_entries(THREAD_SLOTS, off_cpu.map_or(1, |o| o.thread_slots()))
            .map_max_entries(
                unwind::UNWIND_ROW_SHARDS,
                if tables {
                    settings.unwind_capacity.max_shards.max(1)
                } else {
                    1
                },
            )
            .map_max_entries(
                unwind::UNWIND_PROCESSES,
                if tables {
                    settings.unwind_capacity.processes.max(1)
                } else {
                    1
                },
            )
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;

        if settings.cpu {
            let sampler: &mut PerfEvent = program(&mut ebpf, "cpu_sample")?;
            sampler.load().map_err(|source| ProbeError::Program {
                program: "cpu_sample",
                source,
            })?;
        }
        if tables {
            load_unwinder(&mut ebpf)?;
        }
        let walkers = tables && net.is_some_and(|n| n.user_stacks);
        load_net_programs(&mut ebpf, &mut net_programs, &mut refused, walkers)?;
        if settings.filter_processes {
            // Only needed to follow descendants; unfiltered sampling skips its cost.
            let fork: &mut RawTracePoint = program(&mut ebpf, "track_fork")?;
            fork.load()
                .and_then(|()| fork.attach("sched_process_fork").map(drop))
                .map_err(|source| ProbeError::Program {
                    program: "track_fork",
                    source,
                })?;
        }
        // Loading parsed the kernel's BTF (aya does, for relocations) and
        // freed it; give those pages back rather than keep them resident.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        Ok(Self {
            ebpf,
            settings: settings.clone(),
            support,
            net_programs,
            refused,
            links: Vec::new(),
            net_links: Vec::new(),
        })
    }

    /// Adds a process (and, from now on, its descendants) to the filter.
    pub fn trace_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.filter()?
            .insert(tgid, 1, 0)
            .map_err(|source| map_error(TGID_FILTER, source))
    }

    /// Removes a process from the filter (its descendants stay).
    pub fn untrace_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.filter()?
            .remove(&tgid)
            .map_err(|source| map_error(TGID_FILTER, source))
    }

    fn filter(&mut self) -> Result<HashMap<&mut MapData, u32, u8>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(TGID_FILTER)
            .ok_or(ProbeError::Missing(TGID_FILTER))?;
        HashMap::try_from(map).map_err(|source| map_error(TGID_FILTER, source))
    }

    /// Hands out the unwinder's maps (None in frame-pointer mode); call once.
    pub fn take_unwind_maps(&mut self) -> Result<Option<UnwindMaps>, ProbeError> {
        if !self.settings.walks_tables() {
            return Ok(None);
        }
        let mut take = |name: &'static str| match self.ebpf.take_map(name) {
            Some(aya::maps::Map::ArrayOfMaps(data) | aya::maps::Map::HashMap(data)) => Ok(data),
            _ => Err(ProbeError::Missing(name)),
        };
        let shards = take(unwind::UNWIND_ROW_SHARDS)?;
        let processes = take(unwind::UNWIND_PROCESSES)?;
        UnwindMaps::new(shards, processes, self.settings.unwind_capacity).map(Some)
    }

    /// Hands out the CPU sample ring; call once, before [`start`](Self::start).
    pub fn take_ring(&mut self) -> Result<SampleRing, ProbeError> {
        self.take_ring_named(SAMPLES_RING)
    }

    /// Hands out the network event ring; call once, before [`start`](Self::start).
    pub fn take_net_ring(&mut self) -> Result<SampleRing, ProbeError> {
        self.take_ring_named(NET_RING)
    }

    fn take_ring_named(&mut self, name: &'static str) -> Result<SampleRing, ProbeError> {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
        let ring: RingBuf<MapData> =
            RingBuf::try_from(map).map_err(|source| map_error(name, source))?;
        SampleRing::new(ring).map_err(ProbeError::Ring)
    }

    /// Attaches the network programs to their tracepoints, and the CPU
    /// sampler to a software cpu-clock event on every online CPU.
    pub fn start(&mut self) -> Result<(), ProbeError> {
        for net in self.net_programs.clone() {
            let name = net.name;
            let failed = |source| ProbeError::Program {
                program: name,
                source,
            };
            let link = match net.hook {
                Hook::RawTracepoint(tracepoint) => {
                    let program: &mut RawTracePoint = program(&mut self.ebpf, name)?;
                    NetLink::RawTracepoint(program.attach(tracepoint).map_err(failed)?)
                }
                Hook::Fexit(_) => {
                    let program: &mut FExit = program(&mut self.ebpf, name)?;
                    NetLink::Fexit(program.attach().map_err(failed)?)
                }
                Hook::BtfTracepoint(_) => {
                    // Blocks noted before a detach would be timed from
                    // then: a new epoch empties every slot.
                    self.next_off_cpu_epoch()?;
                    let program: &mut BtfTracePoint = program(&mut self.ebpf, name)?;
                    NetLink::BtfTracepoint(program.attach().map_err(failed)?)
                }
            };
            self.net_links.push((name, link));
        }
        if !self.settings.cpu {
            return Ok(());
        }
        let cpus = online_cpus().map_err(|(_, err)| ProbeError::Cpus(err))?;
        let frequency_hz = self.settings.frequency_hz;
        let sampler: &mut PerfEvent = program(&mut self.ebpf, "cpu_sample")?;
        for cpu in cpus {
            let link = sampler
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency_hz),
                    false,
                )
                .map_err(|source| ProbeError::Attach {
                    cpu,
                    frequency_hz,
                    source,
                })?;
            self.links.push(link);
        }
        Ok(())
    }

    /// Detaches everything; records already in the rings stay readable.
    pub fn stop(&mut self) -> Result<(), ProbeError> {
        for (name, link) in std::mem::take(&mut self.net_links) {
            let failed = |source| ProbeError::Program {
                program: name,
                source,
            };
            match link {
                NetLink::RawTracepoint(link) => {
                    let program: &mut RawTracePoint = program(&mut self.ebpf, name)?;
                    program.detach(link).map_err(failed)?;
                }
                NetLink::Fexit(link) => {
                    let program: &mut FExit = program(&mut self.ebpf, name)?;
                    program.detach(link).map_err(failed)?;
                }
                NetLink::BtfTracepoint(link) => {
                    let program: &mut BtfTracePoint = program(&mut self.ebpf, name)?;
                    program.detach(link).map_err(failed)?;
                }
            }
        }
        if self.links.is_empty() {
            return Ok(());
        }
        let sampler: &mut PerfEvent = program(&mut self.ebpf, "cpu_sample")?;
        for link in self.links.drain(..) {
            sampler.detach(link).map_err(|source| ProbeError::Program {
                program: "cpu_sample",
                source,
            })?;
        }
        Ok(())
    }

    /// What the running kernel offers, as detected at load.
    pub fn kernel(&self) -> &KernelSupport {
        &self.support
    }

    /// The network programs loaded, and where they attach.
    pub fn net_programs(&self) -> &[NetProgram] {
        &self.net_programs
    }

    /// Network event kinds this kernel cannot serve, each with the reason;
    /// everything else runs.
    pub fn refused_kinds(&self) -> &[(NetEventKind, String)] {
        &self.refused
    }

    /// Number of CPUs the sampler is attached to (0 when stopped).
    pub fn attached_cpus(&self) -> usize {
        self.links.len()
    }

    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let mut totals = KernelCounters::default();
        for counter in Counter::ALL {
            totals.set(counter, self.per_cpu_total(COUNTERS, counter as u32)?);
        }
        Ok(totals)
    }

    /// Slot `slot` of the per-CPU counter array `map`, summed over CPUs.
    fn per_cpu_total(&self, map: &'static str, slot: u32) -> Result<u64, ProbeError> {
        let map_err = |source| map_error(map, source);
        let data = self.ebpf.map(map).ok_or(ProbeError::Missing(map))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(data).map_err(map_err)?;
        Ok(array.get(&slot, 0).map_err(map_err)?.iter().sum())
    }
}

impl Probes {
    /// Makes `ids` the cgroups that may be sampled (when the probes were
    /// loaded with a `cgroup_capacity`): adds the new, removes the gone.
    pub fn set_allowed_cgroups(&mut self, ids: &[u64]) -> Result<(), ProbeError> {
        let map_err = |source| map_error(CGROUP_ALLOW, source);
        let map = self
            .ebpf
            .map_mut(CGROUP_ALLOW)
            .ok_or(ProbeError::Missing(CGROUP_ALLOW))?;
        let mut allow: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(map_err)?;
        let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let present: std::collections::HashSet<u64> = allow.keys().filter_map(Result::ok).collect();
        for id in present.iter().filter(|id| !wanted.contains(id)) {
            allow.remove(id).map_err(map_err)?;
        }
        for id in wanted.iter().filter(|id| !present.contains(id)) {
            allow.insert(id, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Tells the network programs that the agent forgot the stacks their
    /// call sites point at: every thread walks its stack afresh.
    pub fn set_stack_generation(&mut self, generation: u64) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(STACK_GENERATION)
            .ok_or(ProbeError::Missing(STACK_GENERATION))?;
        let mut array: aya::maps::Array<_, u64> = aya::maps::Array::try_from(map)
            .map_err(|source| map_error(STACK_GENERATION, source))?;
        array
            .set(0, generation, 0)
            .map_err(|source| map_error(STACK_GENERATION, source))
    }

    /// Starts a new off-CPU epoch: slots written before are empty.
    fn next_off_cpu_epoch(&mut self) -> Result<(), ProbeError> {
        let map_err = |source| map_error(OFF_CPU_EPOCH, source);
        let map = self
            .ebpf
            .map_mut(OFF_CPU_EPOCH)
            .ok_or(ProbeError::Missing(OFF_CPU_EPOCH))?;
        let mut epoch: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(map).map_err(map_err)?;
        let next = epoch.get(&0, 0).map_err(map_err)?.wrapping_add(1);
        epoch.set(0, next, 0).map_err(map_err)
    }

    /// The network programs' counters (all zero when none are loaded).
    pub fn net_counters(&self) -> Result<NetCounters, ProbeError> {
        let mut totals = NetCounters::default();
        for counter in NetCounter::ALL {
            totals.set(counter, self.per_cpu_total(NET_COUNTERS, counter as u32)?);
        }
        Ok(totals)
    }
}

/// Loads the network and off-CPU programs, and with `walkers` the table
/// walker of each (a program whose walker does not load walks user stacks
/// by frame pointer, with a warning). fexit programs (the send and
/// receive hooks of kernels without the socket tracepoints) need BPF
/// trampolines, which some kernel configurations lack: if they fail to
/// load, sends and receives are refused and the other events go on.
fn load_net_programs(
    ebpf: &mut Ebpf,
    programs: &mut Vec<NetProgram>,
    refused: &mut Vec<(NetEventKind, String)>,
    walkers: bool,
) -> Result<(), ProbeError> {
    let mut kernel_btf = None;
    let mut fexit_failure = None;
    let mut walkers_loaded = Vec::new();
    let mut failed_kinds = Vec::new();
    for net in programs.iter() {
        let name = net.name;
        let failed = |source| ProbeError::Program {
            program: name,
            source,
        };
        let btf = match (&net.hook, &kernel_btf) {
            (Hook::RawTracepoint(_), _) => None,
            (_, Some(btf)) => Some(btf),
            (_, None) => {
                Some(&*kernel_btf.insert(aya::Btf::from_sys_fs().map_err(ProbeError::KernelBtf)?))
            }
        };
        match (net.hook, btf) {
            (Hook::RawTracepoint(_), _) => {
                let program: &mut RawTracePoint = program(ebpf, name)?;
                program.load().map_err(failed)?;
            }
            (Hook::Fexit(function), Some(btf)) => {
                if fexit_failure.is_some() {
                    continue;
                }
                let program: &mut FExit = program(ebpf, name)?;
                if let Err(err) = program.load(function, btf) {
                    fexit_failure = Some(format!(
                        "this kernel ({}) has no socket tracepoints (Linux 6.3 and later), and \
                         fexit on {function} failed to load: {}",
                        kernel_release(),
                        crate::error_chain(&err)
                    ));
                    continue;
                }
            }
            (Hook::BtfTracepoint(tracepoint), Some(btf)) => {
                let program: &mut BtfTracePoint = program(ebpf, name)?;
                if let Err(err) = program.load(tracepoint, btf) {
                    refused.push((
                        net.kind,
                        format!(
                            "this kernel ({}) refused the {tracepoint} BTF tracepoint program: {}",
                            kernel_release(),
                            crate::error_chain(&err)
                        ),
                    ));
                    failed_kinds.push(net.kind);
                    continue;
                }
            }
            (_, None) => unreachable!("BTF is read for every hook but raw tracepoints"),
        }
        if let Some((walker, array)) = net.unwinder().filter(|_| walkers)
            && !walkers_loaded.contains(&walker)
        {
            walkers_loaded.push(walker);
            if let Err(err) = load_walker(ebpf, net.hook, walker, array, btf) {
                tracing::warn!(
                    program = name,
                    "the table walker {walker} did not load; {} stacks use frame pointers: {}",
                    net.kind_name(),
                    crate::error_chain(&err)
                );
            }
        }
    }
    if let Some(reason) = fexit_failure {
        programs.retain(|p| !matches!(p.hook, Hook::Fexit(_)));
        for kind in [NetEventKind::Send, NetEventKind::Receive] {
            refused.push((kind, reason.clone()));
        }
    }
    programs.retain(|p| !failed_kinds.contains(&p.kind));
    Ok(())
}

/// Loads the table walker `name` for programs on `hook` and puts it in
/// slot 0 of `array`, where they tail-call it.
fn load_walker(
    ebpf: &mut Ebpf,
    hook: Hook,
    name: &'static str,
    array: &'static str,
    btf: Option<&aya::Btf>,
) -> Result<(), ProbeError> {
    let failed = |source| ProbeError::Program {
        program: name,
        source,
    };
    let fd = match (hook, btf) {
        (Hook::Fexit(function), Some(btf)) => {
            let walker: &mut FExit = program(ebpf, name)?;
            walker.load(function, btf).map_err(failed)?;
            walker
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        }
        (Hook::BtfTracepoint(tracepoint), Some(btf)) => {
            let walker: &mut BtfTracePoint = program(ebpf, name)?;
            walker.load(tracepoint, btf).map_err(failed)?;
            walker
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        }
        _ => {
            let walker: &mut RawTracePoint = program(ebpf, name)?;
            walker.load().map_err(failed)?;
            walker
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        }
    }
    .map_err(failed)?;
    let map = ebpf.map_mut(array).ok_or(ProbeError::Missing(array))?;
    let mut slots =
        aya::maps::ProgramArray::try_from(map).map_err(|source| map_error(array, source))?;
    slots
        .set(0, &fd, 0)
        .map_err(|source| map_error(array, source))
}

/// Loads `cpu_unwind` and puts it where `cpu_sample` tail-calls it.
fn load_unwinder(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let unwinder: &mut PerfEvent = program(ebpf, "cpu_unwind")?;
    unwinder.load().map_err(|source| ProbeError::Program {
        program: "cpu_unwind",
        source,
    })?;
    let fd = unwinder
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| ProbeError::Program {
            program: "cpu_unwind",
            source,
        })?;
    let map = ebpf
        .map_mut(unwind::UNWIND_PROGRAMS)
        .ok_or(ProbeError::Missing(unwind::UNWIND_PROGRAMS))?;
    let mut programs = aya::maps::ProgramArray::try_from(map)
        .map_err(|source| map_error(unwind::UNWIND_PROGRAMS, source))?;
    programs
        .set(0, &fd, 0)
        .map_err(|source| map_error(unwind::UNWIND_PROGRAMS, source))
}

fn map_error(map: &'static str, source: MapError) -> ProbeError {
    ProbeError::Map { map, source }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    program.try_into().map_err(|source| ProbeError::Program {
        program: name,
        source,
    })
}
