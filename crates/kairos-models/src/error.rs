//! The error type of `kairos-models`.

use std::path::PathBuf;

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
    /// The checkpoint path does not exist.
    #[error("checkpoint not found: {path}")]
    FileNotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path is a file whose extension names no checkpoint format kairos reads.
    #[error(
        "unknown checkpoint format `{extension}` for {path}; accepted: .safetensors, .ckpt, .pt, \
         .pth, .bin, or a diffusers folder containing model_index.json"
    )]
    UnknownExtension {
        /// The file.
        path: PathBuf,
        /// Its extension, lowercased.
        extension: String,
    },
    /// The file could not be parsed (truncated download, wrong content, corrupt archive).
    #[error("cannot read {path}: the file is truncated or corrupt ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The tensor names follow no layout kairos knows.
    #[error("unrecognised key layout in {path}: expected {expected}; unexpected keys include {examples:?}")]
    UnrecognisedLayout {
        /// The file.
        path: PathBuf,
        /// The layout kairos looked for, in words.
        expected: String,
        /// A few keys that fit no rule.
        examples: Vec<String>,
    },
    /// A weight the model needs is not in the checkpoint.
    #[error("{component}: missing weight `{key}`")]
    MissingWeight {
        /// `unet`, `vae` or `text_encoder`.
        component: String,
        /// The diffusers key name.
        key: String,
    },
    /// A weight has another shape than the model expects.
    #[error("{component}: weight `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// `unet`, `vae` or `text_encoder`.
        component: String,
        /// The diffusers key name.
        key: String,
        /// The shape the model asked for.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A JSON file (`model_index.json`, `config.json`) that cannot be read as one.
    #[error("invalid config file {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
