//! Euler ancestral samplers (k-diffusion `sample_euler_ancestral`).

use candle_core::Tensor;

use super::common::{add_noise, ancestral_step, check_eta, to_d};
use super::AncestralOptions;
use crate::{Result, SampleCtx, SamplerError};

/// Ancestral sampling with Euler steps: k-diffusion `sample_euler_ancestral`.
///
/// ComfyUI's copy differs where users may see it: when `sigma_down == 0` it returns `denoised`
/// (k-diffusion: `x + d * dt`, equal up to rounding) and it draws noise only when
/// `sigma_down != 0` (k-diffusion: when `sigma_next > 0`); the two differ for `eta > 1`, where
/// `sigma_down` can reach 0 before the last step and ComfyUI then adds no noise.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &AncestralOptions) -> Result<Tensor> {
    check_eta("euler_ancestral", o.eta, o.s_noise)?;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], o.eta);
        ctx.report(i, sigmas, &x, &denoised)?;
        let d = to_d(&x, sigmas[i], &denoised)?;
        // Euler method
        let dt = sigma_down - sigmas[i];
        x = (&x + (d * dt)?)?;
        if sigmas[i + 1] > 0.0 {
            x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], o.s_noise * sigma_up)?;
        }
    }
    Ok(x)
}

/// Ancestral Euler steps with CFG++ (Chung et al. 2024): ComfyUI `sample_euler_ancestral_cfg_pp`.
/// The step direction comes from the unconditional prediction, the jump from the guided one:
/// x = denoised + sigma_down * (x - uncond_denoised) / sigma, plus `sigma_up` noise (drawn when
/// `eta > 0` and `s_noise > 0`); the last step to sigma 0 returns `denoised`. ComfyUI's alpha
/// factors are 1 for eps models and are left out.
pub(super) fn sample_cfg_pp(
    ctx: &mut SampleCtx<'_>,
    x: Tensor,
    sigmas: &[f64],
    o: &AncestralOptions,
) -> Result<Tensor> {
    cfg_pp(ctx, x, sigmas, o, "euler_ancestral_cfg_pp")
}

/// The CFG++ Euler (ancestral) loop shared with `euler_cfg_pp` (`eta = 0`, `s_noise = 0`, as
/// ComfyUI defines it); `sampler` names the sampler in errors.
pub(super) fn cfg_pp(
    ctx: &mut SampleCtx<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    o: &AncestralOptions,
    sampler: &'static str,
) -> Result<Tensor> {
    check_eta(sampler, o.eta, o.s_noise)?;
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let out = ctx.denoise(&x, sigma)?;
        let uncond_denoised = out.uncond_denoised.ok_or(SamplerError::MissingUncond { sampler })?;
        let denoised = out.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        if sigma_next == 0.0 {
            // Denoising step
            x = denoised;
            continue;
        }
        // to noise
        let d = to_d(&x, sigma, &uncond_denoised)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, o.eta);
        x = (&denoised + (d * sigma_down)?)?;
        if o.eta > 0.0 && o.s_noise > 0.0 {
            x = add_noise(ctx, &x, sigma, sigma_next, o.s_noise * sigma_up)?;
        }
    }
    Ok(x)
}
