use std::ops::ControlFlow;

use candle_core::Tensor;
use kairos_schedule::NoiseSchedule;

use crate::{NoiseSource, Result, SamplerError};

/// What a denoiser returns for one evaluation.
#[derive(Debug, Clone)]
pub struct DenoiseOutput {
    /// The guided prediction of the clean sample x0.
    pub denoised: Tensor,
    /// The unconditional prediction of x0, when the denoiser runs classifier-free guidance.
    /// CFG++ samplers need it; others ignore it.
    pub uncond_denoised: Option<Tensor>,
}

impl DenoiseOutput {
    /// An output without an unconditional branch.
    pub fn new(denoised: Tensor) -> Self {
        Self { denoised, uncond_denoised: None }
    }
}

/// A model wrapped so that it maps (x, sigma) to the denoised x0, as k-diffusion's and ComfyUI's
/// model wrappers do. Prediction types (eps, v, ...) and CFG live behind this trait, never in samplers.
pub trait Denoiser {
    /// The x0 prediction for the state `x` (variance-exploding scale) at noise level `sigma`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<DenoiseOutput>;

    /// The model's training noise schedule, for samplers that work on its timestep grid
    /// (`tcd`, `lcm` in diffusers' form). `None` for denoisers without one.
    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        None
    }
}

/// What the per-step callback sees after each step's denoiser call.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Step index, 0-based.
    pub step: usize,
    /// Number of steps (sigmas.len() - 1).
    pub total: usize,
    /// Noise level at the start of the step.
    pub sigma: f64,
    /// Noise level the step moves to.
    pub sigma_next: f64,
    /// The state at the start of the step.
    pub x: &'a Tensor,
    /// The denoiser's x0 prediction at this step.
    pub denoised: &'a Tensor,
}

/// The per-step callback: return `ControlFlow::Break(())` to cancel sampling.
pub type OnStep<'a> = dyn FnMut(&StepInfo<'_>) -> ControlFlow<()> + 'a;

/// Everything a sampler needs besides the state and the sigmas.
pub struct SampleCtx<'a> {
    /// The model, as an x0 denoiser.
    pub denoiser: &'a mut dyn Denoiser,
    /// Where stochastic samplers draw their noise from.
    pub noise: &'a mut dyn NoiseSource,
    /// Called after each step's first denoiser call; may cancel.
    pub on_step: Option<&'a mut OnStep<'a>>,
}

impl<'a> SampleCtx<'a> {
    /// A context without a callback.
    pub fn new(denoiser: &'a mut dyn Denoiser, noise: &'a mut dyn NoiseSource) -> Self {
        Self { denoiser, noise, on_step: None }
    }

    /// Sets the per-step callback.
    pub fn with_callback(mut self, on_step: &'a mut OnStep<'a>) -> Self {
        self.on_step = Some(on_step);
        self
    }

    /// Runs the denoiser.
    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<DenoiseOutput> {
        self.denoiser.denoise(x, sigma)
    }

    /// Draws standard normal noise shaped like `like` for the step `sigma` → `sigma_next`.
    pub fn noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
        self.noise.step_noise(like, sigma, sigma_next)
    }

    /// Reports a finished denoiser call of step `step` to the callback; `Err(Cancelled)` if it
    /// asked to stop.
    pub fn report(&mut self, step: usize, sigmas: &[f64], x: &Tensor, denoised: &Tensor) -> Result<()> {
        if let Some(cb) = self.on_step.as_mut() {
            let info = StepInfo {
                step,
                total: sigmas.len().saturating_sub(1),
                sigma: sigmas[step],
                sigma_next: sigmas[step + 1],
                x,
                denoised,
            };
            if cb(&info).is_break() {
                return Err(SamplerError::Cancelled);
            }
        }
        Ok(())
    }
}
