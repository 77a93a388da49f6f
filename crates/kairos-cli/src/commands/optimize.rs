//! `kairos schedule optimize`: an Align Your Steps schedule for the toy world (exact or trained
//! MLP denoiser), written as a schedule file, optionally compared with hand-crafted schedules by
//! KLUB and by sample quality.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kairos_ays::{
    initial_knots, knots_of, loglinear_knots, sampler_sigmas, toy_quality, Estimate, Init, KlubEstimator, KlubOptions,
    MlpConfig, MlpDenoiser, Objective, OptimizeOptions, Optimizer, Progress, ScheduleFile, TrainOptions,
};
use kairos_sampler::{Denoiser, Sampler};
use kairos_schedule::{NoiseSchedule, ScheduleKind};
use kairos_toy::{ExactDenoiser, GaussianMixture, Preset, ToyWorld};

use super::family_schedule;
use super::schedule::ScheduleArgs;

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
    /// Optimize an Align Your Steps schedule (KLUB coordinate descent) on the toy world.
    Optimize(Box<OptimizeArgs>),
}

/// Arguments of `kairos schedule optimize`.
#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// Denoiser: `exact` (the mixture's posterior mean) or `mlp` (trained here, EDM preconditioning).
    #[arg(long, default_value = "exact")]
    denoiser: String,
    /// Data distribution: 8x8, 8x4, 6x6 (grids), ring, gaussian.
    #[arg(long, default_value = "8x8")]
    mixture: String,
    /// Model family whose sigma range and timesteps the schedule uses.
    #[arg(long, default_value = "sd1")]
    family: String,
    /// Steps of the first level.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Subdivision rounds after the first level (2: 10 → 20 → 40).
    #[arg(long, default_value_t = 0)]
    subdivisions: usize,
    /// Initial schedule: auto (time-uniform for discrete families, karras otherwise), time_uniform, karras.
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
    #[arg(long, default_value_t = 4000)]
    mlp_train_steps: usize,
    /// MLP hidden width.
    #[arg(long, default_value_t = 128)]
    mlp_hidden: usize,
    /// After optimizing, compare with these schedules (KLUB and sample quality); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "karras,exponential,normal,kl_optimal")]
    compare: Vec<String>,
    /// Samplers for the sample-quality comparison.
    #[arg(long, value_delimiter = ',', default_value = "euler_ancestral,dpmpp_2m")]
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
    let preset = Preset::from_name(&args.mixture)?;
    let (family, model) = family_schedule(&args.family)?;
    let init = Init::from_name(&args.init)?;
    let samplers = args.samplers.iter().map(|n| Sampler::from_name(n)).collect::<Result<Vec<_>, _>>()?;
    let kinds = args
        .compare
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| ScheduleKind::from_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut data: GaussianMixture = preset.mixture();
    let mixture = preset.mixture();
    let (mut denoiser, model_id): (Box<dyn Denoiser + '_>, String) = match args.denoiser.as_str() {
        "exact" => (Box::new(ExactDenoiser::new(&mixture)), format!("toy:{}:exact", preset.name())),
        "mlp" => {
            let net = mlp(&args, &mut data, &model)?;
            let id = format!(
                "toy:{}:mlp(hidden {}, {} train steps, seed {})",
                preset.name(),
                args.mlp_hidden,
                args.mlp_train_steps,
                args.seed
            );
            (Box::new(net), id)
        }
        other => bail!("unknown --denoiser `{other}`; accepted: exact, mlp"),
    };

    let search = KlubOptions { t_samples: args.t_samples, batch: args.batch, ..KlubOptions::default() };
    let eval = KlubOptions { t_samples: args.eval_t_samples, ..search };
    let options = OptimizeOptions {
        subdivisions: args.subdivisions,
        max_sweeps: args.max_sweeps,
        stop_z: (!args.no_early_stop).then_some(args.stop_z),
        search,
        eval,
        seed: args.seed,
        ..OptimizeOptions::default()
    };
    let initial = initial_knots(init, &model, family, args.steps)?;
    let started = std::time::Instant::now();
    let levels = {
        let klub = KlubEstimator::new(denoiser.as_mut(), &mut data, search)?;
        let mut bar = progress_line;
        let mut opt = Optimizer::new(klub, options.clone(), model_id.clone())?.with_progress(&mut bar);
        if let Some(cp) = &args.checkpoint {
            opt = opt.with_checkpoint(cp);
        }
        opt.run(&initial)?
    };
    eprintln!();
    eprintln!("optimized in {:.1} s", started.elapsed().as_secs_f64());

    let settings = serde_json::json!({
        "options": options, "init": init, "initial_knots": initial, "mixture": preset.name(),
        "levels": levels.iter().map(|l| serde_json::json!({
            "steps": l.steps, "sweeps": l.sweeps.len(), "stop": l.stop, "initial_klub": l.initial_klub, "klub": l.klub })).collect::<Vec<_>>(),
    });
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        let path = if i == last { args.out.clone() } else { level_path(&args.out, level.steps) };
        let file = ScheduleFile::new(
            &model_id,
            family.name(),
            "euler_ancestral",
            level.knots.clone(),
            &model,
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
    }
    if kinds.is_empty() {
        return Ok(());
    }

    // The comparison: every schedule as `steps` intervals on the same range (see `knots_of`),
    // KLUB paired on one draw, then sample quality.
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        rows.push((format!("ays (optimized, {})", level.steps), level.knots.clone()));
        if i > 0 {
            rows.push((format!("ays 10→{} loglinear", level.steps), loglinear_knots(&levels[0].knots, level.steps)));
        }
        for kind in &kinds {
            rows.push((format!("{} ({})", kind.name(), level.steps), knots_of(kind, &model, family, level.steps)?));
        }
    }
    let mut est = KlubEstimator::new(denoiser.as_mut(), &mut data, eval)?;
    let mut rng = kairos_toy::ToyRng::new(args.seed ^ 0x636f6d70617265, kairos_toy::Stream::Estimator);
    let spans: Vec<Vec<f64>> = rows.iter().map(|r| r.1.clone()).collect();
    let groups = est.paired(&spans, &mut rng)?;
    let world = ToyWorld::new(preset.mixture());
    let seeds: Vec<u64> = (0..args.seeds).collect();
    println!();
    println!(
        "{} points × {} seeds (mean ± std over seeds); KLUB ± standard error on {} noise levels × {}",
        args.points, args.seeds, eval.t_samples, eval.batch
    );
    print!("{:<28} {:>17}", "schedule", "KLUB ↓");
    for s in &samplers {
        print!("  {:>29}", format!("{} SW1 ↓ / NLL ↓", s.name()));
    }
    println!();
    for ((name, knots), g) in rows.iter().zip(&groups) {
        let e = Estimate::of(g);
        print!("{name:<28} {:>17}", format!("{:.4} ± {:.4}", e.value, e.stderr));
        for s in &samplers {
            let q = toy_quality(&world, denoiser.as_mut(), s, &sampler_sigmas(knots), args.points, &seeds)?;
            print!(
                "  {:>29}",
                format!(
                    "{:.4}±{:.4} / {:.3}±{:.3}",
                    q.sliced_wasserstein.mean, q.sliced_wasserstein.std, q.nll.mean, q.nll.std
                )
            );
        }
        println!();
    }
    let truth = world.evaluate_true_samples(args.points, &seeds)?;
    println!(
        "{:<28} {:>17}  true samples: SW1 {:.4}±{:.4} / NLL {:.3}±{:.3}",
        "(floor)", "-", truth.sliced_wasserstein.mean, truth.sliced_wasserstein.std, truth.nll.mean, truth.nll.std
    );
    Ok(())
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

/// `out.json` → `out.<steps>.json`.
fn level_path(out: &Path, steps: usize) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ays_schedule".into());
    out.with_file_name(format!("{stem}.{steps}.json"))
}
