//! The table-driven user-stack unwinder, one walker for every program.
//! A program sets the walk's registers in `UNWIND_STATE` and tail-calls an
//! unwinder of its own program type (a tail call cannot change it):
//! `cpu_unwind` here for CPU samples, the event unwinders in `events.rs`
//! for socket and off-CPU events. Each walks `UNWIND_FRAMES_PER_CALL`
//! frames per invocation and tail-calls itself until the stack ends or
//! `MAX_STACK_DEPTH` user frames are written; then it writes the record to
//! its ring.
//!
//! Each frame: find the mapping holding the address in the process's
//! `UNWIND_PROCESSES` entry, the row covering it in its shard of
//! `UNWIND_ROW_SHARDS`, and
//! apply the row's rule (CFA from the stack or frame pointer, the saved
//! frame pointer, PLT stubs, signal frames). Where no table covers an
//! address the frame pointer is followed instead.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE},
    btf_maps,
    helpers::bpf_probe_read_user,
    macros::{btf_map, map, perf_event},
    maps::{HashMap, PerCpuArray, ProgramArray},
    programs::PerfEventContext,
};
use hearth_common::{
    Counter, MAX_STACK_DEPTH, SAMPLE_NEEDS_TABLES, SampleHeader,
    unwind::{
        MAX_UNWIND_MAPPINGS, ProcessUnwind, UNWIND_FRAMES_PER_CALL, UNWIND_MAX_TAIL_CALLS,
        UNWIND_SHARD_STRIDE_LOG2, UnwindKind, UnwindMapping, UnwindOutcome, UnwindRow, UnwindState,
        WALK_CPU, WALK_SLOTS,
    },
};

use crate::cpu::{SCRATCH, count, submit};

/// One shard of the row store: rows of whole tables, one after another,
/// written by the agent through a memory mapping. The agent makes the
/// shards (`unwind.shard_rows` rows each) as tables need them;
/// `BPF_F_INNER_MAP` lets their size differ from this template's.
type RowShard = btf_maps::Array<UnwindRow, 1, { (BPF_F_MMAPABLE | BPF_F_INNER_MAP) as usize }>;

/// The row store: shard `n` holds rows `n << UNWIND_SHARD_STRIDE_LOG2`
/// onwards. Slots past the shards made so far are empty; how many there
/// can be is set by the agent (`unwind.max_rows`).
#[btf_map]
pub(crate) static UNWIND_ROW_SHARDS: btf_maps::ArrayOfMaps<RowShard, 1> =
    btf_maps::ArrayOfMaps::new();

/// Processes the agent loaded tables for, by tgid; size set by the agent
/// (`unwind.max_processes`). Preallocated: kernels before 6.1 refuse
/// perf_event programs a hash map that allocates as entries are added.
#[map]
pub(crate) static UNWIND_PROCESSES: HashMap<u32, ProcessUnwind> = HashMap::with_max_entries(1, 0);

#[map]
static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(WALK_SLOTS, 0);

/// Slot 0: `cpu_unwind`, set by the agent.
#[map]
pub(crate) static UNWIND_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Binary-search steps: enough for `MAX_UNWIND_MAPPINGS` mappings.
const MAPPING_SEARCH_STEPS: usize = 7;
/// Binary-search steps: enough for a table filling a whole shard stride.
const ROW_SEARCH_STEPS: usize = UNWIND_SHARD_STRIDE_LOG2 as usize + 1;

/// `struct ucontext` on x86-64: the signal frame's saved registers
/// (`uc_mcontext`, a `struct sigcontext`) start 40 bytes in.
const SIGCONTEXT_BP: u64 = 40 + 10 * 8;
const SIGCONTEXT_SP: u64 = 40 + 15 * 8;
const SIGCONTEXT_IP: u64 = 40 + 16 * 8;

/// The process's entry, if it describes this process image.
#[inline(always)]
pub(crate) fn process_tables(
    tgid: u32,
    start_ns: u64,
    exec_id: u32,
) -> Option<&'static ProcessUnwind> {
    // SAFETY: the entry is only read; the agent replaces whole entries.
    let entry = unsafe { UNWIND_PROCESSES.get(tgid) }?;
    (entry.start_ns == start_ns && entry.exec_id == exec_id).then_some(entry)
}

/// Starts a table walk from the user registers into walk-state slot
/// `walker`, for the record in scratch slot `record_slot`, by tail-calling
/// slot 0 of `programs` (an unwinder of the caller's program type).
/// Returns only if the tail call failed: the caller falls back to the
/// frame-pointer walk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_walk<C: EbpfContext>(
    ctx: &C,
    programs: &ProgramArray,
    walker: u32,
    record_slot: u32,
    ip: u64,
    sp: u64,
    bp: u64,
    kernel_frames: u32,
) {
    let Some(state) = UNWIND_STATE.get_ptr_mut(walker) else {
        return;
    };
    // SAFETY: this CPU's slot of this walker; nothing else runs in its
    // context on this CPU meanwhile.
    unsafe {
        *state = UnwindState {
            ip,
            sp,
            bp,
            frames: kernel_frames,
            tail_calls: 0,
            record_slot,
            _pad: 0,
        };
        programs.tail_call(ctx, 0);
    }
    count(Counter::UnwindTailCall);
}

/// This CPU's walk state of `walker`.
#[inline(always)]
pub(crate) fn walk_state(walker: u32) -> Option<&'static mut UnwindState> {
    // SAFETY: per-CPU, per-walker slot: see `start_walk`.
    UNWIND_STATE
        .get_ptr_mut(walker)
        .map(|state| unsafe { &mut *state })
}

#[perf_event]
pub fn cpu_unwind(ctx: PerfEventContext) -> u32 {
    let (Some(state), Some(sample)) = (walk_state(WALK_CPU), SCRATCH.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: this CPU's scratch sample, set up by `cpu_sample` just before
    // the tail call.
    unsafe {
        if walk(
            &ctx,
            &UNWIND_PROGRAMS,
            state,
            &mut (*sample).header,
            &mut (*sample).frames,
        ) {
            let kernel = (*sample).header.kernel_frames as u32;
            submit(sample, kernel as usize, (state.frames - kernel) as usize);
        }
    }
    0
}

/// Walks the next frames of the stack in `state` into `frames` (after
/// the header's kernel frames), then tail-calls slot 0 of `programs` (this
/// program) to go on. Returns once the walk has ended, true, with
/// `state.frames` frames in all and the outcome in `header.unwind`,
/// counted.
#[inline(always)]
pub(crate) fn walk<C: EbpfContext>(
    ctx: &C,
    programs: &ProgramArray,
    state: &mut UnwindState,
    header: &mut SampleHeader,
    frames: &mut [u64; 2 * MAX_STACK_DEPTH],
) -> bool {
    // Not checked against MAX_STACK_DEPTH here: the compiler would then
    // drop the index mask below, which 5.10's verifier needs to see.
    let kernel = header.kernel_frames as u32;
    let tables = process_tables(header.tgid, header.process_start_ns, header.exec_id);
    let mut outcome = None;
    for _ in 0..UNWIND_FRAMES_PER_CALL {
        if state.frames >= kernel + MAX_STACK_DEPTH as u32 {
            outcome = Some(UnwindOutcome::DepthLimit);
            break;
        }
        let first = state.frames == kernel;
        frames[(state.frames as usize) & (2 * MAX_STACK_DEPTH - 1)] = state.ip;
        state.frames += 1;
        if let Err(stop) = step(state, tables, first, &mut header.flags) {
            outcome = Some(stop);
            break;
        }
    }
    // A failed tail call cuts the stack short like the depth limit,
    // but is counted once, as itself.
    let mut tail_call_failed = false;
    let outcome = match outcome {
        Some(outcome) => outcome,
        None if state.tail_calls < UNWIND_MAX_TAIL_CALLS => {
            state.tail_calls += 1;
            // SAFETY: a tail call into this same program.
            unsafe { programs.tail_call(ctx, 0) };
            count(Counter::UnwindTailCall);
            tail_call_failed = true;
            UnwindOutcome::DepthLimit
        }
        None => UnwindOutcome::DepthLimit,
    };
    count(Counter::UnwindSamples);
    let stop = match outcome {
        _ if tail_call_failed => None,
        UnwindOutcome::NoTable => Some(Counter::UnwindNoTable),
        UnwindOutcome::BadCfa => Some(Counter::UnwindBadCfa),
        UnwindOutcome::ReadError => Some(Counter::UnwindReadError),
        UnwindOutcome::DepthLimit => Some(Counter::UnwindDepthLimit),
        UnwindOutcome::Unsupported => Some(Counter::UnwindUnsupported),
        UnwindOutcome::Complete | UnwindOutcome::FramePointers => None,
    };
    if let Some(stop) = stop {
        count(stop);
    }
    header.unwind = outcome as u8;
    true
}

/// Moves `state` from a frame to its caller. `first`: the innermost frame,
/// whose address is exact (the others are return addresses, looked up one
/// byte back so a call at a function's very end stays in that function).
#[inline(always)]
fn step(
    state: &mut UnwindState,
    tables: Option<&ProcessUnwind>,
    first: bool,
    flags: &mut u8,
) -> Result<(), UnwindOutcome> {
    let pc = if first {
        state.ip
    } else {
        state.ip.wrapping_sub(1)
    };
    let row = match tables {
        Some(tables) => match find_mapping(tables, pc) {
            Some(mapping) => find_row(mapping, pc.wrapping_sub(mapping.bias)),
            None => {
                if (tables.count as usize) < MAX_UNWIND_MAPPINGS {
                    *flags |= SAMPLE_NEEDS_TABLES; // mapped since the agent looked
                }
                None
            }
        },
        None => None,
    };
    let Some(row) = row else {
        return frame_pointer_step(state);
    };
    let sp = state.sp;
    let cfa = match row.kind {
        k if k == UnwindKind::SpOffset as u8 => sp.wrapping_add(row.cfa_offset as u64),
        k if k == UnwindKind::FpOffset as u8 => state.bp.wrapping_add(row.cfa_offset as u64),
        k if k == UnwindKind::Plt as u8 => {
            let pushed = (state.ip & 15) >= row.fp_offset as u64;
            sp.wrapping_add(row.cfa_offset as u64 + if pushed { 8 } else { 0 })
        }
        k if k == UnwindKind::Signal as u8 => return signal_step(state),
        k if k == UnwindKind::End as u8 => return Err(UnwindOutcome::Complete),
        k if k == UnwindKind::None as u8 => return frame_pointer_step(state),
        _ => return Err(UnwindOutcome::Unsupported),
    };
    if cfa <= sp {
        return Err(UnwindOutcome::BadCfa);
    }
    let ip = read_user(cfa - 8)?;
    if row.fp_offset != 0 && row.kind != UnwindKind::Plt as u8 {
        state.bp = read_user(cfa.wrapping_add(row.fp_offset as i64 as u64))?;
    }
    state.sp = cfa;
    state.ip = ip;
    if ip == 0 {
        return Err(UnwindOutcome::Complete);
    }
    Ok(())
}

/// No table covers the address: follow the frame pointer.
#[inline(always)]
fn frame_pointer_step(state: &mut UnwindState) -> Result<(), UnwindOutcome> {
    let bp = state.bp;
    if bp == 0 || bp < state.sp {
        return Err(UnwindOutcome::NoTable);
    }
    let ip = read_user(bp + 8).map_err(|_| UnwindOutcome::NoTable)?;
    state.bp = read_user(bp).map_err(|_| UnwindOutcome::NoTable)?;
    state.sp = bp + 16;
    state.ip = ip;
    if ip == 0 {
        return Err(UnwindOutcome::Complete);
    }
    Ok(())
}

/// A signal trampoline: the interrupted registers are in the `ucontext` at
/// the stack pointer.
#[inline(always)]
fn signal_step(state: &mut UnwindState) -> Result<(), UnwindOutcome> {
    let context = state.sp;
    state.ip = read_user(context + SIGCONTEXT_IP)?;
    state.bp = read_user(context + SIGCONTEXT_BP)?;
    state.sp = read_user(context + SIGCONTEXT_SP)?;
    Ok(())
}

#[inline(always)]
fn read_user(address: u64) -> Result<u64, UnwindOutcome> {
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    unsafe { bpf_probe_read_user(address as *const u64) }.map_err(|_| UnwindOutcome::ReadError)
}

/// The mapping holding `pc`, by binary search over the sorted mappings.
#[inline(always)]
fn find_mapping(tables: &ProcessUnwind, pc: u64) -> Option<&UnwindMapping> {
    let (mut low, mut high) = (0u32, tables.count.min(MAX_UNWIND_MAPPINGS as u32));
    for _ in 0..MAPPING_SEARCH_STEPS {
        if low >= high {
            return None;
        }
        let middle = (low + high) / 2;
        let mapping = &tables.mappings[middle as usize & (MAX_UNWIND_MAPPINGS - 1)];
        if pc < mapping.start {
            high = middle;
        } else if pc >= mapping.end {
            low = middle + 1;
        } else {
            return Some(mapping);
        }
    }
    None
}

/// The last row of the mapping's table at or before `pc` (an address in
/// the object's own space), by binary search in the table's shard.
#[inline(always)]
fn find_row(mapping: &UnwindMapping, pc: u64) -> Option<UnwindRow> {
    let pc = u32::try_from(pc).ok()?;
    let shard = UNWIND_ROW_SHARDS.get(mapping.first_row >> UNWIND_SHARD_STRIDE_LOG2)?;
    let first = mapping.first_row & ((1 << UNWIND_SHARD_STRIDE_LOG2) - 1);
    let (mut low, mut high) = (0u32, mapping.rows);
    for _ in 0..ROW_SEARCH_STEPS {
        if low >= high {
            break;
        }
        let middle = low + (high - low) / 2;
        let row = shard.get(first.wrapping_add(middle))?;
        if row.pc <= pc {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    if low == 0 {
        return None;
    }
    shard.get(first.wrapping_add(low - 1)).copied()
}
