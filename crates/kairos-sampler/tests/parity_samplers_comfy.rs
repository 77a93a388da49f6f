//! Parity of the ComfyUI-only samplers with ComfyUI's own sampler functions (lcm, ipndm, ipndm_v,
//! res_multistep, er_sde, uni_pc, uni_pc_bh2, euler_cfg_pp, euler_ancestral_cfg_pp; ComfyUI
//! a125cd84) and of `ddim` / `tcd` with diffusers 0.42.1's DDIMScheduler / TCDScheduler, all run in
//! float64 on the analytic denoiser of `common` (fixture: `tools/fixtures/samplers_comfy.py`), plus
//! these samplers' error paths.
//!
//! Tolerances (unless a test says otherwise): f64 max abs 1e-10, because kairos evaluates the same
//! formulas as the reference and only the operation order (and, for ddim/tcd/uni_pc, the VP ↔ VE
//! change of coordinates, exact in real arithmetic) differs, which costs a few ulps per step on
//! states of magnitude ≤ 15; f32 1e-5 relative to the step's max |reference|, f32 rounding
//! (~6e-8) accumulated over ≤ 10 steps with the denoiser's sin/cos.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use common::{check_case, load_fixture, max_abs, max_abs_diff, AnalyticDenoiser, Fixture, Tol};
use kairos_sampler::noise::FixedNoise;
use kairos_sampler::samplers::{AncestralOptions, ErSdeOptions, TcdOptions, UniPcVariant};
use kairos_sampler::{DenoiseOutput, Denoiser, SampleCtx, Sampler, SamplerError, StepInfo};
use kairos_schedule::{DiscreteSchedule, NoiseSchedule};

const FIXTURE: &str = "samplers_comfy.json";
const TOL: Tol = Tol { f64_abs: 1e-10, f32_rel: 1e-5 };

fn fixture() -> Fixture {
    load_fixture(FIXTURE)
}

fn check_all(fx: &Fixture, cases: &[&str], sampler: Sampler, with_uncond: bool, tol: Tol) {
    for case in cases {
        check_case(fx, case, sampler, with_uncond, tol);
    }
}

#[test]
fn lcm_matches_comfyui() {
    check_all(&fixture(), &["lcm_karras10", "lcm_three", "lcm_one"], Sampler::Lcm, false, TOL);
}

#[test]
fn ipndm_matches_comfyui() {
    check_all(&fixture(), &["ipndm_karras10", "ipndm_three", "ipndm_one"], Sampler::Ipndm, false, TOL);
}

#[test]
fn ipndm_v_matches_comfyui() {
    check_all(&fixture(), &["ipndm_v_karras10", "ipndm_v_three"], Sampler::IpndmV, false, TOL);
}

#[test]
fn res_multistep_matches_comfyui() {
    let fx = fixture();
    check_all(&fx, &["res_multistep_karras10", "res_multistep_three"], Sampler::ResMultistep, false, TOL);
    // One Euler step from sigma 14.6 to 0 computes x + (x - D) / sigma * (0 - sigma): it cancels a
    // state of magnitude ~40 down to D of magnitude ~0.25, so f32 rounding of the state (~2.4e-6)
    // is ~1e-5 of the result (ComfyUI in float32 has the same error). Measured 1.7e-5; 1e-4.
    check_case(&fx, "res_multistep_one", Sampler::ResMultistep, false, Tol { f64_abs: 1e-10, f32_rel: 1e-4 });
}

#[test]
fn er_sde_matches_comfyui() {
    let fx = fixture();
    let default = Sampler::ErSde(ErSdeOptions::default());
    // The reference run whose quadrature nodes were made float64 (see the fixture script): the
    // formulas are the same, so 1e-10.
    // er_sde_one is a single step to 0 (no integrals).
    check_all(&fx, &["er_sde_karras10_f64_quadrature", "er_sde_one"], default, false, TOL);
    // Unmodified ComfyUI integrates stages 2 and 3 in float32 (torch type promotion of its float32
    // arange); kairos integrates in f64. Measured differences 1.8e-8 (10 steps) and 6.6e-10
    // (3 steps) on states of magnitude ~3, so 1e-7 absolute.
    let f32_quadrature = Tol { f64_abs: 1e-7, f32_rel: 1e-5 };
    check_all(&fx, &["er_sde_karras10", "er_sde_three"], default, false, f32_quadrature);
    let stage2 = Sampler::ErSde(ErSdeOptions { s_noise: 0.5, max_stage: 2 });
    check_case(&fx, "er_sde_karras10_stage2_snoise05", stage2, false, f32_quadrature);
}

#[test]
fn uni_pc_matches_comfyui() {
    let fx = fixture();
    let bh1 = Sampler::UniPc(UniPcVariant::Bh1);
    check_all(&fx, &["uni_pc_bh1_karras10", "uni_pc_bh1_three", "uni_pc_bh1_two"], bh1, false, TOL);
    let bh2 = Sampler::UniPc(UniPcVariant::Bh2);
    check_all(&fx, &["uni_pc_bh2_karras10", "uni_pc_bh2_three"], bh2, false, TOL);
}

#[test]
fn euler_cfg_pp_matches_comfyui() {
    let cases = ["euler_cfg_pp_karras10", "euler_cfg_pp_three", "euler_cfg_pp_one"];
    check_all(&fixture(), &cases, Sampler::EulerCfgPp, true, TOL);
}

#[test]
fn euler_ancestral_cfg_pp_matches_comfyui() {
    let fx = fixture();
    let default = Sampler::EulerAncestralCfgPp(AncestralOptions::default());
    check_case(&fx, "euler_ancestral_cfg_pp_karras10", default, true, TOL);
    let eta05 = Sampler::EulerAncestralCfgPp(AncestralOptions { eta: 0.5, s_noise: 1.0 });
    check_case(&fx, "euler_ancestral_cfg_pp_three_eta05", eta05, true, TOL);
}

#[test]
fn ddim_matches_diffusers() {
    let fx = fixture();
    let ddim = |eta| Sampler::Ddim(AncestralOptions { eta, s_noise: 1.0 });
    // SD1.5's config (set_alpha_to_one false): the sigmas end at sigma(t = 0).
    check_case(&fx, "ddim_eta0_sd10", ddim(0.0), false, TOL);
    check_case(&fx, "ddim_eta05_sd10", ddim(0.5), false, TOL);
    check_case(&fx, "ddim_eta1_alpha_one3", ddim(1.0), false, TOL);
    check_case(&fx, "ddim_eta0_alpha_one1", ddim(0.0), false, TOL);
}

#[test]
fn tcd_matches_diffusers() {
    let fx = fixture();
    for (case, gamma) in
        [("tcd_gamma03_lcm4", 0.3), ("tcd_gamma0_lcm4", 0.0), ("tcd_gamma1_lcm3", 1.0), ("tcd_gamma03_lcm1", 0.3)]
    {
        check_scheduled_case(&fx, case, Sampler::Tcd(TcdOptions { gamma }), TOL);
    }
}

/// The analytic denoiser with a model schedule, for samplers on the training timestep grid.
struct ScheduledDenoiser {
    inner: AnalyticDenoiser,
    schedule: DiscreteSchedule,
}

impl Denoiser for ScheduledDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        self.inner.denoise(x, sigma)
    }
    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        Some(&self.schedule)
    }
}

fn train_sigmas(fx: &Fixture) -> Vec<f64> {
    fx.json["train_sigmas"].as_array().expect("train_sigmas").iter().map(|v| v.as_f64().expect("number")).collect()
}

/// `common::check_case` for a sampler that needs the model schedule: same comparison of the whole
/// trace in f64 and f32, with a [`ScheduledDenoiser`].
fn check_scheduled_case(fx: &Fixture, case: &str, sampler: Sampler, tol: Tol) {
    let c = fx.case(case);
    let (mut f64_abs, mut f32_rel) = (0.0f64, 0.0f64);
    for dtype in [DType::F64, DType::F32] {
        let mut denoiser = ScheduledDenoiser {
            inner: AnalyticDenoiser::new(false),
            // The fixture's table: diffusers' float32 scaled_linear alphas_cumprod.
            schedule: DiscreteSchedule::from_sigmas(train_sigmas(fx)).expect("a valid table"),
        };
        let mut noise = FixedNoise::new(c.noise.iter().map(|n| fx.tensor(n, dtype)));
        let mut xs = Vec::new();
        let mut record = |info: &StepInfo<'_>| {
            xs.push(info.x.clone());
            ControlFlow::Continue(())
        };
        let x = (fx.x_init(DType::F64) * c.sigmas[0]).and_then(|t| t.to_dtype(dtype)).expect("initial x");
        let out = {
            let mut ctx = SampleCtx::new(&mut denoiser, &mut noise).with_callback(&mut record);
            sampler.sample(&mut ctx, x, &c.sigmas).unwrap_or_else(|e| panic!("{case}: {e}"))
        };
        assert_eq!(noise.remaining(), 0, "{case}: sampler drew fewer noise tensors than the reference");
        assert_eq!(xs.len(), c.xs.len(), "{case}: one callback per step");
        for (got, want) in xs.iter().zip(&c.xs).chain(std::iter::once((&out, &c.out))) {
            let abs = max_abs_diff(got, want);
            assert!(abs.is_finite(), "{case}: non-finite result");
            match dtype {
                DType::F64 => f64_abs = f64_abs.max(abs),
                _ => f32_rel = f32_rel.max(abs / max_abs(want)),
            }
        }
    }
    println!(
        "{case}: f64 max abs err {f64_abs:.3e} (tol {:.0e}), f32 max rel err {f32_rel:.3e} (tol {:.0e})",
        tol.f64_abs, tol.f32_rel
    );
    assert!(f64_abs <= tol.f64_abs, "{case}: f64 max abs err {f64_abs:e}");
    assert!(f32_rel <= tol.f32_rel, "{case}: f32 max rel err {f32_rel:e}");
}

/// Runs `sampler` on the fixture's initial state down `sigmas` with the plain analytic denoiser.
fn run(fx: &Fixture, sampler: Sampler, sigmas: &[f64], with_uncond: bool) -> Result<Tensor, SamplerError> {
    let mut denoiser = AnalyticDenoiser::new(with_uncond);
    let mut noise = FixedNoise::new(std::iter::repeat_n(fx.x_init(DType::F64), sigmas.len()));
    let mut ctx = SampleCtx::new(&mut denoiser, &mut noise);
    sampler.sample(&mut ctx, (fx.x_init(DType::F64) * sigmas[0]).expect("x"), sigmas)
}

#[test]
fn cfg_pp_samplers_need_the_unconditional_prediction() {
    let fx = fixture();
    let sigmas = fx.sigmas("three");
    for (sampler, name) in [
        (Sampler::EulerCfgPp, "euler_cfg_pp"),
        (Sampler::EulerAncestralCfgPp(AncestralOptions::default()), "euler_ancestral_cfg_pp"),
    ] {
        assert!(sampler.needs_uncond());
        match run(&fx, sampler, &sigmas, false) {
            Err(SamplerError::MissingUncond { sampler }) => assert_eq!(sampler, name),
            other => panic!("{name}: expected MissingUncond, got {other:?}"),
        }
    }
}

#[test]
fn tcd_needs_the_model_schedule_and_gamma_in_unit_interval() {
    let fx = fixture();
    let sigmas = fx.sigmas("lcm4");
    match run(&fx, Sampler::Tcd(TcdOptions::default()), &sigmas, false) {
        Err(SamplerError::MissingModelSchedule { sampler: "tcd" }) => {}
        other => panic!("expected MissingModelSchedule, got {other:?}"),
    }
    match run(&fx, Sampler::Tcd(TcdOptions { gamma: 1.5 }), &sigmas, false) {
        Err(SamplerError::InvalidOption { sampler: "tcd", message }) => {
            assert!(message.contains("[0, 1]"), "{message}")
        }
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[test]
fn uni_pc_rejects_a_single_step() {
    let fx = fixture();
    match run(&fx, Sampler::UniPc(UniPcVariant::Bh1), &fx.sigmas("one"), false) {
        Err(SamplerError::InvalidSigmas(message)) => assert!(message.contains("at least 2 steps"), "{message}"),
        other => panic!("expected InvalidSigmas, got {other:?}"),
    }
}

#[test]
fn er_sde_and_ddim_reject_bad_options() {
    let fx = fixture();
    let sigmas = fx.sigmas("three");
    for max_stage in [0, 4] {
        match run(&fx, Sampler::ErSde(ErSdeOptions { s_noise: 1.0, max_stage }), &sigmas, false) {
            Err(SamplerError::InvalidOption { sampler: "er_sde", .. }) => {}
            other => panic!("max_stage {max_stage}: expected InvalidOption, got {other:?}"),
        }
    }
    match run(&fx, Sampler::Ddim(AncestralOptions { eta: -1.0, s_noise: 1.0 }), &sigmas, false) {
        Err(SamplerError::InvalidOption { sampler: "ddim", .. }) => {}
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}
