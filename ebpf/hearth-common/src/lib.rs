//! The ABI between Hearth's kernel programs and the userspace agent.
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit
//! padding, so both sides agree on the layout whatever compiler built them.
//! Sizes are checked at compile time.
#![no_std]

pub mod net;
pub mod unwind;

/// Deepest kernel or user stack a CPU sample carries. The kernel's own
/// walks stop at `PERF_MAX_STACK_DEPTH` (127); the table-driven user-stack
/// unwinder goes to this depth.
pub const MAX_STACK_DEPTH: usize = 128;

/// Length of a task's command name, including the trailing NUL.
pub const TASK_COMM_LEN: usize = 16;

/// Fixed part of a CPU sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHeader {
    /// `bpf_ktime_get_ns()` when the sample fired (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// cgroup v2 id of the sampled task.
    pub cgroup_id: u64,
    /// Boot-time start of the thread-group leader, in nanoseconds. With
    /// `tgid` and `exec_id` it names one process image, so a reused PID or an
    /// `exec` never mixes two programs' addresses.
    pub process_start_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// Low 32 bits of `task_struct.self_exec_id`; bumps on every `exec`.
    pub exec_id: u32,
    /// Kernel frames in the record.
    pub kernel_frames: u16,
    /// User frames in the record, after the kernel frames.
    pub user_frames: u16,
    /// How the user stack was walked and why the walk ended
    /// ([`unwind::UnwindOutcome`]).
    pub unwind: u8,
    /// [`SAMPLE_NEEDS_TABLES`] and future flags.
    pub flags: u8,
    pub _pad: u16,
    /// Name of the sampled thread, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 64);

/// `SampleHeader::flags`: the process has no unwind tables in the kernel
/// yet, or an address of its stack fell outside every mapping they cover
/// (a `dlopen` or `exec` since): the agent should (re)load them.
pub const SAMPLE_NEEDS_TABLES: u8 = 1;

/// One CPU sample as the kernel program assembles it. Only the header and
/// the frames in use are written to the `CPU_SAMPLES` ring buffer: the
/// `kernel_frames` kernel frames, then the `user_frames` user frames, each
/// innermost first. A record is `record_size(kernel_frames + user_frames)`
/// bytes long.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuSample {
    pub header: SampleHeader,
    pub frames: [u64; 2 * MAX_STACK_DEPTH],
}
const _: () = assert!(core::mem::size_of::<CpuSample>() == 64 + 2 * 8 * MAX_STACK_DEPTH);

/// Bytes of a ring record holding `frames` frames in all.
pub const fn record_size(frames: usize) -> usize {
    core::mem::size_of::<SampleHeader>() + 8 * frames
}

/// Byte offsets of the `task_struct` fields the kernel programs read,
/// learned at load time from the running kernel's BTF (Rust eBPF has no
/// CO-RE relocations, so the agent computes them and passes them in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub group_leader: u32,
    pub start_boottime: u32,
    pub self_exec_id: u32,
    /// `task_struct.stack`: the base of the task's kernel stack, below the
    /// saved user registers (read only where the kernel has no
    /// `bpf_task_pt_regs`).
    pub stack: u32,
}
const _: () = assert!(core::mem::size_of::<TaskOffsets>() == 24);

/// `pt_regs` offsets of the user registers the kernel programs read, from
/// BTF. Where the `pt_regs` itself is found is the kernel programs'
/// `USER_REGS_STACK_OFFSET` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegsLayout {
    /// `pt_regs.ip`, `.sp`, `.bp` and `.cs`.
    pub ip: u32,
    pub sp: u32,
    pub bp: u32,
    pub cs: u32,
}
const _: () = assert!(core::mem::size_of::<UserRegsLayout>() == 16);

/// Load-time settings of the CPU sampler, read-only in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerConfig {
    pub task: TaskOffsets,
    /// Non-zero: only sample tasks whose tgid is in `TGID_FILTER`.
    pub filter_tgids: u8,
    /// Non-zero: do not collect kernel stacks.
    pub skip_kernel_stack: u8,
    /// Non-zero: only sample tasks whose cgroup v2 id is in `CGROUP_ALLOW`.
    pub filter_cgroups: u8,
    /// How user stacks are walked: [`unwind::UnwindMode`].
    pub unwind_mode: u8,
    /// Never sampled: the agent's own process (its cost is in its metrics).
    pub ignored_tgid: u32,
    /// Wake the agent only once this many bytes wait in the ring (it also
    /// drains on a timer); 0: the ring's default, a wakeup per sample.
    pub wakeup_bytes: u32,
    pub _pad: u32,
    /// Where the user registers are.
    pub regs: UserRegsLayout,
}
const _: () = assert!(core::mem::size_of::<SamplerConfig>() == 56);

/// Slots of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Samples written to the ring buffer.
    Samples = 0,
    /// Samples dropped because the ring buffer was full.
    RingFull = 1,
    /// `bpf_get_stack` failed for the kernel stack (sample kept without it).
    KernelStackError = 2,
    /// `bpf_get_stack` failed for the user stack (sample kept without it).
    UserStackError = 3,
    /// A `task_struct` read failed (sample kept, process identity partial).
    TaskReadError = 4,
    /// The descendant filter was full when a traced process forked.
    FilterFull = 5,
    /// User stacks walked with unwind tables.
    UnwindSamples = 6,
    /// A table walk reached an address no table covers and the frame
    /// pointer there led nowhere.
    UnwindNoTable = 7,
    /// A table walk computed an impossible CFA (zero, or not above the
    /// stack pointer).
    UnwindBadCfa = 8,
    /// A table walk could not read the user stack.
    UnwindReadError = 9,
    /// A table walk reached `MAX_STACK_DEPTH` frames.
    UnwindDepthLimit = 10,
    /// A table walk met a rule it does not follow (a DWARF expression).
    UnwindUnsupported = 11,
    /// The tail call into the unwinder failed (the walk used frame pointers).
    UnwindTailCall = 12,
}

impl Counter {
    pub const COUNT: u32 = 13;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Samples,
        Counter::RingFull,
        Counter::KernelStackError,
        Counter::UserStackError,
        Counter::TaskReadError,
        Counter::FilterFull,
        Counter::UnwindSamples,
        Counter::UnwindNoTable,
        Counter::UnwindBadCfa,
        Counter::UnwindReadError,
        Counter::UnwindDepthLimit,
        Counter::UnwindUnsupported,
        Counter::UnwindTailCall,
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding left implicit.
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::SamplerConfig {}
    unsafe impl aya::Pod for super::UserRegsLayout {}
    unsafe impl aya::Pod for super::net::NetConfig {}
    unsafe impl aya::Pod for super::unwind::UnwindRow {}
    unsafe impl aya::Pod for super::unwind::ProcessUnwind {}
    unsafe impl aya::Pod for super::net::SocketOwner {}
    unsafe impl aya::Pod for super::net::OffCpuConfig {}
    unsafe impl aya::Pod for super::net::ThreadSlot {}
}
