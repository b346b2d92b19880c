//! Network events: what the socket and TCP tracepoints write to the
//! `NET_EVENTS` ring, and the settings the agent passes in at load.

use crate::{SampleHeader, TASK_COMM_LEN};

/// What a [`NetEventInfo`] records.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEventKind {
    /// Bytes a task handed to a socket (`value` = bytes).
    Send = 1,
    /// Bytes a task read from a socket (`value` = bytes).
    Receive = 2,
    /// TCP segments retransmitted (`value` = segments).
    Retransmit = 3,
    /// A TCP reset sent (`detail` = `enum sk_rst_reason`).
    ResetSent = 4,
    /// A TCP reset received.
    ResetReceived = 5,
    /// `connect()` sent its SYN (the header's timestamp is the start).
    ConnectStart = 6,
    /// A connection left SYN_SENT (`detail` = the new TCP state).
    ConnectEnd = 7,
    /// A packet dropped (`detail` = `enum skb_drop_reason`).
    Drop = 8,
    /// A thread blocked off the CPU (`value` = nanoseconds, 0 for the
    /// record that carries the stack it blocked at, written as it switched
    /// out; the record of the time, written as it switches back in, reuses
    /// that stack: [`FLAG_SAME_STACK`]).
    OffCpu = 9,
}

impl NetEventKind {
    pub const ALL: [NetEventKind; 9] = [
        NetEventKind::Send,
        NetEventKind::Receive,
        NetEventKind::Retransmit,
        NetEventKind::ResetSent,
        NetEventKind::ResetReceived,
        NetEventKind::ConnectStart,
        NetEventKind::ConnectEnd,
        NetEventKind::Drop,
        NetEventKind::OffCpu,
    ];

    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u16 == value)
    }

    /// Bit of this kind in [`NetConfig::emit`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// TCP states as `inet_sock_set_state` reports them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_CLOSE: u32 = 7;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The network part of a `NET_EVENTS` record. A record is this, then a
/// [`SampleHeader`] naming the process (the socket's owner for events that
/// fire outside it), then the header's frames: `NET_INFO_BYTES +
/// record_size(frames)` bytes in all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEventInfo {
    /// Bytes, segments or 1, by kind.
    pub value: u64,
    /// Kernel address of the `struct sock`: pairs a connect's start and end.
    pub socket: u64,
    /// Local and remote address: IPv4 in the first four bytes, or IPv6.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// A [`NetEventKind`].
    pub kind: u16,
    /// `AF_INET`, `AF_INET6`, or 0 when the event has no socket.
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Kind-specific: drop or reset reason, or the TCP state a connect reached.
    pub detail: u32,
    /// [`FLAG_FROM_OWNER`], [`FLAG_SAME_STACK`].
    pub flags: u32,
}

/// The process in the header owns the socket but was not the task running
/// when the event fired (it was learned earlier).
pub const FLAG_FROM_OWNER: u32 = 1;
/// The stack was not walked: it is the one of this thread's last record of
/// the same kind, which had the same socket and the same user registers.
pub const FLAG_SAME_STACK: u32 = 2;

/// What tells two calls from one thread apart without walking the stack:
/// the socket and the user-space instruction, stack and frame pointers at
/// the system call, plus the stack-cache generation of the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSite {
    pub socket: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub generation: u64,
}
pub const NET_INFO_BYTES: usize = core::mem::size_of::<NetEventInfo>();
const _: () = assert!(NET_INFO_BYTES == 64);

/// A [`NetEventInfo`] and a CPU-sample-shaped process header and stack, as
/// the kernel assembles it before copying the used part to the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetEvent {
    pub info: NetEventInfo,
    pub header: SampleHeader,
    pub frames: [u64; 2 * crate::MAX_STACK_DEPTH],
}

/// Byte offsets of the socket and packet fields the network programs read,
/// from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.__sk_common.skc_family` (u16).
    pub family: u32,
    /// `skc_num`: local port, host order (u16).
    pub local_port: u32,
    /// `skc_dport`: remote port, network order (u16).
    pub remote_port: u32,
    /// `skc_rcv_saddr` (IPv4, 4 bytes).
    pub local_v4: u32,
    /// `skc_daddr` (IPv4, 4 bytes).
    pub remote_v4: u32,
    /// `skc_v6_rcv_saddr` (16 bytes).
    pub local_v6: u32,
    /// `skc_v6_daddr` (16 bytes).
    pub remote_v6: u32,
    /// `sk_buff.sk`.
    pub skb_sk: u32,
    /// `sk_buff.cb` plus `tcp_skb_cb.tcp_gso_segs` (u16): segments in a TCP skb.
    pub skb_gso_segs: u32,
    /// `socket.sk`: the `struct sock` of a `struct socket` (read by the
    /// send and receive hooks of kernels without the socket tracepoints).
    pub socket_sk: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 40);

/// Load-time settings of the network programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub sock: SockOffsets,
    /// [`NetEventKind::bit`]s of the kinds written to the ring; the others
    /// only teach the programs who owns a socket.
    pub emit: u32,
    /// Non-zero: collect the user stack of sends, receives and connects.
    pub user_stacks: u32,
    /// Wake the agent once this many bytes wait in the ring (it also
    /// drains on a timer): one wakeup per batch, not per event.
    pub wakeup_bytes: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NetConfig>() == 56);

/// Bits of the kernel programs' `NET_HOOK_ARGS` global: the tracepoint
/// arguments this kernel passes beyond those every kernel from 5.10 has,
/// learned from BTF at load time. An argument a kernel lacks is never read
/// (the verifier refuses to attach a program that reads past the last one).
pub mod hooks {
    /// `kfree_skb` passes the drop reason (Linux 5.17 and later; 5.10 has
    /// no reasons).
    pub const DROP_REASON: u32 = 1;
    /// `kfree_skb` passes the receiving socket (Debian's 6.12 has it, 6.1
    /// does not).
    pub const DROP_RX_SOCKET: u32 = 2;
    /// `tcp_send_reset` passes the reset reason (Linux 6.10 and later).
    pub const RESET_REASON: u32 = 4;
    /// `tcp_retransmit_skb` passes the transmit error (6.18 and 7.2 do,
    /// Debian's 6.12 does not); before, it fires for segments that went
    /// out only.
    pub const RETRANSMIT_ERROR: u32 = 8;
    /// `sched_switch` passes `prev_state` (Linux 5.18 and later).
    pub const SWITCH_PREV_STATE: u32 = 16;
}

/// Who owns a socket: learned in task context (send, receive, connect) and
/// used for events that fire in softirq or timer context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    pub process_start_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub exec_id: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SocketOwner>() == 48);

/// Slots of the per-CPU `NET_COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetCounter {
    /// Events written to the ring.
    Events = 0,
    /// Events dropped because the ring was full.
    RingFull = 1,
    /// Events about a socket whose owner was never seen (attributed to the kernel).
    OwnerUnknown = 2,
    /// A kernel read failed (the event is kept with what was read).
    ReadError = 3,
    /// Blocks written with their time (a thread of the scope came back
    /// after at least the minimum). Every block of the scope ends up in
    /// one of this and the next three, so the program counts nothing on
    /// the switches it times and leaves out early.
    OffCpuTimed = 4,
    /// Blocks left out by the sampling probability.
    OffCpuSampledOut = 5,
    /// Sampled blocks shorter than the minimum block time.
    OffCpuShort = 6,
    /// Sampled blocks not timed: another thread blocked in the same slot
    /// of the thread table before this one came back.
    OffCpuPendingFull = 7,
}

impl NetCounter {
    pub const COUNT: u32 = 8;
    pub const ALL: [NetCounter; Self::COUNT as usize] = [
        NetCounter::Events,
        NetCounter::RingFull,
        NetCounter::OwnerUnknown,
        NetCounter::ReadError,
        NetCounter::OffCpuTimed,
        NetCounter::OffCpuSampledOut,
        NetCounter::OffCpuShort,
        NetCounter::OffCpuPendingFull,
    ];
}

/// Load-time settings of the off-CPU program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuConfig {
    /// Blocks shorter than this are counted, not recorded.
    pub min_ns: u64,
    /// A block is sampled when `bpf_get_prandom_u32() < threshold`:
    /// the probability times 2^32 (2^32: every block).
    pub threshold: u64,
    /// `task_struct.__state` (`state` before 5.14): 0 while runnable
    /// (read where `sched_switch` does not pass `prev_state`).
    pub task_state: u32,
    /// Slots of the thread table minus one (a power of two minus one).
    pub slot_mask: u32,
    /// Where the scheduler's clock of this CPU is, from the task switching
    /// out: `task_struct.se.cfs_rq`, `cfs_rq.rq`, `rq.clock` (the run
    /// queue's clock, which `__schedule` has just updated). Read with three
    /// loads instead of a clock helper, which costs more than the rest of
    /// a switch. 0 in `rq_clock`: the kernel lacks one of them (no
    /// CONFIG_FAIR_GROUP_SCHED), and the program reads `bpf_ktime_get_ns`.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<OffCpuConfig>() == 40);

/// `OffCpuConfig::threshold` that samples every block.
pub const OFF_CPU_ALWAYS: u64 = 1 << 32;

/// A thread's slot in the off-CPU program's table, at `tid & slot_mask`
/// (a direct-mapped table: no hashing and no locks in the scheduler; two
/// threads blocked at once in one slot are counted, the older one is not
/// timed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSlot {
    pub tid: u32,
    /// The agent's attach count when written: older slots are empty.
    pub epoch: u32,
    /// `bpf_ktime_get_ns()` when it switched out; 0 while it runs.
    pub since_ns: u64,
    /// Where it last blocked with a stack the agent was sent: the user
    /// instruction, stack and frame pointers, and the agent's stack
    /// generation then (all 0: none).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub generation: u32,
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<ThreadSlot>() == 48);
