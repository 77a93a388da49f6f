//! Noise sources: where stochastic samplers (and the pipeline's initial latent) get their noise.

//!
//! - [`TorchCpuGenerator`]: `torch.randn` with a CPU `torch.Generator`, bit for bit.
//! - [`PhiloxGenerator`]: torch's CUDA `randn` as AUTOMATIC1111 imitates it, bit for bit with A1111.
//! - [`SeededNoise`]: the pipeline's source over either, with [`RngKind`] and [`BatchSeeding`].
//! - [`BrownianTreeNoise`]: Brownian-tree increments for SDE samplers (k-diffusion's semantics).
//! - [`FixedNoise`]: replays recorded noise.

mod brownian;
mod philox;
mod seeded;
mod torch_cpu;

use std::collections::VecDeque;

use candle_core::Tensor;

use crate::{Result, SamplerError};

pub use brownian::BrownianTreeNoise;
pub use philox::PhiloxGenerator;
pub use seeded::{BatchSeeding, RngKind, SeededGenerator, SeededNoise};
pub use torch_cpu::TorchCpuGenerator;

/// Errors from noise sources.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoiseError {
    /// An RNG name that is not known.
    #[error("unknown rng `{name}`; accepted: {accepted}")]
    UnknownRng { name: String, accepted: String },
    /// Per-item seeding was asked for a batch of zero.
    #[error("per-item seeding needs a batch size of at least 1")]
    EmptyBatch,
    /// A per-item draw whose first dimension is not the number of generators.
    #[error("per-item noise has {generators} generators but was asked for shape {shape:?} (first dimension must be the batch size)")]
    BatchMismatch { generators: usize, shape: Vec<usize> },
    /// A Brownian tree needs 0 <= sigma_min < sigma_max, both finite.
    #[error("invalid Brownian tree interval [{sigma_min}, {sigma_max}]: need finite 0 <= sigma_min < sigma_max")]
    InvalidInterval { sigma_min: f64, sigma_max: f64 },
    /// A Brownian increment was asked outside the tree's interval, or over an empty step.
    #[error("Brownian increment from sigma {sigma} to {sigma_next} is not a non-empty step inside the tree's [{sigma_min}, {sigma_max}]")]
    InvalidStep { sigma: f64, sigma_next: f64, sigma_min: f64, sigma_max: f64 },
}

/// Supplies standard normal noise to stochastic samplers, one draw per call.
pub trait NoiseSource {
    /// Standard normal noise with the shape, dtype and device of `like`, for the step from
    /// `sigma` to `sigma_next` (Brownian-tree sources use the interval; plain generators ignore it).
    fn step_noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor>;
}

/// Replays a fixed list of noise tensors in order: for parity tests that feed a reference's
/// recorded noise, and for deterministic samplers (which never draw).
#[derive(Debug, Default)]
pub struct FixedNoise {
    queue: VecDeque<Tensor>,
}

impl FixedNoise {
    /// Noise that will be handed out in the given order.
    pub fn new(noise: impl IntoIterator<Item = Tensor>) -> Self {
        Self { queue: noise.into_iter().collect() }
    }

    /// How many draws are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for FixedNoise {
    fn step_noise(&mut self, like: &Tensor, _sigma: f64, _sigma_next: f64) -> Result<Tensor> {
        let n = self.queue.pop_front().ok_or(SamplerError::NoiseExhausted)?;
        if n.shape() != like.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: n.shape().clone(),
                rhs: like.shape().clone(),
                op: "fixed noise",
            }
            .into());
        }
        Ok(n.to_dtype(like.dtype())?.to_device(like.device())?)
    }
}
