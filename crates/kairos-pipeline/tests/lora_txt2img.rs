//! LoRAs merged at load time through `ModelOptions::loras`, on the tiny SD1 checkpoint with a
//! kohya LoRA written here: strength 0 gives the base image bit for bit, strength 1 changes it,
//! and an LCM-LoRA-shaped file is detected.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use kairos_models::lcm::{lcm_timesteps, LcmOptions};
use kairos_models::loading::{ConfigHints, LoadOptions};
use kairos_pipeline::{txt2img, LcmKind, LoraWeights, ModelOptions, PipelineError, StableDiffusion, Txt2ImgRequest};
use kairos_sampler::Sampler;
use kairos_schedule::ScheduleKind;

fn tiny_sd1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd1_tiny.safetensors")
}

fn options(loras: Vec<LoraWeights>) -> ModelOptions {
    ModelOptions {
        load: LoadOptions {
            hints: ConfigHints { norm_num_groups: 4, clip_head_dim: 8, unet_heads: None },
            ..Default::default()
        },
        loras,
        ..Default::default()
    }
}

/// A rank-2 kohya LoRA on the mid-block self-attention query (16 wide) and the first text-encoder
/// layer's query (16 wide), with random factors.
fn write_lora() -> PathBuf {
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    for prefix in [
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    ] {
        map.insert(format!("{prefix}.lora_down.weight"), Tensor::randn(0f32, 1.0, (2, 16), &dev).unwrap());
        map.insert(format!("{prefix}.lora_up.weight"), Tensor::randn(0f32, 1.0, (16, 2), &dev).unwrap());
        map.insert(format!("{prefix}.alpha"), Tensor::new(2f32, &dev).unwrap());
    }
    let dir = std::env::temp_dir().join(format!("kairos-pipeline-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("style.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn image(loras: Vec<LoraWeights>) -> Vec<u8> {
    let sd = StableDiffusion::load(tiny_sd1(), &options(loras)).unwrap();
    assert!(sd.lcm.is_none(), "a two-layer LoRA is no LCM-LoRA");
    let req = Txt2ImgRequest {
        prompt: "a cat".into(),
        width: 32,
        height: 24,
        steps: 2,
        sampler: Sampler::from_name("euler").unwrap(),
        schedule: ScheduleKind::Karras { rho: 7.0 },
        seed: 3,
        ..Default::default()
    };
    let out = txt2img(&sd.components(), &req, &mut |_| ControlFlow::Continue(())).unwrap();
    out.batches[0].images[0].data.clone()
}

#[test]
fn lora_strength_zero_is_the_base_and_one_changes_the_image() {
    let path = write_lora();
    let with = |s: f64| vec![LoraWeights { path: path.clone(), unet_strength: s, text_encoder_strength: s }];
    let base = image(vec![]);
    // Strength 0 adds 0·ΔW = 0 to every patched weight: the same weights, so the same image exactly.
    assert_eq!(image(with(0.0)), base);
    let changed = image(with(1.0));
    let diff = changed.iter().zip(&base).filter(|(a, b)| a != b).count();
    assert!(diff > 0, "a strength-1 LoRA must change the image");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn missing_or_unapplicable_lora_is_a_clear_error() {
    let missing =
        LoraWeights { path: "/no/such/lora.safetensors".into(), unet_strength: 1.0, text_encoder_strength: 1.0 };
    let err = StableDiffusion::load(tiny_sd1(), &options(vec![missing])).err().unwrap();
    assert!(matches!(err, PipelineError::Lora(_)), "{err}");
    assert!(err.to_string().contains("/no/such/lora.safetensors"), "{err}");

    let dir = std::env::temp_dir().join(format!("kairos-pipeline-lora-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.safetensors");
    let t = Tensor::zeros((2, 16), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([("lora_unet_no_such_layer.lora_down.weight".to_string(), t)]),
        &path,
    )
    .unwrap();
    let bad = LoraWeights { path: path.clone(), unet_strength: 1.0, text_encoder_strength: 1.0 };
    let err = StableDiffusion::load(tiny_sd1(), &options(vec![bad])).err().unwrap();
    assert!(err.to_string().contains("cannot be applied"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A LoCon-style LoRA on every layer kind the LCM-LoRA distillation script trains (attention,
/// feed-forward, resnet convs and time embedding, down- and upsampler convs) on the UNet only.
fn write_lcm_lora() -> PathBuf {
    let dev = Device::Cpu;
    let layers: [(&str, &[usize]); 7] = [
        ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", &[8, 8]),
        ("down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2", &[8, 32]),
        ("down_blocks_0_resnets_0_conv1", &[8, 8, 3, 3]),
        ("down_blocks_0_resnets_0_conv2", &[8, 8, 3, 3]),
        ("down_blocks_0_resnets_0_time_emb_proj", &[8, 32]),
        ("down_blocks_0_downsamplers_0_conv", &[8, 8, 3, 3]),
        ("up_blocks_0_upsamplers_0_conv", &[16, 16, 3, 3]),
    ];
    let mut map = HashMap::new();
    for (name, shape) in layers {
        let (down, up): (Vec<usize>, Vec<usize>) = match shape {
            [o, i] => (vec![2, *i], vec![*o, 2]),
            [o, i, k, l] => (vec![2, *i, *k, *l], vec![*o, 2, 1, 1]),
            _ => unreachable!(),
        };
        let t = |s: &[usize]| (Tensor::randn(0f32, 1.0, s, &dev).unwrap() * 0.01).unwrap();
        map.insert(format!("lora_unet_{name}.lora_down.weight"), t(&down));
        map.insert(format!("lora_unet_{name}.lora_up.weight"), t(&up));
    }
    let dir = std::env::temp_dir().join(format!("kairos-pipeline-lcm-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lcm.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

#[test]
fn lcm_lora_is_detected_and_runs_with_boundary_conditions() {
    let path = write_lcm_lora();
    let lora = LoraWeights { path: path.clone(), unet_strength: 1.0, text_encoder_strength: 1.0 };
    let sd = StableDiffusion::load(tiny_sd1(), &options(vec![lora])).unwrap();
    assert_eq!(sd.lcm, Some(LcmKind::Lora));
    let c = sd.components();
    assert!(c.consistency.is_some(), "an LCM-LoRA runs through LCM's boundary conditions");
    let ts = lcm_timesteps(4, 1.0, &LcmOptions::default()).unwrap();
    let req = Txt2ImgRequest {
        width: 16,
        height: 16,
        steps: 4,
        cfg_scale: 1.0,
        sampler: Sampler::Lcm,
        schedule: ScheduleKind::Timesteps(ts.iter().map(|&t| t as f64).collect()),
        ..Default::default()
    };
    let out = txt2img(&c, &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.sigmas.len(), 5);
    let latents = out.batches[0].latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(latents.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
