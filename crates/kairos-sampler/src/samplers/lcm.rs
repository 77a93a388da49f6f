//! The Latent Consistency Model sampler (ComfyUI `sample_lcm`).

use candle_core::Tensor;

use super::common::add_noise;
use crate::{Result, SampleCtx};

/// ComfyUI `sample_lcm`: each step jumps to the denoiser's x0 and, unless it is the last, noises
/// it back to the next sigma with fresh noise (`x = denoised + sigma_next * noise`, an eps model's
/// `noise_scaling`). LCM's boundary conditions (c_skip, c_out) belong to the model's denoiser.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        x = if sigmas[i + 1] > 0.0 {
            add_noise(ctx, &denoised, sigmas[i], sigmas[i + 1], sigmas[i + 1])?
        } else {
            denoised
        };
    }
    Ok(x)
}
