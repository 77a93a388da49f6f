//! A short measured comparison of the f32 and the bf16 weight paths on this CPU, for picking the
//! faster one (`--dtype auto`).
//!
//! The probe builds the same layers a UNet builds ([`crate::nn::Linear`] and [`crate::nn::Conv2d`],
//! once with f32 weights and once with bf16 weights) on shapes where an SD1.5 UNet at 512²
//! spends its time: a transformer linear layer over 2048 tokens of 640 channels and a 3×3
//! convolution at 32×32 with 640 channels. So it measures exactly what a UNet call would run:
//! Winograd and the f32 GEMM on one side, the packed bf16 GEMM on the other. The two paths are
//! timed alternately (so that a neighbour's load or a clock change hits both) and each keeps its
//! fastest round. Attention, norms and the other f32-only parts run the same in both dtypes and
//! are left out.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Conv2dConfig;

/// Whether the bf16 path is a real bf16 GEMM on this CPU: AVX512-BF16 (see
/// [`crate::gemm_bf16::available`]), kernels on. Without it bf16 weights are widened to f32 per
/// call, which can only be slower than f32.
pub fn bf16_gemm_available() -> bool {
    crate::gemm_bf16::available() && !crate::kernels_off()
}

/// Most rounds per dtype after the warm-up round.
pub const ROUNDS: usize = 3;

/// The probe's result: the fastest round of each path, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeTimes {
    /// One round (the linear layer, then the convolution) with f32 weights.
    pub f32_s: f64,
    /// The same round with bf16 weights.
    pub bf16_s: f64,
}

impl ProbeTimes {
    /// The faster weight dtype: bf16 only if its round was strictly faster.
    pub fn faster(&self) -> DType {
        if self.bf16_s < self.f32_s {
            DType::BF16
        } else {
            DType::F32
        }
    }
}

fn tensor(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = crate::uniform(seed, n).into_iter().map(|x| x * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The probe's layers in one weight dtype.
struct Layers {
    linear: crate::nn::Linear,
    conv: crate::nn::Conv2d,
}

/// Shapes, from the SD1.5 UNet at 512² (its second level, batch 2): a transformer linear layer
/// `[2048 tokens × 640] · [640 × 640]` and a 3×3 convolution `640 → 640` at 32×32 (batch 1).
/// 5.5 GFLOP a round: big enough to run the GEMMs at their speed on many cores, small enough
/// for a 2-core machine to finish the probe well inside a second.
const TOKENS: usize = 2048;
const WIDTH: usize = 640;
const CHANNELS: usize = 640;
const SIDE: usize = 32;

impl Layers {
    fn new(dtype: DType) -> Result<Self> {
        let lw = tensor(&[WIDTH, WIDTH], 1, 0.04)?.to_dtype(dtype)?;
        let lb = tensor(&[WIDTH], 2, 0.1)?.to_dtype(dtype)?;
        let cw = tensor(&[CHANNELS, CHANNELS, 3, 3], 3, 0.02)?.to_dtype(dtype)?;
        let cb = tensor(&[CHANNELS], 4, 0.1)?.to_dtype(dtype)?;
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        Ok(Self {
            linear: crate::nn::Linear::new(lw, Some(lb))?,
            conv: crate::nn::Conv2d::new(candle_nn::Conv2d::new(cw, Some(cb), cfg))?,
        })
    }

    /// One round: both layers once, timed.
    fn round(&self, tokens: &Tensor, map: &Tensor) -> Result<Duration> {
        let start = Instant::now();
        let a = self.linear.forward(tokens)?;
        let b = self.conv.forward(map)?;
        let took = start.elapsed();
        // Keep the outputs alive until after the clock stops (their memory is freed outside it).
        drop((a, b));
        Ok(took)
    }
}

/// Time after which the probe stops adding rounds: once each path has a round timed after its
/// warm-up, or already after the warm-up rounds when one path took more than [`CLEAR_GAP`] times
/// the other's (a CPU where bf16 is several times slower needs no second look).
pub const BUDGET: Duration = Duration::from_millis(250);

/// The ratio of round times that settles the question after the warm-up alone.
pub const CLEAR_GAP: f64 = 1.5;

/// Times the f32 and the bf16 path alternately: one warm-up round each, then up to [`ROUNDS`]
/// more each while within [`BUDGET`], and returns each one's fastest round (the warm-up rounds
/// count: first-call costs only make them slower). About 0.1–0.5 s. Meaningful only where
/// [`bf16_gemm_available`] (elsewhere bf16 is widened per call and simply slower).
pub fn probe() -> Result<ProbeTimes> {
    let start = Instant::now();
    let f32_layers = Layers::new(DType::F32)?;
    let bf16_layers = Layers::new(DType::BF16)?;
    let tokens = tensor(&[1, TOKENS, WIDTH], 5, 1.0)?;
    let map = tensor(&[1, CHANNELS, SIDE, SIDE], 6, 1.0)?;
    let mut f32_best = f32_layers.round(&tokens, &map)?;
    let mut bf16_best = bf16_layers.round(&tokens, &map)?;
    let clear = {
        let (a, b) = (f32_best.as_secs_f64(), bf16_best.as_secs_f64());
        a.max(b) > CLEAR_GAP * a.min(b)
    };
    for i in 0..ROUNDS {
        if start.elapsed() > BUDGET && (i > 0 || clear) {
            break;
        }
        // Alternate which goes first, so that neither always follows the other's cache state.
        if i % 2 == 0 {
            f32_best = f32_best.min(f32_layers.round(&tokens, &map)?);
            bf16_best = bf16_best.min(bf16_layers.round(&tokens, &map)?);
        } else {
            bf16_best = bf16_best.min(bf16_layers.round(&tokens, &map)?);
            f32_best = f32_best.min(f32_layers.round(&tokens, &map)?);
        }
    }
    Ok(ProbeTimes { f32_s: f32_best.as_secs_f64(), bf16_s: bf16_best.as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faster_prefers_f32_on_a_tie() {
        assert_eq!(ProbeTimes { f32_s: 1.0, bf16_s: 1.0 }.faster(), DType::F32);
        assert_eq!(ProbeTimes { f32_s: 1.0, bf16_s: 0.5 }.faster(), DType::BF16);
        assert_eq!(ProbeTimes { f32_s: 0.5, bf16_s: 1.0 }.faster(), DType::F32);
    }

    #[test]
    fn probe_times_both_paths() {
        let start = Instant::now();
        let t = probe().unwrap();
        assert!([t.f32_s, t.bf16_s].iter().all(|s| s.is_finite() && *s > 0.0), "{t:?}");
        // 0.5 s on a loaded 2-core machine; a generous bound against a runaway loop only.
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn values_are_finite_and_bounded() {
        assert!(crate::uniform(7, 10_000).iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    }
}
