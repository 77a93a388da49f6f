//! A toy world with an exact denoiser: data from a 2-D Gaussian mixture, for which
//! D(x, sigma) = E[x0 | x0 + sigma * eps = x] is analytic, and sample-quality figures against the
//! true distribution (sliced Wasserstein distance to a large true sample, and the mean NLL under
//! the true density, the AYS paper's Table 4 measure). Schedules and samplers can be compared here
//! without a network: any error is the solver's and the schedule's, never the model's.

mod denoiser;
mod metrics;
mod mixture;
mod rng;
mod runner;

pub use denoiser::ExactDenoiser;
pub use metrics::{wasserstein_1d, SlicedWasserstein, Stats};
pub use mixture::{Component, GaussianMixture, Preset, SEPARATION};
pub use rng::{Stream, ToyRng};
pub use runner::{Figures, Run, Summary, ToyWorld, DIRECTIONS, REFERENCE_POINTS, REFERENCE_SEED};

/// Errors of the toy world.
#[derive(Debug, thiserror::Error)]
pub enum ToyError {
    /// A mixture preset name that is not known.
    #[error("unknown mixture `{name}`; accepted: {accepted}")]
    UnknownMixture { name: String, accepted: String },
    /// Mixture components that do not define a density.
    #[error("invalid mixture: {reason}")]
    InvalidMixture { reason: String },
    /// An argument out of range.
    #[error("invalid {name}: {message}")]
    InvalidArgument { name: &'static str, message: String },
    /// The sampler failed.
    #[error(transparent)]
    Sampler(#[from] kairos_sampler::SamplerError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
