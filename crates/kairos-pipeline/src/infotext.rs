//! A1111's "infotext": the generation parameters written into a PNG's `parameters` text chunk,
//! readable by A1111's and Forge's "PNG Info" and by civitai (`modules/processing.py`
//! `create_infotext`, `modules/infotext_utils.py` `quote`).
//!
//! Format: the prompt, then `Negative prompt: ...` on its own line if there is one, then one
//! line of `Key: value` pairs joined by `, ` in A1111's order (`Steps`, `Sampler`,
//! `Schedule type`, `CFG scale`, `Seed`, `Size`, `Model hash`, `Model`, `VAE hash`, `VAE`,
//! `Clip skip`, `RNG`),
//! then kairos' extra parameters. A value containing `,`, `:` or a newline is written as a JSON
//! string, as A1111's `quote` does.

use kairos_sampler::noise::RngKind;
use kairos_sampler::Sampler;
use kairos_schedule::ScheduleKind;

/// A1111's sampler labels for the samplers it has; others keep kairos' name.
const SAMPLER_LABELS: &[(&str, &str)] = &[
    ("euler", "Euler"),
    ("euler_ancestral", "Euler a"),
    ("heun", "Heun"),
    ("dpm_2", "DPM2"),
    ("dpm_2_ancestral", "DPM2 a"),
    ("dpmpp_2s_ancestral", "DPM++ 2S a"),
    ("dpmpp_sde", "DPM++ SDE"),
    ("dpmpp_2m", "DPM++ 2M"),
    ("dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"),
    ("dpmpp_3m_sde", "DPM++ 3M SDE"),
    ("lms", "LMS"),
    ("ddim", "DDIM"),
    ("lcm", "LCM"),
    ("uni_pc", "UniPC"),
];

/// A1111/Forge "Schedule type" labels for the schedules that are theirs; others (ComfyUI's
/// `ays`, `gits`, user lists, ...) keep kairos' name so that they are not mistaken for A1111's.
const SCHEDULE_LABELS: &[(&str, &str)] = &[
    ("normal", "Uniform"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("polyexponential", "Polyexponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("kl_optimal_a1111", "KL Optimal"),
    ("ays_a1111", "Align Your Steps"),
    ("ays_11", "Align Your Steps 11"),
    ("ays_32", "Align Your Steps 32"),
    ("ays_gits_forge", "Align Your Steps GITS"),
    ("simple", "Simple"),
    ("ddim_uniform", "DDIM"),
    ("beta_a1111", "Beta"),
];

fn label(table: &[(&str, &'static str)], name: &'static str) -> &'static str {
    table.iter().find(|(n, _)| *n == name).map_or(name, |(_, l)| l)
}

/// A1111's label of a sampler (`DPM++ 2M`), or kairos' name where A1111 has none.
pub fn sampler_label(sampler: &Sampler) -> &'static str {
    label(SAMPLER_LABELS, sampler.name())
}

/// A1111's "Schedule type" label (`Karras`), or kairos' name where A1111 has none.
pub fn schedule_label(schedule: &ScheduleKind) -> &'static str {
    label(SCHEDULE_LABELS, schedule.name())
}

/// A1111's `quote`: values with `,`, `:` or a newline become JSON strings.
fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::Value::from(value).to_string()
    } else {
        value.to_string()
    }
}

/// A CFG scale as A1111's infotexts show it: `7` for whole numbers (the UI passes them as
/// integers), `7.5` otherwise.
fn cfg_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// kairos' infotext key for the dtype the network weights were stored in (`f32`, `bf16`, `f16`):
/// the pixels depend on it. A1111 writes no such field; Forge's `Diffusion in Low Bits` names
/// its own UNet storage options (`Automatic`, `bnb-nf4`, `float8-e4m3fn`, ...), so a kairos
/// dtype written there would set Forge's dropdown to a value it does not have.
pub const DTYPE_KEY: &str = "Dtype";

/// `(DTYPE_KEY, "bf16")`: the infotext pair for weights stored in `dtype`.
pub fn dtype_field(dtype: candle_core::DType) -> (String, String) {
    (DTYPE_KEY.to_string(), dtype.as_str().to_string())
}

/// The parameters of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Infotext {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (omitted when empty).
    pub negative_prompt: String,
    /// Steps.
    pub steps: usize,
    /// Sampler.
    pub sampler: Sampler,
    /// Sigma schedule.
    pub schedule: ScheduleKind,
    /// CFG scale.
    pub cfg_scale: f64,
    /// The image's seed.
    pub seed: u64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// A1111's short model hash (first 10 hex digits of the file's SHA-256).
    pub model_hash: Option<String>,
    /// Model name (the file stem).
    pub model: Option<String>,
    /// A1111's short hash of a replacement VAE file (`VAE hash`).
    pub vae_hash: Option<String>,
    /// A replacement VAE's file name with its extension (`VAE`, as A1111 writes it).
    pub vae: Option<String>,
    /// A1111 clip skip (written when above 1).
    pub clip_skip: usize,
    /// Generator (`RNG: CPU` for torch-cpu; Philox is A1111's default GPU noise and is omitted).
    pub rng: RngKind,
    /// Further `Key: value` pairs, appended in order.
    pub extra: Vec<(String, String)>,
}

impl Infotext {
    /// The infotext string.
    pub fn to_text(&self) -> String {
        let mut params: Vec<(String, String)> = vec![
            ("Steps".into(), self.steps.to_string()),
            ("Sampler".into(), sampler_label(&self.sampler).into()),
            ("Schedule type".into(), schedule_label(&self.schedule).into()),
            ("CFG scale".into(), cfg_text(self.cfg_scale)),
            ("Seed".into(), self.seed.to_string()),
            ("Size".into(), format!("{}x{}", self.width, self.height)),
        ];
        if let Some(h) = &self.model_hash {
            params.push(("Model hash".into(), h.clone()));
        }
        if let Some(m) = &self.model {
            params.push(("Model".into(), m.clone()));
        }
        if let Some(h) = &self.vae_hash {
            params.push(("VAE hash".into(), h.clone()));
        }
        if let Some(v) = &self.vae {
            params.push(("VAE".into(), v.clone()));
        }
        if self.clip_skip > 1 {
            params.push(("Clip skip".into(), self.clip_skip.to_string()));
        }
        if self.rng == RngKind::TorchCpu {
            params.push(("RNG".into(), "CPU".into()));
        }
        params.extend(self.extra.iter().cloned());
        let line = params.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect::<Vec<_>>().join(", ");
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        format!("{}{negative}\n{line}", self.prompt).trim().to_string()
    }
}

/// The SHA-256 of a file, as lowercase hex. A1111's model hash ("Model hash", "VAE hash") is
/// its first 10 digits ([`short_hash`]).
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A1111's short hash of a single-file checkpoint or VAE: the first 10 hex digits of its
/// SHA-256; `None` for a folder or an unreadable file.
pub fn short_hash(path: &std::path::Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    file_sha256(path).ok().map(|h| h[..10].to_string())
}

/// A1111's `addnet_hash_safetensors`, cut to its 12-digit short hash (the `Lora hashes`
/// infotext entry): SHA-256 of the file after its safetensors header.
pub fn lora_hash(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    file.seek(SeekFrom::Start(u64::from_le_bytes(len).saturating_add(8)))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Infotext {
        Infotext {
            prompt: "a cat, sitting".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: Sampler::Dpmpp2m,
            schedule: ScheduleKind::Karras { rho: 7.0 },
            cfg_scale: 7.0,
            seed: 1,
            width: 512,
            height: 512,
            model_hash: Some("6ce0161689".into()),
            model: Some("v1-5-pruned-emaonly".into()),
            vae_hash: None,
            vae: None,
            clip_skip: 1,
            rng: RngKind::Philox,
            extra: vec![],
        }
    }

    #[test]
    fn a1111_layout() {
        assert_eq!(
            sample().to_text(),
            "a cat, sitting\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, \
             Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly"
        );
    }

    #[test]
    fn quoting_rng_clip_skip_and_empty_prompts() {
        let mut t = sample();
        t.prompt.clear();
        t.negative_prompt.clear();
        t.cfg_scale = 7.5;
        t.clip_skip = 2;
        t.rng = RngKind::TorchCpu;
        t.model_hash = None;
        t.model = Some("my, model".into());
        t.schedule = ScheduleKind::Ays { model: None };
        t.vae_hash = Some("735e4c3a44".into());
        t.vae = Some("vae-ft-mse-840000-ema-pruned.safetensors".into());
        assert_eq!(
            t.to_text(),
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: ays, CFG scale: 7.5, Seed: 1, Size: 512x512, \
             Model: \"my, model\", VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, \
             Clip skip: 2, RNG: CPU"
        );
    }
}
