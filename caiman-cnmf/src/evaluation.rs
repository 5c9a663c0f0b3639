//! Event exceptionality and trace SNR — the trace half of CaImAn's component evaluation.
//!
//! Reproduces, from `caiman/components_evaluation.py` (CaImAn 1.12.1):
//! * `compute_event_exceptionality(traces, robust_std, N, sigma_factor)`
//!   ([`compute_event_exceptionality`]): per trace the half-sample mode `md`, the noise level
//!   `sd_r = √(Σ ff²/#(ff > 0))` of the downward deviations `ff = max(md − x, 0)`, the
//!   log-probabilities `log Φ(−(x − md)/(σ·sd_r))`, their moving `N`-sample sum `erfc` (cumulative
//!   sum minus its lag-`N` copy; the first `N − 1` entries are partial sums) and
//!   `fitness = min_t erfc`.
//! * The fast baseline removal of `evaluate_components` ([`remove_baseline`]): window
//!   `min(T//5, 800)`, 8th percentile of blocks of consecutive frames, cubic-spline upsampling with
//!   `scipy.ndimage.zoom(order=3, mode='constant')` in `float32`, see
//!   [`crate::stats::block_percentile_baseline`].
//! * The trace part of `estimate_components_quality_auto`: `N = ceil(fr·decay_time)`,
//!   `traces = C + YrA`, `fitness_delta` on `diff(traces)` (before the baseline removal),
//!   `fitness_raw` after it, `SNR = −Φ⁻¹(exp(fitness_raw/N))` ([`evaluate_traces`],
//!   [`trace_snr`], [`fitness_delta`]). Blocks of traces (CaImAn's `num_traces_per_group = 50`)
//!   are mapped through a `caiman-parallel` executor ([`TraceQualityTask`], registered by
//!   [`register_tasks`]); every strategy gives bit-identical results.
//!
//! Deviations: `robust_std = true` raises `IndexError` in CaImAn (a float array used as index);
//! here it computes what the code intends — the deviation at rank `round(#(ff > 0)/2)` from the top
//! of the sorted `ff` (zeros counted as NaN), times `2/1.349`. A constant trace (no sample below
//! its mode) gives NaN `sd_r`, `fitness` and SNR, as in CaImAn (whose `Estimates` then stores
//! SNR 0); the NaN is passed on, not turned into an error.

use caiman_parallel::{Executor, Registry, Task, TaskCtx, TaskError};
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::error::task_err;
use crate::stats::{ZoomMode, block_percentile_baseline, hsm_sorted, log_ndtr, norm_ppf, pairwise_sum};
use crate::{Error, Result};

/// Registers this module's task types with a worker registry.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<TraceQualityTask>()
}

/// Outputs of [`compute_event_exceptionality`], one entry per trace (CaImAn's
/// `fitness, erfc, sd_r, md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Exceptionality {
    /// `min_t erfc[k, t]` — more negative is more exceptional.
    pub fitness: Array1<f64>,
    /// Moving `N`-sample sum of `log Φ(−z)` (`K × T`).
    pub erfc: Array2<f64>,
    /// Noise level estimated from the samples below the mode.
    pub sd_r: Array1<f64>,
    /// Half-sample mode of each trace.
    pub md: Array1<f64>,
}

/// Per-trace scratch of the exceptionality kernel.
#[derive(Default)]
struct Scratch {
    sorted: Vec<f64>,
    ff: Vec<f64>,
    erfc: Vec<f64>,
    diff: Vec<f64>,
}

/// `(fitness, sd_r, md)` of one trace; the moving sum is left in `s.erfc`.
fn exceptionality_row(x: &[f64], n: usize, robust_std: bool, sigma_factor: f64, s: &mut Scratch) -> (f64, f64, f64) {
    let t = x.len();
    s.sorted.clear();
    s.sorted.extend_from_slice(x);
    s.sorted.sort_unstable_by(|a, b| a.total_cmp(b));
    let md = hsm_sorted(&s.sorted);

    // ff = -(x - md) where x - md < 0, else 0
    s.ff.clear();
    s.ff.extend(x.iter().map(|&v| {
        let d = v - md;
        if d < 0.0 { -d } else { 0.0 }
    }));
    let count = s.ff.iter().filter(|&&v| v > 0.0).count();
    let sd_r = if robust_std {
        s.ff.sort_unstable_by(|a, b| a.total_cmp(b));
        let ns = round_half_even(count as f64 * 0.5) as usize;
        let idx = if ns == 0 { 0 } else { t - ns };
        let v = s.ff[idx];
        let iqr_h = if v == 0.0 { f64::NAN } else { v };
        2.0 * iqr_h / 1.349
    } else {
        for v in &mut s.ff {
            *v *= *v;
        }
        (pairwise_sum(&s.ff) / count as f64).sqrt()
    };

    let scale = sigma_factor * sd_r;
    s.erfc.clear();
    let mut acc = 0.0;
    for &v in x {
        let z = (v - md) / scale;
        acc += log_ndtr(-z);
        s.erfc.push(acc);
    }
    // erfc[:, N:] -= erfc[:, :-N] on the cumulative sums (numpy copies the overlapping operand)
    for i in (n..t).rev() {
        s.erfc[i] -= s.erfc[i - n];
    }
    let mut fitness = f64::INFINITY;
    for &e in &s.erfc {
        if e.is_nan() {
            fitness = f64::NAN;
            break;
        }
        fitness = fitness.min(e);
    }
    (fitness, sd_r, md)
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - x.signum() } else { r }
}

fn check_traces(traces: ArrayView2<'_, f64>, what: &'static str) -> Result<()> {
    if traces.is_empty() {
        return Err(Error::Empty { what });
    }
    if traces.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what });
    }
    Ok(())
}

fn check_params(n: usize, sigma_factor: f64) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidParam("N (consecutive samples) must be at least 1".into()));
    }
    if !(sigma_factor.is_finite() && sigma_factor > 0.0) {
        return Err(Error::InvalidParam(format!("sigma_factor must be positive, got {sigma_factor}")));
    }
    Ok(())
}

/// CaImAn's `compute_event_exceptionality(traces, robust_std, N, sigma_factor)` on a `K × T`
/// matrix of traces (CaImAn defaults: `robust_std = false`, `sigma_factor = 3`).
///
/// # Errors
/// [`Error::Empty`] for no traces or no samples, [`Error::NonFinite`] for NaN/infinite samples,
/// [`Error::InvalidParam`] for `n = 0` or a non-positive `sigma_factor`.
pub fn compute_event_exceptionality(
    traces: ArrayView2<'_, f64>,
    n: usize,
    robust_std: bool,
    sigma_factor: f64,
) -> Result<Exceptionality> {
    check_params(n, sigma_factor)?;
    check_traces(traces, "traces")?;
    let (k, t) = traces.dim();
    let mut out = Exceptionality {
        fitness: Array1::zeros(k),
        erfc: Array2::zeros((k, t)),
        sd_r: Array1::zeros(k),
        md: Array1::zeros(k),
    };
    let mut s = Scratch::default();
    let mut row = Vec::with_capacity(t);
    for (i, tr) in traces.rows().into_iter().enumerate() {
        row.clear();
        row.extend(tr.iter().copied());
        let (fit, sd, md) = exceptionality_row(&row, n, robust_std, sigma_factor, &mut s);
        out.fitness[i] = fit;
        out.sd_r[i] = sd;
        out.md[i] = md;
        out.erfc.row_mut(i).iter_mut().zip(&s.erfc).for_each(|(o, &v)| *o = v);
    }
    Ok(out)
}

/// `fitness_delta`: the exceptionality fitness of the first differences `diff(traces, axis=1)`
/// (used by the legacy thresholds and by OnACID).
///
/// # Errors
/// As [`compute_event_exceptionality`]; [`Error::Empty`] also for traces of fewer than 2 samples.
pub fn fitness_delta(
    traces: ArrayView2<'_, f64>,
    n: usize,
    robust_std: bool,
    sigma_factor: f64,
) -> Result<Array1<f64>> {
    check_params(n, sigma_factor)?;
    check_traces(traces, "traces")?;
    if traces.ncols() < 2 {
        return Err(Error::Empty { what: "trace differences (fewer than 2 samples)" });
    }
    let mut s = Scratch::default();
    let mut diff = Vec::with_capacity(traces.ncols() - 1);
    let mut out = Array1::zeros(traces.nrows());
    for (i, tr) in traces.rows().into_iter().enumerate() {
        diff.clear();
        diff.extend(tr.iter().zip(tr.iter().skip(1)).map(|(&a, &b)| b - a));
        out[i] = exceptionality_row(&diff, n, robust_std, sigma_factor, &mut s).0;
    }
    Ok(out)
}

/// The window of CaImAn's fast baseline removal for traces of `t` samples: `min(t // 5, 800)`.
pub fn baseline_window(t: usize) -> usize {
    (t / 5).min(800)
}

/// CaImAn's fast baseline removal (`evaluate_components`, `remove_baseline=True`), in place on
/// every row of a `K × T` matrix: subtracts the `float32` cubic-spline upsampling of the 8th
/// percentiles of blocks of [`baseline_window`]`(T)` frames.
///
/// # Errors
/// [`Error::Empty`] for traces shorter than 5 samples (CaImAn divides by a zero window),
/// [`Error::NonFinite`] for NaN samples.
pub fn remove_baseline(mut traces: ArrayViewMut2<'_, f64>) -> Result<()> {
    let t = traces.ncols();
    let w = baseline_window(t);
    if w == 0 {
        return Err(Error::Empty { what: "traces for baseline removal (fewer than 5 samples)" });
    }
    let mut row = Vec::with_capacity(t);
    for mut tr in traces.rows_mut() {
        row.clear();
        row.extend(tr.iter().copied());
        let bl = block_percentile_baseline(&row, w, 8.0, ZoomMode::Constant)?;
        tr.iter_mut().zip(&bl).for_each(|(v, &b)| *v -= b);
    }
    Ok(())
}

/// `N = ceil(fr · decay_time)`, the number of consecutive samples of an event
/// (`estimate_components_quality_auto`).
///
/// # Errors
/// [`Error::InvalidParam`] when `fr` or `decay_time` is not positive and finite.
pub fn n_samples(fr: f64, decay_time: f64) -> Result<usize> {
    if !(fr.is_finite() && fr > 0.0 && decay_time.is_finite() && decay_time > 0.0) {
        return Err(Error::InvalidParam(format!("fr and decay_time must be positive, got {fr} and {decay_time}")));
    }
    Ok((fr * decay_time).ceil() as usize)
}

/// The trace SNR of a fitness value: `−Φ⁻¹(exp(fitness/N))` (NaN stays NaN).
pub fn trace_snr(fitness: f64, n: usize) -> f64 {
    -norm_ppf((fitness / n as f64).exp())
}

/// Options of [`evaluate_traces`] (the trace part of `estimate_components_quality_auto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceQualityOptions {
    /// Frame rate (Hz), `data.fr`.
    pub fr: f64,
    /// Indicator decay time (s), `data.decay_time`.
    pub decay_time: f64,
    /// Remove the running baseline before the exceptionality of the raw traces (CaImAn: true).
    pub remove_baseline: bool,
    /// Noise from the half-IQR of the downward deviations (CaImAn: false; see the module doc).
    pub robust_std: bool,
    /// Multiple of the noise level in the z-score (CaImAn: 3).
    pub sigma_factor: f64,
    /// Traces per task (CaImAn's `num_traces_per_group`, 50 in the auto path).
    pub traces_per_task: usize,
}

impl Default for TraceQualityOptions {
    fn default() -> Self {
        TraceQualityOptions {
            fr: 30.0,
            decay_time: 0.4,
            remove_baseline: true,
            robust_std: false,
            sigma_factor: 3.0,
            traces_per_task: 50,
        }
    }
}

/// Trace metrics of every component.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceQuality {
    /// `N = ceil(fr · decay_time)`.
    pub n: usize,
    /// Exceptionality fitness of the (baseline-removed) raw traces.
    pub fitness_raw: Vec<f64>,
    /// Exceptionality fitness of the first differences of the raw traces.
    pub fitness_delta: Vec<f64>,
    /// `−Φ⁻¹(exp(fitness_raw/N))` (CaImAn's `comp_SNR`; NaN for constant traces).
    pub snr: Vec<f64>,
}

/// Fitness values of one trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceFitness {
    /// On the baseline-removed trace.
    pub fitness_raw: f64,
    /// On the first differences.
    pub fitness_delta: f64,
}

/// A block of raw traces (`C + YrA`, row-major `rows × frames`) whose fitness values are computed
/// by one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceQualityTask {
    /// The traces, row after row.
    pub traces: Vec<f64>,
    /// Number of traces.
    pub rows: usize,
    /// Samples per trace.
    pub frames: usize,
    /// Consecutive samples `N`.
    pub n: usize,
    /// Remove the baseline before the raw fitness.
    pub remove_baseline: bool,
    /// Robust noise estimate.
    pub robust_std: bool,
    /// Noise multiple.
    pub sigma_factor: f64,
}

impl TraceQualityTask {
    fn compute(self) -> Result<Vec<TraceFitness>> {
        let TraceQualityTask { mut traces, rows, frames, n, remove_baseline: rb, robust_std, sigma_factor } = self;
        if traces.len() != rows * frames {
            return Err(Error::ShapeMismatch {
                what: "trace block",
                expected: vec![rows * frames],
                got: vec![traces.len()],
            });
        }
        let mut s = Scratch::default();
        let mut out = Vec::with_capacity(rows);
        let w = baseline_window(frames);
        for tr in traces.chunks_mut(frames) {
            s.diff.clear();
            s.diff.extend(tr.iter().zip(tr.iter().skip(1)).map(|(&a, &b)| b - a));
            let diff = std::mem::take(&mut s.diff);
            let fd = exceptionality_row(&diff, n, robust_std, sigma_factor, &mut s).0;
            s.diff = diff;
            if rb {
                let bl = block_percentile_baseline(tr, w, 8.0, ZoomMode::Constant)?;
                tr.iter_mut().zip(&bl).for_each(|(v, &b)| *v -= b);
            }
            let fr = exceptionality_row(tr, n, robust_std, sigma_factor, &mut s).0;
            out.push(TraceFitness { fitness_raw: fr, fitness_delta: fd });
        }
        Ok(out)
    }
}

impl Task for TraceQualityTask {
    const NAME: &'static str = "caiman_cnmf.trace_quality";
    type Output = Vec<TraceFitness>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Self::Output, TaskError> {
        self.compute().map_err(task_err)
    }
}

/// Trace metrics of all components from `C` and `YrA` (`K × T` each): `traces = C + YrA`,
/// `fitness_delta` on `diff(traces)`, the baseline removal, `fitness_raw` and the SNR — the trace
/// half of CaImAn's `estimate_components_quality_auto`. Blocks of
/// [`TraceQualityOptions::traces_per_task`] traces go through `exec`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `C` and `YrA` differ in shape, [`Error::Empty`] for no samples
/// (or fewer than 5 with the baseline removal), [`Error::NonFinite`] for NaN/infinite values,
/// [`Error::InvalidParam`] for bad options, [`Error::Exec`] when the executor fails.
pub fn evaluate_traces<E: Executor>(
    exec: &E,
    c: ArrayView2<'_, f64>,
    yra: ArrayView2<'_, f64>,
    opts: &TraceQualityOptions,
) -> Result<TraceQuality> {
    if c.dim() != yra.dim() {
        return Err(Error::ShapeMismatch {
            what: "YrA vs C",
            expected: vec![c.nrows(), c.ncols()],
            got: vec![yra.nrows(), yra.ncols()],
        });
    }
    let n = n_samples(opts.fr, opts.decay_time)?;
    check_params(n, opts.sigma_factor)?;
    if opts.traces_per_task == 0 {
        return Err(Error::InvalidParam("traces_per_task must be at least 1".into()));
    }
    let (k, t) = c.dim();
    if k == 0 {
        return Ok(TraceQuality { n, fitness_raw: vec![], fitness_delta: vec![], snr: vec![] });
    }
    if t < 2 || (opts.remove_baseline && t < 5) {
        return Err(Error::Empty { what: "trace samples (too few for the evaluation)" });
    }
    check_traces(c, "C")?;
    check_traces(yra, "YrA")?;
    let mut tasks = Vec::with_capacity(k.div_ceil(opts.traces_per_task));
    for start in (0..k).step_by(opts.traces_per_task) {
        let end = (start + opts.traces_per_task).min(k);
        let mut traces = Vec::with_capacity((end - start) * t);
        for i in start..end {
            traces.extend(c.row(i).iter().zip(yra.row(i)).map(|(&a, &b)| a + b));
        }
        tasks.push(TraceQualityTask {
            traces,
            rows: end - start,
            frames: t,
            n,
            remove_baseline: opts.remove_baseline,
            robust_std: opts.robust_std,
            sigma_factor: opts.sigma_factor,
        });
    }
    let (outs, _stats) = exec.map(tasks)?;
    let all: Vec<TraceFitness> = outs.into_iter().flatten().collect();
    let fitness_raw: Vec<f64> = all.iter().map(|f| f.fitness_raw).collect();
    let fitness_delta = all.iter().map(|f| f.fitness_delta).collect();
    let snr = fitness_raw.iter().map(|&f| trace_snr(f, n)).collect();
    Ok(TraceQuality { n, fitness_raw, fitness_delta, snr })
}
