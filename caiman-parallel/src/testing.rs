//! Test tasks and the executor conformance suite (feature `testing`).
//!
//! [`check_executor`] states the [`Executor`] contract as a test that every strategy — and any
//! executor written later (MPI, SLURM) — must pass. [`registry`] registers the test tasks, for a
//! worker program that serves them (this crate's `caiman-parallel-test-worker`).

use serde::{Deserialize, Serialize};

use crate::error::ExecError;
use crate::executor::Executor;
use crate::par::Par;
use crate::process::Registry;
use crate::stats::Strategy;
use crate::task::{Codec, Task, TaskCtx, TaskError};

/// What a [`TestTask`] does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Returns the bytes.
    Echo(Vec<u8>),
    /// Computes `len` floats from the seed, including NaN payloads, ±0, ±∞ and subnormals,
    /// using the task's inner parallelism (the values do not depend on it).
    Floats {
        /// Seed (mixed with the task index).
        seed: u64,
        /// How many floats.
        len: u32,
    },
    /// Burns CPU for `iters` rounds of integer hashing; returns the hash.
    Spin {
        /// Rounds.
        iters: u64,
    },
    /// Returns `Err(TaskError)` with this message.
    Fail(String),
    /// Panics with this message.
    Panic(String),
    /// Sleeps, then returns nothing.
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
    /// Aborts the process. **Only for `Processes`**: it would abort a test binary.
    Abort,
    /// Exits the process with this code. **Only for `Processes`.**
    Exit(i32),
    /// Reports where it runs and what inner-thread limits it sees ([`InnerReport`]).
    Inner,
}

/// A test task: an id (echoed back) and an [`Action`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestTask {
    /// Echoed in the output.
    pub id: u64,
    /// What to do.
    pub action: Action,
}

impl TestTask {
    /// A task.
    pub fn new(id: u64, action: Action) -> Self {
        Self { id, action }
    }
}

/// The output of a [`TestTask`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestOutput {
    /// The task's id.
    pub id: u64,
    /// The task's index in its map, as seen through [`TaskCtx::index`].
    pub index: u64,
    /// The result.
    pub value: Value,
}

/// The result part of a [`TestOutput`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// From [`Action::Echo`].
    Bytes(Vec<u8>),
    /// From [`Action::Floats`] (compare bit patterns, e.g. with [`assert_bit_identical`]).
    Floats(Vec<f32>),
    /// From [`Action::Spin`].
    Hash(u64),
    /// From [`Action::Sleep`].
    Unit,
    /// From [`Action::Inner`].
    Inner(InnerReport),
}

/// What an [`Action::Inner`] task saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InnerReport {
    /// `ctx.par().degree()`.
    pub par: usize,
    /// Threads that actually ran a 64-chunk [`Par::for_each_chunk_mut`] with that `par`.
    pub threads_used: usize,
    /// The thread environment variables as the task's process sees them.
    pub env: Vec<(String, Option<String>)>,
    /// Size of rayon's pool as seen from the task (its executor's pool, or the global pool).
    pub rayon_threads: usize,
    /// Threads of the task's process (Linux: from `/proc/self/status`).
    pub os_threads: Option<usize>,
    /// Process id.
    pub pid: u32,
    /// `ctx.worker()`.
    pub worker: usize,
}

impl Task for TestTask {
    const NAME: &'static str = "testing.task";
    type Output = TestOutput;

    fn run(self, ctx: &TaskCtx) -> Result<TestOutput, TaskError> {
        let value = match self.action {
            Action::Echo(bytes) => Value::Bytes(bytes),
            Action::Floats { seed, len } => Value::Floats(floats(ctx.seed(seed), len as usize, ctx.par())),
            Action::Spin { iters } => Value::Hash(spin(self.id, iters)),
            Action::Fail(message) => return Err(TaskError::msg(message)),
            Action::Panic(message) => panic!("{message}"),
            Action::Sleep { ms } => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Value::Unit
            }
            Action::Abort => std::process::abort(),
            Action::Exit(code) => std::process::exit(code),
            Action::Inner => Value::Inner(inner_report(ctx)),
        };
        Ok(TestOutput { id: self.id, index: ctx.index() as u64, value })
    }
}

/// A second task type: squares a number (checks that one worker program serves several types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Square(pub u64);

impl Task for Square {
    const NAME: &'static str = "testing.square";
    type Output = u64;

    fn run(self, _: &TaskCtx) -> Result<u64, TaskError> {
        self.0.checked_mul(self.0).ok_or_else(|| TaskError::msg(format!("{} squared overflows", self.0)))
    }
}

/// A task that needs the JSON codec: it holds an internally tagged enum, which postcard cannot
/// decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonTask {
    /// Internally tagged, so only self-describing formats can decode it.
    pub shape: Shape,
}

/// The payload of a [`JsonTask`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Shape {
    /// A rectangle.
    Rect {
        /// Width.
        w: f64,
        /// Height.
        h: f64,
    },
    /// A circle.
    Circle {
        /// Radius.
        r: f64,
    },
}

impl Task for JsonTask {
    const NAME: &'static str = "testing.json";
    const CODEC: Codec = Codec::Json;
    type Output = Shape;

    fn run(self, _: &TaskCtx) -> Result<Shape, TaskError> {
        Ok(match self.shape {
            Shape::Rect { w, h } => Shape::Rect { w: h, h: w },
            Shape::Circle { r } => Shape::Circle { r: 2.0 * r },
        })
    }
}

/// A task type that [`registry`] deliberately leaves out.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Unregistered;

impl Task for Unregistered {
    const NAME: &'static str = "testing.unregistered";
    type Output = ();

    fn run(self, _: &TaskCtx) -> Result<(), TaskError> {
        Ok(())
    }
}

/// The registry of a test worker program: [`TestTask`], [`Square`], [`JsonTask`].
pub fn registry() -> Registry {
    Registry::new().register::<TestTask>().register::<Square>().register::<JsonTask>()
}

fn spin(id: u64, iters: u64) -> u64 {
    let mut h = id ^ 0xcbf2_9ce4_8422_2325;
    for i in 0..iters {
        h = (h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
    }
    std::hint::black_box(h)
}

fn floats(seed: u64, len: usize, par: Par) -> Vec<f32> {
    const SPECIAL: [u32; 8] =
        [0x7fc0_0001, 0xffc0_1234, 0x8000_0000, 0x0000_0000, 0x7f80_0000, 0xff80_0000, 0x0000_0001, 0x807f_ffff];
    let mut out = vec![0f32; len];
    par.for_each_chunk_mut(&mut out, 64, |chunk, values| {
        for (j, v) in values.iter_mut().enumerate() {
            let i = (chunk * 64 + j) as u64;
            let bits = spin(seed ^ i, 3);
            *v = if bits.is_multiple_of(13) {
                f32::from_bits(SPECIAL[(bits >> 8) as usize % SPECIAL.len()])
            } else {
                let x = (bits >> 11) as f64 / (1u64 << 53) as f64;
                ((x * std::f64::consts::TAU).sin() * (1.0 + x).ln() * 1e3) as f32
            };
        }
    });
    out
}

fn inner_report(ctx: &TaskCtx) -> InnerReport {
    let names = std::sync::Mutex::new(std::collections::HashSet::new());
    ctx.par().for_each_chunk_mut(&mut [0u8; 64], 1, |_, _| {
        std::thread::sleep(std::time::Duration::from_micros(200));
        names.lock().unwrap_or_else(|e| e.into_inner()).insert(std::thread::current().id());
    });
    let threads_used = names.into_inner().unwrap_or_else(|e| e.into_inner()).len();
    InnerReport {
        par: ctx.par().degree(),
        threads_used,
        env: crate::inner::THREAD_ENV_VARS.iter().map(|&k| (k.to_owned(), std::env::var(k).ok())).collect(),
        rayon_threads: rayon::current_num_threads(),
        os_threads: os_threads(),
        pid: std::process::id(),
        worker: ctx.worker(),
    }
}

fn os_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// Runs the tasks one by one in this thread with inner parallelism `par`: the reference that
/// every executor must match bit for bit. Returns the first error as `(index, message)`.
pub fn reference<T: Task + Clone>(tasks: &[T], par: Par) -> Result<Vec<T::Output>, (usize, String)> {
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| t.clone().run(&TaskCtx::new(i, 0, par)).map_err(|e| (i, e.to_string())))
        .collect()
}

/// Asserts that two output lists are bit-identical (compared through their postcard encoding, so
/// NaN payloads and signed zeros count).
#[track_caller]
pub fn assert_bit_identical<O: Serialize + std::fmt::Debug>(left: &[O], right: &[O], what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: different lengths");
    for (i, (l, r)) in left.iter().zip(right).enumerate() {
        let (lb, rb) = (postcard::to_stdvec(l).unwrap(), postcard::to_stdvec(r).unwrap());
        assert!(lb == rb, "{what}: output {i} differs:\n  {l:?}\n  {r:?}");
    }
}

/// A mixed list of deterministic tasks (no failures, panics or process exits).
pub fn mixed_tasks(n: usize) -> Vec<TestTask> {
    (0..n as u64)
        .map(|id| {
            let action = match id % 4 {
                0 => Action::Echo((0..(id * 37 % 300) as u8).collect()),
                1 => Action::Floats { seed: id, len: 100 + (id as u32 * 131) % 900 },
                2 => Action::Spin { iters: 1000 + id * 500 },
                _ => Action::Sleep { ms: 1 + id % 3 },
            };
            TestTask::new(id, action)
        })
        .collect()
}

/// The conformance suite: checks the [`Executor`] contract on `executor`, panicking with a
/// message on the first violation. It runs a few hundred small tasks and uses no process exits,
/// so it is safe for in-process executors. A process-based executor must serve [`registry`].
///
/// Checked: empty maps; outputs bit-identical to [`reference()`] and in input order, for several
/// task types and codecs and payloads of several MiB; run statistics filled and consistent;
/// a task error and a panic reported with the task's name and index, the lowest index winning
/// when several fail; the executor usable after failures; every task given the executor's inner
/// threads, and using no more.
#[track_caller]
pub fn check_executor<E: Executor>(executor: &E) {
    let label = format!("{}×{}", executor.strategy(), executor.workers());
    let inner = executor.inner_threads().per_task;
    let par = Par::new(inner);

    // Empty map.
    let (out, stats) = executor.map(Vec::<TestTask>::new()).expect("empty map");
    assert!(out.is_empty() && stats.tasks == 0 && stats.task_wall.is_empty(), "{label}: empty map");

    // Mixed tasks, outputs in order and bit-identical to the reference.
    let tasks = mixed_tasks(41);
    let expected = reference(&tasks, par).expect("reference run");
    let (out, stats) = executor.map(tasks.clone()).unwrap_or_else(|e| panic!("{label}: mixed map: {e}"));
    assert_bit_identical(&out, &expected, &label);
    for (i, o) in out.iter().enumerate() {
        assert_eq!((o.id, o.index), (i as u64, i as u64), "{label}: order");
    }
    assert_eq!(stats.strategy, executor.strategy(), "{label}: stats strategy");
    assert_eq!((stats.tasks, stats.workers, stats.inner_threads), (41, executor.workers(), inner), "{label}: stats");
    assert_eq!(
        (stats.task_wall.len(), stats.task_cpu.len(), stats.task_worker.len()),
        (41, 41, 41),
        "{label}: per-task stats"
    );
    assert!(stats.task_worker.iter().all(|&w| w < executor.workers()), "{label}: worker indices");
    assert!(stats.wall >= *stats.task_wall.iter().max().unwrap(), "{label}: wall < a task's wall");
    assert!(stats.task_wall[3] >= std::time::Duration::from_millis(1), "{label}: sleep task wall time");
    assert!(stats.cpu_total > std::time::Duration::ZERO, "{label}: cpu_total");
    assert!(stats.peak_rss.parent_kib > 0, "{label}: parent peak rss");
    if executor.strategy() == Strategy::Processes {
        assert_eq!(stats.peak_rss.workers_kib.len(), executor.workers(), "{label}: worker peaks");
        assert!(stats.peak_rss.workers_kib.iter().all(|&k| k > 0), "{label}: worker peaks");
        assert_eq!(stats.peak_rss.total_kib, stats.peak_rss.parent_kib + stats.peak_rss.workers_sum_kib);
    }

    // Big payloads both ways (several frames' worth of pipe buffer).
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let tasks =
        vec![TestTask::new(0, Action::Echo(big.clone())), TestTask::new(1, Action::Floats { seed: 9, len: 300_000 })];
    let out = executor.map_outputs(tasks.clone()).unwrap_or_else(|e| panic!("{label}: big payloads: {e}"));
    assert_bit_identical(&out, &reference(&tasks, par).unwrap(), &label);

    // Other task types, including one that needs the JSON codec.
    let squares = executor.map_outputs((0..20).map(Square).collect()).expect("squares");
    assert_eq!(squares, (0..20u64).map(|x| x * x).collect::<Vec<_>>(), "{label}: squares");
    let shapes = vec![JsonTask { shape: Shape::Rect { w: 1.5, h: 0.1 } }, JsonTask { shape: Shape::Circle { r: 0.3 } }];
    let out = executor.map_outputs(shapes).expect("json codec");
    assert_eq!(out, vec![Shape::Rect { w: 0.1, h: 1.5 }, Shape::Circle { r: 0.6 }], "{label}: json");

    // A failing task is named, with its index.
    let mut tasks = mixed_tasks(12);
    tasks[5] = TestTask::new(5, Action::Fail("bad frame range".into()));
    match executor.map(tasks) {
        Err(ExecError::TaskFailed { task, index: 5, source }) => {
            assert_eq!(task, TestTask::NAME);
            assert_eq!(source.message(), "bad frame range");
        }
        other => panic!("{label}: expected TaskFailed at 5, got {:?}", other.map(|(o, _)| o.len())),
    }

    // Several failures: the lowest index wins, as in a linear run; panics are caught.
    let mut tasks = mixed_tasks(16);
    tasks[3] = TestTask::new(3, Action::Fail("first".into()));
    tasks[9] = TestTask::new(9, Action::Panic("second".into()));
    tasks[12] = TestTask::new(12, Action::Fail("third".into()));
    match executor.map(tasks) {
        Err(ExecError::TaskFailed { index: 3, source, .. }) => {
            assert_eq!(source.message(), "first")
        }
        other => panic!("{label}: expected TaskFailed at 3, got {:?}", other.map(|(o, _)| o.len())),
    }
    let mut tasks = mixed_tasks(8);
    tasks[2] = TestTask::new(2, Action::Panic("kernel bug".into()));
    match executor.map(tasks) {
        Err(ExecError::TaskPanicked { task, index: 2, message }) => {
            assert_eq!(task, TestTask::NAME);
            assert!(message.contains("kernel bug"), "{label}: panic message {message:?}");
        }
        other => {
            panic!("{label}: expected TaskPanicked at 2, got {:?}", other.map(|(o, _)| o.len()))
        }
    }
    match executor.map(vec![Square(3), Square(u64::MAX)]) {
        Err(e @ ExecError::TaskFailed { .. }) => {
            assert_eq!((e.task_name(), e.task_index()), (Some(Square::NAME), Some(1)), "{label}");
        }
        other => panic!("{label}: expected Square's overflow, got {other:?}"),
    }

    // Still usable.
    let tasks = mixed_tasks(9);
    let out = executor.map_outputs(tasks.clone()).unwrap_or_else(|e| panic!("{label}: map after failures: {e}"));
    assert_bit_identical(&out, &reference(&tasks, par).unwrap(), &label);

    // Inner threads: every task gets the executor's share and uses no more.
    let tasks: Vec<_> = (0..2 * executor.workers() as u64).map(|i| TestTask::new(i, Action::Inner)).collect();
    for o in executor.map_outputs(tasks).expect("inner report") {
        let Value::Inner(report) = o.value else { panic!("{label}: not an inner report") };
        assert_eq!(report.par, inner, "{label}: task's par");
        assert!(report.threads_used <= inner, "{label}: task used {} threads > {inner}", report.threads_used);
        if executor.strategy() == Strategy::Processes {
            for (var, value) in &report.env {
                assert_eq!(value.as_deref(), Some(inner.to_string().as_str()), "{label}: worker's {var}");
            }
        }
    }
}
