//! Original LDM / A1111 single-file key names → diffusers key names.
//!
//! Mirrors diffusers 0.42.1 `loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`.
//!
//! Differences:
//! - Keys are parsed by segment rather than matched by substring, so a key that fits no rule is
//!   reported ([`ModelError::UnrecognisedLayout`]) instead of being copied through unchanged.
//! - Nothing is copied: each diffusers key records its stored key and a [`Transform`] (q/k/v rows
//!   of OpenCLIP's fused `in_proj`, 1×1 conv → linear for the VAE mid attention), applied when the
//!   tensor is loaded.
//! - SD2: OpenCLIP's last resblock is dropped whatever the depth (diffusers names `resblocks.23`,
//!   the last of SD2's 24): SD2 conditions on the penultimate layer, so the diffusers text
//!   encoder has one layer fewer. `text_projection` and `logit_scale` are unused by SD2 and
//!   skipped, as is the legacy `position_ids` buffer of SD1 files. SDXL's OpenCLIP bigG keeps
//!   every layer (its pooled output needs the last) and its `text_projection`, transposed.
//! - SDXL (SGM layout, `convert_sdxl_*` paths of the same file): `label_emb.0.0/0.2` →
//!   `add_embedding.linear_1/2`; the encoders under `conditioner.embedders.N.`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::store::{OpenFile, Source, Transform};
use crate::ModelError;

/// Key prefix of the UNet in LDM checkpoints.
pub(crate) const UNET_PREFIX: &str = "model.diffusion_model.";
/// Key prefixes of the VAE in LDM checkpoints (`vae.` in some merged files).
pub(crate) const VAE_PREFIXES: &[&str] = &["first_stage_model.", "vae."];
/// Key prefix of the SD1 text encoder (transformers CLIPTextModel inside).
pub(crate) const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// Key prefix of the SD2 text encoder (OpenCLIP ViT-H/14).
pub(crate) const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// Key prefix of the SDXL base's CLIP ViT-L/14 (transformers layout inside).
pub(crate) const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Key prefix of the SDXL base's OpenCLIP ViT-bigG/14.
pub(crate) const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// Key prefix of the SDXL refiner's OpenCLIP ViT-bigG/14, its only text encoder.
pub(crate) const SDXL_REFINER_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.0.model.";

/// Which model an OpenCLIP text tower is converted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenClipUse {
    /// SD2: the last layer dropped, no projection (`CLIPTextModel`).
    Sd2,
    /// SDXL: every layer and the projection (`CLIPTextModelWithProjection`).
    Sdxl,
}

/// diffusers key → source, for one component.
pub(crate) type KeyMap = BTreeMap<String, Source>;

/// Collects keys that fit no rule, for the error message.
#[derive(Default)]
struct Unexpected(Vec<String>);

impl Unexpected {
    fn into_result(self, file: &OpenFile, expected: &str) -> Result<(), ModelError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ModelError::UnrecognisedLayout {
            path: file.path.clone(),
            expected: expected.to_string(),
            examples: self.0.into_iter().take(5).collect(),
        })
    }
}

fn parse(s: &str) -> Option<usize> {
    s.parse().ok()
}

/// The distinct values of the numeric segment after `prefix` in `keys`.
fn indices<'a>(keys: impl Iterator<Item = &'a str>, prefix: &str) -> Vec<usize> {
    let mut v: Vec<usize> =
        keys.filter_map(|k| k.strip_prefix(prefix)).filter_map(|r| r.split('.').next().and_then(parse)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// LDM ResBlock sublayer names → diffusers `ResnetBlock2D` names.
fn unet_resnet(rest: &str) -> Option<String> {
    const MAP: &[(&str, &str)] = &[
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter().find_map(|(l, d)| rest.strip_prefix(l).map(|p| format!("{d}{p}")))
}

/// Converts the `model.diffusion_model.*` keys (mirrors `convert_ldm_unet_checkpoint`).
pub(crate) fn convert_unet(files: &[Arc<OpenFile>], file: usize) -> Result<KeyMap, ModelError> {
    let f = &files[file];
    let keys: Vec<&str> = f.tensors.keys().filter_map(|k| k.strip_prefix(UNET_PREFIX)).collect();
    // A down block has `layers_per_block` resnets then a downsampler (`input_blocks.i.0.op`),
    // except the last; input_blocks.0 is conv_in.
    let n_input = indices(keys.iter().copied(), "input_blocks.").len();
    let n_down_ops = keys.iter().filter(|k| k.ends_with(".0.op.weight")).count();
    let n_blocks = n_down_ops + 1;
    let lpb = n_input.saturating_sub(n_blocks) / n_blocks;
    let n_output = indices(keys.iter().copied(), "output_blocks.").len();
    if n_input < 2 || n_output != n_blocks * (lpb + 1) {
        return Err(ModelError::UnrecognisedLayout {
            path: f.path.clone(),
            expected: format!(
                "an LDM UNet with input_blocks 0..{} and output_blocks = blocks × (layers_per_block + 1)",
                n_input
            ),
            examples: vec![format!("{n_input} input_blocks, {n_output} output_blocks, {n_down_ops} downsamplers")],
        });
    }
    let mut map = KeyMap::new();
    let mut unexpected = Unexpected::default();
    for key in keys {
        let full = format!("{UNET_PREFIX}{key}");
        match unet_key(key, lpb) {
            Some(d) => {
                map.insert(d, Source::new(files, file, &full, Transform::Identity));
            }
            None => unexpected.0.push(full),
        }
    }
    unexpected.into_result(f, "LDM UNet keys (time_embed, input_blocks, middle_block, output_blocks, out)")?;
    Ok(map)
}

pub(crate) fn unet_key(key: &str, lpb: usize) -> Option<String> {
    let p: Vec<&str> = key.splitn(4, '.').collect();
    let tail = |n: usize| key.splitn(n + 1, '.').nth(n).unwrap_or("");
    match p.as_slice() {
        ["time_embed", "0", ..] => Some(format!("time_embedding.linear_1.{}", tail(2))),
        ["time_embed", "2", ..] => Some(format!("time_embedding.linear_2.{}", tail(2))),
        ["label_emb", "0", "0", rest] => Some(format!("add_embedding.linear_1.{rest}")),
        ["label_emb", "0", "2", rest] => Some(format!("add_embedding.linear_2.{rest}")),
        ["input_blocks", "0", "0", rest] => Some(format!("conv_in.{rest}")),
        ["out", "0", ..] => Some(format!("conv_norm_out.{}", tail(2))),
        ["out", "2", ..] => Some(format!("conv_out.{}", tail(2))),
        ["input_blocks", i, j, rest] => {
            let i = parse(i)?.checked_sub(1)?;
            let (b, l) = (i / (lpb + 1), i % (lpb + 1));
            match *j {
                "0" => match rest.strip_prefix("op.") {
                    Some(p) => Some(format!("down_blocks.{b}.downsamplers.0.conv.{p}")),
                    None => Some(format!("down_blocks.{b}.resnets.{l}.{}", unet_resnet(rest)?)),
                },
                "1" => Some(format!("down_blocks.{b}.attentions.{l}.{rest}")),
                _ => None,
            }
        }
        ["middle_block", k, ..] => {
            let rest = tail(2);
            match *k {
                "0" => Some(format!("mid_block.resnets.0.{}", unet_resnet(rest)?)),
                "1" => Some(format!("mid_block.attentions.0.{rest}")),
                "2" => Some(format!("mid_block.resnets.1.{}", unet_resnet(rest)?)),
                _ => None,
            }
        }
        ["output_blocks", i, j, rest] => {
            let i = parse(i)?;
            let (b, l) = (i / (lpb + 1), i % (lpb + 1));
            let upsampler = rest.strip_prefix("conv.").map(|p| format!("up_blocks.{b}.upsamplers.0.conv.{p}"));
            match *j {
                "0" => Some(format!("up_blocks.{b}.resnets.{l}.{}", unet_resnet(rest)?)),
                "1" => upsampler.or_else(|| Some(format!("up_blocks.{b}.attentions.{l}.{rest}"))),
                "2" => upsampler,
                _ => None,
            }
        }
        _ => None,
    }
}

/// Converts VAE keys (mirrors `convert_ldm_vae_checkpoint`). `prefix` is `first_stage_model.`,
/// `vae.` or empty (a standalone VAE file).
pub(crate) fn convert_vae(files: &[Arc<OpenFile>], file: usize, prefix: &str) -> Result<KeyMap, ModelError> {
    let f = &files[file];
    let keys: Vec<&str> = f.tensors.keys().filter_map(|k| k.strip_prefix(prefix)).collect();
    let n_up = indices(keys.iter().copied(), "decoder.up.").len();
    let mut map = KeyMap::new();
    let mut unexpected = Unexpected::default();
    for key in keys {
        let full = format!("{prefix}{key}");
        match vae_key(key, n_up) {
            Some((d, transform)) => {
                let transform = match transform {
                    // LDM's mid attention uses 1×1 convs; diffusers uses linears.
                    Transform::ConvToLinear if f.tensors[&full].shape.len() <= 2 => Transform::Identity,
                    t => t,
                };
                map.insert(d, Source::new(files, file, &full, transform));
            }
            None => unexpected.0.push(full),
        }
    }
    unexpected
        .into_result(f, "LDM VAE keys (encoder.*/decoder.* with down/up/mid blocks, quant_conv, post_quant_conv)")?;
    Ok(map)
}

fn vae_key(key: &str, n_up: usize) -> Option<(String, Transform)> {
    let p: Vec<&str> = key.split('.').collect();
    let id = Transform::Identity;
    let tail = |n: usize| p[n.min(p.len())..].join(".");
    let resnet = |rest: String| rest.replace("nin_shortcut", "conv_shortcut");
    let out = match p.as_slice() {
        ["quant_conv" | "post_quant_conv", ..] => (key.to_string(), id),
        [x @ ("encoder" | "decoder"), "conv_in" | "conv_out", ..] => (format!("{x}.{}", tail(1)), id),
        [x @ ("encoder" | "decoder"), "norm_out", ..] => (format!("{x}.conv_norm_out.{}", tail(2)), id),
        ["encoder", "down", i, "block", j, ..] => {
            (format!("encoder.down_blocks.{i}.resnets.{j}.{}", resnet(tail(5))), id)
        }
        ["encoder", "down", i, "downsample", "conv", ..] => {
            (format!("encoder.down_blocks.{i}.downsamplers.0.conv.{}", tail(5)), id)
        }
        ["decoder", "up", i, "block", j, ..] => {
            let b = n_up.checked_sub(1 + parse(i)?)?;
            (format!("decoder.up_blocks.{b}.resnets.{j}.{}", resnet(tail(5))), id)
        }
        ["decoder", "up", i, "upsample", "conv", ..] => {
            let b = n_up.checked_sub(1 + parse(i)?)?;
            (format!("decoder.up_blocks.{b}.upsamplers.0.conv.{}", tail(5)), id)
        }
        [x @ ("encoder" | "decoder"), "mid", "block_1", ..] => {
            (format!("{x}.mid_block.resnets.0.{}", resnet(tail(3))), id)
        }
        [x @ ("encoder" | "decoder"), "mid", "block_2", ..] => {
            (format!("{x}.mid_block.resnets.1.{}", resnet(tail(3))), id)
        }
        [x @ ("encoder" | "decoder"), "mid", "attn_1", layer, param] => {
            let (name, t) = match *layer {
                "norm" => ("group_norm", id),
                "q" => ("to_q", Transform::ConvToLinear),
                "k" => ("to_k", Transform::ConvToLinear),
                "v" => ("to_v", Transform::ConvToLinear),
                "proj_out" => ("to_out.0", Transform::ConvToLinear),
                _ => return None,
            };
            let t = if *param == "weight" { t } else { id };
            (format!("{x}.mid_block.attentions.0.{name}.{param}"), t)
        }
        _ => return None,
    };
    Some(out)
}

/// Converts SD1's `cond_stage_model.transformer.*` or SDXL's
/// `conditioner.embedders.0.transformer.*` (`prefix`; mirrors `convert_ldm_clip_checkpoint`).
/// Files written with old transformers lack the `text_model.` level; it is added.
pub(crate) fn convert_clip(files: &[Arc<OpenFile>], file: usize, prefix: &str) -> Result<KeyMap, ModelError> {
    let f = &files[file];
    let mut map = KeyMap::new();
    for full in f.tensors.keys() {
        let Some(key) = full.strip_prefix(prefix) else {
            continue;
        };
        let key = if key.starts_with("text_model.") { key.to_string() } else { format!("text_model.{key}") };
        if key == "text_model.embeddings.position_ids" {
            continue;
        }
        map.insert(key, Source::new(files, file, full, Transform::Identity));
    }
    Ok(map)
}

/// Converts an OpenCLIP text tower under `prefix` (SD2's `cond_stage_model.model.*`, SDXL's
/// `conditioner.embedders.N.model.*`; mirrors `convert_open_clip_checkpoint`).
pub(crate) fn convert_open_clip(
    files: &[Arc<OpenFile>],
    file: usize,
    prefix: &str,
    usage: OpenClipUse,
) -> Result<KeyMap, ModelError> {
    let f = &files[file];
    let keys: Vec<&str> = f.tensors.keys().filter_map(|k| k.strip_prefix(prefix)).collect();
    let Some(width) = f.tensors.get(&format!("{prefix}token_embedding.weight")).and_then(|t| t.shape.get(1).copied())
    else {
        return Err(ModelError::MissingWeight {
            component: "text_encoder".into(),
            key: format!("{prefix}token_embedding.weight"),
        });
    };
    let n_layers = indices(keys.iter().copied(), "transformer.resblocks.").len();
    let mut map = KeyMap::new();
    let mut unexpected = Unexpected::default();
    for key in keys {
        let full = format!("{prefix}{key}");
        let mut put = |d: String, t: Transform| {
            map.insert(d, Source::new(files, file, &full, t));
        };
        let id = Transform::Identity;
        match key {
            "token_embedding.weight" => put("text_model.embeddings.token_embedding.weight".into(), id),
            "positional_embedding" => put("text_model.embeddings.position_embedding.weight".into(), id),
            "ln_final.weight" | "ln_final.bias" => {
                put(format!("text_model.final_layer_norm.{}", &key["ln_final.".len()..]), id)
            }
            "text_projection" if usage == OpenClipUse::Sdxl => {
                put("text_projection.weight".into(), Transform::Transpose)
            }
            "text_projection" | "logit_scale" => {}
            _ => {
                let Some((i, rest)) = key
                    .strip_prefix("transformer.resblocks.")
                    .and_then(|r| r.split_once('.'))
                    .and_then(|(i, rest)| Some((parse(i)?, rest)))
                else {
                    unexpected.0.push(full.clone());
                    continue;
                };
                if i + 1 == n_layers && usage == OpenClipUse::Sd2 {
                    continue; // the unused last layer, see the module doc
                }
                let l = format!("text_model.encoder.layers.{i}");
                match rest {
                    "attn.in_proj_weight" | "attn.in_proj_bias" => {
                        let param = if rest.ends_with("weight") { "weight" } else { "bias" };
                        for (k, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                            put(
                                format!("{l}.self_attn.{name}.{param}"),
                                Transform::Rows { start: k * width, len: width },
                            );
                        }
                    }
                    _ => {
                        const MAP: &[(&str, &str)] = &[
                            ("attn.out_proj.", "self_attn.out_proj."),
                            ("ln_1.", "layer_norm1."),
                            ("ln_2.", "layer_norm2."),
                            ("mlp.c_fc.", "mlp.fc1."),
                            ("mlp.c_proj.", "mlp.fc2."),
                        ];
                        match MAP.iter().find_map(|(o, d)| rest.strip_prefix(o).map(|p| format!("{l}.{d}{p}"))) {
                            Some(d) => put(d, id),
                            None => unexpected.0.push(full.clone()),
                        }
                    }
                }
            }
        }
    }
    unexpected.into_result(
        f,
        "OpenCLIP text-encoder keys (token_embedding, positional_embedding, transformer.resblocks.*, ln_final)",
    )?;
    Ok(map)
}
