//! The toy Gaussian-mixture file. Must hold: no panic; a parsed mixture is usable.
#![no_main]

use kairos_toy::MixtureFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = MixtureFile::parse(text);
});
