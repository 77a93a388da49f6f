//! The judge of sample quality, KL(samples ‖ data) (`GaussianMixture::kl_from`): its entropy
//! estimate against closed forms, and its ranking of deliberately blurred and collapsed sample
//! sets against true ones, beside the sliced Wasserstein distance and the NLL, each blind to
//! one of the two.

use kairos_toy::{knn_entropy, Component, GaussianMixture, Preset, Stream, ToyRng, ToyWorld, KNN_K};

// Closed-form entropies: N(0, Σ) has 1 + ln 2π + ½ ln det Σ, the uniform square of side a has
// 2 ln a. Tolerance 0.03 nats: with 20k points the estimator's standard deviation is about
// 0.01 (Var ln ρ_k is O(1) per point), and its bias for these smooth densities is below that.
#[test]
fn knn_entropy_matches_closed_forms() {
    let mut rng = ToyRng::new(11, Stream::Reference);
    let n = 20_000;
    let cov = [[0.5, 0.3], [0.3, 0.4]];
    let gaussian = GaussianMixture::new(vec![Component { weight: 1.0, mean: [0.3, -1.0], cov }]).unwrap();
    let points = gaussian.sample(n, &mut rng);
    let want = 1.0 + (2.0 * std::f64::consts::PI).ln() + 0.5 * (cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0]).ln();
    let got = knn_entropy(&points, KNN_K);
    assert!((got - want).abs() < 0.03, "gaussian: {got} vs {want}");
    let a = 3.0;
    let square: Vec<[f64; 2]> = (0..n).map(|_| [a * rng.uniform(), a * rng.uniform()]).collect();
    // The square's edges bias the k-NN balls (they reach outside the support near the border);
    // the bias is O(k / sqrt(n)) ~ 0.03 here, so this case gets 0.06.
    let (got, want) = (knn_entropy(&square, KNN_K), 2.0 * a.ln());
    assert!((got - want).abs() < 0.06, "square: {got} vs {want}");
    // Atoms: repeated points have entropy -inf; non-finite points and too few points give NaN.
    assert_eq!(knn_entropy(&[[1.0, 2.0]; 10], KNN_K), f64::NEG_INFINITY);
    assert!(knn_entropy(&[[0.0, 0.0], [f64::NAN, 1.0], [1.0, 1.0], [2.0, 0.5], [3.0, 3.0], [4.0, 1.0]], 2).is_nan());
    assert!(knn_entropy(&points[..KNN_K], KNN_K).is_nan());
}

/// Each point moved to `shrink` of its distance from its nearest component mean (0: onto it).
fn collapse(m: &GaussianMixture, points: &[[f64; 2]], shrink: f64) -> Vec<[f64; 2]> {
    let d2 = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
    points
        .iter()
        .map(|&p| {
            let mu = m.components().iter().map(|c| c.mean).min_by(|a, b| d2(*a, p).total_cmp(&d2(*b, p))).unwrap();
            [mu[0] + shrink * (p[0] - mu[0]), mu[1] + shrink * (p[1] - mu[1])]
        })
        .collect()
}

// On the 8x8 grid with 2000 points (measured figures in brackets): four true sample sets score
// KL 0.04-0.07, SW1 0.019-0.030, NLL 2.01-2.08. True samples blurred by noise of 0.75 component
// std (NLL 2.44, the kind of blur a coarse time-uniform schedule gives) keep an SW1 inside the
// true sets' range (0.022) while the KL more than doubles (0.157). Collapsed ones, at the mode
// centres or pulled to 0.6 of their distance from them, score an NLL far *below* the true sets'
// (1.11, 1.46) while the KL rises to inf and 0.49; the partly collapsed set's SW1 (0.023) is
// inside the true range too. So the KL ranks both below every true set, where SW1 misses the
// blur and the partial collapse, and the NLL rewards the collapse.
#[test]
fn kl_sees_blur_and_collapse_where_sw1_and_nll_do_not() {
    let m = Preset::Grid8x8.mixture();
    let world = ToyWorld::new(m.clone());
    let n = 2000;
    let truth: Vec<_> = (1..=4).map(|s| world.score(&m.sample(n, &mut ToyRng::new(s, Stream::TrueSample)))).collect();
    let max = |f: fn(&kairos_toy::Figures) -> f64| truth.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
    let min = |f: fn(&kairos_toy::Figures) -> f64| truth.iter().map(f).fold(f64::INFINITY, f64::min);
    let (kl_true, sw_true, nll_true) = (max(|f| f.kl), max(|f| f.sliced_wasserstein), min(|f| f.nll));
    eprintln!("true sets: {truth:?}");

    let base = m.sample(n, &mut ToyRng::new(5, Stream::TrueSample));
    let std = m.components()[0].cov[0][0].sqrt();
    let mut noise = ToyRng::new(6, Stream::TrueSample);
    let blurred: Vec<[f64; 2]> =
        base.iter().map(|p| [p[0] + 0.75 * std * noise.normal(), p[1] + 0.75 * std * noise.normal()]).collect();
    let b = world.score(&blurred);
    eprintln!("blurred: {b:?}");
    assert!(b.kl > 1.5 * kl_true, "KL must rank the blurred set below the true ones: {b:?}, true up to {kl_true}");
    assert!(b.sliced_wasserstein < sw_true, "the case needs SW1 blind to the blur: {b:?}, true up to {sw_true}");

    for shrink in [0.0, 0.6] {
        let c = world.score(&collapse(&m, &base, shrink));
        eprintln!("collapsed to {shrink}: {c:?}");
        assert!(c.kl > 5.0 * kl_true, "KL must rank the collapsed set below the true ones: {c:?}");
        assert!(c.nll < nll_true - 0.5, "the case needs an NLL that rewards collapse: {c:?}, true from {nll_true}");
        if shrink > 0.0 {
            assert!(c.sliced_wasserstein < sw_true, "the case needs SW1 blind to partial collapse: {c:?}");
        }
    }
}

// True samples of an anisotropic, unequal-weight mixture score a KL near 0 (measured 0.01 at
// 10k points; 0.05 bounds the estimator's small-sample bias and noise).
#[test]
fn kl_of_true_samples_is_near_zero_on_an_anisotropic_mixture() {
    let m = GaussianMixture::new(vec![
        Component { weight: 0.6, mean: [-0.8, 0.1], cov: [[0.2, 0.15], [0.15, 0.14]] },
        Component { weight: 0.4, mean: [0.9, -0.4], cov: [[0.03, 0.0], [0.0, 0.3]] },
    ])
    .unwrap();
    let kl = m.kl_from(&m.sample(10_000, &mut ToyRng::new(2, Stream::TrueSample)));
    assert!(kl.abs() < 0.05, "{kl}");
}
