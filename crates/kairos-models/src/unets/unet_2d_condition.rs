//! Mirrors diffusers 0.42.1 `models/unets/unet_2d_condition.py`: `UNet2DConditionModel` and its
//! config, deserialized directly from diffusers' `unet/config.json`.
//!
//! Differences:
//! - Supported: the SD1.x/SD2.x and SDXL families (block types `CrossAttnDownBlock2D`,
//!   `DownBlock2D`, `UNetMidBlock2DCrossAttn` or no mid block, `CrossAttnUpBlock2D`,
//!   `UpBlock2D`; positional time embedding; per-block or global `attention_head_dim`,
//!   `cross_attention_dim`, `layers_per_block`, `transformer_layers_per_block`; linear or conv
//!   projections; `upcast_attention`; `time_cond_proj_dim` (LCM); SDXL's `text_time` addition
//!   embedding; `time_embedding_act_fn`, `timestep_post_act`, `center_input_sample`,
//!   `conv_in_kernel`/`conv_out_kernel`). Everything else (class embeddings, other addition
//!   embeddings, encoder hidden projections, Fourier time embedding, GLIGEN,
//!   `only_cross_attention`, dual cross-attention, cross-attention norms) is rejected at load
//!   with [`ModelError::Unsupported`].
//! - As in diffusers, `resnet_skip_time_act` and `resnet_out_scale_factor` do not reach these
//!   block types; they are accepted and have no effect.
//! - `forward` takes no masks or ControlNet/T2I residuals, `added_cond_kwargs` as the typed
//!   [`AddedCond`], and returns the tensor rather than an output dataclass.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};
use kairos_kernels::nn::{Conv2d, GroupNorm};
use serde::Deserialize;

use crate::activations::Activation;
use crate::embeddings::{TimestepEmbedding, Timesteps};
use crate::error::{ModelError, Result};
use crate::resnet::{ResnetBlock2DConfig, TimeEmbeddingNorm};
use crate::unets::unet_2d_blocks::{
    CrossAttnArgs, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
};

/// A config value given either once for all blocks or once per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    All(T),
    /// One value per down block (in down-block order).
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks, checking a per-block list has length `n`.
    pub fn per_block(&self, field: &'static str, n: usize) -> Result<Vec<T>> {
        match self {
            Self::All(v) => Ok(vec![v.clone(); n]),
            Self::Each(vs) if vs.len() == n => Ok(vs.clone()),
            Self::Each(vs) => Err(ModelError::InvalidConfig {
                field,
                reason: format!("has {} entries but there are {n} down blocks", vs.len()),
            }),
        }
    }
}

/// `UNet2DConditionModel`'s `config.json`. Field names and defaults are diffusers'; keys this
/// struct does not name (e.g. `_class_name`) land in `extra`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionModelConfig {
    /// Latent size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<PerBlock<usize>>,
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Map the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Order the sinusoidal embedding `[cos, sin]`.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block class names.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// Mid block class name; `null` means no mid block.
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// Up block class names.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Must be false.
    #[serde(default = "no_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    /// Output channels of each down block.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// `output_scale_factor` of the mid block's resnets.
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    /// Training dropout (ignored).
    #[serde(default)]
    pub dropout: f64,
    /// Activation of resnets, time embedding and output.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Groups of every GroupNorm; must be set.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    /// Epsilon of the resnets' and output GroupNorms.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Channels of `encoder_hidden_states`.
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    /// `BasicTransformerBlock`s per `Transformer2DModel`.
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Must be null.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Must be null.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// The number of attention heads per block, despite its name (diffusers issue #2011).
    #[serde(default = "eight_per_block")]
    pub attention_head_dim: PerBlock<usize>,
    /// Must be null: diffusers itself rejects it.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Must be false.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Linear `proj_in`/`proj_out` in the transformers (SD2).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Must be null.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Null, or `text_time` (SDXL: pooled text embedding and size/crop/aesthetic ids).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL's time-id embedding width (256; required with `text_time`).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Must be null.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Upcast `q·kᵀ` (SD2.1-v).
    #[serde(default)]
    pub upcast_attention: bool,
    /// `default` or `scale_shift`.
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    /// No effect on the supported block types (as in diffusers).
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// No effect on the supported block types (as in diffusers).
    #[serde(default = "one_f64")]
    pub resnet_out_scale_factor: f64,
    /// Must be `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding; default `4 * block_out_channels[0]`.
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Activation applied to the time embedding before the blocks.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Activation at the end of `time_embedding`.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Width of the guidance-scale embedding of LCM-distilled UNets (`timestep_cond`).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in` (odd).
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Input width of `add_embedding` with `text_time`: pooled text width + time ids ×
    /// `addition_time_embed_dim` (SDXL base 2816 = 1280 + 6·256, refiner 2560 = 1280 + 5·256).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Must be `default`.
    #[serde(default = "default_str")]
    pub attention_type: String,
    /// Must be false.
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Not used by `UNetMidBlock2DCrossAttn` (as in diffusers).
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Must be null.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Only used with `addition_embed_type`.
    #[serde(default = "sixty_four")]
    pub addition_embed_type_num_heads: usize,
    /// Keys not named above (`_class_name`, `_diffusers_version`, future fields).
    #[serde(flatten)]
    pub extra: HashMap<String, serde_json::Value>,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn sixty_four() -> usize {
    64
}
fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn default_str() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn default_down_block_types() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_up_block_types() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn no_per_block() -> PerBlock<bool> {
    PerBlock::All(false)
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn two_per_block() -> PerBlock<usize> {
    PerBlock::All(2)
}
fn one_per_block() -> PerBlock<usize> {
    PerBlock::All(1)
}
fn eight_per_block() -> PerBlock<usize> {
    PerBlock::All(8)
}
fn default_norm_num_groups() -> Option<usize> {
    Some(32)
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> PerBlock<usize> {
    PerBlock::All(1280)
}

impl UNet2DConditionModelConfig {
    /// Parses diffusers' `unet/config.json` text.
    pub fn from_json(json: &str) -> Result<Self> {
        Ok(serde_json::from_str(json)?)
    }

    /// Rejects the diffusers options this implementation does not support.
    fn check_supported(&self) -> Result<()> {
        fn unsupported(field: &'static str, value: impl std::fmt::Debug, supported: &'static str) -> Result<()> {
            Err(ModelError::Unsupported { field, value: format!("{value:?}"), supported })
        }
        match (
            self.addition_embed_type.as_deref(),
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) {
            (None, _, None) | (Some("text_time"), Some(_), Some(_)) => {}
            (None, _, Some(v)) => {
                return unsupported("projection_class_embeddings_input_dim", v, "null without addition_embed_type")
            }
            (Some("text_time"), _, _) => {
                return Err(ModelError::InvalidConfig {
                    field: "addition_embed_type",
                    reason: "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim".into(),
                })
            }
            (Some(v), _, _) => return unsupported("addition_embed_type", v, "null, text_time (SDXL)"),
        }
        if let Some(v) = &self.class_embed_type {
            return unsupported("class_embed_type", v, "null");
        }
        if let Some(v) = self.num_class_embeds {
            return unsupported("num_class_embeds", v, "null");
        }
        if self.class_embeddings_concat {
            return unsupported("class_embeddings_concat", true, "false");
        }
        if let Some(v) = &self.encoder_hid_dim_type {
            return unsupported("encoder_hid_dim_type", v, "null");
        }
        if let Some(v) = self.encoder_hid_dim {
            return unsupported("encoder_hid_dim", v, "null");
        }
        if let Some(v) = &self.num_attention_heads {
            return unsupported("num_attention_heads", v, "null (diffusers uses attention_head_dim)");
        }
        if let Some(v) = &self.reverse_transformer_layers_per_block {
            return unsupported("reverse_transformer_layers_per_block", v, "null");
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", true, "false");
        }
        let only_cross = match &self.only_cross_attention {
            PerBlock::All(b) => *b,
            PerBlock::Each(v) => v.iter().any(|b| *b),
        };
        if only_cross {
            return unsupported("only_cross_attention", &self.only_cross_attention, "false");
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type, "positional");
        }
        if self.attention_type != "default" {
            return unsupported("attention_type", &self.attention_type, "default");
        }
        if let Some(v) = &self.cross_attention_norm {
            return unsupported("cross_attention_norm", v, "null");
        }
        if self.norm_num_groups.is_none() {
            return unsupported("norm_num_groups", "null", "an integer");
        }
        if let Some(v) = &self.mid_block_type {
            if v != "UNetMidBlock2DCrossAttn" {
                return unsupported("mid_block_type", v, "UNetMidBlock2DCrossAttn, null");
            }
        }
        for (field, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k % 2 == 0 {
                return Err(ModelError::InvalidConfig { field, reason: format!("kernel {k} is not odd") });
            }
        }
        Ok(())
    }
}

/// The timestep argument of [`UNet2DConditionModel::forward`]: one value for the whole batch
/// (diffusers' Python number) or a tensor of shape `[]`, `[1]` or `[N]`.
#[derive(Debug, Clone, Copy)]
pub enum Timestep<'a> {
    /// One (possibly fractional) timestep for every sample.
    Scalar(f64),
    /// Per-sample timesteps.
    Tensor(&'a Tensor),
}

impl From<f64> for Timestep<'_> {
    fn from(t: f64) -> Self {
        Self::Scalar(t)
    }
}

impl<'a> From<&'a Tensor> for Timestep<'a> {
    fn from(t: &'a Tensor) -> Self {
        Self::Tensor(t)
    }
}

/// SDXL's `added_cond_kwargs` for the `text_time` addition embedding.
#[derive(Debug, Clone, Copy)]
pub struct AddedCond<'a> {
    /// The pooled text embedding `[N, P]` (SDXL: `text_encoder_2`'s projected output).
    pub text_embeds: &'a Tensor,
    /// Size and crop conditioning `[N, k]`: base (orig h, orig w, crop top, crop left, target
    /// h, target w), refiner (orig h, orig w, crop top, crop left, aesthetic score).
    pub time_ids: &'a Tensor,
}

/// `add_time_proj` + `add_embedding` of a `text_time` UNet.
#[derive(Debug, Clone)]
struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    input_dim: usize,
}

impl TextTimeEmbedding {
    /// diffusers' `get_aug_embed` for `text_time`: the time ids each through the sinusoidal
    /// projection, flattened per sample, after the pooled text, then `add_embedding`.
    fn forward(&self, added: &AddedCond, batch: usize, dtype: DType) -> Result<Tensor> {
        let (text_embeds, time_ids) = (added.text_embeds, added.time_ids);
        let ids = time_ids.dims();
        let width = text_embeds.dims().get(1).copied().unwrap_or(0)
            + ids.get(1).copied().unwrap_or(0) * self.time_proj.num_channels();
        if text_embeds.rank() != 2
            || time_ids.rank() != 2
            || text_embeds.dim(0)? != batch
            || ids[0] != batch
            || width != self.input_dim
        {
            return Err(ModelError::BadInput {
                name: "added_cond",
                expected: format!(
                    "text_embeds [{batch}, P] and time_ids [{batch}, k] with P + k·{} = {}",
                    self.time_proj.num_channels(),
                    self.input_dim
                ),
                got: [text_embeds.dims(), ids].concat(),
            });
        }
        let time_embeds =
            self.time_proj.forward(&time_ids.flatten_all()?.to_dtype(DType::F32)?)?.reshape((batch, ()))?;
        let add_embeds = Tensor::cat(&[&text_embeds.to_dtype(DType::F32)?, &time_embeds], 1)?.to_dtype(dtype)?;
        self.embedding.forward(&add_embeds, None)
    }
}

#[derive(Debug, Clone)]
enum DownBlock {
    CrossAttn(CrossAttnDownBlock2D),
    Plain(DownBlock2D),
}

#[derive(Debug, Clone)]
enum UpBlock {
    CrossAttn(CrossAttnUpBlock2D),
    Plain(UpBlock2D),
}

impl UpBlock {
    fn num_resnets(&self) -> usize {
        match self {
            Self::CrossAttn(b) => b.num_resnets(),
            Self::Plain(b) => b.num_resnets(),
        }
    }
}

/// `UNet2DConditionModel`: the SD1.x/SD2.x denoising UNet.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<UNetMidBlock2DCrossAttn>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
    center_input_sample: bool,
    num_upsamplers: usize,
    config: UNet2DConditionModelConfig,
}

fn conv(vb: VarBuilder, in_c: usize, out_c: usize, kernel: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig { padding: (kernel - 1) / 2, ..Default::default() };
    Ok(kairos_kernels::nn::conv2d(in_c, out_c, kernel, cfg, vb)?)
}

impl UNet2DConditionModel {
    /// Builds the model from its config with weights under `vb` (diffusers state-dict keys at
    /// the root, e.g. `conv_in.weight`).
    pub fn new(vb: VarBuilder, config: &UNet2DConditionModelConfig) -> Result<Self> {
        config.check_supported()?;
        let n = config.down_block_types.len();
        if config.up_block_types.len() != n || config.block_out_channels.len() != n || n == 0 {
            return Err(ModelError::InvalidConfig {
                field: "down_block_types",
                reason: format!(
                    "down_block_types ({n}), up_block_types ({}) and block_out_channels ({}) must have the same non-zero length",
                    config.up_block_types.len(),
                    config.block_out_channels.len()
                ),
            });
        }
        let act = Activation::from_name("act_fn", &config.act_fn)?;
        let groups = config.norm_num_groups.unwrap_or(32); // checked Some in check_supported
        let channels = &config.block_out_channels;
        // diffusers: "num_attention_heads = num_attention_heads or attention_head_dim"
        let heads = config.attention_head_dim.per_block("attention_head_dim", n)?;
        let cross_dims = config.cross_attention_dim.per_block("cross_attention_dim", n)?;
        let layers = config.layers_per_block.per_block("layers_per_block", n)?;
        let tlayers = config.transformer_layers_per_block.per_block("transformer_layers_per_block", n)?;

        let conv_in = conv(vb.pp("conv_in"), config.in_channels, channels[0], config.conv_in_kernel)?;
        let time_embed_dim = config.time_embedding_dim.unwrap_or(4 * channels[0]);
        let time_proj = Timesteps::new(channels[0], config.flip_sin_to_cos, config.freq_shift);
        let post_act =
            config.timestep_post_act.as_deref().map(|a| Activation::from_name("timestep_post_act", a)).transpose()?;
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            channels[0],
            time_embed_dim,
            act,
            None,
            post_act,
            config.time_cond_proj_dim,
        )?;
        // diffusers builds `add_embedding` as `TimestepEmbedding(in, time_embed_dim)`: SiLU
        // whatever `act_fn` says.
        let add_embedding = match (config.addition_time_embed_dim, config.projection_class_embeddings_input_dim) {
            (Some(dim), Some(input_dim)) => Some(TextTimeEmbedding {
                time_proj: Timesteps::new(dim, config.flip_sin_to_cos, config.freq_shift),
                embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    input_dim,
                    time_embed_dim,
                    Activation::Silu,
                    None,
                    None,
                    None,
                )?,
                input_dim,
            }),
            _ => None,
        };
        let time_embed_act = config
            .time_embedding_act_fn
            .as_deref()
            .map(|a| Activation::from_name("time_embedding_act_fn", a))
            .transpose()?;

        let resnet = ResnetBlock2DConfig {
            temb_channels: Some(time_embed_dim),
            groups,
            eps: config.norm_eps,
            non_linearity: act,
            time_embedding_norm: TimeEmbeddingNorm::from_name(
                "resnet_time_scale_shift",
                &config.resnet_time_scale_shift,
            )?,
            ..Default::default()
        };
        let attn = |i: usize| CrossAttnArgs {
            num_attention_heads: heads[i],
            transformer_layers_per_block: tlayers[i],
            cross_attention_dim: cross_dims[i],
            use_linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut output_channel = channels[0];
        for (i, block_type) in config.down_block_types.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = channels[i];
            let add_downsample = (i != n - 1).then_some(config.downsample_padding);
            let vb = vb.pp("down_blocks").pp(i);
            down_blocks.push(match block_type.as_str() {
                "CrossAttnDownBlock2D" => DownBlock::CrossAttn(CrossAttnDownBlock2D::new(
                    vb,
                    input_channel,
                    output_channel,
                    layers[i],
                    &resnet,
                    &attn(i),
                    add_downsample,
                )?),
                "DownBlock2D" => DownBlock::Plain(DownBlock2D::new(
                    vb,
                    input_channel,
                    output_channel,
                    layers[i],
                    &resnet,
                    add_downsample,
                )?),
                other => {
                    return Err(ModelError::Unsupported {
                        field: "down_block_types",
                        value: other.to_string(),
                        supported: "CrossAttnDownBlock2D, DownBlock2D",
                    })
                }
            });
        }

        let mid_block = match config.mid_block_type {
            Some(_) => {
                let mid_resnet =
                    ResnetBlock2DConfig { output_scale_factor: config.mid_block_scale_factor, ..resnet.clone() };
                // The mid block's transformer depth is the last block's (SDXL: 10).
                Some(UNetMidBlock2DCrossAttn::new(vb.pp("mid_block"), channels[n - 1], 1, &mid_resnet, &attn(n - 1))?)
            }
            None => None,
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut num_upsamplers = 0;
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut output_channel = reversed[0];
        for (i, block_type) in config.up_block_types.iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = reversed[i];
            let input_channel = reversed[(i + 1).min(n - 1)];
            let add_upsample = i != n - 1;
            num_upsamplers += usize::from(add_upsample);
            let r = n - 1 - i; // the down block this up block mirrors
            let vb = vb.pp("up_blocks").pp(i);
            up_blocks.push(match block_type.as_str() {
                "CrossAttnUpBlock2D" => UpBlock::CrossAttn(CrossAttnUpBlock2D::new(
                    vb,
                    input_channel,
                    prev_output_channel,
                    output_channel,
                    layers[r] + 1,
                    &resnet,
                    &attn(r),
                    add_upsample,
                )?),
                "UpBlock2D" => UpBlock::Plain(UpBlock2D::new(
                    vb,
                    input_channel,
                    prev_output_channel,
                    output_channel,
                    layers[r] + 1,
                    &resnet,
                    add_upsample,
                )?),
                other => {
                    return Err(ModelError::Unsupported {
                        field: "up_block_types",
                        value: other.to_string(),
                        supported: "CrossAttnUpBlock2D, UpBlock2D",
                    })
                }
            });
        }

        let conv_norm_out =
            kairos_kernels::nn::group_norm(groups, channels[0], config.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv(vb.pp("conv_out"), channels[0], config.out_channels, config.conv_out_kernel)?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            add_embedding,
            time_embed_act,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_act: act,
            conv_out,
            center_input_sample: config.center_input_sample,
            num_upsamplers,
            config: config.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2DConditionModelConfig {
        &self.config
    }

    /// The number of time ids `forward` needs in [`AddedCond`] (`text_time` UNets: 6 for the
    /// SDXL base, 5 for the refiner), from the embedding's input width and `pooled_dim`.
    pub fn added_cond_width(&self) -> Option<usize> {
        self.add_embedding.as_ref().map(|a| a.input_dim)
    }

    /// Whether `forward` needs a `timestep_cond` (LCM-distilled UNets have `time_cond_proj_dim`).
    pub fn takes_timestep_cond(&self) -> bool {
        self.config.time_cond_proj_dim.is_some()
    }

    /// The sinusoidal embedding of the timestep(s), broadcast to the batch: f32 `[N, C0]`, then
    /// cast to `dtype`.
    fn get_time_embed(&self, batch: usize, timestep: Timestep, dtype: DType, sample: &Tensor) -> Result<Tensor> {
        let timesteps = match timestep {
            // diffusers builds a float64 tensor; get_timestep_embedding casts it to float32.
            Timestep::Scalar(t) => Tensor::new(&[t], sample.device())?,
            Timestep::Tensor(t) => match t.rank() {
                0 => t.unsqueeze(0)?,
                1 => t.clone(),
                _ => {
                    return Err(ModelError::BadInput {
                        name: "timestep",
                        expected: "a scalar, [1] or [N] tensor".into(),
                        got: t.dims().to_vec(),
                    })
                }
            },
        };
        let timesteps = match timesteps.dim(0)? {
            1 => timesteps.broadcast_as(batch)?.contiguous()?,
            n if n == batch => timesteps,
            _ => {
                return Err(ModelError::BadInput {
                    name: "timestep",
                    expected: format!("1 or {batch} timesteps"),
                    got: timesteps.dims().to_vec(),
                })
            }
        };
        Ok(self.time_proj.forward(&timesteps)?.to_dtype(dtype)?)
    }

    /// Predicts the model output (eps or v) for `sample` `[N, in_channels, H, W]` at `timestep`,
    /// conditioned on `encoder_hidden_states` `[N, S, cross_attention_dim]`; `timestep_cond`
    /// `[N, time_cond_proj_dim]` is the guidance embedding of LCM-distilled models, `added` the
    /// pooled text and time ids a `text_time` (SDXL) UNet requires.
    pub fn forward<'a>(
        &self,
        sample: &Tensor,
        timestep: impl Into<Timestep<'a>>,
        encoder_hidden_states: &Tensor,
        timestep_cond: Option<&Tensor>,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        let (batch, channels, height, width) = sample.dims4()?;
        if channels != self.config.in_channels {
            return Err(ModelError::BadInput {
                name: "sample",
                expected: format!("[N, {}, H, W]", self.config.in_channels),
                got: sample.dims().to_vec(),
            });
        }
        // Upsamplers must be told the skip connections' size when H or W is not a multiple of
        // 2^num_upsamplers (diffusers' forward_upsample_size).
        let factor = 1usize << self.num_upsamplers;
        let forward_upsample_size = height % factor != 0 || width % factor != 0;

        let sample = if self.center_input_sample { sample.affine(2.0, -1.0)? } else { sample.clone() };

        let t_emb = self.get_time_embed(batch, timestep.into(), sample.dtype(), &sample)?;
        let mut emb = self.time_embedding.forward(&t_emb, timestep_cond)?;
        match (&self.add_embedding, added) {
            (Some(embedding), Some(added)) => emb = (emb + embedding.forward(added, batch, sample.dtype())?)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(ModelError::BadInput {
                    name: "added_cond",
                    expected: "text_embeds and time_ids: this is a text_time (SDXL) UNet".into(),
                    got: vec![],
                })
            }
            (None, Some(_)) => {
                return Err(ModelError::BadInput {
                    name: "added_cond",
                    expected: "none: this UNet has no addition embedding".into(),
                    got: vec![],
                })
            }
        }
        if let Some(act) = &self.time_embed_act {
            emb = act.forward(&emb)?;
        }
        let emb = Some(&emb);

        let mut sample = self.conv_in.forward(&sample)?;
        let mut down_block_res_samples = vec![sample.clone()];
        for block in &self.down_blocks {
            let (out, res_samples) = match block {
                DownBlock::CrossAttn(b) => b.forward(&sample, emb, encoder_hidden_states)?,
                DownBlock::Plain(b) => b.forward(&sample, emb)?,
            };
            sample = out;
            down_block_res_samples.extend(res_samples);
        }

        if let Some(mid) = &self.mid_block {
            sample = mid.forward(&sample, emb, encoder_hidden_states)?;
        }

        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let split = down_block_res_samples.len().checked_sub(block.num_resnets()).ok_or_else(|| {
                ModelError::InvalidConfig {
                    field: "layers_per_block",
                    reason: "up blocks consume more skip connections than down blocks produce".into(),
                }
            })?;
            let res_samples = down_block_res_samples.split_off(split);
            let upsample_size = match down_block_res_samples.last() {
                Some(next) if i != last && forward_upsample_size => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            sample = match block {
                UpBlock::CrossAttn(b) => b.forward(&sample, &res_samples, emb, encoder_hidden_states, upsample_size)?,
                UpBlock::Plain(b) => b.forward(&sample, &res_samples, emb, upsample_size)?,
            };
        }

        let sample = crate::resnet::norm_act(&self.conv_norm_out, self.conv_act, &sample)?;
        Ok(self.conv_out.forward(&sample)?)
    }
}
