//! HDF5 and NWB movies with CaImAn's conventions: [`Hdf5Source`] (streaming reads) and
//! [`Hdf5Writer`] (what CaImAn's `timeseries.save` writes for `.h5` / `.hdf5`).
//!
//! Reading (`caiman.load` / `load_iter` / `get_file_size` for `.h5 .hdf5 .mat .nwb`):
//! * the dataset is named by CaImAn's `var_name_hdf5` (default `mov`), but a file whose only
//!   top-level object (other than `__DATA_TYPES__`) is a dataset uses that dataset whatever the
//!   name;
//! * `.nwb` files: `<name>/data`, else `acquisition/<name>/data`; with no name given and exactly
//!   one series under `acquisition`, that series;
//! * a 3-D dataset `(T, d1, d2)` is a planar movie, a 4-D `(T, d1, d2, d3)` a volume, a 2-D
//!   `(d1, d2)` one frame; any integer, float or boolean type is converted to `f32`;
//! * the frame rate is the dataset's numeric attribute `fr`, if present;
//! * reads are hyperslabs along the time axis, straight into the caller's buffer: nothing is
//!   loaded whole.
//!
//! Writing: one `float32` dataset (`WriteOptions::dataset`, default `mov`) of shape
//! `(T, d1, d2)` (`(T, d1, d2, d3)` for volumes), chunked by whole frames (about 1 MB per chunk)
//! and deflate-compressed at `WriteOptions::compression` (0 = none), with the attributes `fr` and
//! `start_time` as `timeseries.save` writes them. Frames are streamed; the file appears under its
//! name only when [`MovieWriter::finish`] succeeds.
//!
//! What it is not: no NWB metadata (devices, imaging planes, …) is read or written, and
//! MATLAB v5 `.mat` files (not HDF5) are rejected as malformed HDF5. The HDF5 access itself is
//! in [`crate::h5`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::h5::{DatasetInfo, ElemType, H5File, H5Writer};
use crate::movie::{DType, Dims, Shape};
use crate::source::{Format, FrameSource, SourceInfo, check_request};
use crate::write::{FrameCounter, MovieWriter, WriteOptions};

/// CaImAn's default dataset name (`var_name_hdf5`).
pub const DEFAULT_DATASET: &str = "mov";

/// Top-level keys CaImAn ignores when applying the single-dataset rule.
const IGNORED_KEYS: &[&str] = &["__DATA_TYPES__"];

/// Target size of one chunk of a written movie, in bytes.
const CHUNK_BYTES: usize = 1 << 20;

/// A movie stored as one dataset of an HDF5 (or NWB) file, read frame range by frame range.
#[derive(Debug)]
pub struct Hdf5Source {
    file: H5File,
    /// Absolute path of the dataset in the file.
    dataset: String,
    /// Whether the dataset is 2-D: a single frame whose rows are axis 0.
    single_frame: bool,
    info: SourceInfo,
}

impl Hdf5Source {
    /// Open the movie in `path`: dataset `dataset` (CaImAn's `var_name_hdf5`; `None` for the
    /// default `mov`), chosen by CaImAn's rules (see the [module documentation](self)).
    ///
    /// Errors: [`Error::IsDirectory`], [`Error::Io`], [`Error::Malformed`] (not HDF5, truncated),
    /// [`Error::MissingDataset`] (listing the datasets found), [`Error::Empty`] (no frames),
    /// [`Error::Unsupported`] (a dataset that is not a 2-, 3- or 4-D array of numbers).
    pub fn open(path: &Path, dataset: Option<&str>) -> Result<Hdf5Source> {
        let file = H5File::open(path)?;
        let is_nwb = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("nwb"));
        let name = resolve_dataset(&file, dataset, is_nwb)?;
        let ds = file.dataset_info(&name)?;
        let (shape, single_frame) = movie_shape(path, &name, &ds)?;
        let dtype = movie_dtype(path, &name, &ds.dtype)?;
        let fr = file.attr_f64(&name, "fr").ok();
        let file_bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        let detail = format!(
            "dataset {name}, {}, shape {:?}, {}",
            ds.dtype,
            ds.shape,
            match &ds.chunks {
                Some(c) => format!("chunks {c:?}"),
                None => "contiguous".into(),
            }
        );
        tracing::debug!(path = %path.display(), %detail, "opened HDF5 movie");
        let info = SourceInfo { path: path.to_path_buf(), format: Format::Hdf5, shape, dtype, file_bytes, fr, detail };
        Ok(Hdf5Source { file, dataset: name, single_frame, info })
    }

    /// Absolute path of the dataset read, inside the file (`/mov`, `/acquisition/mov/data`, …).
    pub fn dataset(&self) -> &str {
        &self.dataset
    }
}

/// Pick the dataset CaImAn would read.
fn resolve_dataset(file: &H5File, requested: Option<&str>, is_nwb: bool) -> Result<String> {
    let name = requested.unwrap_or(DEFAULT_DATASET).trim_matches('/');
    let top_groups = file.groups_in("/")?;
    let top_datasets = file.datasets_in("/")?;
    let keys = top_groups.len() + top_datasets.iter().filter(|k| !IGNORED_KEYS.contains(&k.as_str())).count();
    let single: Vec<&String> = top_datasets.iter().filter(|k| !IGNORED_KEYS.contains(&k.as_str())).collect();
    let name = match single.as_slice() {
        [only] if keys == 1 => only.as_str(),
        _ => name,
    };
    if !is_nwb {
        return if file.is_dataset(name) {
            Ok(format!("/{name}"))
        } else {
            Err(Error::MissingDataset {
                path: file.path().to_path_buf(),
                name: format!("/{name}"),
                found: found_list(file),
            })
        };
    }
    let mut candidates = vec![format!("{name}/data"), format!("acquisition/{name}/data")];
    if requested.is_none() && file.is_group("acquisition") {
        let series = file.groups_in("acquisition")?;
        if let [only] = series.as_slice() {
            candidates.push(format!("acquisition/{only}/data"));
        }
    }
    candidates.iter().find(|c| file.is_dataset(c)).map(|c| format!("/{c}")).ok_or_else(|| Error::MissingDataset {
        path: file.path().to_path_buf(),
        name: candidates.iter().map(|c| format!("/{c}")).collect::<Vec<_>>().join(" or "),
        found: found_list(file),
    })
}

/// The datasets of `file`, comma separated, for [`Error::MissingDataset`].
fn found_list(file: &H5File) -> String {
    let all = file.dataset_paths();
    if all.is_empty() { "none".into() } else { all.join(", ") }
}

/// Movie shape of a dataset, and whether it is a single 2-D frame.
fn movie_shape(path: &Path, name: &str, ds: &DatasetInfo) -> Result<(Shape, bool)> {
    let (shape, single) = match *ds.shape.as_slice() {
        [d1, d2] => (Shape::new(1, Dims::planar(d1, d2)), true),
        [t, d1, d2] => (Shape::new(t, Dims::planar(d1, d2)), false),
        [t, d1, d2, d3] => (Shape::new(t, Dims::volume(d1, d2, d3)), false),
        _ => {
            return Err(Error::unsupported(
                path,
                "HDF5",
                format!(
                    "dataset {name} has shape {:?}; a movie is 2-D (d1, d2), 3-D (T, d1, d2) or 4-D (T, d1, d2, d3)",
                    ds.shape
                ),
            ));
        }
    };
    if shape.frames == 0 || shape.dims.pixels() == 0 {
        return Err(Error::Empty { path: path.to_path_buf() });
    }
    if shape
        .dims
        .d1
        .checked_mul(shape.dims.d2)
        .and_then(|p| p.checked_mul(shape.dims.d3))
        .and_then(|p| p.checked_mul(shape.frames))
        .is_none()
    {
        return Err(Error::malformed(path, "HDF5", format!("dataset {name} has shape {:?}", ds.shape)));
    }
    Ok((shape, single))
}

/// The movie element type of a dataset, refusing non-numeric ones.
fn movie_dtype(path: &Path, name: &str, ty: &ElemType) -> Result<DType> {
    if !ty.is_numeric() {
        return Err(Error::unsupported(path, "HDF5", format!("dataset {name} holds {ty} values, not numbers")));
    }
    ty.to_dtype().ok_or_else(|| Error::unsupported(path, "HDF5", format!("dataset {name} holds {ty} values")))
}

impl FrameSource for Hdf5Source {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        let n = check_request(&self.info, start, 1, buf.len())?;
        if n == 0 {
            return Ok(());
        }
        if self.single_frame {
            // `check_request` has established `start == 0 && n == 1`: the frame is all rows.
            return self.file.read_rows_f32(&self.dataset, 0, self.info.shape.dims.d1, buf);
        }
        self.file.read_rows_f32(&self.dataset, start, n, buf)
    }

    fn read_frames_strided(&mut self, start: usize, step: usize, buf: &mut [f32]) -> Result<()> {
        let n = check_request(&self.info, start, step, buf.len())?;
        if n == 0 {
            return Ok(());
        }
        if self.single_frame || n == 1 || step == 1 {
            return self.read_frames(start, buf);
        }
        self.file.read_rows_strided_f32(&self.dataset, start, step, n, buf)
    }
}

/// Writes a movie as CaImAn's `timeseries.save` does for `.h5` / `.hdf5`, frames streamed.
#[derive(Debug)]
pub struct Hdf5Writer {
    writer: H5Writer,
    dataset: String,
    path: PathBuf,
    counter: FrameCounter,
}

impl Hdf5Writer {
    /// Start writing a movie of `shape` to `path`: dataset `opts.dataset` (`float32`, chunked by
    /// whole frames, deflate level `opts.compression`), attributes `fr = opts.fr` and
    /// `start_time = 0`.
    pub fn create(path: &Path, shape: Shape, opts: &WriteOptions) -> Result<Hdf5Writer> {
        if shape.frames == 0 {
            return Err(Error::Empty { path: path.to_path_buf() });
        }
        let d = shape.dims.pixels();
        if d == 0 {
            return Err(Error::invalid(path, format!("cannot write frames of size {}", shape.dims)));
        }
        if opts.compression > 9 {
            return Err(Error::invalid(path, format!("HDF5 deflate level {} is not in 0..=9", opts.compression)));
        }
        let dataset = opts.dataset.trim_matches('/').to_string();
        if dataset.is_empty() {
            return Err(Error::invalid(path, "HDF5 dataset name is empty"));
        }
        let dims = shape.dims;
        let row_shape: Vec<usize> =
            if dims.is_volume() { vec![dims.d1, dims.d2, dims.d3] } else { vec![dims.d1, dims.d2] };
        let frame_bytes = d.saturating_mul(std::mem::size_of::<f32>());
        let chunk_frames = (CHUNK_BYTES / frame_bytes).clamp(1, shape.frames);
        let mut writer = H5Writer::create(path)?;
        writer.create_appendable_f32(&dataset, &row_shape, chunk_frames, opts.compression)?;
        writer.set_attr_f64(&dataset, "fr", opts.fr)?;
        writer.set_attr_f64(&dataset, "start_time", 0.0)?;
        Ok(Hdf5Writer { writer, dataset, path: path.to_path_buf(), counter: FrameCounter::new(shape) })
    }
}

impl MovieWriter for Hdf5Writer {
    fn shape(&self) -> Shape {
        self.counter.shape
    }

    fn write_frames(&mut self, frames: &[f32]) -> Result<()> {
        if self.counter.take(&self.path, frames.len())? == 0 {
            return Ok(());
        }
        self.writer.append_f32(&self.dataset, frames)
    }

    fn finish(self: Box<Self>) -> Result<PathBuf> {
        self.counter.check_complete(&self.path)?;
        self.writer.finish()
    }
}
