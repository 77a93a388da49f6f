//! The schedule file: an optimized schedule as JSON, for `--sigmas-file`.
//!
//! ```json
//! { "format": "kairos-schedule", "version": 1, "model": "toy:8x8:exact", "family": "sd1",
//!   "sampler": "euler_ancestral", "steps": 10,
//!   "sigmas": [14.61, ..., 0.0], "knots": [14.61, ..., 0.0292], "timesteps": [999.0, ...],
//!   "objective": { "name": "klub", "value": 1.23, "stderr": 0.01 }, "settings": { ... } }
//! ```

use std::path::Path;

use kairos_schedule::{NoiseSchedule, Sigmas};
use serde::{Deserialize, Serialize};

use crate::knots::{loglinear_knots, sampler_sigmas};
use crate::optimize::write_json_atomic;
use crate::{AysError, Estimate, Result};

/// The value of the file's `format` field.
pub const FORMAT: &str = "kairos-schedule";
/// The file format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// The objective value of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// What was estimated (`klub`: the KLUB in nats over the knots' range).
    pub name: String,
    pub value: f64,
    /// Monte Carlo standard error.
    pub stderr: f64,
}

impl Objective {
    /// The KLUB estimate `e`.
    pub fn klub(e: Estimate) -> Self {
        Self { name: "klub".into(), value: e.value, stderr: e.stderr }
    }
}

/// An optimized schedule as stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this crate writes.
    pub version: u32,
    /// What the schedule was optimized for (denoiser and data), free text.
    pub model: String,
    /// The model family whose sigma range and timesteps it uses (`sd1`, `sdxl`, ...).
    pub family: String,
    /// The sampler the objective models (`euler_ancestral`: stochastic DDIM).
    pub sampler: String,
    /// Number of sampler steps of `sigmas`.
    pub steps: usize,
    /// The sampler's sigma list, `steps + 1` values descending to 0.
    pub sigmas: Vec<f64>,
    /// The optimized knots σ_max … σ_min (`steps + 1` values); `sigmas` is these with σ_min
    /// replaced by 0. Used to interpolate other step counts.
    pub knots: Vec<f64>,
    /// The network timestep of each sigma but the last.
    pub timesteps: Vec<f64>,
    /// The objective value with its Monte Carlo error.
    pub objective: Objective,
    /// The run's settings (options, seed, data), as written by the optimizer.
    #[serde(default)]
    pub settings: serde_json::Value,
}

impl ScheduleFile {
    /// A file for `knots` (descending, σ_max … σ_min) of a model with noise schedule `schedule`.
    pub fn new(
        model: impl Into<String>,
        family: impl Into<String>,
        sampler: impl Into<String>,
        knots: Vec<f64>,
        schedule: &dyn NoiseSchedule,
        objective: Objective,
        settings: serde_json::Value,
    ) -> Result<Self> {
        let sigmas = Sigmas::new(sampler_sigmas(&knots))?;
        Ok(Self {
            format: FORMAT.into(),
            version: VERSION,
            model: model.into(),
            family: family.into(),
            sampler: sampler.into(),
            steps: sigmas.steps(),
            timesteps: sigmas.timesteps(schedule),
            sigmas: sigmas.into_vec(),
            knots,
            objective,
            settings,
        })
    }

    /// Reads and checks a schedule file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AysError::Io { path: path.to_path_buf(), source })?;
        let file: Self =
            serde_json::from_str(&text).map_err(|source| AysError::Json { path: path.to_path_buf(), source })?;
        file.check().map_err(|reason| AysError::ScheduleFile { path: path.to_path_buf(), reason })?;
        Ok(file)
    }

    /// Writes the file (pretty JSON, atomically).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json_atomic(path.as_ref(), self)
    }

    /// The sampler sigmas for `steps` steps: the stored list when `steps` is `None` or equal to
    /// the file's, else the knots interpolated log-linearly to `steps + 1` points with the last
    /// set to 0 (ComfyUI's AYS convention for other step counts).
    pub fn sigmas_for(&self, steps: Option<usize>) -> Result<Sigmas> {
        match steps {
            None => Ok(Sigmas::new(self.sigmas.clone())?),
            Some(s) if s == self.steps => Ok(Sigmas::new(self.sigmas.clone())?),
            Some(0) => Err(AysError::option("steps", 0, "at least 1")),
            Some(s) => Ok(Sigmas::new(sampler_sigmas(&loglinear_knots(&self.knots, s)))?),
        }
    }

    /// Why the file cannot be used, if it cannot.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        if self.version != VERSION {
            return Err(format!("version {} is not supported (this build reads version {VERSION})", self.version));
        }
        if self.sigmas.len() != self.steps + 1 {
            return Err(format!(
                "{} sigmas for {} steps; expected steps + 1 = {}",
                self.sigmas.len(),
                self.steps,
                self.steps + 1
            ));
        }
        Sigmas::new(self.sigmas.clone()).map_err(|e| format!("sigmas: {e}"))?;
        if self.sigmas.last() != Some(&0.0) {
            return Err("sigmas must end at 0".into());
        }
        if self.knots.len() != self.sigmas.len() {
            return Err(format!(
                "{} knots for {} sigmas; expected the same count",
                self.knots.len(),
                self.sigmas.len()
            ));
        }
        let k = Sigmas::new(self.knots.clone()).map_err(|e| format!("knots: {e}"))?;
        if k.ends_at_zero() {
            return Err("knots must end at σ_min > 0".into());
        }
        Ok(())
    }
}
