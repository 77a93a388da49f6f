//! The exact denoiser of a Gaussian mixture, as a [`kairos_sampler::Denoiser`].

use candle_core::Tensor;
use kairos_sampler::{DenoiseOutput, Denoiser};
use kairos_schedule::NoiseSchedule;

use crate::mixture::GaussianMixture;
use crate::rng::{points_to_tensor, tensor_to_points};

/// D(x, sigma) = E[x0 | x_sigma = x] for data from `mixture`, on [N, 2] tensors. The math runs in
/// f64 whatever the tensor's dtype; the output has the input's dtype and device. Counts its calls
/// so that runs can report the number of function evaluations (NFE).
pub struct ExactDenoiser<'a> {
    mixture: &'a GaussianMixture,
    model_schedule: Option<&'a dyn NoiseSchedule>,
    calls: usize,
}

impl<'a> ExactDenoiser<'a> {
    /// The exact denoiser of `mixture`.
    pub fn new(mixture: &'a GaussianMixture) -> Self {
        Self { mixture, model_schedule: None, calls: 0 }
    }

    /// Reports `schedule` as the model's training schedule, for samplers that work on its
    /// timestep grid (`tcd`). The denoiser itself is exact at every sigma and does not use it.
    pub fn with_model_schedule(mut self, schedule: &'a dyn NoiseSchedule) -> Self {
        self.model_schedule = Some(schedule);
        self
    }

    /// How many times [`Denoiser::denoise`] has been called.
    pub fn calls(&self) -> usize {
        self.calls
    }
}

impl Denoiser for ExactDenoiser<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        self.calls += 1;
        let denoised = self.mixture.denoise_points(&tensor_to_points(x)?, sigma);
        let out = points_to_tensor(&denoised, x.device())?.to_dtype(x.dtype())?;
        Ok(DenoiseOutput::new(out))
    }

    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        self.model_schedule
    }
}
