//! Mirrors diffusers 0.42.1 `models/transformers/transformer_2d.py`: `Transformer2DModel` for
//! continuous inputs (the spatial transformer of SD1.x/SD2.x UNets).
//!
//! Differences:
//! - Only continuous inputs (`in_channels` set, no `patch_size`, no `num_vector_embeds`) with
//!   `norm_type="layer_norm"`; `proj_in`/`proj_out` as 1×1 convolutions (SD1) or linear layers
//!   (`use_linear_projection`, SD2). Attention masks, `only_cross_attention` and
//!   `double_self_attention` are absent.
//! - `forward` returns the tensor rather than an output dataclass.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use kairos_kernels::nn::{Conv2d, GroupNorm, Linear};

use crate::attention::{BasicTransformerBlock, BasicTransformerBlockConfig};
use crate::error::Result;

/// Constructor arguments of `Transformer2DModel` that SD UNets set.
#[derive(Debug, Clone)]
pub struct Transformer2DModelConfig {
    /// Heads of every attention.
    pub num_attention_heads: usize,
    /// Channels per head; `num_attention_heads * attention_head_dim` is the inner width.
    pub attention_head_dim: usize,
    /// Channels of the input feature map (and of the output).
    pub in_channels: usize,
    /// Number of `BasicTransformerBlock`s.
    pub num_layers: usize,
    /// Groups of the input `norm`.
    pub norm_num_groups: usize,
    /// Channels of `encoder_hidden_states`.
    pub cross_attention_dim: usize,
    /// Linear `proj_in`/`proj_out` (SD2) instead of 1×1 convolutions (SD1).
    pub use_linear_projection: bool,
    /// Upcast `q·kᵀ` (SD2.1-v).
    pub upcast_attention: bool,
}

/// `proj_in`/`proj_out`: a 1×1 convolution on `[N, C, H, W]` or a linear layer on `[N, H·W, C]`.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, linear: bool, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(if linear {
            Self::Linear(kairos_kernels::nn::linear(in_dim, out_dim, vb)?)
        } else {
            Self::Conv(kairos_kernels::nn::conv2d(in_dim, out_dim, 1, Default::default(), vb)?)
        })
    }

    /// The map `[N, C, H, W]` to projected tokens `[N, H·W, C']` (no permute pass where a fused
    /// kernel runs the layer).
    fn map_to_tokens(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Conv(conv) => conv.forward_tokens(xs)?,
            Self::Linear(linear) => linear.forward_tokens(xs)?,
        })
    }

    /// Tokens `[N, H·W, C']` projected back onto `residual`'s map `[N, C, H, W]`, plus it.
    fn tokens_to_map(&self, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Conv(conv) => conv.forward_from_tokens(tokens, residual)?,
            Self::Linear(linear) => linear.forward_from_tokens(tokens, residual)?,
        })
    }
}

/// `Transformer2DModel`: GroupNorm, `proj_in`, transformer blocks over the `H·W` tokens,
/// `proj_out`, plus the input as residual.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Builds the model under `vb` (e.g. `down_blocks.0.attentions.1`).
    pub fn new(vb: VarBuilder, config: &Transformer2DModelConfig) -> Result<Self> {
        let inner_dim = config.num_attention_heads * config.attention_head_dim;
        let linear = config.use_linear_projection;
        // diffusers fixes this GroupNorm's eps at 1e-6, whatever the UNet's norm_eps.
        let norm = kairos_kernels::nn::group_norm(config.norm_num_groups, config.in_channels, 1e-6, vb.pp("norm"))?;
        let proj_in = Projection::new(vb.pp("proj_in"), linear, config.in_channels, inner_dim)?;
        let block = BasicTransformerBlockConfig {
            dim: inner_dim,
            num_attention_heads: config.num_attention_heads,
            attention_head_dim: config.attention_head_dim,
            cross_attention_dim: config.cross_attention_dim,
            attention_bias: false,
            upcast_attention: config.upcast_attention,
            norm_eps: 1e-5,
        };
        let transformer_blocks = (0..config.num_layers)
            .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), &block))
            .collect::<Result<Vec<_>>>()?;
        let proj_out = Projection::new(vb.pp("proj_out"), linear, inner_dim, config.in_channels)?;
        Ok(Self { norm, proj_in, transformer_blocks, proj_out })
    }

    /// `hidden_states` `[N, C, H, W]`, `encoder_hidden_states` `[N, S, cross_attention_dim]`
    /// → `[N, C, H, W]`.
    pub fn forward(&self, hidden_states: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let residual = hidden_states;
        let hidden_states = self.norm.forward(hidden_states)?;
        // proj_in and proj_out are the same matrix products whether diffusers applies them as
        // 1×1 convolutions on the map or as linear layers on the tokens: the fused kernels read
        // and write the map in place instead of permuting it, and add the residual as they write.
        let mut hidden_states = self.proj_in.map_to_tokens(&hidden_states)?;
        for block in &self.transformer_blocks {
            hidden_states = block.forward(&hidden_states, encoder_hidden_states)?;
        }
        self.proj_out.tokens_to_map(&hidden_states, residual)
    }
}
