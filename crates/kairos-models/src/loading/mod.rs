//! Loading Stable Diffusion checkpoints as people share them.
//!
//! - Single files (`.safetensors`, `.ckpt`, `.pt`, `.pth`) with the original LDM / A1111 key
//!   names, converted to diffusers names ([`ldm`] mirrors diffusers' `single_file_utils.py`),
//!   with the model configs derived from the tensor shapes.
//! - diffusers folders (`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/`),
//!   including `.fp16` variants.
//! - Standalone VAE files ([`load_vae_file`]), LDM or diffusers keys.
//!
//! Safetensors are memory-mapped; pickles are read as data with candle's unpickler (never
//! executed). Tensors are read lazily and converted to the compute dtype when a module is built
//! from [`Component::var_builder`]; fp32, fp16 and bf16 files all work.
//!
//! Every [`Component`] speaks diffusers key names: `unet` as `UNet2DConditionModel`, `vae` as
//! `AutoencoderKL`, `text_encoder` as transformers' `CLIPTextModel` with the `text_model.` prefix
//! (as in Hub files; transformers 5 dropped it from its own state dict).

pub mod bounds;
mod derive;
mod folder;
pub(crate) mod ldm;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use store::checked_shape;
pub use store::Component;

use ldm::KeyMap;
use store::OpenFile;

use crate::ModelError;

/// The model family of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD 1.x: CLIP ViT-L/14 text encoder, cross-attention width 768.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, linear projections, cross-attention width 1024.
    Sd2,
    /// SDXL base: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 (penultimate layers concatenated, 2048
    /// wide), pooled bigG text and size ids through the UNet's `text_time` embedding.
    Sdxl,
    /// SDXL refiner: OpenCLIP ViT-bigG/14 alone (1280 wide), pooled text and size/aesthetic ids.
    SdxlRefiner,
}

impl ModelFamily {
    /// The name `kairos inspect` and errors print.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD1",
            Self::Sd2 => "SD2",
            Self::Sdxl => "SDXL",
            Self::SdxlRefiner => "SDXL refiner",
        }
    }

    /// SDXL base or refiner.
    pub fn is_sdxl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlRefiner)
    }
}

/// What the UNet predicts, with diffusers' `prediction_type` spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise (`"epsilon"`).
    Epsilon,
    /// The velocity v = α·ε − σ·x₀ (`"v_prediction"`; SD2 768-v).
    VPrediction,
}

impl PredictionType {
    /// The diffusers `prediction_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "epsilon" => Some(Self::Epsilon),
            "v_prediction" => Some(Self::VPrediction),
            _ => None,
        }
    }
}

/// UNet attention heads, which weights do not record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnetHeads {
    /// The same number of heads in every block (SD1: 8). Written as an integer
    /// `attention_head_dim`, diffusers' (misnamed) spelling of a head count.
    Count(usize),
    /// A fixed width per head (SD2: 64), so heads = channels / width per block; written as the
    /// per-block list diffusers uses (`[5, 10, 20, 20]` for SD2).
    Channels(usize),
}

/// Config values a single file cannot tell. Defaults are those of every SD1/SD2/SDXL
/// checkpoint; change them only for non-standard (e.g. tiny test) models.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigHints {
    /// GroupNorm groups in UNet and VAE (32).
    pub norm_num_groups: usize,
    /// Width of a text-encoder attention head (64 for CLIP ViT-L/14 and OpenCLIP ViT-H/14 and
    /// ViT-bigG/14).
    pub clip_head_dim: usize,
    /// UNet heads; `None` means the family's (SD1: 8 heads, SD2 and SDXL: 64 channels per head).
    pub unet_heads: Option<UnetHeads>,
}

impl Default for ConfigHints {
    fn default() -> Self {
        Self { norm_num_groups: 32, clip_head_dim: 64, unet_heads: None }
    }
}

/// Options for [`load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Overrides the detected prediction type (e.g. an SD2-base checkpoint shared as
    /// .safetensors, which cannot be told from SD2-v by its weights).
    pub prediction_type: Option<PredictionType>,
    /// Values that single files do not record.
    pub hints: ConfigHints,
    /// diffusers folders: the weight variant to prefer (`"fp16"` picks
    /// `diffusion_pytorch_model.fp16.safetensors`). Without it the plain file is preferred and a
    /// variant is used only when it is the sole file.
    pub variant: Option<String>,
}

/// The models of an SD1/SD2/SDXL checkpoint, under diffusers key names.
#[derive(Debug, Clone)]
pub struct StableDiffusionWeights {
    /// The detected family.
    pub family: ModelFamily,
    /// Detected (or overridden) prediction type.
    pub prediction_type: PredictionType,
    /// `UNet2DConditionModel` weights and config.
    pub unet: Component,
    /// `AutoencoderKL` weights and config.
    pub vae: Component,
    /// The first (or only) text encoder: `CLIPTextModel` (SD1 and the SDXL base: CLIP-L; SD2:
    /// OpenCLIP-H), or for the SDXL refiner its only encoder, OpenCLIP-bigG as
    /// `CLIPTextModelWithProjection` (diffusers' `text_encoder_2`, named so in errors).
    pub text_encoder: Component,
    /// The SDXL base's second encoder, OpenCLIP-bigG as `CLIPTextModelWithProjection`.
    pub text_encoder_2: Option<Component>,
    /// A diffusers folder's `tokenizer/` (the refiner's `tokenizer_2/`): its
    /// `special_tokens_map.json` names the pad token; `None` for single files, which use the
    /// built-in CLIP vocabulary and the family's padding.
    pub tokenizer_dir: Option<PathBuf>,
    /// A diffusers SDXL folder's `tokenizer_2/`.
    pub tokenizer_2_dir: Option<PathBuf>,
    /// SDXL: an empty negative prompt conditions on zeros (diffusers'
    /// `force_zeros_for_empty_prompt`: the base's model_index says true, the refiner's false).
    pub force_zeros_for_empty_prompt: bool,
    /// SDXL refiner: its time ids carry an aesthetic score instead of the target size
    /// (`requires_aesthetics_score`).
    pub requires_aesthetics_score: bool,
    /// Top-level keys of a single file that belong to no model and were skipped (EMA copies,
    /// training buffers such as `alphas_cumprod`, ...), for the caller to report.
    pub skipped_keys: Vec<String>,
}

/// Loads a single-file checkpoint or a diffusers folder.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<StableDiffusionWeights, ModelError> {
    let path = path.as_ref();
    if path.is_dir() {
        return folder::load(path, opts);
    }
    load_single_file(path, opts)
}

/// Keys of LDM training buffers and EMA copies that single files carry and inference ignores.
fn is_training_only(key: &str) -> bool {
    const BUFFERS: &[&str] = &[
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
    ];
    // `v_pred`/`ztsnr`: marker tensors of v-prediction SDXL files (ComfyUI reads them).
    BUFFERS.contains(&key)
        || matches!(key, "v_pred" | "ztsnr")
        || key.starts_with("model_ema.")
        || key.starts_with("first_stage_model.loss.")
}

/// The text-encoder layouts a single file can hold.
enum SingleFileEncoders {
    Sd1,
    Sd2,
    Sdxl,
    SdxlRefiner,
}

fn load_single_file(path: &Path, opts: &LoadOptions) -> Result<StableDiffusionWeights, ModelError> {
    let file = OpenFile::open(path)?;
    let has = |prefix: &str| file.tensors.keys().any(|k| k.starts_with(prefix));
    // SGM (generative-models) layout first: diffusers' `infer_diffusers_model_type` checks the
    // SDXL encoders before the SD1/SD2 ones.
    let encoders = if has(ldm::SDXL_OPEN_CLIP_PREFIX) {
        if !has(ldm::SDXL_CLIP_PREFIX) {
            return Err(missing_part(&file, ldm::SDXL_CLIP_PREFIX, "the SDXL base's CLIP ViT-L/14 text encoder"));
        }
        SingleFileEncoders::Sdxl
    } else if has(ldm::SDXL_REFINER_OPEN_CLIP_PREFIX) {
        SingleFileEncoders::SdxlRefiner
    } else if has(ldm::SDXL_CLIP_PREFIX) {
        return Err(missing_part(
            &file,
            ldm::SDXL_OPEN_CLIP_PREFIX,
            "the SDXL base's OpenCLIP ViT-bigG/14 text encoder",
        ));
    } else if has(ldm::CLIP_PREFIX) {
        SingleFileEncoders::Sd1
    } else if has(ldm::OPEN_CLIP_PREFIX) {
        SingleFileEncoders::Sd2
    } else {
        return Err(layout_error(&file));
    };
    let family = match encoders {
        SingleFileEncoders::Sd1 => ModelFamily::Sd1,
        SingleFileEncoders::Sd2 => ModelFamily::Sd2,
        SingleFileEncoders::Sdxl => ModelFamily::Sdxl,
        SingleFileEncoders::SdxlRefiner => ModelFamily::SdxlRefiner,
    };
    let vae_prefix = ldm::VAE_PREFIXES.iter().copied().find(|p| has(p));
    if !has(ldm::UNET_PREFIX) {
        return Err(missing_part(&file, ldm::UNET_PREFIX, "the UNet"));
    }
    let Some(vae_prefix) = vae_prefix else {
        return Err(missing_part(&file, ldm::VAE_PREFIXES[0], "the VAE"));
    };
    // diffusers (`_legacy_load_scheduler`): SD2 is v-prediction unless it is SD2-base, whose
    // training checkpoint stopped at global_step 875000. SDXL files mark v-prediction with a
    // `v_pred` key (ComfyUI's convention; diffusers' configs say epsilon).
    let detected = match (family, file.global_step) {
        (ModelFamily::Sd2, Some(875_000)) | (ModelFamily::Sd1, _) => PredictionType::Epsilon,
        (ModelFamily::Sd2, _) => PredictionType::VPrediction,
        (_, _) if file.tensors.contains_key("v_pred") => PredictionType::VPrediction,
        (_, _) => PredictionType::Epsilon,
    };
    let prediction_type = opts.prediction_type.unwrap_or(detected);

    let text_prefixes: &[&str] = match encoders {
        SingleFileEncoders::Sd1 => &[ldm::CLIP_PREFIX],
        SingleFileEncoders::Sd2 => &[ldm::OPEN_CLIP_PREFIX],
        SingleFileEncoders::Sdxl => &[ldm::SDXL_CLIP_PREFIX, ldm::SDXL_OPEN_CLIP_PREFIX],
        SingleFileEncoders::SdxlRefiner => &[ldm::SDXL_REFINER_OPEN_CLIP_PREFIX],
    };
    let skipped_keys = file
        .tensors
        .keys()
        .filter(|k| ![ldm::UNET_PREFIX, vae_prefix].iter().chain(text_prefixes).any(|p| k.starts_with(p)))
        .cloned()
        .collect::<Vec<_>>();
    let unknown: Vec<String> = skipped_keys.iter().filter(|k| !is_training_only(k)).take(5).cloned().collect();
    if !unknown.is_empty() {
        return Err(ModelError::UnrecognisedLayout {
            path: path.to_path_buf(),
            expected: single_file_expected().into(),
            examples: unknown,
        });
    }

    let files = vec![Arc::new(file)];
    let unet_map = ldm::convert_unet(&files, 0)?;
    let vae_map = ldm::convert_vae(&files, 0, vae_prefix)?;
    let hints = &opts.hints;
    let open_clip = |prefix| ldm::convert_open_clip(&files, 0, prefix, ldm::OpenClipUse::Sdxl);
    let (te_map, te2_map) = match encoders {
        SingleFileEncoders::Sd1 => (ldm::convert_clip(&files, 0, ldm::CLIP_PREFIX)?, None),
        SingleFileEncoders::Sd2 => {
            (ldm::convert_open_clip(&files, 0, ldm::OPEN_CLIP_PREFIX, ldm::OpenClipUse::Sd2)?, None)
        }
        SingleFileEncoders::Sdxl => {
            (ldm::convert_clip(&files, 0, ldm::SDXL_CLIP_PREFIX)?, Some(open_clip(ldm::SDXL_OPEN_CLIP_PREFIX)?))
        }
        SingleFileEncoders::SdxlRefiner => (open_clip(ldm::SDXL_REFINER_OPEN_CLIP_PREFIX)?, None),
    };
    // The pooled text the UNet's `text_time` embedding takes: bigG's projection.
    let pooled_map = if family == ModelFamily::SdxlRefiner { Some(&te_map) } else { te2_map.as_ref() };
    let unet_config = derive::unet_config(&unet_map, family, prediction_type, pooled_map, hints)?;
    let vae_config = derive::vae_config(&vae_map, family, hints)?;
    let te_config = derive::text_encoder_config(&te_map, family, family == ModelFamily::SdxlRefiner, hints)?;
    let text_encoder_2 = te2_map
        .map(|map| {
            let config = derive::text_encoder_config(&map, family, true, hints)?;
            Ok::<_, ModelError>(Component::new("text_encoder_2", config, files.clone(), map))
        })
        .transpose()?;
    let te_name = if family == ModelFamily::SdxlRefiner { "text_encoder_2" } else { "text_encoder" };
    Ok(StableDiffusionWeights {
        family,
        prediction_type,
        unet: Component::new("unet", unet_config, files.clone(), unet_map),
        vae: Component::new("vae", vae_config, files.clone(), vae_map),
        text_encoder: Component::new(te_name, te_config, files, te_map),
        text_encoder_2,
        tokenizer_dir: None,
        tokenizer_2_dir: None,
        // The published SDXL base and refiner model_index.json files.
        force_zeros_for_empty_prompt: family == ModelFamily::Sdxl,
        requires_aesthetics_score: family == ModelFamily::SdxlRefiner,
        skipped_keys,
    })
}

/// A single file whose layout names one part of a checkpoint but lacks another.
fn missing_part(file: &OpenFile, prefix: &str, what: &str) -> ModelError {
    ModelError::UnrecognisedLayout {
        path: file.path.clone(),
        expected: format!("{what} under `{prefix}*` (the file looks truncated or is only part of a checkpoint)"),
        examples: file.tensors.keys().take(5).cloned().collect(),
    }
}

fn single_file_expected() -> &'static str {
    "an SD1/SD2 LDM or SDXL SGM checkpoint: model.diffusion_model.*, first_stage_model.* (or vae.*), \
     and cond_stage_model.transformer.* (SD1), cond_stage_model.model.* (SD2), \
     conditioner.embedders.0.transformer.* + conditioner.embedders.1.model.* (SDXL) or \
     conditioner.embedders.0.model.* (SDXL refiner)"
}

fn layout_error(file: &OpenFile) -> ModelError {
    ModelError::UnrecognisedLayout {
        path: file.path.clone(),
        expected: single_file_expected().into(),
        examples: file.tensors.keys().take(5).cloned().collect(),
    }
}

/// Loads a standalone VAE: a file (e.g. `vae-ft-mse-840000-ema-pruned.safetensors`) with LDM
/// keys (`encoder.down.0.block.0...`), optionally under `first_stage_model.` / `vae.`, or
/// diffusers keys (`encoder.down_blocks.0.resnets.0...`), whose config is derived from the shapes
/// (a file records no `scaling_factor`: the SD value 0.18215 is written, and `force_upcast`
/// is diffusers' default, true); or a diffusers `AutoencoderKL` folder (`config.json` and
/// `diffusion_pytorch_model[.fp16].safetensors`, e.g. madebyollin/sdxl-vae-fp16-fix), or a
/// model folder's `vae/`, whose config.json is used as is.
pub fn load_vae_file(path: impl AsRef<Path>, hints: &ConfigHints) -> Result<Component, ModelError> {
    let path = path.as_ref();
    if path.is_dir() {
        let dir = if path.join("config.json").is_file() { path.to_path_buf() } else { path.join("vae") };
        return folder::component_dir(&dir, "vae", "diffusion_pytorch_model", None);
    }
    let file = OpenFile::open(path)?;
    let prefix =
        ldm::VAE_PREFIXES.iter().copied().find(|p| file.tensors.keys().any(|k| k.starts_with(p))).unwrap_or("");
    let diffusers_layout = file.tensors.contains_key(&format!("{prefix}encoder.down_blocks.0.resnets.0.conv1.weight"));
    let files = vec![Arc::new(file)];
    let map: KeyMap =
        if diffusers_layout { folder::identity_map(&files, 0, prefix) } else { ldm::convert_vae(&files, 0, prefix)? };
    let config = derive::vae_config(&map, ModelFamily::Sd1, hints)?;
    Ok(Component::new("vae", config, files, map))
}
