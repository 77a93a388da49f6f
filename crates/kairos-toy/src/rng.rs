//! The toy world's random numbers: seeded, platform-independent standard normal and uniform
//! draws, in separate streams for the initial noise, the sampler noise and the true sample.

use candle_core::{DType, Device, Tensor};
use kairos_sampler::NoiseSource;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Which independent stream of a seed a generator draws from, so that changing, say, the number
/// of sampler noise draws never changes the initial noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The sampler's starting point x = sigma_max * z.
    InitialNoise = 0,
    /// The noise that stochastic samplers inject.
    SamplerNoise = 1,
    /// The large true sample that metrics compare against.
    Reference = 2,
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
        let n = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| self.normal()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

/// A [`NoiseSource`] that draws from a [`ToyRng`]: one fresh standard normal tensor per call.
#[derive(Debug, Clone)]
pub struct SeededNoise(pub ToyRng);

impl NoiseSource for SeededNoise {
    fn step_noise(&mut self, like: &Tensor, _sigma: f64, _sigma_next: f64) -> kairos_sampler::Result<Tensor> {
        let noise = self.0.normal_tensor(like.dims())?;
        Ok(noise.to_dtype(like.dtype())?.to_device(like.device())?)
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
