//! 2-D real-to-complex FFTs of arbitrary size with cached plans and scratch buffers, and a simple
//! 3-D complex FFT for volumes.
//!
//! The 2-D transform is composed by hand, as `rust-deps.md` §5 recommends: a real FFT of every
//! row (`realfft`), a blocked transpose, then complex FFTs of the `w/2 + 1` resulting rows
//! (`rustfft`, one batched call). The spectrum is **kept transposed** ([`Spectrum`]): element
//! `(k0, k1)` lives at `k1 * h + k0`. Element-wise products (cross-power spectra, phase ramps)
//! do not care about the layout, and the inverse transform starts from it directly.
//!
//! The scalar type is a parameter ([`Real`]: `f64` or `f32`). The exact path computes in `f64`:
//! sub-pixel registration must reproduce CaImAn's float64 argmax decisions on a 0.1 px grid,
//! which near-ties make sensitive to rounding (see `register.rs`). The fast path
//! ([`crate::Precision::F32`]) runs the same transforms in `f32` (twice the SIMD width, half the
//! memory traffic). Inputs are `f32` (or `f64`) views of any stride. Transforms are unnormalised
//! in both directions except where stated.

use std::sync::Arc;

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::{Complex, Complex64};
use rustfft::num_traits::Float;
use rustfft::{Fft, FftNum, FftPlanner};

/// The floating-point types the transforms and registration kernels run in (`f64`: CaImAn's
/// exact arithmetic; `f32`: the fast path).
pub trait Real: FftNum + Float + Default + std::iter::Sum {
    /// The fast path (`f32`): kernels may fuse multiply-adds (changing rounding), and
    /// registration removes the image means before transforming (see `register.rs`).
    const FAST: bool;
    /// Rounds an `f64` to this type.
    fn of(v: f64) -> Self;
    /// Widens to `f64` (exact).
    fn widen(self) -> f64;
}

impl Real for f64 {
    const FAST: bool = false;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
}

impl Real for f32 {
    const FAST: bool = true;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn widen(self) -> f64 {
        f64::from(self)
    }
}

/// Scalar types an FFT input may have (`f32` frames, `f64` working buffers).
pub trait Sample: Copy + Send + Sync + 'static {
    /// Widen to `f64`.
    fn to_f64(self) -> f64;
    /// `self + offset` in the working type `T` (in `f64` first, then rounded, so the `f64` path
    /// is unchanged and the `f32` path rounds once).
    #[inline(always)]
    fn plus<T: Real>(self, offset: f64) -> T {
        T::of(self.to_f64() + offset)
    }
}

impl Sample for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Sample for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// Rows transformed together before they are scattered into the transposed spectrum.
const BLOCK: usize = 16;

/// The half spectrum of a real `h × w` image, stored transposed: `w/2 + 1` rows (one per
/// column frequency `k1`) of `h` complex values (row frequencies `k0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum<T = f64> {
    shape: [usize; 2],
    data: Vec<Complex<T>>,
    /// The true DC coefficient (`Σ (img + offset)`) when the stored transform is of the
    /// mean-removed image (the fast registration path); 0 otherwise.
    dc: f64,
}

impl<T: Real> Default for Spectrum<T> {
    /// The spectrum of an empty (`0 × 0`) image.
    fn default() -> Self {
        Self { shape: [0, 0], data: Vec::new(), dc: 0.0 }
    }
}

impl<T: Real> Spectrum<T> {
    /// An all-zero spectrum for an image of `shape = [h, w]`.
    pub fn zeros(shape: [usize; 2]) -> Self {
        let bins = shape[1] / 2 + 1;
        Self { shape, data: vec![Complex::new(T::zero(), T::zero()); bins * shape[0]], dc: 0.0 }
    }

    /// The shape `[h, w]` of the real image this is the spectrum of.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Number of stored column frequencies, `w/2 + 1`.
    pub fn bins(&self) -> usize {
        self.shape[1] / 2 + 1
    }

    /// Coefficient at row frequency `k0 < h` and column frequency `k1 < w/2 + 1`.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn get(&self, k0: usize, k1: usize) -> Complex<T> {
        assert!(k0 < self.shape[0] && k1 < self.bins(), "spectrum index out of range");
        self.data[k1 * self.shape[0] + k0]
    }

    /// The DC coefficient removed before transforming (fast registration path: the stored
    /// transform is of `img − mean(img)` and this is `Σ (img + offset)`); 0 for a plain transform.
    pub fn removed_dc(&self) -> f64 {
        self.dc
    }

    pub(crate) fn set_removed_dc(&mut self, dc: f64) {
        self.dc = dc;
    }

    /// The raw transposed storage (`k1 * h + k0`).
    pub fn as_slice(&self) -> &[Complex<T>] {
        &self.data
    }

    /// The raw transposed storage, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [Complex<T>] {
        &mut self.data
    }
}

/// Plans and scratch for 2-D real FFTs of one image size. Build once per worker and size; no
/// method allocates.
#[derive(Clone)]
pub struct Fft2d<T = f64> {
    h: usize,
    w: usize,
    bins: usize,
    r2c: Arc<dyn RealToComplex<T>>,
    c2r: Arc<dyn ComplexToReal<T>>,
    col_fwd: Arc<dyn Fft<T>>,
    col_inv: Arc<dyn Fft<T>>,
    row_in: Vec<T>,
    row_out: Vec<Complex<T>>,
    r2c_scratch: Vec<Complex<T>>,
    c2r_scratch: Vec<Complex<T>>,
    c2r_in: Vec<Complex<T>>,
    c2r_out: Vec<T>,
    col_scratch: Vec<Complex<T>>,
}

impl<T> std::fmt::Debug for Fft2d<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft2d").field("h", &self.h).field("w", &self.w).finish_non_exhaustive()
    }
}

impl<T: Real> Fft2d<T> {
    /// Plans for images of `shape = [h, w]` (any sizes ≥ 1).
    ///
    /// # Panics
    /// If a dimension is zero.
    pub fn new(shape: [usize; 2]) -> Self {
        let [h, w] = shape;
        assert!(h > 0 && w > 0, "FFT of an empty image");
        let bins = w / 2 + 1;
        let mut rp = RealFftPlanner::<T>::new();
        let r2c = rp.plan_fft_forward(w);
        let c2r = rp.plan_fft_inverse(w);
        let mut cp = FftPlanner::<T>::new();
        let col_fwd = cp.plan_fft_forward(h);
        let col_inv = cp.plan_fft_inverse(h);
        let zero = Complex::new(T::zero(), T::zero());
        let col_scratch_len = col_fwd.get_inplace_scratch_len().max(col_inv.get_inplace_scratch_len());
        Self {
            h,
            w,
            bins,
            r2c_scratch: vec![zero; r2c.get_scratch_len()],
            c2r_scratch: vec![zero; c2r.get_scratch_len()],
            r2c,
            c2r,
            col_fwd,
            col_inv,
            row_in: vec![T::zero(); w],
            row_out: vec![zero; BLOCK * bins],
            c2r_in: vec![zero; bins],
            c2r_out: vec![T::zero(); w],
            col_scratch: vec![zero; col_scratch_len],
        }
    }

    /// The image shape `[h, w]` these plans are for.
    pub fn shape(&self) -> [usize; 2] {
        [self.h, self.w]
    }

    /// Forward transform of `img + offset` (unnormalised) into `out`.
    ///
    /// # Panics
    /// If `img` or `out` do not have this plan's shape.
    pub fn forward<S: Sample>(&mut self, img: ArrayView2<'_, S>, offset: f64, out: &mut Spectrum<T>) {
        assert_eq!(img.dim(), (self.h, self.w), "Fft2d::forward: image shape");
        assert_eq!(out.shape, [self.h, self.w], "Fft2d::forward: spectrum shape");
        let (h, bins) = (self.h, self.bins);
        let mut r0 = 0;
        while r0 < h {
            let nb = BLOCK.min(h - r0);
            for j in 0..nb {
                let row = img.row(r0 + j);
                match row.as_slice() {
                    Some(sl) => {
                        for (dst, &v) in self.row_in.iter_mut().zip(sl) {
                            *dst = v.plus(offset);
                        }
                    }
                    None => {
                        for (dst, &v) in self.row_in.iter_mut().zip(row.iter()) {
                            *dst = v.plus(offset);
                        }
                    }
                }
                self.r2c
                    .process_with_scratch(
                        &mut self.row_in,
                        &mut self.row_out[j * bins..(j + 1) * bins],
                        &mut self.r2c_scratch,
                    )
                    .expect("realfft r2c: buffer lengths are set up by Fft2d::new");
            }
            for k1 in 0..bins {
                let dst = &mut out.data[k1 * h + r0..k1 * h + r0 + nb];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = self.row_out[j * bins + k1];
                }
            }
            r0 += nb;
        }
        self.col_fwd.process_with_scratch(&mut out.data, &mut self.col_scratch);
    }

    /// Inverse column transforms of a transposed spectrum buffer, in place (unnormalised).
    pub(crate) fn columns_inverse(&mut self, data: &mut [Complex<T>]) {
        debug_assert_eq!(data.len(), self.h * self.bins);
        self.col_inv.process_with_scratch(data, &mut self.col_scratch);
    }

    /// Real inverse of output row `r`, given a buffer already processed by
    /// [`Self::columns_inverse`]. Returns the unnormalised row (length `w`).
    pub(crate) fn row_c2r(&mut self, data: &[Complex<T>], r: usize) -> &[T] {
        let h = self.h;
        for (k1, d) in self.c2r_in.iter_mut().enumerate() {
            *d = data[k1 * h + r];
        }
        // The imaginary parts of the self-conjugate bins are zero in exact arithmetic.
        self.c2r_in[0].im = T::zero();
        if self.w.is_multiple_of(2) {
            self.c2r_in[self.bins - 1].im = T::zero();
        }
        self.c2r
            .process_with_scratch(&mut self.c2r_in, &mut self.c2r_out, &mut self.c2r_scratch)
            .expect("realfft c2r: buffer lengths and DC/Nyquist bins are set up");
        &self.c2r_out
    }

    /// Normalised inverse transform (`ifft2(spec).real`), destroying `spec`.
    ///
    /// # Panics
    /// If `spec` or `out` do not have this plan's shape.
    pub fn inverse(&mut self, spec: &mut Spectrum<T>, mut out: ArrayViewMut2<'_, T>) {
        assert_eq!(spec.shape, [self.h, self.w], "Fft2d::inverse: spectrum shape");
        assert_eq!(out.dim(), (self.h, self.w), "Fft2d::inverse: output shape");
        let scale = T::of(1.0 / (self.h * self.w) as f64);
        self.columns_inverse(&mut spec.data);
        for r in 0..self.h {
            let row = self.row_c2r(&spec.data, r);
            for (o, &v) in out.row_mut(r).iter_mut().zip(row) {
                *o = v * scale;
            }
        }
    }
}

/// `fftfreq`-style signed frequency of bin `k` of an `n`-point DFT (`-n/2` for the Nyquist bin of
/// even `n`, as numpy's `ifftshift(arange(n)) - n//2`).
#[inline]
pub(crate) fn signed_freq(k: usize, n: usize) -> i64 {
    if k < n.div_ceil(2) { k as i64 } else { k as i64 - n as i64 }
}

/// Plans for unnormalised 3-D complex FFTs of one volume size (`[d0, d1, d2]`), applied axis by
/// axis with gathers. Meant for the small volumes of 3-D imaging; not tuned.
pub struct Fft3d {
    shape: [usize; 3],
    fwd: [Arc<dyn Fft<f64>>; 3],
    inv: [Arc<dyn Fft<f64>>; 3],
    line: Vec<Complex64>,
    scratch: Vec<Complex64>,
}

impl std::fmt::Debug for Fft3d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft3d").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl Fft3d {
    /// Plans for volumes of `shape`.
    ///
    /// # Panics
    /// If a dimension is zero.
    pub fn new(shape: [usize; 3]) -> Self {
        assert!(shape.iter().all(|&n| n > 0), "FFT of an empty volume");
        let mut p = FftPlanner::<f64>::new();
        let fwd = shape.map(|n| p.plan_fft_forward(n));
        let inv = shape.map(|n| p.plan_fft_inverse(n));
        let scratch_len = fwd.iter().chain(inv.iter()).map(|f| f.get_inplace_scratch_len()).max().unwrap_or(0);
        let zero = Complex64::new(0.0, 0.0);
        Self { shape, fwd, inv, line: vec![zero; *shape.iter().max().unwrap_or(&1)], scratch: vec![zero; scratch_len] }
    }

    /// The volume shape these plans are for.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Forward transform of `vol + offset` into `out` (C order, unnormalised).
    ///
    /// # Panics
    /// If the shapes do not match the plans.
    pub fn forward<T: Sample>(&mut self, vol: ArrayView3<'_, T>, offset: f64, mut out: ArrayViewMut3<'_, Complex64>) {
        assert_eq!(<[usize; 3]>::from(vol.dim()), self.shape, "Fft3d::forward: shape");
        assert_eq!(<[usize; 3]>::from(out.dim()), self.shape, "Fft3d::forward: shape");
        out.zip_mut_with(&vol, |o, &v| *o = Complex64::new(v.to_f64() + offset, 0.0));
        self.transform(out, true);
    }

    /// In-place transform of a complex volume (forward or unnormalised inverse).
    ///
    /// # Panics
    /// If the shape does not match the plans.
    pub fn transform(&mut self, mut data: ArrayViewMut3<'_, Complex64>, forward: bool) {
        assert_eq!(<[usize; 3]>::from(data.dim()), self.shape, "Fft3d::transform: shape");
        for axis in 0..3 {
            let n = self.shape[axis];
            if n == 1 {
                continue;
            }
            let plan = if forward { &self.fwd[axis] } else { &self.inv[axis] };
            for mut lane in data.lanes_mut(ndarray::Axis(axis)) {
                let line = &mut self.line[..n];
                for (d, s) in line.iter_mut().zip(lane.iter()) {
                    *d = *s;
                }
                plan.process_with_scratch(line, &mut self.scratch);
                for (d, s) in lane.iter_mut().zip(line.iter()) {
                    *d = *s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive_dft(img: &Array2<f64>, k0: usize, k1: usize) -> Complex64 {
        let (h, w) = img.dim();
        let mut acc = Complex64::new(0.0, 0.0);
        for r in 0..h {
            for c in 0..w {
                let ang = -2.0 * std::f64::consts::PI * ((k0 * r) as f64 / h as f64 + (k1 * c) as f64 / w as f64);
                acc += img[[r, c]] * Complex64::from_polar(1.0, ang);
            }
        }
        acc
    }

    #[test]
    fn forward_matches_naive_dft_and_inverse_roundtrips() {
        for &(h, w) in &[(1, 1), (1, 7), (5, 1), (6, 8), (7, 9), (17, 33), (20, 3)] {
            let img = Array2::from_shape_fn((h, w), |(r, c)| {
                ((r * 31 + c * 17) % 13) as f64 - 0.37 * r as f64 + 0.1 * c as f64
            });
            let mut fft = Fft2d::<f64>::new([h, w]);
            let mut spec = Spectrum::zeros([h, w]);
            fft.forward(img.view(), 0.0, &mut spec);
            for k0 in 0..h {
                for k1 in 0..spec.bins() {
                    let d = spec.get(k0, k1) - naive_dft(&img, k0, k1);
                    assert!(d.norm() < 1e-9, "({h},{w}) bin ({k0},{k1}) off by {d}");
                }
            }
            let mut back = Array2::zeros((h, w));
            fft.inverse(&mut spec, back.view_mut());
            for (a, b) in back.iter().zip(img.iter()) {
                assert!((a - b).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn fft3d_roundtrip() {
        let shape = [3, 4, 5];
        let vol = ndarray::Array3::from_shape_fn((3, 4, 5), |(a, b, c)| (a * 7 + b * 3 + c) as f32);
        let mut f = Fft3d::new(shape);
        let mut spec = ndarray::Array3::zeros((3, 4, 5));
        f.forward(vol.view(), 1.0, spec.view_mut());
        assert!((spec[[0, 0, 0]].re - vol.iter().map(|&v| f64::from(v) + 1.0).sum::<f64>()).abs() < 1e-9);
        f.transform(spec.view_mut(), false);
        for (s, &v) in spec.iter().zip(vol.iter()) {
            assert!((s.re / 60.0 - (f64::from(v) + 1.0)).abs() < 1e-9);
        }
    }

    #[test]
    fn signed_freq_matches_numpy() {
        let even: Vec<i64> = (0..6).map(|k| signed_freq(k, 6)).collect();
        assert_eq!(even, [0, 1, 2, -3, -2, -1]);
        let odd: Vec<i64> = (0..5).map(|k| signed_freq(k, 5)).collect();
        assert_eq!(odd, [0, 1, 2, -2, -1]);
    }
}
