//! `kairos`: the command line.

mod commands;
mod plot;

use std::process::ExitCode;

use clap::Parser;

/// kairos: Stable Diffusion in fewer, cheaper steps.
#[derive(Parser)]
#[command(name = "kairos", version, about)]
enum Cli {
    /// Print (or plot) a model family's sigma schedule and the timesteps the network is fed;
    /// `schedule optimize` optimizes an Align Your Steps schedule.
    Schedule(commands::optimize::ScheduleCommand),
    /// Score samplers and schedules on a 2-D Gaussian mixture with an exact denoiser.
    Toy(commands::toy::ToyArgs),
    /// Time the full-size SD1.5 text encoder, UNet and VAE decoder on the CPU (random weights).
    Bench(commands::bench::BenchArgs),
    /// Generate images from a prompt (txt2img, or img2img with --init-image) into PNG files with A1111 infotext.
    // Boxed: its many options would make every other variant as large.
    Generate(Box<commands::generate::GenerateArgs>),
    /// Show a checkpoint's family, prediction type, dtypes and parameter counts.
    Inspect(commands::inspect::InspectArgs),
    /// Reconstruct images through VAEs and report rFID, PSNR, SSIM and PSIM (LPIPS).
    VaeEval(commands::vae_eval::VaeEvalArgs),
    /// Serve the A1111 API, kairos' /v1 endpoints and a web UI over HTTP.
    Serve(commands::serve::ServeArgs),
}

/// Makes glibc keep freed memory in the process instead of handing each large block back to the
/// kernel. A UNet step allocates and frees hundreds of activations of tens of MB; by default every
/// one above glibc's mmap threshold (at most 32 MiB) is a fresh mapping whose pages the kernel
/// faults in and zeroes one by one. Served from the heap instead, they reuse warm memory: in three
/// alternating runs the VAE decode at 512² took 5.58–5.63 s instead of 5.90–6.19 s and the UNet
/// (b2, 512²) 5.98–6.24 s instead of 6.17–6.27 s, with the same peak RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let result = match Cli::parse() {
        Cli::Schedule(cmd) => commands::optimize::run_schedule(cmd),
        Cli::Toy(args) => commands::toy::run(args),
        Cli::Bench(args) => commands::bench::run(args),
        Cli::Generate(args) => commands::generate::run(*args),
        Cli::Inspect(args) => commands::inspect::run(args),
        Cli::VaeEval(args) => commands::vae_eval::run(args),
        Cli::Serve(args) => commands::serve::run(args),
    };
    // Print the message chain only: a user error is not a crash, so no backtrace even when
    // RUST_BACKTRACE is set.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
