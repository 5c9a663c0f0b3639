//! The execution flags every processing subcommand shares: `--backend`, `--workers`,
//! `--inner-threads`.

use caiman_parallel::{Backend, Strategy};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ExecArgs {
    /// Execution backend: `linear`, `threads[:N]`, `processes[:N]` (`,inner=K` allowed) or JSON.
    /// Default: a thread pool of (cores − 1, at least 1) workers.
    #[arg(long)]
    backend: Option<Backend>,
    /// Number of workers (overrides the backend's).
    #[arg(long)]
    workers: Option<usize>,
    /// Threads each worker may use inside a task (wins over OMP_NUM_THREADS and friends).
    #[arg(long)]
    inner_threads: Option<usize>,
}

impl ExecArgs {
    /// The backend these flags ask for.
    pub(crate) fn backend(&self) -> Backend {
        backend_from(self.backend.clone(), self.workers, self.inner_threads)
    }
}

/// `backend` (default: threads) with its worker count and inner threads overridden where given.
pub(crate) fn backend_from(backend: Option<Backend>, workers: Option<usize>, inner: Option<usize>) -> Backend {
    let b = backend.unwrap_or_default();
    let b = match (workers, b.strategy()) {
        (Some(n), Strategy::Processes) => Backend::processes(n),
        (Some(n), Strategy::Threads) => Backend::threads(n),
        _ => b,
    };
    match inner {
        Some(n) => b.with_inner_threads(Some(n)),
        None => b,
    }
}
