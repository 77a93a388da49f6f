//! Mirrors diffusers 0.42.1 `models/activations.py`: `get_activation` and `GEGLU`.
//!
//! Differences:
//! - Only the activations SD1.x/SD2.x UNets and VAEs name are implemented (`swish`/`silu`, `mish`,
//!   `gelu`, `relu`); `GELU`, `ApproximateGELU`, `SwiGLU` and the NPU fused path are absent.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use kairos_kernels::nn::{Linear, Tokens};

use crate::error::{ModelError, Result};

/// An element-wise activation, named as diffusers' `get_activation` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `swish` / `silu`: `x * sigmoid(x)`.
    Silu,
    /// `mish`: `x * tanh(softplus(x))`.
    Mish,
    /// `gelu`: exact (erf) GELU, torch's `nn.GELU()` default.
    Gelu,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parses a diffusers activation name (case-insensitive, as `get_activation` does).
    pub fn from_name(field: &'static str, name: &str) -> Result<Self> {
        match name.to_lowercase().as_str() {
            "swish" | "silu" => Ok(Self::Silu),
            "mish" => Ok(Self::Mish),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            _ => Err(ModelError::Unsupported {
                field,
                value: name.to_string(),
                supported: "swish, silu, mish, gelu, relu",
            }),
        }
    }

    /// Applies the activation.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Silu => candle_nn::ops::silu(xs)?,
            // softplus(x) = ln(1 + e^x); where e^x overflows to inf, tanh(inf) = 1 is the right limit.
            Self::Mish => (xs * xs.exp()?.affine(1.0, 1.0)?.log()?.tanh()?)?,
            Self::Gelu => xs.gelu_erf()?,
            Self::Relu => xs.relu()?,
        })
    }
}

/// `GEGLU`: a linear projection to twice the width, split into value and gate, `value * gelu(gate)`.
#[derive(Debug, Clone)]
pub struct GEGLU {
    proj: Linear,
}

impl GEGLU {
    /// Builds `proj` (`dim_in` → `2 * dim_out`, with bias) under `vb`.
    pub fn new(vb: VarBuilder, dim_in: usize, dim_out: usize) -> Result<Self> {
        Ok(Self { proj: kairos_kernels::nn::linear(dim_in, dim_out * 2, vb.pp("proj"))? })
    }

    /// `[.., dim_in]` → `[.., dim_out]`.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        Ok(self.proj.forward_geglu(hidden_states)?)
    }

    /// [`Self::forward`] on a LayerNorm's output (packed where [`Self::reads_packed`]), the result
    /// packed with `pack` for a bf16 layer after it.
    pub fn forward_from(&self, hidden_states: &Tokens, pack: bool) -> Result<Tokens> {
        Ok(self.proj.forward_geglu_from(hidden_states, pack)?)
    }

    /// Whether the LayerNorm before should pack its tokens for `proj` (a bf16 GEMM).
    pub fn reads_packed(&self) -> bool {
        self.proj.runs_bf16()
    }
}
