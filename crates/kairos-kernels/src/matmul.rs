//! The f32 kernels' one way into the `gemm` crate: operands as strided views ([`Mat`],
//! [`MatMut`]) instead of nineteen positional arguments, and the split of a product over the
//! rayon threads ([`Threads::All`]).
//!
//! Splitting: the `gemm` crate's own threading has every thread pack the same rows of the left
//! operand (the activations, which it always packs) for its share of the columns. Giving each
//! thread a block of output columns (or of rows, where the columns are few) and running the
//! crate single-threaded on it was faster on SD1.5's layers on 2 AVX-512 cores (cold weights,
//! GFLOP/s crate-threaded → split): 1280→1280 at 512 rows 280 → 321, 5120→1280 at 512 rows
//! 256 → 278, 640→640 at 2048 rows 298 → 336, 1280→320 at 8192 rows (split by rows) 333 → 339.

use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only f32 matrix in memory: element `(i, j)` at `ptr + i·rs + j·cs` (elements).
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A written f32 matrix in memory: element `(i, j)` at `ptr + i·rs + j·cs` (elements).
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: the views are plain addresses; `gemm`'s contract makes the threads that share them
// read disjointly-written memory only.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl Mat {
    /// Row-major with row stride `ld`.
    pub fn rows(data: &[f32], ld: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: ld as isize, cs: 1 }
    }

    /// The transpose of a row-major matrix with row stride `ld` (element `(i, j)` at `j·ld + i`).
    pub fn rows_t(data: &[f32], ld: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: 1, cs: ld as isize }
    }

    /// The view from element `(i, j)` on.
    fn at(self, i: usize, j: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs), ..self }
    }
}

impl MatMut {
    /// Row-major with row stride `ld`.
    pub fn rows(data: &mut [f32], ld: usize) -> Self {
        Self { ptr: data.as_mut_ptr(), rs: ld as isize, cs: 1 }
    }

    /// The view from element `(i, j)` on.
    fn at(self, i: usize, j: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs), ..self }
    }
}

/// How many threads a product uses.
#[derive(Clone, Copy)]
pub(crate) enum Threads {
    /// The calling thread only (the caller's own parallel loop is the split).
    One,
    /// All rayon threads, each on its own block of the output.
    All,
}

/// `dst = lhs·rhs` (`m × k` times `k × n`), or `dst += lhs·rhs` when `accumulate`.
///
/// # Safety
/// Every element `(i, j)` with `i < m`, `j < n` (`k`) of `dst` and `lhs` (`rhs`) lies inside live
/// memory; `dst` is not read or written by anyone else during the call and overlaps neither
/// operand.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    threads: Threads,
) {
    let parts = match threads {
        Threads::One => 1,
        Threads::All => rayon::current_num_threads(),
    };
    // Blocks of whole vectors, at least 64 columns or rows each.
    let block = |len: usize| len.div_ceil(parts).div_ceil(16) * 16;
    if parts > 1 && n >= 64 * parts && 4 * n >= m {
        let cols = block(n);
        (0..n.div_ceil(cols)).into_par_iter().for_each(|b| {
            let (j0, j1) = (b * cols, ((b + 1) * cols).min(n));
            // SAFETY: columns j0..j1 of dst and rhs are inside the caller's views; the blocks
            // of dst are disjoint.
            unsafe { gemm_one(m, j1 - j0, k, dst.at(0, j0), lhs, rhs.at(0, j0), accumulate, Parallelism::None) }
        });
    } else if parts > 1 && m >= 64 * parts {
        let rows = block(m);
        (0..m.div_ceil(rows)).into_par_iter().for_each(|b| {
            let (i0, i1) = (b * rows, ((b + 1) * rows).min(m));
            // SAFETY: rows i0..i1 of dst and lhs are inside the caller's views; the blocks of
            // dst are disjoint.
            unsafe { gemm_one(i1 - i0, n, k, dst.at(i0, 0), lhs.at(i0, 0), rhs, accumulate, Parallelism::None) }
        });
    } else {
        let par = if parts > 1 { Parallelism::Rayon(parts) } else { Parallelism::None };
        // SAFETY: the caller's contract.
        unsafe { gemm_one(m, n, k, dst, lhs, rhs, accumulate, par) }
    }
}

/// One `gemm` crate call (`dst = dst·[accumulate] + lhs·rhs`).
///
/// # Safety
/// As for [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_one(m: usize, n: usize, k: usize, dst: MatMut, lhs: Mat, rhs: Mat, accumulate: bool, par: Parallelism) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split products against one single-threaded call, on 3 threads (uneven blocks): by
    /// columns, by rows, and too small to split; overwriting and accumulating.
    #[test]
    fn split_matches_single_thread() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        for (m, n, k) in [(100usize, 200usize, 37usize), (300, 40, 50), (20, 30, 10)] {
            let val = |i: usize, f: f32| ((i as f32 * 0.618_034 + f).fract() - 0.5) * 2.0;
            let a: Vec<f32> = (0..m * k).map(|i| val(i, 0.1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i, 0.4)).collect();
            for accumulate in [false, true] {
                let start: Vec<f32> = (0..m * n).map(|i| val(i, 0.7)).collect();
                let (mut want, mut got) = (start.clone(), start);
                // SAFETY: all three are row-major m×k, k×n, m×n buffers of those sizes.
                unsafe {
                    gemm(
                        m,
                        n,
                        k,
                        MatMut::rows(&mut want, n),
                        Mat::rows(&a, k),
                        Mat::rows(&b, n),
                        accumulate,
                        Threads::One,
                    );
                    pool.install(|| {
                        gemm(
                            m,
                            n,
                            k,
                            MatMut::rows(&mut got, n),
                            Mat::rows(&a, k),
                            Mat::rows(&b, n),
                            accumulate,
                            Threads::All,
                        )
                    });
                }
                let err = want.iter().zip(&got).map(|(w, g)| (w - g).abs()).fold(0f32, f32::max);
                // Only the crate's blocking of each part may differ: f32 rounding of k products.
                assert!(err < 1e-5, "m {m} n {n} k {k} accumulate {accumulate}: {err}");
            }
        }
    }
}
