//! A1111's txt2img/img2img request bodies (`StableDiffusionTxt2ImgProcessingAPI`,
//! `StableDiffusionImg2ImgProcessingAPI`: field names and defaults) turned into a
//! [`Txt2ImgRequest`] with the model, VAE and LoRAs resolved in the catalog, and the `info`
//! JSON string of the response.
//!
//! A1111's semantics where they differ from `kairos generate`'s defaults: noise from the
//! `randn_source` setting (`GPU`: Philox, A1111's default), one generator per image seeded
//! seed + i, initial noise · σ₀ (· sqrt(1 + σ₀²) with `sgm_noise_multiplier`), A1111's img2img
//! step rule (`int(min(denoise, 0.999) · steps) + 1` steps run), and the sampler's own default
//! schedule for `scheduler: "Automatic"`. With `randn_source: CPU`, `sgm_noise_multiplier: true`
//! and batch size 1 the image is the one `kairos generate` writes for the same parameters (see
//! `crates/kairos-cli/tests/serve.rs`).

use base64::Engine;
use kairos_models::lora::extract_prompt_loras;
use kairos_pipeline::infotext::{sampler_label, schedule_label};
use kairos_pipeline::{InitImage, InitialNoise, LoraWeights, ResizeMode, RgbImage, Txt2ImgRequest};
use kairos_sampler::noise::{BatchSeeding, RngKind};
use kairos_sampler::samplers::AncestralOptions;
use kairos_sampler::Sampler;
use kairos_schedule::{DenoiseRule, ScheduleKind};
use serde_json::{json, Map, Value};

use crate::body::{is_number, is_off, Body};
use crate::catalog::{lora_hash, Catalog, Entry};
use crate::error::ApiError;
use crate::options::{self, Settings};

/// Largest side accepted, in pixels (the pixel budget `--max-pixels` applies too).
pub const MAX_SIDE: i64 = 16384;

/// Longest prompt accepted, in characters (A1111 encodes 75-token chunks one by one: an
/// unbounded prompt would be an unbounded job).
pub const MAX_PROMPT_CHARS: usize = 20_000;

/// A generation request, checked and resolved, ready for the worker.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// The checkpoint.
    pub model: Entry,
    /// A replacement VAE.
    pub vae: Option<Entry>,
    /// LoRAs from the prompt's tags.
    pub loras: Vec<LoraWeights>,
    /// `Lora hashes` infotext entries (`name: hash`).
    pub lora_hashes: Vec<String>,
    /// A1111 clip skip.
    pub clip_skip: usize,
    /// The run (prompt without its LoRA tags).
    pub req: Txt2ImgRequest,
    /// The prompt as given (A1111 keeps the tags in the infotext).
    pub infotext_prompt: String,
    /// `send_images`.
    pub send_images: bool,
    /// img2img `include_init_images`: the init image is appended to `images`.
    pub include_init: Option<String>,
    /// `force_task_id`, for `/progress?id_task=`.
    pub task_id: Option<String>,
    /// The request with its defaults filled in (the response's `parameters`).
    pub parameters: Value,
    /// `sampler_name` as A1111 labels it.
    pub sampler_name: String,
    /// `show_progress_every_n_steps`: steps between live previews (0 or less: none).
    pub preview_every: i64,
    /// SDXL ensemble of experts: the refiner and the fraction of the schedule the base runs
    /// (`refiner_checkpoint`, `refiner_switch_at`), as `kairos generate --refiner`.
    pub refiner: Option<(Entry, f64)>,
}

/// What the server's limits and current options are, for parsing.
pub struct Context<'a> {
    /// The folders.
    pub catalog: &'a Catalog,
    /// The stored options.
    pub options: &'a Map<String, Value>,
    /// `--max-pixels`: width · height · batch_size.
    pub max_pixels: u64,
}

/// A1111's sampler options: the schedule "Automatic" means for each sampler (its `scheduler`
/// option in `sd_samplers_kdiffusion.samplers_k_diffusion`), else "Uniform".
pub fn default_schedule(sampler: &Sampler) -> &'static str {
    match sampler.name() {
        "dpmpp_2m" | "dpmpp_sde" | "dpm_2" | "dpm_2_ancestral" | "dpmpp_2s_ancestral" => "karras",
        "dpmpp_2m_sde" | "dpmpp_2m_sde_heun" | "dpmpp_3m_sde" => "exponential",
        "ddim" => "ddim_uniform",
        _ => "normal",
    }
}

/// A1111's old combined labels (`DPM++ 2M Karras`) split into sampler and schedule.
const SCHEDULE_SUFFIXES: &[(&str, &str)] =
    &[(" Karras", "karras"), (" Exponential", "exponential"), (" SGMUniform", "sgm_uniform"), (" Uniform", "normal")];

/// The sampler and schedule of `sampler_name` (or `sampler_index`) and `scheduler`.
pub fn sampler_and_schedule(body: &Body<'_>) -> Result<(Sampler, ScheduleKind), ApiError> {
    let (field, name) = match (body.string("sampler_name")?, body.string("sampler_index")?) {
        (Some(n), _) if !n.is_empty() => ("sampler_name", n),
        (_, Some(n)) if !n.is_empty() => ("sampler_index", n),
        _ => ("sampler_name", "Euler".to_string()),
    };
    let (sampler, implied) = match Sampler::from_name(&name) {
        Ok(s) => (s, None),
        Err(e) => SCHEDULE_SUFFIXES
            .iter()
            .find_map(|(suffix, schedule)| {
                let stem = name.strip_suffix(suffix)?;
                Sampler::from_name(stem).ok().map(|s| (s, Some(*schedule)))
            })
            .ok_or_else(|| ApiError::field(body.name(field), e.to_string()))?,
    };
    let scheduler = body.string("scheduler")?.unwrap_or_default();
    let schedule = match scheduler.as_str() {
        "" | "Automatic" | "automatic" => implied.unwrap_or(default_schedule(&sampler)).to_string(),
        other => other.to_string(),
    };
    let schedule =
        ScheduleKind::from_name(&schedule).map_err(|e| ApiError::field(body.name("scheduler"), e.to_string()))?;
    Ok((sampler, schedule))
}

/// `eta` on the samplers that take it (k-diffusion's ancestral and SDE samplers, DDIM).
fn with_eta(sampler: Sampler, eta: f64) -> Sampler {
    let a = |o: AncestralOptions| AncestralOptions { eta, ..o };
    match sampler {
        Sampler::EulerAncestral(o) => Sampler::EulerAncestral(a(o)),
        Sampler::Dpm2Ancestral(o) => Sampler::Dpm2Ancestral(a(o)),
        Sampler::Dpmpp2sAncestral(o) => Sampler::Dpmpp2sAncestral(a(o)),
        Sampler::Dpmpp3mSde(o) => Sampler::Dpmpp3mSde(a(o)),
        Sampler::EulerAncestralCfgPp(o) => Sampler::EulerAncestralCfgPp(a(o)),
        Sampler::Ddim(o) => Sampler::Ddim(a(o)),
        Sampler::DpmppSde(o) => Sampler::DpmppSde(kairos_sampler::samplers::DpmppSdeOptions { eta, ..o }),
        Sampler::Dpmpp2mSde(o) => {
            Sampler::Dpmpp2mSde(kairos_sampler::samplers::Dpmpp2mSdeOptions { noise: a(o.noise), ..o })
        }
        other => other,
    }
}

fn is_ancestral(sampler: &Sampler) -> bool {
    matches!(
        sampler,
        Sampler::EulerAncestral(_)
            | Sampler::Dpm2Ancestral(_)
            | Sampler::Dpmpp2sAncestral(_)
            | Sampler::Dpmpp3mSde(_)
            | Sampler::EulerAncestralCfgPp(_)
            | Sampler::DpmppSde(_)
            | Sampler::Dpmpp2mSde(_)
    )
}

/// A base64 image (with or without a `data:image/...;base64,` prefix) as RGB.
pub fn decode_image(field: &str, text: &str) -> Result<RgbImage, ApiError> {
    let data = text.split_once(";base64,").map_or(text, |(_, d)| d).trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| ApiError::field(field, format!("not base64: {e}")))?;
    let reader = image::io::Reader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::field(field, format!("unreadable image: {e}")))?;
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    limits.max_alloc = Some(512 << 20);
    let mut reader = reader;
    reader.limits(limits);
    // The image crate's decoders can panic on malformed input (a WebP lossless Huffman table
    // overflowed an add: fuzz/init_image); that is a bad image, not a dead worker.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| ApiError::field(field, "not a PNG, JPEG or WebP image: the decoder failed on malformed data"))?;
    let image = decoded.map_err(|e| ApiError::field(field, format!("not a PNG, JPEG or WebP image: {e}")))?;
    let rgb = image.to_rgb8();
    Ok(RgbImage { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

/// A seed below 2³² from the clock (A1111's `get_fixed_seed(-1)`).
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos % 4_294_967_294) as u64
}

/// Fields that would change the image and that kairos does not implement, with their "off" test.
fn refuse_unsupported(body: &Body<'_>, img2img: bool) -> Result<(), ApiError> {
    body.refuse_unless(
        "styles",
        is_off,
        "saved prompt styles are not stored on a kairos server; put the text in the prompt",
    )?;
    body.refuse_unless("subseed_strength", is_off, "variation seeds are not implemented")?;
    body.refuse_unless(
        "seed_resize_from_h",
        |v| v.as_f64().is_some_and(|x| x <= 0.0),
        "seed resize is not implemented",
    )?;
    body.refuse_unless(
        "seed_resize_from_w",
        |v| v.as_f64().is_some_and(|x| x <= 0.0),
        "seed resize is not implemented",
    )?;
    body.refuse_unless("restore_faces", is_off, "face restoration is not implemented")?;
    body.refuse_unless("tiling", is_off, "tiling (seamless) images are not implemented")?;
    body.refuse_unless("enable_hr", is_off, "hires fix is not implemented; run img2img on the result")?;
    body.refuse_unless("firstpass_image", is_off, "hires fix is not implemented")?;
    body.refuse_unless("script_name", is_off, "scripts are not available on a kairos server")?;
    body.refuse_unless("alwayson_scripts", is_off, "scripts (ControlNet, ...) are not available on a kairos server")?;
    body.refuse_unless("s_churn", is_off, "churn is not exposed; use an ancestral sampler")?;
    body.refuse_unless("s_tmin", is_off, "churn is not exposed")?;
    body.refuse_unless("s_tmax", |v| is_off(v) || v.as_f64().is_some_and(f64::is_infinite), "churn is not exposed")?;
    body.refuse_unless("s_noise", is_number(1.0), "s_noise is not exposed")?;
    body.refuse_unless("s_min_uncond", is_off, "negative-guidance skipping is not implemented")?;
    if img2img {
        body.refuse_unless("mask", is_off, "inpainting is not implemented")?;
        body.refuse_unless("initial_noise_multiplier", is_number(1.0), "is not implemented")?;
    }
    Ok(())
}

/// Parses and resolves a txt2img (`img2img` false) or img2img body.
pub fn parse(obj: &Map<String, Value>, img2img: bool, ctx: &Context<'_>) -> Result<GenSpec, ApiError> {
    let body = Body::new(obj, "");
    refuse_unsupported(&body, img2img)?;
    let overrides = body.object("override_settings")?;
    if let Some(o) = overrides {
        options::validate(o, "override_settings.", ctx.catalog)?;
    }
    let settings: Settings = options::resolve(ctx.options, overrides)?;

    let prompt = body.string("prompt")?.unwrap_or_default();
    let negative_prompt = body.string("negative_prompt")?.unwrap_or_default();
    for (field, text) in [("prompt", &prompt), ("negative_prompt", &negative_prompt)] {
        if text.chars().count() > MAX_PROMPT_CHARS {
            return Err(ApiError::field(
                field,
                format!("{} characters is above the limit of {MAX_PROMPT_CHARS}", text.chars().count()),
            ));
        }
    }
    let seed = body.int("seed", i64::MIN, 1 << 53)?.unwrap_or(-1);
    let seed = if seed < 0 { random_seed() } else { seed as u64 };
    let (sampler, schedule) = sampler_and_schedule(&body)?;
    let eta = body.number("eta", 0.0, 10.0)?;
    let sampler = match eta {
        Some(eta) => with_eta(sampler, eta),
        None if is_ancestral(&sampler) => with_eta(sampler, settings.eta_ancestral),
        None => sampler,
    };
    let batch_size = body.int("batch_size", 1, 64)?.unwrap_or(1) as usize;
    let n_iter = body.int("n_iter", 1, 100)?.unwrap_or(1) as usize;
    let steps = body.int("steps", 1, 1000)?.unwrap_or(50) as usize;
    let cfg_scale = body.number("cfg_scale", 0.0, 100.0)?.unwrap_or(7.0);
    let width = body.int("width", 8, MAX_SIDE)?.unwrap_or(512) as usize;
    let height = body.int("height", 8, MAX_SIDE)?.unwrap_or(512) as usize;
    for (field, side) in [("width", width), ("height", height)] {
        if side % 8 != 0 {
            let nearest = ((side + 4) / 8).max(1) * 8;
            return Err(ApiError::field(field, format!("must be a multiple of 8, got {side} (e.g. {nearest})")));
        }
    }
    let pixels = (width * height * batch_size) as u64;
    if pixels > ctx.max_pixels {
        return Err(ApiError::field(
            "width",
            format!(
                "{width}x{height} x batch_size {batch_size} = {pixels} pixels is above this server's --max-pixels {}",
                ctx.max_pixels
            ),
        ));
    }

    let init = if img2img {
        let images = body
            .array("init_images")?
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiError::field("init_images", "img2img needs one base64 image in init_images"))?;
        if images.len() > 1 {
            return Err(ApiError::unsupported("init_images", format!("one image per request (got {})", images.len())));
        }
        let text = images[0].as_str().ok_or_else(|| ApiError::field("init_images", "expected base64 strings"))?;
        let image = decode_image("init_images", text)?;
        let resize_mode = match body.int("resize_mode", 0, 3)?.unwrap_or(0) {
            0 => ResizeMode::JustResize,
            1 => ResizeMode::CropAndResize,
            2 => ResizeMode::ResizeAndFill,
            _ => {
                return Err(ApiError::unsupported(
                    "resize_mode",
                    "3 (latent upscale) is not implemented; use 0, 1 or 2",
                ))
            }
        };
        let strength = body.number("denoising_strength", 0.0, 1.0)?.unwrap_or(0.75);
        if strength <= 0.0 {
            return Err(ApiError::field("denoising_strength", "must be in (0, 1], got 0"));
        }
        let denoise_rule = match body.string("denoise_rule")? {
            Some(rule) => DenoiseRule::from_name(&rule).map_err(|e| ApiError::field("denoise_rule", e.to_string()))?,
            None => DenoiseRule::A1111,
        };
        let include = body.bool("include_init_images")?.unwrap_or(false).then(|| text.to_string());
        Some((InitImage { image, resize_mode, strength, denoise_rule: Some(denoise_rule) }, include))
    } else {
        None
    };

    let (clean_prompt, tags) = extract_prompt_loras(&prompt).map_err(|e| ApiError::field("prompt", e.to_string()))?;
    let mut loras = Vec::with_capacity(tags.len());
    let mut lora_hashes = Vec::with_capacity(tags.len());
    for tag in tags {
        let entry = ctx.catalog.lora("prompt", &tag.name)?;
        lora_hashes.push(format!("{}: {}", entry.stem().replace([':', ','], "_"), lora_hash(&entry.path)?));
        loras.push(LoraWeights {
            path: entry.path.clone(),
            unet_strength: tag.unet_strength,
            text_encoder_strength: tag.text_encoder_strength,
        });
    }
    let model_field = if overrides.is_some_and(|o| o.contains_key("sd_model_checkpoint")) {
        "override_settings.sd_model_checkpoint"
    } else {
        "sd_model_checkpoint"
    };
    let model = match &settings.checkpoint {
        Some(name) => ctx.catalog.checkpoint(model_field, name)?.clone(),
        None => ctx.catalog.checkpoints.first().cloned().ok_or_else(|| ApiError::NotFound {
            field: model_field.into(),
            what: "model",
            name: String::new(),
            available: "none: put checkpoints in --models-dir and POST /sdapi/v1/refresh-checkpoints".into(),
        })?,
    };
    let vae = settings.vae.as_deref().map(|name| ctx.catalog.vae("sd_vae", name)).transpose()?.cloned();
    let refiner = match body.string("refiner_checkpoint")?.filter(|n| !n.is_empty() && n != "None") {
        Some(_) if img2img => {
            return Err(ApiError::unsupported("refiner_checkpoint", "the refiner is served for txt2img only"));
        }
        Some(name) => {
            let entry = ctx.catalog.checkpoint("refiner_checkpoint", &name)?.clone();
            let switch = body.number("refiner_switch_at", 0.0, 1.0)?.unwrap_or(0.8);
            if switch <= 0.0 || switch >= 1.0 {
                return Err(ApiError::field("refiner_switch_at", format!("must be in (0, 1), got {switch}")));
            }
            Some((entry, switch))
        }
        None => None,
    };

    let initial_noise = match schedule {
        ScheduleKind::Trailing | ScheduleKind::Linspace => InitialNoise::Sigma,
        _ if settings.sgm_noise_multiplier => InitialNoise::SqrtOnePlusSigmaSquared,
        _ => InitialNoise::Sigma,
    };
    let sampler_name = sampler_label(&sampler).to_string();
    let (init_image, include_init) = match init {
        Some((image, include)) => (Some(image), include),
        None => (None, None),
    };
    let req = Txt2ImgRequest {
        prompt: clean_prompt,
        negative_prompt: negative_prompt.clone(),
        width,
        height,
        steps,
        cfg_scale,
        sampler,
        schedule: schedule.clone(),
        seed,
        batch_size,
        batch_count: n_iter,
        rng: if settings.randn_cpu { RngKind::TorchCpu } else { RngKind::Philox },
        seeding: BatchSeeding::PerItem,
        initial_noise,
        init_image,
        denoising_end: refiner.as_ref().map(|(_, switch)| *switch),
        ..Txt2ImgRequest::default()
    };
    let mut parameters = obj.clone();
    for (k, v) in [
        ("prompt", json!(prompt)),
        ("negative_prompt", json!(negative_prompt)),
        ("seed", json!(seed)),
        ("sampler_name", json!(sampler_name)),
        ("scheduler", json!(schedule_label(&schedule))),
        ("batch_size", json!(batch_size)),
        ("n_iter", json!(n_iter)),
        ("steps", json!(steps)),
        ("cfg_scale", json!(cfg_scale)),
        ("width", json!(width)),
        ("height", json!(height)),
    ] {
        parameters.insert(k.to_string(), v);
    }
    if img2img {
        // The images are in the request already; A1111 echoes them as null.
        parameters.insert("init_images".into(), Value::Null);
    }
    Ok(GenSpec {
        model,
        vae,
        loras,
        lora_hashes,
        clip_skip: settings.clip_skip,
        req,
        infotext_prompt: prompt,
        send_images: body.bool("send_images")?.unwrap_or(true),
        include_init,
        preview_every: settings.preview_every,
        refiner,
        task_id: body.string("force_task_id")?,
        parameters: Value::Object(parameters),
        sampler_name,
    })
}

/// The response's `info`: A1111's `Processed.js()` fields, as a JSON string.
pub fn info_json(spec: &GenSpec, seeds: &[u64], infotexts: &[String], model_hash: Option<&str>) -> String {
    let req = &spec.req;
    let n = seeds.len();
    let info = json!({
        "prompt": spec.infotext_prompt,
        "all_prompts": vec![&spec.infotext_prompt; n],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": vec![&req.negative_prompt; n],
        "seed": seeds.first().copied().unwrap_or(req.seed),
        "all_seeds": seeds,
        "subseed": seeds.first().copied().unwrap_or(req.seed),
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": req.width,
        "height": req.height,
        "sampler_name": spec.sampler_name,
        "scheduler": schedule_label(&req.schedule),
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": spec.model.stem(),
        "sd_model_hash": model_hash,
        "sd_vae_name": spec.vae.as_ref().map(Entry::file_name),
        "sd_vae_hash": spec.vae.as_ref().and_then(|v| crate::catalog::short_hash(&v.path)),
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.init_image.as_ref().map(|i| i.strength),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job_timestamp(),
        "clip_skip": spec.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": concat!("kairos ", env!("CARGO_PKG_VERSION")),
    });
    info.to_string()
}

/// A1111's `job_timestamp` (`%Y%m%d%H%M%S`, UTC here).
pub fn job_timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A1111's `parse_generation_parameters`: the infotext as a map (`Prompt`, `Negative prompt`,
/// `Steps`, ... with `Size-1`/`Size-2` split out), values as strings, quoted ones unquoted.
pub fn parse_infotext(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut lines: Vec<&str> = text.trim().lines().collect();
    let last = lines.last().copied().unwrap_or("");
    let has_params = last.contains("Steps: ");
    let params_line = if has_params { lines.pop().unwrap_or("") } else { "" };
    let (mut prompt, mut negative, mut in_negative) = (Vec::new(), Vec::new(), false);
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    out.insert("Prompt".into(), json!(prompt.join("\n")));
    out.insert("Negative prompt".into(), json!(negative.join("\n")));
    // `key: value` pairs split on commas outside JSON-quoted values (A1111's re_param).
    let mut rest = params_line;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once(": ") else { break };
        let key = key.trim().trim_start_matches(',').trim();
        let (value, next) = if after.starts_with('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            match end {
                Some(i) => {
                    let quoted = &after[..=i];
                    let value = serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_string());
                    (value, after[i + 1..].trim_start_matches(',').trim_start())
                }
                None => (after.to_string(), ""),
            }
        } else {
            match after.split_once(", ") {
                Some((v, n)) => (v.to_string(), n),
                None => (after.to_string(), ""),
            }
        };
        if key == "Size" {
            if let Some((w, h)) = value.split_once('x') {
                out.insert("Size-1".into(), json!(w));
                out.insert("Size-2".into(), json!(h));
            }
        }
        out.insert(key.to_string(), json!(value));
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infotext_parses_as_a1111() {
        let text = "a cat, <lora:x:0.5>\nline two\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, \
                    Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 32x24, Lora hashes: \"a: 123, b: 456\", RNG: CPU";
        let p = parse_infotext(text);
        assert_eq!(p["Prompt"], "a cat, <lora:x:0.5>\nline two");
        assert_eq!(p["Negative prompt"], "ugly");
        assert_eq!(p["Steps"], "20");
        assert_eq!(p["Sampler"], "DPM++ 2M");
        assert_eq!(p["Size-1"], "32");
        assert_eq!(p["Size-2"], "24");
        assert_eq!(p["Lora hashes"], "a: 123, b: 456");
        assert_eq!(p["RNG"], "CPU");
    }

    #[test]
    fn old_combined_labels_split() {
        let obj = json!({"sampler_name": "DPM++ 2M Karras"});
        let (s, k) = sampler_and_schedule(&Body::new(obj.as_object().unwrap(), "")).unwrap();
        assert_eq!((s.name(), k.name()), ("dpmpp_2m", "karras"));
        let obj = json!({"sampler_name": "DPM++ 2M SDE", "scheduler": "Automatic"});
        let (s, k) = sampler_and_schedule(&Body::new(obj.as_object().unwrap(), "")).unwrap();
        assert_eq!((s.name(), k.name()), ("dpmpp_2m_sde", "exponential"));
        let obj = json!({"sampler_name": "Euler a", "scheduler": "Align Your Steps"});
        let (s, k) = sampler_and_schedule(&Body::new(obj.as_object().unwrap(), "")).unwrap();
        assert_eq!((s.name(), k.name()), ("euler_ancestral", "ays_a1111"));
        let obj = json!({"sampler_name": "Nope"});
        let err = sampler_and_schedule(&Body::new(obj.as_object().unwrap(), "")).unwrap_err();
        assert_eq!(err.field_name().as_deref(), Some("sampler_name"));
        assert_eq!(job_timestamp().len(), 14);
    }
}
