//! A server on 127.0.0.1 port 0 in a background runtime, and a small blocking HTTP/1.1 client
//! (no client library: each request is one connection, `Connection: close`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kairos_models::loading::{ConfigHints, LoadOptions};
use kairos_pipeline::ModelOptions;
use kairos_server::ServerConfig;
use serde_json::Value;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A fresh temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A models folder holding the tiny SD1 checkpoint as `sd1_tiny.safetensors`.
pub fn sd1_models(name: &str) -> PathBuf {
    let dir = temp_dir(name).join("models");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("kairos-pipeline/tests/fixtures/sd1_tiny.safetensors"), dir.join("sd1_tiny.safetensors"))
        .unwrap();
    dir
}

/// The tiny SD1's loading hints (as `kairos generate --norm-num-groups 4 --clip-head-dim 8`).
pub fn sd1_options() -> ModelOptions {
    ModelOptions {
        load: LoadOptions {
            hints: ConfigHints { norm_num_groups: 4, clip_head_dim: 8, unet_heads: None },
            ..Default::default()
        },
        ..ModelOptions::default()
    }
}

pub fn sd1_config(name: &str) -> ServerConfig {
    ServerConfig { models_dir: Some(sd1_models(name)), model_options: sd1_options(), ..ServerConfig::default() }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub auth: Option<String>,
}

/// Starts `config` on 127.0.0.1:0 in a background thread.
pub fn start(config: ServerConfig) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            kairos_server::serve(listener, config).await.unwrap();
        });
    });
    Server { addr: rx.recv_timeout(Duration::from_secs(30)).unwrap(), auth: None }
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Server {
    pub fn with_auth(mut self, user_pass: &str) -> Self {
        use base64::Engine;
        self.auth = Some(base64::engine::general_purpose::STANDARD.encode(user_pass));
        self
    }

    /// Sends raw bytes as the body.
    pub fn raw(&self, method: &str, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(auth) = &self.auth {
            head.push_str(&format!("Authorization: Basic {auth}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        parse_reply(&bytes)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.raw("GET", path, b"", &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.raw("POST", path, body.to_string().as_bytes(), &[])
    }
}

fn parse_reply(bytes: &[u8]) -> Reply {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = out;
    }
    Reply { status, headers, body }
}

/// Decodes a base64 PNG into (width, height, RGB bytes, parameters text).
pub fn decode_png(b64: &str) -> (u32, u32, Vec<u8>, Option<String>) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let meta = reader.info();
    let text = meta
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .chain(meta.utf8_text.iter().map(|t| (t.keyword.clone(), t.get_text().unwrap())))
        .find(|(k, _)| k == "parameters")
        .map(|(_, t)| t);
    (info.width, info.height, buf, text)
}

/// A small PNG (w × h, a gradient) as base64.
pub fn png_b64(w: u32, h: u32) -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        writer.write_image_data(&data).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
