//! Every input the fuzzers (fuzz/, issue 16) found crashing a kairos-models parser, replayed:
//! each must now be an error or a valid result, never a panic. Files live in
//! `tests/fixtures/fuzz_regressions/TARGET/`, named as libFuzzer wrote them; add new ones there.

use std::path::{Path, PathBuf};

use kairos_models::loading::{load, LoadOptions};
use kairos_models::lora::LoraFile;
use kairos_models::prompt::parse_prompt_attention;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz_regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The input as a file with the extension the loader dispatches on.
fn with_extension(input: &Path, ext: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-fuzz-regressions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.{ext}", input.file_name().unwrap().to_string_lossy()));
    std::fs::copy(input, &path).unwrap();
    path
}

#[test]
fn pickle_load_crashers_are_errors() {
    let files = inputs("pickle_load");
    assert!(!files.is_empty());
    for input in files {
        let err = load(with_extension(&input, "ckpt"), &LoadOptions::default());
        assert!(err.is_err(), "{} loaded", input.display());
    }
}

#[test]
fn safetensors_load_crashers_are_errors_or_loads() {
    for input in inputs("safetensors_load") {
        let _ = load(with_extension(&input, "safetensors"), &LoadOptions::default());
    }
}

#[test]
fn lora_file_crashers_are_errors_or_loads() {
    for input in inputs("lora_file") {
        let _ = LoraFile::open(with_extension(&input, "safetensors"));
    }
}

#[test]
fn prompt_parse_crashers_are_errors_or_parses() {
    for input in inputs("prompt_parse") {
        let _ = parse_prompt_attention(&String::from_utf8_lossy(&std::fs::read(input).unwrap()));
    }
}
