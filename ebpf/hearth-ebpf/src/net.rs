//! Network events from socket and TCP raw tracepoints, written to
//! `NET_EVENTS`. Sends, receives and connects run in the task that made the
//! call: they carry its user stack and teach `SOCKET_OWNERS` who owns the
//! socket. Retransmits, resets, connect completions and drops usually fire
//! in softirq or timer context, so they are attributed to that owner (or to
//! the kernel when none was seen) and carry the kernel stack only.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::{fexit, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{FExitContext, RawTracePointContext},
};
use hearth_common::{
    MAX_STACK_DEPTH, SAMPLE_NEEDS_TABLES, SampleHeader,
    net::{
        AF_INET, AF_INET6, CallSite, FLAG_FROM_OWNER, FLAG_SAME_STACK, NET_INFO_BYTES, NetConfig,
        NetCounter, NetEvent, NetEventKind, SockOffsets, SocketOwner, TCP_CLOSE, TCP_ESTABLISHED,
        TCP_SYN_SENT, hooks,
    },
    record_size,
    unwind::{UnwindMode, UnwindOutcome, WALK_TASK_EVENT},
};

use crate::{
    cpu::{SAMPLER_CONFIG, cgroup_allowed, is_traced},
    events::{
        RAW_UNWIND, RECV_INET_UNWIND, RECV_INET6_UNWIND, SEND_INET_UNWIND, SEND_INET6_UNWIND,
    },
    ring::wakeup_flags,
    task::{process_identity, read_field, user_registers},
    unwind::{process_tables, start_walk},
};

const NO_SOCK_OFFSETS: SockOffsets = SockOffsets {
    family: 0,
    local_port: 0,
    remote_port: 0,
    local_v4: 0,
    remote_v4: 0,
    local_v6: 0,
    remote_v6: 0,
    skb_sk: 0,
    skb_gso_segs: 0,
    socket_sk: 0,
};

/// Set by the agent at load time.
#[unsafe(no_mangle)]
pub(crate) static NET_CONFIG: Global<NetConfig> = Global::new(NetConfig {
    sock: NO_SOCK_OFFSETS,
    emit: 0,
    user_stacks: 0,
    wakeup_bytes: 0,
    _pad: 0,
});

/// Set by the agent at load time: [`hooks`] bits, the tracepoint arguments
/// this kernel passes beyond those of 5.10. A global of its own, tested
/// right where it is read, so the verifier sees a constant and never
/// explores a read past a tracepoint's last argument.
#[unsafe(no_mangle)]
static NET_HOOK_ARGS: Global<u32> = Global::new(0);

#[inline(always)]
pub(crate) fn has_arg(bit: u32) -> bool {
    NET_HOOK_ARGS.load() & bit != 0
}

/// Byte size is set by the agent (`network.ring_buffer`).
#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Socket (`struct sock` address) to the process that last used it; size
/// set by the agent (`network.socket_owners`).
#[map]
static SOCKET_OWNERS: LruHashMap<u64, SocketOwner> = LruHashMap::with_max_entries(65536, 0);

/// A thread's last walked call site per kind (key: tid << 32 | kind): a
/// call from the same site reuses that stack instead of walking it again.
#[map]
pub(crate) static CALL_SITES: LruHashMap<u64, CallSite> = LruHashMap::with_max_entries(16384, 0);

/// The agent's stack-cache generation: bumped when it forgets the stacks
/// `CALL_SITES` points at, so every thread walks afresh.
#[map]
pub(crate) static STACK_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static NET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NetCounter::COUNT, 0);

/// One scratch event per program: a softirq program can interrupt a task
/// program on the same CPU, and each needs its own.
#[map]
pub(crate) static NET_SCRATCH: PerCpuArray<NetEvent> = PerCpuArray::with_max_entries(SLOTS, 0);

const SLOT_SEND: u32 = 0;
const SLOT_RECV: u32 = 1;
const SLOT_RETRANSMIT: u32 = 2;
const SLOT_SEND_RESET: u32 = 3;
const SLOT_RECEIVE_RESET: u32 = 4;
const SLOT_STATE: u32 = 5;
const SLOT_DROP: u32 = 6;
/// The off-CPU program's two records: the stack as a thread switches out,
/// the time as another switches in.
pub(crate) const SLOT_OFF_CPU_OUT: u32 = 7;
pub(crate) const SLOT_OFF_CPU_IN: u32 = 8;
const SLOTS: u32 = 9;

/// `MSG_PEEK`: the bytes stay in the socket and will be read again.
const MSG_PEEK: u32 = 2;

pub(crate) const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

/// A raw tracepoint's kernel stack starts in this program and in
/// `bpf_trace_run<N>`; the traced function is the third frame.
pub(crate) const SKIP_TRACING_FRAMES: u64 = 2;

#[inline(always)]
pub(crate) fn count(counter: NetCounter) {
    if let Some(slot) = NET_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs do not nest on one slot.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn emits(kind: NetEventKind) -> bool {
    NET_CONFIG.load().emit & kind.bit() != 0
}

/// Reads the socket's family, ports and addresses into the event; returns
/// false for sockets that are not IPv4/IPv6 (Unix, netlink...).
#[inline(always)]
fn read_endpoints(sk: *const u8, event: &mut NetEvent) -> bool {
    let offsets = NET_CONFIG.load().sock;
    // SAFETY: `sk` is the `struct sock` the tracepoint passed, the offsets
    // come from the running kernel's BTF, and every read is checked.
    unsafe {
        let Ok(family) = read_field::<u16>(sk, offsets.family) else {
            count(NetCounter::ReadError);
            return false;
        };
        if family != AF_INET && family != AF_INET6 {
            return false;
        }
        let info = &mut event.info;
        info.family = family;
        info.local_port = read_field::<u16>(sk, offsets.local_port).unwrap_or(0);
        info.remote_port = u16::from_be(read_field::<u16>(sk, offsets.remote_port).unwrap_or(0));
        info.local_addr = [0; 16];
        info.remote_addr = [0; 16];
        let read = if family == AF_INET {
            read_field::<[u8; 4]>(sk, offsets.local_v4)
                .map(|a| info.local_addr[..4].copy_from_slice(&a))
                .and_then(|()| read_field::<[u8; 4]>(sk, offsets.remote_v4))
                .map(|a| info.remote_addr[..4].copy_from_slice(&a))
        } else {
            read_field::<[u8; 16]>(sk, offsets.local_v6)
                .map(|a| info.local_addr = a)
                .and_then(|()| read_field::<[u8; 16]>(sk, offsets.remote_v6))
                .map(|a| info.remote_addr = a)
        };
        if read.is_err() {
            count(NetCounter::ReadError);
        }
    }
    true
}

#[inline(always)]
pub(crate) fn scratch(slot: u32) -> Option<&'static mut NetEvent> {
    // SAFETY: each program has its own slot and programs do not nest with
    // themselves, so nothing else holds this reference.
    NET_SCRATCH
        .get_ptr_mut(slot)
        .map(|event| unsafe { &mut *event })
}

/// Copies the used part of `event`, with its `frames` frames (kernel and
/// user), to the ring.
/// `batch`: the agent need not read it at once (a send or receive whose
/// stack it already has); anything else wakes it, so it can read the
/// process's mappings while the process still lives.
#[inline(always)]
pub(crate) fn submit(event: &NetEvent, frames: usize, batch: bool) -> bool {
    // The verifier needs the length bounded right here.
    if frames > 2 * MAX_STACK_DEPTH {
        return false;
    }
    // SAFETY: the slice covers the info, the header and `frames` frames,
    // all inside `event`.
    let record = unsafe {
        core::slice::from_raw_parts(
            (event as *const NetEvent).cast::<u8>(),
            NET_INFO_BYTES + record_size(frames),
        )
    };
    // Sends and receives may wait for a batch; the rest wake the agent.
    let flags = if batch {
        wakeup_flags(&NET_EVENTS, NET_CONFIG.load().wakeup_bytes)
    } else {
        0
    };
    if NET_EVENTS.output::<[u8]>(record, flags).is_err() {
        count(NetCounter::RingFull);
        false
    } else {
        count(NetCounter::Events);
        true
    }
}

/// Where the current thread entered the kernel: the socket and its saved
/// user registers.
#[inline(always)]
pub(crate) fn call_site(sk: *const u8) -> Option<CallSite> {
    let (ip, sp, bp) = user_registers(&SAMPLER_CONFIG.load())?;
    Some(CallSite {
        socket: sk as u64,
        ip,
        sp,
        bp,
        generation: STACK_GENERATION.get(0).copied().unwrap_or(0),
    })
}

/// An event in the task that caused it (send, receive, connect): learns
/// the socket's owner, and writes the event with the task's user stack
/// when `kind` is wanted.
#[inline(always)]
fn task_event<C: EbpfContext>(
    ctx: &C,
    programs: &ProgramArray,
    slot: u32,
    kind: NetEventKind,
    sk: *const u8,
    value: u64,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let config = SAMPLER_CONFIG.load();
    if tgid == config.ignored_tgid || (config.filter_tgids != 0 && !is_traced(tgid)) {
        return;
    }
    let Some(event) = scratch(slot) else {
        return;
    };
    if !read_endpoints(sk, event) {
        return;
    }
    // SAFETY (these helpers): they read the current task and CPU and have
    // no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let (start, exec_id) = process_identity(task, &config.task).unwrap_or_else(|_| {
        count(NetCounter::ReadError);
        (0, 0)
    });
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !cgroup_allowed(&config, cgroup_id) {
        return;
    }
    learn_owner(sk, tgid, tid, exec_id, start, cgroup_id, &comm);
    if !emits(kind) {
        return;
    }
    event.info.value = value;
    event.info.socket = sk as u64;
    event.info.kind = kind as u16;
    event.info.detail = 0;
    event.info.flags = 0;
    // SAFETY: no preconditions.
    let (timestamp_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    event.header = SampleHeader {
        timestamp_ns,
        cgroup_id,
        process_start_ns: start,
        tgid,
        tid,
        cpu,
        exec_id,
        kernel_frames: 0,
        user_frames: 0,
        unwind: 0,
        flags: 0,
        _pad: 0,
        comm,
    };
    let reusable = matches!(kind, NetEventKind::Send | NetEventKind::Receive);
    if NET_CONFIG.load().user_stacks == 0 {
        submit(event, 0, reusable);
        return;
    }
    // Repeated calls from one place (a send loop) reuse the stack walked
    // the first time: the agent keeps it, keyed by thread and kind.
    let site_key = site_key(tid, kind);
    let site = call_site(sk);
    if reusable
        && let Some(site) = &site
        && let Some(last) = CALL_SITES.get_ptr(site_key)
        // SAFETY: a map value, compared in place.
        && unsafe { *last } == *site
    {
        event.info.flags = FLAG_SAME_STACK;
        submit(event, 0, true);
        return;
    }
    let mut cacheable = false;
    if let Some(site) = &site {
        match plan_walk(&mut event.header) {
            Walk::FramePointers { reusable: fp } => cacheable = fp,
            Walk::Tables { reusable: tables } => {
                // The unwinder takes the site back if the record is lost.
                let cached = reusable && tables;
                if cached {
                    let _ = CALL_SITES.insert(site_key, *site, 0);
                }
                start_walk(
                    ctx,
                    programs,
                    WALK_TASK_EVENT,
                    slot,
                    site.ip,
                    site.sp,
                    site.bp,
                    0,
                );
                if cached {
                    let _ = CALL_SITES.remove(site_key); // the tail call failed
                }
            }
        }
    }
    let frames = user_stack(ctx, event, 0);
    if submit(event, frames, false)
        && frames > 0
        && cacheable
        && reusable
        && let Some(site) = site
    {
        let _ = CALL_SITES.insert(site_key, site, 0);
    }
}

/// `CALL_SITES` key of a thread's last walked stack of `kind`.
#[inline(always)]
pub(crate) fn site_key(tid: u32, kind: NetEventKind) -> u64 {
    u64::from(tid) << 32 | kind as u64
}

/// How a user stack is walked, by the unwind mode and whether the agent
/// has loaded the process's tables (a process without them is flagged
/// for the agent to load them).
pub(crate) enum Walk {
    /// The kernel's frame-pointer walk; `reusable`: its stack may serve
    /// later calls from the same site (in frame-pointer mode only: in the
    /// other modes the process is walked again once it has tables).
    FramePointers { reusable: bool },
    /// The table walker; `reusable` when the process has tables.
    Tables { reusable: bool },
}

#[inline(always)]
pub(crate) fn plan_walk(header: &mut SampleHeader) -> Walk {
    let mode = SAMPLER_CONFIG.load().unwind_mode;
    if mode == UnwindMode::FramePointers as u8 {
        return Walk::FramePointers { reusable: true };
    }
    let known = process_tables(header.tgid, header.process_start_ns, header.exec_id).is_some();
    if !known {
        header.flags |= SAMPLE_NEEDS_TABLES;
    }
    if known || mode == UnwindMode::Dwarf as u8 {
        header.unwind = UnwindOutcome::FramePointers as u8;
        Walk::Tables { reusable: known }
    } else {
        Walk::FramePointers { reusable: false }
    }
}

/// The kernel's frame-pointer walk of the user stack into `event`, after
/// its `kernel` kernel frames; returns the frames in all.
#[inline(always)]
pub(crate) fn user_stack<C: EbpfContext>(ctx: &C, event: &mut NetEvent, kernel: usize) -> usize {
    if kernel > MAX_STACK_DEPTH {
        return 0;
    }
    // SAFETY: the stack is written into `frames` after the kernel frames,
    // where MAX_STACK_DEPTH more fit.
    let ret = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            event.frames.as_mut_ptr().add(kernel).cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        )
    };
    let user = if ret > 0 { ret as usize / 8 } else { 0 };
    if user > MAX_STACK_DEPTH {
        return kernel;
    }
    event.header.kernel_frames = kernel as u16;
    event.header.user_frames = user as u16;
    kernel + user
}

/// Records `tgid` as the socket's owner unless it already is.
#[inline(always)]
fn learn_owner(
    sk: *const u8,
    tgid: u32,
    tid: u32,
    exec_id: u32,
    start: u64,
    cgroup_id: u64,
    comm: &[u8; 16],
) {
    let key = sk as u64;
    if let Some(owner) = SOCKET_OWNERS.get_ptr(key) {
        // SAFETY: a map value pointer, read once; a racing update at worst
        // makes this refresh the entry.
        let owner = unsafe { &*owner };
        if owner.tgid == tgid && owner.tid == tid && owner.exec_id == exec_id {
            return;
        }
    }
    let owner = SocketOwner {
        process_start_ns: start,
        cgroup_id,
        tgid,
        tid,
        exec_id,
        _pad: 0,
        comm: *comm,
    };
    let _ = SOCKET_OWNERS.insert(key, owner, 0);
}

/// An event that fires outside the owning task: attributed to the socket's
/// owner (or to the kernel), with the kernel stack when `kernel_stack`.
#[inline(always)]
fn owner_event<C: EbpfContext>(
    ctx: &C,
    slot: u32,
    kind: NetEventKind,
    sk: *const u8,
    value: u64,
    detail: u32,
    kernel_stack: bool,
) {
    if !emits(kind) {
        return;
    }
    let config = SAMPLER_CONFIG.load();
    let Some(event) = scratch(slot) else {
        return;
    };
    event.info = Default::default();
    if !sk.is_null() && !read_endpoints(sk, event) {
        return;
    }
    let owner = if sk.is_null() {
        None
    } else {
        // SAFETY: copied out at once.
        SOCKET_OWNERS.get_ptr(sk as u64).map(|o| unsafe { *o })
    };
    match &owner {
        Some(owner) if config.filter_tgids != 0 && !is_traced(owner.tgid) => return,
        Some(owner) if !cgroup_allowed(&config, owner.cgroup_id) => return,
        Some(_) => {}
        None if config.filter_tgids != 0 || config.filter_cgroups != 0 => return,
        None => count(NetCounter::OwnerUnknown),
    }
    event.info.value = value;
    event.info.socket = sk as u64;
    event.info.kind = kind as u16;
    event.info.detail = detail;
    event.info.flags = if owner.is_some() { FLAG_FROM_OWNER } else { 0 };
    let owner = owner.unwrap_or(SocketOwner {
        comm: *b"[kernel]\0\0\0\0\0\0\0\0",
        ..Default::default()
    });
    // SAFETY: no preconditions.
    let (timestamp_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    event.header = SampleHeader {
        timestamp_ns,
        cgroup_id: owner.cgroup_id,
        process_start_ns: owner.process_start_ns,
        tgid: owner.tgid,
        tid: owner.tid,
        cpu,
        exec_id: owner.exec_id,
        kernel_frames: 0,
        user_frames: 0,
        unwind: 0,
        flags: 0,
        _pad: 0,
        comm: owner.comm,
    };
    let mut frames = 0usize;
    if kernel_stack && config.skip_kernel_stack == 0 {
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
            frames = ret as usize / 8;
        }
    }
    if frames > MAX_STACK_DEPTH {
        return;
    }
    event.header.kernel_frames = frames as u16;
    submit(event, frames, false);
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn net_send(ctx: RawTracePointContext) -> i32 {
    sent(&ctx, &RAW_UNWIND, ctx.arg(0), ctx.arg(1));
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn net_recv(ctx: RawTracePointContext) -> i32 {
    received(&ctx, &RAW_UNWIND, ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

// Kernels without the socket tracepoints: the same values where they come
// from. `sock_sendmsg_nosec` and `sock_recvmsg_nosec` fire those
// tracepoints with what the protocol family's sendmsg/recvmsg returned,
// and for IPv4 and IPv6 sockets those are these four functions.

/// `int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet_sendmsg")]
pub fn net_send_inet(ctx: FExitContext) -> i32 {
    sent(&ctx, &SEND_INET_UNWIND, socket_sock(ctx.arg(0)), ctx.arg(3));
    0
}

/// `int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet6_sendmsg")]
pub fn net_send_inet6(ctx: FExitContext) -> i32 {
    sent(
        &ctx,
        &SEND_INET6_UNWIND,
        socket_sock(ctx.arg(0)),
        ctx.arg(3),
    );
    0
}

/// `int inet_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)`.
#[fexit(function = "inet_recvmsg")]
pub fn net_recv_inet(ctx: FExitContext) -> i32 {
    received(
        &ctx,
        &RECV_INET_UNWIND,
        socket_sock(ctx.arg(0)),
        ctx.arg(4),
        ctx.arg(3),
    );
    0
}

/// `int inet6_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)`.
#[fexit(function = "inet6_recvmsg")]
pub fn net_recv_inet6(ctx: FExitContext) -> i32 {
    received(
        &ctx,
        &RECV_INET6_UNWIND,
        socket_sock(ctx.arg(0)),
        ctx.arg(4),
        ctx.arg(3),
    );
    0
}

/// The `struct sock` of a `struct socket`.
#[inline(always)]
fn socket_sock(socket: *const u8) -> *const u8 {
    let offsets = NET_CONFIG.load().sock;
    // SAFETY: `socket` is the traced function's socket; offset from BTF.
    unsafe { read_field(socket, offsets.socket_sk) }.unwrap_or(core::ptr::null())
}

/// A send that returned `ret` (bytes, or a negative error).
#[inline(always)]
fn sent<C: EbpfContext>(ctx: &C, programs: &ProgramArray, sk: *const u8, ret: i32) {
    if ret > 0 && !sk.is_null() {
        task_event(ctx, programs, SLOT_SEND, NetEventKind::Send, sk, ret as u64);
    }
}

/// A receive with `flags` that returned `ret`; peeked bytes stay in the
/// socket and are counted when read.
#[inline(always)]
fn received<C: EbpfContext>(ctx: &C, programs: &ProgramArray, sk: *const u8, ret: i32, flags: u32) {
    if ret > 0 && flags & MSG_PEEK == 0 && !sk.is_null() {
        task_event(
            ctx,
            programs,
            SLOT_RECV,
            NetEventKind::Receive,
            sk,
            ret as u64,
        );
    }
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`;
/// kernels without `err` fire it for segments that went out only.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn net_retransmit(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if has_arg(hooks::RETRANSMIT_ERROR) && ctx.arg::<i32>(2) != 0 {
        return 0; // not sent, and not counted in RetransSegs either
    }
    let offsets = NET_CONFIG.load().sock;
    // SAFETY: `skb` is the retransmitted TCP skb; offset from BTF.
    let segments: u16 = unsafe { read_field(skb, offsets.skb_gso_segs) }.unwrap_or(1);
    let segments = u64::from(segments.max(1));
    owner_event(
        &ctx,
        SLOT_RETRANSMIT,
        NetEventKind::Retransmit,
        sk,
        segments,
        0,
        true,
    );
    0
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason)`
/// (no `reason` before 6.10); `sk` is NULL when the reset answers a packet
/// no socket wanted.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn net_send_reset(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let reason: u32 = if has_arg(hooks::RESET_REASON) {
        ctx.arg(2)
    } else {
        0
    };
    owner_event(
        &ctx,
        SLOT_SEND_RESET,
        NetEventKind::ResetSent,
        sk,
        1,
        reason,
        true,
    );
    0
}

/// `tcp_receive_reset(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn net_receive_reset(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    owner_event(
        &ctx,
        SLOT_RECEIVE_RESET,
        NetEventKind::ResetReceived,
        sk,
        1,
        0,
        true,
    );
    0
}

/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`:
/// a connect starts in the calling task (SYN_SENT) and ends, usually in
/// softirq, when the handshake completes or fails.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn net_state(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: u32 = ctx.arg(1);
    let new: u32 = ctx.arg(2);
    if new == TCP_SYN_SENT {
        task_event(
            &ctx,
            &RAW_UNWIND,
            SLOT_STATE,
            NetEventKind::ConnectStart,
            sk,
            1,
        );
    } else if old == TCP_SYN_SENT && (new == TCP_ESTABLISHED || new == TCP_CLOSE) {
        owner_event(
            &ctx,
            SLOT_STATE,
            NetEventKind::ConnectEnd,
            sk,
            1,
            new,
            false,
        );
    }
    0
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`
/// (5.10: no `reason`; before 6.12: no `rx_sk`).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn net_drop(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let reason: u32 = if has_arg(hooks::DROP_REASON) {
        ctx.arg(2)
    } else {
        0
    };
    let mut sk: *const u8 = if has_arg(hooks::DROP_RX_SOCKET) {
        ctx.arg(3)
    } else {
        core::ptr::null()
    };
    if sk.is_null() {
        let offsets = NET_CONFIG.load().sock;
        // SAFETY: `skb` is the freed skb; offset from BTF.
        sk = unsafe { read_field(skb, offsets.skb_sk) }.unwrap_or(core::ptr::null());
    }
    owner_event(&ctx, SLOT_DROP, NetEventKind::Drop, sk, 1, reason, true);
    0
}
