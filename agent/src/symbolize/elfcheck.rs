//! A look at an object file before blazesym parses it: what blazesym would
//! allocate on a file's word, checked against a limit first.
//!
//! blazesym inflates a compressed section (`SHF_COMPRESSED`, zlib) into a
//! buffer sized by the section's own header, then keeps reading while the
//! stream lasts: a header claiming 128 TiB aborts the agent, and a small
//! zlib bomb takes it to gigabytes. So every compressed section of an
//! object that a user other than root could have written is inflated here
//! first, into nothing, stopping at `max_section_bytes`. Sections and
//! headers are read with bounded `pread`s, never mapped. An object whose
//! DWARF fails is symbolized from its ELF symbols alone; one whose symbol
//! tables fail is not parsed at all. Separate debug files that blazesym
//! would find beside the object (`.gnu_debuglink`, `.gnu_debugaltlink`)
//! get the same check.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

/// Sections an object may have for this check to read them all.
pub const MAX_SECTIONS: u64 = 1 << 16;
/// Largest section-name table read.
const MAX_SECTION_NAMES: u64 = 1 << 20;
/// Largest debug-link section read.
const MAX_LINK_SECTION: u64 = 4096;

const SHF_COMPRESSED: u64 = 0x800;
const ELFCOMPRESS_ZLIB: u32 = 1;
const SHDR_SIZE: u64 = 64;

/// What blazesym may read of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything, as configured.
    Full,
    /// ELF symbols only: its DWARF (or a debug file it links) is hostile.
    SymbolsOnly(String),
    /// Nothing: its symbol tables are hostile.
    Refused(String),
}

struct Section {
    name: String,
    offset: u64,
    size: u64,
    flags: u64,
}

/// Whether only root could have written `file` (owned by root, not
/// writable by group or others): its contents are as trusted as the node.
fn written_by_root_only(file: &File) -> bool {
    file.metadata()
        .is_ok_and(|meta| meta.uid() == 0 && meta.mode() & 0o022 == 0)
}

/// Checks the object at `path` (and the debug files it links beside it).
pub fn check(path: &Path, debug_info: bool, max_section_bytes: u64) -> Verdict {
    let Ok(file) = File::open(path) else {
        return Verdict::Full; // blazesym's own error names it
    };
    if written_by_root_only(&file) {
        return Verdict::Full;
    }
    check_untrusted(&file, path, debug_info, max_section_bytes)
}

/// [`check`] of an open file, whoever owns it (the fuzz target's entry).
pub fn check_untrusted(
    file: &File,
    path: &Path,
    debug_info: bool,
    max_section_bytes: u64,
) -> Verdict {
    match check_file(file, max_section_bytes) {
        Err(why) => return Verdict::Refused(why),
        Ok(Some(why)) if debug_info => return Verdict::SymbolsOnly(why),
        Ok(_) => {}
    }
    if debug_info {
        for linked in linked_debug_files(file, path) {
            let Ok(linked_file) = File::open(&linked) else {
                continue;
            };
            if written_by_root_only(&linked_file) {
                continue;
            }
            match check_file(&linked_file, max_section_bytes) {
                Err(why) | Ok(Some(why)) => {
                    return Verdict::SymbolsOnly(format!(
                        "its debug file {}: {why}",
                        linked.display()
                    ));
                }
                Ok(None) => {}
            }
        }
    }
    Verdict::Full
}

/// `Err`: a section blazesym reads for symbols is hostile; `Ok(Some)`: only
/// DWARF sections are; `Ok(None)`: nothing found.
fn check_file(file: &File, max: u64) -> Result<Option<String>, String> {
    let sections = match sections(file) {
        Ok(Some(sections)) => sections,
        Ok(None) => return Ok(None), // not ELF64: blazesym refuses it itself
        Err(why) => return Err(why),
    };
    let mut dwarf_problem = None;
    for section in sections.iter().filter(|s| s.flags & SHF_COMPRESSED != 0) {
        if let Err(why) = check_compressed(file, section, max) {
            let why = format!("section {}: {why}", section.name);
            if section.name.starts_with(".debug") || section.name.starts_with(".zdebug") {
                dwarf_problem.get_or_insert(why);
            } else {
                return Err(why);
            }
        }
    }
    Ok(dwarf_problem)
}

/// The section headers of an ELF64 little-endian file, `None` for files
/// that are not ELF at all (blazesym refuses those itself); an error for
/// ELF files of another class or byte order.
fn sections(file: &File) -> Result<Option<Vec<Section>>, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut ehdr = [0u8; 64];
    if file.read_exact_at(&mut ehdr, 0).is_err() || &ehdr[..4] != b"\x7fELF" {
        return Ok(None);
    }
    // blazesym reads any file with the magic as 64-bit little-endian ELF
    // (it does not look at the class and data bytes) or as 32-bit: what
    // this check cannot read the same way is refused, not waved through.
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(format!(
            "not a 64-bit little-endian ELF file (class {}, data {})",
            ehdr[4], ehdr[5]
        ));
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u64;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = u16_at(&ehdr, 0x3a);
    let mut shnum = u16_at(&ehdr, 0x3c);
    let mut shstrndx = u16_at(&ehdr, 0x3e);
    if shoff == 0 {
        return Ok(Some(Vec::new()));
    }
    if shentsize != SHDR_SIZE {
        return Err(format!(
            "section headers of {shentsize} bytes, not {SHDR_SIZE}"
        ));
    }
    let read_shdr = |index: u64| -> Result<[u8; 64], String> {
        let at = index
            .checked_mul(SHDR_SIZE)
            .and_then(|o| o.checked_add(shoff))
            .filter(|o| o.saturating_add(SHDR_SIZE) <= len)
            .ok_or_else(|| format!("section header {index} lies outside the file"))?;
        let mut shdr = [0u8; 64];
        file.read_exact_at(&mut shdr, at)
            .map_err(|e| e.to_string())?;
        Ok(shdr)
    };
    if shnum == 0 || shstrndx == 0xffff {
        let first = read_shdr(0)?;
        if shnum == 0 {
            shnum = u64_at(&first, 0x20);
        }
        if shstrndx == 0xffff {
            shstrndx = u32_at(&first, 0x28);
        }
    }
    if shnum > MAX_SECTIONS {
        return Err(format!("{shnum} sections, more than {MAX_SECTIONS}"));
    }
    let mut raw = Vec::with_capacity(shnum as usize);
    for index in 0..shnum {
        let shdr = read_shdr(index)?;
        raw.push((
            u32_at(&shdr, 0),
            u64_at(&shdr, 0x08),
            u64_at(&shdr, 0x18),
            u64_at(&shdr, 0x20),
            u32_at(&shdr, 0x04),
        ));
    }
    let names = match raw.get(shstrndx as usize) {
        Some(&(_, _, offset, size, _)) if size <= MAX_SECTION_NAMES => {
            read_range(file, len, offset, size).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    const SHT_NOBITS: u64 = 8;
    Ok(Some(
        raw.into_iter()
            .map(|(name_at, flags, offset, size, kind)| Section {
                name: names
                    .get(name_at as usize..)
                    .and_then(|rest| rest.split(|&b| b == 0).next())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default(),
                offset,
                size: if kind == SHT_NOBITS { 0 } else { size },
                flags,
            })
            .collect(),
    ))
}

/// `size` bytes at `offset`, if the file holds them.
fn read_range(file: &File, len: u64, offset: u64, size: u64) -> Option<Vec<u8>> {
    if offset.checked_add(size)? > len {
        return None;
    }
    let mut bytes = vec![0; size as usize];
    file.read_exact_at(&mut bytes, offset).ok()?;
    Some(bytes)
}

/// Inflates a compressed section into nothing, at most `max` bytes, and
/// at most what its header claims.
fn check_compressed(file: &File, section: &Section, max: u64) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if section.offset.saturating_add(section.size) > len || section.size < 24 {
        return Err("lies outside the file".into());
    }
    let mut chdr = [0u8; 24];
    file.read_exact_at(&mut chdr, section.offset)
        .map_err(|e| e.to_string())?;
    let kind = u32::from_le_bytes(chdr[0..4].try_into().unwrap());
    let claimed = u64::from_le_bytes(chdr[8..16].try_into().unwrap());
    if claimed > max {
        return Err(format!(
            "claims {claimed} bytes uncompressed, more than symbolize.max_section_bytes ({max})"
        ));
    }
    if kind != ELFCOMPRESS_ZLIB {
        return Ok(()); // blazesym (built with zlib only) refuses it itself
    }
    let stream = PositionedReader {
        file,
        at: section.offset + 24,
        end: section.offset + section.size,
    };
    let mut inflated = flate2::read::ZlibDecoder::new(stream).take(claimed + 1);
    let produced =
        io::copy(&mut inflated, &mut io::sink()).map_err(|e| format!("does not inflate ({e})"))?;
    if produced > claimed {
        return Err(format!(
            "inflates past the {claimed} bytes its header claims"
        ));
    }
    Ok(())
}

/// Reads a file range through `pread`, without moving a shared offset.
struct PositionedReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.at) as usize;
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Debug files beside the object that blazesym would open: the targets of
/// `.gnu_debuglink` (in the object's directory and its `.debug/`) and of
/// `.gnu_debugaltlink` (absolute, or relative to that directory).
fn linked_debug_files(file: &File, path: &Path) -> Vec<PathBuf> {
    let Ok(Some(sections)) = sections(file) else {
        return Vec::new();
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned));
    let mut found = Vec::new();
    for section in &sections {
        let link = matches!(
            section.name.as_str(),
            ".gnu_debuglink" | ".gnu_debugaltlink"
        );
        if !link || section.size > MAX_LINK_SECTION || section.flags & SHF_COMPRESSED != 0 {
            continue;
        }
        let Some(bytes) = read_range(file, len, section.offset, section.size) else {
            continue;
        };
        let name = bytes.split(|&b| b == 0).next().unwrap_or_default();
        let name = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        if name.as_os_str().is_empty() {
            continue;
        }
        if name.is_absolute() {
            found.push(name.to_owned());
        } else if let Some(dir) = &dir {
            found.push(dir.join(name));
            found.push(dir.join(".debug").join(name));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/symbolize_elf")
            .join(name)
    }

    #[test]
    fn small_objects_pass_and_a_wrong_byte_order_byte_is_refused() {
        for seed in ["tiny-static", "tiny-zlib-dwarf"] {
            let file = File::open(corpus(seed)).unwrap();
            assert_eq!(
                check_untrusted(&file, &corpus(seed), true, 1 << 20),
                Verdict::Full,
                "{seed}"
            );
        }
        // Found by the fuzzer: EI_DATA is not little-endian, which blazesym
        // ignores, behind a section claiming 16 TiB.
        let name = "regression-ei-data-not-little-endian";
        let file = File::open(corpus(name)).unwrap();
        let verdict = check_untrusted(&file, &corpus(name), true, 1 << 20);
        assert!(
            matches!(&verdict, Verdict::Refused(why) if why.contains("little-endian")),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_section_claiming_more_than_the_limit_keeps_symbols_only() {
        // tiny-zlib-dwarf's .debug_* sections inflate to a few hundred bytes.
        let path = corpus("tiny-zlib-dwarf");
        let file = File::open(&path).unwrap();
        let verdict = check_untrusted(&file, &path, true, 16);
        assert!(
            matches!(&verdict, Verdict::SymbolsOnly(why) if why.contains(".debug")),
            "{verdict:?}"
        );
        assert_eq!(check_untrusted(&file, &path, false, 16), Verdict::Full);
    }
}
