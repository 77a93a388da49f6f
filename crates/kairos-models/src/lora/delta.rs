//! ΔW of one layer from its LoRA tensors, in float32 on the CPU, before the user's strength.
//!
//! Formulas (kohya `networks/lora.py`, LyCORIS `modules/{locon,loha,lokr}.py`, ComfyUI
//! `comfy/weight_adapter`), with W of shape [out, in] or [out, in, kh, kw] and every factor
//! flattened to 2-D:
//! - LoRA / LoCon: ΔW = (alpha / rank) · up · down, rank = rows of `down` (alpha absent → 1).
//! - LoHa: ΔW = (alpha / rank) · (w1_a · w1_b) ⊙ (w2_a · w2_b), rank = rows of `hada_w1_b`.
//! - LoKr: ΔW = (alpha / rank) · w1 ⊗ w2, w1 = `lokr_w1` or `lokr_w1_a · lokr_w1_b`, likewise w2;
//!   rank = rows of `lokr_w2_b` if w2 is decomposed, else of `lokr_w1_b`; both factors full → 1.
//! - LyCORIS full: ΔW = `diff`.
//!
//! The product is reshaped to W's shape. Tucker (`lora_mid`, `hada_t1/t2`, `lokr_t2`), DoRA
//! (`dora_scale`) and bias patches (`diff_b`) are reported as unsupported.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

type Params = BTreeMap<String, Tensor>;

/// The params each kind consists of (optional ones included); anything else is unknown.
const LORA: &[&str] = &["lora_down.weight", "lora_up.weight", "alpha"];
const LOHA: &[&str] = &["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"];
const LOKR: &[&str] = &["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"];
const FULL: &[&str] = &["diff"];
const UNSUPPORTED: &[(&str, &str)] = &[
    ("lora_mid.weight", "LoCon with Tucker decomposition (lora_mid)"),
    ("hada_t1", "LoHa with Tucker decomposition (hada_t1/hada_t2)"),
    ("lokr_t2", "LoKr with Tucker decomposition (lokr_t2)"),
    ("dora_scale", "DoRA (dora_scale)"),
    ("diff_b", "bias patches (diff_b)"),
];

fn get<'a>(p: &'a Params, name: &str) -> Result<&'a Tensor, String> {
    p.get(name).ok_or_else(|| format!("missing `{name}` (has {:?})", p.keys().collect::<Vec<_>>()))
}

/// A factor as a 2-D float32 CPU matrix [rows, rest].
fn mat(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    match t.rank() {
        0 | 1 => t.reshape((t.elem_count(), 1)),
        _ => t.flatten_from(1),
    }
}

fn alpha(p: &Params) -> Result<Option<f64>, String> {
    p.get("alpha")
        .map(|a| {
            a.to_dtype(DType::F64)
                .and_then(|a| a.flatten_all())
                .and_then(|a| a.to_vec1::<f64>())
                .map_err(|e| e.to_string())
                .and_then(|v| match v.as_slice() {
                    [x] => Ok(*x),
                    _ => Err(format!("`alpha` must be a scalar, got {} values", v.len())),
                })
        })
        .transpose()
}

fn rows(t: &Tensor) -> usize {
    t.dims().first().copied().unwrap_or(1)
}

/// w1 ⊗ w2 for 2-D matrices: [a, b] ⊗ [c, e] → [a·c, b·e].
fn kron(w1: &Tensor, w2: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = w1.dims2()?;
    let (c, e) = w2.dims2()?;
    let w1 = w1.reshape((a, 1, b, 1))?;
    let w2 = w2.reshape((1, c, 1, e))?;
    w1.broadcast_mul(&w2)?.reshape((a * c, b * e))
}

/// A LyCORIS factor: the full matrix `<name>` or the product `<name>_a · <name>_b`; with the rank.
fn factor(p: &Params, name: &str) -> Result<(Tensor, Option<usize>), String> {
    let e = |e: candle_core::Error| e.to_string();
    if let Some(w) = p.get(name) {
        return Ok((mat(w).map_err(e)?, None));
    }
    let a = mat(get(p, &format!("{name}_a"))?).map_err(e)?;
    let b = mat(get(p, &format!("{name}_b"))?).map_err(e)?;
    let rank = rows(&b);
    Ok((a.matmul(&b).map_err(|x| format!("`{name}_a · {name}_b`: {x}"))?, Some(rank)))
}

/// ΔW (float32, CPU, shaped like the weight) and the kind of patch, or why it cannot be formed.
pub(crate) fn delta(p: &Params, weight_shape: &[usize]) -> Result<(Tensor, &'static str), String> {
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(k, _)| p.contains_key(*k)) {
        return Err(format!("unsupported LyCORIS variant: {what}"));
    }
    let has = |k: &str| p.contains_key(k);
    let (kind, allowed): (&'static str, &[&str]) = if has("lora_down.weight") || has("lora_up.weight") {
        ("lora", LORA)
    } else if p.keys().any(|k| k.starts_with("hada_")) {
        ("loha", LOHA)
    } else if p.keys().any(|k| k.starts_with("lokr_")) {
        ("lokr", LOKR)
    } else if has("diff") {
        ("full", FULL)
    } else {
        return Err(format!("no weight tensors, only {:?}", p.keys().collect::<Vec<_>>()));
    };
    if let Some(k) = p.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected parameter `{k}` for a {kind} layer (accepted: {allowed:?})"));
    }
    let e = |e: candle_core::Error| e.to_string();
    let alpha = alpha(p)?;
    let (dw, rank) = match kind {
        "lora" => {
            let down = mat(get(p, "lora_down.weight")?).map_err(e)?;
            let up = mat(get(p, "lora_up.weight")?).map_err(e)?;
            let rank = rows(&down);
            let dw =
                up.matmul(&down).map_err(|x| format!("lora_up {:?} · lora_down {:?}: {x}", up.dims(), down.dims()))?;
            (dw, Some(rank))
        }
        "loha" => {
            let w1 = mat(get(p, "hada_w1_a")?).map_err(e)?.matmul(&mat(get(p, "hada_w1_b")?).map_err(e)?).map_err(e)?;
            let w2 = mat(get(p, "hada_w2_a")?).map_err(e)?.matmul(&mat(get(p, "hada_w2_b")?).map_err(e)?).map_err(e)?;
            let rank = rows(get(p, "hada_w1_b")?);
            (w1.mul(&w2).map_err(|x| format!("hada products differ in shape: {x}"))?, Some(rank))
        }
        "lokr" => {
            let (w1, r1) = factor(p, "lokr_w1")?;
            let (w2, r2) = factor(p, "lokr_w2")?;
            (kron(&w1, &w2).map_err(e)?, r2.or(r1))
        }
        _ => (mat(get(p, "diff")?).map_err(e)?, None),
    };
    let scale = match (alpha, rank) {
        (Some(a), Some(r)) if kind != "full" => a / r as f64,
        _ => 1.0,
    };
    let fan_in: usize = weight_shape.iter().skip(1).product();
    let want = (weight_shape.first().copied().unwrap_or(0), fan_in);
    if dw.dims() != [want.0, want.1] {
        return Err(format!(
            "{kind} product has shape {:?}, the layer's weight is {weight_shape:?} (= [{}, {}] flattened)",
            dw.dims(),
            want.0,
            want.1
        ));
    }
    let dw = if scale == 1.0 { dw } else { (dw * scale).map_err(e)? };
    Ok((dw.reshape(weight_shape).map_err(e)?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kron_matches_the_definition() {
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 5., 1.]], &Device::Cpu).unwrap();
        let k = kron(&a, &b).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(k, vec![vec![0., 5., 1., 0., 10., 2.], vec![0., 15., 3., 0., 20., 4.]]);
    }

    #[test]
    fn unsupported_and_mismatched_layers_say_why() {
        let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        let mut p = Params::new();
        p.insert("lora_down.weight".into(), t(&[2, 8]));
        p.insert("lora_up.weight".into(), t(&[4, 2]));
        let err = delta(&p, &[4, 9]).unwrap_err();
        assert!(err.contains("[4, 8]") && err.contains("[4, 9]"), "{err}");
        p.insert("dora_scale".into(), t(&[4, 1]));
        assert!(delta(&p, &[4, 8]).unwrap_err().contains("DoRA"));
    }
}
