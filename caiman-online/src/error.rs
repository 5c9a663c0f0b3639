//! The error type of `caiman-online`.

/// What can go wrong while initialising or running OnACID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CNMF kernel (initialisation, OASIS, exceptionality, …) failed.
    #[error(transparent)]
    Cnmf(#[from] caiman_cnmf::Error),
    /// Reading a movie failed.
    #[error(transparent)]
    Io(#[from] caiman_io::Error),
    /// Motion correction of a frame failed.
    #[error(transparent)]
    Motion(#[from] caiman_motion::Error),
    /// A map on the executor failed.
    #[error(transparent)]
    Exec(#[from] caiman_parallel::ExecError),
    /// A parameter (or a combination of parameters) OnACID cannot run with.
    #[error("invalid OnACID parameter: {0}")]
    InvalidParam(String),
    /// A frame holds NaN or infinite values (CaImAn raises on NaN too).
    #[error("{source_name}: frame {frame} contains NaN or infinite values")]
    NonFinite {
        /// The movie (file name) or "frame" for frames fed through the API.
        source_name: String,
        /// Index of the frame in that movie.
        frame: usize,
    },
    /// A frame or movie of the wrong size.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was checked.
        what: &'static str,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// A configuration outside what this port implements (named in the crate docs).
    #[error("unsupported by caiman-online: {0}")]
    Unsupported(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
