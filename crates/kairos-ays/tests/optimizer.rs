//! The estimator against a brute-force quadrature on a mixture, the optimizer's guarantees
//! (repeatable, resumable, beats the hand-crafted schedules), the schedule file, the MLP.

use std::ops::ControlFlow;

use kairos_ays::{
    denoiser_distance, knots_of, sampler_sigmas, toy_quality, AysError, Estimate, KlubEstimator, KlubOptions,
    MlpConfig, MlpDenoiser, OptimizeOptions, Optimizer, Progress, ScheduleFile, StopReason, TrainOptions,
};
use kairos_sampler::{Denoiser, Sampler};
use kairos_schedule::{Family, ScheduleKind, TablePrecision};
use kairos_toy::{ExactDenoiser, GaussianMixture, Preset, Stream, ToyRng, ToyWorld};

fn sd1_knots(kind: &str, steps: usize) -> Vec<f64> {
    let family = Family::Sd1;
    let model = family.noise_schedule(TablePrecision::F64);
    knots_of(&ScheduleKind::from_name(kind).unwrap(), &model, family, steps).unwrap()
}

/// Brute force: on each interval a fine trapezoid rule in log t (n_grid points), and at each
/// grid point the plain Monte Carlo mean of ||D(x_t, t) - D(x_b, b)||² over `m` fresh draws.
/// Returns the estimate, its Monte Carlo standard error, and the quadrature error estimated as
/// the change from half the grid (same draws at the shared points).
fn brute_force(mixture: &GaussianMixture, knots: &[f64], n_grid: usize, m: usize) -> (f64, f64, f64) {
    let mut rng = ToyRng::new(99, Stream::Reference);
    let (mut total, mut var, mut coarse_total) = (0.0, 0.0, 0.0);
    for w in knots.windows(2) {
        let (b, a) = (w[0], w[1]);
        let h = (b.ln() - a.ln()) / (n_grid - 1) as f64;
        let mut vals = Vec::with_capacity(n_grid);
        for j in 0..n_grid {
            let t = (a.ln() + j as f64 * h).exp();
            let x0 = mixture.sample(m, &mut rng);
            let xt: Vec<[f64; 2]> = x0.iter().map(|p| [p[0] + t * rng.normal(), p[1] + t * rng.normal()]).collect();
            let s = (b * b - t * t).max(0.0).sqrt();
            let xb: Vec<[f64; 2]> = xt.iter().map(|p| [p[0] + s * rng.normal(), p[1] + s * rng.normal()]).collect();
            let (dt, db) = (mixture.denoise_points(&xt, t), mixture.denoise_points(&xb, b));
            let sq: Vec<f64> = dt.iter().zip(&db).map(|(p, q)| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).collect();
            let mean = sq.iter().sum::<f64>() / m as f64;
            let v = sq.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (m as f64 - 1.0) / m as f64;
            // ∫ f dt = ∫ f t d(log t); weight of the trapezoid rule.
            let wt = if j == 0 || j == n_grid - 1 { 0.5 * h } else { h } / t.powi(2);
            vals.push(mean / t.powi(2));
            total += wt * mean;
            var += wt.powi(2) * v;
        }
        let h2 = 2.0 * h;
        coarse_total += vals
            .iter()
            .step_by(2)
            .enumerate()
            .map(|(j, v)| if j == 0 || j == (n_grid - 1) / 2 { 0.5 * h2 * v } else { h2 * v })
            .sum::<f64>();
    }
    (total, var.sqrt(), (total - coarse_total).abs() / 3.0)
}

// The importance-sampled KLUB of a 5-step schedule on the 8x8 grid agrees with the brute force
// within 4 combined standard errors plus the brute force's estimated quadrature error.
#[test]
fn klub_estimate_matches_brute_force_on_8x8() {
    let mixture = Preset::Grid8x8.mixture();
    let knots = sd1_knots("karras", 5);
    let (bf, bf_se, quad) = brute_force(&mixture, &knots, 129, 48);
    let mut data = mixture.clone();
    let mut denoiser = ExactDenoiser::new(&mixture);
    let opts = KlubOptions { t_samples: 2048, batch: 2, c: 0.5 };
    let mut est = KlubEstimator::new(&mut denoiser, &mut data, opts).unwrap();
    let e = est.schedule(&knots, &mut ToyRng::new(5, Stream::Estimator)).unwrap();
    let tol = 4.0 * (e.stderr.powi(2) + bf_se.powi(2)).sqrt() + quad;
    eprintln!("IS {e:?}, brute force {bf} ± {bf_se} (quadrature {quad}), deviation {}", (e.value - bf).abs());
    assert!((e.value - bf).abs() < tol, "IS {e:?} vs brute force {bf} ± {bf_se} (quad {quad})");
}

fn small_options(seed: u64) -> OptimizeOptions {
    let search = KlubOptions { t_samples: 128, batch: 2, c: 0.5 };
    OptimizeOptions {
        max_sweeps: 4,
        search,
        eval: KlubOptions { t_samples: 512, ..search },
        seed,
        subdivisions: 1,
        ..Default::default()
    }
}

fn run(
    options: OptimizeOptions,
    checkpoint: Option<&std::path::Path>,
    cancel_at: Option<(usize, usize)>,
) -> Result<Vec<kairos_ays::Level>, AysError> {
    let mixture = Preset::Ring.mixture();
    let mut data = mixture.clone();
    let mut denoiser = ExactDenoiser::new(&mixture);
    let klub = KlubEstimator::new(&mut denoiser, &mut data, options.search)?;
    let mut cb = |p: &Progress| {
        if Some((p.level, p.sweep)) == cancel_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut opt = Optimizer::new(klub, options, "toy:ring:exact")?.with_progress(&mut cb);
    if let Some(cp) = checkpoint {
        opt = opt.with_checkpoint(cp);
    }
    opt.run(&sd1_knots("normal", 5))
}

// Same seed, same schedule; an interrupted run resumed from its checkpoint equals an
// uninterrupted one bit for bit; a checkpoint of other settings is refused.
#[test]
fn runs_repeat_and_resume_from_checkpoints() {
    let full = run(small_options(1), None, None).unwrap();
    assert_eq!(full, run(small_options(1), None, None).unwrap());
    assert_eq!(full.len(), 2);
    assert_eq!(full[1].steps, 10);
    assert_ne!(full[0].knots, full[0].initial_knots);
    let levels_other_seed = run(small_options(2), None, None).unwrap();
    assert_ne!(full[0].knots, levels_other_seed[0].knots);

    let dir = std::env::temp_dir().join(format!("kairos-ays-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cp = dir.join("cp.json");
    let _ = std::fs::remove_file(&cp);
    assert!(matches!(run(small_options(1), Some(&cp), Some((1, 1))), Err(AysError::Cancelled)));
    assert!(cp.exists());
    assert_eq!(run(small_options(1), Some(&cp), None).unwrap(), full);
    let err = run(small_options(2), Some(&cp), None).unwrap_err();
    assert!(matches!(err, AysError::CheckpointMismatch { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `options` on the ring with a judge; the judge sees the first level's schedules only.
fn run_judged(options: OptimizeOptions, judge: &mut kairos_ays::Judge<'_>) -> Vec<kairos_ays::Level> {
    let mixture = Preset::Ring.mixture();
    let mut data = mixture.clone();
    let mut denoiser = ExactDenoiser::new(&mixture);
    let klub = KlubEstimator::new(&mut denoiser, &mut data, options.search).unwrap();
    Optimizer::new(klub, options, "toy:ring:exact").unwrap().with_judge(judge).run(&sd1_knots("normal", 5)).unwrap()
}

// Early stopping judged by quality (paper §3.3): the level stops after `judge_patience` sweeps
// without a better score and keeps the best-judged knots; the KLUB's noise test is not used.
// The judge cannot send the level back to its start once the KLUB fell beyond its noise.
#[test]
fn judged_early_stopping_keeps_the_best_scored_schedule() {
    let options = OptimizeOptions { max_sweeps: 8, judge_patience: 2, subdivisions: 0, ..small_options(1) };
    let initial = sd1_knots("normal", 5);
    // A judge that likes the hand-crafted start best, then the sweeps nearest to it.
    let mut calls = 0;
    let mut prefers_start = |k: &[f64]| {
        calls += 1;
        Ok(k.iter().zip(&initial).map(|(a, b)| (a.ln() - b.ln()).abs()).sum::<f64>())
    };
    let levels = run_judged(options.clone(), &mut prefers_start);
    let l = &levels[0];
    assert_eq!(l.stop, Some(StopReason::JudgedQuality));
    let first = &l.sweeps[0];
    assert!(first.drop.value > kairos_ays::DROP_Z * first.drop.stderr, "the case needs a real drop: {first:?}");
    assert_eq!((l.kept, l.sweeps.len()), (1, 3), "the start is out, sweep 1 is nearest to it");
    assert_eq!((&l.knots, l.klub), (&first.knots, first.klub));
    assert_ne!(l.knots, initial);
    assert_eq!(calls, 4, "the initial schedule and each sweep");
    // A judge that always prefers the latest schedule runs like plain coordinate descent.
    let mut sweep = 0.0;
    let mut prefers_latest = |_: &[f64]| {
        sweep -= 1.0;
        Ok(sweep)
    };
    let levels = run_judged(options, &mut prefers_latest);
    let last = levels[0].sweeps.last().unwrap();
    assert_ne!(levels[0].stop, Some(StopReason::JudgedQuality));
    assert_eq!((&levels[0].knots, levels[0].klub, levels[0].kept), (&last.knots, last.klub, levels[0].sweeps.len()));
}

// Subdivision keeps the old knots and refines only the new ones.
#[test]
fn subdivided_level_keeps_the_old_knots() {
    let levels = run(small_options(1), None, None).unwrap();
    for (i, k) in levels[0].knots.iter().enumerate() {
        assert_eq!(levels[1].knots[2 * i], *k);
    }
}

#[test]
fn bad_options_are_errors() {
    let bad = OptimizeOptions { moves: vec![0.5, 1.0], ..small_options(0) };
    assert!(run(bad, None, None).unwrap_err().to_string().contains("moves"));
    let bad = OptimizeOptions { search: KlubOptions { t_samples: 1, ..KlubOptions::default() }, ..small_options(0) };
    assert!(run(bad, None, None).unwrap_err().to_string().contains("t_samples"));
    let mixture = Preset::Ring.mixture();
    let mut data = mixture.clone();
    let mut d = ExactDenoiser::new(&mixture);
    let mut est = KlubEstimator::new(&mut d, &mut data, KlubOptions::default()).unwrap();
    let mut rng = ToyRng::new(0, Stream::Estimator);
    for knots in [vec![1.0], vec![1.0, 2.0], vec![1.0, 0.0], vec![f64::NAN, 1.0]] {
        assert!(matches!(est.schedule(&knots, &mut rng), Err(AysError::InvalidKnots { .. })), "{knots:?}");
    }
}

// The check of the issue at test scale: at 10 steps on the 8x8 grid, the optimized schedule's
// KLUB (paired estimate, 4096 draws) is below karras, exponential (= log-SNR uniform) and
// time-uniform by more than 4 standard errors of each paired difference, and its mean NLL with
// euler_ancestral (stochastic DDIM) and dpmpp_2m over 3 seeds is below every baseline's. The
// report's table repeats this at full size.
#[test]
fn optimized_schedule_beats_hand_crafted_ones_on_8x8() {
    let family = Family::Sd1;
    let model = family.noise_schedule(TablePrecision::F64);
    let mixture = Preset::Grid8x8.mixture();
    let mut data = mixture.clone();
    let mut denoiser = ExactDenoiser::new(&mixture);
    let search = KlubOptions { t_samples: 256, batch: 2, c: 0.5 };
    let options = OptimizeOptions {
        max_sweeps: 25,
        search,
        eval: KlubOptions { t_samples: 1024, ..search },
        ..Default::default()
    };
    let klub = KlubEstimator::new(&mut denoiser, &mut data, search).unwrap();
    let initial = kairos_ays::initial_knots(kairos_ays::Init::Auto, &model, family, 10).unwrap();
    let levels = Optimizer::new(klub, options, "toy:8x8:exact").unwrap().run(&initial).unwrap();
    let ays = levels[0].knots.clone();

    let baselines = ["karras", "exponential", "normal"];
    let mut spans = vec![ays.clone()];
    spans.extend(baselines.iter().map(|b| sd1_knots(b, 10)));
    let mut d2 = ExactDenoiser::new(&mixture);
    let mut data2 = mixture.clone();
    let mut est = KlubEstimator::new(&mut d2, &mut data2, KlubOptions { t_samples: 4096, batch: 2, c: 0.5 }).unwrap();
    let groups = est.paired(&spans, &mut ToyRng::new(77, Stream::Estimator)).unwrap();
    for (b, g) in baselines.iter().zip(&groups[1..]) {
        let diff = Estimate::difference(g, &groups[0]);
        assert!(diff.value > 4.0 * diff.stderr, "{b}: KLUB minus optimized {diff:?}");
    }

    let world = ToyWorld::with_reference(mixture.clone(), 5000);
    let mut exact = ExactDenoiser::new(&mixture);
    for sampler in ["euler_ancestral", "dpmpp_2m"] {
        let s = Sampler::from_name(sampler).unwrap();
        let nll = |knots: &[f64], d: &mut dyn Denoiser| {
            toy_quality(&world, d, &s, &sampler_sigmas(knots), 2000, &[0, 1, 2]).unwrap().nll.mean
        };
        let ours = nll(&ays, &mut exact);
        for (b, k) in baselines.iter().zip(&spans[1..]) {
            let theirs = nll(k, &mut exact);
            assert!(ours < theirs, "{sampler}: NLL optimized {ours} vs {b} {theirs}");
        }
    }
}

#[test]
fn schedule_file_round_trips_and_rejects_bad_files() {
    let family = Family::Sd1;
    let model = family.noise_schedule(TablePrecision::F64);
    let knots = sd1_knots("karras", 4);
    let file = ScheduleFile::new(
        "toy",
        "sd1",
        "euler_ancestral",
        knots.clone(),
        &model,
        kairos_ays::Objective::klub(Estimate { value: 1.0, stderr: 0.1 }),
        serde_json::json!({"seed": 0}),
    )
    .unwrap();
    assert_eq!(file.sigmas, sampler_sigmas(&knots));
    assert_eq!(file.timesteps.len(), 4);
    let dir = std::env::temp_dir().join(format!("kairos-ays-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.json");
    file.write(&path).unwrap();
    let back = ScheduleFile::read(&path).unwrap();
    assert_eq!(back, file);
    assert_eq!(back.sigmas_for(None).unwrap().as_slice(), file.sigmas.as_slice());
    let eight = back.sigmas_for(Some(8)).unwrap();
    assert_eq!(eight.steps(), 8);
    assert_eq!(eight.as_slice()[2], knots[1]);

    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("format", serde_json::json!("other"), "format"),
        ("version", serde_json::json!(2), "version"),
        ("sigmas", serde_json::json!([3.0, 4.0, 1.0, 0.5, 0.0]), "decreasing"),
        ("steps", serde_json::json!(3), "steps + 1"),
    ];
    for (key, value, needle) in cases {
        let orig = v[key].clone();
        v[key] = value;
        std::fs::write(&path, v.to_string()).unwrap();
        let err = ScheduleFile::read(&path).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("s.json"), "{key}: {err}");
        v[key] = orig;
    }
    std::fs::write(&path, "{").unwrap();
    assert!(matches!(ScheduleFile::read(&path), Err(AysError::Json { .. })));
    assert!(matches!(ScheduleFile::read(dir.join("missing.json")), Err(AysError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

// A few hundred AdamW steps bring the MLP closer to the exact denoiser (summed mean squared
// distance at σ = 0.5 and 2 over 512 noisy points, measured 0.18 untrained → 0.081 trained;
// a 32-wide net learns the narrow ring modes slowly, this only checks that training works; the
// EDM loss itself barely moves, since its optimum is near 1 at both ends of the σ range),
// repeatably, and a saved network loads back to the same outputs.
#[test]
fn mlp_trains_and_round_trips() {
    let config = MlpConfig { hidden: 32, layers: 2, ..MlpConfig::default() };
    let opts = TrainOptions { steps: 300, batch: 256, lr: 3e-3, ..TrainOptions::default() };
    let mixture = Preset::Ring.mixture();
    let distance = |net: &mut MlpDenoiser| {
        let d = denoiser_distance(net, &mut ExactDenoiser::new(&mixture), &mut mixture.clone(), &[0.5, 2.0], 512, 8);
        d.unwrap().iter().sum::<f64>()
    };
    let train = || {
        let mut net = MlpDenoiser::new(config, 4).unwrap();
        let losses = net.train(&mut Preset::Ring.mixture(), &opts, &mut |_, _| {}).unwrap();
        (net, losses)
    };
    let before = distance(&mut MlpDenoiser::new(config, 4).unwrap());
    let (mut net, losses) = train();
    assert_eq!(losses, train().1);
    let after = distance(&mut net);
    eprintln!("distance to the exact denoiser {before} → {after}");
    // A weak bound on purpose: 300 small steps barely train the net (the EDM preconditioning
    // already puts the untrained net near the data), so only the direction is checked here.
    assert!(after < before, "distance to the exact denoiser {before} → {after}");
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    assert!(mean(&losses[losses.len() - 50..]) < mean(&losses[..50]), "training loss did not decrease");

    let dir = std::env::temp_dir().join(format!("kairos-ays-mlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mlp.safetensors");
    net.save(&path).unwrap();
    let mut back = MlpDenoiser::load(config, &path).unwrap();
    let x = ToyRng::new(0, Stream::Estimator).normal_tensor(&[8, 2]).unwrap();
    let a = net.denoise(&x, 0.7).unwrap().denoised.to_vec2::<f64>().unwrap();
    assert_eq!(a, back.denoise(&x, 0.7).unwrap().denoised.to_vec2::<f64>().unwrap());
    assert!(MlpDenoiser::load(MlpConfig { hidden: 16, ..config }, &path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
