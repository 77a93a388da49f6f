//! SDXL parity with diffusers' `StableDiffusionXLPipeline` / `StableDiffusionXLImg2ImgPipeline`
//! on the tiny SDXL base and refiner of kairos-models' fixtures (`tools/fixtures/sdxl_pipeline.py`):
//! final latents and the decoded 8-bit image for Euler with leading spacing, DPM++ 2M Karras
//! (batch 2), DPM++ 2M on the AYS SDXL timesteps with the zeroed empty negative prompt, Euler
//! ancestral with trailing spacing and CFG off (SDXL-Turbo style), `prompt_2`, size/crop
//! conditioning, img2img, and the base → refiner ensemble of experts.
//!
//! Tolerance (the fixture's): final latents within 1e-5 × max|latent| (float32 on both sides
//! from the same weights; the script measured diffusers' float32 against float64 at ≤ 1.8e-6),
//! images equal in 8 bits up to 1 level where a value sits on a rounding boundary.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use kairos_models::loading::{ConfigHints, LoadOptions};
use kairos_pipeline::txt2img::request_sigmas;
use kairos_pipeline::{
    decode_latents, refine_latents, txt2img, txt2img_latents, InitImage, InitialNoise, ModelOptions, PromptSyntax,
    ResizeMode, RgbImage, SizeConditioning, StableDiffusion, TimestepMode, Txt2ImgOutput, Txt2ImgRequest,
};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::Sampler;
use kairos_schedule::{ScheduleKind, TablePrecision};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/sdxl")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("sdxl_pipeline.json")).unwrap()).unwrap()
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("sdxl_pipeline_io.safetensors"), &Device::Cpu).unwrap()
}

/// The tiny models' text-encoder heads are 8 wide (a hint); every timestep the fixtures feed is
/// an integer (leading/trailing spacing, DPM-Solver's rounding), with diffusers' float32 table.
fn load(model: &str, syntax: PromptSyntax) -> StableDiffusion {
    let opts = ModelOptions {
        load: LoadOptions {
            hints: ConfigHints { clip_head_dim: 8, ..ConfigHints::default() },
            variant: Some("fp16".into()),
            ..Default::default()
        },
        timestep_mode: TimestepMode::Quantized,
        table_precision: TablePrecision::DiffusersF32,
        prompt_syntax: syntax,
        ..Default::default()
    };
    StableDiffusion::load(models().join(model), &opts).unwrap()
}

fn size(v: &Value) -> Option<(usize, usize)> {
    v.as_array().map(|a| (a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize))
}

/// The kairos request for a case's diffusers arguments.
fn request(case: &Value) -> Txt2ImgRequest {
    let args = if case["arguments"].is_object() { &case["arguments"] } else { &case["base"]["arguments"] };
    let text = |k: &str| args[k].as_str().map(str::to_string);
    let overrides = &case["scheduler_overrides"];
    let scheduler = case["diffusers_scheduler"].as_str().unwrap_or("EulerDiscreteScheduler");
    let (sampler, schedule) = match scheduler {
        "EulerDiscreteScheduler" => ("euler", ScheduleKind::from_name("leading").unwrap()),
        "EulerAncestralDiscreteScheduler" => {
            assert_eq!(overrides["timestep_spacing"], "trailing");
            ("euler_ancestral", ScheduleKind::from_name("trailing").unwrap())
        }
        "DPMSolverMultistepScheduler" if overrides["use_karras_sigmas"] == true => {
            ("dpmpp_2m", ScheduleKind::Karras { rho: 7.0 })
        }
        "DPMSolverMultistepScheduler" => {
            let ts = args["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            ("dpmpp_2m", ScheduleKind::Timesteps(ts))
        }
        other => panic!("unknown scheduler {other}"),
    };
    let steps = args["num_inference_steps"].as_u64().or(args["timesteps"].as_array().map(|t| t.len() as u64));
    // diffusers' Euler schedulers scale the first noise by σ_max for trailing/linspace spacing
    // (`init_noise_sigma`), by sqrt(σ_max² + 1) otherwise (and DPM-Solver's unit-variance VP
    // latent is the latter in k-diffusion's VE scale).
    let init_noise_sigma = case["init_noise_sigma"].as_f64().or(case["base"]["init_noise_sigma"].as_f64()).unwrap();
    let sigma_init = (init_noise_sigma - 14.614646911621094).abs() < 1e-6;
    // diffusers turns guidance off for any scale ≤ 1 (SDXL-Turbo's `guidance_scale=0.0`); kairos
    // applies scales as written (A1111, ComfyUI), where 1 is "off".
    let guidance = args["guidance_scale"].as_f64().unwrap();
    Txt2ImgRequest {
        prompt: text("prompt").unwrap(),
        negative_prompt: text("negative_prompt").unwrap_or_default(),
        prompt_2: text("prompt_2"),
        negative_prompt_2: text("negative_prompt_2"),
        size_conditioning: SizeConditioning {
            original_size: size(&args["original_size"]),
            crop: size(&args["crops_coords_top_left"]).unwrap_or((0, 0)),
            target_size: size(&args["target_size"]),
            ..SizeConditioning::default()
        },
        width: case["width"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        steps: steps.unwrap() as usize,
        cfg_scale: if guidance <= 1.0 { 1.0 } else { guidance },
        sampler: Sampler::from_name(sampler).unwrap(),
        schedule,
        seed: case["seed"].as_u64().or(case["base"]["seed"].as_u64()).unwrap(),
        batch_size: args["num_images_per_prompt"].as_u64().unwrap_or(1) as usize,
        batch_count: 1,
        rng: RngKind::TorchCpu,
        seeding: BatchSeeding::Shared,
        initial_noise: if sigma_init { InitialNoise::Sigma } else { InitialNoise::SqrtOnePlusSigmaSquared },
        ..Default::default()
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn assert_latents(name: &str, got: &Tensor, want: &Tensor) {
    let err = max_abs(&(got.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap()).unwrap());
    let scale = max_abs(want);
    eprintln!("{name}: latents max abs err {err:.3e} (max |latent| {scale:.2}, rel {:.3e})", err / scale);
    assert!(err <= 1e-5 * scale, "{name}: latents max abs err {err} > 1e-5 x {scale}");
}

fn assert_image(name: &str, out: &Txt2ImgOutput, want: &Tensor) {
    let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let got: Vec<u8> = out.batches[0].images.iter().flat_map(|i| i.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(diff <= 1, "{name}: image differs by {diff}");
}

fn assert_sigmas(name: &str, got: &[f64], want: &Value) {
    let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{name}: sigmas {got:?} vs {want:?}");
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{name}: sigma {a} vs {b}");
    }
}

fn run_case(name: &str) {
    let json = cases();
    let case = json["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    let io = io();
    let sd = load("base", PromptSyntax::Diffusers);
    let components = sd.components();
    let mut req = request(case);
    if case["pipeline"] == "StableDiffusionXLImg2ImgPipeline" {
        let pixels = io["init_image"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        req.init_image = Some(InitImage {
            image: RgbImage { width: req.width, height: req.height, data: pixels },
            strength: case["arguments"]["strength"].as_f64().unwrap(),
            resize_mode: ResizeMode::JustResize,
            denoise_rule: None,
        });
    }
    assert_sigmas(name, &request_sigmas(&components, &req).unwrap(), &case["sigmas_run"]);
    let out = txt2img(&components, &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_latents(name, &out.batches[0].latents, &io[&format!("{name}.latents")]);
    assert_image(name, &out, &io[&format!("{name}.image")]);
}

#[test]
fn euler_leading_matches_diffusers() {
    run_case("a_euler_leading_cfg5");
}

#[test]
fn dpmpp_2m_karras_batch_of_two_matches_diffusers() {
    run_case("b_dpmpp_2m_karras_batch2");
}

/// The seeds' AYS example: DPM++ 2M on `timesteps=[999, 845, …, 13]`, and no negative prompt,
/// which SDXL conditions on zeros (`force_zeros_for_empty_prompt`).
#[test]
fn dpmpp_2m_ays_timesteps_zero_negative_matches_diffusers() {
    run_case("c_dpmpp_2m_timesteps_zero_negative");
}

/// SDXL-Turbo's recipe: Euler ancestral, trailing spacing, guidance 0, 1 and 4 steps.
#[test]
fn turbo_style_euler_ancestral_trailing_matches_diffusers() {
    run_case("d_euler_ancestral_trailing_1step_cfg0");
    run_case("d_euler_ancestral_trailing_4steps_cfg0");
}

#[test]
fn prompt_2_matches_diffusers() {
    run_case("e_euler_prompt_2");
}

#[test]
fn size_and_crop_conditioning_match_diffusers() {
    run_case("f_euler_size_conditioning");
}

#[test]
fn img2img_matches_diffusers() {
    run_case("g_img2img_strength_0.6");
}

/// The ensemble of experts: the base runs the leading-spaced schedule down to
/// `denoising_end = 0.8` (t ≥ 200) and hands its noisy latents to the refiner
/// (`denoising_start = 0.8`: bigG alone, aesthetic-score time ids), which finishes it.
#[test]
fn base_to_refiner_handoff_matches_diffusers() {
    let name = "h_ensemble_base_refiner";
    let json = cases();
    let case = json["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    let io = io();
    let fraction = case["base"]["arguments"]["denoising_end"].as_f64().unwrap();
    let mut req = request(case);
    req.denoising_end = Some(fraction);
    let base = load("base", PromptSyntax::Diffusers);
    let handoff = txt2img_latents(&base.components(), &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_sigmas(name, &handoff.sigmas, &case["base"]["sigmas_run"]);
    assert_latents("hand-off", &handoff.batches[0].latents, &io[&format!("{name}.handoff_latents")]);

    let refiner = load("refiner", PromptSyntax::Diffusers);
    let r = refiner.components();
    let refine_req = Txt2ImgRequest { seed: case["refiner"]["seed"].as_u64().unwrap(), ..req.clone() };
    let mut out = refine_latents(&r, &refine_req, fraction, &handoff, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_sigmas(name, &out.sigmas, &case["refiner"]["sigmas_run"]);
    assert_latents(name, &out.batches[0].latents, &io[&format!("{name}.latents")]);
    decode_latents(r.decoder, &mut out, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_image(name, &out, &io[&format!("{name}.image")]);

    // A split that leaves one expert nothing is an error, not an empty run.
    let bad = Txt2ImgRequest { denoising_end: Some(0.999), ..req };
    let err = txt2img_latents(&base.components(), &bad, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("denoising_end"), "{err}");
}

/// The A1111 syntax gives diffusers' embeddings for a plain prompt on both encoders (and
/// weights apply per encoder): the same run through the A1111 parser.
#[test]
fn a1111_syntax_plain_prompt_equals_diffusers() {
    let json = cases();
    let case = json["cases"].as_array().unwrap().iter().find(|c| c["name"] == "a_euler_leading_cfg5").unwrap();
    let sd = load("sdxl_base.safetensors", PromptSyntax::A1111);
    let out = txt2img(&sd.components(), &request(case), &mut |_| ControlFlow::Continue(())).unwrap();
    assert_latents("a1111 syntax, single file", &out.batches[0].latents, &io()["a_euler_leading_cfg5.latents"]);
}
