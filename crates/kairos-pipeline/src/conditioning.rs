//! Prompt → text embeddings for the UNet's cross-attention (and, for SDXL, the pooled text
//! embedding of its `text_time` embedding).

use candle_core::Tensor;
use kairos_models::prompt::{encode_prompt_with, ChunkEncoder, PromptOptions};
use kairos_models::text_encoders::clip::{CLIPTextModel, CLIPTextModelWithProjection, CLIPTextTransformer};
use kairos_models::tokenizer::{CLIPTokenizer, MODEL_MAX_LENGTH};

use crate::PipelineError;

/// A prompt's embeddings.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// Cross-attention context `[1, S, D]`.
    pub context: Tensor,
    /// SDXL: the pooled text embedding `[1, P]` (`text_encoder_2`'s projection).
    pub pooled: Option<Tensor>,
}

impl PromptEmbeds {
    /// Every tensor mapped by `f`.
    pub fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Self> {
        Ok(Self { context: f(&self.context)?, pooled: self.pooled.as_ref().map(f).transpose()? })
    }
}

/// Turns a prompt into embeddings.
pub trait PromptEncoder {
    /// The embeddings of `prompt` (the empty prompt is valid). `prompt_2` is SDXL's second
    /// prompt, for OpenCLIP-bigG (`None`: the same prompt); other models ignore it.
    fn encode(&self, prompt: &str, prompt_2: Option<&str>) -> Result<PromptEmbeds, PipelineError>;

    /// Whether an empty negative prompt conditions on zeros rather than on the empty prompt's
    /// embeddings (SDXL base: diffusers' `force_zeros_for_empty_prompt`, SGM's
    /// `force_zero_embeddings`, A1111/Forge).
    fn zeros_for_empty_negative(&self) -> bool {
        false
    }
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

/// Runs `encode` on the prompt's token ids as `syntax` reads them: one 77-token row
/// (diffusers), or A1111's weighted chunks.
fn encode_with_syntax(
    syntax: PromptSyntax,
    options: &PromptOptions,
    tokenizer: &CLIPTokenizer,
    prompt: &str,
    device: &candle_core::Device,
    encode: &mut ChunkEncoder<'_>,
) -> Result<(Tensor, Tensor), PipelineError> {
    Ok(match syntax {
        PromptSyntax::A1111 => encode_prompt_with(tokenizer, prompt, options, device, encode)?,
        PromptSyntax::Diffusers => {
            let ids = tokenizer.encode(prompt, MODEL_MAX_LENGTH)?;
            let ids = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?; // [1, 77]
            encode(&ids)?
        }
    })
}

/// CLIP text encoder plus tokenizer as a [`PromptEncoder`] (SD1, SD2).
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
    fn encode(&self, prompt: &str, _: Option<&str>) -> Result<PromptEmbeds, PipelineError> {
        let text_model = self.text_encoder.text_model();
        let clip_skip = self.options.clip_skip;
        let (context, _) =
            encode_with_syntax(self.syntax, &self.options, &self.tokenizer, prompt, text_model.device(), &mut |ids| {
                let output = text_model.forward(ids)?;
                Ok((text_model.clip_skip_hidden_state(&output, clip_skip)?, output.pooler_output))
            })?;
        Ok(PromptEmbeds { context, pooled: None })
    }
}

/// SDXL's two text encoders as a [`PromptEncoder`] (diffusers' `StableDiffusionXLPipeline.encode_prompt`):
/// CLIP-L gets the prompt, OpenCLIP-bigG `prompt_2` (default: the prompt); each conditions on
/// its penultimate layer without the final layer norm ([`CLIPTextTransformer::sdxl_hidden_state`]),
/// the two concatenated on channels (CLIP-L first); the pooled embedding is bigG's projection.
/// With the A1111 syntax each encoder weights and chunks its own tokens, and the pooled
/// embedding is the first chunk's (A1111/Forge). The refiner has bigG alone.
pub struct SdxlPromptEncoder {
    clip_l: Option<(CLIPTextModel, CLIPTokenizer)>,
    clip_g: CLIPTextModelWithProjection,
    tokenizer_g: CLIPTokenizer,
    syntax: PromptSyntax,
    options: PromptOptions,
    force_zeros_for_empty_prompt: bool,
}

impl SdxlPromptEncoder {
    /// `clip_l` is `None` for the refiner. `options.clip_skip` is A1111's "Clip skip": 1 and 2
    /// both give the penultimate layer SDXL was trained on.
    pub fn new(
        clip_l: Option<(CLIPTextModel, CLIPTokenizer)>,
        clip_g: CLIPTextModelWithProjection,
        tokenizer_g: CLIPTokenizer,
        syntax: PromptSyntax,
        options: PromptOptions,
        force_zeros_for_empty_prompt: bool,
    ) -> Self {
        Self { clip_l, clip_g, tokenizer_g, syntax, options, force_zeros_for_empty_prompt }
    }

    fn encode_one(
        &self,
        text_model: &CLIPTextTransformer,
        tokenizer: &CLIPTokenizer,
        prompt: &str,
        project: Option<&CLIPTextModelWithProjection>,
    ) -> Result<(Tensor, Tensor), PipelineError> {
        let clip_skip = self.options.clip_skip;
        encode_with_syntax(self.syntax, &self.options, tokenizer, prompt, text_model.device(), &mut |ids| {
            let output = text_model.forward(ids)?;
            let pooled = match project {
                Some(p) => p.project(&output.pooler_output)?,
                None => output.pooler_output.clone(),
            };
            Ok((text_model.sdxl_hidden_state(&output, clip_skip)?, pooled))
        })
    }
}

impl PromptEncoder for SdxlPromptEncoder {
    fn encode(&self, prompt: &str, prompt_2: Option<&str>) -> Result<PromptEmbeds, PipelineError> {
        let g_model = self.clip_g.text_model();
        // The refiner's one encoder sees `prompt` (diffusers zips [prompt, prompt_2] with its
        // single tokenizer, so prompt_2 is unused there).
        let g_prompt = if self.clip_l.is_some() { prompt_2.unwrap_or(prompt) } else { prompt };
        let (g, pooled) = self.encode_one(g_model, &self.tokenizer_g, g_prompt, Some(&self.clip_g))?;
        let context = match &self.clip_l {
            None => g,
            Some((l_model, l_tokenizer)) => {
                let (l, _) = self.encode_one(l_model.text_model(), l_tokenizer, prompt, None)?;
                if l.dim(1)? != g.dim(1)? {
                    // A1111 chunks each encoder on its own tokenizer's counts; the two CLIP
                    // vocabularies are the same, so the chunk counts agree.
                    return Err(PipelineError::InvalidOption {
                        name: "prompt_2",
                        message: format!(
                            "the prompt needs {} tokens for CLIP-L but prompt_2 {} for OpenCLIP-bigG; with the A1111 syntax both must fill the same number of 75-token chunks (add BREAK or shorten one)",
                            l.dim(1)?,
                            g.dim(1)?
                        ),
                    });
                }
                Tensor::cat(&[&l, &g], 2)?
            }
        };
        Ok(PromptEmbeds { context, pooled: Some(pooled) })
    }

    fn zeros_for_empty_negative(&self) -> bool {
        self.force_zeros_for_empty_prompt
    }
}

/// Encodes the prompt and the negative prompt to embeddings of one shape: when their lengths
/// differ (A1111 chunks), the shorter is extended with the empty prompt's embedding, as
/// A1111's `pad_cond` does, so both fit in one batched UNet call. An empty negative prompt
/// (and second negative prompt) is zeros where the encoder says so (SDXL's
/// `force_zeros_for_empty_prompt`; diffusers zeros a `None` negative prompt, which is what an
/// absent `--negative-prompt` is).
pub fn encode_pair(
    encoder: &dyn PromptEncoder,
    prompt: (&str, Option<&str>),
    negative_prompt: (&str, Option<&str>),
) -> Result<(PromptEmbeds, PromptEmbeds), PipelineError> {
    let cond = encoder.encode(prompt.0, prompt.1)?;
    if negative_prompt.0.is_empty() && negative_prompt.1.is_none_or(str::is_empty) && encoder.zeros_for_empty_negative()
    {
        let uncond = cond.map(Tensor::zeros_like)?;
        return Ok((cond, uncond));
    }
    let uncond = encoder.encode(negative_prompt.0, negative_prompt.1)?;
    let (lc, lu) = (cond.context.dim(1)?, uncond.context.dim(1)?);
    if lc == lu {
        return Ok((cond, uncond));
    }
    let empty = encoder.encode("", None)?.context;
    let pad = |t: PromptEmbeds, missing: usize| -> Result<PromptEmbeds, PipelineError> {
        let chunk = empty.dim(1)?;
        if !missing.is_multiple_of(chunk) {
            return Err(PipelineError::InvalidOption {
                name: "prompt",
                message: format!("embeddings of {lc} and {lu} tokens cannot be padded with {chunk}-token chunks"),
            });
        }
        let mut parts = vec![t.context];
        parts.extend(std::iter::repeat_n(empty.clone(), missing / chunk));
        Ok(PromptEmbeds { context: Tensor::cat(&parts, 1)?, pooled: t.pooled })
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
        fn encode(&self, prompt: &str, _: Option<&str>) -> Result<PromptEmbeds, PipelineError> {
            let chunks = 1 + prompt.len() / 10;
            let context = Tensor::full(chunks as f32, (1, 77 * chunks, 2), &Device::Cpu)?;
            Ok(PromptEmbeds { context, pooled: Some(Tensor::ones((1, 3), candle_core::DType::F32, &Device::Cpu)?) })
        }

        fn zeros_for_empty_negative(&self) -> bool {
            true
        }
    }

    #[test]
    fn shorter_side_is_padded_with_the_empty_prompt() {
        let (c, u) = encode_pair(&Chunky, ("a long prompt of 25 chars", None), ("no", None)).unwrap();
        assert_eq!(c.context.dims(), &[1, 231, 2]);
        assert_eq!(u.context.dims(), &[1, 231, 2]);
        let u = u.context.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert!(u.iter().all(|row| row == &[1.0, 1.0]), "empty prompt chunks");
        let (c, u) = encode_pair(&Chunky, ("ab", None), ("cd", None)).unwrap();
        assert_eq!((c.context.dim(1).unwrap(), u.context.dim(1).unwrap()), (77, 77));
    }

    /// SDXL's `force_zeros_for_empty_prompt`: an empty negative prompt is zeros of the
    /// positive's shape, pooled embedding included; a second negative prompt turns it off.
    #[test]
    fn empty_negative_is_zeros_when_the_encoder_says_so() {
        let (c, u) = encode_pair(&Chunky, ("a long prompt of 25 chars", None), ("", None)).unwrap();
        assert_eq!(u.context.dims(), c.context.dims());
        assert_eq!(u.context.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(u.pooled.unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let (_, u) = encode_pair(&Chunky, ("x", None), ("", Some("y"))).unwrap();
        assert_eq!(u.context.sum_all().unwrap().to_scalar::<f32>().unwrap(), 154.0);
    }
}
