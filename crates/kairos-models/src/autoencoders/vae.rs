//! Mirrors diffusers 0.42.1 `models/autoencoders/vae.py` (`Encoder`, `Decoder`,
//! `DiagonalGaussianDistribution`) and the three `models/unets/unet_2d_blocks.py` blocks they
//! are built from: `DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D`.
//!
//! Differences:
//! - The blocks live here, not in `unets/unet_2d_blocks.rs`: only the VAE uses them.
//! - Only `norm_type="group"` (no `SpatialNorm`, used by MoVQ) and `resnet_time_scale_shift=
//!   "default"`; no temb anywhere (the SD VAEs have none). `UNetMidBlock2D` has its fixed
//!   single layer (`num_layers=1`), as every VAE uses it.
//! - `DiagonalGaussianDistribution::sample` takes the noise as an argument instead of a torch
//!   generator, so callers choose the RNG stream. `kl`/`nll` (training only) are absent.
//! - Dropout and gradient checkpointing are omitted (inference only).

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use kairos_kernels::nn::{Conv2d, GroupNorm};

use crate::activations::Activation;
use crate::attention_processor::{Attention, AttentionConfig};
use crate::error::{ModelError, Result};
use crate::resnet::{conv3x3, Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};

/// Epsilon of every norm in the VAE (`resnet_eps=1e-6` and the `conv_norm_out`s).
const EPS: f64 = 1e-6;

/// What `Encoder` and `Decoder` share from the `AutoencoderKL` config.
#[derive(Debug, Clone)]
pub struct CoderConfig {
    /// Channels of each resolution level, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder uses one more).
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Activation inside the resnets (`act_fn`).
    pub act_fn: Activation,
    /// Whether the mid block has its attention layer.
    pub mid_block_add_attention: bool,
}

impl CoderConfig {
    fn resnet(&self, out_channels: usize) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: EPS,
            non_linearity: self.act_fn,
            ..Default::default()
        }
    }

    /// (first, last) of `block_out_channels`, which must not be empty.
    fn ends(&self) -> Result<(usize, usize)> {
        match (self.block_out_channels.first(), self.block_out_channels.last()) {
            (Some(&first), Some(&last)) => Ok((first, last)),
            _ => Err(ModelError::InvalidConfig { field: "block_out_channels", reason: "must not be empty".into() }),
        }
    }
}

/// `DownEncoderBlock2D`: resnets, then an optional stride-2 convolution (padding 0, padded
/// right/bottom, as LDM did).
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsamplers: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Builds the block under `vb` (`encoder.down_blocks.{i}`).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        add_downsample: bool,
        config: &CoderConfig,
    ) -> Result<Self> {
        let resnets = (0..config.layers_per_block)
            .map(|i| {
                let in_ch = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(vb.pp("resnets").pp(i), in_ch, &config.resnet(out_channels))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsamplers = if add_downsample {
            Some(Downsample2D::new(vb.pp("downsamplers").pp(0), out_channels, true, Some(out_channels), 0)?)
        } else {
            None
        };
        Ok(Self { resnets, downsamplers })
    }

    /// `[N, C_in, H, W]` → `[N, C_out, H/2, W/2]` (or `H, W` for the last block).
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let mut hidden_states = hidden_states.clone();
        for resnet in &self.resnets {
            hidden_states = resnet.forward(&hidden_states, None)?;
        }
        match &self.downsamplers {
            Some(d) => d.forward(&hidden_states),
            None => Ok(hidden_states),
        }
    }
}

/// `UpDecoderBlock2D`: resnets, then an optional nearest ×2 upsample and 3×3 convolution.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsamplers: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Builds the block under `vb` (`decoder.up_blocks.{i}`) with `num_layers` resnets.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        add_upsample: bool,
        config: &CoderConfig,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|i| {
                let in_ch = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(vb.pp("resnets").pp(i), in_ch, &config.resnet(out_channels))
            })
            .collect::<Result<Vec<_>>>()?;
        let upsamplers = if add_upsample {
            Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_channels, true, Some(out_channels))?)
        } else {
            None
        };
        Ok(Self { resnets, upsamplers })
    }

    /// `[N, C_in, H, W]` → `[N, C_out, 2H, 2W]` (or `H, W` for the last block).
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let mut hidden_states = hidden_states.clone();
        for resnet in &self.resnets {
            hidden_states = resnet.forward(&hidden_states, None)?;
        }
        match &self.upsamplers {
            Some(u) => u.forward(&hidden_states, None),
            None => Ok(hidden_states),
        }
    }
}

/// `UNetMidBlock2D` as the VAE uses it: resnet, single-head spatial self-attention with a
/// GroupNorm and a residual connection, resnet.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    /// Builds the block under `vb` (`{encoder,decoder}.mid_block`).
    pub fn new(vb: VarBuilder, in_channels: usize, config: &CoderConfig) -> Result<Self> {
        let resnet = config.resnet(in_channels);
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::new(vb.pp("resnets").pp(i), in_channels, &resnet))
            .collect::<Result<Vec<_>>>()?;
        let attentions = if config.mid_block_add_attention {
            // attention_head_dim = in_channels: one head over all channels.
            let attn = AttentionConfig {
                heads: 1,
                dim_head: in_channels,
                bias: true,
                upcast_softmax: true,
                norm_num_groups: Some(config.norm_num_groups),
                eps: EPS,
                residual_connection: true,
                ..AttentionConfig::new(in_channels)
            };
            vec![Attention::new(vb.pp("attentions").pp(0), &attn)?]
        } else {
            Vec::new()
        };
        Ok(Self { resnets, attentions })
    }

    /// `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        // `new` always builds exactly two resnets.
        let mut hidden_states = self.resnets[0].forward(hidden_states, None)?;
        if let Some(attn) = self.attentions.first() {
            hidden_states = attn.forward(&hidden_states, None)?;
        }
        self.resnets[1].forward(&hidden_states, None)
    }
}

/// `Encoder`: image `[N, C_in, H, W]` → the Gaussian's parameters `[N, 2·latent, H/f, W/f]`
/// (`double_z=True`, as `AutoencoderKL` builds it).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// Builds the encoder under `vb` (`encoder`).
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, config: &CoderConfig) -> Result<Self> {
        let (first, last) = config.ends()?;
        let boc = &config.block_out_channels;
        let conv_in = conv3x3(vb.pp("conv_in"), in_channels, first)?;
        let mut output_channel = first;
        let mut down_blocks = Vec::with_capacity(boc.len());
        for (i, &channels) in boc.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = channels;
            let is_final_block = i + 1 == boc.len();
            let vb = vb.pp("down_blocks").pp(i);
            down_blocks.push(DownEncoderBlock2D::new(vb, input_channel, output_channel, !is_final_block, config)?);
        }
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: UNetMidBlock2D::new(vb.pp("mid_block"), last, config)?,
            conv_norm_out: kairos_kernels::nn::group_norm(config.norm_num_groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * out_channels)?,
        })
    }

    /// `[N, C_in, H, W]` → `[N, 2·latent, H/f, W/f]`.
    pub fn forward(&self, sample: &Tensor) -> Result<Tensor> {
        let mut sample = self.conv_in.forward(sample)?;
        for down_block in &self.down_blocks {
            sample = down_block.forward(&sample)?;
        }
        let sample = self.mid_block.forward(&sample)?;
        let sample = self.conv_norm_out.forward_silu(&sample)?;
        Ok(self.conv_out.forward(&sample)?)
    }
}

/// `Decoder`: latent `[N, latent, h, w]` → image `[N, C_out, h·f, w·f]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// Builds the decoder under `vb` (`decoder`).
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, config: &CoderConfig) -> Result<Self> {
        let (first, last) = config.ends()?;
        let conv_in = conv3x3(vb.pp("conv_in"), in_channels, last)?;
        let mid_block = UNetMidBlock2D::new(vb.pp("mid_block"), last, config)?;
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let mut output_channel = last;
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &channels) in reversed.iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = channels;
            let is_final_block = i + 1 == reversed.len();
            let vb = vb.pp("up_blocks").pp(i);
            let layers = config.layers_per_block + 1;
            up_blocks.push(UpDecoderBlock2D::new(
                vb,
                prev_output_channel,
                output_channel,
                layers,
                !is_final_block,
                config,
            )?);
        }
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: kairos_kernels::nn::group_norm(config.norm_num_groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), first, out_channels)?,
        })
    }

    /// `[N, latent, h, w]` → `[N, C_out, h·f, w·f]`.
    pub fn forward(&self, sample: &Tensor) -> Result<Tensor> {
        let sample = self.conv_in.forward(sample)?;
        let mut sample = self.mid_block.forward(&sample)?;
        for up_block in &self.up_blocks {
            sample = up_block.forward(&sample)?;
        }
        let sample = self.conv_norm_out.forward_silu(&sample)?;
        Ok(self.conv_out.forward(&sample)?)
    }
}

/// `DiagonalGaussianDistribution`: the encoder's posterior N(mean, exp(logvar)).
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution {
    /// `[N, latent, h, w]`.
    pub mean: Tensor,
    /// Log-variance, clamped to [−30, 20] as diffusers does.
    pub logvar: Tensor,
    /// exp(logvar / 2).
    pub std: Tensor,
}

impl DiagonalGaussianDistribution {
    /// Splits the parameters `[N, 2·latent, h, w]` into mean and log-variance along channels.
    pub fn new(parameters: &Tensor) -> Result<Self> {
        let chunks = parameters.chunk(2, 1)?;
        let mean = chunks[0].contiguous()?;
        let logvar = chunks[1].clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// `mean + std · noise`, with `noise` shaped like `mean` (standard normal, from the caller's
    /// RNG).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + self.std.broadcast_mul(noise)?)?)
    }

    /// The mode (= the mean), what img2img pipelines use with `sample_mode="argmax"`.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }
}
