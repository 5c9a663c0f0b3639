//! CaImAn's `CNMF.fit` and `CNMF.refit` on one field of view (no patches), in CaImAn's exact order
//! of operations (spec §4.2), plus the pipeline tail `evaluate_components` → `detrend_df_f`.
//!
//! [`fit`] runs, for `rf = None`:
//! 1. [`preprocess`]: per-pixel noise `sn` (`get_noise_fft` over pixel blocks through the executor);
//!    NaN in the movie is an error (CaImAn interpolates and then raises too);
//! 2. initialisation ([`crate::init::initialize_components`], greedy ROI + HALS + NMF background),
//!    unless the fit starts from given components ([`fit_from`]);
//! 3. with `patch.only_init` (CaImAn's default **true**): residuals, normalisation, done — this is
//!    what runs inside every patch;
//! 4. otherwise the spatial update, the temporal update with `p = 0`, merging (`mx = 50`, fast
//!    merge) when `merging.do_merge`, a second spatial update and the temporal update with
//!    `p = preprocess.p` (CaImAn's quirk \[Q\]: `temporal.p` is overwritten by `preprocess.p`, which
//!    we reproduce because every CaImAn parameter file relies on it); `skip_refinement` stops after
//!    the first temporal update (run with `preprocess.p`);
//! 5. `normalize_components`.
//!
//! [`refit`] is CaImAn's `refit`: the accepted components (all, when not evaluated) seed a full
//! no-patch fit. CaImAn mutates the shared params object (\[Q\]: `rf = None`, `only_init = False`
//! afterwards on the original too); we return the changed copy and leave the caller's params alone.
//!
//! Each stage is timed and its peak RSS recorded in a [`FitReport`].
//!
//! With `patch.rf` set, [`fit`] hands over to [`crate::patches::fit_patches`] (CaImAn's patch
//! branch); [`refit`] then runs on the whole field of view as above.
//!
//! What it is not: motion correction; file formats.

use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use caiman_parallel::{Executor, Par, Registry, RunStats, Task, TaskCtx, TaskError, peak_rss_kib};

use crate::error::task_err;
use crate::estimates::Estimates;
use crate::noise::{NoiseFft, NoiseFftOptions};
use crate::params::{CnmfParams, PreprocessParams};
use crate::pixels::{Fov, PixelRows};
use crate::{Error, Result};

/// Time, memory and component count of one stage of a fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name (`preprocess`, `initialize`, `spatial`, `temporal`, `merge`, ...).
    pub stage: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Peak resident memory of this process so far (KiB; 0 where unknown).
    pub peak_rss_kib: u64,
    /// Sum of the worker processes' peak resident memory during the stage (KiB; 0 for in-process
    /// runs).
    pub worker_peak_rss_kib: u64,
    /// Components after the stage.
    pub components: usize,
}

/// The stages of a fit, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// One entry per stage.
    pub stages: Vec<StageReport>,
}

impl FitReport {
    /// Total seconds over all stages.
    pub fn seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }

    /// Appends the stages of `other`.
    pub fn extend(&mut self, other: FitReport) {
        self.stages.extend(other.stages);
    }

    /// Appends a stage that started at `start` and left `components` components; `stats` (of
    /// the stage's executor map, if any) gives the workers' peak memory. Logs the stage.
    pub fn record(&mut self, stage: &str, start: Instant, components: usize, stats: Option<&RunStats>) {
        let workers = stats.map_or(0, |s| s.peak_rss.workers_sum_kib);
        tracing::info!(stage, seconds = start.elapsed().as_secs_f64(), components, "stage done");
        self.stages.push(StageReport {
            stage: stage.to_owned(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_kib: peak_rss_kib(),
            worker_peak_rss_kib: workers,
            components,
        });
    }
}

/// Threads a kernel running in the calling thread may use: the executor's whole budget
/// (workers × inner threads per task).
pub fn main_thread_par<E: Executor>(exec: &E) -> Par {
    Par::new(exec.workers() * exec.inner_threads().per_task)
}

// ---------------------------------------------------------------------------------------------
// Pre-processing
// ---------------------------------------------------------------------------------------------

/// Most pixels per noise task.
const NOISE_BLOCK_MIN: usize = 4096;

/// Pixels per noise task for `frames` frames: 4096, fewer when that would be more than a pass
/// block of the movie ([`crate::passes::block_rows`]).
fn noise_block(frames: usize) -> usize {
    NOISE_BLOCK_MIN.min(crate::passes::block_rows(frames))
}

/// A block of pixel rows whose noise `get_noise_fft` computes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoiseBlock {
    /// The rows.
    pub rows: PixelRows,
    /// The estimator's options.
    pub opts: NoiseFftOptions,
}

impl NoiseBlock {
    fn execute(&self) -> Result<Vec<f64>> {
        self.rows
            .with_view(|v| {
                let mut k = NoiseFft::new(v.ncols(), &self.opts)?;
                v.rows().into_iter().map(|r| k.sn_of_trace(r)).collect::<Result<Vec<f64>>>()
            })
            .and_then(|r| r)
    }
}

impl Task for NoiseBlock {
    const NAME: &'static str = "caiman_cnmf.noise_block";
    type Output = Vec<f64>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Vec<f64>, TaskError> {
        self.execute().map_err(task_err)
    }
}

/// Registers the task types of this module.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<NoiseBlock>()
}

/// CaImAn's `preprocess_data`: the per-pixel noise `sn` (Fortran pixel order) by
/// `get_noise_fft(noise_range, noise_method, max_num_samples_fft)`, or `params.sn` when given
/// (then no map runs and no statistics are returned).
///
/// # Errors
/// [`Error::NonFinite`] if the movie holds NaN or infinite values (with `check_nan`, as CaImAn);
/// [`Error::InvalidParam`] for a bad noise band or a given `sn` of the wrong length;
/// [`Error::Exec`] when a worker fails.
pub fn preprocess<E: Executor>(
    fov: &Fov<'_>,
    params: &PreprocessParams,
    exec: &E,
) -> Result<(Vec<f64>, Option<RunStats>)> {
    let d = fov.pixels();
    if params.check_nan && crate::passes::first_non_finite_pixel(fov, exec)?.is_some() {
        return Err(Error::NonFinite { what: "movie (CNMF does not accept NaN or infinite pixels)" });
    }
    if let Some(sn) = &params.sn {
        if sn.len() != d {
            return Err(Error::InvalidParam(format!("preprocess.sn has {} values, the movie {d} pixels", sn.len())));
        }
        return Ok((sn.clone(), None));
    }
    let [lo, hi] = match params.noise_range.as_slice() {
        [lo, hi] => [*lo, *hi],
        other => return Err(Error::InvalidParam(format!("preprocess.noise_range must have 2 values, got {other:?}"))),
    };
    let opts = NoiseFftOptions {
        noise_range: [lo, hi],
        noise_method: params.noise_method,
        max_num_samples_fft: params.max_num_samples_fft,
    };
    let tasks: Vec<NoiseBlock> = (0..d)
        .step_by(noise_block(fov.frames()))
        .map(|s| NoiseBlock { rows: fov.rows(s..(s + noise_block(fov.frames())).min(d)), opts })
        .collect();
    let (out, stats) = exec.map(tasks)?;
    Ok((out.concat(), Some(stats)))
}

// ---------------------------------------------------------------------------------------------
// Fit
// ---------------------------------------------------------------------------------------------

/// `CNMF.fit(images)`: with `patch.rf` set, CaImAn's patch branch
/// ([`crate::patches::fit_patches`]: per-patch initialisation, assembly, merging until stable, a
/// temporal update); otherwise initialisation from scratch, then (unless `patch.only_init`) the
/// refinement. See the module doc for the exact order.
///
/// # Errors
/// [`Error::InvalidParam`] for a parameter out of range; data errors of the stages;
/// [`Error::Exec`] when a worker fails.
pub fn fit<E: Executor>(fov: &Fov<'_>, params: &CnmfParams, exec: &E) -> Result<(Estimates, FitReport)> {
    if params.patch.rf.is_some() {
        return crate::patches::fit_patches(fov, params, exec);
    }
    fit_from(fov, params, None, exec)
}

/// `CNMF.fit` where `start` (when given) replaces the initialisation — CaImAn's fit with
/// `estimates.A` already set (refit, seeded CNMF). Its `A`, `C`, `b`, `f` are used as they are,
/// and its pixel noise `sn`, when it has one for every pixel, replaces the pre-processing (CaImAn
/// recomputes it from the same movie, to the same values).
///
/// # Errors
/// As [`fit`], plus [`Error::ShapeMismatch`] if `start` does not fit the movie and
/// [`Error::InvalidParam`] if `patch.rf` is set (a fit from given components is a single field
/// of view).
pub fn fit_from<E: Executor>(
    fov: &Fov<'_>,
    params: &CnmfParams,
    start: Option<Estimates>,
    exec: &E,
) -> Result<(Estimates, FitReport)> {
    if params.patch.rf.is_some() {
        return Err(Error::InvalidParam(
            "patch.rf is set: a fit from given components runs on the whole field of view (set rf to None)".into(),
        ));
    }
    let mut report = FitReport::default();
    let par = main_thread_par(exec);

    // The pixel noise depends on the movie only: a start that carries it (a refit) reuses it.
    let known_sn = start.as_ref().and_then(|e| e.sn.clone()).filter(|sn| sn.len() == fov.pixels());
    let sn = match known_sn {
        Some(sn) if params.preprocess.sn.is_none() => sn,
        _ => {
            let t0 = Instant::now();
            let (sn, stats) = preprocess(fov, &params.preprocess, exec)?;
            report.record("preprocess", t0, 0, stats.as_ref());
            sn
        }
    };

    let mut est = match start {
        Some(e) => {
            check_start(&e, fov)?;
            e
        }
        None => {
            let t0 = Instant::now();
            let k = params.init.k.unwrap_or(30);
            let init = crate::init::initialize_components(fov.yr, fov.dims, &params.init, true, par)?;
            let mut e = Estimates::new(fov.dims, init.a, init.c, init.b, init.f)?;
            e.center = Some(init.center);
            report.record("initialize", t0, e.n_components(), None);
            tracing::debug!(requested = k, found = e.n_components(), "initialisation");
            e
        }
    };
    est.sn = Some(sn.clone());

    if params.patch.only_init {
        let t0 = Instant::now();
        est.compute_residuals_fov(fov, exec)?;
        est.bl = None;
        est.c1 = None;
        est.neurons_sn = None;
        est.normalize_components();
        report.record("residuals", t0, est.n_components(), None);
        return Ok((est, report));
    }

    // First spatial update (use_init = True).
    spatial_step(fov, &mut est, &sn, params, exec, &mut report)?;
    // First temporal update: p = 0 (preprocess.p when skipping the refinement).
    let p_first = if params.patch.skip_refinement { params.preprocess.p } else { 0 };
    temporal_step(fov, &mut est, params, p_first, exec, &mut report)?;

    if !params.patch.skip_refinement {
        if params.merging.do_merge && est.n_components() > 1 {
            let t0 = Instant::now();
            let mut temporal = params.temporal.clone();
            temporal.p = p_first;
            let out = crate::merging::merge_components(fov, &est, &params.merging, &temporal, 50, true, exec)?;
            tracing::info!(merged = out.n_merged, "merging");
            est = out.estimates;
            report.record("merge", t0, est.n_components(), None);
        }
        spatial_step(fov, &mut est, &sn, params, exec, &mut report)?;
        temporal_step(fov, &mut est, params, params.preprocess.p, exec, &mut report)?;
    }
    est.normalize_components();
    est.center = Some(est.centers_of_mass());
    Ok((est, report))
}

/// Seeded CNMF: CaImAn's fit with `estimates.A` set to given masks (`Ain`). The masks (any
/// non-negative footprints, usually binary) give the initial traces and background through
/// [`crate::init::seeded_initialization`] (background from the pixels outside every mask), and
/// the fit continues as [`fit_from`].
///
/// # Errors
/// As [`fit_from`] and [`crate::init::seeded_initialization`].
pub fn fit_seeded<E: Executor>(
    fov: &Fov<'_>,
    params: &CnmfParams,
    masks: &crate::sparse::CscMatrix,
    exec: &E,
) -> Result<(Estimates, FitReport)> {
    let t0 = Instant::now();
    let nb = usize::try_from(params.init.nb.max(0)).unwrap_or(0);
    let init = crate::init::seeded_initialization(fov.yr, fov.dims, masks, nb, main_thread_par(exec))?;
    let mut start = Estimates::new(fov.dims, init.a, init.c, init.b, init.f)?;
    start.center = Some(init.center);
    let mut report = FitReport::default();
    report.record("seeded init", t0, start.n_components(), None);
    let (est, r) = fit_from(fov, params, Some(start), exec)?;
    report.extend(r);
    Ok((est, report))
}

fn check_start(e: &Estimates, fov: &Fov<'_>) -> Result<()> {
    if e.dims != fov.dims || e.frames() != fov.frames() {
        return Err(Error::ShapeMismatch {
            what: "initial components (dims and frames of the movie)",
            expected: vec![fov.dims.d1, fov.dims.d2, fov.dims.d3, fov.frames()],
            got: vec![e.dims.d1, e.dims.d2, e.dims.d3, e.frames()],
        });
    }
    Ok(())
}

fn spatial_step<E: Executor>(
    fov: &Fov<'_>,
    est: &mut Estimates,
    sn: &[f64],
    params: &CnmfParams,
    exec: &E,
    report: &mut FitReport,
) -> Result<()> {
    let t0 = Instant::now();
    let (res, stats) = crate::spatial::update_spatial_components(
        fov,
        est.c.view(),
        est.f.view(),
        &est.a,
        est.b.view(),
        sn,
        &params.spatial,
        exec,
    )?;
    let kept = res.kept.clone();
    let mut next = est.subset(&kept);
    next.a = res.a;
    next.c = res.c;
    next.b = res.b;
    next.f = res.f;
    next.sn = est.sn.clone();
    next.discarded = est.discarded.take();
    *est = next;
    report.record("spatial", t0, est.n_components(), Some(&stats));
    Ok(())
}

fn temporal_step<E: Executor>(
    fov: &Fov<'_>,
    est: &mut Estimates,
    params: &CnmfParams,
    p: usize,
    exec: &E,
    report: &mut FitReport,
) -> Result<()> {
    let t0 = Instant::now();
    let mut temporal = params.temporal.clone();
    temporal.p = p;
    let (res, stats) = crate::temporal::update_temporal_components(
        fov,
        &est.a,
        est.b.view(),
        est.c.view(),
        est.f.view(),
        &temporal,
        exec,
    )?;
    let next = res.into_estimates(est);
    *est = next;
    report.record(if p == 0 { "temporal (p = 0)" } else { "temporal" }, t0, est.n_components(), Some(&stats));
    Ok(())
}

/// CaImAn's `refit`: the params CaImAn uses for it (`rf = None`, `only_init = False`) and a full
/// no-patch fit seeded by the accepted components of `est` (all of them when it was not
/// evaluated). The discarded components of `est` are not carried over (CaImAn's `refit` keeps
/// them only in the original object).
///
/// # Errors
/// As [`fit_from`].
pub fn refit<E: Executor>(
    fov: &Fov<'_>,
    params: &CnmfParams,
    est: &Estimates,
    exec: &E,
) -> Result<(Estimates, CnmfParams, FitReport)> {
    let mut p = params.clone();
    p.patch.rf = None;
    p.patch.only_init = false;
    let mut seed = est.clone();
    if seed.idx_components.is_some() {
        seed.select_components(None)?;
    }
    seed.discarded = None;
    let seed = seeded_copy(seed);
    let (e, report) = fit_from(fov, &p, Some(seed), exec)?;
    Ok((e, p, report))
}

/// Keeps what a seeded fit starts from (`A`, `C`, `b`, `f`, centres, pixel noise) and clears
/// the rest.
fn seeded_copy(e: Estimates) -> Estimates {
    let mut s = Estimates::new(e.dims, e.a, e.c, e.b, e.f).expect("shapes of a valid Estimates");
    s.center = e.center;
    s.sn = e.sn;
    s
}

/// What [`run_pipeline`] did: the refitted, evaluated estimates with ΔF/F, the params the refit
/// used, and the stage reports of every step.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// The final estimates (all components kept; accepted ones in `idx_components`).
    pub estimates: Estimates,
    /// The params after the refit (`rf = None`, `only_init = False`).
    pub params: CnmfParams,
    /// Every stage.
    pub report: FitReport,
}

/// CaImAn's single-field-of-view pipeline (`demo_pipeline` without motion correction):
/// `fit` → `refit` → `evaluate_components` → `detrend_df_f(quantileMin = 8, frames_window = 250)`.
/// Components are not removed (`select_components` is left to the caller).
///
/// # Errors
/// As the stages.
pub fn run_pipeline<E: Executor>(fov: &Fov<'_>, params: &CnmfParams, exec: &E) -> Result<PipelineOutput> {
    run_pipeline_with(fov, params, exec, &mut |_| {})
}

/// [`run_pipeline`] that calls `step_done` with the name of each of its four steps (`fit`,
/// `refit`, `evaluate`, `dff`) as it completes (for progress displays).
///
/// # Errors
/// As the stages.
pub fn run_pipeline_with<E: Executor>(
    fov: &Fov<'_>,
    params: &CnmfParams,
    exec: &E,
    step_done: &mut dyn FnMut(&str),
) -> Result<PipelineOutput> {
    let (est, mut report) = fit(fov, params, exec)?;
    step_done("fit");
    let (mut est, params, r2) = refit(fov, params, &est, exec)?;
    report.extend(r2);
    step_done("refit");
    let t0 = Instant::now();
    let stats = crate::quality::evaluate_components(fov, &mut est, &params, exec)?;
    report.record("evaluate", t0, est.n_components(), Some(&stats));
    step_done("evaluate");
    let t0 = Instant::now();
    compute_dff(&mut est, exec)?;
    report.record("dff", t0, est.n_components(), None);
    step_done("dff");
    Ok(PipelineOutput { estimates: est, params, report })
}

/// `detrend_df_f(quantileMin = 8, frames_window = 250)` of the estimates into `f_dff`.
///
/// # Errors
/// As [`crate::dff::detrend_df_f_with`].
pub fn compute_dff<E: Executor>(est: &mut Estimates, exec: &E) -> Result<()> {
    let opts = crate::dff::DffOptions { quantile_min: 8.0, frames_window: Some(250), ..Default::default() };
    let b: Array2<f64> = est.b.mapv(f64::from);
    let dff = crate::dff::detrend_df_f_with(
        &est.a,
        Some(b.view()),
        est.c.view(),
        Some(est.f.view()),
        est.yr_a.as_ref().map(|y| y.view()),
        &opts,
        exec,
    )?;
    est.f_dff = Some(dff);
    Ok(())
}
