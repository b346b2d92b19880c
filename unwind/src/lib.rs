//! Unwind tables: an object's `.eh_frame` compiled into compact rows (see
//! [`hearth_common::unwind`]) that say, for each address range, how to
//! find the caller's frame on x86-64: the CFA from the stack or frame
//! pointer, where the frame pointer was saved, and the special cases (PLT
//! stubs, signal trampolines, the outermost frame). Rows are sorted by
//! address; adjacent rows with the same rule are merged.
//!
//! Pure: bytes in, rows out (gimli and object do the reading). A malformed
//! or oversized `.eh_frame` is an error for that object alone; the agent
//! decides where the bytes come from and where the rows go.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, NativeEndian, Register, RegisterRule, UnwindContext,
    UnwindSection as _, X86_64,
};
use hearth_common::unwind::{UnwindKind, UnwindRow};
use object::{Object as _, ObjectSection as _};

/// Why an object's `.eh_frame` gave no table.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("only x86-64 objects are supported")]
    Architecture,
    #[error("the object has no .eh_frame section")]
    NoEhFrame,
    #[error("malformed .eh_frame: {0}")]
    Malformed(#[from] gimli::Error),
    #[error("the table would exceed {limit} rows; raise unwind.max_rows_per_object to take it")]
    TooLarge { limit: usize },
    #[error("code at {0:#x} lies beyond the 4 GiB a table row can address")]
    AddressTooHigh(u64),
}

/// A compiled table: rows sorted by `pc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    pub rows: Vec<UnwindRow>,
}

impl UnwindTable {
    /// The row covering `pc`, if any.
    pub fn lookup(&self, pc: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(pc).ok()?;
        let index = self.rows.partition_point(|row| row.pc <= pc);
        self.rows[..index].last()
    }

    /// Bytes the rows take.
    pub fn size_bytes(&self) -> usize {
        self.rows.len() * size_of::<UnwindRow>()
    }
}

/// Compiles the `.eh_frame` of the ELF object `data`, with at most
/// `max_rows` rows.
pub fn compile_elf(data: &[u8], max_rows: usize) -> Result<UnwindTable, CompileError> {
    let file = object::File::parse(data)?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(CompileError::Architecture);
    }
    let section = file
        .section_by_name(".eh_frame")
        .ok_or(CompileError::NoEhFrame)?;
    let address_of = |name: &str| file.section_by_name(name).map(|s| s.address());
    let sections = SectionAddresses {
        eh_frame: section.address(),
        text: address_of(".text"),
        got: address_of(".got"),
    };
    compile(section.data()?, &sections, max_rows)
}

/// Where the sections pointer encodings may be relative to are loaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct SectionAddresses {
    pub eh_frame: u64,
    pub text: Option<u64>,
    pub got: Option<u64>,
}

/// Compiles raw `.eh_frame` bytes.
pub fn compile(
    eh_frame: &[u8],
    sections: &SectionAddresses,
    max_rows: usize,
) -> Result<UnwindTable, CompileError> {
    let section = EhFrame::new(eh_frame, NativeEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(sections.eh_frame);
    if let Some(text) = sections.text {
        bases = bases.set_text(text);
    }
    if let Some(got) = sections.got {
        bases = bases.set_got(got);
    }
    let mut context = UnwindContext::new();
    let mut rows: Vec<UnwindRow> = Vec::new();
    let mut entries = section.entries(&bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset))?;
        let signal = fde.is_signal_trampoline();
        let mut table = fde.rows(&section, &bases, &mut context)?;
        while let Some(row) = table.next_row()? {
            let compiled = if signal {
                UnwindRow::new(0, UnwindKind::Signal, 0, 0)
            } else {
                compile_row(
                    row.cfa(),
                    row.register(X86_64::RBP),
                    row.register(X86_64::RA),
                    &section,
                )
            };
            push(&mut rows, at(compiled, row.start_address())?, max_rows)?;
        }
        // Past the function's end there is no information until another
        // function's rows begin.
        push(
            &mut rows,
            at(UnwindRow::new(0, UnwindKind::None, 0, 0), fde.end_address())?,
            max_rows,
        )?;
    }
    Ok(UnwindTable { rows: merge(rows) })
}

/// `row` placed at `pc`.
fn at(mut row: UnwindRow, pc: u64) -> Result<UnwindRow, CompileError> {
    row.pc = u32::try_from(pc).map_err(|_| CompileError::AddressTooHigh(pc))?;
    Ok(row)
}

fn push(rows: &mut Vec<UnwindRow>, row: UnwindRow, max_rows: usize) -> Result<(), CompileError> {
    if rows.len() >= max_rows {
        return Err(CompileError::TooLarge { limit: max_rows });
    }
    rows.push(row);
    Ok(())
}

/// Sorts by address, lets a function's first row win over the previous
/// function's end marker at the same address, and drops rows that repeat
/// the rule before them.
fn merge(mut rows: Vec<UnwindRow>) -> Vec<UnwindRow> {
    // Stable: at equal addresses, end markers (kind None) go first, so the
    // rule that follows them is the one kept.
    rows.sort_by_key(|row| (row.pc, row.kind != UnwindKind::None as u8));
    let mut merged: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match merged.last_mut() {
            Some(last) if last.pc == row.pc => *last = row,
            Some(last) if last.same_rule(&row) => {}
            _ => merged.push(row),
        }
    }
    merged
}

/// The standard x86-64 PLT rule: CFA = rsp + 8 + ((rip & 15) >= N) << 3,
/// written `breg7 8; breg16 0; lit15; and; litN; ge; lit3; shl; plus`.
fn plt_threshold(expression: &[u8]) -> Option<u8> {
    const LIT0: u8 = 0x30;
    match expression {
        [0x77, 8, 0x80, 0, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (LIT0..LIT0 + 16).contains(lit) =>
        {
            Some(lit - LIT0)
        }
        _ => None,
    }
}

fn compile_row(
    cfa: &CfaRule<usize>,
    fp: Option<RegisterRule<usize>>,
    ra: Option<RegisterRule<usize>>,
    section: &EhFrame<gimli::EndianSlice<'_, NativeEndian>>,
) -> UnwindRow {
    let unsupported = UnwindRow::new(0, UnwindKind::Unsupported, 0, 0);
    // An undefined return address marks the outermost frame.
    if matches!(ra, Some(RegisterRule::Undefined)) {
        return UnwindRow::new(0, UnwindKind::End, 0, 0);
    }
    // x86-64 always saves the return address just below the CFA.
    if !matches!(ra, None | Some(RegisterRule::Offset(-8))) {
        return unsupported;
    }
    let fp_offset = match fp {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(offset)) => match i8::try_from(offset) {
            Ok(offset) if offset != 0 => offset,
            _ => return unsupported,
        },
        Some(_) => return unsupported,
    };
    match cfa {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i16::try_from(*offset) else {
                return unsupported;
            };
            let kind = match *register {
                Register(7) => UnwindKind::SpOffset, // rsp
                Register(6) => UnwindKind::FpOffset, // rbp
                _ => return unsupported,
            };
            UnwindRow::new(0, kind, offset, fp_offset)
        }
        CfaRule::Expression(expression) => {
            let bytes = expression
                .get(section)
                .ok()
                .map(|e| e.0.slice().to_vec())
                .unwrap_or_default();
            match plt_threshold(&bytes) {
                Some(threshold) => UnwindRow::new(0, UnwindKind::Plt, 8, threshold as i8),
                None => unsupported,
            }
        }
    }
}

#[cfg(test)]
mod tests;
