//! Times the bf16 attention (`attention_heads_bf16`) at SD1.5's UNet shapes, batch 2 at 512²:
//! self-attention at each level and cross-attention to 77 prompt tokens:
//! `cargo run --profile bench-cpu -p kairos-kernels --example attention_bf16`.
use std::time::Instant;

use candle_core::{Device, Tensor};
use kairos_kernels::attention_heads_bf16;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // (tokens, keys, channels = 8 heads × d)
    for (l, s, c) in [(4096, 4096, 320), (1024, 1024, 640), (256, 256, 1280), (4096, 77, 320)] {
        let q = Tensor::from_vec(kairos_kernels::uniform(1, 2 * l * c), (2, l, c), &dev)?;
        let k = Tensor::from_vec(kairos_kernels::uniform(2, 2 * s * c), (2, s, c), &dev)?;
        let v = Tensor::from_vec(kairos_kernels::uniform(3, 2 * s * c), (2, s, c), &dev)?;
        let d = c / 8;
        let scale = (d as f64).powf(-0.5);
        attention_heads_bf16(&q, &k, &v, 8, scale, false)?;
        let flops = 2.0 * 2.0 * 2.0 * (l * s * c) as f64;
        let reps = (2e10 / flops).clamp(3.0, 200.0) as usize;
        let t = Instant::now();
        for _ in 0..reps {
            attention_heads_bf16(&q, &k, &v, 8, scale, false)?;
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        println!("attention b2 {l}x{s} 8x{d:<4} {:8.2} ms {:7.1} GFLOP/s", secs * 1e3, flops / secs / 1e9);
    }
    Ok(())
}
