//! Convergence order of the deterministic k-diffusion samplers on Gaussian data, whose probability
//! flow ODE has a closed-form solution (no reference library involved: the exact solution is the
//! reference).
//!
//! For data x0 ~ N(0, s_d²) the ideal denoiser is D(x, σ) = x · s_d² / (s_d² + σ²) and the ODE
//! dx/dσ = (x − D) / σ has the solution x(σ) = x(σ₀) · sqrt((s_d² + σ²) / (s_d² + σ₀²)).

use candle_core::{DType, Device, Tensor};
use kairos_sampler::noise::FixedNoise;
use kairos_sampler::samplers::{ChurnOptions, LmsOptions};
use kairos_sampler::{DenoiseOutput, Denoiser, SampleCtx, Sampler};

const S_D: f64 = 0.5;
const SIGMA_MAX: f64 = 10.0;
const SIGMA_END: f64 = 0.1;
const X0: f64 = 3.0;

struct GaussianDenoiser;

impl Denoiser for GaussianDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        Ok(DenoiseOutput::new((x * (S_D * S_D / (S_D * S_D + sigma * sigma)))?))
    }
}

/// |x_n − x(σ_end)| after `n` steps log-uniform in σ from SIGMA_MAX to SIGMA_END (no final step to
/// 0, which every sampler treats specially).
fn error(sampler: &Sampler, n: usize) -> f64 {
    let sigmas: Vec<f64> =
        (0..=n).map(|i| (SIGMA_MAX.ln() + (SIGMA_END.ln() - SIGMA_MAX.ln()) * i as f64 / n as f64).exp()).collect();
    let x = Tensor::new(&[X0], &Device::Cpu).and_then(|t| t.to_dtype(DType::F64)).expect("x");
    let mut noise = FixedNoise::default();
    let mut denoiser = GaussianDenoiser;
    let mut ctx = SampleCtx::new(&mut denoiser, &mut noise);
    let out = sampler.sample(&mut ctx, x, &sigmas).expect("sampling");
    let got = out.to_vec1::<f64>().expect("data")[0];
    let exact = X0 * ((S_D * S_D + SIGMA_END * SIGMA_END) / (S_D * S_D + SIGMA_MAX * SIGMA_MAX)).sqrt();
    (got - exact).abs()
}

/// Measured order log2(e(n) / e(2n)) at n = 32 and 64 steps; must be within ±0.2 of `order`
/// (style guide 2.6: the asymptotic order is reached well before 64 steps on this smooth problem).
fn assert_order(sampler: Sampler, order: f64) {
    for n in [32, 64] {
        let measured = (error(&sampler, n) / error(&sampler, 2 * n)).log2();
        println!("{} n={n}: order {measured:.3}", sampler.name());
        assert!(
            (measured - order).abs() <= 0.2,
            "{}: measured order {measured} at n={n}, expected {order}",
            sampler.name()
        );
    }
}

#[test]
fn euler_is_first_order() {
    assert_order(Sampler::Euler(ChurnOptions::default()), 1.0);
}

#[test]
fn heun_is_second_order() {
    assert_order(Sampler::Heun(ChurnOptions::default()), 2.0);
}

#[test]
fn dpm_2_is_second_order() {
    assert_order(Sampler::Dpm2(ChurnOptions::default()), 2.0);
}

#[test]
fn dpmpp_2m_is_second_order() {
    assert_order(Sampler::Dpmpp2m, 2.0);
}

/// LMS of order k starts with lower-order steps (Euler first), whose one-off local errors bound the
/// global order by 2; order 2 is therefore the order that can be checked cleanly.
#[test]
fn lms_order_2_is_second_order() {
    assert_order(Sampler::Lms(LmsOptions { order: 2 }), 2.0);
}
