//! `y = x·Wᵀ + b` as one GEMM over all rows of `x` (every leading dimension flattened), writing
//! onto rows that already hold the bias. candle's `Linear` multiplies batch by batch with a
//! broadcast weight and then adds the bias in a second pass over the output; on SD1.5's shapes
//! (8192 rows × 320 → 2560) that took 1.4–2× the time of this single GEMM.

use candle_core::{DType, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::matmul::{self, Mat, MatMut, Threads};
use crate::op::{apply3, filled, uninit, F32Op3, Fill, Input};
use crate::vecmath::multiversion;

const OP: &str = "kairos-linear";

/// The CPU kernel: `x` `[.., in]`, `w` `[out, in]` (or `[in, out]`, [`WeightLayout::Transposed`]),
/// `bias` `[out]`, contiguous f32.
struct LinearOp(WeightLayout);

/// How a `[out, in]` weight matrix is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightLayout {
    /// Row-major `[out, in]`, as checkpoints hold it.
    Rows,
    /// Row-major `[in, out]` (`Wᵀ`), as [`gemm_weight`] stores it.
    Transposed,
}

impl WeightLayout {
    /// `weight` `[out, in]` as a contiguous tensor (`[out, in]`, or `[in, out]` when its
    /// transpose is what is contiguous, as for [`gemm_weight`]'s) and which of the two it is.
    pub(crate) fn of(weight: &Tensor) -> Result<(Tensor, Self)> {
        let wt = weight.t()?;
        if !weight.is_contiguous() && wt.is_contiguous() {
            Ok((wt, Self::Transposed))
        } else {
            Ok((weight.contiguous()?, Self::Rows))
        }
    }

    /// `(out, in)` of a weight stored this way with dims `dims`.
    pub(crate) fn out_in(self, dims: (usize, usize)) -> (usize, usize) {
        match self {
            Self::Rows => dims,
            Self::Transposed => (dims.1, dims.0),
        }
    }

    /// `Wᵀ` (`in × out`) over the weight's data `w`.
    pub(crate) fn wt(self, w: &[f32], (dout, din): (usize, usize)) -> Mat {
        match self {
            Self::Rows => Mat::rows_t(w, din),
            Self::Transposed => Mat::rows(w, dout),
        }
    }

    /// `W` (`out × in`) over the weight's data `w`.
    pub(crate) fn w(self, w: &[f32], (dout, din): (usize, usize)) -> Mat {
        match self {
            Self::Rows => Mat::rows(w, din),
            Self::Transposed => Mat::rows_t(w, dout),
        }
    }
}

/// A linear layer's f32 CPU weight `[out, in]` as the GEMM reads it fastest: its data transposed
/// (`[in, out]` row-major) and the result a transposed view of that, so its shape is still
/// `[out, in]`. The `gemm` crate packs a `Wᵀ` read from `[out, in]` data one strided element at
/// a time (`vmovss`, 27 % of the f32 text encoder's time in `perf`), and `[in, out]` data by
/// contiguous copies. Other tensors come back as they are. Done once, where a layer is built.
pub(crate) fn gemm_weight(weight: &Tensor) -> Result<Tensor> {
    if !crate::kernel_applies([weight]) || weight.rank() != 2 {
        return Ok(weight.clone());
    }
    let (dout, din) = weight.dims2()?;
    let wt = crate::op::read_f32(OP, &weight.contiguous()?, |w| Ok(transpose(w, dout, din)))?;
    Tensor::from_vec(wt, (din, dout), weight.device())?.t()
}

/// `src` (`rows × cols`, row-major) transposed, by strips of [`STRIP`] columns in parallel.
/// candle's strided copy took 183 ms for one 1280×10240 matrix on 2 cores; this adds about 0.45 s
/// to the load of SDXL's two f32 text encoders (2.5 GB of linear weights, page faults included).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // SAFETY: the tasks below write every element: task jb all rows·nj elements of its chunk.
    let mut dst = unsafe { uninit(rows * cols) };
    if dst.is_empty() {
        return dst;
    }
    dst.par_chunks_mut(STRIP * rows).enumerate().for_each(|(jb, d)| {
        let j0 = jb * STRIP;
        transpose_strip(src, cols, j0, STRIP.min(cols - j0), d, rows)
    });
    dst
}

/// Columns per strip of [`transpose`]: four cache lines of each source row read together (one
/// line per row and strip measured the same within the host's noise).
const STRIP: usize = 4 * BLOCK;
/// The side of the blocks transposed in registers.
const BLOCK: usize = 16;

/// Columns `j0..j0 + nj` of `src` (`rows` rows of `cols`) into `d` (`nj` rows of `rows`): 16×16
/// blocks through fixed-size arrays, which the compiler turns into register shuffles, and the
/// ragged right and bottom edges element by element.
#[inline(always)]
fn transpose_strip_generic(src: &[f32], cols: usize, j0: usize, nj: usize, d: &mut [f32], rows: usize) {
    let (blocked_rows, blocked_cols) = (rows / BLOCK * BLOCK, nj / BLOCK * BLOCK);
    for i0 in (0..blocked_rows).step_by(BLOCK) {
        for jb in (0..blocked_cols).step_by(BLOCK) {
            let mut block = [[0f32; BLOCK]; BLOCK];
            for (i, row) in block.iter_mut().enumerate() {
                row.copy_from_slice(&src[(i0 + i) * cols + j0 + jb..][..BLOCK]);
            }
            for j in 0..BLOCK {
                let out = &mut d[(jb + j) * rows + i0..][..BLOCK];
                out.iter_mut().zip(&block).for_each(|(o, row)| *o = row[j]);
            }
        }
    }
    for i in 0..rows {
        let from = if i < blocked_rows { blocked_cols } else { 0 };
        for (j, &x) in src[i * cols + j0..][..nj].iter().enumerate().skip(from) {
            d[j * rows + i] = x;
        }
    }
}

multiversion! {
    /// [`transpose_strip_generic`] compiled for the CPU's vector extension.
    fn transpose_strip(src: &[f32], cols: usize, j0: usize, nj: usize, d: &mut [f32], rows: usize) -> () =
        transpose_strip_generic;
}

impl F32Op3 for LinearOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (w, l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (dout, din) = self.0.out_in(l2.shape().dims2()?);
        // From the leading dims, not x.len() / din: an input of width 0 is legal (output = bias).
        let dims = l1.dims();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut out = filled(rows, dout, |_| Fill::Copy(bias));
        if !out.is_empty() {
            // SAFETY: out is rows×dout row-major, x rows×din row-major, and Wᵀ (din×dout) is read
            // from w (dout×din elements in either layout).
            unsafe {
                let (dst, lhs, rhs) = (MatMut::rows(&mut out, dout), Mat::rows(x, din), self.0.wt(w, (dout, din)));
                matmul::gemm(rows, dout, din, dst, lhs, rhs, true, Threads::All);
            }
        }
        let mut dims = dims.to_vec();
        *dims.last_mut().expect("rank checked by linear()") = dout;
        Ok((out, Shape::from(dims)))
    }
}

/// The straightforward candle computation (`candle_nn::Linear`).
pub fn linear_plain(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(xs)
}

/// `xs·weightᵀ + bias` for `xs` `[.., in]`, `weight` `[out, in]` and an optional `bias` `[out]`.
/// f32 CPU tensors take the single-GEMM kernel; anything else takes [`linear_plain`].
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (dout, din) = weight.dims2()?;
    if xs.dims().last() != Some(&din) || bias.is_some_and(|b| b.dims() != [dout]) {
        return Err(KernelError::BadShape {
            op: OP,
            name: "input/bias",
            expected: format!("input [.., {din}] and bias [{dout}] for weight [{dout}, {din}]"),
            got: xs.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([xs, weight].into_iter().chain(bias)) {
        return linear_plain(xs, weight, bias);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(dout, DType::F32, xs.device())?,
    };
    let (weight, layout) = WeightLayout::of(weight)?;
    apply3(&xs.contiguous()?, &weight, &bias, LinearOp(layout))
}

#[cfg(test)]
mod tests {
    /// The blocked, parallel transposition against the definition: whole 16×16 blocks, several
    /// strips, ragged edges on either side, one element, and empty matrices.
    #[test]
    fn transpose_is_exact() {
        for (rows, cols) in [(130usize, 200usize), (16, 64), (17, 65), (64, 3), (1, 1), (0, 5), (5, 0)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let dst = super::transpose(&src, rows, cols);
            assert_eq!(dst.len(), rows * cols);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[j * rows + i], src[i * cols + j], "{rows}×{cols} at ({i}, {j})");
                }
            }
        }
    }
}
