//! txt2img parity with diffusers' `StableDiffusionPipeline` on tiny SD1 / SD2-v checkpoints
//! (fixtures: `tools/fixtures/pipeline.py`): final latents and the decoded 8-bit image, for
//! Euler, DPM++ 2M with Karras sigmas, Euler ancestral (batch of 2 on one generator) and AYS
//! timesteps.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use kairos_models::loading::{ConfigHints, LoadOptions, UnetHeads};
use kairos_models::prompt::PromptOptions;
use kairos_pipeline::{txt2img, ModelOptions, PromptSyntax, StableDiffusion, TimestepMode, Txt2ImgRequest};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::Sampler;
use kairos_schedule::{ScheduleKind, TablePrecision};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny models' conventions (pipeline.json `meta.hints`): GroupNorm 4, CLIP head width 8,
/// SD2 UNet heads of 4 channels.
fn model_options(family: &str) -> ModelOptions {
    ModelOptions {
        load: LoadOptions {
            hints: ConfigHints {
                norm_num_groups: 4,
                clip_head_dim: 8,
                unet_heads: (family == "sd2").then_some(UnetHeads::Channels(4)),
            },
            ..Default::default()
        },
        // Every fixture case feeds the UNet integer timesteps (see the script), and diffusers
        // builds its sigma table in float32.
        timestep_mode: TimestepMode::Quantized,
        table_precision: TablePrecision::DiffusersF32,
        // SD1 cases go through the A1111 parser (a plain prompt gives diffusers' embeddings),
        // SD2 cases through diffusers' plain tokenization: both must match.
        prompt_syntax: if family == "sd1" { PromptSyntax::A1111 } else { PromptSyntax::Diffusers },
        prompt: PromptOptions::default(),
        ..Default::default()
    }
}

fn request(case: &Value) -> Txt2ImgRequest {
    let list = |k: &str| case[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>();
    let schedule = match case["schedule"].as_str().unwrap() {
        "karras" => ScheduleKind::Karras { rho: 7.0 },
        // diffusers' leading-spaced and AYS timesteps, as `--timesteps` gives them.
        "timesteps" | "ays_timesteps" => ScheduleKind::Timesteps(list("timesteps")),
        other => panic!("unknown schedule {other}"),
    };
    Txt2ImgRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        width: case["width"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        steps: case["steps"].as_u64().unwrap() as usize,
        cfg_scale: case["cfg"].as_f64().unwrap(),
        sampler: Sampler::from_name(case["sampler"].as_str().unwrap()).unwrap(),
        schedule,
        seed: case["seed"].as_u64().unwrap(),
        batch_size: case["batch"].as_u64().unwrap() as usize,
        batch_count: 1,
        rng: RngKind::TorchCpu,
        seeding: BatchSeeding::Shared,
        ..Default::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(candle_core::DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn run_case(name: &str) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline.json")).unwrap()).unwrap();
    let case = json["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let family = case["family"].as_str().unwrap();
    let sd =
        StableDiffusion::load(fixtures().join(format!("{family}_tiny.safetensors")), &model_options(family)).unwrap();
    assert_eq!(sd.prediction.scalings(1.0, 1.0).c_skip != 1.0, family == "sd2", "SD2 file detected as v-prediction");
    let components = sd.components();
    let req = request(case);

    // The sigmas: kairos' builders against diffusers' scheduler (float32): rel 1e-6.
    let sigmas = kairos_pipeline::txt2img::request_sigmas(&components, &req).unwrap();
    let want: Vec<f64> = case["sigmas"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(sigmas.len(), want.len());
    for (i, (a, b)) in sigmas.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: sigma {i}: {a} vs {b}");
    }

    let mut steps = 0;
    let out = txt2img(&components, &req, &mut |_| {
        steps += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(steps, sigmas.len() - 1 + 1, "one event per step plus the decode");
    let batch = &out.batches[0];
    let want_latents = &io[&format!("{name}.latents")];
    let err = max_abs_diff(&batch.latents, want_latents);
    let scale = max_abs(want_latents);
    // Same weights, float32 on CPU on both sides; differences are float32 rounding in other
    // operation orders (conv/matmul sums, c_in as a multiply, f64 sigmas), which the untrained
    // tiny UNet (outputs of order 10, so latents of order 10-50) amplifies over the steps:
    // 1e-5 of the largest |latent|.
    eprintln!("{name}: latents max abs err {err:.3e} (max |latent| {scale:.2}, rel {:.3e})", err / scale);
    assert!(err <= 1e-5 * scale, "{name}: latents max abs err {err} > 1e-5 x {scale}");

    let want_image = io[&format!("{name}.image")].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let got_image: Vec<u8> = batch.images.iter().flat_map(|i| i.data.iter().copied()).collect();
    assert_eq!(got_image.len(), want_image.len());
    let diff = got_image.iter().zip(&want_image).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    let off = got_image.iter().zip(&want_image).filter(|(a, b)| a != b).count();
    eprintln!("{name}: image max abs diff {diff} (u8), {off} of {} values differ", want_image.len());
    // A value within float32 rounding of a .5 boundary may round the other way: at most 1.
    assert!(diff <= 1, "{name}: image differs by {diff}");
}

#[test]
fn euler_matches_diffusers_sd1() {
    run_case("sd1_euler");
}

#[test]
fn dpmpp_2m_karras_matches_diffusers_sd1() {
    run_case("sd1_dpmpp_2m_karras");
}

#[test]
fn euler_ancestral_batch_of_two_matches_diffusers_sd1() {
    run_case("sd1_euler_ancestral_batch2");
}

#[test]
fn ays_timesteps_match_diffusers_sd1() {
    run_case("sd1_euler_ays");
}

#[test]
fn euler_matches_diffusers_sd2_v_prediction() {
    run_case("sd2v_euler");
}

#[test]
fn dpmpp_2m_karras_matches_diffusers_sd2_v_prediction_empty_prompt() {
    run_case("sd2v_dpmpp_2m_karras_empty_prompt");
}
