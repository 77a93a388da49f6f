//! Tiled VAE encode and decode for [`AutoencoderKL`], mirroring diffusers 0.42.1
//! `AutoencoderKL.enable_tiling` (`_tiled_encode`, `tiled_decode`, `blend_v`, `blend_h`).
//!
//! The input is cut into square tiles of `tile_sample_size` pixels (`tile_sample_size / f`
//! latents, `f` the VAE's downsampling factor) that start every `(1 − overlap_factor)` tiles.
//! Each tile is run through the whole encoder or decoder; then, in row-major order, each tile's
//! first `overlap_factor · tile` rows and columns are linearly cross-faded with the tile above
//! and the tile to the left (already blended, as diffusers' in-place updates leave them), and
//! the tiles are cropped to their stride and concatenated.
//!
//! Tiled output is not equal to untiled output even far from the seams: the GroupNorms compute
//! their statistics per tile and the mid-block attention sees one tile. That is diffusers'
//! behaviour too; the parity test compares with diffusers' tiled output.
//!
//! Differences from diffusers:
//! - The tile size and overlap are options ([`TilingOptions`]) instead of `config.sample_size`
//!   and the constant 0.25.
//! - [`TilingMode::Auto`] tiles only when [`AutoencoderKL::decode_memory_estimate`] (or the
//!   encode estimate) exceeds a byte budget.
//! - Tiled encoding blends the posterior's mean and (clamped) logvar per tile; diffusers blends
//!   the moments before its clamp to [−30, 20]. They differ only where a tile's logvar leaves
//!   that range.

use candle_core::{DType, Device, Tensor};

use super::autoencoder_kl::AutoencoderKL;
use super::vae::DiagonalGaussianDistribution;
use crate::error::{ModelError, Result};

/// Activations of the widest level alive at once in the memory estimate (a resnet's input kept
/// for the residual, its normalised and activated copies, its convolution's output, and the
/// convolution's im2col tiles). Calibrated on the full-size SD1.5 VAE in float32 on the CPU
/// (`kairos-bench`'s `vae_tiling` example): the measured peak above the weights was 4.8 (256²)
/// and 4.3 (512²) full-resolution 256-channel tensors.
pub const LIVE_ACTIVATIONS: u64 = 5;

/// When [`AutoencoderKL::decode_with`] and [`AutoencoderKL::encode_with`] tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TilingMode {
    /// Never tile.
    Never,
    /// Tile whenever the input is larger than one tile (diffusers' `enable_tiling()`).
    Always,
    /// Tile when the input is larger than one tile and the untiled pass is estimated to need
    /// more than `memory_budget_bytes` of activations.
    Auto {
        /// Activation memory allowed for an untiled pass, in bytes.
        memory_budget_bytes: u64,
    },
}

/// Tile geometry and when to tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilingOptions {
    /// Tile edge in image pixels (diffusers' `tile_sample_min_size`, there `config.sample_size`:
    /// 512 for SD1.5's VAE, 1024 for SDXL's). Must be a multiple of the VAE's downsampling factor.
    pub tile_sample_size: usize,
    /// Fraction of a tile blended with its neighbour (diffusers' `tile_overlap_factor`), in
    /// `[0, 1)`.
    pub overlap_factor: f64,
    /// When to tile.
    pub mode: TilingMode,
}

impl Default for TilingOptions {
    /// 512-pixel tiles, overlap 0.25, tiling above a 4 GiB activation estimate.
    fn default() -> Self {
        Self { tile_sample_size: 512, overlap_factor: 0.25, mode: TilingMode::Auto { memory_budget_bytes: 4 << 30 } }
    }
}

/// Tile sizes and strides in one space (latent or sample).
struct Geometry {
    /// Input tile edge.
    tile_in: usize,
    /// Stride between input tiles (diffusers' `overlap_size`).
    stride_in: usize,
    /// Rows/columns blended with the previous tile, in output units.
    blend_extent: usize,
    /// Output rows/columns kept per tile.
    row_limit: usize,
}

impl TilingOptions {
    /// (tile edge in latents, tile edge in pixels) for downsampling factor `f`.
    fn sizes(&self, f: usize) -> Result<(usize, usize)> {
        if !(0.0..1.0).contains(&self.overlap_factor) {
            return Err(ModelError::InvalidConfig {
                field: "overlap_factor",
                reason: format!("{} is not in [0, 1)", self.overlap_factor),
            });
        }
        if self.tile_sample_size == 0 || !self.tile_sample_size.is_multiple_of(f) {
            return Err(ModelError::InvalidConfig {
                field: "tile_sample_size",
                reason: format!(
                    "{} is not a positive multiple of the VAE's downsampling factor {f}",
                    self.tile_sample_size
                ),
            });
        }
        Ok((self.tile_sample_size / f, self.tile_sample_size))
    }

    /// diffusers' arithmetic, `int()` truncation included.
    fn geometry(&self, tile_in: usize, tile_out: usize) -> Result<Geometry> {
        let stride_in = (tile_in as f64 * (1.0 - self.overlap_factor)) as usize;
        let blend_extent = (tile_out as f64 * self.overlap_factor) as usize;
        if stride_in == 0 {
            return Err(ModelError::InvalidConfig {
                field: "tile_sample_size",
                reason: format!("tiles of {tile_in} with overlap {} do not advance", self.overlap_factor),
            });
        }
        Ok(Geometry { tile_in, stride_in, blend_extent, row_limit: tile_out - blend_extent })
    }
}

impl AutoencoderKL {
    /// The downsampling factor `2^(levels − 1)`.
    fn spatial_factor(&self) -> usize {
        1 << self.config().block_out_channels.len().saturating_sub(1)
    }

    /// An estimate of the peak activation memory, in bytes, of an untiled decode of latents
    /// with `shape` `[N, C, h, w]` in `dtype` on `device` (weights excluded): the larger of
    /// - the convolutions: [`LIVE_ACTIVATIONS`] tensors at the widest resolution level, where
    ///   level `k` holds up to `max(block_out_channels[k], block_out_channels[k+1])` channels at
    ///   `(f·h/2^k)·(f·w/2^k)` (for SD's VAE, 256 channels at full resolution: the last up
    ///   block's input), and
    /// - the mid-block attention's scores and probabilities, `2·N·(h·w)²` values (float32 when
    ///   upcast), except for float32 on the CPU, whose blocked kernel never holds them.
    pub fn decode_memory_estimate(&self, shape: &[usize], dtype: DType, device: &Device) -> u64 {
        match shape {
            &[n, _, h, w] => self.memory_estimate(n, h, w, dtype, device),
            _ => 0,
        }
    }

    /// As [`AutoencoderKL::decode_memory_estimate`] for an encode of images `[N, C, H, W]`
    /// (the encoder has the same widths per level).
    pub fn encode_memory_estimate(&self, shape: &[usize], dtype: DType, device: &Device) -> u64 {
        let f = self.spatial_factor();
        match shape {
            &[n, _, h, w] => self.memory_estimate(n, h.div_ceil(f), w.div_ceil(f), dtype, device),
            _ => 0,
        }
    }

    fn memory_estimate(&self, n: usize, h: usize, w: usize, dtype: DType, device: &Device) -> u64 {
        let (n, h, w) = (n as u64, h as u64, w as u64);
        let boc = &self.config().block_out_channels;
        let f = self.spatial_factor() as u64;
        let blocked = dtype == DType::F32 && device.is_cpu();
        let attention = if self.config().mid_block_add_attention && !blocked {
            // Scores and probabilities, in float32 (the VAE's attention upcasts its softmax).
            2 * n * (h * w) * (h * w) * 4
        } else {
            0
        };
        let convs = (0..boc.len())
            .map(|k| {
                let c = boc[k].max(boc.get(k + 1).copied().unwrap_or(0)) as u64;
                let side = f >> k;
                LIVE_ACTIVATIONS * n * c * (h * side) * (w * side) * dtype.size_in_bytes() as u64
            })
            .max()
            .unwrap_or(0);
        attention.max(convs)
    }

    /// Decodes `z` (as [`AutoencoderKL::decode`]), tiling as `options.mode` says.
    pub fn decode_with(&self, z: &Tensor, options: &TilingOptions) -> Result<Tensor> {
        let (tile, _) = options.sizes(self.spatial_factor())?;
        let (_, _, h, w) = z.dims4().map_err(|_| bad_input("z", z))?;
        let larger = h > tile || w > tile;
        let tiled = match options.mode {
            TilingMode::Never => false,
            TilingMode::Always => larger,
            TilingMode::Auto { memory_budget_bytes } => {
                larger && self.decode_memory_estimate(z.dims(), z.dtype(), z.device()) > memory_budget_bytes
            }
        };
        if tiled {
            self.tiled_decode(z, options)
        } else {
            self.decode(z)
        }
    }

    /// Encodes `x` (as [`AutoencoderKL::encode`]), tiling as `options.mode` says.
    pub fn encode_with(&self, x: &Tensor, options: &TilingOptions) -> Result<DiagonalGaussianDistribution> {
        let (_, tile) = options.sizes(self.spatial_factor())?;
        let (_, _, h, w) = x.dims4().map_err(|_| bad_input("x", x))?;
        let larger = h > tile || w > tile;
        let tiled = match options.mode {
            TilingMode::Never => false,
            TilingMode::Always => larger,
            TilingMode::Auto { memory_budget_bytes } => {
                larger && self.encode_memory_estimate(x.dims(), x.dtype(), x.device()) > memory_budget_bytes
            }
        };
        if tiled {
            self.tiled_encode(x, options)
        } else {
            self.encode(x)
        }
    }

    /// Decodes `z` tile by tile (diffusers' `tiled_decode`), whatever its size.
    pub fn tiled_decode(&self, z: &Tensor, options: &TilingOptions) -> Result<Tensor> {
        let (tile_latent, tile_sample) = options.sizes(self.spatial_factor())?;
        let geometry = options.geometry(tile_latent, tile_sample)?;
        tiled(z, &geometry, |tile| self.decode(tile))
    }

    /// Encodes `x` tile by tile (diffusers' `_tiled_encode`), whatever its size.
    pub fn tiled_encode(&self, x: &Tensor, options: &TilingOptions) -> Result<DiagonalGaussianDistribution> {
        let (tile_latent, tile_sample) = options.sizes(self.spatial_factor())?;
        let geometry = options.geometry(tile_sample, tile_latent)?;
        // The two posterior parameters, blended as one moments tensor [N, 2·latent, h, w].
        let moments = tiled(x, &geometry, |tile| {
            let dist = self.encode(tile)?;
            Ok(Tensor::cat(&[&dist.mean, &dist.logvar], 1)?)
        })?;
        DiagonalGaussianDistribution::new(&moments)
    }
}

/// Runs `f` on overlapping tiles of `x` `[N, C, H, W]` and blends the results.
fn tiled(x: &Tensor, g: &Geometry, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..h).step_by(g.stride_in) {
        let mut row = Vec::new();
        for j in (0..w).step_by(g.stride_in) {
            // [N, C, ≤tile, ≤tile]: edge tiles are cut short, as Python slicing does.
            let tile = x.narrow(2, i, g.tile_in.min(h - i))?.narrow(3, j, g.tile_in.min(w - j))?;
            row.push(f(&tile)?);
        }
        rows.push(row);
    }
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut result_row = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], &tile, g.blend_extent, 2)?;
            }
            if j > 0 {
                tile = blend(&rows[i][j - 1], &tile, g.blend_extent, 3)?;
            }
            // diffusers blends in place: later tiles see this tile's blended values.
            rows[i][j] = tile.clone();
            let (th, tw) = (tile.dim(2)?, tile.dim(3)?);
            let kept = tile.narrow(2, 0, g.row_limit.min(th))?.narrow(3, 0, g.row_limit.min(tw))?;
            result_row.push(kept);
        }
        result_rows.push(Tensor::cat(&result_row, 3)?);
    }
    Ok(Tensor::cat(&result_rows, 2)?)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows (columns) of
/// `b` become `a`'s last ones · (1 − y/extent) + `b`'s · y/extent.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let e = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1usize; 4];
    shape[dim] = e;
    // torch multiplies an f32 tensor by the Python float cast to f32; so do we.
    let weights = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let v: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        Ok(Tensor::from_vec(v, shape.as_slice(), b.device())?.to_dtype(b.dtype())?)
    };
    let w_a = weights(&|t| 1.0 - t)?;
    let w_b = weights(&|t| t)?;
    let a_tail = a.narrow(dim, a.dim(dim)? - e, e)?;
    let b_head = b.narrow(dim, 0, e)?;
    let blended = (a_tail.broadcast_mul(&w_a)? + b_head.broadcast_mul(&w_b)?)?;
    let rest = b.dim(dim)? - e;
    if rest == 0 {
        return Ok(blended);
    }
    Ok(Tensor::cat(&[&blended, &b.narrow(dim, e, rest)?], dim)?)
}

fn bad_input(name: &'static str, t: &Tensor) -> ModelError {
    ModelError::BadInput { name, expected: "[N, C, H, W]".into(), got: t.dims().to_vec() }
}
