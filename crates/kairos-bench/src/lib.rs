//! `kairos bench`: times the full-size SD1.5 or SDXL base text encoder(s), UNet (batch 1 and 2)
//! and VAE decoder on the CPU with seeded random weights (the cost of a dense network does not
//! depend on the values), and reports seconds, GFLOP/s from an architecture FLOP count ([`flops`])
//! and the peak resident memory. A large GEMM through the same library gives the attainable
//! GFLOP/s. Optionally, whole txt2img runs (CFG, and LCM) through kairos-pipeline on the same
//! networks. `tools/bench/pytorch_bench.py` runs the same shapes with diffusers for side-by-side
//! numbers.

pub mod flops;
pub mod presets;
mod weights;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, TilingMode, TilingOptions};
use kairos_models::lcm::{lcm_timesteps, LcmOptions};
use kairos_models::prompt::PromptOptions;
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use kairos_models::unets::unet_2d_condition::{AddedCond, UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_pipeline::conditioning::{ClipPromptEncoder, PromptEncoder, SdxlPromptEncoder};
use kairos_pipeline::models::Vae;
use kairos_pipeline::{txt2img, Components, PromptSyntax, TimeIds, Txt2ImgRequest, Unet};
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
    /// The family needs a network whose config is missing.
    #[error("no config for {network}")]
    MissingConfig {
        /// e.g. `text_encoder_2`.
        network: &'static str,
    },
    /// A config override could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The architecture `kairos bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchFamily {
    /// stable-diffusion-v1-5: CLIP-L, the 4-level UNet, the SD VAE.
    #[default]
    Sd15,
    /// stable-diffusion-xl-base-1.0: CLIP-L and OpenCLIP-bigG, the 3-level `text_time` UNet, the
    /// SDXL VAE.
    Sdxl,
}

impl BenchFamily {
    /// The resolutions timed when none are given: 256 and 512 for SD1.5, 768 and 1024 (its
    /// native size) for SDXL.
    pub fn default_resolutions(self) -> Vec<usize> {
        match self {
            BenchFamily::Sd15 => vec![256, 512],
            BenchFamily::Sdxl => vec![768, 1024],
        }
    }
}

impl std::str::FromStr for BenchFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sd15" | "sd1.5" | "sd1" => Ok(BenchFamily::Sd15),
            "sdxl" => Ok(BenchFamily::Sdxl),
            _ => Err(format!("unknown family `{s}`: use sd15 or sdxl")),
        }
    }
}

/// The diffusers/transformers `config.json` texts the networks are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Configs {
    /// `unet/config.json`.
    pub unet: String,
    /// `vae/config.json`.
    pub vae: String,
    /// `text_encoder/config.json`.
    pub text_encoder: String,
    /// `text_encoder_2/config.json` (SDXL only).
    pub text_encoder_2: Option<String>,
}

impl Configs {
    /// The family's published configs ([`presets`]).
    pub fn preset(family: BenchFamily) -> Self {
        match family {
            BenchFamily::Sd15 => Self {
                unet: presets::SD15_UNET.into(),
                vae: presets::SD15_VAE.into(),
                text_encoder: presets::SD15_TEXT_ENCODER.into(),
                text_encoder_2: None,
            },
            BenchFamily::Sdxl => Self {
                unet: presets::SDXL_UNET.into(),
                vae: presets::SDXL_VAE.into(),
                text_encoder: presets::SDXL_TEXT_ENCODER.into(),
                text_encoder_2: Some(presets::SDXL_TEXT_ENCODER_2.into()),
            },
        }
    }

    /// These configs with each one that `dir` holds replaced: `unet.json`, `vae.json`,
    /// `text_encoder.json`, `text_encoder_2.json` (e.g. a tiny architecture for a quick check;
    /// `tools/bench/pytorch_bench.py --config-dir` reads the same files).
    pub fn with_overrides(mut self, dir: &Path) -> Result<Self, BenchError> {
        let read = |name: &str| -> Result<Option<String>, BenchError> {
            let path = dir.join(format!("{name}.json"));
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(BenchError::Io { path, source }),
            }
        };
        if !dir.is_dir() {
            return Err(BenchError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        if let Some(t) = read("unet")? {
            self.unet = t;
        }
        if let Some(t) = read("vae")? {
            self.vae = t;
        }
        if let Some(t) = read("text_encoder")? {
            self.text_encoder = t;
        }
        if let Some(t) = read("text_encoder_2")? {
            self.text_encoder_2 = Some(t);
        }
        Ok(self)
    }
}

/// A network that `kairos bench` times case by case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The CLIP text encoder(s) (77 tokens, batch 2).
    TextEncoder,
    /// The UNet at each resolution and batch size.
    Unet,
    /// The VAE decoder at each resolution (SDXL: at the largest).
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
    /// The architecture.
    pub family: BenchFamily,
    /// Its configs: [`Configs::preset`], or overrides.
    pub configs: Configs,
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
    let nets = Networks::parse(opts)?;
    if opts.gemm_size > 0 && device.is_cpu() {
        cases.push(gemm_case(opts.gemm_size, opts.repeats, &mut report)?);
        if let Some(case) = gemm_bf16_case(opts.gemm_size, opts.repeats, &mut report) {
            cases.push(case?);
        }
    }

    let timed = |c: Component| opts.components.contains(&c);
    if timed(Component::TextEncoder) {
        text_encoder_cases(opts, &nets, &device, &mut cases, &mut report)?;
    }
    let mut first = None;
    if timed(Component::Unet) {
        first = unet_cases(opts, &nets, &device, &mut cases, &mut report)?;
    }
    if timed(Component::Vae) {
        vae_cases(opts, &nets, &device, &mut cases, &mut report)?;
    }
    if let Some(&res) = opts.resolutions.iter().max().filter(|_| opts.txt2img_steps > 0 || opts.lcm_steps > 0) {
        cases.extend(txt2img_cases(opts, &nets, res, &mut report)?);
    }
    // The peak of the timed cases, before the f32 reference UNet is built for the comparison.
    let peak_rss_mib = peak_rss_mib();
    let unet_difference = match first {
        Some((name, inputs, out)) if dtype != DType::F32 => {
            let reference =
                UNet2DConditionModel::new(seeded_var_builder(opts.seed, DType::F32, &device).pp("unet"), &nets.unet)?;
            let inputs = inputs.to_dtype(DType::F32)?;
            let want = inputs.forward(&reference)?;
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

/// The parsed configs of one run.
struct Networks {
    family: BenchFamily,
    unet_json: serde_json::Value,
    unet: UNet2DConditionModelConfig,
    vae: AutoencoderKLConfig,
    text_encoder: CLIPTextConfig,
    /// SDXL's OpenCLIP-bigG (`CLIPTextModelWithProjection`).
    text_encoder_2: Option<CLIPTextConfig>,
}

impl Networks {
    fn parse(opts: &BenchOptions) -> Result<Self, BenchError> {
        let c = &opts.configs;
        let text_encoder_2 = match (opts.family, &c.text_encoder_2) {
            (BenchFamily::Sd15, _) => None,
            (BenchFamily::Sdxl, Some(json)) => Some(CLIPTextConfig::from_json(json)?),
            (BenchFamily::Sdxl, None) => return Err(BenchError::MissingConfig { network: "text_encoder_2" }),
        };
        Ok(Self {
            family: opts.family,
            unet_json: serde_json::from_str(&c.unet)?,
            unet: UNet2DConditionModelConfig::from_json(&c.unet)?,
            vae: AutoencoderKLConfig::from_json(&serde_json::from_str(&c.vae)?)?,
            text_encoder: CLIPTextConfig::from_json(&c.text_encoder)?,
            text_encoder_2,
        })
    }

    fn shape(&self) -> flops::UNetShape {
        unet_shape(&self.unet_json)
    }

    /// The UNet's inputs for `batch` latents of a `res`² image: random latents and context, and
    /// for a `text_time` (SDXL) UNet a random pooled text embedding and the size ids of a
    /// `res`² txt2img (original size, crop (0, 0), target size).
    fn unet_inputs(&self, batch: usize, res: usize, act: DType, device: &Device) -> Result<UnetInputs, BenchError> {
        let lat = res / 8;
        let shape = self.shape();
        let sample = Tensor::randn(0f32, 1.0, (batch, shape.in_channels, lat, lat), device)?.to_dtype(act)?;
        let context = Tensor::randn(0f32, 1.0, (batch, 77, shape.cross_attention_dim), device)?.to_dtype(act)?;
        let added = match (shape.addition_embed_input_dim, self.unet.addition_time_embed_dim) {
            (Some(width), Some(per_id)) => {
                let pooled = self.text_encoder_2.as_ref().map_or(1280, |c| c.projection_dim).min(width);
                let n_ids = (width - pooled) / per_id.max(1);
                let r = res as f32;
                let ids: Vec<f32> = [r, r, 0.0, 0.0, r, r].into_iter().cycle().take(n_ids).collect();
                let ids: Vec<f32> = (0..batch).flat_map(|_| ids.iter().copied()).collect();
                let text_embeds = Tensor::randn(0f32, 1.0, (batch, pooled), device)?.to_dtype(act)?;
                Some((text_embeds, Tensor::from_vec(ids, (batch, n_ids), device)?))
            }
            _ => None,
        };
        Ok(UnetInputs { sample, context, added })
    }
}

/// The inputs of one UNet call.
struct UnetInputs {
    sample: Tensor,
    context: Tensor,
    /// `text_embeds` (in the activation dtype) and `time_ids` (float32, as the pipeline passes
    /// them) of a `text_time` UNet.
    added: Option<(Tensor, Tensor)>,
}

impl UnetInputs {
    fn forward(&self, unet: &UNet2DConditionModel) -> Result<Tensor, BenchError> {
        let added = self.added.as_ref().map(|(text_embeds, time_ids)| AddedCond { text_embeds, time_ids });
        Ok(unet.forward(&self.sample, 500.0, &self.context, None, added.as_ref())?)
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self, BenchError> {
        Ok(Self {
            sample: self.sample.to_dtype(dtype)?,
            context: self.context.to_dtype(dtype)?,
            added: match &self.added {
                Some((t, ids)) => Some((t.to_dtype(dtype)?, ids.clone())),
                None => None,
            },
        })
    }
}

/// The first UNet case's name, inputs and output, kept for the comparison with f32.
type FirstUnetCase = (String, UnetInputs, Tensor);

/// The text encoder(s): 77 tokens, batch 2 (prompt and negative prompt); for SDXL CLIP-L
/// (`text_encoder b2`) and OpenCLIP-bigG with its projection (`text_encoder_2 b2`), one after the
/// other.
fn text_encoder_cases(
    opts: &BenchOptions,
    nets: &Networks,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<(), BenchError> {
    let ids = |vocab: usize| -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = (0..2 * 77u32).map(|i| (i * 7919) % vocab as u32).collect();
        Tensor::from_vec(ids, (2, 77), device)
    };
    {
        let clip_cfg = &nets.text_encoder;
        let clip = CLIPTextModel::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("text_encoder"), clip_cfg)?;
        let ids = ids(clip_cfg.vocab_size)?;
        cases.push(time_case(
            "text_encoder b2".into(),
            flops::clip_text(clip_cfg, 2, 77) / 1e9,
            opts.repeats,
            device,
            || {
                clip.forward(&ids)?;
                Ok(())
            },
            report,
        )?);
    }
    if let Some(cfg) = &nets.text_encoder_2 {
        let vb = seeded_var_builder(opts.seed, opts.dtype, device).pp("text_encoder_2");
        let clip = CLIPTextModelWithProjection::new(vb, cfg)?;
        let ids = ids(cfg.vocab_size)?;
        cases.push(time_case(
            "text_encoder_2 b2".into(),
            flops::clip_text_with_projection(cfg, 2, 77) / 1e9,
            opts.repeats,
            device,
            || {
                clip.forward(&ids)?;
                Ok(())
            },
            report,
        )?);
    }
    Ok(())
}

/// One UNet call at each resolution and batch size.
fn unet_cases(
    opts: &BenchOptions,
    nets: &Networks,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<Option<FirstUnetCase>, BenchError> {
    let act = kairos_kernels::nn::activation_dtype(opts.dtype, device);
    let unet = UNet2DConditionModel::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("unet"), &nets.unet)?;
    let shape = nets.shape();
    let mut first = None;
    for &res in &opts.resolutions {
        let lat = res / 8;
        for &batch in &opts.unet_batches {
            let inputs = nets.unet_inputs(batch, res, act, device)?;
            let gflop = flops::unet(&shape, batch, lat, lat) / 1e9;
            let name = format!("unet b{batch} {res}");
            let mut out = None;
            cases.push(time_case(
                name.clone(),
                gflop,
                opts.repeats,
                device,
                || {
                    out = Some(inputs.forward(&unet)?);
                    Ok(())
                },
                report,
            )?);
            if let (None, Some(out)) = (&first, out) {
                first = Some((name, inputs, out));
            }
        }
    }
    Ok(first)
}

/// One VAE decode (batch 1) at each resolution (SD1.5) or at the largest (SDXL).
fn vae_cases(
    opts: &BenchOptions,
    nets: &Networks,
    device: &Device,
    cases: &mut Vec<CaseResult>,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<(), BenchError> {
    let act = kairos_kernels::nn::activation_dtype(opts.dtype, device);
    let vae_cfg = &nets.vae;
    let vae = AutoencoderKL::new(seeded_var_builder(opts.seed, opts.dtype, device).pp("vae"), vae_cfg)?;
    let resolutions = match nets.family {
        BenchFamily::Sd15 => opts.resolutions.clone(),
        BenchFamily::Sdxl => opts.resolutions.iter().max().copied().into_iter().collect(),
    };
    for res in resolutions {
        let lat = res / 8;
        let z = Tensor::randn(0f32, 1.0, (1, vae_cfg.latent_channels, lat, lat), device)?.to_dtype(act)?;
        cases.push(time_case(
            format!("vae_decode b1 {res}"),
            flops::vae_decode(vae_cfg, 1, lat, lat) / 1e9,
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
/// decode) on the same seeded networks: CFG with `dpmpp_2m`/`karras`, and LCM. SDXL runs as
/// `kairos generate` runs the base model (both text encoders through `SdxlPromptEncoder`, the
/// empty negative prompt zeroed as `force_zeros_for_empty_prompt` says, size time ids), with the
/// VAE untiled as diffusers decodes.
fn txt2img_cases(
    opts: &BenchOptions,
    nets: &Networks,
    res: usize,
    report: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, BenchError> {
    let (device, dtype) = (opts.device.clone(), opts.dtype);
    let act = kairos_kernels::nn::activation_dtype(dtype, &device);
    let vb = |prefix: &str| seeded_var_builder(opts.seed, dtype, &device).pp(prefix);
    let clip_cfg = &nets.text_encoder;
    let vae_cfg = &nets.vae;
    let tokenizer = |pad| CLIPTokenizer::new(pad).map_err(kairos_pipeline::PipelineError::from);
    let lat = res / 8;
    let decode = flops::vae_decode(vae_cfg, 1, lat, lat);
    let (encoder, fixed, family, time_ids, vae): (Box<dyn PromptEncoder>, f64, Family, _, _) =
        match &nets.text_encoder_2 {
            None => (
                Box::new(ClipPromptEncoder::new(
                    CLIPTextModel::new(vb("text_encoder"), clip_cfg)?,
                    tokenizer(PadToken::EndOfText)?,
                    PromptSyntax::A1111,
                    PromptOptions::default(),
                )),
                // Prompt and negative prompt are encoded one at a time (batch 1 each).
                2.0 * flops::clip_text(clip_cfg, 1, 77) + decode,
                Family::Sd1,
                None,
                Vae::new(AutoencoderKL::new(vb("vae"), vae_cfg)?, act),
            ),
            Some(cfg2) => (
                Box::new(SdxlPromptEncoder::new(
                    Some((CLIPTextModel::new(vb("text_encoder"), clip_cfg)?, tokenizer(PadToken::EndOfText)?)),
                    CLIPTextModelWithProjection::new(vb("text_encoder_2"), cfg2)?,
                    tokenizer(PadToken::Exclamation)?,
                    PromptSyntax::A1111,
                    PromptOptions::default(),
                    true,
                )),
                // The prompt through both encoders; the empty negative prompt is zeros.
                flops::clip_text(clip_cfg, 1, 77) + flops::clip_text_with_projection(cfg2, 1, 77) + decode,
                Family::Sdxl,
                Some(TimeIds::Sizes),
                Vae::new(AutoencoderKL::new(vb("vae"), vae_cfg)?, act)
                    .with_tiling(TilingOptions { mode: TilingMode::Never, ..TilingOptions::default() }),
            ),
        };
    let model = Unet::new(UNet2DConditionModel::new(vb("unet"), &nets.unet)?, act);
    let mut components = Components {
        model: &model,
        encoder: encoder.as_ref(),
        decoder: &vae,
        image_encoder: &vae,
        family,
        time_ids,
        schedule: ModelSchedule::Discrete(DiscreteSchedule::sd(TablePrecision::DiffusersF32)),
        prediction: Prediction::Epsilon,
        consistency: None,
        device: device.clone(),
    };
    let shape = nets.shape();
    let unet_gflop = |batch| flops::unet(&shape, batch, lat, lat);
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
    let blocks = usizes("block_out_channels").len();
    // An integer applies to every block; a list is per down block.
    let transformer_layers_per_block = match cfg["transformer_layers_per_block"].as_u64() {
        Some(n) => vec![n as usize; blocks],
        None => usizes("transformer_layers_per_block"),
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
        transformer_layers_per_block,
        addition_embed_input_dim: match cfg["addition_embed_type"].as_str() {
            Some("text_time") => cfg["projection_class_embeddings_input_dim"].as_u64().map(|v| v as usize),
            _ => None,
        },
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

    /// The tiny SDXL of the CLI test and of `pytorch_bench.py --config-dir`.
    fn tiny_sdxl(name: &str) -> &'static str {
        match name {
            "unet" => include_str!("../../../tools/bench/tiny_sdxl/unet.json"),
            "vae" => include_str!("../../../tools/bench/tiny_sdxl/vae.json"),
            "text_encoder" => include_str!("../../../tools/bench/tiny_sdxl/text_encoder.json"),
            "text_encoder_2" => include_str!("../../../tools/bench/tiny_sdxl/text_encoder_2.json"),
            _ => unreachable!("{name}"),
        }
    }

    fn preset(name: &str) -> &'static str {
        match name {
            "SD15_UNET" => presets::SD15_UNET,
            "SD15_VAE" => presets::SD15_VAE,
            "SD15_TEXT_ENCODER" => presets::SD15_TEXT_ENCODER,
            "SDXL_UNET" => presets::SDXL_UNET,
            "SDXL_VAE" => presets::SDXL_VAE,
            "SDXL_TEXT_ENCODER" => presets::SDXL_TEXT_ENCODER,
            "SDXL_TEXT_ENCODER_2" => presets::SDXL_TEXT_ENCODER_2,
            tiny => tiny_sdxl(&tiny.trim_start_matches("TINY_SDXL_").to_lowercase()),
        }
    }

    /// flops.rs against an independent count: `tools/bench/flop_count.py` ran PyTorch's
    /// `FlopCounterMode` over the diffusers/transformers networks built from the same configs (SD1.5,
    /// the real SDXL base with per-block transformer depth [1, 2, 10] and the `text_time` add
    /// embedding, the tiny SDXL) at several resolutions and batches, and recorded the totals in
    /// `tools/bench/flop_counts.json`. Both count the multiply-adds of every convolution, linear
    /// layer and attention product, and agree exactly (to the FLOP: the counter sees no matmul
    /// that flops.rs leaves out).
    #[test]
    fn flop_counts_match_pytorch_flop_counter() {
        let recorded: serde_json::Value =
            serde_json::from_str(include_str!("../../../tools/bench/flop_counts.json")).unwrap();
        let rows = |key: &str| recorded[key].as_array().unwrap().clone();
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap() as usize;
        let mut checked = 0;
        let mut check = |what: String, ours: f64, torch: f64| {
            let rel = (ours - torch).abs() / torch;
            assert!(rel < 1e-12, "{what}: flops.rs {ours:.6e}, FlopCounterMode {torch:.6e} ({rel:.2e})");
            checked += 1;
        };
        for r in rows("unet") {
            let name = r["preset"].as_str().unwrap();
            let shape = unet_shape(&serde_json::from_str(preset(name)).unwrap());
            let lat = n(&r, "resolution") / 8;
            let ours = flops::unet(&shape, n(&r, "batch"), lat, lat);
            check(format!("{name} {r}"), ours, r["flops"].as_f64().unwrap());
        }
        for r in rows("vae_decode") {
            let name = r["preset"].as_str().unwrap();
            let cfg = AutoencoderKLConfig::from_json(&serde_json::from_str(preset(name)).unwrap()).unwrap();
            let lat = n(&r, "resolution") / 8;
            check(
                format!("{name} {r}"),
                flops::vae_decode(&cfg, n(&r, "batch"), lat, lat),
                r["flops"].as_f64().unwrap(),
            );
        }
        for r in rows("text_encoder") {
            let name = r["preset"].as_str().unwrap();
            let cfg = CLIPTextConfig::from_json(preset(name)).unwrap();
            let (b, t) = (n(&r, "batch"), n(&r, "tokens"));
            let ours = if name.ends_with("_2") {
                flops::clip_text_with_projection(&cfg, b, t)
            } else {
                flops::clip_text(&cfg, b, t)
            };
            check(format!("{name} {r}"), ours, r["flops"].as_f64().unwrap());
        }
        assert_eq!(checked, 12 + 6 + 5);
    }

    /// By hand: one SDXL `BasicTransformerBlock` at 1024² on the 1280-channel level (32×32 latent
    /// pixels, 77 context tokens of 2048), of which that level runs 9 more per transformer than a
    /// depth-1 config in down block 2 (×2), the mid block and up block 0 (×3); and the
    /// `text_time` add embedding (2816 → 1280 → 1280).
    #[test]
    fn sdxl_mid_block_and_add_embedding_by_hand() {
        let sdxl = unet_shape(&serde_json::from_str(presets::SDXL_UNET).unwrap());
        assert_eq!(sdxl.transformer_layers_per_block, vec![1, 2, 10]);
        assert_eq!(sdxl.addition_embed_input_dim, Some(2816));
        assert_eq!(sdxl.cross_attention_dim, 2048);
        let (c, l, s, d) = (1280.0f64, 1024.0f64, 77.0f64, 2048.0f64);
        // proj_in + proj_out once; per block: q, k, v, out of self-attention and q·kᵀ, p·v;
        // cross-attention q, out on the image tokens, k, v on the context, q·kᵀ, p·v; GEGLU
        // (c → 8c) and c·4 → c.
        let per_block = 2.0 * (4.0 * l * c * c + 2.0 * l * l * c)
            + 2.0 * (2.0 * l * c * c + 2.0 * s * d * c + 2.0 * l * s * c)
            + 2.0 * (l * c * 8.0 * c + l * 4.0 * c * c);
        let one_deep = flops::UNetShape { transformer_layers_per_block: vec![1, 2, 1], ..sdxl.clone() };
        let extra = flops::unet(&sdxl, 1, 128, 128) - flops::unet(&one_deep, 1, 128, 128);
        // Down block 2 and up block 0 (three transformers) run at 32×32 too: 2 + 3 of the same
        // transformer, each with 9 blocks fewer in `one_deep`, plus the mid block's 9.
        let want = (2.0 + 3.0 + 1.0) * 9.0 * per_block;
        assert!((extra - want).abs() < 1e-9 * want, "{extra} vs {want}");
        let no_add = flops::UNetShape { addition_embed_input_dim: None, ..sdxl.clone() };
        let add = flops::unet(&sdxl, 2, 128, 128) - flops::unet(&no_add, 2, 128, 128);
        let want = 2.0 * 2.0 * (2816.0 * 1280.0 + 1280.0 * 1280.0);
        assert!((add - want).abs() < 1e-6 * want, "{add} vs {want}");
    }

    /// The SDXL presets parse as the models read them, into the SDXL base architecture.
    #[test]
    fn sdxl_presets_parse() {
        let c = Configs::preset(BenchFamily::Sdxl);
        let unet = UNet2DConditionModelConfig::from_json(&c.unet).unwrap();
        assert_eq!(unet.addition_time_embed_dim, Some(256));
        assert_eq!(unet.projection_class_embeddings_input_dim, Some(2816));
        assert!(unet.use_linear_projection);
        let vae = AutoencoderKLConfig::from_json(&serde_json::from_str(&c.vae).unwrap()).unwrap();
        assert_eq!(vae.scaling_factor, 0.13025);
        let l = CLIPTextConfig::from_json(&c.text_encoder).unwrap();
        let g = CLIPTextConfig::from_json(c.text_encoder_2.as_deref().unwrap()).unwrap();
        assert_eq!((l.hidden_size, l.num_hidden_layers, l.num_attention_heads), (768, 12, 12));
        assert_eq!((g.hidden_size, g.num_hidden_layers, g.num_attention_heads), (1280, 32, 20));
        assert_eq!((g.intermediate_size, g.projection_dim), (5120, 1280));
        // Context = CLIP-L ⧺ bigG hidden states; add embedding = pooled bigG + 6 ids × 256.
        assert_eq!(l.hidden_size + g.hidden_size, 2048);
        assert_eq!(g.projection_dim + 6 * 256, 2816);
    }
}

#[cfg(test)]
mod param_count {
    use super::*;
    use candle_core::Shape;
    use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Every tensor a broadcast zero of the requested shape (no memory), counting elements.
    struct Counting(Arc<AtomicUsize>);

    impl SimpleBackend for Counting {
        fn get(&self, s: Shape, _: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.fetch_add(s.elem_count(), Ordering::Relaxed);
            Tensor::zeros((), dtype, dev)?.broadcast_as(s)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("no shape for {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    /// The SDXL presets build the published architectures: kairos asks for as many weights as
    /// diffusers/transformers hold (their `parameters()` summed on the meta device: UNet 2.567B,
    /// CLIP-L 123M, OpenCLIP-bigG with projection 695M, VAE 83.7M), counted without allocating.
    #[test]
    fn sdxl_parameter_counts() {
        let n = Arc::new(AtomicUsize::new(0));
        let vb = VarBuilder::from_backend(Box::new(Counting(n.clone())), DType::F32, Device::Cpu);
        let c = Configs::preset(BenchFamily::Sdxl);
        let count = || n.swap(0, Ordering::Relaxed);
        UNet2DConditionModel::new(vb.pp("unet"), &UNet2DConditionModelConfig::from_json(&c.unet).unwrap()).unwrap();
        assert_eq!(count(), 2_567_463_684, "unet");
        CLIPTextModel::new(vb.pp("text_encoder"), &CLIPTextConfig::from_json(&c.text_encoder).unwrap()).unwrap();
        assert_eq!(count(), 123_060_480, "text_encoder");
        let g = CLIPTextConfig::from_json(c.text_encoder_2.as_deref().unwrap()).unwrap();
        CLIPTextModelWithProjection::new(vb.pp("text_encoder_2"), &g).unwrap();
        assert_eq!(count(), 694_659_840, "text_encoder_2");
        let vae = AutoencoderKLConfig::from_json(&serde_json::from_str(&c.vae).unwrap()).unwrap();
        AutoencoderKL::new(vb.pp("vae"), &vae).unwrap();
        assert_eq!(count(), 83_653_863, "vae");
    }
}
