//! The config loader on any bytes as the YAML file (and as one variable's
//! value): an error is fine, a panic is not.
#![no_main]

use std::io::Write as _;

use hearth::config::{ConfigSources, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let _ = load(&ConfigSources {
        file: Some(file.path().to_owned()),
        ..Default::default()
    });
    if let Ok(text) = std::str::from_utf8(data) {
        for key in ["HEARTH_QUEUE__MAX_BYTES", "HEARTH_EXPORT_INTERVAL", "HEARTH_EVENTS"] {
            let _ = load(&ConfigSources {
                env: vec![(key.to_owned(), text.to_owned())],
                ..Default::default()
            });
        }
    }
});
