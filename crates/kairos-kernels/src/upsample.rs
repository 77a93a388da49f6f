//! Nearest-neighbour upsampling by exactly 2 (the UNet's and the VAE decoder's `Upsample2D`) in
//! parallel: candle's CPU op zero-fills the output and then gathers it one element at a time on
//! one thread, which took several percent of a VAE decode (its 2× maps reach 256 × 512² values).

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use crate::op::{apply1, uninit, F32Op1, Input};

const OP: &str = "kairos-upsample-nearest2x";

/// The CPU kernel: `[N, C, H, W]` → `[N, C, 2H, 2W]`, contiguous f32.
struct Upsample2x;

impl F32Op1 for Upsample2x {
    const NAME: &'static str = OP;

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        // SAFETY: every output row is written below: rows 2y and 2y + 1 of each plane from its
        // source row y.
        let mut out = unsafe { uninit(4 * x.len()) };
        if w > 0 {
            out.par_chunks_mut(4 * w).zip(x.par_chunks(w)).for_each(|(rows, src)| {
                let (even, odd) = rows.split_at_mut(2 * w);
                even.chunks_exact_mut(2).zip(src).for_each(|(d, &s)| d.fill(s));
                odd.copy_from_slice(even);
            });
        }
        Ok((out, Shape::from((n, c, 2 * h, 2 * w))))
    }
}

/// The straightforward candle computation.
pub fn upsample_nearest2d_plain(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    xs.upsample_nearest2d(out_h, out_w)
}

/// Nearest-neighbour resampling of `xs` `[N, C, H, W]` to `out_h × out_w`, as torch's
/// `F.interpolate(mode="nearest")`. Doubling an f32 CPU map takes the parallel kernel (the same
/// values); anything else takes [`upsample_nearest2d_plain`].
pub fn upsample_nearest2d(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if (out_h, out_w) != (2 * h, 2 * w) || !crate::kernel_applies([xs]) {
        return upsample_nearest2d_plain(xs, out_h, out_w);
    }
    apply1(&xs.contiguous()?, &Upsample2x)
}
