//! Latent Consistency Model pieces that need no pipeline: the guidance-scale (w) embedding of
//! LCM-distilled UNets, the consistency boundary conditions as a [`Denoiser`] wrapper, diffusers'
//! `LCMScheduler` timestep selection, and detection of LCM UNets.
//!
//! Mirrors diffusers 0.42.1 `schedulers/scheduling_lcm.py` and
//! `pipelines/latent_consistency_models/pipeline_latent_consistency_text2img.py`.
//!
//! In kairos terms, diffusers' LCM loop is: sigmas from [`lcm_timesteps`] (via
//! `ScheduleKind::Timesteps`, see [`lcm_sigmas`]), the `lcm` sampler (x = denoised, then
//! x += σ_next · noise unless last), and [`LcmDenoiser`] around the model's x0 denoiser.
//!
//! Differences: diffusers works in VP coordinates x_vp = x / sqrt(1 + σ²). Its initial latent is
//! the unit-variance noise itself, so a kairos run matches it when the sampler starts from
//! noise · sqrt(1 + σ_max²) ([`initial_noise_scale`]) rather than noise · σ_max; its renoising
//! sqrt(ᾱ_prev)·denoised + sqrt(1 − ᾱ_prev)·z is the `lcm` sampler's denoised + σ_next·z in
//! k-diffusion coordinates.

use candle_core::{Device, Tensor};
use kairos_sampler::{DenoiseOutput, Denoiser, SamplerError};
use kairos_schedule::{Family, NoiseSchedule, ScheduleError, ScheduleKind, Sigmas};

use crate::loading::Component;
use crate::ModelError;

/// diffusers `get_guidance_scale_embedding(w, embedding_dim)` in float32: for each w (the
/// pipeline passes w = guidance_scale − 1), `[sin(1000·w·f_j), cos(1000·w·f_j)]` with
/// f_j = exp(−j·ln(10000)/(half − 1)), j < half = dim / 2, zero-padded when `dim` is odd.
/// Returns `[w.len(), embedding_dim]`, fed to the UNet as `timestep_cond`.
pub fn get_guidance_scale_embedding(w: &[f32], embedding_dim: usize, device: &Device) -> Result<Tensor, ModelError> {
    let half = embedding_dim / 2;
    if half < 2 {
        return Err(ModelError::InvalidConfig {
            field: "time_cond_proj_dim",
            reason: format!("the guidance embedding needs at least 4 dimensions, got {embedding_dim}"),
        });
    }
    // Every operation rounds to float32 as torch's float32 tensors do.
    let step = 10000f32.ln() / (half - 1) as f32;
    let freqs: Vec<f32> = (0..half).map(|j| (j as f32 * -step).exp()).collect();
    let mut out = Vec::with_capacity(w.len() * embedding_dim);
    for &w in w {
        let w = w * 1000.0;
        out.extend(freqs.iter().map(|f| (w * f).sin()));
        out.extend(freqs.iter().map(|f| (w * f).cos()));
        if embedding_dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (w.len(), embedding_dim), device)?)
}

/// The embedding width of an LCM-distilled UNet (`time_cond_proj_dim`, read from
/// `time_embedding.cond_proj.weight`), or `None` for other UNets.
pub fn lcm_time_cond_proj_dim(unet: &Component) -> Option<usize> {
    unet.shape("time_embedding.cond_proj.weight").and_then(|s| s.get(1).copied())
}

/// `LCMScheduler` options that shape the timesteps and boundary conditions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcmOptions {
    /// The distillation schedule length (`original_inference_steps`, 50).
    pub original_inference_steps: usize,
    /// Training timesteps (`num_train_timesteps`, 1000).
    pub num_train_timesteps: usize,
    /// `timestep_scaling` of the boundary conditions (10).
    pub timestep_scaling: f64,
    /// σ_data of the boundary conditions (0.5, fixed in diffusers).
    pub sigma_data: f64,
}

impl Default for LcmOptions {
    fn default() -> Self {
        Self { original_inference_steps: 50, num_train_timesteps: 1000, timestep_scaling: 10.0, sigma_data: 0.5 }
    }
}

fn steps_error(message: String) -> ModelError {
    ModelError::InvalidConfig { field: "num_inference_steps", reason: message }
}

/// diffusers `LCMScheduler.set_timesteps(steps, strength)`: the `original_inference_steps`-long
/// grid k−1, 2k−1, …, (k = num_train / original), cut to `original · strength` entries, reversed,
/// and sampled at floor(linspace(0, len, steps, endpoint = False)). 4 steps → 999, 759, 499, 259.
pub fn lcm_timesteps(steps: usize, strength: f64, opts: &LcmOptions) -> Result<Vec<usize>, ModelError> {
    let original = opts.original_inference_steps;
    if original == 0 || original > opts.num_train_timesteps {
        return Err(ModelError::InvalidConfig {
            field: "original_inference_steps",
            reason: format!("must be in 1..={}, got {original}", opts.num_train_timesteps),
        });
    }
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ModelError::InvalidConfig {
            field: "strength",
            reason: format!("must be in (0, 1], got {strength}"),
        });
    }
    let k = opts.num_train_timesteps / original;
    // int(original_steps * strength), as Python truncates.
    let len = (original as f64 * strength) as usize;
    if steps == 0 || steps > len || steps > original {
        return Err(steps_error(format!(
            "LCM takes 1..={} steps (original_inference_steps {original} × strength {strength}), got {steps}",
            len.min(original)
        )));
    }
    let origin_rev: Vec<usize> = (1..=len).rev().map(|i| i * k - 1).collect();
    // np.linspace(0, len, steps, endpoint=False) = i * (len / steps), floored.
    let delta = len as f64 / steps as f64;
    Ok((0..steps).map(|i| origin_rev[(i as f64 * delta).floor() as usize]).collect())
}

/// The sigmas of [`lcm_timesteps`] on the model's discrete schedule (plus the final 0).
pub fn lcm_sigmas(
    schedule: &dyn NoiseSchedule,
    family: Family,
    steps: usize,
    strength: f64,
    opts: &LcmOptions,
) -> Result<Sigmas, LcmScheduleError> {
    let ts = lcm_timesteps(steps, strength, opts)?;
    let kind = ScheduleKind::Timesteps(ts.iter().map(|&t| t as f64).collect());
    Ok(kind.build(schedule, family, steps, 1.0)?)
}

/// Errors of [`lcm_sigmas`].
#[derive(Debug, thiserror::Error)]
pub enum LcmScheduleError {
    /// Bad step count or options.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The schedule could not map the timesteps.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// The factor by which unit-variance noise is scaled for the first state so that an LCM run
/// matches diffusers (whose VP-space latent is the noise itself): sqrt(1 + σ²).
pub fn initial_noise_scale(sigma: f64) -> f64 {
    (1.0 + sigma * sigma).sqrt()
}

/// LCM's consistency boundary conditions around an x0 denoiser (diffusers
/// `get_scalings_for_boundary_condition_discrete` and the `denoised` line of `LCMScheduler.step`):
/// with τ = t · timestep_scaling, c_skip = σ_data² / (τ² + σ_data²), c_out = τ / sqrt(τ² + σ_data²),
/// denoised = c_out · x0 + c_skip · x_vp, where x_vp = x / sqrt(1 + σ²) is diffusers' sample.
/// t is the model timestep of σ on the inner denoiser's schedule.
pub struct LcmDenoiser<D> {
    inner: D,
    opts: LcmOptions,
}

impl<D: Denoiser> LcmDenoiser<D> {
    /// Wraps `inner`, which must expose its model schedule ([`Denoiser::model_schedule`]).
    pub fn new(inner: D, opts: LcmOptions) -> Self {
        Self { inner, opts }
    }

    /// The wrapped denoiser.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// (c_skip, c_out) at model timestep `t`.
    pub fn scalings(&self, t: f64) -> (f64, f64) {
        let tau = t * self.opts.timestep_scaling;
        let sd2 = self.opts.sigma_data * self.opts.sigma_data;
        (sd2 / (tau * tau + sd2), tau / (tau * tau + sd2).sqrt())
    }
}

impl<D: Denoiser> Denoiser for LcmDenoiser<D> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<DenoiseOutput, SamplerError> {
        let t = self
            .inner
            .model_schedule()
            .ok_or(SamplerError::MissingModelSchedule { sampler: "lcm (boundary conditions)" })?
            .sigma_to_t(sigma);
        let (c_skip, c_out) = self.scalings(t);
        let out = self.inner.denoise(x, sigma)?;
        let skip = |x0: &Tensor| -> Result<Tensor, SamplerError> {
            Ok(((x0 * c_out)? + (x * (c_skip / initial_noise_scale(sigma)))?)?)
        };
        Ok(DenoiseOutput {
            denoised: skip(&out.denoised)?,
            uncond_denoised: out.uncond_denoised.as_ref().map(skip).transpose()?,
        })
    }

    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        self.inner.model_schedule()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_match_the_research_table() {
        let o = LcmOptions::default();
        let t = |n| lcm_timesteps(n, 1.0, &o).unwrap();
        assert_eq!(t(1), vec![999]);
        assert_eq!(t(3), vec![999, 679, 339]);
        assert_eq!(t(5), vec![999, 799, 599, 399, 199]);
        assert_eq!(t(6), vec![999, 839, 679, 499, 339, 179]);
        assert!(lcm_timesteps(0, 1.0, &o).is_err());
        assert!(lcm_timesteps(51, 1.0, &o).is_err());
        assert!(lcm_timesteps(30, 0.5, &o).is_err());
        assert_eq!(lcm_timesteps(2, 0.5, &o).unwrap(), vec![499, 259]);
    }

    #[test]
    fn embedding_rejects_tiny_dims() {
        assert!(get_guidance_scale_embedding(&[1.0], 3, &Device::Cpu).is_err());
    }
}
