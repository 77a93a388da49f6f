//! `softmax(q·kᵀ·scale)·v` by blocks of query rows: each block's scores (`rows × S`) are computed
//! by one GEMM, exponentiated in place, multiplied by `v` by a second GEMM and the rows divided by
//! their sums. Memory is one block per thread instead of `N·heads·L·S` scores (1 GiB for SD1.5's
//! 4096-token self-attention at batch 2), and the exact two-pass softmax is kept, so no
//! online-softmax rescaling is needed.
//!
//! The heads may stay interleaved as the projections write them (`[N, L, heads·d]`): the GEMMs
//! read each head's columns with a row stride of `heads·d` and write the output the same way,
//! which saves the four `[N, L, heads, d]` ↔ `[N, heads, L, d]` copies around every attention.

use candle_core::{Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::KernelError;
use crate::op::{apply3, F32Op3, Input};
use crate::scratch::Scratch;
use crate::vecmath;

const OP: &str = "kairos-attention";

/// Bytes of scores per block: the GEMMs repack all of `k` and `v` for every block, so blocks must
/// hold enough rows to amortise that (at 4096 tokens, 4 MiB = 256 rows ran 1.3× faster than
/// 512 KiB = 32 rows on 2 AVX-512 cores with 2 MiB L2 each, and 8 MiB was slower again).
const BLOCK_BYTES: usize = 4096 * 1024;

/// The CPU kernel: `q` `[N, L, heads·d]`, `k` and `v` `[N, S, heads·d]`, contiguous f32.
struct AttentionOp {
    heads: usize,
    scale: f32,
}

/// The output buffer, shared by the jobs, each of which writes its own rows × head columns.
struct OutPtr(*mut f32);
// SAFETY: the jobs write disjoint elements (see the use below) and the buffer outlives them.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` elements in (a method, so closures capture the `Sync` wrapper).
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

impl F32Op3 for AttentionOp {
    const NAME: &'static str = OP;

    fn run(&self, (q, l1): Input<'_>, (k, l2): Input<'_>, (v, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, l, c) = l1.shape().dims3()?;
        let s = l2.dims()[1];
        let (heads, d) = (self.heads, c / self.heads);
        let mut out = vec![0f32; n * l * c];
        if out.is_empty() || s == 0 {
            return Ok((out, l1.shape().clone()));
        }
        let rows = (BLOCK_BYTES / (4 * s)).clamp(1, l);
        let blocks = l.div_ceil(rows);
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..n * heads * blocks).into_par_iter().for_each(|job| {
            let (b, h, r0) = (job / (heads * blocks), job / blocks % heads, job % blocks * rows);
            let m = rows.min(l - r0);
            // Element (i, j) of this job's matrices (row stride c, head h's d columns):
            // q_t (i, j) = q[(b·L + r0 + i)·c + h·d + j], k and v (i, j) = k/v[(b·S + i)·c + h·d + j].
            let q_t = &q[(b * l + r0) * c + h * d..];
            let (k_b, v_b) = (&k[b * s * c + h * d..], &v[b * s * c + h * d..]);
            // Reused between jobs and calls: the first GEMM overwrites all of it.
            let mut scores = Scratch::take(m * s);
            // SAFETY: scores is m×S row-major; q_t's m×d block, kᵀ (d×S: element (i, j) at
            // j·c + i of k_b) and v_b's S×d block lie inside their slices, whose last rows end at
            // column h·d + d ≤ c.
            unsafe {
                gemm::gemm(
                    m,
                    s,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    q_t.as_ptr(),
                    1,
                    c as isize,
                    k_b.as_ptr(),
                    c as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            let sums: Vec<f32> = scores.chunks_mut(s).map(vecmath::exp_shifted_sum).collect();
            // This job's output: rows r0..r0+m of sample b, columns h·d..h·d+d.
            // SAFETY: the offset is inside out (b < N, r0 + m ≤ L, h·d + d ≤ c), and no other job
            // has the same (b, h, block), so the m×d elements written here are this job's alone.
            let out_t = unsafe { out_ptr.at((b * l + r0) * c + h * d) };
            // SAFETY: as above, with v_b's S×d block read at row stride c.
            unsafe {
                gemm::gemm(
                    m,
                    d,
                    s,
                    out_t,
                    1,
                    c as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    s as isize,
                    v_b.as_ptr(),
                    1,
                    c as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for (i, sum) in sums.into_iter().enumerate() {
                let inv = 1.0 / sum;
                // SAFETY: row i of this job's block, d elements, as above.
                let row = unsafe { std::slice::from_raw_parts_mut(out_t.add(i * c), d) };
                row.iter_mut().for_each(|x| *x *= inv);
            }
        });
        Ok((out, l1.shape().clone()))
    }
}

/// The straightforward candle computation: the whole `[.., L, S]` score tensor, softmax, matmul.
pub fn attention_plain(query: &Tensor, key: &Tensor, value: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (query * scale)?.matmul(&key.t()?)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(value)
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
    let op = AttentionOp { heads: 1, scale: scale as f32 };
    apply3(&flat(query)?, &flat(key)?, &flat(value)?, op)?.reshape(qd)
}

/// Multi-head attention on heads interleaved as the projections write them: `query`
/// `[N, L, heads·d]`, `key`/`value` `[N, S, heads·d]` → `[N, L, heads·d]`, each head `h` attending
/// with columns `h·d..(h+1)·d`. f32 CPU tensors take the blocked kernel without splitting the
/// heads out; anything else splits them and takes [`attention_plain`].
pub fn attention_heads(query: &Tensor, key: &Tensor, value: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (n, l, c) = query.dims3()?;
    let shape_ok = |t: &Tensor| t.rank() == 3 && t.dim(0).ok() == Some(n) && t.dim(2).ok() == Some(c);
    if heads == 0 || c % heads != 0 || !shape_ok(key) || key.dims() != value.dims() {
        return Err(KernelError::BadShape {
            op: OP,
            name: "query/key/value",
            expected: format!("query [N, L, C] with C divisible by heads ({heads}) and two equal [{n}, S, {c}]"),
            got: key.dims().to_vec(),
        }
        .into());
    }
    if !crate::kernel_applies([query, key, value]) {
        // [N, L, heads·d] -> [N, heads, L, d] and back.
        let split = |t: &Tensor| t.reshape((n, (), heads, c / heads))?.transpose(1, 2)?.contiguous();
        let out = attention_plain(&split(query)?, &split(key)?, &split(value)?, scale)?;
        return out.transpose(1, 2)?.reshape((n, l, c));
    }
    let op = AttentionOp { heads, scale: scale as f32 };
    apply3(&query.contiguous()?, &key.contiguous()?, &value.contiguous()?, op)
}
