//! Matching two sets of components: optimal assignment, binary masks, CaImAn's
//! `nf_match_neurons_in_binary_masks`, and a correlation matching of footprints.
//!
//! Reproduces:
//! * `scipy.optimize.linear_sum_assignment(cost)` — [`linear_sum_assignment`]: the shortest
//!   augmenting path algorithm (Crouse 2016, a Jonker–Volgenant variant, as scipy), rectangular,
//!   minimising the total cost; pairs sorted by row, `min(rows, cols)` of them; `+∞` entries are
//!   forbidden pairs.
//! * `caiman.base.rois.nf_match_neurons_in_binary_masks(masks_gt, masks_comp, thresh_cost=.7,
//!   min_dist=10)` with `distance_masks` and `find_matches` — [`nf_match_neurons_in_binary_masks`]:
//!   cost `D[i, j] = 1 − |G_i ∩ M_j| / |G_i ∪ M_j|` (one minus intersection over union) when the
//!   centres of mass (`scipy.ndimage.center_of_mass` of the masks) are closer than `min_dist`
//!   (strictly), otherwise 1 (also when the union is empty); Hungarian assignment on `D`; the
//!   assigned pairs with cost `< thresh_cost` are the true positives; `recall = TP/#gt`,
//!   `precision = TP/#comp`, `F1 = 2TP/(2TP + FP + FN)`, `accuracy = TP/(TP + FP + FN)`.
//! * [`binary_masks`] (footprints → masks: pixel `> thr · max` of its column) and
//!   [`match_by_correlation`] (Hungarian assignment on `1 − corr` of footprints), helpers for
//!   comparing results with a ground truth.
//!
//! Deviations: CaImAn computes the union as `(gt + comp).sum()` minus the intersection; that is
//! the union for masks given as numbers (`0/1` floats, what CaImAn's own callers pass after
//! `astype(float)`), but for `bool` arrays scipy's sparse `+` is a logical OR and the "union" is
//! the symmetric difference (identical masks then give `−∞`). Here the masks are `bool` and the
//! cost is always one minus the true IoU. The `enclosed_thr` option (which indexes the ground
//! truth sizes with the wrong index in CaImAn) is not provided. Empty sets give NaN rates where
//! CaImAn divides 0 by 0 (recall with no ground truth, precision with no components, F1 and
//! accuracy with neither).

use caiman_io::Dims;
use ndarray::{Array2, ArrayView2};

use crate::sparse::CscMatrix;
use crate::stats::pearson;
use crate::{Error, Result};

/// `scipy.optimize.linear_sum_assignment(cost)`: the assignment of rows to columns of a
/// rectangular cost matrix with the smallest total cost, as `(row, column)` pairs sorted by row
/// (`min(rows, cols)` pairs; none for an empty matrix). `+∞` marks a forbidden pair.
///
/// # Errors
/// [`Error::NonFinite`] for NaN or `−∞` entries, [`Error::InvalidParam`] when no assignment
/// avoids the forbidden pairs (scipy: "cost matrix is infeasible").
pub fn linear_sum_assignment(cost: ArrayView2<'_, f64>) -> Result<Vec<(usize, usize)>> {
    let (nr0, nc0) = cost.dim();
    if nr0 == 0 || nc0 == 0 {
        return Ok(Vec::new());
    }
    if cost.iter().any(|&v| v.is_nan() || v == f64::NEG_INFINITY) {
        return Err(Error::NonFinite { what: "cost matrix (NaN or -inf)" });
    }
    // work on rows ≤ columns
    let transpose = nc0 < nr0;
    let c: Array2<f64> = if transpose { cost.t().to_owned() } else { cost.to_owned() };
    let (nr, nc) = c.dim();
    let c = c.as_standard_layout().into_owned();
    let cs = c.as_slice().expect("standard layout");

    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut spc = vec![f64::INFINITY; nc];
    let mut path = vec![usize::MAX; nc];
    let mut col4row = vec![usize::MAX; nr];
    let mut row4col = vec![usize::MAX; nc];
    let mut sr = vec![false; nr];
    let mut sc = vec![false; nc];
    let mut remaining = vec![0usize; nc];

    for cur_row in 0..nr {
        // augmenting path from cur_row
        let mut min_val = 0.0f64;
        let mut num_remaining = nc;
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        sr.iter_mut().for_each(|x| *x = false);
        sc.iter_mut().for_each(|x| *x = false);
        spc.iter_mut().for_each(|x| *x = f64::INFINITY);
        let mut i = cur_row;
        let sink = loop {
            let mut index = usize::MAX;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + cs[i * nc + j] - u[i] - v[j];
                if r < spc[j] {
                    path[j] = i;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == usize::MAX) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            if min_val == f64::INFINITY || index == usize::MAX {
                return Err(Error::InvalidParam("cost matrix is infeasible".into()));
            }
            let j = remaining[index];
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
            if row4col[j] == usize::MAX {
                break j;
            }
            i = row4col[j];
        };
        // update the dual variables
        u[cur_row] += min_val;
        for ii in 0..nr {
            if sr[ii] && ii != cur_row {
                u[ii] += min_val - spc[col4row[ii]];
            }
        }
        for jj in 0..nc {
            if sc[jj] {
                v[jj] -= min_val - spc[jj];
            }
        }
        // augment
        let mut j = sink;
        loop {
            let ii = path[j];
            row4col[j] = ii;
            std::mem::swap(&mut col4row[ii], &mut j);
            if ii == cur_row {
                break;
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> =
        if transpose { (0..nr).map(|i| (col4row[i], i)).collect() } else { (0..nr).map(|i| (i, col4row[i])).collect() };
    pairs.sort_unstable();
    Ok(pairs)
}

/// Binary masks of footprints: pixel `p` of component `k` is in the mask iff
/// `a[p, k] > thr · max_p a[p, k]` (CaImAn users typically take `thr` = 0.2–0.3 of the maximum;
/// with `thr = 0` the mask is the positive support). One `Vec<bool>` of `a.nrows()` pixels
/// (Fortran order, as `A`) per column; a column without positive values gives an empty mask.
pub fn binary_masks(a: &CscMatrix, thr: f64) -> Vec<Vec<bool>> {
    (0..a.ncols())
        .map(|k| {
            let (rows, vals) = a.col(k);
            let mx = vals.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let mut mask = vec![false; a.nrows()];
            for (&p, &v) in rows.iter().zip(vals) {
                let v = f64::from(v);
                if v > 0.0 && v > thr * mx {
                    mask[p] = true;
                }
            }
            mask
        })
        .collect()
}

/// The result of [`nf_match_neurons_in_binary_masks`].
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult {
    /// Ground-truth indices of the true positives (increasing).
    pub tp_gt: Vec<usize>,
    /// The matching components, pairwise with `tp_gt`.
    pub tp_comp: Vec<usize>,
    /// Ground-truth masks without a match (false negatives, increasing).
    pub fn_gt: Vec<usize>,
    /// Components without a match (false positives, increasing).
    pub fp_comp: Vec<usize>,
    /// `TP / #components` (NaN without components).
    pub precision: f64,
    /// `TP / #ground truth` (NaN without ground truth).
    pub recall: f64,
    /// `2TP / (2TP + FP + FN)` (NaN when both sets are empty).
    pub f1: f64,
    /// `TP / (TP + FP + FN)` (NaN when both sets are empty).
    pub accuracy: f64,
    /// The cost matrix `D` (`#gt × #comp`): `1 − IoU`, or 1 for distant or disjoint masks.
    pub costs: Array2<f64>,
    /// The optimal assignment, `(gt, comp)` pairs sorted by `gt`, all costs included.
    pub assignment: Vec<(usize, usize)>,
}

/// Centre of mass (row, column, plane) of a mask in Fortran pixel order (NaN when empty).
fn mask_com(mask: &[bool], dims: Dims) -> [f64; 3] {
    let (mut acc, mut n) = ([0.0; 3], 0usize);
    for (p, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        acc[0] += (p % dims.d1) as f64;
        acc[1] += ((p / dims.d1) % dims.d2) as f64;
        acc[2] += (p / (dims.d1 * dims.d2)) as f64;
        n += 1;
    }
    acc.map(|v| v / n as f64)
}

/// CaImAn's `nf_match_neurons_in_binary_masks(masks_gt, masks_comp, thresh_cost, min_dist)`
/// (see the module doc for the cost and the rates). Masks are `bool` pixel vectors in Fortran
/// order (`p = row + d1·col`, as the columns of `A`), each of `dims.pixels()` entries.
///
/// # Errors
/// [`Error::ShapeMismatch`] if a mask does not have `dims.pixels()` entries,
/// [`Error::InvalidParam`] for a NaN `thresh_cost` or `min_dist`.
pub fn nf_match_neurons_in_binary_masks(
    gt: &[Vec<bool>],
    comp: &[Vec<bool>],
    dims: Dims,
    thresh_cost: f64,
    min_dist: f64,
) -> Result<MatchResult> {
    let d = dims.pixels();
    if let Some(m) = gt.iter().chain(comp).find(|m| m.len() != d) {
        return Err(Error::ShapeMismatch {
            what: "binary mask (pixels of the frame)",
            expected: vec![d],
            got: vec![m.len()],
        });
    }
    if thresh_cost.is_nan() || min_dist.is_nan() {
        return Err(Error::InvalidParam("thresh_cost and min_dist must not be NaN".into()));
    }
    let (ng, nc) = (gt.len(), comp.len());
    let com_g: Vec<[f64; 3]> = gt.iter().map(|m| mask_com(m, dims)).collect();
    let com_c: Vec<[f64; 3]> = comp.iter().map(|m| mask_com(m, dims)).collect();
    let px_g: Vec<Vec<usize>> = gt.iter().map(|m| (0..d).filter(|&p| m[p]).collect()).collect();
    let size_c: Vec<usize> = comp.iter().map(|m| m.iter().filter(|&&b| b).count()).collect();
    let mut costs = Array2::from_elem((ng, nc), 1.0);
    for i in 0..ng {
        for j in 0..nc {
            let dist = com_g[i].iter().zip(&com_c[j]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            if dist < min_dist {
                let inter = px_g[i].iter().filter(|&&p| comp[j][p]).count();
                let union = px_g[i].len() + size_c[j] - inter;
                if union > 0 {
                    costs[[i, j]] = 1.0 - inter as f64 / union as f64;
                }
            }
        }
    }
    let assignment = linear_sum_assignment(costs.view())?;
    let tp: Vec<(usize, usize)> = assignment.iter().copied().filter(|&(i, j)| costs[[i, j]] < thresh_cost).collect();
    let n_tp = tp.len() as f64;
    let (fn_, fp) = (ng as f64 - n_tp, nc as f64 - n_tp);
    let tp_gt: Vec<usize> = tp.iter().map(|p| p.0).collect();
    let tp_comp: Vec<usize> = tp.iter().map(|p| p.1).collect();
    let mut matched_c = vec![false; nc];
    tp_comp.iter().for_each(|&j| matched_c[j] = true);
    let mut matched_g = vec![false; ng];
    tp_gt.iter().for_each(|&i| matched_g[i] = true);
    Ok(MatchResult {
        fn_gt: (0..ng).filter(|&i| !matched_g[i]).collect(),
        fp_comp: (0..nc).filter(|&j| !matched_c[j]).collect(),
        tp_gt,
        tp_comp,
        precision: n_tp / (n_tp + fp),
        recall: n_tp / (n_tp + fn_),
        f1: 2.0 * n_tp / (2.0 * n_tp + fp + fn_),
        accuracy: n_tp / (n_tp + fp + fn_),
        costs,
        assignment,
    })
}

/// Pearson correlation of every column of `a` with every column of `b` (dense over all pixels,
/// zeros included; NaN for a constant column): a `a.ncols() × b.ncols()` matrix.
///
/// # Panics
/// If the row counts differ.
fn column_correlations(a: &CscMatrix, b: &CscMatrix) -> Array2<f64> {
    assert_eq!(a.nrows(), b.nrows(), "same number of pixels");
    let n = a.nrows() as f64;
    let stats = |m: &CscMatrix| -> Vec<(f64, f64)> {
        (0..m.ncols())
            .map(|k| {
                let v = m.col(k).1;
                let s: f64 = v.iter().map(|&x| f64::from(x)).sum();
                let mean = s / n;
                let ss: f64 =
                    v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() + (n - v.len() as f64) * mean * mean;
                (mean, ss.sqrt())
            })
            .collect()
    };
    let (sa, sb) = (stats(a), stats(b));
    let mut dense = vec![0f64; a.nrows()];
    let mut out = Array2::zeros((a.ncols(), b.ncols()));
    for i in 0..a.ncols() {
        let (ri, vi) = a.col(i);
        for (&r, &v) in ri.iter().zip(vi) {
            dense[r] = f64::from(v);
        }
        for j in 0..b.ncols() {
            let (rj, vj) = b.col(j);
            let dot: f64 = rj.iter().zip(vj).map(|(&r, &v)| dense[r] * f64::from(v)).sum();
            let cov = dot - n * sa[i].0 * sb[j].0;
            out[[i, j]] = cov / (sa[i].1 * sb[j].1);
        }
        for &r in ri {
            dense[r] = 0.0;
        }
    }
    out
}

/// Matches the footprints of `a_est` to those of `a_ref` (same pixels) by the Hungarian
/// assignment on `1 − corr`, with `corr` the Pearson correlation of the two footprints over all
/// pixels (a constant footprint counts as correlation 0 for the assignment). Returns
/// `(ref, est, corr)` for each assigned pair, sorted by `ref`; `min(#ref, #est)` pairs.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the matrices have different numbers of rows,
/// [`Error::NonFinite`] for non-finite footprint values.
pub fn match_by_correlation(a_ref: &CscMatrix, a_est: &CscMatrix) -> Result<Vec<(usize, usize, f64)>> {
    if a_ref.nrows() != a_est.nrows() {
        return Err(Error::ShapeMismatch {
            what: "footprints to match (pixels)",
            expected: vec![a_ref.nrows()],
            got: vec![a_est.nrows()],
        });
    }
    if a_ref.data().iter().chain(a_est.data()).any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "footprints to match" });
    }
    let corr = column_correlations(a_ref, a_est);
    let cost = corr.mapv(|c| if c.is_nan() { 1.0 } else { 1.0 - c });
    let pairs = linear_sum_assignment(cost.view())?;
    Ok(pairs.into_iter().map(|(i, j)| (i, j, corr[[i, j]])).collect())
}

/// How the accepted components of a fit compare with a synthetic movie's ground truth
/// ([`score_against_truth`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TruthScore {
    /// The mask matching (ground truth = the neurons centred in the field of view).
    pub matching: MatchResult,
    /// Ground-truth neurons centred in the field of view, by index into the truth.
    pub gt_neurons: Vec<usize>,
    /// Pearson correlation of each matched component's trace with its neuron's calcium (in the
    /// order of `matching.tp_gt`).
    pub trace_corr: Vec<f64>,
    /// Median of `trace_corr` (NaN when nothing matched).
    pub median_trace_corr: f64,
}

/// Binary masks of the ground-truth neurons centred in the field of view (`truth.in_fov`): pixels
/// above `thr` of each footprint's peak, moved by `offset` (rows, columns; where the corrected
/// movie's template put the scene) and clipped to the frame.
pub fn truth_masks(
    truth: &caiman_io::synth::GroundTruth,
    offset: [isize; 2],
    thr: f64,
) -> (Vec<usize>, Vec<Vec<bool>>) {
    let dims = truth.dims();
    let idx: Vec<usize> = (0..truth.n_neurons()).filter(|&k| truth.in_fov[k]).collect();
    let masks = idx
        .iter()
        .map(|&k| {
            let (rows, vals) = truth.a.column(k);
            let peak = vals.iter().fold(0f32, |m, &v| m.max(v));
            let mut mask = vec![false; dims.pixels()];
            for (&p, &v) in rows.iter().zip(vals) {
                let p = p as usize;
                let (i, j) = ((p % dims.d1) as isize + offset[0], (p / dims.d1) as isize + offset[1]);
                if f64::from(v) > thr * f64::from(peak)
                    && i >= 0
                    && j >= 0
                    && (i as usize) < dims.d1
                    && (j as usize) < dims.d2
                {
                    mask[i as usize + dims.d1 * j as usize] = true;
                }
            }
            mask
        })
        .collect();
    (idx, masks)
}

/// Scores components `a` (footprints, `d × K`) with traces `c` (`K × T`) against a synthetic
/// movie's ground truth: masks above 20 % of each footprint's peak on both sides, CaImAn's
/// `nf_match_neurons_in_binary_masks` with its defaults (cost 0.7, centroid distance 10 px), and
/// the correlation of every matched trace with the true calcium. `offset` is where the scene sits
/// in the (motion-corrected) movie.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the footprints do not have the truth's pixel count or `c` does not
/// have one row per footprint and the truth's frame count; errors of the matching.
pub fn score_against_truth(
    a: &CscMatrix,
    c: ArrayView2<'_, f64>,
    truth: &caiman_io::synth::GroundTruth,
    offset: [isize; 2],
) -> Result<TruthScore> {
    let dims = truth.dims();
    if a.nrows() != dims.pixels() || c.nrows() != a.ncols() || (c.nrows() > 0 && c.ncols() != truth.frames()) {
        return Err(Error::ShapeMismatch {
            what: "components vs ground truth (pixels, components, frames)",
            expected: vec![dims.pixels(), a.ncols(), truth.frames()],
            got: vec![a.nrows(), c.nrows(), c.ncols()],
        });
    }
    let (gt_neurons, gt) = truth_masks(truth, offset, 0.2);
    let matching = nf_match_neurons_in_binary_masks(&gt, &binary_masks(a, 0.2), dims, 0.7, 10.0)?;
    let trace_corr: Vec<f64> = matching
        .tp_gt
        .iter()
        .zip(&matching.tp_comp)
        .map(|(&g, &k)| {
            let t: Vec<f64> = truth.c.row(gt_neurons[g]).iter().map(|&v| f64::from(v)).collect();
            pearson(&c.row(k).to_vec(), &t)
        })
        .collect();
    let mut sorted: Vec<f64> = trace_corr.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median_trace_corr = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
    };
    Ok(TruthScore { matching, gt_neurons, trace_corr, median_trace_corr })
}
