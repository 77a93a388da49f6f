//! Pure schedule math for kairos: the model's training noise schedule (betas → alphas_cumprod →
//! sigmas, or EDM's continuous sigmas), the prediction-type scalings, and the sampling sigma
//! schedules (`karras`, `ays`, ...). Everything is `f64` on the host; no tensors.
//!
//! Conventions follow k-diffusion: sigma is the noise level of the variance-exploding form
//! x = x0 + sigma * eps, with sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod) for discrete models.

/// A model's training noise schedule, seen in sigma space (k-diffusion's `DiscreteSchedule` /
/// ComfyUI's `ModelSampling*`).
pub trait NoiseSchedule: Send + Sync {
    /// Smallest noise level the model was trained on (sigma at t = 0 for discrete models).
    fn sigma_min(&self) -> f64;
    /// Largest noise level the model was trained on.
    fn sigma_max(&self) -> f64;
    /// The (possibly fractional) timestep the network is fed for noise level `sigma`.
    fn sigma_to_t(&self, sigma: f64) -> f64;
    /// The noise level of a (possibly fractional) timestep.
    fn t_to_sigma(&self, t: f64) -> f64;
    /// The ascending table of training sigmas for discrete models (`None` for continuous ones).
    fn train_sigmas(&self) -> Option<&[f64]>;
}
