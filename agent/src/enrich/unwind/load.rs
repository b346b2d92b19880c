//! Reading mapped object files for the unwinder: their identity, their
//! compiled table, and where a mapping puts their addresses.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSegment as _};

use super::UnwindError;

/// One object file, however many paths or processes map it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ObjectKey {
    pub device: u64,
    pub inode: u64,
}

/// `address - bias`: the ELF file `data`'s own address for an address in the
/// executable mapping of file offset `offset` at `start`; None when no
/// executable segment holds that offset (or the file cannot be read).
/// (The page at `offset` may also hold the end of the read-only segment
/// before it, as lld lays files out.)
pub fn load_bias(data: &[u8], start: u64, offset: u64) -> Option<u64> {
    let file = object::File::parse(data).ok()?;
    let executable = |segment: &object::Segment| matches!(segment.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
    file.segments().filter(executable).find_map(|segment| {
        let (file_offset, size) = segment.file_range();
        let page_start = file_offset & !0xfff;
        (page_start <= offset && offset < file_offset + size.max(1)).then(|| {
            start
                .wrapping_sub(offset)
                .wrapping_add(file_offset)
                .wrapping_sub(segment.address())
        })
    })
}

/// The file at `path`, mapped read-only.
pub fn map(path: &Path) -> Result<memmap2::Mmap, UnwindError> {
    let file = File::open(path).map_err(UnwindError::Read)?;
    // SAFETY: read-only. Its owner may truncate the file underneath (a
    // mapped library can be written, unlike a running executable); the
    // reads run under `crate::fault::watch`, which turns that fault into
    // zeros and tells the caller to discard what it read.
    crate::fault::install();
    unsafe { memmap2::Mmap::map(&file) }.map_err(UnwindError::Read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::unwind::compile_elf;

    #[test]
    fn own_code_maps_back_to_its_elf_address() {
        let exe = std::env::current_exe().unwrap();
        let function = own_code_maps_back_to_its_elf_address as *const () as u64;
        let maps = procfs::process::Process::myself().unwrap().maps().unwrap();
        let map = maps
            .iter()
            .find(|m| m.address.0 <= function && function < m.address.1)
            .unwrap();
        let mapped = super::map(&exe).unwrap();
        let bias = load_bias(&mapped, map.address.0, map.offset).unwrap();
        let elf_address = function - bias;
        // The function's symbol in the ELF file has that address.
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        use object::ObjectSymbol as _;
        let symbol = file
            .symbols()
            .find(|s| s.address() == elf_address)
            .expect("no symbol at the computed address");
        assert!(
            symbol.name().unwrap().contains("own_code_maps_back"),
            "{:?}",
            symbol.name()
        );
        let table = compile_elf(&mapped, 10_000_000).unwrap();
        assert!(table.lookup(elf_address).is_some());
        assert!(matches!(
            super::map(Path::new("/nonexistent/lib.so")),
            Err(UnwindError::Read(_))
        ));
    }
}
