//! The dense per-frame work of OnACID, split into column strips that run on the explicit
//! inner-parallelism argument [`caiman_parallel::Par`]: the residual of the new frame, its running
//! mean and variance, the residual buffers (`Yres_buf`, `mean_buff`), the blurred squared positive
//! residual (`rho`) and its running sum `sv`, the score image `G(sv) − Box(sv)`, its maximum
//! filter and the peak candidates (`peak_local_max`).
//!
//! Each pass visits every pixel once, fusing what CaImAn does in separate whole-image operations,
//! and works column by column (Fortran order: a column of `d1` pixels is contiguous), so that a
//! strip of columns stays in cache. Four passes per frame, separated by the only true
//! dependencies (the filters read neighbouring columns):
//! 1. residual, `mn`/`vr`, `mean_buff`, `Yres_buf`, and the axis-0 blur of `max(res, 0)`;
//! 2. the axis-1 blur, squared (`rho`, written into `rho_buf`), `sv`, and the axis-0 Gaussian and
//!    box filters of `sv` (as f32);
//! 3. the axis-1 Gaussian and box filters (the score) and the axis-0 maximum filter;
//! 4. the axis-1 maximum filter and the peaks of each strip, merged in pixel order.
//!
//! Every value is computed by the same per-column code whatever the strip size or the number of
//! threads, so results are bit-identical for any degree of `Par`. The arithmetic per pixel is that
//! of [`crate::filters::Separable`] and [`crate::filters::MaxFilter`] (same taps, same order of
//! operations), except the box filter along axis 1: a direct sum of the `n` columns (f32) instead
//! of a running sum across the whole image (which is sequential by nature and accumulates
//! rounding drift). The loops are compiled twice, plain and for AVX2 (chosen at run time); without
//! fused multiply-adds both give the same bits.
//!
//! Not here: the search itself (rank-1 NMF, tests) and the local updates after a component is
//! added, which touch a window only (see `onacid.rs`).

use caiman_parallel::Par;

use crate::filters::gaussian_kernel;
use crate::onacid::Comp;

/// Columns per strip (the unit of work given to a thread).
const STRIP: usize = 16;

/// Splits `n` elements off the front of `s` (fewer if `s` is shorter).
fn take<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let n = n.min(s.len());
    let (a, b) = std::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// Kernels, intermediate images and per-strip scratch of the detection passes.
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    k: Kernels,
    blur0: Vec<f32>,
    g0: Vec<f32>,
    b0: Vec<f32>,
    /// The score image of the last frame (`G(sv) − Box(sv)`).
    score: Vec<f32>,
    max0: Vec<f32>,
    pads: Vec<Vec<f32>>,
    peaks: Vec<Vec<(f32, usize)>>,
}

/// What pass 1 reads besides its strip.
pub(crate) struct ResidualInput<'a> {
    /// The new frame.
    pub(crate) y: &'a [f32],
    /// The components (`Ab`, supports sorted).
    pub(crate) comps: &'a [Comp],
    /// `C_on[:, t]` of the components.
    pub(crate) c: &'a [f32],
    /// Running-moment weights `(t − 1)/t` and `1/t`.
    pub(crate) w_old: f64,
    pub(crate) w_new: f64,
    /// Number of buffered residual frames.
    pub(crate) mbs: f64,
}

/// The state pass 1 updates (whole images; `mean`, `yres` empty when detection is off).
pub(crate) struct ResidualState<'a> {
    pub(crate) res: &'a mut [f32],
    pub(crate) mn: &'a mut [f64],
    pub(crate) vr: &'a mut [f64],
    pub(crate) mean: &'a mut [f32],
    /// The slot of `Yres_buf` about to be overwritten (holds the oldest frame on entry).
    pub(crate) yres: &'a mut [f32],
}

struct PartA<'a> {
    p0: usize,
    res: &'a mut [f32],
    mn: &'a mut [f64],
    vr: &'a mut [f64],
    mean: &'a mut [f32],
    yres: &'a mut [f32],
    blur0: &'a mut [f32],
    pad: &'a mut [f32],
}

struct PartB<'a> {
    j0: usize,
    rho_new: &'a mut [f32],
    rho_next: &'a [f32],
    sv: &'a mut [f64],
    g0: &'a mut [f32],
    b0: &'a mut [f32],
    pad: &'a mut [f32],
}

struct PartC<'a> {
    j0: usize,
    score: &'a mut [f32],
    max0: &'a mut [f32],
    pad: &'a mut [f32],
}

struct PartE<'a> {
    j0: usize,
    score: &'a [f32],
    pad: &'a mut [f32],
    peaks: &'a mut Vec<(f32, usize)>,
}

/// Inserts `(v, p)` into `best` (decreasing values, ties in insertion order), keeping `n`.
fn insert_peak(best: &mut Vec<(f32, usize)>, n: usize, v: f32, p: usize) {
    if best.len() == n && v <= best[n - 1].0 {
        return;
    }
    let pos = best.partition_point(|&(b, _)| b >= v);
    best.insert(pos, (v, p));
    best.truncate(n);
}

/// Runs `$body` (a function generic in nothing, `#[inline(always)]`) compiled for AVX2 when the
/// CPU has it, else as compiled for the baseline.
macro_rules! dispatch {
    ($avx:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        dispatch!($avx, $body, ($($arg: $ty),*) -> ());
    };
    ($avx:ident, $body:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
    };
}

impl Detector {
    /// Kernels for frames of `d1 × d2` pixels: the blur of `imblur` (`gSig`, `gSiz`, zero border),
    /// the score Gaussian and box of size `ksize` (replicate border) and the maximum filter of
    /// half-width `r`, with OpenCV's axis conventions (see [`crate::filters::Separable`]).
    pub(crate) fn new(d1: usize, d2: usize, gsig: [f64; 2], gsiz: [usize; 2], ksize: [usize; 2], r: usize) -> Self {
        let d = d1 * d2;
        let bk0 = gaussian_kernel(gsiz[1], gsig[1]);
        let bk1 = gaussian_kernel(gsiz[0], gsig[0]);
        let gk0 = gaussian_kernel(ksize[1], gsig[1]);
        let gk1 = gaussian_kernel(ksize[0], gsig[0]);
        let (bn0, bn1) = (ksize[1], ksize[0]);
        let half = [bk0.len(), gk0.len(), bn0, 2 * r + 1].into_iter().max().unwrap_or(1);
        let strips = d2.div_ceil(STRIP);
        Detector {
            k: Kernels { d1, d2, bk0, bk1, gk0, gk1, bn0, bn1, r },
            blur0: vec![0.0; d],
            g0: vec![0.0; d],
            b0: vec![0.0; d],
            score: vec![0.0; d],
            max0: vec![0.0; d],
            pads: vec![vec![0.0; d1 + 2 * half + 2]; strips],
            peaks: vec![Vec::new(); strips],
        }
    }

    /// Pass 1: `res = y − Ab·c`, the running mean and variance of the residual and, when
    /// `detect`, `mean_buff += (res − oldest)/mbs`, the buffer slot ← `res`, and the axis-0 blur
    /// of `max(res, 0)`.
    pub(crate) fn residual(&mut self, par: Par, inp: &ResidualInput<'_>, st: ResidualState<'_>, detect: bool) {
        let d1 = self.k.d1;
        let n = STRIP * d1;
        let ResidualState { mut res, mut mn, mut vr, mut mean, mut yres } = st;
        let mut blur0: &mut [f32] = &mut self.blur0;
        let mut parts = Vec::with_capacity(self.pads.len());
        for (s, pad) in self.pads.iter_mut().enumerate() {
            parts.push(PartA {
                p0: s * n,
                res: take(&mut res, n),
                mn: take(&mut mn, n),
                vr: take(&mut vr, n),
                mean: take(&mut mean, n),
                yres: take(&mut yres, n),
                blur0: take(&mut blur0, n),
                pad,
            });
        }
        let k = &self.k.bk0;
        par.for_each_chunk_mut(&mut parts, 1, |_, p| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { pass_a_avx(&mut p[0], inp, k, d1, detect) };
                return;
            }
            pass_a(&mut p[0], inp, k, d1, detect);
        });
    }

    /// Passes 2–4: `rho` of the residual into `rho_new` (the slot of `rho_buf` being
    /// overwritten), `sv = max(sv + rho − rho_next, 0)` with `rho_next` the oldest frame after the
    /// push, the score image, and its `n_peaks` highest local maxima above 0 into `out`
    /// (`(row, col)`, by decreasing score, ties in pixel order). With `want_peaks` false, only
    /// `rho` and `sv` are updated (CaImAn's `use_peak_max = False` takes the arg-max of `sv`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn score_and_peaks(
        &mut self,
        par: Par,
        rho_new: &mut [f32],
        rho_next: &[f32],
        sv: &mut [f64],
        want_peaks: bool,
        n_peaks: usize,
        out: &mut Vec<(usize, usize)>,
    ) {
        let (d1, d2) = (self.k.d1, self.k.d2);
        let n = STRIP * d1;
        // Pass 2.
        {
            let (mut rn, mut rx, mut svs) = (rho_new, rho_next, sv);
            let (mut g0, mut b0): (&mut [f32], &mut [f32]) = (&mut self.g0, &mut self.b0);
            let mut parts = Vec::with_capacity(self.pads.len());
            for (s, pad) in self.pads.iter_mut().enumerate() {
                let (a, b) = rx.split_at(n.min(rx.len()));
                rx = b;
                parts.push(PartB {
                    j0: s * STRIP,
                    rho_new: take(&mut rn, n),
                    rho_next: a,
                    sv: take(&mut svs, n),
                    g0: take(&mut g0, n),
                    b0: take(&mut b0, n),
                    pad,
                });
            }
            let this = &self.k;
            let blur0 = &self.blur0;
            par.for_each_chunk_mut(&mut parts, 1, |_, p| {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { pass_b_avx(&mut p[0], this, blur0, want_peaks) };
                    return;
                }
                pass_b(&mut p[0], this, blur0, want_peaks);
            });
        }
        out.clear();
        if !want_peaks || n_peaks == 0 {
            return;
        }
        // Pass 3.
        {
            let (mut sc, mut mx): (&mut [f32], &mut [f32]) = (&mut self.score, &mut self.max0);
            let mut parts = Vec::with_capacity(self.pads.len());
            for (s, pad) in self.pads.iter_mut().enumerate() {
                parts.push(PartC { j0: s * STRIP, score: take(&mut sc, n), max0: take(&mut mx, n), pad });
            }
            let this = &self.k;
            let (g0, b0) = (&self.g0, &self.b0);
            par.for_each_chunk_mut(&mut parts, 1, |_, p| {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { pass_c_avx(&mut p[0], this, g0, b0) };
                    return;
                }
                pass_c(&mut p[0], this, g0, b0);
            });
        }
        // Pass 4.
        {
            let mut parts = Vec::with_capacity(self.pads.len());
            let mut sc: &[f32] = &self.score;
            for ((s, pad), peaks) in self.pads.iter_mut().enumerate().zip(self.peaks.iter_mut()) {
                let (a, b) = sc.split_at(n.min(sc.len()));
                sc = b;
                parts.push(PartE { j0: s * STRIP, score: a, pad, peaks });
            }
            let max0 = &self.max0;
            let (r, np) = (self.k.r, n_peaks);
            par.for_each_chunk_mut(&mut parts, 1, |_, p| {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { pass_e_avx(&mut p[0], max0, d1, d2, r, np) };
                    return;
                }
                pass_e(&mut p[0], max0, d1, d2, r, np);
            });
        }
        // Strips are in pixel order: merging them in order keeps ties in pixel order.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(n_peaks + 1);
        for peaks in &self.peaks {
            for &(v, p) in peaks {
                insert_peak(&mut best, n_peaks, v, p);
            }
        }
        out.extend(best.into_iter().map(|(_, p)| (p % d1, p / d1)));
    }

    /// The score image of the last frame for which peaks were searched.
    #[cfg(test)]
    pub(crate) fn score(&self) -> &[f32] {
        &self.score
    }
}

/// The kernels, shared read-only by the strips.
#[derive(Clone, Debug)]
struct Kernels {
    d1: usize,
    d2: usize,
    /// Blur of the positive residual (zero border): taps along axis 0 and axis 1.
    bk0: Vec<f32>,
    bk1: Vec<f32>,
    /// Score Gaussian (replicate border).
    gk0: Vec<f32>,
    gk1: Vec<f32>,
    /// Box sizes along axis 0 and axis 1 (replicate border).
    bn0: usize,
    bn1: usize,
    /// Half-width of the maximum filter.
    r: usize,
}

dispatch!(pass_a_avx, pass_a, (p: &mut PartA<'_>, inp: &ResidualInput<'_>, k: &[f32], d1: usize, detect: bool));
dispatch!(pass_b_avx, pass_b, (p: &mut PartB<'_>, kr: &Kernels, blur0: &[f32], want: bool));
dispatch!(pass_c_avx, pass_c, (p: &mut PartC<'_>, kr: &Kernels, g0: &[f32], b0: &[f32]));
dispatch!(pass_e_avx, pass_e, (p: &mut PartE<'_>, max0: &[f32], d1: usize, d2: usize, r: usize, np: usize));

/// Most taps a filter may have for the register-blocked loops (longer kernels take the plain
/// loop, with the same result).
const MAX_TAPS: usize = 64;
/// Unit weights (the box filter's sum).
const ONES: [f32; MAX_TAPS] = [1.0; MAX_TAPS];
/// Pixels per register block.
const LANES: usize = 16;

/// `out[i] = (…((0 + w[0]·src[0][i]) + w[1]·src[1][i]) + …)`, the taps accumulated in this
/// order for every pixel (the order of `out.fill(0); out += w[k]·src[k]`), in register blocks.
#[inline(always)]
fn weighted_sum(src: &[&[f32]], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    let mut blocks = out.chunks_exact_mut(LANES);
    for (b, o) in (&mut blocks).enumerate() {
        let i = b * LANES;
        let mut acc = [0f32; LANES];
        for (s, &wk) in src.iter().zip(w) {
            let s = &s[i..i + LANES];
            for l in 0..LANES {
                acc[l] += wk * s[l];
            }
        }
        o.copy_from_slice(&acc);
    }
    let i0 = n - blocks.into_remainder().len();
    for i in i0..n {
        let mut a = 0f32;
        for (s, &wk) in src.iter().zip(w) {
            a += wk * s[i];
        }
        out[i] = a;
    }
}

/// `out[i] = max_k src[k][i]` (taps in order), in register blocks.
#[inline(always)]
fn max_of(src: &[&[f32]], out: &mut [f32]) {
    let n = out.len();
    let mut blocks = out.chunks_exact_mut(LANES);
    for (b, o) in (&mut blocks).enumerate() {
        let i = b * LANES;
        let mut acc = [0f32; LANES];
        acc.copy_from_slice(&src[0][i..i + LANES]);
        for s in &src[1..] {
            let s = &s[i..i + LANES];
            for l in 0..LANES {
                acc[l] = acc[l].max(s[l]);
            }
        }
        o.copy_from_slice(&acc);
    }
    let i0 = n - blocks.into_remainder().len();
    for i in i0..n {
        out[i] = src[1..].iter().fold(src[0][i], |a, s| a.max(s[i]));
    }
}

/// [`weighted_sum`] over up to [`MAX_TAPS`] sources given by `get(k)`, else the plain loop.
#[inline(always)]
fn weighted_sum_by<'a>(taps: usize, get: impl Fn(usize) -> &'a [f32], w: &[f32], out: &mut [f32]) {
    if taps <= MAX_TAPS {
        let mut src: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
        for (k, s) in src.iter_mut().enumerate().take(taps) {
            *s = get(k);
        }
        weighted_sum(&src[..taps], w, out);
    } else {
        out.fill(0.0);
        for (k, &wk) in w.iter().enumerate().take(taps) {
            out.iter_mut().zip(get(k)).for_each(|(o, &v)| *o += wk * v);
        }
    }
}

/// [`max_of`] over up to [`MAX_TAPS`] sources given by `get(k)`, else the plain loop.
#[inline(always)]
fn max_by<'a>(taps: usize, get: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    if taps <= MAX_TAPS {
        let mut src: [&[f32]; MAX_TAPS] = [&[]; MAX_TAPS];
        for (k, s) in src.iter_mut().enumerate().take(taps) {
            *s = get(k);
        }
        max_of(&src[..taps], out);
    } else {
        out.copy_from_slice(&get(0)[..out.len()]);
        for k in 1..taps {
            out.iter_mut().zip(get(k)).for_each(|(o, &v)| *o = o.max(v));
        }
    }
}

/// `out[i] = (Σ_{k<n} pad[i + k] as f64) as f32 · wb` (a box along a padded column).
#[inline(always)]
fn box_column(pad: &[f32], n: usize, wb: f32, out: &mut [f32]) {
    const L: usize = 8;
    let len = out.len();
    let mut blocks = out.chunks_exact_mut(L);
    for (b, o) in (&mut blocks).enumerate() {
        let i = b * L;
        let mut acc = [0f64; L];
        for k in 0..n {
            let s = &pad[i + k..i + k + L];
            for l in 0..L {
                acc[l] += f64::from(s[l]);
            }
        }
        for l in 0..L {
            o[l] = (acc[l] as f32) * wb;
        }
    }
    let i0 = len - blocks.into_remainder().len();
    for i in i0..len {
        let a: f64 = pad[i..i + n].iter().map(|&v| f64::from(v)).sum();
        out[i] = (a as f32) * wb;
    }
}

/// `out = Σ_k w[k]·pad[k..k + len]` (OpenCV's axis-0 correlation of a padded column).
#[inline(always)]
fn correlate_column(pad: &[f32], w: &[f32], out: &mut [f32]) {
    let len = out.len();
    weighted_sum_by(w.len(), |k| &pad[k..k + len], w, out);
}

#[inline(always)]
fn pass_a(p: &mut PartA<'_>, inp: &ResidualInput<'_>, k: &[f32], d1: usize, detect: bool) {
    let (p0, p1) = (p.p0, p.p0 + p.res.len());
    let res = &mut *p.res;
    res.copy_from_slice(&inp.y[p0..p1]);
    for (col, &c) in inp.comps.iter().zip(inp.c) {
        let (idx, val) = (&col.idx[..], &col.val[..]);
        if c == 0.0 || idx.is_empty() {
            continue;
        }
        let nc = -c;
        if idx.len() == inp.y.len() {
            res.iter_mut().zip(&val[p0..p1]).for_each(|(o, &v)| *o += nc * v);
            continue;
        }
        if idx[0] as usize >= p1 || (idx[idx.len() - 1] as usize) < p0 {
            continue;
        }
        let a = idx.partition_point(|&q| (q as usize) < p0);
        let b = idx.partition_point(|&q| (q as usize) < p1);
        for (&q, &v) in idx[a..b].iter().zip(&val[a..b]) {
            res[q as usize - p0] += nc * v;
        }
    }
    let (w_old, w_new) = (inp.w_old, inp.w_new);
    for ((mn, vr), &r) in p.mn.iter_mut().zip(p.vr.iter_mut()).zip(res.iter()) {
        let r = f64::from(r);
        let old = *mn;
        *mn = w_old * old + w_new * r;
        *vr = w_old * *vr + w_new * (r - old) * (r - *mn);
    }
    if !detect {
        return;
    }
    let mbs = inp.mbs;
    for ((m, &r), o) in p.mean.iter_mut().zip(res.iter()).zip(p.yres.iter_mut()) {
        *m += ((f64::from(r) - f64::from(*o)) / mbs) as f32;
        *o = r;
    }
    let h = k.len() / 2;
    for (col, out) in res.chunks_exact(d1).zip(p.blur0.chunks_exact_mut(d1)) {
        p.pad[..h].fill(0.0);
        p.pad[h + d1..2 * h + d1].fill(0.0);
        p.pad[h..h + d1].iter_mut().zip(col).for_each(|(q, &v)| *q = v.max(0.0));
        correlate_column(&p.pad[..2 * h + d1], k, out);
    }
}

#[inline(always)]
fn pass_b(p: &mut PartB<'_>, kr: &Kernels, blur0: &[f32], want: bool) {
    let (d1, d2) = (kr.d1, kr.d2);
    let h1 = kr.bk1.len() / 2;
    let hg = kr.gk0.len() / 2;
    let hb = kr.bn0 / 2;
    let wb = 1.0 / kr.bn0 as f32;
    let ncols = p.rho_new.len() / d1;
    for c in 0..ncols {
        let j = p.j0 + c;
        let out = &mut p.rho_new[c * d1..(c + 1) * d1];
        // Zero border: taps outside the image are skipped (not added as zeros).
        let k0 = h1.saturating_sub(j);
        let k1 = (d2 + h1 - j).min(kr.bk1.len());
        let col = |k: usize| {
            let jj = j + k - h1;
            &blur0[jj * d1..(jj + 1) * d1]
        };
        weighted_sum_by(k1 - k0, |k| col(k + k0), &kr.bk1[k0..k1], out);
        out.iter_mut().for_each(|v| *v *= *v);
        let sv = &mut p.sv[c * d1..(c + 1) * d1];
        for ((s, &a), &b) in sv.iter_mut().zip(out.iter()).zip(&p.rho_next[c * d1..(c + 1) * d1]) {
            *s = (*s + f64::from(a) - f64::from(b)).max(0.0);
        }
        if !want {
            continue;
        }
        // img = sv as f32, replicate-padded; axis-0 Gaussian and box.
        let pad = &mut *p.pad;
        pad[hg..hg + d1].iter_mut().zip(sv.iter()).for_each(|(q, &v)| *q = v as f32);
        let (lo, hi) = (pad[hg], pad[hg + d1 - 1]);
        pad[..hg].fill(lo);
        pad[hg + d1..2 * hg + d1].fill(hi);
        correlate_column(&pad[..2 * hg + d1], &kr.gk0, &mut p.g0[c * d1..(c + 1) * d1]);
        // The box along axis 0: the window sum in f64 (exact for up to 2^29 terms of similar
        // magnitude, so equal to OpenCV's running sum up to f64 rounding), then the mean.
        let b0 = &mut p.b0[c * d1..(c + 1) * d1];
        if hb <= hg {
            box_column(&pad[hg - hb..hg + d1 + hb], 2 * hb + 1, wb, b0);
        } else {
            let col = &pad[hg..hg + d1];
            let at = |i: isize| -> f64 { f64::from(col[i.clamp(0, d1 as isize - 1) as usize]) };
            for (i, o) in b0.iter_mut().enumerate() {
                let s: f64 = (i as isize - hb as isize..=i as isize + hb as isize).map(at).sum();
                *o = (s as f32) * wb;
            }
        }
    }
}

#[inline(always)]
fn pass_c(p: &mut PartC<'_>, kr: &Kernels, g0: &[f32], b0: &[f32]) {
    let (d1, d2) = (kr.d1, kr.d2);
    let hg = kr.gk1.len() / 2;
    let hb = kr.bn1 / 2;
    let wb = 1.0 / kr.bn1 as f32;
    let r = kr.r;
    let clampj = |jj: isize| jj.clamp(0, d2 as isize - 1) as usize;
    let ncols = p.score.len() / d1;
    for c in 0..ncols {
        let j = (p.j0 + c) as isize;
        let out = &mut p.score[c * d1..(c + 1) * d1];
        let gcol = |k: usize| {
            let jj = clampj(j + k as isize - hg as isize);
            &g0[jj * d1..(jj + 1) * d1]
        };
        weighted_sum_by(kr.gk1.len(), gcol, &kr.gk1, out);
        let pad = &mut *p.pad;
        let acc = &mut pad[..d1];
        // The box: a plain sum of the columns (weights 1 are exact), then the mean.
        let bcol = |k: usize| {
            let jj = clampj(j + k as isize - hb as isize);
            &b0[jj * d1..(jj + 1) * d1]
        };
        if kr.bn1 <= MAX_TAPS {
            weighted_sum_by(kr.bn1, bcol, &ONES[..kr.bn1], acc);
        } else {
            acc.fill(0.0);
            for k in 0..kr.bn1 {
                acc.iter_mut().zip(bcol(k)).for_each(|(a, &v)| *a += v);
            }
        }
        out.iter_mut().zip(acc.iter()).for_each(|(o, &a)| *o -= a * wb);
        // Axis-0 maximum over a zero-padded column.
        pad[..r].fill(0.0);
        pad[r..r + d1].copy_from_slice(out);
        pad[r + d1..2 * r + d1].fill(0.0);
        let m = &mut p.max0[c * d1..(c + 1) * d1];
        max_by(2 * r + 1, |k| &pad[k..k + d1], m);
    }
}

#[inline(always)]
fn pass_e(p: &mut PartE<'_>, max0: &[f32], d1: usize, d2: usize, r: usize, np: usize) {
    p.peaks.clear();
    let ncols = p.score.len() / d1;
    for c in 0..ncols {
        let j = p.j0 + c;
        let (lo, hi) = (j.saturating_sub(r), (j + r).min(d2 - 1));
        let m = &mut p.pad[..d1];
        max_by(hi + 1 - lo, |k| &max0[(lo + k) * d1..(lo + k + 1) * d1], m);
        if j < r || j + r >= d2 {
            m.iter_mut().for_each(|o| *o = o.max(0.0));
        }
        let col = &p.score[c * d1..(c + 1) * d1];
        // Blocks without a pixel that could enter the list are rejected in bulk.
        for (b, (vs, ms)) in col.chunks(LANES).zip(m.chunks(LANES)).enumerate() {
            let thr = if p.peaks.len() == np { p.peaks[np - 1].0.max(0.0) } else { 0.0 };
            let hits: u32 = vs.iter().zip(ms).map(|(&v, &mx)| u32::from((v > thr) & (v == mx))).sum();
            if hits == 0 {
                continue;
            }
            for (l, (&v, &mx)) in vs.iter().zip(ms).enumerate() {
                if v > 0.0 && v == mx {
                    insert_peak(p.peaks, np, v, j * d1 + b * LANES + l);
                }
            }
        }
    }
}

/// Whether every value is finite (an integer OR over the exponent bits, so that it vectorises).
pub(crate) fn all_finite(x: &[f32]) -> bool {
    x.chunks(1024).all(|c| c.iter().fold(0u32, |a, v| a | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)) == 0)
}

/// Dot product of two f32 slices accumulated in f64 over 8 lanes (so that it vectorises).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += f64::from(x[k]) * f64::from(y[k]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

dispatch!(dot8_avx, dot8, (a: &[f32], b: &[f32]) -> f64);

/// `Σ a·b` (f64) of two images of `d1`-pixel columns: one partial sum per strip of columns
/// (8 lanes each), added in strip order — the same value for any degree of `par`.
pub(crate) fn strip_dot(par: Par, a: &[f32], b: &[f32], d1: usize) -> f64 {
    let n = STRIP * d1;
    let parts = par.map_indices(a.len().div_ceil(n), |s| {
        let (x, y) = (&a[s * n..((s + 1) * n).min(a.len())], &b[s * n..((s + 1) * n).min(b.len())]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { dot8_avx(x, y) };
        }
        dot8(x, y)
    });
    parts.into_iter().sum()
}

#[inline(always)]
fn scale_add(cy: &mut [f64], y: &[f32], w: f64, c: f64) {
    cy.iter_mut().zip(y).for_each(|(v, &x)| *v = *v * w + c * f64::from(x));
}

dispatch!(scale_add_avx, scale_add, (cy: &mut [f64], y: &[f32], w: f64, c: f64));

/// `cy = cy·w + c·y` element-wise (the lagged `CY` update of a full-support component), split
/// into strips of columns.
pub(crate) fn strip_scale_add(par: Par, cy: &mut [f64], y: &[f32], w: f64, c: f64, d1: usize) {
    let n = STRIP * d1;
    par.for_each_chunk_mut(cy, n, |s, chunk| {
        let ys = &y[s * n..s * n + chunk.len()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { scale_add_avx(chunk, ys, w, c) };
            return;
        }
        scale_add(chunk, ys, w, c);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::{Border, MaxFilter, Separable, peak_local_max};

    fn image(d1: usize, d2: usize, seed: usize) -> Vec<f32> {
        (0..d1 * d2).map(|p| (((p + seed) * 7919 % 1013) as f32 - 500.0) * 0.01).collect()
    }

    /// The passes against the whole-image reference filters (each checked against the direct
    /// 2-D correlation in `filters.rs`), for 1 and 2 threads and a width that is not a multiple
    /// of the strip.
    #[test]
    fn passes_equal_the_whole_image_filters_at_every_degree() {
        let (d1, d2) = (37, 2 * STRIP + 5);
        let d = d1 * d2;
        let (gsig, gsiz, ksize, r) = ([2.0, 1.5], [7, 5], [7, 9], 2);
        let y = image(d1, d2, 0);
        // Two components: a dense background and a sparse one spanning a strip boundary.
        let bg: Vec<f32> = (0..d).map(|p| 0.1 + (p % 5) as f32 * 0.01).collect();
        let bg_idx: Vec<u32> = (0..d as u32).collect();
        let nidx: Vec<u32> = (STRIP - 2..STRIP + 2).flat_map(|j| (3..9).map(move |i| (i + d1 * j) as u32)).collect();
        let nval: Vec<f32> = (0..nidx.len()).map(|s| 0.5 + s as f32 * 0.1).collect();
        let comps = [
            Comp { idx: bg_idx, val: bg.clone(), cy: Vec::new() },
            Comp { idx: nidx.clone(), val: nval.clone(), cy: Vec::new() },
        ];
        let c = [1.5f32, 2.0];
        // Reference: the whole-image kernels.
        let mut want_res = y.clone();
        want_res.iter_mut().zip(&bg).for_each(|(o, &v)| *o += -1.5 * v);
        for (&p, &v) in nidx.iter().zip(&nval) {
            want_res[p as usize] += -2.0 * v;
        }
        let mut blur = Separable::gaussian(d1, d2, gsig, gsiz, Border::Zero);
        let pos: Vec<f32> = want_res.iter().map(|v| v.max(0.0)).collect();
        let mut want_rho = vec![0f32; d];
        blur.apply(&pos, &mut want_rho);
        want_rho.iter_mut().for_each(|v| *v *= *v);
        let rho_next = image(d1, d2, 3).iter().map(|v| v.abs() * 0.1).collect::<Vec<_>>();
        let sv0: Vec<f64> = (0..d).map(|p| 1.0 + (p % 7) as f64 * 0.3).collect();
        let want_sv: Vec<f64> = sv0
            .iter()
            .zip(&want_rho)
            .zip(&rho_next)
            .map(|((&s, &a), &b)| (s + f64::from(a) - f64::from(b)).max(0.0))
            .collect();
        let img: Vec<f32> = want_sv.iter().map(|&v| v as f32).collect();
        let mut g = Separable::gaussian(d1, d2, gsig, ksize, Border::Replicate);
        let mut bx = Separable::boxcar(d1, d2, ksize, Border::Replicate);
        let (mut sg, mut sb) = (vec![0f32; d], vec![0f32; d]);
        g.apply(&img, &mut sg);
        bx.apply(&img, &mut sb);
        let want_score: Vec<f32> = sg.iter().zip(&sb).map(|(a, b)| a - b).collect();
        for n in [1, 2] {
            let par = Par::new(n);
            let mut det = Detector::new(d1, d2, gsig, gsiz, ksize, r);
            let (mut res, mut mn, mut vr) = (vec![0f32; d], vec![0f64; d], vec![0f64; d]);
            let (mut mean, mut yres) = (vec![0f32; d], vec![1f32; d]);
            let inp = ResidualInput { y: &y, comps: &comps, c: &c, w_old: 0.5, w_new: 0.5, mbs: 4.0 };
            let st = ResidualState { res: &mut res, mn: &mut mn, vr: &mut vr, mean: &mut mean, yres: &mut yres };
            det.residual(par, &inp, st, true);
            assert_eq!(res, want_res, "residual");
            assert_eq!(yres, want_res, "buffer slot");
            for p in 0..d {
                assert_eq!(mn[p], 0.5 * f64::from(want_res[p]));
                assert_eq!(mean[p], ((f64::from(want_res[p]) - 1.0) / 4.0) as f32);
            }
            let mut rho = vec![0f32; d];
            let mut sv = sv0.clone();
            let mut peaks = Vec::new();
            det.score_and_peaks(par, &mut rho, &rho_next, &mut sv, true, 4, &mut peaks);
            assert_eq!(rho, want_rho, "rho (bit-identical to Separable)");
            assert_eq!(sv, want_sv);
            for (a, b) in det.score().iter().zip(&want_score) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "score {a} vs {b}");
            }
            let mut maxf = MaxFilter::new(d1, d2, r);
            let mut maxed = vec![0f32; d];
            maxf.apply(det.score(), &mut maxed);
            let mut want_peaks = Vec::new();
            peak_local_max(det.score(), &maxed, d1, 0.0, 4, &mut want_peaks);
            assert!(!want_peaks.is_empty());
            assert_eq!(peaks, want_peaks, "peaks");
        }
    }
}
