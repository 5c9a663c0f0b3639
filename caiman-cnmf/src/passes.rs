//! Passes over the whole movie by blocks of pixel rows: the product `MᵀY` of a sparse `d × n`
//! matrix with `Yr` (CaImAn's `Ab.T @ Yr` in the temporal update and `compute_residuals`) and
//! the finiteness check of `preprocess`.
//!
//! This is what keeps a fit out of core: every pass cuts `Yr` into blocks of consecutive pixel
//! rows ([`block_rows`]: about 16 MiB of movie each, a function of the number of frames only),
//! and each block is an executor task that reads just its rows — from the C-order memmap by
//! path, or from the shared in-memory movie — and returns its part of the result. The calling
//! process never touches the movie itself, so its resident memory holds the results and at most
//! one batch of block partials; the batch length follows [`Fov::budget`] (a quarter of it is
//! given to a pass; 1 GiB without a budget). A field of view that is a plain in-memory view runs
//! the same blocks on the calling thread's [`Par`].
//!
//! The blocks depend on the movie only, every block sums its pixels in order, and the partials
//! are added in block order, so results are bit-identical whatever the executor, the number of
//! workers or the budget.

use std::ops::Range;

use caiman_parallel::{Executor, Par, Registry, RunStats, Task, TaskCtx, TaskError};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, task_err};
use crate::pixels::{Fov, PixelRows};
use crate::sparse::CscMatrix;

/// Bytes of movie per block.
const BLOCK_BYTES: usize = 16 << 20;

/// Bytes a pass may hold at once when the field of view sets no budget.
const DEFAULT_INFLIGHT: u64 = 1 << 30;

/// Pixel rows per block for a movie of `frames` frames: about 16 MiB of f32 samples, at least
/// one row.
pub fn block_rows(frames: usize) -> usize {
    (BLOCK_BYTES / (frames.max(1) * 4)).max(1)
}

/// The blocks of `d` pixel rows for `frames` frames.
fn blocks(d: usize, frames: usize) -> Vec<Range<usize>> {
    let n = block_rows(frames);
    (0..d).step_by(n).map(|s| s..(s + n).min(d)).collect()
}

/// Bytes a pass over `fov` (or a batch of pixel-block tasks) may hold at once: a quarter of the
/// budget, 1 GiB without one.
pub(crate) fn inflight_bytes(fov: &Fov<'_>) -> u64 {
    fov.budget.map_or(DEFAULT_INFLIGHT, |b| b / 4)
}

/// How many blocks of `bytes_per_block` (movie rows plus the partial result) a pass over `fov`
/// keeps in flight.
fn batch_len(fov: &Fov<'_>, bytes_per_block: u64) -> usize {
    usize::try_from(inflight_bytes(fov) / bytes_per_block.max(1)).unwrap_or(usize::MAX).max(1)
}

/// Whether tasks can read the rows themselves (memmap or shared movie) rather than be handed a
/// copy.
fn tasks_read_rows(fov: &Fov<'_>) -> bool {
    fov.mmap.is_some() || fov.shared.is_some()
}

// ---------------------------------------------------------------------------------------------
// MᵀY
// ---------------------------------------------------------------------------------------------

/// The non-zeros of `M` in one block of rows, by row: `entries[ptr[r]..ptr[r + 1]]` are the
/// `(local column, value)` of local row `r`; `cols[local column]` is the column of `M`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct BlockEntries {
    cols: Vec<usize>,
    ptr: Vec<usize>,
    entries: Vec<(u32, f64)>,
}

impl BlockEntries {
    /// The entries of `m` in rows `range` (columns in increasing order).
    fn new(m: &CscMatrix, range: Range<usize>) -> Self {
        let n = range.len();
        let mut local = vec![u32::MAX; m.ncols()];
        let mut cols = Vec::new();
        let mut count = vec![0usize; n + 1];
        let mut hits: Vec<(usize, usize, f64)> = Vec::new();
        for (k, slot) in local.iter_mut().enumerate() {
            let (rows, vals) = m.col(k);
            let lo = rows.partition_point(|&r| r < range.start);
            let hi = rows.partition_point(|&r| r < range.end);
            for (&r, &v) in rows[lo..hi].iter().zip(&vals[lo..hi]) {
                if v == 0.0 {
                    continue;
                }
                if *slot == u32::MAX {
                    *slot = u32::try_from(cols.len()).expect("fewer than 2³² components");
                    cols.push(k);
                }
                count[r - range.start + 1] += 1;
                hits.push((r - range.start, k, f64::from(v)));
            }
        }
        for r in 0..n {
            count[r + 1] += count[r];
        }
        let mut next = count.clone();
        let mut entries = vec![(0u32, 0f64); hits.len()];
        for (r, k, v) in hits {
            entries[next[r]] = (local[k], v);
            next[r] += 1;
        }
        BlockEntries { cols, ptr: count, entries }
    }

    /// `Σ_r M[r, ·]ᵀ·Y[r, ·]` over the block's rows: `cols.len() × T` values, row-major, each
    /// accumulated in f64 row after row.
    fn product(&self, y: ArrayView2<'_, f32>) -> Vec<f64> {
        let t = y.ncols();
        let mut out = vec![0f64; self.cols.len() * t];
        let mut buf = vec![0f64; t];
        for (r, row) in y.rows().into_iter().enumerate() {
            let e = &self.entries[self.ptr[r]..self.ptr[r + 1]];
            if e.is_empty() {
                continue;
            }
            match row.as_slice() {
                Some(sl) => buf.iter_mut().zip(sl).for_each(|(o, &v)| *o = f64::from(v)),
                None => buf.iter_mut().zip(row.iter()).for_each(|(o, &v)| *o = f64::from(v)),
            }
            for &(k, v) in e {
                let o = &mut out[k as usize * t..(k as usize + 1) * t];
                for (o, &yv) in o.iter_mut().zip(&buf) {
                    *o += v * yv;
                }
            }
        }
        out
    }

    /// Adds a block's partial into the `n × T` result.
    fn add_into(&self, partial: &[f64], res: &mut Array2<f64>) -> Result<()> {
        let t = res.ncols();
        if partial.len() != self.cols.len() * t {
            return Err(Error::ShapeMismatch {
                what: "block partial of MᵀY (columns × frames)",
                expected: vec![self.cols.len() * t],
                got: vec![partial.len()],
            });
        }
        for (lk, &k) in self.cols.iter().enumerate() {
            let mut row = res.row_mut(k);
            let src = &partial[lk * t..(lk + 1) * t];
            row.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
        }
        Ok(())
    }
}

/// `m` must have one row per pixel of the movie (`d`).
fn check_rows(m: &CscMatrix, d: usize) -> Result<()> {
    if m.nrows() == d {
        return Ok(());
    }
    Err(Error::ShapeMismatch { what: "matrix multiplying Yr (rows = pixels)", expected: vec![d], got: vec![m.nrows()] })
}

/// The blocks of `d` rows over `t` frames where `m` has non-zeros, with those non-zeros.
fn block_entries(m: &CscMatrix, d: usize, t: usize) -> Vec<(Range<usize>, BlockEntries)> {
    blocks(d, t)
        .into_iter()
        .map(|r| {
            let e = BlockEntries::new(m, r.clone());
            (r, e)
        })
        .filter(|(_, e)| !e.entries.is_empty())
        .collect()
}

/// The task of one block of `MᵀY`: its rows and the non-zeros of `M` there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MtYBlock {
    /// The pixel rows.
    pub rows: PixelRows,
    entries: BlockEntries,
}

impl Task for MtYBlock {
    const NAME: &'static str = "caiman_cnmf.mty_block";
    type Output = Vec<f64>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Vec<f64>, TaskError> {
        self.rows.with_view(|y| self.entries.product(y)).map_err(task_err)
    }
}

/// `MᵀY` for a sparse `d × n` matrix `M` (f32 values) and the movie `Yr` of `fov`: an `n × T`
/// matrix accumulated in f64, by blocks of pixel rows (see the module doc). Rows of `M` without
/// non-zeros are not read.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `M` does not have one row per pixel; [`Error::Exec`] when a worker
/// fails (e.g. the memmap cannot be read).
pub fn mt_y<E: Executor>(fov: &Fov<'_>, m: &CscMatrix, exec: &E) -> Result<(Array2<f64>, Option<RunStats>)> {
    let (d, t) = (fov.pixels(), fov.frames());
    check_rows(m, d)?;
    let mut res = Array2::<f64>::zeros((m.ncols(), t));
    let all = block_entries(m, d, t);
    if all.is_empty() {
        return Ok((res, None));
    }
    let partial_bytes = all.iter().map(|(_, e)| e.cols.len()).sum::<usize>() / all.len() * t * 8;
    let batch = batch_len(fov, (block_rows(t) * t * 4 + partial_bytes) as u64);
    let mut stats: Option<RunStats> = None;
    for chunk in all.chunks(batch) {
        let partials: Vec<Vec<f64>> = if tasks_read_rows(fov) {
            let tasks = chunk.iter().map(|(r, e)| MtYBlock { rows: fov.rows(r.clone()), entries: e.clone() }).collect();
            let (out, s) = exec.map(tasks)?;
            stats = Some(match stats {
                Some(prev) => prev.then(&s),
                None => s,
            });
            out
        } else {
            let par = crate::cnmf::main_thread_par(exec);
            par.map_indices(chunk.len(), |i| {
                let (r, e) = &chunk[i];
                e.product(fov.yr.slice(ndarray::s![r.clone(), ..]))
            })
        };
        for ((_, e), p) in chunk.iter().zip(&partials) {
            e.add_into(p, &mut res)?;
        }
    }
    Ok((res, stats))
}

/// `MᵀY` of an in-memory `Yr` view on up to `par.degree()` threads — the same blocks and
/// summation order as [`mt_y`], so the two agree bit for bit.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `M` does not have one row per row of `yr`.
pub fn mt_y_view(m: &CscMatrix, yr: ArrayView2<'_, f32>, par: Par) -> Result<Array2<f64>> {
    let (d, t) = yr.dim();
    check_rows(m, d)?;
    let mut res = Array2::<f64>::zeros((m.ncols(), t));
    if d == 0 || t == 0 {
        return Ok(res);
    }
    let all = block_entries(m, d, t);
    let width = par.degree().max(1) * 4;
    for chunk in all.chunks(width) {
        let partials = par.map_indices(chunk.len(), |i| {
            let (r, e) = &chunk[i];
            e.product(yr.slice(ndarray::s![r.clone(), ..]))
        });
        for ((_, e), p) in chunk.iter().zip(&partials) {
            e.add_into(p, &mut res)?;
        }
    }
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// Finiteness
// ---------------------------------------------------------------------------------------------

/// The task of one block of the finiteness check: the first pixel row holding a NaN or an
/// infinite sample, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FiniteBlock {
    /// The pixel rows.
    pub rows: PixelRows,
    /// Index of the block's first pixel.
    pub first: usize,
}

/// The first row of `y` with a non-finite sample.
fn first_non_finite(y: ArrayView2<'_, f32>) -> Option<usize> {
    y.rows().into_iter().position(|r| r.iter().any(|v| !v.is_finite()))
}

impl Task for FiniteBlock {
    const NAME: &'static str = "caiman_cnmf.finite_block";
    type Output = Option<usize>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Option<usize>, TaskError> {
        let first = self.first;
        self.rows.with_view(|y| first_non_finite(y).map(|r| r + first)).map_err(task_err)
    }
}

/// The first pixel (Fortran order) whose trace holds a NaN or an infinite sample, by blocks of
/// pixel rows (see the module doc); `None` when the whole movie is finite.
///
/// # Errors
/// [`Error::Exec`] when a worker fails.
pub fn first_non_finite_pixel<E: Executor>(fov: &Fov<'_>, exec: &E) -> Result<Option<usize>> {
    let (d, t) = (fov.pixels(), fov.frames());
    let all = blocks(d, t);
    if !tasks_read_rows(fov) {
        let par = crate::cnmf::main_thread_par(exec);
        let hits = par.map_indices(all.len(), |i| first_non_finite(fov.yr.slice(ndarray::s![all[i].clone(), ..])));
        return Ok(hits.iter().zip(&all).find_map(|(h, r)| h.map(|h| h + r.start)));
    }
    let batch = batch_len(fov, (block_rows(t) * t * 4) as u64);
    for chunk in all.chunks(batch) {
        let tasks = chunk.iter().map(|r| FiniteBlock { rows: fov.rows(r.clone()), first: r.start }).collect();
        let hits = exec.map_outputs(tasks)?;
        if let Some(p) = hits.into_iter().flatten().next() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Registers the task types of this module.
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<MtYBlock>().register::<FiniteBlock>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use caiman_io::Dims;
    use caiman_parallel::{Linear, Threads};

    /// A random sparse `d × n` matrix and a movie with values that make rounding visible.
    fn problem(d: usize, n: usize, t: usize) -> (CscMatrix, Array2<f32>) {
        let mut s = 12345u64;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as f64 / f64::from(1u32 << 31)
        };
        let mut dense = Array2::<f32>::zeros((d, n));
        for v in dense.iter_mut() {
            if next() < 0.2 {
                *v = next() as f32;
            }
        }
        let y = Array2::from_shape_fn((d, t), |_| (next() * 1000.0) as f32 + 0.1);
        (CscMatrix::from_dense(dense.view()), y)
    }

    #[test]
    fn block_product_is_the_dense_product_and_independent_of_the_executor() {
        // 5000 frames → 838 rows per block: 3 blocks over 2000 pixels.
        let (d, n, t) = (2000, 7, 5000);
        assert_eq!(block_rows(t), 838);
        let (m, y) = problem(d, n, t);
        let dense = m.to_dense();
        let want = dense.t().mapv(f64::from).dot(&y.mapv(f64::from));
        let got = mt_y_view(&m, y.view(), Par::Seq).unwrap();
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let err = (&got - &want).iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(err <= 1e-12 * scale, "max error {err} of {scale}");
        assert_eq!(mt_y_view(&m, y.view(), Par::new(2)).unwrap(), got);
        let shared = std::sync::Arc::new(y.clone());
        let dims = Dims::planar(40, 50);
        let fov = Fov::from_shared(dims, &shared).unwrap();
        let (lin, _) = mt_y(&fov, &m, &Linear::new()).unwrap();
        assert_eq!(lin, got);
        let small = Fov { budget: Some(1), ..fov };
        let (thr, stats) = mt_y(&small, &m, &Threads::new(2).unwrap()).unwrap();
        assert_eq!(thr, got);
        assert!(stats.is_some());
        let plain = Fov::new(dims, y.view()).unwrap();
        assert_eq!(mt_y(&plain, &m, &Threads::new(2).unwrap()).unwrap().0, got);
        // A movie in Fortran layout (rows not contiguous) gives the same numbers.
        let yt = y.t().as_standard_layout().to_owned();
        assert_eq!(mt_y_view(&m, yt.t(), Par::Seq).unwrap(), got);
        assert!(mt_y_view(&m, y.slice(ndarray::s![..10, ..]), Par::Seq).is_err());
    }

    #[test]
    fn finds_the_first_non_finite_pixel() {
        let (d, t) = (3000, 4000);
        let mut y = Array2::<f32>::ones((d, t));
        let shared = std::sync::Arc::new(y.clone());
        let dims = Dims::planar(60, 50);
        let fov = Fov::from_shared(dims, &shared).unwrap();
        assert_eq!(first_non_finite_pixel(&fov, &Linear::new()).unwrap(), None);
        y[[2500, 17]] = f32::NAN;
        y[[2900, 3]] = f32::INFINITY;
        let shared = std::sync::Arc::new(y.clone());
        let fov = Fov { budget: Some(1), ..Fov::from_shared(dims, &shared).unwrap() };
        assert_eq!(first_non_finite_pixel(&fov, &Threads::new(2).unwrap()).unwrap(), Some(2500));
        let plain = Fov::new(dims, y.view()).unwrap();
        assert_eq!(first_non_finite_pixel(&plain, &Linear::new()).unwrap(), Some(2500));
    }
}
