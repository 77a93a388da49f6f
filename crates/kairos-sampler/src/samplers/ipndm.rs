//! Improved pseudo-numerical methods (iPNDM; Zhang & Chen 2023, "Fast Sampling of Diffusion Models
//! with Exponential Integrator"), as ComfyUI's `sample_ipndm` and `sample_ipndm_v` (the latter from
//! zju-pi/diff-sampler): Adams–Bashforth steps of order up to 4 on the Karras ODE in sigma, with
//! fixed-step (`ipndm`) or variable-step (`ipndm_v`) coefficients.

use candle_core::Tensor;

use super::common::{to_d, weighted_sum};
use crate::{Result, SampleCtx};

/// The highest order (ComfyUI's `max_order` default); the history holds `MAX_ORDER - 1` derivatives.
const MAX_ORDER: usize = 4;

/// ComfyUI `sample_ipndm`: Adams–Bashforth coefficients for equal steps.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    multistep(ctx, x, sigmas, |order, _, _| match order {
        1 => vec![1.0],
        2 => vec![3.0 / 2.0, -1.0 / 2.0],
        3 => vec![23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0],
        _ => vec![55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
    })
}

/// ComfyUI `sample_ipndm_v`: Adams–Bashforth coefficients for the actual (unequal) step sizes.
pub(super) fn sample_variable_step(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    multistep(ctx, x, sigmas, variable_step_coeffs)
}

/// The shared loop: `coeffs(order, sigmas, i)` weighs the current derivative and the `order - 1`
/// previous ones, newest first.
fn multistep(
    ctx: &mut SampleCtx<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    coeffs: impl Fn(usize, &[f64], usize) -> Vec<f64>,
) -> Result<Tensor> {
    // Derivatives of the previous steps, newest first.
    let mut history: Vec<Tensor> = Vec::with_capacity(MAX_ORDER);
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        let d_cur = to_d(&x, sigma, &denoised)?;
        let order = MAX_ORDER.min(i + 1);
        x = if sigma_next == 0.0 {
            // Denoising step
            denoised
        } else {
            let c = coeffs(order, sigmas, i);
            let slope = weighted_sum((c[0], &d_cur), c[1..].iter().copied().zip(&history))?;
            (&x + (slope * (sigma_next - sigma))?)?
        };
        history.insert(0, d_cur);
        history.truncate(MAX_ORDER - 1);
    }
    Ok(x)
}

/// diff-sampler's variable-step iPNDM coefficients for step `i` of `order` (1..=4), newest first.
/// h_n is this step, h_n_1 .. h_n_3 the previous ones (all in sigma).
fn variable_step_coeffs(order: usize, t: &[f64], i: usize) -> Vec<f64> {
    let h_n = t[i + 1] - t[i];
    match order {
        1 => vec![1.0],
        2 => {
            let h_n_1 = t[i] - t[i - 1];
            vec![(2.0 + h_n / h_n_1) / 2.0, -(h_n / h_n_1) / 2.0]
        }
        3 => {
            let (h_n_1, h_n_2) = (t[i] - t[i - 1], t[i - 1] - t[i - 2]);
            let temp = (1.0 - h_n / (3.0 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2.0;
            vec![
                (2.0 + h_n / h_n_1) / 2.0 + temp,
                -(h_n / h_n_1) / 2.0 - (1.0 + h_n_1 / h_n_2) * temp,
                temp * h_n_1 / h_n_2,
            ]
        }
        _ => {
            let (h_n_1, h_n_2, h_n_3) = (t[i] - t[i - 1], t[i - 1] - t[i - 2], t[i - 2] - t[i - 3]);
            let temp1 = (1.0 - h_n / (3.0 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2.0;
            let temp2 = ((1.0 - h_n / (3.0 * (h_n + h_n_1))) / 2.0
                + (1.0 - h_n / (2.0 * (h_n + h_n_1))) * h_n / (6.0 * (h_n + h_n_1 + h_n_2)))
                * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2))
                / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3));
            // The ratio of the two older step products, used by three coefficients.
            let q = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3));
            vec![
                (2.0 + h_n / h_n_1) / 2.0 + temp1 + temp2,
                -(h_n / h_n_1) / 2.0 - (1.0 + h_n_1 / h_n_2) * temp1 - (1.0 + h_n_1 / h_n_2 + q) * temp2,
                temp1 * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + q * (1.0 + h_n_2 / h_n_3)) * temp2,
                -temp2 * q * h_n_1 / h_n_2,
            ]
        }
    }
}
