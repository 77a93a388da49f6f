//! Drop-in replacements for `candle_nn::Conv2d` and `candle_nn::GroupNorm` that run the kernels:
//! same constructor arguments and weight names (`weight`, `bias`), so a model switches by import.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::conv2d::{conv2d as conv2d_kernel, Conv2dParams};
use crate::group_norm::group_norm as group_norm_kernel;

/// A 2-D convolution layer; see [`crate::conv2d`] for the kernel and its fallback.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

impl Conv2d {
    /// Wraps a candle layer (its weight, bias and configuration are used as they are).
    pub fn new(inner: candle_nn::Conv2d) -> Self {
        Self { inner }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        // The kernel covers one group and dilation 1 (every SD convolution); the rest stays on candle.
        if cfg.groups != 1 || cfg.dilation != 1 {
            return self.inner.forward(xs);
        }
        let params = Conv2dParams { padding: cfg.padding, stride: cfg.stride };
        conv2d_kernel(xs, self.inner.weight(), self.inner.bias(), params)
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
    candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb).map(Conv2d::new)
}

/// `candle_nn::conv2d_no_bias` returning the kernel-backed layer.
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    candle_nn::conv2d_no_bias(in_channels, out_channels, kernel_size, cfg, vb).map(Conv2d::new)
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
/// when the builder creates them).
pub fn group_norm(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    // Builds candle's layer for its argument checks and weight lookup, then keeps the parts.
    let weight = vb.get_with_hints(num_channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(num_channels, "bias", candle_nn::Init::Const(0.))?;
    candle_nn::GroupNorm::new(weight.clone(), bias.clone(), num_channels, num_groups, eps)?;
    Ok(GroupNorm { weight, bias, num_groups, eps })
}
