//! `kairos`: the command line.

mod commands;
mod plot;

use std::process::ExitCode;

use clap::Parser;

/// kairos: Stable Diffusion in fewer, cheaper steps.
#[derive(Parser)]
#[command(name = "kairos", version, about)]
enum Cli {
    /// Print (or plot) a model family's sigma schedule and the timesteps the network is fed.
    Schedule(commands::schedule::ScheduleArgs),
    /// Score samplers and schedules on a 2-D Gaussian mixture with an exact denoiser.
    Toy(commands::toy::ToyArgs),
    /// Reconstruct images through VAEs and report rFID, PSNR, SSIM and PSIM (LPIPS).
    VaeEval(commands::vae_eval::VaeEvalArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Schedule(args) => commands::schedule::run(args),
        Cli::Toy(args) => commands::toy::run(args),
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
