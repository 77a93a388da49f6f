//! CLIP tokenizer ids against transformers' `CLIPTokenizer` (fixture: tools/fixtures/clip.py).
//! Tolerance: exact; token ids are integers.

use kairos_models::tokenizer::{CLIPTokenizer, PadToken, MODEL_MAX_LENGTH};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    raw_ids: Vec<u32>,
    raw_ids_sd2: Vec<u32>,
    ids_sd1: Vec<u32>,
    ids_sd2: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn clip_tokenizer_matches_transformers_sd1() {
    let tokenizer = CLIPTokenizer::new(PadToken::EndOfText).unwrap();
    let cases = fixture().cases;
    assert!(cases.len() >= 30);
    for case in &cases {
        assert_eq!(tokenizer.encode_raw(&case.text).unwrap(), case.raw_ids, "raw ids of {:?}", case.text);
        assert_eq!(tokenizer.encode(&case.text, MODEL_MAX_LENGTH).unwrap(), case.ids_sd1, "ids of {:?}", case.text);
    }
}

#[test]
fn clip_tokenizer_matches_transformers_sd2_pad() {
    let tokenizer = CLIPTokenizer::new(PadToken::Exclamation).unwrap();
    for case in &fixture().cases {
        assert_eq!(tokenizer.encode_raw(&case.text).unwrap(), case.raw_ids_sd2, "raw ids of {:?}", case.text);
        assert_eq!(tokenizer.encode(&case.text, MODEL_MAX_LENGTH).unwrap(), case.ids_sd2, "ids of {:?}", case.text);
    }
}
