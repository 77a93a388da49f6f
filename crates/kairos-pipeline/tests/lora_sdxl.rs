//! SDXL LoRAs through `ModelOptions::loras` on the tiny SDXL base of kairos-models' fixtures:
//! a kohya LoRA in SGM names (UNet, CLIP-L and bigG layers) at 0.8 against diffusers'
//! `StableDiffusionXLPipeline` with the LoRA fused (`tools/fixtures/sdxl_lora.py`, the `run`
//! entry of lora.json: Euler with leading spacing, 4 steps, guidance 5, seed 0, 32×32), and an
//! LCM-LoRA in the PEFT names diffusers' SDXL training script saves, detected as an LCM-LoRA.
//!
//! Tolerance (the fixture's): final latents within 1e-5 × max|latent| (float32 on both sides
//! from the same merged weights; only the order of float32 sums differs), the image equal in 8
//! bits up to 1 level where a value sits on a rounding boundary.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use kairos_models::loading::{self, ConfigHints, LoadOptions};
use kairos_pipeline::{
    txt2img, InitialNoise, LcmKind, LoraWeights, ModelOptions, PromptSyntax, StableDiffusion, TimestepMode,
    Txt2ImgRequest,
};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::Sampler;
use kairos_schedule::{ScheduleKind, TablePrecision};
use serde_json::Value;

fn sdxl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/sdxl")
}

fn load_options() -> LoadOptions {
    LoadOptions {
        hints: ConfigHints { clip_head_dim: 8, ..ConfigHints::default() },
        variant: Some("fp16".into()),
        ..Default::default()
    }
}

/// As parity_sdxl_pipeline.rs loads the base: diffusers' prompt syntax, integer timesteps on
/// diffusers' float32 table.
fn load(loras: Vec<LoraWeights>) -> StableDiffusion {
    let opts = ModelOptions {
        load: load_options(),
        timestep_mode: TimestepMode::Quantized,
        table_precision: TablePrecision::DiffusersF32,
        prompt_syntax: PromptSyntax::Diffusers,
        loras,
        ..Default::default()
    };
    StableDiffusion::load(sdxl().join("base"), &opts).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn kohya_sgm_lora_run_matches_diffusers_fused() {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(sdxl().join("lora/lora.json")).unwrap()).unwrap();
    let run = &json["run"];
    assert_eq!(run["scheduler"], "EulerDiscreteScheduler (the base config, leading)");
    let strength = run["lora"][1].as_f64().unwrap();
    let lora = LoraWeights {
        path: sdxl().join("lora").join(run["lora"][0].as_str().unwrap()),
        unet_strength: strength,
        text_encoder_strength: strength,
    };
    let args = &run["arguments"];
    let req = Txt2ImgRequest {
        prompt: args["prompt"].as_str().unwrap().into(),
        negative_prompt: args["negative_prompt"].as_str().unwrap().into(),
        width: args["width"].as_u64().unwrap() as usize,
        height: args["height"].as_u64().unwrap() as usize,
        steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        cfg_scale: args["guidance_scale"].as_f64().unwrap(),
        sampler: Sampler::from_name("euler").unwrap(),
        schedule: ScheduleKind::from_name("leading").unwrap(),
        seed: run["seed"].as_u64().unwrap(),
        batch_size: 1,
        batch_count: 1,
        rng: RngKind::TorchCpu,
        seeding: BatchSeeding::Shared,
        // diffusers' Euler with leading spacing scales the first noise by sqrt(σ_max² + 1).
        initial_noise: InitialNoise::SqrtOnePlusSigmaSquared,
        ..Default::default()
    };
    let generate = |loras| {
        let sd = load(loras);
        assert_eq!(sd.lcm, None);
        txt2img(&sd.components(), &req, &mut |_| ControlFlow::Continue(())).unwrap()
    };
    let out = generate(vec![lora]);
    let want_ts: Vec<f64> = run["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(out.sigmas.len(), want_ts.len() + 1);
    let io =
        candle_core::safetensors::load(sdxl().join("lora").join(run["file"].as_str().unwrap()), &Device::Cpu).unwrap();
    let want = &io[run["keys"]["latents"].as_str().unwrap()];
    let got = &out.batches[0].latents;
    let err = max_abs(&(got.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap()).unwrap());
    let scale = max_abs(want);
    let tol = run["tolerance"]["latents_max_abs_over_max_abs_latent"].as_f64().unwrap();
    eprintln!("SDXL kohya LoRA run: latents max abs err {err:.3e} (max |latent| {scale:.2}, rel {:.3e})", err / scale);
    assert!(err <= tol * scale, "latents max abs err {err} > {tol} x {scale}");
    // The LoRA matters: without it the latents are far off.
    let base = generate(Vec::new());
    let off =
        max_abs(&(base.batches[0].latents.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap()).unwrap());
    eprintln!("SDXL kohya LoRA run: without the LoRA, latents max abs err {off:.3e}");
    assert!(off > 100.0 * tol * scale, "the LoRA changed the latents by only {off}");
    let want = io[run["keys"]["image"].as_str().unwrap()].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let got: Vec<u8> = out.batches[0].images.iter().flat_map(|i| i.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    eprintln!("SDXL kohya LoRA run: image max diff {diff} levels");
    assert!(diff <= run["tolerance"]["image_max_abs_u8"].as_u64().unwrap() as u8, "image differs by {diff}");
}

/// What diffusers' `train_lcm_distill_lora_sdxl.py` saves: PEFT `unet.*` names on every layer
/// kind it trains (one layer of each here), B zero as at the start of training.
fn write_lcm_lora() -> PathBuf {
    let unet = loading::load(sdxl().join("base"), &load_options()).unwrap().unet;
    let layers = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.resnets.0.conv2",
        "down_blocks.0.resnets.0.time_emb_proj",
        "down_blocks.0.downsamplers.0.conv",
        "up_blocks.0.upsamplers.0.conv",
    ];
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    for layer in layers {
        let shape = unet.shape(&format!("{layer}.weight")).unwrap().to_vec();
        let (down, up): (Vec<usize>, Vec<usize>) = match shape.as_slice() {
            [o, i] => (vec![2, *i], vec![*o, 2]),
            [o, i, k, l] => (vec![2, *i, *k, *l], vec![*o, 2, 1, 1]),
            s => panic!("{layer}: {s:?}"),
        };
        map.insert(format!("unet.{layer}.lora_A.weight"), Tensor::randn(0f32, 1.0, down, &dev).unwrap());
        map.insert(format!("unet.{layer}.lora_B.weight"), Tensor::zeros(up, DType::F32, &dev).unwrap());
    }
    let dir = std::env::temp_dir().join(format!("kairos-pipeline-sdxl-lcm-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lcm-lora-sdxl.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

/// The CLI's LCM defaults (lcm sampler, 4 steps, guidance 1) key on `lcm`, as on SD1; the lcm
/// sampler itself is exercised on SD1 in lora_txt2img.rs.
#[test]
fn sdxl_lcm_lora_is_detected() {
    let path = write_lcm_lora();
    let sd = load(vec![LoraWeights { path: path.clone(), unet_strength: 1.0, text_encoder_strength: 1.0 }]);
    assert_eq!(sd.lcm, Some(LcmKind::Lora));
    assert!(sd.components().consistency.is_some(), "an LCM-LoRA runs through LCM's boundary conditions");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
