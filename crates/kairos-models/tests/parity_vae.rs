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
