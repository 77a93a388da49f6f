//! One module per subcommand.

pub mod bench;
pub mod generate;
pub mod inspect;
pub mod optimize;
pub mod schedule;
pub mod serve;
pub mod toy;
pub mod vae_eval;

use std::path::Path;

use kairos_pipeline::dtype_auto;
use kairos_schedule::{EdmSchedule, Family, ModelSchedule, TablePrecision};
use kairos_toy::{GaussianMixture, MixtureFile, Preset};

/// `--dtype`: the dtype network weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DtypeArg {
    /// The faster of f32 and bf16 on this CPU, from a short measured probe cached in the user's
    /// cache directory (f32 without AVX512-BF16; f16 on a GPU).
    #[default]
    Auto,
    /// float32 weights and compute.
    F32,
    /// float16 weights (half the memory); on the CPU widened to float32 per layer call.
    F16,
    /// bfloat16 weights (half the memory); on a CPU with AVX512-BF16, convolutions and
    /// linear layers multiply in bf16 with float32 sums (norms, softmax, residuals stay float32).
    Bf16,
}

impl DtypeArg {
    /// The candle dtype; `auto` is decided for `device` (see [`kairos_pipeline::dtype_auto`]) and
    /// says what it picked and why in one stderr line. The choice comes back for JSON records.
    pub fn resolve(self, device: &candle_core::Device) -> (candle_core::DType, Option<dtype_auto::AutoDtype>) {
        match self {
            DtypeArg::Auto => {
                let auto = dtype_auto::pick(device);
                eprintln!("{}", auto.summary());
                (auto.dtype, Some(auto))
            }
            DtypeArg::F32 => (candle_core::DType::F32, None),
            DtypeArg::F16 => (candle_core::DType::F16, None),
            DtypeArg::Bf16 => (candle_core::DType::BF16, None),
        }
    }
}

/// `--device`: `cpu`, `cuda[:N]` or `metal[:N]` (GPU N, default 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The CPU (the f32 kernels of kairos-kernels).
    Cpu,
    /// An NVIDIA GPU (a build with the `cuda` feature).
    Cuda(usize),
    /// An Apple GPU (a build with the `metal` feature).
    Metal(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, ordinal) = s.split_once(':').unwrap_or((s, "0"));
        let gpu: fn(usize) -> Self = match kind {
            "cpu" if !s.contains(':') => return Ok(Self::Cpu),
            "cuda" => Self::Cuda,
            "metal" => Self::Metal,
            _ => return Err(format!("unknown device `{s}`: use cpu, cuda, cuda:N, metal or metal:N")),
        };
        ordinal
            .parse()
            .map(gpu)
            .map_err(|_| format!("`{s}`: the GPU number after `:` must be a whole number (cpu, cuda:N or metal:N)"))
    }
}

impl DeviceArg {
    /// Opens the device; a GPU this build was not compiled for is an error naming the feature
    /// to build with.
    pub fn device(self) -> anyhow::Result<candle_core::Device> {
        use candle_core::{utils, Device};
        let rebuild = |feature: &str| {
            anyhow::anyhow!(
                "this kairos was built without {feature} support: rebuild with \
                 `cargo build --release -p kairos-cli --features {feature}`"
            )
        };
        Ok(match self {
            Self::Cpu => Device::Cpu,
            Self::Cuda(_) if !utils::cuda_is_available() => return Err(rebuild("cuda")),
            Self::Metal(_) if !utils::metal_is_available() => return Err(rebuild("metal")),
            // No driver, the stub libcuda of tools/cuda_env.sh (CUDA_ERROR_STUB_LIBRARY), no GPU
            // or a bad ordinal: candle's error says which; this says what was being opened.
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open CUDA GPU {n}: {e} (needs an NVIDIA GPU and a driver supporting the \
                     CUDA version kairos was built with; `--device cpu` runs on the CPU)"
                )
            })?,
            Self::Metal(n) => Device::new_metal(n).map_err(|e| anyhow::anyhow!("cannot open Metal GPU {n}: {e}"))?,
        })
    }
}

/// A family parsed from its name, with its training noise schedule in f64 (k-diffusion's
/// float64 convention; the CLI prints schedules, it does not reproduce a tool's float32 rounding).
fn family_schedule(name: &str) -> Result<(Family, ModelSchedule), kairos_schedule::ScheduleError> {
    let family = Family::from_name(name)?;
    Ok((family, family.noise_schedule(TablePrecision::F64)))
}

/// The toy world's data and the noise schedule its schedules span.
struct ToyData {
    /// The preset's name, or `file:<path>`.
    name: String,
    mixture: GaussianMixture,
    family: Family,
    model: ModelSchedule,
}

/// The toy data of `--mixture` or `--mixture-file`, with the schedule of `--family`; without
/// `--family`, a file's σ range gives a continuous EDM schedule on that range (family `svd`, the
/// continuous family, so `ays` and `gits` tables do not fit it), and otherwise SD1's.
fn toy_data(preset: &str, file: Option<&Path>, family: Option<&str>) -> anyhow::Result<ToyData> {
    let (name, mixture, range) = match file {
        Some(path) => {
            let f = MixtureFile::read(path)?;
            (format!("file:{}", path.display()), f.mixture, f.sigma_range)
        }
        None => {
            let p = Preset::from_name(preset)?;
            (p.name().to_string(), p.mixture(), None)
        }
    };
    let (family, model) = match (family, range) {
        (Some(name), _) => family_schedule(name)?,
        (None, Some((sigma_min, sigma_max))) => {
            (Family::Svd, ModelSchedule::Edm(EdmSchedule { sigma_min, sigma_max, sigma_data: 1.0 }))
        }
        (None, None) => family_schedule("sd1")?,
    };
    Ok(ToyData { name, mixture, family, model })
}
