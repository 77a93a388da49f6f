//! Mirrors diffusers 0.42.1 `models/autoencoders/autoencoder_tiny.py` (`AutoencoderTiny`), with
//! `EncoderTiny` / `DecoderTiny` from `autoencoders/vae.py` and `AutoencoderTinyBlock` from
//! `unets/unet_2d_blocks.py`: madebyollin's TAESD / TAESDXL.
//!
//! Conventions (as diffusers): `encode` takes images in [−1, 1] (mapped to TAESD's [0, 1]
//! inside) and returns latents that are already in the UNet's scale (`scaling_factor` 1.0:
//! TAESD latent ≈ 0.18215·z for SD1, 0.13025·z for SDXL); `decode` takes such latents, applies
//! the `tanh(x/3)·3` clamp and returns images in [−1, 1].
//!
//! Differences:
//! - `forward` (the 8-bit latent round trip used for training) and diffusers' mask-blended
//!   `_tiled_encode`/`_tiled_decode` are absent (TAESD's README advises against tiling it).
//! - Only `upsample_fn = "nearest"`.
//! - [`load_tiny_state_dict`] also reads madebyollin's own files (`taesd_encoder.pth`,
//!   `taesdxl_decoder.safetensors`, ComfyUI's `taesd_decoder.*` prefixed dicts) and renames their
//!   `nn.Sequential` indices to diffusers' `encoder.layers.{i}` / `decoder.layers.{i}`.
//!
//! Also here: [`LatentRgbFactors`], the per-format linear latent → RGB approximation that
//! ComfyUI uses for zero-cost previews.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};
use kairos_kernels::nn::Conv2d;
use serde::Deserialize;

use crate::activations::Activation;
use crate::error::{ModelError, Result};
use crate::resnet::conv3x3;

/// The `AutoencoderTiny` config, deserialized from diffusers' `config.json` with diffusers'
/// defaults (which are TAESD's and TAESDXL's architecture) for absent fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderTinyConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each encoder stage.
    #[serde(default = "sixty_four_x4")]
    pub encoder_block_out_channels: Vec<usize>,
    /// Channels of each decoder stage.
    #[serde(default = "sixty_four_x4")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Activation in the blocks and after the decoder's input conv.
    #[serde(default = "relu")]
    pub act_fn: String,
    /// Upsampling mode; only `nearest`.
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    /// Latent channels (4 for TAESD/TAESDXL).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// Upsampling factor between decoder stages.
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    /// `AutoencoderTinyBlock`s per encoder stage (each stage after the first starts with a
    /// stride-2 conv).
    #[serde(default = "enc_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    /// `AutoencoderTinyBlock`s per decoder stage.
    #[serde(default = "dec_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// Latent magnitude of [`AutoencoderTiny::scale_latents`].
    #[serde(default = "three_f")]
    pub latent_magnitude: f64,
    /// Latent shift of [`AutoencoderTiny::scale_latents`].
    #[serde(default = "half")]
    pub latent_shift: f64,
    /// 1.0: TAESD latents are already in the UNet's scale.
    #[serde(default = "one_f")]
    pub scaling_factor: f64,
    /// 0.0 for TAESD/TAESDXL.
    #[serde(default)]
    pub shift_factor: f64,
}

fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn sixty_four_x4() -> Vec<usize> {
    vec![64; 4]
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}
fn enc_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn dec_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn three_f() -> f64 {
    3.0
}
fn half() -> f64 {
    0.5
}
fn one_f() -> f64 {
    1.0
}

impl Default for AutoencoderTinyConfig {
    /// TAESD / TAESDXL (diffusers' defaults).
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: sixty_four_x4(),
            decoder_block_out_channels: sixty_four_x4(),
            act_fn: relu(),
            upsample_fn: nearest(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: enc_blocks(),
            num_decoder_blocks: dec_blocks(),
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl AutoencoderTinyConfig {
    /// Parses a diffusers `config.json` value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        Ok(Self::deserialize(value)?)
    }

    fn check(&self) -> Result<Activation> {
        for (field, channels, blocks) in [
            ("num_encoder_blocks", &self.encoder_block_out_channels, &self.num_encoder_blocks),
            ("num_decoder_blocks", &self.decoder_block_out_channels, &self.num_decoder_blocks),
        ] {
            if channels.is_empty() || channels.len() != blocks.len() {
                return Err(ModelError::InvalidConfig {
                    field,
                    reason: format!(
                        "has {} entries, the block_out_channels list has {} (must be equal and \
                         non-zero)",
                        blocks.len(),
                        channels.len()
                    ),
                });
            }
        }
        if self.upsample_fn != "nearest" {
            return Err(ModelError::Unsupported {
                field: "upsample_fn",
                value: self.upsample_fn.clone(),
                supported: "nearest",
            });
        }
        Activation::from_name("act_fn", &self.act_fn)
    }
}

/// `AutoencoderTinyBlock`: `fuse(conv(x) + skip(x))`, where `conv` is conv–act–conv–act–conv
/// (3×3) and `skip` a bias-free 1×1 conv when the channels change; `fuse` is always ReLU.
#[derive(Debug, Clone)]
pub struct AutoencoderTinyBlock {
    conv: [Conv2d; 3],
    skip: Option<Conv2d>,
    act: Activation,
}

impl AutoencoderTinyBlock {
    /// Builds the block under `vb` (`conv.0`, `conv.2`, `conv.4`, `skip`).
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, act: Activation) -> Result<Self> {
        let conv = vb.pp("conv");
        let skip = if in_channels != out_channels {
            Some(kairos_kernels::nn::conv2d_no_bias(in_channels, out_channels, 1, Default::default(), vb.pp("skip"))?)
        } else {
            None
        };
        Ok(Self {
            conv: [
                conv3x3(conv.pp("0"), in_channels, out_channels)?,
                conv3x3(conv.pp("2"), out_channels, out_channels)?,
                conv3x3(conv.pp("4"), out_channels, out_channels)?,
            ],
            skip,
            act,
        })
    }

    /// `[N, C_in, H, W]` → `[N, C_out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.conv[0].forward(x)?)?;
        let h = self.act.forward(&self.conv[1].forward(&h)?)?;
        let h = self.conv[2].forward(&h)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok((h + skip)?.relu()?)
    }
}

/// One entry of the `layers` `nn.Sequential`.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Block(AutoencoderTinyBlock),
    Act(Activation),
    /// Nearest-neighbour upsampling by this factor.
    Upsample(usize),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Conv(conv) => Ok(conv.forward(x)?),
            Self::Block(block) => block.forward(x),
            Self::Act(act) => act.forward(x),
            Self::Upsample(f) => {
                let (_, _, h, w) = x.dims4()?;
                Ok(kairos_kernels::upsample_nearest2d(x, h * f, w * f)?)
            }
        }
    }
}

fn run(layers: &[Layer], x: Tensor) -> Result<Tensor> {
    layers.iter().try_fold(x, |x, layer| layer.forward(&x))
}

/// `EncoderTiny`: images in [−1, 1] → latents. Stage `i` is a conv (the input conv for `i = 0`,
/// a bias-free stride-2 conv after) followed by `num_blocks[i]` blocks; a final conv gives the
/// latent channels.
#[derive(Debug, Clone)]
pub struct EncoderTiny {
    layers: Vec<Layer>,
}

impl EncoderTiny {
    /// Builds the encoder under `vb` (`encoder`), layer `k` at `layers.{k}`.
    pub fn new(vb: VarBuilder, config: &AutoencoderTinyConfig) -> Result<Self> {
        let act = config.check()?;
        let vb = vb.pp("layers");
        let mut layers = Vec::new();
        let channels = &config.encoder_block_out_channels;
        for (i, (&num_block, &c)) in config.num_encoder_blocks.iter().zip(channels).enumerate() {
            let conv = if i == 0 {
                conv3x3(vb.pp(layers.len()), config.in_channels, c)?
            } else {
                let cfg = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
                kairos_kernels::nn::conv2d_no_bias(c, c, 3, cfg, vb.pp(layers.len()))?
            };
            layers.push(Layer::Conv(conv));
            for _ in 0..num_block {
                let block = AutoencoderTinyBlock::new(vb.pp(layers.len()), c, c, act)?;
                layers.push(Layer::Block(block));
            }
        }
        // `check` proved the list non-empty.
        let last = channels[channels.len() - 1];
        let conv_out = conv3x3(vb.pp(layers.len()), last, config.latent_channels)?;
        layers.push(Layer::Conv(conv_out));
        Ok(Self { layers })
    }

    /// `[N, C_in, H, W]` in [−1, 1] → `[N, latent, H/2^k, W/2^k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [−1, 1] → TAESD's [0, 1].
        run(&self.layers, ((x + 1.0)? / 2.0)?)
    }
}

/// `DecoderTiny`: latents → images in [−1, 1]. `tanh(x/3)·3` clamp, input conv and activation,
/// then per stage `num_blocks[i]` blocks, an upsample (not after the last stage) and a conv
/// (bias-free except the last, which gives the image channels).
#[derive(Debug, Clone)]
pub struct DecoderTiny {
    layers: Vec<Layer>,
}

impl DecoderTiny {
    /// Builds the decoder under `vb` (`decoder`), layer `k` at `layers.{k}`.
    pub fn new(vb: VarBuilder, config: &AutoencoderTinyConfig) -> Result<Self> {
        let act = config.check()?;
        let vb = vb.pp("layers");
        let channels = &config.decoder_block_out_channels;
        let mut layers = vec![Layer::Conv(conv3x3(vb.pp(0), config.latent_channels, channels[0])?), Layer::Act(act)];
        let n = channels.len();
        for (i, (&num_block, &c)) in config.num_decoder_blocks.iter().zip(channels).enumerate() {
            let is_final_block = i == n - 1;
            for _ in 0..num_block {
                let block = AutoencoderTinyBlock::new(vb.pp(layers.len()), c, c, act)?;
                layers.push(Layer::Block(block));
            }
            if !is_final_block {
                layers.push(Layer::Upsample(config.upsampling_scaling_factor));
            }
            let conv = if is_final_block {
                conv3x3(vb.pp(layers.len()), c, config.out_channels)?
            } else {
                let cfg = Conv2dConfig { padding: 1, ..Default::default() };
                kairos_kernels::nn::conv2d_no_bias(c, c, 3, cfg, vb.pp(layers.len()))?
            };
            layers.push(Layer::Conv(conv));
        }
        Ok(Self { layers })
    }

    /// `[N, latent, h, w]` → `[N, C_out, h·2^k, w·2^k]` in [−1, 1] (not clamped).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let x = run(&self.layers, x)?;
        // TAESD's [0, 1] → [−1, 1].
        Ok(x.affine(2.0, -1.0)?)
    }
}

/// `AutoencoderTiny` (TAESD, TAESDXL): a 1.2 M + 1.2 M parameter approximation of the SD VAE
/// working directly on UNet-scale latents.
#[derive(Debug, Clone)]
pub struct AutoencoderTiny {
    encoder: EncoderTiny,
    decoder: DecoderTiny,
    config: AutoencoderTinyConfig,
}

impl AutoencoderTiny {
    /// Builds the model from `vb` with diffusers' keys (`encoder.layers.*`, `decoder.layers.*`).
    pub fn new(vb: VarBuilder, config: &AutoencoderTinyConfig) -> Result<Self> {
        Ok(Self {
            encoder: EncoderTiny::new(vb.pp("encoder"), config)?,
            decoder: DecoderTiny::new(vb.pp("decoder"), config)?,
            config: config.clone(),
        })
    }

    /// Loads TAESD/TAESDXL from one diffusers `diffusion_pytorch_model.safetensors` or from
    /// madebyollin's encoder and decoder files (see [`load_tiny_state_dict`]).
    /// `AutoencoderTinyConfig::default()` is the architecture of TAESD and TAESDXL.
    pub fn load(paths: &[&Path], config: &AutoencoderTinyConfig, dtype: DType, device: &Device) -> Result<Self> {
        let tensors = load_tiny_state_dict(paths)?;
        Self::new(VarBuilder::from_tensors(tensors, dtype, device), config)
    }

    /// The config the model was built from.
    pub fn config(&self) -> &AutoencoderTinyConfig {
        &self.config
    }

    /// Images `[N, C, H, W]` in [−1, 1] → UNet-scale latents `[N, latent, H/8, W/8]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, "x", self.config.in_channels)?;
        self.encoder.forward(x)
    }

    /// UNet-scale latents `[N, latent, h, w]` → images `[N, C, 8h, 8w]` in about [−1, 1].
    pub fn decode(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x, "x", self.config.latent_channels)?;
        self.decoder.forward(x)
    }

    /// Latents → [0, 1] for storing as 8-bit images: `clamp(x / (2·magnitude) + shift, 0, 1)`.
    pub fn scale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.config.latent_magnitude;
        Ok(x.affine(1.0 / (2.0 * m), self.config.latent_shift)?.clamp(0f32, 1f32)?)
    }

    /// Inverse of [`AutoencoderTiny::scale_latents`] (without the clamp): `(x − shift)·2·magnitude`.
    pub fn unscale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let m = 2.0 * self.config.latent_magnitude;
        Ok(x.affine(m, -self.config.latent_shift * m)?)
    }
}

fn check_input(x: &Tensor, name: &'static str, channels: usize) -> Result<()> {
    match x.dims4() {
        Ok((_, c, _, _)) if c == channels => Ok(()),
        _ => Err(ModelError::BadInput { name, expected: format!("[N, {channels}, H, W]"), got: x.dims().to_vec() }),
    }
}

/// Reads TAESD weights and renames them to diffusers' `AutoencoderTiny` keys. Accepted, in
/// `.safetensors` or `.pth`/`.pt`/`.ckpt` (read as data, never executed):
/// - diffusers: `encoder.layers.{i}.…`, `decoder.layers.{i}.…` (one file);
/// - madebyollin's `taesd_encoder` / `taesd_decoder` (and `taesdxl_*`) files: bare
///   `nn.Sequential` indices. The decoder's index 0 is the weightless clamp, so its layer `k`
///   is diffusers' `k − 1`; a file is a decoder when it has `1.weight` but no `0.weight`;
/// - a whole madebyollin `TAESD` module (`encoder.{i}`, `decoder.{i}`) or ComfyUI's
///   (`taesd_encoder.{i}`, `taesd_decoder.{i}`; its scalar `vae_scale`/`vae_shift` are skipped).
///
/// Several files are merged (typically an encoder and a decoder).
pub fn load_tiny_state_dict(paths: &[&Path]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in paths {
        let raw = read_tensors(path)?;
        let keys: Vec<&String> = raw.keys().collect();
        let has = |k: &str| raw.contains_key(k);
        // (prefix in the file, diffusers prefix, index offset)
        let rules: Vec<(&str, &str, usize)> =
            if keys.iter().any(|k| k.starts_with("encoder.layers.") || k.starts_with("decoder.layers.")) {
                vec![("encoder.layers.", "encoder.layers.", 0), ("decoder.layers.", "decoder.layers.", 0)]
            } else if keys.iter().any(|k| k.starts_with("taesd_encoder.") || k.starts_with("taesd_decoder.")) {
                vec![("taesd_encoder.", "encoder.layers.", 0), ("taesd_decoder.", "decoder.layers.", 1)]
            } else if keys.iter().any(|k| k.starts_with("encoder.") || k.starts_with("decoder.")) {
                vec![("encoder.", "encoder.layers.", 0), ("decoder.", "decoder.layers.", 1)]
            } else if has("0.weight") {
                vec![("", "encoder.layers.", 0)]
            } else if has("1.weight") {
                vec![("", "decoder.layers.", 1)]
            } else {
                return Err(ModelError::UnrecognisedLayout {
                    path: path.to_path_buf(),
                    expected: "TAESD weights: diffusers `encoder.layers.N` / `decoder.layers.N`, or \
                           madebyollin's `N.weight` encoder / decoder files"
                        .into(),
                    examples: keys.iter().take(5).map(|k| k.to_string()).collect(),
                });
            };
        // ComfyUI's TAESD module stores its latent scale and shift as scalars beside the layers;
        // kairos applies latent scaling outside the model.
        for (key, tensor) in raw.iter().filter(|(k, _)| !matches!(k.as_str(), "vae_scale" | "vae_shift")) {
            let renamed = rules.iter().find_map(|(from, to, offset)| {
                let rest = key.strip_prefix(from)?;
                let (index, tail) = rest.split_once('.')?;
                let index: usize = index.parse().ok()?;
                Some(format!("{to}{}.{tail}", index.checked_sub(*offset)?))
            });
            match renamed {
                Some(name) => {
                    out.insert(name, tensor.clone());
                }
                None => {
                    return Err(ModelError::UnrecognisedLayout {
                        path: path.to_path_buf(),
                        expected: format!(
                            "keys starting with one of {:?} followed by a layer index",
                            rules.iter().map(|r| r.0).collect::<Vec<_>>()
                        ),
                        examples: vec![key.clone()],
                    })
                }
            }
        }
    }
    Ok(out)
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(ModelError::FileNotFound { path: path.to_path_buf() });
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let corrupt = |e: candle_core::Error| ModelError::Corrupt { path: path.to_path_buf(), reason: e.to_string() };
    match extension.as_str() {
        "safetensors" => {
            crate::loading::bounds::check_safetensors_file(path)?;
            candle_core::safetensors::load(path, &Device::Cpu).map_err(corrupt)
        }
        "pth" | "pt" | "ckpt" | "bin" => {
            crate::loading::bounds::check_zip_file(path)?;
            Ok(candle_core::pickle::read_all(path).map_err(corrupt)?.into_iter().collect())
        }
        _ => Err(ModelError::UnknownExtension { path: path.to_path_buf(), extension }),
    }
}

/// A linear latent → RGB map, `rgb = latent · factors + bias` per pixel, for previews that cost
/// one small matmul. Values are ComfyUI's `latent_formats.py` (v0.24.1), fitted on UNet-scale
/// latents (what the sampler's x0 is); the output is in about [−1, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentRgbFactors {
    /// SD 1.x / 2.x (`latent_formats.SD15`).
    Sd15,
    /// SDXL (`latent_formats.SDXL`, with bias).
    Sdxl,
}

impl LatentRgbFactors {
    /// `[latent channel][R, G, B]`.
    pub fn factors(self) -> [[f32; 3]; 4] {
        match self {
            Self::Sd15 => [
                [0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177],
            ],
            Self::Sdxl => [
                [0.3651, 0.4232, 0.4341],
                [-0.2533, -0.0042, 0.1068],
                [0.1076, 0.1111, -0.0362],
                [-0.3165, -0.2492, -0.2188],
            ],
        }
    }

    /// Per-channel RGB bias.
    pub fn bias(self) -> [f32; 3] {
        match self {
            Self::Sd15 => [0.0; 3],
            Self::Sdxl => [0.1084, -0.0175, -0.0011],
        }
    }

    /// UNet-scale latents `[N, 4, h, w]` → a preview `[N, 3, h, w]` in [0, 1] (ComfyUI's
    /// `preview_to_image` before the 8-bit cast: `clamp((rgb + 1)/2, 0, 1)`).
    pub fn preview(self, latents: &Tensor) -> Result<Tensor> {
        check_input(latents, "latents", 4)?;
        let device = latents.device();
        let factors = Tensor::new(&self.factors(), device)?.to_dtype(latents.dtype())?; // [4, 3]
        let bias = Tensor::new(&self.bias(), device)?.to_dtype(latents.dtype())?;
        // [N, 4, h, w] → [N, h, w, 4] · [4, 3] → [N, h, w, 3]
        let x = latents.permute((0, 2, 3, 1))?.contiguous()?;
        let rgb = x.broadcast_matmul(&factors)?.broadcast_add(&bias)?;
        let rgb = rgb.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(((rgb + 1.0)? / 2.0)?.clamp(0f32, 1f32)?)
    }
}
