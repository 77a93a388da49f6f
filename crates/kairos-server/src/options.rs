//! A1111's settings (`GET/POST /sdapi/v1/options`, and a request's `override_settings`): the
//! ones that change what kairos does are read with their types; the rest are kept and echoed,
//! as A1111 stores them, and have no effect.

use serde_json::{json, Map, Value};

use crate::body::Body;
use crate::catalog::Catalog;
use crate::error::ApiError;

/// The settings that act, resolved from the stored options and a request's overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `sd_model_checkpoint`: a catalog name (`None`: the first checkpoint).
    pub checkpoint: Option<String>,
    /// `sd_vae`: `None` for "Automatic"/"None" (the checkpoint's own VAE), else a catalog name.
    pub vae: Option<String>,
    /// `CLIP_stop_at_last_layers` (A1111's clip skip, 1 = last layer).
    pub clip_skip: usize,
    /// `randn_source`: `GPU` (Philox, A1111's default) or `CPU` (torch's CPU generator).
    pub randn_cpu: bool,
    /// `sgm_noise_multiplier`: initial noise · sqrt(1 + σ₀²) instead of · σ₀.
    pub sgm_noise_multiplier: bool,
    /// `eta_ancestral`: eta of the ancestral samplers when a request gives none.
    pub eta_ancestral: f64,
    /// `show_progress_every_n_steps`: steps between live previews (0 or less: none).
    pub preview_every: i64,
}

/// The options every server starts with (the acting ones at A1111's defaults).
pub fn defaults(default_checkpoint: Option<&str>) -> Map<String, Value> {
    let value = json!({
        "sd_model_checkpoint": default_checkpoint,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "randn_source": "GPU",
        "sgm_noise_multiplier": false,
        "eta_ancestral": 1.0,
        "eta_noise_seed_delta": 0,
        "show_progress_every_n_steps": 1,
        "live_previews_enable": true,
        "samples_format": "png",
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Checks `update` (a POST body or `override_settings`, whose errors are prefixed `prefix`)
/// against the catalog, so that a bad value is refused before it is stored or used.
pub fn validate(update: &Map<String, Value>, prefix: &str, catalog: &Catalog) -> Result<(), ApiError> {
    let body = Body::new(update, prefix);
    if let Some(name) = body.string("sd_model_checkpoint")? {
        catalog.checkpoint(&body.name("sd_model_checkpoint"), &name)?;
    }
    if let Some(name) = body.string("sd_vae")? {
        if !is_automatic(&name) {
            catalog.vae(&body.name("sd_vae"), &name)?;
        }
    }
    body.int("CLIP_stop_at_last_layers", 1, 12)?;
    if let Some(source) = body.string("randn_source")? {
        match source.as_str() {
            "GPU" | "CPU" => {}
            "NV" => {
                return Err(ApiError::unsupported(
                    body.name("randn_source"),
                    "NV (NVidia's CUDA noise) is not implemented; use GPU or CPU",
                ))
            }
            _ => return Err(ApiError::field(body.name("randn_source"), format!("`{source}`: accepted GPU, CPU"))),
        }
    }
    body.bool("sgm_noise_multiplier")?;
    body.number("eta_ancestral", 0.0, 10.0)?;
    body.int("show_progress_every_n_steps", -1, 1000)?;
    body.refuse_unless(
        "eta_noise_seed_delta",
        crate::body::is_off,
        "ENSD (a seed offset for ancestral noise) is not implemented",
    )?;
    Ok(())
}

fn is_automatic(name: &str) -> bool {
    matches!(name, "Automatic" | "None" | "")
}

/// The acting settings of `stored` options with `overrides` on top.
pub fn resolve(stored: &Map<String, Value>, overrides: Option<&Map<String, Value>>) -> Result<Settings, ApiError> {
    let mut merged = stored.clone();
    if let Some(o) = overrides {
        merged.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let body = Body::new(&merged, "");
    Ok(Settings {
        checkpoint: body.string("sd_model_checkpoint")?.filter(|s| !s.is_empty()),
        vae: body.string("sd_vae")?.filter(|s| !is_automatic(s)),
        clip_skip: body.int("CLIP_stop_at_last_layers", 1, 12)?.unwrap_or(1) as usize,
        randn_cpu: body.string("randn_source")?.as_deref() == Some("CPU"),
        sgm_noise_multiplier: body.bool("sgm_noise_multiplier")?.unwrap_or(false),
        eta_ancestral: body.number("eta_ancestral", 0.0, 10.0)?.unwrap_or(1.0),
        preview_every: body.int("show_progress_every_n_steps", -1, 1000)?.unwrap_or(1),
    })
}
