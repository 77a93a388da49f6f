//! What the network predicts, and the preconditioning that turns its output into the denoised
//! estimate: D(x, σ) = c_skip · x + c_out · F(c_in · x, c_noise).

use crate::ScheduleError;

/// The network's parameterisation (diffusers' `prediction_type`, plus EDM's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// Predicts the noise ε (diffusers `epsilon`): c_skip 1, c_out −σ.
    Epsilon,
    /// Predicts v (diffusers `v_prediction`; SD2-768-v, and SVD with σ_data): k-diffusion's
    /// `VDenoiser` / ComfyUI's `V_PREDICTION`.
    VPrediction,
    /// Predicts the clean sample x0 (diffusers `sample`): c_skip 0, c_out 1 (ComfyUI's `X0`).
    Sample,
    /// Karras et al.'s EDM preconditioning (k-diffusion `layers.Denoiser`, ComfyUI's `EDM`):
    /// as [`Prediction::VPrediction`] with the sign of c_out flipped.
    Edm,
}

/// The preconditioning coefficients at one noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalings {
    /// Weight of the input x in the denoised estimate.
    pub c_skip: f64,
    /// Weight of the network output in the denoised estimate.
    pub c_out: f64,
    /// Scale applied to x before the network (the VP ↔ VE conversion 1/sqrt(σ² + σ_data²)).
    pub c_in: f64,
}

impl Prediction {
    /// Accepted names: diffusers' `prediction_type` values and short forms.
    pub const NAMES: [&'static str; 8] =
        ["epsilon", "eps", "v_prediction", "v", "sample", "x0", "edm", "v_prediction_edm"];

    /// Parses a prediction type name (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        match name.to_ascii_lowercase().as_str() {
            "epsilon" | "eps" => Ok(Self::Epsilon),
            "v_prediction" | "v" | "v_prediction_edm" => Ok(Self::VPrediction),
            "sample" | "x0" => Ok(Self::Sample),
            "edm" => Ok(Self::Edm),
            _ => Err(ScheduleError::UnknownName {
                what: "prediction type",
                name: name.to_string(),
                accepted: Self::NAMES.join(", "),
            }),
        }
    }

    /// The scalings at `sigma`, exactly as k-diffusion's `get_scalings` (`DiscreteEpsDDPMDenoiser`,
    /// `VDenoiser`, `layers.Denoiser`) and ComfyUI's `calculate_input` / `calculate_denoised`.
    /// `sigma_data` is 1 for Stable Diffusion and SVD.
    pub fn scalings(self, sigma: f64, sigma_data: f64) -> Scalings {
        let sd2 = sigma_data * sigma_data;
        let s2 = sigma * sigma + sd2;
        let c_in = 1.0 / s2.sqrt();
        match self {
            Self::Epsilon => Scalings { c_skip: 1.0, c_out: -sigma, c_in },
            Self::VPrediction => Scalings { c_skip: sd2 / s2, c_out: -sigma * sigma_data / s2.sqrt(), c_in },
            Self::Edm => Scalings { c_skip: sd2 / s2, c_out: sigma * sigma_data / s2.sqrt(), c_in },
            Self::Sample => Scalings { c_skip: 0.0, c_out: 1.0, c_in },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_prediction_recovers_x0() {
        // x = x0 + σ ε, v = (ε - σ x0)/sqrt(σ²+1) in VE form (σ_data = 1): D must return x0.
        let (x0, eps, sigma) = (0.7, -1.3, 2.5_f64);
        let x = x0 + sigma * eps;
        let v = (eps - sigma * x0) / (sigma * sigma + 1.0).sqrt();
        let s = Prediction::VPrediction.scalings(sigma, 1.0);
        assert!((s.c_skip * x + s.c_out * v - x0).abs() < 1e-12);
        let s = Prediction::Epsilon.scalings(sigma, 1.0);
        assert!((s.c_skip * x + s.c_out * eps - x0).abs() < 1e-12);
    }

    #[test]
    fn unknown_prediction_lists_names() {
        let e = Prediction::from_name("flow").unwrap_err();
        assert!(e.to_string().contains("epsilon") && e.to_string().contains("v_prediction"), "{e}");
    }
}
