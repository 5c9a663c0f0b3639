//! The error type of `caiman-io`: every variant names the file it is about.

use std::path::{Path, PathBuf};

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing a movie.
///
/// Every variant carries the path of the file concerned, so that a message shown to a user
/// always says which file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation (open, read, write, rename, …).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is not what its format requires.
    #[error("{path}: {format} file is malformed: {msg}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Format name (`TIFF`, `NPY`, …).
        format: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The file is valid but uses a feature this crate does not read.
    #[error("{path}: unsupported {format} feature: {msg}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Format name.
        format: &'static str,
        /// Which feature.
        msg: String,
    },
    /// The extension does not name a known movie format.
    #[error(
        "{path}: unknown movie format (extension {ext:?}); known: .tif .tiff .btf .h5 .hdf5 .nwb .mat .npy .npz .mmap"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The extension found (may be empty).
        ext: String,
    },
    /// The path is a directory, not a file.
    #[error("{path}: is a directory, expected a movie file")]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The movie holds no frames.
    #[error("{path}: movie has zero frames")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// An HDF5 file lacks the requested dataset.
    #[error("{path}: no dataset {name:?} (datasets found: {found})")]
    MissingDataset {
        /// The file.
        path: PathBuf,
        /// The dataset asked for.
        name: String,
        /// The datasets present, comma separated.
        found: String,
    },
    /// A request does not fit the movie (frame range out of bounds, buffer of the wrong size, …).
    #[error("{path}: {msg}")]
    InvalidRequest {
        /// The file.
        path: PathBuf,
        /// What is wrong with the request.
        msg: String,
    },
    /// Files chained into one movie disagree on their frame shape.
    #[error("{path}: frame shape {found} differs from {expected} of the first file in the chain")]
    ShapeMismatch {
        /// The offending file.
        path: PathBuf,
        /// Shape of the first file.
        expected: String,
        /// Shape of this file.
        found: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Malformed`] for `path`.
    pub fn malformed(path: &Path, format: &'static str, msg: impl Into<String>) -> Self {
        Error::Malformed { path: path.to_path_buf(), format, msg: msg.into() }
    }

    /// An [`Error::Unsupported`] for `path`.
    pub fn unsupported(path: &Path, format: &'static str, msg: impl Into<String>) -> Self {
        Error::Unsupported { path: path.to_path_buf(), format, msg: msg.into() }
    }

    /// An [`Error::InvalidRequest`] for `path`.
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Error::InvalidRequest { path: path.to_path_buf(), msg: msg.into() }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::Malformed { path, .. }
            | Error::Unsupported { path, .. }
            | Error::UnknownFormat { path, .. }
            | Error::IsDirectory { path }
            | Error::Empty { path }
            | Error::MissingDataset { path, .. }
            | Error::InvalidRequest { path, .. }
            | Error::ShapeMismatch { path, .. } => path,
        }
    }
}

/// Attach a path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
