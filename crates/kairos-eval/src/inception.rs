//! Mirrors pytorch-fid 0.3.0 `inception.py`: `InceptionV3` with `use_fid_inception=True` and
//! output block 3 (the 2048-d final average pool), i.e. torchvision's `Inception3` stem and
//! `InceptionB`/`InceptionD` blocks with pytorch-fid's `FIDInceptionA`, `FIDInceptionC`
//! (average pools without padded zeros) and `FIDInceptionE_1`/`FIDInceptionE_2` (the last one
//! max-pools its pool branch), as ported from TensorFlow's FID graph.
//!
//! Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torchvision key names,
//! `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …), loaded with
//! [`FidInceptionV3::load`].
//!
//! Differences: only output block 3; no `requires_grad`; the classifier `fc` is not built.

use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, VarBuilder};

use crate::error::{EvalError, Result};

/// Where the FID weights come from, for error messages.
const WEIGHTS_HINT: &str = "download pytorch-fid's FID Inception weights from \
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// `BasicConv2d`: bias-free conv, BatchNorm (eps 0.001), ReLU.
#[derive(Debug, Clone)]
struct BasicConv2d {
    conv: Conv2d,
    /// Zero padding (rows, columns) applied before `conv` when it is not symmetric.
    pad: (usize, usize),
    bn: BatchNorm,
}

impl BasicConv2d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: (usize, usize),
    ) -> Result<Self> {
        let weight = vb.pp("conv").get((out_channels, in_channels, kernel.0, kernel.1), "weight")?;
        let symmetric = padding.0 == padding.1;
        let cfg = Conv2dConfig { padding: if symmetric { padding.0 } else { 0 }, stride, ..Default::default() };
        let bn_cfg = BatchNormConfig { eps: 1e-3, remove_mean: true, affine: true, momentum: 0.1 };
        Ok(Self {
            conv: Conv2d::new(weight, None, cfg),
            pad: if symmetric { (0, 0) } else { padding },
            bn: candle_nn::batch_norm(out_channels, bn_cfg, vb.pp("bn"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.pad_with_zeros(2, self.pad.0, self.pad.0)?.pad_with_zeros(3, self.pad.1, self.pad.1)?;
        let x = self.conv.forward(&x)?;
        Ok(self.bn.forward_t(&x, false)?.relu()?)
    }
}

fn bc(vb: &VarBuilder, name: &str, i: usize, o: usize, k: (usize, usize), p: (usize, usize)) -> Result<BasicConv2d> {
    BasicConv2d::new(vb.pp(name), i, o, k, 1, p)
}

/// 3×3 average pool, stride 1, padding 1, `count_include_pad=False`: the padded sum divided by
/// the number of real pixels in each window.
fn avg_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let summed = (x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    let span = |i: usize, n: usize| (i.min(1) + 1 + (n - 1 - i).min(1)) as f32;
    let count: Vec<f32> = (0..h).flat_map(|i| (0..w).map(move |j| span(i, h) * span(j, w))).collect();
    let count = Tensor::from_vec(count, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(summed.broadcast_div(&count)?)
}

/// 3×3 max pool, stride 1, padding 1 (−∞ padding: replicating the edge gives the same maxima,
/// since the replicated pixel is inside the window already).
fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    Ok(x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?.max_pool2d_with_stride(3, 1)?)
}

/// `FIDInceptionA`.
#[derive(Debug, Clone)]
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(vb: VarBuilder, c: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            branch1x1: bc(&vb, "branch1x1", c, 64, (1, 1), (0, 0))?,
            branch5x5_1: bc(&vb, "branch5x5_1", c, 48, (1, 1), (0, 0))?,
            branch5x5_2: bc(&vb, "branch5x5_2", 48, 64, (5, 5), (2, 2))?,
            branch3x3dbl_1: bc(&vb, "branch3x3dbl_1", c, 64, (1, 1), (0, 0))?,
            branch3x3dbl_2: bc(&vb, "branch3x3dbl_2", 64, 96, (3, 3), (1, 1))?,
            branch3x3dbl_3: bc(&vb, "branch3x3dbl_3", 96, 96, (3, 3), (1, 1))?,
            branch_pool: bc(&vb, "branch_pool", c, pool_features, (1, 1), (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x)?)?;
        let b3 = self.branch3x3dbl_1.forward(x)?;
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&b3)?)?;
        let bp = self.branch_pool.forward(&avg_pool_3x3_same(x)?)?;
        Ok(Tensor::cat(&[b1, b5, b3, bp], 1)?)
    }
}

/// torchvision's `InceptionB` (grid reduction 35 → 17).
#[derive(Debug, Clone)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            branch3x3: BasicConv2d::new(vb.pp("branch3x3"), c, 384, (3, 3), 2, (0, 0))?,
            branch3x3dbl_1: bc(&vb, "branch3x3dbl_1", c, 64, (1, 1), (0, 0))?,
            branch3x3dbl_2: bc(&vb, "branch3x3dbl_2", 64, 96, (3, 3), (1, 1))?,
            branch3x3dbl_3: BasicConv2d::new(vb.pp("branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.branch3x3.forward(x)?;
        let bd = self.branch3x3dbl_1.forward(x)?;
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&bd)?)?;
        let bp = x.max_pool2d_with_stride(3, 2)?;
        Ok(Tensor::cat(&[b3, bd, bp], 1)?)
    }
}

/// `FIDInceptionC` (factorised 7×7 convolutions).
#[derive(Debug, Clone)]
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(vb: VarBuilder, c: usize, c7: usize) -> Result<Self> {
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
        Ok(Self {
            branch1x1: bc(&vb, "branch1x1", c, 192, (1, 1), (0, 0))?,
            branch7x7: [
                bc(&vb, "branch7x7_1", c, c7, (1, 1), (0, 0))?,
                bc(&vb, "branch7x7_2", c7, c7, row.0, row.1)?,
                bc(&vb, "branch7x7_3", c7, 192, col.0, col.1)?,
            ],
            branch7x7dbl: [
                bc(&vb, "branch7x7dbl_1", c, c7, (1, 1), (0, 0))?,
                bc(&vb, "branch7x7dbl_2", c7, c7, col.0, col.1)?,
                bc(&vb, "branch7x7dbl_3", c7, c7, row.0, row.1)?,
                bc(&vb, "branch7x7dbl_4", c7, c7, col.0, col.1)?,
                bc(&vb, "branch7x7dbl_5", c7, 192, row.0, row.1)?,
            ],
            branch_pool: bc(&vb, "branch_pool", c, 192, (1, 1), (0, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let chain =
            |convs: &[BasicConv2d]| -> Result<Tensor> { convs.iter().try_fold(x.clone(), |h, conv| conv.forward(&h)) };
        let b1 = self.branch1x1.forward(x)?;
        let b7 = chain(&self.branch7x7)?;
        let bd = chain(&self.branch7x7dbl)?;
        let bp = self.branch_pool.forward(&avg_pool_3x3_same(x)?)?;
        Ok(Tensor::cat(&[b1, b7, bd, bp], 1)?)
    }
}

/// torchvision's `InceptionD` (grid reduction 17 → 8).
#[derive(Debug, Clone)]
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            branch3x3: [
                bc(&vb, "branch3x3_1", c, 192, (1, 1), (0, 0))?,
                BasicConv2d::new(vb.pp("branch3x3_2"), 192, 320, (3, 3), 2, (0, 0))?,
            ],
            branch7x7x3: [
                bc(&vb, "branch7x7x3_1", c, 192, (1, 1), (0, 0))?,
                bc(&vb, "branch7x7x3_2", 192, 192, (1, 7), (0, 3))?,
                bc(&vb, "branch7x7x3_3", 192, 192, (7, 1), (3, 0))?,
                BasicConv2d::new(vb.pp("branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let chain =
            |convs: &[BasicConv2d]| -> Result<Tensor> { convs.iter().try_fold(x.clone(), |h, conv| conv.forward(&h)) };
        let b3 = chain(&self.branch3x3)?;
        let b7 = chain(&self.branch7x7x3)?;
        let bp = x.max_pool2d_with_stride(3, 2)?;
        Ok(Tensor::cat(&[b3, b7, bp], 1)?)
    }
}

/// `FIDInceptionE_1` (average-pool branch without padded zeros) and `FIDInceptionE_2`
/// (max-pool branch).
#[derive(Debug, Clone)]
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(vb: VarBuilder, c: usize, max_pool: bool) -> Result<Self> {
        Ok(Self {
            branch1x1: bc(&vb, "branch1x1", c, 320, (1, 1), (0, 0))?,
            branch3x3_1: bc(&vb, "branch3x3_1", c, 384, (1, 1), (0, 0))?,
            branch3x3_2a: bc(&vb, "branch3x3_2a", 384, 384, (1, 3), (0, 1))?,
            branch3x3_2b: bc(&vb, "branch3x3_2b", 384, 384, (3, 1), (1, 0))?,
            branch3x3dbl_1: bc(&vb, "branch3x3dbl_1", c, 448, (1, 1), (0, 0))?,
            branch3x3dbl_2: bc(&vb, "branch3x3dbl_2", 448, 384, (3, 3), (1, 1))?,
            branch3x3dbl_3a: bc(&vb, "branch3x3dbl_3a", 384, 384, (1, 3), (0, 1))?,
            branch3x3dbl_3b: bc(&vb, "branch3x3dbl_3b", 384, 384, (3, 1), (1, 0))?,
            branch_pool: bc(&vb, "branch_pool", c, 192, (1, 1), (0, 0))?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b3 = self.branch3x3_1.forward(x)?;
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&b3)?, self.branch3x3_2b.forward(&b3)?], 1)?;
        let bd = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)?)?;
        let bd = Tensor::cat(&[self.branch3x3dbl_3a.forward(&bd)?, self.branch3x3dbl_3b.forward(&bd)?], 1)?;
        let pooled = if self.max_pool { max_pool_3x3_same(x)? } else { avg_pool_3x3_same(x)? };
        let bp = self.branch_pool.forward(&pooled)?;
        Ok(Tensor::cat(&[b1, b3, bd, bp], 1)?)
    }
}

/// pytorch-fid's FID Inception-v3, returning the 2048-d pool3 features used for FID.
#[derive(Debug, Clone)]
pub struct FidInceptionV3 {
    stem: [BasicConv2d; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7: [InceptionE; 2],
}

impl FidInceptionV3 {
    /// Builds the network from `vb` with torchvision's key names.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            stem: [
                BasicConv2d::new(vb.pp("Conv2d_1a_3x3"), 3, 32, (3, 3), 2, (0, 0))?,
                bc(&vb, "Conv2d_2a_3x3", 32, 32, (3, 3), (0, 0))?,
                bc(&vb, "Conv2d_2b_3x3", 32, 64, (3, 3), (1, 1))?,
                bc(&vb, "Conv2d_3b_1x1", 64, 80, (1, 1), (0, 0))?,
                bc(&vb, "Conv2d_4a_3x3", 80, 192, (3, 3), (0, 0))?,
            ],
            mixed_5: [
                InceptionA::new(vb.pp("Mixed_5b"), 192, 32)?,
                InceptionA::new(vb.pp("Mixed_5c"), 256, 64)?,
                InceptionA::new(vb.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed_6a: InceptionB::new(vb.pp("Mixed_6a"), 288)?,
            mixed_6: [
                InceptionC::new(vb.pp("Mixed_6b"), 768, 128)?,
                InceptionC::new(vb.pp("Mixed_6c"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6d"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed_7a: InceptionD::new(vb.pp("Mixed_7a"), 768)?,
            mixed_7: [
                InceptionE::new(vb.pp("Mixed_7b"), 1280, false)?,
                InceptionE::new(vb.pp("Mixed_7c"), 2048, true)?,
            ],
        })
    }

    /// Loads `pt_inception-2015-12-05-6726825d.pth` (or a safetensors copy with the same keys).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::new(load_var_builder(path, "inception", WEIGHTS_HINT, device)?)
    }

    /// Images `[N, 3, H, W]` in [0, 1] → features `[N, 2048]`: bilinear resize to 299×299
    /// (`align_corners=False`), scale to [−1, 1], the network, global average pool.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let x = images.upsample_bilinear2d(299, 299, false)?;
        let x = x.affine(2.0, -1.0)?;
        let x = self.stem[0].forward(&x)?;
        let x = self.stem[1].forward(&x)?;
        let x = self.stem[2].forward(&x)?;
        let x = x.max_pool2d_with_stride(3, 2)?;
        let x = self.stem[3].forward(&x)?;
        let x = self.stem[4].forward(&x)?;
        let mut x = x.max_pool2d_with_stride(3, 2)?;
        for block in &self.mixed_5 {
            x = block.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        for block in &self.mixed_6 {
            x = block.forward(&x)?;
        }
        x = self.mixed_7a.forward(&x)?;
        for block in &self.mixed_7 {
            x = block.forward(&x)?;
        }
        Ok(x.mean((2, 3))?)
    }
}

/// A `VarBuilder` over a `.pth`/`.pt` pickle or a `.safetensors` file, in f32.
pub(crate) fn load_var_builder(
    path: &Path,
    network: &'static str,
    hint: &'static str,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    if !path.is_file() {
        return Err(EvalError::WeightsNotFound { network, path: path.to_path_buf(), hint });
    }
    let bad = |e: candle_core::Error| EvalError::BadWeights { path: path.to_path_buf(), reason: e.to_string() };
    let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(path, &Device::Cpu).map_err(bad)?
    } else {
        candle_core::pickle::read_all(path).map_err(bad)?.into_iter().collect()
    };
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}
