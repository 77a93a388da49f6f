//! The Extended Reverse-Time SDE solver (ER-SDE-Solver, Cui et al. 2023, arXiv 2309.06169), as
//! ComfyUI's `sample_er_sde` (VP ER-SDE-Solver-3) on an eps model, where the solver's lambda is
//! sigma itself and alpha is 1.

use candle_core::Tensor;

use super::common::add_noise;
use super::ErSdeOptions;
use crate::{Result, SampleCtx, SamplerError};

/// Points of the left Riemann sums of the stage-2/3 integrals (ComfyUI's `num_integration_points`).
const INTEGRATION_POINTS: usize = 200;

/// ComfyUI's default ER-SDE noise scaler, `x * (exp(x^0.3) + 10)`.
fn noise_scaler(x: f64) -> f64 {
    x * (x.powf(0.3).exp() + 10.0)
}

/// ComfyUI `sample_er_sde` with its default noise scaler.
///
/// ComfyUI builds the quadrature nodes with `torch.arange(..., dtype=float32)`, so torch's type
/// promotion computes the two integrals in float32 even for a float64 run; kairos computes them in
/// f64 (a difference of ~1e-8 in the result).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &ErSdeOptions) -> Result<Tensor> {
    if !(1..=3).contains(&o.max_stage) {
        return Err(SamplerError::InvalidOption {
            sampler: "er_sde",
            message: format!("max_stage must be 1, 2 or 3, got {}", o.max_stage),
        });
    }
    if !(o.s_noise.is_finite() && o.s_noise >= 0.0) {
        return Err(SamplerError::InvalidOption {
            sampler: "er_sde",
            message: format!("s_noise must be a finite number >= 0, got {}", o.s_noise),
        });
    }
    // For an eps model (VE state) the solver's er_lambda = sigma / alpha is sigma.
    let lambdas = sigmas;
    let mut old_denoised: Option<Tensor> = None;
    let mut old_denoised_d: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ctx.report(i, sigmas, &x, &denoised)?;
        let stage_used = o.max_stage.min(i + 1);
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let (lambda_s, lambda_t) = (lambdas[i], lambdas[i + 1]);
            let r = noise_scaler(lambda_t) / noise_scaler(lambda_s);
            // Stage 1 Euler
            x = ((&x * r)? + (&denoised * (1.0 - r))?)?;
            if let (true, Some(old)) = (stage_used >= 2, &old_denoised) {
                let dt = lambda_t - lambda_s;
                let step = -dt / INTEGRATION_POINTS as f64;
                let nodes = (0..INTEGRATION_POINTS).map(|k| lambda_t + k as f64 * step);
                // Stage 2
                let s: f64 = nodes.clone().map(|l| 1.0 / noise_scaler(l)).sum::<f64>() * step;
                let denoised_d = ((&denoised - old)? / (lambda_s - lambdas[i - 1]))?;
                x = (&x + (&denoised_d * (dt + s * noise_scaler(lambda_t)))?)?;
                if let (true, Some(old_d)) = (stage_used >= 3, &old_denoised_d) {
                    // Stage 3
                    let s_u: f64 = nodes.map(|l| (l - lambda_s) / noise_scaler(l)).sum::<f64>() * step;
                    let denoised_u = ((&denoised_d - old_d)? / ((lambda_s - lambdas[i - 2]) / 2.0))?;
                    x = (&x + (denoised_u * (dt.powi(2) / 2.0 + s_u * noise_scaler(lambda_t)))?)?;
                }
                old_denoised_d = Some(denoised_d);
            }
            if o.s_noise > 0.0 {
                let var = lambda_t.powi(2) - lambda_s.powi(2) * r.powi(2);
                // ComfyUI's nan_to_num: a negative variance (rounding) adds no noise.
                let std = if var >= 0.0 { var.sqrt() } else { 0.0 };
                x = add_noise(ctx, &x, sigmas[i], sigmas[i + 1], o.s_noise * std)?;
            }
        }
        old_denoised = Some(denoised);
    }
    Ok(x)
}
