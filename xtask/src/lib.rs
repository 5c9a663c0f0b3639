//! `xtask`: developer tasks for caiman-rs, run as `cargo xtask <task>` (the alias lives in
//! `.cargo/config.toml`; the pattern is matklad's cargo-xtask).
//!
//! Today's task is `perf-sweep` ([`sweep`]): it maps wall time, CPU time, peak memory of the process
//! tree and accuracy over a grid of stages × strategies × workers × inner threads × thread
//! variables × patch sizes × chunk sizes ([`grid`]), each run a fresh `caiman-bench-point`
//! process, and writes CSV, JSON, a Markdown report with PNG plots ([`report`], [`plot`]) and a
//! recommended configuration for `caiman pipeline`.
//!
//! What it is not: part of the product. xtask depends on no caiman crate (it talks to
//! `caiman-bench-point` through JSON lines), may start processes (it drives cargo, rustc, git and
//! the point binary), and prints progress (its binary).

pub mod grid;
pub mod plot;
pub mod report;
pub mod sweep;
