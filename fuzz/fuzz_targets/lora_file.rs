//! LoRA/LyCORIS files: safetensors bounds, key parsing and grouping, shape checks. Must hold: no
//! panic; an error or a parsed file.
#![no_main]
#[path = "common.rs"]
mod common;

use kairos_models::lora::LoraFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("lora.safetensors", data);
    if let Ok(file) = LoraFile::open(&path) {
        let _ = file.looks_like_lcm_lora();
    }
});
