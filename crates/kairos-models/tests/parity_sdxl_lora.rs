//! SDXL LoRA merging against diffusers' `StableDiffusionXLPipeline.load_lora_weights` +
//! `set_adapters` + `fuse_lora`, into the UNet and both text encoders.
//!
//! Fixtures: `tools/fixtures/sdxl_lora.py` (see its docstring): kohya names on the SGM UNet
//! (`lora_unet_input_blocks_4_1_...`, `label_emb_0_0`, resnet sublayers) with `lora_te1_` /
//! `lora_te2_`, kohya prefixes with diffusers names, PEFT `unet.` / `text_encoder.` /
//! `text_encoder_2.`, and two of them at once with strengths 0.7 and −0.5. Base: the tiny SDXL
//! base of `tools/fixtures/sdxl.py` (2 down blocks, layers_per_block 2: its SGM indices are not
//! SDXL 1.0's), as the diffusers folder (fp16 on disk) and as the SGM single file (bf16, the same
//! values), merged in float32 on both sides.
//!
//! Tolerance: max |kairos − reference| / max |reference| ≤ 1e-6 per weight (the case's
//! `tolerance` in lora.json). Both sides add float32 products of the same factors to the same
//! float32 base; only the summation order inside the rank-r products (PEFT uses conv2d for conv
//! LoRAs) and across adapters differs, a few ulps of the weight's magnitude. Weights no LoRA
//! touches must be bitwise equal to the base.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kairos_models::loading::{self, ConfigHints, LoadOptions, StableDiffusionWeights};
use kairos_models::lora::{merge, LoraError, LoraFile, LoraUse, MergeOptions, MergedComponent, MergedModels};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn lora_dir() -> PathBuf {
    fixtures().join("sdxl/lora")
}

/// The tiny models' text encoders have 8-wide heads (a hint, as in parity_sdxl.rs).
fn load(name: &str) -> StableDiffusionWeights {
    let opts = LoadOptions {
        hints: ConfigHints { clip_head_dim: 8, ..ConfigHints::default() },
        variant: Some("fp16".into()),
        ..Default::default()
    };
    loading::load(fixtures().join("sdxl").join(name), &opts).unwrap()
}

fn json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(lora_dir().join("lora.json")).unwrap()).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn merge_all(sd: &StableDiffusionWeights, uses: &[LoraUse<'_>]) -> Result<MergedModels, LoraError> {
    merge(&sd.unet, &sd.text_encoder, sd.text_encoder_2.as_ref(), uses, &MergeOptions::default())
}

/// The merged components under the fixture's key prefixes.
fn by_prefix(m: &MergedModels) -> Vec<(&'static str, &MergedComponent)> {
    let mut v = vec![("unet", &m.unet), ("text_encoder", &m.text_encoder)];
    v.extend(m.text_encoder_2.as_ref().map(|c| ("text_encoder_2", c)));
    v
}

/// Layers in a LoRA file: one `lora_down` / `lora_A` per layer in these files.
fn layer_count(path: &Path) -> usize {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    t.keys().filter(|k| k.ends_with(".lora_down.weight") || k.ends_with(".lora_A.weight")).count()
}

/// Merges a case into `model` and compares with diffusers; returns the worst relative error.
fn run_case(name: &str, model: &str) -> f32 {
    let json = json();
    let case = &json["cases"][name];
    let sd = load(model);
    let files: Vec<(LoraFile, f64)> = case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (LoraFile::open(lora_dir().join(l[0].as_str().unwrap())).unwrap(), l[1].as_f64().unwrap()))
        .collect();
    let uses: Vec<LoraUse> =
        files.iter().map(|(file, s)| LoraUse { file, unet_strength: *s, text_encoder_strength: *s }).collect();
    // Strict: any key of any file that is not applied fails the merge.
    let merged = merge_all(&sd, &uses).unwrap_or_else(|e| panic!("{name} on {model}: {e}"));
    for ((file, _), (path, applied)) in files.iter().zip(&merged.report.applied) {
        assert_eq!(path, file.path());
        assert_eq!(*applied, layer_count(file.path()), "{name}: every layer of {} applied", path.display());
    }
    assert!(merged.report.skipped.is_empty());
    let expected =
        candle_core::safetensors::load(lora_dir().join(format!("{name}_merged.safetensors")), &Device::Cpu).unwrap();
    let components: HashMap<&str, &MergedComponent> = by_prefix(&merged).into_iter().collect();
    let tol = case["tolerance"].as_f64().unwrap() as f32;
    let mut worst = 0f32;
    for (key, want) in &expected {
        let (comp, k) = key.split_once('.').unwrap();
        let got = components[comp].load(k, DType::F32, &Device::Cpu).unwrap();
        let err = max_abs(&(&got - want).unwrap()) / max_abs(want);
        assert!(err <= tol, "{name} on {model}: {key}: relative error {err:e} > {tol:e}");
        worst = worst.max(err);
    }
    // Exactly the layers diffusers fused are patched (as lora.json lists them too), and
    // everything else is the base, bit for bit.
    let got_patched: BTreeSet<String> =
        by_prefix(&merged).into_iter().flat_map(|(p, c)| c.patched_keys().map(move |k| format!("{p}.{k}"))).collect();
    let want_patched: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(got_patched, want_patched, "{name} on {model}: patched layers");
    let listed: BTreeSet<String> =
        case["merged_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(want_patched, listed, "{name}: fixture keys");
    assert_untouched_is_base(&merged);
    eprintln!("{name} on {model}: {} layers, max relative error {worst:e} (tolerance {tol:e})", listed.len());
    worst
}

fn assert_untouched_is_base(merged: &MergedModels) {
    for (_, m) in by_prefix(merged) {
        let patched: BTreeSet<&str> = m.patched_keys().collect();
        for key in m.base().keys().filter(|k| !patched.contains(k)) {
            let got = m.load(key, DType::F32, &Device::Cpu).unwrap();
            let base = m.base().load(key, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(f32_bits(&got), f32_bits(&base), "{}: {key} changed", m.base().name());
        }
    }
}

fn both_layouts(name: &str) {
    run_case(name, "base");
    run_case(name, "sdxl_base.safetensors");
}

#[test]
fn kohya_sgm_names_match_diffusers_fuse_lora() {
    both_layouts("kohya_sgm");
}

#[test]
fn kohya_diffusers_names_match_diffusers_fuse_lora() {
    both_layouts("kohya_diffusers");
}

#[test]
fn peft_names_match_diffusers_fuse_lora() {
    both_layouts("peft");
}

#[test]
fn two_loras_with_strengths_match_diffusers_set_adapters() {
    both_layouts("multi");
}

/// The refiner's only encoder is bigG (`text_encoder_2`): `lora_te2_` / `text_encoder_2.`
/// layers patch it with the same ΔW as the base's bigG, and CLIP-L layers are reported, not
/// dropped. (The refiner's UNet has other widths, so the UNet layers are reported too.)
#[test]
fn te2_layers_patch_the_refiners_only_encoder() {
    let base = load("base");
    let refiner = load("refiner");
    assert_eq!(refiner.text_encoder.name(), "text_encoder_2");
    let expected = candle_core::safetensors::load(lora_dir().join("peft_merged.safetensors"), &Device::Cpu).unwrap();
    let file = LoraFile::open(lora_dir().join("peft.safetensors")).unwrap();
    let uses = [LoraUse { file: &file, unet_strength: 0.6, text_encoder_strength: 0.6 }];
    let err = merge_all(&refiner, &uses).unwrap_err();
    assert!(err.to_string().contains("no CLIP-L text_encoder"), "{err}");
    let opts = MergeOptions { skip_unapplicable: true };
    let m = merge(&refiner.unet, &refiner.text_encoder, None, &uses, &opts).unwrap();
    let te2_keys: Vec<&str> = expected.keys().filter_map(|k| k.strip_prefix("text_encoder_2.")).collect();
    assert!(!te2_keys.is_empty());
    let mut patched: Vec<&str> = m.text_encoder.patched_keys().collect();
    patched.sort();
    let mut want = te2_keys.clone();
    want.sort();
    assert_eq!(patched, want);
    let te2_base = base.text_encoder_2.as_ref().unwrap();
    for k in te2_keys {
        let load = |c: &loading::Component| c.load(k, DType::F32, &Device::Cpu).unwrap();
        let want_delta = (&expected[&format!("text_encoder_2.{k}")] - load(te2_base)).unwrap();
        let got = m.text_encoder.load(k, DType::F32, &Device::Cpu).unwrap();
        let got_delta = (got - load(&refiner.text_encoder)).unwrap();
        let err = max_abs(&(&got_delta - &want_delta).unwrap()) / max_abs(&expected[&format!("text_encoder_2.{k}")]);
        assert!(err <= 1e-6, "{k}: ΔW differs by {err:e}");
    }
    let skipped = &m.report.skipped[0].1;
    assert!(
        skipped.iter().any(|p| p.key.starts_with("text_encoder.") && p.reason.contains("no CLIP-L")),
        "{skipped:?}"
    );
}

fn write_lora(name: &str, tensors: &[(String, Vec<usize>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-sdxl-lora-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| (k.clone(), (Tensor::ones(s.as_slice(), DType::F32, &Device::Cpu).unwrap() * 0.01).unwrap()))
        .collect();
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn problems(err: &LoraError) -> BTreeMap<String, String> {
    let LoraError::Unapplicable { problems, .. } = err else { panic!("{err}") };
    problems.iter().map(|p| (p.key.clone(), p.reason.clone())).collect()
}

/// A layer the model lacks (an SGM index past the tiny UNet's blocks, a text-encoder layer past
/// its depth) and an SD1 LoRA (other widths) fail the merge, every key listed with the fix.
#[test]
fn layers_the_model_lacks_and_sd1_loras_are_clear_errors() {
    let sd = load("base");
    let lora = |name: &str, shape: [usize; 2]| {
        vec![
            (format!("{name}.lora_down.weight"), vec![2, shape[1]]),
            (format!("{name}.lora_up.weight"), vec![shape[0], 2]),
        ]
    };
    let mut keys = lora("lora_unet_input_blocks_4_1_proj_in", [64, 64]);
    keys.extend(lora("lora_unet_input_blocks_10_1_proj_in", [64, 64]));
    keys.extend(lora("lora_te2_text_model_encoder_layers_12_mlp_fc1", [64, 16]));
    let path = write_lora("missing", &keys);
    let file = LoraFile::open(&path).unwrap();
    let err = merge_all(&sd, &[LoraUse { file: &file, unet_strength: 1.0, text_encoder_strength: 1.0 }]).unwrap_err();
    let p = problems(&err);
    assert_eq!(p.len(), 2, "{err}");
    assert!(p["lora_unet_input_blocks_10_1_proj_in"].contains("no such layer in the unet"), "{err}");
    assert!(
        p["lora_te2_text_model_encoder_layers_12_mlp_fc1"].contains("no such layer in the text_encoder_2"),
        "{err}"
    );
    assert!(err.to_string().contains("use one made for this model"), "{err}");

    // The SD1 fixtures' LoRA: kohya diffusers names, SD1's tiny widths.
    let sd1 = LoraFile::open(fixtures().join("lora/kohya.safetensors")).unwrap();
    let err = merge_all(&sd, &[LoraUse { file: &sd1, unet_strength: 1.0, text_encoder_strength: 1.0 }]).unwrap_err();
    let p = problems(&err);
    eprintln!("SD1 LoRA on SDXL: {err}");
    assert!(p.values().all(|r| r.contains("another model")), "{err}");
    assert!(p.values().any(|r| r.contains("shape")), "{err}");

    // An SDXL LoRA on SD1: no bigG to patch.
    let opts = LoadOptions { variant: Some("fp16".into()), ..Default::default() };
    let sd1_model = loading::load(fixtures().join("loading/sd1_diffusers"), &opts).unwrap();
    let sdxl = LoraFile::open(lora_dir().join("kohya_sgm.safetensors")).unwrap();
    let uses = [LoraUse { file: &sdxl, unet_strength: 1.0, text_encoder_strength: 1.0 }];
    let err = merge_all(&sd1_model, &uses).unwrap_err();
    let p = problems(&err);
    assert!(
        p.iter()
            .any(|(k, r)| k.starts_with("lora_te2_") && r.contains("no text_encoder_2") && r.contains("SDXL model")),
        "{err}"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// LCM-LoRA for SDXL in SGM names (kohya-converted copies of lcm-lora-sdxl) is recognised; the
/// fixtures' LoRAs, which patch the text encoders, are not. (The PEFT names diffusers' training
/// script saves are checked through the pipeline, in kairos-pipeline's lora_sdxl.rs.)
#[test]
fn sdxl_lcm_lora_in_sgm_names_is_recognised() {
    // One layer of each kind the LCM-LoRA scripts train: attention, feed-forward, resnet conv1,
    // conv2, time_emb_proj, downsampler, upsampler.
    let sgm_layers = [
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "input_blocks_4_1_transformer_blocks_0_ff_net_2",
        "input_blocks_1_0_in_layers_2",
        "input_blocks_1_0_out_layers_3",
        "input_blocks_1_0_emb_layers_1",
        "input_blocks_3_0_op",
        "output_blocks_2_2_conv",
    ];
    let keys: Vec<(String, Vec<usize>)> = sgm_layers
        .iter()
        .flat_map(|l| ["lora_down", "lora_up"].map(|p| (format!("lora_unet_{l}.{p}.weight"), vec![2, 2])))
        .collect();
    assert!(LoraFile::open(write_lora("lcm_sgm", &keys)).unwrap().looks_like_lcm_lora());
    // Without the upsampler it is some other LoCon.
    let partial = write_lora("lcm_sgm_partial", &keys[..keys.len() - 2]);
    assert!(!LoraFile::open(partial).unwrap().looks_like_lcm_lora());
    for f in ["kohya_sgm", "kohya_diffusers", "peft"] {
        let file = LoraFile::open(lora_dir().join(format!("{f}.safetensors"))).unwrap();
        assert!(!file.looks_like_lcm_lora(), "{f}");
    }
}

/// w1 ⊗ w2 by its definition, for the LoKr check.
fn kron_by_definition(w1: &Tensor, w2: &Tensor) -> Tensor {
    let (a, b) = w1.dims2().unwrap();
    let (c, e) = w2.dims2().unwrap();
    let (x, y) = (w1.to_vec2::<f32>().unwrap(), w2.to_vec2::<f32>().unwrap());
    let mut out = vec![0f32; a * c * b * e];
    for (i, row) in out.chunks_mut(b * e).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = x[i / c][j / e] * y[i % c][j % e];
        }
    }
    Tensor::from_vec(out, (a * c, b * e), &Device::Cpu).unwrap()
}

/// LyCORIS LoHa and LoKr on SDXL names (SGM UNet, `lora_te1_`, `lora_te2_`) land on the right
/// diffusers weights with the LyCORIS formulas (alpha = rank: scale 1; LoKr with both factors
/// full: scale 1), at strength 0.5.
#[test]
fn lycoris_on_sdxl_names_matches_formula() {
    let sd = load("sdxl_base.safetensors");
    let dev = Device::Cpu;
    let rand = |s: &[usize]| Tensor::randn(0f32, 0.1, s, &dev).unwrap();
    let te2 = sd.text_encoder_2.as_ref().unwrap();
    // (file layer, component, diffusers key)
    let loha = [
        (
            "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k",
            &sd.unet,
            "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight",
        ),
        (
            "lora_te1_text_model_encoder_layers_1_self_attn_v_proj",
            &sd.text_encoder,
            "text_model.encoder.layers.1.self_attn.v_proj.weight",
        ),
    ];
    let lokr = ("lora_te2_text_model_encoder_layers_2_mlp_fc2", te2, "text_model.encoder.layers.2.mlp.fc2.weight");
    let mut map = HashMap::new();
    let mut want_delta = Vec::new();
    for (name, comp, key) in loha {
        let s = comp.shape(key).unwrap().to_vec();
        let (o, i) = (s[0], s[1..].iter().product::<usize>());
        let f: Vec<Tensor> = [vec![o, 2], vec![2, i], vec![o, 2], vec![2, i]].iter().map(|s| rand(s)).collect();
        for (p, t) in ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"].iter().zip(&f) {
            map.insert(format!("{name}.{p}"), t.clone());
        }
        map.insert(format!("{name}.alpha"), Tensor::new(2f32, &dev).unwrap());
        let d = (f[0].matmul(&f[1]).unwrap() * f[2].matmul(&f[3]).unwrap()).unwrap();
        want_delta.push((comp, key, d.reshape(s.as_slice()).unwrap()));
    }
    let (name, comp, key) = lokr;
    let s = comp.shape(key).unwrap().to_vec();
    let (w1, w2) = (rand(&[2, 4]), rand(&[s[0] / 2, s[1] / 4]));
    map.insert(format!("{name}.lokr_w1"), w1.clone());
    map.insert(format!("{name}.lokr_w2"), w2.clone());
    want_delta.push((comp, key, kron_by_definition(&w1, &w2)));
    let dir = std::env::temp_dir().join(format!("kairos-sdxl-lycoris-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lycoris.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let file = LoraFile::open(&path).unwrap();
    let m = merge_all(&sd, &[LoraUse { file: &file, unet_strength: 0.5, text_encoder_strength: 0.5 }]).unwrap();
    assert_eq!(m.report.applied[0].1, 3);
    let merged: HashMap<&str, &MergedComponent> = by_prefix(&m).into_iter().collect();
    for (comp, key, delta) in want_delta {
        let mc = merged[comp.name()];
        assert_eq!(mc.patched_keys().collect::<Vec<_>>(), vec![key], "{}", comp.name());
        let base = comp.load(key, DType::F32, &dev).unwrap();
        let want = (base + (delta * 0.5).unwrap()).unwrap();
        let err = max_abs(&(mc.load(key, DType::F32, &dev).unwrap() - &want).unwrap()) / max_abs(&want);
        eprintln!("LyCORIS {key}: relative error {err:e}");
        assert!(err <= 1e-6, "{key}: relative error {err:e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
