//! Errors of the kernels, carried inside `candle_core::Error` (the `CustomOp` interface returns it).

/// A kernel was handed tensors it cannot work on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An input has the wrong rank or size.
    #[error("{op}: `{name}` must be {expected}, got shape {got:?}")]
    BadShape {
        /// The kernel.
        op: &'static str,
        /// The input.
        name: &'static str,
        /// The accepted shapes.
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },
    /// The CPU kernel was called on a dtype it does not implement (the public functions
    /// fall back to candle before this can happen).
    #[error("{op}: dtype {dtype:?} is not supported by the CPU kernel (accepted: f32)")]
    UnsupportedDType {
        /// The kernel.
        op: &'static str,
        /// The dtype received.
        dtype: candle_core::DType,
    },
    /// An environment variable that selects a kernel holds a value it does not accept.
    #[error("environment variable {var}={value:?} is not understood; accepted values: {accepted} (or unset it)")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// The accepted values.
        accepted: &'static str,
    },
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// The contiguous f32 slice of a CPU storage, or an error naming the op.
pub(crate) fn f32_slice<'a>(
    op: &'static str,
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        candle_core::CpuStorage::F32(data) => data.as_slice(),
        other => {
            use candle_core::backend::BackendStorage;
            return Err(KernelError::UnsupportedDType { op, dtype: other.dtype() }.into());
        }
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        // The public wrappers make every input contiguous before applying the op.
        None => Err(candle_core::Error::RequiresContiguous { op }),
    }
}
