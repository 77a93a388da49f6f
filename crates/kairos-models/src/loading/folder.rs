//! diffusers folders: `model_index.json` plus one folder per component holding `config.json`
//! and weights (`diffusion_pytorch_model[.variant].safetensors` for diffusers models,
//! `model[.variant].safetensors` for transformers models; `.bin` pickles as a fallback).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::store::{OpenFile, Source, Transform};
use super::{Component, KeyMap, LoadOptions, ModelFamily, PredictionType, StableDiffusionWeights};
use crate::ModelError;

fn read_json(path: &Path) -> Result<Value, ModelError> {
    if !path.is_file() {
        return Err(ModelError::FileNotFound { path: path.to_path_buf() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigFile { path: path.to_path_buf(), reason: e.to_string() })
}

/// Every stored key as is, minus `prefix`.
pub(crate) fn identity_map(files: &[Arc<OpenFile>], file: usize, prefix: &str) -> KeyMap {
    files[file]
        .tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix).map(|d| (d.to_string(), Source::new(files, file, k, Transform::Identity)))
        })
        .collect()
}

/// The weight file of a component folder, honouring the variant preference.
fn weight_file(dir: &Path, stem: &str, variant: Option<&str>) -> Result<PathBuf, ModelError> {
    let mut candidates = Vec::new();
    for ext in ["safetensors", "bin"] {
        let plain = dir.join(format!("{stem}.{ext}"));
        match variant {
            Some(v) => candidates.extend([dir.join(format!("{stem}.{v}.{ext}")), plain]),
            None => candidates.extend([plain, dir.join(format!("{stem}.fp16.{ext}"))]),
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    if dir.join(format!("{stem}.safetensors.index.json")).is_file() {
        return Err(ModelError::Unsupported {
            field: "weights",
            value: format!("sharded weights in {}", dir.display()),
            supported: "one diffusion_pytorch_model / model [.variant] .safetensors or .bin file per component",
        });
    }
    Err(ModelError::FileNotFound { path: candidates.swap_remove(0) })
}

fn component(root: &Path, name: &str, stem: &str, opts: &LoadOptions) -> Result<Component, ModelError> {
    component_dir(&root.join(name), name, stem, opts.variant.as_deref())
}

/// The component `name` stored in `dir` (`config.json` and `stem[.variant].safetensors`).
pub(crate) fn component_dir(
    dir: &Path,
    name: &str,
    stem: &str,
    variant: Option<&str>,
) -> Result<Component, ModelError> {
    let config = read_json(&dir.join("config.json"))?;
    let file = OpenFile::open(&weight_file(dir, stem, variant)?)?;
    let files = vec![Arc::new(file)];
    let mut map = identity_map(&files, 0, "");
    if name.starts_with("text_encoder") {
        // Files saved by transformers 5 lack the `text_model.` prefix that Hub files have.
        map = map
            .into_iter()
            .filter(|(k, _)| k != "text_model.embeddings.position_ids" && k != "embeddings.position_ids")
            .map(|(k, s)| {
                if k.starts_with("text_model.") || k == "text_projection.weight" {
                    (k, s)
                } else {
                    (format!("text_model.{k}"), s)
                }
            })
            .collect();
    }
    Ok(Component::new(name, config, files, map))
}

pub(crate) fn load(root: &Path, opts: &LoadOptions) -> Result<StableDiffusionWeights, ModelError> {
    let index_path = root.join("model_index.json");
    let index = read_json(&index_path)?;
    // A component entry is `["library", "Class"]`; an absent one (the SDXL refiner's
    // text_encoder) is `null` or `[null, null]`.
    let present = |part: &str| {
        index.get(part).is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => a.iter().any(|x| !x.is_null()),
            _ => true,
        })
    };
    let sdxl = present("text_encoder_2");
    let required: &[&str] = if sdxl { &["unet", "vae", "text_encoder_2"] } else { &["unet", "vae", "text_encoder"] };
    for part in required {
        if !present(part) {
            return Err(ModelError::ConfigFile { path: index_path, reason: format!("no `{part}` entry") });
        }
    }
    let unet = component(root, "unet", "diffusion_pytorch_model", opts)?;
    let vae = component(root, "vae", "diffusion_pytorch_model", opts)?;
    let (family, text_encoder, text_encoder_2) = if sdxl {
        let text_encoder_2 = component(root, "text_encoder_2", "model", opts)?;
        if present("text_encoder") {
            (ModelFamily::Sdxl, component(root, "text_encoder", "model", opts)?, Some(text_encoder_2))
        } else {
            (ModelFamily::SdxlRefiner, text_encoder_2, None)
        }
    } else {
        let text_encoder = component(root, "text_encoder", "model", opts)?;
        // OpenCLIP (SD2) uses gelu, OpenAI CLIP (SD1) quick_gelu.
        let family = match text_encoder.config.get("hidden_act").and_then(Value::as_str) {
            Some("gelu") => ModelFamily::Sd2,
            _ => ModelFamily::Sd1,
        };
        (family, text_encoder, None)
    };
    // As diffusers does: the scheduler config names the prediction type (default epsilon).
    let scheduler_path = root.join("scheduler").join("scheduler_config.json");
    let detected = if scheduler_path.is_file() {
        let cfg = read_json(&scheduler_path)?;
        match cfg.get("prediction_type").and_then(Value::as_str) {
            None => PredictionType::Epsilon,
            Some(s) => PredictionType::parse(s).ok_or_else(|| ModelError::Unsupported {
                field: "prediction_type",
                value: s.into(),
                supported: "epsilon, v_prediction",
            })?,
        }
    } else {
        PredictionType::Epsilon
    };
    let dir = |name: &str| Some(root.join(name)).filter(|d| d.is_dir());
    let (tokenizer_dir, tokenizer_2_dir) = match family {
        ModelFamily::SdxlRefiner => (dir("tokenizer_2"), None),
        ModelFamily::Sdxl => (dir("tokenizer"), dir("tokenizer_2")),
        _ => (dir("tokenizer"), None),
    };
    // The pipeline constructors' defaults: StableDiffusionXL(Img2Img)Pipeline's
    // `force_zeros_for_empty_prompt=True`, `requires_aesthetics_score=False`.
    let flag = |name: &str, default: bool| index.get(name).and_then(Value::as_bool).unwrap_or(default);
    Ok(StableDiffusionWeights {
        family,
        prediction_type: opts.prediction_type.unwrap_or(detected),
        unet,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer_dir,
        tokenizer_2_dir,
        force_zeros_for_empty_prompt: sdxl && flag("force_zeros_for_empty_prompt", true),
        requires_aesthetics_score: sdxl && flag("requires_aesthetics_score", false),
        skipped_keys: Vec::new(),
    })
}
