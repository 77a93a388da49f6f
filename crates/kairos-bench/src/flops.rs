//! FLOPs of one forward pass, counted from the architecture: the multiply-adds of convolutions,
//! linear layers and attention products (2 FLOPs each). Norms, activations and softmax are left
//! out (a few percent), as is customary, so GFLOP/s compare with a GEMM's.

use kairos_models::autoencoders::AutoencoderKLConfig;
use kairos_models::text_encoders::clip::CLIPTextConfig;

/// `k×k` convolution, `ci → co`, producing `h×w` pixels.
fn conv(ci: usize, co: usize, k: usize, h: usize, w: usize) -> f64 {
    2.0 * (ci * co * k * k) as f64 * (h * w) as f64
}

/// Linear `din → dout` on `tokens` rows.
fn linear(tokens: usize, din: usize, dout: usize) -> f64 {
    2.0 * tokens as f64 * (din * dout) as f64
}

/// `q·kᵀ` and `p·v` for `l` queries, `s` keys, `dim` channels summed over heads.
fn attention(l: usize, s: usize, dim: usize) -> f64 {
    4.0 * (l * s) as f64 * dim as f64
}

/// `ResnetBlock2D` `ci → co` at `h×w` (with a 1×1 shortcut when channels change).
fn resnet(ci: usize, co: usize, h: usize, w: usize, temb: usize) -> f64 {
    conv(ci, co, 3, h, w)
        + conv(co, co, 3, h, w)
        + linear(1, temb, co)
        + if ci != co { conv(ci, co, 1, h, w) } else { 0.0 }
}

/// `Transformer2DModel` with `depth` `BasicTransformerBlock`s on `c` channels at `h×w`,
/// cross-attending to `ctx_len` tokens of width `ctx_dim` (`proj_in`/`proj_out` cost the same as
/// 1×1 convolutions or as linear layers).
fn transformer(c: usize, h: usize, w: usize, ctx_len: usize, ctx_dim: usize, depth: usize) -> f64 {
    let l = h * w;
    let proj = 2.0 * linear(l, c, c);
    let attn1 = 4.0 * linear(l, c, c) + attention(l, l, c);
    let attn2 = 2.0 * linear(l, c, c) + 2.0 * linear(ctx_len, ctx_dim, c) + attention(l, ctx_len, c);
    let ff = linear(l, c, 8 * c) + linear(l, 4 * c, c);
    proj + depth as f64 * (attn1 + attn2 + ff)
}

/// The parts of a UNet config the count needs.
#[derive(Debug, Clone)]
pub struct UNetShape {
    /// `block_out_channels`.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`.
    pub layers_per_block: usize,
    /// Whether each down block has attention (`CrossAttnDownBlock2D`); up blocks mirror it.
    pub down_attention: Vec<bool>,
    /// `cross_attention_dim`.
    pub cross_attention_dim: usize,
    /// `in_channels` (= `out_channels`).
    pub in_channels: usize,
    /// `transformer_layers_per_block`: `BasicTransformerBlock`s per `Transformer2DModel` of each
    /// down block (SDXL base `[1, 2, 10]`); the mid block takes the last, up blocks the list
    /// reversed, as in diffusers. Empty: 1 everywhere (SD1/SD2).
    pub transformer_layers_per_block: Vec<usize>,
    /// `projection_class_embeddings_input_dim` of a `text_time` UNet (SDXL base 2816: pooled text
    /// and six time ids): the input width of `add_embedding`; `None` without one.
    pub addition_embed_input_dim: Option<usize>,
}

/// FLOPs of one `UNet2DConditionModel` call on `batch` latents of `h×w` with 77 context tokens.
pub fn unet(u: &UNetShape, batch: usize, h: usize, w: usize) -> f64 {
    let ch = &u.block_out_channels;
    let (Some(&c0), Some(&mid)) = (ch.first(), ch.last()) else { return 0.0 };
    let temb = 4 * c0;
    let depth = |i: usize| u.transformer_layers_per_block.get(i).copied().unwrap_or(1);
    let ctx = |c, h, w, i| transformer(c, h, w, 77, u.cross_attention_dim, depth(i));
    let mut f = conv(u.in_channels, c0, 3, h, w) + linear(1, c0, temb) + linear(1, temb, temb);
    if let Some(add) = u.addition_embed_input_dim {
        // add_embedding: linear_1, SiLU, linear_2 on the pooled text and projected time ids.
        f += linear(1, add, temb) + linear(1, temb, temb);
    }
    let (mut hh, mut ww) = (h, w);
    let mut skips = vec![c0];
    let mut prev = c0;
    for (i, &c) in ch.iter().enumerate() {
        for _ in 0..u.layers_per_block {
            f += resnet(prev, c, hh, ww, temb);
            if u.down_attention.get(i) == Some(&true) {
                f += ctx(c, hh, ww, i);
            }
            prev = c;
            skips.push(c);
        }
        if i + 1 < ch.len() {
            // Downsample2D: 3×3 stride 2.
            hh = hh.div_ceil(2);
            ww = ww.div_ceil(2);
            f += conv(c, c, 3, hh, ww);
            skips.push(c);
        }
    }
    f += 2.0 * resnet(mid, mid, hh, ww, temb) + ctx(mid, hh, ww, ch.len() - 1);
    for (i, &c) in ch.iter().rev().enumerate() {
        let level = ch.len() - 1 - i;
        let attn = u.down_attention.get(level) == Some(&true);
        for _ in 0..=u.layers_per_block {
            let skip = skips.pop().unwrap_or(0);
            f += resnet(prev + skip, c, hh, ww, temb);
            if attn {
                f += ctx(c, hh, ww, level);
            }
            prev = c;
        }
        if i + 1 < ch.len() {
            hh *= 2;
            ww *= 2;
            f += conv(c, c, 3, hh, ww);
        }
    }
    f += conv(c0, u.in_channels, 3, hh, ww);
    f * batch as f64
}

/// FLOPs of `AutoencoderKL.decode` (post_quant_conv and decoder) of `batch` latents of `h×w`.
pub fn vae_decode(c: &AutoencoderKLConfig, batch: usize, h: usize, w: usize) -> f64 {
    let ch: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
    let lat = c.latent_channels;
    let Some(&top) = ch.first() else { return 0.0 };
    let (mut hh, mut ww) = (h, w);
    let mut f = conv(lat, lat, 1, hh, ww) + conv(lat, top, 3, hh, ww);
    // Mid block: resnet, single-head attention over h·w tokens, resnet.
    let l = hh * ww;
    f += 2.0 * resnet(top, top, hh, ww, 0) + 4.0 * linear(l, top, top) + attention(l, l, top);
    let mut prev = top;
    for (i, &c_out) in ch.iter().enumerate() {
        for _ in 0..=c.layers_per_block {
            f += resnet(prev, c_out, hh, ww, 0);
            prev = c_out;
        }
        if i + 1 < ch.len() {
            hh *= 2;
            ww *= 2;
            f += conv(c_out, c_out, 3, hh, ww);
        }
    }
    f += conv(prev, c.out_channels, 3, hh, ww);
    f * batch as f64
}

/// FLOPs of the CLIP text transformer on `batch` sequences of `tokens`.
pub fn clip_text(c: &CLIPTextConfig, batch: usize, tokens: usize) -> f64 {
    let d = c.hidden_size;
    let layer =
        4.0 * linear(tokens, d, d) + attention(tokens, tokens, d) + 2.0 * linear(tokens, d, c.intermediate_size);
    layer * c.num_hidden_layers as f64 * batch as f64
}

/// FLOPs of `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`): the text transformer and the
/// projection of each sequence's pooled token.
pub fn clip_text_with_projection(c: &CLIPTextConfig, batch: usize, tokens: usize) -> f64 {
    clip_text(c, batch, tokens) + linear(batch, c.hidden_size, c.projection_dim)
}
