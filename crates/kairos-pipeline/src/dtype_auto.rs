//! `--dtype auto`: the weight dtype that runs faster on this machine.
//!
//! - On a GPU (CUDA, Metal): f16, as diffusers users run; no probe.
//! - On a CPU without AVX512-BF16 (or with `KAIROS_KERNELS=off`): f32, no probe. There bf16
//!   weights are widened to f32 per layer call, which can only be slower.
//! - Otherwise the faster of f32 and bf16 by [`kairos_kernels::probe`], a measured comparison of
//!   the two layer paths (well under a second), cached per CPU in `dtype.json` in the user's
//!   cache directory ([`cache_dir`]), keyed by the CPU's name and cpuid family/model/stepping,
//!   the kairos version, the thread count and the bf16 GEMM's kernel (AMX or AVX512-BF16,
//!   [`kairos_kernels::gemm_bf16::kernel_name`]). A cache file that cannot be read or parsed is
//!   ignored (the probe runs again and rewrites it); one that cannot be written only costs the
//!   next run a probe.
//!
//! Bf16 is 1.2× faster than f32 on a Zen 4 and 2× slower on a Zen 5 (issue 17), so no rule on
//! the CPU's features alone can decide it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use kairos_kernels::probe::ProbeTimes;
use serde::{Deserialize, Serialize};

/// The cache file's name in [`cache_dir`].
pub const CACHE_FILE: &str = "dtype.json";

/// The dtype `--dtype auto` picked, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoDtype {
    /// The weight dtype to load the models in.
    pub dtype: DType,
    /// Why.
    pub reason: AutoReason,
}

/// Why [`AutoDtype::dtype`] was picked.
#[derive(Debug, Clone, PartialEq)]
pub enum AutoReason {
    /// A GPU: f16.
    Gpu,
    /// A CPU without a bf16 GEMM (no AVX512-BF16, or the kernels turned off): f32.
    NoBf16Gemm,
    /// The faster of the two in the probe, measured now or read from the cache.
    Probed(Probed),
    /// The probe itself failed (should not happen): f32, the safe choice.
    ProbeFailed(String),
}

/// A probe's figures and where they are cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The CPU as the cache names it.
    pub cpu: String,
    /// Threads the probe ran on.
    pub threads: usize,
    /// The probe's times.
    pub times: ProbeTimes,
    /// Read from the cache (`true`) or measured in this run.
    pub cached: bool,
    /// The cache file, if there is a cache directory.
    pub cache_file: Option<PathBuf>,
    /// Why the result could not be written to the cache, if it could not.
    pub cache_error: Option<String>,
}

impl AutoDtype {
    /// One line for stderr: the dtype, then why, e.g. `dtype auto: bf16 (probe on AMD Ryzen 9
    /// 7950X …, 16 threads: f32 0.212 s, bf16 0.171 s; cached in ~/.cache/kairos/dtype.json)`.
    pub fn summary(&self) -> String {
        let why = match &self.reason {
            AutoReason::Gpu => "a GPU: half precision, as diffusers runs".to_string(),
            AutoReason::NoBf16Gemm => "no bf16 GEMM here (no AVX512-BF16, or KAIROS_KERNELS=off), so bf16 \
                                        weights would be widened to f32 per call"
                .to_string(),
            AutoReason::ProbeFailed(e) => format!("the f32/bf16 probe failed: {e}"),
            AutoReason::Probed(p) => {
                let figures = format!(
                    "{} on {}, {} threads: f32 {:.3} s, bf16 {:.3} s",
                    if p.cached { "cached probe" } else { "probe" },
                    p.cpu,
                    p.threads,
                    p.times.f32_s,
                    p.times.bf16_s
                );
                let cache = match (&p.cache_file, &p.cache_error, p.cached) {
                    (Some(file), _, true) => format!("from {}", display_path(file)),
                    (Some(file), None, false) => format!("cached in {}", display_path(file)),
                    (_, Some(e), _) => format!("not cached: {e}"),
                    (None, None, _) => "not cached: no cache directory (set KAIROS_CACHE_DIR)".to_string(),
                };
                format!("{figures}; {cache}")
            }
        };
        format!("dtype auto: {} ({why}; --dtype f32|bf16|f16 forces one)", self.dtype.as_str())
    }

    /// The choice as JSON, for output records: `dtype`, `reason` (`gpu`, `no-avx512-bf16`,
    /// `probe`, `cached-probe`, `probe-failed`) and the probe's figures where there was one.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "dtype": self.dtype.as_str() });
        let reason = match &self.reason {
            AutoReason::Gpu => "gpu",
            AutoReason::NoBf16Gemm => "no-avx512-bf16",
            AutoReason::ProbeFailed(e) => {
                v["error"] = e.clone().into();
                "probe-failed"
            }
            AutoReason::Probed(p) => {
                v["cpu"] = p.cpu.clone().into();
                v["threads"] = p.threads.into();
                v["f32_s"] = p.times.f32_s.into();
                v["bf16_s"] = p.times.bf16_s.into();
                v["cache_file"] = p.cache_file.as_ref().map(|f| f.display().to_string()).into();
                if p.cached {
                    "cached-probe"
                } else {
                    "probe"
                }
            }
        };
        v["reason"] = reason.into();
        v
    }
}

/// `path` with the home directory written `~`.
fn display_path(path: &Path) -> String {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from) {
        Some(home) => match path.strip_prefix(&home) {
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => path.display().to_string(),
        },
        None => path.display().to_string(),
    }
}

/// The user's cache directory for kairos: `$KAIROS_CACHE_DIR`, else `$XDG_CACHE_HOME/kairos`,
/// else `~/.cache/kairos` (`%LOCALAPPDATA%\kairos` on Windows); `None` if none is set.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`cache_dir`] with the environment given as a function (for tests). Empty values count as
/// unset; a relative `XDG_CACHE_HOME` is ignored, as the XDG spec says.
pub fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = get("KAIROS_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(xdg) = get("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("kairos"));
    }
    if cfg!(windows) {
        if let Some(local) = get("LOCALAPPDATA") {
            return Some(local.join("kairos"));
        }
    }
    get("HOME").map(|home| home.join(".cache").join("kairos"))
}

/// The CPU, as the cache tells CPUs apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuId {
    /// The brand string (`AMD Ryzen 9 7950X 16-Core Processor`); a virtual machine may show a
    /// generic one, hence the numbers below.
    pub name: String,
    /// `GenuineIntel`, `AuthenticAMD`, ...
    pub vendor: String,
    /// Display family, model and stepping (cpuid leaf 1, extended fields applied).
    pub family: u32,
    /// See `family`.
    pub model: u32,
    /// See `family`.
    pub stepping: u32,
}

impl CpuId {
    /// This machine's CPU: cpuid on x86-64, `/proc/cpuinfo` elsewhere (or `unknown`).
    pub fn current() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            cpuid()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
            };
            let num = |key: &str| field(key).and_then(|v| v.parse().ok()).unwrap_or(0);
            Self {
                name: field("model name").or_else(|| field("Model")).unwrap_or_else(|| "unknown".into()),
                vendor: field("vendor_id").or_else(|| field("CPU implementer")).unwrap_or_default(),
                family: num("cpu family"),
                model: num("model"),
                stepping: num("stepping"),
            }
        }
    }

    /// How the CPU is shown: the name, with the vendor, family and model.
    pub fn label(&self) -> String {
        let name = if self.name.is_empty() { "unnamed CPU" } else { &self.name };
        format!("{name} [{} family {} model {}]", self.vendor, self.family, self.model)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn cpuid() -> CpuId {
    use std::arch::x86_64::__cpuid;
    // SAFETY: cpuid exists on every x86-64 CPU; leaves above the maximum are not read.
    let leaf0 = unsafe { __cpuid(0) };
    let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let (mut family, mut model, mut stepping) = (0, 0, 0);
    if leaf0.eax >= 1 {
        // SAFETY: as above.
        let eax = unsafe { __cpuid(1) }.eax;
        stepping = eax & 0xf;
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        family = if base_family == 0xf { base_family + ((eax >> 20) & 0xff) } else { base_family };
        model =
            if base_family == 0x6 || base_family == 0xf { base_model | (((eax >> 16) & 0xf) << 4) } else { base_model };
    }
    // SAFETY: as above.
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    let name = if max_ext >= 0x8000_0004 {
        let bytes: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
            // SAFETY: as above (leaf checked against the maximum extended leaf).
            .map(|leaf| unsafe { __cpuid(leaf) })
            .flat_map(|r| [r.eax, r.ebx, r.ecx, r.edx])
            .flat_map(|r| r.to_le_bytes())
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        String::new()
    };
    CpuId { name, vendor: String::from_utf8_lossy(&vendor).trim().to_string(), family, model, stepping }
}

/// What [`pick_with`] runs on: the machine's facts, injectable for tests.
pub struct Machine<'a> {
    /// Whether the CPU has the bf16 GEMM ([`kairos_kernels::probe::bf16_gemm_available`]).
    pub bf16_gemm: bool,
    /// The CPU.
    pub cpu: CpuId,
    /// Threads the kernels run on.
    pub threads: usize,
    /// Where the cache lives (`None`: no caching).
    pub cache_dir: Option<PathBuf>,
    /// The probe ([`kairos_kernels::probe::probe`]).
    pub probe: &'a dyn Fn() -> candle_core::Result<ProbeTimes>,
}

impl Machine<'static> {
    /// This machine.
    pub fn current() -> Self {
        Self {
            bf16_gemm: kairos_kernels::probe::bf16_gemm_available(),
            cpu: CpuId::current(),
            threads: candle_core::utils::get_num_threads(),
            cache_dir: cache_dir(),
            probe: &kairos_kernels::probe::probe,
        }
    }
}

/// `--dtype auto` on `device`, for this machine (prints nothing; see [`AutoDtype::summary`]).
pub fn pick(device: &Device) -> AutoDtype {
    if !device.is_cpu() {
        return AutoDtype { dtype: DType::F16, reason: AutoReason::Gpu };
    }
    pick_with(device, &Machine::current())
}

/// [`pick`] on a given [`Machine`].
pub fn pick_with(device: &Device, machine: &Machine<'_>) -> AutoDtype {
    if !device.is_cpu() {
        return AutoDtype { dtype: DType::F16, reason: AutoReason::Gpu };
    }
    if !machine.bf16_gemm {
        return AutoDtype { dtype: DType::F32, reason: AutoReason::NoBf16Gemm };
    }
    let key = CacheKey {
        cpu: machine.cpu.label(),
        vendor: machine.cpu.vendor.clone(),
        family: machine.cpu.family,
        model: machine.cpu.model,
        stepping: machine.cpu.stepping,
        kairos: env!("CARGO_PKG_VERSION").to_string(),
        threads: machine.threads,
        bf16_kernel: kairos_kernels::gemm_bf16::kernel_name().to_string(),
    };
    let cache_file = machine.cache_dir.as_ref().map(|d| d.join(CACHE_FILE));
    let mut file = cache_file.as_deref().map(read_cache).unwrap_or_default();
    let name = key.name();
    let probed = |times: ProbeTimes, cached: bool, cache_error: Option<String>| AutoDtype {
        dtype: times.faster(),
        reason: AutoReason::Probed(Probed {
            cpu: key.cpu.clone(),
            threads: key.threads,
            times,
            cached,
            cache_file: cache_file.clone(),
            cache_error,
        }),
    };
    if let Some(entry) = file.entries.get(&name).filter(|e| e.key == key && e.valid()) {
        return probed(ProbeTimes { f32_s: entry.f32_s, bf16_s: entry.bf16_s }, true, None);
    }
    let times = match (machine.probe)() {
        Ok(t) if t.f32_s.is_finite() && t.bf16_s.is_finite() => t,
        Ok(t) => {
            return AutoDtype {
                dtype: DType::F32,
                reason: AutoReason::ProbeFailed(format!("times f32 {} s, bf16 {} s", t.f32_s, t.bf16_s)),
            }
        }
        Err(e) => return AutoDtype { dtype: DType::F32, reason: AutoReason::ProbeFailed(e.to_string()) },
    };
    let entry = CacheEntry {
        key: key.clone(),
        f32_s: times.f32_s,
        bf16_s: times.bf16_s,
        dtype: times.faster().as_str().to_string(),
    };
    file.entries.insert(name, entry);
    let cache_error = match (&machine.cache_dir, &cache_file) {
        (Some(dir), Some(path)) => write_cache(dir, path, &file).err(),
        _ => None,
    };
    probed(times, false, cache_error)
}

/// What a cached probe applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    cpu: String,
    vendor: String,
    family: u32,
    model: u32,
    stepping: u32,
    kairos: String,
    threads: usize,
    /// The bf16 GEMM's kernel (`amx-bf16` or `avx512-bf16`: `KAIROS_AMX=off` changes the answer);
    /// empty in files written before it was recorded, so those entries are probed again.
    #[serde(default)]
    bf16_kernel: String,
}

impl CacheKey {
    /// The entry's name in the file.
    fn name(&self) -> String {
        format!(
            "{} | stepping {} | kairos {} | {} threads | {}",
            self.cpu, self.stepping, self.kairos, self.threads, self.bf16_kernel
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    #[serde(flatten)]
    key: CacheKey,
    f32_s: f64,
    bf16_s: f64,
    /// The faster one (for people reading the file; the times decide).
    dtype: String,
}

impl CacheEntry {
    fn valid(&self) -> bool {
        [self.f32_s, self.bf16_s].iter().all(|t| t.is_finite() && *t > 0.0)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    /// What the file is.
    #[serde(default)]
    about: String,
    #[serde(default)]
    entries: BTreeMap<String, CacheEntry>,
}

/// The cache, or an empty one if the file is missing, unreadable or not ours.
fn read_cache(path: &Path) -> CacheFile {
    std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

/// Writes the cache through a temporary file and a rename, so that a reader never sees half a
/// file.
fn write_cache(dir: &Path, path: &Path, file: &CacheFile) -> Result<(), String> {
    let about = "kairos --dtype auto: the f32/bf16 probe's times (seconds) per CPU, kairos version and \
                 thread count; delete this file to probe again";
    let file = CacheFile { about: about.to_string(), entries: file.entries.clone() };
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!("{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text + "\n").map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn cpu() -> CpuId {
        CpuId { name: "Test CPU 9000".into(), vendor: "AuthenticAMD".into(), family: 25, model: 17, stepping: 1 }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kairos-dtype-auto-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Runs `pick_with` on a machine whose probe returns `times` and counts its calls.
    fn pick(dir: Option<&Path>, bf16_gemm: bool, times: ProbeTimes, threads: usize, calls: &Cell<usize>) -> AutoDtype {
        let probe = || {
            calls.set(calls.get() + 1);
            Ok(times)
        };
        let machine = Machine { bf16_gemm, cpu: cpu(), threads, cache_dir: dir.map(Path::to_path_buf), probe: &probe };
        pick_with(&Device::Cpu, &machine)
    }

    const BF16_WINS: ProbeTimes = ProbeTimes { f32_s: 0.212, bf16_s: 0.171 };
    const F32_WINS: ProbeTimes = ProbeTimes { f32_s: 0.1, bf16_s: 0.3 };

    #[test]
    fn probe_result_round_trips_through_the_cache() {
        let dir = temp_dir("roundtrip");
        let calls = Cell::new(0);
        let first = pick(Some(&dir), true, BF16_WINS, 2, &calls);
        assert_eq!(first.dtype, DType::BF16);
        assert_eq!(calls.get(), 1);
        let AutoReason::Probed(p) = &first.reason else { panic!("{first:?}") };
        assert!(!p.cached && p.cache_error.is_none(), "{p:?}");
        assert!(first.summary().contains("bf16 0.171 s"), "{}", first.summary());
        assert!(first.summary().contains("cached in"), "{}", first.summary());

        // Second run: from the cache, no probe, same figures (even if the probe would now differ).
        let second = pick(Some(&dir), true, F32_WINS, 2, &calls);
        assert_eq!(calls.get(), 1, "the cached result is used");
        assert_eq!(second.dtype, DType::BF16);
        let AutoReason::Probed(p) = &second.reason else { panic!("{second:?}") };
        assert!(p.cached);
        assert_eq!(p.times, BF16_WINS);
        assert!(
            second.summary().starts_with("dtype auto: bf16 (cached probe on Test CPU 9000"),
            "{}",
            second.summary()
        );
        assert_eq!(second.to_json()["reason"], "cached-probe");

        // Another thread count is another entry: probed, and both kept.
        let other = pick(Some(&dir), true, F32_WINS, 4, &calls);
        assert_eq!((other.dtype, calls.get()), (DType::F32, 2));
        let text = std::fs::read_to_string(dir.join(CACHE_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["entries"].as_object().unwrap().len(), 2, "{text}");
        assert!(text.contains("\"f32_s\": 0.212"), "{text}");
        assert!(pick(Some(&dir), true, BF16_WINS, 4, &calls).dtype == DType::F32 && calls.get() == 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_foreign_cache_file_is_ignored_and_rewritten() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(CACHE_FILE);
        let bad: [&[u8]; 5] =
            [b"{ not json", b"", b"\xff\xfe\x00garbage", br#"{"entries": {"x": {"cpu": 3}}}"#, br#"[1, 2, 3]"#];
        for (i, contents) in bad.iter().enumerate() {
            std::fs::write(&file, contents).unwrap();
            let calls = Cell::new(0);
            let picked = pick(Some(&dir), true, F32_WINS, 2, &calls);
            assert_eq!((picked.dtype, calls.get()), (DType::F32, 1), "case {i}");
            // Rewritten: the next run reads it.
            let again = pick(Some(&dir), true, BF16_WINS, 2, &calls);
            assert_eq!((again.dtype, calls.get()), (DType::F32, 1), "case {i}: {again:?}");
        }
        // An entry with impossible times is probed again.
        let text = std::fs::read_to_string(&file).unwrap().replace("\"f32_s\": 0.1", "\"f32_s\": -1.0");
        assert!(text.contains("-1.0"), "{text}");
        std::fs::write(&file, text).unwrap();
        let calls = Cell::new(0);
        assert_eq!(pick(Some(&dir), true, BF16_WINS, 2, &calls).dtype, DType::BF16);
        assert_eq!(calls.get(), 1);
        // The cache path is a directory: not an error, just not cached.
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir_all(file.join("sub")).unwrap();
        let calls = Cell::new(0);
        let picked = pick(Some(&dir), true, BF16_WINS, 2, &calls);
        assert_eq!((picked.dtype, calls.get()), (DType::BF16, 1));
        let AutoReason::Probed(p) = &picked.reason else { panic!("{picked:?}") };
        assert!(p.cache_error.is_some(), "{p:?}");
        assert!(picked.summary().contains("not cached:"), "{}", picked.summary());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_bf16_gemm_f32_is_picked_without_probing() {
        let dir = temp_dir("nobf16");
        let calls = Cell::new(0);
        let picked = pick(Some(&dir), false, BF16_WINS, 2, &calls);
        assert_eq!(picked, AutoDtype { dtype: DType::F32, reason: AutoReason::NoBf16Gemm });
        assert_eq!(calls.get(), 0);
        assert!(!dir.exists(), "nothing cached");
        assert!(
            picked.summary().starts_with("dtype auto: f32 (no bf16 GEMM here (no AVX512-BF16"),
            "{}",
            picked.summary()
        );
    }

    #[test]
    fn no_cache_dir_still_probes() {
        let calls = Cell::new(0);
        let picked = pick(None, true, BF16_WINS, 2, &calls);
        assert_eq!((picked.dtype, calls.get()), (DType::BF16, 1));
        assert!(picked.summary().contains("not cached: no cache directory"), "{}", picked.summary());
    }

    #[test]
    fn a_failing_probe_falls_back_to_f32() {
        let probe = || Err(candle_core::Error::Msg("boom".into()));
        let machine = Machine { bf16_gemm: true, cpu: cpu(), threads: 2, cache_dir: None, probe: &probe };
        let picked = pick_with(&Device::Cpu, &machine);
        assert_eq!(picked.dtype, DType::F32);
        assert!(matches!(picked.reason, AutoReason::ProbeFailed(_)));
        let nan = || Ok(ProbeTimes { f32_s: f64::NAN, bf16_s: 0.1 });
        let machine = Machine { bf16_gemm: true, cpu: cpu(), threads: 2, cache_dir: None, probe: &nan };
        assert_eq!(pick_with(&Device::Cpu, &machine).dtype, DType::F32);
    }

    #[test]
    fn cache_dir_follows_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(
            cache_dir_from(env(&[("KAIROS_CACHE_DIR", "/k"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/k"))
        );
        assert_eq!(
            cache_dir_from(env(&[("KAIROS_CACHE_DIR", ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/kairos"))
        );
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/kairos"))
        );
        assert_eq!(cache_dir_from(env(&[])), None);
    }

    #[test]
    fn the_current_cpu_has_a_name_or_numbers() {
        let cpu = CpuId::current();
        assert!(!cpu.label().is_empty());
        #[cfg(target_arch = "x86_64")]
        assert!(cpu.family > 0 && !cpu.vendor.is_empty(), "{cpu:?}");
    }
}
