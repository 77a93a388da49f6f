//! `kairos bench --family sdxl` end to end, on the tiny SDXL of `tools/bench/tiny_sdxl` (the
//! full-size networks take ~14 GB in float32, too much for a test): both text encoders, the
//! `text_time` UNet at two resolutions and batches, the VAE decode at the largest resolution
//! only, whole CFG and LCM txt2img runs through `SdxlPromptEncoder`, and `--dtype bf16`.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs kairos with `KAIROS_DTYPE=f32`, so that a run without `--dtype` is f32 as the fixtures
/// are (`--dtype auto`, the default, could pick bf16 on a CPU with AVX512-BF16).
fn kairos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(args)
        .output()
        .expect("the kairos binary runs")
}

fn tiny_sdxl() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/tiny_sdxl");
    dir.to_string_lossy().into_owned()
}

/// Runs `kairos bench --family sdxl --config-dir tiny_sdxl --gemm 0` with `args` and returns the
/// JSON report.
fn bench(tag: &str, args: &[&str]) -> Value {
    let path = std::env::temp_dir().join(format!("kairos-bench-sdxl-{tag}-{}.json", std::process::id()));
    let path_s = path.to_string_lossy().into_owned();
    let dir = tiny_sdxl();
    let base = ["bench", "--family", "sdxl", "--config-dir", &dir, "--gemm", "0", "--json", &path_s];
    let out = kairos(&[&base[..], args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    report
}

fn case(report: &Value, name: &str) -> Value {
    report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no case `{name}` in {report}"))
}

/// Every SDXL case runs and is reported; the UNet's FLOP count is the one PyTorch's
/// FlopCounterMode gave for the same tiny config (tools/bench/flop_counts.json: batch 1 at 64²,
/// 121 239 552 FLOPs), and the CFG run does twice the UNet batch of the LCM one.
#[test]
fn bench_sdxl_runs_every_case() {
    let args = ["--resolutions", "64,128", "--batches", "1,2", "--txt2img-steps", "2", "--lcm-steps", "2"];
    let report = bench("cases", &args);
    let names: Vec<&str> = report["cases"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "text_encoder b2",
            "text_encoder_2 b2",
            "unet b1 64",
            "unet b2 64",
            "unet b1 128",
            "unet b2 128",
            "vae_decode b1 128",
            "txt2img 128 cfg 2 steps",
            "txt2img 128 lcm 2 steps",
        ],
        "{report}"
    );
    for c in report["cases"].as_array().unwrap() {
        assert!(c["seconds_min"].as_f64().unwrap() > 0.0 && c["gflop"].as_f64().unwrap() > 0.0, "{c}");
    }
    let unet = case(&report, "unet b1 64")["gflop"].as_f64().unwrap();
    assert!((unet - 0.121239552).abs() < 1e-9, "{unet}");
    let b2 = case(&report, "unet b2 64")["gflop"].as_f64().unwrap();
    assert!((b2 - 2.0 * unet).abs() < 1e-9, "{b2}");
    let (cfg, lcm) = (case(&report, "txt2img 128 cfg 2 steps"), case(&report, "txt2img 128 lcm 2 steps"));
    let extra = cfg["gflop"].as_f64().unwrap() - lcm["gflop"].as_f64().unwrap();
    let want = 2.0 * case(&report, "unet b1 128")["gflop"].as_f64().unwrap();
    assert!((extra - want).abs() < 1e-6 * want, "{extra} vs {want}");
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["unet_difference"].is_null(), "{report}");
}

/// `--dtype bf16` on SDXL: the bf16 `text_time` UNet (pooled text and size ids included) is
/// compared with the f32 one on the same inputs; the difference is at bf16's scale.
#[test]
fn bench_sdxl_reports_bf16_difference_from_f32() {
    let report = bench("bf16", &["--resolutions", "64", "--batches", "1", "--dtype", "bf16", "--txt2img-steps", "1"]);
    assert_eq!(report["dtype"], "bf16", "{report}");
    let diff = &report["unet_difference"];
    assert_eq!(diff["case"], "unet b1 64", "{report}");
    let range = diff["max_abs_over_range"].as_f64().unwrap();
    assert!(range > 0.0 && range < 2e-2, "{report}");
    case(&report, "txt2img 64 cfg 1 steps");
}

/// Bad `--family` and `--config-dir` values are refused with a message naming the fix.
#[test]
fn bench_family_errors() {
    let out = kairos(&["bench", "--family", "sd3", "--gemm", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("use sd15 or sdxl"), "{err}");
    let out = kairos(&["bench", "--family", "sdxl", "--config-dir", "/nonexistent/kairos", "--gemm", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/kairos") && !err.contains("panicked"), "{err}");
}
