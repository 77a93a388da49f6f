//! Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024), as
//! diffusers' `TCDScheduler.step`, written in k-diffusion's variance-exploding coordinates.

use candle_core::Tensor;

use super::common::{add_noise, to_d};
use super::TcdOptions;
use crate::{Result, SampleCtx, SamplerError};

/// diffusers `TCDScheduler` with `eta = gamma`. Step i predicts x0 and eps at `sigmas[i]`, moves to
/// the earlier training timestep s = floor((1 - gamma) * t_next) (t_next: the training timestep of
/// `sigmas[i + 1]`, 0 after the last step): x_s = x0 + sigma(s) * eps, then, except on the last
/// step and when gamma > 0, adds noise up to `sigmas[i + 1]`: x = x_s + sqrt(sigma_next^2 -
/// sigma(s)^2) * z. In VP terms that is diffusers' sqrt(a_prev / a_s) * x_s + sqrt(1 - a_prev / a_s) * z.
///
/// Needs the model's discrete schedule ([`crate::Denoiser::model_schedule`]); sigmas off its grid
/// are snapped to the nearest training timestep for t_next. As in diffusers the last step ends at
/// timestep 0, i.e. noise level sigma(0), not 0: diffusers' final latent is the returned state
/// divided by sqrt(1 + sigma(0)^2).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &TcdOptions) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&o.gamma) {
        return Err(SamplerError::InvalidOption {
            sampler: "tcd",
            message: format!("gamma must be in [0, 1], got {}", o.gamma),
        });
    }
    let schedule = ctx.denoiser.model_schedule().ok_or(SamplerError::MissingModelSchedule { sampler: "tcd" })?;
    // sigma(s) of every step, computed before sampling borrows the denoiser mutably.
    let sigmas_s: Vec<f64> = sigmas[1..]
        .iter()
        .enumerate()
        .map(|(i, &sigma_next)| {
            let last = i + 2 == sigmas.len();
            let t_next = if last { 0.0 } else { schedule.sigma_to_t(sigma_next).round() };
            schedule.t_to_sigma(((1.0 - o.gamma) * t_next).floor())
        })
        .collect();
    let steps = sigmas.len() - 1;
    for i in 0..steps {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        let eps = to_d(&x, sigma, &denoised)?;
        // pred_noised_sample
        x = (&denoised + (eps * sigmas_s[i])?)?;
        if o.gamma > 0.0 && i + 1 < steps {
            let renoise = (sigma_next.powi(2) - sigmas_s[i].powi(2)).max(0.0).sqrt();
            x = add_noise(ctx, &x, sigma, sigma_next, renoise)?;
        }
    }
    Ok(x)
}
