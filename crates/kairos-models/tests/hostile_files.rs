//! Weight files that lie about their sizes are refused with a clear error before anything is
//! allocated for them, and the process's peak RSS stays small (issue 16, item 2).

use std::path::{Path, PathBuf};

use kairos_models::loading::{bounds, load, LoadOptions};

/// The test process's peak resident set (VmHWM), in MiB; `None` off Linux.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn assert_small_peak() {
    if let Some(mib) = peak_rss_mib() {
        assert!(mib < 200, "peak RSS {mib} MiB, over the 200 MiB bound");
    }
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

fn err_text(path: &Path) -> String {
    match load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn safetensors_declaring_a_trillion_elements_is_refused() {
    let bytes = safetensors(
        r#"{"model.diffusion_model.w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,1024]}}"#,
        1024,
    );
    assert!(bytes.len() < 2048);
    let path = temp_file("huge_shape.safetensors", &bytes);
    let err = err_text(&path);
    assert!(err.contains("1000000000000 elements") && err.contains("4.0 TB") && err.contains("1.0 kB"), "{err}");
    assert_small_peak();
}

#[test]
fn safetensors_with_overflowing_shape_is_refused() {
    let big = u64::MAX;
    let bytes =
        safetensors(&format!(r#"{{"w":{{"dtype":"F16","shape":[{big},{big},{big}],"data_offsets":[0,8]}}}}"#), 8);
    let err = bounds::check_safetensors_bytes(Path::new("x.safetensors"), &bytes).unwrap_err().to_string();
    assert!(err.contains("more than 10³⁸"), "{err}");
    assert_small_peak();
}

#[test]
fn safetensors_header_longer_than_the_file_is_refused() {
    let mut bytes = safetensors("{}", 0);
    bytes[..8].copy_from_slice(&(50_000_000u64).to_le_bytes());
    let path = temp_file("long_header.safetensors", &bytes);
    let err = err_text(&path);
    assert!(err.contains("header declares 50.0 MB but the file holds 10 B"), "{err}");
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let path = temp_file("huge_header.safetensors", &bytes);
    let err = err_text(&path);
    assert!(err.contains("the limit is 100.0 MB"), "{err}");
    assert_small_peak();
}

/// The real LDM zip pickle fixture with the central directory's claimed sizes of its first data
/// entry replaced by `size` (uncompressed) and `stored` (compressed).
fn lying_zip(size: u32, stored: Option<u32>) -> Vec<u8> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loading/sd1_ldm.ckpt");
    let mut bytes = std::fs::read(fixture).unwrap();
    // Central directory file headers: PK\x01\x02; compressed size at +20, uncompressed at +24,
    // name length at +28, name at +46.
    let mut i = 0;
    while i + 46 < bytes.len() {
        if bytes[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
            let name_len = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
            let name = String::from_utf8_lossy(&bytes[i + 46..i + 46 + name_len]).to_string();
            if name.contains("/data/") {
                bytes[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                if let Some(stored) = stored {
                    bytes[i + 20..i + 24].copy_from_slice(&stored.to_le_bytes());
                }
                return bytes;
            }
        }
        i += 1;
    }
    panic!("no data entry in the fixture");
}

#[test]
fn zip_entry_claiming_more_than_it_stores_is_refused() {
    let path = temp_file("lying_size.ckpt", &lying_zip(u32::MAX - 1, None));
    let err = err_text(&path);
    assert!(err.contains("claims 4.3 GB") && err.contains("uncompressed"), "{err}");
    assert_small_peak();
}

#[test]
fn zip_entry_larger_than_the_archive_is_refused() {
    let path = temp_file("lying_both.ckpt", &lying_zip(u32::MAX - 1, Some(u32::MAX - 1)));
    let err = err_text(&path);
    assert!(err.contains("claims 4.3 GB") && err.contains("the archive is"), "{err}");
    assert_small_peak();
}

#[test]
fn the_real_fixtures_pass_the_bounds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loading");
    bounds::check_safetensors_file(&dir.join("sd1_ldm.safetensors")).unwrap();
    bounds::check_zip_file(&dir.join("sd1_ldm.ckpt")).unwrap();
    bounds::check_zip_file(&dir.join("vae_ldm.pt")).unwrap();
}

#[test]
fn a_million_character_prompt_is_refused_before_parsing() {
    use kairos_models::prompt::{parse_prompt_attention, PromptError, MAX_PROMPT_CHARS};
    let prompt = "(a:1.1) ".repeat(125_000);
    assert_eq!(prompt.len(), 1_000_000);
    let err = parse_prompt_attention(&prompt).unwrap_err();
    assert!(matches!(err, PromptError::TooLong { chars: 1_000_000, limit: MAX_PROMPT_CHARS }), "{err}");
    assert!(err.to_string().contains("1000000 characters, above the limit of 20000"), "{err}");
    // The limit counts characters, not bytes: 20,000 four-byte characters pass.
    parse_prompt_attention(&"😀".repeat(MAX_PROMPT_CHARS)).unwrap();
    assert_small_peak();
}
