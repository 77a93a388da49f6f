//! 2-D Gaussian mixtures with full covariances: presets, exact log-density, exact sampling, and
//! the exact posterior mean E[x0 | x_sigma] under k-diffusion's forward process
//! x_sigma = x0 + sigma * eps.

use std::f64::consts::PI;

use serde::Serialize;

use crate::metrics::{knn_entropy, KNN_K};
use crate::rng::ToyRng;
use crate::ToyError;

/// One mixture component: weight (normalised by [`GaussianMixture::new`]), mean and 2 x 2
/// covariance (symmetric positive definite).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Component {
    pub weight: f64,
    pub mean: [f64; 2],
    pub cov: [[f64; 2]; 2],
}

impl Component {
    /// An isotropic component: covariance std² I.
    pub fn isotropic(weight: f64, mean: [f64; 2], std: f64) -> Self {
        let v = std * std;
        Self { weight, mean, cov: [[v, 0.0], [0.0, v]] }
    }

    /// Why the covariance is not symmetric positive definite, if it is not.
    fn covariance_problem(&self) -> Option<&'static str> {
        let [[a, b], [b2, c]] = self.cov;
        if ![a, b, b2, c].iter().all(|v| v.is_finite()) {
            Some("its covariance has a non-finite entry")
        } else if b != b2 {
            Some("its covariance [[a, b], [b', c]] is not symmetric (b != b')")
        } else if !(a > 0.0 && c > 0.0 && a * c - b * b > 0.0) {
            Some("its covariance is not positive definite (need a > 0, c > 0 and a c - b² > 0)")
        } else {
            None
        }
    }

    /// The lower Cholesky factor [[l11, 0], [l21, l22]] of the covariance, as (l11, l21, l22).
    fn cholesky(&self) -> (f64, f64, f64) {
        let [[a, b], [_, c]] = self.cov;
        let l11 = a.sqrt();
        let l21 = b / l11;
        (l11, l21, (c - l21 * l21).sqrt())
    }
}

/// A named mixture preset. Grids and the ring are scaled so that the mixture has unit variance per
/// axis on average (E|x|^2 / 2 = 1), the scale of SD's scaled latents, and every component's std is
/// [`SEPARATION`] times smaller than the distance to its nearest neighbour, so the modes are
/// clearly separate. The AYS paper's Table 4 mixtures ("8x8", "8x4", "6x6") are named after their
/// grids; the paper does not give their spacing or widths, so these are our choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 8 x 8 grid of equal-weight components.
    Grid8x8,
    /// 8 x 4 grid of equal-weight components.
    Grid8x4,
    /// 6 x 6 grid of equal-weight components.
    Grid6x6,
    /// 8 equal-weight components evenly spaced on a circle.
    Ring,
    /// A single standard normal N(0, I): its denoiser is c^2 / (c^2 + sigma^2) * x with c = 1.
    Gaussian,
}

/// Nearest-neighbour distance over component std in the grid and ring presets.
pub const SEPARATION: f64 = 5.0;

const PRESETS: &[(&str, Preset)] = &[
    ("8x8", Preset::Grid8x8),
    ("8x4", Preset::Grid8x4),
    ("6x6", Preset::Grid6x6),
    ("ring", Preset::Ring),
    ("gaussian", Preset::Gaussian),
];

impl Preset {
    /// The preset called `name` (`8x8`, `8x4`, `6x6`, `ring`, `gaussian`).
    pub fn from_name(name: &str) -> Result<Self, ToyError> {
        PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, p)| *p)
            .ok_or_else(|| ToyError::UnknownMixture { name: name.to_string(), accepted: Self::names().join(", ") })
    }

    /// The names of all presets.
    pub fn names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        PRESETS.iter().find(|(_, p)| *p == self).map_or("?", |(n, _)| n)
    }

    /// The mixture of this preset.
    pub fn mixture(self) -> GaussianMixture {
        match self {
            Preset::Grid8x8 => GaussianMixture::grid(8, 8),
            Preset::Grid8x4 => GaussianMixture::grid(8, 4),
            Preset::Grid6x6 => GaussianMixture::grid(6, 6),
            Preset::Ring => GaussianMixture::ring(8),
            Preset::Gaussian => GaussianMixture::gaussian(1.0),
        }
    }
}

/// A mixture of 2-D Gaussians with normalised weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GaussianMixture {
    components: Vec<Component>,
}

/// One component of the noisy marginal p_sigma at a fixed sigma: x ~ N(mu, V), V = cov + sigma² I.
struct NoisyTerm {
    /// ln w − ln 2π − ½ ln det V.
    log_norm: f64,
    mean: [f64; 2],
    /// V⁻¹ as its three distinct entries (a, b, c) of [[a, b], [b, c]].
    precision: [f64; 3],
    /// cov V⁻¹, the posterior mean's gain: E[x0 | x, k] = mu + gain (x − mu).
    gain: [[f64; 2]; 2],
}

/// log(sum(exp(logits))), with the maximum taken out first so nothing overflows or underflows to 0.
fn log_sum_exp(logits: &[f64]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
}

impl GaussianMixture {
    /// A mixture of `components`; the weights are normalised to sum to 1. Every weight must be
    /// finite and positive, every mean finite, every covariance symmetric positive definite.
    pub fn new(components: Vec<Component>) -> Result<Self, ToyError> {
        if components.is_empty() {
            return Err(ToyError::InvalidMixture { reason: "a mixture needs at least one component".into() });
        }
        for (i, c) in components.iter().enumerate() {
            let problem = if !(c.weight.is_finite() && c.weight > 0.0) {
                Some("its weight must be finite and positive")
            } else if !c.mean.iter().all(|m| m.is_finite()) {
                Some("its mean must be finite")
            } else {
                c.covariance_problem()
            };
            if let Some(problem) = problem {
                return Err(ToyError::InvalidMixture { reason: format!("component {i} ({c:?}): {problem}") });
            }
        }
        let total: f64 = components.iter().map(|c| c.weight).sum();
        Ok(Self { components: components.into_iter().map(|c| Component { weight: c.weight / total, ..c }).collect() })
    }

    /// Equal-weight components on an `nx` x `ny` grid centred at 0 (see [`Preset`] for the scale).
    pub fn grid(nx: usize, ny: usize) -> Self {
        // Per-axis variance of the grid means with spacing 1: (n^2 - 1) / 12 on each axis.
        let means_var = ((nx * nx - 1) + (ny * ny - 1)) as f64 / 24.0;
        let spacing = 1.0 / (means_var + 1.0 / (SEPARATION * SEPARATION)).sqrt();
        let std = spacing / SEPARATION;
        let centre = |i: usize, n: usize| (i as f64 - (n as f64 - 1.0) / 2.0) * spacing;
        let components = (0..nx)
            .flat_map(|i| (0..ny).map(move |j| (i, j)))
            .map(|(i, j)| Component::isotropic(1.0 / (nx * ny) as f64, [centre(i, nx), centre(j, ny)], std))
            .collect();
        Self { components }
    }

    /// `k` equal-weight components evenly spaced on a circle centred at 0 (see [`Preset`]).
    pub fn ring(k: usize) -> Self {
        // Neighbour distance on a unit circle is 2 sin(pi / k); per-axis variance is R^2/2 + std^2.
        let std_per_radius = 2.0 * (PI / k as f64).sin() / SEPARATION;
        let radius = 1.0 / (0.5 + std_per_radius * std_per_radius).sqrt();
        let components = (0..k)
            .map(|i| {
                let angle = 2.0 * PI * i as f64 / k as f64;
                Component::isotropic(
                    1.0 / k as f64,
                    [radius * angle.cos(), radius * angle.sin()],
                    radius * std_per_radius,
                )
            })
            .collect();
        Self { components }
    }

    /// A single Gaussian N(0, c^2 I).
    pub fn gaussian(c: f64) -> Self {
        Self { components: vec![Component::isotropic(1.0, [0.0, 0.0], c)] }
    }

    /// The components, with normalised weights.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The components of the noisy marginal p_sigma (the data convolved with N(0, sigma² I)).
    fn noisy_terms(&self, sigma: f64) -> Vec<NoisyTerm> {
        let s2 = sigma * sigma;
        self.components
            .iter()
            .map(|c| {
                let [[a, b], [_, d]] = c.cov;
                let (va, vd) = (a + s2, d + s2);
                let det = va * vd - b * b;
                let precision = [vd / det, -b / det, va / det];
                // cov V⁻¹ = [[a, b], [b, d]] [[p0, p1], [p1, p2]].
                let gain = [
                    [a * precision[0] + b * precision[1], a * precision[1] + b * precision[2]],
                    [b * precision[0] + d * precision[1], b * precision[1] + d * precision[2]],
                ];
                NoisyTerm { log_norm: c.weight.ln() - (2.0 * PI).ln() - 0.5 * det.ln(), mean: c.mean, precision, gain }
            })
            .collect()
    }

    /// Log-density at `x` of the noisy marginal whose components are `terms`, and the posterior
    /// mean E[x0 | x_sigma = x]. Component k contributes w_k N(x; mu_k, V_k) with
    /// V_k = cov_k + sigma² I and has posterior mean mu_k + cov_k V_k⁻¹ (x − mu_k); the
    /// responsibilities are a softmax of the log terms (log-sum-exp, so no underflow far out).
    /// `logits` is scratch space reused across calls.
    fn marginal(terms: &[NoisyTerm], x: [f64; 2], logits: &mut Vec<f64>) -> (f64, [f64; 2]) {
        logits.clear();
        logits.extend(terms.iter().map(|t| {
            let (d0, d1) = (x[0] - t.mean[0], x[1] - t.mean[1]);
            let [p0, p1, p2] = t.precision;
            t.log_norm - 0.5 * (p0 * d0 * d0 + 2.0 * p1 * d0 * d1 + p2 * d1 * d1)
        }));
        let log_p = log_sum_exp(logits);
        let mut mean = [0.0; 2];
        for (t, l) in terms.iter().zip(logits.iter()) {
            let r = (l - log_p).exp();
            let d = [x[0] - t.mean[0], x[1] - t.mean[1]];
            for (a, m) in mean.iter_mut().enumerate() {
                *m += r * (t.mean[a] + t.gain[a][0] * d[0] + t.gain[a][1] * d[1]);
            }
        }
        (log_p, mean)
    }

    /// The exact log-density of the data at `x`.
    pub fn log_density(&self, x: [f64; 2]) -> f64 {
        Self::marginal(&self.noisy_terms(0.0), x, &mut Vec::with_capacity(self.components.len())).0
    }

    /// The mean negative log-likelihood of `points` under the data density (the AYS paper's
    /// Table 4 figure; lower is better, and the data's own entropy is the floor in expectation).
    /// Samples packed tighter than the data score below that floor, so it cannot see collapse;
    /// [`Self::kl_from`] can.
    pub fn mean_nll(&self, points: &[[f64; 2]]) -> f64 {
        let terms = self.noisy_terms(0.0);
        let mut logits = Vec::with_capacity(self.components.len());
        -points.iter().map(|&x| Self::marginal(&terms, x, &mut logits).0).sum::<f64>() / points.len() as f64
    }

    /// An estimate of KL(q ‖ p) in nats from `points` drawn from q, with p this mixture: the mean
    /// NLL under p minus the k-nearest-neighbour entropy estimate of q ([`knn_entropy`],
    /// k = [`KNN_K`]). Unlike the sliced Wasserstein distance it sees blur (points between the
    /// modes raise the NLL more than the entropy) and, unlike the NLL, collapse (points packed
    /// onto the modes lower the entropy); 0 only for q = p, up to the estimator's sampling
    /// noise and small-sample bias. NaN if a point is not finite.
    pub fn kl_from(&self, points: &[[f64; 2]]) -> f64 {
        self.mean_nll(points) - knn_entropy(points, KNN_K)
    }

    /// The exact denoiser D(x, sigma) = E[x0 | x0 + sigma * eps = x] for each point.
    pub fn denoise_points(&self, points: &[[f64; 2]], sigma: f64) -> Vec<[f64; 2]> {
        let terms = self.noisy_terms(sigma);
        let mut logits = Vec::with_capacity(self.components.len());
        points.iter().map(|&x| Self::marginal(&terms, x, &mut logits).1).collect()
    }

    /// `n` exact draws from the data distribution: a component by weight, then its Gaussian.
    pub fn sample(&self, n: usize, rng: &mut ToyRng) -> Vec<[f64; 2]> {
        (0..n)
            .map(|_| {
                let u = rng.uniform();
                let mut acc = 0.0;
                // The last component takes any u the rounded cumulative sum does not reach; the
                // constructors never build an empty mixture, so the index exists.
                let c = self
                    .components
                    .iter()
                    .find(|c| {
                        acc += c.weight;
                        u < acc
                    })
                    .unwrap_or(&self.components[self.components.len() - 1]);
                // x = mu + L z with L the Cholesky factor (for std² I: l11 = l22 = std, l21 = 0).
                let (l11, l21, l22) = c.cholesky();
                let (z0, z1) = (rng.normal(), rng.normal());
                [c.mean[0] + l11 * z0, c.mean[1] + (l21 * z0 + l22 * z1)]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three components with unequal weights, stds and overlap: exercises every term of the
    /// posterior. Wide enough that a quadrature grid resolves them.
    fn uneven() -> GaussianMixture {
        GaussianMixture::new(vec![
            Component::isotropic(0.5, [-1.0, 0.3], 0.35),
            Component::isotropic(0.3, [0.8, -0.6], 0.5),
            Component::isotropic(0.2, [0.4, 1.1], 0.3),
        ])
        .unwrap()
    }

    /// Midpoint-rule integrals over [-l, l]^2 with step h of p(x0) N(x; x0, sigma^2) times 1, x0_a.
    fn brute_force_posterior(m: &GaussianMixture, x: [f64; 2], sigma: f64) -> (f64, [f64; 2]) {
        let (l, h) = (6.0, 0.02);
        let k = (2.0 * l / h) as usize;
        let (mut z, mut s) = (0.0, [0.0; 2]);
        for i in 0..k {
            for j in 0..k {
                let x0 = [-l + (i as f64 + 0.5) * h, -l + (j as f64 + 0.5) * h];
                let lik = (-((x[0] - x0[0]).powi(2) + (x[1] - x0[1]).powi(2)) / (2.0 * sigma * sigma)).exp()
                    / (2.0 * PI * sigma * sigma);
                let w = m.log_density(x0).exp() * lik * h * h;
                z += w;
                s[0] += w * x0[0];
                s[1] += w * x0[1];
            }
        }
        (z, [s[0] / z, s[1] / z])
    }

    // Tolerance 1e-7 abs: on Gaussian integrands the midpoint rule's error is about
    // exp(-2 pi^2 s^2 / h^2) for width s and step h; with h = 0.02 and s >= 0.1 that is ~1e-200,
    // so the bound only has to cover the truncation at |x0| = 6 and rounding.
    #[test]
    fn denoiser_matches_brute_force_posterior_mean() {
        let m = uneven();
        for &sigma in &[0.1, 0.4, 1.0, 3.0] {
            for &x in &[[0.0, 0.0], [-1.2, 0.5], [0.9, -0.2], [2.0, 2.0]] {
                let (z, want) = brute_force_posterior(&m, x, sigma);
                let got = m.denoise_points(&[x], sigma)[0];
                let log_p_sigma = GaussianMixture::marginal(&m.noisy_terms(sigma), x, &mut Vec::new()).0;
                for a in 0..2 {
                    assert!((got[a] - want[a]).abs() < 1e-7, "sigma {sigma} x {x:?}: {got:?} vs {want:?}");
                }
                // The same quadrature checks the noisy marginal density (the normaliser).
                assert!((log_p_sigma - z.ln()).abs() < 1e-7, "log p_sigma {log_p_sigma} vs {}", z.ln());
            }
        }
    }

    /// Unequal weights, anisotropic and correlated covariances (one nearly degenerate), overlapping.
    pub(crate) fn anisotropic() -> GaussianMixture {
        GaussianMixture::new(vec![
            Component { weight: 0.55, mean: [-0.9, 0.2], cov: [[0.30, 0.12], [0.12, 0.08]] },
            Component { weight: 0.3, mean: [0.7, -0.5], cov: [[0.05, -0.04], [-0.04, 0.2]] },
            Component { weight: 0.15, mean: [0.5, 1.0], cov: [[0.09, 0.0], [0.0, 0.01]] },
        ])
        .unwrap()
    }

    /// The density of `anisotropic()` written out independently of the module: each component's
    /// 2 x 2 Gaussian through its explicit inverse and determinant.
    fn anisotropic_density(x: [f64; 2]) -> f64 {
        let comps: [(f64, [f64; 2], [f64; 3]); 3] = [
            (0.55, [-0.9, 0.2], [0.30, 0.12, 0.08]),
            (0.3, [0.7, -0.5], [0.05, -0.04, 0.2]),
            (0.15, [0.5, 1.0], [0.09, 0.0, 0.01]),
        ];
        comps
            .iter()
            .map(|(w, mu, [a, b, c])| {
                let det = a * c - b * b;
                let (d0, d1) = (x[0] - mu[0], x[1] - mu[1]);
                let q = (c * d0 * d0 - 2.0 * b * d0 * d1 + a * d1 * d1) / det;
                w * (-0.5 * q).exp() / (2.0 * PI * det.sqrt())
            })
            .sum()
    }

    // The anisotropic posterior mean against a numerical posterior mean: the midpoint rule over
    // x0 in [-6, 6]² with step 0.01 of p(x0) N(x; x0, sigma² I) (p written out above, not the
    // module's). Tolerance 1e-7 abs: the narrowest widths are std 0.1 (data) and sigma 0.05
    // (likelihood), so the grid error ~exp(-2 pi² s² / h²) is below 1e-200; the truncation at
    // |x0| = 6 is over 8 std of the widest direction (0.59) from every mode, ~1e-16 of the mass.
    #[test]
    fn anisotropic_denoiser_matches_numerical_posterior_mean() {
        let m = anisotropic();
        let (l, h) = (6.0, 0.01);
        let k = (2.0 * l / h) as usize;
        let grid: Vec<([f64; 2], f64)> = (0..k)
            .flat_map(|i| (0..k).map(move |j| [-l + (i as f64 + 0.5) * h, -l + (j as f64 + 0.5) * h]))
            .map(|x0| (x0, anisotropic_density(x0)))
            .filter(|(_, p)| *p > 1e-300)
            .collect();
        for &sigma in &[0.05, 0.3, 1.0, 4.0] {
            for &x in &[[0.0, 0.0], [-1.2, 0.5], [0.9, -0.2], [0.5, 1.3], [2.0, -2.5]] {
                let (mut z, mut s) = (0.0, [0.0; 2]);
                for (x0, p) in &grid {
                    let d2 = (x[0] - x0[0]).powi(2) + (x[1] - x0[1]).powi(2);
                    let w = p * (-d2 / (2.0 * sigma * sigma)).exp();
                    z += w;
                    s[0] += w * x0[0];
                    s[1] += w * x0[1];
                }
                let want = [s[0] / z, s[1] / z];
                let got = m.denoise_points(&[x], sigma)[0];
                for a in 0..2 {
                    assert!((got[a] - want[a]).abs() < 1e-7, "sigma {sigma} x {x:?}: {got:?} vs {want:?}");
                }
            }
        }
        // The density itself, and sampling with the Cholesky factor (second moments of 200k
        // draws: standard errors ~0.002, so 0.01 is 5 of them).
        for x in [[0.0, 0.0], [-0.9, 0.25], [0.6, -0.4]] {
            let (got, want) = (m.log_density(x), anisotropic_density(x).ln());
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        let pts = m.sample(200_000, &mut ToyRng::new(3, crate::Stream::Reference));
        let n = pts.len() as f64;
        let mean: [f64; 2] = [0, 1].map(|a| m.components().iter().map(|c| c.weight * c.mean[a]).sum());
        for (a, b) in [(0, 0), (0, 1), (1, 1)] {
            let want: f64 =
                m.components().iter().map(|c| c.weight * (c.cov[a][b] + c.mean[a] * c.mean[b])).sum::<f64>()
                    - mean[a] * mean[b];
            let got = pts.iter().map(|p| (p[a] - mean[a]) * (p[b] - mean[b])).sum::<f64>() / n;
            assert!((got - want).abs() < 0.01, "cov[{a}][{b}] {got} vs {want}");
        }
    }

    // Exact up to rounding (rel 1e-14): one component, so the softmax is exactly 1.
    #[test]
    fn single_gaussian_denoiser_is_linear_shrinkage() {
        let c = 1.7;
        let m = GaussianMixture::gaussian(c);
        for &sigma in &[0.0, 0.03, 1.0, 14.6, 80.0] {
            let x = [2.5, -0.7];
            let got = m.denoise_points(&[x], sigma)[0];
            let k = c * c / (c * c + sigma * sigma);
            for a in 0..2 {
                assert!((got[a] - k * x[a]).abs() <= 1e-14 * x[a].abs(), "sigma {sigma}: {got:?}");
            }
        }
    }

    // The denoiser at sigma = 0 is the identity (each component shrinks by std^2/std^2 = 1).
    #[test]
    fn denoiser_at_zero_noise_is_identity() {
        let m = Preset::Grid8x8.mixture();
        let x = [0.123, -0.456];
        let got = m.denoise_points(&[x], 0.0)[0];
        assert!((got[0] - x[0]).abs() < 1e-15 && (got[1] - x[1]).abs() < 1e-15);
    }

    // Far from all modes every unnormalised density underflows to 0 (exp(-7e5)), so a naive
    // ratio would be 0/0; log-sum-exp gives the corner component responsibility 1 and the
    // posterior mean of that component alone.
    #[test]
    fn denoiser_is_stable_far_from_the_data() {
        let m = Preset::Grid8x8.mixture();
        let (x, sigma) = ([60.0, -60.0], 0.01);
        let c = m.components().iter().find(|c| c.mean[0] > 1.5 && c.mean[1] < -1.5).unwrap();
        let shrink = c.cov[0][0] / (c.cov[0][0] + sigma * sigma);
        let got = m.denoise_points(&[x], sigma)[0];
        for a in 0..2 {
            let want = c.mean[a] + shrink * (x[a] - c.mean[a]);
            assert!((got[a] - want).abs() < 1e-12, "{got:?}, want {want}");
        }
        assert!(m.log_density([1e3, 1e3]).is_finite());
    }

    // The density integrates to 1 (midpoint rule, step 0.02 against component stds >= 0.087: error
    // ~exp(-2 pi^2 (0.087 / 0.02)^2) ~ 1e-160; tolerance 1e-9 covers tail truncation at |x| = 4).
    #[test]
    fn log_density_is_normalised() {
        for preset in [Preset::Grid8x8, Preset::Ring] {
            let m = preset.mixture();
            let (l, h) = (4.0, 0.02);
            let k = (2.0 * l / h) as usize;
            let mut total = 0.0;
            for i in 0..k {
                for j in 0..k {
                    total += m.log_density([-l + (i as f64 + 0.5) * h, -l + (j as f64 + 0.5) * h]).exp() * h * h;
                }
            }
            assert!((total - 1.0).abs() < 1e-9, "{}: integral {total}", preset.name());
        }
    }

    #[test]
    fn presets_have_unit_variance_per_axis() {
        for name in Preset::names() {
            let m = Preset::from_name(name).unwrap().mixture();
            let w: f64 = m.components().iter().map(|c| c.weight).sum();
            let mean: [f64; 2] = [0, 1].map(|a| m.components().iter().map(|c| c.weight * c.mean[a]).sum());
            let second: f64 = m
                .components()
                .iter()
                .map(|c| c.weight * (c.mean[0].powi(2) + c.mean[1].powi(2) + c.cov[0][0] + c.cov[1][1]))
                .sum();
            assert!((w - 1.0).abs() < 1e-12, "{name}: weights sum to {w}");
            assert!(mean[0].abs() < 1e-12 && mean[1].abs() < 1e-12, "{name}: mean {mean:?}");
            assert!((second / 2.0 - 1.0).abs() < 1e-12, "{name}: E|x|^2/2 = {}", second / 2.0);
        }
    }

    // Sample moments of 200k draws: standard errors are about 0.003 for the mean and the
    // variance of a unit-variance axis, so 0.02 is over 6 standard errors.
    #[test]
    fn exact_sampling_matches_moments() {
        let m = uneven();
        let pts = m.sample(200_000, &mut ToyRng::new(7, crate::Stream::Reference));
        let n = pts.len() as f64;
        for a in 0..2 {
            let want_mean: f64 = m.components().iter().map(|c| c.weight * c.mean[a]).sum();
            let want_second: f64 = m.components().iter().map(|c| c.weight * (c.mean[a].powi(2) + c.cov[a][a])).sum();
            let mean = pts.iter().map(|p| p[a]).sum::<f64>() / n;
            let second = pts.iter().map(|p| p[a] * p[a]).sum::<f64>() / n;
            assert!((mean - want_mean).abs() < 0.02, "axis {a}: mean {mean} vs {want_mean}");
            assert!((second - want_second).abs() < 0.02, "axis {a}: E x^2 {second} vs {want_second}");
        }
    }

    #[test]
    fn bad_mixtures_and_names_are_errors() {
        let err = Preset::from_name("9x9").unwrap_err().to_string();
        assert!(err.contains("9x9") && err.contains("8x8") && err.contains("ring"), "{err}");
        assert!(GaussianMixture::new(vec![]).is_err());
        let bad = Component::isotropic(1.0, [0.0, 0.0], 0.0);
        assert!(GaussianMixture::new(vec![bad]).is_err());
        assert!(GaussianMixture::new(vec![Component::isotropic(-1.0, [0.0, 0.0], 1.0)]).is_err());
        for (cov, needle) in [
            ([[1.0, 2.0], [2.0, 1.0]], "positive definite"),
            ([[1.0, 0.5], [0.4, 1.0]], "symmetric"),
            ([[-1.0, 0.0], [0.0, 1.0]], "positive definite"),
            ([[1.0, f64::NAN], [f64::NAN, 1.0]], "non-finite"),
        ] {
            let err = GaussianMixture::new(vec![Component { weight: 1.0, mean: [0.0, 0.0], cov }]).unwrap_err();
            assert!(err.to_string().contains(needle), "{cov:?}: {err}");
        }
    }
}
