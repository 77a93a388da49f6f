use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

#[allow(unused_variables)]
pub(super) fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64], o: &super::ErSdeOptions) -> Result<Tensor> {
    Err(SamplerError::InvalidOption { sampler: "er_sde", message: "not implemented yet".into() })
}
