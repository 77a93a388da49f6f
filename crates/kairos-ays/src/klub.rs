//! The KLUB objective (paper §3.2-3.3) and its importance-sampled Monte Carlo estimate.
//!
//! Knots are given as kairos schedules are, descending (σ_max first). All of them must be finite,
//! positive and strictly decreasing; the range they span is where the KLUB is measured (a
//! sampler's final step to σ = 0 lies outside it).

use candle_core::Tensor;
use kairos_sampler::Denoiser;
use kairos_toy::ToyRng;
use serde::{Deserialize, Serialize};

use crate::data::{normal_like, row_scale, row_sq_norms, DataSource};
use crate::{AysError, Result};

/// Sizes of one Monte Carlo estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlubOptions {
    /// Number of noise levels t drawn from the proposal (the estimate's independent groups).
    pub t_samples: usize,
    /// Data samples x0 per noise level: each level is one denoiser call of this batch size, so
    /// large batches suit networks that are cheap per sample.
    pub batch: usize,
    /// The proposal's data scale c (paper: 0.5, for data scaled to about unit variance).
    pub c: f64,
}

impl Default for KlubOptions {
    fn default() -> Self {
        Self { t_samples: 1024, batch: 4, c: 0.5 }
    }
}

impl KlubOptions {
    fn validate(&self) -> Result<()> {
        if self.t_samples < 2 {
            return Err(AysError::option(
                "t_samples",
                self.t_samples,
                "at least 2 (the standard error needs two groups)",
            ));
        }
        if self.batch == 0 {
            return Err(AysError::option("batch", self.batch, "at least 1"));
        }
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(AysError::option("c", self.c, "a finite positive data scale (paper: 0.5)"));
        }
        Ok(())
    }
}

/// A Monte Carlo estimate with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub stderr: f64,
}

impl Estimate {
    /// Mean and standard error of i.i.d. group values (at least 2).
    pub fn of(groups: &[f64]) -> Self {
        let n = groups.len() as f64;
        let mean = groups.iter().sum::<f64>() / n;
        let var = groups.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Self { value: mean, stderr: (var / n).sqrt() }
    }

    /// The estimate of `a - b` from paired group values (same random numbers for both).
    pub fn difference(a: &[f64], b: &[f64]) -> Self {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Self::of(&d)
    }
}

/// ∫ du / (2u²) · (1/(u+k) - β) up to a constant, u = t²; in t this is the antiderivative of
/// (1/t³)(1/(t²+k) - β). Written as ½[(β - 1/k)/u + ln(1 + k/u)/k²] so that no two large terms
/// cancel at small u.
fn antiderivative(u: f64, beta: f64, k: f64) -> f64 {
    0.5 * ((beta - 1.0 / k) / u + (k / u).ln_1p() / (k * k))
}

/// ∫_lo^up (1/t³)(1/(t²+k) - 1/(up²+k)) dt, in closed form.
fn piece_mass(lo: f64, up: f64, k: f64) -> f64 {
    let beta = 1.0 / (up * up + k);
    antiderivative(up * up, beta, k) - antiderivative(lo * lo, beta, k)
}

/// The closed-form KLUB of a schedule on Gaussian data N(0, c² I) in `dims` dimensions with the
/// exact denoiser: Σ_intervals d c⁴ ∫_a^b (1/t³)(1/(t²+c²) - 1/(b²+c²)) dt (module docs of the
/// crate: the paper's Lemma 3.3 with the bracket unsquared). `knots` descending, positive.
pub fn gaussian_klub(c: f64, dims: usize, knots: &[f64]) -> Result<f64> {
    let asc = ascending(knots)?;
    let k = c * c;
    Ok(asc.windows(2).map(|w| dims as f64 * k * k * piece_mass(w[0], w[1], k)).sum())
}

/// The knots ascending, after checking them.
fn ascending(knots: &[f64]) -> Result<Vec<f64>> {
    let bad = |reason: &str| AysError::InvalidKnots { knots: knots.to_vec(), reason: reason.to_string() };
    if knots.len() < 2 {
        return Err(bad("need at least 2 knots"));
    }
    if knots.iter().any(|k| !(k.is_finite() && *k > 0.0)) {
        return Err(bad("every knot must be finite and positive (the KLUB weight is 1/t³)"));
    }
    if knots.windows(2).any(|w| w[1] >= w[0]) {
        return Err(bad("knots must be strictly decreasing (σ_max first)"));
    }
    Ok(knots.iter().rev().copied().collect())
}

/// The importance-sampling proposal over a span of knots t_0 < ... < t_m: on each interval
/// [t_j, t_{j+1}] the density is ∝ π~(t) = (1/t³)(1/(t²+k) - 1/(t_{j+1}²+k)), k = c² (the shape of
/// the Gaussian integrand, paper Eq. 15 unsquared); the normaliser is the sum of the closed-form
/// piece masses, so q(t) is exact for every span.
struct Proposal {
    knots: Vec<f64>,
    cumulative: Vec<f64>,
    k: f64,
}

/// One draw: the noise level, the index of its interval's upper knot, and q(t).
struct Draw {
    t: f64,
    upper: usize,
    q: f64,
}

impl Proposal {
    fn new(knots: Vec<f64>, c: f64) -> Self {
        let k = c * c;
        let mut acc = 0.0;
        let cumulative = knots
            .windows(2)
            .map(|w| {
                acc += piece_mass(w[0], w[1], k);
                acc
            })
            .collect();
        Self { knots, cumulative, k }
    }

    fn total(&self) -> f64 {
        self.cumulative[self.cumulative.len() - 1]
    }

    /// Inverse-CDF draw from two uniforms in [0, 1): one picks the interval by mass, the other
    /// the point inside it (bisection in log t on the closed-form CDF).
    fn draw(&self, u_piece: f64, u_t: f64) -> Draw {
        let target = u_piece * self.total();
        let j = self.cumulative.partition_point(|&c| c <= target).min(self.cumulative.len() - 1);
        let (lo, up) = (self.knots[j], self.knots[j + 1]);
        let beta = 1.0 / (up * up + self.k);
        let f_lo = antiderivative(lo * lo, beta, self.k);
        let want = u_t * (antiderivative(up * up, beta, self.k) - f_lo);
        let (mut a, mut b) = (lo.ln(), up.ln());
        for _ in 0..100 {
            let mid = 0.5 * (a + b);
            let t = mid.exp();
            if antiderivative(t * t, beta, self.k) - f_lo < want {
                a = mid;
            } else {
                b = mid;
            }
            if b - a < 1e-15 {
                break;
            }
        }
        let t = (0.5 * (a + b)).exp().clamp(lo, up);
        let density = (1.0 / t.powi(3)) * (1.0 / (t * t + self.k) - beta);
        Draw { t, upper: j + 1, q: density.max(0.0) / self.total() }
    }
}

/// How a sampler uses the denoiser over a step [a, b] of its schedule: the KLUB measures
/// E ∫_a^b ||D(x_t, t) − D̂(t)||² / t³ dt for the solver's stand-in D̂ of the true denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// D̂ = D(x_b, b) held over the step: stochastic DDIM / k-diffusion `euler_ancestral`
    /// (paper Eq. 9; `euler` is its deterministic counterpart).
    Euler,
    /// DPM-Solver++(2M), k-diffusion `sample_dpmpp_2m`: D̂ is the linear extrapolation in
    /// λ = −ln σ of the step's and the previous step's denoised values,
    /// D̂(t) = D_b + ln(b/t) / ln(c/b) · (D_b − D_c) with c the knot above b (at the midpoint
    /// λ_b + h/2 this is k-diffusion's `denoised_d`). The first step (no previous value) and
    /// the schedule's last step (to σ = 0, which 2M takes first-order) hold D_b as Euler does.
    Dpmpp2m,
}

impl Solver {
    /// The solver called `name` (k-diffusion names): `euler` or `dpmpp_2m`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "euler" => Ok(Self::Euler),
            "dpmpp_2m" => Ok(Self::Dpmpp2m),
            _ => Err(AysError::option("solver", name, "euler or dpmpp_2m")),
        }
    }

    /// The k-diffusion name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::Dpmpp2m => "dpmpp_2m",
        }
    }
}

/// A stretch of a schedule whose KLUB is estimated: its intervals, and for
/// [`Solver::Dpmpp2m`] where it sits in the whole schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The stretch's knots, descending.
    pub knots: Vec<f64>,
    /// The schedule's knot just above `knots[0]`, if any: where DPM-Solver++(2M) took the
    /// previous denoised value of the stretch's first step. `None` for a stretch that starts
    /// at σ_max (its first step is first-order).
    pub above: Option<f64>,
    /// Whether the stretch's last interval is the schedule's last step (first-order in 2M).
    pub last: bool,
}

impl Span {
    /// A whole schedule.
    pub fn whole(knots: &[f64]) -> Self {
        Self { knots: knots.to_vec(), above: None, last: true }
    }

    /// The intervals `from..to` of the schedule `knots` (interval j from knots[j] down to
    /// knots[j + 1]).
    pub fn of(knots: &[f64], from: usize, to: usize) -> Self {
        Self {
            knots: knots[from..=to].to_vec(),
            above: from.checked_sub(1).map(|j| knots[j]),
            last: to + 1 == knots.len(),
        }
    }
}

/// The per-group estimates of one span under each solver's stand-in (see
/// [`KlubEstimator::paired_solvers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SolverGroups {
    /// [`Solver::Euler`]: the paper's KLUB.
    pub euler: Vec<f64>,
    /// [`Solver::Dpmpp2m`].
    pub dpmpp_2m: Vec<f64>,
}

impl SolverGroups {
    /// The groups of `solver`.
    pub fn of(&self, solver: Solver) -> &[f64] {
        match solver {
            Solver::Euler => &self.euler,
            Solver::Dpmpp2m => &self.dpmpp_2m,
        }
    }
}

/// The Monte Carlo KLUB of schedules for one denoiser and data source.
pub struct KlubEstimator<'a> {
    denoiser: &'a mut dyn Denoiser,
    data: &'a mut dyn DataSource,
    options: KlubOptions,
}

impl<'a> KlubEstimator<'a> {
    /// An estimator of the KLUB of `denoiser` on `data`.
    pub fn new(denoiser: &'a mut dyn Denoiser, data: &'a mut dyn DataSource, options: KlubOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { denoiser, data, options })
    }

    /// The sizes of each estimate.
    pub fn options(&self) -> KlubOptions {
        self.options
    }

    /// Sets the sizes of the following estimates.
    pub fn set_options(&mut self, options: KlubOptions) -> Result<()> {
        options.validate()?;
        self.options = options;
        Ok(())
    }

    /// The KLUB of `knots` (descending) with its standard error, from draws of `rng`.
    pub fn schedule(&mut self, knots: &[f64], rng: &mut ToyRng) -> Result<Estimate> {
        let groups = self.paired(&[knots.to_vec()], rng)?;
        Ok(Estimate::of(&groups[0]))
    }

    /// The per-group KLUB estimates of every span (each a descending knot list covering its own
    /// range) under common random numbers: the same x0, noises and uniforms for all spans, so
    /// group g of one span and group g of another are paired. Each span's groups are i.i.d.
    /// unbiased estimates of its KLUB: [`Estimate::of`] gives value and error,
    /// [`Estimate::difference`] the paired difference of two spans.
    pub fn paired(&mut self, spans: &[Vec<f64>], rng: &mut ToyRng) -> Result<Vec<Vec<f64>>> {
        let spans: Vec<Span> = spans.iter().map(|k| Span::whole(k)).collect();
        Ok(self.draw(&spans, false, rng)?.into_iter().map(|g| g.euler).collect())
    }

    /// [`Self::paired`] under both solvers' stand-ins at once, on spans that may be stretches
    /// of a schedule. The 2M bound costs one more denoiser call per interval (at the knot
    /// above it, on x_c ~ p(x_c | x_b) from the forward process, as the paper draws x_b). The
    /// extra noise is drawn after the rest, so for whole schedules the Euler groups equal
    /// [`Self::paired`]'s from the same `rng`.
    pub fn paired_solvers(&mut self, spans: &[Span], rng: &mut ToyRng) -> Result<Vec<SolverGroups>> {
        self.draw(spans, true, rng)
    }

    /// The shared draws, then each span's groups (the 2M ones only if `dpmpp_2m`).
    fn draw(&mut self, spans: &[Span], dpmpp_2m: bool, rng: &mut ToyRng) -> Result<Vec<SolverGroups>> {
        let proposals = spans
            .iter()
            .map(|s| Ok(Proposal::new(ascending(&s.knots)?, self.options.c)))
            .collect::<Result<Vec<_>>>()?;
        let KlubOptions { t_samples, batch, .. } = self.options;
        let x0 = self.data.sample(t_samples * batch, rng)?;
        if x0.rank() == 0 || x0.dim(0)? != t_samples * batch {
            return Err(AysError::option(
                "data",
                format!("{:?}", x0.shape()),
                format!("{} samples along dim 0", t_samples * batch),
            ));
        }
        let z1 = normal_like(&x0, rng)?;
        let z2 = normal_like(&x0, rng)?;
        let uniforms: Vec<(f64, f64)> = (0..t_samples).map(|_| (rng.uniform(), rng.uniform())).collect();
        // Drawn last, so Euler-only estimates keep the draws they had before the 2M bound.
        let z3 = if dpmpp_2m { Some(normal_like(&x0, rng)?) } else { None };
        let noise = Noise { x0: &x0, z1: &z1, z2: &z2, z3: z3.as_ref() };
        spans.iter().zip(&proposals).map(|(s, p)| self.groups(s, p, &uniforms, &noise)).collect()
    }

    /// Group values of one span: for group g with t_g ~ q, the mean over its `batch` rows of
    /// ||D(x_t, t_g) - D̂||² / t_g³ / q(t_g), for each solver's D̂ ([`Solver`]).
    fn groups(
        &mut self,
        span: &Span,
        p: &Proposal,
        uniforms: &[(f64, f64)],
        noise: &Noise<'_>,
    ) -> Result<SolverGroups> {
        let Noise { x0, z1, z2, z3 } = *noise;
        let batch = self.options.batch;
        let draws: Vec<Draw> = uniforms.iter().map(|&(a, b)| p.draw(a, b)).collect();
        let per_row = |f: &dyn Fn(&Draw) -> f64| {
            draws.iter().flat_map(|d| std::iter::repeat_n(f(d), batch)).collect::<Vec<f64>>()
        };
        let x_t = (x0 + z1.broadcast_mul(&row_scale(&per_row(&|d| d.t), x0)?)?)?;
        let up_std = per_row(&|d| (p.knots[d.upper].powi(2) - d.t * d.t).max(0.0).sqrt());
        let x_up = (&x_t + z2.broadcast_mul(&row_scale(&up_std, x0)?)?)?;

        let mut d_t = Vec::with_capacity(draws.len());
        for (g, d) in draws.iter().enumerate() {
            d_t.push(self.denoiser.denoise(&x_t.narrow(0, g * batch, batch)?, d.t)?.denoised);
        }
        let d_t = Tensor::cat(&d_t, 0)?;

        // One call per distinct upper knot, on the rows whose interval ends there (and for 2M
        // one at the knot above it, on x_c = x_up + sqrt(c² − up²) z3).
        let mut sq = vec![0.0; draws.len() * batch];
        let mut sq_2m = if z3.is_some() { vec![0.0; draws.len() * batch] } else { Vec::new() };
        for upper in 1..p.knots.len() {
            let rows: Vec<u32> = draws
                .iter()
                .enumerate()
                .filter(|(_, d)| d.upper == upper)
                .flat_map(|(g, _)| (g * batch..(g + 1) * batch).map(|r| r as u32))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let up = p.knots[upper];
            let idx = Tensor::from_vec(rows.clone(), rows.len(), x0.device())?;
            let x_b = x_up.index_select(&idx, 0)?;
            let d_up = self.denoiser.denoise(&x_b, up)?.denoised;
            let d_here = d_t.index_select(&idx, 0)?;
            let diff = (&d_here - &d_up)?;
            for (r, v) in rows.iter().zip(row_sq_norms(&diff)?) {
                sq[*r as usize] = v;
            }
            let Some(z3) = z3 else { continue };
            // The previous step's knot: the next one up in the span, or the one above it; none
            // on the schedule's first step, and the last step is first-order.
            let above = p.knots.get(upper + 1).copied().or(span.above);
            let first_order = above.is_none() || (span.last && upper == 1);
            let values = match above {
                Some(c) if !first_order => {
                    let x_c = (&x_b + (z3.index_select(&idx, 0)? * (c * c - up * up).sqrt())?)?;
                    let d_c = self.denoiser.denoise(&x_c, c)?.denoised;
                    // D̂(t) = D_b + w(t) (D_b − D_c), w = ln(b/t) / ln(c/b), per row.
                    let w: Vec<f64> =
                        rows.iter().map(|&r| (up / draws[r as usize / batch].t).ln() / (c / up).ln()).collect();
                    let slope = (&d_up - d_c)?;
                    let extrapolated = (&d_up + slope.broadcast_mul(&row_scale(&w, &slope)?)?)?;
                    row_sq_norms(&(d_here - extrapolated)?)?
                }
                _ => row_sq_norms(&diff)?,
            };
            for (r, v) in rows.iter().zip(values) {
                sq_2m[*r as usize] = v;
            }
        }
        let weigh = |sq: &[f64]| -> Vec<f64> {
            draws
                .iter()
                .enumerate()
                .map(|(g, d)| {
                    // q(t) = 0 only at t = up (a rounding edge), where x_up = x_t at the same σ
                    // and the integrand is 0 too.
                    if d.q <= 0.0 || sq.is_empty() {
                        return 0.0;
                    }
                    let mean_sq = sq[g * batch..(g + 1) * batch].iter().sum::<f64>() / batch as f64;
                    mean_sq / d.t.powi(3) / d.q
                })
                .collect()
        };
        Ok(SolverGroups { euler: weigh(&sq), dpmpp_2m: weigh(&sq_2m) })
    }
}

/// The random numbers shared by every span of one paired estimate.
#[derive(Clone, Copy)]
struct Noise<'n> {
    x0: &'n Tensor,
    z1: &'n Tensor,
    z2: &'n Tensor,
    /// For x_c, only when the 2M stand-in is estimated.
    z3: Option<&'n Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bisection inverts the closed-form CDF to rounding: the interval holds the first
    // uniform's mass quantile, and the point inside it the second uniform's fraction of the piece.
    #[test]
    fn proposal_draws_invert_the_cdf() {
        let p = Proposal::new(vec![0.03, 0.1, 0.5, 2.0, 14.6], 0.5);
        for &(a, b) in &[(0.0, 0.5), (0.3, 0.999), (0.71, 0.2), (0.9999, 0.5)] {
            let d = p.draw(a, b);
            let (lo, up) = (p.knots[d.upper - 1], p.knots[d.upper]);
            assert!(d.t >= lo && d.t <= up, "{} not in [{lo}, {up}]", d.t);
            let before = if d.upper >= 2 { p.cumulative[d.upper - 2] } else { 0.0 };
            let piece = p.cumulative[d.upper - 1] - before;
            assert!(before <= a * p.total() && a * p.total() < before + piece);
            let beta = 1.0 / (up * up + p.k);
            let inside = antiderivative(d.t * d.t, beta, p.k) - antiderivative(lo * lo, beta, p.k);
            assert!((inside / piece - b).abs() < 1e-9, "{} vs {b}", inside / piece);
        }
    }
}
