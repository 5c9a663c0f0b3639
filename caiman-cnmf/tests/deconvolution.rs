//! Deconvolution (OASIS AR(1)/AR(2), `constrained_foopsi`) against CaImAn 1.12.1 reference
//! outputs, plus independent checks (a generic NNLS solver, the noise constraint, truth recovery).
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use caiman_cnmf::Error;
use caiman_cnmf::foopsi::{FoopsiOptions, FoopsiResult, constrained_foopsi, deconvolve_traces, make_g_matrix};
use caiman_cnmf::noise::NoiseMethod;
use caiman_cnmf::oasis::{Ar1Params, Ar2Params, OasisWorkspace, Penalty, oasis_ar1};
use common::corr;
use proptest::prelude::*;

const LOCAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/deconv");
const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/deconv");

const TRACES: [&str; 8] = [
    "ar1_sn0.2_T1000",
    "ar1_sn0.2_T3000",
    "ar1_sn0.5_T1000",
    "ar1_sn0.5_T3000",
    "ar2_sn0.2_T1000",
    "ar2_sn0.2_T3000",
    "ar2_sn0.5_T1000",
    "ar2_sn0.5_T3000",
];
const VARIANTS: [&str; 5] = ["default", "pipeline", "smin-3", "optg1", "known"];

/// A data file from the crate's test data, else from the shared reference tree.
fn data_file(name: &str) -> Option<PathBuf> {
    [LOCAL, SHARED].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// `(shape, data)` of an `.npy` file.
fn npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(path).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

/// Rows `[y, c_true, s_true]` of a reference trace.
fn trace(name: &str) -> Option<[Vec<f64>; 3]> {
    let (shape, d) = npy(&data_file(&format!("trace_{name}.npy"))?);
    let t = shape[1];
    Some([d[..t].to_vec(), d[t..2 * t].to_vec(), d[2 * t..].to_vec()])
}

fn results() -> serde_json::Value {
    let p = data_file("foopsi_results.json").expect("foopsi_results.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn true_g(name: &str) -> Vec<f64> {
    if name.starts_with("ar1") { vec![0.95] } else { vec![1.7, -0.71] }
}

fn true_sn(name: &str) -> f64 {
    if name.contains("sn0.2") { 0.2 } else { 0.5 }
}

/// The options of a reference variant with CaImAn's `g` and `sn` fed in (`optimize_g`: the
/// initial `g` is the one of the `default` run, as the reference stores the re-fitted one).
fn variant_opts(name: &str, p: usize, variant: &str, res: &serde_json::Value) -> Option<FoopsiOptions> {
    let key = |v: &str| format!("{name}_p{p}_{v}");
    let entry = res.get(key(variant))?;
    let gv = |e: &serde_json::Value| -> Vec<f64> {
        e["g"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let mut o = FoopsiOptions { p, ..FoopsiOptions::default() };
    o.sn = Some(entry["sn"].as_f64().unwrap());
    o.g = Some(gv(entry));
    match variant {
        "default" | "known" => {}
        "pipeline" => {
            o.bas_nonneg = false;
            o.noise_method = NoiseMethod::Mean;
            o.fudge_factor = 0.96;
        }
        "smin-3" => o.s_min = Some(-3.0),
        "optg1" => {
            o.optimize_g = 1;
            o.g = Some(gv(&res[key("default")]));
        }
        _ => unreachable!(),
    }
    Some(o)
}

/// CaImAn's `(c, s)` of a reference run.
fn reference_cs(name: &str, p: usize, variant: &str) -> Option<(Vec<f64>, Vec<f64>)> {
    let (shape, d) = npy(&data_file(&format!("foopsi_{name}_p{p}.npy"))?);
    let v = VARIANTS.iter().position(|x| *x == variant)?;
    if v >= shape[0] {
        return None;
    }
    let t = shape[2];
    let base = v * 2 * t;
    Some((d[base..base + t].to_vec(), d[base + t..base + 2 * t].to_vec()))
}

fn rss_ratio(y: &[f64], r: &FoopsiResult) -> f64 {
    let fit = r.full_fit();
    let rss: f64 = y.iter().zip(&fit).map(|(a, b)| (a - b) * (a - b)).sum();
    rss / (r.sn * r.sn * y.len() as f64)
}

struct Row {
    key: String,
    corr_c: f64,
    corr_s: f64,
    max_abs_c: f64,
    dbl: f64,
    dlam_rel: f64,
    rss: f64,
    rss_caiman: f64,
}

/// Runs every reference variant with CaImAn's g/sn and collects the agreement.
fn compare_all(p: usize) -> Vec<Row> {
    let res = results();
    let mut rows = Vec::new();
    for name in TRACES {
        let Some([y, _, _]) = trace(name) else {
            eprintln!("skipping {name}: reference trace not available");
            continue;
        };
        for variant in VARIANTS {
            let Some(opts) = variant_opts(name, p, variant, &res) else { continue };
            let Some((cr, sr)) = reference_cs(name, p, variant) else {
                eprintln!("skipping {name} p{p} {variant}: reference arrays not available");
                continue;
            };
            let entry = &res[format!("{name}_p{p}_{variant}")];
            let r = constrained_foopsi(&y, &opts).unwrap();
            let lam_ref = entry["lam"].as_f64().unwrap();
            rows.push(Row {
                key: format!("{name}_p{p}_{variant}"),
                corr_c: corr(&r.c, &cr),
                corr_s: corr(&r.s, &sr),
                max_abs_c: r.c.iter().zip(&cr).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max),
                dbl: r.bl - entry["bl"].as_f64().unwrap(),
                dlam_rel: (r.lam.unwrap() - lam_ref) / lam_ref.abs().max(1e-12),
                rss: rss_ratio(&y, &r),
                rss_caiman: entry["rss_over_sn2T"].as_f64().unwrap(),
            });
        }
    }
    for r in &rows {
        eprintln!(
            "{:32} corr_c {:.6} corr_s {:.6} max|dc| {:.2e} dbl {:+.2e} dlam/lam {:+.2e} rss {:.6} (caiman {:.5})",
            r.key, r.corr_c, r.corr_s, r.max_abs_c, r.dbl, r.dlam_rel, r.rss, r.rss_caiman
        );
    }
    rows
}

/// `|RSS/(sn²T) − 1|`.
fn miss(rss: f64) -> f64 {
    (rss - 1.0).abs()
}

/// AR(1): with CaImAn's g and sn fed in, c and s agree with CaImAn's float32 Cython to float32
/// rounding; the noise constraint is met wherever CaImAn meets it, and elsewhere (an AR(1) model
/// fitted to AR(2) data, where the target is out of reach) we end at least as close to it.
#[test]
fn ar1_matches_caiman() {
    let rows = compare_all(1);
    assert!(!rows.is_empty());
    for r in &rows {
        let optg = r.key.ends_with("optg1");
        // optimize_g: bounded Brent on g instead of CaImAn's 3-step L-BFGS-B on (b, g)
        let (min_c, min_s) = if optg { (0.99, 0.98) } else { (0.9999, 0.9995) };
        assert!(r.corr_c >= min_c && r.corr_s >= min_s, "{}: corr c {} s {}", r.key, r.corr_c, r.corr_s);
        if !r.key.contains("smin") {
            if miss(r.rss_caiman) <= 1.2e-4 {
                assert!(miss(r.rss) <= 1e-4, "{}: RSS/(sn²T) = {}", r.key, r.rss);
            } else {
                assert!(miss(r.rss) <= miss(r.rss_caiman) + 1e-6, "{}: {} vs CaImAn {}", r.key, r.rss, r.rss_caiman);
            }
        }
        if !optg && miss(r.rss_caiman) <= 1.2e-4 {
            assert!(r.max_abs_c < 1e-4 && r.dbl.abs() < 1e-5 && r.dlam_rel.abs() < 1e-3, "{}", r.key);
        }
    }
}

/// Where the AR(2) constraint cannot be met: with `optimize_g` the re-fitted `g = [1.83, −0.835]`
/// (roots 0.966 and 0.864) rises too slowly for this trace's events, and even the exact NNLS at
/// `λ = 0`, minimised jointly over the baseline, leaves RSS = 1.216 × sn²T (CaImAn: 2.29).
const AR2_OUT_OF_REACH: &str = "ar2_sn0.2_T1000_p2_optg1";

/// AR(2): CaImAn stops after one baseline update and misses the noise constraint (its RSS/(sn²T)
/// ranges from 0.94 to 2.29); ours meets it to 1e-4 while c stays close to CaImAn's.
#[test]
fn ar2_meets_constraint_and_matches_caiman() {
    let rows = compare_all(2);
    assert!(!rows.is_empty());
    for r in &rows {
        let variant = r.key.rsplit('_').next().unwrap();
        if r.key == AR2_OUT_OF_REACH {
            // the λ = 0 optimum over (s, b): as close as s ≥ 0 allows
            assert!(
                r.rss < 1.22 && miss(r.rss) < miss(r.rss_caiman),
                "{}: {} vs CaImAn {}",
                r.key,
                r.rss,
                r.rss_caiman
            );
        } else if variant != "smin-3" {
            assert!(miss(r.rss) <= 1e-4, "{}: RSS/(sn²T) = {}", r.key, r.rss);
        }
        // AR(2) model on noisy AR(1) data (sn 0.5, T 1000): CaImAn's proxy mask misses the small
        // events our solution needs to reach the constraint.
        let hard = r.key.starts_with("ar1_sn0.5_T1000_p2") || (variant == "optg1" && r.key.starts_with("ar1_sn0.5"));
        let min_c = match variant {
            "known" => 0.999,
            "smin-3" => 0.95,
            _ if hard => 0.98,
            _ => 0.99,
        };
        assert!(r.corr_c >= min_c, "{}: corr c {}", r.key, r.corr_c);
    }
}

/// CaImAn's `test_deconvolution.py` acceptance, on the reference traces with the true g and sn.
#[test]
fn recovers_ground_truth() {
    for name in TRACES {
        let Some([y, c_true, s_true]) = trace(name) else {
            eprintln!("skipping {name}: not available");
            continue;
        };
        let g = true_g(name);
        let sn = true_sn(name);
        let opts = FoopsiOptions { p: g.len(), g: Some(g), sn: Some(sn), ..FoopsiOptions::default() };
        let r = constrained_foopsi(&y, &opts).unwrap();
        let (cc, cs) = (corr(&r.c, &c_true), corr(&r.s, &s_true));
        eprintln!("{name}: corr(c, truth) {cc:.4} corr(s, truth) {cs:.4}");
        // CaImAn's thresholds (set for its seed-0 trace); where CaImAn's own run on these seeds
        // misses them, ours must be as good as CaImAn's
        let e = &results()[format!("{name}_p{}_known", r.g.len())];
        let (rc, rs) = (e["corr_c_true"].as_f64().unwrap(), e["corr_s_true"].as_f64().unwrap());
        let (min_c, min_s) = if sn < 0.3 { (0.99, 0.97) } else { (0.9, 0.7) };
        let (min_c, min_s) = (f64::min(min_c, rc - 0.005), f64::min(min_s, rs - 0.01));
        assert!(cc >= min_c && cs >= min_s, "{name}: {cc} {cs} (CaImAn {rc} {rs})");
    }
}

/// Every constrained L1 solution on synthetic AR(1) data meets the constraint (fresh data, not the
/// reference traces): baseline optimised or not, decimated or not.
#[test]
fn ar1_constraint_is_met_on_synthetic_data() {
    let mut ws = OasisWorkspace::new();
    for (seed, &(g, sn, optimize_b, decimate)) in
        [(0.9, 0.3, true, 1), (0.95, 0.5, false, 1), (0.97, 0.2, true, 1), (0.95, 0.3, true, 4)].iter().enumerate()
    {
        let (y, _, _) = synth_ar1(2000, g, sn, 5.0, seed as u64 + 7);
        let y: Vec<f64> = if optimize_b { y } else { y.iter().map(|v| v - 5.0).collect() };
        let params = Ar1Params { optimize_b, decimate, ..Ar1Params::default() };
        let (mut c, mut s) = (vec![0.0; y.len()], vec![0.0; y.len()]);
        let fit = ws.constrained_ar1(&y, g, sn, &params, &mut c, &mut s).unwrap();
        let rss: f64 = y.iter().zip(&c).map(|(a, b)| (a - b - fit.b).powi(2)).sum();
        let ratio = rss / (sn * sn * y.len() as f64);
        eprintln!("g {g} sn {sn} optimize_b {optimize_b} decimate {decimate}: RSS/(sn²T) {ratio:.6} b {:.4}", fit.b);
        if decimate == 1 {
            assert!(miss(ratio) <= 1e-4, "{ratio}");
        } else {
            // decimation estimates λ on block means: the full-rate residual lands near the target
            assert!(miss(ratio) <= 0.05, "{ratio}");
        }
        assert!(s.iter().all(|&v| v >= -1e-9));
    }
}

/// A simple AR(1) generator (LCG + Box–Muller): `(y, c, s)` with baseline `b`.
fn synth_ar1(t: usize, g: f64, sn: f64, b: f64, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    synth_ar(t, [g, 0.0], sn, b, seed)
}

/// AR(2) version of [`synth_ar1`] (`g = [g₁, g₂]`).
fn synth_ar(t: usize, g: [f64; 2], sn: f64, b: f64, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut unif = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let (mut y, mut c, mut s) = (Vec::with_capacity(t), Vec::with_capacity(t), Vec::with_capacity(t));
    let (mut prev, mut prev2) = (0.0, 0.0);
    for _ in 0..t {
        let spike = if unif() < 0.5 / 30.0 { 1.0 } else { 0.0 };
        let ct = g[0] * prev + g[1] * prev2 + spike;
        prev2 = prev;
        let n = (-2.0 * unif().ln()).sqrt() * (2.0 * std::f64::consts::PI * unif()).cos();
        y.push(b + ct + sn * n);
        c.push(ct);
        s.push(spike);
        prev = ct;
    }
    (y, c, s)
}

/// Exact minimiser of `½‖Ks − y‖² + λ·1ᵀs` over `s ≥ 0` (K lower-triangular, `K[t][j] = g^{t−j}`)
/// by enumerating every support and checking the KKT conditions (small T only).
fn brute_force_l1(y: &[f64], g: f64, lam: f64) -> Vec<f64> {
    let t = y.len();
    let k = |a: usize, j: usize| if a >= j { g.powi((a - j) as i32) } else { 0.0 };
    let mut best: Option<(f64, Vec<f64>)> = None;
    for mask in 0u32..(1 << t) {
        let p: Vec<usize> = (0..t).filter(|j| mask & (1 << j) != 0).collect();
        let m = p.len();
        // normal equations on the support: (K_PᵀK_P) s_P = K_Pᵀy − λ
        let mut a = vec![0.0; m * m];
        let mut rhs = vec![0.0; m];
        for (u, &ju) in p.iter().enumerate() {
            rhs[u] = (0..t).map(|r| k(r, ju) * y[r]).sum::<f64>() - lam;
            for (v, &jv) in p.iter().enumerate() {
                a[u * m + v] = (0..t).map(|r| k(r, ju) * k(r, jv)).sum();
            }
        }
        let Some(sp) = gauss_solve(a, rhs, m) else { continue };
        if sp.iter().any(|&v| v < -1e-12) {
            continue;
        }
        let mut s = vec![0.0; t];
        for (u, &ju) in p.iter().enumerate() {
            s[ju] = sp[u];
        }
        let c: Vec<f64> = (0..t).map(|r| (0..=r).map(|j| k(r, j) * s[j]).sum()).collect();
        let obj = 0.5 * c.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() + lam * s.iter().sum::<f64>();
        if best.as_ref().is_none_or(|(o, _)| obj < *o - 1e-15) {
            best = Some((obj, c));
        }
    }
    best.unwrap().1
}

fn gauss_solve(mut a: Vec<f64>, mut b: Vec<f64>, m: usize) -> Option<Vec<f64>> {
    for col in 0..m {
        let piv = (col..m).max_by(|&i, &j| a[i * m + col].abs().total_cmp(&a[j * m + col].abs()))?;
        if a[piv * m + col].abs() < 1e-14 {
            return None;
        }
        for k in 0..m {
            a.swap(col * m + k, piv * m + k);
        }
        b.swap(col, piv);
        for r in col + 1..m {
            let f = a[r * m + col] / a[col * m + col];
            for k in col..m {
                a[r * m + k] -= f * a[col * m + k];
            }
            b[r] -= f * b[col];
        }
    }
    for r in (0..m).rev() {
        let mut v = b[r];
        for k in r + 1..m {
            v -= a[r * m + k] * b[k];
        }
        b[r] = v / a[r * m + r];
    }
    Some(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// The unconstrained OASIS (`oasis_ar1` with `s_min = 0`) is the exact solution of the
    /// non-negative L1 problem `min ½‖c − y‖² + λ Σ s_t`, `s = Gc ≥ 0` (with `s_0 = c_0`).
    #[test]
    fn oasis_ar1_equals_brute_force_qp(
        y in prop::collection::vec(-1.0f64..3.0, 2..10),
        g in 0.3f64..0.98,
        lam in 0.0f64..1.0,
    ) {
        let (c, s) = oasis_ar1(&y, g, lam, 0.0);
        let exact = brute_force_l1(&y, g, lam);
        for (a, b) in c.iter().zip(&exact) {
            prop_assert!((a - b).abs() <= 1e-6, "oasis {:?} exact {:?}", c, exact);
        }
        prop_assert!(s[1..].iter().all(|&v| v >= -1e-9));
    }
}

#[test]
fn oasis_ar1_s_min_thresholds_spikes() {
    let (y, _, _) = synth_ar1(500, 0.9, 0.2, 0.0, 3);
    let (_, s) = oasis_ar1(&y, 0.9, 0.0, 0.5);
    assert!(s[1..].iter().all(|&v| v == 0.0 || v >= 0.5 - 1e-9), "spikes below s_min");
    assert!(s.iter().any(|&v| v > 0.0));
}

#[test]
fn make_g_matrix_matches_caiman_test_temporal() {
    let m = make_g_matrix(6, &[1.0, 2.0, 3.0]);
    let expected = [
        [1., 0., 0., 0., 0., 0.],
        [-1., 1., 0., 0., 0., 0.],
        [-2., -1., 1., 0., 0., 0.],
        [-3., -2., -1., 1., 0., 0.],
        [0., -3., -2., -1., 1., 0.],
        [0., 0., -3., -2., -1., 1.],
    ];
    for i in 0..6 {
        for j in 0..6 {
            assert_eq!(m[[i, j]], expected[i][j], "({i}, {j})");
        }
    }
}

#[test]
fn deconvolve_traces_linear_and_threads_agree() {
    let mut rows = Vec::new();
    for name in ["ar1_sn0.2_T1000", "ar1_sn0.5_T1000", "ar2_sn0.2_T1000", "ar2_sn0.5_T1000"] {
        rows.push(trace(name).expect("local test data")[0].clone());
    }
    for k in 0..16 {
        let (y, _, _) = synth_ar1(1000, 0.93, 0.3, 2.0, 100 + k);
        rows.push(y);
    }
    let t = 1000;
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let traces = ndarray::Array2::from_shape_vec((rows.len(), t), flat).unwrap();
    for p in [1, 2] {
        let opts = FoopsiOptions { p, ..FoopsiOptions::default() };
        let (lin, _) = deconvolve_traces(traces.view(), &opts, &caiman_parallel::Linear::new()).unwrap();
        let (thr, _) = deconvolve_traces(traces.view(), &opts, &caiman_parallel::Threads::new(2).unwrap()).unwrap();
        assert_eq!(lin.len(), rows.len());
        assert_eq!(lin, thr, "p = {p}");
        for (r, y) in lin.iter().zip(&rows).take(3) {
            assert_eq!(r, &constrained_foopsi(y, &opts).unwrap());
        }
    }
    // per-trace sn overrides reach the tasks
    let ov = caiman_cnmf::foopsi::TraceOverrides { g: Vec::new(), sn: vec![Some(0.4); rows.len()] };
    let opts = FoopsiOptions { p: 1, ..FoopsiOptions::default() };
    let (res, _) =
        caiman_cnmf::foopsi::deconvolve_traces_with(traces.view(), &opts, &ov, &caiman_parallel::Linear::new())
            .unwrap();
    assert!(res.iter().all(|r| r.sn == 0.4));
}

#[test]
fn p0_and_bad_input() {
    let y = [1.0, -2.0, 3.0, 0.5];
    let r = constrained_foopsi(&y, &FoopsiOptions { p: 0, sn: Some(1.0), ..FoopsiOptions::default() }).unwrap();
    assert_eq!(r.c, vec![1.0, 0.0, 3.0, 0.5]);
    assert_eq!(r.s, r.c);
    assert_eq!((r.bl, r.c1, r.lam), (0.0, 0.0, None));

    let opts = FoopsiOptions { p: 1, ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&[], &opts), Err(Error::Empty { .. })));
    assert!(matches!(constrained_foopsi(&[1.0, f64::NAN, 2.0], &opts), Err(Error::NonFinite { .. })));
    let long: Vec<f64> = (0..100).map(|i| (i as f64 * 0.3).sin()).collect();
    let p3 = FoopsiOptions { p: 3, ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long, &p3), Err(Error::InvalidParam(_))));
    let short = FoopsiOptions { p: 2, g: Some(vec![1.7, -0.71]), sn: Some(0.2), ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long[..5], &short), Err(Error::InvalidParam(_))));
    let wrong_g = FoopsiOptions { p: 2, g: Some(vec![0.9]), sn: Some(0.2), ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long, &wrong_g), Err(Error::InvalidParam(_))));
    let complex = FoopsiOptions { p: 2, g: Some(vec![0.5, -0.9]), sn: Some(0.2), ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long, &complex), Err(Error::InvalidParam(_))));
    let unstable = FoopsiOptions { p: 1, g: Some(vec![1.2]), sn: Some(0.2), ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long, &unstable), Err(Error::InvalidParam(_))));
    let bad_sn = FoopsiOptions { p: 1, g: Some(vec![0.9]), sn: Some(f64::NAN), ..FoopsiOptions::default() };
    assert!(matches!(constrained_foopsi(&long, &bad_sn), Err(Error::InvalidParam(_))));

    let mut ws = OasisWorkspace::new();
    let (mut c, mut s) = (vec![0.0; 3], vec![0.0; 100]);
    let e = ws.constrained_ar1(&long, 0.9, 0.2, &Ar1Params::default(), &mut c, &mut s);
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })));
    let (mut c, mut s) = (vec![0.0; 100], vec![0.0; 100]);
    let bad = Ar2Params { shift: 0, ..Ar2Params::default() };
    assert!(matches!(ws.constrained_ar2(&long, [1.7, -0.71], 0.2, &bad, &mut c, &mut s), Err(Error::InvalidParam(_))));

    let mut traces = ndarray::Array2::<f64>::zeros((3, 100));
    traces[[1, 7]] = f64::INFINITY;
    let e = deconvolve_traces(traces.view(), &opts, &caiman_parallel::Linear::new());
    assert!(matches!(e, Err(Error::NonFinite { .. })));
    let ov = caiman_cnmf::foopsi::TraceOverrides { g: Vec::new(), sn: vec![Some(0.1); 2] };
    let e = caiman_cnmf::foopsi::deconvolve_traces_with(traces.view(), &opts, &ov, &caiman_parallel::Linear::new());
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })));
}

/// L0 variants run and threshold as documented (s_min > 0: every non-zero spike ≥ s_min;
/// s_min = 0: the greedy search stops once RSS < sn²T).
#[test]
fn l0_penalties() {
    let (y, _, _) = synth_ar1(1500, 0.95, 0.3, 0.0, 11);
    let mut ws = OasisWorkspace::new();
    let (mut c, mut s) = (vec![0.0; y.len()], vec![0.0; y.len()]);
    let p = Ar1Params { penalty: Penalty::L0 { s_min: 0.4 }, ..Ar1Params::default() };
    ws.constrained_ar1(&y, 0.95, 0.3, &p, &mut c, &mut s).unwrap();
    assert!(s[1..].iter().all(|&v| v.abs() < 1e-9 || v >= 0.4 - 1e-9));
    let p = Ar1Params { penalty: Penalty::L0 { s_min: 0.0 }, ..Ar1Params::default() };
    let fit = ws.constrained_ar1(&y, 0.95, 0.3, &p, &mut c, &mut s).unwrap();
    let rss: f64 = y.iter().zip(&c).map(|(a, b)| (a - b - fit.b).powi(2)).sum();
    assert!(rss < 0.09 * y.len() as f64 * 1.0001);
    let opts =
        FoopsiOptions { p: 2, g: Some(vec![1.7, -0.71]), sn: Some(0.3), s_min: Some(0.0), ..FoopsiOptions::default() };
    let r = constrained_foopsi(&y, &opts).unwrap();
    assert!(r.s.iter().all(|v| v.is_finite() && *v >= 0.0));
}

/// Rough timings (CaImAn's Cython on a 10 000-sample AR(1) trace: ≈0.45 ms fixed λ, ≈1.3 ms
/// noise-constrained, ≈7 ms with parameter estimation). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_ar1_10k() {
    let (y, _, _) = synth_ar1(10_000, 0.95, 0.3, 10.0, 1);
    let time = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..30)
            .map(|_| {
                let t0 = std::time::Instant::now();
                f();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let yb: Vec<f64> = y.iter().map(|v| v - 10.0).collect();
    let fixed = time(&mut || {
        std::hint::black_box(oasis_ar1(&yb, 0.95, 1.0, 0.0));
    });
    let mut ws = OasisWorkspace::new();
    let (mut c, mut s) = (vec![0.0; y.len()], vec![0.0; y.len()]);
    let constrained = time(&mut || {
        let p = Ar1Params { optimize_b: true, ..Ar1Params::default() };
        std::hint::black_box(ws.constrained_ar1(&y, 0.95, 0.3, &p, &mut c, &mut s).unwrap());
    });
    let opts = FoopsiOptions { p: 1, ..FoopsiOptions::default() };
    let full = time(&mut || {
        std::hint::black_box(constrained_foopsi(&y, &opts).unwrap());
    });
    let opts2 = FoopsiOptions { p: 2, g: Some(vec![1.7, -0.71]), sn: Some(0.3), ..FoopsiOptions::default() };
    let (y, _, _) = synth_ar(10_000, [1.7, -0.71], 0.3, 10.0, 1);
    let ar2 = time(&mut || {
        std::hint::black_box(constrained_foopsi(&y, &opts2).unwrap());
    });
    let mut ws2 = OasisWorkspace::new();
    let ar2_caiman = time(&mut || {
        let p = Ar2Params { meet_constraint: false, ..Ar2Params::default() };
        std::hint::black_box(ws2.constrained_ar2(&y, [1.7, -0.71], 0.3, &p, &mut c, &mut s).unwrap());
    });
    eprintln!("constrained AR(2) known g/sn, CaImAn's single step (meet_constraint = false): {ar2_caiman:.3} ms");
    eprintln!(
        "T=10000 median ms: oasis_ar1 fixed λ {fixed:.3}, constrained AR(1) with b {constrained:.3}, \
         constrained_foopsi p=1 with estimation {full:.3}, constrained_foopsi p=2 on AR(2) data, known g/sn {ar2:.3}"
    );
}
