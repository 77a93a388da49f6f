//! ΔW of one layer from its LoRA tensors, in float32 on the CPU, before the user's strength:
//! checked against the weight's shape when a LoRA is merged, formed when the weight is loaded.
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

/// Rows and columns of a factor once flattened to 2-D (as [`mat`] makes it).
fn mat_dims(t: &Tensor) -> (usize, usize) {
    match t.dims() {
        [] => (1, 1),
        [n] => (*n, 1),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

/// Shape of the product `a · b` of two factors, or why they do not multiply.
fn product_dims(p: &Params, a: &str, b: &str) -> Result<(usize, usize), String> {
    let (ta, tb) = (get(p, a)?, get(p, b)?);
    let ((r, inner_a), (inner_b, c)) = (mat_dims(ta), mat_dims(tb));
    if inner_a != inner_b {
        return Err(format!(
            "`{a}` {:?} · `{b}` {:?}: inner dimensions {inner_a} and {inner_b} differ",
            ta.dims(),
            tb.dims()
        ));
    }
    Ok((r, c))
}

/// A LyCORIS factor's 2-D shape: the full matrix `<name>` or the product `<name>_a · <name>_b`;
/// with the rank of the product.
fn factor_dims(p: &Params, name: &str) -> Result<((usize, usize), Option<usize>), String> {
    if let Some(w) = p.get(name) {
        return Ok((mat_dims(w), None));
    }
    let dims = product_dims(p, &format!("{name}_a"), &format!("{name}_b"))?;
    Ok((dims, Some(rows(get(p, &format!("{name}_b"))?))))
}

/// The formula a layer's tensors follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lora,
    Loha,
    Lokr,
    Full,
}

/// One layer's patch, checked against the weight's shape. ΔW itself is formed only when the
/// weight is loaded ([`Patch::delta`]): a whole-UNet rank-64 LoRA's ΔWs, kept, would hold as many
/// float32 values as the UNet itself.
#[derive(Debug, Clone)]
pub(crate) struct Patch {
    kind: Kind,
    params: Params,
    scale: f64,
    shape: Vec<usize>,
}

/// Checks a layer's tensors against the weight's shape: the patch, or why it cannot be formed.
pub(crate) fn plan(p: &Params, weight_shape: &[usize]) -> Result<Patch, String> {
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(k, _)| p.contains_key(*k)) {
        return Err(format!("unsupported LyCORIS variant: {what}"));
    }
    let has = |k: &str| p.contains_key(k);
    let (kind, name, allowed): (Kind, &str, &[&str]) = if has("lora_down.weight") || has("lora_up.weight") {
        (Kind::Lora, "lora", LORA)
    } else if p.keys().any(|k| k.starts_with("hada_")) {
        (Kind::Loha, "loha", LOHA)
    } else if p.keys().any(|k| k.starts_with("lokr_")) {
        (Kind::Lokr, "lokr", LOKR)
    } else if has("diff") {
        (Kind::Full, "full", FULL)
    } else {
        return Err(format!("no weight tensors, only {:?}", p.keys().collect::<Vec<_>>()));
    };
    if let Some(k) = p.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected parameter `{k}` for a {name} layer (accepted: {allowed:?})"));
    }
    let alpha = alpha(p)?;
    let (dims, rank) = match kind {
        Kind::Lora => (product_dims(p, "lora_up.weight", "lora_down.weight")?, Some(rows(get(p, "lora_down.weight")?))),
        Kind::Loha => {
            let w1 = product_dims(p, "hada_w1_a", "hada_w1_b")?;
            let w2 = product_dims(p, "hada_w2_a", "hada_w2_b")?;
            if w1 != w2 {
                return Err(format!("hada products differ in shape: {w1:?} and {w2:?}"));
            }
            (w1, Some(rows(get(p, "hada_w1_b")?)))
        }
        Kind::Lokr => {
            let ((a, b), r1) = factor_dims(p, "lokr_w1")?;
            let ((c, e), r2) = factor_dims(p, "lokr_w2")?;
            ((a * c, b * e), r2.or(r1))
        }
        Kind::Full => (mat_dims(get(p, "diff")?), None),
    };
    let scale = match (alpha, rank) {
        (Some(a), Some(r)) if kind != Kind::Full => a / r as f64,
        _ => 1.0,
    };
    let fan_in: usize = weight_shape.iter().skip(1).product();
    let want = (weight_shape.first().copied().unwrap_or(0), fan_in);
    if dims != want {
        return Err(format!(
            "{name} product has shape {:?}, the layer's weight is {weight_shape:?} (= [{}, {}] flattened): \
             a LoRA for another model (SD1, SD2 and SDXL share layer names, not sizes); use one made \
             for this model",
            [dims.0, dims.1],
            want.0,
            want.1
        ));
    }
    Ok(Patch { kind, params: p.clone(), scale, shape: weight_shape.to_vec() })
}

impl Patch {
    /// A factor of this patch as a 2-D float32 CPU matrix.
    fn mat(&self, name: &str) -> candle_core::Result<Tensor> {
        mat(get(&self.params, name).map_err(candle_core::Error::msg)?)
    }

    /// A LyCORIS factor: the full matrix `<name>` or the product `<name>_a · <name>_b`.
    fn factor(&self, name: &str) -> candle_core::Result<Tensor> {
        match self.params.contains_key(name) {
            true => self.mat(name),
            false => self.mat(&format!("{name}_a"))?.matmul(&self.mat(&format!("{name}_b"))?),
        }
    }

    /// ΔW (float32, CPU, shaped like the weight), before the user's strength.
    pub(crate) fn delta(&self) -> candle_core::Result<Tensor> {
        let dw = match self.kind {
            Kind::Lora => self.mat("lora_up.weight")?.matmul(&self.mat("lora_down.weight")?)?,
            Kind::Loha => {
                let w1 = self.mat("hada_w1_a")?.matmul(&self.mat("hada_w1_b")?)?;
                w1.mul(&self.mat("hada_w2_a")?.matmul(&self.mat("hada_w2_b")?)?)?
            }
            Kind::Lokr => kron(&self.factor("lokr_w1")?, &self.factor("lokr_w2")?)?,
            Kind::Full => self.mat("diff")?,
        };
        let dw = if self.scale == 1.0 { dw } else { (dw * self.scale)? };
        dw.reshape(self.shape.as_slice())
    }
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
        let err = plan(&p, &[4, 9]).unwrap_err();
        assert!(err.contains("[4, 8]") && err.contains("[4, 9]"), "{err}");
        p.insert("lora_up.weight".into(), t(&[4, 3]));
        assert!(plan(&p, &[4, 8]).unwrap_err().contains("inner dimensions 3 and 2 differ"));
        p.insert("dora_scale".into(), t(&[4, 1]));
        assert!(plan(&p, &[4, 8]).unwrap_err().contains("DoRA"));
    }
}
