//! DPM-Solver++(2S) with ancestral noise (Lu et al. 2022, "DPM-Solver++"):
//! k-diffusion `sample_dpmpp_2s_ancestral`.

use candle_core::Tensor;

use super::common::{add_noise, ancestral_step, check_eta, sigma_fn, t_fn, to_d};
use super::AncestralOptions;
use crate::{Result, SampleCtx};

/// Single-step second-order DPM-Solver++ steps (intermediate point at r = 1/2 in log-sigma) down
/// to `sigma_down`, then noise up to `sigma_next`; an Euler step where `sigma_down` is 0.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &AncestralOptions) -> Result<Tensor> {
    check_eta("dpmpp_2s_ancestral", o.eta, o.s_noise)?;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], o.eta);
        ctx.report(i, sigmas, &x, &denoised)?;
        if sigma_down == 0.0 {
            // Euler method
            let d = to_d(&x, sigmas[i], &denoised)?;
            let dt = sigma_down - sigmas[i];
            x = (&x + (d * dt)?)?;
        } else {
            // DPM-Solver++(2S)
            let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigma_down));
            let r = 0.5;
            let h = t_next - t;
            let s = t + r * h;
            let x_2 = (x.affine(sigma_fn(s) / sigma_fn(t), 0.0)? - (&denoised * (-h * r).exp_m1())?)?;
            let denoised_2 = ctx.denoise(&x_2, sigma_fn(s))?.denoised;
            x = (x.affine(sigma_fn(t_next) / sigma_fn(t), 0.0)? - (denoised_2 * (-h).exp_m1())?)?;
        }
        // Noise addition
        if sigmas[i + 1] > 0.0 {
            x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], o.s_noise * sigma_up)?;
        }
    }
    Ok(x)
}
