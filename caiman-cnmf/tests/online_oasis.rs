//! Tests of `caiman_cnmf::online_oasis` (CaImAn's `oasis.pyx::OASIS` class) against the CaImAn
//! 1.12.1 reference runs (`test_data/online_oasis/`, copied from `shared/reference/deconv/`, see
//! its README: `OASIS(...)` fed every sample of row 0 of a `trace_*` file, rows [c, s] stored) and
//! independent checks: brute-force NNLS on small random problems, KKT / least-squares checks of
//! pools longer than CaImAn's 1000-sample kernel tables, and state-handling properties.
#![allow(clippy::print_stderr)]

mod common;

use caiman_cnmf::Error;
use caiman_cnmf::online_oasis::{OnlineOasis, OnlineOasisParams};
use common::corr;
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/online_oasis");

fn read(name: &str) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(format!("{DATA}/{name}.npy")).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Squared residual `‖c − y‖²`.
fn rss(c: &[f64], y: &[f64]) -> f64 {
    c.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
}

// ----- CaImAn reference ---------------------------------------------------------------------

/// The three reference configurations of `oasis_online.json`.
fn reference_configs() -> Vec<(&'static str, &'static str, OnlineOasisParams)> {
    vec![
        ("ar1_lam0_smin0", "ar1_sn0.2_T1000", OnlineOasisParams { b: 10.0, ..OnlineOasisParams::ar1(0.95) }),
        (
            "ar1_lam0.5_smin0.3",
            "ar1_sn0.5_T1000",
            OnlineOasisParams { b: 10.0, lam: 0.5, s_min: 0.3, ..OnlineOasisParams::ar1(0.95) },
        ),
        ("ar2_lam0_smin0", "ar2_sn0.2_T1000", OnlineOasisParams { b: 10.0, ..OnlineOasisParams::ar2(1.7, -0.71) }),
    ]
}

/// CaImAn computes in float32 (pools, kernels, sums of up to a pool length of terms); the
/// reference c and s are float32. We compute in f64, so the difference is float32 rounding of
/// CaImAn: we allow 64 float32 ulps of the largest value of c (measured: ≤ 7 ulps, AR(2)).
#[test]
fn matches_caiman_reference_runs() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DATA}/oasis_online.json")).unwrap()).unwrap();
    for (cfg, trace, params) in reference_configs() {
        let (shape, tr) = read(&format!("trace_{trace}"));
        assert_eq!(shape, [3, 1000]);
        let (y, c_true) = (&tr[..1000], &tr[1000..2000]);
        let (shape, r) = read(&format!("oasis_online_{cfg}"));
        assert_eq!(shape, [2, 1000]);
        let (c_ref, s_ref) = (&r[..1000], &r[1000..]);
        let meta = &json[cfg];
        let kw = &meta["kwargs"];
        assert_eq!(kw["g"].as_f64().unwrap(), params.g);
        assert_eq!(kw["lam"].as_f64().unwrap(), params.lam);
        assert_eq!(kw["s_min"].as_f64().unwrap(), params.s_min);
        assert_eq!(kw["b"].as_f64().unwrap(), params.b);
        assert_eq!(kw.get("g2").map_or(0.0, |v| v.as_f64().unwrap()), params.g2);

        let mut o = OnlineOasis::new(params, 0).unwrap();
        for &yt in y {
            o.fit_next(yt).unwrap();
        }
        let (c, s) = (o.c(), o.s());
        assert_eq!(o.t() as u64, meta["t"].as_u64().unwrap());
        assert_eq!(c.len(), 1000);
        assert_eq!(o.pools().len() as u64, meta["n_pools"].as_u64().unwrap(), "{cfg}: number of pools");
        let scale = max_abs(c_ref);
        let tol = 64.0 * f32::EPSILON as f64 * scale;
        let (dc, ds) = (max_abs_diff(&c, c_ref), max_abs_diff(&s, s_ref));
        let rel = |a: f64| a / scale;
        let r_true = corr(&c, c_true);
        eprintln!(
            "{cfg}: max|Δc| = {dc:.3e} ({:.2e} of max c), max|Δs| = {ds:.3e} ({:.2e}), corr(c, c_true) = {r_true:.10} \
             (CaImAn {:.10}), corr(c, c_ref) - 1 = {:.2e}",
            rel(dc),
            rel(ds),
            meta["corr_c_true"].as_f64().unwrap(),
            corr(&c, c_ref) - 1.0
        );
        assert!(dc <= tol, "{cfg}: c differs by {dc}");
        assert!(ds <= tol, "{cfg}: s differs by {ds}");
        // spikes at the same samples (pool starts)
        for t in 0..1000 {
            assert_eq!(s[t] != 0.0, s_ref[t] != 0.0, "{cfg}: spike support differs at {t}");
        }
        assert!((r_true - meta["corr_c_true"].as_f64().unwrap()).abs() < 1e-6);
    }
}

// ----- brute force --------------------------------------------------------------------------

/// Lawson–Hanson NNLS: `argmin_{x >= 0} ‖A x − y‖` with `A` given by columns.
fn nnls(cols: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let n = cols.len();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let ax = |x: &[f64]| {
        let mut r = vec![0.0; y.len()];
        for (j, c) in cols.iter().enumerate() {
            if x[j] != 0.0 {
                for (ri, ci) in r.iter_mut().zip(c) {
                    *ri += x[j] * ci;
                }
            }
        }
        r
    };
    // least squares on the passive set via normal equations + Cholesky
    let ls = |set: &[usize]| -> Vec<f64> {
        let k = set.len();
        let mut m = vec![0.0; k * k];
        let mut rhs = vec![0.0; k];
        for (a, &i) in set.iter().enumerate() {
            rhs[a] = dot(&cols[i], y);
            for (b, &j) in set.iter().enumerate() {
                m[a * k + b] = dot(&cols[i], &cols[j]);
            }
        }
        for a in 0..k {
            for b in 0..a {
                let s: f64 = (0..b).map(|q| m[a * k + q] * m[b * k + q]).sum();
                m[a * k + b] = (m[a * k + b] - s) / m[b * k + b];
            }
            let s: f64 = (0..a).map(|q| m[a * k + q] * m[a * k + q]).sum();
            m[a * k + a] = (m[a * k + a] - s).sqrt();
        }
        let mut z = rhs;
        for a in 0..k {
            let s: f64 = (0..a).map(|q| m[a * k + q] * z[q]).sum();
            z[a] = (z[a] - s) / m[a * k + a];
        }
        for a in (0..k).rev() {
            let s: f64 = (a + 1..k).map(|q| m[q * k + a] * z[q]).sum();
            z[a] = (z[a] - s) / m[a * k + a];
        }
        z
    };
    let mut x = vec![0.0; n];
    let mut passive = vec![false; n];
    let scale = 1e-12 * (1.0 + dot(y, y).sqrt());
    for _ in 0..10 * n + 10 {
        let r: Vec<f64> = ax(&x).iter().zip(y).map(|(a, b)| b - a).collect();
        let w: Vec<f64> = cols.iter().map(|c| dot(c, &r)).collect();
        let cand = (0..n).filter(|&j| !passive[j]).max_by(|&a, &b| w[a].total_cmp(&w[b]));
        match cand {
            Some(j) if w[j] > scale => passive[j] = true,
            _ => break,
        }
        loop {
            let set: Vec<usize> = (0..n).filter(|&j| passive[j]).collect();
            let z = ls(&set);
            if z.iter().all(|&v| v > 0.0) {
                for (a, &j) in set.iter().enumerate() {
                    x[j] = z[a];
                }
                break;
            }
            let mut alpha = f64::INFINITY;
            for (a, &j) in set.iter().enumerate() {
                if z[a] <= 0.0 {
                    alpha = alpha.min(x[j] / (x[j] - z[a]));
                }
            }
            for (a, &j) in set.iter().enumerate() {
                x[j] += alpha * (z[a] - x[j]);
                if x[j] <= 1e-15 {
                    x[j] = 0.0;
                    passive[j] = false;
                }
            }
        }
    }
    x
}

/// Columns of the convolution matrix: column 0 is the initial condition (`d^t`), column `j >= 1`
/// the impulse response `h_{t-j}` of the AR process (g2 = 0: AR(1)).
fn kernel_columns(g1: f64, g2: f64, t_len: usize) -> Vec<Vec<f64>> {
    let d = (g1 + (g1 * g1 + 4.0 * g2).sqrt()) / 2.0;
    let mut h = vec![0.0; t_len];
    for k in 0..t_len {
        h[k] = if k == 0 { 1.0 } else { g1 * h[k - 1] + if k >= 2 { g2 * h[k - 2] } else { 0.0 } };
    }
    (0..t_len)
        .map(|j| {
            (0..t_len)
                .map(|t| {
                    if t < j {
                        0.0
                    } else if j == 0 {
                        d.powi(t as i32)
                    } else {
                        h[t - j]
                    }
                })
                .collect()
        })
        .collect()
}

fn conv(cols: &[Vec<f64>], s: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; cols[0].len()];
    for (j, col) in cols.iter().enumerate() {
        for (ci, k) in c.iter_mut().zip(col) {
            *ci += s[j] * k;
        }
    }
    c
}

/// `c` and `s` of the AR(1) test problem: spikes where `u < 0.15`, AR(1) recursion, noise, baseline.
fn ar1_trace(g: f64, b: f64, samples: &[(f64, f64, f64)]) -> Vec<f64> {
    let mut c = 0.0;
    samples
        .iter()
        .map(|&(u, size, noise)| {
            c = g * c + if u < 0.15 { size } else { 0.0 };
            b + c + noise
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// AR(1), s_min = 0: the online solution for every prefix is the NNLS / QP optimum
    /// `min ½‖K s − y'‖², s ≥ 0` with `y' = [0; n_empty] ++ (y − b − λ(1 − g))` (CaImAn's online
    /// class shifts every sample by `λ(1 − g)`), solved by Lawson–Hanson.
    #[test]
    fn ar1_equals_bruteforce_nnls(
        g in 0.3f64..0.98,
        lam in 0.0f64..0.5,
        b in -1.0f64..1.0,
        n_empty in 0usize..4,
        samples in prop::collection::vec((0.0f64..1.0, 0.2f64..3.0, -0.6f64..0.6), 1..30),
    ) {
        let y = ar1_trace(g, b, &samples);
        let params = OnlineOasisParams { lam, b, ..OnlineOasisParams::ar1(g) };
        let mut o = OnlineOasis::new(params, n_empty).unwrap();
        o.fit(&y).unwrap();
        let mut yp = vec![0.0; n_empty];
        yp.extend(y.iter().map(|v| v - b - lam * (1.0 - g)));
        let cols = kernel_columns(g, 0.0, yp.len());
        let x = nnls(&cols, &yp);
        let c_ref = conv(&cols, &x);
        let c = o.c();
        let tol = 1e-9 * (1.0 + max_abs(&yp));
        prop_assert!(max_abs_diff(&c, &c_ref) <= tol, "c {:?} vs {:?}", c, c_ref);
        // s is the unclipped jump at pool starts; it equals the NNLS spikes when no pool is negative
        if o.pools().iter().all(|p| p.v >= 0.0) {
            let s = o.s();
            prop_assert!(max_abs_diff(&s[1..], &x[1..]) <= tol);
        }
    }

    /// AR(2): CaImAn's online AR(2) OASIS is greedy (earlier pools are frozen when a later pool is
    /// re-fitted), so it is *not* the NNLS optimum on noisy data (measured: up to ~15 % larger
    /// RSS on these small problems). Checked: the solution is feasible (s ≥ 0 and c follows the
    /// AR(2) recursion with jumps s), its RSS is within 1.5× of the NNLS optimum, and noiseless
    /// data are recovered exactly.
    #[test]
    fn ar2_vs_bruteforce_nnls(
        d in 0.5f64..0.97,
        rfrac in -0.3f64..0.95,
        c0 in 0.0f64..2.0,
        samples in prop::collection::vec((0.0f64..1.0, 0.5f64..3.0, -0.3f64..0.3), 3..30),
    ) {
        let r = rfrac * d;
        let (g1, g2) = (d + r, -d * r);
        let t_len = samples.len();
        let cols = kernel_columns(g1, g2, t_len);
        let mut s_true: Vec<f64> = samples.iter().map(|&(u, size, _)| if u < 0.2 { size } else { 0.0 }).collect();
        s_true[0] = c0;
        let c_true = conv(&cols, &s_true);
        let params = OnlineOasisParams::ar2(g1, g2);

        // noiseless: exact recovery
        let mut o = OnlineOasis::new(params, 0).unwrap();
        o.fit(&c_true).unwrap();
        prop_assert!(max_abs_diff(&o.c(), &c_true) <= 1e-9 * (1.0 + max_abs(&c_true)));

        // noisy: feasible and close to the optimum
        let y: Vec<f64> = c_true.iter().zip(&samples).map(|(c, s)| c + s.2).collect();
        let mut o = OnlineOasis::new(params, 0).unwrap();
        o.fit(&y).unwrap();
        let (c, s) = (o.c(), o.s());
        let scale = 1e-9 * (1.0 + max_abs(&y));
        prop_assert!(s.iter().all(|&v| v >= -scale));
        prop_assert!(c[0] >= 0.0);
        for t in 1..t_len {
            let pred = if t == 1 { d * c[0] } else { g1 * c[t - 1] + g2 * c[t - 2] };
            prop_assert!((c[t] - pred - s[t]).abs() <= scale, "AR(2) recursion broken at {}", t);
        }
        let x = nnls(&cols, &y);
        let (opt, got) = (rss(&conv(&cols, &x), &y), rss(&c, &y));
        prop_assert!(got >= opt - scale);
        prop_assert!(got <= 1.5 * opt + scale, "online RSS {} vs optimum {}", got, opt);
    }

    /// `fit_next_tmp` returns what `fit_next` followed by `get_c` would and leaves the state
    /// unchanged; `get_s(num)` / `get_c(num)` are the tails of `s` / `c` (zero-padded before 0).
    #[test]
    fn tentative_update_and_tails(
        ar2 in any::<bool>(),
        s_min in prop_oneof![Just(0.0), 0.0f64..0.5],
        n_empty in 0usize..3,
        samples in prop::collection::vec((0.0f64..1.0, 0.2f64..3.0, -0.6f64..0.6), 1..40),
        y_new in -1.0f64..4.0,
        num in 0usize..50,
    ) {
        let base = if ar2 { OnlineOasisParams::ar2(1.7, -0.71) } else { OnlineOasisParams::ar1(0.9) };
        let y = ar1_trace(0.9, 0.0, &samples);
        let mut o = OnlineOasis::new(OnlineOasisParams { s_min, ..base }, n_empty).unwrap();
        o.fit(&y).unwrap();
        let before = o.clone();
        let json = serde_json::to_string(&o).unwrap();
        let tmp = o.fit_next_tmp(y_new, num).unwrap();
        prop_assert_eq!(&o, &before);
        prop_assert_eq!(serde_json::to_string(&o).unwrap(), json);
        let mut committed = o.clone();
        committed.fit_next(y_new).unwrap();
        prop_assert_eq!(tmp, committed.get_c(num));
        for inst in [&o, &committed] {
            let (c, s, t) = (inst.c(), inst.s(), inst.t());
            prop_assert_eq!(c.len(), t);
            let tail = |v: &[f64]| -> Vec<f64> {
                let mut out = vec![0.0; num.saturating_sub(t)];
                out.extend_from_slice(&v[t.saturating_sub(num)..]);
                out
            };
            // get_c starts a partial pool at g^k0 instead of iterating from its start: ulps apart
            prop_assert!(max_abs_diff(&inst.get_c(num), &tail(&c)) <= 1e-12 * (1.0 + max_abs(&c)));
            prop_assert_eq!(inst.get_s(num), tail(&s));
            let l = inst.get_l_of_last_pool();
            prop_assert_eq!(inst.get_c_of_last_pool().len(), l);
        }
    }

    /// `num_empty_samples = n` is the same as fitting `n` zero samples first (b = λ = s_min = 0).
    /// For AR(2) this holds only while no merge reaches back into the zeros (fed zeros form
    /// separate pools, re-fitted with the rising kernel `h`; the empty pool is CaImAn's first pool,
    /// re-fitted as a pure decay), which positive data guarantee.
    #[test]
    fn empty_samples_equal_zero_prefix(
        ar2 in any::<bool>(),
        n_empty in 1usize..20,
        samples in prop::collection::vec((0.0f64..1.0, 0.2f64..3.0, -0.6f64..0.6), 1..30),
    ) {
        let params = if ar2 { OnlineOasisParams::ar2(1.7, -0.71) } else { OnlineOasisParams::ar1(0.9) };
        let mut y = ar1_trace(0.9, 0.0, &samples);
        if ar2 {
            y.iter_mut().for_each(|v| *v = v.abs() + 0.01);
        }
        let mut a = OnlineOasis::new(params, n_empty).unwrap();
        prop_assert_eq!(a.t(), n_empty);
        prop_assert_eq!(a.c(), vec![0.0; n_empty]);
        a.fit(&y).unwrap();
        let mut b = OnlineOasis::new(params, 0).unwrap();
        b.fit(&vec![0.0; n_empty]).unwrap();
        b.fit(&y).unwrap();
        prop_assert_eq!(a.t(), b.t());
        prop_assert!(max_abs_diff(&a.c(), &b.c()) <= 1e-12 * (1.0 + max_abs(&y)));
        prop_assert!(max_abs_diff(&a.s(), &b.s()) <= 1e-12 * (1.0 + max_abs(&y)));
    }
}

// ----- pools longer than CaImAn's 1000-sample tables ([Q], fixed) ----------------------------

/// AR(1), slow decay: a trace that decays a bit faster than the kernel is one pool of 3000
/// samples. Its value must be the least-squares fit over all 3000 samples and c must keep
/// decaying after sample 1000 (CaImAn sets it to 0 there); the solution satisfies the NNLS KKT
/// conditions.
#[test]
fn ar1_long_pool_is_exact() {
    let (g, t_len): (f64, usize) = (0.999, 3000);
    let y: Vec<f64> = (0..t_len).map(|t| 10.0 * 0.998f64.powi(t as i32)).collect();
    let mut o = OnlineOasis::new(OnlineOasisParams::ar1(g), 0).unwrap();
    o.fit(&y).unwrap();
    assert_eq!(o.pools().len(), 1);
    let (num, den) = (0..t_len).fold((0.0, 0.0), |(n, d), t| (n + g.powi(t as i32) * y[t], d + g.powi(2 * t as i32)));
    let c_ls: Vec<f64> = (0..t_len).map(|t| num / den * g.powi(t as i32)).collect();
    let c = o.c();
    assert!(max_abs_diff(&c, &c_ls) <= 1e-10, "{}", max_abs_diff(&c, &c_ls));
    assert!(c[2999] > 0.1, "{}", c[2999]);
    // KKT: gradient of ½‖K s − y‖² w.r.t. s_j is G_j = Σ_{t≥j} g^{t−j} (c_t − y_t) (backward
    // recursion); G_0 = 0 (s_0 > 0) and G_j ≥ 0 elsewhere.
    let mut grad = vec![0.0; t_len];
    let mut acc = 0.0;
    for t in (0..t_len).rev() {
        acc = (c[t] - y[t]) + g * acc;
        grad[t] = acc;
    }
    assert!(grad[0].abs() < 1e-8, "{}", grad[0]);
    assert!(grad.iter().all(|&v| v > -1e-8));
    assert!(max_abs_diff(&o.get_c(5), &c[2995..]) <= 1e-14);
    assert_eq!(o.get_c_of_last_pool(), c);
}

/// AR(2), slow decay (d = 0.995): pool 0 = one sample, pool 1 = a spike followed by 2998 samples
/// decaying slightly faster than the kernel. Pool 1 must be the least-squares fit
/// `c_k = h_k v + g₂ h_{k−1} w₀` over all its samples (kernel computed here by direct recursion),
/// including beyond sample 1000, where CaImAn truncates.
#[test]
fn ar2_long_pool_is_exact() {
    let (d, r) = (0.999, 0.6);
    let (g1, g2) = (d + r, -d * r);
    let t_len: usize = 3000;
    let mut y = vec![1.0];
    y.extend((1..t_len as i32).map(|k| 30.0 * (0.9985f64.powi(k) - 0.5f64.powi(k))));
    let mut o = OnlineOasis::new(OnlineOasisParams::ar2(g1, g2), 0).unwrap();
    o.fit(&y).unwrap();
    assert_eq!(o.pools().len(), 2, "{:?}", &o.pools()[..o.pools().len().min(4)]);
    let w0 = 1.0;
    let mut h = vec![1.0, g1];
    while h.len() < t_len {
        let k = h.len();
        h.push(g1 * h[k - 1] + g2 * h[k - 2]);
    }
    let hm1 = |k: usize| if k == 0 { 0.0 } else { h[k - 1] };
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..t_len - 1 {
        num += h[k] * (y[k + 1] - g2 * hm1(k) * w0);
        den += h[k] * h[k];
    }
    let v = num / den;
    let mut c_ls = vec![1.0];
    c_ls.extend((0..t_len - 1).map(|k| h[k] * v + g2 * hm1(k) * w0));
    let c = o.c();
    let err = max_abs_diff(&c, &c_ls);
    eprintln!("AR(2) 2999-sample pool: max|c - c_LS| = {err:.2e}, c[2999] = {:.4}", c[2999]);
    assert!(err <= 1e-9 * max_abs(&c_ls), "{err}");
    assert!(c[2999] > 0.01 * max_abs(&c), "{}", c[2999]);
    // the pool's end value is the last c (CaImAn takes it at sample 999 of the pool)
    assert!((o.pools()[1].w - c[2999]).abs() <= 1e-9 * max_abs(&c_ls));
    // fit_next_tmp over the long pool agrees with committing
    let tmp = o.fit_next_tmp(0.0, 10).unwrap();
    let mut o2 = o.clone();
    o2.fit_next(0.0).unwrap();
    assert_eq!(tmp, o2.get_c(10));
}

// ----- state handling -----------------------------------------------------------------------

#[test]
fn remove_last_pool_restores_state() {
    for params in [OnlineOasisParams::ar1(0.95), OnlineOasisParams::ar2(1.7, -0.71)] {
        let (_, tr) = read("trace_ar1_sn0.2_T1000");
        let y: Vec<f64> = tr[..300].iter().map(|v| v - 10.0).collect();
        let mut o = OnlineOasis::new(params, 0).unwrap();
        o.fit(&y).unwrap();
        let before = o.clone();
        let n_pools = o.pools().len();
        // a large spike opens a new pool of length 1, which removal takes away again
        o.fit_next(1000.0).unwrap();
        assert_eq!(o.pools().len(), n_pools + 1);
        assert_eq!(o.get_l_of_last_pool(), 1);
        o.remove_last_pool().unwrap();
        assert_eq!(o, before);
        // removing a longer pool rewinds t by its length
        let l = o.get_l_of_last_pool();
        assert_eq!(o.get_l_of_pool(0), Some(l));
        assert_eq!(o.get_l_of_pool(n_pools), None);
        o.remove_last_pool().unwrap();
        assert_eq!(o.t(), 300 - l);
        assert_eq!(o.c(), before.c()[..300 - l].to_vec());
        // and fitting again continues from there
        o.fit(&y[300 - l..]).unwrap();
        assert_eq!(o.t(), 300);
        while o.remove_last_pool().is_ok() {}
        assert_eq!(o.t(), 0);
        assert!(o.c().is_empty() && o.get_c_of_last_pool().is_empty());
        assert_eq!(o.get_l_of_last_pool(), 0);
        assert!(matches!(o.remove_last_pool(), Err(Error::Empty { .. })));
    }
}

#[test]
fn set_poolvalue_and_unclipped_last_pool() {
    let mut o = OnlineOasis::new(OnlineOasisParams::ar1(0.9), 0).unwrap();
    o.fit(&[-1.0, -0.95, -0.9]).unwrap();
    // one negative pool: c is clipped at 0, get_c_of_last_pool is not (as in CaImAn)
    assert_eq!(o.pools().len(), 1);
    assert_eq!(o.c(), vec![0.0; 3]);
    assert!(o.get_c_of_last_pool().iter().all(|&v| v < 0.0));
    let w = o.pools()[0].w;
    o.set_poolvalue(2.0 * w, 0).unwrap();
    let c = o.get_c_of_last_pool();
    for (k, ck) in c.iter().enumerate() {
        assert!((ck - 2.0 * 0.9f64.powi(k as i32)).abs() < 1e-12);
    }
    assert!(matches!(o.set_poolvalue(1.0, 1), Err(Error::InvalidParam(_))));
    assert!(matches!(o.set_poolvalue(f64::NAN, 0), Err(Error::InvalidParam(_))));
}

#[test]
fn serde_roundtrip_and_validation() {
    for (_, trace, params) in reference_configs() {
        let (_, tr) = read(&format!("trace_{trace}"));
        let mut o = OnlineOasis::new(params, 7).unwrap();
        o.fit(&tr[..500]).unwrap();
        let json = serde_json::to_string(&o).unwrap();
        let mut back: OnlineOasis = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        back.fit(&tr[500..1000]).unwrap();
        o.fit(&tr[500..1000]).unwrap();
        assert_eq!(back, o);
        // a corrupted checkpoint is rejected, not accepted into an inconsistent state
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["t"] = serde_json::json!(10);
        assert!(serde_json::from_value::<OnlineOasis>(v).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["params"]["g"] = serde_json::json!(1.5);
        assert!(serde_json::from_value::<OnlineOasis>(v).is_err());
    }
}

#[test]
fn bad_parameters_and_samples_are_typed_errors() {
    let bad = [
        OnlineOasisParams::ar1(1.0),
        OnlineOasisParams::ar1(0.0),
        OnlineOasisParams::ar1(-0.5),
        OnlineOasisParams::ar1(f64::NAN),
        OnlineOasisParams::ar2(1.0, -0.5),  // complex roots
        OnlineOasisParams::ar2(2.0, -0.99), // root 1.1
        OnlineOasisParams::ar2(-0.5, 0.1),  // g1 <= 0
        OnlineOasisParams::ar2(1.7, f64::INFINITY),
        OnlineOasisParams { s_min: -0.1, ..OnlineOasisParams::ar1(0.9) },
        OnlineOasisParams { lam: f64::NAN, ..OnlineOasisParams::ar1(0.9) },
        OnlineOasisParams { b: f64::INFINITY, ..OnlineOasisParams::ar1(0.9) },
    ];
    for p in bad {
        assert!(matches!(OnlineOasis::new(p, 0), Err(Error::InvalidParam(_))), "{p:?} accepted");
    }
    // a double root (d == r) and a negative second root are valid AR(2) models
    let double = OnlineOasis::new(OnlineOasisParams::ar2(1.8, -0.81), 3).unwrap();
    assert_eq!(double.t(), 3);
    OnlineOasis::new(OnlineOasisParams::ar2(0.7, 0.1), 0).unwrap();

    for params in [OnlineOasisParams::ar1(0.9), OnlineOasisParams::ar2(1.7, -0.71)] {
        let mut o = OnlineOasis::new(params, 0).unwrap();
        o.fit(&[1.0, 0.5]).unwrap();
        let before = o.clone();
        assert!(matches!(o.fit_next(f64::NAN), Err(Error::NonFinite { .. })));
        assert!(matches!(o.fit_next(f64::INFINITY), Err(Error::NonFinite { .. })));
        assert!(matches!(o.fit(&[1.0, f64::NAN]), Err(Error::NonFinite { .. })));
        assert!(matches!(o.fit_next_tmp(f64::NAN, 3), Err(Error::NonFinite { .. })));
        assert_eq!(o, before);
    }
}

/// AR(2) with a double root (`g1² + 4 g2 = 0`, CaImAn's `d == r` branch): noiseless data are
/// recovered exactly.
#[test]
fn ar2_double_root() {
    let (g1, g2) = (1.8, -0.81);
    let mut s = vec![0.0; 60];
    s[0] = 1.0;
    s[10] = 2.0;
    s[35] = 1.5;
    let cols = kernel_columns(g1, g2, 60);
    let c_true = conv(&cols, &s);
    let mut o = OnlineOasis::new(OnlineOasisParams::ar2(g1, g2), 0).unwrap();
    o.fit(&c_true).unwrap();
    assert!(max_abs_diff(&o.c(), &c_true) < 1e-10);
    let s_got = o.s();
    assert!((s_got[10] - 2.0).abs() < 1e-10 && (s_got[35] - 1.5).abs() < 1e-10);
}

// ----- many traces through the executor -----------------------------------------------------

#[test]
fn fit_traces_linear_and_threads_agree_with_direct_fits() {
    use caiman_cnmf::online_oasis::{TraceFit, fit_traces};
    let mut jobs = Vec::new();
    for (k, (_, trace, params)) in reference_configs().into_iter().enumerate() {
        let (_, tr) = read(&format!("trace_{trace}"));
        for n in [0, 5] {
            jobs.push(TraceFit { params, num_empty_samples: n + k, y: tr[..400 + 100 * k].to_vec() });
        }
    }
    let direct: Vec<OnlineOasis> = jobs
        .iter()
        .map(|j| {
            let mut o = OnlineOasis::new(j.params, j.num_empty_samples).unwrap();
            o.fit(&j.y).unwrap();
            o
        })
        .collect();
    let linear = fit_traces(&caiman_parallel::Linear::new(), jobs.clone()).unwrap();
    let threads = fit_traces(&caiman_parallel::Threads::new(2).unwrap(), jobs.clone()).unwrap();
    assert_eq!(linear, direct);
    assert_eq!(threads, direct);
    assert!(fit_traces(&caiman_parallel::Linear::new(), Vec::new()).unwrap().is_empty());

    let mut bad = jobs.clone();
    bad[3].y[7] = f64::NAN;
    assert!(matches!(fit_traces(&caiman_parallel::Linear::new(), bad), Err(Error::NonFinite { .. })));
    let mut bad = jobs;
    bad[1].params.g = 1.2;
    assert!(matches!(fit_traces(&caiman_parallel::Linear::new(), bad), Err(Error::InvalidParam(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Fed sample by sample, the incremental AR(1) OASIS ends equal to the batch
    /// `oasis::oasis_ar1` on the same trace. The batch problem penalises the last sample by `λ`
    /// (its spike has no successor to decay into), the online one by `λ(1 − g)` as every other
    /// sample, because it cannot know which sample is last; feeding `y_T − λg` as the last sample
    /// makes the two problems identical.
    #[test]
    fn incremental_ar1_ends_equal_to_batch_oasis(
        // At least two samples: with one, the batch function treats the only sample as a first
        // sample (`λ(1 − g)`), not as a last one.
        y in proptest::collection::vec(-1.0f64..4.0, 2..60),
        g in 0.5f64..0.99,
        lam in prop_oneof![Just(0.0), 0.0f64..0.8],
    ) {
        let (c_batch, s_batch) = caiman_cnmf::oasis::oasis_ar1(&y, g, lam, 0.0);
        let mut online = OnlineOasis::new(OnlineOasisParams { lam, ..OnlineOasisParams::ar1(g) }, 0).unwrap();
        let last = y.len() - 1;
        for (t, &v) in y.iter().enumerate() {
            online.fit_next(if t == last { v - lam * g } else { v }).unwrap();
        }
        let c = online.c();
        prop_assert!(max_abs_diff(&c, &c_batch) <= 1e-9 * (1.0 + max_abs(&c_batch)), "c: {c:?} vs {c_batch:?}");
        // Spikes of the online solution, defined as the batch function defines them.
        let s: Vec<f64> = (0..c.len()).map(|t| if t == 0 { 0.0 } else { c[t] - g * c[t - 1] }).collect();
        prop_assert!(max_abs_diff(&s, &s_batch) <= 1e-9 * (1.0 + max_abs(&s_batch)));
    }
}
