//! Training noise schedules: discrete beta schedules (betas → alphas_cumprod → sigmas) with
//! k-diffusion's log-sigma interpolation, and EDM's continuous sigmas.

use crate::math::{torch_linspace_f32, torch_linspace_f64};
use crate::{NoiseSchedule, ScheduleError};

/// A discrete-time beta schedule, named as diffusers' `beta_schedule`.
///
/// Note ComfyUI/CompVis call [`BetaSchedule::ScaledLinear`] "linear" and diffusers'
/// [`BetaSchedule::Linear`] "sqrt_linear".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaSchedule {
    /// `linspace(beta_start.sqrt(), beta_end.sqrt(), n)²` (SD1, SD2, SDXL: 0.00085 → 0.012).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// `linspace(beta_start, beta_end, n)` (DDPM: 0.0001 → 0.02).
    Linear { beta_start: f64, beta_end: f64 },
    /// diffusers' `betas_for_alpha_bar` with the cosine alpha-bar (s = 0.008) and max_beta 0.999.
    SquaredcosCapV2,
}

impl BetaSchedule {
    /// Stable Diffusion's betas (SD1, SD2, SDXL): scaled_linear 0.00085 → 0.012.
    pub const SD: Self = Self::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 };

    /// The diffusers names of the beta schedules.
    pub const NAMES: [&'static str; 3] = ["scaled_linear", "linear", "squaredcos_cap_v2"];

    /// Parses a diffusers `beta_schedule` name; `beta_start`/`beta_end` are used by the two linear
    /// schedules (diffusers' defaults are 0.0001 and 0.02).
    pub fn from_name(name: &str, beta_start: f64, beta_end: f64) -> Result<Self, ScheduleError> {
        match name.to_ascii_lowercase().as_str() {
            "scaled_linear" => Ok(Self::ScaledLinear { beta_start, beta_end }),
            "linear" => Ok(Self::Linear { beta_start, beta_end }),
            "squaredcos_cap_v2" => Ok(Self::SquaredcosCapV2),
            _ => Err(ScheduleError::UnknownName {
                what: "beta schedule",
                name: name.to_string(),
                accepted: Self::NAMES.join(", "),
            }),
        }
    }

    /// The betas in exact f64 (torch float64 arithmetic, as ComfyUI's `make_beta_schedule`).
    pub fn betas(&self, num_train_timesteps: usize) -> Vec<f64> {
        match *self {
            Self::ScaledLinear { beta_start, beta_end } => {
                torch_linspace_f64(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
                    .iter()
                    .map(|b| b * b)
                    .collect()
            }
            Self::Linear { beta_start, beta_end } => torch_linspace_f64(beta_start, beta_end, num_train_timesteps),
            Self::SquaredcosCapV2 => cosine_betas(num_train_timesteps),
        }
    }

    /// The betas as diffusers builds them: torch float32 (`torch.linspace(..., dtype=float32)`,
    /// squared in f32), or the f64 cosine betas rounded to f32. Values are f32 widened to f64.
    pub fn betas_f32(&self, num_train_timesteps: usize) -> Vec<f64> {
        match *self {
            Self::ScaledLinear { beta_start, beta_end } => {
                torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
                    .iter()
                    .map(|&b| {
                        let b = b as f32;
                        f64::from(b * b)
                    })
                    .collect()
            }
            Self::Linear { beta_start, beta_end } => torch_linspace_f32(beta_start, beta_end, num_train_timesteps),
            Self::SquaredcosCapV2 => cosine_betas(num_train_timesteps).iter().map(|&b| f64::from(b as f32)).collect(),
        }
    }
}

/// diffusers' `betas_for_alpha_bar(n, max_beta=0.999, alpha_transform_type="cosine")`, in f64.
fn cosine_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// How the sigma table is rounded. The three matter for seed-level parity with each tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TablePrecision {
    /// Everything in f64 (k-diffusion run in float64). The most accurate.
    #[default]
    F64,
    /// diffusers: float32 betas, float32 `cumprod` (torch accumulates in f64 and rounds each
    /// output), `((1 - a) / a) ** 0.5` in float32; log-sigmas are `ln` of the f32 sigmas, in f32.
    DiffusersF32,
    /// ComfyUI (`ModelSamplingDiscrete`): computed in f64, then `sigmas.float()` and
    /// `sigmas.log().float()` (the log of the f64 sigma, rounded to f32).
    ComfyF32,
}

/// A discrete training schedule in sigma space with k-diffusion's `DiscreteSchedule` mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteSchedule {
    alphas_cumprod: Vec<f64>,
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
    quantize: bool,
}

impl DiscreteSchedule {
    /// Builds the table of `num_train_timesteps` sigmas (≥ 2) for `betas`, rounded as `precision`
    /// says. `sigma_to_t` is fractional (k-diffusion's default); see [`Self::with_quantize`].
    pub fn new(
        betas: BetaSchedule,
        num_train_timesteps: usize,
        precision: TablePrecision,
    ) -> Result<Self, ScheduleError> {
        if num_train_timesteps < 2 {
            return Err(ScheduleError::InvalidOption {
                schedule: "discrete",
                message: format!("num_train_timesteps must be at least 2, got {num_train_timesteps}"),
            });
        }
        Ok(Self::build(betas, num_train_timesteps, precision))
    }

    /// A schedule over a given table of training sigmas (ascending, at least 2, finite and
    /// positive), e.g. one recorded from a reference implementation; log-sigmas in f64.
    pub fn from_sigmas(sigmas: Vec<f64>) -> Result<Self, ScheduleError> {
        if sigmas.len() < 2
            || sigmas.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || sigmas.windows(2).any(|w| w[1] <= w[0])
        {
            return Err(ScheduleError::InvalidOption {
                schedule: "discrete",
                message: "the training sigma table must hold at least 2 finite, positive, increasing values".into(),
            });
        }
        let alphas_cumprod = sigmas.iter().map(|s| 1.0 / (1.0 + s * s)).collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Ok(Self { alphas_cumprod, sigmas, log_sigmas, quantize: false })
    }

    /// Stable Diffusion's table (SD1, SD2, SDXL): scaled_linear 0.00085 → 0.012, 1000 steps.
    pub fn sd(precision: TablePrecision) -> Self {
        Self::build(BetaSchedule::SD, 1000, precision)
    }

    /// The table for `num_train_timesteps` >= 2 (checked by the callers).
    fn build(betas: BetaSchedule, num_train_timesteps: usize, precision: TablePrecision) -> Self {
        let (alphas_cumprod, sigmas, log_sigmas) = match precision {
            TablePrecision::F64 | TablePrecision::ComfyF32 => {
                let mut acc = 1.0;
                let ac: Vec<f64> = betas
                    .betas(num_train_timesteps)
                    .iter()
                    .map(|b| {
                        acc *= 1.0 - b;
                        acc
                    })
                    .collect();
                let s: Vec<f64> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
                if precision == TablePrecision::F64 {
                    let l = s.iter().map(|s| s.ln()).collect();
                    (ac, s, l)
                } else {
                    let l = s.iter().map(|s| f64::from(s.ln() as f32)).collect();
                    let ac = ac.iter().map(|&a| f64::from(a as f32)).collect();
                    (ac, s.iter().map(|&s| f64::from(s as f32)).collect(), l)
                }
            }
            TablePrecision::DiffusersF32 => {
                // torch's CPU cumprod accumulates float32 inputs in a double and rounds each output.
                let mut acc = 1.0_f64;
                let ac: Vec<f32> = betas
                    .betas_f32(num_train_timesteps)
                    .iter()
                    .map(|&b| {
                        acc *= f64::from(1.0_f32 - b as f32);
                        acc as f32
                    })
                    .collect();
                let s: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
                let l = s.iter().map(|&s| f64::from(f64::from(s).ln() as f32)).collect();
                (ac.into_iter().map(f64::from).collect(), s.into_iter().map(f64::from).collect(), l)
            }
        };
        Self { alphas_cumprod, sigmas, log_sigmas, quantize: false }
    }

    /// With `quantize`, `sigma_to_t` returns the nearest integer timestep in log-sigma (argmin),
    /// as ComfyUI's `ModelSamplingDiscrete.timestep` and Forge do; without it the fractional
    /// timestep goes to the network, as A1111 (default) and diffusers do.
    pub fn with_quantize(mut self, quantize: bool) -> Self {
        self.quantize = quantize;
        self
    }

    /// Whether `sigma_to_t` quantizes.
    pub fn quantize(&self) -> bool {
        self.quantize
    }

    /// ᾱ_t for t = 0..N-1 (rounded per the table precision).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// ln sigma_t, ascending (rounded per the table precision).
    pub fn log_sigmas(&self) -> &[f64] {
        &self.log_sigmas
    }

    /// Number of training timesteps N.
    pub fn num_train_timesteps(&self) -> usize {
        self.sigmas.len()
    }
}

impl NoiseSchedule for DiscreteSchedule {
    fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// k-diffusion `DiscreteSchedule.sigma_to_t`: log-linear between the two neighbouring table
    /// entries, with the weight clamped to [0, 1] (so t ∈ [0, N-1]); argmin when quantizing.
    fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.ln();
        let ls = &self.log_sigmas;
        if self.quantize {
            // argmin |ln σ - ln σ_i|, first index on ties (torch's argmin).
            let mut best = 0;
            for (i, l) in ls.iter().enumerate() {
                if (log_sigma - l).abs() < (log_sigma - ls[best]).abs() {
                    best = i;
                }
            }
            return best as f64;
        }
        // k-diffusion: low = argmax(cumsum(log σ - log σ_i >= 0)), clamped to N-2. For an
        // ascending table the count c of entries <= log σ gives low = max(c - 1, 0).
        let count = ls.iter().filter(|&&l| log_sigma - l >= 0.0).count();
        let low = count.saturating_sub(1).min(ls.len() - 2);
        let high = low + 1;
        let w = ((ls[low] - log_sigma) / (ls[low] - ls[high])).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }

    /// Log-linear interpolation of the table, with t clamped to [0, N-1] as ComfyUI's
    /// `ModelSamplingDiscrete.sigma` (k-diffusion would index out of range).
    fn t_to_sigma(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.sigmas.len() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    fn train_sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }
}

/// EDM's continuous noise levels (Karras et al. 2022), as ComfyUI's `ModelSamplingContinuousEDM`:
/// the network is fed c_noise = 0.25 ln sigma.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmSchedule {
    /// Smallest sigma of the schedule.
    pub sigma_min: f64,
    /// Largest sigma of the schedule.
    pub sigma_max: f64,
    /// The data standard deviation the preconditioning assumes.
    pub sigma_data: f64,
}

impl EdmSchedule {
    /// Stable Video Diffusion: sigma_min 0.002, sigma_max 700, sigma_data 1.
    pub const SVD: Self = Self { sigma_min: 0.002, sigma_max: 700.0, sigma_data: 1.0 };
}

impl NoiseSchedule for EdmSchedule {
    fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    fn sigma_to_t(&self, sigma: f64) -> f64 {
        0.25 * sigma.ln()
    }

    fn t_to_sigma(&self, t: f64) -> f64 {
        (t / 0.25).exp()
    }

    fn train_sigmas(&self) -> Option<&[f64]> {
        None
    }
}

/// A model's noise schedule: discrete (SD1/SD2/SDXL) or continuous EDM (SVD).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSchedule {
    Discrete(DiscreteSchedule),
    Edm(EdmSchedule),
}

impl ModelSchedule {
    fn inner(&self) -> &dyn NoiseSchedule {
        match self {
            Self::Discrete(s) => s,
            Self::Edm(s) => s,
        }
    }
}

impl NoiseSchedule for ModelSchedule {
    fn sigma_min(&self) -> f64 {
        self.inner().sigma_min()
    }

    fn sigma_max(&self) -> f64 {
        self.inner().sigma_max()
    }

    fn sigma_to_t(&self, sigma: f64) -> f64 {
        self.inner().sigma_to_t(sigma)
    }

    fn t_to_sigma(&self, t: f64) -> f64 {
        self.inner().t_to_sigma(t)
    }

    fn train_sigmas(&self) -> Option<&[f64]> {
        self.inner().train_sigmas()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_table_ends() {
        let s = DiscreteSchedule::sd(TablePrecision::F64);
        assert!((s.sigma_max() - 14.614641).abs() < 1e-5);
        assert!((s.sigma_min() - 0.0291672).abs() < 1e-6);
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma() {
        let s = DiscreteSchedule::sd(TablePrecision::F64);
        for &t in &[0.0, 0.25, 17.5, 500.0, 998.75, 999.0] {
            assert!((s.sigma_to_t(s.t_to_sigma(t)) - t).abs() < 1e-9, "t = {t}");
        }
        // Outside the table the weight is clamped.
        assert_eq!(s.sigma_to_t(100.0), 999.0);
        assert_eq!(s.sigma_to_t(1e-3), 0.0);
        assert_eq!(s.sigma_to_t(0.0), 0.0);
    }

    #[test]
    fn quantized_sigma_to_t_is_integer() {
        let s = DiscreteSchedule::sd(TablePrecision::ComfyF32).with_quantize(true);
        assert_eq!(s.sigma_to_t(s.t_to_sigma(500.4)), 500.0);
    }

    #[test]
    fn unknown_beta_schedule_lists_names() {
        let e = BetaSchedule::from_name("cosine", 0.0001, 0.02).unwrap_err();
        assert!(e.to_string().contains("scaled_linear, linear, squaredcos_cap_v2"), "{e}");
    }

    #[test]
    fn too_small_table_is_an_error() {
        assert!(DiscreteSchedule::new(BetaSchedule::SD, 1, TablePrecision::F64).is_err());
        assert!(DiscreteSchedule::from_sigmas(vec![0.1]).is_err());
        assert!(DiscreteSchedule::from_sigmas(vec![0.1, 0.1]).is_err());
        assert!(DiscreteSchedule::from_sigmas(vec![0.0, 1.0]).is_err());
    }

    #[test]
    fn from_sigmas_round_trips_the_sd_table() {
        let sd = DiscreteSchedule::sd(TablePrecision::F64);
        let back = DiscreteSchedule::from_sigmas(sd.sigmas.clone()).unwrap();
        for t in [0.0, 10.5, 500.0, 999.0] {
            let (a, b) = (sd.t_to_sigma(t), back.t_to_sigma(t));
            assert!((a - b).abs() <= 1e-12 * a, "t = {t}: {a} vs {b}");
        }
    }
}
