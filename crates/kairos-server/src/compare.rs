//! kairos' own endpoints: `POST /v1/schedule` (a schedule's sigmas and timesteps) and
//! `POST /v1/compare` (one prompt and seed under several schedules × step counts, assembled into
//! one labelled PNG grid with the σ curves beside it).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use base64::Engine;
use kairos_pipeline::RgbImage;
use kairos_schedule::{DenoiseRule, Family, ModelSchedule, ScheduleKind, TablePrecision};
use serde_json::{json, Map, Value};

use crate::a1111::{self, Context, GenSpec};
use crate::body::Body;
use crate::error::ApiError;
use crate::worker::GenOutput;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Most cells one comparison may ask for.
pub const MAX_CELLS: usize = 64;

/// One schedule of a request: a name, or a user list / optimized schedule file with a label.
#[derive(Debug, Clone)]
pub struct NamedSchedule {
    /// The label shown (the name, or the given label).
    pub label: String,
    /// A built-in schedule, or `None` for `sigmas` below.
    pub kind: Option<ScheduleKind>,
    /// An optimized schedule file, interpolated to each step count.
    pub file: Option<kairos_ays::ScheduleFile>,
    /// Explicit sigmas (their length sets the steps).
    pub sigmas: Option<Vec<f64>>,
}

impl NamedSchedule {
    /// The schedule kind for `steps` steps.
    pub fn kind_for(&self, field: &str, steps: usize) -> Result<ScheduleKind, ApiError> {
        if let Some(kind) = &self.kind {
            return Ok(kind.clone());
        }
        if let Some(file) = &self.file {
            let sigmas = file.sigmas_for(Some(steps)).map_err(|e| ApiError::field(field, e.to_string()))?;
            return Ok(ScheduleKind::Sigmas(sigmas.into_vec()));
        }
        Ok(ScheduleKind::Sigmas(self.sigmas.clone().unwrap_or_default()))
    }
}

/// Reads a schedule: `"karras"`, `{"sigmas": [...], "label": ...}`, `{"timesteps": [...]}` or
/// `{"file": <kairos schedule file JSON>, "label": ...}`.
pub fn parse_schedule(field: &str, v: &Value) -> Result<NamedSchedule, ApiError> {
    match v {
        Value::String(name) => {
            let kind = ScheduleKind::from_name(name).map_err(|e| ApiError::field(field, e.to_string()))?;
            Ok(NamedSchedule { label: kind.name().to_string(), kind: Some(kind), file: None, sigmas: None })
        }
        Value::Object(obj) => {
            let body = Body::new(obj, &format!("{field}."));
            let numbers = |name: &str| -> Result<Option<Vec<f64>>, ApiError> {
                let Some(list) = body.array(name)? else { return Ok(None) };
                if list.is_empty() || list.len() > 1001 {
                    return Err(ApiError::field(body.name(name), "needs 1 to 1001 numbers"));
                }
                list.iter()
                    .map(|x| {
                        x.as_f64()
                            .filter(|x| x.is_finite())
                            .ok_or_else(|| ApiError::field(body.name(name), "expected finite numbers"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            };
            let label = body.string("label")?;
            if let Some(file) = body.get("file") {
                let file: kairos_ays::ScheduleFile = serde_json::from_value(file.clone())
                    .map_err(|e| ApiError::field(body.name("file"), format!("not a kairos schedule file: {e}")))?;
                file.sigmas_for(None).map_err(|e| ApiError::field(body.name("file"), e.to_string()))?;
                return Ok(NamedSchedule {
                    label: label.unwrap_or_else(|| "optimized".into()),
                    kind: None,
                    file: Some(file),
                    sigmas: None,
                });
            }
            if let Some(sigmas) = numbers("sigmas")? {
                return Ok(NamedSchedule {
                    label: label.unwrap_or_else(|| "sigmas".into()),
                    kind: Some(ScheduleKind::Sigmas(sigmas)),
                    file: None,
                    sigmas: None,
                });
            }
            if let Some(ts) = numbers("timesteps")? {
                return Ok(NamedSchedule {
                    label: label.unwrap_or_else(|| "timesteps".into()),
                    kind: Some(ScheduleKind::Timesteps(ts)),
                    file: None,
                    sigmas: None,
                });
            }
            match body.string("name")? {
                Some(name) => {
                    let mut s = parse_schedule(&body.name("name"), &Value::String(name))?;
                    if let Some(label) = label {
                        s.label = label;
                    }
                    Ok(s)
                }
                None => Err(ApiError::field(field, "give a name, or one of sigmas, timesteps, file")),
            }
        }
        other => Err(ApiError::field(
            field,
            format!("expected a schedule name or object, got {}", crate::body::type_name(other)),
        )),
    }
}

/// `POST /v1/schedule`: `{family, schedule | schedules, steps, denoise, denoise_rule}` → the
/// sigmas and the timesteps the network is fed, as `kairos schedule --json` prints them.
pub fn schedule(obj: &Map<String, Value>) -> Result<Value, ApiError> {
    let body = Body::new(obj, "");
    let family_name = body.string("family")?.unwrap_or_else(|| "sd1".into());
    let family = Family::from_name(&family_name).map_err(|e| ApiError::field("family", e.to_string()))?;
    let model: ModelSchedule = family.noise_schedule(TablePrecision::F64);
    let steps = body.int("steps", 1, 1000)?.unwrap_or(10) as usize;
    let denoise = body.number("denoise", 0.0, 1.0)?.unwrap_or(1.0);
    if denoise <= 0.0 {
        return Err(ApiError::field("denoise", "must be in (0, 1]"));
    }
    let rule = body
        .string("denoise_rule")?
        .map(|r| DenoiseRule::from_name(&r).map_err(|e| ApiError::field("denoise_rule", e.to_string())))
        .transpose()?;
    let mut list = Vec::new();
    if let Some(v) = body.get("schedule") {
        list.push(parse_schedule("schedule", v)?);
    }
    if let Some(all) = body.array("schedules")? {
        if all.len() > MAX_CELLS {
            return Err(ApiError::field("schedules", format!("at most {MAX_CELLS}")));
        }
        for (i, v) in all.iter().enumerate() {
            list.push(parse_schedule(&format!("schedules[{i}]"), v)?);
        }
    }
    if list.is_empty() {
        list.push(parse_schedule("schedule", &Value::String("karras".into()))?);
    }
    let built = list
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let field = if body.get("schedule").is_some() && i == 0 { "schedule".to_string() } else { format!("schedules[{i}]") };
            let kind = s.kind_for(&field, steps)?;
            let rule = rule.unwrap_or(kind.denoise_rule());
            let sigmas =
                kind.build_with_rule(&model, family, steps, denoise, rule).map_err(|e| ApiError::field(&field, e.to_string()))?;
            let timesteps = sigmas.timesteps(&model);
            Ok(json!({ "schedule": s.label, "steps": sigmas.steps(), "sigmas": sigmas.into_vec(), "timesteps": timesteps }))
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let mut out = if built.len() == 1 && body.get("schedules").is_none() {
        built[0].clone()
    } else {
        json!({ "steps": steps, "schedules": built })
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("family".into(), json!(family.name()));
        o.insert("denoise".into(), json!(denoise));
    }
    Ok(out)
}

/// A comparison: one generation per (schedule, steps) cell.
pub struct CompareSpec {
    /// Row labels (schedules).
    pub rows: Vec<String>,
    /// Column step counts.
    pub columns: Vec<usize>,
    /// The cells, row-major.
    pub cells: Vec<GenSpec>,
    /// The seed all cells share.
    pub seed: u64,
}

/// The grid and its cells.
pub struct CompareOutput {
    /// The response body.
    pub body: Value,
}

/// Parses `POST /v1/compare`: an A1111 txt2img body (prompt, seed, sampler, size, ...) plus
/// `schedules` (names or objects as in /v1/schedule) and `steps` (a list of step counts).
pub fn parse(obj: &Map<String, Value>, ctx: &Context<'_>) -> Result<CompareSpec, ApiError> {
    let body = Body::new(obj, "");
    let schedules = body.array("schedules")?.filter(|a| !a.is_empty()).ok_or_else(|| {
        ApiError::field("schedules", "give a list of schedules, e.g. [\"karras\", \"exponential\", \"ays\", \"gits\"]")
    })?;
    let rows = schedules
        .iter()
        .enumerate()
        .map(|(i, v)| parse_schedule(&format!("schedules[{i}]"), v))
        .collect::<Result<Vec<_>, _>>()?;
    let columns = match body.get("steps") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&s| (1..=1000).contains(&s))
                    .map(|s| s as usize)
                    .ok_or_else(|| ApiError::field("steps", "expected step counts in 1..=1000"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Number(_)) => vec![body.int("steps", 1, 1000)?.unwrap_or(10) as usize],
        None => vec![10, 20],
        Some(v) => {
            return Err(ApiError::field(
                "steps",
                format!("expected a list of step counts, got {}", crate::body::type_name(v)),
            ))
        }
    };
    if rows.len() * columns.len() > MAX_CELLS {
        return Err(ApiError::field(
            "schedules",
            format!("{} x {} cells is above the limit of {MAX_CELLS}", rows.len(), columns.len()),
        ));
    }
    let seed = match body.int("seed", i64::MIN, 1 << 53)? {
        Some(s) if s >= 0 => s as u64,
        _ => a1111::random_seed(),
    };
    let mut cells = Vec::with_capacity(rows.len() * columns.len());
    for (i, row) in rows.iter().enumerate() {
        for &steps in &columns {
            let mut cell_obj = obj.clone();
            cell_obj.remove("schedules");
            cell_obj.insert("steps".into(), json!(steps));
            cell_obj.insert("seed".into(), json!(seed));
            cell_obj.insert("batch_size".into(), json!(1));
            cell_obj.insert("n_iter".into(), json!(1));
            cell_obj.remove("scheduler");
            let mut spec = a1111::parse(&cell_obj, false, ctx)?;
            let kind = row.kind_for(&format!("schedules[{i}]"), steps)?;
            spec.req.initial_noise = match (&kind, spec.req.initial_noise) {
                (ScheduleKind::Trailing | ScheduleKind::Linspace, _) => kairos_pipeline::InitialNoise::Sigma,
                (_, n) => n,
            };
            spec.req.schedule = kind;
            cells.push(spec);
        }
    }
    Ok(CompareSpec { rows: rows.into_iter().map(|r| r.label).collect(), columns, cells, seed })
}

fn decode_png(bytes: &[u8]) -> Option<RgbImage> {
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).ok()?.to_rgb8();
    Some(RgbImage { width: image.width() as usize, height: image.height() as usize, data: image.into_raw() })
}

/// Colours of the σ curves, one per row.
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// A canvas for the grid.
struct Canvas {
    image: RgbImage,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self { image: RgbImage { width, height, data: vec![255; width * height * 3] } }
    }

    fn put(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.image.width || y as usize >= self.image.height {
            return;
        }
        let at = (y as usize * self.image.width + x as usize) * 3;
        for (channel, &target) in self.image.data[at..at + 3].iter_mut().zip(&rgb) {
            let old = *channel as f32;
            *channel = (old + (target as f32 - old) * alpha.clamp(0.0, 1.0)).round() as u8;
        }
    }

    fn blit(&mut self, src: &RgbImage, x0: usize, y0: usize) {
        for y in 0..src.height {
            for x in 0..src.width {
                let s = (y * src.width + x) * 3;
                let (dx, dy) = (x0 + x, y0 + y);
                if dx < self.image.width && dy < self.image.height {
                    let d = (dy * self.image.width + dx) * 3;
                    self.image.data[d..d + 3].copy_from_slice(&src.data[s..s + 3]);
                }
            }
        }
    }

    fn text(&mut self, font: &FontRef<'_>, text: &str, x: f32, y: f32, size: f32, rgb: [u8; 3]) {
        let scale = PxScale::from(size);
        let scaled = font.as_scaled(scale);
        let mut caret = x;
        for ch in text.chars() {
            let glyph = scaled.scaled_glyph(ch);
            let advance = scaled.h_advance(glyph.id);
            let glyph = ab_glyph::Glyph { position: ab_glyph::point(caret, y + scaled.ascent()), ..glyph };
            if let Some(outlined) = font.outline_glyph(glyph) {
                let bounds = outlined.px_bounds();
                outlined.draw(|gx, gy, coverage| {
                    self.put(bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64, rgb, coverage);
                });
            }
            caret += advance;
        }
    }

    fn line(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), rgb: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=n {
            let t = i as f32 / n as f32;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                self.put(x as i64 + dx, y as i64 + dy, rgb, 0.9);
            }
        }
    }
}

/// Assembles the cells into one PNG: a header row of step counts, one row per schedule with its
/// label, and a panel of the σ curves (log σ against the fraction of the run), and the response
/// body with each cell's image, sigmas and infotext.
pub fn assemble(spec: &CompareSpec, outputs: Vec<GenOutput>) -> Result<CompareOutput, ApiError> {
    let font = FontRef::try_from_slice(FONT).map_err(|_| ApiError::Internal("the bundled font is invalid".into()))?;
    let images: Vec<Option<RgbImage>> = outputs.iter().map(|o| o.pngs.first().and_then(|p| decode_png(p))).collect();
    let (cw, ch) = images.iter().flatten().next().map_or((64, 64), |i| (i.width, i.height));
    let (cw, ch) = (cw.max(64), ch.max(64));
    let (label_w, header_h, gap, plot_w) = (150usize, 28usize, 6usize, 360usize);
    let cols = spec.columns.len();
    let rows = spec.rows.len();
    let grid_w = label_w + cols * (cw + gap);
    let height = (header_h + rows * (ch + gap)).max(300);
    let mut canvas = Canvas::new(grid_w + plot_w + 20, height);
    for (j, steps) in spec.columns.iter().enumerate() {
        let x = (label_w + j * (cw + gap)) as f32;
        canvas.text(&font, &format!("{steps} steps"), x + 4.0, 6.0, 15.0, [30, 30, 30]);
    }
    let mut cells = Vec::with_capacity(spec.cells.len());
    for (i, label) in spec.rows.iter().enumerate() {
        let y = header_h + i * (ch + gap);
        let colour = PALETTE[i % PALETTE.len()];
        canvas.text(&font, label, 8.0, y as f32 + ch as f32 / 2.0 - 8.0, 15.0, colour);
        for j in 0..cols {
            let k = i * cols + j;
            if let Some(image) = &images[k] {
                canvas.blit(image, label_w + j * (cw + gap), y);
            }
            let out = &outputs[k];
            cells.push(json!({
                "schedule": label,
                "steps": spec.columns[j],
                "image": out.pngs.first().map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
                "infotext": out.infotexts.first(),
                "sigmas": out.sigmas,
            }));
        }
    }
    // σ curves: x = step / steps of the largest step count, y = ln σ.
    let (px, py, pw, ph) =
        ((grid_w + 10) as f32, (header_h + 10) as f32, (plot_w - 30) as f32, (height - header_h - 50) as f32);
    canvas.text(&font, "ln sigma vs. progress", px, 6.0, 15.0, [30, 30, 30]);
    canvas.line((px, py), (px, py + ph), [120, 120, 120]);
    canvas.line((px, py + ph), (px + pw, py + ph), [120, 120, 120]);
    let col = cols - 1;
    let curves: Vec<Vec<f64>> = (0..rows).map(|i| outputs[i * cols + col].sigmas.clone()).collect();
    let all: Vec<f64> = curves.iter().flatten().copied().filter(|s| *s > 0.0).collect();
    if !all.is_empty() {
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).ln();
        let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max).ln();
        let span = (hi - lo).max(1e-6);
        for (i, sigmas) in curves.iter().enumerate() {
            let pts: Vec<(f32, f32)> = sigmas
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > 0.0)
                .map(|(k, s)| {
                    let x = px + pw * k as f32 / (sigmas.len() - 1).max(1) as f32;
                    let y = py + ph * (1.0 - ((s.ln() - lo) / span) as f32);
                    (x, y)
                })
                .collect();
            for w in pts.windows(2) {
                canvas.line(w[0], w[1], PALETTE[i % PALETTE.len()]);
            }
        }
        canvas.text(&font, &format!("{:.2}", hi.exp()), px + 4.0, py - 2.0, 12.0, [90, 90, 90]);
        canvas.text(&font, &format!("{:.3}", lo.exp()), px + 4.0, py + ph - 16.0, 12.0, [90, 90, 90]);
        canvas.text(&font, &format!("{} steps", spec.columns[col]), px + pw - 60.0, py + ph + 6.0, 12.0, [90, 90, 90]);
    }
    let grid = crate::worker::encode_plain_png(&canvas.image)
        .ok_or_else(|| ApiError::Internal("grid PNG encoding failed".into()))?;
    let body = json!({
        "grid": base64::engine::general_purpose::STANDARD.encode(grid),
        "seed": spec.seed,
        "rows": spec.rows,
        "columns": spec.columns,
        "cells": cells,
        "interrupted": outputs.iter().any(|o| o.interrupted),
    });
    Ok(CompareOutput { body })
}
