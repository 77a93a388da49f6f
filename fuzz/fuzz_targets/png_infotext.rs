//! PNG infotext reading (`/sdapi/v1/png-info`): the PNG text chunks (tEXt, zTXt, iTXt), then
//! A1111's `parse_generation_parameters` on the `parameters` text and on the raw input as text.
//! Must hold: no panic; every parsed value is a string.
#![no_main]

use kairos_server::a1111::parse_infotext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = kairos_server::png_text_chunks(data) {
        if let Some(text) = items.get("parameters").and_then(|v| v.as_str()) {
            let _ = parse_infotext(text);
        }
    }
    let map = parse_infotext(&String::from_utf8_lossy(data));
    assert!(map.values().all(|v| v.is_string() || v.is_number() || v.is_boolean() || v.is_null()));
});
