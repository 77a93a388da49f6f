//! The CLIP BPE tokenizer on arbitrary UTF-8. Must hold: no panic; `encode` returns exactly
//! `max_length` ids, all inside the vocabulary.
#![no_main]

use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static CLIPTokenizer {
    static T: OnceLock<CLIPTokenizer> = OnceLock::new();
    T.get_or_init(|| CLIPTokenizer::new(PadToken::Exclamation).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = tokenizer().encode(&text, 77) {
        assert_eq!(ids.len(), 77);
        assert!(ids.iter().all(|&id| id < 49408), "{ids:?}");
    }
    let _ = tokenizer().encode_raw(&text);
});
