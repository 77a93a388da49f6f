//! Samplers as short functions over an x0 [`Denoiser`], in the manner of k-diffusion's
//! `sampling.py`: every sampler takes the state `x` (in k-diffusion's variance-exploding scale,
//! x = x0 + sigma * eps), a descending list of sigmas ending in 0, and a [`SampleCtx`] that holds the
//! denoiser, the noise source and the per-step callback.
//!
//! Noise never comes from a hidden global generator: stochastic samplers draw from the
//! [`NoiseSource`] in the context, so a seed reproduces a run exactly.

mod ctx;
mod error;
pub mod noise;
pub mod samplers;

pub use ctx::{DenoiseOutput, Denoiser, SampleCtx, StepInfo};
pub use error::SamplerError;
pub use noise::NoiseSource;
pub use samplers::Sampler;

/// Result type of this crate.
pub type Result<T, E = SamplerError> = std::result::Result<T, E>;
