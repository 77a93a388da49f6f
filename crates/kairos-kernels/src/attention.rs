//! `softmax(q·kᵀ·scale)·v` in the manner of FlashAttention (Dao et al. 2022): each job takes a
//! block of [`ROWS`] query rows of one head and walks the keys in blocks of [`KEYS`], computing the
//! block's scores (24 KiB, in L1), exponentiating them against each row's running maximum and
//! adding their product with `v` to the rows' output, which is rescaled when the maximum grows
//! (online softmax). Neither the `N·heads·L·S` scores (1 GiB for SD1.5's 4096-token
//! self-attention at batch 2) nor a block of them larger than the caches is ever written to
//! memory. `k` is packed transposed and `v` padded once per call, so both products run on
//! register-tiled micro-kernels with unit-stride vector loads.
//!
//! The heads may stay interleaved as the projections write them (`[N, L, heads·d]`): each head's
//! `d` columns are read at a row stride of `heads·d` and written back the same way, which saves
//! the four `[N, L, heads, d]` ↔ `[N, heads, L, d]` copies around every attention.

use candle_core::{DType, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::attention_bf16::AttentionBf16Op;
use crate::error::KernelError;
use crate::gemm_bf16::PairRow;
use crate::op::{apply3, uninit, F32Op3, Input};
use crate::scratch::Scratch;
use crate::vecmath::{self, multiversion};

const OP: &str = "kairos-attention";

/// Lanes of one AVX-512 register of f32: the width of the micro-kernels' columns.
const LANES: usize = 16;
/// Query rows per job: a multiple of every micro-kernel's row count (6 and 8, 6, 4).
const ROWS: usize = 48;
/// Keys per block of scores: `ROWS × KEYS` f32 is 24 KiB, which stays in L1 between the two
/// products (256 keys ran 0–10 % slower at SD1.5's shapes, within the host's noise at 4096 tokens).
const KEYS: usize = 128;
/// Score columns of one `q·kᵀ` micro-kernel call (four registers) ...
const QK_COLS: usize = 4 * LANES;
/// ... and its query rows: 24 accumulators.
const QK_ROWS: usize = 6;

/// The CPU kernel: `q` `[N, L, heads·d]`, `k` and `v` `[N, S, heads·d]`, contiguous f32.
struct AttentionOp {
    heads: usize,
    scale: f32,
    /// Query row `i` attends to keys `0..=i` only (a text encoder's causal mask; `L = S`).
    causal: bool,
    /// The job function: [`attend_rows`], or [`attend_rows_portable`] in a test.
    attend: AttendRows,
}

/// The signature of [`attend_rows`].
type AttendRows = fn(&Dims, &[f32], Rows, &[f32], &[f32], &mut [f32]);

/// A job's query rows: `m` rows from row `first` of the sequence.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    m: usize,
}

/// The output buffer, shared by the jobs, each of which writes its own rows × head columns.
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the jobs write disjoint elements (see the use below) and the buffer outlives them.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The `len` elements `offset` elements in (a method, so closures capture the `Sync` wrapper).
    ///
    /// # Safety
    /// `offset + len` must lie inside the buffer and no one else may access those elements while
    /// the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

/// Sizes of one call, shared by its jobs.
struct Dims {
    /// Keys `S` per sample.
    s: usize,
    /// Row stride `heads·d` of q, k, v and the output, and one head's width `d`.
    c: usize,
    d: usize,
    /// `d` rounded up to whole registers: the row stride of packed `v` and of a job's output.
    dp: usize,
    /// `S` rounded up to whole `q·kᵀ` micro-kernel columns: the row stride of packed `kᵀ`.
    sp: usize,
    scale: f32,
    causal: bool,
}

impl F32Op3 for AttentionOp {
    const NAME: &'static str = OP;

    fn run(&self, (q, l1): Input<'_>, (k, l2): Input<'_>, (v, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, l, c) = l1.shape().dims3()?;
        let s = l2.dims()[1];
        let heads = self.heads;
        let d = c / heads;
        if n * l * c == 0 || s == 0 {
            return Ok((vec![0f32; n * l * c], l1.shape().clone()));
        }
        // SAFETY: the jobs below write every row of every head (see `attend_rows`).
        let mut out = unsafe { uninit(n * l * c) };
        let dims = Dims {
            s,
            c,
            d,
            dp: d.div_ceil(LANES) * LANES,
            sp: s.div_ceil(QK_COLS) * QK_COLS,
            scale: self.scale,
            causal: self.causal,
        };
        // Per (sample, head): kᵀ as panels of d × QK_COLS keys (contiguous, so that the micro-kernel
        // reads no power-of-two strides) and v as S rows of dp columns, zero-padded (every
        // element is written, so the pool's leftovers never show).
        let mut kt = Scratch::take(n * heads * d * dims.sp);
        let mut vp = Scratch::take(n * heads * s * dims.dp);
        kt.par_chunks_mut(d * dims.sp).zip(vp.par_chunks_mut(s * dims.dp)).enumerate().for_each(|(bh, (kt, vp))| {
            let col = (bh / heads) * s * c + (bh % heads) * d;
            for j in 0..s {
                let (k_row, v_row) = (&k[col + j * c..][..d], &v[col + j * c..][..d]);
                let panel = &mut kt[(j / QK_COLS) * d * QK_COLS + j % QK_COLS..];
                for (p, &x) in k_row.iter().enumerate() {
                    panel[p * QK_COLS] = x;
                }
                let dst = &mut vp[j * dims.dp..][..dims.dp];
                dst[..d].copy_from_slice(v_row);
                dst[d..].fill(0.0);
            }
            for j in s..dims.sp {
                let panel = &mut kt[(j / QK_COLS) * d * QK_COLS + j % QK_COLS..];
                (0..d).for_each(|p| panel[p * QK_COLS] = 0.0);
            }
        });
        let blocks = l.div_ceil(ROWS);
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..n * heads * blocks).into_par_iter().for_each(|job| {
            let (bh, r0) = (job / blocks, job % blocks * ROWS);
            let (b, h) = (bh / heads, bh % heads);
            let m = ROWS.min(l - r0);
            let offset = (b * l + r0) * c + h * d;
            // SAFETY: rows r0..r0+m of sample b, columns h·d..h·d+d: inside out (b < N,
            // r0 + m ≤ L, h·d + d ≤ c); no other job has the same (b, h, block), and the
            // elements between this job's row pieces, which the slice also spans, are not touched
            // through it (`attend_rows` writes row i at i·c..i·c+d only).
            let out_rows = unsafe { out_ptr.slice(offset, (m - 1) * c + d) };
            let kt = &kt[bh * d * dims.sp..][..d * dims.sp];
            let vp = &vp[bh * s * dims.dp..][..s * dims.dp];
            (self.attend)(&dims, &q[offset..], Rows { first: r0, m }, kt, vp, out_rows);
        });
        Ok((out, l1.shape().clone()))
    }
}

/// Writes `p = e^(scale·(row − max(row)))` (`scale > 0`, `row` non-empty) into `dst` as bf16
/// pairs, zero past `row`, and returns the f32 sum of the unrounded `p`: the bf16 attention's
/// softmax without the division, rounded for `p·v` as it is computed (no f32 pass over the
/// probabilities between the exponentials and the packing). `row` is left unspecified.
pub(crate) fn exp_max_pairs(row: &mut [f32], scale: f32, dst: PairRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm_bf16::available() {
        // SAFETY: the CPU supports AVX512-BF16 and AVX-512F (checked just above).
        return unsafe { x86::exp_max_pairs(row, scale, dst) };
    }
    let max = vecmath::max_generic(row);
    row.iter_mut().for_each(|x| *x = vecmath::exp(scale * (*x - max)));
    dst.fill(row);
    row.iter().sum()
}

/// One job: `m ≤ ROWS` query rows (row `i` at `q[i·c..i·c+d]`) of one head against its packed
/// `kᵀ` and `v`, written to `out[i·c..i·c+d]`; with AVX-512 micro-kernels where the CPU has them.
fn attend_rows(dims: &Dims, q: &[f32], m: Rows, kt: &[f32], vp: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { x86::attend_rows(dims, q, m, kt, vp, out) };
    }
    attend_rows_portable(dims, q, m, kt, vp, out)
}

multiversion! {
    /// [`attend_rows`] with the portable micro-kernels (vectorised by the compiler for AVX2).
    fn attend_rows_portable(dims: &Dims, q: &[f32], m: Rows, kt: &[f32], vp: &[f32], out: &mut [f32]) -> ()
        = attend_rows_portable_generic;
}

#[inline(always)]
fn attend_rows_portable_generic(dims: &Dims, q: &[f32], m: Rows, kt: &[f32], vp: &[f32], out: &mut [f32]) {
    attend_rows_generic::<Portable>(dims, q, m, kt, vp, out)
}

#[inline(always)]
fn attend_rows_generic<K: MicroKernels>(dims: &Dims, q: &[f32], rows: Rows, kt: &[f32], vp: &[f32], out: &mut [f32]) {
    let &Dims { s, c, d, dp, scale, causal, .. } = dims;
    let Rows { first, m } = rows;
    // The scaled query rows, by groups of QK_ROWS rows stored transposed (d × QK_ROWS), zero
    // past m: padding rows score 0 and are never written out.
    let mut qb = vec![0f32; ROWS * d];
    for i in 0..m {
        let (group, r) = (i / QK_ROWS, i % QK_ROWS);
        for (p, &x) in q[i * c..][..d].iter().enumerate() {
            qb[(group * d + p) * QK_ROWS + r] = x * scale;
        }
    }
    let mut scores = vec![0f32; ROWS * KEYS];
    let mut acc = vec![0f32; ROWS * dp];
    let mut row_max = [f32::NEG_INFINITY; ROWS];
    let mut row_sum = [0f32; ROWS];
    let qk_rows = m.div_ceil(QK_ROWS) * QK_ROWS;
    for j0 in (0..s).step_by(KEYS) {
        if causal && j0 > first + m - 1 {
            // Every later key is after every row of this job.
            break;
        }
        let nc = KEYS.min(s - j0);
        // The running maxima, raised to this block's as its scores are computed.
        let mut new_max = row_max;
        for r in (0..qk_rows).step_by(QK_ROWS) {
            for jc in (0..nc).step_by(QK_COLS) {
                let (scores, cols) = (&mut scores[r * KEYS + jc..], QK_COLS.min(nc - jc));
                qk_tile::<K>(&qb[r * d..], d, &kt[(j0 + jc) * d..], scores, cols, &mut new_max[r..r + QK_ROWS]);
            }
        }
        for (i, new_max) in new_max.iter_mut().enumerate().take(m) {
            let row = &mut scores[i * KEYS..][..nc];
            // Causal: row first + i sees keys up to itself; the others weigh exactly 0.
            let seen = if causal { (first + i + 1).saturating_sub(j0).min(nc) } else { nc };
            if seen < nc {
                row[seen..].fill(0.0);
                if seen == 0 {
                    continue;
                }
                // The block's maximum over the keys seen only (qk_tile took all of them).
                *new_max = row_max[i].max(vecmath::max_generic(&row[..seen]));
            }
            let new_max = *new_max;
            // SAFETY: the caller runs on a CPU with K's instructions.
            let sum = unsafe { K::exp_sub_sum(&mut row[..seen], new_max) };
            if new_max > row_max[i] {
                // The rows' earlier terms were taken against a smaller maximum (e^-inf = 0 for
                // the first block, whose sum and output are still 0).
                let alpha = vecmath::exp(row_max[i] - new_max);
                row_sum[i] *= alpha;
                acc[i * dp..][..dp].iter_mut().for_each(|x| *x *= alpha);
                row_max[i] = new_max;
            }
            row_sum[i] += sum;
        }
        pv_block::<K>(&scores, m, nc, &vp[j0 * dp..], dp, &mut acc);
    }
    for i in 0..m {
        let inv = 1.0 / row_sum[i];
        out[i * c..][..d].iter_mut().zip(&acc[i * dp..][..d]).for_each(|(o, &x)| *o = x * inv);
    }
}

/// The register-tiled products of a job, on raw pointers (the callers below check the bounds).
trait MicroKernels {
    /// `out[r·KEYS + j] = Σₚ q[p·QK_ROWS + r] · kt[p·QK_COLS + j]` for `r < QK_ROWS`,
    /// `j < QK_COLS`, `p < d`, and `maxes[r]` raised to the maximum of row `r`'s first `cols`
    /// scores (the others are padding).
    ///
    /// # Safety
    /// The reads and writes named lie inside their buffers, and the instructions used run here.
    unsafe fn qk_tile(q: *const f32, d: usize, kt: *const f32, out: *mut f32, cols: usize, maxes: &mut [f32; QK_ROWS]);

    /// `acc[r·dp + j] += Σₖ p[r·KEYS + k] · v[k·dp + j]` for `r < R`, `j < W·LANES`, `k < nc`.
    ///
    /// # Safety
    /// As for [`MicroKernels::qk_tile`].
    unsafe fn pv_tile<const W: usize, const R: usize>(
        p: *const f32,
        nc: usize,
        v: *const f32,
        dp: usize,
        acc: *mut f32,
    );

    /// Replaces `row` by `e^(row - shift)` and returns the sum of the new values.
    ///
    /// # Safety
    /// The instructions used run here.
    unsafe fn exp_sub_sum(row: &mut [f32], shift: f32) -> f32;
}

/// Plain loops over fixed-size arrays, which the compiler vectorises.
struct Portable;

impl MicroKernels for Portable {
    #[inline(always)]
    unsafe fn exp_sub_sum(row: &mut [f32], shift: f32) -> f32 {
        vecmath::exp_sub_sum_generic(row, shift)
    }

    #[inline(always)]
    unsafe fn qk_tile(q: *const f32, d: usize, kt: *const f32, out: *mut f32, cols: usize, maxes: &mut [f32; QK_ROWS]) {
        let mut acc = [[0f32; QK_COLS]; QK_ROWS];
        for p in 0..d {
            // SAFETY: the caller's contract.
            let (k, x) = unsafe {
                (&*(kt.add(p * QK_COLS) as *const [f32; QK_COLS]), &*(q.add(p * QK_ROWS) as *const [f32; QK_ROWS]))
            };
            for (acc, &x) in acc.iter_mut().zip(x) {
                acc.iter_mut().zip(k).for_each(|(a, &y)| *a = x.mul_add(y, *a));
            }
        }
        for (r, (acc, max)) in acc.iter().zip(maxes).enumerate() {
            *max = vecmath::max_generic(&acc[..cols]).max(*max);
            // SAFETY: the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * KEYS), QK_COLS) };
        }
    }

    #[inline(always)]
    unsafe fn pv_tile<const W: usize, const R: usize>(
        p: *const f32,
        nc: usize,
        v: *const f32,
        dp: usize,
        acc: *mut f32,
    ) {
        // SAFETY (all blocks): the caller's contract.
        let mut tile: [[[f32; LANES]; W]; R] =
            std::array::from_fn(|r| unsafe { *(acc.add(r * dp) as *const [[f32; LANES]; W]) });
        for k in 0..nc {
            let row = unsafe { &*(v.add(k * dp) as *const [[f32; LANES]; W]) };
            for (r, tile) in tile.iter_mut().enumerate() {
                let x = unsafe { *p.add(r * KEYS + k) };
                for (t, y) in tile.iter_mut().zip(row) {
                    t.iter_mut().zip(y).for_each(|(a, &y)| *a = x.mul_add(y, *a));
                }
            }
        }
        for (r, tile) in tile.iter().enumerate() {
            unsafe { *(acc.add(r * dp) as *mut [[f32; LANES]; W]) = *tile };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Dims, MicroKernels, PairRow, Rows, KEYS, LANES, QK_COLS, QK_ROWS};
    use crate::vecmath;

    /// AVX-512 intrinsics: the compiler vectorised [`super::Portable`]'s products over the
    /// wrong loop for some tile shapes (gathers instead of broadcasts, 10× slower at d = 40).
    pub(super) struct Avx512;

    /// [`super::exp_max_pairs`] with [`exp2_16`] (`log2 e` folded into the scale), 32 values per
    /// `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// The CPU supports AVX512-BF16 and AVX-512F.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn exp_max_pairs(row: &mut [f32], scale: f32, mut dst: PairRow<'_>) -> f32 {
        let n = row.len();
        // SAFETY: AVX-512F (the caller's contract).
        let max = unsafe { max_row(row) };
        // SAFETY (all blocks): AVX-512F and AVX512-BF16 (the caller's contract); loads stay
        // inside `row` (masked to its length), stores inside the chunk.
        unsafe {
            // e^(scale·(x − max)) = 2^(s·x − s·max) with s = scale·log2 e, in one rounding.
            let s = scale * std::f32::consts::LOG2_E;
            let (scale, shift) = (_mm512_set1_ps(s), _mm512_set1_ps(s * max));
            let exp_at = |j: usize| -> __m512 {
                let len = n.saturating_sub(j).min(LANES);
                if len == LANES {
                    return exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(row.as_ptr().add(j)), scale, shift));
                }
                let mask = ((1u32 << len) - 1) as __mmask16;
                let y = exp2_16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, row.as_ptr().add(j.min(n))), scale, shift));
                _mm512_maskz_mov_ps(mask, y)
            };
            let mut sum = _mm512_setzero_ps();
            for (c, chunk) in dst.chunks().enumerate() {
                let (lo, hi) = (exp_at(32 * c), exp_at(32 * c + LANES));
                sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
                // Values 32c.. as pairs (2q, 2q + 1): lo's in the low half, as PackedA reads them.
                _mm512_storeu_si512(
                    chunk.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)),
                );
            }
            _mm512_reduce_add_ps(sum)
        }
    }

    /// [`vecmath::max_generic`] (NaNs ignored) with the tail through a masked load: rows of
    /// cross-attention's 77 keys spent most of their time in that function's scalar tail.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline(always)]
    unsafe fn max_row(row: &[f32]) -> f32 {
        let (n, p) = (row.len(), row.as_ptr());
        // SAFETY (all blocks): the caller's contract; loads stay inside `row` (the tail masked).
        unsafe {
            let low = _mm512_set1_ps(f32::NEG_INFINITY);
            // Four independent maxima; `max(x, acc)` keeps `acc` where `x` is NaN.
            let mut acc = [low; 4];
            let mut j = 0;
            while j + 4 * LANES <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_max_ps(_mm512_loadu_ps(p.add(j + u * LANES)), *a);
                }
                j += 4 * LANES;
            }
            while j + LANES <= n {
                acc[0] = _mm512_max_ps(_mm512_loadu_ps(p.add(j)), acc[0]);
                j += LANES;
            }
            if j < n {
                let mask = ((1u32 << (n - j)) - 1) as __mmask16;
                acc[1] = _mm512_max_ps(_mm512_mask_loadu_ps(low, mask, p.add(j)), acc[1]);
            }
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])))
        }
    }

    /// [`super::attend_rows`] compiled for AVX-512 with [`Avx512`]'s micro-kernels.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_rows(dims: &Dims, q: &[f32], m: Rows, kt: &[f32], vp: &[f32], out: &mut [f32]) {
        super::attend_rows_generic::<Avx512>(dims, q, m, kt, vp, out)
    }

    /// `e^x` per lane as `vecmath::exp` computes it (`x = n·ln 2 + r`, a degree-6 Taylor
    /// polynomial in `r`, relative error ≲ 2.5e-7), with `n` rounded by `vrndscaleps` and `2^n`
    /// applied by `vscalefps`: fewer instructions than the portable exp's bit tricks.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            // e^-87.3 ≈ 2^-126, the smallest normal: no denormals reach the products after.
            let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
            let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(vecmath::LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(vecmath::LN2_LO), r);
            let [first, rest @ ..] = vecmath::EXP_TAYLOR;
            let mut p = _mm512_set1_ps(first);
            for c in rest {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            _mm512_scalef_ps(p, n)
        }
    }

    /// Degree-3 minimax coefficients of `2^f` on `[−½, ½]` (relative error 7.5e-5), constant
    /// term first: the probabilities are rounded to bf16 (relative error up to 2⁻⁹ ≈ 2e-3) right
    /// after, and degree 5 (7.5e-8) spent two more instructions of about fifteen per 16 values.
    const EXP2_MINIMAX: [f32; 4] = [0.999_928_1, 0.693_261, 0.242_610_81, 0.055_171_434];

    /// `2^t` per lane: `t = n + f` with `n` rounded by `vrndscaleps`, [`EXP2_MINIMAX`] in `f`,
    /// `2^n` by `vscalefps` — five instructions fewer than [`exp16`] (no `ln 2` range reduction,
    /// a shorter polynomial) at bf16's accuracy, for the bf16 attention, whose scores take
    /// `log2 e` in their scale (the exponentials were a third of its time).
    ///
    /// # Safety
    /// AVX-512F.
    #[inline(always)]
    pub(super) unsafe fn exp2_16(t: __m512) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            // 2^-126, the smallest normal: no denormals reach the products after.
            let t = _mm512_max_ps(t, _mm512_set1_ps(-126.0));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, n);
            let [rest @ .., last] = EXP2_MINIMAX;
            let mut p = _mm512_set1_ps(last);
            for c in rest.into_iter().rev() {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
            }
            _mm512_scalef_ps(p, n)
        }
    }

    impl MicroKernels for Avx512 {
        #[inline(always)]
        unsafe fn exp_sub_sum(row: &mut [f32], shift: f32) -> f32 {
            // SAFETY (all blocks): the caller's contract (AVX-512F); loads and stores stay inside
            // `row` (the tail through a mask of its length).
            unsafe {
                let shift = _mm512_set1_ps(shift);
                let mut sum = _mm512_setzero_ps();
                let mut chunks = row.chunks_exact_mut(LANES);
                for chunk in &mut chunks {
                    let y = exp16(_mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), shift));
                    _mm512_storeu_ps(chunk.as_mut_ptr(), y);
                    sum = _mm512_add_ps(sum, y);
                }
                let tail = chunks.into_remainder();
                if !tail.is_empty() {
                    let mask: __mmask16 = (1u32 << tail.len()).wrapping_sub(1) as __mmask16;
                    let y = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, tail.as_ptr()), shift));
                    _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, y);
                    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, y));
                }
                _mm512_reduce_add_ps(sum)
            }
        }

        #[inline(always)]
        unsafe fn qk_tile(
            q: *const f32,
            d: usize,
            kt: *const f32,
            out: *mut f32,
            cols: usize,
            maxes: &mut [f32; QK_ROWS],
        ) {
            // SAFETY (all blocks): the caller's contract; constant indices only (the loops over
            // rows and vectors are unrolled), so the accumulators stay in registers.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); QK_COLS / LANES]; QK_ROWS];
                for p in 0..d {
                    let kp = kt.add(p * QK_COLS);
                    let k: [__m512; QK_COLS / LANES] = std::array::from_fn(|w| _mm512_loadu_ps(kp.add(w * LANES)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*q.add(p * QK_ROWS + r));
                        for (a, &k) in acc.iter_mut().zip(&k) {
                            *a = _mm512_fmadd_ps(x, k, *a);
                        }
                    }
                }
                // The lanes of each vector that hold real keys.
                let masks: [__mmask16; QK_COLS / LANES] = std::array::from_fn(|w| {
                    let valid = cols.saturating_sub(w * LANES).min(LANES);
                    ((1u32 << valid) - 1) as __mmask16
                });
                for ((r, acc), max) in acc.iter().enumerate().zip(maxes) {
                    let mut m = _mm512_set1_ps(*max);
                    for ((w, &a), &mask) in acc.iter().enumerate().zip(&masks) {
                        _mm512_storeu_ps(out.add(r * KEYS + w * LANES), a);
                        m = _mm512_mask_max_ps(m, mask, m, a);
                    }
                    *max = _mm512_reduce_max_ps(m);
                }
            }
        }

        #[inline(always)]
        unsafe fn pv_tile<const W: usize, const R: usize>(
            p: *const f32,
            nc: usize,
            v: *const f32,
            dp: usize,
            acc: *mut f32,
        ) {
            // SAFETY (all blocks): as in qk_tile.
            unsafe {
                let mut tile: [[__m512; W]; R] =
                    std::array::from_fn(|r| std::array::from_fn(|w| _mm512_loadu_ps(acc.add(r * dp + w * LANES))));
                for k in 0..nc {
                    let vk = v.add(k * dp);
                    let y: [__m512; W] = std::array::from_fn(|w| _mm512_loadu_ps(vk.add(w * LANES)));
                    for (r, tile) in tile.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*p.add(r * KEYS + k));
                        for (t, &y) in tile.iter_mut().zip(&y) {
                            *t = _mm512_fmadd_ps(x, y, *t);
                        }
                    }
                }
                for (r, tile) in tile.iter().enumerate() {
                    for (w, &t) in tile.iter().enumerate() {
                        _mm512_storeu_ps(acc.add(r * dp + w * LANES), t);
                    }
                }
            }
        }
    }
}

/// `QK_ROWS × QK_COLS` scores: `out[r·KEYS + j] = Σₚ q[p·QK_ROWS + r] · kt[p·QK_COLS + j]` (`q`
/// holds the block's rows transposed, so each step broadcasts `QK_ROWS` neighbouring values),
/// with `maxes` raised to each row's maximum over its first `cols` (≥ 1) scores.
#[inline(always)]
fn qk_tile<K: MicroKernels>(q: &[f32], d: usize, kt: &[f32], out: &mut [f32], cols: usize, maxes: &mut [f32]) {
    assert!(q.len() >= d * QK_ROWS && kt.len() >= d * QK_COLS && out.len() >= (QK_ROWS - 1) * KEYS + QK_COLS);
    assert!((1..=QK_COLS).contains(&cols));
    let maxes: &mut [f32; QK_ROWS] = maxes.try_into().expect("QK_ROWS row maxima");
    // SAFETY: the reads and writes lie inside the lengths asserted; the caller runs on a CPU with
    // K's instructions.
    unsafe { K::qk_tile(q.as_ptr(), d, kt.as_ptr(), out.as_mut_ptr(), cols, maxes) }
}

/// `acc[i·dp + ..] += Σₖ scores[i·KEYS + k] · v[k·dp + ..]` for the job's rows and `nc` keys, by
/// register tiles of `R` rows × `W` vectors of columns (`R·W ≤ 24` accumulators).
#[inline(always)]
fn pv_block<K: MicroKernels>(scores: &[f32], m: usize, nc: usize, v: &[f32], dp: usize, acc: &mut [f32]) {
    let vectors = dp / LANES;
    // Column chunks: all of them at once up to five vectors (d ≤ 80), else four at a time.
    let mut w0 = 0;
    while w0 < vectors {
        let w = if vectors <= 5 { vectors } else { 4.min(vectors - w0) };
        let col = w0 * LANES;
        match w {
            1 => pv_chunk::<K, 1, 8>(scores, m, nc, &v[col..], dp, &mut acc[col..]),
            2 => pv_chunk::<K, 2, 8>(scores, m, nc, &v[col..], dp, &mut acc[col..]),
            3 => pv_chunk::<K, 3, 8>(scores, m, nc, &v[col..], dp, &mut acc[col..]),
            4 => pv_chunk::<K, 4, 6>(scores, m, nc, &v[col..], dp, &mut acc[col..]),
            _ => pv_chunk::<K, 5, 4>(scores, m, nc, &v[col..], dp, &mut acc[col..]),
        }
        w0 += w;
    }
}

/// [`pv_block`] on `W` vectors of columns, `R` rows at a time.
#[inline(always)]
fn pv_chunk<K: MicroKernels, const W: usize, const R: usize>(
    scores: &[f32],
    m: usize,
    nc: usize,
    v: &[f32],
    dp: usize,
    acc: &mut [f32],
) {
    let rows = m.div_ceil(R) * R;
    assert!(
        scores.len() >= (rows - 1) * KEYS + nc
            && v.len() >= (nc - 1) * dp + W * LANES
            && acc.len() >= (rows - 1) * dp + W * LANES
    );
    for r0 in (0..rows).step_by(R) {
        // SAFETY: rows r0..r0 + R < rows and keys < nc lie inside the lengths asserted; the
        // caller runs on a CPU with K's instructions.
        unsafe { K::pv_tile::<W, R>(scores[r0 * KEYS..].as_ptr(), nc, v.as_ptr(), dp, acc[r0 * dp..].as_mut_ptr()) }
    }
}

/// The straightforward candle computation: the whole `[.., L, S]` score tensor, softmax, matmul.
pub fn attention_plain(query: &Tensor, key: &Tensor, value: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (query * scale)?.matmul(&key.t()?)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(value)
}

/// [`attention_plain`] with a causal mask (`L = S`; −∞ added to the scores above the diagonal),
/// the softmax in f32.
pub fn attention_plain_causal(query: &Tensor, key: &Tensor, value: &Tensor, scale: f64) -> Result<Tensor> {
    let l = query.dim(D::Minus2)?;
    let mask: Vec<f32> = (0..l * l).map(|i| if i % l > i / l { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (l, l), query.device())?.to_dtype(query.dtype())?;
    let scores = (query * scale)?.matmul(&key.t()?)?.broadcast_add(&mask)?;
    // The softmax in f32, as transformers' CLIP runs it for half-precision models.
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(query.dtype())?;
    probs.matmul(value)
}

/// `softmax(query·keyᵀ·scale)·value` for `query` `[.., L, d]` and `key`/`value` `[.., S, d]` with
/// equal leading dimensions (e.g. `[N, heads, L, d]`). f32 CPU tensors take the blocked kernel;
/// anything else takes [`attention_plain`].
pub fn attention(query: &Tensor, key: &Tensor, value: &Tensor, scale: f64) -> Result<Tensor> {
    let qd = query.dims();
    let rank = qd.len();
    let lead = &qd[..rank.saturating_sub(2)];
    let kv_ok = |t: &Tensor| {
        let td = t.dims();
        td.len() == rank && &td[..rank - 2] == lead && td[rank - 1] == qd[rank - 1]
    };
    if rank < 3 || !kv_ok(key) || key.dims() != value.dims() {
        return Err(KernelError::BadShape {
            op: OP,
            name: "query/key/value",
            expected: format!("[.., L, d] and two equal [.., S, d] with the same leading dims as query {qd:?}"),
            got: key.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([query, key, value]) {
        return attention_plain(query, key, value, scale);
    }
    let flat = |t: &Tensor| -> Result<Tensor> { t.flatten_to(rank - 3)?.contiguous() };
    let op = AttentionOp { heads: 1, scale: scale as f32, causal: false, attend: attend_rows };
    apply3(&flat(query)?, &flat(key)?, &flat(value)?, op)?.reshape(qd)
}

/// Multi-head attention on heads interleaved as the projections write them: `query`
/// `[N, L, heads·d]`, `key`/`value` `[N, S, heads·d]` → `[N, L, heads·d]`, each head `h` attending
/// with columns `h·d..(h+1)·d`. f32 CPU tensors take the blocked kernel without splitting the
/// heads out; anything else splits them and takes [`attention_plain`].
pub fn attention_heads(query: &Tensor, key: &Tensor, value: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    heads_attention(query, key, value, heads, scale, false, false)
}

/// [`attention_heads`] with a causal mask: query row `i` attends to keys `0..=i` (CLIP's text
/// self-attention; `L = S`). Other devices and dtypes take [`attention_plain_causal`].
pub fn attention_heads_causal(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    heads_attention(query, key, value, heads, scale, true, false)
}

/// [`attention_heads`] (or, with `causal`, [`attention_heads_causal`]) with bf16 operands, as
/// bf16 models run it: see [`crate::attention_bf16`]. Where no fast bf16 kernel runs
/// ([`crate::gemm_bf16::available`]) it is the f32 kernel.
pub fn attention_heads_bf16(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    heads_attention(query, key, value, heads, scale, causal, crate::gemm_bf16::available())
}

/// The kernels' shared entry: shape checks, the plain path for other devices and dtypes, then
/// the f32 kernel or, with `bf16`, the bf16 one.
fn heads_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
    bf16: bool,
) -> Result<Tensor> {
    let (n, l, c) = query.dims3()?;
    let shape_ok = |t: &Tensor| t.rank() == 3 && t.dim(0).ok() == Some(n) && t.dim(2).ok() == Some(c);
    let causal_ok = !causal || key.dim(1).ok() == Some(l);
    if heads == 0 || c % heads != 0 || !shape_ok(key) || key.dims() != value.dims() || !causal_ok {
        return Err(KernelError::BadShape {
            op: OP,
            name: "query/key/value",
            expected: format!(
                "query [N, L, C] with C divisible by heads ({heads}) and two equal [{n}, S, {c}]{}",
                if causal { " with S = L (causal)" } else { "" }
            ),
            got: key.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([query, key, value]) {
        // [N, L, heads·d] -> [N, heads, L, d] and back.
        let split = |t: &Tensor| t.reshape((n, (), heads, c / heads))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (split(query)?, split(key)?, split(value)?);
        let out = if causal { attention_plain_causal(&q, &k, &v, scale)? } else { attention_plain(&q, &k, &v, scale)? };
        return out.transpose(1, 2)?.reshape((n, l, c));
    }
    let (q, k, v) = (query.contiguous()?, key.contiguous()?, value.contiguous()?);
    // The bf16 kernel scales in the exponent, shifted by the scaled maximum: a positive scale.
    if bf16 && scale > 0.0 {
        return apply3(&q, &k, &v, AttentionBf16Op { heads, scale: scale as f32, causal });
    }
    apply3(&q, &k, &v, AttentionOp { heads, scale: scale as f32, causal, attend: attend_rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 attention's `2^t` against f64 over the range it sees (down to 2^-126).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp2_relative_error() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let t = -126.0 + 126.0 * i as f32 / 200_000.0;
            // SAFETY: AVX-512F is checked above.
            let y = unsafe { _mm512_cvtss_f32(x86::exp2_16(_mm512_set1_ps(t))) };
            let want = (t as f64).exp2();
            worst = worst.max((y as f64 - want).abs() / want);
        }
        // The minimax polynomial's 7.5e-5 plus f32 rounding in Horner's steps: under bf16's
        // rounding (2⁻⁹ ≈ 2e-3) by a factor of 20.
        assert!(worst < 8e-5, "worst relative error {worst:e}");
    }

    /// The AVX-512 exp against f64 over the range softmax sees (down to where e^x ≈ 2^-126).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_relative_error() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (0..=100_003).map(|i| -87.0 + 87.0 * i as f32 / 100_003.0).collect();
        let mut row = xs.clone();
        // SAFETY: AVX-512F is checked above.
        let sum = unsafe { <x86::Avx512 as MicroKernels>::exp_sub_sum(&mut row, 0.0) };
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&row) {
            let want = (x as f64).exp();
            worst = worst.max((y as f64 - want).abs() / want);
        }
        // As vecmath::exp: the Taylor remainder (½·ln 2)^7/7! ≈ 1.2e-7 plus f32 rounding.
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        let want: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
        assert!((sum as f64 - want).abs() < 1e-5 * want, "sum {sum} vs {want}");
    }

    /// The portable micro-kernels (taken only on CPUs without AVX-512) against the plain path, on
    /// each register tile shape (head widths 40, 80, 160 and 512) and several key blocks, and
    /// causal (CLIP's 77 tokens; 300 tokens: several query jobs and key blocks, skipped blocks).
    #[test]
    fn portable_kernels_match_plain() {
        let dev = candle_core::Device::Cpu;
        for (l, s, heads, d, causal) in [
            (50usize, 300usize, 2usize, 40usize, false),
            (61, 77, 2, 80, false),
            (50, 270, 1, 160, false),
            (20, 100, 1, 512, false),
            (77, 77, 2, 64, true),
            (300, 300, 1, 40, true),
        ] {
            let t = |len: usize, shape: (usize, usize, usize), f: f32| {
                let data: Vec<f32> = (0..len).map(|i| ((i as f32 * 0.618 + f).fract() - 0.5) * 2.0).collect();
                Tensor::from_vec(data, shape, &dev).unwrap()
            };
            let (q, k, v) = (
                t(2 * l * heads * d, (2, l, heads * d), 0.1),
                t(2 * s * heads * d, (2, s, heads * d), 0.3),
                t(2 * s * heads * d, (2, s, heads * d), 0.7),
            );
            let scale = (d as f64).powf(-0.5);
            let op = AttentionOp { heads, scale: scale as f32, causal, attend: attend_rows_portable };
            let got = apply3(&q, &k, &v, op).unwrap();
            let split =
                |t: &Tensor| t.reshape((2, (), heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
            let plain = if causal { attention_plain_causal } else { attention_plain };
            let want = plain(&split(&q), &split(&k), &split(&v), scale).unwrap();
            let want = want.transpose(1, 2).unwrap().reshape((2, l, heads * d)).unwrap();
            let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // Same sums in another order (and an exp within 2.5e-7 relative): f32 rounding only.
            assert!(err < 1e-5, "l {l} s {s} d {d} causal {causal}: {err}");
        }
    }
}
