//! 2-D isotropic Gaussian mixtures: presets, exact log-density, exact sampling, and the exact
//! posterior mean E[x0 | x_sigma] under k-diffusion's forward process x_sigma = x0 + sigma * eps.

use std::f64::consts::PI;

use serde::Serialize;

use crate::rng::ToyRng;
use crate::ToyError;

/// One mixture component: weight (normalised by [`GaussianMixture::new`]), mean and the standard
/// deviation of each axis (the component is isotropic).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Component {
    pub weight: f64,
    pub mean: [f64; 2],
    pub std: f64,
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

/// A mixture of isotropic 2-D Gaussians with normalised weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GaussianMixture {
    components: Vec<Component>,
}

/// log(sum(exp(logits))), with the maximum taken out first so nothing overflows or underflows to 0.
fn log_sum_exp(logits: &[f64]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
}

impl GaussianMixture {
    /// A mixture of `components`; the weights are normalised to sum to 1. Every weight must be
    /// finite and positive, every std finite and positive, every mean finite.
    pub fn new(components: Vec<Component>) -> Result<Self, ToyError> {
        if components.is_empty() {
            return Err(ToyError::InvalidMixture { reason: "a mixture needs at least one component".into() });
        }
        if let Some((i, c)) = components.iter().enumerate().find(|(_, c)| {
            !(c.weight.is_finite()
                && c.weight > 0.0
                && c.std.is_finite()
                && c.std > 0.0
                && c.mean.iter().all(|m| m.is_finite()))
        }) {
            return Err(ToyError::InvalidMixture {
                reason: format!("component {i} ({c:?}) needs a finite positive weight and std and a finite mean"),
            });
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
            .map(|(i, j)| Component { weight: 1.0 / (nx * ny) as f64, mean: [centre(i, nx), centre(j, ny)], std })
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
                Component {
                    weight: 1.0 / k as f64,
                    mean: [radius * angle.cos(), radius * angle.sin()],
                    std: radius * std_per_radius,
                }
            })
            .collect();
        Self { components }
    }

    /// A single Gaussian N(0, c^2 I).
    pub fn gaussian(c: f64) -> Self {
        Self { components: vec![Component { weight: 1.0, mean: [0.0, 0.0], std: c }] }
    }

    /// The components, with normalised weights.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Log-density at `x` of the data convolved with N(0, sigma^2 I), and the posterior mean
    /// E[x0 | x_sigma = x]. Each component k contributes w_k N(x; mu_k, v_k I) with
    /// v_k = std_k^2 + sigma^2 and has posterior mean mu_k + std_k^2 / v_k (x - mu_k); the
    /// responsibilities are a softmax of the log terms (log-sum-exp, so no underflow far out).
    /// `logits` is scratch space reused across calls.
    fn marginal(&self, x: [f64; 2], sigma: f64, logits: &mut Vec<f64>) -> (f64, [f64; 2]) {
        logits.clear();
        logits.extend(self.components.iter().map(|c| {
            let v = c.std * c.std + sigma * sigma;
            let d2 = (x[0] - c.mean[0]).powi(2) + (x[1] - c.mean[1]).powi(2);
            c.weight.ln() - (2.0 * PI * v).ln() - d2 / (2.0 * v)
        }));
        let log_p = log_sum_exp(logits);
        let mut mean = [0.0; 2];
        for (c, l) in self.components.iter().zip(logits.iter()) {
            let r = (l - log_p).exp();
            let shrink = c.std * c.std / (c.std * c.std + sigma * sigma);
            for a in 0..2 {
                mean[a] += r * (c.mean[a] + shrink * (x[a] - c.mean[a]));
            }
        }
        (log_p, mean)
    }

    /// The exact log-density of the data at `x`.
    pub fn log_density(&self, x: [f64; 2]) -> f64 {
        self.marginal(x, 0.0, &mut Vec::with_capacity(self.components.len())).0
    }

    /// The mean negative log-likelihood of `points` under the data density (the AYS paper's
    /// Table 4 figure; lower is better, and the data's own entropy is the floor in expectation).
    pub fn mean_nll(&self, points: &[[f64; 2]]) -> f64 {
        let mut logits = Vec::with_capacity(self.components.len());
        -points.iter().map(|&x| self.marginal(x, 0.0, &mut logits).0).sum::<f64>() / points.len() as f64
    }

    /// The exact denoiser D(x, sigma) = E[x0 | x0 + sigma * eps = x] for each point.
    pub fn denoise_points(&self, points: &[[f64; 2]], sigma: f64) -> Vec<[f64; 2]> {
        let mut logits = Vec::with_capacity(self.components.len());
        points.iter().map(|&x| self.marginal(x, sigma, &mut logits).1).collect()
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
                [c.mean[0] + c.std * rng.normal(), c.mean[1] + c.std * rng.normal()]
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
            Component { weight: 0.5, mean: [-1.0, 0.3], std: 0.35 },
            Component { weight: 0.3, mean: [0.8, -0.6], std: 0.5 },
            Component { weight: 0.2, mean: [0.4, 1.1], std: 0.3 },
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
                let log_p_sigma = m.marginal(x, sigma, &mut Vec::new()).0;
                for a in 0..2 {
                    assert!((got[a] - want[a]).abs() < 1e-7, "sigma {sigma} x {x:?}: {got:?} vs {want:?}");
                }
                // The same quadrature checks the noisy marginal density (the normaliser).
                assert!((log_p_sigma - z.ln()).abs() < 1e-7, "log p_sigma {log_p_sigma} vs {}", z.ln());
            }
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
        let shrink = c.std * c.std / (c.std * c.std + sigma * sigma);
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
                .map(|c| c.weight * (c.mean[0].powi(2) + c.mean[1].powi(2) + 2.0 * c.std * c.std))
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
            let want_second: f64 = m.components().iter().map(|c| c.weight * (c.mean[a].powi(2) + c.std * c.std)).sum();
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
        let bad = Component { weight: 1.0, mean: [0.0, 0.0], std: 0.0 };
        assert!(GaussianMixture::new(vec![bad]).is_err());
        assert!(GaussianMixture::new(vec![Component { weight: -1.0, std: 1.0, ..bad }]).is_err());
    }
}
