//! A plain image buffer for the pixel metrics.

use crate::error::{EvalError, Result};

/// An image as `f64` samples in height × width × channels order (channel last, as
/// scikit-image's `channel_axis=-1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels (3 for RGB, 1 for grey).
    pub channels: usize,
    /// `height · width · channels` samples, row-major, channel last.
    pub data: Vec<f64>,
}

impl Image {
    /// Wraps `data`, checking its length.
    pub fn new(height: usize, width: usize, channels: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != height * width * channels || channels == 0 {
            return Err(EvalError::InvalidArgument {
                name: "data",
                reason: format!("{} samples for a {height}×{width}×{channels} image", data.len()),
            });
        }
        Ok(Self { height, width, channels, data })
    }

    /// From 8-bit samples (HWC), as values in [0, 255].
    pub fn from_u8(height: usize, width: usize, channels: usize, data: &[u8]) -> Result<Self> {
        Self::new(height, width, channels, data.iter().map(|&v| v as f64).collect())
    }

    /// Channel `c` as a `height × width` plane.
    pub fn plane(&self, c: usize) -> Vec<f64> {
        self.data.iter().skip(c).step_by(self.channels).copied().collect()
    }

    pub(crate) fn same_shape(&self, other: &Image) -> Result<()> {
        let a = [self.height, self.width, self.channels];
        let b = [other.height, other.width, other.channels];
        if a != b {
            return Err(EvalError::ShapeMismatch { name: "images", left: a.to_vec(), right: b.to_vec() });
        }
        Ok(())
    }
}
