//! img2img's init-image resizing: A1111's three resize modes (`modules/images.py`,
//! `resize_image`) over an exact port of Pillow's Lanczos resampling (`Image.resize(size,
//! LANCZOS, box)`, `libImaging/Resample.c`), which A1111 and diffusers' image processor call.
//!
//! Differences from A1111: no upscaler model (A1111's `upscaler_for_img2img` setting, "None" by
//! default, which is this Lanczos path).

use crate::image::RgbImage;
use crate::PipelineError;

/// How an init image of another size or aspect ratio is brought to the request's size, with
/// A1111's names and semantics (img2img "Resize mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Stretch to the target size, ignoring the aspect ratio (A1111 "Just resize", mode 0).
    #[default]
    JustResize,
    /// Scale to cover the target keeping the aspect ratio, centre, crop the excess (A1111 "Crop
    /// and resize", mode 1).
    CropAndResize,
    /// Scale to fit inside the target keeping the aspect ratio, centre, and fill the two empty
    /// bands with the resized image's edge rows (columns) stretched across them (A1111 "Resize
    /// and fill", mode 2).
    ResizeAndFill,
}

impl ResizeMode {
    /// The canonical names, in A1111's order.
    pub const NAMES: [&'static str; 3] = ["just-resize", "crop-and-resize", "resize-and-fill"];

    /// The mode for a name: `just-resize`, `crop-and-resize`, `resize-and-fill`, A1111's labels
    /// ("Just resize", ...) or its numbers 0, 1, 2; case-insensitive, `_`/` ` for `-`.
    pub fn from_name(name: &str) -> Result<Self, PipelineError> {
        let key = name.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        match key.as_str() {
            "just-resize" | "0" => Ok(Self::JustResize),
            "crop-and-resize" | "1" => Ok(Self::CropAndResize),
            "resize-and-fill" | "2" => Ok(Self::ResizeAndFill),
            _ => Err(PipelineError::InvalidOption {
                name: "resize_mode",
                message: format!("unknown resize mode `{name}`; use one of {}", Self::NAMES.join(", ")),
            }),
        }
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        Self::NAMES[*self as usize]
    }
}

/// A1111's `resize_image(resize_mode, im, width, height)` with no upscaler.
pub fn resize_image(mode: ResizeMode, im: &RgbImage, width: usize, height: usize) -> Result<RgbImage, PipelineError> {
    if width == 0 || height == 0 || im.width == 0 || im.height == 0 {
        return Err(PipelineError::InvalidOption {
            name: "init_image",
            message: format!("cannot resize {}x{} to {width}x{height}: sides must be positive", im.width, im.height),
        });
    }
    let (w, h, iw, ih) = (width, height, im.width, im.height);
    // A1111 compares the ratios as Python floats.
    let (ratio, src_ratio) = (w as f64 / h as f64, iw as f64 / ih as f64);
    Ok(match mode {
        ResizeMode::JustResize => resize(im, w, h)?,
        ResizeMode::CropAndResize => {
            let src_w = if ratio > src_ratio { w } else { iw * h / ih };
            let src_h = if ratio <= src_ratio { h } else { ih * w / iw };
            let resized = resize(im, src_w, src_h)?;
            let mut res = black(w, h);
            paste(&mut res, &resized, w as i64 / 2 - src_w as i64 / 2, h as i64 / 2 - src_h as i64 / 2);
            res
        }
        ResizeMode::ResizeAndFill => {
            let src_w = if ratio < src_ratio { w } else { iw * h / ih };
            let src_h = if ratio >= src_ratio { h } else { ih * w / iw };
            let resized = resize(im, src_w, src_h)?;
            let mut res = black(w, h);
            paste(&mut res, &resized, w as i64 / 2 - src_w as i64 / 2, h as i64 / 2 - src_h as i64 / 2);
            let (rw, rh) = (resized.width as f64, resized.height as f64);
            // The bands: Pillow resizes a zero-height (zero-width) box at the edge, which
            // spreads the Lanczos-weighted first (last) three rows (columns) over the band.
            if ratio < src_ratio {
                let fill = h / 2 - src_h / 2;
                if fill > 0 {
                    let top = pil_resize(&resized, w, fill, [0.0, 0.0, w as f64, 0.0])?;
                    let bottom = pil_resize(&resized, w, fill, [0.0, rh, w as f64, rh])?;
                    paste(&mut res, &top, 0, 0);
                    paste(&mut res, &bottom, 0, (fill + src_h) as i64);
                }
            } else if ratio > src_ratio {
                let fill = w / 2 - src_w / 2;
                if fill > 0 {
                    let left = pil_resize(&resized, fill, h, [0.0, 0.0, 0.0, h as f64])?;
                    let right = pil_resize(&resized, fill, h, [rw, 0.0, rw, h as f64])?;
                    paste(&mut res, &left, 0, 0);
                    paste(&mut res, &right, (fill + src_w) as i64, 0);
                }
            }
            res
        }
    })
}

/// Pillow's `im.resize((w, h), LANCZOS)`: a copy when the size is unchanged.
fn resize(im: &RgbImage, w: usize, h: usize) -> Result<RgbImage, PipelineError> {
    pil_resize(im, w, h, [0.0, 0.0, im.width as f64, im.height as f64])
}

fn black(width: usize, height: usize) -> RgbImage {
    RgbImage { width, height, data: vec![0; width * height * 3] }
}

/// Pillow's `Image.paste(src, box=(x, y))`: the part of `src` that lands inside `dst`.
fn paste(dst: &mut RgbImage, src: &RgbImage, x: i64, y: i64) {
    for sy in 0..src.height {
        let dy = y + sy as i64;
        if dy < 0 || dy >= dst.height as i64 {
            continue;
        }
        let x0 = (-x).clamp(0, src.width as i64) as usize;
        let x1 = (dst.width as i64 - x).clamp(0, src.width as i64) as usize;
        if x0 >= x1 {
            continue;
        }
        let d = (dy as usize * dst.width + (x + x0 as i64) as usize) * 3;
        let s = (sy * src.width + x0) * 3;
        let n = (x1 - x0) * 3;
        dst.data[d..d + n].copy_from_slice(&src.data[s..s + n]);
    }
}

/// Pillow's Lanczos filter support (`LANCZOS`, a = 3).
const LANCZOS_SUPPORT: f64 = 3.0;
/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's `sinc_filter`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Pillow's `lanczos_filter`: the sinc truncated to [−3, 3).
fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` then `normalize_coeffs_8bpc`: for each output pixel the first
/// input index and the fixed-point weights of the inputs it reads.
fn coefficients(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
            let w: Vec<f64> = (0..xmax).map(|x| lanczos((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = w.iter().sum();
            let one = (1u64 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&v| {
                    let v = if ww != 0.0 { v / ww } else { v };
                    if v < 0.0 {
                        (-0.5 + v * one) as i64
                    } else {
                        (0.5 + v * one) as i64
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((w, h), Image.LANCZOS, box)` for RGB: the `box` region
/// `[left, upper, right, lower]` of `im` (float coordinates; a zero-width or zero-height box
/// is allowed) resampled to `w`×`h` in two 8-bit fixed-point passes, horizontal first, as
/// `ImagingResampleInner`.
pub fn pil_resize(im: &RgbImage, w: usize, h: usize, region: [f64; 4]) -> Result<RgbImage, PipelineError> {
    if im.data.len() != im.width * im.height * 3 {
        return Err(PipelineError::InvalidOption {
            name: "init_image",
            message: format!(
                "{}x{} RGB needs {} bytes, got {}",
                im.width,
                im.height,
                im.width * im.height * 3,
                im.data.len()
            ),
        });
    }
    let [x0, y0, x1, y1] = region;
    let (iw, ih) = (im.width as f64, im.height as f64);
    let inside = 0.0 <= x0 && x0 <= x1 && x1 <= iw && 0.0 <= y0 && y0 <= y1 && y1 <= ih;
    if w == 0 || h == 0 || !inside {
        return Err(PipelineError::InvalidOption {
            name: "resize",
            message: format!("cannot resize the box {region:?} of a {}x{} image to {w}x{h}", im.width, im.height),
        });
    }
    if (w, h) == (im.width, im.height) && region == [0.0, 0.0, iw, ih] {
        return Ok(im.clone());
    }
    let need_horizontal = w != im.width || x0 != 0.0 || x1 != w as f64;
    let need_vertical = h != im.height || y0 != 0.0 || y1 != h as f64;
    let horizontal = coefficients(im.width, x0, x1, w);
    let mut vertical = coefficients(im.height, y0, y1, h);
    let mut current = im.clone();
    if need_horizontal {
        // Only the rows the vertical pass reads.
        let first = vertical.first().map_or(0, |c| c.0);
        let last = vertical.last().map_or(0, |c| c.0 + c.1.len());
        let rows = last - first;
        let mut out = black(w, rows);
        for y in 0..rows {
            let row = &current.data[(first + y) * current.width * 3..];
            for (x, (xmin, k)) in horizontal.iter().enumerate() {
                for c in 0..3 {
                    let sum = k
                        .iter()
                        .enumerate()
                        .fold(1i64 << (PRECISION_BITS - 1), |acc, (i, &kv)| acc + row[(xmin + i) * 3 + c] as i64 * kv);
                    out.data[(y * w + x) * 3 + c] = clip8(sum);
                }
            }
        }
        for c in &mut vertical {
            c.0 -= first;
        }
        current = out;
    }
    if need_vertical {
        let width = current.width;
        let mut out = black(width, h);
        for (y, (ymin, k)) in vertical.iter().enumerate() {
            for x in 0..width {
                for c in 0..3 {
                    let sum = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (i, &kv)| {
                        acc + current.data[((ymin + i) * width + x) * 3 + c] as i64 * kv
                    });
                    out.data[(y * width + x) * 3 + c] = clip8(sum);
                }
            }
        }
        current = out;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose pixel (x, y) is (r(x, y), g(x, y), 7).
    fn image(width: usize, height: usize, r: impl Fn(usize, usize) -> u8, g: impl Fn(usize, usize) -> u8) -> RgbImage {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend([r(x, y), g(x, y), 7]);
            }
        }
        RgbImage { width, height, data }
    }

    fn pixel(im: &RgbImage, x: usize, y: usize) -> [u8; 3] {
        let i = (y * im.width + x) * 3;
        [im.data[i], im.data[i + 1], im.data[i + 2]]
    }

    #[test]
    fn names_and_a1111_labels() {
        for name in ResizeMode::NAMES {
            assert_eq!(ResizeMode::from_name(name).unwrap().name(), name);
        }
        assert_eq!(ResizeMode::from_name("Crop and resize").unwrap(), ResizeMode::CropAndResize);
        assert_eq!(ResizeMode::from_name("2").unwrap(), ResizeMode::ResizeAndFill);
        let err = ResizeMode::from_name("stretch").unwrap_err().to_string();
        assert!(err.contains("just-resize, crop-and-resize, resize-and-fill"), "{err}");
    }

    #[test]
    fn just_resize_keeps_a_same_size_image_and_a_flat_colour() {
        let im = image(5, 3, |x, y| (x * 40 + y) as u8, |x, _| x as u8);
        assert_eq!(resize_image(ResizeMode::JustResize, &im, 5, 3).unwrap(), im);
        // Normalised Lanczos weights keep a flat image flat, up or down, any aspect.
        let flat = image(7, 5, |_, _| 200, |_, _| 13);
        for (w, h) in [(16, 8), (3, 2), (8, 24)] {
            let out = resize_image(ResizeMode::JustResize, &flat, w, h).unwrap();
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.data.chunks(3).all(|p| p == [200, 13, 7]), "{w}x{h}");
        }
    }

    #[test]
    fn crop_and_resize_centres_and_crops() {
        // 12x4 into 8x4: ratio 2 < 3, so src = (12·4/4, 4) = (12, 4): no resampling, pasted at
        // x = 4 − 6 = −2: the middle 8 columns.
        let im = image(12, 4, |x, y| (x * 10 + y) as u8, |_, y| y as u8);
        let out = resize_image(ResizeMode::CropAndResize, &im, 8, 4).unwrap();
        for y in 0..4 {
            for x in 0..8 {
                assert_eq!(pixel(&out, x, y), pixel(&im, x + 2, y), "({x}, {y})");
            }
        }
        // 4x12 into 4x8: the middle 8 rows.
        let tall = image(4, 12, |x, y| (y * 10 + x) as u8, |x, _| x as u8);
        let out = resize_image(ResizeMode::CropAndResize, &tall, 4, 8).unwrap();
        assert_eq!(out.data, tall.data[2 * 4 * 3..10 * 4 * 3]);
    }

    /// Pillow's weights for a band: the Lanczos kernel at 0.5, 1.5, 2.5 pixels from the edge,
    /// normalised, in 22-bit fixed point, applied to the edge rows `v` (nearest first).
    fn band_value(v: &[u8]) -> u8 {
        let w: Vec<f64> = [0.5, 1.5, 2.5][..v.len()].iter().map(|&d| lanczos(d)).collect();
        let total: f64 = w.iter().sum();
        let one = (1u64 << 22) as f64;
        let k: Vec<i64> = w.iter().map(|&x| (x / total * one + if x < 0.0 { -0.5 } else { 0.5 }) as i64).collect();
        let sum = (1i64 << 21) + v.iter().zip(&k).map(|(&p, &k)| p as i64 * k).sum::<i64>();
        (sum >> 22).clamp(0, 255) as u8
    }

    #[test]
    fn resize_and_fill_stretches_the_edges_over_the_bands() {
        // 8x4 into 8x8: ratio 1 < 2, src = (8, 4·8/8) = (8, 4): pasted at y = 4 − 2 = 2; bands of
        // 2 rows above (rows 0–1) and below (rows 6–7).
        let im = image(8, 4, |x, y| (40 + 50 * y + x) as u8, |_, y| [0, 100, 255, 30][y]);
        let out = resize_image(ResizeMode::ResizeAndFill, &im, 8, 8).unwrap();
        for x in 0..8 {
            let column = |y: usize| pixel(&im, x, y);
            for y in 0..4 {
                assert_eq!(pixel(&out, x, y + 2), column(y));
            }
            // Top band: rows 0, 1, 2 of the image, nearest first; bottom: rows 3, 2, 1.
            let top = [0, 1, 2].map(column);
            let bottom = [3, 2, 1].map(column);
            for c in 0..3 {
                let want_top = band_value(&top.map(|p| p[c]));
                let want_bottom = band_value(&bottom.map(|p| p[c]));
                for y in 0..2 {
                    assert_eq!(pixel(&out, x, y)[c], want_top, "top ({x}, {y}) channel {c}");
                    assert_eq!(pixel(&out, x, y + 6)[c], want_bottom, "bottom ({x}, {y}) channel {c}");
                }
            }
        }
        // The green rows 0, 100, 255 extrapolate below 0 (clamped) at the top; 30, 255, 100 to
        // 0 at the bottom: a band is not a copy of the edge row.
        assert_eq!(pixel(&out, 0, 0)[1], 0);

        // 2x6 into 6x6: side bands of 2 columns each side of the 2 image columns.
        let tall = image(2, 6, |x, y| (60 * x + y + 20) as u8, |x, _| [10, 200][x]);
        let out = resize_image(ResizeMode::ResizeAndFill, &tall, 6, 6).unwrap();
        for y in 0..6 {
            let left = [pixel(&tall, 0, y), pixel(&tall, 1, y)];
            let right = [pixel(&tall, 1, y), pixel(&tall, 0, y)];
            for c in 0..3 {
                for x in 0..2 {
                    assert_eq!(pixel(&out, x, y)[c], band_value(&left.map(|p| p[c])), "left ({x}, {y})");
                    assert_eq!(pixel(&out, x + 4, y)[c], band_value(&right.map(|p| p[c])), "right ({x}, {y})");
                }
                assert_eq!(pixel(&out, 2, y), pixel(&tall, 0, y));
                assert_eq!(pixel(&out, 3, y), pixel(&tall, 1, y));
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let im = image(4, 4, |_, _| 0, |_, _| 0);
        let err = resize_image(ResizeMode::JustResize, &im, 0, 8).unwrap_err().to_string();
        assert!(err.contains("sides must be positive"), "{err}");
        assert!(pil_resize(&im, 2, 2, [0.0, 0.0, 5.0, 4.0]).is_err());
        let short = RgbImage { data: vec![0; 10], ..im };
        let err = resize_image(ResizeMode::CropAndResize, &short, 8, 8).unwrap_err().to_string();
        assert!(err.contains("4x4 RGB needs 48 bytes, got 10"), "{err}");
    }
}
