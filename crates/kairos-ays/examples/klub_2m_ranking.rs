//! Does a KLUB rank schedules as DPM-Solver++(2M)'s samples do? For each schedule (a name such
//! as `karras`, or a schedule file), on a toy preset with the exact denoiser: the paper's KLUB
//! (Euler stand-in) and the 2M-stand-in KLUB ([`KlubEstimator::paired_solvers`], paired on one
//! draw), and the judged KL of euler, euler_ancestral and dpmpp_2m samples (10,000 points ×
//! 8 seeds, the comparison seeds of `kairos schedule optimize`).
//!
//! `--variants` adds plain Monte Carlo estimates of both bounds with other couplings of x_t, x_b
//! and x_c (the paper's forward process; the shared noise path x0 + σ z; the probability-flow
//! ODE through x_b) and integrand weights 1/t³, 1/t², 1/t.
//!
//! ```sh
//! cargo run --release -p kairos-ays --example klub_2m_ranking -- 8x8 karras exponential ays.json
//! ```

use kairos_ays::{knots_of, sampler_sigmas, toy_quality, Estimate, KlubEstimator, KlubOptions, Span};
use kairos_sampler::Sampler;
use kairos_schedule::{Family, ScheduleKind, TablePrecision};
use kairos_toy::{ExactDenoiser, GaussianMixture, Preset, Stream, ToyRng, ToyWorld};

type Points = Vec<[f64; 2]>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variants = args.iter().any(|a| a == "--variants");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--variants").collect();
    let Some((preset, schedules)) = args.split_first() else {
        eprintln!("usage: klub_2m_ranking PRESET SCHEDULE... [--variants] (SCHEDULE: a name or a schedule file)");
        std::process::exit(2);
    };
    let mixture = Preset::from_name(preset).expect("a toy preset").mixture();
    let family = Family::Sd1;
    let model = family.noise_schedule(TablePrecision::F64);
    let rows: Vec<(String, Vec<f64>)> = schedules
        .iter()
        .map(|s| match ScheduleKind::from_name(s) {
            Ok(kind) => (s.to_string(), knots_of(&kind, &model, family, 10).unwrap()),
            Err(_) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s).unwrap()).unwrap();
                (s.to_string(), v["knots"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            }
        })
        .collect();
    let (mut data, mut denoiser) = (mixture.clone(), ExactDenoiser::new(&mixture));
    let opts = KlubOptions { t_samples: 8192, batch: 4, c: 0.5 };
    let mut est = KlubEstimator::new(&mut denoiser, &mut data, opts).unwrap();
    let spans: Vec<Span> = rows.iter().map(|r| Span::whole(&r.1)).collect();
    let groups = est.paired_solvers(&spans, &mut ToyRng::new(3, Stream::Estimator)).unwrap();
    let world = ToyWorld::new(mixture.clone());
    let mut judged = ExactDenoiser::new(&mixture);
    let seeds: Vec<u64> = (0..8).collect();
    println!("{:<32} {:>14} {:>14}   judged KL: euler / euler_ancestral / dpmpp_2m", "schedule", "KLUB", "2M KLUB");
    for ((name, knots), g) in rows.iter().zip(&groups) {
        let (e, m) = (Estimate::of(&g.euler), Estimate::of(&g.dpmpp_2m));
        let kl: Vec<String> = ["euler", "euler_ancestral", "dpmpp_2m"]
            .iter()
            .map(|s| {
                let s = Sampler::from_name(s).unwrap();
                let q = toy_quality(&world, &mut judged, &s, &sampler_sigmas(knots), 10_000, &seeds).unwrap();
                format!("{:.4}", q.kl.mean)
            })
            .collect();
        println!(
            "{name:<32} {:>14} {:>14}   {}",
            format!("{:.3}±{:.3}", e.value, e.stderr),
            format!("{:.3}±{:.3}", m.value, m.stderr),
            kl.join(" / ")
        );
        if variants {
            for coupling in [Coupling::Forward, Coupling::SharedNoise, Coupling::FlowOde] {
                for power in [3, 2, 1] {
                    let (e, m) = plain_bounds(&mixture, knots, coupling, power);
                    println!("    {coupling:?}, weight 1/t^{power}: KLUB {e:.4}, 2M KLUB {m:.4}");
                }
            }
        }
    }
}

/// How x_t, x_b and x_c (t < b < c) are drawn together.
#[derive(Clone, Copy, Debug)]
enum Coupling {
    /// The paper's: x_t = x0 + t z, then x_b, x_c by forward noising (independent increments).
    Forward,
    /// One noise for all: x_s = x0 + s z.
    SharedNoise,
    /// x_b = x0 + b z, x_t and x_c on the probability-flow ODE through it (24 Heun steps).
    FlowOde,
}

/// The PF-ODE dx/dσ = (x − D(x, σ)) / σ from `from` to `to`, Heun steps uniform in ln σ.
fn flow(m: &GaussianMixture, x: &[[f64; 2]], from: f64, to: f64) -> Points {
    const STEPS: usize = 24;
    let (l0, l1) = (from.ln(), to.ln());
    let slope = |x: &[[f64; 2]], s: f64| -> Points {
        m.denoise_points(x, s).iter().zip(x).map(|(d, p)| [(p[0] - d[0]) / s, (p[1] - d[1]) / s]).collect()
    };
    let mut x = x.to_vec();
    for i in 0..STEPS {
        let s0 = (l0 + (l1 - l0) * i as f64 / STEPS as f64).exp();
        let s1 = (l0 + (l1 - l0) * (i + 1) as f64 / STEPS as f64).exp();
        let k0 = slope(&x, s0);
        let euler: Points =
            x.iter().zip(&k0).map(|(p, k)| [p[0] + (s1 - s0) * k[0], p[1] + (s1 - s0) * k[1]]).collect();
        let k1 = slope(&euler, s1);
        for ((p, a), b) in x.iter_mut().zip(&k0).zip(&k1) {
            p[0] += 0.5 * (s1 - s0) * (a[0] + b[0]);
            p[1] += 0.5 * (s1 - s0) * (a[1] + b[1]);
        }
    }
    x
}

/// Plain Monte Carlo (t log-uniform per interval, 600 × 8 draws; 150 × 8 for the ODE) of
/// Σ_steps ∫ ||D(x_t, t) − D̂||² / t^power dt for the Euler and the 2M stand-in.
fn plain_bounds(m: &GaussianMixture, knots: &[f64], coupling: Coupling, power: i32) -> (f64, f64) {
    let (nt, nb) = (if matches!(coupling, Coupling::FlowOde) { 150 } else { 600 }, 8);
    let n = knots.len() - 1;
    let (mut euler, mut dpmpp_2m) = (0.0, 0.0);
    for i in 0..n {
        let (b, a) = (knots[i], knots[i + 1]);
        let c = (i >= 1 && i + 1 < n).then(|| knots[i - 1]);
        let mut rng = ToyRng::new(1000 + i as u64, Stream::Reference);
        for _ in 0..nt {
            let t = (a.ln() + rng.uniform() * (b.ln() - a.ln())).exp();
            let x0 = m.sample(nb, &mut rng);
            let mut noise = || -> Points { (0..nb).map(|_| [rng.normal(), rng.normal()]).collect() };
            let (z1, z2, z3) = (noise(), noise(), noise());
            let shift = |x: &Points, z: &Points, s: f64| -> Points {
                x.iter().zip(z).map(|(p, z)| [p[0] + s * z[0], p[1] + s * z[1]]).collect()
            };
            let (x_t, x_b, x_c) = match coupling {
                Coupling::Forward => {
                    let x_t = shift(&x0, &z1, t);
                    let x_b = shift(&x_t, &z2, (b * b - t * t).sqrt());
                    let x_c = c.map(|c| shift(&x_b, &z3, (c * c - b * b).sqrt()));
                    (x_t, x_b, x_c)
                }
                Coupling::SharedNoise => (shift(&x0, &z1, t), shift(&x0, &z1, b), c.map(|c| shift(&x0, &z1, c))),
                Coupling::FlowOde => {
                    let x_b = shift(&x0, &z1, b);
                    (flow(m, &x_b, b, t), x_b.clone(), c.map(|c| flow(m, &x_b, b, c)))
                }
            };
            let (d_t, d_b) = (m.denoise_points(&x_t, t), m.denoise_points(&x_b, b));
            let d_c = x_c.as_ref().zip(c).map(|(x, c)| m.denoise_points(x, c));
            let w = c.map_or(0.0, |c| (b / t).ln() / (c / b).ln());
            // ∫ f dt over [a, b] = ln(b/a) · E[f(t) t] for t log-uniform.
            let jacobian = (b / a).ln() * t / t.powi(power) / (nt * nb) as f64;
            for r in 0..nb {
                let hat = match &d_c {
                    Some(d_c) => [d_b[r][0] + w * (d_b[r][0] - d_c[r][0]), d_b[r][1] + w * (d_b[r][1] - d_c[r][1])],
                    None => d_b[r],
                };
                let sq = |h: [f64; 2]| (d_t[r][0] - h[0]).powi(2) + (d_t[r][1] - h[1]).powi(2);
                euler += sq(d_b[r]) * jacobian;
                dpmpp_2m += sq(hat) * jacobian;
            }
        }
    }
    (euler, dpmpp_2m)
}
