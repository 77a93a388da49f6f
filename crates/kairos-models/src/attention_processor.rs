//! Mirrors diffusers 0.42.1 `models/attention_processor.py`: the `Attention` module with the
//! computation of `AttnProcessor2_0` (the processor diffusers selects on torch 2).
//!
//! Differences:
//! - Only the options SD1.x/SD2.x UNets and VAEs use: cross-attention, `heads`/`dim_head`,
//!   q/k/v `bias`, `out_bias`, `upcast_attention`/`upcast_softmax`, the input `group_norm`
//!   (`norm_num_groups`, VAE), `residual_connection` and `rescale_output_factor`. Absent:
//!   `kv_heads`, `qk_norm`, `cross_attention_norm`, `added_kv_proj_dim`, `spatial_norm_dim`,
//!   `out_dim`, `context_pre_only`, attention masks, processors other than the default.
//! - The attention itself is [`kairos_kernels::attention_heads`], which reads the heads where the
//!   projections put them (`[N, L, heads·d]`) instead of splitting them out into copies; only the
//!   upcast of reduced-precision attention takes [`scaled_dot_product_attention`]. Around bf16
//!   projections (a bf16 model on the CPU) it is [`kairos_kernels::attention_heads_bf16`], bf16
//!   operands with f32 sums and an f32 softmax (so an upcast softmax, the VAE's, is honoured),
//!   unless the model upcasts `q·kᵀ` (`upcast_attention`, SD2.1-v).
//! - Dropout is omitted (inference only).

use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};
use kairos_kernels::nn::{GroupNorm, Linear, Tokens};

use crate::error::{ModelError, Result};

/// Constructor arguments of `Attention`, with diffusers' defaults (see [`AttentionConfig::new`]).
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Channels of the query input.
    pub query_dim: usize,
    /// Channels of `encoder_hidden_states`; `None` means self-attention (`query_dim`).
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head; `to_q` maps `query_dim` to `heads * dim_head`.
    pub dim_head: usize,
    /// Whether `to_q`, `to_k`, `to_v` have a bias.
    pub bias: bool,
    /// Compute `q·kᵀ` in f32 (SD2.1-v sets it; no effect on f32 weights).
    pub upcast_attention: bool,
    /// Compute the softmax in f32 (no effect on f32 weights).
    pub upcast_softmax: bool,
    /// Groups of the `group_norm` applied to the input; `None` means no norm.
    pub norm_num_groups: Option<usize>,
    /// Epsilon of `group_norm`.
    pub eps: f64,
    /// Whether `to_out.0` has a bias.
    pub out_bias: bool,
    /// Add the input to the output.
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// diffusers' defaults for a given `query_dim`: 8 heads of 64, no q/k/v bias, no norm.
    pub fn new(query_dim: usize) -> Self {
        Self {
            query_dim,
            cross_attention_dim: None,
            heads: 8,
            dim_head: 64,
            bias: false,
            upcast_attention: false,
            upcast_softmax: false,
            norm_num_groups: None,
            eps: 1e-5,
            out_bias: true,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }
}

/// `Attention`: multi-head (cross-)attention with `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Debug, Clone)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    upcast: bool,
    upcast_attention: bool,
    residual_connection: bool,
    rescale_output_factor: f64,
}

impl Attention {
    /// Builds the module under `vb` (e.g. `...transformer_blocks.0.attn2`).
    pub fn new(vb: VarBuilder, config: &AttentionConfig) -> Result<Self> {
        if config.heads == 0 || config.dim_head == 0 {
            return Err(ModelError::InvalidConfig {
                field: "heads",
                reason: format!("heads ({}) and dim_head ({}) must be positive", config.heads, config.dim_head),
            });
        }
        let inner_dim = config.heads * config.dim_head;
        let kv_dim = config.cross_attention_dim.unwrap_or(config.query_dim);
        let linear = |in_dim, out_dim, bias: bool, name: &str| -> Result<Linear> {
            let vb = vb.pp(name);
            Ok(if bias {
                kairos_kernels::nn::linear(in_dim, out_dim, vb)?
            } else {
                kairos_kernels::nn::linear_no_bias(in_dim, out_dim, vb)?
            })
        };
        let group_norm = match config.norm_num_groups {
            Some(groups) => {
                Some(kairos_kernels::nn::group_norm(groups, config.query_dim, config.eps, vb.pp("group_norm"))?)
            }
            None => None,
        };
        Ok(Self {
            group_norm,
            to_q: linear(config.query_dim, inner_dim, config.bias, "to_q")?,
            to_k: linear(kv_dim, inner_dim, config.bias, "to_k")?,
            to_v: linear(kv_dim, inner_dim, config.bias, "to_v")?,
            to_out: linear(inner_dim, config.query_dim, config.out_bias, "to_out.0")?,
            heads: config.heads,
            scale: (config.dim_head as f64).powf(-0.5),
            upcast: config.upcast_attention || config.upcast_softmax,
            upcast_attention: config.upcast_attention,
            residual_connection: config.residual_connection,
            rescale_output_factor: config.rescale_output_factor,
        })
    }

    /// `hidden_states` `[N, L, C]` (or `[N, C, H, W]`, attended over `H·W`), optional
    /// `encoder_hidden_states` `[N, S, C_cross]` → same shape as `hidden_states`.
    pub fn forward(&self, hidden_states: &Tensor, encoder_hidden_states: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with(hidden_states, encoder_hidden_states, None)
    }

    /// Whether the LayerNorm before this attention should pack its tokens for it
    /// ([`LayerNorm::forward_normed`](kairos_kernels::nn::LayerNorm::forward_normed)): its
    /// projections run the bf16 GEMM on the tokens as they come (no input group norm), and it
    /// has no residual connection or rescale of its own (a transformer block's).
    pub fn reads_packed(&self) -> bool {
        self.to_q.runs_bf16() && self.group_norm.is_none() && self.output_as_is()
    }

    /// Whether `to_out.0`'s output is the result as it is: no residual connection or rescale of
    /// the attention's own (a transformer block's), so a residual can be added in `to_out.0`.
    fn output_as_is(&self) -> bool {
        !self.residual_connection && self.rescale_output_factor == 1.0
    }

    /// `forward(hidden_states, encoder_hidden_states) + residual` for a transformer block:
    /// LayerNorm-ed `[N, L, C]` tokens (packed where [`Self::reads_packed`]), the add folded into
    /// `to_out.0` where a fused kernel runs it.
    pub fn forward_normed_residual(
        &self,
        hidden_states: &Tokens,
        encoder_hidden_states: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        match hidden_states {
            Tokens::F32(tokens) if tokens.rank() == 3 && self.output_as_is() => {
                self.forward_with(tokens, encoder_hidden_states, Some(residual))
            }
            Tokens::F32(tokens) => Ok((self.forward(tokens, encoder_hidden_states)? + residual)?),
            Tokens::Packed { .. } => {
                let query = self.to_q.forward_from(hidden_states)?;
                let (key, value) = match encoder_hidden_states {
                    Some(context) => (self.to_k.forward(context)?, self.to_v.forward(context)?),
                    None => (self.to_k.forward_from(hidden_states)?, self.to_v.forward_from(hidden_states)?),
                };
                Ok(self.to_out.forward_residual(&self.attend(query, key, value)?, residual)?)
            }
        }
    }

    /// [`Self::forward`], with `add` added to `to_out.0`'s output (before the spatial layout,
    /// residual connection and rescale).
    fn forward_with(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: Option<&Tensor>,
        add: Option<&Tensor>,
    ) -> Result<Tensor> {
        let residual = hidden_states;
        let spatial = match hidden_states.rank() {
            3 => None,
            4 => Some(hidden_states.dims4()?),
            _ => {
                return Err(ModelError::BadInput {
                    name: "hidden_states",
                    expected: "[N, L, C] or [N, C, H, W]".into(),
                    got: hidden_states.dims().to_vec(),
                })
            }
        };
        // [N, C, H, W] -> [N, H·W, C]
        let hidden_states = match spatial {
            Some((n, c, h, w)) => hidden_states.reshape((n, c, h * w))?.transpose(1, 2)?,
            None => hidden_states.clone(),
        };
        let hidden_states = match &self.group_norm {
            // GroupNorm normalises over channels in dim 1: [N, L, C] -> [N, C, L] and back.
            Some(norm) => norm.forward(&hidden_states.transpose(1, 2)?)?.transpose(1, 2)?,
            None => hidden_states,
        }
        // candle 0.11.1's `Linear` on a non-contiguous 3-D input takes a broadcast-matmul path
        // that returns wrong values on CPU; the transposes above make the input non-contiguous.
        .contiguous()?;

        let query = self.to_q.forward(&hidden_states)?;
        let encoder_hidden_states = encoder_hidden_states.unwrap_or(&hidden_states);
        let key = self.to_k.forward(encoder_hidden_states)?;
        let value = self.to_v.forward(encoder_hidden_states)?;
        let hidden_states = self.attend(query, key, value)?;
        let hidden_states = match add {
            Some(add) => self.to_out.forward_residual(&hidden_states, add)?,
            None => self.to_out.forward(&hidden_states)?,
        };

        // [N, H·W, C] -> [N, C, H, W]
        let hidden_states = match spatial {
            Some((n, c, h, w)) => hidden_states.transpose(1, 2)?.reshape((n, c, h, w))?,
            None => hidden_states,
        };
        let hidden_states = if self.residual_connection { (hidden_states + residual)? } else { hidden_states };
        Ok(if self.rescale_output_factor == 1.0 {
            hidden_states
        } else {
            (hidden_states / self.rescale_output_factor)?
        })
    }

    /// The attention of the projected `query`, `key`, `value` (`[N, L or S, heads·d]`), heads
    /// back in place: `[N, L, heads·d]`.
    fn attend(&self, query: Tensor, key: Tensor, value: Tensor) -> Result<Tensor> {
        let batch_size = query.dim(0)?;
        Ok(if self.upcast && value.dtype() != DType::F32 {
            let (inner_dim, heads) = (key.dim(2)?, self.heads);
            // [N, L, heads·d] -> [N, heads, L, d] and back.
            let split =
                |t: Tensor| t.reshape((batch_size, (), heads, inner_dim / heads))?.transpose(1, 2)?.contiguous();
            let out = scaled_dot_product_attention(&split(query)?, &split(key)?, &split(value)?, self.scale, true)?;
            out.transpose(1, 2)?.reshape((batch_size, (), inner_dim))?
        } else if self.to_q.runs_bf16() && !self.upcast_attention {
            // bf16 projections: bf16 attention operands. Its scores and softmax are f32, so an
            // upcast softmax (the VAE's) takes it too; an upcast q·kᵀ (SD2.1-v) keeps f32.
            kairos_kernels::attention_heads_bf16(&query, &key, &value, self.heads, self.scale, false)?
        } else {
            kairos_kernels::attention_heads(&query, &key, &value, self.heads, self.scale)?
        })
    }
}

/// `softmax(q·kᵀ·scale)·v` over `[N, heads, L, d]` tensors (`key`/`value` `[N, heads, S, d]`),
/// as torch's `F.scaled_dot_product_attention` without mask or dropout. With `upcast` the scores
/// and softmax are computed in f32 and the probabilities cast back to `value`'s dtype.
///
/// This is the one place attention is computed: without an upcast it is
/// [`kairos_kernels::attention`] (a blocked CPU kernel for f32, candle's plain computation
/// otherwise).
pub fn scaled_dot_product_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: f64,
    upcast: bool,
) -> Result<Tensor> {
    let dtype = value.dtype();
    if !upcast || dtype == DType::F32 {
        return Ok(kairos_kernels::attention(query, key, value, scale)?);
    }
    let (query, key) = if upcast && dtype != DType::F32 {
        (query.to_dtype(DType::F32)?, key.to_dtype(DType::F32)?)
    } else {
        (query.clone(), key.clone())
    };
    // [N, heads, L, S]
    let scores = (query * scale)?.matmul(&key.t()?)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    Ok(probs.matmul(value)?)
}
