//! Sources of clean data samples x0 for the KLUB's Monte Carlo estimate.

use candle_core::{DType, Device, Tensor};
use kairos_toy::{GaussianMixture, ToyRng};

use crate::{AysError, Result};

/// Where the optimizer draws clean samples x0 from: exact draws for the toy world, rows of a
/// fixed set for real models (the paper uses a subset of 8192 samples; for SD, VAE-encoded and
/// scaled latents). Implementations draw only through `rng`, so a seed repeats a run.
pub trait DataSource {
    /// `n` samples stacked along the first dimension, in the dtype and on the device the
    /// denoiser expects.
    fn sample(&mut self, n: usize, rng: &mut ToyRng) -> Result<Tensor>;
}

/// Exact draws from the mixture, as an [n, 2] f64 tensor on the CPU.
impl DataSource for GaussianMixture {
    fn sample(&mut self, n: usize, rng: &mut ToyRng) -> Result<Tensor> {
        let flat: Vec<f64> = GaussianMixture::sample(self, n, rng).into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 2), &Device::Cpu)?)
    }
}

/// A fixed set of samples (first dimension = sample index), drawn uniformly with replacement.
#[derive(Debug, Clone)]
pub struct TensorData {
    data: Tensor,
}

impl TensorData {
    /// A source over the rows of `data`, which needs at least one row.
    pub fn new(data: Tensor) -> Result<Self> {
        if data.rank() == 0 || data.dim(0)? == 0 {
            return Err(AysError::option(
                "data",
                format!("{:?}", data.shape()),
                "a tensor with at least one sample along dim 0",
            ));
        }
        Ok(Self { data })
    }
}

impl DataSource for TensorData {
    fn sample(&mut self, n: usize, rng: &mut ToyRng) -> Result<Tensor> {
        let len = self.data.dim(0)?;
        // uniform() < 1, so the index is < len; `min` guards the rounding of a u just below 1.
        let idx: Vec<u32> = (0..n).map(|_| ((rng.uniform() * len as f64) as usize).min(len - 1) as u32).collect();
        let idx = Tensor::from_vec(idx, n, self.data.device())?;
        Ok(self.data.index_select(&idx, 0)?)
    }
}

/// Standard normal noise shaped and typed like `like` (drawn in f64 on the CPU, then moved), so
/// the draws do not depend on the device.
pub(crate) fn normal_like(like: &Tensor, rng: &mut ToyRng) -> Result<Tensor> {
    Ok(rng.normal_tensor(like.dims())?.to_dtype(like.dtype())?.to_device(like.device())?)
}

/// A per-row scale column shaped [n, 1, 1, ...] to broadcast against `like`.
pub(crate) fn row_scale(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Ok(Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)?.to_dtype(like.dtype())?.to_device(like.device())?)
}

/// The squared norm of each row (all dimensions but the first), in f64.
pub(crate) fn row_sq_norms(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.sqr()?.flatten_from(1)?.sum(1)?.to_vec1::<f64>()?)
}
