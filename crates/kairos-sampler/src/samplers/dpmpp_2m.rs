//! DPM-Solver++(2M), the multistep second-order solver of Lu et al. (2022), "DPM-Solver++":
//! k-diffusion `sample_dpmpp_2m`.

use candle_core::Tensor;

use super::common::{sigma_fn, t_fn};
use crate::{Result, SampleCtx};

/// Second-order multistep steps in t = -ln(sigma), reusing the previous step's `denoised`; the first
/// and the last step are first-order.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        let denoised_d = match &old_denoised {
            Some(old_denoised) if sigmas[i + 1] != 0.0 => {
                let h_last = t - t_fn(sigmas[i - 1]);
                let r = h_last / h;
                (denoised.affine(1.0 + 1.0 / (2.0 * r), 0.0)? - old_denoised.affine(1.0 / (2.0 * r), 0.0)?)?
            }
            _ => denoised.clone(),
        };
        x = (x.affine(sigma_fn(t_next) / sigma_fn(t), 0.0)? - (denoised_d * (-h).exp_m1())?)?;
        old_denoised = Some(denoised);
    }
    Ok(x)
}
