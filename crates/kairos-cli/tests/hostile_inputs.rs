//! Inputs that declare more than they hold are refused before kairos allocates for them, and the
//! `kairos` process that refuses them stays under 200 MiB peak RSS (issue 16, item 2).

use std::path::PathBuf;
use std::process::Command;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG of a few dozen bytes whose IHDR declares `w` x `h` RGB pixels (its IDAT is one empty
/// deflate block).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// Runs `kairos` with `args`; its stderr, whether it succeeded and its peak RSS in MiB.
fn run_measured(args: &[&str]) -> (String, bool, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .env("KAIROS_DTYPE", "f32")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the kairos binary runs");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("piped");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    let mut status = 0;
    // SAFETY: plain out-parameters; the pid is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (text, ok, usage.ru_maxrss as u64 / 1024)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn init_image_declaring_100000_squared_pixels_is_refused_from_its_header() {
    let dir = temp_dir("hostile-png");
    let png = dir.join("huge.png");
    let bytes = png_claiming(100_000, 100_000);
    assert!(bytes.len() < 100);
    std::fs::write(&png, bytes).unwrap();
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/sd1_tiny.safetensors");
    let out = dir.join("out.png");
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--norm-num-groups",
        "4",
        "--clip-head-dim",
        "8",
        "--steps",
        "2",
        "--init-image",
        png.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    let (stderr, ok, peak) = run_measured(&args);
    assert!(!ok, "accepted: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("declares 100000x100000 pixels (10000000000), over the limit of 67108864"), "{stderr}");
    assert!(stderr.contains("--max-image-pixels"), "{stderr}");
    assert!(peak < 200, "peak RSS {peak} MiB");

    // The limit is configurable: a 64x64 claim over a limit of 1000 pixels.
    let small = dir.join("small.png");
    std::fs::write(&small, png_claiming(64, 64)).unwrap();
    let mut args = args.to_vec();
    args[10] = small.to_str().unwrap();
    args.extend(["--max-image-pixels", "1000"]);
    let (stderr, ok, _) = run_measured(&args);
    assert!(!ok && stderr.contains("declares 64x64 pixels (4096), over the limit of 1000"), "{stderr}");
}

/// Linux passes no argument over 128 KiB, so the CLI sees at most ~10⁵ characters; the 10⁶ case
/// is kairos-models' `hostile_files` test of the same limit.
#[test]
fn a_hundred_thousand_character_prompt_is_refused() {
    let dir = temp_dir("hostile-prompt");
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kairos-pipeline/tests/fixtures/sd1_tiny.safetensors");
    let out = dir.join("out.png");
    let prompt = "a ".repeat(50_000);
    let (stderr, ok, peak) = run_measured(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--norm-num-groups",
        "4",
        "--clip-head-dim",
        "8",
        "-W",
        "32",
        "-H",
        "24",
        "--steps",
        "2",
        "--prompt",
        &prompt,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "accepted");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("100000 characters, above the limit of 20000"), "{stderr}");
    assert!(peak < 200, "peak RSS {peak} MiB");
}
