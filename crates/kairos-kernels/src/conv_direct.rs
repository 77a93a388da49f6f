//! 3×3 stride-1 pad-1 convolutions on AMX that read their input in place instead of through
//! im2col: the NCHW f32 input is copied once into a zero-padded channels-last bf16 image, in
//! which the 16 rows of an `A` tile (16 output pixels at one kernel tap, 32 input channels) are
//! 16 consecutive pixels, one image row of bytes apart — so a tile loads straight from the image
//! with that stride. The im2col path packs nine shifted copies of the input per call and streams
//! them from memory; this one reads a few image rows per block from L2.
//!
//! The weight is packed once as the right operand `[(ky, kx, ci), co]`; the kernel's blocks are
//! 32 pixels × 32 output channels, transposed into the NCHW output with the bias. Products and
//! sums are those of [`crate::gemm_bf16`] (bf16 operands, f32 accumulation), in another order.

use half::bf16;
use rayon::prelude::*;

use crate::conv2d::Conv2dParams;
use crate::gemm_bf16::{self, Block32, Lines, MatRef, PackedB};
use crate::op::uninit;

/// Input channels per step (one 64-byte tile row of bf16).
const CHANNELS: usize = 32;
/// Pixel pairs (two segments: the kernel's 32 rows) per parallel task at most, and output
/// channel panels (of 32) per task at most: a task's weight panel stays in L2 across its pixels.
const TASK_PAIRS: usize = 5;
const TASK_PANELS: usize = 8;

/// A 3×3 stride-1 pad-1 convolution's weight packed for the direct kernel.
#[derive(Debug, Clone)]
pub(crate) struct DirectConv {
    /// `[(ky·3 + kx)·Ci + c, co]`.
    weight: PackedB,
    ci: usize,
}

/// One run of consecutive output pixels among a segment's 16 lanes.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// First lane and number of lanes.
    lane: usize,
    len: usize,
    /// Output index of the first lane's pixel in channel 0: `b·Co·H·W + y·W + x`.
    out: usize,
}

/// 16 consecutive pixels of the padded output grid: the image pixel of lane 0's top-left tap,
/// and which lanes are output pixels.
#[derive(Debug, Clone)]
struct Segment {
    base: usize,
    runs: std::ops::Range<usize>,
}

impl DirectConv {
    /// Whether a convolution (with a bf16 weight) takes the direct kernel: AMX available, a 3×3
    /// kernel with stride 1 and padding 1, input channels in whole tile rows.
    pub fn applies(ci: usize, (kh, kw): (usize, usize), params: Conv2dParams) -> bool {
        gemm_bf16::amx_enabled()
            && std::env::var("KAIROS_CONV_DIRECT").map_or(true, |v| v != "off")
            && (kh, kw) == (3, 3)
            && params == Conv2dParams { padding: 1, stride: 1 }
            && ci.is_multiple_of(CHANNELS)
    }

    /// Packs the `[Co, Ci, 3, 3]` weight `values`.
    pub fn new(values: &[bf16], co: usize, ci: usize) -> Self {
        assert_eq!(values.len(), co * ci * 9, "direct conv: weight size");
        // [co][ci][tap] → [co][tap][ci]: a step's 32 channels at one tap are consecutive depth.
        let mut w = vec![bf16::ZERO; values.len()];
        for (dst, src) in w.chunks_exact_mut(9 * ci).zip(values.chunks_exact(9 * ci)) {
            for (c, taps) in src.chunks_exact(9).enumerate() {
                for (t, &v) in taps.iter().enumerate() {
                    dst[t * ci + c] = v;
                }
            }
        }
        let view = MatRef::row_major(&w, co, 9 * ci).expect("sized above");
        Self { weight: PackedB::new(view.t()), ci }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.cols()
    }

    /// The convolution of `x` `[N, Ci, H, W]` (contiguous f32) plus `bias`: `[N, Co, H, W]`.
    pub fn run(&self, x: &[f32], (n, h, w): (usize, usize, usize), bias: Option<&[f32]>) -> Vec<f32> {
        let (ci, co) = (self.ci, self.out_channels());
        let grid = Grid { n, h, w, wp: w + 2, plane: (h + 2) * (w + 2) };
        let image = padded_image(x, ci, &grid);
        let (segments, runs) = grid.segments(co);
        let pairs = segments.len().div_ceil(2);
        let panels = co.div_ceil(32);
        // Even splits: 10 panels as 5 + 5, not 8 + 2.
        let task_pairs = pairs.div_ceil(pairs.div_ceil(TASK_PAIRS)).max(1);
        let task_panels = panels.div_ceil(panels.div_ceil(TASK_PANELS)).max(1);
        let (row_tasks, col_tasks) = (pairs.div_ceil(task_pairs), panels.div_ceil(task_panels));
        let plane = h * w;
        // SAFETY: every output element is written once below: each pixel lies in one run of one
        // segment, each channel in one panel.
        let mut out = unsafe { uninit(n * co * plane) };
        let out_ptr = crate::attention::OutPtr(out.as_mut_ptr());
        let a_stride = ci * 2;
        let steps = move || {
            (0..3).flat_map(move |ky| {
                (0..ci).step_by(CHANNELS).flat_map(move |c| {
                    (0..3).map(move |kx| (((ky * grid.wp + kx) * ci + c) * 2, ((ky * 3 + kx) * ci + c) * 64))
                })
            })
        };
        (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
            let (rt, ct) = (task / col_tasks, task % col_tasks);
            let mut block = Block32([0.0; 32 * 32]);
            for panel in ct * task_panels..((ct + 1) * task_panels).min(panels) {
                for pair in rt * task_pairs..((rt + 1) * task_pairs).min(pairs) {
                    let first = &segments[2 * pair];
                    let second = segments.get(2 * pair + 1);
                    let a = [first, second.unwrap_or(first)].map(|s| image[s.base * ci / 2..].as_ptr());
                    // SAFETY: AMX is enabled (`applies`); each step's tiles read 16 pixels × 32
                    // channels of the image at most 2·wp + 2 pixels past a segment's base, inside
                    // the image (its slack); the B offsets stay within the 9·Ci depth.
                    unsafe { gemm_bf16::amx_block(a, a_stride, &self.weight, panel, steps(), &mut block) };
                    for (g, segment) in [Some(first), second].into_iter().enumerate() {
                        let Some(segment) = segment else { continue };
                        // SAFETY: the runs' pixels of channels 32·panel.. (< co) are this task's.
                        unsafe { store(&block, g, &runs[segment.runs.clone()], panel * 32, co, plane, bias, &out_ptr) };
                    }
                }
            }
        });
        out
    }
}

/// The padded output grid: `n` samples of `(h + 2) × wp` pixels (`plane` each), output pixel
/// `(b, y, x)` at `b·plane + y·wp + x`; the padded image uses the same indices for its pixel
/// `(b, y, x)` (input pixel `(y − 1, x − 1)`), so output pixel `p` reads image pixel
/// `p + ky·wp + kx` at tap `(ky, kx)`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
    wp: usize,
    plane: usize,
}

impl Grid {
    /// The segments covering every output pixel once, and their runs. Where rows are whole
    /// segments (`W` a multiple of 16) each segment is 16 pixels of one row; otherwise segments
    /// step along the padded grid and skip its padding columns in the runs (some of each tile
    /// computes padding: 25 % at W = 8).
    fn segments(&self, co: usize) -> (Vec<Segment>, Vec<Run>) {
        let Grid { n, h, w, wp, plane } = *self;
        let (mut segments, mut runs) = (Vec::new(), Vec::new());
        let out_index = |b: usize, y: usize, x: usize| b * co * h * w + y * w + x;
        if w.is_multiple_of(16) {
            for b in 0..n {
                for y in 0..h {
                    for x0 in (0..w).step_by(16) {
                        runs.push(Run { lane: 0, len: 16, out: out_index(b, y, x0) });
                        segments.push(Segment { base: b * plane + y * wp + x0, runs: runs.len() - 1..runs.len() });
                    }
                }
            }
        } else {
            for p0 in (0..n * plane).step_by(16) {
                let first = runs.len();
                let mut open = false;
                for lane in 0..16 {
                    let p = p0 + lane;
                    let (b, y, x) = (p / plane, p % plane / wp, p % wp);
                    if b < n && y < h && x < w {
                        match runs.last_mut() {
                            Some(run) if open => run.len += 1,
                            _ => runs.push(Run { lane, len: 1, out: out_index(b, y, x) }),
                        }
                        open = true;
                    } else {
                        open = false;
                    }
                }
                if runs.len() > first {
                    segments.push(Segment { base: p0, runs: first..runs.len() });
                }
            }
        }
        (segments, runs)
    }
}

/// The zero-padded channels-last bf16 image of `x` `[N, Ci, H, W]`: pixel `(b, y, x)` of
/// [`Grid`] holds its `Ci` channels as pairs, then zero slack for the last segments' taps.
fn padded_image(x: &[f32], ci: usize, grid: &Grid) -> Lines {
    let Grid { n, h, w, wp, plane } = *grid;
    let row = wp * ci / 2;
    let slack = (2 * wp + 2 + 32) * ci / 2;
    let len = (n * plane * ci / 2 + slack).next_multiple_of(16);
    let mut image = Lines::default();
    // SAFETY: every row chunk below is written whole (padding as zeros), and the slack zeroed.
    unsafe { image.set_len_uninit(len) };
    let (rows, rest) = image.split_at_mut(n * plane * ci / 2);
    rest.fill(0);
    rows.par_chunks_mut(row).enumerate().for_each(|(r, dst)| {
        let (b, yp) = (r / (h + 2), r % (h + 2));
        if yp == 0 || yp == h + 1 {
            dst.fill(0);
            return;
        }
        let x_b = &x[b * ci * h * w..][..ci * h * w];
        dst[..ci / 2].fill(0);
        dst[(w + 1) * ci / 2..].fill(0);
        // SAFETY: AVX-512F and AVX512-BF16 are present (AMX implies them; `applies`); the
        // planes hold h·w values; dst is one padded row.
        unsafe { x86::pack_row(x_b, ci, h * w, (yp - 1) * w, w, &mut dst[ci / 2..(w + 1) * ci / 2]) };
    });
    image
}

/// Writes rows `16g..16g + 16` (pixels) of `block` (channels `c0..c0 + 32`) into the NCHW
/// output at the segment's runs, plus the bias.
///
/// # Safety
/// The runs' pixels of channels `c0..min(c0 + 32, co)` lie in the output and no one else
/// touches them.
#[allow(clippy::too_many_arguments)]
unsafe fn store(
    block: &Block32,
    g: usize,
    runs: &[Run],
    c0: usize,
    co: usize,
    plane: usize,
    bias: Option<&[f32]>,
    out: &crate::attention::OutPtr,
) {
    // SAFETY: AVX-512F is present (`applies`); the caller's contract.
    unsafe { x86::store(block, g, runs, c0, co, plane, bias, out.0) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Run, CHANNELS};
    use crate::gemm_bf16::Block32;

    /// Transposes 16 vectors of 16 as a 16×16 matrix (row `i` becomes column `i`).
    #[inline(always)]
    unsafe fn transpose(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // s[4i + c], 128-bit lane L: column 4L + c, rows 4i..4i + 4.
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        let mut s = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            s[4 * i] = ps(_mm512_unpacklo_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
            s[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
            s[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
            s[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
        }
        // Column 4L + c gathers lane L of s[c], s[4 + c], s[8 + c], s[12 + c].
        for c in 0..4 {
            let u = _mm512_shuffle_f32x4::<0x88>(s[c], s[4 + c]);
            let v = _mm512_shuffle_f32x4::<0xdd>(s[c], s[4 + c]);
            let u2 = _mm512_shuffle_f32x4::<0x88>(s[8 + c], s[12 + c]);
            let v2 = _mm512_shuffle_f32x4::<0xdd>(s[8 + c], s[12 + c]);
            r[c] = _mm512_shuffle_f32x4::<0x88>(u, u2);
            r[4 + c] = _mm512_shuffle_f32x4::<0x88>(v, v2);
            r[8 + c] = _mm512_shuffle_f32x4::<0xdd>(u, u2);
            r[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v, v2);
        }
    }

    /// One input row, `w` pixels from `offset` in each of the `ci` planes of `x_b` (`plane`
    /// apart), into `dst` as channels-last bf16 pairs (`ci / 2` per pixel).
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 are present; `ci` is a multiple of 32; the row lies in every
    /// plane; `dst` holds `w·ci / 2` pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_row(x_b: &[f32], ci: usize, plane: usize, offset: usize, w: usize, dst: &mut [u32]) {
        assert!(ci.is_multiple_of(CHANNELS) && dst.len() == w * ci / 2 && x_b.len() >= ci * plane);
        assert!(ci == 0 || offset + w <= plane);
        for x0 in (0..w).step_by(16) {
            let count = (w - x0).min(16);
            let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
            for c0 in (0..ci).step_by(CHANNELS) {
                let (mut lo, mut hi) = ([_mm512_setzero_ps(); 16], [_mm512_setzero_ps(); 16]);
                for i in 0..16 {
                    // SAFETY: channels c0 + i and c0 + 16 + i < ci; pixels offset + x0.. within
                    // the plane (masked to count).
                    unsafe {
                        lo[i] = _mm512_maskz_loadu_ps(mask, x_b.as_ptr().add((c0 + i) * plane + offset + x0));
                        hi[i] = _mm512_maskz_loadu_ps(mask, x_b.as_ptr().add((c0 + 16 + i) * plane + offset + x0));
                    }
                }
                // SAFETY: AVX-512F is enabled for this function.
                unsafe {
                    transpose(&mut lo);
                    transpose(&mut hi);
                }
                for p in 0..count {
                    // Channels c0..c0 + 16 in the low half, as pairs (2q, 2q + 1).
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi[p], lo[p]));
                    // SAFETY: pixel x0 + p < w, channels c0..c0 + 32 ≤ ci: inside dst.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add((x0 + p) * ci / 2 + c0 / 2).cast(), v) };
                }
            }
        }
    }

    /// [`super::store`].
    ///
    /// # Safety
    /// AVX-512F is present; [`super::store`]'s contract.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn store(
        block: &Block32,
        g: usize,
        runs: &[Run],
        c0: usize,
        co: usize,
        plane: usize,
        bias: Option<&[f32]>,
        out: *mut f32,
    ) {
        for half in 0..2 {
            let first = c0 + 16 * half;
            if first >= co {
                break;
            }
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: row 16g + i, columns 16·half.. of the 32×32 block.
                *v = unsafe { _mm512_load_ps(block.0.as_ptr().add((16 * g + i) * 32 + 16 * half)) };
            }
            // SAFETY: AVX-512F is enabled for this function.
            unsafe { transpose(&mut r) };
            for (j, v) in r.iter().enumerate().take(co - first) {
                let c = first + j;
                let v = _mm512_add_ps(*v, _mm512_set1_ps(bias.map_or(0.0, |b| b[c])));
                for run in runs {
                    let mask = (((1u32 << run.len) - 1) << run.lane) as __mmask16;
                    // Lane l goes to run.out + (l − run.lane): the masked lanes only, which are
                    // inside the output (the caller's contract).
                    let dst = out.wrapping_add(run.out + c * plane).wrapping_sub(run.lane);
                    // SAFETY: as above.
                    unsafe { _mm512_mask_storeu_ps(dst, mask, v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::conv2d::conv2d_plain;

    /// The direct kernel against candle's f32 convolution of the same bf16-rounded operands:
    /// the products are exact in f32, so only the order of the f32 sums differs.
    #[test]
    fn direct_matches_plain_convolution() {
        if !gemm_bf16::amx_enabled() {
            eprintln!("no AMX here: direct convolution not tested");
            return;
        }
        let round = |v: Vec<f32>| v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect::<Vec<_>>();
        // Whole-row segments (W = 16, 32), padded-grid segments (W = 7, 5: runs over row and
        // sample ends, an odd segment count), a partial panel of output channels (40).
        for (n, ci, co, h, w) in [(2, 32, 40, 3, 16), (1, 64, 32, 2, 32), (2, 32, 64, 5, 7), (1, 32, 32, 3, 5)] {
            let x = round(crate::uniform(1, n * ci * h * w));
            let wv = round(crate::uniform(2, co * ci * 9));
            let bias = crate::uniform(3, co);
            let conv = DirectConv::new(&wv.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), co, ci);
            let got = conv.run(&x, (n, h, w), Some(&bias));
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x, (n, ci, h, w), &dev).unwrap();
            let wt = Tensor::from_vec(wv, (co, ci, 3, 3), &dev).unwrap();
            let bt = Tensor::from_vec(bias, co, &dev).unwrap();
            let want = conv2d_plain(&xt, &wt, Some(&bt), Conv2dParams { padding: 1, stride: 1 })
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            // Sums of 9·Ci products of magnitude ≤ 1: f32 reordering error ~1e-5.
            assert!(worst < 1e-4, "n {n} ci {ci} co {co} {h}×{w}: worst difference {worst}");
        }
    }
}
