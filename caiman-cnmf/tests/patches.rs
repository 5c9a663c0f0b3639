//! CNMF over patches: CaImAn's patch grid (`extract_patch_coordinates`), the patch tasks, the
//! assembly of `run_CNMF_patches` and the patch branch of `CNMF.fit`, on CaImAn's toy data and
//! (when present) CaImAn's reference movie.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use caiman_cnmf::Error;
use caiman_cnmf::cnmf::fit;
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::matching::match_by_correlation;
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::patches::{PatchBox, PatchFit, fit_patches, patch_grid, patch_tasks, run_cnmf_patches};
use caiman_cnmf::pixels::Fov;
use caiman_io::Dims;
use caiman_parallel::{Linear, Par, Threads};
use ndarray::Array2;
use proptest::prelude::*;

use common::corr;

const TOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/toy");
const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/cnmf");

fn arr(name: &str) -> Array2<f64> {
    let a = caiman_io::npy::read_npy(format!("{TOY}/{name}")).unwrap();
    Array2::from_shape_vec((a.shape[0], a.shape[1]), a.to_f64().unwrap()).unwrap()
}

/// CaImAn's toy data (2-D, 20 × 30, seed 5): Yr, true A, true C.
fn toy() -> (Dims, Array2<f32>, Array2<f64>, Array2<f64>) {
    (Dims::planar(20, 30), arr("toy_Yr.npy").mapv(|v| v as f32), arr("toy_trueA.npy"), arr("toy_trueC.npy"))
}

/// CaImAn's test_toydata parameters ('no-patch' base) plus `patch` keys.
fn toy_params(patch: serde_json::Value) -> CnmfParams {
    let json = serde_json::json!({
        "data": {"dims": [20, 30]},
        "init": {"K": 4, "gSig": [2.0, 2.0]},
        "preprocess": {"p": 1, "n_pixels_per_process": 600},
        "spatial": {"n_pixels_per_process": 600, "thr_method": "nrg", "extract_cc": false},
        "temporal": {"p": 1, "block_size_temp": 600},
        "patch": patch,
    });
    let (mut p, unknown) = CnmfParams::from_caiman_json(&json.to_string()).unwrap();
    // (Small rf values draw a consistency warning — rf not larger than gSiz — that CaImAn also only announces.)
    assert!(unknown.iter().all(|w| w.contains("gSiz")), "{unknown:?}");
    p.check_consistency(Some(300)).unwrap();
    p
}

/// For every true component, the (trace, footprint) correlations of the estimated component whose
/// trace correlates best with it (CaImAn's toy-test matching).
fn match_truth(est: &Estimates, a_true: &Array2<f64>, c_true: &Array2<f64>) -> Vec<(f64, f64)> {
    let a_est = est.a.to_dense().mapv(f64::from);
    (0..c_true.nrows())
        .map(|i| {
            let ct = c_true.row(i).to_vec();
            let (j, cc) = (0..est.n_components())
                .map(|j| (j, corr(&ct, &est.c.row(j).to_vec())))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap();
            (cc, corr(&a_true.column(i).to_vec(), &a_est.column(j).to_vec()))
        })
        .collect()
}

fn assert_same(x: &Estimates, y: &Estimates, what: &str) {
    assert_eq!(x.a, y.a, "{what}: A");
    assert_eq!(x.c, y.c, "{what}: C");
    assert_eq!(x.b, y.b, "{what}: b");
    assert_eq!(x.f, y.f, "{what}: f");
    assert_eq!(x.yr_a, y.yr_a, "{what}: YrA");
    assert_eq!(x.sn, y.sn, "{what}: sn");
    assert_eq!(x.s, y.s, "{what}: S");
}

// ---------------------------------------------------------------------------------------------
// Grid
// ---------------------------------------------------------------------------------------------

#[test]
fn grid_follows_caimans_rule() {
    // 128 px, rf 24, stride 8: centres 24, 24 + (48 − 8) = 64, then the last one at 104.
    let g = patch_grid(Dims::planar(128, 128), &[24], &[8], 0).unwrap();
    assert_eq!(g.len(), 9, "3 × 3 patches (the reference run's 9 patches of K 8 = 72 candidates)");
    let rows: Vec<_> = g.iter().step_by(3).map(|b| b.ranges[0].clone()).collect();
    assert_eq!(rows, vec![0..49, 40..89, 80..128]);
    let cols: Vec<_> = g[..3].iter().map(|b| b.ranges[1].clone()).collect();
    assert_eq!(cols, vec![0..49, 40..89, 80..128]);
    // Overlap of consecutive patches: stride + 1 pixels.
    assert_eq!(49 - 40, 9);
    // F-order pixels of the second patch (rows 0..49, cols 40..89): i + 128 j, sorted.
    assert_eq!(g[1].pixels.len(), 49 * 49);
    assert_eq!(g[1].pixels[0], 128 * 40);
    assert_eq!(g[1].pixels[49], 128 * 41);
    assert!(g[1].pixels.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(g[1].dims(), Dims::planar(49, 49));

    // rf ≥ dim / 2 (CaImAn's toy 'patch' config, rf = dims // 2): one patch, the whole FOV.
    let g = patch_grid(Dims::planar(20, 30), &[10, 15], &[1, 1], 0).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].ranges, vec![0..20, 0..30]);
    assert_eq!(g[0].pixels, (0..600).collect::<Vec<_>>());

    // Per-axis rf / stride: 20 rows with rf 5, stride 2 → centres 5, 13? no: 5 < 15, 13 < 15, last 15.
    let g = patch_grid(Dims::planar(20, 9), &[5, 4], &[2, 1], 0).unwrap();
    let rows: Vec<_> = g.iter().step_by(2).map(|b| b.ranges[0].clone()).collect();
    assert_eq!(rows, vec![0..11, 8..19, 10..20]);
    let cols: Vec<_> = g[..2].iter().map(|b| b.ranges[1].clone()).collect();
    assert_eq!(cols, vec![0..9, 1..9], "centres 4 and 9 − 4 = 5 (range(4, 5, 7) = [4])");

    // border_pix: FOV reduced by 2·border, boxes shifted by border.
    let g = patch_grid(Dims::planar(20, 20), &[5], &[2], 2).unwrap();
    let rows: Vec<_> = g.iter().step_by(2).map(|b| b.ranges[0].clone()).collect();
    assert_eq!(rows, vec![2..13, 8..18]);
    let covered: std::collections::BTreeSet<usize> = g.iter().flat_map(|b| b.pixels.iter().copied()).collect();
    assert!(!covered.contains(&0) && !covered.contains(&(19 + 20 * 19)) && covered.contains(&(2 + 20 * 2)));
    assert_eq!(covered.len(), 16 * 16);
}

#[test]
fn grid_in_3d_matches_brute_force() {
    let dims = Dims::volume(12, 14, 16);
    let g = patch_grid(dims, &[4, 5, 6], &[2, 2, 3], 0).unwrap();
    // Axis 0: centres 4, then 12 − 4 = 8; axis 1: 5, then 9; axis 2: 6 (< 10), 15 ≥ 10 → 6, 10.
    assert_eq!(g.len(), 2 * 2 * 2);
    assert_eq!(g[0].ranges, vec![0..9, 0..11, 0..13]);
    assert_eq!(g[7].ranges, vec![4..12, 4..14, 4..16]);
    for b in &g {
        let mut brute = Vec::new();
        for k in b.ranges[2].clone() {
            for j in b.ranges[1].clone() {
                for i in b.ranges[0].clone() {
                    brute.push(i + 12 * j + 12 * 14 * k);
                }
            }
        }
        brute.sort_unstable();
        assert_eq!(b.pixels, brute);
        assert_eq!(b.dims().pixels(), b.pixels.len());
    }
}

#[test]
fn grid_rejects_bad_parameters() {
    let d = Dims::planar(64, 64);
    let inv = |r: Result<Vec<PatchBox>, Error>| matches!(r, Err(Error::InvalidParam(_)));
    assert!(inv(patch_grid(d, &[8], &[16], 0)), "stride = 2·rf: CaImAn's range step 0 raises");
    assert!(inv(patch_grid(d, &[8], &[20], 0)), "stride > 2·rf");
    assert!(inv(patch_grid(d, &[0], &[0], 0)), "rf = 0");
    assert!(inv(patch_grid(d, &[8, 8, 8], &[2], 0)), "three rf values for a planar FOV");
    assert!(inv(patch_grid(d, &[8], &[2], 32)), "border leaves nothing");
    assert!(inv(patch_grid(Dims::volume(10, 10, 10), &[4], &[2], 1)), "border_pix in 3-D");
    assert!(patch_grid(Dims::planar(0, 4), &[2], &[1], 0).is_err());
}

proptest! {
    #[test]
    fn grid_covers_every_pixel(d1 in 1usize..40, d2 in 1usize..40, d3 in prop::sample::select(vec![1usize, 5]),
                               rf in 1usize..12, st in 0usize..23) {
        let dims = Dims { d1, d2, d3 };
        let st = st % (2 * rf);
        let g = patch_grid(dims, &[rf], &[st], 0).unwrap();
        let mut hits = vec![0usize; dims.pixels()];
        for b in &g {
            prop_assert!(b.pixels.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(b.pixels.len(), b.dims().pixels());
            for r in &b.ranges {
                prop_assert!(r.len() <= 2 * rf + 1 && !r.is_empty());
            }
            for &p in &b.pixels {
                hits[p] += 1;
            }
        }
        prop_assert!(hits.iter().all(|&h| h > 0), "every pixel in some patch");
    }
}

// ---------------------------------------------------------------------------------------------
// Assembly (independent reconstruction from the patch tasks' own results)
// ---------------------------------------------------------------------------------------------

#[test]
fn assembly_averages_overlaps_and_single_patch_background_is_exact() {
    let (dims, yr, _, _) = toy();
    let fov = Fov::new(dims, yr.view()).unwrap();
    // Two patches along the columns (rf (10, 9), stride (1, 4): column centres 9, 30 − 9 = 21 → 0..19, 12..30).
    let params = toy_params(serde_json::json!({"rf": [10, 9], "stride": [1, 4], "nb_patch": 1}));
    let tasks = patch_tasks(&fov, &params).unwrap();
    assert_eq!(tasks.len(), 2);
    let boxes: Vec<PatchBox> = tasks.iter().map(|t| t.patch.clone()).collect();
    let outs: Vec<_> = tasks.iter().map(|t| t.execute(Par::Seq).unwrap().unwrap()).collect();
    let (est, _) = run_cnmf_patches(&fov, &params, &Linear::with_inner_threads(Some(1))).unwrap();
    let mut mask = vec![0f32; 600];
    for b in &boxes {
        for &p in &b.pixels {
            mask[p] += 1.0;
        }
    }
    let mut k = 0;
    for (b, o) in boxes.iter().zip(&outs) {
        for j in 0..o.k {
            let (lo, hi) = (o.a_indptr[j], o.a_indptr[j + 1]);
            if o.a_data[lo..hi].iter().map(|&v| f64::from(v)).sum::<f64>() <= 0.0 {
                continue;
            }
            let (rows, vals) = est.a.col(k);
            let expect: Vec<usize> = o.a_indices[lo..hi].iter().map(|&i| b.pixels[i]).collect();
            assert_eq!(rows, &expect[..], "component {k}: pixels embedded");
            for ((&p, &v), &w) in rows.iter().zip(vals).zip(&o.a_data[lo..hi]) {
                let want = w / (mask[p] + f32::EPSILON);
                assert!((v - want).abs() <= 1e-6 * want.abs(), "component {k}: overlap averaging at pixel {p}");
            }
            assert_eq!(est.c.row(k).to_vec(), o.c[j * 300..(j + 1) * 300].to_vec());
            k += 1;
        }
    }
    assert_eq!(k, est.n_components());
    // Pixel noise: the last patch wins.
    let sn = est.sn.as_ref().unwrap();
    for (i, &p) in boxes[1].pixels.iter().enumerate() {
        assert_eq!(sn[p], outs[1].sn[i]);
    }
    assert_eq!(est.b.ncols(), 1);
    let nb = est.b.column(0).iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    assert!((nb - 1.0).abs() < 1e-5, "unit-norm background");

    // One patch, one background, init.nb = 1: the rank-1 recombination gives back Im·B ⊗ F exactly.
    let params = toy_params(serde_json::json!({"rf": [10, 15], "stride": [1, 1], "nb_patch": 1}));
    let task = patch_tasks(&fov, &params).unwrap().remove(0);
    let o = task.execute(Par::Seq).unwrap().unwrap();
    let (est, _) = run_cnmf_patches(&fov, &params, &Linear::new()).unwrap();
    let scale = 1.0 / (1.0 + f64::from(f32::EPSILON));
    let mut worst = 0f64;
    let big = o.f.iter().fold(0f64, |m, v| m.max(v.abs())) * o.b.iter().fold(0f64, |m, &v| m.max(f64::from(v)));
    for p in 0..600 {
        for t in (0..300).step_by(7) {
            let ours = f64::from(est.b[[p, 0]]) * est.f[[0, t]];
            let want = f64::from(o.b[p]) * scale * o.f[t];
            worst = worst.max((ours - want).abs());
        }
    }
    assert!(worst <= 1e-5 * big, "b·f vs the patch background: max |Δ| {worst:e} (scale {big:e})");
}

// ---------------------------------------------------------------------------------------------
// Toy data (CaImAn's test_toydata 'patch' / 'patch-not-lowrank')
// ---------------------------------------------------------------------------------------------

#[test]
fn toy_one_patch_matches_no_patch_and_recovers_the_truth() {
    let (dims, yr, a_true, c_true) = toy();
    let fov = Fov::new(dims, yr.view()).unwrap();
    let (plain, _) = fit(&fov, &toy_params(serde_json::json!({})), &Linear::new()).unwrap();
    for (name, low_rank) in [("patch", serde_json::json!(true)), ("patch-not-lowrank", serde_json::json!(false))] {
        let params = toy_params(serde_json::json!({"rf": [10, 15], "stride": 1, "low_rank_background": low_rank}));
        let (est, report) = fit_patches(&fov, &params, &Linear::new()).unwrap();
        let stages: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["patches", "patch assembly", "merge", "temporal"]);
        assert!(est.s.is_some() && est.g.as_ref().unwrap().iter().all(|g| g.len() == 1), "{name}: p = 1 deconvolved");
        // Against the no-patch fit: footprints matched by correlation; traces of the matched pairs.
        let m = match_by_correlation(&plain.a, &est.a).unwrap();
        assert_eq!(m.len(), 4, "{name}: 4 components");
        let raw = |e: &Estimates, k: usize| (&e.c.row(k) + &e.yr_a.as_ref().unwrap().row(k)).to_vec();
        let (mut worst_a, mut worst_c, mut worst_raw) = (1f64, 1f64, 1f64);
        for &(i, j, ca) in &m {
            worst_a = worst_a.min(ca);
            worst_c = worst_c.min(corr(&plain.c.row(i).to_vec(), &est.c.row(j).to_vec()));
            worst_raw = worst_raw.min(corr(&raw(&plain, i), &raw(&est, j)));
        }
        eprintln!(
            "{name}: vs no patch: min footprint corr {worst_a:.6}, min raw-trace (C + YrA) corr {worst_raw:.6}, \
             min C corr {worst_c:.4} (ours deconvolved, p = 1; no-patch init only)"
        );
        assert!(worst_a >= 0.99, "{name}: footprint correlation with the no-patch fit {worst_a}");
        assert!(worst_raw >= 0.99, "{name}: raw-trace correlation with the no-patch fit {worst_raw}");
        assert!(worst_c >= 0.9, "{name}: trace correlation with the no-patch fit {worst_c}");
        // CaImAn's toy criterion against the ground truth.
        for (i, (cc, ca)) in match_truth(&est, &a_true, &c_true).into_iter().enumerate() {
            eprintln!("{name}: true component {i}: corr(C) {cc:.4}, corr(A) {ca:.4}");
            assert!(cc >= 0.95 && ca >= 0.95, "{name}: true component {i}: corr(C) {cc:.4}, corr(A) {ca:.4}");
        }
        for n in est.a.col_norms() {
            assert!((n - 1.0).abs() < 1e-5, "{name}: normalised footprints");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Executors and data sources
// ---------------------------------------------------------------------------------------------

fn write_c_memmap(dir: &Path, dims: Dims, yr: &Array2<f32>) -> PathBuf {
    let name = caiman_io::mmap::MmapName::file_name("toy", dims, yr.ncols(), caiman_io::Order::C);
    let path = dir.join(name);
    let bytes: Vec<u8> = yr.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn executors_and_sources_agree_bit_for_bit() {
    let (dims, yr, _, _) = toy();
    // Six patches, two components each.
    let mut params = toy_params(serde_json::json!({"rf": [6, 8], "stride": [3, 4], "nb_patch": 1}));
    params.init.k = Some(2);
    let fov = Fov::new(dims, yr.view()).unwrap();
    assert_eq!(patch_tasks(&fov, &params).unwrap().len(), 6);
    let lin = fit_patches(&fov, &params, &Linear::with_inner_threads(Some(1))).unwrap().0;
    assert!(lin.n_components() >= 2, "{} components", lin.n_components());
    let thr = fit_patches(&fov, &params, &Threads::with_inner_threads(2, Some(1)).unwrap()).unwrap().0;
    assert_same(&lin, &thr, "Linear vs Threads(2)");

    let dir = tempfile::tempdir().unwrap();
    let path = write_c_memmap(dir.path(), dims, &yr);
    let mm = Fov { mmap: Some(&path), ..fov };
    let tasks = patch_tasks(&mm, &params).unwrap();
    assert!(tasks.iter().all(|t| matches!(t.source, caiman_cnmf::patches::PatchSource::Mmap { .. })));
    let from_file = fit_patches(&mm, &params, &Linear::with_inner_threads(Some(1))).unwrap().0;
    assert_same(&lin, &from_file, "memmap vs in memory");

    let shared = Arc::new(yr.clone());
    let sh = Fov::from_shared(dims, &shared).unwrap();
    let from_shared = fit_patches(&sh, &params, &Threads::with_inner_threads(2, Some(1)).unwrap()).unwrap().0;
    assert_same(&lin, &from_shared, "shared vs copied rows");

    // Over the wire (what a worker process receives) a shared task carries just its rows, and
    // gives the same patch result.
    let task: PatchFit = patch_tasks(&sh, &params).unwrap().remove(3);
    let wire = postcard::to_stdvec(&task).unwrap();
    let back: PatchFit = postcard::from_bytes(&wire).unwrap();
    assert!(matches!(back.source, caiman_cnmf::patches::PatchSource::Inline { .. }));
    assert!(wire.len() < 4 * yr.len() / 2, "only the patch's rows travel ({} bytes)", wire.len());
    assert_eq!(task.execute(Par::Seq).unwrap(), back.execute(Par::Seq).unwrap());
}

#[test]
fn static_patches_are_skipped() {
    // A movie that only moves in its right half: the left patches are static (CaImAn returns None).
    let (dims, yr, _, _) = toy();
    let mut yr2 = yr.clone();
    for p in 0..240 {
        yr2.row_mut(p).fill(3.0); // columns 0..12
    }
    let mut params = toy_params(serde_json::json!({"rf": [10, 5], "stride": [1, 2], "nb_patch": 1}));
    params.init.k = Some(2);
    let fov = Fov::new(dims, yr2.view()).unwrap();
    let tasks = patch_tasks(&fov, &params).unwrap();
    let outs: Vec<_> = tasks.iter().map(|t| t.execute(Par::Seq).unwrap()).collect();
    assert!(outs[0].is_none(), "columns 0..11 constant: static patch");
    assert!(outs.iter().skip(1).any(Option::is_some));
    let (est, _) = run_cnmf_patches(&fov, &params, &Linear::new()).unwrap();
    let sn = est.sn.unwrap();
    assert!(sn[..20].iter().all(|&v| v == 0.0), "no pixel noise where only static patches lie");
    assert_eq!(est.b.ncols(), params.init.nb as usize);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (dims, yr, _, _) = toy();
    let fov = Fov::new(dims, yr.view()).unwrap();
    let lin = Linear::new();
    let inv =
        |r: caiman_cnmf::Result<(Estimates, caiman_cnmf::cnmf::FitReport)>| matches!(r, Err(Error::InvalidParam(_)));
    let mut p = toy_params(serde_json::json!({"rf": [10, 15], "stride": 1}));
    p.init.center_psf = true;
    assert!(inv(fit_patches(&fov, &p, &lin)), "1p patch mode");
    assert!(inv(fit_patches(&fov, &toy_params(serde_json::json!({})), &lin)), "rf unset");
    assert!(inv(fit_patches(&fov, &toy_params(serde_json::json!({"rf": 5, "stride": 10})), &lin)), "stride = 2 rf");
    let mut p = toy_params(serde_json::json!({"rf": [10, 15], "stride": 1}));
    p.init.nb = 3;
    assert!(inv(run_cnmf_patches(&fov, &p, &lin)), "3 global backgrounds from one patch background");
    let mut bad = yr.clone();
    bad[[5, 5]] = f32::NAN;
    let fov = Fov::new(dims, bad.view()).unwrap();
    assert!(fit_patches(&fov, &toy_params(serde_json::json!({"rf": [10, 15], "stride": 1})), &lin).is_err());
}

// ---------------------------------------------------------------------------------------------
// CaImAn's reference run (rf 24, stride 8, K 8, gSig 4, nb 2, p 1 → 41 components)
// ---------------------------------------------------------------------------------------------

fn ref_npy(name: &str) -> caiman_io::npy::NpyArray {
    caiman_io::npy::read_npy(Path::new(REF).join(name)).unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

#[test]
fn reference_movie_patch_fit_matches_caiman() {
    let movie = Path::new(REF).join("cnmf_movie.tif");
    if !movie.exists() {
        eprintln!("SKIPPED: {} is absent (CaImAn reference movie)", movie.display());
        return;
    }
    let (dims, yr) = common::caiman_memmap_yr(&movie);
    let text = std::fs::read_to_string(Path::new(REF).join("cnmf_params_input.json")).unwrap();
    let (params, _) = CnmfParams::from_caiman_json(&text).unwrap();
    let fov = Fov::new(dims, yr.view()).unwrap();
    let t0 = std::time::Instant::now();
    let (est, report) = fit_patches(&fov, &params, &Threads::new(2).unwrap()).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    for s in &report.stages {
        eprintln!("stage {:<16} {:>7.3} s  {:>3} components", s.stage, s.seconds, s.components);
    }
    let v = |n: &str| ref_npy(n).to_f64().unwrap().into_iter().map(|x| x as usize).collect::<Vec<usize>>();
    let shape = v("fit_A_shape.npy");
    let cm_a = caiman_cnmf::sparse::CscMatrix::from_parts(
        shape[0],
        shape[1],
        v("fit_A_indptr.npy"),
        v("fit_A_indices.npy"),
        ref_npy("fit_A_data.npy").to_f32().unwrap(),
    )
    .unwrap();
    let cm_c = {
        let a = ref_npy("fit_C.npy");
        Array2::from_shape_vec((a.shape[0], a.shape[1]), a.to_f64().unwrap()).unwrap()
    };
    assert_eq!(cm_a.ncols(), 41);
    let k = est.n_components();
    let m = match_by_correlation(&cm_a, &est.a).unwrap();
    let mut ca: Vec<f64> = m.iter().map(|x| x.2).collect();
    let good = ca.iter().filter(|&&c| c >= 0.9).count();
    let mut cc: Vec<f64> =
        m.iter().filter(|x| x.2 >= 0.9).map(|&(i, j, _)| corr(&cm_c.row(i).to_vec(), &est.c.row(j).to_vec())).collect();
    let ref_sn = ref_npy("fit_sn.npy").to_f64().unwrap();
    let sn = est.sn.as_ref().unwrap();
    let sn_rel = sn.iter().zip(&ref_sn).map(|(a, b)| (a - b).abs() / b.abs().max(1e-12)).fold(0f64, f64::max);
    eprintln!(
        "ours {k} components (CaImAn 41) in {secs:.2} s (dev profile, Threads(2)); footprint corr ≥ 0.9 for \
         {good}/41, median footprint corr {:.4}, median trace corr of those {:.4}, min {:.4}; max rel |Δsn| {sn_rel:e}",
        median(&mut ca),
        median(&mut cc),
        cc.first().copied().unwrap_or(f64::NAN)
    );
    // Measured: 41 components, 41/41 matched, median footprint and trace correlation 1.0000 (min trace 0.998).
    assert!((36..=46).contains(&k), "component count {k} far from CaImAn's 41");
    assert!(good as f64 >= 0.85 * 41.0, "only {good}/41 CaImAn components matched with footprint corr ≥ 0.9");
    assert!(median(&mut ca) >= 0.99, "median footprint correlation with CaImAn");
    assert!(median(&mut cc) >= 0.99, "median trace correlation with CaImAn (matched components)");
    assert!(sn_rel < 1e-4, "pixel noise vs CaImAn: max rel diff {sn_rel:e}");
}
