//! Loading the fixtures written by `tools/fixtures/unet.py`.
// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// One block case: weights (f16 on disk, loaded as f32), named inputs and the reference output.
pub struct Case {
    pub vb: VarBuilder<'static>,
    pub inputs: HashMap<String, Tensor>,
    pub output: Tensor,
}

impl Case {
    pub fn input(&self, name: &str) -> &Tensor {
        self.inputs.get(name).unwrap_or_else(|| panic!("fixture has no input.{name}"))
    }
}

pub fn load_safetensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn load_block(name: &str) -> Case {
    let path = fixtures_dir().join("unet_blocks").join(format!("{name}.safetensors"));
    let all = load_safetensors(path);
    let mut weights = HashMap::new();
    let mut inputs = HashMap::new();
    let mut output = None;
    for (k, v) in all {
        if let Some(input) = k.strip_prefix("input.") {
            inputs.insert(input.to_string(), v);
        } else if k == "output" {
            output = Some(v);
        } else {
            weights.insert(k, v);
        }
    }
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    Case { vb, inputs, output: output.expect("fixture has no output") }
}

/// max|a − b| / max|b| over the whole tensor.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let scale = scale.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    diff / scale
}

/// Asserts `rel_err(got, want) <= tol` and prints the measured error (visible with --nocapture).
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let err = rel_err(got, want);
    println!("{name}: max|a-b|/max|b| = {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "{name}: max|a-b|/max|b| = {err:.3e} > {tol:.0e}");
}
