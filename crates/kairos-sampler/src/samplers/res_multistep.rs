//! The RES second-order multistep sampler (Zhang et al. 2023, arXiv 2308.02157), as ComfyUI's
//! `sample_res_multistep` (its `res_multistep` with `eta = 0`, without CFG++).

use candle_core::Tensor;

use super::common::{sigma_fn, t_fn, to_d};
use crate::{Result, SampleCtx};

/// ComfyUI `sample_res_multistep`: an Euler first step (and last step, to sigma 0), then
/// exponential-integrator steps that use the previous step's x0 prediction.
///
/// ComfyUI draws a noise tensor on every step and multiplies it by `sigma_up = 0`; kairos draws none.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        x = match &old_denoised {
            Some(old) if sigma_next > 0.0 => {
                // With eta = 0 the previous step ended at this step's sigma, so ComfyUI's t_old is t.
                let (t, t_next, t_prev) = (t_fn(sigma), t_fn(sigma_next), t_fn(sigmas[i - 1]));
                let h = t_next - t;
                let c2 = (t_prev - t) / h;
                let phi1 = (-h).exp_m1() / -h;
                let phi2 = (phi1 - 1.0) / -h;
                let b1 = nan_to_num(phi1 - phi2 / c2);
                let b2 = nan_to_num(phi2 / c2);
                ((&x * sigma_fn(h))? + ((&denoised * (h * b1))? + (old * (h * b2))?)?)?
            }
            // Euler method
            _ => (&x + (to_d(&x, sigma, &denoised)? * (sigma_next - sigma))?)?,
        };
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// torch.nan_to_num with its defaults: NaN → 0, ±inf → the largest finite value of that sign.
fn nan_to_num(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f64::MIN, f64::MAX)
    }
}
