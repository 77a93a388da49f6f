//! Parity of the k-diffusion samplers with k-diffusion 0.1.1.post1's `sample_*`, run in float64
//! with the analytic denoiser of `common` (fixture: `tools/fixtures/samplers_kdiffusion.py`), plus
//! the registry's and the sampling loop's error paths.

mod common;

use kairos_sampler::{Sampler, SamplerError};

#[test]
fn from_name_accepts_aliases_case_insensitively() {
    for (alias, name) in [("Euler a", "euler_ancestral"), ("euler_a", "euler_ancestral"), ("DPM++ 2M", "dpmpp_2m"),
        ("dpm++2m", "dpmpp_2m"), ("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun"), ("lms", "lms"), ("LMS", "lms"),
        ("DPM2 a", "dpm_2_ancestral"), ("  heun ", "heun")]
    {
        let s = Sampler::from_name(alias).unwrap_or_else(|e| panic!("{alias}: {e}"));
        assert_eq!(s.name(), name, "alias {alias}");
    }
}

#[test]
fn from_name_rejects_unknown_names_listing_accepted_ones() {
    match Sampler::from_name("eulerr") {
        Err(SamplerError::UnknownSampler { name, accepted }) => {
            assert_eq!(name, "eulerr");
            for n in Sampler::names() {
                assert!(accepted.split(", ").any(|a| a == n), "accepted list lacks {n}: {accepted}");
            }
        }
        other => panic!("expected UnknownSampler, got {other:?}"),
    }
}
