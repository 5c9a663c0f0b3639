//! Per-frame timing of the kernels on a 512 × 512 frame (release only, ignored by default):
//! `cargo test --release -p caiman-motion --test perf -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use caiman_motion::shift::{BorderMode, DftShifter};
use caiman_motion::{CorrectionOptions, FrameCorrector, MotionParams, Registrar, SearchWindow};
use ndarray::Array2;

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
#[allow(clippy::print_stderr)]
fn per_frame_timing_512() {
    let n = 512;
    let template = common::textured_image(n, n, 1);
    let frames: Vec<Array2<f32>> = (0..8)
        .map(|k| {
            let mut out = Array2::<f64>::zeros((n, n));
            let d = [0.37 * k as f64 - 1.3, 2.1 - 0.29 * k as f64];
            DftShifter::new([n, n]).shift_image(template.view(), 0.0, d, 0.0, BorderMode::None, out.view_mut());
            out.mapv(|v| v as f32)
        })
        .collect();
    let reps = 40;
    let time = |name: &str, f: &mut dyn FnMut(&Array2<f32>)| {
        for fr in &frames {
            f(fr);
        }
        let t0 = Instant::now();
        for i in 0..reps {
            f(&frames[i % frames.len()]);
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        eprintln!("{name:<40} {ms:8.2} ms/frame");
    };
    let mut reg = Registrar::new([n, n], 10);
    let spec = reg.spectrum(template.view(), 0.0);
    time("register_translation (rigid estimate)", &mut |f| {
        reg.register(f.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let params = MotionParams::default();
    let mut out = Array2::<f32>::zeros((n, n));
    for (name, opts) in [
        ("rigid, cubic warp (shifts_opencv)", CorrectionOptions::rigid(&params, 0.0).unwrap()),
        (
            "rigid, Fourier shift",
            CorrectionOptions { shifts_opencv: false, ..CorrectionOptions::rigid(&params, 0.0).unwrap() },
        ),
        ("pw-rigid 96/32, remap (shifts_opencv)", CorrectionOptions::piecewise(&params, 0.0).unwrap()),
        (
            "pw-rigid 96/32, Fourier + blending",
            CorrectionOptions { shifts_opencv: false, ..CorrectionOptions::piecewise(&params, 0.0).unwrap() },
        ),
    ] {
        let mut c = FrameCorrector::new(template.view(), &opts).unwrap();
        time(name, &mut |f| {
            c.correct(f.view(), out.view_mut()).unwrap();
        });
    }
}
