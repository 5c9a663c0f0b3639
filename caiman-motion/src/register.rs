//! Sub-pixel translation registration by phase-free cross-correlation (CaImAn's
//! `register_translation`, after Guizar-Sicairos et al. 2008; catalog §2.4).
//!
//! Per call: forward FFT of the frame (the template spectrum is computed **once** per template by
//! [`Registrar::spectrum`] and passed in), cross-power spectrum `R = F · conj(G)`, inverse FFT of
//! only the rows inside the search window, integer peak of `|r|` inside the window, then a local
//! upsampled DFT on a `ceil(1.5·u)²` grid (15 × 15 for `u = 10`) around the peak, computed as two
//! small matrix products over the half spectrum. The result is CaImAn's to the last bit of its
//! 0.1 px decisions (all arithmetic is `f64`, as in CaImAn).
//!
//! **Sign convention** (catalog §0.2): the returned [`Registration::shift`] `s` is the displacement
//! of the frame content relative to the template, `frame(p) ≈ template(p − s)`. The shift to
//! *apply* to the frame (what `MotionCorrect` stores) is `−s`.
//!
//! **Deliberate deviation from CaImAn — symmetric search window.** CaImAn zeroes the
//! cross-correlation lags `[m, N − m)`, so the integer search covers `−m … m−1`: a true shift of
//! `+m` is reported as about `m − 1 + 0.7` while `−m` is found. Here the window is symmetric,
//! `−m … m` (whole axis when `2m ≥ N`), and the bounded variant used for patches is inclusive,
//! `lb … ub` (CaImAn: `lb … ub−1`). Everything strictly inside CaImAn's window gives identical
//! results. `m = 0` allows only the zero lag (CaImAn's `[0:-0]` slice masks nothing).
//!
//! Other documented differences: for `upsample_factor == 1` the phase difference is reported as
//! `0` (CaImAn takes the phase of the global complex maximum of a real cross-correlation, i.e.
//! rounding noise); a frame or template with NaN/inf gives [`Error::NonFinite`] instead of an
//! arbitrary shift.

use ndarray::{Array3, ArrayView2, ArrayView3};
use rustfft::num_complex::{Complex, Complex64};

use crate::error::{Error, Result};
use crate::fft::{Fft2d, Fft3d, Real, Sample, Spectrum, signed_freq};

/// Which integer lags the peak search may consider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchWindow {
    /// Lags `−m … m` per axis (`max_shifts`); the whole axis when `2m ≥ N`.
    MaxShifts([usize; 2]),
    /// Lags `lower … upper` per axis, both inclusive (patch registration: rigid shift ±
    /// `max_deviation_rigid`). The whole axis when the range covers `N` lags or more.
    Bounds {
        /// Smallest allowed integer shift per axis.
        lower: [i64; 2],
        /// Largest allowed integer shift per axis.
        upper: [i64; 2],
    },
}

/// Result of one registration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Registration {
    /// Content displacement `s = [s0 (rows), s1 (cols)]`, a multiple of `1/upsample_factor`;
    /// `frame(p) ≈ template(p − s)`. Apply `−s` to register the frame.
    pub shift: [f64; 2],
    /// Global phase difference `atan2(Im, Re)` of the cross-correlation at its (upsampled)
    /// maximum, as CaImAn's `_compute_phasediff`; used by the Fourier shift.
    pub phasediff: f64,
}

/// Sizes of the local upsampled grid for an upsampling factor `u`: `(ceil(1.5 u), floor(that/2))`.
pub(crate) fn upsampled_region(u: usize) -> (usize, usize) {
    let region = (3 * u).div_ceil(2);
    (region, region / 2)
}

/// Per-axis tables of the local upsampled DFT: `n`-th roots of unity and the fractional-offset
/// phase factors `exp(2πi f(k) (a − D) / (u n))` (computed in `f64`, stored in `T`).
#[derive(Debug)]
struct AxisDft<T = f64> {
    n: usize,
    roots: Vec<Complex<T>>,
    /// `region × n`, row `a` = offset `(a − D)/u`.
    steps: Vec<Complex<T>>,
}

fn cast_c<T: Real>(z: Complex64) -> Complex<T> {
    Complex::new(T::of(z.re), T::of(z.im))
}

impl<T: Real> AxisDft<T> {
    fn new(n: usize, u: usize) -> Self {
        let (region, dftshift) = upsampled_region(u);
        let tau = 2.0 * std::f64::consts::PI;
        let roots = (0..n).map(|m| cast_c(Complex64::from_polar(1.0, tau * m as f64 / n as f64))).collect();
        let mut steps = Vec::with_capacity(region * n);
        for a in 0..region {
            let off = a as f64 - dftshift as f64;
            for k in 0..n {
                let f = signed_freq(k, n) as f64;
                steps.push(cast_c(Complex64::from_polar(1.0, tau * f * off / (u as f64 * n as f64))));
            }
        }
        Self { n, roots, steps }
    }

    /// Fills `out` (`region × n`) with `exp(2πi f(k) t_a / n)`, `t_a = s + (a − D)/u`.
    fn kernel(&self, s: i64, out: &mut [Complex<T>]) {
        let n = self.n;
        let step = s.rem_euclid(n as i64) as usize;
        for (row, steps) in out.chunks_exact_mut(n).zip(self.steps.chunks_exact(n)) {
            // m = k·s mod n, incrementally.
            let mut m = 0usize;
            for (o, st) in row.iter_mut().zip(steps) {
                *o = self.roots[m] * st;
                m += step;
                if m >= n {
                    m -= n;
                }
            }
        }
    }
}

/// Allowed `(index, shift)` pairs of one axis, in increasing index order (CaImAn's argmax scans
/// indices in order, so ties resolve identically).
fn allowed_lags(n: usize, lower: i64, upper: i64, out: &mut Vec<(usize, i64)>) {
    out.clear();
    let caiman_shift = |k: usize| if k > n / 2 { k as i64 - n as i64 } else { k as i64 };
    if upper - lower + 1 >= n as i64 {
        out.extend((0..n).map(|k| (k, caiman_shift(k))));
    } else {
        out.extend((lower..=upper).map(|s| (s.rem_euclid(n as i64) as usize, s)));
        out.sort_unstable_by_key(|&(k, _)| k);
    }
}

fn window_bounds(window: &SearchWindow, axis: usize, n: usize) -> (i64, i64) {
    match *window {
        SearchWindow::MaxShifts(m) => {
            let m = m[axis];
            if 2 * m >= n { (0, n as i64 - 1) } else { (-(m as i64), m as i64) }
        }
        SearchWindow::Bounds { lower, upper } => {
            assert!(
                lower[axis] <= upper[axis],
                "SearchWindow::Bounds: lower {lower:?} > upper {upper:?} on axis {axis}"
            );
            (lower[axis], upper[axis])
        }
    }
}

/// Width of the blocks of upsampled-grid rows contracted together.
const BLOCK: usize = 16;

/// `out[a] = Σ_k p[k]·e[k][a]` for one block of `BLOCK` grid rows, with `e` stored transposed
/// (`k`-major, `BLOCK` contiguous values per `k`) and split into real and imaginary parts. The
/// inner loop runs over `a` with broadcast `p[k]` (an axpy, no reduction), so every `out[a]` is
/// summed sequentially over `k` whatever the SIMD width: results do not depend on the
/// instruction set (no FMA contraction either).
#[inline(always)]
fn contract_block_body<T: Real, const FUSED: bool>(pr: &[T], pi: &[T], er: &[T], ei: &[T], out: &mut [Complex<T>]) {
    let mut tr = [T::zero(); BLOCK];
    let mut ti = [T::zero(); BLOCK];
    for ((&r, &i), (er, ei)) in pr.iter().zip(pi).zip(er.chunks_exact(BLOCK).zip(ei.chunks_exact(BLOCK))) {
        let er: &[T; BLOCK] = er.try_into().expect("chunk of BLOCK");
        let ei: &[T; BLOCK] = ei.try_into().expect("chunk of BLOCK");
        for a in 0..BLOCK {
            if FUSED {
                // Fast path only (f32): fused multiply-adds, other rounding.
                tr[a] = r.mul_add(er[a], (-i).mul_add(ei[a], tr[a]));
                ti[a] = r.mul_add(ei[a], i.mul_add(er[a], ti[a]));
            } else {
                tr[a] = tr[a] + (r * er[a] - i * ei[a]);
                ti[a] = ti[a] + (r * ei[a] + i * er[a]);
            }
        }
    }
    for (o, (r, i)) in out.iter_mut().zip(tr.iter().zip(&ti)) {
        *o = Complex::new(*r, *i);
    }
}

/// The same loop compiled for AVX (4 lanes of `f64`, 8 of `f32`); selected at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn contract_block_avx<T: Real>(pr: &[T], pi: &[T], er: &[T], ei: &[T], out: &mut [Complex<T>]) {
    contract_block_body::<T, false>(pr, pi, er, ei, out);
}

/// The fast path's loop with fused multiply-adds (AVX + FMA); selected at run time for `f32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
fn contract_block_fma<T: Real>(pr: &[T], pi: &[T], er: &[T], ei: &[T], out: &mut [Complex<T>]) {
    contract_block_body::<T, true>(pr, pi, er, ei, out);
}

#[inline]
fn contract_block<T: Real>(pr: &[T], pi: &[T], er: &[T], ei: &[T], out: &mut [Complex<T>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if T::FAST && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX and FMA (checked just above).
            unsafe { contract_block_fma(pr, pi, er, ei, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above).
            unsafe { contract_block_avx(pr, pi, er, ei, out) };
            return;
        }
    }
    contract_block_body::<T, false>(pr, pi, er, ei, out);
}

/// Registration plans, template-independent tables and scratch for one image size and upsampling
/// factor. One per worker and size; [`Registrar::register`] does not allocate.
///
/// `T` is the arithmetic: `f64` (the default, CaImAn's decisions bit for bit) or `f32` (the fast
/// path: same algorithm, single-precision transforms and upsampled DFT).
#[derive(Debug)]
pub struct Registrar<T = f64> {
    shape: [usize; 2],
    upsample: usize,
    fft: Fft2d<T>,
    frame_spec: Spectrum<T>,
    product: Vec<Complex<T>>,
    /// The product split into real and imaginary parts (for the upsampled DFT).
    prod_re: Vec<T>,
    prod_im: Vec<T>,
    work: Vec<Complex<T>>,
    axes: Option<[AxisDft<T>; 2]>,
    lags: [Vec<(usize, i64)>; 2],
    e0: Vec<Complex<T>>,
    e0_re: Vec<T>,
    e0_im: Vec<T>,
    e1: Vec<Complex<T>>,
    e1_re: Vec<T>,
    e1_im: Vec<T>,
    t_re: Vec<T>,
    t_im: Vec<T>,
    cc: Vec<Complex<T>>,
    /// Fast path: the DC of the cross-power spectrum (frame DC × template DC, `f64`), added back
    /// to the mean-removed correlations before every comparison; 0 on the exact path.
    dc: f64,
}

/// Mean of `img` in `f64` (row by row, any strides).
fn mean_f64<S: Sample>(img: &ArrayView2<'_, S>) -> f64 {
    let mut total = 0.0;
    for row in img.rows() {
        total += row.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    total / img.len().max(1) as f64
}

impl<T: Real> Registrar<T> {
    /// Plans for images of `shape = [h, w]` and sub-pixel resolution `1/upsample_factor`
    /// (CaImAn's `upsample_factor_fft`, 10 in the batch path).
    ///
    /// # Panics
    /// If a dimension or `upsample_factor` is zero.
    pub fn new(shape: [usize; 2], upsample_factor: usize) -> Self {
        assert!(upsample_factor >= 1, "upsample_factor must be ≥ 1");
        let [h, w] = shape;
        let fft = Fft2d::new(shape);
        let bins = w / 2 + 1;
        let zero = Complex::new(T::zero(), T::zero());
        let (region, _) = upsampled_region(upsample_factor);
        let axes = (upsample_factor > 1).then(|| [AxisDft::new(h, upsample_factor), AxisDft::new(w, upsample_factor)]);
        let up = upsample_factor > 1;
        Self {
            shape,
            upsample: upsample_factor,
            fft,
            frame_spec: Spectrum::zeros(shape),
            product: vec![zero; bins * h],
            prod_re: vec![T::zero(); if up { bins * h } else { 0 }],
            prod_im: vec![T::zero(); if up { bins * h } else { 0 }],
            work: vec![zero; bins * h],
            axes,
            lags: [Vec::with_capacity(h), Vec::with_capacity(w)],
            e0: vec![zero; if up { region * h } else { 0 }],
            e0_re: vec![T::zero(); if up { region.div_ceil(BLOCK) * BLOCK * h } else { 0 }],
            e0_im: vec![T::zero(); if up { region.div_ceil(BLOCK) * BLOCK * h } else { 0 }],
            e1: vec![zero; if up { region * w } else { 0 }],
            e1_re: vec![T::zero(); if up { region.div_ceil(BLOCK) * BLOCK * w } else { 0 }],
            e1_im: vec![T::zero(); if up { region.div_ceil(BLOCK) * BLOCK * w } else { 0 }],
            t_re: vec![T::zero(); if up { region * w } else { 0 }],
            t_im: vec![T::zero(); if up { region * w } else { 0 }],
            cc: vec![zero; if up { region * region } else { 0 }],
            dc: 0.0,
        }
    }

    /// The image shape `[h, w]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The sub-pixel upsampling factor.
    pub fn upsample_factor(&self) -> usize {
        self.upsample
    }

    /// The spectrum of `img + offset`, e.g. of a template (computed once, reused for every frame).
    ///
    /// # Panics
    /// If `img` does not have this registrar's shape.
    ///
    /// On the fast path (`T = f32`) the transform is of `img − mean(img)` (the mean subtracted in
    /// `f64`) and the true DC is kept apart ([`Spectrum::removed_dc`]): single-precision
    /// transforms of a large constant would otherwise swamp the correlation's variation.
    pub fn spectrum<S: Sample>(&mut self, img: ArrayView2<'_, S>, offset: f64) -> Spectrum<T> {
        let mut s = Spectrum::zeros(self.shape);
        self.transform(img, offset, &mut s);
        s
    }

    fn transform<S: Sample>(&mut self, img: ArrayView2<'_, S>, offset: f64, out: &mut Spectrum<T>) {
        if T::FAST {
            let mean = mean_f64(&img);
            self.fft.forward(img, -mean, out);
            out.as_mut_slice()[0] = Complex::new(T::zero(), T::zero());
            out.set_removed_dc((mean + offset) * (self.shape[0] * self.shape[1]) as f64);
        } else {
            self.fft.forward(img, offset, out);
        }
    }

    /// The spectrum of the last frame passed to [`Self::register`] (`frame + offset`), for
    /// Fourier-domain shifting without a second FFT (fast path: of the mean-removed frame, see
    /// [`Self::spectrum`]).
    pub fn frame_spectrum(&self) -> &Spectrum<T> {
        &self.frame_spec
    }

    /// Registers `frame + offset` against a template spectrum from [`Self::spectrum`].
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the frame or template shape differs from the registrar's;
    /// [`Error::NonFinite`] if the frame or the template contains NaN/inf.
    ///
    /// # Panics
    /// If a [`SearchWindow::Bounds`] has `lower > upper` on some axis.
    pub fn register<S: Sample>(
        &mut self,
        frame: ArrayView2<'_, S>,
        offset: f64,
        template: &Spectrum<T>,
        window: &SearchWindow,
    ) -> Result<Registration> {
        let [h, w] = self.shape;
        if frame.dim() != (h, w) {
            return Err(Error::ShapeMismatch {
                what: "frame vs registrar",
                expected: vec![h, w],
                got: vec![frame.nrows(), frame.ncols()],
            });
        }
        if template.shape() != self.shape {
            return Err(Error::ShapeMismatch {
                what: "template spectrum vs registrar",
                expected: vec![h, w],
                got: template.shape().to_vec(),
            });
        }
        let mut frame_spec = std::mem::take(&mut self.frame_spec);
        self.transform(frame, offset, &mut frame_spec);
        self.frame_spec = frame_spec;
        for ((p, f), g) in self.product.iter_mut().zip(self.frame_spec.as_slice()).zip(template.as_slice()) {
            *p = f * g.conj();
        }
        self.dc = self.frame_spec.removed_dc() * template.removed_dc();
        if !self.dc.is_finite() {
            return Err(Error::NonFinite { what: "frame or template (cross-correlation)" });
        }
        if self.upsample > 1 {
            for ((p, r), i) in self.product.iter().zip(&mut self.prod_re).zip(&mut self.prod_im) {
                *r = p.re;
                *i = p.im;
            }
        }
        let shift = self.integer_peak(window)?;
        let mut reg = if self.upsample > 1 {
            self.refine(shift)
        } else {
            Registration { shift: [shift[0] as f64, shift[1] as f64], phasediff: 0.0 }
        };
        for (axis, &n) in self.shape.iter().enumerate() {
            if n == 1 {
                reg.shift[axis] = 0.0;
            }
        }
        Ok(reg)
    }

    /// Integer argmax of `|r|` over the allowed lags.
    fn integer_peak(&mut self, window: &SearchWindow) -> Result<[i64; 2]> {
        let [h, w] = self.shape;
        let (lo0, hi0) = window_bounds(window, 0, h);
        let (lo1, hi1) = window_bounds(window, 1, w);
        let [lags0, lags1] = &mut self.lags;
        allowed_lags(h, lo0, hi0, lags0);
        allowed_lags(w, lo1, hi1, lags1);
        self.work.copy_from_slice(&self.product);
        self.fft.columns_inverse(&mut self.work);
        let dc = self.dc;
        let mut best = -1.0f64;
        let mut arg = None;
        for &(k0, s0) in lags0.iter() {
            let row = self.fft.row_c2r(&self.work, k0);
            for &(k1, s1) in lags1.iter() {
                // Exact path: dc = 0 and this is |r| (adding 0.0 changes no comparison).
                let v = (row[k1].widen() + dc).abs();
                if v > best {
                    best = v;
                    arg = Some([s0, s1]);
                }
            }
        }
        match arg {
            Some(a) if best.is_finite() => Ok(a),
            _ => Err(Error::NonFinite { what: "frame or template (cross-correlation)" }),
        }
    }

    /// Local upsampled DFT around the integer peak `s`.
    fn refine(&mut self, s: [i64; 2]) -> Registration {
        let [h, w] = self.shape;
        let bins = w / 2 + 1;
        let u = self.upsample;
        let (region, dftshift) = upsampled_region(u);
        let axes = self.axes.as_ref().expect("upsampling tables exist for u > 1");
        axes[0].kernel(s[0], &mut self.e0);
        axes[1].kernel(s[1], &mut self.e1);
        // E0 transposed into blocks of BLOCK grid rows: e0_t[(blk * h + k0) * BLOCK + a % BLOCK].
        let nblk = region.div_ceil(BLOCK);
        for a in 0..region {
            let (blk, l) = (a / BLOCK, a % BLOCK);
            for k0 in 0..h {
                let e = self.e0[a * h + k0];
                let i = (blk * h + k0) * BLOCK + l;
                self.e0_re[i] = e.re;
                self.e0_im[i] = e.im;
            }
        }
        // E1 transposed the same way (k1-major, BLOCK grid columns contiguous), for step 2.
        for b in 0..region {
            let (blk, l) = (b / BLOCK, b % BLOCK);
            for k1 in 0..w {
                let e = self.e1[b * w + k1];
                let i = (blk * w + k1) * BLOCK + l;
                self.e1_re[i] = e.re;
                self.e1_im[i] = e.im;
            }
        }
        // Step 1: contract the row frequencies, T[a][k1] = Σ_k0 R[k0,k1] E0[a][k0] (stored a-major).
        let mut block_out = [Complex::new(T::zero(), T::zero()); BLOCK];
        for k1 in 0..bins {
            let (pr, pi) = (&self.prod_re[k1 * h..(k1 + 1) * h], &self.prod_im[k1 * h..(k1 + 1) * h]);
            for blk in 0..nblk {
                let span = blk * h * BLOCK..(blk + 1) * h * BLOCK;
                contract_block(pr, pi, &self.e0_re[span.clone()], &self.e0_im[span], &mut block_out);
                for (l, v) in block_out.iter().enumerate().take(region - blk * BLOCK) {
                    let a = blk * BLOCK + l;
                    self.t_re[a * w + k1] = v.re;
                    self.t_im[a * w + k1] = v.im;
                }
            }
        }
        // Columns not stored in the half spectrum: R[k0, k1] = conj(R[-k0, w - k1]).
        for k1 in bins..w {
            let j = w - k1;
            for a in 0..region {
                let mut v = Complex::new(self.t_re[a * w + j], self.t_im[a * w + j]).conj();
                if h % 2 == 0 {
                    // The Nyquist row k0 = h/2 is its own mirror (f = -h/2 in both places).
                    let e = self.e0[a * h + h / 2];
                    v = v + self.product[j * h + h / 2].conj() * Complex::new(T::zero(), T::of(2.0) * e.im);
                }
                self.t_re[a * w + k1] = v.re;
                self.t_im[a * w + k1] = v.im;
            }
        }
        // Step 2: contract the column frequencies, CC[a][b] = Σ_k1 T[a][k1] E1[b][k1]; the same
        // kernel, so every CC[a][b] is still summed sequentially over k1.
        for a in 0..region {
            let (pr, pi) = (&self.t_re[a * w..(a + 1) * w], &self.t_im[a * w..(a + 1) * w]);
            for blk in 0..nblk {
                let span = blk * w * BLOCK..(blk + 1) * w * BLOCK;
                contract_block(pr, pi, &self.e1_re[span.clone()], &self.e1_im[span], &mut block_out);
                for (l, v) in block_out.iter().enumerate().take(region - blk * BLOCK) {
                    self.cc[a * region + blk * BLOCK + l] = *v;
                }
            }
        }
        // Exact path: dc = 0, so z is CC itself (widening f64 is the identity).
        let dc = self.dc;
        let widen = |z: Complex<T>| Complex64::new(z.re.widen() + dc, z.im.widen());
        let mut best = -1.0f64;
        let mut arg = (0usize, 0usize);
        let mut ccmax = widen(self.cc[0]);
        for a in 0..region {
            for b in 0..region {
                let z = widen(self.cc[a * region + b]);
                let m = z.norm();
                if m > best {
                    best = m;
                    arg = (a, b);
                }
                // numpy's complex max: lexicographic (real part, then imaginary part).
                if z.re > ccmax.re || (z.re == ccmax.re && z.im > ccmax.im) {
                    ccmax = z;
                }
            }
        }
        let uf = u as f64;
        let d = dftshift as f64;
        Registration {
            shift: [s[0] as f64 + (arg.0 as f64 - d) / uf, s[1] as f64 + (arg.1 as f64 - d) / uf],
            phasediff: ccmax.im.atan2(ccmax.re),
        }
    }
}

/// One-shot registration of `frame` against `template` (both as given, no offset). Convenience
/// for tests and occasional use; the batch path keeps a [`Registrar`] and a cached template
/// [`Spectrum`] instead.
///
/// # Errors
/// As [`Registrar::register`]; also [`Error::ShapeMismatch`] if the two images differ in shape.
///
/// # Panics
/// If an image is empty or `upsample_factor` is zero.
pub fn register_translation(
    frame: ArrayView2<'_, f32>,
    template: ArrayView2<'_, f32>,
    upsample_factor: usize,
    window: &SearchWindow,
) -> Result<Registration> {
    if frame.dim() != template.dim() {
        return Err(Error::ShapeMismatch {
            what: "frame vs template",
            expected: vec![template.nrows(), template.ncols()],
            got: vec![frame.nrows(), frame.ncols()],
        });
    }
    let mut reg = Registrar::<f64>::new([frame.nrows(), frame.ncols()], upsample_factor);
    let spec = reg.spectrum(template, 0.0);
    reg.register(frame, 0.0, &spec, window)
}

/// Result of a volumetric registration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Registration3 {
    /// Content displacement per axis (same convention as [`Registration::shift`]).
    pub shift: [f64; 3],
    /// Phase of the cross-correlation at its maximum.
    pub phasediff: f64,
}

/// Volumetric (rigid) registration: CaImAn's `register_translation_3d` with the symmetric
/// window of this module. Plans, the template spectrum and scratch are held here.
#[derive(Debug)]
pub struct VolumeRegistrar {
    shape: [usize; 3],
    upsample: usize,
    fft: Fft3d,
    template: Array3<Complex64>,
    frame_spec: Array3<Complex64>,
    work: Array3<Complex64>,
}

impl VolumeRegistrar {
    /// Plans for `template + offset` (shape `[d0, d1, d2]`), sub-pixel resolution
    /// `1/upsample_factor`.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty volume; [`Error::NonFinite`] for a template with NaN/inf.
    ///
    /// # Panics
    /// If `upsample_factor` is zero.
    pub fn new(template: ArrayView3<'_, f32>, offset: f64, upsample_factor: usize) -> Result<Self> {
        assert!(upsample_factor >= 1, "upsample_factor must be ≥ 1");
        let shape: [usize; 3] = template.dim().into();
        if shape.contains(&0) {
            return Err(Error::Empty { what: "template volume" });
        }
        if template.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "template volume" });
        }
        let mut fft = Fft3d::new(shape);
        let mut tspec = Array3::zeros(shape);
        fft.forward(template, offset, tspec.view_mut());
        Ok(Self {
            shape,
            upsample: upsample_factor,
            fft,
            template: tspec,
            frame_spec: Array3::zeros(shape),
            work: Array3::zeros(shape),
        })
    }

    /// The spectrum of the last registered volume (`vol + offset`, unnormalised).
    pub fn frame_spectrum(&self) -> &Array3<Complex64> {
        &self.frame_spec
    }

    /// Registers `vol + offset` against the template; `max_shifts` bounds the integer search
    /// symmetrically per axis (`−m … m`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`].
    pub fn register(&mut self, vol: ArrayView3<'_, f32>, offset: f64, max_shifts: [usize; 3]) -> Result<Registration3> {
        let bounds = std::array::from_fn(|axis| {
            let (n, m) = (self.shape[axis], max_shifts[axis]);
            if 2 * m >= n { (0, n as i64 - 1) } else { (-(m as i64), m as i64) }
        });
        self.register_bounded(vol, offset, bounds)
    }

    /// Registers `vol + offset` with the integer search limited to `lower … upper` (inclusive)
    /// per axis, as patches are registered around the rigid shift (the whole axis when the range
    /// covers it).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`].
    ///
    /// # Panics
    /// If `lower > upper` on some axis.
    pub fn register_bounded(
        &mut self,
        vol: ArrayView3<'_, f32>,
        offset: f64,
        bounds: [(i64, i64); 3],
    ) -> Result<Registration3> {
        let shape: [usize; 3] = vol.dim().into();
        if shape != self.shape {
            return Err(Error::ShapeMismatch {
                what: "volume vs template",
                expected: self.shape.to_vec(),
                got: shape.to_vec(),
            });
        }
        self.fft.forward(vol, offset, self.frame_spec.view_mut());
        ndarray::Zip::from(&mut self.work)
            .and(&self.frame_spec)
            .and(&self.template)
            .for_each(|p, f, g| *p = f * g.conj());
        let product = self.work.clone();
        self.fft.transform(self.work.view_mut(), false);
        let mut lags: [Vec<(usize, i64)>; 3] = Default::default();
        for axis in 0..3 {
            let (lo, hi) = bounds[axis];
            assert!(lo <= hi, "VolumeRegistrar: lower {lo} > upper {hi} on axis {axis}");
            allowed_lags(self.shape[axis], lo, hi, &mut lags[axis]);
        }
        let mut best = -1.0;
        let mut s = None;
        for &(k0, s0) in &lags[0] {
            for &(k1, s1) in &lags[1] {
                for &(k2, s2) in &lags[2] {
                    let v = self.work[[k0, k1, k2]].norm();
                    if v > best {
                        best = v;
                        s = Some([s0, s1, s2]);
                    }
                }
            }
        }
        let s = match s {
            Some(s) if best.is_finite() => s,
            _ => return Err(Error::NonFinite { what: "volume or template (cross-correlation)" }),
        };
        let mut reg = if self.upsample > 1 {
            refine_3d(&product, s, self.upsample)
        } else {
            Registration3 { shift: s.map(|v| v as f64), phasediff: 0.0 }
        };
        for axis in 0..3 {
            if self.shape[axis] == 1 {
                reg.shift[axis] = 0.0;
            }
        }
        Ok(reg)
    }
}

/// Local upsampled DFT of a full 3-D cross-power spectrum around the integer peak `s`.
fn refine_3d(product: &Array3<Complex64>, s: [i64; 3], u: usize) -> Registration3 {
    let (region, dftshift) = upsampled_region(u);
    let shape: [usize; 3] = product.dim().into();
    let kernels: Vec<ndarray::Array2<Complex64>> = (0..3)
        .map(|axis| {
            let ax = AxisDft::<f64>::new(shape[axis], u);
            let mut k = vec![Complex64::new(0.0, 0.0); region * shape[axis]];
            ax.kernel(s[axis], &mut k);
            ndarray::Array2::from_shape_vec((region, shape[axis]), k).expect("kernel shape")
        })
        .collect();
    // CC[a,b,c] = Σ R[k0,k1,k2] E0[a,k0] E1[b,k1] E2[c,k2], contracted one axis at a time.
    let mut t2 = Array3::<Complex64>::zeros((shape[0], shape[1], region));
    for ((i, j, c), v) in t2.indexed_iter_mut() {
        let lane = product.slice(ndarray::s![i, j, ..]);
        *v = lane.iter().zip(kernels[2].row(c)).map(|(x, e)| x * e).sum();
    }
    let mut t1 = Array3::<Complex64>::zeros((shape[0], region, region));
    for ((i, b, c), v) in t1.indexed_iter_mut() {
        let lane = t2.slice(ndarray::s![i, .., c]);
        *v = lane.iter().zip(kernels[1].row(b)).map(|(x, e)| x * e).sum();
    }
    let mut best = -1.0;
    let mut arg = [0usize; 3];
    let mut ccmax = Complex64::new(f64::NEG_INFINITY, 0.0);
    for a in 0..region {
        for b in 0..region {
            for c in 0..region {
                let lane = t1.slice(ndarray::s![.., b, c]);
                let z: Complex64 = lane.iter().zip(kernels[0].row(a)).map(|(x, e)| x * e).sum();
                let m = z.norm();
                if m > best {
                    best = m;
                    arg = [a, b, c];
                }
                if z.re > ccmax.re || (z.re == ccmax.re && z.im > ccmax.im) {
                    ccmax = z;
                }
            }
        }
    }
    let uf = u as f64;
    let d = dftshift as f64;
    Registration3 {
        shift: [0, 1, 2].map(|i| s[i] as f64 + (arg[i] as f64 - d) / uf),
        phasediff: ccmax.im.atan2(ccmax.re),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_sizes_match_caiman() {
        assert_eq!(upsampled_region(10), (15, 7));
        assert_eq!(upsampled_region(1), (2, 1));
        assert_eq!(upsampled_region(4), (6, 3));
        assert_eq!(upsampled_region(5), (8, 4));
    }

    #[test]
    fn lags_symmetric_and_bounded() {
        let mut v = Vec::new();
        allowed_lags(10, -2, 2, &mut v);
        assert_eq!(v, [(0, 0), (1, 1), (2, 2), (8, -2), (9, -1)]);
        allowed_lags(10, 1, 3, &mut v);
        assert_eq!(v, [(1, 1), (2, 2), (3, 3)]);
        allowed_lags(10, -5, -3, &mut v);
        assert_eq!(v, [(5, -5), (6, -4), (7, -3)]);
        allowed_lags(4, -3, 3, &mut v);
        assert_eq!(v, [(0, 0), (1, 1), (2, 2), (3, -1)]);
    }
}
