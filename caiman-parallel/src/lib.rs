//! `caiman-parallel`: how caiman-rs runs many independent tasks — motion-correction chunks, CNMF
//! patches, component groups — in the calling thread, on a thread pool, or in worker processes,
//! behind one contract; and how many threads each task may use inside itself.
//!
//! What it is:
//! * the [`Task`] contract: serialisable input and output, a unique [`Task::NAME`], a `run`
//!   without shared mutable state;
//! * one [`Executor`] trait with three strategies — [`Linear`] (calling thread; debugging and
//!   the reference), [`Threads`] (a pool owned by the executor, never rayon's global pool) and
//!   [`Processes`] (copies of the current executable in worker mode, tasks and results as
//!   length-prefixed frames over pipes, bulk data left in files that tasks open by path) — which
//!   return bit-identical outputs in input order, and the same errors;
//! * the serialisable [`Backend`] choice (`{"kind": "processes", "workers": 4}`; default: a thread
//!   pool of `max(cores − 1, 1)` workers) and its [`AnyExecutor`];
//! * inner parallelism: each task gets a [`Par`] through [`TaskCtx::par`] — its share of the
//!   threads, resolved by [`InnerThreads`] from an explicit setting, the `OMP_NUM_THREADS` family
//!   of variables and the cores — plus the helpers kernels use to stay within it;
//! * [`RunStats`] for every map: wall time, per-task time, CPU time and peak RSS of the whole
//!   process tree.
//!
//! What it is not: it knows nothing about movies or algorithms, and it is the only crate of
//! caiman-rs that starts threads or processes — kernels take a [`Par`] and never spawn their own.
//! It has no multi-machine backend yet; `ARCHITECTURE.md` describes how one (MPI ranks under
//! `mpirun`/SLURM) fits the same [`Executor`] contract.
//!
//! # Running tasks
//!
//! ```
//! use caiman_parallel::{Backend, Executor, Task, TaskCtx, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! /// Sum of a range of frames of a movie, read by path (never shipped through a pipe).
//! #[derive(Serialize, Deserialize)]
//! struct FrameSum { path: String, frames: std::ops::Range<usize> }
//!
//! impl Task for FrameSum {
//!     const NAME: &'static str = "example.frame_sum";
//!     type Output = f64;
//!     fn run(self, ctx: &TaskCtx) -> Result<f64, TaskError> {
//!         // open self.path, read self.frames, use ctx.par() for inner loops …
//!         Ok(self.frames.map(|f| f as f64).sum())
//!     }
//! }
//!
//! let backend: Backend = serde_json::from_str(r#"{"kind": "threads", "workers": 2}"#).unwrap();
//! let executor = backend.build()?;
//! let tasks = (0..4).map(|i| FrameSum { path: "movie.mmap".into(), frames: i * 10..(i + 1) * 10 });
//! let (sums, stats) = executor.map(tasks.collect())?;
//! assert_eq!(sums, vec![45.0, 145.0, 245.0, 345.0]);
//! assert_eq!(stats.tasks, 4);
//! # Ok::<(), caiman_parallel::ExecError>(())
//! ```
//!
//! # Enabling worker processes: one call at the top of `main`
//!
//! [`Processes`] starts the running executable again with `--caiman-worker`. For that to work,
//! `main` must first hand control to the worker loop when it is a worker, with every task type it
//! may be sent registered:
//!
//! ```no_run
//! # use caiman_parallel::{Task, TaskCtx, TaskError};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct MyTask;
//! # impl Task for MyTask { const NAME: &'static str = "my.task"; type Output = ();
//! #   fn run(self, _: &TaskCtx) -> Result<(), TaskError> { Ok(()) } }
//! # mod caiman_motion { pub fn register_tasks(r: caiman_parallel::Registry) -> caiman_parallel::Registry { r } }
//! use caiman_parallel::{Backend, Executor, Registry};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First line: in a worker this serves tasks and exits; otherwise it returns at once.
//!     Registry::new().register::<MyTask>().with(caiman_motion::register_tasks).serve_if_worker();
//!
//!     let executor = Backend::processes(4).with_inner_threads(Some(1)).build()?;
//!     let outputs = executor.map_outputs(vec![MyTask, MyTask])?;
//!     Ok(())
//! }
//! ```
//!
//! Workers exit when the executor is dropped, when a map finds one of them dead (the others are
//! killed and reaped and the map fails with [`ExecError::WorkerDied`]), or when their parent
//! dies. A worker process refuses to start a process pool of its own.
//!
//! # Inner threads
//!
//! Each task may use `executor.inner_threads().per_task` threads, handed to it as
//! [`TaskCtx::par`]. Unless set explicitly (`Backend`'s `inner_threads`, an `--inner-threads`
//! flag), it is the task's share of the cores, `max(1, cores / workers)`, capped by
//! `RAYON_NUM_THREADS`, `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS` and
//! `VECLIB_MAXIMUM_THREADS` (CaImAn users set these to 1 to stop BLAS from oversubscribing
//! workers). Worker processes get all of them set to their share, so OpenBLAS, OpenMP and a global
//! rayon pool inside a worker obey it too. Libraries that ignore those variables must be mapped
//! explicitly: for faer, call it inside [`Par::install`] with `faer::Par::rayon(par.degree())`.
//! The executors log the effective configuration when they are built.

// This crate is the one place in caiman-rs allowed to start threads and processes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod backend;
mod error;
mod executor;
mod inner;
mod linear;
mod par;
mod process;
mod stats;
mod task;
mod threads;

#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{AnyExecutor, Backend};
pub use error::{ExecError, ExitStatusInfo};
pub use executor::Executor;
pub use inner::{InnerSource, InnerThreads, THREAD_ENV_VARS, available_cores, default_workers};
pub use linear::Linear;
pub use par::Par;
pub use process::{Processes, Registry, WORKER_ENV, WORKER_FLAG};
pub use stats::{PeakRss, RunStats, Strategy, peak_rss_kib, process_cpu_time, thread_cpu_time};
pub use task::{Codec, Task, TaskCtx, TaskError};
pub use threads::Threads;
