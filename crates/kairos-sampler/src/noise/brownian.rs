//! Brownian-tree noise for SDE samplers, with the semantics of k-diffusion's
//! `BrownianTreeNoiseSampler`: noise(σ, σ') = (W(σ') − W(σ)) / sqrt(|σ' − σ|) for one Brownian
//! path W on the time axis t = σ over [σ_min, σ_max] of the schedule, fixed by a seed.
//!
//! W(t) is a deterministic function of (seed, t), built by Brownian-bridge bisection: W(σ_min) = 0,
//! W(σ_max) ~ N(0, σ_max − σ_min), and each interval [s, e] of the dyadic tree splits at its
//! midpoint m with W(m) = (W(s) + W(e))/2 + sqrt((e − s)/4)·ξ, ξ drawn from a Philox stream keyed
//! by (seed, node). A query descends until it lands on a node boundary, or, after
//! [`MAX_DEPTH`] halvings (a leaf of (σ_max − σ_min)/2^30, about 1.4e-8 for SD), takes the bridge
//! value at t from a stream keyed by (seed, node, t). So:
//!
//! - the same seed gives the same noise, whatever the order or number of queries;
//! - increments are consistent: W over (a, c) is exactly the sum over (a, b) and (b, c);
//! - increments are Gaussian with variance |t' − t| (exactly for points in different leaves; two
//!   points inside one leaf get conditionally independent bridge values, so steps shorter than
//!   the leaf, far below any sampler's, would have too much variance).
//!
//! A query costs up to 30 draws of the latent's size (Philox, a few ms each for SD latents);
//! the end of one step is cached for the start of the next.
//!
//! Values are not those of torchsde's `BrownianTree` (which hashes its node seeds with numpy's
//! `SeedSequence`); only the distribution is the same.

use candle_core::Tensor;

use super::{BatchSeeding, NoiseError, NoiseSource, PhiloxGenerator};
use crate::Result;

/// Bisection depth after which a query takes the bridge value inside its leaf.
const MAX_DEPTH: u32 = 30;
/// How many W(t) evaluations per tree are kept: a sampler step reuses the previous step's end.
const CACHE_PER_TREE: usize = 4;

/// SplitMix64's finaliser: decorrelates the seeds of neighbouring nodes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` standard normals from the Philox stream keyed by `key`.
fn normals(key: u64, n: usize) -> Vec<f64> {
    PhiloxGenerator::new(key).randn(n).into_iter().map(f64::from).collect()
}

/// `a + c·(b − a) + sd·ξ`, elementwise (bridge interpolation plus noise).
fn bridge(a: &[f64], b: &[f64], c: f64, sd: f64, xi: &[f64]) -> Vec<f64> {
    a.iter().zip(b).zip(xi).map(|((a, b), xi)| a + c * (b - a) + sd * xi).collect()
}

/// A seeded Brownian tree over [σ_min, σ_max] as a [`NoiseSource`]; see the module docs.
#[derive(Debug, Clone)]
pub struct BrownianTreeNoise {
    seed: u64,
    seeding: BatchSeeding,
    t0: f64,
    t1: f64,
    /// Recent W(t) evaluations: (tree seed, t, numel) and the values.
    cache: Vec<((u64, u64, usize), Vec<f64>)>,
}

impl BrownianTreeNoise {
    /// A tree over [sigma_min, sigma_max] (k-diffusion: the smallest positive and the largest
    /// sigma of the schedule). With [`BatchSeeding::PerItem`] item i of a batch has its own tree
    /// seeded seed + i (A1111); with [`BatchSeeding::Shared`] one tree covers the whole batch
    /// (ComfyUI).
    pub fn new(seed: u64, sigma_min: f64, sigma_max: f64, seeding: BatchSeeding) -> Result<Self, NoiseError> {
        let valid = sigma_min.is_finite() && sigma_max.is_finite() && 0.0 <= sigma_min && sigma_min < sigma_max;
        if !valid {
            return Err(NoiseError::InvalidInterval { sigma_min, sigma_max });
        }
        Ok(Self { seed, seeding, t0: sigma_min, t1: sigma_max, cache: Vec::new() })
    }

    /// W(t) of the tree seeded `tree_seed`, for `n` elements; `trees` sizes the cache.
    fn w(&mut self, tree_seed: u64, t: f64, n: usize, trees: usize) -> Vec<f64> {
        let cache_key = (tree_seed, t.to_bits(), n);
        if let Some((_, w)) = self.cache.iter().find(|(k, _)| *k == cache_key) {
            return w.clone();
        }
        let w = self.evaluate(tree_seed, t, n);
        if self.cache.len() >= CACHE_PER_TREE * trees {
            self.cache.remove(0);
        }
        self.cache.push((cache_key, w.clone()));
        w
    }

    fn evaluate(&self, tree_seed: u64, t: f64, n: usize) -> Vec<f64> {
        let zero = vec![0.0; n];
        if t == self.t0 {
            return zero;
        }
        let tree_key = mix(tree_seed);
        let node_key = |node: u64| mix(tree_key ^ mix(node));
        let (mut s, mut e) = (self.t0, self.t1);
        let mut ws = zero;
        let mut we: Vec<f64> = normals(node_key(0), n).into_iter().map(|x| x * (e - s).sqrt()).collect();
        // Node 1 is the whole interval; node k has children 2k and 2k + 1.
        let mut node = 1u64;
        for _ in 0..MAX_DEPTH {
            if t == e {
                return we;
            }
            if t == s {
                return ws;
            }
            let m = 0.5 * (s + e);
            let wm = bridge(&ws, &we, 0.5, (0.25 * (e - s)).sqrt(), &normals(node_key(node), n));
            if t < m {
                (e, we, node) = (m, wm, 2 * node);
            } else {
                (s, ws, node) = (m, wm, 2 * node + 1);
            }
        }
        if t == e {
            return we;
        }
        if t == s {
            return ws;
        }
        let c = (t - s) / (e - s);
        let sd = ((t - s) * (e - t) / (e - s)).sqrt();
        bridge(&ws, &we, c, sd, &normals(mix(node_key(node) ^ mix(t.to_bits())), n))
    }

    /// (W(σ') − W(σ)) / sqrt(|σ' − σ|) of one tree, as float32.
    fn scaled_increment(&mut self, tree: (u64, usize), sigma: f64, sigma_next: f64, n: usize) -> Vec<f32> {
        let (tree_seed, trees) = tree;
        let a = self.w(tree_seed, sigma, n, trees);
        let b = self.w(tree_seed, sigma_next, n, trees);
        let scale = 1.0 / (sigma_next - sigma).abs().sqrt();
        a.iter().zip(&b).map(|(a, b)| ((b - a) * scale) as f32).collect()
    }
}

impl NoiseSource for BrownianTreeNoise {
    fn step_noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
        // Queries may overshoot the ends by rounding (e.g. σ_min recomputed in float32).
        let slack = 1e-6 * (self.t1 - self.t0);
        let inside = |t: f64| t >= self.t0 - slack && t <= self.t1 + slack;
        if !(inside(sigma) && inside(sigma_next)) || sigma == sigma_next {
            return Err(NoiseError::InvalidStep { sigma, sigma_next, sigma_min: self.t0, sigma_max: self.t1 }.into());
        }
        let (sigma, sigma_next) = (sigma.clamp(self.t0, self.t1), sigma_next.clamp(self.t0, self.t1));
        let n = like.elem_count();
        let values = match self.seeding {
            BatchSeeding::Shared => self.scaled_increment((self.seed, 1), sigma, sigma_next, n),
            BatchSeeding::PerItem => {
                let batch = like.dims().first().copied().unwrap_or(0);
                if batch == 0 {
                    return Err(NoiseError::EmptyBatch.into());
                }
                (0..batch as u64)
                    .flat_map(|i| {
                        self.scaled_increment((self.seed.wrapping_add(i), batch), sigma, sigma_next, n / batch)
                    })
                    .collect()
            }
        };
        Ok(Tensor::from_vec(values, like.shape().clone(), &candle_core::Device::Cpu)?
            .to_dtype(like.dtype())?
            .to_device(like.device())?)
    }
}
