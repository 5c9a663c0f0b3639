//! The parent side of the process pool: [`Processes`].

use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::registry::{WORKER_ENV, WORKER_FLAG};
use super::wire::{MAGIC, Outcome, Request, Response, read_frame, write_frame};
use crate::error::{ExecError, ExitStatusInfo};
use crate::executor::{Collector, Executor};
use crate::inner::InnerThreads;
use crate::stats::{RunStats, Strategy};
use crate::task::Task;

/// How often the parent checks its workers' liveness while it waits for results, in addition
/// to noticing their pipes closing.
const POLL: Duration = Duration::from_millis(250);
/// How long a worker whose pipe closed may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Runs tasks in `workers` worker processes: the program started again with
/// `--caiman-worker`, receiving tasks and returning outputs over its stdin/stdout pipes.
///
/// * **Enabling it.** The worker program (by default this very executable, `current_exe()`)
///   must call [`Registry::serve_if_worker`](crate::Registry::serve_if_worker) first thing in
///   `main`, with every task type it will be sent registered.
/// * **Data.** Tasks and outputs are serialised with the task's [`Codec`](crate::Codec) and
///   should be small: bulk pixel data stays in files that tasks open by path and range (the
///   CaImAn way: memmaps shared through the page cache).
/// * **Scheduling.** Workers start on the first map (or [`start`](Self::start)) and are reused
///   by later maps. Each idle worker is handed the next task in input order.
/// * **Inner threads.** Each worker's environment sets `RAYON_NUM_THREADS`, `OMP_NUM_THREADS`,
///   `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS` and `VECLIB_MAXIMUM_THREADS` to its share, and
///   tasks see the same share in [`TaskCtx::par`](crate::TaskCtx::par).
/// * **Failures.** A task's error or panic is reported like the other strategies do, and the
///   pool stays up. A worker that dies (killed, aborted, exited) fails the map within
///   moments with [`ExecError::WorkerDied`]: every other worker is killed and reaped, no output
///   is returned, and the next map starts a fresh pool. Dropping the executor shuts the workers
///   down (killing any that do not exit promptly) and reaps them; workers whose parent dies
///   exit on their own.
pub struct Processes {
    workers: usize,
    inner: InnerThreads,
    program: PathBuf,
    args: Vec<OsString>,
    handshake_timeout: Duration,
    pool: Mutex<Option<Pool>>,
    pids: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes")
            .field("workers", &self.workers)
            .field("inner", &self.inner)
            .field("program", &self.program)
            .field("pids", &*lock(&self.pids))
            .finish()
    }
}

impl Processes {
    /// A pool of `workers` copies of this executable; tasks get inner threads resolved from the
    /// environment and the cores (see [`InnerThreads`]). No process starts yet.
    ///
    /// # Errors
    /// [`ExecError::Config`] for zero workers or when the executable's path is unknown.
    pub fn new(workers: usize) -> Result<Self, ExecError> {
        Self::with_inner_threads(workers, None)
    }

    /// As [`new`](Self::new), with `inner` threads per task (`None`: resolve).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_inner_threads(workers: usize, inner: Option<usize>) -> Result<Self, ExecError> {
        Self::with_resolved(workers, InnerThreads::resolve(inner, workers))
    }

    /// As [`new`](Self::new), with an already resolved inner-thread setting.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_resolved(workers: usize, inner: InnerThreads) -> Result<Self, ExecError> {
        if workers == 0 {
            return Err(ExecError::Config("a process pool needs at least one worker".into()));
        }
        let program = std::env::current_exe()
            .map_err(|e| ExecError::Config(format!("cannot find this executable's path: {e}")))?;
        tracing::info!(workers, %inner, "caiman-parallel: process-pool executor (workers start on first use)");
        Ok(Self {
            workers,
            inner,
            program,
            args: Vec::new(),
            handshake_timeout: Duration::from_secs(30),
            pool: Mutex::new(None),
            pids: Mutex::new(Vec::new()),
        })
    }

    /// Uses `program` as the worker program instead of this executable (tests, or a dedicated
    /// worker binary). It must serve the same task types, built from the same source.
    #[must_use]
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Arguments placed before `--caiman-worker` on the worker's command line.
    #[must_use]
    pub fn program_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long a starting worker may take to answer (default 30 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Starts the workers now rather than on the first map (to keep start-up out of a timing).
    ///
    /// # Errors
    /// As for starting them in a map: [`ExecError::Spawn`], [`ExecError::Handshake`],
    /// [`ExecError::NestedProcesses`].
    pub fn start(&self) -> Result<(), ExecError> {
        let mut guard = self.lock_pool();
        self.ensure_pool(&mut guard).map(|_| ())
    }

    /// Process ids of the running workers (empty before the first map and after a failure).
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.pids).clone()
    }

    /// The worker program.
    pub fn worker_program(&self) -> &std::path::Path {
        &self.program
    }

    /// Stops the workers (they exit on end of input; stragglers are killed after a grace period)
    /// and reaps them. The next map starts new ones.
    pub fn shutdown(&self) {
        let mut guard = self.lock_pool();
        if let Some(pool) = guard.take() {
            pool.shutdown(true);
        }
        lock(&self.pids).clear();
    }

    /// Locks the pool; a pool left behind by a panicking map is torn down.
    fn lock_pool(&self) -> MutexGuard<'_, Option<Pool>> {
        self.pool.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            if let Some(pool) = guard.take() {
                pool.shutdown(false);
            }
            self.pool.clear_poison();
            guard
        })
    }

    /// Returns a healthy pool, starting one if needed.
    fn ensure_pool<'g>(&self, guard: &'g mut Option<Pool>) -> Result<&'g mut Pool, ExecError> {
        if guard.as_mut().is_some_and(|pool| !pool.healthy()) {
            tracing::warn!("a worker of the idle process pool ended; starting a new pool");
            if let Some(pool) = guard.take() {
                pool.shutdown(false);
            }
        }
        if guard.is_none() {
            lock(&self.pids).clear();
            let pool = self.spawn_pool()?;
            *lock(&self.pids) = pool.procs.iter().map(|p| p.pid).collect();
            *guard = Some(pool);
        }
        Ok(guard.as_mut().expect("pool was just set"))
    }

    fn spawn_pool(&self) -> Result<Pool, ExecError> {
        if std::env::var_os(WORKER_ENV).is_some() {
            return Err(ExecError::NestedProcesses);
        }
        let (tx, events) = mpsc::channel();
        let mut pool = Pool { procs: Vec::with_capacity(self.workers), events, program: self.program.clone() };
        for worker in 0..self.workers {
            match self.spawn_worker(worker, tx.clone()) {
                Ok(proc) => pool.procs.push(proc),
                Err(e) => {
                    pool.shutdown(false);
                    return Err(e);
                }
            }
        }
        drop(tx);
        if let Err(e) = pool.handshake(self.handshake_timeout) {
            pool.shutdown(false);
            return Err(e);
        }
        tracing::info!(
            workers = self.workers,
            pids = ?pool.procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
            program = %self.program.display(),
            inner = %self.inner,
            "caiman-parallel: worker processes started",
        );
        Ok(pool)
    }

    fn spawn_worker(&self, worker: usize, tx: Sender<Event>) -> Result<WorkerProc, ExecError> {
        let spawn_error = |source| ExecError::Spawn { program: self.program.clone(), source };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg(WORKER_FLAG)
            .env(WORKER_ENV, worker.to_string())
            .envs(self.inner.worker_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill_and_reap(&mut child);
            return Err(spawn_error(std::io::Error::other("worker pipes missing")));
        };
        let reader = std::thread::Builder::new()
            .name(format!("caiman-pipe-{worker}"))
            .spawn(move || read_events(worker, stdout, &tx));
        if let Err(e) = reader {
            kill_and_reap(&mut child);
            return Err(spawn_error(e));
        }
        Ok(WorkerProc { child, stdin: BufWriter::new(stdin), pid, tasks: Vec::new(), peak_rss_kib: 0 })
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pool) = pool {
            pool.shutdown(true);
        }
    }
}

impl Executor for Processes {
    fn map<T: Task>(&self, tasks: Vec<T>) -> Result<(Vec<T::Output>, RunStats), ExecError> {
        let mut collector = Collector::new(Strategy::Processes, self.workers, self.inner.per_task, tasks.len());
        if tasks.is_empty() {
            return collector.finish(Vec::new());
        }
        let mut guard = self.lock_pool();
        let pool = self.ensure_pool(&mut guard)?;
        if let Some(p) = pool.procs.iter().find(|p| !p.tasks.iter().any(|t| t == T::NAME)) {
            tracing::debug!(pid = p.pid, known = ?p.tasks, "task type not registered in worker");
            return Err(ExecError::Unregistered { task: T::NAME, program: self.program.clone() });
        }
        match pool.run(&tasks, &mut collector, self.inner.per_task) {
            Ok(()) => {
                let peaks = pool.procs.iter().map(|p| p.peak_rss_kib).collect();
                collector.finish(peaks)
            }
            Err(fatal) => {
                if let Some(pool) = guard.take() {
                    pool.shutdown(false);
                }
                lock(&self.pids).clear();
                Err(fatal)
            }
        }
    }

    fn strategy(&self) -> Strategy {
        Strategy::Processes
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn inner_threads(&self) -> &InnerThreads {
        &self.inner
    }
}

/// Something a worker's reader thread saw.
enum Event {
    /// A frame from worker `.0`.
    Frame(usize, Response),
    /// Worker `.0`'s output ended (EOF, read error or garbage): `.1` says how.
    Closed(usize, String),
}

/// Forwards a worker's frames to the parent until its output ends.
fn read_events(worker: usize, stdout: impl Read, tx: &Sender<Event>) {
    let mut r = BufReader::new(stdout);
    if let Err(why) = read_magic(&mut r) {
        let _ = tx.send(Event::Closed(worker, why));
        return;
    }
    loop {
        let event = match read_frame::<Response>(&mut r) {
            Ok(Some(frame)) => Event::Frame(worker, frame),
            Ok(None) => Event::Closed(worker, "its output ended".into()),
            Err(e) => Event::Closed(worker, format!("reading its output failed: {e}")),
        };
        let closed = matches!(event, Event::Closed(..));
        if tx.send(event).is_err() || closed {
            return;
        }
    }
}

/// Reads the handshake's magic bytes, failing as soon as the output diverges from them (a
/// program that prints something else is caught at once, even if it then stays silent).
fn read_magic(r: &mut impl Read) -> Result<(), String> {
    let mut got = Vec::with_capacity(MAGIC.len());
    let mut buf = [0u8; MAGIC.len()];
    while got.len() < MAGIC.len() {
        let want = MAGIC.len() - got.len();
        match r.read(&mut buf[..want]) {
            Ok(0) => return Err("its output ended before the handshake".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading its handshake failed: {e}")),
        }
        if got[..] != MAGIC[..got.len()] {
            let what = String::from_utf8_lossy(&got).into_owned();
            return Err(format!("it printed {what:?}, not the caiman worker handshake"));
        }
    }
    Ok(())
}

struct WorkerProc {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    pid: u32,
    tasks: Vec<String>,
    peak_rss_kib: u64,
}

struct Pool {
    procs: Vec<WorkerProc>,
    events: Receiver<Event>,
    program: PathBuf,
}

/// Why [`Pool::run`] must abandon the pool.
type Fatal = ExecError;

impl Pool {
    /// Waits for every worker's `Ready`.
    fn handshake(&mut self, timeout: Duration) -> Result<(), ExecError> {
        let deadline = Instant::now() + timeout;
        let mut ready = vec![false; self.procs.len()];
        while ready.iter().any(|r| !r) {
            let left = deadline.saturating_duration_since(Instant::now());
            let detail = match self.events.recv_timeout(left) {
                Ok(Event::Frame(w, Response::Ready { pid, tasks, peak_rss_kib })) if !ready[w] => {
                    tracing::debug!(worker = w, pid, ?tasks, "worker ready");
                    let proc = &mut self.procs[w];
                    (proc.tasks, proc.peak_rss_kib, ready[w]) = (tasks, peak_rss_kib, true);
                    continue;
                }
                Ok(Event::Frame(w, _)) => format!("worker {w} sent an unexpected message"),
                Ok(Event::Closed(w, why)) => {
                    let status = self.procs[w].wait_exit(Duration::from_millis(200));
                    let status = status.map_or_else(|| "still running".into(), |s| s.to_string());
                    format!("worker {w}: {why}; it {status}")
                }
                Err(RecvTimeoutError::Timeout) => format!("no answer within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => "every worker's output closed".into(),
            };
            return Err(ExecError::Handshake { program: self.program.clone(), detail });
        }
        Ok(())
    }

    /// Whether every worker is alive and nothing unexpected is queued.
    fn healthy(&mut self) -> bool {
        if self.events.try_recv().is_ok() {
            return false;
        }
        self.procs.iter_mut().all(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Runs the map; `Err` means the pool is broken and must be torn down. Task failures are
    /// recorded in `collector` and are not fatal.
    fn run<T: Task>(&mut self, tasks: &[T], collector: &mut Collector<T::Output>, inner: usize) -> Result<(), Fatal> {
        let n = tasks.len();
        let mut in_flight: Vec<Option<usize>> = vec![None; self.procs.len()];
        let mut next = 0;
        for w in 0..self.procs.len() {
            self.dispatch(w, tasks, &mut next, &mut in_flight, collector, inner)?;
        }
        while in_flight.iter().any(Option::is_some) {
            let event = match self.events.recv_timeout(POLL) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => match self.find_dead() {
                    Some(w) => Event::Closed(w, "it ended".into()),
                    None => continue,
                },
                Err(RecvTimeoutError::Disconnected) => {
                    let w = self.find_dead().unwrap_or(0);
                    Event::Closed(w, "its output ended".into())
                }
            };
            match event {
                Event::Frame(w, Response::Done { index, outcome, wall_ns, cpu_ns, peak_rss_kib }) => {
                    let index = usize::try_from(index).unwrap_or(usize::MAX);
                    if in_flight[w] != Some(index) {
                        return Err(ExecError::Protocol {
                            worker: w,
                            detail: format!("result for task {index}, but it was running {:?}", in_flight[w]),
                        });
                    }
                    in_flight[w] = None;
                    let proc = &mut self.procs[w];
                    proc.peak_rss_kib = proc.peak_rss_kib.max(peak_rss_kib);
                    let cpu = Duration::from_nanos(cpu_ns);
                    collector.remote_cpu += cpu;
                    let result = decode_outcome::<T>(outcome, index, &self.program);
                    collector.record(index, w, Duration::from_nanos(wall_ns), cpu, result);
                    self.dispatch(w, tasks, &mut next, &mut in_flight, collector, inner)?;
                }
                Event::Frame(w, Response::Ready { .. }) => {
                    return Err(ExecError::Protocol { worker: w, detail: "unexpected handshake".into() });
                }
                Event::Closed(w, why) => {
                    return Err(self.died(w, &why, in_flight[w].map(|i| (T::NAME, i)), collector.completed(), n));
                }
            }
        }
        Ok(())
    }

    /// Hands the next task to worker `w`, unless the map has failed or no task is left.
    fn dispatch<T: Task>(
        &mut self,
        w: usize,
        tasks: &[T],
        next: &mut usize,
        in_flight: &mut [Option<usize>],
        collector: &mut Collector<T::Output>,
        inner: usize,
    ) -> Result<(), Fatal> {
        if collector.failed() || *next >= tasks.len() {
            return Ok(());
        }
        let index = *next;
        *next += 1;
        let payload = match T::CODEC.encode(&tasks[index]) {
            Ok(payload) => payload,
            Err(detail) => {
                collector.fail(ExecError::Codec { task: T::NAME, index, detail });
                return Ok(());
            }
        };
        let request = Request::Run {
            index: index as u64,
            worker: u32::try_from(w).unwrap_or(u32::MAX),
            task: T::NAME.to_owned(),
            inner: u32::try_from(inner).unwrap_or(u32::MAX),
            payload,
        };
        let stdin = &mut self.procs[w].stdin;
        if let Err(e) = write_frame(stdin, &request).and_then(|()| stdin.flush()) {
            let why = format!("sending it a task failed ({e})");
            return Err(self.died(w, &why, Some((T::NAME, index)), collector.completed(), tasks.len()));
        }
        in_flight[w] = Some(index);
        Ok(())
    }

    /// A worker that has exited, if any.
    fn find_dead(&mut self) -> Option<usize> {
        self.procs.iter_mut().position(|p| !matches!(p.child.try_wait(), Ok(None)))
    }

    /// The error for worker `w` whose pipe broke.
    fn died(
        &mut self,
        w: usize,
        why: &str,
        running: Option<(&'static str, usize)>,
        completed: usize,
        tasks: usize,
    ) -> ExecError {
        let proc = &mut self.procs[w];
        match proc.wait_exit(EXIT_GRACE) {
            Some(status) => {
                tracing::error!(worker = w, pid = proc.pid, %status, ?running, "caiman-parallel: worker process died");
                ExecError::WorkerDied { worker: w, pid: proc.pid, status, running, completed, tasks }
            }
            None => ExecError::Protocol { worker: w, detail: format!("{why}, but the process is still running") },
        }
    }

    /// Ends every worker and reaps it. `graceful`: close their input and give them a moment to
    /// exit first; otherwise kill them at once.
    fn shutdown(mut self, graceful: bool) {
        let Pool { procs, .. } = &mut self;
        if graceful {
            for proc in procs.iter_mut() {
                let _ = write_frame(&mut proc.stdin, &Request::Shutdown).and_then(|()| proc.stdin.flush());
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            for proc in procs.iter_mut() {
                if proc.wait_exit(deadline.saturating_duration_since(Instant::now())).is_none() {
                    tracing::warn!(pid = proc.pid, "worker did not exit after shutdown; killing it");
                }
            }
        }
        for proc in procs.iter_mut() {
            kill_and_reap(&mut proc.child);
        }
        tracing::debug!(workers = procs.len(), "worker processes stopped and reaped");
    }
}

impl WorkerProc {
    /// Waits up to `grace` for the process to exit; `None` if it is still running.
    fn wait_exit(&mut self, grace: Duration) -> Option<ExitStatusInfo> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(ExitStatusInfo::from_status(status)),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => return None,
                Err(_) => return Some(ExitStatusInfo::Unknown),
            }
        }
    }
}

/// Kills (if still running) and reaps a child, so it leaves no zombie.
fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Turns a worker's outcome into the map's result for that task.
fn decode_outcome<T: Task>(outcome: Outcome, index: usize, program: &std::path::Path) -> Result<T::Output, ExecError> {
    match outcome {
        Outcome::Ok(bytes) => T::CODEC.decode(&bytes).map_err(|e| ExecError::Codec {
            task: T::NAME,
            index,
            detail: format!("decoding the output: {e}"),
        }),
        Outcome::Failed(source) => Err(ExecError::TaskFailed { task: T::NAME, index, source }),
        Outcome::Panicked(message) => Err(ExecError::TaskPanicked { task: T::NAME, index, message }),
        Outcome::Unknown(_) => Err(ExecError::Unregistered { task: T::NAME, program: program.to_owned() }),
        Outcome::Codec(detail) => Err(ExecError::Codec { task: T::NAME, index, detail }),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
