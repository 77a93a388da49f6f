//! 3×3 (padding 1) and 1×1 stride-1 convolutions on AMX that read their input in place instead of
//! through im2col: the f32 input is copied once into a zero-padded channels-last bf16 image, in
//! which the 16 rows of an `A` tile (16 output pixels at one kernel tap, 32 input channels) are
//! 16 consecutive pixels, one image row of bytes apart — so a tile loads straight from the image
//! with that stride. The im2col path packs nine shifted copies of the input per call and streams
//! them from memory; this one reads a few image rows per block from L2.
//!
//! The weight is packed once as the right operand `[(ky, kx, ci), co]`; the kernel's blocks are
//! 32 pixels × 32 output channels. The input is an NCHW map or `[N, H·W, C]` tokens (a spatial
//! transformer's `proj_out`), the output an NCHW map (blocks transposed as they are stored, with
//! the bias and optionally a residual added) or tokens (`proj_in`), so the permutes around a 1×1
//! projection and the residual's add are not separate passes. Products and sums are those of
//! [`crate::gemm_bf16`] (bf16 operands, f32 accumulation), in another order.

use half::bf16;
use rayon::prelude::*;

use crate::conv2d::Conv2dParams;
use crate::gemm_bf16::{self, Block32, Element, Lines, MatRef, PackedB};
use crate::op::uninit;

/// Input channels per step (one 64-byte tile row of bf16).
const CHANNELS: usize = 32;
/// Pixel pairs (two segments: the kernel's 32 rows) per parallel task at most, and output
/// channel panels (of 32) per task at most: a task's weight panel stays in L2 across its pixels,
/// its image rows across its panels. 10 × 16 against 5 × 8: SD1.5's 3×3 convolutions 5–15 %
/// faster (`examples/conv_bf16.rs`, three alternating runs); 20 pairs left 16² maps too few tasks.
const TASK_PAIRS: usize = 10;
const TASK_PANELS: usize = 16;

/// A convolution's weight packed for the direct kernel: `k × k` (3 with padding 1, or 1),
/// stride 1.
#[derive(Debug, Clone)]
pub(crate) struct DirectConv {
    /// `[(ky·k + kx)·Ci + c, co]`.
    weight: PackedB,
    ci: usize,
    k: usize,
}

/// Where [`DirectConv::run`] reads: `[N, Ci, H, W]` or `[N, H·W, Ci]`, contiguous f32.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Map(&'a [f32]),
    Tokens(&'a [f32]),
}

/// What [`DirectConv::run`] writes: `[N, Co, H, W]` plus the bias and an optional residual of that
/// shape, or `[N, H·W, Co]` plus the bias.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Map { residual: Option<&'a [f32]> },
    Tokens,
}

/// One run of consecutive output pixels among a segment's 16 lanes.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// First lane and number of lanes.
    lane: usize,
    len: usize,
    /// The first lane's sample and pixel `y·W + x`.
    sample: usize,
    pixel: usize,
}

/// 16 consecutive pixels of the padded output grid: the image pixel of lane 0's top-left tap,
/// and which lanes are output pixels.
#[derive(Debug, Clone)]
struct Segment {
    base: usize,
    runs: std::ops::Range<usize>,
}

impl DirectConv {
    /// Whether a convolution (with a bf16 weight) takes the direct kernel: AMX available (and
    /// not `KAIROS_CONV_DIRECT=off`), stride 1 with a 3×3 kernel and padding 1 or a 1×1 kernel
    /// and none, input channels in whole tile rows.
    pub fn applies(ci: usize, (kh, kw): (usize, usize), params: Conv2dParams) -> bool {
        let shape = matches!(((kh, kw), params.padding, params.stride), ((3, 3), 1, 1) | ((1, 1), 0, 1));
        shape
            && ci.is_multiple_of(CHANNELS)
            && gemm_bf16::amx_enabled()
            && std::env::var("KAIROS_CONV_DIRECT").map_or(true, |v| v != "off")
    }

    /// Packs the `[Co, Ci, k, k]` weight `values` (`k` 3 or 1).
    pub fn new(values: &[bf16], co: usize, ci: usize, k: usize) -> Self {
        let taps = k * k;
        assert_eq!(values.len(), co * ci * taps, "direct conv: weight size");
        // [co][ci][tap] → [co][tap][ci]: a step's 32 channels at one tap are consecutive depth.
        let mut w = vec![bf16::ZERO; values.len()];
        for (dst, src) in w.chunks_exact_mut(taps * ci).zip(values.chunks_exact(taps * ci)) {
            for (c, src) in src.chunks_exact(taps).enumerate() {
                for (t, &v) in src.iter().enumerate() {
                    dst[t * ci + c] = v;
                }
            }
        }
        let view = MatRef::row_major(&w, co, taps * ci).expect("sized above");
        Self { weight: PackedB::new(view.t()), ci, k }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.cols()
    }

    /// The convolution of `input` (`n` samples of `h × w` pixels) plus `bias`, as `target` says.
    pub fn run(
        &self,
        input: Source<'_>,
        (n, h, w): (usize, usize, usize),
        bias: Option<&[f32]>,
        target: Target<'_>,
    ) -> Vec<f32> {
        let (ci, co, k) = (self.ci, self.out_channels(), self.k);
        let pad = k / 2;
        let grid = Grid { n, h, w, wp: w + 2 * pad, plane: (h + 2 * pad) * (w + 2 * pad) };
        let image = padded_image(input, ci, &grid, pad);
        let (segments, runs) = grid.segments();
        let pairs = segments.len().div_ceil(2);
        let panels = co.div_ceil(32);
        // Even splits: 10 panels as 5 + 5, not 8 + 2.
        let task_pairs = pairs.div_ceil(pairs.div_ceil(TASK_PAIRS)).max(1);
        let row_tasks = pairs.div_ceil(task_pairs);
        // Small maps (SD1.5's 8² at 512²: 7 pairs) split their channels further, so that every
        // thread has a few tasks.
        let min_tasks = 4 * rayon::current_num_threads();
        let col_tasks = panels.div_ceil(TASK_PANELS).max(min_tasks.div_ceil(row_tasks)).min(panels);
        let task_panels = panels.div_ceil(col_tasks).max(1);
        let col_tasks = panels.div_ceil(task_panels);
        let out_shape = OutShape { co, plane: h * w, bias, target };
        // SAFETY: every output element is written once below: each pixel lies in one run of one
        // segment, each channel in one panel.
        let mut out = unsafe { uninit(n * co * h * w) };
        let out_ptr = crate::attention::OutPtr(out.as_mut_ptr());
        let a_stride = ci * 2;
        // The kernel's steps, the same for every block: listed once, so that each step is a
        // load from this list rather than the nested iterators' bookkeeping.
        let steps: Vec<(usize, usize)> = (0..k)
            .flat_map(move |ky| {
                (0..ci).step_by(CHANNELS).flat_map(move |c| {
                    (0..k).map(move |kx| (((ky * grid.wp + kx) * ci + c) * 2, ((ky * k + kx) * ci + c) * 64))
                })
            })
            .collect();
        let steps = || steps.iter().copied();
        (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
            let (rt, ct) = (task / col_tasks, task % col_tasks);
            let mut block = Block32([0.0; 32 * 32]);
            for panel in ct * task_panels..((ct + 1) * task_panels).min(panels) {
                for pair in rt * task_pairs..((rt + 1) * task_pairs).min(pairs) {
                    let first = &segments[2 * pair];
                    let second = segments.get(2 * pair + 1);
                    let a = [first, second.unwrap_or(first)].map(|s| image[s.base * ci / 2..].as_ptr());
                    // SAFETY: AMX is enabled (`applies`); each step's tiles read 16 pixels × 32
                    // channels of the image at most (k − 1)·(wp + 1) pixels past a segment's
                    // base, inside the image (its slack); the B offsets stay within the k²·Ci
                    // depth.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        gemm_bf16::amx_block(a, a_stride, &self.weight, panel, steps(), &mut block)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("the direct convolution runs on AMX only ({a:?}, {a_stride}, {:?})", steps().next());
                    for (g, segment) in [Some(first), second].into_iter().enumerate() {
                        let Some(segment) = segment else { continue };
                        // SAFETY: the runs' pixels of channels 32·panel.. (< co) are this task's.
                        unsafe { out_shape.store(&block, g, &runs[segment.runs.clone()], panel * 32, &out_ptr) };
                    }
                }
            }
        });
        out
    }
}

/// The output's layout and what its stores add.
struct OutShape<'a> {
    co: usize,
    /// `H·W`.
    plane: usize,
    bias: Option<&'a [f32]>,
    target: Target<'a>,
}

impl OutShape<'_> {
    /// Writes rows `16g..16g + 16` (pixels) of `block` (channels `c0..c0 + 32`) at the segment's
    /// runs, plus the bias (and residual).
    ///
    /// # Safety
    /// The runs' pixels of channels `c0..min(c0 + 32, co)` lie in the output and no one else
    /// touches them.
    unsafe fn store(&self, block: &Block32, g: usize, runs: &[Run], c0: usize, out: &crate::attention::OutPtr) {
        // SAFETY (both): AVX-512F is present (`applies`); the caller's contract.
        #[cfg(target_arch = "x86_64")]
        match self.target {
            Target::Map { residual } => unsafe { x86::store_map(self, residual, block, g, runs, c0, out.0) },
            Target::Tokens => unsafe { x86::store_tokens(self, block, g, runs, c0, out.0) },
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution runs on AMX only ({block:p}, {g}, {runs:?}, {c0}, {:p})", out.0);
    }
}

/// The padded output grid: `n` samples of `(h + 2·pad) × wp` pixels (`plane` each), output pixel
/// `(b, y, x)` at `b·plane + y·wp + x`; the padded image uses the same indices for its pixel
/// `(b, y, x)` (input pixel `(y − pad, x − pad)`), so output pixel `p` reads image pixel
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
    /// computes padding: 25 % at W = 8 with a 3×3 kernel).
    fn segments(&self) -> (Vec<Segment>, Vec<Run>) {
        let Grid { n, h, w, wp, plane } = *self;
        let (mut segments, mut runs) = (Vec::new(), Vec::new());
        if w.is_multiple_of(16) {
            for sample in 0..n {
                for y in 0..h {
                    for x0 in (0..w).step_by(16) {
                        runs.push(Run { lane: 0, len: 16, sample, pixel: y * w + x0 });
                        segments.push(Segment { base: sample * plane + y * wp + x0, runs: runs.len() - 1..runs.len() });
                    }
                }
            }
        } else {
            for p0 in (0..n * plane).step_by(16) {
                let first = runs.len();
                for lane in 0..16 {
                    let p = p0 + lane;
                    let (sample, y, x) = (p / plane, p % plane / wp, p % wp);
                    if sample >= n || y >= h || x >= w {
                        continue;
                    }
                    let pixel = y * w + x;
                    // A lane continues the segment's last run if it is the next pixel of its sample.
                    let next =
                        |run: &Run| run.lane + run.len == lane && (run.sample, run.pixel + run.len) == (sample, pixel);
                    match runs[first..].last_mut() {
                        Some(run) if next(run) => run.len += 1,
                        _ => runs.push(Run { lane, len: 1, sample, pixel }),
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

/// The zero-padded channels-last bf16 image of `input` (`pad` pixels of zeros around each
/// sample): pixel `(b, y, x)` of [`Grid`] holds its `Ci` channels as pairs, then zero slack for
/// the last segments' taps.
fn padded_image(input: Source<'_>, ci: usize, grid: &Grid, pad: usize) -> Lines {
    let Grid { n, h, w, wp, plane } = *grid;
    let row = wp * ci / 2;
    let slack = (2 * wp + 2 + 32) * ci / 2;
    let len = (n * plane * ci / 2 + slack).next_multiple_of(16);
    let mut image = Lines::default();
    // SAFETY: every row chunk below is written whole (padding as zeros), and the slack zeroed.
    unsafe { image.set_len_uninit(len) };
    let (rows, rest) = image.split_at_mut(n * plane * ci / 2);
    rest.fill(0);
    let hp = h + 2 * pad;
    rows.par_chunks_mut(row).enumerate().for_each(|(r, dst)| {
        let (b, yp) = (r / hp, r % hp);
        if yp < pad || yp >= h + pad {
            dst.fill(0);
            return;
        }
        let y = yp - pad;
        dst[..pad * ci / 2].fill(0);
        dst[(w + pad) * ci / 2..].fill(0);
        let dst = &mut dst[pad * ci / 2..(w + pad) * ci / 2];
        match input {
            Source::Map(x) => {
                let x_b = &x[b * ci * h * w..][..ci * h * w];
                // SAFETY: AVX-512F and AVX512-BF16 are present (AMX implies them; `applies`);
                // the planes hold h·w values; dst is the row's w pixels.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::pack_row(x_b, ci, h * w, y * w, w, dst)
                };
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("the direct convolution runs on AMX only ({x_b:p}, {dst:p})");
            }
            Source::Tokens(x) => f32::pairs_of(&x[(b * h * w + y * w) * ci..][..w * ci], dst),
        }
    });
    image
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{OutShape, Run, CHANNELS};
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
        // A group of 32 channel planes at a time along the row (16 pixels at a time across all
        // planes kept Ci streams in flight: the VAE's 512² convolutions 3–5 % slower).
        for c0 in (0..ci).step_by(CHANNELS) {
            for x0 in (0..w).step_by(16) {
                let count = (w - x0).min(16);
                let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
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

    /// [`super::OutShape::store`] into `[N, Co, H, W]` (`plane = H·W`): each 16 × 16 quarter of
    /// the rows transposed, then one masked store per channel and run.
    ///
    /// # Safety
    /// AVX-512F is present; the store's contract; `residual`, if any, has the output's shape.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_map(
        shape: &OutShape<'_>,
        residual: Option<&[f32]>,
        block: &Block32,
        g: usize,
        runs: &[Run],
        c0: usize,
        out: *mut f32,
    ) {
        let &OutShape { co, plane, bias, .. } = shape;
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
                    // Lane l goes to element (sample, c, pixel + l − lane): the masked lanes
                    // only, which lie in the output (the caller's contract).
                    let at = ((run.sample * co + c) * plane + run.pixel).wrapping_sub(run.lane);
                    // SAFETY: as above; the residual has the output's shape.
                    unsafe {
                        let v = match residual {
                            Some(res) => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res.as_ptr().wrapping_add(at))),
                            None => v,
                        };
                        _mm512_mask_storeu_ps(out.wrapping_add(at), mask, v);
                    }
                }
            }
        }
    }

    /// [`super::OutShape::store`] into `[N, H·W, Co]` (`plane = H·W`): each pixel's row of the
    /// block is a run of its token's channels.
    ///
    /// # Safety
    /// AVX-512F is present; the store's contract.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_tokens(
        shape: &OutShape<'_>,
        block: &Block32,
        g: usize,
        runs: &[Run],
        c0: usize,
        out: *mut f32,
    ) {
        let &OutShape { co, plane, bias, .. } = shape;
        let halves: [(usize, __mmask16, __m512); 2] = std::array::from_fn(|half| {
            let c = c0 + 16 * half;
            let mask = ((1u32 << co.saturating_sub(c).min(16)) - 1) as __mmask16;
            // SAFETY: the masked lanes are channels below co, inside the bias.
            let b = bias
                .map_or(_mm512_setzero_ps(), |b| unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(c)) });
            (c, mask, b)
        });
        for run in runs {
            for l in run.lane..run.lane + run.len {
                let token = run.sample * plane + run.pixel + l - run.lane;
                for &(c, mask, b) in &halves {
                    // SAFETY: row 16g + l of the block; the masked channels of the token lie in
                    // the output (the caller's contract).
                    unsafe {
                        let v = _mm512_add_ps(_mm512_load_ps(block.0.as_ptr().add((16 * g + l) * 32 + c - c0)), b);
                        _mm512_mask_storeu_ps(out.wrapping_add(token * co + c), mask, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::conv2d::conv2d_plain;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The direct kernel against candle's f32 convolution of the same bf16-rounded operands (the
    /// products are exact in f32, so only the order of the f32 sums differs), for each input and
    /// output layout and with a residual.
    #[test]
    fn direct_matches_plain_convolution() {
        if !gemm_bf16::amx_enabled() {
            eprintln!("no AMX here: direct convolution not tested");
            return;
        }
        let dev = Device::Cpu;
        let round = |v: Vec<f32>| v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect::<Vec<_>>();
        // Whole-row segments (W = 16, 32), padded-grid segments (W = 7, 5: runs over row and
        // sample ends, an odd segment count), a partial panel of output channels (40), 1×1.
        let cases = [(3, 2, 32, 40, 3, 16), (3, 1, 64, 32, 2, 32), (3, 2, 32, 64, 5, 7), (3, 1, 32, 32, 3, 5)];
        let pointwise = [(1, 2, 32, 40, 3, 16), (1, 2, 64, 32, 5, 7), (1, 3, 32, 32, 1, 5)];
        for (k, n, ci, co, h, w) in cases.into_iter().chain(pointwise) {
            let x = Tensor::from_vec(round(crate::uniform(1, n * ci * h * w)), (n, ci, h, w), &dev).unwrap();
            let wt = Tensor::from_vec(round(crate::uniform(2, co * ci * k * k)), (co, ci, k, k), &dev).unwrap();
            let bias = crate::uniform(3, co);
            let residual = Tensor::from_vec(crate::uniform(4, n * co * h * w), (n, co, h, w), &dev).unwrap();
            let conv = DirectConv::new(&values(&wt).iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), co, ci, k);
            let params = Conv2dParams { padding: k / 2, stride: 1 };
            let bt = Tensor::from_vec(bias.clone(), co, &dev).unwrap();
            let want = conv2d_plain(&x, &wt, Some(&bt), params).unwrap();
            let tokens = |t: &Tensor| {
                let c = t.dim(1).unwrap();
                t.permute((0, 2, 3, 1)).unwrap().reshape((n, h * w, c)).unwrap()
            };
            let (xv, rv) = (values(&x), values(&residual));
            let x_tokens = values(&tokens(&x));
            let checks = [
                (
                    "map",
                    conv.run(Source::Map(&xv), (n, h, w), Some(&bias), Target::Map { residual: None }),
                    values(&want),
                ),
                (
                    "map + residual",
                    conv.run(Source::Map(&xv), (n, h, w), Some(&bias), Target::Map { residual: Some(&rv) }),
                    values(&(&want + &residual).unwrap()),
                ),
                (
                    "tokens out",
                    conv.run(Source::Map(&xv), (n, h, w), Some(&bias), Target::Tokens),
                    values(&tokens(&want)),
                ),
                (
                    "tokens in + residual",
                    conv.run(Source::Tokens(&x_tokens), (n, h, w), Some(&bias), Target::Map { residual: Some(&rv) }),
                    values(&(&want + &residual).unwrap()),
                ),
            ];
            for (what, got, want) in checks {
                assert_eq!(got.len(), want.len());
                let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
                // Sums of k²·Ci products of magnitude ≤ 1: f32 reordering error ~1e-5.
                assert!(worst < 1e-4, "{k}×{k} n {n} ci {ci} co {co} {h}×{w} {what}: worst difference {worst}");
            }
        }
    }
}
