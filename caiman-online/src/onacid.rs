//! The OnACID state and its per-frame update (CaImAn's `OnACID._prepare_object`, `fit_next`,
//! `HALS4activity`, `update_num_components`, `get_candidate_components`, `rank1nmf`,
//! `update_shapes`, `init_shapes_and_sufficient_stats`), on frames already pre-processed
//! (down-sampled, motion corrected, normalised) and flattened in Fortran pixel order.
//!
//! Storage (all bounded in the movie length except the traces):
//! * footprints `Ab = [b | A]` as one sparse column per component: its support (sorted pixel
//!   indices, fixed for the component's life, as CaImAn's `ind_A`), its values (f32) and its row
//!   of the sufficient statistic `CY` restricted to the support (the only entries CaImAn reads);
//! * `CC`, `AᵀA` dense `M × M` (f64), the greedy groups;
//! * `C_on`, `noisyC`: one growing f32 row per component (the `K × T` traces);
//! * one [`OnlineOasis`] per neuron (`p > 0`);
//! * ring buffers of the last `minibatch_shape` frames, residual frames and blurred squared
//!   positive residuals (`rho`), the running sum `sv` of the latter and the buffer mean.

use caiman_cnmf::estimates::{EPS_F32, Estimates, centers_of_mass};
use caiman_cnmf::evaluation::compute_event_exceptionality;
use caiman_cnmf::online_oasis::{OnlineOasis, OnlineOasisParams};
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::sparse::CscMatrix;
use caiman_cnmf::stats::percentile_filter;
use caiman_io::Dims;
use caiman_parallel::Par;
use ndarray::{Array2, ArrayView2};

use crate::detect::{Detector, ResidualInput, ResidualState, all_finite, strip_dot, strip_scale_add};
use crate::error::{Error, Result};
use crate::filters::{Border, Separable};
use crate::ring::Ring;

/// One column of `Ab`: support, values and the matching entries of `CY`.
#[derive(Clone, Debug)]
pub(crate) struct Comp {
    pub(crate) idx: Vec<u32>,
    pub(crate) val: Vec<f32>,
    pub(crate) cy: Vec<f64>,
}

impl Comp {
    /// `Σ_p val[p]·y[idx[p]]` (f64) over the support (full-support columns go through
    /// `detect::strip_dot`).
    fn dot(&self, y: &[f32]) -> f64 {
        self.idx.iter().zip(&self.val).map(|(&p, &v)| f64::from(v) * f64::from(y[p as usize])).sum()
    }

    /// `out[idx] += c·val`.
    fn axpy(&self, c: f32, out: &mut [f32]) {
        if self.idx.len() == out.len() {
            out.iter_mut().zip(&self.val).for_each(|(o, &v)| *o += c * v);
        } else {
            for (&p, &v) in self.idx.iter().zip(&self.val) {
                out[p as usize] += c * v;
            }
        }
    }
}

/// Per-stage wall time of the online loop (seconds, summed over frames).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Demixing (HALS) and deconvolution (OASIS).
    pub demix: f64,
    /// Residual, buffers and the search for new components.
    pub detect: f64,
    /// Sufficient statistics.
    pub stats: f64,
    /// Shape updates.
    pub shapes: f64,
    /// Online motion correction (filled by the frame pipeline).
    pub motion: f64,
}

/// What one call of [`OnAcid::fit_next`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameReport {
    /// The frame index `t` that was fitted.
    pub t: usize,
    /// Components added at this frame.
    pub added: usize,
    /// Components removed by a shape update at this frame.
    pub removed: usize,
    /// Whether the shapes were updated at this frame.
    pub shapes_updated: bool,
}

/// The OnACID model: footprints, traces, sufficient statistics and buffers, updated frame by
/// frame with [`OnAcid::fit_next`]; [`OnAcid::estimates`] reads the results at any moment.
#[derive(Debug)]
pub struct OnAcid {
    pub(crate) params: CnmfParams,
    /// Working frame size (after `ds_factor`).
    pub(crate) dims: Dims,
    /// Frame size of the input movie.
    pub(crate) in_dims: Dims,
    pub(crate) nb: usize,
    pub(crate) cols: Vec<Comp>,
    ata: Array2<f64>,
    ata_rows: Vec<Vec<(usize, f64)>>,
    groups: Vec<Vec<usize>>,
    cc: Array2<f64>,
    pub(crate) c_on: Vec<Vec<f32>>,
    pub(crate) noisy_c: Vec<Vec<f32>>,
    pub(crate) oasis: Vec<OnlineOasis>,
    /// Mean AR coefficients of the initial components (CaImAn's `np.mean(estimates.g)`).
    g_est: Vec<f64>,
    yr_buf: Ring,
    yres_buf: Ring,
    /// `imblur(max(Yres, 0))²` of the buffered residuals (CaImAn's `rho_buf`).
    rho_buf: Ring,
    sv: Vec<f64>,
    mean_buff: Vec<f32>,
    mn: Vec<f64>,
    vr: Vec<f64>,
    pub(crate) t: usize,
    update_counter: Vec<f64>,
    pub(crate) time_neuron_added: Vec<(usize, usize)>,
    pub(crate) shifts: Vec<[f64; 2]>,
    /// `img_min` and `img_norm` (Fortran order, working dims) of the initial batch.
    pub(crate) img_min: f32,
    pub(crate) img_norm: Vec<f32>,
    /// Whether new components are searched for (`update_num_comps`, off under `stop_detection`).
    pub(crate) detect: bool,
    expected_comps: usize,
    gsig: [f64; 2],
    gsiz: [usize; 2],
    /// Per-frame scratch.
    scr: Scratch,
    /// The dense per-frame passes (residual, buffers, score image, peaks).
    det: Detector,
    /// Inner parallelism of the per-frame passes.
    par: Par,
    pub(crate) times: StageTimes,
}

#[derive(Debug)]
struct Scratch {
    aty: Vec<f64>,
    c: Vec<f64>,
    c_old: Vec<f64>,
    noisy: Vec<f64>,
    res: Vec<f32>,
    pos: Vec<f32>,
    rho: Vec<f32>,
    blur: Separable,
    /// `C_on[:, t]` as f32, for the residual.
    cvals: Vec<f32>,
    peaks: Vec<(usize, usize)>,
    pool: Vec<f64>,
    dense: Vec<f32>,
}

/// A candidate that passed the space-correlation test.
struct Candidate {
    /// Window pixels (sorted Fortran indices) and the window's row/col ranges.
    idx: Vec<u32>,
    rows: (usize, usize),
    cols: (usize, usize),
    ain: Vec<f64>,
    cin: Vec<f64>,
    cin_res: Vec<f64>,
}

/// numpy's `median` of a non-empty slice (the mean of the two middle values for an even
/// count; reorders `v`).
fn median_f32(v: &mut [f32]) -> f32 {
    let n = v.len();
    let (_, &mut hi, _) = v.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ((f64::from(lo) + f64::from(hi)) / 2.0) as f32
}

/// `2^linspace(0, 1, n)` (CaImAn's initial `update_counter`).
fn initial_counter(n: usize) -> Vec<f64> {
    (0..n).map(|i| if n > 1 { 2f64.powf(i as f64 / (n - 1) as f64) } else { 1.0 }).collect()
}

/// CaImAn's `corr(a, b)` (Pearson with `eps` in the denominator).
fn corr(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x - ma, y - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb + f64::EPSILON).sqrt()
}

/// CaImAn's `rank1nmf(Ypx, ain, iters=10)`; `y` holds `T` frames of the window's `npx` pixels,
/// frame after frame. Returns `(a, c, c_res)`.
pub(crate) fn rank1nmf(y: &[f64], npx: usize, ain: &[f64], iters: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let t = y.len() / npx;
    let eps = EPS_F32;
    let mut a = ain.to_vec();
    let mut c = vec![0.0; t];
    let mut c_res = vec![0.0; t];
    let project = |a: &[f64], c_res: &mut [f64], c: &mut [f64]| {
        for (k, fr) in y.chunks_exact(npx).enumerate() {
            c_res[k] = fr.iter().zip(a).map(|(v, w)| v * w).sum();
            c[k] = c_res[k].max(0.0);
        }
    };
    for it in 0..iters {
        project(&a, &mut c_res, &mut c);
        a.fill(0.0);
        for (fr, &ck) in y.chunks_exact(npx).zip(&c) {
            if ck != 0.0 {
                a.iter_mut().zip(fr).for_each(|(o, v)| *o += v * ck);
            }
        }
        a.iter_mut().for_each(|v| *v = v.max(0.0));
        let nn: f64 = a.iter().map(|v| v * v).sum();
        if it == 0 || it + 1 == iters {
            let s = nn.sqrt() + eps;
            a.iter_mut().for_each(|v| *v /= s);
        } else if it % 2 == 0 {
            a.iter_mut().for_each(|v| *v /= nn + eps);
        }
    }
    project(&a, &mut c_res, &mut c);
    (a, c, c_res)
}

/// `gSiz` of OnACID: `2·ceil(gSig) + 1` per axis.
fn online_gsiz(gsig: [f64; 2]) -> [usize; 2] {
    gsig.map(|g| 2 * g.ceil() as usize + 1)
}

/// Element-wise "square of the blurred positive part" into `out` (`rho` of one residual frame).
fn rho_of(blur: &mut Separable, frame: &[f32], pos: &mut [f32], out: &mut [f32]) {
    pos.iter_mut().zip(frame).for_each(|(p, &v)| *p = v.max(0.0));
    blur.apply(pos, out);
    out.iter_mut().for_each(|v| *v *= *v);
}

impl OnAcid {
    /// CaImAn's `_prepare_object`: builds the online state from initial estimates of the first
    /// `init_batch` frames `yr` (pixels × frames, Fortran pixel order, the frames as OnACID sees
    /// them: down-sampled, motion corrected, normalised) and the parameters.
    ///
    /// `est` must hold `A`, `C`, `b`, `f` and `YrA` (residual traces); `g`, `bl`, `lam` and
    /// `neurons_sn` are used when present (else CaImAn's bare defaults: AR roots 0.9, zeros).
    /// Components are normalised here (`normalize_components`).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for parameters OnACID cannot run with (`init_batch <
    /// minibatch_shape`, `minibatch_suff_stat ≥ minibatch_shape`, `update_freq = 0`, a frame
    /// smaller than the candidate window, `p > 2`); [`Error::ShapeMismatch`] when `yr` or `est`
    /// do not fit; [`Error::Unsupported`] for volumes; OASIS errors for bad AR coefficients.
    pub fn from_estimates(params: &CnmfParams, mut est: Estimates, yr: ArrayView2<'_, f32>) -> Result<Self> {
        let dims = est.dims;
        if dims.is_volume() {
            return Err(Error::Unsupported("volumetric (3-D) movies: OnACID here is planar".into()));
        }
        let (d, t0) = yr.dim();
        if d != dims.pixels() {
            return Err(Error::ShapeMismatch {
                what: "initial batch (pixels)",
                expected: vec![dims.pixels()],
                got: vec![d],
            });
        }
        if est.c.ncols() != t0 || (est.f.nrows() > 0 && est.f.ncols() != t0) {
            return Err(Error::ShapeMismatch {
                what: "initial traces (frames)",
                expected: vec![t0],
                got: vec![est.c.ncols()],
            });
        }
        let on = &params.online;
        let mbs = on.minibatch_shape;
        if mbs < 2 || t0 < mbs {
            return Err(Error::InvalidParam(format!(
                "the initial batch ({t0} frames) must hold at least minibatch_shape ({mbs} ≥ 2) frames"
            )));
        }
        if on.minibatch_suff_stat >= mbs {
            return Err(Error::InvalidParam(format!(
                "minibatch_suff_stat ({}) must be below minibatch_shape ({mbs})",
                on.minibatch_suff_stat
            )));
        }
        if on.update_freq == 0 {
            return Err(Error::InvalidParam("update_freq must be positive".into()));
        }
        let p = params.preprocess.p;
        if p > 2 {
            return Err(Error::InvalidParam(format!("p must be 0, 1 or 2, got {p}")));
        }
        let g = params.gsig();
        if g.len() != 2 || g.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return Err(Error::InvalidParam(format!("gSig must hold two positive values, got {g:?}")));
        }
        let gsig = [g[0], g[1]];
        let gsiz = online_gsiz(gsig);
        if dims.d1 < gsiz[0] || dims.d2 < gsiz[1] {
            return Err(Error::InvalidParam(format!(
                "frame {}×{} smaller than the candidate window {}×{}",
                dims.d1, dims.d2, gsiz[0], gsiz[1]
            )));
        }
        let n = est.n_components();
        let nb = est.b.ncols();
        let m = nb + n;
        let yr_a = est.yr_a.clone().ok_or_else(|| Error::InvalidParam("initial estimates lack YrA".into()))?;
        if yr_a.dim() != (n, t0) {
            return Err(Error::ShapeMismatch {
                what: "initial YrA",
                expected: vec![n, t0],
                got: yr_a.shape().to_vec(),
            });
        }
        // Defaults of bare initialisation for what the estimates do not carry.
        let g_default: Vec<f64> = match p.max(1) {
            1 => vec![0.9],
            _ => vec![1.8, -0.81],
        };
        let gk: Vec<Vec<f64>> = est.g.clone().unwrap_or_else(|| vec![g_default.clone(); n]);
        let bl = est.bl.clone().unwrap_or_else(|| vec![0.0; n]);
        let lam = est.lam.clone().unwrap_or_else(|| vec![0.0; n]);
        if est.neurons_sn.is_none() {
            est.neurons_sn = Some(yr_a.rows().into_iter().map(|r| r.std(0.0)).collect());
        }
        est.yr_a = Some(yr_a);
        est.bl = Some(bl);
        est.normalize_components();
        let yr_a = est.yr_a.take().expect("set above");
        let bl = est.bl.clone().expect("set above");
        let neurons_sn = est.neurons_sn.clone().expect("set above");
        let mut expected_comps = on.expected_comps;
        if !on.update_num_comps {
            expected_comps = n;
        } else if expected_comps <= n + on.max_num_added {
            expected_comps = n + on.max_num_added + 200;
        }

        // noisyC = [f; C + YrA], C_on = [f; OASIS(C + YrA)] over the batch.
        let mut noisy_c: Vec<Vec<f32>> = Vec::with_capacity(m);
        let mut c_on: Vec<Vec<f32>> = Vec::with_capacity(m);
        for k in 0..nb {
            let row: Vec<f32> = est.f.row(k).iter().map(|&v| v as f32).collect();
            noisy_c.push(row.clone());
            c_on.push(row);
        }
        let s_min_param = params.temporal.s_min;
        let mut oasis = Vec::new();
        for k in 0..n {
            let noisy: Vec<f32> = est.c.row(k).iter().zip(yr_a.row(k)).map(|(&c, &r)| (c + r) as f32).collect();
            if p > 0 {
                let gk = &gk[k];
                let s_min = match s_min_param {
                    None => 0.0,
                    Some(s) if s > 0.0 => s,
                    Some(s) => -s * neurons_sn[k] * (1.0 - gk.iter().sum::<f64>()).max(0.0).sqrt(),
                };
                let op = OnlineOasisParams {
                    g: gk[0],
                    g2: if p >= 2 { *gk.get(1).unwrap_or(&0.0) } else { 0.0 },
                    lam: if s_min_param.is_none() { lam[k] } else { 0.0 },
                    s_min,
                    b: bl[k],
                };
                let mut o = OnlineOasis::new(op, 0)?;
                let ys: Vec<f64> = noisy.iter().map(|&v| f64::from(v)).collect();
                o.fit(&ys)?;
                c_on.push(o.c().into_iter().map(|v| v as f32).collect());
                oasis.push(o);
            } else {
                c_on.push(est.c.row(k).iter().map(|&v| v as f32).collect());
            }
            noisy_c.push(noisy);
        }
        let g_est: Vec<f64> = if p == 0 {
            Vec::new()
        } else {
            (0..p).map(|i| gk.iter().map(|g| *g.get(i).unwrap_or(&0.0)).sum::<f64>() / n.max(1) as f64).collect()
        };

        // Ab = [b | A] with CaImAn's 1e-6 smoothing term (values ≥ 1e-2 scaled by 1 + 1e-6).
        let mut cols: Vec<Comp> = Vec::with_capacity(m);
        let smooth = |v: f32| if v >= 1e-2 { v + 1e-6 * v } else { v };
        for k in 0..nb {
            let (mut idx, mut val) = (Vec::new(), Vec::new());
            for (p_, &v) in est.b.column(k).iter().enumerate() {
                if v != 0.0 {
                    idx.push(p_ as u32);
                    val.push(smooth(v));
                }
            }
            cols.push(Comp { cy: vec![0.0; idx.len()], idx, val });
        }
        for k in 0..n {
            let (rows, vals) = est.a.col(k);
            let (mut idx, mut val) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
            for (&r, &v) in rows.iter().zip(vals) {
                if v != 0.0 {
                    idx.push(r as u32);
                    val.push(smooth(v));
                }
            }
            cols.push(Comp { cy: vec![0.0; idx.len()], idx, val });
        }
        // CY = Cf·Yᵀ / T0 on the supports, CC = Cf·Cfᵀ / T0.
        let tf = t0 as f64;
        for (j, col) in cols.iter_mut().enumerate() {
            let cf = &c_on[j];
            for (s, &p_) in col.idx.iter().enumerate() {
                let yrow = yr.row(p_ as usize);
                let acc: f64 = yrow.iter().zip(cf).map(|(&y, &c)| f64::from(y) * f64::from(c)).sum();
                col.cy[s] = acc / tf;
            }
        }
        let mut cc = Array2::<f64>::zeros((m, m));
        for i in 0..m {
            for j in 0..=i {
                let v: f64 = c_on[i].iter().zip(&c_on[j]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() / tf;
                cc[[i, j]] = v;
                cc[[j, i]] = v;
            }
        }

        // Buffers: the last mbs frames and their residuals.
        let mut yr_frames = vec![0f32; mbs * d];
        let mut res_frames = vec![0f32; mbs * d];
        for (k, tt) in (t0 - mbs..t0).enumerate() {
            let fr = &mut yr_frames[k * d..(k + 1) * d];
            fr.iter_mut().zip(yr.column(tt)).for_each(|(o, &v)| *o = v);
            let rs = &mut res_frames[k * d..(k + 1) * d];
            rs.copy_from_slice(fr);
            for (j, col) in cols.iter().enumerate() {
                let c = c_on[j][tt];
                if c != 0.0 {
                    for (&p_, &v) in col.idx.iter().zip(&col.val) {
                        rs[p_ as usize] -= v * c;
                    }
                }
            }
        }
        let yr_buf = Ring::from_frames(d, mbs, yr_frames);
        let yres_buf = Ring::from_frames(d, mbs, res_frames);
        let mut mn = vec![0f64; d];
        let mut vr = vec![0f64; d];
        for k in 0..mbs {
            mn.iter_mut().zip(yres_buf.chrono(k)).for_each(|(a, &v)| *a += f64::from(v));
        }
        mn.iter_mut().for_each(|v| *v /= mbs as f64);
        for k in 0..mbs {
            vr.iter_mut().zip(yres_buf.chrono(k)).zip(&mn).for_each(|((a, &v), &u)| *a += (f64::from(v) - u).powi(2));
        }
        vr.iter_mut().for_each(|v| *v /= mbs as f64);
        let mean_buff: Vec<f32> = mn.iter().map(|&v| v as f32).collect();

        let (d1, d2) = (dims.d1, dims.d2);
        let ksize = gsig.map(|g| (3.0 * g / 2.0) as usize * 2 + 1);
        let scr = Scratch {
            aty: Vec::with_capacity(expected_comps + nb),
            c: Vec::new(),
            c_old: Vec::new(),
            noisy: Vec::new(),
            res: vec![0.0; d],
            pos: vec![0.0; d],
            rho: vec![0.0; d],
            blur: Separable::gaussian(d1, d2, gsig, gsiz, Border::Zero),
            cvals: Vec::with_capacity(expected_comps + nb),
            peaks: Vec::new(),
            pool: Vec::new(),
            dense: vec![0.0; d],
        };
        let mut s = OnAcid {
            params: params.clone(),
            dims,
            in_dims: dims,
            nb,
            cols,
            ata: Array2::zeros((0, 0)),
            ata_rows: Vec::new(),
            groups: Vec::new(),
            cc,
            c_on,
            noisy_c,
            oasis,
            g_est,
            yr_buf,
            yres_buf,
            rho_buf: Ring::from_frames(d, mbs, vec![0.0; mbs * d]),
            sv: vec![0.0; d],
            mean_buff,
            mn,
            vr,
            t: t0,
            update_counter: initial_counter(n),
            time_neuron_added: (0..n).map(|k| (k, t0)).collect(),
            shifts: Vec::new(),
            img_min: 0.0,
            img_norm: vec![1.0; d],
            detect: on.update_num_comps,
            expected_comps,
            gsig,
            gsiz,
            scr,
            det: Detector::new(d1, d2, gsig, gsiz, ksize, gsig[0].max(gsig[1]) as usize),
            par: Par::Seq,
            times: StageTimes::default(),
        };
        s.params.online.expected_comps = expected_comps;
        s.params.online.init_batch = t0;
        s.params.init.gsiz = Some(gsiz.iter().map(|&v| v as i64).collect());
        // rho_buf, and sv = Σ of its last min(init_batch, mbs) − 1 frames.
        let nsum = t0.min(mbs) - 1;
        let mut sv = vec![0f64; d];
        for k in 0..mbs {
            let Scratch { blur, pos, rho, .. } = &mut s.scr;
            rho_of(blur, s.yres_buf.chrono(k), pos, rho);
            s.rho_buf.push(rho);
            if k >= mbs - nsum {
                sv.iter_mut().zip(rho.iter()).for_each(|(a, &v)| *a += f64::from(v));
            }
        }
        s.sv = sv;
        s.rebuild_ata();
        s.groups = s.update_order();
        Ok(s)
    }

    // -------------------------------------------------------------------------------------
    // Accessors
    // -------------------------------------------------------------------------------------

    /// Number of neurons `N`.
    pub fn n_components(&self) -> usize {
        self.cols.len() - self.nb
    }

    /// Number of background components `nb`.
    pub fn n_background(&self) -> usize {
        self.nb
    }

    /// Frames fitted so far, initial batch included (CaImAn's `t`).
    pub fn frames_seen(&self) -> usize {
        self.t
    }

    /// The working frame size (after `ds_factor`).
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// The parameters in effect (with `expected_comps` and `gSiz` as OnACID set them).
    pub fn params(&self) -> &CnmfParams {
        &self.params
    }

    /// `(component, frame at which it was added)`, initial components at `init_batch`
    /// (CaImAn's `time_neuron_added`; indices follow removals).
    pub fn time_neuron_added(&self) -> &[(usize, usize)] {
        &self.time_neuron_added
    }

    /// Rigid shifts applied to every frame so far (`[rows, cols]`, CaImAn's `estimates.shifts`);
    /// empty without motion correction.
    pub fn shifts(&self) -> &[[f64; 2]] {
        &self.shifts
    }

    /// Wall time spent in each stage so far.
    pub fn stage_times(&self) -> &StageTimes {
        &self.times
    }

    /// The inner parallelism of the per-frame passes (default `Par::Seq`).
    pub fn par(&self) -> Par {
        self.par
    }

    /// Sets the inner parallelism of the per-frame passes (residual, buffers, score image,
    /// peaks: split into strips of columns). Results do not depend on it.
    pub fn set_par(&mut self, par: Par) {
        self.par = par;
    }

    /// Whether new components are searched for at the next frame.
    pub fn detecting(&self) -> bool {
        self.detect
    }

    /// Turns the search for new components on or off (`stop_detection` turns it off for the last
    /// epoch).
    pub fn set_detecting(&mut self, on: bool) {
        self.detect = on;
    }

    /// `noisyC` rows `[f; C + YrA]` over all frames so far (f32).
    pub fn noisy_c(&self) -> Array2<f32> {
        rows_to_array(&self.noisy_c, 0, self.t)
    }

    /// `C_on` rows `[f; C]` over all frames so far (f32).
    pub fn c_on(&self) -> Array2<f32> {
        rows_to_array(&self.c_on, 0, self.t)
    }

    /// The denoised frame `Ab·C_on[:, t−1]` (Fortran order, working dims, normalised units). (The
    /// template of online motion correction uses the median of the 50 frames before, as CaImAn.)
    pub fn model_frame(&self, out: &mut [f32]) {
        out.fill(0.0);
        let t = self.t - 1;
        for (j, col) in self.cols.iter().enumerate() {
            let c = self.c_on[j][t];
            if c != 0.0 {
                col.axpy(c, out);
            }
        }
    }

    /// The template of online motion correction (CaImAn's `mc_next`): `Ab · median(C_on[:, t−51 ..
    /// t−1])` (the 50 frames before the last one; the last frame alone when fewer), Fortran order,
    /// working dims, normalised units. `vals` is scratch.
    pub(crate) fn motion_template(&self, out: &mut [f32], vals: &mut Vec<f32>) {
        out.fill(0.0);
        let t = self.t;
        let (lo, hi) = (t.saturating_sub(51), t.saturating_sub(1));
        for (j, col) in self.cols.iter().enumerate() {
            let row = &self.c_on[j];
            let c = if hi > lo {
                vals.clear();
                vals.extend_from_slice(&row[lo..hi]);
                median_f32(vals)
            } else {
                row[t - 1]
            };
            if c != 0.0 {
                col.axpy(c, out);
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // Structure helpers
    // -------------------------------------------------------------------------------------

    /// Pixel → (component, position in its support), CSR.
    fn row_index(&self) -> (Vec<usize>, Vec<(u32, u32)>) {
        let d = self.dims.pixels();
        let mut ptr = vec![0usize; d + 1];
        for col in &self.cols {
            for &p in &col.idx {
                ptr[p as usize + 1] += 1;
            }
        }
        for i in 0..d {
            ptr[i + 1] += ptr[i];
        }
        let mut fill = ptr.clone();
        let mut ent = vec![(0u32, 0u32); ptr[d]];
        for (j, col) in self.cols.iter().enumerate() {
            for (s, &p) in col.idx.iter().enumerate() {
                ent[fill[p as usize]] = (j as u32, s as u32);
                fill[p as usize] += 1;
            }
        }
        (ptr, ent)
    }

    /// `AᵀA` (and its non-zero rows) from scratch.
    fn rebuild_ata(&mut self) {
        let m = self.cols.len();
        let (ptr, ent) = self.row_index();
        let mut ata = Array2::<f64>::zeros((m, m));
        for p in 0..ptr.len() - 1 {
            let e = &ent[ptr[p]..ptr[p + 1]];
            for (x, &(i, si)) in e.iter().enumerate() {
                let vi = f64::from(self.cols[i as usize].val[si as usize]);
                for &(j, sj) in &e[x..] {
                    let v = vi * f64::from(self.cols[j as usize].val[sj as usize]);
                    ata[[i as usize, j as usize]] += v;
                }
            }
        }
        for i in 0..m {
            for j in 0..i {
                let v = ata[[j, i]] + ata[[i, j]];
                ata[[i, j]] = v;
                ata[[j, i]] = v;
            }
        }
        self.ata = ata;
        self.refresh_ata_rows();
    }

    fn refresh_ata_rows(&mut self) {
        let m = self.cols.len();
        self.ata_rows = (0..m)
            .map(|i| (0..m).filter(|&j| self.ata[[i, j]] != 0.0).map(|j| (j, self.ata[[i, j]])).collect())
            .collect();
    }

    /// CaImAn's `update_order(Ab)`: greedy groups of components whose supports do not overlap.
    fn update_order(&self) -> Vec<Vec<usize>> {
        let m = self.cols.len();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of = vec![usize::MAX; m];
        for i in 0..m {
            let mut blocked = vec![false; groups.len()];
            for j in 0..i {
                if self.ata[[i, j]] != 0.0 {
                    blocked[group_of[j]] = true;
                }
            }
            let g = blocked.iter().position(|&b| !b).unwrap_or_else(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
            group_of[i] = g;
        }
        groups
    }

    // -------------------------------------------------------------------------------------
    // fit_next
    // -------------------------------------------------------------------------------------

    /// CaImAn's `fit_next(t, y)`: fits frame `t = self.frames_seen()` given as `d` values in
    /// Fortran pixel order, already down-sampled, motion corrected and normalised (see
    /// [`crate::OnlinePipeline`] for the whole per-frame path from a raw frame).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a frame of the wrong size, [`Error::NonFinite`] for NaN or
    /// infinite values (the state is unchanged then); kernel errors (OASIS) otherwise.
    pub fn fit_next(&mut self, y: &[f32]) -> Result<FrameReport> {
        let d = self.dims.pixels();
        if y.len() != d {
            return Err(Error::ShapeMismatch { what: "frame (pixels)", expected: vec![d], got: vec![y.len()] });
        }
        if !all_finite(y) {
            return Err(Error::NonFinite { source_name: "frame".into(), frame: self.t });
        }
        let t = self.t;
        let mut report = FrameReport { t, ..FrameReport::default() };
        let clock = std::time::Instant::now();
        self.yr_buf.push(y);
        self.demix(y)?;
        self.deconvolve()?;
        let t1 = std::time::Instant::now();
        self.times.demix += (t1 - clock).as_secs_f64();

        // Residual and its running mean/variance; with detection, the residual buffers too
        // (mean_buff += (r − oldest)/mbs, Yres_buf.append(r)).
        let detect = self.detect;
        self.scr.cvals.clear();
        self.scr.cvals.extend(self.c_on.iter().map(|r| r[t]));
        let inp = ResidualInput {
            y,
            comps: &self.cols,
            c: &self.scr.cvals,
            w_old: (t as f64 - 1.0) / t as f64,
            w_new: 1.0 / t as f64,
            mbs: self.yres_buf.len() as f64,
        };
        let st = ResidualState {
            res: &mut self.scr.res,
            mn: &mut self.mn,
            vr: &mut self.vr,
            mean: if detect { &mut self.mean_buff } else { &mut [] },
            yres: if detect { self.yres_buf.oldest_mut() } else { &mut [] },
        };
        self.det.residual(self.par, &inp, st, detect);
        if detect {
            self.yres_buf.advance();
            report.added = self.update_num_components()?;
        }
        let t2 = std::time::Instant::now();
        self.times.detect += (t2 - t1).as_secs_f64();

        self.update_sufficient_statistics();
        let t3 = std::time::Instant::now();
        self.times.stats += (t3 - t2).as_secs_f64();

        let on = &self.params.online;
        let due = (t + 1 - on.init_batch).is_multiple_of(on.update_freq);
        if due {
            report.removed = self.update_shapes();
            report.shapes_updated = true;
        }
        self.times.shapes += t3.elapsed().as_secs_f64();
        self.t += 1;
        Ok(report)
    }

    /// `HALS4activity(y, Ab, noisyC[:, t−1], AtA, iters=3, groups)`; appends `C_on[:, t]`,
    /// `noisyC[:, t]`.
    fn demix(&mut self, y: &[f32]) -> Result<()> {
        let m = self.cols.len();
        let t = self.t;
        let Scratch { aty, c, c_old, noisy, .. } = &mut self.scr;
        aty.clear();
        let d1 = self.dims.d1;
        for col in &self.cols {
            aty.push(if col.idx.len() == y.len() { strip_dot(self.par, &col.val, y, d1) } else { col.dot(y) });
        }
        c.clear();
        c.extend(self.noisy_c.iter().map(|r| f64::from(r[t - 1])));
        noisy.clear();
        noisy.extend_from_slice(c);
        c_old.clear();
        c_old.resize(m, 0.0);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut iters = 0;
        while iters < 3 {
            let diff = c.iter().zip(c_old.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            if diff < 1e-3 * norm(c_old) {
                break;
            }
            c_old.copy_from_slice(c);
            for g in &self.groups {
                for &k in g {
                    let dot: f64 = self.ata_rows[k].iter().map(|&(j, a)| a * c[j]).sum();
                    noisy[k] = c[k] + (aty[k] - dot) / (self.ata[[k, k]] + EPS_F32);
                    c[k] = noisy[k].max(0.0);
                }
            }
            iters += 1;
        }
        for k in 0..m {
            self.c_on[k].push(c[k] as f32);
            self.noisy_c[k].push(noisy[k] as f32);
        }
        Ok(())
    }

    /// Each neuron's OASIS takes `noisyC[:, t]`; `C_on` is overwritten over its last pool.
    fn deconvolve(&mut self) -> Result<()> {
        let t = self.t;
        let nb = self.nb;
        let pool = &mut self.scr.pool;
        for (i, o) in self.oasis.iter_mut().enumerate() {
            o.fit_next(f64::from(self.noisy_c[nb + i][t]))?;
            o.get_c_of_last_pool_into(pool);
            let row = &mut self.c_on[nb + i];
            let l = pool.len().min(t + 1);
            let start = t + 1 - l;
            row[start..=t].iter_mut().zip(&pool[pool.len() - l..]).for_each(|(o, &v)| *o = v as f32);
        }
        Ok(())
    }

    /// Lagged (or mini-batch) update of `CY` and `CC`.
    fn update_sufficient_statistics(&mut self) {
        let t = self.t;
        let on = &self.params.online;
        let m = self.cols.len();
        if on.batch_update_suff_stat {
            let mbs = self.yr_buf.len();
            let n0 = on.update_freq.min(mbs);
            if !(t + 1 - on.init_batch).is_multiple_of(n0) {
                return;
            }
            let (w1, w2) = ((t - n0) as f64 / t as f64, 1.0 / t as f64);
            for (j, col) in self.cols.iter_mut().enumerate() {
                col.cy.iter_mut().for_each(|v| *v *= w1);
                for k in 0..n0 {
                    let c = f64::from(self.c_on[j][t + 1 - n0 + k]);
                    if c != 0.0 {
                        let y = self.yr_buf.back(n0 - 1 - k);
                        for (cy, &p) in col.cy.iter_mut().zip(&col.idx) {
                            *cy += w2 * c * f64::from(y[p as usize]);
                        }
                    }
                }
            }
            for i in 0..m {
                for j in 0..m {
                    let s: f64 =
                        (t + 1 - n0..=t).map(|k| f64::from(self.c_on[i][k]) * f64::from(self.c_on[j][k])).sum();
                    self.cc[[i, j]] = self.cc[[i, j]] * w1 + w2 * s;
                }
            }
        } else {
            let lag = on.minibatch_suff_stat;
            let tau = t - lag;
            let y = self.yr_buf.back(lag);
            let w = 1.0 - 1.0 / t as f64;
            let tf = t as f64;
            let (par, d1) = (self.par, self.dims.d1);
            for (j, col) in self.cols.iter_mut().enumerate() {
                let c = f64::from(self.c_on[j][tau]) / tf;
                if col.idx.len() == y.len() {
                    strip_scale_add(par, &mut col.cy, y, w, c, d1);
                } else {
                    for (cy, &p) in col.cy.iter_mut().zip(&col.idx) {
                        *cy = *cy * w + c * f64::from(y[p as usize]);
                    }
                }
            }
            let ccf: Vec<f64> = self.c_on.iter().map(|r| f64::from(r[tau])).collect();
            for i in 0..m {
                for j in 0..m {
                    self.cc[[i, j]] = self.cc[[i, j]] * w + ccf[i] * ccf[j] / tf;
                }
            }
        }
    }

    /// `update_shapes(CY, CC, Ab, ind_A, iters=iters_shape)` followed by `AᵀA`, removal of
    /// vanished components and new groups. Returns the number of components removed.
    fn update_shapes(&mut self) -> usize {
        let nb = self.nb;
        let n = self.n_components();
        let (max_comp, lim, iters) = (
            self.params.online.max_comp_update_shape,
            self.params.online.num_times_comp_updated,
            self.params.online.iters_shape,
        );
        let selected: Vec<bool> = if (n as f64) > max_comp {
            let sel: Vec<bool> = self.update_counter.iter().map(|&c| c <= lim).collect();
            for (c, &s) in self.update_counter.iter_mut().zip(&sel) {
                if s {
                    *c += 1.0;
                }
            }
            sel
        } else {
            vec![true; n]
        };
        let (ptr, ent) = self.row_index();
        let eps = EPS_F32;
        let mut tmp: Vec<f64> = Vec::new();
        for _ in 0..iters {
            for m in (nb..nb + n).filter(|&m| selected[m - nb]) {
                let ccm = self.cc[[m, m]] + eps;
                tmp.clear();
                let col = &self.cols[m];
                for (s, &p) in col.idx.iter().enumerate() {
                    let mut acc = 0f64;
                    for &(j, sj) in &ent[ptr[p as usize]..ptr[p as usize + 1]] {
                        acc += f64::from(self.cols[j as usize].val[sj as usize]) * self.cc[[j as usize, m]];
                    }
                    tmp.push((f64::from(col.val[s]) + (col.cy[s] - acc) / ccm).max(0.0));
                }
                let nn: f64 = tmp.iter().map(|v| v * v).sum();
                if nn > 0.0 {
                    let f = 1e-3 / (1e-3f64).min(nn.sqrt() + f64::EPSILON);
                    tmp.iter_mut().for_each(|v| *v *= f);
                    let nn2 = tmp.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let f2 = 1.0 / nn2.max(1.0);
                    let col = &mut self.cols[m];
                    col.val.iter_mut().zip(&tmp).for_each(|(o, &v)| *o = (v * f2) as f32);
                }
            }
            for m in 0..nb {
                let ccm = self.cc[[m, m]] + eps;
                tmp.clear();
                let col = &self.cols[m];
                for (s, &p) in col.idx.iter().enumerate() {
                    let mut acc = 0f64;
                    for &(j, sj) in &ent[ptr[p as usize]..ptr[p as usize + 1]] {
                        acc += f64::from(self.cols[j as usize].val[sj as usize]) * self.cc[[j as usize, m]];
                    }
                    tmp.push((f64::from(col.val[s]) + (col.cy[s] - acc) / ccm).max(0.0));
                }
                self.cols[m].val.iter_mut().zip(&tmp).for_each(|(o, &v)| *o = v as f32);
            }
        }
        self.rebuild_ata();
        let zero: Vec<usize> = (nb..self.cols.len()).filter(|&k| self.ata[[k, k]] < 1e-10).collect();
        let removed = zero.len();
        if removed > 0 {
            self.remove_components(&zero);
        }
        self.groups = self.update_order();
        removed
    }

    /// Removes the components with indices `ks` (into `Ab`, neurons only), every row of the state
    /// with them (CaImAn's deletion after a shape update, `remove_components_online`).
    fn remove_components(&mut self, ks: &[usize]) {
        let nb = self.nb;
        let keep: Vec<usize> = (0..self.cols.len()).filter(|k| !ks.contains(k)).collect();
        let take = |v: &mut Vec<Vec<f32>>| {
            let old = std::mem::take(v);
            *v = old.into_iter().enumerate().filter(|(k, _)| !ks.contains(k)).map(|(_, r)| r).collect();
        };
        take(&mut self.c_on);
        take(&mut self.noisy_c);
        let cols = std::mem::take(&mut self.cols);
        self.cols = cols.into_iter().enumerate().filter(|(k, _)| !ks.contains(k)).map(|(_, c)| c).collect();
        let oasis = std::mem::take(&mut self.oasis);
        if !oasis.is_empty() {
            self.oasis =
                oasis.into_iter().enumerate().filter(|(k, _)| !ks.contains(&(k + nb))).map(|(_, o)| o).collect();
        }
        let uc = std::mem::take(&mut self.update_counter);
        self.update_counter =
            uc.into_iter().enumerate().filter(|(k, _)| !ks.contains(&(k + nb))).map(|(_, o)| o).collect();
        self.cc = self.cc.select(ndarray::Axis(0), &keep).select(ndarray::Axis(1), &keep);
        self.ata = self.ata.select(ndarray::Axis(0), &keep).select(ndarray::Axis(1), &keep);
        self.refresh_ata_rows();
        let removed_neurons: Vec<usize> = ks.iter().map(|k| k - nb).collect();
        self.time_neuron_added = self
            .time_neuron_added
            .iter()
            .filter(|(k, _)| !removed_neurons.contains(k))
            .map(|&(k, t)| (k - removed_neurons.iter().filter(|&&r| r < k).count(), t))
            .collect();
    }

    // -------------------------------------------------------------------------------------
    // New components
    // -------------------------------------------------------------------------------------

    /// CaImAn's `update_num_components` (with the buffer updates of `fit_next` before it).
    fn update_num_components(&mut self) -> Result<usize> {
        let t = self.t;
        // rho_buf.append(rho(r)); sv += rho(r) − rho(new oldest); the score image and its peaks.
        {
            let on = &self.params.online;
            let (rho_new, rho_next) = self.rho_buf.slot_and_next();
            self.det.score_and_peaks(
                self.par,
                rho_new,
                rho_next,
                &mut self.sv,
                on.use_peak_max,
                on.min_num_trial,
                &mut self.scr.peaks,
            );
            self.rho_buf.advance();
        }
        let cands = self.get_candidate_components()?;
        if cands.is_empty() {
            return Ok(0);
        }
        let on = &self.params.online;
        let (thresh_overlap, thresh_delta, thresh_raw) =
            (on.thresh_overlap, on.thresh_fitness_delta, self.params.thresh_fitness_raw());
        let n_exc = self.params.n_samples_exceptionality().max(1);
        let s_min_param = self.params.temporal.s_min;
        let p = self.params.preprocess.p;
        let nb = self.nb;
        let nbuf = self.yres_buf.len();
        let (d1, d2) = (self.dims.d1, self.dims.d2);
        let mut added = 0;
        // Rows of Cf (the last mbs samples) of the components added during this call.
        let mut cf_new: Vec<Vec<f64>> = Vec::new();
        for cand in cands {
            let m_all = self.cols.len();
            // Duplicate test against the neurons.
            let dense = &mut self.scr.dense;
            for (&p_, &a) in cand.idx.iter().zip(&cand.ain) {
                dense[p_ as usize] = a as f32;
            }
            let mut overlaps = vec![0f64; m_all];
            for (j, col) in self.cols.iter().enumerate() {
                let mut acc = 0f64;
                if col.idx.len() == dense.len() {
                    // Full support: only the window's pixels are non-zero in `dense` (the same
                    // sum: the other terms are exact zeros).
                    for &p_ in &cand.idx {
                        acc += f64::from(col.val[p_ as usize]) * f64::from(dense[p_ as usize]);
                    }
                } else {
                    for (&p_, &v) in col.idx.iter().zip(&col.val) {
                        acc += f64::from(v) * f64::from(dense[p_ as usize]);
                    }
                }
                overlaps[j] = acc;
            }
            for &p_ in &cand.idx {
                dense[p_ as usize] = 0.0;
            }
            let cf_row = |j: usize, this: &OnAcid, cf_new: &Vec<Vec<f64>>| -> Vec<f64> {
                let first_new = this.cols.len() - cf_new.len();
                if j >= first_new {
                    cf_new[j - first_new].clone()
                } else {
                    this.c_on[j][t + 1 - nbuf..=t].iter().map(|&v| f64::from(v)).collect()
                }
            };
            let duplicate = (nb..m_all)
                .filter(|&j| overlaps[j] > thresh_overlap)
                .any(|j| corr(&cand.cin, &cf_row(j, self, &cf_new)) > 0.25);
            if duplicate {
                continue;
            }
            let gsum: f64 = self.g_est.iter().sum();
            let s_min = match s_min_param {
                None => 0.0,
                Some(s) if s >= 0.0 => s,
                Some(s) => {
                    let v: f64 = cand.idx.iter().zip(&cand.ain).map(|(&p_, a)| a * a * self.vr[p_ as usize]).sum();
                    -s * v.sqrt() * (1.0 - gsum).max(0.0).sqrt()
                }
            };
            // Trace tests.
            let n = cand.cin_res.len();
            let tr = ndarray::ArrayView2::from_shape((1, n), &cand.cin_res).expect("1 × n");
            let fd = caiman_cnmf::evaluation::fitness_delta(tr, n_exc, false, 3.0)?[0];
            let bl = percentile_filter(&cand.cin_res, 8.0, (n / 5).clamp(1, 800))?;
            let detr: Vec<f64> = cand.cin_res.iter().zip(&bl).map(|(a, b)| a - b).collect();
            let ex = compute_event_exceptionality(
                ndarray::ArrayView2::from_shape((1, n), &detr).expect("1 × n"),
                n_exc,
                false,
                3.0,
            )?;
            let (fr, std_rr) = (ex.fitness[0], ex.sd_r[0]);
            if !(fd < thresh_delta || fr < thresh_raw) {
                continue;
            }
            // Accepted.
            added += 1;
            if p > 0 {
                let g = self.g_est[0];
                let g2 = if p >= 2 { self.g_est[1] } else { 0.0 };
                let lam = if s_min == 0.0 {
                    let denom = if p == 1 {
                        (1.0 - g * g).sqrt()
                    } else {
                        ((1.0 + g2) * ((1.0 - g2).powi(2) - g * g) / (1.0 - g2)).sqrt()
                    };
                    3.0 * std_rr / denom
                } else {
                    0.0
                };
                let op = OnlineOasisParams { g, g2, lam: if lam.is_finite() { lam } else { 0.0 }, s_min, b: 0.0 };
                let mut o = OnlineOasis::new(op, t + 1 - nbuf)?;
                o.fit(&cand.cin_res)?;
                self.oasis.push(o);
            }
            // Groups: the first group none of whose members overlaps the new component.
            let new_k = m_all;
            let gi = self.groups.iter().position(|g| g.iter().all(|&j| overlaps[j] <= 0.0));
            match gi {
                Some(g) => self.groups[g].push(new_k),
                None => self.groups.push(vec![new_k]),
            }
            // CC, CY with the buffered frames.
            let tf = t as f64;
            let mut cc = Array2::<f64>::zeros((m_all + 1, m_all + 1));
            cc.slice_mut(ndarray::s![..m_all, ..m_all]).assign(&self.cc);
            for j in 0..m_all {
                let row = cf_row(j, self, &cf_new);
                let v: f64 = row.iter().zip(&cand.cin).map(|(a, b)| a * b).sum::<f64>() / tf;
                cc[[j, m_all]] = v;
                cc[[m_all, j]] = v;
            }
            cc[[m_all, m_all]] = cand.cin.iter().map(|v| v * v).sum::<f64>() / tf;
            self.cc = cc;
            let mut cy = vec![0f64; cand.idx.len()];
            for (k, &c) in cand.cin.iter().enumerate() {
                if c != 0.0 {
                    let y = self.yr_buf.chrono(k);
                    for (o, &p_) in cy.iter_mut().zip(&cand.idx) {
                        *o += c * f64::from(y[p_ as usize]);
                    }
                }
            }
            cy.iter_mut().for_each(|v| *v /= tf);
            // AᵀA with the new column.
            let mut ata = Array2::<f64>::zeros((m_all + 1, m_all + 1));
            ata.slice_mut(ndarray::s![..m_all, ..m_all]).assign(&self.ata);
            for j in 0..m_all {
                ata[[j, m_all]] = overlaps[j];
                ata[[m_all, j]] = overlaps[j];
            }
            ata[[m_all, m_all]] = cand.ain.iter().map(|v| v * v).sum();
            self.ata = ata;
            for (uc, &ov) in self.update_counter.iter_mut().zip(&overlaps[nb..m_all]) {
                if ov != 0.0 {
                    *uc = 0.0;
                }
            }
            self.update_counter.push(0.0);
            self.cols.push(Comp { idx: cand.idx.clone(), val: cand.ain.iter().map(|&v| v as f32).collect(), cy });
            // Traces of the new component over the buffer: noisyC = c, C_on = OASIS (or max(c, 0)).
            let mut noisy = vec![0f32; t + 1 - nbuf];
            noisy.extend(cand.cin.iter().map(|&v| v as f32));
            let mut con = vec![0f32; t + 1 - nbuf];
            if p > 0 {
                let o = self.oasis.last().expect("pushed above");
                con.extend(o.get_c(nbuf).into_iter().map(|v| v as f32));
            } else {
                con.extend(cand.cin.iter().map(|&v| v.max(0.0) as f32));
            }
            self.noisy_c.push(noisy);
            self.c_on.push(con);
            self.time_neuron_added.push((new_k - nb, t));
            cf_new.push(cand.cin.clone());
            // Residual buffer and the running score in the neighbourhood.
            for (k, &c) in cand.cin.iter().enumerate() {
                if c != 0.0 {
                    let fr = self.yres_buf.chrono_mut(k);
                    for (&p_, &a) in cand.idx.iter().zip(&cand.ain) {
                        fr[p_ as usize] = (f64::from(fr[p_ as usize]) - c * a) as f32;
                    }
                }
            }
            // mean_buff = mean of the modified buffer (CaImAn recomputes it over the whole frame at
            // the next frame; only the window changed).
            for &p_ in &cand.idx {
                let s: f64 = (0..nbuf).map(|k| f64::from(self.yres_buf.chrono(k)[p_ as usize])).sum();
                self.mean_buff[p_ as usize] = (s / nbuf as f64) as f32;
            }
            self.refresh_sv_region(cand.rows, cand.cols, d1, d2);
        }
        if added > 0 {
            self.refresh_ata_rows();
            if self.n_components() + self.params.online.max_num_added > self.expected_comps {
                self.expected_comps += 200;
                self.params.online.expected_comps = self.expected_comps;
            }
        }
        Ok(added)
    }

    /// Recomputes `rho_buf` and `sv` around a new component's window (rows `r`, cols `c`,
    /// half-open) as CaImAn does: over the window grown by `gSiz // 2`, from the blur of the window
    /// grown by `gSiz` (zero outside it) of the *signed* residual frames, squared; `sv` = the sum
    /// over all `mbs` buffered frames there (CaImAn's stale-frame quirk, kept: see the crate docs).
    fn refresh_sv_region(&mut self, r: (usize, usize), c: (usize, usize), d1: usize, d2: usize) {
        let [g0, g1] = self.gsiz;
        let up = (
            (r.0.saturating_sub(g0 / 2), (r.1 + g0 / 2).min(d1)),
            (c.0.saturating_sub(g1 / 2), (c.1 + g1 / 2).min(d2)),
        );
        let fl = ((r.0.saturating_sub(g0), (r.1 + g0).min(d1)), (c.0.saturating_sub(g1), (c.1 + g1).min(d2)));
        let (h, w) = (fl.0.1 - fl.0.0, fl.1.1 - fl.1.0);
        let mut blur = Separable::gaussian(h, w, self.gsig, self.gsiz, Border::Zero);
        let mut src = vec![0f32; h * w];
        let mut out = vec![0f32; h * w];
        let mut acc = vec![0f64; h * w];
        let nbuf = self.yres_buf.len();
        for k in 0..nbuf {
            let fr = self.yres_buf.chrono(k);
            for j in 0..w {
                for i in 0..h {
                    src[i + h * j] = fr[(fl.0.0 + i) + d1 * (fl.1.0 + j)];
                }
            }
            blur.apply(&src, &mut out);
            let rho = self.rho_buf.chrono_mut(k);
            for j in up.1.0..up.1.1 {
                for i in up.0.0..up.0.1 {
                    let v = out[(i - fl.0.0) + h * (j - fl.1.0)];
                    rho[i + d1 * j] = v * v;
                }
            }
            acc.iter_mut().zip(&out).for_each(|(a, &v)| *a += f64::from(v) * f64::from(v));
        }
        for j in up.1.0..up.1.1 {
            for i in up.0.0..up.0.1 {
                self.sv[i + d1 * j] = acc[(i - fl.0.0) + h * (j - fl.1.0)];
            }
        }
    }

    /// CaImAn's `get_candidate_components` with `use_peak_max` (or the arg-max of `sv`) and the
    /// space-correlation test; returns the accepted candidates in order.
    fn get_candidate_components(&mut self) -> Result<Vec<Candidate>> {
        let on = &self.params.online;
        let (d1, d2) = (self.dims.d1, self.dims.d2);
        let rval_thr = on.rval_thr;
        let peaks = &mut self.scr.peaks;
        // With use_peak_max the peaks were found by the detection passes.
        if !on.use_peak_max {
            // \[Q\] fixed: CaImAn repeats the arg-max `min_num_trial` times (same pixel); once here.
            peaks.clear();
            if let Some((p, _)) = self.sv.iter().map(|&v| v as f32).enumerate().max_by(|a, b| a.1.total_cmp(&b.1)) {
                peaks.push((p % d1, p / d1));
            }
        }
        let [gh0, gh1] = self.gsiz.map(|g| g / 2);
        let nbuf = self.yres_buf.len();
        // The candidates are independent: evaluated side by side, kept in peak order.
        let (yres_buf, mean_buff) = (&self.yres_buf, &self.mean_buff);
        let peaks = &self.scr.peaks;
        let found = self.par.map_indices(peaks.len(), |q| {
            let (i, j) = peaks[q];
            let i = i.max(gh0).min(d1 - gh0 - 1);
            let j = j.max(gh1).min(d2 - gh1 - 1);
            let rows = (i.saturating_sub(gh0), (i + gh0 + 1).min(d1));
            let cols = (j.saturating_sub(gh1), (j + gh1 + 1).min(d2));
            let mut idx = Vec::with_capacity((rows.1 - rows.0) * (cols.1 - cols.0));
            for jj in cols.0..cols.1 {
                for ii in rows.0..rows.1 {
                    idx.push((ii + d1 * jj) as u32);
                }
            }
            let mut ain: Vec<f64> = idx.iter().map(|&p| f64::from(mean_buff[p as usize]).max(0.0)).collect();
            let na: f64 = ain.iter().map(|v| v * v).sum();
            if na <= 0.0 {
                return None;
            }
            ain.iter_mut().for_each(|v| *v /= na.sqrt());
            let npx = idx.len();
            let mut ypx = vec![0f64; npx * nbuf];
            let mut mean = vec![0f64; npx];
            for k in 0..nbuf {
                let fr = yres_buf.chrono(k);
                for (s, &p) in idx.iter().enumerate() {
                    let v = f64::from(fr[p as usize]);
                    ypx[k * npx + s] = v;
                    mean[s] += v;
                }
            }
            mean.iter_mut().for_each(|v| *v /= nbuf as f64);
            let (a, c, c_res) = rank1nmf(&ypx, npx, &ain, 10);
            let rval = corr(&a, &mean);
            (rval > rval_thr).then_some(Candidate { idx, rows, cols, ain: a, cin: c, cin_res: c_res })
        });
        let out: Vec<Candidate> = found.into_iter().flatten().collect();
        Ok(out)
    }

    // -------------------------------------------------------------------------------------
    // Results
    // -------------------------------------------------------------------------------------

    /// The results over all frames fitted so far, in CaImAn's `Estimates` (neurons in `A`, `C`;
    /// background in `b`, `f`; `YrA = noisyC − C`; `S`, `bl`, `g`, `lam` from the OASIS
    /// instances; `sn` the running residual standard deviation per pixel, as CaImAn leaves it),
    /// un-normalised and up-sampled back to the input frame size when OnACID normalised or
    /// down-sampled.
    ///
    /// # Errors
    /// Shape errors of [`Estimates::new`] (a bug if it happens).
    pub fn estimates(&self) -> Result<Estimates> {
        self.estimates_over(0, self.t)
    }

    /// [`OnAcid::estimates`] with the traces restricted to frames `start..end` (CaImAn's final
    /// `fit_online` keeps the last `t // epochs` frames).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for a range outside `0..frames_seen()`.
    pub fn estimates_over(&self, start: usize, end: usize) -> Result<Estimates> {
        if start > end || end > self.t {
            return Err(Error::InvalidParam(format!("frame range {start}..{end} outside 0..{}", self.t)));
        }
        let nb = self.nb;
        let n = self.n_components();
        let d = self.dims.pixels();
        let normalize = self.params.online.normalize;
        let scale = |p: u32, v: f32| if normalize { v * self.img_norm[p as usize] } else { v };
        let mut b = Array2::<f32>::zeros((d, nb));
        for k in 0..nb {
            for (&p, &v) in self.cols[k].idx.iter().zip(&self.cols[k].val) {
                b[[p as usize, k]] = scale(p, v);
            }
        }
        let (mut indptr, mut indices, mut data) = (vec![0usize], Vec::new(), Vec::new());
        for col in &self.cols[nb..] {
            for (&p, &v) in col.idx.iter().zip(&col.val) {
                indices.push(p as usize);
                data.push(scale(p, v));
            }
            indptr.push(indices.len());
        }
        let mut a = CscMatrix::from_parts(d, n, indptr, indices, data)?;
        let mut dims = self.dims;
        if self.in_dims != self.dims {
            let (a2, b2) = crate::preprocess::upsample_footprints(&a, &b, self.dims, self.in_dims)?;
            a = a2;
            b = b2;
            dims = self.in_dims;
        }
        let c = rows_to_array(&self.c_on[nb..], start, end).mapv(f64::from);
        let f = rows_to_array(&self.c_on[..nb], start, end).mapv(f64::from);
        let noisy = rows_to_array(&self.noisy_c[nb..], start, end).mapv(f64::from);
        let mut est = Estimates::new(dims, a, c, b, f)?;
        est.yr_a = Some(&noisy - &est.c);
        if self.oasis.is_empty() {
            est.s = Some(Array2::zeros((n, end - start)));
            est.bl = Some(vec![0.0; n]);
        } else {
            let mut s = Array2::<f64>::zeros((n, end - start));
            for (k, o) in self.oasis.iter().enumerate() {
                let sk = o.s();
                for (tt, v) in (start..end).zip(s.row_mut(k).iter_mut()) {
                    *v = *sk.get(tt).unwrap_or(&0.0);
                }
            }
            est.s = Some(s);
            est.bl = Some(self.oasis.iter().map(|o| o.b()).collect());
            est.g =
                Some(self.oasis.iter().map(|o| if o.is_ar2() { vec![o.g(), o.g2()] } else { vec![o.g()] }).collect());
            est.lam = Some(self.oasis.iter().map(|o| o.lam()).collect());
        }
        if self.in_dims == self.dims {
            est.sn = Some(self.vr.iter().map(|v| v.sqrt()).collect());
        }
        est.center = Some(centers_of_mass(&est.a, dims));
        Ok(est)
    }
}

/// Rows `start..end` of growing trace rows as an array (rows shorter than `end` are padded with 0).
fn rows_to_array(rows: &[Vec<f32>], start: usize, end: usize) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((rows.len(), end - start));
    for (k, r) in rows.iter().enumerate() {
        for (o, tt) in out.row_mut(k).iter_mut().zip(start..end) {
            *o = *r.get(tt).unwrap_or(&0.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank1nmf_recovers_a_rank_one_window() {
        let npx = 6;
        let a_true = [0.0, 1.0, 2.0, 2.0, 1.0, 0.5];
        let c_true: Vec<f64> = (0..20).map(|k| ((k * 7) % 5) as f64).collect();
        let mut y = vec![0.0; npx * 20];
        for (k, &c) in c_true.iter().enumerate() {
            for s in 0..npx {
                y[k * npx + s] = a_true[s] * c;
            }
        }
        let (a, c, c_res) = rank1nmf(&y, npx, &[1.0; 6], 10);
        let na = a_true.iter().map(|v| v * v).sum::<f64>().sqrt();
        for s in 0..npx {
            assert!((a[s] - a_true[s] / na).abs() < 1e-6, "{a:?}");
        }
        for k in 0..20 {
            assert!((c[k] - c_true[k] * na).abs() < 1e-5);
            assert_eq!(c[k], c_res[k].max(0.0));
        }
        assert!((corr(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert_eq!(median_f32(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f32(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
