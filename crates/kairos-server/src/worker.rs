//! One bounded queue and one worker thread that runs the jobs in order; the progress the worker
//! reports (step, preview, ETA), cancellation (interrupt, skip, a closed connection), and the
//! model cache (least recently used out first, within a memory budget).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine;
use kairos_models::autoencoders::LatentRgbFactors;
use kairos_models::loading::ModelFamily;
use kairos_models::prompt::PromptOptions;
use kairos_pipeline::infotext::Infotext;
use kairos_pipeline::output::{save_png, OutputTarget};
use kairos_pipeline::{
    LatentDecoder, ModelOptions, Preview, Progress, RgbImage, StableDiffusion, Taesd, Txt2ImgRequest,
};
use tokio::sync::oneshot;

use crate::a1111::GenSpec;
use crate::compare::{CompareOutput, CompareSpec};
use crate::error::ApiError;

/// What a job does.
pub enum Work {
    /// txt2img or img2img.
    Generate(Box<GenSpec>),
    /// A schedule-comparison grid.
    Compare(Box<CompareSpec>),
}

/// What a job gives back.
pub enum Output {
    /// The images of a generation.
    Generate(GenOutput),
    /// A comparison grid.
    Compare(CompareOutput),
}

/// The images of a generation (fewer than asked when interrupted).
pub struct GenOutput {
    /// PNG files with their infotext, one per image.
    pub pngs: Vec<Vec<u8>>,
    /// The seed of each image.
    pub seeds: Vec<u64>,
    /// The infotext of each image.
    pub infotexts: Vec<String>,
    /// A1111's short hash of the checkpoint (single files).
    pub model_hash: Option<String>,
    /// Whether /interrupt or a closed connection stopped the job.
    pub interrupted: bool,
    /// The sigmas sampled.
    pub sigmas: Vec<f64>,
}

/// Flags a running job watches.
#[derive(Default)]
pub struct Control {
    /// Stop the job (interrupt, closed connection).
    pub cancel: AtomicBool,
    /// Skip the current batch.
    pub skip: AtomicBool,
}

/// A queued job.
pub struct Job {
    /// Server-wide number.
    pub id: u64,
    /// The client's task id (`force_task_id`) or `task(<id>)`.
    pub task_id: String,
    /// What to do.
    pub work: Work,
    /// Cancellation flags, shared with the request handler.
    pub control: Arc<Control>,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Output, ApiError>>,
}

/// The job that runs now.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// Server-wide number.
    pub id: u64,
    /// Task id.
    pub task_id: String,
    /// Started at.
    pub started: Option<Instant>,
    /// Step within the current batch (done steps).
    pub step: usize,
    /// Steps per batch.
    pub steps: usize,
    /// Batch, 0-based.
    pub batch: usize,
    /// Batches.
    pub batches: usize,
    /// What it does now (`loading model`, `sampling`, `decoding`).
    pub phase: &'static str,
    /// The latest preview as a base64 PNG.
    pub preview: Option<String>,
}

/// The queue and the progress of the worker, shared by the handlers.
pub struct Jobs {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    capacity: usize,
    next_id: AtomicU64,
    /// The running job.
    running: Mutex<Option<(Running, Arc<Control>)>>,
    /// Seconds the last job took (for Retry-After and ETA).
    last_seconds: Mutex<f64>,
    /// Set by /interrupt until the next job starts (A1111's `state.interrupted`).
    pub interrupted: AtomicBool,
    /// Set by /skip until the next job starts.
    pub skipped: AtomicBool,
    /// Jobs finished since start.
    pub done: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while holding it; the data is plain state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// An empty queue holding at most `capacity` waiting jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity,
            next_id: AtomicU64::new(1),
            running: Mutex::new(None),
            last_seconds: Mutex::new(1.0),
            interrupted: AtomicBool::new(false),
            skipped: AtomicBool::new(false),
            done: AtomicU64::new(0),
        }
    }

    /// A new job number.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a job, or refuses it when `capacity` jobs wait already.
    pub fn push(&self, job: Job) -> Result<(), ApiError> {
        let mut queue = lock(&self.queue);
        if queue.len() >= self.capacity {
            let per_job = *lock(&self.last_seconds);
            let retry_after = ((queue.len() as f64 + 1.0) * per_job).ceil().clamp(1.0, 3600.0) as u64;
            return Err(ApiError::QueueFull { capacity: self.capacity, retry_after });
        }
        queue.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting (not counting the running one).
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }

    /// The 1-based place of task `task_id` in the queue (0: running), if it is there.
    pub fn position(&self, task_id: &str) -> Option<usize> {
        if lock(&self.running).as_ref().is_some_and(|(r, _)| r.task_id == task_id) {
            return Some(0);
        }
        lock(&self.queue).iter().position(|j| j.task_id == task_id).map(|p| p + 1)
    }

    /// The running job's progress.
    pub fn running(&self) -> Option<Running> {
        lock(&self.running).as_ref().map(|(r, _)| r.clone())
    }

    /// Seconds the last job took.
    pub fn last_seconds(&self) -> f64 {
        *lock(&self.last_seconds)
    }

    /// Stops the running job (A1111's /interrupt). Returns whether one was running.
    pub fn interrupt(&self) -> bool {
        self.interrupted.store(true, Ordering::SeqCst);
        match lock(&self.running).as_ref() {
            Some((_, control)) => {
                control.cancel.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Skips the running job's current batch (A1111's /skip).
    pub fn skip(&self) -> bool {
        self.skipped.store(true, Ordering::SeqCst);
        match lock(&self.running).as_ref() {
            Some((_, control)) => {
                control.skip.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Running)) {
        if let Some((running, _)) = lock(&self.running).as_mut() {
            f(running);
        }
    }

    fn pop(&self) -> Job {
        let mut queue = lock(&self.queue);
        loop {
            if let Some(job) = queue.pop_front() {
                return job;
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the worker needs besides the queue.
pub struct WorkerConfig {
    /// Options every model is loaded with (hints, dtype, device).
    pub model_options: ModelOptions,
    /// TAESD for live previews.
    pub taesd: Option<PathBuf>,
    /// Memory budget of the model cache in bytes (at least one model is always kept).
    pub cache_bytes: u64,
}

/// Which loaded model a job needs: the networks are built with the VAE, LoRAs and clip skip
/// merged in, so each combination is its own cache entry.
#[derive(Debug, Clone, PartialEq)]
struct ModelKey {
    model: PathBuf,
    vae: Option<PathBuf>,
    loras: Vec<(PathBuf, u64, u64)>,
    clip_skip: usize,
}

struct Cached {
    key: ModelKey,
    sd: Arc<StableDiffusion>,
    bytes: u64,
}

/// Bytes on disk under `path` (a file, or a diffusers folder's files): the cache's estimate of a
/// model's memory.
fn disk_size(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += std::fs::metadata(&p).map_or(0, |m| m.len());
            }
        }
    }
    total
}

struct Worker {
    jobs: Arc<Jobs>,
    config: WorkerConfig,
    cache: Vec<Cached>,
    taesd: Option<Taesd>,
    tmp: PathBuf,
}

/// Starts the worker thread.
pub fn spawn(jobs: Arc<Jobs>, config: WorkerConfig) -> std::io::Result<()> {
    let tmp = std::env::temp_dir().join(format!("kairos-serve-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let taesd = match &config.taesd {
        Some(path) => match Taesd::load(path, config.model_options.dtype, &config.model_options.device) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "warning: TAESD {} not loaded ({e}); previews use the latent → RGB approximation",
                    path.display()
                );
                None
            }
        },
        None => None,
    };
    std::thread::Builder::new().name("kairos-worker".into()).spawn(move || {
        let mut worker = Worker { jobs, config, cache: Vec::new(), taesd, tmp };
        worker.run();
    })?;
    Ok(())
}

impl Worker {
    fn run(&mut self) {
        loop {
            let job = self.jobs.pop();
            if job.control.cancel.load(Ordering::SeqCst) || job.reply.is_closed() {
                continue;
            }
            self.jobs.interrupted.store(false, Ordering::SeqCst);
            self.jobs.skipped.store(false, Ordering::SeqCst);
            let started = Instant::now();
            *lock(&self.jobs.running) = Some((
                Running {
                    id: job.id,
                    task_id: job.task_id.clone(),
                    started: Some(started),
                    phase: "starting",
                    ..Running::default()
                },
                job.control.clone(),
            ));
            let control = job.control.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job.work {
                Work::Generate(spec) => self.generate(spec, &control).map(Output::Generate),
                Work::Compare(spec) => self.compare(spec, &control).map(Output::Compare),
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned());
                Err(ApiError::Internal(format!("the job failed: {}", what.unwrap_or_else(|| "panic".into()))))
            });
            *lock(&self.jobs.running) = None;
            *lock(&self.jobs.last_seconds) = started.elapsed().as_secs_f64().max(0.05);
            self.jobs.done.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(result);
        }
    }

    /// The model for `key`, from the cache or loaded (evicting the least recently used models
    /// until it fits the budget).
    fn model(&mut self, key: ModelKey) -> Result<Arc<StableDiffusion>, ApiError> {
        if let Some(i) = self.cache.iter().position(|c| c.key == key) {
            let hit = self.cache.remove(i);
            self.cache.push(hit);
        } else {
            let bytes = disk_size(&key.model) + key.vae.as_deref().map_or(0, disk_size);
            while !self.cache.is_empty()
                && self.cache.iter().map(|c| c.bytes).sum::<u64>() + bytes > self.config.cache_bytes
            {
                self.cache.remove(0);
            }
            self.jobs.update(|r| r.phase = "loading model");
            let opts = ModelOptions {
                vae: key.vae.clone(),
                loras: key
                    .loras
                    .iter()
                    .map(|(path, te, unet)| kairos_pipeline::LoraWeights {
                        path: path.clone(),
                        text_encoder_strength: f64::from_bits(*te),
                        unet_strength: f64::from_bits(*unet),
                    })
                    .collect(),
                prompt: PromptOptions { clip_skip: key.clip_skip, ..self.config.model_options.prompt },
                ..self.config.model_options.clone()
            };
            let sd = StableDiffusion::load(&key.model, &opts).map_err(|e| match e {
                e @ (kairos_pipeline::PipelineError::VaeMismatch { .. } | kairos_pipeline::PipelineError::Lora(_)) => {
                    ApiError::Pipeline(e)
                }
                e => ApiError::Internal(format!("loading {}: {e}", key.model.display())),
            })?;
            self.cache.push(Cached { key, sd: Arc::new(sd), bytes });
        }
        self.cache.last().map(|c| c.sd.clone()).ok_or_else(|| ApiError::Internal("model cache is empty".into()))
    }

    fn generate(&mut self, spec: &GenSpec, control: &Control) -> Result<GenOutput, ApiError> {
        let key = ModelKey {
            model: spec.model.path.clone(),
            vae: spec.vae.as_ref().map(|v| v.path.clone()),
            loras: spec
                .loras
                .iter()
                .map(|l| (l.path.clone(), l.text_encoder_strength.to_bits(), l.unet_strength.to_bits()))
                .collect(),
            clip_skip: spec.clip_skip,
        };
        let jobs = self.jobs.clone();
        let tmp = self.tmp.clone();
        let taesd = self.taesd.take();
        let result = (|| {
            let sd = self.model(key.clone())?;
            let refiner = match &spec.refiner {
                None => None,
                Some((entry, switch)) => {
                    let refiner =
                        self.model(ModelKey { model: entry.path.clone(), vae: None, loras: Vec::new(), ..key })?;
                    if sd.model_family != ModelFamily::Sdxl || refiner.model_family != ModelFamily::SdxlRefiner {
                        return Err(ApiError::field(
                            "refiner_checkpoint",
                            format!(
                                "the refiner needs an SDXL base and an SDXL refiner; got {} and {}",
                                sd.model_family.name(),
                                refiner.model_family.name()
                            ),
                        ));
                    }
                    Some((refiner, *switch))
                }
            };
            let refiner = refiner.as_ref().map(|(r, s)| (r.as_ref(), *s));
            run_generate(&sd, refiner, taesd.as_ref(), spec, control, &jobs, &tmp)
        })();
        self.taesd = taesd;
        result
    }

    fn compare(&mut self, spec: &CompareSpec, control: &Control) -> Result<CompareOutput, ApiError> {
        let mut cells = Vec::with_capacity(spec.cells.len());
        let total = spec.cells.len();
        for (i, cell) in spec.cells.iter().enumerate() {
            if control.cancel.load(Ordering::SeqCst) {
                return Err(ApiError::Internal("interrupted".into()));
            }
            self.jobs.update(|r| {
                r.batch = i;
                r.batches = total;
            });
            let out = self.generate(cell, control)?;
            cells.push(out);
        }
        crate::compare::assemble(spec, cells)
    }
}

/// A preview of the step's x0 prediction as a base64 PNG.
fn render_preview(preview: &Preview<'_>, denoised: &candle_core::Tensor) -> Option<String> {
    let image = preview.render(denoised).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(encode_plain_png(&image)?))
}

/// A PNG without metadata (previews, grids).
pub fn encode_plain_png(image: &RgbImage) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().ok()?;
    writer.write_image_data(&image.data).ok()?;
    writer.finish().ok()?;
    Some(bytes)
}

static PNG_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The PNG `kairos generate` would write for `image` with `parameters`: written with the same
/// function (`save_png`) into the server's temporary folder, read back and removed.
fn png_with_infotext(
    tmp: &std::path::Path,
    image: &RgbImage,
    seed: u64,
    parameters: &str,
) -> Result<Vec<u8>, ApiError> {
    let path = tmp.join(format!("{}.png", PNG_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = save_png(&OutputTarget::File(path.clone()), 0, 1, seed, image, parameters)?;
    let bytes = std::fs::read(&written).map_err(|e| ApiError::Internal(format!("reading {}: {e}", written.display())));
    let _ = std::fs::remove_file(&written);
    bytes
}

fn run_generate(
    sd: &StableDiffusion,
    refiner: Option<(&StableDiffusion, f64)>,
    taesd: Option<&Taesd>,
    spec: &GenSpec,
    control: &Control,
    jobs: &Jobs,
    tmp: &std::path::Path,
) -> Result<GenOutput, ApiError> {
    let components = sd.components();
    let req = &spec.req;
    let run_steps = kairos_pipeline::txt2img::request_sigmas(&components, req)?.len() - 1;
    // The infotext's Steps is the full schedule's (as `kairos generate` and A1111 write it).
    let steps = match &req.init_image {
        None => run_steps,
        Some(_) => {
            let full = Txt2ImgRequest { init_image: None, ..req.clone() };
            kairos_pipeline::txt2img::request_sigmas(&components, &full)?.len() - 1
        }
    };
    let taesd =
        taesd.filter(|t| t.scale_factor() == sd.vae.scale_factor() && t.latent_channels() == sd.vae.latent_channels());
    let preview = match taesd {
        Some(t) => Preview::Decoder(t),
        None if sd.model_family.is_sdxl() => Preview::Linear(LatentRgbFactors::Sdxl),
        None => Preview::Linear(LatentRgbFactors::Sd15),
    };
    let model_hash = crate::catalog::short_hash(&spec.model.path);
    let vae_hash = spec.vae.as_ref().and_then(|v| crate::catalog::short_hash(&v.path));
    let batches = req.batch_count;
    jobs.update(|r| {
        r.batches = r.batches.max(batches);
        r.steps = run_steps;
        r.phase = "sampling";
    });
    let mut out = GenOutput {
        pngs: vec![],
        seeds: vec![],
        infotexts: vec![],
        model_hash: model_hash.clone(),
        interrupted: false,
        sigmas: vec![],
    };
    for batch in 0..batches {
        if control.cancel.load(Ordering::SeqCst) {
            out.interrupted = true;
            break;
        }
        control.skip.store(false, Ordering::SeqCst);
        // Each batch as `txt2img` runs it inside one call: seed + batch · batch_size, its own
        // generator (so a skipped or interrupted batch leaves the others as they would be).
        let one = Txt2ImgRequest {
            seed: req.seed.wrapping_add((batch * req.batch_size) as u64),
            batch_count: 1,
            ..req.clone()
        };
        let mut on_progress = |p: &Progress<'_>| {
            if control.cancel.load(Ordering::SeqCst) || control.skip.load(Ordering::SeqCst) {
                return ControlFlow::Break(());
            }
            match p {
                Progress::Step { step, steps, denoised, .. } => {
                    let every = spec.preview_every;
                    let due = every > 0 && (*step as i64 + 1) % every == 0;
                    let image = due.then(|| render_preview(&preview, denoised)).flatten();
                    jobs.update(|r| {
                        if r.batches <= batches {
                            r.batch = batch;
                        }
                        r.step = step + 1;
                        r.steps = *steps;
                        r.phase = "sampling";
                        if image.is_some() {
                            r.preview = image;
                        }
                    });
                }
                Progress::Decoding { .. } => jobs.update(|r| r.phase = "decoding"),
            }
            ControlFlow::Continue(())
        };
        let result = match refiner {
            None => kairos_pipeline::txt2img(&components, &one, &mut on_progress),
            // `kairos generate --refiner`: the base's latents at the switch, finished by the
            // refiner, decoded by the refiner's VAE.
            Some((rsd, switch)) => (|| {
                let handoff = kairos_pipeline::txt2img_latents(&components, &one, &mut on_progress)?;
                let mut out =
                    kairos_pipeline::refine_latents(&rsd.components(), &one, switch, &handoff, &mut on_progress)?;
                kairos_pipeline::decode_latents(&rsd.vae, &mut out, &mut on_progress)?;
                Ok::<_, kairos_pipeline::PipelineError>(out)
            })(),
        };
        let run = match result {
            Ok(run) => run,
            Err(e) if e.is_cancelled() => {
                if control.cancel.load(Ordering::SeqCst) {
                    out.interrupted = true;
                    break;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        out.sigmas = run.sigmas.clone();
        let images = run.batches.iter().flat_map(|b| b.seeds.iter().zip(&b.images));
        for (&seed, image) in images {
            let mut extra: Vec<(String, String)> = req
                .init_image
                .as_ref()
                .map(|init| ("Denoising strength".to_string(), init.strength.to_string()))
                .into_iter()
                .collect();
            extra.push(("Timestep mode".into(), "fractional".into()));
            extra.push(kairos_pipeline::infotext::dtype_field(sd.dtype));
            if !spec.lora_hashes.is_empty() {
                extra.push(("Lora hashes".into(), spec.lora_hashes.join(", ")));
            }
            if let Some((entry, switch)) = &spec.refiner {
                // A1111's refiner fields, as `kairos generate` writes them.
                let hash = crate::catalog::short_hash(&entry.path).map(|h| format!(" [{h}]")).unwrap_or_default();
                extra.push(("Refiner".into(), format!("{}{hash}", entry.stem())));
                extra.push(("Refiner switch at".into(), switch.to_string()));
            }
            let info = Infotext {
                prompt: spec.infotext_prompt.clone(),
                negative_prompt: req.negative_prompt.clone(),
                steps,
                sampler: req.sampler,
                schedule: req.schedule.clone(),
                cfg_scale: req.cfg_scale,
                seed,
                width: req.width,
                height: req.height,
                model_hash: model_hash.clone(),
                model: Some(spec.model.stem()),
                vae_hash: vae_hash.clone(),
                vae: spec.vae.as_ref().map(|v| v.file_name()),
                clip_skip: spec.clip_skip,
                rng: req.rng,
                extra,
            }
            .to_text();
            out.pngs.push(png_with_infotext(tmp, image, seed, &info)?);
            out.seeds.push(seed);
            out.infotexts.push(info);
        }
    }
    Ok(out)
}
