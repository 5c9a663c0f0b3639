//! `MotionParams` against CaImAn's own parameter files (`test_data/params/`, copied from the
//! reference tree) and `motion_params.json` of the motion reference runs.

mod common;

use caiman_motion::params::{BorderNan, IndexSlice, MotionParams, normalize_nonfinite_tokens};
use caiman_motion::{CorrectionOptions, ParamsError};

fn read(name: &str) -> String {
    std::fs::read_to_string(common::data(name)).unwrap()
}

#[test]
fn defaults_equal_caiman_defaults() {
    for file in ["params/cnmf_params_default.json", "params/cnmf_params_default_strict.json"] {
        let (p, warnings) = MotionParams::from_caiman_json(&read(file)).unwrap();
        assert_eq!(p, MotionParams::default(), "{file}");
        assert!(warnings.is_empty(), "{file}: {warnings:?}");
    }
}

#[test]
fn serialisation_writes_caiman_json() {
    let strict: serde_json::Value = serde_json::from_str(&read("params/cnmf_params_default_strict.json")).unwrap();
    let ours = serde_json::to_value(MotionParams::default()).unwrap();
    assert_eq!(ours, strict["motion"]);
    let keys: Vec<&str> = ours.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), caiman_motion::params::MOTION_KEYS.len());
}

#[test]
fn demo_files_load_like_caiman() {
    let full: serde_json::Value =
        serde_json::from_str(&normalize_nonfinite_tokens(&read("params/demo_params_loaded_full.json"))).unwrap();
    for (file, loaded) in full.as_object().unwrap() {
        let (ours, _) = MotionParams::from_caiman_json(&read(&format!("params/{file}"))).unwrap();
        let caiman: MotionParams = serde_json::from_value(loaded["motion"].clone()).unwrap();
        // splits_* are derived from the movie length by check_consistency; the demo movies give 14.
        assert_eq!(ours, caiman, "{file}");
    }
    let (cnmfe, _) = MotionParams::from_caiman_json(&read("params/params_demo_pipeline_cnmfE.json")).unwrap();
    assert_eq!(cnmfe.gsig_filt, Some(vec![3, 3]));
    assert_eq!(cnmfe.max_shifts, [5, 5]);
    assert_eq!(cnmfe.strides, [48, 48]);
}

#[test]
fn reference_run_parameters() {
    let runs: serde_json::Value = serde_json::from_str(&read("motion_params.json")).unwrap();
    for (run, pw, opencv) in [("rigid", false, true), ("pw", true, true), ("pw_fft", true, false)] {
        let json = serde_json::json!({ "motion": runs[run] }).to_string();
        let (p, warnings) = MotionParams::from_caiman_json(&json).unwrap();
        assert!(warnings.is_empty());
        assert_eq!((p.pw_rigid, p.shifts_opencv), (pw, opencv));
        assert_eq!((p.strides.as_slice(), p.overlaps.as_slice()), (&[32, 32][..], &[16, 16][..]));
        assert_eq!(p.splits_rig, 3);
        assert_eq!(p.border_nan, BorderNan::Copy);
        let o = CorrectionOptions::piecewise(&p, -6.0).unwrap();
        assert_eq!(o.max_deviation_rigid, 3);
        assert_eq!(CorrectionOptions::rigid(&p, -6.0).unwrap().max_deviation_rigid, 0);
    }
}

#[test]
fn lenient_loader_warns() {
    let json = r#"{"max_shifts": [4, 4], "motion": {"pw_rigid": true, "foo": 1, "use_cuda": true,
                  "min_mov": -Infinity}, "data": {"fr": NaN}}"#;
    let err = MotionParams::from_caiman_json(json).unwrap_err();
    assert!(matches!(err, ParamsError::Invalid { key: "min_mov", .. }), "{err}");
    let json = r#"{"max_shifts": [4, 4], "motion": {"pw_rigid": true, "foo": 1, "use_cuda": true,
                  "border_nan": false}, "data": {"fr": NaN}}"#;
    let (p, warnings) = MotionParams::from_caiman_json(json).unwrap();
    assert_eq!(p.max_shifts, [4, 4]);
    assert!(p.pw_rigid);
    assert_eq!(p.border_nan, BorderNan::None);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    let (_, warnings) = MotionParams::from_caiman_json("{}").unwrap();
    assert_eq!(warnings.len(), 1);
}

#[test]
fn nonsense_is_rejected() {
    let bad = |motion: &str| -> ParamsError {
        MotionParams::from_caiman_json(&format!(r#"{{"motion": {motion}}}"#)).unwrap_err()
    };
    assert!(matches!(bad(r#"{"strides": [0, 96]}"#), ParamsError::Invalid { key: "strides", .. }));
    assert!(matches!(bad(r#"{"max_shifts": [6]}"#), ParamsError::Invalid { key: "max_shifts", .. }));
    assert!(matches!(bad(r#"{"niter_rig": 0}"#), ParamsError::Invalid { key: "niter_rig", .. }));
    assert!(matches!(
        bad(r#"{"gSig_filt": [3, 3], "shifts_opencv": false}"#),
        ParamsError::Invalid { key: "gSig_filt", .. }
    ));
    assert!(matches!(bad(r#"{"border_nan": "max"}"#), ParamsError::Json(_)));
    assert!(matches!(bad(r#"{"max_shifts": [-1, 6]}"#), ParamsError::Json(_)));
    assert!(matches!(
        bad(r#"{"indices": [[0, 10, 0], [null, null, null]]}"#),
        ParamsError::Invalid { key: "indices", .. }
    ));
    let mut p = MotionParams { is_3d: true, ..MotionParams::default() };
    p.indices.push(IndexSlice::default());
    assert_eq!(p.max_shifts_per_axis().unwrap(), [6, 6, 6]);
    p.validate().unwrap();
}
