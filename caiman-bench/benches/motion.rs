//! caiman-motion kernels on 512×512 frames of a synthetic two-photon movie, in both arithmetics
//! (`f32`: the default fast path; `f64`: CaImAn's exact decisions):
//! * `motion_frame`: one frame, single thread — registration against a cached template spectrum,
//!   rigid correction (registration + cubic warp), piecewise-rigid correction with CaImAn's
//!   default grid (96/32) on the remap path, and (f64 only) the Fourier path;
//! * `motion_frames_per_s`: frames/s of rigid and piecewise-rigid correction of a 64-frame
//!   movie split into chunks mapped over 1 and 2 worker threads (one `FrameCorrector` per chunk,
//!   as the batch driver does; reading and writing are excluded — the CLI run measures those).

use std::hint::black_box;

use caiman_io::synth::{SynthParams, generate};
use caiman_motion::{CorrectionOptions, FrameCorrector, MotionParams, Precision, Registrar, SearchWindow};
use caiman_parallel::{Executor, Task, TaskCtx, TaskError, Threads};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

fn params(precision: Precision) -> MotionParams {
    MotionParams { precision, ..MotionParams::default() }
}

fn motion_kernels(c: &mut Criterion) {
    let sp = SynthParams { dims: [512, 512], frames: 12, n_neurons: 500, seed: 3, ..SynthParams::default() };
    let (movie, _) = generate(&sp).expect("synthetic movie");
    let view = movie.view();
    let template = view.index_axis(Axis(0), 0).to_owned();
    let frame = view.index_axis(Axis(0), 7).to_owned();
    let mut group = c.benchmark_group("motion_frame");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    let mut reg64 = Registrar::<f64>::new([512, 512], 10);
    let spec64 = reg64.spectrum(template.view(), 0.0);
    group.bench_function(BenchmarkId::new("register_translation_f64", "512x512"), |b| {
        b.iter(|| {
            black_box(reg64.register(frame.view(), 0.0, &spec64, &SearchWindow::MaxShifts([6, 6])).expect("register"))
        })
    });
    let mut reg32 = Registrar::<f32>::new([512, 512], 10);
    let spec32 = reg32.spectrum(template.view(), 0.0);
    group.bench_function(BenchmarkId::new("register_translation_f32", "512x512"), |b| {
        b.iter(|| {
            black_box(reg32.register(frame.view(), 0.0, &spec32, &SearchWindow::MaxShifts([6, 6])).expect("register"))
        })
    });

    let mut out = Array2::<f32>::zeros((512, 512));
    let (p32, p64) = (params(Precision::F32), params(Precision::F64));
    let cases = [
        ("rigid_cubic_f32", CorrectionOptions::rigid(&p32, 0.0).expect("options")),
        ("rigid_cubic_f64", CorrectionOptions::rigid(&p64, 0.0).expect("options")),
        ("pw_rigid_remap_96_32_f32", CorrectionOptions::piecewise(&p32, 0.0).expect("options")),
        ("pw_rigid_remap_96_32_f64", CorrectionOptions::piecewise(&p64, 0.0).expect("options")),
        (
            "pw_rigid_fft_96_32_f64",
            CorrectionOptions { shifts_opencv: false, ..CorrectionOptions::piecewise(&p64, 0.0).expect("options") },
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

/// One chunk of in-memory frames corrected by its own `FrameCorrector` (bench-only task: the
/// frames travel with the task, which is fine for threads).
#[derive(Clone, Serialize, Deserialize)]
struct BenchChunk {
    frames: Vec<f32>,
    template: Vec<f32>,
    pw: bool,
    precision: Precision,
}

impl Task for BenchChunk {
    const NAME: &'static str = "bench.motion_chunk";
    type Output = f64;

    fn run(self, _ctx: &TaskCtx) -> Result<f64, TaskError> {
        let p = params(self.precision);
        let opts = if self.pw { CorrectionOptions::piecewise(&p, 0.0) } else { CorrectionOptions::rigid(&p, 0.0) }
            .map_err(|e| TaskError::msg(e.to_string()))?;
        let tpl = ArrayView2::from_shape((512, 512), &self.template).map_err(|e| TaskError::msg(e.to_string()))?;
        let mut c = FrameCorrector::new(tpl, &opts).map_err(|e| TaskError::msg(e.to_string()))?;
        let mut out = Array2::<f32>::zeros((512, 512));
        let mut acc = 0.0;
        for f in self.frames.chunks_exact(512 * 512) {
            let fv = ArrayView2::from_shape((512, 512), f).map_err(|e| TaskError::msg(e.to_string()))?;
            acc += c.correct(fv, out.view_mut()).map_err(|e| TaskError::msg(e.to_string()))?.rigid[0];
        }
        Ok(acc)
    }
}

fn motion_throughput(c: &mut Criterion) {
    let n = 64;
    let sp = SynthParams { dims: [512, 512], frames: n, n_neurons: 500, seed: 5, ..SynthParams::default() };
    let (movie, _) = generate(&sp).expect("synthetic movie");
    let all: Vec<f32> = movie.view().iter().copied().collect();
    let template: Vec<f32> = all[..512 * 512].to_vec();
    let mut group = c.benchmark_group("motion_frames_per_s");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    for workers in [1usize, 2] {
        let exec = Threads::new(workers).expect("thread pool");
        for pw in [false, true] {
            for precision in [Precision::F32, Precision::F64] {
                let id = format!("{}_{:?}", if pw { "pw_rigid" } else { "rigid" }, precision).to_lowercase();
                let tasks: Vec<BenchChunk> = all
                    .chunks(16 * 512 * 512)
                    .map(|f| BenchChunk { frames: f.to_vec(), template: template.clone(), pw, precision })
                    .collect();
                group.bench_function(BenchmarkId::new(id, format!("512x512x{n}/workers={workers}")), |b| {
                    b.iter(|| black_box(exec.map(tasks.clone()).expect("map")))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, motion_kernels, motion_throughput);
criterion_main!(benches);
