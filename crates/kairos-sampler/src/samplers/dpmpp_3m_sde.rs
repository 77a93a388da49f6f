use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

#[allow(unused_variables)]
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::AncestralOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "dpmpp_3m_sde", message: "not implemented yet".into() })
}
