//! The kernels are CPU `CustomOp`s (`cpu_fwd` only: candle's default `cuda_fwd`/`metal_fwd` would
//! return an error), so every entry point must send tensors the kernels do not take — any device
//! other than the CPU, any dtype other than f32 — to candle's own ops, which run everywhere.
//!
//! Without a GPU the device branch cannot be entered, but it is the same branch as the dtype one
//! (`kernel_applies`: CPU *and* f32), so f64 CPU tensors walk the path CUDA tensors take: each
//! entry point and layer must give the plain candle result on them (a `CustomOp` reached with f64
//! would fail in its input check). On a GPU, `cargo test -p kairos-kernels --features cuda --test
//! devices` also runs every entry point on CUDA tensors against the CPU kernels.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use kairos_kernels::{
    activation, attention, attention_heads, attention_heads_causal, attention_plain, conv2d, conv2d_plain,
    conv2d_winograd, geglu, geglu_plain, group_norm, group_norm_plain, linear, linear_plain, map_from_tokens, nn,
    tokens_from_map, Activation, Conv2dParams, WinogradTile,
};

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::from_vec(kairos_kernels::uniform(seed, shape.iter().product()), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_device(&Device::Cpu).unwrap(), b.to_device(&Device::Cpu).unwrap());
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A conversion of the inputs (to another dtype or device, or none).
type Convert<'a> = &'a dyn Fn(&Tensor) -> Tensor;

/// Every public entry point and `nn` layer on `to(x)` inputs, beside the CPU f32 kernels' result
/// on the same values: `(name, on the converted inputs, f32 CPU kernel)`.
fn all_entry_points(to: Convert<'_>) -> Vec<(&'static str, Tensor, Tensor)> {
    let mut out = Vec::new();
    let mut case = |name, f: &dyn Fn(Convert<'_>) -> Tensor| {
        let id = |t: &Tensor| t.clone();
        out.push((name, f(to), f(&id)));
    };
    let (x, w3, b) = (randn(1, &[2, 16, 9, 9]), randn(2, &[16, 16, 3, 3]), randn(3, &[16]));
    let p1 = Conv2dParams { padding: 1, stride: 1 };
    case("conv2d", &|c| conv2d(&c(&x), &c(&w3), Some(&c(&b)), p1).unwrap());
    case("conv2d stride 2", &|c| conv2d(&c(&x), &c(&w3), None, Conv2dParams { padding: 1, stride: 2 }).unwrap());
    case("conv2d_winograd", &|c| conv2d_winograd(&c(&x), &c(&w3), Some(&c(&b)), WinogradTile::F4).unwrap());
    let (q, k, v) = (randn(4, &[2, 2, 10, 8]), randn(5, &[2, 2, 7, 8]), randn(6, &[2, 2, 7, 8]));
    case("attention", &|c| attention(&c(&q), &c(&k), &c(&v), 0.35).unwrap());
    let (qh, kh, vh) = (randn(7, &[2, 10, 16]), randn(8, &[2, 7, 16]), randn(9, &[2, 7, 16]));
    case("attention_heads", &|c| attention_heads(&c(&qh), &c(&kh), &c(&vh), 2, 0.35).unwrap());
    let (qc, kc, vc) = (randn(15, &[2, 9, 16]), randn(16, &[2, 9, 16]), randn(17, &[2, 9, 16]));
    case("attention_heads_causal", &|c| attention_heads_causal(&c(&qc), &c(&kc), &c(&vc), 2, 0.35).unwrap());
    case("group_norm silu", &|c| group_norm(&c(&x), &c(&b), &c(&b), 4, 1e-5, true).unwrap());
    case("quick gelu", &|c| activation(&c(&x), Activation::QuickGelu).unwrap());
    case("gelu", &|c| activation(&c(&x), Activation::GeluErf).unwrap());
    let (tok, wl) = (randn(10, &[2, 5, 16]), randn(11, &[12, 16]));
    case("linear", &|c| linear(&c(&tok), &c(&wl), Some(&c(&b.narrow(0, 0, 12).unwrap()))).unwrap());
    case("geglu", &|c| geglu(&c(&randn(12, &[2, 5, 24]))).unwrap());
    let wp = randn(13, &[16, 16]);
    case("tokens_from_map", &|c| tokens_from_map(&c(&x), &c(&wp), Some(&c(&b))).unwrap());
    let tokens = randn(14, &[2, 81, 16]);
    case("map_from_tokens", &|c| map_from_tokens(&c(&tokens), &c(&wp), Some(&c(&b)), &c(&x)).unwrap());
    // The layers the models are built from, through a VarBuilder as the models load them.
    case("nn layers", &|c| {
        let tensors = HashMap::from([
            ("conv.weight".to_string(), c(&w3)),
            ("conv.bias".to_string(), c(&b)),
            ("lin.weight".to_string(), c(&wp)),
            ("lin.bias".to_string(), c(&b)),
            ("norm.weight".to_string(), c(&b)),
            ("norm.bias".to_string(), c(&b)),
        ]);
        let xc = c(&x);
        let vb = VarBuilder::from_tensors(tensors, xc.dtype(), xc.device());
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let conv = nn::conv2d(16, 16, 3, cfg, vb.pp("conv")).unwrap();
        let norm = nn::group_norm(4, 16, 1e-5, vb.pp("norm")).unwrap();
        let lin = nn::linear(16, 16, vb.pp("lin")).unwrap();
        let y = norm.forward_silu(&conv.forward(&xc).unwrap()).unwrap();
        // Tokens made contiguous, as the models do (candle's Linear, the fallback, needs it).
        let y = norm.forward(&y).unwrap().permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        lin.forward(&y).unwrap()
    });
    out
}

#[test]
fn inputs_the_kernels_do_not_take_run_on_candle_ops() {
    let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    for (name, got, kernel) in all_entry_points(&f64) {
        assert_eq!(got.dtype(), DType::F64, "{name}: the fallback keeps the inputs' dtype");
        let err = max_abs_diff(&got, &kernel);
        assert!(err < 2e-5, "{name}: f64 fallback vs f32 kernel {err}");
    }
    // And the plain functions are what the fallback runs: bit-equal on the f64 inputs.
    let (x, w, b) = (f64(&randn(1, &[2, 16, 9, 9])), f64(&randn(2, &[16, 16, 3, 3])), f64(&randn(3, &[16])));
    let p = Conv2dParams { padding: 1, stride: 1 };
    let same = |a: Tensor, b: Tensor| assert_eq!(max_abs_diff(&a, &b), 0.0);
    same(conv2d(&x, &w, Some(&b), p).unwrap(), conv2d_plain(&x, &w, Some(&b), p).unwrap());
    same(group_norm(&x, &b, &b, 4, 1e-5, false).unwrap(), group_norm_plain(&x, &b, &b, 4, 1e-5, false).unwrap());
    let (q, k) = (f64(&randn(4, &[2, 2, 10, 8])), f64(&randn(5, &[2, 2, 7, 8])));
    same(attention(&q, &k, &k, 0.5).unwrap(), attention_plain(&q, &k, &k, 0.5).unwrap());
    let (t, wl) = (f64(&randn(10, &[2, 5, 16])), f64(&randn(11, &[12, 16])));
    same(linear(&t, &wl, None).unwrap(), linear_plain(&t, &wl, None).unwrap());
    let g = f64(&randn(12, &[2, 5, 24]));
    same(geglu(&g).unwrap(), geglu_plain(&g).unwrap());
}

/// On a machine with an NVIDIA GPU (skipped, with a note, where none opens).
#[cfg(feature = "cuda")]
#[test]
fn cuda_tensors_run_on_candle_ops() {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("no CUDA device ({e}): skipped");
            return;
        }
    };
    let to = |t: &Tensor| t.to_device(&dev).unwrap();
    for (name, got, kernel) in all_entry_points(&to) {
        assert!(got.device().is_cuda(), "{name}: the result stays on the GPU");
        // cuBLAS and cuDNN sum in other orders (TF32 is off in candle by default).
        let err = max_abs_diff(&got, &kernel);
        assert!(err < 1e-4, "{name}: CUDA vs CPU kernel {err}");
    }
    // Half precision on the GPU (weights and activations in the dtype, as the models run there).
    for dtype in [DType::F16, DType::BF16] {
        let to = |t: &Tensor| t.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
        for (name, got, kernel) in all_entry_points(&to) {
            assert_eq!(got.dtype(), dtype, "{name}");
            let err = max_abs_diff(&got, &kernel);
            assert!(err < 0.1, "{name} {dtype:?}: CUDA vs CPU kernel {err}");
        }
    }
}
