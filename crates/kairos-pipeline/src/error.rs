//! The error type of `kairos-pipeline`.

use std::path::PathBuf;

use kairos_models::lora::LoraError;
use kairos_models::prompt::PromptError;
use kairos_models::text_encoders::TextEncoderError;
use kairos_models::tokenizer::TokenizerError;
use kairos_models::ModelError;
use kairos_sampler::noise::NoiseError;
use kairos_sampler::SamplerError;
use kairos_schedule::ScheduleError;

/// Errors from building or running a pipeline, or writing its output.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An image side that the VAE cannot produce.
    #[error("{side} must be a positive multiple of {multiple}, got {value} (e.g. {nearest})")]
    BadImageSize {
        /// `width` or `height`.
        side: &'static str,
        /// The value given.
        value: usize,
        /// The multiple required (8, or the VAE's downsampling factor if larger).
        multiple: usize,
        /// The nearest accepted value.
        nearest: usize,
    },
    /// An option out of range.
    #[error("invalid `{name}`: {message}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A prompt asked of a text encoder that `--low-memory` dropped after encoding the run's prompts.
    #[error("the text encoder was dropped after encoding the run's prompts (--low-memory), so `{prompt}` cannot be encoded; run without --low-memory to encode prompts later")]
    TextEncoderDropped {
        /// The prompt.
        prompt: String,
    },
    /// A replacement VAE (`--vae`) that does not fit the model.
    #[error("VAE {path} does not fit this model: its {what} is {vae}, the model needs {model} (use a VAE made for this model family)")]
    VaeMismatch {
        /// The VAE file.
        path: PathBuf,
        /// What differs: `latent channels` or `scaling factor`.
        what: &'static str,
        /// The VAE's value.
        vae: String,
        /// The model's value.
        model: String,
    },
    /// A decode gave NaN or infinite values (a float16 VAE whose activations overflow, as SDXL's
    /// original VAE does), which would be written as a black image.
    #[error("VAE produced NaN: use a float32 VAE or sdxl-vae-fp16-fix ({count} of {total} decoded values are NaN or infinite; no image was written)")]
    NonFiniteDecode {
        /// Non-finite values.
        count: usize,
        /// All values.
        total: usize,
    },
    /// Sampling failed or was cancelled ([`SamplerError::Cancelled`]).
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The sigma schedule could not be built.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A LoRA could not be read or merged.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// Parsing or encoding the prompt failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Building the tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Building or running the text encoder failed.
    #[error(transparent)]
    TextEncoder(#[from] TextEncoderError),
    /// The noise generators could not be set up.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The output path names an existing file; kairos never overwrites.
    #[error("{path} already exists; kairos never overwrites files: choose another --output, or a directory to get the next free name")]
    OutputExists {
        /// The file.
        path: PathBuf,
    },
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a PNG failed.
    #[error("cannot encode {path} as PNG: {source}")]
    Png {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
}

impl PipelineError {
    /// Whether the run stopped because the progress callback asked it to.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Sampler(SamplerError::Cancelled))
    }
}
