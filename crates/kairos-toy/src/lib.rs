//! A toy world with an exact denoiser: data from a 2-D Gaussian mixture, for which D(x, sigma) is
//! analytic, and a sample-quality figure against the true distribution.
