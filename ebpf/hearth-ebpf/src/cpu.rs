//! CPU stack sampling: a perf_event program on every CPU writes one
//! `CpuSample` per tick to `CPU_SAMPLES`, and two scheduler tracepoints keep
//! the tgid filter following the traced processes' children.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::{map, perf_event, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, RawTracePointContext},
};
use hearth_common::{
    Counter, CpuSample, MAX_STACK_DEPTH, SAMPLE_NEEDS_TABLES, SamplerConfig, TaskOffsets,
    UserRegsLayout, record_size,
    unwind::{UnwindMode, UnwindOutcome, WALK_CPU},
};

use crate::{
    ring::wakeup_flags,
    task::{process_identity, read_field, user_registers},
    unwind::{UNWIND_PROGRAMS, process_tables, start_walk},
};

const NO_OFFSETS: TaskOffsets = TaskOffsets {
    pid: 0,
    tgid: 0,
    group_leader: 0,
    start_boottime: 0,
    self_exec_id: 0,
    stack: 0,
};

/// Set by the agent at load time.
#[unsafe(no_mangle)]
pub(crate) static SAMPLER_CONFIG: Global<SamplerConfig> = Global::new(SamplerConfig {
    task: NO_OFFSETS,
    filter_tgids: 0,
    skip_kernel_stack: 0,
    filter_cgroups: 0,
    unwind_mode: 0,
    ignored_tgid: 0,
    wakeup_bytes: 0,
    _pad: 0,
    regs: UserRegsLayout {
        ip: 0,
        sp: 0,
        bp: 0,
        cs: 0,
    },
});

/// Byte size is set by the agent (`ring_buffer_bytes`).
#[map]
static CPU_SAMPLES: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Processes to sample when `filter_tgids` is set; size set by the agent.
#[map]
static TGID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// cgroup v2 ids that may be sampled when `filter_cgroups` is set; size
/// set by the agent (`scope.max_cgroups`).
#[map]
static CGROUP_ALLOW: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Where a sample is assembled before its used part is copied to the ring
/// (a record carries only the frames it has, not the whole frame array).
#[map]
pub(crate) static SCRATCH: PerCpuArray<CpuSample> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and this program cannot be preempted on its CPU.
        unsafe { *slot += 1 };
    }
}

/// Whether the scope allows cgroup `id` (always, when not scoped).
#[inline(always)]
pub(crate) fn cgroup_allowed(config: &SamplerConfig, id: u64) -> bool {
    // SAFETY: the value is only compared against None, never held.
    config.filter_cgroups == 0 || unsafe { CGROUP_ALLOW.get(id) }.is_some()
}

#[inline(always)]
pub(crate) fn is_traced(tgid: u32) -> bool {
    // SAFETY: the value is only compared against None, never held.
    unsafe { TGID_FILTER.get(tgid) }.is_some()
}

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    try_cpu_sample(&ctx);
    0
}

#[inline(always)]
fn try_cpu_sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 {
        return; // the idle task: nothing to attribute
    }
    let config = SAMPLER_CONFIG.load();
    if tgid == config.ignored_tgid || (config.filter_tgids != 0 && !is_traced(tgid)) {
        return;
    }
    // SAFETY: no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !cgroup_allowed(&config, cgroup_id) {
        return;
    }
    let Some(sample) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `sample` is this CPU's scratch CpuSample; the stack writes stay
    // inside `frames` (the kernel part is at most MAX_STACK_DEPTH frames, and
    // the user part starts right after it with room for MAX_STACK_DEPTH more).
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let (start, exec_id) = match process_identity(task, &config.task) {
            Ok(identity) => identity,
            Err(_) => {
                count(Counter::TaskReadError);
                (0, 0)
            }
        };
        let header = &mut (*sample).header;
        header.timestamp_ns = bpf_ktime_get_ns();
        header.cgroup_id = cgroup_id;
        header.process_start_ns = start;
        header.tgid = tgid;
        header.tid = tid;
        header.cpu = bpf_get_smp_processor_id();
        header.exec_id = exec_id;
        header.comm = bpf_get_current_comm().unwrap_or([0; 16]);

        const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;
        let frames = (*sample).frames.as_mut_ptr();
        let mut kernel = 0usize;
        if config.skip_kernel_stack == 0 {
            let ret = bpf_get_stack(ctx.as_ptr(), frames.cast(), STACK_BYTES, 0);
            if ret >= 0 {
                kernel = ret as usize / 8;
            } else {
                count(Counter::KernelStackError);
            }
        }
        if kernel > MAX_STACK_DEPTH {
            return;
        }
        header.kernel_frames = kernel as u16;
        header.unwind = UnwindOutcome::FramePointers as u8;
        header.flags = 0;
        if config.unwind_mode != UnwindMode::FramePointers as u8 {
            let known = process_tables(tgid, start, exec_id).is_some();
            if !known {
                header.flags |= SAMPLE_NEEDS_TABLES;
            }
            if known || config.unwind_mode == UnwindMode::Dwarf as u8 {
                if let Some((ip, sp, bp)) = user_registers(&config) {
                    start_walk(
                        ctx,
                        &UNWIND_PROGRAMS,
                        WALK_CPU,
                        0,
                        ip,
                        sp,
                        bp,
                        kernel as u32,
                    );
                } else {
                    // A kernel thread: no user stack to walk.
                    submit(sample, kernel, 0);
                    return;
                }
            }
        }
        let ret = bpf_get_stack(
            ctx.as_ptr(),
            frames.add(kernel).cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
        let user = if ret >= 0 {
            ret as usize / 8
        } else {
            count(Counter::UserStackError);
            0
        };
        if user > MAX_STACK_DEPTH {
            return;
        }
        submit(sample, kernel, user);
    }
}

/// Writes the used part of this CPU's scratch sample to the ring: its
/// header, `kernel` kernel frames and `user` user frames.
///
/// # Safety
/// `sample` is this CPU's `SCRATCH` slot, with the header filled in.
#[inline(always)]
pub(crate) unsafe fn submit(sample: *mut CpuSample, kernel: usize, user: usize) {
    if kernel > MAX_STACK_DEPTH || user > MAX_STACK_DEPTH {
        return;
    }
    // SAFETY: see above; the length is within the CpuSample.
    unsafe {
        (*sample).header.kernel_frames = kernel as u16;
        (*sample).header.user_frames = user as u16;
        let record = core::slice::from_raw_parts(sample as *const u8, record_size(kernel + user));
        let config = SAMPLER_CONFIG.load();
        let flags = wakeup_flags(&CPU_SAMPLES, config.wakeup_bytes);
        if CPU_SAMPLES.output::<[u8]>(record, flags).is_err() {
            count(Counter::RingFull);
            return;
        }
    }
    count(Counter::Samples);
}

/// Runs in the parent: a traced process's new child is traced too, and a new
/// process that reuses a stale traced tgid is untraced.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn track_fork(ctx: RawTracePointContext) -> i32 {
    match try_track_fork(&ctx) {
        Ok(()) => 0,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_track_fork(ctx: &RawTracePointContext) -> Result<(), i32> {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child: *const u8 = ctx.arg(1);
    let offsets = SAMPLER_CONFIG.load().task;
    // SAFETY: arg 1 of sched_process_fork is the child's task_struct.
    let child_tgid: u32 = unsafe { read_field(child, offsets.tgid)? };
    if child_tgid == parent_tgid {
        return Ok(()); // a new thread of the same process
    }
    if is_traced(parent_tgid) {
        if TGID_FILTER.insert(child_tgid, 1, 0).is_err() {
            count(Counter::FilterFull);
        }
    } else if is_traced(child_tgid) {
        // The tgid belonged to a traced process that has exited.
        let _ = TGID_FILTER.remove(child_tgid);
    }
    Ok(())
}
