//! LoRA merging at load time: several LoRAs at once, each with its own strength, into the UNet
//! and the text encoders (SDXL: both), from the layouts people share (see the `keys` module for the layouts and
//! `delta` for the formulas: LoRA, LoCon, LoHa, LoKr, LyCORIS full diffs).
//!
//! W' = W + Σᵢ strengthᵢ · ΔWᵢ, added in float32 in the order the LoRAs are given, as diffusers'
//! `fuse_lora` does with several adapters. The base weights are never modified: a
//! [`MergedComponent`] reads the base [`Component`] (memory-mapped) and adds the deltas when a
//! weight is loaded, so switching LoRAs is building another `MergedComponent` from the same base
//! and gives back the base weights bit for bit, however often it is done.
//!
//! Strict by default: a key that fits no layout, names no layer of the model, or has the wrong
//! shape fails the merge with [`LoraError::Unapplicable`] listing every such key; with
//! [`MergeOptions::skip_unapplicable`] they are returned in [`MergeReport::skipped`] instead.
//!
//! Differences from diffusers 0.42.1 (found while writing the fixtures): diffusers applies one
//! alpha to every layer whose kohya name converts to an attention-processor name (`to_out_lora`,
//! `to_v_lora`) when a file's alphas differ per layer, and drops kohya text-encoder attention
//! LoRAs (`lora_te_..._self_attn_q_proj`) under transformers 5; kairos uses each layer's own alpha
//! and applies them, as kohya's and ComfyUI's loaders do.

mod delta;
mod error;
mod keys;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

pub use error::{LoraError, LoraProblem};
pub use keys::LoraTarget;
pub use spec::{extract_prompt_loras, resolve_lora, LoraSpec, PromptLora};

use crate::loading::Component;
use crate::ModelError;
use delta::Patch;
use keys::{LayerGroup, Resolver};

/// A LoRA file, read and grouped by layer (not yet matched to a model).
#[derive(Debug)]
pub struct LoraFile {
    path: PathBuf,
    layers: Vec<LayerGroup>,
    /// Keys that fit no layout.
    unparsed: Vec<LoraProblem>,
}

impl LoraFile {
    /// Reads a `.safetensors` LoRA file (the format every current trainer writes).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoraError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(ModelError::FileNotFound { path: path.to_path_buf() }.into());
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ext != "safetensors" {
            return Err(ModelError::UnknownExtension { path: path.to_path_buf(), extension: ext }.into());
        }
        crate::loading::bounds::check_safetensors_file(path)?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
        let (layers, unparsed) = keys::group(tensors);
        Ok(Self { path: path.to_path_buf(), layers, unparsed })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file patches `target` at all.
    pub fn targets(&self, target: LoraTarget) -> bool {
        self.layers.iter().any(|l| l.target == target)
    }

    /// Whether the keys look like an LCM-LoRA (latent-consistency/lcm-lora-sdv1-5 and
    /// lcm-lora-sdxl, the LoRAs of diffusers' `train_lcm_distill_lora_sd_wds.py` /
    /// `train_lcm_distill_lora_sdxl.py`, and kohya conversions of them with diffusers or SGM
    /// names): UNet only, and every layer kind those scripts train is present: attention
    /// projections and feed-forward, resnet `conv1`/`conv2`/`time_emb_proj`, and the down- and
    /// upsampler convs. A heuristic: a LoCon trained on the same layers without the text encoder
    /// looks the same; the caller decides what to do with it (switch to the `lcm` sampler,
    /// suggest guidance 1–2).
    pub fn looks_like_lcm_lora(&self) -> bool {
        if self.layers.is_empty() || self.layers.iter().any(|l| l.target != LoraTarget::Unet) {
            return false;
        }
        let names: Vec<String> = self.layers.iter().map(|l| keys::diffusers_like_name(&l.name)).collect();
        ["to_q", "ff_net_2", "conv1", "conv2", "time_emb_proj", "downsamplers_0_conv", "upsamplers_0_conv"]
            .iter()
            .all(|kind| names.iter().any(|n| n.ends_with(kind)))
    }
}

/// One LoRA to merge, with its strengths (A1111's `<lora:name:te:unet>` allows two).
#[derive(Debug, Clone, Copy)]
pub struct LoraUse<'a> {
    /// The file.
    pub file: &'a LoraFile,
    /// Multiplier for the UNet layers.
    pub unet_strength: f64,
    /// Multiplier for the text-encoder layers.
    pub text_encoder_strength: f64,
}

/// Options for [`merge`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Apply what can be applied and list the rest in [`MergeReport::skipped`] instead of failing.
    pub skip_unapplicable: bool,
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Layers patched, per file (in the order given), as (file, layers patched).
    pub applied: Vec<(PathBuf, usize)>,
    /// Keys not applied (only with [`MergeOptions::skip_unapplicable`]), per file.
    pub skipped: Vec<(PathBuf, Vec<LoraProblem>)>,
}

/// The UNet and text encoders with LoRAs merged (the fields of
/// [`StableDiffusionWeights`](crate::loading::StableDiffusionWeights)).
#[derive(Debug, Clone)]
pub struct MergedModels {
    /// `UNet2DConditionModel` weights.
    pub unet: MergedComponent,
    /// The first (or only) text encoder's weights.
    pub text_encoder: MergedComponent,
    /// The SDXL base's second text encoder's weights.
    pub text_encoder_2: Option<MergedComponent>,
    /// What was applied and skipped.
    pub report: MergeReport,
}

type Deltas = BTreeMap<String, Vec<(Patch, f64)>>;

/// One component being merged into: the layers of `target` land in `deltas`.
struct Slot<'a> {
    target: LoraTarget,
    resolver: Resolver<'a>,
    deltas: Deltas,
}

impl<'a> Slot<'a> {
    /// The slot of `c`, which must be named as one of `allowed` targets.
    fn new(c: &'a Component, allowed: &[LoraTarget], role: &'static str) -> Result<Self, LoraError> {
        match LoraTarget::of_component(c.name()) {
            Some(target) if allowed.contains(&target) => {
                Ok(Self { target, resolver: Resolver::new(c), deltas: BTreeMap::new() })
            }
            // A caller's mix-up (say the VAE passed as an encoder), never a user's.
            _ => Err(ModelError::Unsupported {
                field: role,
                value: format!("a component named `{}`", c.name()),
                supported: "the unet, text_encoder and text_encoder_2 of `loading::load`, in their places",
            }
            .into()),
        }
    }

    fn into_merged(self) -> MergedComponent {
        MergedComponent::new(self.resolver.base().clone(), self.deltas)
    }
}

/// Merges `loras` (in order) into the UNet and the text encoders, as
/// [`StableDiffusionWeights`](crate::loading::StableDiffusionWeights) holds them: each encoder
/// receives the layers of the [`LoraTarget`] its [`Component::name`] names, so the SDXL
/// refiner's only encoder (`text_encoder_2`) receives `lora_te2_` / `text_encoder_2.` layers.
/// Layers for an encoder the model lacks are unapplicable. An empty list gives components that
/// load exactly the base weights.
pub fn merge(
    unet: &Component,
    text_encoder: &Component,
    text_encoder_2: Option<&Component>,
    loras: &[LoraUse<'_>],
    opts: &MergeOptions,
) -> Result<MergedModels, LoraError> {
    use LoraTarget::{TextEncoder, TextEncoder2, Unet};
    let mut unet = Slot::new(unet, &[Unet], "lora::merge unet")?;
    let first_allowed: &[LoraTarget] =
        if text_encoder_2.is_some() { &[TextEncoder] } else { &[TextEncoder, TextEncoder2] };
    let mut te = Slot::new(text_encoder, first_allowed, "lora::merge text_encoder")?;
    let mut te2 = text_encoder_2.map(|c| Slot::new(c, &[TextEncoder2], "lora::merge text_encoder_2")).transpose()?;
    let mut report = MergeReport::default();
    for lora in loras {
        let mut problems = lora.file.unparsed.clone();
        let mut applied = 0;
        for layer in &lora.file.layers {
            let strength = match layer.target {
                Unet => lora.unet_strength,
                TextEncoder | TextEncoder2 => lora.text_encoder_strength,
            };
            let slot =
                [Some(&mut unet), Some(&mut te), te2.as_mut()].into_iter().flatten().find(|s| s.target == layer.target);
            let Some(slot) = slot else {
                problems.push(LoraProblem { key: layer.file_name.clone(), reason: missing_encoder(layer.target) });
                continue;
            };
            let Some((key, shape)) = slot.resolver.weight_key(&layer.name) else {
                problems.push(LoraProblem {
                    key: layer.file_name.clone(),
                    reason: format!(
                        "no such layer in the {}: a LoRA for another model (SD1, SD2, SDXL base or \
                         refiner); use one made for this model",
                        layer.target.component_name()
                    ),
                });
                continue;
            };
            match delta::plan(&layer.params, &shape) {
                Ok(patch) => {
                    slot.deltas.entry(key).or_default().push((patch, strength));
                    applied += 1;
                }
                Err(reason) => problems.push(LoraProblem { key: layer.file_name.clone(), reason }),
            }
        }
        if !problems.is_empty() {
            if !opts.skip_unapplicable {
                return Err(LoraError::Unapplicable { path: lora.file.path.clone(), problems });
            }
            report.skipped.push((lora.file.path.clone(), problems));
        }
        report.applied.push((lora.file.path.clone(), applied));
    }
    Ok(MergedModels {
        unet: unet.into_merged(),
        text_encoder: te.into_merged(),
        text_encoder_2: te2.map(Slot::into_merged),
        report,
    })
}

/// Why a layer for an encoder the model lacks cannot be applied, and what to do.
fn missing_encoder(target: LoraTarget) -> String {
    match target {
        LoraTarget::TextEncoder2 => "the model has no text_encoder_2 (OpenCLIP-bigG): an SDXL LoRA \
                                     layer; use it with an SDXL model"
            .into(),
        LoraTarget::TextEncoder => "the model has no CLIP-L text_encoder (the SDXL refiner has only \
                                    text_encoder_2): a LoRA for the SDXL base, SD1 or SD2; use it \
                                    with that model"
            .into(),
        // The UNet is always there; kept for a total match.
        LoraTarget::Unet => "the model has no UNet".into(),
    }
}

/// A [`Component`] with LoRA deltas added when weights are loaded. The base is left untouched.
#[derive(Clone)]
pub struct MergedComponent {
    base: Component,
    /// diffusers key → the patches of the LoRAs that touch it, with their strengths, in merge order.
    deltas: Arc<Deltas>,
}

impl std::fmt::Debug for MergedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedComponent").field("base", &self.base.name()).field("patched", &self.deltas.len()).finish()
    }
}

impl MergedComponent {
    fn new(base: Component, deltas: Deltas) -> Self {
        Self { base, deltas: Arc::new(deltas) }
    }

    /// The unpatched weights.
    pub fn base(&self) -> &Component {
        &self.base
    }

    /// The diffusers keys that LoRAs patch, sorted.
    pub fn patched_keys(&self) -> impl Iterator<Item = &str> {
        self.deltas.keys().map(String::as_str)
    }

    /// Loads one weight: the base weight plus the deltas (formed now), summed in float32 on the CPU, then
    /// converted to `dtype` on `device`. Unpatched weights are the base weights exactly.
    pub fn load(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let Some(deltas) = self.deltas.get(key) else {
            return self.base.load(key, dtype, device);
        };
        let mut w = self.base.load(key, DType::F32, &Device::Cpu)?;
        for (patch, strength) in deltas {
            let d = patch.delta()?;
            w = (w + if *strength == 1.0 { d } else { (d * *strength)? })?;
        }
        Ok(w.to_dtype(dtype)?.to_device(device)?)
    }

    /// A `VarBuilder` over the merged weights: module paths are diffusers key names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(self.clone());
        VarBuilder::from_backend(backend, dtype, device.clone())
    }
}

impl SimpleBackend for MergedComponent {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        crate::loading::checked_shape(self.base.name(), name, &s, self.get_unchecked(name, dtype, dev)?)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev).map_err(|e| match e {
            ModelError::Candle(e) => e,
            e => candle_core::Error::wrap(e),
        })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.shape(name).is_some()
    }
}
