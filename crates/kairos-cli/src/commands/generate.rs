//! `kairos generate`: txt2img and img2img to PNG files with A1111 infotext.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kairos_models::autoencoders::{LatentRgbFactors, TilingMode, TilingOptions};
use kairos_models::lcm::{lcm_timesteps, LcmOptions};
use kairos_models::loading::ModelFamily;
use kairos_models::lora::{extract_prompt_loras, resolve_lora, LoraSpec};
use kairos_models::prompt::PromptOptions;
use kairos_pipeline::infotext::{dtype_field, lora_hash, short_hash, Infotext};
use kairos_pipeline::output::{save_json_sidecar, save_png, OutputTarget};
use kairos_pipeline::{
    decode_latents, refine_latents, txt2img_latents, InitImage, InitialNoise, LatentDecoder, LcmKind, LoraWeights,
    ModelOptions, Preview, Progress, PromptSyntax, ResizeMode, RgbImage, SizeConditioning, StableDiffusion, Taesd,
    TimestepMode, Txt2ImgRequest,
};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::Sampler;
use kairos_schedule::{DenoiseRule, Prediction, ScheduleKind};

/// The default model: SD 1.5 on the Hugging Face Hub.
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// Arguments of `kairos generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (A1111 syntax by default: `(word:1.2)`, `[word]`, `BREAK`).
    #[arg(long, short, default_value = "")]
    prompt: String,
    /// The negative prompt (SDXL base: an empty one conditions on zeros, as diffusers'
    /// `force_zeros_for_empty_prompt`).
    #[arg(long, short, default_value = "")]
    negative_prompt: String,
    /// SDXL: the prompt for the second text encoder, OpenCLIP-bigG [default: --prompt].
    #[arg(long)]
    prompt_2: Option<String>,
    /// SDXL: the negative prompt for OpenCLIP-bigG [default: --negative-prompt].
    #[arg(long)]
    negative_prompt_2: Option<String>,
    /// SDXL size conditioning: the original image size the model is told, WIDTHxHEIGHT
    /// [default: the image's size].
    #[arg(long, value_parser = parse_size)]
    original_size: Option<(usize, usize)>,
    /// SDXL crop conditioning: the crop's top-left corner, TOP,LEFT in pixels [default: 0,0].
    #[arg(long, value_parser = parse_crop)]
    crop: Option<(usize, usize)>,
    /// SDXL target-size conditioning, WIDTHxHEIGHT [default: the image's size].
    #[arg(long, value_parser = parse_size)]
    target_size: Option<(usize, usize)>,
    /// SDXL: the unconditional branch's original size, WIDTHxHEIGHT (with --negative-target-size;
    /// default: the positive sizes, as diffusers).
    #[arg(long, value_parser = parse_size, requires = "negative_target_size")]
    negative_original_size: Option<(usize, usize)>,
    /// SDXL: the unconditional branch's target size, WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_size, requires = "negative_original_size")]
    negative_target_size: Option<(usize, usize)>,
    /// SDXL refiner: the aesthetic score of its time ids (diffusers' default).
    #[arg(long, default_value_t = 6.0)]
    aesthetic_score: f64,
    /// SDXL refiner: the unconditional branch's aesthetic score.
    #[arg(long, default_value_t = 2.5)]
    negative_aesthetic_score: f64,
    /// A checkpoint file (.safetensors, .ckpt), a diffusers folder, or a Hugging Face repo id.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// SDXL ensemble of experts: an SDXL refiner (file or folder) that finishes the schedule
    /// after --refiner-switch, as diffusers' `denoising_end` / `denoising_start`.
    #[arg(long)]
    refiner: Option<String>,
    /// The fraction of the schedule the base model runs before the refiner takes over: the
    /// base keeps the steps whose timestep is at least round(1000 · (1 − switch)).
    #[arg(long, default_value_t = 0.8, requires = "refiner")]
    refiner_switch: f64,
    /// Sampling steps [default: 20; 4 for LCM models; with --sigmas-file, the file's own step
    /// count]. Ignored with --sigmas/--timesteps, whose length counts.
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale (1 disables the negative branch) [default: 7.5; 8.5 for
    /// an LCM UNet (its distilled guidance, diffusers' default), 1 with an LCM-LoRA].
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// Sampler: k-diffusion/ComfyUI names or A1111 labels (euler, euler_ancestral, "Euler a",
    /// dpmpp_2m, ...) [default: dpmpp_2m; lcm for LCM models].
    #[arg(long)]
    sampler: Option<String>,
    /// Sigma schedule: karras, normal, exponential, sgm_uniform, simple, ays, ays_a1111, gits, ...
    /// [default: karras; LCMScheduler's timesteps for LCM models with the lcm sampler].
    #[arg(long, alias = "scheduler")]
    schedule: Option<String>,
    /// A LoRA merged into the UNet and text encoder(s): FILE[:STRENGTH] (strength 1 by default).
    /// Repeatable; applied in order, after any `<lora:NAME:STRENGTH>` prompt tags.
    #[arg(long = "lora")]
    loras: Vec<LoraSpec>,
    /// Where `<lora:NAME:STRENGTH>` prompt tags are looked up (NAME.safetensors, searched recursively).
    #[arg(long)]
    lora_dir: Option<PathBuf>,
    /// Seed of the first image (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Image width in pixels (a multiple of 8) [default: 512 (SDXL: 1024), or --init-image's
    /// width rounded down to a multiple of 8].
    #[arg(long, short = 'W')]
    width: Option<usize>,
    /// Image height in pixels (a multiple of 8) [default: 512 (SDXL: 1024), or --init-image's
    /// height rounded down to a multiple of 8].
    #[arg(long, short = 'H')]
    height: Option<usize>,
    /// img2img: start from this image (PNG, JPEG, WebP), brought to -W x -H by --resize-mode
    /// when its size differs.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// The largest --init-image accepted, in pixels (width x height), checked from the file's
    /// header before it is decoded: a small file can declare a 100000x100000 image.
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    max_image_pixels: u64,
    /// How --init-image is brought to -W x -H (A1111's modes, Pillow's Lanczos): just-resize
    /// (stretch), crop-and-resize (cover, centre, crop), resize-and-fill (fit, centre, fill the
    /// bands with the stretched edges).
    #[arg(long, default_value = "just-resize", value_parser = ResizeMode::NAMES, requires = "init_image")]
    resize_mode: String,
    /// img2img strength in (0, 1]: how much of the schedule runs, by the schedule's denoise rule
    /// (--denoise-rule).
    #[arg(long, alias = "strength", default_value_t = 0.75, requires = "init_image")]
    denoise: f64,
    /// How --denoise shortens the schedule [default: the schedule's own: diffusers'
    /// int(steps x denoise) for karras, normal, ...; ComfyUI's round(steps x denoise) for ays
    /// and gits; A1111's int(min(denoise, 0.999) x steps) + 1 for the *_a1111 variants]; ksampler
    /// is ComfyUI's KSampler (build steps/denoise, run the last steps).
    #[arg(long, value_parser = DenoiseRule::NAMES, requires = "init_image")]
    denoise_rule: Option<String>,
    /// Images per sampler run.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Sampler runs.
    #[arg(long, default_value_t = 1)]
    batch_count: usize,
    /// Noise generator: torch-cpu (diffusers/ComfyUI with a CPU generator) or philox (A1111's GPU noise).
    #[arg(long, default_value = "torch-cpu")]
    rng: String,
    /// One generator for the batch (diffusers) or one per image seeded seed+i (A1111).
    #[arg(long, value_enum, default_value_t = Seeding::Batch)]
    seeding: Seeding,
    /// Explicit sigmas, descending, comma-separated (e.g. 14.6,7.0,3.1,0); overrides --schedule.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "timesteps")]
    sigmas: Option<Vec<f64>>,
    /// Explicit timesteps, descending, comma-separated (e.g. 999,850,736,...); 0 is appended to the sigmas.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "sigmas_file")]
    timesteps: Option<Vec<f64>>,
    /// A schedule file written by `kairos schedule optimize`: its sigmas, log-linearly
    /// interpolated when --steps differs from the file's step count.
    #[arg(long, conflicts_with = "sigmas")]
    sigmas_file: Option<PathBuf>,
    /// A standalone VAE replacing the checkpoint's: a file (.safetensors/.ckpt/.pt, LDM or
    /// diffusers keys; it takes the model's scaling factor) or a diffusers AutoencoderKL folder
    /// (config.json: its scaling factor must be the model's). Latent channels must fit the UNet.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// When the VAE decodes (and, for img2img, encodes) in tiles: auto (when the untiled pass
    /// is estimated above --vae-memory-budget of activations), always (when the image is larger
    /// than one tile) or never.
    #[arg(long, value_enum, default_value_t = VaeTiling::Auto)]
    vae_tiling: VaeTiling,
    /// VAE tile edge in pixels (a multiple of 8; diffusers' SD1.5 value), blended over a
    /// quarter tile with each neighbour.
    #[arg(long, default_value_t = 512)]
    vae_tile_size: usize,
    /// Activation memory, in MiB, an untiled VAE pass may use before --vae-tiling auto tiles.
    #[arg(long, default_value_t = 4096)]
    vae_memory_budget: u64,
    /// TAESD for the final decode instead of the VAE: a diffusers AutoencoderTiny folder, or a
    /// decoder file (madebyollin's taesd_decoder.pth/.safetensors) or whole-TAESD file.
    #[arg(long)]
    taesd: Option<PathBuf>,
    /// Dtype of the network weights: auto (the default) picks the faster of f32 and bf16 on this
    /// CPU from a short probe cached in the user's cache directory (f16 on a GPU); f32, or
    /// f16/bf16 for half the memory, force one (see README "Precision and memory").
    #[arg(long, value_enum, default_value_t, env = "KAIROS_DTYPE")]
    dtype: super::DtypeArg,
    /// Compute device: cpu, cuda[:N] (a build with `--features cuda`) or metal[:N] (`--features
    /// metal`).
    #[arg(long, default_value = "cpu")]
    device: super::DeviceArg,
    /// Encode the prompts first and free the text encoder before sampling (lower peak memory).
    #[arg(long)]
    low_memory: bool,
    /// Write a PNG preview of the current x0 prediction to this file during sampling (replaced
    /// at each preview): TAESD's decode with --taesd, else a linear latent → RGB map at latent
    /// resolution.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// Steps between previews.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    preview_every: u64,
    /// A1111 clip skip (1 = last layer, 2 = penultimate).
    #[arg(long, default_value_t = 1)]
    clip_skip: usize,
    /// Override the detected prediction type: epsilon or v_prediction.
    #[arg(long)]
    prediction: Option<String>,
    /// Timestep fed to the UNet: fractional (diffusers/A1111) or quantized (ComfyUI).
    #[arg(long, value_enum, default_value_t = TimestepArg::Fractional)]
    timestep_mode: TimestepArg,
    /// Prompt syntax: a1111 (weights, BREAK, 75-token chunks) or diffusers (plain, truncated to 77 tokens).
    #[arg(long, value_enum, default_value_t = SyntaxArg::A1111)]
    prompt_syntax: SyntaxArg,
    /// Output: a directory (A1111 names NNNNN-SEED.png, next free number) or a .png file that
    /// must not exist. Nothing is ever overwritten.
    #[arg(long, short, default_value = "outputs")]
    output: PathBuf,
    /// Also write a JSON sidecar with the parameters next to each image.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hints: super::inspect::HintArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Seeding {
    Batch,
    PerImage,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VaeTiling {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TimestepArg {
    Fractional,
    Quantized,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyntaxArg {
    A1111,
    Diffusers,
}

/// A local checkpoint path for `model`: an existing path, or a Hub repo id from the local cache
/// or downloaded into it.
pub fn resolve_model(model: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let looks_like_repo = model.split('/').count() == 2
        && !model.contains('\\')
        && !model.ends_with(".safetensors")
        && !model.ends_with(".ckpt");
    if !looks_like_repo {
        bail!("model not found: {model} (give a .safetensors/.ckpt file, a diffusers folder, or a Hugging Face repo id like {DEFAULT_MODEL})");
    }
    download_repo(model).with_context(|| {
        format!(
            "{model} is not a local path and could not be fetched from the Hugging Face Hub (offline?). \
             Download a checkpoint (e.g. v1-5-pruned-emaonly.safetensors) and pass its path: --model /path/to/model.safetensors"
        )
    })
}

/// Fetches a diffusers folder's files into the Hub cache (`~/.cache/huggingface/hub`, or
/// `$HF_HOME`) and returns the snapshot folder.
fn download_repo(repo_id: &str) -> anyhow::Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(std::io::stderr().is_terminal()).build()?;
    let repo = api.model(repo_id.to_string());
    let index = repo.get("model_index.json")?;
    for file in [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/special_tokens_map.json",
    ] {
        repo.get(file)?;
    }
    let dir = index.parent().context("model_index.json has no parent folder")?;
    Ok(dir.to_path_buf())
}

/// Writes a step preview to `path`, through a temporary file so that viewers never see a
/// half-written PNG.
fn write_preview(path: &Path, preview: &Preview<'_>, denoised: &candle_core::Tensor) -> anyhow::Result<()> {
    let image = preview.render(denoised)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    image::save_buffer_with_format(
        &tmp,
        &image.data,
        image.width as u32,
        image.height as u32,
        image::ColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("writing the preview {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing the preview {}", path.display()))
}

/// The LoRAs of a run: the prompt's tags (looked up in `--lora-dir`), then `--lora` files; and
/// the prompt without its tags.
fn collect_loras(args: &GenerateArgs) -> anyhow::Result<(String, Vec<LoraWeights>)> {
    let (prompt, tags) = extract_prompt_loras(&args.prompt)?;
    let mut loras = Vec::with_capacity(tags.len() + args.loras.len());
    for tag in tags {
        let Some(dir) = &args.lora_dir else {
            bail!("the prompt names LoRA `{}` in a <lora:...> tag; give --lora-dir DIR to say where to find it (or pass --lora FILE:STRENGTH)", tag.name);
        };
        loras.push(LoraWeights {
            path: resolve_lora(&tag.name, dir)?,
            unet_strength: tag.unet_strength,
            text_encoder_strength: tag.text_encoder_strength,
        });
    }
    for spec in &args.loras {
        if !spec.path.is_file() {
            bail!("LoRA file not found: {}", spec.path.display());
        }
        loras.push(LoraWeights {
            path: spec.path.clone(),
            unet_strength: spec.strength,
            text_encoder_strength: spec.strength,
        });
    }
    Ok((prompt, loras))
}

/// Sampling steps when neither --steps nor a schedule file says otherwise.
const DEFAULT_STEPS: usize = 20;
/// Sampling steps for LCM models (diffusers' LCM pipeline and the LCM-LoRA model cards).
const LCM_STEPS: usize = 4;
/// CFG scale when the user gives none.
const DEFAULT_CFG: f64 = 7.5;
/// diffusers `LatentConsistencyModelPipeline`'s default guidance for LCM UNets.
const LCM_UNET_CFG: f64 = 8.5;

/// Default image side without an init image.
const DEFAULT_SIZE: usize = 512;
/// SDXL's default size: diffusers' `unet.config.sample_size × vae_scale_factor` (128 × 8).
const SDXL_DEFAULT_SIZE: usize = 1024;

/// `WIDTHxHEIGHT` → (height, width), diffusers' order for size conditioning.
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)));
    parsed.ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT in pixels (e.g. 1024x1024)"))
}

/// `TOP,LEFT` → (top, left).
fn parse_crop(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once(',').and_then(|(t, l)| Some((t.trim().parse().ok()?, l.trim().parse().ok()?)));
    parsed.ok_or_else(|| format!("`{s}` is not TOP,LEFT in pixels (e.g. 0,0)"))
}

/// The init image and the request's size: -W/-H if given, else the image's own side rounded
/// down to a multiple of 8 (diffusers' `get_default_height_width`), with a note on stderr when
/// that changes it. The pipeline resizes the image by the resize mode.
fn load_init_image(
    path: &Path,
    width: Option<usize>,
    height: Option<usize>,
    max_pixels: u64,
) -> anyhow::Result<(RgbImage, usize, usize)> {
    let image = read_image_bounded(path, max_pixels)?;
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let round = |v: usize| (v / 8 * 8).max(8);
    let (w, h) = (width.unwrap_or(round(iw)), height.unwrap_or(round(ih)));
    if (width.is_none() && w != iw) || (height.is_none() && h != ih) {
        eprintln!(
            "note: the init image is {iw}x{ih}; generating {w}x{h} (sides are multiples of 8); \
             pass --width/--height to choose, --resize-mode for how it is fitted"
        );
    }
    Ok((RgbImage { width: iw, height: ih, data: image.into_raw() }, w, h))
}

/// The default `--max-image-pixels`: 64 megapixels (8192x8192), 256 MB as RGBA.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// Decodes an image file as RGB8 after checking the dimensions its header declares against
/// `max_pixels`, so a lying header (a few hundred bytes claiming 100000x100000) is refused before
/// the decoder allocates; the decode itself runs under an allocation limit of the same size.
pub fn read_image_bounded(path: &Path, max_pixels: u64) -> anyhow::Result<image::RgbImage> {
    let open = || -> anyhow::Result<image::io::Reader<std::io::BufReader<std::fs::File>>> {
        image::io::Reader::open(path)
            .and_then(|r| r.with_guessed_format())
            .with_context(|| format!("reading the init image {}", path.display()))
    };
    let (w, h) = open()?
        .into_dimensions()
        .with_context(|| format!("reading the init image {}: not a PNG, JPEG or WebP image", path.display()))?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        anyhow::bail!(
            "the init image {} declares {w}x{h} pixels ({pixels}), over the limit of {max_pixels}; pass a smaller \
             image, or raise --max-image-pixels if it really is that large",
            path.display()
        );
    }
    let mut reader = open()?;
    let mut limits = image::io::Limits::default();
    // RGBA16 of the declared size plus the RGB8 copy, with room for the decoder's buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    // The image crate's decoders can panic on malformed input (fuzz/init_image found one in WebP
    // lossless); that is a bad file, reported as one.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())).map_err(|_| {
        anyhow::anyhow!("reading the init image {}: the decoder failed on malformed data", path.display())
    })?;
    Ok(decoded.with_context(|| format!("reading the init image {}", path.display()))?.to_rgb8())
}

/// Fills what the user left open with the defaults for `lcm` models (lcm sampler, 4 steps,
/// LCMScheduler's timesteps, guidance 8.5 for an LCM UNet and 1 for an LCM-LoRA), and says on
/// stderr which were picked.
fn apply_lcm_defaults(args: &GenerateArgs, req: &mut Txt2ImgRequest, lcm: LcmKind) -> anyhow::Result<()> {
    let mut picked = Vec::new();
    if args.sampler.is_none() {
        req.sampler = Sampler::Lcm;
        picked.push("sampler lcm".to_string());
    }
    if args.steps.is_none() && args.sigmas_file.is_none() {
        req.steps = LCM_STEPS;
        picked.push(format!("{LCM_STEPS} steps"));
    }
    if args.cfg_scale.is_none() {
        req.cfg_scale = match lcm {
            LcmKind::Unet { .. } => LCM_UNET_CFG,
            LcmKind::Lora => 1.0,
        };
        picked.push(format!("cfg scale {}", req.cfg_scale));
    }
    let explicit_schedule =
        args.schedule.is_some() || args.sigmas.is_some() || args.timesteps.is_some() || args.sigmas_file.is_some();
    if !explicit_schedule && req.sampler == Sampler::Lcm {
        let ts = lcm_timesteps(req.steps, 1.0, &LcmOptions::default())?;
        req.schedule = ScheduleKind::Timesteps(ts.iter().map(|&t| t as f64).collect());
        picked.push(format!("LCM timesteps {ts:?}"));
    }
    if !picked.is_empty() {
        let what = match lcm {
            LcmKind::Unet { .. } => "LCM UNet",
            LcmKind::Lora => "LCM-LoRA",
        };
        eprintln!("{what} detected: using {} (set them to override)", picked.join(", "));
    }
    Ok(())
}

fn parse_request(args: &GenerateArgs, prompt: String) -> anyhow::Result<Txt2ImgRequest> {
    if args.vae_tile_size == 0 || !args.vae_tile_size.is_multiple_of(8) {
        bail!("--vae-tile-size must be a positive multiple of 8 pixels, got {} (e.g. 512)", args.vae_tile_size);
    }
    let schedule = match (&args.sigmas, &args.timesteps, &args.sigmas_file) {
        (Some(s), _, _) => ScheduleKind::Sigmas(s.clone()),
        (_, Some(t), _) => ScheduleKind::Timesteps(t.clone()),
        (_, _, Some(path)) => {
            let file = kairos_ays::ScheduleFile::read(path)?;
            ScheduleKind::Sigmas(file.sigmas_for(args.steps)?.into_vec())
        }
        _ => ScheduleKind::from_name(args.schedule.as_deref().unwrap_or("karras"))?,
    };
    let (init_image, width, height) = match &args.init_image {
        Some(path) => {
            let (image, width, height) = load_init_image(path, args.width, args.height, args.max_image_pixels)?;
            let init = InitImage {
                image,
                strength: args.denoise,
                resize_mode: ResizeMode::from_name(&args.resize_mode)?,
                denoise_rule: args.denoise_rule.as_deref().map(DenoiseRule::from_name).transpose()?,
            };
            (Some(init), width, height)
        }
        None => (None, args.width.unwrap_or(DEFAULT_SIZE), args.height.unwrap_or(DEFAULT_SIZE)),
    };
    Ok(Txt2ImgRequest {
        prompt,
        negative_prompt: args.negative_prompt.clone(),
        prompt_2: args.prompt_2.clone(),
        negative_prompt_2: args.negative_prompt_2.clone(),
        size_conditioning: SizeConditioning {
            original_size: args.original_size,
            crop: args.crop.unwrap_or((0, 0)),
            target_size: args.target_size,
            negative_original_size: args.negative_original_size,
            negative_crop: None,
            negative_target_size: args.negative_target_size,
            aesthetic_score: args.aesthetic_score,
            negative_aesthetic_score: args.negative_aesthetic_score,
        },
        width,
        height,
        steps: args.steps.unwrap_or(DEFAULT_STEPS),
        cfg_scale: args.cfg_scale.unwrap_or(DEFAULT_CFG),
        sampler: Sampler::from_name(args.sampler.as_deref().unwrap_or("dpmpp_2m"))?,
        seed: args.seed.unwrap_or_else(random_seed),
        batch_size: args.batch_size,
        batch_count: args.batch_count,
        rng: RngKind::from_name(&args.rng)?,
        seeding: match args.seeding {
            Seeding::Batch => BatchSeeding::Shared,
            Seeding::PerImage => BatchSeeding::PerItem,
        },
        // diffusers' Euler schedulers start trailing/linspace schedules at σ_max·noise
        // (`init_noise_sigma`), the others at sqrt(σ_max² + 1)·noise.
        initial_noise: match schedule {
            ScheduleKind::Trailing | ScheduleKind::Linspace => InitialNoise::Sigma,
            _ => InitialNoise::SqrtOnePlusSigmaSquared,
        },
        schedule,
        init_image,
        denoising_end: args.refiner.is_some().then_some(args.refiner_switch),
    })
}

/// Loads the SDXL refiner of an ensemble run with the base's options (LoRAs are the base's
/// alone), checking that it is one.
fn load_refiner(
    path: &Path,
    opts: &ModelOptions,
    req: &Txt2ImgRequest,
    low_memory: bool,
) -> anyhow::Result<StableDiffusion> {
    let start = Instant::now();
    let opts = ModelOptions { loras: Vec::new(), ..opts.clone() };
    let mut refiner = StableDiffusion::load(path, &opts).with_context(|| format!("loading {}", path.display()))?;
    if refiner.model_family != ModelFamily::SdxlRefiner {
        bail!(
            "--refiner {} is {}, not an SDXL refiner (one OpenCLIP-bigG text encoder, aesthetic-score conditioning)",
            path.display(),
            refiner.model_family.name()
        );
    }
    eprintln!("loaded refiner {} in {:.2} s", path.display(), start.elapsed().as_secs_f64());
    if low_memory {
        refiner.encode_and_drop_text_encoder(&[
            (&req.prompt, req.prompt_2.as_deref()),
            (&req.negative_prompt, req.negative_prompt_2.as_deref()),
        ])?;
    }
    Ok(refiner)
}

/// A seed from the clock, in A1111's range (below 2³²).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos % 4_294_967_294) as u64
}

/// Runs `kairos generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Cheap checks first, so that a typo fails before a model is loaded.
    let (prompt, loras) = collect_loras(&args)?;
    let lora_hashes = loras
        .iter()
        .map(|l| {
            let name = l.path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let hash = lora_hash(&l.path).with_context(|| format!("cannot read the LoRA {}", l.path.display()))?;
            Ok(format!("{}: {hash}", name.replace([':', ','], "_")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut req = parse_request(&args, prompt)?;
    let prediction = args.prediction.as_deref().map(Prediction::from_name).transpose()?;
    let model_path = resolve_model(&args.model)?;
    let refiner_path = args.refiner.as_deref().map(resolve_model).transpose()?;
    let device = args.device.device()?;
    let (dtype, dtype_auto) = args.dtype.resolve(&device);
    let opts = ModelOptions {
        load: args.hints.load_options(),
        prediction,
        timestep_mode: match args.timestep_mode {
            TimestepArg::Fractional => TimestepMode::Fractional,
            TimestepArg::Quantized => TimestepMode::Quantized,
        },
        prompt_syntax: match args.prompt_syntax {
            SyntaxArg::A1111 => PromptSyntax::A1111,
            SyntaxArg::Diffusers => PromptSyntax::Diffusers,
        },
        prompt: PromptOptions { clip_skip: args.clip_skip, ..PromptOptions::default() },
        vae: args.vae.clone(),
        vae_tiling: TilingOptions {
            tile_sample_size: args.vae_tile_size,
            overlap_factor: 0.25,
            mode: match args.vae_tiling {
                VaeTiling::Auto => TilingMode::Auto { memory_budget_bytes: args.vae_memory_budget << 20 },
                VaeTiling::Always => TilingMode::Always,
                VaeTiling::Never => TilingMode::Never,
            },
        },
        loras,
        dtype,
        device,
        ..ModelOptions::default()
    };
    let load_start = Instant::now();
    let mut sd =
        StableDiffusion::load(&model_path, &opts).with_context(|| format!("loading {}", model_path.display()))?;
    // LoRAs are merged while the networks are built, so this includes the merge.
    let lora_note =
        if opts.loras.is_empty() { String::new() } else { format!(", {} LoRA(s) merged", opts.loras.len()) };
    eprintln!("loaded {} in {:.2} s{lora_note}", model_path.display(), load_start.elapsed().as_secs_f64());
    if refiner_path.is_some() && sd.model_family != ModelFamily::Sdxl {
        bail!("--refiner needs an SDXL base model; {} is {}", model_path.display(), sd.model_family.name());
    }
    if sd.model_family.is_sdxl() && args.init_image.is_none() {
        req.width = args.width.unwrap_or(SDXL_DEFAULT_SIZE);
        req.height = args.height.unwrap_or(SDXL_DEFAULT_SIZE);
    }
    if args.low_memory {
        sd.encode_and_drop_text_encoder(&[
            (&req.prompt, req.prompt_2.as_deref()),
            (&req.negative_prompt, req.negative_prompt_2.as_deref()),
        ])?;
    }
    if let Some(lcm) = sd.lcm {
        apply_lcm_defaults(&args, &mut req, lcm)?;
    }
    let taesd = args
        .taesd
        .as_deref()
        .map(|path| Taesd::load(path, opts.dtype, &opts.device).with_context(|| format!("loading {}", path.display())))
        .transpose()?;
    let mut components = sd.components();
    if let Some(taesd) = &taesd {
        let (tiny, vae) = (taesd.scale_factor(), sd.vae.scale_factor());
        if tiny != vae || taesd.latent_channels() != sd.vae.latent_channels() {
            bail!(
                "TAESD {} does not fit this model: it decodes {} latent channels at {tiny}x, the model's VAE {} at {vae}x",
                args.taesd.as_deref().map_or(String::new(), |p| p.display().to_string()),
                taesd.latent_channels(),
                sd.vae.latent_channels(),
            );
        }
        components.decoder = taesd;
    }
    let preview = match &taesd {
        Some(taesd) => Preview::Decoder(taesd),
        None if sd.model_family.is_sdxl() => Preview::Linear(LatentRgbFactors::Sdxl),
        None => Preview::Linear(LatentRgbFactors::Sd15),
    };

    let run_steps = kairos_pipeline::txt2img::request_sigmas(&components, &req)?.len() - 1;
    // The infotext's Steps is the full schedule's, as A1111 writes it for img2img (which runs
    // a tail of them).
    let steps = match &req.init_image {
        None => run_steps,
        Some(_) => {
            let full = Txt2ImgRequest { init_image: None, ..req.clone() };
            kairos_pipeline::txt2img::request_sigmas(&components, &full)?.len() - 1
        }
    };
    let total = (run_steps * req.batch_count) as u64;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    // Plain lines carry the time since the previous event, so logs show the time per step.
    let mut last = Instant::now();
    // A preview that cannot be written stops the run; the error is reported after it.
    let mut preview_error: Option<anyhow::Error> = None;
    let mut on_progress = |p: &Progress| {
        let took = std::mem::replace(&mut last, Instant::now()).elapsed().as_secs_f64();
        match (p, &bar) {
            (Progress::Step { .. }, Some(bar)) => bar.inc(1),
            (Progress::Step { batch, batches, step, steps, sigma, .. }, None) => {
                eprintln!("batch {}/{batches} step {}/{steps} sigma {sigma:.4} ({took:.2} s)", batch + 1, step + 1)
            }
            (Progress::Decoding { .. }, Some(bar)) => bar.set_message("decoding"),
            (Progress::Decoding { batch }, None) => eprintln!("batch {} decoding ({took:.2} s)", batch + 1),
        }
        if let (Progress::Step { step, denoised, .. }, Some(path)) = (p, &args.preview) {
            if (*step as u64 + 1).is_multiple_of(args.preview_every) {
                if let Err(e) = write_preview(path, &preview, denoised) {
                    preview_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    };
    let out = txt2img_latents(&components, &req, &mut on_progress);
    drop(components);
    // Sampling is over: free the UNet before the decode, so that the VAE's activations reuse its
    // memory and the run peaks at the larger of the two instead of their sum (bf16 at 512²:
    // peak RSS 3,193 → 2,639 MiB, f32 5,318 → 4,437 MiB, measured).
    drop(sd.unet);
    let mut vae = sd.vae;
    let out = match (&refiner_path, out) {
        (Some(path), Ok(handoff)) => {
            // The base is freed before the refiner loads: the two never share memory.
            drop(sd.encoder);
            let refiner = load_refiner(path, &opts, &req, args.low_memory)?;
            let out = refine_latents(&refiner.components(), &req, args.refiner_switch, &handoff, &mut on_progress);
            vae = refiner.vae;
            out
        }
        (_, out) => out,
    };
    let decoder: &dyn LatentDecoder = match &taesd {
        Some(taesd) => taesd,
        None => &vae,
    };
    let out = out.and_then(|mut out| decode_latents(decoder, &mut out, &mut on_progress).map(|()| out));
    if let Some(e) = preview_error {
        return Err(e);
    }
    let out = out?;
    match &bar {
        Some(bar) => bar.finish_and_clear(),
        None => eprintln!("decoded ({:.2} s)", last.elapsed().as_secs_f64()),
    }

    let model_name = model_path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let model_hash = short_hash(&model_path);
    let vae_hash = args.vae.as_deref().and_then(short_hash);
    let vae_name = args.vae.as_deref().and_then(Path::file_name).map(|s| s.to_string_lossy().into_owned());
    let target = OutputTarget::from_path(&args.output);
    let count = req.batch_size * req.batch_count;
    let images = out.batches.iter().flat_map(|b| b.seeds.iter().zip(&b.images));
    for (index, (&seed, image)) in images.enumerate() {
        let mut extra: Vec<(String, String)> = req
            .init_image
            .as_ref()
            .map(|init| ("Denoising strength".to_string(), init.strength.to_string()))
            .into_iter()
            .collect();
        extra.push(("Timestep mode".into(), format!("{:?}", args.timestep_mode).to_lowercase()));
        extra.push(dtype_field(opts.dtype));
        if !lora_hashes.is_empty() {
            extra.push(("Lora hashes".into(), lora_hashes.join(", ")));
        }
        if let Some(path) = &refiner_path {
            // A1111's refiner fields.
            let name = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let hash = short_hash(path).map(|h| format!(" [{h}]")).unwrap_or_default();
            extra.push(("Refiner".into(), format!("{name}{hash}")));
            extra.push(("Refiner switch at".into(), args.refiner_switch.to_string()));
        }
        let info = Infotext {
            // A1111 keeps the <lora:...> tags in the infotext prompt.
            prompt: args.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            steps,
            sampler: req.sampler,
            schedule: req.schedule.clone(),
            cfg_scale: req.cfg_scale,
            seed,
            width: req.width,
            height: req.height,
            model_hash: model_hash.clone(),
            model: model_name.clone(),
            vae_hash: vae_hash.clone(),
            vae: vae_name.clone(),
            clip_skip: args.clip_skip,
            rng: req.rng,
            extra,
        };
        let path = save_png(&target, index, count, seed, image, &info.to_text())?;
        println!("{}", path.display());
        if args.json {
            let sidecar = serde_json::json!({
                "parameters": info.to_text(),
                "prompt": req.prompt,
                "negative_prompt": req.negative_prompt,
                "prompt_2": req.prompt_2,
                "negative_prompt_2": req.negative_prompt_2,
                "model": model_path,
                "sampler": req.sampler.name(),
                "schedule": req.schedule.name(),
                "sigmas": out.sigmas,
                "steps": steps,
                "cfg_scale": req.cfg_scale,
                "seed": seed,
                "width": req.width,
                "height": req.height,
                "rng": req.rng.name(),
                "clip_skip": args.clip_skip,
                "family": sd.family.name(),
                "dtype": opts.dtype.as_str(),
                "dtype_auto": dtype_auto.as_ref().map(|a| a.to_json()),
                "vae": args.vae,
                "init_image": args.init_image,
                "denoise": req.init_image.as_ref().map(|init| init.strength),
                "resize_mode": req.init_image.as_ref().map(|init| init.resize_mode.name()),
                "denoise_rule": req.init_image.as_ref().map(|init| {
                    init.denoise_rule.unwrap_or(req.schedule.denoise_rule()).name()
                }),
                "loras": opts.loras.iter().map(|l| serde_json::json!({
                    "path": l.path,
                    "unet_strength": l.unet_strength,
                    "text_encoder_strength": l.text_encoder_strength,
                })).collect::<Vec<_>>(),
                "lora_hashes": lora_hashes,
                "refiner": refiner_path,
                "refiner_switch": refiner_path.as_ref().map(|_| args.refiner_switch),
                "original_size": req.size_conditioning.original_size,
                "crop": req.size_conditioning.crop,
                "target_size": req.size_conditioning.target_size,
            });
            save_json_sidecar(&path, &sidecar)?;
        }
    }
    Ok(())
}
