//! Seeds for the optimizer's independent random draws.

use kairos_toy::{Stream, ToyRng};

/// A generator for the draw named by `tags` under `seed`: the tags are mixed with splitmix64, so
/// each (level, sweep, coordinate, ...) gets its own stream and a resumed run repeats the same
/// draws as an uninterrupted one.
pub(crate) fn rng_for(seed: u64, tags: &[u64]) -> ToyRng {
    let mut h = splitmix64(seed);
    for &t in tags {
        h = splitmix64(h ^ splitmix64(t.wrapping_add(0x632b_e59b_d9b4_e019)));
    }
    ToyRng::new(h, Stream::Estimator)
}

/// Vigna's splitmix64 finaliser: a bijective 64-bit mix.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
