//! Text encoders, mirroring transformers' `models/<name>/modeling_<name>.py`.

pub mod clip;

/// Errors of the text encoders.
#[derive(Debug, thiserror::Error)]
pub enum TextEncoderError {
    /// A tensor operation or a weight lookup failed (a missing weight names its key).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// `config.json` could not be parsed.
    #[error("invalid text encoder config.json: {0}")]
    ConfigJson(#[from] serde_json::Error),
    /// A config value this implementation cannot run.
    #[error("unsupported text encoder config: {field} = {value} ({reason})")]
    UnsupportedConfig {
        /// The config.json field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is accepted instead.
        reason: String,
    },
    /// `input_ids` of the wrong shape or dtype.
    #[error("input_ids must be an integer tensor of shape [batch, seq_len] with 1 <= seq_len <= {max_position_embeddings}, got shape {shape:?} and dtype {dtype:?}")]
    InputIdsShape {
        /// The shape given.
        shape: Vec<usize>,
        /// The dtype given.
        dtype: candle_core::DType,
        /// The longest sequence the position embeddings allow.
        max_position_embeddings: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} ids")]
    TokenIdOutOfRange {
        /// The id found.
        id: i64,
        /// `vocab_size` of the config.
        vocab_size: usize,
    },
    /// A clip skip the model has no layer for.
    #[error("clip_skip must be between 1 (last layer) and num_hidden_layers = {num_hidden_layers}, got {clip_skip}")]
    ClipSkipOutOfRange {
        /// The clip skip asked for.
        clip_skip: usize,
        /// Layers of the model.
        num_hidden_layers: usize,
    },
}
