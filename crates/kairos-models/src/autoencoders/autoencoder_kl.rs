//! Mirrors diffusers 0.42.1 `models/autoencoders/autoencoder_kl.py` (`AutoencoderKL`).
//!
//! Differences:
//! - `encode` returns the [`DiagonalGaussianDistribution`] directly and `decode` the image
//!   tensor (no output dataclasses, no `return_dict`).
//! - Tiling is in `tiling.rs` (`decode_with`/`encode_with`, `tiled_decode`/`tiled_encode`);
//!   slicing (`enable_slicing`) is not implemented.
//! - `forward` (encode, sample, decode in one call; training) is absent.
//! - `force_upcast` is kept in the config for the pipeline; the model computes in the dtype of
//!   its `VarBuilder`.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use kairos_kernels::nn::Conv2d;
use serde::Deserialize;

use super::vae::{CoderConfig, Decoder, DiagonalGaussianDistribution, Encoder};
use crate::activations::Activation;
use crate::error::{ModelError, Result};

/// The `AutoencoderKL` config, deserialized from diffusers' `vae/config.json` with diffusers'
/// defaults for absent fields. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Encoder blocks; only `DownEncoderBlock2D`.
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    /// Decoder blocks; only `UpDecoderBlock2D`.
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "default_boc")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block.
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Resnet activation.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// UNet latent = `scaling_factor` × VAE latent (0.18215 for SD1/SD2).
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    /// Latent shift (SD3, Flux); `None` for SD1/SD2.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (Playground v2.5); `None` for SD1/SD2.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std (Playground v2.5); `None` for SD1/SD2.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Whether pipelines should run this VAE in f32 even when the UNet is in f16.
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn sd_scaling() -> f64 {
    0.18215
}
fn default_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_boc() -> Vec<usize> {
    vec![64]
}

impl AutoencoderKLConfig {
    /// Parses a `vae/config.json` value (e.g. [`crate::loading::Component::config`]).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        Ok(Self::deserialize(value)?)
    }

    /// Checks the values kairos supports and that the lists agree.
    fn coder_config(&self) -> Result<CoderConfig> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(ModelError::InvalidConfig { field: "block_out_channels", reason: "must not be empty".into() });
        }
        for (field, types, want) in [
            ("down_block_types", &self.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(ModelError::InvalidConfig {
                    field,
                    reason: format!("has {} entries, block_out_channels has {n}", types.len()),
                });
            }
            if let Some(other) = types.iter().find(|t| *t != want) {
                return Err(ModelError::Unsupported { field, value: other.clone(), supported: want });
            }
        }
        if let Some(&c) =
            self.block_out_channels.iter().find(|&&c| self.norm_num_groups == 0 || c % self.norm_num_groups != 0)
        {
            return Err(ModelError::InvalidConfig {
                field: "norm_num_groups",
                reason: format!("{} does not divide the block channels ({c})", self.norm_num_groups),
            });
        }
        Ok(CoderConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: self.norm_num_groups,
            act_fn: Activation::from_name("act_fn", &self.act_fn)?,
            mid_block_add_attention: self.mid_block_add_attention,
        })
    }
}

/// `AutoencoderKL`: the SD VAE. `encode` maps images in [−1, 1] to the latent posterior,
/// `decode` maps (unscaled) latents back to images.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Builds the model from `vb` (keys as in diffusers' `vae/diffusion_pytorch_model`).
    pub fn new(vb: VarBuilder, config: &AutoencoderKLConfig) -> Result<Self> {
        let coder = config.coder_config()?;
        let latent = config.latent_channels;
        let conv1x1 = |name: &str, ch: usize| -> Result<Conv2d> {
            Ok(kairos_kernels::nn::conv2d(ch, ch, 1, Default::default(), vb.pp(name))?)
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config.in_channels, latent, &coder)?,
            decoder: Decoder::new(vb.pp("decoder"), latent, config.out_channels, &coder)?,
            quant_conv: if config.use_quant_conv { Some(conv1x1("quant_conv", 2 * latent)?) } else { None },
            post_quant_conv: if config.use_post_quant_conv { Some(conv1x1("post_quant_conv", latent)?) } else { None },
            config: config.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Images `[N, C_in, H, W]` in [−1, 1] → the latent posterior (`latent_dist`).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussianDistribution> {
        let (_, c, _, _) = x.dims4().map_err(|_| bad_input("x", "[N, C, H, W] images", x))?;
        if c != self.config.in_channels {
            return Err(bad_input("x", &format!("{} channels", self.config.in_channels), x));
        }
        let enc = self.encoder.forward(x)?;
        let enc = match &self.quant_conv {
            Some(conv) => conv.forward(&enc)?,
            None => enc,
        };
        DiagonalGaussianDistribution::new(&enc)
    }

    /// Latents `[N, latent, h, w]` (already divided by `scaling_factor`) → images
    /// `[N, C_out, h·f, w·f]`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4().map_err(|_| bad_input("z", "[N, C, h, w] latents", z))?;
        if c != self.config.latent_channels {
            return Err(bad_input("z", &format!("{} channels", self.config.latent_channels), z));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }
}

fn bad_input(name: &'static str, expected: &str, t: &Tensor) -> ModelError {
    ModelError::BadInput { name, expected: expected.to_string(), got: t.dims().to_vec() }
}
