//! Parity of kairos' seeded generators with torch's CPU `randn` and A1111's Philox imitation of
//! torch's CUDA `randn`, the batch conventions of diffusers and A1111, and the statistics of the
//! Brownian-tree noise. Fixtures: `tools/fixtures/rng.py` → `tests/fixtures/rng.json`.

use candle_core::{DType, Device, Tensor};
use kairos_sampler::noise::{
    BatchSeeding, BrownianTreeNoise, NoiseError, PhiloxGenerator, RngKind, SeededNoise, TorchCpuGenerator,
};
use kairos_sampler::NoiseSource;
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rng.json"))
        .expect("fixture rng.json");
    serde_json::from_str(&text).expect("valid json")
}

/// FNV-1a 64 over the little-endian bytes of the float32 values, as the fixture script computes it.
fn fnv1a64(values: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn numel(shape: &Value) -> usize {
    shape.as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).product()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Replays every case of `section` through `randn` (one generator per case, draws in order) and
/// requires bitwise equality: full values for small draws, head/tail and the hash of all values
/// otherwise (the sweep cases carry only the hash). Returns the number of draws checked.
fn check_bitwise<G>(section: &str, make: impl Fn(u64) -> G, randn: impl Fn(&mut G, usize) -> Vec<f32>) -> usize {
    let fx = fixture();
    let mut checked = 0;
    for case in fx[section].as_array().expect("cases") {
        let seed = case["seed"].as_u64().expect("u64 seed");
        let mut g = make(seed);
        for (k, draw) in case["draws"].as_array().expect("draws").iter().enumerate() {
            let n = numel(&draw["shape"]);
            let got = randn(&mut g, n);
            let ctx = format!("{section} seed {seed} draw {k} shape {}", draw["shape"]);
            if let Some(values) = draw.get("values") {
                assert_eq!(bits(&got), bits(&floats(values)), "{ctx}: {got:?}");
            } else if let Some(head) = draw.get("head") {
                assert_eq!(bits(&got[..8]), bits(&floats(head)), "{ctx} head");
                assert_eq!(bits(&got[n - 8..]), bits(&floats(&draw["tail"])), "{ctx} tail");
            }
            assert_eq!(fnv1a64(&got), draw["fnv1a64"].as_str().expect("hash"), "{ctx} hash");
            checked += 1;
        }
    }
    checked
}

/// Tolerance: bitwise. The port follows torch's arithmetic operation by operation (mt19937,
/// 24/53-bit uniforms, the AVX2 Cephes Box-Muller for numel >= 16, libm float64 below 16).
#[test]
fn torch_cpu_randn_is_bitwise_equal() {
    let n = check_bitwise("torch_cpu", TorchCpuGenerator::new, |g, n| g.randn(n));
    assert!(n >= 100, "only {n} draws checked");
}

/// Tolerance: bitwise against A1111's numpy code (same float64 Box-Muller, libm vs numpy's
/// float64 log/sin can differ by an ulp, which survives the float32 rounding only rarely).
#[test]
fn philox_randn_is_bitwise_equal_to_a1111() {
    let n = check_bitwise("philox", PhiloxGenerator::new, |g, n| g.randn(n));
    assert!(n >= 100, "only {n} draws checked");
}

/// Tolerance: 1e-6 abs. A1111's Box-Muller runs in float64 from exact 32-bit integers, CUDA's
/// (curand) in float32 with fast intrinsics; the published CUDA values are printed to 8 decimals.
#[test]
fn philox_matches_published_torch_cuda_randn() {
    let fx = fixture();
    let case = &fx["cuda_published"];
    let want = floats(&case["values"]);
    let got = PhiloxGenerator::new(case["seed"].as_u64().expect("seed")).randn(numel(&case["shape"]));
    let max_err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    assert!(max_err <= 1e-6, "max abs error {max_err:e} vs published torch CUDA randn");
}

/// Tolerance: bitwise. diffusers' `randn_tensor` with one generator (shared) or a list of
/// generators seeded seed + i (per item), and A1111's per-image Philox generators; the second
/// draw is a sampler step's noise continuing the stream(s) after the initial latent.
#[test]
fn seeded_noise_batch_conventions_are_bitwise_equal() {
    let fx = fixture();
    let cases = fx["batch"].as_array().expect("batch cases");
    assert_eq!(cases.len(), 8);
    for case in cases {
        let kind = RngKind::from_name(case["kind"].as_str().expect("kind")).expect("known kind");
        let seeding = match case["seeding"].as_str().expect("seeding") {
            "shared" => BatchSeeding::Shared,
            _ => BatchSeeding::PerItem,
        };
        let seed = case["seed"].as_u64().expect("seed");
        let draws = case["draws"].as_array().expect("draws");
        let dims: Vec<usize> =
            draws[0]["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
        let mut noise = SeededNoise::new(kind, seed, seeding, dims[0]).expect("valid noise");
        let latent = noise.initial_latent(dims.as_slice(), DType::F32, &Device::Cpu).expect("latent");
        let step = noise.step_noise(&latent, 14.6, 10.0).expect("step noise");
        for (k, (t, draw)) in [latent, step].iter().zip(draws).enumerate() {
            let got = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values");
            assert_eq!(
                fnv1a64(&got),
                draw["fnv1a64"].as_str().expect("hash"),
                "{kind} {seeding:?} seed {seed} draw {k}"
            );
        }
    }
}

#[test]
fn per_item_batch_mismatch_is_an_error() {
    let mut noise = SeededNoise::new(RngKind::TorchCpu, 1, BatchSeeding::PerItem, 2).expect("valid");
    let err = noise.initial_latent((3, 4), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("2 generators") && err.contains("[3, 4]"), "{err}");
    assert!(SeededNoise::new(RngKind::Philox, 1, BatchSeeding::PerItem, 0).is_err());
}

#[test]
fn rng_kind_names_and_errors() {
    for (name, kind) in [
        ("torch-cpu", RngKind::TorchCpu),
        ("torch_cpu", RngKind::TorchCpu),
        ("CPU", RngKind::TorchCpu),
        ("philox", RngKind::Philox),
        ("cuda", RngKind::Philox),
        ("gpu", RngKind::Philox),
        ("NV", RngKind::Philox),
    ] {
        assert_eq!(RngKind::from_name(name), Ok(kind), "{name}");
        assert_eq!(name.parse::<RngKind>(), Ok(kind), "{name}");
    }
    assert_eq!(RngKind::default(), RngKind::TorchCpu);
    assert_eq!(RngKind::Philox.to_string(), "philox");
    let err = RngKind::from_name("mersenne").unwrap_err();
    assert_eq!(
        err,
        NoiseError::UnknownRng { name: "mersenne".into(), accepted: "torch-cpu, cpu, philox, cuda, gpu, nv".into() }
    );
    assert!(err.to_string().contains("unknown rng `mersenne`; accepted: torch-cpu, cpu"));
}

// ---- Brownian tree: statistics (no reference values; torchsde's exact stream is not reproduced).

const N: usize = 20_000;

fn brownian(seed: u64) -> BrownianTreeNoise {
    BrownianTreeNoise::new(seed, 0.0291675, 14.614642, BatchSeeding::Shared).expect("valid tree")
}

fn increment(tree: &mut BrownianTreeNoise, a: f64, b: f64) -> Vec<f64> {
    let like = Tensor::zeros(N, DType::F32, &Device::Cpu).expect("zeros");
    let noise = tree.step_noise(&like, a, b).expect("noise");
    noise.to_vec1::<f32>().expect("values").into_iter().map(f64::from).collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn cov(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum::<f64>() / (x.len() - 1) as f64
}

/// The steps of a 10-step Karras schedule (ρ = 7) over the tree's interval, descending.
fn karras_steps() -> Vec<(f64, f64)> {
    let (lo, hi, rho) = (0.0291675f64, 14.614642f64, 7.0);
    let s: Vec<f64> = (0..10)
        .map(|i| {
            let r = i as f64 / 9.0;
            (hi.powf(1.0 / rho) + r * (lo.powf(1.0 / rho) - hi.powf(1.0 / rho))).powf(rho)
        })
        .collect();
    s.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Each normalised increment is standard normal: with N = 20000 iid elements the sample mean has
/// sd 1/sqrt(N) = 0.0071 and the sample variance sd sqrt(2/N) = 0.01; tolerances are 5 sd
/// (0.035, 0.05), so a correct tree fails with probability below 1e-6 per check.
#[test]
fn brownian_increments_are_standard_normal() {
    let mut tree = brownian(42);
    // Short steps too: 1e-6 spans a few 2^-30 leaves (1.4e-8), so the bridge fallback is used.
    let mut steps = karras_steps();
    steps.push((1.0, 1.0 - 1e-6));
    steps.push((0.1 + 1e-6, 0.1));
    for (a, b) in steps {
        let z = increment(&mut tree, a, b);
        let (m, v) = (mean(&z), cov(&z, &z));
        assert!(m.abs() < 0.035, "mean {m} for ({a}, {b})");
        assert!((v - 1.0).abs() < 0.05, "variance {v} for ({a}, {b})");
    }
}

/// Disjoint increments are independent (sample correlation sd 1/sqrt(N) = 0.0071; tolerance 5 sd),
/// and overlapping ones have the Brownian correlation sqrt(|b − a| / |c − a|) (tolerance 0.035).
#[test]
fn brownian_increment_covariances() {
    let mut tree = brownian(7);
    let steps = karras_steps();
    for w in steps.windows(2) {
        let (x, y) = (increment(&mut tree, w[0].0, w[0].1), increment(&mut tree, w[1].0, w[1].1));
        let c = cov(&x, &y);
        assert!(c.abs() < 0.035, "disjoint steps {w:?} correlate: {c}");
    }
    let (a, b, c) = (10.0, 3.0, 0.5);
    let (ab, ac) = (increment(&mut tree, a, b), increment(&mut tree, a, c));
    let rho = cov(&ab, &ac) / (cov(&ab, &ab) * cov(&ac, &ac)).sqrt();
    let want = ((a - b) / (a - c)).sqrt();
    assert!((rho - want).abs() < 0.035, "overlap correlation {rho}, want {want}");
}

/// W over (a, c) equals the sum over (a, b) and (b, c), up to float32 rounding of the returned
/// noise (values are O(1) times sqrt(σ) <= 4, float32 relative error 6e-8: tolerance 1e-5).
#[test]
fn brownian_increments_are_consistent_and_deterministic() {
    let (a, b, c) = (12.0, 2.5, 0.1);
    let mut tree = brownian(3);
    let ab = increment(&mut tree, a, b);
    let bc = increment(&mut tree, b, c);
    let ac = increment(&mut tree, a, c);
    for i in 0..N {
        let sum = ab[i] * (a - b).sqrt() + bc[i] * (b - c).sqrt();
        let whole = ac[i] * (a - c).sqrt();
        assert!((sum - whole).abs() < 1e-5, "element {i}: {sum} vs {whole}");
    }
    // Same seed, fresh tree, different query order: identical noise. Another seed: different.
    let mut again = brownian(3);
    assert_eq!(increment(&mut again, a, c), ac);
    assert_eq!(increment(&mut again, a, b), ab);
    assert_ne!(increment(&mut brownian(4), a, b), ab);
    // Ascending queries give the negated increment (k-diffusion's sign handling).
    let ba = increment(&mut again, b, a);
    assert!(ab.iter().zip(&ba).all(|(x, y)| x == &-y));
}

/// Per-item trees (A1111): item i of a batch is the shared tree seeded seed + i over one item.
#[test]
fn brownian_per_item_is_batch_invariant() {
    let mut batched = BrownianTreeNoise::new(100, 0.03, 14.6, BatchSeeding::PerItem).expect("valid");
    let like = Tensor::zeros((3, 2, 4), DType::F32, &Device::Cpu).expect("zeros");
    let got = batched.step_noise(&like, 5.0, 2.0).expect("noise");
    for i in 0..3 {
        let mut single = BrownianTreeNoise::new(100 + i as u64, 0.03, 14.6, BatchSeeding::Shared).expect("valid");
        let item_like = like.get(i).expect("item");
        let want = single.step_noise(&item_like, 5.0, 2.0).expect("noise");
        let got_i = got.get(i).expect("item");
        assert_eq!(
            got_i.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values"),
            want.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values")
        );
    }
}

#[test]
fn brownian_rejects_bad_intervals_and_steps() {
    assert!(BrownianTreeNoise::new(0, 1.0, 1.0, BatchSeeding::Shared).is_err());
    assert!(BrownianTreeNoise::new(0, -1.0, 1.0, BatchSeeding::Shared).is_err());
    assert!(BrownianTreeNoise::new(0, 0.1, f64::INFINITY, BatchSeeding::Shared).is_err());
    let mut tree = brownian(0);
    let like = Tensor::zeros(4, DType::F32, &Device::Cpu).expect("zeros");
    let err = tree.step_noise(&like, 20.0, 10.0).unwrap_err().to_string();
    assert!(err.contains("sigma 20") && err.contains("14.614642"), "{err}");
    assert!(tree.step_noise(&like, 5.0, 5.0).is_err());
}
