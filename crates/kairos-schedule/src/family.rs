//! Model families: their training noise schedule, default prediction type and AYS table.

use crate::noise::{DiscreteSchedule, EdmSchedule, ModelSchedule, TablePrecision};
use crate::{Prediction, ScheduleError};

/// A Stable Diffusion model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: scaled_linear betas, epsilon.
    Sd1,
    /// SD 2.x 512 base models: SD's betas, epsilon.
    Sd2Base,
    /// SD 2.x 768-v models: SD's betas, v-prediction.
    Sd2,
    /// SDXL: SD's betas, epsilon.
    Sdxl,
    /// Stable Video Diffusion: continuous EDM sigmas (0.002 → 700), v-prediction with σ_data 1.
    Svd,
}

/// Canonical name and accepted aliases (matched case-insensitively) per family.
const NAMES: &[(Family, &str, &[&str])] = &[
    (Family::Sd1, "sd1", &["sd15", "sd1.5", "sd-1.5", "sd14", "sd1.4", "sd_1.5"]),
    (Family::Sd2Base, "sd2-base", &["sd2_base", "sd2-512", "sd21-base", "sd2.1-base", "sd20-base"]),
    (Family::Sd2, "sd2", &["sd2-v", "sd2-768", "sd21", "sd2.1", "sd21-v", "sd2.1-v"]),
    (Family::Sdxl, "sdxl", &["sd-xl", "sd_xl", "xl"]),
    (Family::Svd, "svd", &["stable-video-diffusion", "svd-xt"]),
];

/// Which published Align Your Steps table a family uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AysModel {
    /// The SD 1.5 table (ComfyUI `SD1`).
    Sd1,
    /// The SDXL table.
    Sdxl,
    /// The Stable Video Diffusion table.
    Svd,
}

impl Family {
    /// Parses a family name (case-insensitive; aliases such as `sd15`, `sd21`, `xl`).
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        let lower = name.to_ascii_lowercase();
        NAMES
            .iter()
            .find(|(_, n, aliases)| *n == lower || aliases.contains(&lower.as_str()))
            .map(|(f, _, _)| *f)
            .ok_or_else(|| ScheduleError::UnknownName {
                what: "model family",
                name: name.to_string(),
                accepted: Self::names().join(", "),
            })
    }

    /// The canonical family names.
    pub fn names() -> Vec<&'static str> {
        NAMES.iter().map(|(_, n, _)| *n).collect()
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(f, _, _)| *f == self).map_or("", |(_, n, _)| n)
    }

    /// The family's training noise schedule; `precision` applies to the discrete table.
    pub fn noise_schedule(self, precision: TablePrecision) -> ModelSchedule {
        match self {
            Self::Sd1 | Self::Sd2Base | Self::Sd2 | Self::Sdxl => {
                ModelSchedule::Discrete(DiscreteSchedule::sd(precision))
            }
            Self::Svd => ModelSchedule::Edm(EdmSchedule::SVD),
        }
    }

    /// The default prediction type of the family's reference checkpoints.
    pub fn prediction(self) -> Prediction {
        match self {
            Self::Sd1 | Self::Sd2Base | Self::Sdxl => Prediction::Epsilon,
            Self::Sd2 | Self::Svd => Prediction::VPrediction,
        }
    }

    /// σ_data of the preconditioning (1 for every supported family).
    pub fn sigma_data(self) -> f64 {
        1.0
    }

    /// The Align Your Steps table published for this family, if any (none for SD2).
    pub fn ays_model(self) -> Option<AysModel> {
        match self {
            Self::Sd1 => Some(AysModel::Sd1),
            Self::Sdxl => Some(AysModel::Sdxl),
            Self::Svd => Some(AysModel::Svd),
            Self::Sd2Base | Self::Sd2 => None,
        }
    }

    /// Whether the family uses SD's scaled-linear sigma range (0.0292 → 14.61), which GITS's
    /// tables and A1111's AYS tables are computed for.
    pub fn is_sd_range(self) -> bool {
        !matches!(self, Self::Svd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse() {
        assert_eq!(Family::from_name("SD15").unwrap(), Family::Sd1);
        assert_eq!(Family::from_name("sdxl").unwrap(), Family::Sdxl);
        assert_eq!(Family::from_name("sd2.1").unwrap(), Family::Sd2);
        assert_eq!(Family::from_name("sd2-base").unwrap().prediction(), Prediction::Epsilon);
        assert_eq!(Family::Sd2.prediction(), Prediction::VPrediction);
        for f in Family::names() {
            assert_eq!(Family::from_name(f).unwrap().name(), f);
        }
    }

    #[test]
    fn unknown_family_lists_names() {
        let e = Family::from_name("sd3").unwrap_err();
        assert!(e.to_string().contains("sd1, sd2-base, sd2, sdxl, svd"), "{e}");
    }
}
