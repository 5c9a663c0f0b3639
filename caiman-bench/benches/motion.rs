//! caiman-motion kernels on one 512×512 frame of a synthetic two-photon movie (single thread):
//! registration against a cached template spectrum, rigid correction (registration + OpenCV-exact
//! cubic warp), and piecewise-rigid correction with CaImAn's default grid (96/32) on the remap
//! path and on the Fourier path.

use std::hint::black_box;

use caiman_io::synth::{SynthParams, generate};
use caiman_motion::{CorrectionOptions, FrameCorrector, MotionParams, Registrar, SearchWindow};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, Axis};

fn motion_kernels(c: &mut Criterion) {
    let params = SynthParams { dims: [512, 512], frames: 12, n_neurons: 500, seed: 3, ..SynthParams::default() };
    let (movie, _) = generate(&params).expect("synthetic movie");
    let view = movie.view();
    let template = view.index_axis(Axis(0), 0).to_owned();
    let frame = view.index_axis(Axis(0), 7).to_owned();
    let mut group = c.benchmark_group("motion_frame");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    let mut reg = Registrar::new([512, 512], 10);
    let spec = reg.spectrum(template.view(), 0.0);
    group.bench_function(BenchmarkId::new("register_translation", "512x512"), |b| {
        b.iter(|| {
            black_box(reg.register(frame.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).expect("register"))
        })
    });

    let mut out = Array2::<f32>::zeros((512, 512));
    let mp = MotionParams::default();
    let cases = [
        ("rigid_cubic", CorrectionOptions::rigid(&mp, 0.0).expect("options")),
        ("pw_rigid_remap_96_32", CorrectionOptions::piecewise(&mp, 0.0).expect("options")),
        (
            "pw_rigid_fft_96_32",
            CorrectionOptions { shifts_opencv: false, ..CorrectionOptions::piecewise(&mp, 0.0).expect("options") },
        ),
    ];
    for (name, opts) in cases {
        let mut corrector = FrameCorrector::new(template.view(), &opts).expect("corrector");
        group.bench_function(BenchmarkId::new(name, "512x512"), |b| {
            b.iter(|| {
                corrector.correct(frame.view(), out.view_mut()).expect("correct");
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, motion_kernels);
criterion_main!(benches);
