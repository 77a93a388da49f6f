//! Times the f32 layers whose work is one GEMM at the SD1.5 UNet's shapes (batch 2 at 512²):
//! linear layers (weights as checkpoints store them, and transposed as `nn::Linear::new_few_rows`
//! stores them: "wT"), 1×1 convolutions, the spatial transformers' projections, and 3×3
//! convolutions (Winograd), min of several calls:
//! `cargo run --profile bench-cpu -p kairos-kernels --example f32_shapes`.
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use kairos_kernels::{conv2d, linear, map_from_tokens, tokens_from_map, Conv2dParams};

/// The fastest of enough calls of `f` to take about two seconds (at least 3).
fn bench(name: &str, flops: f64, mut f: impl FnMut() -> Result<Tensor>) -> Result<()> {
    f()?;
    let reps = (flops / 1e11).recip().clamp(3.0, 50.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name:28} {:8.2} ms {:7.1} GFLOP/s", best * 1e3, flops / best / 1e9);
    Ok(())
}

fn main() -> Result<()> {
    // As the `kairos` binary does: freed memory stays in the heap between calls.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let dev = Device::Cpu;
    let randn = |shape: &[usize], scale: f64| Tensor::randn(0f32, 1., shape, &dev).and_then(|t| t * scale);
    for (tokens, din, dout) in [
        (4096, 320, 2560),
        (4096, 1280, 320),
        (4096, 320, 320),
        (1024, 640, 5120),
        (1024, 2560, 640),
        (256, 1280, 10240),
        (256, 5120, 1280),
        (77, 768, 320),
    ] {
        let (x, w, b) = (randn(&[2, tokens, din], 1.0)?, randn(&[dout, din], 0.02)?, randn(&[dout], 0.02)?);
        bench(&format!("linear {din}->{dout} {tokens}"), 2.0 * (2 * tokens * din * dout) as f64, || {
            linear(&x, &w, Some(&b))
        })?;
        let wt = w.t()?.contiguous()?.t()?;
        bench(&format!("linear {din}->{dout} {tokens} wT"), 2.0 * (2 * tokens * din * dout) as f64, || {
            linear(&x, &wt, Some(&b))
        })?;
    }
    for (c, h) in [(320, 64), (640, 32), (1280, 16)] {
        let (x, w, b) = (randn(&[2, c, h, h], 1.0)?, randn(&[c, c], 0.02)?, randn(&[c], 0.02)?);
        let flops = 2.0 * (2 * c * c * h * h) as f64;
        bench(&format!("proj_in {c} {h}²"), flops, || tokens_from_map(&x, &w, Some(&b)))?;
        let t = tokens_from_map(&x, &w, Some(&b))?;
        bench(&format!("proj_out {c} {h}²"), flops, || map_from_tokens(&t, &w, Some(&b), &x))?;
        let w1 = w.reshape((c, c, 1, 1))?;
        let p = Conv2dParams { padding: 0, stride: 1 };
        bench(&format!("conv1x1 {c} {h}²"), flops, || conv2d(&x, &w1, Some(&b), p))?;
        let w3 = randn(&[c, c, 3, 3], 0.02)?;
        let p = Conv2dParams { padding: 1, stride: 1 };
        bench(&format!("conv3x3 {c} {h}² (direct FLOPs)"), 9.0 * flops, || conv2d(&x, &w3, Some(&b), p))?;
    }
    Ok(())
}
