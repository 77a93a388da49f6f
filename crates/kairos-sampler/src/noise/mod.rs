//! Noise sources: where stochastic samplers (and the pipeline's initial latent) get their noise.

mod philox;
mod torch_cpu;

use std::collections::VecDeque;

use candle_core::Tensor;

use crate::{Result, SamplerError};

pub use philox::PhiloxGenerator;
pub use torch_cpu::TorchCpuGenerator;

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
        let n = self
            .queue
            .pop_front()
            .ok_or(SamplerError::NoiseExhausted)?;
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
