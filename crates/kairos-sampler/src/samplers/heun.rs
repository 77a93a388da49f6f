//! Heun's method on the Karras ODE: Karras et al. (2022), Algorithm 2 (k-diffusion `sample_heun`).

use candle_core::Tensor;

use super::common::{check_churn, churn, to_d};
use super::ChurnOptions;
use crate::{Result, SampleCtx};

/// Heun (second-order) steps with optional churn; the last step (to sigma 0) is an Euler step.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &ChurnOptions) -> Result<Tensor> {
    check_churn("heun", o)?;
    for i in 0..sigmas.len() - 1 {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas, i, o)?;
        x = x_hat;
        let denoised = ctx.denoise(&x, sigma_hat)?.denoised;
        let d = to_d(&x, sigma_hat, &denoised)?;
        ctx.report(i, sigmas, &x, &denoised)?;
        let dt = sigmas[i + 1] - sigma_hat;
        if sigmas[i + 1] == 0.0 {
            // Euler method
            x = (&x + (d * dt)?)?;
        } else {
            // Heun's method
            let x_2 = (&x + (&d * dt)?)?;
            let denoised_2 = ctx.denoise(&x_2, sigmas[i + 1])?.denoised;
            let d_2 = to_d(&x_2, sigmas[i + 1], &denoised_2)?;
            let d_prime = ((d + d_2)? / 2.0)?;
            x = (&x + (d_prime * dt)?)?;
        }
    }
    Ok(x)
}
