//! `kairos generate` and `kairos inspect` on the tiny SD1 checkpoint of kairos-pipeline's
//! fixtures: PNG output with infotext, no overwriting, and the bad-input errors.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs kairos with `KAIROS_DTYPE=f32`, so that a run without `--dtype` is f32 as the fixtures
/// are (`--dtype auto`, the default, could pick bf16 on a CPU with AVX512-BF16).
fn kairos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(args)
        .output()
        .expect("the kairos binary runs")
}

fn tiny_sd1() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/sd1_tiny.safetensors");
    p.to_string_lossy().into_owned()
}

/// The tiny model's conventions (hidden flags) and a small fast run.
fn tiny_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--norm-num-groups",
        "4",
        "--clip-head-dim",
        "8",
        "-W",
        "32",
        "-H",
        "24",
        "--steps",
        "3",
        "--seed",
        "5",
        "--sampler",
        "Euler",
        "--output",
        out,
    ]
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fails(args: &[&str], expected: &[&str]) {
    let out = kairos(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: `{e}` not in: {stderr}");
    }
}

fn parameters_chunk(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(10).position(|w| w == b"parameters").expect("a parameters chunk");
    let len = u32::from_be_bytes(bytes[at - 8..at - 4].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&bytes[at + 11..at + len]).into_owned()
}

#[test]
fn generate_writes_png_with_infotext_and_never_overwrites() {
    let model = tiny_sd1();
    let dir = temp_dir("gen");
    let file = dir.join("cat.png");
    let file_s = file.to_string_lossy().into_owned();
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = tiny_args(&model, &file_s);
    args.extend(["--prompt", "a cat", "--negative-prompt", "dog", "--json"]);
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), file_s);
    let text = parameters_chunk(&file_s);
    assert!(text.starts_with("a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 7.5, Seed: 5, Size: 32x24, Model hash: "), "{text}");
    assert!(text.contains("Model: sd1_tiny, RNG: CPU"), "{text}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cat.json")).unwrap()).unwrap();
    assert_eq!(sidecar["seed"], 5);
    // Same file again: refused, file untouched.
    fails(&args, &["already exists", "never overwrites"]);

    // Into a directory, empty prompt, batch of two: A1111 names, next free numbers.
    let dir_s = dir.to_string_lossy().into_owned();
    let mut args = tiny_args(&model, &dir_s);
    args.extend(["--batch-size", "2", "--seeding", "per-image"]);
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| PathBuf::from(l).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["00000-5.png", "00001-6.png"]);
    assert!(parameters_chunk(&dir.join("00001-6.png").to_string_lossy()).starts_with("Steps: 3, "));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_rejects_bad_input() {
    let model = tiny_sd1();
    let dir = temp_dir("bad");
    let out = dir.to_string_lossy().into_owned();
    // The tiny arguments with one flag's value replaced or added.
    let with = |extra: &[&'static str]| {
        let mut a = tiny_args(&model, &out);
        match a.iter().position(|f| *f == extra[0]) {
            Some(i) => a[i + 1] = extra[1],
            None => a.extend_from_slice(extra),
        }
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>, expected: &[&str]| fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), expected);
    run(with(&["-W", "500"]), &["width must be a positive multiple of 8, got 500", "504"]);
    run(with(&["--sampler", "euler_z"]), &["unknown sampler `euler_z`", "accepted: euler, euler_ancestral"]);
    run(with(&["--schedule", "fast"]), &["unknown schedule `fast`", "karras"]);
    run(with(&["--rng", "mt"]), &["unknown rng `mt`", "torch-cpu"]);
    fails(&["generate", "--model", "/no/such/model.safetensors"], &["model not found: /no/such/model.safetensors"]);
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    fails(&["generate", "--model", manifest], &["unknown checkpoint format `toml`", ".safetensors"]);
    fails(&["inspect", manifest], &["unknown checkpoint format `toml`"]);
    assert!(!dir.exists(), "nothing written on errors");
}

#[test]
fn inspect_reports_family_dtypes_and_parameters() {
    let out = kairos(&["inspect", &tiny_sd1(), "--json", "--norm-num-groups", "4", "--clip-head-dim", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["family"], "sd1");
    assert_eq!(v["prediction_type"], "epsilon");
    assert_eq!(v["layout"], "single file (LDM keys)");
    assert!(v["vae"].as_str().unwrap().starts_with("baked in"));
    assert!(v["dtypes"]["f16"].as_u64().unwrap() > 0, "{v}");
    // The tiny text encoder: 49408 x 16 token embedding alone.
    assert!(v["parameters"]["text_encoder"].as_u64().unwrap() > 49408 * 16);
}

/// Issue 5's round trip: `kairos schedule optimize` writes a schedule file that `kairos schedule`
/// and `kairos generate --sigmas-file` read, both interpolating it to --steps the same way.
#[test]
fn optimized_schedule_file_round_trips_into_generate() {
    let model = tiny_sd1();
    let dir = temp_dir("sigmas-file");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ays.json").to_string_lossy().into_owned();
    let opt = ["schedule", "optimize", "--steps", "6", "--t-samples", "32", "--eval-t-samples", "64"];
    // No judge-guided refinement: its judged sampler runs would only slow this file test down.
    let out =
        kairos(&[&opt[..], &["--max-sweeps", "2", "--refine-sweeps", "0", "--compare", "", "--out", &file]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let printed = kairos(&["schedule", "--sigmas-file", &file, "--steps", "3", "--json"]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();

    let png = dir.join("img.png").to_string_lossy().into_owned();
    let mut args = tiny_args(&model, &png);
    args.extend(["--sigmas-file", &file, "--json"]);
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("img.json")).unwrap()).unwrap();
    // Both read the same file with the same interpolation: equal to the last bit.
    assert_eq!(sidecar["sigmas"], printed["sigmas"]);
    assert!(parameters_chunk(&png).contains("Steps: 3,"));

    fails(&[&tiny_args(&model, &png)[..], &["--sigmas-file", "/nonexistent/ays.json"]].concat(), &["ays.json"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--vae` with the standalone LDM VAE of kairos-models' loading fixtures, which holds the tiny
/// SD1 model's own VAE weights in float32 (the checkpoint stores them rounded to fp16): the
/// pixels are those of the baked-in VAE up to that rounding, and the infotext names the file as
/// A1111 does.
#[test]
fn generate_with_replacement_vae() {
    let model = tiny_sd1();
    let vae = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/loading/vae_ldm.pt");
    let vae = vae.to_string_lossy().into_owned();
    let dir = temp_dir("vae");
    std::fs::create_dir_all(&dir).unwrap();
    let baked = dir.join("baked.png").to_string_lossy().into_owned();
    let replaced = dir.join("replaced.png").to_string_lossy().into_owned();
    let out = kairos(&tiny_args(&model, &baked));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kairos(&[&tiny_args(&model, &replaced)[..], &["--vae", &vae]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = parameters_chunk(&replaced);
    assert!(text.contains(", VAE hash: ") && text.contains(", VAE: vae_ldm.pt"), "{text}");
    let pixels = |p: &str| image::open(p).unwrap().to_rgb8().into_raw();
    let (a, b) = (pixels(&baked), pixels(&replaced));
    let diff = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    // Only the decode differs (the same latents), by fp16 rounding of the weights: a few 8-bit
    // levels at most; some pixel differs, so the file's weights were used.
    assert!(diff > 0 && diff <= 2, "max pixel difference {diff}");
    fails(&[&tiny_args(&model, &replaced)[..], &["--vae", "/no/such/vae.pt"]].concat(), &["/no/such/vae.pt"]);

    // An SDXL-style VAE folder (scaling factor 0.13025) does not fit an SD1 model; the same
    // weights as a single file record no scaling factor and take the model's.
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/vae");
    let sdxl = fixtures.join("sdxl_tiny").to_string_lossy().into_owned();
    let png = dir.join("sdxl.png").to_string_lossy().into_owned();
    fails(
        &[&tiny_args(&model, &png)[..], &["--vae", &sdxl]].concat(),
        &["does not fit this model: its scaling factor is 0.13025, the model needs 0.18215"],
    );
    let sdxl_file = fixtures.join("sdxl_tiny_ldm.safetensors").to_string_lossy().into_owned();
    let out = kairos(&[&tiny_args(&model, &png)[..], &["--vae", &sdxl_file]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--low-memory` frees the text encoder after encoding and changes nothing in the image;
/// `--dtype f16|bf16` stores the weights in half precision (computing in f32 on the CPU) and gives
/// an image close to the f32 one.
#[test]
fn generate_low_memory_and_half_precision_weights() {
    let model = tiny_sd1();
    let dir = temp_dir("dtype");
    std::fs::create_dir_all(&dir).unwrap();
    let png = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let run = |name: &str, extra: &[&str]| {
        let path = png(name);
        let out = kairos(&[&tiny_args(&model, &path)[..], &["--prompt", "a cat"], extra].concat());
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        image::open(&path).unwrap().to_rgb8().into_raw()
    };
    let f32_pixels = run("f32.png", &[]);
    assert_eq!(run("low.png", &["--low-memory"]), f32_pixels, "--low-memory changed the image");
    // The tiny checkpoint's weights are stored in f16, so f16 weights lose nothing.
    assert_eq!(run("f16.png", &["--dtype", "f16"]), f32_pixels, "--dtype f16 changed the image");
    // bf16 keeps 8 mantissa bits (weights rounded by up to 2^-9 relative): measured 4 levels at
    // most and 0.41 on average on this image; the bounds leave 2× room.
    let pixels = run("bf16.png", &["--dtype", "bf16", "--low-memory"]);
    let diffs: Vec<u8> = pixels.iter().zip(&f32_pixels).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    println!("bf16: max pixel difference {max}, mean {mean:.3}");
    assert!(max <= 8 && mean <= 1.0, "bf16: max pixel difference {max}, mean {mean}");
    fails(&[&tiny_args(&model, &png("bad.png"))[..], &["--dtype", "f8"]].concat(), &["f8", "f32", "bf16"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--dtype auto` (the default when neither `--dtype` nor `KAIROS_DTYPE` is given) says on
/// stderr what it picked, records it in the infotext and the JSON sidecar, gives the pixels of that
/// dtype forced, and caches a probe in `KAIROS_CACHE_DIR` (read back by the next run; a corrupt
/// file is probed over). `--dtype` and `KAIROS_DTYPE` skip it.
#[test]
fn generate_dtype_auto_picks_records_and_caches() {
    let model = tiny_sd1();
    let dir = temp_dir("dtype-auto");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, extra: &[&str], env_dtype: Option<&str>| {
        let path = dir.join(name).to_string_lossy().into_owned();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kairos"));
        cmd.env_remove("KAIROS_DTYPE").env("KAIROS_CACHE_DIR", &cache);
        if let Some(d) = env_dtype {
            cmd.env("KAIROS_DTYPE", d);
        }
        let out = cmd.args([&tiny_args(&model, &path)[..], &["--prompt", "a cat", "--json"], extra].concat()).output();
        let out = out.expect("the kairos binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{extra:?}: {stderr}");
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name).with_extension("json")).unwrap()).unwrap();
        (image::open(&path).unwrap().to_rgb8().into_raw(), parameters_chunk(&path), sidecar, stderr)
    };
    let (pixels, text, sidecar, stderr) = run("auto.png", &[], None);
    let line = stderr.lines().find(|l| l.starts_with("dtype auto: ")).unwrap_or_else(|| panic!("{stderr}"));
    let picked = line["dtype auto: ".len()..].split(' ').next().unwrap().to_string();
    assert!(picked == "f32" || picked == "bf16", "{line}");
    assert!(text.contains(&format!(", Dtype: {picked}")), "{text}");
    assert_eq!(sidecar["dtype"], picked.as_str());
    assert_eq!(sidecar["dtype_auto"]["dtype"], picked.as_str(), "{sidecar}");
    let reason = sidecar["dtype_auto"]["reason"].as_str().unwrap().to_string();
    // The picked dtype forced gives the same image; forcing skips the probe and the cache.
    let forced_cache_before = cache.exists();
    let (forced, forced_text, forced_sidecar, forced_stderr) = run("forced.png", &["--dtype", &picked], None);
    assert_eq!(forced, pixels, "auto ({picked}) and --dtype {picked} differ");
    assert_eq!(forced_text, text);
    assert!(!forced_stderr.contains("dtype auto"), "{forced_stderr}");
    assert_eq!(forced_sidecar["dtype_auto"], serde_json::Value::Null);
    assert_eq!(cache.exists(), forced_cache_before);
    // KAIROS_DTYPE forces too, and --dtype beats it.
    let (_, text, _, stderr) = run("env.png", &[], Some("f16"));
    assert!(text.contains(", Dtype: f16") && !stderr.contains("dtype auto"), "{text}\n{stderr}");
    let (_, text, _, _) = run("flag.png", &["--dtype", "f32"], Some("bf16"));
    assert!(text.contains(", Dtype: f32"), "{text}");
    match reason.as_str() {
        "probe" => {
            // Measured and cached: the next run reads the cache.
            let file = cache.join("dtype.json");
            let cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(cached["entries"].as_object().unwrap().len(), 1, "{cached}");
            assert!(line.contains("f32 ") && line.contains("bf16 ") && line.contains("cached in"), "{line}");
            let (_, _, sidecar, stderr) = run("cached.png", &[], None);
            assert_eq!(sidecar["dtype_auto"]["reason"], "cached-probe", "{stderr}");
            assert!(stderr.contains(&format!("dtype auto: {picked} (cached probe on ")), "{stderr}");
            // The cached times decide: a cache where bf16 won gives the `--dtype bf16` image.
            let mut edited = cached.clone();
            for entry in edited["entries"].as_object_mut().unwrap().values_mut() {
                entry["f32_s"] = 0.2.into();
                entry["bf16_s"] = 0.1.into();
            }
            std::fs::write(&file, edited.to_string()).unwrap();
            let (bf16_auto, text, _, stderr) = run("cached-bf16.png", &[], None);
            assert!(stderr.contains("dtype auto: bf16 (cached probe on "), "{stderr}");
            assert!(text.contains(", Dtype: bf16"), "{text}");
            assert_eq!(bf16_auto, run("bf16.png", &["--dtype", "bf16"], None).0);
            // A corrupt cache is probed over and rewritten, not an error.
            std::fs::write(&file, "{ not json").unwrap();
            let (_, _, sidecar, stderr) = run("corrupt.png", &[], None);
            assert_eq!(sidecar["dtype_auto"]["reason"], "probe", "{stderr}");
            let _: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        }
        // No AVX512-BF16 (or KAIROS_KERNELS=off): f32 without a probe, nothing cached.
        "no-avx512-bf16" => {
            assert_eq!(picked, "f32");
            assert!(!cache.exists());
        }
        other => panic!("unexpected reason {other}: {sidecar}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--preview` writes the linear latent → RGB preview (latent resolution) during sampling, and
/// `--taesd` refuses a TAESD whose upsampling differs from the model's VAE.
#[test]
fn generate_writes_previews_and_checks_taesd() {
    let model = tiny_sd1();
    let dir = temp_dir("preview");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("img.png").to_string_lossy().into_owned();
    let preview = dir.join("preview.png").to_string_lossy().into_owned();
    let out = kairos(&[&tiny_args(&model, &png)[..], &["--preview", &preview, "--preview-every", "2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 32x24 pixels, and the tiny VAE downsamples 2x: a 16x12 latent.
    let image = image::open(&preview).unwrap();
    assert_eq!((image.width(), image.height()), (16, 12));
    assert!(!dir.join("preview.png.tmp").exists());

    let taesd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/taesd/diffusers");
    let png2 = dir.join("img2.png").to_string_lossy().into_owned();
    let taesd = taesd.to_string_lossy().into_owned();
    fails(
        &[&tiny_args(&model, &png2)[..], &["--taesd", &taesd]].concat(),
        &["does not fit this model", "at 4x", "at 2x"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// img2img from a PNG: the size follows the image (rounded to multiples of 8, with a note), each
/// resize mode runs, the infotext records the strength, and a strength that leaves no step is
/// refused.
#[test]
fn generate_img2img_from_png() {
    let model = tiny_sd1();
    let init = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/img2img_init.png");
    let init = init.to_string_lossy().into_owned();
    let dir = temp_dir("img2img");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("img.png").to_string_lossy().into_owned();
    let args = ["generate", "--model", &model, "--norm-num-groups", "4", "--clip-head-dim", "8", "--steps", "4"];
    let out =
        kairos(&[&args[..], &["--seed", "1", "--init-image", &init, "--strength", "0.5", "--output", &png]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (32, 24), "the init image's size");
    let text = parameters_chunk(&png);
    assert!(
        text.contains("Steps: 4,") && text.contains("Size: 32x24") && text.contains("Denoising strength: 0.5"),
        "{text}"
    );
    let png2 = dir.join("img2.png").to_string_lossy().into_owned();
    fails(
        &[&args[..], &["--init-image", &init, "--denoise", "0.1", "--output", &png2]].concat(),
        &["keeps no step (int(steps * denoise) = 0)", "use denoise >= 0.25"],
    );

    // A 35x27 image without -W/-H: 32x24 with a note, fitted by the resize mode.
    let odd = dir.join("odd.png");
    image::RgbImage::from_fn(35, 27, |x, y| image::Rgb([(x * 7) as u8, (y * 9) as u8, 90])).save(&odd).unwrap();
    let odd = odd.to_string_lossy().into_owned();
    for (k, mode) in ["just-resize", "crop-and-resize", "resize-and-fill"].iter().enumerate() {
        let png = dir.join(format!("odd{k}.png")).to_string_lossy().into_owned();
        let out = kairos(
            &[&args[..], &["--init-image", &odd, "--resize-mode", mode, "--denoise-rule", "a1111", "--output", &png]]
                .concat(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert!(stderr.contains("note: the init image is 35x27; generating 32x24"), "{stderr}");
        let image = image::open(&png).unwrap();
        assert_eq!((image.width(), image.height()), (32, 24), "{mode}");
    }
    fails(&[&args[..], &["--init-image", &odd, "--resize-mode", "stretch"]].concat(), &["just-resize"]);

    // Tiled VAE (encode and decode, 16-pixel tiles) gives an image of the same size; a tile size
    // the VAE cannot cut is refused before the model loads.
    let png = dir.join("tiled.png").to_string_lossy().into_owned();
    let tiled = ["--vae-tiling", "always", "--vae-tile-size", "16", "--output", &png];
    let out = kairos(&[&args[..], &["--init-image", &init], &tiled[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (32, 24));
    fails(&[&args[..], &["--vae-tile-size", "20"]].concat(), &["--vae-tile-size must be a positive multiple of 8"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kohya LoRA (all-ones factors, rank 2) on the tiny SD1's mid-block query and first
/// text-encoder query, written as `dir/name.safetensors`.
fn write_lora(dir: &std::path::Path, name: &str) -> PathBuf {
    use candle_core::{Device, Tensor};
    std::fs::create_dir_all(dir).unwrap();
    let mut map = std::collections::HashMap::new();
    for prefix in [
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    ] {
        map.insert(
            format!("{prefix}.lora_down.weight"),
            Tensor::ones((2, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        map.insert(
            format!("{prefix}.lora_up.weight"),
            Tensor::ones((16, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

/// A1111's `addnet_hash_safetensors` short hash, computed here from the file bytes.
fn addnet_short_hash(path: &std::path::Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    sha2::Sha256::digest(&bytes[8 + n..]).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn generate_applies_loras_from_tags_and_files_and_records_their_hashes() {
    let model = tiny_sd1();
    let dir = temp_dir("lora");
    let loras = dir.join("loras");
    let style = write_lora(&loras.join("sub"), "style");
    let extra = write_lora(&loras, "extra");
    let png_s = dir.join("a.png").to_string_lossy().into_owned();
    let loras_s = loras.to_string_lossy().into_owned();
    let extra_arg = format!("{}:0.5", extra.display());
    let mut args = tiny_args(&model, &png_s);
    args.extend(["--prompt", "a cat <lora:style:0.8>", "--lora-dir", &loras_s, "--lora", &extra_arg]);
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = parameters_chunk(&png_s);
    assert!(info.starts_with("a cat <lora:style:0.8>\n"), "A1111 keeps the tags in the infotext prompt: {info}");
    let want = format!("Lora hashes: \"style: {}, extra: {}\"", addnet_short_hash(&style), addnet_short_hash(&extra));
    assert!(info.contains(&want), "`{want}` not in: {info}");

    let other = dir.join("b.png").to_string_lossy().into_owned();
    let fails_with = |extra: &[&str], expected: &[&str]| {
        let mut a = tiny_args(&model, &other);
        a.extend_from_slice(extra);
        fails(&a, expected);
    };
    fails_with(&["--prompt", "<lora:style:1>"], &["LoRA `style`", "--lora-dir"]);
    fails_with(
        &["--prompt", "<lora:nope:1>", "--lora-dir", &loras_s],
        &["LoRA `nope` not found", "no nope.safetensors"],
    );
    fails_with(&["--lora", "/no/such/lora.safetensors:0.5"], &["LoRA file not found: /no/such/lora.safetensors"]);
    fails_with(&["--lora", "x.safetensors:inf"], &["strength `inf` is not a finite number"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An LCM-LoRA-shaped file (every layer kind the LCM-LoRA script trains, UNet only) switches the
/// defaults the user left open to lcm / 4 steps / cfg 1 and says so on stderr.
#[test]
fn generate_picks_lcm_defaults_for_an_lcm_lora() {
    use candle_core::{DType, Device, Tensor};
    let model = tiny_sd1();
    let dir = temp_dir("lcm-lora");
    std::fs::create_dir_all(&dir).unwrap();
    let layers: [(&str, &[usize]); 7] = [
        ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", &[8, 8]),
        ("down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2", &[8, 32]),
        ("down_blocks_0_resnets_0_conv1", &[8, 8, 3, 3]),
        ("down_blocks_0_resnets_0_conv2", &[8, 8, 3, 3]),
        ("down_blocks_0_resnets_0_time_emb_proj", &[8, 32]),
        ("down_blocks_0_downsamplers_0_conv", &[8, 8, 3, 3]),
        ("up_blocks_0_upsamplers_0_conv", &[16, 16, 3, 3]),
    ];
    let mut map = std::collections::HashMap::new();
    for (name, shape) in layers {
        let (down, up) = match shape {
            [o, i] => (vec![2, *i], vec![*o, 2]),
            [o, i, k, l] => (vec![2, *i, *k, *l], vec![*o, 2, 1, 1]),
            _ => unreachable!(),
        };
        map.insert(
            format!("lora_unet_{name}.lora_down.weight"),
            Tensor::zeros(down, DType::F32, &Device::Cpu).unwrap(),
        );
        map.insert(format!("lora_unet_{name}.lora_up.weight"), Tensor::zeros(up, DType::F32, &Device::Cpu).unwrap());
    }
    let lora = dir.join("lcm.safetensors");
    candle_core::safetensors::save(&map, &lora).unwrap();
    let (lora_s, png) = (lora.to_string_lossy().into_owned(), dir.join("a.png").to_string_lossy().into_owned());
    let args = [
        "generate",
        "--model",
        &model,
        "--norm-num-groups",
        "4",
        "--clip-head-dim",
        "8",
        "-W",
        "16",
        "-H",
        "16",
        "--seed",
        "1",
        "--lora",
        &lora_s,
        "--output",
        &png,
    ];
    let out = kairos(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("LCM-LoRA detected: using sampler lcm, 4 steps, cfg scale 1, LCM timesteps [999, 759, 499, 259]"),
        "{stderr}"
    );
    let info = parameters_chunk(&png);
    assert!(info.contains("Steps: 4, Sampler: LCM"), "{info}");
    assert!(info.contains("CFG scale: 1"), "{info}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kairos schedule optimize --model`: the AYS optimizer on the tiny SD1 checkpoint's UNet (CFG on
/// a prompt), x0 from a folder of images encoded by its VAE; the schedule file it writes drives
/// `generate --sigmas-file`. Mechanics only: random weights say nothing about the schedule.
#[test]
fn model_schedule_optimize_runs_end_to_end() {
    let model = tiny_sd1();
    let dir = temp_dir("optimize-model");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let init = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/img2img_init.png");
    std::fs::copy(&init, images.join("a.png")).unwrap();
    let file = dir.join("ays.json").to_string_lossy().into_owned();
    let images = images.to_string_lossy().into_owned();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.to_string_lossy().into_owned();
    let opt = |images: &str, size: &str| -> Vec<String> {
        [
            "schedule",
            "optimize",
            "--model",
            &model,
            "--norm-num-groups",
            "4",
            "--clip-head-dim",
            "8",
            "--images",
            images,
            "--size",
            size,
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--t-samples",
            "2",
            "--eval-t-samples",
            "4",
            "--max-sweeps",
            "1",
            "--compare",
            "karras",
            "--out",
            &file,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| kairos(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(opt(&images, "16"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ays (optimized, 2)") && stdout.contains("karras (2)"), "{stdout}");
    let schedule: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(schedule["sigmas"].as_array().unwrap().len(), 3, "{schedule}");

    let png = dir.join("img.png").to_string_lossy().into_owned();
    let mut args = tiny_args(&model, &png);
    args.extend(["--sigmas-file", &file]);
    let out = kairos(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let fails_with =
        |args: Vec<String>, expected: &str| fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[expected]);
    fails_with(opt(&images, "20"), "--size 20 must be a positive multiple of 8");
    fails_with(opt(&empty, "16"), "no PNG or JPEG images in");
    let _ = std::fs::remove_dir_all(&dir);
}
