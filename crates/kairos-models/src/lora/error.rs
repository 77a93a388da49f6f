//! Errors of LoRA loading and merging.

use std::path::PathBuf;

use crate::ModelError;

/// One LoRA tensor (or group of tensors) that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraProblem {
    /// The key in the LoRA file (for a layer: its name without the parameter suffix).
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl std::fmt::Display for LoraProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Errors from reading a LoRA file, merging it, or parsing a LoRA reference.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// Keys that cannot be applied to the model (unknown layout, no such layer, wrong shape,
    /// unsupported variant). All of them are listed; nothing is dropped silently.
    #[error(
        "{path}: {} LoRA key(s) cannot be applied: {}",
        problems.len(),
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Unapplicable {
        /// The LoRA file.
        path: PathBuf,
        /// Every key that cannot be applied.
        problems: Vec<LoraProblem>,
    },
    /// A `FILE[:STRENGTH]` argument or a `<lora:NAME:STRENGTH>` prompt tag that does not parse.
    #[error("invalid LoRA reference `{text}`: {reason}")]
    BadReference {
        /// The text as given.
        text: String,
        /// What is wrong and the accepted syntax.
        reason: String,
    },
    /// A LoRA named in a prompt tag that the LoRA directory does not hold (or holds twice).
    #[error("LoRA `{name}` not found in {dir}: {reason}")]
    NotFound {
        /// The name from the tag.
        name: String,
        /// The directory searched.
        dir: PathBuf,
        /// Not found, or the ambiguous candidates.
        reason: String,
    },
    /// Reading the file or the base weights failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for LoraError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}
