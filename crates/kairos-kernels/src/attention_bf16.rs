//! Multi-head attention with bf16 operands: `q·kᵀ` and `p·v` run on [`crate::gemm_bf16`]
//! (AMX tiles where the CPU has them) with q, k, v and the unnormalised probabilities `p`
//! rounded to bf16 and every sum in f32; the scores, their maximum, the exponentials and the
//! normalisation stay f32. This is the precision PyTorch's and OpenVINO's bf16 attention run in;
//! the layers of a bf16 model take it (see `kairos_kernels::nn`), f32 models keep the f32 kernel.
//!
//! Each job takes [`ROWS`] query rows of one head (more for short key sequences): their unscaled
//! scores against all `S` keys (at most [`SCORES`] f32, 512 KiB: in L2), a softmax of each scaled row without the
//! division whose exponentials go straight into `p·v`'s packed bf16 operand (no f32 pass over
//! them: SD1.5's 4096-token self-attention 15–25 % faster), then `p·v` and the division folded
//! into the copy to the output. `kᵀ` and `v` are packed once per (sample, head).

use std::cell::RefCell;

use candle_core::{Result, Shape};
use rayon::prelude::*;

use crate::attention::{exp_max_pairs, OutPtr};
use crate::gemm_bf16::{self, MatRef, PackedA, PackedB};
use crate::op::{uninit, F32Op3, Input};

/// Query rows per job: a multiple of one AMX block of `C` rows (32), up to [`MAX_ROWS`], with
/// scores of at most [`SCORES`] values (512 KiB: in L2). Short key sequences (cross-attention's
/// 77 prompt tokens) take more rows per job, so that each job's fixed costs (tile configuration,
/// packing, the GEMM calls) cover more than a few hundred cycles of products.
const ROWS: usize = 32;
const MAX_ROWS: usize = 256;
const SCORES: usize = ROWS * 4096;
/// Packed `kᵀ` and `v` of all heads up to which jobs go head by head within a row block.
const HEADS_INNER_BYTES: usize = 1 << 20;

/// The CPU kernel: `q` `[N, L, heads·d]`, `k` and `v` `[N, S, heads·d]`, contiguous f32.
pub(crate) struct AttentionBf16Op {
    pub heads: usize,
    pub scale: f32,
    /// Query row `i` attends to keys `0..=i` only (`L = S`).
    pub causal: bool,
}

/// A job's buffers, kept per thread between jobs and calls.
#[derive(Default)]
struct Buffers {
    q: PackedA,
    p: PackedA,
    scores: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Makes `buf` at least `len` long (the GEMMs overwrite what they use).
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

impl F32Op3 for AttentionBf16Op {
    const NAME: &'static str = "kairos-attention-bf16";

    fn run(&self, (q, l1): Input<'_>, (k, l2): Input<'_>, (v, _l3): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, l, c) = l1.shape().dims3()?;
        let s = l2.dims()[1];
        let (heads, scale, causal) = (self.heads, self.scale, self.causal);
        let d = c / heads;
        if n * l * c == 0 || s == 0 {
            return Ok((vec![0f32; n * l * c], l1.shape().clone()));
        }
        fn view(data: &[f32], offset: usize, (rows, cols, rs, cs): (usize, usize, usize, usize)) -> MatRef<'_, f32> {
            MatRef::new(&data[offset..], rows, cols, rs, cs).expect("kᵀ/v view inside the sample")
        }
        let head = |bh: usize| (bh / heads) * s * c + (bh % heads) * d;
        // kᵀ (d × S: element (i, j) is key j's column i) and v (S × d), per (sample, head).
        let packed: Vec<(PackedB, PackedB)> = (0..n * heads)
            .into_par_iter()
            .map(|bh| (PackedB::new(view(k, head(bh), (d, s, 1, c))), PackedB::new(view(v, head(bh), (s, d, c, 1)))))
            .collect();
        // SAFETY: the jobs below write every row of every head.
        let mut out = unsafe { uninit(n * l * c) };
        let out_ptr = OutPtr(out.as_mut_ptr());
        let rows = (SCORES / s / ROWS).clamp(1, MAX_ROWS / ROWS) * ROWS;
        let blocks = l.div_ceil(rows);
        // Consecutive jobs (one thread's, mostly) take one head's row blocks in turn, keeping
        // its kᵀ and v in L2; where every head's fit there together (short key sequences), they
        // take one row block's heads in turn instead, so its query and output rows (a few cache
        // lines per head, scattered) are fetched once rather than once per head.
        let kv_bytes: usize = packed[..heads].iter().map(|(kt, v)| kt.bytes() + v.bytes()).sum();
        let heads_inner = kv_bytes <= HEADS_INNER_BYTES;
        (0..n * heads * blocks).into_par_iter().for_each(|job| {
            let (bh, block) = if heads_inner {
                let (sample_block, h) = (job / heads, job % heads);
                ((sample_block / blocks) * heads + h, sample_block % blocks)
            } else {
                (job / blocks, job % blocks)
            };
            let r0 = block * rows;
            let m = rows.min(l - r0);
            let offset = ((bh / heads) * l + r0) * c + (bh % heads) * d;
            let (kt, vp) = &packed[bh];
            BUFFERS.with_borrow_mut(|buf| {
                buf.q.repack(MatRef::new(&q[offset..], m, d, c, 1).expect("query rows inside q"));
                // Grown, never shrunk: self- and cross-attention alternate between S = 4096 and
                // 77, and growing back would zero the whole buffer for every job.
                // On 64-byte rows where S allows (the AMX kernel's tiles then go straight to them),
                // unscaled: the scale is applied in the exponent.
                grow(&mut buf.scores, m * s + 16);
                let at = buf.scores.as_ptr().align_offset(64).min(16);
                let scores = &mut buf.scores[at..][..m * s];
                gemm_bf16::gemm(&buf.q, kt, scores, s, 1.0, false, false);
                let mut sums = [0f32; MAX_ROWS];
                buf.p.repack_rows(m, s, |i, dst| {
                    // Causal: keys past the row's own position get probability 0.
                    let seen = if causal { r0 + i + 1 } else { s };
                    sums[i] = exp_max_pairs(&mut scores[i * s..][..seen], scale, dst);
                });
                grow(&mut buf.out, m * d);
                let rows_out = &mut buf.out[..m * d];
                gemm_bf16::gemm(&buf.p, vp, rows_out, d, 1.0, false, false);
                for (i, (row, sum)) in rows_out.chunks(d).zip(sums).enumerate() {
                    // SAFETY: row r0 + i of sample bh / heads, columns of head bh % heads: inside
                    // out, and written by this job only.
                    let dst = unsafe { out_ptr.slice(offset + i * c, d) };
                    let inv = 1.0 / sum;
                    dst.iter_mut().zip(row).for_each(|(o, &x)| *o = x * inv);
                }
            });
        });
        Ok((out, l1.shape().clone()))
    }
}
