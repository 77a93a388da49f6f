//! The `.ckpt`/`.pt` zip-pickle reader (data only) with the zip-entry bounds, then layout
//! detection. Must hold: no panic, no allocation past the declared-vs-stored bounds.
#![no_main]
#[path = "common.rs"]
mod common;

use kairos_models::loading::{load, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::count_only_uncaught_panics();
    let path = common::as_file("model.ckpt", data);
    let _ = load(&path, &LoadOptions::default());
});
