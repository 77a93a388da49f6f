//! `pil_resize` against Pillow's `Image.resize(size, LANCZOS, box)` (fixture:
//! `tests/fixtures/pil_resize.json`, written by `tools/fixtures/pil_resize.py`): downscales,
//! upscales, a fractional box and the zero-size edge boxes of A1111's "Resize and fill".
//! Tolerance: exact bytes (the same Lanczos weights, rounded to the same 22-bit fixed point, the
//! same integer sums and passes).

use kairos_pipeline::resize::pil_resize;
use kairos_pipeline::RgbImage;
use serde_json::Value;

fn bytes(v: &Value) -> Vec<u8> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect()
}

#[test]
fn pil_resize_matches_pillow_lanczos() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pil_resize.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let size = |v: &Value, k: &str| v[k].as_u64().unwrap() as usize;
    let input =
        RgbImage { width: size(&fixture, "width"), height: size(&fixture, "height"), data: bytes(&fixture["pixels"]) };
    for case in fixture["cases"].as_array().unwrap() {
        let (w, h) = (size(case, "width"), size(case, "height"));
        let b: Vec<f64> = case["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got = pil_resize(&input, w, h, [b[0], b[1], b[2], b[3]]).unwrap();
        assert_eq!((got.width, got.height), (w, h));
        let want = bytes(&case["pixels"]);
        let diff = got.data.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{w}x{h} box {b:?}: {diff} of {} bytes differ", want.len());
    }
}
