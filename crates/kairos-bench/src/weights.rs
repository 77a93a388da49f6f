//! Seeded random weights generated on request, so a full-size model is built without a file.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};

/// Every tensor is uniform in ±1/√fan_in (fan_in = the product of all dims but the first), a
/// stream keyed on the seed and the tensor's name, except that a 1-D tensor with an
/// `Init::Const` hint (norm weights 1, biases 0) takes the constant. Matrices and kernels are
/// always drawn: `VarBuilder::get`'s default hint is `Const(0)`, which would leave every linear
/// weight read through it zero. Activations stay O(1), so no NaN, infinity or denormal slows a
/// kernel down.
struct SeededWeights {
    seed: u64,
}

impl SimpleBackend for SeededWeights {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let (Init::Const(c), 1) = (h, s.rank()) {
            return Tensor::full(c as f32, s, dev)?.to_dtype(dtype);
        }
        let dims = s.dims();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let bound = (1.0 / fan_in as f64).sqrt() as f32;
        // FNV-1a of the name, mixed with the seed: each tensor has its own reproducible stream.
        let mut state = name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64 ^ self.seed, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
            | 1;
        let data: Vec<f32> = (0..s.elem_count())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * bound
            })
            .collect();
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("seeded weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` that creates every requested tensor from `seed`.
pub fn seeded_var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededWeights { seed }), dtype, device.clone())
}
