//! Off-CPU time: `sched_switch` sees a thread block (switch out while not
//! runnable) and come back (switch in). The scheduler runs this on every
//! context switch, so the common paths touch one slot of a direct-mapped
//! thread table (`THREAD_SLOTS`, no hashing and no locks) and read the
//! user registers in one go:
//! - switching out, a sampled thread of the scope notes when; if it
//!   blocks somewhere else than where it last did with a stack the agent
//!   was sent (other user registers), its stack, kernel and user, is
//!   walked and written to `NET_EVENTS` now;
//! - switching back in, a block of at least the minimum is written as its
//!   time, on the thread's last stack.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_get_prandom_u32,
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map},
    maps::Array,
    programs::BtfTracePointContext,
};
use hearth_common::{
    MAX_STACK_DEPTH, SampleHeader,
    net::{
        FLAG_SAME_STACK, NetCounter, NetEventInfo, NetEventKind, OFF_CPU_ALWAYS, OffCpuConfig,
        ThreadSlot, hooks,
    },
    unwind::WALK_OFF_CPU,
};

use crate::{
    cpu::{SAMPLER_CONFIG, cgroup_allowed, is_traced},
    events::OFF_CPU_UNWIND,
    net::{
        SKIP_TRACING_FRAMES, SLOT_OFF_CPU_IN, SLOT_OFF_CPU_OUT, STACK_BYTES, STACK_GENERATION,
        Walk, count, has_arg, plan_walk, scratch, submit, user_stack,
    },
    task::{process_identity, read_field, user_registers_of},
    unwind::start_walk,
};

/// Set by the agent at load time.
#[unsafe(no_mangle)]
static OFF_CPU_CONFIG: Global<OffCpuConfig> = Global::new(OffCpuConfig {
    min_ns: 0,
    threshold: 0,
    task_state: 0,
    slot_mask: 0,
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_clock: 0,
    _pad: 0,
});

/// The thread table, a slot per `tid & slot_mask`; size set by the agent
/// (`off_cpu.max_blocked_threads`, rounded up to a power of two).
#[map]
pub(crate) static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(1, 0);

/// Slot 0: the agent's attach count. Slots written before the current
/// attach are empty (a thread that blocked while detached is not timed
/// from then).
#[map]
pub(crate) static OFF_CPU_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next[, unsigned int prev_state])`,
/// in the context of `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let epoch = OFF_CPU_EPOCH.get(0).copied().unwrap_or(0);
    // The clock is read once, and only by a switch that times something.
    let mut clock = Clock { task: prev, now: 0 };
    switched_in(next, epoch, &mut clock);
    if preempt & 0xff == 0 {
        let state: u32 = if has_arg(hooks::SWITCH_PREV_STATE) {
            ctx.arg(3)
        } else {
            // SAFETY: `prev` is the current task_struct; offset from BTF.
            // The low half of `state` (a long before 5.14) holds the bits.
            unsafe { read_field(prev, OFF_CPU_CONFIG.load().task_state) }.unwrap_or(0)
        };
        switched_out(&ctx, prev, state, epoch, &mut clock);
    }
    0
}

/// The slot of `tid`.
#[inline(always)]
pub(crate) fn thread_slot(tid: u32) -> Option<&'static mut ThreadSlot> {
    let index = tid & OFF_CPU_CONFIG.load().slot_mask;
    // SAFETY: an array slot; a thread's slot is written by the CPU it
    // switches on, one switch at a time.
    THREAD_SLOTS
        .get_ptr_mut(index)
        .map(|slot| unsafe { &mut *slot })
}

/// The time of this switch, read on first use: the run queue's clock
/// where the kernel has the way to it (`OffCpuConfig::rq_clock`), else
/// `bpf_ktime_get_ns`; one or the other for a whole load, never mixed.
/// 0: unreadable (nothing is timed).
struct Clock {
    /// The task switching out, on this CPU's run queue.
    task: *const u8,
    now: u64,
}

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.now == 0 {
            self.now = rq_clock(self.task);
        }
        self.now
    }
}

#[inline(always)]
fn rq_clock(task: *const u8) -> u64 {
    let config = OFF_CPU_CONFIG.load();
    if config.rq_clock == 0 {
        // SAFETY: no preconditions.
        return unsafe { bpf_ktime_get_ns() };
    }
    // SAFETY: BTF-typed pointers from the tracepoint, loaded directly at
    // their fields' offsets from BTF (a fault reads 0).
    unsafe {
        let cfs_rq = *(task.add(config.task_cfs_rq as usize) as *const *const u8);
        if cfs_rq.is_null() {
            return 0;
        }
        let rq = *(cfs_rq.add(config.cfs_rq_rq as usize) as *const *const u8);
        if rq.is_null() {
            return 0;
        }
        *(rq.add(config.rq_clock as usize) as *const u64)
    }
}

/// `next` runs again: a block that lasted long enough is written.
#[inline(always)]
fn switched_in(next: *const u8, epoch: u32, clock: &mut Clock) {
    let offsets = SAMPLER_CONFIG.load().task;
    // SAFETY: `next` is the BTF-typed task_struct the tracepoint passed,
    // loaded directly at its field's offset from BTF.
    let tid = unsafe { *(next.add(offsets.pid as usize) as *const u32) };
    let Some(slot) = thread_slot(tid) else {
        return;
    };
    if slot.tid != tid || slot.since_ns == 0 || slot.epoch != epoch {
        return;
    }
    let now = clock.now();
    let blocked_ns = now.saturating_sub(slot.since_ns);
    slot.since_ns = 0;
    if now == 0 {
        count(NetCounter::ReadError);
        return;
    }
    if blocked_ns < OFF_CPU_CONFIG.load().min_ns {
        count(NetCounter::OffCpuShort);
        return;
    }
    let Some(event) = scratch(SLOT_OFF_CPU_IN) else {
        return;
    };
    event.info = NetEventInfo {
        value: blocked_ns,
        kind: NetEventKind::OffCpu as u16,
        flags: FLAG_SAME_STACK,
        ..NetEventInfo::default()
    };
    event.header = SampleHeader {
        // Records carry the monotonic clock, as every other event does.
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        tgid: slot.tgid,
        tid,
        // SAFETY: no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ..SampleHeader::default()
    };
    if submit(event, 0, true) {
        count(NetCounter::OffCpuTimed);
    }
}

/// The current task switches out in `state`: if it blocks, in scope, and
/// the sampling picks it, note when, and write its stack unless the agent
/// has it already.
#[inline(always)]
fn switched_out(
    ctx: &BtfTracePointContext,
    prev: *const u8,
    state: u32,
    epoch: u32,
    clock: &mut Clock,
) {
    // Runnable (preempted, or yielding) is not blocked; TASK_DEAD (0x80)
    // never comes back.
    if state == 0 || state & 0x80 != 0 {
        return;
    }
    let config = SAMPLER_CONFIG.load();
    // SAFETY: `prev` is the BTF-typed current task, loaded directly at
    // its fields' offsets from BTF.
    let (tgid, tid) = unsafe {
        (
            *(prev.add(config.task.tgid as usize) as *const u32),
            *(prev.add(config.task.pid as usize) as *const u32),
        )
    };
    if tid == 0 {
        return;
    }
    if tgid == config.ignored_tgid || (config.filter_tgids != 0 && !is_traced(tgid)) {
        return;
    }
    let off_cpu = OFF_CPU_CONFIG.load();
    if off_cpu.threshold < OFF_CPU_ALWAYS {
        // SAFETY: no preconditions.
        if u64::from(unsafe { bpf_get_prandom_u32() }) >= off_cpu.threshold {
            count(NetCounter::OffCpuSampledOut);
            return;
        }
    }
    if config.filter_cgroups != 0 {
        // SAFETY: no preconditions.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        if !cgroup_allowed(&config, cgroup_id) {
            return;
        }
    }
    // A kernel thread has no user registers, and is not what a service waits in.
    let Some((ip, sp, bp)) = user_registers_of(&config, Some(prev)) else {
        return;
    };
    let now = clock.now();
    if now == 0 {
        count(NetCounter::ReadError);
        return;
    }
    let Some(slot) = thread_slot(tid) else {
        return;
    };
    if slot.tid != tid {
        if slot.since_ns != 0 && slot.epoch == epoch {
            count(NetCounter::OffCpuPendingFull); // the other thread's block is lost
        }
        *slot = ThreadSlot {
            tid,
            tgid,
            ..ThreadSlot::default()
        };
    }
    slot.since_ns = now;
    slot.epoch = epoch;
    slot.tgid = tgid;
    let generation = STACK_GENERATION.get(0).copied().unwrap_or(0) as u32;
    if slot.ip == ip && slot.sp == sp && slot.bp == bp && slot.generation == generation {
        return; // the agent has this stack: the time will go on it
    }
    walk_stack(ctx, slot, tgid, tid, (ip, sp, bp), generation);
}

/// Writes the stack of the current task, blocking now at `registers`,
/// and remembers it in its slot when it can be reused.
#[inline(always)]
fn walk_stack(
    ctx: &BtfTracePointContext,
    slot: &mut ThreadSlot,
    tgid: u32,
    tid: u32,
    (ip, sp, bp): (u64, u64, u64),
    generation: u32,
) {
    let Some(event) = scratch(SLOT_OFF_CPU_OUT) else {
        slot.since_ns = 0;
        return;
    };
    let config = SAMPLER_CONFIG.load();
    // SAFETY: the current task, offsets from BTF.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let (start, exec_id) = process_identity(task, &config.task).unwrap_or_else(|_| {
        count(NetCounter::ReadError);
        (0, 0)
    });
    event.info = NetEventInfo {
        kind: NetEventKind::OffCpu as u16,
        ..NetEventInfo::default()
    };
    event.header = SampleHeader {
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        process_start_ns: start,
        tgid,
        tid,
        // SAFETY: no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        exec_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..SampleHeader::default()
    };
    let mut kernel = 0usize;
    if config.skip_kernel_stack == 0 {
        // SAFETY: the stack is written into `frames`, which holds MAX_STACK_DEPTH.
        let ret = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                event.frames.as_mut_ptr().cast(),
                STACK_BYTES,
                SKIP_TRACING_FRAMES,
            )
        };
        if ret > 0 {
            kernel = ret as usize / 8;
        }
    }
    if kernel > MAX_STACK_DEPTH {
        slot.since_ns = 0;
        return;
    }
    event.header.kernel_frames = kernel as u16;
    let mut reusable = false;
    match plan_walk(&mut event.header) {
        Walk::FramePointers { reusable: fp } => reusable = fp,
        Walk::Tables { reusable: tables } => {
            // A table walk's stack is reused: the slot says so before the
            // walk (the unwinder takes it back if the record is lost).
            if tables {
                (slot.ip, slot.sp, slot.bp, slot.generation) = (ip, sp, bp, generation);
            }
            start_walk(
                ctx,
                &OFF_CPU_UNWIND,
                WALK_OFF_CPU,
                SLOT_OFF_CPU_OUT,
                ip,
                sp,
                bp,
                kernel as u32,
            );
            slot.ip = 0; // the tail call failed
        }
    }
    let frames = user_stack(ctx, event, kernel);
    if !submit(event, frames, false) {
        slot.since_ns = 0;
    } else if reusable {
        (slot.ip, slot.sp, slot.bp, slot.generation) = (ip, sp, bp, generation);
    }
}
