//! Tiled AutoencoderKL decode/encode against diffusers 0.42.1 `enable_tiling()` on the tiny VAE
//! (fixtures: `tools/fixtures/vae_tiling.py`; 32-pixel / 16-latent tiles, overlap 0.25, which is
//! what diffusers derives from the tiny VAE's `sample_size` 32, so the semantics are the same).
//!
//! Tolerance: max|a−b| / max|b| ≤ 1e-5, the untiled VAE's tolerance (same f32 ops in another
//! order); the blending on top is the same f32 arithmetic as torch's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::tiling::LIVE_ACTIVATIONS;
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, TilingMode, TilingOptions};
use kairos_models::ModelError;

const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("tiling_io.safetensors"), &Device::Cpu).unwrap()
}

fn vae() -> AutoencoderKL {
    let dir = fixtures().join("tiny");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = AutoencoderKLConfig::from_json(&json).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("diffusion_pytorch_model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    AutoencoderKL::new(vb, &config).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    max_abs(&(got - want).unwrap()) / max_abs(want)
}

/// diffusers' tiling of the tiny VAE, always on (tiles when larger than one tile).
const DIFFUSERS: TilingOptions = TilingOptions { tile_sample_size: 32, overlap_factor: 0.25, mode: TilingMode::Always };

#[test]
fn tiled_decode_matches_diffusers_enable_tiling() {
    let io = io();
    let got = vae().decode_with(&io["z"], &DIFFUSERS).unwrap();
    let err = rel_err(&got, &io["tiled_decoded"]);
    println!("tiled_decode: max|a-b|/max|b| = {err:.3e}");
    assert!(err <= TOL, "{err:.3e}");
}

#[test]
fn tiled_encode_matches_diffusers_enable_tiling() {
    let io = io();
    let dist = vae().encode_with(&io["x"], &DIFFUSERS).unwrap();
    for (name, got) in [("tiled_mean", &dist.mean), ("tiled_logvar", &dist.logvar)] {
        let err = rel_err(got, &io[name]);
        println!("{name}: max|a-b|/max|b| = {err:.3e}");
        assert!(err <= TOL, "{name}: {err:.3e}");
    }
}

/// Tiled vs untiled decode, split into the blended bands (seams) and the rest. Tiles of 32 px
/// with stride 24: seams are output rows/columns [24r, 24r + 8) for r ≥ 1.
///
/// No reference: this measures how far tiling moves the image. On the tiny random VAE the
/// per-tile GroupNorm statistics dominate (they differ from whole-image statistics everywhere),
/// so both errors are large; the test records them and checks that the seams are no worse than
/// twice the interior (the cross-fade adds no discontinuity of its own).
#[test]
fn tiled_vs_untiled_error_at_and_away_from_seams() {
    let io = io();
    let vae = vae();
    let tiled = vae.tiled_decode(&io["z"], &DIFFUSERS).unwrap();
    let untiled = vae.decode(&io["z"]).unwrap();
    assert!(rel_err(&untiled, &io["untiled_decoded"]) <= TOL);
    let diff = (tiled - untiled).unwrap().abs().unwrap().squeeze(0).unwrap();
    let diff = diff.max(0).unwrap().to_vec2::<f32>().unwrap(); // [H, W] over channels
    let in_seam = |p: usize| p >= 24 && p % 24 < 8;
    let (mut seam, mut interior) = (0f32, 0f32);
    for (y, row) in diff.iter().enumerate() {
        for (x, &d) in row.iter().enumerate() {
            if in_seam(y) || in_seam(x) {
                seam = seam.max(d);
            } else {
                interior = interior.max(d);
            }
        }
    }
    let scale = max_abs(&io["untiled_decoded"]);
    println!("tiled vs untiled max abs: seams {seam:.4} interior {interior:.4} (output max {scale:.3})");
    assert!(seam.is_finite() && interior.is_finite());
    assert!(seam <= 2.0 * interior.max(1e-6), "seams {seam} vs interior {interior}");
}

#[test]
fn auto_mode_tiles_only_above_the_memory_budget() {
    let io = io();
    let vae = vae();
    let z = &io["z"];
    let n = z.dim(0).unwrap() as u64;
    let (h, w) = (z.dim(2).unwrap() as u64, z.dim(3).unwrap() as u64);
    assert_eq!(h * w, 40 * 28);
    let estimate = vae.decode_memory_estimate(z.dims(), DType::F32, &Device::Cpu);
    // f32 on the CPU: blocked attention holds no scores; LIVE_ACTIVATIONS tensors of 16 channels
    // (block_out_channels (8, 16)) at full resolution (2h × 2w).
    assert_eq!(estimate, LIVE_ACTIVATIONS * n * 16 * (2 * h) * (2 * w) * 4);
    // Half precision goes through the upcast attention: 2·1120² f32 scores dominate.
    assert_eq!(vae.decode_memory_estimate(z.dims(), DType::F16, &Device::Cpu), 2 * 1120 * 1120 * 4);
    let auto = |budget| TilingOptions { mode: TilingMode::Auto { memory_budget_bytes: budget }, ..DIFFUSERS };
    let under = vae.decode_with(z, &auto(estimate)).unwrap();
    assert!(rel_err(&under, &io["untiled_decoded"]) <= TOL);
    let over = vae.decode_with(z, &auto(estimate - 1)).unwrap();
    assert!(rel_err(&over, &io["tiled_decoded"]) <= TOL);
    let never = TilingOptions { mode: TilingMode::Never, ..DIFFUSERS };
    assert!(rel_err(&vae.decode_with(z, &never).unwrap(), &io["untiled_decoded"]) <= TOL);
}

#[test]
fn bad_tiling_options_are_reported() {
    let z = &io()["z"];
    let vae = vae();
    for (opts, field) in [
        (TilingOptions { tile_sample_size: 31, ..DIFFUSERS }, "tile_sample_size"),
        (TilingOptions { overlap_factor: 1.0, ..DIFFUSERS }, "overlap_factor"),
    ] {
        let err = vae.decode_with(z, &opts).unwrap_err();
        assert!(matches!(err, ModelError::InvalidConfig { field: f, .. } if f == field), "{err}");
    }
}
