//! Repeats CLIP-shaped bf16 GEMMs on more threads than cores (so kernels are preempted mid-tile)
//! and checks every result is finite and bit-identical to the first (the blocking, and so the
//! summation order, does not depend on the thread). `cargo run --release --example amx_stress [secs]`
use kairos_kernels::gemm_bf16::{self, MatRef, PackedA, PackedB};
use kairos_kernels::uniform;

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20.0);
    println!("kernel: {}", gemm_bf16::kernel_name());
    let shapes = [(77usize, 768usize, 768usize), (154, 3072, 768), (154, 768, 3072)];
    let cases: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(s, &(m, n, k))| {
            let a = uniform(1 + s as u64, m * k);
            let b = uniform(10 + s as u64, k * n);
            let bias = uniform(20 + s as u64, n);
            let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
            let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
            let c0: Vec<f32> = (0..m * n).map(|i| bias[i % n]).collect();
            let mut want = c0.clone();
            gemm_bf16::gemm(&pa, &pb, &mut want, n, 1.0, true, false);
            (pa, pb, c0, want, n)
        })
        .collect();
    let start = std::time::Instant::now();
    let bad = std::sync::atomic::AtomicUsize::new(0);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (cases, bad, runs) = (&cases, &bad, &runs);
            s.spawn(move || {
                let mut i = t;
                while start.elapsed().as_secs_f64() < secs {
                    let (pa, pb, c0, want, n) = &cases[i % cases.len()];
                    let mut c = c0.clone();
                    gemm_bf16::gemm(pa, pb, &mut c, *n, 1.0, true, i % 2 == 0);
                    let diff = c.iter().zip(want).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                    let nonfinite = c.iter().filter(|x| !x.is_finite()).count();
                    if diff > 0 || nonfinite > 0 {
                        bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        println!("thread {t} run {i}: {diff} values differ, {nonfinite} non-finite");
                    }
                    runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    println!("{} runs, {} bad", runs.into_inner(), bad.into_inner());
}
