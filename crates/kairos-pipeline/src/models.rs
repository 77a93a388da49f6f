//! The real networks from a checkpoint (`kairos_models::loading`) behind the pipeline's traits.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig};
use kairos_models::loading::{self, LoadOptions, ModelFamily, PredictionType, StableDiffusionWeights};
use kairos_models::prompt::PromptOptions;
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use kairos_models::unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_schedule::{DiscreteSchedule, Family, ModelSchedule, Prediction, TablePrecision};

use crate::conditioning::{ClipPromptEncoder, PromptSyntax};
use crate::denoiser::DiffusionModel;
use crate::image::LatentDecoder;
use crate::txt2img::Components;
use crate::PipelineError;

/// Which timestep the UNet is fed for a sigma between two training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestepMode {
    /// The log-sigma-interpolated fractional timestep: k-diffusion, A1111 (default), diffusers'
    /// Euler schedulers.
    #[default]
    Fractional,
    /// The nearest integer timestep: ComfyUI, Forge, and diffusers' DPM-Solver (which rounds).
    Quantized,
}

/// Options for [`StableDiffusion::load`].
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Checkpoint loading options (config hints for tiny models, diffusers variant).
    pub load: LoadOptions,
    /// Overrides the detected prediction type.
    pub prediction: Option<Prediction>,
    /// Timestep convention.
    pub timestep_mode: TimestepMode,
    /// How the training sigma table is rounded ([`TablePrecision::DiffusersF32`] reproduces
    /// diffusers' schedulers).
    pub table_precision: TablePrecision,
    /// Prompt syntax.
    pub prompt_syntax: PromptSyntax,
    /// A1111 prompt options; `clip_skip` applies to both syntaxes.
    pub prompt: PromptOptions,
    /// Compute dtype of the networks (the sampler state stays float32).
    pub dtype: DType,
    /// Compute device.
    pub device: Device,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            prediction: None,
            timestep_mode: TimestepMode::Fractional,
            table_precision: TablePrecision::DiffusersF32,
            prompt_syntax: PromptSyntax::A1111,
            prompt: PromptOptions::default(),
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// `UNet2DConditionModel` in its compute dtype as a [`DiffusionModel`] (float32 in and out).
pub struct Unet {
    unet: UNet2DConditionModel,
    dtype: DType,
}

impl DiffusionModel for Unet {
    fn predict(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> candle_core::Result<Tensor> {
        let out = self
            .unet
            .forward(&sample.to_dtype(self.dtype)?, timestep, &context.to_dtype(self.dtype)?, None)
            .map_err(candle_core::Error::wrap)?;
        out.to_dtype(DType::F32)
    }
}

/// `AutoencoderKL`'s decoder as a [`LatentDecoder`].
pub struct Vae {
    vae: AutoencoderKL,
    dtype: DType,
}

impl LatentDecoder for Vae {
    fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError> {
        // diffusers: vae.decode(latents / scaling_factor); a true division, as torch does it.
        let factor = Tensor::new(self.vae.config().scaling_factor as f32, latents.device())?;
        let z = latents.to_dtype(DType::F32)?.broadcast_div(&factor)?.to_dtype(self.dtype)?;
        Ok(self.vae.decode(&z)?.to_dtype(DType::F32)?)
    }

    fn latent_channels(&self) -> usize {
        self.vae.config().latent_channels
    }

    fn scale_factor(&self) -> usize {
        1 << self.vae.config().block_out_channels.len().saturating_sub(1)
    }
}

/// A loaded SD1/SD2 checkpoint, ready to run.
pub struct StableDiffusion {
    /// The family, for schedules (SD2 768-v vs SD2-base follows the prediction type).
    pub family: Family,
    /// What the UNet predicts (detected, or the override).
    pub prediction: Prediction,
    /// The UNet.
    pub unet: Unet,
    /// The VAE.
    pub vae: Vae,
    /// Text encoder and tokenizer.
    pub encoder: ClipPromptEncoder,
    /// The training schedule with the timestep convention applied.
    pub schedule: ModelSchedule,
    /// Where the networks run.
    pub device: Device,
}

/// The kairos-schedule prediction of the loader's detected type.
fn prediction_of(p: PredictionType) -> Prediction {
    match p {
        PredictionType::Epsilon => Prediction::Epsilon,
        PredictionType::VPrediction => Prediction::VPrediction,
    }
}

/// The tokenizer's pad token: the folder's `special_tokens_map.json` if it has one, else the
/// family's (SD1 `<|endoftext|>`, SD2 `!`).
fn pad_token(weights: &StableDiffusionWeights) -> Result<PadToken, PipelineError> {
    let default = match weights.family {
        ModelFamily::Sd1 => PadToken::EndOfText,
        ModelFamily::Sd2 => PadToken::Exclamation,
    };
    let Some(dir) = &weights.tokenizer_dir else { return Ok(default) };
    let path = dir.join("special_tokens_map.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(default) };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        PipelineError::Model(kairos_models::ModelError::ConfigFile { path: path.clone(), reason: e.to_string() })
    })?;
    let pad = &json["pad_token"];
    match pad.as_str().or_else(|| pad["content"].as_str()) {
        Some(token) => Ok(PadToken::from_token(token)?),
        None => Ok(default),
    }
}

impl StableDiffusion {
    /// Loads a single-file checkpoint or a diffusers folder and builds the networks.
    pub fn load(path: impl AsRef<Path>, opts: &ModelOptions) -> Result<Self, PipelineError> {
        let weights = loading::load(path, &opts.load)?;
        let prediction = opts.prediction.unwrap_or(prediction_of(weights.prediction_type));
        let family = match (weights.family, prediction) {
            (ModelFamily::Sd1, _) => Family::Sd1,
            (ModelFamily::Sd2, Prediction::Epsilon) => Family::Sd2Base,
            (ModelFamily::Sd2, _) => Family::Sd2,
        };
        let (dtype, device) = (opts.dtype, &opts.device);
        let unet_config = UNet2DConditionModelConfig::from_json(&weights.unet.config.to_string())?;
        let unet = UNet2DConditionModel::new(weights.unet.var_builder(dtype, device), &unet_config)?;
        let vae_config = AutoencoderKLConfig::from_json(&weights.vae.config)?;
        let vae = AutoencoderKL::new(weights.vae.var_builder(dtype, device), &vae_config)?;
        let te_config = CLIPTextConfig::from_json(&weights.text_encoder.config.to_string())?;
        let text_encoder = CLIPTextModel::new(weights.text_encoder.var_builder(dtype, device), &te_config)?;
        let tokenizer = CLIPTokenizer::new(pad_token(&weights)?)?;
        let quantize = opts.timestep_mode == TimestepMode::Quantized;
        Ok(Self {
            family,
            prediction,
            unet: Unet { unet, dtype },
            vae: Vae { vae, dtype },
            encoder: ClipPromptEncoder::new(text_encoder, tokenizer, opts.prompt_syntax, opts.prompt),
            schedule: ModelSchedule::Discrete(DiscreteSchedule::sd(opts.table_precision).with_quantize(quantize)),
            device: device.clone(),
        })
    }

    /// The components for [`crate::txt2img`].
    pub fn components(&self) -> Components<'_> {
        Components {
            model: &self.unet,
            encoder: &self.encoder,
            decoder: &self.vae,
            family: self.family,
            schedule: self.schedule.clone(),
            prediction: self.prediction,
            device: self.device.clone(),
        }
    }
}
