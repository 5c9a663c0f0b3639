//! The crate's error type.
//!
//! Errors are for failures caused by the *data* or the *parameters* (a trace that is too short,
//! non-finite samples, an AR order CaImAn does not support, a movie that cannot be read). Broken
//! preconditions of low-level kernels (buffers of the wrong length handed to a kernel that
//! documents its shapes) are `assert!`ed and documented under `# Panics`.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `caiman-cnmf`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two arrays that must agree in shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was being compared.
        what: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was found.
        got: Vec<usize>,
    },
    /// An input that must not be empty is empty (no samples, no pixels, ...).
    #[error("empty input: {what}")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// The data contain NaN or infinite values where finite values are required.
    #[error("non-finite values (NaN or inf) in {what}")]
    NonFinite {
        /// Which input was affected.
        what: &'static str,
    },
    /// A parameter has a value outside its domain (the message names it and the value).
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// Reading an input or writing an output failed (the message names the file).
    #[error(transparent)]
    Io(#[from] caiman_io::Error),
    /// A task failed or a worker died.
    #[error(transparent)]
    Exec(#[from] caiman_parallel::ExecError),
}

/// Turns any displayable error into a task error (for [`caiman_parallel::Task::run`]).
pub(crate) fn task_err(e: impl std::fmt::Display) -> caiman_parallel::TaskError {
    caiman_parallel::TaskError::msg(e.to_string())
}
