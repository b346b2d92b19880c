//! The spool reader on any bytes as a file a previous run left: it must
//! recover a valid payload, or set the file aside — never panic or send it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0000000000000001-000000000001.bin"), data).unwrap();
    let mut spool = hearth::deliver::retention::Spool::open(dir.path(), 1 << 20).unwrap();
    let recovered = spool.take_recovered();
    assert_eq!(recovered.len() as u64 + spool.corrupt_found(), 1);
});
