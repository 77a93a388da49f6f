//! Any 2-D Gaussian mixture as toy data: the JSON file `--mixture-file` reads.
//!
//! ```json
//! {"weights": [0.6, 0.4], "means": [[-1, 0], [1, 0.5]],
//!  "covariances": [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0], [0, 0.3]]],
//!  "sigma_min": 0.002, "sigma_max": 80}
//! ```
//!
//! `sigma_min` and `sigma_max` are optional (both or neither): the noise range a schedule for
//! this data spans.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mixture::{Component, GaussianMixture};
use crate::ToyError;

/// How far the weights' sum may be from 1: room for decimal fractions written by hand or
/// printed by a script (0.1 + 0.2 + 0.7 is 1 - 1.1e-16), far below any intended weight.
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;

/// The file's fields, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    weights: Vec<f64>,
    means: Vec<[f64; 2]>,
    covariances: Vec<[[f64; 2]; 2]>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
}

/// A mixture read from a file, with the σ range it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct MixtureFile {
    /// The data distribution.
    pub mixture: GaussianMixture,
    /// (σ_min, σ_max), when the file gives them.
    pub sigma_range: Option<(f64, f64)>,
}

impl MixtureFile {
    /// Reads and checks `path`: every error names the file, the problem and what to write.
    pub fn read(path: &Path) -> Result<Self, ToyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path, format!("cannot read it ({e}); give the path of a JSON mixture file")))?;
        Self::parse(&text).map_err(|reason| bad(path, reason))
    }

    /// Parses and checks the JSON text of a mixture file; the error is the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a mixture file ({e}); expected {{\"weights\": [...], \"means\": [[x, y], ...], \
                 \"covariances\": [[[a, b], [b, c]], ...]}} with optional \"sigma_min\" and \"sigma_max\""
            )
        })?;
        let n = raw.weights.len();
        if n == 0 {
            return Err("\"weights\" is empty; give at least one component".into());
        }
        if raw.means.len() != n || raw.covariances.len() != n {
            return Err(format!(
                "{n} weights, {} means and {} covariances; give one of each per component",
                raw.means.len(),
                raw.covariances.len()
            ));
        }
        let sum: f64 = raw.weights.iter().sum();
        // Written so that a NaN sum is refused too.
        let sums_to_one = (sum - 1.0).abs() <= WEIGHT_SUM_TOLERANCE;
        if !sums_to_one {
            return Err(format!("the weights sum to {sum}, not 1; divide each by their sum"));
        }
        let components =
            (0..n).map(|k| Component { weight: raw.weights[k], mean: raw.means[k], cov: raw.covariances[k] }).collect();
        let mixture = GaussianMixture::new(components).map_err(|e| e.to_string())?;
        let sigma_range = match (raw.sigma_min, raw.sigma_max) {
            (None, None) => None,
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo > 0.0 && hi > lo => Some((lo, hi)),
            (Some(lo), Some(hi)) => {
                return Err(format!("sigma_min {lo} and sigma_max {hi}: need 0 < sigma_min < sigma_max, both finite"))
            }
            _ => return Err("give both \"sigma_min\" and \"sigma_max\", or neither".into()),
        };
        Ok(Self { mixture, sigma_range })
    }
}

fn bad(path: &Path, reason: String) -> ToyError {
    ToyError::MixtureFile { path: PathBuf::from(path), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"weights": [0.7, 0.3], "means": [[-1, 0], [1, 0.5]],
        "covariances": [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0], [0, 0.3]]], "sigma_min": 0.01, "sigma_max": 20}"#;

    #[test]
    fn a_good_file_parses() {
        let f = MixtureFile::parse(GOOD).unwrap();
        assert_eq!(f.sigma_range, Some((0.01, 20.0)));
        let c = f.mixture.components();
        assert_eq!((c[0].weight, c[1].mean, c[0].cov), (0.7, [1.0, 0.5], [[0.2, 0.05], [0.05, 0.1]]));
        let no_range = GOOD.replace(r#", "sigma_min": 0.01, "sigma_max": 20"#, "");
        assert_eq!(MixtureFile::parse(&no_range).unwrap().sigma_range, None);
    }

    // Each bad file gets an error that names the problem and the fix.
    #[test]
    fn bad_files_are_clear_errors() {
        let cases = [
            (GOOD.replace("0.7, 0.3", "0.7, 0.4"), "sum to 1.1"),
            (GOOD.replace("[[0.1, 0], [0, 0.3]]", "[[0.1, 0.5], [0.5, 0.3]]"), "not positive definite"),
            (GOOD.replace("[[0.1, 0], [0, 0.3]]", "[[0.1, 0.1], [0, 0.3]]"), "not symmetric"),
            (GOOD.replace("[[-1, 0], [1, 0.5]]", "[[-1, 0]]"), "one of each per component"),
            (GOOD.replace("\"sigma_max\": 20", "\"sigma_max\": 0.001"), "0 < sigma_min < sigma_max"),
            (GOOD.replace(", \"sigma_max\": 20", ""), "or neither"),
            (GOOD.replace("weights", "weight"), "not a mixture file"),
            (GOOD.replace("[-1, 0]", "[-1]"), "not a mixture file"),
            ("{".to_string(), "not a mixture file"),
            (GOOD.replace("0.7, 0.3", "1.3, -0.3"), "finite and positive"),
        ];
        for (text, needle) in cases {
            let err = MixtureFile::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let missing = Path::new("/nonexistent/mixture.json");
        let err = MixtureFile::read(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/mixture.json") && err.contains("cannot read"), "{err}");
    }
}
