//! Runs the `--dtype auto` probe ([`kairos_kernels::probe`]) and prints its figures:
//! `cargo run --profile bench-cpu -p kairos-kernels --example dtype_probe`.

use std::time::Instant;

fn main() -> candle_core::Result<()> {
    if !kairos_kernels::probe::bf16_gemm_available() {
        println!("no AVX512-BF16: bf16 weights are widened per call, --dtype auto picks f32 without probing");
    }
    let start = Instant::now();
    let t = kairos_kernels::probe::probe()?;
    println!(
        "threads {}: f32 {:.4} s, bf16 {:.4} s (bf16/f32 {:.2}) -> {:?}; probe took {:.3} s",
        candle_core::utils::get_num_threads(),
        t.f32_s,
        t.bf16_s,
        t.bf16_s / t.f32_s,
        t.faster(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
