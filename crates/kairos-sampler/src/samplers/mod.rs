//! The sampler registry: names as in k-diffusion / ComfyUI, A1111 and stable-diffusion.cpp
//! display names as aliases, typed options, and dispatch to one function per sampler file.

mod common;
mod ddim;
mod dpm_2;
mod dpmpp_2m;
mod dpmpp_2m_sde;
mod dpmpp_2s_ancestral;
mod dpmpp_3m_sde;
mod dpmpp_sde;
mod er_sde;
mod euler;
mod euler_ancestral;
mod heun;
mod ipndm;
mod lcm;
mod lms;
mod res_multistep;
mod tcd;
mod uni_pc;

pub use common::{ancestral_step, to_d};

use candle_core::Tensor;

use crate::{Result, SampleCtx, SamplerError};

/// Options of the samplers with Karras et al.'s "churn" (k-diffusion's `s_churn`, `s_tmin`,
/// `s_tmax`, `s_noise`): `euler`, `heun`, `dpm_2`. The defaults turn churn off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChurnOptions {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for ChurnOptions {
    fn default() -> Self {
        Self { s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0 }
    }
}

/// Options of ancestral and SDE samplers: `eta` scales the injected noise (0 = deterministic),
/// `s_noise` multiplies the noise draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AncestralOptions {
    pub eta: f64,
    pub s_noise: f64,
}

impl Default for AncestralOptions {
    fn default() -> Self {
        Self { eta: 1.0, s_noise: 1.0 }
    }
}

/// `dpmpp_sde` options: k-diffusion's `r` is the relative step size of the intermediate point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmppSdeOptions {
    pub eta: f64,
    pub s_noise: f64,
    pub r: f64,
}

impl Default for DpmppSdeOptions {
    fn default() -> Self {
        Self { eta: 1.0, s_noise: 1.0, r: 0.5 }
    }
}

/// The second-order correction of `dpmpp_2m_sde`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SdeSolverType {
    #[default]
    Midpoint,
    Heun,
}

/// `dpmpp_2m_sde` options.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Dpmpp2mSdeOptions {
    pub noise: AncestralOptions,
    pub solver_type: SdeSolverType,
}

/// `lms` options: the linear multistep order (k-diffusion default 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmsOptions {
    pub order: usize,
}

impl Default for LmsOptions {
    fn default() -> Self {
        Self { order: 4 }
    }
}

/// `tcd` options: `gamma` is the TCD paper's stochasticity (diffusers' `eta`, default 0.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcdOptions {
    pub gamma: f64,
}

impl Default for TcdOptions {
    fn default() -> Self {
        Self { gamma: 0.3 }
    }
}

/// UniPC's B(h) variant (ComfyUI `uni_pc` = bh1, `uni_pc_bh2` = bh2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniPcVariant {
    #[default]
    Bh1,
    Bh2,
}

/// `er_sde` options (ComfyUI's `sample_er_sde`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErSdeOptions {
    pub s_noise: f64,
    pub max_stage: usize,
}

impl Default for ErSdeOptions {
    fn default() -> Self {
        Self { s_noise: 1.0, max_stage: 3 }
    }
}

/// A sampler with its options. Construct from a name with [`Sampler::from_name`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    Euler(ChurnOptions),
    EulerAncestral(AncestralOptions),
    Heun(ChurnOptions),
    Dpm2(ChurnOptions),
    Dpm2Ancestral(AncestralOptions),
    Dpmpp2sAncestral(AncestralOptions),
    DpmppSde(DpmppSdeOptions),
    Dpmpp2m,
    Dpmpp2mSde(Dpmpp2mSdeOptions),
    Dpmpp3mSde(AncestralOptions),
    Lms(LmsOptions),
    /// DDIM as diffusers' `DDIMScheduler` with `eta` (0 = deterministic DDIM).
    Ddim(AncestralOptions),
    Lcm,
    Tcd(TcdOptions),
    UniPc(UniPcVariant),
    Ipndm,
    IpndmV,
    ResMultistep,
    ErSde(ErSdeOptions),
    EulerCfgPp,
    EulerAncestralCfgPp(AncestralOptions),
}

/// One registry row: canonical name, aliases, and the sampler with default options.
struct Entry {
    name: &'static str,
    aliases: &'static [&'static str],
    make: fn() -> Sampler,
}

/// Canonical names (k-diffusion / ComfyUI) and the A1111 / stable-diffusion.cpp spellings accepted
/// for them. Aliases are matched case-insensitively.
const REGISTRY: &[Entry] = &[
    Entry { name: "euler", aliases: &["Euler"], make: || Sampler::Euler(ChurnOptions::default()) },
    Entry {
        name: "euler_ancestral",
        aliases: &["Euler a", "euler_a"],
        make: || Sampler::EulerAncestral(AncestralOptions::default()),
    },
    Entry { name: "heun", aliases: &["Heun"], make: || Sampler::Heun(ChurnOptions::default()) },
    Entry { name: "dpm_2", aliases: &["DPM2", "dpm2"], make: || Sampler::Dpm2(ChurnOptions::default()) },
    Entry {
        name: "dpm_2_ancestral",
        aliases: &["DPM2 a", "dpm2_a"],
        make: || Sampler::Dpm2Ancestral(AncestralOptions::default()),
    },
    Entry {
        name: "dpmpp_2s_ancestral",
        aliases: &["DPM++ 2S a", "dpm++2s_a"],
        make: || Sampler::Dpmpp2sAncestral(AncestralOptions::default()),
    },
    Entry { name: "dpmpp_sde", aliases: &["DPM++ SDE"], make: || Sampler::DpmppSde(DpmppSdeOptions::default()) },
    Entry { name: "dpmpp_2m", aliases: &["DPM++ 2M", "dpm++2m"], make: || Sampler::Dpmpp2m },
    Entry {
        name: "dpmpp_2m_sde",
        aliases: &["DPM++ 2M SDE"],
        make: || Sampler::Dpmpp2mSde(Dpmpp2mSdeOptions::default()),
    },
    Entry {
        name: "dpmpp_2m_sde_heun",
        aliases: &["DPM++ 2M SDE Heun"],
        make: || {
            Sampler::Dpmpp2mSde(Dpmpp2mSdeOptions {
                noise: AncestralOptions::default(),
                solver_type: SdeSolverType::Heun,
            })
        },
    },
    Entry {
        name: "dpmpp_3m_sde",
        aliases: &["DPM++ 3M SDE"],
        make: || Sampler::Dpmpp3mSde(AncestralOptions::default()),
    },
    Entry { name: "lms", aliases: &["LMS"], make: || Sampler::Lms(LmsOptions::default()) },
    Entry { name: "ddim", aliases: &["DDIM"], make: || Sampler::Ddim(AncestralOptions { eta: 0.0, s_noise: 1.0 }) },
    Entry { name: "lcm", aliases: &["LCM"], make: || Sampler::Lcm },
    Entry { name: "tcd", aliases: &["TCD"], make: || Sampler::Tcd(TcdOptions::default()) },
    Entry { name: "uni_pc", aliases: &["UniPC"], make: || Sampler::UniPc(UniPcVariant::Bh1) },
    Entry { name: "uni_pc_bh2", aliases: &[], make: || Sampler::UniPc(UniPcVariant::Bh2) },
    Entry { name: "ipndm", aliases: &[], make: || Sampler::Ipndm },
    Entry { name: "ipndm_v", aliases: &[], make: || Sampler::IpndmV },
    Entry { name: "res_multistep", aliases: &[], make: || Sampler::ResMultistep },
    Entry { name: "er_sde", aliases: &[], make: || Sampler::ErSde(ErSdeOptions::default()) },
    Entry { name: "euler_cfg_pp", aliases: &[], make: || Sampler::EulerCfgPp },
    Entry {
        name: "euler_ancestral_cfg_pp",
        aliases: &["euler_a_cfg_pp"],
        make: || Sampler::EulerAncestralCfgPp(AncestralOptions::default()),
    },
];

impl Sampler {
    /// The canonical names of all samplers, in registry order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        REGISTRY.iter().map(|e| e.name)
    }

    /// The sampler called `name` (canonical or alias, case-insensitive) with default options.
    pub fn from_name(name: &str) -> Result<Self> {
        let wanted = name.trim();
        REGISTRY
            .iter()
            .find(|e| e.name == wanted || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(wanted)))
            .or_else(|| REGISTRY.iter().find(|e| e.name.eq_ignore_ascii_case(wanted)))
            .map(|e| (e.make)())
            .ok_or_else(|| SamplerError::UnknownSampler {
                name: name.to_string(),
                accepted: Self::names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Euler(_) => "euler",
            Sampler::EulerAncestral(_) => "euler_ancestral",
            Sampler::Heun(_) => "heun",
            Sampler::Dpm2(_) => "dpm_2",
            Sampler::Dpm2Ancestral(_) => "dpm_2_ancestral",
            Sampler::Dpmpp2sAncestral(_) => "dpmpp_2s_ancestral",
            Sampler::DpmppSde(_) => "dpmpp_sde",
            Sampler::Dpmpp2m => "dpmpp_2m",
            Sampler::Dpmpp2mSde(o) if o.solver_type == SdeSolverType::Heun => "dpmpp_2m_sde_heun",
            Sampler::Dpmpp2mSde(_) => "dpmpp_2m_sde",
            Sampler::Dpmpp3mSde(_) => "dpmpp_3m_sde",
            Sampler::Lms(_) => "lms",
            Sampler::Ddim(_) => "ddim",
            Sampler::Lcm => "lcm",
            Sampler::Tcd(_) => "tcd",
            Sampler::UniPc(UniPcVariant::Bh1) => "uni_pc",
            Sampler::UniPc(UniPcVariant::Bh2) => "uni_pc_bh2",
            Sampler::Ipndm => "ipndm",
            Sampler::IpndmV => "ipndm_v",
            Sampler::ResMultistep => "res_multistep",
            Sampler::ErSde(_) => "er_sde",
            Sampler::EulerCfgPp => "euler_cfg_pp",
            Sampler::EulerAncestralCfgPp(_) => "euler_ancestral_cfg_pp",
        }
    }

    /// Whether the sampler reads the unconditional prediction (CFG++), so the guider must keep
    /// the unconditional branch even at guidance scale 1.
    pub fn needs_uncond(&self) -> bool {
        matches!(self, Sampler::EulerCfgPp | Sampler::EulerAncestralCfgPp(_))
    }

    /// Runs the sampler from `x` (at noise level `sigmas[0]`) down the descending `sigmas`.
    pub fn sample(&self, ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        common::check_sigmas(sigmas)?;
        match self {
            Sampler::Euler(o) => euler::sample(ctx, x, sigmas, o),
            Sampler::EulerAncestral(o) => euler_ancestral::sample(ctx, x, sigmas, o),
            Sampler::Heun(o) => heun::sample(ctx, x, sigmas, o),
            Sampler::Dpm2(o) => dpm_2::sample(ctx, x, sigmas, o),
            Sampler::Dpm2Ancestral(o) => dpm_2::sample_ancestral(ctx, x, sigmas, o),
            Sampler::Dpmpp2sAncestral(o) => dpmpp_2s_ancestral::sample(ctx, x, sigmas, o),
            Sampler::DpmppSde(o) => dpmpp_sde::sample(ctx, x, sigmas, o),
            Sampler::Dpmpp2m => dpmpp_2m::sample(ctx, x, sigmas),
            Sampler::Dpmpp2mSde(o) => dpmpp_2m_sde::sample(ctx, x, sigmas, o),
            Sampler::Dpmpp3mSde(o) => dpmpp_3m_sde::sample(ctx, x, sigmas, o),
            Sampler::Lms(o) => lms::sample(ctx, x, sigmas, o),
            Sampler::Ddim(o) => ddim::sample(ctx, x, sigmas, o),
            Sampler::Lcm => lcm::sample(ctx, x, sigmas),
            Sampler::Tcd(o) => tcd::sample(ctx, x, sigmas, o),
            Sampler::UniPc(v) => uni_pc::sample(ctx, x, sigmas, *v),
            Sampler::Ipndm => ipndm::sample(ctx, x, sigmas),
            Sampler::IpndmV => ipndm::sample_variable_step(ctx, x, sigmas),
            Sampler::ResMultistep => res_multistep::sample(ctx, x, sigmas),
            Sampler::ErSde(o) => er_sde::sample(ctx, x, sigmas, o),
            Sampler::EulerCfgPp => euler::sample_cfg_pp(ctx, x, sigmas),
            Sampler::EulerAncestralCfgPp(o) => euler_ancestral::sample_cfg_pp(ctx, x, sigmas, o),
        }
    }
}
