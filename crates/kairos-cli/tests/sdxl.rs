//! `kairos generate` / `kairos inspect` on the tiny SDXL base and refiner of kairos-models'
//! fixtures: the command line reproduces diffusers' `StableDiffusionXLPipeline` images (the
//! references of `tools/fixtures/sdxl_pipeline.py`), the refiner hand-off, the SDXL AYS table,
//! and clear errors for misused SDXL options.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// Runs kairos with `KAIROS_DTYPE=f32`, so that a run without `--dtype` is f32 as the fixtures
/// are (`--dtype auto`, the default, could pick bf16 on a CPU with AVX512-BF16).
fn kairos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(args)
        .output()
        .expect("the kairos binary runs")
}

fn sdxl(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/sdxl").join(name);
    p.to_string_lossy().into_owned()
}

fn reference_images() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kairos-pipeline/tests/fixtures/sdxl_pipeline_io.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-cli-sdxl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `kairos generate` with the tiny models' hint and diffusers' conventions (integer
/// timesteps fed as they are), returning the written PNG's path.
fn generate(name: &str, args: &[&str]) -> PathBuf {
    let dir = temp_dir(name);
    let out = dir.join("out.png");
    let mut all = vec!["generate", "--clip-head-dim", "8", "--timestep-mode", "quantized", "-o"];
    let out_s = out.to_string_lossy().into_owned();
    all.push(&out_s);
    all.extend(args);
    let run = kairos(&all);
    assert!(run.status.success(), "{all:?}: {}", String::from_utf8_lossy(&run.stderr));
    out
}

/// The PNG's pixels equal diffusers' 8-bit image up to one level (a value on a rounding
/// boundary), as the pipeline parity tests require.
fn assert_image_equals(png: &PathBuf, reference: &Tensor) {
    let got = image::open(png).unwrap().to_rgb8().into_raw();
    let want = reference.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(diff <= 1, "{}: differs from diffusers by {diff} levels", png.display());
}

fn parameters(png: &PathBuf) -> String {
    let bytes = std::fs::read(png).unwrap();
    let at = bytes.windows(10).position(|w| w == b"parameters").expect("a parameters chunk");
    let len = u32::from_be_bytes(bytes[at - 8..at - 4].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&bytes[at + 11..at + len]).into_owned()
}

const PROMPT: &str = "a photo of a cat, sitting on a red sofa";

/// diffusers' default SDXL run (EulerDiscrete, leading spacing, 4 steps, CFG 5) from the SGM
/// single file: `--schedule leading --sampler euler`.
#[test]
fn sdxl_single_file_reproduces_diffusers() {
    let model = sdxl("sdxl_base.safetensors");
    let png = generate(
        "euler",
        &[
            "--model",
            &model,
            "--prompt",
            PROMPT,
            "--negative-prompt",
            "blurry, low quality",
            "-W",
            "32",
            "-H",
            "32",
            "--steps",
            "4",
            "--cfg-scale",
            "5",
            "--seed",
            "0",
            "--sampler",
            "euler",
            "--schedule",
            "leading",
        ],
    );
    assert_image_equals(&png, &reference_images()["a_euler_leading_cfg5.image"]);
}

/// The ensemble of experts from the command line: base folder + refiner folder at switch 0.8
/// gives diffusers' base (`denoising_end=0.8`) → refiner (`denoising_start=0.8`) image (Euler
/// draws no noise after the first, so the refiner's own generator seed does not matter), and
/// the infotext names the refiner as A1111 does.
#[test]
fn refiner_handoff_reproduces_diffusers() {
    let (base, refiner) = (sdxl("base"), sdxl("refiner"));
    let png = generate(
        "refiner",
        &[
            "--model",
            &base,
            "--refiner",
            &refiner,
            "--refiner-switch",
            "0.8",
            "--prompt",
            PROMPT,
            "--negative-prompt",
            "blurry, low quality",
            "-W",
            "32",
            "-H",
            "32",
            "--steps",
            "10",
            "--cfg-scale",
            "5",
            "--seed",
            "7",
            "--sampler",
            "euler",
            "--schedule",
            "leading",
            "--low-memory",
        ],
    );
    assert_image_equals(&png, &reference_images()["h_ensemble_base_refiner.image"]);
    let text = parameters(&png);
    assert!(text.contains("Refiner: refiner, Refiner switch at: 0.8"), "{text}");
}

/// `--schedule ays` on an SDXL model samples the SDXL table (the JSON sidecar's sigmas), and the
/// default size is SDXL's 1024² only when -W/-H are absent (here they are given).
#[test]
fn ays_uses_the_sdxl_table() {
    let model = sdxl("sdxl_base.safetensors");
    let png = generate(
        "ays",
        &[
            "--model",
            &model,
            "--prompt",
            "a cat",
            "-W",
            "32",
            "-H",
            "32",
            "--steps",
            "10",
            "--schedule",
            "ays",
            "--json",
        ],
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(png.with_extension("json")).unwrap()).unwrap();
    let sigmas: Vec<f64> = sidecar["sigmas"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // NVIDIA's SDXL noise levels (the table, ComfyUI's full-precision copy), last set to 0.
    let table = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113];
    assert_eq!(sigmas.len(), 11);
    for (got, want) in sigmas.iter().zip(table) {
        assert!((got - want).abs() < 5e-3, "{sigmas:?}");
    }
    assert_eq!(sigmas[10], 0.0);
    assert_eq!(sidecar["family"], "sdxl");
}

fn fails(args: &[&str], expected: &[&str]) {
    let mut all = vec!["generate", "--clip-head-dim", "8", "-W", "32", "-H", "32", "--steps", "4"];
    all.extend(args);
    let out = kairos(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{all:?} should fail");
    assert!(!stderr.contains("panicked"), "{all:?} panicked: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{all:?}: `{e}` not in: {stderr}");
    }
}

#[test]
fn misused_sdxl_options_are_clear_errors() {
    let (base, refiner) = (sdxl("sdxl_base.safetensors"), sdxl("sdxl_refiner.safetensors"));
    let out = temp_dir("errors").join("x.png").to_string_lossy().into_owned();
    fails(&["--model", &base, "--refiner", &base, "-o", &out], &["is SDXL, not an SDXL refiner"]);
    fails(&["--model", &refiner, "--refiner", &refiner, "-o", &out], &["--refiner needs an SDXL base model"]);
    fails(&["--model", &base, "--refiner", &refiner, "--refiner-switch", "1.5", "-o", &out], &["denoising_end"]);
    fails(&["--model", &base, "--original-size", "1024", "-o", &out], &["WIDTHxHEIGHT"]);
    fails(&["--model", &base, "--crop", "a,b", "-o", &out], &["TOP,LEFT"]);
    // An SD VAE on an SDXL model, and an SDXL VAE on an SD1 model: the latents differ in scale.
    let vae = |name: &str| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/vae").join(name);
        p.to_string_lossy().into_owned()
    };
    fails(
        &["--model", &base, "--vae", &vae("tiny"), "-o", &out],
        &["does not fit this model: its scaling factor is 0.18215, the model needs 0.13025"],
    );
    let sd1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/sd1_tiny.safetensors");
    fails(
        &["--model", sd1.to_str().unwrap(), "--norm-num-groups", "4", "--vae", &vae("sdxl_tiny"), "-o", &out],
        &["does not fit this model: its scaling factor is 0.13025, the model needs 0.18215"],
    );
    assert!(!PathBuf::from(&out).exists(), "no image is written for a failed run");
}

#[test]
fn inspect_reports_sdxl() {
    for (name, family, layout) in [
        ("sdxl_base.safetensors", "sdxl", "single file (SGM keys)"),
        ("base", "sdxl", "diffusers folder"),
        ("sdxl_refiner.safetensors", "sdxl-refiner", "single file (SGM keys)"),
    ] {
        let out = kairos(&["inspect", &sdxl(name), "--clip-head-dim", "8", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["family"], family, "{name}");
        assert_eq!(v["layout"], layout, "{name}");
        // The refiner's one encoder is diffusers' text_encoder_2 (OpenCLIP-bigG).
        assert!(v["parameters"]["text_encoder_2"].as_u64().unwrap() > 0, "{name}: {v}");
        assert_eq!(v["parameters"]["text_encoder"].is_u64(), family == "sdxl", "{name}: {v}");
    }
}

/// `kairos schedule optimize --model` on an SDXL checkpoint: the UNet gets its pooled text and
/// size ids, x0 from the model's own samples; the file drives `generate --sigmas-file`.
/// Mechanics only: random weights say nothing about the schedule.
#[test]
fn schedule_optimize_runs_on_sdxl() {
    let model = sdxl("sdxl_base.safetensors");
    let dir = temp_dir("optimize");
    let file = dir.join("ays.json").to_string_lossy().into_owned();
    let out = kairos(&[
        "schedule",
        "optimize",
        "--model",
        &model,
        "--clip-head-dim",
        "8",
        "--self-samples",
        "1",
        "--sample-steps",
        "2",
        "--size",
        "16",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--t-samples",
        "2",
        "--eval-t-samples",
        "4",
        "--max-sweeps",
        "1",
        "--compare",
        "karras",
        "--out",
        &file,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ays (optimized, 2)") && stdout.contains("karras (2)"), "{stdout}");
    let png = generate("optimized", &["--model", &model, "-W", "16", "-H", "16", "--sigmas-file", &file]);
    assert!(png.is_file());
}
