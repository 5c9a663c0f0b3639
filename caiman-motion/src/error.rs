//! The crate's error type.
//!
//! Errors are reserved for failures caused by the *data* (a frame whose shape does not match the
//! template, non-finite pixels that make a registration meaningless, an image smaller than one
//! patch, a parameter file with nonsensical values). Broken preconditions of the low-level kernels
//! (buffers of the wrong length handed to a kernel that documents its shapes) are `assert!`ed and
//! documented under `# Panics`.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `caiman-motion`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two arrays that must have the same shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was being compared (e.g. "frame vs template").
        what: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was found.
        got: Vec<usize>,
    },
    /// The image is smaller than one patch window (`strides + overlaps`) along some axis.
    /// CaImAn silently produces negative patch starts in this case.
    #[error("image of size {dims:?} is smaller than the patch window {window:?} (strides + overlaps)")]
    PatchLargerThanImage {
        /// Image size per axis.
        dims: Vec<usize>,
        /// Patch window per axis.
        window: Vec<usize>,
    },
    /// The data contain NaN or infinite values where finite values are required
    /// (e.g. a frame or a template being registered).
    #[error("non-finite values (NaN or inf) in {what}")]
    NonFinite {
        /// Which input was affected.
        what: &'static str,
    },
    /// An input that must not be empty is empty (no frames, zero-sized image, ...).
    #[error("empty input: {what}")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// A combination of options CaImAn itself refuses (for example high-pass filtering together
    /// with Fourier-domain shifting) or that this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Invalid motion-correction parameters.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// Reading the movie or writing the output failed (the message names the file).
    #[error(transparent)]
    Io(#[from] caiman_io::Error),
    /// A chunk failed or a worker died.
    #[error(transparent)]
    Exec(#[from] caiman_parallel::ExecError),
}

/// A motion parameter value that makes no sense (see [`crate::MotionParams::validate`]).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// The parameter JSON could not be parsed or has the wrong type for a key.
    #[error("invalid parameter JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A parameter has an invalid value.
    #[error("invalid value for motion parameter `{key}`: {reason}")]
    Invalid {
        /// CaImAn's key name.
        key: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
}

impl ParamsError {
    pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { key, reason: reason.into() }
    }
}
