//! Spatial high-pass filter for one-photon data (CaImAn's `high_pass_filter_space`, catalog §2.7).
//!
//! Kernel: OpenCV `getGaussianKernel(k, σ)` with `k = 2·⌊3σ/2⌋ + 1` (first axis of `gSig_filt`
//! for both axes, as CaImAn), outer product `g gᵀ`; the entries `≥ max(first column)` form a disk
//! whose mean is subtracted from them, everything else is zeroed (a zero-sum, Mexican-hat-like
//! kernel). Filtering is a correlation with `BORDER_REFLECT` (`fedcba|abcdefgh|hgfedcb`).
//!
//! Precision: CaImAn's `cv2.filter2D` accumulates in float32 (direct form for kernels under 130
//! taps, DFT-based above); here the sum is accumulated in `f64` and rounded once, so outputs agree
//! with CaImAn to float32 rounding of the partial sums (measured ≤ 1e-5 of the image range).
//! The Butterworth variant (`freq`, `order`) is not ported: `MotionCorrect` never uses it.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// OpenCV `getGaussianKernel(n, sigma)` (CV_64F), following its bit-exact construction.
fn gaussian_kernel(n: usize, sigma: f64) -> Vec<f64> {
    let sigma = if sigma > 0.0 { sigma } else { n as f64 * 0.15 + 0.35 };
    let scale2x = -0.125 / (sigma * sigma);
    let n2 = (n - 1) / 2;
    let mut values = Vec::with_capacity(n2);
    let mut sum = 0.0;
    let mut x = 1 - n as i64;
    for _ in 0..n2 {
        let t = ((x * x) as f64 * scale2x).exp();
        values.push(t);
        sum += t;
        x += 2;
    }
    sum *= 2.0;
    sum += 1.0;
    if n.is_multiple_of(2) {
        sum += 1.0;
    }
    let mul1 = 1.0 / sum;
    let mut out = vec![0.0; n];
    for (i, v) in values.iter().enumerate() {
        out[i] = v * mul1;
        out[n - 1 - i] = v * mul1;
    }
    out[n2] = mul1;
    if n.is_multiple_of(2) {
        out[n2 + 1] = mul1;
    }
    out
}

/// The 2-D high-pass kernel CaImAn builds for `gSig_filt` (float64, `k × k`).
pub fn high_pass_kernel(gsig_filt: [u32; 2]) -> Array2<f64> {
    let sigma = f64::from(gsig_filt[0]);
    let k = (3 * gsig_filt[0] as usize) / 2 * 2 + 1;
    let g = gaussian_kernel(k, sigma);
    let mut ker = Array2::from_shape_fn((k, k), |(i, j)| g[i] * g[j]);
    let thr = ker.column(0).iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut sum, mut cnt) = (0.0, 0usize);
    for &v in ker.iter() {
        if v >= thr {
            sum += v;
            cnt += 1;
        }
    }
    let mean = sum / cnt as f64;
    ker.mapv_inplace(|v| if v >= thr { v - mean } else { 0.0 });
    ker
}

/// A high-pass filter with its kernel and scratch, reusable across frames without allocation.
#[derive(Clone, Debug)]
pub struct HighPassFilter {
    /// Non-zero taps: `(row offset, column offset, weight as float32)`; OpenCV filters float32
    /// images with a float32 copy of the kernel.
    taps: Vec<(usize, usize, f64)>,
    radius: usize,
    padded: Vec<f32>,
    acc: Vec<f64>,
}

impl HighPassFilter {
    /// The filter for CaImAn's `gSig_filt` (only the first entry is used, as CaImAn does).
    ///
    /// # Panics
    /// If `gsig_filt[0]` is zero.
    pub fn new(gsig_filt: [u32; 2]) -> Self {
        assert!(gsig_filt[0] > 0, "gSig_filt must be positive");
        let ker = high_pass_kernel(gsig_filt);
        let k = ker.nrows();
        let taps =
            ker.indexed_iter().filter(|(_, v)| **v != 0.0).map(|((i, j), &v)| (i, j, f64::from(v as f32))).collect();
        Self { taps, radius: k / 2, padded: Vec::new(), acc: Vec::new() }
    }

    /// Filters `img` into `out` (`cv2.filter2D(img, -1, kernel, BORDER_REFLECT)`).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn apply(&mut self, img: ArrayView2<'_, f32>, mut out: ArrayViewMut2<'_, f32>) {
        assert_eq!(img.dim(), out.dim(), "HighPassFilter::apply: shape mismatch");
        let (h, w) = img.dim();
        if h == 0 || w == 0 {
            return;
        }
        let r = self.radius;
        let (ph, pw) = (h + 2 * r, w + 2 * r);
        self.padded.resize(ph * pw, 0.0);
        let reflect = |p: i64, n: i64| -> usize {
            let mut p = p;
            if n == 1 {
                return 0;
            }
            while !(0..n).contains(&p) {
                p = if p < 0 { -p - 1 } else { 2 * n - p - 1 };
            }
            p as usize
        };
        for pr in 0..ph {
            let sr = reflect(pr as i64 - r as i64, h as i64);
            let src = img.row(sr);
            let dst = &mut self.padded[pr * pw..(pr + 1) * pw];
            for (pc, d) in dst.iter_mut().enumerate() {
                *d = src[reflect(pc as i64 - r as i64, w as i64)];
            }
        }
        self.acc.resize(w, 0.0);
        for y in 0..h {
            self.acc.fill(0.0);
            for &(dy, dx, k) in &self.taps {
                let row = &self.padded[(y + dy) * pw + dx..(y + dy) * pw + dx + w];
                for (a, &v) in self.acc.iter_mut().zip(row) {
                    *a += k * f64::from(v);
                }
            }
            for (o, &a) in out.row_mut(y).iter_mut().zip(&self.acc) {
                *o = a as f32;
            }
        }
    }
}

/// One-shot `high_pass_filter_space(img, gSig_filt)`.
pub fn high_pass_filter_space(img: ArrayView2<'_, f32>, gsig_filt: [u32; 2]) -> Array2<f32> {
    let mut out = Array2::zeros(img.dim());
    HighPassFilter::new(gsig_filt).apply(img, out.view_mut());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_kernel_is_normalised_and_symmetric() {
        for n in [3, 9, 15, 4] {
            let g = gaussian_kernel(n, 2.0);
            assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for i in 0..n {
                assert_eq!(g[i], g[n - 1 - i]);
            }
        }
    }

    #[test]
    fn kernel_sums_to_zero() {
        let k = high_pass_kernel([3, 3]);
        assert_eq!(k.dim(), (9, 9));
        assert!(k.sum().abs() < 1e-15);
    }
}
