//! Winograd convolution F(m×m, 3×3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
//! Networks") for 3×3, stride-1, pad-1 convolutions: each `m×m` block of outputs is computed from
//! an `n×n` input tile (`n = m + 2`) with `n²` products per input/output channel pair instead of
//! `9·m²`.
//!
//! ```text
//! U[ξ][co][ci] = (G · w[co][ci] · Gᵀ)[ξ]        weights, per call, by blocks of output channels
//! V[ξ][ci][t]  = (Bᵀ · d[ci][t] · B)[ξ]          input tiles d (zero outside the image)
//! M[ξ]         = U[ξ] · V[ξ]                     n² GEMMs [Co×Ci]·[Ci×tiles]
//! y[co][t]     = Aᵀ · M[·][co][t] · A + bias      m×m outputs per tile
//! ```
//!
//! The weights are transformed on every call rather than cached: cached F(4,3) weights would take
//! 4× the 3×3 weights' memory (8.7 GB for SD1.5's UNet in f32), while the vectorised transform
//! took under 3% of a 512² UNet call's time (perf). The price is that Winograd only pays where
//! the GEMMs have enough tiles to amortise it (see `conv2d::winograd_tile`). Tiles are processed in chunks of tile rows,
//! so the transformed input stays a few tens of MB whatever the image size.
//!
//! f32 rounding: the GEMMs' rounding errors are amplified by the output transform (its entries
//! reach 8 for F(4,3)), so F(4,3) is a few times less accurate than the direct convolution and
//! F(2,3) is as accurate; see [`WinogradTile`].

use candle_core::{Result, Shape};
use rayon::prelude::*;

use crate::matmul::{self, Mat, MatMut, Threads};
use crate::op::{uninit, F32Op3, Input};
use crate::scratch::Scratch;
use crate::vecmath::multiversion;

const OP: &str = "kairos-conv2d-winograd";

/// Tiles per vector: one AVX-512 register of f32 (two AVX2 ones).
const L: usize = 16;

/// How the work is cut: bytes of the transformed input of one chunk of tile rows (and as much for
/// the GEMM outputs), and of the transformed weights of one block of output channels.
#[derive(Clone, Copy)]
struct Blocking {
    chunk_bytes: usize,
    weight_block_bytes: usize,
}

const BLOCKING: Blocking = Blocking { chunk_bytes: 24 * 1024 * 1024, weight_block_bytes: 8 * 1024 * 1024 };

/// Output tile size of the Winograd algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WinogradTile {
    /// F(2×2, 3×3): 4×4 input tiles, 2.25× fewer multiplications than the direct convolution,
    /// with the direct convolution's accuracy.
    F2,
    /// F(4×4, 3×3): 6×6 input tiles, 4× fewer multiplications; with interpolation points
    /// 0, ±1, 2, −½ (about 2.5× more accurate than the usual 0, ±1, ±2), a 320-channel SD
    /// convolution's max error is about 5e-6 of its output's max, 7× the direct convolution's.
    F4,
}

/// The matrices of F(m×m, 3×3) with `n = m + 2`: input transform `Bᵀ`, weight transform `G`,
/// output transform `Aᵀ`.
struct Algo<const M: usize, const N: usize> {
    bt: [[f32; N]; N],
    g: [[f32; 3]; N],
    at: [[f32; N]; M],
}

/// F(2,3) from the points 0, 1, −1, ∞ (Lavin & Gray's matrices).
const F2: Algo<2, 4> = Algo {
    bt: [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]],
    g: [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
    at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
};

/// F(4,3) from the points 0, 1, −1, 2, −½, ∞ (Toom-Cook: `Aᵀ` holds the points' powers, `G` the
/// Vandermonde rows divided by `fⱼ = Πₗ₌ⱼ(pⱼ − pₗ)`, `Bᵀ` the inverse Vandermonde's transpose times
/// `fⱼ`, so `Bᵀ` and `Aᵀ` are exact in binary). `tests::algorithms_are_exact` checks the identity.
const F4: Algo<4, 6> = Algo {
    bt: [
        [1.0, 1.5, -2.0, -1.5, 1.0, 0.0],
        [0.0, -1.0, -2.5, -0.5, 1.0, 0.0],
        [0.0, 1.0, 0.5, -2.5, 1.0, 0.0],
        [0.0, -0.5, -1.0, 0.5, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 1.0, 1.5, -2.0, -1.5, 1.0],
    ],
    g: [
        [1.0, 0.0, 0.0],
        [-1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
        [1.0 / 3.0, -1.0 / 3.0, 1.0 / 3.0],
        [1.0 / 15.0, 2.0 / 15.0, 4.0 / 15.0],
        [-16.0 / 15.0, 8.0 / 15.0, -4.0 / 15.0],
        [0.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -0.5, 0.0],
        [0.0, 1.0, 1.0, 4.0, 0.25, 0.0],
        [0.0, 1.0, -1.0, 8.0, -0.125, 1.0],
    ],
};

/// The CPU kernel: `x` `[N, Ci, H, W]`, `w` `[Co, Ci, 3, 3]`, `bias` `[Co]`, contiguous f32;
/// padding 1, stride 1.
pub(crate) struct WinogradOp {
    pub(crate) tile: WinogradTile,
}

impl F32Op3 for WinogradOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, l1): Input<'_>, (w, l2): Input<'_>, (bias, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, ci, h, wd) = l1.shape().dims4()?;
        let co = l2.dims()[0];
        let dims = Dims { n, ci, co, h, w: wd };
        let out = match self.tile {
            WinogradTile::F2 => convolve(&F2, x, w, bias, dims, BLOCKING),
            WinogradTile::F4 => convolve(&F4, x, w, bias, dims, BLOCKING),
        };
        Ok((out, Shape::from((n, co, h, wd))))
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
}

/// Tiles of an `h×w` image for output tile size `m`: (tile rows, tiles per row).
pub(crate) fn tile_grid(h: usize, w: usize, m: usize) -> (usize, usize) {
    (h.div_ceil(m), w.div_ceil(m))
}

/// The whole convolution: chunks of tile rows ("bands", across images), each transformed, multiplied
/// block of output channels by block, and transformed back into `out` `[N, Co, H, W]`.
fn convolve<const M: usize, const N: usize>(
    alg: &Algo<M, N>,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    d: Dims,
    blocking: Blocking,
) -> Vec<f32> {
    let nn = N * N;
    let (th, tw) = tile_grid(d.h, d.w, M);
    let plane = d.h * d.w;
    if d.n * d.co * plane == 0 {
        return Vec::new();
    }
    // SAFETY: every tile row of every output plane is written by `output_band` below (all bands,
    // all blocks of output channels), and its tiles cover the plane (edge tiles clipped).
    let mut out = unsafe { uninit(d.n * d.co * plane) };
    let bands = d.n * th;
    let chunk_bands = (blocking.chunk_bytes / (4 * nn * tw * d.ci.max(d.co))).clamp(1, bands);
    // Equal blocks, rounded up to whole AVX-512 rows of the GEMM (a ragged last block of a few
    // channels runs far below peak).
    let blocks = d.co.div_ceil((blocking.weight_block_bytes / (4 * nn * d.ci.max(1))).max(1));
    let block_co = d.co.div_ceil(blocks).next_multiple_of(L).min(d.co);

    let mut v = Scratch::take(d.ci * nn * chunk_bands * tw);
    let mut u = Scratch::take(block_co * nn * d.ci);
    let mut m = Scratch::take(nn * block_co * chunk_bands * tw);
    for b0 in (0..bands).step_by(chunk_bands) {
        let nb = chunk_bands.min(bands - b0);
        let t = nb * tw;
        // V: [Ci][ξ][t], tiles ordered (band, column).
        let v = &mut v[..d.ci * nn * t];
        v.par_chunks_mut(nn * t).enumerate().for_each(|(c, v_c)| {
            for k in 0..nb {
                let (img, row) = ((b0 + k) / th, (b0 + k) % th);
                let x_c = &x[(img * d.ci + c) * plane..][..plane];
                input_band(alg, x_c, (d.h, d.w), row, tw, v_c, t, k * tw);
            }
        });
        for co0 in (0..d.co).step_by(block_co) {
            let nco = block_co.min(d.co - co0);
            // U: [nco][ξ][Ci].
            let u = &mut u[..nco * nn * d.ci];
            u.par_chunks_mut(nn * d.ci).enumerate().for_each(|(k, u_k)| {
                weight_transform(alg, &w[(co0 + k) * d.ci * 9..][..d.ci * 9], u_k, d.ci);
            });
            // M: [ξ][nco][t] = U[·][ξ][·] · V[·][ξ][·].
            let m = &mut m[..nn * nco * t];
            let (u, v) = (&*u, &*v);
            m.par_chunks_mut(nco * t).enumerate().for_each(|(xi, m_xi)| {
                // SAFETY: m_xi is nco×t row-major (nco·t elements); the lhs is U[k][xi][c]
                // (row k at k·nn·ci + xi·ci, ci columns) inside u (nco·nn·ci elements); the rhs is
                // V[c][xi][j] (row c at c·nn·t + xi·t, t columns) inside v (ci·nn·t elements).
                unsafe {
                    let (lhs, rhs) = (Mat::rows(&u[xi * d.ci..], nn * d.ci), Mat::rows(&v[xi * t..], nn * t));
                    matmul::gemm(nco, t, d.ci, MatMut::rows(m_xi, t), lhs, rhs, false, Threads::One);
                }
            });
            let m = &*m;
            // Output planes (img, co0..co0+nco) of the images this chunk touches.
            out.par_chunks_mut(plane).enumerate().for_each(|(p, out_c)| {
                let (img, c) = (p / d.co, p % d.co);
                if !(co0..co0 + nco).contains(&c) {
                    return;
                }
                for k in 0..nb {
                    if (b0 + k) / th == img {
                        let row = (b0 + k) % th;
                        let m_c = &m[(c - co0) * t..];
                        output_band(alg, m_c, nco * t, k * tw, tw, bias[c], out_c, (d.h, d.w), row);
                    }
                }
            });
        }
    }
    out
}

/// `dst[..lanes] = src[..lanes]`, as one vector move when all `L` lanes are used (a copy of a
/// run-time length is a `memmove` call).
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32; L], lanes: usize) {
    if lanes == L {
        dst[..L].copy_from_slice(src);
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// `Σₖ mat[i][k]·src[k]` for each row `i`, on vectors of `L` lanes. (No closures or `mul_add`
/// here or in the callers: closures are not compiled with the caller's target features, and
/// `mul_add` without FMA is a libm call.)
#[inline(always)]
fn apply<const R: usize, const K: usize>(mat: &[[f32; K]; R], src: &[[f32; L]; K]) -> [[f32; L]; R] {
    let mut dst = [[0f32; L]; R];
    for (row, d) in mat.iter().zip(dst.iter_mut()) {
        for (&a, s) in row.iter().zip(src) {
            if a != 0.0 {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d += a * s;
                }
            }
        }
    }
    dst
}

/// The transformed tiles of tile row `row` of one input channel `x_c` (`h×w`): tile `j`'s value
/// `ξ` goes to `v_c[ξ·stride + t0 + j]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_band_generic<const M: usize, const N: usize>(
    alg: &Algo<M, N>,
    x_c: &[f32],
    (h, w): (usize, usize),
    row: usize,
    tw: usize,
    v_c: &mut [f32],
    stride: usize,
    t0: usize,
) {
    // One row segment of L tiles with its halo: L·M + 2 values, M ≤ 4.
    let mut buf = [0f32; L * 4 + 2];
    for j0 in (0..tw).step_by(L) {
        let lanes = L.min(tw - j0);
        // d[r][k][lane]: input (row·M + r − 1, (j0 + lane)·M + k − 1), zero outside the image.
        let mut d = [[[0f32; L]; N]; N];
        let x0 = (j0 * M) as isize - 1;
        for (r, d_r) in d.iter_mut().enumerate() {
            let y = (row * M + r) as isize - 1;
            if y < 0 || y >= h as isize {
                continue;
            }
            let src = &x_c[y as usize * w..][..w];
            let len = lanes * M + N - M;
            let lo = (-x0).max(0) as usize;
            let hi = len.min((w as isize - x0) as usize);
            buf[..lo].fill(0.0);
            buf[lo..hi].copy_from_slice(&src[(x0 + lo as isize) as usize..(x0 + hi as isize) as usize]);
            buf[hi..].fill(0.0);
            // All L lanes (the tail of buf is zero), so the gather has a fixed shape.
            for (k, d_rk) in d_r.iter_mut().enumerate() {
                for (lane, v) in d_rk.iter_mut().enumerate() {
                    *v = buf[lane * M + k];
                }
            }
        }
        // Bᵀ on the columns of each row, then on the rows.
        let mut cols = [[[0f32; L]; N]; N];
        for (c, d_r) in cols.iter_mut().zip(&d) {
            *c = apply(&alg.bt, d_r);
        }
        for e in 0..N {
            let mut col = [[0f32; L]; N];
            for (c, cols_r) in col.iter_mut().zip(&cols) {
                *c = cols_r[e];
            }
            for (a, vals) in apply(&alg.bt, &col).iter().enumerate() {
                copy_lanes(&mut v_c[(a * N + e) * stride + t0 + j0..], vals, lanes);
            }
        }
    }
}

multiversion! {
    /// [`input_band_generic`] compiled for the CPU's vector extension.
    #[allow(clippy::too_many_arguments)]
    fn input_band<const M: usize, const N: usize>(alg: &Algo<M, N>, x_c: &[f32], hw: (usize, usize), row: usize,
        tw: usize, v_c: &mut [f32], stride: usize, t0: usize) -> () = input_band_generic;
}

/// `u_k[ξ·ci + c] = (G · w_k[c] · Gᵀ)[ξ]` for one output channel's weights `w_k` `[ci, 3, 3]`.
#[inline(always)]
fn weight_transform_generic<const M: usize, const N: usize>(alg: &Algo<M, N>, w_k: &[f32], u_k: &mut [f32], ci: usize) {
    for c0 in (0..ci).step_by(L) {
        let lanes = L.min(ci - c0);
        // g[ky][kx][lane] = w_k[c0 + lane][ky][kx].
        let mut g = [[[0f32; L]; 3]; 3];
        for lane in 0..lanes {
            let src = &w_k[(c0 + lane) * 9..][..9];
            for (ky, g_y) in g.iter_mut().enumerate() {
                for (kx, g_yx) in g_y.iter_mut().enumerate() {
                    g_yx[lane] = src[ky * 3 + kx];
                }
            }
        }
        // G on the columns of each kernel row, then on the rows.
        let mut rows = [[[0f32; L]; N]; 3];
        for (r, g_y) in rows.iter_mut().zip(&g) {
            *r = apply(&alg.g, g_y);
        }
        for e in 0..N {
            let mut col = [[0f32; L]; 3];
            for (c, rows_y) in col.iter_mut().zip(&rows) {
                *c = rows_y[e];
            }
            for (a, vals) in apply(&alg.g, &col).iter().enumerate() {
                copy_lanes(&mut u_k[(a * N + e) * ci + c0..], vals, lanes);
            }
        }
    }
}

multiversion! {
    /// [`weight_transform_generic`] compiled for the CPU's vector extension.
    fn weight_transform<const M: usize, const N: usize>(alg: &Algo<M, N>, w_k: &[f32], u_k: &mut [f32],
        ci: usize) -> () = weight_transform_generic;
}

/// The outputs of tile row `row` of one output channel: tile `j`'s product `ξ` is
/// `m_c[ξ·stride + t0 + j]`; `Aᵀ·m·A + bias` is written into `out_c` (`h×w`), clipped at the edges.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_band_generic<const M: usize, const N: usize>(
    alg: &Algo<M, N>,
    m_c: &[f32],
    stride: usize,
    t0: usize,
    tw: usize,
    bias: f32,
    out_c: &mut [f32],
    (h, w): (usize, usize),
    row: usize,
) {
    for j0 in (0..tw).step_by(L) {
        let lanes = L.min(tw - j0);
        let mut mm = [[[0f32; L]; N]; N];
        for (a, mm_a) in mm.iter_mut().enumerate() {
            for (e, mm_ae) in mm_a.iter_mut().enumerate() {
                let src = &m_c[(a * N + e) * stride + t0 + j0..];
                if lanes == L {
                    mm_ae.copy_from_slice(&src[..L]);
                } else {
                    mm_ae[..lanes].copy_from_slice(&src[..lanes]);
                }
            }
        }
        // Aᵀ on the columns of each row of products, then on the rows; `rows` holds the m output
        // rows of the L tiles side by side.
        let mut rows = [[0f32; L * 4]; M];
        let mut cols = [[[0f32; L]; M]; N];
        for (c, mm_a) in cols.iter_mut().zip(&mm) {
            *c = apply(&alg.at, mm_a);
        }
        for q in 0..M {
            let mut col = [[0f32; L]; N];
            for (c, cols_a) in col.iter_mut().zip(&cols) {
                *c = cols_a[q];
            }
            for (p, y_p) in apply(&alg.at, &col).iter().enumerate() {
                for (lane, &y) in y_p.iter().enumerate() {
                    rows[p][lane * M + q] = y + bias;
                }
            }
        }
        // Output rows row·M + p, columns j0·M.., clipped to the image.
        let x0 = j0 * M;
        let len = (lanes * M).min(w - x0);
        for (p, r) in rows.iter().enumerate().take(h.saturating_sub(row * M)) {
            out_c[(row * M + p) * w + x0..][..len].copy_from_slice(&r[..len]);
        }
    }
}

multiversion! {
    /// [`output_band_generic`] compiled for the CPU's vector extension.
    #[allow(clippy::too_many_arguments)]
    fn output_band<const M: usize, const N: usize>(alg: &Algo<M, N>, m_c: &[f32], stride: usize, t0: usize,
        tw: usize, bias: f32, out_c: &mut [f32], hw: (usize, usize), row: usize) -> () = output_band_generic;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Aᵀ·((G·g) ⊙ (Bᵀ·d))` equals the 1-D correlation `yᵢ = Σₖ dᵢ₊ₖ·gₖ` for every basis pair
    /// (exactly, in f64, up to the rounding of G's thirds and fifteenths).
    fn check<const M: usize, const N: usize>(alg: &Algo<M, N>) {
        for i_d in 0..N {
            for i_g in 0..3 {
                let gg: Vec<f64> = (0..N).map(|j| alg.g[j][i_g] as f64).collect();
                let bd: Vec<f64> = (0..N).map(|j| alg.bt[j][i_d] as f64).collect();
                for i in 0..M {
                    let y: f64 = (0..N).map(|j| alg.at[i][j] as f64 * gg[j] * bd[j]).sum();
                    let want = if i + i_g == i_d { 1.0 } else { 0.0 };
                    assert!((y - want).abs() < 1e-6, "m={M}: d{i_d} g{i_g} y{i}: {y} vs {want}");
                }
            }
        }
    }

    #[test]
    fn algorithms_are_exact() {
        check(&F2);
        check(&F4);
    }

    /// One chunk per tile row and 16-channel weight blocks (the last one ragged) give the same
    /// result as the default blocking, which the small cases of the integration tests never leave.
    /// Tolerance 1e-6 of the output's max: the same products summed in possibly other GEMM orders.
    #[test]
    fn blocking_does_not_change_the_result() {
        let d = Dims { n: 2, ci: 24, co: 40, h: 11, w: 37 };
        let x = crate::uniform(1, d.n * d.ci * d.h * d.w);
        let w = crate::uniform(2, d.co * d.ci * 9);
        let bias = crate::uniform(3, d.co);
        let tiny = Blocking { chunk_bytes: 1, weight_block_bytes: 1 };
        for (want, got) in [
            (convolve(&F4, &x, &w, &bias, d, BLOCKING), convolve(&F4, &x, &w, &bias, d, tiny)),
            (convolve(&F2, &x, &w, &bias, d, BLOCKING), convolve(&F2, &x, &w, &bias, d, tiny)),
        ] {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-6 * scale, "{err} vs max {scale}");
        }
    }
}
