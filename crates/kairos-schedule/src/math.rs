//! Numeric helpers that reproduce the reference libraries' rounding: torch's CPU `linspace`,
//! numpy's `linspace` and `interp`, and the Beta distribution's quantile (scipy's `beta.ppf`).

/// torch CPU `linspace` in float64: `start + step * i` for the first half and
/// `end - step * (n - 1 - i)` for the second, each a fused multiply-add (ATen's
/// `RangeFactoriesKernel.cpp` compiled with FMA contraction on AVX2/AVX-512 builds).
pub(crate) fn torch_linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { step.mul_add(i as f64, start) } else { (-step).mul_add((n - 1 - i) as f64, end) })
        .collect()
}

/// torch CPU `linspace` in float32 (torch's default dtype), returned widened to f64. `start` and
/// `end` are first rounded to f32 as torch's `Scalar.to<float>()` does. Bitwise equal to torch
/// 2.x on FMA-capable CPUs (checked for n = 1..=1000 while writing the fixtures).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![f64::from(start)];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let v = if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) };
            f64::from(v)
        })
        .collect()
}

/// numpy `linspace(start, stop, n)` (endpoint included): `i * step + start`, last value `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// numpy `linspace(start, stop, n, endpoint=False)`.
pub(crate) fn np_linspace_open(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / n as f64;
    (0..n).map(|i| i as f64 * step + start).collect()
}

/// numpy `interp(x, xp, fp)` for ascending `xp` (len >= 2): clamps outside, exact at knots.
pub(crate) fn np_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[last] {
        return fp[last];
    }
    // Largest j with xp[j] <= x; j < last because x < xp[last].
    let j = xp.partition_point(|&v| v <= x) - 1;
    if xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// Log-linear interpolation of a descending list to `num` points, as ComfyUI's and A1111's
/// `loglinear_interp` (numpy `interp` of the reversed log values over `linspace(0, 1, ·)`).
pub(crate) fn loglinear_interp(t_steps: &[f64], num: usize) -> Vec<f64> {
    let xs = np_linspace(0.0, 1.0, t_steps.len());
    let ys: Vec<f64> = t_steps.iter().rev().map(|s| s.ln()).collect();
    let mut out: Vec<f64> = np_linspace(0.0, 1.0, num).into_iter().map(|x| np_interp(x, &xs, &ys).exp()).collect();
    out.reverse();
    out
}

/// ln Γ(x) for x > 0: Lanczos approximation (g = 7, 9 terms), about 1e-15 relative.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx); only reached for 0 < x < 0.5, where sin > 0.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz), valid for
/// x < (a + 1) / (a + b + 2).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta I_x(a, b) for 0 <= x <= 1, a, b > 0.
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Quantile of the Beta(a, b) distribution (scipy's `stats.beta.ppf`), for a, b > 0 and p in [0, 1].
/// Bisection to a bracket, then safeguarded Newton to full double precision. For a == b the
/// distribution is symmetric and p = 0.5 gives exactly 0.5, as scipy does (ComfyUI's `beta`
/// schedule rounds 999 * ppf, where 499.5 must round to 500).
pub(crate) fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    if a == b && p == 0.5 {
        return 0.5;
    }
    // Solve on the side where the root is small, so relative precision is kept near both ends.
    if p > 0.5 {
        return 1.0 - beta_ppf_lower(1.0 - p, b, a);
    }
    beta_ppf_lower(p, a, b)
}

fn beta_ppf_lower(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    let mut x = 0.5;
    for _ in 0..60 {
        x = 0.5 * (lo + hi);
        if beta_cdf(x, a, b) < p {
            lo = x;
        } else {
            hi = x;
        }
    }
    let ln_b = ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
    for _ in 0..50 {
        let f = beta_cdf(x, a, b) - p;
        let pdf = ((a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p() - ln_b).exp();
        if pdf <= 0.0 || !pdf.is_finite() {
            break;
        }
        let mut next = x - f / pdf;
        if next <= lo || next >= hi {
            next = 0.5 * (lo + hi);
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        if (next - x).abs() <= 1e-17 * x.abs() {
            return next;
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_is_inverse_of_cdf() {
        for &(a, b) in &[(0.6, 0.6), (0.5, 2.0), (2.0, 3.0)] {
            for i in 1..20 {
                let p = i as f64 / 20.0;
                let x = beta_ppf(p, a, b);
                assert!((beta_cdf(x, a, b) - p).abs() < 1e-13, "a={a} b={b} p={p}");
            }
        }
    }

    #[test]
    fn uniform_beta_ppf_is_identity() {
        assert!((beta_ppf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-14);
    }

    #[test]
    fn np_interp_clamps_and_hits_knots() {
        let xp = [0.0, 1.0, 2.0];
        let fp = [10.0, 20.0, 40.0];
        assert_eq!(np_interp(-1.0, &xp, &fp), 10.0);
        assert_eq!(np_interp(3.0, &xp, &fp), 40.0);
        assert_eq!(np_interp(1.0, &xp, &fp), 20.0);
        assert_eq!(np_interp(1.5, &xp, &fp), 30.0);
    }
}
