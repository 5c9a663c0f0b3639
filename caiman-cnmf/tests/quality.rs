//! Component evaluation (`caiman_cnmf::quality`): CaImAn 1.12.1's `evaluate_components` on the
//! refit of `cnmf_movie.tif` (r-values, SNR, accepted indices; `test_data/quality/`), peakutils
//! hand examples and a brute-force property, activity windows, a brute-force r-value
//! implementation on synthetic movies with overlapping components, the decision rule's truth
//! table (NaN included), eccentricity of analytic shapes, executors and bad input.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use caiman_cnmf::Error;
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::params::{CnmfParams, QualityParams};
use caiman_cnmf::pixels::{Fov, PixelRows};
use caiman_cnmf::quality::{
    RBlock, RComponent, classify_components_ep, component_quality, compute_eccentricity, evaluate_components,
    filter_components, find_activity_intervals, peak_indexes, peak_window, register_tasks,
    select_components_from_metrics,
};
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use caiman_parallel::{Linear, Task, TaskCtx, Threads};
use ndarray::{Array2, s};
use proptest::prelude::*;

const CNMF_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/cnmf");
const QUAL_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/quality");

fn npy(path: &str) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(path).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

fn mat(path: &str) -> Array2<f64> {
    let (shape, data) = npy(path);
    Array2::from_shape_vec((shape[0], shape[1]), data).unwrap()
}

/// Deterministic pseudo-random numbers (xorshift64*), uniform in [0, 1).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

// ------------------------------------------------------------------------------------------------
// peakutils.indexes
// ------------------------------------------------------------------------------------------------

#[test]
fn peak_indexes_hand_examples() {
    // strict local maxima above min + thres·(max − min)
    assert_eq!(peak_indexes(&[0.0, 1.0, 0.0, 2.0, 0.0], 0.0, 1), vec![1, 3]);
    assert_eq!(peak_indexes(&[0.0, 1.0, 0.0, 2.0, 0.0], 0.6, 1), vec![3]);
    // the threshold is strict: a peak exactly at the level is dropped
    assert_eq!(peak_indexes(&[0.0, 1.0, 0.0, 2.0, 0.0], 0.5, 1), vec![3]);
    assert_eq!(peak_indexes(&[0.0, 1.0, 0.0, 1.0, 0.0], 1.0, 1), Vec::<usize>::new());
    // the level is relative to the minimum
    assert_eq!(peak_indexes(&[10.0, 11.0, 10.0, 12.0, 10.0], 0.6, 1), vec![3]);
    // odd plateau: its middle sample
    assert_eq!(peak_indexes(&[0.0, 1.0, 2.0, 2.0, 2.0, 1.0, 0.0], 0.3, 1), vec![3]);
    // plateau of two: the left one (the middle index (1+2)/2 = 1.5 rounds to the right half)
    assert_eq!(peak_indexes(&[0.0, 2.0, 2.0, 0.0], 0.3, 1), vec![1]);
    // plateau of four samples 1..=4: zero differences at 1,2,3, median 2 -> sample 2
    assert_eq!(peak_indexes(&[0.0, 2.0, 2.0, 2.0, 2.0, 0.0], 0.3, 1), vec![2]);
    // a plateau on a slope is not a peak
    assert_eq!(peak_indexes(&[0.0, 1.0, 1.0, 2.0, 0.0], 0.0, 1), vec![3]);
    // ends are never peaks
    assert_eq!(peak_indexes(&[3.0, 2.0, 1.0, 2.0, 3.0], 0.0, 1), Vec::<usize>::new());
    // plateau touching the left end takes the next difference, the right end the previous one
    assert_eq!(peak_indexes(&[1.0, 1.0, 2.0, 0.0], 0.0, 1), vec![2]);
    assert_eq!(peak_indexes(&[0.0, 2.0, 1.0, 1.0], 0.0, 1), vec![1]);
    // flat, short, empty
    assert_eq!(peak_indexes(&[1.0; 6], 0.3, 1), Vec::<usize>::new());
    assert_eq!(peak_indexes(&[1.0], 0.3, 1), Vec::<usize>::new());
    assert_eq!(peak_indexes(&[], 0.3, 1), Vec::<usize>::new());
    // min_dist: the highest peak wins, its neighbours within min_dist are removed
    assert_eq!(peak_indexes(&[0.0, 5.0, 0.0, 3.0, 0.0, 4.0, 0.0], 0.0, 2), vec![1, 5]);
    assert_eq!(peak_indexes(&[0.0, 5.0, 0.0, 3.0, 0.0, 4.0, 0.0], 0.0, 1), vec![1, 3, 5]);
}

proptest! {
    /// Without equal neighbours the peaks are exactly the strict local maxima above the level.
    #[test]
    fn peak_indexes_brute_force(y in prop::collection::vec(-100i32..100, 3..60), thres in 0.0f64..1.0) {
        let y: Vec<f64> = y.iter().enumerate().map(|(i, &v)| f64::from(v) + i as f64 * 1e-3).collect();
        prop_assume!(y.windows(2).all(|w| w[0] != w[1]));
        let (lo, hi) = y.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let level = thres * (hi - lo) + lo;
        let expect: Vec<usize> = (1..y.len() - 1).filter(|&i| y[i] > y[i - 1] && y[i] > y[i + 1] && y[i] > level).collect();
        prop_assert_eq!(peak_indexes(&y, thres, 1), expect);
    }
}

// ------------------------------------------------------------------------------------------------
// Activity windows
// ------------------------------------------------------------------------------------------------

#[test]
fn peak_window_matches_caiman_formula() {
    assert_eq!(peak_window(30.0), (-5, 25));
    assert_eq!(peak_window(10.0), (-2, 9)); // floor(-5/3) = -2, ceil(25/3) = 9
    assert_eq!(peak_window(60.0), (-10, 50));
    assert_eq!(peak_window(3.0), (-2, 5));
}

#[test]
fn activity_intervals_windows_npeaks_and_constant_traces() {
    let t = 100;
    let mut c = Array2::<f64>::zeros((4, t));
    c[[0, 40]] = 5.0;
    c[[1, 2]] = 5.0; // clipped at the start
    c[[1, 98]] = 3.0; // clipped at the end
    c.row_mut(2).fill(1.0); // constant
    for (k, &tk) in [10usize, 30, 50, 70].iter().enumerate() {
        c[[3, tk]] = 1.0 + k as f64; // peaks of height 1..4
    }
    let loc = find_activity_intervals(c.view(), 10, -5, 25, 0.0);
    assert_eq!(loc[0].as_ref().unwrap(), &(35..65).collect::<Vec<_>>());
    let want: BTreeSet<usize> = (0..27).chain(93..100).collect();
    assert_eq!(loc[1].as_ref().unwrap(), &want.into_iter().collect::<Vec<_>>());
    assert!(loc[2].is_none());
    // only the two highest peaks (70 and 50) with npeaks = 2
    let loc = find_activity_intervals(c.view(), 2, -5, 25, 0.0);
    let want: BTreeSet<usize> = (45..75).chain(65..95).collect();
    assert_eq!(loc[3].as_ref().unwrap(), &want.into_iter().collect::<Vec<_>>());
    // thres = 0.3 of the range drops the peak of height 1 but not 2 (level 1.2 above min 0)
    let loc = find_activity_intervals(c.view(), 10, 0, 1, 0.3);
    assert_eq!(loc[3].as_ref().unwrap(), &vec![30, 50, 70]);
    // npeaks = 0: no window at all
    assert!(find_activity_intervals(c.view(), 0, -5, 25, 0.3).iter().all(Option::is_none));
}

// ------------------------------------------------------------------------------------------------
// Brute-force r-values on synthetic data
// ------------------------------------------------------------------------------------------------

struct Synth {
    dims: Dims,
    yr: Array2<f32>,
    a: CscMatrix,
    c: Array2<f64>,
}

/// Gaussian blobs (two of them overlapping), sparse transients, background and noise.
fn synth(seed: u64) -> Synth {
    let (d1, d2, t) = (24usize, 20usize, 300usize);
    let dims = Dims::planar(d1, d2);
    let d = d1 * d2;
    let centres = [(6.0, 6.0), (8.0, 8.5), (17.0, 5.0), (15.0, 15.0), (4.0, 16.0)];
    let mut rng = Rng::new(seed);
    let mut a = Array2::<f32>::zeros((d, centres.len()));
    for (k, &(ci, cj)) in centres.iter().enumerate() {
        for j in 0..d2 {
            for i in 0..d1 {
                let r2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
                let v = (-r2 / (2.0 * 2.0f64.powi(2))).exp();
                if v > 0.05 {
                    a[[i + d1 * j, k]] = v as f32;
                }
            }
        }
    }
    // last component: a footprint unrelated to its trace's spatial signature (random pixels)
    let mut c = Array2::<f64>::zeros((centres.len(), t));
    for k in 0..centres.len() {
        let mut v = 0.0;
        for tt in 0..t {
            v *= 0.9;
            if rng.next() < 0.03 {
                v += 2.0 + 3.0 * rng.next();
            }
            c[[k, tt]] = v + 0.5;
        }
    }
    let mut yr = Array2::<f32>::zeros((d, t));
    for p in 0..d {
        for tt in 0..t {
            let mut v = 10.0 + 0.3 * rng.normal();
            for k in 0..centres.len() - 1 {
                v += f64::from(a[[p, k]]) * c[[k, tt]];
            }
            // the last component's activity lives on the first blob's pixels instead
            v += 0.5 * f64::from(a[[p, 0]]) * c[[centres.len() - 1, tt]];
            yr[[p, tt]] = v as f32;
        }
    }
    Synth { dims, yr, a: CscMatrix::from_dense(a.view()), c }
}

/// Straight transcription of CaImAn's `classify_components_ep` on dense arrays.
fn brute_r_values(yr: &Array2<f32>, a: &Array2<f32>, c: &Array2<f64>, fr: f64) -> Vec<f64> {
    let (k, t) = c.dim();
    let tb = (-5.0 / 30.0 * fr).floor().min(-2.0) as i64;
    let ta = (25.0 / 30.0 * fr).ceil().max(5.0) as i64;
    let loc: Vec<Option<BTreeSet<usize>>> = (0..k)
        .map(|i| {
            let row: Vec<f64> = c.row(i).to_vec();
            let (lo, hi) = row.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            if lo == hi {
                return None;
            }
            let level = lo + 0.3 * (hi - lo);
            let mut peaks: Vec<usize> =
                (1..t - 1).filter(|&s| row[s] > row[s - 1] && row[s] > row[s + 1] && row[s] > level).collect();
            peaks.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            peaks.truncate(10);
            if peaks.is_empty() {
                return None;
            }
            Some(
                peaks
                    .iter()
                    .flat_map(|&p| (tb..ta).map(move |o| (p as i64 + o).clamp(0, t as i64 - 1) as usize))
                    .collect(),
            )
        })
        .collect();
    let norm = |i: usize| a.column(i).iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    (0..k)
        .map(|i| {
            let Some(own) = &loc[i] else { return 0.0 };
            let mut idx = own.clone();
            for (j, lj) in loc.iter().enumerate() {
                let dot: f64 = a.column(i).iter().zip(a.column(j)).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                let ov = dot / (norm(i) * norm(j)) - if i == j { 1.0 } else { 0.0 };
                if ov > 0.1
                    && let Some(o) = lj
                {
                    idx = idx.difference(o).copied().collect();
                }
            }
            if idx.is_empty() {
                idx = own.clone();
            }
            let px: Vec<usize> = (0..a.nrows()).filter(|&p| a[[p, i]] > 0.0).collect();
            if px.len() < 3 {
                return 0.0;
            }
            let my: Vec<f64> = px
                .iter()
                .map(|&p| idx.iter().map(|&f| f64::from(yr[[p, f]])).sum::<f64>() / idx.len() as f64)
                .collect();
            let av: Vec<f64> = px.iter().map(|&p| f64::from(a[[p, i]])).collect();
            let n = px.len() as f64;
            let (mx, ma) = (my.iter().sum::<f64>() / n, av.iter().sum::<f64>() / n);
            let sxy: f64 = my.iter().zip(&av).map(|(x, y)| (x - mx) * (y - ma)).sum();
            let sxx: f64 = my.iter().map(|x| (x - mx).powi(2)).sum();
            let syy: f64 = av.iter().map(|y| (y - ma).powi(2)).sum();
            sxy / (sxx * syy).sqrt()
        })
        .collect()
}

#[test]
fn r_values_match_brute_force_and_executors_agree() {
    for seed in [1u64, 2, 3] {
        let sy = synth(seed);
        let fov = Fov::new(sy.dims, sy.yr.view()).unwrap();
        let (r, stats) = classify_components_ep(&fov, &sy.a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Linear::new()).unwrap();
        assert_eq!(stats.tasks, 1);
        let brute = brute_r_values(&sy.yr, &sy.a.to_dense(), &sy.c, 30.0);
        for (k, (&x, &y)) in r.iter().zip(&brute).enumerate() {
            assert!((x - y).abs() < 1e-12, "seed {seed} component {k}: {x} vs brute force {y}");
        }
        // the isolated true components are spatially consistent (the second one shares pixels
        // with the first and with the misplaced activity of the fifth, so it is lower); the fifth
        // (footprint and activity on different pixels) is not
        assert!([0, 2, 3].iter().all(|&k| r[k] > 0.9), "{r:?}");
        assert!(r[1] > 0.5, "{r:?}");
        assert!(r[4] < 0.5, "{r:?}");
        let (r2, _) =
            classify_components_ep(&fov, &sy.a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Threads::new(2).unwrap()).unwrap();
        assert_eq!(
            r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            r2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn r_values_from_memmap_tasks_equal_inline() {
    let sy = synth(7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(caiman_io::mmap::MmapName::file_name("q", sy.dims, sy.yr.ncols(), caiman_io::Order::C));
    let bytes: Vec<u8> = sy.yr.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let inline = Fov::new(sy.dims, sy.yr.view()).unwrap();
    let mapped = Fov { mmap: Some(&path), ..inline };
    let (a, _) = classify_components_ep(&inline, &sy.a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Linear::new()).unwrap();
    let (b, _) =
        classify_components_ep(&mapped, &sy.a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Threads::new(2).unwrap()).unwrap();
    assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
}

#[test]
fn r_value_special_cases() {
    let sy = synth(4);
    let fov = Fov::new(sy.dims, sy.yr.view()).unwrap();
    let mut c = sy.c.clone();
    c.row_mut(1).fill(2.0); // constant trace: no window -> r = 0
    // a footprint of 2 pixels -> r = 0
    let mut dense = sy.a.to_dense();
    dense.column_mut(2).fill(0.0);
    dense[[5, 2]] = 1.0;
    dense[[6, 2]] = 0.5;
    let a = CscMatrix::from_dense(dense.view());
    let (r, _) = classify_components_ep(&fov, &a, c.view(), 30.0, 0.1, 10, 0.3, &Linear::new()).unwrap();
    assert_eq!(r[1], 0.0);
    assert_eq!(r[2], 0.0);
    assert!(r[0] > 0.8);
    // a flat footprint over ≥ 3 pixels: Pearson undefined -> NaN (CaImAn stores −1)
    let mut dense = sy.a.to_dense();
    dense.column_mut(3).mapv_inplace(|v| if v > 0.0 { 1.0 } else { 0.0 });
    let a = CscMatrix::from_dense(dense.view());
    let (r, _) = classify_components_ep(&fov, &a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Linear::new()).unwrap();
    assert!(r[3].is_nan());
    // NaN movie values are replaced by the nan-mean of the component's pixels
    let mut yr = sy.yr.clone();
    let (p, _) = (0..yr.nrows()).map(|p| (p, dense[[p, 0]])).find(|&(_, v)| v > 0.5).unwrap();
    yr.row_mut(p).fill(f32::NAN);
    let fov = Fov::new(sy.dims, yr.view()).unwrap();
    let (r, _) = classify_components_ep(&fov, &sy.a, sy.c.view(), 30.0, 0.1, 10, 0.3, &Linear::new()).unwrap();
    assert!(r[0].is_finite() && r[0] > 0.5, "{r:?}");
}

#[test]
fn r_block_task_runs_and_rejects_bad_blocks() {
    let comp = RComponent {
        pixels: vec![0, 1, 2],
        values: vec![1.0, 2.0, 3.0],
        frames: vec![0, 1],
        gathered: vec![1.0, 1.0, 2.0, 2.0, 3.0, 5.0],
        nan_fill: f64::NAN,
    };
    let block = RBlock { rows: None, first: 0, comps: vec![comp.clone()] };
    let ctx = TaskCtx::new(0, 0, caiman_parallel::Par::Seq);
    let r = block.run(&ctx).unwrap();
    // means 1, 2, 4 against 1, 2, 3
    let want = {
        let (x, y) = ([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]);
        let (mx, my) = (7.0 / 3.0, 2.0);
        let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
        let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
        sxy / (sxx * syy).sqrt()
    };
    assert!((r[0] - want).abs() < 1e-14);
    // The same component read from a block of rows that starts at pixel 5 (inline, shared or
    // a memmap): the pixels are absolute, the rows relative to the block.
    let shifted = RComponent { pixels: vec![5, 6, 7], gathered: Vec::new(), ..comp.clone() };
    let yr = ndarray::Array2::<f32>::from_shape_fn((9, 3), |(p, t)| match (p, t) {
        (5..=7, 0) => [1.0, 2.0, 3.0][p - 5],
        (5..=7, 1) => [1.0, 2.0, 5.0][p - 5],
        _ => -7.0,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(caiman_io::mmap::MmapName::file_name("r", Dims::planar(9, 1), 3, caiman_io::Order::C));
    std::fs::write(&path, yr.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let shared = std::sync::Arc::new(yr.clone());
    let blocks = [
        PixelRows::Inline { frames: 3, values: yr.slice(ndarray::s![4..9, ..]).iter().copied().collect() },
        PixelRows::Shared { yr: shared, first: 4, count: 5 },
        PixelRows::Mmap { path: path.clone(), first: 4, count: 5 },
    ];
    for rows in blocks {
        let block = RBlock { rows: Some(rows), first: 4, comps: vec![shifted.clone()] };
        assert_eq!(block.run(&ctx).unwrap()[0].to_bits(), r[0].to_bits());
    }
    // Pixels outside the block's rows are an error, not a read elsewhere in the file.
    let outside = RBlock { rows: Some(PixelRows::Mmap { path, first: 6, count: 3 }), first: 6, comps: vec![shifted] };
    assert!(outside.run(&ctx).is_err());
    let bad = RBlock { rows: None, first: 0, comps: vec![RComponent { gathered: vec![1.0], ..comp }] };
    assert!(bad.run(&ctx).is_err());
    let _ = register_tasks(caiman_parallel::Registry::new());
}

// ------------------------------------------------------------------------------------------------
// Decision rule
// ------------------------------------------------------------------------------------------------

fn refit_quality() -> QualityParams {
    QualityParams {
        min_snr: 2.0,
        rval_thr: 0.85,
        snr_lowest: 0.5,
        rval_lowest: -1.0,
        use_cnn: false,
        ..Default::default()
    }
}

#[test]
fn decision_rule_truth_table() {
    let q = refit_quality();
    let nan = f64::NAN;
    // (r, snr, accepted)
    let cases = [
        (0.9, 1.0, true),   // r passes
        (0.85, 1.0, true),  // r ≥ rval_thr is inclusive
        (0.5, 2.5, true),   // SNR passes
        (0.5, 2.0, false),  // SNR > min_SNR is strict
        (0.9, 0.5, false),  // SNR ≤ SNR_lowest rejects (inclusive)
        (0.9, 0.51, true),  //
        (-1.0, 3.0, false), // r ≤ rval_lowest rejects (inclusive)
        (-0.99, 3.0, true), //
        (nan, 3.0, true),   // NaN r neither accepts nor rejects
        (0.9, nan, true),   // NaN SNR neither accepts nor rejects
        (nan, 1.0, false),  //
        (nan, nan, false),  //
        (0.1, 0.1, false),  //
    ];
    let r: Vec<f64> = cases.iter().map(|c| c.0).collect();
    let snr: Vec<f64> = cases.iter().map(|c| c.1).collect();
    let (good, bad) = select_components_from_metrics(&r, &snr, &q);
    let want: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].2).collect();
    let want_bad: Vec<usize> = (0..cases.len()).filter(|&i| !cases[i].2).collect();
    assert_eq!(good, want);
    assert_eq!(bad, want_bad);
    // rval_lowest and SNR_lowest move the rejection boundary
    let q2 = QualityParams { rval_lowest: 0.2, snr_lowest: 3.0, ..q.clone() };
    let (good, _) = select_components_from_metrics(&[0.9, 0.9, 0.1], &[3.5, 2.9, 3.5], &q2);
    assert_eq!(good, vec![0]);
    // use_cnn is ignored (no CNN): same result as without
    let q3 = QualityParams { use_cnn: true, ..q.clone() };
    assert_eq!(select_components_from_metrics(&r, &snr, &q3).0, want);
    assert_eq!(select_components_from_metrics(&[], &[], &q), (vec![], vec![]));
}

fn tiny_estimates(k: usize) -> Estimates {
    let dims = Dims::planar(6, 5);
    let mut a = Array2::<f32>::zeros((30, k));
    for i in 0..k {
        for p in 0..4 {
            a[[(i * 5 + p) % 30, i]] = 1.0 + p as f32;
        }
    }
    let c = Array2::from_shape_fn((k, 20), |(i, t)| ((i + t) % 7) as f64);
    Estimates::new(dims, CscMatrix::from_dense(a.view()), c, Array2::zeros((30, 0)), Array2::zeros((0, 20))).unwrap()
}

#[test]
fn filter_components_uses_stored_metrics() {
    let mut est = tiny_estimates(4);
    let q = refit_quality();
    assert!(matches!(filter_components(&mut est, &q), Err(Error::InvalidParam(_))));
    // stored as evaluate_components stores them: NaN r -> -1, NaN SNR -> 0
    est.r_values = Some(vec![0.9, -1.0, 0.5, 0.2]);
    est.snr_comp = Some(vec![1.0, 3.0, 3.0, 0.0]);
    filter_components(&mut est, &q).unwrap();
    // the stored -1 (a NaN r-value) is now rejected by rval_lowest = -1 (CaImAn's quirk)
    assert_eq!(est.idx_components, Some(vec![0, 2]));
    assert_eq!(est.idx_components_bad, Some(vec![1, 3]));
    let q2 = QualityParams { rval_thr: 0.95, min_snr: 2.0, ..q.clone() };
    filter_components(&mut est, &q2).unwrap();
    assert_eq!(est.idx_components, Some(vec![2]));
    est.r_values = Some(vec![0.9]);
    assert!(matches!(filter_components(&mut est, &q), Err(Error::ShapeMismatch { .. })));
}

// ------------------------------------------------------------------------------------------------
// Eccentricity
// ------------------------------------------------------------------------------------------------

fn gaussian_footprint(dims: Dims, ci: f64, cj: f64, si: f64, sj: f64, angle: f64) -> Vec<f32> {
    let (sn, cs) = angle.sin_cos();
    let mut v = vec![0f32; dims.pixels()];
    for j in 0..dims.d2 {
        for i in 0..dims.d1 {
            let (di, dj) = (i as f64 - ci, j as f64 - cj);
            let (u, w) = (cs * di + sn * dj, -sn * di + cs * dj);
            v[i + dims.d1 * j] = (-(u * u) / (2.0 * si * si) - (w * w) / (2.0 * sj * sj)).exp() as f32;
        }
    }
    v
}

#[test]
fn eccentricity_of_gaussians() {
    let dims = Dims::planar(61, 61);
    let cols = [
        gaussian_footprint(dims, 30.0, 30.0, 3.0, 3.0, 0.0),
        gaussian_footprint(dims, 30.0, 30.0, 6.0, 3.0, 0.0),
        gaussian_footprint(dims, 30.0, 30.0, 3.0, 6.0, 0.0),
        gaussian_footprint(dims, 30.0, 30.0, 6.0, 2.0, 0.7),
        vec![0.0; dims.pixels()],
    ];
    let dense = Array2::from_shape_fn((dims.pixels(), cols.len()), |(p, k)| cols[k][p]);
    let ecc = compute_eccentricity(&CscMatrix::from_dense(dense.view()), dims).unwrap();
    // well-sampled Gaussians: the moment ratio is the ratio of the sigmas
    assert!((ecc[0] - 1.0).abs() < 1e-4, "{ecc:?}");
    assert!((ecc[1] - 2.0).abs() < 1e-3, "{ecc:?}");
    assert!((ecc[1] - ecc[2]).abs() < 1e-9, "transposing does not change it: {ecc:?}");
    assert!((ecc[3] - 3.0).abs() < 1e-2, "rotated: {ecc:?}");
    assert_eq!(ecc[4], 0.0);
    assert!(matches!(
        compute_eccentricity(&CscMatrix::zeros(8, 1), Dims::volume(2, 2, 2)),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        compute_eccentricity(&CscMatrix::zeros(7, 1), Dims::planar(2, 4)),
        Err(Error::ShapeMismatch { .. })
    ));
}

// ------------------------------------------------------------------------------------------------
// CaImAn reference: evaluate_components on the refit
// ------------------------------------------------------------------------------------------------

fn reference_movie() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/cnmf/cnmf_movie.tif");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: reference movie {} is absent", p.display());
        None
    }
}

fn refit_estimates(dims: Dims) -> Estimates {
    let (_, shape) = npy(&format!("{CNMF_REF}/refit_A_shape.npy"));
    let (_, indptr) = npy(&format!("{CNMF_REF}/refit_A_indptr.npy"));
    let (_, indices) = npy(&format!("{CNMF_REF}/refit_A_indices.npy"));
    let (_, data) = npy(&format!("{CNMF_REF}/refit_A_data.npy"));
    let a = CscMatrix::from_parts(
        shape[0] as usize,
        shape[1] as usize,
        indptr.iter().map(|&v| v as usize).collect(),
        indices.iter().map(|&v| v as usize).collect(),
        data.iter().map(|&v| v as f32).collect(),
    )
    .unwrap();
    let c = mat(&format!("{CNMF_REF}/refit_C.npy"));
    let b = mat(&format!("{CNMF_REF}/refit_b.npy")).mapv(|v| v as f32);
    let f = mat(&format!("{CNMF_REF}/refit_f.npy"));
    let mut est = Estimates::new(dims, a, c, b, f).unwrap();
    est.yr_a = Some(mat(&format!("{CNMF_REF}/refit_YrA.npy")));
    est
}

fn refit_params() -> CnmfParams {
    let json = std::fs::read_to_string(format!("{CNMF_REF}/cnmf_params_refit.json")).unwrap();
    CnmfParams::from_caiman_json(&json).unwrap().0
}

#[test]
fn refit_evaluation_matches_caiman() {
    let Some(movie) = reference_movie() else { return };
    let (dims, yr) = common::caiman_memmap_yr(&movie);
    let params = refit_params();
    assert!(!params.quality.use_cnn);
    assert_eq!((params.quality.min_snr, params.quality.rval_thr), (2.0, 0.85));
    let mut est = refit_estimates(dims);
    let fov = Fov::new(dims, yr.view()).unwrap();

    let (_, r_ref) = npy(&format!("{QUAL_REF}/refit_r_values.npy"));
    let (_, snr_ref) = npy(&format!("{CNMF_REF}/refit_SNR_comp.npy"));
    let (_, idx_ref) = npy(&format!("{QUAL_REF}/refit_idx_components.npy"));
    let (_, bad_ref) = npy(&format!("{QUAL_REF}/refit_idx_components_bad.npy"));

    let stats = evaluate_components(&fov, &mut est, &params, &Linear::new()).unwrap();
    assert_eq!(stats.tasks, 1);
    let r = est.r_values.clone().unwrap();
    let snr = est.snr_comp.clone().unwrap();
    let (mut r_abs, mut s_rel) = (0f64, 0f64);
    for k in 0..r.len() {
        let dr = (r[k] - r_ref[k]).abs();
        let ds = (snr[k] - snr_ref[k]).abs() / snr_ref[k].abs().max(1e-12);
        if dr > 1e-6 {
            eprintln!("component {k}: r {} vs CaImAn {}", r[k], r_ref[k]);
        }
        r_abs = r_abs.max(dr);
        s_rel = s_rel.max(ds);
    }
    eprintln!(
        "refit r_values vs CaImAn: max abs {r_abs:.2e}; SNR_comp max rel {s_rel:.2e} over {} components",
        r.len()
    );
    assert!(r_abs < 1e-6, "r_values max abs diff {r_abs}");
    assert!(s_rel < 1e-5, "SNR max rel diff {s_rel}");
    let idx: Vec<f64> = est.idx_components.clone().unwrap().iter().map(|&v| v as f64).collect();
    let bad: Vec<f64> = est.idx_components_bad.clone().unwrap().iter().map(|&v| v as f64).collect();
    assert_eq!(idx, idx_ref);
    assert_eq!(bad, bad_ref);

    // filter_components with the same thresholds on the stored metrics gives the same split
    let mut est2 = est.clone();
    filter_components(&mut est2, &params.quality).unwrap();
    assert_eq!(est2.idx_components, est.idx_components);

    // Threads(2) and a memmap-backed field of view give bit-identical metrics
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(caiman_io::mmap::MmapName::file_name("ref", dims, yr.ncols(), caiman_io::Order::C));
    let bytes: Vec<u8> = yr.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let mapped = Fov { mmap: Some(&path), ..fov };
    let (q2, _) = component_quality(&mapped, &est, &params, &Threads::new(2).unwrap()).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&q2.r_values), bits(&r));
    assert_eq!(bits(&q2.snr_comp), bits(&snr));
    assert_eq!(q2.idx_components, est.idx_components.clone().unwrap());

    // the eccentricity filter only removes components from the accepted set
    let mut p_ecc = params.clone();
    p_ecc.quality.use_ecc = true;
    p_ecc.quality.max_ecc = 1.5;
    let (q3, _) = component_quality(&fov, &est, &p_ecc, &Linear::new()).unwrap();
    let ecc = q3.ecc.clone().unwrap();
    let want: Vec<usize> = q2.idx_components.iter().copied().filter(|&k| ecc[k] < 1.5).collect();
    assert_eq!(q3.idx_components, want);
    assert_eq!(q3.idx_components.len() + q3.idx_components_bad.len(), r.len());
    eprintln!(
        "eccentricities: min {:.3}, max {:.3}",
        ecc.iter().copied().fold(f64::INFINITY, f64::min),
        ecc.iter().copied().fold(0.0, f64::max)
    );
}

// ------------------------------------------------------------------------------------------------
// evaluate_components on synthetic data, bad input
// ------------------------------------------------------------------------------------------------

#[test]
fn evaluate_components_synthetic_and_residuals() {
    let sy = synth(11);
    let fov = Fov::new(sy.dims, sy.yr.view()).unwrap();
    let d = sy.dims.pixels();
    let b = Array2::from_elem((d, 1), 1.0f32);
    let f = Array2::from_elem((1, sy.c.ncols()), 10.0);
    let mut est = Estimates::new(sy.dims, sy.a.clone(), sy.c.clone(), b, f).unwrap();
    let mut params = CnmfParams::default();
    params.data.fr = 30.0;
    params.data.decay_time = 0.4;
    params.quality.use_cnn = true; // ignored with a warning
    // YrA missing: computed first
    evaluate_components(&fov, &mut est, &params, &Linear::new()).unwrap();
    assert!(est.yr_a.is_some());
    let r = est.r_values.clone().unwrap();
    let snr = est.snr_comp.clone().unwrap();
    assert!([0, 2, 3].iter().all(|&k| r[k] > 0.9) && r[1] > 0.5 && r[4] < 0.5, "{r:?}");
    // every true component has strong transients
    assert!(snr[..4].iter().all(|&v| v > 2.5), "{snr:?}");
    let good = est.idx_components.clone().unwrap();
    assert!((0..4).all(|k| good.contains(&k)));
    let mut all: Vec<usize> = good.iter().chain(est.idx_components_bad.as_ref().unwrap()).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..5).collect::<Vec<_>>());
}

#[test]
fn bad_input_is_an_error() {
    let sy = synth(5);
    let fov = Fov::new(sy.dims, sy.yr.view()).unwrap();
    let lin = Linear::new();
    // C with the wrong number of frames or components
    let c_short = sy.c.slice(s![.., ..10]).to_owned();
    assert!(matches!(
        classify_components_ep(&fov, &sy.a, c_short.view(), 30.0, 0.1, 10, 0.3, &lin),
        Err(Error::ShapeMismatch { .. })
    ));
    let c_few = sy.c.slice(s![..2, ..]).to_owned();
    assert!(matches!(
        classify_components_ep(&fov, &sy.a, c_few.view(), 30.0, 0.1, 10, 0.3, &lin),
        Err(Error::ShapeMismatch { .. })
    ));
    // A with the wrong number of pixels
    let a_small = CscMatrix::zeros(10, 5);
    assert!(matches!(
        classify_components_ep(&fov, &a_small, sy.c.view(), 30.0, 0.1, 10, 0.3, &lin),
        Err(Error::ShapeMismatch { .. })
    ));
    // NaN trace, bad frame rate, NaN threshold
    let mut c_nan = sy.c.clone();
    c_nan[[0, 3]] = f64::NAN;
    assert!(matches!(
        classify_components_ep(&fov, &sy.a, c_nan.view(), 30.0, 0.1, 10, 0.3, &lin),
        Err(Error::NonFinite { .. })
    ));
    for fr in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            classify_components_ep(&fov, &sy.a, sy.c.view(), fr, 0.1, 10, 0.3, &lin),
            Err(Error::InvalidParam(_))
        ));
    }
    assert!(matches!(
        classify_components_ep(&fov, &sy.a, sy.c.view(), 30.0, f64::NAN, 10, 0.3, &lin),
        Err(Error::InvalidParam(_))
    ));
    // NaN footprint
    let mut dense = sy.a.to_dense();
    dense[[0, 0]] = f32::NAN;
    assert!(matches!(
        classify_components_ep(&fov, &CscMatrix::from_dense(dense.view()), sy.c.view(), 30.0, 0.1, 10, 0.3, &lin),
        Err(Error::NonFinite { .. })
    ));
    // no components: empty result
    let (r, _) = classify_components_ep(
        &fov,
        &CscMatrix::zeros(fov.pixels(), 0),
        Array2::zeros((0, fov.frames())).view(),
        30.0,
        0.1,
        10,
        0.3,
        &lin,
    )
    .unwrap();
    assert!(r.is_empty());
    // evaluate_components: movie that does not match the estimates
    let mut est = tiny_estimates(2);
    assert!(matches!(
        evaluate_components(&fov, &mut est, &CnmfParams::default(), &lin),
        Err(Error::ShapeMismatch { .. })
    ));
}
