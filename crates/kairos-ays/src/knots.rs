//! Knot lists: the n + 1 noise levels σ_max = t_n > ... > t_0 = σ_min of an n-step schedule that
//! the KLUB is measured on, and their conversion to a sampler's sigma list.

use kairos_schedule::{Family, NoiseSchedule, ScheduleKind};
use serde::{Deserialize, Serialize};

use crate::{AysError, Result};

/// The hand-crafted schedule the optimizer starts from (paper §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Exponential (uniform in log σ), for every model. The paper starts discrete models from
    /// time-uniform and continuous ones from Karras; on the toy world's four presets (10 steps,
    /// exact denoiser, quality judge) an exponential start ended at a KLUB and judged quality as
    /// good as or better than either on every preset but one (within 0.003 nats of the best
    /// mean KL there) in half the sweeps of a time-uniform start.
    Auto,
    /// Timesteps uniform in t from t(σ_max) to t(σ_min) (ComfyUI `normal`).
    TimeUniform,
    /// EDM/Karras ρ = 7.
    Karras,
    /// Uniform in log σ (k-diffusion `get_sigmas_exponential`).
    Exponential,
}

impl Init {
    /// The init called `name`: `auto`, `time_uniform` (alias `normal`), `karras` or `exponential`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(Self::Auto),
            "time_uniform" | "normal" => Ok(Self::TimeUniform),
            "karras" => Ok(Self::Karras),
            "exponential" => Ok(Self::Exponential),
            _ => Err(AysError::option("init", name, "auto, time_uniform (normal), karras, exponential")),
        }
    }

    /// The schedule this init resolves to.
    pub fn kind(self) -> ScheduleKind {
        match self {
            Self::TimeUniform => ScheduleKind::Normal,
            Self::Karras => ScheduleKind::Karras { rho: 7.0 },
            Self::Auto | Self::Exponential => ScheduleKind::Exponential,
        }
    }
}

/// The `steps + 1` knots from σ_max to σ_min of a named schedule: the schedule built for
/// `steps + 1` sampler steps without its final 0, so that every schedule, the optimized one
/// included, has `steps` intervals on the same range and becomes a `steps`-step sampler list
/// through [`sampler_sigmas`] (the convention of ComfyUI's AYS node).
pub fn knots_of(kind: &ScheduleKind, schedule: &dyn NoiseSchedule, family: Family, steps: usize) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(AysError::option("steps", steps, "at least 1"));
    }
    let mut v = kind.build(schedule, family, steps + 1, 1.0)?.into_vec();
    if v.last() == Some(&0.0) {
        v.pop();
    }
    if v.len() != steps + 1 || v.iter().any(|s| *s <= 0.0) {
        return Err(AysError::InvalidKnots {
            knots: v,
            reason: format!("schedule `{}` does not give {} positive knots for {steps} steps", kind.name(), steps + 1),
        });
    }
    Ok(v)
}

/// The initial knots of the optimizer.
pub fn initial_knots(init: Init, schedule: &dyn NoiseSchedule, family: Family, steps: usize) -> Result<Vec<f64>> {
    knots_of(&init.kind(), schedule, family, steps)
}

/// The sampler's sigma list of `knots`: the knots with σ_min replaced by 0, so the last step
/// denoises fully (ComfyUI's `AlignYourStepsScheduler` convention; n knots intervals = n steps).
pub fn sampler_sigmas(knots: &[f64]) -> Vec<f64> {
    let mut v = knots.to_vec();
    if let Some(last) = v.last_mut() {
        *last = 0.0;
    }
    v
}

/// Doubles the steps: the old knots stay, a new one goes at each log-midpoint
/// (log t'_{2i+1} = ½(log t_i + log t_{i+1}), paper §3.3).
pub fn subdivide(knots: &[f64]) -> Vec<f64> {
    let mut v = Vec::with_capacity(2 * knots.len() - 1);
    for w in knots.windows(2) {
        v.push(w[0]);
        v.push((w[0] * w[1]).sqrt());
    }
    v.extend(knots.last());
    v
}

/// `steps + 1` knots interpolating `knots` piecewise linearly in log σ over a uniform index grid
/// (ComfyUI's and A1111's `loglinear_interp`, how every tool extends the 10-step AYS tables).
pub fn loglinear_knots(knots: &[f64], steps: usize) -> Vec<f64> {
    let m = knots.len() - 1;
    (0..=steps)
        .map(|i| {
            let x = i as f64 * m as f64 / steps as f64;
            let j = (x.floor() as usize).min(m.saturating_sub(1));
            let f = x - j as f64;
            if m == 0 || f == 0.0 {
                return knots[j];
            }
            (knots[j].ln() * (1.0 - f) + knots[j + 1].ln() * f).exp()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kairos_schedule::TablePrecision;

    use super::*;

    #[test]
    fn knots_span_the_model_range() {
        let family = Family::Sd1;
        let model = family.noise_schedule(TablePrecision::F64);
        for kind in ["normal", "karras", "exponential"] {
            let k = knots_of(&ScheduleKind::from_name(kind).unwrap(), &model, family, 10).unwrap();
            assert_eq!(k.len(), 11);
            assert!(
                (k[0] - model.sigma_max()).abs() < 1e-9 && (k[10] - model.sigma_min()).abs() < 1e-9,
                "{kind}: {k:?}"
            );
        }
        assert_eq!(
            initial_knots(Init::Auto, &model, family, 10).unwrap(),
            knots_of(&ScheduleKind::Exponential, &model, family, 10).unwrap()
        );
    }

    #[test]
    fn subdivision_and_interpolation() {
        let k = [8.0, 2.0, 0.5];
        assert_eq!(subdivide(&k), vec![8.0, 4.0, 2.0, 1.0, 0.5]);
        // Log-linear interpolation to twice the steps hits the same log-midpoints.
        let l = loglinear_knots(&k, 4);
        for (a, b) in l.iter().zip(subdivide(&k)) {
            assert!((a - b).abs() < 1e-12, "{l:?}");
        }
        assert_eq!(loglinear_knots(&k, 2), k.to_vec());
        assert_eq!(sampler_sigmas(&k), vec![8.0, 2.0, 0.0]);
        assert!(Init::from_name("bogus").unwrap_err().to_string().contains("time_uniform"));
    }
}
