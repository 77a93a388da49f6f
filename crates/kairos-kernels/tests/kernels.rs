//! Each kernel against its plain candle path (`*_plain`) on small random f32 inputs.
//!
//! Tolerances: both sides are f32 with different summation orders (GEMM blocking, lane-wise
//! partial sums, a polynomial exp with ≤ 2.4e-7 relative error), so agreement is expected to a
//! few ulp of the output magnitudes times the reduction length's square root; the bounds below
//! are 1e-5 absolute on O(1) outputs (about 100 ulp), well under any real discrepancy (a wrong
//! index or missing term moves outputs by O(0.1)).

use candle_core::{DType, Device, Module, Tensor};
use kairos_kernels::{
    activation, activation_plain, attention, attention_heads, attention_heads_causal, attention_plain,
    attention_plain_causal, conv2d, conv2d_plain, conv2d_winograd, geglu, geglu_plain, group_norm, group_norm_plain,
    layer_norm, layer_norm_plain, linear, linear_plain, map_from_tokens, tokens_from_map, upsample_nearest2d,
    upsample_nearest2d_plain, Activation, Conv2dParams, WinogradTile,
};

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::from_vec(kairos_kernels::uniform(seed, shape.iter().product()), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn conv2d_matches_candle() {
    // 3×3 pad 1 (ResnetBlock2D), 3×3 stride 2 pad 1 (Downsample2D), 1×1 (shortcut, proj_in),
    // and an odd case: 3×3 pad 0 on a non-square input, no bias.
    let cases: [(usize, usize, usize, usize, usize, Conv2dParams, bool); 4] = [
        (3, 5, 7, 6, 3, Conv2dParams { padding: 1, stride: 1 }, true),
        (4, 6, 9, 8, 3, Conv2dParams { padding: 1, stride: 2 }, true),
        (5, 4, 6, 5, 1, Conv2dParams { padding: 0, stride: 1 }, true),
        (2, 3, 5, 7, 3, Conv2dParams { padding: 0, stride: 1 }, false),
    ];
    for (i, &(ci, co, h, w, k, params, with_bias)) in cases.iter().enumerate() {
        let x = randn(10 + i as u64, &[2, ci, h, w]);
        let wt = randn(20 + i as u64, &[co, ci, k, k]);
        let b = randn(30 + i as u64, &[co]);
        let bias = with_bias.then_some(&b);
        let got = conv2d(&x, &wt, bias, params).unwrap();
        let want = conv2d_plain(&x, &wt, bias, params).unwrap();
        let err = max_abs_diff(&got, &want);
        println!("conv2d case {i}: max abs err {err:e}");
        assert!(err < 1e-5, "case {i}: {err}");
    }
    // Strided input (a transpose) is made contiguous first.
    let x = randn(40, &[1, 3, 6, 5]).transpose(2, 3).unwrap();
    let wt = randn(41, &[2, 3, 3, 3]);
    let p = Conv2dParams { padding: 1, stride: 1 };
    assert!(max_abs_diff(&conv2d(&x, &wt, None, p).unwrap(), &conv2d_plain(&x, &wt, None, p).unwrap()) < 1e-5);
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Winograd against the direct convolution on small odd shapes: sizes that are not multiples of
/// the tile (clipped edge tiles), more than 16 tiles per row (two lane groups), batch 2, no bias.
/// Tolerance: max|a−b| ≤ 4e-6·max|b| (F(4,3)) and 1e-6·max|b| (F(2,3)): with at most 24 input
/// channels the GEMM rounding that the output transform amplifies is a few ulp; an index or
/// transform error moves outputs by O(max|b|).
#[test]
fn conv2d_winograd_matches_candle() {
    let cases: [(usize, usize, usize, usize, bool); 4] =
        [(3, 5, 7, 6, true), (24, 17, 9, 70, true), (16, 32, 13, 5, false), (1, 1, 1, 1, true)];
    for (tile, tol) in [(WinogradTile::F4, 4e-6f32), (WinogradTile::F2, 1e-6)] {
        for (i, &(ci, co, h, w, with_bias)) in cases.iter().enumerate() {
            let x = randn(100 + i as u64, &[2, ci, h, w]);
            let wt = randn(110 + i as u64, &[co, ci, 3, 3]);
            let b = randn(120 + i as u64, &[co]);
            let bias = with_bias.then_some(&b);
            let got = conv2d_winograd(&x, &wt, bias, tile).unwrap();
            let want = conv2d_plain(&x, &wt, bias, Conv2dParams { padding: 1, stride: 1 }).unwrap();
            let rel = max_abs_diff(&got, &want) / max_abs(&want);
            println!("winograd {tile:?} case {i}: max abs err / max abs {rel:e}");
            assert!(rel < tol, "{tile:?} case {i}: {rel}");
        }
    }
}

/// Accuracy on an SD-like convolution (a 320-channel ResnetBlock2D conv on a 32×32 latent: SiLU'd
/// activations, weights of std 1/√(9·Ci) as trained UNets have), both f32 paths against f64.
/// Tolerance: max error ≤ 1e-5·max|out| for F(4,3) (measured about 5e-6, 8× the direct
/// convolution's) and ≤ 2e-6·max|out| for F(2,3) and im2col (measured about 7e-7).
#[test]
fn conv2d_winograd_accuracy_sd_shape() {
    let (ci, co, hw) = (320, 320, 32);
    let x = candle_nn::ops::silu(&(randn(130, &[1, ci, hw, hw]) * 3.0).unwrap()).unwrap();
    let wt = (randn(131, &[co, ci, 3, 3]) * (3.0 / (9.0 * ci as f64)).sqrt()).unwrap();
    let p = Conv2dParams { padding: 1, stride: 1 };
    let exact = conv2d_plain(&x.to_dtype(DType::F64).unwrap(), &wt.to_dtype(DType::F64).unwrap(), None, p).unwrap();
    let scale = max_abs(&exact.to_dtype(DType::F32).unwrap()) as f64;
    let err = |t: &Tensor| {
        let d = (t.to_dtype(DType::F64).unwrap() - &exact).unwrap().abs().unwrap();
        d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() / scale
    };
    let direct = err(&conv2d_plain(&x, &wt, None, p).unwrap());
    let f2 = err(&conv2d_winograd(&x, &wt, None, WinogradTile::F2).unwrap());
    let f4 = err(&conv2d_winograd(&x, &wt, None, WinogradTile::F4).unwrap());
    println!("relative max error vs f64: direct {direct:e}, winograd F2 {f2:e}, F4 {f4:e}");
    assert!(direct < 2e-6 && f2 < 2e-6 && f4 < 1e-5, "direct {direct:e}, F2 {f2:e}, F4 {f4:e}");
}

#[test]
fn conv2d_winograd_rejects_other_kernels() {
    let x = randn(1, &[1, 3, 4, 4]);
    let wt = randn(2, &[2, 3, 1, 1]);
    let err = conv2d_winograd(&x, &wt, None, WinogradTile::F4).unwrap_err().to_string();
    assert!(err.contains("[Co, 3, 3, 3]"), "{err}");
}

#[test]
fn conv2d_rejects_mismatched_channels() {
    let x = randn(1, &[1, 3, 4, 4]);
    let wt = randn(2, &[2, 4, 3, 3]);
    let err = conv2d(&x, &wt, None, Conv2dParams { padding: 1, stride: 1 }).unwrap_err().to_string();
    assert!(err.contains("weight") && err.contains("[Co, 3, kh, kw]"), "{err}");
}

#[test]
fn attention_matches_candle() {
    // Self-attention with L not a multiple of the block, and cross-attention (S = 77).
    for (i, &(l, s, d)) in [(50usize, 50usize, 8usize), (33, 77, 16)].iter().enumerate() {
        let q = randn(50 + i as u64, &[2, 3, l, d]);
        let k = randn(60 + i as u64, &[2, 3, s, d]);
        let v = randn(70 + i as u64, &[2, 3, s, d]);
        let scale = (d as f64).powf(-0.5);
        let got = attention(&q, &k, &v, scale).unwrap();
        let want = attention_plain(&q, &k, &v, scale).unwrap();
        let err = max_abs_diff(&got, &want);
        println!("attention case {i}: max abs err {err:e}");
        assert!(err < 1e-5, "case {i}: {err}");
    }
    // Large logits: the max subtraction keeps exp finite; with 700 keys (several key blocks)
    // whose logits grow along the sequence, each block raises the rows' running maximum, so the
    // online rescaling of the earlier blocks' sums and outputs is exercised.
    for (i, s) in [9usize, 700].into_iter().enumerate() {
        let q = (randn(80, &[1, 1, 4, 8]) * 100.0).unwrap();
        let ramp = Tensor::arange(0f32, s as f32, &Device::Cpu).unwrap().reshape((1, 1, s, 1)).unwrap();
        let k = randn(81, &[1, 1, s, 8]).broadcast_mul(&((ramp / s as f64).unwrap() * 100.0).unwrap()).unwrap();
        let v = randn(82, &[1, 1, s, 8]);
        let err = max_abs_diff(&attention(&q, &k, &v, 1.0).unwrap(), &attention_plain(&q, &k, &v, 1.0).unwrap());
        assert!(err < 1e-5, "large logits, case {i}: {err}");
    }
}

#[test]
fn attention_heads_matches_split_heads() {
    // Heads interleaved [N, L, heads·d] against splitting them out for the plain path: self-
    // attention, cross-attention (S = 77), L = 600 over S = 2048 (many row and key blocks), and
    // the SD head widths (40, 80 and 160 in SD1.x, 64 in SD2/SDXL; 512 is the VAE's single head),
    // which the micro-kernels cover with different register tiles.
    for (i, &(l, s, heads, d)) in [
        (50usize, 50usize, 3usize, 8usize),
        (33, 77, 2, 16),
        (600, 2048, 3, 8),
        (100, 300, 2, 40),
        (61, 77, 2, 80),
        (50, 270, 1, 160),
        (50, 100, 2, 64),
        (20, 100, 1, 512),
    ]
    .iter()
    .enumerate()
    {
        let q = randn(90 + i as u64, &[2, l, heads * d]);
        let k = randn(91 + i as u64, &[2, s, heads * d]);
        let v = randn(92 + i as u64, &[2, s, heads * d]);
        let scale = (d as f64).powf(-0.5);
        let split = |t: &Tensor| t.reshape((2, (), heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let want = attention_plain(&split(&q), &split(&k), &split(&v), scale).unwrap();
        let want = want.transpose(1, 2).unwrap().reshape((2, l, heads * d)).unwrap();
        let got = attention_heads(&q, &k, &v, heads, scale).unwrap();
        let err = max_abs_diff(&got, &want);
        println!("attention_heads case {i}: max abs err {err:e}");
        assert!(err < 1e-5, "case {i}: {err}");
    }
    let q = randn(1, &[1, 4, 6]);
    let err = attention_heads(&q, &q, &q, 4, 1.0).unwrap_err().to_string();
    assert!(err.contains("divisible by heads (4)"), "{err}");
}

#[test]
fn attention_rejects_mismatched_heads() {
    let q = randn(1, &[1, 2, 4, 8]);
    let k = randn(2, &[1, 3, 4, 8]);
    assert!(attention(&q, &k, &k, 1.0).is_err());
}

#[test]
fn group_norm_matches_candle() {
    for silu in [false, true] {
        for (i, shape) in [[2usize, 8, 5, 3], [1, 6, 4, 4]].iter().enumerate() {
            // Offset inputs (mean 3) exercise the two-pass variance.
            let x = (randn(90 + i as u64, shape) + 3.0).unwrap();
            let weight = randn(91 + i as u64, &[shape[1]]);
            let bias = randn(92 + i as u64, &[shape[1]]);
            let got = group_norm(&x, &weight, &bias, 2, 1e-6, silu).unwrap();
            let want = group_norm_plain(&x, &weight, &bias, 2, 1e-6, silu).unwrap();
            let err = max_abs_diff(&got, &want);
            println!("group_norm silu={silu} case {i}: max abs err {err:e}");
            assert!(err < 1e-5, "silu={silu} case {i}: {err}");
        }
    }
    // 3-D input [N, C, L] (the attention's group_norm path).
    let x = randn(95, &[2, 4, 7]);
    let (w, b) = (randn(96, &[4]), randn(97, &[4]));
    let err = max_abs_diff(
        &group_norm(&x, &w, &b, 4, 1e-5, false).unwrap(),
        &group_norm_plain(&x, &w, &b, 4, 1e-5, false).unwrap(),
    );
    assert!(err < 1e-5, "3-D: {err}");
}

/// Rows of a transformer block's width (320 = 20 vectors), one with a ragged tail (77) and a
/// tiny one, in the 3-D `[N, L, D]` shape, against candle's op and against f64. Inputs carry a
/// common offset (candle's one-pass variance, Σx²/n − mean², loses digits to it; the two-pass
/// one does not): the kernel must be within 1e-6 of f64 (a few ulp of O(1) outputs) and 5e-5 of
/// candle (which measured 1.2e-5 off f64 here).
/// Causal attention (CLIP's text self-attention) on heads interleaved, against the plain path
/// with its −∞ mask: 77 tokens (one key block, ragged rows) and 200 (two key blocks, query jobs
/// whose later blocks are skipped). Tolerance as for `attention_matches_candle`.
#[test]
fn attention_heads_causal_matches_masked_plain() {
    for (i, &(l, heads, d)) in [(77usize, 12usize, 64usize), (200, 2, 40)].iter().enumerate() {
        let (q, k, v) = (
            randn(400 + i as u64, &[2, l, heads * d]),
            randn(410 + i as u64, &[2, l, heads * d]),
            randn(420 + i as u64, &[2, l, heads * d]),
        );
        let scale = (d as f64).powf(-0.5);
        let got = attention_heads_causal(&q, &k, &v, heads, scale).unwrap();
        let split = |t: &Tensor| t.reshape((2, l, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let want = attention_plain_causal(&split(&q), &split(&k), &split(&v), scale).unwrap();
        let want = want.transpose(1, 2).unwrap().reshape((2, l, heads * d)).unwrap();
        let err = max_abs_diff(&got, &want);
        println!("causal attention case {i}: max abs err {err:e}");
        assert!(err < 1e-5, "case {i}: {err}");
    }
    let q = randn(430, &[1, 5, 8]);
    let err = attention_heads_causal(&q, &randn(431, &[1, 6, 8]), &randn(432, &[1, 6, 8]), 2, 0.5).unwrap_err();
    assert!(err.to_string().contains("S = L"), "{err}");
}

/// CLIP's MLP activations against candle's (quick GELU: scale, sigmoid, product; GELU: candle's
/// erf), over the range pre-activations take plus large magnitudes (±40, where the sigmoid
/// saturates). Tolerance: 1e-5 absolute, as for GEGLU (a few ulp at |x| = 8; the vectorised exp
/// and erf are within 2.5e-7 relative and 2e-7 absolute), plus 1e-6 relative for the ±40 inputs.
#[test]
fn activations_match_candle() {
    let x = (randn(500, &[3, 77, 130]) * 8.0).unwrap();
    let x = Tensor::cat(&[&x.flatten_all().unwrap(), &Tensor::new(&[-40f32, 40.0, 0.0], &Device::Cpu).unwrap()], 0)
        .unwrap();
    for act in [Activation::QuickGelu, Activation::GeluErf] {
        let got = activation(&x, act).unwrap();
        let want = activation_plain(&x, act).unwrap();
        let tol = ((want.abs().unwrap() * 1e-6).unwrap() + 1e-5).unwrap();
        let excess =
            ((&got - &want).unwrap().abs().unwrap() - tol).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        println!("{act:?}: max abs err {:e}", max_abs_diff(&got, &want));
        assert!(excess <= 0.0, "{act:?}: error exceeds the tolerance by {excess}");
    }
}

#[test]
fn layer_norm_matches_candle_and_f64() {
    for (i, &(rows, d)) in [(6usize, 320usize), (5, 77), (1, 3)].iter().enumerate() {
        let x = (randn(300 + i as u64, &[2, rows, d]) + 2.0).unwrap();
        let w = randn(310 + i as u64, &[d]);
        let b = randn(320 + i as u64, &[d]);
        let got = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let want = layer_norm_plain(&x, &w, &b, 1e-5).unwrap();
        let exact = {
            let x = x.to_dtype(DType::F64).unwrap();
            let centred = x.broadcast_sub(&x.mean_keepdim(2).unwrap()).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(2).unwrap();
            let normed = centred.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
            let (w, b) = (w.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
            normed.broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap().to_dtype(DType::F32).unwrap()
        };
        let (err, err64) = (max_abs_diff(&got, &want), max_abs_diff(&got, &exact));
        println!("layer_norm case {i}: max abs err vs candle {err:e}, vs f64 {err64:e}");
        // Against f64 to a few ulp; candle's one-pass variance is itself ~1e-5 off at offset 2.
        assert!(err64 < 1e-6 && err < 5e-5, "case {i}: vs candle {err}, vs f64 {err64}");
    }
    let x = randn(330, &[1, 4, 8]);
    let err = layer_norm(&x, &randn(331, &[6]), &randn(332, &[6]), 1e-5).unwrap_err().to_string();
    assert!(err.contains("[.., 6]"), "{err}");
}

#[test]
fn group_norm_rejects_bad_groups() {
    let x = randn(1, &[1, 6, 2, 2]);
    let (w, b) = (randn(2, &[6]), randn(3, &[6]));
    let err = group_norm(&x, &w, &b, 4, 1e-5, false).unwrap_err().to_string();
    assert!(err.contains("num_groups (4)"), "{err}");
}

#[test]
fn linear_matches_candle() {
    // Rank 3 with bias (attention projections, feed-forward), rank 2 without, a strided input.
    let w = randn(1, &[7, 5]);
    let b = randn(2, &[7]);
    let x3 = randn(3, &[2, 9, 5]);
    let err = max_abs_diff(&linear(&x3, &w, Some(&b)).unwrap(), &linear_plain(&x3, &w, Some(&b)).unwrap());
    println!("linear rank 3: max abs err {err:e}");
    assert!(err < 1e-5, "rank 3: {err}");
    let x2 = randn(4, &[4, 5]);
    let err = max_abs_diff(&linear(&x2, &w, None).unwrap(), &linear_plain(&x2, &w, None).unwrap());
    assert!(err < 1e-5, "rank 2, no bias: {err}");
    let xt = randn(5, &[5, 6]).t().unwrap();
    let err = max_abs_diff(&linear(&xt, &w, Some(&b)).unwrap(), &linear_plain(&xt, &w, Some(&b)).unwrap());
    assert!(err < 1e-5, "strided input: {err}");
    // Zero input features: the output is the bias on every row.
    let empty = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
    let w0 = Tensor::zeros((7, 0), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&linear(&empty, &w0, Some(&b)).unwrap(), &b.unsqueeze(0).unwrap().repeat((3, 1)).unwrap()),
        0.0
    );
    let err = linear(&randn(6, &[2, 4]), &w, None).unwrap_err().to_string();
    assert!(err.contains("[.., 5]"), "{err}");
}

/// A weight whose data is stored transposed (`[in, out]`, viewed as `[out, in]`), as
/// `nn::Linear::new_few_rows` stores it, gives the same layer: through `linear`, the projections,
/// and the layer itself (70×45 and 45×70: partial 32-blocks of the transposition).
#[test]
fn transposed_weights_give_the_same_layer() {
    for (dout, din) in [(70usize, 45usize), (45, 70), (7, 5)] {
        let w = randn(1, &[dout, din]);
        let b = randn(2, &[dout]);
        let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!wt.is_contiguous());
        let x = randn(3, &[2, 9, din]);
        let want = linear_plain(&x, &w, Some(&b)).unwrap();
        let err = max_abs_diff(&linear(&x, &wt, Some(&b)).unwrap(), &want);
        assert!(err < 1e-5, "linear {dout}×{din}: {err}");
        let layer = kairos_kernels::nn::Linear::new_few_rows(w.clone(), Some(b.clone())).unwrap();
        let err = max_abs_diff(&layer.forward(&x).unwrap(), &want);
        assert!(err < 1e-5, "new_few_rows {dout}×{din}: {err}");
        let (n, h, wd) = (2, 3, 4);
        let map = randn(4, &[n, din, h, wd]);
        let err =
            max_abs_diff(&tokens_from_map(&map, &wt, Some(&b)).unwrap(), &tokens_from_map(&map, &w, Some(&b)).unwrap());
        assert!(err < 1e-5, "tokens_from_map {dout}×{din}: {err}");
        let (tokens, residual) = (randn(5, &[n, h * wd, din]), randn(6, &[n, dout, h, wd]));
        let err = max_abs_diff(
            &map_from_tokens(&tokens, &wt, None, &residual).unwrap(),
            &map_from_tokens(&tokens, &w, None, &residual).unwrap(),
        );
        assert!(err < 1e-5, "map_from_tokens {dout}×{din}: {err}");
    }
}

#[test]
fn projections_match_permute_and_linear() {
    // A spatial transformer's proj_in (map -> tokens) and proj_out (tokens -> map + residual)
    // against the plain permute + linear (+ add), with and without bias, on a non-square map.
    let (n, ci, co, h, w) = (2, 6, 5, 3, 4);
    let x = randn(1, &[n, ci, h, w]);
    let wt = randn(2, &[co, ci]);
    let b = randn(3, &[co]);
    let residual = randn(4, &[n, co, h, w]);
    for bias in [Some(&b), None] {
        let tokens = x.permute((0, 2, 3, 1)).unwrap().reshape((n, h * w, ci)).unwrap();
        let want = linear_plain(&tokens, &wt, bias).unwrap();
        let err = max_abs_diff(&tokens_from_map(&x, &wt, bias).unwrap(), &want);
        assert!(err < 1e-5, "tokens_from_map (bias {}): {err}", bias.is_some());
        let back = randn(5, &[n, h * w, ci]);
        let map =
            linear_plain(&back, &wt, bias).unwrap().reshape((n, h, w, co)).unwrap().permute((0, 3, 1, 2)).unwrap();
        let want = (map + &residual).unwrap();
        let err = max_abs_diff(&map_from_tokens(&back, &wt, bias, &residual).unwrap(), &want);
        assert!(err < 1e-5, "map_from_tokens (bias {}): {err}", bias.is_some());
    }
    let err = tokens_from_map(&x, &randn(6, &[co, ci + 1]), None).unwrap_err().to_string();
    assert!(err.contains("weight [5, 7]"), "{err}");
    let err =
        map_from_tokens(&randn(5, &[n, h * w, ci]), &wt, None, &randn(7, &[n, co, h, w + 1])).unwrap_err().to_string();
    assert!(err.contains("residual [N, 5, H, W]"), "{err}");
}

#[test]
fn geglu_matches_candle() {
    // Gates over the whole range where erf bends and saturates (|x| up to 8).
    let x = (randn(1, &[2, 3, 2 * 37]) * 8.0).unwrap();
    let err = max_abs_diff(&geglu(&x).unwrap(), &geglu_plain(&x).unwrap());
    println!("geglu: max abs err {err:e}");
    assert!(err < 1e-5, "{err}");
    let err = geglu(&randn(2, &[2, 3])).unwrap_err().to_string();
    assert!(err.contains("even last dimension"), "{err}");
}

#[test]
fn non_f32_falls_back_to_candle() {
    let x = randn(1, &[1, 4, 3, 3]).to_dtype(DType::F64).unwrap();
    let (w, b) = (randn(2, &[4]).to_dtype(DType::F64).unwrap(), randn(3, &[4]).to_dtype(DType::F64).unwrap());
    let got = group_norm(&x, &w, &b, 2, 1e-5, true).unwrap();
    let want = group_norm_plain(&x, &w, &b, 2, 1e-5, true).unwrap();
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    );
    // The projections' plain path against the f32 kernels (the f64 products round the same to f32).
    let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let (xf, wt, bias) = (randn(4, &[1, 4, 3, 3]), randn(5, &[2, 4]), randn(6, &[2]));
    let tokens = tokens_from_map(&f64(&xf), &f64(&wt), Some(&f64(&bias))).unwrap();
    let err = max_abs_diff(&tokens.to_dtype(DType::F32).unwrap(), &tokens_from_map(&xf, &wt, Some(&bias)).unwrap());
    assert!(err < 1e-5, "tokens_from_map f64: {err}");
    let residual = randn(7, &[1, 2, 3, 3]);
    let map = map_from_tokens(&tokens, &f64(&randn(8, &[2, 2])), None, &f64(&residual)).unwrap();
    let want = map_from_tokens(&tokens.to_dtype(DType::F32).unwrap(), &randn(8, &[2, 2]), None, &residual).unwrap();
    assert!(max_abs_diff(&map.to_dtype(DType::F32).unwrap(), &want) < 1e-5);
}

/// Nearest doubling against candle's op, exactly: square, odd and one-pixel maps, a transposed
/// (non-contiguous) input, and a non-doubling size (candle's path, the same call).
#[test]
fn upsample_nearest2d_matches_candle() {
    let cases = [(2usize, 3usize, 8usize, 8usize), (1, 5, 7, 3), (2, 2, 1, 1)];
    for (i, &(n, c, h, w)) in cases.iter().enumerate() {
        let x = randn(90 + i as u64, &[n, c, h, w]);
        for x in [x.clone(), x.transpose(2, 3).unwrap()] {
            let (_, _, h, w) = x.dims4().unwrap();
            for (oh, ow) in [(2 * h, 2 * w), (3 * h, 2 * w + 1)] {
                let got = upsample_nearest2d(&x, oh, ow).unwrap();
                let want = upsample_nearest2d_plain(&x, oh, ow).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert_eq!(max_abs_diff(&got, &want), 0.0, "case {i}, {h}×{w} → {oh}×{ow}");
            }
        }
    }
}
