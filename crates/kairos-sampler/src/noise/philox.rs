//! The Philox 4x32-10 generator that imitates torch's CUDA `randn`: AUTOMATIC1111's "NV" RNG
//! (`modules/rng_philox.py`), bit for bit.
//!
//! Torch's CUDA normal kernel gives element `i` the curand Philox state with key = seed,
//! subsequence = `i` and the generator's offset, and takes the first output of a Box-Muller pair.
//! A1111 writes that as the counter `[offset, 0, i, 0]` and key `[seed_lo, seed_hi]` (valid while
//! each element gets its own CUDA thread), with one offset step per `randn` call. Its Box-Muller
//! runs in float64 on the two first 32-bit outputs and rounds the result to float32; CUDA runs it
//! in float32 with fast intrinsics, so the two differ by a few 1e-7 (the parity test checks both).

/// Multipliers of the Philox 4x32 round (Salmon et al. 2011).
const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
/// Weyl key increments (golden ratio, sqrt(3) − 1).
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
const ROUNDS: usize = 10;

/// Philox 4x32 with 10 rounds: four 32-bit outputs for a counter and a key.
fn philox4x32_10(mut counter: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..ROUNDS {
        if round > 0 {
            key[0] = key[0].wrapping_add(PHILOX_W[0]);
            key[1] = key[1].wrapping_add(PHILOX_W[1]);
        }
        let p0 = u64::from(counter[0]) * u64::from(PHILOX_M[0]);
        let p1 = u64::from(counter[2]) * u64::from(PHILOX_M[1]);
        counter =
            [(p1 >> 32) as u32 ^ counter[1] ^ key[0], p1 as u32, (p0 >> 32) as u32 ^ counter[3] ^ key[1], p0 as u32];
    }
    counter
}

/// A1111's `rng_philox.Generator`: `randn` values equal to its, and within a few 1e-7 of
/// `torch.randn(..., device="cuda")` after `torch.manual_seed(seed)`.
#[derive(Debug, Clone)]
pub struct PhiloxGenerator {
    seed: u64,
    offset: u32,
}

impl PhiloxGenerator {
    /// A generator at offset 0 for `seed` (all 64 bits are the Philox key).
    pub fn new(seed: u64) -> Self {
        Self { seed, offset: 0 }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `n` standard normal values; each call advances the offset by one.
    ///
    /// As in A1111, the element index is the 32-bit counter word, so a single draw holds at most
    /// 2^32 values (a latent is far smaller).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        // numpy: float32 constants promoted to float64 when multiplied with uint32 arrays.
        let two_pow32_inv = f64::from(2.328_306_4e-10_f32);
        let two_pow32_inv_2pi = f64::from((2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32);
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        (0..n)
            .map(|i| {
                let g = philox4x32_10([offset, 0, i as u32, 0], key);
                let u = f64::from(g[0]) * two_pow32_inv + two_pow32_inv / 2.0;
                let v = f64::from(g[1]) * two_pow32_inv_2pi + two_pow32_inv_2pi / 2.0;
                let s = (-2.0 * u.ln()).sqrt();
                (s * v.sin()) as f32
            })
            .collect()
    }
}
