//! What the server may load: checkpoints in `--models-dir`, VAEs in `--vae-dir`, LoRAs in
//! `--lora-dir`, found by walking the folders. A request names a file only by an entry of this
//! catalog; no path is ever built from a request, so `../../etc/passwd` cannot name anything
//! outside the folders (it is simply not an entry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::ApiError;

/// Folders deeper than this below a root are not walked (and symlink loops end).
const MAX_DEPTH: usize = 8;

/// One model, VAE or LoRA file (or diffusers folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to its root, `/`-separated (`sd15/v1-5.safetensors`, `my-diffusers-model`).
    pub rel: String,
    /// The absolute path.
    pub path: PathBuf,
}

impl Entry {
    /// The relative path without its extension (A1111's `model_name` keeps folders).
    pub fn stem_rel(&self) -> &str {
        if self.path.is_dir() {
            return &self.rel;
        }
        self.rel.rsplit_once('.').map_or(self.rel.as_str(), |(stem, _)| stem)
    }

    /// The file name without extension.
    pub fn stem(&self) -> String {
        self.path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
    }

    /// The file name with extension.
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
    }
}

/// The server's folders and what is in them.
#[derive(Debug, Default)]
pub struct Catalog {
    /// `--models-dir`.
    pub models_dir: Option<PathBuf>,
    /// `--vae-dir`.
    pub vae_dir: Option<PathBuf>,
    /// `--lora-dir`.
    pub lora_dir: Option<PathBuf>,
    /// Checkpoints: `.safetensors`/`.ckpt` files and diffusers folders (`model_index.json`).
    pub checkpoints: Vec<Entry>,
    /// VAEs: `.safetensors`/`.ckpt`/`.pt` files and diffusers `AutoencoderKL` folders (`config.json`).
    pub vaes: Vec<Entry>,
    /// LoRAs: `.safetensors` files.
    pub loras: Vec<Entry>,
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Walks `root`: files with one of `exts`, and folders that hold `marker` (not walked into).
fn walk(root: &Path, exts: &[&str], marker: Option<&str>) -> Vec<Entry> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = || {
                path.strip_prefix(root)
                    .map(|r| r.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"))
                    .unwrap_or(name.clone())
            };
            if path.is_dir() {
                if marker.is_some_and(|m| path.join(m).is_file()) {
                    found.push(Entry { rel: rel(), path: path.clone() });
                } else if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if has_ext(&path, exts) {
                found.push(Entry { rel: rel(), path });
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    found
}

impl Catalog {
    /// A catalog of the folders, scanned now.
    pub fn new(models_dir: Option<PathBuf>, vae_dir: Option<PathBuf>, lora_dir: Option<PathBuf>) -> Self {
        let mut catalog = Self { models_dir, vae_dir, lora_dir, ..Self::default() };
        catalog.refresh_checkpoints();
        catalog.refresh_vaes();
        catalog.refresh_loras();
        catalog
    }

    /// Rescans `--models-dir`.
    pub fn refresh_checkpoints(&mut self) {
        self.checkpoints = self
            .models_dir
            .as_deref()
            .map(|d| walk(d, &["safetensors", "ckpt"], Some("model_index.json")))
            .unwrap_or_default();
    }

    /// Rescans `--vae-dir`.
    pub fn refresh_vaes(&mut self) {
        self.vaes = self
            .vae_dir
            .as_deref()
            .map(|d| walk(d, &["safetensors", "ckpt", "pt"], Some("config.json")))
            .unwrap_or_default();
    }

    /// Rescans `--lora-dir`.
    pub fn refresh_loras(&mut self) {
        self.loras = self.lora_dir.as_deref().map(|d| walk(d, &["safetensors"], None)).unwrap_or_default();
    }

    /// A checkpoint's A1111 title: `rel [hash]` once its hash is known, else `rel`.
    pub fn title(entry: &Entry) -> String {
        match cached_hash(&entry.path) {
            Some(hash) => format!("{} [{}]", entry.rel, &hash[..10]),
            None => entry.rel.clone(),
        }
    }

    /// The checkpoint `name` names: its title, relative path (with or without extension and a
    /// ` [hash]` suffix), or file name, as A1111 accepts them.
    pub fn checkpoint(&self, field: &str, name: &str) -> Result<&Entry, ApiError> {
        let bare = strip_hash(name.trim());
        let matches = |e: &&Entry| {
            e.rel == bare || e.stem_rel() == bare || e.file_name() == bare || e.stem() == bare || Self::title(e) == name
        };
        let found: Vec<&Entry> = self.checkpoints.iter().filter(matches).collect();
        pick(found, field, "model", name, &self.checkpoints)
    }

    /// The VAE `name` names (relative path, with or without extension, or file name).
    pub fn vae(&self, field: &str, name: &str) -> Result<&Entry, ApiError> {
        let name = name.trim();
        let found: Vec<&Entry> = self
            .vaes
            .iter()
            .filter(|e| e.rel == name || e.stem_rel() == name || e.file_name() == name || e.stem() == name)
            .collect();
        pick(found, field, "VAE", name, &self.vaes)
    }

    /// The LoRA of a `<lora:NAME:...>` tag: NAME is the file stem, or the relative path without
    /// extension when several files share a stem.
    pub fn lora(&self, field: &str, name: &str) -> Result<&Entry, ApiError> {
        let found: Vec<&Entry> = self.loras.iter().filter(|e| e.stem_rel() == name).collect();
        let found = if found.is_empty() { self.loras.iter().filter(|e| e.stem() == name).collect() } else { found };
        pick(found, field, "LoRA", name, &self.loras)
    }
}

/// `name [0123456789]` → `name`.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once(" [") {
        Some((stem, hash)) if hash.ends_with(']') && hash[..hash.len() - 1].chars().all(|c| c.is_ascii_hexdigit()) => {
            stem
        }
        _ => name,
    }
}

fn pick<'a>(
    found: Vec<&'a Entry>,
    field: &str,
    what: &'static str,
    name: &str,
    all: &[Entry],
) -> Result<&'a Entry, ApiError> {
    match found.len() {
        1 => Ok(found[0]),
        0 => {
            let mut names: Vec<&str> = all.iter().take(20).map(|e| e.rel.as_str()).collect();
            if all.len() > 20 {
                names.push("...");
            }
            let available =
                if names.is_empty() { "none (is the folder given and filled?)".into() } else { names.join(", ") };
            Err(ApiError::NotFound { field: field.into(), what, name: name.into(), available })
        }
        _ => Err(ApiError::field(
            field,
            format!(
                "`{name}` matches several {what} files ({}); use the relative path",
                found.iter().map(|e| e.rel.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

type HashCache = HashMap<PathBuf, (u64, Option<SystemTime>, String)>;

fn hash_cache() -> &'static Mutex<HashCache> {
    static CACHE: std::sync::OnceLock<Mutex<HashCache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn file_key(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| (meta.len(), meta.modified().ok()))
}

/// The full SHA-256 of a file, if it was computed before and the file has not changed since.
pub fn cached_hash(path: &Path) -> Option<String> {
    let key = file_key(path)?;
    let cache = hash_cache().lock().ok()?;
    cache.get(path).filter(|(len, time, _)| (*len, *time) == key).map(|(_, _, h)| h.clone())
}

/// The SHA-256 of a file (hex), cached by path, size and modification time; `None` for a
/// folder or an unreadable file. A1111's model hash is its first 10 digits.
pub fn sha256(path: &Path) -> Option<String> {
    if let Some(hash) = cached_hash(path) {
        return Some(hash);
    }
    let key = file_key(path)?;
    let hash = kairos_pipeline::infotext::file_sha256(path).ok()?;
    if let Ok(mut cache) = hash_cache().lock() {
        cache.insert(path.to_path_buf(), (key.0, key.1, hash.clone()));
    }
    Some(hash)
}

/// A1111's short model hash (first 10 hex digits of the file's SHA-256), as `kairos generate`
/// writes it; `None` for a diffusers folder.
pub fn short_hash(path: &Path) -> Option<String> {
    sha256(path).map(|h| h[..10].to_string())
}

/// A1111's LoRA short hash ([`kairos_pipeline::infotext::lora_hash`]) as an API error on failure.
pub fn lora_hash(path: &Path) -> Result<String, ApiError> {
    kairos_pipeline::infotext::lora_hash(path)
        .map_err(|e| ApiError::Internal(format!("cannot read the LoRA {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_only_to_entries() {
        let dir = std::env::temp_dir().join(format!("kairos-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub/diffusers")).unwrap();
        std::fs::write(dir.join("a.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("sub/b.ckpt"), b"y").unwrap();
        std::fs::write(dir.join("sub/diffusers/model_index.json"), b"{}").unwrap();
        std::fs::write(dir.join("notes.txt"), b"z").unwrap();
        let catalog = Catalog::new(Some(dir.clone()), None, None);
        let rels: Vec<&str> = catalog.checkpoints.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["a.safetensors", "sub/b.ckpt", "sub/diffusers"]);
        assert_eq!(catalog.checkpoint("m", "a").unwrap().rel, "a.safetensors");
        assert_eq!(catalog.checkpoint("m", "sub/b").unwrap().rel, "sub/b.ckpt");
        assert_eq!(catalog.checkpoint("m", "a.safetensors [0123456789]").unwrap().rel, "a.safetensors");
        assert_eq!(catalog.checkpoint("m", "diffusers").unwrap().rel, "sub/diffusers");
        for bad in ["../../etc/passwd", "/etc/passwd", "notes.txt", "sub/../a.safetensors", ""] {
            let err = catalog.checkpoint("sd_model_checkpoint", bad).unwrap_err();
            assert_eq!(err.field_name().as_deref(), Some("sd_model_checkpoint"), "{bad}");
        }
        let hash = short_hash(&dir.join("a.safetensors")).unwrap();
        assert_eq!(Catalog::title(&catalog.checkpoints[0]), format!("a.safetensors [{hash}]"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
