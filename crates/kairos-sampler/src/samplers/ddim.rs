//! DDIM (Song et al. 2021) as diffusers' `DDIMScheduler.step`, written in k-diffusion's
//! variance-exploding coordinates.
//!
//! With x_VE = x_VP / sqrt(alphas_cumprod) and sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod),
//! diffusers' step `sqrt(a_prev) * x0 + sqrt(1 - a_prev - std^2) * eps + std * z` becomes
//! `x0 + sigma_down * eps + sigma_up * z` with k-diffusion's `get_ancestral_step(sigma, sigma_next,
//! eta)`: DDIM's `std / sqrt(a_prev)` is sigma_up. The sigmas carry diffusers' timestep choice
//! (`timestep_spacing`, `steps_offset`) and its final alpha: with `set_alpha_to_one = false` (SD's
//! config) the list ends at sigma(t = 0), not 0, and diffusers' final latent is the returned state
//! divided by sqrt(1 + sigma_last^2).

use candle_core::Tensor;

use super::common::{add_noise, ancestral_step, check_eta, to_d};
use super::AncestralOptions;
use crate::{Result, SampleCtx};

/// DDIM with diffusers' `eta` (0 = deterministic DDIM); `s_noise` scales the noise draws. Noise is
/// drawn on every step with `eta > 0` whose next sigma is above 0.
///
/// For `eta > 1` diffusers takes the square root of a negative number (NaN); kairos caps sigma_up
/// at sigma_next as k-diffusion does.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &AncestralOptions) -> Result<Tensor> {
    check_eta("ddim", o.eta, o.s_noise)?;
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, o.eta);
        // pred_epsilon = (x - x0) / sigma
        x = (&denoised + (to_d(&x, sigma, &denoised)? * sigma_down)?)?;
        if o.eta > 0.0 && sigma_next > 0.0 {
            x = add_noise(ctx, &x, sigma, sigma_next, o.s_noise * sigma_up)?;
        }
    }
    Ok(x)
}
