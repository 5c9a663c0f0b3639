//! The worker side of [`Processes`](crate::Processes): the [`Registry`] of task types a program
//! can run, and the loop that serves them.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::wire::{MAGIC, Outcome, Request, Response, read_frame, write_frame};
use crate::executor::panic_message;
use crate::par::Par;
use crate::stats::{peak_rss_kib, process_cpu_time};
use crate::task::{Task, TaskCtx};

/// Command-line flag that starts a program in worker mode.
pub const WORKER_FLAG: &str = "--caiman-worker";

/// Environment variable set in every worker process (to its worker index). Its presence makes a
/// [`Processes`](crate::Processes) executor refuse to start: no nested process pools.
pub const WORKER_ENV: &str = "CAIMAN_PARALLEL_WORKER";

type Handler = fn(&[u8], &TaskCtx) -> Outcome;

/// The task types a program can run as a worker, by [`Task::NAME`].
///
/// Any binary that uses [`Processes`](crate::Processes) — whose workers are that same binary
/// started again — must serve as a worker **before doing anything else**:
///
/// ```no_run
/// use caiman_parallel::{Registry, Task, TaskCtx, TaskError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct MyTask;
/// # impl Task for MyTask { const NAME: &'static str = "my.task"; type Output = ();
/// #   fn run(self, _: &TaskCtx) -> Result<(), TaskError> { Ok(()) } }
/// fn main() {
///     Registry::new().register::<MyTask>().serve_if_worker();
///     // … the program proper: parse arguments, build a Backend, map tasks …
/// }
/// ```
///
/// Algorithm crates export a `register_tasks(Registry) -> Registry` function; chain them with
/// [`with`](Self::with).
#[derive(Default)]
pub struct Registry {
    handlers: BTreeMap<&'static str, (TypeId, Handler)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds task type `T`. Registering the same type twice is harmless.
    ///
    /// # Panics
    /// If another type with the same [`Task::NAME`] is already registered.
    #[track_caller]
    #[must_use]
    pub fn register<T: Task>(mut self) -> Self {
        let id = TypeId::of::<T>();
        if let Some((other, _)) = self.handlers.get(T::NAME) {
            assert!(*other == id, "two task types are registered under the name {:?}", T::NAME);
        }
        self.handlers.insert(T::NAME, (id, handle::<T>));
        self
    }

    /// Applies a crate's registration function: `Registry::new().with(caiman_motion::register_tasks)`.
    #[must_use]
    pub fn with(self, register: impl FnOnce(Registry) -> Registry) -> Self {
        register(self)
    }

    /// Names of the registered task types.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }

    /// Whether this process was started as a worker (its arguments contain [`WORKER_FLAG`]).
    pub fn is_worker_invocation() -> bool {
        std::env::args_os().skip(1).any(|a| a == WORKER_FLAG)
    }

    /// If this process was started as a worker, serves tasks on stdin/stdout until the parent
    /// closes the pipe or dies, then **exits the process**; otherwise returns at once.
    ///
    /// Call it first in `main`, before parsing arguments, setting up logging or printing
    /// anything. In worker mode the protocol gets private copies of the standard descriptors;
    /// standard output is then redirected to standard error (so a stray `println!` in a task
    /// cannot corrupt the protocol) and standard input to `/dev/null`. A watchdog thread exits
    /// the worker within a fraction of a second if its parent process dies, even mid-task.
    pub fn serve_if_worker(self) {
        if !Self::is_worker_invocation() {
            return;
        }
        let code = match take_protocol_stdio() {
            Ok((input, output)) => {
                spawn_parent_watchdog();
                match self.serve(input, output) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!(error = %e, "caiman worker: protocol failure");
                        2
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "caiman worker: cannot set up its pipes");
                2
            }
        };
        std::process::exit(code)
    }

    /// Serves the worker protocol on `input`/`output` until end of input or a shutdown request.
    /// [`serve_if_worker`](Self::serve_if_worker) calls this on the process's pipes; it is public
    /// for tests and for other transports.
    ///
    /// # Errors
    /// I/O errors on either stream, or a malformed request.
    pub fn serve(&self, input: impl Read, output: impl Write) -> io::Result<()> {
        let mut input = BufReader::new(input);
        let mut output = BufWriter::new(output);
        output.write_all(&MAGIC)?;
        let tasks = self.names().map(String::from).collect();
        write_frame(&mut output, &Response::Ready { pid: std::process::id(), tasks, peak_rss_kib: peak_rss_kib() })?;
        output.flush()?;
        while let Some(request) = read_frame::<Request>(&mut input)? {
            match request {
                Request::Run { index, worker, task, inner, payload } => {
                    let ctx = TaskCtx::new(index as usize, worker as usize, Par::new(inner as usize));
                    let (t0, c0) = (Instant::now(), process_cpu_time());
                    let outcome = match self.handlers.get(task.as_str()) {
                        Some((_, handler)) => handler(&payload, &ctx),
                        None => Outcome::Unknown(task),
                    };
                    let wall_ns = nanos(t0.elapsed());
                    let cpu_ns = nanos(process_cpu_time().saturating_sub(c0));
                    let done = Response::Done { index, outcome, wall_ns, cpu_ns, peak_rss_kib: peak_rss_kib() };
                    write_frame(&mut output, &done)?;
                    output.flush()?;
                }
                Request::Shutdown => break,
            }
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Decodes, runs and encodes one task of type `T`, catching its panic.
fn handle<T: Task>(payload: &[u8], ctx: &TaskCtx) -> Outcome {
    let task: T = match T::CODEC.decode(payload) {
        Ok(task) => task,
        Err(e) => return Outcome::Codec(format!("decoding the task: {e}")),
    };
    match catch_unwind(AssertUnwindSafe(|| task.run(ctx))) {
        Ok(Ok(output)) => match T::CODEC.encode(&output) {
            Ok(bytes) => Outcome::Ok(bytes),
            Err(e) => Outcome::Codec(format!("encoding the output: {e}")),
        },
        Ok(Err(e)) => Outcome::Failed(e),
        Err(payload) => Outcome::Panicked(panic_message(&*payload)),
    }
}

/// Moves the protocol onto private descriptors: returns (input, output) for the protocol, then
/// points fd 1 at stderr and fd 0 at `/dev/null`.
#[cfg(unix)]
fn take_protocol_stdio() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::{FromRawFd, OwnedFd};

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }
    // SAFETY: plain descriptor syscalls on the standard descriptors, each result checked. The
    // duplicated descriptors are new (close-on-exec, so tasks that start programs do not leak
    // them) and each is owned exactly once by the `OwnedFd` made from it.
    unsafe {
        let input = OwnedFd::from_raw_fd(check(libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3))?);
        let output = OwnedFd::from_raw_fd(check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3))?);
        check(libc::dup2(2, 1))?;
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null >= 0 {
            let null = OwnedFd::from_raw_fd(null);
            check(libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0))?;
        }
        Ok((input.into(), output.into()))
    }
}

#[cfg(not(unix))]
fn take_protocol_stdio() -> io::Result<(io::Stdin, io::Stdout)> {
    Ok((io::stdin(), io::stdout()))
}

/// Exits the worker when its parent dies (it is then re-parented, so the parent id changes).
fn spawn_parent_watchdog() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        let spawned = std::thread::Builder::new().name("caiman-watchdog".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(3);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "caiman worker: no parent watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskError;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Double(u32);
    impl Task for Double {
        const NAME: &'static str = "test.double";
        type Output = u32;
        fn run(self, ctx: &TaskCtx) -> Result<u32, TaskError> {
            match self.0 {
                0 => Err(TaskError::msg("zero")),
                1 => panic!("one"),
                n => Ok(2 * n + ctx.par().degree() as u32 - 1),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Impostor;
    impl Task for Impostor {
        const NAME: &'static str = "test.double";
        type Output = ();
        fn run(self, _: &TaskCtx) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn request(index: u64, task: &str, payload: Vec<u8>) -> Request {
        Request::Run { index, worker: 0, task: task.into(), inner: 1, payload }
    }

    #[test]
    fn serves_runs_errors_panics_and_unknown_tasks() {
        let mut input = Vec::new();
        for (i, n) in [21u32, 0, 1].into_iter().enumerate() {
            write_frame(&mut input, &request(i as u64, Double::NAME, postcard::to_stdvec(&Double(n)).unwrap()))
                .unwrap();
        }
        write_frame(&mut input, &request(3, "nope", vec![])).unwrap();
        write_frame(&mut input, &request(4, Double::NAME, vec![0xff; 9])).unwrap();
        let mut output = Vec::new();
        Registry::new().register::<Double>().register::<Double>().serve(&input[..], &mut output).unwrap();

        assert_eq!(output[..8], MAGIC);
        let mut r = &output[8..];
        assert!(
            matches!(read_frame::<Response>(&mut r).unwrap(), Some(Response::Ready { ref tasks, .. }) if tasks == &["test.double"])
        );
        let mut outcomes = Vec::new();
        while let Some(Response::Done { outcome, .. }) = read_frame::<Response>(&mut r).unwrap() {
            outcomes.push(outcome);
        }
        assert!(matches!(&outcomes[0], Outcome::Ok(b) if postcard::from_bytes::<u32>(b).unwrap() == 42));
        assert!(matches!(&outcomes[1], Outcome::Failed(e) if e.message() == "zero"));
        assert!(matches!(&outcomes[2], Outcome::Panicked(m) if m == "one"));
        assert!(matches!(&outcomes[3], Outcome::Unknown(n) if n == "nope"));
        assert!(matches!(&outcomes[4], Outcome::Codec(_)));
    }

    #[test]
    #[should_panic(expected = "two task types")]
    fn duplicate_names_are_refused() {
        let _ = Registry::new().register::<Double>().register::<Impostor>();
    }
}
