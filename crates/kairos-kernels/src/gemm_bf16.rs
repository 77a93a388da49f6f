//! `C = alpha·A·B (+ C)` with both operands rounded to bf16 and f32 accumulation, on AVX512-BF16
//! dot products (`vdpbf16ps`: 16 lanes, each adding a 2-term bf16 dot product to an f32).
//!
//! Both operands are packed first ([`PackedA`], [`PackedB`]): pairs of consecutive `k` values are
//! stored as one `u32` (the even `k` in the low half, as `vdpbf16ps` pairs them), in panels of
//! [`MR`] rows of `A` and [`NR`] columns of `B`. A layer's weight is packed once when it is built
//! and reused by every call; activations are packed (and rounded to bf16, nearest-even) per call,
//! which costs one pass over them against `2·M·N·K` FLOPs of compute.
//!
//! The micro-kernel keeps an `MR × NR` block of `C` in 24 registers and reads one `u32` of `A`
//! (broadcast) and two vectors of `B` per `k` pair. CPUs without AVX512-BF16 (and other
//! architectures) run a scalar kernel with the same rounding, so the result does not depend on
//! the instruction set beyond the order of the f32 additions; the layers only choose bf16 where
//! [`available`] says the fast kernel runs.

use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of `A` (and `C`) per panel and micro-kernel call.
pub const MR: usize = 12;
/// Columns of `B` (and `C`) per panel and micro-kernel call: two 16-lane vectors.
pub const NR: usize = 32;
/// `k` pairs per cache block: a `B` panel block is `KC·NR·4` = 16 KiB (stays in L1 while the
/// `A` panels of a tile stream past it).
const KC: usize = 128;
/// Rows and columns of `C` per parallel task (a task's `A` blocks stay in L2).
const MC: usize = MR * 8;
const NC: usize = NR * 8;

/// Whether the AVX512-BF16 micro-kernel runs on this CPU (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An element the packers read: rounded to bf16 (nearest-even) as it is packed.
pub trait Element: Copy + Send + Sync {
    /// The bf16 bit pattern nearest to `self`.
    fn bf16_bits(self) -> u16;
}

impl Element for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        // Round to nearest even on the bit pattern (vectorises, unlike a call per element);
        // a NaN keeps its sign and stays a (quiet) NaN.
        let bits = self.to_bits();
        if self.is_nan() {
            ((bits >> 16) | 0x40) as u16
        } else {
            ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
        }
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

impl Element for f16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        // f16 → f32 is exact, so this is a single rounding.
        self.to_f32().bf16_bits()
    }
}

/// A strided matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: Element> MatRef<'a, T> {
    /// A view of `data`, or `None` if the last element `(rows-1, cols-1)` lies outside it.
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Self> {
        let fits = rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < data.len();
        fits.then_some(Self { data, rows, cols, rs, cs })
    }

    /// A row-major `rows × cols` view.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// The bf16 pair `(i, 2p)`, `(i, 2p + 1)` as `vdpbf16ps` reads it; zero past the matrix.
    #[inline(always)]
    fn pair(&self, i: usize, p: usize) -> u32 {
        if i >= self.rows {
            return 0;
        }
        let at = |j: usize| if j < self.cols { self.data[i * self.rs + j * self.cs].bf16_bits() as u32 } else { 0 };
        at(2 * p) | (at(2 * p + 1) << 16)
    }
}

/// Packs `rows × k` (row `i` of the panel set is `mat`'s row `i`) as `[panel][pair][width]`.
fn pack<T: Element>(mat: MatRef<'_, T>, width: usize) -> Vec<u32> {
    let pairs = mat.cols.div_ceil(2);
    let panels = mat.rows.div_ceil(width);
    let mut data = vec![0u32; panels * pairs * width];
    if pairs == 0 {
        return data;
    }
    data.par_chunks_mut(pairs * width).enumerate().for_each(|(panel, dst)| {
        let row0 = panel * width;
        if mat.cs == 1 {
            // Row-contiguous source: one row at a time reads sequentially.
            for r in 0..width {
                for (p, d) in dst.iter_mut().skip(r).step_by(width).enumerate() {
                    *d = mat.pair(row0 + r, p);
                }
            }
        } else {
            // Column-contiguous (or other) source: the panel's rows side by side per pair.
            for (p, d) in dst.chunks_mut(width).enumerate() {
                for (r, v) in d.iter_mut().enumerate() {
                    *v = mat.pair(row0 + r, p);
                }
            }
        }
    });
    data
}

/// The left operand `A` (`M × K`) packed in panels of [`MR`] rows.
#[derive(Debug, Clone)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<u32>,
}

impl PackedA {
    /// Packs `a` (`M × K`), rounding each element to bf16.
    pub fn new<T: Element>(a: MatRef<'_, T>) -> Self {
        Self { m: a.rows, k: a.cols, data: pack(a, MR) }
    }

    /// Rows (`M`).
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth (`K`).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// The right operand `B` (`K × N`) packed in panels of [`NR`] columns.
#[derive(Debug, Clone)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: Vec<u32>,
}

impl PackedB {
    /// Packs `b` (`K × N`), rounding each element to bf16.
    pub fn new<T: Element>(b: MatRef<'_, T>) -> Self {
        Self { n: b.cols, k: b.rows, data: pack(b.t(), NR) }
    }

    /// Columns (`N`).
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Depth (`K`).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// A raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct block of C (see `gemm`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `C = alpha·A·B`, or `C += alpha·A·B` when `accumulate`, for `C` `M × N` row-major with row
/// stride `ldc` (`c` must hold `(M-1)·ldc + N` elements). `parallel` splits `C` into blocks
/// over the rayon pool (the caller's own parallel loops pass `false`).
///
/// Panics if the operands' depths differ or `c` is too short: callers size them from the same
/// shapes (a mismatch is a bug in kairos, not bad input).
pub fn gemm(a: &PackedA, b: &PackedB, c: &mut [f32], ldc: usize, alpha: f32, accumulate: bool, parallel: bool) {
    let (m, n) = (a.m, b.n);
    assert_eq!(a.k, b.k, "bf16 gemm: A is {}×{} but B is {}×{}", a.m, a.k, b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "bf16 gemm: C too short for {m}×{n} (ldc {ldc})");
    let pairs = a.k.div_ceil(2);
    if pairs == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let (tiles_m, tiles_n) = (m.div_ceil(MC), n.div_ceil(NC));
    let out = OutPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (tm, tn) = (t / tiles_n, t % tiles_n);
        let (m0, n0) = (tm * MC, tn * NC);
        let (m1, n1) = ((m0 + MC).min(m), (n0 + NC).min(n));
        for k0 in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - k0);
            for j in (n0..n1).step_by(NR) {
                let b_panel = &b.data[(j / NR) * pairs * NR + k0 * NR..][..kc * NR];
                for i in (m0..m1).step_by(MR) {
                    let a_panel = &a.data[(i / MR) * pairs * MR + k0 * MR..][..kc * MR];
                    let tile = Tile {
                        // SAFETY: (i, j) is inside C (i < m, j < n), and the tile's rows·cols
                        // block lies within it; tasks own disjoint (m0..m1, n0..n1) blocks.
                        c: out.at(i * ldc + j),
                        ldc,
                        rows: MR.min(m1 - i),
                        cols: NR.min(n1 - j),
                        alpha,
                        overwrite: k0 == 0 && !accumulate,
                    };
                    // SAFETY: as above; the panels hold kc·MR and kc·NR values.
                    unsafe { micro_kernel(a_panel, b_panel, kc, tile) };
                }
            }
        }
    };
    let tasks = tiles_m * tiles_n;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Where a micro-kernel call writes: `rows × cols` (≤ `MR × NR`) at `c`, row stride `ldc`.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    /// Write `alpha·acc` instead of adding it to `C`.
    overwrite: bool,
}

/// `tile += alpha · a_panel · b_panel` over `kc` pairs, with the fastest kernel the CPU runs.
///
/// # Safety
/// `tile` must describe writable memory of `C`; `a` and `b` hold `kc·MR` and `kc·NR` values.
unsafe fn micro_kernel(a: &[u32], b: &[u32], kc: usize, tile: Tile) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX512-BF16 and AVX512F; the rest is the caller's contract.
        return unsafe { x86::micro_kernel(a, b, kc, tile) };
    }
    // SAFETY: the caller's contract.
    unsafe { micro_kernel_scalar(a, b, kc, tile) }
}

/// The portable kernel: the same bf16 products (exact in f32) summed in f32.
///
/// # Safety
/// As [`micro_kernel`].
unsafe fn micro_kernel_scalar(a: &[u32], b: &[u32], kc: usize, tile: Tile) {
    let lo = |x: u32| f32::from_bits(x << 16);
    let hi = |x: u32| f32::from_bits(x & 0xFFFF_0000);
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let (ap, bp) = (&a[p * MR..][..MR], &b[p * NR..][..NR]);
        for (row, &x) in acc.iter_mut().zip(ap) {
            for (s, &y) in row.iter_mut().zip(bp) {
                *s += lo(x) * lo(y) + hi(x) * hi(y);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(tile.rows) {
        for (j, &s) in row.iter().enumerate().take(tile.cols) {
            // SAFETY: (r, j) is inside the tile.
            let dst = unsafe { &mut *tile.c.add(r * tile.ldc + j) };
            *dst = if tile.overwrite { tile.alpha * s } else { *dst + tile.alpha * s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Tile, MR, NR};

    /// `vdpbf16ps` on a pair of bf16 vectors held as integer vectors.
    #[inline(always)]
    unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        // SAFETY: `__m512i` and `__m512bh` are both 512-bit vectors; the bits are bf16 pairs.
        unsafe { _mm512_dpbf16_ps(acc, std::mem::transmute::<__m512i, __m512bh>(a), std::mem::transmute(b)) }
    }

    /// The AVX512-BF16 kernel: `MR × 2` accumulators, `A` broadcast one `u32` at a time.
    ///
    /// # Safety
    /// The CPU supports AVX512-BF16 and AVX512F; the rest as [`super::micro_kernel`].
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn micro_kernel(a: &[u32], b: &[u32], kc: usize, tile: Tile) {
        let (a, b) = (&a[..kc * MR], &b[..kc * NR]);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            // SAFETY: p·NR + 32 ≤ kc·NR = b.len().
            let (b0, b1) = unsafe {
                let bp = b.as_ptr().add(p * NR);
                (_mm512_loadu_si512(bp.cast()), _mm512_loadu_si512(bp.add(16).cast()))
            };
            let ap = &a[p * MR..][..MR];
            // Constant indices only, so the accumulators stay in registers.
            for r in 0..MR {
                let x = _mm512_set1_epi32(ap[r] as i32);
                // SAFETY: AVX512-BF16 is enabled for this function.
                unsafe {
                    acc[r][0] = dot(acc[r][0], x, b0);
                    acc[r][1] = dot(acc[r][1], x, b1);
                }
            }
        }
        let alpha = _mm512_set1_ps(tile.alpha);
        let mask = |cols: usize| -> __mmask16 { ((1u32 << cols.min(16)) - 1) as __mmask16 };
        let masks = [mask(tile.cols), mask(tile.cols.saturating_sub(16))];
        for r in 0..MR {
            if r >= tile.rows {
                break;
            }
            for h in 0..2 {
                if masks[h] == 0 {
                    continue;
                }
                // SAFETY: row r < tile.rows and the masked lanes are columns < tile.cols.
                unsafe {
                    let dst = tile.c.add(r * tile.ldc + 16 * h);
                    let mut v = _mm512_mul_ps(acc[r][h], alpha);
                    if !tile.overwrite {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[h], dst));
                    }
                    _mm512_mask_storeu_ps(dst, masks[h], v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        for x in [1.0f32, -2.5, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 3.4e38, 1e-40, f32::INFINITY] {
            assert_eq!(x.bf16_bits(), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(f32::NAN.bf16_bits()).is_nan());
    }

    #[test]
    fn matref_checks_bounds() {
        let v = [0f32; 6];
        assert!(MatRef::row_major(&v, 2, 3).is_some());
        assert!(MatRef::row_major(&v, 3, 3).is_none());
        assert!(MatRef::new(&v, 3, 2, 1, 3).is_some());
    }
}
