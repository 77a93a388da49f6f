//! Parity of the UNet/VAE building blocks against diffusers 0.42.1 modules with seeded random
//! weights (fixtures from `tools/fixtures/unet.py`; constructor arguments there and in
//! `tests/fixtures/unet_blocks.json` match the ones below).
//!
//! Tolerance: max|a−b|/max|b| ≤ 1e-5 per block (measured: at most 4e-7). Weights and inputs are
//! identical f32 values on both sides; the only differences are summation order in
//! convolutions, matmuls and norms (torch's oneDNN/MKL vs candle's gemm), a few f32 ulps for
//! reductions of a few hundred terms. 1e-5 leaves 25× room for other BLAS builds while any wrong
//! weight, missing term or misplaced activation gives errors of order 1e-2 to 1.

mod unet_fixtures;

use kairos_models::activations::Activation;
use kairos_models::attention_processor::{Attention, AttentionConfig};
use kairos_models::resnet::{
    Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, TimeEmbeddingNorm, Upsample2D,
};
use unet_fixtures::{assert_close, load_block};

const TOL: f64 = 1e-5;

#[test]
fn resnet_block_2d_matches_diffusers_temb_shortcut() {
    let case = load_block("resnet_temb_shortcut");
    let cfg = ResnetBlock2DConfig {
        out_channels: Some(32),
        temb_channels: Some(24),
        groups: 8,
        eps: 1e-5,
        ..Default::default()
    };
    let block = ResnetBlock2D::new(case.vb.clone(), 16, &cfg).unwrap();
    let out = block
        .forward(case.input("x"), Some(case.input("temb")))
        .unwrap();
    assert_close("resnet_temb_shortcut", &out, &case.output, TOL);
}

#[test]
fn resnet_block_2d_matches_diffusers_no_temb() {
    let case = load_block("resnet_no_temb");
    let cfg = ResnetBlock2DConfig {
        out_channels: Some(16),
        temb_channels: None,
        groups: 4,
        eps: 1e-6,
        output_scale_factor: 2.0,
        ..Default::default()
    };
    let block = ResnetBlock2D::new(case.vb.clone(), 16, &cfg).unwrap();
    let out = block.forward(case.input("x"), None).unwrap();
    assert_close("resnet_no_temb", &out, &case.output, TOL);
}

#[test]
fn resnet_block_2d_matches_diffusers_scale_shift() {
    let case = load_block("resnet_scale_shift");
    let cfg = ResnetBlock2DConfig {
        out_channels: Some(16),
        temb_channels: Some(24),
        groups: 8,
        time_embedding_norm: TimeEmbeddingNorm::ScaleShift,
        skip_time_act: true,
        non_linearity: Activation::Silu,
        ..Default::default()
    };
    let block = ResnetBlock2D::new(case.vb.clone(), 16, &cfg).unwrap();
    let out = block
        .forward(case.input("x"), Some(case.input("temb")))
        .unwrap();
    assert_close("resnet_scale_shift", &out, &case.output, TOL);
}

#[test]
fn downsample_2d_matches_diffusers() {
    for (name, use_conv, out_channels, padding) in [
        ("downsample_conv_pad1", true, Some(24), 1),
        ("downsample_conv_pad0", true, Some(16), 0),
        ("downsample_avgpool", false, None, 1),
    ] {
        let case = load_block(name);
        let down = Downsample2D::new(case.vb.clone(), 16, use_conv, out_channels, padding).unwrap();
        let out = down.forward(case.input("x")).unwrap();
        assert_close(name, &out, &case.output, TOL);
    }
}

#[test]
fn upsample_2d_matches_diffusers() {
    for (name, out_channels, output_size) in [
        ("upsample_conv", Some(24), None),
        ("upsample_output_size", None, Some((7, 9))),
    ] {
        let case = load_block(name);
        let up = Upsample2D::new(case.vb.clone(), 16, true, out_channels).unwrap();
        let out = up.forward(case.input("x"), output_size).unwrap();
        assert_close(name, &out, &case.output, TOL);
    }
}

#[test]
fn attention_matches_diffusers_self() {
    let case = load_block("attention_self");
    let cfg = AttentionConfig {
        heads: 4,
        dim_head: 8,
        ..AttentionConfig::new(32)
    };
    let attn = Attention::new(case.vb.clone(), &cfg).unwrap();
    let out = attn.forward(case.input("x"), None).unwrap();
    assert_close("attention_self", &out, &case.output, TOL);
}

#[test]
fn attention_matches_diffusers_cross() {
    let case = load_block("attention_cross");
    let cfg = AttentionConfig {
        cross_attention_dim: Some(24),
        heads: 2,
        dim_head: 16,
        upcast_attention: true,
        ..AttentionConfig::new(32)
    };
    let attn = Attention::new(case.vb.clone(), &cfg).unwrap();
    let out = attn
        .forward(case.input("x"), Some(case.input("encoder_hidden_states")))
        .unwrap();
    assert_close("attention_cross", &out, &case.output, TOL);
}

#[test]
fn attention_matches_diffusers_vae_spatial() {
    for (name, heads, dim_head, eps, rescale) in [
        ("attention_vae_spatial", 1, 16, 1e-6, 1.0),
        ("attention_rescale", 2, 8, 1e-5, 2.0),
    ] {
        let case = load_block(name);
        let cfg = AttentionConfig {
            heads,
            dim_head,
            eps,
            norm_num_groups: Some(4),
            residual_connection: true,
            bias: true,
            upcast_softmax: true,
            rescale_output_factor: rescale,
            ..AttentionConfig::new(16)
        };
        let attn = Attention::new(case.vb.clone(), &cfg).unwrap();
        let out = attn.forward(case.input("x"), None).unwrap();
        assert_close(name, &out, &case.output, TOL);
    }
}
