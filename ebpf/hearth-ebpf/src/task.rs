//! Reads of `task_struct` fields at offsets the agent learned from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use hearth_common::TaskOffsets;

/// Reads a `T` at `offset` bytes into the kernel object at `base`.
///
/// # Safety
/// `base` must point to a kernel object whose layout `offset` was computed for.
#[inline(always)]
pub unsafe fn read_field<T: Copy>(base: *const u8, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }
}

/// Identity of the process image `task` belongs to: the thread-group
/// leader's boot-time start and the exec generation.
#[inline(always)]
pub fn process_identity(task: *const u8, offsets: &TaskOffsets) -> Result<(u64, u32), i32> {
    // SAFETY: `task` is the current task_struct and the offsets come from its BTF.
    unsafe {
        let leader: *const u8 = read_field(task, offsets.group_leader)?;
        let start: u64 = read_field(leader, offsets.start_boottime)?;
        // `self_exec_id` is u64 on recent kernels and u32 before; the low
        // half is the first four bytes on little-endian, enough to tell execs apart.
        let exec_id: u32 = read_field(task, offsets.self_exec_id)?;
        Ok((start, exec_id))
    }
}
