//! Image-quality metrics for VAE reconstructions, each equal to the implementation the field
//! reports numbers with:
//!
//! - [`psnr::peak_signal_noise_ratio`] and [`ssim::structural_similarity`]: scikit-image's
//!   `skimage.metrics` functions of the same names;
//! - [`fid::frechet_distance`] and [`fid::FeatureStats`]: pytorch-fid's
//!   `calculate_frechet_distance` and activation statistics;
//! - [`inception::FidInceptionV3`]: pytorch-fid's `InceptionV3` (the TF-ported FID network with
//!   `FIDInceptionA/C/E`), 2048-d pool features;
//! - [`lpips::Lpips`]: the `lpips` package's `LPIPS(net="vgg")`.
//! - [`stats::MeanStd`]: mean ± std of per-image values.
//!
//! Images are [`Image`]s: `f64` samples, height × width × channels, in the range the metric is
//! given as `data_range`.

pub mod error;
pub mod fid;
pub mod image;
pub mod inception;
pub mod lpips;
pub mod psnr;
pub mod ssim;
pub mod stats;

pub use error::{EvalError, Result};
pub use image::Image;
