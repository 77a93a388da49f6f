//! SDXL loading and networks against diffusers / transformers.
//!
//! Fixtures: `tools/fixtures/sdxl.py` writes tiny random SDXL base and refiner models (real
//! conventions a file does not record: 32 GroupNorm groups, 64-wide UNet heads; text encoders
//! with 8-wide heads, passed as a hint) as diffusers fp16 folders and as SGM single files in
//! bf16 (the same values: every weight is exact in both), the latter refereed by diffusers'
//! converters; and the outputs of both tokenizers, both text encoders (penultimate hidden
//! states, pooled projection), the UNets with their `text_time` inputs and the VAE decode.
//!
//! Tolerances: weights are compared bitwise (renames, row slices and a transpose only); network
//! outputs within 1e-5 × max|reference|, the fixture's: f32 on both sides from the same
//! weights, only the order of f32 sums differs (the script measured diffusers' own f32 against
//! f64 at ≤ 1.2e-6).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig};
use kairos_models::loading::{self, Component, ConfigHints, LoadOptions, ModelFamily, StableDiffusionWeights};
use kairos_models::text_encoders::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use kairos_models::tokenizer::{CLIPTokenizer, PadToken, MODEL_MAX_LENGTH};
use kairos_models::unets::unet_2d_condition::{AddedCond, UNet2DConditionModel, UNet2DConditionModelConfig};
use kairos_models::ModelError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("io.safetensors"), &Device::Cpu).unwrap()
}

/// The tiny models' text encoders have 8-wide heads; the rest is SDXL's real convention.
fn opts() -> LoadOptions {
    LoadOptions { hints: ConfigHints { clip_head_dim: 8, ..ConfigHints::default() }, ..Default::default() }
}

fn load(name: &str) -> StableDiffusionWeights {
    loading::load(fixtures().join(name), &opts()).unwrap()
}

fn max_rel(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let err = max_rel(&got.to_dtype(DType::F32).unwrap(), want);
    assert!(err < 1e-5, "{what}: max error {err:e} of max|ref|");
}

/// Both layouts give the same diffusers keys with bitwise-equal values.
fn assert_same_weights(a: &Component, b: &Component) {
    let (ka, kb): (Vec<&str>, Vec<&str>) = (a.keys().collect(), b.keys().collect());
    assert_eq!(ka, kb, "{}: key sets", a.name());
    for key in ka {
        let x = a.load(key, DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b.load(key, DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{}: {key} differs", a.name());
    }
}

/// The transformer depths a UNet config gives its attention blocks and its mid block (the
/// last entry): diffusers' list or single number, where blocks without attention take any value.
fn effective_depths(config: &serde_json::Value) -> Vec<u64> {
    let types = config["down_block_types"].as_array().unwrap();
    let depth = |i: usize| {
        let v = &config["transformer_layers_per_block"];
        v.as_u64().unwrap_or_else(|| v[i].as_u64().unwrap())
    };
    let mut d: Vec<u64> = (0..types.len()).filter(|&i| types[i] == "CrossAttnDownBlock2D").map(depth).collect();
    d.push(depth(types.len() - 1));
    d
}

/// The config fields that shape the network, derived from the single file, equal the folder's.
fn assert_same_config(derived: &serde_json::Value, folder: &serde_json::Value, fields: &[&str]) {
    for f in fields {
        if *f == "transformer_layers_per_block" {
            assert_eq!(effective_depths(derived), effective_depths(folder), "{f}: {derived} vs {folder}");
        } else {
            assert_eq!(derived[f], folder[f], "config field {f}");
        }
    }
}

#[test]
fn sdxl_base_single_file_equals_the_diffusers_folder() {
    let folder = load("base");
    let single = load("sdxl_base.safetensors");
    for w in [&folder, &single] {
        assert_eq!(w.family, ModelFamily::Sdxl);
        assert!(w.force_zeros_for_empty_prompt && !w.requires_aesthetics_score);
    }
    assert_same_weights(&folder.unet, &single.unet);
    assert_same_weights(&folder.vae, &single.vae);
    assert_same_weights(&folder.text_encoder, &single.text_encoder);
    assert_same_weights(folder.text_encoder_2.as_ref().unwrap(), single.text_encoder_2.as_ref().unwrap());
    assert_same_config(
        &single.unet.config,
        &folder.unet.config,
        &[
            "block_out_channels",
            "down_block_types",
            "up_block_types",
            "layers_per_block",
            "transformer_layers_per_block",
            "attention_head_dim",
            "cross_attention_dim",
            "use_linear_projection",
            "addition_embed_type",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "norm_num_groups",
        ],
    );
    assert_same_config(&single.vae.config, &folder.vae.config, &["block_out_channels", "scaling_factor"]);
    let te2 = (&single.text_encoder_2.as_ref().unwrap().config, &folder.text_encoder_2.as_ref().unwrap().config);
    assert_same_config(te2.0, te2.1, &["hidden_act", "num_hidden_layers", "projection_dim", "num_attention_heads"]);
    assert_same_config(&single.text_encoder.config, &folder.text_encoder.config, &["hidden_act", "num_hidden_layers"]);
}

#[test]
fn sdxl_refiner_single_file_equals_the_diffusers_folder() {
    let folder = load("refiner");
    let single = load("sdxl_refiner.safetensors");
    for w in [&folder, &single] {
        assert_eq!(w.family, ModelFamily::SdxlRefiner);
        assert!(!w.force_zeros_for_empty_prompt && w.requires_aesthetics_score);
        assert!(w.text_encoder_2.is_none());
        assert_eq!(w.text_encoder.name(), "text_encoder_2", "the refiner's one encoder is diffusers' text_encoder_2");
    }
    assert_same_weights(&folder.unet, &single.unet);
    assert_same_weights(&folder.text_encoder, &single.text_encoder);
    assert_same_config(
        &single.unet.config,
        &folder.unet.config,
        &["addition_time_embed_dim", "projection_class_embeddings_input_dim", "cross_attention_dim"],
    );
}

/// Tokenizer ids (CLIP-L pads with `<|endoftext|>`, bigG with `!`), both encoders' penultimate
/// hidden states and bigG's pooled projection, from the folder and the single file.
#[test]
fn sdxl_text_encoders_match_transformers() {
    let io = io();
    let tok_l = CLIPTokenizer::new(PadToken::EndOfText).unwrap();
    let tok_g = CLIPTokenizer::new(PadToken::Exclamation).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sdxl.json")).unwrap()).unwrap();
    for name in ["base", "sdxl_base.safetensors"] {
        let w = load(name);
        let cfg = |c: &Component| CLIPTextConfig::from_json(&c.config.to_string()).unwrap();
        let te2 = w.text_encoder_2.as_ref().unwrap();
        let clip_l =
            CLIPTextModel::new(w.text_encoder.var_builder(DType::F32, &Device::Cpu), &cfg(&w.text_encoder)).unwrap();
        let clip_g = CLIPTextModelWithProjection::new(te2.var_builder(DType::F32, &Device::Cpu), &cfg(te2)).unwrap();
        for (i, p) in meta["prompts"].as_array().unwrap().iter().enumerate() {
            let prompt = p["prompt"].as_str().unwrap();
            let key = |k: &str| &io[&format!("prompt{i}.{k}")];
            let ids_l = tok_l.encode(prompt, MODEL_MAX_LENGTH).unwrap();
            let ids_g = tok_g.encode(prompt, MODEL_MAX_LENGTH).unwrap();
            let want = |k: &str| key(k).to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
            assert_eq!(ids_l.iter().map(|&t| t as i64).collect::<Vec<_>>(), want("tokenizer.ids"), "{prompt:?}");
            assert_eq!(ids_g.iter().map(|&t| t as i64).collect::<Vec<_>>(), want("tokenizer_2.ids"), "{prompt:?}");
            let ids_l = Tensor::new(ids_l.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let ids_g = Tensor::new(ids_g.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let out_l = clip_l.forward(&ids_l).unwrap();
            let hidden_l = clip_l.text_model().sdxl_hidden_state(&out_l, 1).unwrap();
            assert_close(&hidden_l, key("text_encoder.hidden_states_m2"), &format!("{name} CLIP-L {prompt:?}"));
            let out_g = clip_g.forward(&ids_g).unwrap();
            let hidden_g = clip_g.text_model().sdxl_hidden_state(&out_g.text_outputs, 1).unwrap();
            assert_close(&hidden_g, key("text_encoder_2.hidden_states_m2"), &format!("{name} bigG {prompt:?}"));
            assert_close(&out_g.text_embeds, key("text_encoder_2.text_embeds"), &format!("{name} pooled {prompt:?}"));
            let context = Tensor::cat(&[&hidden_l, &hidden_g], 2).unwrap();
            assert_close(&context, key("prompt_embeds"), "prompt_embeds = cat(L, G)");
        }
    }
}

fn unet(w: &StableDiffusionWeights) -> UNet2DConditionModel {
    let config = UNet2DConditionModelConfig::from_json(&w.unet.config.to_string()).unwrap();
    UNet2DConditionModel::new(w.unet.var_builder(DType::F32, &Device::Cpu), &config).unwrap()
}

/// One UNet call with the `text_time` embedding (pooled text + time ids), base (6 size ids) and
/// refiner (4 + aesthetic score), from both layouts.
#[test]
fn sdxl_unets_match_diffusers() {
    let io = io();
    for (names, prefix) in
        [(["base", "sdxl_base.safetensors"], "unet"), (["refiner", "sdxl_refiner.safetensors"], "refiner_unet")]
    {
        for name in names {
            let model = unet(&load(name));
            let t = |k: &str| &io[&format!("{prefix}.{k}")];
            let added = AddedCond { text_embeds: t("text_embeds"), time_ids: t("time_ids") };
            let timestep =
                t("timestep").to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
            let out = model.forward(t("sample"), timestep, t("encoder_hidden_states"), None, Some(&added)).unwrap();
            assert_close(&out, t("out"), &format!("{name} UNet"));
            // The added conditioning is required, and checked.
            let err = model.forward(t("sample"), timestep, t("encoder_hidden_states"), None, None).unwrap_err();
            assert!(err.to_string().contains("text_embeds and time_ids"), "{err}");
            let short = t("time_ids").narrow(1, 0, 4).unwrap();
            let bad = AddedCond { text_embeds: t("text_embeds"), time_ids: &short };
            let err = model.forward(t("sample"), timestep, t("encoder_hidden_states"), None, Some(&bad)).unwrap_err();
            assert!(err.to_string().contains("time_ids"), "{err}");
        }
    }
}

/// The SDXL VAE (scaling factor 0.13025 from the single file too) decodes as diffusers.
#[test]
fn sdxl_vae_matches_diffusers() {
    let io = io();
    for name in ["base", "sdxl_base.safetensors"] {
        let w = load(name);
        let config = AutoencoderKLConfig::from_json(&w.vae.config).unwrap();
        assert_eq!(config.scaling_factor, 0.13025);
        let vae = AutoencoderKL::new(w.vae.var_builder(DType::F32, &Device::Cpu), &config).unwrap();
        let z = (&io["vae.latents"] / config.scaling_factor).unwrap();
        assert_close(&vae.decode(&z).unwrap(), &io["vae.decoded"], &format!("{name} VAE"));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kairos-sdxl-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The base single file with `keep` keys only, saved under a temporary path.
fn edited_base(name: &str, keep: impl Fn(&str) -> bool) -> PathBuf {
    let mut t = candle_core::safetensors::load(fixtures().join("sdxl_base.safetensors"), &Device::Cpu).unwrap();
    t.retain(|k, _| keep(k));
    let path = temp_dir(name).join("model.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    path
}

/// Bad SDXL files: a part missing, truncated bytes; each a clear error naming what is wrong.
#[test]
fn bad_sdxl_files_are_clear_errors() {
    let no_bigg = edited_base("no_bigg", |k| !k.starts_with("conditioner.embedders.1."));
    let err = loading::load(&no_bigg, &opts()).unwrap_err().to_string();
    assert!(err.contains("conditioner.embedders.1.model.") && err.contains("bigG"), "{err}");
    let no_clip_l = edited_base("no_clip_l", |k| !k.starts_with("conditioner.embedders.0."));
    let err = loading::load(&no_clip_l, &opts()).unwrap_err().to_string();
    assert!(err.contains("conditioner.embedders.0.transformer.") && err.contains("CLIP ViT-L"), "{err}");
    let no_vae = edited_base("no_vae", |k| !k.starts_with("first_stage_model."));
    let err = loading::load(&no_vae, &opts()).unwrap_err().to_string();
    assert!(err.contains("the VAE") && err.contains("first_stage_model."), "{err}");
    let no_label_emb = edited_base("no_label_emb", |k| !k.starts_with("model.diffusion_model.label_emb."));
    let w = loading::load(&no_label_emb, &opts()).unwrap();
    let config = UNet2DConditionModelConfig::from_json(&w.unet.config.to_string()).unwrap();
    assert!(config.addition_embed_type.is_none(), "no label_emb: no text_time embedding is derived");

    let bytes = std::fs::read(fixtures().join("sdxl_base.safetensors")).unwrap();
    let truncated = temp_dir("truncated").join("model.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let err = loading::load(&truncated, &opts()).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
}

/// A safetensors file with `table`'s keys, dtypes and shapes whose data is a sparse hole of
/// zeros: the header of a full-size checkpoint without its gigabytes.
fn sparse_checkpoint(name: &str, table: &serde_json::Map<String, serde_json::Value>) -> PathBuf {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (key, entry) in table {
        let (dtype, shape) = (entry[0].as_str().unwrap(), entry[1].as_array().unwrap());
        let elements: u64 = shape.iter().map(|d| d.as_u64().unwrap()).product();
        let bytes = elements * if dtype == "I64" { 8 } else { 2 };
        header.insert(
            key.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let path = temp_dir(name).join("model.safetensors");
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(bytes.len() as u64 + offset).unwrap();
    path
}

/// The real SDXL 1.0 base and refiner single files' key names and shapes
/// (`tools/fixtures/sdxl_keys.py`, refereed by diffusers' model-type detection and converters):
/// with the default hints (real SDXL conventions) the loader finds the family and derives
/// diffusers' configs from the shapes alone (the tiny models' tests check that those configs
/// build networks that load every weight).
#[test]
fn real_sdxl_key_names_load_with_the_published_configs() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sdxl_keys.json")).unwrap()).unwrap();
    for (part, family) in [("base", ModelFamily::Sdxl), ("refiner", ModelFamily::SdxlRefiner)] {
        let path = sparse_checkpoint(part, json[part]["keys"].as_object().unwrap());
        let w = loading::load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(w.family, family);
        let want = &json[part]["configs"];
        let fields: Vec<&str> = want["unet"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_same_config(&w.unet.config, &want["unet"], &fields);
        assert_eq!(w.vae.config["scaling_factor"], want["vae"]["scaling_factor"]);
        let encoders = [("text_encoder", Some(&w.text_encoder)), ("text_encoder_2", w.text_encoder_2.as_ref())];
        for (name, component) in encoders {
            let Some(expected) = want.get(name) else { continue };
            let c = if family == ModelFamily::SdxlRefiner { &w.text_encoder } else { component.unwrap() };
            for (field, value) in expected.as_object().unwrap() {
                assert_eq!(&c.config[field], value, "{part} {name} {field}");
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}
