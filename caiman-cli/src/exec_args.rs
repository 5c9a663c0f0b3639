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

/// `--memory-budget`: the memory a CNMF run may use, from which its work sizes follow.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct MemoryArgs {
    /// Memory the run may use, e.g. `8G`, `1.5G`, `512M` (binary units; `K`/`M`/`G`/`T`, an
    /// optional `iB`/`B`). Work sizes follow from it: a quarter for one pass over the movie's
    /// pixel blocks, half for the patches fitted at once, an eighth for a block of the C-order
    /// copy; a movie larger than half of it is read from a memmap instead of memory. A budget
    /// below one patch is refused. Default: no budget.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) memory_budget: Option<u64>,
}

/// A size such as `8G`, `1.5GiB`, `512M`, `4096` (bytes) in bytes (binary units).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, ' '),
    };
    let shift = match unit {
        ' ' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}`: not a size (e.g. 8G, 512M)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("`{s}`: the size must be positive"));
    }
    Ok((v * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KB"), Ok(64 << 10));
        assert!(parse_bytes("8X").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("0").is_err());
    }
}
