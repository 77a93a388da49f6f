//! Mirrors pytorch-fid 0.3.0 `fid_score.py`: `calculate_activation_statistics` (mean and
//! `np.cov(rowvar=False)` of the pool features) and `calculate_frechet_distance`.
//!
//! Differences: the trace of `sqrtm(Σ₁Σ₂)` is computed as `Σ sqrt(λᵢ)` over the eigenvalues of
//! the symmetric matrix `Σ₁^½ Σ₂ Σ₁^½` (similar to `Σ₁Σ₂`, so the same eigenvalues), in f64 with
//! symmetric eigen-decompositions, instead of scipy's Schur-based `sqrtm` of the non-symmetric
//! product. Tiny negative eigenvalues from rounding are clamped to 0; this replaces pytorch-fid's
//! retry with `eps·I` added and its discarding of imaginary parts.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::error::{EvalError, Result};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Per-dimension mean (`mu`).
    pub mu: DVector<f64>,
    /// Covariance with the `N − 1` normalisation (`sigma`, `np.cov(rowvar=False)`).
    pub sigma: DMatrix<f64>,
}

impl FeatureStats {
    /// Statistics of `n` feature rows of length `dim`, stored row-major in `features`.
    pub fn from_features(features: &[f64], n: usize, dim: usize) -> Result<Self> {
        if features.len() != n * dim || n < 2 || dim == 0 {
            return Err(EvalError::InvalidArgument {
                name: "features",
                reason: format!("{} values for {n} rows of {dim}; need at least 2 rows", features.len()),
            });
        }
        let x = DMatrix::from_row_slice(n, dim, features);
        let mu = x.row_mean().transpose();
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mu.transpose();
        }
        let sigma = centred.transpose() * &centred / (n as f64 - 1.0);
        Ok(Self { mu, sigma })
    }
}

/// `‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½)`.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.mu.len();
    if b.mu.len() != d || a.sigma.shape() != (d, d) || b.sigma.shape() != (d, d) {
        return Err(EvalError::ShapeMismatch {
            name: "feature statistics",
            left: vec![a.mu.len(), a.sigma.nrows(), a.sigma.ncols()],
            right: vec![b.mu.len(), b.sigma.nrows(), b.sigma.ncols()],
        });
    }
    let diff = &a.mu - &b.mu;
    let sqrt_a = psd_sqrt(&a.sigma);
    let m = &sqrt_a * &b.sigma * &sqrt_a;
    let m = (&m + m.transpose()) * 0.5; // symmetric up to rounding; make it exact
    let tr_covmean: f64 = SymmetricEigen::new(m).eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum();
    Ok(diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_covmean)
}

/// The PSD square root `V·diag(√max(λ, 0))·Vᵀ` of a symmetric matrix.
fn psd_sqrt(s: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new((s + s.transpose()) * 0.5);
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}
