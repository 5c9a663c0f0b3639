//! [`Threads`]: tasks on a thread pool the executor owns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::ExecError;
use crate::executor::{Collector, Executor, run_caught};
use crate::inner::InnerThreads;
use crate::par::Par;
use crate::stats::{RunStats, Strategy, thread_cpu_time};
use crate::task::{Task, TaskCtx};

/// Runs tasks on `workers` threads of a rayon pool owned by the executor (never rayon's global
/// pool), handing the next task to whichever thread is free.
///
/// Tasks are taken in input order; after a failure no new task starts, the running ones finish,
/// and the lowest-index error is returned, so errors match [`Linear`](crate::Linear)'s. A panic
/// is caught and reported as [`ExecError::TaskPanicked`]; the pool stays usable.
///
/// Rayon parallel iterators used inside a task run on this pool, not the global one, and each
/// task's [`Par`] helpers run on a per-thread inner pool of `inner_threads().per_task` threads.
/// Linear algebra libraries with their own thread pools (OpenBLAS, MKL) read their environment
/// variables once per process and cannot be capped per thread: set `OPENBLAS_NUM_THREADS=1` for
/// this strategy, or use [`Processes`](crate::Processes), which sets them for each worker.
pub struct Threads {
    pool: rayon::ThreadPool,
    workers: usize,
    inner: InnerThreads,
}

impl Threads {
    /// A pool of `workers` threads; tasks get inner threads resolved from the environment and the
    /// cores (see [`InnerThreads`]).
    ///
    /// # Errors
    /// [`ExecError::Config`] for zero workers, [`ExecError::ThreadPool`] if the threads cannot be
    /// started.
    pub fn new(workers: usize) -> Result<Self, ExecError> {
        Self::with_inner_threads(workers, None)
    }

    /// A pool of `workers` threads whose tasks get `inner` threads each (`None`: resolve).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_inner_threads(workers: usize, inner: Option<usize>) -> Result<Self, ExecError> {
        Self::with_resolved(workers, InnerThreads::resolve(inner, workers))
    }

    /// A pool of `workers` threads with an already resolved inner-thread setting.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_resolved(workers: usize, inner: InnerThreads) -> Result<Self, ExecError> {
        if workers == 0 {
            return Err(ExecError::Config("a thread pool needs at least one worker".into()));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("caiman-worker-{i}"))
            .build()
            .map_err(|e| ExecError::ThreadPool(e.to_string()))?;
        tracing::info!(workers, %inner, "caiman-parallel: thread-pool executor");
        Ok(Self { pool, workers, inner })
    }
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads").field("workers", &self.workers).field("inner", &self.inner).finish()
    }
}

impl Executor for Threads {
    fn map<T: Task>(&self, tasks: Vec<T>) -> Result<(Vec<T::Output>, RunStats), ExecError> {
        let n = tasks.len();
        let par = Par::new(self.inner.per_task);
        let collector = Mutex::new(Collector::new(Strategy::Threads, self.workers, par.degree(), n));
        let queue = Mutex::new(tasks.into_iter().enumerate());
        let stop = AtomicBool::new(false);
        self.pool.scope(|scope| {
            for worker in 0..self.workers.min(n) {
                let (collector, queue, stop) = (&collector, &queue, &stop);
                scope.spawn(move |_| {
                    loop {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        // Taken in input order: when task i fails, every task before it has
                        // been taken and will complete, so the lowest failing index is found.
                        let Some((index, task)) = lock(queue).next() else { break };
                        let ctx = TaskCtx::new(index, worker, par);
                        let (t0, c0) = (Instant::now(), thread_cpu_time());
                        let result = run_caught(task, &ctx);
                        let cpu = thread_cpu_time().saturating_sub(c0);
                        if result.is_err() {
                            stop.store(true, Ordering::Release);
                        }
                        lock(collector).record(index, worker, t0.elapsed(), cpu, result);
                    }
                });
            }
        });
        collector.into_inner().unwrap_or_else(|e| e.into_inner()).finish(Vec::new())
    }

    fn strategy(&self) -> Strategy {
        Strategy::Threads
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn inner_threads(&self) -> &InnerThreads {
        &self.inner
    }
}

/// Locks a mutex, ignoring poisoning: tasks run under `catch_unwind`, so no panic can leave the
/// protected bookkeeping half-updated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
