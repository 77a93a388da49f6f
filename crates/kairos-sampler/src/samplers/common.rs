//! Math shared by several samplers (k-diffusion's `to_d`, `get_ancestral_step`, `t_fn`/`sigma_fn`,
//! Karras churn, ancestral noise addition) and the input checks every sampler relies on.

use std::f64::consts::SQRT_2;

use candle_core::Tensor;

use super::ChurnOptions;
use crate::{Result, SampleCtx, SamplerError};

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

/// DPM-Solver's time variable t = -ln(sigma) (k-diffusion `t_fn`); `t_fn(0) = +inf`.
pub(crate) fn t_fn(sigma: f64) -> f64 {
    -sigma.ln()
}

/// The inverse of [`t_fn`]: sigma = exp(-t) (k-diffusion `sigma_fn`).
pub(crate) fn sigma_fn(t: f64) -> f64 {
    (-t).exp()
}

/// Karras et al.'s churn at step `i` (the first lines of k-diffusion's `sample_euler`, `sample_heun`
/// and `sample_dpm_2`): raises the noise level to `sigma_hat = sigmas[i] * (gamma + 1)` by adding
/// fresh noise, and returns `(x_hat, sigma_hat)`.
///
/// Noise is drawn only when `gamma > 0`, as ComfyUI does; k-diffusion draws (and discards) a
/// tensor on every step even with churn off, so its random stream differs when churn is off for
/// some steps (`s_tmin`/`s_tmax`) while the results of the steps are the same.
pub(crate) fn churn(
    ctx: &mut SampleCtx<'_>,
    x: Tensor,
    sigmas: &[f64],
    i: usize,
    o: &ChurnOptions,
) -> Result<(Tensor, f64)> {
    let gamma = if o.s_churn > 0.0 && o.s_tmin <= sigmas[i] && sigmas[i] <= o.s_tmax {
        (o.s_churn / (sigmas.len() - 1) as f64).min(SQRT_2 - 1.0)
    } else {
        0.0
    };
    let sigma_hat = sigmas[i] * (gamma + 1.0);
    if gamma > 0.0 {
        // The step's interval is what a Brownian-tree source sees; sigma_hat may exceed sigma_max.
        let eps = (ctx.noise(&x, sigmas[i], sigmas[i + 1])? * o.s_noise)?;
        let x_hat = (x + (eps * (sigma_hat.powi(2) - sigmas[i].powi(2)).sqrt())?)?;
        return Ok((x_hat, sigma_hat));
    }
    Ok((x, sigma_hat))
}

/// `x + noise * scale` with one draw from the context's noise source for the step
/// `sigma` → `sigma_next` (k-diffusion's `x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up`).
pub(crate) fn add_noise(
    ctx: &mut SampleCtx<'_>,
    x: &Tensor,
    sigma: f64,
    sigma_next: f64,
    scale: f64,
) -> Result<Tensor> {
    let noise = ctx.noise(x, sigma, sigma_next)?;
    Ok((x + (noise * scale)?)?)
}

/// Rejects churn options that would make the noise level or the state non-finite or move it the
/// wrong way: `s_churn` and `s_noise` must be finite and >= 0, `s_tmin`/`s_tmax` must not be NaN.
pub(crate) fn check_churn(sampler: &'static str, o: &ChurnOptions) -> Result<()> {
    check_nonneg(sampler, "s_churn", o.s_churn)?;
    check_nonneg(sampler, "s_noise", o.s_noise)?;
    if o.s_tmin.is_nan() || o.s_tmax.is_nan() {
        return Err(SamplerError::InvalidOption {
            sampler,
            message: format!("s_tmin and s_tmax must be numbers (infinity allowed), got {} and {}", o.s_tmin, o.s_tmax),
        });
    }
    Ok(())
}

/// Rejects noise options (`eta`, `s_noise`) that are negative or not finite.
pub(crate) fn check_eta(sampler: &'static str, eta: f64, s_noise: f64) -> Result<()> {
    check_nonneg(sampler, "eta", eta)?;
    check_nonneg(sampler, "s_noise", s_noise)
}

fn check_nonneg(sampler: &'static str, name: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(SamplerError::InvalidOption {
            sampler,
            message: format!("{name} must be a finite number >= 0, got {value}"),
        });
    }
    Ok(())
}

/// Rejects sigma lists no sampler can run: fewer than two values, non-finite or negative values,
/// values that increase, or a 0 before the end (every sampler divides by the step's sigma).
pub(crate) fn check_sigmas(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(SamplerError::InvalidSigmas(format!("need at least 2 sigmas (one step), got {}", sigmas.len())));
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
    if let Some(i) = sigmas[..sigmas.len() - 1].iter().position(|s| *s == 0.0) {
        return Err(SamplerError::InvalidSigmas(format!(
            "sigma 0 may only be the last value, but it is at index {i} of {}",
            sigmas.len()
        )));
    }
    Ok(())
}

/// The linear combination `w0 * t0 + sum_k w_k * t_k` of same-shaped tensors (the weighted
/// histories of multistep samplers).
pub(crate) fn weighted_sum<'a>(
    (w0, t0): (f64, &Tensor),
    rest: impl IntoIterator<Item = (f64, &'a Tensor)>,
) -> Result<Tensor> {
    let mut acc = (t0 * w0)?;
    for (w, t) in rest {
        acc = (acc + (t * w)?)?;
    }
    Ok(acc)
}
