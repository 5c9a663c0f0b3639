//! caiman-cnmf kernels (single thread unless the id names a strategy):
//! * `oasis_ar1/*` — OASIS AR(1) on one 10 000-sample trace: fixed λ, noise-constrained with known
//!   g and sn, and with g and sn estimated (CaImAn's Cython: ≈0.45 ms, ≈1.3 ms, ≈7 ms on this
//!   machine class, issue 5);
//! * `oasis_ar2/constrained_known` — AR(2), noise-constrained;
//! * `deconvolve_traces/{threads:1,threads:2}` — 64 traces of 3 000 samples through the executor;
//! * `trace_noise/*` — `GetSn` and `estimate_time_constant` on a 10 000-sample trace;
//! * `online_oasis/ar1_fit_next` — the incremental OASIS over 10 000 samples;
//! * `exceptionality/100x3000` — event exceptionality of 100 traces;
//! * `movie/{read,summary_images,pixel_noise}` — a 512×512×500 f32 `.npy` movie streamed from
//!   the page cache: plain reading vs the summary-image pass vs pixel noise, threads:1 and
//!   threads:2, so the ratio to the read rate is read off one run.

use std::hint::black_box;

use caiman_bench::write_fixture;
use caiman_cnmf::evaluation::compute_event_exceptionality;
use caiman_cnmf::foopsi::{FoopsiOptions, constrained_foopsi, deconvolve_traces};
use caiman_cnmf::noise::{NoiseFftOptions, NoiseMethod, estimate_time_constant, get_sn, pixel_noise};
use caiman_cnmf::oasis::oasis_ar1;
use caiman_cnmf::online_oasis::{OnlineOasis, OnlineOasisParams};
use caiman_cnmf::summary::{SummaryOptions, summary_images};
use caiman_io::{OpenOptions, Shape, WriteOptions};
use caiman_parallel::Threads;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;

/// An AR trace with Bernoulli spikes, baseline 1 and white noise of sd `sn` (xorshift generator).
fn trace(seed: u64, t: usize, g: &[f64], sn: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut c = vec![0.0; t];
    let mut y = vec![0.0; t];
    for i in 0..t {
        let spike = if uni() < 0.5 / 30.0 { 1.0 } else { 0.0 };
        let mut v = spike;
        for (k, gk) in g.iter().enumerate() {
            if i > k {
                v += gk * c[i - k - 1];
            }
        }
        c[i] = v;
        let noise = (-2.0 * uni().ln()).sqrt() * (2.0 * std::f64::consts::PI * uni()).cos();
        y[i] = 1.0 + v + sn * noise;
    }
    y
}

fn deconvolution(c: &mut Criterion) {
    let y = trace(1, 10_000, &[0.95], 0.3);
    let y2 = trace(2, 10_000, &[1.7, -0.71], 0.3);
    let mut group = c.benchmark_group("oasis_ar1");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("fixed_lambda", "T10000"), |b| {
        b.iter(|| black_box(oasis_ar1(black_box(&y), 0.95, 0.5, 0.0)))
    });
    let known = FoopsiOptions { p: 1, g: Some(vec![0.95]), sn: Some(0.3), ..FoopsiOptions::default() };
    group.bench_function(BenchmarkId::new("constrained_known", "T10000"), |b| {
        b.iter(|| black_box(constrained_foopsi(black_box(&y), &known).expect("foopsi")))
    });
    let estimated = FoopsiOptions { p: 1, ..FoopsiOptions::default() };
    group.bench_function(BenchmarkId::new("constrained_estimated", "T10000"), |b| {
        b.iter(|| black_box(constrained_foopsi(black_box(&y), &estimated).expect("foopsi")))
    });
    group.finish();

    let mut group = c.benchmark_group("oasis_ar2");
    let known2 = FoopsiOptions { p: 2, g: Some(vec![1.7, -0.71]), sn: Some(0.3), ..FoopsiOptions::default() };
    group.bench_function(BenchmarkId::new("constrained_known", "T10000"), |b| {
        b.iter(|| black_box(constrained_foopsi(black_box(&y2), &known2).expect("foopsi")))
    });
    group.finish();

    let (k, t) = (64, 3000);
    let mut traces = Array2::<f64>::zeros((k, t));
    for (i, mut row) in traces.rows_mut().into_iter().enumerate() {
        row.assign(&ndarray::Array1::from(trace(10 + i as u64, t, &[0.95], 0.3)));
    }
    let mut group = c.benchmark_group("deconvolve_traces");
    group.throughput(Throughput::Elements(k as u64));
    group.sample_size(10);
    for workers in [1, 2] {
        let exec = Threads::new(workers).expect("thread pool");
        group.bench_function(BenchmarkId::new(format!("threads:{workers}"), "64xT3000"), |b| {
            b.iter(|| black_box(deconvolve_traces(traces.view(), &estimated, &exec).expect("deconvolve")))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("trace_noise");
    group.bench_function(BenchmarkId::new("get_sn_logmexp", "T10000"), |b| {
        b.iter(|| black_box(get_sn(black_box(&y), [0.25, 0.5], NoiseMethod::Logmexp).expect("sn")))
    });
    group.bench_function(BenchmarkId::new("estimate_time_constant_p2", "T10000"), |b| {
        b.iter(|| black_box(estimate_time_constant(black_box(&y2), 2, 0.3, 5, 1.0).expect("g")))
    });
    group.finish();

    let mut group = c.benchmark_group("online_oasis");
    group.throughput(Throughput::Elements(y.len() as u64));
    group.bench_function(BenchmarkId::new("ar1_fit_next", "T10000"), |b| {
        b.iter(|| {
            let mut o = OnlineOasis::new(OnlineOasisParams::ar1(0.95), 0).expect("online oasis");
            for &v in &y {
                o.fit_next(v).expect("fit_next");
            }
            black_box(o.t())
        })
    });
    group.finish();

    let rows: Vec<f64> = (0..100).flat_map(|i| trace(100 + i as u64, 3000, &[0.95], 0.3)).collect();
    let ex = Array2::from_shape_vec((100, 3000), rows).expect("100 × 3000");
    let mut group = c.benchmark_group("exceptionality");
    group.bench_function(BenchmarkId::new("N12", "100x3000"), |b| {
        b.iter(|| black_box(compute_event_exceptionality(ex.view(), 12, false, 3.0).expect("exceptionality")))
    });
    group.finish();
}

fn movie_passes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = Shape::new(500, caiman_bench::FRAME_512);
    let path = write_fixture(&dir.path().join("m.npy"), shape, &WriteOptions::default()).expect("fixture");
    let open = OpenOptions::default();
    let mut group = c.benchmark_group("movie");
    group.throughput(Throughput::Bytes((shape.len() * 4) as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("read", "512x512x500"), |b| {
        let mut buf = vec![0f32; shape.dims.pixels() * 50];
        b.iter(|| {
            let mut src = caiman_io::open(&path, &open).expect("open");
            for t in (0..shape.frames).step_by(50) {
                src.read_frames(t, &mut buf).expect("read");
            }
            black_box(buf[0])
        })
    });
    for workers in [1, 2] {
        let exec = Threads::new(workers).expect("thread pool");
        let opts = SummaryOptions { fft: false, ..SummaryOptions::default() };
        group.bench_function(BenchmarkId::new(format!("summary_images/threads:{workers}"), "512x512x500"), |b| {
            b.iter(|| black_box(summary_images(&path, &open, &opts, &exec).expect("summary").frames))
        });
        group.bench_function(BenchmarkId::new(format!("pixel_noise/threads:{workers}"), "512x512x500"), |b| {
            b.iter(|| {
                black_box(pixel_noise(&path, &open, &NoiseFftOptions::default(), 1 << 30, &exec).expect("noise").frames)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, deconvolution, movie_passes);
criterion_main!(benches);
