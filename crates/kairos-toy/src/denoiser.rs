//! The exact denoiser of a Gaussian mixture, as a [`kairos_sampler::Denoiser`].

use candle_core::Tensor;
use kairos_sampler::{DenoiseOutput, Denoiser};

use crate::mixture::GaussianMixture;
use crate::rng::{points_to_tensor, tensor_to_points};

/// D(x, sigma) = E[x0 | x_sigma = x] for data from `mixture`, on [N, 2] tensors. The math runs in
/// f64 whatever the tensor's dtype; the output has the input's dtype and device. Counts its calls
/// so that runs can report the number of function evaluations (NFE).
#[derive(Debug)]
pub struct ExactDenoiser<'a> {
    mixture: &'a GaussianMixture,
    calls: usize,
}

impl<'a> ExactDenoiser<'a> {
    /// The exact denoiser of `mixture`.
    pub fn new(mixture: &'a GaussianMixture) -> Self {
        Self { mixture, calls: 0 }
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
}
