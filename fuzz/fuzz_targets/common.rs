//! Shared by the targets: the input as a file (the loaders take paths).

#![allow(dead_code)]

use std::path::PathBuf;

/// Writes `bytes` to a per-process file named `name` in /dev/shm (or the temp dir) and returns
/// its path; each run overwrites the last.
pub fn as_file(name: &str, bytes: &[u8]) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("kairos-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// libfuzzer-sys installs a panic hook that aborts, so even a panic kairos catches (candle's
/// unpickler and the image decoders panic on some malformed input; kairos turns those into
/// errors with `catch_unwind`) would count as a crash. Restores the default hook: a panic that
/// escapes still reaches libfuzzer-sys's own `catch_unwind` and aborts as a finding.
pub fn count_only_uncaught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| drop(std::panic::take_hook()));
}
