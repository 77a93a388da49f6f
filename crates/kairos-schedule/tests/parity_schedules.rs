//! Parity of kairos-schedule with k-diffusion, diffusers, ComfyUI and Forge (A1111).
//! Fixture: `tests/fixtures/schedules.json`, written by `tools/fixtures/schedules.py` (see its
//! docstring for versions and how ComfyUI/Forge are run in float64).

use kairos_schedule::{
    AysModel, BetaSchedule, DenoiseRule, DiscreteSchedule, EdmSchedule, Family, NoiseSchedule, Prediction,
    ScheduleError, ScheduleKind, TablePrecision,
};
use serde_json::Value;
use std::sync::OnceLock;

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| serde_json::from_str(include_str!("fixtures/schedules.json")).expect("valid fixture JSON"))
}

fn vec_of(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Max relative error |a - b| / max(|b|, floor); `floor` keeps zeros comparable.
fn max_rel(got: &[f64], want: &[f64], what: &str) -> f64 {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs reference {}\n got {got:?}\nwant {want:?}",
        got.len(),
        want.len()
    );
    got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-12)).fold(0.0, f64::max)
}

fn assert_rel(got: &[f64], want: &[f64], tol: f64, what: &str) -> f64 {
    let e = max_rel(got, want, what);
    assert!(e <= tol, "{what}: max rel err {e:e} > {tol:e}\n got {got:?}\nwant {want:?}");
    e
}

fn sd64() -> DiscreteSchedule {
    DiscreteSchedule::sd(TablePrecision::F64)
}

fn build(kind: &ScheduleKind, s: &dyn NoiseSchedule, family: Family, steps: usize, denoise: f64) -> Vec<f64> {
    kind.build(s, family, steps, denoise)
        .unwrap_or_else(|e| panic!("{} {steps} {denoise}: {e}", kind.name()))
        .into_vec()
}

// ---- training tables ----------------------------------------------------------------------------

// diffusers builds the table in torch float32; kairos reproduces its rounding step by step
// (f32 linspace with FMA, f32 square, f64-accumulated cumprod), so the match is bitwise.
#[test]
fn alphas_cumprod_matches_diffusers_float32_bitwise() {
    let t = &fixture()["tables"];
    for (name, betas) in [
        ("scaled_linear", BetaSchedule::SD),
        ("linear", BetaSchedule::Linear { beta_start: 0.0001, beta_end: 0.02 }),
        ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2),
    ] {
        let want = vec_of(&t[format!("diffusers_alphas_cumprod_{name}")]);
        let got = DiscreteSchedule::new(betas, 1000, TablePrecision::DiffusersF32).unwrap();
        let diff = got.alphas_cumprod().iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} of 1000 alphas_cumprod differ from diffusers");
    }
}

// EulerDiscreteScheduler's sigma table: float32 `((1 - a) / a) ** 0.5`. kairos' `1 - a` and the
// division are bitwise equal to torch's, but torch's vectorized float32 sqrt is not correctly
// rounded (it differs from the exact f32 sqrt in ~190 of 1000 entries on this AVX-512 CPU),
// so the table is checked to 1 f32 ulp: rel 1.2e-7.
#[test]
fn sd_sigma_table_matches_diffusers_euler_float32_to_one_ulp() {
    let want = vec_of(&fixture()["tables"]["diffusers_euler_sigmas_sd"]);
    let s = DiscreteSchedule::sd(TablePrecision::DiffusersF32);
    let got = s.train_sigmas().unwrap();
    let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    let e = assert_rel(got, &want, 1.2e-7, "diffusers euler sigma table");
    eprintln!("diffusers sigma table: {diff} of 1000 differ, max rel err {e:e}");
}

// Same f64 arithmetic as the float64 reference; 1e-12 leaves room for libm ulps.
#[test]
fn sd_sigma_table_matches_k_diffusion_f64() {
    let want = vec_of(&fixture()["tables"]["sd_f64_sigmas"]);
    let e = assert_rel(sd64().train_sigmas().unwrap(), &want, 1e-12, "sd f64 table");
    eprintln!("sd f64 table max rel err {e:e}");
}

// ---- k-diffusion (float64) ----------------------------------------------------------------------

// f64 reference, same formulas: 1e-10 relative (observed ~1e-15; pow/exp ulps only).
#[test]
fn karras_exponential_polyexponential_normal_match_k_diffusion() {
    let kd = &fixture()["k_diffusion"];
    let s = sd64();
    let mut worst = 0.0_f64;
    for n in [1, 2, 3, 4, 7, 10, 12, 20, 50] {
        for (key, kind) in [
            ("karras", ScheduleKind::Karras { rho: 7.0 }),
            ("exponential", ScheduleKind::Exponential),
            ("polyexponential", ScheduleKind::PolyExponential { rho: 1.0 }),
            ("get_sigmas", ScheduleKind::Normal),
        ] {
            let want = vec_of(&kd[key][n.to_string()]);
            worst = worst.max(assert_rel(&build(&kind, &s, Family::Sd1, n, 1.0), &want, 1e-10, &format!("{key} {n}")));
        }
    }
    eprintln!("k-diffusion schedules max rel err {worst:e}");
}

// Fractional and quantized timesteps; f64 reference, abs 1e-9 in t (t up to 999).
#[test]
fn sigma_to_t_and_t_to_sigma_match_k_diffusion() {
    let kd = &fixture()["k_diffusion"];
    let s = sd64();
    let q = sd64().with_quantize(true);
    let sig = vec_of(&kd["sigma_to_t"]["sigma"]);
    for ((x, t), tq) in sig.iter().zip(vec_of(&kd["sigma_to_t"]["t"])).zip(vec_of(&kd["sigma_to_t"]["t_quantized"])) {
        assert!((s.sigma_to_t(*x) - t).abs() < 1e-9, "sigma_to_t({x}) = {} vs {t}", s.sigma_to_t(*x));
        assert_eq!(q.sigma_to_t(*x), tq, "quantized sigma_to_t({x})");
    }
    let ts = vec_of(&kd["t_to_sigma"]["t"]);
    let got: Vec<f64> = ts.iter().map(|&t| s.t_to_sigma(t)).collect();
    assert_rel(&got, &vec_of(&kd["t_to_sigma"]["sigma"]), 1e-12, "t_to_sigma");
}

// Closed forms in f64 on both sides: 1e-14.
#[test]
fn scalings_match_k_diffusion() {
    let sc = &fixture()["k_diffusion"]["scalings"];
    let sig = vec_of(&sc["sigma"]);
    let pick = |p: Prediction, sd: f64, f: fn(&kairos_schedule::Scalings) -> f64| -> Vec<f64> {
        sig.iter().map(|&s| f(&p.scalings(s, sd))).collect()
    };
    assert_rel(&pick(Prediction::Epsilon, 1.0, |s| s.c_out), &vec_of(&sc["eps_c_out"]), 1e-14, "eps c_out");
    assert_rel(&pick(Prediction::Epsilon, 1.0, |s| s.c_in), &vec_of(&sc["eps_c_in"]), 1e-14, "eps c_in");
    let fields: [fn(&kairos_schedule::Scalings) -> f64; 3] = [|s| s.c_skip, |s| s.c_out, |s| s.c_in];
    for (i, f) in fields.iter().enumerate() {
        assert_rel(&pick(Prediction::VPrediction, 1.0, *f), &vec_of(&sc["v"][i]), 1e-14, "v scalings");
        assert_rel(&pick(Prediction::Edm, 0.5, *f), &vec_of(&sc["edm_sigma_data_0_5"][i]), 1e-14, "edm scalings");
    }
}

// ---- ComfyUI (run in float64) -------------------------------------------------------------------

/// ComfyUI's KSampler denoise rule for the KSampler schedules, the nodes' own (truncate) for
/// AYS and GITS.
fn comfy_rule(kind: &ScheduleKind) -> DenoiseRule {
    match kind {
        ScheduleKind::Ays { .. } | ScheduleKind::Gits { .. } => DenoiseRule::Truncate,
        _ => DenoiseRule::KSampler,
    }
}

fn check_comfy_case(
    kind: &ScheduleKind,
    s: &dyn NoiseSchedule,
    family: Family,
    n: usize,
    d: f64,
    want: &Value,
    what: &str,
) -> f64 {
    let built = kind.build_with_rule(s, family, n, d, comfy_rule(kind));
    if want.as_array().is_some_and(|a| a.iter().any(Value::is_null)) {
        // ComfyUI's kl_optimal gives NaN at 1 step (0/0); kairos defines it as [σ_max, 0].
        return max_rel(&built.unwrap().into_vec(), &[s.sigma_max(), 0.0], what);
    }
    let want = vec_of(want);
    if want.len() == 1 {
        // The node returns [0.] when round(steps * denoise) = 0: kairos reports an error instead.
        let e = built.unwrap_err();
        assert!(matches!(e, ScheduleError::DenoiseKeepsNoStep { .. }), "{what}: {e}");
        return 0.0;
    }
    max_rel(&built.unwrap_or_else(|e| panic!("{what}: {e}")).into_vec(), &want, what)
}

// f64 reference (ComfyUI's functions executed in float64): 1e-10 relative. kl_optimal and
// linear_quadratic are closed forms, beta goes through scipy's beta.ppf vs kairos' own (≤ 1e-12).
#[test]
fn ksampler_schedules_match_comfyui_with_denoise() {
    let c = &fixture()["comfyui"];
    let s = sd64().with_quantize(true);
    let mut worst = 0.0_f64;
    for name in [
        "simple",
        "sgm_uniform",
        "karras",
        "exponential",
        "ddim_uniform",
        "beta",
        "normal",
        "linear_quadratic",
        "kl_optimal",
    ] {
        let kind = ScheduleKind::from_name(name).unwrap();
        for (n, by_d) in c[name].as_object().unwrap() {
            for (d, want) in by_d.as_object().unwrap() {
                let what = format!("comfyui {name} steps {n} denoise {d}");
                let e = check_comfy_case(&kind, &s, Family::Sd1, n.parse().unwrap(), d.parse().unwrap(), want, &what);
                assert!(e <= 1e-10, "{what}: max rel err {e:e}");
                worst = worst.max(e);
            }
        }
    }
    eprintln!("ComfyUI KSampler schedules max rel err {worst:e}");
}

// numpy log/exp interpolation on both sides: 1e-10 relative (observed ~1e-16).
#[test]
fn ays_matches_comfyui_align_your_steps_scheduler() {
    let c = &fixture()["comfyui"]["ays"];
    let mut worst = 0.0_f64;
    for (m, family) in [("SD1", Family::Sd1), ("SDXL", Family::Sdxl), ("SVD", Family::Svd)] {
        let s = family.noise_schedule(TablePrecision::F64);
        for (n, by_d) in c[m].as_object().unwrap() {
            for (d, want) in by_d.as_object().unwrap() {
                let what = format!("ays {m} steps {n} denoise {d}");
                let kind = ScheduleKind::Ays { model: None };
                let e = check_comfy_case(&kind, &s, family, n.parse().unwrap(), d.parse().unwrap(), want, &what);
                assert!(e <= 1e-10, "{what}: max rel err {e:e}");
                worst = worst.max(e);
            }
        }
    }
    // An explicit table gives the same as the family's.
    let s = sd64();
    assert_eq!(
        build(&ScheduleKind::Ays { model: Some(AysModel::Sdxl) }, &s, Family::Sd1, 10, 1.0),
        build(&ScheduleKind::Ays { model: None }, &s, Family::Sdxl, 10, 1.0)
    );
    eprintln!("ComfyUI AYS max rel err {worst:e}");
}

// Tabulated values or numpy log interpolation: 1e-10 relative.
#[test]
fn gits_matches_comfyui_gits_scheduler() {
    let c = &fixture()["comfyui"]["gits"];
    let s = sd64();
    let mut worst = 0.0_f64;
    for (coeff, by_n) in c.as_object().unwrap() {
        let kind = ScheduleKind::Gits { coeff: coeff.parse().unwrap() };
        for (n, by_d) in by_n.as_object().unwrap() {
            for (d, want) in by_d.as_object().unwrap() {
                let what = format!("gits {coeff} steps {n} denoise {d}");
                let e = check_comfy_case(&kind, &s, Family::Sd1, n.parse().unwrap(), d.parse().unwrap(), want, &what);
                assert!(e <= 1e-10, "{what}: max rel err {e:e}");
                worst = worst.max(e);
            }
        }
    }
    eprintln!("ComfyUI GITS max rel err {worst:e}");
}

// ---- Forge / A1111 (run in float64) -------------------------------------------------------------

// f64 references: 1e-10 relative (beta through scipy's ppf vs kairos' own).
#[test]
fn a1111_variants_match_forge() {
    let a = &fixture()["a1111"];
    let s = sd64();
    let mut worst = 0.0_f64;
    for (n, want) in a["kl_optimal"].as_object().unwrap() {
        let got = build(&ScheduleKind::KlOptimalA1111, &s, Family::Sd1, n.parse().unwrap(), 1.0);
        worst = worst.max(assert_rel(&got, &vec_of(want), 1e-10, &format!("kl_optimal_a1111 {n}")));
    }
    for (n, want) in a["beta"].as_object().unwrap() {
        let got = build(&ScheduleKind::BetaA1111 { alpha: 0.6, beta: 0.6 }, &s, Family::Sd1, n.parse().unwrap(), 1.0);
        worst = worst.max(assert_rel(&got, &vec_of(want), 1e-10, &format!("beta_a1111 {n}")));
    }
    for (key, kind) in [
        ("ays", ScheduleKind::AysA1111),
        ("ays_11", ScheduleKind::Ays11),
        ("ays_32", ScheduleKind::Ays32),
        ("ays_gits", ScheduleKind::AysGitsForge),
    ] {
        for (fam, family) in [("sd1", Family::Sd1), ("sdxl", Family::Sdxl)] {
            for (n, want) in a[key][fam].as_object().unwrap() {
                let got = build(&kind, &s, family, n.parse().unwrap(), 1.0);
                worst = worst.max(assert_rel(&got, &vec_of(want), 1e-10, &format!("{key} {fam} {n}")));
            }
        }
    }
    eprintln!("Forge/A1111 max rel err {worst:e}");
}

// ---- diffusers (float32) ------------------------------------------------------------------------

// Integer timesteps pick float32 table entries, which are within 1 f32 ulp of torch's (see the
// sigma-table test): 1.2e-7 relative.
// ComfyUI's full-precision AYS table (σ of the f64 table) agrees with the first 10 sigmas to
// 5e-6: diffusers' float32 table drifts from the f64 one by up to ~3e-6 relative (rounding of
// 1000 float32 betas/alphas_cumprod).
#[test]
fn ays_timesteps_match_diffusers_and_comfyui_ays() {
    let d = &fixture()["diffusers"]["ays_sdxl_timesteps"];
    let s = DiscreteSchedule::sd(TablePrecision::DiffusersF32);
    let ts = vec_of(&d["timesteps"]);
    let want = vec_of(&d["sigmas"]);
    let got = build(&ScheduleKind::Timesteps(ts), &s, Family::Sdxl, 1, 1.0);
    assert_rel(&got, &want, 1.2e-7, "diffusers AYS SDXL timesteps");
    let ays = build(&ScheduleKind::Ays { model: None }, &sd64(), Family::Sdxl, 10, 1.0);
    let e = assert_rel(&ays[..10], &want[..10], 5e-6, "ComfyUI AYS vs diffusers AYS timesteps");
    eprintln!("AYS: ComfyUI table vs diffusers timesteps max rel err {e:e}");
}

// diffusers computes in f64 from float32 σ_min/σ_max and rounds the result to float32:
// 1e-6 relative (f32 epsilon 1.2e-7, amplified up to 7x by karras' power ρ = 7). Its timesteps
// come from float32 log-sigmas: 1e-4 absolute in t.
#[test]
fn karras_exponential_beta_match_diffusers_euler() {
    let d = &fixture()["diffusers"];
    let s = DiscreteSchedule::sd(TablePrecision::DiffusersF32);
    let mut worst = (0.0_f64, 0.0_f64);
    for (key, kind) in [
        ("karras", ScheduleKind::Karras { rho: 7.0 }),
        ("exponential", ScheduleKind::Exponential),
        ("beta", ScheduleKind::BetaA1111 { alpha: 0.6, beta: 0.6 }),
    ] {
        for (n, case) in d[key].as_object().unwrap() {
            let sig = kind.build(&s, Family::Sd1, n.parse().unwrap(), 1.0).unwrap();
            let e = assert_rel(sig.as_slice(), &vec_of(&case["sigmas"]), 1e-6, &format!("diffusers {key} {n}"));
            let t_err = sig
                .timesteps(&s)
                .iter()
                .zip(vec_of(&case["timesteps"]))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(t_err < 1e-4, "diffusers {key} {n} timesteps abs err {t_err}");
            worst = (worst.0.max(e), worst.1.max(t_err));
        }
    }
    eprintln!("diffusers schedules max rel err {:e}, timesteps max abs err {:e}", worst.0, worst.1);
}

// ---- invariants ---------------------------------------------------------------------------------

// No reference: properties every schedule must have for steps 1..=200 (ComfyUI had NaN at 1
// step and wrong lengths as regressions). Exact checks.
#[test]
fn every_schedule_is_valid_for_1_to_200_steps() {
    let sd = sd64();
    let edm = EdmSchedule::SVD;
    for name in ScheduleKind::names() {
        let kind = ScheduleKind::from_name(name).unwrap();
        for family in [Family::Sd1, Family::Sdxl] {
            for n in 1..=200 {
                let sig = kind.build(&sd, family, n, 1.0).unwrap_or_else(|e| panic!("{name} {n}: {e}"));
                let v = sig.as_slice();
                assert!(v.iter().all(|x| x.is_finite()), "{name} {n}: non-finite");
                match kind {
                    ScheduleKind::DdimUniform => assert!(v.len() > n, "{name} {n}: len {}", v.len()),
                    ScheduleKind::Beta { .. } => assert!(v.len() <= n + 1 && v.len() >= 2, "{name} {n}"),
                    _ => assert_eq!(v.len(), n + 1, "{name} {n}: len"),
                }
                assert_eq!(
                    sig.ends_at_zero(),
                    kind != ScheduleKind::KlOptimalA1111,
                    "{name} {n}: last {}",
                    v[v.len() - 1]
                );
            }
        }
    }
    // Continuous SVD: the schedules that do not need a discrete table.
    for name in
        ["normal", "karras", "exponential", "polyexponential", "sgm_uniform", "linear_quadratic", "kl_optimal", "ays"]
    {
        let kind = ScheduleKind::from_name(name).unwrap();
        for n in 1..=200 {
            let sig = kind.build(&edm, Family::Svd, n, 1.0).unwrap_or_else(|e| panic!("svd {name} {n}: {e}"));
            assert_eq!(sig.steps(), n, "svd {name} {n}");
            assert!(sig.ends_at_zero());
        }
    }
}
