//! DPM-Solver++ (stochastic), the "DPM++ SDE" sampler: k-diffusion `sample_dpmpp_sde`
//! (Lu et al. 2022, "DPM-Solver++", with ancestral-style noise on both sub-steps).

use candle_core::Tensor;

use super::common::{add_noise, ancestral_step, check_eta, sigma_fn, t_fn, to_d};
use super::DpmppSdeOptions;
use crate::{Result, SampleCtx, SamplerError};

/// Two-stage steps with the intermediate point at fraction `r` of the step in t = -ln(sigma); each
/// stage steps down to its `sigma_down` and adds noise for its own interval. The noise source is
/// asked for (sigma, sigma_s) and (sigma, sigma_next), as k-diffusion asks its Brownian tree;
/// a draw happens on both stages of every step but the last (also when `eta` is 0, as in
/// k-diffusion; ComfyUI skips the draws when `eta` or `s_noise` is 0, and its last step returns
/// `denoised`, which equals k-diffusion's Euler step up to rounding).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &DpmppSdeOptions) -> Result<Tensor> {
    check_eta("dpmpp_sde", o.eta, o.s_noise)?;
    if !(o.r.is_finite() && o.r > 0.0) {
        return Err(SamplerError::InvalidOption {
            sampler: "dpmpp_sde",
            message: format!("r must be a finite number > 0 (default 0.5), got {}", o.r),
        });
    }
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        if sigmas[i + 1] == 0.0 {
            // Euler method
            let d = to_d(&x, sigmas[i], &denoised)?;
            let dt = sigmas[i + 1] - sigmas[i];
            x = (&x + (d * dt)?)?;
            continue;
        }
        // DPM-Solver++
        let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        let s = t + h * o.r;
        let fac = 1.0 / (2.0 * o.r);

        // Step 1
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(s), o.eta);
        let s_ = t_fn(sd);
        let x_2 = (x.affine(sigma_fn(s_) / sigma_fn(t), 0.0)? - (&denoised * (t - s_).exp_m1())?)?;
        let x_2 = add_noise(ctx, &x_2, sigmas[i], sigma_fn(s), o.s_noise * su)?;
        let denoised_2 = ctx.denoise(&x_2, sigma_fn(s))?.denoised;

        // Step 2
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), o.eta);
        let t_next_ = t_fn(sd);
        let denoised_d = (denoised.affine(1.0 - fac, 0.0)? + denoised_2.affine(fac, 0.0)?)?;
        x = (x.affine(sigma_fn(t_next_) / sigma_fn(t), 0.0)? - (denoised_d * (t - t_next_).exp_m1())?)?;
        x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], o.s_noise * su)?;
    }
    Ok(x)
}
