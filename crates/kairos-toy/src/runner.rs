//! Runs a sampler on the toy world and scores the result.

use candle_core::{DType, Device};
use kairos_sampler::noise::{BatchSeeding, RngKind, SeededNoise};
use kairos_sampler::{Denoiser, SampleCtx, Sampler};
use kairos_schedule::ModelSchedule;
use serde::Serialize;

use crate::denoiser::ExactDenoiser;
use crate::metrics::{SlicedWasserstein, Stats};
use crate::mixture::GaussianMixture;
use crate::rng::{tensor_to_points, Stream, ToyRng};
use crate::ToyError;

/// Size of the true sample the sliced Wasserstein distance compares against.
pub const REFERENCE_POINTS: usize = 50_000;
/// Number of projection directions of the sliced Wasserstein distance.
pub const DIRECTIONS: usize = 64;
/// Seed of the true reference sample (drawn from its own stream, so independent of run seeds).
pub const REFERENCE_SEED: u64 = 0;

/// A mixture with its true reference sample, ready to score sampler runs.
#[derive(Debug, Clone)]
pub struct ToyWorld {
    mixture: GaussianMixture,
    metric: SlicedWasserstein,
    model_schedule: Option<ModelSchedule>,
}

/// The output of one sampler run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The final points.
    pub points: Vec<[f64; 2]>,
    /// Number of denoiser evaluations.
    pub nfe: usize,
}

/// The quality figures of one set of points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    /// Estimated KL(points ‖ data) in nats ([`GaussianMixture::kl_from`]; lower is better): the
    /// judge of sample quality, blind neither to blur nor to collapse.
    pub kl: f64,
    /// Sliced 1-Wasserstein distance to the true reference sample (lower is better). Blind to
    /// blur on many-mode data: projected on a line, sharp modes and modes smeared into each
    /// other look alike.
    pub sliced_wasserstein: f64,
    /// Mean negative log-likelihood under the true density (lower is better). Blind to
    /// collapse: points packed onto the modes score below the data's entropy.
    pub nll: f64,
}

/// The quality figures of a sampler over several seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub kl: Stats,
    pub sliced_wasserstein: Stats,
    pub nll: Stats,
    /// Denoiser evaluations per run (all seeds use the same sigmas; 0 for true samples).
    pub nfe: usize,
}

impl ToyWorld {
    /// The toy world of `mixture`, with a true sample of [`REFERENCE_POINTS`] points.
    pub fn new(mixture: GaussianMixture) -> Self {
        Self::with_reference(mixture, REFERENCE_POINTS)
    }

    /// The toy world of `mixture`, with a true sample of `reference_points` points.
    pub fn with_reference(mixture: GaussianMixture, reference_points: usize) -> Self {
        let reference = mixture.sample(reference_points, &mut ToyRng::new(REFERENCE_SEED, Stream::Reference));
        let metric = SlicedWasserstein::new(&reference, DIRECTIONS);
        Self { mixture, metric, model_schedule: None }
    }

    /// Lets the denoiser report `schedule` as the model's training schedule, for samplers that
    /// need one (`tcd`); see [`ExactDenoiser::with_model_schedule`].
    pub fn with_model_schedule(mut self, schedule: ModelSchedule) -> Self {
        self.model_schedule = Some(schedule);
        self
    }

    /// The data distribution.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// Runs `sampler` down `sigmas` from x = sigmas[0] * z with the exact denoiser, in f64.
    /// z = torch.randn([n, 2]) of a CPU generator seeded `seed` (torch-compatible, drawn in f32
    /// as torch does), and stochastic samplers continue that stream, as k-diffusion with
    /// `torch.manual_seed(seed)` would: a run can be replayed in Python.
    pub fn run(&self, sampler: &Sampler, sigmas: &[f64], n: usize, seed: u64) -> Result<Run, ToyError> {
        let mut denoiser = ExactDenoiser::new(&self.mixture);
        if let Some(schedule) = &self.model_schedule {
            denoiser = denoiser.with_model_schedule(schedule);
        }
        let points = self.run_with(&mut denoiser, sampler, sigmas, n, seed)?;
        Ok(Run { points, nfe: denoiser.calls() })
    }

    /// [`Self::run`] with any denoiser in place of the exact one (a trained network, say): the same
    /// initial and sampler noise for the seed, so the exact denoiser gives the same points.
    pub fn run_with(
        &self,
        denoiser: &mut dyn Denoiser,
        sampler: &Sampler,
        sigmas: &[f64],
        n: usize,
        seed: u64,
    ) -> Result<Vec<[f64; 2]>, ToyError> {
        if n == 0 {
            return Err(ToyError::InvalidArgument {
                name: "n",
                message: "the number of points must be at least 1".into(),
            });
        }
        let sigma_max = *sigmas
            .first()
            .ok_or_else(|| ToyError::InvalidArgument { name: "sigmas", message: "the sigma list is empty".into() })?;
        let mut noise = SeededNoise::new(RngKind::TorchCpu, seed, BatchSeeding::Shared, n)
            .map_err(kairos_sampler::SamplerError::from)?;
        let x = (noise.initial_latent((n, 2), DType::F64, &Device::Cpu)? * sigma_max)?;
        let out = sampler.sample(&mut SampleCtx::new(denoiser, &mut noise), x, sigmas)?;
        Ok(tensor_to_points(&out)?)
    }

    /// The quality figures of `points`.
    pub fn score(&self, points: &[[f64; 2]]) -> Figures {
        Figures {
            kl: self.mixture.kl_from(points),
            sliced_wasserstein: self.metric.distance(points),
            nll: self.mixture.mean_nll(points),
        }
    }

    /// Runs and scores `sampler` for each seed in `seeds` and summarises the figures.
    pub fn evaluate(&self, sampler: &Sampler, sigmas: &[f64], n: usize, seeds: &[u64]) -> Result<Summary, ToyError> {
        let mut nfe = 0;
        let figures = seeds
            .iter()
            .map(|&seed| {
                let run = self.run(sampler, sigmas, n, seed)?;
                nfe = run.nfe;
                Ok(self.score(&run.points))
            })
            .collect::<Result<Vec<_>, ToyError>>()?;
        Summary::of(&figures, nfe)
    }

    /// The figures of `n` exact draws from the data per seed: the floor a sampler can reach with
    /// `n` points (the SW1 of a finite sample is not 0, and its NLL is the data's entropy up to
    /// sampling noise). Draws come from each seed's own [`Stream::TrueSample`].
    pub fn evaluate_true_samples(&self, n: usize, seeds: &[u64]) -> Result<Summary, ToyError> {
        if n == 0 {
            return Err(ToyError::InvalidArgument {
                name: "n",
                message: "the number of points must be at least 1".into(),
            });
        }
        let figures: Vec<Figures> = seeds
            .iter()
            .map(|&seed| self.score(&self.mixture.sample(n, &mut ToyRng::new(seed, Stream::TrueSample))))
            .collect();
        Summary::of(&figures, 0)
    }
}

impl Summary {
    /// Mean ± std of each figure over seeds (one [`Figures`] per seed), with `nfe` per run.
    pub fn of(figures: &[Figures], nfe: usize) -> Result<Summary, ToyError> {
        if figures.is_empty() {
            return Err(ToyError::InvalidArgument { name: "seeds", message: "need at least one seed".into() });
        }
        let stats = |f: fn(&Figures) -> f64| Stats::of(&figures.iter().map(f).collect::<Vec<f64>>());
        Ok(Summary {
            kl: stats(|f| f.kl),
            sliced_wasserstein: stats(|f| f.sliced_wasserstein),
            nll: stats(|f| f.nll),
            nfe,
        })
    }
}

#[cfg(test)]
mod tests {
    use kairos_schedule::{Family, ScheduleKind, TablePrecision};

    use super::*;
    use crate::Preset;

    fn sd1_sigmas(kind: &str, steps: usize) -> Vec<f64> {
        let family = Family::Sd1;
        let model = family.noise_schedule(TablePrecision::F64);
        ScheduleKind::from_name(kind).unwrap().build(&model, family, steps, 1.0).unwrap().into_vec()
    }

    // Many Euler steps on the exact denoiser approach the true distribution: SW1 of 2k points
    // against the true sample is about 0.01-0.02 from sampling noise alone, so 0.03 leaves room
    // for the 100-step discretisation error; the NLL must be within 0.1 of a true sample's.
    #[test]
    fn euler_with_many_steps_reaches_the_data() {
        let world = ToyWorld::new(Preset::Ring.mixture());
        let sigmas = sd1_sigmas("karras", 100);
        let run = world.run(&Sampler::from_name("euler").unwrap(), &sigmas, 2000, 3).unwrap();
        assert_eq!(run.nfe, 100);
        let f = world.score(&run.points);
        let exact = world.score(&world.mixture().sample(2000, &mut ToyRng::new(3, Stream::TrueSample)));
        assert!(f.sliced_wasserstein < 0.03, "{f:?} vs exact {exact:?}");
        assert!((f.nll - exact.nll).abs() < 0.1, "{f:?} vs exact {exact:?}");
    }

    // Seeds give reproducible runs, different seeds different ones; stochastic samplers draw
    // their noise from the seed as well.
    #[test]
    fn runs_are_reproducible_per_seed() {
        let world = ToyWorld::with_reference(Preset::Grid6x6.mixture(), 500);
        let sigmas = sd1_sigmas("ays", 5);
        let s = Sampler::from_name("euler_ancestral").unwrap();
        let a = world.run(&s, &sigmas, 16, 1).unwrap().points;
        assert_eq!(a, world.run(&s, &sigmas, 16, 1).unwrap().points);
        assert_ne!(a, world.run(&s, &sigmas, 16, 2).unwrap().points);
        let summary = world.evaluate(&s, &sigmas, 16, &[1, 2, 3]).unwrap();
        assert!(summary.nll.std > 0.0 && summary.sliced_wasserstein.mean > 0.0, "{summary:?}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let world = ToyWorld::with_reference(Preset::Gaussian.mixture(), 100);
        let s = Sampler::from_name("euler").unwrap();
        assert!(matches!(world.run(&s, &[1.0, 0.0], 0, 0), Err(ToyError::InvalidArgument { name: "n", .. })));
        assert!(matches!(world.run(&s, &[], 4, 0), Err(ToyError::InvalidArgument { name: "sigmas", .. })));
        assert!(matches!(world.run(&s, &[1.0, 2.0, 0.0], 4, 0), Err(ToyError::Sampler(_))));
        assert!(matches!(
            world.evaluate(&s, &[1.0, 0.0], 4, &[]),
            Err(ToyError::InvalidArgument { name: "seeds", .. })
        ));
        assert!(matches!(world.evaluate_true_samples(4, &[]), Err(ToyError::InvalidArgument { name: "seeds", .. })));
    }
}
