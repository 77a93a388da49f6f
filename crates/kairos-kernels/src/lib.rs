//! Fused CPU kernels for Stable Diffusion inference, behind candle's `CustomOp` interface.
//!
//! Each kernel has a public function that takes and returns candle tensors and that falls back to
//! the plain candle computation (the `*_plain` function beside it) wherever the kernel does not
//! apply: other devices (CUDA, Metal), dtypes other than f32, or options the kernel does not
//! implement. The plain path is the reference the kernel tests compare against.
//!
//! - [`conv2d`]: convolution as row-tiled im2col in NCHW plus one GEMM per tile, writing the NCHW
//!   output in place (no NHWC round trip, no output scatter); 1×1 convolutions are a single GEMM.
//!   3×3 stride-1 pad-1 convolutions use Winograd's F(4×4, 3×3) ([`conv2d_winograd`]) where it pays.
//! - [`attention`]: `softmax(q·kᵀ·scale)·v` FlashAttention-style (online softmax over blocks of
//!   keys, scores never leave L1), with AVX-512 micro-kernels; [`attention_heads`] reads and writes
//!   heads interleaved as the projections produce them.
//! - [`group_norm`]: GroupNorm with an optional fused SiLU, one pass per group.
//! - [`layer_norm`]: LayerNorm over the last dimension, two vectorised passes per row.
//! - [`linear`]: `x·Wᵀ + b` as one GEMM over all rows onto bias-filled output (candle's `Linear`
//!   multiplies per batch and adds the bias in a second pass).
//! - [`tokens_from_map`], [`map_from_tokens`]: a spatial transformer's `proj_in`/`proj_out` as
//!   GEMMs that read or write the `[N, C, H, W]` map in place (no permute copies) and add the
//!   residual as they write.
//! - [`activation`]: CLIP's quick GELU and exact GELU in one vectorised pass.
//! - [`geglu`]: GEGLU's `value · gelu(gate)` in one pass, with a vectorised erf.
//! - [`upsample_nearest2d`]: nearest-neighbour doubling of a map, in parallel.
//! - [`gemm_bf16`]: a GEMM with bf16 inputs and f32 accumulation on AMX-BF16 or AVX512-BF16, used by
//!   `Linear` and `Conv2d` layers whose weights are stored in bf16; on AMX, 3×3 (padding 1) and
//!   1×1 stride-1 convolutions with input channels in multiples of 32 run its kernel on a padded
//!   channels-last bf16 copy of their input read in place (no im2col), reading and writing maps
//!   or tokens and adding a residual as they store.
//! - [`nn`]: drop-in `Conv2d`, `Linear`, `GroupNorm`, `LayerNorm` and `Embedding` constructors
//!   (same arguments and weight names as `candle_nn`) that route through the kernels, and the
//!   precision rule for reduced-precision weights ([`nn::activation_dtype`]).
//! - [`probe`]: a short timed comparison of the f32 and bf16 layer paths on this CPU (what
//!   `--dtype auto` picks from).
//!
//! Setting the environment variable `KAIROS_KERNELS=off` sends every call to the plain path, for
//! A/B timings on one binary; `KAIROS_WINOGRAD=off` keeps the kernels but convolves with im2col
//! only, and `KAIROS_WINOGRAD=f2` picks the smaller, more accurate Winograd tile;
//! `KAIROS_CONV_DIRECT=off` packs bf16 3×3 convolutions for im2col instead of the direct AMX
//! kernel (read when a layer is built).
//!
//! GEMMs go through the `gemm` crate (the one candle uses), with its AVX-512 kernels enabled, by
//! way of `matmul`, which gives each thread its own block of the output.

mod activation;
mod attention;
mod attention_bf16;
mod bf16_layers;
mod conv2d;
mod conv_direct;
mod error;
mod geglu;
pub mod gemm_bf16;
mod group_norm;
mod layer_norm;
mod linear;
mod matmul;
pub mod nn;
mod op;
pub mod probe;
mod projection;
mod scratch;
mod upsample;
mod vecmath;
mod winograd;

pub use activation::{activation, activation_plain, Activation};
pub use attention::{
    attention, attention_heads, attention_heads_bf16, attention_heads_causal, attention_plain, attention_plain_causal,
};
pub use conv2d::{conv2d, conv2d_plain, conv2d_winograd, Conv2dParams};
pub use error::KernelError;
pub use geglu::{geglu, geglu_plain};
pub use group_norm::{group_norm, group_norm_plain};
pub use layer_norm::{layer_norm, layer_norm_plain};
pub use linear::{linear, linear_plain};
pub use projection::{map_from_tokens, tokens_from_map};
pub use upsample::{upsample_nearest2d, upsample_nearest2d_plain};
pub use winograd::WinogradTile;

/// `n` deterministic values in [-1, 1) from a xorshift stream of `seed`: the dtype probe's inputs
/// and the kernels' test and example data (candle's CPU RNG is not seedable). Never NaN or
/// denormal, which would change what a timing measures.
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// An f32 tensor on the CPU: what the f32 kernels compute on.
pub(crate) fn f32_cpu(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Whether the f32 kernels take a call on `tensors`: kernels on, and every tensor [`f32_cpu`].
pub(crate) fn kernel_applies<'a>(tensors: impl IntoIterator<Item = &'a candle_core::Tensor>) -> bool {
    !kernels_off() && tensors.into_iter().all(f32_cpu)
}

/// Whether `KAIROS_KERNELS=off` asked for the plain candle paths (read once).
pub(crate) fn kernels_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("KAIROS_KERNELS").is_ok_and(|v| v == "off"))
}
