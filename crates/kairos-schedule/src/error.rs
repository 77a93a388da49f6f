//! Errors of the schedule crate.

/// Everything that can go wrong when building a noise schedule or a sigma schedule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A name (schedule, family, prediction type, beta schedule) that is not known.
    #[error("unknown {what} `{name}`; accepted: {accepted}")]
    UnknownName { what: &'static str, name: String, accepted: String },
    /// `steps` was 0.
    #[error("steps must be at least 1, got 0")]
    ZeroSteps,
    /// `denoise` outside (0, 1].
    #[error("denoise must be in (0, 1], got {denoise}")]
    DenoiseOutOfRange { denoise: f64 },
    /// `denoise` so small that the rule keeps no step (`kept` is the rule's count, e.g.
    /// `round(steps * denoise)` or `floor(steps * denoise)`).
    #[error(
        "denoise {denoise} with {steps} steps keeps no step ({kept} = 0); use denoise >= {min_denoise} or more steps"
    )]
    DenoiseKeepsNoStep { steps: usize, denoise: f64, min_denoise: f64, kept: &'static str },
    /// A sigma list with fewer than 2 values (a schedule needs at least one step).
    #[error("a sigma schedule needs at least 2 values (1 step), got {len}")]
    TooFewSigmas { len: usize },
    /// A sigma that is NaN, infinite or negative.
    #[error("sigma[{index}] = {value} is not a finite non-negative number")]
    InvalidSigma { index: usize, value: f64 },
    /// A sigma list that is not strictly decreasing.
    #[error("sigmas must be strictly decreasing, but sigma[{index}] = {value} >= sigma[{prev_index}] = {prev}", prev_index = index - 1)]
    NotDecreasing { index: usize, prev: f64, value: f64 },
    /// A user timestep list that is not finite, not strictly decreasing, or outside the training range.
    #[error(
        "timestep[{index}] = {value} is invalid: timesteps must be finite, strictly decreasing and within [0, {max_t}]"
    )]
    InvalidTimestep { index: usize, value: f64, max_t: f64 },
    /// A schedule that indexes the training table used with a continuous-time model.
    #[error("schedule `{schedule}` picks sigmas from a discrete training table; the model's noise schedule is continuous (use karras, exponential, polyexponential, kl_optimal, normal, sgm_uniform, linear_quadratic, ays or a sigma list)")]
    NeedsDiscreteSchedule { schedule: &'static str },
    /// A tabulated schedule (AYS, GITS) with no table for the model family.
    #[error("schedule `{schedule}` has no table for model family `{family}`; tables exist for: {accepted}")]
    NoTableForFamily { schedule: &'static str, family: &'static str, accepted: &'static str },
    /// GITS coefficient outside the tabulated grid.
    #[error("GITS coeff must be one of 0.80, 0.85, ..., 1.50 (step 0.05), got {coeff}")]
    GitsCoeffOutOfRange { coeff: f64 },
    /// A schedule option out of range.
    #[error("invalid option for schedule `{schedule}`: {message}")]
    InvalidOption { schedule: &'static str, message: String },
}
