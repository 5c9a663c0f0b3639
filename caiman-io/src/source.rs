//! Streaming frame readers: the [`FrameSource`] trait, format detection and [`open`].
//!
//! Every stage of the pipeline reads movies through a `FrameSource`: dimensions and frame count are
//! known without reading pixels, any frame range (or every k-th frame) is read into a caller buffer,
//! and nothing is loaded whole unless [`load`] is asked to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::movie::{DType, Dims, Movie, MovieMeta, Shape};

/// A movie file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// TIFF / BigTIFF (`.tif`, `.tiff`, `.btf`).
    Tiff,
    /// HDF5 (`.h5`, `.hdf5`, `.mat` v7.3, `.nwb`).
    Hdf5,
    /// NumPy `.npy`.
    Npy,
    /// NumPy `.npz` as written by CaImAn's `timeseries.save`.
    Npz,
    /// CaImAn's raw memory-mapped `.mmap`.
    Mmap,
}

impl Format {
    /// The format a path's extension names (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "tif" | "tiff" | "btf" => Format::Tiff,
            "h5" | "hdf5" | "hdf" | "mat" | "nwb" => Format::Hdf5,
            "npy" => Format::Npy,
            "npz" => Format::Npz,
            "mmap" => Format::Mmap,
            _ => return Err(Error::UnknownFormat { path: path.to_path_buf(), ext }),
        })
    }

    /// Short name (`tiff`, `hdf5`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Format::Tiff => "tiff",
            Format::Hdf5 => "hdf5",
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::Mmap => "mmap",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is known about a movie file without reading its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Frames and frame size.
    pub shape: Shape,
    /// Element type stored in the file.
    pub dtype: DType,
    /// Size of the file in bytes.
    pub file_bytes: u64,
    /// Frame rate stored in the file, if any.
    pub fr: Option<f64>,
    /// Format-specific detail (TIFF flavour, HDF5 dataset, memmap order, …).
    pub detail: String,
}

/// Options for [`open`]: the few things a file name cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenOptions {
    /// HDF5 dataset (CaImAn's `var_name_hdf5`, default `mov`). A file holding exactly one dataset
    /// uses that dataset whatever is named here (CaImAn's rule). For `.nwb` the name of the
    /// acquisition series (`acquisition/<name>/data`).
    pub dataset: Option<String>,
    /// Frame size for 2-D `d × T` `.npy` arrays (CaImAn's `shape=` argument): the array is read
    /// as a Fortran-ordered `Yr`.
    pub npy_dims: Option<Dims>,
    /// Treat the file as volumetric (CaImAn's `is3D`): for TIFF, `d1` consecutive pages form one
    /// volume of `d1 × page_height × page_width`, with `d1` taken from this value.
    pub tiff_planes: Option<usize>,
}

/// A movie that can be read frame range by frame range, without loading it whole.
///
/// Frames are delivered as f32 in C order over `(d1, d2, d3)`, one after the other.
pub trait FrameSource: Send {
    /// Dimensions, frame count, dtype and format, known without reading pixels.
    fn info(&self) -> &SourceInfo;

    /// Read `buf.len() / d` consecutive frames starting at `start` into `buf`.
    ///
    /// `buf.len()` must be a multiple of the frame size and the range must lie in the movie;
    /// otherwise an [`Error::InvalidRequest`] is returned.
    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()>;

    /// Read frames `start, start + step, …` (as many as fit `buf`).
    fn read_frames_strided(&mut self, start: usize, step: usize, buf: &mut [f32]) -> Result<()> {
        let d = self.info().shape.dims.pixels();
        let n = check_request(self.info(), start, step, buf.len())?;
        for (i, frame) in buf.chunks_exact_mut(d).enumerate().take(n) {
            self.read_frames(start + i * step, frame)?;
        }
        Ok(())
    }

    /// Frame count.
    fn frames(&self) -> usize {
        self.info().shape.frames
    }

    /// Frame size.
    fn dims(&self) -> Dims {
        self.info().shape.dims
    }
}

/// Validate a read request; returns the number of frames it asks for.
pub(crate) fn check_request(info: &SourceInfo, start: usize, step: usize, buf_len: usize) -> Result<usize> {
    let d = info.shape.dims.pixels();
    if step == 0 {
        return Err(Error::invalid(&info.path, "frame step must be at least 1"));
    }
    if d == 0 || !buf_len.is_multiple_of(d) {
        return Err(Error::invalid(
            &info.path,
            format!("buffer of {buf_len} values is not a whole number of {d}-pixel frames"),
        ));
    }
    let n = buf_len / d;
    if n > 0 && start + (n - 1) * step >= info.shape.frames {
        return Err(Error::invalid(
            &info.path,
            format!(
                "frames {start}..{} (step {step}) outside the movie's {} frames",
                start + (n - 1) * step + 1,
                info.shape.frames
            ),
        ));
    }
    Ok(n)
}

fn check_is_file(path: &Path) -> Result<u64> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_dir() {
        return Err(Error::IsDirectory { path: path.to_path_buf() });
    }
    Ok(md.len())
}

/// Open a movie file for streaming reads, choosing the reader from the extension.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Box<dyn FrameSource>> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    check_is_file(path)?;
    let src: Box<dyn FrameSource> = match format {
        Format::Tiff => Box::new(crate::tiff::TiffSource::open(path, opts.tiff_planes)?),
        Format::Hdf5 => Box::new(crate::hdf5::Hdf5Source::open(path, opts.dataset.as_deref())?),
        Format::Npy => Box::new(crate::npy::NpySource::open(path, opts.npy_dims)?),
        Format::Npz => Box::new(crate::npy::NpzSource::open(path)?),
        Format::Mmap => Box::new(crate::mmap::MmapSource::open(path)?),
    };
    if src.frames() == 0 {
        return Err(Error::Empty { path: path.to_path_buf() });
    }
    Ok(src)
}

/// Several files read as one movie, frames concatenated in order (CaImAn's `load_movie_chain`).
pub struct ChainSource {
    parts: Vec<Box<dyn FrameSource>>,
    starts: Vec<usize>,
    info: SourceInfo,
}

impl ChainSource {
    /// Open every path; all must share one frame size.
    pub fn open<P: AsRef<Path>>(paths: &[P], opts: &OpenOptions) -> Result<Self> {
        let mut parts = Vec::with_capacity(paths.len());
        for p in paths {
            parts.push(open(p, opts)?);
        }
        Self::new(parts)
    }

    /// Chain already opened sources.
    ///
    /// # Panics
    /// If `parts` is empty.
    pub fn new(parts: Vec<Box<dyn FrameSource>>) -> Result<Self> {
        assert!(!parts.is_empty(), "a chain needs at least one source");
        let first = parts[0].info().clone();
        let mut starts = Vec::with_capacity(parts.len());
        let mut total = 0;
        let mut bytes = 0;
        for p in &parts {
            if p.dims() != first.shape.dims {
                return Err(Error::ShapeMismatch {
                    path: p.info().path.clone(),
                    expected: first.shape.dims.to_string(),
                    found: p.dims().to_string(),
                });
            }
            starts.push(total);
            total += p.frames();
            bytes += p.info().file_bytes;
        }
        let info = SourceInfo {
            shape: Shape::new(total, first.shape.dims),
            file_bytes: bytes,
            detail: format!("chain of {} files", parts.len()),
            ..first
        };
        Ok(ChainSource { parts, starts, info })
    }

    /// The chained sources.
    pub fn parts(&self) -> &[Box<dyn FrameSource>] {
        &self.parts
    }
}

impl FrameSource for ChainSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        let n = check_request(&self.info, start, 1, buf.len())?;
        let d = self.info.shape.dims.pixels();
        let mut t = start;
        let mut done = 0;
        while done < n {
            let part = self.starts.partition_point(|&s| s <= t) - 1;
            let local = t - self.starts[part];
            let avail = self.parts[part].frames() - local;
            let take = avail.min(n - done);
            self.parts[part].read_frames(local, &mut buf[done * d..(done + take) * d])?;
            done += take;
            t += take;
        }
        Ok(())
    }
}

/// Read frames `range` of a source into a new [`Movie`].
pub fn read_movie(src: &mut dyn FrameSource, range: std::ops::Range<usize>) -> Result<Movie> {
    let info = src.info();
    if range.start > range.end || range.end > info.shape.frames {
        return Err(Error::invalid(&info.path, format!("frame range {range:?} outside 0..{}", info.shape.frames)));
    }
    let shape = Shape::new(range.len(), info.shape.dims);
    let meta = MovieMeta { fr: info.fr.unwrap_or(30.0), start_time: 0.0, source: Some(info.path.clone()) };
    let mut movie = Movie::zeros(shape).with_meta(meta);
    src.read_frames(range.start, movie.as_slice_mut())?;
    Ok(movie)
}

/// Read a whole source straight into CaImAn's `Yr` (pixels in Fortran order × frames), blocks of
/// frames at a time, without first holding the movie frame-major (peak memory: `Yr` plus one
/// block).
pub fn read_yr(src: &mut dyn FrameSource) -> Result<ndarray::Array2<f32>> {
    let shape = src.info().shape;
    let (d, t_len) = (shape.dims.pixels(), shape.frames);
    let mut yr = ndarray::Array2::<f32>::zeros((d, t_len));
    if d == 0 || t_len == 0 {
        return Ok(yr);
    }
    // C-order index of every Fortran-order pixel.
    let mut c_of_f = vec![0usize; d];
    let dims = shape.dims;
    for i in 0..dims.d1 {
        for j in 0..dims.d2 {
            for k in 0..dims.d3 {
                c_of_f[dims.f_index(i, j, k)] = dims.c_index(i, j, k);
            }
        }
    }
    let block = ((8usize << 20) / (4 * d)).clamp(1, 256).min(t_len);
    let mut buf = vec![0f32; block * d];
    let out = yr.as_slice_mut().expect("a new array is contiguous");
    for t0 in (0..t_len).step_by(block) {
        let n = block.min(t_len - t0);
        src.read_frames(t0, &mut buf[..n * d])?;
        for (p, &c) in c_of_f.iter().enumerate() {
            let row = &mut out[p * t_len + t0..p * t_len + t0 + n];
            for (b, v) in row.iter_mut().enumerate() {
                *v = buf[b * d + c];
            }
        }
    }
    Ok(yr)
}

/// Load a whole movie into memory.
pub fn load(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Movie> {
    let mut src = open(path, opts)?;
    let n = src.frames();
    read_movie(src.as_mut(), 0..n)
}
