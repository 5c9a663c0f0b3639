//! Per-frame timing of the kernels on a 512 × 512 frame (release only, ignored by default):
//! `cargo test --release -p caiman-motion --test perf -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use caiman_motion::shift::{BorderMode, DftShifter};
use caiman_motion::{CorrectionOptions, FrameCorrector, MotionParams, Precision, Registrar, SearchWindow};
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
    let mut f64fft = caiman_motion::fft::Fft2d::<f64>::new([n, n]);
    let mut s64 = caiman_motion::fft::Spectrum::<f64>::zeros([n, n]);
    time("fft2 forward f64", &mut |f| f64fft.forward(f.view(), 0.0, &mut s64));
    let mut f32fft = caiman_motion::fft::Fft2d::<f32>::new([n, n]);
    let mut s32 = caiman_motion::fft::Spectrum::<f32>::zeros([n, n]);
    time("fft2 forward f32", &mut |f| f32fft.forward(f.view(), 0.0, &mut s32));
    let mut reg = Registrar::<f64>::new([n, n], 1);
    let spec = reg.spectrum(template.view(), 0.0);
    time("register_translation f64 u=1", &mut |f| {
        reg.register(f.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let mut reg = Registrar::<f32>::new([n, n], 1);
    let spec = reg.spectrum(template.view(), 0.0);
    time("register_translation f32 u=1", &mut |f| {
        reg.register(f.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let mut reg = Registrar::<f64>::new([n, n], 10);
    let spec = reg.spectrum(template.view(), 0.0);
    time("register_translation f64 (rigid estimate)", &mut |f| {
        reg.register(f.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let mut reg = Registrar::<f32>::new([n, n], 10);
    let spec = reg.spectrum(template.view(), 0.0);
    time("register_translation f32 (rigid estimate)", &mut |f| {
        reg.register(f.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let mut reg = Registrar::<f32>::new([128, 128], 10);
    let spec = reg.spectrum(template.slice(ndarray::s![..128, ..128]), 0.0);
    time("register_translation f32 128x128 patch", &mut |f| {
        reg.register(f.slice(ndarray::s![..128, ..128]), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
    });
    let mut w = caiman_motion::shift::CubicWarper::new();
    let mut out = Array2::<f32>::zeros((n, n));
    time("translate f64 (OpenCV-exact)", &mut |f| {
        w.translate(f.view(), 0.0, [1.37, -2.21], BorderMode::Copy, out.view_mut());
    });
    time("translate f32 (separable)", &mut |f| {
        w.translate_fast(f.view(), 0.0, [1.37, -2.21], BorderMode::Copy, out.view_mut());
    });
    let fy = Array2::from_shape_fn((n, n), |(i, j)| 1.0 + (i as f32 * 0.01).sin() + 0.001 * j as f32);
    let fx = Array2::from_shape_fn((n, n), |(i, j)| -2.0 + (j as f32 * 0.013).cos() + 0.001 * i as f32);
    time("remap f64 (OpenCV-exact)", &mut |f| {
        w.remap(f.view(), 0.0, fy.view(), fx.view(), BorderMode::Copy, out.view_mut());
    });
    time("remap f32", &mut |f| {
        w.remap_fast(f.view(), 0.0, fy.view(), fx.view(), BorderMode::Copy, out.view_mut());
    });
    let params = MotionParams::default();
    let f64p = MotionParams { precision: Precision::F64, ..MotionParams::default() };
    for (name, opts) in [
        ("rigid f32, cubic warp", CorrectionOptions::rigid(&params, 0.0).unwrap()),
        ("pw-rigid f32 96/32, remap", CorrectionOptions::piecewise(&params, 0.0).unwrap()),
        ("rigid f64, cubic warp", CorrectionOptions::rigid(&f64p, 0.0).unwrap()),
        ("pw-rigid f64 96/32, remap", CorrectionOptions::piecewise(&f64p, 0.0).unwrap()),
    ] {
        let mut c = FrameCorrector::new(template.view(), &opts).unwrap();
        time(name, &mut |f| {
            c.correct(f.view(), out.view_mut()).unwrap();
        });
    }
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

/// Where a chunk's time goes on a real 512 × 512 movie (`CAIMAN_PERF_MOVIE`, e.g. the output of
/// `caiman synth`): reading alone, then whole chunks (no output) in both precisions.
#[test]
#[ignore = "timing; run in release with --ignored --nocapture and CAIMAN_PERF_MOVIE set"]
#[allow(clippy::print_stderr)]
fn chunk_breakdown() {
    let Ok(path) = std::env::var("CAIMAN_PERF_MOVIE") else {
        eprintln!("CAIMAN_PERF_MOVIE not set");
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut src = caiman_io::open(&path, &caiman_io::OpenOptions::default()).unwrap();
    let d = src.dims().pixels();
    let n = 160;
    let mut buf = vec![0f32; 16 * d];
    let t0 = Instant::now();
    for t in (0..n).step_by(16) {
        src.read_frames(t, &mut buf).unwrap();
    }
    eprintln!("read {:.2} ms/frame", t0.elapsed().as_secs_f64() * 1e3 / n as f64);
    let tpl: Vec<f32> = buf[..d].to_vec();
    // Writing alone: 160 frames into a pre-sized F-order memmap (caiman-io's region writer).
    let dir = tempfile::tempdir().unwrap();
    let shape = caiman_io::Shape { dims: src.dims(), frames: n };
    let pending = caiman_io::mmap::PendingMmap::create(&dir.path().join("w.mmap"), shape, caiman_io::Order::F).unwrap();
    let mut w = caiman_io::mmap::MmapRegionWriter::open(pending.tmp_path(), shape, caiman_io::Order::F).unwrap();
    let t0 = Instant::now();
    for t in (0..n).step_by(16) {
        w.write_frames(t, &buf).unwrap();
    }
    w.flush().unwrap();
    eprintln!("write (F-order memmap) {:.2} ms/frame", t0.elapsed().as_secs_f64() * 1e3 / n as f64);
    drop(w);
    drop(pending);
    for precision in [Precision::F32, Precision::F64] {
        for pw in [false, true] {
            let params = MotionParams { precision, pw_rigid: pw, ..MotionParams::default() };
            let chunk = caiman_motion::batch::CorrectChunk {
                inputs: vec![path.clone()],
                open: caiman_io::OpenOptions::default(),
                frames: 0..n,
                template: tpl.clone(),
                params_json: serde_json::to_string(&params).unwrap(),
                kind: if pw {
                    caiman_motion::batch::PassKind::Piecewise
                } else {
                    caiman_motion::batch::PassKind::Rigid
                },
                add_to_movie: 0.0,
                output: None,
            };
            let t0 = Instant::now();
            chunk.execute().unwrap();
            eprintln!("chunk {precision:?} pw={pw}: {:.2} ms/frame", t0.elapsed().as_secs_f64() * 1e3 / n as f64);
        }
    }
}
