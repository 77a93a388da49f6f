//! Every input the fuzzers (fuzz/, issue 16) found crashing a kairos-server parser, replayed: each
//! must now be an error or a valid result, never a panic. Files live in
//! `tests/fixtures/fuzz_regressions/TARGET/`, named as libFuzzer wrote them; add new ones there.

use std::path::{Path, PathBuf};

use base64::Engine;
use kairos_server::a1111::{decode_image, parse_infotext};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz_regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn init_image_crashers_are_errors() {
    let files = inputs("init_image");
    assert!(!files.is_empty());
    for input in files {
        let text = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&input).unwrap());
        let err = decode_image("init_images", &text).err();
        let err = err.unwrap_or_else(|| panic!("{} decoded", input.display()));
        assert!(format!("{err:?}").contains("init_images"), "{err:?}");
    }
}

#[test]
fn png_infotext_crashers_are_errors_or_parses() {
    for input in inputs("png_infotext") {
        let bytes = std::fs::read(input).unwrap();
        let _ = kairos_server::png_text_chunks(&bytes);
        let _ = parse_infotext(&String::from_utf8_lossy(&bytes));
    }
}
