//! LCM pieces against diffusers 0.42.1 (`tools/fixtures/lcm.py`): the guidance-scale embedding,
//! and `LCMScheduler` at 1, 2, 4, 8 steps reproduced as kairos sigmas (`lcm_sigmas`) + the `lcm`
//! sampler + `LcmDenoiser`, driven by the same analytic epsilon model and replaying the noise
//! diffusers' `step` drew.

use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use kairos_models::lcm::{get_guidance_scale_embedding, initial_noise_scale, lcm_sigmas, LcmDenoiser, LcmOptions};
use kairos_sampler::noise::FixedNoise;
use kairos_sampler::{DenoiseOutput, Denoiser, SampleCtx, Sampler, SamplerError, StepInfo};
use kairos_schedule::{DiscreteSchedule, Family, NoiseSchedule, TablePrecision};

fn fixture() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lcm.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vec_f32(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Tolerance: abs 1e-6 where the sine's argument 1000·w·f_j is below 100 rad; above, abs 2e-3.
/// Both sides round the same float32 operations, but torch's vectorised float32 exp/sin and
/// libm's may differ by an ulp, and an ulp of an argument of ~1e4 rad is ~1e-3 rad.
#[test]
fn guidance_embedding_matches_diffusers() {
    let f = fixture();
    for case in f["embeddings"].as_array().unwrap() {
        let gs = case["guidance_scale"].as_f64().unwrap() as f32;
        let dim = case["dim"].as_u64().unwrap() as usize;
        let want = vec_f32(&case["embedding"]);
        let got = get_guidance_scale_embedding(&[gs - 1.0], dim, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), &[1, dim]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let half = dim / 2;
        let mut worst = (0f32, 0f32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let j = i % dim;
            let arg = if j < 2 * half {
                let freq = (-((j % half) as f64) * (10000f64).ln() / (half - 1) as f64).exp();
                1000.0 * f64::from(gs - 1.0) * freq
            } else {
                0.0
            };
            let err = (g - w).abs();
            let tol = if arg < 100.0 { 1e-6 } else { 2e-3 };
            assert!(err <= tol, "gs {gs} dim {dim} index {i}: {g} vs {w} (argument {arg})");
            if arg < 100.0 {
                worst.0 = worst.0.max(err)
            } else {
                worst.1 = worst.1.max(err)
            }
        }
        eprintln!("embedding gs {gs} dim {dim}: max abs err {:e} (small args), {:e} (large args)", worst.0, worst.1);
    }
}

/// diffusers' VP-scale epsilon model (fixture `eps_model`) as a kairos x0 denoiser.
struct AnalyticEps {
    schedule: DiscreteSchedule,
}

impl Denoiser for AnalyticEps {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<DenoiseOutput, SamplerError> {
        let t = self.schedule.sigma_to_t(sigma).round();
        let x_vp = (x / initial_noise_scale(sigma))?;
        let eps = ((&x_vp * (0.2 + t / 1500.0))? + (x_vp.cos()? * 0.05)?)?;
        Ok(DenoiseOutput { denoised: (x - (eps * sigma)?)?, uncond_denoised: None })
    }

    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        Some(&self.schedule)
    }
}

fn rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

/// Tolerance: relative 1e-5 of the largest element, per step. kairos runs in sigma (VE)
/// coordinates and diffusers in VP ones; the change of variables costs a few float32 roundings
/// per step, nothing more (the analytic model's timestep is rounded to the integer diffusers uses).
#[test]
fn lcm_matches_diffusers_lcm_scheduler_1_2_4_8_steps() {
    let f = fixture();
    let shape: Vec<usize> =
        f["meta"]["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let tensor = |v: &serde_json::Value| Tensor::from_vec(vec_f32(v), shape.as_slice(), &Device::Cpu).unwrap();
    for run in f["runs"].as_array().unwrap() {
        let steps = run["steps"].as_u64().unwrap() as usize;
        let schedule = DiscreteSchedule::sd(TablePrecision::DiffusersF32);
        let sigmas = lcm_sigmas(&schedule, Family::Sd1, steps, 1.0, &LcmOptions::default()).unwrap();
        let ts: Vec<i64> = sigmas.timesteps(&schedule).iter().take(steps).map(|t| t.round() as i64).collect();
        let want_ts: Vec<i64> = run["timesteps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
        assert_eq!(ts, want_ts);

        let s = sigmas.as_slice();
        let x = (tensor(&run["x_t"]) * initial_noise_scale(s[0])).unwrap();
        let mut noise = FixedNoise::new(run["noises"].as_array().unwrap().iter().map(tensor));
        let mut denoiser = LcmDenoiser::new(AnalyticEps { schedule }, LcmOptions::default());
        let mut trace = Vec::new();
        let mut cb = |info: &StepInfo<'_>| {
            trace.push(info.denoised.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            ControlFlow::Continue(())
        };
        let out = {
            let mut ctx = SampleCtx::new(&mut denoiser, &mut noise).with_callback(&mut cb);
            Sampler::Lcm.sample(&mut ctx, x, s).unwrap()
        };
        let mut worst = 0f32;
        for (i, (got, want)) in trace.iter().zip(run["denoised"].as_array().unwrap()).enumerate() {
            let e = rel(got, &vec_f32(want));
            assert!(e <= 1e-5, "{steps} steps, step {i}: denoised relative error {e}");
            worst = worst.max(e);
        }
        let e = rel(&out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &vec_f32(&run["final"]));
        assert!(e <= 1e-5, "{steps} steps: final relative error {e}");
        eprintln!("lcm {steps} steps: max relative error {:e} (denoised), {e:e} (final)", worst);
    }
}
