//! The FID Inception-v3 against pytorch-fid 0.3.0 `InceptionV3([3])` and LPIPS against the
//! `lpips` package 0.1.4 `LPIPS(net="vgg")` (fixtures: `tools/fixtures/metrics.py`).
//!
//! Both networks use deterministic weights, `formula(name, shape)` of the fixture script,
//! rebuilt here by [`Formula`] (an integer hash, so both sides get the same f32 values); no
//! weights are stored.
//!
//! Tolerance: max|a−b| / max|b| ≤ 1e-4, f32 on CPU: the same convolutions summed in another
//! order through ~50 (Inception) and 13 (VGG) layers, plus the 299×299 bilinear resize.

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use kairos_eval::inception::FidInceptionV3;
use kairos_eval::lpips::Lpips;
use kairos_eval::EvalError;

const TOL: f32 = 1e-4;

/// A `VarBuilder` backend computing each weight from its name and shape, as the fixture does.
struct Formula;

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF29CE484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001B3))
}

fn uniform(name: &str, n: usize) -> impl Iterator<Item = f64> {
    let seed = fnv1a64(name);
    (0..n as u64).map(move |k| {
        let mut z = seed.wrapping_add(k).wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        2.0 * ((z >> 11) as f64 * 2f64.powi(-53)) - 1.0
    })
}

fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n = shape.iter().product();
    let fan_in: usize = shape[1..].iter().product();
    uniform(name, n)
        .map(|u| {
            let v = if name.ends_with("running_var") {
                1.0 + 0.25 * (u + 1.0)
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                0.1 * u
            } else if name.ends_with("bn.weight") {
                1.0 + 0.1 * u
            } else if name.starts_with("lin") {
                0.5 * (u + 1.0) / shape[1] as f64
            } else {
                u * (6.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

impl SimpleBackend for Formula {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(formula(name, s.dims()), s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("formula weights need a shape ({name})")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn formula_vb() -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Formula), DType::F32, Device::Cpu)
}

fn io() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/networks.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn fid_inception_matches_pytorch_fid_formula_weights() {
    let io = io();
    let net = FidInceptionV3::new(formula_vb()).unwrap();
    let got = net.forward(&io["inception_x"]).unwrap();
    let err = rel_err(&got, &io["inception_features"]);
    println!("inception features [2, 2048]: max|a-b|/max|b| = {err:.3e}");
    assert!(err <= TOL, "{err:.3e}");
}

#[test]
fn lpips_matches_lpips_package_formula_weights() {
    let io = io();
    let net = Lpips::new(formula_vb(), formula_vb()).unwrap();
    let layers = net.forward_layers(&io["lpips_a"], &io["lpips_b"]).unwrap();
    for (k, got) in layers.iter().enumerate() {
        let err = rel_err(got, &io[&format!("lpips_layer{k}")]);
        println!("lpips layer {k}: {err:.3e}");
        assert!(err <= TOL, "layer {k}: {err:.3e}");
    }
    let got = net.forward(&io["lpips_a"], &io["lpips_b"]).unwrap();
    let err = rel_err(&got, &io["lpips"]);
    println!("lpips: {err:.3e}");
    assert!(err <= TOL, "{err:.3e}");
}

#[test]
fn missing_network_weights_are_reported() {
    let err = FidInceptionV3::load("/nonexistent/pt_inception.pth".as_ref(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, EvalError::WeightsNotFound { network: "inception", .. }), "{err}");
    assert!(err.to_string().contains("pt_inception-2015-12-05"), "{err}");
    let err =
        Lpips::load("/nonexistent/vgg16.pth".as_ref(), "/nonexistent/vgg.pth".as_ref(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, EvalError::WeightsNotFound { .. }), "{err}");
}
