//! Prompt → text embeddings for the UNet's cross-attention.

use candle_core::Tensor;
use kairos_models::prompt::{encode_prompt, PromptOptions};
use kairos_models::text_encoders::clip::CLIPTextModel;
use kairos_models::tokenizer::{CLIPTokenizer, MODEL_MAX_LENGTH};

use crate::PipelineError;

/// Turns a prompt into embeddings `[1, S, D]`.
pub trait PromptEncoder {
    /// The embeddings of `prompt` (the empty prompt is valid).
    fn encode(&self, prompt: &str) -> Result<Tensor, PipelineError>;
}

/// How prompts are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptSyntax {
    /// diffusers' `StableDiffusionPipeline.encode_prompt`: the text is tokenized as is and
    /// truncated to 77 tokens; brackets are plain text.
    Diffusers,
    /// AUTOMATIC1111: `(word:1.2)` weights, `BREAK`, 75-token chunks concatenated (see
    /// [`kairos_models::prompt`]). For a prompt without brackets that fits in 75 tokens the
    /// embeddings equal diffusers'.
    A1111,
}

/// CLIP text encoder plus tokenizer as a [`PromptEncoder`].
pub struct ClipPromptEncoder {
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    syntax: PromptSyntax,
    options: PromptOptions,
}

impl ClipPromptEncoder {
    /// `options.clip_skip` counts as A1111's "Clip skip" (1 = last layer) for both syntaxes;
    /// the other options apply to [`PromptSyntax::A1111`] only.
    pub fn new(
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        syntax: PromptSyntax,
        options: PromptOptions,
    ) -> Self {
        Self { text_encoder, tokenizer, syntax, options }
    }
}

impl PromptEncoder for ClipPromptEncoder {
    fn encode(&self, prompt: &str) -> Result<Tensor, PipelineError> {
        let text_model = self.text_encoder.text_model();
        match self.syntax {
            PromptSyntax::A1111 => Ok(encode_prompt(text_model, &self.tokenizer, prompt, &self.options)?.0),
            PromptSyntax::Diffusers => {
                let ids = self.tokenizer.encode(prompt, MODEL_MAX_LENGTH)?;
                let ids = Tensor::new(ids.as_slice(), text_model.device())?.unsqueeze(0)?; // [1, 77]
                let output = text_model.forward(&ids)?;
                Ok(text_model.clip_skip_hidden_state(&output, self.options.clip_skip)?)
            }
        }
    }
}

/// Encodes the prompt and the negative prompt to tensors of one shape `[1, S, D]`: when their
/// lengths differ (A1111 chunks), the shorter is extended with the empty prompt's embedding,
/// as A1111's `pad_cond` does, so both fit in one batched UNet call.
pub fn encode_pair(
    encoder: &dyn PromptEncoder,
    prompt: &str,
    negative_prompt: &str,
) -> Result<(Tensor, Tensor), PipelineError> {
    let cond = encoder.encode(prompt)?;
    let uncond = encoder.encode(negative_prompt)?;
    let (lc, lu) = (cond.dim(1)?, uncond.dim(1)?);
    if lc == lu {
        return Ok((cond, uncond));
    }
    let empty = encoder.encode("")?;
    let pad = |t: Tensor, missing: usize| -> Result<Tensor, PipelineError> {
        let chunk = empty.dim(1)?;
        if !missing.is_multiple_of(chunk) {
            return Err(PipelineError::InvalidOption {
                name: "prompt",
                message: format!("embeddings of {lc} and {lu} tokens cannot be padded with {chunk}-token chunks"),
            });
        }
        let mut parts = vec![t];
        parts.extend(std::iter::repeat_n(empty.clone(), missing / chunk));
        Ok(Tensor::cat(&parts, 1)?)
    };
    if lc < lu {
        Ok((pad(cond, lu - lc)?, uncond))
    } else {
        Ok((cond, pad(uncond, lc - lu)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One 77-token chunk per 10 characters, filled with the chunk count.
    struct Chunky;

    impl PromptEncoder for Chunky {
        fn encode(&self, prompt: &str) -> Result<Tensor, PipelineError> {
            let chunks = 1 + prompt.len() / 10;
            Ok(Tensor::full(chunks as f32, (1, 77 * chunks, 2), &Device::Cpu)?)
        }
    }

    #[test]
    fn shorter_side_is_padded_with_the_empty_prompt() {
        let (c, u) = encode_pair(&Chunky, "a long prompt of 25 chars", "").unwrap();
        assert_eq!(c.dims(), &[1, 231, 2]);
        assert_eq!(u.dims(), &[1, 231, 2]);
        let u = u.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert!(u.iter().all(|row| row == &[1.0, 1.0]), "empty prompt chunks");
        let (c, u) = encode_pair(&Chunky, "", "").unwrap();
        assert_eq!((c.dim(1).unwrap(), u.dim(1).unwrap()), (77, 77));
    }
}
