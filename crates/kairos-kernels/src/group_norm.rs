//! GroupNorm over `[N, C, *]` with an optional fused SiLU, as `torch.nn.GroupNorm` (then
//! `F.silu`): statistics per (sample, group) with the biased variance, then a per-channel affine.

use candle_core::{Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::op::{apply3, uninit, F32Op3, Input};
use crate::vecmath;

const OP: &str = "kairos-group-norm";

/// The CPU kernel: inputs `x` `[N, C, *]`, `weight` `[C]`, `bias` `[C]`, all contiguous f32.
struct GroupNormOp {
    num_groups: usize,
    eps: f64,
    silu: bool,
}

impl F32Op3 for GroupNormOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (weight, _l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let dims = l1.dims();
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let per_group = channels / self.num_groups;
        let group_len = per_group * plane;
        // SAFETY: the groups below tile the output and `affine_act` writes each channel whole.
        let mut out = unsafe { uninit(x.len()) };
        if group_len > 0 {
            out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(i, (dst, src))| {
                let c0 = (i % self.num_groups) * per_group;
                // Two passes (mean, then squared deviations from it), so the
                // variance does not lose digits to cancellation.
                let sum: f64 = src.chunks(plane).map(|row| vecmath::sums(row, 0.0)[0]).sum();
                let mean = (sum / group_len as f64) as f32;
                let sq: f64 = src.chunks(plane).map(|row| vecmath::sums(row, mean)[1]).sum();
                let rstd = 1.0 / (sq / group_len as f64 + self.eps).sqrt();
                for (c, (d, s)) in dst.chunks_mut(plane).zip(src.chunks(plane)).enumerate() {
                    let a = rstd * weight[c0 + c] as f64;
                    let b = bias[c0 + c] as f64 - mean as f64 * a;
                    vecmath::affine_act(s, d, a as f32, b as f32, self.silu);
                }
            });
        }
        Ok((out, l1.shape().clone()))
    }
}

/// The straightforward candle computation: `candle_nn::GroupNorm`, then `silu` when asked.
pub fn group_norm_plain(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    num_groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let channels = weight.dims1()?;
    let norm = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, num_groups, eps)?;
    let ys = norm.forward(xs)?;
    if silu {
        candle_nn::ops::silu(&ys)
    } else {
        Ok(ys)
    }
}

/// GroupNorm of `xs` `[N, C, *]` in `num_groups` groups with per-channel `weight` and `bias`
/// `[C]`, followed by SiLU when `silu`. f32 CPU tensors take the fused kernel; anything else
/// takes [`group_norm_plain`].
pub fn group_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    num_groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let dims = xs.dims();
    if dims.len() < 3 || num_groups == 0 || !dims[1].is_multiple_of(num_groups) || weight.dims() != [dims[1]] {
        return Err(KernelError::BadShape {
            op: OP,
            name: "xs",
            expected: format!("[N, C, *] with C a multiple of num_groups ({num_groups}) and equal to weight's length"),
            got: dims.to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([xs, weight, bias]) {
        return group_norm_plain(xs, weight, bias, num_groups, eps, silu);
    }
    apply3(&xs.contiguous()?, &weight.contiguous()?, &bias.contiguous()?, GroupNormOp { num_groups, eps, silu })
}
