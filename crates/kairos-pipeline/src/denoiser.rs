//! The network as a k-diffusion denoiser, and classifier-free guidance.
//!
//! [`ModelDenoiser`] is k-diffusion's `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` (ComfyUI's
//! `BaseModel._apply_model`): scale the VE-scale state by c_in, feed the network the timestep of
//! σ, combine its output into x0 with c_skip and c_out. [`CfgDenoiser`] batches the unconditional
//! and conditional branches into one network call and guides on the network's prediction, as
//! diffusers' `StableDiffusionPipeline` does, before turning it into x0.

use candle_core::Tensor;
use kairos_sampler::{DenoiseOutput, Denoiser};
use kairos_schedule::{ModelSchedule, NoiseSchedule, Prediction};

/// What conditions the network, one row per sample.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Cross-attention context `[N, S, D]`.
    pub context: Tensor,
    /// SDXL's `added_cond_kwargs`: pooled text `[N, P]` and time ids `[N, k]`.
    pub added: Option<AddedConditioning>,
}

/// SDXL's `text_time` inputs.
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// The pooled text embedding `[N, P]`.
    pub text_embeds: Tensor,
    /// Size/crop (and, for the refiner, aesthetic-score) ids `[N, k]`, float32.
    pub time_ids: Tensor,
}

impl Conditioning {
    /// A context alone (SD1/SD2).
    pub fn context(context: Tensor) -> Self {
        Self { context, added: None }
    }

    /// Every tensor mapped by `f` (all have the batch as their first dimension).
    pub fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Self> {
        let added = match &self.added {
            Some(a) => Some(AddedConditioning { text_embeds: f(&a.text_embeds)?, time_ids: f(&a.time_ids)? }),
            None => None,
        };
        Ok(Self { context: f(&self.context)?, added })
    }

    /// `[a; b]` along the batch.
    pub fn cat(a: &Self, b: &Self) -> candle_core::Result<Self> {
        let added = match (&a.added, &b.added) {
            (Some(x), Some(y)) => Some(AddedConditioning {
                text_embeds: Tensor::cat(&[&x.text_embeds, &y.text_embeds], 0)?,
                time_ids: Tensor::cat(&[&x.time_ids, &y.time_ids], 0)?,
            }),
            _ => None,
        };
        Ok(Self { context: Tensor::cat(&[&a.context, &b.context], 0)?, added })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> candle_core::Result<usize> {
        self.context.dim(0)
    }
}

/// The denoising network (`UNet2DConditionModel`): its raw prediction (ε, v, ...) for a
/// c_in-scaled `sample` `[N, C, h, w]` at `timestep`, conditioned on `cond` (N rows) and, for
/// LCM-distilled networks, the guidance embedding `timestep_cond` `[N, time_cond_proj_dim]`.
pub trait DiffusionModel {
    /// One forward pass.
    fn predict(
        &self,
        sample: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        timestep_cond: Option<&Tensor>,
    ) -> candle_core::Result<Tensor>;

    /// The width of the guidance embedding an LCM-distilled network takes
    /// (`time_cond_proj_dim`); `None` for other networks.
    fn time_cond_proj_dim(&self) -> Option<usize> {
        None
    }
}

/// A [`DiffusionModel`] with its training noise schedule and prediction type.
///
/// Whether the network gets fractional timesteps (k-diffusion, A1111, diffusers' Euler) or the
/// nearest integer one (ComfyUI, Forge, diffusers' DPM-Solver with Karras sigmas) is the
/// schedule's `quantize` flag ([`kairos_schedule::DiscreteSchedule::with_quantize`]).
pub struct ModelDenoiser<'a> {
    model: &'a dyn DiffusionModel,
    schedule: ModelSchedule,
    prediction: Prediction,
    sigma_data: f64,
    timestep_cond: Option<Tensor>,
}

impl<'a> ModelDenoiser<'a> {
    /// Wraps `model`; `sigma_data` is 1 for every Stable Diffusion family.
    pub fn new(
        model: &'a dyn DiffusionModel,
        schedule: ModelSchedule,
        prediction: Prediction,
        sigma_data: f64,
    ) -> Self {
        Self { model, schedule, prediction, sigma_data, timestep_cond: None }
    }

    /// Feeds the network `timestep_cond` `[N, time_cond_proj_dim]` on every call (the guidance
    /// embedding of LCM-distilled UNets; N is the batch of each call).
    pub fn with_timestep_cond(mut self, timestep_cond: Tensor) -> Self {
        self.timestep_cond = Some(timestep_cond);
        self
    }

    /// The network's raw prediction for the VE-scale state `x` at noise level `sigma`.
    pub fn model_output(&self, x: &Tensor, sigma: f64, cond: &Conditioning) -> candle_core::Result<Tensor> {
        let c_in = self.prediction.scalings(sigma, self.sigma_data).c_in;
        let t = self.schedule.sigma_to_t(sigma);
        self.model.predict(&(x * c_in)?, t, cond, self.timestep_cond.as_ref())
    }

    /// x0 from the state and a (possibly guided) prediction: c_skip·x + c_out·output.
    pub fn to_denoised(&self, x: &Tensor, sigma: f64, output: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.prediction.scalings(sigma, self.sigma_data);
        // c_skip is exactly 1 for ε-prediction: skip the multiply so x passes through unrounded.
        let skip = if s.c_skip == 1.0 { x.clone() } else { (x * s.c_skip)? };
        skip + (output * s.c_out)?
    }

    /// The training noise schedule.
    pub fn schedule(&self) -> &ModelSchedule {
        &self.schedule
    }
}

/// Classifier-free guidance as a [`Denoiser`]: one network call on `[uncond; cond]` (diffusers'
/// batch order), guided prediction uncond + scale·(cond − uncond), both turned into x0.
/// Embeddings of batch 1 condition a state of any batch (the AYS optimizer's Monte Carlo batches).
///
/// The unconditional branch is skipped at scale 1 (a plain conditional run, ComfyUI's
/// optimisation) unless the sampler reads it (CFG++: `keep_uncond`). Unlike diffusers, which
/// disables guidance for any scale ≤ 1, scales below 1 are applied as written (A1111, ComfyUI).
pub struct CfgDenoiser<'a> {
    inner: ModelDenoiser<'a>,
    /// `[uncond; cond]` along the batch, or `cond` alone when the unconditional branch is skipped.
    cond: Conditioning,
    guided: bool,
    scale: f64,
}

impl<'a> CfgDenoiser<'a> {
    /// Guidance with `cond` and `uncond` of B rows each (same shapes; see
    /// [`crate::conditioning::encode_pair`]) at `scale`.
    pub fn new(
        inner: ModelDenoiser<'a>,
        cond: &Conditioning,
        uncond: &Conditioning,
        scale: f64,
        keep_uncond: bool,
    ) -> candle_core::Result<Self> {
        let guided = scale != 1.0 || keep_uncond;
        let cond = if guided { Conditioning::cat(uncond, cond)? } else { cond.clone() };
        Ok(Self { inner, cond, guided, scale })
    }

    /// Whether each network call carries the unconditional branch.
    pub fn is_guided(&self) -> bool {
        self.guided
    }
}

impl CfgDenoiser<'_> {
    /// The conditioning for a state of `batch` items: as given, or each branch's single row
    /// repeated (`[u; c]` → `[u×batch; c×batch]`).
    fn cond_for(&self, batch: usize) -> candle_core::Result<Conditioning> {
        let rows = self.cond.batch()?;
        let branches = if self.guided { 2 } else { 1 };
        if rows == branches * batch || rows != branches {
            return Ok(self.cond.clone());
        }
        self.cond.map(|t| {
            let mut repeats = vec![1; t.rank() + 1];
            repeats[1] = batch;
            let mut dims = t.dims().to_vec();
            dims[0] *= batch;
            t.unsqueeze(1)?.repeat(repeats)?.reshape(dims)
        })
    }
}

impl Denoiser for CfgDenoiser<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        let batch = x.dim(0)?;
        let cond = self.cond_for(batch)?;
        if !self.guided {
            let out = self.inner.model_output(x, sigma, &cond)?;
            return Ok(DenoiseOutput::new(self.inner.to_denoised(x, sigma, &out)?));
        }
        let out = self.inner.model_output(&Tensor::cat(&[x, x], 0)?, sigma, &cond)?;
        let uncond = out.narrow(0, 0, batch)?;
        let cond = out.narrow(0, batch, batch)?;
        // diffusers: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).
        let guided = (&uncond + ((cond - &uncond)? * self.scale)?)?;
        Ok(DenoiseOutput {
            denoised: self.inner.to_denoised(x, sigma, &guided)?,
            uncond_denoised: Some(self.inner.to_denoised(x, sigma, &uncond)?),
        })
    }

    fn model_schedule(&self) -> Option<&dyn NoiseSchedule> {
        Some(self.inner.schedule())
    }
}

/// Repeats one row (`[1, …]`) to the batch size (`[B, …]`).
pub(crate) fn repeat_batch(t: &Tensor, batch: usize) -> candle_core::Result<Tensor> {
    let mut repeats = vec![1; t.rank()];
    repeats[0] = batch;
    t.repeat(repeats)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use kairos_schedule::{DiscreteSchedule, TablePrecision};
    use std::cell::RefCell;

    /// Predicts ε = context mean + 0.1·t/1000 per item; records what it was fed.
    struct Fake {
        calls: RefCell<Vec<(Vec<usize>, f64)>>,
    }

    impl DiffusionModel for Fake {
        fn predict(
            &self,
            sample: &Tensor,
            timestep: f64,
            cond: &Conditioning,
            _: Option<&Tensor>,
        ) -> candle_core::Result<Tensor> {
            self.calls.borrow_mut().push((sample.dims().to_vec(), timestep));
            let per_item = cond.context.mean_keepdim(2)?.mean_keepdim(1)?.unsqueeze(3)?; // [N,1,1,1]
            sample.zeros_like()?.broadcast_add(&per_item)? + 0.1 * timestep / 1000.0
        }
    }

    fn schedule(quantize: bool) -> ModelSchedule {
        ModelSchedule::Discrete(DiscreteSchedule::sd(TablePrecision::F64).with_quantize(quantize))
    }

    /// Batch-1 embeddings condition every item of a larger state, in diffusers' `[uncond; cond]`
    /// order, guided or not.
    #[test]
    fn single_embeddings_condition_any_batch() {
        let dev = Device::Cpu;
        let fake = Fake { calls: RefCell::new(vec![]) };
        let x = Tensor::zeros((3, 1, 1, 1), candle_core::DType::F32, &dev).unwrap();
        let cond = Conditioning::context(Tensor::full(1.0f32, (1, 2, 4), &dev).unwrap());
        let uncond = Conditioning::context(Tensor::full(-1.0f32, (1, 2, 4), &dev).unwrap());
        for (scale, want_batch) in [(7.5, 6), (1.0, 3)] {
            let inner = ModelDenoiser::new(&fake, schedule(false), Prediction::Epsilon, 1.0);
            let mut cfg = CfgDenoiser::new(inner, &cond, &uncond, scale, false).unwrap();
            let out = cfg.denoise(&x, 2.0).unwrap();
            assert_eq!(fake.calls.borrow().last().unwrap().0, vec![want_batch, 1, 1, 1]);
            // x = 0: denoised = −σ·ε, ε = context mean + 0.1·t/1000, the same for every item.
            let got = out.denoised.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
        }
    }

    #[test]
    fn cfg_guides_the_prediction_and_reports_uncond() {
        let dev = Device::Cpu;
        let fake = Fake { calls: RefCell::new(vec![]) };
        let x = Tensor::new(&[2.0f32, -1.0], &dev).unwrap().reshape((2, 1, 1, 1)).unwrap();
        let cond = Conditioning::context(Tensor::full(1.0f32, (2, 3, 4), &dev).unwrap());
        let uncond = Conditioning::context(Tensor::full(-1.0f32, (2, 3, 4), &dev).unwrap());
        let inner = ModelDenoiser::new(&fake, schedule(true), Prediction::Epsilon, 1.0);
        let mut cfg = CfgDenoiser::new(inner, &cond, &uncond, 7.5, false).unwrap();
        let sigma = 3.0;
        let out = cfg.denoise(&x, sigma).unwrap();
        let calls = fake.calls.borrow();
        assert_eq!(calls.len(), 1, "one batched call");
        assert_eq!(calls[0].0, vec![4, 1, 1, 1]);
        let t = calls[0].1;
        assert_eq!(t, t.round(), "quantized timestep");
        let e = 0.1 * t / 1000.0;
        let (ec, eu) = (1.0 + e, -1.0 + e);
        let guided = eu + 7.5 * (ec - eu);
        let got = out.denoised.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let un = out.uncond_denoised.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, xi) in [2.0, -1.0].iter().enumerate() {
            // f32 arithmetic on values of order 10: 1e-5 absolute.
            assert!((got[i] as f64 - (xi - sigma * guided)).abs() < 1e-5);
            assert!((un[i] as f64 - (xi - sigma * eu)).abs() < 1e-5);
        }
    }

    #[test]
    fn scale_one_skips_uncond_unless_kept() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let c = Conditioning::context(Tensor::ones((1, 2, 3), candle_core::DType::F32, &dev).unwrap());
        for (keep, batch) in [(false, 1), (true, 2)] {
            let fake = Fake { calls: RefCell::new(vec![]) };
            let inner = ModelDenoiser::new(&fake, schedule(false), Prediction::Epsilon, 1.0);
            let mut cfg = CfgDenoiser::new(inner, &c, &c, 1.0, keep).unwrap();
            let out = cfg.denoise(&x, 1.0).unwrap();
            assert_eq!(out.uncond_denoised.is_some(), keep);
            assert_eq!(fake.calls.borrow()[0].0[0], batch);
        }
    }

    #[test]
    fn v_prediction_and_fractional_timesteps() {
        let dev = Device::Cpu;
        let fake = Fake { calls: RefCell::new(vec![]) };
        let d = ModelDenoiser::new(&fake, schedule(false), Prediction::VPrediction, 1.0);
        let x = Tensor::full(2.0f32, (1, 1, 1, 1), &dev).unwrap();
        let c = Conditioning::context(Tensor::zeros((1, 1, 1), candle_core::DType::F32, &dev).unwrap());
        let sigma = 5.0;
        let out = d.model_output(&x, sigma, &c).unwrap();
        let t = fake.calls.borrow()[0].1;
        assert!(t.fract() != 0.0, "fractional timestep {t}");
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let den = d.to_denoised(&x, sigma, &out).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let s2 = sigma * sigma + 1.0;
        // k-diffusion VDenoiser: c_skip = 1/(σ²+1), c_out = −σ/sqrt(σ²+1); f32: 1e-5.
        assert!((den - (2.0 / s2 - sigma / s2.sqrt() * v)).abs() < 1e-5);
    }
}
