//! Parity of kairos' seeded generators with torch's CPU `randn` and A1111's Philox imitation of
//! torch's CUDA `randn`. Fixtures: `tools/fixtures/rng.py` → `tests/fixtures/rng.json`.

use kairos_sampler::noise::{PhiloxGenerator, TorchCpuGenerator};
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
