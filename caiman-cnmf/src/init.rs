//! CNMF initialisation: CaImAn's `initialization.py::initialize_components` for
//! `method_init = 'greedy_roi'` (the 2-photon default), its building blocks `greedyROI`, `finetune`,
//! `imblur`, `hals`, the scikit-learn NMF CaImAn uses for the background, and the "seeded"
//! initialisation from binary masks (`spatial.py::computing_indicator` with a boolean `A_in`).
//!
//! Order of operations of [`initialize_components`] (as CaImAn 1.12):
//! 1. `gSiz` defaults to `2·int(gSig + 0.5) + 1`; `gSig /= ssub`, `gSiz = round(gSiz / ssub)`
//!    (round half to even).
//! 2. `normalize_init`: `img = mean_t(Y) + median(mean_t(Y)) + eps(f32)` per pixel, `Y /= img`.
//! 3. Downsampling when `ssub ≠ 1` or `tsub ≠ 1`: planar movies with OpenCV `INTER_AREA`
//!    (`movie.resize`: new sizes `int(n / sub)`, box averages, fractional weights when the size is
//!    not divisible), first in space, then in time; volumes with `block_reduce(nanmean)` (sizes
//!    `ceil(n / sub)`, partial edge blocks averaged over what they hold).
//! 4. [`greedy_roi`] on the downsampled movie, the background NMF ([`nmf`]) of the clipped
//!    residual, then ([`hals`], when `use_hals`) `maxIter` HALS iterations.
//! 5. Upsampling: `A`, `b` with OpenCV `INTER_LINEAR` (half-pixel centres, edge clamp; volumes:
//!    linear along each axis), `C`, `f` with the same linear rule along time.
//! 6. `center` = centre of mass of each (upsampled) footprint, computed before `A` and `b` are
//!    multiplied back by `img`.
//!
//! Layout: every movie buffer here is CaImAn's `Yr`, pixels × frames with the pixels in Fortran
//! order and each pixel's trace contiguous. Footprints are dense `d × K` arrays inside (one row
//! per pixel), returned as [`CscMatrix`].
//!
//! Deliberate deviations from CaImAn (each one marked \[Q\] in the catalogue, or found in its code):
//! - **\[Q\] Background NMF initialisation.** CaImAn calls scikit-learn's `NMF(init='nndsvdar')`,
//!   which fills the zeros of the NNDSVD factors with random values (global numpy RNG), so its
//!   result cannot be reproduced. `'nndsvdar'` is mapped to the deterministic `'nndsvda'` (zeros
//!   replaced by the mean of the data); `'nndsvd'` and `'nndsvda'` are supported as in
//!   scikit-learn. Measured alternative: `'nndsvd'` (zeros kept, the random fill being only
//!   `|N(0, 1)|·mean/100`) reproduces CaImAn's `init_greedy_hals` background to 6·10⁻⁷ instead
//!   of 5·10⁻³ and is what OnACID's bare initialisation uses (there it decides detection times),
//!   but for the batch fit it made no difference with CaImAn's patch parameters on the reference
//!   movie and cost one true positive in the single-field-of-view reference run (F1 0.814 against
//!   CaImAn's 0.828), so the batch default stays `'nndsvda'`. `'random'`/`'custom'` are
//!   rejected. The truncated SVD behind NNDSVD follows scikit-learn's randomized SVD (range
//!   finder, 7 or 4 power iterations) with 4 oversamples instead of 10 and a fixed deterministic
//!   start instead of the RNG.
//! - The NMF solver is scikit-learn's coordinate descent with its stopping rule; its products run
//!   in f32 lanes summed in f64 per run of 256 values (scikit-learn computes them in float32).
//! - `nb = 0` gives no background (`b` is `d × 0`); CaImAn's greedy path crashes in scikit-learn
//!   there (and slices `Ab[:, :-0]` to nothing in `hals`). `nb < 0` (full-rank background), and
//!   `nb` larger than the downsampled pixels or frames (CaImAn then sets `nb = -1` and crashes),
//!   are [`Error::InvalidParam`].
//! - Only `method_init = 'greedy_roi'` with `seed_method = 'auto'` is implemented; other methods
//!   (`corr_pnr`, `sparse_nmf`, `compressed_nmf`, `graph_nmf`, `pca_ica`) and the interactive
//!   `'manual'`/`'semi'` seeding are [`Error::InvalidParam`].
//! - NaN in the movie is [`Error::NonFinite`] (CaImAn's `greedyROI` silently zeroes NaNs, its
//!   pre-processing raises).
//! - `K` larger than the number of (downsampled) pixels is [`Error::InvalidParam`] (CaImAn keeps
//!   picking the same exhausted pixel).
//! - `center_psf` is ignored: the footprints are always upsampled back (CaImAn skips the
//!   upsampling of `A` for `center_psf=True`, which leaves `A` at the downsampled size).
//! - \[Q\] reproduced: the 2-D blur passes `ksize = (gSiz[0], gSiz[1])` and `sigmaX = gSig[0]` to
//!   OpenCV, which reads them as (width, height), so `gSig[0]`/`gSiz[0]` blur along the columns and
//!   `gSig[1]`/`gSiz[1]` along the rows (irrelevant for the usual isotropic `gSig`). The greedy
//!   windows use `gSiz[c]` along axis `c`, as CaImAn does.
//! - In 3-D, CaImAn's greedy writes each finetuned window into `A` through a `meshgrid(indexing=
//!   'xy')` whose flattening does not match the window's C order (the footprint lands scrambled
//!   unless the window is a single plane); here every window value goes to its own voxel.
//! - Arithmetic: CaImAn keeps the movie, `A`, `C`, `b`, `f` in float32; here the movie stays f32,
//!   factors and updates are f64 and sums are accumulated in f64 (the NMF products in f32 runs, see
//!   above). Outputs: `A`, `b` f32, `C`, `f` f64.

#![allow(clippy::needless_range_loop)]

use caiman_io::Dims;
use caiman_parallel::Par;
use ndarray::{Array2, ArrayView2};

use crate::estimates::{EPS_F32, centers_of_mass};
use crate::params::{InitParams, MethodInit, NdArray, SeedMethod};
use crate::sparse::CscMatrix;
use crate::{Error, Result};

/// Pixels per block of the blocked loops. Fixed (not derived from the parallel degree) so that
/// results never depend on `par`.
const BLOCK: usize = 256;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// What the initialisation returns (CaImAn's `Ain, Cin, b_in, f_in, center`).
#[derive(Debug, Clone, PartialEq)]
pub struct InitResult {
    /// Spatial footprints, `d × K`, Fortran pixel order.
    pub a: CscMatrix,
    /// Temporal traces, `K × T`.
    pub c: Array2<f64>,
    /// Background footprints, `d × nb`.
    pub b: Array2<f32>,
    /// Background traces, `nb × T`.
    pub f: Array2<f64>,
    /// Centre of mass of each footprint, `K × 2` (row, col) or `K × 3` for volumes.
    pub center: Array2<f64>,
}

/// Options of [`greedy_roi`] (CaImAn's `greedyROI` arguments, already rescaled for any spatial
/// downsampling).
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyOptions {
    /// Number of components to find (`nr`).
    pub k: usize,
    /// Gaussian width per spatial axis (`gSig`, in pixels of the movie given to [`greedy_roi`]).
    pub gsig: Vec<f64>,
    /// Window size per spatial axis (`gSiz`); the half-width `gSiz // 2` is used, so the window
    /// and the blur kernel are `2·(gSiz // 2) + 1` wide.
    pub gsiz: Vec<usize>,
    /// Rank-1 refinement iterations per component (`nIter`, ≥ 1).
    pub n_iter: usize,
    /// Score pixels by the largest causal moving average of `ρ²` instead of its sum
    /// (`rolling_sum`).
    pub rolling_sum: bool,
    /// Length of that moving average (`rolling_length`, ≥ 1).
    pub rolling_length: usize,
    /// A user kernel replacing the Gaussian (`kernel`; correlation with zero border, centre at
    /// `shape // 2`), shaped like the frame (2 or 3 axes).
    pub kernel: Option<NdArray<f64>>,
}

/// What [`greedy_roi`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyResult {
    /// Footprints, `d × K` (unit L2 norm per column, zero outside each window).
    pub a: Array2<f32>,
    /// Traces, `K × T`.
    pub c: Array2<f64>,
    /// Seed pixel of each component, `K × 2` (row, col) or `K × 3`.
    pub center: Array2<f64>,
    /// `Y − A·C`, `d × T` (CaImAn's `res`: the per-pixel median is subtracted for the search and
    /// added back here; not clipped).
    pub residual: Array2<f32>,
}

/// The factors HALS refines (input and output of [`hals`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HalsFactors {
    /// Neuron footprints, `d × K`.
    pub a: Array2<f32>,
    /// Neuron traces, `K × T`.
    pub c: Array2<f64>,
    /// Background footprints, `d × nb`.
    pub b: Array2<f32>,
    /// Background traces, `nb × T`.
    pub f: Array2<f64>,
}

/// Options of [`hals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalsOptions {
    /// Box size of the support dilation (`bSiz`, CaImAn 3): a neuron may only grow onto pixels
    /// where the `bSiz`-wide box mean of its initial footprint exceeds 1e-10. `None`: only its
    /// initial non-zero pixels.
    pub b_siz: Option<usize>,
    /// Outer iterations (`maxIter`, CaImAn `init.maxIter` = 5); each runs 2 sweeps of activity
    /// updates then 2 sweeps of shape updates.
    pub max_iter: usize,
}

impl Default for HalsOptions {
    fn default() -> Self {
        HalsOptions { b_siz: Some(3), max_iter: 5 }
    }
}

/// NNDSVD variants of scikit-learn's NMF initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmfInit {
    /// `'nndsvd'`: zeros stay zero.
    Nndsvd,
    /// `'nndsvda'`: zeros are replaced by the mean of the data (also used for `'nndsvdar'`).
    Nndsvda,
}

impl NmfInit {
    /// Parses a CaImAn/scikit-learn init name: `'nndsvd'`, `'nndsvda'`, or `'nndsvdar'` (mapped
    /// to `'nndsvda'`, see the module docs).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for any other name (`'random'`, `'custom'`, ...).
    pub fn from_caiman(name: &str) -> Result<Self> {
        match name {
            "nndsvd" => Ok(NmfInit::Nndsvd),
            "nndsvda" | "nndsvdar" => Ok(NmfInit::Nndsvda),
            other => Err(Error::InvalidParam(format!(
                "NMF init method '{other}' is not supported (use 'nndsvd', 'nndsvda' or 'nndsvdar')"
            ))),
        }
    }
}

/// Options of [`nmf`] (scikit-learn `NMF(solver='cd', beta_loss='frobenius')` without
/// regularisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmfOptions {
    /// Initialisation.
    pub init: NmfInit,
    /// Maximum number of iterations (each updates `W` then `H`).
    pub max_iter: usize,
    /// Stop when the projected-gradient violation falls to `tol` times the first one.
    pub tol: f64,
}

impl Default for NmfOptions {
    fn default() -> Self {
        NmfOptions { init: NmfInit::Nndsvda, max_iter: 200, tol: 1e-4 }
    }
}

/// What [`nmf`] returns: `X ≈ W·H`.
#[derive(Debug, Clone, PartialEq)]
pub struct NmfResult {
    /// `n × k`, non-negative.
    pub w: Array2<f64>,
    /// `k × m`, non-negative.
    pub h: Array2<f64>,
    /// Iterations run.
    pub n_iter: usize,
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Frame geometry: sizes per axis (rows, cols, planes) and the number of spatial axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    n: [usize; 3],
    nd: usize,
}

impl Grid {
    fn new(dims: Dims) -> Self {
        Grid { n: [dims.d1, dims.d2, dims.d3], nd: if dims.d3 > 1 { 3 } else { 2 } }
    }

    fn pixels(&self) -> usize {
        self.n[0] * self.n[1] * self.n[2]
    }

    fn stride(&self, axis: usize) -> usize {
        match axis {
            0 => 1,
            1 => self.n[0],
            _ => self.n[0] * self.n[1],
        }
    }

    fn index(&self, c: [usize; 3]) -> usize {
        c[0] + self.n[0] * (c[1] + self.n[1] * c[2])
    }

    fn dims(&self) -> Dims {
        Dims::volume(self.n[0], self.n[1], self.n[2])
    }

    /// The logical C-order shape of a pixel-major buffer with `cols` values per pixel.
    fn shape4(&self, cols: usize) -> [usize; 4] {
        [self.n[2], self.n[1], self.n[0], cols]
    }
}

/// Scalars the generic kernels store (movies in f32, factors in f64).
trait Real: Copy + Default + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// A matrix as a contiguous row-major vector.
fn to_rows<T: Copy>(m: ArrayView2<'_, T>) -> Vec<T> {
    match m.as_slice() {
        Some(s) => s.to_vec(),
        None => m.iter().copied().collect(),
    }
}

fn check_shape(what: &'static str, got: (usize, usize), expected: (usize, usize)) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { what, expected: vec![expected.0, expected.1], got: vec![got.0, got.1] })
    }
}

fn check_finite<'a, T: Real>(what: &'static str, it: impl IntoIterator<Item = &'a T>) -> Result<()> {
    if it.into_iter().all(|v| v.to_f64().is_finite()) { Ok(()) } else { Err(Error::NonFinite { what }) }
}

/// Median of f32 values (numpy: mean of the two middle values for an even count); reorders `v`.
fn median_f32(v: &mut [f32]) -> f32 {
    let n = v.len();
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, cmp);
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..n / 2].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ((f64::from(lo) + f64::from(hi)) / 2.0) as f32
    }
}

/// Per-row medians of a row-major `rows × t` buffer.
fn row_medians(y: &[f32], t: usize, par: Par) -> Vec<f32> {
    let rows = y.len() / t;
    let nblocks = rows.div_ceil(BLOCK);
    par.map_indices(nblocks, |bi| {
        let mut buf = vec![0f32; t];
        (bi * BLOCK..((bi + 1) * BLOCK).min(rows))
            .map(|p| {
                buf.copy_from_slice(&y[p * t..(p + 1) * t]);
                median_f32(&mut buf)
            })
            .collect::<Vec<_>>()
    })
    .concat()
}

// ---------------------------------------------------------------------------------------------
// Resampling (OpenCV INTER_AREA / INTER_LINEAR, skimage block_reduce)
// ---------------------------------------------------------------------------------------------

/// For each output index along an axis: the (source index, weight) pairs.
type Taps = Vec<Vec<(usize, f64)>>;

/// OpenCV `INTER_AREA` downscaling weights from `ns` to `nd ≤ ns` samples
/// (`computeResizeAreaTab`; for an integer ratio these are plain block means).
fn area_taps(ns: usize, nd: usize) -> Taps {
    let scale = 1.0 / (nd as f64 / ns as f64);
    (0..nd)
        .map(|dx| {
            let fsx1 = dx as f64 * scale;
            let fsx2 = fsx1 + scale;
            let cell = scale.min(ns as f64 - fsx1);
            let mut sx2 = fsx2.floor() as i64;
            sx2 = sx2.min(ns as i64 - 1);
            let sx1 = (fsx1.ceil() as i64).min(sx2);
            let mut tap = Vec::new();
            if sx1 as f64 - fsx1 > 1e-3 {
                tap.push(((sx1 - 1) as usize, (sx1 as f64 - fsx1) / cell));
            }
            for sx in sx1..sx2 {
                tap.push((sx as usize, 1.0 / cell));
            }
            if fsx2 - sx2 as f64 > 1e-3 {
                tap.push((sx2 as usize, (fsx2 - sx2 as f64).min(1.0).min(cell) / cell));
            }
            tap
        })
        .collect()
}

/// Block means of `sub` samples with a partial last block (`block_reduce(..., nanmean)` with NaN
/// padding): `ceil(ns / sub)` outputs.
fn block_taps(ns: usize, sub: usize) -> Taps {
    (0..ns.div_ceil(sub))
        .map(|b| {
            let hi = ((b + 1) * sub).min(ns);
            let w = 1.0 / (hi - b * sub) as f64;
            (b * sub..hi).map(|s| (s, w)).collect()
        })
        .collect()
}

/// OpenCV `INTER_LINEAR` weights from `ns` to `nd` samples: half-pixel centres
/// `fx = (dx + 0.5)·ns/nd − 0.5` (in f32 as OpenCV), clamped at both ends.
fn linear_taps(ns: usize, nd: usize) -> Taps {
    let scale = 1.0 / (nd as f64 / ns as f64);
    (0..nd)
        .map(|dx| {
            let mut fx = ((dx as f64 + 0.5) * scale - 0.5) as f32;
            let mut sx = fx.floor() as i64;
            fx -= sx as f32;
            if sx < 0 {
                fx = 0.0;
                sx = 0;
            }
            if sx >= ns as i64 - 1 {
                fx = 0.0;
                sx = ns as i64 - 1;
            }
            let sx = sx as usize;
            if fx == 0.0 { vec![(sx, 1.0)] } else { vec![(sx, f64::from(1.0 - fx)), (sx + 1, f64::from(fx))] }
        })
        .collect()
}

/// Resamples axis `axis` of a C-order 4-D buffer of logical shape `shape` with `taps`.
fn resample_axis<T: Real>(src: &[T], shape: [usize; 4], axis: usize, taps: &Taps, par: Par) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let m = taps.len();
    let mut out = vec![T::default(); outer * m * inner];
    if out.is_empty() {
        return out;
    }
    par.for_each_chunk_mut(&mut out, m * inner, |o, chunk| {
        let mut acc = vec![0f64; inner];
        for (y, tap) in taps.iter().enumerate() {
            acc.fill(0.0);
            for &(x, w) in tap {
                let s = &src[(o * n + x) * inner..][..inner];
                for (a, &v) in acc.iter_mut().zip(s) {
                    *a += w * v.to_f64();
                }
            }
            for (d, &a) in chunk[y * inner..(y + 1) * inner].iter_mut().zip(&acc) {
                *d = T::from_f64(a);
            }
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Blur (imblur)
// ---------------------------------------------------------------------------------------------

/// OpenCV `getGaussianKernel(n, sigma)` for `sigma > 0`: sum-normalised taps.
fn opencv_gaussian_kernel(n: usize, sigma: f64) -> Vec<f64> {
    let scale2 = -0.5 / (sigma * sigma);
    let c = (n as f64 - 1.0) * 0.5;
    let mut k: Vec<f64> = (0..n)
        .map(|i| {
            let x = i as f64 - c;
            (scale2 * x * x).exp()
        })
        .collect();
    let s = 1.0 / k.iter().sum::<f64>();
    k.iter_mut().for_each(|v| *v *= s);
    k
}

/// CaImAn's n-D taps: `exp(−x²/(2σ²))` for `x = −⌊siz/2⌋..=⌊siz/2⌋`, L2-normalised.
fn l2_gaussian_taps(siz: usize, sigma: f64) -> Vec<f64> {
    let h = (siz / 2) as i64;
    let mut k: Vec<f64> = (-h..=h).map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let s = 1.0 / k.iter().map(|v| v * v).sum::<f64>().sqrt();
    k.iter_mut().for_each(|v| *v *= s);
    k
}

/// A spatial filter: separable passes `(axis, taps)` or a full user kernel.
#[derive(Debug, Clone)]
struct Blur {
    passes: Vec<(usize, Vec<f64>)>,
    kernel: Option<([usize; 3], Vec<f64>)>,
}

impl Blur {
    fn new(nd: usize, sig: &[f64], siz: &[usize], kernel: Option<&NdArray<f64>>) -> Result<Self> {
        if let Some(k) = kernel {
            if k.shape.len() != nd || k.shape.contains(&0) || k.data.len() != k.shape.iter().product::<usize>() {
                return Err(Error::InvalidParam(format!("kernel of shape {:?} does not fit {nd}-D frames", k.shape)));
            }
            if k.data.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: "kernel" });
            }
            let mut shape = [1usize; 3];
            shape[..nd].copy_from_slice(&k.shape);
            return Ok(Blur { passes: Vec::new(), kernel: Some((shape, k.data.clone())) });
        }
        if sig.len() != nd || siz.len() != nd {
            return Err(Error::InvalidParam(format!(
                "gSig {sig:?} and gSiz {siz:?} need one entry per spatial axis ({nd})"
            )));
        }
        if sig.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::InvalidParam(format!("gSig must be positive, got {sig:?}")));
        }
        let passes = if nd == 2 {
            if siz.iter().any(|&s| s % 2 == 0) {
                return Err(Error::InvalidParam(format!("2-D blur kernel sizes must be odd, got {siz:?}")));
            }
            // OpenCV GaussianBlur(ksize=(siz[0], siz[1]), sigmaX=sig[0], sigmaY=sig[1]): ksize is
            // (width, height), so siz[0]/sig[0] act along the columns (axis 1), siz[1]/sig[1]
            // along the rows (axis 0). Row filter (along columns) first, as sepFilter2D.
            vec![(1, opencv_gaussian_kernel(siz[0], sig[0])), (0, opencv_gaussian_kernel(siz[1], sig[1]))]
        } else {
            (0..nd).map(|i| (i, l2_gaussian_taps(siz[i], sig[i]))).collect()
        };
        Ok(Blur { passes, kernel: None })
    }

    /// Filters every column (frame) of a pixel-major `d × t` buffer with a zero border.
    fn apply<T: Real>(&self, src: &[T], t: usize, grid: Grid, par: Par) -> Vec<T> {
        if let Some((shape, data)) = &self.kernel {
            return corr_kernel(src, t, grid, *shape, data, par);
        }
        let mut cur: Option<Vec<T>> = None;
        for (axis, taps) in &self.passes {
            let next = corr_axis(cur.as_deref().unwrap_or(src), t, grid, *axis, taps, par);
            cur = Some(next);
        }
        cur.unwrap_or_else(|| src.to_vec())
    }
}

/// Correlation along one axis with a zero border, centre at `taps.len() / 2`.
fn corr_axis<T: Real>(src: &[T], t: usize, grid: Grid, axis: usize, taps: &[f64], par: Par) -> Vec<T> {
    let r = (taps.len() / 2) as i64;
    let stride = grid.stride(axis);
    let len = grid.n[axis] as i64;
    let mut out = vec![T::default(); src.len()];
    if out.is_empty() {
        return out;
    }
    par.for_each_chunk_mut(&mut out, BLOCK * t, |bi, chunk| {
        let mut acc = vec![0f64; t];
        for (li, row) in chunk.chunks_mut(t).enumerate() {
            let p = bi * BLOCK + li;
            let c = ((p / stride) as i64) % len;
            acc.fill(0.0);
            for (kk, &w) in taps.iter().enumerate() {
                let x = c + kk as i64 - r;
                if x < 0 || x >= len {
                    continue;
                }
                let q = (p as i64 + (x - c) * stride as i64) as usize;
                for (a, &v) in acc.iter_mut().zip(&src[q * t..(q + 1) * t]) {
                    *a += w * v.to_f64();
                }
            }
            for (d, &a) in row.iter_mut().zip(&acc) {
                *d = T::from_f64(a);
            }
        }
    });
    out
}

/// Full n-D correlation with a user kernel (scipy `correlate(mode='constant')`).
fn corr_kernel<T: Real>(src: &[T], t: usize, grid: Grid, shape: [usize; 3], data: &[f64], par: Par) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    if out.is_empty() {
        return out;
    }
    let centre = [shape[0] / 2, shape[1] / 2, shape[2] / 2];
    par.for_each_chunk_mut(&mut out, BLOCK * t, |bi, chunk| {
        let mut acc = vec![0f64; t];
        for (li, row) in chunk.chunks_mut(t).enumerate() {
            let p = bi * BLOCK + li;
            let c = [p % grid.n[0], (p / grid.n[0]) % grid.n[1], p / (grid.n[0] * grid.n[1])];
            acc.fill(0.0);
            for a0 in 0..shape[0] {
                for a1 in 0..shape[1] {
                    for a2 in 0..shape[2] {
                        let w = data[(a0 * shape[1] + a1) * shape[2] + a2];
                        let x = [
                            c[0] as i64 + a0 as i64 - centre[0] as i64,
                            c[1] as i64 + a1 as i64 - centre[1] as i64,
                            c[2] as i64 + a2 as i64 - centre[2] as i64,
                        ];
                        if (0..3).any(|i| x[i] < 0 || x[i] >= grid.n[i] as i64) || w == 0.0 {
                            continue;
                        }
                        let q = grid.index([x[0] as usize, x[1] as usize, x[2] as usize]);
                        for (a, &v) in acc.iter_mut().zip(&src[q * t..(q + 1) * t]) {
                            *a += w * v.to_f64();
                        }
                    }
                }
            }
            for (d, &a) in row.iter_mut().zip(&acc) {
                *d = T::from_f64(a);
            }
        }
    });
    out
}

/// CaImAn's `imblur`: filters every frame of `y` (`d × T`, Fortran pixel order, as `Yr`) with a
/// zero border.
///
/// - Planar frames: OpenCV `GaussianBlur(frame, ksize=(siz[0], siz[1]), sigmaX=sig[0],
///   sigmaY=sig[1], borderType=BORDER_CONSTANT)` — sum-normalised `getGaussianKernel` taps; OpenCV
///   reads `ksize` as (width, height), so `siz[0]`/`sig[0]` act along the columns (the \[Q\] of the
///   module docs). Sizes must be odd.
/// - Volumes: separable Gaussian along each axis `i` with taps `exp(−x²/(2·sig[i]²))`,
///   `x = −⌊siz[i]/2⌋..=⌊siz[i]/2⌋`, L2-normalised (scipy `correlate`, `mode='constant'`).
/// - `kernel`: plain correlation with that kernel (centre at `shape // 2`, zero border).
///
/// # Errors
/// [`Error::ShapeMismatch`] when `y` does not have `dims.pixels()` rows; [`Error::InvalidParam`]
/// for sizes/widths that do not match the frame's axes, non-positive `sig`, even 2-D sizes, or a
/// kernel of the wrong rank; [`Error::NonFinite`] for a kernel with NaN.
pub fn imblur(
    y: ArrayView2<'_, f32>,
    dims: Dims,
    sig: &[f64],
    siz: &[usize],
    kernel: Option<&NdArray<f64>>,
    par: Par,
) -> Result<Array2<f32>> {
    let grid = Grid::new(dims);
    check_shape("imblur movie (pixels × frames)", y.dim(), (grid.pixels(), y.ncols()))?;
    let blur = Blur::new(grid.nd, sig, siz, kernel)?;
    let t = y.ncols();
    let out = if t == 0 { Vec::new() } else { blur.apply(&to_rows(y), t, grid, par) };
    Ok(Array2::from_shape_vec((grid.pixels(), t), out).expect("shape matches"))
}

// ---------------------------------------------------------------------------------------------
// Greedy ROI
// ---------------------------------------------------------------------------------------------

/// The pixel score: `Σ_t ρ²`, or `max_t` of the causal moving average of `ρ²` over `rolling`
/// frames (scipy `lfilter(ones(L)/L, 1, ρ²)`, zero initial state).
fn score_row(rho: &[f32], rolling: Option<usize>) -> f64 {
    match rolling {
        None => rho.iter().map(|&v| f64::from(v) * f64::from(v)).sum(),
        Some(l) => {
            let w = f64::from(1.0f32 / l as f32);
            let mut s = 0.0;
            let mut best = f64::NEG_INFINITY;
            for (i, &v) in rho.iter().enumerate() {
                s += f64::from(v) * f64::from(v);
                if i >= l {
                    let old = f64::from(rho[i - l]);
                    s -= old * old;
                }
                best = best.max(s * w);
            }
            best
        }
    }
}

/// First index of the maximum of `v` in C order of the frame (numpy `argmax` on the image).
fn argmax_c_order(v: &[f64], grid: Grid) -> [usize; 3] {
    let mut best = [0usize; 3];
    let mut best_v = f64::NEG_INFINITY;
    for i in 0..grid.n[0] {
        for j in 0..grid.n[1] {
            for k in 0..grid.n[2] {
                let x = v[grid.index([i, j, k])];
                if x > best_v {
                    best = [i, j, k];
                    best_v = x;
                }
            }
        }
    }
    best
}

/// Validated greedy options with the half-widths.
struct GreedyPlan {
    k: usize,
    ghalf: [usize; 3],
    blur: Blur,
    n_iter: usize,
    rolling: Option<usize>,
}

impl GreedyPlan {
    fn new(opts: &GreedyOptions, grid: Grid) -> Result<Self> {
        let nd = grid.nd;
        if opts.gsig.len() != nd || opts.gsiz.len() != nd {
            return Err(Error::InvalidParam(format!(
                "gSig {:?} and gSiz {:?} need one entry per spatial axis ({nd})",
                opts.gsig, opts.gsiz
            )));
        }
        if opts.n_iter == 0 {
            return Err(Error::InvalidParam("nIter must be at least 1".into()));
        }
        if opts.rolling_sum && opts.rolling_length == 0 {
            return Err(Error::InvalidParam("rolling_length must be at least 1".into()));
        }
        if opts.k > grid.pixels() {
            return Err(Error::InvalidParam(format!(
                "K = {} components is more than the {} pixels searched",
                opts.k,
                grid.pixels()
            )));
        }
        let mut ghalf = [0usize; 3];
        for i in 0..nd {
            ghalf[i] = opts.gsiz[i] / 2;
        }
        let siz: Vec<usize> = (0..nd).map(|i| 2 * ghalf[i] + 1).collect();
        let blur = Blur::new(nd, &opts.gsig, &siz, opts.kernel.as_ref())?;
        Ok(GreedyPlan {
            k: opts.k,
            ghalf,
            blur,
            n_iter: opts.n_iter,
            rolling: opts.rolling_sum.then_some(opts.rolling_length),
        })
    }
}

struct GreedyOut {
    a: Vec<f32>, // d × K row-major
    c: Vec<f64>, // K × T
    center: Vec<[usize; 3]>,
    residual: Vec<f32>, // d × T
}

/// CaImAn's `finetune`: alternating rank-1 NMF on the window pixels `pix` of `y`.
fn finetune(y: &[f32], t: usize, pix: &[usize], c0: Vec<f64>, n_iter: usize) -> (Vec<f64>, Vec<f64>) {
    let mut c = c0;
    let mut a = vec![0f64; pix.len()];
    for _ in 0..n_iter {
        for (ai, &p) in a.iter_mut().zip(pix) {
            let row = &y[p * t..(p + 1) * t];
            *ai = row.iter().zip(&c).map(|(&v, &ct)| f64::from(v) * ct).sum::<f64>().max(0.0);
        }
        let nrm = (a.iter().map(|v| v * v).sum::<f64>() + EPS_F32).sqrt();
        a.iter_mut().for_each(|v| *v /= nrm);
        c.fill(0.0);
        for (&ai, &p) in a.iter().zip(pix) {
            if ai == 0.0 {
                continue;
            }
            for (ct, &v) in c.iter_mut().zip(&y[p * t..(p + 1) * t]) {
                *ct += ai * f64::from(v);
            }
        }
    }
    (a, c)
}

/// Pixels of the box `lo..hi` (per axis) in Fortran order, with their box coordinates.
fn box_pixels(grid: Grid, lo: [usize; 3], hi: [usize; 3]) -> Vec<(usize, [usize; 3])> {
    let mut out = Vec::with_capacity((hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2]));
    for k in lo[2]..hi[2] {
        for j in lo[1]..hi[1] {
            for i in lo[0]..hi[0] {
                out.push((grid.index([i, j, k]), [i - lo[0], j - lo[1], k - lo[2]]));
            }
        }
    }
    out
}

/// The greedy search on a pixel-major working copy `y` (`d × t`), consumed.
fn greedy_core(mut y: Vec<f32>, grid: Grid, t: usize, plan: &GreedyPlan, par: Par) -> GreedyOut {
    let d = grid.pixels();
    let kk = plan.k;
    let med = row_medians(&y, t, par);
    par.for_each_chunk_mut(&mut y, t, |p, row| row.iter_mut().for_each(|v| *v -= med[p]));
    let mut rho = plan.blur.apply(&y, t, grid, par);
    let nblocks = d.div_ceil(BLOCK);
    let mut v: Vec<f64> = par
        .map_indices(nblocks, |bi| {
            (bi * BLOCK..((bi + 1) * BLOCK).min(d))
                .map(|p| score_row(&rho[p * t..(p + 1) * t], plan.rolling))
                .collect::<Vec<_>>()
        })
        .concat();

    let mut a = vec![0f32; d * kk];
    let mut c = vec![0f64; kk * t];
    let mut center = Vec::with_capacity(kk);
    for k in 0..kk {
        let ij = argmax_c_order(&v, grid);
        center.push(ij);
        let mut lo = [0usize; 3];
        let mut hi = [1usize; 3];
        for ax in 0..grid.nd {
            lo[ax] = ij[ax].saturating_sub(plan.ghalf[ax]);
            hi[ax] = (ij[ax] + plan.ghalf[ax] + 1).min(grid.n[ax]);
        }
        let win = box_pixels(grid, lo, hi);
        let pix: Vec<usize> = win.iter().map(|w| w.0).collect();
        let p0 = grid.index(ij);
        let trace0: Vec<f64> = rho[p0 * t..(p0 + 1) * t].iter().map(|&v| f64::from(v)).collect();
        let (coef, score) = finetune(&y, t, &pix, trace0, plan.n_iter);
        for (&p, &ai) in pix.iter().zip(&coef) {
            a[p * kk + k] = ai as f32;
            if ai != 0.0 {
                for (v, &ct) in y[p * t..(p + 1) * t].iter_mut().zip(&score) {
                    *v = (f64::from(*v) - ai * ct) as f32;
                }
            }
        }
        c[k * t..(k + 1) * t].copy_from_slice(&score);
        if k + 1 < kk {
            // Update ρ in the ±2·gHalf neighbourhood by the blurred footprint times its trace.
            let mut mlo = [0usize; 3];
            let mut mhi = [1usize; 3];
            for ax in 0..grid.nd {
                mlo[ax] = ij[ax].saturating_sub(2 * plan.ghalf[ax]);
                mhi[ax] = (ij[ax] + 2 * plan.ghalf[ax] + 1).min(grid.n[ax]);
            }
            let local = Grid { n: [mhi[0] - mlo[0], mhi[1] - mlo[1], mhi[2] - mlo[2]], nd: grid.nd };
            let mut img = vec![0f64; local.pixels()];
            for ((_, wc), &ai) in win.iter().zip(&coef) {
                img[local.index([wc[0] + lo[0] - mlo[0], wc[1] + lo[1] - mlo[1], wc[2] + lo[2] - mlo[2]])] = ai;
            }
            let blurred = plan.blur.apply(&img, 1, local, Par::Seq);
            for (p, lc) in box_pixels(grid, mlo, mhi) {
                let w = blurred[local.index(lc)];
                let row = &mut rho[p * t..(p + 1) * t];
                if w != 0.0 {
                    for (r, &ct) in row.iter_mut().zip(&score) {
                        *r = (f64::from(*r) - w * ct) as f32;
                    }
                }
                v[p] = score_row(row, plan.rolling);
            }
        }
    }
    par.for_each_chunk_mut(&mut y, t, |p, row| row.iter_mut().for_each(|v| *v += med[p]));
    GreedyOut { a, c, center, residual: y }
}

/// CaImAn's `greedyROI` (without its background NMF, which [`initialize_components`] runs on
/// `max(residual, 0)`): subtract each pixel's temporal median, blur every frame ([`imblur`]),
/// score each pixel by `Σ_t ρ²` (or the largest moving average with `rolling_sum`), then `K`
/// times: take the best pixel, refine a rank-1 factorisation on the `gSiz` window around it
/// (`finetune`, `nIter` iterations: `a = max(0, Y·c)/‖a‖`, `c = Yᵀa`), subtract it from the movie
/// and from `ρ` (blurred) in the `±2·gHalf` neighbourhood, and rescore there.
///
/// `y` is `d × T` (Fortran pixel order, as `Yr`) for frames of `dims`.
///
/// # Errors
/// [`Error::ShapeMismatch`] for a `y` without `dims.pixels()` rows, [`Error::Empty`] for no
/// frames, [`Error::NonFinite`] for NaN/inf, [`Error::InvalidParam`] for options that do not fit
/// the frame (see [`GreedyOptions`]) or `K` above the number of pixels.
pub fn greedy_roi(y: ArrayView2<'_, f32>, dims: Dims, opts: &GreedyOptions, par: Par) -> Result<GreedyResult> {
    let grid = Grid::new(dims);
    check_shape("greedy_roi movie (pixels × frames)", y.dim(), (grid.pixels(), y.ncols()))?;
    let t = y.ncols();
    if t == 0 || grid.pixels() == 0 {
        return Err(Error::Empty { what: "greedy_roi movie" });
    }
    check_finite("greedy_roi movie", y.iter())?;
    let plan = GreedyPlan::new(opts, grid)?;
    let out = greedy_core(to_rows(y), grid, t, &plan, par);
    Ok(greedy_result(out, grid, t, opts.k))
}

fn greedy_result(out: GreedyOut, grid: Grid, t: usize, k: usize) -> GreedyResult {
    let d = grid.pixels();
    let mut center = Array2::zeros((k, grid.nd));
    for (r, c) in out.center.iter().enumerate() {
        for ax in 0..grid.nd {
            center[(r, ax)] = c[ax] as f64;
        }
    }
    GreedyResult {
        a: Array2::from_shape_vec((d, k), out.a).expect("shape"),
        c: Array2::from_shape_vec((k, t), out.c).expect("shape"),
        center,
        residual: Array2::from_shape_vec((d, t), out.residual).expect("shape"),
    }
}

// ---------------------------------------------------------------------------------------------
// Dense products on row-major buffers (blocked, deterministic for any `par`)
// ---------------------------------------------------------------------------------------------

/// `Σ x·y` for f32 vectors: 8 f32 lanes over runs of 256 values (what SSE vectorises), the runs
/// summed in f64 (the relative error stays at the f32 rounding of one run).
#[inline]
fn dot_f32(x: &[f32], y: &[f32]) -> f64 {
    let mut total = 0f64;
    for (xc, yc) in x.chunks(256).zip(y.chunks(256)) {
        let mut acc = [0f32; 8];
        let (xe, ye) = (xc.chunks_exact(8), yc.chunks_exact(8));
        let mut tail = 0f32;
        for (&a, &b) in xe.remainder().iter().zip(ye.remainder()) {
            tail += a * b;
        }
        for (a, b) in xe.zip(ye) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        let run = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
        total += f64::from(run);
    }
    total
}

/// `acc += w·x` in f32.
#[inline]
fn axpy_f32(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}

/// Adds an f32 accumulator into an f64 one and clears it.
fn flush(acc64: &mut [f64], acc32: &mut [f32]) {
    for (a, b) in acc64.iter_mut().zip(acc32.iter_mut()) {
        *a += f64::from(*b);
        *b = 0.0;
    }
}

/// Rows accumulated in f32 before they are added into the f64 sums of a block.
const FLUSH: usize = 16;

/// Row-major `r × c` → row-major `c × r`.
fn transpose(b: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0f64; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = b[i * c + j];
        }
    }
    out
}

/// `X·B`: `X` is `n × m` (f32), `B` is `m × k`; result `n × k`.
fn x_times(x: &[f32], n: usize, m: usize, b: &[f64], k: usize, par: Par) -> Vec<f64> {
    let mut out = vec![0f64; n * k];
    if out.is_empty() {
        return out;
    }
    let bt: Vec<f32> = transpose(b, m, k).iter().map(|&v| v as f32).collect();
    par.for_each_chunk_mut(&mut out, BLOCK * k, |bi, chunk| {
        for (li, orow) in chunk.chunks_mut(k).enumerate() {
            let i = bi * BLOCK + li;
            let xrow = &x[i * m..(i + 1) * m];
            for (c, o) in orow.iter_mut().enumerate() {
                *o = dot_f32(xrow, &bt[c * m..(c + 1) * m]);
            }
        }
    });
    out
}

/// `Xᵀ·B`: `X` is `n × m` (f32), `B` is `n × k`; result `m × k` (partial sums per fixed block of
/// rows, added in block order).
fn xt_times(x: &[f32], n: usize, m: usize, b: &[f64], k: usize, par: Par) -> Vec<f64> {
    let nblocks = n.div_ceil(BLOCK);
    let parts = par.map_indices(nblocks, |bi| {
        // k × m accumulators: one contiguous axpy per (row, column of B).
        let mut acc = vec![0f64; k * m];
        let mut acc32 = vec![0f32; k * m];
        let rows = bi * BLOCK..((bi + 1) * BLOCK).min(n);
        for (r, i) in rows.enumerate() {
            let xrow = &x[i * m..(i + 1) * m];
            for c in 0..k {
                let w = b[i * k + c];
                if w != 0.0 {
                    axpy_f32(&mut acc32[c * m..(c + 1) * m], w as f32, xrow);
                }
            }
            if r % FLUSH == FLUSH - 1 {
                flush(&mut acc, &mut acc32);
            }
        }
        flush(&mut acc, &mut acc32);
        acc
    });
    let mut out = vec![0f64; k * m];
    for p in parts {
        out.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
    }
    transpose(&out, k, m)
}

/// `BᵀB` for a row-major `n × k` buffer.
fn gram(b: &[f64], n: usize, k: usize) -> Vec<f64> {
    let mut g = vec![0f64; k * k];
    for i in 0..n {
        let r = &b[i * k..(i + 1) * k];
        for a in 0..k {
            if r[a] == 0.0 {
                continue;
            }
            for c in a..k {
                g[a * k + c] += r[a] * r[c];
            }
        }
    }
    for a in 0..k {
        for c in 0..a {
            g[a * k + c] = g[c * k + a];
        }
    }
    g
}

// ---------------------------------------------------------------------------------------------
// NMF (scikit-learn coordinate descent) and NNDSVD
// ---------------------------------------------------------------------------------------------

/// Orthonormalises the columns of a row-major `n × l` buffer in place (modified Gram–Schmidt,
/// twice); a column that is (numerically) in the span of the previous ones becomes zero.
fn orthonormalise(q: &mut [f64], n: usize, l: usize) {
    let col_norm = |q: &[f64], j: usize| (0..n).map(|r| q[r * l + j] * q[r * l + j]).sum::<f64>().sqrt();
    for _pass in 0..2 {
        for j in 0..l {
            let before = col_norm(q, j);
            for i in 0..j {
                let dot: f64 = (0..n).map(|r| q[r * l + i] * q[r * l + j]).sum();
                for r in 0..n {
                    q[r * l + j] -= dot * q[r * l + i];
                }
            }
            let nrm = col_norm(q, j);
            let scale = if nrm > 1e-10 * before && nrm > 1e-300 { 1.0 / nrm } else { 0.0 };
            for r in 0..n {
                q[r * l + j] *= scale;
            }
        }
    }
}

/// Eigen-decomposition of a symmetric `l × l` matrix (cyclic Jacobi): eigenvalues in decreasing
/// order and the matching eigenvectors as the columns of a row-major `l × l` matrix.
fn sym_eigen(mut a: Vec<f64>, l: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; l * l];
    for i in 0..l {
        v[i * l + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..l)
            .flat_map(|i| (0..l).map(move |j| (i, j)))
            .filter(|&(i, j)| i != j)
            .map(|(i, j)| a[i * l + j].powi(2))
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..l {
            for q in p + 1..l {
                let apq = a[p * l + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * l + q] - a[p * l + p]) / (2.0 * apq);
                let tt = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let tt = if theta == 0.0 { 1.0 } else { tt };
                let cs = 1.0 / (tt * tt + 1.0).sqrt();
                let sn = tt * cs;
                for k in 0..l {
                    let akp = a[k * l + p];
                    let akq = a[k * l + q];
                    a[k * l + p] = cs * akp - sn * akq;
                    a[k * l + q] = sn * akp + cs * akq;
                }
                for k in 0..l {
                    let apk = a[p * l + k];
                    let aqk = a[q * l + k];
                    a[p * l + k] = cs * apk - sn * aqk;
                    a[q * l + k] = sn * apk + cs * aqk;
                }
                for k in 0..l {
                    let vkp = v[k * l + p];
                    let vkq = v[k * l + q];
                    v[k * l + p] = cs * vkp - sn * vkq;
                    v[k * l + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&i, &j| a[j * l + j].total_cmp(&a[i * l + i]));
    let vals = order.iter().map(|&i| a[i * l + i]).collect();
    let mut vecs = vec![0f64; l * l];
    for (new, &old) in order.iter().enumerate() {
        for r in 0..l {
            vecs[r * l + new] = v[r * l + old];
        }
    }
    (vals, vecs)
}

/// Leading `k` singular triplets of `X` (`n × m`) by scikit-learn's randomized SVD recipe
/// (range finder, 7 power iterations when `k < 0.1·min(n, m)` else 4, QR normalisation,
/// `svd_flip` on `U`) with 4 oversamples instead of 10 (each column costs a pass over `X`; the
/// result only seeds the NMF) and a fixed pseudo-random start. Returns `U` (`n × k`),
/// `s`, `Vᵀ` (`k × m`), row-major.
fn randomized_svd(x: &[f32], n: usize, m: usize, k: usize, par: Par) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let l = (k + 4).min(n.min(m));
    let n_iter = if (k as f64) < 0.1 * n.min(m) as f64 { 7 } else { 4 };
    // Deterministic start (xorshift64*, uniform in [-1, 1)).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let omega: Vec<f64> = (0..m * l)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let mut q = x_times(x, n, m, &omega, l, par);
    orthonormalise(&mut q, n, l);
    for _ in 0..n_iter {
        let mut z = xt_times(x, n, m, &q, l, par);
        orthonormalise(&mut z, m, l);
        q = x_times(x, n, m, &z, l, par);
        orthonormalise(&mut q, n, l);
    }
    // B = Qᵀ X (l × m), stored as its transpose (m × l).
    let bt = xt_times(x, n, m, &q, l, par);
    // B Bᵀ (l × l).
    let bbt = gram(&bt, m, l);
    let (vals, w) = sym_eigen(bbt, l);
    let s: Vec<f64> = vals.iter().take(k).map(|&v| v.max(0.0).sqrt()).collect();
    let mut u = vec![0f64; n * k];
    for r in 0..n {
        for j in 0..k {
            u[r * k + j] = (0..l).map(|i| q[r * l + i] * w[i * l + j]).sum();
        }
    }
    let mut vt = vec![0f64; k * m];
    for j in 0..k {
        if s[j] <= 0.0 {
            continue;
        }
        for c in 0..m {
            vt[j * m + c] = (0..l).map(|i| w[i * l + j] * bt[c * l + i]).sum::<f64>() / s[j];
        }
    }
    // svd_flip (u-based): the largest |U[:, j]| entry is made positive.
    for j in 0..k {
        let mut best = 0.0f64;
        for r in 0..n {
            if u[r * k + j].abs() > best.abs() {
                best = u[r * k + j];
            }
        }
        if best < 0.0 {
            (0..n).for_each(|r| u[r * k + j] = -u[r * k + j]);
            (0..m).for_each(|c| vt[j * m + c] = -vt[j * m + c]);
        }
    }
    (u, s, vt)
}

fn l2(it: impl Iterator<Item = f64>) -> f64 {
    it.map(|a| a * a).sum::<f64>().sqrt()
}

/// NNDSVD on a validated row-major `X`; returns `W` (`n × k`) and `Hᵀ` (`m × k`), row-major.
fn nndsvd_core(x: &[f32], n: usize, m: usize, k: usize, init: NmfInit, par: Par) -> (Vec<f64>, Vec<f64>) {
    let (u, s, vt) = randomized_svd(x, n, m, k, par);
    let mut w = vec![0f64; n * k];
    let mut ht = vec![0f64; m * k];
    for j in 0..k {
        if j == 0 {
            let sq = s[0].sqrt();
            (0..n).for_each(|r| w[r * k] = sq * u[r * k].abs());
            (0..m).for_each(|c| ht[c * k] = sq * vt[c].abs());
            continue;
        }
        let xcol = |r: usize| u[r * k + j];
        let yrow = |c: usize| vt[j * m + c];
        let xp = l2((0..n).map(|r| xcol(r).max(0.0)));
        let yp = l2((0..m).map(|c| yrow(c).max(0.0)));
        let xn = l2((0..n).map(|r| xcol(r).min(0.0)));
        let yn = l2((0..m).map(|c| yrow(c).min(0.0)));
        let (mp, mn) = (xp * yp, xn * yn);
        let (sign, xnrm, ynrm, sigma) = if mp > mn { (1.0, xp, yp, mp) } else { (-1.0, xn, yn, mn) };
        if sigma <= 0.0 {
            continue;
        }
        let lbd = (s[j] * sigma).sqrt();
        (0..n).for_each(|r| w[r * k + j] = lbd * (sign * xcol(r)).max(0.0) / xnrm);
        (0..m).for_each(|c| ht[c * k + j] = lbd * (sign * yrow(c)).max(0.0) / ynrm);
    }
    let eps = 1e-6;
    w.iter_mut().chain(ht.iter_mut()).filter(|v| **v < eps).for_each(|v| *v = 0.0);
    if init == NmfInit::Nndsvda {
        let avg = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        w.iter_mut().chain(ht.iter_mut()).filter(|v| **v == 0.0).for_each(|v| *v = avg);
    }
    (w, ht)
}

/// Coordinate descent on one row of `W` (scikit-learn `_update_cdnmf_fast` for one sample; rows
/// are independent): returns the row's projected-gradient violation.
#[inline]
fn cd_row(row: &mut [f64], hht: &[f64], xht: &[f64], k: usize) -> f64 {
    let mut v = 0.0;
    for t in 0..k {
        let mut grad = -xht[t];
        for r in 0..k {
            grad += hht[t * k + r] * row[r];
        }
        let pg = if row[t] == 0.0 { grad.min(0.0) } else { grad };
        v += pg.abs();
        let hess = hht[t * k + t];
        if hess != 0.0 {
            row[t] = (row[t] - grad / hess).max(0.0);
        }
    }
    v
}

/// One coordinate-descent pass over the rows of `w` (`rows × k`) with `HHt` (`k × k`) and `XHt`
/// (`rows × k`); returns the violation.
fn cd_update(w: &mut [f64], hht: &[f64], xht: &[f64], k: usize, par: Par) -> f64 {
    let mut blocks: Vec<(usize, &mut [f64], f64)> =
        w.chunks_mut(BLOCK * k).enumerate().map(|(i, c)| (i, c, 0.0)).collect();
    par.for_each_chunk_mut(&mut blocks, 1, |_, b| {
        let (bi, wb, viol) = &mut b[0];
        let mut v = 0.0;
        for (li, row) in wb.chunks_mut(k).enumerate() {
            let i = *bi * BLOCK + li;
            v += cd_row(row, hht, &xht[i * k..(i + 1) * k], k);
        }
        *viol = v;
    });
    blocks.iter().map(|b| b.2).sum()
}

/// The `W` half of a CD iteration in one pass over `X`: for each row, `X_i·Hᵀ`, the CD update of
/// `W_i`, then its contributions to `XᵀW` and `WᵀW` (what the `H` half needs). Identical to
/// scikit-learn's separate products (rows of `W` are independent). Returns the violation, `XᵀW`
/// (`m × k`) and `WᵀW` (`k × k`).
fn cd_update_w_fused(x: &[f32], m: usize, k: usize, w: &mut [f64], ht: &[f64], par: Par) -> (f64, Vec<f64>, Vec<f64>) {
    let hht = gram(ht, m, k);
    let h: Vec<f32> = transpose(ht, m, k).iter().map(|&v| v as f32).collect(); // k × m
    type Part = (f64, Vec<f64>, Vec<f64>);
    let mut blocks: Vec<(usize, &mut [f64], Option<Part>)> =
        w.chunks_mut(BLOCK * k).enumerate().map(|(i, c)| (i, c, None)).collect();
    par.for_each_chunk_mut(&mut blocks, 1, |_, b| {
        let (bi, wb, out) = &mut b[0];
        let mut viol = 0.0;
        let mut xtw = vec![0f64; k * m]; // k × m
        let mut xtw32 = vec![0f32; k * m];
        let mut wtw = vec![0f64; k * k];
        let mut xh = vec![0f64; k];
        let nrows = wb.len() / k;
        for (li, row) in wb.chunks_mut(k).enumerate() {
            let i = *bi * BLOCK + li;
            let xrow = &x[i * m..(i + 1) * m];
            for (c, v) in xh.iter_mut().enumerate() {
                *v = dot_f32(xrow, &h[c * m..(c + 1) * m]);
            }
            viol += cd_row(row, &hht, &xh, k);
            for c in 0..k {
                let wc = row[c];
                if wc == 0.0 {
                    continue;
                }
                axpy_f32(&mut xtw32[c * m..(c + 1) * m], wc as f32, xrow);
                for r in 0..k {
                    wtw[c * k + r] += wc * row[r];
                }
            }
            if li % FLUSH == FLUSH - 1 || li + 1 == nrows {
                flush(&mut xtw, &mut xtw32);
            }
        }
        *out = Some((viol, xtw, wtw));
    });
    let mut viol = 0.0;
    let mut xtw = vec![0f64; k * m];
    let mut wtw = vec![0f64; k * k];
    for (_, _, part) in blocks {
        let (v, a, g) = part.expect("every block ran");
        viol += v;
        xtw.iter_mut().zip(&a).for_each(|(o, v)| *o += v);
        wtw.iter_mut().zip(&g).for_each(|(o, v)| *o += v);
    }
    (viol, transpose(&xtw, k, m), wtw)
}

/// The CD iterations on validated buffers; returns the iterations run.
#[allow(clippy::too_many_arguments)]
fn nmf_cd(x: &[f32], m: usize, k: usize, w: &mut [f64], ht: &mut [f64], max_iter: usize, tol: f64, par: Par) -> usize {
    let mut violation_init = 0.0;
    let mut it = 0;
    while it < max_iter {
        it += 1;
        let (mut violation, xtw, wtw) = cd_update_w_fused(x, m, k, w, ht, par);
        violation += cd_update(ht, &wtw, &xtw, k, par);
        if it == 1 {
            violation_init = violation;
        }
        if violation_init == 0.0 || violation / violation_init <= tol {
            break;
        }
    }
    it
}

fn check_nmf_input(x: ArrayView2<'_, f32>) -> Result<()> {
    if x.is_empty() {
        return Err(Error::Empty { what: "NMF data" });
    }
    check_finite("NMF data", x.iter())?;
    if x.iter().any(|&v| v < 0.0) {
        return Err(Error::InvalidParam("NMF data must be non-negative".into()));
    }
    Ok(())
}

fn rows_to_array(v: Vec<f64>, r: usize, c: usize) -> Array2<f64> {
    Array2::from_shape_vec((r, c), v).expect("shape")
}

/// scikit-learn's NNDSVD initialisation of `X ≈ W·H` (`X` is `n × m`, non-negative): `W`
/// (`n × k`) and `H` (`k × m`) from the leading singular triplets, entries below 1e-6 set to 0,
/// and for [`NmfInit::Nndsvda`] the zeros replaced by the mean of `X`.
///
/// # Errors
/// [`Error::Empty`] for an empty `X`, [`Error::NonFinite`], [`Error::InvalidParam`] for negative
/// data or `k` outside `1..=min(n, m)`.
pub fn nndsvd(x: ArrayView2<'_, f32>, k: usize, init: NmfInit, par: Par) -> Result<(Array2<f64>, Array2<f64>)> {
    check_nmf_input(x)?;
    let (n, m) = x.dim();
    if k == 0 || k > n.min(m) {
        return Err(Error::InvalidParam(format!("NNDSVD needs 1 ≤ n_components ≤ min(n, m) = {}, got {k}", n.min(m))));
    }
    let (w, ht) = nndsvd_core(&to_rows(x), n, m, k, init, par);
    Ok((rows_to_array(w, n, k), rows_to_array(ht, m, k).reversed_axes().as_standard_layout().to_owned()))
}

/// scikit-learn's `NMF(n_components=k, init, solver='cd', beta_loss='frobenius', tol,
/// max_iter).fit_transform(X)` without regularisation: NNDSVD start ([`nndsvd`]), then
/// alternating coordinate-descent passes over `W` and `H` until the projected-gradient violation
/// is at most `tol` times that of the first iteration, or `max_iter` iterations.
///
/// # Errors
/// As [`nndsvd`].
pub fn nmf(x: ArrayView2<'_, f32>, k: usize, opts: &NmfOptions, par: Par) -> Result<NmfResult> {
    check_nmf_input(x)?;
    let (n, m) = x.dim();
    if k == 0 || k > n.min(m) {
        return Err(Error::InvalidParam(format!("NMF needs 1 ≤ n_components ≤ min(n, m) = {}, got {k}", n.min(m))));
    }
    let xs = to_rows(x);
    let (mut w, mut ht) = nndsvd_core(&xs, n, m, k, opts.init, par);
    let n_iter = nmf_cd(&xs, m, k, &mut w, &mut ht, opts.max_iter, opts.tol, par);
    Ok(NmfResult {
        w: rows_to_array(w, n, k),
        h: rows_to_array(ht, m, k).reversed_axes().as_standard_layout().to_owned(),
        n_iter,
    })
}

/// The coordinate-descent iterations of [`nmf`] from a given start `w0` (`n × k`), `h0`
/// (`k × m`) (scikit-learn `init='custom'`).
///
/// # Errors
/// As [`nmf`], plus [`Error::ShapeMismatch`] for factors of the wrong shape and
/// [`Error::InvalidParam`] for negative or non-finite factors.
pub fn nmf_from(
    x: ArrayView2<'_, f32>,
    w0: ArrayView2<'_, f64>,
    h0: ArrayView2<'_, f64>,
    max_iter: usize,
    tol: f64,
    par: Par,
) -> Result<NmfResult> {
    check_nmf_input(x)?;
    let (n, m) = x.dim();
    let k = w0.ncols();
    check_shape("NMF W", w0.dim(), (n, k))?;
    check_shape("NMF H", h0.dim(), (k, m))?;
    if w0.iter().chain(h0.iter()).any(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(Error::InvalidParam("NMF start factors must be finite and non-negative".into()));
    }
    let xs = to_rows(x);
    let mut w = to_rows(w0);
    let mut ht = to_rows(h0.t());
    let n_iter = nmf_cd(&xs, m, k, &mut w, &mut ht, max_iter, tol, par);
    Ok(NmfResult {
        w: rows_to_array(w, n, k),
        h: rows_to_array(ht, m, k).reversed_axes().as_standard_layout().to_owned(),
        n_iter,
    })
}

// ---------------------------------------------------------------------------------------------
// HALS
// ---------------------------------------------------------------------------------------------

/// scipy `uniform_filter(img, size)` (mode 'reflect', f32 output after each axis) > 1e-10.
fn dilated_support(col: &[f32], grid: Grid, size: usize) -> Vec<bool> {
    let mut cur: Vec<f32> = col.to_vec();
    if size > 1 {
        let before = (size / 2) as i64;
        for ax in 0..grid.nd {
            let len = grid.n[ax] as i64;
            let stride = grid.stride(ax);
            let reflect = |x: i64| -> i64 {
                // 'reflect' (d c b a | a b c d | d c b a), periodic with period 2·len.
                let period = 2 * len;
                let mut r = x.rem_euclid(period);
                if r >= len {
                    r = period - 1 - r;
                }
                r
            };
            let next: Vec<f32> = (0..cur.len())
                .map(|p| {
                    let c = ((p / stride) as i64) % len;
                    let mut s = 0f64;
                    for o in 0..size as i64 {
                        let x = reflect(c + o - before);
                        s += f64::from(cur[(p as i64 + (x - c) * stride as i64) as usize]);
                    }
                    (s / size as f64) as f32
                })
                .collect();
            cur = next;
        }
    }
    cur.iter().map(|&v| f64::from(v) > 1e-10).collect()
}

/// CaImAn's `initialization.hals`: refines `Y ≈ A·C + b·f` (all non-negative) by hierarchical
/// alternating least squares. Each neuron's footprint may only change on its support (the
/// `bSiz`-box dilation of its initial footprint, see [`HalsOptions`]); background footprints on
/// every pixel. Each of `max_iter` iterations runs 2 sweeps of activity updates over all rows of
/// `[C; f]` (`c_m ← max(0, c_m + (U_m − V_m·C)/V_mm)`, `U = [A b]ᵀY`, `V = [A b]ᵀ[A b] + eps`),
/// then 2 sweeps of shape updates (`a_m ← max(0, a_m + (U_m − V_m·[A b]ᵀ)/V_mm)`, `U = [C; f]Yᵀ`,
/// `V = [C; f][C; f]ᵀ + eps`), neurons then background. `eps = eps(f32)` is added to every entry
/// of `V`, as CaImAn does.
///
/// `y` is `d × T` (Fortran pixel order) for frames of `dims`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when the factors do not fit `y` (`a`: `d × K`, `c`: `K × T`, `b`:
/// `d × nb`, `f`: `nb × T`), [`Error::Empty`] for a movie without pixels or frames,
/// [`Error::NonFinite`] for NaN/inf anywhere.
pub fn hals(
    y: ArrayView2<'_, f32>,
    dims: Dims,
    init: &HalsFactors,
    opts: HalsOptions,
    par: Par,
) -> Result<HalsFactors> {
    let grid = Grid::new(dims);
    let (d, t) = y.dim();
    check_shape("hals movie (pixels × frames)", (d, t), (grid.pixels(), t))?;
    if d == 0 || t == 0 {
        return Err(Error::Empty { what: "hals movie" });
    }
    let k = init.a.ncols();
    let nb = init.b.ncols();
    check_shape("hals A", init.a.dim(), (d, k))?;
    check_shape("hals C", init.c.dim(), (k, t))?;
    check_shape("hals b", init.b.dim(), (d, nb))?;
    check_shape("hals f", init.f.dim(), (nb, t))?;
    check_finite("hals movie", y.iter())?;
    check_finite("hals A", init.a.iter())?;
    check_finite("hals C", init.c.iter())?;
    check_finite("hals b", init.b.iter())?;
    check_finite("hals f", init.f.iter())?;
    let ys = to_rows(y);
    let mm = k + nb;
    let mut ab = vec![0f64; d * mm];
    for p in 0..d {
        for j in 0..k {
            ab[p * mm + j] = f64::from(init.a[(p, j)]);
        }
        for j in 0..nb {
            ab[p * mm + k + j] = f64::from(init.b[(p, j)]);
        }
    }
    let mut cf = vec![0f64; mm * t];
    for j in 0..k {
        for s in 0..t {
            cf[j * t + s] = init.c[(j, s)];
        }
    }
    for j in 0..nb {
        for s in 0..t {
            cf[(k + j) * t + s] = init.f[(j, s)];
        }
    }
    hals_core(&ys, grid, t, &mut ab, &mut cf, k, nb, opts, par);
    let mut out = HalsFactors {
        a: Array2::zeros((d, k)),
        c: Array2::zeros((k, t)),
        b: Array2::zeros((d, nb)),
        f: Array2::zeros((nb, t)),
    };
    for p in 0..d {
        for j in 0..k {
            out.a[(p, j)] = ab[p * mm + j] as f32;
        }
        for j in 0..nb {
            out.b[(p, j)] = ab[p * mm + k + j] as f32;
        }
    }
    for s in 0..t {
        for j in 0..k {
            out.c[(j, s)] = cf[j * t + s];
        }
        for j in 0..nb {
            out.f[(j, s)] = cf[(k + j) * t + s];
        }
    }
    Ok(out)
}

/// HALS on row-major buffers: `ab` is `d × (K+nb)`, `cf` is `(K+nb) × T`.
#[allow(clippy::too_many_arguments)]
fn hals_core(
    y: &[f32],
    grid: Grid,
    t: usize,
    ab: &mut [f64],
    cf: &mut [f64],
    k: usize,
    nb: usize,
    opts: HalsOptions,
    par: Par,
) {
    let d = grid.pixels();
    let mm = k + nb;
    if mm == 0 {
        return;
    }
    // Support of each neuron, and the pixels where its footprint can be non-zero at all.
    let (support, active): (Vec<Vec<usize>>, Vec<Vec<usize>>) = (0..k)
        .map(|j| {
            let col: Vec<f32> = (0..d).map(|p| ab[p * mm + j] as f32).collect();
            let mask = match opts.b_siz {
                Some(s) => dilated_support(&col, grid, s),
                None => col.iter().map(|&v| f64::from(v) > 1e-10).collect(),
            };
            let supp: Vec<usize> = (0..d).filter(|&p| mask[p]).collect();
            let act: Vec<usize> = (0..d).filter(|&p| mask[p] || col[p] != 0.0).collect();
            (supp, act)
        })
        .unzip();
    let all: Vec<usize> = (0..d).collect();
    let px_lists: Vec<&[usize]> = (0..mm).map(|m| if m < k { active[m].as_slice() } else { all.as_slice() }).collect();

    for _ in 0..opts.max_iter {
        // ---- activity: U = AbᵀY ((K+nb) × T), V = AbᵀAb + eps.
        let tasks: Vec<(usize, usize)> =
            (0..mm).flat_map(|m| (0..px_lists[m].len().div_ceil(BLOCK)).map(move |b| (m, b))).collect();
        let ab_ro: &[f64] = ab;
        let parts = par.map_indices(tasks.len(), |ti| {
            let (m, b) = tasks[ti];
            let px = px_lists[m];
            let mut acc = vec![0f64; t];
            for &p in &px[b * BLOCK..((b + 1) * BLOCK).min(px.len())] {
                let w = ab_ro[p * mm + m];
                if w == 0.0 {
                    continue;
                }
                for (a, &v) in acc.iter_mut().zip(&y[p * t..(p + 1) * t]) {
                    *a += w * f64::from(v);
                }
            }
            acc
        });
        let mut u = vec![0f64; mm * t];
        for (&(m, _), part) in tasks.iter().zip(&parts) {
            u[m * t..(m + 1) * t].iter_mut().zip(part).for_each(|(o, v)| *o += v);
        }
        let mut v = gram(ab, d, mm);
        v.iter_mut().for_each(|x| *x += EPS_F32);
        let mut tmp = vec![0f64; t];
        for _ in 0..2 {
            for m in 0..mm {
                tmp.copy_from_slice(&u[m * t..(m + 1) * t]);
                for r in 0..mm {
                    let w = v[m * mm + r];
                    for (o, &c) in tmp.iter_mut().zip(&cf[r * t..(r + 1) * t]) {
                        *o -= w * c;
                    }
                }
                let vmm = v[m * mm + m];
                for (c, &g) in cf[m * t..(m + 1) * t].iter_mut().zip(&tmp) {
                    *c = (*c + g / vmm).max(0.0);
                }
            }
        }

        // ---- shape: U = Cf Yᵀ (on the pixels each row may change), V = Cf Cfᵀ + eps.
        let cf_ro: &[f64] = cf;
        let dot_row = |m: usize, p: usize| -> f64 {
            cf_ro[m * t..(m + 1) * t].iter().zip(&y[p * t..(p + 1) * t]).map(|(&c, &v)| c * f64::from(v)).sum()
        };
        let u_neur: Vec<Vec<f64>> = par.map_indices(k, |m| support[m].iter().map(|&p| dot_row(m, p)).collect());
        let nblocks = d.div_ceil(BLOCK);
        let u_bg: Vec<Vec<f64>> = (0..nb)
            .map(|j| {
                par.map_indices(nblocks, |bi| {
                    (bi * BLOCK..((bi + 1) * BLOCK).min(d)).map(|p| dot_row(k + j, p)).collect::<Vec<_>>()
                })
                .concat()
            })
            .collect();
        let mut v = vec![0f64; mm * mm];
        for a in 0..mm {
            for b in a..mm {
                let s: f64 = cf[a * t..(a + 1) * t].iter().zip(&cf[b * t..(b + 1) * t]).map(|(x, y)| x * y).sum();
                v[a * mm + b] = s + EPS_F32;
                v[b * mm + a] = s + EPS_F32;
            }
        }
        let update = |row: &mut [f64], m: usize, um: f64| {
            let g: f64 = um - (0..mm).map(|r| v[m * mm + r] * row[r]).sum::<f64>();
            row[m] = (row[m] + g / v[m * mm + m]).max(0.0);
        };
        for _ in 0..2 {
            for m in 0..k {
                for (&p, &um) in support[m].iter().zip(&u_neur[m]) {
                    update(&mut ab[p * mm..(p + 1) * mm], m, um);
                }
            }
            for j in 0..nb {
                let m = k + j;
                let ub = &u_bg[j];
                par.for_each_chunk_mut(ab, BLOCK * mm, |bi, chunk| {
                    for (li, row) in chunk.chunks_mut(mm).enumerate() {
                        update(row, m, ub[bi * BLOCK + li]);
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// initialize_components
// ---------------------------------------------------------------------------------------------

/// Round half to even (numpy `round`).
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// CaImAn's `initialize_components` for `method_init = 'greedy_roi'`: normalisation, optional
/// spatio-temporal downsampling, [`greedy_roi`], background [`nmf`] of `max(residual, 0)` (`nb`
/// components, `greedyroi_nmf_init_method`, `greedyroi_nmf_max_iter`, tol 1e-4), [`hals`]
/// refinement when `use_hals` (`maxIter` iterations, `bSiz` 3), upsampling back, centres of mass,
/// and the normalisation undone on `A` and `b` (order and details in the module docs).
///
/// `yr` is `d × T` (Fortran pixel order) for frames of `dims`. Keys of `params` used: `K`,
/// `gSig`, `gSiz`, `ssub`, `tsub`, `nIter`, `maxIter`, `nb`, `kernel`, `normalize_init`,
/// `rolling_sum`, `rolling_length`, `method_init`, `seed_method`, `greedyroi_nmf_init_method`,
/// `greedyroi_nmf_max_iter`. `use_hals` is `initialize_components`' own argument (CaImAn's CNMF
/// always passes `True`).
///
/// # Errors
/// - [`Error::InvalidParam`] for `method_init` other than `greedy_roi` (only `greedy_roi` is
///   implemented), `seed_method` other than `auto`, `K` unset or above the number of
///   (downsampled) pixels, `gSig`/`gSiz` missing, non-positive or of the wrong length, `ssub`/
///   `tsub` of 0 or larger than the frame/movie, `nIter = 0`, `nb < 0` or `nb` above the
///   downsampled pixels or frames, an unsupported NMF init name.
/// - [`Error::ShapeMismatch`] when `yr` does not have `dims.pixels()` rows; [`Error::Empty`] for
///   no frames; [`Error::NonFinite`] for NaN/inf in `yr`.
pub fn initialize_components(
    yr: ArrayView2<'_, f32>,
    dims: Dims,
    params: &InitParams,
    use_hals: bool,
    par: Par,
) -> Result<InitResult> {
    let grid = Grid::new(dims);
    let (d, t) = yr.dim();
    check_shape("initialize_components Yr (pixels × frames)", (d, t), (grid.pixels(), t))?;
    if d == 0 || t == 0 {
        return Err(Error::Empty { what: "initialize_components Yr" });
    }
    if params.method_init != MethodInit::GreedyRoi {
        return Err(Error::InvalidParam(format!(
            "method_init {:?} is not implemented: only 'greedy_roi' is",
            params.method_init
        )));
    }
    if params.seed_method != SeedMethod::Auto {
        return Err(Error::InvalidParam(format!(
            "seed_method {:?} is interactive and not supported: use 'auto'",
            params.seed_method
        )));
    }
    let k = params.k.ok_or_else(|| Error::InvalidParam("K must be set for greedy_roi".into()))?;
    let nd = grid.nd;
    let gsig = params.gsig.clone().ok_or_else(|| Error::InvalidParam("gSig must be set".into()))?;
    if gsig.len() != nd || gsig.iter().any(|&g| !(g > 0.0 && g.is_finite())) {
        return Err(Error::InvalidParam(format!("gSig must hold {nd} positive values, got {gsig:?}")));
    }
    let gsiz: Vec<f64> = match &params.gsiz {
        Some(v) => {
            if v.len() != nd || v.iter().any(|&s| s < 1) {
                return Err(Error::InvalidParam(format!("gSiz must hold {nd} positive values, got {v:?}")));
            }
            v.iter().map(|&s| s as f64).collect()
        }
        None => gsig.iter().map(|&g| (2 * ((g + 0.5) as i64) + 1) as f64).collect(),
    };
    let (ssub, tsub) = (params.ssub, params.tsub);
    if ssub == 0 || tsub == 0 {
        return Err(Error::InvalidParam(format!("ssub and tsub must be at least 1, got {ssub}, {tsub}")));
    }
    if params.nb < 0 {
        return Err(Error::InvalidParam(format!(
            "nb = {} (full-rank or no background model) is not supported by greedy_roi initialisation",
            params.nb
        )));
    }
    let nb = params.nb as usize;
    let nmf_init = NmfInit::from_caiman(&params.greedyroi_nmf_init_method)?;
    check_finite("initialize_components Yr", yr.iter())?;

    // 1. Rescale the neuron size for the spatial downsampling.
    let gsig_s: Vec<f64> = gsig.iter().map(|&g| g / ssub as f64).collect();
    let gsiz_s: Vec<usize> = gsiz.iter().map(|&s| round_half_even(s / ssub as f64) as usize).collect();

    // 2. Normalisation.
    let mut y = to_rows(yr);
    let img: Option<Vec<f32>> = if params.normalize_init {
        let means: Vec<f32> = (0..d)
            .map(|p| (y[p * t..(p + 1) * t].iter().map(|&v| f64::from(v)).sum::<f64>() / t as f64) as f32)
            .collect();
        let mut tmp = means.clone();
        let med = median_f32(&mut tmp);
        let img: Vec<f32> = means.iter().map(|&m| (m + med) + f32::EPSILON).collect();
        par.for_each_chunk_mut(&mut y, t, |p, row| row.iter_mut().for_each(|v| *v /= img[p]));
        Some(img)
    } else {
        None
    };

    // 3. Downsampling.
    let (mut y_ds, grid_ds, t_ds) = downsample(y, grid, t, ssub, tsub, par)?;
    let d_ds = grid_ds.pixels();
    if nb > d_ds.min(t_ds) {
        return Err(Error::InvalidParam(format!(
            "nb = {nb} background components exceed min(pixels, frames) = {} of the downsampled movie",
            d_ds.min(t_ds)
        )));
    }

    // 4. Greedy ROI, background NMF, HALS.
    let gopts = GreedyOptions {
        k,
        gsig: gsig_s,
        gsiz: gsiz_s,
        n_iter: params.n_iter,
        rolling_sum: params.rolling_sum,
        rolling_length: params.rolling_length,
        kernel: params.kernel.clone(),
    };
    let plan = GreedyPlan::new(&gopts, grid_ds)?;
    tracing::debug!(k, ?grid_ds, t_ds, "greedy ROI initialisation");
    let work = if use_hals { y_ds.clone() } else { std::mem::take(&mut y_ds) };
    let gout = greedy_core(work, grid_ds, t_ds, &plan, par);
    let mut res = gout.residual;
    res.iter_mut().for_each(|v| *v = v.max(0.0));
    let (b_ds, f_ds) = if nb > 0 {
        let opts = NmfOptions { init: nmf_init, max_iter: params.greedyroi_nmf_max_iter, tol: 1e-4 };
        let view = ArrayView2::from_shape((d_ds, t_ds), &res).expect("shape");
        let r = nmf(view, nb, &opts, par)?;
        (to_rows(r.w.view()), to_rows(r.h.view()))
    } else {
        (Vec::new(), Vec::new())
    };
    drop(res);
    let (mut a_ds, mut c_ds, mut b_ds, mut f_ds) =
        (gout.a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), gout.c, b_ds, f_ds);
    if use_hals {
        let mm = k + nb;
        let mut ab = vec![0f64; d_ds * mm];
        let mut cf = vec![0f64; mm * t_ds];
        for p in 0..d_ds {
            ab[p * mm..p * mm + k].copy_from_slice(&a_ds[p * k..(p + 1) * k]);
            ab[p * mm + k..(p + 1) * mm].copy_from_slice(&b_ds[p * nb..(p + 1) * nb]);
        }
        cf[..k * t_ds].copy_from_slice(&c_ds);
        cf[k * t_ds..].copy_from_slice(&f_ds);
        let hopts = HalsOptions { b_siz: Some(3), max_iter: params.max_iter };
        hals_core(&y_ds, grid_ds, t_ds, &mut ab, &mut cf, k, nb, hopts, par);
        for p in 0..d_ds {
            a_ds[p * k..(p + 1) * k].copy_from_slice(&ab[p * mm..p * mm + k]);
            b_ds[p * nb..(p + 1) * nb].copy_from_slice(&ab[p * mm + k..(p + 1) * mm]);
        }
        c_ds.copy_from_slice(&cf[..k * t_ds]);
        f_ds.copy_from_slice(&cf[k * t_ds..]);
    }
    drop(y_ds);

    // 5. Upsampling (CaImAn rounds A and b to f32 before resizing).
    let a_ds: Vec<f32> = a_ds.iter().map(|&v| v as f32).collect();
    let b_ds: Vec<f32> = b_ds.iter().map(|&v| v as f32).collect();
    let mut a_full = if ssub != 1 { upsample_space(&a_ds, grid_ds, grid, k, par) } else { a_ds };
    let mut b_full = if ssub != 1 { upsample_space(&b_ds, grid_ds, grid, nb, par) } else { b_ds };
    let c_full = if t_ds != t { resample_axis(&c_ds, [1, 1, k, t_ds], 3, &linear_taps(t_ds, t), par) } else { c_ds };
    let f_full = if t_ds != t { resample_axis(&f_ds, [1, 1, nb, t_ds], 3, &linear_taps(t_ds, t), par) } else { f_ds };

    // 6. Centres of mass (before the normalisation is undone), then undo it.
    let center = if k > 0 {
        let a_csc = CscMatrix::from_dense(ArrayView2::from_shape((d, k), &a_full).expect("shape"));
        centers_of_mass(&a_csc, grid.dims())
    } else {
        Array2::zeros((0, nd))
    };
    if let Some(img) = &img {
        for p in 0..d {
            a_full[p * k..(p + 1) * k].iter_mut().for_each(|v| *v *= img[p]);
            b_full[p * nb..(p + 1) * nb].iter_mut().for_each(|v| *v *= img[p]);
        }
    }
    let a = CscMatrix::from_dense(ArrayView2::from_shape((d, k), &a_full).expect("shape"));
    Ok(InitResult {
        a,
        c: Array2::from_shape_vec((k, t), c_full).expect("shape"),
        b: Array2::from_shape_vec((d, nb), b_full).expect("shape"),
        f: Array2::from_shape_vec((nb, t), f_full).expect("shape"),
        center,
    })
}

/// Downsamples a pixel-major movie (`d × t`): planar frames with OpenCV `INTER_AREA` (space, then
/// time; sizes `int(n / sub)`), volumes with partial-block means (sizes `ceil(n / sub)`).
fn downsample(
    y: Vec<f32>,
    grid: Grid,
    t: usize,
    ssub: usize,
    tsub: usize,
    par: Par,
) -> Result<(Vec<f32>, Grid, usize)> {
    if ssub == 1 && tsub == 1 {
        return Ok((y, grid, t));
    }
    let too_big = || {
        Error::InvalidParam(format!("ssub = {ssub} / tsub = {tsub} leave no pixels or frames for {:?} × {t}", grid.n))
    };
    let mut cur = y;
    let mut g = grid;
    let mut tt = t;
    if grid.nd == 2 {
        // movie.resize: int(n · (1/sub)) in f64, as Python.
        let shrink = |n: usize, sub: usize| (n as f64 * (1.0 / sub as f64)) as usize;
        if ssub != 1 {
            let (n0, n1) = (shrink(grid.n[0], ssub), shrink(grid.n[1], ssub));
            if n0 == 0 || n1 == 0 {
                return Err(too_big());
            }
            if n0 != g.n[0] {
                cur = resample_axis(&cur, g.shape4(tt), 2, &area_taps(g.n[0], n0), par);
                g.n[0] = n0;
            }
            if n1 != g.n[1] {
                cur = resample_axis(&cur, g.shape4(tt), 1, &area_taps(g.n[1], n1), par);
                g.n[1] = n1;
            }
        }
        if tsub != 1 {
            let nt = shrink(t, tsub);
            if nt == 0 {
                return Err(too_big());
            }
            if nt != tt {
                cur = resample_axis(&cur, g.shape4(tt), 3, &area_taps(tt, nt), par);
                tt = nt;
            }
        }
    } else {
        for (ax, logical) in [(0usize, 2usize), (1, 1), (2, 0)] {
            if ssub != 1 {
                let taps = block_taps(g.n[ax], ssub);
                let n = taps.len();
                cur = resample_axis(&cur, g.shape4(tt), logical, &taps, par);
                g.n[ax] = n;
            }
        }
        if tsub != 1 {
            let taps = block_taps(tt, tsub);
            let n = taps.len();
            cur = resample_axis(&cur, g.shape4(tt), 3, &taps, par);
            tt = n;
        }
    }
    Ok((cur, g, tt))
}

/// Upsamples pixel-major `from.pixels() × cols` images to `to` with OpenCV `INTER_LINEAR` along
/// each spatial axis.
fn upsample_space(src: &[f32], from: Grid, to: Grid, cols: usize, par: Par) -> Vec<f32> {
    let mut cur = src.to_vec();
    let mut g = from;
    // Volumes: CaImAn resizes (d2, d3) per plane of axis 0, then axis 0.
    let order: &[(usize, usize)] = if from.nd == 3 { &[(1, 1), (2, 0), (0, 2)] } else { &[(1, 1), (0, 2)] };
    for &(ax, logical) in order {
        if g.n[ax] != to.n[ax] {
            cur = resample_axis(&cur, g.shape4(cols), logical, &linear_taps(g.n[ax], to.n[ax]), par);
            g.n[ax] = to.n[ax];
        }
    }
    cur
}

// ---------------------------------------------------------------------------------------------
// Seeded initialisation
// ---------------------------------------------------------------------------------------------

/// Initialisation from binary masks (CaImAn's `computing_indicator` with a boolean `A_in` and no
/// `C`): every non-zero entry of `masks` (`d × K`) marks a pixel of that component.
///
/// - Background trace `f` from the pixels outside all masks: their mean trace for `nb = 1`, the
///   `H` factor of [`nmf`] (`nb` components, NNDSVDA, 200 iterations) of those pixels' clipped
///   traces for `nb > 1`, none for `nb = 0`.
/// - `b = max(Y·fᵀ, 0) / ‖f‖²` (Frobenius norm of `f`, as CaImAn).
/// - `C = max(0, Mᵀ·Y − (Mᵀ·b)·f)` with `M` the masks scaled to unit column sums.
/// - `A` = the masks with value 1; `center` = their centres of mass.
///
/// # Errors
/// [`Error::ShapeMismatch`] for a `yr` or `masks` without `dims.pixels()` rows, [`Error::Empty`]
/// for no frames or an empty mask, [`Error::NonFinite`] for NaN/inf, [`Error::InvalidParam`]
/// when `nb > 0` but every pixel lies in a mask, or `nb` exceeds those pixels or the frames.
pub fn seeded_initialization(
    yr: ArrayView2<'_, f32>,
    dims: Dims,
    masks: &CscMatrix,
    nb: usize,
    par: Par,
) -> Result<InitResult> {
    let grid = Grid::new(dims);
    let (d, t) = yr.dim();
    check_shape("seeded_initialization Yr (pixels × frames)", (d, t), (grid.pixels(), t))?;
    let k = masks.ncols();
    check_shape("seeded_initialization masks", (masks.nrows(), k), (d, k))?;
    if d == 0 || t == 0 {
        return Err(Error::Empty { what: "seeded_initialization Yr" });
    }
    check_finite("seeded_initialization Yr", yr.iter())?;
    let y = to_rows(yr);
    let mut in_mask = vec![false; d];
    let mut cols: Vec<Vec<usize>> = Vec::with_capacity(k);
    for j in 0..k {
        let (rows, vals) = masks.col(j);
        let px: Vec<usize> = rows.iter().zip(vals).filter(|&(_, &v)| v != 0.0).map(|(&r, _)| r).collect();
        if px.is_empty() {
            return Err(Error::Empty { what: "seeded_initialization mask (a component without pixels)" });
        }
        px.iter().for_each(|&p| in_mask[p] = true);
        cols.push(px);
    }
    let outside: Vec<usize> = (0..d).filter(|&p| !in_mask[p]).collect();
    let f: Vec<f64> = if nb == 0 {
        Vec::new()
    } else if outside.is_empty() {
        return Err(Error::InvalidParam("no pixel lies outside the masks to estimate the background from".into()));
    } else if nb == 1 {
        let mut f = vec![0f64; t];
        for &p in &outside {
            f.iter_mut().zip(&y[p * t..(p + 1) * t]).for_each(|(a, &v)| *a += f64::from(v));
        }
        f.iter_mut().for_each(|v| *v /= outside.len() as f64);
        f
    } else {
        if nb > outside.len().min(t) {
            return Err(Error::InvalidParam(format!(
                "nb = {nb} exceeds min(pixels outside the masks, frames) = {}",
                outside.len().min(t)
            )));
        }
        let xo: Vec<f32> = outside.iter().flat_map(|&p| y[p * t..(p + 1) * t].iter().map(|v| v.max(0.0))).collect();
        let view = ArrayView2::from_shape((outside.len(), t), &xo).expect("shape");
        to_rows(nmf(view, nb, &NmfOptions::default(), par)?.h.view())
    };
    // b = max(Y fᵀ, 0) / ‖f‖².
    let fnorm2: f64 = f.iter().map(|v| v * v).sum();
    let mut ft = vec![0f64; t * nb];
    for j in 0..nb {
        for s in 0..t {
            ft[s * nb + j] = f[j * t + s];
        }
    }
    let yf = x_times(&y, d, t, &ft, nb, par);
    let b: Vec<f64> = yf.iter().map(|&v| if fnorm2 > 0.0 { v.max(0.0) / fnorm2 } else { 0.0 }).collect();
    // C = max(0, Mᵀ Y − (Mᵀ b) f).
    let c_rows: Vec<Vec<f64>> = par.map_indices(k, |j| {
        let px = &cols[j];
        let w = 1.0 / px.len() as f64;
        let mut row = vec![0f64; t];
        let mut mb = vec![0f64; nb];
        for &p in px {
            row.iter_mut().zip(&y[p * t..(p + 1) * t]).for_each(|(a, &v)| *a += w * f64::from(v));
            mb.iter_mut().zip(&b[p * nb..(p + 1) * nb]).for_each(|(a, &v)| *a += w * v);
        }
        for (jb, &m) in mb.iter().enumerate() {
            row.iter_mut().zip(&f[jb * t..(jb + 1) * t]).for_each(|(a, &fv)| *a -= m * fv);
        }
        row.iter_mut().for_each(|v| *v = v.max(0.0));
        row
    });
    let mut indptr = vec![0usize];
    let mut indices = Vec::new();
    for px in &cols {
        indices.extend_from_slice(px);
        indptr.push(indices.len());
    }
    let data = vec![1.0f32; indices.len()];
    let a = CscMatrix::from_parts(d, k, indptr, indices, data)?;
    let center = centers_of_mass(&a, grid.dims());
    Ok(InitResult {
        a,
        c: Array2::from_shape_vec((k, t), c_rows.concat()).expect("shape"),
        b: Array2::from_shape_vec((d, nb), b.iter().map(|&v| v as f32).collect()).expect("shape"),
        f: Array2::from_shape_vec((nb, t), f).expect("shape"),
        center,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(taps: &Taps, x: &[f64]) -> Vec<f64> {
        resample_axis(x, [1, 1, 1, x.len()], 3, taps, Par::Seq)
    }

    #[test]
    fn inter_area_matches_hand_values() {
        // Integer ratio: block means.
        assert_eq!(apply(&area_taps(4, 2), &[1.0, 2.0, 3.0, 4.0]), vec![1.5, 3.5]);
        // 5 → 2 (scale 2.5): [0.4, 0.4, 0.2 | 0.2, 0.4, 0.4] weights (OpenCV gives [1.8, 4.2]).
        let y = apply(&area_taps(5, 2), &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((y[0] - 1.8).abs() < 1e-12 && (y[1] - 4.2).abs() < 1e-12, "{y:?}");
        // 7 → 3 (scale 7/3): weights of every output sum to 1.
        for tap in area_taps(7, 3) {
            assert!((tap.iter().map(|t| t.1).sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // 2-D: a 5 × 4 frame (F order) of 3 frames to 2 × 2 with ssub = 2, tsub = 1.
        let grid = Grid { n: [5, 4, 1], nd: 2 };
        let y: Vec<f32> = (0..20).flat_map(|p| [p as f32, 0.0, 1.0]).collect();
        let (ds, g, t) = downsample(y, grid, 3, 2, 1, Par::Seq).unwrap();
        assert_eq!((g.n, t), ([2, 2, 1], 3));
        // Pixel (i, j) holds i + 5j; rows 5 → 2 with weights [.4 .4 .2 0 0] / [0 0 .2 .4 .4],
        // columns 4 → 2 by pairs.
        let rows = [[0.4, 0.4, 0.2, 0.0, 0.0], [0.0, 0.0, 0.2, 0.4, 0.4]];
        for oi in 0..2 {
            for oj in 0..2 {
                let mut want = 0.0;
                for i in 0..5 {
                    for j in 2 * oj..2 * oj + 2 {
                        want += rows[oi][i] * 0.5 * (i + 5 * j) as f64;
                    }
                }
                let p = oi + 2 * oj;
                assert!((f64::from(ds[p * 3]) - want).abs() < 1e-5, "({oi},{oj}): {} vs {want}", ds[p * 3]);
                assert_eq!(ds[p * 3 + 2], 1.0);
            }
        }
        // Time: 5 frames to int(5/2) = 2.
        let (ds, _, t) =
            downsample(vec![1.0, 2.0, 3.0, 4.0, 5.0], Grid { n: [1, 1, 1], nd: 2 }, 5, 1, 2, Par::Seq).unwrap();
        assert_eq!(t, 2);
        assert!((f64::from(ds[0]) - 1.8).abs() < 1e-6 && (f64::from(ds[1]) - 4.2).abs() < 1e-6);
    }

    #[test]
    fn block_means_and_bilinear_match_hand_values() {
        assert_eq!(apply(&block_taps(5, 2), &[1.0, 2.0, 3.0, 4.0, 5.0]), vec![1.5, 3.5, 5.0]);
        // cv2.resize([1, 2], 4, INTER_LINEAR) = [1, 1.25, 1.75, 2].
        assert_eq!(apply(&linear_taps(2, 4), &[1.0, 2.0]), vec![1.0, 1.25, 1.75, 2.0]);
        // 3 → 5 (scale 0.6): fx = 0.6·dx − 0.2.
        let y = apply(&linear_taps(3, 5), &[0.0, 10.0, 20.0]);
        let want = [0.0, 4.0, 10.0, 16.0, 20.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        // Same size: identity.
        assert_eq!(apply(&linear_taps(3, 3), &[1.0, 5.0, 2.0]), vec![1.0, 5.0, 2.0]);
    }

    #[test]
    fn rolling_score_and_argmax() {
        // lfilter(ones(2)/2, 1, x²) = [0.5, 2.5, 6.5, 12.5] for x = [1, 2, 3, 4] → max 12.5.
        assert!((score_row(&[1.0, 2.0, 3.0, 4.0], Some(2)) - 12.5).abs() < 1e-12);
        // Partial windows at the start count with weight 1/L: x = [4, 0, 0] → max 16/3.
        assert!((score_row(&[4.0, 0.0, 0.0], Some(3)) - 16.0 / 3.0).abs() < 1e-6);
        assert_eq!(score_row(&[1.0, 2.0], None), 5.0);
        // Ties: the first in C order (row-major), not in F order.
        let grid = Grid { n: [2, 2, 1], nd: 2 };
        // F order: p = i + 2j; maxima at (1, 0) (p = 1) and (0, 1) (p = 2): C order visits (0, 1) first.
        assert_eq!(argmax_c_order(&[0.0, 3.0, 3.0, 1.0], grid), [0, 1, 0]);
    }

    #[test]
    fn support_is_the_box_dilation() {
        let grid = Grid { n: [4, 4, 1], nd: 2 };
        let mut col = vec![0f32; 16];
        col[0] = 1.0; // corner (0, 0)
        let s = dilated_support(&col, grid, 3);
        let want: Vec<bool> = (0..16).map(|p| p % 4 <= 1 && p / 4 <= 1).collect();
        assert_eq!(s, want);
        // A value too small to pass 1e-10 after the 3 × 3 mean is not support.
        col[0] = 0.0;
        col[5] = 5e-10; // (1, 1)
        assert!(dilated_support(&col, grid, 3).iter().all(|&b| !b));
        // scipy's 'reflect' border counts a corner pixel 4 times in its own window:
        // 4 · 3e-10 / 9 > 1e-10 at (0, 0) only (2 · 3e-10 / 9 at its neighbours).
        col[5] = 0.0;
        col[0] = 3e-10;
        let s = dilated_support(&col, grid, 3);
        assert!(s[0] && s.iter().filter(|&&b| b).count() == 1);
    }

    #[test]
    fn products_match_naive() {
        let (n, m, k) = (600, 37, 3);
        let x: Vec<f32> = (0..n * m).map(|i| ((i * 7919) % 101) as f32 / 10.0).collect();
        let b: Vec<f64> = (0..m * k).map(|i| ((i * 31) % 17) as f64 / 7.0).collect();
        let c: Vec<f64> = (0..n * k).map(|i| ((i * 13) % 11) as f64 / 3.0).collect();
        let xb = x_times(&x, n, m, &b, k, Par::Seq);
        let xtc = xt_times(&x, n, m, &c, k, Par::new(2));
        for i in 0..n {
            for a in 0..k {
                let want: f64 = (0..m).map(|j| f64::from(x[i * m + j]) * b[j * k + a]).sum();
                assert!((xb[i * k + a] - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
        for j in 0..m {
            for a in 0..k {
                let want: f64 = (0..n).map(|i| f64::from(x[i * m + j]) * c[i * k + a]).sum();
                assert!((xtc[j * k + a] - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
        assert_eq!(xtc, xt_times(&x, n, m, &c, k, Par::Seq));
    }
}
