//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), multistep with data
//! prediction and B(h) = h (`bh1`) or e^h - 1 (`bh2`), as ComfyUI's `sample_unipc` /
//! `sample_unipc_bh2` (comfy/extra_samplers/uni_pc.py, from wl-zhao/UniPC).
//!
//! ComfyUI runs UniPC in VP coordinates (x_VP = x / sqrt(1 + sigma^2)) with lambda = -ln(sigma);
//! the update x_t = (sigma_vp_t / sigma_vp_s) x_s - alpha_t (e^-h - 1) m_s - ... divided by alpha_t
//! is the same update on the VE state with sigma_vp / alpha = sigma, which is what this file does.

use candle_core::Tensor;

use super::common::{t_fn, weighted_sum};
use super::UniPcVariant;
use crate::{Result, SampleCtx, SamplerError};

/// ComfyUI's stand-in for a final sigma of 0 (UniPC's lambda is infinite there): the last step
/// goes to this noise level and the state there is returned.
const FINAL_SIGMA: f64 = 0.001;

/// ComfyUI `sample_unipc` (`variant = Bh1`) and `sample_unipc_bh2`: order min(3, steps - 1), lower
/// orders for the first steps and at the end, a corrector on every step but the last (whose model
/// evaluation then serves the next step), and no model call after the last step.
///
/// The callback sees, for step i, the corrected state at `sigmas[i]` and the model's prediction at
/// `sigmas[i]` (evaluated at the predicted state, before correction). Needs at least 2 steps:
/// ComfyUI with 1 step runs no update and returns its input.
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], variant: UniPcVariant) -> Result<Tensor> {
    let steps = sigmas.len() - 1;
    if steps < 2 {
        return Err(SamplerError::InvalidSigmas(format!("uni_pc needs at least 2 steps (3 sigmas), got {steps}")));
    }
    let order = 3.min(steps - 1);
    let sigma_at = |i: usize| if i == steps && sigmas[i] == 0.0 { FINAL_SIGMA } else { sigmas[i] };
    let m0 = ctx.denoise(&x, sigmas[0])?.denoised;
    ctx.report(0, sigmas, &x, &m0)?;
    // (sigma, model prediction) of the last `order` steps, oldest first.
    let mut history = vec![(sigmas[0], m0)];
    for i in 1..=steps {
        let step_order = i.min(order).min(steps + 1 - i);
        let use_corrector = i < steps;
        let (x_t, model_t) = update(ctx, &x, &history, sigma_at(i), step_order, use_corrector, variant)?;
        x = x_t;
        if let Some(m) = model_t {
            ctx.report(i, sigmas, &x, &m)?;
            history.push((sigmas[i], m));
            if history.len() > order {
                history.remove(0);
            }
        }
    }
    Ok(x)
}

/// One UniPC step from the newest history entry to `sigma` (ComfyUI
/// `multistep_uni_pc_bh_update` with `predict_x0 = True`): the predictor, then, if
/// `use_corrector`, a model call at the predicted state and the corrector. Returns the new state
/// and that model prediction.
fn update(
    ctx: &mut SampleCtx<'_>,
    x: &Tensor,
    history: &[(f64, Tensor)],
    sigma: f64,
    order: usize,
    use_corrector: bool,
    variant: UniPcVariant,
) -> Result<(Tensor, Option<Tensor>)> {
    let (sigma_prev_0, model_prev_0) = &history[history.len() - 1];
    let lambda_prev_0 = t_fn(*sigma_prev_0);
    let h = t_fn(sigma) - lambda_prev_0;

    let mut rks = Vec::with_capacity(order);
    let mut d1s = Vec::with_capacity(order);
    for (sigma_prev_i, model_prev_i) in history.iter().rev().skip(1).take(order - 1) {
        let rk = (t_fn(*sigma_prev_i) - lambda_prev_0) / h;
        rks.push(rk);
        d1s.push(((model_prev_i - model_prev_0)? / rk)?);
    }
    rks.push(1.0);

    let hh = -h;
    let h_phi_1 = hh.exp_m1(); // h * phi_1(h) = e^h - 1
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let mut factorial_i = 1.0;
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect::<Vec<_>>());
        b.push(h_phi_k * factorial_i / b_h);
        factorial_i *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial_i;
    }

    // x_t_ = sigma_t / sigma_prev_0 * x - (e^-h - 1) * m_prev_0 (VE form)
    let x_t_ = ((x * (sigma / sigma_prev_0))? - (model_prev_0 * h_phi_1)?)?;
    let x_t = if d1s.is_empty() {
        x_t_.clone()
    } else {
        // for order 2, the simplified predictor
        let rhos_p = if order == 2 { vec![0.5] } else { solve(&r[..order - 1], &b[..order - 1], order - 1)? };
        let pred_res = weighted_sum((rhos_p[0], &d1s[0]), rhos_p[1..].iter().copied().zip(&d1s[1..]))?;
        (&x_t_ - (pred_res * b_h)?)?
    };
    if !use_corrector {
        return Ok((x_t, None));
    }
    // for order 1, the simplified corrector
    let rhos_c = if order == 1 { vec![0.5] } else { solve(&r, &b, order)? };
    let model_t = ctx.denoise(&x_t, sigma)?.denoised;
    let d1_t = (&model_t - model_prev_0)?;
    let corr = weighted_sum((rhos_c[order - 1], &d1_t), rhos_c.iter().copied().zip(&d1s))?;
    let x_t = (&x_t_ - (corr * b_h)?)?;
    Ok((x_t, Some(model_t)))
}

/// Solves the n×n system `a[..n][..n] · y = b` (n ≤ 3) by Gaussian elimination with partial
/// pivoting (torch.linalg.solve's LU up to rounding).
fn solve(a: &[Vec<f64>], b: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut m: Vec<Vec<f64>> = (0..n).map(|i| a[i][..n].iter().copied().chain([b[i]]).collect()).collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs())).unwrap_or(col);
        if m[pivot][col] == 0.0 || !m[pivot][col].is_finite() {
            return Err(SamplerError::InvalidSigmas(
                "uni_pc: singular order conditions (repeated or non-finite log-sigma steps)".into(),
            ));
        }
        m.swap(col, pivot);
        let (upper, lower) = m.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (v, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
        }
    }
    let mut y = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| m[row][k] * y[k]).sum();
        y[row] = (m[row][n] - s) / m[row][row];
    }
    Ok(y)
}
