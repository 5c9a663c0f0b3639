//! CaImAn's temporal update, `temporal.update_temporal_components(Y, A, b, C, f, **temporal)`
//! (catalog §4.6), with its helper `utilities.update_order_greedy`.
//!
//! Block-coordinate descent over the rows of `[C; f]` given the footprints `[A | b]`:
//! * `nA_k = ‖ab_k‖² + eps(f32)`, `YA = (AbᵀY)ᵀ·diag(1/nA)`, `AA = AbᵀAb·diag(1/nA)` and the
//!   residual traces `YrA = YA − (AAᵀ·Cf)ᵀ`;
//! * the neurons are split into groups of mutually non-overlapping footprints
//!   ([`update_order_greedy`]); `ITER` sweeps deconvolve, group after group, the noisy traces
//!   `y_k = YrA_k + C_k` with `constrained_foopsi(y_k, g = None, sn = None)` (AR coefficients and
//!   noise re-estimated at every call), set `C_k = c + bl + c1·γᵗ`, `S_k = s`, and update the
//!   residuals `YrA −= AA[group]ᵀ·(C_new − C_old)`; then every background row gets the
//!   unconstrained update `f_m ← YrA_m + f_m`;
//! * a sweep that changes `[C; f]` by at most `1e−3` of its Frobenius norm stops the loop;
//! * neurons whose `C` row sums to exactly 0 are removed.
//!
//! With `p = 0` nothing is deconvolved: `C_k = max(y_k, 0)`, `S_k = C_k`, `bl = c1 = 0`, `g = []`
//! (CaImAn's values), the trace noise `sn` is still estimated.
//!
//! The heavy product `AbᵀY` ([`crate::passes::mt_y`]) reads every needed pixel row of `Yr` once,
//! by blocks of pixel rows that are executor tasks (out of core for a memmapped movie), and its
//! result does not depend on the executor. The traces of a group
//! are deconvolved through the executor ([`crate::foopsi::deconvolve_traces_with`]), each trace by
//! the same code whatever the strategy, so results are bit-identical across executors.
//!
//! Deliberate deviations from CaImAn:
//! * \[Q\] CaImAn's removal of empty rows also looks at the background rows (and then miscounts
//!   the first one, `filter(lambda i: i > 0, ff − nr)`); here only neurons are removed, the
//!   background is always kept.
//! * `lam` is 0 for `p = 0` (CaImAn: `None`).
//! * `ITER = 0` is rejected ([`Error::InvalidParam`]) instead of returning the input unchanged
//!   with unset deconvolution results; `method_deconvolution` other than `'oasis'` is rejected
//!   too (the convex solvers are not ported).
//! * The group's residual update subtracts the components' contributions one after the other
//!   instead of summing them first (rounding-level differences only).
//! * Bad input (shapes, non-finite footprints or traces) is a typed [`Error`].

use caiman_parallel::{Executor, RunStats};
use ndarray::{Array2, ArrayView2, s};

use crate::error::{Error, Result};
use crate::estimates::{EPS_F32, Estimates, hstack_dense};
use crate::foopsi::{DeconvolveBlock, FoopsiOptions, FoopsiResult, TraceOverrides, deconvolve_traces_with};
use crate::params::{MethodDeconvolution, TemporalParams};
use crate::pixels::Fov;
use crate::sparse::CscMatrix;

/// What [`update_temporal_components`] returns (CaImAn's tuple
/// `(C, A, b, f, S, bl, c1, neurons_sn, g, YrA, lam)`; `b` is returned unchanged by CaImAn and is
/// not repeated here).
#[derive(Clone, Debug, PartialEq)]
pub struct TemporalResult {
    /// Temporal traces `C` (`K' × T`), baseline and initial transient included.
    pub c: Array2<f64>,
    /// Background traces `f` (`nb × T`).
    pub f: Array2<f64>,
    /// Deconvolved activity `S` (`K' × T`; equal to `C` for `p = 0`).
    pub s: Array2<f64>,
    /// Residual traces `YrA` (`K' × T`): `C + YrA` is the raw trace of each neuron.
    pub yr_a: Array2<f64>,
    /// AR coefficients per neuron (`p` values; empty for `p = 0`).
    pub g: Vec<Vec<f64>>,
    /// Baseline per neuron.
    pub bl: Vec<f64>,
    /// Initial value of the transient per neuron.
    pub c1: Vec<f64>,
    /// Noise level of each neuron's trace.
    pub neurons_sn: Vec<f64>,
    /// Sparsity penalty per neuron (0 for `p = 0`).
    pub lam: Vec<f64>,
    /// Indices of the input neurons that were kept (those whose `C` row does not sum to 0).
    pub kept: Vec<usize>,
    /// The footprints `A` of the kept neurons (`d × K'`).
    pub a: CscMatrix,
}

impl TemporalResult {
    /// The estimates after this update: the kept components of `before` with footprints, traces,
    /// background traces, residuals and deconvolution results replaced; pixel noise, background
    /// footprints and discarded components carried over.
    pub fn into_estimates(self, before: &mut Estimates) -> Estimates {
        let mut next = before.subset(&self.kept);
        next.a = self.a;
        next.c = self.c;
        next.f = self.f;
        next.s = Some(self.s);
        next.yr_a = Some(self.yr_a);
        next.g = Some(self.g);
        next.bl = Some(self.bl);
        next.c1 = Some(self.c1);
        next.neurons_sn = Some(self.neurons_sn);
        next.lam = Some(self.lam);
        next.sn = before.sn.clone();
        next.discarded = before.discarded.take();
        next
    }
}

/// `constrained_foopsi` options of CNMF's `temporal` parameter group (`p`, `bas_nonneg`,
/// `noise_range`, `noise_method`, `lags`, `fudge_factor`, `optimize_g`, `s_min`), with `g`, `sn`,
/// `bl`, `c1` left to be estimated.
///
/// # Errors
/// [`Error::InvalidParam`] for a `method_deconvolution` other than `'oasis'`, a `noise_range`
/// that is not two numbers, or `p > 2`.
pub fn foopsi_options(params: &TemporalParams) -> Result<FoopsiOptions> {
    if params.method_deconvolution != MethodDeconvolution::Oasis {
        return Err(Error::InvalidParam(format!(
            "method_deconvolution {:?} is not supported (only 'oasis')",
            params.method_deconvolution
        )));
    }
    let noise_range: [f64; 2] = params.noise_range.as_slice().try_into().map_err(|_| {
        Error::InvalidParam(format!("noise_range must have 2 values, got {}", params.noise_range.len()))
    })?;
    if params.p > 2 {
        return Err(Error::InvalidParam(format!("OASIS supports p = 0, 1, 2 only, got p = {}", params.p)));
    }
    Ok(FoopsiOptions {
        p: params.p,
        g: None,
        sn: None,
        bl: None,
        c1: None,
        bas_nonneg: params.bas_nonneg,
        noise_range,
        noise_method: params.noise_method,
        lags: params.lags,
        fudge_factor: params.fudge_factor,
        optimize_g: params.optimize_g,
        s_min: params.s_min,
    })
}

/// The entries of a sparse matrix row by row (CSR view): `entries[ptr[p]..ptr[p + 1]]` are the
/// `(column, value)` pairs of row `p`, columns increasing. Explicit zeros are dropped.
pub(crate) struct RowLists {
    ptr: Vec<usize>,
    entries: Vec<(usize, f64)>,
}

impl RowLists {
    pub(crate) fn new(m: &CscMatrix) -> Self {
        let mut ptr = vec![0usize; m.nrows() + 1];
        for (&r, &v) in m.indices().iter().zip(m.data()) {
            if v != 0.0 {
                ptr[r + 1] += 1;
            }
        }
        for p in 0..m.nrows() {
            ptr[p + 1] += ptr[p];
        }
        let mut next = ptr.clone();
        let mut entries = vec![(0usize, 0f64); ptr[m.nrows()]];
        for k in 0..m.ncols() {
            let (rows, vals) = m.col(k);
            for (&r, &v) in rows.iter().zip(vals) {
                if v != 0.0 {
                    entries[next[r]] = (k, f64::from(v));
                    next[r] += 1;
                }
            }
        }
        RowLists { ptr, entries }
    }

    pub(crate) fn row(&self, p: usize) -> &[(usize, f64)] {
        &self.entries[self.ptr[p]..self.ptr[p + 1]]
    }

    fn nrows(&self) -> usize {
        self.ptr.len() - 1
    }
}

/// `MᵀM` (dense, f64) from the row lists: accumulated pixel after pixel.
pub(crate) fn gram(rows: &RowLists, ncols: usize) -> Array2<f64> {
    let mut g = Array2::<f64>::zeros((ncols, ncols));
    for p in 0..rows.nrows() {
        let e = rows.row(p);
        for (x, &(i, vi)) in e.iter().enumerate() {
            for &(j, vj) in &e[x..] {
                g[[i, j]] += vi * vj;
            }
        }
    }
    for i in 0..ncols {
        for j in 0..i {
            g[[i, j]] = g[[j, i]];
        }
    }
    g
}

/// For every column, the other columns whose supports share a pixel (sorted).
pub(crate) fn overlap_lists(a: &CscMatrix) -> Vec<Vec<usize>> {
    let rows = RowLists::new(a);
    let mut nb: Vec<Vec<usize>> = vec![Vec::new(); a.ncols()];
    for p in 0..rows.nrows() {
        let e = rows.row(p);
        for &(i, _) in e {
            for &(j, _) in e {
                if i != j {
                    nb[i].push(j);
                }
            }
        }
    }
    for l in &mut nb {
        l.sort_unstable();
        l.dedup();
    }
    nb
}

/// CaImAn's `update_order_greedy(AᵀA)`: components in index order, each put in the first group
/// in which it overlaps nobody (supports sharing a pixel), else in a new group. The groups are
/// disjoint, cover every column and contain no two overlapping components.
pub fn update_order_greedy(a: &CscMatrix) -> Vec<Vec<usize>> {
    let nb = overlap_lists(a);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of = vec![usize::MAX; a.ncols()];
    let mut blocked: Vec<bool> = Vec::new();
    for i in 0..a.ncols() {
        blocked.clear();
        blocked.resize(groups.len(), false);
        for &j in &nb[i] {
            if group_of[j] != usize::MAX {
                blocked[group_of[j]] = true;
            }
        }
        let g = match blocked.iter().position(|&b| !b) {
            Some(g) => g,
            None => {
                groups.push(Vec::new());
                groups.len() - 1
            }
        };
        groups[g].push(i);
        group_of[i] = g;
    }
    groups
}

/// The block-coordinate state: `AA` by rows (sparse) and the residual traces `YrA`.
struct Bcd {
    /// `aa_rows[j]` = the non-zero `(i, AA[j, i])`.
    aa_rows: Vec<Vec<(usize, f64)>>,
    /// Residual traces, one row per component (neurons then background).
    yra: Array2<f64>,
}

impl Bcd {
    /// `YrA_i −= AA[j, i]·delta` for every `i` overlapping `j`.
    fn subtract(&mut self, j: usize, delta: &[f64]) {
        for &(i, w) in &self.aa_rows[j] {
            let mut row = self.yra.row_mut(i);
            let row = row.as_slice_mut().expect("standard layout");
            for (r, &dv) in row.iter_mut().zip(delta) {
                *r -= w * dv;
            }
        }
    }
}

fn check_shape(ok: bool, what: &'static str, expected: Vec<usize>, got: Vec<usize>) -> Result<()> {
    if ok { Ok(()) } else { Err(Error::ShapeMismatch { what, expected, got }) }
}

/// CaImAn's `update_temporal_components(Y, A, b, C, f, bl=None, c1=None, g=None, sn=None,
/// **temporal)`: block-coordinate update of the neurons' traces (deconvolved with OASIS) and of
/// the background traces, given the footprints (see the module docs).
///
/// `c` (`K × T`) and `f` (`nb × T`) are the current traces; `a` (`d × K`) and `b` (`d × nb`) the
/// footprints, pixels in Fortran order like `fov.yr` (the background count is `b.ncols()`;
/// `params.nb` is not used, as in CaImAn, where `b` overrides it). Deconvolution maps over
/// `exec`; the returned [`RunStats`] sum those maps.
///
/// # Errors
/// [`Error::ShapeMismatch`] for inconsistent shapes; [`Error::NonFinite`] for non-finite
/// footprints or traces (or a movie producing non-finite traces); [`Error::InvalidParam`] for
/// `ITER = 0` or unsupported deconvolution settings (see [`foopsi_options`]) or a trace too short
/// for `p`; [`Error::Exec`] if a worker fails.
pub fn update_temporal_components<E: Executor>(
    fov: &Fov<'_>,
    a: &CscMatrix,
    b: ArrayView2<'_, f32>,
    c: ArrayView2<'_, f64>,
    f: ArrayView2<'_, f64>,
    params: &TemporalParams,
    exec: &E,
) -> Result<(TemporalResult, RunStats)> {
    let (d, t) = fov.yr.dim();
    let (k, nb) = (a.ncols(), b.ncols());
    check_shape(a.nrows() == d, "A (rows = pixels)", vec![d], vec![a.nrows()])?;
    check_shape(b.nrows() == d, "b (rows = pixels)", vec![d], vec![b.nrows()])?;
    check_shape(c.dim() == (k, t), "C (components of A × frames)", vec![k, t], vec![c.nrows(), c.ncols()])?;
    check_shape(f.dim() == (nb, t), "f (columns of b × frames)", vec![nb, t], vec![f.nrows(), f.ncols()])?;
    if t == 0 {
        return Err(Error::Empty { what: "movie (no frames)" });
    }
    if a.data().iter().any(|v| !v.is_finite()) || b.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "footprints A / b" });
    }
    if c.iter().any(|v| !v.is_finite()) || f.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "traces C / f" });
    }
    if params.iter == 0 {
        return Err(Error::InvalidParam("temporal ITER must be at least 1".into()));
    }
    let opts = foopsi_options(params)?;

    let kk = k + nb;
    let ab = hstack_dense(a, b);
    let rows = RowLists::new(&ab);
    let g = gram(&rows, kk);
    let inv_na: Vec<f64> = (0..kk).map(|i| 1.0 / (g[[i, i]] + EPS_F32)).collect();
    let aa_rows: Vec<Vec<(usize, f64)>> =
        (0..kk).map(|j| (0..kk).filter(|&i| g[[j, i]] != 0.0).map(|i| (i, g[[j, i]] * inv_na[i])).collect()).collect();
    let (mut ya, mty_stats) = crate::passes::mt_y(fov, &ab, exec)?;
    for (i, mut row) in ya.rows_mut().into_iter().enumerate() {
        row.mapv_inplace(|v| v * inv_na[i]);
    }
    let mut cf = Array2::<f64>::zeros((kk, t));
    cf.slice_mut(s![..k, ..]).assign(&c);
    cf.slice_mut(s![k.., ..]).assign(&f);
    // YrA = YA − (AAᵀ Cf)ᵀ, one row per component.
    let mut yra = ya;
    for (j, row) in aa_rows.iter().enumerate() {
        let cj = cf.row(j);
        for &(i, w) in row {
            yra.row_mut(i).scaled_add(-w, &cj);
        }
    }
    let mut bcd = Bcd { aa_rows, yra };

    let groups = update_order_greedy(a);
    let (_, mut stats) = exec.map(Vec::<DeconvolveBlock>::new())?;
    if let Some(m) = &mty_stats {
        stats = stats.then(m);
    }
    let mut cur = cf.clone(); // C
    let mut cin = cf; // Cin: C at the start of the sweep
    let mut s_mat = Array2::<f64>::zeros((k, t));
    let mut fits: Vec<Option<FoopsiResult>> = vec![None; k];
    let mut delta = vec![0f64; t];
    for _ in 0..params.iter {
        for group in &groups {
            let mut traces = Array2::<f64>::zeros((group.len(), t));
            for (r, &j) in group.iter().enumerate() {
                let mut row = traces.row_mut(r);
                row.assign(&bcd.yra.row(j));
                row += &cin.row(j);
            }
            let (results, st) = deconvolve_traces_with(traces.view(), &opts, &TraceOverrides::default(), exec)?;
            stats = stats.then(&st);
            for (&j, res) in group.iter().zip(results) {
                let new = res.full_fit();
                for ((dv, &nv), &ov) in delta.iter_mut().zip(&new).zip(cur.row(j)) {
                    *dv = nv - ov;
                }
                bcd.subtract(j, &delta);
                cur.row_mut(j).as_slice_mut().expect("standard layout").copy_from_slice(&new);
                s_mat.row_mut(j).as_slice_mut().expect("standard layout").copy_from_slice(&res.s);
                fits[j] = Some(res);
            }
        }
        for m in k..kk {
            let new: Vec<f64> = bcd.yra.row(m).iter().zip(cin.row(m)).map(|(&y, &ci)| y + ci).collect();
            for ((dv, &nv), &ci) in delta.iter_mut().zip(&new).zip(cin.row(m)) {
                *dv = nv - ci;
            }
            bcd.subtract(m, &delta);
            cur.row_mut(m).as_slice_mut().expect("standard layout").copy_from_slice(&new);
        }
        let diff: f64 = cin.iter().zip(cur.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let norm: f64 = cur.iter().map(|x| x * x).sum::<f64>().sqrt();
        if diff <= 1e-3 * norm {
            tracing::debug!("temporal update: traces not changing significantly, stopping");
            break;
        }
        cin.assign(&cur);
    }

    let kept: Vec<usize> = (0..k).filter(|&j| cur.row(j).sum() != 0.0).collect();
    if kept.len() < k {
        tracing::info!(removed = k - kept.len(), "temporal update: removing empty components");
    }
    let pick = |m: &Array2<f64>| m.select(ndarray::Axis(0), &kept);
    let fits: Vec<FoopsiResult> = kept.iter().map(|&j| fits[j].take().expect("every neuron is in a group")).collect();
    let result = TemporalResult {
        c: pick(&cur),
        f: cur.slice(s![k.., ..]).to_owned(),
        s: pick(&s_mat),
        yr_a: pick(&bcd.yra),
        g: fits.iter().map(|r| r.g.clone()).collect(),
        bl: fits.iter().map(|r| r.bl).collect(),
        c1: fits.iter().map(|r| r.c1).collect(),
        neurons_sn: fits.iter().map(|r| r.sn).collect(),
        lam: fits.iter().map(|r| r.lam.unwrap_or(0.0)).collect(),
        a: select_columns(a, &kept),
        kept,
    };
    Ok((result, stats))
}

/// The columns `idx` of `a`, in that order.
pub(crate) fn select_columns(a: &CscMatrix, idx: &[usize]) -> CscMatrix {
    let mut indptr = vec![0usize];
    let mut indices = Vec::new();
    let mut data = Vec::new();
    for &i in idx {
        let (r, v) = a.col(i);
        indices.extend_from_slice(r);
        data.extend_from_slice(v);
        indptr.push(indices.len());
    }
    CscMatrix::from_parts(a.nrows(), idx.len(), indptr, indices, data).expect("columns of a valid matrix")
}
