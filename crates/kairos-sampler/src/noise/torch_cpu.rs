//! A bit-exact port of `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on the
//! CPU, float32.
//!
//! Torch's CPU generator is a 32-bit Mersenne Twister (`at::mt19937`) plus one cached normal
//! sample. `normal_` on a float32 tensor takes one of two paths (ATen
//! `native/cpu/DistributionTemplates.h`, `normal_kernel`):
//!
//! - **numel >= 16** (`normal_fill`): fill the tensor with 24-bit uniforms, then turn each block of
//!   16 into normals with Box-Muller (`u1 = 1 − data[j]`, `u2 = data[j + 8]`, cos into `j`, sin into
//!   `j + 8`). If numel is not a multiple of 16, 16 fresh uniforms are drawn for the last 16
//!   positions and that block is recomputed. On x86-64 torch's normal kernel is dispatched at the
//!   AVX2 level even on AVX-512 CPUs (`REGISTER_NO_AVX512_DISPATCH(normal_stub)`), where
//!   `NormalFill16<float>` uses `log256_ps` and `sincos256_ps` from `avx_mathfun.h` (Cephes
//!   polynomials in float32), not libm. [`log_ps`] and [`sincos_ps`] reproduce those lane by
//!   lane, operation by operation, so results are bitwise equal. The compiler fuses some of the
//!   header's separate multiplies and adds into FMAs (GCC's default `-ffp-contract=fast`); which
//!   ones was read from the disassembly of `NormalFill16<float, true>::operator()` in torch
//!   2.15.0's x86-64 `libtorch_cpu.so`, and the ports use `mul_add` at exactly those points.
//! - **numel < 16**: one `at::normal_distribution<double>` per element, in float64 with libm
//!   (`log1p`, `sin`, `cos`), 53-bit uniforms, and the sine half cached for the next element,
//!   across calls. The vectorised path neither reads nor clears that cache.

/// Torch's 32-bit Mersenne Twister (`at::mt19937_engine`), the standard MT19937.
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; Self::N]>,
    next: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;
    const MATRIX_A: u32 = 0x9908_b0df;
    const UMASK: u32 = 0x8000_0000;
    const LMASK: u32 = 0x7fff_ffff;

    /// Torch keeps the full 64-bit seed for `initial_seed()`, but only its low 32 bits
    /// initialise the state (`init_with_uint32`).
    fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; Self::N]);
        state[0] = seed as u32;
        for j in 1..Self::N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        // `next == N` makes the first draw regenerate the state, as torch's `left_ = 1` does.
        Self { state, next: Self::N }
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let u = self.state[i];
            let v = self.state[(i + 1) % Self::N];
            let y = (u & Self::UMASK) | (v & Self::LMASK);
            let mag = if v & 1 == 1 { Self::MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + Self::M) % Self::N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next == Self::N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937").field("next", &self.next).finish_non_exhaustive()
    }
}

/// Reproduces `torch.Generator()` (CPU) after `manual_seed(seed)`, for float32 `randn`.
///
/// Every seed torch accepts is a `u64` here (torch maps negative Python seeds to `seed + 2^64`).
#[derive(Debug, Clone)]
pub struct TorchCpuGenerator {
    seed: u64,
    engine: Mt19937,
    /// `CPUGeneratorImpl::next_double_normal_sample_`: the sine half of the last scalar Box-Muller.
    next_double_normal: Option<f64>,
}

impl TorchCpuGenerator {
    /// A generator in the state `torch.Generator().manual_seed(seed)` leaves.
    pub fn new(seed: u64) -> Self {
        Self { seed, engine: Mt19937::new(seed), next_double_normal: None }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `random()`: one 32-bit draw.
    fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `random64()`: two draws, the first one the high half.
    fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        let lo = self.random() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw, times 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64`, times 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `at::normal_distribution<double>(0, 1)`, the scalar path, with torch's cache of the second
    /// Box-Muller sample.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n, generator=self)` in float32: `n` standard normal values, advancing the
    /// generator exactly as torch does.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            // Torch casts the float64 sample to float32.
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

/// `NormalFill16<float>` (AVX2) with mean 0 and std 1: Box-Muller on 16 uniforms in place.
fn normal_fill_16(data: &mut [f32]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: the product is a double, rounded once to float.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * log_ps(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = sincos_ps(theta);
        // `_mm256_fmadd_ps(n, std, mean)` with std = 1, mean = 0: n·1 + 0 rounds once, which
        // is n + 0 (and turns −0 into +0, as the fma does).
        data[j] = (radius * cos).mul_add(1.0, 0.0);
        data[j + 8] = (radius * sin).mul_add(1.0, 0.0);
    }
}

// Constants of avx_mathfun.h, with the source's digits. The C source writes most as double
// literals stored into float arrays, so they are rounded decimal → double → float; `as f32` on an
// f64 literal does the same.
const MIN_NORM_POS: f32 = f32::MIN_POSITIVE;
const CEPHES_SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const CEPHES_LOG_P: [f32; 9] = [
    7.037_683_629_2e-2_f64 as f32,
    -1.151_461_031_0e-1_f64 as f32,
    1.167_699_874_0e-1_f64 as f32,
    -1.242_014_084_6e-1_f64 as f32,
    1.424_932_278_7e-1_f64 as f32,
    -1.666_805_766_5e-1_f64 as f32,
    2.000_071_476_5e-1_f64 as f32,
    -2.499_999_399_3e-1_f64 as f32,
    3.333_333_117_4e-1_f64 as f32,
];
const CEPHES_LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const CEPHES_LOG_Q2: f32 = 0.693_359_375_f64 as f32;
const MINUS_CEPHES_DP1: f32 = -0.785_156_25_f64 as f32;
#[allow(clippy::excessive_precision)] // the source's digits
const MINUS_CEPHES_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
#[allow(clippy::excessive_precision)] // the source's digits
const MINUS_CEPHES_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
const SINCOF_P: [f32; 3] =
    [-1.951_529_589_1e-4_f64 as f32, 8.332_160_873_6e-3_f64 as f32, -1.666_665_461_1e-1_f64 as f32];
const COSCOF_P: [f32; 3] =
    [2.443_315_711_809_948e-5_f64 as f32, -1.388_731_625_493_765e-3_f64 as f32, 4.166_664_568_298_827e-2_f64 as f32];
const CEPHES_FOPI: f32 = 1.273_239_544_735_16_f64 as f32;
const SIGN_MASK: u32 = 0x8000_0000;

/// One lane of `log256_ps` (Cephes `logf` as written in avx_mathfun.h), step for step, with the
/// multiply-adds fused exactly where torch's compiled kernel fuses them.
fn log_ps(x: f32) -> f32 {
    let invalid = x <= 0.0;
    // `_mm256_max_ps(x, min_norm_pos)` cuts off denormals.
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS };
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa, force the exponent of 0.5: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < CEPHES_SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = CEPHES_LOG_P[0];
    for &p in &CEPHES_LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * CEPHES_LOG_Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    x = e.mul_add(CEPHES_LOG_Q2, x);
    if invalid {
        f32::NAN
    } else {
        x
    }
}

/// One lane of `sincos256_ps` (Cephes `sinf`/`cosf` as written in avx_mathfun.h), step for
/// step, fused as in torch's compiled kernel. Returns (sin, cos).
fn sincos_ps(x: f32) -> (f32, f32) {
    let mut sign_bit_sin = x.to_bits() & SIGN_MASK;
    let mut x = f32::from_bits(x.to_bits() & !SIGN_MASK);
    // `_mm256_cvttps_epi32`: truncation toward zero; theta < 2π keeps it far from overflow.
    let mut j = (x * CEPHES_FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sign_bit_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    // Extended-precision modular arithmetic.
    x = y.mul_add(MINUS_CEPHES_DP1, x);
    x = y.mul_add(MINUS_CEPHES_DP2, x);
    x = y.mul_add(MINUS_CEPHES_DP3, x);
    let sign_bit_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;

    let z = x * x;
    let mut yc = COSCOF_P[0].mul_add(z, COSCOF_P[1]);
    yc = yc.mul_add(z, COSCOF_P[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;

    let mut ys = SINCOF_P[0].mul_add(z, SINCOF_P[1]);
    ys = ys.mul_add(z, SINCOF_P[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // The selects are bit masks in the original; adding the masked-out +0.0 is part of the result.
    let ysin2 = if poly_mask { ys } else { 0.0 };
    let ysin1 = if poly_mask { 0.0 } else { yc };
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = yc + ys;
    (f32::from_bits(sin.to_bits() ^ sign_bit_sin), f32::from_bits(cos.to_bits() ^ sign_bit_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Cephes-based float routines are accurate to a few float ulps; this guards the port
    /// against transcription slips that the bitwise fixtures would only report as a mismatch.
    #[test]
    fn cephes_float_routines_are_accurate() {
        for i in 1..2000 {
            let u = i as f32 / 2000.0;
            assert!((log_ps(u) as f64 - (u as f64).ln()).abs() < 4e-7 * (1.0 + (u as f64).ln().abs()));
            let theta = u * 6.283_185_5;
            let (s, c) = sincos_ps(theta);
            assert!((s as f64 - (theta as f64).sin()).abs() < 4e-7, "sin {theta}");
            assert!((c as f64 - (theta as f64).cos()).abs() < 4e-7, "cos {theta}");
        }
    }
}
