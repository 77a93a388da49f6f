//! CLIP text encoders against transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`:
//! tiny seeded random models (fixtures: tools/fixtures/clip.py, one folder per case with
//! config.json, model.safetensors, io.safetensors, meta.json).
//!
//! Tolerance: max abs error 1e-5 in f32. The outputs are O(1) (layer-normed) and the models
//! are 2–3 layers of width 32–48, so the only source of difference is f32 summation order in
//! matmuls, softmax and layer norm (≈1e-7 relative per op); 1e-5 leaves room for that while
//! catching any wrong scale, mask, activation or pooled position (all of which give errors
//! ≥ 1e-2).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kairos_models::text_encoders::clip::{
    CLIPTextConfig, CLIPTextModel, CLIPTextModelOutput, CLIPTextModelWithProjection, CLIPTextTransformer,
};
use kairos_models::text_encoders::TextEncoderError;

const TOLERANCE: f32 = 1e-5;

struct Case {
    config: CLIPTextConfig,
    weights: HashMap<String, Tensor>,
    io: HashMap<String, Tensor>,
}

fn load(name: &str) -> Case {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip").join(name);
    let config = CLIPTextConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    Case { config, weights, io }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check(what: &str, ours: &Tensor, reference: &Tensor) {
    let err = max_abs_diff(ours, reference);
    println!("{what}: max abs error {err:.3e}");
    assert!(err <= TOLERANCE, "{what}: max abs error {err} > {TOLERANCE}");
}

/// Compares every output of the text transformer, and each recorded clip skip.
fn check_text_outputs(name: &str, case: &Case, text_model: &CLIPTextTransformer, out: &CLIPTextModelOutput) {
    check(&format!("{name} last_hidden_state"), &out.last_hidden_state, &case.io["last_hidden_state"]);
    assert_eq!(out.hidden_states.len(), case.config.num_hidden_layers + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        check(&format!("{name} hidden_states[{i}]"), h, &case.io[&format!("hidden_states.{i}")]);
    }
    let mut checked = 0;
    for clip_skip in 1..=case.config.num_hidden_layers {
        if let Some(reference) = case.io.get(&format!("clip_skip.{clip_skip}")) {
            let ours = text_model.clip_skip_hidden_state(out, clip_skip).unwrap();
            check(&format!("{name} clip_skip {clip_skip}"), &ours, reference);
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn text_model(name: &str) -> (Case, CLIPTextModel) {
    let case = load(name);
    let vb = VarBuilder::from_tensors(case.weights.clone(), DType::F32, &Device::Cpu);
    let model = CLIPTextModel::new(vb, &case.config).unwrap();
    (case, model)
}

#[test]
fn clip_text_model_matches_transformers_sd1_quick_gelu_legacy_eos() {
    let (case, model) = text_model("sd1");
    let out = model.forward(&case.io["input_ids"]).unwrap();
    check_text_outputs("sd1", &case, model.text_model(), &out);
    check("sd1 pooler_output", &out.pooler_output, &case.io["pooler_output"]);
}

#[test]
fn clip_text_model_matches_transformers_sd2_gelu_eos_id() {
    let (case, model) = text_model("sd2");
    // u32 ids (what the tokenizer gives) must behave like the fixture's i64 ids.
    let input_ids = case.io["input_ids"].to_dtype(DType::U32).unwrap();
    let out = model.forward(&input_ids).unwrap();
    check_text_outputs("sd2", &case, model.text_model(), &out);
    check("sd2 pooler_output", &out.pooler_output, &case.io["pooler_output"]);
}

#[test]
fn clip_text_model_with_projection_matches_transformers_sdxl_te2() {
    let case = load("sdxl_te2");
    let vb = VarBuilder::from_tensors(case.weights.clone(), DType::F32, &Device::Cpu);
    let model = CLIPTextModelWithProjection::new(vb, &case.config).unwrap();
    let out = model.forward(&case.io["input_ids"]).unwrap();
    check_text_outputs("sdxl_te2", &case, model.text_model(), &out.text_outputs);
    check("sdxl_te2 text_embeds", &out.text_embeds, &case.io["text_embeds"]);
}

#[test]
fn clip_text_model_loads_transformers_5_unprefixed_weights() {
    let case = load("sd1");
    let unprefixed =
        case.weights.iter().map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(k).to_string(), v.clone())).collect();
    let model =
        CLIPTextModel::new(VarBuilder::from_tensors(unprefixed, DType::F32, &Device::Cpu), &case.config).unwrap();
    let out = model.forward(&case.io["input_ids"]).unwrap();
    check("sd1 unprefixed last_hidden_state", &out.last_hidden_state, &case.io["last_hidden_state"]);
}

#[test]
fn clip_text_model_rejects_bad_inputs() {
    let (case, model) = text_model("sd1");
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&too_long), Err(TextEncoderError::InputIdsShape { .. })));
    let floats = Tensor::zeros((1, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&floats), Err(TextEncoderError::InputIdsShape { .. })));
    let rank1 = Tensor::zeros(5, DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&rank1), Err(TextEncoderError::InputIdsShape { .. })));
    let out_of_vocab = Tensor::new(&[[0u32, case.config.vocab_size as u32]], &Device::Cpu).unwrap();
    let err = model.forward(&out_of_vocab).unwrap_err();
    assert!(matches!(err, TextEncoderError::TokenIdOutOfRange { id: 512, vocab_size: 512 }), "{err}");
    let out = model.forward(&case.io["input_ids"]).unwrap();
    for clip_skip in [0, case.config.num_hidden_layers + 1] {
        let err = model.text_model().clip_skip_hidden_state(&out, clip_skip).unwrap_err();
        assert!(matches!(err, TextEncoderError::ClipSkipOutOfRange { .. }), "{err}");
    }
    let missing: HashMap<String, Tensor> =
        case.weights.into_iter().filter(|(k, _)| !k.ends_with("final_layer_norm.weight")).collect();
    let err =
        CLIPTextModel::new(VarBuilder::from_tensors(missing, DType::F32, &Device::Cpu), &case.config).unwrap_err();
    assert!(err.to_string().contains("final_layer_norm.weight"), "{err}");
}
