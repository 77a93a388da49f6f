//! Mirrors scikit-image 0.26 `skimage.metrics.structural_similarity` for 2-D images with
//! `channel_axis=-1` (SSIM per channel, then the mean), with scipy's `uniform_filter` /
//! `gaussian_filter` (mode `reflect`) as the local windows.
//!
//! Differences: the gradient and full-SSIM-image outputs are absent.

use crate::error::{EvalError, Result};
use crate::image::Image;

/// The knobs of `structural_similarity`, with scikit-image's defaults (`Default` uses
/// `data_range` 255, for 8-bit images).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsimOptions {
    /// Span of possible values (255 for 8-bit images; scikit-image requires it for floats).
    pub data_range: f64,
    /// Odd window side; `None` is 7, or `2·int(3.5·sigma + 0.5) + 1` with Gaussian weights.
    pub win_size: Option<usize>,
    /// Gaussian window (`sigma`, truncated at 3.5 σ) instead of a uniform one.
    pub gaussian_weights: bool,
    /// Standard deviation of the Gaussian window.
    pub sigma: f64,
    /// Normalise variances by `N − 1` (sample covariance) instead of `N`.
    pub use_sample_covariance: bool,
    /// Luminance constant factor `K1`.
    pub k1: f64,
    /// Contrast constant factor `K2`.
    pub k2: f64,
}

impl Default for SsimOptions {
    fn default() -> Self {
        Self {
            data_range: 255.0,
            win_size: None,
            gaussian_weights: false,
            sigma: 1.5,
            use_sample_covariance: true,
            k1: 0.01,
            k2: 0.03,
        }
    }
}

impl SsimOptions {
    /// Wang et al. (2004)'s settings, as scikit-image's docstring recommends to match them:
    /// Gaussian weights with σ = 1.5 and population covariance.
    pub fn wang_2004(data_range: f64) -> Self {
        Self { data_range, gaussian_weights: true, use_sample_covariance: false, ..Self::default() }
    }

    fn window(&self) -> Result<Vec<f64>> {
        let truncate = 3.5;
        let win_size = match self.win_size {
            Some(w) => w,
            None if self.gaussian_weights => 2 * ((truncate * self.sigma + 0.5) as usize) + 1,
            None => 7,
        };
        if win_size < 3 || win_size % 2 == 0 {
            return Err(EvalError::InvalidArgument {
                name: "win_size",
                reason: format!("{win_size} must be odd and at least 3"),
            });
        }
        if self.data_range.is_nan() || self.data_range <= 0.0 {
            return Err(EvalError::InvalidArgument {
                name: "data_range",
                reason: format!("{} must be positive (255 for 8-bit images)", self.data_range),
            });
        }
        if self.gaussian_weights {
            // scipy's gaussian_filter1d kernel: radius int(truncate·σ + 0.5), normalised.
            let r = (truncate * self.sigma + 0.5) as i64;
            let phi: Vec<f64> = (-r..=r).map(|x| (-0.5 / (self.sigma * self.sigma) * (x * x) as f64).exp()).collect();
            let sum: f64 = phi.iter().sum();
            Ok(phi.into_iter().map(|p| p / sum).collect())
        } else {
            Ok(vec![1.0 / win_size as f64; win_size])
        }
    }
}

/// Mean SSIM of two images of equal shape, averaged over channels.
pub fn structural_similarity(im1: &Image, im2: &Image, options: &SsimOptions) -> Result<f64> {
    im1.same_shape(im2)?;
    let kernel = options.window()?;
    // With Gaussian weights scikit-image keeps win_size for the crop and the covariance norm.
    let win_size = options.win_size.unwrap_or(if options.gaussian_weights { kernel.len() } else { 7 });
    if win_size > im1.height || win_size > im1.width {
        return Err(EvalError::InvalidArgument {
            name: "win_size",
            reason: format!(
                "{win_size} exceeds the image side ({}×{}); use a smaller odd win_size",
                im1.height, im1.width
            ),
        });
    }
    let mut total = 0.0;
    for c in 0..im1.channels {
        total += ssim_plane(&im1.plane(c), &im2.plane(c), im1.height, im1.width, &kernel, win_size, options);
    }
    Ok(total / im1.channels as f64)
}

fn ssim_plane(x: &[f64], y: &[f64], h: usize, w: usize, kernel: &[f64], win_size: usize, o: &SsimOptions) -> f64 {
    let np = (win_size * win_size) as f64;
    let cov_norm = if o.use_sample_covariance { np / (np - 1.0) } else { 1.0 };
    let filter = |img: &[f64]| separable_filter(img, h, w, kernel);
    let prod = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a * b).collect() };
    let ux = filter(x);
    let uy = filter(y);
    let uxx = filter(&prod(x, x));
    let uyy = filter(&prod(y, y));
    let uxy = filter(&prod(x, y));
    let c1 = (o.k1 * o.data_range).powi(2);
    let c2 = (o.k2 * o.data_range).powi(2);
    let pad = (win_size - 1) / 2;
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in pad..h - pad {
        for j in pad..w - pad {
            let k = i * w + j;
            let vx = cov_norm * (uxx[k] - ux[k] * ux[k]);
            let vy = cov_norm * (uyy[k] - uy[k] * uy[k]);
            let vxy = cov_norm * (uxy[k] - ux[k] * uy[k]);
            let a1 = 2.0 * ux[k] * uy[k] + c1;
            let a2 = 2.0 * vxy + c2;
            let b1 = ux[k] * ux[k] + uy[k] * uy[k] + c1;
            let b2 = vx + vy + c2;
            sum += (a1 * a2) / (b1 * b2);
            n += 1;
        }
    }
    sum / n as f64
}

/// scipy's `reflect` boundary ("d c b a | a b c d"), for any overshoot.
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

/// Correlates with `kernel` along rows (axis 0) then columns (axis 1), as scipy's n-D filters
/// apply their 1-D passes in axis order.
fn separable_filter(img: &[f64], h: usize, w: usize, kernel: &[f64]) -> Vec<f64> {
    let r = (kernel.len() / 2) as i64;
    let mut tmp = vec![0.0; h * w];
    for i in 0..h {
        for j in 0..w {
            tmp[i * w + j] =
                kernel.iter().enumerate().map(|(t, k)| k * img[reflect(i as i64 + t as i64 - r, h) * w + j]).sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for i in 0..h {
        for j in 0..w {
            out[i * w + j] =
                kernel.iter().enumerate().map(|(t, k)| k * tmp[i * w + reflect(j as i64 + t as i64 - r, w)]).sum();
        }
    }
    out
}
