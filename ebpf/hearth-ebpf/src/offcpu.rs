//! Off-CPU time: `sched_switch` sees a thread block (switch out while not
//! runnable) and come back (switch in). A sampled block of a thread in
//! scope is remembered in `BLOCKED_THREADS`; its stack, kernel and user,
//! is written to `NET_EVENTS` as the thread switches out, unless the
//! thread blocked at the same call site last time (same user registers),
//! whose stack the agent already has. As the thread switches back in, a
//! block that lasted at least the minimum is written as its time, on the
//! thread's last stack.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use hearth_common::{
    SampleHeader,
    net::{
        BlockedThread, FLAG_SAME_STACK, NetCounter, NetEventInfo, NetEventKind, OFF_CPU_ALWAYS,
        OffCpuConfig,
    },
    unwind::WALK_OFF_CPU,
};

use crate::{
    cpu::{SAMPLER_CONFIG, cgroup_allowed, is_traced},
    events::OFF_CPU_UNWIND,
    net::{
        CALL_SITES, SKIP_TRACING_FRAMES, SLOT_OFF_CPU_IN, SLOT_OFF_CPU_OUT, STACK_BYTES, call_site,
        count, scratch, site_key, submit, user_stack, walk_with_tables,
    },
    task::{process_identity, read_field},
};

/// Set by the agent at load time.
#[unsafe(no_mangle)]
static OFF_CPU_CONFIG: Global<OffCpuConfig> = Global::new(OffCpuConfig {
    min_ns: 0,
    threshold: 0,
    task_state: 0,
    _pad: 0,
});

/// Sampled threads blocked now, by tid; size set by the agent
/// (`off_cpu.max_blocked_threads`). Preallocated (no allocation in the
/// scheduler); emptied by the agent whenever the program is attached.
#[map]
pub(crate) static BLOCKED_THREADS: HashMap<u32, BlockedThread> = HashMap::with_max_entries(1, 0);

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`,
/// in the context of `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    switched_in(next);
    if preempt & 0xff == 0 {
        switched_out(&ctx, prev);
    }
    0
}

/// `next` runs again: a block that lasted long enough is written.
#[inline(always)]
fn switched_in(next: *const u8) {
    let offsets = SAMPLER_CONFIG.load().task;
    // SAFETY: `next` is the task_struct the tracepoint passed; offset from BTF.
    let Ok(tid) = (unsafe { read_field::<u32>(next, offsets.pid) }) else {
        return;
    };
    // SAFETY: copied out at once.
    let Some(blocked) = BLOCKED_THREADS.get_ptr(tid).map(|b| unsafe { *b }) else {
        return;
    };
    let _ = BLOCKED_THREADS.remove(tid);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let blocked_ns = now.saturating_sub(blocked.since_ns);
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
        timestamp_ns: now,
        cgroup_id: blocked.cgroup_id,
        process_start_ns: blocked.process_start_ns,
        tgid: blocked.tgid,
        tid,
        // SAFETY: no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        exec_id: blocked.exec_id,
        ..SampleHeader::default()
    };
    submit(event, 0, true);
}

/// The current task (`prev`) switches out: if it blocks, in scope, and the
/// sampling picks it, remember when, and write its stack unless the agent
/// has it already.
#[inline(always)]
fn switched_out(ctx: &BtfTracePointContext, prev: *const u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tid == 0 {
        return;
    }
    let off_cpu = OFF_CPU_CONFIG.load();
    // SAFETY: `prev` is the current task_struct; offset from BTF. The low
    // half of `state` (a long before 5.14) holds the same bits.
    let state: u32 = unsafe { read_field(prev, off_cpu.task_state) }.unwrap_or(0);
    // Runnable (preempted, or yielding) is not blocked; TASK_DEAD (0x80)
    // never comes back.
    if state == 0 || state & 0x80 != 0 {
        return;
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
    // A kernel thread has no user registers, and is not what a service waits in.
    let Some(site) = call_site(core::ptr::null()) else {
        return;
    };
    count(NetCounter::OffCpuBlocks);
    // SAFETY: no preconditions.
    if off_cpu.threshold < OFF_CPU_ALWAYS
        && u64::from(unsafe { bpf_get_prandom_u32() }) >= off_cpu.threshold
    {
        count(NetCounter::OffCpuSampledOut);
        return;
    }
    // SAFETY: the current task, offsets from BTF.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let (start, exec_id) = process_identity(task, &config.task).unwrap_or_else(|_| {
        count(NetCounter::ReadError);
        (0, 0)
    });
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let blocked = BlockedThread {
        since_ns: now,
        process_start_ns: start,
        cgroup_id,
        tgid,
        exec_id,
    };
    if BLOCKED_THREADS.insert(tid, blocked, 0).is_err() {
        count(NetCounter::OffCpuPendingFull);
        return;
    }
    let key = site_key(tid, NetEventKind::OffCpu);
    if let Some(last) = CALL_SITES.get_ptr(key)
        // SAFETY: a map value, compared in place.
        && unsafe { *last } == site
    {
        return; // the agent has this stack: the time will go on it
    }
    let Some(event) = scratch(SLOT_OFF_CPU_OUT) else {
        let _ = BLOCKED_THREADS.remove(tid);
        return;
    };
    event.info = NetEventInfo {
        kind: NetEventKind::OffCpu as u16,
        ..NetEventInfo::default()
    };
    event.header = SampleHeader {
        timestamp_ns: now,
        cgroup_id,
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
    if kernel > hearth_common::MAX_STACK_DEPTH {
        let _ = BLOCKED_THREADS.remove(tid);
        return;
    }
    event.header.kernel_frames = kernel as u16;
    let cacheable = walk_with_tables(
        ctx,
        &OFF_CPU_UNWIND,
        WALK_OFF_CPU,
        SLOT_OFF_CPU_OUT,
        event,
        &site,
        Some(key),
    );
    let frames = user_stack(ctx, event, kernel);
    if !submit(event, frames, false) {
        let _ = BLOCKED_THREADS.remove(tid);
    } else if cacheable {
        let _ = CALL_SITES.insert(key, site, 0);
    }
}
