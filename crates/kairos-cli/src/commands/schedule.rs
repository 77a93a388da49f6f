//! `kairos schedule`: a family's sigma schedule (by name or as a user list) and its timesteps,
//! as text or JSON, and a plot of several schedules.

use std::path::PathBuf;

use clap::{ArgGroup, Args};
use kairos_schedule::{DenoiseRule, NoiseSchedule, ScheduleKind};
use serde::Serialize;

use super::family_schedule;

/// Arguments of `kairos schedule`.
#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("source").required(true).multiple(true).args(["schedule", "sigmas", "timesteps", "compare", "sigmas_file"])
))]
pub struct ScheduleArgs {
    /// Model family: its training sigmas (range, sigma ↔ timestep) and its AYS/GITS table.
    #[arg(long, default_value = "sd1")]
    family: String,
    /// Sigma schedule by name (normal, karras, exponential, sgm_uniform, simple, beta,
    /// kl_optimal, ays, gits, ...; A1111 labels accepted).
    #[arg(long, visible_alias = "scheduler", conflicts_with_all = ["sigmas", "timesteps", "compare", "sigmas_file"])]
    schedule: Option<String>,
    /// A sigma list, strictly decreasing, comma-separated: 14.6,7.8,...,0.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["timesteps", "compare", "sigmas_file"])]
    sigmas: Option<Vec<f64>>,
    /// A timestep list, strictly decreasing, comma-separated: 999,850,...; 0 is appended to the sigmas.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["compare", "sigmas_file"])]
    timesteps: Option<Vec<f64>>,
    /// A schedule file written by `kairos schedule optimize`, log-linearly interpolated to
    /// --steps; with --compare it is plotted beside the named schedules.
    #[arg(long)]
    sigmas_file: Option<PathBuf>,
    /// Several schedules by name, comma-separated: karras,exponential,ays.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    compare: Option<Vec<String>>,
    /// Number of sampler steps (ignored for --sigmas/--timesteps, whose length counts).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Fraction of the schedule to run, in (0, 1] (img2img strength).
    #[arg(long, default_value_t = 1.0)]
    denoise: f64,
    /// How --denoise shortens the schedule (as `kairos generate --denoise-rule`) [default: the
    /// schedule's own: diffusers for karras, normal, ...; ComfyUI's truncate for ays and gits;
    /// a1111 for the *_a1111 variants].
    #[arg(long, value_parser = DenoiseRule::NAMES)]
    denoise_rule: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also plot log sigma against step into this file (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// One built schedule.
#[derive(Debug, Serialize)]
pub(crate) struct Built {
    pub schedule: String,
    pub steps: usize,
    pub sigmas: Vec<f64>,
    pub timesteps: Vec<f64>,
}

/// Runs `kairos schedule`.
pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let (family, model) = family_schedule(&args.family)?;
    // (label, schedule) pairs; a schedule file is labelled by its file name.
    let mut kinds = if let Some(v) = &args.sigmas {
        vec![(None, ScheduleKind::Sigmas(v.clone()))]
    } else if let Some(t) = &args.timesteps {
        vec![(None, ScheduleKind::Timesteps(t.clone()))]
    } else {
        let names = args.compare.clone().or_else(|| args.schedule.clone().map(|s| vec![s])).unwrap_or_default();
        names.iter().map(|n| Ok((None, ScheduleKind::from_name(n)?))).collect::<anyhow::Result<Vec<_>>>()?
    };
    if let Some(path) = &args.sigmas_file {
        let file = kairos_ays::ScheduleFile::read(path)?;
        let label = path.file_name().map(|n| n.to_string_lossy().into_owned());
        kinds.push((label, ScheduleKind::Sigmas(file.sigmas_for(Some(args.steps))?.into_vec())));
    }
    let rule = args.denoise_rule.as_deref().map(DenoiseRule::from_name).transpose()?;
    let built = kinds
        .iter()
        .map(|(label, kind)| {
            let rule = rule.unwrap_or(kind.denoise_rule());
            let sigmas = kind.build_with_rule(&model, family, args.steps, args.denoise, rule)?;
            let timesteps = sigmas.timesteps(&model);
            let schedule = label.clone().unwrap_or_else(|| kind.name().to_string());
            Ok(Built { schedule, steps: sigmas.steps(), sigmas: sigmas.into_vec(), timesteps })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(path) = &args.plot {
        let title = format!("{} sigma schedules, {} steps", family.name(), args.steps);
        crate::plot::schedules(path, &title, &built)?;
    }

    let single = built.len() == 1;
    if args.json {
        let meta = serde_json::json!({ "family": family.name(), "denoise": args.denoise });
        let mut out = match (single, built.as_slice()) {
            (true, [b]) => serde_json::to_value(b)?,
            _ => serde_json::json!({ "steps": args.steps, "schedules": built }),
        };
        if let (Some(out), Some(meta)) = (out.as_object_mut(), meta.as_object()) {
            out.extend(meta.clone());
        }
        println!("{out}");
    } else {
        for b in &built {
            print_text(b, family.name(), &model);
        }
    }
    Ok(())
}

fn print_text(b: &Built, family: &str, model: &dyn NoiseSchedule) {
    let list = |v: &[f64], p: usize| v.iter().map(|x| format!("{x:.p$}")).collect::<Vec<_>>().join(" ");
    println!(
        "{} ({family}, {} steps, sigma range {:.4} → {:.4})",
        b.schedule,
        b.steps,
        model.sigma_max(),
        model.sigma_min()
    );
    println!("  sigmas:    {}", list(&b.sigmas, 6));
    println!("  timesteps: {}", list(&b.timesteps, 3));
}
