//! Mirrors scikit-image 0.26 `skimage.metrics.peak_signal_noise_ratio`.

use crate::error::{EvalError, Result};
use crate::image::Image;

/// `10·log10(data_range² / MSE)` over all samples (all channels together), in dB; `inf` for
/// identical images. `data_range` is the span of possible values: 255 for 8-bit images, 1 or 2
/// for float images in [0, 1] or [−1, 1] (scikit-image requires it for float input).
pub fn peak_signal_noise_ratio(image_true: &Image, image_test: &Image, data_range: f64) -> Result<f64> {
    image_true.same_shape(image_test)?;
    // Written so that NaN is rejected too.
    if data_range.is_nan() || data_range <= 0.0 {
        return Err(EvalError::InvalidArgument {
            name: "data_range",
            reason: format!("{data_range} must be positive (255 for 8-bit images)"),
        });
    }
    let n = image_true.data.len() as f64;
    let mse = image_true.data.iter().zip(&image_test.data).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / n;
    Ok(10.0 * (data_range * data_range / mse).log10())
}
