//! GEGLU's gating, `value · gelu(gate)` on the halves of a projection's output, in one pass: the
//! plain candle path splits the projection into two strided views, writes `gelu(gate)` and then
//! the product (three passes over 2 × 4096 × 2560 values per SD1.5 feed-forward at 512×512).

use candle_core::{Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::op::{apply1, uninit, F32Op1, Input};
use crate::vecmath;

const OP: &str = "kairos-geglu";

/// The CPU kernel: `x` `[.., 2n]` contiguous f32 → `[.., n]`.
struct GegluOp;

impl F32Op1 for GegluOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let mut dims = layout.dims().to_vec();
        let last = dims.last_mut().expect("rank checked by geglu()");
        let half = *last / 2;
        *last = half;
        // SAFETY: the rows below tile the output and `geglu` writes each whole.
        let mut out = unsafe { uninit(x.len() / 2) };
        if half > 0 {
            out.par_chunks_mut(half).zip(x.par_chunks(2 * half)).for_each(|(dst, src)| vecmath::geglu(src, dst));
        }
        Ok((out, Shape::from(dims)))
    }
}

/// The straightforward candle computation: `value * gelu_erf(gate)` on the two halves.
pub fn geglu_plain(xs: &Tensor) -> Result<Tensor> {
    let chunks = xs.chunk(2, D::Minus1)?;
    &chunks[0] * chunks[1].gelu_erf()?
}

/// GEGLU's gating of `xs` `[.., 2n]`: the first half of the last dimension times the exact (erf)
/// GELU of the second half, `[.., n]`. f32 CPU tensors take the one-pass kernel; anything else
/// takes [`geglu_plain`].
pub fn geglu(xs: &Tensor) -> Result<Tensor> {
    if xs.dims().last().is_none_or(|&d| d % 2 != 0) {
        return Err(KernelError::BadShape {
            op: OP,
            name: "input",
            expected: "[.., 2n] (an even last dimension)".to_string(),
            got: xs.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([xs]) {
        return geglu_plain(xs);
    }
    apply1(&xs.contiguous()?, &GegluOp)
}
