//! Schedule files (`kairos optimize` JSON, `--sigmas-file`) and `--sigmas`/`--timesteps` lists.
//! Must hold: no panic; an accepted file yields valid sigmas for any step count, and a list
//! builds valid sigmas (or an error) as `--sigmas` and as `--timesteps` on SD1 and SDXL, whole
//! and for img2img's denoise.
#![no_main]
#[path = "common.rs"]
mod common;

use kairos_ays::ScheduleFile;
use kairos_schedule::{Family, ScheduleKind, Sigmas, TablePrecision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A list as `--sigmas 14.6,7.0,...,0` gives it.
    if let Ok(text) = std::str::from_utf8(data) {
        let values: Result<Vec<f64>, _> = text.split(',').map(|v| v.trim().parse::<f64>()).collect();
        if let Ok(values) = values {
            let _ = Sigmas::new(values.clone());
            for family in [Family::Sd1, Family::Sdxl] {
                let model = family.noise_schedule(TablePrecision::DiffusersF32);
                for kind in [ScheduleKind::Sigmas(values.clone()), ScheduleKind::Timesteps(values.clone())] {
                    for denoise in [1.0, 0.5, 0.01] {
                        let _ = kind.build(&model, family, 10, denoise);
                    }
                }
            }
        }
    }
    let path = common::as_file("schedule.json", data);
    if let Ok(file) = ScheduleFile::read(&path) {
        for steps in [None, Some(1), Some(7), Some(50)] {
            let _ = file.sigmas_for(steps);
        }
    }
});
