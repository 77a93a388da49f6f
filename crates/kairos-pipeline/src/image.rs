//! Latents → pixels: the VAE decoder behind a trait, and diffusers' `VaeImageProcessor`
//! post-processing to 8-bit RGB.

use candle_core::{DType, Tensor};
use kairos_models::autoencoders::{DiagonalGaussianDistribution, LatentRgbFactors};

use crate::PipelineError;

/// The VAE's decoder, as the pipeline uses it.
pub trait LatentDecoder {
    /// Images `[N, 3, H, W]` in [−1, 1] (unclamped) from UNet-scale latents `[N, C, h, w]`:
    /// the implementation divides by its `scaling_factor` first.
    fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError>;
    /// Latent channels (4 for SD).
    fn latent_channels(&self) -> usize;
    /// Pixels per latent along each side: 2^(len(block_out_channels) − 1), 8 for SD.
    fn scale_factor(&self) -> usize;
}

/// The VAE's encoder, as img2img uses it.
pub trait LatentEncoder {
    /// The posterior N(mean, std²) of images `[N, 3, H, W]` in [−1, 1], float32, in the VAE's
    /// own latent scale (before `scaling_factor`).
    fn encode(&self, images: &Tensor) -> Result<DiagonalGaussianDistribution, PipelineError>;
    /// VAE latents × this = UNet-scale latents.
    fn scaling_factor(&self) -> f64;
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width · height · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The image as `[1, 3, H, W]` float32 in [−1, 1], as diffusers' `VaeImageProcessor`
    /// preprocesses it: `x / 255`, then `2x − 1`.
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<Tensor, PipelineError> {
        if self.data.len() != self.width * self.height * 3 {
            return Err(PipelineError::InvalidOption {
                name: "image",
                message: format!(
                    "{}x{} RGB needs {} bytes, got {}",
                    self.width,
                    self.height,
                    self.width * self.height * 3,
                    self.data.len()
                ),
            });
        }
        let values: Vec<f32> = self.data.iter().map(|&v| (v as f32 / 255.0) * 2.0 - 1.0).collect();
        let hwc = Tensor::from_vec(values, (1, self.height, self.width, 3), device)?;
        Ok(hwc.permute((0, 3, 1, 2))?.contiguous()?)
    }
}

/// Converts decoded images `[N, 3, H, W]` to 8-bit RGB exactly as diffusers'
/// `VaeImageProcessor.postprocess(output_type="pil")`: `(x * 0.5 + 0.5).clamp(0, 1)`, then
/// `(x * 255).round()` (numpy: half to even) in float32.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>, PipelineError> {
    let (n, c, height, width) = images.dims4()?;
    if c != 3 {
        return Err(PipelineError::InvalidOption {
            name: "images",
            message: format!("expected 3 channels (RGB), got shape {:?}", images.dims()),
        });
    }
    // [N, H, W, 3], as diffusers' pt_to_numpy.
    let hwc = images.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.contiguous()?;
    let values = hwc.flatten_all()?.to_vec1::<f32>()?;
    let per_image = height * width * 3;
    Ok((0..n)
        .map(|i| RgbImage {
            width,
            height,
            data: values[i * per_image..(i + 1) * per_image]
                .iter()
                // In [0, 255] after the clamp, so the cast cannot saturate.
                .map(|&x| ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
                .collect(),
        })
        .collect())
}

/// Fails with [`PipelineError::NonFiniteDecode`] when decoded images hold NaN or infinite
/// values, instead of letting them become a black image.
pub fn ensure_finite(images: &Tensor) -> Result<(), PipelineError> {
    let values = images.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(PipelineError::NonFiniteDecode { count, total: values.len() });
    }
    Ok(())
}

/// How step previews are drawn from the sampler's x0 prediction.
#[derive(Clone, Copy)]
pub enum Preview<'a> {
    /// A decoder at full resolution (TAESD: cheap and close to the VAE).
    Decoder(&'a dyn LatentDecoder),
    /// A linear latent → RGB map at latent resolution: one small matmul.
    Linear(LatentRgbFactors),
}

impl Preview<'_> {
    /// The first image of UNet-scale latents `[B, C, h, w]` as 8-bit RGB.
    pub fn render(&self, latents: &Tensor) -> Result<RgbImage, PipelineError> {
        let first = latents.narrow(0, 0, 1)?;
        let images = match self {
            Self::Decoder(decoder) => decoder.decode(&first)?,
            // The linear preview is in [0, 1]; to_rgb8 takes [−1, 1].
            Self::Linear(factors) => factors.preview(&first.to_dtype(DType::F32)?)?.affine(2.0, -1.0)?,
        };
        to_rgb8(&images)?
            .pop()
            .ok_or(PipelineError::InvalidOption { name: "latents", message: "the batch is empty".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn postprocess_matches_diffusers_rounding() {
        // 0.5 → 191.25 → 191; −1 → 0; 2 → clamp → 255; −0.5 → 63.75 → 64; 0 → 127.5 → 128 (even).
        let x = [0.5f32, -1.0, 2.0, -0.5, 0.0, 1.0];
        let t = Tensor::new(&x, &Device::Cpu).unwrap().reshape((1, 3, 1, 2)).unwrap();
        let img = to_rgb8(&t).unwrap();
        assert_eq!((img[0].width, img[0].height), (2, 1));
        // pixel 0 = (x[0], x[2], x[4]), pixel 1 = (x[1], x[3], x[5])
        assert_eq!(img[0].data, vec![191, 255, 128, 0, 64, 255]);
    }

    #[test]
    fn image_to_tensor_round_trips() {
        let img = RgbImage { width: 2, height: 1, data: vec![0, 255, 128, 64, 191, 255] };
        let t = img.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        assert_eq!(to_rgb8(&t).unwrap()[0], img);
    }

    #[test]
    fn non_finite_decodes_are_errors() {
        let ok = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap();
        assert!(ensure_finite(&ok).is_ok());
        let bad = Tensor::new(&[0.5f32, f32::NAN, f32::INFINITY, 1.0], &Device::Cpu).unwrap();
        let err = ensure_finite(&bad.to_dtype(DType::F16).unwrap()).unwrap_err().to_string();
        assert!(err.starts_with("VAE produced NaN: use a float32 VAE or sdxl-vae-fp16-fix"), "{err}");
        assert!(err.contains("2 of 4 decoded values"), "{err}");
    }

    #[test]
    fn linear_preview_of_the_first_image() {
        // Zero latents map to the middle grey (bias 0, (0 + 1)/2 = 0.5 → 127.5 → 128).
        let latents = Tensor::zeros((2, 4, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let img = Preview::Linear(LatentRgbFactors::Sd15).render(&latents).unwrap();
        assert_eq!((img.width, img.height), (5, 3));
        assert!(img.data.iter().all(|&v| v == 128));
    }
}
