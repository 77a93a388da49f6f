//! Schedule files (`kairos optimize` JSON, `--sigmas-file`) and `--sigmas`/`--timesteps` lists.
//! Must hold: no panic; an accepted file yields valid sigmas for any step count.
#![no_main]
#[path = "common.rs"]
mod common;

use kairos_ays::ScheduleFile;
use kairos_schedule::Sigmas;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A list as `--sigmas 14.6,7.0,...,0` gives it.
    if let Ok(text) = std::str::from_utf8(data) {
        let values: Result<Vec<f64>, _> = text.split(',').map(|v| v.trim().parse::<f64>()).collect();
        if let Ok(values) = values {
            let _ = Sigmas::new(values);
        }
    }
    let path = common::as_file("schedule.json", data);
    if let Ok(file) = ScheduleFile::read(&path) {
        for steps in [None, Some(1), Some(7), Some(50)] {
            let _ = file.sigmas_for(steps);
        }
    }
});
