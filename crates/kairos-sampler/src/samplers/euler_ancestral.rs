use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

#[allow(unused_variables)]
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::AncestralOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "euler_ancestral", message: "not implemented yet".into() })
}

#[allow(unused_variables)]
pub(super) fn sample_cfg_pp(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::AncestralOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "euler_ancestral", message: "not implemented yet".into() })
}
