//! Errors of the optimizer and the schedule file.

use std::path::PathBuf;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AysError {
    /// An option or argument out of its accepted range.
    #[error("invalid {name} = {value}: {accepted}")]
    InvalidOption { name: &'static str, value: String, accepted: String },
    /// A schedule (list of knots) that the optimizer cannot work on.
    #[error("invalid schedule {knots:?}: {reason}")]
    InvalidKnots { knots: Vec<f64>, reason: String },
    /// A schedule file that cannot be used.
    #[error("schedule file {path}: {reason}")]
    ScheduleFile { path: PathBuf, reason: String },
    /// A checkpoint written by a run with other settings.
    #[error("checkpoint {path} was written with other settings ({field} differs); delete it or use another path")]
    CheckpointMismatch { path: PathBuf, field: String },
    /// The progress callback cancelled the run.
    #[error("the optimization was cancelled")]
    Cancelled,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is not valid JSON of the expected shape.
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    /// The denoiser failed.
    #[error(transparent)]
    Sampler(#[from] kairos_sampler::SamplerError),
    /// A schedule could not be built.
    #[error(transparent)]
    Schedule(#[from] kairos_schedule::ScheduleError),
    /// A toy-world run failed.
    #[error(transparent)]
    Toy(#[from] kairos_toy::ToyError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl AysError {
    pub(crate) fn option(name: &'static str, value: impl ToString, accepted: impl Into<String>) -> Self {
        Self::InvalidOption { name, value: value.to_string(), accepted: accepted.into() }
    }
}
