//! Linear and convolution layers whose weights are packed once for [`crate::gemm_bf16`]: the
//! activations stay f32 between layers and are rounded to bf16 only as they are packed for a
//! GEMM, which accumulates in f32 (norms, softmax and residual sums never see bf16).

use std::sync::Arc;

use candle_core::{DType, Result, Shape, Tensor};

use crate::attention::OutPtr;
use crate::conv2d::{im2col_conv, Conv2dParams};
use crate::conv_direct::{DirectConv, Source, Target};
use crate::gemm_bf16::{self, MatRef, PackedA, PackedB, PackedWriter};
use crate::nn::Tokens;
use crate::op::{apply1, apply2, filled, uninit, F32Op1, F32Op2, Fill, Input};
use crate::vecmath;
use rayon::prelude::*;

const LINEAR: &str = "kairos-linear-bf16";
const CONV: &str = "kairos-conv2d-bf16";

/// Whether a layer with weights of `dtype` on `device` packs them for the bf16 GEMM: bf16
/// weights on a CPU with AVX512-BF16, unless `KAIROS_KERNELS=off`.
pub(crate) fn packs(weight: &Tensor) -> bool {
    weight.device().is_cpu() && weight.dtype() == DType::BF16 && gemm_bf16::available() && !crate::kernels_off()
}

/// The weight's values as a contiguous bf16 vector (packing reads them once).
fn bf16_values(weight: &Tensor) -> Result<Vec<half::bf16>> {
    weight.flatten_all()?.to_vec1::<half::bf16>()
}

/// The bias as f32 values (the GEMMs accumulate onto it).
fn f32_values(bias: Option<&Tensor>) -> Result<Option<Arc<[f32]>>> {
    bias.map(|b| Ok(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into())).transpose()
}

/// `y = x·Wᵀ + b` with `W` `[out, in]` packed as the GEMM's right operand.
#[derive(Debug, Clone)]
pub(crate) struct LinearBf16 {
    weight: Arc<PackedB>,
    bias: Option<Arc<[f32]>>,
}

impl LinearBf16 {
    /// Packs a `[out, in]` bf16 weight and an optional `[out]` bias.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let values = bf16_values(weight)?;
        let view = MatRef::row_major(&values, out_features, in_features).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{LINEAR}: weight has {} values, not {out_features}×{in_features}",
                values.len()
            ))
        })?;
        Ok(Self { weight: Arc::new(PackedB::new(view.t())), bias: f32_values(bias)? })
    }

    /// Applies the layer to `x` `[.., in]` (any float dtype; computed from f32), giving f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = self.weight.depth();
        if x.dims().last() != Some(&in_features) {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: Shape::from((self.weight.cols(), in_features)),
                op: LINEAR,
            });
        }
        apply1(&f32_contiguous(x)?, self)
    }

    /// GEGLU's gating of the layer's output, `value · gelu(gate)` on its two halves, in one
    /// pass: each block of rows × columns of both halves is computed into a buffer in L1 and
    /// gated from there, so the projection's `[.., 2n]` output is never written out (a 320 →
    /// 2560 projection of SD1.5's 8192 tokens is 84 MB of f32). `None` where the halves are not
    /// whole blocks (`n` not a multiple of 64) or `x` is not `[.., in]`: then project (which
    /// reports a bad input) and gate separately.
    pub fn forward_geglu(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if !self.geglu_whole_blocks() || x.dims().last() != Some(&self.weight.depth()) {
            return Ok(None);
        }
        apply1(&x.to_dtype(DType::F32)?.contiguous()?, &Geglu(self)).map(Some)
    }

    /// Whether the output's halves are whole GEGLU blocks (`n` a multiple of 64).
    fn geglu_whole_blocks(&self) -> bool {
        let cols = self.weight.cols();
        cols.is_multiple_of(2) && (cols / 2).is_multiple_of(GEGLU_COLS)
    }
}

/// Rows and value columns of one GEGLU block (with as many gate columns): 64 × 128 f32 of
/// buffer, 32 KiB.
const GEGLU_ROWS: usize = 64;
const GEGLU_COLS: usize = 64;

/// [`LinearBf16::forward_geglu`]'s kernel.
struct Geglu<'a>(&'a LinearBf16);

thread_local! {
    /// A GEGLU block's buffer, kept per thread.
    static GEGLU_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl F32Op1 for Geglu<'_> {
    const NAME: &'static str = "kairos-linear-geglu-bf16";

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (k, n) = (self.0.weight.depth(), self.0.weight.cols() / 2);
        let a = MatRef::row_major(x, x.len() / k.max(1), k)
            .ok_or_else(|| candle_core::Error::Msg(format!("{LINEAR}: input size")))?;
        Ok((self.0.geglu_f32(&PackedA::new(a)), out_shape(layout.shape(), n)))
    }
}

/// Where [`LinearBf16::geglu_into`] writes: `[M, n]` f32, or packed for the next bf16 layer.
enum GegluOut<'a> {
    F32(OutPtr),
    Packed(PackedWriter<'a>),
}

/// `dims` with the last replaced by `n`.
fn out_shape(dims: &Shape, n: usize) -> Shape {
    let mut dims = dims.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

impl LinearBf16 {
    /// The GEGLU-gated output of the packed input `a` as f32 `[M, n]`.
    fn geglu_f32(&self, a: &PackedA) -> Vec<f32> {
        // SAFETY: the rows × value columns `geglu_into` writes tile the output.
        let mut out = unsafe { uninit(a.rows() * (self.weight.cols() / 2)) };
        self.geglu_into(a, GegluOut::F32(OutPtr(out.as_mut_ptr())));
        out
    }

    /// The GEGLU-gated output (see [`Self::forward_geglu`]) of the packed input `a`, `[M, n]`,
    /// into `out`: every row × value column, each block by one job.
    fn geglu_into(&self, a: &PackedA, out: GegluOut<'_>) {
        let layer = self;
        let (m, n) = (a.rows(), layer.weight.cols() / 2);
        let (row_blocks, col_blocks) = (m.div_ceil(GEGLU_ROWS), n / GEGLU_COLS);
        (0..row_blocks * col_blocks).into_par_iter().for_each(|job| {
            let (r0, c0) = (job / col_blocks * GEGLU_ROWS, job % col_blocks * GEGLU_COLS);
            let rows = GEGLU_ROWS.min(m - r0);
            GEGLU_BUF.with_borrow_mut(|buf| {
                // Row r: the value columns c0.., then the gate columns n + c0.., from the bias.
                buf.resize(GEGLU_ROWS * 2 * GEGLU_COLS, 0.0);
                for row in buf.chunks_mut(2 * GEGLU_COLS).take(rows) {
                    let (value, gate) = row.split_at_mut(GEGLU_COLS);
                    match layer.bias.as_deref() {
                        Some(bias) => {
                            value.copy_from_slice(&bias[c0..c0 + GEGLU_COLS]);
                            gate.copy_from_slice(&bias[n + c0..n + c0 + GEGLU_COLS]);
                        }
                        None => row.fill(0.0),
                    }
                }
                let ld = 2 * GEGLU_COLS;
                gemm_bf16::gemm_block(a, &layer.weight, r0..r0 + rows, c0..c0 + GEGLU_COLS, buf, ld, 1.0, true);
                gemm_bf16::gemm_block(
                    a,
                    &layer.weight,
                    r0..r0 + rows,
                    n + c0..n + c0 + GEGLU_COLS,
                    &mut buf[GEGLU_COLS..],
                    ld,
                    1.0,
                    true,
                );
                for (i, row) in buf.chunks(ld).take(rows).enumerate() {
                    // SAFETY (both): row r0 + i, columns c0..c0 + GEGLU_COLS of the output: inside
                    // it, and this job's alone (the caller sized it `[M, n]`, whole chunks).
                    match &out {
                        GegluOut::F32(ptr) => vecmath::geglu(row, unsafe { ptr.slice((r0 + i) * n + c0, GEGLU_COLS) }),
                        GegluOut::Packed(writer) => {
                            let mut gated = [0f32; GEGLU_COLS];
                            vecmath::geglu(row, &mut gated);
                            unsafe { writer.write(r0 + i, c0 / 2, &gated) };
                        }
                    }
                }
            });
        });
    }
}

impl LinearBf16 {
    /// `forward(x) + residual` (`residual` of the output's shape, checked by the caller), the
    /// GEMM accumulating onto the residual plus the bias: no separate pass for the add (a
    /// transformer block's `to_out.0` and `ff.net.2`).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        apply2(&f32_contiguous(x)?, &f32_contiguous(residual)?, &LinearResidual(self))
    }

    /// The layer on `x` (`[.., k]`): `x·Wᵀ + b`, plus `residual` (of the output's size) if given.
    fn run_onto(&self, x: &[f32], layout: &candle_core::Layout, residual: Option<&[f32]>) -> Result<(Vec<f32>, Shape)> {
        let k = self.weight.depth();
        let a = MatRef::row_major(x, x.len() / k.max(1), k)
            .ok_or_else(|| candle_core::Error::Msg(format!("{LINEAR}: input size")))?;
        Ok((self.run_packed(&PackedA::new(a), residual), out_shape(layout.shape(), self.weight.cols())))
    }

    /// The layer on the packed input `a` (`M × k`), plus `residual` if given: `[M, n]`.
    fn run_packed(&self, a: &PackedA, residual: Option<&[f32]>) -> Vec<f32> {
        let (m, n) = (a.rows(), self.weight.cols());
        let (mut out, accumulate) = match (residual, self.bias.as_deref()) {
            (Some(r), Some(bias)) => (filled(m, n, |i| Fill::Sum(&r[i * n..][..n], bias)), true),
            (Some(r), None) => (filled(m, n, |i| Fill::Copy(&r[i * n..][..n])), true),
            (None, Some(bias)) => (filled(m, n, |_| Fill::Copy(bias)), true),
            // SAFETY: the GEMM below overwrites all of C (accumulate is false).
            (None, None) => (unsafe { uninit(m * n) }, false),
        };
        gemm_bf16::gemm(a, &self.weight, &mut out, n, 1.0, accumulate, true);
        out
    }

    /// The layer on tokens a LayerNorm packed (`[.., k]` as `dims` says), giving f32 `[.., n]`.
    pub fn forward_packed(&self, a: &PackedA, dims: &Shape) -> Result<Tensor> {
        self.check_packed(a)?;
        Tensor::from_vec(self.run_packed(a, None), out_shape(dims, self.weight.cols()), &candle_core::Device::Cpu)
    }

    /// [`Self::forward_geglu`] on packed tokens (`dims` `[.., k]`), its output f32 or, with
    /// `pack`, packed for the next bf16 layer (a feed-forward's `net.2`: the 4×-wide gated
    /// tokens are never written out in f32); `None` where `forward_geglu` returns `None`.
    pub fn forward_geglu_packed(&self, a: &PackedA, dims: &Shape, pack: bool) -> Result<Option<Tokens>> {
        self.check_packed(a)?;
        if !self.geglu_whole_blocks() {
            return Ok(None);
        }
        let (m, n) = (a.rows(), self.weight.cols() / 2);
        let dims = out_shape(dims, n);
        if pack {
            let mut packed = PackedA::for_writer(m, n);
            self.geglu_into(a, GegluOut::Packed(packed.writer()));
            return Ok(Some(Tokens::Packed { packed, dims }));
        }
        Ok(Some(Tokens::F32(Tensor::from_vec(self.geglu_f32(a), dims, &candle_core::Device::Cpu)?)))
    }

    /// [`Self::forward_residual`] on packed tokens (`dims` `[.., k]`; `residual` of the output's
    /// shape, checked by the caller).
    pub fn forward_residual_packed(&self, a: &PackedA, dims: &Shape, residual: &Tensor) -> Result<Tensor> {
        self.check_packed(a)?;
        let residual = f32_contiguous(residual)?;
        let out = crate::op::read_f32(LINEAR, &residual, |r| Ok(self.run_packed(a, Some(r))))?;
        Tensor::from_vec(out, out_shape(dims, self.weight.cols()), &candle_core::Device::Cpu)
    }

    fn check_packed(&self, a: &PackedA) -> Result<()> {
        if a.depth() != self.weight.depth() {
            return Err(candle_core::Error::Msg(format!(
                "{LINEAR}: packed input of depth {}, layer of {}",
                a.depth(),
                self.weight.depth()
            )));
        }
        Ok(())
    }
}

impl F32Op1 for LinearBf16 {
    const NAME: &'static str = LINEAR;

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        self.run_onto(x, layout, None)
    }
}

/// [`LinearBf16::forward_residual`]'s kernel.
struct LinearResidual<'a>(&'a LinearBf16);

impl F32Op2 for LinearResidual<'_> {
    const NAME: &'static str = LINEAR;

    fn run(&self, (x, layout): Input<'_>, (residual, _): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        self.0.run_onto(x, layout, Some(residual))
    }
}

/// A convolution (one group, dilation 1) with a bf16 weight packed once: for the direct AMX
/// kernel where it applies ([`DirectConv::applies`]: 3×3 with padding 1 or 1×1, stride 1, input
/// channels in multiples of 32), else as the GEMM's left
/// operand `[Co, Ci·kh·kw]` with the input's im2col columns as the right one (the GEMM writes NCHW
/// rows directly).
#[derive(Debug, Clone)]
pub(crate) struct Conv2dBf16 {
    weight: ConvWeight,
    bias: Option<Arc<[f32]>>,
    /// `(Ci, kh, kw)`.
    kernel: (usize, usize, usize),
    params: Conv2dParams,
}

/// A [`Conv2dBf16`]'s packed weight.
#[derive(Debug, Clone)]
enum ConvWeight {
    Im2col(Arc<PackedA>),
    Direct(Arc<DirectConv>),
}

impl Conv2dBf16 {
    /// Packs a `[Co, Ci, kh, kw]` bf16 weight and an optional `[Co]` bias.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Self> {
        let (co, ci, kh, kw) = weight.dims4()?;
        let values = bf16_values(weight)?;
        let view = MatRef::row_major(&values, co, ci * kh * kw).ok_or_else(|| {
            candle_core::Error::Msg(format!("{CONV}: weight has {} values, not {co}×{ci}×{kh}×{kw}", values.len()))
        })?;
        let weight = if DirectConv::applies(ci, (kh, kw), params) {
            ConvWeight::Direct(Arc::new(DirectConv::new(&values, co, ci, kh)))
        } else {
            ConvWeight::Im2col(Arc::new(PackedA::new(view)))
        };
        Ok(Self { weight, bias: f32_values(bias)?, kernel: (ci, kh, kw), params })
    }

    /// Applies the convolution to `x` `[N, Ci, H, W]` (any float dtype; computed from f32),
    /// giving f32. The caller has checked the shapes ([`crate::conv2d`]'s checks).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        apply1(&f32_contiguous(x)?, self)
    }

    /// The direct kernel, where the layer is packed for it (else `None`).
    fn direct(&self) -> Option<&DirectConv> {
        match &self.weight {
            ConvWeight::Direct(conv) => Some(conv),
            ConvWeight::Im2col(_) => None,
        }
    }

    /// `forward(x) + residual` with the add in the direct kernel's stores; `None` where the layer
    /// is packed for im2col. The caller has checked the shapes (`residual` is the output's).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Option<Tensor>> {
        let Some(conv) = self.direct() else { return Ok(None) };
        let (n, _, h, w) = x.dims4()?;
        let call =
            DirectCall { conv, bias: self.bias.as_deref(), dims: (n, h, w), tokens_in: false, tokens_out: false };
        apply2(&f32_contiguous(x)?, &f32_contiguous(residual)?, &call).map(Some)
    }

    /// A 1×1 convolution of the map `x` `[N, Ci, H, W]` written as tokens `[N, H·W, Co]`
    /// (`proj_in`), or of tokens `[N, H·W, Ci]` laid out as `residual`'s `H × W` map written as
    /// that map plus `residual` (`proj_out`); `None` where the direct kernel does not run it.
    /// The caller has checked the shapes.
    pub fn forward_tokens(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Option<Tensor>> {
        let Some(conv) = self.direct().filter(|_| self.kernel.1 == 1) else { return Ok(None) };
        let bias = self.bias.as_deref();
        match residual {
            None => {
                let (n, _, h, w) = x.dims4()?;
                let call = DirectCall { conv, bias, dims: (n, h, w), tokens_in: false, tokens_out: true };
                apply1(&f32_contiguous(x)?, &call).map(Some)
            }
            Some(residual) => {
                let (n, _, h, w) = residual.dims4()?;
                let call = DirectCall { conv, bias, dims: (n, h, w), tokens_in: true, tokens_out: false };
                apply2(&f32_contiguous(x)?, &f32_contiguous(residual)?, &call).map(Some)
            }
        }
    }
}

/// `x` as contiguous f32 (the layers compute from f32 whatever the activations' dtype).
fn f32_contiguous(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?.contiguous()
}

/// One call of the direct kernel: `n` samples of `h × w` pixels, read from a map or tokens and
/// written as a map (plus the op's second input as residual, if any) or tokens.
struct DirectCall<'a> {
    conv: &'a DirectConv,
    bias: Option<&'a [f32]>,
    dims: (usize, usize, usize),
    tokens_in: bool,
    tokens_out: bool,
}

impl DirectCall<'_> {
    fn run(&self, x: &[f32], residual: Option<&[f32]>) -> (Vec<f32>, Shape) {
        let (n, h, w) = self.dims;
        let co = self.conv.out_channels();
        let source = if self.tokens_in { Source::Tokens(x) } else { Source::Map(x) };
        let (target, shape) = if self.tokens_out {
            (Target::Tokens, Shape::from((n, h * w, co)))
        } else {
            (Target::Map { residual }, Shape::from((n, co, h, w)))
        };
        (self.conv.run(source, self.dims, self.bias, target), shape)
    }
}

impl F32Op1 for DirectCall<'_> {
    const NAME: &'static str = CONV;

    fn run(&self, (x, _): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        Ok(DirectCall::run(self, x, None))
    }
}

impl F32Op2 for DirectCall<'_> {
    const NAME: &'static str = CONV;

    fn run(&self, (x, _): Input<'_>, (residual, _): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        Ok(DirectCall::run(self, x, Some(residual)))
    }
}

impl F32Op1 for Conv2dBf16 {
    const NAME: &'static str = CONV;

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, ci, h, wd) = layout.shape().dims4()?;
        let (_, kh, kw) = self.kernel;
        let weight = match &self.weight {
            ConvWeight::Im2col(weight) => weight,
            ConvWeight::Direct(conv) => {
                let call = DirectCall {
                    conv,
                    bias: self.bias.as_deref(),
                    dims: (n, h, wd),
                    tokens_in: false,
                    tokens_out: false,
                };
                return Ok(DirectCall::run(&call, x, None));
            }
        };
        let co = weight.rows();
        let depth = ci * kh * kw;
        // The columns are packed for the GEMM straight from the input, segment by segment,
        // without the f32 im2col matrix in between (one pass over the columns instead of three).
        let (out, shape) = im2col_conv(
            x,
            (n, ci, h, wd),
            (co, kh, kw),
            self.params,
            self.bias.as_deref(),
            false,
            |tile, _, plane_out, dst| {
                let columns = PackedB::from_rows(depth, tile.pixels, tile);
                gemm_bf16::gemm(weight, &columns, dst, plane_out, 1.0, true, true);
                Ok(())
            },
        )?;
        Ok((out, shape))
    }
}
