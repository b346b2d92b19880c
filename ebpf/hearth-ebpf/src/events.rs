//! The table walkers of the event programs. A tail call stays within its
//! program type, and a tracing program's (fexit, BTF tracepoint) within
//! programs of the same hook, so each kind of hook that walks user stacks
//! has its own copy of the walker, with the program array it tail-calls:
//! the raw tracepoints (sends, receives and connects on kernels with the
//! socket tracepoints), each fexit hook (sends and receives before them)
//! and `sched_switch` (off-CPU). Every copy walks with `unwind::walk` and
//! ends by writing the event to `NET_EVENTS`.

use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, fexit, map, raw_tracepoint},
    maps::ProgramArray,
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext},
};
use hearth_common::{
    MAX_STACK_DEPTH,
    net::NetEventKind,
    unwind::{WALK_OFF_CPU, WALK_TASK_EVENT},
};

use crate::{
    net::{CALL_SITES, scratch, site_key, submit},
    offcpu::thread_slot,
    unwind::{walk, walk_state},
};

/// Slot 0 of each: the walker of that hook, set by the agent.
#[map]
pub(crate) static RAW_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub(crate) static SEND_INET_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub(crate) static SEND_INET6_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub(crate) static RECV_INET_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub(crate) static RECV_INET6_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub(crate) static OFF_CPU_UNWIND: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Walks on from the state of `walker`, and writes the event once the walk
/// has ended. A record that does not reach the ring takes back what
/// promised it to the agent: the thread's call site (later calls from it
/// would reuse a stack the agent never got) and, off-CPU, the block.
#[inline(always)]
fn walk_event<C: EbpfContext>(ctx: &C, programs: &ProgramArray, walker: u32) {
    let Some(state) = walk_state(walker) else {
        return;
    };
    let Some(event) = scratch(state.record_slot) else {
        return;
    };
    if !walk(ctx, programs, state, &mut event.header, &mut event.frames) {
        return;
    }
    let kernel = event.header.kernel_frames as usize;
    let user = (state.frames as usize).wrapping_sub(kernel);
    if user > MAX_STACK_DEPTH {
        return;
    }
    event.header.user_frames = user as u16;
    if submit(event, kernel + user, false) {
        return;
    }
    let tid = event.header.tid;
    match NetEventKind::from_u16(event.info.kind) {
        Some(NetEventKind::OffCpu) => {
            if let Some(slot) = thread_slot(tid) {
                slot.ip = 0;
                slot.since_ns = 0;
            }
        }
        Some(kind) => {
            let _ = CALL_SITES.remove(site_key(tid, kind));
        }
        None => {}
    }
}

#[raw_tracepoint]
pub fn raw_unwind(ctx: RawTracePointContext) -> i32 {
    walk_event(&ctx, &RAW_UNWIND, WALK_TASK_EVENT);
    0
}

#[fexit(function = "inet_sendmsg")]
pub fn send_inet_unwind(ctx: FExitContext) -> i32 {
    walk_event(&ctx, &SEND_INET_UNWIND, WALK_TASK_EVENT);
    0
}

#[fexit(function = "inet6_sendmsg")]
pub fn send_inet6_unwind(ctx: FExitContext) -> i32 {
    walk_event(&ctx, &SEND_INET6_UNWIND, WALK_TASK_EVENT);
    0
}

#[fexit(function = "inet_recvmsg")]
pub fn recv_inet_unwind(ctx: FExitContext) -> i32 {
    walk_event(&ctx, &RECV_INET_UNWIND, WALK_TASK_EVENT);
    0
}

#[fexit(function = "inet6_recvmsg")]
pub fn recv_inet6_unwind(ctx: FExitContext) -> i32 {
    walk_event(&ctx, &RECV_INET6_UNWIND, WALK_TASK_EVENT);
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_unwind(ctx: BtfTracePointContext) -> i32 {
    walk_event(&ctx, &OFF_CPU_UNWIND, WALK_OFF_CPU);
    0
}
