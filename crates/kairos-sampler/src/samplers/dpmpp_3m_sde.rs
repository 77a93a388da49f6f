//! DPM-Solver++(3M) SDE (Lu et al. 2022, "DPM-Solver++", third-order multistep with SDE noise):
//! k-diffusion `sample_dpmpp_3m_sde`.

use candle_core::Tensor;

use super::common::{add_noise, check_eta};
use super::AncestralOptions;
use crate::{Result, SampleCtx};

/// Multistep SDE steps in t = -ln(sigma): first-order on the first step, second-order on the
/// second, third-order after; the last step (to sigma 0) returns `denoised`. Draws one noise tensor
/// per step except the last, when `eta` is not 0 (as k-diffusion; ComfyUI also skips the draws
/// when `s_noise` is 0).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &AncestralOptions) -> Result<Tensor> {
    check_eta("dpmpp_3m_sde", o.eta, o.s_noise)?;
    // The two previous steps' denoised and h, newest first.
    let mut history: Vec<(Tensor, f64)> = Vec::with_capacity(2);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        if sigmas[i + 1] == 0.0 {
            // Denoising step
            x = denoised;
            break;
        }
        let (t, s) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
        let h = s - t;
        let h_eta = h * (o.eta + 1.0);

        x = (x.affine((-h_eta).exp(), 0.0)? + (&denoised * -(-h_eta).exp_m1())?)?;

        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match history.as_slice() {
            [(denoised_1, h_1), (denoised_2, h_2)] => {
                let r0 = h_1 / h;
                let r1 = h_2 / h;
                let d1_0 = ((&denoised - denoised_1)? / r0)?;
                let d1_1 = ((denoised_1 - denoised_2)? / r1)?;
                let d1 = (&d1_0 + ((&d1_0 - &d1_1)? * (r0 / (r0 + r1)))?)?;
                let d2 = ((&d1_0 - &d1_1)? / (r0 + r1))?;
                let phi_3 = phi_2 / h_eta - 0.5;
                x = ((&x + (d1 * phi_2)?)? - (d2 * phi_3)?)?;
            }
            [(denoised_1, h_1)] => {
                let r = h_1 / h;
                let d = ((&denoised - denoised_1)? / r)?;
                x = (&x + (d * phi_2)?)?;
            }
            _ => {}
        }

        if o.eta != 0.0 {
            let scale = sigmas[i + 1] * (-(-2.0 * h * o.eta).exp_m1()).sqrt() * o.s_noise;
            x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], scale)?;
        }
        history.insert(0, (denoised, h));
        history.truncate(2);
    }
    Ok(x)
}
