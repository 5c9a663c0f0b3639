//! Property: for random task lists and worker counts, Linear, Threads and Processes return
//! bit-identical outputs in input order, or the same error for the same task.

use caiman_parallel::testing::{Action, TestOutput, TestTask};
use caiman_parallel::{ExecError, Executor, Linear, Processes, Threads};
use proptest::prelude::*;

const WORKER: &str = env!("CARGO_BIN_EXE_caiman-parallel-test-worker");

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Action::Echo),
        4 => (any::<u64>(), 0u32..600).prop_map(|(seed, len)| Action::Floats { seed, len }),
        2 => (0u64..20_000).prop_map(|iters| Action::Spin { iters }),
        1 => "[a-z]{1,8}".prop_map(Action::Fail),
    ]
}

/// The comparable outcome of a map: postcard bytes of each output, or (index, error text).
fn outcome(result: Result<Vec<TestOutput>, ExecError>) -> Result<Vec<Vec<u8>>, (Option<usize>, String)> {
    match result {
        Ok(out) => Ok(out.iter().map(|o| postcard::to_stdvec(o).unwrap()).collect()),
        Err(e) => Err((e.task_index(), e.to_string())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn all_strategies_agree(
        actions in proptest::collection::vec(action(), 0..24),
        workers in 1usize..=3,
        inner in 1usize..=2,
    ) {
        let tasks: Vec<TestTask> = actions.into_iter().enumerate().map(|(i, a)| TestTask::new(i as u64, a)).collect();
        let linear = outcome(Linear::with_inner_threads(Some(inner)).map_outputs(tasks.clone()));
        let threads = outcome(Threads::with_inner_threads(workers, Some(inner)).unwrap().map_outputs(tasks.clone()));
        let pool = Processes::with_inner_threads(workers, Some(inner)).unwrap().program(WORKER);
        let processes = outcome(pool.map_outputs(tasks));
        prop_assert_eq!(&threads, &linear);
        prop_assert_eq!(&processes, &linear);
    }
}
