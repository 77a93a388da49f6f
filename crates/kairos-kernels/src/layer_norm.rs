//! LayerNorm over the last dimension, as `torch.nn.LayerNorm` with an elementwise affine: per row
//! the mean and the biased variance, then `(x − mean)·rstd·weight + bias`. candle's CPU op sums
//! `x` and `x²` in one scalar pass (variance by cancellation); this one takes two vectorised
//! passes over the row (in L1) and writes the output once.

use candle_core::{Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::op::{apply3, uninit, F32Op3, Input};
use crate::vecmath;

const OP: &str = "kairos-layer-norm";

/// The CPU kernel: inputs `x` `[.., D]`, `weight` `[D]`, `bias` `[D]`, all contiguous f32.
struct LayerNormOp {
    eps: f64,
}

impl F32Op3 for LayerNormOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (weight, _l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let d = weight.len();
        // SAFETY: the rows below tile the output and each is written whole.
        let mut out = unsafe { uninit(x.len()) };
        // Rows of a few hundred to a few thousand values: enough per job to amortise rayon.
        if let Some(rows_per_job) = 4096usize.checked_div(d).map(|r| r.max(1)) {
            out.par_chunks_mut(rows_per_job * d).zip(x.par_chunks(rows_per_job * d)).for_each(|(dst, src)| {
                for (dst, src) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                    let mean = (vecmath::sums(src, 0.0)[0] / d as f64) as f32;
                    let var = vecmath::sums(src, mean)[1] / d as f64;
                    let rstd = (1.0 / (var + self.eps).sqrt()) as f32;
                    vecmath::normalize_affine(src, dst, mean, rstd, weight, bias);
                }
            });
        }
        Ok((out, l1.shape().clone()))
    }
}

/// The straightforward candle computation: `candle_nn::LayerNorm` (which runs candle's own
/// layer-norm op on contiguous f32).
pub fn layer_norm_plain(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps).forward(xs)
}

/// LayerNorm of `xs` `[.., D]` over its last dimension with `weight` and `bias` `[D]`. f32 CPU
/// tensors take the kernel; anything else takes [`layer_norm_plain`].
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = weight.dims1()?;
    if xs.dims().last() != Some(&d) || bias.dims() != [d] {
        return Err(KernelError::BadShape {
            op: OP,
            name: "xs",
            expected: format!("[.., {d}] with bias [{d}]"),
            got: xs.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([xs, weight, bias]) {
        return layer_norm_plain(xs, weight, bias, eps);
    }
    apply3(&xs.contiguous()?, &weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps })
}
