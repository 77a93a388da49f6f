//! One module per subcommand.

pub mod bench;
pub mod generate;
pub mod inspect;
pub mod optimize;
pub mod schedule;
pub mod toy;
pub mod vae_eval;

use kairos_schedule::{Family, ModelSchedule, TablePrecision};

/// `--dtype`: the dtype network weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DtypeArg {
    /// float32 weights and compute.
    #[default]
    F32,
    /// float16 weights (half the memory); on the CPU widened to float32 per layer call.
    F16,
    /// bfloat16 weights (half the memory); on a CPU with AVX512-BF16, convolutions and
    /// linear layers multiply in bf16 with float32 sums (norms, softmax, residuals stay float32).
    Bf16,
}

impl DtypeArg {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DtypeArg::F32 => candle_core::DType::F32,
            DtypeArg::F16 => candle_core::DType::F16,
            DtypeArg::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// A family parsed from its name, with its training noise schedule in f64 (k-diffusion's
/// float64 convention; the CLI prints schedules, it does not reproduce a tool's float32 rounding).
fn family_schedule(name: &str) -> Result<(Family, ModelSchedule), kairos_schedule::ScheduleError> {
    let family = Family::from_name(name)?;
    Ok((family, family.noise_schedule(TablePrecision::F64)))
}
