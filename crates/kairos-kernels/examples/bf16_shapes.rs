//! Times the bf16 GEMM alone (operands packed beforehand) at the SD1.5 UNet's shapes, batch 2 at
//! 512² (linear layers: activations × weight; 3×3 convolutions as im2col: weight × columns), and
//! at 4096²: `cargo run --profile bench-cpu -p kairos-kernels --example bf16_shapes`.
use std::time::Instant;

use kairos_kernels::gemm_bf16::{self, MatRef, PackedA, PackedB};
use kairos_kernels::uniform;

fn main() {
    println!("kernel: {}", gemm_bf16::kernel_name());
    let shapes: [(&str, usize, usize, usize); 9] = [
        ("linear 8192x320->2560", 8192, 2560, 320),
        ("linear 8192x1280->320", 8192, 320, 1280),
        ("linear 8192x320->320", 8192, 320, 320),
        ("linear 2048x640->5120", 2048, 5120, 640),
        ("linear 512x1280->10240", 512, 10240, 1280),
        ("conv 320 64² (rows of 16)", 320, 16 * 64, 2880),
        ("conv 640 32²", 640, 1024, 5760),
        ("conv 1280 16²", 1280, 256, 11520),
        ("gemm 4096²", 4096, 4096, 4096),
    ];
    for (name, m, n, k) in shapes {
        let a = uniform(1, m * k);
        let b = uniform(2, k * n);
        let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
        let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
        let mut c = vec![0f32; m * n];
        let reps = (2e10 / (2.0 * (m * n * k) as f64)).clamp(2.0, 200.0) as usize;
        gemm_bf16::gemm(&pa, &pb, &mut c, n, 1.0, false, true);
        let t = Instant::now();
        for _ in 0..reps {
            gemm_bf16::gemm(&pa, &pb, &mut c, n, 1.0, false, true);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name:28} {:8.3} ms {:7.1} GFLOP/s", s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9);
    }
}
