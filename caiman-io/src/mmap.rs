//! CaImAn's `.mmap` format: headerless little-endian f32 `Yr` (pixels × time, pixels in Fortran
//! order) whose shape and byte order are encoded in the file name.
//!
//! * [`MmapName`] encodes and decodes names exactly as CaImAn's `memmap_frames_filename` and
//!   `decode_mmap_filename_dict` do (directory ignored, the *first* occurrence of each key after
//!   the first `_`-separated token wins — verified against CaImAn 1.12.1, whatever its docs say —
//!   a trailing `_` is legal, a trailing number is the frame count `T`).
//! * [`MmapSource`] reads frames from a memory map (order `F`: one contiguous block per frame;
//!   order `C`: one contiguous run per pixel) and exposes the whole `Yr` as a zero-copy view.
//! * [`PixelRowReader`] reads chosen pixel rows of a C-order file with positioned reads into the
//!   caller's buffers — what CNMF's tasks use, so their resident memory is their buffers only.
//! * [`MmapWriter`] streams frames into a new file; [`PendingMmap`] + [`MmapRegionWriter`] let
//!   several workers (threads or processes) fill disjoint frame ranges (order F) or pixel ranges
//!   (order C) of one pre-sized file, which is renamed into place once complete.
//!
//! [`transpose_f_to_c`] streams an F-order file (what motion correction writes) into the C-order
//! file CNMF reads, in bounded memory.
//!
//! Deliberate deviation from CaImAn: its single-file `save_memmap(..., order='F')` writes C-ordered
//! bytes under an `order_F` name (and then misreads its own file). Every writer here writes the
//! byte order its name states. A reader, like CaImAn's, trusts the name: such a mislabelled
//! CaImAn file reads with pixels and frames scrambled.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::movie::{DType, Dims, Shape};
use crate::raw::{Bytes, Layout, RawMovie, c_to_f, f32_bytes_mut, map_file};
use crate::source::{Format, FrameSource, SourceInfo, check_request};
use crate::write::{AtomicFile, FrameCounter, MovieWriter, Order};

/// The fields CaImAn encodes in a memmap file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapName {
    /// Frame size.
    pub dims: Dims,
    /// Byte order of `Yr`.
    pub order: Order,
    /// Frames (the value of the `frames` key).
    pub frames: usize,
    /// Frames according to the trailing token (equals `frames` unless the name carries a
    /// different trailing number, which CaImAn then uses).
    pub t: usize,
}

impl MmapName {
    /// Decode a file name (any directory part is ignored; the extension is stripped).
    pub fn decode(path: &Path) -> Result<MmapName> {
        let bad = |m: String| Error::malformed(path, "CaImAn memmap name", m);
        let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = match stem.rfind('.') {
            Some(i) if i > 0 => stem[..i].to_string(),
            _ => stem,
        };
        let tokens: Vec<&str> = stem.split('_').skip(1).collect();
        let value = |key: &str| -> Option<&str> {
            let pos = tokens.iter().position(|t| *t == key)?;
            tokens.get(pos + 1).copied()
        };
        let num = |key: &str| -> Result<usize> {
            let v = value(key).ok_or_else(|| bad(format!("no `{key}_<n>` field")))?;
            v.parse().map_err(|_| bad(format!("`{key}` value {v:?} is not a number")))
        };
        let d1 = num("d1")?;
        let d2 = num("d2")?;
        let d3 = num("d3")?;
        let frames = num("frames")?;
        let order = match value("order") {
            Some("C") => Order::C,
            Some("F") => Order::F,
            Some(o) => return Err(bad(format!("order {o:?} is neither C nor F"))),
            None => return Err(bad("no `order_<C|F>` field".into())),
        };
        let last = tokens.last().copied().unwrap_or("");
        let t = if last.is_empty() {
            frames
        } else {
            last.parse().map_err(|_| bad(format!("trailing token {last:?} is not a frame count")))?
        };
        if t != frames {
            tracing::warn!(path = %path.display(), frames, t, "memmap name: trailing T differs from `frames`; using T");
        }
        Ok(MmapName { dims: Dims::volume(d1, d2, d3), order, frames, t })
    }

    /// CaImAn's `memmap_frames_filename(base, dims, T, order)`:
    /// `<base>_d1_<d1>_d2_<d2>_d3_<d3>_order_<o>_frames_<T>.mmap`.
    pub fn file_name(base: &str, dims: Dims, frames: usize, order: Order) -> String {
        format!("{base}_d1_{}_d2_{}_d3_{}_order_{order}_frames_{frames}.mmap", dims.d1, dims.d2, dims.d3)
    }

    /// The path a movie of `shape` and `order` written to `path` gets: `path` itself if its name
    /// already encodes exactly that, otherwise CaImAn's name built from its stem.
    pub fn path_for(path: &Path, shape: Shape, order: Order) -> PathBuf {
        if let Ok(n) = MmapName::decode(path)
            && n.dims == shape.dims
            && n.t == shape.frames
            && n.order == order
            && path.extension().is_some_and(|e| e == "mmap")
        {
            return path.to_path_buf();
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "Yr".into());
        path.with_file_name(Self::file_name(&stem, shape.dims, shape.frames, order))
    }

    /// Frames and frame size.
    pub fn shape(&self) -> Shape {
        Shape::new(self.t, self.dims)
    }
}

/// Memory-mapped reader of a CaImAn `.mmap` file.
#[derive(Debug)]
pub struct MmapSource {
    raw: RawMovie,
    info: SourceInfo,
    order: Order,
}

impl MmapSource {
    /// Open `path`, taking shape and order from its name and checking the file size against them.
    pub fn open(path: &Path) -> Result<Self> {
        let name = MmapName::decode(path)?;
        let shape = name.shape();
        let map = map_file(path)?;
        let file_bytes = map.len() as u64;
        check_file_bytes(path, shape, file_bytes)?;
        let layout = match name.order {
            Order::C => Layout::PixelMajorF,
            Order::F => Layout::FramesF,
        };
        let raw = RawMovie::new(path, "CaImAn memmap", Bytes::Mapped(map), 0, shape, DType::F32, true, layout)?;
        let info = SourceInfo {
            path: path.to_path_buf(),
            format: Format::Mmap,
            shape,
            dtype: DType::F32,
            file_bytes,
            fr: None,
            detail: format!("order {}", name.order),
        };
        Ok(MmapSource { raw, info, order: name.order })
    }

    /// Declares that the map will be read at scattered places (`madvise(MADV_RANDOM)`): reading a
    /// few pixel rows then maps only their pages, without the kernel's read-ahead and fault-around
    /// neighbours — what keeps the resident memory of row-gathering tasks to the rows they read.
    pub fn advise_random(&self) {
        self.raw.advise_random();
    }

    /// Byte order of the file.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The whole `Yr` (pixels × frames) as a zero-copy view: standard layout for order C,
    /// column-major for order F.
    pub fn yr(&self) -> ndarray::ArrayView2<'_, f32> {
        let s = self.info.shape;
        let vals = self.raw.f32_values();
        let (d, t) = (s.dims.pixels(), s.frames);
        match self.order {
            Order::C => ndarray::ArrayView2::from_shape((d, t), vals),
            Order::F => ndarray::ArrayView2::from_shape(ndarray::ShapeBuilder::f((d, t)), vals),
        }
        .expect("size checked at open")
    }
}

/// Checks that a memmap of `file_bytes` bytes holds the float32 values its name announces.
fn check_file_bytes(path: &Path, shape: Shape, file_bytes: u64) -> Result<()> {
    let expect = shape.len() as u64 * 4;
    if file_bytes != expect {
        return Err(Error::malformed(
            path,
            "CaImAn memmap",
            format!("file holds {file_bytes} bytes but its name says {shape} float32 values ({expect} bytes)"),
        ));
    }
    Ok(())
}

/// Positioned reads of whole pixel rows (`Yr[p, ..]`, all frames of pixel `p`) from a C-order
/// (pixel-major) CaImAn memmap, without mapping the file.
///
/// This is how tasks read a few rows of a large movie — a patch's pixel box, the pixels of a
/// component, a block of rows — into buffers of their own: their resident memory is then those
/// buffers and nothing else. Through a memory map it is not: on kernels with large page-cache
/// folios (Linux 6.18 here) every fault maps the whole folio around the faulting page, up to
/// 2 MiB, whatever `MADV_RANDOM` says. Measured on a 512×512×2000 movie: reading the ≈300 pixel
/// rows of one component through a map added 40–50 MB of file-backed resident memory, so one
/// r-value task of CNMF's evaluation held 0.9 GB.
#[derive(Debug)]
pub struct PixelRowReader {
    file: File,
    path: PathBuf,
    pixels: usize,
    frames: usize,
}

impl PixelRowReader {
    /// Opens a C-order `.mmap`, taking its shape from the name and checking the file size.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`Error::Malformed`] for a name that is not
    /// CaImAn's or a size that does not match it; [`Error::Unsupported`] for an F-order file.
    pub fn open(path: &Path) -> Result<Self> {
        let name = MmapName::decode(path)?;
        if name.order != Order::C {
            return Err(Error::unsupported(
                path,
                "CaImAn memmap",
                "pixel rows are read from C-order (pixel-major) memmaps only; this one is order F",
            ));
        }
        let shape = name.shape();
        let file = File::open(path).at(path)?;
        check_file_bytes(path, shape, file.metadata().at(path)?.len())?;
        Ok(PixelRowReader { file, path: path.to_path_buf(), pixels: shape.dims.pixels(), frames: shape.frames })
    }

    /// Number of pixel rows (`d`).
    pub fn pixels(&self) -> usize {
        self.pixels
    }

    /// Number of frames (the length of a row).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Reads rows `first .. first + out.len() / frames` into `out` (row after row).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] if `out` is not a whole number of rows or the rows lie outside
    /// the file; [`Error::Io`] if the read fails.
    pub fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let t = self.frames.max(1);
        let n = out.len() / t;
        if n * t != out.len() {
            return Err(Error::invalid(
                &self.path,
                format!("a buffer of {} values is not a whole number of rows of {t} frames", out.len()),
            ));
        }
        if first.checked_add(n).is_none_or(|end| end > self.pixels) {
            return Err(Error::invalid(
                &self.path,
                format!("pixel rows {first}..{} requested, the file has {}", first.saturating_add(n), self.pixels),
            ));
        }
        self.file.read_exact_at(f32_bytes_mut(out), first as u64 * t as u64 * 4).at(&self.path)?;
        from_le_in_place(out);
        Ok(())
    }
}

impl FrameSource for MmapSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        check_request(&self.info, start, 1, buf.len())?;
        self.raw.read_frames(start, buf);
        Ok(())
    }
}

/// A pre-sized `.mmap` file under construction (a hidden temporary name in the destination
/// directory), filled by one or more [`MmapRegionWriter`]s and renamed into place by
/// [`PendingMmap::commit`]. Dropped without commit, the temporary file is removed.
#[derive(Debug)]
pub struct PendingMmap {
    file: AtomicFile,
    shape: Shape,
    order: Order,
}

impl PendingMmap {
    /// Create the temporary file for a movie of `shape` in `order`; the final name is CaImAn's
    /// (see [`MmapName::path_for`]).
    pub fn create(path: &Path, shape: Shape, order: Order) -> Result<Self> {
        if shape.is_empty() {
            return Err(Error::Empty { path: path.to_path_buf() });
        }
        let file = AtomicFile::new(&MmapName::path_for(path, shape, order))?;
        let f = file.create_file()?;
        f.set_len(shape.len() as u64 * 4).at(file.tmp_path())?;
        Ok(PendingMmap { file, shape, order })
    }

    /// The temporary path, which workers open with [`MmapRegionWriter::open`].
    pub fn tmp_path(&self) -> &Path {
        self.file.tmp_path()
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        self.file.dest()
    }

    /// Shape of the movie.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Byte order.
    pub fn order(&self) -> Order {
        self.order
    }

    /// A writer over the whole file, for use in this process.
    pub fn region_writer(&self) -> Result<MmapRegionWriter> {
        MmapRegionWriter::open(self.tmp_path(), self.shape, self.order)
    }

    /// Flush to disk and rename to the final name.
    pub fn commit(self) -> Result<PathBuf> {
        let f = std::fs::File::options().write(true).open(self.tmp_path()).at(self.tmp_path())?;
        f.sync_data().at(self.tmp_path())?;
        self.file.commit()
    }
}

/// Writes regions of a pre-sized `.mmap` file through a shared writable memory map. Several
/// writers (in threads or processes) may fill disjoint regions of the same file.
#[derive(Debug)]
pub struct MmapRegionWriter {
    path: PathBuf,
    file: std::fs::File,
    map: memmap2::MmapMut,
    shape: Shape,
    order: Order,
    scratch: Vec<f32>,
    bytes: Vec<u8>,
    /// A second handle opened with `O_DIRECT` for frame-major writes: whole pages go straight
    /// to the device instead of through the page cache (which costs about a second of kernel
    /// CPU per GB on this class of machine, then the flush at `sync_data`). `None` when buffered
    /// (see [`MmapRegionWriter::direct`]) or when the file system refuses direct I/O (tmpfs,
    /// some network file systems).
    direct: Option<std::fs::File>,
}

/// Alignment of buffers, offsets and lengths for `O_DIRECT` writes (covers 512-byte and
/// 4 KiB logical blocks).
const DIRECT_ALIGN: usize = 4096;

/// `MemAvailable` from `/proc/meminfo`, in bytes (Linux); `None` elsewhere.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<std::fs::File> {
    None
}

impl MmapRegionWriter {
    /// Open an existing pre-sized file (usually [`PendingMmap::tmp_path`]).
    pub fn open(path: &Path, shape: Shape, order: Order) -> Result<Self> {
        let f = std::fs::File::options().read(true).write(true).open(path).at(path)?;
        let len = f.metadata().at(path)?.len();
        if len != shape.len() as u64 * 4 {
            return Err(Error::malformed(
                path,
                "CaImAn memmap",
                format!("file holds {len} bytes, expected {} for {shape}", shape.len() * 4),
            ));
        }
        // SAFETY: the file is private to this pipeline run (a hidden temporary name); writers
        // touch disjoint regions, so no two mappings write the same bytes.
        let map = unsafe { memmap2::MmapOptions::new().map_mut(&f) }.at(path)?;
        Ok(MmapRegionWriter {
            path: path.to_path_buf(),
            file: f,
            map,
            shape,
            order,
            scratch: Vec::new(),
            bytes: Vec::new(),
            direct: if order == Order::F && len > mem_available().unwrap_or(u64::MAX) / 2 {
                open_direct(path)
            } else {
                None
            },
        })
    }

    /// Writes through the page cache only (no `O_DIRECT`), e.g. when the next stage reads the
    /// file back at once and should find it in memory.
    pub fn buffered(mut self) -> Self {
        self.direct = None;
        self
    }

    /// Writes whole pages of frame-major files with `O_DIRECT` where the file system allows
    /// it. [`MmapRegionWriter::open`] chooses this by itself for files larger than half the
    /// memory the system has available (they would not stay in the page cache anyway); smaller
    /// files are written through the page cache, where the next stage (the C-order transpose)
    /// finds them.
    pub fn direct(mut self) -> Self {
        if self.order == Order::F && self.direct.is_none() {
            self.direct = open_direct(&self.path);
        }
        self
    }

    /// Writes `len` bytes, already placed at `self.bytes[lead..lead + len]`, at file offset
    /// `off`: the page-aligned interior with `O_DIRECT` (when available), the partial pages at
    /// either end through the page cache. Neighbouring writers share at most those partial
    /// pages, which the page cache merges; the interior pages are this writer's alone.
    fn write_at_offset(&mut self, lead: usize, len: usize, off: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let end = off + len as u64;
        let a0 = off.next_multiple_of(DIRECT_ALIGN as u64);
        let a1 = end / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        if let Some(direct) = &self.direct
            && a1 > a0
        {
            let s = lead + (a0 - off) as usize;
            let interior = &self.bytes[s..s + (a1 - a0) as usize];
            match direct.write_all_at(interior, a0) {
                Ok(()) => {
                    let head = &self.bytes[lead..s];
                    self.file.write_all_at(head, off).at(&self.path)?;
                    let t = s + (a1 - a0) as usize;
                    self.file.write_all_at(&self.bytes[t..lead + len], a1).at(&self.path)?;
                    return Ok(());
                }
                // The file system opened the file for direct I/O but refuses this transfer
                // (alignment or support): write buffered from now on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::debug!(path = %self.path.display(), "O_DIRECT refused ({e}); writing buffered");
                    self.direct = None;
                }
                Err(e) => return Err(e).at(&self.path),
            }
        }
        self.file.write_all_at(&self.bytes[lead..lead + len], off).at(&self.path)
    }

    fn put(&mut self, idx: usize, v: f32) {
        self.map[idx * 4..idx * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Write whole frames (C-ordered, as a [`crate::FrameSource`] delivers them) starting at
    /// frame `start`. Contiguous for order F; a strided scatter for order C.
    pub fn write_frames(&mut self, start: usize, frames: &[f32]) -> Result<()> {
        let dims = self.shape.dims;
        let d = dims.pixels();
        if !frames.len().is_multiple_of(d) || start + frames.len() / d > self.shape.frames {
            return Err(Error::invalid(
                &self.path,
                format!("frames {start}+{} do not fit {}", frames.len() / d.max(1), self.shape),
            ));
        }
        let t_len = self.shape.frames;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(d, 0.0);
        // Frame-major bytes go to `self.bytes[lead..]`, with `lead` chosen so that the first
        // page-aligned file offset of the region lands on a page-aligned address (`O_DIRECT`).
        let off = (start * d * 4) as u64;
        let len = frames.len() * 4;
        let mut lead = 0;
        if self.order == Order::F {
            self.bytes.resize(len + DIRECT_ALIGN, 0);
            let to_page = (off.next_multiple_of(DIRECT_ALIGN as u64) - off) as usize;
            let addr = self.bytes.as_ptr() as usize + to_page;
            lead = (DIRECT_ALIGN - addr % DIRECT_ALIGN) % DIRECT_ALIGN;
        }
        for (f, frame) in frames.chunks_exact(d).enumerate() {
            c_to_f(dims, frame, &mut scratch);
            let t = start + f;
            match self.order {
                // Frame-major: gather the frames' bytes and write them with one positioned write
                // below (cheaper than faulting in every page of a fresh file through the map).
                Order::F => {
                    let out = &mut self.bytes[lead + f * d * 4..lead + (f + 1) * d * 4];
                    for (o, v) in out.chunks_exact_mut(4).zip(&scratch) {
                        o.copy_from_slice(&v.to_le_bytes());
                    }
                }
                Order::C => {
                    for (p, &v) in scratch.iter().enumerate() {
                        self.put(p * t_len + t, v);
                    }
                }
            }
        }
        self.scratch = scratch;
        if self.order == Order::F {
            self.write_at_offset(lead, len, off)?;
        }
        Ok(())
    }

    /// Write complete time series of pixels `start_pixel..` (Fortran pixel index): `rows` holds
    /// `k × T` values, pixel after pixel. Contiguous for order C; a strided scatter for order F.
    pub fn write_pixels(&mut self, start_pixel: usize, rows: &[f32]) -> Result<()> {
        let t_len = self.shape.frames;
        let d = self.shape.dims.pixels();
        if !rows.len().is_multiple_of(t_len) || start_pixel + rows.len() / t_len > d {
            return Err(Error::invalid(
                &self.path,
                format!("pixel rows {start_pixel}+{} do not fit {}", rows.len() / t_len, self.shape),
            ));
        }
        for (k, row) in rows.chunks_exact(t_len).enumerate() {
            let p = start_pixel + k;
            match self.order {
                Order::C => {
                    let out = &mut self.map[p * t_len * 4..(p + 1) * t_len * 4];
                    for (o, v) in out.chunks_exact_mut(4).zip(row) {
                        o.copy_from_slice(&v.to_le_bytes());
                    }
                }
                Order::F => {
                    for (t, &v) in row.iter().enumerate() {
                        self.put(t * d + p, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `vals` as frames `t0 ..` of pixel `p` of an order-C file, with one positioned
    /// write (the map is not touched).
    fn write_pixel_run(&mut self, p: usize, t0: usize, vals: &[f32]) -> Result<()> {
        debug_assert!(self.order == Order::C && t0 + vals.len() <= self.shape.frames);
        let off = ((p * self.shape.frames + t0) * 4) as u64;
        let bytes = le_bytes(vals, &mut self.bytes);
        self.file.write_all_at(bytes, off).at(&self.path)
    }

    /// Flush written pages to the file.
    pub fn flush(&self) -> Result<()> {
        self.map.flush().at(&self.path)
    }
}

/// Streaming `.mmap` writer (one process). Order F appends frames sequentially; order C buffers
/// blocks of frames and writes each pixel's run of the block contiguously.
pub struct MmapWriter {
    pending: PendingMmap,
    region: MmapRegionWriter,
    count: FrameCounter,
    block: Vec<f32>,
    block_start: usize,
    block_frames: usize,
    /// One pixel's values of the block, gathered for its write.
    run: Vec<f32>,
}

/// Bytes of frames buffered by an order-C [`MmapWriter`] before they are scattered (one
/// positioned write per pixel per block: larger blocks, fewer writes).
const C_BLOCK_BYTES: usize = 256 << 20;

impl MmapWriter {
    /// Create a writer; the final name is CaImAn's (see [`MmapName::path_for`]).
    pub fn create(path: &Path, shape: Shape, order: Order) -> Result<Self> {
        let pending = PendingMmap::create(path, shape, order)?;
        let region = pending.region_writer()?;
        let d = shape.dims.pixels();
        let block_frames = match order {
            Order::F => 0,
            Order::C => (C_BLOCK_BYTES / (4 * d)).clamp(1, shape.frames),
        };
        Ok(MmapWriter {
            pending,
            region,
            count: FrameCounter::new(shape),
            block: Vec::new(),
            block_start: 0,
            block_frames,
            run: Vec::new(),
        })
    }

    /// Buffers `bytes` of frames per block instead of 256 MiB (order C; at least one frame): each
    /// pixel's run per block is then longer, and the file takes fewer, larger writes.
    pub fn with_block_bytes(mut self, bytes: usize) -> Self {
        if self.pending.order == Order::C {
            let d = self.count.shape.dims.pixels().max(1);
            self.block_frames = (bytes / (4 * d)).clamp(1, self.count.shape.frames.max(1));
        }
        self
    }

    /// Writes the buffered frames: each pixel's run of the block with one positioned write. Not
    /// through the map: the pages of a file written through a shared map count in this process's
    /// resident memory until the kernel writes them back and evicts them — up to the whole
    /// file for a movie the page cache can hold, where `caiman cnmf` copies a movie that is
    /// larger than its memory budget.
    fn flush_block(&mut self) -> Result<()> {
        let dims = self.count.shape.dims;
        let d = dims.pixels();
        let n = self.block.len() / d;
        if n == 0 {
            return Ok(());
        }
        let t0 = self.block_start;
        let mut run = std::mem::take(&mut self.run);
        run.resize(n, 0.0);
        let mut c = 0;
        for i in 0..dims.d1 {
            for j in 0..dims.d2 {
                for k in 0..dims.d3 {
                    for (f, v) in run.iter_mut().enumerate() {
                        *v = self.block[f * d + c];
                    }
                    self.region.write_pixel_run(dims.f_index(i, j, k), t0, &run)?;
                    c += 1;
                }
            }
        }
        self.run = run;
        self.block_start += n;
        self.block.clear();
        Ok(())
    }
}

impl MovieWriter for MmapWriter {
    fn shape(&self) -> Shape {
        self.count.shape
    }

    fn write_frames(&mut self, frames: &[f32]) -> Result<()> {
        let start = self.count.written;
        self.count.take(self.pending.dest(), frames.len())?;
        match self.pending.order {
            Order::F => self.region.write_frames(start, frames),
            Order::C => {
                let d = self.count.shape.dims.pixels();
                if self.block.capacity() == 0 {
                    self.block.reserve_exact(self.block_frames * d);
                }
                for frame in frames.chunks_exact(d) {
                    self.block.extend_from_slice(frame);
                    if self.block.len() >= self.block_frames * d {
                        self.flush_block()?;
                    }
                }
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<PathBuf> {
        let mut me = *self;
        me.count.check_complete(me.pending.dest())?;
        me.flush_block()?;
        me.region.flush()?;
        drop(me.region);
        me.pending.commit()
    }
}
/// Which step [`c_order_memmap`] reports progress for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStep {
    /// The pixel-block transpose of an F-order memmap (progress in pixel blocks).
    Transpose,
    /// The frame-by-frame copy of any other input (progress in frames).
    Copy,
}

/// The C-order memmap CNMF reads for `movies` (chained into one movie), plus whether it is the
/// input itself (to be left alone) rather than a new file named after `base`: a single C-order
/// `.mmap` is used as it is, a single F-order one goes through [`transpose_f_to_c`] (pixel blocks
/// of at most `block_bytes`), anything else is streamed frame by frame into a C-order memmap
/// (CaImAn's `save_memmap(order='C')`) through an [`MmapWriter`] buffering `block_bytes` of
/// frames. `progress(step, done, total)` hears about the work.
///
/// # Errors
/// Errors of opening, reading and writing, naming the file.
pub fn c_order_memmap(
    movies: &[PathBuf],
    open: &crate::OpenOptions,
    base: &Path,
    block_bytes: usize,
    progress: &mut dyn FnMut(CopyStep, usize, usize),
) -> Result<(PathBuf, bool)> {
    if let [single] = movies
        && let Ok(name) = MmapName::decode(single)
    {
        if name.order == Order::C {
            return Ok((single.clone(), true));
        }
        let path = transpose_f_to_c(single, base, 0, block_bytes, &mut |done, total| {
            progress(CopyStep::Transpose, done, total)
        })?;
        return Ok((path, false));
    }
    let mut src = crate::ChainSource::open(movies, open)?;
    let shape = src.info().shape;
    let mut w = MmapWriter::create(&base.with_extension("mmap"), shape, Order::C)?.with_block_bytes(block_bytes);
    crate::copy_frames(&mut src, 0..shape.frames, &mut w, &mut |n| progress(CopyStep::Copy, n, shape.frames))?;
    Ok((Box::new(w).finish()?, false))
}

/// Values read as native bytes from a little-endian file: fix their byte order in place (a no-op
/// on little-endian machines).
fn from_le_in_place(v: &mut [f32]) {
    if cfg!(target_endian = "big") {
        v.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
    }
}

/// The little-endian bytes of `v`: its own memory on little-endian machines, else a converted
/// copy in `scratch`.
fn le_bytes<'a>(v: &'a [f32], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if cfg!(target_endian = "little") {
        // SAFETY: the view covers exactly the slice's memory and `u8` has alignment 1; the
        // shared borrow keeps it alive and unchanged.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    } else {
        scratch.clear();
        scratch.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        scratch
    }
}

/// Copies the F-order memmap `src` (frames contiguous) to a C-order memmap named after `base`
/// (pixel rows contiguous), pixel block by pixel block: each block of pixel rows (at most
/// `block_bytes`) is gathered from tiles of frames with positioned reads, zeroed where it lies
/// within `border_to_0` pixels of the frame's edge (rows and columns, as CaImAn's
/// `save_memmap`), and written with one positioned write (memory: the block and a 4 MiB tile of
/// frames; transposed in 16 × 16 squares for the caches). `progress(done, total)` hears about
/// pixel blocks. This is the one copy CNMF needs after motion correction (CaImAn's
/// `save_memmap(order='C')`, without its `+0.0001` and its intermediate copies).
///
/// # Errors
/// Errors naming `src` for a name that is not a CaImAn F-order memmap or a size that does not
/// match it; I/O errors naming the file.
pub fn transpose_f_to_c(
    src: &Path,
    base: &Path,
    border_to_0: usize,
    block_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf> {
    let name = MmapName::decode(src)?;
    if name.order != Order::F {
        return Err(Error::invalid(src, "expected an F-order (frame-major) memmap"));
    }
    let shape = name.shape();
    let (d, t_len, dims) = (shape.dims.pixels(), shape.frames, shape.dims);
    let input = File::open(src).at(src)?;
    let len = input.metadata().at(src)?.len();
    if len != shape.len() as u64 * 4 {
        return Err(Error::malformed(
            src,
            "CaImAn memmap",
            format!("file holds {len} bytes but its name says {shape} float32 values"),
        ));
    }
    let pending = PendingMmap::create(base, shape, Order::C)?;
    let out = File::options().write(true).open(pending.tmp_path()).at(pending.tmp_path())?;
    let rows_per_block = (block_bytes / (4 * t_len).max(1)).clamp(1, d);
    let n_blocks = d.div_ceil(rows_per_block);
    // A tile of frames: up to 64 frames of the block's pixels (bounded by 4 MiB).
    let tile_frames = (4usize << 20).div_ceil(4 * rows_per_block).clamp(1, 64).min(t_len);
    let mut block = vec![0f32; rows_per_block * t_len];
    let mut tile = vec![0f32; tile_frames * rows_per_block];
    let mut bytes: Vec<u8> = Vec::new();
    let b = border_to_0;
    let in_border = |p: usize| {
        let (i, j) = (p % dims.d1, (p / dims.d1) % dims.d2);
        b > 0 && (i < b || j < b || i + b >= dims.d1 || j + b >= dims.d2)
    };
    // Pixels are transposed in squares of SQ × SQ (frames × pixels) so that both the tile's rows
    // and the block's rows are walked in cache lines.
    const SQ: usize = 16;
    for (bi, p0) in (0..d).step_by(rows_per_block).enumerate() {
        let np = rows_per_block.min(d - p0);
        for t0 in (0..t_len).step_by(tile_frames) {
            let nt = tile_frames.min(t_len - t0);
            for dt in 0..nt {
                let off = ((t0 + dt) * d + p0) as u64 * 4;
                let row = &mut tile[dt * np..(dt + 1) * np];
                input.read_exact_at(f32_bytes_mut(row), off).at(src)?;
                from_le_in_place(row);
            }
            for k0 in (0..np).step_by(SQ) {
                for dt0 in (0..nt).step_by(SQ) {
                    for k in k0..(k0 + SQ).min(np) {
                        let row = &mut block[k * t_len + t0..k * t_len + t0 + nt];
                        for dt in dt0..(dt0 + SQ).min(nt) {
                            row[dt] = tile[dt * np + k];
                        }
                    }
                }
            }
        }
        for k in (0..np).filter(|&k| in_border(p0 + k)) {
            block[k * t_len..(k + 1) * t_len].fill(0.0);
        }
        // Pixel rows are contiguous in order C: one write for the block.
        out.write_all_at(le_bytes(&block[..np * t_len], &mut bytes), (p0 * t_len) as u64 * 4).at(pending.tmp_path())?;
        progress(bi + 1, n_blocks);
    }
    drop(out);
    pending.commit()
}
