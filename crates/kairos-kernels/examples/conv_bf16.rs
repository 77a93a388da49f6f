//! Times the bf16 convolution layers (`nn::Conv2d` with bf16 weights: the direct AMX kernel where
//! it applies, else im2col) at the SD1.5 UNet's and VAE's shapes, batch 2 (VAE 1) at 512²:
//! `cargo run --profile bench-cpu -p kairos-kernels --example conv_bf16` (`KAIROS_CONV_DIRECT=off`
//! for im2col).
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use kairos_kernels::nn::Conv2d;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // (name, batch, ci, co, kernel, size)
    let shapes = [
        ("unet 3x3 320 64²", 2, 320, 320, 3, 64),
        ("unet 3x3 640 32²", 2, 640, 640, 3, 32),
        ("unet 3x3 1280 16²", 2, 1280, 1280, 3, 16),
        ("unet 3x3 1280 8²", 2, 1280, 1280, 3, 8),
        ("unet 3x3 960->320 64²", 2, 960, 320, 3, 64),
        ("unet 1x1 320 64²", 2, 320, 320, 1, 64),
        ("unet 1x1 640->320 64²", 2, 640, 320, 1, 64),
        ("unet 1x1 960->640 32²", 2, 960, 640, 1, 32),
        ("unet 1x1 2560->1280 16²", 2, 2560, 1280, 1, 16),
        ("vae 3x3 512 64²", 1, 512, 512, 3, 64),
        ("vae 3x3 256 256²", 1, 256, 256, 3, 256),
        ("vae 3x3 128 512²", 1, 128, 128, 3, 512),
    ];
    for (name, n, ci, co, k, s) in shapes {
        let x = Tensor::from_vec(kairos_kernels::uniform(1, n * ci * s * s), (n, ci, s, s), &dev)?;
        let w = (Tensor::from_vec(kairos_kernels::uniform(2, co * ci * k * k), (co, ci, k, k), &dev)? * 0.05)?;
        let cfg = candle_nn::Conv2dConfig { padding: k / 2, ..Default::default() };
        let layer = Conv2d::new(candle_nn::Conv2d::new(w.to_dtype(DType::BF16)?, None, cfg))?;
        layer.forward(&x)?;
        let flops = 2.0 * (n * co * ci * k * k * s * s) as f64;
        let reps = (4e10 / flops).clamp(2.0, 100.0) as usize;
        let t = Instant::now();
        for _ in 0..reps {
            layer.forward(&x)?;
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name:24} {:8.2} ms {:7.1} GFLOP/s", secs * 1e3, flops / secs / 1e9);
    }
    Ok(())
}
