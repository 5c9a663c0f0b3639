//! The movie as CNMF sees it — `Yr`, pixels × frames — and how tasks get their pixel rows.
//!
//! CNMF works on `Yr` (`d × T`, one row per pixel in Fortran order `p = row + d1·col`). The fit
//! keeps a view of it in memory ([`Fov::yr`]); tasks that work on blocks of pixels (the spatial
//! update, residuals) receive a [`PixelRows`]: the path of a C-order CaImAn memmap and a pixel
//! range when the movie lives in one (the worker reads its rows from the file itself with
//! positioned reads — not through a map, whose page-cache folios would add to its resident
//! memory — so no movie data goes through the process pipes); a shared handle on the movie when
//! it is held in an [`Arc`] (free for in-process executors; only the task's rows are serialised
//! for worker processes); or a copy of the rows otherwise.
//!
//! What it is not: a movie reader (see `caiman-io`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, s};
use serde::{Deserialize, Serialize};

use caiman_io::Dims;
use caiman_io::mmap::PixelRowReader;

use crate::{Error, Result};

/// A field of view for CNMF: `Yr` (`d × T`) and, when it is backed by one, the C-order memmap
/// file it was read from.
#[derive(Debug, Clone, Copy)]
pub struct Fov<'a> {
    /// Frame dimensions.
    pub dims: Dims,
    /// Pixels × frames, Fortran pixel order.
    pub yr: ArrayView2<'a, f32>,
    /// A C-order CaImAn memmap whose `Yr` is exactly `yr` (workers read their rows from it).
    pub mmap: Option<&'a std::path::Path>,
    /// The array `yr` views, when it is shared: tasks then hold the movie instead of copying rows.
    pub shared: Option<&'a Arc<Array2<f32>>>,
    /// Bytes of memory the whole fit may use; passes over the movie keep a quarter of it in
    /// flight ([`crate::passes`]). `None`: no budget (passes keep up to 1 GiB in flight).
    pub budget: Option<u64>,
}

impl<'a> Fov<'a> {
    /// A field of view held in memory.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `yr` does not have `dims.pixels()` rows, [`Error::Empty`] if it
    /// has no frames.
    pub fn new(dims: Dims, yr: ArrayView2<'a, f32>) -> Result<Self> {
        if yr.nrows() != dims.pixels() {
            return Err(Error::ShapeMismatch {
                what: "Yr (rows = pixels of the frame)",
                expected: vec![dims.pixels()],
                got: vec![yr.nrows()],
            });
        }
        if yr.ncols() == 0 || yr.nrows() == 0 {
            return Err(Error::Empty { what: "movie (no frames or no pixels)" });
        }
        Ok(Fov { dims, yr, mmap: None, shared: None, budget: None })
    }

    /// A field of view over a shared in-memory `Yr`: pixel-block tasks of in-process executors
    /// use it without copying.
    ///
    /// # Errors
    /// As [`Fov::new`].
    pub fn from_shared(dims: Dims, yr: &'a Arc<Array2<f32>>) -> Result<Self> {
        Ok(Fov { shared: Some(yr), ..Fov::new(dims, yr.view())? })
    }

    /// The same field of view with a memory budget in bytes (see [`Fov::budget`]).
    pub fn with_budget(self, budget: Option<u64>) -> Self {
        Fov { budget, ..self }
    }

    /// Pixels `d`.
    pub fn pixels(&self) -> usize {
        self.yr.nrows()
    }

    /// Frames `T`.
    pub fn frames(&self) -> usize {
        self.yr.ncols()
    }

    /// The rows `range` for a task: a file reference when backed by a memmap, a handle on the
    /// shared movie, else a copy.
    pub fn rows(&self, range: Range<usize>) -> PixelRows {
        match (self.mmap, self.shared) {
            (Some(path), _) => PixelRows::Mmap { path: path.to_path_buf(), first: range.start, count: range.len() },
            (None, Some(yr)) => PixelRows::Shared { yr: Arc::clone(yr), first: range.start, count: range.len() },
            (None, None) => {
                let block = self.yr.slice(s![range, ..]);
                PixelRows::Inline { frames: self.frames(), values: block.iter().copied().collect() }
            }
        }
    }
}

/// Consecutive pixel rows of `Yr` handed to a task.
///
/// Serialised (for worker processes), [`PixelRows::Shared`] becomes [`PixelRows::Inline`] with
/// just its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "WireRows", from = "WireRows")]
pub enum PixelRows {
    /// The rows themselves, row after row.
    Inline {
        /// Frames per row.
        frames: usize,
        /// `count × frames` values.
        values: Vec<f32>,
    },
    /// Rows `first .. first + count` of a C-order CaImAn memmap.
    Mmap {
        /// The memmap file.
        path: PathBuf,
        /// First pixel.
        first: usize,
        /// Number of pixels.
        count: usize,
    },
    /// Rows `first .. first + count` of a movie shared in memory.
    Shared {
        /// The whole `Yr`.
        yr: Arc<Array2<f32>>,
        /// First pixel.
        first: usize,
        /// Number of pixels.
        count: usize,
    },
}

/// What goes over the wire for a [`PixelRows`].
#[derive(Serialize, Deserialize)]
enum WireRows {
    Inline { frames: usize, values: Vec<f32> },
    Mmap { path: PathBuf, first: usize, count: usize },
}

impl From<PixelRows> for WireRows {
    fn from(r: PixelRows) -> Self {
        match r {
            PixelRows::Inline { frames, values } => WireRows::Inline { frames, values },
            PixelRows::Mmap { path, first, count } => WireRows::Mmap { path, first, count },
            PixelRows::Shared { yr, first, count } => {
                let end = (first + count).min(yr.nrows());
                let start = first.min(end);
                WireRows::Inline { frames: yr.ncols(), values: yr.slice(s![start..end, ..]).iter().copied().collect() }
            }
        }
    }
}

impl From<WireRows> for PixelRows {
    fn from(w: WireRows) -> Self {
        match w {
            WireRows::Inline { frames, values } => PixelRows::Inline { frames, values },
            WireRows::Mmap { path, first, count } => PixelRows::Mmap { path, first, count },
        }
    }
}

impl PixelRows {
    /// Runs `f` on the rows as a `count × T` view (for [`PixelRows::Mmap`], the rows read from the
    /// file into a buffer of the task's own — see [`caiman_io::mmap::PixelRowReader`] for why not
    /// through a map).
    ///
    /// # Errors
    /// [`Error::Io`] if the memmap cannot be opened or read, or is not C-ordered;
    /// [`Error::InvalidParam`] if the range lies outside the movie; [`Error::ShapeMismatch`] for
    /// inconsistent inline rows.
    pub fn with_view<R>(&self, f: impl FnOnce(ArrayView2<'_, f32>) -> R) -> Result<R> {
        match self.gather(0)? {
            RowGather::View { rows, .. } => Ok(f(rows)),
            RowGather::File { rdr, first, count } => {
                let mut values = vec![0f32; count * rdr.frames()];
                rdr.read_rows(first, &mut values)?;
                let view = ArrayView2::from_shape((count, rdr.frames()), &values)
                    .map_err(|e| Error::InvalidParam(e.to_string()))?;
                Ok(f(view))
            }
        }
    }

    /// A reader of single runs of these rows, for tasks that need a few scattered pixels of a
    /// large block (the pixels of a component): a memmap is opened for positioned reads, so only
    /// the rows asked for are ever read or resident. Inline rows carry no position:
    /// `inline_first` is the pixel of their first row (the memmap and shared variants know
    /// theirs).
    ///
    /// # Errors
    /// [`Error::Io`] if the memmap cannot be opened or is not C-ordered, [`Error::ShapeMismatch`]
    /// for inconsistent inline rows.
    pub fn gather(&self, inline_first: usize) -> Result<RowGather<'_>> {
        Ok(match self {
            PixelRows::Inline { frames, values } => {
                let t = (*frames).max(1);
                let n = values.len() / t;
                if n * t != values.len() {
                    return Err(Error::ShapeMismatch {
                        what: "inline pixel rows (values = rows × frames)",
                        expected: vec![n * t],
                        got: vec![values.len()],
                    });
                }
                RowGather::View {
                    rows: ArrayView2::from_shape((n, *frames), values)
                        .map_err(|e| Error::InvalidParam(e.to_string()))?,
                    first: inline_first,
                }
            }
            PixelRows::Mmap { path, first, count } => {
                RowGather::File { rdr: PixelRowReader::open(path)?, first: *first, count: *count }
            }
            PixelRows::Shared { yr, first, count } => {
                let end = first.checked_add(*count).filter(|&e| e <= yr.nrows()).ok_or_else(|| {
                    Error::InvalidParam(format!(
                        "pixels {first}..{} requested from a movie of {} pixels",
                        first.saturating_add(*count),
                        yr.nrows()
                    ))
                })?;
                RowGather::View { rows: yr.slice(s![*first..end, ..]), first: *first }
            }
        })
    }

    /// The rows as an owned array.
    ///
    /// # Errors
    /// As [`with_view`](Self::with_view).
    pub fn to_array(&self) -> Result<Array2<f32>> {
        self.with_view(|v| v.to_owned())
    }
}

/// Reads runs of consecutive pixel rows out of a [`PixelRows`] (see [`PixelRows::gather`]).
#[derive(Debug)]
pub enum RowGather<'a> {
    /// Rows in memory; row `r` is pixel `first + r`.
    View {
        /// The rows.
        rows: ArrayView2<'a, f32>,
        /// Pixel of the first row.
        first: usize,
    },
    /// Rows `first .. first + count` of a C-order memmap, read on demand.
    File {
        /// The file.
        rdr: PixelRowReader,
        /// First pixel of the block.
        first: usize,
        /// Pixels in the block.
        count: usize,
    },
}

impl RowGather<'_> {
    /// Frames per row.
    pub fn frames(&self) -> usize {
        match self {
            RowGather::View { rows, .. } => rows.ncols(),
            RowGather::File { rdr, .. } => rdr.frames(),
        }
    }

    /// Appends the rows of pixels `p .. p + n` (absolute indices) to `out`, row after row.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] if the pixels lie outside the block, [`Error::Io`] if a read fails.
    pub fn append(&self, p: usize, n: usize, out: &mut Vec<f32>) -> Result<()> {
        let (first, count) = match self {
            RowGather::View { rows, first } => (*first, rows.nrows()),
            RowGather::File { first, count, .. } => (*first, *count),
        };
        let outside = || {
            Error::InvalidParam(format!(
                "pixels {p}..{} outside the rows {first}..{} of the block",
                p + n,
                first + count
            ))
        };
        let r = p.checked_sub(first).filter(|&r| r + n <= count).ok_or_else(outside)?;
        let t = self.frames();
        match self {
            RowGather::View { rows, .. } => {
                let block = rows.slice(s![r..r + n, ..]);
                match block.as_slice() {
                    Some(all) => out.extend_from_slice(all),
                    None => block.rows().into_iter().for_each(|row| out.extend(row.iter().copied())),
                }
            }
            RowGather::File { rdr, .. } => {
                let at = out.len();
                out.resize(at + n * t, 0.0);
                rdr.read_rows(p, &mut out[at..])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_mmap_rows_agree() {
        let dims = Dims::planar(3, 2);
        let yr = Array2::from_shape_fn((6, 4), |(p, t)| (p * 10 + t) as f32);
        let fov = Fov::new(dims, yr.view()).unwrap();
        let inline = fov.rows(2..5);
        assert_eq!(inline.to_array().unwrap(), yr.slice(s![2..5, ..]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(caiman_io::mmap::MmapName::file_name("x", dims, 4, caiman_io::Order::C));
        let bytes: Vec<u8> = yr.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let fov = Fov { mmap: Some(&path), ..fov };
        let mapped = fov.rows(2..5);
        assert!(matches!(mapped, PixelRows::Mmap { .. }));
        assert_eq!(mapped.to_array().unwrap(), yr.slice(s![2..5, ..]));
        let bad = PixelRows::Mmap { path, first: 5, count: 3 };
        assert!(bad.to_array().is_err());
        let shared = Arc::new(yr.clone());
        let fov = Fov::from_shared(dims, &shared).unwrap();
        let rows = fov.rows(2..5);
        assert!(matches!(rows, PixelRows::Shared { .. }));
        assert_eq!(rows.to_array().unwrap(), yr.slice(s![2..5, ..]));
        // Over the wire a shared block is just its rows.
        let wire = postcard::to_stdvec(&rows).unwrap();
        let back: PixelRows = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, inline);
        assert!(PixelRows::Shared { yr: shared, first: 4, count: 3 }.to_array().is_err());
        assert!(Fov::new(Dims::planar(2, 2), yr.view()).is_err());
    }
}
