//! Parity of the k-diffusion samplers with k-diffusion 0.1.1.post1's `sample_*`, run in float64
//! with the analytic denoiser of `common` (fixture: `tools/fixtures/samplers_kdiffusion.py`), plus
//! the registry's and the sampling loop's error paths.

mod common;

use kairos_sampler::{Sampler, SamplerError};

#[test]
fn from_name_accepts_aliases_case_insensitively() {
    for (alias, name) in [
        ("Euler a", "euler_ancestral"),
        ("euler_a", "euler_ancestral"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("dpm++2m", "dpmpp_2m"),
        ("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun"),
        ("lms", "lms"),
        ("LMS", "lms"),
        ("DPM2 a", "dpm_2_ancestral"),
        ("  heun ", "heun"),
    ] {
        let s = Sampler::from_name(alias).unwrap_or_else(|e| panic!("{alias}: {e}"));
        assert_eq!(s.name(), name, "alias {alias}");
    }
}

#[test]
fn from_name_rejects_unknown_names_listing_accepted_ones() {
    match Sampler::from_name("eulerr") {
        Err(SamplerError::UnknownSampler { name, accepted }) => {
            assert_eq!(name, "eulerr");
            for n in Sampler::names() {
                assert!(accepted.split(", ").any(|a| a == n), "accepted list lacks {n}: {accepted}");
            }
        }
        other => panic!("expected UnknownSampler, got {other:?}"),
    }
}

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use common::{check_case, load_fixture, AnalyticDenoiser, Fixture, Tol};
use kairos_sampler::noise::FixedNoise;
use kairos_sampler::samplers::{
    AncestralOptions, ChurnOptions, Dpmpp2mSdeOptions, DpmppSdeOptions, LmsOptions, SdeSolverType,
};
use kairos_sampler::{SampleCtx, StepInfo};

/// f64: the same formulas as k-diffusion in the same order, so only libm rounding (ln, exp, expm1,
/// sin) and candle's scalar division (a multiplication by the reciprocal) differ, each about 1 ulp,
/// over at most 10 steps of |x| <= 15: 1e-10 leaves ample room while catching any formula slip
/// (those show up at 1e-4 or more). LMS additionally uses closed-form coefficients where
/// k-diffusion uses scipy's quad, which is exact to rounding for these cubic polynomials.
/// f32: kairos' f32 run against the f64 reference, max abs error relative to the largest |x| of the
/// trace: f32 rounding (6e-8) accumulated over about 10 steps and up to 3 model calls per step.
const TOL: Tol = Tol { f64_abs: 1e-10, f32_rel: 1e-5 };

fn fixture() -> Fixture {
    load_fixture("samplers_kdiffusion.json")
}

fn churn(s_churn: f64, s_tmin: f64, s_tmax: f64, s_noise: f64) -> ChurnOptions {
    ChurnOptions { s_churn, s_tmin, s_tmax, s_noise }
}

fn anc(eta: f64, s_noise: f64) -> AncestralOptions {
    AncestralOptions { eta, s_noise }
}

/// Each fixture case with the kairos sampler and options that mirror its k-diffusion call.
fn cases() -> Vec<(&'static str, Sampler)> {
    let no_churn = ChurnOptions::default();
    let sde = |eta, s_noise, solver_type| Dpmpp2mSdeOptions { noise: anc(eta, s_noise), solver_type };
    vec![
        ("euler_karras10", Sampler::Euler(no_churn)),
        ("euler_churn_karras10", Sampler::Euler(churn(1.0, 0.0, f64::INFINITY, 1.003))),
        ("euler_churn_window_karras10", Sampler::Euler(churn(2.0, 0.5, 5.0, 1.0))),
        ("euler_karras3", Sampler::Euler(no_churn)),
        ("euler_one", Sampler::Euler(no_churn)),
        ("euler_ancestral_karras10", Sampler::EulerAncestral(anc(1.0, 1.0))),
        ("euler_ancestral_eta05_karras10", Sampler::EulerAncestral(anc(0.5, 0.9))),
        ("euler_ancestral_one", Sampler::EulerAncestral(anc(1.0, 1.0))),
        ("heun_karras10", Sampler::Heun(no_churn)),
        ("heun_churn_karras10", Sampler::Heun(churn(1.0, 0.0, f64::INFINITY, 1.0))),
        ("heun_karras3", Sampler::Heun(no_churn)),
        ("dpm_2_karras10", Sampler::Dpm2(no_churn)),
        ("dpm_2_churn_karras10", Sampler::Dpm2(churn(1.0, 0.0, f64::INFINITY, 1.0))),
        ("dpm_2_one", Sampler::Dpm2(no_churn)),
        ("dpm_2_ancestral_karras10", Sampler::Dpm2Ancestral(anc(1.0, 1.0))),
        ("dpm_2_ancestral_karras3", Sampler::Dpm2Ancestral(anc(0.7, 1.0))),
        ("dpmpp_2s_ancestral_karras10", Sampler::Dpmpp2sAncestral(anc(1.0, 1.0))),
        ("dpmpp_2s_ancestral_eta0_karras3", Sampler::Dpmpp2sAncestral(anc(0.0, 1.0))),
        ("dpmpp_sde_karras10", Sampler::DpmppSde(DpmppSdeOptions::default())),
        ("dpmpp_sde_eta05_r03_karras3", Sampler::DpmppSde(DpmppSdeOptions { eta: 0.5, s_noise: 1.0, r: 0.3 })),
        ("dpmpp_2m_karras10", Sampler::Dpmpp2m),
        ("dpmpp_2m_karras3", Sampler::Dpmpp2m),
        ("dpmpp_2m_one", Sampler::Dpmpp2m),
        ("dpmpp_2m_sde_karras10", Sampler::Dpmpp2mSde(sde(1.0, 1.0, SdeSolverType::Midpoint))),
        ("dpmpp_2m_sde_heun_karras10", Sampler::Dpmpp2mSde(sde(1.0, 1.0, SdeSolverType::Heun))),
        ("dpmpp_2m_sde_eta0_karras3", Sampler::Dpmpp2mSde(sde(0.0, 1.0, SdeSolverType::Midpoint))),
        ("dpmpp_3m_sde_karras10", Sampler::Dpmpp3mSde(anc(1.0, 1.0))),
        ("dpmpp_3m_sde_eta05_karras10", Sampler::Dpmpp3mSde(anc(0.5, 0.8))),
        ("dpmpp_3m_sde_eta0_karras3", Sampler::Dpmpp3mSde(anc(0.0, 1.0))),
        ("lms_karras10", Sampler::Lms(LmsOptions::default())),
        ("lms_order2_karras3", Sampler::Lms(LmsOptions { order: 2 })),
        ("lms_one", Sampler::Lms(LmsOptions::default())),
    ]
}

/// Checks every fixture case run with the sampler called `sampler_name`.
fn check_family(sampler_name: &str) {
    let fx = fixture();
    let mut n = 0;
    for (case, sampler) in cases() {
        if sampler.name() == sampler_name {
            check_case(&fx, case, sampler, false, TOL);
            n += 1;
        }
    }
    assert!(n > 0, "no fixture case for {sampler_name}");
}

#[test]
fn every_fixture_case_is_checked() {
    let listed: Vec<_> = cases().into_iter().map(|(c, _)| c.to_string()).collect();
    for name in fixture().case_names() {
        assert!(listed.contains(&name), "fixture case {name} has no test");
    }
}

#[test]
fn euler_matches_k_diffusion() {
    check_family("euler");
}

#[test]
fn euler_ancestral_matches_k_diffusion() {
    check_family("euler_ancestral");
}

#[test]
fn heun_matches_k_diffusion() {
    check_family("heun");
}

#[test]
fn dpm_2_matches_k_diffusion() {
    check_family("dpm_2");
}

#[test]
fn dpm_2_ancestral_matches_k_diffusion() {
    check_family("dpm_2_ancestral");
}

#[test]
fn dpmpp_2s_ancestral_matches_k_diffusion() {
    check_family("dpmpp_2s_ancestral");
}

#[test]
fn dpmpp_sde_matches_k_diffusion() {
    check_family("dpmpp_sde");
}

#[test]
fn dpmpp_2m_matches_k_diffusion() {
    check_family("dpmpp_2m");
}

#[test]
fn dpmpp_2m_sde_matches_k_diffusion() {
    check_family("dpmpp_2m_sde");
}

#[test]
fn dpmpp_2m_sde_heun_matches_k_diffusion() {
    check_family("dpmpp_2m_sde_heun");
}

#[test]
fn dpmpp_3m_sde_matches_k_diffusion() {
    check_family("dpmpp_3m_sde");
}

#[test]
fn lms_matches_k_diffusion() {
    check_family("lms");
}

fn small_x() -> Tensor {
    Tensor::ones((1, 2, 2, 2), DType::F64, &Device::Cpu).expect("tensor")
}

#[test]
fn callback_break_cancels_every_k_diffusion_sampler() {
    let sigmas = [10.0, 5.0, 2.0, 0.0];
    for (_, sampler) in cases() {
        let mut denoiser = AnalyticDenoiser::new(false);
        // Enough noise for any of these samplers over 3 steps.
        let mut noise = FixedNoise::new((0..8).map(|_| small_x()));
        let mut seen = Vec::new();
        let mut stop_at_1 = |info: &StepInfo<'_>| {
            seen.push(info.step);
            if info.step == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let result = {
            let mut ctx = SampleCtx::new(&mut denoiser, &mut noise).with_callback(&mut stop_at_1);
            sampler.sample(&mut ctx, small_x(), &sigmas)
        };
        assert!(matches!(result, Err(SamplerError::Cancelled)), "{}: {result:?}", sampler.name());
        assert_eq!(seen, [0, 1], "{}: callback steps", sampler.name());
    }
}

#[test]
fn increasing_or_malformed_sigmas_are_rejected() {
    let bad: [&[f64]; 5] = [&[1.0, 2.0, 0.0], &[5.0], &[5.0, f64::NAN, 0.0], &[5.0, -1.0], &[5.0, 0.0, 0.0]];
    for sigmas in bad {
        for (_, sampler) in cases() {
            let mut denoiser = AnalyticDenoiser::new(false);
            let mut noise = FixedNoise::default();
            let mut ctx = SampleCtx::new(&mut denoiser, &mut noise);
            let result = sampler.sample(&mut ctx, small_x(), sigmas);
            assert!(matches!(result, Err(SamplerError::InvalidSigmas(_))), "{} {sigmas:?}: {result:?}", sampler.name());
        }
    }
}

#[test]
fn bad_options_are_rejected_with_the_option_named() {
    let bad = [
        (Sampler::Euler(churn(-1.0, 0.0, f64::INFINITY, 1.0)), "s_churn"),
        (Sampler::Heun(churn(1.0, f64::NAN, f64::INFINITY, 1.0)), "s_tmin"),
        (Sampler::EulerAncestral(anc(f64::NAN, 1.0)), "eta"),
        (Sampler::Dpmpp3mSde(anc(1.0, -0.5)), "s_noise"),
        (Sampler::DpmppSde(DpmppSdeOptions { r: 0.0, ..Default::default() }), "r must"),
        (Sampler::Lms(LmsOptions { order: 0 }), "order"),
    ];
    for (sampler, what) in bad {
        let mut denoiser = AnalyticDenoiser::new(false);
        let mut noise = FixedNoise::default();
        let mut ctx = SampleCtx::new(&mut denoiser, &mut noise);
        match sampler.sample(&mut ctx, small_x(), &[10.0, 0.0]) {
            Err(SamplerError::InvalidOption { message, .. }) => assert!(message.contains(what), "{message}"),
            other => panic!("{}: expected InvalidOption about {what}, got {other:?}", sampler.name()),
        }
    }
}
