//! The crate's error type.

use std::path::PathBuf;

/// Errors from loading checkpoints and building or running models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The checkpoint path does not exist.
    #[error("checkpoint not found: {path}")]
    FileNotFound { path: PathBuf },
    /// The path is a file whose extension names no checkpoint format kairos reads.
    #[error(
        "unknown checkpoint format `{extension}` for {path}; accepted: .safetensors, .ckpt, .pt, \
         .pth, .bin, or a diffusers folder containing model_index.json"
    )]
    UnknownExtension { path: PathBuf, extension: String },
    /// The file could not be parsed (truncated download, wrong content, corrupt archive).
    #[error("cannot read {path}: the file is truncated or corrupt ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    /// The tensor names do not follow any layout kairos knows.
    #[error("unrecognised key layout in {path}: expected {expected}; unexpected keys include {examples:?}")]
    UnrecognisedLayout { path: PathBuf, expected: String, examples: Vec<String> },
    /// A weight the model needs is not in the checkpoint.
    #[error("{component}: missing weight `{key}`")]
    MissingWeight { component: String, key: String },
    /// A weight has a shape other than the model expects.
    #[error("{component}: weight `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch { component: String, key: String, expected: Vec<usize>, got: Vec<usize> },
    /// A model family, config value or file layout that kairos does not support (yet).
    #[error("unsupported {field} `{value}`; accepted: {accepted}")]
    Unsupported { field: String, value: String, accepted: String },
    /// A JSON config file is missing a field or has a wrong value.
    #[error("invalid config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
