//! Tests of `caiman_cnmf::dff` (and the KDE / running-percentile kernels of `caiman_cnmf::stats`)
//! against CaImAn 1.12.1's `detrend_df_f` on the refit results (`test_data/cnmf/`, copied from
//! `shared/reference/cnmf/`) and independent checks: a synthetic ΔF/F with a known baseline and background,
//! a brute-force `scipy.ndimage.percentile_filter`, KDE sanity.
#![allow(clippy::print_stderr)]

use caiman_cnmf::Error;
use caiman_cnmf::dff::{DffOptions, detrend_df_f, detrend_df_f_with};
use caiman_cnmf::sparse::CscMatrix;
use caiman_cnmf::stats::{
    ZoomMode, block_percentile_baseline, df_percentile, kde, percentile, percentile_filter, percentile_rank,
};
use ndarray::{Array2, s};
use proptest::prelude::*;

const CNMF_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/cnmf");

fn npy(path: &str) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(path).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

fn mat(name: &str) -> Array2<f64> {
    let (shape, data) = npy(&format!("{CNMF_REF}/{name}"));
    Array2::from_shape_vec((shape[0], shape[1]), data).unwrap()
}

fn lcg_normal(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uni = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| (-2.0 * uni().ln()).sqrt() * (2.0 * std::f64::consts::PI * uni()).cos()).collect()
}

// ------------------------------------------------------------------------------------------
// Reference: detrend_df_f on the refit results
// ------------------------------------------------------------------------------------------

#[test]
fn refit_dff_matches_caiman() {
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
    let (b, c, f, yra, reference) =
        (mat("refit_b.npy"), mat("refit_C.npy"), mat("refit_f.npy"), mat("refit_YrA.npy"), mat("refit_F_dff.npy"));
    let opts = DffOptions { quantile_min: 8.0, frames_window: Some(250), ..DffOptions::default() };
    let dff = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &opts).unwrap();
    assert_eq!(dff.dim(), reference.dim());
    // The 40 traces in blocks on a thread pool: identical to the serial result.
    let threads = caiman_parallel::Threads::new(2).unwrap();
    let par =
        detrend_df_f_with(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &opts, &threads).unwrap();
    assert!(par.iter().zip(&dff).all(|(x, y)| x.to_bits() == y.to_bits()), "threads vs linear");
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut max_abs: f64 = 0.0;
    let mut max_rel_scaled: f64 = 0.0;
    let mut worst_row = (0, 0.0f64);
    for k in 0..dff.nrows() {
        let row_scale = reference.row(k).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let d = dff.row(k).iter().zip(reference.row(k)).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        max_abs = max_abs.max(d);
        max_rel_scaled = max_rel_scaled.max(d / row_scale);
        if d / row_scale > worst_row.1 {
            worst_row = (k, d / row_scale);
        }
    }
    let n = dff.len() as f64;
    let (ma, mb) = (dff.sum() / n, reference.sum() / n);
    let cov: f64 = dff.iter().zip(&reference).map(|(a, b)| (a - ma) * (b - mb)).sum();
    let va: f64 = dff.iter().map(|a| (a - ma).powi(2)).sum();
    let vb: f64 = reference.iter().map(|b| (b - mb).powi(2)).sum();
    let corr = cov / (va * vb).sqrt();
    eprintln!(
        "refit F_dff vs CaImAn: max abs {max_abs:.2e} (|F_dff| up to {scale:.2}), max abs / row max {max_rel_scaled:.2e} \
         (worst component {}), correlation {corr:.12}",
        worst_row.0
    );
    // F_dff, C, YrA, b, f are stored as float32 (CaImAn computed float64).
    assert!(max_rel_scaled < 1e-6, "max abs / row max {max_rel_scaled}");
    // the per-trace KDE percentile matters: a fixed 8th percentile is far from CaImAn's output
    let fixed = DffOptions { flag_auto: false, ..opts };
    let d8 = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &fixed).unwrap();
    let far = d8.iter().zip(&reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(far > 1e-2, "{far}");
}

// ------------------------------------------------------------------------------------------
// Synthetic ΔF/F with known baseline and background (spec §7 [ACC])
// ------------------------------------------------------------------------------------------

/// Two components on 30 pixels, baselines 3 and 7 (more than 8 % of the frames at baseline),
/// constant background; ΔF/F must be `(F − F0)/(F0 + B)` with `F = ‖a‖·C`, `F0 = ‖a‖·base`,
/// `B = aᵀ b f/‖a‖`.
/// `(A, b, C, f, YrA, baselines)` of the synthetic case.
type Synthetic = (CscMatrix, Array2<f64>, Array2<f64>, Array2<f64>, Array2<f64>, Vec<f64>);

fn synthetic() -> Synthetic {
    let (p, t) = (30, 400);
    let mut a_dense = Array2::<f32>::zeros((p, 2));
    for i in 0..10 {
        a_dense[(i, 0)] = 0.5 + 0.1 * i as f32;
        a_dense[(i + 8, 1)] = 1.0 - 0.05 * i as f32;
    }
    let a = CscMatrix::from_dense(a_dense.view());
    let b = Array2::from_shape_fn((p, 1), |(i, _)| 1.0 + 0.02 * i as f64);
    let f = Array2::from_elem((1, t), 4.0);
    let base = [3.0, 7.0];
    let mut c = Array2::zeros((2, t));
    for k in 0..2 {
        for i in 0..t {
            let phase = (i + 50 * k) % 100;
            c[(k, i)] = base[k] + if phase < 30 { 5.0 * (-(phase as f64) / 8.0).exp() } else { 0.0 };
        }
    }
    let yra = Array2::zeros((2, t));
    (a, b, c, f, yra, base.to_vec())
}

#[test]
fn synthetic_dff_recovers_known_baseline() {
    let (a, b, c, f, yra, base) = synthetic();
    let opts = DffOptions { flag_auto: false, frames_window: Some(10_000), ..DffOptions::default() };
    let dff = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &opts).unwrap();
    let dense = a.to_dense();
    let mut worst: f64 = 0.0;
    for k in 0..2 {
        let col = dense.column(k);
        let norm = col.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let atb: f64 = col.iter().zip(b.column(0)).map(|(&a, &b)| f64::from(a) * b).sum();
        let bg = atb * 4.0 / norm;
        let f0 = norm * base[k];
        for t in 0..c.ncols() {
            let expected = (norm * c[(k, t)] - f0) / (f0 + bg);
            worst = worst.max((dff[(k, t)] - expected).abs());
        }
    }
    eprintln!("synthetic ΔF/F: max abs error {worst:.2e}");
    assert!(worst < 1e-3, "{worst}");
    // frames_window None is the same scalar baseline
    let none = DffOptions { frames_window: None, ..opts.clone() };
    let dff2 = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &none).unwrap();
    assert_eq!(dff, dff2);
    // YrA absent = zero residual
    let dff3 = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), None, &opts).unwrap();
    assert_eq!(dff, dff3);
}

#[test]
fn detrend_only_and_missing_background() {
    let (a, b, c, f, yra, _) = synthetic();
    let w = 101;
    let opts = DffOptions { flag_auto: false, frames_window: Some(w), detrend_only: true, ..DffOptions::default() };
    let det = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), Some(yra.view()), &opts).unwrap();
    let norms = a.col_norms();
    for k in 0..2 {
        let fk: Vec<f64> = c.row(k).iter().map(|&v| norms[k] * v).collect();
        let f0 = brute_percentile_filter(&fk, 8.0, w);
        for t in 0..fk.len() {
            assert!((det[(k, t)] - (fk[t] - f0[t])).abs() < 1e-12);
        }
    }
    // without b or f: zero background and detrend_only forced
    let full = DffOptions { detrend_only: false, ..opts.clone() };
    let no_bg = detrend_df_f(&a, None, c.view(), Some(f.view()), Some(yra.view()), &full).unwrap();
    assert_eq!(no_bg, det);
    let no_f = detrend_df_f(&a, Some(b.view()), c.view(), None, Some(yra.view()), &full).unwrap();
    assert_eq!(no_f, det);
}

// ------------------------------------------------------------------------------------------
// Running percentile filter vs brute force of scipy's semantics
// ------------------------------------------------------------------------------------------

/// scipy.ndimage.percentile_filter(x, q, size) written from its definition: window
/// `[i − size//2, i − size//2 + size − 1]`, mode 'reflect' (`d c b a | a b c d | d c b a`),
/// element of rank `int(size·q/100)` (`size − 1` for q = 100) of the sorted window.
fn brute_percentile_filter(x: &[f64], q: f64, size: usize) -> Vec<f64> {
    let n = x.len() as isize;
    let reflect = |mut i: isize| -> f64 {
        loop {
            if i < 0 {
                i = -i - 1;
            } else if i >= n {
                i = 2 * n - 1 - i;
            } else {
                return x[i as usize];
            }
        }
    };
    let rank = if q == 100.0 { size - 1 } else { (size as f64 * q / 100.0) as usize };
    (0..n)
        .map(|i| {
            let mut w: Vec<f64> = (0..size as isize).map(|j| reflect(i - (size / 2) as isize + j)).collect();
            w.sort_by(|a, b| a.partial_cmp(b).unwrap());
            w[rank]
        })
        .collect()
}

#[test]
fn percentile_filter_small_known_cases() {
    let x = [1.0, 5.0, 2.0, 8.0, 3.0];
    // size 3, median: windows [1,1,5] [1,5,2] [5,2,8] [2,8,3] [8,3,3]
    assert_eq!(percentile_filter(&x, 50.0, 3).unwrap(), vec![1.0, 2.0, 5.0, 3.0, 3.0]);
    // size 4 (even, one more sample on the left): windows [5,1,1,5] [1,1,5,2] [1,5,2,8] [5,2,8,3] [2,8,3,3]
    assert_eq!(percentile_filter(&x, 0.0, 4).unwrap(), vec![1.0, 1.0, 1.0, 2.0, 2.0]);
    assert_eq!(percentile_filter(&x, 100.0, 4).unwrap(), vec![5.0, 5.0, 8.0, 8.0, 8.0]);
    assert_eq!(percentile_rank(250, 37.2), 93);
    assert_eq!(percentile_rank(10, -20.0), 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn percentile_filter_matches_brute_force(
        x in prop::collection::vec(-5i32..5, 1..40),
        size in 1usize..50,
        q in 0.0f64..=100.0,
    ) {
        // small integers: many ties, as in quantised data
        let x: Vec<f64> = x.into_iter().map(f64::from).collect();
        prop_assert_eq!(percentile_filter(&x, q, size).unwrap(), brute_percentile_filter(&x, q, size));
    }
}

// ------------------------------------------------------------------------------------------
// KDE and df_percentile
// ------------------------------------------------------------------------------------------

#[test]
fn kde_density_is_normalised_and_mode_percentile_sensible() {
    let x = lcg_normal(5, 2000);
    let k = kde(&x).unwrap();
    assert_eq!(k.mesh.len(), 4096);
    let dx = k.mesh[1] - k.mesh[0];
    let integral: f64 = k.density.iter().sum::<f64>() * dx;
    assert!((integral - 1.0).abs() < 1e-3, "{integral}");
    assert!((k.cdf[4095] - integral).abs() < 1e-12);
    // bandwidth of a normal sample: close to Silverman's 1.06 σ n^(-1/5) ≈ 0.23
    assert!(k.bandwidth > 0.1 && k.bandwidth < 0.5, "bandwidth {}", k.bandwidth);
    // the density approximates the normal density
    let peak = k.density.iter().fold(0.0f64, |m, &v| m.max(v));
    assert!((peak - 0.3989).abs() < 0.05, "peak density {peak}");
    let (prct, mode) = df_percentile(&x);
    assert!((prct - 50.0).abs() < 10.0 && mode.abs() < 0.3, "percentile {prct}, mode {mode}");
    // a skewed trace (baseline noise plus positive transients): the mode sits low
    let mut y = lcg_normal(6, 1000);
    for (i, v) in y.iter_mut().enumerate() {
        if i % 50 < 15 {
            *v += 8.0 * (-((i % 50) as f64) / 5.0).exp();
        }
    }
    let (prct_y, _) = df_percentile(&y);
    assert!(prct_y < 45.0 && prct_y > 5.0, "skewed percentile {prct_y}");
}

#[test]
fn df_percentile_falls_back_to_the_median() {
    // constant data: no bandwidth -> 50 and the median, as CaImAn
    assert_eq!(df_percentile(&[2.0; 20]), (50.0, 2.0));
    assert_eq!(df_percentile(&[1.0, f64::NAN, 3.0]).0, 50.0);
    assert!(kde(&[]).is_none());
}

// ------------------------------------------------------------------------------------------
// use_fast: the block-percentile baseline (CaImAn's [Q] returning the detrended signal is not
// reproduced)
// ------------------------------------------------------------------------------------------

#[test]
fn use_fast_uses_the_baseline() {
    let t = 2000;
    let noise = lcg_normal(9, t);
    let x: Vec<f64> = (0..t).map(|i| 10.0 + 3.0 * (i as f64 / 400.0).sin() + 0.2 * noise[i]).collect();
    let w = 200;
    let fast = block_percentile_baseline(&x, w, 20.0, ZoomMode::Nearest).unwrap();
    let slow = percentile_filter(&x, 20.0, w).unwrap();
    // zoom(grid_mode=False) stretches the block levels from the first to the last sample (not at
    // the block centres), so the two baselines differ by a fraction of the signal's range (6).
    let worst = fast.iter().zip(&slow).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1.0, "block baseline vs running percentile: {worst}");
    // through detrend_df_f: with use_fast the ΔF/F stays close to the running-percentile one
    let a = CscMatrix::from_dense(Array2::from_elem((4, 1), 0.5f32).view());
    let c = Array2::from_shape_vec((1, t), x).unwrap();
    let b = Array2::from_elem((4, 1), 1.0);
    let f = Array2::from_elem((1, t), 2.0);
    let base = DffOptions { frames_window: Some(w), ..DffOptions::default() };
    let fast_opts = DffOptions { use_fast: true, ..base.clone() };
    let d_slow = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), None, &base).unwrap();
    let d_fast = detrend_df_f(&a, Some(b.view()), c.view(), Some(f.view()), None, &fast_opts).unwrap();
    let worst = d_fast.iter().zip(&d_slow).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 0.05, "ΔF/F fast vs running: {worst}");
    // the level of the detrended trace is near 0 (CaImAn's bug would give values near −1)
    let mean: f64 = d_fast.sum() / t as f64;
    assert!(mean.abs() < 0.1, "{mean}");
    let _ = percentile(&slow, 50.0).unwrap();
}

// ------------------------------------------------------------------------------------------
// Options and bad input
// ------------------------------------------------------------------------------------------

#[test]
fn options_use_caiman_names() {
    let o: DffOptions =
        serde_json::from_str(r#"{"quantileMin": 10, "frames_window": 250, "flag_auto": false, "detrend_only": true}"#)
            .unwrap();
    assert_eq!(
        o,
        DffOptions {
            quantile_min: 10.0,
            frames_window: Some(250),
            flag_auto: false,
            use_fast: false,
            detrend_only: true
        }
    );
    let n: DffOptions = serde_json::from_str(r#"{"frames_window": null}"#).unwrap();
    assert_eq!(n.frames_window, None);
    assert_eq!(serde_json::from_str::<DffOptions>("{}").unwrap(), DffOptions::default());
    assert_eq!(DffOptions::default().frames_window, Some(500));
}

#[test]
fn bad_input_is_an_error() {
    let (a, b, c, f, yra, _) = synthetic();
    let o = DffOptions::default();
    let run = |a: &CscMatrix, b: &Array2<f64>, c: &Array2<f64>, f: &Array2<f64>, y: &Array2<f64>, o: &DffOptions| {
        detrend_df_f(a, Some(b.view()), c.view(), Some(f.view()), Some(y.view()), o)
    };
    assert!(matches!(run(&a, &b, &c.slice(s![..1, ..]).to_owned(), &f, &yra, &o), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(run(&a, &b, &c, &f, &yra.slice(s![.., ..10]).to_owned(), &o), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(run(&a, &b.slice(s![..5, ..]).to_owned(), &c, &f, &yra, &o), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(run(&a, &b, &c, &f.slice(s![.., ..10]).to_owned(), &yra, &o), Err(Error::ShapeMismatch { .. })));
    let mut cn = c.clone();
    cn[(0, 0)] = f64::NAN;
    assert!(matches!(run(&a, &b, &cn, &f, &yra, &o), Err(Error::NonFinite { .. })));
    let bad_q = DffOptions { quantile_min: 120.0, ..o.clone() };
    assert!(matches!(run(&a, &b, &c, &f, &yra, &bad_q), Err(Error::InvalidParam(_))));
    let bad_w = DffOptions { frames_window: Some(0), ..o.clone() };
    assert!(matches!(run(&a, &b, &c, &f, &yra, &bad_w), Err(Error::InvalidParam(_))));
    let empty = Array2::<f64>::zeros((2, 0));
    let f0 = Array2::<f64>::zeros((1, 0));
    assert!(matches!(run(&a, &b, &empty, &f0, &empty, &o), Err(Error::Empty { .. })));
    assert!(matches!(percentile_filter(&[], 50.0, 3), Err(Error::Empty { .. })));
    assert!(matches!(percentile_filter(&[1.0], 50.0, 0), Err(Error::InvalidParam(_))));
    assert!(matches!(percentile_filter(&[1.0], 150.0, 1), Err(Error::InvalidParam(_))));
    assert!(matches!(block_percentile_baseline(&[1.0, 2.0], 3, 8.0, ZoomMode::Constant), Err(Error::InvalidParam(_))));
    // no components: an empty result
    let a0 = CscMatrix::zeros(30, 0);
    let c0 = Array2::<f64>::zeros((0, 400));
    let d = detrend_df_f(&a0, Some(b.view()), c0.view(), Some(f.view()), None, &o).unwrap();
    assert_eq!(d.dim(), (0, 400));
}
