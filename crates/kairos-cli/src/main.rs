//! `kairos`: the command line.

mod commands;
mod plot;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Schedule(cmd) => commands::optimize::run_schedule(cmd),
        Cli::Toy(args) => commands::toy::run(args),
    }
}
