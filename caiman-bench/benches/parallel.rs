//! caiman-parallel: per-task overhead of each strategy (empty tasks) and throughput of a
//! CPU-bound DFT task at 1 and 2 workers, every strategy side by side in one run.
//!
//! Inner threads are fixed at 1, so only the strategies' own parallelism is measured. Worker
//! processes are started before measuring (start-up is its own benchmark) and are this bench
//! executable itself, hence the `serve_if_worker` call at the top of `main`.

use std::hint::black_box;
use std::io::Write;

use caiman_parallel::{AnyExecutor, Backend, Executor, Registry, Task, TaskCtx, TaskError};
use criterion::{BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// Does nothing: measures the cost of a task's round trip through an executor.
#[derive(Clone, Serialize, Deserialize)]
struct Empty;

impl Task for Empty {
    const NAME: &'static str = "bench.empty";
    type Output = ();
    fn run(self, _: &TaskCtx) -> Result<(), TaskError> {
        Ok(())
    }
}

/// A naive real-to-complex DFT of `n` samples (n² complex multiply-adds with a twiddle table):
/// a fixed amount of CPU-bound float work that returns only a checksum.
#[derive(Clone, Serialize, Deserialize)]
struct Dft {
    n: u32,
    seed: u64,
}

impl Task for Dft {
    const NAME: &'static str = "bench.dft";
    type Output = f64;
    fn run(self, _: &TaskCtx) -> Result<f64, TaskError> {
        Ok(naive_dft_checksum(self.n as usize, self.seed))
    }
}

fn naive_dft_checksum(n: usize, seed: u64) -> f64 {
    let signal: Vec<f64> = (0..n as u64)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..n)
        .map(|k| {
            let a = -std::f64::consts::TAU * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .unzip();
    let mut power = 0.0;
    for k in 0..n {
        let (mut re, mut im) = (0.0, 0.0);
        let mut idx = 0;
        for &x in &signal {
            re += x * cos[idx];
            im += x * sin[idx];
            idx += k;
            if idx >= n {
                idx -= n;
            }
        }
        power += re * re + im * im;
    }
    power
}

const STRATEGIES: [&str; 5] = ["linear", "threads:1", "threads:2", "processes:1", "processes:2"];

fn executor(spec: &str) -> AnyExecutor {
    let backend: Backend = spec.parse().expect("backend");
    let executor = backend.with_inner_threads(Some(1)).build().expect("executor");
    if let AnyExecutor::Processes(p) = &executor {
        p.start().expect("start workers");
    }
    executor
}

fn overhead(c: &mut Criterion) {
    const TASKS: usize = 256;
    let mut group = c.benchmark_group("parallel_overhead");
    group.throughput(Throughput::Elements(TASKS as u64));
    for spec in STRATEGIES {
        let ex = executor(spec);
        group.bench_function(BenchmarkId::new(spec, format!("{TASKS}_empty_tasks")), |b| {
            b.iter(|| black_box(ex.map_outputs(vec![Empty; TASKS]).expect("map")))
        });
    }
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::new("processes:2", "start+first_task+stop"), |b| {
        b.iter(|| {
            let ex = executor("processes:2");
            black_box(ex.map_outputs(vec![Empty; 2]).expect("map"));
        })
    });
    group.finish();
}

fn dft(c: &mut Criterion) {
    const TASKS: usize = 16;
    const N: u32 = 1024;
    let tasks: Vec<Dft> = (0..TASKS as u64).map(|seed| Dft { n: N, seed }).collect();
    let mut group = c.benchmark_group("parallel_dft");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS as u64));
    let mut reference = None;
    for spec in STRATEGIES {
        let ex = executor(spec);
        let (out, stats) = ex.map(tasks.clone()).expect("map");
        let reference = reference.get_or_insert_with(|| out.clone());
        assert!(out.iter().zip(reference.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{spec}: outputs differ");
        let _ = writeln!(std::io::stderr(), "{spec}: {stats}");
        group.bench_function(BenchmarkId::new(spec, format!("{TASKS}x_dft{N}")), |b| {
            b.iter(|| black_box(ex.map_outputs(tasks.clone()).expect("map")))
        });
    }
    group.finish();
}

fn main() {
    // Worker processes of the Processes strategy are this executable: serve first.
    Registry::new().register::<Empty>().register::<Dft>().serve_if_worker();

    let mut criterion = Criterion::default().configure_from_args();
    overhead(&mut criterion);
    dft(&mut criterion);
    criterion.final_summary();
}
