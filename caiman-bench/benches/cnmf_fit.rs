//! The stages of a single-field-of-view CNMF fit on one 128×128×1000 patch held in memory (a
//! synthetic movie, see [`SynthPatch`]), each once with one thread and once with two:
//! * `cnmf/init/{threads:1,threads:2}` — `initialize_components` (greedy ROI, HALS, NMF
//!   background; `K` 30, `gSig` 4, `nb` 2) with `Par::Seq` / `Par::new(2)`;
//! * `cnmf/spatial/{threads:1,threads:2}` — `update_spatial_components` from the init's `A`, `C`,
//!   `b`, `f` (per-pixel noise from `preprocess`);
//! * `cnmf/temporal/{threads:1,threads:2}` — `update_temporal_components` with `p = 1` from the
//!   spatial update's output;
//! * `cnmf/merge/{threads:1,threads:2}` — `merge_components` (`mx` 50, fast merge, `p = 0`, as in
//!   `fit`) on the `p = 0` temporal output with [`DUPLICATES`] components appended a second time
//!   (the synthetic neurons fire independently, so nothing would merge otherwise): every run
//!   merges these pairs;
//! * `cnmf/fit_refit/{threads:1,threads:2}` — `fit` (CaImAn's default `only_init`: preprocess,
//!   init, residuals) then `refit` (spatial, temporal `p = 0`, merge, spatial, temporal `p = 1`):
//!   the whole single-FOV pipeline without patches.
//!
//! `threads:1` is `Linear` with one inner thread, `threads:2` `Threads` with two workers of one
//! inner thread each (kernels running in the calling thread use both). Inputs of each stage are
//! computed once, outside the timed loop. Throughput is the movie's bytes. The neurons sit on a
//! grid and barely overlap, so the fit is easy (all 30 are found; nothing merges inside `refit`):
//! these numbers measure the kernels, not a hard data set.

use std::hint::black_box;
use std::time::Duration;

use caiman_cnmf::cnmf::{fit, preprocess, refit};
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::init::initialize_components;
use caiman_cnmf::merging::merge_components;
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::spatial::update_spatial_components;
use caiman_cnmf::temporal::update_temporal_components;
use caiman_io::Dims;
use caiman_parallel::{Executor, Linear, Par, Threads};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;

const D1: usize = 128;
const D2: usize = 128;
const FRAMES: usize = 1000;
const NEURONS: usize = 30;
const SIGMA: f64 = 4.0;
/// Components appended twice for the merge bench.
const DUPLICATES: usize = 6;
const SIZE: &str = "128x128x1000";

/// xorshift64 uniform in (0, 1) and Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn uni(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.uni().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uni()).cos()
    }
}

/// A deterministic 128×128×1000 patch as `Yr` (pixels in Fortran order × frames, f32):
/// [`NEURONS`] Gaussian footprints (σ = 4 px, on a jittered 6 × 5 grid, peak 1) with AR(1)
/// calcium (γ = 0.95, Bernoulli spikes p = 0.01, amplitudes 4–12), two smooth background
/// components (a tilted plane with a slow drift, a centred blob with a slower oscillation;
/// baseline ≈ 10) and unit Gaussian noise.
struct SynthPatch {
    yr: Array2<f32>,
}

impl SynthPatch {
    fn new() -> Self {
        let d = D1 * D2;
        let mut rng = Rng::new(2024);
        let mut yr = Array2::<f32>::zeros((d, FRAMES));

        // Background: b (d × 2) f (2 × T).
        let mut b = [vec![0f64; d], vec![0f64; d]];
        for col in 0..D2 {
            for row in 0..D1 {
                let p = row + D1 * col;
                let (y, x) = (row as f64 / D1 as f64, col as f64 / D2 as f64);
                b[0][p] = 8.0 + 2.0 * y + 1.5 * x;
                b[1][p] = 2.0 * (-((y - 0.5).powi(2) + (x - 0.5).powi(2)) / 0.18).exp();
            }
        }
        let f: [Vec<f64>; 2] = [
            (0..FRAMES).map(|t| 1.0 + 0.05 * (t as f64 / 400.0).sin()).collect(),
            (0..FRAMES).map(|t| 1.0 + 0.3 * (t as f64 / 150.0).cos()).collect(),
        ];
        for (p, mut row) in yr.rows_mut().into_iter().enumerate() {
            for (t, v) in row.iter_mut().enumerate() {
                *v = (b[0][p] * f[0][t] + b[1][p] * f[1][t] + rng.normal()) as f32;
            }
        }

        // Neurons.
        let (gy, gx) = (6usize, 5usize);
        let radius = (3.0 * SIGMA).ceil() as isize;
        let mut calcium = vec![0f64; FRAMES];
        for n in 0..NEURONS {
            let cy = (n % gy) as f64 * (D1 as f64 - 24.0) / (gy - 1) as f64 + 12.0 + 4.0 * (rng.uni() - 0.5);
            let cx = (n / gy) as f64 * (D2 as f64 - 24.0) / (gx - 1) as f64 + 12.0 + 4.0 * (rng.uni() - 0.5);
            let amp = 4.0 + 8.0 * rng.uni();
            let mut c = 0.0;
            for v in calcium.iter_mut() {
                let spike = if rng.uni() < 0.01 { amp } else { 0.0 };
                c = 0.95 * c + spike;
                *v = c;
            }
            let (ry, rx) = (cy.round() as isize, cx.round() as isize);
            for row in (ry - radius).max(0)..(ry + radius + 1).min(D1 as isize) {
                for col in (rx - radius).max(0)..(rx + radius + 1).min(D2 as isize) {
                    let r2 = (row as f64 - cy).powi(2) + (col as f64 - cx).powi(2);
                    let a = (-r2 / (2.0 * SIGMA * SIGMA)).exp();
                    let p = row as usize + D1 * col as usize;
                    for (v, &c) in yr.row_mut(p).iter_mut().zip(&calcium) {
                        *v += (a * c) as f32;
                    }
                }
            }
        }
        SynthPatch { yr }
    }

    fn fov(&self) -> Fov<'_> {
        Fov::new(Dims::planar(D1, D2), self.yr.view()).expect("Yr of the frame")
    }
}

/// CaImAn's defaults with `K` 30, `gSig` [4, 4], `nb` 2, `p` 1.
fn params() -> CnmfParams {
    let json = r#"{"data": {"fr": 30, "decay_time": 0.4},
        "init": {"K": 30, "gSig": [4, 4], "nb": 2},
        "preprocess": {"p": 1}, "temporal": {"p": 1}}"#;
    let (mut p, _) = CnmfParams::from_caiman_json(json).expect("params");
    p.check_consistency(Some(FRAMES)).expect("consistent params");
    p
}

/// The executors benched: `threads:1` and `threads:2`.
fn executors() -> (Linear, Threads) {
    (Linear::with_inner_threads(Some(1)), Threads::with_inner_threads(2, Some(1)).expect("thread pool"))
}

fn stages(c: &mut Criterion) {
    let movie = SynthPatch::new();
    let fov = movie.fov();
    let params = params();
    let (linear, threads) = executors();
    let bytes = (fov.pixels() * fov.frames() * 4) as u64;

    // Inputs, computed once (two-thread executor: the results do not depend on it).
    let init = initialize_components(fov.yr, fov.dims, &params.init, true, Par::new(2)).expect("init");
    let (sn, _) = preprocess(&fov, &params.preprocess, &threads).expect("noise");
    let start = Estimates::new(fov.dims, init.a, init.c, init.b, init.f).expect("init estimates");
    let (sp, _) = update_spatial_components(
        &fov,
        start.c.view(),
        start.f.view(),
        &start.a,
        start.b.view(),
        &sn,
        &params.spatial,
        &threads,
    )
    .expect("spatial");
    let mut after_spatial = start.subset(&sp.kept);
    after_spatial.a = sp.a;
    after_spatial.c = sp.c;
    after_spatial.b = sp.b;
    after_spatial.f = sp.f;
    let mut temporal_p0 = params.temporal.clone();
    temporal_p0.p = 0;
    let (t0, _) = update_temporal_components(
        &fov,
        &after_spatial.a,
        after_spatial.b.view(),
        after_spatial.c.view(),
        after_spatial.f.view(),
        &temporal_p0,
        &threads,
    )
    .expect("temporal p = 0");
    let mut to_merge = t0.into_estimates(&mut after_spatial.clone());
    let dup: Vec<usize> = (0..DUPLICATES.min(to_merge.n_components())).collect();
    to_merge.append(&to_merge.subset(&dup)).expect("duplicates");
    let merged = merge_components(&fov, &to_merge, &params.merging, &temporal_p0, 50, true, &threads).expect("merge");
    assert!(merged.n_merged >= dup.len(), "the duplicated components merge ({} merges)", merged.n_merged);

    let inputs =
        Inputs { fov, params: &params, sn: &sn, start: &start, after_spatial: &after_spatial, to_merge: &to_merge };

    let mut group = c.benchmark_group("cnmf");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(10));
    for (name, par) in [("threads:1", Par::Seq), ("threads:2", Par::new(2))] {
        group.bench_function(BenchmarkId::new(format!("init/{name}"), SIZE), |b| {
            b.iter(|| black_box(initialize_components(fov.yr, fov.dims, &params.init, true, par).expect("init")))
        });
    }
    executor_benches(&mut group, "threads:1", &linear, &inputs);
    executor_benches(&mut group, "threads:2", &threads, &inputs);
    group.finish();
}

/// What the executor-driven stages start from.
struct Inputs<'a> {
    fov: Fov<'a>,
    params: &'a CnmfParams,
    sn: &'a [f64],
    /// The initialisation (input of the spatial update).
    start: &'a Estimates,
    /// The first spatial update's output (input of the temporal update).
    after_spatial: &'a Estimates,
    /// The `p = 0` temporal output plus duplicates (input of the merge).
    to_merge: &'a Estimates,
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// `spatial`, `temporal`, `merge` and `fit_refit` on `exec`.
fn executor_benches<E: Executor>(group: &mut Group<'_>, name: &str, exec: &E, x: &Inputs<'_>) {
    let (fov, params) = (&x.fov, x.params);
    group.bench_function(BenchmarkId::new(format!("spatial/{name}"), SIZE), |b| {
        let s = x.start;
        b.iter(|| {
            black_box(
                update_spatial_components(fov, s.c.view(), s.f.view(), &s.a, s.b.view(), x.sn, &params.spatial, exec)
                    .expect("spatial"),
            )
        })
    });
    group.bench_function(BenchmarkId::new(format!("temporal/{name}"), SIZE), |b| {
        let s = x.after_spatial;
        b.iter(|| {
            black_box(
                update_temporal_components(fov, &s.a, s.b.view(), s.c.view(), s.f.view(), &params.temporal, exec)
                    .expect("temporal"),
            )
        })
    });
    let mut temporal_p0 = params.temporal.clone();
    temporal_p0.p = 0;
    group.bench_function(BenchmarkId::new(format!("merge/{name}"), SIZE), |b| {
        b.iter(|| {
            black_box(merge_components(fov, x.to_merge, &params.merging, &temporal_p0, 50, true, exec).expect("merge"))
        })
    });
    group.bench_function(BenchmarkId::new(format!("fit_refit/{name}"), SIZE), |b| {
        b.iter(|| {
            let (est, _) = fit(fov, params, exec).expect("fit");
            black_box(refit(fov, params, &est, exec).expect("refit"))
        })
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
