//! The toy world's own random numbers: seeded, platform-independent standard normal and uniform
//! draws for exact samples of the data (the reference sample and the true-sample floor). The
//! sampler's initial noise and step noise come from kairos-sampler's torch-compatible
//! [`kairos_sampler::noise::SeededNoise`] instead, so a toy run can be replayed in k-diffusion.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Which independent stream of a seed a generator draws from, so that the reference sample and
/// the true samples of the same seed never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The large true sample that metrics compare against.
    Reference = 0,
    /// True samples scored like a sampler's output, as the floor of the figures.
    TrueSample = 1,
    /// Monte Carlo draws of estimators built on the toy world (the AYS optimizer's KLUB).
    Estimator = 2,
}

/// A seeded generator (ChaCha8, reproducible across platforms).
#[derive(Debug, Clone)]
pub struct ToyRng(ChaCha8Rng);

impl ToyRng {
    /// The generator for `stream` of `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream as u64);
        Self(rng)
    }

    /// One standard normal draw.
    pub fn normal(&mut self) -> f64 {
        self.0.sample(StandardNormal)
    }

    /// One uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.random()
    }

    /// A tensor of standard normal draws with the given shape (f64 on the CPU).
    pub fn normal_tensor(&mut self, shape: &[usize]) -> candle_core::Result<Tensor> {
        let data: Vec<f64> = (0..shape.iter().product()).map(|_| self.normal()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

/// The rows of an [N, 2] tensor as points (in f64); any other shape is an error.
pub(crate) fn tensor_to_points(t: &Tensor) -> candle_core::Result<Vec<[f64; 2]>> {
    let (n, d) = t.dims2()?;
    if d != 2 {
        return Err(candle_core::Error::UnexpectedShape {
            msg: "toy points must be an [N, 2] tensor".into(),
            expected: (n, 2).into(),
            got: t.shape().clone(),
        });
    }
    let flat = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

/// Points as an [N, 2] f64 tensor on `device`.
pub(crate) fn points_to_tensor(points: &[[f64; 2]], device: &Device) -> candle_core::Result<Tensor> {
    let flat: Vec<f64> = points.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (points.len(), 2), device)
}
