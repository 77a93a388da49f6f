//! Writing images: PNG with the infotext in a `parameters` text chunk, never overwriting a file.
//!
//! Naming: into a directory, images get A1111's `NNNNN-SEED.png` with the next free number (one
//! past the largest existing `NNNNN-` prefix). A named file is written only if it does not exist;
//! otherwise the run fails with [`PipelineError::OutputExists`]: someone who names a file means
//! that file, and silently writing elsewhere would hide the clash. Several images to one named
//! file get `-1`, `-2`, ... before the extension. Files are opened with `create_new`, so a file
//! that appears between the check and the write is not clobbered either.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::image::RgbImage;
use crate::PipelineError;

/// Where images go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A directory (created if missing): A1111-style names with the next free number.
    Directory(PathBuf),
    /// A file name chosen by the user.
    File(PathBuf),
}

impl OutputTarget {
    /// A path that is an existing directory or ends in a separator is a directory; anything
    /// else names a file.
    pub fn from_path(path: &Path) -> Self {
        let text = path.as_os_str().to_string_lossy();
        if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
            Self::Directory(path.to_path_buf())
        } else {
            Self::File(path.to_path_buf())
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> PipelineError {
    PipelineError::Io { path: path.to_path_buf(), source }
}

/// Creates `path`, failing with [`PipelineError::OutputExists`] if it exists.
fn create_new(path: &Path) -> Result<File, PipelineError> {
    OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => PipelineError::OutputExists { path: path.to_path_buf() },
        _ => io_error(path, e),
    })
}

/// One past the largest `NNNNN-` prefix of the directory's entries (A1111's
/// `get_next_sequence_number`).
fn next_number(dir: &Path) -> Result<u64, PipelineError> {
    let mut next = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let name = entry.map_err(|e| io_error(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.split('-').next().and_then(|p| p.parse::<u64>().ok()) {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}

/// Creates the file for image `index` of `count`, returning its path and handle.
fn create_output(
    target: &OutputTarget,
    index: usize,
    count: usize,
    seed: u64,
) -> Result<(PathBuf, File), PipelineError> {
    match target {
        OutputTarget::File(path) => {
            let path = if count == 1 {
                path.clone()
            } else {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "png".into());
                path.with_file_name(format!("{stem}-{}.{ext}", index + 1))
            };
            let file = create_new(&path)?;
            Ok((path, file))
        }
        OutputTarget::Directory(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            let mut n = next_number(dir)?;
            loop {
                let path = dir.join(format!("{n:05}-{seed}.png"));
                match create_new(&path) {
                    Ok(file) => return Ok((path, file)),
                    // Taken meanwhile (another run): try the next number.
                    Err(PipelineError::OutputExists { .. }) => n += 1,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Writes `image` as an 8-bit RGB PNG with `parameters` in a `parameters` text chunk (tEXt when
/// the text is Latin-1, as PIL writes it for A1111, iTXt otherwise). Returns the path written.
pub fn save_png(
    target: &OutputTarget,
    index: usize,
    count: usize,
    seed: u64,
    image: &RgbImage,
    parameters: &str,
) -> Result<PathBuf, PipelineError> {
    let (path, file) = create_output(target, index, count, seed)?;
    let png_error = |source| PipelineError::Png { path: path.clone(), source };
    let (w, h) = (u32::try_from(image.width), u32::try_from(image.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(PipelineError::InvalidOption { name: "image", message: "too large for PNG".into() });
    };
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if parameters.chars().all(|c| (c as u32) < 256) {
        encoder.add_text_chunk("parameters".into(), parameters.into()).map_err(png_error)?;
    } else {
        encoder.add_itxt_chunk("parameters".into(), parameters.into()).map_err(png_error)?;
    }
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.data).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(path)
}

/// Writes `value` as pretty JSON next to `image_path` (same stem, `.json`), never overwriting.
pub fn save_json_sidecar(image_path: &Path, value: &serde_json::Value) -> Result<PathBuf, PipelineError> {
    let path = image_path.with_extension("json");
    let mut file = create_new(&path)?;
    let text = serde_json::to_string_pretty(value).map_err(|e| io_error(&path, e.into()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(|e| io_error(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> RgbImage {
        RgbImage { width: 2, height: 1, data: vec![0, 1, 2, 3, 4, 5] }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kairos-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_text_chunk(path: &Path) -> (Vec<u8>, String) {
        let decoder = png::Decoder::new(File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let meta = reader.info();
        let text = meta
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .chain(meta.utf8_text.iter().map(|t| (t.keyword.clone(), t.get_text().unwrap())))
            .find(|(k, _)| k == "parameters")
            .unwrap()
            .1;
        (buf, text)
    }

    #[test]
    fn directory_names_count_up_and_never_overwrite() {
        let dir = tmp("dir");
        std::fs::write(dir.join("00041-7.png"), b"x").unwrap();
        let target = OutputTarget::from_path(&dir);
        let a = save_png(&target, 0, 2, 9, &tiny(), "p\nSteps: 1").unwrap();
        let b = save_png(&target, 1, 2, 10, &tiny(), "naïve 猫").unwrap();
        assert_eq!(a.file_name().unwrap(), "00042-9.png");
        assert_eq!(b.file_name().unwrap(), "00043-10.png");
        let (pixels, text) = read_text_chunk(&a);
        assert_eq!((pixels, text.as_str()), (tiny().data, "p\nSteps: 1"));
        assert_eq!(read_text_chunk(&b).1, "naïve 猫");
        let json = save_json_sidecar(&a, &serde_json::json!({"seed": 9})).unwrap();
        assert!(matches!(save_json_sidecar(&a, &serde_json::json!({})), Err(PipelineError::OutputExists { .. })));
        assert!(json.ends_with("00042-9.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_existing_file_is_an_error() {
        let dir = tmp("file");
        let path = dir.join("out.png");
        let target = OutputTarget::from_path(&path);
        save_png(&target, 0, 1, 1, &tiny(), "").unwrap();
        let err = save_png(&target, 0, 1, 1, &tiny(), "").unwrap_err();
        assert!(matches!(err, PipelineError::OutputExists { .. }), "{err}");
        assert!(err.to_string().contains("never overwrites"), "{err}");
        let second = save_png(&target, 1, 2, 1, &tiny(), "").unwrap();
        assert_eq!(second.file_name().unwrap(), "out-2.png");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
