//! Batched ring-buffer wakeups, shared by the CPU and network programs.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::RingBuf,
};

/// Flags for `RingBuf::output`: wake the agent only once `wakeup_bytes`
/// wait in `ring` (a wakeup per record costs the agent more than the
/// record; it also drains on a timer). 0 keeps the ring's default, which
/// wakes the agent unless it is already reading.
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, wakeup_bytes: u32) -> u64 {
    if wakeup_bytes == 0 {
        0
    } else if ring.query(BPF_RB_AVAIL_DATA as u64) >= u64::from(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
