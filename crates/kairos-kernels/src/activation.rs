//! Elementwise activations of the CLIP text encoders' MLPs in one vectorised pass: candle runs
//! quick GELU as three passes (scale, sigmoid, product) and the exact GELU with a scalar erf.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use crate::op::{apply1, uninit, F32Op1, Input};
use crate::vecmath;

const OP: &str = "kairos-activation";

/// An activation [`activation`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·sigmoid(1.702·x)` (OpenAI CLIP: SD1, SDXL's first encoder).
    QuickGelu,
    /// `x·Φ(x)` with the exact (erf) Φ (OpenCLIP: SD2, SDXL's second encoder).
    GeluErf,
}

struct ActivationOp(Activation);

impl F32Op1 for ActivationOp {
    const NAME: &'static str = OP;

    fn run(&self, (x, layout): Input<'_>) -> Result<(Vec<f32>, Shape)> {
        // SAFETY: the chunks below tile the output and `activate` writes each whole.
        let mut out = unsafe { uninit(x.len()) };
        let quick = self.0 == Activation::QuickGelu;
        out.par_chunks_mut(16 * 1024).zip(x.par_chunks(16 * 1024)).for_each(|(d, s)| vecmath::activate(s, d, quick));
        Ok((out, layout.shape().clone()))
    }
}

/// The straightforward candle computation.
pub fn activation_plain(xs: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        Activation::GeluErf => xs.gelu_erf(),
    }
}

/// `act` applied to every element of `xs`. f32 CPU tensors take the one-pass kernel; anything
/// else takes [`activation_plain`].
pub fn activation(xs: &Tensor, act: Activation) -> Result<Tensor> {
    if !crate::kernel_applies([xs]) {
        return activation_plain(xs, act);
    }
    apply1(&xs.contiguous()?, &ActivationOp(act))
}
