//! The error type of `kairos-eval`.

use std::path::PathBuf;

/// Errors from computing a metric or running an evaluation network.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Two inputs that must agree in shape do not.
    #[error("shape mismatch for `{name}`: {left:?} vs {right:?}")]
    ShapeMismatch {
        /// What was compared.
        name: &'static str,
        /// The first shape.
        left: Vec<usize>,
        /// The second shape.
        right: Vec<usize>,
    },
    /// An argument outside its accepted range.
    #[error("invalid `{name}`: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A network's weight file is missing.
    #[error("{network} weights not found at {path}; {hint}")]
    WeightsNotFound {
        /// `inception` or `lpips`.
        network: &'static str,
        /// The path given.
        path: PathBuf,
        /// Where to get the file.
        hint: &'static str,
    },
    /// A weight file that cannot be read as tensors.
    #[error("cannot read weights {path}: {reason}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// A tensor operation failed (including a missing weight in a `VarBuilder`).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`EvalError`].
pub type Result<T> = std::result::Result<T, EvalError>;
