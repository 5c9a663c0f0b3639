//! Templates: CaImAn's `bin_median` (interleaved block means, then the pixel-wise median), the
//! NaN-aware median of chunk templates, and a streaming NaN-mean of corrected frames (the chunk
//! template of `tile_and_correct_wrapper`).
//!
//! numpy semantics are reproduced exactly for float32 data: block means and frame means sum in
//! float32 in frame order (numpy reduces a non-contiguous axis sequentially) and divide with a
//! correctly rounded quotient; a median of an even count is `(lo + hi) / 2` in float32. So these
//! functions give CaImAn's templates bit for bit on identical input. A more accurate `f64`
//! accumulation is available for the frame mean ([`Accumulation::F64`]).

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2};

use crate::error::{Error, Result};

/// Median of `v` (NaNs must already be removed); `NaN` for an empty slice. Reorders `v`.
fn median_f32(v: &mut [f32]) -> f32 {
    let n = v.len();
    if n == 0 {
        return f32::NAN;
    }
    v.sort_unstable_by(f32::total_cmp);
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Pixel-wise median over the first axis of `stack` (`K × d1 × d2`). With `ignore_nan`, NaNs are
/// skipped (`np.nanmedian`, all-NaN pixels give NaN); otherwise any NaN gives NaN (`np.median`).
fn median_over_stack(stack: ArrayView3<'_, f32>, ignore_nan: bool) -> Array2<f32> {
    let (k, d1, d2) = stack.dim();
    let mut buf = Vec::with_capacity(k);
    Array2::from_shape_fn((d1, d2), |(i, j)| {
        buf.clear();
        let mut has_nan = false;
        for t in 0..k {
            let v = stack[[t, i, j]];
            if v.is_nan() {
                has_nan = true;
            } else {
                buf.push(v);
            }
        }
        if has_nan && !ignore_nan { f32::NAN } else { median_f32(&mut buf) }
    })
}

/// CaImAn's `bin_median(mat, window, exclude_nans)` for a `T × d1 × d2` movie: block `j` is the
/// mean of frames `j, j + n, j + 2n, …` (`n = T / window`, **interleaved**, trailing frames
/// dropped; `window = T` when `T < window`), then the pixel-wise median of the block means.
/// With `exclude_nans` the means and the median skip NaNs (`nanmean`, `nanmedian`).
///
/// # Errors
/// [`Error::Empty`] for a movie without frames or a zero window.
pub fn bin_median(mat: ArrayView3<'_, f32>, window: usize, exclude_nans: bool) -> Result<Array2<f32>> {
    let (t, d1, d2) = mat.dim();
    if t == 0 || window == 0 {
        return Err(Error::Empty { what: "bin_median input (frames or window)" });
    }
    let window = window.min(t);
    let nw = t / window;
    let mut blocks = ndarray::Array3::<f32>::zeros((nw, d1, d2));
    for j in 0..nw {
        for p in 0..d1 {
            for q in 0..d2 {
                let (mut sum, mut cnt) = (0.0f32, 0usize);
                for i in 0..window {
                    let v = mat[[i * nw + j, p, q]];
                    if exclude_nans {
                        if !v.is_nan() {
                            sum += v;
                            cnt += 1;
                        }
                    } else {
                        sum += v;
                        cnt += 1;
                    }
                }
                blocks[[j, p, q]] = (f64::from(sum) / cnt as f64) as f32;
            }
        }
    }
    Ok(median_over_stack(blocks.view(), exclude_nans))
}

/// Pixel-wise `np.nanmedian` of chunk templates (how CaImAn combines them into the new template).
///
/// # Errors
/// [`Error::Empty`] without templates; [`Error::ShapeMismatch`] if their shapes differ.
pub fn nanmedian_templates(templates: &[ArrayView2<'_, f32>]) -> Result<Array2<f32>> {
    let first = templates.first().ok_or(Error::Empty { what: "template list" })?;
    let (d1, d2) = first.dim();
    let mut stack = ndarray::Array3::<f32>::zeros((templates.len(), d1, d2));
    for (k, t) in templates.iter().enumerate() {
        if t.dim() != (d1, d2) {
            return Err(Error::ShapeMismatch {
                what: "chunk templates",
                expected: vec![d1, d2],
                got: vec![t.nrows(), t.ncols()],
            });
        }
        stack.index_axis_mut(ndarray::Axis(0), k).assign(t);
    }
    Ok(median_over_stack(stack.view(), true))
}

/// How [`NanMeanAccumulator`] sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulation {
    /// float32, frame by frame: numpy's `np.nanmean(frames, axis=0)` bit for bit (default).
    #[default]
    NumpyF32,
    /// float64 sums, rounded once at the end (more accurate, differs from CaImAn by float32
    /// rounding).
    F64,
}

/// Streaming `np.nanmean` of frames, finished as CaImAn's chunk template (pixels that were NaN in
/// every frame get the template's nanmin). Add corrected frames one by one; no per-frame
/// allocation.
#[derive(Clone, Debug)]
pub struct NanMeanAccumulator {
    dims: [usize; 2],
    mode: Accumulation,
    sum32: Vec<f32>,
    sum64: Vec<f64>,
    count: Vec<u32>,
    frames: usize,
}

impl NanMeanAccumulator {
    /// An empty accumulator for frames of `dims = [d1, d2]`.
    pub fn new(dims: [usize; 2], mode: Accumulation) -> Self {
        let n = dims[0] * dims[1];
        let (s32, s64) = match mode {
            Accumulation::NumpyF32 => (vec![0.0; n], Vec::new()),
            Accumulation::F64 => (Vec::new(), vec![0.0; n]),
        };
        Self { dims, mode, sum32: s32, sum64: s64, count: vec![0; n], frames: 0 }
    }

    /// Number of frames added so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Adds one frame (NaNs are skipped).
    ///
    /// # Panics
    /// If the frame shape differs from the accumulator's.
    pub fn add(&mut self, frame: ArrayView2<'_, f32>) {
        assert_eq!(frame.dim(), (self.dims[0], self.dims[1]), "NanMeanAccumulator: frame shape");
        self.frames += 1;
        if let Some(sl) = frame.as_slice() {
            // Contiguous fast path (branch-free, vectorisable). Adding 0.0 for a NaN is the same
            // as skipping it: a sum that starts at +0.0 can never be −0.0.
            match self.mode {
                Accumulation::NumpyF32 => {
                    for ((s, c), &v) in self.sum32.iter_mut().zip(&mut self.count).zip(sl) {
                        let ok = !v.is_nan();
                        *s += if ok { v } else { 0.0 };
                        *c += u32::from(ok);
                    }
                }
                Accumulation::F64 => {
                    for ((s, c), &v) in self.sum64.iter_mut().zip(&mut self.count).zip(sl) {
                        let ok = !v.is_nan();
                        *s += if ok { f64::from(v) } else { 0.0 };
                        *c += u32::from(ok);
                    }
                }
            }
            return;
        }
        let w = self.dims[1];
        for (i, row) in frame.rows().into_iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let k = i * w + j;
                self.count[k] += 1;
                match self.mode {
                    Accumulation::NumpyF32 => self.sum32[k] += v,
                    Accumulation::F64 => self.sum64[k] += f64::from(v),
                }
            }
        }
    }

    /// The NaN-mean into `out`; pixels without any finite sample are set to the nanmin of the
    /// result (CaImAn: `new_temp[np.isnan(new_temp)] = np.nanmin(new_temp)`).
    ///
    /// # Panics
    /// If `out` has the wrong shape.
    pub fn finish(&self, mut out: ArrayViewMut2<'_, f32>) {
        assert_eq!(out.dim(), (self.dims[0], self.dims[1]), "NanMeanAccumulator: output shape");
        let w = self.dims[1];
        let mut lo = f32::NAN;
        for ((i, j), o) in out.indexed_iter_mut() {
            let k = i * w + j;
            let sum = match self.mode {
                Accumulation::NumpyF32 => f64::from(self.sum32[k]),
                Accumulation::F64 => self.sum64[k],
            };
            let v = (sum / f64::from(self.count[k])) as f32;
            if !v.is_nan() && (lo.is_nan() || v < lo) {
                lo = v;
            }
            *o = v;
        }
        out.mapv_inplace(|v| if v.is_nan() { lo } else { v });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median_f32(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f32(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median_f32(&mut []).is_nan());
    }

    #[test]
    fn accumulator_fills_all_nan_pixels_with_min() {
        let mut acc = NanMeanAccumulator::new([1, 3], Accumulation::NumpyF32);
        acc.add(ndarray::arr2(&[[1.0, f32::NAN, 5.0]]).view());
        acc.add(ndarray::arr2(&[[3.0, f32::NAN, 7.0]]).view());
        let mut out = Array2::zeros((1, 3));
        acc.finish(out.view_mut());
        assert_eq!(out, ndarray::arr2(&[[2.0, 2.0, 6.0]]));
    }
}
