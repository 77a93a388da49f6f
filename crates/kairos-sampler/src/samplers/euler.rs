//! Euler samplers: Karras et al. (2022), Algorithm 2 with Euler steps (k-diffusion `sample_euler`).

use candle_core::Tensor;

use super::common::{check_churn, churn, to_d};
use super::{AncestralOptions, ChurnOptions};
use crate::{Result, SampleCtx};

/// Euler steps on the Karras ODE, with optional churn: k-diffusion `sample_euler`.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &ChurnOptions) -> Result<Tensor> {
    check_churn("euler", o)?;
    for i in 0..sigmas.len() - 1 {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas, i, o)?;
        x = x_hat;
        let denoised = ctx.denoise(&x, sigma_hat)?.denoised;
        let d = to_d(&x, sigma_hat, &denoised)?;
        ctx.report(i, sigmas, &x, &denoised)?;
        let dt = sigmas[i + 1] - sigma_hat;
        // Euler method
        x = (&x + (d * dt)?)?;
    }
    Ok(x)
}

/// Euler steps with CFG++ (Chung et al. 2024): ComfyUI `sample_euler_cfg_pp`, which is its
/// ancestral CFG++ sampler without noise: x = denoised + sigma_next * (x - uncond_denoised) / sigma.
pub(super) fn sample_cfg_pp(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let no_noise = AncestralOptions { eta: 0.0, s_noise: 0.0 };
    super::euler_ancestral::cfg_pp(ctx, x, sigmas, &no_noise, "euler_cfg_pp")
}
