//! The A1111 prompt: `<lora:…>` extraction, attention weights, nesting, BREAK, then tokenizing
//! into 77-token chunks. Must hold: no panic; every chunk is 77 tokens with 77 weights, all finite
//! unless the prompt wrote a non-finite weight.
#![no_main]

use kairos_models::lora::extract_prompt_loras;
use kairos_models::prompt::{parse_prompt_attention, tokenize_prompt, PromptOptions};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static CLIPTokenizer {
    static T: OnceLock<CLIPTokenizer> = OnceLock::new();
    T.get_or_init(|| CLIPTokenizer::new(PadToken::EndOfText).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let text = match extract_prompt_loras(text) {
        Ok((rest, _loras)) => rest,
        Err(_) => text.to_string(),
    };
    let _ = parse_prompt_attention(&text);
    if let Ok(tokens) = tokenize_prompt(tokenizer(), &text, &PromptOptions::default()) {
        let _ = format!("{tokens:?}");
    }
});
