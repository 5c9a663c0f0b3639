//! Shared set-up of the sweep tests: run `cargo xtask perf-sweep`'s library with a grid over the
//! real `caiman-bench-point` binary.

use std::path::{Path, PathBuf};

/// The point binary under test.
pub(crate) const POINT_BIN: &str = env!("CARGO_BIN_EXE_caiman-bench-point");

/// A fresh temporary directory for one sweep, named with `prefix`.
pub(crate) fn sweep_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// Writes `grid_toml` into `dir`, sweeps it (outputs in `dir/out`, movie cache in `dir/cache`)
/// and returns the outcome, the output directory and the log lines. Panics on a sweep error.
pub(crate) fn run_sweep(dir: &Path, grid_toml: &str) -> (xtask::sweep::SweepOutcome, PathBuf, Vec<String>) {
    let grid = dir.join("grid.toml");
    std::fs::write(&grid, grid_toml).unwrap();
    let out = dir.join("out");
    let opts = xtask::sweep::SweepOptions {
        grid: Some(grid),
        out: out.clone(),
        point_bin: Some(POINT_BIN.into()),
        cache_dir: Some(dir.join("cache")),
        workspace: Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf(),
        ..Default::default()
    };
    let mut log = Vec::new();
    let o = xtask::sweep::run(&opts, &mut |l| log.push(l.to_owned())).unwrap();
    (o, out, log)
}
