//! Compiled unwind tables: one row per address range of an object, saying
//! how to find the caller's frame there. The agent compiles them from
//! `.eh_frame`; the kernel's unwinder will read them from maps.

/// How the canonical frame address (CFA: the stack pointer just before the
/// call) is found at an address, and what else holds there.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindKind {
    /// No unwind information from here to the next row (the gap after a
    /// function): fall back to the frame pointer.
    None = 0,
    /// CFA = stack pointer + `cfa_offset`.
    SpOffset = 1,
    /// CFA = frame pointer + `cfa_offset`.
    FpOffset = 2,
    /// A PLT stub: CFA = stack pointer + `cfa_offset`, plus 8 once the
    /// instruction pointer's low four bits reach `fp_offset` (the stub's
    /// push has run).
    Plt = 3,
    /// A signal trampoline: the caller's registers are in the signal frame
    /// on the stack, not found by a CFA rule.
    Signal = 4,
    /// The outermost frame (`_start`, a thread's entry): the walk ends.
    End = 5,
    /// A rule the unwinder does not follow (a DWARF expression, a register
    /// other than the stack or frame pointer): the walk stops here, counted.
    Unsupported = 6,
}

/// One row: from `pc` (an address in the object's own address space, as
/// its ELF headers give it) up to the next row's `pc`. Eight bytes, so a
/// table is about twice the size of the `.eh_frame` it comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_offset: i16,
    /// Where the caller's frame pointer was saved, relative to the CFA; 0
    /// when it was not saved (still in the register). For `Plt`, the
    /// threshold of the instruction pointer's low bits.
    pub fp_offset: i8,
    pub kind: u8,
}
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);

impl UnwindRow {
    pub const fn new(pc: u32, kind: UnwindKind, cfa_offset: i16, fp_offset: i8) -> Self {
        Self {
            pc,
            cfa_offset,
            fp_offset,
            kind: kind as u8,
        }
    }

    /// The same rule as `other`, whatever the address.
    pub fn same_rule(&self, other: &Self) -> bool {
        (self.kind, self.cfa_offset, self.fp_offset)
            == (other.kind, other.cfa_offset, other.fp_offset)
    }
}

/// How user stacks are walked (`unwind.mode`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMode {
    /// The kernel's frame-pointer walk (`bpf_get_stack`) for every process.
    FramePointers = 0,
    /// Tables where the agent has loaded them; the frame-pointer walk for
    /// processes it has not reached yet.
    Auto = 1,
    /// The table walker for every process (frame pointers where no table
    /// covers an address, including in processes without tables yet).
    Dwarf = 2,
}

/// How the user stack of a sample was walked, and why the walk ended
/// (`SampleHeader::unwind`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindOutcome {
    /// The kernel's frame-pointer walk.
    FramePointers = 0,
    /// Tables to the outermost frame (or a zero return address).
    Complete = 1,
    NoTable = 2,
    BadCfa = 3,
    ReadError = 4,
    DepthLimit = 5,
    Unsupported = 6,
}

/// Rows of the kernel's row store are numbered in strides of
/// `1 << UNWIND_SHARD_STRIDE_LOG2`, one stride per shard: row `r` is row
/// `r & (stride - 1)` of shard `r >> UNWIND_SHARD_STRIDE_LOG2`. A shard
/// holds at most one stride of rows, and no table spans two shards.
pub const UNWIND_SHARD_STRIDE_LOG2: u32 = 20;
/// Most shards the row numbering leaves room for.
pub const UNWIND_MAX_SHARDS: u32 = 1 << (32 - UNWIND_SHARD_STRIDE_LOG2);

/// Most executable mappings of one process the kernel unwinder knows;
/// addresses in further mappings are walked with frame pointers.
pub const MAX_UNWIND_MAPPINGS: usize = 64;

/// One executable mapping of a process and the table that covers it:
/// an address `a` in `start..end` is `a - bias` in the object's own
/// address space, looked up in rows `first_row..first_row + rows` of
/// the row store (see [`UNWIND_SHARD_STRIDE_LOG2`]). `rows == 0`: the
/// object has no table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first_row: u32,
    pub rows: u32,
}
const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 32);

/// A process's entry in `UNWIND_PROCESSES` (keyed by tgid): its image's
/// identity, so a reused PID or an `exec` is not walked with stale
/// mappings, and its mappings sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUnwind {
    pub start_ns: u64,
    pub exec_id: u32,
    /// Valid entries of `mappings`.
    pub count: u32,
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}
const _: () = assert!(core::mem::size_of::<ProcessUnwind>() == 16 + 32 * MAX_UNWIND_MAPPINGS);

/// The walk's registers between tail calls, per CPU and per walker
/// ([`WALK_CPU`], [`WALK_TASK_EVENT`], [`WALK_OFF_CPU`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindState {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Frames written so far (kernel and user).
    pub frames: u32,
    /// Tail calls made so far.
    pub tail_calls: u32,
    /// The per-CPU scratch slot holding the record being walked.
    pub record_slot: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UnwindState>() == 40);

/// Slots of the per-CPU walk state, one per context a walk can run in, so
/// that a walk interrupted on its CPU (a CPU sample's NMI during a socket
/// event's walk) is not overwritten: the CPU sampler (perf event, NMI).
pub const WALK_CPU: u32 = 0;
/// Sends, receives and connects (in the calling task).
pub const WALK_TASK_EVENT: u32 = 1;
/// Off-CPU events (the scheduler, interrupts off).
pub const WALK_OFF_CPU: u32 = 2;
pub const WALK_SLOTS: u32 = 3;

/// Frames one program invocation walks before tail-calling the next
/// (more per invocation would exceed what the verifier explores).
pub const UNWIND_FRAMES_PER_CALL: usize = 4;
/// Tail calls of the unwinder by itself: with the first invocation they
/// reach `MAX_STACK_DEPTH` frames, and with `cpu_sample`'s call into it
/// they stay within the kernel's limit of 33 per chain.
pub const UNWIND_MAX_TAIL_CALLS: u32 = (crate::MAX_STACK_DEPTH / UNWIND_FRAMES_PER_CALL) as u32;
const _: () = assert!(
    (UNWIND_MAX_TAIL_CALLS as usize + 1) * UNWIND_FRAMES_PER_CALL >= crate::MAX_STACK_DEPTH
        && UNWIND_MAX_TAIL_CALLS < 33
);
