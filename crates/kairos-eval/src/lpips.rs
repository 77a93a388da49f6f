//! Mirrors the `lpips` package 0.1.4 (`lpips.LPIPS(net="vgg", version="0.1")`, the defaults
//! `lpips=True`, `spatial=False`): inputs scaled by `ScalingLayer`, VGG16 `features` cut after
//! relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, each feature map unit-normalised over channels
//! (`normalize_tensor`, eps 1e-10), squared differences weighted by the 1×1 `lin{k}` heads,
//! averaged over space and summed over the five layers.
//!
//! Weights: torchvision's `vgg16-397923af.pth` (`features.{i}.weight`/`bias`) and the lpips
//! package's `weights/v0.1/vgg.pth` (`lin{k}.model.1.weight`), loaded with [`Lpips::load`].
//!
//! Differences: only the VGG trunk, no `spatial` maps, no `normalize` flag (inputs are in
//! [−1, 1], as `LPIPS.forward` expects by default).

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::error::{EvalError, Result};
use crate::inception::load_var_builder;

const VGG_HINT: &str = "download torchvision's VGG16 weights \
(https://download.pytorch.org/models/vgg16-397923af.pth)";
const LIN_HINT: &str = "use the lpips package's weights/v0.1/vgg.pth \
(https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth)";

/// Indices of VGG16's 3×3 convolutions in `features`, per LPIPS slice (each slice after the
/// first starts with a 2×2 max pool).
const SLICES: [&[usize]; 5] = [&[0, 2], &[5, 7], &[10, 12, 14], &[17, 19, 21], &[24, 26, 28]];
/// Output channels of each slice.
const CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];

/// LPIPS with the VGG16 trunk.
#[derive(Debug, Clone)]
pub struct Lpips {
    slices: Vec<Vec<Conv2d>>,
    lins: Vec<Conv2d>,
}

impl Lpips {
    /// Builds the network: `vgg` with torchvision's `features.{i}` names, `lin` with the lpips
    /// heads' `lin{k}.model.1.weight` names.
    pub fn new(vgg: VarBuilder, lin: VarBuilder) -> Result<Self> {
        let features = vgg.pp("features");
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let mut in_c = 3;
        let mut slices = Vec::new();
        for (indices, &out_c) in SLICES.iter().zip(&CHANNELS) {
            let mut convs = Vec::new();
            for &i in indices.iter() {
                convs.push(candle_nn::conv2d(in_c, out_c, 3, cfg, features.pp(i))?);
                in_c = out_c;
            }
            slices.push(convs);
        }
        let lins = CHANNELS
            .iter()
            .enumerate()
            .map(|(k, &c)| candle_nn::conv2d_no_bias(c, 1, 1, Default::default(), lin.pp(format!("lin{k}.model.1"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { slices, lins })
    }

    /// Loads torchvision's VGG16 file and the lpips heads (`.pth` or `.safetensors`).
    pub fn load(vgg_path: &Path, lin_path: &Path, device: &Device) -> Result<Self> {
        Self::new(
            load_var_builder(vgg_path, "lpips VGG16", VGG_HINT, device)?,
            load_var_builder(lin_path, "lpips linear heads", LIN_HINT, device)?,
        )
    }

    /// The five per-layer distances, each `[N]`, for images `[N, 3, H, W]` in [−1, 1].
    pub fn forward_layers(&self, in0: &Tensor, in1: &Tensor) -> Result<Vec<Tensor>> {
        if in0.dims() != in1.dims() {
            return Err(EvalError::ShapeMismatch {
                name: "lpips inputs",
                left: in0.dims().to_vec(),
                right: in1.dims().to_vec(),
            });
        }
        let f0 = self.features(&scaling_layer(in0)?)?;
        let f1 = self.features(&scaling_layer(in1)?)?;
        f0.iter()
            .zip(&f1)
            .zip(&self.lins)
            .map(|((a, b), lin)| {
                let diff = (normalize_tensor(a)? - normalize_tensor(b)?)?.sqr()?;
                Ok(lin.forward(&diff)?.mean((1, 2, 3))?) // [N, 1, h, w] → [N]
            })
            .collect()
    }

    /// The LPIPS distance `[N]` (sum of [`Lpips::forward_layers`]).
    pub fn forward(&self, in0: &Tensor, in1: &Tensor) -> Result<Tensor> {
        let layers = self.forward_layers(in0, in1)?;
        let mut val = layers[0].clone();
        for l in &layers[1..] {
            val = (val + l)?;
        }
        Ok(val)
    }

    fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.clone();
        let mut outs = Vec::with_capacity(self.slices.len());
        for (k, convs) in self.slices.iter().enumerate() {
            if k > 0 {
                h = h.max_pool2d(2)?;
            }
            for conv in convs {
                h = conv.forward(&h)?.relu()?;
            }
            outs.push(h.clone());
        }
        Ok(outs)
    }
}

/// `ScalingLayer`: `(x − shift) / scale` per channel.
fn scaling_layer(x: &Tensor) -> Result<Tensor> {
    let dev = x.device();
    let shift = Tensor::new(&[-0.030f32, -0.088, -0.188], dev)?.reshape((1, 3, 1, 1))?;
    let scale = Tensor::new(&[0.458f32, 0.448, 0.450], dev)?.reshape((1, 3, 1, 1))?;
    Ok(x.broadcast_sub(&shift)?.broadcast_div(&scale)?)
}

/// `normalize_tensor`: `x / (‖x‖₂ over channels + 1e-10)`.
fn normalize_tensor(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(x.broadcast_div(&(norm + 1e-10)?)?)
}
