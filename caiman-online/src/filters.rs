//! Whole-image kernels of OnACID, on planar images stored in Fortran pixel order
//! (`p = i + d1·j`, each column of `d1` pixels contiguous): separable Gaussian and box filters
//! with OpenCV's kernels and border modes, the square maximum filter and `peak_local_max`, and
//! OpenCV-style resizing (`INTER_AREA` down, `INTER_LINEAR` up).
//!
//! The per-frame detection work runs in `detect.rs` (fused strip passes); the Gaussian here blurs
//! the initial buffers and the windows around new components, and the box filter, maximum filter
//! and `peak_local_max` are the whole-image references those passes are tested against.
//!
//! Every filter writes into caller buffers and keeps its scratch, so nothing is allocated per
//! frame. Arithmetic is `f32` (OpenCV filters `float32` images in `float32`); the inner loops run
//! over contiguous slices so that they vectorise.

/// OpenCV `getGaussianKernel(n, sigma)`: taps `exp(−x²/(2σ²))`, `x = −(n−1)/2 … (n−1)/2`,
/// normalised to sum 1 (computed in f64, stored as f32 as OpenCV does for `CV_32F`).
pub(crate) fn gaussian_kernel(n: usize, sigma: f64) -> Vec<f32> {
    let half = (n as f64 - 1.0) / 2.0;
    let taps: Vec<f64> = (0..n).map(|i| (-(i as f64 - half).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = taps.iter().sum();
    taps.into_iter().map(|v| (v / s) as f32).collect()
}

/// How a filter sees pixels outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Border {
    /// Zero outside (OpenCV `BORDER_CONSTANT`).
    Zero,
    /// Nearest edge pixel (OpenCV `BORDER_REPLICATE`, scipy `mode='nearest'`); the detection
    /// passes implement it themselves, this is their reference in tests.
    #[cfg_attr(not(test), allow(dead_code))]
    Replicate,
}

/// Separable correlation of `d1 × d2` Fortran-order images with an odd kernel along the rows
/// (axis 0) and one along the columns (axis 1).
#[derive(Clone, Debug)]
pub(crate) struct Separable {
    d1: usize,
    d2: usize,
    k0: Vec<f32>,
    k1: Vec<f32>,
    border: Border,
    pad: Vec<f32>,
    tmp: Vec<f32>,
    /// A box filter (equal taps): computed with running sums in O(1) per pixel.
    boxed: bool,
    acc: Vec<f32>,
}

impl Separable {
    /// `k0` acts along axis 0 (rows, OpenCV's `y`), `k1` along axis 1 (columns, OpenCV's `x`).
    ///
    /// # Panics
    /// If a kernel is empty or of even length (callers build odd kernels).
    pub(crate) fn new(d1: usize, d2: usize, k0: Vec<f32>, k1: Vec<f32>, border: Border) -> Self {
        assert!(k0.len() % 2 == 1 && k1.len() % 2 == 1, "kernels must have odd length");
        let h0 = k0.len() / 2;
        Separable {
            d1,
            d2,
            pad: vec![0.0; d1 + 2 * h0],
            tmp: vec![0.0; d1 * d2],
            k0,
            k1,
            border,
            boxed: false,
            acc: Vec::new(),
        }
    }

    /// OpenCV `GaussianBlur(img, ksize=(siz[0], siz[1]), sigmaX=sig[0], sigmaY=sig[1])`: OpenCV
    /// reads `ksize` as (width, height), so `siz[0]`/`sig[0]` act along the columns (axis 1).
    pub(crate) fn gaussian(d1: usize, d2: usize, sig: [f64; 2], siz: [usize; 2], border: Border) -> Self {
        Self::new(d1, d2, gaussian_kernel(siz[1], sig[1]), gaussian_kernel(siz[0], sig[0]), border)
    }

    /// OpenCV `boxFilter(img, -1, ksize=(siz[0], siz[1]))` (normalised: the window mean); the
    /// reference for the detection passes' box filter (tests).
    #[cfg(test)]
    pub(crate) fn boxcar(d1: usize, d2: usize, siz: [usize; 2], border: Border) -> Self {
        let k0 = vec![1.0 / siz[1] as f32; siz[1]];
        let k1 = vec![1.0 / siz[0] as f32; siz[0]];
        let mut s = Self::new(d1, d2, k0, k1, border);
        s.boxed = true;
        s.acc = vec![0.0; d1];
        s
    }

    /// The box filter by running sums: along each column in f64, then across columns as a running
    /// sum of whole columns (f32; the rounding drift over a frame is far below the score's
    /// resolution that matters, the ranking of peaks).
    fn apply_box(&mut self, src: &[f32], dst: &mut [f32]) {
        let (d1, d2) = (self.d1, self.d2);
        let (n0, n1) = (self.k0.len(), self.k1.len());
        let (h0, h1) = (n0 / 2, n1 / 2);
        let (w0, w1) = (self.k0[0], self.k1[0]);
        let at = |col: &[f32], i: isize, n: usize, border: Border| -> f32 {
            if i < 0 || i >= n as isize {
                match border {
                    Border::Zero => 0.0,
                    Border::Replicate => col[i.clamp(0, n as isize - 1) as usize],
                }
            } else {
                col[i as usize]
            }
        };
        for j in 0..d2 {
            let col = &src[j * d1..(j + 1) * d1];
            let out = &mut self.tmp[j * d1..(j + 1) * d1];
            let mut s: f64 = (-(h0 as isize)..=h0 as isize).map(|i| f64::from(at(col, i, d1, self.border))).sum();
            for (i, o) in out.iter_mut().enumerate() {
                *o = (s as f32) * w0;
                let ii = i as isize;
                s += f64::from(at(col, ii + h0 as isize + 1, d1, self.border))
                    - f64::from(at(col, ii - h0 as isize, d1, self.border));
            }
        }
        // Axis 1: running sum of whole columns.
        let acc = &mut self.acc;
        acc.fill(0.0);
        let colj = |jj: isize| -> Option<usize> {
            if jj < 0 || jj >= d2 as isize {
                match self.border {
                    Border::Zero => None,
                    Border::Replicate => Some(jj.clamp(0, d2 as isize - 1) as usize),
                }
            } else {
                Some(jj as usize)
            }
        };
        for jj in -(h1 as isize)..=h1 as isize {
            if let Some(c) = colj(jj) {
                acc.iter_mut().zip(&self.tmp[c * d1..(c + 1) * d1]).for_each(|(a, &v)| *a += v);
            }
        }
        for j in 0..d2 {
            dst[j * d1..(j + 1) * d1].iter_mut().zip(acc.iter()).for_each(|(o, &a)| *o = a * w1);
            let (add, sub) = (colj(j as isize + h1 as isize + 1), colj(j as isize - h1 as isize));
            if let Some(c) = add {
                acc.iter_mut().zip(&self.tmp[c * d1..(c + 1) * d1]).for_each(|(a, &v)| *a += v);
            }
            if let Some(c) = sub {
                acc.iter_mut().zip(&self.tmp[c * d1..(c + 1) * d1]).for_each(|(a, &v)| *a -= v);
            }
        }
    }

    /// `dst = filter(src)`; `src`, `dst` hold `d1·d2` values.
    pub(crate) fn apply(&mut self, src: &[f32], dst: &mut [f32]) {
        if self.boxed {
            self.apply_box(src, dst);
            return;
        }
        let (d1, d2) = (self.d1, self.d2);
        debug_assert!(src.len() == d1 * d2 && dst.len() == d1 * d2);
        let h0 = self.k0.len() / 2;
        // Axis 0: along each contiguous column.
        for j in 0..d2 {
            let col = &src[j * d1..(j + 1) * d1];
            self.pad[h0..h0 + d1].copy_from_slice(col);
            let (lo, hi) = match self.border {
                Border::Zero => (0.0, 0.0),
                Border::Replicate => (col[0], col[d1 - 1]),
            };
            self.pad[..h0].fill(lo);
            self.pad[h0 + d1..].fill(hi);
            let out = &mut self.tmp[j * d1..(j + 1) * d1];
            out.fill(0.0);
            for (k, &w) in self.k0.iter().enumerate() {
                let shifted = &self.pad[k..k + d1];
                out.iter_mut().zip(shifted).for_each(|(o, &v)| *o += w * v);
            }
        }
        // Axis 1: whole columns combined.
        let h1 = self.k1.len() / 2;
        for j in 0..d2 {
            let out = &mut dst[j * d1..(j + 1) * d1];
            out.fill(0.0);
            for (k, &w) in self.k1.iter().enumerate() {
                let jj = j as isize + k as isize - h1 as isize;
                let jj = if jj < 0 || jj >= d2 as isize {
                    match self.border {
                        Border::Zero => continue,
                        Border::Replicate => jj.clamp(0, d2 as isize - 1) as usize,
                    }
                } else {
                    jj as usize
                };
                let col = &self.tmp[jj * d1..(jj + 1) * d1];
                out.iter_mut().zip(col).for_each(|(o, &v)| *o += w * v);
            }
        }
    }
}

/// Square maximum filter of half-width `r` (window `2r+1`) with a constant-0 border (scipy
/// `maximum_filter(mode='constant')`), Fortran order; the reference for the detection passes
/// (tests).
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct MaxFilter {
    d1: usize,
    d2: usize,
    r: usize,
    pad: Vec<f32>,
    tmp: Vec<f32>,
}

#[cfg(test)]
impl MaxFilter {
    pub(crate) fn new(d1: usize, d2: usize, r: usize) -> Self {
        MaxFilter { d1, d2, r, pad: vec![0.0; d1 + 2 * r], tmp: vec![0.0; d1 * d2] }
    }

    pub(crate) fn apply(&mut self, src: &[f32], dst: &mut [f32]) {
        let (d1, d2, r) = (self.d1, self.d2, self.r);
        // Axis 0: shifted maxima over a zero-padded column (the constant-0 border).
        for j in 0..d2 {
            self.pad[r..r + d1].copy_from_slice(&src[j * d1..(j + 1) * d1]);
            let out = &mut self.tmp[j * d1..(j + 1) * d1];
            out.copy_from_slice(&self.pad[..d1]);
            for k in 1..=2 * r {
                out.iter_mut().zip(&self.pad[k..k + d1]).for_each(|(o, &v)| *o = o.max(v));
            }
        }
        // Axis 1: maxima of whole columns; columns outside the image are 0.
        for j in 0..d2 {
            let out = &mut dst[j * d1..(j + 1) * d1];
            let (lo, hi) = (j.saturating_sub(r), (j + r).min(d2 - 1));
            out.copy_from_slice(&self.tmp[lo * d1..(lo + 1) * d1]);
            for jj in lo + 1..=hi {
                out.iter_mut().zip(&self.tmp[jj * d1..(jj + 1) * d1]).for_each(|(o, &v)| *o = o.max(v));
            }
            if j < r || j + r >= d2 {
                out.iter_mut().for_each(|o| *o = o.max(0.0));
            }
        }
    }
}

/// CaImAn's `peak_local_max(img, min_distance, num_peaks, threshold_abs, exclude_border=False)`
/// given the maximum-filtered image `maxed`: pixels equal to their neighbourhood maximum and
/// strictly above `threshold`, by decreasing value (ties by pixel index), at most `num_peaks`.
/// Returns `(row, col)` pairs.
#[cfg(test)]
pub(crate) fn peak_local_max(
    img: &[f32],
    maxed: &[f32],
    d1: usize,
    threshold: f32,
    num_peaks: usize,
    out: &mut Vec<(usize, usize)>,
) {
    out.clear();
    if num_peaks == 0 {
        return;
    }
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(num_peaks + 1);
    for (p, (&v, &m)) in img.iter().zip(maxed).enumerate() {
        if v > threshold && v == m {
            if best.len() == num_peaks && v <= best[num_peaks - 1].0 {
                continue;
            }
            let pos = best.partition_point(|&(b, _)| b >= v);
            best.insert(pos, (v, p));
            best.truncate(num_peaks);
        }
    }
    out.extend(best.into_iter().map(|(_, p)| (p % d1, p / d1)));
}

/// One axis of OpenCV's `INTER_AREA` downscaling from `n` to `m ≤ n` samples: for every output
/// sample, the `(source index, weight)` pairs (weights are the overlaps of the source cells with
/// the output cell, divided by the scale, so they sum to 1).
pub(crate) fn area_weights(n: usize, m: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|o| {
            let (a, b) = (o as f64 * scale, (o as f64 + 1.0) * scale);
            let mut w = Vec::new();
            let mut s = a.floor() as usize;
            while (s as f64) < b && s < n {
                let lo = a.max(s as f64);
                let hi = b.min(s as f64 + 1.0);
                if hi > lo {
                    w.push((s, (hi - lo) / scale));
                }
                s += 1;
            }
            w
        })
        .collect()
}

/// One axis of OpenCV's `INTER_LINEAR` resize from `n` to `m` samples (half-pixel centres, edge
/// clamp): `(i0, i1, w1)` with `out = (1 − w1)·x[i0] + w1·x[i1]`.
pub(crate) fn linear_weights(n: usize, m: usize) -> Vec<(usize, usize, f64)> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|o| {
            let x = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (x.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, if i1 == i0 { 0.0 } else { x - i0 as f64 })
        })
        .collect()
}

/// Resizes a Fortran-order `d1 × d2` image with per-axis weight lists (rows then columns).
pub(crate) fn resize_area(src: &[f32], d1: usize, w0: &[Vec<(usize, f64)>], w1: &[Vec<(usize, f64)>], dst: &mut [f32]) {
    let m1 = w0.len();
    for (jo, wj) in w1.iter().enumerate() {
        for (io, wi) in w0.iter().enumerate() {
            let mut acc = 0.0f64;
            for &(j, a) in wj {
                for &(i, b) in wi {
                    acc += a * b * f64::from(src[i + d1 * j]);
                }
            }
            dst[io + m1 * jo] = acc as f32;
        }
    }
}

/// Bilinear resize of a Fortran-order `d1 × d2` image (see [`linear_weights`]).
pub(crate) fn resize_linear(
    src: &[f32],
    d1: usize,
    w0: &[(usize, usize, f64)],
    w1: &[(usize, usize, f64)],
    dst: &mut [f32],
) {
    let m1 = w0.len();
    for (jo, &(j0, j1, b)) in w1.iter().enumerate() {
        for (io, &(i0, i1, a)) in w0.iter().enumerate() {
            let v = |i: usize, j: usize| f64::from(src[i + d1 * j]);
            let top = (1.0 - a) * v(i0, j0) + a * v(i1, j0);
            let bot = (1.0 - a) * v(i0, j1) + a * v(i1, j1);
            dst[io + m1 * jo] = ((1.0 - b) * top + b * bot) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 2-D correlation with explicit border handling (the definition).
    fn direct(src: &[f32], d1: usize, d2: usize, k0: &[f32], k1: &[f32], border: Border) -> Vec<f32> {
        let (h0, h1) = (k0.len() as isize / 2, k1.len() as isize / 2);
        let mut out = vec![0f32; d1 * d2];
        for j in 0..d2 as isize {
            for i in 0..d1 as isize {
                let mut acc = 0f64;
                for (a, &w0) in k0.iter().enumerate() {
                    for (b, &w1) in k1.iter().enumerate() {
                        let (mut ii, mut jj) = (i + a as isize - h0, j + b as isize - h1);
                        if ii < 0 || jj < 0 || ii >= d1 as isize || jj >= d2 as isize {
                            match border {
                                Border::Zero => continue,
                                Border::Replicate => {
                                    ii = ii.clamp(0, d1 as isize - 1);
                                    jj = jj.clamp(0, d2 as isize - 1);
                                }
                            }
                        }
                        acc += f64::from(w0 * w1) * f64::from(src[ii as usize + d1 * jj as usize]);
                    }
                }
                out[i as usize + d1 * j as usize] = acc as f32;
            }
        }
        out
    }

    fn image(d1: usize, d2: usize) -> Vec<f32> {
        (0..d1 * d2).map(|p| ((p * 7919 % 101) as f32 - 40.0) * 0.1).collect()
    }

    #[test]
    fn separable_filters_equal_the_direct_2d_correlation() {
        let (d1, d2) = (13, 9);
        let src = image(d1, d2);
        for border in [Border::Zero, Border::Replicate] {
            let mut g = Separable::gaussian(d1, d2, [2.0, 1.5], [5, 7], border);
            let mut out = vec![0f32; d1 * d2];
            g.apply(&src, &mut out);
            let want = direct(&src, d1, d2, &gaussian_kernel(7, 1.5), &gaussian_kernel(5, 2.0), border);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        for border in [Border::Zero, Border::Replicate] {
            let mut b = Separable::boxcar(d1, d2, [5, 3], border);
            let mut out = vec![0f32; d1 * d2];
            b.apply(&src, &mut out);
            let want = direct(&src, d1, d2, &[1.0 / 3.0; 3], &[0.2; 5], border);
            for (a, w) in out.iter().zip(&want) {
                assert!((a - w).abs() < 1e-4, "box {a} vs {w}");
            }
        }
        let k = gaussian_kernel(9, 4.0);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((k[4] / k[0] - (16.0f32 / 32.0).exp()).abs() < 1e-5);
    }

    #[test]
    fn max_filter_and_peaks_follow_scipy_semantics() {
        let (d1, d2) = (8, 6);
        let mut img = vec![-1f32; d1 * d2];
        img[2 + d1 * 2] = 5.0;
        img[3 + d1 * 2] = 4.0; // neighbour of the 5: not a peak
        img[7 + d1 * 5] = 3.0; // corner peak
        img[0] = -0.5; // negative: never a peak (threshold 0)
        let mut m = MaxFilter::new(d1, d2, 1);
        let mut maxed = vec![0f32; d1 * d2];
        m.apply(&img, &mut maxed);
        assert_eq!(maxed[0], 0.0, "constant-0 border");
        let mut peaks = Vec::new();
        peak_local_max(&img, &maxed, d1, 0.0, 5, &mut peaks);
        assert_eq!(peaks, vec![(2, 2), (7, 5)]);
        peak_local_max(&img, &maxed, d1, 0.0, 1, &mut peaks);
        assert_eq!(peaks, vec![(2, 2)]);
    }

    #[test]
    fn area_resize_of_an_integer_factor_is_the_block_mean() {
        let (d1, d2) = (6, 4);
        let src = image(d1, d2);
        let (w0, w1) = (area_weights(6, 3), area_weights(4, 2));
        let mut dst = vec![0f32; 6];
        resize_area(&src, d1, &w0, &w1, &mut dst);
        let want = (src[0] + src[1] + src[d1] + src[d1 + 1]) / 4.0;
        assert!((dst[0] - want).abs() < 1e-6);
        let frac = area_weights(5, 2);
        assert!(frac.iter().all(|w| (w.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12));
        let lin = linear_weights(2, 4);
        assert_eq!(lin[0], (0, 1, 0.0));
        assert_eq!(lin[1], (0, 1, 0.25));
    }
}
