//! Piecewise-rigid behaviour on synthetic data: a smooth deformation field is recovered patch by
//! patch (OpenCV remap path, Fourier path, cubic `shifts_interpolate`), border modes of the remap
//! path, the high-pass-filter path and the data errors of `FrameCorrector`.

mod common;

use caiman_motion::shift::{BorderMode, CubicWarper, DftShifter};
use caiman_motion::{CorrectionOptions, Error, FrameCorrector};
use common::{blob_field, corr, smooth_image};
use ndarray::{Array2, s};

const N: usize = 128;

fn options() -> CorrectionOptions {
    CorrectionOptions { ..common::reference_options() }
}

/// Content displacement of the synthetic deformation at pixel (y, x).
fn displacement(y: f64, x: f64) -> [f64; 2] {
    let t = 2.0 * std::f64::consts::PI / 256.0;
    [1.2 + 0.5 * (t * x).sin(), -0.8 + 0.4 * (t * y).cos()]
}

fn deformed_pair() -> (Array2<f32>, Array2<f32>) {
    let template = blob_field(N, N, 11);
    let fy = Array2::from_shape_fn((N, N), |(y, x)| displacement(y as f64, x as f64)[0] as f32);
    let fx = Array2::from_shape_fn((N, N), |(y, x)| displacement(y as f64, x as f64)[1] as f32);
    let mut frame = Array2::zeros((N, N));
    CubicWarper::new().remap(template.view(), 0.0, fy.view(), fx.view(), BorderMode::Copy, frame.view_mut());
    (frame, template)
}

/// Corrects the deformed frame; with `tol`, every patch shift must be within `tol` of the true
/// (negated) displacement at the patch centre (a patch measures the displacement where its
/// features are, which varies by up to ±0.3 px across a 48 px patch of this field).
fn check_recovery(opts: &CorrectionOptions, tol: Option<f64>) {
    let (frame, template) = deformed_pair();
    let mut c = FrameCorrector::new(template.view(), opts).unwrap();
    let mut out = Array2::zeros((N, N));
    let grid = c.shift_grid().unwrap().clone();
    c.correct(frame.view(), out.view_mut()).unwrap();
    let shifts = c.last_shifts();
    let (c0, c1) = (grid.centers(0), grid.centers(1));
    assert_eq!(shifts.patches.len(), grid.len());
    for (k, p) in shifts.patches.iter().enumerate() {
        let Some(tol) = tol else { break };
        let d = displacement(c0[k / c1.len()], c1[k % c1.len()]);
        assert!(
            (p[0] + d[0]).abs() < tol && (p[1] + d[1]).abs() < tol,
            "patch {k}: applied {p:?}, expected {:?}",
            d.map(|v| -v)
        );
    }
    let m = 8;
    let r = corr(out.slice(s![m..N - m, m..N - m]), template.slice(s![m..N - m, m..N - m]));
    let r0 = corr(frame.slice(s![m..N - m, m..N - m]), template.slice(s![m..N - m, m..N - m]));
    assert!(r > 0.99 && r > r0, "correlation after {r}, before {r0}");
}

#[test]
fn deformation_recovered_remap_path() {
    check_recovery(&options(), Some(0.3));
}

#[test]
fn deformation_recovered_remap_path_interpolated() {
    check_recovery(&CorrectionOptions { shifts_interpolate: true, ..options() }, Some(0.3));
}

#[test]
fn deformation_recovered_fourier_path() {
    // With cv2.resize the fine grid's values are not anchored at the true patch centres (the
    // coarse values are treated as cells), so only the corrected frame is checked; with cubic
    // interpolation from the centres the fine-grid shifts follow the field.
    check_recovery(&CorrectionOptions { shifts_opencv: false, ..options() }, None);
    check_recovery(&CorrectionOptions { shifts_opencv: false, shifts_interpolate: true, ..options() }, Some(0.3));
}

#[test]
fn remap_border_modes() {
    let (frame, template) = deformed_pair();
    let mut out = Array2::zeros((N, N));
    let mut c =
        FrameCorrector::new(template.view(), &CorrectionOptions { border: BorderMode::Nan, ..options() }).unwrap();
    c.correct(frame.view(), out.view_mut()).unwrap();
    // Applied shifts are about (−1.2, +0.5): dst(p) = src(p − a) reads beyond the last rows and
    // before the first column.
    assert!(out.row(N - 1).iter().all(|v| v.is_nan()));
    assert!(out.column(0).iter().all(|v| v.is_nan()));
    assert!(out.slice(s![8..N - 8, 8..N - 8]).iter().all(|v| v.is_finite()));
    let mut copy = Array2::zeros((N, N));
    let opts = CorrectionOptions { add_to_movie: 5.0, ..options() };
    FrameCorrector::new(template.view(), &opts).unwrap().correct(frame.view(), copy.view_mut()).unwrap();
    let opts = CorrectionOptions { border: BorderMode::None, ..opts };
    FrameCorrector::new(template.view(), &opts).unwrap().correct(frame.view(), out.view_mut()).unwrap();
    // Outside taps count as 0 (before subtracting add_to_movie) instead of the replicated edge.
    let mean = |a: ndarray::ArrayView1<'_, f32>| a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
    assert!(out.column(0).iter().all(|v| v.is_finite()));
    assert!(mean(out.column(0)) < mean(copy.column(0)) - 1.0);
    assert_eq!(out.slice(s![8..N - 8, 8..N - 8]), copy.slice(s![8..N - 8, 8..N - 8]));
}

#[test]
fn high_pass_path_registers_filtered_and_warps_raw() {
    // 1p-like data: strong smooth background plus small structure; the frame is a sub-pixel
    // shift of a larger field, cropped (no wrap-around).
    let blobs = blob_field(128, 128, 5);
    let big = Array2::from_shape_fn((128, 128), |(i, j)| blobs[[i, j]] + 0.5 * (i + j) as f32);
    let mut moved = Array2::zeros((128, 128));
    CubicWarper::new().translate(big.view(), 0.0, [1.5, -2.0], BorderMode::Copy, moved.view_mut());
    let template = big.slice(s![16..112, 16..112]).to_owned();
    let frame = moved.slice(s![16..112, 16..112]).to_owned();
    let add = 3.0;
    let opts = CorrectionOptions { max_deviation_rigid: 0, gsig_filt: Some([3, 3]), add_to_movie: add, ..options() };
    let mut c = FrameCorrector::new(template.view(), &opts).unwrap();
    let mut out = Array2::zeros((96, 96));
    let sh = c.correct(frame.view(), out.view_mut()).unwrap().rigid;
    assert!((sh[0] + 1.5).abs() < 0.11 && (sh[1] - 2.0).abs() < 0.11, "{sh:?}");
    let _ = DftShifter::new;
    // CaImAn warps the raw frame without add_to_movie and still subtracts it.
    let mut raw = Array2::zeros((96, 96));
    CubicWarper::new().translate(frame.view(), 0.0, sh, BorderMode::Copy, raw.view_mut());
    for (a, b) in out.iter().zip(raw.iter()) {
        assert!((f64::from(*a) - (f64::from(*b) - add)).abs() < 1e-4);
    }
    // Filtering with Fourier shifting is refused, as in CaImAn.
    let bad = CorrectionOptions { shifts_opencv: false, ..opts };
    assert!(matches!(FrameCorrector::new(template.view(), &bad), Err(Error::Unsupported(_))));
}

#[test]
fn data_errors_are_typed() {
    let template = smooth_image(64, 64, 10, 1);
    let mut c =
        FrameCorrector::new(template.view(), &CorrectionOptions { max_deviation_rigid: 0, ..options() }).unwrap();
    let mut out = Array2::zeros((64, 64));
    let wrong = Array2::<f32>::zeros((64, 63));
    assert!(matches!(c.correct(wrong.view(), out.view_mut()), Err(Error::ShapeMismatch { .. })));
    let mut nan = template.clone();
    nan[[3, 3]] = f32::NAN;
    assert!(matches!(c.correct(nan.view(), out.view_mut()), Err(Error::NonFinite { .. })));
    assert!(matches!(FrameCorrector::new(nan.view(), &options()), Err(Error::NonFinite { .. })));
    let small = smooth_image(40, 40, 5, 2);
    assert!(matches!(FrameCorrector::new(small.view(), &options()), Err(Error::PatchLargerThanImage { .. })));
    let interp = CorrectionOptions { shifts_interpolate: true, strides: [32, 32], ..options() };
    let three = smooth_image(96, 96, 5, 3); // 3 × 3 patches: too few for cubic interpolation
    assert!(matches!(FrameCorrector::new(three.view(), &interp), Err(Error::Unsupported(_))));
}
