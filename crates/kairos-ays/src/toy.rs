//! Sample quality on the toy world with any denoiser (the toy's runner fixes its exact one), and
//! a denoiser's distance from a reference one (a trained network's from the exact denoiser).

use kairos_sampler::{Denoiser, Sampler};
use kairos_toy::{Figures, Stats, Summary, ToyWorld};
use serde::Serialize;

use crate::data::{normal_like, row_sq_norms, DataSource};
use crate::rng::rng_for;
use crate::{AysError, Result};

/// Mean ± std over seeds of the toy figures of one sampler run per seed (see
/// [`kairos_toy::Figures`]; `kl` is the judge's figure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    pub kl: Stats,
    pub sliced_wasserstein: Stats,
    pub nll: Stats,
}

/// Runs `sampler` down `sigmas` with `denoiser` once per seed through
/// [`kairos_toy::ToyWorld::run_with`] (the same noise as the toy's own runs) and scores each run on
/// `world`.
pub fn toy_quality(
    world: &ToyWorld,
    denoiser: &mut dyn Denoiser,
    sampler: &Sampler,
    sigmas: &[f64],
    points: usize,
    seeds: &[u64],
) -> Result<Quality> {
    if points == 0 || seeds.is_empty() || sigmas.is_empty() {
        return Err(AysError::option(
            "toy run",
            format!("{points} points, {} seeds", seeds.len()),
            "points >= 1, seeds >= 1, non-empty sigmas",
        ));
    }
    let figures = seeds
        .iter()
        .map(|&seed| {
            let pts = world.run_with(denoiser, sampler, sigmas, points, seed)?;
            Ok(world.score(&pts))
        })
        .collect::<Result<Vec<Figures>>>()?;
    let s = Summary::of(&figures, 0)?;
    Ok(Quality { kl: s.kl, sliced_wasserstein: s.sliced_wasserstein, nll: s.nll })
}

/// Mean ||D(x, σ) − D_ref(x, σ)||² over `points` noisy points x = x0 + σ z (x0 from `data`) at
/// each of `sigmas`, both denoisers on the same points; seeded.
pub fn denoiser_distance(
    denoiser: &mut dyn Denoiser,
    reference: &mut dyn Denoiser,
    data: &mut dyn DataSource,
    sigmas: &[f64],
    points: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    if points == 0 {
        return Err(AysError::option("points", points, "at least 1"));
    }
    sigmas
        .iter()
        .enumerate()
        .map(|(i, &sigma)| {
            let mut rng = rng_for(seed, &[0x64697374, i as u64]);
            let x0 = data.sample(points, &mut rng)?;
            let x = (&x0 + (normal_like(&x0, &mut rng)? * sigma)?)?;
            let diff = (denoiser.denoise(&x, sigma)?.denoised - reference.denoise(&x, sigma)?.denoised)?;
            Ok(row_sq_norms(&diff)?.iter().sum::<f64>() / points as f64)
        })
        .collect()
}
