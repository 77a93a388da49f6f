//! AutoencoderTiny (TAESD) and the latent → RGB preview against diffusers 0.42.1 / ComfyUI's
//! formula (fixtures: `tools/fixtures/taesd.py`).
//!
//! Tolerance: max|a−b| / max|b| ≤ 1e-5 per output, f32 on CPU: the same f32 convolutions as
//! torch's, summed in another order, through about 12 conv layers (measured values are printed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderTiny, AutoencoderTinyConfig, LatentRgbFactors};
use kairos_models::ModelError;

const TOL: f32 = 1e-5;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/taesd")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("io.safetensors"), &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

fn config() -> AutoencoderTinyConfig {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("diffusers/config.json")).unwrap()).unwrap();
    AutoencoderTinyConfig::from_json(&json).unwrap()
}

fn check(name: &str, model: &AutoencoderTiny, io: &HashMap<String, Tensor>) {
    let scaled = model.scale_latents(&io["z"]).unwrap();
    let outputs = [
        ("latents", model.encode(&io["x"]).unwrap()),
        ("decoded_z", model.decode(&io["z"]).unwrap()),
        ("decoded_latents", model.decode(&io["latents"]).unwrap()),
        ("scaled_z", scaled.clone()),
        ("unscaled_scaled_z", model.unscale_latents(&scaled).unwrap()),
    ];
    for (out, got) in outputs {
        let err = rel_err(&got, &io[out]);
        println!("{name}.{out}: max|a-b|/max|b| = {err:.3e}");
        assert!(err <= TOL, "{name}.{out}: {err:.3e} > {TOL:e}");
    }
}

#[test]
fn autoencoder_tiny_matches_diffusers_tiny() {
    let config = config();
    assert_eq!(config.num_encoder_blocks, [1, 2, 2]);
    assert_eq!(config.scaling_factor, 1.0);
    let file = dir().join("diffusers/diffusion_pytorch_model.safetensors");
    let model = AutoencoderTiny::load(&[&file], &config, DType::F32, &Device::Cpu).unwrap();
    check("diffusers", &model, &io());
}

#[test]
fn autoencoder_tiny_matches_diffusers_from_madebyollin_files() {
    // Bare encoder indices in a safetensors file, decoder indices shifted by the Clamp in a pickle.
    let enc = dir().join("taesd_encoder.safetensors");
    let dec = dir().join("taesd_decoder.pth");
    let model = AutoencoderTiny::load(&[&enc, &dec], &config(), DType::F32, &Device::Cpu).unwrap();
    check("madebyollin", &model, &io());
}

#[test]
fn autoencoder_tiny_matches_diffusers_from_comfyui_prefixed_dict() {
    // The same weights renamed as ComfyUI's TAESD module holds them, with its scalar scale/shift.
    let file = dir().join("diffusers/diffusion_pytorch_model.safetensors");
    let mut renamed = HashMap::new();
    for (k, t) in candle_core::safetensors::load(&file, &Device::Cpu).unwrap() {
        let (part, rest) = k.split_once(".layers.").unwrap();
        let (i, tail) = rest.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        let key = match part {
            "encoder" => format!("taesd_encoder.{i}.{tail}"),
            _ => format!("taesd_decoder.{}.{tail}", i + 1),
        };
        renamed.insert(key, t);
    }
    renamed.insert("vae_scale".into(), Tensor::new(0.18215f32, &Device::Cpu).unwrap());
    renamed.insert("vae_shift".into(), Tensor::new(0f32, &Device::Cpu).unwrap());
    let path = std::env::temp_dir().join(format!("kairos-taesd-comfy-{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&renamed, &path).unwrap();
    let model = AutoencoderTiny::load(&[&path], &config(), DType::F32, &Device::Cpu).unwrap();
    let _ = std::fs::remove_file(&path);
    check("comfyui", &model, &io());
}

#[test]
fn latent_rgb_preview_matches_comfyui_formula() {
    let io = io();
    for (name, factors) in [("preview_sd15", LatentRgbFactors::Sd15), ("preview_sdxl", LatentRgbFactors::Sdxl)] {
        let got = factors.preview(&io["z"]).unwrap();
        // One 4-term dot product per pixel: a few ulps.
        let err = rel_err(&got, &io[name]);
        println!("{name}: {err:.3e}");
        assert!(err <= 1e-6, "{name}: {err:.3e}");
    }
}

#[test]
fn bad_taesd_files_and_inputs_are_reported() {
    let missing = dir().join("nope.safetensors");
    let err = AutoencoderTiny::load(&[&missing], &config(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::FileNotFound { .. }), "{err}");
    // An AutoencoderKL file is not TAESD.
    let kl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae/tiny/diffusion_pytorch_model.safetensors");
    let err = AutoencoderTiny::load(&[&kl], &config(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::UnrecognisedLayout { .. }), "{err}");
    // Encoder only: building the decoder reports the first missing weight.
    let enc = dir().join("taesd_encoder.safetensors");
    let err = AutoencoderTiny::load(&[&enc], &config(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("decoder.layers.0"), "{err}");

    let file = dir().join("diffusers/diffusion_pytorch_model.safetensors");
    let model = AutoencoderTiny::load(&[&file], &config(), DType::F32, &Device::Cpu).unwrap();
    let err = model.decode(&io()["x"]).unwrap_err();
    assert!(matches!(err, ModelError::BadInput { name: "x", .. }), "{err}");
    let mut json = serde_json::json!({"upsample_fn": "bilinear"});
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = AutoencoderTiny::new(vb, &AutoencoderTinyConfig::from_json(&json).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::Unsupported { field: "upsample_fn", .. }), "{err}");
    json["upsample_fn"] = "nearest".into();
    json["num_decoder_blocks"] = serde_json::json!([1, 1]);
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = AutoencoderTiny::new(vb, &AutoencoderTinyConfig::from_json(&json).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { field: "num_decoder_blocks", .. }), "{err}");
}
