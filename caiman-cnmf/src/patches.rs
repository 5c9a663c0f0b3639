//! CNMF over overlapping patches: CaImAn's `cluster.extract_patch_coordinates`,
//! `map_reduce.cnmf_patches` / `run_CNMF_patches` and the patch branch of `CNMF.fit` (catalog
//! §4.2 step 5, §4.9).
//!
//! * [`patch_grid`]: per axis, centres `rf, rf + (2rf − stride), …` strictly below `dim − rf`,
//!   plus a last centre at `dim − rf`; a patch is centre ± `rf` (clipped), so consecutive patches
//!   overlap by `stride + 1` pixels; `border_pix` trims the edges of the field of view.
//! * [`PatchFit`] (task `caiman_cnmf.patch_fit`): one patch. Its movie rows are read from the
//!   C-order memmap (one contiguous run of rows per column of the box), taken from a shared
//!   in-memory movie, or carried inline. A static patch (`Σ|diff|` over time ≤ 0.1) gives
//!   nothing; otherwise [`crate::cnmf::fit`] runs on it with CaImAn's per-patch parameters
//!   (`rf = stride = None`, `n_processes = 1`, `nb = nb_patch` in `init`/`spatial`/`temporal`,
//!   `p = p_patch` in `preprocess`/`temporal`), on a [`Linear`] executor using the task's inner
//!   threads. With the default `only_init` that is initialisation + residuals + normalisation.
//! * [`run_cnmf_patches`]: maps the patches, embeds their components into the field of view
//!   (`A_tot`, `C_tot`, `YrA_tot`, pixel noise with the last patch winning in overlaps), averages
//!   footprints in overlaps (`diag(1/(mask + eps))`, unless `del_duplicates`), and recombines
//!   the patch backgrounds according to `low_rank_background`:
//!   * `Some(true)`: NMF of `F_tot` with `init.nb` components (`tol 1e-10`, `max_iter 100`), then
//!     CaImAn's 100 alternating least-squares iterations on `Bm = diag(1/mask)·B_tot`:
//!     `f ← f/(‖f‖ + eps)`, `b = max(Bm F_tot fᵀ (ffᵀ)⁻¹, 0)`, `f = (bᵀb)⁻¹ (Bmᵀb)ᵀ F_tot`
//!     (pseudo-inverse where numpy's `inv`/`solve` raise on a singular matrix), unit-norm `b`;
//!   * `Some(false)`: every patch keeps its background, normalised, with the pixels already
//!     claimed by an earlier patch background zeroed (CaImAn's `processed_idx` rule, including
//!     its `processed_idx_prev` fallback for patches with several backgrounds); footprints are
//!     normalised and `C`, `YrA` scaled;
//!   * `None`: every patch background kept, scaled by `1/mask`.
//! * [`fit_patches`]: `CNMF.fit` with `rf` set, 2-photon branch: [`run_cnmf_patches`]; error if a
//!   background column is empty; `bl`, `c1`, `g`, `neurons_sn` cleared; `merge_components` with
//!   `mx = ∞` repeated until nothing merges (whatever `do_merge` says, as CaImAn); the temporal
//!   update with `temporal.p`; `normalize_components`.
//!
//! Deliberate deviations from CaImAn:
//! * The NMF start of the low-rank background is our deterministic NNDSVDa (CaImAn's
//!   `'nndsvdar'` fills zeros with random values, [Q]); `F_tot` is clipped at 0 before it (it is
//!   non-negative whenever the patches ran CaImAn's initialisation; scikit-learn would raise on
//!   negative values). The background recombination runs in `f64` (CaImAn: `float32`), and
//!   `C_tot`, `YrA_tot`, `F_tot` stay `f64` (CaImAn stores them as `float32`).
//! * A `stride ≥ 2·rf` is an error (CaImAn raises for `stride = 2·rf` — a zero `range` step —
//!   and silently covers only the last patch for larger strides); so are `rf = 0`, a border that
//!   leaves no pixel, and `border_pix > 0` in 3-D (CaImAn raises too).
//! * The default stride (`stride = None`) is `int(0.2·rf)` per axis (CaImAn computes
//!   `int(rf·2·0.1)`, which fails for per-axis `rf` lists).
//! * `patch.remove_very_bad_comps` is not implemented inside the patches (default false);
//!   1-photon patch mode (`center_psf`, CNMF-E) is an error.
//! * `center` is set to the centres of mass of the final footprints (CaImAn leaves it `None`
//!   after a patch fit).
//!
//! Determinism: patch results come back in patch order and are assembled sequentially, so the
//! result does not depend on the executor or its worker count, only (through the inner kernels)
//! on the inner-thread count of the tasks.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use caiman_io::Dims;
use caiman_io::mmap::PixelRowReader;
use caiman_parallel::{Executor, Linear, Par, Registry, RunStats, Task, TaskCtx, TaskError};

use crate::cnmf::{FitReport, main_thread_par};
use crate::error::task_err;
use crate::estimates::{EPS_F32, Estimates};
use crate::params::CnmfParams;
use crate::pixels::{Fov, RowGather};
use crate::sparse::CscMatrix;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Patch grid
// ---------------------------------------------------------------------------------------------

/// One patch of the field of view: its box and its pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchBox {
    /// Per spatial axis (rows, columns[, planes]), the pixel range of the box.
    pub ranges: Vec<Range<usize>>,
    /// The box's pixels as Fortran-order flat indices of the field of view, sorted.
    pub pixels: Vec<usize>,
}

impl PatchBox {
    /// The frame dimensions of the patch.
    pub fn dims(&self) -> Dims {
        let len = |a: usize| self.ranges.get(a).map_or(1, ExactSizeIterator::len);
        Dims { d1: len(0), d2: len(1), d3: len(2) }
    }

    /// The patch's pixels as runs `(first, count)` of consecutive Fortran-order indices of a
    /// field of view of `full` dims (one run per column and plane of the box), in pixel order.
    pub fn runs(&self, full: Dims) -> Vec<(usize, usize)> {
        let rows = self.ranges.first().cloned().unwrap_or(0..0);
        let cols = self.ranges.get(1).cloned().unwrap_or(0..1);
        let planes = self.ranges.get(2).cloned().unwrap_or(0..1);
        let mut out = Vec::with_capacity(cols.len() * planes.len());
        for k in planes {
            for j in cols.clone() {
                out.push((rows.start + full.d1 * j + full.d1 * full.d2 * k, rows.len()));
            }
        }
        out
    }
}

/// CaImAn's `cluster.extract_patch_coordinates(dims, rf, stride, border_pix)`: per axis, patch
/// centres `rf, rf + (2rf − stride), …` strictly below `dim − rf` plus a last centre at
/// `dim − rf` (dims reduced by `2·border_pix`); a patch is centre ± `rf` inclusive, clipped to
/// the field of view, then shifted by `border_pix`. `rf` and `stride` hold one value for every
/// axis or one per axis (2 for planar, 3 for volumes). Patches are listed with the first axis
/// outermost; each carries its box and its sorted Fortran-order pixel indices.
///
/// # Errors
/// [`Error::Empty`] for a field of view without pixels; [`Error::InvalidParam`] for `rf`/`stride`
/// of the wrong length, `rf = 0`, `stride ≥ 2·rf` on some axis, a `border_pix` that leaves no
/// pixel, or `border_pix > 0` on a volume (CaImAn raises too).
pub fn patch_grid(dims: Dims, rf: &[usize], stride: &[usize], border_pix: usize) -> Result<Vec<PatchBox>> {
    if dims.pixels() == 0 {
        return Err(Error::Empty { what: "field of view (no pixels)" });
    }
    let nd = if dims.d3 > 1 { 3 } else { 2 };
    let per_axis = |v: &[usize], name: &str| -> Result<Vec<usize>> {
        match v.len() {
            1 => Ok(vec![v[0]; nd]),
            n if n == nd => Ok(v.to_vec()),
            n => Err(Error::InvalidParam(format!("patch.{name} has {n} values for {nd} spatial axes"))),
        }
    };
    let rf = per_axis(rf, "rf")?;
    let stride = per_axis(stride, "stride")?;
    if nd == 3 && border_pix > 0 {
        return Err(Error::InvalidParam("patch.border_pix must be 0 for 3-D data (as in CaImAn)".into()));
    }
    let full = [dims.d1, dims.d2, dims.d3];
    let mut axes: Vec<Vec<Range<usize>>> = Vec::with_capacity(3);
    for ax in 0..nd {
        let (r, st) = (rf[ax], stride[ax]);
        if r == 0 {
            return Err(Error::InvalidParam(format!("patch.rf must be ≥ 1 on axis {ax}")));
        }
        if st >= 2 * r {
            return Err(Error::InvalidParam(format!(
                "patch.stride ({st}) must be smaller than 2·rf ({}) on axis {ax}: the stride is the overlap of \
                 consecutive patches",
                2 * r
            )));
        }
        let eff = full[ax] as i64 - 2 * border_pix as i64;
        if eff <= 0 {
            return Err(Error::InvalidParam(format!(
                "patch.border_pix {border_pix} leaves no pixel on axis {ax} (size {})",
                full[ax]
            )));
        }
        let (r, step, bp) = (r as i64, (2 * r - st) as i64, border_pix as i64);
        let mut centres = Vec::new();
        let mut c = r;
        while c < eff - r {
            centres.push(c);
            c += step;
        }
        centres.push(eff - r);
        axes.push(
            centres
                .iter()
                .map(|&c| {
                    let lo = (c - r).max(0) + bp;
                    let hi = (c + r + 1).min(eff) + bp;
                    lo as usize..hi as usize
                })
                .collect(),
        );
    }
    if nd == 2 {
        axes.push(std::iter::once(0..1).collect());
    }
    let mut out = Vec::with_capacity(axes.iter().map(Vec::len).product());
    for r0 in &axes[0] {
        for r1 in &axes[1] {
            for r2 in &axes[2] {
                let mut b = PatchBox { ranges: vec![r0.clone(), r1.clone()], pixels: Vec::new() };
                if nd == 3 {
                    b.ranges.push(r2.clone());
                }
                b.pixels = b.runs(dims).into_iter().flat_map(|(s, n)| s..s + n).collect();
                out.push(b);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The patch task
// ---------------------------------------------------------------------------------------------

/// Where a [`PatchFit`] gets its movie rows.
#[derive(Debug, Clone)]
pub enum PatchSource {
    /// A C-order CaImAn memmap holding the whole field of view (the task reads its pixels only).
    Mmap {
        /// The memmap file.
        path: PathBuf,
    },
    /// The whole `Yr` shared in memory (in-process executors; serialised, only the patch's rows
    /// travel, as [`PatchSource::Inline`]).
    Shared {
        /// The whole `Yr` (pixels × frames).
        yr: Arc<Array2<f32>>,
    },
    /// The patch's rows, pixel after pixel (`pixels × frames` values).
    Inline {
        /// The values.
        values: Vec<f32>,
    },
}

/// One patch's CNMF fit, as a task (`caiman_cnmf.patch_fit`): CaImAn's `cnmf_patches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "WirePatchFit", from = "WirePatchFit")]
pub struct PatchFit {
    /// Dimensions of the whole field of view.
    pub dims: Dims,
    /// Frames of the movie.
    pub frames: usize,
    /// The patch.
    pub patch: PatchBox,
    /// The run's parameters as JSON (serde layout of [`CnmfParams`]); the per-patch changes are
    /// applied in the task.
    pub params_json: String,
    /// The movie rows.
    pub source: PatchSource,
}

#[derive(Serialize, Deserialize)]
enum WireSource {
    Mmap { path: PathBuf },
    Inline { values: Vec<f32> },
}

#[derive(Serialize, Deserialize)]
struct WirePatchFit {
    dims: Dims,
    frames: usize,
    patch: PatchBox,
    params_json: String,
    source: WireSource,
}

impl From<PatchFit> for WirePatchFit {
    fn from(t: PatchFit) -> Self {
        let source = match t.source {
            PatchSource::Mmap { path } => WireSource::Mmap { path },
            PatchSource::Inline { values } => WireSource::Inline { values },
            // A movie that does not hold the patch gives no rows (the task then fails on the shape).
            PatchSource::Shared { yr } => {
                WireSource::Inline { values: gather_rows(yr.view(), &t.patch.runs(t.dims)).unwrap_or_default() }
            }
        };
        WirePatchFit { dims: t.dims, frames: t.frames, patch: t.patch, params_json: t.params_json, source }
    }
}

impl From<WirePatchFit> for PatchFit {
    fn from(w: WirePatchFit) -> Self {
        let source = match w.source {
            WireSource::Mmap { path } => PatchSource::Mmap { path },
            WireSource::Inline { values } => PatchSource::Inline { values },
        };
        PatchFit { dims: w.dims, frames: w.frames, patch: w.patch, params_json: w.params_json, source }
    }
}

/// The rows of `runs` read through `g`, concatenated.
fn gather_runs(g: &RowGather<'_>, runs: &[(usize, usize)]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(runs.iter().map(|r| r.1).sum::<usize>() * g.frames());
    for &(s, c) in runs {
        g.append(s, c, &mut out)?;
    }
    Ok(out)
}

/// The rows of `runs` of the in-memory `yr`, concatenated.
fn gather_rows(yr: ArrayView2<'_, f32>, runs: &[(usize, usize)]) -> Result<Vec<f32>> {
    gather_runs(&RowGather::View { rows: yr, first: 0 }, runs)
}

/// What one patch returns (footprints with patch-local pixel indices, Fortran order in the box).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOutput {
    /// Components `K` of the patch.
    pub k: usize,
    /// Frames `T`.
    pub frames: usize,
    /// `A` (patch pixels × K), CSC column pointers.
    pub a_indptr: Vec<usize>,
    /// `A` row (patch pixel) indices.
    pub a_indices: Vec<usize>,
    /// `A` values.
    pub a_data: Vec<f32>,
    /// `C`, `K × T` row-major.
    pub c: Vec<f64>,
    /// `YrA`, `K × T` row-major.
    pub yr_a: Vec<f64>,
    /// Background components `nb`.
    pub nb: usize,
    /// `b`, column after column (`nb` columns of the patch's pixels).
    pub b: Vec<f32>,
    /// `f`, `nb × T` row-major.
    pub f: Vec<f64>,
    /// Pixel noise of the patch's pixels.
    pub sn: Vec<f64>,
    /// `S` (`K × T`), when deconvolved.
    pub s: Option<Vec<f64>>,
    /// Baselines, when deconvolved.
    pub bl: Option<Vec<f64>>,
    /// Initial values, when deconvolved.
    pub c1: Option<Vec<f64>>,
    /// Trace noise, when deconvolved.
    pub neurons_sn: Option<Vec<f64>>,
    /// AR coefficients, when deconvolved.
    pub g: Option<Vec<Vec<f64>>>,
}

impl PatchOutput {
    fn from_estimates(e: &Estimates, n_pix: usize) -> Self {
        let (k, t) = (e.n_components(), e.frames());
        let flat = |m: &Array2<f64>| m.iter().copied().collect::<Vec<f64>>();
        PatchOutput {
            k,
            frames: t,
            a_indptr: e.a.indptr().to_vec(),
            a_indices: e.a.indices().to_vec(),
            a_data: e.a.data().to_vec(),
            c: flat(&e.c),
            yr_a: e.yr_a.as_ref().map_or_else(|| vec![0.0; k * t], flat),
            nb: e.b.ncols(),
            b: e.b.t().iter().copied().collect(),
            f: flat(&e.f),
            sn: e.sn.clone().unwrap_or_else(|| vec![0.0; n_pix]),
            s: e.s.as_ref().map(flat),
            bl: e.bl.clone(),
            c1: e.c1.clone(),
            neurons_sn: e.neurons_sn.clone(),
            g: e.g.clone(),
        }
    }
}

/// CaImAn's per-patch parameters (`cnmf_patches`): `rf = stride = None`, `n_processes = 1`,
/// `nb = nb_patch` in `init`, `spatial` and `temporal`, `p = p_patch` in `preprocess` and
/// `temporal`; `data.dims` the patch's.
pub fn patch_params(params: &CnmfParams, patch_dims: Dims) -> CnmfParams {
    let mut q = params.clone();
    q.patch.rf = None;
    q.patch.stride = None;
    q.patch.n_processes = 1;
    q.init.nb = q.patch.nb_patch;
    q.spatial.nb = q.patch.nb_patch;
    q.temporal.nb = q.patch.nb_patch;
    q.preprocess.p = q.patch.p_patch;
    q.temporal.p = q.patch.p_patch;
    let mut dv = vec![patch_dims.d1, patch_dims.d2];
    if patch_dims.d3 > 1 {
        dv.push(patch_dims.d3);
    }
    q.data.dims = Some(dv);
    q
}

impl PatchFit {
    /// The rows of the patch (`pixels × frames`).
    fn rows(&self) -> Result<Array2<f32>> {
        let pd = self.patch.dims();
        let (n, t) = (pd.pixels(), self.frames);
        let runs = self.patch.runs(self.dims);
        let outside =
            || Error::InvalidParam(format!("patch {:?} lies outside the movie of {:?}", self.patch.ranges, self.dims));
        let values = match &self.source {
            PatchSource::Inline { values } => values.clone(),
            PatchSource::Shared { yr } => {
                check_movie(yr.dim(), self.dims.pixels(), t)?;
                gather_rows(yr.view(), &runs).map_err(|_| outside())?
            }
            PatchSource::Mmap { path } => {
                // Positioned reads of the box's runs of rows, not a map (see `PixelRowReader`).
                let rdr = PixelRowReader::open(path)?;
                check_movie((rdr.pixels(), rdr.frames()), self.dims.pixels(), t)?;
                let count = rdr.pixels();
                gather_runs(&RowGather::File { rdr, first: 0, count }, &runs)?
            }
        };
        if values.len() != n * t {
            return Err(Error::ShapeMismatch {
                what: "patch rows (pixels × frames)",
                expected: vec![n, t],
                got: vec![values.len()],
            });
        }
        Array2::from_shape_vec((n, t), values).map_err(|e| Error::InvalidParam(e.to_string()))
    }

    /// Runs the patch's fit with `par` inner threads (`None` for a static patch).
    ///
    /// # Errors
    /// Bad parameters, unreadable rows, and the errors of [`crate::cnmf::fit`].
    pub fn execute(&self, par: Par) -> Result<Option<PatchOutput>> {
        let params: CnmfParams = serde_json::from_str(&self.params_json)
            .map_err(|e| Error::InvalidParam(format!("patch task parameters: {e}")))?;
        let yr = self.rows()?;
        // CaImAn: np.sum(np.abs(np.diff(images.reshape(T, -1).T))) > 0.1, else the patch is skipped.
        let mut tv = 0.0f64;
        for row in yr.rows() {
            tv += row.windows(2).into_iter().map(|w| f64::from((w[1] - w[0]).abs())).sum::<f64>();
        }
        if tv.is_nan() {
            return Err(Error::NonFinite { what: "movie (CNMF does not accept NaN or infinite pixels)" });
        }
        if tv <= 0.1 {
            return Ok(None);
        }
        let pd = self.patch.dims();
        let fov = Fov::new(pd, yr.view())?;
        let p = patch_params(&params, pd);
        let (est, _) = crate::cnmf::fit(&fov, &p, &Linear::with_inner_threads(Some(par.degree())))?;
        Ok(Some(PatchOutput::from_estimates(&est, pd.pixels())))
    }
}

fn check_movie(dim: (usize, usize), d: usize, t: usize) -> Result<()> {
    if dim != (d, t) {
        return Err(Error::ShapeMismatch {
            what: "movie of the patch task (pixels × frames)",
            expected: vec![d, t],
            got: vec![dim.0, dim.1],
        });
    }
    Ok(())
}

impl Task for PatchFit {
    const NAME: &'static str = "caiman_cnmf.patch_fit";
    type Output = Option<PatchOutput>;

    fn run(self, ctx: &TaskCtx) -> std::result::Result<Option<PatchOutput>, TaskError> {
        self.execute(ctx.par()).map_err(task_err)
    }
}

/// Registers the task types of this module.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<PatchFit>()
}

// ---------------------------------------------------------------------------------------------
// run_CNMF_patches
// ---------------------------------------------------------------------------------------------

/// `rf` and `stride` per axis for a run (`stride = None` → `int(0.2·rf)`).
fn rf_stride(params: &CnmfParams, dims: Dims) -> Result<(Vec<usize>, Vec<usize>)> {
    let rf = params
        .patch
        .rf
        .as_ref()
        .ok_or_else(|| Error::InvalidParam("patch.rf is None: no patches to run (use cnmf::fit)".into()))?;
    let nd = if dims.d3 > 1 { 3 } else { 2 };
    let rfs: Vec<usize> = (0..nd).map(|a| rf.get(a)).collect();
    let strides: Vec<usize> = match &params.patch.stride {
        Some(s) => (0..nd).map(|a| s.get(a)).collect(),
        None => rfs.iter().map(|&r| (r as f64 * 2.0 * 0.1) as usize).collect(),
    };
    Ok((rfs, strides))
}

/// The patch tasks of a run (one per patch of [`patch_grid`]).
///
/// # Errors
/// As [`patch_grid`]; [`Error::InvalidParam`] if `patch.rf` is unset.
pub fn patch_tasks(fov: &Fov<'_>, params: &CnmfParams) -> Result<Vec<PatchFit>> {
    let (grid, params_json) = grid_and_json(fov, params)?;
    Ok(grid.into_iter().map(|patch| patch_task(fov, patch, &params_json)).collect())
}

/// The patch grid of `fov` and the parameters as JSON (what every task carries).
fn grid_and_json(fov: &Fov<'_>, params: &CnmfParams) -> Result<(Vec<PatchBox>, String)> {
    let (rfs, strides) = rf_stride(params, fov.dims)?;
    let grid = patch_grid(fov.dims, &rfs, &strides, params.patch.border_pix)?;
    let params_json =
        serde_json::to_string(params).map_err(|e| Error::InvalidParam(format!("parameters to JSON: {e}")))?;
    Ok((grid, params_json))
}

/// The task of one patch: where it reads its pixels (the memmap, the shared movie, or a copy).
fn patch_task(fov: &Fov<'_>, patch: PatchBox, params_json: &str) -> PatchFit {
    let source = match (fov.mmap, fov.shared) {
        (Some(path), _) => PatchSource::Mmap { path: path.to_path_buf() },
        (None, Some(yr)) => PatchSource::Shared { yr: Arc::clone(yr) },
        (None, None) => PatchSource::Inline { values: gather_rows(fov.yr, &patch.runs(fov.dims)).unwrap_or_default() },
    };
    PatchFit { dims: fov.dims, frames: fov.frames(), patch, params_json: params_json.to_owned(), source }
}

/// Working memory of one patch fit, in units of its movie box (`pixels × T × 4` bytes): the box,
/// the normalised and residual copies of initialisation, the downsampled movie and the HALS
/// products — measured peak of a worker process over its box is 5–7× on CaImAn's reference
/// parameters.
pub const PATCH_WORKING_SET: u64 = 8;

/// Bytes one patch fit of `pixels` pixels over `frames` frames needs (see
/// [`PATCH_WORKING_SET`]).
pub fn patch_bytes(pixels: usize, frames: usize) -> u64 {
    PATCH_WORKING_SET * pixels as u64 * frames as u64 * 4
}

/// How many patches may be fitted at once under `fov.budget` (half of it is given to the patch
/// fits): `None` without a budget (every worker busy).
///
/// # Errors
/// [`Error::InvalidParam`] when the budget is below one patch.
pub fn patches_in_flight(fov: &Fov<'_>, largest_patch_pixels: usize) -> Result<Option<usize>> {
    let Some(budget) = fov.budget else { return Ok(None) };
    let one = patch_bytes(largest_patch_pixels, fov.frames());
    let n = budget / 2 / one.max(1);
    if n == 0 {
        return Err(Error::InvalidParam(format!(
            "the memory budget ({:.2} GiB) is below what one patch of {largest_patch_pixels} pixels × {} frames needs \
             (≈ {:.2} GiB, twice that for the budget): give a larger budget or a smaller rf",
            budget as f64 / f64::from(1u32 << 30),
            fov.frames(),
            one as f64 / f64::from(1u32 << 30)
        )));
    }
    Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)))
}

/// CaImAn's `run_CNMF_patches` (see the module docs): fits every patch through `exec` and
/// assembles the field of view's `A` (`d × K_tot`), `C`, `YrA`, pixel noise `sn` and background
/// `b`, `f`.
///
/// # Errors
/// [`Error::InvalidParam`] for unset `patch.rf`, a bad grid, `init.nb < 1` with a low-rank
/// background, or more background components than patch backgrounds; [`Error::NonFinite`] for
/// NaN footprints from a patch; errors of the patch fits ([`Error::Exec`]).
pub fn run_cnmf_patches<E: Executor>(fov: &Fov<'_>, params: &CnmfParams, exec: &E) -> Result<(Estimates, FitReport)> {
    let mut report = FitReport::default();
    let t0 = Instant::now();
    let (boxes, params_json) = grid_and_json(fov, params)?;
    let largest = boxes.iter().map(|b| b.dims().pixels()).max().unwrap_or(0);
    // Patches in one map: all of them, unless the budget allows fewer than the workers, or each
    // task carries a copy of its pixels (then a few per worker at a time).
    let chunk = match patches_in_flight(fov, largest)? {
        Some(n) if n < exec.workers() => n,
        _ if fov.mmap.is_none() && fov.shared.is_none() => 2 * exec.workers().max(1),
        _ => boxes.len().max(1),
    };
    let mut outs = Vec::with_capacity(boxes.len());
    let mut stats: Option<RunStats> = None;
    for group in boxes.chunks(chunk) {
        let tasks: Vec<PatchFit> = group.iter().map(|b| patch_task(fov, b.clone(), &params_json)).collect();
        let (o, s) = exec.map(tasks)?;
        outs.extend(o);
        stats = Some(match stats {
            Some(prev) => prev.then(&s),
            None => s,
        });
    }
    let n_comp: usize = outs.iter().flatten().map(|o| o.k).sum();
    report.record("patches", t0, n_comp, stats.as_ref());

    let t0 = Instant::now();
    let est = assemble(fov, params, &boxes, outs, main_thread_par(exec))?;
    report.record("patch assembly", t0, est.n_components(), None);
    Ok((est, report))
}

/// One embedded background column: pixels of the field of view and values.
struct BgCol {
    pixels: Vec<usize>,
    vals: Vec<f64>,
}

fn assemble(
    fov: &Fov<'_>,
    params: &CnmfParams,
    boxes: &[PatchBox],
    mut outs: Vec<Option<PatchOutput>>,
    par: Par,
) -> Result<Estimates> {
    let (d, t) = (fov.pixels(), fov.frames());
    let dims = fov.dims;
    let del_dup = params.patch.del_duplicates;

    if del_dup {
        delete_duplicates(boxes, &mut outs);
    }

    let mut mask = vec![0u32; d];
    let mut sn = vec![0.0f64; d];
    let (mut indptr, mut indices, mut data) = (vec![0usize], Vec::new(), Vec::<f32>::new());
    let (mut c_rows, mut y_rows) = (Vec::<f64>::new(), Vec::<f64>::new());
    let mut bg: Vec<BgCol> = Vec::new();
    let mut f_rows: Vec<f64> = Vec::new();
    for (bx, out) in boxes.iter().zip(&outs) {
        let Some(o) = out else { continue };
        if o.a_data.iter().any(|v| v.is_nan()) {
            return Err(Error::NonFinite { what: "footprints of a patch (CaImAn: found nans in A)" });
        }
        let px = &bx.pixels;
        check_output(o, px.len(), t)?;
        for (i, &p) in px.iter().enumerate() {
            sn[p] = o.sn[i];
            mask[p] += 1;
        }
        for m in 0..o.nb {
            let col = &o.b[m * px.len()..(m + 1) * px.len()];
            bg.push(BgCol { pixels: px.clone(), vals: col.iter().map(|&v| f64::from(v)).collect() });
            f_rows.extend_from_slice(&o.f[m * t..(m + 1) * t]);
        }
        for k in 0..o.k {
            let (lo, hi) = (o.a_indptr[k], o.a_indptr[k + 1]);
            let sum: f64 = o.a_data[lo..hi].iter().map(|&v| f64::from(v)).sum();
            if sum <= 0.0 {
                continue;
            }
            indices.extend(o.a_indices[lo..hi].iter().map(|&i| px[i]));
            data.extend_from_slice(&o.a_data[lo..hi]);
            indptr.push(indices.len());
            c_rows.extend_from_slice(&o.c[k * t..(k + 1) * t]);
            y_rows.extend_from_slice(&o.yr_a[k * t..(k + 1) * t]);
        }
    }
    let k_tot = indptr.len() - 1;
    let n_bg = bg.len();
    tracing::info!(components = k_tot, backgrounds = n_bg, "patches embedded");
    // Im = diag(1 / (mask + eps(float32))), in float32 as CaImAn.
    let im: Vec<f32> = mask.iter().map(|&m| 1.0f32 / (m as f32 + f32::EPSILON)).collect();
    if !del_dup {
        for (p, v) in indices.iter().zip(data.iter_mut()) {
            *v *= im[*p];
        }
    }
    let mut a = CscMatrix::from_parts(d, k_tot, indptr, indices, data)?;
    let mut c = Array2::from_shape_vec((k_tot, t), c_rows).map_err(|e| Error::InvalidParam(e.to_string()))?;
    let mut yr_a = Array2::from_shape_vec((k_tot, t), y_rows).map_err(|e| Error::InvalidParam(e.to_string()))?;
    let f_tot = Array2::from_shape_vec((n_bg, t), f_rows).map_err(|e| Error::InvalidParam(e.to_string()))?;

    let (b, f) = if n_bg == 0 {
        (Array2::<f32>::zeros((d, 0)), Array2::<f64>::zeros((0, t)))
    } else {
        match params.patch.low_rank_background {
            None => {
                let mut b = Array2::<f32>::zeros((d, n_bg));
                for (m, col) in bg.iter().enumerate() {
                    for (&p, &v) in col.pixels.iter().zip(&col.vals) {
                        b[[p, m]] = v as f32 * im[p];
                    }
                }
                (b, f_tot)
            }
            Some(true) => {
                let scaled: Vec<BgCol> = bg
                    .into_iter()
                    .map(|col| {
                        let vals =
                            col.pixels.iter().zip(&col.vals).map(|(&p, &v)| f64::from(v as f32 * im[p])).collect();
                        BgCol { pixels: col.pixels, vals }
                    })
                    .collect();
                let gnb = usize::try_from(params.init.nb).ok().filter(|&g| g > 0).ok_or_else(|| {
                    Error::InvalidParam(format!(
                        "init.nb = {} with patch.low_rank_background = true: the patch backgrounds are compressed into \
                         init.nb ≥ 1 components",
                        params.init.nb
                    ))
                })?;
                low_rank_background(&scaled, &f_tot, d, gnb, par)?
            }
            Some(false) => {
                // Footprints to unit norm, traces scaled.
                let na = a.col_norms();
                let inv: Vec<f64> = na.iter().map(|&n| if n > 0.0 { 1.0 / n } else { 1.0 }).collect();
                a.scale_cols(&inv);
                for (k, &n) in na.iter().enumerate() {
                    if n > 0.0 {
                        c.row_mut(k).mapv_inplace(|v| v * n);
                        yr_a.row_mut(k).mapv_inplace(|v| v * n);
                    }
                }
                per_patch_background(&bg, f_tot, d)
            }
        }
    };
    let mut est = Estimates::new(dims, a, c, b, f)?;
    est.yr_a = Some(yr_a);
    est.sn = Some(sn);
    Ok(est)
}

fn check_output(o: &PatchOutput, n_pix: usize, t: usize) -> Result<()> {
    let ok = o.frames == t
        && o.a_indptr.len() == o.k + 1
        && o.a_indptr.last() == Some(&o.a_data.len())
        && o.a_indices.len() == o.a_data.len()
        && o.a_indices.iter().all(|&i| i < n_pix)
        && o.c.len() == o.k * t
        && o.yr_a.len() == o.k * t
        && o.b.len() == o.nb * n_pix
        && o.f.len() == o.nb * t
        && o.sn.len() == n_pix;
    if ok {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: "patch result (components, pixels, frames)",
            expected: vec![o.k, n_pix, t],
            got: vec![o.a_indptr.len().saturating_sub(1), o.sn.len(), o.frames],
        })
    }
}

/// `del_duplicates`: keep, in each patch, the components whose centre of mass (CaImAn's
/// `com(A) − shape/2 + patch centre`) is closest to the centre of their own patch.
fn delete_duplicates(boxes: &[PatchBox], outs: &mut [Option<PatchOutput>]) {
    let centre = |b: &PatchBox| -> Vec<f64> { b.ranges.iter().map(|r| (r.start + r.end) as f64 / 2.0 - 0.5).collect() };
    let centres: Vec<Vec<f64>> = boxes.iter().map(centre).collect();
    for (jj, (bx, out)) in boxes.iter().zip(outs.iter_mut()).enumerate() {
        let Some(o) = out else { continue };
        let pd = bx.dims();
        let shape = [pd.d1, pd.d2, pd.d3];
        let nd = bx.ranges.len();
        let mut keep = Vec::new();
        for k in 0..o.k {
            let (lo, hi) = (o.a_indptr[k], o.a_indptr[k + 1]);
            let mut num = [0.0f64; 3];
            let mut den = 0.0f64;
            for (&i, &v) in o.a_indices[lo..hi].iter().zip(&o.a_data[lo..hi]) {
                let v = f64::from(v);
                let coord = [i % pd.d1, (i / pd.d1) % pd.d2, i / (pd.d1 * pd.d2)];
                for ax in 0..3 {
                    num[ax] += v * coord[ax] as f64;
                }
                den += v;
            }
            if den == 0.0 {
                continue;
            }
            let nc: Vec<f64> = (0..nd).map(|ax| num[ax] / den - shape[ax] as f64 / 2.0 + centres[jj][ax]).collect();
            let dist = |c: &Vec<f64>| c.iter().zip(&nc).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let mut best = 0;
            for (q, cq) in centres.iter().enumerate() {
                if dist(cq) < dist(&centres[best]) {
                    best = q;
                }
            }
            if best == jj {
                keep.push(k);
            }
        }
        if keep.len() < o.k {
            *o = select_output(o, &keep);
        }
    }
}

fn select_output(o: &PatchOutput, keep: &[usize]) -> PatchOutput {
    let t = o.frames;
    let (mut indptr, mut indices, mut data) = (vec![0usize], Vec::new(), Vec::new());
    let rows = |m: &[f64]| keep.iter().flat_map(|&k| m[k * t..(k + 1) * t].iter().copied()).collect::<Vec<f64>>();
    let pick = |v: &Vec<f64>| keep.iter().filter_map(|&k| v.get(k).copied()).collect::<Vec<f64>>();
    for &k in keep {
        let (lo, hi) = (o.a_indptr[k], o.a_indptr[k + 1]);
        indices.extend_from_slice(&o.a_indices[lo..hi]);
        data.extend_from_slice(&o.a_data[lo..hi]);
        indptr.push(indices.len());
    }
    PatchOutput {
        k: keep.len(),
        frames: t,
        a_indptr: indptr,
        a_indices: indices,
        a_data: data,
        c: rows(&o.c),
        yr_a: rows(&o.yr_a),
        nb: o.nb,
        b: o.b.clone(),
        f: o.f.clone(),
        sn: o.sn.clone(),
        s: o.s.as_deref().map(rows),
        bl: o.bl.as_ref().map(pick),
        c1: o.c1.as_ref().map(pick),
        neurons_sn: o.neurons_sn.as_ref().map(pick),
        g: o.g.as_ref().map(|g| keep.iter().filter_map(|&k| g.get(k).cloned()).collect()),
    }
}

/// `low_rank_background = False`: normalised patch backgrounds, `f` scaled, pixels already
/// claimed by an earlier patch background zeroed (CaImAn's rule, verbatim).
fn per_patch_background(bg: &[BgCol], mut f_tot: Array2<f64>, d: usize) -> (Array2<f32>, Array2<f64>) {
    let n_bg = bg.len();
    let mut b = Array2::<f32>::zeros((d, n_bg));
    for (m, col) in bg.iter().enumerate() {
        let nb = col.vals.iter().map(|v| v * v).sum::<f64>().sqrt();
        let s = if nb > 0.0 { 1.0 / nb } else { 1.0 };
        for (&p, &v) in col.pixels.iter().zip(&col.vals) {
            b[[p, m]] = (v * s) as f32;
        }
        if nb > 0.0 {
            f_tot.row_mut(m).mapv_inplace(|v| v * nb);
        }
    }
    let mut processed = vec![false; d];
    let mut prev = vec![false; d];
    for m in 0..n_bg {
        let nz: Vec<usize> = (0..d).filter(|&p| b[[p, m]] != 0.0).collect();
        let mut repeat: Vec<usize> = nz.iter().copied().filter(|&p| processed[p]).collect();
        if repeat.len() < nz.len() {
            prev.clone_from(&processed);
        } else {
            repeat = nz.iter().copied().filter(|&p| prev[p]).collect();
        }
        for &p in &nz {
            processed[p] = true;
        }
        for &p in &repeat {
            b[[p, m]] = 0.0;
        }
    }
    (b, f_tot)
}

/// `low_rank_background = True`: NMF of the patch background traces with `gnb` components, then
/// CaImAn's 100 alternating least-squares iterations on `Bm` (the patch backgrounds scaled by
/// `1/mask`), unit-norm `b`.
fn low_rank_background(
    cols: &[BgCol],
    f_tot: &Array2<f64>,
    d: usize,
    gnb: usize,
    par: Par,
) -> Result<(Array2<f32>, Array2<f64>)> {
    // Background traces with NaN are left out (CaImAn's nan_components filter).
    let keep: Vec<usize> = (0..f_tot.nrows()).filter(|&i| f_tot.row(i).iter().all(|v| v.is_finite())).collect();
    let f_tot = f_tot.select(Axis(0), &keep);
    let cols: Vec<&BgCol> = keep.iter().map(|&i| &cols[i]).collect();
    let n_bg = cols.len();
    if gnb > n_bg.min(f_tot.ncols()) {
        return Err(Error::InvalidParam(format!(
            "init.nb = {gnb} background components from {n_bg} patch backgrounds: at most min(patch backgrounds, \
             frames)"
        )));
    }
    let x = f_tot.mapv(|v| v.max(0.0) as f32);
    let opts = crate::init::NmfOptions { init: crate::init::NmfInit::Nndsvda, max_iter: 100, tol: 1e-10 };
    let mut f = crate::init::nmf(x.view(), gnb, &opts, par)?.h;
    // b is kept row-major (d × gnb) in a plain buffer: the two sparse products below are the hot loops.
    let mut b = vec![0.0f64; d * gnb];
    let mut bmtb = Array2::<f64>::zeros((n_bg, gnb));
    for _ in 0..100 {
        for mut row in f.rows_mut() {
            let n = row.iter().map(|v| v * v).sum::<f64>().sqrt() + EPS_F32;
            row.mapv_inplace(|v| v / n);
        }
        // b = max(Bm (F_tot fᵀ) (f fᵀ)⁻¹, 0)
        let g = f.dot(&f.t());
        let m = f_tot.dot(&f.t());
        let m2 = match inverse(&g) {
            Some(gi) => m.dot(&gi),
            None => m.dot(&pinv_sym(&g)),
        };
        b.fill(0.0);
        for (col, m2row) in cols.iter().zip(m2.rows()) {
            let m2row = m2row.to_vec();
            for (&p, &v) in col.pixels.iter().zip(&col.vals) {
                for (bk, &mk) in b[p * gnb..(p + 1) * gnb].iter_mut().zip(&m2row) {
                    *bk += v * mk;
                }
            }
        }
        let mut btb = Array2::<f64>::zeros((gnb, gnb));
        for bp in b.chunks_exact_mut(gnb) {
            for x in bp.iter_mut() {
                *x = x.max(0.0);
            }
            for i in 0..gnb {
                for j in 0..gnb {
                    btb[[i, j]] += bp[i] * bp[j];
                }
            }
        }
        // f = (bᵀb)⁻¹ (Bmᵀ b)ᵀ F_tot
        for (col, mut out) in cols.iter().zip(bmtb.rows_mut()) {
            let mut acc = vec![0.0f64; gnb];
            for (&p, &v) in col.pixels.iter().zip(&col.vals) {
                for (a, &bk) in acc.iter_mut().zip(&b[p * gnb..(p + 1) * gnb]) {
                    *a += v * bk;
                }
            }
            out.assign(&ndarray::ArrayView1::from(&acc));
        }
        let rhs = bmtb.t().dot(&f_tot);
        f = match solve(&btb, &rhs) {
            Some(x) => x,
            None => pinv_sym(&btb).dot(&rhs),
        };
    }
    let b = Array2::from_shape_vec((d, gnb), b).map_err(|e| Error::InvalidParam(e.to_string()))?;
    let mut b32 = Array2::<f32>::zeros((d, gnb));
    for k in 0..gnb {
        let nb = b.column(k).iter().map(|v| v * v).sum::<f64>().sqrt();
        for p in 0..d {
            b32[[p, k]] = (b[[p, k]] / (nb + EPS_F32)) as f32;
        }
        f.row_mut(k).mapv_inplace(|v| v * nb);
    }
    Ok((b32, f))
}

/// `A⁻¹` by Gauss–Jordan elimination with partial pivoting (`None` when a pivot is exactly 0,
/// where numpy raises `LinAlgError`).
fn inverse(a: &Array2<f64>) -> Option<Array2<f64>> {
    solve(a, &Array2::eye(a.nrows()))
}

/// `A⁻¹ B` by Gaussian elimination with partial pivoting (`None` for an exactly singular `A`).
fn solve(a: &Array2<f64>, rhs: &Array2<f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    let mut m = a.clone();
    let mut x = rhs.clone();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| m[[i, col]].abs().total_cmp(&m[[j, col]].abs()))?;
        if m[[piv, col]] == 0.0 || !m[[piv, col]].is_finite() {
            return None;
        }
        if piv != col {
            for j in 0..n {
                m.swap([piv, j], [col, j]);
            }
            for j in 0..x.ncols() {
                x.swap([piv, j], [col, j]);
            }
        }
        let p = m[[col, col]];
        for r in 0..n {
            if r == col {
                continue;
            }
            let fac = m[[r, col]] / p;
            if fac == 0.0 {
                continue;
            }
            for j in col..n {
                m[[r, j]] -= fac * m[[col, j]];
            }
            for j in 0..x.ncols() {
                x[[r, j]] -= fac * x[[col, j]];
            }
        }
    }
    for r in 0..n {
        let p = m[[r, r]];
        x.row_mut(r).mapv_inplace(|v| v / p);
    }
    Some(x)
}

/// Moore–Penrose pseudo-inverse of a small symmetric matrix (cyclic Jacobi eigenvalues; cut-off
/// `n·eps·max|λ|`, as `lstsq`'s default), CaImAn's `lstsq` fallback for a singular system.
fn pinv_sym(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut m = a.clone();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[[i, j]].powi(2))
            .sum();
        if off <= 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if m[[p, q]] == 0.0 {
                    continue;
                }
                let theta = (m[[q, q]] - m[[p, p]]) / (2.0 * m[[p, q]]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[[k, p]], m[[k, q]]);
                    m[[k, p]] = c * mkp - s * mkq;
                    m[[k, q]] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[[p, k]], m[[q, k]]);
                    m[[p, k]] = c * mpk - s * mqk;
                    m[[q, k]] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let lam: Vec<f64> = (0..n).map(|i| m[[i, i]]).collect();
    let lmax = lam.iter().fold(0.0f64, |a, &l| a.max(l.abs()));
    let cut = n as f64 * f64::EPSILON * lmax;
    let mut out = Array2::<f64>::zeros((n, n));
    for (k, &l) in lam.iter().enumerate() {
        if l.abs() > cut && l != 0.0 {
            for i in 0..n {
                for j in 0..n {
                    out[[i, j]] += v[[i, k]] * v[[j, k]] / l;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// CNMF.fit with patches
// ---------------------------------------------------------------------------------------------

/// `CNMF.fit` with `patch.rf` set (catalog §4.2 step 5, 2-photon branch): [`run_cnmf_patches`];
/// an error if a background column came out empty; `bl`, `c1`, `g`, `neurons_sn` cleared; merge
/// with `mx = ∞` (fast merge) until nothing merges — whatever `merging.do_merge` says, as CaImAn;
/// the temporal update with `temporal.p`; `normalize_components`; centres of mass.
///
/// # Errors
/// [`Error::InvalidParam`] for `init.center_psf` (1-photon patch mode is not implemented), unset
/// `patch.rf`, an empty background component (CaImAn: "restart with init/nb set to a lower
/// value"); errors of the stages.
pub fn fit_patches<E: Executor>(fov: &Fov<'_>, params: &CnmfParams, exec: &E) -> Result<(Estimates, FitReport)> {
    if params.init.center_psf {
        return Err(Error::InvalidParam(
            "init.center_psf = true: the 1-photon (CNMF-E) patch mode is not implemented".into(),
        ));
    }
    let (mut est, mut report) = run_cnmf_patches(fov, params, exec)?;
    if let Some(m) = (0..est.b.ncols()).find(|&m| est.b.column(m).iter().all(|&v| v == 0.0)) {
        return Err(Error::InvalidParam(format!(
            "after the patches, background component {m} is empty: restart with init.nb set to a lower value"
        )));
    }
    est.bl = None;
    est.c1 = None;
    est.g = None;
    est.neurons_sn = None;

    let t0 = Instant::now();
    let mut rounds = 0usize;
    while est.n_components() > 1 {
        let out =
            crate::merging::merge_components(fov, &est, &params.merging, &params.temporal, usize::MAX, true, exec)?;
        rounds += 1;
        let done = out.merged_rois.is_empty();
        tracing::info!(round = rounds, merged = out.n_merged, "patch merging");
        est = out.estimates;
        if done {
            break;
        }
    }
    report.record("merge", t0, est.n_components(), None);

    if est.n_components() > 0 {
        let t0 = Instant::now();
        let (res, stats) = crate::temporal::update_temporal_components(
            fov,
            &est.a,
            est.b.view(),
            est.c.view(),
            est.f.view(),
            &params.temporal,
            exec,
        )?;
        est = res.into_estimates(&mut est);
        report.record("temporal", t0, est.n_components(), Some(&stats));
    }
    est.normalize_components();
    est.center = Some(est.centers_of_mass());
    Ok((est, report))
}
