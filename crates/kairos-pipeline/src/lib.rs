//! The Stable Diffusion txt2img pipeline of kairos: a library with no CLI and no HTTP.
//!
//! - [`denoiser`]: the UNet behind [`DiffusionModel`] as a k-diffusion denoiser
//!   ([`ModelDenoiser`]: c_in, σ → timestep, ε/v → x0) and classifier-free guidance
//!   ([`CfgDenoiser`]: one batched call, guidance on the prediction as diffusers, the
//!   unconditional x0 for CFG++).
//! - [`conditioning`]: prompts → embeddings ([`PromptEncoder`]; diffusers or A1111 syntax;
//!   SDXL's two encoders and pooled embedding).
//! - [`image`]: latents → 8-bit RGB ([`LatentDecoder`], diffusers' post-processing, step
//!   [`Preview`]s).
//! - [`txt2img()`]: the run (seeded latents, any sampler and schedule, progress, cancellation).
//! - [`models`]: the real networks from a checkpoint ([`StableDiffusion::load`]).
//! - [`resize`]: A1111's img2img resize modes over Pillow's Lanczos resampling.
//! - [`infotext`] and [`output`]: A1111 infotext, PNG files that never overwrite.
//! - [`dtype_auto`]: `--dtype auto`, the faster weight dtype for this machine (measured, cached).
//!
//! Every model sits behind a small trait, so the run is testable with fakes.

pub mod conditioning;
pub mod denoiser;
pub mod dtype_auto;
mod error;
pub mod image;
pub mod infotext;
pub mod models;
pub mod output;
pub mod resize;
pub mod txt2img;

pub use conditioning::{PromptEmbeds, PromptEncoder, PromptSyntax};
pub use denoiser::{AddedConditioning, CfgDenoiser, Conditioning, DiffusionModel, ModelDenoiser};
pub use error::PipelineError;
pub use image::{LatentDecoder, LatentEncoder, Preview, RgbImage};
pub use models::{LcmKind, LoraWeights, ModelOptions, PromptSource, StableDiffusion, Taesd, TimestepMode, Unet};
pub use resize::{resize_image, ResizeMode};
pub use txt2img::{
    decode_latents, refine_latents, txt2img, txt2img_latents, Components, InitImage, InitialNoise, Progress,
    SizeConditioning, TimeIds, Txt2ImgOutput, Txt2ImgRequest,
};
