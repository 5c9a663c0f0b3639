//! `caiman cnmf`: the whole-field-of-view pipeline on CaImAn's toy movie through the binary —
//! every backend (worker processes included) gives identical results, the results file loads
//! back with the accepted components, `--json` reports the stages, and bad input is one clear
//! error line.

// Running the binary under test is the point of this file.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};

use caiman_cnmf::results::load_cnmf;
use caiman_io::{Dims, Movie, WriteOptions};
use common::{assert_error_lines, caiman, stderr, stdout};
use ndarray::Array2;

const TOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../caiman-cnmf/test_data/toy");

/// CaImAn's toy movie (20 × 30, 300 frames) written as a `.npy` movie, and its params file
/// (the toy test's configuration, whole field of view).
fn toy_files(dir: &Path) -> (PathBuf, PathBuf) {
    let a = caiman_io::npy::read_npy(format!("{TOY}/toy_Yr.npy")).unwrap();
    let yr = Array2::from_shape_vec((a.shape[0], a.shape[1]), a.to_f32().unwrap()).unwrap();
    let movie = Movie::from_yr(yr.view(), Dims::planar(20, 30));
    let path = caiman_io::save(dir.join("toy.npy"), &movie, &WriteOptions::default()).unwrap();
    let params = dir.join("params.json");
    let json = serde_json::json!({
        "data": {"fr": 30, "decay_time": 0.4},
        "init": {"K": 4, "gSig": [2, 2]},
        "preprocess": {"p": 1},
        "spatial": {"thr_method": "nrg", "extract_cc": false},
        "temporal": {"p": 1},
        "patch": {"rf": null}
    });
    std::fs::write(&params, json.to_string()).unwrap();
    (path, params)
}

#[test]
fn every_backend_gives_the_same_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let (movie, params) = toy_files(dir.path());
    let mut loaded = Vec::new();
    for backend in ["linear", "threads:2", "processes:2"] {
        let out = dir.path().join(format!("res_{}.hdf5", backend.replace(':', "_")));
        let o = caiman(&[
            "cnmf",
            movie.to_str().unwrap(),
            "--params",
            params.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--json",
        ]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
        let stages: Vec<&str> = v["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
        for s in ["preprocess", "initialize", "spatial", "temporal", "evaluate", "dff"] {
            assert!(stages.contains(&s), "{backend}: stage {s} missing from {stages:?}");
        }
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 0.0);
        assert_eq!(v["accepted"], 4, "{backend}: {v}");
        let (res, warnings) = load_cnmf(&out).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        loaded.push(res);
    }
    // No temporary memmap is left behind by the processes run.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("mmap"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let e = &loaded[0].estimates;
    assert_eq!(e.n_components(), 4);
    assert_eq!(e.idx_components.as_ref().unwrap().len(), 4);
    assert!(e.f_dff.is_some() && e.snr_comp.is_some() && e.r_values.is_some());
    assert_eq!(loaded[0].estimates, loaded[1].estimates, "linear vs threads");
    assert_eq!(loaded[0].estimates, loaded[2].estimates, "linear vs processes");
}

/// The toy movie over four overlapping patches (rf 8, stride 4: 2 × 2 patches of 17 × 17 on
/// 20 × 30): every backend, worker processes included (they read their patch from a temporary
/// C-order memmap), gives the same results file, and the pipeline still finds the four neurons.
#[test]
fn patches_on_every_backend_give_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (movie, _) = toy_files(dir.path());
    let params = dir.path().join("patch_params.json");
    let json = serde_json::json!({
        "data": {"fr": 30, "decay_time": 0.4},
        "init": {"K": 3, "gSig": [2, 2], "nb": 1},
        "preprocess": {"p": 1},
        "temporal": {"p": 1},
        "patch": {"rf": 8, "stride": 4, "nb_patch": 1}
    });
    std::fs::write(&params, json.to_string()).unwrap();
    let mut loaded = Vec::new();
    for backend in ["linear", "threads:2", "processes:2"] {
        let out = dir.path().join(format!("p_{}.hdf5", backend.replace(':', "_")));
        let o = caiman(&[
            "cnmf",
            movie.to_str().unwrap(),
            "--params",
            params.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--json",
        ]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
        let stages: Vec<&str> = v["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
        assert!(stages.contains(&"patches"), "{backend}: {stages:?}");
        loaded.push(load_cnmf(&out).unwrap().0);
    }
    // A memory budget that lets one 17 × 17 × 300 patch fit at a time (8 × its 347 kB box,
    // doubled: 5.5 MB) and passes hold a quarter of it: the same results.
    let budgeted = dir.path().join("p_budget.hdf5");
    let (m, p) = (movie.to_str().unwrap(), params.to_str().unwrap());
    let o = caiman(&[
        "cnmf",
        m,
        "--params",
        p,
        "-o",
        budgeted.to_str().unwrap(),
        "--backend",
        "processes:2",
        "--memory-budget",
        "6M",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(load_cnmf(&budgeted).unwrap().0.estimates, loaded[0].estimates, "with a memory budget");
    // Below one patch: a clear error, no results file.
    let small = dir.path().join("p_small.hdf5");
    let o = caiman(&["cnmf", m, "--params", p, "-o", small.to_str().unwrap(), "--memory-budget", "3M"]);
    assert_error_lines(&o, "memory budget");
    assert!(!small.exists());
    let e = &loaded[0].estimates;
    assert!(e.idx_components.as_ref().unwrap().len() >= 4, "{:?}", e.idx_components);
    assert!(loaded[0].params.patch.rf.is_none(), "the saved params are the refit's");
    assert_eq!(loaded[0].estimates, loaded[1].estimates, "linear vs threads");
    assert_eq!(loaded[0].estimates, loaded[2].estimates, "linear vs processes");
}

#[test]
fn no_refit_stops_after_the_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (movie, params) = toy_files(dir.path());
    let out = dir.path().join("fit.h5");
    let o = caiman(&[
        "cnmf",
        movie.to_str().unwrap(),
        "--params",
        params.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--no-refit",
        "--backend",
        "linear",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("4 components"), "{}", stdout(&o));
    let (res, _) = load_cnmf(&out).unwrap();
    assert!(res.estimates.idx_components.is_none(), "not evaluated");
    assert!(res.params.patch.only_init, "CaImAn's default: the fit is the initialisation");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (movie, params) = toy_files(dir.path());
    let out = dir.path().join("r.hdf5");
    let (m, p, o) = (movie.to_str().unwrap(), params.to_str().unwrap(), out.to_str().unwrap());
    assert_error_lines(&caiman(&["cnmf", "/nonexistent/movie.tif", "-o", o]), "/nonexistent/movie.tif");
    assert_error_lines(&caiman(&["cnmf", m, "-o", dir.path().join("r.txt").to_str().unwrap()]), "r.txt");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert_error_lines(&caiman(&["cnmf", m, "--params", bad.to_str().unwrap(), "-o", o]), "bad.json");
    let patches = dir.path().join("patches.json");
    std::fs::write(&patches, r#"{"patch": {"rf": 30, "stride": 60}}"#).unwrap();
    assert_error_lines(&caiman(&["cnmf", m, "--params", patches.to_str().unwrap(), "-o", o]), "stride");
    let bad_k = dir.path().join("k.json");
    std::fs::write(&bad_k, r#"{"init": {"K": 100000}, "patch": {"rf": null}}"#).unwrap();
    assert_error_lines(&caiman(&["cnmf", m, "--params", bad_k.to_str().unwrap(), "-o", o]), "K");
    assert!(!out.exists(), "no results file after a failure");
    let _ = p;
}
