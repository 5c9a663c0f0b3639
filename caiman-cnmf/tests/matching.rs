//! Component matching (`caiman_cnmf::matching`): the assignment solver against brute force over
//! all assignments (square and rectangular, forbidden pairs, ties), scipy's documented example,
//! CaImAn's binary-mask matching on synthetic masks (identical, shifted, distant, permuted,
//! empty sets), binary masks of footprints, correlation matching, and bad input.

use caiman_cnmf::Error;
use caiman_cnmf::matching::{
    binary_masks, linear_sum_assignment, match_by_correlation, nf_match_neurons_in_binary_masks,
};
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use ndarray::{Array2, array};
use proptest::prelude::*;

/// Minimal total cost over all assignments of min(rows, cols) pairs (forbidden = +inf);
/// `None` when every assignment uses a forbidden pair.
fn brute_force(cost: &Array2<f64>) -> Option<f64> {
    let (nr, nc) = cost.dim();
    let c = if nr <= nc { cost.clone() } else { cost.t().to_owned() };
    let (nr, nc) = c.dim();
    fn rec(c: &Array2<f64>, row: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
        if row == c.nrows() {
            *best = best.min(acc);
            return;
        }
        for j in 0..c.ncols() {
            if !used[j] && c[[row, j]].is_finite() {
                used[j] = true;
                rec(c, row + 1, used, acc + c[[row, j]], best);
                used[j] = false;
            }
        }
    }
    let mut best = f64::INFINITY;
    rec(&c, 0, &mut vec![false; nc], 0.0, &mut best);
    let _ = nr;
    best.is_finite().then_some(best)
}

fn check_assignment(cost: &Array2<f64>, pairs: &[(usize, usize)]) -> f64 {
    let (nr, nc) = cost.dim();
    assert_eq!(pairs.len(), nr.min(nc));
    assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "sorted by row, rows distinct: {pairs:?}");
    let mut cols: Vec<usize> = pairs.iter().map(|p| p.1).collect();
    cols.sort_unstable();
    cols.dedup();
    assert_eq!(cols.len(), pairs.len(), "columns distinct: {pairs:?}");
    assert!(pairs.iter().all(|&(i, j)| i < nr && j < nc));
    pairs.iter().map(|&(i, j)| cost[[i, j]]).sum()
}

#[test]
fn scipy_documented_example() {
    let cost = array![[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]];
    let pairs = linear_sum_assignment(cost.view()).unwrap();
    assert_eq!(pairs, vec![(0, 1), (1, 0), (2, 2)]);
    assert_eq!(check_assignment(&cost, &pairs), 5.0);
    // rectangular, both orientations
    let wide = array![[10.0, 1.0, 7.0, 3.0], [2.0, 9.0, 8.0, 9.0]];
    let pairs = linear_sum_assignment(wide.view()).unwrap();
    assert_eq!(pairs, vec![(0, 1), (1, 0)]);
    let tall = wide.t().to_owned();
    assert_eq!(linear_sum_assignment(tall.view()).unwrap(), vec![(0, 1), (1, 0)]);
    // empty
    assert!(linear_sum_assignment(Array2::<f64>::zeros((0, 3)).view()).unwrap().is_empty());
    assert!(linear_sum_assignment(Array2::<f64>::zeros((3, 0)).view()).unwrap().is_empty());
}

#[test]
fn forbidden_pairs_nan_and_infeasible() {
    let inf = f64::INFINITY;
    let cost = array![[inf, 1.0], [1.0, inf]];
    assert_eq!(linear_sum_assignment(cost.view()).unwrap(), vec![(0, 1), (1, 0)]);
    let infeasible = array![[inf, 1.0], [inf, 2.0]];
    assert!(matches!(linear_sum_assignment(infeasible.view()), Err(Error::InvalidParam(_))));
    let nan = array![[f64::NAN, 1.0], [1.0, 0.0]];
    assert!(matches!(linear_sum_assignment(nan.view()), Err(Error::NonFinite { .. })));
    let neg_inf = array![[f64::NEG_INFINITY, 1.0], [1.0, 0.0]];
    assert!(matches!(linear_sum_assignment(neg_inf.view()), Err(Error::NonFinite { .. })));
}

fn cost_matrix() -> impl Strategy<Value = Array2<f64>> {
    (1usize..=6, 1usize..=6).prop_flat_map(|(r, c)| {
        prop::collection::vec(prop_oneof![8 => (-50i32..50).prop_map(f64::from), 1 => Just(f64::INFINITY)], r * c)
            .prop_map(move |v| Array2::from_shape_vec((r, c), v).unwrap())
    })
}

proptest! {
    /// Optimal total cost equals the brute-force minimum (integer costs: ties are frequent).
    #[test]
    fn assignment_is_optimal(cost in cost_matrix()) {
        match (brute_force(&cost), linear_sum_assignment(cost.view())) {
            (Some(best), Ok(pairs)) => {
                let total = check_assignment(&cost, &pairs);
                prop_assert!((total - best).abs() < 1e-9, "total {} vs brute force {}", total, best);
            }
            (None, Err(Error::InvalidParam(_))) => {}
            (b, r) => prop_assert!(false, "brute force {:?} but solver {:?}", b, r),
        }
    }

    /// Real-valued costs (no ties): the same minimum.
    #[test]
    fn assignment_is_optimal_real(r in 1usize..=6, c in 1usize..=6, seed in any::<u64>()) {
        let mut s = seed | 1;
        let cost = Array2::from_shape_fn((r, c), |_| {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 10.0 - 3.0
        });
        let pairs = linear_sum_assignment(cost.view()).unwrap();
        let total = check_assignment(&cost, &pairs);
        let best = brute_force(&cost).unwrap();
        prop_assert!((total - best).abs() < 1e-9);
    }
}

// ------------------------------------------------------------------------------------------------
// Binary-mask matching
// ------------------------------------------------------------------------------------------------

/// A `w × h` rectangle with top-left corner `(i0, j0)` (Fortran pixel order).
fn rect(dims: Dims, i0: usize, j0: usize, w: usize, h: usize) -> Vec<bool> {
    let mut m = vec![false; dims.pixels()];
    for j in j0..j0 + h {
        for i in i0..i0 + w {
            m[i + dims.d1 * j] = true;
        }
    }
    m
}

#[test]
fn identical_sets_match_perfectly() {
    let dims = Dims::planar(40, 30);
    let gt = vec![rect(dims, 2, 2, 5, 5), rect(dims, 20, 5, 6, 4), rect(dims, 10, 20, 5, 5)];
    let res = nf_match_neurons_in_binary_masks(&gt, &gt, dims, 0.7, 10.0).unwrap();
    assert_eq!(res.tp_gt, vec![0, 1, 2]);
    assert_eq!(res.tp_comp, vec![0, 1, 2]);
    assert!(res.fn_gt.is_empty() && res.fp_comp.is_empty());
    assert_eq!((res.precision, res.recall, res.f1, res.accuracy), (1.0, 1.0, 1.0, 1.0));
    for i in 0..3 {
        assert_eq!(res.costs[[i, i]], 0.0);
    }
    // a permuted copy is matched back
    let comp = vec![gt[2].clone(), gt[0].clone(), gt[1].clone()];
    let res = nf_match_neurons_in_binary_masks(&gt, &comp, dims, 0.7, 10.0).unwrap();
    assert_eq!(res.tp_gt, vec![0, 1, 2]);
    assert_eq!(res.tp_comp, vec![1, 2, 0]);
    assert_eq!(res.f1, 1.0);
}

#[test]
fn shifted_distant_and_extra_masks() {
    let dims = Dims::planar(40, 40);
    let gt = vec![rect(dims, 5, 5, 5, 5), rect(dims, 20, 20, 5, 5), rect(dims, 30, 5, 5, 5)];
    let comp = vec![
        rect(dims, 6, 5, 5, 5),   // shifted by 1: IoU 20/30, cost 1/3 -> TP
        rect(dims, 24, 20, 5, 5), // shifted by 4: IoU 5/45, cost 8/9 -> not a TP
        rect(dims, 30, 25, 5, 5), // 20 px from gt 2: too far, cost 1
        rect(dims, 0, 30, 3, 3),  // nothing near
    ];
    let res = nf_match_neurons_in_binary_masks(&gt, &comp, dims, 0.7, 10.0).unwrap();
    assert!((res.costs[[0, 0]] - (1.0 - 20.0 / 30.0)).abs() < 1e-15);
    assert!((res.costs[[1, 1]] - (1.0 - 5.0 / 45.0)).abs() < 1e-15);
    assert_eq!(res.costs[[2, 2]], 1.0);
    assert_eq!(res.costs[[0, 1]], 1.0); // centres 15·√2 apart
    assert_eq!(res.tp_gt, vec![0]);
    assert_eq!(res.tp_comp, vec![0]);
    assert_eq!(res.fn_gt, vec![1, 2]);
    assert_eq!(res.fp_comp, vec![1, 2, 3]);
    assert_eq!(res.recall, 1.0 / 3.0);
    assert_eq!(res.precision, 1.0 / 4.0);
    assert!((res.f1 - 2.0 / 7.0).abs() < 1e-15);
    assert!((res.accuracy - 1.0 / 6.0).abs() < 1e-15);
    // a looser threshold accepts the 4-pixel shift too
    let res = nf_match_neurons_in_binary_masks(&gt, &comp, dims, 0.9, 10.0).unwrap();
    assert_eq!(res.tp_gt, vec![0, 1]);
    // min_dist is strict: centres exactly 4 apart with min_dist 4 are "too far"
    let res = nf_match_neurons_in_binary_masks(&gt[1..2], &comp[1..2], dims, 0.9, 4.0).unwrap();
    assert_eq!(res.costs[[0, 0]], 1.0);
    assert!(res.tp_gt.is_empty());
}

#[test]
fn empty_sets() {
    let dims = Dims::planar(10, 10);
    let some = vec![rect(dims, 1, 1, 3, 3)];
    let res = nf_match_neurons_in_binary_masks(&[], &some, dims, 0.7, 10.0).unwrap();
    assert!(res.tp_gt.is_empty() && res.fn_gt.is_empty());
    assert_eq!(res.fp_comp, vec![0]);
    assert!(res.recall.is_nan());
    assert_eq!((res.precision, res.f1), (0.0, 0.0));
    let res = nf_match_neurons_in_binary_masks(&some, &[], dims, 0.7, 10.0).unwrap();
    assert_eq!(res.fn_gt, vec![0]);
    assert_eq!(res.recall, 0.0);
    assert!(res.precision.is_nan());
    let res = nf_match_neurons_in_binary_masks(&[], &[], dims, 0.7, 10.0).unwrap();
    assert!(res.f1.is_nan() && res.assignment.is_empty());
    // empty masks never match (union 0 / centre NaN): cost 1
    let res = nf_match_neurons_in_binary_masks(&[vec![false; 100]], &[vec![false; 100]], dims, 0.7, 10.0).unwrap();
    assert_eq!(res.costs[[0, 0]], 1.0);
    assert!(res.tp_gt.is_empty());
}

#[test]
fn mask_bad_input() {
    let dims = Dims::planar(10, 10);
    let good = vec![rect(dims, 1, 1, 3, 3)];
    assert!(matches!(
        nf_match_neurons_in_binary_masks(&good, &[vec![false; 99]], dims, 0.7, 10.0),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        nf_match_neurons_in_binary_masks(&good, &good, dims, f64::NAN, 10.0),
        Err(Error::InvalidParam(_))
    ));
}

// ------------------------------------------------------------------------------------------------
// Footprints: masks and correlation matching
// ------------------------------------------------------------------------------------------------

fn blob(dims: Dims, ci: f64, cj: f64, sigma: f64) -> Vec<f32> {
    let mut v = vec![0f32; dims.pixels()];
    for j in 0..dims.d2 {
        for i in 0..dims.d1 {
            let r2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
            let x = (-r2 / (2.0 * sigma * sigma)).exp();
            if x > 0.01 {
                v[i + dims.d1 * j] = x as f32;
            }
        }
    }
    v
}

fn csc(cols: &[Vec<f32>]) -> CscMatrix {
    let d = cols[0].len();
    let dense = Array2::from_shape_fn((d, cols.len()), |(p, k)| cols[k][p]);
    CscMatrix::from_dense(dense.view())
}

#[test]
fn binary_masks_threshold_relative_to_max() {
    // values exact in binary, so that the strict comparison is tested exactly
    let a = CscMatrix::from_dense(array![[0.125f32, 0.0], [0.5, 0.0], [2.0, 0.0], [0.5, -1.0]].view());
    let m = binary_masks(&a, 0.25);
    assert_eq!(m[0], vec![false, false, true, false]); // 0.5 is not > 0.25·2
    assert_eq!(m[1], vec![false; 4]); // no positive values
    assert_eq!(binary_masks(&a, 0.0)[0], vec![true; 4]);
}

#[test]
fn binary_masks_of_blobs_match_ground_truth() {
    let dims = Dims::planar(50, 40);
    let centres = [(10.0, 10.0), (30.0, 12.0), (20.0, 30.0), (42.0, 32.0)];
    let gt: Vec<Vec<f32>> = centres.iter().map(|&(i, j)| blob(dims, i, j, 2.5)).collect();
    // estimates: shifted by half a pixel, in another order, plus one spurious component
    let mut est: Vec<Vec<f32>> =
        [2, 0, 3, 1].iter().map(|&k| blob(dims, centres[k].0 + 0.5, centres[k].1, 2.5)).collect();
    est.push(blob(dims, 5.0, 35.0, 2.0));
    let res = nf_match_neurons_in_binary_masks(
        &binary_masks(&csc(&gt), 0.2),
        &binary_masks(&csc(&est), 0.2),
        dims,
        0.7,
        10.0,
    )
    .unwrap();
    assert_eq!(res.tp_gt, vec![0, 1, 2, 3]);
    assert_eq!(res.tp_comp, vec![1, 3, 0, 2]);
    assert_eq!(res.fp_comp, vec![4]);
    assert_eq!((res.recall, res.precision), (1.0, 0.8));

    let m = match_by_correlation(&csc(&gt), &csc(&est)).unwrap();
    assert_eq!(m.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), vec![(0, 1), (1, 3), (2, 0), (3, 2)]);
    assert!(m.iter().all(|p| p.2 > 0.9), "{m:?}");
    // exact copies correlate perfectly
    let m = match_by_correlation(&csc(&gt), &csc(&gt)).unwrap();
    assert!(m.iter().all(|p| p.0 == p.1 && (p.2 - 1.0).abs() < 1e-12), "{m:?}");
    // against a brute-force Pearson correlation
    let (x, y) = (&gt[0], &est[1]);
    let n = x.len() as f64;
    let (mx, my) = (x.iter().map(|&v| f64::from(v)).sum::<f64>() / n, y.iter().map(|&v| f64::from(v)).sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(&a, &b)| (f64::from(a) - mx) * (f64::from(b) - my)).sum();
    let sxx: f64 = x.iter().map(|&a| (f64::from(a) - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|&b| (f64::from(b) - my).powi(2)).sum();
    let m = match_by_correlation(&csc(&gt), &csc(&est)).unwrap();
    assert!((m[0].2 - sxy / (sxx * syy).sqrt()).abs() < 1e-10);
    // bad input
    assert!(matches!(match_by_correlation(&csc(&gt), &CscMatrix::zeros(3, 1)), Err(Error::ShapeMismatch { .. })));
    let mut bad = gt.clone();
    bad[0][0] = f32::NAN;
    assert!(matches!(match_by_correlation(&csc(&bad), &csc(&gt)), Err(Error::NonFinite { .. })));
}
