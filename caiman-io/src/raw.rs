//! Raw, headerless movie layouts shared by `.npy`, `.npz` and `.mmap` readers.
//!
//! Three byte layouts cover every uncompressed array CaImAn writes:
//! * [`Layout::FramesC`] — frame after frame, each frame C-ordered (numpy C-order `T×d1×d2`);
//! * [`Layout::FramesF`] — frame after frame, each frame in Fortran pixel order (`Yr` stored
//!   column-major, CaImAn's `order='F'` memmap);
//! * [`Layout::PixelMajorF`] — pixel after pixel, each pixel's time series contiguous, pixels in
//!   Fortran order (`Yr` stored row-major, CaImAn's `order='C'` memmap, and numpy F-order `T×d1×d2`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::movie::{DType, Dims, Shape, decode_into_f32};

/// How values are laid out after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    FramesC,
    FramesF,
    PixelMajorF,
}

/// Where the bytes live.
#[derive(Debug)]
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Page size assumed when releasing mapped pages.
const PAGE: usize = 4096;

/// Reads of at least this many frames from a pixel-major map release each band of pixel rows
/// as soon as it has been read.
const EAGER_RELEASE_FRAMES: usize = 64;

/// Map a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every memory-mapped reader (numpy, CaImAn) we rely on
    // the file not being truncated by another process while it is mapped.
    unsafe { memmap2::MmapOptions::new().map(&f) }.map_err(|e| Error::io(path, e))
}

/// A movie stored raw at `offset` in `bytes`.
#[derive(Debug)]
pub(crate) struct RawMovie {
    bytes: Bytes,
    offset: usize,
    pub(crate) shape: Shape,
    pub(crate) dtype: DType,
    little_endian: bool,
    pub(crate) layout: Layout,
    scratch: Vec<f32>,
    /// Frames up to which the pixel-major map was last released (see `release_read`).
    released_upto: usize,
}

impl RawMovie {
    /// Wrap `bytes`, checking that they hold exactly (or at least, if `allow_trailing`) the data.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        path: &Path,
        format: &'static str,
        bytes: Bytes,
        offset: usize,
        shape: Shape,
        dtype: DType,
        little_endian: bool,
        layout: Layout,
    ) -> Result<Self> {
        let need = (shape.len() as u128) * dtype.size() as u128 + offset as u128;
        let have = bytes.as_slice().len() as u128;
        if have != need {
            return Err(Error::malformed(
                path,
                format,
                format!(
                    "header promises {} values of {dtype} ({} bytes after a {offset}-byte header) but the data holds {} bytes",
                    shape.len(),
                    need - offset as u128,
                    have.saturating_sub(offset as u128)
                ),
            ));
        }
        Ok(RawMovie { bytes, offset, shape, dtype, little_endian, layout, scratch: Vec::new(), released_upto: 0 })
    }

    fn data(&self) -> &[u8] {
        &self.bytes.as_slice()[self.offset..]
    }

    /// The values as native f32 when the data is little-endian f32 on a little-endian machine
    /// and 4-byte aligned (always true for memmaps and for `.npy` files written by numpy or us).
    fn native_f32(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 || !self.little_endian || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: any 4 bytes are a valid f32; `align_to` only yields the aligned middle part.
        let (head, vals, tail) = unsafe { self.data().align_to::<f32>() };
        (head.is_empty() && tail.is_empty()).then_some(vals)
    }

    /// Read `buf.len() / d` frames from `start` (range already validated by the caller).
    pub(crate) fn read_frames(&mut self, start: usize, buf: &mut [f32]) {
        let dims = self.shape.dims;
        let d = dims.pixels();
        let n = buf.len() / d;
        let es = self.dtype.size();
        if let Some(vals) = self.native_f32() {
            match self.layout {
                Layout::FramesC => buf.copy_from_slice(&vals[start * d..(start + n) * d]),
                Layout::FramesF => {
                    for (f, frame) in buf.chunks_exact_mut(d).enumerate() {
                        let t = start + f;
                        f_to_c(dims, &vals[t * d..(t + 1) * d], frame);
                    }
                }
                Layout::PixelMajorF => {
                    // Reads of many frames release each band of pixel rows as soon as it is read
                    // (the read touches, with the kernel's fault-around, the whole band).
                    let eager = n >= EAGER_RELEASE_FRAMES;
                    let row = self.shape.frames * 4;
                    let (bytes, offset) = (&self.bytes, self.offset);
                    gather_pixel_major(dims, self.shape.frames, vals, start, n, buf, &mut |p0, p1| {
                        if eager {
                            release_mapped(bytes, offset + p0 * row, offset + p1 * row);
                        }
                    });
                    if eager {
                        self.released_upto = start + n;
                        return;
                    }
                }
            }
            self.release_read(start, n);
            return;
        }
        match self.layout {
            Layout::FramesC => {
                let raw = &self.data()[start * d * es..(start + n) * d * es];
                decode_into_f32(self.dtype, self.little_endian, raw, buf);
            }
            Layout::FramesF => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.resize(d, 0.0);
                for (f, frame) in buf.chunks_exact_mut(d).enumerate() {
                    let t = start + f;
                    let raw = &self.data()[t * d * es..(t + 1) * d * es];
                    decode_into_f32(self.dtype, self.little_endian, raw, &mut scratch);
                    f_to_c(dims, &scratch, frame);
                }
                self.scratch = scratch;
            }
            Layout::PixelMajorF => {
                let t_len = self.shape.frames;
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.resize(n * d, 0.0);
                // Decode the n-frame column block of every pixel row, then gather.
                let mut row = vec![0f32; n];
                for p in 0..d {
                    let from = (p * t_len + start) * es;
                    decode_into_f32(self.dtype, self.little_endian, &self.data()[from..from + n * es], &mut row);
                    scratch[p * n..(p + 1) * n].copy_from_slice(&row);
                }
                gather_pixel_major(dims, n, &scratch, 0, n, buf, &mut |_, _| {});
                self.scratch = scratch;
            }
        }
        self.release_read(start, n);
    }

    /// Tells the kernel the map will be read at scattered places (`MADV_RANDOM`): no read-ahead
    /// and no fault-around, so touching a few bytes maps one page, not its neighbours. No-op for
    /// bytes held in memory.
    pub(crate) fn advise_random(&self) {
        if let Bytes::Mapped(map) = &self.bytes {
            let _ = map.advise(memmap2::Advice::Random);
        }
    }

    /// After a read of frames `start .. start + n`: drops the mapped pages it touched from this
    /// process's resident set, so a memory-mapped movie read frame range by frame range holds
    /// no more resident memory than the frames being read (the pages stay in the page cache). For
    /// the frame-major layouts that is the frames' bytes. In the pixel-major layout every frame is
    /// strided over the whole file (one page per pixel), so the whole map is dropped once the reads
    /// have moved past a page's worth of frames of every pixel (1024 f32 frames): each page is
    /// faulted in about twice while read, and resident memory stays near two pages per pixel
    /// instead of growing to the file. No-op for bytes held in memory.
    fn release_read(&mut self, start: usize, n: usize) {
        if !matches!(self.bytes, Bytes::Mapped(_)) {
            return;
        }
        let frame = self.shape.dims.pixels() * self.dtype.size();
        let (from, to) = match self.layout {
            Layout::FramesC | Layout::FramesF => (start * frame, (start + n) * frame),
            Layout::PixelMajorF => {
                let per_page = (PAGE / self.dtype.size()).max(1);
                let end = start + n;
                if end < self.released_upto + per_page && start >= self.released_upto.saturating_sub(per_page) {
                    return;
                }
                self.released_upto = end;
                (0, self.shape.frames * frame)
            }
        };
        release_mapped(&self.bytes, self.offset + from, self.offset + to);
    }
}

/// Drops the pages of the bytes `from..to` (widened to whole pages) of a mapped file from this
/// process's resident set; no-op for bytes held in memory.
fn release_mapped(bytes: &Bytes, from: usize, to: usize) {
    let Bytes::Mapped(map) = bytes else { return };
    let lo = from / PAGE * PAGE;
    let hi = to.div_ceil(PAGE).saturating_mul(PAGE).min(map.len());
    if hi > lo {
        // SAFETY: the map is a read-only shared mapping of a file. MADV_DONTNEED only removes
        // this process's page-table entries; the next access faults the same file contents back
        // in, so no reference into the map observes a change. A page size other than 4 KiB makes
        // the call fail (EINVAL), which is harmless: nothing is released.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
    }
}

/// Gather frames `start..start + n` from pixel-major values (`vals[p·t_len + t]`, Fortran pixel
/// index `p`) into C-ordered frames, in tiles so reads and writes both stay cache-local.
///
/// `done(p0, p1)` is called once the pixel rows `p0..p1` have been read (after every band of
/// columns in 2-D, once at the end for volumes).
fn gather_pixel_major(
    dims: Dims,
    t_len: usize,
    vals: &[f32],
    start: usize,
    n: usize,
    buf: &mut [f32],
    done: &mut dyn FnMut(usize, usize),
) {
    const B: usize = 16;
    let d = dims.pixels();
    if dims.d3 != 1 {
        let mut c = 0;
        for i in 0..dims.d1 {
            for j in 0..dims.d2 {
                for k in 0..dims.d3 {
                    let p = dims.f_index(i, j, k);
                    let row = &vals[p * t_len + start..p * t_len + start + n];
                    for (f, &v) in row.iter().enumerate() {
                        buf[f * d + c] = v;
                    }
                    c += 1;
                }
            }
        }
        done(0, d);
        return;
    }
    let (d1, d2) = (dims.d1, dims.d2);
    for j0 in (0..d2).step_by(B) {
        for i0 in (0..d1).step_by(B) {
            for f in 0..n {
                let out = &mut buf[f * d..(f + 1) * d];
                for j in j0..(j0 + B).min(d2) {
                    for i in i0..(i0 + B).min(d1) {
                        out[i * d2 + j] = vals[(i + d1 * j) * t_len + start + f];
                    }
                }
            }
        }
        done(d1 * j0, d1 * (j0 + B).min(d2));
    }
}

/// Reorder one frame from Fortran pixel order to C order (a cache-blocked transpose for planar
/// frames).
pub(crate) fn f_to_c(dims: Dims, f: &[f32], c: &mut [f32]) {
    if dims.d3 == 1 {
        // The F-ordered frame is a row-major d2 × d1 matrix; its transpose is the C-ordered frame.
        transpose::transpose(f, c, dims.d1, dims.d2);
    } else {
        crate::movie::frame_f_to_c(dims, |p| f[p], c);
    }
}

/// Reorder one frame from C order to Fortran pixel order.
pub(crate) fn c_to_f(dims: Dims, c: &[f32], f: &mut [f32]) {
    if dims.d3 == 1 {
        transpose::transpose(c, f, dims.d2, dims.d1);
    } else {
        crate::movie::frame_c_to_f(dims, c, |p, v| f[p] = v);
    }
}

impl RawMovie {
    /// All values as f32 (little-endian f32 data only; used for zero-copy `Yr` views).
    ///
    /// # Panics
    /// If the data is not little-endian f32 or not 4-byte aligned.
    pub(crate) fn f32_values(&self) -> &[f32] {
        assert!(self.dtype == DType::F32 && self.little_endian && cfg!(target_endian = "little"));
        let data = self.data();
        // SAFETY: any 4 bytes are a valid f32; `align_to` only yields the aligned middle part.
        let (head, vals, tail) = unsafe { data.align_to::<f32>() };
        assert!(head.is_empty() && tail.is_empty(), "f32 data is not 4-byte aligned");
        vals
    }
}

/// View an `f32` slice as its bytes, to read stored values straight into it.
pub(crate) fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the view covers exactly the slice's memory (`size_of_val` bytes), `u8` has alignment
    // 1, the borrow is exclusive for the view's lifetime, and every bit pattern is a valid `f32`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
