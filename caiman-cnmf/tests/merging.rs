//! Merging (`merge_components`, `merge_candidates`): split or duplicated components are merged
//! back into one whose rank-1 product reproduces the members, uncorrelated or non-overlapping
//! components are left alone, the threshold, the priority order and `mx` are respected, the
//! group graph matches a brute-force closure, executors agree and bad input is a typed error.
#![allow(clippy::print_stderr)]

mod common;

use caiman_cnmf::Error;
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::merging::{MergeOutcome, merge_candidates, merge_components};
use caiman_cnmf::params::{MergingParams, MethodDeconvolution, TemporalParams};
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use caiman_parallel::{Linear, Threads};
use common::{Rng, corr};
use ndarray::{Array1, Array2, Axis, s};
use proptest::prelude::*;

const D1: usize = 20;
const D2: usize = 24;
const T: usize = 400;

/// A Gaussian blob (radius 4) centred at (ci, cj), as a dense pixel vector (Fortran order).
fn blob(ci: f64, cj: f64) -> Vec<f32> {
    let mut v = vec![0f32; D1 * D2];
    for j in 0..D2 {
        for i in 0..D1 {
            let r2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
            if r2 <= 16.0 {
                v[i + D1 * j] = (-r2 / 6.0).exp() as f32;
            }
        }
    }
    v
}

/// An AR(1) calcium trace (γ = 0.9) with positive baseline 1.
fn calcium(rng: &mut Rng) -> Vec<f64> {
    let mut c = vec![0f64; T];
    for t in 1..T {
        let s = if rng.uniform() < 0.05 { 1.0 + 2.0 * rng.uniform() } else { 0.0 };
        c[t] = 0.9 * c[t - 1] + s;
    }
    c.iter().map(|v| v + 1.0).collect()
}

fn noisy(rng: &mut Rng, c: &[f64], sigma: f64) -> Vec<f64> {
    c.iter().map(|v| v + sigma * rng.normal()).collect()
}

/// Estimates from footprint columns and traces, YrA = small noise, everything else unset.
fn estimates(cols: &[Vec<f32>], traces: &[Vec<f64>], rng: &mut Rng) -> Estimates {
    let k = cols.len();
    let dense = Array2::from_shape_fn((D1 * D2, k), |(p, x)| cols[x][p]);
    let c = Array2::from_shape_fn((k, T), |(x, t)| traces[x][t]);
    let b = Array2::<f32>::ones((D1 * D2, 1));
    let f = Array2::<f64>::from_elem((1, T), 5.0);
    let mut e = Estimates::new(Dims::planar(D1, D2), CscMatrix::from_dense(dense.view()), c, b, f).unwrap();
    e.yr_a = Some(Array2::from_shape_fn((k, T), |_| 0.05 * rng.normal()));
    e
}

fn movie() -> Array2<f32> {
    Array2::<f32>::zeros((D1 * D2, T))
}

fn p0() -> TemporalParams {
    TemporalParams { p: 0, ..TemporalParams::default() }
}

fn merge(est: &Estimates, thr: f64, temporal: &TemporalParams, mx: usize, fast: bool) -> MergeOutcome {
    let yr = movie();
    let fov = Fov::new(est.dims, yr.view()).unwrap();
    let mp = MergingParams { merge_thr: thr, ..MergingParams::default() };
    merge_components(&fov, est, &mp, temporal, mx, fast, &Linear::new()).unwrap()
}

fn rel_err(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = y.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[test]
fn split_footprint_with_one_trace_is_merged_into_one() {
    let mut rng = Rng(1);
    let whole = blob(10.0, 12.0);
    // Left and right halves sharing the middle column (half of it each, so they overlap and
    // sum to the blob).
    let half = |left: bool| -> Vec<f32> {
        (0..D1 * D2)
            .map(|p| match p / D1 {
                12 => 0.5 * whole[p],
                j if (j < 12) == left => whole[p],
                _ => 0.0,
            })
            .collect()
    };
    let other = blob(3.0, 3.0);
    let c = calcium(&mut rng);
    let c_other = calcium(&mut rng);
    let traces = vec![noisy(&mut rng, &c, 0.05), c_other.clone(), noisy(&mut rng, &c, 0.05)];
    let est = estimates(&[half(true), other, half(false)], &traces, &mut rng);
    // The members' raw contributions A_g (C_g + YrA_g).
    let raw_in = &est.c + est.yr_a.as_ref().unwrap();
    let a_g = est.a.to_dense().mapv(f64::from).select(Axis(1), &[0, 2]);
    let members_raw = a_g.dot(&raw_in.select(Axis(0), &[0, 2]));
    let out = merge(&est, 0.8, &p0(), 50, true);
    assert_eq!(out.merged_rois, vec![vec![0, 2]]);
    assert_eq!(out.n_merged, 1);
    let e = &out.estimates;
    assert_eq!(e.n_components(), 2, "the untouched component and the merged one");
    assert_eq!(e.c.row(0).to_vec(), c_other, "untouched component first, unchanged");
    // The merged footprint is the whole blob, unit norm.
    let a_m: Vec<f64> = e.a.to_dense().column(1).iter().map(|&v| f64::from(v)).collect();
    let whole64: Vec<f64> = whole.iter().map(|&v| f64::from(v)).collect();
    assert!((e.a.col_norms()[1] - 1.0).abs() < 1e-6);
    let r_a = corr(&a_m, &whole64);
    let r_c = corr(&e.c.row(1).to_vec(), &c);
    eprintln!("split blob: corr(a, blob) {r_a:.5}, corr(c, truth) {r_c:.5}");
    assert!(r_a > 0.999 && r_c > 0.99);
    // C + YrA of the merged component is c_in; its rank-1 product reproduces the members' raw
    // contributions (A_g (C_g + YrA_g)) up to the noise.
    let raw = &e.c + e.yr_a.as_ref().unwrap();
    let a_col = e.a.to_dense().mapv(f64::from).select(Axis(1), &[1]);
    let merged_raw = a_col.dot(&raw.select(Axis(0), &[1]));
    let err = rel_err(&merged_raw, &members_raw);
    eprintln!("split blob: relative error of the rank-1 raw product {err:.4}");
    assert!(err < 0.05, "{err}");
    // p = 0: S = C = max(c_in, 0), no AR coefficients.
    assert_eq!(e.s, None, "S was unset and stays unset");
    assert!(e.c.row(1).iter().all(|&v| v >= 0.0));
}

#[test]
fn duplicated_component_is_merged_and_deconvolved() {
    let mut rng = Rng(2);
    let a = blob(9.0, 9.0);
    let c = calcium(&mut rng);
    let est0 = estimates(&[a.clone(), a.clone()], &[noisy(&mut rng, &c, 0.02), noisy(&mut rng, &c, 0.02)], &mut rng);
    let mut est = est0.clone();
    // Deconvolution results present: they are carried along and filled for the merged one.
    est.s = Some(est.c.clone());
    est.g = Some(vec![vec![0.9], vec![0.9]]);
    est.bl = Some(vec![1.0, 1.0]);
    est.c1 = Some(vec![0.0, 0.0]);
    est.neurons_sn = Some(vec![0.05, 0.05]);
    est.lam = Some(vec![0.1, 0.1]);
    est.center = Some(est.centers_of_mass());
    let p1 = TemporalParams { p: 1, ..TemporalParams::default() };
    for fast in [true, false] {
        let out = merge(&est, 0.8, &p1, 50, fast);
        let e = &out.estimates;
        assert_eq!(out.merged_rois, vec![vec![0, 1]]);
        assert_eq!(e.n_components(), 1);
        for v in [&e.bl, &e.c1, &e.neurons_sn, &e.lam] {
            assert_eq!(v.as_ref().map(Vec::len), Some(1));
        }
        assert_eq!(e.g.as_ref().unwrap()[0].len(), 1, "p = 1: one AR coefficient");
        let g = e.g.as_ref().unwrap()[0][0];
        assert!(g > 0.7 && g < 1.0, "g = {g}");
        assert_eq!(e.s.as_ref().unwrap().dim(), (1, T));
        assert_eq!(e.center.as_ref().unwrap().dim(), (1, 2));
        // Merged footprint: the blob, unit norm; trace ≈ 2‖a‖·c (both copies summed).
        let na = a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let c_m = e.c.row(0).to_vec();
        let raw: Vec<f64> = (&e.c.row(0) + &e.yr_a.as_ref().unwrap().row(0)).to_vec();
        let want: Vec<f64> = c.iter().map(|v| 2.0 * na * v).collect();
        let r = corr(&c_m, &c);
        let max_rel = raw.iter().zip(&want).map(|(x, y)| (x - y).abs() / y.abs()).fold(0.0, f64::max);
        eprintln!("duplicate (fast = {fast}): corr(C, truth) {r:.4}, max rel err of C + YrA vs 2‖a‖c {max_rel:.3e}");
        assert!(r > 0.97);
        assert!(max_rel < 0.3);
        let mean_ratio = raw.iter().sum::<f64>() / want.iter().sum::<f64>();
        assert!((mean_ratio - 1.0).abs() < 0.01, "{mean_ratio}");
    }
}

#[test]
fn non_overlapping_or_uncorrelated_components_are_not_merged() {
    let mut rng = Rng(3);
    let c = calcium(&mut rng);
    // Same trace, disjoint footprints.
    let est = estimates(&[blob(4.0, 4.0), blob(15.0, 18.0)], &[c.clone(), c.clone()], &mut rng);
    let out = merge(&est, 0.8, &p0(), 50, true);
    assert_eq!(out.n_merged, 0);
    assert!(out.merged_rois.is_empty());
    assert_eq!(out.estimates, est);
    // Overlapping footprints, independent traces.
    let est = estimates(&[blob(8.0, 8.0), blob(10.0, 10.0)], &[calcium(&mut rng), calcium(&mut rng)], &mut rng);
    assert_eq!(merge(&est, 0.8, &p0(), 50, true).n_merged, 0);
}

#[test]
fn merge_threshold_is_respected() {
    let mut rng = Rng(4);
    let c = calcium(&mut rng);
    let c2 = noisy(&mut rng, &c, 0.8);
    let r = corr(&c, &c2);
    eprintln!("threshold test: corr of the two traces {r:.4}");
    assert!(r > 0.3 && r < 0.95);
    let est = estimates(&[blob(8.0, 8.0), blob(9.0, 10.0)], &[c, c2], &mut rng);
    assert_eq!(merge(&est, r + 1e-3, &p0(), 50, true).n_merged, 0, "corr just below the threshold");
    assert_eq!(merge(&est, r - 1e-3, &p0(), 50, true).n_merged, 1, "corr just above the threshold");
    // A threshold of 1 never merges distinct traces (the test is `corr > thr`).
    assert_eq!(merge(&est, 1.0, &p0(), 50, true).n_merged, 0);
}

#[test]
fn groups_are_chained_ordered_by_score_and_capped_by_mx() {
    let mut rng = Rng(5);
    let ca = calcium(&mut rng);
    let cb = calcium(&mut rng);
    // Group 1: components 0–1–2 in a chain (0 and 2 do not overlap), traces ca + noise 0.3.
    // Group 2: components 3, 4 overlapping, traces cb + tiny noise (higher correlation, but one
    // pair only). Component 5: alone.
    let cols = [blob(4.0, 4.0), blob(4.0, 10.0), blob(4.0, 16.0), blob(15.0, 6.0), blob(15.0, 8.0), blob(15.0, 20.0)];
    let traces = [
        noisy(&mut rng, &ca, 0.3),
        noisy(&mut rng, &ca, 0.3),
        noisy(&mut rng, &ca, 0.3),
        noisy(&mut rng, &cb, 0.01),
        noisy(&mut rng, &cb, 0.01),
        calcium(&mut rng),
    ];
    let est = estimates(&cols, &traces, &mut rng);
    let cands = merge_candidates(&est.a, est.c.view(), 0.8).unwrap();
    let ov = |i: usize, j: usize| est.a.col(i).0.iter().any(|p| est.a.col(j).0.contains(p));
    assert!(ov(0, 1) && ov(1, 2) && !ov(0, 2) && ov(3, 4));
    let members: Vec<Vec<usize>> = cands.iter().map(|c| c.members.clone()).collect();
    // Chain group scores r01 + r12 (about 1.9) > the pair's r34 (about 1).
    assert_eq!(members, vec![vec![0, 1, 2], vec![3, 4]]);
    let row = |i: usize| est.c.row(i).to_vec();
    let want = corr(&row(0), &row(1)) + corr(&row(1), &row(2));
    assert!((cands[0].score - want).abs() < 1e-9, "{} vs {want}", cands[0].score);
    assert!((cands[1].score - corr(&row(3), &row(4))).abs() < 1e-9);
    // mx = 1 merges only the first group.
    let out = merge(&est, 0.8, &p0(), 1, true);
    assert_eq!(out.merged_rois, vec![vec![0, 1, 2]]);
    assert_eq!(out.estimates.n_components(), 4);
    assert_eq!(out.estimates.c.row(0).to_vec(), row(3));
    let all = merge(&est, 0.8, &p0(), usize::MAX, true);
    assert_eq!(all.n_merged, 2);
    assert_eq!(all.estimates.n_components(), 3);
    assert_eq!(all.estimates.c.row(0).to_vec(), row(5));
    // Merged traces follow the truth.
    assert!(corr(&all.estimates.c.row(1).to_vec(), &ca) > 0.95);
    assert!(corr(&all.estimates.c.row(2).to_vec(), &cb) > 0.99);
    // Executors agree bit for bit.
    let yr = movie();
    let fov = Fov::new(est.dims, yr.view()).unwrap();
    let mp = MergingParams::default();
    let p1 = TemporalParams { p: 1, ..TemporalParams::default() };
    let lin = merge_components(&fov, &est, &mp, &p1, usize::MAX, true, &Linear::new()).unwrap();
    let thr = merge_components(&fov, &est, &mp, &p1, usize::MAX, true, &Threads::new(2).unwrap()).unwrap();
    assert_eq!(lin, thr);
}

#[test]
fn non_fast_merge_uses_the_strongest_member() {
    let mut rng = Rng(6);
    let c = calcium(&mut rng);
    let strong: Vec<f32> = blob(9.0, 9.0).iter().map(|v| 3.0 * v).collect();
    let weak = blob(10.0, 11.0);
    let est =
        estimates(&[weak.clone(), strong.clone()], &[noisy(&mut rng, &c, 0.05), noisy(&mut rng, &c, 0.05)], &mut rng);
    let out = merge(&est, 0.8, &p0(), 50, false);
    assert_eq!(out.n_merged, 1);
    let e = &out.estimates;
    let n = strong.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let got = e.a.to_dense();
    for (p, &v) in strong.iter().enumerate() {
        assert!((f64::from(got[[p, 0]]) - f64::from(v) / n).abs() < 1e-6);
    }
    // c_in = Σ_k (a_kᵀ â) (C_k + YrA_k).
    let ahat = Array1::from_iter(strong.iter().map(|&v| f64::from(v) / n));
    let dense = est.a.to_dense().mapv(f64::from);
    let w = dense.t().dot(&ahat);
    let raw = &est.c + est.yr_a.as_ref().unwrap();
    let want = raw.t().dot(&w);
    let c_in = &e.c.row(0) + &e.yr_a.as_ref().unwrap().row(0);
    for (x, y) in c_in.iter().zip(want.iter()) {
        assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()));
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let mut rng = Rng(7);
    let est = estimates(&[blob(8.0, 8.0), blob(9.0, 9.0)], &[calcium(&mut rng), calcium(&mut rng)], &mut rng);
    let yr = movie();
    let fov = Fov::new(est.dims, yr.view()).unwrap();
    let lin = Linear::new();
    let mp = MergingParams::default();
    let run = |e: &Estimates, mp: &MergingParams, tp: &TemporalParams| {
        merge_components(&fov, e, mp, tp, 50, true, &lin).map(|_| ())
    };
    let short = Array2::<f32>::zeros((D1 * D2, 10));
    let fov_short = Fov::new(est.dims, short.view()).unwrap();
    assert!(matches!(merge_components(&fov_short, &est, &mp, &p0(), 50, true, &lin), Err(Error::ShapeMismatch { .. })));
    let mut e = est.clone();
    e.yr_a = Some(Array2::zeros((1, T)));
    assert!(matches!(run(&e, &mp, &p0()), Err(Error::ShapeMismatch { .. })));
    let mut e = est.clone();
    e.bl = Some(vec![0.0]);
    assert!(matches!(run(&e, &mp, &p0()), Err(Error::InvalidParam(_))));
    let mut e = est.clone();
    e.c[[0, 0]] = f64::NAN;
    assert!(matches!(run(&e, &mp, &p0()), Err(Error::NonFinite { .. })));
    let nan = MergingParams { merge_thr: f64::NAN, ..mp.clone() };
    assert!(matches!(run(&est, &nan, &p0()), Err(Error::InvalidParam(_))));
    let cvx = TemporalParams { method_deconvolution: MethodDeconvolution::Cvx, ..p0() };
    assert!(matches!(run(&est, &mp, &cvx), Err(Error::InvalidParam(_))));
    assert!(matches!(run(&est, &mp, &TemporalParams { p: 3, ..p0() }), Err(Error::InvalidParam(_))));
    assert!(matches!(merge_candidates(&est.a, est.c.slice(s![..1, ..]), 0.8), Err(Error::ShapeMismatch { .. })));
}

// ---------------------------------------------------------------------------------------------
// merge_candidates against a brute-force closure

fn small_case() -> impl Strategy<Value = (Array2<f32>, Array2<f64>, f64)> {
    (2usize..9, 1usize..12, 4usize..30).prop_flat_map(|(k, d, t)| {
        (
            proptest::collection::vec(proptest::option::weighted(0.3, 0.1f32..1.0), d * k),
            proptest::collection::vec(-1.0f64..1.0, t),
            proptest::collection::vec((0.0f64..1.5, proptest::collection::vec(-1.0f64..1.0, t)), k),
            -0.5f64..0.99,
        )
            .prop_map(move |(a, base, mix, thr)| {
                let a = Array2::from_shape_vec((d, k), a.into_iter().map(|x| x.unwrap_or(0.0)).collect()).unwrap();
                // Traces: a shared component with per-trace weight plus private noise.
                let c = Array2::from_shape_fn((k, t), |(i, j)| mix[i].0 * base[j] + 0.5 * mix[i].1[j]);
                (a, c, thr)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn candidates_match_brute_force_closure((a, c, thr) in small_case()) {
        let k = a.ncols();
        let ov = |i: usize, j: usize| (0..a.nrows()).any(|p| a[[p, i]] > 0.0 && a[[p, j]] > 0.0);
        let r = |i: usize, j: usize| corr(&c.row(i).to_vec(), &c.row(j).to_vec());
        // Reflexive-transitive closure of the edge relation (Floyd–Warshall).
        let mut reach = Array2::from_shape_fn((k, k), |(i, j)| i == j || (ov(i, j) && r(i, j) > thr));
        for m in 0..k {
            for i in 0..k {
                for j in 0..k {
                    if reach[[i, m]] && reach[[m, j]] {
                        reach[[i, j]] = true;
                    }
                }
            }
        }
        let csc = CscMatrix::from_dense(a.view());
        let cands = merge_candidates(&csc, c.view(), thr).unwrap();
        let mut seen = vec![false; k];
        for (x, cand) in cands.iter().enumerate() {
            prop_assert!(cand.members.len() > 1);
            prop_assert!(cand.members.windows(2).all(|w| w[0] < w[1]));
            let i0 = cand.members[0];
            for &i in &cand.members {
                prop_assert!(!seen[i]);
                seen[i] = true;
                prop_assert!(reach[[i0, i]]);
            }
            let size = (0..k).filter(|&j| reach[[i0, j]]).count();
            prop_assert_eq!(size, cand.members.len());
            let mut score = 0.0;
            for (y, &i) in cand.members.iter().enumerate() {
                for &j in &cand.members[y + 1..] {
                    if ov(i, j) {
                        let v = r(i, j);
                        if !v.is_nan() {
                            score += v;
                        }
                    }
                }
            }
            prop_assert!((cand.score - score).abs() < 1e-9, "score {} vs {}", cand.score, score);
            if x > 0 {
                prop_assert!(cands[x - 1].score >= cand.score);
            }
        }
        for i in 0..k {
            let alone = (0..k).filter(|&j| reach[[i, j]]).count() == 1;
            prop_assert_eq!(alone, !seen[i]);
        }
    }
}
