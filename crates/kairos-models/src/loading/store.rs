//! Tensor files (memory-mapped safetensors, PyTorch zip pickles) and [`Component`]: one model's
//! weights under diffusers key names, served lazily to a candle `VarBuilder`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::ModelError;

/// Extensions read as safetensors.
const SAFETENSORS_EXT: &[&str] = &["safetensors"];
/// Extensions read as PyTorch zip pickles (data only: the pickle is interpreted, never executed).
const PICKLE_EXT: &[&str] = &["ckpt", "pt", "pth", "bin"];

/// One opened weight file.
pub(crate) enum TensorFile {
    /// Memory-mapped: tensors are read from the page cache when loaded.
    Safetensors(MmapedSafetensors),
    /// PyTorch zip archive; each tensor is read from the archive when loaded.
    Pickle(candle_core::pickle::PthTensors),
}

/// A tensor's shape as stored in a file.
#[derive(Debug, Clone)]
pub(crate) struct StoredTensor {
    pub shape: Vec<usize>,
}

/// An opened file: its path, its tensor index and the reader.
pub(crate) struct OpenFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, StoredTensor>,
    /// A pickle's top-level `global_step`, if any.
    pub global_step: Option<i64>,
    reader: TensorFile,
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }
}

impl OpenFile {
    /// Opens a safetensors or pickle file, choosing the reader by extension.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::FileNotFound { path: path.to_path_buf() });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if SAFETENSORS_EXT.contains(&ext.as_str()) {
            // A lying header (a shape its data cannot hold) is refused before anything is mapped.
            super::bounds::check_safetensors_file(path)?;
            // SAFETY: the map is read-only; the caller must not truncate or rewrite a checkpoint
            // while kairos has it open (the same contract as every mmap-based loader).
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| corrupt(path, e))?;
            let mut tensors = BTreeMap::new();
            for (name, view) in st.tensors() {
                tensors.insert(name, StoredTensor { shape: view.shape().to_vec() });
            }
            Ok(Self { path: path.to_path_buf(), tensors, global_step: None, reader: TensorFile::Safetensors(st) })
        } else if PICKLE_EXT.contains(&ext.as_str()) {
            Self::open_pickle(path)
        } else {
            Err(ModelError::UnknownExtension { path: path.to_path_buf(), extension: ext })
        }
    }

    fn open_pickle(path: &Path) -> Result<Self, ModelError> {
        // Entry sizes that lie about the archive, and shapes their storage cannot hold, are
        // refused before the unpickler or a tensor read allocates for them.
        let entry_sizes = super::bounds::check_zip_file(path)?;
        // Training checkpoints nest the weights under `state_dict`; exported ones are flat.
        let mut pth = unpickle(path, None)?;
        if pth.tensor_infos().is_empty() {
            pth = unpickle(path, Some("state_dict"))?;
        }
        for (name, ti) in pth.tensor_infos() {
            super::bounds::check_pickled_tensor(
                path,
                name,
                ti.layout.shape().dims(),
                ti.dtype.size_in_bytes(),
                ti.layout.start_offset(),
                &ti.path,
                &entry_sizes,
            )?;
        }
        let tensors = pth
            .tensor_infos()
            .iter()
            .map(|(k, ti)| (k.clone(), StoredTensor { shape: ti.layout.shape().dims().to_vec() }))
            .collect();
        let global_step = read_global_step(path);
        Ok(Self { path: path.to_path_buf(), tensors, global_step, reader: TensorFile::Pickle(pth) })
    }

    /// Loads one stored tensor in its stored dtype, on the CPU.
    fn load(&self, name: &str) -> Result<Tensor, ModelError> {
        let t = match &self.reader {
            TensorFile::Safetensors(st) => st.load(name, &Device::Cpu).inspect(|_| {
                if let Ok(view) = st.get(name) {
                    release_pages(view.data());
                }
            }),
            TensorFile::Pickle(p) => no_panic(|| p.get(name))
                .and_then(|t| t.ok_or_else(|| candle_core::Error::Msg(format!("tensor `{name}` not in the archive")))),
        };
        t.map_err(|e| corrupt(&self.path, e))
    }
}

/// Runs candle's unpickler, whose malformed-input paths can panic (e.g. a `_rebuild_tensor_v2`
/// call with too few arguments indexes past its tuple: fuzz/pickle_load), as an error.
fn no_panic<T>(f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("malformed pickle");
        Err(candle_core::Error::Msg(format!("malformed pickle ({what})")))
    })
}

fn unpickle(path: &Path, key: Option<&str>) -> Result<candle_core::pickle::PthTensors, ModelError> {
    no_panic(|| candle_core::pickle::PthTensors::new(path, key)).map_err(|e| corrupt(path, e))
}

/// Drops the mapped pages wholly inside `bytes` from this process's resident set once a tensor
/// has been copied out of the map (`madvise(MADV_DONTNEED)`; they stay in the page cache and are
/// read again if touched). Without it every tensor read stays resident as file-backed memory
/// until the file is closed, so building a model from an f16 file would peak at the file's size
/// plus the converted weights.
#[cfg(unix)]
fn release_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let start = bytes.as_ptr() as usize;
    let (lo, hi) = (start.div_ceil(page) * page, (start + bytes.len()) / page * page);
    if hi > lo {
        // SAFETY: [lo, hi) lies inside a read-only file mapping that outlives this call; dropping
        // its pages changes no byte that any reference observes (a later read faults the same
        // file contents back in).
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
    }
}

#[cfg(not(unix))]
fn release_pages(_bytes: &[u8]) {}

/// Reads the top-level `global_step` of a CompVis training checkpoint, if there is one.
/// diffusers uses it to tell SD2-base (875000, epsilon) from SD2-v.
fn read_global_step(path: &Path) -> Option<i64> {
    // The unpickler's malformed-input panics (see `no_panic`) mean "no global_step".
    std::panic::catch_unwind(|| read_global_step_inner(path)).ok().flatten()
}

fn read_global_step_inner(path: &Path) -> Option<i64> {
    use candle_core::pickle::{Object, Stack};
    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let name = zip.file_names().filter_map(Result::ok).find(|n| n.ends_with("data.pkl"))?.into_owned();
    let mut reader = std::io::BufReader::new(zip.by_name(&name).ok()?);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).ok()?;
    match stack.finalize().ok()? {
        Object::Dict(entries) => entries.into_iter().find_map(|(k, v)| match k {
            Object::Unicode(k) if k == "global_step" => v.int_or_long().ok(),
            _ => None,
        }),
        _ => None,
    }
}

/// How a diffusers-named weight is made from a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Transform {
    /// Stored as is.
    Identity,
    /// Rows `start..start + len` of dim 0 (OpenCLIP's fused `in_proj` split into q/k/v).
    Rows { start: usize, len: usize },
    /// A 1×1 conv weight used as a linear weight: `[out, in, 1, 1]` (or `[out, in, 1]`) → `[out, in]`.
    ConvToLinear,
    /// A 2-D matrix transposed (OpenCLIP's `text_projection`, applied as `x @ P`, is the
    /// transpose of the linear weight transformers stores).
    Transpose,
}

/// Where a diffusers-named weight comes from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub file: usize,
    pub key: String,
    pub transform: Transform,
    /// Shape after the transform.
    pub shape: Vec<usize>,
}

impl Source {
    /// `key` must be a key of `files[file]`: every caller takes it from that file's index.
    pub fn new(files: &[Arc<OpenFile>], file: usize, key: &str, transform: Transform) -> Self {
        let stored = &files[file].tensors[key].shape;
        let shape = match transform {
            Transform::Identity => stored.clone(),
            Transform::Rows { len, .. } => {
                let mut s = stored.clone();
                s[0] = len;
                s
            }
            Transform::ConvToLinear => stored.iter().take(2).copied().collect(),
            Transform::Transpose => stored.iter().rev().copied().collect(),
        };
        Self { file, key: key.to_string(), transform, shape }
    }
}

struct Weights {
    name: String,
    files: Vec<Arc<OpenFile>>,
    map: BTreeMap<String, Source>,
    used: Mutex<HashSet<String>>,
}

/// One model's weights (`unet`, `vae` or `text_encoder`) under diffusers / transformers key
/// names, whatever layout the file used, plus the diffusers `config.json` for that model
/// (read from a diffusers folder, or derived from the tensor shapes of a single file).
///
/// Tensors are read lazily, converted to the requested dtype and device when a module asks.
#[derive(Clone)]
pub struct Component {
    /// The diffusers config (the content of `<component>/config.json`).
    pub config: serde_json::Value,
    weights: Arc<Weights>,
}

impl Component {
    pub(crate) fn new(
        name: &str,
        config: serde_json::Value,
        files: Vec<Arc<OpenFile>>,
        map: BTreeMap<String, Source>,
    ) -> Self {
        let weights = Weights { name: name.to_string(), files, map, used: Mutex::new(HashSet::new()) };
        Self { config, weights: Arc::new(weights) }
    }

    /// The component's name (`unet`, `vae`, `text_encoder`).
    pub fn name(&self) -> &str {
        &self.weights.name
    }

    /// The diffusers key names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.weights.map.keys().map(String::as_str)
    }

    /// The shape of a weight, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.weights.map.get(key).map(|s| s.shape.as_slice())
    }

    /// Loads one weight under its diffusers name, converted to `dtype` on `device`.
    pub fn load(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        self.weights.load(key, dtype, device)
    }

    /// A `VarBuilder` over these weights: module paths are diffusers key names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(Handle(self.weights.clone()));
        VarBuilder::from_backend(backend, dtype, device.clone())
    }

    /// Keys that no module has asked for through [`Component::var_builder`] or
    /// [`Component::load`]: after building the model, a non-empty list means the file holds
    /// weights the model does not use (loading is strict; callers report these).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.weights.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.weights.map.keys().filter(|k| !used.contains(*k)).cloned().collect()
    }
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("name", &self.weights.name)
            .field("tensors", &self.weights.map.len())
            .field("config", &self.config)
            .finish()
    }
}

impl Weights {
    fn load(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let src = self
            .map
            .get(key)
            .ok_or_else(|| ModelError::MissingWeight { component: self.name.clone(), key: key.to_string() })?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(key.to_string());
        }
        let file = &self.files[src.file];
        let t = file.load(&src.key)?;
        let t = match src.transform {
            Transform::Identity => t,
            Transform::Rows { start, len } => t.narrow(0, start, len)?,
            Transform::ConvToLinear => t.flatten_from(1)?,
            Transform::Transpose => t.t()?,
        };
        // Convert on the CPU first so that the device copy is already in the compute dtype.
        Ok(t.to_dtype(dtype)?.contiguous()?.to_device(device)?)
    }
}

struct Handle(Arc<Weights>);

/// `t` if it has the shape a module asked for, else [`ModelError::ShapeMismatch`] naming the key:
/// the check every `VarBuilder` backend over checkpoint weights makes.
pub(crate) fn checked_shape(
    component: &str,
    key: &str,
    expected: &candle_core::Shape,
    t: Tensor,
) -> candle_core::Result<Tensor> {
    if t.dims() != expected.dims() {
        return Err(candle_core::Error::wrap(ModelError::ShapeMismatch {
            component: component.to_string(),
            key: key.to_string(),
            expected: expected.dims().to_vec(),
            got: t.dims().to_vec(),
        }));
    }
    Ok(t)
}

impl SimpleBackend for Handle {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        checked_shape(&self.0.name, name, &s, self.get_unchecked(name, dtype, dev)?)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, dtype, dev).map_err(|e| match e {
            ModelError::Candle(e) => e,
            e => candle_core::Error::wrap(e),
        })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.map.contains_key(name)
    }
}
