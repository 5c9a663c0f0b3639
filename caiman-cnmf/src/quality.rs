//! Component evaluation: spatial consistency (`r_values`), the acceptance rule and
//! eccentricity — the spatial half of CaImAn's component evaluation and its entry points.
//!
//! Reproduces, from CaImAn 1.12.1:
//! * `peakutils.indexes(y, thres, min_dist)` (peakutils ≥ 1.3, plateaus resolved) —
//!   [`peak_indexes`];
//! * `components_evaluation.find_activity_intervals` — [`find_activity_intervals`]: the `Npeaks`
//!   highest peaks of each trace of **C** (not the raw traces), windows `peak + tB .. peak + tA`
//!   clipped to the movie, with `tB = min(−2, ⌊−5·fr/30⌋)`, `tA = max(5, ⌈25·fr/30⌉)`
//!   ([`peak_window`]); constant traces have no window;
//! * `components_evaluation.classify_components_ep` — [`classify_components_ep`]: frames of the
//!   own windows minus those of every component whose normalised overlap `a_kᵀa_j/(‖a_k‖‖a_j‖)`
//!   exceeds `Athresh` (all own frames if nothing is left); `px` = pixels with `a_k > 0` (fewer
//!   than 3: r = 0); `r_k = pearsonr(mean over the frames of Y[px, frames], a_k[px])` on the raw
//!   movie `Yr` (background not removed); components without a window get r = 0. Blocks of
//!   [`COMPONENTS_PER_TASK`] components (CaImAn's `num_traces_per_group`, 50 in the auto path)
//!   go through a `caiman-parallel` executor ([`RBlock`]);
//! * `components_evaluation.select_components_from_metrics` — [`select_components_from_metrics`]:
//!   accepted iff `(r ≥ rval_thr or SNR > min_SNR) and not (r ≤ rval_lowest or SNR ≤ SNR_lowest)`;
//! * `components_evaluation.compute_eccentricity` — [`compute_eccentricity`];
//! * `Estimates.evaluate_components` — [`evaluate_components`] (trace SNR from
//!   [`crate::evaluation::evaluate_traces`], r-values, the rule, the eccentricity filter when
//!   `use_ecc`; `SNR_comp` NaN → 0 and `r_values` NaN → −1 when stored);
//! * `Estimates.filter_components` — [`filter_components`].
//!
//! Deliberate choices and deviations:
//! * **CNN.** CaImAn's classifier weights are not available, and the CNN is not implemented.
//!   `quality.use_cnn = true` (CaImAn's default) is therefore *ignored* with a `tracing` warning:
//!   the rule runs without the CNN terms, exactly as CaImAn with `use_cnn = False`. No
//!   `cnn_preds` are produced.
//! * **NaN metrics \[Q\].** As in CaImAn, [`evaluate_components`] applies the rule to the raw
//!   metrics (a NaN r-value or SNR neither accepts nor rejects) and only then stores NaN r as −1
//!   and NaN SNR as 0; [`filter_components`] works on the stored values, so with the default
//!   `rval_lowest = −1` a component with a NaN r-value can be accepted by the evaluation and
//!   rejected by a later filter. Reproduced on purpose.
//! * **Overlaps across groups \[Q\].** CaImAn's memmap path evaluates groups of 50 components in
//!   separate calls, so the frames of overlapping components are only excluded when both are in
//!   the same group of 50. Here overlaps are computed over *all* components (what CaImAn does on
//!   in-memory data and what the method intends); identical to CaImAn for ≤ 50 components.
//! * **Mean over frames.** CaImAn averages the `float32` movie in `float32` (numpy pairwise
//!   summation, frames in Python-set order); here the sum is accumulated in `f64`. The r-values
//!   differ by ~1e-7 at most.
//! * **NaN in the data.** CaImAn replaces NaN movie values of the component's pixels by the
//!   nan-mean of those pixels over all frames; reproduced. NaN or infinite footprints or traces are
//!   rejected with [`Error::NonFinite`] (CaImAn replaces NaN footprint values by their nan-mean).
//! * **Eccentricity in `filter_components`.** CaImAn's `filter_components` does not apply
//!   `use_ecc`; here it does (the eccentricity is recomputed from `A`), so that filtering with the
//!   parameters of the evaluation reproduces it. Eccentricity is 2-D only, as in CaImAn (volumes:
//!   [`Error::InvalidParam`]); the value is returned in [`ComponentQuality::ecc`] but not stored
//!   in [`Estimates`] (which has no `ecc` field).
//! * **Ties.** Peaks of equal height are ranked like numpy's (stable for small arrays) ascending
//!   argsort reversed: the later peak first.

use std::collections::BTreeSet;

use caiman_io::Dims;
use caiman_parallel::{Executor, Registry, RunStats, Task, TaskCtx, TaskError};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::error::task_err;
use crate::estimates::{EPS_F32, Estimates, ab_gram};
use crate::evaluation::{TraceQualityOptions, evaluate_traces};
use crate::params::{CnmfParams, QualityParams};
use crate::pixels::{Fov, PixelRows};
use crate::sparse::CscMatrix;
use crate::{Error, Result};

/// Components per r-value task (CaImAn's `num_traces_per_group` in the auto path).
pub const COMPONENTS_PER_TASK: usize = 50;

/// Most bytes of movie rows one r-value task reads (fewer components per task for long movies).
const R_TASK_BYTES: u64 = 64 << 20;

/// Registers this module's task types with a worker registry.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<RBlock>()
}

// ------------------------------------------------------------------------------------------
// Peaks and activity windows
// ------------------------------------------------------------------------------------------

/// `peakutils.indexes(y, thres, min_dist)` (peakutils 1.3): indices of the local maxima of `y`
/// (a rising first difference followed by a falling one, plateaus resolved to their middle)
/// whose value is strictly above `min(y) + thres·(max(y) − min(y))`; with `min_dist > 1`, peaks
/// closer than `min_dist` to a higher peak are dropped. A flat signal has no peaks; the first and
/// last samples are never peaks.
///
/// Plateau rule (as peakutils): on a run of zero differences the left half takes the difference
/// before the run and the right half (middle included) the one after it; a run touching either
/// end takes the difference next to it.
pub fn peak_indexes(y: &[f64], thres: f64, min_dist: usize) -> Vec<usize> {
    let n = y.len();
    if n < 2 {
        return Vec::new();
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in y {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let level = thres * (hi - lo) + lo;
    let mut dy: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let m = dy.len();
    let zeros: Vec<usize> = (0..m).filter(|&i| dy[i] == 0.0).collect();
    if zeros.len() == m {
        return Vec::new();
    }
    if !zeros.is_empty() {
        // chains of consecutive zero differences
        let mut plateaus: Vec<(usize, usize)> = Vec::new(); // inclusive ranges
        let mut start = zeros[0];
        for w in zeros.windows(2) {
            if w[1] != w[0] + 1 {
                plateaus.push((start, w[0]));
                start = w[1];
            }
        }
        plateaus.push((start, *zeros.last().expect("non-empty")));
        let mut first = 0;
        let mut last = plateaus.len();
        if plateaus[0].0 == 0 {
            let (a, b) = plateaus[0];
            let v = dy[b + 1];
            dy[a..=b].iter_mut().for_each(|d| *d = v);
            first = 1;
        }
        if last > first && plateaus[last - 1].1 == m - 1 {
            let (a, b) = plateaus[last - 1];
            let v = dy[a - 1];
            dy[a..=b].iter_mut().for_each(|d| *d = v);
            last -= 1;
        }
        for &(a, b) in &plateaus[first..last] {
            // np.median of the indices a..=b is (a + b) / 2
            let twice_median = a + b;
            let (left, right) = (dy[a - 1], dy[b + 1]);
            for (i, d) in dy.iter_mut().enumerate().take(b + 1).skip(a) {
                *d = if 2 * i < twice_median { left } else { right };
            }
        }
    }
    let mut peaks: Vec<usize> = (1..n - 1).filter(|&i| dy[i] < 0.0 && dy[i - 1] > 0.0 && y[i] > level).collect();
    if peaks.len() > 1 && min_dist > 1 {
        let mut highest = peaks.clone();
        highest.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
        highest.reverse();
        let mut rem = vec![true; n];
        for &p in &peaks {
            rem[p] = false;
        }
        for &p in &highest {
            if !rem[p] {
                let lo = p.saturating_sub(min_dist);
                let hi = (p + min_dist + 1).min(n);
                rem[lo..hi].iter_mut().for_each(|r| *r = true);
                rem[p] = false;
            }
        }
        peaks = (0..n).filter(|&i| !rem[i]).collect();
    }
    peaks
}

/// The frames around a peak used by the r-values at frame rate `fr`: `(tB, tA)` with
/// `tB = min(−2, ⌊−5·fr/30⌋)` and `tA = max(5, ⌈25·fr/30⌉)`; the window of a peak at `t` is
/// `t + tB .. t + tA` (end excluded). At 30 Hz: `(−5, 25)`.
pub fn peak_window(fr: f64) -> (i64, i64) {
    let tb = (-5.0 / 30.0 * fr).floor().min(-2.0);
    let ta = (25.0 / 30.0 * fr).ceil().max(5.0);
    (tb as i64, ta as i64)
}

/// CaImAn's `find_activity_intervals(C, Npeaks, tB, tA, thres)`: for each row of `c` (`K × T`)
/// the sorted, distinct frames within `tB .. tA` of its `npeaks` highest peaks
/// ([`peak_indexes`] with `thres`), clipped to `0 .. T`; `None` for a constant trace or one
/// without peaks.
pub fn find_activity_intervals(
    c: ArrayView2<'_, f64>,
    npeaks: usize,
    tb: i64,
    ta: i64,
    thres: f64,
) -> Vec<Option<Vec<usize>>> {
    let t = c.ncols();
    let mut row = Vec::with_capacity(t);
    let mut out = Vec::with_capacity(c.nrows());
    for tr in c.rows() {
        row.clear();
        row.extend(tr.iter().copied());
        let constant = row.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() == 0.0;
        if constant {
            tracing::debug!("empty component (constant trace)");
            out.push(None);
            continue;
        }
        let mut peaks = peak_indexes(&row, thres, 1);
        // numpy: indexes[np.argsort(C[indexes])][::-1][:Npeaks]
        peaks.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        peaks.reverse();
        peaks.truncate(npeaks);
        if peaks.is_empty() || t == 0 {
            out.push(None);
            continue;
        }
        let mut frames = BTreeSet::new();
        for &p in &peaks {
            for off in tb..ta {
                let f = (p as i64 + off).clamp(0, t as i64 - 1);
                frames.insert(f as usize);
            }
        }
        out.push(Some(frames.into_iter().collect()));
    }
    out
}

// ------------------------------------------------------------------------------------------
// r-values
// ------------------------------------------------------------------------------------------

/// One component of an [`RBlock`]: its positive footprint pixels and values and the frames to
/// average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RComponent {
    /// Pixels (Fortran order, absolute indices) where the footprint is positive, increasing.
    pub pixels: Vec<usize>,
    /// Footprint values at those pixels.
    pub values: Vec<f32>,
    /// Frames to average (strictly increasing).
    pub frames: Vec<usize>,
    /// When the block carries no pixel rows: `Y[pixels, frames]`, row-major
    /// (`pixels.len() × frames.len()`); empty otherwise.
    pub gathered: Vec<f32>,
    /// With `gathered`: the nan-mean of `Y[pixels, :]` over all frames, which replaces NaN movie
    /// values (CaImAn's rule); NaN when the gathered values have no NaN.
    pub nan_fill: f64,
}

/// A task computing the r-values of a group of components: either from a block of pixel rows of
/// `Yr` (a memmap reference, rows `first .. first + count`, so no movie data travels) or from the
/// movie values gathered per component (movies held in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RBlock {
    /// Pixel rows `first ..` of `Yr` covering every pixel of the group, or `None` when each
    /// component carries its [`RComponent::gathered`] values.
    pub rows: Option<PixelRows>,
    /// First pixel of `rows`.
    pub first: usize,
    /// The components.
    pub comps: Vec<RComponent>,
}

impl Task for RBlock {
    const NAME: &'static str = "caiman_cnmf.r_values_block";
    type Output = Vec<f64>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Self::Output, TaskError> {
        self.compute().map_err(task_err)
    }
}

impl RBlock {
    fn compute(&self) -> Result<Vec<f64>> {
        let mut my = Vec::new();
        let mut out = Vec::with_capacity(self.comps.len());
        match &self.rows {
            None => {
                for c in &self.comps {
                    let (np, nf) = (c.pixels.len(), c.frames.len());
                    if c.gathered.len() != np * nf || c.values.len() != np || nf == 0 {
                        return Err(Error::ShapeMismatch {
                            what: "gathered movie values of a component (pixels × frames)",
                            expected: vec![np, nf],
                            got: vec![c.gathered.len()],
                        });
                    }
                    my.clear();
                    for row in c.gathered.chunks(nf) {
                        my.push(mean_with_fill(row.iter().copied(), nf, c.nan_fill));
                    }
                    out.push(pearsonr(&my, &c.values));
                }
            }
            Some(rows) => {
                // Each component's rows are read on their own (positioned reads for a memmap), so
                // a task holds one component's rows at a time, whatever the span of the block.
                // Inline rows start at the block's first pixel.
                let g = rows.gather(self.first)?;
                let t = g.frames();
                let mut buf = Vec::new();
                for c in &self.comps {
                    let nf = c.frames.len();
                    if c.values.len() != c.pixels.len() || nf == 0 {
                        return Err(Error::ShapeMismatch {
                            what: "footprint values vs pixels of a component",
                            expected: vec![c.pixels.len()],
                            got: vec![c.values.len()],
                        });
                    }
                    if let Some(&f) = c.frames.iter().max().filter(|&&f| f >= t) {
                        return Err(Error::InvalidParam(format!("frame {f} outside the movie")));
                    }
                    buf.clear();
                    for (p, n) in pixel_runs(&c.pixels) {
                        g.append(p, n, &mut buf)?;
                    }
                    my.clear();
                    let mut fill = f64::NAN;
                    for row in buf.chunks_exact(t) {
                        let vals = c.frames.iter().map(|&f| row[f]);
                        let m = mean_with_fill(vals.clone(), nf, f64::NAN);
                        let m = if m.is_nan() {
                            if fill.is_nan() {
                                fill = nan_mean(buf.iter().copied());
                            }
                            mean_with_fill(vals, nf, fill)
                        } else {
                            m
                        };
                        my.push(m);
                    }
                    out.push(pearsonr(&my, &c.values));
                }
            }
        }
        Ok(out)
    }
}

/// Mean of `n` values in f64, NaN values replaced by `fill`.
fn mean_with_fill(vals: impl Iterator<Item = f32>, n: usize, fill: f64) -> f64 {
    let mut acc = 0.0;
    for v in vals {
        acc += if v.is_nan() { fill } else { f64::from(v) };
    }
    acc / n as f64
}

/// nan-mean of `vals` in f64 (NaN when every value is NaN).
fn nan_mean(vals: impl IntoIterator<Item = f32>) -> f64 {
    let (mut acc, mut cnt) = (0.0, 0usize);
    for x in vals.into_iter().filter(|x| !x.is_nan()) {
        acc += f64::from(x);
        cnt += 1;
    }
    acc / cnt as f64
}

/// Increasing pixel indices as runs `(first pixel, length)` of consecutive pixels.
fn pixel_runs(pixels: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    pixels.chunk_by(|a, b| b == &(a + 1)).map(|run| (run[0], run.len()))
}

/// `scipy.stats.pearsonr(x, y)[0]` in f64: NaN when either input is constant; the result is
/// clipped to `[−1, 1]`.
fn pearsonr(x: &[f64], y: &[f32]) -> f64 {
    let n = x.len();
    if n < 2 || x.iter().all(|&v| v == x[0]) || y.iter().all(|&v| v == y[0]) {
        return f64::NAN;
    }
    let xm_ = x.iter().sum::<f64>() / n as f64;
    let ym_ = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let xmax = x.iter().map(|&v| (v - xm_).abs()).fold(0.0, f64::max);
    let ymax = y.iter().map(|&v| (f64::from(v) - ym_).abs()).fold(0.0, f64::max);
    let (mut sxx, mut syy) = (0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = ((a - xm_) / xmax, (f64::from(b) - ym_) / ymax);
        sxx += a * a;
        syy += b * b;
    }
    let (nx, ny) = (sxx.sqrt(), syy.sqrt());
    let mut r = 0.0;
    for (&a, &b) in x.iter().zip(y) {
        r += ((a - xm_) / xmax / nx) * ((f64::from(b) - ym_) / ymax / ny);
    }
    r.clamp(-1.0, 1.0)
}

fn check_finite_csc(a: &CscMatrix, what: &'static str) -> Result<()> {
    if a.data().iter().any(|v| !v.is_finite()) { Err(Error::NonFinite { what }) } else { Ok(()) }
}

/// CaImAn's `classify_components_ep(Yr, A, C, b, f, Athresh, Npeaks, tB, tA, thres)` as called
/// by `evaluate_components` at frame rate `fr` (windows from [`peak_window`]): the spatial
/// consistency `r_k` of every component (see the module doc; CaImAn's defaults on the auto path:
/// `athresh = 0.1`, `npeaks = 10`, `thres = 0.3`). `fov.yr` is the raw movie, `a` the footprints
/// (`d × K`), `c` the traces (`K × T`, baseline included). Blocks of [`COMPONENTS_PER_TASK`]
/// components go through `exec` (memmap-backed fields of view are read by the tasks themselves);
/// the returned statistics are those of that map.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `a`, `c` and the movie disagree, [`Error::NonFinite`] for
/// non-finite footprints or traces, [`Error::InvalidParam`] for a non-positive frame rate or
/// non-finite thresholds, [`Error::Exec`] when a task fails.
#[allow(clippy::too_many_arguments)]
pub fn classify_components_ep<E: Executor>(
    fov: &Fov<'_>,
    a: &CscMatrix,
    c: ArrayView2<'_, f64>,
    fr: f64,
    athresh: f64,
    npeaks: usize,
    thres: f64,
    exec: &E,
) -> Result<(Vec<f64>, RunStats)> {
    let (d, t) = (fov.pixels(), fov.frames());
    if a.nrows() != d {
        return Err(Error::ShapeMismatch { what: "A (rows = pixels)", expected: vec![d], got: vec![a.nrows()] });
    }
    if c.nrows() != a.ncols() || c.ncols() != t {
        return Err(Error::ShapeMismatch {
            what: "C (components of A × frames of the movie)",
            expected: vec![a.ncols(), t],
            got: vec![c.nrows(), c.ncols()],
        });
    }
    if !(fr.is_finite() && fr > 0.0) {
        return Err(Error::InvalidParam(format!("frame rate must be positive, got {fr}")));
    }
    if !athresh.is_finite() || !thres.is_finite() {
        return Err(Error::InvalidParam(format!("Athresh and thres must be finite, got {athresh} and {thres}")));
    }
    check_finite_csc(a, "A")?;
    if c.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "C" });
    }
    let k = a.ncols();
    let (tb, ta) = peak_window(fr);
    let loc = find_activity_intervals(c, npeaks, tb, ta, thres);

    // normalised overlaps AA[j, i] = a_jᵀa_i / (‖a_j‖‖a_i‖) − δ_ij
    let gram = ab_gram(a);
    let norms = a.col_norms();

    let mut r = vec![0.0; k];
    let mut todo: Vec<(usize, RComponent)> = Vec::new();
    let mut mask = vec![false; t];
    for i in 0..k {
        let Some(own) = &loc[i] else { continue };
        own.iter().for_each(|&f| mask[f] = true);
        for j in 0..k {
            let ov = gram[[j, i]] / (norms[j] * norms[i]) - if i == j { 1.0 } else { 0.0 };
            if ov > athresh
                && let Some(other) = &loc[j]
            {
                other.iter().for_each(|&f| mask[f] = false);
            }
        }
        let mut frames: Vec<usize> = own.iter().copied().filter(|&f| mask[f]).collect();
        own.iter().for_each(|&f| mask[f] = false);
        if frames.is_empty() {
            tracing::warn!(
                "component {i} is only active jointly with neighbouring components; \
                 space correlation calculation might be unreliable"
            );
            frames = own.clone();
        }
        let (rows, vals) = a.col(i);
        let (pixels, values): (Vec<usize>, Vec<f32>) =
            rows.iter().zip(vals).filter(|&(_, &v)| v > 0.0).map(|(&p, &v)| (p, v)).unzip();
        if pixels.len() < 3 {
            tracing::warn!("component {i} is almost empty; space correlation set to 0");
            continue;
        }
        todo.push((i, RComponent { pixels, values, frames, gathered: Vec::new(), nan_fill: f64::NAN }));
    }

    let mut tasks = Vec::with_capacity(todo.len().div_ceil(COMPONENTS_PER_TASK));
    let mut order = Vec::with_capacity(todo.len());
    let mut it = todo.into_iter().peekable();
    // A task reads the pixel rows of its components: at most COMPONENTS_PER_TASK of them, and no
    // more rows than R_TASK_BYTES of movie (each r-value depends on its component only, so the
    // grouping never changes the results).
    let row_bytes = t as u64 * 4;
    while it.peek().is_some() {
        let mut comps = Vec::new();
        let mut bytes = 0u64;
        while let Some((_, next)) = it.peek() {
            let more = next.pixels.len() as u64 * row_bytes;
            if !comps.is_empty() && (comps.len() >= COMPONENTS_PER_TASK || bytes + more > R_TASK_BYTES) {
                break;
            }
            let (i, comp) = it.next().expect("peeked");
            bytes += more;
            order.push(i);
            comps.push(comp);
        }
        tasks.push(make_block(fov, comps));
    }
    let (outs, stats) = exec.map(tasks)?;
    for (i, v) in order.into_iter().zip(outs.into_iter().flatten()) {
        r[i] = v;
    }
    Ok((r, stats))
}

/// Builds the task of a group: a memmap row block, or the gathered values of each component.
fn make_block(fov: &Fov<'_>, mut comps: Vec<RComponent>) -> RBlock {
    if fov.mmap.is_some() {
        let first = comps.iter().map(|c| c.pixels[0]).min().unwrap_or(0);
        let last = comps.iter().map(|c| *c.pixels.last().expect("≥ 3 pixels")).max().unwrap_or(0);
        return RBlock { rows: Some(fov.rows(first..last + 1)), first, comps };
    }
    for c in &mut comps {
        let mut g = Vec::with_capacity(c.pixels.len() * c.frames.len());
        for &p in &c.pixels {
            let row = fov.yr.row(p);
            g.extend(c.frames.iter().map(|&f| row[f]));
        }
        if g.iter().any(|v| v.is_nan()) {
            c.nan_fill = nan_mean(c.pixels.iter().flat_map(|&p| fov.yr.row(p).into_iter().copied()));
        }
        c.gathered = g;
    }
    RBlock { rows: None, first: 0, comps }
}

// ------------------------------------------------------------------------------------------
// Eccentricity
// ------------------------------------------------------------------------------------------

/// CaImAn's `compute_eccentricity(A, dims)`: for every footprint image (Fortran pixel order) the
/// central second moments `μ20, μ11, μ02` (OpenCV's `moments`), `cov = μ/(m00 + eps32)` and
/// `ecc = √(λmax/(λmin + eps32))` of its eigenvalues (`eps32` = `float32` epsilon). An empty
/// footprint gives 0.
///
/// # Errors
/// [`Error::InvalidParam`] for volumes (CaImAn: 2-D only), [`Error::ShapeMismatch`] if `a` does
/// not have `dims.pixels()` rows.
pub fn compute_eccentricity(a: &CscMatrix, dims: Dims) -> Result<Vec<f64>> {
    if dims.is_volume() {
        return Err(Error::InvalidParam("eccentricity is only defined for 2-D footprints".into()));
    }
    if a.nrows() != dims.pixels() {
        return Err(Error::ShapeMismatch {
            what: "A (rows = pixels)",
            expected: vec![dims.pixels()],
            got: vec![a.nrows()],
        });
    }
    let mut out = Vec::with_capacity(a.ncols());
    for k in 0..a.ncols() {
        let (rows, vals) = a.col(k);
        // OpenCV: x = column, y = row
        let (mut m00, mut m10, mut m01, mut m20, mut m11, mut m02) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (&p, &v) in rows.iter().zip(vals) {
            let v = f64::from(v);
            let (y, x) = ((p % dims.d1) as f64, (p / dims.d1) as f64);
            m00 += v;
            m10 += x * v;
            m01 += y * v;
            m20 += x * x * v;
            m11 += x * y * v;
            m02 += y * y * v;
        }
        let inv = if m00.abs() > f64::EPSILON { 1.0 / m00 } else { 0.0 };
        let (xc, yc) = (m10 * inv, m01 * inv);
        let mu20 = m20 - xc * m10;
        let mu11 = m11 - xc * m01;
        let mu02 = m02 - yc * m01;
        let den = m00 + EPS_F32;
        let (a11, a12, a22) = (mu20 / den, mu11 / den, mu02 / den);
        let mid = 0.5 * (a11 + a22);
        let rad = (0.25 * (a11 - a22).powi(2) + a12 * a12).sqrt();
        let (lmin, lmax) = (mid - rad, mid + rad);
        out.push((lmax / (lmin + EPS_F32)).sqrt());
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Decision rule and entry points
// ------------------------------------------------------------------------------------------

/// CaImAn's `select_components_from_metrics` without the CNN terms: component `k` is accepted
/// iff `(r_k ≥ rval_thr or snr_k > min_SNR) and not (r_k ≤ rval_lowest or snr_k ≤ SNR_lowest)`
/// (NaN compares false: it neither accepts nor rejects). Returns `(accepted, rejected)`, both
/// increasing. `q.use_cnn` is ignored (see the module doc).
///
/// # Panics
/// If `r_values` and `snr` differ in length.
pub fn select_components_from_metrics(r_values: &[f64], snr: &[f64], q: &QualityParams) -> (Vec<usize>, Vec<usize>) {
    assert_eq!(r_values.len(), snr.len(), "one r-value and one SNR per component");
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (k, (&r, &s)) in r_values.iter().zip(snr).enumerate() {
        let pass = r >= q.rval_thr || s > q.min_snr;
        let reject = r <= q.rval_lowest || s <= q.snr_lowest;
        if pass && !reject { good.push(k) } else { bad.push(k) }
    }
    (good, bad)
}

/// Moves the components whose eccentricity is not below `max_ecc` from `good` to `bad` (CaImAn's
/// `use_ecc` step; NaN eccentricities are rejected).
fn apply_ecc(good: &mut Vec<usize>, bad: &mut Vec<usize>, ecc: &[f64], max_ecc: f64) {
    let (keep, drop): (Vec<usize>, Vec<usize>) = good.iter().partition(|&&k| ecc[k] < max_ecc);
    *good = keep;
    bad.extend(drop);
    bad.sort_unstable();
}

/// Everything the evaluation computes, before NaN replacement.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentQuality {
    /// Trace SNR (`comp_SNR`; NaN for constant traces).
    pub snr_comp: Vec<f64>,
    /// Spatial consistency (NaN where the Pearson correlation is undefined).
    pub r_values: Vec<f64>,
    /// Accepted components (increasing).
    pub idx_components: Vec<usize>,
    /// Rejected components (increasing).
    pub idx_components_bad: Vec<usize>,
    /// Exceptionality fitness of the baseline-removed raw traces.
    pub fitness_raw: Vec<f64>,
    /// Exceptionality fitness of the first differences of the raw traces.
    pub fitness_delta: Vec<f64>,
    /// Eccentricity of each footprint, when `use_ecc`.
    pub ecc: Option<Vec<f64>>,
    /// Consecutive samples `N = ceil(fr · decay_time)` of the SNR.
    pub n: usize,
}

fn warn_cnn(q: &QualityParams) {
    if q.use_cnn {
        tracing::warn!(
            "quality.use_cnn = true is not supported (no CNN classifier in caiman-rs): it was ignored, \
             components are selected on SNR and r-values only"
        );
    }
}

/// CaImAn's `estimate_components_quality_auto` on an [`Estimates`]: trace SNR of `C + YrA`
/// ([`evaluate_traces`] with `data.fr`, `data.decay_time`), r-values
/// ([`classify_components_ep`] with `Athresh 0.1`, `Npeaks 10`, `thres 0.3`), the decision rule
/// with `quality` and, when `quality.use_ecc`, the eccentricity filter. `est` is not modified.
/// The statistics are those of the r-value map.
///
/// # Errors
/// [`Error::InvalidParam`] if `est` has no residual traces `YrA` or a parameter is out of range,
/// as well as the errors of [`evaluate_traces`], [`classify_components_ep`] and
/// [`compute_eccentricity`].
pub fn component_quality<E: Executor>(
    fov: &Fov<'_>,
    est: &Estimates,
    params: &CnmfParams,
    exec: &E,
) -> Result<(ComponentQuality, RunStats)> {
    let yra = est
        .yr_a
        .as_ref()
        .ok_or_else(|| Error::InvalidParam("component evaluation needs the residual traces YrA".into()))?;
    let q = &params.quality;
    warn_cnn(q);
    let opts = TraceQualityOptions {
        fr: params.data.fr,
        decay_time: params.data.decay_time,
        traces_per_task: COMPONENTS_PER_TASK,
        ..TraceQualityOptions::default()
    };
    let tq = evaluate_traces(exec, est.c.view(), yra.view(), &opts)?;
    let (r_values, stats) = classify_components_ep(fov, &est.a, est.c.view(), params.data.fr, 0.1, 10, 0.3, exec)?;
    let (mut good, mut bad) = select_components_from_metrics(&r_values, &tq.snr, q);
    let ecc = if q.use_ecc {
        let ecc = compute_eccentricity(&est.a, fov.dims)?;
        apply_ecc(&mut good, &mut bad, &ecc, q.max_ecc);
        Some(ecc)
    } else {
        None
    };
    let quality = ComponentQuality {
        snr_comp: tq.snr,
        r_values,
        idx_components: good,
        idx_components_bad: bad,
        fitness_raw: tq.fitness_raw,
        fitness_delta: tq.fitness_delta,
        ecc,
        n: tq.n,
    };
    Ok((quality, stats))
}

/// CaImAn's `Estimates.evaluate_components(imgs, params, dview)`: computes
/// [`component_quality`] and stores `snr_comp` (NaN → 0), `r_values` (NaN → −1),
/// `idx_components` and `idx_components_bad` in `est`. Residual traces are computed first when
/// `est` has none. `quality.use_cnn` is ignored with a warning (module doc).
///
/// # Errors
/// [`Error::ShapeMismatch`] if the movie does not match `est`, and the errors of
/// [`component_quality`].
pub fn evaluate_components<E: Executor>(
    fov: &Fov<'_>,
    est: &mut Estimates,
    params: &CnmfParams,
    exec: &E,
) -> Result<RunStats> {
    if fov.pixels() != est.a.nrows() || (est.n_components() > 0 && fov.frames() != est.c.ncols()) {
        return Err(Error::ShapeMismatch {
            what: "movie (pixels × frames) vs estimates",
            expected: vec![est.a.nrows(), est.c.ncols()],
            got: vec![fov.pixels(), fov.frames()],
        });
    }
    if est.yr_a.is_none() {
        tracing::debug!("evaluate_components: computing the residual traces YrA");
        est.compute_residuals_fov(fov, exec)?;
    }
    let (q, stats) = component_quality(fov, est, params, exec)?;
    let nan_r: Vec<usize> = (0..q.r_values.len()).filter(|&k| q.r_values[k].is_nan()).collect();
    if !nan_r.is_empty() {
        tracing::warn!("NaN values detected for space correlation in {nan_r:?}; changing their value to -1");
    }
    let nan_s: Vec<usize> = (0..q.snr_comp.len()).filter(|&k| q.snr_comp[k].is_nan()).collect();
    if !nan_s.is_empty() {
        tracing::warn!("NaN values detected for trace SNR in {nan_s:?}; changing their value to 0");
    }
    est.r_values = Some(q.r_values.iter().map(|&r| if r.is_nan() { -1.0 } else { r }).collect());
    est.snr_comp = Some(q.snr_comp.iter().map(|&s| if s.is_nan() { 0.0 } else { s }).collect());
    est.idx_components = Some(q.idx_components);
    est.idx_components_bad = Some(q.idx_components_bad);
    Ok(stats)
}

/// CaImAn's `Estimates.filter_components(imgs, params, new_dict)` with `select_mode='All'`:
/// re-applies [`select_components_from_metrics`] with the thresholds `q` to the stored
/// `r_values` and `snr_comp`, and the eccentricity filter when `q.use_ecc` (a deviation: CaImAn
/// skips it here), and stores the new `idx_components` / `idx_components_bad`.
///
/// # Errors
/// [`Error::InvalidParam`] if the components were not evaluated (CaImAn would evaluate them;
/// call [`evaluate_components`]), [`Error::ShapeMismatch`] if the stored metrics do not have one
/// entry per component, and the errors of [`compute_eccentricity`].
pub fn filter_components(est: &mut Estimates, q: &QualityParams) -> Result<()> {
    let (Some(r), Some(snr)) = (&est.r_values, &est.snr_comp) else {
        return Err(Error::InvalidParam(
            "filter_components: no stored r_values / SNR_comp; run evaluate_components first".into(),
        ));
    };
    let k = est.n_components();
    if r.len() != k || snr.len() != k {
        return Err(Error::ShapeMismatch {
            what: "stored r_values / SNR_comp (one per component)",
            expected: vec![k, k],
            got: vec![r.len(), snr.len()],
        });
    }
    warn_cnn(q);
    let (mut good, mut bad) = select_components_from_metrics(r, snr, q);
    if q.use_ecc {
        let ecc = compute_eccentricity(&est.a, est.dims)?;
        apply_ecc(&mut good, &mut bad, &ecc, q.max_ecc);
    }
    est.idx_components = Some(good);
    est.idx_components_bad = Some(bad);
    Ok(())
}
