//! Published sigma tables (data, not code; `#[rustfmt::skip]` keeps their rows as published). Each
//! constant names the file it was transcribed from.

pub(crate) mod gits;

/// Align Your Steps 10-step noise levels at full precision (11 values, descending): ComfyUI
/// `comfy_extras/nodes_align_your_steps.py` `NOISE_LEVELS["SD1"]` (Comfy-Org/ComfyUI@a125cd84).
/// These are sigma(t) of the SD scaled-linear table at the paper's integer timesteps.
#[rustfmt::skip]
pub(crate) const AYS_SD1: [f64; 11] = [
    14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
    0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582,
];
/// As [`AYS_SD1`], `NOISE_LEVELS["SDXL"]`.
#[rustfmt::skip]
pub(crate) const AYS_SDXL: [f64; 11] = [
    14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
    0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
];
/// As [`AYS_SD1`], `NOISE_LEVELS["SVD"]` (the paper's 3-4 significant digits).
#[rustfmt::skip]
pub(crate) const AYS_SVD: [f64; 11] = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002];

/// A1111's 3-decimal Align Your Steps tables: AUTOMATIC1111 / Forge `modules/sd_schedulers.py`
/// `get_align_your_steps_sigmas` (lllyasviel/stable-diffusion-webui-forge@dfdcbab6); also Forge's
/// "Align Your Steps 11".
#[rustfmt::skip]
pub(crate) const AYS_A1111_SD1: [f64; 11] =
    [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029];
/// As [`AYS_A1111_SD1`], the SDXL branch.
#[rustfmt::skip]
pub(crate) const AYS_A1111_SDXL: [f64; 11] =
    [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029];

/// Forge's "Align Your Steps 32" (`ays_32_sigmas`, same file as [`AYS_A1111_SD1`]), SD1 branch.
#[rustfmt::skip]
pub(crate) const AYS32_SD1: [f64; 32] = [
    14.615, 11.23951352, 8.64363081, 6.64729424, 5.57250862, 4.71648546, 3.99196065, 3.5195609, 3.13490466,
    2.79228788, 2.48773628, 2.21663865, 1.97508351, 1.7793172, 1.61475335, 1.46540953, 1.314849, 1.16642497,
    1.03475547, 0.91573744, 0.80748169, 0.71202361, 0.621739, 0.53065202, 0.4529096, 0.37491455, 0.27461819,
    0.2011529, 0.14105873, 0.06682881, 0.03166121, 0.015,
];
/// As [`AYS32_SD1`], the SDXL branch.
#[rustfmt::skip]
pub(crate) const AYS32_SDXL: [f64; 32] = [
    14.615, 11.1491618, 8.50522127, 6.48827151, 5.43707402, 4.60398619, 3.89854704, 3.27407457, 2.74396527,
    2.29968659, 1.95448514, 1.67108715, 1.42878152, 1.23181009, 1.06789649, 0.92579443, 0.80290886, 0.69660121,
    0.60436903, 0.52852552, 0.46773344, 0.41393379, 0.36258186, 0.31008517, 0.26518925, 0.22326461, 0.17653877,
    0.13959192, 0.10587381, 0.05519369, 0.02877334, 0.015,
];

/// Forge's "Align Your Steps GITS" (`get_align_your_steps_sigmas_GITS`, same file), SD1 branch. Its
/// origin is undocumented; it matches none of ComfyUI's GITS rows.
#[rustfmt::skip]
pub(crate) const AYS_GITS_FORGE_SD1: [f64; 11] =
    [14.615, 4.617, 2.507, 1.236, 0.702, 0.402, 0.240, 0.156, 0.104, 0.094, 0.029];
/// As [`AYS_GITS_FORGE_SD1`], the SDXL branch.
#[rustfmt::skip]
pub(crate) const AYS_GITS_FORGE_SDXL: [f64; 11] =
    [14.615, 4.734, 2.567, 1.529, 0.987, 0.652, 0.418, 0.268, 0.179, 0.127, 0.029];
