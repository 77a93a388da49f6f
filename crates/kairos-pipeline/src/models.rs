//! The real networks from a checkpoint (`kairos_models::loading`) behind the pipeline's traits.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kairos_kernels::nn::activation_dtype;
use kairos_models::autoencoders::autoencoder_tiny::{load_tiny_state_dict, DecoderTiny};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, AutoencoderTinyConfig, TilingOptions};
use kairos_models::lcm::{lcm_time_cond_proj_dim, LcmOptions};
use kairos_models::loading::{self, LoadOptions, ModelFamily, PredictionType};
use kairos_models::lora::{self, LoraFile, LoraUse, MergeOptions};
use kairos_models::prompt::PromptOptions;
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken};
use kairos_models::unets::unet_2d_condition::{AddedCond, UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_schedule::{DiscreteSchedule, Family, ModelSchedule, Prediction, TablePrecision};

use crate::conditioning::{ClipPromptEncoder, PromptEmbeds, PromptEncoder, PromptSyntax, SdxlPromptEncoder};
use crate::denoiser::{Conditioning, DiffusionModel};
use crate::image::{LatentDecoder, LatentEncoder};
use crate::txt2img::{Components, TimeIds};
use crate::PipelineError;
use kairos_models::autoencoders::DiagonalGaussianDistribution;

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
    /// A standalone VAE file (LDM or diffusers keys) that replaces the checkpoint's VAE, as
    /// A1111's `--vae`/"SD VAE" setting.
    pub vae: Option<PathBuf>,
    /// LoRAs merged into the UNet and text encoder (in order) before the networks are built.
    pub loras: Vec<LoraWeights>,
    /// When and how the VAE tiles its decode and encode.
    pub vae_tiling: TilingOptions,
    /// Dtype the network weights are stored in (the sampler state stays float32). On the CPU,
    /// bf16 and f16 weights compute with float32 activations
    /// ([`kairos_kernels::nn::activation_dtype`]): bf16 convolutions and linear layers run the
    /// bf16 GEMM (bf16 inputs, f32 sums) where the CPU has AVX512-BF16; f16 weights are
    /// widened to f32 per layer call. Elsewhere everything computes in this dtype. Which of f32
    /// and bf16 is faster depends on the CPU: [`crate::dtype_auto`] measures it (the CLI's
    /// `--dtype auto`).
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
            vae: None,
            loras: Vec::new(),
            vae_tiling: TilingOptions::default(),
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// One LoRA to merge at load time (`--lora FILE:STRENGTH`, or a `<lora:NAME:TE:UNET>` tag).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// Multiplier of the UNet deltas.
    pub unet_strength: f64,
    /// Multiplier of the text-encoder deltas.
    pub text_encoder_strength: f64,
}

/// What kind of consistency-distilled model was loaded, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcmKind {
    /// An LCM-distilled UNet (guidance embedding of this width, `time_cond_proj_dim`).
    Unet {
        /// `time_cond_proj_dim`.
        time_cond_proj_dim: usize,
    },
    /// An ordinary UNet with a LoRA that looks like an LCM-LoRA merged
    /// ([`LoraFile::looks_like_lcm_lora`]).
    Lora,
}

/// `UNet2DConditionModel` in its compute dtype as a [`DiffusionModel`] (float32 in and out).
pub struct Unet {
    unet: UNet2DConditionModel,
    dtype: DType,
}

impl Unet {
    /// Wraps a built UNet that computes in `dtype` (inputs are converted to it: the
    /// [`kairos_kernels::nn::activation_dtype`] of its weights).
    pub fn new(unet: UNet2DConditionModel, dtype: DType) -> Self {
        Self { unet, dtype }
    }
}

impl DiffusionModel for Unet {
    fn predict(
        &self,
        sample: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        timestep_cond: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let timestep_cond = timestep_cond.map(|c| c.to_dtype(self.dtype)).transpose()?;
        // The time ids stay float32: diffusers projects them sinusoidally in float32 whatever the
        // UNet's dtype.
        let text_embeds = cond.added.as_ref().map(|a| a.text_embeds.to_dtype(self.dtype)).transpose()?;
        let added = cond
            .added
            .as_ref()
            .zip(text_embeds.as_ref())
            .map(|(a, text_embeds)| AddedCond { text_embeds, time_ids: &a.time_ids });
        let out = self
            .unet
            .forward(
                &sample.to_dtype(self.dtype)?,
                timestep,
                &cond.context.to_dtype(self.dtype)?,
                timestep_cond.as_ref(),
                added.as_ref(),
            )
            .map_err(candle_core::Error::wrap)?;
        out.to_dtype(DType::F32)
    }

    fn time_cond_proj_dim(&self) -> Option<usize> {
        self.unet.config().time_cond_proj_dim
    }
}

/// `AutoencoderKL`'s decoder as a [`LatentDecoder`] (and its encoder as a [`LatentEncoder`]),
/// tiled as its [`TilingOptions`] say.
pub struct Vae {
    vae: AutoencoderKL,
    dtype: DType,
    tiling: TilingOptions,
}

impl Vae {
    /// Wraps a built VAE whose weights are in `dtype` (inputs are converted to it, outputs back
    /// to float32), with the default tiling (512-pixel tiles when the untiled pass is estimated
    /// above 4 GiB of activations).
    pub fn new(vae: AutoencoderKL, dtype: DType) -> Self {
        Self { vae, dtype, tiling: TilingOptions::default() }
    }

    /// The same VAE with other tiling options.
    pub fn with_tiling(self, tiling: TilingOptions) -> Self {
        Self { tiling, ..self }
    }

    /// The compute dtype (float32 for a `force_upcast` VAE whatever the model's dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The VAE's config.
    pub fn config(&self) -> &AutoencoderKLConfig {
        self.vae.config()
    }
}

impl LatentDecoder for Vae {
    fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError> {
        // diffusers: vae.decode(latents / scaling_factor); a true division, as torch does it.
        let factor = Tensor::new(self.vae.config().scaling_factor as f32, latents.device())?;
        let z = latents.to_dtype(DType::F32)?.broadcast_div(&factor)?.to_dtype(self.dtype)?;
        Ok(self.vae.decode_with(&z, &self.tiling)?.to_dtype(DType::F32)?)
    }

    fn latent_channels(&self) -> usize {
        self.vae.config().latent_channels
    }

    fn scale_factor(&self) -> usize {
        1 << self.vae.config().block_out_channels.len().saturating_sub(1)
    }
}

impl LatentEncoder for Vae {
    fn encode(&self, images: &Tensor) -> Result<DiagonalGaussianDistribution, PipelineError> {
        let posterior = self.vae.encode_with(&images.to_dtype(self.dtype)?, &self.tiling)?;
        Ok(DiagonalGaussianDistribution {
            mean: posterior.mean.to_dtype(DType::F32)?,
            logvar: posterior.logvar.to_dtype(DType::F32)?,
            std: posterior.std.to_dtype(DType::F32)?,
        })
    }

    fn scaling_factor(&self) -> f64 {
        self.vae.config().scaling_factor
    }
}

/// TAESD's decoder (`AutoencoderTiny`) as a [`LatentDecoder`]: a fast approximation of the VAE
/// that reads UNet-scale latents directly (its scaling factor is 1).
pub struct Taesd {
    decoder: DecoderTiny,
    config: AutoencoderTinyConfig,
    dtype: DType,
}

impl Taesd {
    /// Loads TAESD from a diffusers `AutoencoderTiny` folder (`config.json` and
    /// `diffusion_pytorch_model.safetensors`) or from one weights file (madebyollin's
    /// `taesd_decoder.pth`/`.safetensors`, a whole TAESD, or diffusers' file), which has the
    /// TAESD/TAESDXL architecture.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self, PipelineError> {
        let (weights, config) = if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .map_err(|_| kairos_models::ModelError::FileNotFound { path: config_path.clone() })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                kairos_models::ModelError::ConfigFile { path: config_path.clone(), reason: e.to_string() }
            })?;
            (path.join("diffusion_pytorch_model.safetensors"), AutoencoderTinyConfig::from_json(&json)?)
        } else {
            (path.to_path_buf(), AutoencoderTinyConfig::default())
        };
        let tensors = load_tiny_state_dict(&[weights.as_path()])?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let dtype = activation_dtype(dtype, device);
        Ok(Self { decoder: DecoderTiny::new(vb.pp("decoder"), &config)?, config, dtype })
    }
}

impl LatentDecoder for Taesd {
    fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError> {
        Ok(self.decoder.forward(&latents.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?)
    }

    fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    fn scale_factor(&self) -> usize {
        let stages = self.config.decoder_block_out_channels.len().saturating_sub(1);
        self.config.upsampling_scaling_factor.pow(stages as u32)
    }
}

/// A loaded SD1/SD2/SDXL checkpoint, ready to run.
pub struct StableDiffusion {
    /// The checkpoint's family (SDXL base or refiner included).
    pub model_family: ModelFamily,
    /// The family, for schedules (SD2 768-v vs SD2-base follows the prediction type).
    pub family: Family,
    /// SDXL: the time ids its UNet takes.
    pub time_ids: Option<TimeIds>,
    /// What the UNet predicts (detected, or the override).
    pub prediction: Prediction,
    /// The UNet.
    pub unet: Unet,
    /// The VAE.
    pub vae: Vae,
    /// Text encoder and tokenizer, or the prompts they encoded before being dropped.
    pub encoder: PromptSource,
    /// The training schedule with the timestep convention applied.
    pub schedule: ModelSchedule,
    /// `Some` for an LCM UNet or an LCM-LoRA: the run uses LCM's boundary conditions.
    pub lcm: Option<LcmKind>,
    /// Where the networks run.
    pub device: Device,
    /// The dtype the network weights are stored in ([`ModelOptions::dtype`]; the infotext's
    /// `Dtype`).
    pub dtype: DType,
}

/// The kairos-schedule prediction of the loader's detected type.
fn prediction_of(p: PredictionType) -> Prediction {
    match p {
        PredictionType::Epsilon => Prediction::Epsilon,
        PredictionType::VPrediction => Prediction::VPrediction,
    }
}

/// A tokenizer's pad token: its folder's `special_tokens_map.json` if it has one, else
/// `default` (SD1 and SDXL's `tokenizer`: `<|endoftext|>`; SD2 and SDXL's `tokenizer_2`: `!`).
fn pad_token(dir: Option<&Path>, default: PadToken) -> Result<PadToken, PipelineError> {
    let Some(dir) = dir else { return Ok(default) };
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

/// A replacement VAE must produce the latents the UNet was trained on: as many channels as the
/// UNet takes, and the checkpoint VAE's scaling factor (the UNet-scale latent statistics).
fn check_vae_fits(
    path: &Path,
    vae: &AutoencoderKLConfig,
    checkpoint_vae: &AutoencoderKLConfig,
    unet_in_channels: usize,
) -> Result<(), PipelineError> {
    let mismatch = |what: &'static str, vae: String, model: String| PipelineError::VaeMismatch {
        path: path.to_path_buf(),
        what,
        vae,
        model,
    };
    if vae.latent_channels != unet_in_channels {
        return Err(mismatch("latent channels", vae.latent_channels.to_string(), unet_in_channels.to_string()));
    }
    if vae.scaling_factor != checkpoint_vae.scaling_factor {
        return Err(mismatch(
            "scaling factor",
            vae.scaling_factor.to_string(),
            checkpoint_vae.scaling_factor.to_string(),
        ));
    }
    Ok(())
}

/// The dtype a VAE runs in for a model running in `dtype`: float32 when the VAE's config asks
/// for an upcast (diffusers' `force_upcast`), else `dtype`.
fn vae_compute_dtype(config: &AutoencoderKLConfig, dtype: DType) -> DType {
    if config.force_upcast {
        DType::F32
    } else {
        dtype
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
            (ModelFamily::Sdxl | ModelFamily::SdxlRefiner, _) => Family::Sdxl,
        };
        let time_ids = match (weights.family, weights.requires_aesthetics_score) {
            (ModelFamily::Sdxl | ModelFamily::SdxlRefiner, false) => Some(TimeIds::Sizes),
            (ModelFamily::Sdxl | ModelFamily::SdxlRefiner, true) => Some(TimeIds::Aesthetic),
            _ => None,
        };
        let (dtype, device) = (opts.dtype, &opts.device);
        let files = opts.loras.iter().map(|l| LoraFile::open(&l.path)).collect::<Result<Vec<_>, _>>()?;
        let uses: Vec<LoraUse<'_>> = files
            .iter()
            .zip(&opts.loras)
            .map(|(file, l)| LoraUse {
                file,
                unet_strength: l.unet_strength,
                text_encoder_strength: l.text_encoder_strength,
            })
            .collect();
        let merged = lora::merge(
            &weights.unet,
            &weights.text_encoder,
            weights.text_encoder_2.as_ref(),
            &uses,
            &MergeOptions::default(),
        )?;
        let lcm = match lcm_time_cond_proj_dim(&weights.unet) {
            Some(time_cond_proj_dim) => Some(LcmKind::Unet { time_cond_proj_dim }),
            None => files.iter().any(LoraFile::looks_like_lcm_lora).then_some(LcmKind::Lora),
        };
        let unet_config = UNet2DConditionModelConfig::from_json(&weights.unet.config.to_string())?;
        let unet = UNet2DConditionModel::new(merged.unet.var_builder(dtype, device), &unet_config)?;
        let checkpoint_vae = AutoencoderKLConfig::from_json(&weights.vae.config)?;
        let (vae_weights, vae_config) = match &opts.vae {
            None => (weights.vae.clone(), checkpoint_vae),
            Some(path) => {
                let mut file = loading::load_vae_file(path, &opts.load.hints)?;
                if !path.is_dir() {
                    // A single file records no scaling factor: it takes the model's, as A1111
                    // loads a VAE file into the checkpoint's first stage. A folder's config.json
                    // says which latents it was made for, and is checked.
                    file.config["scaling_factor"] = serde_json::json!(checkpoint_vae.scaling_factor);
                }
                let config = AutoencoderKLConfig::from_json(&file.config)?;
                check_vae_fits(path, &config, &checkpoint_vae, unet_config.in_channels)?;
                (file, config)
            }
        };
        // diffusers' pipelines run a `force_upcast` VAE (SD's and SDXL's, whose float16
        // activations overflow) in float32 when the rest runs in half precision.
        let vae_dtype = vae_compute_dtype(&vae_config, dtype);
        let vae = AutoencoderKL::new(vae_weights.var_builder(vae_dtype, device), &vae_config)?;
        let te_config = CLIPTextConfig::from_json(&weights.text_encoder.config.to_string())?;
        let te_vb = merged.text_encoder.var_builder(dtype, device);
        let tokenizer_dir = weights.tokenizer_dir.as_deref();
        let encoder: Box<dyn PromptEncoder + Send + Sync> = match weights.family {
            ModelFamily::Sd1 | ModelFamily::Sd2 => {
                let default =
                    if weights.family == ModelFamily::Sd1 { PadToken::EndOfText } else { PadToken::Exclamation };
                Box::new(ClipPromptEncoder::new(
                    CLIPTextModel::new(te_vb, &te_config)?,
                    CLIPTokenizer::new(pad_token(tokenizer_dir, default)?)?,
                    opts.prompt_syntax,
                    opts.prompt,
                ))
            }
            ModelFamily::Sdxl => {
                let te2 = merged.text_encoder_2.as_ref().ok_or_else(|| {
                    PipelineError::Model(kairos_models::ModelError::MissingWeight {
                        component: "text_encoder_2".into(),
                        key: "text_model.embeddings.token_embedding.weight".into(),
                    })
                })?;
                let te2_config = CLIPTextConfig::from_json(&te2.base().config.to_string())?;
                let clip_l = CLIPTextModel::new(te_vb, &te_config)?;
                let tokenizer_l = CLIPTokenizer::new(pad_token(tokenizer_dir, PadToken::EndOfText)?)?;
                let pad_g = pad_token(weights.tokenizer_2_dir.as_deref(), PadToken::Exclamation)?;
                Box::new(SdxlPromptEncoder::new(
                    Some((clip_l, tokenizer_l)),
                    CLIPTextModelWithProjection::new(te2.var_builder(dtype, device), &te2_config)?,
                    CLIPTokenizer::new(pad_g)?,
                    opts.prompt_syntax,
                    opts.prompt,
                    weights.force_zeros_for_empty_prompt,
                ))
            }
            ModelFamily::SdxlRefiner => Box::new(SdxlPromptEncoder::new(
                None,
                CLIPTextModelWithProjection::new(te_vb, &te_config)?,
                CLIPTokenizer::new(pad_token(tokenizer_dir, PadToken::Exclamation)?)?,
                opts.prompt_syntax,
                opts.prompt,
                weights.force_zeros_for_empty_prompt,
            )),
        };
        let quantize = opts.timestep_mode == TimestepMode::Quantized;
        let compute = activation_dtype(dtype, device);
        Ok(Self {
            model_family: weights.family,
            family,
            time_ids,
            prediction,
            unet: Unet::new(unet, compute),
            vae: Vae::new(vae, activation_dtype(vae_dtype, device)).with_tiling(opts.vae_tiling),
            encoder: PromptSource::Encoder(encoder),
            schedule: ModelSchedule::Discrete(DiscreteSchedule::sd(opts.table_precision).with_quantize(quantize)),
            lcm,
            device: device.clone(),
            dtype,
        })
    }

    /// Encodes `prompts` (each with its SDXL second prompt) now and drops the text encoders
    /// (`--low-memory`: their weights are freed before sampling); from then on only these
    /// prompts can be encoded.
    pub fn encode_and_drop_text_encoder(&mut self, prompts: &[(&str, Option<&str>)]) -> Result<(), PipelineError> {
        let embeds = prompts
            .iter()
            .map(|&(p, p2)| Ok(((p.to_string(), p2.map(str::to_string)), self.encoder.encode(p, p2)?)))
            .collect::<Result<Vec<_>, PipelineError>>()?;
        let zeros_for_empty_negative = self.encoder.zeros_for_empty_negative();
        self.encoder = PromptSource::Encoded { embeds, zeros_for_empty_negative };
        Ok(())
    }

    /// The components for [`crate::txt2img`].
    pub fn components(&self) -> Components<'_> {
        Components {
            model: &self.unet,
            encoder: &self.encoder,
            decoder: &self.vae,
            image_encoder: &self.vae,
            family: self.family,
            time_ids: self.time_ids,
            schedule: self.schedule.clone(),
            prediction: self.prediction,
            consistency: self.lcm.map(|_| LcmOptions::default()),
            device: self.device.clone(),
        }
    }
}

/// Where prompt embeddings come from.
pub enum PromptSource {
    /// The text encoder(s).
    Encoder(Box<dyn PromptEncoder + Send + Sync>),
    /// Embeddings computed before the text encoders were dropped, by (prompt, prompt_2).
    Encoded {
        /// The embeddings of each prompt pair.
        embeds: Vec<((String, Option<String>), PromptEmbeds)>,
        /// The dropped encoder's [`PromptEncoder::zeros_for_empty_negative`].
        zeros_for_empty_negative: bool,
    },
}

impl PromptEncoder for PromptSource {
    fn encode(&self, prompt: &str, prompt_2: Option<&str>) -> Result<PromptEmbeds, PipelineError> {
        match self {
            PromptSource::Encoder(encoder) => encoder.encode(prompt, prompt_2),
            PromptSource::Encoded { embeds, .. } => {
                match embeds.iter().find(|((p, p2), _)| p == prompt && p2.as_deref() == prompt_2) {
                    Some((_, t)) => Ok(t.clone()),
                    None => Err(PipelineError::TextEncoderDropped { prompt: prompt.to_string() }),
                }
            }
        }
    }

    fn zeros_for_empty_negative(&self) -> bool {
        match self {
            PromptSource::Encoder(encoder) => encoder.zeros_for_empty_negative(),
            PromptSource::Encoded { zeros_for_empty_negative, .. } => *zeros_for_empty_negative,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(latent_channels: usize, scaling_factor: f64) -> AutoencoderKLConfig {
        let json = serde_json::json!({ "latent_channels": latent_channels, "scaling_factor": scaling_factor });
        AutoencoderKLConfig::from_json(&json).unwrap()
    }

    /// TAESD through the pipeline's decoder trait against diffusers' `AutoencoderTiny.decode` on
    /// kairos-models' TAESD fixture (tools/fixtures/taesd.py), from the diffusers folder and from
    /// madebyollin's decoder file. Tolerance 1e-5 of the output's range, the fixture's: the same
    /// f32 convolutions summed in another order, about 12 layers deep.
    #[test]
    fn taesd_decodes_as_diffusers() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/taesd");
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let want = &io["decoded_z"];
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let folder = Taesd::load(&dir.join("diffusers"), DType::F32, &Device::Cpu).unwrap();
        assert_eq!((folder.scale_factor(), folder.latent_channels()), (4, 4));
        let got = folder.decode(&io["z"]).unwrap();
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
        assert!(err < 1e-5, "relative max error {err}");
        // The decoder file alone takes TAESD's default architecture, which the tiny test
        // weights do not have: a clear shape error, not a panic.
        let err = Taesd::load(&dir.join("taesd_decoder.pth"), DType::F32, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("shape"), "{err}");
    }

    fn max_rel(got: &Tensor, want: &Tensor) -> f32 {
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn cosine(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (norm(&a) * norm(&b))
    }

    /// The SDXL-style VAE of kairos-models' fixtures (tools/fixtures/vae.py: scaling factor
    /// 0.13025, force_upcast false as sdxl-vae-fp16-fix) through the pipeline's scaling:
    /// decode(z / 0.13025) and mean · 0.13025 as diffusers, within 1e-5 of the output's range
    /// (the fixture's tolerance: the same f32 ops summed in another order). In float16 the decode
    /// is finite and within cosine 0.9995 of torch's float16 decode (style guide, f16); latents
    /// that overflow float16 are reported instead of written as a black image.
    #[test]
    fn sdxl_vae_scales_as_diffusers_and_reports_f16_overflow() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/vae");
        let io = candle_core::safetensors::load(dir.join("sdxl_io.safetensors"), &Device::Cpu).unwrap();
        let component = loading::load_vae_file(dir.join("sdxl_tiny"), &Default::default()).unwrap();
        let sdxl = AutoencoderKLConfig::from_json(&component.config).unwrap();
        assert_eq!(vae_compute_dtype(&sdxl, DType::F16), DType::F16, "fp16-fix: no upcast");
        assert_eq!(vae_compute_dtype(&config(4, 0.18215), DType::F16), DType::F32, "SD's VAE upcasts");
        // As `StableDiffusion::load` builds it: the weights in `dtype`, activations in its CPU
        // activation dtype (f32 for f16 weights).
        let build = |dtype| {
            let vae = AutoencoderKL::new(component.var_builder(dtype, &Device::Cpu), &sdxl).unwrap();
            Vae::new(vae, activation_dtype(dtype, &Device::Cpu))
        };
        let vae = build(DType::F32);
        assert_eq!(vae.scaling_factor(), 0.13025);
        let err = max_rel(&vae.decode(&io["z_unet"]).unwrap(), &io["decoded_unet"]);
        assert!(err < 1e-5, "decode {err:e}");
        let mean = LatentEncoder::encode(&vae, &io["x"]).unwrap().mean;
        let err = max_rel(&(mean * vae.scaling_factor()).unwrap(), &io["unet_latent"]);
        assert!(err < 1e-5, "encode {err:e}");

        let half = build(DType::F16);
        let decoded = half.decode(&io["z_unet"]).unwrap();
        crate::image::ensure_finite(&decoded).unwrap();
        let cos = cosine(&decoded, &io["decoded_unet_f16"]);
        assert!(cos >= 0.9995, "f16 cosine {cos}");
        // f32 activations do not overflow on the CPU; a non-finite latent stands in for an
        // f16 overflow on a GPU.
        let huge = (&io["z_unet"] * f64::INFINITY).unwrap();
        let err = crate::image::ensure_finite(&half.decode(&huge).unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("VAE produced NaN: use a float32 VAE or sdxl-vae-fp16-fix"), "{err}");
    }

    /// After `--low-memory` dropped the text encoder, the prompts encoded before are served and
    /// any other prompt is a clear error.
    #[test]
    fn encoded_prompts_serve_only_their_prompts() {
        let cat = Tensor::ones((1, 77, 8), DType::F32, &Device::Cpu).unwrap();
        let embeds = |t: &Tensor| PromptEmbeds { context: t.clone(), pooled: None };
        let source = PromptSource::Encoded {
            embeds: vec![
                (("a cat".into(), None), embeds(&cat)),
                ((String::new(), None), embeds(&cat.zeros_like().unwrap())),
            ],
            zeros_for_empty_negative: false,
        };
        let got = source.encode("a cat", None).unwrap().context;
        assert_eq!(got.to_vec3::<f32>().unwrap(), cat.to_vec3::<f32>().unwrap());
        assert_eq!(source.encode("", None).unwrap().context.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert!(source.encode("a cat", Some("other")).is_err(), "prompt_2 is part of the key");
        let err = source.encode("a dog", None).unwrap_err().to_string();
        assert!(err.contains("`a dog`") && err.contains("without --low-memory"), "{err}");
    }

    #[test]
    fn replacement_vae_must_fit_the_unet() {
        let path = Path::new("sdxl_vae.safetensors");
        let sd = config(4, 0.18215);
        assert!(check_vae_fits(path, &sd, &sd, 4).is_ok());
        let err = check_vae_fits(path, &config(4, 0.13025), &sd, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VAE sdxl_vae.safetensors does not fit this model: its scaling factor is 0.13025, the model \
             needs 0.18215 (use a VAE made for this model family)"
        );
        let err = check_vae_fits(path, &config(16, 0.18215), &sd, 4).unwrap_err();
        assert!(err.to_string().contains("its latent channels is 16, the model needs 4"), "{err}");
    }
}
