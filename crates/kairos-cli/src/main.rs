//! `kairos`: the command line.

use clap::Parser;

/// kairos: Stable Diffusion in fewer, cheaper steps.
#[derive(Parser)]
#[command(name = "kairos", version, about)]
enum Cli {}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {}
}
