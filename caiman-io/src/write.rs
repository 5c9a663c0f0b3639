//! Streaming movie writers: the [`MovieWriter`] trait, [`WriteOptions`], [`create`] and
//! [`AtomicFile`], the write-to-temporary-then-rename guard every writer uses.
//!
//! No writer ever leaves a half-written file under the final name: data goes to a hidden
//! temporary file in the destination directory, renamed into place by [`MovieWriter::finish`].
//! A writer dropped without `finish` (an error, a panic) removes its temporary file.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::movie::{Movie, Shape};
use crate::source::Format;

/// Byte order of a CaImAn `.mmap` file (see [`crate::mmap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Order {
    /// Pixel-major: each pixel's time series contiguous (what CNMF reads).
    C,
    /// Frame-major: each frame contiguous (what motion correction writes; CaImAn's default).
    #[default]
    F,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::C => "C",
            Order::F => "F",
        })
    }
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "C" | "c" => Ok(Order::C),
            "F" | "f" => Ok(Order::F),
            _ => Err(format!("order must be C or F, not {s:?}")),
        }
    }
}

/// Sample type written to TIFF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TiffSample {
    /// 32-bit float (CaImAn's `to32=True` default).
    #[default]
    F32,
    /// 16-bit unsigned; values are rounded and clamped to `0..=65535`.
    U16,
}

/// How to write a movie. `Default` gives CaImAn's `timeseries.save` defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteOptions {
    /// HDF5 dataset name (CaImAn's `var_name_hdf5`, default `mov`).
    pub dataset: String,
    /// Byte order of `.mmap` output (default `F`, as `timeseries.save`).
    pub order: Order,
    /// TIFF sample type.
    pub tiff_sample: TiffSample,
    /// Force BigTIFF on (`Some(true)`) or off; `None` writes BigTIFF only when the file would pass 4 GB.
    pub bigtiff: Option<bool>,
    /// Deflate level 1–9 for HDF5 chunks, 0 for none (default 4).
    pub compression: u32,
    /// Frame rate stored where the format has room for it.
    pub fr: f64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dataset: "mov".into(),
            order: Order::F,
            tiff_sample: TiffSample::F32,
            bigtiff: None,
            compression: 4,
            fr: 30.0,
        }
    }
}

/// A movie being written frame by frame. The total shape is fixed at creation.
pub trait MovieWriter: Send {
    /// The shape the finished file will have.
    fn shape(&self) -> Shape;

    /// Append whole frames (a multiple of the frame size, C order). Writing more frames than
    /// the shape holds is an [`Error::InvalidRequest`].
    fn write_frames(&mut self, frames: &[f32]) -> Result<()>;

    /// Check every frame was written, flush, and move the file to its final name, which is
    /// returned (for `.mmap`, CaImAn's name encoding the shape).
    fn finish(self: Box<Self>) -> Result<PathBuf>;
}

/// Create a writer for `path`, the format chosen by its extension.
pub fn create(path: impl AsRef<Path>, shape: Shape, opts: &WriteOptions) -> Result<Box<dyn MovieWriter>> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    if shape.frames == 0 {
        return Err(Error::Empty { path: path.to_path_buf() });
    }
    if shape.dims.pixels() == 0 {
        return Err(Error::invalid(path, format!("cannot write frames of size {}", shape.dims)));
    }
    if path.is_dir() {
        return Err(Error::IsDirectory { path: path.to_path_buf() });
    }
    Ok(match format {
        Format::Tiff => Box::new(crate::tiff::TiffWriter::create(path, shape, opts)?),
        Format::Hdf5 => Box::new(crate::hdf5::Hdf5Writer::create(path, shape, opts)?),
        Format::Npy => Box::new(crate::npy::NpyWriter::create(path, shape)?),
        Format::Npz => Box::new(crate::npy::NpzWriter::create(path, shape, opts)?),
        Format::Mmap => Box::new(crate::mmap::MmapWriter::create(path, shape, opts.order)?),
    })
}

/// Write a whole in-memory movie.
pub fn save(path: impl AsRef<Path>, movie: &Movie, opts: &WriteOptions) -> Result<PathBuf> {
    let mut w = create(path, movie.shape(), opts)?;
    w.write_frames(movie.as_slice())?;
    w.finish()
}

/// Count of frames a writer accepted so far, with the bound check every writer needs.
#[derive(Debug)]
pub(crate) struct FrameCounter {
    pub(crate) shape: Shape,
    pub(crate) written: usize,
}

impl FrameCounter {
    pub(crate) fn new(shape: Shape) -> Self {
        FrameCounter { shape, written: 0 }
    }

    /// Account for `values` more values; returns the number of frames they hold.
    pub(crate) fn take(&mut self, path: &Path, values: usize) -> Result<usize> {
        let d = self.shape.dims.pixels();
        if !values.is_multiple_of(d) {
            return Err(Error::invalid(path, format!("{values} values are not whole frames of {d} pixels")));
        }
        let n = values / d;
        if self.written + n > self.shape.frames {
            return Err(Error::invalid(
                path,
                format!("writing {} frames into a movie of {}", self.written + n, self.shape.frames),
            ));
        }
        self.written += n;
        Ok(n)
    }

    pub(crate) fn check_complete(&self, path: &Path) -> Result<()> {
        if self.written != self.shape.frames {
            return Err(Error::invalid(
                path,
                format!("only {} of {} frames were written", self.written, self.shape.frames),
            ));
        }
        Ok(())
    }
}

/// A file written under a hidden temporary name next to its destination and renamed into place
/// by [`AtomicFile::commit`]; removed on drop if never committed.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Reserve a temporary path for `dest` (nothing is created yet).
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::invalid(dest, "output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(Error::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::NotFound, "output directory does not exist"),
            ));
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{seq}.partial", std::process::id()));
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), committed: false })
    }

    /// Create (truncate) the temporary file for writing.
    pub fn create_file(&self) -> Result<File> {
        File::options().read(true).write(true).create(true).truncate(true).open(&self.tmp).at(&self.tmp)
    }

    /// The temporary path being written.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Change the final path (for formats whose name depends on the content).
    pub fn set_dest(&mut self, dest: PathBuf) {
        self.dest = dest;
    }

    /// Rename the temporary file to its destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.dest).at(&self.dest)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Bytes of frames moved per read/write step by [`copy_frames`].
const COPY_CHUNK_BYTES: usize = 32 << 20;

/// Stream frames `range` of `src` into `dst` in bounded chunks (about 32 MB), calling
/// `progress(frames_done)` after each chunk. Memory use is independent of the movie length.
pub fn copy_frames(
    src: &mut dyn crate::FrameSource,
    range: std::ops::Range<usize>,
    dst: &mut dyn MovieWriter,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let info = src.info();
    if range.start > range.end || range.end > info.shape.frames {
        return Err(Error::invalid(&info.path, format!("frame range {range:?} outside 0..{}", info.shape.frames)));
    }
    let d = info.shape.dims.pixels();
    let chunk = (COPY_CHUNK_BYTES / (4 * d.max(1))).clamp(1, range.len().max(1));
    let mut buf = vec![0f32; chunk * d];
    let mut t = range.start;
    while t < range.end {
        let n = chunk.min(range.end - t);
        let b = &mut buf[..n * d];
        src.read_frames(t, b)?;
        dst.write_frames(b)?;
        t += n;
        progress(t - range.start);
    }
    Ok(())
}
