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
