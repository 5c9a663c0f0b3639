//! The conformance suite (`testing::check_executor`) against every strategy, with real worker
//! processes for `Processes`.

use caiman_parallel::testing::check_executor;
use caiman_parallel::{Backend, Executor, Linear, Processes, Threads};

const WORKER: &str = env!("CARGO_BIN_EXE_caiman-parallel-test-worker");

#[test]
fn linear_conforms() {
    check_executor(&Linear::new());
    check_executor(&Linear::with_inner_threads(Some(2)));
}

#[test]
fn threads_conform() {
    for (workers, inner) in [(1, Some(1)), (2, None), (3, Some(2))] {
        check_executor(&Threads::with_inner_threads(workers, inner).unwrap());
    }
}

#[test]
fn processes_conform() {
    for (workers, inner) in [(2, Some(1)), (1, Some(2))] {
        let pool = Processes::with_inner_threads(workers, inner).unwrap().program(WORKER);
        check_executor(&pool);
        assert_eq!(pool.worker_pids().len(), workers, "the pool survives task failures");
    }
}

#[test]
fn any_executor_conforms() {
    for backend in ["linear", "threads:2"] {
        let executor = backend.parse::<Backend>().unwrap().build().unwrap();
        check_executor(&executor);
    }
    match Backend::processes(2).build().unwrap() {
        caiman_parallel::AnyExecutor::Processes(p) => {
            let p = p.program(WORKER);
            assert_eq!(p.workers(), 2);
            check_executor(&p);
        }
        other => panic!("{other:?}"),
    }
}
