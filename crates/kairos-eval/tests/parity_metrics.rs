//! PSNR and SSIM against scikit-image 0.26, the Fréchet distance against pytorch-fid 0.3.0
//! (fixtures: `tools/fixtures/metrics.py`, all f64).
//!
//! Tolerances: PSNR and SSIM abs 1e-4 (the bar the project set; both sides sum the same f64
//! terms, so the measured error is ~1e-15). Fréchet distance rel 1e-6: f64 throughout, but the
//! trace of the matrix square root comes from symmetric eigen-decompositions instead of scipy's
//! Schur `sqrtm`, so rounding differs.

use kairos_eval::fid::{frechet_distance, FeatureStats};
use kairos_eval::psnr::peak_signal_noise_ratio;
use kairos_eval::ssim::{structural_similarity, SsimOptions};
use kairos_eval::{EvalError, Image};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn image(case: &Value, key: &str) -> Image {
    let s: Vec<usize> = case["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    Image::new(s[0], s[1], s[2], floats(&case[key])).unwrap()
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let fx = fixture();
    for case in fx["images"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (image(case, "image_true"), image(case, "image_test"));
        let dr = case["data_range"].as_f64().unwrap();
        let psnr = peak_signal_noise_ratio(&a, &b, dr).unwrap();
        let default = structural_similarity(&a, &b, &SsimOptions { data_range: dr, ..Default::default() }).unwrap();
        let gaussian = structural_similarity(&a, &b, &SsimOptions::wang_2004(dr)).unwrap();
        for (metric, got, key) in
            [("psnr", psnr, "psnr"), ("ssim", default, "ssim_default"), ("ssim_gaussian", gaussian, "ssim_gaussian")]
        {
            let want = case[key].as_f64().unwrap();
            let err = (got - want).abs();
            println!("{name}.{metric}: {got:.10} vs {want:.10} (|a-b| = {err:.1e})");
            assert!(err <= 1e-4, "{name}.{metric}: {got} vs {want}");
        }
    }
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let fx = fixture();
    for case in fx["frechet"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dim = case["dim"].as_u64().unwrap() as usize;
        let stats = |f: &str, n: &str| {
            FeatureStats::from_features(&floats(&case[f]), case[n].as_u64().unwrap() as usize, dim).unwrap()
        };
        let got = frechet_distance(&stats("features1", "n1"), &stats("features2", "n2")).unwrap();
        let want = case["fid"].as_f64().unwrap();
        let rel = (got - want).abs() / want.abs();
        println!("{name}: {got:.12} vs {want:.12} (rel {rel:.1e})");
        assert!(rel <= 1e-6, "{name}: {got} vs {want}");
    }
}

#[test]
fn bad_metric_inputs_are_reported() {
    let a = Image::new(8, 8, 3, vec![0.0; 192]).unwrap();
    let b = Image::new(8, 9, 3, vec![0.0; 216]).unwrap();
    assert!(matches!(peak_signal_noise_ratio(&a, &b, 255.0), Err(EvalError::ShapeMismatch { .. })));
    assert!(matches!(peak_signal_noise_ratio(&a, &a, 0.0), Err(EvalError::InvalidArgument { name: "data_range", .. })));
    assert_eq!(peak_signal_noise_ratio(&a, &a, 255.0).unwrap(), f64::INFINITY);
    let small = Image::new(5, 5, 1, vec![0.0; 25]).unwrap();
    let err = structural_similarity(&small, &small, &SsimOptions::default()).unwrap_err();
    assert!(matches!(err, EvalError::InvalidArgument { name: "win_size", .. }), "{err}");
    let even = SsimOptions { win_size: Some(4), ..Default::default() };
    assert!(structural_similarity(&a, &a, &even).is_err());
    assert!(Image::new(2, 2, 3, vec![0.0; 5]).is_err());
    assert!(FeatureStats::from_features(&[1.0, 2.0], 1, 2).is_err());
}
