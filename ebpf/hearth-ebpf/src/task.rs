//! Reads of `task_struct` fields at offsets the agent learned from BTF, and
//! of the current task's saved user registers.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs,
    },
};
use hearth_common::{SamplerConfig, TaskOffsets};

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

/// Set by the agent at load time: 0 where the kernel has
/// `bpf_task_pt_regs` (Linux 5.15 and later); otherwise the distance from
/// `task_struct.stack` to the task's saved user registers
/// (`THREAD_SIZE - sizeof(struct pt_regs)` on x86-64). A global of its own,
/// read right where it is tested, so that every verifier (5.10's too) sees
/// it as a constant and drops the branch with the helper its kernel lacks.
#[unsafe(no_mangle)]
static USER_REGS_STACK_OFFSET: Global<u32> = Global::new(0);

/// x86-64 user addresses are below this (47-bit address space; 57 with
/// five-level paging).
const USER_SPACE_END: u64 = 1 << 57;

/// The current thread's user registers (instruction, stack and frame
/// pointers) as saved when it entered the kernel or was interrupted; None
/// for kernel threads.
#[inline(always)]
pub fn user_registers(config: &SamplerConfig) -> Option<(u64, u64, u64)> {
    user_registers_of(config, None)
}

/// [`user_registers`], given the current task as the BTF-typed pointer a
/// BTF tracepoint passed (one helper call fewer).
#[inline(always)]
pub fn user_registers_of(
    config: &SamplerConfig,
    current_btf: Option<*const u8>,
) -> Option<(u64, u64, u64)> {
    let layout = &config.regs;
    let stack_offset = USER_REGS_STACK_OFFSET.load();
    // SAFETY: the current task's saved registers, read at BTF offsets with
    // checked reads.
    unsafe {
        if stack_offset == 0 {
            // A BTF pointer: its fields are loaded directly, no read helper.
            let task = match current_btf {
                Some(task) => task as *mut _,
                None => bpf_get_current_task_btf(),
            };
            let regs = bpf_task_pt_regs(task) as *const u8;
            if regs.is_null() {
                return None;
            }
            let field = |offset: u32| *(regs.add(offset as usize) as *const u64);
            let ip = field(layout.ip);
            if ip == 0 || ip >= USER_SPACE_END {
                return None;
            }
            return Some((ip, field(layout.sp), field(layout.bp)));
        }
        let task = bpf_get_current_task() as *const u8;
        let stack: *const u8 = read_field(task, config.task.stack).ok()?;
        if stack.is_null() {
            return None;
        }
        let regs = stack.add(stack_offset as usize);
        // One read of the whole frame (168 bytes on x86-64) costs less
        // than four of its fields.
        let saved: [u64; PT_REGS_WORDS] = bpf_probe_read_kernel(regs.cast()).ok()?;
        let word = |offset: u32| saved.get((offset / 8) as usize).copied();
        // Only a frame saved on entry from user mode has user registers
        // (kernel threads have none).
        if word(layout.cs)? & 3 != 3 {
            return None;
        }
        let ip = word(layout.ip)?;
        if ip == 0 || ip >= USER_SPACE_END {
            return None;
        }
        Some((ip, word(layout.sp)?, word(layout.bp)?))
    }
}

/// `struct pt_regs` on x86-64, in 8-byte words.
const PT_REGS_WORDS: usize = 21;
