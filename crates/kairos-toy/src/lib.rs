//! A toy world with an exact denoiser: data from a 2-D Gaussian mixture (a preset or any file of
//! weights, means and full covariances), for which D(x, sigma) = E[x0 | x0 + sigma * eps = x] is
//! analytic, and sample-quality figures against the true distribution: KL(samples ‖ data) (the
//! judge: it sees both blur and collapse), the sliced Wasserstein distance to a large true
//! sample, and the mean NLL under the true density, the AYS paper's Table 4 measure. Schedules and
//! samplers can be compared here without a network: any error is the solver's and the
//! schedule's, never the model's.

mod denoiser;
mod metrics;
mod mixture;
mod mixture_file;
mod rng;
mod runner;

pub use denoiser::ExactDenoiser;
pub use metrics::{knn_entropy, wasserstein_1d, SlicedWasserstein, Stats, KNN_K};
pub use mixture::{Component, GaussianMixture, Preset, SEPARATION};
pub use mixture_file::MixtureFile;
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
    /// A mixture file that cannot be used.
    #[error("mixture file {path}: {reason}")]
    MixtureFile { path: std::path::PathBuf, reason: String },
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
