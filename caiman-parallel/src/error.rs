//! [`ExecError`]: why a map failed.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::task::TaskError;

/// Why a map (or building an executor) failed.
///
/// When several tasks fail, every strategy reports the one with the **lowest index**, the error
/// that a linear run would hit first: executors hand out tasks in input order and, after a
/// failure, finish the tasks already started before returning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The task returned an error.
    #[error("task {task}[{index}] failed: {source}")]
    TaskFailed {
        /// [`Task::NAME`](crate::Task::NAME).
        task: &'static str,
        /// Position in the map's input.
        index: usize,
        /// The task's error.
        #[source]
        source: TaskError,
    },

    /// The task panicked (on a thread, or inside a worker process that caught the panic).
    #[error("task {task}[{index}] panicked: {message}")]
    TaskPanicked {
        /// [`Task::NAME`](crate::Task::NAME).
        task: &'static str,
        /// Position in the map's input.
        index: usize,
        /// The panic message.
        message: String,
    },

    /// A worker process ended (killed, aborted, exited) or closed its pipe. The executor killed
    /// and reaped every other worker; results of the map are discarded, none is half-delivered.
    /// (Non-exhaustive: a multi-node executor may add where the worker ran.)
    #[non_exhaustive]
    #[error(
        "worker {worker} (pid {pid}) {status}{}; {completed} of {tasks} task(s) had completed, the map is abandoned",
        match running { Some((task, index)) => format!(" while running task {task}[{index}]"), None => String::new() }
    )]
    WorkerDied {
        /// Worker index.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatusInfo,
        /// The task it was running, if any: name and index.
        running: Option<(&'static str, usize)>,
        /// Tasks completed before the death was noticed.
        completed: usize,
        /// Tasks in the map.
        tasks: usize,
    },

    /// A worker process could not be started.
    #[error("cannot start worker program {program:?}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A worker program started but did not answer like a caiman worker.
    #[error(
        "worker program {program:?} did not complete the worker handshake ({detail}); \
         does its `main` start with `Registry::new()…serve_if_worker()`?"
    )]
    Handshake {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// The worker program does not know this task type.
    #[error(
        "task type {task} is not registered in worker program {program:?}; \
         add `.register::<T>()` to the `Registry` at the top of its `main`"
    )]
    Unregistered {
        /// [`Task::NAME`](crate::Task::NAME).
        task: &'static str,
        /// The program.
        program: PathBuf,
    },

    /// A task or its output could not be (de)serialised for the process boundary.
    #[error("cannot serialise task {task}[{index}] or its output: {detail}")]
    Codec {
        /// [`Task::NAME`](crate::Task::NAME).
        task: &'static str,
        /// Position in the map's input.
        index: usize,
        /// The codec's message.
        detail: String,
    },

    /// A worker sent something the protocol does not allow; the pool was shut down.
    #[error("protocol error with worker {worker}: {detail}")]
    Protocol {
        /// Worker index.
        worker: usize,
        /// What was wrong.
        detail: String,
    },

    /// An invalid executor configuration (zero workers, an unparsable backend, …).
    #[error("invalid executor configuration: {0}")]
    Config(String),

    /// A process pool was requested inside a worker process: one level of parallelism only.
    #[error(
        "refusing to start a process pool inside a caiman worker process \
         (nested process pools are not allowed; use the task's inner threads)"
    )]
    NestedProcesses,

    /// The thread pool could not be built.
    #[error("cannot build thread pool: {0}")]
    ThreadPool(String),
}

impl ExecError {
    /// The index of the task the error is about, if it is about one.
    pub fn task_index(&self) -> Option<usize> {
        match self {
            ExecError::TaskFailed { index, .. }
            | ExecError::TaskPanicked { index, .. }
            | ExecError::Codec { index, .. } => Some(*index),
            ExecError::WorkerDied { running, .. } => running.map(|(_, i)| i),
            _ => None,
        }
    }

    /// The name of the task type the error is about, if it is about one.
    pub fn task_name(&self) -> Option<&'static str> {
        match self {
            ExecError::TaskFailed { task, .. }
            | ExecError::TaskPanicked { task, .. }
            | ExecError::Codec { task, .. }
            | ExecError::Unregistered { task, .. } => Some(task),
            ExecError::WorkerDied { running, .. } => running.map(|(t, _)| t),
            _ => None,
        }
    }
}

/// How a worker process ended, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "lowercase")]
pub enum ExitStatusInfo {
    /// It exited with this code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A signal ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// It closed its pipe but its status could not be obtained.
    Unknown,
}

impl ExitStatusInfo {
    /// Converts a `std` exit status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                return Self::Signaled { signal, core_dumped: status.core_dumped() };
            }
        }
        status.code().map_or(Self::Unknown, |code| Self::Exited { code })
    }
}

impl fmt::Display for ExitStatusInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatusInfo::Exited { code } => write!(f, "exited with code {code}"),
            ExitStatusInfo::Signaled { signal, core_dumped } => {
                write!(f, "was killed by signal {signal}")?;
                if let Some(name) = signal_name(*signal) {
                    write!(f, " ({name})")?;
                }
                if *core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
            ExitStatusInfo::Unknown => write!(f, "closed its pipe"),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    #[cfg(unix)]
    {
        let name = match signal {
            libc::SIGKILL => "SIGKILL: killed, often by the out-of-memory killer",
            libc::SIGABRT => "SIGABRT: aborted",
            libc::SIGSEGV => "SIGSEGV: segmentation fault",
            libc::SIGBUS => "SIGBUS: bus error, e.g. a truncated memory-mapped file",
            libc::SIGTERM => "SIGTERM: terminated",
            libc::SIGINT => "SIGINT: interrupted",
            libc::SIGILL => "SIGILL: illegal instruction",
            libc::SIGFPE => "SIGFPE: arithmetic exception",
            libc::SIGPIPE => "SIGPIPE: broken pipe",
            _ => return None,
        };
        Some(name)
    }
    #[cfg(not(unix))]
    {
        let _ = signal;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_task() {
        let e = ExecError::TaskFailed { task: "t.x", index: 3, source: TaskError::msg("bad") };
        assert_eq!(e.to_string(), "task t.x[3] failed: bad");
        assert_eq!((e.task_index(), e.task_name()), (Some(3), Some("t.x")));
        let e = ExecError::WorkerDied {
            worker: 1,
            pid: 42,
            status: ExitStatusInfo::Signaled { signal: 9, core_dumped: false },
            running: Some(("t.y", 5)),
            completed: 2,
            tasks: 9,
        };
        let s = e.to_string();
        assert!(s.contains("signal 9") && s.contains("t.y[5]") && s.contains("2 of 9"), "{s}");
    }
}
