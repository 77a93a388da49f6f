//! Autoencoders, mirroring diffusers' `models/autoencoders/`.

pub mod autoencoder_kl;
pub mod autoencoder_tiny;
pub mod tiling;
pub mod vae;

pub use autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
pub use autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig, LatentRgbFactors};
pub use tiling::{TilingMode, TilingOptions};
pub use vae::DiagonalGaussianDistribution;
