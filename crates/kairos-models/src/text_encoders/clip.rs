//! CLIP text encoders, mirroring transformers 5.24 `models/clip/modeling_clip.py`
//! (`CLIPTextEmbeddings`, `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPEncoder`,
//! `CLIPTextModel`, `CLIPTextModelWithProjection`) and `configuration_clip.py`
//! (`CLIPTextConfig`).
//!
//! Stable Diffusion uses them as: SD1 — OpenAI CLIP ViT-L/14 (`quick_gelu`, 12 layers, 768);
//! SD2 — OpenCLIP ViT-H/14 converted to a `CLIPTextModel` (`gelu`, 1024, 23 layers: the
//! conversion drops the last layer, so `last_hidden_state` is already the penultimate one);
//! SDXL — both a `CLIPTextModel` and a `CLIPTextModelWithProjection` (OpenCLIP bigG).
//!
//! Differences from transformers:
//! - Weight paths follow the on-disk layout of every Stable Diffusion checkpoint (written by
//!   transformers 4): `text_model.embeddings…`, `text_model.encoder.layers.N…`,
//!   `text_model.final_layer_norm…` (and `text_projection.weight`). transformers 4 called the
//!   module under `text_model` `CLIPTextTransformer`; transformers 5 folded it into
//!   `CLIPTextModel` and saves `CLIPTextModel` without the prefix, which
//!   [`CLIPTextModel::new`] also accepts.
//! - No padding attention mask, no `position_ids` argument, no attention-implementation
//!   switch: the causal mask only, as the Stable Diffusion pipelines run it.
//! - The hidden states of every layer are always returned (they are reference-counted tensors
//!   that exist anyway), for clip skip and for SDXL's penultimate layer.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use kairos_kernels::nn::{LayerNorm, Linear};
use serde::Deserialize;

use super::TextEncoderError;

type Result<T> = std::result::Result<T, TextEncoderError>;

/// The `eos_token_id` of configs written before transformers PR #24773 (all Stable Diffusion
/// text encoders): the pooled token is then the one with the largest id, `<|endoftext|>`.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// Activation of the MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD1).
    QuickGelu,
    /// Exact (erf) GELU (OpenCLIP: SD2, SDXL's second encoder).
    Gelu,
}

impl HiddenAct {
    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let act = match self {
            Self::QuickGelu => kairos_kernels::Activation::QuickGelu,
            Self::Gelu => kairos_kernels::Activation::GeluErf,
        };
        kairos_kernels::activation(xs, act)
    }
}

/// `CLIPTextConfig`, deserialized from a text encoder's `config.json`; missing fields take
/// transformers' defaults. Fields the forward pass does not use are not read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CLIPTextConfig {
    /// Token embedding rows.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLPs.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Output width of `CLIPTextModelWithProjection.text_projection`.
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    /// Encoder layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads; must divide `hidden_size`.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Longest input sequence.
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: HiddenAct,
    /// Epsilon of every layer norm.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Token whose final state is the pooled output; 2 means "the largest id" (see
    /// [`CLIPTextTransformer::forward`]).
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: u32,
}

mod defaults {
    use super::HiddenAct;
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn projection_dim() -> usize {
        512
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> HiddenAct {
        HiddenAct::QuickGelu
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn eos_token_id() -> u32 {
        49407
    }
}

impl CLIPTextConfig {
    /// Parses a transformers `config.json` and checks it.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values the model cannot be built with.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(TextEncoderError::UnsupportedConfig {
                field: "num_attention_heads",
                value: self.num_attention_heads.to_string(),
                reason: format!("must be a non-zero divisor of hidden_size = {}", self.hidden_size),
            });
        }
        if self.max_position_embeddings == 0 {
            return Err(TextEncoderError::UnsupportedConfig {
                field: "max_position_embeddings",
                value: "0".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// `CLIPTextEmbeddings`: token plus learned position embeddings.
#[derive(Debug, Clone)]
pub struct CLIPTextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

impl CLIPTextEmbeddings {
    /// Loads `token_embedding` and `position_embedding`.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        Ok(Self {
            token_embedding: kairos_kernels::nn::embedding(
                config.vocab_size,
                config.hidden_size,
                vb.pp("token_embedding"),
            )?,
            position_embedding: kairos_kernels::nn::embedding(
                config.max_position_embeddings,
                config.hidden_size,
                vb.pp("position_embedding"),
            )?,
        })
    }

    /// `input_ids` [batch, seq] → [batch, seq, hidden]; positions are `0..seq`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let seq_len = input_ids.dim(1)?;
        let inputs_embeds = self.token_embedding.forward(input_ids)?;
        let position_embeddings = self.position_embedding.embeddings().narrow(0, 0, seq_len)?; // [seq, hidden]
        Ok(inputs_embeds.broadcast_add(&position_embeddings)?)
    }
}

/// `CLIPAttention`: multi-head self-attention with q/k/v/out projections.
#[derive(Debug, Clone)]
pub struct CLIPAttention {
    k_proj: Linear,
    v_proj: Linear,
    q_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl CLIPAttention {
    /// Loads the four projections.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        let embed_dim = config.hidden_size;
        let head_dim = embed_dim / config.num_attention_heads;
        Ok(Self {
            k_proj: kairos_kernels::nn::linear_few_rows(embed_dim, embed_dim, vb.pp("k_proj"))?,
            v_proj: kairos_kernels::nn::linear_few_rows(embed_dim, embed_dim, vb.pp("v_proj"))?,
            q_proj: kairos_kernels::nn::linear_few_rows(embed_dim, embed_dim, vb.pp("q_proj"))?,
            out_proj: kairos_kernels::nn::linear_few_rows(embed_dim, embed_dim, vb.pp("out_proj"))?,
            num_heads: config.num_attention_heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `hidden_states` [batch, seq, hidden], with the causal mask (token i sees tokens ≤ i):
    /// transformers' `eager_attention_forward`, softmax(q kᵀ · scale + mask) v, as one kernel on
    /// the heads interleaved as the projections write them (bf16 operands in a bf16 model).
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let queries = self.q_proj.forward(hidden_states)?;
        let keys = self.k_proj.forward(hidden_states)?;
        let values = self.v_proj.forward(hidden_states)?;
        let attn_output = if self.q_proj.runs_bf16() {
            kairos_kernels::attention_heads_bf16(&queries, &keys, &values, self.num_heads, self.scale, true)?
        } else {
            kairos_kernels::attention_heads_causal(&queries, &keys, &values, self.num_heads, self.scale)?
        };
        Ok(self.out_proj.forward(&attn_output)?)
    }
}

/// `CLIPMLP`: fc1, activation, fc2.
#[allow(clippy::upper_case_acronyms)] // transformers' class name
#[derive(Debug, Clone)]
pub struct CLIPMLP {
    activation_fn: HiddenAct,
    fc1: Linear,
    fc2: Linear,
}

impl CLIPMLP {
    /// Loads `fc1` and `fc2`.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        Ok(Self {
            activation_fn: config.hidden_act,
            fc1: kairos_kernels::nn::linear_few_rows(config.hidden_size, config.intermediate_size, vb.pp("fc1"))?,
            fc2: kairos_kernels::nn::linear_few_rows(config.intermediate_size, config.hidden_size, vb.pp("fc2"))?,
        })
    }

    /// [batch, seq, hidden] → [batch, seq, hidden].
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let hidden_states = self.fc1.forward(hidden_states)?;
        let hidden_states = self.activation_fn.forward(&hidden_states)?;
        Ok(self.fc2.forward(&hidden_states)?)
    }
}

/// `CLIPEncoderLayer`: pre-norm self-attention and MLP, each with a residual.
#[derive(Debug, Clone)]
pub struct CLIPEncoderLayer {
    self_attn: CLIPAttention,
    layer_norm1: LayerNorm,
    mlp: CLIPMLP,
    layer_norm2: LayerNorm,
}

impl CLIPEncoderLayer {
    /// Loads the layer's weights.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        let norm = |name| kairos_kernels::nn::layer_norm(config.hidden_size, config.layer_norm_eps, vb.pp(name));
        Ok(Self {
            self_attn: CLIPAttention::new(vb.pp("self_attn"), config)?,
            layer_norm1: norm("layer_norm1")?,
            mlp: CLIPMLP::new(vb.pp("mlp"), config)?,
            layer_norm2: norm("layer_norm2")?,
        })
    }

    /// [batch, seq, hidden] → [batch, seq, hidden].
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let residual = hidden_states;
        let hidden_states = self.self_attn.forward(&self.layer_norm1.forward(hidden_states)?)?;
        let hidden_states = (residual + hidden_states)?;
        let residual = &hidden_states;
        let mlp_out = self.mlp.forward(&self.layer_norm2.forward(&hidden_states)?)?;
        Ok((residual + mlp_out)?)
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Debug, Clone)]
pub struct CLIPEncoder {
    layers: Vec<CLIPEncoderLayer>,
}

impl CLIPEncoder {
    /// Loads `layers.0` … `layers.{num_hidden_layers - 1}`.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers =
            (0..config.num_hidden_layers).map(|i| CLIPEncoderLayer::new(vb.pp(i), config)).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The input followed by every layer's output: `num_hidden_layers + 1` tensors, as
    /// transformers' `hidden_states`.
    pub fn forward(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(inputs_embeds.clone());
        for layer in &self.layers {
            let last = &hidden_states[hidden_states.len() - 1];
            let next = layer.forward(last)?;
            hidden_states.push(next);
        }
        Ok(hidden_states)
    }
}

/// Outputs of the CLIP text encoders.
#[derive(Debug, Clone)]
pub struct CLIPTextModelOutput {
    /// `final_layer_norm` of the last layer: [batch, seq, hidden]. The prompt embedding of SD1/SD2
    /// without clip skip.
    pub last_hidden_state: Tensor,
    /// `last_hidden_state` at the end-of-text token: [batch, hidden].
    pub pooler_output: Tensor,
    /// The embeddings followed by each layer's output (no final layer norm):
    /// `num_hidden_layers + 1` tensors of [batch, seq, hidden]. SDXL takes `hidden_states[-2]`.
    pub hidden_states: Vec<Tensor>,
}

/// The text transformer under `text_model.` (transformers 4's `CLIPTextTransformer`, transformers
/// 5's `CLIPTextModel` body).
#[derive(Debug, Clone)]
pub struct CLIPTextTransformer {
    embeddings: CLIPTextEmbeddings,
    encoder: CLIPEncoder,
    final_layer_norm: LayerNorm,
    config: CLIPTextConfig,
}

impl CLIPTextTransformer {
    /// Loads `embeddings`, `encoder` and `final_layer_norm` under `vb`.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            embeddings: CLIPTextEmbeddings::new(vb.pp("embeddings"), config)?,
            encoder: CLIPEncoder::new(vb.pp("encoder"), config)?,
            final_layer_norm: kairos_kernels::nn::layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            config: config.clone(),
        })
    }

    /// The config the model was built with.
    pub fn config(&self) -> &CLIPTextConfig {
        &self.config
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.embeddings.token_embedding.embeddings().device()
    }

    /// Runs the encoder with a causal mask. `input_ids`: [batch, seq_len] of u32 or i64, seq_len
    /// at most `max_position_embeddings`.
    ///
    /// The pooled token is, as in transformers, the first `eos_token_id` of each row, or the
    /// first largest id when the config has the legacy `eos_token_id` 2 (every Stable Diffusion
    /// checkpoint; `<|endoftext|>` is the largest id). A row without `eos_token_id` pools
    /// position 0, which is what transformers' `argmax` of an all-false row gives.
    pub fn forward(&self, input_ids: &Tensor) -> Result<CLIPTextModelOutput> {
        let rows = self.check_input_ids(input_ids)?;
        let (batch, seq_len) = (rows.len(), rows[0].len());
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let inputs_embeds = self.embeddings.forward(&input_ids)?;
        let hidden_states = self.encoder.forward(&inputs_embeds)?;
        let last_hidden_state = self.final_layer_norm.forward(&hidden_states[hidden_states.len() - 1])?;

        let pooled_positions: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let position = if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID {
                    first_max_position(row)
                } else {
                    row.iter().position(|&id| id == i64::from(self.config.eos_token_id)).unwrap_or(0)
                };
                // b < batch and position < seq_len ≤ max_position_embeddings, both small.
                (b * seq_len + position) as u32
            })
            .collect();
        let pooled_positions = Tensor::new(pooled_positions, last_hidden_state.device())?;
        let pooler_output = last_hidden_state
            .reshape((batch * seq_len, self.config.hidden_size))?
            .index_select(&pooled_positions, 0)?; // [batch, hidden]
        Ok(CLIPTextModelOutput { last_hidden_state, pooler_output, hidden_states })
    }

    /// A1111's "Clip skip" (`CLIP_stop_at_last_layers`): 1 is the last layer's output
    /// (`last_hidden_state`), 2 the penultimate, …; the chosen layer goes through
    /// `final_layer_norm`. diffusers' `clip_skip` is this minus one (diffusers' 1 = A1111's 2),
    /// ComfyUI's `stop_at_clip_layer` is its negative.
    pub fn clip_skip_hidden_state(&self, output: &CLIPTextModelOutput, clip_skip: usize) -> Result<Tensor> {
        let num_hidden_layers = output.hidden_states.len() - 1;
        if clip_skip == 0 || clip_skip > num_hidden_layers {
            return Err(TextEncoderError::ClipSkipOutOfRange { clip_skip, num_hidden_layers });
        }
        if clip_skip == 1 {
            return Ok(output.last_hidden_state.clone());
        }
        let layer = &output.hidden_states[output.hidden_states.len() - clip_skip];
        Ok(self.final_layer_norm.forward(layer)?)
    }

    /// SDXL's conditioning layer: `hidden_states[-max(clip_skip, 2)]` without the final layer
    /// norm (diffusers' `hidden_states[-(clip_skip + 2)]` with its `clip_skip` counted from 0
    /// is the same layer as A1111's/Forge's "Clip skip" counted from 1; the default, 1, gives
    /// the penultimate layer that SDXL was trained on).
    pub fn sdxl_hidden_state(&self, output: &CLIPTextModelOutput, clip_skip: usize) -> Result<Tensor> {
        let num_hidden_layers = output.hidden_states.len() - 1;
        let from_end = clip_skip.max(2);
        if clip_skip == 0 || from_end > num_hidden_layers {
            return Err(TextEncoderError::ClipSkipOutOfRange { clip_skip, num_hidden_layers });
        }
        Ok(output.hidden_states[output.hidden_states.len() - from_end].clone())
    }

    /// Checks shape, dtype and id range, and returns the ids on the host.
    fn check_input_ids(&self, input_ids: &Tensor) -> Result<Vec<Vec<i64>>> {
        let shape_error = || TextEncoderError::InputIdsShape {
            shape: input_ids.dims().to_vec(),
            dtype: input_ids.dtype(),
            max_position_embeddings: self.config.max_position_embeddings,
        };
        let integer = matches!(input_ids.dtype(), DType::U8 | DType::U32 | DType::I64);
        let (batch, seq_len) = input_ids.dims2().map_err(|_| shape_error())?;
        if !integer || batch == 0 || seq_len == 0 || seq_len > self.config.max_position_embeddings {
            return Err(shape_error());
        }
        let rows = input_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = rows.iter().flatten().find(|&&id| id < 0 || id as u64 >= vocab_size as u64) {
            return Err(TextEncoderError::TokenIdOutOfRange { id, vocab_size });
        }
        Ok(rows)
    }
}

/// Index of the first largest value (torch's `argmax` tie rule). `row` is non-empty
/// (checked by `check_input_ids`).
fn first_max_position(row: &[i64]) -> usize {
    let mut best = 0;
    for (i, &id) in row.iter().enumerate() {
        if id > row[best] {
            best = i;
        }
    }
    best
}

/// `CLIPTextModel`: the text transformer under `text_model.`.
#[derive(Debug, Clone)]
pub struct CLIPTextModel {
    text_model: CLIPTextTransformer,
}

impl CLIPTextModel {
    /// Loads the weights from `vb` at the root of the text encoder's state dict: under
    /// `text_model.` (transformers 4, every Stable Diffusion checkpoint), or at the root itself
    /// when the weights were saved by transformers 5.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        let prefixed = vb.contains_tensor("text_model.embeddings.token_embedding.weight");
        let unprefixed = vb.contains_tensor("embeddings.token_embedding.weight");
        let vb = if unprefixed && !prefixed { vb } else { vb.pp("text_model") };
        Ok(Self { text_model: CLIPTextTransformer::new(vb, config)? })
    }

    /// The text transformer (for `clip_skip_hidden_state` and the config).
    pub fn text_model(&self) -> &CLIPTextTransformer {
        &self.text_model
    }

    /// See [`CLIPTextTransformer::forward`].
    pub fn forward(&self, input_ids: &Tensor) -> Result<CLIPTextModelOutput> {
        self.text_model.forward(input_ids)
    }
}

/// Outputs of [`CLIPTextModelWithProjection`].
#[derive(Debug, Clone)]
pub struct CLIPTextModelWithProjectionOutput {
    /// `text_projection(pooler_output)`: [batch, projection_dim] (SDXL's pooled text embedding).
    pub text_embeds: Tensor,
    /// The text transformer's outputs.
    pub text_outputs: CLIPTextModelOutput,
}

/// `CLIPTextModelWithProjection`: the text transformer plus a bias-free projection of the
/// pooled output (SDXL's `text_encoder_2`).
#[derive(Debug, Clone)]
pub struct CLIPTextModelWithProjection {
    text_model: CLIPTextTransformer,
    text_projection: Linear,
}

impl CLIPTextModelWithProjection {
    /// Loads `text_model.*` and `text_projection.weight`.
    pub fn new(vb: VarBuilder, config: &CLIPTextConfig) -> Result<Self> {
        Ok(Self {
            text_model: CLIPTextTransformer::new(vb.pp("text_model"), config)?,
            text_projection: kairos_kernels::nn::linear_no_bias(
                config.hidden_size,
                config.projection_dim,
                vb.pp("text_projection"),
            )?,
        })
    }

    /// The text transformer (for `clip_skip_hidden_state` and the config).
    pub fn text_model(&self) -> &CLIPTextTransformer {
        &self.text_model
    }

    /// See [`CLIPTextTransformer::forward`]; adds `text_embeds`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<CLIPTextModelWithProjectionOutput> {
        let text_outputs = self.text_model.forward(input_ids)?;
        let text_embeds = self.project(&text_outputs.pooler_output)?;
        Ok(CLIPTextModelWithProjectionOutput { text_embeds, text_outputs })
    }

    /// `text_projection` of a pooled output `[batch, hidden]` → `[batch, projection_dim]`.
    pub fn project(&self, pooler_output: &Tensor) -> Result<Tensor> {
        Ok(self.text_projection.forward(pooler_output)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_rejections() {
        let config = CLIPTextConfig::from_json("{}").unwrap();
        assert_eq!(config.hidden_act, HiddenAct::QuickGelu);
        assert_eq!(config.vocab_size, 49408);
        let err = CLIPTextConfig::from_json(r#"{"hidden_act": "relu"}"#).unwrap_err().to_string();
        assert!(err.contains("quick_gelu") && err.contains("gelu"), "{err}");
        let err = CLIPTextConfig::from_json(r#"{"hidden_size": 10, "num_attention_heads": 3}"#).unwrap_err();
        assert!(matches!(err, TextEncoderError::UnsupportedConfig { field: "num_attention_heads", .. }), "{err}");
    }

    #[test]
    fn first_max_position_takes_first_tie() {
        assert_eq!(first_max_position(&[5, 9, 3, 9, 9]), 1);
        assert_eq!(first_max_position(&[0]), 0);
    }
}
