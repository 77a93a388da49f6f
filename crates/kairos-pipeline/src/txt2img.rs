//! Text to image (and image to image): conditioning, seeded initial latents, any sampler over any
//! sigma schedule, VAE decode, 8-bit RGB.
//!
//! The run reproduces diffusers' `StableDiffusionPipeline` with a CPU generator when the same
//! sigmas and timesteps are used: the initial latent is `randn` from the seeded generator times
//! sqrt(1 + σ₀²) (diffusers' `init_noise_sigma` in the VE scale k-diffusion samplers work in),
//! and ancestral noise continues the same generator (founders' measurement; see
//! `tests/parity_pipeline.rs`).
//!
//! With an [`InitImage`] the run is diffusers' `StableDiffusionImg2ImgPipeline`: the image is
//! resized to the request's size (A1111's resize modes), the schedule keeps the tail its denoise
//! rule gives (diffusers' `get_timesteps`, `int(steps · strength)`, for the common schedules;
//! ComfyUI's node rule for `ays`/`gits`; A1111's for the A1111 variants:
//! [`ScheduleKind::denoise_rule`]), the VAE posterior is sampled from the seeded generator before
//! the noise is drawn, and the start is `scaling_factor · latent + σ_start · noise`
//! (`tests/parity_img2img.rs`).

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use kairos_models::lcm::{get_guidance_scale_embedding, LcmDenoiser, LcmOptions};
use kairos_sampler::noise::{BatchSeeding, RngKind, SeededNoise};
use kairos_sampler::{Denoiser, SampleCtx, Sampler, StepInfo};
use kairos_schedule::{AysModel, DenoiseRule, Family, ModelSchedule, NoiseSchedule, Prediction, ScheduleKind};

use crate::conditioning::{encode_pair, PromptEmbeds, PromptEncoder};
use crate::denoiser::{repeat_batch, AddedConditioning, CfgDenoiser, Conditioning, DiffusionModel, ModelDenoiser};
use crate::image::{ensure_finite, to_rgb8, LatentDecoder, LatentEncoder, RgbImage};
use crate::resize::{resize_image, ResizeMode};
use crate::PipelineError;

/// How the initial standard-normal latent is scaled to the first noise level σ₀.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialNoise {
    /// noise · sqrt(1 + σ₀²): diffusers' `init_noise_sigma` (and DPM-Solver's unit-variance VP
    /// latent), ComfyUI's `max_denoise`, A1111's "SGM noise multiplier".
    #[default]
    SqrtOnePlusSigmaSquared,
    /// noise · σ₀: k-diffusion's and A1111's default.
    Sigma,
}

/// The image img2img starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// The image; brought to the request's width and height with `resize_mode` when its size
    /// differs.
    pub image: RgbImage,
    /// How an image of another size is resized (A1111's modes; `JustResize` by default).
    pub resize_mode: ResizeMode,
    /// How much of the schedule runs, in (0, 1] (1 starts from σ_max, with the image's latent
    /// under the noise): the tail that `denoise_rule` keeps.
    pub strength: f64,
    /// How the strength shortens the schedule; `None` is the schedule's own rule
    /// ([`ScheduleKind::denoise_rule`]: diffusers' `int(steps · strength)` for the common
    /// schedules, ComfyUI's for `ays`/`gits`, A1111's for the A1111 variants).
    pub denoise_rule: Option<DenoiseRule>,
}

/// Which time ids an SDXL UNet's `text_time` embedding takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeIds {
    /// SDXL base: original size (h, w), crop top-left (top, left), target size (h, w).
    Sizes,
    /// SDXL refiner: original size, crop top-left, aesthetic score.
    Aesthetic,
}

/// SDXL's micro-conditioning (diffusers' `_get_add_time_ids` arguments, in pixels). The
/// defaults are diffusers': original and target size = the image's (height, width), crop
/// (0, 0), aesthetic scores 6.0 / 2.5; the negative sizes copy the positive ones unless both
/// negative sizes are given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeConditioning {
    /// `original_size` (height, width); `None`: the image's.
    pub original_size: Option<(usize, usize)>,
    /// `crops_coords_top_left` (top, left).
    pub crop: (usize, usize),
    /// `target_size` (height, width); `None`: the image's.
    pub target_size: Option<(usize, usize)>,
    /// `negative_original_size`; used with `negative_target_size`.
    pub negative_original_size: Option<(usize, usize)>,
    /// `negative_crops_coords_top_left`; `None`: the positive crop.
    pub negative_crop: Option<(usize, usize)>,
    /// `negative_target_size`; used with `negative_original_size`.
    pub negative_target_size: Option<(usize, usize)>,
    /// The refiner's `aesthetic_score`.
    pub aesthetic_score: f64,
    /// The refiner's `negative_aesthetic_score`.
    pub negative_aesthetic_score: f64,
}

impl Default for SizeConditioning {
    fn default() -> Self {
        Self {
            original_size: None,
            crop: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crop: None,
            negative_target_size: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
        }
    }
}

impl SizeConditioning {
    /// The positive and negative time-id rows for an image of `height` × `width`, as diffusers'
    /// `StableDiffusionXL(Img2Img)Pipeline._get_add_time_ids` builds them.
    pub fn time_ids(&self, kind: TimeIds, height: usize, width: usize) -> (Vec<f32>, Vec<f32>) {
        let image = (height, width);
        let original = self.original_size.unwrap_or(image);
        let target = self.target_size.unwrap_or(image);
        let pair = |(a, b): (usize, usize)| [a as f32, b as f32];
        match kind {
            TimeIds::Sizes => {
                let pos = [pair(original), pair(self.crop), pair(target)].concat();
                let neg = match (self.negative_original_size, self.negative_target_size) {
                    (Some(no), Some(nt)) => {
                        [pair(no), pair(self.negative_crop.unwrap_or(self.crop)), pair(nt)].concat()
                    }
                    _ => pos.clone(),
                };
                (pos, neg)
            }
            TimeIds::Aesthetic => {
                let pos = [&pair(original)[..], &pair(self.crop), &[self.aesthetic_score as f32]].concat();
                let neg_original = self.negative_original_size.unwrap_or(original);
                let neg_crop = self.negative_crop.unwrap_or(self.crop);
                let neg = [&pair(neg_original)[..], &pair(neg_crop), &[self.negative_aesthetic_score as f32]].concat();
                (pos, neg)
            }
        }
    }
}

/// What to generate. [`Default`] gives diffusers' SD1.5 defaults (512×512) with the `dpmpp_2m`
/// sampler on `karras` sigmas and a CPU generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Txt2ImgRequest {
    /// The prompt (may be empty).
    pub prompt: String,
    /// The negative prompt (the unconditional branch of guidance; may be empty).
    pub negative_prompt: String,
    /// SDXL: the prompt for OpenCLIP-bigG (`None`: the prompt); ignored by other models.
    pub prompt_2: Option<String>,
    /// SDXL: the negative prompt for OpenCLIP-bigG (`None`: the negative prompt).
    pub negative_prompt_2: Option<String>,
    /// SDXL: size, crop and aesthetic conditioning; ignored by other models.
    pub size_conditioning: SizeConditioning,
    /// Image width in pixels: a positive multiple of 8.
    pub width: usize,
    /// Image height in pixels: a positive multiple of 8.
    pub height: usize,
    /// Sampling steps (ignored by the user lists [`ScheduleKind::Sigmas`] and
    /// [`ScheduleKind::Timesteps`], whose length counts).
    pub steps: usize,
    /// Classifier-free guidance scale; 1 turns the unconditional branch off.
    pub cfg_scale: f64,
    /// The sampler with its options.
    pub sampler: Sampler,
    /// The sigma schedule.
    pub schedule: ScheduleKind,
    /// Seed of the first batch; batch j uses `seed + j · batch_size`.
    pub seed: u64,
    /// Images per sampler run.
    pub batch_size: usize,
    /// Sampler runs.
    pub batch_count: usize,
    /// Generator family.
    pub rng: RngKind,
    /// One generator per batch (diffusers) or one per image (A1111).
    pub seeding: BatchSeeding,
    /// Scaling of the initial latent (txt2img only).
    pub initial_noise: InitialNoise,
    /// img2img: the image to start from; `None` is txt2img.
    pub init_image: Option<InitImage>,
    /// Ensemble of experts (SDXL base → refiner), diffusers' `denoising_end`: run only the
    /// schedule's steps whose timestep is at least round(N·(1 − end)) and return the noisy
    /// latents there, for [`refine_latents`] to finish.
    pub denoising_end: Option<f64>,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            prompt_2: None,
            negative_prompt_2: None,
            size_conditioning: SizeConditioning::default(),
            width: 512,
            height: 512,
            steps: 20,
            cfg_scale: 7.5,
            sampler: Sampler::Dpmpp2m,
            schedule: ScheduleKind::Karras { rho: 7.0 },
            seed: 0,
            batch_size: 1,
            batch_count: 1,
            rng: RngKind::TorchCpu,
            seeding: BatchSeeding::Shared,
            initial_noise: InitialNoise::SqrtOnePlusSigmaSquared,
            init_image: None,
            denoising_end: None,
        }
    }
}

/// The model side of a run: the three networks behind their traits, plus what the sampler
/// needs to know about the diffusion model.
pub struct Components<'a> {
    /// The UNet.
    pub model: &'a dyn DiffusionModel,
    /// Prompt → embeddings.
    pub encoder: &'a dyn PromptEncoder,
    /// Latents → images.
    pub decoder: &'a dyn LatentDecoder,
    /// Images → latents, for img2img.
    pub image_encoder: &'a dyn LatentEncoder,
    /// The model family (picks the AYS table).
    pub family: Family,
    /// SDXL: the time ids the UNet's `text_time` embedding takes; `None` for SD1/SD2.
    pub time_ids: Option<TimeIds>,
    /// The training noise schedule, with the timestep convention set (quantize or not).
    pub schedule: ModelSchedule,
    /// What the UNet predicts.
    pub prediction: Prediction,
    /// `Some` for a consistency-distilled model (an LCM UNet, or a UNet with an LCM-LoRA merged):
    /// every prediction goes through LCM's boundary conditions ([`LcmDenoiser`]), as diffusers'
    /// `LCMScheduler` applies them.
    pub consistency: Option<LcmOptions>,
    /// Where the latents live.
    pub device: Device,
}

/// Progress of a run, reported to the caller's callback, which may cancel.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A sampler step finished its first model call.
    Step {
        /// Sampler run, 0-based.
        batch: usize,
        /// Sampler runs in all.
        batches: usize,
        /// Step, 0-based.
        step: usize,
        /// Steps per run.
        steps: usize,
        /// Noise level at the start of the step.
        sigma: f64,
        /// The step's x0 prediction `[B, C, h, w]` (UNet scale), for previews.
        denoised: &'a Tensor,
    },
    /// Sampling of a run is done; the VAE decode starts.
    Decoding {
        /// Sampler run, 0-based.
        batch: usize,
    },
}

/// One sampler run's output.
#[derive(Debug, Clone)]
pub struct Txt2ImgBatch {
    /// The seed of each image (all equal with [`BatchSeeding::Shared`]: one generator).
    pub seeds: Vec<u64>,
    /// Final latents `[B, C, h, w]` (UNet scale, as diffusers' `output_type="latent"`).
    pub latents: Tensor,
    /// The decoded images (empty until [`decode_latents`] when from [`txt2img_latents`]).
    pub images: Vec<RgbImage>,
}

/// The result of [`txt2img`].
#[derive(Debug, Clone)]
pub struct Txt2ImgOutput {
    /// The sigmas sampled (steps + 1, ending in 0 for the standard schedules).
    pub sigmas: Vec<f64>,
    /// One entry per sampler run.
    pub batches: Vec<Txt2ImgBatch>,
}

/// The sigmas a request samples for the model in `c` (AYS on SD2 uses the SD1 table: the paper's
/// SD1.5 schedule, computed for the sigma range SD2 shares).
pub fn request_sigmas(c: &Components<'_>, req: &Txt2ImgRequest) -> Result<Vec<f64>, PipelineError> {
    let kind = match (&req.schedule, c.family) {
        (ScheduleKind::Ays { model: None }, Family::Sd2 | Family::Sd2Base) => {
            ScheduleKind::Ays { model: Some(AysModel::Sd1) }
        }
        (kind, _) => kind.clone(),
    };
    let (strength, rule) = match &req.init_image {
        None => (1.0, kind.denoise_rule()),
        Some(init) => (init.strength, init.denoise_rule.unwrap_or(kind.denoise_rule())),
    };
    Ok(kind.build_with_rule(&c.schedule, c.family, req.steps, strength, rule)?.into_vec())
}

/// Where an ensemble of experts hands over (diffusers' `denoising_end` / `denoising_start`):
/// the number of steps of `sigmas` whose timestep is at least
/// `int(round(N − fraction · N))`, N the training timesteps. The first expert runs
/// `sigmas[..=k]`, the second `sigmas[k..]` (same steps and schedule in both runs).
pub fn expert_split(c: &Components<'_>, sigmas: &[f64], fraction: f64) -> Result<usize, PipelineError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(PipelineError::InvalidOption {
            name: "denoising_end",
            message: format!("must be in (0, 1) (the fraction of the schedule the base runs), got {fraction}"),
        });
    }
    let n = c.schedule.train_sigmas().map(<[f64]>::len).ok_or_else(|| PipelineError::InvalidOption {
        name: "denoising_end",
        message: "needs a discrete-time model (its training timesteps set the split)".into(),
    })? as f64;
    let cutoff = (n - fraction * n).round();
    let steps = sigmas.len() - 1;
    let k = sigmas[..steps].iter().take_while(|&&s| c.schedule.sigma_to_t(s) >= cutoff).count();
    if k == 0 || k == steps {
        return Err(PipelineError::InvalidOption {
            name: "denoising_end",
            message: format!(
                "{fraction} leaves {} of the {steps} steps to one expert: use more steps or a fraction nearer 0.5",
                if k == 0 { "all" } else { "none" }
            ),
        });
    }
    Ok(k)
}

fn check_request(c: &Components<'_>, req: &Txt2ImgRequest) -> Result<(), PipelineError> {
    let multiple = c.decoder.scale_factor().max(8);
    for (side, value) in [("width", req.width), ("height", req.height)] {
        if value == 0 || value % multiple != 0 {
            let nearest = ((value + multiple / 2) / multiple).max(1) * multiple;
            return Err(PipelineError::BadImageSize { side, value, multiple, nearest });
        }
    }
    for (name, value) in [("batch_size", req.batch_size), ("batch_count", req.batch_count)] {
        if value == 0 {
            return Err(PipelineError::InvalidOption { name, message: "must be at least 1".into() });
        }
    }
    if let Some(init) = &req.init_image {
        if !(init.strength > 0.0 && init.strength <= 1.0) {
            return Err(PipelineError::InvalidOption {
                name: "strength",
                message: format!("must be in (0, 1], got {}", init.strength),
            });
        }
        if init.image.width == 0 || init.image.height == 0 {
            return Err(PipelineError::InvalidOption {
                name: "init_image",
                message: format!("is {}x{}: an image needs pixels", init.image.width, init.image.height),
            });
        }
    }
    if !req.cfg_scale.is_finite() {
        return Err(PipelineError::InvalidOption {
            name: "cfg_scale",
            message: format!("must be a finite number, got {}", req.cfg_scale),
        });
    }
    Ok(())
}

/// The conditional and unconditional conditioning of a request, one row each: the prompts'
/// embeddings and, for SDXL, the pooled embeddings with the request's time ids.
pub fn request_conditioning(
    c: &Components<'_>,
    req: &Txt2ImgRequest,
) -> Result<(Conditioning, Conditioning), PipelineError> {
    let (cond, uncond) = encode_pair(
        c.encoder,
        (&req.prompt, req.prompt_2.as_deref()),
        (&req.negative_prompt, req.negative_prompt_2.as_deref()),
    )?;
    let Some(kind) = c.time_ids else {
        return Ok((Conditioning::context(cond.context), Conditioning::context(uncond.context)));
    };
    let (pos, neg) = req.size_conditioning.time_ids(kind, req.height, req.width);
    let with_ids = |embeds: PromptEmbeds, ids: Vec<f32>| -> Result<Conditioning, PipelineError> {
        let text_embeds = embeds.pooled.ok_or_else(|| PipelineError::InvalidOption {
            name: "model",
            message: "this UNet takes a pooled text embedding (SDXL) but the text encoder gives none".into(),
        })?;
        let time_ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &c.device)?;
        Ok(Conditioning { context: embeds.context, added: Some(AddedConditioning { text_embeds, time_ids }) })
    };
    Ok((with_ids(cond, pos)?, with_ids(uncond, neg)?))
}

/// Runs txt2img: [`txt2img_latents`], then [`decode_latents`] with `c.decoder`. `on_progress`
/// sees every step and may return `Break` to cancel, which ends the run with
/// [`kairos_sampler::SamplerError::Cancelled`] (see [`PipelineError::is_cancelled`]).
pub fn txt2img(
    c: &Components<'_>,
    req: &Txt2ImgRequest,
    on_progress: &mut dyn FnMut(&Progress<'_>) -> ControlFlow<()>,
) -> Result<Txt2ImgOutput, PipelineError> {
    let mut out = txt2img_latents(c, req, on_progress)?;
    decode_latents(c.decoder, &mut out, on_progress)?;
    Ok(out)
}

/// The sampling half of [`txt2img`]: every batch's final latents, with `images` left empty for
/// [`decode_latents`]. Callers that need only latents, or that free the UNet before decoding
/// (`--low-memory`: the VAE's activations then reuse the UNet's memory), call the halves.
pub fn txt2img_latents(
    c: &Components<'_>,
    req: &Txt2ImgRequest,
    on_progress: &mut dyn FnMut(&Progress<'_>) -> ControlFlow<()>,
) -> Result<Txt2ImgOutput, PipelineError> {
    sample(c, req, None, on_progress)
}

/// The second expert of an ensemble (SDXL refiner, diffusers' `denoising_start`): finishes
/// `start`, the output of a [`txt2img_latents`] run with `denoising_end = Some(fraction)`,
/// from the step where it stopped, on the same `req` (steps, schedule, sampler, seed) with this
/// model's conditioning. The latents go on as they are (no new noise, no VAE round trip);
/// stochastic samplers draw from a fresh generator of the request's seed, and multistep
/// samplers restart their history, as diffusers' second pipeline call does.
pub fn refine_latents(
    c: &Components<'_>,
    req: &Txt2ImgRequest,
    fraction: f64,
    start: &Txt2ImgOutput,
    on_progress: &mut dyn FnMut(&Progress<'_>) -> ControlFlow<()>,
) -> Result<Txt2ImgOutput, PipelineError> {
    if start.batches.len() != req.batch_count {
        return Err(PipelineError::InvalidOption {
            name: "refiner",
            message: format!("{} batches to refine, the request has {}", start.batches.len(), req.batch_count),
        });
    }
    let req = Txt2ImgRequest { denoising_end: None, ..req.clone() };
    sample(c, &req, Some((fraction, start)), on_progress)
}

/// The sampler loop of [`txt2img_latents`] and [`refine_latents`] (`refine`: the hand-off
/// fraction and the first expert's output).
fn sample(
    c: &Components<'_>,
    req: &Txt2ImgRequest,
    refine: Option<(f64, &Txt2ImgOutput)>,
    on_progress: &mut dyn FnMut(&Progress<'_>) -> ControlFlow<()>,
) -> Result<Txt2ImgOutput, PipelineError> {
    check_request(c, req)?;
    let mut sigmas = request_sigmas(c, req)?;
    if let Some(end) = req.denoising_end {
        sigmas.truncate(expert_split(c, &sigmas, end)? + 1);
    }
    if let Some((start, _)) = refine {
        sigmas.drain(..expert_split(c, &sigmas, start)?);
    }
    let (cond, uncond) = request_conditioning(c, req)?;
    let b = req.batch_size;
    let (cond, uncond) = (cond.map(|t| repeat_batch(t, b))?, uncond.map(|t| repeat_batch(t, b))?);
    let f = c.decoder.scale_factor();
    let shape = (b, c.decoder.latent_channels(), req.height / f, req.width / f);
    let init_scale = match req.initial_noise {
        InitialNoise::SqrtOnePlusSigmaSquared => (1.0 + sigmas[0] * sigmas[0]).sqrt(),
        InitialNoise::Sigma => sigmas[0],
    };

    // img2img: the posterior of the image, once; each batch samples it with its generator.
    let posterior = match &req.init_image {
        Some(_) if refine.is_some() => None,
        Some(init) => {
            let image = resize_image(init.resize_mode, &init.image, req.width, req.height)?;
            Some(c.image_encoder.encode(&image.to_tensor(&c.device)?)?)
        }
        None => None,
    };

    let mut batches = Vec::with_capacity(req.batch_count);
    for batch in 0..req.batch_count {
        let seed = req.seed.wrapping_add((batch * b) as u64);
        let mut noise = SeededNoise::new(req.rng, seed, req.seeding, b)?;
        let x = match (&posterior, refine) {
            (_, Some((_, start))) => {
                let latents = &start.batches[batch].latents;
                if latents.dims() != [shape.0, shape.1, shape.2, shape.3] {
                    return Err(PipelineError::InvalidOption {
                        name: "refiner",
                        message: format!("latents {:?} to refine, this request makes {shape:?}", latents.dims()),
                    });
                }
                latents.clone()
            }
            (None, None) => (noise.initial_latent(shape, DType::F32, &c.device)? * init_scale)?,
            (Some(posterior), None) => {
                // diffusers' order: the posterior sample (one draw for the shared generator,
                // repeated over the batch as diffusers does; one per image per-item), then the
                // noise.
                let (_, ch, h, w) = posterior.mean.dims4()?;
                let draws = match req.seeding {
                    BatchSeeding::Shared => 1,
                    BatchSeeding::PerItem => b,
                };
                let eps = noise.initial_latent((draws, ch, h, w), DType::F32, &c.device)?;
                let latent = posterior.mean.broadcast_add(&posterior.std.broadcast_mul(&eps)?)?;
                let latent = (latent.broadcast_as(shape)? * c.image_encoder.scaling_factor())?;
                let eps = noise.initial_latent(shape, DType::F32, &c.device)?;
                (latent + (eps * sigmas[0])?)?
            }
        };
        let inner = ModelDenoiser::new(c.model, c.schedule.clone(), c.prediction, c.family.sigma_data());
        let mut denoiser = match c.model.time_cond_proj_dim() {
            // diffusers' LatentConsistencyModelPipeline: guidance is distilled into the UNet,
            // fed as the embedding of w = guidance_scale − 1; no unconditional batch.
            Some(dim) => {
                let w = vec![(req.cfg_scale - 1.0) as f32; b];
                let inner = inner.with_timestep_cond(get_guidance_scale_embedding(&w, dim, &c.device)?);
                CfgDenoiser::new(inner, &cond, &uncond, 1.0, false)?
            }
            None => CfgDenoiser::new(inner, &cond, &uncond, req.cfg_scale, req.sampler.needs_uncond())?,
        };
        let mut lcm_denoiser;
        let denoiser: &mut dyn Denoiser = match c.consistency {
            Some(opts) => {
                lcm_denoiser = LcmDenoiser::new(denoiser, opts);
                &mut lcm_denoiser
            }
            None => &mut denoiser,
        };
        let batches_total = req.batch_count;
        let mut on_step = |info: &StepInfo<'_>| {
            on_progress(&Progress::Step {
                batch,
                batches: batches_total,
                step: info.step,
                steps: info.total,
                sigma: info.sigma,
                denoised: info.denoised,
            })
        };
        let latents = {
            let mut ctx = SampleCtx::new(denoiser, &mut noise).with_callback(&mut on_step);
            req.sampler.sample(&mut ctx, x, &sigmas)?
        };
        let seeds = match req.seeding {
            BatchSeeding::Shared => vec![seed; b],
            BatchSeeding::PerItem => (0..b).map(|i| seed.wrapping_add(i as u64)).collect(),
        };
        batches.push(Txt2ImgBatch { seeds, latents, images: Vec::new() });
    }
    Ok(Txt2ImgOutput { sigmas, batches })
}

/// The decoding half of [`txt2img`]: decodes each batch's latents of `out` (from
/// [`txt2img_latents`]) into its `images`, reporting [`Progress::Decoding`] first (which may
/// cancel). A NaN or infinite image is an error.
pub fn decode_latents(
    decoder: &dyn LatentDecoder,
    out: &mut Txt2ImgOutput,
    on_progress: &mut dyn FnMut(&Progress<'_>) -> ControlFlow<()>,
) -> Result<(), PipelineError> {
    for (batch, b) in out.batches.iter_mut().enumerate() {
        if on_progress(&Progress::Decoding { batch }).is_break() {
            return Err(kairos_sampler::SamplerError::Cancelled.into());
        }
        let decoded = decoder.decode(&b.latents)?;
        ensure_finite(&decoded)?;
        b.images = to_rgb8(&decoded)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_models::autoencoders::DiagonalGaussianDistribution;
    use kairos_schedule::{DiscreteSchedule, TablePrecision};

    /// ε = 0 network, constant embeddings, identity-ish decoder (first 3 latent channels).
    struct Fakes;

    impl DiffusionModel for Fakes {
        fn predict(
            &self,
            sample: &Tensor,
            _t: f64,
            _c: &Conditioning,
            _: Option<&Tensor>,
        ) -> candle_core::Result<Tensor> {
            sample.zeros_like()
        }
    }

    impl PromptEncoder for Fakes {
        fn encode(&self, _prompt: &str, _: Option<&str>) -> Result<PromptEmbeds, PipelineError> {
            Ok(PromptEmbeds { context: Tensor::zeros((1, 77, 4), DType::F32, &Device::Cpu)?, pooled: None })
        }
    }

    impl LatentDecoder for Fakes {
        fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError> {
            Ok(latents.narrow(1, 0, 3)?.upsample_nearest2d(latents.dim(2)? * 8, latents.dim(3)? * 8)?)
        }
        fn latent_channels(&self) -> usize {
            4
        }
        fn scale_factor(&self) -> usize {
            8
        }
    }

    impl LatentEncoder for Fakes {
        fn encode(&self, images: &Tensor) -> Result<DiagonalGaussianDistribution, PipelineError> {
            // The image's mean over 8×8 blocks in 4 channels (RGBR), variance e^−30.
            let mean = images.avg_pool2d(8)?.repeat((1, 2, 1, 1))?.narrow(1, 0, 4)?.contiguous()?;
            let logvar = (mean.zeros_like()? - 30.0)?;
            Ok(DiagonalGaussianDistribution { std: (&logvar * 0.5)?.exp()?, mean, logvar })
        }
        fn scaling_factor(&self) -> f64 {
            0.5
        }
    }

    fn components() -> Components<'static> {
        Components {
            model: &Fakes,
            encoder: &Fakes,
            decoder: &Fakes,
            image_encoder: &Fakes,
            family: Family::Sd1,
            time_ids: None,
            schedule: ModelSchedule::Discrete(DiscreteSchedule::sd(TablePrecision::F64)),
            prediction: Prediction::Epsilon,
            consistency: None,
            device: Device::Cpu,
        }
    }

    #[test]
    fn runs_batches_reports_progress_and_cancels() {
        let req =
            Txt2ImgRequest { width: 16, height: 8, steps: 3, batch_size: 2, batch_count: 2, ..Default::default() };
        let mut events = vec![];
        let out = txt2img(&components(), &req, &mut |p| {
            events.push(match p {
                Progress::Step { step, denoised, .. } => Some((*step, denoised.dims().to_vec())),
                Progress::Decoding { .. } => None,
            });
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(events.len(), 2 * (3 + 1));
        assert_eq!(events[1], Some((1, vec![2, 4, 1, 2])), "each step shows its x0 prediction");
        assert_eq!(out.batches[1].seeds, vec![2, 2], "batch 1 starts at seed + batch_size, one generator");
        assert_eq!(out.batches[0].images[0].data.len(), 16 * 8 * 3);
        // ε = 0 denoises to x0 = x, so the latents are the scaled initial noise.
        assert_eq!(out.batches[0].latents.dims(), &[2, 4, 1, 2]);

        let err = txt2img(&components(), &req, &mut |p| match p {
            Progress::Step { step: 1, .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .unwrap_err();
        assert!(err.is_cancelled(), "{err}");

        let bad = Txt2ImgRequest { width: 500, ..req };
        let err = txt2img(&components(), &bad, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert_eq!(err.to_string(), "width must be a positive multiple of 8, got 500 (e.g. 504)");
    }

    #[test]
    fn img2img_truncates_the_schedule_and_checks_the_image() {
        let image = RgbImage { width: 16, height: 8, data: vec![255; 16 * 8 * 3] };
        let init = InitImage { image, strength: 0.5, resize_mode: ResizeMode::JustResize, denoise_rule: None };
        let req = Txt2ImgRequest {
            width: 16,
            height: 8,
            steps: 5,
            schedule: ScheduleKind::from_name("normal").unwrap(),
            init_image: Some(init.clone()),
            ..Default::default()
        };
        let full = request_sigmas(&components(), &Txt2ImgRequest { init_image: None, ..req.clone() }).unwrap();
        let sigmas = request_sigmas(&components(), &req).unwrap();
        assert_eq!(sigmas, full[3..], "floor(5 · 0.5) = 2 steps kept");
        let out = txt2img(&components(), &req, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(out.sigmas.len(), 3);

        let low = Txt2ImgRequest { init_image: Some(InitImage { strength: 0.1, ..init.clone() }), ..req.clone() };
        let err = txt2img(&components(), &low, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains("keeps no step (int(steps * denoise) = 0)"), "{err}");

        // AYS follows ComfyUI's AlignYourStepsScheduler: round(5 · 0.7) = 4 steps kept, where
        // diffusers' rule (the override) keeps int(3.5) = 3.
        let ays = |rule| Txt2ImgRequest {
            schedule: ScheduleKind::from_name("ays").unwrap(),
            init_image: Some(InitImage { strength: 0.7, denoise_rule: rule, ..init.clone() }),
            ..req.clone()
        };
        let full = request_sigmas(&components(), &Txt2ImgRequest { init_image: None, ..ays(None) }).unwrap();
        assert_eq!(request_sigmas(&components(), &ays(None)).unwrap(), full[1..]);
        assert_eq!(request_sigmas(&components(), &ays(Some(DenoiseRule::Diffusers))).unwrap(), full[2..]);
        // Another size is resized to the request's (A1111's just-resize by default).
        let wider = Txt2ImgRequest { width: 24, ..req.clone() };
        let out = txt2img(&components(), &wider, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!((out.batches[0].images[0].width, out.batches[0].images[0].height), (24, 8));
        let empty = RgbImage { width: 0, height: 8, data: vec![] };
        let bad = Txt2ImgRequest { init_image: Some(InitImage { image: empty, ..init }), ..req };
        let err = txt2img(&components(), &bad, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert_eq!(err.to_string(), "invalid `init_image`: is 0x8: an image needs pixels");
    }

    /// An LCM-distilled fake: ε = 0, records the batch and `timestep_cond` of every call.
    struct LcmFake {
        calls: std::cell::RefCell<Vec<(usize, Option<Tensor>)>>,
    }

    impl DiffusionModel for LcmFake {
        fn predict(
            &self,
            sample: &Tensor,
            _t: f64,
            _c: &Conditioning,
            cond: Option<&Tensor>,
        ) -> candle_core::Result<Tensor> {
            self.calls.borrow_mut().push((sample.dim(0)?, cond.cloned()));
            sample.zeros_like()
        }

        fn time_cond_proj_dim(&self) -> Option<usize> {
            Some(8)
        }
    }

    #[test]
    fn lcm_unet_gets_the_guidance_embedding_and_no_cfg_batch() {
        let fake = LcmFake { calls: Default::default() };
        let c = Components { model: &fake, consistency: Some(LcmOptions::default()), ..components() };
        let req = Txt2ImgRequest {
            width: 8,
            height: 8,
            steps: 2,
            batch_size: 2,
            cfg_scale: 8.5,
            sampler: Sampler::Lcm,
            schedule: ScheduleKind::Timesteps(vec![999.0, 499.0]),
            ..Default::default()
        };
        let out = txt2img(&c, &req, &mut |_| ControlFlow::Continue(())).unwrap();
        let calls = fake.calls.borrow();
        assert_eq!(calls.len(), 2);
        let want = get_guidance_scale_embedding(&[7.5, 7.5], 8, &Device::Cpu).unwrap();
        for (batch, cond) in calls.iter() {
            assert_eq!(*batch, 2, "one conditional batch, no unconditional half");
            let cond = cond.as_ref().expect("timestep_cond is fed");
            let diff: f32 = (cond - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert_eq!(diff, 0.0, "w = guidance − 1 embedding");
        }
        // ε = 0 gives x0 = x; the boundary conditions at t = 499 (τ = 4990, c_skip ≈ 1e-8, c_out ≈ 1)
        // leave c_out·x + c_skip·x/sqrt(1+σ²) ≈ x, and the last lcm step returns it: finite output.
        assert!(out.batches[0].latents.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
}
