//! The bf16 GEMM and the layers that use it, against f64 references.
//!
//! Tolerances: the GEMM rounds each input to bf16 (8 significant bits: relative error ≤ 2⁻⁸) and multiplies exactly
//! in f32, so against the f64 product of the *rounded* inputs only the f32 summation differs:
//! ≤ K·2⁻²⁴·Σ|aₖbₖ| (bound (6e-8·K + 1e-7)·Σ|aₖbₖ|, the worst case plus the final rounding). Against the
//! *unrounded* inputs each product moves by at most (2·2⁻⁸ + 2⁻¹⁶)|aₖbₖ|, so the bound is
//! 8e-3·Σ|aₖbₖ| (Σ|aₖbₖ| + |C| when accumulating onto C) — the error a bf16 path is expected to have, and what a wrong index or missing
//! term (O(|aₖbₖ|) per element) exceeds.

use half::bf16;
use kairos_kernels::gemm_bf16::{self, MatRef, PackedA, PackedB};
use kairos_kernels::uniform as randn;

fn round(x: f32) -> f64 {
    bf16::from_f32(x).to_f64()
}

/// Checks `c` (`m × n`, row stride `ldc`) against `alpha·a·b + c0`, with `a(i, k)` and `b(k, j)`
/// read through the closures, both for bf16-rounded and exact inputs.
#[allow(clippy::too_many_arguments)]
fn check(
    label: &str,
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    alpha: f32,
    c0: &[f32],
    c: &[f32],
    ldc: usize,
) {
    let mut worst = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let (mut rounded, mut exact, mut magnitude) = (0f64, 0f64, 0f64);
            for kk in 0..k {
                let (x, y) = (a(i, kk), b(kk, j));
                rounded += round(x) * round(y);
                exact += x as f64 * y as f64;
                magnitude += (x as f64 * y as f64).abs();
            }
            let (alpha, base) = (alpha as f64, c0[i * ldc + j] as f64);
            let got = c[i * ldc + j] as f64;
            // The final f32 addition onto C rounds relative to |C| too.
            let scale = alpha.abs() * magnitude + base.abs() + f64::MIN_POSITIVE;
            let e_rounded = (got - base - alpha * rounded).abs() / scale;
            let e_exact = (got - base - alpha * exact).abs() / scale;
            assert!(
                e_rounded < 6e-8 * k as f64 + 1e-7,
                "{label} ({i},{j}): {got} vs {} (rounded inputs)",
                base + alpha * rounded
            );
            assert!(e_exact < 8e-3, "{label} ({i},{j}): {got} vs {} (exact inputs)", base + alpha * exact);
            worst = (worst.0.max(e_rounded), worst.1.max(e_exact));
        }
    }
    println!("{label}: max error / Σ|ab|: {:.2e} vs rounded inputs, {:.2e} vs exact inputs", worst.0, worst.1);
}

#[test]
fn gemm_matches_f64_reference() {
    println!("kernel: {} (fast: {})", gemm_bf16::kernel_name(), gemm_bf16::available());
    // Edges of every kind: M and N not multiples of MR/NR, odd K, K spanning several cache
    // blocks (K > 256), a single row, and several parallel tasks.
    for (case, &(m, n, k)) in
        [(13usize, 33usize, 7usize), (1, 5, 1), (30, 70, 301), (100, 300, 160), (12, 32, 2), (64, 64, 600)]
            .iter()
            .enumerate()
    {
        let a = randn(1 + case as u64, m * k);
        let b = randn(100 + case as u64, k * n);
        let ldc = n + 3;
        let c0 = randn(200 + case as u64, m * ldc);
        let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
        let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
        for (accumulate, parallel, alpha) in [(false, true, 1.0f32), (true, false, 0.5)] {
            let mut c = c0.clone();
            gemm_bf16::gemm(&pa, &pb, &mut c, ldc, alpha, accumulate, parallel);
            let base: Vec<f32> = if accumulate { c0.clone() } else { vec![0.0; c0.len()] };
            let label = format!("case {case} {m}x{n}x{k} accumulate={accumulate}");
            check(&label, (m, n, k), |i, kk| a[i * k + kk], |kk, j| b[kk * n + j], alpha, &base, &c, ldc);
            // Padding columns between rows are untouched.
            for i in 0..m {
                assert_eq!(&c[i * ldc + n..(i + 1) * ldc], &c0[i * ldc + n..(i + 1) * ldc], "{label} row {i}");
            }
        }
    }
}

#[test]
fn gemm_reads_strided_and_half_inputs() {
    // A transposed (column-major) A, B given as the rows of an [N, K] weight (a Linear layer's),
    // stored as bf16 and f16.
    let (m, n, k) = (17, 40, 23);
    let at = randn(7, k * m); // A stored K × M
    let w = randn(8, n * k); // B = wᵀ, w stored N × K
    let pa = PackedA::new(MatRef::row_major(&at, k, m).unwrap().t());
    let w_bf16: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
    let w_f16: Vec<half::f16> = w.iter().map(|&x| half::f16::from_f32(x)).collect();
    let a = |i: usize, kk: usize| at[kk * m + i];
    // The f16 weights are rounded to f16 first: the reference reads those values.
    let b_f32 = |kk: usize, j: usize| w[j * k + kk];
    let b_f16 = |kk: usize, j: usize| w_f16[j * k + kk].to_f32();
    for (label, pb, b) in [
        ("f32", PackedB::new(MatRef::row_major(&w, n, k).unwrap().t()), &b_f32 as &dyn Fn(usize, usize) -> f32),
        ("bf16", PackedB::new(MatRef::row_major(&w_bf16, n, k).unwrap().t()), &b_f32),
        ("f16", PackedB::new(MatRef::row_major(&w_f16, n, k).unwrap().t()), &b_f16),
    ] {
        let mut c = vec![0f32; m * n];
        gemm_bf16::gemm(&pa, &pb, &mut c, n, 1.0, false, true);
        let zeros = vec![0f32; m * n];
        check(label, (m, n, k), a, b, 1.0, &zeros, &c, n);
    }
}

/// `x` rounded to bf16 and back: what the bf16 GEMM multiplies.
fn rounded(x: &candle_core::Tensor) -> candle_core::Tensor {
    x.to_dtype(candle_core::DType::BF16).unwrap().to_dtype(candle_core::DType::F32).unwrap()
}

/// Max |a - b| / max |b|.
fn rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
}

/// The layers with bf16 weights (packed for the bf16 GEMM on AVX512-BF16 CPUs, converted per call
/// elsewhere) against candle's f32 ops on the bf16-rounded weights and inputs: only the f32
/// summation order differs, so 1e-5 of the output's range (sums of ≤ 288 terms of O(1)).
#[test]
fn bf16_layers_match_f32_on_rounded_values() {
    use candle_core::{DType, Device, Module, Tensor};
    use kairos_kernels::nn::{Conv2d, Linear};
    use kairos_kernels::{conv2d_plain, Conv2dParams};
    let t = |seed: u64, shape: &[usize]| {
        Tensor::from_vec(randn(seed, shape.iter().product()), shape, &Device::Cpu).unwrap()
    };
    // Linear on [batch, tokens, in] with and without bias, out not a multiple of 32.
    let (x, w, b) = (t(1, &[2, 13, 70]), t(2, &[45, 70]), t(3, &[45]));
    for bias in [Some(b.clone()), None] {
        let layer =
            Linear::new(w.to_dtype(DType::BF16).unwrap(), bias.clone().map(|b| b.to_dtype(DType::BF16).unwrap()))
                .unwrap();
        let got = layer.forward(&x).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want = rounded(&x).broadcast_matmul(&rounded(&w).t().unwrap()).unwrap();
        let want = match &bias {
            Some(b) => want.broadcast_add(&rounded(b)).unwrap(),
            None => want,
        };
        let err = rel_err(&got, &want);
        println!("linear bias={}: {err:.2e}", bias.is_some());
        assert!(err < 1e-5, "{err}");
        // Plus a residual, folded into the GEMM's start.
        let residual = t(4, want.dims());
        let err = rel_err(&layer.forward_residual(&x, &residual).unwrap(), &(&want + &residual).unwrap());
        assert!(err < 1e-5, "linear + residual, bias={}: {err}", bias.is_some());
    }
    // GEGLU on a bf16 projection (blocked and gated in L1 where the halves are whole blocks of
    // 64 columns: 2 × 128 here, over 2 × 50 rows, not a multiple of the 64-row block; 2 × 40
    // takes the unfused path) against gelu-gating the rounded f32 projection.
    for (i, &(half, with_bias)) in [(128usize, true), (128, false), (40, true)].iter().enumerate() {
        let (x, w, b) =
            (t(40 + i as u64, &[2, 50, 48]), t(41 + i as u64, &[2 * half, 48]), t(42 + i as u64, &[2 * half]));
        let bias = with_bias.then_some(&b);
        let layer =
            Linear::new(w.to_dtype(DType::BF16).unwrap(), bias.map(|b| b.to_dtype(DType::BF16).unwrap())).unwrap();
        let got = layer.forward_geglu(&x).unwrap();
        let proj = rounded(&x).broadcast_matmul(&rounded(&w).t().unwrap()).unwrap();
        let proj = match bias {
            Some(b) => proj.broadcast_add(&rounded(b)).unwrap(),
            None => proj,
        };
        let want = kairos_kernels::geglu_plain(&proj).unwrap();
        let err = rel_err(&got, &want);
        println!("geglu case {i} (half {half}, bias {with_bias}): {err:.2e}");
        assert!(err < 1e-5, "geglu case {i}: {err}");
    }
    // 1×1, 3×3 pad 1, 3×3 stride 2 pad 1 convolutions, and the VAE's small ends (4 channels in or
    // out of a 1×1 or 3×3, 3 channels out; 3 in: an odd im2col depth, 27), on 37-pixel rows (the
    // packed im2col panels of 32 columns straddle output rows), and a 3×3 without padding; with
    // 32 or 64 input channels, 3×3 pad 1 and 1×1 take the direct kernel on AMX.
    for (i, &(ci, co, k, padding, stride)) in [
        (8usize, 5usize, 1usize, 0usize, 1usize),
        (32, 9, 3, 1, 1),
        (64, 40, 1, 0, 1),
        (6, 7, 3, 1, 2),
        (4, 4, 1, 0, 1),
        (4, 40, 3, 1, 1),
        (40, 3, 3, 1, 1),
        (3, 6, 3, 1, 1),
        (5, 4, 3, 0, 1),
    ]
    .iter()
    .enumerate()
    {
        let (x, w, b) = (t(10 + i as u64, &[2, ci, 9, 37]), t(20 + i as u64, &[co, ci, k, k]), t(30 + i as u64, &[co]));
        let cfg = candle_nn::Conv2dConfig { padding, stride, ..Default::default() };
        let inner =
            candle_nn::Conv2d::new(w.to_dtype(DType::BF16).unwrap(), Some(b.to_dtype(DType::BF16).unwrap()), cfg);
        let layer = Conv2d::new(inner).unwrap();
        let got = layer.forward(&x).unwrap();
        let want =
            conv2d_plain(&rounded(&x), &rounded(&w), Some(&rounded(&b)), Conv2dParams { padding, stride }).unwrap();
        let err = rel_err(&got, &want);
        println!("conv2d case {i}: {err:.2e}");
        assert!(err < 1e-5, "case {i}: {err}");
        // The fused forms: plus a residual, and (1×1) from a map to tokens and back onto a residual.
        let residual = t(50 + i as u64, want.dims());
        let err = rel_err(&layer.forward_residual(&x, &residual).unwrap(), &(&want + &residual).unwrap());
        assert!(err < 1e-5, "case {i} + residual: {err}");
        if k == 1 {
            let (n, _, h, wd) = want.dims4().unwrap();
            let tokens = |m: &Tensor| {
                let c = m.dim(1).unwrap();
                m.permute((0, 2, 3, 1)).unwrap().reshape((n, h * wd, c)).unwrap()
            };
            let err = rel_err(&layer.forward_tokens(&x).unwrap(), &tokens(&want));
            assert!(err < 1e-5, "case {i} to tokens: {err}");
            let err =
                rel_err(&layer.forward_from_tokens(&tokens(&x), &residual).unwrap(), &(&want + &residual).unwrap());
            assert!(err < 1e-5, "case {i} from tokens: {err}");
        }
    }
}

/// The shapes of SD1.5's text encoder (77 or 154 token rows, not multiples of the AMX kernel's
/// 32, K = 768 or 3072 spanning several cache blocks, N = 768 / 3072), with `C` poisoned with NaN
/// where the GEMM overwrites it and holding a bias where it accumulates, whichever kernel runs.
#[test]
fn gemm_clip_shapes_overwrite_nan_poisoned_c() {
    println!("kernel: {}", gemm_bf16::kernel_name());
    for (case, &(m, n, k)) in [(77usize, 768usize, 768usize), (154, 96, 3072), (154, 40, 768)].iter().enumerate() {
        let a: Vec<f32> = randn(300 + case as u64, m * k).iter().map(|x| 4.0 * x).collect();
        let b = randn(400 + case as u64, k * n);
        let pa = PackedA::new(MatRef::row_major(&a, m, k).unwrap());
        let pb = PackedB::new(MatRef::row_major(&b, k, n).unwrap());
        let bias = randn(500 + case as u64, n);
        for accumulate in [false, true] {
            let c0: Vec<f32> =
                (0..m * n).map(|i| if accumulate { bias[i % n] } else { f32::from_bits(0x7FC0_0001) }).collect();
            let mut c = c0.clone();
            gemm_bf16::gemm(&pa, &pb, &mut c, n, 1.0, accumulate, true);
            let base = if accumulate { c0.clone() } else { vec![0.0; m * n] };
            let nans = c.iter().filter(|x| !x.is_finite()).count();
            assert_eq!(nans, 0, "case {case} {m}x{n}x{k} accumulate={accumulate}: {nans} non-finite outputs");
            let label = format!("clip case {case} {m}x{n}x{k} accumulate={accumulate}");
            check(&label, (m, n, k), |i, kk| a[i * k + kk], |kk, j| b[kk * n + j], 1.0, &base, &c, n);
        }
    }
}

/// Attention with bf16 operands against f64 on the bf16-rounded q, k and v, heads interleaved:
/// SD1.5's head widths (40, 80, 160), SDXL's 64, the VAE's single 512-wide head, cross-attention
/// to 77 keys, query counts that are not multiples of a job's rows (32, or up to 256 for short
/// key sequences, whose jobs then go head by head), and CLIP's causal case.
///
/// Tolerance: the scores are f32 sums of exact bf16 products (error ~d·2⁻²⁴ of Σ|qk|, under
/// 1e-5 here) and the unnormalised probabilities p are rounded to bf16 (relative error ≤ 2⁻⁸, the unit roundoff of 8 significant bits)
/// before p·v; dividing by the f32 sum of the unrounded p leaves each output within
/// 2⁻⁸·Σp|v|/Σp of the reference, so the bound is 1.1·2⁻⁸·Σp|v|/Σp + 1e-6·max|v|. A wrong key,
/// head or row moves an output by O(|v|).
#[test]
fn attention_bf16_matches_f64_on_rounded_values() {
    use candle_core::{Device, Tensor};
    let round32 = |x: f32| bf16::from_f32(x).to_f32();
    for (case, &(l, s, heads, d, causal)) in [
        (100usize, 100usize, 2usize, 40usize, false),
        (61, 77, 2, 80, false),
        (33, 64, 1, 160, false),
        (70, 150, 3, 64, false),
        (20, 100, 1, 512, false),
        (77, 77, 12, 64, true),
        (40, 40, 2, 40, true),
        (600, 77, 2, 40, false),
        (300, 300, 2, 40, true),
    ]
    .iter()
    .enumerate()
    {
        let c = heads * d;
        let (q, k, v) = (
            randn(500 + case as u64, 2 * l * c),
            randn(510 + case as u64, 2 * s * c),
            randn(520 + case as u64, 2 * s * c),
        );
        let tensor = |x: &[f32], rows| Tensor::from_slice(x, (2, rows, c), &Device::Cpu).unwrap();
        let scale = (d as f64).powf(-0.5);
        let got =
            kairos_kernels::attention_heads_bf16(&tensor(&q, l), &tensor(&k, s), &tensor(&v, s), heads, scale, causal)
                .unwrap();
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        if !gemm_bf16::available() {
            println!("note: no fast bf16 kernel here; attention_heads_bf16 is the f32 kernel");
        }
        let mut worst = 0f64;
        for (b, h, i) in (0..2).flat_map(|b| (0..heads).flat_map(move |h| (0..l).map(move |i| (b, h, i)))) {
            let at = |x: &[f32], rows: usize, r: usize, j: usize| round32(x[(b * rows + r) * c + h * d + j]) as f64;
            let keys = if causal { i + 1 } else { s };
            let scores: Vec<f64> =
                (0..keys).map(|r| scale * (0..d).map(|j| at(&q, l, i, j) * at(&k, s, r, j)).sum::<f64>()).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            let vmax = (0..keys)
                .flat_map(|r| (0..d).map(move |j| (r, j)))
                .map(|(r, j)| at(&v, s, r, j).abs())
                .fold(0.0, f64::max);
            for j in 0..d {
                let want = (0..keys).map(|r| p[r] * at(&v, s, r, j)).sum::<f64>() / sum;
                let spread = (0..keys).map(|r| p[r] * at(&v, s, r, j).abs()).sum::<f64>() / sum;
                let bound = 1.1 * 2f64.powi(-8) * spread + 1e-6 * vmax;
                let x = got[(b * l + i) * c + h * d + j] as f64;
                assert!(
                    (x - want).abs() <= bound,
                    "case {case} (b {b}, head {h}, row {i}, col {j}): {x} vs {want} (bound {bound:e})"
                );
                worst = worst.max((x - want).abs() / bound);
            }
        }
        println!(
            "attention bf16 case {case} ({l}×{s}, {heads}×{d}, causal {causal}): worst error {worst:.3} of the bound"
        );
    }
}

/// A LayerNorm's tokens packed straight for bf16 layers (`LayerNorm::forward_normed`), and a
/// GEGLU's gated tokens packed for the layer after it, give the same outputs, bit for bit, as f32
/// tokens packed by the layers: the same values rounded the same way. 2 × 50 tokens of 70
/// channels (neither a multiple of the packing's 16 rows or 32 values) and of 64; a linear, a
/// GEGLU (blocked: 2 × 64 columns) with a linear plus residual after it, and an f32 layer, which
/// gets f32 tokens.
#[test]
fn layer_norm_packed_for_bf16_layers_matches_f32_tokens() {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::VarBuilder;
    use kairos_kernels::nn::{layer_norm, Linear, Tokens};
    let t = |seed: u64, shape: &[usize]| {
        Tensor::from_vec(randn(seed, shape.iter().product()), shape, &Device::Cpu).unwrap()
    };
    for d in [70usize, 64] {
        let x = t(60, &[2, 50, d]);
        let vars = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let norm = layer_norm(d, 1e-5, vb.pp("norm")).unwrap();
        // Affine parameters other than 1 and 0.
        for (name, seed) in [("norm.weight", 61), ("norm.bias", 62)] {
            vars.data().lock().unwrap()[name].set(&t(seed, &[d])).unwrap();
        }
        let bf16 = |seed: u64, out: usize| {
            Linear::new(
                t(seed, &[out, d]).to_dtype(DType::BF16).unwrap(),
                Some(t(seed + 1, &[out]).to_dtype(DType::BF16).unwrap()),
            )
            .unwrap()
        };
        let (linear, geglu) = (bf16(63, 45), bf16(65, 128));
        let packed = norm.forward_normed(&x, true).unwrap();
        let tokens = norm.forward(&x).unwrap();
        if kairos_kernels::gemm_bf16::available() {
            assert!(matches!(packed, Tokens::Packed { .. }), "AVX512-BF16 here: the tokens are packed");
        }
        let bits = |t: Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(
            bits(linear.forward_from(&packed).unwrap()),
            bits(linear.forward(&tokens).unwrap()),
            "linear, d = {d}"
        );
        let gated = geglu.forward_geglu(&tokens).unwrap();
        let Tokens::F32(got) = geglu.forward_geglu_from(&packed, false).unwrap() else { panic!("f32 asked for") };
        assert_eq!(bits(got), bits(gated.clone()), "geglu, d = {d}");
        // The gated tokens packed for the next bf16 layer, with a residual.
        let next = Linear::new(
            t(68, &[24, 64]).to_dtype(DType::BF16).unwrap(),
            Some(t(69, &[24]).to_dtype(DType::BF16).unwrap()),
        )
        .unwrap();
        let residual = t(70, &[2, 50, 24]);
        let gated_packed = geglu.forward_geglu_from(&packed, next.runs_bf16()).unwrap();
        if kairos_kernels::gemm_bf16::available() {
            assert!(matches!(gated_packed, Tokens::Packed { .. }), "AVX512-BF16 here: the gated tokens are packed");
        }
        assert_eq!(
            bits(next.forward_residual_from(&gated_packed, &residual).unwrap()),
            bits(next.forward_residual(&gated, &residual).unwrap()),
            "geglu packed for the next layer, d = {d}"
        );
        let f32_layer = Linear::new(t(67, &[45, d]), None).unwrap();
        let unpacked = norm.forward_normed(&x, f32_layer.runs_bf16()).unwrap();
        assert!(matches!(unpacked, Tokens::F32(_)));
        assert_eq!(bits(f32_layer.forward_from(&unpacked).unwrap()), bits(f32_layer.forward(&tokens).unwrap()));
    }
}
