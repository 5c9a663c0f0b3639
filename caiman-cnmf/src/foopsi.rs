//! CaImAn's `deconvolution.constrained_foopsi` with `method_deconvolution = 'oasis'` (the default
//! and the only method ported), its parameter estimation (`estimate_parameters`), `make_G_matrix`,
//! and a driver that deconvolves many traces through a `caiman-parallel` executor (the role of
//! `temporal.constrained_foopsi_parallel`).
//!
//! Deliberate deviations from CaImAn (beyond those of [`crate::oasis`] and [`crate::noise`]):
//! * `method_deconvolution = 'cvx' / 'cvxpy'` (external convex solvers) are not ported.
//! * CaImAn casts the trace to `float32` before OASIS; here everything stays `f64`.
//! * A given `c1` is ignored by the OASIS path in CaImAn too (`c1` is always re-estimated as
//!   `c[0]`); it is accepted for key compatibility and ignored here as well.
//! * For `p = 1` with a given `bl`, CaImAn passes `s_min` but (for `s_min = None`) penalty 1, so
//!   the L1 problem is solved; this port does the same.
//! * `p = 0` returns `lam = None` and `g = []` (CaImAn: `np.array(0)`).
//! * Bad input (empty or non-finite trace, `p > 2`, a too-short trace, AR coefficients without a
//!   stable real decay) is a typed [`Error`] instead of a Python exception or NaN output.

use caiman_parallel::{Executor, Registry, RunStats, Task, TaskCtx, TaskError};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, task_err};
use crate::noise::{self, NoiseMethod};
use crate::oasis::{Ar1Params, Ar2Params, OasisWorkspace, Penalty};

/// Options of [`constrained_foopsi`], with CaImAn's keyword names and defaults (CNMF's
/// `temporal` parameter group uses the same keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FoopsiOptions {
    /// Order of the AR model: 0 (no deconvolution), 1 or 2 (default 2, CNMF's `temporal.p`).
    pub p: usize,
    /// AR coefficients (length `p`); estimated from the trace when `None`.
    pub g: Option<Vec<f64>>,
    /// Noise standard deviation; estimated with `GetSn` when `None`.
    pub sn: Option<f64>,
    /// Baseline; optimised when `None`.
    pub bl: Option<f64>,
    /// Initial calcium value (ignored by the OASIS path, as in CaImAn).
    pub c1: Option<f64>,
    /// Constrain the baseline to be non-negative.
    pub bas_nonneg: bool,
    /// Frequency band (fraction of the sampling rate) for the noise estimate.
    pub noise_range: [f64; 2],
    /// How the PSD is averaged over the band.
    pub noise_method: NoiseMethod,
    /// Extra autocovariance lags for estimating `g`.
    pub lags: usize,
    /// Shrinkage of the estimated AR roots.
    pub fudge_factor: f64,
    /// Number of large isolated events used to re-fit `g` (0: no re-fit).
    pub optimize_g: usize,
    /// `None`: L1 penalty; `Some(s)`: L0 refinement with minimal spike size `s` (see
    /// [`Penalty::L0`]).
    pub s_min: Option<f64>,
}

impl Default for FoopsiOptions {
    fn default() -> Self {
        FoopsiOptions {
            p: 2,
            g: None,
            sn: None,
            bl: None,
            c1: None,
            bas_nonneg: true,
            noise_range: [0.25, 0.5],
            noise_method: NoiseMethod::Logmexp,
            lags: 5,
            fudge_factor: 1.0,
            optimize_g: 0,
            s_min: None,
        }
    }
}

/// What [`constrained_foopsi`] returns (CaImAn's tuple `(c, bl, c1, g, sn, sp, lam)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoopsiResult {
    /// Denoised calcium with the baseline and the initial transient `c1·γ^t` removed; the full
    /// fit is `c + bl + c1·γ^t` ([`FoopsiResult::full_fit`]).
    pub c: Vec<f64>,
    /// Baseline.
    pub bl: f64,
    /// Initial calcium value (`c[0]` of the solver's solution).
    pub c1: f64,
    /// AR coefficients used (estimated, given, or re-fitted).
    pub g: Vec<f64>,
    /// Noise standard deviation used.
    pub sn: f64,
    /// Deconvolved activity (spikes).
    pub s: Vec<f64>,
    /// Sparsity penalty of the dual problem (`None` for `p = 0`).
    pub lam: Option<f64>,
}

impl FoopsiResult {
    /// Largest real root `γ` of the AR polynomial (`g` for AR(1), `d` for AR(2), 0 for `p = 0`).
    pub fn gamma(&self) -> f64 {
        decay_of(&self.g)
    }

    /// `c + bl + c1·γ^t`: the fit of the input trace (CaImAn's `C` row in CNMF).
    pub fn full_fit(&self) -> Vec<f64> {
        let gamma = self.gamma();
        let mut q = 1.0;
        self.c
            .iter()
            .map(|&ct| {
                let v = ct + self.bl + self.c1 * q;
                q *= gamma;
                v
            })
            .collect()
    }
}

fn decay_of(g: &[f64]) -> f64 {
    match g {
        [g1] => *g1,
        [g1, g2] => (g1 + (g1 * g1 + 4.0 * g2).max(0.0).sqrt()) / 2.0,
        _ => 0.0,
    }
}

/// `constrained_foopsi(y, **opts)` with OASIS: noise-constrained deconvolution of one trace.
///
/// # Errors
/// [`Error::Empty`] / [`Error::NonFinite`] for an empty or non-finite trace;
/// [`Error::InvalidParam`] for `p > 2`, a `g` of the wrong length or outside the stable range,
/// a bad `sn`, `bl` or noise band, or a trace too short for the AR order (AR(1): 2 samples,
/// AR(2): 10 samples).
pub fn constrained_foopsi(y: &[f64], opts: &FoopsiOptions) -> Result<FoopsiResult> {
    Deconvolver::new().run(y, opts, None, None)
}

/// A reusable single-thread deconvolver: [`constrained_foopsi`] with its work buffers kept
/// between traces.
#[derive(Debug, Default)]
pub struct Deconvolver {
    ws: OasisWorkspace,
}

impl Deconvolver {
    /// A deconvolver with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`constrained_foopsi`] on `y`; `g` / `sn` override `opts.g` / `opts.sn` for this trace.
    ///
    /// # Errors
    /// As [`constrained_foopsi`].
    pub fn run(&mut self, y: &[f64], opts: &FoopsiOptions, g: Option<&[f64]>, sn: Option<f64>) -> Result<FoopsiResult> {
        validate(y, opts)?;
        let g_given = g.map(<[f64]>::to_vec).or_else(|| opts.g.clone());
        let sn = match sn.or(opts.sn) {
            Some(v) => v,
            None => noise::get_sn(y, opts.noise_range, opts.noise_method)?,
        };
        if !(sn.is_finite() && sn >= 0.0) {
            return Err(Error::InvalidParam(format!("sn must be finite and >= 0, got {sn}")));
        }
        let p = opts.p;
        let g = match g_given {
            Some(g) => g,
            None if p == 0 => Vec::new(),
            None => noise::estimate_time_constant(y, p, sn, opts.lags, opts.fudge_factor)?,
        };
        if p == 0 {
            let c: Vec<f64> = y.iter().map(|v| v.max(0.0)).collect();
            return Ok(FoopsiResult { s: c.clone(), c, bl: 0.0, c1: 0.0, g: Vec::new(), sn, lam: None });
        }
        if g.len() != p {
            return Err(Error::InvalidParam(format!("g must have p = {p} coefficients, got {}", g.len())));
        }
        let penalty = match opts.s_min {
            None => Penalty::L1,
            Some(s_min) => Penalty::L0 { s_min },
        };
        let t_len = y.len();
        let mut c = vec![0.0; t_len];
        let mut s = vec![0.0; t_len];
        let (data, bl_given): (std::borrow::Cow<'_, [f64]>, Option<f64>) = match opts.bl {
            Some(bl) => (y.iter().map(|v| v - bl).collect::<Vec<_>>().into(), Some(bl)),
            None => (y.into(), None),
        };
        let fit = if p == 1 {
            let params = Ar1Params {
                optimize_b: bl_given.is_none(),
                b_nonneg: opts.bas_nonneg,
                optimize_g: if bl_given.is_none() { opts.optimize_g } else { 0 },
                penalty,
                ..Ar1Params::default()
            };
            self.ws.constrained_ar1(&data, g[0], sn, &params, &mut c, &mut s)?
        } else {
            let params = Ar2Params {
                optimize_b: bl_given.is_none(),
                b_nonneg: opts.bas_nonneg,
                optimize_g: if bl_given.is_none() { opts.optimize_g } else { 0 },
                penalty,
                ..Ar2Params::default()
            };
            self.ws.constrained_ar2(&data, [g[0], g[1]], sn, &params, &mut c, &mut s)?
        };
        let c1 = c[0];
        let gamma = decay_of(&fit.g);
        let mut q = 1.0;
        for ct in &mut c {
            *ct -= c1 * q;
            q *= gamma;
        }
        Ok(FoopsiResult { c, bl: bl_given.unwrap_or(fit.b), c1, g: fit.g, sn, s, lam: Some(fit.lam) })
    }
}

fn validate(y: &[f64], opts: &FoopsiOptions) -> Result<()> {
    if y.is_empty() {
        return Err(Error::Empty { what: "trace" });
    }
    if y.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "trace" });
    }
    if opts.p > 2 {
        return Err(Error::InvalidParam(format!("OASIS is implemented for p = 0, 1, 2 only, got p = {}", opts.p)));
    }
    let min_len = [1, 2, 10][opts.p];
    if y.len() < min_len {
        return Err(Error::InvalidParam(format!(
            "trace too short for p = {}: {} samples, need at least {min_len}",
            opts.p,
            y.len()
        )));
    }
    if let Some(bl) = opts.bl
        && !bl.is_finite()
    {
        return Err(Error::InvalidParam(format!("bl must be finite, got {bl}")));
    }
    if let Some(g) = &opts.g
        && g.iter().any(|v| !v.is_finite())
    {
        return Err(Error::InvalidParam("g must be finite".into()));
    }
    if let Some(s) = opts.s_min
        && !s.is_finite()
    {
        return Err(Error::InvalidParam(format!("s_min must be finite, got {s}")));
    }
    Ok(())
}

/// CaImAn's `make_G_matrix(T, g)` as a dense `T × T` matrix: 1 on the diagonal and `−g_i` on the
/// `i`-th subdiagonal, so that `s = G c`.
pub fn make_g_matrix(t: usize, g: &[f64]) -> Array2<f64> {
    let mut m = Array2::zeros((t, t));
    for i in 0..t {
        m[[i, i]] = 1.0;
        for (k, &gk) in g.iter().enumerate() {
            if i > k {
                m[[i, i - k - 1]] = -gk;
            }
        }
    }
    m
}

/// A block of traces deconvolved by one task (plain data, so it can travel to worker processes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeconvolveBlock {
    /// Samples per trace.
    pub t: usize,
    /// The traces, row after row (`rows × t`).
    pub traces: Vec<f64>,
    /// Options shared by all traces.
    pub opts: FoopsiOptions,
    /// Per-trace AR coefficients (empty: use `opts.g`; else one entry per row).
    pub g: Vec<Option<Vec<f64>>>,
    /// Per-trace noise levels (empty: use `opts.sn`; else one entry per row).
    pub sn: Vec<Option<f64>>,
}

impl DeconvolveBlock {
    fn execute(&self) -> Result<Vec<FoopsiResult>> {
        let mut dec = Deconvolver::new();
        self.traces
            .chunks_exact(self.t.max(1))
            .enumerate()
            .map(|(k, y)| {
                let g = self.g.get(k).and_then(|v| v.as_deref());
                let sn = self.sn.get(k).copied().flatten();
                dec.run(y, &self.opts, g, sn)
            })
            .collect()
    }
}

impl Task for DeconvolveBlock {
    const NAME: &'static str = "caiman_cnmf.deconvolve_block";
    type Output = Vec<FoopsiResult>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Vec<FoopsiResult>, TaskError> {
        self.execute().map_err(task_err)
    }
}

/// Registers the task types of this module with a worker [`Registry`].
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<DeconvolveBlock>()
}

/// Per-trace overrides of `g` and `sn` for [`deconvolve_traces_with`] (empty vectors: none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceOverrides {
    /// One entry per trace, or empty.
    pub g: Vec<Option<Vec<f64>>>,
    /// One entry per trace, or empty.
    pub sn: Vec<Option<f64>>,
}

/// Traces per task.
const BLOCK: usize = 16;

/// Deconvolves every row of `traces` (`K × T`) with [`constrained_foopsi`] through `exec`, in
/// blocks of traces; results are in row order.
///
/// # Errors
/// As [`constrained_foopsi`] (checked for every row before any work is dispatched, so bad input
/// gives the typed error), or [`Error::Exec`] if a worker fails.
pub fn deconvolve_traces<E: Executor>(
    traces: ArrayView2<'_, f64>,
    opts: &FoopsiOptions,
    exec: &E,
) -> Result<(Vec<FoopsiResult>, RunStats)> {
    deconvolve_traces_with(traces, opts, &TraceOverrides::default(), exec)
}

/// [`deconvolve_traces`] with per-trace `g` / `sn` (CNMF passes a per-component noise level).
///
/// # Errors
/// As [`deconvolve_traces`], plus [`Error::ShapeMismatch`] if a non-empty override vector does
/// not have one entry per trace.
pub fn deconvolve_traces_with<E: Executor>(
    traces: ArrayView2<'_, f64>,
    opts: &FoopsiOptions,
    overrides: &TraceOverrides,
    exec: &E,
) -> Result<(Vec<FoopsiResult>, RunStats)> {
    let (k, t) = traces.dim();
    for (what, n) in [("per-trace g", overrides.g.len()), ("per-trace sn", overrides.sn.len())] {
        if n != 0 && n != k {
            return Err(Error::ShapeMismatch { what, expected: vec![k], got: vec![n] });
        }
    }
    for row in traces.rows() {
        let y: Vec<f64> = row.to_vec();
        validate(&y, opts)?;
    }
    let mut tasks = Vec::with_capacity(k.div_ceil(BLOCK));
    let mut start = 0;
    while start < k {
        let end = (start + BLOCK).min(k);
        let block = traces.slice(ndarray::s![start..end, ..]);
        tasks.push(DeconvolveBlock {
            t,
            traces: block.iter().copied().collect(),
            opts: opts.clone(),
            g: overrides.g.get(start..end).map(<[_]>::to_vec).unwrap_or_default(),
            sn: overrides.sn.get(start..end).map(<[_]>::to_vec).unwrap_or_default(),
        });
        start = end;
    }
    let (outs, stats) = exec.map(tasks)?;
    Ok((outs.into_iter().flatten().collect(), stats))
}
