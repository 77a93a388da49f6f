//! `kairos serve` as a process: an image from the A1111 API equals the PNG `kairos generate`
//! writes for the same parameters (same pixels, same infotext), for txt2img and img2img.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-cli-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tiny SD1's config hints.
const TINY_SD1: [&str; 4] = ["--norm-num-groups", "4", "--clip-head-dim", "8"];

/// A `kairos serve` process, killed on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(models: &Path, extra: &[&str]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(["serve", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(models)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line}"));
    Serve { addr: addr.to_string(), child }
}

fn post(addr: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", String::from_utf8_lossy(&bytes[split..]));
    serde_json::from_slice(&bytes[split + 4..]).unwrap()
}

/// Pixels and `parameters` text of a PNG.
fn read_png(bytes: &[u8]) -> (Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let text = reader.info().uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters").unwrap().text.clone();
    (buf, text)
}

fn b64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

#[test]
fn api_images_equal_generate_pngs() {
    let dir = temp_dir("parity");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let model = models.join("sd1_tiny.safetensors");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/sd1_tiny.safetensors");
    std::fs::copy(fixture, &model).unwrap();
    let server = serve(&models, &TINY_SD1);

    // kairos generate's conventions through A1111's settings: torch's CPU generator
    // (randn_source CPU) and the sqrt(1 + σ²) initial noise (sgm_noise_multiplier).
    let settings = serde_json::json!({"randn_source": "CPU", "sgm_noise_multiplier": true});
    let cases: [(&str, serde_json::Value, Vec<&str>); 3] = [
        (
            "txt2img",
            serde_json::json!({"prompt": "a red cube", "negative_prompt": "blurry", "steps": 4, "seed": 7,
                "width": 32, "height": 24, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 6.5,
                "override_settings": settings}),
            vec![
                "-p",
                "a red cube",
                "-n",
                "blurry",
                "--steps",
                "4",
                "--seed",
                "7",
                "-W",
                "32",
                "-H",
                "24",
                "--sampler",
                "DPM++ 2M",
                "--schedule",
                "karras",
                "--cfg-scale",
                "6.5",
            ],
        ),
        (
            "txt2img",
            serde_json::json!({"prompt": "a blue sphere", "steps": 3, "seed": 11, "width": 24, "height": 32,
                "sampler_name": "Euler a", "scheduler": "Align Your Steps", "override_settings": settings}),
            vec![
                "-p",
                "a blue sphere",
                "--steps",
                "3",
                "--seed",
                "11",
                "-W",
                "24",
                "-H",
                "32",
                "--sampler",
                "euler_ancestral",
                "--schedule",
                "ays_a1111",
                "--cfg-scale",
                "7",
            ],
        ),
        (
            "img2img",
            serde_json::json!({"prompt": "a red cube", "steps": 5, "seed": 3, "width": 32, "height": 24,
                "sampler_name": "Euler", "scheduler": "Karras", "denoising_strength": 0.6, "resize_mode": 1,
                "override_settings": settings}),
            vec![
                "-p",
                "a red cube",
                "--steps",
                "5",
                "--seed",
                "3",
                "-W",
                "32",
                "-H",
                "24",
                "--sampler",
                "Euler",
                "--schedule",
                "karras",
                "--cfg-scale",
                "7",
                "--denoise",
                "0.6",
                "--denoise-rule",
                "a1111",
                "--resize-mode",
                "crop-and-resize",
            ],
        ),
    ];
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/img2img_init.png");
    for (i, (kind, mut body, args)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("generate-{i}.png"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kairos"));
        // The same dtype as the server (KAIROS_DTYPE=f32 there too).
        cmd.env("KAIROS_DTYPE", "f32");
        cmd.args(["generate", "--norm-num-groups", "4", "--clip-head-dim", "8", "--model"]).arg(&model).args(&args);
        if kind == "img2img" {
            cmd.arg("--init-image").arg(&init);
            use base64::Engine;
            body["init_images"] =
                serde_json::json!([base64::engine::general_purpose::STANDARD.encode(std::fs::read(&init).unwrap())]);
        }
        let status = cmd.arg("--output").arg(&out).output().unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let (want_pixels, want_text) = read_png(&std::fs::read(&out).unwrap());
        let reply = post(&server.addr, &format!("/sdapi/v1/{kind}"), &body);
        let (pixels, text) = read_png(&b64(reply["images"][0].as_str().unwrap()));
        assert_eq!(text, want_text, "case {i}: infotext");
        assert!(pixels == want_pixels, "case {i}: pixels differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--api-auth` guards every route; a malformed value is a usage error, not a panic.
#[test]
fn api_auth_flag_guards_the_server() {
    let dir = temp_dir("auth");
    let server = serve(&dir, &["--api-auth", "alice:secret,bob:pw"]);
    let get = |auth: Option<&str>| {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        let header = auth.map(|a| {
            use base64::Engine;
            format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(a))
        });
        write!(
            stream,
            "GET /sdapi/v1/samplers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
            header.unwrap_or_default()
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.split(' ').nth(1).unwrap().to_string()
    };
    assert_eq!(get(None), "401");
    assert_eq!(get(Some("alice:wrong")), "401");
    assert_eq!(get(Some("bob:pw")), "200");
    for bad in ["nocolon", ","] {
        let out = Command::new(env!("CARGO_BIN_EXE_kairos"))
            .env("KAIROS_DTYPE", "f32")
            .args(["serve", "--api-auth", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--api-auth") && !stderr.contains("panicked"), "{stderr}");
    }
}

/// The SDXL ensemble of experts through the API (`refiner_checkpoint`, `refiner_switch_at`)
/// equals `kairos generate --refiner --refiner-switch` on the tiny SDXL base and refiner.
#[test]
fn api_refiner_equals_generate_refiner() {
    let dir = temp_dir("refiner");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kairos-models/tests/fixtures/sdxl");
    for name in ["sdxl_base.safetensors", "sdxl_refiner.safetensors"] {
        std::fs::copy(fixtures.join(name), models.join(name)).unwrap();
    }
    let server = serve(&models, &["--clip-head-dim", "8"]);
    let out = dir.join("generate.png");
    let status = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(["generate", "--clip-head-dim", "8", "--model"])
        .arg(models.join("sdxl_base.safetensors"))
        .arg("--refiner")
        .arg(models.join("sdxl_refiner.safetensors"))
        .args(["--refiner-switch", "0.5", "-p", "a red cube", "--steps", "6", "--seed", "9", "-W", "32", "-H", "32"])
        .args(["--sampler", "Euler", "--schedule", "karras", "--cfg-scale", "7", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let (want_pixels, want_text) = read_png(&std::fs::read(&out).unwrap());
    let body = serde_json::json!({"prompt": "a red cube", "steps": 6, "seed": 9, "width": 32, "height": 32,
        "sampler_name": "Euler", "scheduler": "Karras", "cfg_scale": 7,
        "refiner_checkpoint": "sdxl_refiner", "refiner_switch_at": 0.5,
        "override_settings": {"randn_source": "CPU", "sgm_noise_multiplier": true}});
    let reply = post(&server.addr, "/sdapi/v1/txt2img", &body);
    let (pixels, text) = read_png(&b64(reply["images"][0].as_str().unwrap()));
    assert_eq!(text, want_text);
    assert!(pixels == want_pixels, "pixels differ");
    let _ = std::fs::remove_dir_all(&dir);
}
