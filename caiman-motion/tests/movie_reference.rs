//! Whole passes of CaImAn's `MotionCorrect` on `motion_movie.tif` (300 frames, 128 × 128),
//! replayed frame by frame against CaImAn 1.12.1's outputs: the rigid pass (initial template by
//! the legacy matcher, then `tile_and_correct` per frame; OpenCV and Fourier shifting) and the
//! piecewise-rigid passes (`pw`: remap; `pw_fft`: Fourier shifts + blending). Compared: rigid
//! shifts, patch shifts (`*_x/y_shifts_els`), the saved corrected frames (`*_corrected_first20`,
//! values = corrected frame + add_to_movie = −6), chunk templates and total templates.
//!
//! Measured: every shift identical, every corrected frame and template identical to the last
//! float32 bit. The asserts allow one float32 ulp (2e-7 relative) for platform `libm` differences.
//! The movie and the 1.3 MB corrected-frame fixtures are read from the shared reference tree; the
//! tests return early when it is absent.

mod common;

use caiman_motion::template::{Accumulation, NanMeanAccumulator, nanmedian_templates};
use caiman_motion::{CorrectionOptions, FrameCorrector};
use common::{load_f32, load_f64, load2_f32, shared};
use ndarray::{Array2, Array3, Axis};

const FRAMES: usize = 20;

fn movie(frames: usize) -> Option<Array3<f32>> {
    let path = shared("motion_movie.tif")?;
    let mut src = caiman_io::open(&path, &caiman_io::OpenOptions::default()).ok()?;
    let d = src.info().shape.dims.pixels();
    let mut buf = vec![0.0f32; d * frames];
    src.read_frames(0, &mut buf).ok()?;
    Array3::from_shape_vec((frames, 128, 128), buf).ok()
}

fn options(shifts_opencv: bool) -> CorrectionOptions {
    CorrectionOptions { shifts_opencv, add_to_movie: -6.0, ..common::reference_options() }
}

fn run(run: &str, template: &str, shifts_opencv: bool, n_patches: usize) {
    let (Some(mov), Some(corr), Some(xs), Some(ys)) = (
        movie(FRAMES),
        shared(&format!("{run}_corrected_first20.npy")),
        shared(&format!("{run}_x_shifts_els.npy")),
        shared(&format!("{run}_y_shifts_els.npy")),
    ) else {
        return;
    };
    let corrected = load_f32(corr).into_dimensionality::<ndarray::Ix3>().unwrap();
    let xs = load_f64(xs).into_dimensionality::<ndarray::Ix2>().unwrap();
    let ys = load_f64(ys).into_dimensionality::<ndarray::Ix2>().unwrap();
    let template = load2_f32(template);
    let mut c = FrameCorrector::new(template.view(), &options(shifts_opencv)).unwrap();
    assert_eq!(c.shift_grid().unwrap().len(), n_patches);
    let mut out = Array2::<f32>::zeros((128, 128));
    let (mut worst_shift, mut worst_px) = (0.0f64, 0.0f64);
    for t in 0..FRAMES {
        let shifts = c.correct(mov.index_axis(Axis(0), t), out.view_mut()).unwrap();
        assert_eq!(shifts.patches.len(), n_patches);
        for (k, p) in shifts.patches.iter().enumerate() {
            worst_shift = worst_shift.max((p[0] - xs[[t, k]]).abs()).max((p[1] - ys[[t, k]]).abs());
        }
        let reference = corrected.index_axis(Axis(0), t);
        for (&a, &b) in out.iter().zip(reference.iter()) {
            let saved = f64::from((f64::from(a) + -6.0) as f32);
            worst_px = worst_px.max((saved - f64::from(b)).abs() / f64::from(b).abs().max(1.0));
        }
    }
    assert!(worst_shift < 1e-9, "{run}: patch shifts differ by {worst_shift:e}");
    assert!(worst_px < 2e-7, "{run}: corrected frames differ by {worst_px:e} (relative)");
}

#[test]
fn pw_opencv_first_frames_match_caiman() {
    run("pw", "rigid_total_template_rig.npy", true, 16);
}

#[test]
fn pw_fft_first_frames_match_caiman() {
    run("pw_fft", "pw_fft_total_template_rig.npy", false, 196);
}

/// The whole pw pass (300 frames, 3 chunks of 100): chunk templates = NaN-mean of the corrected
/// frames, new template = their NaN-median; must equal CaImAn's `total_template_els`.
fn pass_template(run: &str, template: &str, shifts_opencv: bool) {
    let (Some(mov), Some(xs)) = (movie(300), shared(&format!("{run}_x_shifts_els.npy"))) else {
        return;
    };
    let xs = load_f64(xs).into_dimensionality::<ndarray::Ix2>().unwrap();
    let template = load2_f32(template);
    let expected = load2_f32(&format!("{run}_total_template_els.npy"));
    let mut c = FrameCorrector::new(template.view(), &options(shifts_opencv)).unwrap();
    let mut out = Array2::<f32>::zeros((128, 128));
    let mut chunk_templates = Vec::new();
    let mut worst_shift = 0.0f64;
    for chunk in 0..3 {
        let mut acc = NanMeanAccumulator::new([128, 128], Accumulation::NumpyF32);
        for t in chunk * 100..(chunk + 1) * 100 {
            let s = c.correct(mov.index_axis(Axis(0), t), out.view_mut()).unwrap();
            for (k, p) in s.patches.iter().enumerate() {
                worst_shift = worst_shift.max((p[0] - xs[[t, k]]).abs());
            }
            acc.add(out.view());
        }
        let mut tmpl = Array2::<f32>::zeros((128, 128));
        acc.finish(tmpl.view_mut());
        chunk_templates.push(tmpl);
    }
    assert!(worst_shift < 1e-9, "{run}: axis-0 patch shifts differ by {worst_shift:e}");
    let views: Vec<_> = chunk_templates.iter().map(|t| t.view()).collect();
    let ours = nanmedian_templates(&views).unwrap();
    let worst = ours
        .iter()
        .zip(expected.iter())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs() / f64::from(b).abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "{run}: total_template_els differs by {worst:e} (relative)");
}

#[test]
fn pw_pass_template_matches_caiman() {
    pass_template("pw", "rigid_total_template_rig.npy", true);
}

#[test]
fn pw_fft_pass_template_matches_caiman() {
    pass_template("pw_fft", "pw_fft_total_template_rig.npy", false);
}

#[test]
fn nanmedian_of_chunk_templates_is_total_template() {
    let chunks = common::load3_f32("rigid_templates_rig.npy");
    let views: Vec<_> = chunks.outer_iter().collect();
    let ours = nanmedian_templates(&views).unwrap();
    assert_eq!(ours, load2_f32("rigid_total_template_rig.npy"));
}

/// The whole rigid pass: CaImAn's initial template from the subsample `0, 7, 14, …`
/// (`T // 50 + 1`), then 300 frames in 3 chunks against it. Compares the shifts
/// (`rigid_shifts_rig`), the chunk templates, the total template and (OpenCV path) the first 20
/// saved frames. The `pw_fft` run's rigid pass used Fourier shifting: same shifts, its own
/// chunk templates.
fn rigid_pass(shifts_opencv: bool) {
    let (Some(mov), Some(shifts_ref), Some(corr)) =
        (movie(300), shared("rigid_shifts_rig.npy"), shared("rigid_corrected_first20.npy"))
    else {
        return;
    };
    let shifts_ref = load_f64(shifts_ref).into_dimensionality::<ndarray::Ix2>().unwrap();
    let corrected = load_f32(corr).into_dimensionality::<ndarray::Ix3>().unwrap();
    let (chunks_ref, total_ref) = if shifts_opencv {
        (common::load3_f32("rigid_templates_rig.npy"), load2_f32("rigid_total_template_rig.npy"))
    } else {
        (common::load3_f32("pw_fft_templates_rig.npy"), load2_f32("pw_fft_total_template_rig.npy"))
    };
    let sub = mov.slice(ndarray::s![..;7, .., ..]);
    let init = caiman_motion::legacy::initial_template(sub, [6, 6]).unwrap();
    let mut opts = options(shifts_opencv);
    opts.max_deviation_rigid = 0;
    let mut c = FrameCorrector::new(init.view(), &opts).unwrap();
    let mut out = Array2::<f32>::zeros((128, 128));
    let mut chunk_templates = Vec::new();
    let (mut n_diff, mut worst_px) = (0, 0.0f64);
    for chunk in 0..3 {
        let mut acc = NanMeanAccumulator::new([128, 128], Accumulation::NumpyF32);
        for t in chunk * 100..(chunk + 1) * 100 {
            let s = c.correct(mov.index_axis(Axis(0), t), out.view_mut()).unwrap();
            if s.rigid != [shifts_ref[[t, 0]], shifts_ref[[t, 1]]] {
                n_diff += 1;
            }
            if t < FRAMES && shifts_opencv {
                for (&a, &b) in out.iter().zip(corrected.index_axis(Axis(0), t).iter()) {
                    let saved = f64::from((f64::from(a) + -6.0) as f32);
                    worst_px = worst_px.max((saved - f64::from(b)).abs() / f64::from(b).abs().max(1.0));
                }
            }
            acc.add(out.view());
        }
        let mut tmpl = Array2::<f32>::zeros((128, 128));
        acc.finish(tmpl.view_mut());
        chunk_templates.push(tmpl);
    }
    let rel = |a: &Array2<f32>, b: ndarray::ArrayView2<'_, f32>| {
        a.iter()
            .zip(b.iter())
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs() / f64::from(y).abs().max(1.0))
            .fold(0.0, f64::max)
    };
    let worst_chunk = chunk_templates.iter().zip(chunks_ref.outer_iter()).map(|(a, b)| rel(a, b)).fold(0.0, f64::max);
    let views: Vec<_> = chunk_templates.iter().map(|t| t.view()).collect();
    let total = nanmedian_templates(&views).unwrap();
    let worst_total = rel(&total, total_ref.view());
    assert_eq!(n_diff, 0, "rigid shifts differing from CaImAn: {n_diff} of 300");
    assert!(worst_px < 2e-7, "corrected frames differ by {worst_px:e}");
    assert!(worst_chunk < 1e-6, "chunk templates differ by {worst_chunk:e}");
    assert!(worst_total < 1e-6, "total template differs by {worst_total:e}");
}

#[test]
fn rigid_pass_matches_caiman() {
    rigid_pass(true);
}

#[test]
fn rigid_fourier_pass_matches_caiman() {
    rigid_pass(false);
}
