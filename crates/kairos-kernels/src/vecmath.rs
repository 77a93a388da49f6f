//! Vectorisable f32 loops (exp, softmax, affine + SiLU), compiled once per instruction set and
//! picked at run time, so the portable binary still uses AVX-512 or AVX2 where the CPU has them.

/// Lanes of the partial sums: wide enough for one AVX-512 register, and a fixed order of additions
/// whatever the instruction set.
const LANES: usize = 16;

/// `ln 2` split so that `n·LN2_HI` is exact for `|n| < 2^9`: `x - n·ln 2` in two steps keeps the
/// reduced argument accurate.
pub(crate) const LN2_HI: f32 = 0.693_145_75;
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// The degree-6 Taylor coefficients of `e^r`, highest first (for Horner's scheme).
pub(crate) const EXP_TAYLOR: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 1.0 / 2.0, 1.0, 1.0];

/// `e^x` for f32 with |relative error| ≲ 2.5e-7: `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-6 Taylor
/// polynomial in `r`, and `2^n` built from the exponent bits. Inputs are clamped to
/// [-86, 88], so the result is never denormal (softmax and SiLU only need e^-86 ≈ 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-86.0, 88.0);
    // n = round(x·log2 e) by adding 1.5·2^23: the sum's low mantissa bits hold n as an integer
    // (|n| < 2^22), so no float→int conversion is needed (`as i32` is scalarised for its
    // saturating semantics, which made this loop several times slower).
    const SHIFTER: f32 = 12_582_912.0;
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let n = t - SHIFTER;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // Horner with fused multiply-adds (one instruction each in the AVX-512 and AVX2+FMA builds).
    let [first, rest @ ..] = EXP_TAYLOR;
    let mut p = first;
    for c in rest {
        p = p.mul_add(r, c);
    }
    // n ∈ [-124, 127] after the clamp, so the biased exponent n + 127 is a valid normal one.
    let biased = t.to_bits().wrapping_sub(SHIFTER.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// Defines `$name` calling `$generic` compiled for AVX-512F, AVX2+FMA or the baseline, whichever
/// the CPU supports (the generic body is `#[inline(always)]`, so it is vectorised for each).
/// Functions may take const generic parameters, passed on to `$generic`.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident$(<$(const $cg:ident: $cty:ty),*>)?($($arg:ident: $ty:ty),*) -> $ret:ty
        = $generic:ident;) => {
        $(#[$m])*
        $vis fn $name$(<$(const $cg: $cty),*>)?($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512$(<$(const $cg: $cty),*>)?($($arg: $ty),*) -> $ret {
                    $generic$(::<$($cg),*>)?($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2$(<$(const $cg: $cty),*>)?($($arg: $ty),*) -> $ret {
                    $generic$(::<$($cg),*>)?($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512$(::<$($cg),*>)?($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2$(::<$($cg),*>)?($($arg),*) };
                }
            }
            $generic$(::<$($cg),*>)?($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Maximum of a non-empty row (NaNs ignored, as `f32::max` does). Four independent vectors of
/// lanes and a plain comparison (no NaN fix-up per step): one running maximum made this a chain
/// of dependent max-and-blend steps that took about as long as the exponentials after it.
#[inline(always)]
pub(crate) fn max_generic(row: &[f32]) -> f32 {
    let mut acc = [[f32::NEG_INFINITY; LANES]; 4];
    let chunks = row.chunks_exact(4 * LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (acc, part) in acc.iter_mut().zip(chunk.chunks_exact(LANES)) {
            for (a, &x) in acc.iter_mut().zip(part) {
                *a = if x > *a { x } else { *a };
            }
        }
    }
    let [mut m, rest @ ..] = acc;
    for a in rest {
        for (m, x) in m.iter_mut().zip(a) {
            *m = if x > *m { x } else { *m };
        }
    }
    m.into_iter().chain(tail.iter().copied()).fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces `row` by `e^(row - shift)` and returns the sum of the new values: softmax without the
/// final division, which the caller folds into a later, smaller product (`shift` is the row's
/// running maximum, see `attention`).
#[inline(always)]
pub(crate) fn exp_sub_sum_generic(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - shift);
            *a += *x;
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        sum += *x;
    }
    sum
}

/// `dst = a·src + b`, then SiLU (`y·sigmoid(y)`) when `silu`.
#[inline(always)]
fn affine_act_generic(src: &[f32], dst: &mut [f32], a: f32, b: f32, silu: bool) {
    if silu {
        for (d, &s) in dst.iter_mut().zip(src) {
            let y = a * s + b;
            *d = y / (1.0 + exp(-y));
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = a * s + b;
        }
    }
}

/// `dst[i] = (src[i] − mean)·rstd·weight[i] + bias[i]` (all of equal length).
#[inline(always)]
fn normalize_affine_generic(src: &[f32], dst: &mut [f32], mean: f32, rstd: f32, weight: &[f32], bias: &[f32]) {
    for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(weight).zip(bias) {
        *d = (s - mean) * rstd * w + b;
    }
}

multiversion! {
    /// A LayerNorm row: `dst = (src − mean)·rstd·weight + bias`.
    pub(crate) fn normalize_affine(src: &[f32], dst: &mut [f32], mean: f32, rstd: f32, weight: &[f32], bias: &[f32])
        -> () = normalize_affine_generic;
}

multiversion! {
    /// `dst = a·src + b`, followed by SiLU when `silu` (`src` and `dst` of equal length).
    pub(crate) fn affine_act(src: &[f32], dst: &mut [f32], a: f32, b: f32, silu: bool) -> () = affine_act_generic;
}

/// erf for f32 with |error| ≲ 2e-7 (the rational approximation Eigen and XLA use: odd degree-13
/// numerator over even degree-8 denominator on [-4, 4], where f32 erf reaches ±1).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_6e-3, -1.609_603_3e-2] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// `dst[i] = src[i]·gelu(src[n + i])` for a row `src` of `2n` values (value half, then gate half).
#[inline(always)]
fn geglu_generic(src: &[f32], dst: &mut [f32]) {
    let (value, gate) = src.split_at(dst.len());
    for ((d, &v), &g) in dst.iter_mut().zip(value).zip(gate) {
        *d = v * (0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

multiversion! {
    /// GEGLU of one row: `dst = value · gelu(gate)` with exact (erf) GELU, for `src` =
    /// `[value, gate]` of twice `dst`'s length.
    pub(crate) fn geglu(src: &[f32], dst: &mut [f32]) -> () = geglu_generic;
}

/// The activations of CLIP's MLP, elementwise.
#[inline(always)]
fn activate_generic(src: &[f32], dst: &mut [f32], quick_gelu: bool) {
    if quick_gelu {
        // OpenAI CLIP's `x·sigmoid(1.702·x)`.
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x / (1.0 + exp(-1.702 * x));
        }
    } else {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// `dst = quick_gelu(src)` (`x·sigmoid(1.702·x)`) when `quick_gelu`, else the exact (erf) GELU.
    pub(crate) fn activate(src: &[f32], dst: &mut [f32], quick_gelu: bool) -> () = activate_generic;
}

/// Sum and sum of squared deviations from `mean` of a row, accumulated in f32 lanes and
/// returned in f64 (the caller adds rows of a group in f64). Four independent vectors of each
/// accumulator, so that the additions do not wait on each other.
#[inline(always)]
fn sums_generic(row: &[f32], mean: f32) -> [f64; 2] {
    let mut s = [[0f32; LANES]; 4];
    let mut q = [[0f32; LANES]; 4];
    let chunks = row.chunks_exact(4 * LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((s, q), part) in s.iter_mut().zip(q.iter_mut()).zip(chunk.chunks_exact(LANES)) {
            for ((s, q), &x) in s.iter_mut().zip(q.iter_mut()).zip(part) {
                let d = x - mean;
                *s += x;
                *q += d * d;
            }
        }
    }
    let (mut sum, mut sq) = (lane_sum(s), lane_sum(q));
    for &x in tail {
        let d = x - mean;
        sum += x as f64;
        sq += (d * d) as f64;
    }
    [sum, sq]
}

/// The sum of four vectors of lanes, as a tree in f32: summing the 64 lanes one by one in f64
/// (a chain of dependent additions) took longer than a 320-wide LayerNorm row's products.
#[inline(always)]
fn lane_sum(v: [[f32; LANES]; 4]) -> f64 {
    let mut a = [0f32; LANES];
    for (l, a) in a.iter_mut().enumerate() {
        *a = (v[0][l] + v[1][l]) + (v[2][l] + v[3][l]);
    }
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            a[l] += a[l + n];
        }
    }
    a[0] as f64
}

multiversion! {
    /// `[Σ x, Σ (x - mean)²]` of a row.
    pub(crate) fn sums(row: &[f32], mean: f32) -> [f64; 2] = sums_generic;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp against std's over the range softmax and SiLU use.
    #[test]
    fn exp_relative_error() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -86.0 + 174.0 * i as f64 / 200_000.0;
            let got = exp(x as f32) as f64;
            let want = (x as f32 as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        // 2.5 ulp of f32 (2^-23 ≈ 1.2e-7): Taylor remainder r^7/7! ≈ 1.2e-7 at |r| = ln2/2, plus f32 rounding.
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn softmax_helpers_match_scalar() {
        let mut row: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0).collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let want: Vec<f64> = row.iter().map(|&x| ((x - max) as f64).exp()).collect();
        assert_eq!(max_generic(&row), max);
        let sum = exp_sub_sum_generic(&mut row, max);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 2.4e-7 * w.max(1e-30), "{g} vs {w}");
        }
        assert!((sum as f64 - want.iter().sum::<f64>()).abs() < 1e-5);
    }

    /// The rational erf, through GELU, against f64 erf over the range activations take.
    #[test]
    fn geglu_matches_f64_gelu() {
        let gate: Vec<f32> = (0..20_001).map(|i| -10.0 + i as f32 * 1e-3).collect();
        let src: Vec<f32> = std::iter::repeat_n(1.0, gate.len()).chain(gate.iter().copied()).collect();
        let mut dst = vec![0f32; gate.len()];
        geglu(&src, &mut dst);
        let mut worst = 0f64;
        for (&g, &d) in gate.iter().zip(&dst) {
            let g = g as f64;
            let exact = 0.5 * g * (1.0 + candle_core::cpu::erf::erf_f64(g / std::f64::consts::SQRT_2));
            worst = worst.max((d as f64 - exact).abs() / g.abs().max(1.0));
        }
        // f32 rounding of the inputs and products is ~6e-8 relative; the approximation adds ≲ 2e-7.
        assert!(worst < 5e-7, "max error of gelu relative to max(1, |x|): {worst:e}");
    }
}
