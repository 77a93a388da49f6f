//! The `CustomOp1`/`CustomOp2`/`CustomOp3` plumbing the f32 kernels share: each kernel states what
//! it computes from one, two or three contiguous f32 inputs ([`F32Op1`], [`F32Op2`], [`F32Op3`]),
//! and [`apply1`]/[`apply2`]/[`apply3`] run it through candle.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::f32_slice;

/// One input of a kernel: its contiguous f32 data and its layout (for the shape).
pub(crate) type Input<'a> = (&'a [f32], &'a Layout);

/// A CPU kernel on one contiguous f32 tensor.
pub(crate) trait F32Op1: Send + Sync {
    /// The op's name, in candle's op lists and in errors.
    const NAME: &'static str;
    /// The output's data and shape.
    fn run(&self, x: Input<'_>) -> Result<(Vec<f32>, Shape)>;
}

/// `op` on `x` (made contiguous by the caller), without a backward pass.
pub(crate) fn apply1<T: F32Op1>(x: &Tensor, op: &T) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op1(op))
}

/// A CPU kernel on two contiguous f32 tensors.
pub(crate) trait F32Op2: Send + Sync {
    /// The op's name, in candle's op lists and in errors.
    const NAME: &'static str;
    /// The output's data and shape.
    fn run(&self, a: Input<'_>, b: Input<'_>) -> Result<(Vec<f32>, Shape)>;
}

/// `op` on `a`, `b` (each made contiguous by the caller), without a backward pass.
pub(crate) fn apply2<T: F32Op2>(a: &Tensor, b: &Tensor, op: &T) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &Op2(op))
}

/// A CPU kernel on three contiguous f32 tensors.
pub(crate) trait F32Op3: Send + Sync {
    /// The op's name, in candle's op lists and in errors.
    const NAME: &'static str;
    /// The output's data and shape.
    fn run(&self, a: Input<'_>, b: Input<'_>, c: Input<'_>) -> Result<(Vec<f32>, Shape)>;
}

/// `op` on `a`, `b`, `c` (each made contiguous by the caller), without a backward pass.
pub(crate) fn apply3<T: F32Op3>(a: &Tensor, b: &Tensor, c: &Tensor, op: T) -> Result<Tensor> {
    a.apply_op3_no_bwd(b, c, &Op3(op))
}

/// `f` on the data of a contiguous f32 CPU tensor, for kernels whose result is not a tensor
/// (a packed GEMM operand).
pub(crate) fn read_f32<R>(op: &'static str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(f32_slice(op, cpu, layout)?),
        _ => Err(candle_core::Error::Msg(format!("{op}: a CPU tensor was expected"))),
    }
}

/// What one chunk of a new output starts as (see [`filled`]).
pub(crate) enum Fill<'a> {
    /// Every element this value (a convolution's bias for one output plane).
    Value(f32),
    /// A copy of this slice, of the chunk's length (a linear layer's bias for one output row).
    Copy(&'a [f32]),
    /// A copy of this slice plus this value (a residual plane and its channel's bias).
    Shifted(&'a [f32], f32),
    /// The elementwise sum of two slices of the chunk's length (a residual row and a bias).
    Sum(&'a [f32], &'a [f32]),
}

/// A new vector of `count` chunks of `chunk` elements, chunk `i` as `fill(i)` says, written once
/// in parallel. `vec![0.0; n]` followed by a fill would write it twice: with the CLI's allocator
/// setting (freed memory stays in the heap) the zeroing is a full `memset` pass.
pub(crate) fn filled<'a>(count: usize, chunk: usize, fill: impl Fn(usize) -> Fill<'a> + Sync) -> Vec<f32> {
    let len = count * chunk;
    let mut out = Vec::with_capacity(len);
    if len > 0 {
        out.spare_capacity_mut()[..len].par_chunks_mut(chunk).enumerate().for_each(|(i, dst)| match fill(i) {
            Fill::Value(x) => dst.iter_mut().for_each(|d| {
                d.write(x);
            }),
            Fill::Copy(src) => {
                assert_eq!(src.len(), chunk, "a Fill::Copy source must have the chunk's length");
                dst.iter_mut().zip(src).for_each(|(d, &s)| {
                    d.write(s);
                });
            }
            Fill::Shifted(src, x) => {
                assert_eq!(src.len(), chunk, "a Fill::Shifted source must have the chunk's length");
                dst.iter_mut().zip(src).for_each(|(d, &s)| {
                    d.write(s + x);
                });
            }
            Fill::Sum(a, b) => {
                assert!(a.len() == chunk && b.len() == chunk, "Fill::Sum sources must have the chunk's length");
                dst.iter_mut().zip(a).zip(b).for_each(|((d, &x), &y)| {
                    d.write(x + y);
                });
            }
        });
    }
    // SAFETY: the loop above wrote all `len` elements: each chunk entirely (a Copy, Shifted or Sum
    // source has the chunk's length, asserted), and the chunks tile `..len`.
    unsafe { out.set_len(len) };
    out
}

/// A new vector of `len` elements whose contents are not initialised: for a kernel output every
/// element of which the kernel writes (`vec![0.0; n]` would first write it all with a `memset`,
/// about 1.5 % of an SDXL UNet call; candle's `alloc_uninit` does the same).
///
/// # Safety
/// Every element must be written before it is read, and before the vector is returned.
#[allow(clippy::uninit_vec)] // the point of this function; its callers write every element
pub(crate) unsafe fn uninit(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and the caller writes every element before any is read (as
    // candle's `alloc_uninit` and the `gemm` crate's outputs do; spelling it with `MaybeUninit`
    // would thread that type through every kernel's slices).
    unsafe { v.set_len(len) };
    v
}

struct Op1<'a, T>(&'a T);

impl<T: F32Op1> CustomOp1 for Op1<'_, T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = self.0.run((f32_slice(T::NAME, storage, layout)?, layout))?;
        Ok((CpuStorage::F32(out), shape))
    }
}

struct Op2<'a, T>(&'a T);

impl<T: F32Op2> CustomOp2 for Op2<'_, T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = (f32_slice(T::NAME, s1, l1)?, l1);
        let (out, shape) = self.0.run(a, (f32_slice(T::NAME, s2, l2)?, l2))?;
        Ok((CpuStorage::F32(out), shape))
    }
}

struct Op3<T>(T);

impl<T: F32Op3> CustomOp3 for Op3<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let inputs = [(s1, l1), (s2, l2), (s3, l3)].map(|(s, l)| f32_slice(T::NAME, s, l).map(|d| (d, l)));
        let [a, b, c] = inputs;
        let (out, shape) = self.0.run(a?, b?, c?)?;
        Ok((CpuStorage::F32(out), shape))
    }
}
