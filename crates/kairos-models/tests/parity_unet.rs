//! Parity of `UNet2DConditionModel` against diffusers 0.42.1 with tiny seeded random models
//! (fixtures from `tools/fixtures/unet.py`: config.json as written by diffusers' `save_config`,
//! weights as a diffusers state dict, inputs and output).
//!
//! Tolerance: max|a−b|/max|b| ≤ 1e-5 for the whole UNet (measured 0.8e-6 to 1.4e-6). Weights
//! and inputs are the same f32 values on both sides; differences come only from summation order
//! in f32 reductions, compounded over ~20 layers, and from ulp differences of exp/sin/cos in the
//! timestep embedding. Wrong wiring gives errors of order 1e-2 to 1.

mod unet_fixtures;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use kairos_models::unets::unet_2d_condition::{Timestep, UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_models::ModelError;
use unet_fixtures::{assert_close, fixtures_dir, load_safetensors};

const TOL: f64 = 1e-5;

fn load(name: &str) -> (UNet2DConditionModel, std::collections::HashMap<String, candle_core::Tensor>) {
    let dir = fixtures_dir().join("unet").join(name);
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = UNet2DConditionModelConfig::from_json(&json).unwrap();
    let weights = load_safetensors(dir.join("diffusion_pytorch_model.safetensors"));
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let unet = UNet2DConditionModel::new(vb, &config).unwrap();
    (unet, load_safetensors(dir.join("io.safetensors")))
}

#[test]
fn unet_matches_diffusers_sd1_tiny() {
    let (unet, io) = load("sd1_tiny");
    let out = unet.forward(&io["input.sample"], 999.0, &io["input.encoder_hidden_states"], None, None).unwrap();
    assert_close("unet sd1_tiny", &out, &io["output"], TOL);
}

#[test]
fn unet_matches_diffusers_sd2_tiny_linear_proj_odd_size() {
    let (unet, io) = load("sd2_tiny");
    let t = Timestep::Tensor(&io["input.timestep"]);
    let out = unet.forward(&io["input.sample"], t, &io["input.encoder_hidden_states"], None, None).unwrap();
    assert_close("unet sd2_tiny", &out, &io["output"], TOL);
}

#[test]
fn unet_matches_diffusers_lcm_tiny_timestep_cond() {
    let (unet, io) = load("lcm_tiny");
    assert!(unet.takes_timestep_cond());
    let out = unet
        .forward(&io["input.sample"], 499.0, &io["input.encoder_hidden_states"], Some(&io["input.timestep_cond"]), None)
        .unwrap();
    assert_close("unet lcm_tiny", &out, &io["output"], TOL);
}

#[test]
fn config_defaults_are_diffusers_defaults() {
    // An empty config.json is diffusers' default UNet: SD1.x's layout.
    let config = UNet2DConditionModelConfig::from_json("{}").unwrap();
    assert_eq!(config.block_out_channels, vec![320, 640, 1280, 1280]);
    assert_eq!(config.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"));
    assert!(config.flip_sin_to_cos);
    assert_eq!(config.norm_eps, 1e-5);
    assert_eq!(config.downsample_padding, 1);
}

#[test]
fn unsupported_config_values_are_rejected_with_the_field_name() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    for (json, field) in [
        (r#"{"addition_embed_type": "text"}"#, "addition_embed_type"),
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (r#"{"only_cross_attention": [false, true, false, false]}"#, "only_cross_attention"),
        (r#"{"time_embedding_type": "fourier"}"#, "time_embedding_type"),
        (r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#, "mid_block_type"),
        (r#"{"act_fn": "tanh"}"#, "act_fn"),
    ] {
        let config = UNet2DConditionModelConfig::from_json(json).unwrap();
        match UNet2DConditionModel::new(vb.clone(), &config) {
            Err(ModelError::Unsupported { field: f, .. }) => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: expected Unsupported {{ field: {field} }}, got {other:?}"),
        }
    }
    let config = UNet2DConditionModelConfig::from_json(r#"{"layers_per_block": [1, 2]}"#).unwrap();
    assert!(matches!(
        UNet2DConditionModel::new(vb.clone(), &config),
        Err(ModelError::InvalidConfig { field: "layers_per_block", .. })
    ));
    // SDXL's text_time needs both of its widths.
    let config = UNet2DConditionModelConfig::from_json(r#"{"addition_embed_type": "text_time"}"#).unwrap();
    assert!(matches!(
        UNet2DConditionModel::new(vb, &config),
        Err(ModelError::InvalidConfig { field: "addition_embed_type", .. })
    ));
}
