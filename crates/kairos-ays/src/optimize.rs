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
    /// without a better judged score, and keeps the best-scoring schedule (among those
    /// [`Level::kept`] allows).
    pub judge_patience: usize,
}

/// A KLUB drop from the initial knots counts as real (more than the Monte Carlo noise) beyond
/// this many standard errors of the paired difference: about a 2.3 % one-sided false-alarm
/// rate per comparison.
pub const DROP_Z: f64 = 2.0;

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
    /// KLUB of the level's initial knots minus after, paired on the evaluation draw.
    pub drop: Estimate,
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
    /// The optimized knots (descending): those of sweep [`Self::kept`].
    pub knots: Vec<f64>,
    /// Which schedule the level keeps: 0 for the initial knots, j for sweep j (1-based). Never
    /// one whose KLUB is above the initial's, and never the initial knots once a sweep lowered
    /// the KLUB by more than [`DROP_Z`] standard errors; among the rest, the best-judged with a
    /// judge, else the last sweep (or, if its KLUB rose above the initial's, the lowest).
    pub kept: usize,
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

impl Level {
    /// Whether schedule `j` (0 = initial, j = sweep j) may be kept: see [`Self::kept`].
    fn eligible(&self, j: usize) -> bool {
        match j {
            0 => !self.sweeps.iter().any(|s| s.drop.value > DROP_Z * s.drop.stderr),
            j => self.sweeps[j - 1].drop.value >= 0.0,
        }
    }

    /// The best-judged eligible schedule so far; `None` without scores.
    fn best_judged(&self) -> Option<usize> {
        let score = |j: usize| if j == 0 { self.initial_score } else { self.sweeps[j - 1].score };
        (0..=self.sweeps.len())
            .filter(|&j| self.eligible(j))
            .filter_map(|j| score(j).map(|s| (j, s)))
            .fold(None, |best: Option<(usize, f64)>, (j, s)| match best {
                Some((_, b)) if b <= s => best,
                _ => Some((j, s)),
            })
            .map(|(j, _)| j)
    }

    /// Keeps schedule `chosen`, or without one the last sweep, unless its KLUB is above the
    /// initial's: then the lowest-KLUB schedule (largest drop; the initial's is 0).
    fn keep(&mut self, chosen: Option<usize>) {
        let last = self.sweeps.len();
        let j = chosen.unwrap_or_else(|| {
            if self.eligible(last) {
                return last;
            }
            (1..=last).fold(0, |b, j| {
                let drop = |j: usize| if j == 0 { 0.0 } else { self.sweeps[j - 1].drop.value };
                if drop(j) > drop(b) {
                    j
                } else {
                    b
                }
            })
        });
        (self.knots, self.klub) = match j {
            0 => (self.initial_knots.clone(), self.initial_klub),
            j => (self.sweeps[j - 1].knots.clone(), self.sweeps[j - 1].klub),
        };
        self.kept = j;
    }
}

/// The moves of [`Optimizer::refine`], as fractions of the log-distance to a neighbour: few,
/// since each candidate costs a judged sampler run.
pub const REFINE_MOVES: [f64; 2] = [0.05, 0.15];

/// The result of [`Optimizer::refine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refinement {
    /// The refined knots (descending); the given ones if no move was kept.
    pub knots: Vec<f64>,
    /// The score of the given knots and of the refined ones.
    pub initial_score: f64,
    pub score: f64,
    /// KLUB of the refined knots (the last level's evaluation draw).
    pub klub: Estimate,
    /// Sweeps run and moves kept.
    pub sweeps: usize,
    pub moves: usize,
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

const CHECKPOINT_FORMAT: &str = "kairos-ays-checkpoint-3";

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
    /// `max_sweeps`), and keeps the best-scoring knots among those [`Level::kept`] allows.
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
            kept: 0,
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
            let spans = [levels[idx].initial_knots.clone(), before, knots.clone()];
            let groups = self.klub.paired(&spans, &mut self.eval_rng(idx))?;
            let improvement = Estimate::difference(&groups[1], &groups[2]);
            let drop = Estimate::difference(&groups[0], &groups[2]);
            let klub = Estimate::of(&groups[2]);
            let score = self.judge_level(idx, &knots)?;
            let judged = score.is_some();
            let level = &mut levels[idx];
            level.sweeps.push(Sweep { moved, klub, improvement, drop, knots: knots.clone(), score });
            let best = level.best_judged();
            level.stop = if moved == 0 {
                Some(StopReason::NoMove)
            } else if best.is_some_and(|b| level.sweeps.len() - b >= self.options.judge_patience) {
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
            if level.stop.is_some() {
                level.keep(best);
            } else {
                // Still running: the next sweep starts from this one.
                (level.knots, level.klub, level.kept) = (knots, klub, level.sweeps.len());
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

    /// Judge-guided refinement of `knots` (descending): coordinate descent on `score` (lower
    /// is better) instead of the KLUB. Each interior knot tries the moves [`REFINE_MOVES`]
    /// toward either neighbour (as fractions of the log-distance); the best-scoring move is
    /// kept if it lowers the score and the schedule's KLUB stays below every `ceiling`
    /// schedule's by more than [`DROP_Z`] standard errors of the paired difference (on the
    /// last level's evaluation draw). Stops after a sweep without a move or `max_sweeps`.
    ///
    /// Why: the KLUB models a first-order step (the denoiser held over it); a solver that
    /// extrapolates the denoiser, such as DPM-Solver++(2M), is served worse by the KLUB's
    /// optimum than by the exponential schedule on the toy world, and no KLUB-type bound we
    /// tried ranks schedules as its samples do (README). Not checkpointed: it is short.
    pub fn refine(
        &mut self,
        knots: &[f64],
        score: &mut Judge<'_>,
        ceiling: &[Vec<f64>],
        max_sweeps: usize,
    ) -> Result<Refinement> {
        let level = self.options.subdivisions;
        let mut knots = knots.to_vec();
        let initial_score = score(&knots)?;
        let mut best = initial_score;
        let (mut sweeps, mut moves) = (0, 0);
        self.klub.set_options(self.options.eval)?;
        let mut klub = self.klub.schedule(&knots, &mut self.eval_rng(level))?;
        while sweeps < max_sweeps {
            sweeps += 1;
            let mut moved = 0;
            for i in 1..knots.len() - 1 {
                let (hi, t, lo) = (knots[i - 1], knots[i], knots[i + 1]);
                let mut scored = Vec::new();
                for f in REFINE_MOVES {
                    for toward in [hi, lo] {
                        let c = (t.ln() + f * (toward.ln() - t.ln())).exp();
                        if c < hi && c > lo {
                            let mut k = knots.clone();
                            k[i] = c;
                            scored.push((score(&k)?, k));
                        }
                    }
                }
                scored.sort_by(|a, b| a.0.total_cmp(&b.0));
                for (s, k) in scored.into_iter().take_while(|(s, _)| *s < best) {
                    if let Some(e) = self.below_ceiling(&k, ceiling, level)? {
                        (best, knots, klub) = (s, k, e);
                        moved += 1;
                        break;
                    }
                }
            }
            moves += moved;
            if moved == 0 {
                break;
            }
        }
        Ok(Refinement { knots, initial_score, score: best, klub, sweeps, moves })
    }

    /// The KLUB of `knots` if it is below every `ceiling` schedule's by more than [`DROP_Z`]
    /// standard errors of the paired difference (evaluation draw of `level`).
    fn below_ceiling(&mut self, knots: &[f64], ceiling: &[Vec<f64>], level: usize) -> Result<Option<Estimate>> {
        let mut spans = vec![knots.to_vec()];
        spans.extend(ceiling.iter().cloned());
        let groups = self.klub.paired(&spans, &mut self.eval_rng(level))?;
        let below = groups[1..].iter().all(|g| {
            let d = Estimate::difference(g, &groups[0]);
            d.value > DROP_Z * d.stderr
        });
        Ok(below.then(|| Estimate::of(&groups[0])))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A level whose sweeps have these (drop, score) pairs (drop's standard error 1); the
    /// initial knots score `initial_score`.
    fn level(initial_score: Option<f64>, sweeps: &[(f64, Option<f64>)]) -> Level {
        let e = |value: f64| Estimate { value, stderr: 1.0 };
        Level {
            steps: 1,
            initial_knots: vec![2.0, 1.0],
            knots: vec![2.0, 1.0],
            kept: 0,
            initial_klub: e(10.0),
            initial_score,
            klub: e(10.0),
            sweeps: sweeps
                .iter()
                .enumerate()
                .map(|(j, &(drop, score))| Sweep {
                    moved: 1,
                    klub: e(10.0 - drop),
                    improvement: e(0.0),
                    drop: e(drop),
                    knots: vec![2.0, 1.0 + j as f64 * 0.1],
                    score,
                })
                .collect(),
            stop: Some(StopReason::MaxSweeps),
        }
    }

    // The kept schedule: the initial one only while no sweep lowered the KLUB beyond DROP_Z
    // standard errors, never one whose KLUB rose above the initial's.
    #[test]
    fn kept_schedule_respects_the_klub() {
        // The judge prefers the start, and no drop is beyond the noise: the start stays.
        let mut l = level(Some(0.1), &[(1.0, Some(0.5)), (1.5, Some(0.4))]);
        assert_eq!(l.best_judged(), Some(0));
        // A real drop (3 standard errors) rules the start out: the best-judged sweep is kept.
        let mut l2 = level(Some(0.1), &[(3.0, Some(0.5)), (4.0, Some(0.6))]);
        assert_eq!(l2.best_judged(), Some(1));
        l2.keep(l2.best_judged());
        assert_eq!((l2.kept, l2.knots.clone(), l2.klub.value), (1, l2.sweeps[0].knots.clone(), 7.0));
        // A sweep whose KLUB rose above the initial's is never kept, however well judged.
        let l3 = level(Some(0.5), &[(3.0, Some(0.4)), (-0.5, Some(0.1))]);
        assert_eq!(l3.best_judged(), Some(1));
        // Without a judge: the last sweep, unless its KLUB rose; then the lowest KLUB.
        l.keep(None);
        assert_eq!(l.kept, 2);
        let mut l4 = level(None, &[(3.0, None), (5.0, None), (-0.1, None)]);
        l4.keep(None);
        assert_eq!(l4.kept, 2);
        let mut l5 = level(None, &[(-1.0, None), (-0.1, None)]);
        l5.keep(None);
        assert_eq!((l5.kept, l5.knots.clone()), (0, l5.initial_knots.clone()));
    }
}
