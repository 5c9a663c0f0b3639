//! The unit of work: [`Task`], the context it runs in ([`TaskCtx`]) and its error ([`TaskError`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::par::Par;

/// One unit of work that any [`Executor`](crate::Executor) can run: in the calling thread, on a
/// pool thread, or in another process (or, later, on another machine).
///
/// The contract:
/// * **Self-contained.** A task carries everything it needs as plain serialisable data: small
///   parameters, and *paths plus index ranges* for bulk data (a movie, a memmap), never the pixels
///   themselves. It runs without shared mutable state; whatever it produces is in its `Output`
///   (or written by the task itself to a region of a file that no other task writes).
/// * **Deterministic.** Running the same task twice gives bit-identical output, whatever the
///   strategy, the worker that runs it, or the inner parallelism in [`TaskCtx::par`]. Randomness
///   comes from a seed carried in the task (see [`TaskCtx::seed`]), never from a shared RNG.
/// * **Named.** [`Task::NAME`] identifies the type across processes; it must be unique among the
///   task types registered in one program (convention: `"crate.task"`, e.g. `"motion.rigid_chunk"`).
/// * **Serialisable with the [`Codec`] it declares.** The default, postcard, keeps floats bit-exact
///   (NaN payloads included) but supports no self-describing serde features (`#[serde(flatten)]`,
///   `untagged` or internally tagged enums, `skip_serializing_if`). A task whose types need those
///   sets [`Task::CODEC`] to [`Codec::Json`].
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// Name of the task type, unique within a program's [`Registry`](crate::Registry).
    const NAME: &'static str;

    /// How this task and its output travel between processes.
    const CODEC: Codec = Codec::Postcard;

    /// What the task returns; it travels back from worker processes, so it must serialise too.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Runs the task. Use `ctx.par()` for intra-task parallelism; never start threads yourself.
    ///
    /// # Errors
    /// A [`TaskError`] for failures caused by the data (bad file, shape mismatch, …); the map
    /// that ran the task returns it as [`ExecError::TaskFailed`](crate::ExecError::TaskFailed).
    fn run(self, ctx: &TaskCtx) -> Result<Self::Output, TaskError>;
}

/// Serialisation format of a task and its output on the process boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact and bit-exact; not self-describing.
    Postcard,
    /// JSON (serde_json with `float_roundtrip`): supports every serde feature, but turns
    /// non-finite floats into `null`, so it is not bit-exact for NaN or infinities.
    Json,
}

impl Codec {
    /// Serialises `value`.
    pub(crate) fn encode<V: Serialize + ?Sized>(self, value: &V) -> Result<Vec<u8>, String> {
        match self {
            Codec::Postcard => postcard::to_stdvec(value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        }
    }

    /// Deserialises a `V`.
    pub(crate) fn decode<V: DeserializeOwned>(self, bytes: &[u8]) -> Result<V, String> {
        match self {
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// What a running task knows about where it runs.
#[derive(Clone, Debug)]
pub struct TaskCtx {
    index: usize,
    worker: usize,
    par: Par,
}

impl TaskCtx {
    /// A context for the task at `index` of a map, run by `worker` with inner parallelism `par`.
    ///
    /// Executors create these; a hand-written [`Executor`](crate::Executor) does too.
    pub fn new(index: usize, worker: usize, par: Par) -> Self {
        Self { index, worker, par }
    }

    /// Position of this task in the list given to `map` (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Which worker (thread or process, 0-based) runs the task. Informational only: outputs must
    /// not depend on it.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The inner parallelism this task may use: its share of the executor's thread budget.
    /// Pass it to kernels, which run their parallel loops through [`Par`]'s helpers.
    pub fn par(&self) -> Par {
        self.par
    }

    /// A seed for this task derived from `base` and the task index (SplitMix64), so that every
    /// task of a map gets its own reproducible random stream, whatever the strategy.
    pub fn seed(&self, base: u64) -> u64 {
        split_mix64(base ^ split_mix64(self.index as u64))
    }
}

fn split_mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A task's own failure, caused by its data. It crosses process boundaries, so it is plain text:
/// the message of the original error followed by its `source()` chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    message: String,
}

impl TaskError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self { message: message.to_string() }
    }

    /// Captures an error and its `source()` chain as text (`"outer: inner: root"`).
    pub fn from_error<E: std::error::Error + ?Sized>(error: &E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self { message }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<std::io::Error> for TaskError {
    fn from(e: std::io::Error) -> Self {
        Self::from_error(&e)
    }
}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        Self::msg(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_index_and_are_stable() {
        let a = TaskCtx::new(0, 0, Par::Seq).seed(7);
        let b = TaskCtx::new(1, 3, Par::Seq).seed(7);
        assert_ne!(a, b);
        assert_eq!(a, TaskCtx::new(0, 5, Par::new(4)).seed(7));
    }

    #[test]
    fn error_chain_is_flattened() {
        let inner = std::io::Error::other("disk on fire");
        let e = TaskError::from(inner);
        assert_eq!(e.message(), "disk on fire");
        assert_eq!(TaskError::msg("x").to_string(), "x");
    }

    #[test]
    fn codecs_round_trip() {
        let v = vec![1.5f32, f32::from_bits(0x7fc0_0001)];
        let bytes = Codec::Postcard.encode(&v).unwrap();
        let back: Vec<f32> = Codec::Postcard.decode(&bytes).unwrap();
        assert_eq!(back[1].to_bits(), 0x7fc0_0001);
        let bytes = Codec::Json.encode(&v[..1]).unwrap();
        let back: Vec<f32> = Codec::Json.decode(&bytes).unwrap();
        assert_eq!(back, vec![1.5]);
    }
}
