//! Sample quality on the toy world with any denoiser (the toy's runner fixes its exact one).

use kairos_sampler::{Denoiser, SampleCtx, Sampler};
use kairos_toy::{Figures, SeededNoise, Stats, Stream, ToyRng, ToyWorld};
use serde::Serialize;

use crate::{AysError, Result};

/// Mean ± std over seeds of the toy figures of one sampler run per seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    pub sliced_wasserstein: Stats,
    pub nll: Stats,
}

/// Runs `sampler` down `sigmas` with `denoiser` from x = sigmas[0] z, z ~ N(0, I) [points, 2],
/// once per seed, with the same initial and sampler noise streams as
/// [`kairos_toy::ToyWorld::run`] (so the exact denoiser gives the same points), and scores each
/// run on `world`.
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
            let x = (ToyRng::new(seed, Stream::InitialNoise).normal_tensor(&[points, 2])? * sigmas[0])?;
            let mut noise = SeededNoise(ToyRng::new(seed, Stream::SamplerNoise));
            let out = sampler.sample(&mut SampleCtx::new(denoiser, &mut noise), x, sigmas)?;
            let pts: Vec<[f64; 2]> = out.to_vec2::<f64>()?.into_iter().map(|r| [r[0], r[1]]).collect();
            Ok(world.score(&pts))
        })
        .collect::<Result<Vec<Figures>>>()?;
    let sw: Vec<f64> = figures.iter().map(|f| f.sliced_wasserstein).collect();
    let nll: Vec<f64> = figures.iter().map(|f| f.nll).collect();
    Ok(Quality { sliced_wasserstein: Stats::of(&sw), nll: Stats::of(&nll) })
}
