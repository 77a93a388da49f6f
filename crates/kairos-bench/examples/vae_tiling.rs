//! Peak memory and time of the full-size SD1.5 VAE decode (seeded random weights), tiled or not,
//! beside kairos' activation-memory estimate of the untiled decode; with `both`, also the max
//! abs difference between the tiled and the untiled image.
//!
//! ```sh
//! cargo run -p kairos-bench --example vae_tiling -- 2048 512 tiled     # RESOLUTION TILE MODE
//! cargo run -p kairos-bench --example vae_tiling -- 768 512 both
//! ```
//!
//! MODE is `tiled`, `untiled` or `both`. Run one configuration per process: the peak RSS is
//! the process's high-water mark (VmHWM), weights (335 MB in f32) included.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use kairos_bench::{peak_rss_mib, presets, seeded_var_builder};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, TilingMode, TilingOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (resolution, tile, mode) = match args.as_slice() {
        [r, t, m] => (r.parse::<usize>()?, t.parse::<usize>()?, m.as_str()),
        _ => return Err("usage: vae_tiling RESOLUTION TILE_SIZE tiled|untiled|both".into()),
    };
    if !matches!(mode, "tiled" | "untiled" | "both") {
        return Err(format!("unknown mode `{mode}`: tiled, untiled or both").into());
    }
    let device = Device::Cpu;
    let config = AutoencoderKLConfig::from_json(&serde_json::from_str(presets::SD15_VAE)?)?;
    let vae = AutoencoderKL::new(seeded_var_builder(0, DType::F32, &device).pp("vae"), &config)?;
    let lat = resolution / 8;
    // Unit-variance latents (a VAE latent, 1/scaling_factor times a UNet latent).
    let z = Tensor::randn(0f32, 1.0, (1, 4, lat, lat), &device)?;
    let estimate = vae.decode_memory_estimate(z.dims(), DType::F32, &device) as f64 / (1 << 20) as f64;
    println!("decode {resolution}x{resolution}, untiled activation estimate {estimate:.0} MiB");
    println!("after building the weights: peak RSS {:.0} MiB", peak_rss_mib().unwrap_or(f64::NAN));
    let tiled = TilingOptions { tile_sample_size: tile, overlap_factor: 0.25, mode: TilingMode::Always };
    let untiled = TilingOptions { mode: TilingMode::Never, ..tiled };
    let mut outputs = Vec::new();
    for (name, opts) in [("untiled", untiled), ("tiled", tiled)] {
        if mode != "both" && mode != name {
            continue;
        }
        let start = Instant::now();
        let image = vae.decode_with(&z, &opts)?;
        println!(
            "{name} (tile {tile}): {:.1} s, peak RSS so far {:.0} MiB",
            start.elapsed().as_secs_f64(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        outputs.push(image);
    }
    if let [a, b] = outputs.as_slice() {
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let range = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let mean = (a - b)?.abs()?.mean_all()?.to_scalar::<f32>()?;
        println!("tiled vs untiled: max abs {diff:.4}, mean abs {mean:.5} (untiled max abs {range:.3})");
    }
    Ok(())
}
