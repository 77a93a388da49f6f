//! Mirrors diffusers 0.42.1 `models/resnet.py` (`ResnetBlock2D`) and the two samplers it uses,
//! `Downsample2D` (`models/downsampling.py`) and `Upsample2D` (`models/upsampling.py`).
//!
//! Differences:
//! - `Downsample2D` and `Upsample2D` live here rather than in their own files, since the
//!   UNet and VAE blocks only ever use them beside `ResnetBlock2D`.
//! - `ResnetBlock2D`'s `up`/`down`/`kernel` (FIR, `sde_vp`) options, `Upsample2D`'s
//!   `use_conv_transpose`, and the `norm_type` of both samplers are absent: no SD1.x/SD2.x UNet or
//!   VAE uses them. `conv_shortcut` is absent because diffusers ignores it (the shortcut is
//!   always the 1×1 `conv_shortcut` layer). The `name` argument is absent: SD checkpoints always
//!   store the sampler convolution under `conv`.
//! - Dropout is omitted (inference only).

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, Module, VarBuilder};
use kairos_kernels::nn::{Conv2d, GroupNorm, Linear};

use crate::activations::Activation;
use crate::error::{ModelError, Result};

/// How `ResnetBlock2D` injects the time embedding (`time_embedding_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// `default`: `conv1(x) + time_emb_proj(temb)`, then `norm2`.
    Default,
    /// `scale_shift`: `norm2(conv1(x)) * (1 + scale) + shift`.
    ScaleShift,
}

impl TimeEmbeddingNorm {
    /// Parses diffusers' name (`default`, `scale_shift`).
    pub fn from_name(field: &'static str, name: &str) -> Result<Self> {
        match name {
            "default" => Ok(Self::Default),
            "scale_shift" => Ok(Self::ScaleShift),
            _ => Err(ModelError::Unsupported { field, value: name.to_string(), supported: "default, scale_shift" }),
        }
    }
}

/// Constructor arguments of `ResnetBlock2D` besides `in_channels`, with diffusers' defaults.
#[derive(Debug, Clone)]
pub struct ResnetBlock2DConfig {
    /// Output channels of `conv1`; `None` means `in_channels`.
    pub out_channels: Option<usize>,
    /// Width of the time embedding; `None` means the block takes no `temb` (VAE).
    pub temb_channels: Option<usize>,
    /// Groups of `norm1`.
    pub groups: usize,
    /// Groups of `norm2`; `None` means `groups`.
    pub groups_out: Option<usize>,
    /// Epsilon of both group norms.
    pub eps: f64,
    /// Activation after each norm and on `temb` (`non_linearity`).
    pub non_linearity: Activation,
    /// Skip the activation on `temb` before `time_emb_proj`.
    pub skip_time_act: bool,
    /// How `temb` is injected.
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// The output is `(shortcut + h) / output_scale_factor`.
    pub output_scale_factor: f64,
    /// Force (or forbid) the 1×1 `conv_shortcut`; `None` means "when channels change".
    pub use_in_shortcut: Option<bool>,
    /// Whether `conv_shortcut` has a bias.
    pub conv_shortcut_bias: bool,
    /// Output channels of `conv2`; `None` means `out_channels`.
    pub conv_2d_out_channels: Option<usize>,
}

impl Default for ResnetBlock2DConfig {
    fn default() -> Self {
        Self {
            out_channels: None,
            temb_channels: Some(512),
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            non_linearity: Activation::Silu,
            skip_time_act: false,
            time_embedding_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
            use_in_shortcut: None,
            conv_shortcut_bias: true,
            conv_2d_out_channels: None,
        }
    }
}

/// 3×3 convolution with padding 1, the UNet's and VAE's default convolution.
pub(crate) fn conv3x3(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig { padding: 1, ..Default::default() };
    Ok(kairos_kernels::nn::conv2d(in_channels, out_channels, 3, cfg, vb)?)
}

/// `act(norm(xs))`, with GroupNorm and SiLU fused into one pass when the activation is SiLU.
pub(crate) fn norm_act(norm: &GroupNorm, act: Activation, xs: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => norm.forward_silu(xs)?,
        _ => act.forward(&norm.forward(xs)?)?,
    })
}

/// `ResnetBlock2D`: two GroupNorm → activation → 3×3 conv stages, time embedding added between
/// them, and a residual connection (through a 1×1 conv when channels change).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    nonlinearity: Activation,
    skip_time_act: bool,
    time_embedding_norm: TimeEmbeddingNorm,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Builds the block under `vb` (the diffusers module path, e.g. `down_blocks.0.resnets.1`).
    pub fn new(vb: VarBuilder, in_channels: usize, config: &ResnetBlock2DConfig) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let groups_out = config.groups_out.unwrap_or(config.groups);
        let norm1 = kairos_kernels::nn::group_norm(config.groups, in_channels, config.eps, vb.pp("norm1"))?;
        let conv1 = conv3x3(vb.pp("conv1"), in_channels, out_channels)?;
        let time_emb_proj = match config.temb_channels {
            None => None,
            Some(temb_channels) => {
                let width = match config.time_embedding_norm {
                    TimeEmbeddingNorm::Default => out_channels,
                    TimeEmbeddingNorm::ScaleShift => 2 * out_channels,
                };
                Some(kairos_kernels::nn::linear(temb_channels, width, vb.pp("time_emb_proj"))?)
            }
        };
        let norm2 = kairos_kernels::nn::group_norm(groups_out, out_channels, config.eps, vb.pp("norm2"))?;
        let conv_2d_out_channels = config.conv_2d_out_channels.unwrap_or(out_channels);
        let conv2 = conv3x3(vb.pp("conv2"), out_channels, conv_2d_out_channels)?;
        let use_in_shortcut = config.use_in_shortcut.unwrap_or(in_channels != conv_2d_out_channels);
        let conv_shortcut = if use_in_shortcut {
            let vb = vb.pp("conv_shortcut");
            let cfg = Conv2dConfig::default();
            Some(if config.conv_shortcut_bias {
                kairos_kernels::nn::conv2d(in_channels, conv_2d_out_channels, 1, cfg, vb)?
            } else {
                kairos_kernels::nn::conv2d_no_bias(in_channels, conv_2d_out_channels, 1, cfg, vb)?
            })
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            nonlinearity: config.non_linearity,
            skip_time_act: config.skip_time_act,
            time_embedding_norm: config.time_embedding_norm,
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// `input_tensor` `[N, C_in, H, W]`, `temb` `[N, temb_channels]` → `[N, C_out, H, W]`.
    pub fn forward(&self, input_tensor: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let act = self.nonlinearity;
        let hidden_states = norm_act(&self.norm1, act, input_tensor)?;
        let mut hidden_states = self.conv1.forward(&hidden_states)?;

        // [N, C'] -> [N, C', 1, 1], as diffusers' `[:, :, None, None]`.
        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let temb = if self.skip_time_act { temb.clone() } else { act.forward(temb)? };
                Some(proj.forward(&temb)?.unsqueeze(2)?.unsqueeze(3)?)
            }
            _ => None,
        };

        // norm2 and the activation (fused for Default, whose activation directly follows norm2).
        hidden_states = match (self.time_embedding_norm, temb) {
            (TimeEmbeddingNorm::Default, Some(temb)) => {
                norm_act(&self.norm2, act, &hidden_states.broadcast_add(&temb)?)?
            }
            (TimeEmbeddingNorm::Default, None) => norm_act(&self.norm2, act, &hidden_states)?,
            (TimeEmbeddingNorm::ScaleShift, Some(temb)) => {
                let chunks = temb.chunk(2, 1)?;
                let (time_scale, time_shift) = (&chunks[0], &chunks[1]);
                act.forward(
                    &self
                        .norm2
                        .forward(&hidden_states)?
                        .broadcast_mul(&(time_scale + 1.0)?)?
                        .broadcast_add(time_shift)?,
                )?
            }
            (TimeEmbeddingNorm::ScaleShift, None) => {
                return Err(ModelError::MissingInput { name: "temb", reason: "time_embedding_norm is scale_shift" })
            }
        };

        let input_tensor = match &self.conv_shortcut {
            Some(conv) => conv.forward(input_tensor)?,
            None => input_tensor.clone(),
        };
        // shortcut + conv2(h), the add in conv2's stores where a fused kernel runs it.
        let output = self.conv2.forward_residual(&hidden_states, &input_tensor)?;
        Ok(if self.output_scale_factor == 1.0 { output } else { (output / self.output_scale_factor)? })
    }
}

/// `Downsample2D`: a stride-2 convolution (`use_conv`) or a 2×2 average pool.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Option<Conv2d>,
    /// With padding 0, diffusers pads right and bottom by one before the convolution (VAE).
    pad_right_bottom: bool,
}

impl Downsample2D {
    /// Builds the sampler under `vb`; `use_conv` selects the 3×3 stride-2 convolution
    /// (`conv`, with `padding`), otherwise `channels == out_channels` is required.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        use_conv: bool,
        out_channels: Option<usize>,
        padding: usize,
    ) -> Result<Self> {
        let out_channels = out_channels.unwrap_or(channels);
        if use_conv {
            let cfg = Conv2dConfig { padding, stride: 2, ..Default::default() };
            let conv = kairos_kernels::nn::conv2d(channels, out_channels, 3, cfg, vb.pp("conv"))?;
            Ok(Self { conv: Some(conv), pad_right_bottom: padding == 0 })
        } else if channels != out_channels {
            Err(ModelError::InvalidConfig {
                field: "out_channels",
                reason: format!(
                    "Downsample2D without a convolution keeps the channels ({channels}), got {out_channels}"
                ),
            })
        } else {
            Ok(Self { conv: None, pad_right_bottom: false })
        }
    }

    /// `[N, C, H, W]` → `[N, C_out, H/2, W/2]`.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        match &self.conv {
            Some(conv) => {
                let hidden_states = if self.pad_right_bottom {
                    hidden_states.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?
                } else {
                    hidden_states.clone()
                };
                Ok(conv.forward(&hidden_states)?)
            }
            None => Ok(hidden_states.avg_pool2d(2)?),
        }
    }
}

/// `Upsample2D`: nearest-neighbour ×2 (or to `output_size`), then an optional 3×3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Option<Conv2d>,
}

impl Upsample2D {
    /// Builds the sampler under `vb`; `use_conv` adds the 3×3 convolution `conv` (padding 1).
    pub fn new(vb: VarBuilder, channels: usize, use_conv: bool, out_channels: Option<usize>) -> Result<Self> {
        let out_channels = out_channels.unwrap_or(channels);
        let conv = if use_conv { Some(conv3x3(vb.pp("conv"), channels, out_channels)?) } else { None };
        Ok(Self { conv })
    }

    /// `[N, C, H, W]` → `[N, C_out, 2H, 2W]`, or `[N, C_out, h, w]` for `output_size = (h, w)`
    /// (the UNet passes the skip connection's size when the latent is not a multiple of 2^k).
    pub fn forward(&self, hidden_states: &Tensor, output_size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = hidden_states.dims4()?;
        let (out_h, out_w) = output_size.unwrap_or((2 * h, 2 * w));
        let hidden_states = kairos_kernels::upsample_nearest2d(hidden_states, out_h, out_w)?;
        Ok(match &self.conv {
            Some(conv) => conv.forward(&hidden_states)?,
            None => hidden_states,
        })
    }
}
