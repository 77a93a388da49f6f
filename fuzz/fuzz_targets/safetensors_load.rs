//! The safetensors header and tensor table as kairos reads them, then checkpoint layout detection,
//! key mapping and config derivation (`loading::load` of a single file). Must hold: no panic; a
//! header the bounds accept parses, and a load is an error or a valid set of components.
#![no_main]
#[path = "common.rs"]
mod common;

use kairos_models::loading::{bounds, load, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("model.safetensors", data);
    let checked = bounds::check_safetensors_bytes(&path, data);
    if let Ok(weights) = load(&path, &LoadOptions::default()) {
        assert!(checked.is_ok(), "loaded a file the bounds refuse");
        for c in [&weights.unet, &weights.vae, &weights.text_encoder] {
            let _ = c.keys().count();
        }
    }
});
