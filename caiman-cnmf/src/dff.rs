//! ΔF/F of CNMF traces without the raw movie — CaImAn's `detrend_df_f`.
//!
//! Reproduces `caiman.source_extraction.cnmf.utilities.detrend_df_f(A, b, C, f, YrA, quantileMin,
//! frames_window, flag_auto, use_fast, detrend_only)` of CaImAn 1.12.1 ([`detrend_df_f`]):
//! 1. without `b` or `f` the background is zero and only the detrended traces are returned;
//! 2. the columns of `A` are scaled to unit norm and `C`, `YrA` scaled by the norms;
//!    `F = C + YrA`, `B = Aᵀ b f` (the background seen through each unit-norm footprint);
//! 3. the percentile level of trace `k` is, with `flag_auto`, `100·CDF(mode)` of the Botev KDE of
//!    its first `frames_window` samples ([`crate::stats::df_percentile`], 50 on failure), else
//!    `quantileMin`;
//! 4. with `frames_window` `None` or longer than the traces, the baselines `F0`, `B0` are the
//!    `np.percentile` of the whole traces; otherwise the running
//!    `scipy.ndimage.percentile_filter(·, q, frames_window)` (mode reflect, centred window, rank
//!    without interpolation) of `F` and `B`;
//! 5. `ΔF/F = (F − F0)/(B0 + F0)`, or `F − F0` when `detrend_only`.
//!
//! Deviations: **\[Q\] not reproduced** — CaImAn's `use_fast` path (`fast_prct_filt`) returns the
//! detrended signal `F − baseline` instead of the baseline, so its `(F − F0)/(B0 + F0)` is not a
//! ΔF/F; here `use_fast` uses the block-percentile baseline itself
//! ([`crate::stats::block_percentile_baseline`], blocks of `frames_window` frames, cubic
//! `zoom(mode='nearest')`) as `F0` and `B0`. As in CaImAn, `use_fast` only acts with `flag_auto`.
//! A footprint of zero norm gives a row of NaN (CaImAn divides by the zero norm as well).

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use caiman_parallel::{Executor, Linear, Registry, Task, TaskCtx, TaskError};

use crate::error::task_err;
use crate::sparse::CscMatrix;
use crate::stats::{ZoomMode, block_percentile_baseline, df_percentile, percentile_filter, percentile_in_place};
use crate::{Error, Result};

/// Options of [`detrend_df_f`], with CaImAn's argument names in serde (`quantileMin`,
/// `frames_window`, `flag_auto`, `use_fast`, `detrend_only`) and CaImAn's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DffOptions {
    /// Percentile of the baseline when `flag_auto` is false (default 8).
    #[serde(rename = "quantileMin")]
    pub quantile_min: f64,
    /// Frames of the running percentile window and of the KDE sample (default 500; `None`: the
    /// whole trace, one baseline value per trace).
    pub frames_window: Option<usize>,
    /// Choose the percentile per trace from the KDE mode (default true).
    pub flag_auto: bool,
    /// Block-percentile baseline with cubic interpolation instead of the running percentile
    /// (default false; see the module doc for the CaImAn bug not reproduced).
    pub use_fast: bool,
    /// Return `F − F0` instead of `(F − F0)/(B0 + F0)` (default false; 1p data).
    pub detrend_only: bool,
}

impl Default for DffOptions {
    fn default() -> Self {
        DffOptions {
            quantile_min: 8.0,
            frames_window: Some(500),
            flag_auto: true,
            use_fast: false,
            detrend_only: false,
        }
    }
}

fn shape_err(what: &'static str, expected: &[usize], got: &[usize]) -> Error {
    Error::ShapeMismatch { what, expected: expected.to_vec(), got: got.to_vec() }
}

fn check_finite(a: ArrayView2<'_, f64>, what: &'static str) -> Result<()> {
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what });
    }
    Ok(())
}

/// The baseline of one trace at percentile `q` (scalar or running), written into `out`.
fn baseline(x: &[f64], q: f64, opts: &DffOptions, windowed: bool, scratch: &mut Vec<f64>) -> Result<Vec<f64>> {
    let t = x.len();
    if !windowed {
        scratch.clear();
        scratch.extend_from_slice(x);
        let v = percentile_in_place(scratch, q)?;
        return Ok(vec![v; t]);
    }
    let w = opts.frames_window.unwrap_or(t);
    if opts.use_fast && opts.flag_auto {
        block_percentile_baseline(x, w, q, ZoomMode::Nearest)
    } else {
        percentile_filter(x, q, w)
    }
}

/// CaImAn's `detrend_df_f(A, b, C, f, YrA, **opts)`: the ΔF/F (or detrended) traces, `K × T`.
///
/// `a`: footprints (pixels × K); `b`: background footprints (pixels × nb); `c`: temporal traces
/// (K × T, with baseline); `f`: background traces (nb × T); `yra`: residual traces (K × T), added
/// to `C` when given. Without `b` or `f` the background is zero and `detrend_only` is forced.
///
/// # Errors
/// [`Error::ShapeMismatch`] for inconsistent shapes, [`Error::Empty`] for traces without samples,
/// [`Error::NonFinite`] for NaN/infinite inputs, [`Error::InvalidParam`] for `quantile_min`
/// outside `[0, 100]` or `frames_window = Some(0)`.
pub fn detrend_df_f(
    a: &CscMatrix,
    b: Option<ArrayView2<'_, f64>>,
    c: ArrayView2<'_, f64>,
    f: Option<ArrayView2<'_, f64>>,
    yra: Option<ArrayView2<'_, f64>>,
    opts: &DffOptions,
) -> Result<Array2<f64>> {
    detrend_df_f_with(a, b, c, f, yra, opts, &Linear::new())
}

/// [`detrend_df_f`] with the per-trace work (KDE percentile, running percentiles) mapped over
/// blocks of [`DFF_TRACES_PER_TASK`] traces by `exec`. Every executor gives identical results.
///
/// # Errors
/// As [`detrend_df_f`], plus [`Error::Exec`] when a task fails.
pub fn detrend_df_f_with<E: Executor>(
    a: &CscMatrix,
    b: Option<ArrayView2<'_, f64>>,
    c: ArrayView2<'_, f64>,
    f: Option<ArrayView2<'_, f64>>,
    yra: Option<ArrayView2<'_, f64>>,
    opts: &DffOptions,
    exec: &E,
) -> Result<Array2<f64>> {
    let (k, t) = c.dim();
    if a.ncols() != k {
        return Err(shape_err("A columns vs C rows", &[k], &[a.ncols()]));
    }
    if let Some(y) = yra
        && y.dim() != (k, t)
    {
        return Err(shape_err("YrA vs C", &[k, t], &[y.nrows(), y.ncols()]));
    }
    if !(0.0..=100.0).contains(&opts.quantile_min) {
        return Err(Error::InvalidParam(format!("quantileMin must lie in [0, 100], got {}", opts.quantile_min)));
    }
    if opts.frames_window == Some(0) {
        return Err(Error::InvalidParam("frames_window must be at least 1".into()));
    }
    if t == 0 {
        return Err(Error::Empty { what: "trace samples" });
    }
    check_finite(c, "C")?;
    if let Some(y) = yra {
        check_finite(y, "YrA")?;
    }
    if a.data().iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "A" });
    }
    let (bg, detrend_only) = match (b, f) {
        (Some(b), Some(f)) => {
            if b.nrows() != a.nrows() {
                return Err(shape_err("b rows vs A rows", &[a.nrows()], &[b.nrows()]));
            }
            if f.dim() != (b.ncols(), t) {
                return Err(shape_err("f vs (b columns, T)", &[b.ncols(), t], &[f.nrows(), f.ncols()]));
            }
            check_finite(b, "b")?;
            check_finite(f, "f")?;
            (Some((b, f)), opts.detrend_only)
        }
        _ => {
            tracing::warn!("background components not present: results are only detrended, not ΔF/F normalised");
            (None, true)
        }
    };
    if k == 0 {
        return Ok(Array2::zeros((0, t)));
    }

    // Unit-norm footprints; C and YrA scaled by the norms.
    let norms = a.col_norms();
    let mut fmat = Array2::zeros((k, t));
    for (i, mut row) in fmat.axis_iter_mut(Axis(0)).enumerate() {
        let na = norms[i];
        match yra {
            Some(y) => row.iter_mut().zip(c.row(i)).zip(y.row(i)).for_each(|((o, &cv), &yv)| *o = na * cv + na * yv),
            None => row.iter_mut().zip(c.row(i)).for_each(|(o, &cv)| *o = na * cv),
        }
    }
    // B = (A / nA)ᵀ b f
    let bmat = match bg {
        Some((b, f)) => {
            let mut atb = a.t_dot(b)?;
            for (i, mut row) in atb.axis_iter_mut(Axis(0)).enumerate() {
                let inv = 1.0 / norms[i];
                row.iter_mut().for_each(|v| *v *= inv);
            }
            atb.dot(&f)
        }
        None => Array2::zeros((k, t)),
    };

    let rows = |m: &Array2<f64>, r: std::ops::Range<usize>| m.slice(ndarray::s![r, ..]).iter().copied().collect();
    let tasks: Vec<DffBlock> = (0..k)
        .step_by(DFF_TRACES_PER_TASK)
        .map(|start| {
            let r = start..(start + DFF_TRACES_PER_TASK).min(k);
            DffBlock { t, f: rows(&fmat, r.clone()), b: rows(&bmat, r), opts: opts.clone(), detrend_only }
        })
        .collect();
    let (blocks, _) = exec.map(tasks)?;
    let data: Vec<f64> = blocks.into_iter().flatten().collect();
    Array2::from_shape_vec((k, t), data).map_err(|e| Error::InvalidParam(format!("internal: ΔF/F blocks: {e}")))
}

/// Traces per [`DffBlock`] task.
pub const DFF_TRACES_PER_TASK: usize = 32;

/// Registers this module's task type with a worker registry.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<DffBlock>()
}

/// ΔF/F of a block of traces: the raw traces `F` and the background `B` seen through the
/// unit-norm footprints, row-major `rows × t` each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DffBlock {
    /// Samples per trace.
    pub t: usize,
    /// `F = C + YrA` of the block's traces (scaled by the footprint norms), row-major.
    pub f: Vec<f64>,
    /// `B = Aᵀ b f` of the block's traces, row-major.
    pub b: Vec<f64>,
    /// The options.
    pub opts: DffOptions,
    /// Return `F − F0` only.
    pub detrend_only: bool,
}

impl DffBlock {
    /// ΔF/F of the block, row-major.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `f` and `b` do not hold whole traces of `t` samples.
    pub fn compute(&self) -> Result<Vec<f64>> {
        let (t, opts) = (self.t, &self.opts);
        if t == 0 || !self.f.len().is_multiple_of(t) || self.b.len() != self.f.len() {
            return Err(shape_err("ΔF/F block (F, B)", &[self.f.len()], &[self.b.len()]));
        }
        let windowed = matches!(opts.frames_window, Some(w) if w <= t);
        let kde_len = opts.frames_window.map_or(t, |w| w.min(t));
        let mut out = vec![0.0; self.f.len()];
        let mut scratch = Vec::with_capacity(t);
        for ((row_f, row_b), o) in self.f.chunks_exact(t).zip(self.b.chunks_exact(t)).zip(out.chunks_exact_mut(t)) {
            let q = if opts.flag_auto { df_percentile(&row_f[..kde_len]).0 } else { opts.quantile_min };
            let f0 = baseline(row_f, q, opts, windowed, &mut scratch)?;
            if self.detrend_only {
                o.iter_mut().zip(row_f).zip(&f0).for_each(|((o, &fv), &f0)| *o = fv - f0);
            } else {
                let b0 = baseline(row_b, q, opts, windowed, &mut scratch)?;
                o.iter_mut()
                    .zip(row_f)
                    .zip(f0.iter().zip(&b0))
                    .for_each(|((o, &fv), (&f0, &b0))| *o = (fv - f0) / (b0 + f0));
            }
        }
        Ok(out)
    }
}

impl Task for DffBlock {
    const NAME: &'static str = "caiman_cnmf.dff_block";
    type Output = Vec<f64>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Vec<f64>, TaskError> {
        self.compute().map_err(task_err)
    }
}
