//! Sigma schedules ("schedulers" in ComfyUI/A1111): the registry of names and the builders.
//!
//! Each builder follows one reference exactly (cited on its variant); the parity tests in
//! `tests/parity_schedules.rs` compare them against that reference.

use crate::family::{AysModel, Family};
use crate::math::{beta_ppf, loglinear_interp, np_interp, np_linspace, np_linspace_open, torch_linspace_f64};
use crate::tables::{self, gits::GITS_TABLES};
use crate::{NoiseSchedule, ScheduleError, Sigmas};

/// A sigma schedule with its options. Build one from a name with [`ScheduleKind::from_name`]
/// (default options), then call [`ScheduleKind::build`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    /// ComfyUI `normal_scheduler`: timesteps uniform in t from t(σ_max) to t(σ_min), then 0.
    /// Same values as A1111's "Uniform" (k-diffusion `DiscreteSchedule.get_sigmas`).
    Normal,
    /// k-diffusion `get_sigmas_karras` (Karras et al. 2022), ρ = 7 by default.
    Karras { rho: f64 },
    /// k-diffusion `get_sigmas_exponential`: uniform in log σ.
    Exponential,
    /// k-diffusion `get_sigmas_polyexponential`, ρ = 1 by default.
    PolyExponential { rho: f64 },
    /// ComfyUI `simple_scheduler`: every (N/steps)-th entry of the training table from the top.
    Simple,
    /// ComfyUI `normal_scheduler(sgm=True)`: `steps + 1` uniform timesteps, the last dropped.
    SgmUniform,
    /// ComfyUI `ddim_scheduler`: table entries 1, 1 + N//steps, ... (its length can exceed
    /// steps + 1 when N//steps does not divide N - 1, as in ComfyUI).
    DdimUniform,
    /// ComfyUI `beta_scheduler` ("Beta Sampling is All You Need"): integer timesteps at the
    /// Beta(α, β) quantiles, consecutive duplicates dropped (so possibly fewer steps).
    Beta { alpha: f64, beta: f64 },
    /// A1111/Forge's "Beta" (and diffusers' `use_beta_sigmas`): σ_min + ppf·(σ_max − σ_min),
    /// linear in σ.
    BetaA1111 { alpha: f64, beta: f64 },
    /// ComfyUI `linear_quadratic_schedule` (Mochi): `linear_steps` defaults to steps / 2.
    LinearQuadratic { threshold_noise: f64, linear_steps: Option<usize> },
    /// ComfyUI `kl_optimal_scheduler` (AYS paper Theorem 3.1 with c = 1), then 0. At 1 step
    /// (where ComfyUI divides 0 by 0) it is [σ_max, 0].
    KlOptimal,
    /// A1111/Forge "KL Optimal": n + 1 points from σ_max to σ_min, **no final 0**.
    KlOptimalA1111,
    /// ComfyUI `AlignYourStepsScheduler`: the full-precision 10-step table, log-linearly
    /// interpolated to steps + 1 points, last set to 0. `model` overrides the family's table.
    Ays { model: Option<AysModel> },
    /// A1111 "Align Your Steps": the 3-decimal table interpolated to `steps` points, then 0
    /// appended (so steps = 11 gives the published schedule). SDXL table for SDXL, SD1 otherwise.
    AysA1111,
    /// Forge "Align Your Steps 11": identical to [`ScheduleKind::AysA1111`].
    Ays11,
    /// Forge "Align Your Steps 32": a 32-point table with A1111's semantics.
    Ays32,
    /// Forge "Align Your Steps GITS": an 11-point table with A1111's semantics.
    AysGitsForge,
    /// ComfyUI `GITSScheduler`: tabulated for 2..=20 steps, log-linear above (and at 1 step, where
    /// ComfyUI's node refuses); `coeff` in 0.80..=1.50 step 0.05.
    Gits { coeff: f64 },
    /// diffusers' `timestep_spacing="leading"` (EulerDiscrete, EulerAncestral, DDIM, the SD1/SDXL
    /// scheduler configs): t = i·(N // steps) + `steps_offset` for i = steps−1 … 0, σ interpolated
    /// from the training table, then 0. (DPMSolverMultistep spaces "leading" over steps + 1
    /// points; use its explicit timesteps there.)
    Leading { steps_offset: usize },
    /// diffusers' `timestep_spacing="trailing"` (SDXL-Turbo, SDXL-Lightning, LCM):
    /// t = round(N − i·N/steps) − 1 for i = 0 … steps−1 (4 steps: 999, 749, 499, 249), then 0.
    /// Forge's "Turbo" schedule is the same.
    Trailing,
    /// diffusers' `timestep_spacing="linspace"`: steps fractional timesteps from N − 1 down to 0
    /// (`np.linspace`), then 0.
    Linspace,
    /// A user sigma list, used verbatim (strictly decreasing, finite, non-negative).
    Sigmas(Vec<f64>),
    /// A user timestep list (strictly decreasing, in [0, N-1]): σ by linear interpolation of the
    /// training table (diffusers `np.interp`), then 0 appended, as diffusers'
    /// `set_timesteps(timesteps=...)`.
    Timesteps(Vec<f64>),
}

/// How `denoise` < 1 shortens a schedule (img2img).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenoiseRule {
    /// ComfyUI `KSampler.set_steps`: build int(steps / denoise) steps, keep the last steps + 1
    /// sigmas (denoise > 0.9999 counts as 1).
    KSampler,
    /// ComfyUI's AYS/GITS nodes: build `steps`, keep the last round(steps · denoise) + 1
    /// (round half to even, as Python).
    Truncate,
    /// diffusers' img2img `get_timesteps`: build `steps`, keep the last
    /// min(int(steps · denoise), steps) steps.
    Diffusers,
    /// A1111's img2img (`setup_img2img_steps` with "img2img_fix_steps" off, then
    /// `sigmas[steps - t_enc - 1:]`): build `steps`, keep the last t_enc + 1 steps, with
    /// t_enc = int(min(denoise, 0.999) · steps).
    A1111,
}

impl DenoiseRule {
    /// The names [`DenoiseRule::from_name`] accepts.
    pub const NAMES: [&'static str; 4] = ["ksampler", "truncate", "diffusers", "a1111"];

    /// The rule for a name of [`DenoiseRule::NAMES`] (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        match name.to_ascii_lowercase().as_str() {
            "ksampler" => Ok(Self::KSampler),
            "truncate" => Ok(Self::Truncate),
            "diffusers" => Ok(Self::Diffusers),
            "a1111" => Ok(Self::A1111),
            _ => Err(ScheduleError::UnknownName {
                what: "denoise rule",
                name: name.to_string(),
                accepted: Self::NAMES.join(", "),
            }),
        }
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::KSampler => "ksampler",
            Self::Truncate => "truncate",
            Self::Diffusers => "diffusers",
            Self::A1111 => "a1111",
        }
    }
}

struct Entry {
    name: &'static str,
    aliases: &'static [&'static str],
    make: fn() -> ScheduleKind,
}

/// Canonical names (ComfyUI's) and aliases (A1111/Forge display and internal names), matched
/// case-insensitively. A1111's "Beta" coincides with `beta` case-insensitively, so A1111's
/// Beta is only reachable as `beta_a1111`.
const REGISTRY: &[Entry] = &[
    Entry { name: "normal", aliases: &["uniform"], make: || ScheduleKind::Normal },
    Entry { name: "karras", aliases: &[], make: || ScheduleKind::Karras { rho: 7.0 } },
    Entry { name: "exponential", aliases: &[], make: || ScheduleKind::Exponential },
    Entry { name: "polyexponential", aliases: &[], make: || ScheduleKind::PolyExponential { rho: 1.0 } },
    Entry { name: "simple", aliases: &[], make: || ScheduleKind::Simple },
    Entry { name: "sgm_uniform", aliases: &["SGM Uniform", "SGMUniform"], make: || ScheduleKind::SgmUniform },
    Entry { name: "ddim_uniform", aliases: &["DDIM"], make: || ScheduleKind::DdimUniform },
    Entry { name: "beta", aliases: &[], make: || ScheduleKind::Beta { alpha: 0.6, beta: 0.6 } },
    Entry { name: "beta_a1111", aliases: &[], make: || ScheduleKind::BetaA1111 { alpha: 0.6, beta: 0.6 } },
    Entry {
        name: "linear_quadratic",
        aliases: &[],
        make: || ScheduleKind::LinearQuadratic { threshold_noise: 0.025, linear_steps: None },
    },
    Entry { name: "kl_optimal", aliases: &[], make: || ScheduleKind::KlOptimal },
    Entry { name: "kl_optimal_a1111", aliases: &["KL Optimal"], make: || ScheduleKind::KlOptimalA1111 },
    Entry { name: "ays", aliases: &["AlignYourStepsScheduler"], make: || ScheduleKind::Ays { model: None } },
    Entry { name: "ays_a1111", aliases: &["Align Your Steps", "align_your_steps"], make: || ScheduleKind::AysA1111 },
    Entry { name: "ays_11", aliases: &["Align Your Steps 11", "align_your_steps_11"], make: || ScheduleKind::Ays11 },
    Entry { name: "ays_32", aliases: &["Align Your Steps 32", "align_your_steps_32"], make: || ScheduleKind::Ays32 },
    Entry {
        name: "ays_gits_forge",
        aliases: &["Align Your Steps GITS", "align_your_steps_gits"],
        make: || ScheduleKind::AysGitsForge,
    },
    Entry { name: "gits", aliases: &["GITSScheduler"], make: || ScheduleKind::Gits { coeff: 1.20 } },
    Entry { name: "leading", aliases: &[], make: || ScheduleKind::Leading { steps_offset: 1 } },
    Entry { name: "trailing", aliases: &["turbo"], make: || ScheduleKind::Trailing },
    Entry { name: "linspace", aliases: &[], make: || ScheduleKind::Linspace },
];

impl ScheduleKind {
    /// The schedule for a name (canonical or alias, case-insensitive), with default options.
    /// User lists are not named: construct [`ScheduleKind::Sigmas`] / [`ScheduleKind::Timesteps`].
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        let lower = name.to_ascii_lowercase();
        REGISTRY
            .iter()
            .find(|e| e.name == lower || e.aliases.iter().any(|a| a.to_ascii_lowercase() == lower))
            .map(|e| (e.make)())
            .ok_or_else(|| ScheduleError::UnknownName {
                what: "schedule",
                name: name.to_string(),
                accepted: Self::names().join(", "),
            })
    }

    /// The canonical schedule names.
    pub fn names() -> Vec<&'static str> {
        REGISTRY.iter().map(|e| e.name).collect()
    }

    /// The canonical name (`sigmas` / `timesteps` for user lists).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Karras { .. } => "karras",
            Self::Exponential => "exponential",
            Self::PolyExponential { .. } => "polyexponential",
            Self::Simple => "simple",
            Self::SgmUniform => "sgm_uniform",
            Self::DdimUniform => "ddim_uniform",
            Self::Beta { .. } => "beta",
            Self::BetaA1111 { .. } => "beta_a1111",
            Self::LinearQuadratic { .. } => "linear_quadratic",
            Self::KlOptimal => "kl_optimal",
            Self::KlOptimalA1111 => "kl_optimal_a1111",
            Self::Ays { .. } => "ays",
            Self::AysA1111 => "ays_a1111",
            Self::Ays11 => "ays_11",
            Self::Ays32 => "ays_32",
            Self::AysGitsForge => "ays_gits_forge",
            Self::Gits { .. } => "gits",
            Self::Leading { .. } => "leading",
            Self::Trailing => "trailing",
            Self::Linspace => "linspace",
            Self::Sigmas(_) => "sigmas",
            Self::Timesteps(_) => "timesteps",
        }
    }

    /// The `denoise` rule of the front end this schedule comes from, which [`ScheduleKind::build`]
    /// applies:
    /// - ComfyUI's AYS and GITS nodes truncate ([`DenoiseRule::Truncate`]);
    /// - the A1111/Forge variants (`ays_a1111`, `ays_11`, `ays_32`, `ays_gits_forge`,
    ///   `beta_a1111`, `kl_optimal_a1111`) follow A1111's img2img ([`DenoiseRule::A1111`]);
    /// - the schedules every front end has (`karras`, `normal`, `exponential`, ...) and user
    ///   lists follow diffusers' img2img, kairos' default convention ([`DenoiseRule::Diffusers`]);
    ///   ComfyUI's KSampler rule for them is [`DenoiseRule::KSampler`] via
    ///   [`ScheduleKind::build_with_rule`].
    pub fn denoise_rule(&self) -> DenoiseRule {
        match self {
            Self::Ays { .. } | Self::Gits { .. } => DenoiseRule::Truncate,
            Self::AysA1111
            | Self::Ays11
            | Self::Ays32
            | Self::AysGitsForge
            | Self::BetaA1111 { .. }
            | Self::KlOptimalA1111 => DenoiseRule::A1111,
            _ => DenoiseRule::Diffusers,
        }
    }

    /// Builds the sigmas for `steps` steps of a model with noise schedule `schedule` and family
    /// `family` (which picks the AYS/GITS table), keeping the tail for `denoise` ∈ (0, 1] per
    /// [`ScheduleKind::denoise_rule`]. For user lists `steps` is ignored (the list's length
    /// counts).
    pub fn build(
        &self,
        schedule: &dyn NoiseSchedule,
        family: Family,
        steps: usize,
        denoise: f64,
    ) -> Result<Sigmas, ScheduleError> {
        self.build_with_rule(schedule, family, steps, denoise, self.denoise_rule())
    }

    /// As [`ScheduleKind::build`] with an explicit `denoise` rule. Denoise 1 gives the whole
    /// schedule under every rule. With the truncate rule the last value is set to 0 only for AYS
    /// and GITS (ComfyUI's nodes do).
    pub fn build_with_rule(
        &self,
        schedule: &dyn NoiseSchedule,
        family: Family,
        steps: usize,
        denoise: f64,
        rule: DenoiseRule,
    ) -> Result<Sigmas, ScheduleError> {
        if !(denoise > 0.0 && denoise <= 1.0) {
            return Err(ScheduleError::DenoiseOutOfRange { denoise });
        }
        let steps = match self {
            Self::Sigmas(v) | Self::Timesteps(v) => v.len().saturating_sub(1).max(1),
            _ if steps == 0 => return Err(ScheduleError::ZeroSteps),
            _ => steps,
        };
        let full = match rule {
            // Denoise 1 is the whole schedule (txt2img) under every rule.
            _ if denoise >= 1.0 => return self.full(schedule, family, steps),
            DenoiseRule::KSampler if denoise > 0.9999 => return self.full(schedule, family, steps),
            DenoiseRule::KSampler => {
                // Python's int(steps / denoise): truncation of a positive float.
                let total = (steps as f64 / denoise) as usize;
                return Ok(self.full(schedule, family, total)?.tail(steps));
            }
            _ => self.full(schedule, family, steps)?,
        };
        // The built schedule's own count (a timestep list of n values gives n steps).
        let n = full.steps();
        let (keep, kept, min_denoise) = match rule {
            // min(int(steps * strength), steps).
            DenoiseRule::Diffusers => (((n as f64 * denoise) as usize).min(n), "int(steps * denoise)", 1.0 / n as f64),
            // Always at least 1.
            DenoiseRule::A1111 => ((denoise.min(0.999) * n as f64) as usize + 1, "", 0.0),
            // Truncate (KSampler returned above).
            _ => ((n as f64 * denoise).round_ties_even() as usize, "round(steps * denoise)", 0.5 / n as f64),
        };
        if keep == 0 {
            return Err(ScheduleError::DenoiseKeepsNoStep { steps: n, denoise, min_denoise, kept });
        }
        let mut v = full.tail(keep).into_vec();
        if rule == DenoiseRule::Truncate && matches!(self, Self::Ays { .. } | Self::Gits { .. }) {
            let last = v.len() - 1;
            v[last] = 0.0;
        }
        Sigmas::new(v)
    }

    /// The whole schedule for `steps` >= 1 steps (no denoise).
    fn full(&self, schedule: &dyn NoiseSchedule, family: Family, steps: usize) -> Result<Sigmas, ScheduleError> {
        let (smin, smax) = (schedule.sigma_min(), schedule.sigma_max());
        let n = steps;
        let v = match self {
            Self::Normal => normal(schedule, n, false),
            Self::SgmUniform => normal(schedule, n, true),
            Self::Karras { rho } => {
                check_positive(self.name(), "rho", *rho)?;
                let (min_inv_rho, max_inv_rho) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
                let ramp = torch_linspace_f64(0.0, 1.0, n);
                append_zero(ramp.iter().map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(*rho)).collect())
            }
            Self::Exponential => {
                append_zero(torch_linspace_f64(smax.ln(), smin.ln(), n).iter().map(|l| l.exp()).collect())
            }
            Self::PolyExponential { rho } => {
                check_positive(self.name(), "rho", *rho)?;
                let (lmin, lmax) = (smin.ln(), smax.ln());
                let ramp = torch_linspace_f64(1.0, 0.0, n);
                append_zero(ramp.iter().map(|r| (r.powf(*rho) * (lmax - lmin) + lmin).exp()).collect())
            }
            Self::Simple => {
                let table = table(self, schedule)?;
                let ss = table.len() as f64 / n as f64;
                append_zero((0..n).map(|x| table[table.len() - 1 - (x as f64 * ss) as usize]).collect())
            }
            Self::DdimUniform => ddim_uniform(table(self, schedule)?, n),
            Self::Beta { alpha, beta } => {
                check_positive(self.name(), "alpha", *alpha)?;
                check_positive(self.name(), "beta", *beta)?;
                let table = table(self, schedule)?;
                let total = (table.len() - 1) as f64;
                let mut v = Vec::with_capacity(n + 1);
                let mut last_t = -1.0;
                for p in np_linspace_open(0.0, 1.0, n) {
                    let t = (beta_ppf(1.0 - p, *alpha, *beta) * total).round_ties_even();
                    if t != last_t {
                        v.push(table[t as usize]);
                    }
                    last_t = t;
                }
                append_zero(v)
            }
            Self::BetaA1111 { alpha, beta } => {
                check_positive(self.name(), "alpha", *alpha)?;
                check_positive(self.name(), "beta", *beta)?;
                let ps = np_linspace(0.0, 1.0, n);
                append_zero(ps.iter().map(|p| smin + beta_ppf(1.0 - p, *alpha, *beta) * (smax - smin)).collect())
            }
            Self::LinearQuadratic { threshold_noise, linear_steps } => {
                linear_quadratic(smax, n, *threshold_noise, *linear_steps)?
            }
            Self::KlOptimal => {
                let (amin, amax) = (smin.atan(), smax.atan());
                // ComfyUI divides by n - 1 (0/0 at n = 1); one step starts at σ_max.
                let denom = (n.max(2) - 1) as f64;
                append_zero((0..n).map(|i| i as f64 / denom).map(|a| (a * amin + (1.0 - a) * amax).tan()).collect())
            }
            Self::KlOptimalA1111 => {
                let (amin, amax) = (smin.atan(), smax.atan());
                (0..=n).map(|i| i as f64 / n as f64).map(|a| (a * amin + (1.0 - a) * amax).tan()).collect()
            }
            Self::Ays { model } => {
                let model = model.or(family.ays_model()).ok_or(ScheduleError::NoTableForFamily {
                    schedule: "ays",
                    family: family.name(),
                    accepted: "sd1, sdxl, svd",
                })?;
                let table: &[f64] = match model {
                    AysModel::Sd1 => &tables::AYS_SD1,
                    AysModel::Sdxl => &tables::AYS_SDXL,
                    AysModel::Svd => &tables::AYS_SVD,
                };
                let mut v = if n + 1 == table.len() { table.to_vec() } else { loglinear_interp(table, n + 1) };
                let last = v.len() - 1;
                v[last] = 0.0;
                v
            }
            Self::AysA1111 | Self::Ays11 | Self::Ays32 | Self::AysGitsForge => {
                if !family.is_sd_range() {
                    return Err(ScheduleError::NoTableForFamily {
                        schedule: self.name(),
                        family: family.name(),
                        accepted: "sd1, sd2-base, sd2, sdxl",
                    });
                }
                let xl = family == Family::Sdxl;
                let table: &[f64] = match (self, xl) {
                    (Self::Ays32, false) => &tables::AYS32_SD1,
                    (Self::Ays32, true) => &tables::AYS32_SDXL,
                    (Self::AysGitsForge, false) => &tables::AYS_GITS_FORGE_SD1,
                    (Self::AysGitsForge, true) => &tables::AYS_GITS_FORGE_SDXL,
                    (_, false) => &tables::AYS_A1111_SD1,
                    (_, true) => &tables::AYS_A1111_SDXL,
                };
                append_zero(if n == table.len() { table.to_vec() } else { loglinear_interp(table, n) })
            }
            Self::Gits { coeff } => {
                let c = gits_index(*coeff)?;
                if !family.is_sd_range() {
                    return Err(ScheduleError::NoTableForFamily {
                        schedule: "gits",
                        family: family.name(),
                        accepted: "sd1, sd2-base, sd2, sdxl",
                    });
                }
                let rows = &GITS_TABLES[c];
                let mut v = if (2..=20).contains(&n) {
                    rows[n - 2].to_vec()
                } else {
                    loglinear_interp(rows[rows.len() - 1], n + 1)
                };
                let last = v.len() - 1;
                v[last] = 0.0;
                v
            }
            Self::Leading { steps_offset } => {
                let table = table(self, schedule)?;
                let ratio = table.len() / n;
                if ratio == 0 {
                    return Err(ScheduleError::InvalidOption {
                        schedule: self.name(),
                        message: format!("{n} steps exceed the {} training timesteps", table.len()),
                    });
                }
                let ts: Vec<f64> = (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect();
                let max_t = (table.len() - 1) as f64;
                append_zero(table_sigmas(table, ts.iter().map(|&t| t.min(max_t))))
            }
            Self::Trailing => {
                let table = table(self, schedule)?;
                let total = table.len() as f64;
                let ratio = total / n as f64;
                // np.arange(N, 0, -ratio): N − i·ratio while positive, rounded half to even, − 1.
                let ts: Vec<f64> = (0..n).map(|i| (total - i as f64 * ratio).round_ties_even() - 1.0).collect();
                append_zero(table_sigmas(table, ts.iter().map(|&t| t.max(0.0))))
            }
            Self::Linspace => {
                let table = table(self, schedule)?;
                let max_t = (table.len() - 1) as f64;
                let ts = np_linspace(0.0, max_t, n);
                append_zero(table_sigmas(table, ts.iter().rev().copied()))
            }
            Self::Sigmas(v) => v.clone(),
            Self::Timesteps(ts) => {
                let table = table(self, schedule)?;
                let max_t = (table.len() - 1) as f64;
                for (index, &t) in ts.iter().enumerate() {
                    if !t.is_finite() || !(0.0..=max_t).contains(&t) || (index > 0 && t >= ts[index - 1]) {
                        return Err(ScheduleError::InvalidTimestep { index, value: t, max_t });
                    }
                }
                append_zero(table_sigmas(table, ts.iter().copied()))
            }
        };
        Sigmas::new(v)
    }
}

/// σ at each (possibly fractional) timestep: diffusers' `np.interp(t, arange(N), sigmas)`.
fn table_sigmas(table: &[f64], ts: impl Iterator<Item = f64>) -> Vec<f64> {
    let xp: Vec<f64> = (0..table.len()).map(|i| i as f64).collect();
    ts.map(|t| np_interp(t, &xp, table)).collect()
}

fn append_zero(mut v: Vec<f64>) -> Vec<f64> {
    v.push(0.0);
    v
}

fn check_positive(schedule: &'static str, option: &str, value: f64) -> Result<(), ScheduleError> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(ScheduleError::InvalidOption {
            schedule,
            message: format!("{option} must be a positive finite number, got {value}"),
        })
    }
}

/// The discrete training table, or an error for continuous schedules.
fn table<'a>(kind: &ScheduleKind, schedule: &'a dyn NoiseSchedule) -> Result<&'a [f64], ScheduleError> {
    schedule.train_sigmas().ok_or(ScheduleError::NeedsDiscreteSchedule { schedule: kind.name() })
}

/// ComfyUI `normal_scheduler`. Timesteps are torch-linspaced (f64 as in the float64 references),
/// then rounded to f32 because every reference evaluates σ(t) on float32 timesteps
/// (k-diffusion's `t_to_sigma` calls `t.float()`; ComfyUI's `sigma` too).
fn normal(schedule: &dyn NoiseSchedule, n: usize, sgm: bool) -> Vec<f64> {
    let start = schedule.sigma_to_t(schedule.sigma_max());
    let end = schedule.sigma_to_t(schedule.sigma_min());
    let sigma = |t: f64| schedule.t_to_sigma(f64::from(t as f32));
    if sgm {
        let ts = torch_linspace_f64(start, end, n + 1);
        return append_zero(ts[..n].iter().map(|&t| sigma(t)).collect());
    }
    if (sigma(end)).abs() <= 1e-5 {
        // ComfyUI: a schedule whose last timestep is already σ ≈ 0 uses n + 1 points, no extra 0.
        return torch_linspace_f64(start, end, n + 1).into_iter().map(sigma).collect();
    }
    append_zero(torch_linspace_f64(start, end, n).into_iter().map(sigma).collect())
}

/// ComfyUI `ddim_scheduler`.
fn ddim_uniform(table: &[f64], steps: usize) -> Vec<f64> {
    let (mut steps, mut sigs) = (steps, vec![0.0]);
    if table[1].abs() <= 1e-5 {
        steps += 1;
        sigs.clear();
    }
    let ss = (table.len() / steps).max(1);
    sigs.extend(table.iter().skip(1).step_by(ss).copied());
    sigs.reverse();
    sigs
}

/// ComfyUI `linear_quadratic_schedule` scaled by σ_max.
fn linear_quadratic(
    sigma_max: f64,
    steps: usize,
    threshold_noise: f64,
    linear_steps: Option<usize>,
) -> Result<Vec<f64>, ScheduleError> {
    const NAME: &str = "linear_quadratic";
    if !(threshold_noise > 0.0 && threshold_noise < 1.0) {
        return Err(ScheduleError::InvalidOption {
            schedule: NAME,
            message: format!("threshold_noise must be in (0, 1), got {threshold_noise}"),
        });
    }
    if steps == 1 {
        return Ok(vec![sigma_max, 0.0]);
    }
    let linear_steps = linear_steps.unwrap_or(steps / 2);
    if linear_steps == 0 || linear_steps >= steps {
        return Err(ScheduleError::InvalidOption {
            schedule: NAME,
            message: format!("linear_steps must be in 1..{steps} (steps), got {linear_steps}"),
        });
    }
    let (ls, st) = (linear_steps as f64, steps as f64);
    let diff = ls - threshold_noise * st;
    let quadratic_steps = st - ls;
    let quadratic_coef = diff / (ls * quadratic_steps * quadratic_steps);
    let linear_coef = threshold_noise / ls - 2.0 * diff / (quadratic_steps * quadratic_steps);
    let constant = quadratic_coef * ls * ls;
    let schedule = (0..linear_steps)
        .map(|i| i as f64 * threshold_noise / ls)
        .chain((linear_steps..steps).map(|i| {
            let i = i as f64;
            quadratic_coef * (i * i) + linear_coef * i + constant
        }))
        .chain(std::iter::once(1.0));
    Ok(schedule.map(|x| (1.0 - x) * sigma_max).collect())
}

/// Index of a GITS coefficient in the tables (ComfyUI looks up `round(coeff, 2)`).
fn gits_index(coeff: f64) -> Result<usize, ScheduleError> {
    let hundredths = (coeff * 100.0).round();
    if !coeff.is_finite()
        || !(80.0..=150.0).contains(&hundredths)
        || hundredths % 5.0 != 0.0
        || (coeff * 100.0 - hundredths).abs() >= 0.5
    {
        return Err(ScheduleError::GitsCoeffOutOfRange { coeff });
    }
    Ok(((hundredths - 80.0) / 5.0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{DiscreteSchedule, EdmSchedule, TablePrecision};

    fn sd() -> DiscreteSchedule {
        DiscreteSchedule::sd(TablePrecision::F64)
    }

    #[test]
    fn names_round_trip_and_aliases() {
        for name in ScheduleKind::names() {
            assert_eq!(ScheduleKind::from_name(name).unwrap().name(), name);
        }
        assert_eq!(ScheduleKind::from_name("Karras").unwrap(), ScheduleKind::Karras { rho: 7.0 });
        assert_eq!(ScheduleKind::from_name("Align Your Steps").unwrap(), ScheduleKind::AysA1111);
        assert_eq!(ScheduleKind::from_name("SGM Uniform").unwrap(), ScheduleKind::SgmUniform);
        assert_eq!(ScheduleKind::from_name("KL Optimal").unwrap(), ScheduleKind::KlOptimalA1111);
    }

    #[test]
    fn unknown_name_lists_accepted() {
        let e = ScheduleKind::from_name("cosine").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown schedule `cosine`") && msg.contains("karras") && msg.contains("gits"), "{msg}");
    }

    #[test]
    fn zero_steps_is_an_error() {
        assert_eq!(ScheduleKind::Normal.build(&sd(), Family::Sd1, 0, 1.0), Err(ScheduleError::ZeroSteps));
    }

    #[test]
    fn denoise_out_of_range_is_an_error() {
        for d in [0.0, -0.5, 1.5, f64::NAN] {
            let e = ScheduleKind::Karras { rho: 7.0 }.build(&sd(), Family::Sd1, 10, d).unwrap_err();
            assert!(matches!(e, ScheduleError::DenoiseOutOfRange { .. }), "{d}");
            assert!(e.to_string().contains("(0, 1]"));
        }
    }

    #[test]
    fn denoise_keeping_no_step_is_an_error() {
        let e = ScheduleKind::Ays { model: None }.build(&sd(), Family::Sd1, 2, 0.2).unwrap_err();
        assert!(matches!(e, ScheduleError::DenoiseKeepsNoStep { steps: 2, .. }), "{e}");
        let e = ScheduleKind::Karras { rho: 7.0 }.build(&sd(), Family::Sd1, 4, 0.2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "denoise 0.2 with 4 steps keeps no step (int(steps * denoise) = 0); use denoise >= 0.25 or more steps"
        );
    }

    /// Each front end's rule at 10 steps, denoise 0.62 (no rounding tie).
    #[test]
    fn img2img_denoise_rules() {
        let s = sd();
        let full = |k: &ScheduleKind, n: usize| k.build(&s, Family::Sd1, n, 1.0).unwrap().into_vec();
        let karras = ScheduleKind::Karras { rho: 7.0 };
        let ten = full(&karras, 10);
        // diffusers: int(10 · 0.62) = 6 steps, the default for the common schedules.
        assert_eq!(karras.denoise_rule(), DenoiseRule::Diffusers);
        assert_eq!(karras.build(&s, Family::Sd1, 10, 0.62).unwrap().as_slice(), &ten[4..]);
        // A1111: t_enc = int(0.62 · 10) = 6, 7 steps; at denoise 1 min(1, 0.999) gives all 10.
        let a1111 = karras.build_with_rule(&s, Family::Sd1, 10, 0.62, DenoiseRule::A1111).unwrap();
        assert_eq!(a1111.as_slice(), &ten[3..]);
        assert_eq!(karras.build_with_rule(&s, Family::Sd1, 10, 1.0, DenoiseRule::A1111).unwrap().as_slice(), ten);
        // ComfyUI KSampler: int(10 / 0.62) = 16 steps built, the last 10 kept.
        let ksampler = karras.build_with_rule(&s, Family::Sd1, 10, 0.62, DenoiseRule::KSampler).unwrap();
        assert_eq!(ksampler.as_slice(), &full(&karras, 16)[6..]);
        // ComfyUI's AYS node: round(6.2) = 6 of the 10-step schedule, last σ 0.
        let ays = ScheduleKind::Ays { model: None };
        assert_eq!(ays.denoise_rule(), DenoiseRule::Truncate);
        assert_eq!(ays.build(&s, Family::Sd1, 10, 0.62).unwrap().as_slice(), &full(&ays, 10)[4..]);
        // The A1111 variants follow A1111: 7 steps.
        for k in [ScheduleKind::AysA1111, ScheduleKind::KlOptimalA1111] {
            assert_eq!(k.denoise_rule(), DenoiseRule::A1111);
            assert_eq!(k.build(&s, Family::Sd1, 10, 0.62).unwrap().as_slice(), &full(&k, 10)[3..], "{}", k.name());
        }
        // A timestep list of 4 values is 4 steps: int(4 · 0.5) = 2 kept.
        let list = ScheduleKind::Timesteps(vec![999.0, 749.0, 499.0, 249.0]);
        assert_eq!(list.build(&s, Family::Sd1, 0, 0.5).unwrap().as_slice(), &full(&list, 0)[2..]);
        for name in DenoiseRule::NAMES {
            assert_eq!(DenoiseRule::from_name(name).unwrap().name(), name);
        }
        assert!(DenoiseRule::from_name("comfy").unwrap_err().to_string().contains("ksampler, truncate"));
    }

    #[test]
    fn custom_sigmas_must_decrease_and_be_finite() {
        let e = ScheduleKind::Sigmas(vec![1.0, 2.0, 0.0]).build(&sd(), Family::Sd1, 1, 1.0).unwrap_err();
        assert!(matches!(e, ScheduleError::NotDecreasing { index: 1, .. }));
        let e = ScheduleKind::Sigmas(vec![f64::INFINITY, 0.0]).build(&sd(), Family::Sd1, 1, 1.0).unwrap_err();
        assert!(matches!(e, ScheduleError::InvalidSigma { index: 0, .. }));
        let e = ScheduleKind::Timesteps(vec![999.0, 999.5]).build(&sd(), Family::Sd1, 1, 1.0).unwrap_err();
        assert!(matches!(e, ScheduleError::InvalidTimestep { index: 1, .. }));
        let e = ScheduleKind::Timesteps(vec![1200.0, 10.0]).build(&sd(), Family::Sd1, 1, 1.0).unwrap_err();
        assert!(e.to_string().contains("[0, 999]"), "{e}");
    }

    #[test]
    fn ays_without_table_is_an_error() {
        let e = ScheduleKind::Ays { model: None }.build(&sd(), Family::Sd2, 10, 1.0).unwrap_err();
        assert!(matches!(e, ScheduleError::NoTableForFamily { schedule: "ays", family: "sd2", .. }));
        assert!(e.to_string().contains("sd1, sdxl, svd"));
        // An explicit table overrides the family.
        assert!(ScheduleKind::Ays { model: Some(AysModel::Sd1) }.build(&sd(), Family::Sd2, 10, 1.0).is_ok());
        let e = ScheduleKind::AysA1111.build(&EdmSchedule::SVD, Family::Svd, 10, 1.0).unwrap_err();
        assert!(matches!(e, ScheduleError::NoTableForFamily { .. }));
    }

    #[test]
    fn gits_coeff_out_of_range_is_an_error() {
        for c in [0.75, 1.55, 1.23, f64::NAN] {
            let e = ScheduleKind::Gits { coeff: c }.build(&sd(), Family::Sd1, 10, 1.0).unwrap_err();
            assert!(matches!(e, ScheduleError::GitsCoeffOutOfRange { .. }), "{c}");
            assert!(e.to_string().contains("0.80, 0.85, ..., 1.50"));
        }
        assert!(ScheduleKind::Gits { coeff: 0.8 }.build(&sd(), Family::Sd1, 10, 1.0).is_ok());
        assert!(ScheduleKind::Gits { coeff: 1.5 }.build(&sd(), Family::Sd1, 10, 1.0).is_ok());
    }

    #[test]
    fn table_schedules_need_a_discrete_model() {
        for k in [ScheduleKind::Simple, ScheduleKind::DdimUniform, ScheduleKind::Beta { alpha: 0.6, beta: 0.6 }] {
            let e = k.build(&EdmSchedule::SVD, Family::Svd, 10, 1.0).unwrap_err();
            assert!(matches!(e, ScheduleError::NeedsDiscreteSchedule { .. }), "{e}");
        }
    }

    #[test]
    fn bad_options_are_errors() {
        let k = ScheduleKind::LinearQuadratic { threshold_noise: 0.025, linear_steps: Some(10) };
        assert!(matches!(k.build(&sd(), Family::Sd1, 10, 1.0), Err(ScheduleError::InvalidOption { .. })));
        let k = ScheduleKind::Karras { rho: 0.0 };
        assert!(matches!(k.build(&sd(), Family::Sd1, 10, 1.0), Err(ScheduleError::InvalidOption { .. })));
    }
}
