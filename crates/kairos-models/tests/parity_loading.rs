//! Checkpoint loading against diffusers' converters.
//!
//! Fixtures: `tools/fixtures/checkpoints.py` writes tiny random SD1/SD2 models in the LDM
//! single-file layout (and as .ckpt, a standalone VAE .pt, a diffusers folder) and the diffusers
//! state dicts that diffusers' own `convert_ldm_*` / `convert_open_clip_checkpoint` return for
//! them. Tolerance: exact. Conversion only renames, slices rows and drops 1×1 conv dims, and the
//! only arithmetic is a dtype cast (fp16/bf16 → the same type, or f32 → f16 with round-to-nearest-
//! even on both sides), so every element must be bitwise equal.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::loading::{
    self, load_vae_file, Component, ConfigHints, LoadOptions, ModelFamily, PredictionType, UnetHeads,
};
use kairos_models::ModelError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loading")
}

fn expected_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The conventions of the tiny fixture models (see `NORM_NUM_GROUPS` etc. in the script).
fn hints(family: ModelFamily) -> ConfigHints {
    ConfigHints {
        norm_num_groups: 4,
        clip_head_dim: 8,
        unet_heads: match family {
            ModelFamily::Sd1 => None, // the SD1 default, 8 heads, is what the fixture uses
            _ => Some(UnetHeads::Channels(4)),
        },
    }
}

fn opts(family: ModelFamily) -> LoadOptions {
    LoadOptions { hints: hints(family), ..Default::default() }
}

fn expected_tensors(family: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(format!("{family}_expected_diffusers.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn assert_bitwise(a: &Tensor, b: &Tensor, key: &str) {
    assert_eq!(a.dims(), b.dims(), "{key}: shape");
    assert_eq!(a.dtype(), b.dtype(), "{key}: dtype");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{key}: values differ");
}

/// Every key of `component` equals diffusers' converter output, and no key is missing or extra.
fn assert_component_matches(component: &Component, expected: &HashMap<String, Tensor>) {
    let prefix = format!("{}.", component.name());
    let want: BTreeSet<&str> = expected.keys().filter_map(|k| k.strip_prefix(&prefix)).collect();
    let got: BTreeSet<&str> = component.keys().collect();
    assert_eq!(got, want, "{}: key sets differ", component.name());
    for key in want {
        let e = &expected[&format!("{prefix}{key}")];
        let t = component.load(key, e.dtype(), &Device::Cpu).unwrap();
        assert_bitwise(&t, e, &format!("{prefix}{key}"));
    }
}

/// The derived config agrees with the tiny diffusers model's config on every recorded field.
fn assert_config_matches(component: &Component, expected: &serde_json::Value) {
    let want = expected.as_object().unwrap();
    for (field, value) in want {
        assert_eq!(&component.config[field], value, "{}: config field `{field}`", component.name());
    }
}

fn check_single_file(file: &str, family: ModelFamily, name: &str) -> loading::StableDiffusionWeights {
    let w = loading::load(fixtures().join(file), &opts(family)).unwrap();
    assert_eq!(w.family, family);
    let expected = expected_tensors(name);
    let configs = &expected_json()[name];
    for c in [&w.unet, &w.vae, &w.text_encoder] {
        assert_component_matches(c, &expected);
        assert_config_matches(c, &configs[c.name()]);
    }
    w
}

#[test]
fn sd1_safetensors_matches_diffusers_converters() {
    let w = check_single_file("sd1_ldm.safetensors", ModelFamily::Sd1, "sd1");
    assert_eq!(w.prediction_type, PredictionType::Epsilon);
    assert!(w.skipped_keys.is_empty(), "{:?}", w.skipped_keys);
}

#[test]
fn sd2_safetensors_matches_diffusers_converters() {
    let w = check_single_file("sd2_ldm.safetensors", ModelFamily::Sd2, "sd2");
    // diffusers: SD2 single files are v-prediction unless global_step says SD2-base.
    assert_eq!(w.prediction_type, PredictionType::VPrediction);
    assert_eq!(w.unet.config["upcast_attention"], true);
}

#[test]
fn sd1_ckpt_with_state_dict_nesting_matches_diffusers_converters() {
    let w = check_single_file("sd1_ldm.ckpt", ModelFamily::Sd1, "sd1");
    assert_eq!(w.prediction_type, PredictionType::Epsilon);
}

#[test]
fn prediction_type_override() {
    let o = LoadOptions { prediction_type: Some(PredictionType::Epsilon), ..opts(ModelFamily::Sd2) };
    let w = loading::load(fixtures().join("sd2_ldm.safetensors"), &o).unwrap();
    assert_eq!(w.prediction_type, PredictionType::Epsilon);
    assert_eq!(w.unet.config["upcast_attention"], false);
}

#[test]
fn standalone_ldm_vae_pickle_matches_diffusers_converter() {
    let vae = load_vae_file(fixtures().join("vae_ldm.pt"), &hints(ModelFamily::Sd1)).unwrap();
    assert_component_matches(&vae, &expected_tensors("sd1"));
    assert_config_matches(&vae, &expected_json()["sd1"]["vae"]);
}

#[test]
fn diffusers_folder_with_fp16_variants_loads() {
    for variant in [None, Some("fp16".to_string())] {
        let o = LoadOptions { variant, ..Default::default() };
        let w = loading::load(fixtures().join("sd1_diffusers"), &o).unwrap();
        assert_eq!(w.family, ModelFamily::Sd1);
        assert_eq!(w.prediction_type, PredictionType::Epsilon);
        assert!(w.tokenizer_dir.as_ref().is_some_and(|d| d.join("vocab.json").is_file()));
        let expected = expected_tensors("sd1");
        let configs = &expected_json()["sd1"];
        for c in [&w.unet, &w.vae, &w.text_encoder] {
            assert_component_matches(c, &expected);
            assert_config_matches(c, &configs[c.name()]);
        }
    }
}

#[test]
fn var_builder_serves_diffusers_names_and_checks_shapes() {
    let w = loading::load(fixtures().join("sd1_ldm.safetensors"), &opts(ModelFamily::Sd1)).unwrap();
    let vb = w.vae.var_builder(DType::F32, &Device::Cpu);
    let t = vb.pp("encoder").pp("mid_block.attentions.0.to_q").get((16, 16), "weight").unwrap();
    assert_eq!(t.dtype(), DType::F32);
    let err = vb.pp("encoder").get((3, 3), "conv_in.bias").unwrap_err().to_string();
    assert!(err.contains("encoder.conv_in.bias") && err.contains("expected [3, 3]"), "{err}");
    let err = vb.get(1, "no.such.weight").unwrap_err().to_string();
    assert!(err.contains("missing weight `no.such.weight`"), "{err}");
    let unused = w.vae.unused_keys();
    assert_eq!(unused.len(), w.vae.keys().count() - 2);
    assert!(!unused.iter().any(|k| k == "encoder.conv_in.bias" || k == "encoder.mid_block.attentions.0.to_q.weight"));
}

// ---- errors ------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kairos-loading-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The SD1 fixture with `edit` applied, saved under a temporary path.
fn edited_sd1(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut t = candle_core::safetensors::load(fixtures().join("sd1_ldm.safetensors"), &Device::Cpu).unwrap();
    edit(&mut t);
    let path = temp_dir(name).join("model.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    path
}

#[test]
fn missing_file_is_reported() {
    let err = loading::load(fixtures().join("nope.safetensors"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::FileNotFound { .. }), "{err}");
}

#[test]
fn unknown_extension_is_reported() {
    let path = temp_dir("ext").join("model.gguf");
    std::fs::write(&path, b"GGUF").unwrap();
    let err = loading::load(&path, &LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, ModelError::UnknownExtension { extension, .. } if extension == "gguf"), "{err}");
    assert!(err.to_string().contains(".safetensors, .ckpt"), "{err}");
}

#[test]
fn truncated_files_are_reported_as_corrupt() {
    for name in ["sd1_ldm.safetensors", "sd1_ldm.ckpt"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let path = temp_dir("trunc").join(name);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = loading::load(&path, &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{name}: {err}");
    }
}

#[test]
fn unrecognised_layout_lists_keys() {
    let path = edited_sd1("layout", |t| {
        t.retain(|k, _| !k.starts_with("cond_stage_model."));
    });
    let err = loading::load(&path, &opts(ModelFamily::Sd1)).unwrap_err();
    assert!(matches!(err, ModelError::UnrecognisedLayout { .. }), "{err}");
    assert!(err.to_string().contains("cond_stage_model.transformer.*"), "{err}");

    let path = edited_sd1("layout_extra", |t| {
        let w = t["first_stage_model.encoder.conv_in.bias"].clone();
        t.insert("model.diffusion_model.lora_up.weight".into(), w.clone());
        t.insert("some_adapter.weight".into(), w);
    });
    let err = loading::load(&path, &opts(ModelFamily::Sd1)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnrecognisedLayout { .. }) && msg.contains("some_adapter.weight"), "{msg}");
}

#[test]
fn unknown_unet_key_is_reported() {
    let path = edited_sd1("unet_extra", |t| {
        let w = t["first_stage_model.encoder.conv_in.bias"].clone();
        t.insert("model.diffusion_model.lora_up.weight".into(), w);
    });
    let err = loading::load(&path, &opts(ModelFamily::Sd1)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnrecognisedLayout { .. }) && msg.contains("lora_up"), "{msg}");
}

#[test]
fn missing_weight_is_reported() {
    let path = edited_sd1("missing", |t| {
        t.remove("model.diffusion_model.out.2.weight");
    });
    let err = loading::load(&path, &opts(ModelFamily::Sd1)).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingWeight { component, key } if component == "unet" && key == "conv_out.weight"),
        "{err}"
    );
}
