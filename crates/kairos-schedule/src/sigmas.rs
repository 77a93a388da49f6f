//! The validated sigma schedule a sampler walks.

use crate::{NoiseSchedule, ScheduleError};

/// A sampling schedule: at least 2 finite, non-negative, strictly decreasing noise levels. Its
/// step count is `len - 1`. The last value is 0 for every builder except the explicitly
/// documented ones (A1111's `kl_optimal`, user lists), see [`Sigmas::ends_at_zero`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sigmas(Vec<f64>);

impl Sigmas {
    /// Validates a sigma list.
    pub fn new(values: Vec<f64>) -> Result<Self, ScheduleError> {
        if values.len() < 2 {
            return Err(ScheduleError::TooFewSigmas { len: values.len() });
        }
        for (index, &value) in values.iter().enumerate() {
            if !value.is_finite() || value < 0.0 {
                return Err(ScheduleError::InvalidSigma { index, value });
            }
            if index > 0 && value >= values[index - 1] {
                return Err(ScheduleError::NotDecreasing { index, prev: values[index - 1], value });
            }
        }
        Ok(Self(values))
    }

    /// The noise levels, descending.
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    /// The noise levels as a vector.
    pub fn into_vec(self) -> Vec<f64> {
        self.0
    }

    /// Number of sampler steps (`len - 1`).
    pub fn steps(&self) -> usize {
        self.0.len() - 1
    }

    /// Whether the schedule ends at sigma 0 (a fully denoised output).
    pub fn ends_at_zero(&self) -> bool {
        self.0[self.0.len() - 1] == 0.0
    }

    /// The last `steps` steps (`steps + 1` values), for img2img; the whole schedule if it is shorter.
    /// `steps` of 0 is treated as 1, since a schedule has at least one step.
    pub fn tail(&self, steps: usize) -> Sigmas {
        let keep = (steps.max(1) + 1).min(self.0.len());
        Sigmas(self.0[self.0.len() - keep..].to_vec())
    }

    /// The timestep the network is fed at each step (every sigma but the last), through
    /// `schedule.sigma_to_t`: fractional or quantized per the schedule, as diffusers'
    /// `EulerDiscreteScheduler` builds `timesteps` from its sigmas.
    pub fn timesteps(&self, schedule: &dyn NoiseSchedule) -> Vec<f64> {
        self.0[..self.0.len() - 1].iter().map(|&s| schedule.sigma_to_t(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(Sigmas::new(vec![1.0]), Err(ScheduleError::TooFewSigmas { len: 1 }));
        assert!(matches!(Sigmas::new(vec![2.0, f64::NAN, 0.0]), Err(ScheduleError::InvalidSigma { index: 1, .. })));
        assert!(matches!(Sigmas::new(vec![2.0, -1.0]), Err(ScheduleError::InvalidSigma { index: 1, .. })));
        let e = Sigmas::new(vec![2.0, 3.0, 0.0]).unwrap_err();
        assert!(matches!(e, ScheduleError::NotDecreasing { index: 1, .. }));
        assert!(e.to_string().contains("strictly decreasing"), "{e}");
        assert!(matches!(Sigmas::new(vec![2.0, 2.0, 0.0]), Err(ScheduleError::NotDecreasing { index: 1, .. })));
    }

    #[test]
    fn tail_keeps_the_last_steps() {
        let s = Sigmas::new(vec![4.0, 3.0, 2.0, 1.0, 0.0]).unwrap();
        assert_eq!(s.tail(2).as_slice(), &[2.0, 1.0, 0.0]);
        assert_eq!(s.tail(10).as_slice(), s.as_slice());
        assert_eq!(s.steps(), 4);
        assert!(s.ends_at_zero());
    }
}
