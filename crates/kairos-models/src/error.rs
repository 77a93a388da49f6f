//! The error type of `kairos-models`.

/// Errors from building or running a model component.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config value that diffusers accepts but kairos does not implement (yet).
    #[error("unsupported value for `{field}`: {value} (supported: {supported})")]
    Unsupported {
        /// The config field (diffusers' name).
        field: &'static str,
        /// The value found, as text.
        value: String,
        /// The values kairos accepts, as text.
        supported: &'static str,
    },
    /// A config whose values contradict each other or are out of range.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The config field (diffusers' name).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A model input with the wrong shape.
    #[error("bad input `{name}`: expected {expected}, got shape {got:?}")]
    BadInput {
        /// The argument name (diffusers' name).
        name: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },
    /// A required model input that was not given.
    #[error("missing input `{name}`: {reason}")]
    MissingInput {
        /// The argument name (diffusers' name).
        name: &'static str,
        /// Why the model needs it.
        reason: &'static str,
    },
    /// A `config.json` that is not valid JSON for this config type.
    #[error("cannot parse config: {0}")]
    Json(#[from] serde_json::Error),
    /// A tensor operation failed, including a missing or mis-shaped weight in a `VarBuilder`.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
