//! Linear multistep sampler (Adams–Bashforth in sigma over the Karras ODE): k-diffusion
//! `sample_lms`.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::common::to_d;
use super::LmsOptions;
use crate::{Result, SampleCtx, SamplerError};

/// k-diffusion's `linear_multistep_coeff`: the integral over [t[i], t[i+1]] of the Lagrange basis
/// polynomial over the nodes t[i], t[i-1], ..., t[i-order+1] that is 1 at t[i-j].
///
/// k-diffusion integrates it numerically (`scipy.integrate.quad`, epsrel 1e-4, but its 21-point
/// Gauss–Kronrod rule is exact up to rounding for these polynomials of degree < 21); here the
/// polynomial is expanded in u = tau - t[i] and integrated term by term, exactly up to rounding.
/// The caller guarantees `order <= i + 1` and `j < order`.
fn linear_multistep_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    // Coefficients of prod_{k != j} (u - (t[i-k] - t[i])), lowest degree first.
    let mut poly = vec![1.0];
    let mut denom = 1.0;
    for k in (0..order).filter(|&k| k != j) {
        let a = t[i - k] - t[i];
        let mut next = vec![0.0; poly.len() + 1];
        for (m, c) in poly.iter().enumerate() {
            next[m + 1] += c;
            next[m] -= a * c;
        }
        poly = next;
        denom *= t[i - j] - t[i - k];
    }
    let h = t[i + 1] - t[i];
    let integral: f64 = poly.iter().enumerate().map(|(m, c)| c * h.powi(m as i32 + 1) / (m + 1) as f64).sum();
    integral / denom
}

/// Linear multistep steps of order `min(i + 1, order)` over the derivatives of the last `order`
/// steps, including the last step to sigma 0 (ComfyUI's copy returns `denoised` there instead).
pub(super) fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64], o: &LmsOptions) -> Result<Tensor> {
    if o.order == 0 {
        return Err(SamplerError::InvalidOption {
            sampler: "lms",
            message: "order must be >= 1 (default 4), got 0".into(),
        });
    }
    let mut ds = VecDeque::with_capacity(o.order + 1);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?.denoised;
        ds.push_back(to_d(&x, sigmas[i], &denoised)?);
        if ds.len() > o.order {
            ds.pop_front();
        }
        ctx.report(i, sigmas, &x, &denoised)?;
        let cur_order = (i + 1).min(o.order);
        // ds holds exactly cur_order derivatives; j counts back from the newest. Summed apart from
        // x, from 0, as k-diffusion's `x + sum(...)`.
        let mut update = x.zeros_like()?;
        for (j, d) in ds.iter().rev().enumerate() {
            update = (update + (d * linear_multistep_coeff(cur_order, sigmas, i, j))?)?;
        }
        x = (x + update)?;
    }
    Ok(x)
}
