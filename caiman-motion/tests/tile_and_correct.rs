//! Single-frame `tile_and_correct` against CaImAn 1.12.1 (`tac_*` fixtures: frame 50 of
//! `motion_movie.tif`, the rigid-pass template, `add_to_movie = −6`, `border_nan='copy'`).
//! Measured: shifts identical; the float32 output equals CaImAn's float64 output rounded to
//! float32 at every pixel (max relative difference 5.9e-8, the float32 rounding itself).

mod common;

use caiman_motion::{CorrectionOptions, FrameCorrector};
use common::{json, load2_f32, load2_f64};
use ndarray::Array2;

fn opts(max_dev: usize) -> CorrectionOptions {
    CorrectionOptions { max_deviation_rigid: max_dev, add_to_movie: -6.0, ..common::reference_options() }
}

/// Largest |ours − reference| relative to the reference's range.
fn max_rel_err(ours: &Array2<f32>, reference: &Array2<f64>) -> f64 {
    let range = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    ours.iter().zip(reference.iter()).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max) / range
}

#[test]
fn rigid_frame_matches_caiman() {
    let frame = load2_f32("tac_frame50.npy");
    let template = load2_f32("rigid_total_template_rig.npy");
    let reference = load2_f64("tac_rigid_frame50_out.npy");
    let expected = json("tac_frame50_shifts.json");
    let mut c = FrameCorrector::new(template.view(), &opts(0)).unwrap();
    let mut out = Array2::zeros(frame.dim());
    let shifts = c.correct(frame.view(), out.view_mut()).unwrap();
    let rigid: Vec<f64> = expected["rigid_shift"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(shifts.rigid.to_vec(), rigid);
    assert!(shifts.patches.is_empty());
    let err = max_rel_err(&out, &reference);
    assert!(err < 1e-7, "relative error {err:e}");
}

#[test]
fn piecewise_opencv_frame_matches_caiman() {
    let frame = load2_f32("tac_frame50.npy");
    let template = load2_f32("rigid_total_template_rig.npy");
    let reference = load2_f64("tac_pw_frame50_out.npy");
    let expected = json("tac_frame50_shifts.json");
    let mut c = FrameCorrector::new(template.view(), &opts(3)).unwrap();
    assert_eq!(c.registration_grid().unwrap().starts(0), [0, 32, 64, 80]);
    let mut out = Array2::zeros(frame.dim());
    let shifts = c.correct(frame.view(), out.view_mut()).unwrap();
    let pw: Vec<[f64; 2]> = expected["pw_shifts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect();
    assert_eq!(shifts.patches, &pw[..]);
    let err = max_rel_err(&out, &reference);
    assert!(err < 1e-7, "relative error {err:e}");
}
