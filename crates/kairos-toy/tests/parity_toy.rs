//! Parity of the toy world's math with torch.distributions and scipy
//! (fixture: tools/fixtures/toy_mixture.py → tests/fixtures/toy_mixture.json).

use kairos_toy::{wasserstein_1d, Component, GaussianMixture, SlicedWasserstein};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/toy_mixture.json")).expect("fixture parses")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn points(v: &Value) -> Vec<[f64; 2]> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| {
            let p = f64s(p);
            [p[0], p[1]]
        })
        .collect()
}

fn mixture(m: &Value) -> GaussianMixture {
    let (w, mu, s) = (f64s(&m["weights"]), points(&m["means"]), f64s(&m["stds"]));
    GaussianMixture::new((0..w.len()).map(|k| Component::isotropic(w[k], mu[k], s[k])).collect())
        .expect("valid mixture")
}

// Tolerance 1e-12 relative to max(1, |log p|): both sides are log-sum-exp in f64 over a few
// terms; far from the narrow grid log p is about -5e4, so rounding there is ~1e-11 absolute.
#[test]
fn log_density_matches_torch_distributions() {
    let f = fixture();
    let x = points(&f["points"]);
    let mut max_err: f64 = 0.0;
    for case in f["cases"].as_array().unwrap() {
        let m = mixture(&case["mixture"]);
        for (p, want) in x.iter().zip(f64s(&case["log_density"])) {
            max_err = max_err.max((m.log_density(*p) - want).abs() / want.abs().max(1.0));
        }
    }
    eprintln!("log_density max rel err {max_err:e}");
    assert!(max_err < 1e-12, "max rel err {max_err:e}");
}

// Tolerance abs 1e-10: the reference is Tweedie's x + sigma^2 grad log p_sigma(x) by autograd,
// whose two terms cancel (|x| up to 15, sigma^2 up to 214), so it carries ~1e-13 of rounding.
#[test]
fn denoiser_matches_torch_tweedie() {
    let f = fixture();
    let x = points(&f["points"]);
    let sigmas = f64s(&f["sigmas"]);
    let mut max_err: f64 = 0.0;
    for case in f["cases"].as_array().unwrap() {
        let m = mixture(&case["mixture"]);
        for (sigma, want) in sigmas.iter().zip(case["denoised"].as_array().unwrap()) {
            for (got, want) in m.denoise_points(&x, *sigma).iter().zip(points(want)) {
                max_err = max_err.max((got[0] - want[0]).abs()).max((got[1] - want[1]).abs());
            }
        }
    }
    eprintln!("denoiser max abs err {max_err:e}");
    assert!(max_err < 1e-10, "max abs err {max_err:e}");
}

// Tolerance abs 1e-12: both are exact sums over quantile pieces in f64.
#[test]
fn wasserstein_matches_scipy() {
    let f = fixture();
    let w = &f["wasserstein_1d"];
    let (mut u, mut v) = (f64s(&w["u"]), f64s(&w["v"]));
    u.sort_by(f64::total_cmp);
    v.sort_by(f64::total_cmp);
    let err_1d = (wasserstein_1d(&u, &v) - w["w1"].as_f64().unwrap()).abs();
    let s = &f["sliced"];
    let metric = SlicedWasserstein::new(&points(&s["b"]), s["directions"].as_u64().unwrap() as usize);
    let err_sliced = (metric.distance(&points(&s["a"])) - s["sw1"].as_f64().unwrap()).abs();
    eprintln!("W1 abs err {err_1d:e}, sliced W1 abs err {err_sliced:e}");
    assert!(err_1d < 1e-12 && err_sliced < 1e-12, "{err_1d:e} {err_sliced:e}");
}

// A whole toy run against k-diffusion (fixture: tools/fixtures/toy_runs.py): the same torch-CPU
// seed for the initial noise (and the ancestral noise), the same sigmas, the exact denoiser.
// Tolerance abs 1e-10: both sides compute in f64 from identical f32 noise; the denoisers differ
// in rounding only (closed form vs Tweedie autograd, ~1e-13 per call above).
#[test]
fn toy_run_matches_k_diffusion() {
    let f: Value = serde_json::from_str(include_str!("fixtures/toy_runs.json")).expect("fixture parses");
    let world = kairos_toy::ToyWorld::with_reference(mixture(&f["mixture"]), 16);
    let sigmas = f64s(&f["sigmas"]);
    let (n, seed) = (f["n"].as_u64().unwrap() as usize, f["seed"].as_u64().unwrap());
    for case in f["cases"].as_array().unwrap() {
        let name = case["sampler"].as_str().unwrap();
        let sampler = kairos_sampler::Sampler::from_name(name).unwrap();
        let run = world.run(&sampler, &sigmas, n, seed).unwrap();
        let max_err = run
            .points
            .iter()
            .zip(points(&case["out"]))
            .map(|(g, w)| (g[0] - w[0]).abs().max((g[1] - w[1]).abs()))
            .fold(0.0, f64::max);
        eprintln!("{name}: max abs err {max_err:e}");
        assert!(max_err < 1e-10, "{name}: max abs err {max_err:e}");
    }
}
