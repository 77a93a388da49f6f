//! Mirrors diffusers 0.42.1 `models/attention.py`: `BasicTransformerBlock` and `FeedForward`.
//!
//! Differences:
//! - Only the configuration SD1.x/SD2.x UNets use: `norm_type="layer_norm"` with affine norms,
//!   self-attention `attn1`, cross-attention `attn2`, a GEGLU feed-forward. Absent: ada-norm
//!   variants, `only_cross_attention`, `double_self_attention`, positional embeddings, GLIGEN,
//!   chunked feed-forward, other activations, attention masks.
//! - Dropout is omitted (inference only).

use candle_core::Tensor;
use candle_nn::{LayerNormConfig, Module, VarBuilder};
use kairos_kernels::nn::{LayerNorm, Linear, Tokens};

use crate::activations::GEGLU;
use crate::attention_processor::{Attention, AttentionConfig};
use crate::error::Result;

/// `FeedForward` with `activation_fn="geglu"`: `net.0` (GEGLU to `dim * mult`), `net.2` (linear).
#[derive(Debug, Clone)]
pub struct FeedForward {
    geglu: GEGLU,
    proj_out: Linear,
}

impl FeedForward {
    /// Builds `net.0.proj` and `net.2` under `vb`, inner width `dim * mult` (diffusers: mult 4).
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner_dim = dim * mult;
        let geglu = GEGLU::new(vb.pp("net.0"), dim, inner_dim)?;
        let proj_out = kairos_kernels::nn::linear(inner_dim, dim, vb.pp("net.2"))?;
        Ok(Self { geglu, proj_out })
    }

    /// `[N, L, dim]` → `[N, L, dim]`.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        Ok(self.proj_out.forward(&self.geglu.forward(hidden_states)?)?)
    }

    /// `forward(hidden_states) + residual` on a LayerNorm's output (packed where
    /// [`Self::reads_packed`]), the add folded into `net.2` where a fused kernel runs it.
    pub fn forward_normed_residual(&self, hidden_states: &Tokens, residual: &Tensor) -> Result<Tensor> {
        // A bf16 `net.2` reads the gated tokens packed as the GEGLU gates them.
        let gated = self.geglu.forward_from(hidden_states, self.proj_out.runs_bf16())?;
        Ok(self.proj_out.forward_residual_from(&gated, residual)?)
    }

    /// Whether the LayerNorm before should pack its tokens for `net.0` (a bf16 GEMM).
    pub fn reads_packed(&self) -> bool {
        self.geglu.reads_packed()
    }
}

/// Constructor arguments of `BasicTransformerBlock` that SD UNets set.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlockConfig {
    /// Channels of the token stream.
    pub dim: usize,
    /// Heads of both attentions.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Channels of `encoder_hidden_states`.
    pub cross_attention_dim: usize,
    /// Whether `to_q/k/v` have biases (`attention_bias`).
    pub attention_bias: bool,
    /// Upcast `q·kᵀ` (SD2.1-v).
    pub upcast_attention: bool,
    /// Epsilon of the three layer norms.
    pub norm_eps: f64,
}

/// `BasicTransformerBlock`: pre-norm self-attention, cross-attention and GEGLU feed-forward,
/// each added back to the stream.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Builds the block under `vb` (e.g. `...attentions.0.transformer_blocks.0`).
    pub fn new(vb: VarBuilder, config: &BasicTransformerBlockConfig) -> Result<Self> {
        let dim = config.dim;
        let norm_cfg = LayerNormConfig { eps: config.norm_eps, ..Default::default() };
        let attention = AttentionConfig {
            heads: config.num_attention_heads,
            dim_head: config.attention_head_dim,
            bias: config.attention_bias,
            upcast_attention: config.upcast_attention,
            ..AttentionConfig::new(dim)
        };
        let cross_attention =
            AttentionConfig { cross_attention_dim: Some(config.cross_attention_dim), ..attention.clone() };
        Ok(Self {
            norm1: kairos_kernels::nn::layer_norm(dim, norm_cfg, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), &attention)?,
            norm2: kairos_kernels::nn::layer_norm(dim, norm_cfg, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), &cross_attention)?,
            norm3: kairos_kernels::nn::layer_norm(dim, norm_cfg, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim, 4)?,
        })
    }

    /// `hidden_states` `[N, L, dim]`, `encoder_hidden_states` `[N, S, cross_attention_dim]`
    /// → `[N, L, dim]`.
    pub fn forward(&self, hidden_states: &Tensor, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        // Each residual add is folded into the output projection where a fused kernel runs it;
        // bf16 projections read their LayerNorm's tokens packed for the GEMM, not as f32 tokens.
        let norm_hidden_states = self.norm1.forward_normed(hidden_states, self.attn1.reads_packed())?;
        let hidden_states = self.attn1.forward_normed_residual(&norm_hidden_states, None, hidden_states)?;
        let norm_hidden_states = self.norm2.forward_normed(&hidden_states, self.attn2.reads_packed())?;
        let hidden_states =
            self.attn2.forward_normed_residual(&norm_hidden_states, Some(encoder_hidden_states), &hidden_states)?;
        let norm_hidden_states = self.norm3.forward_normed(&hidden_states, self.ff.reads_packed())?;
        self.ff.forward_normed_residual(&norm_hidden_states, &hidden_states)
    }
}
