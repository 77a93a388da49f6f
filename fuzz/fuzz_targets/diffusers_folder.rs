//! diffusers folder configs: `model_index.json`, each component's `config.json` and the
//! scheduler config, as `StableDiffusion::load` reads them, then one tiny generation with
//! whatever loaded. The input's first byte picks the file it replaces in a copy of a tiny SD1 or
//! SDXL folder fixture; the rest is that file. Must hold: no panic; a load is an error or a model
//! that generates (or refuses the request with an error).
#![no_main]
#[path = "common.rs"]
mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use kairos_pipeline::{txt2img, ModelOptions, StableDiffusion, Txt2ImgRequest};
use libfuzzer_sys::fuzz_target;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/kairos-models/tests/fixtures");
/// The tiny folders (SD1: loads, its 8-token text encoder refuses a prompt; SDXL: generates)
/// and the files an input may replace in them.
const FOLDERS: [(&str, &[&str]); 2] = [
    (
        "loading/sd1_diffusers",
        &[
            "model_index.json",
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "scheduler/scheduler_config.json",
            "tokenizer/vocab.json",
        ],
    ),
    (
        "sdxl/base",
        &[
            "model_index.json",
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "text_encoder_2/config.json",
            "scheduler/scheduler_config.json",
            "tokenizer/special_tokens_map.json",
            "tokenizer_2/tokenizer_config.json",
        ],
    ),
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Per-process copies of the fixture folders, made once.
fn copies() -> &'static [PathBuf] {
    static DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let base = common::as_file("unused", b"").with_file_name("folders");
        FOLDERS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let dir = base.join(i.to_string());
                copy_dir(&Path::new(FIXTURES).join(name), &dir);
                dir
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte: folder in its high nibble, file in its low one.
    let Some((&pick, file)) = data.split_first() else { return };
    let (folder, configs) = FOLDERS[(pick >> 4) as usize % FOLDERS.len()];
    let dir = &copies()[(pick >> 4) as usize % FOLDERS.len()];
    let replaced = configs[(pick & 15) as usize % configs.len()];
    for &name in configs {
        let bytes = if name == replaced {
            file.to_vec()
        } else {
            std::fs::read(Path::new(FIXTURES).join(folder).join(name)).unwrap()
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let Ok(sd) = StableDiffusion::load(dir, &ModelOptions::default()) else { return };
    let req = Txt2ImgRequest { prompt: "a cat".into(), width: 32, height: 32, steps: 1, seed: 1, ..Default::default() };
    let _ = txt2img(&sd.components(), &req, &mut |_| ControlFlow::Continue(()));
});
