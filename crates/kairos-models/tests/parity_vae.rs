//! AutoencoderKL against diffusers 0.42.1 (fixtures: `tools/fixtures/vae.py`).
//!
//! Tolerance: max|a−b| / max|b| ≤ 1e-5 per output, f32 on CPU. The computation is the same f32
//! math as torch's, but convolution, GroupNorm and attention reductions sum in another order,
//! which leaves rounding differences of a few ulps that grow through the ~20 layers. Measured
//! (printed by the tests): encoder mean/logvar/std/sample ≤ 6.4e-7, decoder outputs ≤ 2.1e-6.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig};
use kairos_models::loading::{self, load_vae_file, Component, ConfigHints, LoadOptions};
use kairos_models::ModelError;

const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("vae/{case}_io.safetensors")), &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / scale
}

fn check(name: &str, vae: &AutoencoderKL, io: &HashMap<String, Tensor>) {
    let dist = vae.encode(&io["x"]).unwrap();
    let outputs = [
        ("mean", dist.mean.clone()),
        ("logvar", dist.logvar.clone()),
        ("std", dist.std.clone()),
        ("sample", dist.sample(&io["noise"]).unwrap()),
        ("decoded_mean", vae.decode(&io["mean"]).unwrap()),
        ("decoded_z", vae.decode(&io["z"]).unwrap()),
    ];
    for (out, got) in outputs {
        let err = rel_err(&got, &io[out]);
        println!("{name}.{out}: max|a-b|/max|b| = {err:.3e}");
        assert!(err <= TOL, "{name}.{out}: {err:.3e} > {TOL:e}");
    }
}

fn build(component: &Component, config: &AutoencoderKLConfig) -> AutoencoderKL {
    let vae = AutoencoderKL::new(component.var_builder(DType::F32, &Device::Cpu), config).unwrap();
    // Strict loading: every weight in the file belongs to the model.
    assert!(component.unused_keys().is_empty(), "unused: {:?}", component.unused_keys());
    vae
}

#[test]
fn autoencoder_kl_matches_diffusers_tiny() {
    let dir = fixtures().join("vae/tiny");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = AutoencoderKLConfig::from_json(&json).unwrap();
    assert_eq!(config.block_out_channels, [8, 16]);
    assert_eq!(config.scaling_factor, 0.18215);
    let hints = ConfigHints { norm_num_groups: 4, ..Default::default() };
    let component = load_vae_file(dir.join("diffusion_pytorch_model.safetensors"), &hints).unwrap();
    // The config derived from the shapes equals diffusers' config.json.
    assert_eq!(AutoencoderKLConfig::from_json(&component.config).unwrap(), config);
    check("tiny", &build(&component, &config), &io("tiny"));
}

#[test]
fn autoencoder_kl_matches_diffusers_from_folder_and_ldm_file() {
    let io = io("sd1_loading");
    let w = loading::load(fixtures().join("loading/sd1_diffusers"), &LoadOptions::default()).unwrap();
    let config = AutoencoderKLConfig::from_json(&w.vae.config).unwrap();
    check("sd1_folder", &build(&w.vae, &config), &io);
    // The same weights as a standalone LDM-layout pickle (1×1-conv mid attention).
    let hints = ConfigHints { norm_num_groups: 4, ..Default::default() };
    let ldm = load_vae_file(fixtures().join("loading/vae_ldm.pt"), &hints).unwrap();
    let ldm_config = AutoencoderKLConfig::from_json(&ldm.config).unwrap();
    check("sd1_ldm_pt", &build(&ldm, &ldm_config), &io);
}

/// An SDXL-style VAE (scaling_factor 0.13025, force_upcast false as sdxl-vae-fp16-fix's
/// config.json) from its diffusers folder and from a standalone single file with LDM keys:
/// diffusers' outputs within the file's tolerance. The file records no scaling factor (the SD
/// default is derived; the pipeline gives it the model's). In float16 (the reason for
/// fp16-fix) the decode is finite and within cosine 0.9995 of torch's CPU float16 decode.
#[test]
fn sdxl_vae_matches_diffusers_from_folder_and_single_file() {
    let io = io("sdxl");
    let folder = load_vae_file(fixtures().join("vae/sdxl_tiny"), &ConfigHints::default()).unwrap();
    let config = AutoencoderKLConfig::from_json(&folder.config).unwrap();
    assert_eq!((config.scaling_factor, config.force_upcast), (0.13025, false));
    check("sdxl_folder", &build(&folder, &config), &io);

    let hints = ConfigHints { norm_num_groups: 4, ..Default::default() };
    let file = load_vae_file(fixtures().join("vae/sdxl_tiny_ldm.safetensors"), &hints).unwrap();
    let file_config = AutoencoderKLConfig::from_json(&file.config).unwrap();
    assert_eq!((file_config.scaling_factor, file_config.force_upcast), (0.18215, true));
    assert_eq!(AutoencoderKLConfig { scaling_factor: 0.13025, force_upcast: false, ..file_config.clone() }, config);
    check("sdxl_ldm_file", &build(&file, &file_config), &io);

    let half = AutoencoderKL::new(folder.var_builder(DType::F16, &Device::Cpu), &config).unwrap();
    // torch: (z_unet / scaling_factor).half(), the division in float32; on the CPU kairos runs
    // f16 weights with f32 activations (kairos_kernels::nn::activation_dtype).
    let z = (&io["z_unet"] / 0.13025).unwrap().to_dtype(DType::F16).unwrap();
    let z = z.to_dtype(kairos_kernels::nn::activation_dtype(DType::F16, &Device::Cpu)).unwrap();
    let got = half.decode(&z).unwrap().to_dtype(DType::F32).unwrap();
    let values = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()), "float16 decode has NaN/inf");
    let want = io["decoded_unet_f16"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dot: f64 = values.iter().zip(&want).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&values) * norm(&want));
    println!(
        "sdxl f16 decode: cosine {cosine:.7} vs torch float16, max|a-b|/max|b| {:.3e}",
        rel_err(&got, &io["decoded_unet_f16"])
    );
    assert!(cosine >= 0.9995, "cosine {cosine}");
}

#[test]
fn bad_config_and_inputs_are_reported() {
    let mut json = serde_json::json!({
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "norm_num_groups": 4,
    });
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let config = AutoencoderKLConfig::from_json(&json).unwrap();
    let err = AutoencoderKL::new(vb.clone(), &config).unwrap_err();
    assert!(matches!(err, ModelError::Unsupported { field: "down_block_types", .. }), "{err}");

    json["down_block_types"] = serde_json::json!(["DownEncoderBlock2D"]);
    let err = AutoencoderKL::new(vb.clone(), &AutoencoderKLConfig::from_json(&json).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { field: "down_block_types", .. }), "{err}");

    json["down_block_types"] = serde_json::json!(["DownEncoderBlock2D", "DownEncoderBlock2D"]);
    json["norm_num_groups"] = serde_json::json!(3);
    let err = AutoencoderKL::new(vb.clone(), &AutoencoderKLConfig::from_json(&json).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { field: "norm_num_groups", .. }), "{err}");

    json["norm_num_groups"] = serde_json::json!(4);
    let vae = AutoencoderKL::new(vb, &AutoencoderKLConfig::from_json(&json).unwrap()).unwrap();
    let err = vae.encode(&Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::BadInput { name: "x", .. }), "{err}");
    let err = vae.decode(&Tensor::zeros((1, 4, 8), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::BadInput { name: "z", .. }), "{err}");
}

#[test]
fn missing_vae_weight_is_reported_when_building() {
    let hints = ConfigHints { norm_num_groups: 4, ..Default::default() };
    let component = load_vae_file(fixtures().join("vae/tiny/diffusion_pytorch_model.safetensors"), &hints).unwrap();
    let mut config = AutoencoderKLConfig::from_json(&component.config).unwrap();
    config.layers_per_block = 3; // asks for encoder.down_blocks.0.resnets.2, absent from the file
    let err = AutoencoderKL::new(component.var_builder(DType::F32, &Device::Cpu), &config).unwrap_err();
    assert!(err.to_string().contains("missing weight `encoder.down_blocks.0.resnets.2.norm1.weight`"), "{err}");
}
