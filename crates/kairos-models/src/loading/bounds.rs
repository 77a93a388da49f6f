//! Bounds on what a weight file may make kairos allocate, checked before any tensor is read.
//!
//! A file can declare anything: a safetensors header can name a 10¹²-element tensor, a zip's
//! central directory can claim terabyte entries, a pickle can give a tensor a shape its storage
//! does not hold. Each declaration is checked against the bytes the file really has, so a lying
//! file is a clear [`ModelError::Corrupt`] instead of an allocation failure or an OOM kill.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::ModelError;

/// The largest safetensors JSON header read (the safetensors crate's own limit).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;
/// The largest pickle (`data.pkl`, the object graph without tensor data) read from a zip; real
/// checkpoints' pickles are a few MB.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Deflate cannot expand input by more than about 1032:1; an entry claiming more lies.
const MAX_DEFLATE_RATIO: u64 = 1032;

fn corrupt(path: &Path, reason: String) -> ModelError {
    ModelError::Corrupt { path: path.to_path_buf(), reason }
}

/// `n` bytes in words ("4.0 TB", "1.2 kB").
pub fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn dtype_bits(dtype: &str) -> Option<u128> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "F4" | "F6_E2M3" | "F6_E3M2" => return None,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

/// Checks a safetensors file's header against its length: the header fits in the file and under
/// [`MAX_SAFETENSORS_HEADER_BYTES`], and every tensor's declared shape × dtype is exactly the
/// byte range it names, which lies inside the data section.
pub fn check_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let len = bytes.len() as u64;
    if len < 8 {
        return Err(corrupt(path, format!("{len} bytes is shorter than the 8-byte safetensors header length")));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > MAX_SAFETENSORS_HEADER_BYTES || 8 + n > len {
        return Err(header_len_error(path, n, len));
    }
    check_safetensors_header(path, &bytes[8..8 + n as usize], len - 8 - n)
}

fn header_len_error(path: &Path, n: u64, len: u64) -> ModelError {
    if n > MAX_SAFETENSORS_HEADER_BYTES {
        corrupt(
            path,
            format!(
                "the safetensors header declares {} of JSON; the limit is {}",
                human_bytes(n as u128),
                human_bytes(MAX_SAFETENSORS_HEADER_BYTES as u128)
            ),
        )
    } else {
        corrupt(
            path,
            format!(
                "the safetensors header declares {} but the file holds {}",
                human_bytes(n as u128),
                human_bytes(len as u128)
            ),
        )
    }
}

/// Like [`check_safetensors_bytes`], reading only the header from the file.
pub fn check_safetensors_file(path: &Path) -> Result<(), ModelError> {
    let io = |e: std::io::Error| corrupt(path, e.to_string());
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = [0u8; 8];
    if len < 8 {
        return Err(corrupt(path, format!("{len} bytes is shorter than the 8-byte safetensors header length")));
    }
    f.read_exact(&mut head).map_err(io)?;
    let n = u64::from_le_bytes(head);
    if n > MAX_SAFETENSORS_HEADER_BYTES || 8 + n > len {
        // The same messages as for bytes, from the 8 length bytes and the true file length.
        return Err(header_len_error(path, n, len));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    check_safetensors_header(path, &header, len - 8 - n)
}

fn check_safetensors_header(path: &Path, header: &[u8], data_len: u64) -> Result<(), ModelError> {
    let value: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| corrupt(path, format!("the safetensors header is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(corrupt(path, "the safetensors header is not a JSON object".into()));
    };
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let shape: Option<Vec<u64>> =
            info.get("shape").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> =
            info.get("data_offsets").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let dtype = info.get("dtype").and_then(|d| d.as_str());
        let (Some(shape), Some(offsets), Some(dtype)) = (shape, offsets, dtype) else {
            return Err(corrupt(path, format!("tensor `{name}` has no valid dtype, shape and data_offsets")));
        };
        let Some(bits) = dtype_bits(dtype) else {
            // Sub-byte and unknown dtypes are left to the safetensors crate's own checks.
            continue;
        };
        let elements = shape.iter().try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
        let bytes = elements.and_then(|e| e.checked_mul(bits)).map(|b| b / 8);
        let [start, end] = offsets[..] else {
            return Err(corrupt(path, format!("tensor `{name}` has {} data_offsets, not 2", offsets.len())));
        };
        let span = end.checked_sub(start);
        match (elements, bytes) {
            (Some(elements), Some(bytes))
                if span == Some(bytes as u64) && bytes <= u64::MAX as u128 && end <= data_len =>
            {
                let _ = elements;
            }
            (elements, bytes) => {
                let elements = elements.map_or("more than 10³⁸".to_string(), |e| e.to_string());
                let bytes = bytes.map_or("more than 10³⁸ B".to_string(), human_bytes);
                return Err(corrupt(
                    path,
                    format!(
                        "tensor `{name}` declares {elements} elements of {dtype} ({bytes}) at bytes {start}..{end}, but \
                         the file holds {} of tensor data",
                        human_bytes(data_len as u128)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The sizes of a PyTorch zip's entries, by name, after checking each entry's claims against the
/// archive: a stored entry's size equals its stored bytes, a compressed entry expands no more than
/// deflate can, every entry's stored bytes fit in the file, and `data.pkl` is under
/// [`MAX_PICKLE_BYTES`].
pub fn check_zip_entries<R: Read + std::io::Seek>(
    path: &Path,
    zip: &mut zip::ZipArchive<R>,
    file_len: u64,
) -> Result<HashMap<String, u64>, ModelError> {
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| corrupt(path, e.to_string()))?;
        let (name, size, stored) = (
            entry.name().map_err(|e| corrupt(path, e.to_string()))?.into_owned(),
            entry.size(),
            entry.compressed_size(),
        );
        let lie = |what: String| {
            corrupt(
                path,
                format!(
                    "zip entry `{name}` claims {} ({what}); the archive is {}",
                    human_bytes(size as u128),
                    human_bytes(file_len as u128)
                ),
            )
        };
        if stored > file_len {
            return Err(lie(format!("{} stored", human_bytes(stored as u128))));
        }
        match entry.compression() {
            zip::CompressionMethod::Stored if size != stored => {
                return Err(lie(format!("but stores {} uncompressed", human_bytes(stored as u128))))
            }
            _ if size > stored.saturating_mul(MAX_DEFLATE_RATIO).max(1 << 16) => {
                return Err(lie(format!("more than {MAX_DEFLATE_RATIO}x its {} compressed bytes", stored)))
            }
            _ => {}
        }
        if name.ends_with("data.pkl") && size > MAX_PICKLE_BYTES {
            return Err(lie(format!("a pickle over the {} limit", human_bytes(MAX_PICKLE_BYTES as u128))));
        }
        sizes.insert(name, size);
    }
    Ok(sizes)
}

/// Checks a zip pickle's entries before the unpickler reads it (see [`check_zip_entries`]).
pub fn check_zip_file(path: &Path) -> Result<HashMap<String, u64>, ModelError> {
    let io = |e: std::io::Error| corrupt(path, e.to_string());
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| corrupt(path, format!("not a zip archive: {e}")))?;
    check_zip_entries(path, &mut zip, len)
}

/// Checks that a pickled tensor's declared shape fits in its storage entry.
pub fn check_pickled_tensor(
    path: &Path,
    name: &str,
    dims: &[usize],
    dtype_bytes: usize,
    start_offset: usize,
    entry: &str,
    entry_sizes: &HashMap<String, u64>,
) -> Result<(), ModelError> {
    let Some(&have) = entry_sizes.get(entry) else {
        return Err(corrupt(path, format!("tensor `{name}` names storage `{entry}`, which is not in the archive")));
    };
    let elements = dims.iter().try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
    let need =
        elements.and_then(|e| e.checked_mul(dtype_bytes as u128)).and_then(|b| b.checked_add(start_offset as u128));
    match need {
        Some(need) if need <= have as u128 => Ok(()),
        _ => Err(corrupt(
            path,
            format!(
                "tensor `{name}` declares shape {dims:?} ({} elements, {}) but its storage `{entry}` holds {}",
                elements.map_or("more than 10³⁸".into(), |e| e.to_string()),
                need.map_or("more than 10³⁸ B".into(), human_bytes),
                human_bytes(have as u128)
            ),
        )),
    }
}
