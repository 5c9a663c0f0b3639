//! [`Linear`]: every task in the calling thread, in order. The reference strategy.

use std::time::Instant;

use crate::error::ExecError;
use crate::executor::{Collector, Executor, run_caught};
use crate::inner::InnerThreads;
use crate::par::Par;
use crate::stats::{RunStats, Strategy, thread_cpu_time};
use crate::task::{Task, TaskCtx};

/// Runs tasks one after the other in the calling thread, stopping at the first failure.
///
/// For debugging (a panic's backtrace points into the task; breakpoints just work) and as the
/// reference every other strategy must match bit for bit. CaImAn's `dview=None`.
#[derive(Clone, Debug)]
pub struct Linear {
    inner: InnerThreads,
}

impl Linear {
    /// A linear executor; tasks get the inner threads resolved from the environment and the
    /// cores (see [`InnerThreads`]).
    pub fn new() -> Self {
        Self::with_inner_threads(None)
    }

    /// A linear executor whose tasks get `inner` threads (`None`: resolve as in [`new`](Self::new)).
    pub fn with_inner_threads(inner: Option<usize>) -> Self {
        Self { inner: InnerThreads::resolve(inner, 1) }
    }

    /// A linear executor with an already resolved inner-thread setting.
    pub fn with_resolved(inner: InnerThreads) -> Self {
        tracing::info!(%inner, "caiman-parallel: linear executor");
        Self { inner }
    }
}

impl Default for Linear {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor for Linear {
    fn map<T: Task>(&self, tasks: Vec<T>) -> Result<(Vec<T::Output>, RunStats), ExecError> {
        let par = Par::new(self.inner.per_task);
        let mut collector = Collector::new(Strategy::Linear, 1, par.degree(), tasks.len());
        for (index, task) in tasks.into_iter().enumerate() {
            let ctx = TaskCtx::new(index, 0, par);
            let (t0, c0) = (Instant::now(), thread_cpu_time());
            let result = run_caught(task, &ctx);
            let cpu = thread_cpu_time().saturating_sub(c0);
            collector.record(index, 0, t0.elapsed(), cpu, result);
            if collector.failed() {
                break;
            }
        }
        collector.finish(Vec::new())
    }

    fn strategy(&self) -> Strategy {
        Strategy::Linear
    }

    fn workers(&self) -> usize {
        1
    }

    fn inner_threads(&self) -> &InnerThreads {
        &self.inner
    }
}
