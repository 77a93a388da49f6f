//! Init images as a request carries them (base64 PNG/JPEG/WebP, `init_images`): decoded under the
//! server's side and allocation limits. Must hold: no panic, no allocation past the limit, and a
//! decoded image is non-empty with width·height·3 bytes.
#![no_main]
#[path = "common.rs"]
mod common;

use base64::Engine;
use kairos_server::a1111::decode_image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::count_only_uncaught_panics();
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(image) = decode_image("init_images", &text) {
        assert_eq!(image.data.len(), image.width * image.height * 3);
    }
});
