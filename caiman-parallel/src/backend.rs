//! [`Backend`]: the serialisable choice of strategy, and [`AnyExecutor`], what it builds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ExecError;
use crate::executor::Executor;
use crate::inner::{InnerThreads, default_workers};
use crate::linear::Linear;
use crate::process::Processes;
use crate::stats::{RunStats, Strategy};
use crate::task::Task;
use crate::threads::Threads;

/// Which strategy runs the maps, as written in a params file or given on the command line.
///
/// JSON: `{"kind": "linear"}`, `{"kind": "threads", "workers": 3}`,
/// `{"kind": "processes", "workers": 4, "inner_threads": 1}`. `workers` defaults to CaImAn's
/// `max(cores − 1, 1)`; `inner_threads` to the rule of [`InnerThreads`]. The short string form
/// ([`FromStr`]/[`Display`](fmt::Display)) is `kind[:workers][,inner=N]`, e.g. `processes:4`,
/// `threads`, `linear,inner=1`.
///
/// The default is a thread pool of `max(cores − 1, 1)` workers.
///
/// A command line typically offers `--backend <kind[:workers]>` (parsed with [`FromStr`]) and
/// `--inner-threads <N>`, applied with [`with_inner_threads`](Self::with_inner_threads) so that
/// it wins over the params file and the environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Backend {
    /// In the calling thread ([`Linear`]).
    Linear {
        /// Inner threads per task; `None`: resolve (see [`InnerThreads`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inner_threads: Option<usize>,
    },
    /// On a thread pool ([`Threads`]).
    Threads {
        /// Worker threads; `None`: `max(cores − 1, 1)`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<usize>,
        /// Inner threads per task; `None`: resolve (see [`InnerThreads`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inner_threads: Option<usize>,
    },
    /// In worker processes ([`Processes`]); needs
    /// [`Registry::serve_if_worker`](crate::Registry::serve_if_worker) at the top of `main`.
    Processes {
        /// Worker processes; `None`: `max(cores − 1, 1)`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<usize>,
        /// Inner threads per task; `None`: resolve (see [`InnerThreads`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inner_threads: Option<usize>,
    },
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Threads { workers: None, inner_threads: None }
    }
}

impl Backend {
    /// `Linear` with resolved inner threads.
    pub fn linear() -> Self {
        Backend::Linear { inner_threads: None }
    }

    /// `Threads` with `workers` threads.
    pub fn threads(workers: usize) -> Self {
        Backend::Threads { workers: Some(workers), inner_threads: None }
    }

    /// `Processes` with `workers` processes.
    pub fn processes(workers: usize) -> Self {
        Backend::Processes { workers: Some(workers), inner_threads: None }
    }

    /// The same backend with an explicit inner-thread count (an `--inner-threads` flag), which
    /// wins over the environment; `None` leaves the setting as it is.
    #[must_use]
    pub fn with_inner_threads(mut self, n: Option<usize>) -> Self {
        if n.is_some() {
            match &mut self {
                Backend::Linear { inner_threads }
                | Backend::Threads { inner_threads, .. }
                | Backend::Processes { inner_threads, .. } => *inner_threads = n,
            }
        }
        self
    }

    /// Maps CaImAn's `setup_cluster(backend, n_processes)` onto a backend: `"single"` → linear;
    /// `"multiprocessing"`, `"local"` and `"ipyparallel"` → processes (`n_processes` or the
    /// default count).
    ///
    /// # Errors
    /// [`ExecError::Config`] for an unknown CaImAn backend name.
    pub fn from_caiman(backend: &str, n_processes: Option<usize>) -> Result<Self, ExecError> {
        match backend {
            "single" | "SLURM_single" => Ok(Backend::linear()),
            "multiprocessing" | "local" | "ipyparallel" => {
                Ok(Backend::Processes { workers: n_processes, inner_threads: None })
            }
            other => Err(ExecError::Config(format!("unknown CaImAn cluster backend {other:?}"))),
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        match self {
            Backend::Linear { .. } => Strategy::Linear,
            Backend::Threads { .. } => Strategy::Threads,
            Backend::Processes { .. } => Strategy::Processes,
        }
    }

    /// The number of workers once defaults are applied.
    pub fn workers(&self) -> usize {
        match self {
            Backend::Linear { .. } => 1,
            Backend::Threads { workers, .. } | Backend::Processes { workers, .. } => {
                workers.unwrap_or_else(default_workers)
            }
        }
    }

    /// The explicit inner-thread setting, if any.
    pub fn explicit_inner_threads(&self) -> Option<usize> {
        match self {
            Backend::Linear { inner_threads }
            | Backend::Threads { inner_threads, .. }
            | Backend::Processes { inner_threads, .. } => *inner_threads,
        }
    }

    /// Builds the executor, which logs its effective configuration (strategy, workers, inner
    /// threads and where that number came from) at `info` level. A process pool starts its workers on the first
    /// map; they are copies of this executable.
    ///
    /// # Errors
    /// [`ExecError::Config`] for zero workers; [`ExecError::ThreadPool`] if threads cannot start.
    pub fn build(&self) -> Result<AnyExecutor, ExecError> {
        let workers = self.workers();
        let inner = InnerThreads::resolve(self.explicit_inner_threads(), workers);
        let executor = match self {
            Backend::Linear { .. } => AnyExecutor::Linear(Linear::with_resolved(inner)),
            Backend::Threads { .. } => AnyExecutor::Threads(Threads::with_resolved(workers, inner)?),
            Backend::Processes { .. } => AnyExecutor::Processes(Processes::with_resolved(workers, inner)?),
        };
        tracing::debug!(backend = %self, "caiman-parallel: built from backend");
        Ok(executor)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy().as_str())?;
        if let Backend::Threads { workers: Some(w), .. } | Backend::Processes { workers: Some(w), .. } = self {
            write!(f, ":{w}")?;
        }
        if let Some(n) = self.explicit_inner_threads() {
            write!(f, ",inner={n}")?;
        }
        Ok(())
    }
}

impl FromStr for Backend {
    type Err = ExecError;

    /// Parses `kind[:workers][,inner=N]` or the JSON form.
    fn from_str(s: &str) -> Result<Self, ExecError> {
        let s = s.trim();
        if s.starts_with('{') {
            return serde_json::from_str(s).map_err(|e| ExecError::Config(format!("backend {s:?}: {e}")));
        }
        let bad = |why: &str| ExecError::Config(format!("backend {s:?}: {why} (expected kind[:workers][,inner=N])"));
        let (head, inner) = match s.split_once(',') {
            Some((head, rest)) => {
                let n = rest.strip_prefix("inner=").ok_or_else(|| bad("unknown option"))?;
                (head, Some(n.parse::<usize>().map_err(|_| bad("inner must be a number"))?))
            }
            None => (s, None),
        };
        let (kind, workers) = match head.split_once(':') {
            Some((kind, w)) => (kind, Some(w.parse::<usize>().map_err(|_| bad("workers must be a number"))?)),
            None => (head, None),
        };
        let backend = match kind.to_ascii_lowercase().as_str() {
            "linear" | "single" if workers.is_none_or(|w| w == 1) => Backend::linear(),
            "linear" | "single" => return Err(bad("linear has one worker")),
            "threads" => Backend::Threads { workers, inner_threads: None },
            "processes" => Backend::Processes { workers, inner_threads: None },
            _ => return Err(bad("unknown kind")),
        };
        Ok(backend.with_inner_threads(inner))
    }
}

/// The executor a [`Backend`] builds: one of the three strategies behind one type, since
/// [`Executor`] (with its generic `map`) cannot be a trait object.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyExecutor {
    /// See [`Linear`].
    Linear(Linear),
    /// See [`Threads`].
    Threads(Threads),
    /// See [`Processes`].
    Processes(Processes),
}

impl Executor for AnyExecutor {
    fn map<T: Task>(&self, tasks: Vec<T>) -> Result<(Vec<T::Output>, RunStats), ExecError> {
        match self {
            AnyExecutor::Linear(e) => e.map(tasks),
            AnyExecutor::Threads(e) => e.map(tasks),
            AnyExecutor::Processes(e) => e.map(tasks),
        }
    }

    fn strategy(&self) -> Strategy {
        match self {
            AnyExecutor::Linear(e) => e.strategy(),
            AnyExecutor::Threads(e) => e.strategy(),
            AnyExecutor::Processes(e) => e.strategy(),
        }
    }

    fn workers(&self) -> usize {
        match self {
            AnyExecutor::Linear(e) => e.workers(),
            AnyExecutor::Threads(e) => e.workers(),
            AnyExecutor::Processes(e) => e.workers(),
        }
    }

    fn inner_threads(&self) -> &InnerThreads {
        match self {
            AnyExecutor::Linear(e) => e.inner_threads(),
            AnyExecutor::Threads(e) => e.inner_threads(),
            AnyExecutor::Processes(e) => e.inner_threads(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let b: Backend = serde_json::from_str(r#"{"kind": "processes", "workers": 4}"#).unwrap();
        assert_eq!(b, Backend::processes(4));
        let b: Backend = serde_json::from_str(r#"{"kind": "linear"}"#).unwrap();
        assert_eq!(b, Backend::linear());
        let b: Backend = serde_json::from_str(r#"{"kind":"threads","inner_threads":1}"#).unwrap();
        assert_eq!(b, Backend::Threads { workers: None, inner_threads: Some(1) });
        assert_eq!(serde_json::to_string(&Backend::threads(3)).unwrap(), r#"{"kind":"threads","workers":3}"#);
        assert!(serde_json::from_str::<Backend>(r#"{"kind":"threads","wokers":3}"#).is_err());
        assert!(serde_json::from_str::<Backend>(r#"{"kind":"gpu"}"#).is_err());
        for b in [Backend::default(), Backend::linear(), Backend::processes(2).with_inner_threads(Some(1))] {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<Backend>(&json).unwrap(), b, "{json}");
        }
    }

    #[test]
    fn string_forms_round_trip() {
        for s in ["linear", "threads", "threads:3", "processes:4", "processes:2,inner=1", "linear,inner=2"] {
            let b: Backend = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert_eq!("PROCESSES:2".parse::<Backend>().unwrap(), Backend::processes(2));
        assert_eq!(r#"{"kind":"threads","workers":2}"#.parse::<Backend>().unwrap(), Backend::threads(2));
        for bad in ["gpu", "threads:x", "linear:2", "threads:2,outer=1", "processes:2,inner=z"] {
            assert!(bad.parse::<Backend>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_caiman_names() {
        assert_eq!(Backend::default().strategy(), Strategy::Threads);
        assert_eq!(Backend::default().workers(), default_workers());
        assert!(default_workers() >= 1);
        assert_eq!(Backend::from_caiman("single", Some(8)).unwrap(), Backend::linear());
        assert_eq!(Backend::from_caiman("multiprocessing", Some(3)).unwrap(), Backend::processes(3));
        assert!(Backend::from_caiman("dask", None).is_err());
    }

    #[test]
    fn build_applies_the_configuration() {
        let e = Backend::threads(2).with_inner_threads(Some(1)).build().unwrap();
        assert_eq!((e.strategy(), e.workers(), e.inner_threads().per_task), (Strategy::Threads, 2, 1));
        assert!(Backend::threads(0).build().is_err());
        assert!(Backend::processes(0).build().is_err());
        let e = Backend::linear().build().unwrap();
        assert_eq!(e.workers(), 1);
    }
}
