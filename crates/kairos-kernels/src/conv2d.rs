//! 2-D convolution (groups 1, dilation 1) as im2col in NCHW, tiled by output rows, and one GEMM
//! per tile: `out[co, pixels] = bias[co] + W[co, ci·kh·kw] · col[ci·kh·kw, pixels]`.
//!
//! The weight is used as stored (`[Co, Ci, kh, kw]` is already `[Co, Ci·kh·kw]` row-major), the
//! im2col rows are contiguous copies of input rows, and the GEMM writes straight into the NCHW
//! output; a 1×1 stride-1 convolution is a single GEMM on the input with no im2col.

use candle_core::{DType, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::gemm_bf16::RowSegments;
use crate::matmul::{self, Mat, MatMut, Threads};
use crate::op::{apply3, filled, F32Op3, Fill, Input};
use crate::scratch::Scratch;
use crate::winograd::{tile_grid, WinogradOp, WinogradTile};

const OP: &str = "kairos-conv2d";

/// Bytes of one im2col tile: bounds the extra memory (a full 512² VAE im2col would be 1.2 GB)
/// while keeping the GEMMs wide enough to run near peak.
const TILE_BYTES: usize = 16 * 1024 * 1024;

/// Padding and stride of a convolution (dilation 1, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Zero padding on each side, in both spatial dimensions.
    pub padding: usize,
    /// Stride in both spatial dimensions.
    pub stride: usize,
}

/// The CPU kernel: `x` `[N, Ci, H, W]`, `w` `[Co, Ci, kh, kw]`, `bias` `[Co]`, contiguous f32.
struct Conv2dOp {
    params: Conv2dParams,
}

impl F32Op3 for Conv2dOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (w, l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, ci, h, wd) = l1.shape().dims4()?;
        let (co, _, kh, kw) = l2.shape().dims4()?;
        let depth = ci * kh * kw;
        let (out, shape) = im2col_conv(
            x,
            (n, ci, h, wd),
            (co, kh, kw),
            self.params,
            Some(bias),
            true,
            |tile, rhs, plane_out, dst| {
                let (rhs, pixels) = (rhs.expect("materialised"), tile.pixels);
                // SAFETY: dst starts at the tile's first pixel of output channel 0 and holds the
                // tile's rows of every channel (row stride plane_out); lhs is w, Co×depth
                // row-major; rhs is depth×pixels row-major.
                unsafe {
                    let (lhs, rhs) = (Mat::rows(w, depth), Mat::rows(rhs, pixels));
                    matmul::gemm(co, pixels, depth, MatMut::rows(dst, plane_out), lhs, rhs, true, Threads::All);
                }
                Ok(())
            },
        )?;
        Ok((out, shape))
    }
}

/// The im2col walk of the convolution kernels (f32 here, bf16 in `bf16_layers`): the output
/// `[N, Co, Ho, Wo]` starts from `bias`, then for each sample and each tile of output rows the
/// `[Ci·kh·kw, rows·Wo]` column matrix of the tile ([`ColTile`]; with `materialize` also written
/// out as a row-major f32 matrix, the input itself for a 1×1 stride-1 convolution) goes to
/// `gemm(tile, matrix, plane_out, dst)`, which accumulates W · columns into `dst`: the output
/// from the tile's first pixel of channel 0 on, rows `plane_out` apart.
pub(crate) fn im2col_conv(
    x: &[f32],
    (n, ci, h, wd): (usize, usize, usize, usize),
    (co, kh, kw): (usize, usize, usize),
    params: Conv2dParams,
    bias: Option<&[f32]>,
    materialize: bool,
    mut gemm: impl FnMut(&ColTile<'_>, Option<&[f32]>, usize, &mut [f32]) -> Result<()>,
) -> Result<(Vec<f32>, Shape)> {
    let Conv2dParams { padding, stride } = params;
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let (plane_in, plane_out, depth) = (h * wd, ho * wo, ci * kh * kw);

    // Start from the bias; the GEMMs accumulate onto it.
    let mut out = filled(n * co, plane_out, |i| Fill::Value(bias.map_or(0.0, |b| b[i % co])));

    let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
    let tile_rows = if direct { ho } else { (TILE_BYTES / (4 * depth * wo)).clamp(1, ho) };
    // Every element of a tile's columns is written before the GEMM reads it.
    let mut col = Scratch::take(if direct || !materialize { 0 } else { depth * tile_rows * wo });
    for b in 0..n {
        let x_b = &x[b * ci * plane_in..(b + 1) * ci * plane_in];
        let out_b = &mut out[b * co * plane_out..(b + 1) * co * plane_out];
        for r0 in (0..ho).step_by(tile_rows) {
            let rows = tile_rows.min(ho - r0);
            let tile = ColTile { x_b, h, w: wd, kh, kw, padding, stride, r0, wo, pixels: rows * wo, direct };
            let matrix = match (materialize, direct) {
                (false, _) => None,
                (true, true) => Some(x_b),
                (true, false) => {
                    let col = &mut col[..depth * tile.pixels];
                    col.par_chunks_mut(tile.pixels).enumerate().for_each(|(k, dst)| tile.fill(k, 0, dst));
                    Some(&col[..])
                }
            };
            gemm(&tile, matrix, plane_out, &mut out_b[r0 * wo..])?;
        }
    }
    Ok((out, Shape::from((n, co, ho, wo))))
}

/// The im2col matrix `[Ci·kh·kw, pixels]` of one tile of output rows (`r0..`, `pixels / Wo` of
/// them) of one sample, read by segments instead of written out: row `k` is input channel
/// `k / (kh·kw)` at kernel offset `(k / kw % kh, k % kw)`, column `p` output pixel `(r0 + p / Wo,
/// p % Wo)`.
pub(crate) struct ColTile<'a> {
    x_b: &'a [f32],
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
    r0: usize,
    wo: usize,
    /// Columns of the matrix.
    pub pixels: usize,
    /// A 1×1 stride-1 unpadded convolution: the matrix is the input itself.
    direct: bool,
}

impl RowSegments for ColTile<'_> {
    /// Where the segment lies in one output row and reads no padding (most of a large
    /// convolution's columns), the input itself; else [`ColTile::fill`] into `buf`.
    fn segment<'a>(&'a self, k: usize, j0: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let len = buf.len();
        if self.direct {
            return &self.x_b[k * self.pixels + j0..][..len];
        }
        let (c, ky, kx) = self.tap(k);
        let (oy, ox0) = (self.r0 + j0 / self.wo, j0 % self.wo);
        let (iy, ix0) = (oy * self.stride + ky, ox0 + kx);
        let inside = self.stride == 1
            && ox0 + len <= self.wo
            && iy >= self.padding
            && iy - self.padding < self.h
            && ix0 >= self.padding
            && ix0 - self.padding + len <= self.w;
        if inside {
            let offset = (c * self.h + iy - self.padding) * self.w + ix0 - self.padding;
            return &self.x_b[offset..][..len];
        }
        self.fill(k, j0, buf);
        buf
    }
}

impl ColTile<'_> {
    /// Row `k`'s input channel and kernel offset `(c, ky, kx)`.
    fn tap(&self, k: usize) -> (usize, usize, usize) {
        let taps = self.kh * self.kw;
        (k / taps, k % taps / self.kw, k % self.kw)
    }

    /// Writes elements `(k, j0..j0 + dst.len())` of the matrix (inside it) into `dst`.
    pub fn fill(&self, k: usize, j0: usize, dst: &mut [f32]) {
        if self.direct {
            dst.copy_from_slice(&self.x_b[k * self.pixels + j0..][..dst.len()]);
            return;
        }
        let (c, ky, kx) = self.tap(k);
        let x_c = &self.x_b[c * self.h * self.w..][..self.h * self.w];
        let mut t = 0;
        while t < dst.len() {
            // The part of the segment in one output row.
            let (oy, ox0) = (self.r0 + (j0 + t) / self.wo, (j0 + t) % self.wo);
            let len = (self.wo - ox0).min(dst.len() - t);
            self.span(x_c, &mut dst[t..t + len], (ky, kx), oy, ox0);
            t += len;
        }
    }

    /// The input pixels that output row `oy`, columns `ox0..ox0 + dst.len()`, read at kernel
    /// offset `(ky, kx)`, zero where they fall in the padding.
    fn span(&self, x_c: &[f32], dst: &mut [f32], (ky, kx): (usize, usize), oy: usize, ox0: usize) {
        let (padding, stride, w) = (self.padding, self.stride, self.w);
        // Input row iy = oy·stride + ky - padding, checked against [0, h).
        let iy = oy * stride + ky;
        if iy < padding || iy - padding >= self.h {
            dst.fill(0.0);
            return;
        }
        let src = &x_c[(iy - padding) * w..(iy - padding + 1) * w];
        if stride == 1 {
            // Output columns whose input column ox + kx - padding lies inside [0, w).
            let len = dst.len();
            let lo = padding.saturating_sub(kx).saturating_sub(ox0).min(len);
            let hi = (w + padding).saturating_sub(kx).saturating_sub(ox0).clamp(lo, len);
            dst[..lo].fill(0.0);
            dst[lo..hi].copy_from_slice(&src[ox0 + lo + kx - padding..ox0 + hi + kx - padding]);
            dst[hi..].fill(0.0);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                let ix = (ox0 + i) * stride + kx;
                *d = if ix < padding || ix - padding >= w { 0.0 } else { src[ix - padding] };
            }
        }
    }
}

/// The straightforward candle computation: `Tensor::conv2d` plus the broadcast bias.
pub fn conv2d_plain(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
    let ys = xs.conv2d(weight, params.padding, params.stride, 1, 1)?;
    match bias {
        Some(bias) => ys.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(ys),
    }
}

/// Convolution of `xs` `[N, Ci, H, W]` with `weight` `[Co, Ci, kh, kw]` and an optional `bias`
/// `[Co]` (one group, dilation 1). f32 CPU tensors take the im2col+GEMM kernel, or for 3×3
/// stride-1 pad-1 convolutions large enough to gain from it the Winograd kernel
/// ([`conv2d_winograd`], chosen by `KAIROS_WINOGRAD`); anything else takes [`conv2d_plain`].
pub fn conv2d(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
    check_shapes(xs, weight, params)?;
    let (_, ci, h, w) = xs.dims4()?;
    let (co, _, kh, kw) = weight.dims4()?;
    if !crate::kernel_applies([xs, weight].into_iter().chain(bias)) {
        return conv2d_plain(xs, weight, bias, params);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(co, DType::F32, xs.device())?,
    };
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    if (kh, kw) == (3, 3) && params == (Conv2dParams { padding: 1, stride: 1 }) {
        let (n, ..) = xs.dims4()?;
        if let Some(tile) = winograd_tile(winograd_mode()?, n, ci, co, h, w) {
            return apply3(&xs, &weight, &bias, WinogradOp { tile });
        }
    }
    apply3(&xs, &weight, &bias, Conv2dOp { params })
}

/// The input and weight fit together: `xs` `[N, Ci, H, W]`, `weight` `[Co, Ci, kh, kw]` with a
/// kernel no larger than the padded input, stride ≥ 1.
pub(crate) fn check_shapes(xs: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<()> {
    let (_, ci, h, w) = xs.dims4()?;
    let (_, wci, kh, kw) = weight.dims4()?;
    if wci != ci || params.stride == 0 || h + 2 * params.padding < kh || w + 2 * params.padding < kw {
        return Err(KernelError::BadShape {
            op: OP,
            name: "weight",
            expected: format!(
                "[Co, {ci}, kh, kw] with a kernel no larger than the padded input {h}x{w} (+{} each side) and stride ≥ 1",
                params.padding
            ),
            got: weight.dims().to_vec(),
        }
        .into());
    }
    Ok(())
}

/// What `KAIROS_WINOGRAD` asks for 3×3 stride-1 pad-1 convolutions (read once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WinogradMode {
    /// `f4` or unset: F(4,3) where the tiles are many, F(2,3) where they are fewer, im2col below.
    F4,
    /// `f2`: F(2,3) only (the direct convolution's accuracy), im2col where it does not pay.
    F2,
    /// `off`: im2col only.
    Off,
}

fn winograd_mode() -> Result<WinogradMode> {
    const VAR: &str = "KAIROS_WINOGRAD";
    static MODE: std::sync::OnceLock<std::result::Result<WinogradMode, String>> = std::sync::OnceLock::new();
    let mode = MODE.get_or_init(|| match std::env::var(VAR) {
        Err(_) => Ok(WinogradMode::F4),
        Ok(v) => match v.as_str() {
            "f4" => Ok(WinogradMode::F4),
            "f2" => Ok(WinogradMode::F2),
            "off" => Ok(WinogradMode::Off),
            _ => Err(v),
        },
    });
    mode.clone().map_err(|value| KernelError::BadEnv { var: VAR, value, accepted: "f4, f2, off" }.into())
}

/// The Winograd tile that beats im2col for this convolution under `mode`, if any. The weights are
/// transformed on every call, which the GEMMs amortise over the tiles: measured (CPU time) on SD
/// shapes on 2 AVX-512 cores, F(4,3) gains from about 64 tiles (1.25× at 64, 1.8× at 128, 2.1×
/// at 512) and F(2,3) from about 128 (1.2–1.6×); with fewer tiles both lose to im2col.
fn winograd_tile(mode: WinogradMode, n: usize, ci: usize, co: usize, h: usize, w: usize) -> Option<WinogradTile> {
    const MIN_TILES: usize = 64;
    const MIN_TILES_F2: usize = 128;
    const MIN_CHANNELS: usize = 16;
    if ci < MIN_CHANNELS || co < MIN_CHANNELS {
        return None;
    }
    let tiles = |m: usize| {
        let (th, tw) = tile_grid(h, w, m);
        n * th * tw
    };
    match mode {
        WinogradMode::F4 if tiles(4) >= MIN_TILES => Some(WinogradTile::F4),
        WinogradMode::F4 | WinogradMode::F2 if tiles(2) >= MIN_TILES_F2 => Some(WinogradTile::F2),
        _ => None,
    }
}

/// Winograd convolution of `xs` `[N, Ci, H, W]` with a 3×3 `weight` `[Co, Ci, 3, 3]`, padding 1,
/// stride 1, and an optional `bias` `[Co]`, whatever the sizes (unlike [`conv2d`], which picks it
/// only where it is faster). f32 CPU tensors take the kernel; anything else takes [`conv2d_plain`].
pub fn conv2d_winograd(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, tile: WinogradTile) -> Result<Tensor> {
    let params = Conv2dParams { padding: 1, stride: 1 };
    let (_, ci, _, _) = xs.dims4()?;
    let (co, wci, kh, kw) = weight.dims4()?;
    if (wci, kh, kw) != (ci, 3, 3) {
        return Err(KernelError::BadShape {
            op: "kairos-conv2d-winograd",
            name: "weight",
            expected: format!("[Co, {ci}, 3, 3]"),
            got: weight.dims().to_vec(),
        }
        .into());
    }
    if ![xs, weight].into_iter().chain(bias).all(crate::f32_cpu) {
        return conv2d_plain(xs, weight, bias, params);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(co, DType::F32, xs.device())?,
    };
    apply3(&xs.contiguous()?, &weight.contiguous()?, &bias, WinogradOp { tile })
}
