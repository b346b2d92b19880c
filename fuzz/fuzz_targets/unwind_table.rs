//! The unwind-table compiler (ELF + `.eh_frame` in, rows out) on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hearth_unwind::compile_elf(data, 100_000);
});
