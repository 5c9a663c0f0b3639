//! Failure handling of the process pool with real worker processes: dead workers, bad worker
//! programs, shutdown, orphans, zombies and inherited thread limits. Waits are bounded; nothing
//! here asserts on speed.

// This crate is the one allowed to start threads and processes; its tests drive them directly.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use caiman_parallel::testing::{Action, Square, TestTask, Unregistered, Value};
use caiman_parallel::{ExecError, Executor, ExitStatusInfo, Processes, THREAD_ENV_VARS, Task};

const WORKER: &str = env!("CARGO_BIN_EXE_caiman-parallel-test-worker");
/// Generous bound for "within seconds" on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(20);

fn pool(workers: usize) -> Processes {
    Processes::with_inner_threads(workers, Some(1)).unwrap().program(WORKER)
}

/// Runs `f` on a thread and waits at most `BOUND` for it: a hang fails the test instead of
/// blocking the suite.
fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND).expect("operation did not finish within the bound: hang")
}

/// `Some(state)` from /proc/<pid>/stat (`'Z'` for a zombie), `None` once the process is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

/// Children of this process (all threads), from /proc.
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Asserts that each pid is neither running, nor a zombie, nor still our child.
#[track_caller]
fn assert_gone(pids: &[u32]) {
    let kids = children();
    for &pid in pids {
        assert_eq!(proc_state(pid), None, "worker {pid} still exists (zombie or orphan)");
        assert!(!kids.contains(&pid), "worker {pid} is still our child");
    }
}

fn sleepers(n: u64, ms: u64) -> Vec<TestTask> {
    (0..n).map(|i| TestTask::new(i, Action::Sleep { ms })).collect()
}

#[test]
fn a_killed_worker_fails_the_map_and_leaves_no_process_behind() {
    let pool = std::sync::Arc::new(pool(2));
    pool.start().unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    let victim = pids[0];
    let runner = {
        let pool = pool.clone();
        thread::spawn(move || pool.map(sleepers(4, 3_000)))
    };
    thread::sleep(Duration::from_millis(300));
    // SAFETY: sending SIGKILL to a worker process this test started.
    assert_eq!(unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) }, 0);
    let result = bounded(move || runner.join().unwrap());
    match result {
        Err(ExecError::WorkerDied { pid, status, running, completed, tasks, .. }) => {
            assert_eq!(pid, victim);
            assert_eq!(status, ExitStatusInfo::Signaled { signal: libc::SIGKILL, core_dumped: false });
            assert_eq!(running.map(|(name, _)| name), Some(TestTask::NAME));
            assert_eq!((completed, tasks), (0, 4), "nothing completed, nothing delivered");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_gone(&pids);
    assert!(pool.worker_pids().is_empty());

    // The executor recovers with a fresh pool.
    let out = bounded({
        let pool = pool.clone();
        move || pool.map_outputs(vec![Square(7)])
    });
    assert_eq!(out.unwrap(), vec![49]);
    let fresh = pool.worker_pids();
    assert!(fresh.iter().all(|p| !pids.contains(p)));
    drop(pool);
    assert_gone(&fresh);
}

#[test]
fn aborting_and_exiting_workers_are_reported_with_their_task() {
    for (action, expected) in [
        (Action::Abort, ExitStatusInfo::Signaled { signal: libc::SIGABRT, core_dumped: false }),
        (Action::Exit(3), ExitStatusInfo::Exited { code: 3 }),
    ] {
        let pool = pool(2);
        let mut tasks = sleepers(6, 20);
        tasks[4] = TestTask::new(4, action.clone());
        let (result, pool) = bounded(move || (pool.map(tasks), pool));
        match result {
            Err(e @ ExecError::WorkerDied { .. }) => {
                let ExecError::WorkerDied { status, running, tasks, .. } = &e else { unreachable!() };
                // A core dump may or may not be written, depending on the machine.
                let status = match status {
                    ExitStatusInfo::Signaled { signal, .. } => {
                        ExitStatusInfo::Signaled { signal: *signal, core_dumped: false }
                    }
                    s => s.clone(),
                };
                assert_eq!(status, expected, "{action:?}");
                assert_eq!(*running, Some((TestTask::NAME, 4)));
                assert_eq!(*tasks, 6);
                assert_eq!((e.task_name(), e.task_index()), (Some(TestTask::NAME), Some(4)));
                assert!(e.to_string().contains("testing.task[4]"), "{e}");
            }
            other => panic!("{action:?}: expected WorkerDied, got {other:?}"),
        }
        assert!(pool.worker_pids().is_empty(), "the other worker was shut down");
    }
}

#[test]
fn dropping_the_executor_reaps_its_workers() {
    let pool = pool(2);
    let out = pool.map_outputs((1..=4).map(Square).collect()).unwrap();
    assert_eq!(out, vec![1, 4, 9, 16]);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    bounded(move || drop(pool));
    assert_gone(&pids);
}

#[test]
fn workers_exit_when_their_parent_dies() {
    let mut driver = Command::new(WORKER).args(["drive", "2", "30000"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(driver.stdout.take().unwrap()), &mut line).unwrap();
    let pids: Vec<u32> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    driver.kill().unwrap();
    driver.wait().unwrap();
    // Re-parented workers notice within a fraction of a second. They may linger as zombies of
    // an init that does not reap, but they must not keep running.
    let deadline = Instant::now() + BOUND;
    while pids.iter().any(|&p| proc_state(p).is_some_and(|s| s != 'Z')) {
        assert!(Instant::now() < deadline, "orphaned workers still running: {pids:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_cannot_start_a_nested_pool() {
    let out = Command::new(WORKER)
        .args(["drive", "1", "10"])
        .env(caiman_parallel::WORKER_ENV, "0")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nested process pools are not allowed"), "{stderr}");
}

#[test]
fn unregistered_task_types_are_named() {
    let pool = pool(1);
    match pool.map(vec![Unregistered]) {
        Err(ExecError::Unregistered { task, program }) => {
            assert_eq!(task, Unregistered::NAME);
            assert_eq!(program, Path::new(WORKER));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.map_outputs(vec![Square(2)]).unwrap(), vec![4], "pool still usable");
}

#[test]
fn programs_that_are_not_workers_fail_the_handshake() {
    // Prints something else: fails at once, and the program is killed and reaped.
    let chatty = Processes::new(1).unwrap().program("/bin/sh").program_args(["-c", "echo hello; sleep 30"]);
    let started = Instant::now();
    match bounded(move || chatty.start()) {
        Err(ExecError::Handshake { detail, .. }) => assert!(detail.contains("hello"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < BOUND);
    // Says nothing: the handshake times out.
    let silent = Processes::new(1)
        .unwrap()
        .program("/bin/sh")
        .program_args(["-c", "sleep 30"])
        .handshake_timeout(Duration::from_millis(500));
    match bounded(move || silent.start()) {
        Err(ExecError::Handshake { detail, .. }) => {
            assert!(detail.contains("no answer"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    // Exits at once.
    let quitter = Processes::new(1).unwrap().program("/bin/true");
    assert!(matches!(bounded(move || quitter.start()), Err(ExecError::Handshake { .. })));
    // Does not exist.
    let missing = Processes::new(1).unwrap().program("/nonexistent/caiman-worker");
    assert!(matches!(missing.start(), Err(ExecError::Spawn { .. })));
}

#[test]
fn workers_inherit_the_inner_thread_limit() {
    for (workers, inner) in [(2, 1), (1, 2)] {
        let pool = Processes::with_inner_threads(workers, Some(inner)).unwrap().program(WORKER);
        let tasks = (0..2 * workers as u64).map(|i| TestTask::new(i, Action::Inner)).collect();
        for out in pool.map_outputs(tasks).unwrap() {
            let Value::Inner(r) = out.value else { panic!() };
            assert_eq!(r.par, inner);
            assert!(r.threads_used <= inner);
            for var in THREAD_ENV_VARS {
                let seen = r.env.iter().find(|(k, _)| k == var).and_then(|(_, v)| v.clone());
                assert_eq!(seen.as_deref(), Some(inner.to_string().as_str()), "{var}");
            }
            // The global rayon pool of a worker follows RAYON_NUM_THREADS, not the cores.
            assert_eq!(r.rayon_threads, inner);
            // main + watchdog + inner pool + global rayon pool.
            if let Some(n) = r.os_threads {
                assert!(n <= 2 + 2 * inner, "worker runs {n} threads with inner = {inner}");
            }
            assert_ne!(r.pid, std::process::id());
        }
    }
}

#[test]
fn tasks_are_spread_over_workers() {
    let pool = pool(2);
    let (out, stats) = pool.map(sleepers(6, 30)).unwrap();
    assert_eq!(out.len(), 6);
    let mut used: Vec<usize> = stats.task_worker.clone();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, vec![0, 1], "both workers took tasks");
    assert!(stats.task_wall.iter().all(|&w| w >= Duration::from_millis(30)));
    assert!(stats.peak_rss.workers_sum_kib > 0);
}
