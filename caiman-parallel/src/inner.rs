//! How many inner threads each task gets, from an explicit setting, the thread environment
//! variables CaImAn users set, and the machine's cores.
//!
//! The rule, in order:
//! 1. An explicit setting (`--inner-threads`, [`Backend`](crate::Backend)'s `inner_threads`, or
//!    the executors' constructors) wins.
//! 2. Otherwise each task gets its share of the cores: `max(1, cores / workers)`.
//! 3. That share is capped by the smallest positive value among [`THREAD_ENV_VARS`]
//!    (`RAYON_NUM_THREADS`, `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`,
//!    `VECLIB_MAXIMUM_THREADS`): CaImAn's docs tell users to set these to 1 to cap the threads one
//!    worker uses for linear algebra, and we honour them the same way for every kernel, whatever
//!    library it uses. For `OMP_NUM_THREADS` a list such as `4,2` counts by its first (outermost)
//!    value, as OpenMP reads it. Values that are not positive integers are ignored, with a warning.
//!
//! So `workers × inner` never exceeds the cores unless the user explicitly asked for more.
//! Worker processes get every variable of [`THREAD_ENV_VARS`] set to their share, so BLAS, OpenMP
//! and a global rayon pool inside a worker stay within it too.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The environment variables that cap inner threads, in the order they are reported.
pub const THREAD_ENV_VARS: [&str; 5] =
    ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"];

/// The resolved number of inner threads per task, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InnerThreads {
    /// Threads each task may use (≥ 1).
    pub per_task: usize,
    /// Where the number came from.
    pub source: InnerSource,
}

/// Where an [`InnerThreads`] value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum InnerSource {
    /// The explicit setting.
    Explicit,
    /// The share of the cores, `max(1, cores / workers)`.
    Share {
        /// Cores available to the process.
        cores: usize,
        /// Workers sharing them.
        workers: usize,
    },
    /// An environment variable that capped the share.
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: usize,
        /// The share it capped.
        share: usize,
    },
}

impl InnerThreads {
    /// Resolves the inner threads for `workers` workers from `explicit`, the process environment
    /// and the available cores.
    pub fn resolve(explicit: Option<usize>, workers: usize) -> Self {
        Self::resolve_with(explicit, workers, available_cores(), |k| std::env::var(k).ok())
    }

    /// [`resolve`](Self::resolve) with the cores and the environment given, for tests and for
    /// executors that run elsewhere (a cluster node's cores, a job's environment).
    pub fn resolve_with(
        explicit: Option<usize>,
        workers: usize,
        cores: usize,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        if let Some(n) = explicit.filter(|&n| n > 0) {
            return Self { per_task: n, source: InnerSource::Explicit };
        }
        let workers = workers.max(1);
        let cores = cores.max(1);
        let share = (cores / workers).max(1);
        let cap = THREAD_ENV_VARS
            .iter()
            .filter_map(|&var| {
                let raw = env(var)?;
                match parse_thread_count(&raw) {
                    Some(value) => Some((var, value)),
                    None => {
                        tracing::warn!(var, value = %raw, "ignoring thread variable: not a positive integer");
                        None
                    }
                }
            })
            .min_by_key(|&(_, value)| value);
        match cap {
            Some((var, value)) if value < share => {
                Self { per_task: value, source: InnerSource::Env { var: var.to_owned(), value, share } }
            }
            _ => Self { per_task: share, source: InnerSource::Share { cores, workers } },
        }
    }

    /// The environment a worker process gets: every variable of [`THREAD_ENV_VARS`] set to
    /// `per_task`.
    pub fn worker_env(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        THREAD_ENV_VARS.iter().map(move |&var| (var, self.per_task.to_string()))
    }
}

impl fmt::Display for InnerThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} inner thread(s) per task (", self.per_task)?;
        match &self.source {
            InnerSource::Explicit => write!(f, "explicit setting)"),
            InnerSource::Share { cores, workers } => {
                write!(f, "{cores} core(s) / {workers} worker(s))")
            }
            InnerSource::Env { var, value, share } => {
                write!(f, "{var}={value} capped a share of {share})")
            }
        }
    }
}

/// Parses a thread-count variable: a positive integer, or for OpenMP-style lists the first item.
fn parse_thread_count(raw: &str) -> Option<usize> {
    let first = raw.split(',').next()?.trim();
    first.parse::<usize>().ok().filter(|&n| n > 0)
}

/// Cores available to this process (respects CPU affinity and cgroup quotas), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CaImAn's default worker count: `max(cores − 1, 1)`.
pub fn default_workers() -> usize {
    available_cores().saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn explicit_wins_over_everything() {
        let r = InnerThreads::resolve_with(Some(3), 4, 2, env(&[("OMP_NUM_THREADS", "1")]));
        assert_eq!(r, InnerThreads { per_task: 3, source: InnerSource::Explicit });
    }

    #[test]
    fn share_of_the_cores_without_variables() {
        let r = InnerThreads::resolve_with(None, 2, 8, env(&[]));
        assert_eq!(r.per_task, 4);
        assert_eq!(r.source, InnerSource::Share { cores: 8, workers: 2 });
        assert_eq!(InnerThreads::resolve_with(None, 3, 2, env(&[])).per_task, 1);
        assert_eq!(InnerThreads::resolve_with(None, 0, 2, env(&[])).per_task, 2);
        assert_eq!(InnerThreads::resolve_with(Some(0), 1, 2, env(&[])).per_task, 2);
    }

    #[test]
    fn each_variable_caps_and_the_smallest_wins() {
        for var in THREAD_ENV_VARS {
            let r = InnerThreads::resolve_with(None, 1, 8, env(&[(var, "2")]));
            assert_eq!(r.per_task, 2, "{var}");
            assert_eq!(r.source, InnerSource::Env { var: var.into(), value: 2, share: 8 });
        }
        let r = InnerThreads::resolve_with(
            None,
            1,
            8,
            env(&[("OMP_NUM_THREADS", "4"), ("OPENBLAS_NUM_THREADS", "1"), ("RAYON_NUM_THREADS", "3")]),
        );
        assert_eq!(r.per_task, 1);
        assert!(matches!(r.source, InnerSource::Env { ref var, .. } if var == "OPENBLAS_NUM_THREADS"));
    }

    #[test]
    fn variables_only_cap_never_raise() {
        let r = InnerThreads::resolve_with(None, 2, 2, env(&[("OMP_NUM_THREADS", "16")]));
        assert_eq!(r.per_task, 1);
        assert_eq!(r.source, InnerSource::Share { cores: 2, workers: 2 });
    }

    #[test]
    fn openmp_lists_and_junk() {
        let r = InnerThreads::resolve_with(None, 1, 8, env(&[("OMP_NUM_THREADS", "2,1")]));
        assert_eq!(r.per_task, 2);
        for junk in ["", "0", "-1", "lots"] {
            let r = InnerThreads::resolve_with(None, 1, 8, env(&[("OMP_NUM_THREADS", junk)]));
            assert_eq!(r.per_task, 8, "{junk:?}");
        }
    }

    #[test]
    fn worker_env_sets_every_variable() {
        let r = InnerThreads { per_task: 2, source: InnerSource::Explicit };
        let vars: Vec<_> = r.worker_env().collect();
        assert_eq!(vars.len(), THREAD_ENV_VARS.len());
        assert!(vars.iter().all(|(_, v)| v == "2"));
        assert!(r.to_string().starts_with("2 inner thread(s)"));
    }
}
