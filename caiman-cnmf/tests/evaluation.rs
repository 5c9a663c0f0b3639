//! Tests of `caiman_cnmf::evaluation` and `caiman_cnmf::stats` against CaImAn 1.12.1 reference
//! outputs (`test_data/evaluation/`, copied from `shared/reference/deconv/`; the refit traces from
//! `test_data/cnmf/`) and independent checks (brute force, special
//! function identities and quadrature).
#![allow(clippy::print_stderr)]

use caiman_cnmf::Error;
use caiman_cnmf::evaluation::{
    TraceQualityOptions, baseline_window, compute_event_exceptionality, evaluate_traces, fitness_delta, n_samples,
    register_tasks, remove_baseline, trace_snr,
};
use caiman_cnmf::stats::{
    ZoomMode, erf, erfc, erfcx, hsm_sorted, log_ndtr, median, mode_robust, mode_robust_axis, ndtr, norm_ppf,
    pairwise_sum, percentile, zoom_cubic,
};
use caiman_parallel::{Linear, Threads};
use ndarray::{Array2, s};
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/evaluation");
const CNMF_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/cnmf");

fn npy(path: &str) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(path).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

fn mat(path: &str) -> Array2<f64> {
    let (shape, data) = npy(path);
    Array2::from_shape_vec((shape[0], shape[1]), data).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

// ------------------------------------------------------------------------------------------
// Reference: compute_event_exceptionality and mode_robust
// ------------------------------------------------------------------------------------------

#[test]
fn exceptionality_matches_caiman() {
    let traces = mat(&format!("{DATA}/exceptionality_input.npy"));
    for n in [5usize, 15] {
        let ref_erfc = mat(&format!("{DATA}/exceptionality_N{n}_erfc.npy"));
        let ref_fsm = mat(&format!("{DATA}/exceptionality_N{n}_fitness_sdr_md.npy"));
        let ex = compute_event_exceptionality(traces.view(), n, false, 3.0).unwrap();
        assert_eq!(ex.erfc.dim(), ref_erfc.dim());
        let mut max_rel_erfc: f64 = 0.0;
        let mut max_abs_erfc: f64 = 0.0;
        for (a, b) in ex.erfc.iter().zip(ref_erfc.iter()) {
            let d = (a - b).abs();
            max_abs_erfc = max_abs_erfc.max(d);
            // relative where the reference is not vanishingly small
            max_rel_erfc = max_rel_erfc.max(d / b.abs().max(1e-3));
        }
        let mut worst = [0.0f64; 3];
        for k in 0..traces.nrows() {
            worst[0] = worst[0].max(rel(ex.fitness[k], ref_fsm[(0, k)]));
            worst[1] = worst[1].max(rel(ex.sd_r[k], ref_fsm[(1, k)]));
            worst[2] = worst[2].max(rel(ex.md[k], ref_fsm[(2, k)]));
        }
        eprintln!(
            "N={n}: erfc max abs {max_abs_erfc:.2e} max rel {max_rel_erfc:.2e}; fitness rel {:.2e}, sd_r rel {:.2e}, md rel {:.2e}",
            worst[0], worst[1], worst[2]
        );
        assert!(max_rel_erfc < 1e-5, "erfc N={n}: {max_rel_erfc}");
        assert!(worst.iter().all(|&w| w < 1e-5), "fitness/sd_r/md N={n}: {worst:?}");
    }
}

#[test]
fn mode_robust_matches_caiman() {
    let (_, inputs) = npy(&format!("{DATA}/mode_robust_inputs.npy"));
    let (_, offsets) = npy(&format!("{DATA}/mode_robust_offsets.npy"));
    let (_, outputs) = npy(&format!("{DATA}/mode_robust_outputs.npy"));
    for (i, w) in offsets.windows(2).enumerate() {
        let v = &inputs[w[0] as usize..w[1] as usize];
        let m = mode_robust(v).unwrap();
        assert!(rel(m, outputs[i]) < 1e-14 || m == outputs[i], "vector {i} (len {}): {m} vs {}", v.len(), outputs[i]);
    }
    let input = mat(&format!("{DATA}/mode_robust_matrix_input.npy"));
    let (_, ax1) = npy(&format!("{DATA}/mode_robust_matrix_axis1.npy"));
    let (_, ax0) = npy(&format!("{DATA}/mode_robust_matrix_axis0.npy"));
    assert_eq!(mode_robust_axis(input.view(), 1).unwrap().to_vec(), ax1);
    assert_eq!(mode_robust_axis(input.view(), 0).unwrap().to_vec(), ax0);
    assert!(matches!(mode_robust_axis(input.view(), 2), Err(Error::InvalidParam(_))));
}

#[test]
fn hsm_small_cases_and_size3_quirk() {
    assert_eq!(hsm_sorted(&[4.0]), 4.0);
    assert_eq!(hsm_sorted(&[1.0, 2.0]), 1.5);
    // lower gap smaller: mean of the lower pair
    assert_eq!(hsm_sorted(&[0.0, 1.0, 5.0]), 0.5);
    // [Q] upper gap smaller: CaImAn returns the middle value, not the mean of the upper pair
    assert_eq!(hsm_sorted(&[0.0, 4.0, 5.0]), 4.0);
    assert_eq!(hsm_sorted(&[0.0, 1.0, 2.0]), 1.0);
    // even n: the window ending at the last sample is never tried ([0,1,10,10.5] -> windows
    // [0,1] and [1,10] only)
    assert_eq!(hsm_sorted(&[0.0, 1.0, 10.0, 10.5]), 0.5);
}

// ------------------------------------------------------------------------------------------
// Independent brute force of the exceptionality statistic
// ------------------------------------------------------------------------------------------

/// Half-sample mode written from its definition (recursively keep the ⌈n/2⌉-window of minimal
/// range among the first ⌈n/2⌉ starts), with CaImAn's small cases.
fn hsm_brute(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    fn rec(d: &[f64]) -> f64 {
        match d.len() {
            1 => d[0],
            2 => (d[0] + d[1]) / 2.0,
            3 => {
                if d[1] - d[0] < d[2] - d[1] {
                    (d[0] + d[1]) / 2.0
                } else {
                    d[1]
                }
            }
            n => {
                let h = n.div_ceil(2);
                let best =
                    (0..h).min_by(|&i, &j| (d[i + h - 1] - d[i]).partial_cmp(&(d[j + h - 1] - d[j])).unwrap()).unwrap();
                rec(&d[best..best + h])
            }
        }
    }
    rec(&s)
}

fn exceptionality_brute(x: &[f64], n: usize) -> (f64, Vec<f64>) {
    let md = hsm_brute(x);
    let below: Vec<f64> = x.iter().filter(|&&v| v < md).map(|&v| md - v).collect();
    let sd = (below.iter().map(|v| v * v).sum::<f64>() / below.len() as f64).sqrt();
    let l: Vec<f64> = x.iter().map(|&v| ndtr(-(v - md) / (3.0 * sd)).ln()).collect();
    let e: Vec<f64> = (0..x.len()).map(|t| l[t.saturating_sub(n - 1)..=t].iter().sum()).collect();
    (e.iter().copied().fold(f64::INFINITY, f64::min), e)
}

fn lcg_normal(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uni = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| (-2.0 * uni().ln()).sqrt() * (2.0 * std::f64::consts::PI * uni()).cos()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn exceptionality_matches_brute_force(seed in 0u64..1000, len in 20usize..200, n in 1usize..12, amp in 0.0f64..20.0) {
        let mut x = lcg_normal(seed, len);
        // a few transients
        for (i, v) in x.iter_mut().enumerate() {
            if i % 37 == 5 { *v += amp; }
        }
        let traces = Array2::from_shape_vec((1, len), x.clone()).unwrap();
        let ex = compute_event_exceptionality(traces.view(), n, false, 3.0).unwrap();
        let (fit, e) = exceptionality_brute(&x, n);
        prop_assert!((ex.fitness[0] - fit).abs() <= 1e-9 * fit.abs().max(1.0));
        for (a, b) in ex.erfc.row(0).iter().zip(&e) {
            prop_assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0));
        }
        prop_assert_eq!(ex.md[0], hsm_brute(&x));
    }
}

// ------------------------------------------------------------------------------------------
// Special functions
// ------------------------------------------------------------------------------------------

/// `erfcx(z) = 2/√π ∫_z^∞ e^{−(t²−z²)} dt` by composite Simpson over `[z, z + L]` (the rest is
/// below e^{−100}), with a step fine against the decay scale `1/(2z)` — an independent quadrature
/// of the same function.
fn erfcx_quadrature(z: f64) -> f64 {
    let (len, h) = if z > 1.0 { ((100.0 / (2.0 * z)).min(12.0), 0.001 / z) } else { (12.0, 2e-4) };
    let m = 2 * ((len / h / 2.0).ceil() as usize);
    let f = |t: f64| (-(t - z) * (t + z)).exp();
    let mut s = f(z) + f(z + m as f64 * h);
    for i in 1..m {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        s += w * f(z + i as f64 * h);
    }
    2.0 / std::f64::consts::PI.sqrt() * s * h / 3.0
}

#[test]
fn special_function_known_values() {
    let cases = [
        (ndtr(-1.0), 0.15865525393145707),
        (ndtr(-2.0), 0.022750131948179212),
        (ndtr(-3.0), 0.0013498980316300946),
        (erfc(1.0), 0.15729920705028513),
        (erfc(2.0), 0.004677734981047266),
        (erfc(5.0), 1.537_459_794_428_035e-12),
        (erf(0.5), 0.5204998778130465),
        (norm_ppf(0.975), 1.959963984540054),
        (norm_ppf(0.025), -1.959963984540054),
        (norm_ppf(0.8413447460685429), 1.0),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        assert!(rel(*a, *b) < 1e-13, "case {i}: {a} vs {b}");
    }
    assert_eq!(norm_ppf(0.5), 0.0);
    assert_eq!(norm_ppf(0.0), f64::NEG_INFINITY);
    assert_eq!(norm_ppf(1.0), f64::INFINITY);
    assert!(norm_ppf(1.5).is_nan() && norm_ppf(-0.1).is_nan() && norm_ppf(f64::NAN).is_nan());
    assert_eq!(log_ndtr(f64::INFINITY), 0.0);
    assert_eq!(log_ndtr(f64::NEG_INFINITY), f64::NEG_INFINITY);
    assert!(log_ndtr(f64::NAN).is_nan());
    assert_eq!(erfc(40.0), 0.0);
    assert_eq!(erfc(-40.0), 2.0);
}

#[test]
fn erfcx_matches_quadrature() {
    let mut worst: f64 = 0.0;
    for i in 0..=200 {
        let z = -2.0 + i as f64 * 0.1; // [-2, 18]
        let q = erfcx_quadrature(z);
        worst = worst.max(rel(erfcx(z), q));
    }
    eprintln!("erfcx vs Simpson quadrature: max rel {worst:.2e}");
    assert!(worst < 1e-12, "{worst}");
}

/// `log Φ(x)` for `x ≤ −10` from the asymptotic series
/// `Φ(x) = φ(x)/|x| · Σ (−1)^k (2k−1)!! / x^{2k}` (terms until they stop decreasing).
fn log_ndtr_asymptotic(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..40 {
        let next = -term * (2 * k - 1) as f64 / x2;
        if next.abs() >= term.abs() {
            break;
        }
        term = next;
        sum += term;
    }
    -x2 / 2.0 - (-x).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + sum.ln()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn log_ndtr_tail_matches_series(x in -1e6f64..-10.0) {
        let a = log_ndtr(x);
        let b = log_ndtr_asymptotic(x);
        prop_assert!(rel(a, b) < 1e-13, "x={} {} vs {}", x, a, b);
    }

    #[test]
    fn log_ndtr_matches_quadrature(x in -10.0f64..8.0) {
        // Φ(x) = erfcx(−x/√2)·e^{−x²/2}/2, with erfcx from the quadrature
        let z = -x / std::f64::consts::SQRT_2;
        let expected = if z >= 0.0 {
            (erfcx_quadrature(z) / 2.0).ln() - z * z
        } else {
            (-erfcx_quadrature(-z) * (-z * z).exp() / 2.0).ln_1p()
        };
        prop_assert!((log_ndtr(x) - expected).abs() < 1e-11 * expected.abs().max(1e-6), "x={}", x);
    }

    #[test]
    fn ndtr_symmetry(x in -8.0f64..8.0) {
        prop_assert!((ndtr(x) + ndtr(-x) - 1.0).abs() < 2e-16 * 4.0);
    }

    #[test]
    fn ppf_inverts_cdf_lower_tail(x in -37.5f64..0.0) {
        let p = ndtr(x);
        let y = norm_ppf(p);
        prop_assert!((y - x).abs() < 1e-12 * x.abs().max(1.0), "x={} p={} y={}", x, p, y);
    }

    #[test]
    fn ppf_inverts_cdf_upper(x in 0.0f64..5.0) {
        let p = ndtr(x);
        let y = norm_ppf(p);
        // 1 − p carries only the absolute precision of p
        prop_assert!((y - x).abs() < 1e-15 / ndtr(-x).max(1e-300) * 4.0 + 1e-13, "x={} y={}", x, y);
    }

    #[test]
    fn cdf_inverts_ppf(p in 1e-300f64..1.0) {
        let x = norm_ppf(p);
        prop_assert!(rel(ndtr(x), p) < 1e-12, "p={} x={}", p, x);
    }
}

// ------------------------------------------------------------------------------------------
// numpy helpers
// ------------------------------------------------------------------------------------------

#[test]
fn percentile_median_and_sum_follow_numpy() {
    let v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
    // np.percentile(v, 8) = 1.0 (index 0.56 between 1 and 1); np.percentile(v, 30) = 1.0 + 0.1*(2-1)...
    assert_eq!(percentile(&v, 0.0).unwrap(), 1.0);
    assert_eq!(percentile(&v, 100.0).unwrap(), 9.0);
    assert!((percentile(&v, 50.0).unwrap() - 3.5).abs() < 1e-15);
    // virtual index 7·0.3 = 2.1 -> sorted [1,1,2,3,4,5,6,9]: 2 + 0.1·(3−2)
    assert!((percentile(&v, 30.0).unwrap() - 2.1).abs() < 1e-12);
    assert_eq!(median(&v).unwrap(), 3.5);
    assert_eq!(median(&[2.0, 7.0, 1.0]).unwrap(), 2.0);
    assert!(matches!(percentile(&[], 5.0), Err(Error::Empty { .. })));
    assert!(matches!(percentile(&v, 101.0), Err(Error::InvalidParam(_))));
    let big: Vec<f64> = (0..1000).map(|i| (i as f64).sin()).collect();
    let naive: f64 = big.iter().sum();
    assert!((pairwise_sum(&big) - naive).abs() < 1e-12);
}

// ------------------------------------------------------------------------------------------
// Baseline removal, zoom
// ------------------------------------------------------------------------------------------

#[test]
fn zoom_cubic_interpolates_at_knots_and_constant_mode_edges() {
    let x: Vec<f64> = (0..9).map(|i| ((i * 7 % 5) as f64) - 1.5).collect();
    // out_len - 1 = 8·(n − 1) = 64: knot j at output 8 j
    for mode in [ZoomMode::Constant, ZoomMode::Nearest] {
        let z = zoom_cubic(&x, 65, mode);
        for (j, &xj) in x.iter().enumerate() {
            assert!((z[8 * j] - xj).abs() < 1e-12, "{mode:?} knot {j}: {} vs {xj}", z[8 * j]);
        }
    }
    // a constant signal stays constant
    let c = zoom_cubic(&[2.5; 6], 31, ZoomMode::Constant);
    assert!(c.iter().all(|v| (v - 2.5).abs() < 1e-12));
}

#[test]
fn baseline_removal_tracks_slow_drift() {
    let t = 3000;
    let noise = lcg_normal(7, t);
    let drift = |i: usize| 5.0 + 2.0 * (i as f64 / t as f64 * 3.0).sin();
    let x: Vec<f64> = (0..t).map(|i| drift(i) + 0.1 * noise[i]).collect();
    let mut m = Array2::from_shape_vec((1, t), x).unwrap();
    remove_baseline(m.view_mut()).unwrap();
    assert_eq!(baseline_window(t), 600);
    // the 8th percentile of N(0, 0.1²) is about −0.14: the residual is centred near +0.14
    let med = median(&m.row(0).to_vec()).unwrap();
    assert!((med - 0.14).abs() < 0.05, "median after baseline removal {med}");
    let mut short = Array2::<f64>::zeros((1, 4));
    assert!(matches!(remove_baseline(short.view_mut()), Err(Error::Empty { .. })));
}

// ------------------------------------------------------------------------------------------
// Trace SNR of the refit components (CaImAn's evaluate_components)
// ------------------------------------------------------------------------------------------

fn refit_traces() -> Option<(Array2<f64>, Array2<f64>, Vec<f64>)> {
    let c = format!("{CNMF_REF}/refit_C.npy");
    let (_, snr) = npy(&format!("{CNMF_REF}/refit_SNR_comp.npy"));
    Some((mat(&c), mat(&format!("{CNMF_REF}/refit_YrA.npy")), snr))
}

fn refit_opts() -> TraceQualityOptions {
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{CNMF_REF}/cnmf_params_refit.json")).unwrap()).unwrap();
    TraceQualityOptions {
        fr: params["data"]["fr"].as_f64().unwrap(),
        decay_time: params["data"]["decay_time"].as_f64().unwrap(),
        ..TraceQualityOptions::default()
    }
}

#[test]
fn refit_snr_matches_caiman() {
    let Some((c, yra, snr_ref)) = refit_traces() else { return };
    let opts = refit_opts();
    let q = evaluate_traces(&Linear::new(), c.view(), yra.view(), &opts).unwrap();
    assert_eq!(q.n, 15);
    let mut worst_rel: f64 = 0.0;
    let mut worst_abs: f64 = 0.0;
    for (k, (&a, &b)) in q.snr.iter().zip(&snr_ref).enumerate() {
        let a = if a.is_nan() { 0.0 } else { a };
        worst_abs = worst_abs.max((a - b).abs());
        worst_rel = worst_rel.max(rel(a, b));
        if rel(a, b) > 1e-5 {
            eprintln!("component {k}: SNR {a} vs CaImAn {b}");
        }
    }
    eprintln!(
        "refit SNR vs CaImAn: max abs {worst_abs:.2e}, max rel {worst_rel:.2e} over {} components",
        snr_ref.len()
    );
    // C and YrA are stored as float32 (CaImAn computed float64), so the traces differ by ~1e-7
    // relative; the statistic is smooth in them except where the half-sample mode changes.
    assert!(worst_rel < 1e-5, "max rel {worst_rel}");
    // the baseline removal matters: without it the SNR is clearly different
    let raw =
        evaluate_traces(&Linear::new(), c.view(), yra.view(), &TraceQualityOptions { remove_baseline: false, ..opts })
            .unwrap();
    let far = raw.snr.iter().zip(&snr_ref).fold(0.0f64, |m, (a, b)| m.max(rel(*a, *b)));
    assert!(far > 1e-3, "{far}");
}

#[test]
fn linear_and_threads_agree() {
    let (c, yra) = match refit_traces() {
        Some((c, y, _)) => (c, y),
        None => {
            let x = Array2::from_shape_vec((7, 400), lcg_normal(3, 2800)).unwrap();
            (x.clone(), x * 0.5)
        }
    };
    let opts = TraceQualityOptions { traces_per_task: 3, fr: 30.0, decay_time: 0.5, ..TraceQualityOptions::default() };
    let lin = evaluate_traces(&Linear::new(), c.view(), yra.view(), &opts).unwrap();
    let thr = evaluate_traces(&Threads::new(2).unwrap(), c.view(), yra.view(), &opts).unwrap();
    assert_eq!(lin, thr);
    // the per-block result equals the whole-matrix functions
    let traces = &c + &yra;
    let fd = fitness_delta(traces.view(), lin.n, false, 3.0).unwrap();
    assert_eq!(fd.to_vec(), lin.fitness_delta);
    let mut tr = traces.clone();
    remove_baseline(tr.view_mut()).unwrap();
    let ex = compute_event_exceptionality(tr.view(), lin.n, false, 3.0).unwrap();
    assert_eq!(ex.fitness.to_vec(), lin.fitness_raw);
    let snr: Vec<f64> = ex.fitness.iter().map(|&f| trace_snr(f, lin.n)).collect();
    assert_eq!(snr, lin.snr);
    // registration compiles and registers
    let _ = register_tasks(caiman_parallel::Registry::new());
}

#[test]
fn strong_transients_have_high_snr_and_noise_low() {
    let t = 2000;
    let noise = lcg_normal(11, t);
    let mut c = Array2::<f64>::zeros((2, t));
    let yra = Array2::from_shape_fn((2, t), |(_, i)| noise[i]);
    // component 0: exponential transients of amplitude 20σ; component 1: nothing
    for start in (100..t).step_by(300) {
        for i in start..t.min(start + 60) {
            c[(0, i)] += 20.0 * (-((i - start) as f64) / 15.0).exp();
        }
    }
    let q = evaluate_traces(&Linear::new(), c.view(), yra.view(), &TraceQualityOptions::default()).unwrap();
    eprintln!("synthetic SNR: transients {:.2}, noise {:.2}", q.snr[0], q.snr[1]);
    assert!(q.snr[0] > 2.5);
    assert!(q.snr[1] < 2.0);
}

// ------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------

#[test]
fn bad_input_is_an_error() {
    let x = Array2::from_shape_vec((2, 50), lcg_normal(1, 100)).unwrap();
    assert!(matches!(compute_event_exceptionality(x.view(), 0, false, 3.0), Err(Error::InvalidParam(_))));
    assert!(matches!(compute_event_exceptionality(x.view(), 5, false, 0.0), Err(Error::InvalidParam(_))));
    assert!(matches!(
        compute_event_exceptionality(Array2::<f64>::zeros((0, 5)).view(), 5, false, 3.0),
        Err(Error::Empty { .. })
    ));
    let mut nan = x.clone();
    nan[(1, 3)] = f64::NAN;
    assert!(matches!(compute_event_exceptionality(nan.view(), 5, false, 3.0), Err(Error::NonFinite { .. })));
    assert!(matches!(fitness_delta(x.slice(s![.., ..1]), 5, false, 3.0), Err(Error::Empty { .. })));
    assert!(matches!(mode_robust(&[]), Err(Error::Empty { .. })));
    assert!(matches!(mode_robust(&[1.0, f64::INFINITY]), Err(Error::NonFinite { .. })));
    assert!(matches!(n_samples(0.0, 0.4), Err(Error::InvalidParam(_))));
    let lin = Linear::new();
    let opts = TraceQualityOptions::default();
    assert!(matches!(evaluate_traces(&lin, x.view(), x.slice(s![.., ..40]), &opts), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(evaluate_traces(&lin, nan.view(), x.view(), &opts), Err(Error::NonFinite { .. })));
    assert!(matches!(
        evaluate_traces(&lin, x.slice(s![.., ..4]), x.slice(s![.., ..4]), &opts),
        Err(Error::Empty { .. })
    ));
    let bad = TraceQualityOptions { traces_per_task: 0, ..TraceQualityOptions::default() };
    assert!(matches!(evaluate_traces(&lin, x.view(), x.view(), &bad), Err(Error::InvalidParam(_))));
    // a constant trace: NaN statistic as in CaImAn, not a panic
    let flat = Array2::from_elem((1, 30), 2.0);
    let ex = compute_event_exceptionality(flat.view(), 5, false, 3.0).unwrap();
    assert!(ex.sd_r[0].is_nan() && ex.fitness[0].is_nan());
    // robust_std (raises in CaImAn) gives a finite, positive noise level on noisy data
    let r = compute_event_exceptionality(x.view(), 5, true, 3.0).unwrap();
    assert!(r.sd_r.iter().all(|&v| v.is_finite() && v > 0.0));
}
