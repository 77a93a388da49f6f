//! Seeded noise for the pipeline: the initial latent and every later sampler draw from
//! torch-compatible generators, under the two batch conventions used in the field.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Shape, Tensor};

use super::{NoiseError, NoiseSource, PhiloxGenerator, TorchCpuGenerator};
use crate::Result;

/// Which generator reproduces a front end's noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RngKind {
    /// `torch.Generator("cpu")`: diffusers with a CPU generator, ComfyUI, A1111's "CPU" option.
    #[default]
    TorchCpu,
    /// torch's CUDA Philox `randn` as A1111 imitates it on the CPU: A1111's default "GPU" noise
    /// and its "NV" option.
    Philox,
}

impl RngKind {
    /// Accepted names, canonical name first for each kind.
    const NAMES: [(&'static str, RngKind); 6] = [
        ("torch-cpu", RngKind::TorchCpu),
        ("cpu", RngKind::TorchCpu),
        ("philox", RngKind::Philox),
        ("cuda", RngKind::Philox),
        ("gpu", RngKind::Philox),
        ("nv", RngKind::Philox),
    ];

    /// Parses a name, case-insensitively, with `_` and `-` alike (`torch_cpu` works).
    pub fn from_name(name: &str) -> Result<Self, NoiseError> {
        let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
        Self::NAMES.iter().find(|(n, _)| *n == wanted).map(|&(_, kind)| kind).ok_or_else(|| NoiseError::UnknownRng {
            name: name.to_string(),
            accepted: Self::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            RngKind::TorchCpu => "torch-cpu",
            RngKind::Philox => "philox",
        }
    }
}

impl fmt::Display for RngKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RngKind {
    type Err = NoiseError;

    fn from_str(s: &str) -> Result<Self, NoiseError> {
        Self::from_name(s)
    }
}

/// A generator of either [`RngKind`].
#[derive(Debug, Clone)]
pub enum SeededGenerator {
    /// See [`TorchCpuGenerator`].
    TorchCpu(TorchCpuGenerator),
    /// See [`PhiloxGenerator`].
    Philox(PhiloxGenerator),
}

impl SeededGenerator {
    /// A fresh generator of `kind` for `seed`.
    pub fn new(kind: RngKind, seed: u64) -> Self {
        match kind {
            RngKind::TorchCpu => Self::TorchCpu(TorchCpuGenerator::new(seed)),
            RngKind::Philox => Self::Philox(PhiloxGenerator::new(seed)),
        }
    }

    /// `n` standard normal float32 values: `randn(n)` of the underlying generator.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        match self {
            Self::TorchCpu(g) => g.randn(n),
            Self::Philox(g) => g.randn(n),
        }
    }
}

/// How a seed maps onto a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSeeding {
    /// One generator for the whole batch: every draw is `randn([B, ...])`. diffusers with a single
    /// `generator`, ComfyUI. Item i depends on the batch size.
    #[default]
    Shared,
    /// Generator i is seeded `seed + i` (wrapping) and draws item i's noise alone: A1111, diffusers
    /// with a list of generators. Item i is the same image as a batch of one with seed + i.
    PerItem,
}

/// A [`NoiseSource`] over seeded torch-compatible generators. Draw the initial latent first
/// ([`SeededNoise::initial_latent`]); each later `step_noise` continues the same stream(s), which
/// is what reproduces diffusers' and A1111's ancestral samplers.
///
/// Noise is generated in float32 on the CPU, then cast and moved to the requested dtype and
/// device, as diffusers and A1111 do with CPU generators.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seeding: BatchSeeding,
    generators: Vec<SeededGenerator>,
}

impl SeededNoise {
    /// Generators of `kind` for `seed`. With [`BatchSeeding::PerItem`], `batch_size` generators
    /// seeded seed, seed + 1, ...; every draw must then have `batch_size` as its first dimension.
    pub fn new(kind: RngKind, seed: u64, seeding: BatchSeeding, batch_size: usize) -> Result<Self, NoiseError> {
        let count = match seeding {
            BatchSeeding::Shared => 1,
            BatchSeeding::PerItem if batch_size == 0 => return Err(NoiseError::EmptyBatch),
            BatchSeeding::PerItem => batch_size,
        };
        let generators = (0..count).map(|i| SeededGenerator::new(kind, seed.wrapping_add(i as u64))).collect();
        Ok(Self { seeding, generators })
    }

    /// Standard normal noise of `shape` (e.g. `[B, 4, H/8, W/8]`), the first draw of the stream(s).
    /// The caller scales it (by σ_max, or sqrt(1 + σ_max²), or the scheduler's init_noise_sigma).
    pub fn initial_latent(&mut self, shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        self.draw(&shape.into(), dtype, device)
    }

    fn draw(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let values = match self.seeding {
            BatchSeeding::Shared => self.generators[0].randn(shape.elem_count()),
            BatchSeeding::PerItem => {
                let batch = shape.dims().first().copied().unwrap_or(0);
                if batch != self.generators.len() {
                    return Err(NoiseError::BatchMismatch {
                        generators: self.generators.len(),
                        shape: shape.dims().to_vec(),
                    }
                    .into());
                }
                let per_item = shape.elem_count() / batch;
                self.generators.iter_mut().flat_map(|g| g.randn(per_item)).collect()
            }
        };
        Ok(Tensor::from_vec(values, shape.clone(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
    }
}

impl NoiseSource for SeededNoise {
    fn step_noise(&mut self, like: &Tensor, _sigma: f64, _sigma_next: f64) -> Result<Tensor> {
        self.draw(like.shape(), like.dtype(), like.device())
    }
}
