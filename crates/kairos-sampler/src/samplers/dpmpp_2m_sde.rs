//! DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++"): k-diffusion `sample_dpmpp_2m_sde`, with
//! the midpoint or the Heun form of the second-order correction.

use candle_core::Tensor;

use super::common::{add_noise, check_eta};
use super::{Dpmpp2mSdeOptions, SdeSolverType};
use crate::{Result, SampleCtx};

/// Multistep second-order SDE steps in t = -ln(sigma); the last step (to sigma 0) returns
/// `denoised`. Draws one noise tensor per step except the last, when `eta` is not 0 (as
/// k-diffusion; ComfyUI also skips the draws when `s_noise` is 0).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &Dpmpp2mSdeOptions) -> Result<Tensor> {
    let (eta, s_noise) = (o.noise.eta, o.noise.s_noise);
    check_eta("dpmpp_2m_sde", eta, s_noise)?;
    // The previous step's denoised and h.
    let mut last: Option<(Tensor, f64)> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        if sigmas[i + 1] == 0.0 {
            // Denoising step
            x = denoised;
            break;
        }
        // DPM-Solver++(2M) SDE
        let (t, s) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
        let h = s - t;
        let eta_h = eta * h;

        let c = -(-h - eta_h).exp_m1();
        x = (x.affine(sigmas[i + 1] / sigmas[i] * (-eta_h).exp(), 0.0)? + (&denoised * c)?)?;

        if let Some((old_denoised, h_last)) = &last {
            let r = h_last / h;
            let scale = match o.solver_type {
                SdeSolverType::Heun => (c / (-h - eta_h) + 1.0) * (1.0 / r),
                SdeSolverType::Midpoint => 0.5 * c * (1.0 / r),
            };
            x = (&x + ((&denoised - old_denoised)? * scale)?)?;
        }

        if eta != 0.0 {
            let scale = sigmas[i + 1] * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
            x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], scale)?;
        }
        last = Some((denoised, h));
    }
    Ok(x)
}
