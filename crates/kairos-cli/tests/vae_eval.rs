//! Runs `kairos vae-eval` end to end on three generated images with the tiny random
//! AutoencoderKL of kairos-models' fixtures: the table, results.json, the per-image cache and
//! resuming, the worst-reconstruction grid, and bad-input errors. The metrics themselves are
//! parity-tested in kairos-eval.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs kairos with `KAIROS_DTYPE=f32`, so that a run without `--dtype` is f32 as the fixtures
/// are (`--dtype auto`, the default, could pick bf16 on a CPU with AVX512-BF16).
fn kairos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(args)
        .output()
        .expect("the kairos binary runs")
}

fn tiny_vae() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kairos-models/tests/fixtures/vae/tiny/diffusion_pytorch_model.safetensors")
}

/// A fresh folder with three non-square images (the crop and resize run).
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("kairos-vae-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for k in 0..3u32 {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6 + k * 40) as u8, (y * 8) as u8, ((x * y + k) % 256) as u8])
        });
        img.save(images.join(format!("img{k}.png"))).unwrap();
    }
    (images, root.join("out"))
}

#[test]
fn vae_eval_reports_caches_and_resumes() {
    let (images, out) = setup("resume");
    let vae = tiny_vae();
    let base = [
        "vae-eval",
        "--images",
        images.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "16",
        "--batch",
        "2",
        "--vae-norm-groups",
        "4",
        "--worst",
        "2",
    ];
    let first = kairos(&[&base[..], &["--limit", "2"]].concat());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    // Not a terminal: one progress line per batch of 2, with the throughput.
    assert!(stderr.contains("diffusion_pytorch_model: 2/2 images, ") && stderr.contains(" images/s"), "{stderr}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(results["vaes"][0]["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(String::from_utf8_lossy(&first.stdout).contains("img/s"));
    let cache = out.join("diffusion_pytorch_model.jsonl");
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 2);

    let second = kairos(&base);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("resuming, 2 of 3 images cached"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 3);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("PSNR") && stdout.contains("diffusion_pytorch_model"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let vae = &results["vaes"][0];
    assert_eq!(vae["images"], 3);
    let psnr = vae["psnr"]["mean"].as_f64().unwrap();
    let ssim = vae["ssim"]["mean"].as_f64().unwrap();
    // A random VAE reconstructs badly, but the numbers must be finite and in range.
    assert!(psnr.is_finite() && psnr > 0.0, "{psnr}");
    assert!((-1.0..=1.0).contains(&ssim), "{ssim}");
    assert!(vae["rfid"].is_null() && vae["psim_lpips"].is_null());
    let grid = image::open(out.join("diffusion_pytorch_model_worst.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (32, 32));
}

#[test]
fn vae_eval_bad_inputs_are_reported() {
    let (images, out) = setup("bad");
    let (images, out) = (images.to_str().unwrap(), out.to_str().unwrap());
    let cases: [(&[&str], &str); 4] = [
        (&["vae-eval", "--images", images, "--out", out], "at least one VAE"),
        (&["vae-eval", "--images", images, "--out", out, "--vae", "x.safetensors", "--size", "20"], "multiple of 8"),
        (
            &["vae-eval", "--images", "/nonexistent", "--out", out, "--vae", "x.safetensors"],
            "cannot read the image folder",
        ),
        (
            &[
                "vae-eval",
                "--images",
                images,
                "--out",
                out,
                "--vae",
                "x.safetensors",
                "--inception",
                "/nonexistent/pt.pth",
            ],
            "pt_inception-2015-12-05",
        ),
    ];
    for (args, expected) in cases {
        let outp = kairos(args);
        let stderr = String::from_utf8_lossy(&outp.stderr);
        assert!(!outp.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
