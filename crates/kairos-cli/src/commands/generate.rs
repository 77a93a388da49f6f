//! `kairos generate`: txt2img to PNG files with A1111 infotext.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kairos_models::prompt::PromptOptions;
use kairos_pipeline::infotext::Infotext;
use kairos_pipeline::output::{save_json_sidecar, save_png, OutputTarget};
use kairos_pipeline::{
    txt2img, InitialNoise, ModelOptions, Progress, PromptSyntax, StableDiffusion, TimestepMode, Txt2ImgRequest,
};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::Sampler;
use kairos_schedule::{Prediction, ScheduleKind};

/// The default model: SD 1.5 on the Hugging Face Hub.
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// Arguments of `kairos generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (A1111 syntax by default: `(word:1.2)`, `[word]`, `BREAK`).
    #[arg(long, short, default_value = "")]
    prompt: String,
    /// The negative prompt.
    #[arg(long, short, default_value = "")]
    negative_prompt: String,
    /// A checkpoint file (.safetensors, .ckpt), a diffusers folder, or a Hugging Face repo id.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Sampling steps [default: 20; with --sigmas-file, the file's own step count]. Ignored with
    /// --sigmas/--timesteps, whose length counts.
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale (1 disables the negative branch).
    #[arg(long, default_value_t = 7.5)]
    cfg_scale: f64,
    /// Sampler: k-diffusion/ComfyUI names or A1111 labels (euler, euler_ancestral, "Euler a", dpmpp_2m, ...).
    #[arg(long, default_value = "dpmpp_2m")]
    sampler: String,
    /// Sigma schedule: karras, normal, exponential, sgm_uniform, simple, ays, ays_a1111, gits, ...
    #[arg(long, alias = "scheduler", default_value = "karras")]
    schedule: String,
    /// Seed of the first image (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Image width in pixels (a multiple of 8).
    #[arg(long, short = 'W', default_value_t = 512)]
    width: usize,
    /// Image height in pixels (a multiple of 8).
    #[arg(long, short = 'H', default_value_t = 512)]
    height: usize,
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

/// A1111's short hash of a single-file checkpoint: the first 10 hex digits of its SHA-256.
fn short_hash(path: &Path) -> Option<String> {
    use sha2::Digest;
    if !path.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hasher.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect())
}

/// Sampling steps when neither --steps nor a schedule file says otherwise.
const DEFAULT_STEPS: usize = 20;

fn parse_request(args: &GenerateArgs) -> anyhow::Result<Txt2ImgRequest> {
    let schedule = match (&args.sigmas, &args.timesteps, &args.sigmas_file) {
        (Some(s), _, _) => ScheduleKind::Sigmas(s.clone()),
        (_, Some(t), _) => ScheduleKind::Timesteps(t.clone()),
        (_, _, Some(path)) => {
            let file = kairos_ays::ScheduleFile::read(path)?;
            ScheduleKind::Sigmas(file.sigmas_for(args.steps)?.into_vec())
        }
        _ => ScheduleKind::from_name(&args.schedule)?,
    };
    Ok(Txt2ImgRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width,
        height: args.height,
        steps: args.steps.unwrap_or(DEFAULT_STEPS),
        cfg_scale: args.cfg_scale,
        sampler: Sampler::from_name(&args.sampler)?,
        schedule,
        seed: args.seed.unwrap_or_else(random_seed),
        batch_size: args.batch_size,
        batch_count: args.batch_count,
        rng: RngKind::from_name(&args.rng)?,
        seeding: match args.seeding {
            Seeding::Batch => BatchSeeding::Shared,
            Seeding::PerImage => BatchSeeding::PerItem,
        },
        initial_noise: InitialNoise::SqrtOnePlusSigmaSquared,
    })
}

/// A seed from the clock, in A1111's range (below 2³²).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos % 4_294_967_294) as u64
}

/// Runs `kairos generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Cheap checks first, so that a typo fails before a model is loaded.
    let req = parse_request(&args)?;
    let prediction = args.prediction.as_deref().map(Prediction::from_name).transpose()?;
    let model_path = resolve_model(&args.model)?;
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
        ..ModelOptions::default()
    };
    let sd = StableDiffusion::load(&model_path, &opts).with_context(|| format!("loading {}", model_path.display()))?;
    let components = sd.components();

    let steps = kairos_pipeline::txt2img::request_sigmas(&components, &req)?.len() - 1;
    let total = (steps * req.batch_count) as u64;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    // Plain lines carry the time since the previous event, so logs show the time per step.
    let mut last = Instant::now();
    let mut on_progress = |p: &Progress| {
        let took = std::mem::replace(&mut last, Instant::now()).elapsed().as_secs_f64();
        match (p, &bar) {
            (Progress::Step { .. }, Some(bar)) => bar.inc(1),
            (Progress::Step { batch, batches, step, steps, sigma }, None) => {
                eprintln!("batch {}/{batches} step {}/{steps} sigma {sigma:.4} ({took:.2} s)", batch + 1, step + 1)
            }
            (Progress::Decoding { .. }, Some(bar)) => bar.set_message("decoding"),
            (Progress::Decoding { batch }, None) => eprintln!("batch {} decoding ({took:.2} s)", batch + 1),
        }
        ControlFlow::Continue(())
    };
    let out = txt2img(&components, &req, &mut on_progress)?;
    match &bar {
        Some(bar) => bar.finish_and_clear(),
        None => eprintln!("decoded ({:.2} s)", last.elapsed().as_secs_f64()),
    }

    let model_name = model_path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let model_hash = short_hash(&model_path);
    let target = OutputTarget::from_path(&args.output);
    let count = req.batch_size * req.batch_count;
    let images = out.batches.iter().flat_map(|b| b.seeds.iter().zip(&b.images));
    for (index, (&seed, image)) in images.enumerate() {
        let info = Infotext {
            prompt: req.prompt.clone(),
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
            clip_skip: args.clip_skip,
            rng: req.rng,
            extra: vec![("Timestep mode".into(), format!("{:?}", args.timestep_mode).to_lowercase())],
        };
        let path = save_png(&target, index, count, seed, image, &info.to_text())?;
        println!("{}", path.display());
        if args.json {
            let sidecar = serde_json::json!({
                "parameters": info.to_text(),
                "prompt": req.prompt,
                "negative_prompt": req.negative_prompt,
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
            });
            save_json_sidecar(&path, &sidecar)?;
        }
    }
    Ok(())
}
