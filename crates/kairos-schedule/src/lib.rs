//! Pure schedule math for kairos: the model's training noise schedule (betas → alphas_cumprod →
//! sigmas, or EDM's continuous sigmas), the prediction-type scalings, and the sampling sigma
//! schedules (`karras`, `ays`, `gits`, ...). Everything is `f64` on the host; no tensors.
//!
//! Conventions follow k-diffusion: sigma is the noise level of the variance-exploding form
//! x = x0 + sigma * eps, with sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod) for discrete models.
//!
//! # Usage
//!
//! ```
//! use kairos_schedule::{Family, ScheduleKind, TablePrecision, NoiseSchedule};
//!
//! let family = Family::from_name("sdxl")?;
//! let model = family.noise_schedule(TablePrecision::F64);        // σ table + σ ↔ t mapping
//! let kind = ScheduleKind::from_name("Align Your Steps")?;        // names or A1111 labels
//! let sigmas = kind.build(&model, family, 10, 1.0)?;              // steps, denoise ∈ (0, 1]
//! assert_eq!(sigmas.steps(), 10);
//! let timesteps = sigmas.timesteps(&model);                       // what the UNet is fed
//! let s = family.prediction().scalings(sigmas.as_slice()[0], family.sigma_data());
//! # let _ = (timesteps, s);
//! # Ok::<(), kairos_schedule::ScheduleError>(())
//! ```
//!
//! - Training schedules: [`BetaSchedule`] (`scaled_linear`, `linear`, `squaredcos_cap_v2`),
//!   [`DiscreteSchedule`] (k-diffusion's `DiscreteSchedule`, optional argmin `quantize`, table
//!   rounding per [`TablePrecision`]: exact f64, diffusers' float32, ComfyUI's f64-then-f32),
//!   [`EdmSchedule`] (SVD), and [`ModelSchedule`] (either).
//! - [`Prediction`] and [`Scalings`]: c_skip, c_out, c_in; the network's timestep input
//!   (c_noise) is [`NoiseSchedule::sigma_to_t`].
//! - [`Family`]: `sd1`, `sd2-base`, `sd2` (768-v), `sdxl`, `svd`.
//! - [`ScheduleKind`]: the sigma schedule registry and builders; [`Sigmas`]: the validated result.
//! - [`ScheduleError`]: every failure, naming what is accepted.

mod error;
mod family;
mod math;
mod noise;
mod prediction;
mod schedules;
mod sigmas;
mod tables;

pub use error::ScheduleError;
pub use family::{AysModel, Family};
pub use noise::{BetaSchedule, DiscreteSchedule, EdmSchedule, ModelSchedule, TablePrecision};
pub use prediction::{Prediction, Scalings};
pub use schedules::{DenoiseRule, ScheduleKind};
pub use sigmas::Sigmas;

/// A model's training noise schedule, seen in sigma space (k-diffusion's `DiscreteSchedule` /
/// ComfyUI's `ModelSampling*`).
pub trait NoiseSchedule: Send + Sync {
    /// Smallest noise level the model was trained on (sigma at t = 0 for discrete models).
    fn sigma_min(&self) -> f64;
    /// Largest noise level the model was trained on.
    fn sigma_max(&self) -> f64;
    /// The (possibly fractional) timestep the network is fed for noise level `sigma` (c_noise).
    fn sigma_to_t(&self, sigma: f64) -> f64;
    /// The noise level of a (possibly fractional) timestep.
    fn t_to_sigma(&self, t: f64) -> f64;
    /// The ascending table of training sigmas for discrete models (`None` for continuous ones).
    fn train_sigmas(&self) -> Option<&[f64]>;
}
