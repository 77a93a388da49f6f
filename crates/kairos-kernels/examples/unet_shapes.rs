//! Times each kernel at the SD1.5 UNet's shapes (batch 2 at 512×512), for side-by-side runs with
//! `tools/bench/pytorch_ops.py`: `cargo run --profile bench-cpu -p kairos-kernels --example unet_shapes`.

use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor};
use kairos_kernels::{attention, conv2d, Conv2dParams};

/// Runs `f` twice to warm up, then reports the mean of three timed runs.
fn bench(name: &str, flops: f64, mut f: impl FnMut() -> Result<Tensor>) -> Result<()> {
    f()?;
    f()?;
    let t = Instant::now();
    for _ in 0..3 {
        f()?;
    }
    let s = t.elapsed().as_secs_f64() / 3.0;
    println!("{name:28} {:8.1} ms {:7.1} GFLOP/s", s * 1e3, flops / s / 1e9);
    Ok(())
}

fn main() -> Result<()> {
    // As the `kairos` binary does (see its main.rs): freed memory stays in the heap, so the
    // large outputs of one call reuse the pages of the last instead of faulting fresh ones in.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let dev = Device::Cpu;
    for (c, h) in [(320, 64), (640, 32), (1280, 16), (1280, 8)] {
        let x = Tensor::randn(0f32, 1., (2, c, h, h), &dev)?;
        let w = (Tensor::randn(0f32, 1., (c, c, 3, 3), &dev)? * 0.02)?;
        let b = Tensor::zeros(c, candle_core::DType::F32, &dev)?;
        let p = Conv2dParams { padding: 1, stride: 1 };
        bench(&format!("conv3x3 {c} {h}"), 2.0 * 2.0 * (c * c * 9 * h * h) as f64, || conv2d(&x, &w, Some(&b), p))?;
    }
    for (tokens, din, dout) in [
        (4096, 320, 2560),
        (4096, 1280, 320),
        (4096, 320, 320),
        (1024, 640, 5120),
        (1024, 2560, 640),
        (1024, 640, 640),
        (256, 1280, 10240),
        (256, 5120, 1280),
        (256, 1280, 1280),
        (77, 768, 3072),
    ] {
        let x = Tensor::randn(0f32, 1., (2, tokens, din), &dev)?;
        let w = (Tensor::randn(0f32, 1., (dout, din), &dev)? * 0.02)?;
        let b = Tensor::zeros(dout, candle_core::DType::F32, &dev)?;
        let flops = 2.0 * (2 * tokens * din * dout) as f64;
        let lin = kairos_kernels::nn::Linear::new(w.clone(), Some(b.clone()))?;
        bench(&format!("linear {din}->{dout} {tokens}"), flops, || lin.forward(&x))?;
        // The weight stored transposed, as a text encoder's layers keep it.
        let lin = kairos_kernels::nn::Linear::new_few_rows(w, Some(b))?;
        bench(&format!("linear {din}->{dout} {tokens} wT"), flops, || lin.forward(&x))?;
    }
    for (tokens, inner) in [(4096, 1280), (1024, 2560), (256, 5120)] {
        let x = Tensor::randn(0f32, 1., (2, tokens, 2 * inner), &dev)?;
        bench(&format!("geglu {tokens}x{inner}"), 0.0, || kairos_kernels::geglu(&x))?;
        bench(&format!("geglu plain {tokens}x{inner}"), 0.0, || kairos_kernels::geglu_plain(&x))?;
    }
    // Self-attention at each level, and cross-attention to the 77 prompt tokens.
    for (tokens, keys, d) in
        [(4096, 4096, 40), (1024, 1024, 80), (256, 256, 160), (4096, 77, 40), (1024, 77, 80), (256, 77, 160)]
    {
        let q = Tensor::randn(0f32, 1., (2, 8, tokens, d), &dev)?;
        let kv = Tensor::randn(0f32, 1., (2, 8, keys, d), &dev)?;
        let flops = 2.0 * 2.0 * 16.0 * (tokens * keys * d) as f64;
        bench(&format!("attention {tokens}x{keys} d{d}"), flops, || attention(&q, &kv, &kv, (d as f64).powf(-0.5)))?;
    }
    // The glue between the big ops, at the 64×64-latent level (batch 2, 320 channels).
    let x = Tensor::randn(0f32, 1., (2, 4096, 320), &dev)?;
    let y = Tensor::randn(0f32, 1., (2, 4096, 320), &dev)?;
    let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev);
    let ln = kairos_kernels::nn::layer_norm(320, candle_nn::LayerNormConfig::default(), vb.pp("ln"))?;
    bench("layer_norm 4096x320", 0.0, || ln.forward(&x))?;
    bench("add 4096x320", 0.0, || &x + &y)?;
    let nchw = Tensor::randn(0f32, 1., (2, 320, 64, 64), &dev)?;
    bench("permute nchw->nhwc 320x64²", 0.0, || nchw.permute((0, 2, 3, 1))?.contiguous())?;
    let small = Tensor::randn(0f32, 1., (2, 640, 32, 32), &dev)?;
    bench("upsample_nearest 640 32->64", 0.0, || small.upsample_nearest2d(64, 64))?;
    bench("cat dim1 320+320 64²", 0.0, || Tensor::cat(&[&nchw, &nchw], 1))?;
    let gn = kairos_kernels::nn::group_norm(32, 320, 1e-5, vb.pp("gn"))?;
    bench("group_norm+silu 320 64²", 0.0, || gn.forward_silu(&nchw))?;
    let a = Tensor::randn(0f32, 1., (4096, 4096), &dev)?;
    bench("gemm 4096", 2.0 * 4096f64.powi(3), || a.matmul(&a))?;
    Ok(())
}
