//! The legacy single-frame matcher (catalog §2.9) and CaImAn's initial-template rule (§2.3 step 1).
//!
//! [`TemplateMatcher`] is `cv2.matchTemplate(frame, crop, TM_CCORR_NORMED)` with the template
//! cropped by `max_shift` on every side, an integer peak over the `(2m+1)²` offsets and CaImAn's
//! log-parabola (Gaussian) refinement, applied only when the peak is "interior" by CaImAn's
//! test `0 < p < 2m − 1` (sic: the last interior offset `2m − 1` is excluded too). The returned
//! shift is the shift to *apply*, `−(p − m + δ)`.
//!
//! [`initial_template`] follows `movie.motion_correct(template=None)` as
//! `motion_correct_batch_rigid` uses it on a temporal subsample of the movie: bin-median template
//! of a further subsample, match and shift, bin-median again, match the whole subsample against
//! it, shift, bin-median, then a final match of the subsample and `bin_median` of the result.
//! CaImAn's side effect of `extract_shifts` on movies with a 1st percentile below −0.1 (the movie
//! is shifted by that percentile in place) is kept.
//!
//! Precision: with [`Precision::F64`] the correlations are computed directly in `f64` and warps
//! use the `f64` OpenCV cubic path, while CaImAn's OpenCV runs these steps on float32 (DFT-based
//! correlation, float32 interpolation sums). Matches differ by float32 rounding (~1e-6 px on the
//! refined shifts). With [`Precision::F32`] (the fast path) the numerators of the normalised
//! correlation come from one `f64` FFT cross-correlation per frame (as OpenCV computes them, ~10×
//! faster than the direct sums for 512 × 512 frames and ±6 px; equal to them to ~1e-12
//! relative), and the warps use the `f32` separable cubic translation.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, s};

use caiman_parallel::Par;

use crate::error::{Error, Result};
use crate::fft::{Fft2d, Spectrum};
use crate::params::Precision;
use crate::shift::{BorderMode, CubicWarper};
use crate::template::bin_median;

/// Result of matching one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// The shift to apply `[rows, cols]`.
    pub shift: [f64; 2],
    /// Integer peak position in the `(2m0+1) × (2m1+1)` correlation map.
    pub peak: [usize; 2],
    /// Mean of the correlation map (CaImAn's `xcorrs` entry).
    pub mean_corr: f64,
}

/// Normalised cross-correlation matcher for one template and maximum shift.
#[derive(Clone, Debug)]
pub struct TemplateMatcher {
    max_shift: [usize; 2],
    dims: [usize; 2],
    crop: Array2<f64>,
    crop_norm: f64,
    ncc: Array2<f64>,
    sq: Array2<f64>,
    frame64: Vec<f64>,
    fft: Option<Box<FftCorrelator>>,
}

/// The numerators `Σ crop(r, c) · frame(p0 + r, p1 + c)` for every offset from one FFT
/// cross-correlation (no wrap-around: every offset keeps the crop inside the frame).
#[derive(Clone, Debug)]
struct FftCorrelator {
    fft: Fft2d<f64>,
    crop_spec: Spectrum<f64>,
    spec: Spectrum<f64>,
}

impl FftCorrelator {
    fn new(dims: [usize; 2], crop: &Array2<f64>) -> Self {
        let mut padded = Array2::<f64>::zeros((dims[0], dims[1]));
        padded.slice_mut(s![..crop.nrows(), ..crop.ncols()]).assign(crop);
        let mut fft = Fft2d::new(dims);
        let mut crop_spec = Spectrum::zeros(dims);
        fft.forward(padded.view(), 0.0, &mut crop_spec);
        Self { fft, crop_spec, spec: Spectrum::zeros(dims) }
    }

    /// Fills `num[p0][p1]` for `p0 ≤ 2 m0`, `p1 ≤ 2 m1`.
    fn numerators(&mut self, frame: ArrayView2<'_, f32>, num: &mut Array2<f64>) {
        let [h, w] = self.fft.shape();
        self.fft.forward(frame, 0.0, &mut self.spec);
        for (f, c) in self.spec.as_mut_slice().iter_mut().zip(self.crop_spec.as_slice()) {
            *f *= c.conj();
        }
        let scale = 1.0 / (h * w) as f64;
        self.fft.columns_inverse(self.spec.as_mut_slice());
        let (n0, n1) = num.dim();
        for p0 in 0..n0 {
            let row = self.fft.row_c2r(self.spec.as_slice(), p0);
            for (p1, v) in num.row_mut(p0).iter_mut().enumerate().take(n1) {
                *v = row[p1] * scale;
            }
        }
    }
}

/// Dot product with eight independent partial sums (vectorisable; the summation order differs
/// from a sequential sum only in the last bits).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

impl TemplateMatcher {
    /// Matcher for `template` (`d1 × d2`) and maximum shifts `[rows, cols]` (CaImAn's
    /// `max_shift_h`, `max_shift_w`).
    ///
    /// # Errors
    /// [`Error::PatchLargerThanImage`] if cropping `2·max_shift` leaves nothing.
    pub fn new(template: ArrayView2<'_, f32>, max_shift: [usize; 2]) -> Result<Self> {
        Self::with_precision(template, max_shift, Precision::F64)
    }

    /// [`Self::new`] with the numerators computed directly ([`Precision::F64`]) or by one FFT
    /// cross-correlation per frame ([`Precision::F32`], the fast path).
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_precision(template: ArrayView2<'_, f32>, max_shift: [usize; 2], precision: Precision) -> Result<Self> {
        let (h, w) = template.dim();
        if h <= 2 * max_shift[0] || w <= 2 * max_shift[1] {
            return Err(Error::PatchLargerThanImage {
                dims: vec![h, w],
                window: vec![2 * max_shift[0] + 1, 2 * max_shift[1] + 1],
            });
        }
        let crop = template.slice(s![max_shift[0]..h - max_shift[0], max_shift[1]..w - max_shift[1]]).mapv(f64::from);
        let crop_norm = crop.iter().map(|v| v * v).sum::<f64>().sqrt();
        let fft = (precision == Precision::F32).then(|| Box::new(FftCorrelator::new([h, w], &crop)));
        Ok(Self {
            fft,
            max_shift,
            dims: [h, w],
            crop,
            crop_norm,
            ncc: Array2::zeros((2 * max_shift[0] + 1, 2 * max_shift[1] + 1)),
            sq: Array2::zeros((h + 1, w + 1)),
            frame64: Vec::with_capacity(h * w),
        })
    }

    /// The correlation map of the last [`Self::match_frame`] call.
    pub fn correlation_map(&self) -> ArrayView2<'_, f64> {
        self.ncc.view()
    }

    /// Matches `frame` against the template.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a frame of another shape.
    pub fn match_frame(&mut self, frame: ArrayView2<'_, f32>) -> Result<Match> {
        let [h, w] = self.dims;
        if frame.dim() != (h, w) {
            return Err(Error::ShapeMismatch {
                what: "frame vs template",
                expected: vec![h, w],
                got: vec![frame.nrows(), frame.ncols()],
            });
        }
        // The frame in f64, row-major and contiguous, so the correlation loop runs on slices.
        self.frame64.clear();
        self.frame64.extend(frame.iter().map(|&v| f64::from(v)));
        // Integral image of squares (OpenCV normalises with double-precision integrals).
        for r in 0..h {
            let mut run = 0.0;
            for c in 0..w {
                let v = self.frame64[r * w + c];
                run += v * v;
                self.sq[[r + 1, c + 1]] = self.sq[[r, c + 1]] + run;
            }
        }
        let (ch, cw) = self.crop.dim();
        let [m0, m1] = self.max_shift;
        let crop = self.crop.as_slice().expect("crop is in standard layout");
        // With the FFT correlator, `ncc` first receives the numerators.
        if let Some(f) = self.fft.as_mut() {
            f.numerators(frame, &mut self.ncc);
        }
        for p0 in 0..=2 * m0 {
            for p1 in 0..=2 * m1 {
                let num = if self.fft.is_some() {
                    self.ncc[[p0, p1]]
                } else {
                    let mut num = 0.0;
                    for r in 0..ch {
                        let crow = &crop[r * cw..(r + 1) * cw];
                        let start = (p0 + r) * w + p1;
                        num += dot(crow, &self.frame64[start..start + cw]);
                    }
                    num
                };
                let wnd =
                    self.sq[[p0 + ch, p1 + cw]] - self.sq[[p0, p1 + cw]] - self.sq[[p0 + ch, p1]] + self.sq[[p0, p1]];
                let t = wnd.max(0.0).sqrt() * self.crop_norm;
                // OpenCV's normalisation clamp (common_matchTemplate).
                self.ncc[[p0, p1]] = if num.abs() < t {
                    num / t
                } else if num.abs() < t * 1.125 {
                    if num > 0.0 { 1.0 } else { -1.0 }
                } else {
                    0.0
                };
            }
        }
        let mut peak = [0usize, 0];
        let mut best = f64::NEG_INFINITY;
        for ((i, j), &v) in self.ncc.indexed_iter() {
            if v > best {
                best = v;
                peak = [i, j];
            }
        }
        let mean_corr = self.ncc.mean().unwrap_or(f64::NAN);
        let [p0, p1] = peak;
        let interior = 0 < p0 && p0 + 1 < 2 * m0 && 0 < p1 && p1 + 1 < 2 * m1;
        let shift = if interior {
            let r = &self.ncc;
            let delta = |lm: f64, l0: f64, lp: f64| (lm - lp) / (2.0 * lm - 4.0 * l0 + 2.0 * lp);
            let d0 = delta(r[[p0 - 1, p1]].ln(), r[[p0, p1]].ln(), r[[p0 + 1, p1]].ln());
            let d1 = delta(r[[p0, p1 - 1]].ln(), r[[p0, p1]].ln(), r[[p0, p1 + 1]].ln());
            [-(p0 as f64 - m0 as f64 + d0), -(p1 as f64 - m1 as f64 + d1)]
        } else {
            [-(p0 as f64 - m0 as f64), -(p1 as f64 - m1 as f64)]
        };
        Ok(Match { shift, peak, mean_corr })
    }
}

/// CaImAn's `motion_correct_iteration_fast(img, template, max_shift_w, max_shift_h)` with
/// `max_shift = [rows, cols]`: matches, then warps `img` (cubic, `BORDER_REFLECT`, clipped to its
/// range) into `out`. Returns the applied shift.
///
/// # Errors
/// As [`TemplateMatcher::new`] / [`TemplateMatcher::match_frame`].
///
/// # Panics
/// If `out` has a different shape than `img`.
pub fn motion_correct_iteration_fast(
    img: ArrayView2<'_, f32>,
    template: ArrayView2<'_, f32>,
    max_shift: [usize; 2],
    out: ArrayViewMut2<'_, f32>,
) -> Result<[f64; 2]> {
    let m = TemplateMatcher::new(template, max_shift)?.match_frame(img)?;
    CubicWarper::new().translate(img, 0.0, m.shift, BorderMode::None, out);
    Ok(m.shift)
}

/// numpy `percentile(a, q)` (linear interpolation) of all values; reorders a copy.
fn percentile(values: impl Iterator<Item = f32>, q: f64) -> f64 {
    let mut v: Vec<f32> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = q / 100.0 * (v.len() - 1) as f64;
    let lo = idx.floor() as usize;
    let t = idx - lo as f64;
    let (_, &mut a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let a = f64::from(a);
    if t == 0.0 || rest.is_empty() {
        return a;
    }
    let b = f64::from(rest.iter().copied().min_by(f32::total_cmp).expect("non-empty"));
    if t < 0.5 { a + (b - a) * t } else { b - (b - a) * (1.0 - t) }
}

/// `percentile(values, q)` when it is below `thresh`; otherwise some value ≥ `thresh` (the
/// decision `percentile < thresh` is exact, but the sort is skipped when few values are below).
fn percentile_if_below(values: &[f32], q: f64, thresh: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let lo = (q / 100.0 * (n - 1) as f64).floor() as usize;
    let below = values.iter().filter(|&&v| f64::from(v) < thresh).count();
    // The interpolated percentile lies between the sorted values at `lo` and `lo + 1`: when at
    // most `lo` values are below the threshold, both are at or above it.
    if below <= lo && !values.iter().any(|v| v.is_nan()) {
        return thresh;
    }
    percentile(values.iter().copied(), q)
}

/// `movie.bin_median(window=10)` (plain mean and median; `window = T` when `T < 10`).
fn movie_bin_median(mov: ArrayView3<'_, f32>) -> Result<Array2<f32>> {
    bin_median(mov, 10, false)
}

/// `movie.extract_shifts` + `movie.apply_shifts(interpolation='cubic')`, in place. Returns the
/// applied shifts.
fn extract_and_apply(
    mov: &mut Array3<f32>,
    template: &Array2<f32>,
    max_shift: [usize; 2],
    precision: Precision,
    par: Par,
) -> Result<Vec<[f64; 2]>> {
    let min_val = percentile_if_below(mov.as_slice().expect("standard layout"), 1.0, -0.1);
    if min_val < -0.1 {
        // CaImAn subtracts in place and never adds it back to the caller's movie.
        mov.mapv_inplace(|v| (f64::from(v) - min_val) as f32);
    }
    let mut template = template.clone();
    if min_val < -0.1 && percentile(template.iter().copied(), 8.0) < -0.1 {
        template.mapv_inplace(|v| (f64::from(v) - min_val) as f32);
    }
    // Frames are independent: `par.degree()` runs of consecutive frames, each with its own
    // matcher and warper, give the same shifts and frames as one sequential run.
    let (t, h, w) = mov.dim();
    let per = t.div_ceil(par.degree().max(1)).max(1);
    let runs = t.div_ceil(per);
    let frames = mov.view();
    let shifts: Vec<Result<Vec<[f64; 2]>>> = par.map_indices(runs, |r| {
        let mut matcher = TemplateMatcher::with_precision(template.view(), max_shift, precision)?;
        (r * per..((r + 1) * per).min(t))
            .map(|k| Ok(matcher.match_frame(frames.index_axis(Axis(0), k))?.shift))
            .collect()
    });
    let shifts: Vec<[f64; 2]> = shifts.into_iter().collect::<Result<Vec<_>>>()?.concat();
    let data = mov.as_slice_mut().expect("standard layout");
    par.for_each_chunk_mut(data, per * h * w, |r, chunk| {
        let mut warper = CubicWarper::new();
        let mut buf = Array2::<f32>::zeros((h, w));
        for (i, frame) in chunk.chunks_exact_mut(h * w).enumerate() {
            let shift = shifts[r * per + i];
            let view = ArrayView2::from_shape((h, w), &*frame).expect("frame shape");
            match precision {
                Precision::F64 => warper.translate(view, 0.0, shift, BorderMode::None, buf.view_mut()),
                Precision::F32 => warper.translate_fast(view, 0.0, shift, BorderMode::None, buf.view_mut()),
            }
            frame.copy_from_slice(buf.as_slice().expect("standard layout"));
        }
    });
    Ok(shifts)
}

/// CaImAn's initial template for the rigid pass from a temporal subsample of the movie
/// (`motion_correct_batch_rigid` loads frames `0, k, 2k, …` with `k = T // 50 + 1`, high-pass
/// filters them if `gSig_filt`, and calls this procedure). `max_shifts = [rows, cols]`.
///
/// # Errors
/// [`Error::Empty`] without frames; matcher errors for frames too small for `max_shifts`.
pub fn initial_template(subsample: ArrayView3<'_, f32>, max_shifts: [usize; 2]) -> Result<Array2<f32>> {
    initial_template_with(subsample, max_shifts, Precision::F64, Par::Seq)
}

/// [`initial_template`] in the given arithmetic ([`Precision::F32`]: FFT numerators and `f32`
/// warps, see the module docs), registering and shifting the frames on up to `par.degree()`
/// threads (the result does not depend on it).
///
/// # Errors
/// As [`initial_template`].
pub fn initial_template_with(
    subsample: ArrayView3<'_, f32>,
    max_shifts: [usize; 2],
    precision: Precision,
    par: Par,
) -> Result<Array2<f32>> {
    let (t, d1, d2) = subsample.dim();
    if t == 0 {
        return Err(Error::Empty { what: "initial-template subsample" });
    }
    tracing::debug!(frames = t, d1, d2, ?max_shifts, "initial template from subsample");
    let num_frames_template = 10e7 / (d1 * d2) as f64;
    let skip = ((t as f64 / num_frames_template) as usize).max(1);
    let mut sub = subsample.slice(s![..;skip, .., ..]).to_owned();
    let templ = movie_bin_median(sub.view())?;
    extract_and_apply(&mut sub, &templ, max_shifts, precision, par)?;
    let templ = movie_bin_median(sub.view())?;
    let mut m = subsample.to_owned();
    extract_and_apply(&mut m, &templ, max_shifts, precision, par)?;
    let templ = movie_bin_median(m.view())?;
    let mut m = subsample.to_owned();
    extract_and_apply(&mut m, &templ, max_shifts, precision, par)?;
    bin_median(m.view(), 10, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_template_does_not_depend_on_the_thread_count() {
        // 13 frames (not a multiple of the thread counts) of a smooth scene moved by whole and
        // fractional pixels.
        let (t, h, w) = (13, 48, 40);
        let sub = Array3::from_shape_fn((t, h, w), |(k, i, j)| {
            let (y, x) = (i as f32 + 0.37 * (k % 5) as f32, j as f32 - 0.61 * (k % 3) as f32);
            50.0 + 20.0 * (y * 0.31).sin() * (x * 0.23).cos() + 8.0 * ((y + x) * 0.11).sin()
        });
        for precision in [Precision::F64, Precision::F32] {
            let seq = initial_template_with(sub.view(), [4, 4], precision, Par::Seq).unwrap();
            for n in [2, 3, 5] {
                let par = initial_template_with(sub.view(), [4, 4], precision, Par::new(n)).unwrap();
                assert!(seq.iter().zip(par.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{precision:?}, {n}");
            }
        }
    }

    #[test]
    fn percentile_like_numpy() {
        let v = [4.0f32, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(percentile(v.iter().copied(), 50.0), 3.0);
        assert_eq!(percentile(v.iter().copied(), 0.0), 1.0);
        assert_eq!(percentile(v.iter().copied(), 100.0), 5.0);
        assert!((percentile(v.iter().copied(), 10.0) - 1.4).abs() < 1e-12);
    }
}
