//! CaImAn's merging of spatially overlapping, temporally correlated components,
//! `merging.merge_components(Y, A, b, C, R, f, S, sn_pix, temporal_params, spatial_params,
//! thr=merge_thr, fast_merge, mx, bl, c1, sn, g)` as called by `CNMF.merge_comps` (catalog §4.7).
//!
//! * Candidate pairs `i < j`: footprints overlapping (`(AᵀA)_ij > 0`) and Pearson correlation of
//!   the `C` rows `> merge_thr`. The connected components (more than one member) of that graph
//!   are the merge groups ([`merge_candidates`]), ordered by the sum of the correlations of
//!   their overlapping pairs, largest first (ties: the later group first, as reversing numpy's
//!   ascending `argsort`); at most `mx` groups are merged per call.
//! * Each group `g` (members `A_g`, raw traces `Ctmp = C_g + YrA_g`):
//!   * `fast_merge`: rank-1 NMF started at `a = A_g·w`, `w_k = ‖a_k‖·‖Ctmp_k‖`, 10 iterations
//!     of `c = max(0, (A_gᵀa)ᵀCtmp / aᵀa)`, `a = max(0, A_g(Ctmp·cᵀ) / cᵀc)` (stopping when
//!     `c = 0`);
//!   * otherwise the strongest member (largest `w_k`) gives `a` and `c`;
//!   * `a` is scaled to unit norm (`c` by the inverse), the merged raw trace is the projection
//!     `c_in = (A_gᵀa)ᵀCtmp / aᵀa`, deconvolved with `constrained_foopsi` (the `temporal`
//!     parameters, `g` and `sn` estimated; `p = 0`: `C = max(c_in, 0)`), and its residual is
//!     `YrA = c_in − C`.
//! * The members of every merged group are removed, the merged components are appended after
//!   the remaining ones; merged components whose deconvolved trace or footprint sums to 0 are
//!   dropped (their members are still removed, as in CaImAn).
//!
//! Deliberate deviations from CaImAn:
//! * \[Q\] CaImAn passes the *index* of the strongest member as `g` to `constrained_foopsi` when the
//!   estimates carry AR coefficients; here `g` is always re-estimated (`g = None`), which is what
//!   CaImAn does whenever `g` is unset (the default pipeline).
//! * The merged `C` is the full fit `c + bl + c1·γᵗ` (CaImAn stores the deconvolved `c` without
//!   baseline and initial transient, unlike every other row of `C`); `YrA = c_in − C` keeps
//!   `C + YrA = c_in` either way. Identical for `p = 0` (the merge inside `fit`).
//! * `lam` is carried along like `bl`/`c1` (CaImAn leaves it stale); `center` of the merged
//!   components is recomputed when the estimates have centres; evaluation results and ΔF/F no
//!   longer describe the components and are dropped (`snr_comp`, `r_values`, `f_dff`,
//!   `idx_components*`).
//! * A correlation with a constant trace (NaN in scipy) never creates an edge.
//! * A degenerate group (zero footprint or zero rank-1 factor, NaN in CaImAn) gives an empty
//!   merged component, dropped.
//! * Bad input (shapes, NaN threshold, unsupported deconvolution settings) is a typed [`Error`].
//!
//! `fov` supplies only the frame count and dims here (CaImAn's `Y` is unused by the merge).

use caiman_parallel::Executor;
use ndarray::{Array2, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::estimates::{Estimates, centers_of_mass};
use crate::foopsi::{TraceOverrides, deconvolve_traces_with};
use crate::params::{MergingParams, TemporalParams};
use crate::pixels::Fov;
use crate::sparse::CscMatrix;
use crate::stats::pearson;
use crate::temporal::{RowLists, foopsi_options, gram};

/// What [`merge_components`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The components after merging: the untouched ones in their order, then the merged ones.
    pub estimates: Estimates,
    /// The input components of every merged group (in merge order, members increasing),
    /// including groups whose merged component came out empty.
    pub merged_rois: Vec<Vec<usize>>,
    /// Number of merged components appended.
    pub n_merged: usize,
}

/// A group of components to merge.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeCandidate {
    /// Members (component indices, increasing).
    pub members: Vec<usize>,
    /// Sum of the trace correlations of the overlapping member pairs (the merge priority).
    pub score: f64,
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// The merge groups of CaImAn's `merge_components`, in merge order (all of them, before the `mx`
/// limit): connected components of the graph of overlapping pairs whose traces (`c`, `K × T`)
/// correlate above `thr`.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `c` does not have one row per column of `a`;
/// [`Error::InvalidParam`] for a NaN threshold.
pub fn merge_candidates(a: &CscMatrix, c: ArrayView2<'_, f64>, thr: f64) -> Result<Vec<MergeCandidate>> {
    let k = a.ncols();
    if c.nrows() != k {
        return Err(Error::ShapeMismatch {
            what: "C (rows = components of A)",
            expected: vec![k],
            got: vec![c.nrows()],
        });
    }
    if thr.is_nan() {
        return Err(Error::InvalidParam("merge_thr must not be NaN".into()));
    }
    let g = gram(&RowLists::new(a), k);
    let rows: Vec<Vec<f64>> = c.rows().into_iter().map(|r| r.to_vec()).collect();
    let mut pairs: Vec<(usize, usize, f64)> = Vec::new();
    let mut parent: Vec<usize> = (0..k).collect();
    for i in 0..k {
        for j in i + 1..k {
            if g[[i, j]] > 0.0 {
                let r = pearson(&rows[i], &rows[j]);
                pairs.push((i, j, r));
                if r > thr {
                    let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                    if ri != rj {
                        parent[ri.max(rj)] = ri.min(rj);
                    }
                }
            }
        }
    }
    // Labels in order of the smallest member (scipy's connected_components).
    let mut label_of_root = vec![usize::MAX; k];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut label = vec![0usize; k];
    for i in 0..k {
        let r = find(&mut parent, i);
        if label_of_root[r] == usize::MAX {
            label_of_root[r] = groups.len();
            groups.push(Vec::new());
        }
        label[i] = label_of_root[r];
        groups[label[i]].push(i);
    }
    let mut score = vec![0f64; groups.len()];
    for &(i, j, r) in &pairs {
        if label[i] == label[j] && !r.is_nan() {
            score[label[i]] += r;
        }
    }
    let mut cands: Vec<MergeCandidate> = groups
        .into_iter()
        .zip(score)
        .filter(|(m, _)| m.len() > 1)
        .map(|(members, score)| MergeCandidate { members, score })
        .collect();
    // numpy: argsort ascending (stable for these sizes), reversed.
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&x, &y| cands[x].score.total_cmp(&cands[y].score));
    order.reverse();
    let mut sorted = Vec::with_capacity(cands.len());
    for i in order {
        sorted.push(std::mem::replace(&mut cands[i], MergeCandidate { members: Vec::new(), score: 0.0 }));
    }
    Ok(sorted)
}

/// One group's rank-1 merge before deconvolution.
struct Merged {
    /// Footprint: pixel indices (increasing) and values, unit norm.
    rows: Vec<usize>,
    vals: Vec<f64>,
    /// The projected raw trace `c_in`.
    c_in: Vec<f64>,
}

/// CaImAn's `merge_iteration` up to the deconvolution; `None` for a degenerate group.
fn merge_group(a: &CscMatrix, ctmp: &Array2<f64>, members: &[usize], fast_merge: bool) -> Option<Merged> {
    let m = members.len();
    let t = ctmp.ncols();
    // Dense footprints of the members over the union of their supports.
    let mut rows: Vec<usize> = members.iter().flat_map(|&k| a.col(k).0.iter().copied()).collect();
    rows.sort_unstable();
    rows.dedup();
    let mut am = Array2::<f64>::zeros((rows.len(), m));
    for (x, &k) in members.iter().enumerate() {
        let (r, v) = a.col(k);
        for (&p, &val) in r.iter().zip(v) {
            let at = rows.binary_search(&p).expect("row of the union");
            am[[at, x]] = f64::from(val);
        }
    }
    let c_to_norm: Vec<f64> = (0..m)
        .map(|x| {
            let na: f64 = am.column(x).iter().map(|v| v * v).sum();
            let nc: f64 = ctmp.row(x).iter().map(|v| v * v).sum();
            (na * nc).sqrt()
        })
        .collect();
    let mut indx = 0;
    for (x, &v) in c_to_norm.iter().enumerate() {
        if v > c_to_norm[indx] {
            indx = x;
        }
    }
    let (mut av, mut cv): (Vec<f64>, Vec<f64>) = if fast_merge {
        let mut av: Vec<f64> = am.dot(&ndarray::Array1::from(c_to_norm)).to_vec();
        let mut cv = vec![0f64; t];
        for _ in 0..10 {
            let aa: f64 = av.iter().map(|v| v * v).sum();
            if aa == 0.0 {
                return None;
            }
            let w = am.t().dot(&ndarray::ArrayView1::from(&av));
            let proj = ctmp.t().dot(&w);
            for (c, &p) in cv.iter_mut().zip(proj.iter()) {
                *c = (p / aa).max(0.0);
            }
            let nc: f64 = cv.iter().map(|v| v * v).sum();
            if nc == 0.0 {
                break;
            }
            let ct = ctmp.dot(&ndarray::ArrayView1::from(&cv));
            av = am.dot(&ct).iter().map(|v| (v / nc).max(0.0)).collect();
        }
        (av, cv)
    } else {
        (am.column(indx).to_vec(), ctmp.row(indx).to_vec())
    };
    let norm = av.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    av.iter_mut().for_each(|v| *v /= norm);
    cv.iter_mut().for_each(|v| *v *= norm);
    let aa: f64 = av.iter().map(|v| v * v).sum();
    let w = am.t().dot(&ndarray::ArrayView1::from(&av));
    let proj = ctmp.t().dot(&w);
    let c_in: Vec<f64> = cv.iter().zip(proj.iter()).map(|(&c, &p)| c + (p / aa - c)).collect();
    if c_in.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(Merged { rows, vals: av, c_in })
}

/// CaImAn's `CNMF.merge_comps(Yr, mx, fast_merge)`: merges groups of overlapping components with
/// correlated traces (see the module docs) and returns the new estimates.
///
/// `est` must hold `a`, `c` and (optionally) `yr_a` (zeros when unset); `s`, `g`, `bl`, `c1`,
/// `neurons_sn`, `lam` are carried along where set. `mx` caps the merges of this call
/// (`usize::MAX` for CaImAn's `inf`). The merged traces are deconvolved through `exec`.
///
/// # Errors
/// [`Error::ShapeMismatch`] for inconsistent shapes (estimates vs. movie); [`Error::InvalidParam`]
/// for a NaN `merge_thr` or unsupported deconvolution settings; deconvolution errors;
/// [`Error::Exec`] if a worker fails.
pub fn merge_components<E: Executor>(
    fov: &Fov<'_>,
    est: &Estimates,
    merging: &MergingParams,
    temporal: &TemporalParams,
    mx: usize,
    fast_merge: bool,
    exec: &E,
) -> Result<MergeOutcome> {
    let k = est.n_components();
    let (d, t) = fov.yr.dim();
    let shape = |ok: bool, what: &'static str, expected: Vec<usize>, got: Vec<usize>| {
        if ok { Ok(()) } else { Err(Error::ShapeMismatch { what, expected, got }) }
    };
    shape(est.a.nrows() == d, "A (rows = pixels of the movie)", vec![d], vec![est.a.nrows()])?;
    shape(
        est.c.dim() == (k, t),
        "C (components × frames of the movie)",
        vec![k, t],
        vec![est.c.nrows(), est.c.ncols()],
    )?;
    if let Some(r) = &est.yr_a {
        shape(r.dim() == (k, t), "YrA (components × frames)", vec![k, t], vec![r.nrows(), r.ncols()])?;
    }
    let per_comp = [
        ("g", est.g.as_ref().map(Vec::len)),
        ("bl", est.bl.as_ref().map(Vec::len)),
        ("c1", est.c1.as_ref().map(Vec::len)),
        ("neurons_sn", est.neurons_sn.as_ref().map(Vec::len)),
        ("lam", est.lam.as_ref().map(Vec::len)),
    ];
    for (what, n) in per_comp {
        if let Some(n) = n
            && n != k
        {
            return Err(Error::InvalidParam(format!("{what} has {n} entries for {k} components")));
        }
    }
    if est.c.iter().any(|v| !v.is_finite()) || est.yr_a.as_ref().is_some_and(|r| r.iter().any(|v| !v.is_finite())) {
        return Err(Error::NonFinite { what: "traces C / YrA" });
    }
    let opts = foopsi_options(temporal)?;
    let cands = merge_candidates(&est.a, est.c.view(), merging.merge_thr)?;
    let nbmrg = cands.len().min(mx);
    if nbmrg == 0 {
        tracing::info!("no more components merged");
        return Ok(MergeOutcome { estimates: est.clone(), merged_rois: Vec::new(), n_merged: 0 });
    }
    let zeros;
    let r = match &est.yr_a {
        Some(r) => r,
        None => {
            zeros = Array2::<f64>::zeros((k, t));
            &zeros
        }
    };
    let merged_rois: Vec<Vec<usize>> = cands[..nbmrg].iter().map(|c| c.members.clone()).collect();
    let merged: Vec<Option<Merged>> = merged_rois
        .iter()
        .map(|roi| {
            tracing::info!(?roi, "merging components");
            let ctmp = est.c.select(Axis(0), roi) + r.select(Axis(0), roi);
            merge_group(&est.a, &ctmp, roi, fast_merge)
        })
        .collect();
    let live: Vec<&Merged> = merged.iter().flatten().collect();
    let mut traces = Array2::<f64>::zeros((live.len(), t));
    for (x, mg) in live.iter().enumerate() {
        traces.row_mut(x).as_slice_mut().expect("standard layout").copy_from_slice(&mg.c_in);
    }
    let (fits, _) = deconvolve_traces_with(traces.view(), &opts, &TraceOverrides::default(), exec)?;

    // Keep the non-empty merged components.
    let mut indptr = vec![0usize];
    let (mut indices, mut data) = (Vec::new(), Vec::new());
    let (mut c_rows, mut s_rows, mut r_rows) = (Vec::new(), Vec::new(), Vec::new());
    let (mut g_m, mut bl_m, mut c1_m, mut sn_m, mut lam_m) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (mg, fit) in live.iter().zip(fits) {
        let a_sum: f64 = mg.vals.iter().sum();
        let c_sum: f64 = fit.c.iter().sum();
        if a_sum == 0.0 || c_sum == 0.0 {
            continue;
        }
        for (&p, &v) in mg.rows.iter().zip(&mg.vals) {
            let v = v as f32;
            if v != 0.0 {
                indices.push(p);
                data.push(v);
            }
        }
        indptr.push(indices.len());
        let full = fit.full_fit();
        r_rows.push(mg.c_in.iter().zip(&full).map(|(x, y)| x - y).collect::<Vec<f64>>());
        c_rows.push(full);
        s_rows.push(fit.s);
        g_m.push(fit.g);
        bl_m.push(fit.bl);
        c1_m.push(fit.c1);
        sn_m.push(fit.sn);
        lam_m.push(fit.lam.unwrap_or(0.0));
    }
    let n_merged = c_rows.len();
    let stack = |rows: Vec<Vec<f64>>| -> Array2<f64> {
        let n = rows.len();
        Array2::from_shape_vec((n, t), rows.into_iter().flatten().collect()).expect("rows of T values")
    };
    let a_m = CscMatrix::from_parts(d, n_merged, indptr, indices, data)?;
    let mut part = Estimates::new(est.dims, a_m, stack(c_rows), est.b.clone(), est.f.clone())?;
    part.s = est.s.as_ref().map(|_| stack(s_rows));
    part.yr_a = Some(stack(r_rows));
    part.g = est.g.as_ref().map(|_| g_m);
    part.bl = est.bl.as_ref().map(|_| bl_m);
    part.c1 = est.c1.as_ref().map(|_| c1_m);
    part.neurons_sn = est.neurons_sn.as_ref().map(|_| sn_m);
    part.lam = est.lam.as_ref().map(|_| lam_m);
    part.sn = est.sn.clone();
    part.center = est.center.as_ref().map(|_| centers_of_mass(&part.a, est.dims));

    let mut in_roi = vec![false; k];
    merged_rois.iter().flatten().for_each(|&i| in_roi[i] = true);
    let good: Vec<usize> = (0..k).filter(|&i| !in_roi[i]).collect();
    let mut out = est.subset(&good);
    if out.yr_a.is_none() {
        out.yr_a = Some(Array2::zeros((good.len(), t)));
    }
    out.snr_comp = None;
    out.r_values = None;
    out.f_dff = None;
    out.append(&part)?;
    out.discarded = est.discarded.clone();
    tracing::info!(groups = nbmrg, merged = n_merged, "merged components");
    Ok(MergeOutcome { estimates: out, merged_rois, n_merged })
}
