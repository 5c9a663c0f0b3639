//! Summary images of a movie: CaImAn's local correlation image (`summary_images.py::local_correlations`
//! and the chunked `movie.local_correlations`), `local_correlations_fft`, the mean, max and
//! `bin_median` images, and CNMF-E's `correlation_pnr`.
//!
//! # How it is computed
//!
//! Everything except `correlation_pnr` comes from **one streamed pass** over the frames that
//! accumulates per-pixel sufficient statistics in f64: `Σx'`, `Σx'²` and, for each neighbour
//! direction, `Σ x'_p x'_q`, where `x' = x − c` is the sample minus a per-pixel shift `c` (the
//! first frame of the chunk being accumulated, for numerical stability and so that a pixel that
//! is constant over a chunk has exactly zero variance). Memory is `O(pixels)` per task, never the
//! whole movie (the median is the exception: see below). The pass is split into [`Task`]s over
//! frame ranges, each opening the file itself; the driver adds the partial sums of each chunk in
//! task order, so every executor gives bit-identical images, and the in-memory variants run the
//! very same plan (bit-identical to the streamed result with the same options).
//!
//! From the sums, `ρ(p, q) = (Σx'_p x'_q / T − m'_p m'_q) / (σ_p σ_q)` (population σ), which is
//! CaImAn's `mean_t(z_p z_q)` for the standardised movie `z`.
//!
//! # CaImAn semantics reproduced
//!
//! * `local_correlations(Y, eight_neighbours, swap_dim=False, order_mean)`: mean of ρ over the
//!   4 or 8 in-image neighbours (3 at corners and 5 at edges with 8 neighbours), `order_mean = k`
//!   gives `(Σρᵏ/n)^{1/k}`, `order_mean = 0` the geometric mean `(Πρ)^{1/n}` (NaN for a negative
//!   product, as numpy's `power`); volumes (`d3 > 1`) always use the 6-neighbourhood. A pixel
//!   with zero variance is NaN in CaImAn (`0/0` in the standardisation), and so is every pixel
//!   whose average includes a ρ involving it; reproduced.
//! * `movie.local_correlations(frames_per_chunk=1500)` ([`Chunking`]): when `T > 3000`, the
//!   image is the maximum over chunks of 1500 frames, the last chunk extending to the end.
//! * **\[Q\] reproduced by default**: with 8 neighbours CaImAn's `local_correlations` adds two of
//!   the four diagonal terms at the wrong pixels. With `rho_d1[i,j] = ρ((i+1,j),(i,j+1))` and
//!   `rho_d2[i,j] = ρ((i,j),(i+1,j+1))`, it does `rho[1:,1:] += rho_d1` and
//!   `rho[:-1,1:] += rho_d2`, so pixel `(a,b)` receives `ρ((a,b−1),(a−1,b))` instead of its
//!   up-left correlation and `ρ((a,b−1),(a+1,b))` instead of its down-left one (pairs of two of
//!   its neighbours, not involving it). Neighbour counts are the standard ones. This was
//!   confirmed on the reference: CaImAn's `Cn.npy` differs from its own `Cn_fft.npy` by up to
//!   0.042, and this port matches `Cn.npy` only with the quirk. [`CorrOptions::caiman_diagonals`]
//!   (default `true`, as the reference) keeps it; `false` gives the true 8-neighbour mean. 4
//!   neighbours and volumes are not affected.
//! * `local_correlations_fft`: `mean_t(z · conv(z)) / conv(1)` with a zero-padded neighbour
//!   kernel. `conv(1)` is the number of in-image neighbours, so this equals the direct version
//!   (order 1, true diagonals) everywhere, borders included; it differs only at zero-variance
//!   pixels, whose `z` is 0 (CaImAn sets σ = ∞), so they contribute ρ = 0 instead of NaN. Volumes
//!   use the 26-neighbourhood with `eight_neighbours`, else 6.
//! * Mean image: `np.mean(Y, axis=0, dtype=float64)` (as `c + Σx'/T`: equal up to f64 rounding);
//!   max image: `np.max(Y, axis=0)` (exact).
//! * `bin_median(Y, window=10)` (`motion_correction.py`): `window = T` if `T < window`, the first
//!   `n·window` frames (`n = T // window`) reshaped to `(window, n, …)`, i.e. mean image `k` is the
//!   mean of the **interleaved** frames `k, k + n, k + 2n, …`, then the pixel-wise median of the
//!   `n` means (mean of the two middle ones for even `n`). Trailing frames are dropped.
//!
//! # Deliberate deviations
//!
//! * Precision: CaImAn computes these images in float32 (its movie dtype); here every sum is f64,
//!   so the images are closer to the exact values (the difference to CaImAn is float32
//!   rounding, ~1e-6; see the tests).
//! * **\[Q\] reproduced**: `movie.local_correlations` starts its chunked maximum from an image of
//!   zeros, so for `T > 3000` negative correlations are reported as 0. [`Chunking`] keeps this.
//! * **\[Q\] fixed**: in 3-D CaImAn adds the third-axis correlations without raising them to
//!   `order_mean` (and adds them to a product for `order_mean = 0`); here `order_mean` applies to
//!   every neighbour. Identical for the default `order_mean = 1`.
//! * Zero variance is decided exactly (the shifted sums are zero), not by float32 rounding luck.
//! * Non-finite samples are an error ([`Error::NonFinite`]) instead of NaN images (CaImAn's
//!   `bin_median` is NaN-aware; NaN-bordered movies must be cropped or filled first).
//! * `bin_median` needs all `T / window` window means of every pixel at once: the streamed pass
//!   keeps them as f32 (`T·d/window` values, a tenth of the movie by default); the median tasks
//!   read interleaved frame runs so that every frame is still read exactly once.
//! * `correlation_pnr` is in memory (it filters the whole movie, stored as f32 like CaImAn), with
//!   the filtering, noise ([`crate::noise::NoiseFft`]) and ratios computed in f64. **\[Q\] fixed**:
//!   pixels whose filtered trace has zero noise (constant pixels) get `pnr = 0` and contribute 0
//!   to the correlation image; CaImAn produces NaN there (`0/0`), which then spreads to their
//!   neighbours in `cn`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use caiman_io::{Dims, Movie, OpenOptions, Shape};
use caiman_parallel::{Executor, Registry, RunStats, Task, TaskCtx, TaskError};
use ndarray::{Array2, Array3, ArrayView3, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, task_err};

/// Registers this module's task types with a worker registry.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<SummaryTask>()
}

// ------------------------------------------------------------------------------------------------
// Options and results
// ------------------------------------------------------------------------------------------------

/// Which neighbours of a pixel enter its local correlation (CaImAn's `eight_neighbours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Neighbours {
    /// Up, down, left, right (`eight_neighbours=False`).
    Four,
    /// The four plus the diagonals (`eight_neighbours=True`, CaImAn's default).
    #[default]
    Eight,
}

/// CaImAn's chunked maximum for long movies (`movie.local_correlations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Chunking {
    /// Chunking applies only when the movie has more frames than this (CaImAn: 3000).
    pub min_frames: usize,
    /// Frames per chunk (CaImAn's `frames_per_chunk`, 1500); the last chunk extends to the end.
    pub frames_per_chunk: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking { min_frames: 3000, frames_per_chunk: 1500 }
    }
}

/// Options of the local correlation image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorrOptions {
    /// 4 or 8 neighbours for planar movies (volumes always use 6).
    pub neighbours: Neighbours,
    /// CaImAn's `order_mean`: `k ≠ 0` averages `ρᵏ` and takes the `k`-th root; 0 is the
    /// geometric mean. Default 1.
    pub order_mean: f64,
    /// `Some`: `movie.local_correlations`' chunked maximum; `None`: one image over all frames
    /// (`summary_images.local_correlations`). Default `None`.
    pub chunking: Option<Chunking>,
    /// Reproduce CaImAn's misplaced diagonal correlations with 8 neighbours (default `true`, see
    /// the module docs); `false` averages the true correlations with the 8 neighbours.
    pub caiman_diagonals: bool,
}

impl Default for CorrOptions {
    fn default() -> Self {
        CorrOptions { neighbours: Neighbours::Eight, order_mean: 1.0, chunking: None, caiman_diagonals: true }
    }
}

/// Options of [`summary_images`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryOptions {
    /// The correlation image (default: 8 neighbours, order 1, CaImAn's chunking for `T > 3000`).
    pub corr: CorrOptions,
    /// Also compute `local_correlations_fft` over the whole movie (default `true`).
    pub fft: bool,
    /// `Some(window)`: also compute `bin_median(movie, window)` (CaImAn's default window: 10).
    pub median_window: Option<usize>,
    /// Frames per task of the streamed pass (default 250). The split depends on the movie only,
    /// never on the number of workers, so every executor gives bit-identical images.
    pub frames_per_task: usize,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            corr: CorrOptions { chunking: Some(Chunking::default()), ..CorrOptions::default() },
            fft: true,
            median_window: None,
            frames_per_task: 250,
        }
    }
}

/// The summary images of a movie. Images are `d1 × d2 × d3` (`d3 = 1` for planar movies), row
/// `i`, column `j`, C order like the frames.
#[derive(Debug, Clone)]
pub struct SummaryImages {
    /// Frame size.
    pub dims: Dims,
    /// Number of frames.
    pub frames: usize,
    /// Local correlation image (chunked maximum when [`CorrOptions::chunking`] applies).
    pub cn: Array3<f64>,
    /// `local_correlations_fft` over all frames, if asked for.
    pub cn_fft: Option<Array3<f64>>,
    /// Mean image (f64 accumulation).
    pub mean: Array3<f64>,
    /// Max image.
    pub max: Array3<f32>,
    /// `bin_median` image, if asked for.
    pub median: Option<Array3<f64>>,
    /// Frame ranges whose correlation images were max-combined into `cn` (one range when not
    /// chunked).
    pub chunks: Vec<Range<usize>>,
    /// What the streamed pass cost (`None` for the in-memory variants).
    pub stats: Option<RunStats>,
}

/// The background filter of [`correlation_pnr`] (CaImAn's `background_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundFilter {
    /// Zero-mean Gaussian truncated to a disk (CaImAn's default `'disk'`).
    #[default]
    Disk,
    /// Gaussian blur minus a box filter of the same size (`'box'`).
    Box,
}

/// Options of [`correlation_pnr`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PnrOptions {
    /// Gaussian width per axis (CaImAn's `gSig`, as given); `None`: no spatial filtering.
    pub g_sig: Option<[f64; 2]>,
    /// Subtract the background filter (`center_psf`, default `true`); `false`: plain Gaussian blur.
    pub center_psf: bool,
    /// Which background filter `center_psf` uses.
    pub background_filter: BackgroundFilter,
}

impl Default for PnrOptions {
    fn default() -> Self {
        PnrOptions { g_sig: Some([3.0, 3.0]), center_psf: true, background_filter: BackgroundFilter::Disk }
    }
}

/// The two images of [`correlation_pnr`].
#[derive(Debug, Clone, PartialEq)]
pub struct CorrPnr {
    /// Correlation image of the filtered, noise-normalised, thresholded movie (`cn`).
    pub cn: Array2<f64>,
    /// Peak-to-noise ratio image (`pnr`).
    pub pnr: Array2<f64>,
}

// ------------------------------------------------------------------------------------------------
// Public entry points
// ------------------------------------------------------------------------------------------------

/// Summary images of a movie file in one streamed pass: local correlations (`Cn`), optionally
/// `local_correlations_fft` and `bin_median`, and the mean and max images.
///
/// The pass is split into tasks over frame ranges that `exec` runs; each task opens `path` with
/// `open_opts` itself.
///
/// # Errors
/// The file cannot be opened or read, bad options ([`Error::InvalidParam`]), non-finite samples
/// ([`Error::NonFinite`]), a failed task ([`Error::Exec`]).
pub fn summary_images<E: Executor>(
    path: impl AsRef<Path>,
    open_opts: &OpenOptions,
    opts: &SummaryOptions,
    exec: &E,
) -> Result<SummaryImages> {
    let path = path.as_ref();
    let shape = caiman_io::open(path, open_opts)?.info().shape;
    let plan = Plan::new(shape, opts)?;
    let tasks: Vec<SummaryTask> = plan
        .tasks
        .iter()
        .map(|tp| SummaryTask { path: path.to_path_buf(), open: open_opts.clone(), plan: tp.clone() })
        .collect();
    tracing::debug!(path = %path.display(), %shape, tasks = tasks.len(), groups = plan.groups.len(), "summary images");
    // Map in batches and add each batch's outputs at once, so that a long movie never holds the
    // partial sums of all its tasks (same summation order as one map: results do not depend on it).
    let batch = (4 * exec.workers()).max(4);
    let mut acc = plan.accumulator();
    let mut stats: Option<RunStats> = None;
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        let part: Vec<SummaryTask> = tasks.by_ref().take(batch).collect();
        let (outputs, st) = exec.map(part)?;
        plan.add_outputs(&mut acc, outputs)?;
        stats = Some(match stats {
            None => st,
            Some(prev) => prev.then(&st),
        });
    }
    let mut images = plan.finish(acc)?;
    images.stats = stats;
    Ok(images)
}

/// [`summary_images`] of an in-memory planar movie `T × d1 × d2` (same plan and arithmetic as the
/// streamed pass, so the images are bit-identical to it).
///
/// # Errors
/// Empty movie, bad options, non-finite samples.
pub fn summary_images_view(movie: ArrayView3<'_, f32>, opts: &SummaryOptions) -> Result<SummaryImages> {
    let (t, d1, d2) = movie.dim();
    let data = movie.as_standard_layout();
    in_memory(contiguous(&data)?, Shape::new(t, Dims::planar(d1, d2)), opts)
}

/// [`summary_images`] of an in-memory [`Movie`] (planar or volumetric).
///
/// # Errors
/// Empty movie, bad options, non-finite samples.
pub fn summary_images_movie(movie: &Movie, opts: &SummaryOptions) -> Result<SummaryImages> {
    in_memory(movie.as_slice(), movie.shape(), opts)
}

/// CaImAn's `local_correlations(Y, eight_neighbours, swap_dim=False, order_mean)` of a planar
/// movie `T × d1 × d2` (with `opts.chunking`: `movie.local_correlations`' chunked maximum).
///
/// # Errors
/// Empty movie, bad options, non-finite samples.
pub fn local_correlations(movie: ArrayView3<'_, f32>, opts: &CorrOptions) -> Result<Array2<f64>> {
    let (_, d1, d2) = movie.dim();
    let opts = SummaryOptions { corr: *opts, fft: false, ..SummaryOptions::default() };
    let images = summary_images_view(movie, &opts)?;
    to_2d(images.cn, d1, d2)
}

/// CaImAn's `local_correlations` of a volumetric movie `T × d1 × d2 × d3` (6 neighbours; with
/// `d3 = 1` the planar rule of `opts.neighbours`).
///
/// # Errors
/// Empty movie, bad options, non-finite samples.
pub fn local_correlations_volume(movie: ArrayView4<'_, f32>, opts: &CorrOptions) -> Result<Array3<f64>> {
    let opts = SummaryOptions { corr: *opts, fft: false, ..SummaryOptions::default() };
    let (t, d1, d2, d3) = movie.dim();
    let data = movie.as_standard_layout();
    Ok(in_memory(contiguous(&data)?, Shape::new(t, Dims::volume(d1, d2, d3)), &opts)?.cn)
}

/// CaImAn's `local_correlations_fft(Y, eight_neighbours, swap_dim=False)` of a planar movie
/// `T × d1 × d2` (zero-variance pixels count as ρ = 0).
///
/// # Errors
/// Empty movie, non-finite samples.
pub fn local_correlations_fft(movie: ArrayView3<'_, f32>, neighbours: Neighbours) -> Result<Array2<f64>> {
    let (_, d1, d2) = movie.dim();
    let corr = CorrOptions { neighbours, ..CorrOptions::default() };
    let images = summary_images_view(movie, &SummaryOptions { corr, fft: true, ..SummaryOptions::default() })?;
    match images.cn_fft {
        Some(img) => to_2d(img, d1, d2),
        None => Err(Error::InvalidParam("internal: fft image missing".into())),
    }
}

/// CaImAn's `local_correlations_fft` of a volumetric movie `T × d1 × d2 × d3`
/// ([`Neighbours::Eight`]: 26 neighbours, [`Neighbours::Four`]: 6).
///
/// # Errors
/// Empty movie, non-finite samples.
pub fn local_correlations_fft_volume(movie: ArrayView4<'_, f32>, neighbours: Neighbours) -> Result<Array3<f64>> {
    let (t, d1, d2, d3) = movie.dim();
    let corr = CorrOptions { neighbours, ..CorrOptions::default() };
    let data = movie.as_standard_layout();
    let opts = SummaryOptions { corr, fft: true, ..SummaryOptions::default() };
    let images = in_memory(contiguous(&data)?, Shape::new(t, Dims::volume(d1, d2, d3)), &opts)?;
    images.cn_fft.ok_or_else(|| Error::InvalidParam("internal: fft image missing".into()))
}

/// CNMF-E's `correlation_pnr(Y, gSig, center_psf, swap_dim=False, background_filter)` of a planar
/// movie `T × d1 × d2`, in memory.
///
/// Every frame is filtered (zero-mean disk-truncated Gaussian of size `2·⌊2σ⌋+1`, or Gaussian −
/// box, or a plain Gaussian; replicated borders), the temporal mean is removed, `pnr = max_t / σ`
/// with the PSD noise `σ` of `get_noise_fft(…, noise_method='mean')` (negative ratios → 0), and
/// `cn` is `local_correlations_fft` (8 neighbours) of the filtered movie divided by `σ`, with
/// values below 3 set to 0.
///
/// # Errors
/// Fewer than 2 frames, an empty frame, a non-positive or non-finite `g_sig`, non-finite samples.
pub fn correlation_pnr(movie: ArrayView3<'_, f32>, opts: &PnrOptions) -> Result<CorrPnr> {
    pnr::correlation_pnr(movie, opts)
}

// ------------------------------------------------------------------------------------------------
// Geometry: the frame as a grid of lines, and the neighbour directions
// ------------------------------------------------------------------------------------------------

/// A neighbour direction `(da, db, dc)` on the grid `(n0, n1, n2)`, in the positive half-space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dir {
    da: usize,
    db: isize,
    dc: isize,
}

const fn dir(da: usize, db: isize, dc: isize) -> Dir {
    Dir { da, db, dc }
}

/// Planar frames are the grid `(1, d1, d2)`; volumes `(d1, d2, d3)`. A "line" is a run along the
/// last (contiguous) axis.
#[derive(Debug, Clone)]
struct Geometry {
    n0: usize,
    n1: usize,
    n2: usize,
    dirs: Vec<Dir>,
    /// Indices into `dirs` of the direct (`local_correlations`) neighbourhood.
    direct: Vec<usize>,
    /// Indices into `dirs` of the `local_correlations_fft` neighbourhood (empty: not computed).
    fft: Vec<usize>,
    /// Distinct neighbour lines `(da, db) ≠ (0, 0)` the directions need.
    nb_lines: Vec<(usize, isize)>,
    /// For each direction, its neighbour line (index into `nb_lines`), `None` for the same line.
    dir_line: Vec<Option<usize>>,
}

impl Geometry {
    fn new(dims: Dims, neighbours: Neighbours, fft: bool) -> Geometry {
        let (n0, n1, n2) = if dims.d3 == 1 { (1, dims.d1, dims.d2) } else { (dims.d1, dims.d2, dims.d3) };
        let (dirs, n_direct, n_fft): (Vec<Dir>, usize, usize) = if dims.d3 == 1 {
            let n = if neighbours == Neighbours::Eight { 4 } else { 2 };
            (vec![dir(0, 0, 1), dir(0, 1, 0), dir(0, 1, 1), dir(0, 1, -1)][..n].to_vec(), n, n)
        } else {
            let mut all = vec![dir(0, 0, 1), dir(0, 1, 0), dir(1, 0, 0), dir(0, 1, -1), dir(0, 1, 1)];
            for db in -1..=1 {
                for dc in -1..=1 {
                    if (db, dc) != (0, 0) {
                        all.push(dir(1, db, dc));
                    }
                }
            }
            let n_fft = if neighbours == Neighbours::Eight { 13 } else { 3 };
            let n = if fft { n_fft } else { 3 };
            all.truncate(n);
            (all, 3, n_fft)
        };
        let mut nb_lines: Vec<(usize, isize)> = Vec::new();
        let dir_line = dirs
            .iter()
            .map(|d| {
                if (d.da, d.db) == (0, 0) {
                    return None;
                }
                Some(match nb_lines.iter().position(|&l| l == (d.da, d.db)) {
                    Some(i) => i,
                    None => {
                        nb_lines.push((d.da, d.db));
                        nb_lines.len() - 1
                    }
                })
            })
            .collect();
        Geometry {
            n0,
            n1,
            n2,
            direct: (0..n_direct).collect(),
            fft: if fft { (0..n_fft).collect() } else { Vec::new() },
            dirs,
            nb_lines,
            dir_line,
        }
    }

    fn pixels(&self) -> usize {
        self.n0 * self.n1 * self.n2
    }

    /// Statistics per pixel: `Σx'`, `Σx'²`, one cross sum per direction.
    fn stats(&self) -> usize {
        2 + self.dirs.len()
    }

    /// The neighbour line of line `(a, b)` at offset `(da, db)`, if inside the grid.
    fn neighbour_line(&self, a: usize, b: usize, (da, db): (usize, isize)) -> Option<usize> {
        let a2 = a + da;
        let b2 = b.checked_add_signed(db)?;
        (a2 < self.n0 && b2 < self.n1).then_some(a2 * self.n1 + b2)
    }

    /// Calls `f(p, q)` for every in-grid pair of pixel `p` and its neighbour `q` in direction `d`
    /// (C-order pixel indices).
    fn for_each_pair(&self, d: Dir, mut f: impl FnMut(usize, usize)) {
        let n2 = self.n2;
        let (c0, c1) = match d.dc {
            1 => (0, n2.saturating_sub(1)),
            -1 => (1.min(n2), n2),
            _ => (0, n2),
        };
        for a in 0..self.n0 {
            for b in 0..self.n1 {
                let Some(l2) = self.neighbour_line(a, b, (d.da, d.db)) else { continue };
                let base = (a * self.n1 + b) * n2;
                let base2 = l2 * n2;
                for c in c0..c1 {
                    f(base + c, (base2 as isize + c as isize + d.dc) as usize);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The plan: chunks ("groups"), tasks and their frame runs
// ------------------------------------------------------------------------------------------------

/// A contiguous run of frames, all in one correlation chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run {
    frames: Range<usize>,
    group: usize,
    /// First frame of the group: the shift of its sums.
    group_start: usize,
}

/// What one task reads and accumulates (plain data: it travels to worker processes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskPlan {
    dims: Dims,
    neighbours: Neighbours,
    fft: bool,
    runs: Vec<Run>,
    /// `bin_median` window means this task owns (empty without median).
    slots: Range<usize>,
    /// Number of window means `n = T // window` (frame `t < n·window` belongs to mean `t % n`).
    slot_count: usize,
    /// Frames per window mean.
    window: usize,
}

struct Plan {
    shape: Shape,
    geo: Geometry,
    groups: Vec<Range<usize>>,
    chunked: bool,
    order_mean: f64,
    caiman_diagonals: bool,
    tasks: Vec<TaskPlan>,
    median: Option<(usize, usize)>,
}

/// `n` near-equal contiguous parts of `range` (the first ones one longer).
fn split_range(range: Range<usize>, n: usize) -> Vec<Range<usize>> {
    let len = range.len();
    let n = n.clamp(1, len.max(1));
    let (base, extra) = (len / n, len % n);
    let mut start = range.start;
    (0..n)
        .map(|i| {
            let l = base + usize::from(i < extra);
            let r = start..start + l;
            start += l;
            r
        })
        .collect()
}

impl Plan {
    fn new(shape: Shape, opts: &SummaryOptions) -> Result<Plan> {
        let t = shape.frames;
        if t == 0 {
            return Err(Error::Empty { what: "movie frames" });
        }
        if shape.dims.pixels() == 0 {
            return Err(Error::Empty { what: "movie frame size" });
        }
        if !opts.corr.order_mean.is_finite() {
            return Err(Error::InvalidParam(format!("order_mean must be finite, got {}", opts.corr.order_mean)));
        }
        if opts.frames_per_task == 0 {
            return Err(Error::InvalidParam("frames_per_task must be at least 1".into()));
        }
        let mut chunked = false;
        let groups: Vec<Range<usize>> = match opts.corr.chunking {
            Some(ch) if ch.frames_per_chunk == 0 => {
                return Err(Error::InvalidParam("frames_per_chunk must be at least 1".into()));
            }
            Some(ch) if t > ch.min_frames => {
                chunked = true;
                let n = (t / ch.frames_per_chunk).max(1);
                let f = ch.frames_per_chunk;
                (0..n).map(|i| i * f..if i + 1 == n { t } else { (i + 1) * f }).collect()
            }
            _ => std::iter::once(0..t).collect(),
        };
        let geo = Geometry::new(shape.dims, opts.corr.neighbours, opts.fft);
        let base = TaskPlan {
            dims: shape.dims,
            neighbours: opts.corr.neighbours,
            fft: opts.fft,
            runs: Vec::new(),
            slots: 0..0,
            slot_count: 0,
            window: 0,
        };
        let group_of = |frame: usize| groups.partition_point(|g: &Range<usize>| g.end <= frame);
        // Splits a frame range at group boundaries into runs.
        let runs_of = |r: Range<usize>, out: &mut Vec<Run>| {
            let mut s = r.start;
            while s < r.end {
                let g = group_of(s);
                let e = r.end.min(groups[g].end);
                out.push(Run { frames: s..e, group: g, group_start: groups[g].start });
                s = e;
            }
        };
        let mut tasks = Vec::new();
        let median = match opts.median_window {
            Some(0) => return Err(Error::InvalidParam("median window must be at least 1".into())),
            Some(w) => {
                let window = w.min(t);
                let n = t / window;
                let used = n * window;
                let n_tasks = used.div_ceil(opts.frames_per_task).clamp(1, n);
                let parts = split_range(0..n, n_tasks);
                let last = parts.len() - 1;
                for (i, slots) in parts.into_iter().enumerate() {
                    let mut runs = Vec::new();
                    for k in 0..window {
                        runs_of(k * n + slots.start..k * n + slots.end, &mut runs);
                    }
                    if i == last && used < t {
                        runs_of(used..t, &mut runs);
                    }
                    tasks.push(TaskPlan { runs, slots, slot_count: n, window, ..base.clone() });
                }
                Some((n, window))
            }
            None => {
                for g in &groups {
                    for r in split_range(g.clone(), g.len().div_ceil(opts.frames_per_task)) {
                        let mut runs = Vec::new();
                        runs_of(r, &mut runs);
                        tasks.push(TaskPlan { runs, ..base.clone() });
                    }
                }
                None
            }
        };
        Ok(Plan {
            shape,
            geo,
            groups,
            chunked,
            order_mean: opts.corr.order_mean,
            caiman_diagonals: opts.corr.caiman_diagonals,
            tasks,
            median,
        })
    }

    /// Adds up the task outputs and turns the sums into images.
    fn combine(&self, outputs: Vec<TaskOutput>) -> Result<SummaryImages> {
        let mut acc = self.accumulator();
        self.add_outputs(&mut acc, outputs)?;
        self.finish(acc)
    }

    /// An empty running sum of task outputs.
    fn accumulator(&self) -> Accumulated {
        Accumulated {
            groups: (0..self.groups.len()).map(|_| None).collect(),
            max: vec![f32::NEG_INFINITY; self.geo.pixels()],
            slot_means: Vec::new(),
        }
    }

    /// Adds task outputs, in task order, to `acc`.
    fn add_outputs(&self, acc: &mut Accumulated, outputs: Vec<TaskOutput>) -> Result<()> {
        let d = self.geo.pixels();
        let Accumulated { groups, max, slot_means } = acc;
        for out in outputs {
            if out.max.len() != d {
                return Err(Error::ShapeMismatch {
                    what: "task max image",
                    expected: vec![d],
                    got: vec![out.max.len()],
                });
            }
            for (m, v) in max.iter_mut().zip(&out.max) {
                *m = m.max(*v);
            }
            slot_means.extend_from_slice(&out.slot_means);
            for gm in out.groups {
                let slot = groups
                    .get_mut(gm.group)
                    .ok_or_else(|| Error::InvalidParam(format!("task returned unknown chunk {}", gm.group)))?;
                match slot {
                    None => *slot = Some(Moments { frames: gm.frames, shift: gm.shift, sums: gm.sums }),
                    Some(m) => {
                        m.frames += gm.frames;
                        for (a, b) in m.sums.iter_mut().zip(&gm.sums) {
                            *a += b;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns the accumulated sums into images.
    fn finish(&self, acc: Accumulated) -> Result<SummaryImages> {
        let geo = &self.geo;
        let d = geo.pixels();
        let Accumulated { groups, max, slot_means } = acc;
        let groups: Vec<Moments> = groups
            .into_iter()
            .zip(&self.groups)
            .map(|(m, r)| match m {
                Some(m) if m.frames == r.len() && m.sums.len() == d * geo.stats() && m.shift.len() == d => Ok(m),
                _ => Err(Error::InvalidParam(format!("frames {r:?} were not accumulated exactly once"))),
            })
            .collect::<Result<_>>()?;
        if groups.iter().any(|m| m.sums.iter().any(|v| !v.is_finite())) || max.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "movie" });
        }

        // Correlation image: one chunk, or CaImAn's maximum over chunks starting from zeros.
        let mut cn = if self.chunked { vec![0.0; d] } else { vec![f64::NAN; d] };
        for (i, m) in groups.iter().enumerate() {
            let img = m.direct_image(geo, self.order_mean, self.caiman_diagonals);
            if self.chunked {
                for (c, v) in cn.iter_mut().zip(img) {
                    *c = if c.is_nan() || v.is_nan() { f64::NAN } else { c.max(v) };
                }
            } else if i == 0 {
                cn = img;
            }
        }
        let whole = if groups.len() == 1 { None } else { Some(Moments::merge(geo, &groups)) };
        let all = whole.as_ref().unwrap_or(&groups[0]);
        let cn_fft = (!geo.fft.is_empty()).then(|| all.fft_image(geo));
        let t = self.shape.frames as f64;
        let mean: Vec<f64> = (0..d).map(|p| f64::from(all.shift[p]) + all.sum(geo, 0, p) / t).collect();
        let median = match self.median {
            Some((n, _)) => {
                if slot_means.len() != n * d {
                    return Err(Error::InvalidParam("internal: window means missing".into()));
                }
                Some(median_of_slots(&slot_means, n, d))
            }
            None => None,
        };
        let dims = self.shape.dims;
        let sh = (dims.d1, dims.d2, dims.d3);
        let img = |v: Vec<f64>| Array3::from_shape_vec(sh, v).map_err(|e| Error::InvalidParam(e.to_string()));
        Ok(SummaryImages {
            dims,
            frames: self.shape.frames,
            cn: img(cn)?,
            cn_fft: cn_fft.map(img).transpose()?,
            mean: img(mean)?,
            max: Array3::from_shape_vec(sh, max).map_err(|e| Error::InvalidParam(e.to_string()))?,
            median: median.map(img).transpose()?,
            chunks: self.groups.clone(),
            stats: None,
        })
    }
}

/// Task outputs added up so far (see [`Plan::add_outputs`]).
struct Accumulated {
    groups: Vec<Option<Moments>>,
    max: Vec<f32>,
    slot_means: Vec<f32>,
}

/// Pixel-wise median of `n` window means (`n × d`, window-major), numpy's rule for even `n`.
fn median_of_slots(slots: &[f32], n: usize, d: usize) -> Vec<f64> {
    let mut buf = vec![0f32; n];
    (0..d)
        .map(|p| {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = slots[k * d + p];
            }
            buf.sort_unstable_by(f32::total_cmp);
            if n % 2 == 1 { f64::from(buf[n / 2]) } else { (f64::from(buf[n / 2 - 1]) + f64::from(buf[n / 2])) / 2.0 }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Sufficient statistics
// ------------------------------------------------------------------------------------------------

/// Shifted sums of one chunk; layout `[line][stat][c]`.
struct Moments {
    frames: usize,
    shift: Vec<f32>,
    sums: Vec<f64>,
}

impl Moments {
    fn sum(&self, geo: &Geometry, stat: usize, p: usize) -> f64 {
        let (line, c) = (p / geo.n2, p % geo.n2);
        self.sums[(line * geo.stats() + stat) * geo.n2 + c]
    }

    /// Means (of `x'`) and population standard deviations per pixel.
    fn mean_sd(&self, geo: &Geometry) -> (Vec<f64>, Vec<f64>) {
        let n = self.frames as f64;
        let d = geo.pixels();
        let mut mean = vec![0.0; d];
        let mut sd = vec![0.0; d];
        for p in 0..d {
            let m = self.sum(geo, 0, p) / n;
            let var = self.sum(geo, 1, p) / n - m * m;
            mean[p] = m;
            sd[p] = var.max(0.0).sqrt();
        }
        (mean, sd)
    }

    /// Calls `f(p, q, ρ)` for each in-grid neighbour pair of direction `k` (ρ NaN when a variance
    /// is zero).
    fn for_each_rho(&self, geo: &Geometry, k: usize, mean: &[f64], sd: &[f64], mut f: impl FnMut(usize, usize, f64)) {
        let n = self.frames as f64;
        geo.for_each_pair(geo.dirs[k], |p, q| {
            let cov = self.sum(geo, 2 + k, p) / n - mean[p] * mean[q];
            f(p, q, cov / (sd[p] * sd[q]));
        });
    }

    /// CaImAn's `local_correlations` image of this chunk.
    ///
    /// With `caiman_diagonals` (planar, 8 neighbours), the diagonal correlations land where
    /// CaImAn's slicing puts them: the down-right pair `(i,j)–(i+1,j+1)` is credited to `(i,j)`
    /// and `(i,j+1)`, the down-left pair `(i,j)–(i+1,j−1)` to `(i+1,j)` and `(i+1,j−1)`.
    fn direct_image(&self, geo: &Geometry, order_mean: f64, caiman_diagonals: bool) -> Vec<f64> {
        let d = geo.pixels();
        let (mean, sd) = self.mean_sd(geo);
        let geometric = order_mean == 0.0;
        let quirk = caiman_diagonals && geo.n0 == 1;
        let n2 = geo.n2;
        let mut acc = vec![if geometric { 1.0 } else { 0.0 }; d];
        let mut count = vec![0u32; d];
        for &k in &geo.direct {
            let dir = geo.dirs[k];
            self.for_each_rho(geo, k, &mean, &sd, |p, q, rho| {
                let (p, q) = match (quirk, dir.db, dir.dc) {
                    (true, 1, 1) => (p, p + 1),
                    (true, 1, -1) => (p + n2, q),
                    _ => (p, q),
                };
                if geometric {
                    acc[p] *= rho;
                    acc[q] *= rho;
                } else {
                    let v = if order_mean == 1.0 { rho } else { rho.powf(order_mean) };
                    acc[p] += v;
                    acc[q] += v;
                }
                count[p] += 1;
                count[q] += 1;
            });
        }
        acc.iter()
            .zip(&count)
            .map(|(&a, &c)| {
                let c = f64::from(c);
                if geometric {
                    a.powf(1.0 / c)
                } else if order_mean == 1.0 {
                    a / c
                } else {
                    (a / c).powf(1.0 / order_mean)
                }
            })
            .collect()
    }

    /// CaImAn's `local_correlations_fft` image (zero-variance pixels contribute 0).
    fn fft_image(&self, geo: &Geometry) -> Vec<f64> {
        let d = geo.pixels();
        let (mean, sd) = self.mean_sd(geo);
        let mut acc = vec![0.0; d];
        let mut count = vec![0u32; d];
        for &k in &geo.fft {
            self.for_each_rho(geo, k, &mean, &sd, |p, q, rho| {
                let v = if sd[p] == 0.0 || sd[q] == 0.0 { 0.0 } else { rho };
                acc[p] += v;
                acc[q] += v;
                count[p] += 1;
                count[q] += 1;
            });
        }
        acc.iter().zip(&count).map(|(&a, &c)| a / f64::from(c)).collect()
    }

    /// The sums of all chunks, re-expressed with the first chunk's shift.
    fn merge(geo: &Geometry, groups: &[Moments]) -> Moments {
        let (d, ns, n2) = (geo.pixels(), geo.stats(), geo.n2);
        let idx = |stat: usize, p: usize| ((p / n2) * ns + stat) * n2 + p % n2;
        let shift = groups[0].shift.clone();
        let mut sums = vec![0.0; d * ns];
        let mut frames = 0;
        let mut e = vec![0.0; d];
        for g in groups {
            let n = g.frames as f64;
            frames += g.frames;
            for p in 0..d {
                e[p] = f64::from(g.shift[p]) - f64::from(shift[p]);
            }
            for p in 0..d {
                let (s1, s2) = (g.sums[idx(0, p)], g.sums[idx(1, p)]);
                sums[idx(0, p)] += s1 + n * e[p];
                sums[idx(1, p)] += s2 + 2.0 * e[p] * s1 + n * e[p] * e[p];
            }
            for k in 0..geo.dirs.len() {
                geo.for_each_pair(geo.dirs[k], |p, q| {
                    let c = g.sums[idx(2 + k, p)];
                    sums[idx(2 + k, p)] += c + e[q] * g.sums[idx(0, p)] + e[p] * g.sums[idx(0, q)] + n * e[p] * e[q];
                });
            }
        }
        Moments { frames, shift, sums }
    }
}

/// Per-line scratch buffers of the accumulation kernel.
struct Scratch {
    x: Vec<f64>,
    nb: Vec<Vec<f64>>,
}

/// Adds `frames` (whole frames, C order) to the shifted sums and the running max.
fn accumulate(geo: &Geometry, frames: &[f32], shift: &[f64], sums: &mut [f64], max: &mut [f32], s: &mut Scratch) {
    let (n2, ns, d) = (geo.n2, geo.stats(), geo.pixels());
    for a in 0..geo.n0 {
        for b in 0..geo.n1 {
            let line = a * geo.n1 + b;
            let base = line * n2;
            let nb_base: Vec<Option<usize>> =
                geo.nb_lines.iter().map(|&off| geo.neighbour_line(a, b, off).map(|l| l * n2)).collect();
            let acc = &mut sums[line * ns * n2..(line + 1) * ns * n2];
            let mx = &mut max[base..base + n2];
            let sh = &shift[base..base + n2];
            for f in frames.chunks_exact(d) {
                let row = &f[base..base + n2];
                for ((x, &v), &c) in s.x.iter_mut().zip(row).zip(sh) {
                    *x = f64::from(v) - c;
                }
                for (m, &v) in mx.iter_mut().zip(row) {
                    *m = m.max(v);
                }
                for (buf, nb) in s.nb.iter_mut().zip(&nb_base) {
                    if let Some(b2) = *nb {
                        for ((y, &v), &c) in buf.iter_mut().zip(&f[b2..b2 + n2]).zip(&shift[b2..b2 + n2]) {
                            *y = f64::from(v) - c;
                        }
                    }
                }
                let (s12, cross) = acc.split_at_mut(2 * n2);
                let (s1, s2) = s12.split_at_mut(n2);
                for ((a1, a2), &x) in s1.iter_mut().zip(s2.iter_mut()).zip(&s.x) {
                    *a1 += x;
                    *a2 += x * x;
                }
                for (k, dest) in cross.chunks_exact_mut(n2).enumerate() {
                    let y: &[f64] = match geo.dir_line[k] {
                        None => &s.x,
                        Some(i) if nb_base[i].is_some() => &s.nb[i],
                        Some(_) => continue,
                    };
                    let x = &s.x;
                    match geo.dirs[k].dc {
                        0 => add_products(dest, x, y),
                        1 if n2 > 1 => add_products(&mut dest[..n2 - 1], &x[..n2 - 1], &y[1..]),
                        -1 if n2 > 1 => add_products(&mut dest[1..], &x[1..], &y[..n2 - 1]),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// [`accumulate_planar`] compiled for AVX2 when the CPU has it (4 f64 lanes instead of SSE2's 2),
/// the portable build otherwise. No FMA is enabled, so both give bit-identical sums.
fn accumulate_planar_dispatch<const EIGHT: bool>(
    geo: &Geometry,
    frames: &[f32],
    shift: &[f64],
    sums: &mut [f64],
    max: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<const EIGHT: bool>(geo: &Geometry, frames: &[f32], shift: &[f64], sums: &mut [f64], max: &mut [f32]) {
            accumulate_planar::<8, EIGHT>(geo, frames, shift, sums, max);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked at run time just above).
            unsafe { avx2::<EIGHT>(geo, frames, shift, sums, max) };
            return;
        }
    }
    accumulate_planar::<8, EIGHT>(geo, frames, shift, sums, max);
}

/// The planar kernel (`n0 = 1`, directions right, down[, down-right, down-left]): blocks of `W`
/// columns keep their sums in registers over all frames of the batch. Same arithmetic, in the
/// same order, as [`accumulate`].
#[inline(always)]
fn accumulate_planar<const W: usize, const EIGHT: bool>(
    geo: &Geometry,
    frames: &[f32],
    shift: &[f64],
    sums: &mut [f64],
    max: &mut [f32],
) {
    let (n1, n2, d) = (geo.n1, geo.n2, geo.pixels());
    let ns = if EIGHT { 6 } else { 4 };
    for row in 0..n1 {
        let base = row * n2;
        let has_down = row + 1 < n1;
        let acc = &mut sums[row * ns * n2..(row + 1) * ns * n2];
        let mx = &mut max[base..base + n2];
        let mut c = 0;
        if has_down && n2 >= W + 2 {
            planar_column::<EIGHT>(frames, d, n2, base, has_down, shift, acc, mx, 0);
            c = 1;
            while c + W < n2 {
                planar_block::<W, EIGHT>(frames, d, n2, base, shift, acc, mx, c);
                c += W;
            }
        }
        while c < n2 {
            planar_column::<EIGHT>(frames, d, n2, base, has_down, shift, acc, mx, c);
            c += 1;
        }
    }
}

/// Columns `c..c + W` of a row that has a row below and `1 <= c`, `c + W < n2`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn planar_block<const W: usize, const EIGHT: bool>(
    frames: &[f32],
    d: usize,
    n2: usize,
    base: usize,
    shift: &[f64],
    acc: &mut [f64],
    mx: &mut [f32],
    c: usize,
) {
    let load = |k: usize| -> [f64; W] { std::array::from_fn(|w| acc[k * n2 + c + w]) };
    let (mut s1, mut s2, mut r, mut dn) = (load(0), load(1), load(2), load(3));
    let (mut dr, mut dl) = if EIGHT { (load(4), load(5)) } else { ([0.0; W], [0.0; W]) };
    let mut m: [f32; W] = std::array::from_fn(|w| mx[c + w]);
    let shx = &shift[base + c..base + c + W + 1];
    let shy = &shift[base + n2 + c - 1..base + n2 + c + W + 1];
    for f in frames.chunks_exact(d) {
        let fx = &f[base + c..base + c + W + 1];
        let fy = &f[base + n2 + c - 1..base + n2 + c + W + 1];
        let x: [f64; W] = std::array::from_fn(|w| f64::from(fx[w]) - shx[w]);
        let xr: [f64; W] = std::array::from_fn(|w| f64::from(fx[w + 1]) - shx[w + 1]);
        let y: [f64; W] = std::array::from_fn(|w| f64::from(fy[w + 1]) - shy[w + 1]);
        for w in 0..W {
            s1[w] += x[w];
            s2[w] += x[w] * x[w];
            r[w] += x[w] * xr[w];
            dn[w] += x[w] * y[w];
            m[w] = m[w].max(fx[w]);
        }
        if EIGHT {
            let yr: [f64; W] = std::array::from_fn(|w| f64::from(fy[w + 2]) - shy[w + 2]);
            let yl: [f64; W] = std::array::from_fn(|w| f64::from(fy[w]) - shy[w]);
            for w in 0..W {
                dr[w] += x[w] * yr[w];
                dl[w] += x[w] * yl[w];
            }
        }
    }
    let mut store = |k: usize, v: [f64; W]| acc[k * n2 + c..k * n2 + c + W].copy_from_slice(&v);
    store(0, s1);
    store(1, s2);
    store(2, r);
    store(3, dn);
    if EIGHT {
        store(4, dr);
        store(5, dl);
    }
    mx[c..c + W].copy_from_slice(&m);
}

/// One column of a row, every neighbour checked.
#[allow(clippy::too_many_arguments)]
fn planar_column<const EIGHT: bool>(
    frames: &[f32],
    d: usize,
    n2: usize,
    base: usize,
    has_down: bool,
    shift: &[f64],
    acc: &mut [f64],
    mx: &mut [f32],
    c: usize,
) {
    let at = |f: &[f32], p: usize| f64::from(f[p]) - shift[p];
    let below = base + n2;
    for f in frames.chunks_exact(d) {
        let x = at(f, base + c);
        acc[c] += x;
        acc[n2 + c] += x * x;
        if c + 1 < n2 {
            acc[2 * n2 + c] += x * at(f, base + c + 1);
        }
        if has_down {
            acc[3 * n2 + c] += x * at(f, below + c);
            if EIGHT {
                if c + 1 < n2 {
                    acc[4 * n2 + c] += x * at(f, below + c + 1);
                }
                if c >= 1 {
                    acc[5 * n2 + c] += x * at(f, below + c - 1);
                }
            }
        }
        mx[c] = mx[c].max(f[base + c]);
    }
}

#[inline]
fn add_products(dest: &mut [f64], x: &[f64], y: &[f64]) {
    for ((a, &u), &v) in dest.iter_mut().zip(x).zip(y) {
        *a += u * v;
    }
}

/// Values per read buffer (about 8 MB of f32: stays in a typical L3 cache).
const BATCH_VALUES: usize = 2 << 20;

/// One chunk's partial sums, as a task returns them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupMoments {
    group: usize,
    frames: usize,
    shift: Vec<f32>,
    sums: Vec<f64>,
}

/// What a task returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskOutput {
    groups: Vec<GroupMoments>,
    max: Vec<f32>,
    /// Means of the task's `bin_median` windows, window-major (`slots × d`).
    slot_means: Vec<f32>,
}

/// Runs one task plan, reading frames through `read(start, buf)`.
fn run_plan(plan: &TaskPlan, read: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>) -> Result<TaskOutput> {
    let geo = Geometry::new(plan.dims, plan.neighbours, plan.fft);
    let d = geo.pixels();
    let batch = (BATCH_VALUES / d).clamp(1, 256);
    let mut buf = vec![0f32; batch * d];
    let mut scratch = Scratch { x: vec![0.0; geo.n2], nb: vec![vec![0.0; geo.n2]; geo.nb_lines.len()] };
    let mut max = vec![f32::NEG_INFINITY; d];
    let mut groups: Vec<GroupMoments> = Vec::new();
    let mut shifts: Vec<Vec<f64>> = Vec::new();
    let mut slot_sums = vec![0f64; plan.slots.len() * d];
    let used = plan.slot_count * plan.window;
    for run in &plan.runs {
        let gi = match groups.iter().position(|g| g.group == run.group) {
            Some(i) => i,
            None => {
                let mut shift = vec![0f32; d];
                read(run.group_start, &mut shift)?;
                shifts.push(shift.iter().map(|&v| f64::from(v)).collect());
                groups.push(GroupMoments { group: run.group, frames: 0, shift, sums: vec![0.0; d * geo.stats()] });
                groups.len() - 1
            }
        };
        let mut t = run.frames.start;
        while t < run.frames.end {
            let k = batch.min(run.frames.end - t);
            let frames = &mut buf[..k * d];
            read(t, frames)?;
            let (sh, sums) = (&shifts[gi], &mut groups[gi].sums);
            match (geo.n0, geo.dirs.len()) {
                (1, 4) => accumulate_planar_dispatch::<true>(&geo, frames, sh, sums, &mut max),
                (1, 2) => accumulate_planar_dispatch::<false>(&geo, frames, sh, sums, &mut max),
                _ => accumulate(&geo, frames, sh, sums, &mut max, &mut scratch),
            }
            if !plan.slots.is_empty() {
                for (i, f) in frames.chunks_exact(d).enumerate() {
                    let tt = t + i;
                    let slot = tt % plan.slot_count.max(1);
                    if tt < used && plan.slots.contains(&slot) {
                        let dest = &mut slot_sums[(slot - plan.slots.start) * d..][..d];
                        for (a, &v) in dest.iter_mut().zip(f) {
                            *a += f64::from(v);
                        }
                    }
                }
            }
            groups[gi].frames += k;
            t += k;
        }
    }
    let w = plan.window.max(1) as f64;
    let slot_means = slot_sums.iter().map(|&s| (s / w) as f32).collect();
    Ok(TaskOutput { groups, max, slot_means })
}

/// The in-memory variants: the streamed plan, reading from a slice.
fn in_memory(data: &[f32], shape: Shape, opts: &SummaryOptions) -> Result<SummaryImages> {
    if data.len() != shape.len() {
        return Err(Error::ShapeMismatch { what: "movie data", expected: vec![shape.len()], got: vec![data.len()] });
    }
    let plan = Plan::new(shape, opts)?;
    let d = shape.dims.pixels();
    let mut read = |start: usize, buf: &mut [f32]| -> Result<()> {
        let src = data
            .get(start * d..start * d + buf.len())
            .ok_or_else(|| Error::InvalidParam(format!("frames from {start} outside the movie")))?;
        buf.copy_from_slice(src);
        Ok(())
    };
    let outputs = plan.tasks.iter().map(|tp| run_plan(tp, &mut read)).collect::<Result<Vec<_>>>()?;
    plan.combine(outputs)
}

fn contiguous<'a>(data: &'a ndarray::CowArray<'_, f32, impl ndarray::Dimension>) -> Result<&'a [f32]> {
    data.as_slice().ok_or_else(|| Error::InvalidParam("movie is not contiguous".into()))
}

fn to_2d(img: Array3<f64>, d1: usize, d2: usize) -> Result<Array2<f64>> {
    img.into_shape_with_order((d1, d2)).map_err(|e| Error::InvalidParam(e.to_string()))
}

// ------------------------------------------------------------------------------------------------
// The task
// ------------------------------------------------------------------------------------------------

/// One task of the streamed pass: accumulate the sums of some frame runs of a movie file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SummaryTask {
    path: PathBuf,
    open: OpenOptions,
    plan: TaskPlan,
}

impl SummaryTask {
    fn execute(&self) -> Result<TaskOutput> {
        let mut src = caiman_io::open(&self.path, &self.open)?;
        let dims = src.info().shape.dims;
        if dims != self.plan.dims {
            return Err(Error::ShapeMismatch {
                what: "movie frame size",
                expected: vec![self.plan.dims.d1, self.plan.dims.d2, self.plan.dims.d3],
                got: vec![dims.d1, dims.d2, dims.d3],
            });
        }
        run_plan(&self.plan, &mut |start, buf| Ok(src.read_frames(start, buf)?))
    }
}

impl Task for SummaryTask {
    const NAME: &'static str = "caiman_cnmf.summary_images";
    type Output = TaskOutput;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<TaskOutput, TaskError> {
        self.execute().map_err(task_err)
    }
}

// ------------------------------------------------------------------------------------------------
// correlation_pnr (CNMF-E)
// ------------------------------------------------------------------------------------------------

mod pnr {
    use ndarray::{Array2, ArrayView1, ArrayView3};

    use super::{BackgroundFilter, CorrPnr, Neighbours, PnrOptions};
    use crate::error::{Error, Result};
    use crate::noise::{NoiseFft, NoiseFftOptions};

    /// OpenCV's `getGaussianKernel(n, sigma, CV_32F)` (σ > 0): `exp(−x²/2σ²)` rounded to f32,
    /// normalised to sum 1.
    pub(super) fn gaussian_kernel(n: usize, sigma: f64) -> Vec<f32> {
        let scale = -0.5 / (sigma * sigma);
        let half = (n as f64 - 1.0) * 0.5;
        let mut k: Vec<f32> = (0..n)
            .map(|i| {
                let x = i as f64 - half;
                (scale * x * x).exp() as f32
            })
            .collect();
        let sum: f64 = k.iter().map(|&v| f64::from(v)).sum();
        for v in &mut k {
            *v = (f64::from(*v) / sum) as f32;
        }
        k
    }

    /// The 2-D correlation kernel (`rows × cols`, row-major) CaImAn applies, `None` without
    /// filtering.
    pub(super) fn kernel(opts: &PnrOptions) -> Result<Option<(usize, usize, Vec<f64>)>> {
        let Some(g) = opts.g_sig else { return Ok(None) };
        if g.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err(Error::InvalidParam(format!("g_sig must be positive and finite, got {g:?}")));
        }
        // ksize = int(2·σ)·2 + 1 per axis.
        let ks = [(2.0 * g[0]) as usize * 2 + 1, (2.0 * g[1]) as usize * 2 + 1];
        if opts.center_psf && opts.background_filter == BackgroundFilter::Disk {
            // psf = gk(k0, σ0) · gk(k1, σ1)ᵀ: rows use gSig[0], columns gSig[1].
            let (g0, g1) = (gaussian_kernel(ks[0], g[0]), gaussian_kernel(ks[1], g[1]));
            let psf: Vec<f32> = g0.iter().flat_map(|&a| g1.iter().map(move |&b| a * b)).collect();
            let thr = psf[..ks[1]].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let inside: Vec<bool> = psf.iter().map(|&v| v >= thr).collect();
            let n_in = inside.iter().filter(|&&b| b).count() as f64;
            let mean = psf.iter().zip(&inside).filter(|(_, b)| **b).map(|(&v, _)| f64::from(v)).sum::<f64>() / n_in;
            let k = psf.iter().zip(&inside).map(|(&v, &b)| if b { f64::from(v) - mean } else { 0.0 }).collect();
            Ok(Some((ks[0], ks[1], k)))
        } else {
            // cv2.GaussianBlur(ksize=(k0, k1), sigmaX=σ0, sigmaY=σ1): width (columns) k0 with σ0,
            // height (rows) k1 with σ1; the box filter has the same size, normalised.
            let (gx, gy) = (gaussian_kernel(ks[0], g[0]), gaussian_kernel(ks[1], g[1]));
            let boxv = if opts.center_psf { 1.0 / (ks[0] * ks[1]) as f64 } else { 0.0 };
            let k = gy.iter().flat_map(|&a| gx.iter().map(move |&b| f64::from(a) * f64::from(b) - boxv)).collect();
            Ok(Some((ks[1], ks[0], k)))
        }
    }

    /// Correlates a `d1 × d2` frame with a centred `kr × kc` kernel, replicated borders.
    pub(super) fn filter_frame(
        frame: &[f32],
        d1: usize,
        d2: usize,
        (kr, kc, k): (usize, usize, &[f64]),
        out: &mut [f64],
    ) {
        let (rr, rc) = ((kr / 2) as isize, (kc / 2) as isize);
        let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
        for i in 0..d1 {
            for j in 0..d2 {
                let mut acc = 0.0;
                for u in 0..kr {
                    let ii = clamp(i as isize + u as isize - rr, d1);
                    let krow = &k[u * kc..(u + 1) * kc];
                    for (v, &w) in krow.iter().enumerate() {
                        let jj = clamp(j as isize + v as isize - rc, d2);
                        acc += w * f64::from(frame[ii * d2 + jj]);
                    }
                }
                out[i * d2 + j] = acc;
            }
        }
    }

    pub(super) fn correlation_pnr(movie: ArrayView3<'_, f32>, opts: &PnrOptions) -> Result<CorrPnr> {
        let (t, d1, d2) = movie.dim();
        if t < 2 {
            return Err(Error::InvalidParam(format!("correlation_pnr needs at least 2 frames, got {t}")));
        }
        if d1 * d2 == 0 {
            return Err(Error::Empty { what: "movie frame size" });
        }
        if movie.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "movie" });
        }
        let d = d1 * d2;
        let kernel = kernel(opts)?;
        let movie = movie.as_standard_layout();
        let raw = super::contiguous(&movie)?;
        // Filtered movie, stored f32 as CaImAn's data_filtered.
        let mut filt = vec![0f32; t * d];
        match &kernel {
            Some((kr, kc, k)) => {
                let mut out = vec![0.0; d];
                for (src, dst) in raw.chunks_exact(d).zip(filt.chunks_exact_mut(d)) {
                    filter_frame(src, d1, d2, (*kr, *kc, k), &mut out);
                    for (a, &b) in dst.iter_mut().zip(&out) {
                        *a = b as f32;
                    }
                }
            }
            None => filt.copy_from_slice(raw),
        }
        // get_noise_fft(..., noise_method='mean'): CNMF's defaults.
        let mut noise = NoiseFft::new(t, &NoiseFftOptions::default())?;
        let mut trace = vec![0f32; t];
        let mut pnr = vec![0.0; d];
        let mut sn = vec![0.0; d];
        for p in 0..d {
            let mean = (0..t).map(|i| f64::from(filt[i * d + p])).sum::<f64>() / t as f64;
            let mut mx = f64::NEG_INFINITY;
            for (i, tr) in trace.iter_mut().enumerate() {
                let v = (f64::from(filt[i * d + p]) - mean) as f32;
                filt[i * d + p] = v;
                *tr = v;
                mx = mx.max(f64::from(v));
            }
            let s = noise.sn_of_trace(ArrayView1::from(&trace[..]))?;
            sn[p] = s;
            let r = mx / s;
            pnr[p] = if s > 0.0 && r > 0.0 { r } else { 0.0 };
        }
        // Noise-normalised movie with values below 3 set to 0 (zero-noise pixels: 0).
        for f in filt.chunks_exact_mut(d) {
            for (v, &s) in f.iter_mut().zip(&sn) {
                let z = if s > 0.0 { (f64::from(*v) / s) as f32 } else { 0.0 };
                *v = if z < 3.0 { 0.0 } else { z };
            }
        }
        let tmp = ArrayView3::from_shape((t, d1, d2), &filt[..]).map_err(|e| Error::InvalidParam(e.to_string()))?;
        let cn = super::local_correlations_fft(tmp, Neighbours::Eight)?;
        let pnr = Array2::from_shape_vec((d1, d2), pnr).map_err(|e| Error::InvalidParam(e.to_string()))?;
        Ok(CorrPnr { cn, pnr })
    }
}
