//! LoRA merging against diffusers' `load_lora_weights` + `fuse_lora` and the LyCORIS formulas.
//!
//! Fixtures: `tools/fixtures/lora.py` (see its docstring). Base: the tiny SD1 diffusers folder of
//! `tools/fixtures/checkpoints.py`, fp16 on disk, merged in float32 on both sides.
//!
//! Tolerance: max |kairos − reference| / max |reference| ≤ 1e-6 per weight (the case's
//! `tolerance` in lora.json). Both sides add float32 products of the same factors; only the
//! summation order inside the rank-r products (PEFT uses conv2d for 3×3 LoRAs) and of several
//! adapters differs, a few ulps of the weight's magnitude. Weights no LoRA touches must be bitwise
//! equal to the base.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::loading::{self, Component, LoadOptions, StableDiffusionWeights};
use kairos_models::lora::{merge, LoraError, LoraFile, LoraUse, MergeOptions, MergedModels};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base() -> StableDiffusionWeights {
    let opts = LoadOptions { variant: Some("fp16".into()), ..Default::default() };
    loading::load(fixtures().join("loading/sd1_diffusers"), &opts).unwrap()
}

fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("lora/lora.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["cases"].clone()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn load(c: &Component, key: &str) -> Tensor {
    c.load(key, DType::F32, &Device::Cpu).unwrap()
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).eq(b
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits()))
}

fn run_case(name: &str) -> f32 {
    let case = &cases()[name];
    let sd = base();
    let files: Vec<(LoraFile, f64)> = case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (LoraFile::open(fixtures().join("lora").join(l[0].as_str().unwrap())).unwrap(), l[1].as_f64().unwrap())
        })
        .collect();
    let uses: Vec<LoraUse> =
        files.iter().map(|(file, s)| LoraUse { file, unet_strength: *s, text_encoder_strength: *s }).collect();
    let merged = merge(&sd.unet, &sd.text_encoder, None, &uses, &MergeOptions::default()).unwrap();
    let expected =
        candle_core::safetensors::load(fixtures().join(format!("lora/{name}_merged.safetensors")), &Device::Cpu)
            .unwrap();
    let tol = case["tolerance"].as_f64().unwrap() as f32;
    let mut worst = 0f32;
    let mut patched = Vec::new();
    for (key, want) in &expected {
        let (comp, k) = key.split_once('.').unwrap();
        let got = match comp {
            "unet" => merged.unet.load(k, DType::F32, &Device::Cpu).unwrap(),
            _ => merged.text_encoder.load(k, DType::F32, &Device::Cpu).unwrap(),
        };
        let err = max_abs(&(&got - want).unwrap()) / max_abs(want);
        assert!(err <= tol, "{name}: {key}: relative error {err} > {tol}");
        worst = worst.max(err);
        patched.push(key.clone());
    }
    // Exactly the expected layers are patched, and everything else is the base, bit for bit.
    let mut got_patched: Vec<String> = merged
        .unet
        .patched_keys()
        .map(|k| format!("unet.{k}"))
        .chain(merged.text_encoder.patched_keys().map(|k| format!("text_encoder.{k}")))
        .collect();
    got_patched.sort();
    patched.sort();
    assert_eq!(got_patched, patched, "{name}: patched layers");
    assert_untouched_is_base(&merged, &sd);
    let applied: usize = merged.report.applied.iter().map(|(_, n)| n).sum();
    assert!(applied >= patched.len(), "{name}: report {:?}", merged.report);
    eprintln!("{name}: {} layers, max relative error {worst:e} (tolerance {tol:e})", patched.len());
    worst
}

fn assert_untouched_is_base(merged: &MergedModels, sd: &StableDiffusionWeights) {
    for (m, b) in [(&merged.unet, &sd.unet), (&merged.text_encoder, &sd.text_encoder)] {
        let patched: Vec<&str> = m.patched_keys().collect();
        for key in b.keys().filter(|k| !patched.contains(k)) {
            assert!(bitwise_equal(&m.load(key, DType::F32, &Device::Cpu).unwrap(), &load(b, key)), "{key} changed");
        }
    }
}

#[test]
fn kohya_matches_diffusers_fuse_lora() {
    run_case("kohya");
}

#[test]
fn kohya_ldm_names_match_diffusers_fuse_lora() {
    run_case("kohya_ldm");
}

#[test]
fn peft_matches_diffusers_fuse_lora() {
    run_case("peft");
}

#[test]
fn diffusers_old_names_match_diffusers_fuse_lora() {
    run_case("diffusers_old");
}

#[test]
fn lcm_lora_layout_matches_diffusers_fuse_lora() {
    run_case("lcm_lora");
    let file = LoraFile::open(fixtures().join("lora/lcm_lora.safetensors")).unwrap();
    assert!(file.looks_like_lcm_lora());
    let kohya = LoraFile::open(fixtures().join("lora/kohya.safetensors")).unwrap();
    assert!(!kohya.looks_like_lcm_lora());
}

#[test]
fn two_loras_with_strengths_match_diffusers_set_adapters() {
    run_case("multi");
}

#[test]
fn locon_ldm_matches_formula() {
    run_case("locon_ldm");
}

#[test]
fn loha_matches_formula() {
    run_case("loha");
}

#[test]
fn lokr_matches_formula() {
    run_case("lokr");
}

/// Switching LoRAs re-merges from the untouched base: after 100 merge / switch-back rounds every
/// weight is the base weight bit for bit, and the merged weights are identical every round.
#[test]
fn switching_loras_restores_base_bitwise_100_times() {
    let sd = base();
    let file = LoraFile::open(fixtures().join("lora/lcm_lora.safetensors")).unwrap();
    let first = merge(
        &sd.unet,
        &sd.text_encoder,
        None,
        &[LoraUse { file: &file, unet_strength: 1.0, text_encoder_strength: 1.0 }],
        &MergeOptions::default(),
    )
    .unwrap();
    let key = "down_blocks.0.resnets.0.conv1.weight";
    let merged_once = first.unet.load(key, DType::F32, &Device::Cpu).unwrap();
    for _ in 0..100 {
        let m = merge(
            &sd.unet,
            &sd.text_encoder,
            None,
            &[LoraUse { file: &file, unet_strength: 1.0, text_encoder_strength: 1.0 }],
            &MergeOptions::default(),
        )
        .unwrap();
        assert!(bitwise_equal(&m.unet.load(key, DType::F32, &Device::Cpu).unwrap(), &merged_once));
        let none = merge(&sd.unet, &sd.text_encoder, None, &[], &MergeOptions::default()).unwrap();
        assert!(bitwise_equal(&none.unet.load(key, DType::F32, &Device::Cpu).unwrap(), &load(&sd.unet, key)));
    }
    let none = merge(&sd.unet, &sd.text_encoder, None, &[], &MergeOptions::default()).unwrap();
    assert_untouched_is_base(&none, &sd);
}

/// The merged component builds the real UNet through its `VarBuilder`.
#[test]
fn merged_unet_builds_through_var_builder() {
    use kairos_models::unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
    let sd = base();
    let file = LoraFile::open(fixtures().join("lora/kohya.safetensors")).unwrap();
    let m = merge(
        &sd.unet,
        &sd.text_encoder,
        None,
        &[LoraUse { file: &file, unet_strength: 0.8, text_encoder_strength: 0.8 }],
        &MergeOptions::default(),
    )
    .unwrap();
    let config: UNet2DConditionModelConfig = serde_json::from_value(sd.unet.config.clone()).unwrap();
    UNet2DConditionModel::new(m.unet.var_builder(DType::F32, &Device::Cpu), &config).unwrap();
}

fn write_lora(name: &str, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-lora-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| (k.to_string(), Tensor::ones(s.as_slice(), DType::F32, &Device::Cpu).unwrap()))
        .collect();
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

/// Unknown keys, missing layers and wrong shapes fail the merge with every key listed; with
/// `skip_unapplicable` the rest is applied and the problems are reported.
#[test]
fn unapplicable_keys_are_listed_never_dropped() {
    let sd = base();
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let path = write_lora(
        "bad",
        &[
            (&format!("{q}.lora_down.weight"), vec![2, 8]),
            (&format!("{q}.lora_up.weight"), vec![8, 2]),
            ("lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight", vec![2, 8]),
            ("lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight", vec![8, 2]),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![2, 5]),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", vec![64, 2]),
            ("something.else", vec![1]),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![2, 5]),
        ],
    );
    let file = LoraFile::open(&path).unwrap();
    let use_ = [LoraUse { file: &file, unet_strength: 1.0, text_encoder_strength: 1.0 }];
    let err = merge(&sd.unet, &sd.text_encoder, None, &use_, &MergeOptions::default()).unwrap_err();
    let LoraError::Unapplicable { problems, .. } = &err else { panic!("{err}") };
    let keys: BTreeMap<&str, &str> = problems.iter().map(|p| (p.key.as_str(), p.reason.as_str())).collect();
    assert_eq!(keys.len(), 4, "{err}");
    assert!(keys["lora_unet_down_blocks_9_attentions_0_proj_in"].contains("no such layer"), "{err}");
    assert!(keys["lora_te_text_model_encoder_layers_0_mlp_fc1"].contains("shape"), "{err}");
    assert!(keys["something.else"].contains("unknown LoRA key layout"), "{err}");
    assert!(keys["lora_te2_text_model_encoder_layers_0_mlp_fc1"].contains("no text_encoder_2"), "{err}");
    let m = merge(&sd.unet, &sd.text_encoder, None, &use_, &MergeOptions { skip_unapplicable: true }).unwrap();
    assert_eq!(m.report.skipped[0].1.len(), 4);
    assert_eq!(
        m.unet.patched_keys().collect::<Vec<_>>(),
        vec!["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    );
}
