//! SD1.5's text encoder with the bench's seeded weights (every matrix drawn; final LayerNorm bias
//! 0, as a fresh init has it), f32 vs bf16 on the bf16 GEMM's kernel (`KAIROS_AMX=off` for AVX512-BF16):
//! whether the bf16 output is finite and its difference from f32; then, per seed, the empty
//! prompt's mean(z), which A1111's "Original" emphasis divided by before 01f8470 (0/0 = NaN when
//! it is exactly 0: the "AMX NaN", a few % of seeds with either kernel).
//!
//!     cargo run -p kairos-bench --example clip_nan -- 60
use candle_core::{DType, Device, Tensor};
use kairos_bench::{presets, seeded_var_builder};
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let cfg = CLIPTextConfig::from_json(presets::SD15_TEXT_ENCODER).unwrap();
    // The empty prompt: BOS, EOS, then padding (EOS), batch 2; and a mixed prompt.
    let mut ids: Vec<u32> = vec![49406, 49407];
    ids.resize(77, 49407);
    let mixed: Vec<u32> = (0..77u32).map(|i| (i * 7919) % cfg.vocab_size as u32).collect();
    ids.extend(mixed);
    let ids = Tensor::from_vec(ids, (2, 77), &dev)?;
    let f32_out = CLIPTextModel::new(seeded_var_builder(0, DType::F32, &dev).pp("text_encoder"), &cfg)?
        .forward(&ids)?
        .last_hidden_state;
    let bf16_out = CLIPTextModel::new(seeded_var_builder(0, DType::BF16, &dev).pp("text_encoder"), &cfg)?
        .forward(&ids)?
        .last_hidden_state;
    let values = bf16_out.flatten_all()?.to_vec1::<f32>()?;
    let diff = (&bf16_out - &f32_out)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!(
        "kernel: {}; bf16 output finite: {}; max |bf16 - f32| {diff:e} (max |f32| {:e})",
        kairos_kernels::gemm_bf16::kernel_name(),
        values.iter().all(|x| x.is_finite()),
        f32_out.abs()?.max_all()?.to_scalar::<f32>()?
    );
    // A1111's "Original" emphasis before 01f8470: z · mean(z) / mean(z) on every chunk, NaN when
    // mean(z) is exactly 0 (which a zero-bias final LayerNorm puts at rounding level).
    let empty = ids.narrow(0, 0, 1)?;
    let seeds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut zeros = 0;
    for seed in 1..=seeds {
        let clip = CLIPTextModel::new(seeded_var_builder(seed, DType::BF16, &dev).pp("text_encoder"), &cfg)?;
        let z = clip.forward(&empty)?.last_hidden_state;
        let mean = z.mean_all()?.to_scalar::<f32>()?;
        let abs = z.abs()?.mean_all()?.to_scalar::<f32>()?;
        let old = z.broadcast_mul(&(z.mean_all()? / z.mean_all()?)?)?;
        let nan = old.flatten_all()?.to_vec1::<f32>()?.iter().filter(|x| x.is_nan()).count();
        zeros += (mean == 0.0) as usize;
        println!("seed {seed}: mean(z) {mean:e} (mean|z| {abs:.3}), old rescale: {nan} NaN");
    }
    println!("{zeros} of {seeds} seeds: mean(z) exactly 0");
    Ok(())
}
