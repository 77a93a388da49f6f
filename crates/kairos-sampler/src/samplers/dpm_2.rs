//! DPM-Solver-2-style samplers (Lu et al. 2022) in Karras et al.'s (2022) framework:
//! k-diffusion `sample_dpm_2` and `sample_dpm_2_ancestral`.

use candle_core::Tensor;

use super::common::{add_noise, ancestral_step, check_churn, check_eta, churn, to_d};
use super::{AncestralOptions, ChurnOptions};
use crate::{Result, SampleCtx};

/// The geometric midpoint of two noise levels, as k-diffusion's
/// `sigma.log().lerp(sigma_next.log(), 0.5).exp()` (torch's lerp at weight 0.5 computes
/// `end - (end - start) * 0.5`).
fn sigma_mid(sigma: f64, sigma_next: f64) -> f64 {
    let (start, end) = (sigma.ln(), sigma_next.ln());
    (end - (end - start) * 0.5).exp()
}

/// One DPM-Solver-2 step from (`x`, `sigma`) with derivative `d` down to `sigma_next`: an Euler
/// half step to the log-midpoint, then the full step with the midpoint's derivative.
fn dpm_solver_2_step(ctx: &mut SampleCtx<'_>, x: &Tensor, d: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
    let sigma_mid = sigma_mid(sigma, sigma_next);
    let dt_1 = sigma_mid - sigma;
    let dt_2 = sigma_next - sigma;
    let x_2 = (x + (d * dt_1)?)?;
    let denoised_2 = ctx.denoise(&x_2, sigma_mid)?.denoised;
    let d_2 = to_d(&x_2, sigma_mid, &denoised_2)?;
    Ok((x + (d_2 * dt_2)?)?)
}

/// DPM-Solver-2 steps with optional churn; the last step (to sigma 0) is an Euler step.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &ChurnOptions) -> Result<Tensor> {
    check_churn("dpm_2", o)?;
    for i in 0..sigmas.len() - 1 {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas, i, o)?;
        x = x_hat;
        let denoised = ctx.denoise(&x, sigma_hat)?.denoised;
        let d = to_d(&x, sigma_hat, &denoised)?;
        ctx.report(i, sigmas, &x, &denoised)?;
        x = if sigmas[i + 1] == 0.0 {
            // Euler method
            let dt = sigmas[i + 1] - sigma_hat;
            (&x + (d * dt)?)?
        } else {
            dpm_solver_2_step(ctx, &x, &d, sigma_hat, sigmas[i + 1])?
        };
    }
    Ok(x)
}

/// Ancestral sampling with DPM-Solver-2 steps down to `sigma_down`, then noise up to `sigma_next`.
pub(super) fn sample_ancestral(
    ctx: &mut SampleCtx<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    o: &AncestralOptions,
) -> Result<Tensor> {
    check_eta("dpm_2_ancestral", o.eta, o.s_noise)?;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], o.eta);
        ctx.report(i, sigmas, &x, &denoised)?;
        let d = to_d(&x, sigmas[i], &denoised)?;
        if sigma_down == 0.0 {
            // Euler method
            let dt = sigma_down - sigmas[i];
            x = (&x + (d * dt)?)?;
        } else {
            x = dpm_solver_2_step(ctx, &x, &d, sigmas[i], sigma_down)?;
            x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], o.s_noise * sigma_up)?;
        }
    }
    Ok(x)
}
