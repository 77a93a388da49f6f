//! LCM txt2img parity with diffusers' `LatentConsistencyModelPipeline` (`LCMScheduler`) on a tiny
//! LCM-distilled UNet with the tiny SD1 text encoder and VAE (fixtures:
//! `tools/fixtures/pipeline_lcm.py`): guidance embedding instead of a CFG batch, LCM timesteps,
//! the `lcm` sampler, the boundary conditions and the initial noise scale, final latents.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kairos_models::lcm::{lcm_timesteps, LcmOptions};
use kairos_models::loading::{ConfigHints, LoadOptions};
use kairos_models::unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_pipeline::{txt2img, LcmKind, ModelOptions, StableDiffusion, TimestepMode, Txt2ImgRequest, Unet};
use kairos_sampler::Sampler;
use kairos_schedule::{ScheduleKind, TablePrecision};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64
}

/// The tiny SD1 checkpoint with its UNet replaced by the fixture's LCM UNet.
fn lcm_model() -> StableDiffusion {
    let opts = ModelOptions {
        load: LoadOptions {
            hints: ConfigHints { norm_num_groups: 4, clip_head_dim: 8, unet_heads: None },
            ..Default::default()
        },
        // diffusers feeds LCMScheduler's integer timesteps, and builds its tables in float32.
        timestep_mode: TimestepMode::Quantized,
        table_precision: TablePrecision::DiffusersF32,
        ..Default::default()
    };
    let mut sd = StableDiffusion::load(fixtures().join("sd1_tiny.safetensors"), &opts).unwrap();
    let dir = fixtures().join("lcm_unet_tiny");
    let config =
        UNet2DConditionModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights =
        candle_core::safetensors::load(dir.join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    let unet = UNet2DConditionModel::new(VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu), &config).unwrap();
    sd.unet = Unet::new(unet, DType::F32);
    sd.lcm = Some(LcmKind::Unet { time_cond_proj_dim: 8 });
    sd
}

#[test]
fn lcm_unet_matches_diffusers_latent_consistency_pipeline() {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lcm_pipeline.json")).unwrap()).unwrap();
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("lcm_pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let sd = lcm_model();
    let c = sd.components();
    for case in json["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let ts = lcm_timesteps(steps, 1.0, &LcmOptions::default()).unwrap();
        let want_ts: Vec<usize> =
            case["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
        assert_eq!(ts, want_ts, "{name}: LCMScheduler timesteps");
        let req = Txt2ImgRequest {
            prompt: case["prompt"].as_str().unwrap().into(),
            width: case["width"].as_u64().unwrap() as usize,
            height: case["height"].as_u64().unwrap() as usize,
            steps,
            cfg_scale: case["cfg"].as_f64().unwrap(),
            sampler: Sampler::Lcm,
            schedule: ScheduleKind::Timesteps(ts.iter().map(|&t| t as f64).collect()),
            seed: case["seed"].as_u64().unwrap(),
            batch_size: case["batch"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let out = txt2img(&c, &req, &mut |_| ControlFlow::Continue(())).unwrap();
        let want = &io[&format!("{name}.latents")];
        let err = max_abs(&(&out.batches[0].latents - want).unwrap());
        let scale = max_abs(want);
        // float32 on both sides with the same weights; float32 reordering in the convs and
        // matmuls and an ulp of the guidance embedding's sines (torch vs libm), amplified by the
        // untrained tiny UNet: 1e-5 of the largest |latent| (meta.tolerance; measured 2.5e-7).
        eprintln!("{name}: latents max abs err {err:.3e} (max |latent| {scale:.2}, rel {:.3e})", err / scale);
        assert!(err <= 1e-5 * scale, "{name}: latents max abs err {err} > 1e-5 x {scale}");
    }
}
