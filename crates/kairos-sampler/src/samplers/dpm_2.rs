use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

#[allow(unused_variables)]
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::ChurnOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "dpm_2", message: "not implemented yet".into() })
}

#[allow(unused_variables)]
pub(super) fn sample_ancestral(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::AncestralOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "dpm_2", message: "not implemented yet".into() })
}
