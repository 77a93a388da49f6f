//! Mean ± standard deviation, as the VAE model cards report per-image metrics.

use serde::{Deserialize, Serialize};

/// Mean and population standard deviation (`np.std`'s default, `ddof=0`) of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// The mean.
    pub mean: f64,
    /// The population standard deviation.
    pub std: f64,
}

impl MeanStd {
    /// Of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Some(Self { mean, std: var.sqrt() })
    }
}

#[cfg(test)]
mod tests {
    use super::MeanStd;

    #[test]
    fn mean_std_is_population_std() {
        let s = MeanStd::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert!(MeanStd::of(&[]).is_none());
    }
}
