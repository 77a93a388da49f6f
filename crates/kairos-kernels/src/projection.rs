//! The projections around a spatial transformer (diffusers' `Transformer2DModel`): `proj_in`
//! turns the normalised feature map `[N, C, H, W]` into tokens `[N, H·W, C']`, `proj_out` turns
//! tokens back into a map and adds the block's input. Each is one GEMM per sample that reads its
//! input, or writes its output, transposed in place ([`tokens_from_map`], [`map_from_tokens`]),
//! instead of a projection plus a `[N, C, H, W]` ↔ `[N, H·W, C]` permute copy on either side and
//! a separate residual add (about 14 ms of copies per 64×64 transformer at batch 2 on 2 cores).

use candle_core::{Result, Shape, Tensor};

use crate::error::KernelError;
use crate::linear::{linear_plain, WeightLayout};
use crate::matmul::{self, Mat, MatMut, Threads};
use crate::op::{apply3, filled, F32Op3, Fill, Input};

const OP: &str = "kairos-projection";

/// `[N, Ci, H, W]`, `[Co, Ci]` (stored as the layout says), `[Co]` → `[N, H·W, Co]`.
struct TokensOp(WeightLayout);

impl F32Op3 for TokensOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (w, l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, ci, h, wd) = l1.shape().dims4()?;
        let (co, _) = self.0.out_in(l2.shape().dims2()?);
        let t = h * wd;
        let mut out = filled(n * t, co, |_| Fill::Copy(bias));
        for b in 0..n {
            // SAFETY: out's sample b is T×Co row-major; A (T×Ci) is sample b of x read
            // transposed (element (t, c) at x[b·Ci·T + c·T + t]); B = Wᵀ (Ci×Co) is read from w
            // (Co·Ci elements in either layout). Every index stays inside its sample / w.
            unsafe {
                let dst = MatMut::rows(&mut out[b * t * co..], co);
                let (lhs, rhs) = (Mat::rows_t(&x[b * ci * t..], t), self.0.wt(w, (co, ci)));
                matmul::gemm(t, co, ci, dst, lhs, rhs, true, Threads::All);
            }
        }
        Ok((out, Shape::from((n, t, co))))
    }
}

/// `[N, H·W, Ci]`, `[Co, Ci]` (stored as `layout` says), residual `[N, Co, H, W]` (+ `bias`) →
/// `[N, Co, H, W]`.
struct MapOp {
    /// `[Co]` (zeros without a bias).
    bias: Vec<f32>,
    layout: WeightLayout,
}

impl F32Op3 for MapOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (w, l2): Input<'_>, (residual, l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, t, ci) = l1.shape().dims3()?;
        let (co, _) = self.layout.out_in(l2.shape().dims2()?);
        let mut out = filled(n * co, t, |i| Fill::Shifted(&residual[i * t..][..t], self.bias[i % co]));
        for b in 0..n {
            // SAFETY: out's sample b is Co×T row-major; A = W (Co·Ci elements in either layout);
            // B (Ci×T) is sample b of x (T×Ci row-major) read transposed (element (c, t) at
            // x[b·T·Ci + t·Ci + c]). Every index stays inside its sample / w.
            unsafe {
                let dst = MatMut::rows(&mut out[b * co * t..], t);
                let (lhs, rhs) = (self.layout.w(w, (co, ci)), Mat::rows_t(&x[b * t * ci..], ci));
                matmul::gemm(co, t, ci, dst, lhs, rhs, true, Threads::All);
            }
        }
        Ok((out, l3.shape().clone()))
    }
}

/// The shape error of both functions.
fn bad_shape(name: &'static str, expected: String, got: &Tensor) -> candle_core::Error {
    KernelError::BadShape { op: OP, name, expected, got: got.dims().to_vec() }.into()
}

/// `proj_in` on a feature map: `x` `[N, Ci, H, W]`, `weight` `[Co, Ci]`, optional `bias` `[Co]`
/// → tokens `[N, H·W, Co]` (`x` permuted to tokens, then `x·Wᵀ + b`; a 1×1 convolution's weight
/// reshaped to `[Co, Ci]` gives the same). f32 CPU tensors take one GEMM per sample reading `x`
/// in place; anything else permutes and takes [`linear_plain`].
pub fn tokens_from_map(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, ci, h, w) = x.dims4()?;
    let (co, wi) = weight.dims2()?;
    if wi != ci || bias.is_some_and(|b| b.dims() != [co]) {
        return Err(bad_shape(
            "input/bias",
            format!("input [N, {wi}, H, W] and bias [{co}] for weight [{co}, {wi}]"),
            x,
        ));
    }
    if !crate::kernel_applies([x, weight].into_iter().chain(bias)) {
        let tokens = x.permute((0, 2, 3, 1))?.reshape((n, h * w, ci))?;
        return linear_plain(&tokens, weight, bias);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(co, x.dtype(), x.device())?,
    };
    let (weight, layout) = WeightLayout::of(weight)?;
    apply3(&x.contiguous()?, &weight, &bias, TokensOp(layout))
}

/// `proj_out` plus the residual: `tokens` `[N, H·W, Ci]`, `weight` `[Co, Ci]`, optional `bias`
/// `[Co]`, `residual` `[N, Co, H, W]` → `residual + (tokens·Wᵀ + b)` as `[N, Co, H, W]`. f32 CPU
/// tensors take one GEMM per sample writing the map in place onto the residual; anything else
/// takes [`linear_plain`], a permute and an add.
pub fn map_from_tokens(tokens: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    let (n, t, ci) = tokens.dims3()?;
    let (co, wi) = weight.dims2()?;
    let (rn, rc, h, w) = residual.dims4()?;
    if wi != ci || bias.is_some_and(|b| b.dims() != [co]) || (rn, rc, h * w) != (n, co, t) {
        return Err(bad_shape(
            "tokens/bias/residual",
            format!("tokens [N, H·W, {wi}], bias [{co}] and residual [N, {co}, H, W] for weight [{co}, {wi}]"),
            tokens,
        ));
    }
    if !crate::kernel_applies([tokens, weight, residual].into_iter().chain(bias)) {
        let map = linear_plain(tokens, weight, bias)?.reshape((n, h, w, co))?.permute((0, 3, 1, 2))?;
        return map + residual;
    }
    let bias = match bias {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; co],
    };
    let (weight, layout) = WeightLayout::of(weight)?;
    apply3(&tokens.contiguous()?, &weight, &residual.contiguous()?, MapOp { bias, layout })
}
