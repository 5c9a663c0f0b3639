//! The CNMF spatial update (`caiman_cnmf::spatial`): the per-pixel solvers against brute-force
//! enumeration, `threshold_components` and `search_support` against hand-computed examples,
//! the full update on CaImAn's toy data (footprint recovery, per-pixel optimality certificates,
//! objective never above the input footprints'), executor independence, bad input, and (when
//! `shared/reference` is present) agreement with CaImAn's own final footprints.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use caiman_cnmf::Error;
use caiman_cnmf::params::{MethodExp, MethodLs, NdArray, SpatialParams, ThrMethod};
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::sparse::CscMatrix;
use caiman_cnmf::spatial::{
    SpatialBlock, lasso_positive, nnls_gram, nnls_l0, search_support, spatial_regression, threshold_components,
    update_background, update_spatial_components,
};
use caiman_io::Dims;
use caiman_parallel::{Executor, Linear, Par, Threads};
use ndarray::{Array2, ArrayView2, s};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/toy").join(name)
}

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/cnmf").join(name)
}

/// A 2-d `.npy` array as f64 (rows, cols).
fn npy2(path: &Path) -> Array2<f64> {
    let a = caiman_io::npy::read_npy(path).unwrap();
    let (r, c) = (a.shape[0], a.shape.get(1).copied().unwrap_or(1));
    Array2::from_shape_vec((r, c), a.to_f64().unwrap()).unwrap()
}

fn npy1(path: &Path) -> Vec<f64> {
    caiman_io::npy::read_npy(path).unwrap().to_f64().unwrap()
}

/// A small deterministic RNG (xorshift64*), with Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `½ wᵀGw − qᵀw`.
fn quad_obj(g: &Array2<f64>, q: &[f64], w: &[f64]) -> f64 {
    let n = q.len();
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            s += 0.5 * w[i] * g[[i, j]] * w[j];
        }
        s -= q[i] * w[i];
    }
    s
}

/// Solves a small dense system by Gaussian elimination with partial pivoting; `None` if
/// (numerically) singular.
fn solve_dense(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    let scale = a.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    for col in 0..n {
        let piv = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() < 1e-10 * scale {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col].clone();
        for r in col + 1..n {
            let f = a[r][col] / pivot_row[col];
            for (x, p) in a[r][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// The exact minimum of `½ wᵀGw − qᵀw` over `w ≥ 0` by enumerating every support: the optimum
/// is a stationary point of its own face.
fn brute_force_nnqp(g: &Array2<f64>, q: &[f64]) -> f64 {
    let n = q.len();
    let mut best = 0.0; // w = 0
    for mask in 1u32..(1 << n) {
        let idx: Vec<usize> = (0..n).filter(|&k| mask & (1 << k) != 0).collect();
        let a: Vec<Vec<f64>> = idx.iter().map(|&r| idx.iter().map(|&c| g[[r, c]]).collect()).collect();
        let b: Vec<f64> = idx.iter().map(|&k| q[k]).collect();
        if let Some(z) = solve_dense(a, b)
            && z.iter().all(|&v| v >= 0.0)
        {
            let mut w = vec![0.0; n];
            for (&k, &v) in idx.iter().zip(&z) {
                w[k] = v;
            }
            best = f64::min(best, quad_obj(g, q, &w));
        }
    }
    best
}

/// A random T×m design (optionally with a duplicated column), its Gram matrix `XᵀX/T` and `Xᵀy/T`.
fn random_problem(seed: u64, m: usize, t: usize, dup: bool) -> (Array2<f64>, Vec<f64>) {
    let mut rng = Rng(seed | 1);
    let mut x = Array2::from_shape_fn((t, m), |_| rng.normal());
    if dup && m >= 2 {
        let c0 = x.column(0).to_owned();
        x.column_mut(m - 1).assign(&c0);
    }
    let y: Vec<f64> =
        (0..t).map(|i| (0..m).map(|k| x[[i, k]] * (k as f64 - 1.0)).sum::<f64>() + rng.normal()).collect();
    let g = x.t().dot(&x) / t as f64;
    let r: Vec<f64> = (0..m).map(|k| (0..t).map(|i| x[[i, k]] * y[i]).sum::<f64>() / t as f64).collect();
    (g, r)
}

/// Pearson correlation of two dense columns.
fn corr_cols(a: ArrayView2<'_, f64>, ka: usize, b: ArrayView2<'_, f64>, kb: usize) -> f64 {
    common::corr(&a.column(ka).to_vec(), &b.column(kb).to_vec())
}

fn dense64(a: &CscMatrix) -> Array2<f64> {
    a.to_dense().mapv(f64::from)
}

/// An image (rows i, columns j) as a one-column CSC matrix in Fortran pixel order.
fn image_col(d1: usize, d2: usize, f: impl Fn(usize, usize) -> f32) -> CscMatrix {
    let mut dense = Array2::<f32>::zeros((d1 * d2, 1));
    for j in 0..d2 {
        for i in 0..d1 {
            dense[[i + d1 * j, 0]] = f(i, j);
        }
    }
    CscMatrix::from_dense(dense.view())
}

/// The non-zero pixels of column `k` as `(i, j, value)`.
fn nonzeros(a: &CscMatrix, k: usize, d1: usize) -> Vec<(usize, usize, f32)> {
    let (r, v) = a.col(k);
    r.iter().zip(v).map(|(&p, &x)| (p % d1, p / d1, x)).collect()
}

// ---------------------------------------------------------------------------------------------
// Per-pixel solvers
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The positive lasso reaches the exact optimum found by enumerating all supports, and its
    /// solution satisfies the KKT conditions.
    #[test]
    fn lasso_positive_matches_brute_force(seed in any::<u64>(), m in 1usize..=4, t in 6usize..40,
                                          lam_frac in 0.0f64..1.2, dup in any::<bool>()) {
        let (g, r) = random_problem(seed, m, t, dup);
        let lambda = lam_frac * r.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let mut w = vec![0.0; m];
        lasso_positive(g.view(), &r, lambda, &mut w).unwrap();
        prop_assert!(w.iter().all(|&v| v >= 0.0));
        let q: Vec<f64> = r.iter().map(|v| v - lambda).collect();
        let ours = quad_obj(&g, &q, &w);
        let brute = brute_force_nnqp(&g, &q);
        prop_assert!(ours <= brute + 1e-9 * (1.0 + brute.abs()), "ours {ours} brute {brute} w {w:?}");
        // KKT: gradient q − Gw is 0 on the support and ≤ 0 off it.
        for k in 0..m {
            let grad = q[k] - (0..m).map(|l| g[[k, l]] * w[l]).sum::<f64>();
            if w[k] > 0.0 {
                prop_assert!(grad.abs() <= 1e-9, "grad {grad} on support");
            } else {
                prop_assert!(grad <= 1e-9, "grad {grad} off support");
            }
        }
    }

    /// NNLS in Gram form reaches the brute-force optimum.
    #[test]
    fn nnls_matches_brute_force(seed in any::<u64>(), m in 1usize..=4, t in 6usize..40, dup in any::<bool>()) {
        let (g, q) = random_problem(seed, m, t, dup);
        let mut w = vec![0.0; m];
        nnls_gram(g.view(), &q, &mut w).unwrap();
        prop_assert!(w.iter().all(|&v| v >= 0.0));
        let brute = brute_force_nnqp(&g, &q);
        prop_assert!(quad_obj(&g, &q, &w) <= brute + 1e-9 * (1.0 + brute.abs()));
    }
}

/// Larger problems (up to 9 features, some nearly collinear) still meet the KKT conditions.
#[test]
fn lasso_positive_kkt_on_larger_problems() {
    for seed in 1..200u64 {
        let m = 5 + (seed as usize % 5);
        let (mut g, r) = random_problem(seed * 7919, m, 50, seed % 3 == 0);
        if seed % 4 == 0 {
            // near-collinear pair
            for k in 0..m {
                g[[k, 1]] = 0.999_999 * g[[k, 0]] + 1e-6 * g[[k, 1]];
                g[[1, k]] = g[[k, 1]];
            }
            g[[1, 1]] = g[[0, 0]];
        }
        let lambda = 0.05;
        let mut w = vec![0.0; m];
        lasso_positive(g.view(), &r, lambda, &mut w).unwrap();
        let q: Vec<f64> = r.iter().map(|v| v - lambda).collect();
        if seed % 4 != 0 {
            for k in 0..m {
                let grad = q[k] - (0..m).map(|l| g[[k, l]] * w[l]).sum::<f64>();
                assert!(if w[k] > 0.0 { grad.abs() <= 1e-9 } else { grad <= 1e-9 }, "seed {seed} k {k} grad {grad}");
            }
        }
        // The objective never beats zero-start and never exceeds the zero vector.
        assert!(quad_obj(&g, &q, &w) <= 1e-12);
    }
}

#[test]
fn solvers_reject_bad_shapes_and_values() {
    let g = Array2::<f64>::eye(2);
    let mut w = vec![0.0; 2];
    assert!(matches!(lasso_positive(g.view(), &[1.0], 0.1, &mut w), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(lasso_positive(g.view(), &[1.0, f64::NAN], 0.1, &mut w), Err(Error::NonFinite { .. })));
    assert!(matches!(lasso_positive(g.view(), &[1.0, 1.0], -1.0, &mut w), Err(Error::InvalidParam(_))));
    assert!(matches!(nnls_l0(g.view(), &[1.0, 1.0], 2.0, 1.0, &[false], &mut w), Err(Error::ShapeMismatch { .. })));
}

/// `nnls_L0`: y = 3·x0 + 0.01·x1 + 5 (background = ones). With a loose noise bound the tiny
/// coefficient of x1 is pruned and the rest refitted by least squares; with a tight bound
/// (below the NNLS residual) the NNLS solution is returned.
#[test]
fn nnls_l0_prunes_under_the_noise_bound() {
    let t = 200;
    let mut rng = Rng(42);
    let x0: Vec<f64> = (0..t).map(|_| rng.uniform()).collect();
    let x1: Vec<f64> = (0..t).map(|_| rng.uniform()).collect();
    let y: Vec<f64> = (0..t).map(|i| 3.0 * x0[i] + 0.01 * x1[i] + 5.0 + 0.001 * rng.normal()).collect();
    let cols = [x0.clone(), x1.clone(), vec![1.0; t]];
    let dotv = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let g = Array2::from_shape_fn((3, 3), |(i, j)| dotv(&cols[i], &cols[j]));
    let q: Vec<f64> = cols.iter().map(|c| dotv(c, &y)).collect();
    let yty = dotv(&y, &y);
    let rss = |w: &[f64]| (0..t).map(|i| (y[i] - (0..3).map(|k| w[k] * cols[k][i]).sum::<f64>()).powi(2)).sum::<f64>();

    let mut w_nnls = vec![0.0; 3];
    nnls_gram(g.view(), &q, &mut w_nnls).unwrap();
    assert!(w_nnls.iter().all(|&v| v > 0.0), "{w_nnls:?}");

    // Tight bound: the NNLS solution.
    let mut w = vec![0.0; 3];
    nnls_l0(g.view(), &q, yty, 0.5 * rss(&w_nnls), &[false, false, true], &mut w).unwrap();
    for k in 0..3 {
        assert!((w[k] - w_nnls[k]).abs() < 1e-9);
    }

    // Loose bound (residual of dropping x1, plus margin, but far below dropping x0).
    let noise = 10.0 * rss(&w_nnls) + 0.01 * 0.01 * t as f64;
    nnls_l0(g.view(), &q, yty, noise, &[false, false, true], &mut w).unwrap();
    assert_eq!(w[1], 0.0, "{w:?}");
    // Refit on {x0, background}: 2×2 normal equations, solved independently.
    let ls = solve_dense(vec![vec![g[[0, 0]], g[[0, 2]]], vec![g[[2, 0]], g[[2, 2]]]], vec![q[0], q[2]]).unwrap();
    assert!((w[0] - ls[0]).abs() < 1e-9 && (w[2] - ls[1]).abs() < 1e-9, "{w:?} vs {ls:?}");
    assert!(rss(&w) < noise);
    // The background is never dropped, even when the bound would allow it.
    nnls_l0(g.view(), &q, yty, 1e12, &[false, false, true], &mut w).unwrap();
    assert!(w[2] > 0.0);
}

// ---------------------------------------------------------------------------------------------
// threshold_components
// ---------------------------------------------------------------------------------------------

fn params() -> SpatialParams {
    SpatialParams::default()
}

/// A 3×3 block of ones: the 3×3 median keeps the 5-pixel cross (corners see only 4 ones);
/// 'nrg' keeps all 5 equal values; the closing with 3×3 ones gives the cross back.
#[test]
fn threshold_block_becomes_cross() {
    let (d1, d2) = (7, 8);
    let a = image_col(d1, d2, |i, j| if (2..5).contains(&i) && (3..6).contains(&j) { 1.0 } else { 0.0 });
    let out = threshold_components(&a, Dims::planar(d1, d2), &params(), Par::Seq).unwrap();
    let mut got = nonzeros(&out, 0, d1);
    got.sort_by_key(|&(i, j, _)| (i, j));
    assert_eq!(got, vec![(2, 4, 1.0), (3, 3, 1.0), (3, 4, 1.0), (3, 5, 1.0), (4, 4, 1.0)]);
}

/// A block in the image corner: the median (mode reflect) keeps the 3×3 block minus its inner
/// corner; the closing's erosion uses border_value 0 (scipy), which clears every mask pixel in
/// the first row and column — only 3 pixels survive (hand-computed).
#[test]
fn threshold_closing_erodes_at_the_image_border() {
    let (d1, d2) = (6, 6);
    let a = image_col(d1, d2, |i, j| if i < 3 && j < 3 { 1.0 } else { 0.0 });
    let out = threshold_components(&a, Dims::planar(d1, d2), &params(), Par::Seq).unwrap();
    let mut got = nonzeros(&out, 0, d1);
    got.sort_by_key(|&(i, j, _)| (i, j));
    assert_eq!(got, vec![(1, 1, 1.0), (1, 2, 1.0), (2, 1, 1.0)]);
}

/// [Q] reproduced: when the largest value alone carries ≥ nrgthr of the energy the component
/// becomes empty (here nrgthr = 0.1 and five equal values: the first already has 20%).
#[test]
fn threshold_nrg_quirk_empties_the_component() {
    let (d1, d2) = (7, 8);
    let a = image_col(d1, d2, |i, j| if (2..5).contains(&i) && (3..6).contains(&j) { 1.0 } else { 0.0 });
    let p = SpatialParams { nrgthr: 0.1, ..params() };
    let out = threshold_components(&a, Dims::planar(d1, d2), &p, Par::Seq).unwrap();
    assert_eq!(out.nnz(), 0);
    assert_eq!(out.ncols(), 1);
}

/// Two blobs (values 1 and 2): the largest-energy connected component is kept; without
/// `extract_cc` both are; 'max' with maxthr 0.6 keeps only the brighter one.
#[test]
fn threshold_keeps_the_largest_energy_component() {
    let (d1, d2) = (12, 9);
    let f = |i: usize, j: usize| {
        if (1..4).contains(&i) && (1..4).contains(&j) {
            1.0
        } else if (7..10).contains(&i) && (4..7).contains(&j) {
            2.0
        } else {
            0.0
        }
    };
    let a = image_col(d1, d2, f);
    let dims = Dims::planar(d1, d2);
    let out = threshold_components(&a, dims, &params(), Par::Seq).unwrap();
    let mut got = nonzeros(&out, 0, d1);
    got.sort_by_key(|&(i, j, _)| (i, j));
    assert_eq!(got, vec![(7, 5, 2.0), (8, 4, 2.0), (8, 5, 2.0), (8, 6, 2.0), (9, 5, 2.0)]);

    let no_cc = SpatialParams { extract_cc: false, ..params() };
    let out = threshold_components(&a, dims, &no_cc, Par::Seq).unwrap();
    assert_eq!(out.nnz(), 10);
    assert_eq!(out.data().iter().filter(|&&v| v == 1.0).count(), 5);

    let max = SpatialParams { thr_method: ThrMethod::Max, maxthr: 0.6, extract_cc: false, ..params() };
    let out = threshold_components(&a, dims, &max, Par::Seq).unwrap();
    assert_eq!(out.nnz(), 5);
    assert!(out.data().iter().all(|&v| v == 2.0));
}

/// Brute-force 3×3 median filter (scipy `median_filter`, mode reflect) of an image.
fn brute_median(img: &Array2<f64>) -> Array2<f64> {
    let (n1, n2) = img.dim();
    let refl = |i: isize, n: usize| -> usize {
        if i < 0 {
            (-i - 1) as usize
        } else if i as usize >= n {
            2 * n - 1 - i as usize
        } else {
            i as usize
        }
    };
    Array2::from_shape_fn((n1, n2), |(i, j)| {
        let mut v = Vec::with_capacity(9);
        for di in -1..=1isize {
            for dj in -1..=1isize {
                v.push(img[[refl(i as isize + di, n1), refl(j as isize + dj, n2)]]);
            }
        }
        v.sort_by(f64::total_cmp);
        v[4]
    })
}

/// The catalogue's check: a Gaussian blob with 225 non-zeros (15×15 window, σ = 2) becomes 121
/// non-zeros, all equal to the 3×3-median-filtered values; the kept set is exactly the
/// brute-force 'nrg' set (closing and the connected component change nothing for a blob).
#[test]
fn threshold_gaussian_blob_225_to_121() {
    let (d1, d2) = (30, 30);
    let sigma = 2.0f64;
    let blob = |i: usize, j: usize| {
        let (di, dj) = (i as f64 - 15.0, j as f64 - 15.0);
        if di.abs() <= 7.0 && dj.abs() <= 7.0 {
            (-(di * di + dj * dj) / (2.0 * sigma * sigma)).exp() as f32
        } else {
            0.0
        }
    };
    let a = image_col(d1, d2, blob);
    assert_eq!(a.nnz(), 225);
    let out = threshold_components(&a, Dims::planar(d1, d2), &params(), Par::Seq).unwrap();

    let img = Array2::from_shape_fn((d1, d2), |(i, j)| f64::from(blob(i, j)));
    let med = brute_median(&img);
    let mut sorted: Vec<f64> = med.iter().copied().collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().map(|v| v * v).sum();
    let mut cum = 0.0;
    let mut thr = f64::NAN;
    for &v in &sorted {
        cum += v * v;
        if cum < 0.9999 * total {
            thr = v;
        }
    }
    let expected: Vec<(usize, usize, f32)> = (0..d2)
        .flat_map(|j| (0..d1).map(move |i| (i, j)))
        .filter(|&(i, j)| med[[i, j]] >= thr && med[[i, j]] > 0.0)
        .map(|(i, j)| (i, j, med[[i, j]] as f32))
        .collect();
    let got = nonzeros(&out, 0, d1);
    eprintln!("Gaussian blob: {} → {} non-zeros", a.nnz(), got.len());
    assert_eq!(got, expected);
    assert_eq!(got.len(), 121);
}

#[test]
fn threshold_rejects_bad_input() {
    let a = image_col(4, 4, |i, j| (i + j) as f32);
    let bad_med = SpatialParams { medw: Some(vec![3]), ..params() };
    assert!(matches!(threshold_components(&a, Dims::planar(4, 4), &bad_med, Par::Seq), Err(Error::InvalidParam(_))));
    assert!(matches!(
        threshold_components(&a, Dims::planar(5, 4), &params(), Par::Seq),
        Err(Error::ShapeMismatch { .. })
    ));
    let bad_nrg = SpatialParams { nrgthr: 1.5, ..params() };
    assert!(matches!(threshold_components(&a, Dims::planar(4, 4), &bad_nrg, Par::Seq), Err(Error::InvalidParam(_))));
}

/// A 3-d volume: the 3×3×3 median of a 3×3×3 cube of ones keeps the pixels whose window holds
/// ≥ 14 ones: the centre (27), the 6 face centres (18) and the 12 edge centres (12 < 14: no):
/// 7 voxels; closing with 3×3×3 ones keeps them.
#[test]
fn threshold_volume_cube() {
    let dims = Dims::volume(7, 7, 7);
    let mut dense = Array2::<f32>::zeros((343, 1));
    for k in 2..5 {
        for j in 2..5 {
            for i in 2..5 {
                dense[[i + 7 * j + 49 * k, 0]] = 1.0;
            }
        }
    }
    let a = CscMatrix::from_dense(dense.view());
    let out = threshold_components(&a, dims, &params(), Par::Seq).unwrap();
    let (rows, _) = out.col(0);
    let mut got: Vec<(usize, usize, usize)> = rows.iter().map(|&p| (p % 7, (p / 7) % 7, p / 49)).collect();
    got.sort();
    let mut expected = vec![(3, 3, 3), (2, 3, 3), (4, 3, 3), (3, 2, 3), (3, 4, 3), (3, 3, 2), (3, 3, 4)];
    expected.sort();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------------
// search_support
// ---------------------------------------------------------------------------------------------

#[test]
fn search_support_dilates_with_the_diamond() {
    let (d1, d2) = (20, 20);
    let dims = Dims::planar(d1, d2);
    let a = image_col(d1, d2, |i, j| if (i, j) == (10, 10) || (i, j) == (0, 0) { 1.0 } else { 0.0 });
    let sup = search_support(&a, dims, &params()).unwrap();
    let pix = sup.component_pixels(0);
    let mut expected: Vec<usize> = Vec::new();
    for j in 0..d2 {
        for i in 0..d1 {
            let near = |ci: usize, cj: usize| i.abs_diff(ci) + j.abs_diff(cj) <= 2;
            if near(10, 10) || near(0, 0) {
                expected.push(i + d1 * j);
            }
        }
    }
    assert_eq!(pix.len(), 13 + 6);
    assert_eq!(pix, expected);
    // Pixel lists: component 0 where supported, nothing elsewhere.
    assert_eq!(sup.pixel(10 + d1 * 12), &[0]);
    assert!(sup.pixel(10 + d1 * 13).is_empty());

    // A volume: the default element becomes the 3-d radius-2 diamond (25 voxels).
    let vol = Dims::volume(9, 9, 9);
    let mut dense = Array2::<f32>::zeros((729, 1));
    dense[[4 + 9 * 4 + 81 * 4, 0]] = 1.0;
    let sup = search_support(&CscMatrix::from_dense(dense.view()), vol, &params()).unwrap();
    let pix = sup.component_pixels(0);
    assert_eq!(pix.len(), 25);
    assert!(pix.iter().all(|&p| (p % 9).abs_diff(4) + ((p / 9) % 9).abs_diff(4) + (p / 81).abs_diff(4) <= 2));
}

/// Ellipse search on separable Gaussian blobs: an isotropic blob (variance 4 < 3², clipped to 9)
/// gives the disc of radius dist·3 = 9 around its centre; an elongated one (variance along j
/// far above 8²) gives the axis-aligned ellipse i²/9 + j²/64 ≤ 9.
#[test]
fn search_support_ellipse() {
    let (d1, d2) = (40, 91);
    let dims = Dims::planar(d1, d2);
    let p = SpatialParams { method_exp: MethodExp::Ellipse, ..params() };
    let round = image_col(d1, d2, |i, j| {
        let (di, dj) = (i as f64 - 20.0, j as f64 - 30.0);
        if di.abs() <= 8.0 && dj.abs() <= 8.0 { (-(di * di + dj * dj) / 8.0).exp() as f32 } else { 0.0 }
    });
    let long = image_col(d1, d2, |i, j| {
        let (di, dj) = (i as f64 - 20.0, j as f64 - 45.0);
        if di.abs() <= 3.0 { ((-(di * di) / 2.0).exp() * (-(dj * dj) / 1800.0).exp()) as f32 } else { 0.0 }
    });
    for (a, ci, cj, vi, vj) in [(round, 20.0, 30.0, 9.0, 9.0), (long, 20.0, 45.0, 9.0, 64.0)] {
        let sup = search_support(&a, dims, &p).unwrap();
        let pix = sup.component_pixels(0);
        let mut checked = 0;
        for j in 0..d2 {
            for i in 0..d1 {
                let (di, dj) = (i as f64 - ci, j as f64 - cj);
                let m = di * di / vi + dj * dj / vj;
                if (m - 9.0).abs() < 1e-6 {
                    continue; // on the boundary: rounding decides
                }
                assert_eq!(pix.binary_search(&(i + d1 * j)).is_ok(), m < 9.0, "pixel ({i}, {j}) m = {m}");
                checked += 1;
            }
        }
        assert!(checked > 3000);
    }
    // An empty component cannot be searched with the ellipse method (CaImAn raises too).
    let empty = CscMatrix::zeros(d1 * d2, 1);
    assert!(matches!(search_support(&empty, dims, &p), Err(Error::InvalidParam(_))));
}

// ---------------------------------------------------------------------------------------------
// The full update on the toy data
// ---------------------------------------------------------------------------------------------

struct Toy {
    dims: Dims,
    yr: Array2<f32>,
    true_a: Array2<f64>,
    true_c: Array2<f64>,
    sn: Vec<f64>,
}

/// CaImAn's toy data shape (test_toydata.gen_data, dims (20, 30), T = 300): the true
/// footprints and traces copied from the reference, `Yr = 10 + 0.5·noise + A C` with noise from
/// our own RNG (the reference `toy_Yr.npy` is used by `toy_reference_movie` when present).
fn toy_synthetic() -> Toy {
    let true_a = npy2(&test_data("toy_trueA.npy"));
    let true_c = npy2(&test_data("toy_trueC.npy"));
    let (d, t) = (true_a.nrows(), true_c.ncols());
    let ac = true_a.dot(&true_c);
    let mut rng = Rng(5);
    let yr = Array2::from_shape_fn((d, t), |(p, s)| (10.0 + 0.5 * rng.normal() + ac[[p, s]]) as f32);
    Toy { dims: Dims::planar(20, 30), yr, true_a, true_c, sn: vec![0.5; d] }
}

/// The seed footprints: the true ones blurred with a 3×3 box (support grown by one pixel).
fn blurred(a: &Array2<f64>, dims: Dims) -> CscMatrix {
    let (d1, d2) = (dims.d1, dims.d2);
    let mut out = Array2::<f32>::zeros(a.dim());
    for k in 0..a.ncols() {
        for j in 0..d2 {
            for i in 0..d1 {
                let mut s = 0.0;
                for dj in -1..=1isize {
                    for di in -1..=1isize {
                        let (ii, jj) = (i as isize + di, j as isize + dj);
                        if ii >= 0 && jj >= 0 && (ii as usize) < d1 && (jj as usize) < d2 {
                            s += a[[ii as usize + d1 * jj as usize, k]];
                        }
                    }
                }
                out[[i + d1 * j, k]] = (s / 9.0) as f32;
            }
        }
    }
    CscMatrix::from_dense(out.view())
}

/// `b_in` from the data: the per-pixel temporal mean (with `f = ones`).
fn mean_b(yr: &Array2<f32>) -> Array2<f32> {
    let t = yr.ncols() as f64;
    Array2::from_shape_fn((yr.nrows(), 1), |(p, _)| (yr.row(p).iter().map(|&v| f64::from(v)).sum::<f64>() / t) as f32)
}

fn std_pop(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
}

/// Given the true traces, a constant background and blurred true footprints, every true
/// footprint is recovered (corr ≥ 0.95), scaled by about std(c_k) ([Q], see
/// `toy_regression_is_optimal_per_pixel`) minus what the median filter removes; the background equals the independent formula
/// `max(0, mean_t(Y − A C))`; Linear and Threads(2), and different block sizes, agree bit for bit.
#[test]
fn toy_recovers_true_footprints() {
    let toy = toy_synthetic();
    let fov = Fov::new(toy.dims, toy.yr.view()).unwrap();
    let t = toy.yr.ncols();
    let a_in = blurred(&toy.true_a, toy.dims);
    let f = Array2::<f64>::ones((1, t));
    let b_in = mean_b(&toy.yr);
    let p = params();
    let (res, _) =
        update_spatial_components(&fov, toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p, &Linear::new())
            .unwrap();
    assert_eq!(res.kept, vec![0, 1, 2, 3]);
    let a = dense64(&res.a);
    for k in 0..4 {
        let c = corr_cols(a.view(), k, toy.true_a.view(), k);
        let ratio = a.column(k).dot(&a.column(k)).sqrt() / toy.true_a.column(k).dot(&toy.true_a.column(k)).sqrt();
        let sd = std_pop(&toy.true_c.row(k).to_vec());
        eprintln!(
            "toy synthetic: component {k}: corr(A, A_true) = {c:.5}, ‖A‖/‖A_true‖ = {ratio:.4}, std(c) = {sd:.4}"
        );
        assert!(c >= 0.95, "component {k}: corr {c}");
        // The 3×3 median filter lowers the peak of these σ = 2 footprints by ~10%.
        assert!(ratio < sd && ratio > 0.8 * sd, "component {k}: scale {ratio} vs std {sd}");
        // C rows are returned with unit norm.
        assert!((res.c.row(k).dot(&res.c.row(k)) - 1.0).abs() < 1e-12);
    }
    // Background: with nb = 1 and f = 1, HALS converges in one sweep to the mean residual.
    let ac = a.dot(&res.c);
    for pix in 0..toy.yr.nrows() {
        let resid = (0..t).map(|s| f64::from(toy.yr[[pix, s]]) - ac[[pix, s]]).sum::<f64>() / t as f64;
        let want = resid.max(0.0);
        assert!((f64::from(res.b[[pix, 0]]) - want).abs() <= 1e-5 * want.abs().max(1.0), "pixel {pix}");
    }

    // Executor independence and block-size independence.
    let (res2, _) = update_spatial_components(
        &fov,
        toy.true_c.view(),
        f.view(),
        &a_in,
        b_in.view(),
        &toy.sn,
        &p,
        &Threads::new(2).unwrap(),
    )
    .unwrap();
    assert_eq!(res, res2);
    let small_blocks = SpatialParams { n_pixels_per_process: Some(37), ..params() };
    let (res3, stats) = update_spatial_components(
        &fov,
        toy.true_c.view(),
        f.view(),
        &a_in,
        b_in.view(),
        &toy.sn,
        &small_blocks,
        &Threads::new(2).unwrap(),
    )
    .unwrap();
    assert_eq!(res, res3);
    assert_eq!(stats.tasks, 600usize.div_ceil(37));

    // Tasks that read their rows from a C-order memmap give the same result.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(caiman_io::mmap::MmapName::file_name("toy", toy.dims, t, caiman_io::Order::C));
    let bytes: Vec<u8> = toy.yr.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let fov_mm = Fov { mmap: Some(&path), ..fov };
    let (res4, _) = update_spatial_components(
        &fov_mm,
        toy.true_c.view(),
        f.view(),
        &a_in,
        b_in.view(),
        &toy.sn,
        &p,
        &Threads::new(2).unwrap(),
    )
    .unwrap();
    assert_eq!(res, res4);
}

/// Per-pixel optimality on the toy data, checked from the raw data (independently of the
/// solver): for every regressed pixel the coefficients satisfy the KKT conditions of
/// `(1/2T)‖y_c − X_s w‖² + λ‖w‖₁, w ≥ 0` (λ = 0.5·sn/T), and the objective is never above the
/// one of the input footprints expressed in the same (standardised) space.
#[test]
fn toy_regression_is_optimal_per_pixel() {
    let toy = toy_synthetic();
    let fov = Fov::new(toy.dims, toy.yr.view()).unwrap();
    let t = toy.yr.ncols();
    let a_in = blurred(&toy.true_a, toy.dims);
    // A non-constant background trace, so that the background feature takes part.
    let f = Array2::from_shape_fn((1, t), |(_, s)| 1.0 + 0.1 * (s as f64 / 17.0).sin());
    let b_in = mean_b(&toy.yr);
    let (reg, _) = spatial_regression(
        &fov,
        toy.true_c.view(),
        f.view(),
        &a_in,
        b_in.view(),
        &toy.sn,
        &params(),
        &Threads::new(2).unwrap(),
    )
    .unwrap();
    let k = reg.kept.len();
    // Standardised features, computed here: rows of [C'; f].
    let mut feats: Vec<Vec<f64>> = (0..k).map(|r| reg.c.row(r).to_vec()).collect();
    feats.push(f.row(0).to_vec());
    let sds: Vec<f64> = feats.iter().map(|x| std_pop(x)).collect();
    let xs: Vec<Vec<f64>> = feats
        .iter()
        .zip(&sds)
        .map(|(x, &sd)| {
            let m = x.iter().sum::<f64>() / t as f64;
            x.iter().map(|v| (v - m) / sd).collect()
        })
        .collect();
    let a_in_scaled = dense64(&reg.a_in);
    let mut n_regressed = 0;
    let mut max_kkt = 0.0f64;
    for pix in 0..fov.pixels() {
        let (feat, w) = reg.coefs.pixel(pix);
        if feat.is_empty() {
            continue;
        }
        n_regressed += 1;
        let y: Vec<f64> = toy.yr.row(pix).iter().map(|&v| f64::from(v)).collect();
        let ym = y.iter().sum::<f64>() / t as f64;
        let yc: Vec<f64> = y.iter().map(|v| v - ym).collect();
        let lambda = 0.5 * toy.sn[pix] / t as f64;
        let fit = |w: &[f64]| -> Vec<f64> {
            (0..t).map(|s| yc[s] - feat.iter().zip(w).map(|(&kk, &wk)| wk * xs[kk][s]).sum::<f64>()).collect()
        };
        let objective = |w: &[f64]| {
            let r = fit(w);
            r.iter().map(|v| v * v).sum::<f64>() / (2.0 * t as f64) + lambda * w.iter().sum::<f64>()
        };
        let r = fit(w);
        for (&kk, &wk) in feat.iter().zip(w) {
            let grad = xs[kk].iter().zip(&r).map(|(x, e)| x * e).sum::<f64>() / t as f64 - lambda;
            let viol = if wk > 0.0 { grad.abs() } else { grad.max(0.0) };
            max_kkt = max_kkt.max(viol);
        }
        // The input footprints in the standardised space: a_k · std(c_k), b · std(f).
        let w_in: Vec<f64> = feat
            .iter()
            .map(|&kk| if kk < k { a_in_scaled[[pix, kk]] * sds[kk] } else { f64::from(b_in[[pix, 0]]) * sds[kk] })
            .collect();
        let (o_out, o_in) = (objective(w), objective(&w_in));
        assert!(o_out <= o_in + 1e-12 * o_in.abs().max(1.0), "pixel {pix}: {o_out} > {o_in}");
    }
    eprintln!("toy: {n_regressed} pixels regressed, max KKT violation {max_kkt:.2e}");
    // [Q] reproduced: the coefficients live in the standardised space, so the raw footprint of
    // component k is the true one times std(c_k) (c_k the raw trace), up to the tiny penalty.
    for kk in 0..k {
        let mut w2 = 0.0;
        for pix in 0..fov.pixels() {
            let (feat, w) = reg.coefs.pixel(pix);
            w2 += feat.iter().zip(w).filter(|&(&f, _)| f == kk).map(|(_, v)| v * v).sum::<f64>();
        }
        let ratio = w2.sqrt() / toy.true_a.column(kk).dot(&toy.true_a.column(kk)).sqrt();
        let sd = std_pop(&toy.true_c.row(kk).to_vec());
        eprintln!("toy: component {kk}: ‖w‖/‖A_true‖ = {ratio:.4}, std(c) = {sd:.4}");
        assert!((ratio / sd - 1.0).abs() < 0.03, "component {kk}: {ratio} vs {sd}");
    }
    assert!(n_regressed > 100);
    assert!(max_kkt < 1e-9, "KKT violation {max_kkt}");
}

/// `nnls_L0` on the toy data: the residual of every pixel is at most
/// max(residual of the input footprints, 1.2·sn²·T), and the footprints are still recovered.
#[test]
fn toy_nnls_l0() {
    let toy = toy_synthetic();
    let fov = Fov::new(toy.dims, toy.yr.view()).unwrap();
    let t = toy.yr.ncols();
    let a_in = blurred(&toy.true_a, toy.dims);
    let f = Array2::<f64>::ones((1, t));
    let b_in = mean_b(&toy.yr);
    let p = SpatialParams { method_ls: MethodLs::NnlsL0, ..params() };
    let (reg, _) =
        spatial_regression(&fov, toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p, &Linear::new()).unwrap();
    let a_in_scaled = dense64(&reg.a_in);
    let k = reg.kept.len();
    for pix in 0..fov.pixels() {
        let (feat, w) = reg.coefs.pixel(pix);
        if feat.is_empty() {
            continue;
        }
        let row = |kk: usize, s: usize| if kk < k { reg.c[[kk, s]] } else { 1.0 };
        let rss = |w: &dyn Fn(usize) -> f64| {
            (0..t)
                .map(|s| {
                    let model: f64 = feat.iter().enumerate().map(|(e, &kk)| w(e) * row(kk, s)).sum();
                    (f64::from(toy.yr[[pix, s]]) - model).powi(2)
                })
                .sum::<f64>()
        };
        let out = rss(&|e| w[e]);
        let inp = rss(&|e| if feat[e] < k { a_in_scaled[[pix, feat[e]]] } else { f64::from(b_in[[pix, 0]]) });
        let noise = 1.2 * toy.sn[pix] * toy.sn[pix] * t as f64;
        assert!(out <= inp.max(noise) * (1.0 + 1e-9), "pixel {pix}: {out} vs {inp} / {noise}");
    }
    let (res, _) =
        update_spatial_components(&fov, toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p, &Linear::new())
            .unwrap();
    let a = dense64(&res.a);
    for kk in 0..4 {
        let c = corr_cols(a.view(), kk, toy.true_a.view(), kk);
        eprintln!("toy nnls_L0: component {kk}: corr = {c:.5}");
        assert!(c >= 0.95);
    }
}

/// Components with an all-zero or NaN trace are dropped and reported through `kept`; without
/// `b_in` the background is refitted by least squares: b = max(0, Y_resf (f fᵀ)⁻¹).
#[test]
fn toy_drops_dead_components_and_fits_background_without_b_in() {
    let toy = toy_synthetic();
    let fov = Fov::new(toy.dims, toy.yr.view()).unwrap();
    let t = toy.yr.ncols();
    let mut c = toy.true_c.clone();
    c.row_mut(1).fill(0.0);
    c[[3, 7]] = f64::NAN;
    let a_in = blurred(&toy.true_a, toy.dims);
    let f = Array2::<f64>::ones((1, t));
    let no_b = Array2::<f32>::zeros((fov.pixels(), 0));
    let (res, _) =
        update_spatial_components(&fov, c.view(), f.view(), &a_in, no_b.view(), &toy.sn, &params(), &Linear::new())
            .unwrap();
    assert_eq!(res.kept, vec![0, 2]);
    assert_eq!(res.a.ncols(), 2);
    assert_eq!(res.c.nrows(), 2);
    let a = dense64(&res.a);
    for (out, k) in [(0, 0), (1, 2)] {
        assert!(corr_cols(a.view(), out, toy.true_a.view(), k) > 0.9);
    }
    let ac = a.dot(&res.c);
    for pix in 0..fov.pixels() {
        let want = ((0..t).map(|s| f64::from(toy.yr[[pix, s]]) - ac[[pix, s]]).sum::<f64>() / t as f64).max(0.0);
        assert!((f64::from(res.b[[pix, 0]]) - want).abs() <= 1e-5 * want.max(1.0));
    }
}

#[test]
fn update_background_hals_matches_hand_iteration() {
    // d = 3 pixels, nb = 2, T = 4; b_in's support excludes pixel 2 of component 1.
    let f = ndarray::array![[1.0, 2.0, 0.0, 1.0], [0.5, 0.0, 1.0, 1.0]];
    let yf = ndarray::array![[3.0, 1.0], [2.0, 2.0], [-1.0, 4.0]];
    let a = CscMatrix::zeros(3, 0);
    let c = Array2::<f64>::zeros((0, 4));
    let b_in = ndarray::array![[1.0f32, 0.5], [0.2, 0.1], [0.3, 0.0]];
    let b = update_background(yf.view(), &a, c.view(), f.view(), b_in.view()).unwrap();
    // Independent re-implementation of HALS4shape_bckgrnd.
    let ff = f.dot(&f.t());
    let mut w = b_in.mapv(f64::from);
    for _ in 0..5 {
        for m in 0..2 {
            for p in 0..3 {
                if b_in[[p, m]] == 0.0 {
                    continue;
                }
                let v: f64 = (0..2).map(|l| ff[[m, l]] * w[[p, l]]).sum();
                w[[p, m]] = (w[[p, m]] + (yf[[p, m]] - v) / ff[[m, m]]).max(0.0);
            }
        }
    }
    for (x, y) in b.iter().zip(w.iter()) {
        assert!((f64::from(*x) - y).abs() < 1e-6);
    }
    assert_eq!(b[[2, 1]], 0.0);
    // Plain least squares: b = max(0, yf (f fᵀ)⁻¹).
    let none = Array2::<f32>::zeros((3, 0));
    let b = update_background(yf.view(), &a, c.view(), f.view(), none.view()).unwrap();
    for p in 0..3 {
        let sol = solve_dense(vec![ff.row(0).to_vec(), ff.row(1).to_vec()], yf.row(p).to_vec()).unwrap();
        for m in 0..2 {
            assert!((f64::from(b[[p, m]]) - sol[m].max(0.0)).abs() < 1e-6);
        }
    }
    // Singular f fᵀ.
    let f2 = ndarray::array![[1.0, 1.0], [2.0, 2.0]];
    let yf2 = Array2::<f64>::ones((3, 2));
    let c2 = Array2::<f64>::zeros((0, 2));
    assert!(matches!(
        update_background(yf2.view(), &a, c2.view(), f2.view(), none.view()),
        Err(Error::InvalidParam(_))
    ));
}

#[test]
fn bad_input_gives_typed_errors() {
    let toy = toy_synthetic();
    let fov = Fov::new(toy.dims, toy.yr.view()).unwrap();
    let t = toy.yr.ncols();
    let a_in = blurred(&toy.true_a, toy.dims);
    let f = Array2::<f64>::ones((1, t));
    let b_in = mean_b(&toy.yr);
    let p = params();
    let exec = Linear::new();
    let run =
        |c: ArrayView2<'_, f64>,
         f: ArrayView2<'_, f64>,
         a: &CscMatrix,
         b: ArrayView2<'_, f32>,
         sn: &[f64],
         p: &SpatialParams| { update_spatial_components(&fov, c, f, a, b, sn, p, &exec).map(|_| ()) };
    // Shape mismatches.
    let short_c = toy.true_c.slice(s![.., ..t - 1]).to_owned();
    assert!(matches!(run(short_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p), Err(Error::ShapeMismatch { .. })));
    let three = toy.true_c.slice(s![..3, ..]).to_owned();
    assert!(matches!(run(three.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        run(toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn[1..], &p),
        Err(Error::ShapeMismatch { .. })
    ));
    let b2 = Array2::<f32>::ones((fov.pixels(), 2));
    assert!(matches!(
        run(toy.true_c.view(), f.view(), &a_in, b2.view(), &toy.sn, &p),
        Err(Error::ShapeMismatch { .. })
    ));
    // Non-finite values.
    let mut sn_nan = toy.sn.clone();
    sn_nan[3] = f64::NAN;
    assert!(matches!(run(toy.true_c.view(), f.view(), &a_in, b_in.view(), &sn_nan, &p), Err(Error::NonFinite { .. })));
    let mut f_nan = f.clone();
    f_nan[[0, 2]] = f64::INFINITY;
    assert!(matches!(
        run(toy.true_c.view(), f_nan.view(), &a_in, b_in.view(), &toy.sn, &p),
        Err(Error::NonFinite { .. })
    ));
    let mut yr_nan = toy.yr.clone();
    yr_nan[[5, 5]] = f32::NAN;
    let fov_nan = Fov::new(toy.dims, yr_nan.view()).unwrap();
    let r = update_spatial_components(&fov_nan, toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p, &exec);
    assert!(matches!(r, Err(Error::Exec(_))), "{r:?}");
    // NaN in C: that component is dropped (CaImAn); every C row NaN: nothing left to update.
    let c_nan = Array2::from_elem(toy.true_c.dim(), f64::NAN);
    assert!(matches!(run(c_nan.view(), f.view(), &a_in, b_in.view(), &toy.sn, &p), Err(Error::Empty { .. })));
    // Bad parameters.
    let mut sn_neg = toy.sn.clone();
    sn_neg[0] = -1.0;
    assert!(matches!(run(toy.true_c.view(), f.view(), &a_in, b_in.view(), &sn_neg, &p), Err(Error::InvalidParam(_))));
    let zero_block = SpatialParams { n_pixels_per_process: Some(0), ..params() };
    assert!(matches!(
        run(toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &zero_block),
        Err(Error::InvalidParam(_))
    ));
    let bad_se = SpatialParams { se: Some(NdArray { shape: vec![3, 3, 3], data: vec![1; 27] }), ..params() };
    assert!(matches!(
        run(toy.true_c.view(), f.view(), &a_in, b_in.view(), &toy.sn, &bad_se),
        Err(Error::InvalidParam(_))
    ));
    let no_bg = Array2::<f32>::zeros((fov.pixels(), 0));
    let keep_bg = SpatialParams { update_background_components: false, ..params() };
    assert!(matches!(
        run(toy.true_c.view(), f.view(), &a_in, no_bg.view(), &toy.sn, &keep_bg),
        Err(Error::InvalidParam(_))
    ));
}

/// A malformed task (inconsistent fields) fails with an error, not a panic.
#[test]
fn malformed_block_is_an_error() {
    let task = SpatialBlock {
        rows: caiman_cnmf::pixels::PixelRows::Inline { frames: 4, values: vec![0.0; 8] },
        first: 0,
        frames: 4,
        method: MethodLs::LassoLars,
        features: vec![0.0; 4],
        gram: vec![1.0],
        background: vec![false],
        list_ptr: vec![0, 1, 2],
        lists: vec![0, 3],
        penalty: vec![0.1, 0.1],
        f: vec![],
    };
    assert!(task.compute().is_err());
    assert!(Linear::new().map(vec![task]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Against CaImAn's outputs (shared/reference, skipped when absent)
// ---------------------------------------------------------------------------------------------

/// CaImAn's toy run (`toy_full_*`): its final footprints came from a spatial update followed by
/// a temporal update. Running our spatial update on CaImAn's final C, f, b, A (the reference
/// movie `toy_Yr.npy`) must give footprints that match CaImAn's final A closely.
#[test]
fn toy_reference_movie() {
    let candidates = [Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/toy/toy_Yr.npy"), reference("toy_Yr.npy")];
    let Some(yr_path) = candidates.iter().find(|p| p.exists()) else {
        eprintln!("SKIP toy_reference_movie: toy_Yr.npy not found");
        return;
    };
    if !reference("toy_full_C.npy").exists() {
        eprintln!("SKIP toy_reference_movie: shared/reference/cnmf not found");
        return;
    }
    let yr = npy2(yr_path).mapv(|v| v as f32);
    let dims = Dims::planar(20, 30);
    let fov = Fov::new(dims, yr.view()).unwrap();
    let a_ref = common::npy_csc(reference("").as_path(), "toy_full_A");
    let c_ref = npy2(&reference("toy_full_C.npy"));
    let f_ref = npy2(&reference("toy_full_f.npy"));
    let b_ref = npy2(&reference("toy_full_b.npy")).mapv(|v| v as f32);
    let sn = npy1(&reference("toy_full_sn.npy"));
    let true_a = npy2(&test_data("toy_trueA.npy"));
    let (res, _) = update_spatial_components(
        &fov,
        c_ref.view(),
        f_ref.view(),
        &a_ref,
        b_ref.view(),
        &sn,
        &params(),
        &Linear::new(),
    )
    .unwrap();
    assert_eq!(res.kept, vec![0, 1, 2, 3]);
    let ours = dense64(&res.a);
    let theirs = dense64(&a_ref);
    for k in 0..4 {
        let c = corr_cols(ours.view(), k, theirs.view(), k);
        let best_true = (0..4).map(|j| corr_cols(ours.view(), k, true_a.view(), j)).fold(0.0, f64::max);
        let (nz_o, nz_t) = (res.a.col(k).0.len(), a_ref.col(k).0.len());
        eprintln!(
            "toy reference: component {k}: corr(ours, CaImAn A) = {c:.5}, nnz {nz_o} vs {nz_t}, best corr with true A {best_true:.4}"
        );
        assert!(c >= 0.99, "component {k}: {c}");
        assert!(best_true >= 0.95);
    }
    let bc = common::corr(
        &res.b.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        &b_ref.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    );
    eprintln!("toy reference: corr(b, CaImAn b) = {bc:.5}");
}

/// The 128×128×1000 refit: our spatial update from CaImAn's final refit estimates against
/// CaImAn's final refit footprints (40 components).
#[test]
fn refit_reference_movie() {
    let path = reference("cnmf_movie.tif");
    if !path.exists() || !reference("refit_sn.npy").exists() {
        eprintln!("SKIP refit_reference_movie: shared/reference/cnmf not found");
        return;
    }
    // CaImAn sees the memmap: movie + float32(0.0001).
    let (dims, yr) = common::caiman_memmap_yr(&path);
    let fov = Fov::new(dims, yr.view()).unwrap();
    let a_ref = common::npy_csc(reference("").as_path(), "refit_A");
    // CaImAn's last spatial update ran on the traces of a temporal update with p = 0, i.e. the
    // raw traces max(C + YrA, 0); the final C (p = 1) is their denoised version.
    let c_ref = (npy2(&reference("refit_C.npy")) + npy2(&reference("refit_YrA.npy"))).mapv(|v| v.max(0.0));
    let f_ref = npy2(&reference("refit_f.npy"));
    let b_ref = npy2(&reference("refit_b.npy")).mapv(|v| v as f32);
    let sn = npy1(&reference("refit_sn.npy"));
    for (name, exec_threads) in [("Linear", 0usize), ("Threads(2)", 2)] {
        let start = std::time::Instant::now();
        let (res, _) = if exec_threads == 0 {
            update_spatial_components(
                &fov,
                c_ref.view(),
                f_ref.view(),
                &a_ref,
                b_ref.view(),
                &sn,
                &params(),
                &Linear::new(),
            )
        } else {
            update_spatial_components(
                &fov,
                c_ref.view(),
                f_ref.view(),
                &a_ref,
                b_ref.view(),
                &sn,
                &params(),
                &Threads::new(exec_threads).unwrap(),
            )
        }
        .unwrap();
        eprintln!("refit spatial update ({name}): {:.3} s", start.elapsed().as_secs_f64());
        if exec_threads != 0 {
            continue;
        }
        let ours = dense64(&res.a);
        let theirs = dense64(&a_ref);
        let mut corrs = Vec::new();
        for (out, &k) in res.kept.iter().enumerate() {
            corrs.push(corr_cols(ours.view(), out, theirs.view(), k));
        }
        for (out, (&k, c)) in res.kept.iter().zip(&corrs).enumerate() {
            if *c < 0.99 {
                eprintln!(
                    "  component {k}: corr {c:.4}, nnz ours {} CaImAn {}, max ours {:.4} CaImAn {:.4}",
                    res.a.col(out).0.len(),
                    a_ref.col(k).0.len(),
                    ours.column(out).fold(0.0f64, |m, &v| m.max(v)),
                    theirs.column(k).fold(0.0f64, |m, &v| m.max(v))
                );
            }
        }
        let min = corrs.iter().copied().fold(1.0, f64::min);
        let median = {
            let mut c = corrs.clone();
            c.sort_by(f64::total_cmp);
            c[c.len() / 2]
        };
        eprintln!(
            "refit reference: kept {}/{}, corr(ours, CaImAn A): min {min:.4}, median {median:.5}; nnz {} vs {}",
            res.kept.len(),
            a_ref.ncols(),
            res.a.nnz(),
            a_ref.nnz()
        );
        assert!(res.kept.len() >= a_ref.ncols() - 1);
        // CaImAn's footprints came from traces and a search support we can only approximate
        // (the previous iteration's), so overlapping components differ somewhat.
        assert!(median >= 0.99, "median corr {median}");
        assert!(min >= 0.85, "min corr {min}");
    }
}
