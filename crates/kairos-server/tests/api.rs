//! The A1111 API and kairos' endpoints on the tiny SD1 (and tiny SDXL) checkpoints: every
//! endpoint's status and body, images with their infotext, the queue, cancellation, auth, and a
//! corpus of bad requests that must each get a 4xx JSON error naming the field.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A small, fast txt2img body.
fn small(extra: Value) -> Value {
    let mut body = json!({
        "prompt": "a red cube",
        "negative_prompt": "blurry",
        "steps": 3,
        "width": 32,
        "height": 24,
        "seed": 5,
        "sampler_name": "Euler",
        "cfg_scale": 7.5,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

fn info(reply: &Reply) -> Value {
    serde_json::from_str(reply.json()["info"].as_str().expect("info is a JSON string")).unwrap()
}

#[test]
fn list_endpoints_describe_the_server() {
    let server = start(sd1_config("lists"));
    let samplers = server.get("/sdapi/v1/samplers").json();
    let names: Vec<&str> = samplers.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    for label in ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "UniPC", "LCM"] {
        assert!(names.contains(&label), "{label} not in {names:?}");
    }
    let dpm = samplers.as_array().unwrap().iter().find(|s| s["name"] == "DPM++ 2M").unwrap();
    assert_eq!(dpm["aliases"], json!(["dpmpp_2m"]));
    assert_eq!(dpm["options"]["scheduler"], "karras");

    let schedulers = server.get("/sdapi/v1/schedulers").json();
    let labels: Vec<&str> = schedulers.as_array().unwrap().iter().map(|s| s["label"].as_str().unwrap()).collect();
    for label in ["Automatic", "Karras", "Exponential", "Align Your Steps", "SGM Uniform", "gits", "ays"] {
        assert!(labels.contains(&label), "{label} not in {labels:?}");
    }

    let models = server.get("/sdapi/v1/sd-models").json();
    assert_eq!(models.as_array().unwrap().len(), 1);
    assert_eq!(models[0]["model_name"], "sd1_tiny");
    assert!(models[0]["title"].as_str().unwrap().starts_with("sd1_tiny.safetensors"));
    assert_eq!(server.get("/sdapi/v1/sd-vae").json(), json!([]));
    assert_eq!(server.get("/sdapi/v1/loras").json(), json!([]));
    let options = server.get("/sdapi/v1/options").json();
    assert!(options["sd_model_checkpoint"].as_str().unwrap().starts_with("sd1_tiny.safetensors"));
    assert_eq!(options["randn_source"], "GPU");
    let openapi = server.get("/openapi.json").json();
    assert_eq!(openapi["openapi"], "3.1.0");
    for path in ["/v1/schedule", "/v1/compare", "/sdapi/v1/txt2img"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
    let ui = server.get("/");
    assert_eq!(ui.status, 200);
    assert!(ui.text().contains("kairos"));
    assert_eq!(server.get("/ui/app.js").status, 200);
    assert_eq!(server.get("/health").json()["status"], "ok");
    for path in ["/sdapi/v1/upscalers", "/sdapi/v1/prompt-styles"] {
        assert_eq!(server.get(path).json(), json!([]), "{path}");
    }
    // Refreshing finds a checkpoint added since.
    let dir = server.get("/sdapi/v1/cmd-flags").json()["ckpt_dir"].as_str().unwrap().to_string();
    std::fs::copy(format!("{dir}/sd1_tiny.safetensors"), format!("{dir}/copy.safetensors")).unwrap();
    assert_eq!(server.get("/sdapi/v1/sd-models").json().as_array().unwrap().len(), 1);
    assert_eq!(server.post("/sdapi/v1/refresh-checkpoints", &json!({})).status, 200);
    assert_eq!(server.get("/sdapi/v1/sd-models").json().as_array().unwrap().len(), 2);
}

#[test]
fn txt2img_returns_pngs_with_infotext_and_a1111_info() {
    let server = start(sd1_config("txt2img"));
    let reply = server.post("/sdapi/v1/txt2img", &small(json!({"batch_size": 2, "n_iter": 2, "seed": 100})));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    let meta = info(&reply);
    // A1111: one generator per image, seed + i, batch j starts at seed + j · batch_size.
    assert_eq!(meta["all_seeds"], json!([100, 101, 102, 103]));
    assert_eq!(meta["seed"], 100);
    assert_eq!(meta["sampler_name"], "Euler");
    assert_eq!(meta["sd_model_name"], "sd1_tiny");
    assert_eq!(meta["width"], 32);
    assert_eq!(meta["infotexts"].as_array().unwrap().len(), 4);
    for (i, image) in images.iter().enumerate() {
        let (w, h, pixels, text) = decode_png(image.as_str().unwrap());
        assert_eq!((w, h, pixels.len()), (32, 24, 32 * 24 * 3));
        let text = text.expect("a parameters chunk");
        assert_eq!(text, meta["infotexts"][i].as_str().unwrap());
        assert!(text.contains(&format!("Seed: {}", 100 + i)), "{text}");
        assert!(text.contains("Steps: 3, Sampler: Euler, Schedule type: Uniform, CFG scale: 7.5"), "{text}");
    }
    assert_eq!(body["parameters"]["steps"], 3);
    assert_eq!(body["parameters"]["scheduler"], "Uniform");

    // Same request, same pixels; another seed, other pixels; `send_images: false` sends none.
    let a = server.post("/sdapi/v1/txt2img", &small(json!({}))).json();
    let b = server.post("/sdapi/v1/txt2img", &small(json!({}))).json();
    let c = server.post("/sdapi/v1/txt2img", &small(json!({"seed": 6}))).json();
    assert_eq!(a["images"], b["images"]);
    assert_ne!(decode_png(a["images"][0].as_str().unwrap()).2, decode_png(c["images"][0].as_str().unwrap()).2);
    let none = server.post("/sdapi/v1/txt2img", &small(json!({"send_images": false}))).json();
    assert_eq!(none["images"], json!([]));
    // Random seed (-1) is reported; unknown fields are ignored as A1111 does.
    let r = server.post("/sdapi/v1/txt2img", &small(json!({"seed": -1, "do_not_save_grid": true, "whatever": [1]})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(info(&r)["seed"].as_u64().unwrap() < 1 << 32);
    // Old combined labels and A1111 schedule labels.
    let r = server.post("/sdapi/v1/txt2img", &small(json!({"sampler_name": "DPM++ 2M Karras"})));
    assert!(info(&r)["infotexts"][0].as_str().unwrap().contains("Sampler: DPM++ 2M, Schedule type: Karras"));
    let r =
        server.post("/sdapi/v1/txt2img", &small(json!({"sampler_name": "Euler a", "scheduler": "Align Your Steps"})));
    assert!(info(&r)["infotexts"][0].as_str().unwrap().contains("Sampler: Euler a, Schedule type: Align Your Steps"));
    // override_settings: the CPU generator is recorded as A1111 does.
    let r = server.post("/sdapi/v1/txt2img", &small(json!({"override_settings": {"randn_source": "CPU"}})));
    assert!(info(&r)["infotexts"][0].as_str().unwrap().contains("RNG: CPU"));

    // png-info reads the infotext back, parsed as A1111 parses it.
    let png = a["images"][0].as_str().unwrap();
    let pi = server.post("/sdapi/v1/png-info", &json!({ "image": format!("data:image/png;base64,{png}") })).json();
    assert!(pi["info"].as_str().unwrap().starts_with("a red cube\nNegative prompt: blurry\nSteps: 3"));
    assert_eq!(pi["parameters"]["Seed"], "5");
    assert_eq!(pi["parameters"]["Size-1"], "32");
    assert_eq!(pi["items"]["parameters"], pi["info"]);
}

#[test]
fn img2img_starts_from_the_image() {
    let server = start(sd1_config("img2img"));
    let init = png_b64(40, 30);
    let reply = server.post(
        "/sdapi/v1/img2img",
        &small(
            json!({"init_images": [init], "denoising_strength": 0.5, "resize_mode": 1, "include_init_images": true}),
        ),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["images"].as_array().unwrap().len(), 2, "the result and the init image");
    let (w, h, _, text) = decode_png(body["images"][0].as_str().unwrap());
    assert_eq!((w, h), (32, 24));
    assert!(text.unwrap().contains("Denoising strength: 0.5"));
    assert_eq!(info(&reply)["denoising_strength"], 0.5);
    assert_eq!(body["parameters"]["init_images"], Value::Null);
    // Lower strength stays nearer the image: compare with full strength.
    let strong =
        server.post("/sdapi/v1/img2img", &small(json!({"init_images": [init], "denoising_strength": 1.0}))).json();
    assert_ne!(strong["images"][0], body["images"][0]);
    for (extra, field, status) in [
        (json!({"init_images": []}), "init_images", 400),
        (json!({"init_images": ["not base64!"]}), "init_images", 400),
        (json!({"init_images": ["aGVsbG8="]}), "init_images", 400),
        (json!({"init_images": [init], "resize_mode": 3}), "resize_mode", 422),
        (json!({"init_images": [init], "mask": init}), "mask", 422),
        (json!({"init_images": [init, init]}), "init_images", 422),
        (json!({"init_images": [init], "denoising_strength": 0}), "denoising_strength", 400),
        (json!({"init_images": [init], "denoising_strength": 1.5}), "denoising_strength", 400),
    ] {
        let r = server.post("/sdapi/v1/img2img", &small(extra.clone()));
        assert_eq!(r.status, status, "{extra}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{extra}");
    }
}

/// Posts `body` from another thread; returns its handle.
fn post_in_thread(server: &Server, path: &'static str, body: Value) -> std::thread::JoinHandle<Reply> {
    let (addr, auth) = (server.addr, server.auth.clone());
    std::thread::spawn(move || Server { addr, auth }.post(path, &body))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn progress_previews_interrupt_skip_and_the_full_queue() {
    let server = start(kairos_server::ServerConfig { queue_size: 1, ..sd1_config("queue") });
    let idle = server.get("/sdapi/v1/progress").json();
    assert_eq!((idle["progress"].as_f64(), idle["state"]["job_count"].as_u64()), (Some(0.0), Some(0)));

    let long = small(json!({"steps": 400, "force_task_id": "long-1"}));
    let running = post_in_thread(&server, "/sdapi/v1/txt2img", long);
    let mut seen = Value::Null;
    wait_until("a preview", || {
        seen = server.get("/sdapi/v1/progress").json();
        seen["current_image"].is_string() && seen["state"]["sampling_step"].as_u64() > Some(1)
    });
    assert!(seen["progress"].as_f64().unwrap() > 0.0);
    assert_eq!(seen["state"]["sampling_steps"], 400);
    assert_eq!(seen["current_task"], "long-1");
    let (w, h, _, _) = decode_png(seen["current_image"].as_str().unwrap());
    // The tiny VAE downsamples by 2: the latent → RGB preview is at latent size.
    assert_eq!((w, h), (16, 12), "the latent → RGB preview is at latent size");
    let no_image = server.get("/sdapi/v1/progress?skip_current_image=true").json();
    assert_eq!(no_image["current_image"], Value::Null);

    // One job waits (queue size 1); the next is refused with Retry-After.
    let queued = post_in_thread(&server, "/sdapi/v1/txt2img", small(json!({"force_task_id": "second"})));
    wait_until("the second job to queue", || server.get("/v1/queue").json()["pending"] == 1);
    assert_eq!(server.get("/sdapi/v1/progress?id_task=second").json()["queue_position"], 1);
    let full = server.post("/sdapi/v1/txt2img", &small(json!({})));
    assert_eq!(full.status, 503, "{}", full.text());
    assert!(full.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(full.json()["error"], "QueueFull");

    // Interrupt ends the long job early with what it has (no finished image); the queued one runs.
    assert_eq!(server.post("/sdapi/v1/interrupt", &json!({})).status, 200);
    let long_reply = running.join().unwrap();
    assert_eq!(long_reply.status, 200, "{}", long_reply.text());
    assert_eq!(long_reply.json()["images"], json!([]));
    let second = queued.join().unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["images"].as_array().unwrap().len(), 1);

    // Skip drops the current batch and goes on with the next.
    let two = post_in_thread(&server, "/sdapi/v1/txt2img", small(json!({"steps": 300, "n_iter": 2})));
    wait_until("batch 1 to run", || {
        server.get("/sdapi/v1/progress").json()["state"]["sampling_step"].as_u64() > Some(1)
    });
    assert_eq!(server.post("/sdapi/v1/skip", &json!({})).status, 200);
    let reply = two.join().unwrap();
    let info = info(&reply);
    assert_eq!(info["all_seeds"], json!([6]), "batch 0 (seed 5) skipped, batch 1 (seed 6) ran");
}

#[test]
fn a_closed_connection_cancels_its_job() {
    use std::io::Write;
    let server = start(sd1_config("closed"));
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let body = small(json!({"steps": 1000})).to_string();
    write!(stream, "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    wait_until("the job to run", || {
        server.get("/sdapi/v1/progress").json()["state"]["sampling_step"].as_u64() > Some(0)
    });
    drop(stream);
    // The worker is free again well before 1000 steps would have finished.
    let start = Instant::now();
    let r = server.post("/sdapi/v1/txt2img", &small(json!({})));
    assert_eq!(r.status, 200);
    assert!(start.elapsed() < Duration::from_secs(30), "the abandoned job kept running");
}

#[test]
fn options_switch_models_and_vaes_by_catalog_name_only() {
    let mut config = sd1_config("options");
    let models = config.models_dir.clone().unwrap();
    std::fs::copy(models.join("sd1_tiny.safetensors"), models.join("other.safetensors")).unwrap();
    config.vae_dir = Some(models.parent().unwrap().join("vae"));
    std::fs::create_dir_all(config.vae_dir.as_ref().unwrap()).unwrap();
    let server = start(config);
    let set = server
        .post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "other.safetensors", "CLIP_stop_at_last_layers": 2}));
    assert_eq!(set.status, 200, "{}", set.text());
    assert!(server.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        .as_str()
        .unwrap()
        .starts_with("other.safetensors"));
    let r = server.post("/sdapi/v1/txt2img", &small(json!({})));
    let text = info(&r)["infotexts"][0].as_str().unwrap().to_string();
    assert!(text.contains("Model: other") && text.contains("Clip skip: 2"), "{text}");
    // Per request, then restored.
    let r = server.post("/sdapi/v1/txt2img", &small(json!({"override_settings": {"sd_model_checkpoint": "sd1_tiny"}})));
    assert_eq!(info(&r)["sd_model_name"], "sd1_tiny");
    for name in ["../../etc/passwd", "/etc/passwd", "sd1_tiny/../../x", "nope"] {
        let r = server.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": name}));
        assert_eq!(r.status, 404, "{name}");
        assert_eq!(r.json()["field"], "sd_model_checkpoint");
        let r = server.post("/sdapi/v1/txt2img", &small(json!({"override_settings": {"sd_model_checkpoint": name}})));
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (404, json!("override_settings.sd_model_checkpoint")),
            "{name}"
        );
        let r = server.post("/sdapi/v1/options", &json!({"sd_vae": name}));
        assert_eq!((r.status, r.json()["field"].clone()), (404, json!("sd_vae")), "{name}");
    }
    assert_eq!(server.post("/sdapi/v1/options", &json!({"sd_vae": "Automatic"})).status, 200);
    assert_eq!(server.post("/sdapi/v1/options", &json!({"randn_source": "NV"})).status, 422);
    // Unknown options are stored and ignored, as A1111 does.
    assert_eq!(server.post("/sdapi/v1/options", &json!({"some_extension_setting": 3})).status, 200);
    assert_eq!(server.get("/sdapi/v1/options").json()["some_extension_setting"], 3);
}

/// A kohya LoRA (all-ones factors, rank 2) on the tiny SD1's mid-block query and first text
/// encoder query (as kairos-cli's tests write it).
fn write_lora(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use candle_core::{DType, Device, Tensor};
    std::fs::create_dir_all(dir).unwrap();
    let mut map = std::collections::HashMap::new();
    for prefix in [
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    ] {
        map.insert(format!("{prefix}.lora_down.weight"), Tensor::ones((2, 16), DType::F32, &Device::Cpu).unwrap());
        map.insert(format!("{prefix}.lora_up.weight"), Tensor::ones((16, 2), DType::F32, &Device::Cpu).unwrap());
    }
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

#[test]
fn lora_tags_resolve_in_the_lora_dir() {
    let mut config = sd1_config("lora");
    let loras = config.models_dir.as_ref().unwrap().parent().unwrap().join("loras");
    write_lora(&loras.join("sub"), "style");
    config.lora_dir = Some(loras);
    let server = start(config);
    let listed = server.get("/sdapi/v1/loras").json();
    assert_eq!(listed[0]["name"], "style");
    let plain = server.post("/sdapi/v1/txt2img", &small(json!({}))).json();
    let r = server.post("/sdapi/v1/txt2img", &small(json!({"prompt": "a red cube <lora:style:0.8>"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = info(&r)["infotexts"][0].as_str().unwrap().to_string();
    assert!(text.starts_with("a red cube <lora:style:0.8>"), "{text}");
    assert!(text.contains("Lora hashes: \"style: "), "{text}");
    assert_ne!(r.json()["images"], plain["images"], "the LoRA changes the image");
    for name in ["nope", "../../etc/passwd", "sub/../../x"] {
        let r = server.post("/sdapi/v1/txt2img", &small(json!({ "prompt": format!("x <lora:{name}:1>") })));
        assert_eq!((r.status, r.json()["field"].clone()), (404, json!("prompt")), "{name}: {}", r.text());
    }
}

#[test]
fn basic_auth_guards_every_route_and_cors_is_opt_in() {
    let config = kairos_server::ServerConfig {
        auth: kairos_server::parse_auth("alice:secret,bob:pw").unwrap(),
        cors_allow_origins: vec!["http://app.example".into()],
        ..sd1_config("auth")
    };
    let server = start(config);
    for path in ["/", "/sdapi/v1/samplers", "/openapi.json", "/sdapi/v1/progress"] {
        let r = server.get(path);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        assert_eq!(r.json()["error"], "Unauthorized");
    }
    let wrong = Server { addr: server.addr, auth: None }.with_auth("alice:nope");
    assert_eq!(wrong.get("/sdapi/v1/samplers").status, 401);
    let bob = Server { addr: server.addr, auth: None }.with_auth("bob:pw");
    assert_eq!(bob.get("/sdapi/v1/samplers").status, 200);
    assert_eq!(bob.get("/").status, 200);
    let pre = server.raw("OPTIONS", "/sdapi/v1/txt2img", b"", &[("Origin", "http://app.example")]);
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("http://app.example"));
    let other = bob.raw("GET", "/sdapi/v1/samplers", b"", &[("Origin", "http://evil.example")]);
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[test]
fn bad_requests_get_a_4xx_naming_the_field_and_the_server_keeps_answering() {
    let server = start(kairos_server::ServerConfig { max_pixels: 64 * 64, ..sd1_config("corpus") });
    let txt = "/sdapi/v1/txt2img";
    let cases: Vec<(&str, &str, Vec<u8>, u16, Value)> = vec![
        ("POST", txt, b"{\"prompt\": ".to_vec(), 400, Value::Null),
        ("POST", txt, b"not json".to_vec(), 400, Value::Null),
        ("POST", txt, b"[1, 2]".to_vec(), 400, Value::Null),
        ("POST", txt, b"".to_vec(), 400, Value::Null),
        ("POST", txt, vec![0xff, 0xfe, 0x00], 400, Value::Null),
        ("POST", txt, small(json!({"steps": "ten"})).to_string().into_bytes(), 400, json!("steps")),
        ("POST", txt, small(json!({"steps": 0})).to_string().into_bytes(), 400, json!("steps")),
        ("POST", txt, small(json!({"steps": 1e12})).to_string().into_bytes(), 400, json!("steps")),
        ("POST", txt, small(json!({"steps": 2.5})).to_string().into_bytes(), 400, json!("steps")),
        ("POST", txt, small(json!({"width": 100000, "height": 100000})).to_string().into_bytes(), 400, json!("width")),
        ("POST", txt, small(json!({"width": 4096, "height": 4096})).to_string().into_bytes(), 400, json!("width")),
        ("POST", txt, small(json!({"width": 30, "height": 24})).to_string().into_bytes(), 400, json!("width")),
        ("POST", txt, small(json!({"width": -8})).to_string().into_bytes(), 400, json!("width")),
        ("POST", txt, small(json!({"batch_size": 100000})).to_string().into_bytes(), 400, json!("batch_size")),
        ("POST", txt, small(json!({"cfg_scale": "high"})).to_string().into_bytes(), 400, json!("cfg_scale")),
        ("POST", txt, small(json!({"prompt": 42})).to_string().into_bytes(), 400, json!("prompt")),
        ("POST", txt, small(json!({"prompt": "a ".repeat(20_000)})).to_string().into_bytes(), 400, json!("prompt")),
        (
            "POST",
            txt,
            small(json!({"negative_prompt": "b".repeat(20_001)})).to_string().into_bytes(),
            400,
            json!("negative_prompt"),
        ),
        ("POST", txt, small(json!({"seed": "abc"})).to_string().into_bytes(), 400, json!("seed")),
        ("POST", txt, small(json!({"sampler_name": "Nope"})).to_string().into_bytes(), 400, json!("sampler_name")),
        ("POST", txt, small(json!({"sampler_name": ["Euler"]})).to_string().into_bytes(), 400, json!("sampler_name")),
        ("POST", txt, small(json!({"scheduler": "wobbly"})).to_string().into_bytes(), 400, json!("scheduler")),
        ("POST", txt, small(json!({"prompt": "<lora::1>"})).to_string().into_bytes(), 400, json!("prompt")),
        ("POST", txt, small(json!({"override_settings": 3})).to_string().into_bytes(), 400, json!("override_settings")),
        (
            "POST",
            txt,
            small(json!({"override_settings": {"sd_model_checkpoint": "../../etc/passwd"}})).to_string().into_bytes(),
            404,
            json!("override_settings.sd_model_checkpoint"),
        ),
        (
            "POST",
            txt,
            small(json!({"override_settings": {"CLIP_stop_at_last_layers": "x"}})).to_string().into_bytes(),
            400,
            json!("override_settings.CLIP_stop_at_last_layers"),
        ),
        ("POST", txt, small(json!({"enable_hr": true})).to_string().into_bytes(), 422, json!("enable_hr")),
        ("POST", txt, small(json!({"restore_faces": true})).to_string().into_bytes(), 422, json!("restore_faces")),
        ("POST", txt, small(json!({"subseed_strength": 0.5})).to_string().into_bytes(), 422, json!("subseed_strength")),
        ("POST", txt, small(json!({"styles": ["cinematic"]})).to_string().into_bytes(), 422, json!("styles")),
        ("POST", txt, small(json!({"script_name": "x/y/z plot"})).to_string().into_bytes(), 422, json!("script_name")),
        (
            "POST",
            txt,
            small(json!({"alwayson_scripts": {"controlnet": {}}})).to_string().into_bytes(),
            422,
            json!("alwayson_scripts"),
        ),
        ("POST", txt, small(json!({"tiling": true})).to_string().into_bytes(), 422, json!("tiling")),
        ("POST", txt, small(json!({"s_churn": 1.0})).to_string().into_bytes(), 422, json!("s_churn")),
        ("POST", "/sdapi/v1/img2img", small(json!({})).to_string().into_bytes(), 400, json!("init_images")),
        ("POST", "/sdapi/v1/png-info", json!({}).to_string().into_bytes(), 400, json!("image")),
        ("POST", "/sdapi/v1/png-info", json!({"image": "%%%"}).to_string().into_bytes(), 400, json!("image")),
        ("POST", "/sdapi/v1/png-info", json!({"image": "aGVsbG8="}).to_string().into_bytes(), 400, json!("image")),
        (
            "POST",
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": 5}).to_string().into_bytes(),
            400,
            json!("sd_model_checkpoint"),
        ),
        ("POST", "/sdapi/v1/options", b"[]".to_vec(), 400, Value::Null),
        ("POST", "/v1/schedule", json!({"family": "sd9"}).to_string().into_bytes(), 400, json!("family")),
        ("POST", "/v1/schedule", json!({"schedule": "nope"}).to_string().into_bytes(), 400, json!("schedule")),
        ("POST", "/v1/schedule", json!({"steps": -1}).to_string().into_bytes(), 400, json!("steps")),
        (
            "POST",
            "/v1/schedule",
            json!({"schedule": {"sigmas": [1, "a"]}}).to_string().into_bytes(),
            400,
            json!("schedule.sigmas"),
        ),
        (
            "POST",
            "/v1/schedule",
            json!({"schedule": {"file": {"format": "x"}}}).to_string().into_bytes(),
            400,
            json!("schedule.file"),
        ),
        ("POST", "/v1/compare", small(json!({})).to_string().into_bytes(), 400, json!("schedules")),
        (
            "POST",
            "/v1/compare",
            small(json!({"schedules": ["karras"], "steps": [0]})).to_string().into_bytes(),
            400,
            json!("steps"),
        ),
        (
            "POST",
            "/v1/compare",
            small(json!({"schedules": vec!["karras"; 9], "steps": [1, 2, 3, 4, 5, 6, 7, 8]})).to_string().into_bytes(),
            400,
            json!("schedules"),
        ),
        ("GET", "/sdapi/v1/nope", vec![], 404, Value::Null),
        ("GET", "/../../etc/passwd", vec![], 404, Value::Null),
        ("GET", "/ui/../../etc/passwd", vec![], 404, Value::Null),
        ("GET", "/sdapi/v1/txt2img", vec![], 405, Value::Null),
    ];
    for (method, path, body, status, field) in cases {
        let r = server.raw(method, path, &body, &[]);
        let shown = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(r.status, status, "{method} {path} {shown}: {}", r.text());
        if status != 405 {
            let json = r.json();
            assert_eq!(json["field"], field, "{method} {path} {shown}: {json}");
            assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{json}");
        }
    }
    // A body over the limit is refused without reading it all.
    let huge = vec![b' '; kairos_server::MAX_BODY + 1];
    let r = server.raw("POST", txt, &huge, &[]);
    assert_eq!(r.status, 413);
    assert_eq!(server.get("/health").json()["status"], "ok");
    assert_eq!(server.post(txt, &small(json!({}))).status, 200, "still generating");
}

#[test]
fn schedule_and_compare_endpoints() {
    let server = start(sd1_config("compare"));
    let s = server.post("/v1/schedule", &json!({"schedule": "karras", "steps": 10})).json();
    assert_eq!(s["sigmas"].as_array().unwrap().len(), 11);
    assert_eq!(s["timesteps"].as_array().unwrap().len(), 10);
    assert_eq!(s["family"], "sd1");
    assert!((s["sigmas"][0].as_f64().unwrap() - 14.6146).abs() < 1e-3, "{s}");
    assert_eq!(s["sigmas"][10], 0.0);
    let many = server
        .post("/v1/schedule", &json!({"schedules": ["Align Your Steps", "gits", {"sigmas": [10, 5, 1, 0], "label": "mine"}], "steps": 4, "family": "sdxl", "denoise": 0.5}))
        .json();
    let list = many["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[2]["schedule"], "mine");
    assert_eq!(many["family"], "sdxl");

    let body = small(
        json!({"schedules": ["karras", "exponential", {"sigmas": [14.6, 3.0, 0.5, 0.0], "label": "list"}], "steps": [2, 3]}),
    );
    let r = server.post("/v1/compare", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["rows"], json!(["karras", "exponential", "list"]));
    assert_eq!(c["columns"], json!([2, 3]));
    assert_eq!(c["cells"].as_array().unwrap().len(), 6);
    let (w, h, _, _) = decode_png(c["grid"].as_str().unwrap());
    assert!(w > 2 * 64 && h > 3 * 64, "{w}x{h}");
    // A cell is the txt2img image of its schedule and step count.
    let direct = server.post("/sdapi/v1/txt2img", &small(json!({"scheduler": "exponential", "steps": 3}))).json();
    assert_eq!(c["cells"][3]["image"], direct["images"][0]);
    assert_eq!(c["cells"][3]["sigmas"].as_array().unwrap().len(), 4);
}

#[test]
fn sdxl_serves_through_the_same_api() {
    let dir = temp_dir("sdxl").join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let sdxl = "kairos-models/tests/fixtures/sdxl";
    std::fs::copy(fixture(&format!("{sdxl}/sdxl_base.safetensors")), dir.join("sdxl_base.safetensors")).unwrap();
    let mut options = kairos_pipeline::ModelOptions::default();
    options.load.hints.clip_head_dim = 8;
    let config =
        kairos_server::ServerConfig { models_dir: Some(dir.clone()), model_options: options, ..Default::default() };
    let server = start(config);
    let size = json!({"width": 32, "height": 32, "steps": 6});
    let r = server.post("/sdapi/v1/txt2img", &small(size.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    let (w, h, _, text) = decode_png(r.json()["images"][0].as_str().unwrap());
    assert_eq!((w, h), (32, 32));
    assert!(text.unwrap().contains("Model: sdxl_base"));

    // The refiner finishes the base's schedule (ensemble of experts, as `generate --refiner`).
    std::fs::copy(fixture(&format!("{sdxl}/sdxl_refiner.safetensors")), dir.join("sdxl_refiner.safetensors")).unwrap();
    assert_eq!(server.post("/sdapi/v1/refresh-checkpoints", &json!({})).status, 200);
    let with = |extra: Value| {
        let mut body = small(size.clone());
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let r = server
        .post("/sdapi/v1/txt2img", &with(json!({"refiner_checkpoint": "sdxl_refiner", "refiner_switch_at": 0.5})));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = info(&r)["infotexts"][0].as_str().unwrap().to_string();
    assert!(text.contains(", Refiner: sdxl_refiner [") && text.ends_with("Refiner switch at: 0.5"), "{text}");
    let base_only = server.post("/sdapi/v1/txt2img", &small(size.clone())).json();
    assert_ne!(r.json()["images"][0], base_only["images"][0]);
    for (extra, field, status) in [
        (json!({"refiner_checkpoint": "nope"}), "refiner_checkpoint", 404),
        (json!({"refiner_checkpoint": "sdxl_refiner", "refiner_switch_at": 1.0}), "refiner_switch_at", 400),
        (json!({"refiner_checkpoint": "sdxl_base"}), "refiner_checkpoint", 400),
        (json!({"refiner_checkpoint": "sdxl_refiner", "init_images": [png_b64(32, 32)]}), "refiner_checkpoint", 422),
    ] {
        let path = if extra.get("init_images").is_some() { "/sdapi/v1/img2img" } else { "/sdapi/v1/txt2img" };
        let r = server.post(path, &with(extra.clone()));
        assert_eq!((r.status, r.json()["field"].clone()), (status, json!(field)), "{extra}: {}", r.text());
    }
}
