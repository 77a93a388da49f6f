//! `softmax(q·kᵀ·scale)·v` by blocks of query rows: each block's scores (`rows × S`) are computed
//! by one GEMM, exponentiated in place, multiplied by `v` by a second GEMM and the rows divided by
//! their sums. Memory is one block per thread instead of `N·heads·L·S` scores (1 GiB for SD1.5's
//! 4096-token self-attention at batch 2), and the exact two-pass softmax is kept, so no
//! online-softmax rescaling is needed.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::{f32_slice, KernelError};
use crate::vecmath;

const OP: &str = "kairos-attention";

/// Bytes of scores per block: the GEMMs repack all of `k` and `v` for every block, so blocks must
/// hold enough rows to amortise that (at 4096 tokens, 4 MiB = 256 rows ran 1.3× faster than
/// 512 KiB = 32 rows on 2 AVX-512 cores with 2 MiB L2 each, and 8 MiB was slower again).
const BLOCK_BYTES: usize = 4096 * 1024;

/// The CPU kernel: `q` `[B, L, d]`, `k` and `v` `[B, S, d]`, contiguous f32 (`B` = batch·heads).
struct AttentionOp {
    scale: f32,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_slice(OP, s1, l1)?;
        let k = f32_slice(OP, s2, l2)?;
        let v = f32_slice(OP, s3, l3)?;
        let (b, l, d) = l1.shape().dims3()?;
        let s = l2.dims()[1];
        let mut out = vec![0f32; b * l * d];
        if out.is_empty() || s == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let rows = (BLOCK_BYTES / (4 * s)).clamp(1, l);
        out.par_chunks_mut(l * d).enumerate().for_each(|(bi, out_b)| {
            let (q_b, k_b, v_b) = (&q[bi * l * d..], &k[bi * s * d..], &v[bi * s * d..]);
            out_b.par_chunks_mut(rows * d).enumerate().for_each(|(ti, out_t)| {
                let m = out_t.len() / d;
                let q_t = &q_b[ti * rows * d..];
                let mut scores = vec![0f32; m * s];
                // SAFETY: every pointer/stride pair addresses only elements of its slice:
                // scores m×S row-major, q_t m×d row-major, kᵀ d×S read from k_b (S×d row-major,
                // so element (i, j) is at j·d + i), v_b S×d row-major, out_t m×d row-major.
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
                        d as isize,
                        k_b.as_ptr(),
                        d as isize,
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
                // SAFETY: as above.
                unsafe {
                    gemm::gemm(
                        m,
                        d,
                        s,
                        out_t.as_mut_ptr(),
                        1,
                        d as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        s as isize,
                        v_b.as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for (row, sum) in out_t.chunks_mut(d).zip(sums) {
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if crate::kernels_off() || !(f32_cpu(query) && f32_cpu(key) && f32_cpu(value)) {
        return attention_plain(query, key, value, scale);
    }
    let flat = |t: &Tensor| -> Result<Tensor> { t.flatten_to(rank - 3)?.contiguous() };
    let op = AttentionOp { scale: scale as f32 };
    flat(query)?.apply_op3_no_bwd(&flat(key)?, &flat(value)?, &op)?.reshape(qd)
}
