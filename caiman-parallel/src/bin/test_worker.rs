//! Worker program for caiman-parallel's process-pool tests: it serves the `testing` tasks.
//!
//! Started with `--caiman-worker` it is a worker. Started as `drive <workers> <sleep_ms>` it is a
//! parent: it starts a pool of itself, writes the worker pids to stdout on one line, then runs
//! long sleep tasks — the orphan test kills it there and checks that its workers go away.

use std::io::Write;

use caiman_parallel::testing::{self, Action, TestTask};
use caiman_parallel::{Executor, Processes};

fn main() {
    testing::registry().serve_if_worker();

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["drive", workers, sleep_ms] => {
            let workers: usize = workers.parse().expect("workers");
            let ms: u64 = sleep_ms.parse().expect("sleep_ms");
            let pool = Processes::with_inner_threads(workers, Some(1)).expect("pool");
            pool.start().unwrap_or_else(|e| panic!("start: {e}"));
            let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
            let mut out = std::io::stdout();
            writeln!(out, "{}", pids.join(" ")).expect("stdout");
            out.flush().expect("stdout");
            let tasks = (0..workers as u64).map(|i| TestTask::new(i, Action::Sleep { ms })).collect();
            let result = pool.map_outputs(tasks);
            writeln!(out, "done: {}", result.is_ok()).expect("stdout");
        }
        _ => {
            let mut err = std::io::stderr();
            let _ = writeln!(err, "usage: caiman-parallel-test-worker drive <workers> <sleep_ms>");
            std::process::exit(2);
        }
    }
}
