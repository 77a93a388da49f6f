use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

#[allow(unused_variables)]
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], v: super::UniPcVariant) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "uni_pc", message: "not implemented yet".into() })
}
