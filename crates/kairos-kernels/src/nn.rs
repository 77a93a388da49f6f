//! Drop-in replacements for `candle_nn`'s `Conv2d`, `Linear`, `GroupNorm`, `LayerNorm` and
//! `Embedding` constructors that run the kernels: same constructor arguments and weight names
//! (`weight`, `bias`), so a model switches by import.
//!
//! Weight precision: the `VarBuilder`'s dtype is the dtype the weights are *stored* in. On the
//! CPU, bf16 and f16 weights compute with f32 activations ([`activation_dtype`]): convolution and
//! linear weights stay in their dtype (bf16 ones packed for [`crate::gemm_bf16`] where the CPU
//! has AVX512-BF16, f16 ones converted to f32 per call), while the small norm and embedding
//! weights are loaded in f32. On other devices every weight and activation is in the builder's
//! dtype, as candle does it.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, LayerNormConfig, VarBuilder};

use crate::bf16_layers::{packs, Conv2dBf16, LinearBf16};
use crate::conv2d::{conv2d as conv2d_kernel, Conv2dParams};
use crate::gemm_bf16::PackedA;
use crate::group_norm::group_norm as group_norm_kernel;

/// The dtype activations are computed in for weights stored in `weight_dtype` on `device`: f32
/// for bf16/f16 weights on the CPU (whose reduced-precision arithmetic in candle is slow and,
/// for norms and softmax, inaccurate), the weights' dtype elsewhere.
pub fn activation_dtype(weight_dtype: DType, device: &Device) -> DType {
    match weight_dtype {
        DType::BF16 | DType::F16 if device.is_cpu() => DType::F32,
        dtype => dtype,
    }
}

/// `w` in the dtype of `x`, if they differ (f16 weights with f32 activations on the CPU).
fn like(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    if w.dtype() == x.dtype() {
        Ok(w.clone())
    } else {
        w.to_dtype(x.dtype())
    }
}

/// A 2-D convolution layer; see [`crate::conv2d`] for the kernel and its fallback.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// The weight packed for the bf16 GEMM (then `inner`'s weight is not used by `forward`).
    bf16: Option<Arc<Conv2dBf16>>,
}

impl Conv2d {
    /// Wraps a candle layer (its weight, bias and configuration are used as they are); a bf16
    /// weight on a CPU with AVX512-BF16 is packed for the bf16 GEMM.
    pub fn new(inner: candle_nn::Conv2d) -> Result<Self> {
        let cfg = inner.config();
        let bf16 = if packs(inner.weight()) && cfg.groups == 1 && cfg.dilation == 1 {
            let params = Conv2dParams { padding: cfg.padding, stride: cfg.stride };
            Some(Arc::new(Conv2dBf16::new(inner.weight(), inner.bias(), params)?))
        } else {
            None
        };
        // The packed copy replaces the weight: keep only an empty stand-in of the right shape.
        let inner = match &bf16 {
            Some(_) => candle_nn::Conv2d::new(stand_in(inner.weight())?, None, *cfg),
            None => inner,
        };
        Ok(Self { inner, bf16 })
    }

    /// The layer's padding and stride.
    fn params(&self) -> Conv2dParams {
        let cfg = self.inner.config();
        Conv2dParams { padding: cfg.padding, stride: cfg.stride }
    }

    /// A 1×1, stride-1, unpadded convolution's weight as a `[out, in]` matrix, and its bias, in
    /// the dtype of `xs`, for the f32 kernels that fuse the layer with its neighbours
    /// ([`crate::tokens_from_map`], [`crate::map_from_tokens`]); `None` for other convolutions and
    /// bf16-packed or converted weights.
    fn matrix(&self, xs: &Tensor) -> Option<(Tensor, Option<&Tensor>)> {
        let cfg = self.inner.config();
        let (co, ci, kh, kw) = self.inner.weight().dims4().ok()?;
        let pointwise = (kh, kw, cfg.stride, cfg.padding, cfg.groups, cfg.dilation) == (1, 1, 1, 0, 1, 1);
        if !pointwise || self.bf16.is_some() {
            return None;
        }
        let (weight, bias) = (self.inner.weight().reshape((co, ci)).ok()?, self.inner.bias());
        same_dtype(weight, bias, xs)
    }

    /// `self.forward(xs) + residual`, the add done by the bf16 direct kernel's stores where it
    /// runs the layer (a ResNet block's `conv2` plus its shortcut: one pass less over the map).
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(bf16) = &self.bf16 {
            crate::conv2d::check_shapes(xs, self.inner.weight(), self.params())?;
            let (n, _, h, w) = xs.dims4()?;
            // The direct kernel keeps the size (3×3 padding 1, 1×1 padding 0, stride 1).
            if residual.dims() == [n, self.inner.weight().dim(0)?, h, w] {
                if let Some(out) = bf16.forward_residual(xs, residual)? {
                    return Ok(out);
                }
            }
        }
        self.forward(xs)? + residual
    }

    /// A spatial transformer's `proj_in` as a 1×1 convolution: the map `xs` `[N, Ci, H, W]` to
    /// tokens `[N, H·W, Co]` without a permute pass (the bf16 direct kernel writes tokens, f32
    /// weights take [`crate::tokens_from_map`]); other layers convolve and permute.
    pub fn forward_tokens(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(bf16) = &self.bf16 {
            crate::conv2d::check_shapes(xs, self.inner.weight(), self.params())?;
            if let Some(out) = bf16.forward_tokens(xs, None)? {
                return Ok(out);
            }
        }
        if let Some((weight, bias)) = self.matrix(xs) {
            return crate::tokens_from_map(xs, &weight, bias);
        }
        map_to_tokens(&self.forward(xs)?)
    }

    /// A spatial transformer's `proj_out` as a 1×1 convolution plus its residual: `tokens`
    /// `[N, H·W, Ci]` laid out as `residual`'s `H × W` map `[N, Co, H, W]`, convolved and added
    /// to it, without a permute pass (the bf16 direct kernel reads tokens, f32 weights take
    /// [`crate::map_from_tokens`]); other layers permute, convolve and add.
    pub fn forward_from_tokens(&self, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (n, co, h, w) = residual.dims4()?;
        if let Some(bf16) = &self.bf16 {
            let (wco, ci, ..) = self.inner.weight().dims4()?;
            if tokens.dims() == [n, h * w, ci] && wco == co {
                if let Some(out) = bf16.forward_tokens(tokens, Some(residual))? {
                    return Ok(out);
                }
            }
        }
        if let Some((weight, bias)) = self.matrix(tokens) {
            return crate::map_from_tokens(tokens, &weight, bias, residual);
        }
        self.forward(&tokens_to_map(tokens, h, w)?)? + residual
    }
}

/// `weight` and `bias` if both have the dtype of `xs` (the fused f32 kernels take one dtype).
fn same_dtype<'a>(weight: Tensor, bias: Option<&'a Tensor>, xs: &Tensor) -> Option<(Tensor, Option<&'a Tensor>)> {
    let dtype = xs.dtype();
    (weight.dtype() == dtype && bias.is_none_or(|b| b.dtype() == dtype)).then_some((weight, bias))
}

/// `[N, C, H, W]` → `[N, H·W, C]` (a permute copy).
fn map_to_tokens(xs: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    xs.permute((0, 2, 3, 1))?.reshape((n, h * w, c))
}

/// `[N, H·W, C]` → `[N, C, H, W]` (a permute copy).
fn tokens_to_map(xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, _, c) = xs.dims3()?;
    xs.reshape((n, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
}

/// A zero-stride tensor with `w`'s shape and dtype (one element of memory), so that a layer whose
/// weight lives packed elsewhere still reports its shape.
fn stand_in(w: &Tensor) -> Result<Tensor> {
    Tensor::zeros((), w.dtype(), w.device())?.broadcast_as(w.shape())
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        // The kernel covers one group and dilation 1 (every SD convolution); the rest stays on candle.
        if cfg.groups != 1 || cfg.dilation != 1 {
            let weight = like(self.inner.weight(), xs)?;
            let bias = self.inner.bias().map(|b| like(b, xs)).transpose()?;
            return candle_nn::Conv2d::new(weight, bias, *cfg).forward(xs);
        }
        let params = self.params();
        if let Some(bf16) = &self.bf16 {
            // The kernel's shape checks, on the stand-in weight.
            crate::conv2d::check_shapes(xs, self.inner.weight(), params)?;
            return bf16.forward(xs);
        }
        let weight = like(self.inner.weight(), xs)?;
        let bias = self.inner.bias().map(|b| like(b, xs)).transpose()?;
        conv2d_kernel(xs, &weight, bias.as_ref(), params)
    }
}

/// `candle_nn::conv2d` returning the kernel-backed layer.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::new(candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?)
}

/// `candle_nn::conv2d_no_bias` returning the kernel-backed layer.
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::new(candle_nn::conv2d_no_bias(in_channels, out_channels, kernel_size, cfg, vb)?)
}

/// A linear layer `y = x·Wᵀ + b`; bf16 weights on a CPU with AVX512-BF16 run the bf16 GEMM
/// ([`crate::gemm_bf16`]), others [`crate::linear`] (weights converted to the activations' dtype).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// The weight packed for the bf16 GEMM (then `inner` holds a stand-in weight).
    bf16: Option<Arc<LinearBf16>>,
}

impl Linear {
    /// A layer with `weight` `[out, in]` and an optional `bias` `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if packs(&weight) {
            let bf16 = Arc::new(LinearBf16::new(&weight, bias.as_ref())?);
            Ok(Self { inner: candle_nn::Linear::new(stand_in(&weight)?, None), bf16: Some(bf16) })
        } else {
            Ok(Self { inner: candle_nn::Linear::new(weight, bias), bf16: None })
        }
    }

    /// [`Self::new`] for a layer whose inputs have few rows (a text encoder's, over a prompt's
    /// 77 tokens): an f32 CPU weight is stored transposed ([`crate::linear::gemm_weight`]), which
    /// made the f32 text encoder's GEMMs about 20 % faster, for a pass over the weight where the
    /// layer is built (about 1.4 ns per element); on the many rows of a UNet's layers it gained
    /// nothing.
    pub fn new_few_rows(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        // Only f32 weights are transposed, and only bf16 ones are packed: the two never meet.
        Self::new(crate::linear::gemm_weight(&weight)?, bias)
    }

    /// The `[out, in]` weight and the bias in the dtype of `xs`, for the f32 kernels that fuse the
    /// layer with its neighbours; `None` for bf16-packed or converted weights.
    fn matrix(&self, xs: &Tensor) -> Option<(Tensor, Option<&Tensor>)> {
        if self.bf16.is_some() {
            return None;
        }
        same_dtype(self.inner.weight().clone(), self.inner.bias(), xs)
    }

    /// A spatial transformer's linear `proj_in`: the map `xs` `[N, Ci, H, W]` to tokens
    /// `[N, H·W, Co]`, with f32 weights in one pass ([`crate::tokens_from_map`]), otherwise
    /// permuted and projected.
    pub fn forward_tokens(&self, xs: &Tensor) -> Result<Tensor> {
        match self.matrix(xs) {
            Some((weight, bias)) => crate::tokens_from_map(xs, &weight, bias),
            None => self.forward(&map_to_tokens(xs)?),
        }
    }

    /// A spatial transformer's linear `proj_out` plus its residual: `tokens` `[N, H·W, Ci]`
    /// projected, laid out as `residual`'s map `[N, Co, H, W]` and added to it, with f32
    /// weights in one pass ([`crate::map_from_tokens`]), otherwise projected, permuted and added.
    pub fn forward_from_tokens(&self, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.matrix(tokens) {
            Some((weight, bias)) => crate::map_from_tokens(tokens, &weight, bias, residual),
            None => {
                let (_, _, h, w) = residual.dims4()?;
                tokens_to_map(&self.forward(tokens)?, h, w)? + residual
            }
        }
    }

    /// GEGLU's gating of the layer's output (`value · gelu(gate)` on its two halves,
    /// [`crate::geglu`]); a bf16 layer computes and gates it block by block without writing the
    /// projection out.
    pub fn forward_geglu(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(bf16) = &self.bf16 {
            if let Some(out) = bf16.forward_geglu(xs)? {
                return Ok(out);
            }
        }
        crate::geglu(&self.forward(xs)?)
    }

    /// `self.forward(xs) + residual` (`residual` of the output's shape), the add folded into the
    /// bf16 GEMM's start where the layer runs it (a transformer block's output projections).
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(bf16) = &self.bf16 {
            if self.residual_fits(xs.dims(), residual)? {
                return bf16.forward_residual(xs, residual);
            }
        }
        self.forward(xs)? + residual
    }

    /// Whether inputs of `dims` (`[.., in]`) give outputs of `residual`'s shape.
    fn residual_fits(&self, dims: &[usize], residual: &Tensor) -> Result<bool> {
        let (out_features, in_features) = self.inner.weight().dims2()?;
        let (lead, last) = dims.split_at(dims.len().saturating_sub(1));
        Ok(last == [in_features] && residual.dims().split_last() == Some((&out_features, lead)))
    }

    /// The layer on [`Tokens`]: packed tokens go straight to the bf16 GEMM.
    pub fn forward_from(&self, xs: &Tokens) -> Result<Tensor> {
        match xs {
            Tokens::F32(xs) => self.forward(xs),
            Tokens::Packed { packed, dims } => self.packed_layer()?.forward_packed(packed, dims),
        }
    }

    /// [`Self::forward_geglu`] on [`Tokens`], its output packed with `pack` (for a bf16 layer
    /// after it) where the layer runs the blocked bf16 kernel, else f32.
    pub fn forward_geglu_from(&self, xs: &Tokens, pack: bool) -> Result<Tokens> {
        match xs {
            Tokens::F32(xs) => Ok(Tokens::F32(self.forward_geglu(xs)?)),
            Tokens::Packed { packed, dims } => {
                let bf16 = self.packed_layer()?;
                match bf16.forward_geglu_packed(packed, dims, pack)? {
                    Some(out) => Ok(out),
                    None => Ok(Tokens::F32(crate::geglu(&bf16.forward_packed(packed, dims)?)?)),
                }
            }
        }
    }

    /// [`Self::forward_residual`] on [`Tokens`].
    pub fn forward_residual_from(&self, xs: &Tokens, residual: &Tensor) -> Result<Tensor> {
        match xs {
            Tokens::F32(xs) => self.forward_residual(xs, residual),
            Tokens::Packed { packed, dims } => {
                if !self.residual_fits(dims.dims(), residual)? {
                    candle_core::bail!("kairos Linear: residual {:?} for inputs {dims:?}", residual.dims());
                }
                self.packed_layer()?.forward_residual_packed(packed, dims, residual)
            }
        }
    }

    /// The bf16 layer that packed tokens need.
    fn packed_layer(&self) -> Result<&LinearBf16> {
        match &self.bf16 {
            Some(bf16) => Ok(bf16),
            None => candle_core::bail!("kairos Linear: tokens packed for bf16 given to an f32 layer"),
        }
    }

    /// Whether the layer runs the bf16 GEMM: the attention around such projections takes bf16
    /// operands too ([`crate::attention_heads_bf16`]), as a bf16 model does on other engines.
    pub fn runs_bf16(&self) -> bool {
        self.bf16.is_some()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(bf16) = &self.bf16 {
            return bf16.forward(xs);
        }
        let weight = like(self.inner.weight(), xs)?;
        let bias = self.inner.bias().map(|b| like(b, xs)).transpose()?;
        crate::linear::linear(xs, &weight, bias.as_ref())
    }
}

/// `candle_nn::linear` returning the kernel-backed layer.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Linear::new(weight, Some(bias))
}

/// [`linear`] for a layer whose inputs have few rows ([`Linear::new_few_rows`]).
pub fn linear_few_rows(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Linear::new_few_rows(weight, Some(bias))
}

/// `candle_nn::linear_no_bias` returning the kernel-backed layer.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(vb.get((out_dim, in_dim), "weight")?, None)
}

/// LayerNorm over the last dimension; see [`crate::layer_norm`] for the kernel and its fallback.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

impl LayerNorm {
    /// The normalised tokens for the linear layers that read them: with `pack` (those layers run
    /// the bf16 GEMM, [`Linear::runs_bf16`]) and f32 CPU tokens on a CPU with AVX512-BF16,
    /// normalised straight into the GEMM's packed operand; otherwise [`Module::forward`]'s f32
    /// tokens. The values the layers see are the same either way.
    pub fn forward_normed(&self, xs: &Tensor, pack: bool) -> Result<Tokens> {
        if pack && crate::gemm_bf16::available() && crate::kernel_applies([xs, &self.weight, &self.bias]) {
            let packed = crate::layer_norm::layer_norm_packed(xs, &self.weight, &self.bias, self.eps)?;
            return Ok(Tokens::Packed { packed, dims: xs.shape().clone() });
        }
        Ok(Tokens::F32(self.forward(xs)?))
    }
}

/// Tokens `[.., D]` as the linear layers that read them take them: f32, or packed for the bf16
/// GEMM by the layer that computed them (a LayerNorm, [`LayerNorm::forward_normed`]; a GEGLU,
/// [`Linear::forward_geglu_from`]), so that they are never written out in f32 and are packed
/// once for every projection that reads them (a self-attention's q, k and v).
#[derive(Debug, Clone)]
pub enum Tokens {
    /// f32 tokens.
    F32(Tensor),
    /// The tokens `dims` packed for the bf16 GEMM, one row per token.
    Packed { packed: PackedA, dims: candle_core::Shape },
}

/// `candle_nn::layer_norm` (mean removed, elementwise affine; weight initialised to 1, bias to 0
/// when the builder creates them) returning the kernel-backed layer, with its weights in the
/// [`activation_dtype`].
pub fn layer_norm<C: Into<LayerNormConfig>>(size: usize, config: C, vb: VarBuilder) -> Result<LayerNorm> {
    let config = config.into();
    if !config.remove_mean || !config.affine {
        candle_core::bail!("kairos LayerNorm: only the mean-removing, affine LayerNorm of SD's networks is built");
    }
    let dtype = activation_dtype(vb.dtype(), vb.device());
    let vb = vb.set_dtype(dtype);
    let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.))?;
    Ok(LayerNorm { weight, bias, eps: config.eps })
}

/// `candle_nn::embedding` with its table in the [`activation_dtype`] (embeddings are looked up,
/// not multiplied, so they gain nothing from bf16 compute).
pub fn embedding(in_size: usize, out_size: usize, vb: VarBuilder) -> Result<candle_nn::Embedding> {
    let dtype = activation_dtype(vb.dtype(), vb.device());
    candle_nn::embedding(in_size, out_size, vb.set_dtype(dtype))
}

/// GroupNorm over `[N, C, *]`; see [`crate::group_norm`] for the kernel and its fallback.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// GroupNorm followed by SiLU, fused in one pass.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm_kernel(xs, &self.weight, &self.bias, self.num_groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm_kernel(xs, &self.weight, &self.bias, self.num_groups, self.eps, false)
    }
}

/// `candle_nn::group_norm` returning the kernel-backed layer (weight initialised to 1, bias to 0
/// when the builder creates them), with its weights in the [`activation_dtype`].
pub fn group_norm(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let dtype = activation_dtype(vb.dtype(), vb.device());
    let vb = vb.set_dtype(dtype);
    // Builds candle's layer for its argument checks and weight lookup, then keeps the parts.
    let weight = vb.get_with_hints(num_channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(num_channels, "bias", candle_nn::Init::Const(0.))?;
    candle_nn::GroupNorm::new(weight.clone(), bias.clone(), num_channels, num_groups, eps)?;
    Ok(GroupNorm { weight, bias, num_groups, eps })
}
