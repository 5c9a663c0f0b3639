//! The [`Executor`] contract and the bookkeeping every strategy shares.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::error::ExecError;
use crate::inner::InnerThreads;
use crate::stats::{PeakRss, RunStats, Strategy, peak_rss_kib, process_cpu_time};
use crate::task::{Task, TaskCtx};

/// Runs a list of [`Task`]s and returns their outputs in input order, with [`RunStats`].
///
/// Every implementation keeps the same contract, checked by
/// `testing::check_executor` (feature `testing`):
/// * outputs are bit-identical to running the tasks one by one, and in input order;
/// * a failing task makes the map return [`ExecError::TaskFailed`] naming it (a panicking one
///   [`ExecError::TaskPanicked`]); with several failures, the lowest index is reported, as a
///   linear run would;
/// * a map returns either every output or an error — never a partial or duplicated list;
/// * each task gets `inner_threads().per_task` inner threads through [`TaskCtx::par`], so that
///   `workers() × inner_threads().per_task` bounds the threads a map uses;
/// * after an error the executor stays usable.
///
/// `map` is generic, so the trait is not object-safe: code that picks a strategy at run time
/// uses [`AnyExecutor`](crate::AnyExecutor), built from a [`Backend`](crate::Backend).
pub trait Executor: Send + Sync {
    /// Runs `tasks`, returning their outputs in input order and what the map cost.
    ///
    /// # Errors
    /// See [`ExecError`]: a task's error or panic, a dead worker, a task type the worker program
    /// does not know, a serialisation failure.
    fn map<T: Task>(&self, tasks: Vec<T>) -> Result<(Vec<T::Output>, RunStats), ExecError>;

    /// [`map`](Self::map) without the statistics.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    fn map_outputs<T: Task>(&self, tasks: Vec<T>) -> Result<Vec<T::Output>, ExecError> {
        self.map(tasks).map(|(outputs, _)| outputs)
    }

    /// The strategy.
    fn strategy(&self) -> Strategy;

    /// How many tasks may run at once.
    fn workers(&self) -> usize;

    /// The inner threads each task gets, and why.
    fn inner_threads(&self) -> &InnerThreads;
}

/// Runs one task in this thread, turning its error or panic into an [`ExecError`].
pub(crate) fn run_caught<T: Task>(task: T, ctx: &TaskCtx) -> Result<T::Output, ExecError> {
    let index = ctx.index();
    match catch_unwind(AssertUnwindSafe(|| task.run(ctx))) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(source)) => Err(ExecError::TaskFailed { task: T::NAME, index, source }),
        Err(payload) => Err(ExecError::TaskPanicked { task: T::NAME, index, message: panic_message(&*payload) }),
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Collects outputs and per-task statistics of one map, keeping the lowest-index error.
pub(crate) struct Collector<O> {
    strategy: Strategy,
    workers: usize,
    inner_threads: usize,
    start: Instant,
    cpu_start: Duration,
    outputs: Vec<Option<O>>,
    task_wall: Vec<Duration>,
    task_cpu: Vec<Duration>,
    task_worker: Vec<usize>,
    completed: usize,
    error: Option<ExecError>,
    /// CPU time spent in other processes for this map (worker processes).
    pub(crate) remote_cpu: Duration,
}

impl<O> Collector<O> {
    pub(crate) fn new(strategy: Strategy, workers: usize, inner_threads: usize, n: usize) -> Self {
        Self {
            strategy,
            workers,
            inner_threads,
            start: Instant::now(),
            cpu_start: process_cpu_time(),
            outputs: std::iter::repeat_with(|| None).take(n).collect(),
            task_wall: vec![Duration::ZERO; n],
            task_cpu: vec![Duration::ZERO; n],
            task_worker: vec![0; n],
            completed: 0,
            error: None,
            remote_cpu: Duration::ZERO,
        }
    }

    /// Records the outcome of task `index`.
    pub(crate) fn record(
        &mut self,
        index: usize,
        worker: usize,
        wall: Duration,
        cpu: Duration,
        result: Result<O, ExecError>,
    ) {
        self.task_wall[index] = wall;
        self.task_cpu[index] = cpu;
        self.task_worker[index] = worker;
        self.completed += 1;
        match result {
            Ok(output) => {
                debug_assert!(self.outputs[index].is_none(), "task {index} delivered twice");
                self.outputs[index] = Some(output);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Records an error, keeping the one with the lowest task index.
    pub(crate) fn fail(&mut self, e: ExecError) {
        let lower = match (&self.error, e.task_index()) {
            (None, _) => true,
            (Some(old), Some(i)) => old.task_index().is_none_or(|j| i < j),
            (Some(_), None) => false,
        };
        if lower {
            self.error = Some(e);
        }
    }

    /// Whether a task has failed.
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Tasks completed so far.
    pub(crate) fn completed(&self) -> usize {
        self.completed
    }

    /// The outputs in order and the statistics, or the recorded error.
    pub(crate) fn finish(self, workers_kib: Vec<u64>) -> Result<(Vec<O>, RunStats), ExecError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let tasks = self.outputs.len();
        let outputs = self
            .outputs
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.ok_or_else(|| ExecError::Protocol { worker: 0, detail: format!("task {i} produced no output") })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stats = RunStats {
            strategy: self.strategy,
            workers: self.workers,
            inner_threads: self.inner_threads,
            tasks,
            wall: self.start.elapsed(),
            task_wall: self.task_wall,
            task_cpu: self.task_cpu,
            task_worker: self.task_worker,
            cpu_total: process_cpu_time().saturating_sub(self.cpu_start) + self.remote_cpu,
            peak_rss: PeakRss::new(peak_rss_kib(), workers_kib),
        };
        tracing::debug!(%stats, "map finished");
        Ok((outputs, stats))
    }
}
