//! The symbolizer's front end on any bytes as an object file: the check of
//! its compressed sections, then — when the check lets it through — blazesym
//! symbolizing a few file offsets, as the agent does for a mapped object.
#![no_main]

use std::{fs::File, io::Write as _, os::fd::FromRawFd as _, path::PathBuf};

use hearth::symbolize::elfcheck::{self, Verdict};
use libfuzzer_sys::fuzz_target;

/// Most bytes a compressed section may inflate to here.
const MAX_SECTION_BYTES: u64 = 1 << 20;

fn object_file(data: &[u8]) -> (File, PathBuf) {
    // SAFETY: a static name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"hearth-fuzz-elf".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd is a fresh, owned descriptor.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).unwrap();
    (file, PathBuf::from(format!("/proc/self/fd/{fd}")))
}

fuzz_target!(|data: &[u8]| {
    let (file, path) = object_file(data);
    let verdict = elfcheck::check_untrusted(&file, &path, true, MAX_SECTION_BYTES);
    let debug_syms = match verdict {
        Verdict::Full => true,
        Verdict::SymbolsOnly(_) => false,
        Verdict::Refused(_) => return,
    };
    let symbolizer = hearth::symbolize::new_blaze();
    let mut elf = blazesym::symbolize::source::Elf::new(&path);
    elf.debug_syms = debug_syms;
    let source = blazesym::symbolize::source::Source::Elf(elf);
    let offsets = [0u64, 0x40, 0x1000, 0x1130, data.len() as u64 / 2];
    let _ = symbolizer.symbolize(&source, blazesym::symbolize::Input::FileOffset(&offsets));
});
