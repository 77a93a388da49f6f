//! `kairos schedule optimize`: an Align Your Steps schedule for the toy world (exact or trained
//! MLP denoiser) or a Stable Diffusion checkpoint (`--model`), written as a schedule file,
//! optionally compared with hand-crafted schedules by KLUB (and, on the toy world, by sample
//! quality).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Tensor;
use clap::{Args, Subcommand};
use kairos_ays::{
    denoiser_distance, initial_knots, knots_of, loglinear_knots, sampler_sigmas, toy_quality, DataSource, Estimate,
    Init, Judge, KlubEstimator, KlubOptions, Level, MlpConfig, MlpDenoiser, Objective, OptimizeOptions, Optimizer,
    Progress, Quality, ScheduleFile, TensorData, TrainOptions,
};
use kairos_pipeline::txt2img::request_conditioning;
use kairos_pipeline::{
    txt2img_latents, CfgDenoiser, Components, ModelDenoiser, ModelOptions, RgbImage, StableDiffusion, Txt2ImgRequest,
};
use kairos_sampler::{Denoiser, Sampler};
use kairos_schedule::{Family, NoiseSchedule, ScheduleKind};
use kairos_toy::{ExactDenoiser, GaussianMixture, ToyWorld};

use super::family_schedule;
use super::schedule::ScheduleArgs;

/// First seed of the judge's quality evaluations.
const JUDGE_SEEDS_FROM: u64 = 1_000_000;

/// `kairos schedule`: print a schedule, or `kairos schedule optimize`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ScheduleCommand {
    #[command(subcommand)]
    sub: Option<ScheduleSub>,
    #[command(flatten)]
    args: ScheduleArgs,
}

/// Subcommands of `kairos schedule`.
#[derive(Subcommand, Debug)]
enum ScheduleSub {
    /// Optimize an Align Your Steps schedule (KLUB coordinate descent) on the toy world or a model.
    Optimize(Box<OptimizeArgs>),
}

/// Arguments of `kairos schedule optimize`.
#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// A Stable Diffusion checkpoint (single file or diffusers folder): optimize for its UNet, with
    /// CFG on `--prompt`, instead of the toy world (`--denoiser`, `--mixture` and `--family` are
    /// then taken from the model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: the clean samples x0 are these images (PNG/JPEG, center-cropped and resized
    /// to --size, VAE-encoded: posterior mean × scaling factor).
    #[arg(long)]
    images: Option<PathBuf>,
    /// With --model and no --images: x0 are the model's own samples, this many (seeds 0..N), each
    /// made with --sample-steps steps of dpmpp_2m / karras on --prompt.
    #[arg(long, default_value_t = 8)]
    self_samples: usize,
    /// Steps of each of the model's own samples.
    #[arg(long, default_value_t = 30)]
    sample_steps: usize,
    /// With --model: image side in pixels (a multiple of 8).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// With --model: the prompt that conditions every denoiser call (the paper pairs each COCO
    /// image with its caption; here one prompt serves all samples).
    #[arg(long, default_value = "")]
    prompt: String,
    /// With --model: the negative prompt.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// With --model: the guidance scale the schedule is optimized at (the paper: the model's
    /// default guidance).
    #[arg(long, default_value_t = 7.5)]
    cfg_scale: f64,
    #[command(flatten)]
    hints: super::inspect::HintArgs,
    /// Denoiser: `exact` (the mixture's posterior mean) or `mlp` (trained here, EDM preconditioning).
    #[arg(long, default_value = "exact")]
    denoiser: String,
    /// Data distribution: 8x8, 8x4, 6x6 (grids), ring, gaussian.
    #[arg(long, default_value = "8x8")]
    mixture: String,
    /// Data distribution from a JSON file instead of --mixture: {"weights": [...], "means":
    /// [[x, y], ...], "covariances": [[[a, b], [b, c]], ...]} with optional "sigma_min" and
    /// "sigma_max" (the schedule's range when --family is not given).
    #[arg(long, conflicts_with = "mixture")]
    mixture_file: Option<PathBuf>,
    /// Model family whose sigma range and timesteps the schedule uses [default: sd1, or the
    /// mixture file's σ range].
    #[arg(long)]
    family: Option<String>,
    /// Steps of the first level.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Subdivision rounds after the first level (2: 10 → 20 → 40).
    #[arg(long, default_value_t = 0)]
    subdivisions: usize,
    /// Initial schedule: auto (exponential; the README gives the measurements behind it),
    /// time_uniform, karras, exponential.
    #[arg(long, default_value = "auto")]
    init: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Noise levels per candidate comparison.
    #[arg(long, default_value_t = 1024)]
    t_samples: usize,
    /// Data samples per noise level.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Noise levels of the per-sweep evaluation (early stopping and the reported KLUB).
    #[arg(long, default_value_t = 4096)]
    eval_t_samples: usize,
    /// Sweep limit per level.
    #[arg(long, default_value_t = 30)]
    max_sweeps: usize,
    /// Early stopping of the first level: stop when a sweep improves the KLUB by less than this
    /// many standard errors.
    #[arg(long, default_value_t = 2.0)]
    stop_z: f64,
    /// Run the first level to no-move or --max-sweeps, without early stopping.
    #[arg(long)]
    no_early_stop: bool,
    /// Toy world: early stopping of the first level judged by sample quality, as the paper does
    /// (`kl`: the estimated KL(samples ‖ data), which sees both blur and collapse; `sw1`: the
    /// sliced Wasserstein distance, blind to blur on many-mode data; either a mean over
    /// --samplers and --judge-seeds, the best-judged sweep kept), or by the KLUB's noise alone
    /// (`none`, see --stop-z).
    #[arg(long, default_value = "kl")]
    judge: String,
    /// Seeds of each judged quality evaluation (from 1000000, apart from the comparison's).
    #[arg(long, default_value_t = 2)]
    judge_seeds: u64,
    /// Sweeps without a better judged score before the first level stops.
    #[arg(long, default_value_t = 3)]
    judge_patience: usize,
    /// Toy world with --judge kl: after the KLUB descent, this many sweeps of judge-guided
    /// refinement (0: none). Each knot tries small moves; one is kept when it lowers the worst
    /// sampler's judged KL relative to the best --refine-against schedule for that sampler,
    /// while the KLUB stays below every --refine-against schedule's.
    #[arg(long, default_value_t = 2)]
    refine_sweeps: usize,
    /// The hand-crafted schedules the refinement measures against (KL per sampler, and the
    /// KLUB ceiling).
    #[arg(long, value_delimiter = ',', default_value = "karras,exponential")]
    refine_against: Vec<String>,
    /// Where to write the schedule file (other levels go beside it as <stem>.<steps>.json).
    #[arg(long, default_value = "ays_schedule.json")]
    out: PathBuf,
    /// Checkpoint file: written after every sweep, resumed from if it exists.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// MLP weights (.safetensors): loaded if the file exists, else trained and saved there.
    #[arg(long)]
    mlp_weights: Option<PathBuf>,
    /// MLP training steps.
    #[arg(long, default_value_t = TrainOptions::default().steps)]
    mlp_train_steps: usize,
    /// MLP hidden width.
    #[arg(long, default_value_t = MlpConfig::default().hidden)]
    mlp_hidden: usize,
    /// After optimizing, compare with these schedules (KLUB and sample quality); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "karras,exponential,normal,kl_optimal")]
    compare: Vec<String>,
    /// Samplers of the judge and of the sample-quality comparison.
    #[arg(long, value_delimiter = ',', default_value = "euler,euler_ancestral,dpmpp_2m")]
    samplers: Vec<String>,
    /// Seeds (0..N) of the sample-quality comparison.
    #[arg(long, default_value_t = 8)]
    seeds: u64,
    /// Points per sample-quality run.
    #[arg(long, default_value_t = 10_000)]
    points: usize,
}

/// Runs `kairos schedule [optimize]`.
pub fn run_schedule(cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd.sub {
        Some(ScheduleSub::Optimize(args)) => run(*args),
        None => super::schedule::run(cmd.args),
    }
}

/// A text progress line on stderr (the library draws none itself).
fn progress_line(p: &Progress) -> ControlFlow<()> {
    if p.coordinate != 0 {
        return ControlFlow::Continue(());
    }
    let done = p.sweep * p.coordinates + p.coordinate;
    let total = p.max_sweeps * p.coordinates;
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    eprint!(
        "\r[{}{}] level {}/{} ({} steps) sweep {} ({} points)  KLUB {:.4} ± {:.4}   ",
        "#".repeat(filled),
        " ".repeat(width - filled),
        p.level + 1,
        p.levels,
        p.steps,
        p.sweep + 1,
        p.coordinates,
        p.klub.value,
        p.klub.stderr
    );
    let _ = std::io::stderr().flush();
    ControlFlow::Continue(())
}

fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    let kinds = args
        .compare
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| ScheduleKind::from_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    match args.model.clone() {
        Some(path) => run_model(&args, &path, &kinds),
        None => run_toy(&args, &kinds),
    }
}

/// The toy world: the exact or MLP denoiser, KLUB and sample-quality comparison.
fn run_toy(args: &OptimizeArgs, kinds: &[ScheduleKind]) -> anyhow::Result<()> {
    let toy = super::toy_data(&args.mixture, args.mixture_file.as_deref(), args.family.as_deref())?;
    let (family, model) = (toy.family, &toy.model);
    let samplers = args.samplers.iter().map(|n| Sampler::from_name(n)).collect::<Result<Vec<_>, _>>()?;
    if samplers.is_empty() {
        bail!("--samplers needs at least one sampler (e.g. euler,euler_ancestral,dpmpp_2m)");
    }
    let figure: Option<fn(&Quality) -> f64> = match args.judge.as_str() {
        "kl" => Some(|q| q.kl.mean),
        "sw1" => Some(|q| q.sliced_wasserstein.mean),
        "none" => None,
        other => bail!("unknown --judge `{other}`; accepted: kl, sw1, none"),
    };
    let mut data: GaussianMixture = toy.mixture.clone();
    let mixture = toy.mixture.clone();
    // Three handles on one denoiser: the optimizer's estimator holds one, the judge and the
    // refinement's score one each.
    type Handles<'m> = (Box<dyn Denoiser + 'm>, Box<dyn Denoiser + 'm>, Box<dyn Denoiser + 'm>, String);
    let (mut denoiser, mut judged, mut refined, model_id): Handles<'_> = match args.denoiser.as_str() {
        "exact" => (
            Box::new(ExactDenoiser::new(&mixture)),
            Box::new(ExactDenoiser::new(&mixture)),
            Box::new(ExactDenoiser::new(&mixture)),
            format!("toy:{}:exact", toy.name),
        ),
        "mlp" => {
            let net = mlp(args, &mut data, model)?;
            report_mlp_error(&net, &mixture, model, args.seed)?;
            let id = format!(
                "toy:{}:mlp(hidden {}, {} train steps, seed {})",
                toy.name, args.mlp_hidden, args.mlp_train_steps, args.seed
            );
            (Box::new(net.clone()), Box::new(net.clone()), Box::new(net), id)
        }
        other => bail!("unknown --denoiser `{other}`; accepted: exact, mlp"),
    };
    let world = ToyWorld::new(toy.mixture.clone());
    // The judge's seeds are disjoint from the reported comparison's (0..--seeds), so the table
    // does not score the schedule on the draws that picked it.
    let judge_seeds: Vec<u64> = (0..args.judge_seeds).map(|s| JUDGE_SEEDS_FROM + s).collect();
    let mut score = |figure: fn(&Quality) -> f64, knots: &[f64]| -> kairos_ays::Result<f64> {
        let mut total = 0.0;
        for s in &samplers {
            let q = toy_quality(&world, judged.as_mut(), s, &sampler_sigmas(knots), args.points, &judge_seeds)?;
            total += figure(&q);
        }
        Ok(total / samplers.len() as f64)
    };
    let mut by_figure = figure.map(|f| move |knots: &[f64]| score(f, knots));
    let judge: Option<&mut Judge<'_>> = by_figure.as_mut().map(|j| j as &mut Judge<'_>);
    // The refinement's score: the worst sampler's judged KL over the best reference schedule's
    // for that sampler (below 1: better than every reference for every sampler).
    let against = args
        .refine_against
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| Ok(knots_of(&ScheduleKind::from_name(n)?, model, family, levels_steps(args))?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refine = args.judge == "kl" && args.refine_sweeps > 0 && !against.is_empty();
    let kl_of = |d: &mut dyn Denoiser, knots: &[f64]| -> kairos_ays::Result<Vec<f64>> {
        samplers
            .iter()
            .map(|s| Ok(toy_quality(&world, d, s, &sampler_sigmas(knots), args.points, &judge_seeds)?.kl.mean))
            .collect()
    };
    let best_reference: Vec<f64> = if refine {
        let kls = against.iter().map(|k| kl_of(refined.as_mut(), k)).collect::<kairos_ays::Result<Vec<_>>>()?;
        (0..samplers.len()).map(|s| kls.iter().map(|k| k[s]).fold(f64::INFINITY, f64::min)).collect()
    } else {
        Vec::new()
    };
    let mut worst_ratio = |knots: &[f64]| -> kairos_ays::Result<f64> {
        let kl = kl_of(refined.as_mut(), knots)?;
        // The KL estimate can dip to 0 or below near the truth; a floor keeps the ratio finite.
        Ok(kl.iter().zip(&best_reference).map(|(k, r)| k / r.max(1e-3)).fold(f64::NEG_INFINITY, f64::max))
    };
    let refinement = refine.then_some(Refine { score: &mut worst_ratio, ceiling: against, sweeps: args.refine_sweeps });
    let extra = serde_json::json!({ "mixture": toy.name, "judge": args.judge });
    let levels =
        optimize_levels(args, denoiser.as_mut(), &mut data, family, model, &model_id, extra, judge, refinement)?;
    if kinds.is_empty() {
        return Ok(());
    }
    let rows = comparison_rows(&levels, kinds, model, family)?;
    let eval = eval_options(args);
    let groups = paired_klub(args, denoiser.as_mut(), &mut data, &rows)?;
    let seeds: Vec<u64> = (0..args.seeds).collect();
    println!();
    println!(
        "{} points × {} seeds (mean ± std over seeds); KLUB ± standard error on {} noise levels × {}",
        args.points, args.seeds, eval.t_samples, eval.batch
    );
    println!("KL: estimated KL(samples ‖ data), nats (the judge); SW1: sliced Wasserstein-1; NLL: mean -log p(x)");
    print!("{:<28} {:>17}", "schedule", "KLUB ↓");
    for s in &samplers {
        print!("  {:>38}", format!("{} KL ↓ / SW1 ↓ / NLL ↓", s.name()));
    }
    println!();
    for ((name, knots), g) in rows.iter().zip(&groups) {
        let e = Estimate::of(g);
        print!("{name:<28} {:>17}", format!("{:.4} ± {:.4}", e.value, e.stderr));
        for s in &samplers {
            let q = toy_quality(&world, denoiser.as_mut(), s, &sampler_sigmas(knots), args.points, &seeds)?;
            print!(
                "  {:>38}",
                format!("{:.3}±{:.3} / {:.4} / {:.3}", q.kl.mean, q.kl.std, q.sliced_wasserstein.mean, q.nll.mean)
            );
        }
        println!();
    }
    let truth = world.evaluate_true_samples(args.points, &seeds)?;
    println!(
        "{:<28} {:>17}  true samples: KL {:.3}±{:.3} / SW1 {:.4} / NLL {:.3}",
        "(floor)", "-", truth.kl.mean, truth.kl.std, truth.sliced_wasserstein.mean, truth.nll.mean
    );
    Ok(())
}

/// A Stable Diffusion checkpoint: its UNet with CFG on one prompt, x0 from images or from its
/// own samples; the comparison is by KLUB only (there is no true distribution to score against).
fn run_model(args: &OptimizeArgs, path: &Path, kinds: &[ScheduleKind]) -> anyhow::Result<()> {
    if args.size == 0 || !args.size.is_multiple_of(8) {
        bail!("--size {} must be a positive multiple of 8", args.size);
    }
    let opts = ModelOptions { load: args.hints.load_options(), ..ModelOptions::default() };
    let sd = StableDiffusion::load(path, &opts).with_context(|| format!("loading {}", path.display()))?;
    if sd.lcm.is_some() {
        bail!(
            "{} is consistency-distilled (LCM): the KLUB is defined for the reverse SDE of an ordinary \
             diffusion model; optimize for the base model instead",
            path.display()
        );
    }
    let c = sd.components();
    let (family, model) = family_schedule(c.family.name())?;
    let (latents, source) = match &args.images {
        Some(dir) => (encode_images(&c, dir, args.size)?, format!("images {}", dir.display())),
        None => (self_samples(&c, args)?, format!("{} own samples of {} steps", args.self_samples, args.sample_steps)),
    };
    eprintln!("x0: {} latents {:?} from {source}", latents.dim(0)?, latents.dims());
    let mut data = TensorData::new(latents)?;
    // The prompt pair, and for SDXL the pooled text with the size ids of a --size image.
    let (cond, uncond) = request_conditioning(&c, &prompt_request(args))?;
    let inner = ModelDenoiser::new(c.model, c.schedule.clone(), c.prediction, c.family.sigma_data());
    let mut denoiser = CfgDenoiser::new(inner, &cond, &uncond, args.cfg_scale, false)?;
    let model_id = format!("{} (cfg {}, prompt {:?})", path.display(), args.cfg_scale, args.prompt);
    let extra = serde_json::json!({ "x0": source, "size": args.size, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt, "cfg_scale": args.cfg_scale });
    let levels = optimize_levels(args, &mut denoiser, &mut data, family, &model, &model_id, extra, None, None)?;
    if kinds.is_empty() {
        return Ok(());
    }
    let rows = comparison_rows(&levels, kinds, &model, family)?;
    let groups = paired_klub(args, &mut denoiser, &mut data, &rows)?;
    println!();
    println!("{:<28} {:>17}", "schedule", "KLUB ↓");
    for ((name, _), g) in rows.iter().zip(&groups) {
        let e = Estimate::of(g);
        println!("{name:<28} {:>17}", format!("{:.4} ± {:.4}", e.value, e.stderr));
    }
    Ok(())
}

/// `--images`: each image center-cropped and resized to `size`², encoded one at a time; the
/// posterior means times the VAE's scaling factor (UNet-scale latents), stacked.
fn encode_images(c: &Components<'_>, dir: &Path, size: usize) -> anyhow::Result<Tensor> {
    let files = super::vae_eval::list_images(dir)?;
    if files.is_empty() {
        bail!("no PNG or JPEG images in {}", dir.display());
    }
    let scale = c.image_encoder.scaling_factor();
    let latents = files
        .iter()
        .map(|f| {
            let image = super::vae_eval::load_image(f, size as u32)?;
            let rgb = RgbImage { width: size, height: size, data: image.into_raw() };
            let posterior = c.image_encoder.encode(&rgb.to_tensor(&c.device)?)?;
            Ok((posterior.mean * scale)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&latents, 0)?)
}

/// The model's own samples: `--self-samples` txt2img runs (seeds 0..N) on `--prompt`, their final
/// latents.
/// The prompts and image size of `args` as a request.
fn prompt_request(args: &OptimizeArgs) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.size,
        height: args.size,
        ..Txt2ImgRequest::default()
    }
}

fn self_samples(c: &Components<'_>, args: &OptimizeArgs) -> anyhow::Result<Tensor> {
    if args.self_samples == 0 {
        bail!("--self-samples must be at least 1 without --images");
    }
    let req = Txt2ImgRequest {
        steps: args.sample_steps,
        cfg_scale: args.cfg_scale,
        batch_count: args.self_samples,
        seed: args.seed,
        ..prompt_request(args)
    };
    // Latents only: the samples are never decoded.
    let out = txt2img_latents(c, &req, &mut |p| {
        if let kairos_pipeline::Progress::Step { batch, step, steps, .. } = p {
            if step + 1 == *steps {
                eprint!("\rsampling x0: {}/{}   ", batch + 1, args.self_samples);
            }
        }
        ControlFlow::Continue(())
    })?;
    eprintln!();
    Ok(Tensor::cat(&out.batches.iter().map(|b| b.latents.clone()).collect::<Vec<_>>(), 0)?)
}

/// The optimizer's options from the arguments.
fn search_options(args: &OptimizeArgs) -> KlubOptions {
    KlubOptions { t_samples: args.t_samples, batch: args.batch, ..KlubOptions::default() }
}

/// The per-sweep evaluation (and comparison) estimator's options.
fn eval_options(args: &OptimizeArgs) -> KlubOptions {
    KlubOptions { t_samples: args.eval_t_samples, ..search_options(args) }
}

/// Steps of the last (written) level.
fn levels_steps(args: &OptimizeArgs) -> usize {
    args.steps << args.subdivisions
}

/// Judge-guided refinement of the last level ([`Optimizer::refine`]).
struct Refine<'r> {
    score: &'r mut Judge<'r>,
    /// Knots of the reference schedules, whose KLUB the refined one stays below.
    ceiling: Vec<Vec<f64>>,
    sweeps: usize,
}

/// Runs the optimizer (all levels) and the refinement, writes one schedule file per level and
/// prints them. A refinement replaces the last level's knots and KLUB with its own.
#[allow(clippy::too_many_arguments)]
fn optimize_levels<'p>(
    args: &OptimizeArgs,
    denoiser: &mut dyn Denoiser,
    data: &mut dyn DataSource,
    family: Family,
    model: &dyn NoiseSchedule,
    model_id: &str,
    extra: serde_json::Value,
    judge: Option<&'p mut Judge<'p>>,
    refine: Option<Refine<'_>>,
) -> anyhow::Result<Vec<Level>> {
    let init = Init::from_name(&args.init)?;
    let search = search_options(args);
    let options = OptimizeOptions {
        subdivisions: args.subdivisions,
        max_sweeps: args.max_sweeps,
        stop_z: (!args.no_early_stop).then_some(args.stop_z),
        search,
        eval: eval_options(args),
        seed: args.seed,
        judge_patience: args.judge_patience,
        ..OptimizeOptions::default()
    };
    let initial = initial_knots(init, model, family, args.steps)?;
    let started = std::time::Instant::now();
    let mut refinement = None;
    let levels = {
        let klub = KlubEstimator::new(denoiser, data, search)?;
        let mut bar = progress_line;
        let mut opt = Optimizer::new(klub, options.clone(), model_id)?.with_progress(&mut bar);
        if let Some(cp) = &args.checkpoint {
            opt = opt.with_checkpoint(cp);
        }
        if let Some(judge) = judge {
            opt = opt.with_judge(judge);
        }
        let mut levels = opt.run(&initial)?;
        if let Some(r) = refine {
            eprintln!();
            eprintln!("optimized in {:.1} s; refining by the judge", started.elapsed().as_secs_f64());
            let last = levels.last_mut().expect("at least one level");
            let done = opt.refine(&last.knots, r.score, &r.ceiling, r.sweeps)?;
            (last.knots, last.klub) = (done.knots.clone(), done.klub);
            refinement = Some(done);
        }
        levels
    };
    eprintln!();
    let what = if refinement.is_some() { "optimized and refined" } else { "optimized" };
    eprintln!("{what} in {:.1} s", started.elapsed().as_secs_f64());

    let settings = serde_json::json!({
        "options": options, "init": init, "initial_knots": initial, "data": extra,
        "levels": levels.iter().map(|l| serde_json::json!({
            "steps": l.steps, "sweeps": l.sweeps.len(), "kept": l.kept, "stop": l.stop, "initial_klub": l.initial_klub, "klub": l.klub })).collect::<Vec<_>>(),
        "refinement": refinement.as_ref().map(|r| serde_json::json!({ "against": args.refine_against,
            "initial_score": r.initial_score, "score": r.score, "sweeps": r.sweeps, "moves": r.moves })),
    });
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        let path = if i == last { args.out.clone() } else { level_path(&args.out, level.steps) };
        let file = ScheduleFile::new(
            model_id,
            family.name(),
            "euler_ancestral",
            level.knots.clone(),
            model,
            Objective::klub(level.klub),
            settings.clone(),
        )?;
        file.write(&path).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{} steps: KLUB {:.4} ± {:.4} (initial {:.4} ± {:.4}), {} sweeps, stop {:?} → {}",
            level.steps,
            level.klub.value,
            level.klub.stderr,
            level.initial_klub.value,
            level.initial_klub.stderr,
            level.sweeps.len(),
            level.stop,
            path.display()
        );
        println!("  knots: {}", level.knots.iter().map(|k| format!("{k:.4}")).collect::<Vec<_>>().join(" "));
        report_kept(level);
        if let Some(r) = refinement.as_ref().filter(|_| i == last) {
            println!(
                "  refined by the judge: worst sampler's KL / best of {} {:.3} → {:.3} ({} moves, {} sweeps)",
                args.refine_against.join(","),
                r.initial_score,
                r.score,
                r.moves,
                r.sweeps
            );
        }
    }
    Ok(levels)
}

/// Says which schedule a level kept when it is not its last sweep (the judge preferred an
/// earlier one, or the last sweep's KLUB rose above the initial's), with the figures of both.
fn report_kept(level: &Level) {
    let last = level.sweeps.len();
    if level.kept == last {
        return;
    }
    let figures = |j: usize| match j {
        0 => (level.initial_klub, level.initial_score),
        j => (level.sweeps[j - 1].klub, level.sweeps[j - 1].score),
    };
    let describe = |j: usize| {
        let (klub, score) = figures(j);
        let name = if j == 0 { "the initial schedule".to_string() } else { format!("sweep {j}") };
        let score = score.map_or(String::new(), |s| format!(", judged {s:.4}"));
        format!("{name} (KLUB {:.4} ± {:.4}{score})", klub.value, klub.stderr)
    };
    println!("  kept {} rather than the last, {}", describe(level.kept), describe(last));
}

/// The comparison: every schedule as `steps` intervals on the same range (see `knots_of`), with
/// the optimized levels and their log-linear interpolations from the first level.
fn comparison_rows(
    levels: &[Level],
    kinds: &[ScheduleKind],
    model: &dyn NoiseSchedule,
    family: Family,
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        rows.push((format!("ays (optimized, {})", level.steps), level.knots.clone()));
        if i > 0 {
            rows.push((format!("ays 10→{} loglinear", level.steps), loglinear_knots(&levels[0].knots, level.steps)));
        }
        for kind in kinds {
            rows.push((format!("{} ({})", kind.name(), level.steps), knots_of(kind, model, family, level.steps)?));
        }
    }
    Ok(rows)
}

/// The KLUB of every row, paired on one draw (per-group values; see [`Estimate::of`]).
fn paired_klub(
    args: &OptimizeArgs,
    denoiser: &mut dyn Denoiser,
    data: &mut dyn DataSource,
    rows: &[(String, Vec<f64>)],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut est = KlubEstimator::new(denoiser, data, eval_options(args))?;
    let mut rng = kairos_toy::ToyRng::new(args.seed ^ 0x636f6d70617265, kairos_toy::Stream::Estimator);
    let spans: Vec<Vec<f64>> = rows.iter().map(|r| r.1.clone()).collect();
    Ok(est.paired(&spans, &mut rng)?)
}

/// Loads the MLP from `--mlp-weights` if that file exists, else trains it (and saves it there).
fn mlp(args: &OptimizeArgs, data: &mut GaussianMixture, model: &dyn NoiseSchedule) -> anyhow::Result<MlpDenoiser> {
    let config = MlpConfig { hidden: args.mlp_hidden, ..MlpConfig::default() };
    if let Some(path) = args.mlp_weights.as_ref().filter(|p| p.exists()) {
        eprintln!("loading MLP weights from {}", path.display());
        return Ok(MlpDenoiser::load(config, path)?);
    }
    let opts = TrainOptions {
        steps: args.mlp_train_steps,
        sigma_min: model.sigma_min(),
        sigma_max: model.sigma_max(),
        seed: args.seed,
        ..TrainOptions::default()
    };
    let mut net = MlpDenoiser::new(config, args.seed)?;
    let started = std::time::Instant::now();
    let mut avg = 0.0;
    net.train(data, &opts, &mut |step, loss| {
        avg = if step == 0 { loss } else { 0.98 * avg + 0.02 * loss };
        if step % 100 == 0 || step + 1 == opts.steps {
            eprint!("\rtraining MLP: step {}/{}  loss {:.4}   ", step + 1, opts.steps, avg);
        }
    })?;
    eprintln!("\ntrained in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.mlp_weights {
        net.save(path)?;
    }
    Ok(net)
}

/// Prints the MLP's mean squared distance from the exact denoiser at σ log-spaced over the
/// schedule's range (also over σ², the scale of the score error the samplers see).
fn report_mlp_error(
    net: &MlpDenoiser,
    mixture: &GaussianMixture,
    model: &dyn NoiseSchedule,
    seed: u64,
) -> anyhow::Result<()> {
    const LEVELS: usize = 7;
    const POINTS: usize = 4096;
    let (lo, hi) = (model.sigma_min().ln(), model.sigma_max().ln());
    let sigmas: Vec<f64> = (0..LEVELS).map(|i| (lo + (hi - lo) * i as f64 / (LEVELS - 1) as f64).exp()).collect();
    let mut exact = ExactDenoiser::new(mixture);
    let d = denoiser_distance(&mut net.clone(), &mut exact, &mut mixture.clone(), &sigmas, POINTS, seed)?;
    println!("MLP vs exact denoiser, mean ||D_mlp - D_exact||² on {POINTS} noisy data points (÷ σ²):");
    for (s, v) in sigmas.iter().zip(&d) {
        println!("  σ {s:8.4}: {v:.3e} ({:.3e})", v / (s * s));
    }
    Ok(())
}

/// `out.json` → `out.<steps>.json`.
fn level_path(out: &Path, steps: usize) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ays_schedule".into());
    out.with_file_name(format!("{stem}.{steps}.json"))
}
