//! Vectorisable f32 loops (exp, softmax, affine + SiLU), compiled once per instruction set and
//! picked at run time, so the portable binary still uses AVX-512 or AVX2 where the CPU has them.

/// Lanes of the partial sums: wide enough for one AVX-512 register, and a fixed order of additions
/// whatever the instruction set.
const LANES: usize = 16;

/// `e^x` for f32 with |relative error| ≲ 2.5e-7: `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-6 Taylor
/// polynomial in `r`, and `2^n` built from the exponent bits. Inputs are clamped to
/// [-86, 88], so the result is never denormal (softmax and SiLU only need e^-86 ≈ 0).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-86.0, 88.0);
    // n = round(x·log2 e) by adding 1.5·2^23: the sum's low mantissa bits hold n as an integer
    // (|n| < 2^22), so no float→int conversion is needed (`as i32` is scalarised for its
    // saturating semantics, which made this loop several times slower).
    const SHIFTER: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p =
        1.0 + r * (1.0 + r * (1.0 / 2.0 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
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

/// Maximum of a non-empty row.
#[inline(always)]
fn max_generic(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.max(x);
        }
    }
    tail.iter().fold(acc.into_iter().fold(f32::NEG_INFINITY, f32::max), |m, &x| m.max(x))
}

/// Replaces `row` by `e^(row - max(row))` and returns the sum of the new values.
#[inline(always)]
fn exp_shifted_sum_generic(row: &mut [f32]) -> f32 {
    let max = max_generic(row);
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum
}

multiversion! {
    /// Replaces a non-empty `row` by `e^(row - max(row))` and returns their sum: softmax without
    /// the final division, which the caller folds into a later, smaller product.
    pub(crate) fn exp_shifted_sum(row: &mut [f32]) -> f32 = exp_shifted_sum_generic;
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

multiversion! {
    /// `dst = a·src + b`, followed by SiLU when `silu` (`src` and `dst` of equal length).
    pub(crate) fn affine_act(src: &[f32], dst: &mut [f32], a: f32, b: f32, silu: bool) -> () = affine_act_generic;
}

/// Sum and sum of squared deviations from `mean` of a row, accumulated in f32 lanes and
/// returned in f64 (the caller adds rows of a group in f64).
#[inline(always)]
fn sums_generic(row: &[f32], mean: f32) -> [f64; 2] {
    let mut s = [0f32; LANES];
    let mut q = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((s, q), &x) in s.iter_mut().zip(q.iter_mut()).zip(chunk) {
            let d = x - mean;
            *s += x;
            *q += d * d;
        }
    }
    let mut sum = s.iter().map(|&v| v as f64).sum::<f64>();
    let mut sq = q.iter().map(|&v| v as f64).sum::<f64>();
    for &x in tail {
        let d = x - mean;
        sum += x as f64;
        sq += (d * d) as f64;
    }
    [sum, sq]
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
        let sum = exp_shifted_sum(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 2.4e-7 * w.max(1e-30), "{g} vs {w}");
        }
        assert!((sum as f64 - want.iter().sum::<f64>()).abs() < 1e-5);
    }
}
