//! Applying sub-pixel shifts to a frame (catalog §2.5): OpenCV-exact cubic translation
//! (`apply_shift_iteration`), OpenCV-exact cubic remap of a dense shift field (the piecewise-rigid
//! path), Fourier shifts (`apply_shifts_dft`), and CaImAn's border fix-ups.
//!
//! **Convention.** Every function here takes the shift *to apply* (CaImAn's stored shifts, `−s`
//! of [`crate::register::Registration`]): content moves by `+shift`, `dst(p) = src(p − shift)`.
//!
//! **OpenCV emulation.** `cv2.warpAffine` and `cv2.remap` with `INTER_CUBIC` do not evaluate the
//! Keys kernel (a = −0.75) at the exact fractional position: coordinates are quantised to 1/32
//! pixel (`INTER_BITS = 5`; warpAffine through 1/1024 fixed point, remap by rounding the float
//! map ×32 half-to-even) and the 4 × 4 weights come from a float32 table. This module reproduces
//! that bit for bit (verified against CaImAn's outputs to ~1e-15 relative), including the
//! summation order of the interior and border code paths, for `f64` images as CaImAn passes them.
//! Borders: `BORDER_REFLECT` is `fedcba|abcdefgh|hgfedcb`, `BORDER_REPLICATE` repeats the edge,
//! `BORDER_CONSTANT` uses a value (NaN included, which makes every pixel whose 4 × 4 support
//! leaves the image NaN).

use std::sync::OnceLock;

use ndarray::{ArrayView2, ArrayViewMut2};
use rustfft::num_complex::Complex64;

use crate::fft::{Fft2d, Real, Sample, Spectrum, signed_freq};

/// How the margin that a shift uncovers is filled (CaImAn's `border_nan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BorderMode {
    /// `'copy'` (CaImAn's default): replicate the nearest valid row/column into the margin
    /// (remap path: `BORDER_REPLICATE`).
    #[default]
    Copy,
    /// `True`: NaN in the margin (remap path: constant NaN).
    Nan,
    /// `'min'`: the frame minimum in the margin (remap path: constant `min(frame)`).
    Min,
    /// `False`: no fix-up (reflected values after the cubic warp, wrap-around after a Fourier
    /// shift, 0 after remap).
    None,
}

/// OpenCV's border handling inside the cubic interpolation kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CvBorder {
    Reflect,
    Replicate,
    Constant(f64),
}

impl CvBorder {
    /// OpenCV's border for a remap in CaImAn's `border` mode; `lo` is the image minimum and
    /// `has_nan` whether the image holds NaN (`np.min` propagates NaN).
    fn for_remap(border: BorderMode, lo: f64, has_nan: bool) -> Self {
        match border {
            BorderMode::Copy => CvBorder::Replicate,
            BorderMode::Nan => CvBorder::Constant(f64::NAN),
            BorderMode::Min => CvBorder::Constant(if has_nan { f64::NAN } else { lo }),
            BorderMode::None => CvBorder::Constant(0.0),
        }
    }
}

/// OpenCV `interpolateCubic` in float32 arithmetic.
fn cubic_coeffs(x: f32) -> [f32; 4] {
    let a = -0.75f32;
    let c0 = ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a;
    let c1 = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let c2 = ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    let c3 = 1.0 - c0 - c1 - c2;
    [c0, c1, c2, c3]
}

/// OpenCV's `BicubicTab_f`: 32 × 32 fractional positions × 16 float32 weights.
fn cubic_table_f32() -> &'static [[f32; 16]] {
    static TAB: OnceLock<Vec<[f32; 16]>> = OnceLock::new();
    TAB.get_or_init(|| {
        let one_d: Vec<[f32; 4]> = (0..32).map(|i| cubic_coeffs(i as f32 * (1.0 / 32.0))).collect();
        let mut tab = Vec::with_capacity(1024);
        for vy in &one_d {
            for vx in &one_d {
                let mut w = [0f32; 16];
                for k1 in 0..4 {
                    for k2 in 0..4 {
                        w[k1 * 4 + k2] = vy[k1] * vx[k2];
                    }
                }
                tab.push(w);
            }
        }
        tab
    })
}

/// OpenCV's 1-D cubic weights at the 32 fractional positions (`f32`).
fn cubic_table_1d() -> &'static [[f32; 4]; 32] {
    static TAB: OnceLock<[[f32; 4]; 32]> = OnceLock::new();
    TAB.get_or_init(|| std::array::from_fn(|i| cubic_coeffs(i as f32 * (1.0 / 32.0))))
}

/// [`cubic_table_f32`] widened to `f64`, exactly, since every use of the exact path multiplies
/// the weights with `f64` pixels.
fn cubic_table() -> &'static [[f64; 16]] {
    static TAB: OnceLock<Vec<[f64; 16]>> = OnceLock::new();
    TAB.get_or_init(|| cubic_table_f32().iter().map(|w| w.map(f64::from)).collect())
}

/// OpenCV `borderInterpolate`; `None` means "outside, use the constant".
#[inline]
fn border_index(p: i64, len: i64, border: CvBorder) -> Option<i64> {
    if (0..len).contains(&p) {
        return Some(p);
    }
    match border {
        CvBorder::Replicate => Some(if p < 0 { 0 } else { len - 1 }),
        CvBorder::Reflect => {
            if len == 1 {
                return Some(0);
            }
            let mut p = p;
            loop {
                if p < 0 {
                    p = -p - 1;
                } else {
                    p = len - 1 - (p - len);
                }
                if (0..len).contains(&p) {
                    return Some(p);
                }
            }
        }
        CvBorder::Constant(_) => None,
    }
}

/// One output pixel of OpenCV's `remapBicubic` for `f64` images (`f32` weights, `f64` sums).
/// `(sx, sy)` is the top-left tap, `src` a contiguous `h × w` image.
#[inline]
fn bicubic_pixel<T: Real>(src: &[T], h: usize, w: usize, sx: i64, sy: i64, wt: &[T; 16], border: CvBorder) -> T {
    let (hi, wi) = (h as i64, w as i64);
    if sx >= 0 && sx < (wi - 3).max(0) && sy >= 0 && sy < (hi - 3).max(0) {
        let (sx, sy) = (sx as usize, sy as usize);
        let r = |k: usize| &src[(sy + k) * w + sx..(sy + k) * w + sx + 4];
        let w = |k: usize| wt[k];
        let (s0, s1, s2, s3) = (r(0), r(1), r(2), r(3));
        let mut sum = s0[0] * w(0) + s0[1] * w(1) + s0[2] * w(2) + s0[3] * w(3);
        sum = sum + (s1[0] * w(4) + s1[1] * w(5) + s1[2] * w(6) + s1[3] * w(7));
        sum = sum + (s2[0] * w(8) + s2[1] * w(9) + s2[2] * w(10) + s2[3] * w(11));
        sum = sum + (s3[0] * w(12) + s3[1] * w(13) + s3[2] * w(14) + s3[3] * w(15));
        return sum;
    }
    let cv = match border {
        CvBorder::Constant(v) => {
            if sx >= wi || sx + 4 <= 0 || sy >= hi || sy + 4 <= 0 {
                return T::of(v);
            }
            T::of(v)
        }
        _ => T::zero(),
    };
    let xs: [Option<i64>; 4] = std::array::from_fn(|i| border_index(sx + i as i64, wi, border));
    let mut sum = cv;
    for i in 0..4 {
        let Some(yi) = border_index(sy + i as i64, hi, border) else { continue };
        let row = &src[yi as usize * w..(yi as usize + 1) * w];
        for (j, x) in xs.iter().enumerate() {
            if let Some(x) = x {
                sum = sum + (row[*x as usize] - cv) * wt[i * 4 + j];
            }
        }
    }
    sum
}

/// OpenCV's interior bicubic sum (`remapBicubic` fast path) for `out.len()` consecutive output
/// pixels whose 4 × 4 support starts at row `sy`, columns `base + i`, with one weight set:
/// `((row0 + row1) + row2) + row3`, each row `((s0 w0 + s1 w1) + s2 w2) + s3 w3`.
#[inline(always)]
fn interior_row_body(src: &[f64], w: usize, sy: usize, base: usize, wt: &[f64; 16], out: &mut [f64]) {
    let n = out.len();
    let wf = *wt;
    let row = |k: usize| &src[(sy + k) * w + base..(sy + k) * w + base + n + 3];
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    let tap = |r: &[f64], i: usize, o: usize| {
        r[i] * wf[o] + r[i + 1] * wf[o + 1] + r[i + 2] * wf[o + 2] + r[i + 3] * wf[o + 3]
    };
    for (i, o) in out.iter_mut().enumerate() {
        let mut sum = tap(r0, i, 0);
        sum += tap(r1, i, 4);
        sum += tap(r2, i, 8);
        sum += tap(r3, i, 12);
        *o = sum;
    }
}

/// [`interior_row_body`] compiled for AVX (no FMA: identical results), selected at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn interior_row_avx(src: &[f64], w: usize, sy: usize, base: usize, wt: &[f64; 16], out: &mut [f64]) {
    interior_row_body(src, w, sy, base, wt, out);
}

fn interior_row(src: &[f64], w: usize, sy: usize, base: usize, wt: &[f64; 16], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above).
        unsafe { interior_row_avx(src, w, sy, base, wt, out) };
        return;
    }
    interior_row_body(src, w, sy, base, wt, out);
}

/// One interior bicubic pixel (all taps inside), same summation order as [`interior_row_body`].
#[inline(always)]
fn interior_pixel(src: &[f64], w: usize, sx: usize, sy: usize, wt: &[f64; 16]) -> f64 {
    let o = sy * w + sx;
    let r = |k: usize| -> &[f64] { &src[o + k * w..o + k * w + 4] };
    let t = |r: &[f64], k: usize| r[0] * wt[k] + r[1] * wt[k + 1] + r[2] * wt[k + 2] + r[3] * wt[k + 3];
    let mut sum = t(r(0), 0);
    sum += t(r(1), 4);
    sum += t(r(2), 8);
    sum += t(r(3), 12);
    sum
}

/// Round half to even of a float32 (`cvRound`), without a libm call on targets lacking
/// SSE4.1: the 1.5·2²³ trick is exact for |x| < 2²², the rest falls back.
#[inline(always)]
fn round_even_f32(x: f32) -> i64 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 { ((x + MAGIC) - MAGIC) as i64 } else { x.round_ties_even() as i64 }
}

/// `cvRound`: round half to even, as SSE2 conversions do.
#[inline]
fn cv_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// Copies `src + offset` into a contiguous `f64` buffer; returns `(nanmin, nanmax, any NaN)`.
fn load_f64<T: Sample>(src: ArrayView2<'_, T>, offset: f64, buf: &mut Vec<f64>) -> (f64, f64, bool) {
    buf.clear();
    buf.reserve(src.len());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut nan = false;
    let mut push = |v: T| {
        let v = v.to_f64() + offset;
        nan |= v.is_nan();
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        buf.push(v);
    };
    match src.as_slice() {
        Some(sl) => sl.iter().for_each(|&v| push(v)),
        None => src.rows().into_iter().for_each(|r| r.iter().for_each(|&v| push(v))),
    }
    if lo > hi { (f64::NAN, f64::NAN, nan) } else { (lo, hi, nan) }
}

/// CaImAn's border fix-up after a rigid shift (`apply_shift_iteration` / `apply_shifts_dft`):
/// rows `[:ceil(max(0, sy))]`, `[floor(min(0, sy)):]` and the analogous columns are filled
/// according to `mode` (`min_value` for [`BorderMode::Min`]). Margins at least as large as the
/// image are clamped (CaImAn would raise an `IndexError` for `'copy'`; here nothing is copied).
pub fn fix_border<T: Real>(mut img: ArrayViewMut2<'_, T>, shift: [f64; 2], mode: BorderMode, min_value: T) {
    let (h, w) = img.dim();
    let max_h = shift[0].max(0.0).ceil() as usize;
    let min_h = (-shift[0].min(0.0).floor()) as usize; // number of rows at the end
    let max_w = shift[1].max(0.0).ceil() as usize;
    let min_w = (-shift[1].min(0.0).floor()) as usize;
    let fill = match mode {
        BorderMode::None => return,
        BorderMode::Nan => Some(T::nan()),
        BorderMode::Min => Some(min_value),
        BorderMode::Copy => None,
    };
    if let Some(v) = fill {
        for r in 0..h {
            let whole = r < max_h || r + min_h >= h;
            let mut row = img.row_mut(r);
            if whole {
                row.fill(v);
            } else {
                for c in (0..max_w.min(w)).chain(w.saturating_sub(min_w)..w) {
                    row[c] = v;
                }
            }
        }
        return;
    }
    if max_h > 0 && max_h < h {
        for r in 0..max_h {
            for c in 0..w {
                img[[r, c]] = img[[max_h, c]];
            }
        }
    }
    if min_h > 0 && min_h < h {
        for r in h - min_h..h {
            for c in 0..w {
                img[[r, c]] = img[[h - min_h - 1, c]];
            }
        }
    }
    for mut row in img.rows_mut() {
        if max_w > 0 && max_w < w {
            let v = row[max_w];
            for c in 0..max_w {
                row[c] = v;
            }
        }
        if min_w > 0 && min_w < w {
            let v = row[w - min_w - 1];
            for c in w - min_w..w {
                row[c] = v;
            }
        }
    }
}

/// Scratch for the OpenCV-exact cubic warps; reuse one per worker to avoid per-frame allocation.
#[derive(Debug, Default)]
pub struct CubicWarper {
    src: Vec<f64>,
    out: Vec<f64>,
    src32: Vec<f32>,
    tmp32: Vec<f32>,
}

/// Copies `src + offset` into a contiguous `f32` buffer; returns `(nanmin, nanmax, any NaN)`.
fn load_f32(src: ArrayView2<'_, f32>, offset: f64, buf: &mut Vec<f32>) -> (f32, f32, bool) {
    buf.clear();
    buf.reserve(src.len());
    let off = offset as f32;
    match src.as_slice() {
        Some(sl) => buf.extend(sl.iter().map(|&v| v + off)),
        None => src.rows().into_iter().for_each(|r| buf.extend(r.iter().map(|&v| v + off))),
    }
    // Eight independent lanes (vectorisable); `min`/`max` ignore NaN, which is tracked apart.
    let (mut lo, mut hi, mut nan) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8], false);
    let chunks = buf.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
            nan |= c[k].is_nan();
        }
    }
    for &v in rest {
        lo[0] = lo[0].min(v);
        hi[0] = hi[0].max(v);
        nan |= v.is_nan();
    }
    let lo = lo.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if lo > hi { (f32::NAN, f32::NAN, nan) } else { (lo, hi, nan) }
}

/// One pass of the separable cubic filter of the fast translation along a contiguous line:
/// `out[x] = Σ_j w[j] · line[reflect(x + o + j)]`.
#[inline(always)]
fn filter_line_body(line: &[f32], o: i64, w: &[f32; 4], out: &mut [f32]) {
    let n = line.len() as i64;
    let lo = (-o).clamp(0, n) as usize;
    let hi = (n - 3 - o).clamp(lo as i64, n) as usize;
    let tap = |x: usize| -> f32 {
        let mut s = 0.0f32;
        for (j, &wj) in w.iter().enumerate() {
            let p = border_index(x as i64 + o + j as i64, n, CvBorder::Reflect).unwrap_or(0);
            s += wj * line[p as usize];
        }
        s
    };
    for x in (0..lo).chain(hi..out.len()) {
        out[x] = tap(x);
    }
    if hi > lo {
        let base = (lo as i64 + o) as usize;
        let src = &line[base..base + (hi - lo) + 3];
        for (i, d) in out[lo..hi].iter_mut().enumerate() {
            *d = w[0] * src[i] + w[1] * src[i + 1] + w[2] * src[i + 2] + w[3] * src[i + 3];
        }
    }
}

/// `out = Σ_i w[i] · rows[i]` (the vertical pass).
#[inline(always)]
fn combine_rows_body(rows: [&[f32]; 4], w: &[f32; 4], out: &mut [f32]) {
    let [r0, r1, r2, r3] = rows;
    for ((((d, &a), &b), &c), &e) in out.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
        *d = w[0] * a + w[1] * b + w[2] * c + w[3] * e;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
fn filter_line_avx(line: &[f32], o: i64, w: &[f32; 4], out: &mut [f32]) {
    filter_line_body(line, o, w, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
fn combine_rows_avx(rows: [&[f32]; 4], w: &[f32; 4], out: &mut [f32]) {
    combine_rows_body(rows, w, out);
}

fn has_avx_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn filter_line(line: &[f32], o: i64, w: &[f32; 4], out: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU has AVX and FMA (`has_avx_fma`).
        unsafe { filter_line_avx(line, o, w, out) };
        return;
    }
    let _ = simd;
    filter_line_body(line, o, w, out);
}

fn combine_rows(rows: [&[f32]; 4], w: &[f32; 4], out: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU has AVX and FMA (`has_avx_fma`).
        unsafe { combine_rows_avx(rows, w, out) };
        return;
    }
    let _ = simd;
    combine_rows_body(rows, w, out);
}

/// One output row of the fast remap: OpenCV's 1/32-pixel map quantisation and `f32` weight
/// table, `f32` taps and sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn remap_row_body(
    src: &[f32],
    h: usize,
    w: usize,
    y: usize,
    fy_row: &[f32],
    fx_row: &[f32],
    border: CvBorder,
    offset_out: f32,
    out: &mut [f32],
) {
    let tab = cubic_table_f32();
    let one_d = cubic_table_1d();
    for (x, ((d, &fy), &fx)) in out.iter_mut().zip(fy_row).zip(fx_row).enumerate() {
        let map_x = x as f32 - fx;
        let map_y = y as f32 - fy;
        let xi = round_even_f32(map_x * 32.0);
        let yi = round_even_f32(map_y * 32.0);
        let (sx, sy) = ((xi >> 5) - 1, (yi >> 5) - 1);
        let v = if sx >= 0 && sx + 4 <= w as i64 && sy >= 0 && sy + 4 <= h as i64 {
            // Separable: 4 horizontal sums with the 1-D weights, then the vertical one (the
            // 512-byte 1-D table stays in L1, unlike the 64 KiB 2-D table).
            let (wx, wy) = (&one_d[(xi & 31) as usize], &one_d[(yi & 31) as usize]);
            let o = sy as usize * w + sx as usize;
            let rows = &src[o..o + 3 * w + 4];
            let mut acc = [0f32; 4];
            for (k, a) in acc.iter_mut().enumerate() {
                let r = &rows[k * w..k * w + 4];
                *a = r[0] * wx[0] + r[1] * wx[1] + r[2] * wx[2] + r[3] * wx[3];
            }
            (acc[0] * wy[0] + acc[1] * wy[1]) + (acc[2] * wy[2] + acc[3] * wy[3])
        } else {
            let wt = &tab[((yi & 31) * 32 + (xi & 31)) as usize];
            bicubic_pixel(src, h, w, sx, sy, wt, border)
        };
        *d = v - offset_out;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
#[allow(clippy::too_many_arguments)]
fn remap_row_avx(
    src: &[f32],
    h: usize,
    w: usize,
    y: usize,
    fy_row: &[f32],
    fx_row: &[f32],
    border: CvBorder,
    offset_out: f32,
    out: &mut [f32],
) {
    remap_row_body(src, h, w, y, fy_row, fx_row, border, offset_out, out);
}

impl CubicWarper {
    /// Empty scratch (grows on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// CaImAn's `apply_shift_iteration(src + offset, shift, border_nan)` minus `offset`, into
    /// `dst`: `cv2.warpAffine` (INTER_CUBIC, BORDER_REFLECT) of the `f64` image, clipped to its
    /// `[nanmin, nanmax]`, then [`fix_border`] (`'min'` fills with the input minimum).
    ///
    /// # Panics
    /// If `dst` has a different shape than `src`.
    pub fn translate<T: Sample>(
        &mut self,
        src: ArrayView2<'_, T>,
        offset: f64,
        shift: [f64; 2],
        border: BorderMode,
        dst: ArrayViewMut2<'_, f32>,
    ) {
        self.translate_offsets(src, offset, offset, shift, border, dst);
    }

    /// [`Self::translate`] of `src + offset_in`, writing `result − offset_out`.
    pub(crate) fn translate_offsets<T: Sample>(
        &mut self,
        src: ArrayView2<'_, T>,
        offset_in: f64,
        offset_out: f64,
        shift: [f64; 2],
        border: BorderMode,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        assert_eq!(src.dim(), dst.dim(), "CubicWarper::translate: shape mismatch");
        let (h, w) = src.dim();
        if h == 0 || w == 0 {
            return;
        }
        let (lo, hi, _) = load_f64(src, offset_in, &mut self.src);
        self.out.resize(h * w, 0.0);
        // warpAffine with M = [[1, 0, sx], [0, 1, sy]] (float32), inverted, in 1/1024 fixed point.
        let m2 = -f64::from(shift[1] as f32);
        let m5 = -f64::from(shift[0] as f32);
        let x0 = cv_round(m2 * 1024.0) + 16;
        let xq = x0 >> 5;
        let (fx, ox) = (xq & 31, (xq >> 5) - 1);
        let tab = cubic_table();
        for y in 0..h {
            let yq = (cv_round((y as f64 + m5) * 1024.0) + 16) >> 5;
            let (fy, sy) = (yq & 31, (yq >> 5) - 1);
            let wt = &tab[(fy * 32 + fx) as usize];
            let out = &mut self.out[y * w..(y + 1) * w];
            // Interior columns (all 16 taps inside): x + ox in 0..=w-4.
            let (x_lo, x_hi) = if sy >= 0 && sy + 4 <= h as i64 && w >= 4 {
                let lo = (-ox).clamp(0, w as i64) as usize;
                let hi = (w as i64 - 3 - ox).clamp(lo as i64, w as i64) as usize;
                (lo, hi)
            } else {
                (0, 0)
            };
            for x in (0..x_lo).chain(x_hi..w) {
                out[x] = bicubic_pixel(&self.src, h, w, x as i64 + ox, sy, wt, CvBorder::Reflect);
            }
            if x_hi > x_lo {
                let base = (x_lo as i64 + ox) as usize;
                let sy = sy as usize;
                interior_row(&self.src, w, sy, base, wt, &mut out[x_lo..x_hi]);
            }
        }
        for v in &mut self.out {
            // np.clip(x, lo, hi) == min(max(x, lo), hi); NaN stays NaN.
            if *v < lo {
                *v = lo;
            }
            if *v > hi {
                *v = hi;
            }
        }
        let mut view = ArrayViewMut2::from_shape((h, w), &mut self.out[..]).expect("contiguous");
        fix_border(view.view_mut(), shift, border, lo);
        for (d, &v) in dst.iter_mut().zip(view.iter()) {
            *d = (v - offset_out) as f32;
        }
    }

    /// CaImAn's piecewise-rigid OpenCV path: `cv2.remap(src + offset, x − field_x, y − field_y,
    /// INTER_CUBIC)` minus `offset`, into `dst`. `field_y`/`field_x` hold the shift *to apply*
    /// at every pixel (float32, as CaImAn's `cv2.resize` output); the maps are formed in float32
    /// exactly as numpy does. Border: `Copy` → replicate, `Nan` → constant NaN, `Min` → constant
    /// `min(src + offset)`, `None` → constant 0 (before subtracting `offset`).
    ///
    /// # Panics
    /// If the fields or `dst` do not have the shape of `src`.
    pub fn remap<T: Sample>(
        &mut self,
        src: ArrayView2<'_, T>,
        offset: f64,
        field_y: ArrayView2<'_, f32>,
        field_x: ArrayView2<'_, f32>,
        border: BorderMode,
        dst: ArrayViewMut2<'_, f32>,
    ) {
        self.remap_offsets(src, (offset, offset), (field_y, field_x), border, dst);
    }

    /// [`Self::remap`] of `src + offset_in`, writing `result − offset_out`; `field` is
    /// `(field_y, field_x)`.
    pub(crate) fn remap_offsets<T: Sample>(
        &mut self,
        src: ArrayView2<'_, T>,
        (offset_in, offset_out): (f64, f64),
        (field_y, field_x): (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
        border: BorderMode,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        let Some((h, w)) = remap_dims("remap", src.dim(), field_y.dim(), field_x.dim(), dst.dim()) else {
            return;
        };
        let (lo, _, has_nan) = load_f64(src, offset_in, &mut self.src);
        let cv_border = CvBorder::for_remap(border, lo, has_nan);
        let tab = cubic_table();
        for y in 0..h {
            let (fy_row, fx_row) = (field_y.row(y), field_x.row(y));
            let mut drow = dst.row_mut(y);
            for x in 0..w {
                let map_x = x as f32 - fx_row[x];
                let map_y = y as f32 - fy_row[x];
                let xi = round_even_f32(map_x * 32.0);
                let yi = round_even_f32(map_y * 32.0);
                let wt = &tab[((yi & 31) * 32 + (xi & 31)) as usize];
                let (sx, sy) = ((xi >> 5) - 1, (yi >> 5) - 1);
                let v = if sx >= 0 && sx + 4 <= w as i64 && sy >= 0 && sy + 4 <= h as i64 {
                    interior_pixel(&self.src, w, sx as usize, sy as usize, wt)
                } else {
                    bicubic_pixel(&self.src, h, w, sx, sy, wt, cv_border)
                };
                drow[x] = (v - offset_out) as f32;
            }
        }
    }
}

impl CubicWarper {
    /// The fast (`f32`) counterpart of [`Self::translate`]: the same OpenCV quantisation of the
    /// shift to 1/32 pixel, the same Keys (a = −0.75) weights, `BORDER_REFLECT`, clipping and
    /// border fix-up, but evaluated as a separable filter (4 horizontal + 4 vertical taps) in
    /// `f32`. Differs from the exact path by `f32` rounding only (~1e-6 relative).
    ///
    /// # Panics
    /// If `dst` has a different shape than `src`.
    pub fn translate_fast(
        &mut self,
        src: ArrayView2<'_, f32>,
        offset: f64,
        shift: [f64; 2],
        border: BorderMode,
        dst: ArrayViewMut2<'_, f32>,
    ) {
        self.translate_fast_offsets(src, offset, offset, shift, border, dst);
    }

    /// [`Self::translate_fast`] of `src + offset_in`, writing `result − offset_out`.
    pub(crate) fn translate_fast_offsets(
        &mut self,
        src: ArrayView2<'_, f32>,
        offset_in: f64,
        offset_out: f64,
        shift: [f64; 2],
        border: BorderMode,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        assert_eq!(src.dim(), dst.dim(), "CubicWarper::translate_fast: shape mismatch");
        let (h, w) = src.dim();
        if h == 0 || w == 0 {
            return;
        }
        let simd = has_avx_fma();
        let (lo, hi, _) = load_f32(src, offset_in, &mut self.src32);
        // The same fixed-point arithmetic as the exact path: constant fractions per axis.
        let m2 = -f64::from(shift[1] as f32);
        let m5 = -f64::from(shift[0] as f32);
        let xq = (cv_round(m2 * 1024.0) + 16) >> 5;
        let (fx, ox) = (xq & 31, (xq >> 5) - 1);
        let yq = (cv_round(m5 * 1024.0) + 16) >> 5;
        let (fy, oy) = (yq & 31, (yq >> 5) - 1);
        let wx = cubic_coeffs(fx as f32 / 32.0);
        let wy = cubic_coeffs(fy as f32 / 32.0);
        // Horizontal pass over every source row, then the vertical pass into the output.
        self.tmp32.resize(h * w, 0.0);
        for (line, out) in self.src32.chunks_exact(w).zip(self.tmp32.chunks_exact_mut(w)) {
            filter_line(line, ox, &wx, out, simd);
        }
        let (lo_off, hi_off) = (lo, hi);
        let off_out = offset_out as f32;
        // The clipping and the border fix-up need the warped image before `offset_out` is
        // removed, so they run on the output rows in place (the output is f32 anyway).
        let mut out = ArrayViewMut2::from_shape((h, w), &mut self.src32[..]).expect("contiguous");
        for y in 0..h {
            let rows: [&[f32]; 4] = std::array::from_fn(|i| {
                let r = border_index(y as i64 + oy + i as i64, h as i64, CvBorder::Reflect).unwrap_or(0) as usize;
                &self.tmp32[r * w..(r + 1) * w]
            });
            let orow = out.row_mut(y).into_slice().expect("contiguous row");
            combine_rows(rows, &wy, orow, simd);
            for v in orow.iter_mut() {
                if *v < lo_off {
                    *v = lo_off;
                }
                if *v > hi_off {
                    *v = hi_off;
                }
            }
        }
        fix_border(out.view_mut(), shift, border, lo);
        match dst.as_slice_mut() {
            Some(d) => d.iter_mut().zip(out.iter()).for_each(|(d, &v)| *d = v - off_out),
            None => dst.zip_mut_with(&out, |d, &v| *d = v - off_out),
        }
    }

    /// The fast (`f32`) counterpart of [`Self::remap`]: OpenCV's map quantisation and `f32`
    /// weight table, `f32` pixels and sums (OpenCV's own arithmetic for `float32` images).
    ///
    /// # Panics
    /// If the fields or `dst` do not have the shape of `src`.
    pub fn remap_fast(
        &mut self,
        src: ArrayView2<'_, f32>,
        offset: f64,
        field_y: ArrayView2<'_, f32>,
        field_x: ArrayView2<'_, f32>,
        border: BorderMode,
        dst: ArrayViewMut2<'_, f32>,
    ) {
        self.remap_fast_offsets(src, (offset, offset), (field_y, field_x), border, dst);
    }

    /// [`Self::remap_fast`] of `src + offset_in`, writing `result − offset_out`; `field` is
    /// `(field_y, field_x)`.
    pub(crate) fn remap_fast_offsets(
        &mut self,
        src: ArrayView2<'_, f32>,
        (offset_in, offset_out): (f64, f64),
        (field_y, field_x): (ArrayView2<'_, f32>, ArrayView2<'_, f32>),
        border: BorderMode,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        let Some((h, w)) = remap_dims("remap_fast", src.dim(), field_y.dim(), field_x.dim(), dst.dim()) else {
            return;
        };
        let (lo, _, has_nan) = load_f32(src, offset_in, &mut self.src32);
        let cv_border = CvBorder::for_remap(border, f64::from(lo), has_nan);
        let simd = has_avx_fma();
        let off = offset_out as f32;
        self.tmp32.resize(w, 0.0);
        for y in 0..h {
            let (fy, fx) = (field_y.row(y), field_x.row(y));
            let (fy, fx) = match (fy.as_slice(), fx.as_slice()) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    // Non-contiguous fields: gather the rows first (rare; tests only).
                    let mut tmp = vec![0f32; 2 * w];
                    tmp[..w].iter_mut().zip(fy.iter()).for_each(|(d, &v)| *d = v);
                    tmp[w..].iter_mut().zip(fx.iter()).for_each(|(d, &v)| *d = v);
                    let out = &mut self.tmp32[..w];
                    remap_row_body(&self.src32, h, w, y, &tmp[..w], &tmp[w..], cv_border, off, out);
                    dst.row_mut(y).iter_mut().zip(out.iter()).for_each(|(d, &v)| *d = v);
                    continue;
                }
            };
            let out = &mut self.tmp32[..w];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd` is only true when the CPU has AVX and FMA.
                unsafe { remap_row_avx(&self.src32, h, w, y, fy, fx, cv_border, off, out) };
            } else {
                remap_row_body(&self.src32, h, w, y, fy, fx, cv_border, off, out);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = simd;
                remap_row_body(&self.src32, h, w, y, fy, fx, cv_border, off, out);
            }
            dst.row_mut(y).iter_mut().zip(out.iter()).for_each(|(d, &v)| *d = v);
        }
    }
}

/// The shape checks shared by the remaps: fields and destination have the source's shape
/// (panics otherwise, as documented on the public methods); `None` for an empty image.
fn remap_dims(
    who: &str,
    src: (usize, usize),
    field_y: (usize, usize),
    field_x: (usize, usize),
    dst: (usize, usize),
) -> Option<(usize, usize)> {
    assert_eq!(src, dst, "CubicWarper::{who}: shape mismatch");
    assert_eq!(src, field_y, "CubicWarper::{who}: field shape");
    assert_eq!(src, field_x, "CubicWarper::{who}: field shape");
    (src.0 > 0 && src.1 > 0).then_some(src)
}

/// CaImAn's `apply_shift_iteration` as a one-shot function (see [`CubicWarper::translate`]).
///
/// # Panics
/// If `dst` has a different shape than `src`.
pub fn apply_shift_cubic(src: ArrayView2<'_, f32>, shift: [f64; 2], border: BorderMode, dst: ArrayViewMut2<'_, f32>) {
    CubicWarper::new().translate(src, 0.0, shift, border, dst);
}

/// Fourier-domain shifts (CaImAn's `apply_shifts_dft`) for one image size: plans and scratch.
#[derive(Debug)]
pub struct DftShifter {
    fft: Fft2d,
    input: Spectrum,
    spec: Spectrum,
    a0: Vec<Complex64>,
    b0: Vec<Complex64>,
    a1: Vec<Complex64>,
    b1: Vec<Complex64>,
    tab0: Vec<Complex64>,
    tab1: Vec<Complex64>,
}

impl DftShifter {
    /// Plans for images of `shape = [h, w]`.
    ///
    /// # Panics
    /// If a dimension is zero.
    pub fn new(shape: [usize; 2]) -> Self {
        let zero = Complex64::new(0.0, 0.0);
        let bins = shape[1] / 2 + 1;
        Self {
            fft: Fft2d::new(shape),
            input: Spectrum::zeros(shape),
            spec: Spectrum::zeros(shape),
            a0: vec![zero; shape[0]],
            b0: vec![zero; shape[0]],
            a1: vec![zero; bins],
            b1: vec![zero; bins],
            tab0: Vec::with_capacity(shape[0] / 2 + 1),
            tab1: Vec::with_capacity(shape[1] / 2 + 1),
        }
    }

    /// The image shape.
    pub fn shape(&self) -> [usize; 2] {
        self.fft.shape()
    }

    /// `Re(ifft2(spec · exp(−2πi(s0 f0/N0 + s1 f1/N1)) · exp(i·diffphase)))` into `out` (no border
    /// fix-up), where `spec` is the unnormalised spectrum of the image (e.g.
    /// [`crate::register::Registrar::frame_spectrum`]) and `f` are numpy's signed frequencies.
    ///
    /// # Panics
    /// If `spec` or `out` do not have this shifter's shape.
    pub fn shift_spectrum(
        &mut self,
        spec: &Spectrum,
        shift: [f64; 2],
        diffphase: f64,
        mut out: ArrayViewMut2<'_, f64>,
    ) {
        let [h, w] = self.fft.shape();
        assert_eq!(spec.shape(), [h, w], "DftShifter: spectrum shape");
        assert_eq!(out.dim(), (h, w), "DftShifter: output shape");
        let tau = 2.0 * std::f64::consts::PI;
        // φ(k) = A0(k0) A1(k1) e^{iδ}; conj(φ(−k)) = B0(k0) B1(k1) e^{−iδ}.
        // exp(−2πi s f / n) for f = 0 ..= n/2; negative f are conjugates (bit-identical to a
        // direct evaluation, as cos/sin are even/odd).
        let fill = |tab: &mut Vec<Complex64>, s: f64, n: usize| {
            tab.clear();
            tab.extend((0..=n / 2).map(|m| Complex64::from_polar(1.0, -tau * s * m as f64 / n as f64)));
        };
        let ramp = |tab: &[Complex64], f: i64| {
            if f >= 0 { tab[f as usize] } else { tab[f.unsigned_abs() as usize].conj() }
        };
        fill(&mut self.tab0, shift[0], h);
        fill(&mut self.tab1, shift[1], w);
        for k0 in 0..h {
            self.a0[k0] = ramp(&self.tab0, signed_freq(k0, h));
            self.b0[k0] = ramp(&self.tab0, signed_freq((h - k0) % h, h)).conj();
        }
        for k1 in 0..w / 2 + 1 {
            self.a1[k1] = ramp(&self.tab1, signed_freq(k1, w));
            self.b1[k1] = ramp(&self.tab1, signed_freq((w - k1) % w, w)).conj();
        }
        let ep = Complex64::from_polar(0.5, diffphase);
        let em = Complex64::from_polar(0.5, -diffphase);
        let src = spec.as_slice();
        let dst = self.spec.as_mut_slice();
        for k1 in 0..w / 2 + 1 {
            let (pa, pb) = (self.a1[k1] * ep, self.b1[k1] * em);
            for k0 in 0..h {
                let i = k1 * h + k0;
                dst[i] = src[i] * (self.a0[k0] * pa + self.b0[k0] * pb);
            }
        }
        let scale = 1.0 / (h * w) as f64;
        self.fft.columns_inverse(self.spec.as_mut_slice());
        for r in 0..h {
            let row = self.fft.row_c2r(self.spec.as_slice(), r);
            for (o, &v) in out.row_mut(r).iter_mut().zip(row) {
                *o = v * scale;
            }
        }
    }

    /// CaImAn's `apply_shifts_dft(img + offset, shift, diffphase, is_freq=False, border_nan)`
    /// (real part, then [`fix_border`] with `'min'` = the shifted image's nanmin), in `f64`.
    ///
    /// # Panics
    /// If `img` or `out` do not have this shifter's shape.
    pub fn shift_image<T: Sample>(
        &mut self,
        img: ArrayView2<'_, T>,
        offset: f64,
        shift: [f64; 2],
        diffphase: f64,
        border: BorderMode,
        mut out: ArrayViewMut2<'_, f64>,
    ) {
        let mut input = std::mem::take(&mut self.input);
        self.fft.forward(img, offset, &mut input);
        self.shift_spectrum(&input, shift, diffphase, out.view_mut());
        self.input = input;
        fix_border_after_dft(out, shift, border);
    }
}

/// Border fix-up of `apply_shifts_dft` (`'min'` uses the nanmin of the shifted image).
pub(crate) fn fix_border_after_dft(mut out: ArrayViewMut2<'_, f64>, shift: [f64; 2], border: BorderMode) {
    let min_value = if border == BorderMode::Min { nanmin(out.view()) } else { f64::NAN };
    fix_border(out.view_mut(), shift, border, min_value);
}

fn nanmin(a: ArrayView2<'_, f64>) -> f64 {
    a.iter().copied().filter(|v| !v.is_nan()).fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m })
}

/// CaImAn's `apply_shifts_dft` as a one-shot function on an `f32` image, result in `out`.
///
/// # Panics
/// If `out` has a different shape than `img`, or the image is empty.
pub fn apply_shifts_dft(
    img: ArrayView2<'_, f32>,
    shift: [f64; 2],
    diffphase: f64,
    border: BorderMode,
    mut out: ArrayViewMut2<'_, f32>,
) {
    assert_eq!(img.dim(), out.dim(), "apply_shifts_dft: shape mismatch");
    let (h, w) = img.dim();
    let mut tmp = ndarray::Array2::<f64>::zeros((h, w));
    DftShifter::new([h, w]).shift_image(img, 0.0, shift, diffphase, border, tmp.view_mut());
    out.zip_mut_with(&tmp, |o, &v| *o = v as f32);
}

/// Fourier shift of a volume (CaImAn's 3-D `apply_shifts_dft` as `tile_and_correct_3d` uses it
/// for rigid correction): `Re(ifftn(spec · exp(−2πi Σ s_a f_a / N_a) · exp(i·diffphase)))` into
/// `out`, then the border fix-up of every axis. `spec` is the unnormalised spectrum (e.g.
/// [`crate::register::VolumeRegistrar::frame_spectrum`]), `shift` the shift to apply.
///
/// Deviation: CaImAn's 3-D border fix-up takes the row margin from the column shift and vice
/// versa (it reuses the reversed shift vector); here every axis uses its own shift.
///
/// # Panics
/// If `spec` and `out` differ in shape.
pub fn apply_shifts_dft_3d(
    fft: &mut crate::fft::Fft3d,
    spec: ndarray::ArrayView3<'_, Complex64>,
    shift: [f64; 3],
    diffphase: f64,
    border: BorderMode,
    mut out: ndarray::ArrayViewMut3<'_, f64>,
) {
    let shape: [usize; 3] = spec.dim().into();
    assert_eq!(<[usize; 3]>::from(out.dim()), shape, "apply_shifts_dft_3d: shape mismatch");
    let tau = 2.0 * std::f64::consts::PI;
    let ramps: Vec<Vec<Complex64>> = (0..3)
        .map(|a| {
            (0..shape[a])
                .map(|k| {
                    let f = signed_freq(k, shape[a]) as f64;
                    Complex64::from_polar(1.0, -tau * shift[a] * f / shape[a] as f64)
                })
                .collect()
        })
        .collect();
    let ph = Complex64::from_polar(1.0, diffphase);
    let mut g = ndarray::Array3::<Complex64>::zeros(spec.dim());
    for ((i, j, k), v) in g.indexed_iter_mut() {
        *v = spec[[i, j, k]] * ramps[0][i] * ramps[1][j] * ramps[2][k] * ph;
    }
    fft.transform(g.view_mut(), false);
    let n = (shape[0] * shape[1] * shape[2]) as f64;
    out.zip_mut_with(&g, |o, v| *o = v.re / n);
    let fill = match border {
        BorderMode::None => return,
        BorderMode::Nan => Some(f64::NAN),
        BorderMode::Min => Some(out.iter().copied().filter(|v| !v.is_nan()).fold(f64::INFINITY, f64::min)),
        BorderMode::Copy => None,
    };
    for (axis, &s) in shift.iter().enumerate() {
        let len = shape[axis];
        let lead = (s.max(0.0).ceil() as usize).min(len);
        let trail = ((-s.min(0.0).floor()) as usize).min(len);
        for idx in (0..lead).chain(len - trail..len) {
            let src = if idx < lead { lead } else { len - trail - 1 };
            match fill {
                Some(v) => out.index_axis_mut(ndarray::Axis(axis), idx).fill(v),
                None if src < len && (lead < len && trail < len) => {
                    let copy = out.index_axis(ndarray::Axis(axis), src).to_owned();
                    out.index_axis_mut(ndarray::Axis(axis), idx).assign(&copy);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_about_one() {
        for w in cubic_table() {
            let s: f64 = w.iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_coeffs(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn reflect_border_matches_opencv() {
        let b = CvBorder::Reflect;
        let got: Vec<i64> = (-3..8).map(|p| border_index(p, 5, b).unwrap()).collect();
        assert_eq!(got, [2, 1, 0, 0, 1, 2, 3, 4, 4, 3, 2]);
        assert_eq!(border_index(-2, 1, b), Some(0));
    }
}
