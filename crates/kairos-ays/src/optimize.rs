//! Coordinate descent on the KLUB (paper Alg. 1), with early stopping, the 10 → 20 → 40
//! subdivision hierarchy, seeded draws and a resumable JSON checkpoint.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::klub::{Estimate, KlubEstimator, KlubOptions};
use crate::knots::subdivide;
use crate::rng::rng_for;
use crate::{AysError, Result};

/// Options of an optimisation run. Two runs with equal options, denoiser and data give equal
/// schedules (all draws derive from `seed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizeOptions {
    /// Number of subdivision rounds after the first level (paper: 2, for 10 → 20 → 40).
    pub subdivisions: usize,
    /// Candidate moves of a point, as fractions of the log-distance to a neighbour: each f > 0
    /// gives one candidate toward the upper and one toward the lower neighbour, and the current
    /// point is always a candidate (paper: 11 candidates, spacing unspecified). Every f must be
    /// in (0, 1), so a candidate stays strictly between its neighbours.
    pub moves: Vec<f64>,
    /// Sweep limit per level.
    pub max_sweeps: usize,
    /// Early stopping of the first level (paper §3.3; subdivided levels run without it): the
    /// level ends when a sweep lowers the paired KLUB estimate by less than this many standard
    /// errors of the difference. `None` runs to no-move or `max_sweeps`.
    pub stop_z: Option<f64>,
    /// Sizes of each candidate comparison.
    pub search: KlubOptions,
    /// Sizes of the per-sweep evaluation of the whole schedule (the stopping test and the
    /// reported objective); one fixed draw per level, so sweeps are compared on the same samples.
    pub eval: KlubOptions,
    /// Seed of every draw.
    pub seed: u64,
    /// With a judge ([`Optimizer::with_judge`]): the first level stops after this many sweeps
    /// without a better judged score, and keeps the best-scoring schedule.
    pub judge_patience: usize,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        Self {
            subdivisions: 0,
            moves: vec![0.02, 0.06, 0.15, 0.3, 0.5],
            max_sweeps: 30,
            stop_z: Some(2.0),
            search: KlubOptions::default(),
            eval: KlubOptions { t_samples: 4096, ..KlubOptions::default() },
            seed: 0,
            judge_patience: 3,
        }
    }
}

impl OptimizeOptions {
    fn validate(&self) -> Result<()> {
        if self.moves.is_empty() || self.moves.iter().any(|f| !(*f > 0.0 && *f < 1.0)) {
            return Err(AysError::option(
                "moves",
                format!("{:?}", self.moves),
                "a non-empty list of fractions in (0, 1)",
            ));
        }
        if self.max_sweeps == 0 {
            return Err(AysError::option("max_sweeps", 0, "at least 1"));
        }
        if self.judge_patience == 0 {
            return Err(AysError::option("judge_patience", 0, "at least 1"));
        }
        if let Some(z) = self.stop_z.filter(|z| !(z.is_finite() && *z >= 0.0)) {
            return Err(AysError::option("stop_z", z, "a finite number of standard errors >= 0, or none"));
        }
        Ok(())
    }
}

/// Why a level stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A sweep moved no point (paper Alg. 1's "until no change").
    NoMove,
    /// A sweep's improvement was within `stop_z` standard errors (early stopping).
    WithinNoise,
    /// The sweep limit.
    MaxSweeps,
    /// `judge_patience` sweeps in a row did not improve the judged sample quality.
    JudgedQuality,
}

/// One sweep's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// Points that moved.
    pub moved: usize,
    /// The KLUB after the sweep (evaluation draw).
    pub klub: Estimate,
    /// KLUB before minus after, paired on the evaluation draw.
    pub improvement: Estimate,
    /// The knots after the sweep.
    pub knots: Vec<f64>,
    /// The judge's score of those knots (first level, with a judge).
    pub score: Option<f64>,
}

/// The result of one level of the hierarchy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// Number of steps (intervals).
    pub steps: usize,
    /// The knots the level started from (descending).
    pub initial_knots: Vec<f64>,
    /// The optimized knots (descending).
    pub knots: Vec<f64>,
    /// KLUB of the initial knots (evaluation draw).
    pub initial_klub: Estimate,
    /// The judge's score of the initial knots (first level, with a judge).
    pub initial_score: Option<f64>,
    /// KLUB of the optimized knots (evaluation draw).
    pub klub: Estimate,
    /// The sweeps run.
    pub sweeps: Vec<Sweep>,
    /// Why the level stopped; `None` while it runs.
    pub stop: Option<StopReason>,
}

/// What the progress callback sees before each coordinate update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Level index (0 = the first level) and number of levels.
    pub level: usize,
    pub levels: usize,
    /// Steps of the level.
    pub steps: usize,
    /// Sweep index (0-based) and the sweep limit.
    pub sweep: usize,
    pub max_sweeps: usize,
    /// Coordinate index within the sweep (0-based) and the number of free coordinates.
    pub coordinate: usize,
    pub coordinates: usize,
    /// The last evaluated KLUB of the level (the initial one before the first sweep).
    pub klub: Estimate,
}

/// The progress callback: return `ControlFlow::Break(())` to cancel.
pub type OnProgress<'p> = dyn FnMut(&Progress) -> ControlFlow<()> + 'p;

/// A sample-quality score of a schedule's knots, lower is better: the paper stops the first
/// level by "perceptual image quality metrics or even manual inspection" (§3.3), since the
/// KLUB-optimal schedule is not the quality-optimal one (App. A.3).
pub type Judge<'p> = dyn FnMut(&[f64]) -> Result<f64> + 'p;

/// What a checkpoint holds: the options and model it belongs to, and every level so far (the
/// last possibly unfinished).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    format: String,
    model: String,
    options: OptimizeOptions,
    levels: Vec<Level>,
}

const CHECKPOINT_FORMAT: &str = "kairos-ays-checkpoint-2";

/// The optimizer: a KLUB estimator plus options, an optional checkpoint file and an optional
/// progress callback (the library draws no progress bar itself).
pub struct Optimizer<'a, 'p> {
    klub: KlubEstimator<'a>,
    options: OptimizeOptions,
    model: String,
    checkpoint: Option<PathBuf>,
    on_progress: Option<&'p mut OnProgress<'p>>,
    judge: Option<&'p mut Judge<'p>>,
}

impl<'a, 'p> Optimizer<'a, 'p> {
    /// An optimizer over `klub` (whose options are replaced per phase). `model` names the
    /// denoiser and data, for the checkpoint and the schedule file.
    pub fn new(klub: KlubEstimator<'a>, options: OptimizeOptions, model: impl Into<String>) -> Result<Self> {
        options.validate()?;
        Ok(Self { klub, options, model: model.into(), checkpoint: None, on_progress: None, judge: None })
    }

    /// Saves the state to `path` after every sweep, and resumes from it if it exists (it must
    /// have been written with the same options and model).
    pub fn with_checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Calls `f` before each coordinate update; `ControlFlow::Break` cancels the run with
    /// [`AysError::Cancelled`] (the checkpoint keeps the last finished sweep).
    pub fn with_progress(mut self, f: &'p mut OnProgress<'p>) -> Self {
        self.on_progress = Some(f);
        self
    }

    /// Early stopping of the first level by `judge` instead of the KLUB's noise (`stop_z`): the
    /// level runs until `judge_patience` sweeps bring no better score (or no move, or
    /// `max_sweeps`), and keeps the best-scoring knots, the initial ones included.
    pub fn with_judge(mut self, judge: &'p mut Judge<'p>) -> Self {
        self.judge = Some(judge);
        self
    }

    /// The options.
    pub fn options(&self) -> &OptimizeOptions {
        &self.options
    }

    /// Optimizes from `initial` (descending knots, σ_max … σ_min) and then through the
    /// subdivision levels; returns one [`Level`] per level, the last the finest.
    pub fn run(&mut self, initial: &[f64]) -> Result<Vec<Level>> {
        let mut levels = self.load_checkpoint()?;
        let total = self.options.subdivisions + 1;
        while levels.len() < total || levels.last().is_some_and(|l| l.stop.is_none()) {
            let idx = match levels.last() {
                Some(l) if l.stop.is_none() => levels.len() - 1,
                Some(l) => {
                    let knots = subdivide(&l.knots);
                    levels.push(self.start_level(levels.len(), knots)?);
                    levels.len() - 1
                }
                None => {
                    levels.push(self.start_level(0, initial.to_vec())?);
                    0
                }
            };
            self.run_level(&mut levels, idx, total)?;
        }
        Ok(levels)
    }

    fn start_level(&mut self, index: usize, knots: Vec<f64>) -> Result<Level> {
        self.klub.set_options(self.options.eval)?;
        let initial_klub = self.klub.schedule(&knots, &mut self.eval_rng(index))?;
        let initial_score = self.judge_level(index, &knots)?;
        Ok(Level {
            steps: knots.len() - 1,
            initial_knots: knots.clone(),
            knots,
            initial_klub,
            initial_score,
            klub: initial_klub,
            sweeps: Vec::new(),
            stop: None,
        })
    }

    /// The judge's score of a first-level schedule; `None` without a judge or on later levels.
    fn judge_level(&mut self, level: usize, knots: &[f64]) -> Result<Option<f64>> {
        match (level, self.judge.as_mut()) {
            (0, Some(judge)) => judge(knots).map(Some),
            _ => Ok(None),
        }
    }

    fn eval_rng(&self, level: usize) -> kairos_toy::ToyRng {
        rng_for(self.options.seed, &[level as u64, u64::MAX])
    }

    /// Runs sweeps of level `idx` until it stops, checkpointing after each.
    fn run_level(&mut self, levels: &mut [Level], idx: usize, total: usize) -> Result<()> {
        let n = levels[idx].steps;
        // The first level frees every interior point; later levels only the new odd ones.
        let free: Vec<usize> = if idx == 0 { (1..n).collect() } else { (1..n).step_by(2).collect() };
        while levels[idx].stop.is_none() {
            let sweep = levels[idx].sweeps.len();
            let before = levels[idx].knots.clone();
            let mut knots = before.clone();
            let mut moved = 0;
            self.klub.set_options(self.options.search)?;
            for (c, &i) in free.iter().enumerate() {
                if let Some(cb) = self.on_progress.as_mut() {
                    let flow = cb(&Progress {
                        level: idx,
                        levels: total,
                        steps: n,
                        sweep,
                        max_sweeps: self.options.max_sweeps,
                        coordinate: c,
                        coordinates: free.len(),
                        klub: levels[idx].klub,
                    });
                    if flow.is_break() {
                        return Err(AysError::Cancelled);
                    }
                }
                let best = self.best_candidate(&knots, i, &[idx as u64, sweep as u64, i as u64])?;
                if best != knots[i] {
                    knots[i] = best;
                    moved += 1;
                }
            }
            self.klub.set_options(self.options.eval)?;
            let groups = self.klub.paired(&[before, knots.clone()], &mut self.eval_rng(idx))?;
            let improvement = Estimate::difference(&groups[0], &groups[1]);
            let klub = Estimate::of(&groups[1]);
            let score = self.judge_level(idx, &knots)?;
            let judged = score.is_some();
            let level = &mut levels[idx];
            level.sweeps.push(Sweep { moved, klub, improvement, knots: knots.clone(), score });
            level.knots = knots;
            level.klub = klub;
            // Sweeps since the best score (the initial knots count as sweep "0").
            let scores: Vec<f64> =
                level.initial_score.into_iter().chain(level.sweeps.iter().filter_map(|s| s.score)).collect();
            let best = (1..scores.len()).fold(0, |b, j| if scores[j] < scores[b] { j } else { b });
            level.stop = if moved == 0 {
                Some(StopReason::NoMove)
            } else if judged && scores.len() - 1 - best >= self.options.judge_patience {
                Some(StopReason::JudgedQuality)
            } else if !judged
                && idx == 0
                && self.options.stop_z.is_some_and(|z| improvement.value < z * improvement.stderr)
            {
                Some(StopReason::WithinNoise)
            } else if level.sweeps.len() >= self.options.max_sweeps {
                Some(StopReason::MaxSweeps)
            } else {
                None
            };
            if judged && level.stop.is_some() {
                let (knots, klub) = match best {
                    0 => (level.initial_knots.clone(), level.initial_klub),
                    b => (level.sweeps[b - 1].knots.clone(), level.sweeps[b - 1].klub),
                };
                level.knots = knots;
                level.klub = klub;
            }
            self.save_checkpoint(levels)?;
        }
        Ok(())
    }

    /// The best candidate for knot `i` between its neighbours, all candidates compared on one
    /// draw (common random numbers); the current value wins ties.
    fn best_candidate(&mut self, knots: &[f64], i: usize, tags: &[u64]) -> Result<f64> {
        let (hi, t, lo) = (knots[i - 1], knots[i], knots[i + 1]);
        let mut candidates = vec![t];
        for f in &self.options.moves {
            candidates.push((t.ln() + f * (hi.ln() - t.ln())).exp());
            candidates.push((t.ln() + f * (lo.ln() - t.ln())).exp());
        }
        // Rounding can put a candidate on a neighbour when they are within a few ulps.
        candidates.retain(|c| *c < hi && *c > lo);
        let spans: Vec<Vec<f64>> = candidates.iter().map(|&c| vec![hi, c, lo]).collect();
        let groups = self.klub.paired(&spans, &mut rng_for(self.options.seed, tags))?;
        let means: Vec<f64> = groups.iter().map(|g| Estimate::of(g).value).collect();
        let best = (1..means.len()).fold(0, |b, j| if means[j] < means[b] { j } else { b });
        Ok(candidates[best])
    }

    fn load_checkpoint(&self) -> Result<Vec<Level>> {
        let Some(path) = &self.checkpoint else { return Ok(Vec::new()) };
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(path).map_err(|source| AysError::Io { path: path.clone(), source })?;
        let cp: Checkpoint =
            serde_json::from_str(&text).map_err(|source| AysError::Json { path: path.clone(), source })?;
        let mismatch = |field: &str| AysError::CheckpointMismatch { path: path.clone(), field: field.to_string() };
        if cp.format != CHECKPOINT_FORMAT {
            return Err(mismatch("format"));
        }
        if cp.model != self.model {
            return Err(mismatch("model"));
        }
        if cp.options != self.options {
            return Err(mismatch("options"));
        }
        Ok(cp.levels)
    }

    fn save_checkpoint(&self, levels: &[Level]) -> Result<()> {
        let Some(path) = &self.checkpoint else { return Ok(()) };
        let cp = Checkpoint {
            format: CHECKPOINT_FORMAT.to_string(),
            model: self.model.clone(),
            options: self.options.clone(),
            levels: levels.to_vec(),
        };
        write_json_atomic(path, &cp)
    }
}

/// Writes `value` as pretty JSON to a temporary sibling, then renames it over `path`, so an
/// interrupted write never leaves a truncated file.
pub(crate) fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|source| AysError::Json { path: path.to_path_buf(), source })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|source| AysError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| AysError::Io { path: path.to_path_buf(), source })
}
