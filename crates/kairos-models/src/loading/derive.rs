//! diffusers / transformers `config.json` values derived from the weight shapes of a single file,
//! which carries no config. Mirrors what diffusers' `create_unet_diffusers_config_from_ldm`,
//! `create_vae_diffusers_config_from_ldm` and the SD1/SD2/SDXL text-encoder configs say for the
//! original checkpoints (the SDXL ones: `sd_xl_base.yaml`, `sd_xl_refiner.yaml`), but reads
//! every size from the tensors instead of an original YAML.
//!
//! What a file cannot tell (group-norm groups, head counts) comes from [`ConfigHints`], whose
//! defaults are the values every SD1/SD2 checkpoint was trained with.

use serde_json::{json, Value};

use super::store::Source;
use super::{ConfigHints, KeyMap, ModelFamily, PredictionType, UnetHeads};
use crate::ModelError;

fn shape<'a>(map: &'a KeyMap, component: &str, key: &str) -> Result<&'a [usize], ModelError> {
    map.get(key)
        .map(|s: &Source| s.shape.as_slice())
        .ok_or_else(|| ModelError::MissingWeight { component: component.to_string(), key: key.to_string() })
}

fn dim(map: &KeyMap, component: &str, key: &str, d: usize) -> Result<usize, ModelError> {
    let s = shape(map, component, key)?;
    s.get(d).copied().ok_or_else(|| ModelError::ShapeMismatch {
        component: component.to_string(),
        key: key.to_string(),
        expected: vec![0; d + 1],
        got: s.to_vec(),
    })
}

/// How many `prefix{i}{suffix}` keys exist for consecutive i from 0.
fn count(map: &KeyMap, prefix: &str, suffix: &str) -> usize {
    (0..).take_while(|i| map.contains_key(&format!("{prefix}{i}{suffix}"))).count()
}

fn has_prefix(map: &KeyMap, prefix: &str) -> bool {
    map.range(prefix.to_string()..).next().is_some_and(|(k, _)| k.starts_with(prefix))
}

/// `UNet2DConditionModel` config. `pooled` is the text encoder whose projection feeds an SDXL
/// UNet's `text_time` embedding (its width and the embedding's input width give
/// `addition_time_embed_dim`).
pub(crate) fn unet_config(
    map: &KeyMap,
    family: ModelFamily,
    prediction: PredictionType,
    pooled: Option<&KeyMap>,
    hints: &ConfigHints,
) -> Result<Value, ModelError> {
    let c = "unet";
    let n = count(map, "down_blocks.", ".resnets.0.conv1.weight");
    let block_out_channels = (0..n)
        .map(|b| dim(map, c, &format!("down_blocks.{b}.resnets.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>, _>>()?;
    let cross_down: Vec<bool> = (0..n).map(|b| has_prefix(map, &format!("down_blocks.{b}.attentions."))).collect();
    let cross_up: Vec<bool> = (0..n).map(|b| has_prefix(map, &format!("up_blocks.{b}.attentions."))).collect();
    let attn = "mid_block.attentions.0";
    let cross_attention_dim = dim(map, c, &format!("{attn}.transformer_blocks.0.attn2.to_k.weight"), 1)?;
    let use_linear_projection = shape(map, c, &format!("{attn}.proj_in.weight"))?.len() == 2;
    let heads = hints.unet_heads.unwrap_or(match family {
        // v1-inference.yaml: num_heads 8; v2-inference(-v).yaml and sd_xl_*.yaml:
        // num_head_channels 64.
        ModelFamily::Sd1 => UnetHeads::Count(8),
        _ => UnetHeads::Channels(64),
    });
    let attention_head_dim = match heads {
        UnetHeads::Count(h) => json!(h),
        // A block without attention (SDXL's first) still gets an entry, at least 1.
        UnetHeads::Channels(ch) => {
            json!(block_out_channels.iter().map(|c| (c / ch.max(1)).max(1)).collect::<Vec<_>>())
        }
    };
    // Transformer depth per down block; up blocks mirror it and the mid block takes the last
    // entry (diffusers' `transformer_layers_per_block[-1]`). One number when every attention
    // block has the mid block's depth (SD1/SD2: 1, the SDXL refiner: 4), else a list with 1 for
    // blocks without attention and the mid depth last (the SDXL base: [1, 2, 10]).
    let depths: Vec<Option<usize>> = (0..n)
        .map(|b| {
            let d = count(map, &format!("down_blocks.{b}.attentions.0.transformer_blocks."), ".norm1.weight");
            (d > 0).then_some(d)
        })
        .collect();
    let mid_depth = count(map, &format!("{attn}.transformer_blocks."), ".norm1.weight");
    let transformer_layers_per_block = if depths.iter().flatten().all(|&d| d == mid_depth) {
        json!(mid_depth)
    } else {
        let mut list: Vec<usize> = depths.iter().map(|d| d.unwrap_or(1)).collect();
        list[n - 1] = mid_depth;
        json!(list)
    };
    // 768-v (SD2.1) configs set upcast_attention; it only matters below f32.
    let upcast_attention = family == ModelFamily::Sd2 && prediction == PredictionType::VPrediction;
    let sample_size = match family {
        ModelFamily::Sdxl | ModelFamily::SdxlRefiner => 128,
        _ if upcast_attention => 96,
        _ => 64,
    };
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": dim(map, c, "conv_in.weight", 1)?,
        "out_channels": dim(map, c, "conv_out.weight", 0)?,
        "down_block_types": cross_down.iter().map(|&x| if x { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect::<Vec<_>>(),
        "up_block_types": cross_up.iter().map(|&x| if x { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect::<Vec<_>>(),
        "block_out_channels": block_out_channels,
        "layers_per_block": count(map, "down_blocks.0.resnets.", ".conv1.weight"),
        "norm_num_groups": hints.norm_num_groups,
        "cross_attention_dim": cross_attention_dim,
        "transformer_layers_per_block": transformer_layers_per_block,
        "attention_head_dim": attention_head_dim,
        "use_linear_projection": use_linear_projection,
        "upcast_attention": upcast_attention,
    });
    if map.contains_key("add_embedding.linear_1.weight") {
        // SDXL's `text_time`: pooled text + time ids (base: 6 sizes, refiner: 4 + aesthetic
        // score) × addition_time_embed_dim = add_embedding's input width.
        let input = dim(map, c, "add_embedding.linear_1.weight", 1)?;
        let pooled =
            pooled.map(|te| dim(te, "text_encoder_2", "text_projection.weight", 0)).transpose()?.ok_or_else(|| {
                ModelError::MissingWeight { component: "text_encoder_2".into(), key: "text_projection.weight".into() }
            })?;
        let ids = if family == ModelFamily::SdxlRefiner { 5 } else { 6 };
        let per_id =
            input.checked_sub(pooled).filter(|w| w % ids == 0 && *w > 0).ok_or_else(|| ModelError::ShapeMismatch {
                component: c.into(),
                key: "add_embedding.linear_1.weight".into(),
                expected: vec![0, pooled + ids * 256],
                got: shape(map, c, "add_embedding.linear_1.weight").map(<[usize]>::to_vec).unwrap_or_default(),
            })? / ids;
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!(per_id);
        config["projection_class_embeddings_input_dim"] = json!(input);
    }
    Ok(config)
}

/// `AutoencoderKL` config; the scaling factor is the family's (a file does not record it).
pub(crate) fn vae_config(map: &KeyMap, family: ModelFamily, hints: &ConfigHints) -> Result<Value, ModelError> {
    let c = "vae";
    let n = count(map, "encoder.down_blocks.", ".resnets.0.conv1.weight");
    let block_out_channels = (0..n)
        .map(|b| dim(map, c, &format!("encoder.down_blocks.{b}.resnets.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "_class_name": "AutoencoderKL",
        "in_channels": dim(map, c, "encoder.conv_in.weight", 1)?,
        "out_channels": dim(map, c, "decoder.conv_out.weight", 0)?,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "block_out_channels": block_out_channels,
        "layers_per_block": count(map, "encoder.down_blocks.0.resnets.", ".conv1.weight"),
        "latent_channels": dim(map, c, "decoder.conv_in.weight", 1)?,
        "norm_num_groups": hints.norm_num_groups,
        "act_fn": "silu",
        "sample_size": 512,
        // LDM_VAE_DEFAULT_SCALING_FACTOR, the scale_factor of the SD1/SD2 training configs;
        // SDXL's (sd_xl_base.yaml, and diffusers' single-file SDXL configs) is 0.13025.
        "scaling_factor": if family.is_sdxl() { 0.13025 } else { 0.18215 },
    }))
}

/// transformers `CLIPTextModel` config (SD1 and SDXL's first encoder: CLIP ViT-L/14 with
/// quick_gelu; SD2: OpenCLIP ViT-H/14 with gelu), or with `projection` the
/// `CLIPTextModelWithProjection` of SDXL's OpenCLIP ViT-bigG/14 (gelu).
pub(crate) fn text_encoder_config(
    map: &KeyMap,
    family: ModelFamily,
    projection: bool,
    hints: &ConfigHints,
) -> Result<Value, ModelError> {
    let c = if projection { "text_encoder_2" } else { "text_encoder" };
    let hidden_size = dim(map, c, "text_model.embeddings.token_embedding.weight", 1)?;
    let open_clip = projection || family == ModelFamily::Sd2;
    let projection_dim = if projection { dim(map, c, "text_projection.weight", 0)? } else { hidden_size };
    Ok(json!({
        "architectures": [if projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "model_type": "clip_text_model",
        "vocab_size": dim(map, c, "text_model.embeddings.token_embedding.weight", 0)?,
        "hidden_size": hidden_size,
        "intermediate_size": dim(map, c, "text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
        "num_hidden_layers": count(map, "text_model.encoder.layers.", ".layer_norm1.weight"),
        "num_attention_heads": hidden_size / hints.clip_head_dim.max(1),
        "max_position_embeddings": dim(map, c, "text_model.embeddings.position_embedding.weight", 0)?,
        "hidden_act": if open_clip { "gelu" } else { "quick_gelu" },
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
        // The token ids of the published SD1/SD2/SDXL text_encoder(_2)/config.json files.
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }))
}
