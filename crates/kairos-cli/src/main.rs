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
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Schedule(cmd) => commands::optimize::run_schedule(cmd),
        Cli::Toy(args) => commands::toy::run(args),
        Cli::Bench(args) => commands::bench::run(args),
        Cli::Generate(args) => commands::generate::run(*args),
        Cli::Inspect(args) => commands::inspect::run(args),
        Cli::VaeEval(args) => commands::vae_eval::run(args),
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
