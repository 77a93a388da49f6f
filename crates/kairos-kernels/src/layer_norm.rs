//! LayerNorm over the last dimension, as `torch.nn.LayerNorm` with an elementwise affine: per row
//! the mean and the biased variance, then `(x − mean)·rstd·weight + bias`. candle's CPU op sums
//! `x` and `x²` in one scalar pass (variance by cancellation); this one takes two vectorised
//! passes over the row (in L1) and writes the output once.

use candle_core::{Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::gemm_bf16::{Element, PackedA};
use crate::op::{apply3, read_f32, uninit, F32Op3, Input};
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
                    let (mean, rstd) = row_stats(src, self.eps);
                    vecmath::normalize_affine(src, dst, mean, rstd, weight, bias);
                }
            });
        }
        Ok((out, l1.shape().clone()))
    }
}

/// A row's mean and `1/√(var + eps)` (biased variance, from the deviations).
fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
    let d = row.len() as f64;
    let mean = (vecmath::sums(row, 0.0)[0] / d) as f32;
    let var = vecmath::sums(row, mean)[1] / d;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// [`layer_norm`] of f32 CPU `xs` `[.., D]` straight into the bf16 GEMM's packed left operand
/// (one row of `D` per token), each normalised value rounded to bf16 as packing the f32 output
/// would: the same operand without writing the f32 tokens out and reading them back (once per
/// projection that reads them: three for a self-attention's q, k and v).
pub(crate) fn layer_norm_packed(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<PackedA> {
    check_shapes(xs, weight, bias)?;
    let d = weight.dims1()?;
    let (xs, weight, bias) = (xs.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    read_f32(OP, &xs, |x| {
        read_f32(OP, &weight, |weight| {
            read_f32(OP, &bias, |bias| {
                Ok(PackedA::from_rows(x.len() / d.max(1), d, |i, mut dst| {
                    let src = &x[i * d..][..d];
                    let (mean, rstd) = row_stats(src, eps);
                    // 32 values (one chunk of 16 pairs) at a time, through L1.
                    let mut buf = [0f32; 32];
                    for (c, chunk) in dst.chunks().enumerate() {
                        let (j0, len) = (32 * c, d.saturating_sub(32 * c).min(32));
                        let at = j0..j0 + len;
                        vecmath::normalize_affine(
                            &src[at.clone()],
                            &mut buf[..len],
                            mean,
                            rstd,
                            &weight[at.clone()],
                            &bias[at],
                        );
                        buf[len..].fill(0.0);
                        f32::pairs_of(&buf, chunk);
                    }
                }))
            })
        })
    })
}

/// `xs` `[.., D]` for `weight` and `bias` `[D]`.
fn check_shapes(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<()> {
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
    Ok(())
}

/// The straightforward candle computation: `candle_nn::LayerNorm` (which runs candle's own
/// layer-norm op on contiguous f32).
pub fn layer_norm_plain(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps).forward(xs)
}

/// LayerNorm of `xs` `[.., D]` over its last dimension with `weight` and `bias` `[D]`. f32 CPU
/// tensors take the kernel; anything else takes [`layer_norm_plain`].
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    check_shapes(xs, weight, bias)?;
    if !crate::kernel_applies([xs, weight, bias]) {
        return layer_norm_plain(xs, weight, bias, eps);
    }
    apply3(&xs.contiguous()?, &weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps })
}
