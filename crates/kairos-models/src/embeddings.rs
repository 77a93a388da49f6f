//! Mirrors diffusers 0.42.1 `models/embeddings.py`: `get_timestep_embedding`, `Timesteps` and
//! `TimestepEmbedding`.
//!
//! Differences:
//! - `TimestepEmbedding`'s `sample_proj_bias` is always true (every SD UNet has the biases).
//! - The sinusoidal embedding repeats torch's float32 operation order (including a true division
//!   rather than a multiplication by the reciprocal), so the result equals diffusers' to the
//!   last ulp of `exp`/`sin`/`cos`.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Module, VarBuilder};
use kairos_kernels::nn::Linear;

use crate::activations::Activation;
use crate::error::{ModelError, Result};

/// Sinusoidal timestep embedding (DDPM), `timesteps` `[N]` (may be fractional) → f32
/// `[N, embedding_dim]`, `[sin, cos]` halves (or `[cos, sin]` with `flip_sin_to_cos`).
pub fn get_timestep_embedding(
    timesteps: &Tensor,
    embedding_dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
    max_period: f64,
) -> Result<Tensor> {
    if timesteps.rank() != 1 {
        return Err(ModelError::BadInput {
            name: "timesteps",
            expected: "a 1-D tensor [N]".into(),
            got: timesteps.dims().to_vec(),
        });
    }
    let device = timesteps.device();
    let half_dim = embedding_dim / 2;
    // exponent = -ln(max_period) * arange(half_dim) / (half_dim - downscale_freq_shift), in f32.
    let exponent =
        Tensor::arange(0u32, half_dim as u32, device)?.to_dtype(DType::F32)?.affine(-max_period.ln(), 0.0)?;
    let denominator = scalar_f32(half_dim as f64 - downscale_freq_shift, device)?;
    let exponent = exponent.broadcast_div(&denominator)?;
    let freqs = exponent.exp()?;
    // [N, 1] * [1, half] -> [N, half]
    let emb = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let emb = if scale == 1.0 { emb } else { emb.affine(scale, 0.0)? };
    let (sin, cos) = (emb.sin()?, emb.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], D::Minus1)? } else { Tensor::cat(&[sin, cos], D::Minus1)? };
    Ok(if embedding_dim % 2 == 1 { emb.pad_with_zeros(D::Minus1, 0, 1)? } else { emb })
}

fn scalar_f32(value: f64, device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(&[value as f32], device)?)
}

/// `Timesteps`: the parameter-free sinusoidal projection of the UNet's `time_proj`.
#[derive(Debug, Clone)]
pub struct Timesteps {
    num_channels: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
}

impl Timesteps {
    /// `Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift, scale=1)`.
    pub fn new(num_channels: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self { num_channels, flip_sin_to_cos, downscale_freq_shift, scale: 1.0 }
    }

    /// The embedding width.
    pub fn num_channels(&self) -> usize {
        self.num_channels
    }

    /// `[N]` → f32 `[N, num_channels]`.
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        get_timestep_embedding(
            timesteps,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
            self.scale,
            10000.0,
        )
    }
}

/// `TimestepEmbedding`: `linear_2(act(linear_1(sample + cond_proj(condition))))`, with an
/// optional `post_act`. `cond_proj` exists for LCM-distilled UNets (`time_cond_proj_dim`).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    cond_proj: Option<Linear>,
    act: Activation,
    linear_2: Linear,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    /// Builds the module under `vb`; `out_dim` defaults to `time_embed_dim`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        time_embed_dim: usize,
        act_fn: Activation,
        out_dim: Option<usize>,
        post_act_fn: Option<Activation>,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let linear_1 = kairos_kernels::nn::linear(in_channels, time_embed_dim, vb.pp("linear_1"))?;
        let cond_proj = match cond_proj_dim {
            Some(dim) => Some(kairos_kernels::nn::linear_no_bias(dim, in_channels, vb.pp("cond_proj"))?),
            None => None,
        };
        let out_dim = out_dim.unwrap_or(time_embed_dim);
        let linear_2 = kairos_kernels::nn::linear(time_embed_dim, out_dim, vb.pp("linear_2"))?;
        Ok(Self { linear_1, cond_proj, act: act_fn, linear_2, post_act: post_act_fn })
    }

    /// `sample` `[N, in_channels]`, `condition` `[N, cond_proj_dim]` → `[N, out_dim]`.
    pub fn forward(&self, sample: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let sample = match (condition, &self.cond_proj) {
            (Some(condition), Some(cond_proj)) => (sample + cond_proj.forward(condition)?)?,
            (Some(condition), None) => {
                return Err(ModelError::BadInput {
                    name: "timestep_cond",
                    expected: "none: the model has no cond_proj (time_cond_proj_dim is null)".into(),
                    got: condition.dims().to_vec(),
                })
            }
            (None, _) => sample.clone(),
        };
        let sample = self.act.forward(&self.linear_1.forward(&sample)?)?;
        let sample = self.linear_2.forward(&sample)?;
        match &self.post_act {
            Some(act) => act.forward(&sample),
            None => Ok(sample),
        }
    }
}
