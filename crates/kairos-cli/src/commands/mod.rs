//! One module per subcommand.

pub mod bench;
pub mod generate;
pub mod inspect;
pub mod optimize;
pub mod schedule;
pub mod toy;
pub mod vae_eval;

use kairos_schedule::{Family, ModelSchedule, TablePrecision};

/// A family parsed from its name, with its training noise schedule in f64 (k-diffusion's
/// float64 convention; the CLI prints schedules, it does not reproduce a tool's float32 rounding).
fn family_schedule(name: &str) -> Result<(Family, ModelSchedule), kairos_schedule::ScheduleError> {
    let family = Family::from_name(name)?;
    Ok((family, family.noise_schedule(TablePrecision::F64)))
}
