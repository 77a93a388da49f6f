//! `kairos inspect MODEL`: what a checkpoint is, without running it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use kairos_models::loading::{self, Component, ConfigHints, LoadOptions, ModelFamily, PredictionType, UnetHeads};

/// Config values that single files do not record, for non-standard (e.g. tiny test) models.
/// Hidden: every real SD1/SD2 checkpoint uses the defaults.
#[derive(Args, Debug, Clone)]
pub struct HintArgs {
    /// GroupNorm groups of UNet and VAE.
    #[arg(long, hide = true, default_value_t = 32)]
    pub norm_num_groups: usize,
    /// Width of a text-encoder attention head.
    #[arg(long, hide = true, default_value_t = 64)]
    pub clip_head_dim: usize,
    /// Channels per UNet attention head (SD2 style) instead of the family's default.
    #[arg(long, hide = true)]
    pub unet_head_channels: Option<usize>,
}

impl HintArgs {
    /// Loading options with these hints.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            hints: ConfigHints {
                norm_num_groups: self.norm_num_groups,
                clip_head_dim: self.clip_head_dim,
                unet_heads: self.unet_head_channels.map(UnetHeads::Channels),
            },
            ..LoadOptions::default()
        }
    }
}

/// Arguments of `kairos inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint file (.safetensors, .ckpt, .pt), a diffusers folder, or a Hub repo id.
    model: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hints: HintArgs,
}

/// Parameter count of a component (sum of its tensors' element counts).
fn parameters(c: &Component) -> usize {
    c.keys().filter_map(|k| c.shape(k)).map(|s| s.iter().product::<usize>()).sum()
}

/// The weight files of a checkpoint: the file itself, or a folder's tensor files.
fn weight_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = vec![];
    for sub in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        if let Ok(entries) = std::fs::read_dir(path.join(sub)) {
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| {
                matches!(p.extension().and_then(|e| e.to_str()), Some("safetensors" | "bin" | "ckpt" | "pt"))
            }));
        }
    }
    files.sort();
    files
}

/// Tensor count per stored dtype over the files.
fn dtypes(files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for f in files {
        if f.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            // SAFETY: read-only map of a file nobody is expected to modify while we read it.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f)? };
            for (_, view) in st.tensors() {
                *counts.entry(format!("{:?}", view.dtype()).to_lowercase()).or_insert(0) += 1;
            }
        } else {
            let mut infos = candle_core::pickle::read_pth_tensor_info(f, false, None)?;
            if infos.is_empty() {
                infos = candle_core::pickle::read_pth_tensor_info(f, false, Some("state_dict"))?;
            }
            for info in infos {
                *counts.entry(info.dtype.as_str().to_string()).or_insert(0) += 1;
            }
        }
    }
    Ok(counts)
}

/// Runs `kairos inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = super::generate::resolve_model(&args.model)?;
    let w = loading::load(&path, &args.hints.load_options())?;
    let family = match (w.family, w.prediction_type) {
        (ModelFamily::Sd1, _) => "sd1",
        (ModelFamily::Sd2, PredictionType::Epsilon) => "sd2-base",
        (ModelFamily::Sd2, PredictionType::VPrediction) => "sd2",
        (ModelFamily::Sdxl, _) => "sdxl",
        (ModelFamily::SdxlRefiner, _) => "sdxl-refiner",
    };
    let layout = match (path.is_dir(), w.family.is_sdxl()) {
        (true, _) => "diffusers folder",
        (false, true) => "single file (SGM keys)",
        (false, false) => "single file (LDM keys)",
    };
    // A single file without first_stage_model.* is refused by the loader, so a loaded
    // checkpoint always carries its VAE: in the file, or in the folder's vae/.
    let vae = if path.is_dir() { "vae/ folder" } else { "baked in (first_stage_model.*)" };
    let mut counts: BTreeMap<&str, usize> = [
        ("unet", parameters(&w.unet)),
        ("vae", parameters(&w.vae)),
        (w.text_encoder.name(), parameters(&w.text_encoder)),
    ]
    .into();
    if let Some(te2) = &w.text_encoder_2 {
        counts.insert("text_encoder_2", parameters(te2));
    }
    let dtypes = dtypes(&weight_files(&path))?;
    if args.json {
        let v = serde_json::json!({
            "path": path,
            "layout": layout,
            "family": family,
            "prediction_type": w.prediction_type.as_str(),
            "vae": vae,
            "parameters": counts,
            "dtypes": dtypes,
            "skipped_keys": w.skipped_keys.len(),
            "unet_config": w.unet.config,
            "vae_config": w.vae.config,
            "text_encoder_config": w.text_encoder.config,
            "text_encoder_2_config": w.text_encoder_2.as_ref().map(|c| &c.config),
        });
        println!("{v}");
        return Ok(());
    }
    println!("{}", path.display());
    println!("  layout:      {layout}");
    println!("  family:      {family}");
    println!("  prediction:  {}", w.prediction_type.as_str());
    println!("  VAE:         {vae}");
    for (name, n) in &counts {
        println!("  {name:<15}{:.1} M parameters ({n})", *n as f64 / 1e6);
    }
    let dt: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    println!("  dtypes:      {}", dt.join(", "));
    if !w.skipped_keys.is_empty() {
        println!("  skipped:     {} keys (EMA, training buffers)", w.skipped_keys.len());
    }
    Ok(())
}
