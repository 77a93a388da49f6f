//! Runs the `kairos` binary: JSON output of `schedule` and `toy`, plots, and every bad-input
//! error (non-zero exit, a message naming the problem and the accepted values, no panic).

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

/// Runs a command that must succeed and print exactly one JSON object.
fn json(args: &[&str]) -> Value {
    let out = kairos(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {stdout}"));
    assert!(v.is_object(), "{v}");
    v
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Runs a command that must fail cleanly; returns its stderr.
fn fails(args: &[&str], expected: &[&str]) -> String {
    let out = kairos(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: `{e}` not in: {stderr}");
    }
    stderr
}

// The published SD1 AYS schedule (ComfyUI's NOISE_LEVELS["SD1"] with the last value set to 0) and
// its timesteps (the NVIDIA howto's [999, 850, ..., 24]); 1e-6 since the table is given to 10
// digits and sigma_to_t interpolates in log sigma.
#[test]
fn schedule_json_has_sigmas_and_timesteps() {
    let v = json(&["schedule", "--family", "sd1", "--schedule", "ays", "--steps", "10", "--json"]);
    let sigmas = f64s(&v["sigmas"]);
    let timesteps = f64s(&v["timesteps"]);
    let want = [
        14.6146412293,
        6.4745760956,
        3.8636745985,
        2.6946151520,
        1.8841921177,
        1.3943805092,
        0.9642583904,
        0.6523686016,
        0.3977456272,
        0.1515232662,
        0.0,
    ];
    assert_eq!(sigmas.len(), 11);
    for (g, w) in sigmas.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{sigmas:?}");
    }
    let want_t = [999.0, 850.0, 736.0, 645.0, 545.0, 455.0, 343.0, 233.0, 124.0, 24.0];
    assert_eq!(timesteps.len(), 10);
    for (g, w) in timesteps.iter().zip(want_t) {
        assert!((g - w).abs() < 1e-6, "{timesteps:?}");
    }
}

#[test]
fn schedule_json_for_each_named_schedule_and_denoise() {
    for name in ["normal", "karras", "exponential", "sgm_uniform", "simple", "kl_optimal", "ays", "gits"] {
        let v = json(&["schedule", "--family", "sdxl", "--schedule", name, "--steps", "7", "--json"]);
        let sigmas = f64s(&v["sigmas"]);
        assert_eq!((sigmas.len(), f64s(&v["timesteps"]).len()), (8, 7), "{name}");
        assert_eq!(sigmas[7], 0.0, "{name}");
        assert!(sigmas.windows(2).all(|w| w[1] < w[0]), "{name}: {sigmas:?}");
    }
    // ComfyUI's AYS node truncates: 10 steps at denoise 0.5 keeps the last 5 (research notes §2.3).
    let v = json(&["schedule", "--family", "sdxl", "--schedule", "ays", "--steps", "10", "--denoise", "0.5", "--json"]);
    let sigmas = f64s(&v["sigmas"]);
    assert_eq!(sigmas.len(), 6);
    assert!((sigmas[0] - 0.8620721141).abs() < 1e-9, "{sigmas:?}");
    // karras follows diffusers' img2img (int(10 · 0.62) = 6 steps of the 10-step schedule) unless
    // another rule is asked for: ComfyUI's KSampler runs 10 of int(10 / 0.62) = 16, A1111 7.
    let karras = |rule: &[&str]| {
        let args = ["schedule", "--schedule", "karras", "--steps", "10", "--denoise", "0.62", "--json"];
        f64s(&json(&[&args[..], rule].concat())["sigmas"])
    };
    let full = f64s(&json(&["schedule", "--schedule", "karras", "--steps", "10", "--json"])["sigmas"]);
    assert_eq!(karras(&[]), full[4..]);
    assert_eq!(karras(&["--denoise-rule", "a1111"]), full[3..]);
    let sixteen = f64s(&json(&["schedule", "--schedule", "karras", "--steps", "16", "--json"])["sigmas"]);
    assert_eq!(karras(&["--denoise-rule", "ksampler"]), sixteen[6..]);
}

#[test]
fn schedule_json_from_user_lists() {
    let v = json(&["schedule", "--sigmas", "14.6,3,1,0", "--json"]);
    assert_eq!(f64s(&v["sigmas"]), vec![14.6, 3.0, 1.0, 0.0]);
    assert_eq!(f64s(&v["timesteps"]).len(), 3);
    // Timesteps 999 and 0 are the ends of SD's table: sigma_max, sigma_min, then 0 appended.
    let v = json(&["schedule", "--timesteps", "999,500,0", "--json"]);
    let sigmas = f64s(&v["sigmas"]);
    assert_eq!(sigmas.len(), 4);
    assert!((sigmas[0] - 14.614641).abs() < 1e-5 && (sigmas[2] - 0.0291672).abs() < 1e-6 && sigmas[3] == 0.0);
}

#[test]
fn schedule_compare_json_and_plots() {
    let v = json(&["schedule", "--compare", "karras,exponential,ays", "--steps", "5", "--json"]);
    let list = v["schedules"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|s| s["schedule"].as_str().unwrap()).collect();
    assert_eq!(names, ["karras", "exponential", "ays"]);
    assert!(list.iter().all(|s| f64s(&s["sigmas"]).len() == 6 && f64s(&s["timesteps"]).len() == 5));

    let dir = std::env::temp_dir().join(format!("kairos-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (png, svg) = (dir.join("s.png"), dir.join("s.svg"));
    for path in [&png, &svg] {
        let out =
            kairos(&["schedule", "--compare", "karras,ays,gits", "--steps", "10", "--plot", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("karras") && svg_text.contains("gits"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn toy_json_has_one_row_per_combination() {
    let v = json(&[
        "toy",
        "--samplers",
        "euler,dpmpp_2m",
        "--schedules",
        "karras,ays",
        "--steps",
        "3,4",
        "--seeds",
        "2",
        "--points",
        "64",
        "--mixture",
        "ring",
        "--json",
    ]);
    assert_eq!(v["mixture"], "ring");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2);
    for r in rows {
        for key in ["kl", "sliced_wasserstein", "nll"] {
            assert!(r[key]["mean"].as_f64().unwrap().is_finite() && r[key]["std"].as_f64().unwrap() >= 0.0, "{r}");
        }
    }
    let euler3 = rows.iter().find(|r| r["sampler"] == "euler" && r["steps"] == 3).unwrap();
    assert_eq!(euler3["nfe"], 3);
    assert!(v["true_samples"]["nll"]["mean"].as_f64().unwrap().is_finite());
}

#[test]
fn toy_table_prints() {
    let out = kairos(&[
        "toy",
        "--samplers",
        "heun",
        "--schedules",
        "exponential",
        "--steps",
        "2",
        "--seeds",
        "1",
        "--points",
        "32",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("heun") && stdout.contains("exponential") && stdout.contains("±"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    fails(&["schedule", "--schedule", "cosine"], &["unknown schedule `cosine`", "karras", "ays", "gits"]);
    fails(&["schedule", "--family", "sd3", "--schedule", "ays"], &["unknown model family `sd3`", "sd1", "sdxl"]);
    fails(&["schedule", "--schedule", "karras", "--steps", "0"], &["steps must be at least 1"]);
    fails(&["schedule", "--schedule", "karras", "--denoise", "1.5"], &["denoise must be in (0, 1]"]);
    fails(&["schedule", "--schedule", "karras", "--denoise", "0"], &["denoise must be in (0, 1]"]);
    fails(&["schedule", "--sigmas", "1,2,0"], &["strictly decreasing"]);
    fails(&["schedule", "--compare", "karras,nope"], &["unknown schedule `nope`"]);
    fails(&["schedule", "--schedule", "karras", "--plot", "out.jpg"], &["must end in .png or .svg"]);
    fails(&["schedule"], &["required"]);
    fails(&["toy", "--samplers", "eulerx", "--points", "8"], &["unknown sampler `eulerx`", "euler", "dpmpp_2m"]);
    fails(&["toy", "--schedules", "cosine", "--points", "8"], &["unknown schedule `cosine`", "karras"]);
    fails(&["toy", "--steps", "0", "--points", "8"], &["steps must be at least 1"]);
    fails(&["toy", "--mixture", "9x9", "--points", "8"], &["unknown mixture `9x9`", "8x8", "ring"]);
    fails(&["toy", "--seeds", "0", "--points", "8"], &["--seeds must be at least 1"]);
    fails(&["toy", "--points", "0"], &["--points must be at least 1"]);
    let dir = std::env::temp_dir().join(format!("kairos-cli-mixture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    let cases = [
        (
            r#"{"weights": [0.5, 0.6], "means": [[0, 0], [1, 1]], "covariances": [[[1, 0], [0, 1]], [[1, 0], [0, 1]]]}"#,
            "sum to 1.1",
        ),
        (r#"{"weights": [1], "means": [[0, 0]], "covariances": [[[1, 2], [2, 1]]]}"#, "not positive definite"),
        (r#"{"weights": [1], "means": [[0, 0]]}"#, "not a mixture file"),
    ];
    for (text, needle) in cases {
        std::fs::write(&bad, text).unwrap();
        let path = bad.to_string_lossy();
        fails(&["toy", "--mixture-file", &path, "--points", "8"], &[needle, "bad.json"]);
        fails(&["schedule", "optimize", "--mixture-file", &path, "--steps", "2"], &[needle, "bad.json"]);
    }
    fails(&["toy", "--mixture-file", "/nonexistent/m.json", "--points", "8"], &["/nonexistent/m.json", "cannot read"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// A mixture file (anisotropic, unequal weights) with its own σ range: `toy` builds the schedules
// on that range (a continuous EDM schedule) unless --family is given.
#[test]
fn toy_reads_a_mixture_file_and_its_sigma_range() {
    let dir = std::env::temp_dir().join(format!("kairos-cli-mixture-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.json");
    std::fs::write(
        &file,
        r#"{"weights": [0.7, 0.3], "means": [[-1, 0], [1, 0.5]],
            "covariances": [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0], [0, 0.3]]], "sigma_min": 0.01, "sigma_max": 20}"#,
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let args = ["toy", "--mixture-file", &path, "--samplers", "euler", "--schedules", "karras", "--steps", "3"];
    let v = json(&[&args[..], &["--seeds", "1", "--points", "64", "--json"]].concat());
    assert!(v["mixture"].as_str().unwrap().ends_with("m.json"), "{v}");
    assert!(v["results"][0]["kl"]["mean"].as_f64().unwrap().is_finite(), "{v}");
    let sd1 = json(&[&args[..], &["--seeds", "1", "--points", "64", "--json", "--family", "sd1"]].concat());
    assert_eq!((v["family"].as_str(), sd1["family"].as_str()), (Some("svd"), Some("sd1")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kairos bench` with its whole-run cases on the full-size SD1.5 architecture at 64×64 (seeded
/// random weights, built in-process): the CFG and LCM txt2img cases run and are reported with
/// FLOP counts in which the CFG run does twice the UNet batch of the LCM one; a resolution
/// that is not a multiple of 8 is refused.
#[test]
fn bench_times_whole_cfg_and_lcm_runs() {
    let path = std::env::temp_dir().join(format!("kairos-bench-{}.json", std::process::id()));
    let path_s = path.to_string_lossy().into_owned();
    let args = ["bench", "--resolutions", "64", "--batches", "1", "--gemm", "0", "--txt2img-steps", "2"];
    let out = kairos(&[&args[..], &["--lcm-steps", "2", "--json", &path_s]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let case = |name: &str| -> Value {
        report["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| {
            panic!("no case `{name}` in {report}");
        })
    };
    let (cfg, lcm, unet) = (case("txt2img 64 cfg 2 steps"), case("txt2img 64 lcm 2 steps"), case("unet b1 64"));
    assert!(cfg["seconds_min"].as_f64().unwrap() > 0.0 && lcm["seconds_min"].as_f64().unwrap() > 0.0);
    // Same prompt encoding and decode; the CFG run has 2 extra batch-1 UNet calls' worth per step.
    let extra = cfg["gflop"].as_f64().unwrap() - lcm["gflop"].as_f64().unwrap();
    let want = 2.0 * unet["gflop"].as_f64().unwrap();
    assert!((extra - want).abs() < 1e-6 * want, "{extra} vs {want}");
    let _ = std::fs::remove_file(&path);
    fails(&["bench", "--resolutions", "60", "--gemm", "0"], &["resolution 60 must be a positive multiple of 8"]);
}

/// `--device`: a GPU this build lacks names the feature to rebuild with; a malformed device is
/// refused with the accepted forms; `cpu` runs (one text-encoder case, the cheapest, which also
/// checks that `--components` times only what it names and refuses unknown names).
#[test]
fn device_option_errors_name_the_fix() {
    let out = kairos(&["bench", "--device", "cuda:1", "--components", "text-encoder", "--gemm", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(not(feature = "cuda")) {
        assert!(!out.status.success() && err.contains("--features cuda"), "{err}");
    }
    for bad in ["gpu", "cuda:x", "cpu:1"] {
        let out = kairos(&["generate", "--device", bad, "--model", "x", "--prompt", "p", "-o", "o.png"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cuda:N"), "{bad}: {err}");
    }
    let out =
        kairos(&["bench", "--device", "cpu", "--components", "text-encoder", "--resolutions", "64", "--gemm", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `--components` times only what it names.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("text_encoder b2") && !stdout.contains("unet") && !stdout.contains("vae"), "{stdout}");
    let out = kairos(&["bench", "--components", "unet,clip", "--gemm", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("use text-encoder, unet or vae"), "{err}");
}

/// `kairos bench --dtype bf16` reports the dtype and the bf16 UNet's difference from the f32
/// UNet on the same input: nonzero (the weights were rounded) and at bf16's scale (measured
/// 3.3e-3 of the output range at 64×64; 2^-8 ≈ 3.9e-3 is bf16's relative precision).
#[test]
fn bench_reports_bf16_difference_from_f32() {
    let path = std::env::temp_dir().join(format!("kairos-bench-bf16-{}.json", std::process::id()));
    let path_s = path.to_string_lossy().into_owned();
    let args = ["bench", "--resolutions", "64", "--batches", "1", "--gemm", "0", "--dtype", "bf16", "--json", &path_s];
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(report["dtype"], "bf16", "{report}");
    let diff = &report["unet_difference"];
    assert_eq!(diff["case"], "unet b1 64", "{report}");
    let range = diff["max_abs_over_range"].as_f64().unwrap();
    assert!(range > 0.0 && range < 2e-2, "{report}");
    let _ = std::fs::remove_file(&path);
}
