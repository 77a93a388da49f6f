/// Errors from sampling.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The per-step callback asked to stop.
    #[error("sampling was cancelled")]
    Cancelled,
    /// A CFG++ sampler was given a denoiser that does not return the unconditional prediction.
    #[error("sampler `{sampler}` needs the unconditional prediction (CFG++); the denoiser did not provide it")]
    MissingUncond { sampler: &'static str },
    /// A sampler name that is not known.
    #[error("unknown sampler `{name}`; accepted: {accepted}")]
    UnknownSampler { name: String, accepted: String },
    /// A sampler needs the model's training schedule (e.g. `tcd`) and the denoiser has none.
    #[error("sampler `{sampler}` needs the model's discrete noise schedule; the denoiser does not expose one")]
    MissingModelSchedule { sampler: &'static str },
    /// The sigma list cannot be sampled.
    #[error("invalid sigmas: {0}")]
    InvalidSigmas(String),
    /// A [`crate::noise::FixedNoise`] source was asked for more draws than it holds.
    #[error("the fixed noise source has no draws left")]
    NoiseExhausted,
    /// A noise source was misconfigured or misused.
    #[error(transparent)]
    Noise(#[from] crate::noise::NoiseError),
    /// A sampler option is out of range.
    #[error("invalid option for sampler `{sampler}`: {message}")]
    InvalidOption { sampler: &'static str, message: String },
}
