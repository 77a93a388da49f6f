//! `C = alpha·A·B (+ C)` with both operands rounded to bf16 (nearest-even) and f32 accumulation,
//! on AMX-BF16 tiles (`tdpbf16ps`) where the CPU has them and Linux grants the tile state
//! (`KAIROS_AMX=off` skips them, for A/B timings), else AVX512-BF16 dot products (`vdpbf16ps`).
//!
//! (AMX was opt-in for a while after an empty-prompt encode gave NaN with it; the NaN came from
//! A1111's emphasis rescale `z·mean(z)/mean(z)`, 0/0 when a zero-bias final LayerNorm's output
//! happens to sum to exactly 0 in f32, which either kernel's rounding can hit; fixed in the
//! prompt code by 01f8470. The AMX kernel matches the scalar one within f32 summation order.)
//!
//! Both operands are packed first ([`PackedA`], [`PackedB`]): pairs of consecutive `k` values are
//! stored as one `u32` (the even `k` in the low half, as both instructions pair them); `A` row by
//! row, `B` in panels of 32 columns (the layout an AMX `B` tile and two AVX-512 vectors read). A
//! layer's weight is packed once when it is built and reused by every call; activations are
//! packed per call, one pass over them against `2·M·N·K` FLOPs of compute.
//!
//! Kernels: AMX keeps a 32×32 block of `C` in four tiles; AVX512-BF16 an 8×32 block in 16
//! registers, broadcasting one `u32` of `A` per row and `k` pair. CPUs with neither (and other
//! architectures) run a scalar kernel with the same rounding, so results differ between
//! instruction sets only in the order of the f32 additions; the layers only choose bf16 where
//! [`available`] says a fast kernel runs.

use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of `C` per AVX512/scalar micro-kernel call.
const MR: usize = 8;
/// Columns of `B` per panel (and of `C` per micro-kernel call): two 16-lane vectors.
const NR: usize = 32;
/// `k` pairs per cache block (`B` panel blocks of `KC·NR·4` bytes, in L2). The AMX kernel keeps
/// `C` in its tiles across a block and loads and stores it once per block, which cost more than
/// the blocks' streaming from L2: at the SD1.5 UNet's shapes (`examples/bf16_shapes.rs`, 2 cores
/// with AMX, three alternating runs) 2048 pairs (every layer's whole depth in one block) ran its
/// 3×3 convolutions at 1.01–1.19 TFLOP/s against 0.81–0.93 with 256 (512: 0.90–1.07), and 4096²
/// at 1.07–1.13 against 0.80–0.81.
const KC: usize = 2048;
/// At most this many rows of `C` per parallel task (a task's `A` blocks stay in L2), and columns
/// per task; multiples of both kernels' blocks.
const MC: usize = 160;
const NC: usize = NR * 8;

/// Whether a fast bf16 kernel runs on this CPU: AVX512-BF16 (every CPU with AMX-BF16 has it
/// too), checked once.
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

    /// `dst[q]` = the pair `src[2q]`, `src[2q + 1]` (`src.len() == 2·dst.len()`).
    #[inline(always)]
    fn pairs_of(src: &[Self], dst: &mut [u32]) {
        pairs_scalar(src, dst);
    }

    /// `dst[q]` = the pair `lo[q]`, `hi[q]` (all three of equal length): two rows of a
    /// row-major `B` into one row of pairs.
    #[inline(always)]
    fn interleave(lo: &[Self], hi: &[Self], dst: &mut [u32]) {
        interleave_scalar(lo, hi, dst);
    }
}

/// [`Element::pairs_of`] one element at a time (a plain loop the compiler vectorises).
#[inline(always)]
fn pairs_scalar<T: Element>(src: &[T], dst: &mut [u32]) {
    for (d, x) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = x[0].bf16_bits() as u32 | ((x[1].bf16_bits() as u32) << 16);
    }
}

/// [`Element::interleave`] one element at a time.
#[inline(always)]
fn interleave_scalar<T: Element>(lo: &[T], hi: &[T], dst: &mut [u32]) {
    for ((v, &x), &y) in dst.iter_mut().zip(lo).zip(hi) {
        *v = x.bf16_bits() as u32 | ((y.bf16_bits() as u32) << 16);
    }
}

impl Element for f32 {
    /// With AVX512-BF16, `vcvtne2ps2bf16` rounds 32 values at a time (nearest-even, as
    /// [`Element::bf16_bits`]; it also flushes f32 subnormals, below 1.2e-38, to zero, as the
    /// bf16 dot products treat them anyway). Packing activations is a pass over them per GEMM.
    #[inline(always)]
    fn pairs_of(src: &[f32], dst: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: AVX512-BF16 and AVX512F are present (`available`).
            return unsafe { x86::f32_pairs(src, dst) };
        }
        pairs_scalar(src, dst);
    }

    /// With AVX512-BF16: one `vcvtne2ps2bf16` and a lane permutation per 16 pairs (as
    /// [`Self::pairs_of`]).
    #[inline(always)]
    fn interleave(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if available() && dst.len().is_multiple_of(16) {
            // SAFETY: AVX512-BF16 and AVX512F are present (`available`); whole vectors.
            return unsafe { x86::f32_interleave(lo, hi, dst) };
        }
        interleave_scalar(lo, hi, dst);
    }

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

    /// The pairs `p0..p0 + dst.len()` of row `i` into `dst` (zero past the matrix).
    #[inline(always)]
    fn pairs_into(&self, i: usize, p0: usize, dst: &mut [u32]) {
        // A contiguous row's whole pairs in one pass, an odd last column or a strided row one
        // pair at a time, and the padding past the row (most of a block at attention's d = 40)
        // as zeros.
        let inside = if i < self.rows { self.cols.div_ceil(2).saturating_sub(p0).min(dst.len()) } else { 0 };
        let whole = if self.cs == 1 { (self.cols / 2).saturating_sub(p0).min(inside) } else { 0 };
        if whole > 0 {
            T::pairs_of(&self.data[i * self.rs + 2 * p0..][..2 * whole], &mut dst[..whole]);
        }
        for (q, d) in dst[..inside].iter_mut().enumerate().skip(whole) {
            *d = self.pair(i, p0 + q);
        }
        dst[inside..].fill(0);
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

/// Rows of `A` are padded to a multiple of this (the AMX kernel's block: two 16-row tiles).
const ROW_ALIGN: usize = 32;
/// `k` pairs are padded to a multiple of this (one AMX tile row: 64 bytes).
const PAIR_ALIGN: usize = 16;

/// `(rows, pairs)` after padding, for `rows × k`.
fn padded(rows: usize, k: usize, row_align: usize) -> (usize, usize) {
    (rows.div_ceil(row_align) * row_align, k.div_ceil(2).div_ceil(PAIR_ALIGN) * PAIR_ALIGN)
}

/// The left operand `A` (`M × K`) as `u32` pairs in 16-row × 16-pair blocks (one AMX tile, 1 KiB
/// contiguous; a row-major `A` would put a tile's rows a whole row apart, all in one cache set),
/// blocks ordered along `k` then down the rows; rows padded to [`ROW_ALIGN`] and pairs to
/// [`PAIR_ALIGN`] with zeros (the kernels read whole blocks).
#[derive(Debug, Clone, Default)]
pub struct PackedA {
    m: usize,
    k: usize,
    /// Padded `k` pairs per row.
    pairs: usize,
    data: Lines,
}

/// Rows (and pairs) of an `A` block.
const BLOCK: usize = 16;

/// One 64-byte line of packed pairs.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// Packed pairs on 64-byte boundaries: an AMX tile row is 64 bytes, and tile loads whose rows
/// straddle two cache lines (where the allocator leaves a `Vec<u32>`: 16 bytes past a page for
/// large blocks) ran 2.7× slower in L1 (`examples/amx_probe.rs`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Lines(Vec<Line>);

impl Lines {
    /// Resizes to `len` pairs (a multiple of 16), reusing the allocation, without initialising
    /// them.
    ///
    /// # Safety
    /// The caller writes every element before reading it.
    pub(crate) unsafe fn set_len_uninit(&mut self, len: usize) {
        assert!(len.is_multiple_of(16));
        self.0.clear();
        self.0.reserve(len / 16);
        // SAFETY: within the capacity just reserved; the caller initialises the elements.
        #[allow(clippy::uninit_vec)]
        unsafe {
            self.0.set_len(len / 16)
        };
    }
}

impl std::ops::Deref for Lines {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        // SAFETY: a `Line` is 16 `u32`s with no padding.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 16) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in `deref`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 16) }
    }
}

impl PackedA {
    /// Packs `a` (`M × K`), rounding each element to bf16.
    pub fn new<T: Element>(a: MatRef<'_, T>) -> Self {
        let mut packed = Self::default();
        packed.fill(a, true);
        packed
    }

    /// Packs `a` into this buffer on the calling thread, reusing its allocation: for callers
    /// that pack many small operands inside their own parallel loop (attention's query blocks).
    pub fn repack<T: Element>(&mut self, a: MatRef<'_, T>) {
        self.fill(a, false);
    }

    fn fill<T: Element>(&mut self, a: MatRef<'_, T>, parallel: bool) {
        let pack_rows = |(rb, dst): (usize, &mut [u32])| {
            for r in 0..BLOCK {
                let i = rb * BLOCK + r;
                for (pb, block) in dst.chunks_mut(BLOCK * BLOCK).enumerate() {
                    let row = &mut block[r * BLOCK..][..BLOCK];
                    if i < a.rows {
                        a.pairs_into(i, pb * BLOCK, row);
                    } else {
                        row.fill(0);
                    }
                }
            }
        };
        // Every element is written by `pack_rows` (padding rows and pairs as zeros), so the
        // buffer is not zeroed first (a memset of each GEMM's whole packed activations).
        // SAFETY: `pack_rows` writes each block whole: every 16-pair chunk of its 16 rows.
        let blocks = unsafe { self.resize_uninit(a.rows, a.cols) };
        if parallel {
            blocks.collect::<Vec<_>>().into_par_iter().for_each(pack_rows);
        } else {
            blocks.for_each(pack_rows);
        }
    }

    /// Packs an `m × k` matrix row by row into this buffer on the calling thread, reusing its
    /// allocation: `row(i, dst)` writes row `i` through `dst` (every chunk of it), for producers
    /// that round as they compute (the bf16 attention's probabilities).
    pub fn repack_rows(&mut self, m: usize, k: usize, mut row: impl FnMut(usize, PairRow<'_>)) {
        // SAFETY: each block below is written whole (`rows_block`).
        for (rb, blocks) in unsafe { self.resize_uninit(m, k) } {
            rows_block(rb, blocks, m, &mut row);
        }
    }

    /// Packs an `m × k` matrix row by row, 16-row blocks in parallel: `row(i, dst)` writes row
    /// `i` through `dst` (every chunk of it), for producers that compute the rows as they pack
    /// them (a LayerNorm's normalised tokens, never written out in f32).
    pub fn from_rows(m: usize, k: usize, row: impl Fn(usize, PairRow<'_>) + Sync) -> Self {
        let mut packed = Self::default();
        // SAFETY: each block below is written whole (`rows_block`).
        let blocks: Vec<_> = unsafe { packed.resize_uninit(m, k) }.collect();
        blocks.into_par_iter().for_each(|(rb, blocks)| rows_block(rb, blocks, m, &mut |i, dst| row(i, dst)));
        packed
    }

    /// An `m × k` matrix (`k` a multiple of 32: whole chunks of 16 pairs) whose rows the caller
    /// writes through [`PackedA::writer`], from several threads; the padding rows are zeros.
    pub(crate) fn for_writer(m: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(2 * BLOCK), "bf16 PackedA::for_writer: depth {k} not in whole chunks");
        let mut packed = Self::default();
        // SAFETY: the padding rows are zeroed here; the writer's users write every other row
        // whole (`PackedWriter::write`'s contract).
        for (rb, blocks) in unsafe { packed.resize_uninit(m, k) } {
            if (rb + 1) * BLOCK > m {
                for r in m.saturating_sub(rb * BLOCK)..BLOCK {
                    PairRow { blocks: &mut *blocks, r }.fill(&[]);
                }
            }
        }
        packed
    }

    /// Writes rows of a matrix made by [`PackedA::for_writer`].
    pub(crate) fn writer(&mut self) -> PackedWriter<'_> {
        PackedWriter { data: self.data.as_mut_ptr(), pairs: self.pairs, _packed: std::marker::PhantomData }
    }

    /// Sizes the buffer for `m × k` without initialising it, and returns its 16-row blocks.
    ///
    /// # Safety
    /// The caller writes every block whole before the packed matrix is read.
    unsafe fn resize_uninit(&mut self, m: usize, k: usize) -> impl Iterator<Item = (usize, &mut [u32])> {
        let (rows, pairs) = padded(m, k, ROW_ALIGN);
        // SAFETY: the caller's contract.
        unsafe { self.data.set_len_uninit(rows * pairs) };
        (self.m, self.k, self.pairs) = (m, k, pairs);
        self.data.chunks_mut((BLOCK * pairs).max(1)).enumerate()
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

/// Writes the 16 rows of block `rb` (`blocks`): rows below `m` by `row`, the padding as zeros.
fn rows_block(rb: usize, blocks: &mut [u32], m: usize, row: &mut impl FnMut(usize, PairRow<'_>)) {
    for r in 0..BLOCK {
        let dst = PairRow { blocks: &mut *blocks, r };
        if rb * BLOCK + r < m {
            row(rb * BLOCK + r, dst);
        } else {
            dst.fill(&[]);
        }
    }
}

/// Writes chunks of rows of a [`PackedA`] from several threads ([`PackedA::for_writer`]).
pub(crate) struct PackedWriter<'a> {
    data: *mut u32,
    pairs: usize,
    _packed: std::marker::PhantomData<&'a mut PackedA>,
}

// SAFETY: the writers' callers write disjoint chunks (`write`'s contract).
unsafe impl Sync for PackedWriter<'_> {}

impl PackedWriter<'_> {
    /// Writes `values` (a multiple of 32: whole chunks of 16 pairs), rounded to bf16, into row
    /// `i` from pair `p0` (a multiple of 16).
    ///
    /// # Safety
    /// Row `i` and pairs `p0..p0 + values.len() / 2` lie inside the matrix, and no one else reads
    /// or writes them during the call; the matrix is read only after every row is written.
    pub(crate) unsafe fn write(&self, i: usize, p0: usize, values: &[f32]) {
        debug_assert!(p0.is_multiple_of(BLOCK) && values.len().is_multiple_of(2 * BLOCK));
        for (c, chunk) in values.chunks_exact(2 * BLOCK).enumerate() {
            let p = p0 + BLOCK * c;
            let at = (i / BLOCK) * BLOCK * self.pairs + (p / BLOCK) * BLOCK * BLOCK + (i % BLOCK) * BLOCK;
            // SAFETY: inside the matrix, this caller's alone (the contract).
            f32::pairs_of(chunk, unsafe { std::slice::from_raw_parts_mut(self.data.add(at), BLOCK) });
        }
    }
}

/// One row of a [`PackedA`] being filled ([`PackedA::repack_rows`], [`PackedA::from_rows`]).
pub struct PairRow<'a> {
    /// The row's 16-row block of the packed matrix.
    blocks: &'a mut [u32],
    /// The row within it.
    r: usize,
}

impl PairRow<'_> {
    /// The row's pairs, 16 per chunk, in order: the value pairs `(2q, 2q + 1)` as bf16 bits (the
    /// even one in the low half), then zeros to the padded width.
    pub fn chunks(&mut self) -> impl Iterator<Item = &mut [u32]> + '_ {
        let r = self.r;
        self.blocks.chunks_exact_mut(BLOCK * BLOCK).map(move |block| &mut block[r * BLOCK..][..BLOCK])
    }

    /// Writes the row from `values`, rounded to bf16, zero past them.
    pub fn fill(mut self, values: &[f32]) {
        let row = MatRef::row_major(values, 1, values.len()).expect("one row of its own length");
        for (c, chunk) in self.chunks().enumerate() {
            row.pairs_into(0, BLOCK * c, chunk);
        }
    }
}

/// The right operand `B` (`K × N`): panels of [`NR`] columns, each `[pair][NR]` `u32` pairs,
/// padded with zeros to whole panels and [`PAIR_ALIGN`] pairs.
#[derive(Debug, Clone)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: Lines,
}

impl PackedB {
    /// Packs `b` (`K × N`), rounding each element to bf16.
    pub fn new<T: Element>(b: MatRef<'_, T>) -> Self {
        let bt = b.t();
        let (cols, pairs) = padded(bt.rows, bt.cols, NR);
        // Every element is written below (padding as zeros): no memset of the buffer first.
        let mut data = Lines::default();
        // SAFETY: each panel's loop below writes all of its pairs × NR elements (`pair` and
        // `interleave` give zeros past the matrix) before any is read.
        unsafe { data.set_len_uninit(cols * pairs) };
        if pairs > 0 {
            data.par_chunks_mut(pairs * NR).enumerate().for_each(|(panel, dst)| {
                let col0 = panel * NR;
                if bt.cs == 1 {
                    // Each column of B is contiguous (a Linear weight's row, attention's keys):
                    // each converted to pairs in one pass (vectorised for f32), then transposed
                    // into the panel (pair by pair through `pair` was 7 % of SD1.5's attention).
                    let mut columns = vec![0u32; NR * pairs];
                    for (j, column) in columns.chunks_exact_mut(pairs).enumerate().take(bt.rows.saturating_sub(col0)) {
                        bt.pairs_into(col0 + j, 0, column);
                    }
                    for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
                        for (j, d) in row.iter_mut().enumerate() {
                            *d = columns[j * pairs + p];
                        }
                    }
                } else {
                    // Rows of B are contiguous (activations, im2col): the panel's columns per pair,
                    // two rows of B interleaved (a loop the compiler vectorises where inside).
                    for (p, d) in dst.chunks_mut(NR).enumerate() {
                        let (k0, inside) = (2 * p, col0 + NR <= bt.rows && bt.rs == 1);
                        if inside && k0 + 1 < bt.cols {
                            let lo = &bt.data[k0 * bt.cs + col0..][..NR];
                            let hi = &bt.data[(k0 + 1) * bt.cs + col0..][..NR];
                            T::interleave(lo, hi, d);
                        } else {
                            for (j, v) in d.iter_mut().enumerate() {
                                *v = bt.pair(col0 + j, p);
                            }
                        }
                    }
                }
            });
        }
        Self { n: b.cols, k: b.rows, data }
    }

    /// Packs the `k × n` matrix `rows` describes ([`RowSegments`]), rounding each element to
    /// bf16: for a right operand that is computed rather than stored (a convolution's im2col
    /// columns).
    pub fn from_rows(k: usize, n: usize, rows: &impl RowSegments) -> Self {
        let (cols, pairs) = padded(n, k, NR);
        let mut data = Lines::default();
        // SAFETY: each panel's loop below writes all of its pairs × NR elements (the padding
        // pairs as zeros) before any is read.
        unsafe { data.set_len_uninit(cols * pairs) };
        if pairs > 0 {
            // Groups of panels, each group walking the rows once: consecutive segments of a row
            // are consecutive in memory (an im2col row is a shifted input row), where one
            // panel at a time would visit every input channel's page for each 32 columns.
            // Enough groups for every thread to have several (small maps have few panels).
            let group_len = (cols / NR / (4 * rayon::current_num_threads())).clamp(1, PANEL_GROUP);
            data.par_chunks_mut(group_len * pairs * NR).enumerate().for_each(|(group, dst)| {
                let (mut lo_buf, mut hi_buf) = ([0f32; NR], [0f32; NR]);
                let inside = k.div_ceil(2);
                for p in 0..inside {
                    for (g, panel) in dst.chunks_mut(pairs * NR).enumerate() {
                        let col0 = (group * group_len + g) * NR;
                        let width = NR.min(n - col0);
                        let d = &mut panel[p * NR..][..NR];
                        if width == NR && 2 * p + 1 < k {
                            let lo = rows.segment(2 * p, col0, &mut lo_buf);
                            let hi = rows.segment(2 * p + 1, col0, &mut hi_buf);
                            f32::interleave(lo, hi, d);
                        } else {
                            // The last panel (zero past n) or the odd k's last row (zero
                            // partner): through NR-wide buffers whose tails stay zero.
                            let mut scratch = [0f32; NR];
                            let (mut lo, mut hi) = ([0f32; NR], [0f32; NR]);
                            lo[..width].copy_from_slice(rows.segment(2 * p, col0, &mut scratch[..width]));
                            if 2 * p + 1 < k {
                                hi[..width].copy_from_slice(rows.segment(2 * p + 1, col0, &mut scratch[..width]));
                            }
                            f32::interleave(&lo, &hi, d);
                        }
                    }
                }
                for panel in dst.chunks_mut(pairs * NR) {
                    panel[inside * NR..].fill(0);
                }
            });
        }
        Self { n, k, data }
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

/// Panels [`PackedB::from_rows`] packs together at most (256 columns).
const PANEL_GROUP: usize = 8;

/// A matrix read by row segments, for [`PackedB::from_rows`].
pub trait RowSegments: Sync {
    /// Elements `(i, j0..j0 + buf.len())` (inside the matrix): a slice of memory the matrix
    /// already lies in where it can, else `buf` filled with them.
    fn segment<'a>(&'a self, i: usize, j0: usize, buf: &'a mut [f32]) -> &'a [f32];
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

/// The micro-kernel a GEMM runs, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// AMX-BF16 tiles: 32×32 blocks of C.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX512-BF16: 8×32 blocks.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Portable: 8×32 blocks.
    Scalar,
}

impl Kernel {
    fn get() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if amx::enabled() {
                return Kernel::Amx;
            }
            if available() {
                return Kernel::Avx512;
            }
        }
        Kernel::Scalar
    }

    /// Rows of C per call.
    fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => ROW_ALIGN,
            _ => MR,
        }
    }
}

/// Which instruction set the GEMM runs on this CPU: `"amx-bf16"` (unless `KAIROS_AMX=off`),
/// `"avx512-bf16"` or `"scalar"`.
pub fn kernel_name() -> &'static str {
    match Kernel::get() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => "amx-bf16",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => "avx512-bf16",
        Kernel::Scalar => "scalar",
    }
}

/// `C = alpha·A·B`, or `C += alpha·A·B` when `accumulate`, for `C` `M × N` row-major with row
/// stride `ldc` (`c` must hold `(M-1)·ldc + N` elements). `parallel` splits `C` into blocks
/// over the rayon pool (the caller's own parallel loops pass `false`).
///
/// Panics if the operands' depths differ or `c` is too short: callers size them from the same
/// shapes (a mismatch is a bug in kairos, not bad input).
pub fn gemm(a: &PackedA, b: &PackedB, c: &mut [f32], ldc: usize, alpha: f32, accumulate: bool, parallel: bool) {
    gemm_with(Kernel::get(), a, b, c, ldc, alpha, accumulate, parallel);
}

/// [`gemm`] on `kernel` (which must run on this CPU).
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    kernel: Kernel,
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) {
    let (m, n) = (a.m, b.n);
    assert_eq!(a.k, b.k, "bf16 gemm: A is {}×{} but B is {}×{}", a.m, a.k, b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "bf16 gemm: C too short for {m}×{n} (ldc {ldc})");
    // Rows split evenly into tasks of at most MC (whole 32-row blocks): 320 channels as 2 × 160,
    // not 96 + 96 + 96 + 32 (the UNet's 3×3 convolutions 5–15 % faster, bf16_shapes).
    let mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(ROW_ALIGN);
    let (tiles_m, tiles_n) = (m.div_ceil(mc), n.div_ceil(NC));
    let out = OutPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (tm, tn) = (t / tiles_n, t % tiles_n);
        let (m0, n0) = (tm * mc, tn * NC);
        let block = Block { rows: m0..(m0 + mc).min(m), cols: n0..(n0 + NC).min(n), origin: (0, 0) };
        // SAFETY: the block lies inside C (checked against c.len() above); tasks own disjoint
        // blocks.
        unsafe { gemm_region(kernel, a, b, block, out, ldc, alpha, accumulate) }
    };
    let tasks = tiles_m * tiles_n;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// `C = alpha·A·B`, or `C += alpha·A·B` when `accumulate`, for rows `rows` of `A` and columns
/// `cols` of `B` only, on the calling thread: `c` holds just that block of `C` (element
/// `(i − rows.start, j − cols.start)` at that row times `ldc` plus that column). `rows.start`
/// must be a multiple of 32 and `cols.start` of 32 (whole kernel blocks and `B` panels): for
/// callers that consume each block of a product while it is in cache (GEGLU's gating).
///
/// Panics on a block outside the operands, a misaligned start, or `c` too short.
#[allow(clippy::too_many_arguments)]
pub fn gemm_block(
    a: &PackedA,
    b: &PackedB,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    assert_eq!(a.k, b.k, "bf16 gemm: A is {}×{} but B is {}×{}", a.m, a.k, b.k, b.n);
    assert!(
        rows.start <= rows.end && rows.end <= a.m && cols.start <= cols.end && cols.end <= b.n,
        "bf16 gemm_block: block outside the operands"
    );
    assert!(
        rows.start.is_multiple_of(ROW_ALIGN) && cols.start.is_multiple_of(NR),
        "bf16 gemm_block: misaligned block start"
    );
    let (m, n) = (rows.len(), cols.len());
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "bf16 gemm_block: C too short for {m}×{n} (ldc {ldc})");
    let block = Block { origin: (rows.start, cols.start), rows, cols };
    // SAFETY: c holds the block (checked above).
    unsafe { gemm_region(Kernel::get(), a, b, block, OutPtr(c.as_mut_ptr()), ldc, alpha, accumulate) }
}

/// A 32×32 block of f32 on 64-byte boundaries (row stride 32), like the packed operands: the
/// AMX kernel's block of `C`.
#[repr(C, align(64))]
pub(crate) struct Block32(pub(crate) [f32; 32 * NR]);

/// Whether [`amx_block`] runs here: AMX-BF16 granted and not turned off (`KAIROS_AMX=off`).
pub(crate) fn amx_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx::enabled();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One 32×32 block of a product whose left operand is read in place rather than packed (the
/// direct convolution's shifted input rows), into `out` (rows of `a`, columns `32·panel..` of
/// `b`), overwritten: step `(a_offset, b_offset)` multiplies the 16 × 64-byte tiles that many
/// bytes past `a[0]` and `a[1]` (rows `a_stride` bytes apart) with the panel's 16 pair rows that
/// many bytes into it.
///
/// # Safety
/// [`amx_enabled`]; every step's `A` tiles are readable memory of bf16 pairs; every `b_offset`
/// is a multiple of `64·32` bytes at most `(pairs − 16)·128` of `b`'s padded depth.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn amx_block(
    a: [*const u32; 2],
    a_stride: usize,
    b: &PackedB,
    panel: usize,
    steps: impl Iterator<Item = (usize, usize)>,
    out: &mut Block32,
) {
    let panel_len = padded(b.n, b.k, NR).1 * NR;
    assert!(panel < b.n.div_ceil(NR), "bf16 amx_block: panel {panel} outside B");
    let operands = amx::Operands { a, a_stride, b: b.data[panel * panel_len..].as_ptr() };
    let tile = Tile { c: out.0.as_mut_ptr(), ldc: NR, rows: 32, cols: NR, alpha: 1.0, overwrite: true };
    // SAFETY: the caller's contract; out is a whole aligned 32×32 block.
    unsafe { amx::block_kernel(operands, steps, tile, true) }
}

/// Rows and columns of `C` one call computes, and the element `origin` that `out` points at.
struct Block {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    origin: (usize, usize),
}

/// The blocked loops over one block of `C`, on the calling thread.
///
/// # Safety
/// `out` points at element `origin` of a `C` (row stride `ldc`) that holds the whole block, which
/// no one else accesses during the call; the block lies inside the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_region(
    kernel: Kernel,
    a: &PackedA,
    b: &PackedB,
    block: Block,
    out: OutPtr,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    let (pairs, mr) = (a.pairs, kernel.rows());
    let Block { rows: std::ops::Range { start: m0, end: m1 }, cols: std::ops::Range { start: n0, end: n1 }, origin } =
        block;
    if pairs == 0 {
        // K = 0: the product is zero.
        if !accumulate {
            for i in m0..m1 {
                // SAFETY: row i's columns n0..n1 lie inside the block (the caller's contract).
                unsafe { std::slice::from_raw_parts_mut(out.at((i - origin.0) * ldc + n0 - origin.1), n1 - n0) }
                    .fill(0.0);
            }
        }
        return;
    }
    for k0 in (0..pairs).step_by(KC) {
        let kc = KC.min(pairs - k0);
        for j in (n0..n1).step_by(NR) {
            let b_block = &b.data[(j / NR) * pairs * NR + k0 * NR..][..kc * NR];
            for i in (m0..m1).step_by(mr) {
                // Rows i..i+mr of A from pair k0 on (the padding keeps them inside): row r
                // (< mr) and pair q (< kc) at ((r/16)·pairs + q/16)·256 + (r%16)·16 + q%16.
                let start = ((i / BLOCK) * pairs + k0) * BLOCK + (i % BLOCK) * BLOCK;
                let a_block = &a.data[start..];
                let tile = Tile {
                    c: out.at((i - origin.0) * ldc + j - origin.1),
                    ldc,
                    rows: mr.min(m1 - i),
                    cols: NR.min(n1 - j),
                    alpha,
                    overwrite: k0 == 0 && !accumulate,
                };
                let panels = Panels { a: a_block, row_blocks: BLOCK * pairs, b: b_block, kc };
                // SAFETY: (i, j) is inside the block and the tile's rows × cols within it (the
                // caller's contract).
                unsafe {
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Amx => amx::micro_kernel(panels, tile),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512 => x86::micro_kernel(panels, tile),
                        Kernel::Scalar => micro_kernel_scalar(panels, tile),
                    }
                }
            }
        }
    }
}

/// A micro-kernel's operands: `A` from its first row and pair on, in [`PackedA`]'s blocks
/// (`row_blocks` apart for the next 16 rows), and a `kc × NR` block of a `B` panel (`kc` a
/// multiple of [`PAIR_ALIGN`]).
#[derive(Clone, Copy)]
struct Panels<'a> {
    a: &'a [u32],
    row_blocks: usize,
    b: &'a [u32],
    kc: usize,
}

/// Where a micro-kernel call writes: `rows × cols` (≤ the kernel's block) at `c`, row stride `ldc`.
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

impl Tile {
    /// Writes `acc` (row stride `NR`) into the tile.
    ///
    /// # Safety
    /// The tile describes writable memory.
    unsafe fn store(self, acc: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present; the caller's contract.
            return unsafe { x86::store(self, acc) };
        }
        for r in 0..self.rows {
            for j in 0..self.cols {
                let s = self.alpha * acc[r * NR + j];
                // SAFETY: (r, j) is inside the tile.
                let dst = unsafe { &mut *self.c.add(r * self.ldc + j) };
                *dst = if self.overwrite { s } else { *dst + s };
            }
        }
    }
}

/// The portable kernel: the same bf16 products (exact in f32) summed in f32.
///
/// # Safety
/// `tile` describes writable memory of `C`.
unsafe fn micro_kernel_scalar(panels: Panels<'_>, tile: Tile) {
    let lo = |x: u32| f32::from_bits(x << 16);
    let hi = |x: u32| f32::from_bits(x & 0xFFFF_0000);
    let mut acc = [0f32; MR * NR];
    // MR ≤ 16 rows starting at row 0 or 8 of a block: all in one row of blocks.
    for (r, row) in acc.chunks_mut(NR).enumerate() {
        for (q, b) in panels.b.chunks(NR).take(panels.kc).enumerate() {
            let x = panels.a[(q / BLOCK) * BLOCK * BLOCK + r * BLOCK + q % BLOCK];
            for (s, &y) in row.iter_mut().zip(b) {
                *s += lo(x) * lo(y) + hi(x) * hi(y);
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { tile.store(&acc) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Panels, Tile, BLOCK, MR, NR};

    /// `vdpbf16ps` on bf16 pairs held as integer vectors.
    #[inline(always)]
    unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        // SAFETY: `__m512i` and `__m512bh` are both 512-bit vectors; the bits are bf16 pairs.
        unsafe {
            _mm512_dpbf16_ps(
                acc,
                std::mem::transmute::<__m512i, __m512bh>(a),
                std::mem::transmute::<__m512i, __m512bh>(b),
            )
        }
    }

    /// [`Tile::store`] in 16-lane vectors, masked past the tile's columns (the same products and
    /// sums: the scalar loop ran at a few % of a bf16 UNet call, through the AMX kernel's buffer).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the tile describes writable memory; `acc` holds `tile.rows`
    /// rows of `NR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store(tile: Tile, acc: &[f32]) {
        assert!(acc.len() >= tile.rows * NR && tile.cols <= NR);
        let alpha = _mm512_set1_ps(tile.alpha);
        for r in 0..tile.rows {
            for j in (0..tile.cols).step_by(16) {
                let mask: __mmask16 = if tile.cols - j >= 16 { !0 } else { (1 << (tile.cols - j)) - 1 };
                // SAFETY: acc row r holds NR ≥ j + 16 values; the masked lanes of dst are inside
                // the tile (the caller's contract).
                unsafe {
                    let s = _mm512_mul_ps(_mm512_loadu_ps(acc.as_ptr().add(r * NR + j)), alpha);
                    let dst = tile.c.add(r * tile.ldc + j);
                    let v = if tile.overwrite { s } else { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), s) };
                    _mm512_mask_storeu_ps(dst, mask, v);
                }
            }
        }
    }

    /// [`super::Element::pairs_of`] for f32: 32 values per `vcvtne2ps2bf16`, the tail through masks.
    ///
    /// # Safety
    /// The CPU supports AVX512-BF16 and AVX512F; `src.len() == 2·dst.len()`.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn f32_pairs(src: &[f32], dst: &mut [u32]) {
        debug_assert_eq!(src.len(), 2 * dst.len());
        let n = dst.len();
        let mut q = 0;
        // SAFETY (both loops): pairs q..q+16 read src[2q..2q+32] and write dst[q..q+16], inside
        // both slices (full vectors while q + 16 ≤ n, masked to the remaining pairs after).
        while q + 16 <= n {
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(2 * q));
                let hi = _mm512_loadu_ps(src.as_ptr().add(2 * q + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(q).cast(), v);
            }
            q += 16;
        }
        if q < n {
            let rest = n - q;
            let (m_lo, m_hi) = (
                (1u32 << (2 * rest).min(16)).wrapping_sub(1) as __mmask16,
                if 2 * rest > 16 { ((1u32 << (2 * rest - 16)) - 1) as __mmask16 } else { 0 },
            );
            unsafe {
                let lo = _mm512_maskz_loadu_ps(m_lo, src.as_ptr().add(2 * q));
                let hi = _mm512_maskz_loadu_ps(m_hi, src.as_ptr().add(2 * q + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(q).cast(), ((1u32 << rest) - 1) as __mmask16, v);
            }
        }
    }

    /// [`super::Element::interleave`] for f32, 16 pairs per vector.
    ///
    /// # Safety
    /// The CPU supports AVX512-BF16 and AVX512F; `lo`, `hi` and `dst` have one length, a
    /// multiple of 16.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    pub(super) unsafe fn f32_interleave(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        debug_assert!(lo.len() == dst.len() && hi.len() == dst.len() && dst.len().is_multiple_of(16));
        // Lanes 0..16 of the conversion hold lo's bf16 values, 16..32 hi's: pair them up.
        let index = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        for q in (0..dst.len()).step_by(16) {
            // SAFETY: q + 16 ≤ len for all three slices.
            unsafe {
                let converted =
                    _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi.as_ptr().add(q)), _mm512_loadu_ps(lo.as_ptr().add(q)));
                let pairs = _mm512_permutexvar_epi16(index, std::mem::transmute::<__m512bh, __m512i>(converted));
                _mm512_storeu_si512(dst.as_mut_ptr().add(q).cast(), pairs);
            }
        }
    }

    /// The AVX512-BF16 kernel: `MR × 2` accumulators, `A` broadcast one `u32` at a time.
    ///
    /// # Safety
    /// The CPU supports AVX512-BF16 and AVX512F; `tile` describes writable memory of `C`.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn micro_kernel(panels: Panels<'_>, tile: Tile) {
        let Panels { a, b, kc, .. } = panels;
        let b = &b[..kc * NR];
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // MR = 8 rows starting at row 0 or 8 of a 16×16 block: one row of blocks.
        for (blk, b_blk) in a.chunks(BLOCK * BLOCK).zip(b.chunks_exact(BLOCK * NR)) {
            for q in 0..BLOCK {
                // SAFETY: q·NR + 32 ≤ BLOCK·NR = b_blk.len().
                let (b0, b1) = unsafe {
                    let bp = b_blk.as_ptr().add(q * NR);
                    (_mm512_loadu_si512(bp.cast()), _mm512_loadu_si512(bp.add(16).cast()))
                };
                // Constant indices only (the loop is unrolled), so the accumulators stay in registers.
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(blk[r * BLOCK + q] as i32);
                    // SAFETY: AVX512-BF16 is enabled for this function.
                    unsafe {
                        acc[0] = dot(acc[0], x, b0);
                        acc[1] = dot(acc[1], x, b1);
                    }
                }
            }
        }
        let mut out = [0f32; MR * NR];
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: out holds MR rows of NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr().add(r * NR), acc[0]);
                _mm512_storeu_ps(out.as_mut_ptr().add(r * NR + 16), acc[1]);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { tile.store(&out) }
    }
}

/// The AMX-BF16 kernel: a 32×32 block of C in four 16×16 f32 tiles, fed two 16-row tiles of `A`
/// and two 16-column tiles of `B` per 32 `k`.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    use std::cell::Cell;
    use std::sync::OnceLock;

    use super::{Block32, Panels, Tile, BLOCK, NR, PAIR_ALIGN, ROW_ALIGN};

    /// Whether the GEMM runs on AMX: [`available`], unless `KAIROS_AMX=off` (read once).
    pub(super) fn enabled() -> bool {
        static ENABLED: OnceLock<bool> = OnceLock::new();
        *ENABLED.get_or_init(|| !std::env::var("KAIROS_AMX").is_ok_and(|v| v == "off") && available())
    }

    /// Whether AMX-BF16 can run here: the CPU has it (CPUID) and Linux grants this process the
    /// tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), checked once.
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let cpu = std::arch::x86_64::__cpuid(0).eax >= 7 && {
                let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
                edx & (1 << 22) != 0 && edx & (1 << 24) != 0
            };
            cpu && request_tile_permission()
        })
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux ≥ 5.16 hands out the 8 KiB
    /// tile state per process on request.
    #[cfg(target_os = "linux")]
    fn request_tile_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments; failure is reported by the return value.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_permission() -> bool {
        false
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    thread_local! {
        /// Whether this thread has loaded [`CONFIG`] (tile configuration is per thread).
        static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    }

    /// The 32×32 kernel.
    ///
    /// # Safety
    /// [`enabled`] returned true; `tile` describes writable memory of `C`; `panels.a` holds two
    /// rows of blocks (32 rows) of `kc` pairs and `panels.b` `kc` pairs of an `NR`-column panel,
    /// `kc` a multiple of 16.
    pub(super) unsafe fn micro_kernel(panels: Panels<'_>, tile: Tile) {
        const _: () = assert!(ROW_ALIGN == 32 && NR == 32 && PAIR_ALIGN == 16);
        let Panels { a, row_blocks, b, kc } = panels;
        assert!(kc % PAIR_ALIGN == 0 && a.len() >= row_blocks + kc * BLOCK && b.len() >= kc * NR);
        // Step s reads the 16×16 blocks at pair s of both row blocks and rows s..s+16 of the panel.
        let operands =
            Operands { a: [a.as_ptr(), a.as_ptr().wrapping_add(row_blocks)], a_stride: BLOCK * 4, b: b.as_ptr() };
        let steps = (0..kc).step_by(PAIR_ALIGN).map(|s| (s * BLOCK * 4, s * NR * 4));
        // SAFETY: every step's tiles lie inside a and b (asserted above); the caller's contract.
        unsafe { block_kernel(operands, steps, tile, false) }
    }

    /// Where [`block_kernel`] reads: the first row of each 16-row `A` tile (`a_stride` bytes
    /// between rows) and the `B` panel (rows of `NR` pairs).
    #[derive(Clone, Copy)]
    pub(crate) struct Operands {
        pub a: [*const u32; 2],
        pub a_stride: usize,
        pub b: *const u32,
    }

    /// A 32×32 block of `C` over the given steps: each `(a_offset, b_offset)` (bytes) multiplies
    /// the two `A` tiles (16 rows × 64 bytes) that far into `operands.a` with the two `B` tiles
    /// (16 rows of the panel's 32 pairs) that far into `operands.b`, accumulating in f32.
    ///
    /// # Safety
    /// [`enabled`] returned true; every step's tiles are readable; `tile` describes writable
    /// memory of `C`; with `prefetch`, so is every step's `B` tiles' memory (they are prefetched
    /// one step ahead).
    #[inline(always)]
    pub(crate) unsafe fn block_kernel(
        operands: Operands,
        steps: impl Iterator<Item = (usize, usize)>,
        tile: Tile,
        prefetch: bool,
    ) {
        if !CONFIGURED.get() {
            // SAFETY: CONFIG is a valid palette-1 configuration; AMX is enabled (caller).
            unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
            CONFIGURED.set(true);
        }
        // Tiles of C straight from and to C only where its rows lie on 64-byte boundaries, as
        // the operands do (else the aligned buffer: 4096² 1.87 against 1.63 TFLOP/s, bf16_shapes).
        let aligned = (tile.c as usize).is_multiple_of(64) && tile.ldc.is_multiple_of(16);
        let direct = tile.rows == 32 && tile.cols == 32 && tile.alpha == 1.0 && aligned;
        // A partial tile goes through this buffer, which the tile stores below fill entirely;
        // it is not zeroed first (a 4 KiB memset per call cost more than the products of a
        // short depth, e.g. attention's q·kᵀ).
        let mut buf = std::mem::MaybeUninit::<Block32>::uninit();
        let (c, ldc) = if direct { (tile.c, tile.ldc) } else { (buf.as_mut_ptr().cast::<f32>(), NR) };
        let c_stride = ldc * 4;
        let (a_stride, b_stride) = (operands.a_stride, NR * 4);
        let [a0, a1] = operands.a.map(|p| p.cast::<u8>());
        let b = operands.b.cast::<u8>();
        // SAFETY: every tile load/store touches 16 rows × 64 bytes inside the operands or the
        // C block (rows 0..32 and columns 0..32 of c, row stride ldc), per the contract.
        unsafe {
            let c_lo = c.add(16 * ldc);
            if direct && !tile.overwrite {
                asm!(
                    "tileloadd tmm0, [{c} + {s}]",
                    "tileloadd tmm1, [{c} + {s} + 64]",
                    "tileloadd tmm2, [{d} + {s}]",
                    "tileloadd tmm3, [{d} + {s} + 64]",
                    c = in(reg) c, d = in(reg) c_lo, s = in(reg) c_stride,
                    options(nostack, readonly),
                );
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            // Each load comes just before the first product that reads it: tile registers are
            // not renamed, so a load waits for the products still reading its register, and
            // four loads ahead of four products serialised every step's load latency with its
            // compute (interleaved: 3×3 convolutions and 4096² 12–20 % faster, bf16_shapes).
            // With `prefetch`, the next step's `B` tiles are prefetched into L1: with no tile
            // register free to load ahead, a `B` load has one product's time (16 cycles) before
            // the product that reads it, and the direct convolution's weight panels, read
            // across the taps, stream from L2 (3×3 convolutions 640@32² and 1280@8² 15–27 %
            // faster, examples/conv_bf16; the same for `A` gained nothing). The packed GEMM's
            // operands are read in order, and there it cost 3–15 % (bf16_shapes).
            let mut steps = steps.peekable();
            while let Some((a_offset, b_offset)) = steps.next() {
                if let Some(&(_, b_next)) = steps.peek().filter(|_| prefetch) {
                    for r in 0..16 {
                        _mm_prefetch::<_MM_HINT_T0>(b.add(b_next + r * b_stride).cast());
                        _mm_prefetch::<_MM_HINT_T0>(b.add(b_next + r * b_stride + 64).cast());
                    }
                }
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}]",
                    "tileloadd tmm6, [{b} + {sb}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b} + {sb} + 64]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(a_offset), a1 = in(reg) a1.add(a_offset), sa = in(reg) a_stride,
                    b = in(reg) b.add(b_offset), sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c} + {s}], tmm0",
                "tilestored [{c} + {s} + 64], tmm1",
                "tilestored [{d} + {s}], tmm2",
                "tilestored [{d} + {s} + 64], tmm3",
                c = in(reg) c, d = in(reg) c_lo, s = in(reg) c_stride,
                options(nostack),
            );
        }
        if !direct {
            // SAFETY: the four tile stores wrote all 32 × 32 values of buf; the caller's contract.
            unsafe { tile.store(&buf.assume_init_ref().0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniform;

    #[test]
    fn rounding_is_nearest_even() {
        for x in [1.0f32, -2.5, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 3.4e38, 1e-40, f32::INFINITY] {
            assert_eq!(x.bf16_bits(), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(f32::NAN.bf16_bits()).is_nan());
    }

    /// The vectorised pair packing (`vcvtne2ps2bf16` where the CPU has it) against
    /// `bf16_bits` element by element, for every tail length around whole vectors, on ties,
    /// infinities and a NaN (subnormals excepted: the instruction flushes them, documented).
    #[test]
    fn pairs_of_matches_bf16_bits() {
        let specials =
            [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, f32::INFINITY, f32::NEG_INFINITY, 3.4e38, 0.0, -0.0];
        for pairs in 0..40 {
            let src: Vec<f32> = uniform(7 + pairs as u64, 2 * pairs)
                .iter()
                .enumerate()
                .map(|(i, &x)| if i % 5 == 0 { specials[i % specials.len()] } else { 1e3 * x })
                .collect();
            let mut got = vec![0u32; pairs];
            f32::pairs_of(&src, &mut got);
            for (q, &g) in got.iter().enumerate() {
                let want = src[2 * q].bf16_bits() as u32 | ((src[2 * q + 1].bf16_bits() as u32) << 16);
                assert_eq!(g, want, "{pairs} pairs, pair {q}: {} {}", src[2 * q], src[2 * q + 1]);
            }
        }
        for len in [16usize, 32, 48] {
            let (lo, hi) = (uniform(60 + len as u64, len), uniform(61 + len as u64, len));
            let mut got = vec![0u32; len];
            f32::interleave(&lo, &hi, &mut got);
            for q in 0..len {
                assert_eq!(
                    got[q],
                    lo[q].bf16_bits() as u32 | ((hi[q].bf16_bits() as u32) << 16),
                    "interleave {len}: {q}"
                );
            }
        }
        let mut nan = [0u32; 1];
        f32::pairs_of(&[f32::NAN, 1.0], &mut nan);
        assert!(bf16::from_bits(nan[0] as u16).is_nan());
    }

    /// A depth of 0: the product is zero, so overwriting writes zeros over `C`'s block (and no
    /// further) and accumulating leaves `C` as it was, through `gemm` and `gemm_block`.
    #[test]
    fn zero_depth_writes_zeros_or_nothing() {
        let (m, n, ldc) = (40usize, 35usize, 37usize);
        let (pa, pb) = (
            PackedA::new(MatRef::row_major(&[0f32; 0], m, 0).unwrap()),
            PackedB::new(MatRef::row_major(&[0f32; 0], 0, n).unwrap()),
        );
        for accumulate in [false, true] {
            let mut c = vec![7f32; m * ldc];
            gemm(&pa, &pb, &mut c, ldc, 1.0, accumulate, true);
            for (i, &x) in c.iter().enumerate() {
                let want = if !accumulate && i % ldc < n { 0.0 } else { 7.0 };
                assert_eq!(x, want, "gemm accumulate={accumulate} element {i}");
            }
            let mut c = vec![7f32; 8 * ldc];
            gemm_block(&pa, &pb, 32..40, 32..35, &mut c, ldc, 1.0, accumulate);
            for (i, &x) in c.iter().enumerate() {
                let want = if !accumulate && i % ldc < 3 { 0.0 } else { 7.0 };
                assert_eq!(x, want, "gemm_block accumulate={accumulate} element {i}");
            }
        }
    }

    #[test]
    fn matref_checks_bounds() {
        let v = [0f32; 6];
        assert!(MatRef::row_major(&v, 2, 3).is_some());
        assert!(MatRef::row_major(&v, 3, 3).is_none());
        assert!(MatRef::new(&v, 3, 2, 1, 3).is_some());
    }

    /// The packers leave every padding entry (rows past `M`, columns past `N`, pairs past `K`)
    /// zero: the kernels read whole blocks and rely on it (a NaN there would survive 0·NaN).
    #[test]
    fn packing_pads_with_zeros() {
        let (m, n, k) = (77, 45, 37);
        let a = vec![f32::NAN; m * k];
        let b = vec![f32::NAN; k * n];
        let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
        let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
        // B stored transposed (columns contiguous: a Linear weight, attention's keys) packs alike.
        let pbt = PackedB::new(MatRef::row_major(&b, n, k).unwrap().t());
        // Tile rows start on cache lines.
        assert!(pa.data.as_ptr().addr().is_multiple_of(64) && pb.data.as_ptr().addr().is_multiple_of(64));
        // Every value is NaN, so a packed pair inside the matrix is two NaNs, or a half pair
        // (the odd K's last: high half zero); padding is zero.
        let expected = |x: u32, inside: bool, half: bool| match (inside, half) {
            (false, _) => x == 0,
            (true, true) => (x & 0xFFFF) != 0 && (x >> 16) == 0,
            (true, false) => (x & 0xFFFF) != 0 && (x >> 16) != 0,
        };
        for (idx, &x) in pa.data.iter().enumerate() {
            let (row, pair) = (
                (idx / (BLOCK * pa.pairs)) * BLOCK + idx % (BLOCK * BLOCK) / BLOCK,
                (idx / (BLOCK * BLOCK)) % (pa.pairs / BLOCK) * BLOCK + idx % BLOCK,
            );
            let inside = row < m && pair < k.div_ceil(2);
            assert!(expected(x, inside, pair == k / 2), "A ({row}, {pair}): {x:#x}");
        }
        assert_eq!(pb.data.len(), pbt.data.len());
        for (idx, (&x, &y)) in pb.data.iter().zip(pbt.data.iter()).enumerate() {
            let pairs = pb.data.len() / (n.div_ceil(NR) * NR);
            let (col, pair) = ((idx / (pairs * NR)) * NR + idx % NR, (idx / NR) % pairs);
            let inside = col < n && pair < k.div_ceil(2);
            assert!(expected(x, inside, pair == k / 2), "B ({pair}, {col}): {x:#x}");
            assert!(expected(y, inside, pair == k / 2), "Bᵀ view ({pair}, {col}): {y:#x}");
        }
    }

    /// The AMX kernel against the scalar one and an f64 reference on the bf16-rounded inputs, on
    /// the text encoder's ragged shapes (77 and 154 rows: not multiples of the 32-row block;
    /// K = 768 and 3072: several cache blocks; N not a multiple of 32 too), 330 rows split into
    /// three row tasks (128 + 128 + 74), overwriting a `C`
    /// filled with NaN, accumulating onto a bias, and with alpha ≠ 1 (the buffered path), on one
    /// thread and on the rayon pool. Skipped (passes with a note) where AMX does not run.
    ///
    /// Tolerance: both kernels multiply bf16 pairs exactly in f32 (8 × 8 significant bits) and
    /// differ only in the order of the f32 additions, so each lies within the recursive-summation
    /// bound (K + 1)·2⁻²⁴·(Σ|aₖbₖ| + |C|) of the exact sum (γ_n for n = K terms plus C, to first
    /// order); a wrong index or a missing block is off by O(|aₖbₖ|), far above it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_matches_scalar_on_ragged_shapes() {
        if !amx::available() {
            println!("note: AMX-BF16 does not run here (CPU or OS permission); test skipped");
            return;
        }
        let round = |x: f32| f32::from_bits((x.bf16_bits() as u32) << 16) as f64;
        for (case, &(m, n, k)) in
            [(77usize, 768usize, 768usize), (154, 200, 3072), (77, 45, 37), (33, 100, 530), (330, 45, 70)]
                .iter()
                .enumerate()
        {
            let a: Vec<f32> = uniform(1 + case as u64, m * k).iter().map(|x| 4.0 * x).collect();
            let b = uniform(100 + case as u64, k * n);
            let bias = uniform(200 + case as u64, n);
            let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
            let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
            // Σₖ aₖbₖ and Σₖ|aₖbₖ| in f64 on the rounded inputs (exact products).
            let reference: Vec<(f64, f64)> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    (0..k).fold((0.0, 0.0), |(s, t), kk| {
                        let p = round(a[i * k + kk]) * round(b[kk * n + j]);
                        (s + p, t + p.abs())
                    })
                })
                .collect();
            // C on 64-byte rows (whole tiles straight to and from C) and off them (through the
            // kernel's buffer).
            for (aligned, accumulate, alpha, parallel) in [
                (false, false, 1.0f32, true),
                (true, false, 1.0, true),
                (false, true, 1.0, true),
                (true, true, 1.0, false),
                (false, true, -0.75, false),
                (true, false, 0.5, false),
            ] {
                let ldc = if aligned { n.next_multiple_of(16) + 16 } else { n + 5 };
                let c0: Vec<f32> = (0..m * ldc)
                    .map(|i| if accumulate { bias[(i % ldc) % n] } else { f32::from_bits(0x7FC0_1234) })
                    .collect();
                let run = |kernel| {
                    let mut buf = vec![0f32; c0.len() + 16];
                    let at = buf.as_ptr().align_offset(64) + usize::from(!aligned);
                    let c = &mut buf[at..][..c0.len()];
                    c.copy_from_slice(&c0);
                    gemm_with(kernel, &pa, &pb, c, ldc, alpha, accumulate, parallel);
                    c.to_vec()
                };
                let (got, scalar) = (run(Kernel::Amx), run(Kernel::Scalar));
                let label = format!("case {case} {m}x{n}x{k} aligned={aligned} accumulate={accumulate} alpha={alpha}");
                let mut worst = 0f64;
                for i in 0..m {
                    // The padding columns between rows are untouched.
                    for j in n..ldc {
                        assert_eq!(
                            got[i * ldc + j].to_bits(),
                            c0[i * ldc + j].to_bits(),
                            "{label}: ({i}, {j}) written"
                        );
                    }
                    for j in 0..n {
                        let (exact, magnitude) = reference[i * n + j];
                        let base = if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                        let want = base + alpha as f64 * exact;
                        let bound =
                            (k + 1) as f64 * 2f64.powi(-24) * (alpha.abs() as f64 * magnitude + base.abs()) * 1.01;
                        for (name, c) in [("amx", &got), ("scalar", &scalar)] {
                            let x = c[i * ldc + j] as f64;
                            assert!(
                                (x - want).abs() <= bound,
                                "{label} {name} ({i}, {j}): {x} vs {want} (bound {bound:e})"
                            );
                        }
                        worst = worst.max((got[i * ldc + j] as f64 - want).abs() / bound);
                    }
                }
                println!("{label}: worst AMX error {worst:.3} of the bound");
            }
        }
    }
}
