//! `kairos bench`: times the full-size SD1.5 text encoder, UNet (batch 1 and 2) and VAE decoder
//! on the CPU with seeded random weights (the cost of a dense network does not depend on the
//! values), and reports seconds, GFLOP/s from an architecture FLOP count ([`flops`]) and the
//! peak resident memory. A large GEMM through the same library gives the attainable GFLOP/s.
//! Optionally, whole txt2img runs (CFG, and LCM) through kairos-pipeline on the same networks.
//! `tools/bench/pytorch_bench.py` runs the same shapes with diffusers for side-by-side numbers.

pub mod flops;
pub mod presets;
mod weights;

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig};
use kairos_models::lcm::{lcm_timesteps, LcmOptions};
use kairos_models::prompt::PromptOptions;
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use kairos_models::unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_pipeline::conditioning::ClipPromptEncoder;
use kairos_pipeline::models::Vae;
use kairos_pipeline::{txt2img, Components, PromptSyntax, Txt2ImgRequest, Unet};
use kairos_sampler::Sampler;
use kairos_schedule::{DiscreteSchedule, Family, ModelSchedule, Prediction, ScheduleKind, TablePrecision};
use serde::Serialize;

pub use weights::seeded_var_builder;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Building or running a model failed.
    #[error(transparent)]
    Model(#[from] kairos_models::ModelError),
    /// Building or running the text encoder failed.
    #[error(transparent)]
    TextEncoder(#[from] kairos_models::text_encoders::TextEncoderError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A preset did not parse.
    #[error("preset config: {0}")]
    Preset(#[from] serde_json::Error),
    /// A whole txt2img run failed.
    #[error(transparent)]
    Pipeline(#[from] kairos_pipeline::PipelineError),
    /// A resolution that the VAE's 8× downscaling cannot represent.
    #[error("resolution {resolution} must be a positive multiple of 8")]
    Resolution {
        /// The requested resolution.
        resolution: usize,
    },
}

/// A network that `kairos bench` times case by case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The CLIP text encoder (77 tokens, batch 2).
    TextEncoder,
    /// The UNet at each resolution and batch size.
    Unet,
    /// The VAE decoder at each resolution.
    Vae,
}

impl std::str::FromStr for Component {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text-encoder" | "text_encoder" => Ok(Component::TextEncoder),
            "unet" => Ok(Component::Unet),
            "vae" => Ok(Component::Vae),
            _ => Err(format!("unknown component `{s}`: use text-encoder, unet or vae")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The networks timed on their own (the whole-txt2img cases run whatever this says).
    pub components: Vec<Component>,
    /// Image resolutions (square), e.g. `[256, 512]`.
    pub resolutions: Vec<usize>,
    /// UNet batch sizes, e.g. `[1, 2]` (2 is one CFG step).
    pub unet_batches: Vec<usize>,
    /// Timed repetitions of each case; the minimum and mean are reported.
    pub repeats: usize,
    /// Seed of the random weights.
    pub seed: u64,
    /// Side of the square f32 GEMM that measures the attainable GFLOP/s (0 skips it); the bf16
    /// GEMM of the same size is timed too where the CPU runs it fast.
    pub gemm_size: usize,
    /// Steps of a whole txt2img at the largest resolution: `dpmpp_2m`, `karras`, CFG 7.5
    /// (0 skips it).
    pub txt2img_steps: usize,
    /// Steps of a whole LCM txt2img at the largest resolution: the `lcm` sampler on LCMScheduler's
    /// timesteps, guidance 1 (an LCM-LoRA's setting: no unconditional batch) (0 skips it).
    pub lcm_steps: usize,
    /// Compute device (the reference GEMMs run on the CPU only).
    pub device: Device,
    /// Dtype of the weights (see `kairos_kernels::nn`: bf16/f16 weights compute with f32
    /// activations on the CPU). For bf16/f16 the UNet's output on the first UNet case is also
    /// compared with the f32 UNet's.
    pub dtype: DType,
}

/// How far the reduced-precision UNet's output is from the f32 UNet's on the same input.
#[derive(Debug, Clone, Serialize)]
pub struct UnetDifference {
    /// The case compared, e.g. `unet b1 512`.
    pub case: String,
    /// `max |out - out_f32|`.
    pub max_abs: f64,
    /// `max |out - out_f32| / max |out_f32|`.
    pub max_abs_over_range: f64,
    /// `max |out - out_f32| / (|out_f32| + 1e-3·max |out_f32|)`: elementwise relative error,
    /// with a floor so that outputs near zero do not dominate.
    pub max_rel: f64,
    /// Root mean square of `out - out_f32` over that of `out_f32`.
    pub rms_rel: f64,
}

/// One timed case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// e.g. `unet b2 512`.
    pub name: String,
    /// Fastest repetition, seconds.
    pub seconds_min: f64,
    /// Mean of the repetitions, seconds.
    pub seconds_mean: f64,
    /// FLOPs of one run (architecture count).
    pub gflop: f64,
    /// `gflop / seconds_min`.
    pub gflops_per_s: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Rayon (and so candle/gemm) worker threads.
    pub threads: usize,
    /// The timed cases, in order.
    pub cases: Vec<CaseResult>,
    /// Peak resident memory of the process (VmHWM) over the timed cases, MiB, if the OS
    /// reports it (the f32 reference UNet of the comparison comes after).
    pub peak_rss_mib: Option<f64>,
    /// Weight dtype.
    pub dtype: String,
    /// The instruction set of the bf16 GEMM (`amx-bf16`, `avx512-bf16` or `scalar`).
    pub bf16_kernel: &'static str,
    /// The bf16/f16 UNet against the f32 one (`None` for f32 runs or without UNet cases).
    pub unet_difference: Option<UnetDifference>,
}

/// Compares `out` with the reference `want` (same shape).
fn difference(case: String, out: &Tensor, want: &Tensor) -> Result<UnetDifference, BenchError> {
    let (out, want) = (out.to_dtype(DType::F64)?, want.to_dtype(DType::F64)?);
    let diff = (&out - &want)?.abs()?;
    let range = want.abs()?.max_all()?.to_scalar::<f64>()?;
    let max_abs = diff.max_all()?.to_scalar::<f64>()?;
    let floor = (want.abs()? + 1e-3 * range)?;
    let max_rel = (&diff / floor)?.max_all()?.to_scalar::<f64>()?;
    let rms = |t: &Tensor| -> candle_core::Result<f64> { t.sqr()?.mean_all()?.to_scalar::<f64>().map(f64::sqrt) };
    Ok(UnetDifference {
        case,
        max_abs,
        max_abs_over_range: max_abs / range,
        max_rel,
        rms_rel: rms(&diff)? / rms(&want)?,
    })
}

/// The process's resident-memory high-water mark (`VmHWM` in `/proc/self/status`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Times `f` `repeats` times and reports it as `name`. There is no warm-up run: the first call
/// is kept, since a sampler's first step pays the same one-off costs.
fn time_case(
    name: String,
    gflop: f64,
    repeats: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<(), BenchError>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<CaseResult, BenchError> {
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        // GPU kernels run asynchronously: the case ends when the device is done.
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let case = CaseResult { name, seconds_min: min, seconds_mean: mean, gflop, gflops_per_s: gflop / min };
    report(&case);
    Ok(case)
}

/// `n×n` f32 GEMM through the `gemm` crate (the library candle's CPU matmul uses), as a ceiling.
fn gemm_case(n: usize, repeats: usize, report: &mut dyn FnMut(&CaseResult)) -> Result<CaseResult, BenchError> {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = gemm::Parallelism::Rayon(candle_core::utils::get_num_threads());
    time_case(
        format!("gemm f32 {n}x{n}"),
        2.0 * (n as f64).powi(3) / 1e9,
        repeats,
        &Device::Cpu,
        || {
            // SAFETY: a, b, c are n×n row-major buffers of exactly n² elements.
            unsafe {
                gemm::gemm(
                    n,
                    n,
                    n,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    n as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    threads,
                );
            }
            Ok(())
        },
        report,
    )
}

/// `n×n` GEMM with bf16 inputs and f32 accumulation ([`kairos_kernels::gemm_bf16`]): the weight
/// operand `B` is packed once outside the timing (as a layer's weight is), `A` is packed from
/// f32 inside it (as activations are, per call). `None` where the CPU lacks AVX512-BF16.
fn gemm_bf16_case(
    n: usize,
    repeats: usize,
    report: &mut dyn FnMut(&CaseResult),
) -> Option<Result<CaseResult, BenchError>> {
    use kairos_kernels::gemm_bf16::{self, MatRef, PackedA, PackedB};
    if !gemm_bf16::available() {
        return None;
    }
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let a_view = MatRef::row_major(&a, n, n)?;
    let packed_b = PackedB::new(MatRef::row_major(&b, n, n)?);
    Some(time_case(
        format!("gemm bf16 {n}x{n}"),
        2.0 * (n as f64).powi(3) / 1e9,
        repeats,
        &Device::Cpu,
        || {
            gemm_bf16::gemm(&PackedA::new(a_view), &packed_b, &mut c, n, 1.0, false, true);
            Ok(())
        },
        report,
    ))
}

/// Runs the benchmark, calling `report` after each case (for progress output).
pub fn run(opts: &BenchOptions, mut report: impl FnMut(&CaseResult)) -> Result<BenchReport, BenchError> {
    let device = opts.device.clone();
    let dtype = opts.dtype;
    let mut cases = Vec::new();
    if let Some(&r) = opts.resolutions.iter().find(|&&r| r == 0 || r % 8 != 0) {
        return Err(BenchError::Resolution { resolution: r });
    }
    if opts.gemm_size > 0 && device.is_cpu() {
        cases.push(gemm_case(opts.gemm_size, opts.repeats, &mut report)?);
        if let Some(case) = gemm_bf16_case(opts.gemm_size, opts.repeats, &mut report) {
            cases.push(case?);
        }
    }

    let timed = |c: Component| opts.components.contains(&c);
    if timed(Component::TextEncoder) {
        text_encoder_case(opts, &device, &mut cases, &mut report)?;
    }
    let mut first = None;
    if timed(Component::Unet) {
        first = unet_cases(opts, &device, &mut cases, &mut report)?;
    }
    if timed(Component::Vae) {
        vae_cases(opts, &device, &mut cases, &mut report)?;
    }
    if let Some(&res) = opts.resolutions.iter().max().filter(|_| opts.txt2img_steps > 0 || opts.lcm_steps > 0) {
        cases.extend(txt2img_cases(opts, res, &mut report)?);
    }
    // The peak of the timed cases, before the f32 reference UNet is built for the comparison.
    let peak_rss_mib = peak_rss_mib();
    let unet_difference = match first {
        Some((name, sample, context, out)) if dtype != DType::F32 => {
            let unet_cfg = UNet2DConditionModelConfig::from_json(presets::SD15_UNET)?;
            let reference =
                UNet2DConditionModel::new(seeded_var_builder(opts.seed, DType::F32, &device).pp("unet"), &unet_cfg)?;
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            let want = reference.forward(&f32(&sample)?, 500.0, &f32(&context)?, None, None)?;
            Some(difference(name, &out, &want)?)
        }
        _ => None,
    };

    Ok(BenchReport {
        threads: candle_core::utils::get_num_threads(),
        cases,
        peak_rss_mib,
        dtype: format!("{dtype:?}").to_lowercase(),
        bf16_kernel: kairos_kernels::gemm_bf16::kernel_name(),
        unet_difference,
    })
}

/// The first UNet case's name, inputs and output, kept for the comparison with f32.
type FirstUnetCase = (String, Tensor, Tensor, Tensor);

/// The text encoder: 77 tokens, batch 2 (prompt and negative prompt).
fn text_encoder_case(
    opts: &BenchOptions,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<(), BenchError> {
    let clip_cfg = CLIPTextConfig::from_json(presets::SD15_TEXT_ENCODER)?;
    let clip = CLIPTextModel::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("text_encoder"), &clip_cfg)?;
    let ids: Vec<u32> = (0..2 * 77u32).map(|i| (i * 7919) % clip_cfg.vocab_size as u32).collect();
    let ids = Tensor::from_vec(ids, (2, 77), device)?;
    cases.push(time_case(
        "text_encoder b2".into(),
        flops::clip_text(&clip_cfg, 2, 77) / 1e9,
        opts.repeats,
        device,
        || {
            clip.forward(&ids)?;
            Ok(())
        },
        report,
    )?);
    Ok(())
}

/// One UNet call at each resolution and batch size.
fn unet_cases(
    opts: &BenchOptions,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<Option<FirstUnetCase>, BenchError> {
    let act = kairos_kernels::nn::activation_dtype(opts.dtype, device);
    let unet_json: serde_json::Value = serde_json::from_str(presets::SD15_UNET)?;
    let unet_cfg = UNet2DConditionModelConfig::from_json(presets::SD15_UNET)?;
    let unet = UNet2DConditionModel::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("unet"), &unet_cfg)?;
    let shape = unet_shape(&unet_json);
    let mut first = None;
    for &res in &opts.resolutions {
        let lat = res / 8;
        for &batch in &opts.unet_batches {
            let sample = Tensor::randn(0f32, 1.0, (batch, 4, lat, lat), device)?.to_dtype(act)?;
            let context = Tensor::randn(0f32, 1.0, (batch, 77, 768), device)?.to_dtype(act)?;
            let gflop = flops::unet(&shape, batch, lat, lat) / 1e9;
            let name = format!("unet b{batch} {res}");
            let mut out = None;
            cases.push(time_case(
                name.clone(),
                gflop,
                opts.repeats,
                device,
                || {
                    out = Some(unet.forward(&sample, 500.0, &context, None, None)?);
                    Ok(())
                },
                report,
            )?);
            if let (None, Some(out)) = (&first, out) {
                first = Some((name, sample, context, out));
            }
        }
    }
    Ok(first)
}

/// One VAE decode (batch 1) at each resolution.
fn vae_cases(
    opts: &BenchOptions,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<(), BenchError> {
    let act = kairos_kernels::nn::activation_dtype(opts.dtype, device);
    let vae_cfg = AutoencoderKLConfig::from_json(&serde_json::from_str(presets::SD15_VAE)?)?;
    let vae = AutoencoderKL::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("vae"), &vae_cfg)?;
    for &res in &opts.resolutions {
        let lat = res / 8;
        let z = Tensor::randn(0f32, 1.0, (1, 4, lat, lat), device)?.to_dtype(act)?;
        cases.push(time_case(
            format!("vae_decode b1 {res}"),
            flops::vae_decode(&vae_cfg, 1, lat, lat) / 1e9,
            opts.repeats,
            device,
            || {
                vae.decode(&z)?;
                Ok(())
            },
            report,
        )?);
    }
    Ok(())
}

/// Whole `res`² txt2img runs through kairos-pipeline (prompt encoding, the sampler loop, VAE
/// decode) on the same seeded networks: CFG with `dpmpp_2m`/`karras`, and LCM.
fn txt2img_cases(
    opts: &BenchOptions,
    res: usize,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, BenchError> {
    let (device, dtype) = (opts.device.clone(), opts.dtype);
    let vb = |prefix: &str| seeded_var_builder(opts.seed, dtype, &device).pp(prefix);
    let clip_cfg = CLIPTextConfig::from_json(presets::SD15_TEXT_ENCODER)?;
    let unet_json: serde_json::Value = serde_json::from_str(presets::SD15_UNET)?;
    let unet_cfg = UNet2DConditionModelConfig::from_json(presets::SD15_UNET)?;
    let vae_cfg = AutoencoderKLConfig::from_json(&serde_json::from_str(presets::SD15_VAE)?)?;
    let encoder = ClipPromptEncoder::new(
        CLIPTextModel::new(vb("text_encoder"), &clip_cfg)?,
        CLIPTokenizer::new(PadToken::EndOfText).map_err(kairos_pipeline::PipelineError::from)?,
        PromptSyntax::A1111,
        PromptOptions::default(),
    );
    let model = Unet::new(UNet2DConditionModel::new(vb("unet"), &unet_cfg)?, dtype);
    let vae = Vae::new(AutoencoderKL::new(vb("vae"), &vae_cfg)?, dtype);
    let mut components = Components {
        model: &model,
        encoder: &encoder,
        decoder: &vae,
        image_encoder: &vae,
        family: Family::Sd1,
        time_ids: None,
        schedule: ModelSchedule::Discrete(DiscreteSchedule::sd(TablePrecision::DiffusersF32)),
        prediction: Prediction::Epsilon,
        consistency: None,
        device: device.clone(),
    };
    let lat = res / 8;
    // Prompt and negative prompt are encoded one at a time (batch 1 each).
    let fixed = 2.0 * flops::clip_text(&clip_cfg, 1, 77) + flops::vae_decode(&vae_cfg, 1, lat, lat);
    let unet_gflop = |batch| flops::unet(&unet_shape(&unet_json), batch, lat, lat);
    let base = Txt2ImgRequest { prompt: "a photo of a cat".into(), width: res, height: res, ..Default::default() };
    let mut cases = Vec::new();
    let mut run = |c: &Components<'_>, req: &Txt2ImgRequest, name: String, gflop: f64| {
        let run_once = || txt2img(c, req, &mut |_| ControlFlow::Continue(())).map(drop).map_err(BenchError::from);
        time_case(name, gflop / 1e9, opts.repeats, &device, run_once, report).map(|case| cases.push(case))
    };
    if opts.txt2img_steps > 0 {
        let n = opts.txt2img_steps;
        let req = Txt2ImgRequest { steps: n, ..base.clone() };
        run(&components, &req, format!("txt2img {res} cfg {n} steps"), fixed + n as f64 * unet_gflop(2))?;
    }
    if opts.lcm_steps > 0 {
        let n = opts.lcm_steps;
        components.consistency = Some(LcmOptions::default());
        let timesteps = lcm_timesteps(n, 1.0, &LcmOptions::default())?;
        let req = Txt2ImgRequest {
            steps: n,
            cfg_scale: 1.0,
            sampler: Sampler::Lcm,
            schedule: ScheduleKind::Timesteps(timesteps.iter().map(|&t| t as f64).collect()),
            ..base
        };
        run(&components, &req, format!("txt2img {res} lcm {n} steps"), fixed + n as f64 * unet_gflop(1))?;
    }
    Ok(cases)
}

/// The FLOP-count view of a diffusers UNet `config.json`.
fn unet_shape(cfg: &serde_json::Value) -> flops::UNetShape {
    let usizes = |key: &str| -> Vec<usize> {
        cfg[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
            .unwrap_or_default()
    };
    flops::UNetShape {
        block_out_channels: usizes("block_out_channels"),
        layers_per_block: cfg["layers_per_block"].as_u64().unwrap_or(2) as usize,
        down_attention: cfg["down_block_types"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().is_some_and(|t| t.starts_with("CrossAttn"))).collect())
            .unwrap_or_default(),
        cross_attention_dim: cfg["cross_attention_dim"].as_u64().unwrap_or(768) as usize,
        in_channels: cfg["in_channels"].as_u64().unwrap_or(4) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The architecture counts against published figures: the SD1.5 UNet is ≈ 0.8 TFLOP per
    /// 512² image (one latent, 64×64), CLIP-L text ≈ 13 GFLOP (2·params·tokens, 123M params ×
    /// 77 tokens minus embeddings), the VAE decoder ≈ 2.5 TFLOP at 512².
    #[test]
    fn flop_counts_match_published_magnitudes() {
        let unet = flops::unet(&unet_shape(&serde_json::from_str(presets::SD15_UNET).unwrap()), 1, 64, 64) / 1e9;
        assert!((700.0..900.0).contains(&unet), "unet {unet} GFLOP");
        let clip = flops::clip_text(&CLIPTextConfig::from_json(presets::SD15_TEXT_ENCODER).unwrap(), 1, 77) / 1e9;
        assert!((10.0..15.0).contains(&clip), "clip {clip} GFLOP");
        let vae_cfg = AutoencoderKLConfig::from_json(&serde_json::from_str(presets::SD15_VAE).unwrap()).unwrap();
        let vae = flops::vae_decode(&vae_cfg, 1, 64, 64) / 1e9;
        assert!((2000.0..3000.0).contains(&vae), "vae {vae} GFLOP");
    }
}
