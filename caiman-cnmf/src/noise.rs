//! Noise and AR-coefficient estimation: CaImAn's `deconvolution.GetSn`, `deconvolution.axcov`,
//! `deconvolution.estimate_time_constant` (trace level, used by `constrained_foopsi`) and
//! `pre_processing.get_noise_fft` (per-pixel noise of a movie, used by CNMF pre-processing):
//! the in-memory kernel [`get_noise_fft`] / [`NoiseFft`] and the streamed, executor-mapped
//! [`pixel_noise`] that reads a movie file band by band without loading it.
//!
//! Deliberate deviations from CaImAn:
//! * \[Q\] `estimate_time_constant` replaces AR roots `> 1` by `0.95 + N(0, 0.01)` and roots `< 0`
//!   by `0.15 + N(0, 0.01)`, drawing from numpy's *global* RNG after `np.random.seed(45)`. Here the
//!   replacement is deterministic: exactly `0.95` / `0.15` (before the fudge factor), no global
//!   state. Results agree with CaImAn whenever no root leaves `[0, 1]`, which is the normal case;
//!   otherwise the replaced root differs by CaImAn's noise draw (about 0.01).
//! * `get_noise_fft`: CaImAn's default `opencv=True` path runs `cv2.dft` in the movie's dtype
//!   (float32). Here the f32 samples are transformed in f64 — CaImAn's own result for a float64
//!   movie and for its numpy path. With `'mean'` the two differ by ~1e-6 relative; `'median'` and
//!   especially `'logmexp'` weight the smallest PSD bins, where the float32 DFT's relative error is
//!   large (up to ~1 % for `logmexp` on a movie with a baseline of 100), so the f64 result is the
//!   more accurate one.
//! * `get_noise_fft` checks for NaN/inf only among the frames it uses (CaImAn's `preprocess_data`
//!   rejects NaN anywhere in the movie beforehand); it returns a typed error instead of NaN, and an
//!   empty frequency band (movie too short) is an error rather than numpy's NaN mean. CaImAn's
//!   1-D branch (a single trace) crashes (`np.fliplr` on 1-D input); here a single trace is a
//!   1 × T block.
//! * `axcov` sums directly for small `maxlag` (a real FFT otherwise); lags `>= T` are exactly `0`
//!   (CaImAn's zero-padded FFT gives the same for every lag it can represent).
//! * Bad input (empty trace, NaN/inf, an empty frequency band) is a typed error instead of a NaN
//!   result or a numpy exception.
//!
//! `sn` values are f64 throughout (traces, blocks and images).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats::check_finite;

/// How the power spectral density values inside the noise band are averaged into a noise level
/// (CaImAn's `noise_method` / `method` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMethod {
    /// `sqrt(mean(psd / 2))` (CaImAn `'mean'`).
    Mean,
    /// `sqrt(median(psd / 2))` (CaImAn `'median'`; even counts average the two middle values).
    Median,
    /// `sqrt(exp(mean(log(psd / 2))))`, the geometric mean (CaImAn `'logmexp'`).
    #[default]
    Logmexp,
}

/// Checks a noise band `[lo, hi]`: finite, `0 <= lo < hi`.
fn check_noise_range(noise_range: [f64; 2]) -> Result<()> {
    let [lo, hi] = noise_range;
    if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo < hi) {
        return Err(Error::InvalidParam(format!("noise_range must be finite with 0 <= low < high, got [{lo}, {hi}]")));
    }
    Ok(())
}

/// Averages half-PSD values with `method` and takes the square root (CaImAn's `mean_psd` and the
/// lambdas of `GetSn`). `psd` holds the selected PSD values (not yet halved); `eps` is added to
/// every value before the logarithm (`1e-10` in `get_noise_fft`, `0` in `GetSn`). `psd` is
/// reordered by the median.
fn average_psd(psd: &mut [f64], method: NoiseMethod, eps: f64) -> f64 {
    let n = psd.len() as f64;
    match method {
        NoiseMethod::Mean => (psd.iter().map(|&p| p / 2.0).sum::<f64>() / n).sqrt(),
        NoiseMethod::Median => {
            let m = psd.len();
            let (_, &mut hi, _) = psd.select_nth_unstable_by(m / 2, f64::total_cmp);
            let med = if m % 2 == 1 {
                hi
            } else {
                let lo = psd[..m / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lo + hi) / 2.0
            };
            (med / 2.0).sqrt()
        }
        NoiseMethod::Logmexp => (psd.iter().map(|&p| ((p + eps) / 2.0).ln()).sum::<f64>() / n).exp().sqrt(),
    }
}

/// CaImAn's `GetSn(y, range_ff=noise_range, method)`: the noise standard deviation of a trace from
/// its Welch power spectral density (`scipy.signal.welch` defaults: periodic Hann window,
/// `nperseg = min(256, T)`, 50 % overlap, constant detrend, one-sided density scaling, fs = 1),
/// averaged over the frequencies strictly inside `(noise_range[0], noise_range[1])`.
///
/// # Errors
/// [`Error::Empty`] for an empty trace, [`Error::NonFinite`] for NaN/inf samples,
/// [`Error::InvalidParam`] for a bad `noise_range` or a band that holds no Welch frequency (trace
/// too short).
pub fn get_sn(y: &[f64], noise_range: [f64; 2], method: NoiseMethod) -> Result<f64> {
    check_finite(y, "trace")?;
    check_noise_range(noise_range)?;
    let nperseg = y.len().min(256);
    // scipy: freqs = rfftfreq(nperseg, 1.0), i.e. k * (1 / nperseg)
    let val = 1.0 / nperseg as f64;
    let mut sel: Vec<f64> = welch_psd(y)
        .into_iter()
        .enumerate()
        .filter(|&(k, _)| {
            let f = k as f64 * val;
            f > noise_range[0] && f < noise_range[1]
        })
        .map(|(_, p)| p)
        .collect();
    if sel.is_empty() {
        return Err(Error::InvalidParam(format!(
            "no Welch frequency strictly inside noise_range [{}, {}] for a trace of {} samples",
            noise_range[0],
            noise_range[1],
            y.len()
        )));
    }
    Ok(average_psd(&mut sel, method, 0.0))
}

/// Welch PSD estimate with scipy's defaults (see [`get_sn`]); returns `nperseg / 2 + 1` values.
fn welch_psd(y: &[f64]) -> Vec<f64> {
    let t = y.len();
    let nperseg = t.min(256);
    let noverlap = nperseg / 2;
    let step = nperseg - noverlap;
    let nseg = (t - noverlap) / step;
    // periodic Hann window (scipy.signal.get_window('hann', n), i.e. sym=False)
    let win: Vec<f64> =
        (0..nperseg).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / nperseg as f64).cos()).collect();
    let scale = 1.0 / win.iter().map(|w| w * w).sum::<f64>();
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(nperseg);
    let mut input = fft.make_input_vec();
    let mut spec = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let nf = nperseg / 2 + 1;
    let mut acc = vec![0.0; nf];
    for s in 0..nseg {
        let seg = &y[s * step..s * step + nperseg];
        let mean = seg.iter().sum::<f64>() / nperseg as f64;
        for ((x, &v), &w) in input.iter_mut().zip(seg).zip(&win) {
            *x = (v - mean) * w;
        }
        // the lengths are the planner's own, so this cannot fail
        if fft.process_with_scratch(&mut input, &mut spec, &mut scratch).is_err() {
            return vec![f64::NAN; nf];
        }
        for (a, c) in acc.iter_mut().zip(&spec) {
            *a += c.norm_sqr() * scale;
        }
    }
    let last = if nperseg.is_multiple_of(2) { nf - 1 } else { nf };
    for a in acc.iter_mut().take(last).skip(1) {
        *a *= 2.0;
    }
    for a in &mut acc {
        *a /= nseg as f64;
    }
    acc
}

/// Lags up to which [`axcov`] sums directly instead of using an FFT.
const AXCOV_DIRECT_MAX_LAG: usize = 64;

/// CaImAn's `axcov(y, maxlag)`: the biased autocovariance of the mean-removed trace,
/// `xc[l] = sum_t (y_t - m)(y_{t+|l|} - m) / T` at lags `l = -maxlag..=maxlag` (length
/// `2 * maxlag + 1`, lag 0 in the middle). Lags `>= T` are `0`. An empty trace gives NaNs (as
/// numpy's `0 / 0`).
pub fn axcov(y: &[f64], maxlag: usize) -> Vec<f64> {
    let t = y.len();
    let mut out = vec![0.0; 2 * maxlag + 1];
    if t == 0 {
        out.fill(f64::NAN);
        return out;
    }
    let mean = y.iter().sum::<f64>() / t as f64;
    let d: Vec<f64> = y.iter().map(|v| v - mean).collect();
    let kmax = maxlag.min(t - 1);
    let pos: Vec<f64> = if kmax <= AXCOV_DIRECT_MAX_LAG {
        (0..=kmax).map(|k| d[..t - k].iter().zip(&d[k..]).map(|(a, b)| a * b).sum::<f64>() / t as f64).collect()
    } else {
        let n = (2 * t - 1).next_power_of_two();
        let mut planner = realfft::RealFftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(n);
        let inv = planner.plan_fft_inverse(n);
        let mut buf = fwd.make_input_vec();
        buf[..t].copy_from_slice(&d);
        let mut spec = fwd.make_output_vec();
        let ok = fwd.process(&mut buf, &mut spec).is_ok();
        for c in &mut spec {
            *c = realfft::num_complex::Complex::new(c.norm_sqr(), 0.0);
        }
        let ok = ok && inv.process(&mut spec, &mut buf).is_ok();
        if !ok {
            return vec![f64::NAN; 2 * maxlag + 1];
        }
        buf[..=kmax].iter().map(|v| v / (n as f64 * t as f64)).collect()
    };
    for (k, &v) in pos.iter().enumerate() {
        out[maxlag + k] = v;
        out[maxlag - k] = v;
    }
    out
}

/// CaImAn's `estimate_time_constant(y, p, sn, lags, fudge_factor)`: AR(`p`) coefficients `g`
/// (length `p`) of a trace from its autocovariance, corrected for white noise of level `sn`.
///
/// With `L = lags + p` and `xc` = [`axcov`]`(y, L)` indexed by lag, `g` is the least-squares
/// (minimum-norm, as `numpy.linalg.lstsq`) solution of
/// `(Toeplitz(xc[0..L], xc[0..p]) - sn² I_{L×p}) g = xc[1..=L]`. The roots of
/// `z^p - g_1 z^{p-1} - … - g_p` are replaced by their real parts, roots `> 1` by exactly `0.95`
/// and roots `< 0` by exactly `0.15` (CaImAn adds `N(0, 0.01)` noise from a reseeded global RNG:
/// see the module doc), multiplied by `fudge_factor`, and `g` is rebuilt from them. `p = 0`
/// gives an empty vector.
///
/// # Errors
/// [`Error::Empty`] / [`Error::NonFinite`] for an empty or non-finite trace,
/// [`Error::InvalidParam`] for a negative or non-finite `sn` or a non-finite `fudge_factor`.
pub fn estimate_time_constant(y: &[f64], p: usize, sn: f64, lags: usize, fudge_factor: f64) -> Result<Vec<f64>> {
    check_finite(y, "trace")?;
    if !(sn.is_finite() && sn >= 0.0) {
        return Err(Error::InvalidParam(format!("sn must be finite and >= 0, got {sn}")));
    }
    if !fudge_factor.is_finite() {
        return Err(Error::InvalidParam(format!("fudge_factor must be finite, got {fudge_factor}")));
    }
    if p == 0 {
        return Ok(Vec::new());
    }
    let l = lags + p;
    let xc = axcov(y, l);
    let lag = |k: usize| xc[l + k];
    // A is L x p, row-major
    let mut a = vec![0.0; l * p];
    for i in 0..l {
        for j in 0..p {
            a[i * p + j] = lag(i.abs_diff(j)) - if i == j { sn * sn } else { 0.0 };
        }
    }
    let b: Vec<f64> = (1..=l).map(lag).collect();
    let g = lstsq_min_norm(&a, l, p, &b);
    let mut roots = ar_roots_real(&g);
    for r in &mut roots {
        if *r > 1.0 {
            *r = 0.95;
        } else if *r < 0.0 {
            *r = 0.15;
        }
        *r *= fudge_factor;
    }
    Ok(ar_from_roots(&roots))
}

/// Minimum-norm least-squares solution of `A x = b` (`A` is `m x n`, row-major) by a one-sided
/// Jacobi SVD, dropping singular values below `eps * max(m, n) * s_max` (numpy's `lstsq`
/// default `rcond`).
fn lstsq_min_norm(a: &[f64], m: usize, n: usize, b: &[f64]) -> Vec<f64> {
    // columns of U*S (m x n, column-major) and V (n x n, column-major)
    let mut u: Vec<f64> = (0..n).flat_map(|j| (0..m).map(move |i| (i, j))).map(|(i, j)| a[i * n + j]).collect();
    let mut v = vec![0.0; n * n];
    for j in 0..n {
        v[j * n + j] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for j in 0..n {
            for k in j + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (u[j * m + i], u[k * m + i]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for i in 0..m {
                    let (x, y) = (u[j * m + i], u[k * m + i]);
                    u[j * m + i] = c * x - s * y;
                    u[k * m + i] = s * x + c * y;
                }
                for i in 0..n {
                    let (x, y) = (v[j * n + i], v[k * n + i]);
                    v[j * n + i] = c * x - s * y;
                    v[k * n + i] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let sig: Vec<f64> = (0..n).map(|j| u[j * m..(j + 1) * m].iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
    let smax = sig.iter().copied().fold(0.0, f64::max);
    let cutoff = f64::EPSILON * m.max(n) as f64 * smax;
    let mut x = vec![0.0; n];
    for j in 0..n {
        if sig[j] <= cutoff || sig[j] == 0.0 {
            continue;
        }
        // coefficient = (u_j . b) / sigma_j^2 where u_j here is U_j * sigma_j
        let coef = u[j * m..(j + 1) * m].iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (sig[j] * sig[j]);
        for i in 0..n {
            x[i] += coef * v[j * n + i];
        }
    }
    x
}

/// Real parts of the roots of `z^p - g_1 z^{p-1} - … - g_p` (CaImAn's
/// `np.roots([1, -g…])` followed by `(gr + conj(gr)) / 2`).
fn ar_roots_real(g: &[f64]) -> Vec<f64> {
    match g.len() {
        0 => Vec::new(),
        1 => vec![g[0]],
        2 => {
            let disc = g[0] * g[0] + 4.0 * g[1];
            if disc >= 0.0 {
                let sq = disc.sqrt();
                // numerically stable pair
                let q = 0.5 * (g[0] + g[0].signum() * sq);
                if q == 0.0 { vec![0.0, 0.0] } else { vec![q, -g[1] / q] }
            } else {
                vec![g[0] / 2.0, g[0] / 2.0]
            }
        }
        _ => poly_roots_aberth(g).into_iter().map(|z| z.re).collect(),
    }
}

/// Roots of the monic polynomial `z^p - g_1 z^{p-1} - … - g_p` by Aberth–Ehrlich iteration.
fn poly_roots_aberth(g: &[f64]) -> Vec<realfft::num_complex::Complex<f64>> {
    use realfft::num_complex::Complex;
    let p = g.len();
    // coefficients, highest degree first
    let coef: Vec<f64> = std::iter::once(1.0).chain(g.iter().map(|v| -v)).collect();
    let eval = |z: Complex<f64>| {
        let mut f = Complex::new(0.0, 0.0);
        let mut df = Complex::new(0.0, 0.0);
        for &c in &coef {
            df = df * z + f;
            f = f * z + c;
        }
        (f, df)
    };
    // Cauchy bound for the initial circle
    let radius = 1.0 + g.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let mut z: Vec<Complex<f64>> = (0..p)
        .map(|k| Complex::from_polar(radius, 2.0 * std::f64::consts::PI * (k as f64 + 0.25) / p as f64))
        .collect();
    for _ in 0..500 {
        let mut moved = 0.0_f64;
        for i in 0..p {
            let (f, df) = eval(z[i]);
            if f == Complex::new(0.0, 0.0) {
                continue;
            }
            let ratio = f / df;
            let mut sum = Complex::new(0.0, 0.0);
            for j in 0..p {
                if j != i {
                    sum += (z[i] - z[j]).inv();
                }
            }
            let w = ratio / (Complex::new(1.0, 0.0) - ratio * sum);
            if w.is_finite() {
                z[i] -= w;
                moved = moved.max(w.norm() / z[i].norm().max(1e-300));
            }
        }
        if moved < 1e-15 {
            break;
        }
    }
    z
}

/// Coefficients `g` with `prod_i (z - r_i) = z^p - g_1 z^{p-1} - … - g_p` (CaImAn's
/// `-np.poly(roots)[1:]`).
fn ar_from_roots(roots: &[f64]) -> Vec<f64> {
    let mut c = vec![1.0];
    for &r in roots {
        let mut next = vec![0.0; c.len() + 1];
        for (i, &ci) in c.iter().enumerate() {
            next[i] += ci;
            next[i + 1] -= r * ci;
        }
        c = next;
    }
    c[1..].iter().map(|v| -v).collect()
}

// ---------------------------------------------------------------------------------------------
// Per-pixel noise of a movie: CaImAn's `pre_processing.get_noise_fft`.
// ---------------------------------------------------------------------------------------------

/// Options of [`get_noise_fft`] and [`pixel_noise`], with CaImAn's key names and the defaults
/// CNMF pre-processing uses (`preprocess_data`: `noise_range = [0.25, 0.5]`,
/// `noise_method = 'mean'`, `max_num_samples_fft = 3072`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoiseFftOptions {
    /// Frequency band `(low, high]` in cycles per frame whose PSD is averaged.
    pub noise_range: [f64; 2],
    /// How the PSD values in the band are averaged.
    pub noise_method: NoiseMethod,
    /// Movies longer than this use only three segments of about a third of it each.
    pub max_num_samples_fft: usize,
}

impl Default for NoiseFftOptions {
    fn default() -> Self {
        NoiseFftOptions { noise_range: [0.25, 0.5], noise_method: NoiseMethod::Mean, max_num_samples_fft: 3072 }
    }
}

/// Frame ranges `get_noise_fft` uses for a movie of `frames` frames, in the order they are
/// concatenated (CaImAn's slicing, Python semantics included):
/// all frames if `frames <= max_num_samples_fft`, otherwise with `m = max_num_samples_fft`
/// `[1, m//3 + 1)`, `[int(T//2 - m/6), int(T//2 + m/6))` and the last `ceil(m/3)` frames
/// (`Y[..., -m//3:]`; all frames when `m = 0`). Ranges may overlap (a frame is then used twice).
pub fn fft_sample_segments(frames: usize, max_num_samples_fft: usize) -> Vec<std::ops::Range<usize>> {
    let (t, m) = (frames, max_num_samples_fft);
    if t <= m {
        return std::iter::once(0..t).collect();
    }
    let clip = |a: usize, b: usize| a.min(t)..b.min(t).max(a.min(t));
    let half = m as f64 / 3.0 / 2.0;
    let mid = (t / 2) as f64;
    // Python int() truncates toward zero; both values are >= 0 here since T//2 >= m/2
    let (a, b) = ((mid - half).max(0.0) as usize, (mid + half) as usize);
    let k = m.div_ceil(3);
    vec![clip(1, m / 3 + 1), clip(a, b), if k == 0 { 0..t } else { t - k..t }]
}

/// The per-pixel kernel of `get_noise_fft` for movies of a fixed length: frame selection,
/// frequency band, FFT plan and buffers, built once and reused for every pixel (no allocation
/// per pixel).
///
/// For a pixel trace `y` (the used frames concatenated, `T'` samples) it computes the
/// unnormalised DFT `X_k` (in f64, from the f32 samples), `psd_k = 2 |X_k|² / T'` for the
/// frequencies `f_k = k · (1/T')` of CaImAn's grid `np.arange(0, 0.5 + 1/T', 1/T')` with
/// `noise_range[0] < f_k <= noise_range[1]`, and `sn` = `sqrt(mean(psd / 2))`,
/// `sqrt(median(psd / 2))` or `sqrt(exp(mean(log((psd + 1e-10) / 2))))`.
pub struct NoiseFft {
    opts: NoiseFftOptions,
    frames: usize,
    segments: Vec<std::ops::Range<usize>>,
    used: usize,
    /// rfft indices of the selected frequencies (CaImAn's full-DFT indices folded to `<= T'/2`).
    bins: Vec<usize>,
    fft: std::sync::Arc<dyn realfft::RealToComplex<f64>>,
    input: Vec<f64>,
    spec: Vec<realfft::num_complex::Complex<f64>>,
    scratch: Vec<realfft::num_complex::Complex<f64>>,
    psd: Vec<f64>,
}

impl std::fmt::Debug for NoiseFft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseFft")
            .field("opts", &self.opts)
            .field("frames", &self.frames)
            .field("segments", &self.segments)
            .field("used", &self.used)
            .field("bins", &self.bins.len())
            .finish()
    }
}

impl NoiseFft {
    /// Plans the kernel for pixel traces of `frames` samples.
    ///
    /// # Errors
    /// [`Error::Empty`] for `frames == 0`; [`Error::InvalidParam`] for a bad `noise_range` or when
    /// no frequency of the grid falls in the band (movie too short for the band).
    pub fn new(frames: usize, opts: &NoiseFftOptions) -> Result<Self> {
        if frames == 0 {
            return Err(Error::Empty { what: "movie frames" });
        }
        check_noise_range(opts.noise_range)?;
        let segments = fft_sample_segments(frames, opts.max_num_samples_fft);
        let used: usize = segments.iter().map(|r| r.len()).sum();
        if used == 0 {
            return Err(Error::InvalidParam(format!(
                "max_num_samples_fft = {} selects no frame of a {frames}-frame movie",
                opts.max_num_samples_fft
            )));
        }
        // ff = np.arange(0, 0.5 + 1/T', 1/T'): len = ceil((stop - start) / step), ff[k] = k * step
        let step = 1.0 / used as f64;
        let n_grid = ((0.5 + step) / step).ceil() as usize;
        let [lo, hi] = opts.noise_range;
        let mut bins = Vec::new();
        for k in 0..n_grid {
            let f = k as f64 * step;
            if f > lo && f <= hi {
                if k >= used {
                    // CaImAn would fail indexing the DFT with a longer mask
                    return Err(Error::InvalidParam(format!("a {used}-sample trace is too short for get_noise_fft")));
                }
                bins.push(if k <= used / 2 { k } else { used - k });
            }
        }
        if bins.is_empty() {
            return Err(Error::InvalidParam(format!(
                "no DFT frequency k/{used} in noise_range ({lo}, {hi}]: too few frames for the band"
            )));
        }
        let mut planner = realfft::RealFftPlanner::<f64>::new();
        let fft = planner.plan_fft_forward(used);
        let input = fft.make_input_vec();
        let spec = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        let psd = Vec::with_capacity(bins.len());
        Ok(NoiseFft { opts: *opts, frames, segments, used, bins, fft, input, spec, scratch, psd })
    }

    /// Frames per trace this kernel was planned for.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frame ranges used (see [`fft_sample_segments`]).
    pub fn segments(&self) -> &[std::ops::Range<usize>] {
        &self.segments
    }

    /// Number of samples the DFT runs over (`T'`, the total length of [`segments`](Self::segments)).
    pub fn used_frames(&self) -> usize {
        self.used
    }

    /// Number of PSD values averaged per pixel (selected frequencies).
    pub fn n_freqs(&self) -> usize {
        self.bins.len()
    }

    /// Fills `self.psd` from `self.input` (already holding the used samples).
    fn run_psd(&mut self) {
        // lengths are the planner's own: this cannot fail
        let ok = self.fft.process_with_scratch(&mut self.input, &mut self.spec, &mut self.scratch).is_ok();
        debug_assert!(ok);
        let scale = 2.0 / self.used as f64;
        self.psd.clear();
        self.psd.extend(self.bins.iter().map(|&k| self.spec[k].norm_sqr() * scale));
    }

    fn load_used(&mut self, used: &[f32]) -> Result<()> {
        if used.len() != self.used {
            return Err(Error::ShapeMismatch {
                what: "used samples of a pixel",
                expected: vec![self.used],
                got: vec![used.len()],
            });
        }
        for (x, &v) in self.input.iter_mut().zip(used) {
            if !v.is_finite() {
                return Err(Error::NonFinite { what: "movie" });
            }
            *x = v as f64;
        }
        Ok(())
    }

    fn load_trace(&mut self, trace: ndarray::ArrayView1<'_, f32>) -> Result<()> {
        if trace.len() != self.frames {
            return Err(Error::ShapeMismatch {
                what: "pixel trace",
                expected: vec![self.frames],
                got: vec![trace.len()],
            });
        }
        let mut pos = 0;
        for r in &self.segments {
            for &v in trace.slice(ndarray::s![r.clone()]) {
                if !v.is_finite() {
                    return Err(Error::NonFinite { what: "movie" });
                }
                self.input[pos] = v as f64;
                pos += 1;
            }
        }
        Ok(())
    }

    fn finish_sn(&mut self) -> f64 {
        average_psd(&mut self.psd, self.opts.noise_method, 1e-10)
    }

    /// Noise level of one pixel from its used samples (the [`segments`](Self::segments)
    /// concatenated, [`used_frames`](Self::used_frames) values).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a wrong length, [`Error::NonFinite`] for NaN/inf samples.
    pub fn sn_of_used(&mut self, used: &[f32]) -> Result<f64> {
        self.load_used(used)?;
        self.run_psd();
        Ok(self.finish_sn())
    }

    /// Noise level of one pixel from its whole trace ([`frames`](Self::frames) values, any
    /// stride).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a wrong length, [`Error::NonFinite`] for NaN/inf among the
    /// used samples.
    pub fn sn_of_trace(&mut self, trace: ndarray::ArrayView1<'_, f32>) -> Result<f64> {
        self.load_trace(trace)?;
        self.run_psd();
        Ok(self.finish_sn())
    }

    /// Like [`sn_of_trace`](Self::sn_of_trace), also writing the pixel's PSD values (CaImAn's
    /// `psdx` row, [`n_freqs`](Self::n_freqs) values, the factor 2 included) into `psd`.
    ///
    /// # Errors
    /// As [`sn_of_trace`](Self::sn_of_trace); [`Error::ShapeMismatch`] if `psd` has the wrong
    /// length.
    pub fn sn_psd_of_trace(&mut self, trace: ndarray::ArrayView1<'_, f32>, psd: &mut [f64]) -> Result<f64> {
        if psd.len() != self.bins.len() {
            return Err(Error::ShapeMismatch {
                what: "psd row",
                expected: vec![self.bins.len()],
                got: vec![psd.len()],
            });
        }
        self.load_trace(trace)?;
        self.run_psd();
        psd.copy_from_slice(&self.psd);
        Ok(self.finish_sn())
    }
}

/// CaImAn's `get_noise_fft(Y, noise_range, noise_method, max_num_samples_fft)` on an in-memory
/// block of pixel traces: `y` is pixels × T (one row per pixel, any layout); returns `sn` per
/// pixel (f64, in row order). See [`NoiseFft`] for the computation.
///
/// CaImAn's default `opencv=True` computes the DFT in the input dtype (float32 for movies); here
/// the f32 samples are transformed in f64, which is CaImAn's result on a float64 movie (the
/// difference is of order 1e-6 relative, `get_noise_fft_summary.json`).
///
/// # Errors
/// [`Error::Empty`] for no pixel or no frame, [`Error::NonFinite`] for NaN/inf among the used
/// samples, [`Error::InvalidParam`] as [`NoiseFft::new`].
pub fn get_noise_fft(y: ndarray::ArrayView2<'_, f32>, opts: &NoiseFftOptions) -> Result<Vec<f64>> {
    if y.nrows() == 0 {
        return Err(Error::Empty { what: "pixels" });
    }
    let mut k = NoiseFft::new(y.ncols(), opts)?;
    y.rows().into_iter().map(|row| k.sn_of_trace(row)).collect()
}

/// [`get_noise_fft`] that also returns CaImAn's second output, the PSD values of the selected
/// frequencies (pixels × [`NoiseFft::n_freqs`]).
///
/// # Errors
/// As [`get_noise_fft`].
pub fn get_noise_fft_psd(
    y: ndarray::ArrayView2<'_, f32>,
    opts: &NoiseFftOptions,
) -> Result<(Vec<f64>, ndarray::Array2<f64>)> {
    if y.nrows() == 0 {
        return Err(Error::Empty { what: "pixels" });
    }
    let mut k = NoiseFft::new(y.ncols(), opts)?;
    let mut psd = ndarray::Array2::zeros((y.nrows(), k.n_freqs()));
    let mut sn = Vec::with_capacity(y.nrows());
    for (row, mut out) in y.rows().into_iter().zip(psd.rows_mut()) {
        let out = out.as_slice_mut().expect("rows of a standard-layout array are contiguous");
        sn.push(k.sn_psd_of_trace(row, out)?);
    }
    Ok((sn, psd))
}

// ---------------------------------------------------------------------------------------------
// Streaming per-pixel noise of a movie file, over bands of rows, through an executor.
// ---------------------------------------------------------------------------------------------

/// Per-pixel noise of a movie file: result of [`pixel_noise`].
#[derive(Debug, Clone, PartialEq)]
pub struct PixelNoise {
    /// Frame size of the movie.
    pub dims: caiman_io::Dims,
    /// Frames of the movie.
    pub frames: usize,
    /// `sn` per pixel, an image `d1 × d2 × d3` in C order (pixel `(i, j, k)` at
    /// [`Dims::c_index`](caiman_io::Dims::c_index)), f64. See [`to_fortran`](Self::to_fortran) for
    /// CaImAn's pixel-vector order.
    pub sn: Vec<f64>,
    /// Frame ranges the DFT used (see [`fft_sample_segments`]).
    pub segments: Vec<std::ops::Range<usize>>,
    /// The bands of rows (`d1` indices), one task each.
    pub bands: Vec<std::ops::Range<usize>>,
    /// Whether the file was read pixel row by pixel row (a C-order CaImAn `.mmap`) rather than
    /// frame by frame.
    pub pixel_major: bool,
    /// What the map over the bands cost.
    pub stats: caiman_parallel::RunStats,
}

impl PixelNoise {
    /// `sn` as an `ndarray` view `d1 × d2 × d3`.
    pub fn image(&self) -> ndarray::ArrayView3<'_, f64> {
        let d = self.dims;
        ndarray::ArrayView3::from_shape((d.d1, d.d2, d.d3), &self.sn).expect("sn holds d1*d2*d3 values")
    }

    /// `sn` as CaImAn's pixel vector (Fortran order, `p = i + d1·j + d1·d2·k`), the order of the
    /// rows of `Yr` and of `estimates.sn`.
    pub fn to_fortran(&self) -> Vec<f64> {
        let d = self.dims;
        let mut out = vec![0.0; self.sn.len()];
        for i in 0..d.d1 {
            for j in 0..d.d2 {
                for k in 0..d.d3 {
                    out[d.f_index(i, j, k)] = self.sn[d.c_index(i, j, k)];
                }
            }
        }
        out
    }
}

/// One band of rows of [`pixel_noise`]: opens the file itself and reads only the frames (or, for
/// a C-order `.mmap`, the pixel rows) it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PixelNoiseTask {
    path: std::path::PathBuf,
    open_opts: caiman_io::OpenOptions,
    opts: NoiseFftOptions,
    /// Rows `d1` of the band.
    rows: std::ops::Range<usize>,
    /// Frames read at once on the frame path.
    chunk_frames: usize,
    /// Shape the driver saw (checked again by the task).
    frames: usize,
    dims: caiman_io::Dims,
}

/// What a band task returns: the band's `sn` (C order) or the kind of data error it met.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum BandOutput {
    Sn(Vec<f64>),
    NonFinite,
}

impl caiman_parallel::Task for PixelNoiseTask {
    const NAME: &'static str = "caiman_cnmf.pixel_noise_band";
    type Output = BandOutput;

    fn run(self, _ctx: &caiman_parallel::TaskCtx) -> std::result::Result<BandOutput, caiman_parallel::TaskError> {
        match self.compute() {
            Ok(sn) => Ok(BandOutput::Sn(sn)),
            Err(Error::NonFinite { .. }) => Ok(BandOutput::NonFinite),
            Err(e) => Err(crate::error::task_err(e)),
        }
    }
}

impl PixelNoiseTask {
    fn compute(&self) -> Result<Vec<f64>> {
        let mut kernel = NoiseFft::new(self.frames, &self.opts)?;
        if let Some(mm) = open_c_mmap(&self.path)? {
            self.check_shape(caiman_io::FrameSource::info(&mm).shape)?;
            return self.compute_pixel_major(&mut kernel, &mm);
        }
        let mut src = caiman_io::open(&self.path, &self.open_opts)?;
        self.check_shape(src.info().shape)?;
        self.compute_frames(&mut kernel, src.as_mut())
    }

    fn check_shape(&self, shape: caiman_io::Shape) -> Result<()> {
        let want = caiman_io::Shape::new(self.frames, self.dims);
        if shape != want {
            return Err(Error::ShapeMismatch {
                what: "movie (changed since the band plan)",
                expected: vec![want.frames, want.dims.d1, want.dims.d2, want.dims.d3],
                got: vec![shape.frames, shape.dims.d1, shape.dims.d2, shape.dims.d3],
            });
        }
        Ok(())
    }

    /// C-order `.mmap`: every pixel's trace is one contiguous row of `Yr`.
    fn compute_pixel_major(&self, kernel: &mut NoiseFft, mm: &caiman_io::mmap::MmapSource) -> Result<Vec<f64>> {
        let d = self.dims;
        let yr = mm.yr();
        let mut out = Vec::with_capacity(self.rows.len() * d.d2 * d.d3);
        for i in self.rows.clone() {
            for j in 0..d.d2 {
                for k in 0..d.d3 {
                    out.push(kernel.sn_of_trace(yr.row(d.f_index(i, j, k)))?);
                }
            }
        }
        Ok(out)
    }

    /// Any other source: read the used frames in chunks, keep the band (pixel-major), then run
    /// the kernel on each pixel.
    fn compute_frames(&self, kernel: &mut NoiseFft, src: &mut dyn caiman_io::FrameSource) -> Result<Vec<f64>> {
        let d = self.dims;
        let npix = d.pixels();
        let row_px = d.d2 * d.d3;
        let (off, bp) = (self.rows.start * row_px, self.rows.len() * row_px);
        let used = kernel.used_frames();
        let chunk = self.chunk_frames.clamp(1, used);
        let mut frame_buf = vec![0.0f32; chunk * npix];
        let mut band = vec![0.0f32; bp * used];
        let mut u = 0;
        for seg in kernel.segments().to_vec() {
            let mut t = seg.start;
            while t < seg.end {
                let n = chunk.min(seg.end - t);
                let buf = &mut frame_buf[..n * npix];
                src.read_frames(t, buf)?;
                for frame in buf.chunks_exact(npix) {
                    for (q, &v) in frame[off..off + bp].iter().enumerate() {
                        band[q * used + u] = v;
                    }
                    u += 1;
                }
                t += n;
            }
        }
        drop(frame_buf);
        band.chunks_exact(used).map(|px| kernel.sn_of_used(px)).collect()
    }
}

/// Opens `path` as a CaImAn `.mmap` if it is one in C order (pixel-major `Yr`).
fn open_c_mmap(path: &std::path::Path) -> Result<Option<caiman_io::mmap::MmapSource>> {
    if caiman_io::Format::from_path(path).ok() != Some(caiman_io::Format::Mmap) {
        return Ok(None);
    }
    let mm = caiman_io::mmap::MmapSource::open(path)?;
    Ok((mm.order() == caiman_io::Order::C).then_some(mm))
}

/// Per-pixel noise (`get_noise_fft`, see [`NoiseFft`]) of the movie at `path`, streamed: the
/// frame is split into bands of rows (`d1`), one task per band mapped through `exec`; each task
/// opens the file and reads only the frames `get_noise_fft` uses (at most about
/// `max_num_samples_fft`), keeping its band — or, for a C-order CaImAn `.mmap`, reads its pixels'
/// rows of `Yr` directly. The result equals [`get_noise_fft`] on the whole movie exactly.
///
/// `memory_budget_bytes` bounds the working memory of all tasks running at once: each of the
/// `exec.workers()` tasks gets `budget / workers` bytes, spent on a frame buffer (at most a
/// quarter of it) and its band (`band_pixels × used_frames × 4` bytes). A band is at least one
/// row, so a budget below one row's needs is exceeded rather than refused. There are at least as
/// many bands as workers (when `d1` allows).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read; [`Error::InvalidParam`] for bad options
/// (see [`NoiseFft::new`]) or a zero budget; [`Error::NonFinite`] for NaN/inf among the used
/// frames; [`Error::Exec`] if a task fails otherwise.
pub fn pixel_noise<E: caiman_parallel::Executor>(
    path: impl AsRef<std::path::Path>,
    open_opts: &caiman_io::OpenOptions,
    opts: &NoiseFftOptions,
    memory_budget_bytes: usize,
    exec: &E,
) -> Result<PixelNoise> {
    let path = path.as_ref();
    if memory_budget_bytes == 0 {
        return Err(Error::InvalidParam("memory_budget_bytes must be > 0".into()));
    }
    let (shape, pixel_major) = match open_c_mmap(path)? {
        Some(mm) => (caiman_io::FrameSource::info(&mm).shape, true),
        None => (caiman_io::open(path, open_opts)?.info().shape, false),
    };
    let (dims, frames) = (shape.dims, shape.frames);
    if dims.pixels() == 0 {
        return Err(Error::Empty { what: "movie pixels" });
    }
    let kernel = NoiseFft::new(frames, opts)?;
    let used = kernel.used_frames();
    let workers = exec.workers().max(1);
    let per_task = (memory_budget_bytes / workers).max(1);
    let frame_bytes = dims.pixels() * 4;
    let (chunk_frames, band_budget) = if pixel_major {
        (1, per_task)
    } else {
        let chunk = (per_task / 4 / frame_bytes).clamp(1, used);
        (chunk, per_task.saturating_sub(chunk * frame_bytes))
    };
    let row_bytes = dims.d2 * dims.d3 * used * 4;
    let rows_per_band = (band_budget / row_bytes).clamp(1, dims.d1.div_ceil(workers).max(1));
    let bands: Vec<_> = (0..dims.d1).step_by(rows_per_band).map(|r| r..(r + rows_per_band).min(dims.d1)).collect();
    tracing::debug!(
        path = %path.display(), %shape, used, bands = bands.len(), rows_per_band, chunk_frames, pixel_major,
        "pixel_noise plan"
    );
    let tasks = bands
        .iter()
        .map(|rows| PixelNoiseTask {
            path: path.to_path_buf(),
            open_opts: open_opts.clone(),
            opts: *opts,
            rows: rows.clone(),
            chunk_frames,
            frames,
            dims,
        })
        .collect();
    let (outputs, stats) = exec.map(tasks)?;
    let mut sn = Vec::with_capacity(dims.pixels());
    for out in outputs {
        match out {
            BandOutput::Sn(v) => sn.extend(v),
            BandOutput::NonFinite => return Err(Error::NonFinite { what: "movie" }),
        }
    }
    Ok(PixelNoise { dims, frames, sn, segments: kernel.segments().to_vec(), bands, pixel_major, stats })
}

/// Registers this module's task types (for the process executor's workers).
pub fn register_tasks(r: caiman_parallel::Registry) -> caiman_parallel::Registry {
    r.register::<PixelNoiseTask>()
}
