//! Shared harness of the sampler parity tests (`tests/parity_samplers_*.rs`).
//!
//! Every sampler fixture runs the same analytic denoiser in Python (torch float64) and here:
//!
//! ```text
//! D_cond(x, σ)   = x / (1 + σ²) + 0.5 · sin(x) · σ / (1 + σ²)
//! D_uncond(x, σ) = x / (1 + σ²) − 0.25 · cos(x) · σ / (1 + σ²)
//! ```
//!
//! Fixture JSON layout (one file per reference script, under `tests/fixtures/`):
//!
//! ```text
//! {
//!   "meta":    { "script", versions, "dtype", "tolerance", ... },
//!   "x_init":  { "shape": [2, 3, 4, 4], "data": [...] },   // standard normal; a case starts at x_init * sigmas[0]
//!   "sigmas":  { "<key>": [...], ... },                     // descending, ending in 0
//!   "cases":   [ { "name", "sampler", "options", "sigmas": "<key>",
//!                  "noise": [[...], ...],                    // every draw the reference used, in order
//!                  "xs": [[...], ...],                       // callback x (state at the step's first denoiser call), one per step
//!                  "out": [...] } ]                          // the returned x
//! }
//! ```
//!
//! Each test file includes this with `mod common;`; not every test uses every helper.
#![allow(dead_code)]

use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use kairos_sampler::noise::FixedNoise;
use kairos_sampler::{DenoiseOutput, Denoiser, SampleCtx, Sampler, SamplerError, StepInfo};
use serde_json::Value;

/// The analytic denoiser above; computes in the dtype of `x`.
#[derive(Debug, Default)]
pub struct AnalyticDenoiser {
    /// Whether to also return `uncond_denoised` (for CFG++ samplers).
    pub with_uncond: bool,
    /// Number of calls so far.
    pub calls: usize,
}

impl AnalyticDenoiser {
    pub fn new(with_uncond: bool) -> Self {
        Self { with_uncond, calls: 0 }
    }
}

impl Denoiser for AnalyticDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        self.calls += 1;
        let s2 = 1.0 + sigma * sigma;
        // Same operation order as the Python side: x / s2 + ((0.5 * sin(x)) * sigma) / s2 (candle
        // divides by a scalar as a multiplication by its reciprocal: a 1-ulp difference).
        let base = (x / s2)?;
        let denoised = (&base + (((x.sin()? * 0.5)? * sigma)? / s2)?)?;
        let uncond_denoised =
            if self.with_uncond { Some((&base - (((x.cos()? * 0.25)? * sigma)? / s2)?)?) } else { None };
        Ok(DenoiseOutput { denoised, uncond_denoised })
    }
}

/// A parsed fixture file.
pub struct Fixture {
    pub file: String,
    pub json: Value,
}

/// One reference run.
pub struct Case {
    pub name: String,
    pub sigmas: Vec<f64>,
    pub noise: Vec<Vec<f64>>,
    pub xs: Vec<Vec<f64>>,
    pub out: Vec<f64>,
}

fn floats(v: &Value, what: &str) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected an array"))
        .iter()
        .map(|f| f.as_f64().unwrap_or_else(|| panic!("{what}: expected numbers")))
        .collect()
}

fn float_rows(v: &Value, what: &str) -> Vec<Vec<f64>> {
    v.as_array().unwrap_or_else(|| panic!("{what}: expected an array")).iter().map(|r| floats(r, what)).collect()
}

/// Loads `tests/fixtures/<file>`.
pub fn load_fixture(file: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    Fixture { file: file.to_string(), json }
}

impl Fixture {
    /// The shape of every state and noise tensor.
    pub fn shape(&self) -> Vec<usize> {
        floats(&self.json["x_init"]["shape"], "x_init.shape").into_iter().map(|d| d as usize).collect()
    }

    /// A tensor of the fixture's shape from flat data, in `dtype`.
    pub fn tensor(&self, data: &[f64], dtype: DType) -> Tensor {
        Tensor::from_vec(data.to_vec(), self.shape(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("fixture tensor")
    }

    /// The standard normal initial tensor (not yet scaled by sigma_max).
    pub fn x_init(&self, dtype: DType) -> Tensor {
        self.tensor(&floats(&self.json["x_init"]["data"], "x_init.data"), dtype)
    }

    /// A named sigma list.
    pub fn sigmas(&self, key: &str) -> Vec<f64> {
        floats(&self.json["sigmas"][key], key)
    }

    /// The case called `name`.
    pub fn case(&self, name: &str) -> Case {
        let c = self.json["cases"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("{}: no case `{name}`", self.file));
        let key = c["sigmas"].as_str().unwrap_or_else(|| panic!("{name}: sigmas key"));
        Case {
            name: name.to_string(),
            sigmas: self.sigmas(key),
            noise: float_rows(&c["noise"], "noise"),
            xs: float_rows(&c["xs"], "xs"),
            out: floats(&c["out"], "out"),
        }
    }

    /// Names of all cases.
    pub fn case_names(&self) -> Vec<String> {
        self.json["cases"]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

/// What a run recorded: the callback's x per step, and the output.
pub struct Trace {
    pub xs: Vec<Tensor>,
    pub out: Tensor,
    /// Draws left unused in the fixed noise source (0 when the sampler drew what the reference drew).
    pub noise_left: usize,
    /// Denoiser calls made.
    pub calls: usize,
}

/// Runs `sampler` from `x` with the analytic denoiser and `noise` replayed through [`FixedNoise`],
/// recording the callback's x at every step.
pub fn run_traced(
    sampler: &Sampler,
    x: Tensor,
    sigmas: &[f64],
    noise: Vec<Tensor>,
    with_uncond: bool,
) -> Result<Trace, SamplerError> {
    let mut denoiser = AnalyticDenoiser::new(with_uncond);
    let mut fixed = FixedNoise::new(noise);
    let mut xs = Vec::new();
    let mut record = |info: &StepInfo<'_>| {
        xs.push(info.x.clone());
        ControlFlow::Continue(())
    };
    let out = {
        let mut ctx = SampleCtx::new(&mut denoiser, &mut fixed).with_callback(&mut record);
        sampler.sample(&mut ctx, x, sigmas)?
    };
    Ok(Trace { xs, out, noise_left: fixed.remaining(), calls: denoiser.calls })
}

/// Max |a - b| over all elements (computed in f64).
pub fn max_abs_diff(a: &Tensor, b: &[f64]) -> f64 {
    let a = a.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).expect("tensor data");
    assert_eq!(a.len(), b.len(), "element count");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Max |v| over a slice.
pub fn max_abs(b: &[f64]) -> f64 {
    b.iter().map(|v| v.abs()).fold(0.0, f64::max)
}

/// Tolerances of one parity check.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    /// Max abs error of the f64 run against the f64 reference.
    pub f64_abs: f64,
    /// Max abs error of the f32 run against the f64 reference, relative to the largest |x| of the
    /// reference trace (the scale f32 rounds at: the last step of a run to sigma 0 cancels a state of
    /// size ~sigma_max down to a small x0, so a per-step relative error would measure that
    /// cancellation, which any f32 implementation has, rather than the sampler).
    pub f32_rel: f64,
}

/// Measured errors of one parity check.
#[derive(Debug, Clone, Copy)]
pub struct Errors {
    pub f64_abs: f64,
    pub f32_rel: f64,
}

/// Runs fixture case `case` with `sampler` in f64 and in f32 and compares the whole trace (every
/// step's x and the output) with the reference; asserts `tol` and that the sampler drew exactly
/// the reference's noise. Prints and returns the measured errors.
pub fn check_case(fx: &Fixture, case: &str, sampler: Sampler, with_uncond: bool, tol: Tol) -> Errors {
    let c = fx.case(case);
    let mut errs = Errors { f64_abs: 0.0, f32_rel: 0.0 };
    for dtype in [DType::F64, DType::F32] {
        // x_init * sigma_max in f64 (as the reference does), then cast.
        let x = (fx.x_init(DType::F64) * c.sigmas[0]).and_then(|t| t.to_dtype(dtype)).expect("initial x");
        let noise = c.noise.iter().map(|n| fx.tensor(n, dtype)).collect();
        let trace = run_traced(&sampler, x, &c.sigmas, noise, with_uncond)
            .unwrap_or_else(|e| panic!("{case} ({dtype:?}): sampler failed: {e}"));
        assert_eq!(trace.xs.len(), c.xs.len(), "{case}: one callback per step");
        assert_eq!(trace.noise_left, 0, "{case}: sampler drew fewer noise tensors than the reference");
        let scale = c.xs.iter().chain(std::iter::once(&c.out)).map(|w| max_abs(w)).fold(1e-30, f64::max);
        let steps = trace.xs.iter().zip(&c.xs).chain(std::iter::once((&trace.out, &c.out)));
        for (i, (got, want)) in steps.enumerate() {
            let abs = max_abs_diff(got, want);
            match dtype {
                DType::F64 => errs.f64_abs = errs.f64_abs.max(abs),
                _ => errs.f32_rel = errs.f32_rel.max(abs / scale),
            }
            assert!(abs.is_finite(), "{case} ({dtype:?}) step {i}: non-finite result");
        }
    }
    println!(
        "{case}: f64 max abs err {:.3e} (tol {:.0e}), f32 max rel err {:.3e} (tol {:.0e})",
        errs.f64_abs, tol.f64_abs, errs.f32_rel, tol.f32_rel
    );
    assert!(errs.f64_abs <= tol.f64_abs, "{case}: f64 max abs err {:e} > {:e}", errs.f64_abs, tol.f64_abs);
    assert!(errs.f32_rel <= tol.f32_rel, "{case}: f32 max rel err {:e} > {:e}", errs.f32_rel, tol.f32_rel);
    errs
}
