//! `caiman-bench-point`: run ONE configuration of one pipeline stage in this fresh process and
//! print one JSON line (wall, CPU, peak RSS of the process tree, frames/s, scratch bytes,
//! accuracy). `cargo xtask perf-sweep` starts it once per run; see `caiman_bench::point`.
//!
//! ```text
//! caiman-bench-point run CONFIG.json        # or `-` (stdin), or the JSON text itself
//! caiman-bench-point prepare INPUT.json CACHE_DIR   # generate/reuse the movie, print its record
//! caiman-bench-point stages                       # which stages this build can run
//! ```
//! Errors go to stderr as one line, with exit status 1 (2 for a stage this build cannot run).
// A command-line tool's job is to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use caiman_bench::point::main_with_args;

fn main() -> ExitCode {
    // Worker processes of a `processes` backend are this executable started again: serve tasks.
    caiman_parallel::Registry::new()
        .with(caiman_motion::register_tasks)
        .with(caiman_cnmf::register_tasks)
        .serve_if_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_with_args(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
