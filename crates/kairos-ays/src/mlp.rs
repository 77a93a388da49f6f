//! A small MLP denoiser for 2-D data, trained with candle (AdamW) under EDM preconditioning
//! (Karras et al. 2022, Table 1): D(x, σ) = c_skip x + c_out F(c_in x, c_noise) with
//! c_skip = σ_d²/(σ²+σ_d²), c_out = σ σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4, and
//! the loss ||F - (x0 - c_skip x)/c_out||², which is EDM's λ(σ)-weighted denoising loss. The AYS
//! paper's 2-D experiments use such a learnt EDM model; σ is drawn log-uniformly over the range
//! the schedules cover, since the KLUB needs the denoiser everywhere on it.
//!
//! F is a residual MLP (SiLU) on Fourier features of both inputs: of c_noise, and of c_in x at
//! geometric frequencies (Tancik et al. 2020): near the data the denoiser snaps points to narrow
//! modes (std 0.087 on the 8x8 grid), a sharp function of x that such features make easy to fit.
//! Training warms the learning rate up, decays it by a cosine, and keeps an exponential moving
//! average of the weights (EDM's), which is what the trained network ends with.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use kairos_sampler::{DenoiseOutput, Denoiser};
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::rng::rng_for;
use crate::{AysError, Result};

/// Shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Number of hidden layers: an input projection, then `layers - 1` residual layers.
    pub layers: usize,
    /// Number of Fourier frequencies of c_noise (each gives a cos and a sin feature).
    pub frequencies: usize,
    /// Number of Fourier frequencies 2^k (k < this) of each coordinate of c_in x (each gives a
    /// cos and a sin feature per coordinate).
    pub x_frequencies: usize,
    /// σ_data of the preconditioning (the toy presets have unit variance per axis).
    pub sigma_data: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: 256, layers: 4, frequencies: 8, x_frequencies: 6, sigma_data: 1.0 }
    }
}

impl MlpConfig {
    fn input_dim(&self) -> usize {
        3 + 2 * self.frequencies + 4 * self.x_frequencies
    }
}

/// Training options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Data samples per step, each at its own σ.
    pub batch: usize,
    /// Peak learning rate: linear warmup over `warmup` steps, then cosine decay to 0.
    pub lr: f64,
    /// Steps of the learning-rate warmup.
    pub warmup: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Decay of the weights' exponential moving average (0: the last weights).
    pub ema: f64,
    /// σ is drawn log-uniformly from [sigma_min, sigma_max].
    pub sigma_min: f64,
    pub sigma_max: f64,
    /// Seed of the data, σ and noise draws.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch: 2048,
            lr: 2e-3,
            warmup: 200,
            weight_decay: 1e-4,
            ema: 0.999,
            sigma_min: 0.0292,
            sigma_max: 14.6146,
            seed: 0,
        }
    }
}

/// The MLP denoiser (f32 on the CPU). Counts its calls, like the toy's exact denoiser. Clones
/// share the weights.
#[derive(Clone)]
pub struct MlpDenoiser {
    config: MlpConfig,
    /// (weight [out, in], bias [out]) per layer, the last one the output layer.
    vars: Vec<(Var, Var)>,
    calls: usize,
}

impl MlpDenoiser {
    /// A freshly initialised network (PyTorch `nn.Linear`'s default: U(±1/√fan_in) for weights
    /// and biases, drawn from `seed`, so initialisation is reproducible).
    pub fn new(config: MlpConfig, seed: u64) -> Result<Self> {
        if config.hidden == 0 || config.layers == 0 {
            return Err(AysError::option("mlp", format!("{config:?}"), "hidden >= 1 and layers >= 1"));
        }
        if !(config.sigma_data.is_finite() && config.sigma_data > 0.0) {
            return Err(AysError::option("sigma_data", config.sigma_data, "a finite positive value"));
        }
        let mut rng = rng_for(seed, &[0x4d4c50]);
        let mut dims = vec![config.input_dim()];
        dims.extend(std::iter::repeat_n(config.hidden, config.layers));
        dims.push(2);
        let vars = dims
            .windows(2)
            .map(|w| {
                let bound = 1.0 / (w[0] as f64).sqrt();
                let mut u =
                    |n: usize| -> Vec<f32> { (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect() };
                let weight = Var::from_tensor(&Tensor::from_vec(u(w[0] * w[1]), (w[1], w[0]), &Device::Cpu)?)?;
                let bias = Var::from_tensor(&Tensor::from_vec(u(w[1]), w[1], &Device::Cpu)?)?;
                Ok((weight, bias))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, vars, calls: 0 })
    }

    /// The network's configuration.
    pub fn config(&self) -> MlpConfig {
        self.config
    }

    /// How many times [`Denoiser::denoise`] has been called.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Trains on `data`; returns the loss of each step. `on_step(step, loss)` is called after
    /// each step.
    pub fn train(
        &mut self,
        data: &mut dyn DataSource,
        opts: &TrainOptions,
        on_step: &mut dyn FnMut(usize, f64),
    ) -> Result<Vec<f64>> {
        if opts.steps == 0 || opts.batch == 0 {
            return Err(AysError::option(
                "train",
                format!("steps {} batch {}", opts.steps, opts.batch),
                "steps >= 1 and batch >= 1",
            ));
        }
        if !(0.0..1.0).contains(&opts.ema) {
            return Err(AysError::option("ema", opts.ema, "a decay in [0, 1)"));
        }
        if !(opts.sigma_min > 0.0 && opts.sigma_max > opts.sigma_min && opts.sigma_max.is_finite()) {
            return Err(AysError::option(
                "sigma range",
                format!("[{}, {}]", opts.sigma_min, opts.sigma_max),
                "0 < sigma_min < sigma_max",
            ));
        }
        let params = ParamsAdamW { lr: opts.lr, weight_decay: opts.weight_decay, ..ParamsAdamW::default() };
        let all: Vec<Var> = self.vars.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect();
        let mut adam = AdamW::new(all.clone(), params)?;
        let mut ema: Vec<Tensor> = all.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        let mut losses = Vec::with_capacity(opts.steps);
        let (lmin, lmax) = (opts.sigma_min.ln(), opts.sigma_max.ln());
        for step in 0..opts.steps {
            let mut rng = rng_for(opts.seed, &[0x747261696e, step as u64]);
            let x0 = data.sample(opts.batch, &mut rng)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let sigmas: Vec<f64> = (0..opts.batch).map(|_| (lmin + rng.uniform() * (lmax - lmin)).exp()).collect();
            let (x, target): (Vec<[f64; 2]>, Vec<f32>) = x0
                .iter()
                .zip(&sigmas)
                .map(|(p, &s)| {
                    let x = [p[0] + s * rng.normal(), p[1] + s * rng.normal()];
                    let (c_skip, c_out) = self.skip_out(s);
                    (x, [((p[0] - c_skip * x[0]) / c_out) as f32, ((p[1] - c_skip * x[1]) / c_out) as f32])
                })
                .fold((Vec::new(), Vec::new()), |(mut xs, mut ts), (x, t)| {
                    xs.push(x);
                    ts.extend(t);
                    (xs, ts)
                });
            let target = Tensor::from_vec(target, (opts.batch, 2), &Device::Cpu)?;
            let loss = (self.raw(&x, &sigmas)? - target)?.sqr()?.mean_all()?;
            let progress = step as f64 / opts.steps as f64;
            let warmup = ((step + 1) as f64 / opts.warmup.max(1) as f64).min(1.0);
            adam.set_learning_rate(opts.lr * warmup * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            adam.backward_step(&loss)?;
            // The average starts short (decay (1+t)/(10+t)) so the first weights do not linger.
            let decay = opts.ema.min((1 + step) as f64 / (10 + step) as f64);
            for (e, v) in ema.iter_mut().zip(&all) {
                *e = ((&*e * decay)? + (v.as_tensor() * (1.0 - decay))?)?;
            }
            let l = f64::from(loss.to_scalar::<f32>()?);
            losses.push(l);
            on_step(step, l);
        }
        for (e, v) in ema.iter().zip(&all) {
            v.set(e)?;
        }
        Ok(losses)
    }

    /// (c_skip, c_out) at σ.
    fn skip_out(&self, sigma: f64) -> (f64, f64) {
        let sd2 = self.config.sigma_data * self.config.sigma_data;
        (sd2 / (sigma * sigma + sd2), sigma * self.config.sigma_data / (sigma * sigma + sd2).sqrt())
    }

    /// F(c_in x, c_noise) for points `x` at per-point σ: [N, 2] f32.
    fn raw(&self, x: &[[f64; 2]], sigmas: &[f64]) -> candle_core::Result<Tensor> {
        let sd2 = self.config.sigma_data * self.config.sigma_data;
        let dim = self.config.input_dim();
        let mut feats = Vec::with_capacity(x.len() * dim);
        for (p, &s) in x.iter().zip(sigmas) {
            let c_in = 1.0 / (s * s + sd2).sqrt();
            let c_noise = s.ln() / 4.0;
            feats.extend([p[0] * c_in, p[1] * c_in, c_noise].map(|v| v as f32));
            for j in 0..self.config.frequencies {
                let w = (j + 1) as f64 * std::f64::consts::FRAC_PI_2;
                feats.extend([(w * c_noise).cos() as f32, (w * c_noise).sin() as f32]);
            }
            for k in 0..self.config.x_frequencies {
                let w = (1u64 << k) as f64;
                for v in [p[0] * c_in, p[1] * c_in] {
                    feats.extend([(w * v).cos() as f32, (w * v).sin() as f32]);
                }
            }
        }
        let feats = Tensor::from_vec(feats, (x.len(), dim), &Device::Cpu)?;
        let linear = |(w, b): &(Var, Var)| Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let (first, rest) = self.vars.split_first().expect("`new` makes at least two layers");
        let (out, residual) = rest.split_last().expect("`new` makes at least two layers");
        let mut h = linear(first).forward(&feats)?;
        for layer in residual {
            h = (&h + linear(layer).forward(&candle_nn::ops::silu(&h)?)?)?;
        }
        linear(out).forward(&candle_nn::ops::silu(&h)?)
    }

    /// Saves the weights as safetensors (keys `layers.{i}.weight` / `layers.{i}.bias`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut map = HashMap::new();
        for (i, (w, b)) in self.vars.iter().enumerate() {
            map.insert(format!("layers.{i}.weight"), w.as_tensor().clone());
            map.insert(format!("layers.{i}.bias"), b.as_tensor().clone());
        }
        Ok(candle_core::safetensors::save(&map, path.as_ref())?)
    }

    /// Loads weights saved by [`MlpDenoiser::save`] for a network of shape `config`.
    pub fn load(config: MlpConfig, path: impl AsRef<Path>) -> Result<Self> {
        let mut net = Self::new(config, 0)?;
        let map = candle_core::safetensors::load(path.as_ref(), &Device::Cpu)?;
        for (i, (w, b)) in net.vars.iter_mut().enumerate() {
            for (key, var) in [(format!("layers.{i}.weight"), w), (format!("layers.{i}.bias"), b)] {
                let t = map.get(&key).ok_or_else(|| {
                    AysError::option(
                        "weights",
                        path.as_ref().display(),
                        format!("a file with key `{key}` for {config:?}"),
                    )
                })?;
                if t.shape() != var.shape() {
                    return Err(AysError::option(
                        "weights",
                        format!("{key} {:?}", t.shape()),
                        format!("shape {:?} for {config:?}", var.shape()),
                    ));
                }
                var.set(&t.to_dtype(DType::F32)?)?;
            }
        }
        Ok(net)
    }
}

impl Denoiser for MlpDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> kairos_sampler::Result<DenoiseOutput> {
        self.calls += 1;
        let (n, d) = x.dims2()?;
        if d != 2 {
            return Err(candle_core::Error::UnexpectedShape {
                msg: "the MLP denoiser takes [N, 2] points".into(),
                expected: (n, 2).into(),
                got: x.shape().clone(),
            }
            .into());
        }
        let points: Vec<[f64; 2]> =
            x.to_dtype(DType::F64)?.to_vec2::<f64>()?.into_iter().map(|r| [r[0], r[1]]).collect();
        let f = self.raw(&points, &vec![sigma; n])?;
        let (c_skip, c_out) = self.skip_out(sigma);
        let f = f.to_dtype(x.dtype())?.to_device(x.device())?;
        let out = ((x * c_skip)? + (f * c_out)?)?;
        Ok(DenoiseOutput::new(out))
    }
}
