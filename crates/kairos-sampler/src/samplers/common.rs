//! Math shared by several samplers (k-diffusion's `to_d`, `get_ancestral_step`, ...).

use candle_core::Tensor;

use crate::{Result, SamplerError};

/// The Karras ODE derivative dx/dsigma = (x - denoised) / sigma (k-diffusion `to_d`).
pub fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    Ok(((x - denoised)? / sigma)?)
}

/// k-diffusion's `get_ancestral_step`: the noise levels (sigma_down, sigma_up) to step down to and
/// to add noise back up with, when going from `sigma_from` to `sigma_to` with stochasticity `eta`.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let sigma_up =
        sigma_to.min(eta * (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2)) / sigma_from.powi(2)).sqrt());
    let sigma_down = (sigma_to.powi(2) - sigma_up.powi(2)).sqrt();
    (sigma_down, sigma_up)
}

/// Rejects sigma lists no sampler can run: fewer than two values, non-finite or negative values,
/// or values that increase.
pub(crate) fn check_sigmas(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(SamplerError::InvalidSigmas(format!(
            "need at least 2 sigmas (one step), got {}",
            sigmas.len()
        )));
    }
    if let Some(s) = sigmas.iter().find(|s| !s.is_finite() || **s < 0.0) {
        return Err(SamplerError::InvalidSigmas(format!("sigma {s} is not a finite non-negative number")));
    }
    if let Some(w) = sigmas.windows(2).find(|w| w[1] > w[0]) {
        return Err(SamplerError::InvalidSigmas(format!(
            "sigmas must not increase, but {} is followed by {}",
            w[0], w[1]
        )));
    }
    Ok(())
}
