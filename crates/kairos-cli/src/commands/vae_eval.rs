//! `kairos vae-eval`: reconstruct a folder of images through one or more VAEs and report rFID,
//! PSNR, SSIM and PSIM (LPIPS-vgg) per VAE, as the SD VAE model cards do.
//!
//! Per image: center crop to a square, resize to `--size` (bilinear/triangle filter), encode,
//! decode the posterior mean (AutoencoderKL; TAESD has no posterior), clamp to [−1, 1] and round
//! to 8 bits. PSNR and SSIM compare the 8-bit images (data_range 255, channel last, scikit-image
//! defaults); LPIPS compares them mapped to [−1, 1]; rFID is the Fréchet distance between the
//! Inception pool features of originals and reconstructions. Per-image results are appended to
//! `<out>/<label>.jsonl` as they are computed, so a stopped run resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use image::imageops::FilterType;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use kairos_eval::fid::{frechet_distance, FeatureStats};
use kairos_eval::inception::FidInceptionV3;
use kairos_eval::lpips::Lpips;
use kairos_eval::psnr::peak_signal_noise_ratio;
use kairos_eval::ssim::{structural_similarity, SsimOptions};
use kairos_eval::stats::MeanStd;
use kairos_eval::Image;
use kairos_models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, AutoencoderTiny, AutoencoderTinyConfig};
use kairos_models::loading::{load_vae_file, ConfigHints};
use serde::{Deserialize, Serialize};

/// Arguments of `kairos vae-eval`.
#[derive(Args, Debug)]
pub struct VaeEvalArgs {
    /// Folder of images (.png, .jpg, .jpeg), read in name order.
    #[arg(long)]
    images: PathBuf,
    /// AutoencoderKL files (LDM or diffusers keys, e.g. vae-ft-mse-840000-ema-pruned.safetensors);
    /// repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    vae: Vec<PathBuf>,
    /// TAESD/TAESDXL as `ENCODER+DECODER` (madebyollin's files) or one diffusers file; repeatable.
    #[arg(long)]
    taesd: Vec<String>,
    /// Output folder: results.json, per-VAE <label>.jsonl caches and <label>_worst.png grids.
    #[arg(long, default_value = "vae-eval")]
    out: PathBuf,
    /// Evaluation resolution (square).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Images per VAE batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for rFID (skipped without it).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// torchvision's vgg16-397923af.pth, for PSIM/LPIPS (with --lpips-lin; skipped without).
    #[arg(long)]
    lpips_vgg: Option<PathBuf>,
    /// The lpips package's weights/v0.1/vgg.pth linear heads.
    #[arg(long)]
    lpips_lin: Option<PathBuf>,
    /// Reconstructions shown in the worst-PSNR grid.
    #[arg(long, default_value_t = 8)]
    worst: usize,
    /// GroupNorm groups of the AutoencoderKL files (32 for every SD VAE; for test models only).
    #[arg(long, default_value_t = 32)]
    vae_norm_groups: usize,
}

/// A VAE under evaluation.
enum Vae {
    Kl(Box<AutoencoderKL>),
    Tiny(Box<AutoencoderTiny>),
}

impl Vae {
    /// Images in [−1, 1] → reconstructions in [−1, 1].
    fn reconstruct(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        let y = match self {
            Self::Kl(vae) => vae.decode(&vae.encode(x)?.mean)?,
            Self::Tiny(vae) => vae.decode(&vae.encode(x)?)?,
        };
        // A NaN would be clamped to nothing and scored as black pixels.
        kairos_pipeline::image::ensure_finite(&y)?;
        Ok(y.clamp(-1f32, 1f32)?)
    }
}

/// One image's results, one line of `<label>.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    file: String,
    psnr: f64,
    ssim: f64,
    lpips: Option<f64>,
    /// Inception features of the reconstruction (rFID).
    features: Option<Vec<f32>>,
}

/// One line of `reference.jsonl`: Inception features of an original.
#[derive(Debug, Serialize, Deserialize)]
struct Reference {
    file: String,
    features: Vec<f32>,
}

/// One VAE's summary.
#[derive(Debug, Serialize)]
struct Summary {
    label: String,
    path: String,
    images: usize,
    rfid: Option<f64>,
    psnr: Option<MeanStd>,
    ssim: Option<MeanStd>,
    psim_lpips: Option<MeanStd>,
    images_per_second: Option<f64>,
}

struct Networks {
    inception: Option<FidInceptionV3>,
    lpips: Option<Lpips>,
}

/// Runs `kairos vae-eval`.
pub fn run(args: VaeEvalArgs) -> anyhow::Result<()> {
    if args.vae.is_empty() && args.taesd.is_empty() {
        bail!("give at least one VAE: --vae FILE and/or --taesd ENCODER+DECODER");
    }
    if args.size < 8 || !args.size.is_multiple_of(8) {
        bail!("--size must be a positive multiple of 8, got {}", args.size);
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = Device::Cpu;
    let mut files = list_images(&args.images)?;
    if let Some(n) = args.limit {
        files.truncate(n);
    }
    if files.is_empty() {
        bail!("no .png/.jpg/.jpeg images in {}", args.images.display());
    }
    fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let networks = Networks {
        inception: match &args.inception {
            Some(p) => Some(FidInceptionV3::load(p, &device)?),
            None => {
                eprintln!("note: rFID skipped (pass --inception pt_inception-2015-12-05-6726825d.pth)");
                None
            }
        },
        lpips: match (&args.lpips_vgg, &args.lpips_lin) {
            (Some(vgg), Some(lin)) => Some(Lpips::load(vgg, lin, &device)?),
            (None, None) => {
                eprintln!("note: PSIM/LPIPS skipped (pass --lpips-vgg vgg16-397923af.pth --lpips-lin vgg.pth)");
                None
            }
            _ => bail!("LPIPS needs both --lpips-vgg and --lpips-lin"),
        },
    };

    let mut vaes: Vec<(String, String, Vae)> = Vec::new();
    for path in &args.vae {
        let hints = ConfigHints { norm_num_groups: args.vae_norm_groups, ..Default::default() };
        let component = load_vae_file(path, &hints)?;
        let config = AutoencoderKLConfig::from_json(&component.config)?;
        let vae = AutoencoderKL::new(component.var_builder(DType::F32, &device), &config)?;
        vaes.push((label(path), path.display().to_string(), Vae::Kl(Box::new(vae))));
    }
    for spec in &args.taesd {
        let paths: Vec<PathBuf> = spec.split('+').map(PathBuf::from).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let vae = AutoencoderTiny::load(&refs, &AutoencoderTinyConfig::default(), DType::F32, &device)?;
        vaes.push((label(&paths[0]), spec.clone(), Vae::Tiny(Box::new(vae))));
    }
    let labels: HashSet<&String> = vaes.iter().map(|v| &v.0).collect();
    if labels.len() != vaes.len() {
        bail!("two VAEs have the same file name; rename one (labels are file stems)");
    }

    let originals = |file: &PathBuf| load_image(file, args.size);
    let reference = match &networks.inception {
        Some(net) => Some(reference_features(&args, &files, net, &device)?),
        None => None,
    };

    let mut summaries = Vec::new();
    for (label, path, vae) in &vaes {
        let cache = args.out.join(format!("{label}.jsonl"));
        let mut done = read_jsonl::<Record>(&cache)?;
        let todo: Vec<&PathBuf> = files.iter().filter(|f| !done.contains_key(&name(f))).collect();
        if !done.is_empty() {
            eprintln!("{label}: resuming, {} of {} images cached", files.len() - todo.len(), files.len());
        }
        let mut writer = OpenOptions::new().create(true).append(true).open(&cache)?;
        let progress = Progress::new(label, todo.len());
        for chunk in todo.chunks(args.batch) {
            let images: Vec<RgbImage> = chunk.iter().map(|f| originals(f)).collect::<anyhow::Result<_>>()?;
            let x = to_tensor(&images, &device)?;
            let y = vae.reconstruct(&x)?;
            let recon = to_images(&y)?;
            let feats = match &networks.inception {
                Some(net) => Some(net.forward(&unit(&to_tensor(&recon, &device)?)?)?.to_vec2::<f32>()?),
                None => None,
            };
            let lp = match &networks.lpips {
                Some(net) => Some(net.forward(&x, &to_tensor(&recon, &device)?)?.to_vec1::<f32>()?),
                None => None,
            };
            for (i, file) in chunk.iter().enumerate() {
                let (a, b) = (as_image(&images[i])?, as_image(&recon[i])?);
                let record = Record {
                    file: name(file),
                    psnr: peak_signal_noise_ratio(&a, &b, 255.0)?,
                    ssim: structural_similarity(&a, &b, &SsimOptions::default())?,
                    lpips: lp.as_ref().map(|l| l[i] as f64),
                    features: feats.as_ref().map(|f| f[i].clone()),
                };
                writeln!(writer, "{}", serde_json::to_string(&record)?)?;
                done.insert(record.file.clone(), record);
            }
            progress.advance(chunk.len());
        }
        progress.finish();
        let rate = progress.images_per_second();
        let records: Vec<&Record> = files.iter().filter_map(|f| done.get(&name(f))).collect();
        summaries.push(summarise(label, path, &records, reference.as_ref(), rate)?);
        write_worst_grid(&args, label, vae, &records, &device)?;
    }

    print_table(&summaries);
    let json = serde_json::json!({
        "settings": {
            "images": args.images.display().to_string(),
            "count": files.len(),
            "size": args.size,
            "preprocessing": "center crop to square, triangle (bilinear) resize, 8-bit",
            "reconstruction": "decode(posterior mean), clamp to [-1, 1], 8-bit",
            "psnr": "skimage peak_signal_noise_ratio, data_range 255",
            "ssim": "skimage structural_similarity, data_range 255, channel_axis -1, 7x7 uniform window, sample covariance",
            "psim": "lpips LPIPS(net='vgg') v0.1 on [-1, 1]",
            "rfid": "pytorch-fid Frechet distance of FID Inception pool3 features, originals vs reconstructions",
            "std": "population (ddof 0)",
        },
        "vaes": summaries,
    });
    let out = args.out.join("results.json");
    fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Images done out of a total, with the throughput: a progress bar on a terminal, one line per
/// batch otherwise (logs).
struct Progress {
    label: String,
    total: usize,
    done: std::cell::Cell<usize>,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(label: &str, total: usize) -> Self {
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            let template = format!("{label}: {{bar:40}} {{pos}}/{{len}} images  {{per_sec}}  ETA {{eta}}");
            bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar
        });
        Self { label: label.to_string(), total, done: 0.into(), start: Instant::now(), bar }
    }

    fn advance(&self, n: usize) {
        self.done.set(self.done.get() + n);
        match &self.bar {
            Some(bar) => bar.inc(n as u64),
            None => eprintln!(
                "{}: {}/{} images, {:.2} images/s",
                self.label,
                self.done.get(),
                self.total,
                self.images_per_second().unwrap_or(0.0)
            ),
        }
    }

    /// Images per second so far; `None` before the first.
    fn images_per_second(&self) -> Option<f64> {
        (self.done.get() > 0).then(|| self.done.get() as f64 / self.start.elapsed().as_secs_f64())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn label(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "vae".into())
}

fn name(path: &Path) -> String {
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(super) fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read the image folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Center crop to a square, resize to `size`.
pub(super) fn load_image(path: &Path, size: u32) -> anyhow::Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("cannot read {}", path.display()))?.to_rgb8();
    let side = img.width().min(img.height());
    let (x, y) = ((img.width() - side) / 2, (img.height() - side) / 2);
    let crop = image::imageops::crop_imm(&img, x, y, side, side).to_image();
    Ok(image::imageops::resize(&crop, size, size, FilterType::Triangle))
}

/// 8-bit RGB images → `[N, 3, H, W]` in [−1, 1].
fn to_tensor(images: &[RgbImage], device: &Device) -> anyhow::Result<Tensor> {
    let ts = images
        .iter()
        .map(|img| {
            let (w, h) = img.dimensions();
            let t = Tensor::from_vec(img.as_raw().clone(), (h as usize, w as usize, 3), device)?;
            Ok(t.permute((2, 0, 1))?.to_dtype(DType::F32)?.affine(1.0 / 127.5, -1.0)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&ts, 0)?)
}

/// [−1, 1] → [0, 1] (the Inception input range).
fn unit(x: &Tensor) -> anyhow::Result<Tensor> {
    Ok(x.affine(0.5, 0.5)?)
}

/// `[N, 3, H, W]` in [−1, 1] → 8-bit images (rounded).
fn to_images(y: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    let (n, _, h, w) = y.dims4()?;
    let bytes = ((y + 1.0)? * 127.5)?.round()?.clamp(0f32, 255f32)?.permute((0, 2, 3, 1))?.to_dtype(DType::U8)?;
    let data = bytes.flatten_all()?.to_vec1::<u8>()?;
    let per = h * w * 3;
    (0..n)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, data[i * per..(i + 1) * per].to_vec())
                .context("reconstruction buffer has the wrong size")
        })
        .collect()
}

fn as_image(img: &RgbImage) -> anyhow::Result<Image> {
    Ok(Image::from_u8(img.height() as usize, img.width() as usize, 3, img.as_raw())?)
}

fn read_jsonl<T: for<'de> Deserialize<'de> + HasFile>(path: &Path) -> anyhow::Result<HashMap<String, T>> {
    let mut out = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    for (i, line) in BufReader::new(File::open(path)?).lines().enumerate() {
        let line = line?;
        // A run killed mid-write leaves a partial last line: recompute that image.
        match serde_json::from_str::<T>(&line) {
            Ok(r) => {
                out.insert(r.file().to_string(), r);
            }
            Err(e) => eprintln!("{}:{}: skipping an unreadable line ({e})", path.display(), i + 1),
        }
    }
    Ok(out)
}

trait HasFile {
    fn file(&self) -> &str;
}
impl HasFile for Record {
    fn file(&self) -> &str {
        &self.file
    }
}
impl HasFile for Reference {
    fn file(&self) -> &str {
        &self.file
    }
}

/// Inception features of the originals, cached in `reference.jsonl`.
fn reference_features(
    args: &VaeEvalArgs,
    files: &[PathBuf],
    net: &FidInceptionV3,
    device: &Device,
) -> anyhow::Result<FeatureStats> {
    let cache = args.out.join(format!("reference_{}.jsonl", args.size));
    let mut done = read_jsonl::<Reference>(&cache)?;
    let todo: Vec<&PathBuf> = files.iter().filter(|f| !done.contains_key(&name(f))).collect();
    let mut writer = OpenOptions::new().create(true).append(true).open(&cache)?;
    let progress = Progress::new("reference features", todo.len());
    for chunk in todo.chunks(args.batch) {
        let images: Vec<RgbImage> = chunk.iter().map(|f| load_image(f, args.size)).collect::<anyhow::Result<_>>()?;
        let feats = net.forward(&unit(&to_tensor(&images, device)?)?)?.to_vec2::<f32>()?;
        for (file, features) in chunk.iter().zip(feats) {
            let r = Reference { file: name(file), features };
            writeln!(writer, "{}", serde_json::to_string(&r)?)?;
            done.insert(r.file.clone(), r);
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    let feats: Vec<&Vec<f32>> = files.iter().filter_map(|f| done.get(&name(f)).map(|r| &r.features)).collect();
    stats(&feats)
}

fn stats(feats: &[&Vec<f32>]) -> anyhow::Result<FeatureStats> {
    let dim = feats.first().map_or(0, |f| f.len());
    let flat: Vec<f64> = feats.iter().flat_map(|f| f.iter().map(|&v| v as f64)).collect();
    Ok(FeatureStats::from_features(&flat, feats.len(), dim)?)
}

fn summarise(
    label: &str,
    path: &str,
    records: &[&Record],
    reference: Option<&FeatureStats>,
    rate: Option<f64>,
) -> anyhow::Result<Summary> {
    let values = |f: &dyn Fn(&Record) -> Option<f64>| -> Vec<f64> { records.iter().filter_map(|r| f(r)).collect() };
    let rfid = match reference {
        Some(reference) if records.len() >= 2 => {
            let feats: Vec<&Vec<f32>> = records.iter().filter_map(|r| r.features.as_ref()).collect();
            if feats.len() == records.len() {
                Some(frechet_distance(reference, &stats(&feats)?)?)
            } else {
                eprintln!("{label}: rFID skipped, some cached images have no features (rerun with a fresh --out)");
                None
            }
        }
        _ => None,
    };
    Ok(Summary {
        label: label.to_string(),
        path: path.to_string(),
        images: records.len(),
        rfid,
        psnr: MeanStd::of(&values(&|r| Some(r.psnr))),
        ssim: MeanStd::of(&values(&|r| Some(r.ssim))),
        psim_lpips: MeanStd::of(&values(&|r| r.lpips)),
        images_per_second: rate,
    })
}

fn print_table(summaries: &[Summary]) {
    let ms = |m: &Option<MeanStd>, digits: usize| match m {
        Some(m) => format!("{:.digits$} ± {:.digits$}", m.mean, m.std),
        None => "-".into(),
    };
    println!(
        "{:<32} {:>6} {:>8} {:>15} {:>15} {:>15} {:>8}",
        "VAE", "images", "rFID ↓", "PSNR ↑", "SSIM ↑", "PSIM ↓", "img/s"
    );
    for s in summaries {
        println!(
            "{:<32} {:>6} {:>8} {:>15} {:>15} {:>15} {:>8}",
            s.label,
            s.images,
            s.rfid.map_or("-".into(), |f| format!("{f:.2}")),
            ms(&s.psnr, 1),
            ms(&s.ssim, 2),
            ms(&s.psim_lpips, 2),
            // Throughput of this run's reconstructions (none when all came from the cache).
            s.images_per_second.map_or("-".into(), |r| format!("{r:.2}"))
        );
    }
}

/// Original | reconstruction pairs of the lowest-PSNR images, one pair per row.
fn write_worst_grid(
    args: &VaeEvalArgs,
    label: &str,
    vae: &Vae,
    records: &[&Record],
    device: &Device,
) -> anyhow::Result<()> {
    let mut worst: Vec<&&Record> = records.iter().collect();
    worst.sort_by(|a, b| a.psnr.total_cmp(&b.psnr));
    worst.truncate(args.worst);
    if worst.is_empty() {
        return Ok(());
    }
    let s = args.size;
    let mut grid = RgbImage::new(2 * s, s * worst.len() as u32);
    for (row, record) in worst.iter().enumerate() {
        let original = load_image(&args.images.join(&record.file), s)?;
        let recon = to_images(&vae.reconstruct(&to_tensor(std::slice::from_ref(&original), device)?)?)?;
        let y = row as u32 * s;
        image::imageops::replace(&mut grid, &original, 0, y as i64);
        image::imageops::replace(&mut grid, &recon[0], s as i64, y as i64);
    }
    let path = args.out.join(format!("{label}_worst.png"));
    grid.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
