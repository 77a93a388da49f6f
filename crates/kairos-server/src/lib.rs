//! `kairos serve`: Stable Diffusion over HTTP.
//!
//! - The AUTOMATIC1111 API (`/sdapi/v1/...`: txt2img, img2img, progress, interrupt, skip, the
//!   list endpoints, options, png-info, refresh-checkpoints) with A1111's field names, defaults
//!   and response shapes ([`a1111`]), so that A1111 clients work unchanged.
//! - kairos' own endpoints: `/v1/schedule`, `/v1/compare` ([`compare`]), described at
//!   `/openapi.json`.
//! - A web UI at `/`, embedded in the binary ([`ui`]).
//!
//! Jobs go through one bounded queue to one worker thread ([`worker`]); every error is a 4xx/5xx
//! with a JSON body naming the field ([`error`]). Models, VAEs and LoRAs are named only by the
//! entries of the server's folders ([`catalog`]). The server keeps no state besides its options
//! and model cache, so several of them run behind any load balancer.

pub mod a1111;
pub mod body;
pub mod catalog;
pub mod compare;
pub mod error;
pub mod openapi;
pub mod options;
pub mod ui;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use kairos_pipeline::infotext::{sampler_label, schedule_label};
use kairos_pipeline::ModelOptions;
use kairos_sampler::Sampler;
use kairos_schedule::ScheduleKind;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::worker::{Control, Job, Jobs, Output, Work, WorkerConfig};

/// Largest request body (base64 init images): 64 MiB.
pub const MAX_BODY: usize = 64 << 20;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Checkpoints (`--models-dir`).
    pub models_dir: Option<PathBuf>,
    /// LoRAs for `<lora:NAME:W>` (`--lora-dir`).
    pub lora_dir: Option<PathBuf>,
    /// VAEs for `sd_vae` (`--vae-dir`).
    pub vae_dir: Option<PathBuf>,
    /// TAESD for live previews (`--taesd`).
    pub taesd: Option<PathBuf>,
    /// Jobs that may wait (`--queue-size`); one more runs.
    pub queue_size: usize,
    /// Largest width · height · batch_size (`--max-pixels`).
    pub max_pixels: u64,
    /// `user:pass` pairs for HTTP basic auth on every route (`--api-auth`); empty: no auth.
    pub auth: Vec<(String, String)>,
    /// Origins allowed by CORS (`--cors-allow-origins`); empty: no CORS headers; `*`: any.
    pub cors_allow_origins: Vec<String>,
    /// Memory budget of the model cache in bytes (`--model-cache-mb`).
    pub model_cache_bytes: u64,
    /// Options models are loaded with (config hints, dtype, device).
    pub model_options: ModelOptions,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            models_dir: None,
            lora_dir: None,
            vae_dir: None,
            taesd: None,
            queue_size: 16,
            max_pixels: 2048 * 2048,
            auth: Vec::new(),
            cors_allow_origins: Vec::new(),
            model_cache_bytes: 16 << 30,
            model_options: ModelOptions::default(),
        }
    }
}

/// Parses `--api-auth user:pass[,user2:pass2]`.
pub fn parse_auth(text: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.trim().split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
            _ => Err(format!("`{pair}` is not user:password")),
        })
        .collect::<Result<_, _>>()?;
    if pairs.is_empty() {
        return Err("give at least one user:password".into());
    }
    Ok(pairs)
}

/// What the handlers share.
pub struct App {
    config: ServerConfig,
    catalog: RwLock<Catalog>,
    options: RwLock<Map<String, Value>>,
    jobs: Arc<Jobs>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Scans the folders, starts the worker and returns the router.
pub fn app(config: ServerConfig) -> std::io::Result<Router> {
    let catalog = Catalog::new(config.models_dir.clone(), config.vae_dir.clone(), config.lora_dir.clone());
    let first = catalog.checkpoints.first().map(|e| e.rel.clone());
    let jobs = Arc::new(Jobs::new(config.queue_size));
    worker::spawn(
        jobs.clone(),
        WorkerConfig {
            model_options: config.model_options.clone(),
            taesd: config.taesd.clone(),
            cache_bytes: config.model_cache_bytes,
        },
    )?;
    let state = Arc::new(App {
        options: RwLock::new(options::defaults(first.as_deref())),
        catalog: RwLock::new(catalog),
        jobs,
        config,
    });
    Ok(router(state))
}

fn router(state: Arc<App>) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/*path", get(ui::asset))
        .route("/openapi.json", get(openapi::document))
        .route("/health", get(health))
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/skip", post(skip))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/sd-vae", get(sd_vae))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/options", get(get_options).post(set_options))
        .route("/sdapi/v1/cmd-flags", get(cmd_flags))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/sdapi/v1/refresh-checkpoints", post(refresh_checkpoints))
        .route("/sdapi/v1/refresh-vae", post(refresh_vae))
        .route("/sdapi/v1/refresh-loras", post(refresh_loras))
        .route("/sdapi/v1/upscalers", get(empty_list))
        .route("/sdapi/v1/hypernetworks", get(empty_list))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/prompt-styles", get(empty_list))
        .route("/v1/schedule", post(v1_schedule))
        .route("/v1/compare", post(v1_compare))
        .route("/v1/queue", get(v1_queue))
        .fallback(|req: Request| async move { ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path())) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves `config` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: ServerConfig) -> std::io::Result<()> {
    let app = app(config)?;
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

/// Binds `addr` and serves on it (the `kairos serve` entry point), printing the address.
pub fn run(addr: &str, config: ServerConfig) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let models = read_count(&config);
        eprintln!(
            "kairos serve: http://{local}/ ({models} checkpoint(s); A1111 API at /sdapi/v1, OpenAPI at /openapi.json)"
        );
        serve(listener, config).await
    })
}

fn read_count(config: &ServerConfig) -> usize {
    Catalog::new(config.models_dir.clone(), None, None).checkpoints.len()
}

/// HTTP basic auth on every route (UI included) when `--api-auth` is given.
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.config.auth.is_empty() || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let ok = given.as_deref().and_then(|g| g.split_once(':')).is_some_and(|(u, p)| {
        app.config.auth.iter().any(|(user, pass)| {
            constant_time_eq(user.as_bytes(), u.as_bytes()) & constant_time_eq(pass.as_bytes(), p.as_bytes())
        })
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for `--cors-allow-origins` (off by default): preflights answered, allowed origins echoed.
async fn cors(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let allowed = &app.config.cors_allow_origins;
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
    let allow = origin.filter(|o| allowed.iter().any(|a| a == "*" || a == o));
    let Some(origin) = allow else { return next.run(req).await };
    let mut response =
        if req.method() == Method::OPTIONS { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The body as a JSON object, with the body-size rejection as a JSON 413.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit: MAX_BODY },
        _ => ApiError::BadJson(e.body_text()),
    })?;
    body::parse_object(&bytes)
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "status": "ok", "queue_pending": app.jobs.pending(), "running": app.jobs.running().is_some() }))
}

/// Sets the job's cancel flag when the handler is dropped before the job finished: the client
/// closed the connection.
struct CancelOnDrop(Arc<Control>, bool);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Queues `work` and waits for its output.
async fn run_job(app: &App, work: Work, task_id: Option<String>) -> Result<Output, ApiError> {
    let id = app.jobs.next_id();
    let control = Arc::new(Control::default());
    let (reply, result) = oneshot::channel();
    let task_id = task_id.unwrap_or_else(|| format!("task({id})"));
    app.jobs.push(Job { id, task_id, work, control: control.clone(), reply })?;
    let mut guard = CancelOnDrop(control, false);
    let out = result.await.map_err(|_| ApiError::Internal("the worker stopped".into()));
    guard.1 = true;
    out?
}

async fn generate(app: Arc<App>, body: Result<Bytes, BytesRejection>, img2img: bool) -> Result<Json<Value>, ApiError> {
    let obj = json_body(body)?;
    let spec = {
        let catalog = read(&app.catalog);
        let options = read(&app.options);
        let ctx = a1111::Context { catalog: &catalog, options: &options, max_pixels: app.config.max_pixels };
        a1111::parse(&obj, img2img, &ctx)?
    };
    let task_id = spec.task_id.clone();
    let Output::Generate(out) = run_job(&app, Work::Generate(Box::new(spec.clone())), task_id).await? else {
        return Err(ApiError::Internal("unexpected job output".into()));
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut images: Vec<String> =
        if spec.send_images { out.pngs.iter().map(|p| b64.encode(p)).collect() } else { vec![] };
    if let Some(init) = &spec.include_init {
        images.push(init.split_once(";base64,").map_or(init.as_str(), |(_, d)| d).to_string());
    }
    let info = a1111::info_json(&spec, &out.seeds, &out.infotexts, out.model_hash.as_deref());
    Ok(Json(json!({ "images": images, "parameters": spec.parameters, "info": info })))
}

async fn txt2img(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    generate(app, body, false).await
}

async fn img2img(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    generate(app, body, true).await
}

async fn progress(
    State(app): State<Arc<App>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let running = app.jobs.running();
    let skip_image = q.get("skip_current_image").is_some_and(|v| v == "true" || v == "1");
    let pending = app.jobs.pending();
    let position = q.get("id_task").and_then(|t| app.jobs.position(t));
    let (progress, eta, state_job, step, steps, image, textinfo) = match &running {
        Some(r) => {
            let per_batch = if r.steps == 0 { 0.0 } else { r.step as f64 / r.steps as f64 };
            let progress =
                if r.batches == 0 { 0.0 } else { ((r.batch as f64 + per_batch) / r.batches as f64).clamp(0.0, 1.0) };
            let elapsed = r.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            let eta = if progress > 0.0 { elapsed / progress - elapsed } else { app.jobs.last_seconds() };
            let text =
                format!("{}: step {}/{} of batch {}/{}", r.phase, r.step, r.steps, r.batch + 1, r.batches.max(1));
            (
                progress,
                eta,
                r.task_id.clone(),
                r.step,
                r.steps,
                if skip_image { None } else { r.preview.clone() },
                Some(text),
            )
        }
        None => (0.0, 0.0, String::new(), 0, 0, None, None),
    };
    Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": app.jobs.skipped.load(Ordering::SeqCst),
            "interrupted": app.jobs.interrupted.load(Ordering::SeqCst),
            "stopping_generation": false,
            "job": state_job,
            "job_count": pending + usize::from(running.is_some()),
            "job_timestamp": a1111::job_timestamp(),
            "job_no": running.as_ref().map_or(0, |r| r.batch),
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": image,
        "textinfo": textinfo,
        "current_task": running.as_ref().map(|r| r.task_id.clone()),
        "queue_pending": pending,
        "queue_position": position,
    }))
}

async fn interrupt(State(app): State<Arc<App>>) -> Json<Value> {
    app.jobs.interrupt();
    Json(json!({}))
}

async fn skip(State(app): State<Arc<App>>) -> Json<Value> {
    app.jobs.skip();
    Json(json!({}))
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = Sampler::names()
        .filter_map(|name| Sampler::from_name(name).ok())
        .map(|s| {
            let label = sampler_label(&s);
            let mut aliases = vec![s.name()];
            aliases.retain(|a| *a != label);
            json!({ "name": label, "aliases": aliases, "options": { "scheduler": a1111::default_schedule(&s) } })
        })
        .collect();
    Json(Value::Array(list))
}

async fn schedulers() -> Json<Value> {
    let mut list = vec![
        json!({ "name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1, "need_inner_model": false }),
    ];
    for name in ScheduleKind::names() {
        if let Ok(kind) = ScheduleKind::from_name(name) {
            let rho = match kind {
                ScheduleKind::Karras { rho } => rho,
                ScheduleKind::PolyExponential { rho } => rho,
                _ => -1.0,
            };
            let label = schedule_label(&kind);
            list.push(
                json!({ "name": name, "label": label, "aliases": null, "default_rho": rho, "need_inner_model": false }),
            );
        }
    }
    Json(Value::Array(list))
}

async fn sd_models(State(app): State<Arc<App>>) -> Json<Value> {
    let catalog = read(&app.catalog);
    let list: Vec<Value> = catalog
        .checkpoints
        .iter()
        .map(|e| {
            let sha = catalog::cached_hash(&e.path);
            json!({
                "title": Catalog::title(e),
                "model_name": e.stem_rel().replace('/', "_"),
                "hash": sha.as_ref().map(|h| h[..10].to_string()),
                "sha256": sha,
                "filename": e.path,
                "config": null,
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn sd_vae(State(app): State<Arc<App>>) -> Json<Value> {
    let catalog = read(&app.catalog);
    Json(Value::Array(catalog.vaes.iter().map(|e| json!({ "model_name": e.rel, "filename": e.path })).collect()))
}

async fn loras(State(app): State<Arc<App>>) -> Json<Value> {
    let catalog = read(&app.catalog);
    Json(Value::Array(
        catalog
            .loras
            .iter()
            .map(|e| json!({ "name": e.stem(), "alias": e.stem(), "path": e.path, "metadata": {} }))
            .collect(),
    ))
}

async fn get_options(State(app): State<Arc<App>>) -> Json<Value> {
    let mut options = read(&app.options).clone();
    // A1111 reports the checkpoint by its title.
    let catalog = read(&app.catalog);
    if let Some(Value::String(name)) = options.get("sd_model_checkpoint").cloned() {
        if let Ok(entry) = catalog.checkpoint("sd_model_checkpoint", &name) {
            options.insert("sd_model_checkpoint".into(), json!(Catalog::title(entry)));
        }
    }
    Json(Value::Object(options))
}

async fn set_options(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let update = json_body(body)?;
    options::validate(&update, "", &read(&app.catalog))?;
    write(&app.options).extend(update);
    Ok(Json(Value::Null))
}

async fn cmd_flags(State(app): State<Arc<App>>) -> Json<Value> {
    let c = &app.config;
    Json(json!({
        "ckpt_dir": c.models_dir, "lora_dir": c.lora_dir, "vae_dir": c.vae_dir,
        "api": true, "api_auth": if c.auth.is_empty() { Value::Null } else { json!("***") },
        "queue_size": c.queue_size, "max_pixels": c.max_pixels,
    }))
}

async fn png_info(body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let obj = json_body(body)?;
    let text = body::Body::new(&obj, "")
        .string("image")?
        .ok_or_else(|| ApiError::field("image", "a base64 PNG is required"))?;
    let data = text.split_once(";base64,").map_or(text.as_str(), |(_, d)| d).trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| ApiError::field("image", format!("not base64: {e}")))?;
    let items = png_text_chunks(&bytes).map_err(|e| ApiError::field("image", e))?;
    let info = items.get("parameters").and_then(Value::as_str).unwrap_or("").to_string();
    let parameters = if info.is_empty() { Map::new() } else { a1111::parse_infotext(&info) };
    Ok(Json(json!({ "info": info, "items": items, "parameters": parameters })))
}

/// The text chunks of a PNG (tEXt, zTXt, iTXt) by keyword.
#[doc(hidden)]
pub fn png_text_chunks(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let info = reader.info();
    let mut items = Map::new();
    for t in &info.uncompressed_latin1_text {
        items.insert(t.keyword.clone(), json!(t.text));
    }
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            items.insert(t.keyword.clone(), json!(text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            items.insert(t.keyword.clone(), json!(text));
        }
    }
    Ok(items)
}

async fn refresh_checkpoints(State(app): State<Arc<App>>) -> Json<Value> {
    write(&app.catalog).refresh_checkpoints();
    Json(Value::Null)
}

async fn refresh_vae(State(app): State<Arc<App>>) -> Json<Value> {
    write(&app.catalog).refresh_vaes();
    Json(Value::Null)
}

async fn refresh_loras(State(app): State<Arc<App>>) -> Json<Value> {
    write(&app.catalog).refresh_loras();
    Json(Value::Null)
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

async fn embeddings() -> Json<Value> {
    Json(json!({ "loaded": {}, "skipped": {} }))
}

async fn v1_schedule(body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    Ok(Json(compare::schedule(&json_body(body)?)?))
}

async fn v1_compare(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let obj = json_body(body)?;
    let spec = {
        let catalog = read(&app.catalog);
        let options = read(&app.options);
        let ctx = a1111::Context { catalog: &catalog, options: &options, max_pixels: app.config.max_pixels };
        compare::parse(&obj, &ctx)?
    };
    match run_job(&app, Work::Compare(Box::new(spec)), None).await? {
        Output::Compare(out) => Ok(Json(out.body)),
        Output::Generate(_) => Err(ApiError::Internal("unexpected job output".into())),
    }
}

async fn v1_queue(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "pending": app.jobs.pending(),
        "capacity": app.config.queue_size,
        "running": app.jobs.running().map(|r| r.task_id),
        "done": app.jobs.done.load(Ordering::Relaxed),
    }))
}
