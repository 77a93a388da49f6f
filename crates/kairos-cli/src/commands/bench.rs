//! `kairos bench`: CPU timings of the full-size SD1.5 or SDXL architecture with random weights.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kairos_bench::{BenchFamily, BenchOptions, CaseResult, Component, Configs};

/// Arguments of `kairos bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Architecture: sd15 (stable-diffusion-v1-5) or sdxl (stable-diffusion-xl-base-1.0: both
    /// text encoders, the UNet with pooled text and size ids, the VAE decode at the largest
    /// resolution only).
    #[arg(long, default_value = "sd15")]
    family: BenchFamily,
    /// Replace the family's configs with the `unet.json`, `vae.json`, `text_encoder.json`,
    /// `text_encoder_2.json` found in this directory (diffusers/transformers config.json
    /// format), e.g. a tiny architecture for a quick check.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Square image resolutions (multiples of 8) [default: 256,512 for sd15, 768,1024 for sdxl].
    #[arg(long, value_delimiter = ',')]
    resolutions: Option<Vec<usize>>,
    /// Networks to time on their own: text-encoder, unet, vae.
    #[arg(long, value_delimiter = ',', default_value = "text-encoder,unet,vae")]
    components: Vec<Component>,
    /// UNet batch sizes (2 is one classifier-free-guidance step).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    batches: Vec<usize>,
    /// Timed repetitions per case.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the reference square f32 GEMM, and of the bf16 one on CPUs with AMX or
    /// AVX512-BF16 (0 skips them).
    #[arg(long, default_value_t = 4096)]
    gemm: usize,
    /// Also time a whole txt2img of this many steps (dpmpp_2m, karras, CFG 7.5) at the largest
    /// resolution (0 skips it).
    #[arg(long, default_value_t = 0)]
    txt2img_steps: usize,
    /// Also time a whole LCM txt2img of this many steps (lcm sampler, guidance 1, as with an
    /// LCM-LoRA) at the largest resolution (0 skips it).
    #[arg(long, default_value_t = 0)]
    lcm_steps: usize,
    /// Compute device: cpu, cuda[:N] (a build with `--features cuda`) or metal[:N]; the
    /// reference GEMMs run on the CPU only.
    #[arg(long, default_value = "cpu")]
    device: super::DeviceArg,
    /// Dtype of the weights; for f16/bf16 the first UNet case's output is also compared with
    /// the f32 UNet's (max abs / relative difference). `auto` picks as `kairos generate` does
    /// (the JSON report then has a `dtype_auto` record of the choice).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: super::DtypeArg,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the benchmark and prints one line per case.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut configs = Configs::preset(args.family);
    if let Some(dir) = &args.config_dir {
        configs = configs.with_overrides(dir)?;
    }
    let device = args.device.device()?;
    let (dtype, auto) = args.dtype.resolve(&device);
    let opts = BenchOptions {
        family: args.family,
        configs,
        components: args.components,
        resolutions: args.resolutions.unwrap_or_else(|| args.family.default_resolutions()),
        unet_batches: args.batches,
        repeats: args.repeats,
        seed: args.seed,
        gemm_size: args.gemm,
        txt2img_steps: args.txt2img_steps,
        lcm_steps: args.lcm_steps,
        dtype,
        device,
    };
    println!("{:<22} {:>10} {:>10} {:>10} {:>10}", "case", "min s", "mean s", "GFLOP", "GFLOP/s");
    let print = |c: &CaseResult| {
        println!(
            "{:<22} {:>10.3} {:>10.3} {:>10.1} {:>10.1}",
            c.name, c.seconds_min, c.seconds_mean, c.gflop, c.gflops_per_s
        )
    };
    let report = kairos_bench::run(&opts, print)?;
    println!("threads: {}, weights: {}, bf16 GEMM kernel: {}", report.threads, report.dtype, report.bf16_kernel);
    if let Some(d) = &report.unet_difference {
        println!(
            "{} vs f32: max abs {:.3e}, max abs / max|f32| {:.3e}, max rel {:.3e}, rms rel {:.3e}",
            d.case, d.max_abs, d.max_abs_over_range, d.max_rel, d.rms_rel
        );
    }
    if let Some(mib) = report.peak_rss_mib {
        println!("peak RSS: {mib:.0} MiB");
    }
    if let Some(path) = args.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(auto), Some(map)) = (&auto, json.as_object_mut()) {
            map.insert("dtype_auto".into(), auto.to_json());
        }
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
