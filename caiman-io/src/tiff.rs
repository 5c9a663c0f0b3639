//! TIFF and BigTIFF movies with CaImAn's conventions: a streaming reader ([`TiffSource`]) and a
//! streaming writer ([`TiffWriter`]).
//!
//! # Reading
//!
//! Every page (IFD) is one grayscale image. Pages are frames, or — for volumetric movies —
//! `n1` consecutive pages of `n2 × n3` form one `n1 × n2 × n3` volume (CaImAn's 3-D TIFF
//! convention): volume `t` is pages `t·n1 .. t·n1 + n1`, concatenated in C order. A file is
//! volumetric when tifffile's description says `{"shape": [T, n1, n2, n3]}`, when an ImageJ
//! hyperstack has `slices > 1` and `frames > 1`, or when the caller passes `planes`.
//!
//! The reader
//! * parses IFDs itself (classic TIFF and BigTIFF, little- and big-endian) with positioned reads,
//!   never loading or memory-mapping the file;
//! * finds the page count at open without walking every IFD when the file states it (tifffile's
//!   `{"shape": [...]}` or ImageJ's `images=N`) and its layout is regular (constant IFD stride
//!   and pixel stride, as tifffile and ScanImage write): page `k` is then located arithmetically,
//!   and the prediction is checked against page `k`'s own IFD the first time it is read (falling
//!   back to walking the IFD chain if the check fails). Otherwise the chain is walked once at open,
//!   reading only each IFD's entry count and next pointer;
//! * reads ImageJ's contiguous layout, including files over 4 GB where only the first IFD exists;
//! * reads uncompressed strips straight into the caller's buffer (f32) or through one reusable
//!   scratch buffer (other sample types); compressed or tiled pages (LZW, deflate, PackBits,
//!   JPEG, with horizontal or floating-point predictors) are decoded by the `tiff` crate;
//! * reports anything malformed (not a TIFF, truncated, bogus or looping IFD offsets, strips
//!   outside the file, pages of different sizes) as a typed [`Error`] naming the file; it never
//!   panics on bad input and never loops.
//!
//! It does not read multi-sample pages (RGB, interleaved channels), multi-channel ImageJ
//! hyperstacks, sample sizes other than 8/16/32/64 bits, half floats, OME-XML axis metadata,
//! sub-IFDs (pyramids, thumbnails), or series after the first when the description gives the
//! first series' page count. Sample values are returned as stored: `WhiteIsZero` pages are not
//! inverted (as tifffile).
//!
//! # Writing
//!
//! [`TiffWriter`] writes what CaImAn's `timeseries.save` writes through tifffile: uncompressed,
//! one page per frame (`d1` pages of `d2 × d3` per volume), little-endian, sample type from
//! [`WriteOptions::tiff_sample`], and the description `{"shape": [T, d1, d2]}` (four entries
//! for volumes, plus the frame rate as `"fps"`) on the first page so tifffile and CaImAn see one
//! series. The layout is tifffile's: header, first IFD and description, all pixel data
//! contiguous, then the IFDs of the other pages — regular, so this reader finds any page
//! arithmetically. BigTIFF is used when asked or when a classic file would pass ~4 GB. The file
//! is written under a temporary name and renamed by [`MovieWriter::finish`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tiff::decoder::{Decoder, DecodingResult, Limits};

use crate::error::{Error, IoContext, Result};
use crate::movie::{DType, Dims, Shape, decode_into_f32};
use crate::raw::f32_bytes_mut;
use crate::source::{Format, FrameSource, SourceInfo, check_request};
use crate::write::{AtomicFile, FrameCounter, MovieWriter, TiffSample, WriteOptions};

/// Format name used in errors.
const FORMAT: &str = "TIFF";

/// Most entries an IFD may declare (real files have a few dozen).
const MAX_ENTRIES: u64 = 65_535;
/// Most strips (or tiles) one page may have.
const MAX_STRIPS: u64 = 1 << 24;
/// Longest image description parsed; longer ones (huge OME-XML) are ignored.
const MAX_DESCRIPTION: u64 = 16 << 20;
/// Values converted per chunk when a sample type needs the scratch buffer.
const CHUNK_VALUES: usize = 1 << 20;

/// TIFF tags this module reads or writes.
mod tag {
    pub(super) const NEW_SUBFILE_TYPE: u16 = 254;
    pub(super) const IMAGE_WIDTH: u16 = 256;
    pub(super) const IMAGE_LENGTH: u16 = 257;
    pub(super) const BITS_PER_SAMPLE: u16 = 258;
    pub(super) const COMPRESSION: u16 = 259;
    pub(super) const PHOTOMETRIC: u16 = 262;
    pub(super) const IMAGE_DESCRIPTION: u16 = 270;
    pub(super) const STRIP_OFFSETS: u16 = 273;
    pub(super) const SAMPLES_PER_PIXEL: u16 = 277;
    pub(super) const ROWS_PER_STRIP: u16 = 278;
    pub(super) const STRIP_BYTE_COUNTS: u16 = 279;
    pub(super) const PLANAR_CONFIGURATION: u16 = 284;
    pub(super) const TILE_WIDTH: u16 = 322;
    pub(super) const TILE_LENGTH: u16 = 323;
    pub(super) const TILE_OFFSETS: u16 = 324;
    pub(super) const SAMPLE_FORMAT: u16 = 339;
}

/// TIFF field types.
mod ty {
    pub(super) const BYTE: u16 = 1;
    pub(super) const ASCII: u16 = 2;
    pub(super) const SHORT: u16 = 3;
    pub(super) const LONG: u16 = 4;
    pub(super) const UNDEFINED: u16 = 7;
    pub(super) const IFD: u16 = 13;
    pub(super) const LONG8: u16 = 16;
    pub(super) const IFD8: u16 = 18;
}

// ---------------------------------------------------------------------------------------------
// Low-level file access
// ---------------------------------------------------------------------------------------------

/// What the 8- or 16-byte file header says.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Little-endian (`II`) rather than big-endian (`MM`).
    le: bool,
    /// BigTIFF (version 43) rather than classic TIFF (42).
    big: bool,
    /// Offset of the first IFD (0: no image).
    first_ifd: u64,
}

impl Header {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.le { u16::from_le_bytes(a) } else { u16::from_be_bytes(a) }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    }

    fn u64(self, b: &[u8]) -> u64 {
        let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.le { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) }
    }

    /// An offset field (4 bytes classic, 8 BigTIFF).
    fn offset(self, b: &[u8]) -> u64 {
        if self.big { self.u64(b) } else { u64::from(self.u32(b)) }
    }

    /// Bytes of an IFD's entry count.
    fn count_len(self) -> u64 {
        if self.big { 8 } else { 2 }
    }

    /// Bytes of one IFD entry.
    fn entry_len(self) -> u64 {
        if self.big { 20 } else { 12 }
    }

    /// Bytes of an offset (and of the inline value field of an entry).
    fn offset_len(self) -> u64 {
        if self.big { 8 } else { 4 }
    }
}

/// One IFD entry: tag, field type, value count and the raw value-or-offset field.
#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u16,
    typ: u16,
    count: u64,
    field: [u8; 8],
}

/// The tags of one IFD that matter for reading its pixels.
#[derive(Debug, Clone, Default)]
struct Ifd {
    offset: u64,
    next: u64,
    width: u64,
    height: u64,
    bits: u16,
    sample_format: u16,
    samples: u16,
    compression: u16,
    photometric: u16,
    rows_per_strip: u64,
    tiled: bool,
    strip_offsets: Vec<u64>,
    strip_counts: Vec<u64>,
    description: Option<String>,
}

impl Ifd {
    /// Clear to the TIFF defaults, keeping the allocations.
    fn reset(&mut self, offset: u64) {
        self.offset = offset;
        self.next = 0;
        self.width = 0;
        self.height = 0;
        self.bits = 1;
        self.sample_format = 1;
        self.samples = 1;
        self.compression = 1;
        self.photometric = 1;
        self.rows_per_strip = u64::from(u32::MAX);
        self.tiled = false;
        self.strip_offsets.clear();
        self.strip_counts.clear();
        self.description = None;
    }

    /// Uncompressed strips: pixels this module reads itself.
    fn is_plain(&self) -> bool {
        self.compression == 1 && !self.tiled
    }
}

/// Reusable buffers for IFD parsing.
#[derive(Debug, Default)]
struct IfdBufs {
    entries: Vec<u8>,
    values: Vec<u8>,
}

/// Scratch space for parsing one page's IFD.
#[derive(Debug, Default)]
struct PageScratch {
    bufs: IfdBufs,
    ifd: Ifd,
    runs: Vec<(u64, u64)>,
}

/// Size and sample type of a page; every page of a movie must have the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageFormat {
    width: usize,
    height: usize,
    dtype: DType,
}

impl PageFormat {
    fn pixels(&self) -> usize {
        self.width * self.height
    }

    fn bytes(&self) -> u64 {
        (self.pixels() * self.dtype.size()) as u64
    }
}

impl std::fmt::Display for PageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{} {}", self.height, self.width, self.dtype)
    }
}

/// Sample type from BitsPerSample and SampleFormat.
fn dtype_of(bits: u16, sample_format: u16) -> Option<DType> {
    Some(match (sample_format, bits) {
        (1 | 4, 8) => DType::U8,
        (2, 8) => DType::I8,
        (1 | 4, 16) => DType::U16,
        (2, 16) => DType::I16,
        (1 | 4, 32) => DType::U32,
        (2, 32) => DType::I32,
        (1 | 4, 64) => DType::U64,
        (2, 64) => DType::I64,
        (3, 32) => DType::F32,
        (3, 64) => DType::F64,
        _ => return None,
    })
}

/// Name of a Compression tag value.
fn compression_name(c: u16) -> String {
    match c {
        1 => "uncompressed".into(),
        5 => "LZW".into(),
        6 | 7 => "JPEG".into(),
        8 | 32946 => "deflate".into(),
        32773 => "PackBits".into(),
        34925 => "LZMA".into(),
        50000 => "zstd".into(),
        other => format!("compression {other}"),
    }
}

/// The open file: positioned reads and IFD parsing.
#[derive(Debug)]
struct TiffFile {
    path: PathBuf,
    file: File,
    len: u64,
    hdr: Header,
}

impl TiffFile {
    fn malformed(&self, msg: impl Into<String>) -> Error {
        Error::malformed(&self.path, FORMAT, msg)
    }

    fn unsupported(&self, msg: impl Into<String>) -> Error {
        Error::unsupported(&self.path, FORMAT, msg)
    }

    /// Read `buf.len()` bytes at `offset`, which must lie inside the file; `what` names them.
    fn read_at(&self, offset: u64, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<()> {
        let n = buf.len() as u64;
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(self.malformed(format!(
                "{} at byte {offset} ({n} bytes) lies past the end of the file ({} bytes)",
                what(),
                self.len
            )));
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.malformed(format!("{}: file truncated while reading", what()))
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Entry count of the IFD at `offset`, checked to fit the file.
    fn entry_count(&self, offset: u64, page: usize) -> Result<u64> {
        let h = self.hdr;
        let mut b = [0u8; 8];
        let cl = h.count_len() as usize;
        self.read_at(offset, &mut b[..cl], || format!("IFD of page {page}"))?;
        let n = if h.big { h.u64(&b) } else { u64::from(h.u16(&b)) };
        if n == 0 || n > MAX_ENTRIES {
            return Err(self.malformed(format!("IFD of page {page} at byte {offset} declares {n} entries")));
        }
        let end = offset + h.count_len() + n * h.entry_len() + h.offset_len();
        if end > self.len {
            return Err(self.malformed(format!(
                "IFD of page {page} at byte {offset} ({n} entries) runs past the end of the file ({} bytes)",
                self.len
            )));
        }
        Ok(n)
    }

    /// Offset of the IFD after the one at `offset`, reading only its entry count and next pointer.
    fn next_ifd(&self, offset: u64, page: usize) -> Result<u64> {
        let h = self.hdr;
        let n = self.entry_count(offset, page)?;
        let at = offset + h.count_len() + n * h.entry_len();
        let mut b = [0u8; 8];
        self.read_at(at, &mut b[..h.offset_len() as usize], || format!("next-IFD pointer of page {page}"))?;
        Ok(h.offset(&b))
    }

    /// Walk the IFD chain from the first IFD, returning the offset of every IFD (at most `limit`).
    fn walk(&self, limit: Option<usize>) -> Result<Vec<u64>> {
        let mut seen = HashSet::new();
        let mut ifds = Vec::new();
        let mut offset = self.hdr.first_ifd;
        while offset != 0 && limit.is_none_or(|l| ifds.len() < l) {
            if !seen.insert(offset) {
                return Err(self.malformed(format!(
                    "IFD chain loops: page {} points back to the IFD at byte {offset}",
                    ifds.len()
                )));
            }
            let next = self.next_ifd(offset, ifds.len())?;
            ifds.push(offset);
            offset = next;
        }
        Ok(ifds)
    }

    /// Parse the IFD at `offset` (of page `page`) into `ifd`.
    fn parse_ifd(
        &self,
        offset: u64,
        page: usize,
        want_description: bool,
        bufs: &mut IfdBufs,
        ifd: &mut Ifd,
    ) -> Result<()> {
        let h = self.hdr;
        let n = self.entry_count(offset, page)?;
        let el = h.entry_len() as usize;
        let body = n as usize * el + h.offset_len() as usize;
        if bufs.entries.len() < body {
            bufs.entries.resize(body, 0);
        }
        let raw = &mut bufs.entries[..body];
        self.read_at(offset + h.count_len(), raw, || format!("IFD of page {page}"))?;
        ifd.reset(offset);
        ifd.next = h.offset(&raw[n as usize * el..]);
        for e in raw[..n as usize * el].chunks_exact(el) {
            let (count, field) =
                if h.big { (h.u64(&e[4..12]), &e[12..20]) } else { (u64::from(h.u32(&e[4..8])), &e[8..12]) };
            let mut f = [0u8; 8];
            f[..field.len()].copy_from_slice(field);
            let entry = Entry { tag: h.u16(&e[0..2]), typ: h.u16(&e[2..4]), count, field: f };
            match entry.tag {
                tag::IMAGE_WIDTH => ifd.width = self.first_uint(&entry, page)?,
                tag::IMAGE_LENGTH => ifd.height = self.first_uint(&entry, page)?,
                tag::BITS_PER_SAMPLE => ifd.bits = self.first_u16(&entry, page)?,
                tag::SAMPLE_FORMAT => ifd.sample_format = self.first_u16(&entry, page)?,
                tag::SAMPLES_PER_PIXEL => ifd.samples = self.first_u16(&entry, page)?,
                tag::COMPRESSION => ifd.compression = self.first_u16(&entry, page)?,
                tag::PHOTOMETRIC => ifd.photometric = self.first_u16(&entry, page)?,
                tag::ROWS_PER_STRIP => ifd.rows_per_strip = self.first_uint(&entry, page)?,
                tag::PLANAR_CONFIGURATION => {}
                tag::TILE_WIDTH | tag::TILE_LENGTH | tag::TILE_OFFSETS => ifd.tiled = true,
                tag::STRIP_OFFSETS => self.uints(&entry, page, &mut bufs.values, &mut ifd.strip_offsets)?,
                tag::STRIP_BYTE_COUNTS => self.uints(&entry, page, &mut bufs.values, &mut ifd.strip_counts)?,
                tag::IMAGE_DESCRIPTION
                    if want_description
                        && matches!(entry.typ, ty::ASCII | ty::BYTE | ty::UNDEFINED)
                        && entry.count <= MAX_DESCRIPTION =>
                {
                    self.entry_bytes(&entry, page, 1, &mut bufs.values)?;
                    let text = String::from_utf8_lossy(&bufs.values);
                    ifd.description = Some(text.trim_end_matches('\0').to_owned());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The raw bytes of an entry's values (inline or out of line) into `out`.
    fn entry_bytes(&self, e: &Entry, page: usize, size: u64, out: &mut Vec<u8>) -> Result<()> {
        let total = e.count.checked_mul(size).filter(|&t| t <= self.len).ok_or_else(|| {
            self.malformed(format!(
                "tag {} of page {page} declares {} values, more than the file holds",
                e.tag, e.count
            ))
        })?;
        out.clear();
        if total <= self.hdr.offset_len() {
            out.extend_from_slice(&e.field[..total as usize]);
        } else {
            let at = self.hdr.offset(&e.field);
            out.resize(total as usize, 0);
            self.read_at(at, out, || format!("values of tag {} of page {page}", e.tag))?;
        }
        Ok(())
    }

    /// All values of an unsigned-integer entry.
    fn uints(&self, e: &Entry, page: usize, buf: &mut Vec<u8>, out: &mut Vec<u64>) -> Result<()> {
        let size = self.uint_size(e, page)?;
        if e.count > MAX_STRIPS {
            return Err(self.malformed(format!("tag {} of page {page} declares {} values", e.tag, e.count)));
        }
        self.entry_bytes(e, page, size, buf)?;
        let h = self.hdr;
        out.clear();
        out.extend(buf.chunks_exact(size as usize).map(|c| match size {
            1 => u64::from(c[0]),
            2 => u64::from(h.u16(c)),
            4 => u64::from(h.u32(c)),
            _ => h.u64(c),
        }));
        Ok(())
    }

    /// The first value of an unsigned-integer entry.
    fn first_uint(&self, e: &Entry, page: usize) -> Result<u64> {
        let size = self.uint_size(e, page)?;
        if e.count == 0 {
            return Err(self.malformed(format!("tag {} of page {page} has no value", e.tag)));
        }
        let mut b = [0u8; 8];
        if e.count.saturating_mul(size) <= self.hdr.offset_len() {
            b = e.field;
        } else {
            let at = self.hdr.offset(&e.field);
            self.read_at(at, &mut b[..size as usize], || format!("value of tag {} of page {page}", e.tag))?;
        }
        let h = self.hdr;
        Ok(match size {
            1 => u64::from(b[0]),
            2 => u64::from(h.u16(&b)),
            4 => u64::from(h.u32(&b)),
            _ => h.u64(&b),
        })
    }

    fn first_u16(&self, e: &Entry, page: usize) -> Result<u16> {
        let v = self.first_uint(e, page)?;
        u16::try_from(v).map_err(|_| self.malformed(format!("tag {} of page {page} has value {v}", e.tag)))
    }

    /// Bytes per value of an unsigned-integer entry.
    fn uint_size(&self, e: &Entry, page: usize) -> Result<u64> {
        match e.typ {
            ty::BYTE => Ok(1),
            ty::SHORT => Ok(2),
            ty::LONG | ty::IFD => Ok(4),
            ty::LONG8 | ty::IFD8 => Ok(8),
            t => Err(self
                .malformed(format!("tag {} of page {page} has field type {t}, expected an unsigned integer", e.tag))),
        }
    }

    /// Size and sample type of a page, refusing what this reader does not read.
    fn page_format(&self, ifd: &Ifd, page: usize) -> Result<PageFormat> {
        if ifd.samples != 1 {
            return Err(self.unsupported(format!(
                "page {page} has {} samples per pixel (RGB or multi-channel pages); only grayscale pages are read",
                ifd.samples
            )));
        }
        let dtype = dtype_of(ifd.bits, ifd.sample_format).ok_or_else(|| {
            self.unsupported(format!(
                "page {page} has {} bits per sample with sample format {}; only 8/16/32/64-bit integers and 32/64-bit floats are read",
                ifd.bits, ifd.sample_format
            ))
        })?;
        if ifd.width == 0 || ifd.height == 0 {
            return Err(self.malformed(format!("page {page} is {}×{} pixels", ifd.height, ifd.width)));
        }
        let (width, height) = match (usize::try_from(ifd.width), usize::try_from(ifd.height)) {
            (Ok(w), Ok(h)) if w.checked_mul(h).and_then(|p| p.checked_mul(8)).is_some_and(|b| b < 1 << 48) => (w, h),
            _ => {
                return Err(self.malformed(format!("page {page} is {}×{} pixels", ifd.height, ifd.width)));
            }
        };
        Ok(PageFormat { width, height, dtype })
    }

    /// Byte runs `(offset, len)` holding an uncompressed page's pixels, in order; adjacent strips
    /// are merged.
    fn strip_runs(&self, ifd: &Ifd, fmt: &PageFormat, page: usize, runs: &mut Vec<(u64, u64)>) -> Result<()> {
        runs.clear();
        let height = fmt.height as u64;
        let row_bytes = (fmt.width * fmt.dtype.size()) as u64;
        if ifd.rows_per_strip == 0 {
            return Err(self.malformed(format!("page {page} has RowsPerStrip 0")));
        }
        let rps = ifd.rows_per_strip.min(height);
        let strips = height.div_ceil(rps);
        if (ifd.strip_offsets.len() as u64) < strips {
            return Err(self
                .malformed(format!("page {page} has {} strip offsets for {strips} strips", ifd.strip_offsets.len())));
        }
        for j in 0..strips {
            let rows = rps.min(height - j * rps);
            let bytes = rows * row_bytes;
            if let Some(&count) = ifd.strip_counts.get(j as usize)
                && count < bytes
            {
                return Err(self.malformed(format!("strip {j} of page {page} holds {count} bytes, expected {bytes}")));
            }
            let off = ifd.strip_offsets[j as usize];
            if off.checked_add(bytes).is_none_or(|end| end > self.len) {
                return Err(self.malformed(format!(
                    "strip {j} of page {page} (bytes {off}..+{bytes}) lies outside the file ({} bytes)",
                    self.len
                )));
            }
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += bytes,
                _ => runs.push((off, bytes)),
            }
        }
        Ok(())
    }
}

/// Read the file header.
fn read_header(file: &File, path: &Path, len: u64) -> Result<Header> {
    let malformed = |msg: String| Error::malformed(path, FORMAT, msg);
    if len < 8 {
        return Err(malformed(format!("not a TIFF file: only {len} bytes")));
    }
    let mut b = [0u8; 16];
    let n = len.min(16) as usize;
    file.read_exact_at(&mut b[..n], 0).at(path)?;
    let le = match &b[..2] {
        b"II" => true,
        b"MM" => false,
        other => {
            return Err(malformed(format!("not a TIFF file: starts with {other:02x?}, not II or MM")));
        }
    };
    let mut hdr = Header { le, big: false, first_ifd: 0 };
    match hdr.u16(&b[2..4]) {
        42 => hdr.first_ifd = u64::from(hdr.u32(&b[4..8])),
        43 => {
            if len < 16 {
                return Err(malformed("truncated BigTIFF header".into()));
            }
            if hdr.u16(&b[4..6]) != 8 || hdr.u16(&b[6..8]) != 0 {
                return Err(malformed("BigTIFF header with an offset size other than 8".into()));
            }
            hdr.big = true;
            hdr.first_ifd = hdr.u64(&b[8..16]);
        }
        v => {
            return Err(malformed(format!("not a TIFF file: version {v}, expected 42 (TIFF) or 43 (BigTIFF)")));
        }
    }
    Ok(hdr)
}

/// Read `out.len()` values of `dtype` stored contiguously from byte `offset` into `out`.
fn read_values(tf: &TiffFile, offset: u64, dtype: DType, scratch: &mut Vec<u8>, out: &mut [f32]) -> Result<()> {
    let le = tf.hdr.le;
    if dtype == DType::F32 {
        tf.read_at(offset, f32_bytes_mut(out), || "pixel data".into())?;
        if le != cfg!(target_endian = "little") {
            out.iter_mut().for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
        }
        return Ok(());
    }
    let size = dtype.size();
    let mut at = offset;
    for chunk in out.chunks_mut(CHUNK_VALUES) {
        let n = chunk.len() * size;
        if scratch.len() < n {
            scratch.resize(n, 0);
        }
        tf.read_at(at, &mut scratch[..n], || "pixel data".into())?;
        decode_into_f32(dtype, le, &scratch[..n], chunk);
        at += n as u64;
    }
    Ok(())
}

/// Read a page made of byte `runs` (each shifted by `shift`) into `out`.
fn read_runs(
    tf: &TiffFile,
    runs: &[(u64, u64)],
    shift: u64,
    dtype: DType,
    scratch: &mut Vec<u8>,
    out: &mut [f32],
) -> Result<()> {
    let mut pos = 0;
    for &(offset, bytes) in runs {
        let n = bytes as usize / dtype.size();
        let dst = out
            .get_mut(pos..pos + n)
            .ok_or_else(|| tf.malformed("strips hold more pixels than the page".to_string()))?;
        read_values(tf, offset + shift, dtype, scratch, dst)?;
        pos += n;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding through the `tiff` crate
// ---------------------------------------------------------------------------------------------

/// A `Read + Seek` view of the file whose header points at one chosen IFD, so that the `tiff`
/// crate decodes that page as its first image without walking the IFD chain.
struct PageReader<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
    header: [u8; 16],
    header_len: u64,
}

impl<'a> PageReader<'a> {
    fn new(tf: &'a TiffFile, ifd: u64) -> Result<Self> {
        let h = tf.hdr;
        let mut header = [0u8; 16];
        header[..2].copy_from_slice(if h.le { b"II" } else { b"MM" });
        let u16b = |v: u16| if h.le { v.to_le_bytes() } else { v.to_be_bytes() };
        let header_len = if h.big {
            header[2..4].copy_from_slice(&u16b(43));
            header[4..6].copy_from_slice(&u16b(8));
            header[8..16].copy_from_slice(&if h.le { ifd.to_le_bytes() } else { ifd.to_be_bytes() });
            16
        } else {
            let ifd = u32::try_from(ifd).map_err(|_| tf.malformed(format!("IFD offset {ifd} in a classic TIFF")))?;
            header[2..4].copy_from_slice(&u16b(42));
            header[4..8].copy_from_slice(&if h.le { ifd.to_le_bytes() } else { ifd.to_be_bytes() });
            8
        };
        Ok(PageReader { file: &tf.file, len: tf.len, pos: 0, header, header_len })
    }
}

impl Read for PageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.pos < self.header_len {
            let h = &self.header[self.pos as usize..self.header_len as usize];
            let n = h.len().min(buf.len());
            buf[..n].copy_from_slice(&h[..n]);
            n
        } else {
            self.file.read_at(buf, self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the file"))?;
        Ok(self.pos)
    }
}

/// A `tiff` crate error as ours.
fn tiff_error(path: &Path, page: usize, e: tiff::TiffError) -> Error {
    match e {
        tiff::TiffError::IoError(io) if io.kind() != io::ErrorKind::UnexpectedEof => Error::io(path, io),
        tiff::TiffError::UnsupportedError(u) => Error::unsupported(path, FORMAT, format!("page {page}: {u}")),
        other => Error::malformed(path, FORMAT, format!("page {page}: {other}")),
    }
}

/// Decode the (compressed or tiled) page whose IFD is at `ifd_offset` with the `tiff` crate.
fn decode_page(
    tf: &TiffFile,
    ifd: &Ifd,
    page: usize,
    fmt: &PageFormat,
    decoded: &mut DecodingResult,
    out: &mut [f32],
) -> Result<()> {
    if ifd.photometric == 0 {
        // The `tiff` crate inverts WhiteIsZero samples; tifffile (and our own path) does not.
        return Err(tf.unsupported(format!("page {page}: compressed WhiteIsZero pages")));
    }
    let err = |e| tiff_error(&tf.path, page, e);
    let mut dec = Decoder::new(PageReader::new(tf, ifd.offset)?).map_err(err)?.with_limits(Limits::unlimited());
    let (w, h) = dec.dimensions().map_err(err)?;
    if (w as usize, h as usize) != (fmt.width, fmt.height) {
        return Err(tf.malformed(format!("page {page}: the tiff decoder sees {h}×{w} pixels, the IFD {fmt}")));
    }
    dec.read_image_to_buffer(decoded).map_err(err)?;
    macro_rules! cast {
        ($v:expr) => {{
            if $v.len() < out.len() {
                return Err(tf.malformed(format!(
                    "page {page} decodes to {} values, expected {}",
                    $v.len(),
                    out.len()
                )));
            }
            out.iter_mut().zip($v.iter()).for_each(|(o, &x)| *o = x as f32);
        }};
    }
    match decoded {
        DecodingResult::U8(v) => cast!(v),
        DecodingResult::U16(v) => cast!(v),
        DecodingResult::U32(v) => cast!(v),
        DecodingResult::U64(v) => cast!(v),
        DecodingResult::I8(v) => cast!(v),
        DecodingResult::I16(v) => cast!(v),
        DecodingResult::I32(v) => cast!(v),
        DecodingResult::I64(v) => cast!(v),
        DecodingResult::F32(v) => cast!(v),
        DecodingResult::F64(v) => cast!(v),
        DecodingResult::F16(_) => {
            return Err(tf.unsupported(format!("page {page}: 16-bit float samples")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Descriptions: tifffile shape and ImageJ
// ---------------------------------------------------------------------------------------------

/// What the first page's ImageDescription says about the series.
#[derive(Debug, Default)]
struct Description {
    /// Pages of the (first) series.
    pages: Option<usize>,
    /// Pages per volume, for volumetric series (a 4-D tifffile shape, even with one page per
    /// volume, or an ImageJ z-stack over time).
    planes: Option<usize>,
    /// Frame rate.
    fr: Option<f64>,
    /// Which convention it follows.
    kind: Option<DescriptionKind>,
}

/// The description conventions this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DescriptionKind {
    /// tifffile's JSON (or old `shape=(…)`) series shape.
    Tifffile,
    /// ImageJ's `key=value` lines.
    ImageJ,
}

impl DescriptionKind {
    fn name(self) -> &'static str {
        match self {
            DescriptionKind::Tifffile => "tifffile shape",
            DescriptionKind::ImageJ => "ImageJ",
        }
    }
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x > 0.0)
}

impl Description {
    fn parse(tf: &TiffFile, text: &str, fmt: &PageFormat) -> Result<Description> {
        let t = text.trim();
        if t.starts_with("ImageJ=") {
            return Self::imagej(tf, t);
        }
        let mut fr = None;
        let shape = if t.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(t).ok().and_then(|v| {
                fr = positive(v.get("fps").and_then(serde_json::Value::as_f64));
                v.get("shape")?.as_array()?.iter().map(serde_json::Value::as_u64).collect::<Option<Vec<u64>>>()
            })
        } else if let Some(rest) = t.strip_prefix("shape=(") {
            // Old tifffile: `shape=(7, 10, 13)`.
            rest.split(')')
                .next()
                .and_then(|s| s.split(',').filter(|p| !p.trim().is_empty()).map(|p| p.trim().parse().ok()).collect())
        } else {
            None
        };
        let mut d = match shape {
            Some(shape) => Self::shape(tf, &shape, fmt)?,
            None => Description::default(),
        };
        d.fr = fr;
        Ok(d)
    }

    /// Interpret tifffile's series shape for pages of `fmt`.
    fn shape(tf: &TiffFile, shape: &[u64], fmt: &PageFormat) -> Result<Description> {
        let page = [fmt.height as u64, fmt.width as u64];
        let n = shape.len();
        let mut s = shape;
        if n < 2 || s[n - 2..] != page {
            if n >= 3 && s[n - 3..n - 1] == page {
                if s[n - 1] != 1 {
                    return Err(tf.unsupported(format!(
                        "series shape {shape:?} has a trailing samples axis of {}; only grayscale movies are read",
                        s[n - 1]
                    )));
                }
                s = &s[..n - 1];
            } else {
                tracing::debug!(path = %tf.path.display(), ?shape, "description shape does not match the pages; ignored");
                return Ok(Description::default());
            }
        }
        let lead = &s[..s.len() - 2];
        let lead: Vec<u64> =
            if lead.len() <= 2 { lead.to_vec() } else { lead.iter().copied().filter(|&x| x != 1).collect() };
        let too_big = || tf.malformed(format!("series shape {shape:?} is too large"));
        let (pages, planes) = match lead[..] {
            [] => (1, None),
            [t] => (t, None),
            [t, n1] => (t.checked_mul(n1).ok_or_else(too_big)?, Some(n1)),
            _ => {
                return Err(tf.unsupported(format!(
                    "{}-D series shape {shape:?}; only T×Y×X and T×Z×Y×X series are read",
                    s.len()
                )));
            }
        };
        let pages = usize::try_from(pages).map_err(|_| too_big())?;
        let planes = planes.map(|p| usize::try_from(p).map_err(|_| too_big())).transpose()?;
        Ok(Description { pages: Some(pages), planes, fr: None, kind: Some(DescriptionKind::Tifffile) })
    }

    /// ImageJ's `key=value` lines.
    fn imagej(tf: &TiffFile, text: &str) -> Result<Description> {
        let (mut images, mut channels, mut slices, mut frames) = (None, 1usize, 1usize, 1usize);
        let (mut finterval, mut fps) = (None, None);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            let v = v.trim();
            match k.trim() {
                "images" => images = v.parse::<usize>().ok(),
                "channels" => channels = v.parse().unwrap_or(1),
                "slices" => slices = v.parse().unwrap_or(1),
                "frames" => frames = v.parse().unwrap_or(1),
                "finterval" => finterval = v.parse::<f64>().ok(),
                "fps" => fps = v.parse::<f64>().ok(),
                _ => {}
            }
        }
        if channels > 1 {
            return Err(tf.unsupported(format!(
                "ImageJ hyperstack with {channels} channels; only single-channel movies are read"
            )));
        }
        let planes = (slices > 1 && frames > 1).then_some(slices);
        if let (Some(n), Some(_)) = (images, planes)
            && slices.checked_mul(frames) != Some(n)
        {
            return Err(tf.malformed(format!("ImageJ description has images={n} but slices={slices} frames={frames}")));
        }
        let fr = positive(finterval).map(|f| 1.0 / f).or(positive(fps));
        Ok(Description { pages: images, planes, fr, kind: Some(DescriptionKind::ImageJ) })
    }
}

// ---------------------------------------------------------------------------------------------
// Page location
// ---------------------------------------------------------------------------------------------

/// Regular layout: page `k ≥ 1` has its IFD at `ifd1 + (k−1)·ifd_stride` and its pixels in the
/// runs of page 1 shifted by `(k−1)·data_stride`.
#[derive(Debug)]
struct Regular {
    runs0: Vec<(u64, u64)>,
    ifd1: u64,
    ifd_stride: u64,
    runs1: Vec<(u64, u64)>,
    data_stride: u64,
    /// One bit per page: prediction checked against the page's IFD.
    checked: Vec<u64>,
}

impl Regular {
    fn ifd_offset(&self, k: usize) -> u64 {
        self.ifd1 + (k as u64 - 1) * self.ifd_stride
    }

    fn shift(&self, k: usize) -> u64 {
        (k as u64 - 1) * self.data_stride
    }

    fn is_checked(&self, k: usize) -> bool {
        self.checked[k / 64] & (1 << (k % 64)) != 0
    }

    fn set_checked(&mut self, k: usize) {
        self.checked[k / 64] |= 1 << (k % 64);
    }

    /// Whether page `k`'s own IFD agrees with the prediction (`ifd`, `runs`: scratch).
    fn verify(&self, tf: &TiffFile, k: usize, n_pages: usize, fmt: &PageFormat, scratch: &mut PageScratch) -> bool {
        let PageScratch { bufs, ifd, runs } = scratch;
        let ok = tf.parse_ifd(self.ifd_offset(k), k, false, bufs, ifd).is_ok()
            && ifd.is_plain()
            && tf.page_format(ifd, k).ok() == Some(*fmt)
            && tf.strip_runs(ifd, fmt, k, runs).is_ok();
        let shift = self.shift(k);
        ok && runs.len() == self.runs1.len()
            && runs.iter().zip(&self.runs1).all(|(a, b)| a.0 == b.0 + shift && a.1 == b.1)
            && (k + 1 == n_pages || ifd.next == self.ifd_offset(k + 1))
    }
}

/// Where each page is.
#[derive(Debug)]
enum Pages {
    /// ImageJ: page `k`'s pixels at `offset + k·page_bytes`.
    Contiguous { offset: u64 },
    /// Regular layout, located arithmetically.
    Regular(Regular),
    /// IFD offset of every page, from walking the chain.
    Chain(Vec<u64>),
}

/// Try ImageJ's contiguous layout for `n` pages.
fn imagej_contiguous(tf: &TiffFile, ifd0: &Ifd, fmt: &PageFormat, n: usize, bufs: &mut IfdBufs) -> Result<Option<u64>> {
    if !ifd0.is_plain() {
        return Ok(None);
    }
    let mut runs = Vec::new();
    tf.strip_runs(ifd0, fmt, 0, &mut runs)?;
    let [(offset, _)] = runs[..] else { return Ok(None) };
    let end = fmt.bytes().checked_mul(n as u64).and_then(|b| b.checked_add(offset));
    let fits = end.is_some_and(|e| e <= tf.len);
    if ifd0.next == 0 {
        if n > 1 && !fits {
            return Err(tf.malformed(format!(
                "ImageJ description says {n} images of {} bytes from byte {offset}, but the file has {} bytes",
                fmt.bytes(),
                tf.len
            )));
        }
        return Ok(Some(offset));
    }
    // Every page has an IFD (ImageJ under 4 GB): take the contiguous layout if page 1 follows page 0.
    let mut ifd1 = Ifd::default();
    let follows = tf.parse_ifd(ifd0.next, 1, false, bufs, &mut ifd1).is_ok()
        && ifd1.is_plain()
        && tf.page_format(&ifd1, 1).ok() == Some(*fmt)
        && tf.strip_runs(&ifd1, fmt, 1, &mut runs).is_ok()
        && runs[..] == [(offset + fmt.bytes(), fmt.bytes())];
    Ok((follows && fits).then_some(offset))
}

/// Try the regular layout for `n ≥ 3` pages.
fn try_regular(tf: &TiffFile, ifd0: &Ifd, fmt: &PageFormat, n: usize, bufs: &mut IfdBufs) -> Result<Option<Regular>> {
    if n < 3 || !ifd0.is_plain() {
        return Ok(None);
    }
    let mut runs0 = Vec::new();
    tf.strip_runs(ifd0, fmt, 0, &mut runs0)?;
    let (mut ifd1, mut ifd2) = (Ifd::default(), Ifd::default());
    let (mut runs1, mut runs2) = (Vec::new(), Vec::new());
    let plain_page = |off: u64, k: usize, ifd: &mut Ifd, runs: &mut Vec<(u64, u64)>, bufs: &mut IfdBufs| {
        off != 0
            && tf.parse_ifd(off, k, false, bufs, ifd).is_ok()
            && ifd.is_plain()
            && tf.page_format(ifd, k).ok() == Some(*fmt)
            && tf.strip_runs(ifd, fmt, k, runs).is_ok()
    };
    if !plain_page(ifd0.next, 1, &mut ifd1, &mut runs1, bufs) || !plain_page(ifd1.next, 2, &mut ifd2, &mut runs2, bufs)
    {
        return Ok(None);
    }
    let (Some(ifd_stride), Some(data_stride)) =
        (ifd2.offset.checked_sub(ifd1.offset), runs2[0].0.checked_sub(runs1[0].0))
    else {
        return Ok(None);
    };
    if ifd_stride == 0
        || data_stride == 0
        || runs1.len() != runs2.len()
        || !runs1.iter().zip(&runs2).all(|(a, b)| a.0 + data_stride == b.0 && a.1 == b.1)
    {
        return Ok(None);
    }
    // The last page must lie inside the file (no arithmetic overflow for any page below it).
    let last = (n - 1) as u64;
    let last_ifd = ifd_stride.checked_mul(last - 1).and_then(|d| d.checked_add(ifd1.offset));
    let last_data = runs1
        .iter()
        .map(|r| r.0 + r.1)
        .max()
        .and_then(|end| data_stride.checked_mul(last - 1).and_then(|d| d.checked_add(end)));
    if last_ifd.is_none_or(|o| o >= tf.len) || last_data.is_none_or(|e| e > tf.len) {
        return Ok(None);
    }
    let mut reg =
        Regular { runs0, ifd1: ifd1.offset, ifd_stride, runs1, data_stride, checked: vec![0; n.div_ceil(64)] };
    let mut scratch = PageScratch::default();
    if !reg.verify(tf, n - 1, n, fmt, &mut scratch) {
        return Ok(None);
    }
    for k in [0, 1, 2, n - 1] {
        reg.set_checked(k);
    }
    Ok(Some(reg))
}

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

/// Streaming reader of a TIFF / BigTIFF movie (see the [module docs](self)).
///
/// Opening reads the header, the first IFD or few and, unless the file states its page count and
/// has a regular layout, each IFD's entry count and next pointer; reading a frame reads its
/// page(s) only.
#[derive(Debug)]
pub struct TiffSource {
    info: SourceInfo,
    tf: TiffFile,
    fmt: PageFormat,
    pages_per_frame: usize,
    n_pages: usize,
    pages: Pages,
    page: PageScratch,
    scratch: Vec<u8>,
    decoded: DecodingResult,
}

impl TiffSource {
    /// Open `path`. `planes = Some(n1)` reads the file as volumes of `n1` consecutive pages
    /// (CaImAn's `is3D`); otherwise the file's description decides (tifffile 4-D shape or ImageJ
    /// hyperstack), and pages are frames by default.
    pub fn open(path: &Path, planes: Option<usize>) -> Result<TiffSource> {
        let file = File::open(path).at(path)?;
        let md = file.metadata().at(path)?;
        if md.is_dir() {
            return Err(Error::IsDirectory { path: path.to_path_buf() });
        }
        let len = md.len();
        let hdr = read_header(&file, path, len)?;
        let tf = TiffFile { path: path.to_path_buf(), file, len, hdr };
        if hdr.first_ifd == 0 {
            return Err(Error::Empty { path: path.to_path_buf() });
        }
        let mut bufs = IfdBufs::default();
        let mut ifd0 = Ifd::default();
        tf.parse_ifd(hdr.first_ifd, 0, true, &mut bufs, &mut ifd0)?;
        let fmt = tf.page_format(&ifd0, 0)?;
        let desc = match &ifd0.description {
            Some(text) => Description::parse(&tf, text, &fmt)?,
            None => Description::default(),
        };
        let pages_per_frame = match (planes, desc.planes) {
            (Some(0), _) => {
                return Err(Error::invalid(path, "planes per volume must be at least 1"));
            }
            (Some(p), Some(q)) if p != q => {
                return Err(Error::invalid(
                    path,
                    format!("{p} planes per volume requested, but the file describes volumes of {q} pages"),
                ));
            }
            (Some(p), _) => p,
            (None, q) => q.unwrap_or(1),
        };

        let (n_pages, pages, layout) = match desc.pages {
            Some(0) => return Err(Error::Empty { path: path.to_path_buf() }),
            Some(n) if n as u64 > len => {
                return Err(tf.malformed(format!("description claims {n} pages in a file of {len} bytes")));
            }
            Some(n) => {
                let contiguous = if desc.kind == Some(DescriptionKind::ImageJ) {
                    imagej_contiguous(&tf, &ifd0, &fmt, n, &mut bufs)?
                } else {
                    None
                };
                if let Some(offset) = contiguous {
                    (n, Pages::Contiguous { offset }, "ImageJ contiguous")
                } else if let Some(reg) = try_regular(&tf, &ifd0, &fmt, n, &mut bufs)? {
                    (n, Pages::Regular(reg), "1 IFD/page, regular layout")
                } else {
                    let ifds = tf.walk(Some(n))?;
                    if ifds.len() < n {
                        return Err(
                            tf.malformed(format!("description says {n} pages but the IFD chain has {}", ifds.len()))
                        );
                    }
                    (n, Pages::Chain(ifds), "1 IFD/page")
                }
            }
            None => {
                let ifds = tf.walk(None)?;
                (ifds.len(), Pages::Chain(ifds), "1 IFD/page")
            }
        };
        if !n_pages.is_multiple_of(pages_per_frame) {
            let msg = format!("{n_pages} pages do not make whole volumes of {pages_per_frame} pages");
            return Err(if planes.is_some() { Error::invalid(path, msg) } else { tf.malformed(msg) });
        }
        let dims = if pages_per_frame > 1 || desc.planes.is_some() {
            Dims::volume(pages_per_frame, fmt.height, fmt.width)
        } else {
            Dims::planar(fmt.height, fmt.width)
        };
        if dims.d1.checked_mul(dims.d2).and_then(|p| p.checked_mul(dims.d3)).is_none() {
            return Err(tf.malformed(format!("frames of {dims} pixels are too large")));
        }

        let mut detail = vec![if hdr.big { "BigTIFF" } else { "TIFF" }.to_string()];
        if !hdr.le {
            detail.push("big-endian".into());
        }
        detail.push(compression_name(ifd0.compression));
        if ifd0.tiled {
            detail.push("tiled".into());
        }
        detail.push(layout.into());
        if let Some(kind) = desc.kind.filter(|_| !matches!(pages, Pages::Contiguous { .. })) {
            detail.push(kind.name().into());
        }
        if dims.is_volume() {
            detail.push(format!("volumes of {pages_per_frame} pages"));
        }
        let info = SourceInfo {
            path: path.to_path_buf(),
            format: Format::Tiff,
            shape: Shape::new(n_pages / pages_per_frame, dims),
            dtype: fmt.dtype,
            file_bytes: len,
            fr: desc.fr,
            detail: detail.join(", "),
        };
        tracing::debug!(path = %path.display(), shape = %info.shape, detail = %info.detail, "opened TIFF");
        Ok(TiffSource {
            info,
            tf,
            fmt,
            pages_per_frame,
            n_pages,
            pages,
            page: PageScratch { bufs, ifd: ifd0, runs: Vec::new() },
            scratch: Vec::new(),
            decoded: DecodingResult::U8(Vec::new()),
        })
    }

    /// Read page `k` (a whole image) into `out`.
    fn read_page(&mut self, k: usize, out: &mut [f32]) -> Result<()> {
        if let Pages::Regular(reg) = &mut self.pages {
            if k == 0 {
                return read_runs(&self.tf, &reg.runs0, 0, self.fmt.dtype, &mut self.scratch, out);
            }
            let ok = reg.is_checked(k) || reg.verify(&self.tf, k, self.n_pages, &self.fmt, &mut self.page);
            if ok {
                reg.set_checked(k);
                return read_runs(&self.tf, &reg.runs1, reg.shift(k), self.fmt.dtype, &mut self.scratch, out);
            }
            tracing::warn!(path = %self.tf.path.display(), page = k, "TIFF layout is not regular after all; walking the IFD chain");
            let ifds = self.tf.walk(Some(self.n_pages))?;
            if ifds.len() < self.n_pages {
                return Err(self.tf.malformed(format!(
                    "description says {} pages but the IFD chain has {}",
                    self.n_pages,
                    ifds.len()
                )));
            }
            self.pages = Pages::Chain(ifds);
        }
        match &self.pages {
            Pages::Contiguous { offset } => {
                let at = offset + k as u64 * self.fmt.bytes();
                read_values(&self.tf, at, self.fmt.dtype, &mut self.scratch, out)
            }
            Pages::Chain(ifds) => {
                let PageScratch { bufs, ifd, runs } = &mut self.page;
                self.tf.parse_ifd(ifds[k], k, false, bufs, ifd)?;
                let fmt = self.tf.page_format(ifd, k)?;
                if fmt != self.fmt {
                    return Err(self.tf.malformed(format!("page {k} is {fmt} but page 0 is {}", self.fmt)));
                }
                if ifd.is_plain() {
                    self.tf.strip_runs(ifd, &fmt, k, runs)?;
                    read_runs(&self.tf, runs, 0, fmt.dtype, &mut self.scratch, out)
                } else {
                    decode_page(&self.tf, ifd, k, &fmt, &mut self.decoded, out)
                }
            }
            Pages::Regular(_) => {
                unreachable!("a regular layout reads the page above or is replaced by the chain")
            }
        }
    }
}

impl FrameSource for TiffSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        check_request(&self.info, start, 1, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let first = start * self.pages_per_frame;
        if let Pages::Contiguous { offset } = self.pages {
            let at = offset + first as u64 * self.fmt.bytes();
            return read_values(&self.tf, at, self.fmt.dtype, &mut self.scratch, buf);
        }
        for (i, page) in buf.chunks_exact_mut(self.fmt.pixels()).enumerate() {
            self.read_page(first + i, page)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// Classic files larger than this become BigTIFF when [`WriteOptions::bigtiff`] is `None`
/// (tifffile's threshold, 4 GiB − 32 MiB).
const BIGTIFF_THRESHOLD: u64 = (1 << 32) - (1 << 25);

/// Byte layout of the file being written: header, IFD 0, description, pixels of every page,
/// IFDs 1.. (all computed up front, so nothing is patched afterwards).
#[derive(Debug, Clone)]
struct WritePlan {
    big: bool,
    width: u32,
    height: u32,
    sample: TiffSample,
    pages: u64,
    page_bytes: u64,
    desc_offset: u64,
    desc_len: u64,
    data_start: u64,
    /// Offset of IFD 1.
    tail: u64,
    /// Bytes of IFDs 1.. (IFD 0 also holds the description tag).
    ifd_len: u64,
}

/// Tags written in IFD 0 (which also holds the description).
const TAGS_PAGE0: u64 = 13;
/// Tags written in the IFDs of the other pages.
const TAGS_OTHER: u64 = 12;

impl WritePlan {
    fn new(path: &Path, shape: Shape, opts: &WriteOptions, description: &str) -> Result<WritePlan> {
        let d = shape.dims;
        let (pages_per_frame, height, width) = if d.d3 > 1 { (d.d1, d.d2, d.d3) } else { (1, d.d1, d.d2) };
        let too_big = || Error::invalid(path, format!("a {shape} movie is too large for a TIFF file"));
        let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
            return Err(too_big());
        };
        let sample_bytes: u64 = match opts.tiff_sample {
            TiffSample::F32 => 4,
            TiffSample::U16 => 2,
        };
        let pages = (shape.frames as u64).checked_mul(pages_per_frame as u64).ok_or_else(too_big)?;
        let page_bytes =
            u64::from(w).checked_mul(u64::from(h)).and_then(|p| p.checked_mul(sample_bytes)).ok_or_else(too_big)?;
        let plan = |big: bool| -> Option<(WritePlan, u64)> {
            let header = if big { 16 } else { 8 };
            let ifd_size = |n: u64| if big { 16 + 20 * n } else { 6 + 12 * n };
            let desc_offset = header + ifd_size(TAGS_PAGE0);
            let desc_len = description.len() as u64 + 1;
            let data_start = (desc_offset + desc_len).next_multiple_of(16);
            let tail = pages.checked_mul(page_bytes)?.checked_add(data_start)?.next_multiple_of(16);
            let ifd_len = ifd_size(TAGS_OTHER);
            let total = (pages - 1).checked_mul(ifd_len)?.checked_add(tail)?;
            let p = WritePlan {
                big,
                width: w,
                height: h,
                sample: opts.tiff_sample,
                pages,
                page_bytes,
                desc_offset,
                desc_len,
                data_start,
                tail,
                ifd_len,
            };
            Some((p, total))
        };
        let (classic, total) = plan(false).ok_or_else(too_big)?;
        let big = match opts.bigtiff {
            Some(big) => big,
            None => total > BIGTIFF_THRESHOLD,
        };
        if !big {
            if total > u64::from(u32::MAX) {
                return Err(Error::invalid(
                    path,
                    format!("{total} bytes do not fit a classic TIFF file; write BigTIFF instead"),
                ));
            }
            return Ok(classic);
        }
        plan(true).map(|(p, _)| p).ok_or_else(too_big)
    }

    fn ifd_offset(&self, page: u64) -> u64 {
        if page == 0 { if self.big { 16 } else { 8 } } else { self.tail + (page - 1) * self.ifd_len }
    }

    /// The file header.
    fn header(&self) -> Vec<u8> {
        let mut b = b"II".to_vec();
        if self.big {
            b.extend_from_slice(&43u16.to_le_bytes());
            b.extend_from_slice(&8u16.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&self.ifd_offset(0).to_le_bytes());
        } else {
            b.extend_from_slice(&42u16.to_le_bytes());
            b.extend_from_slice(&(self.ifd_offset(0) as u32).to_le_bytes());
        }
        b
    }

    /// The IFD of `page` into `buf` (cleared first).
    fn ifd(&self, page: u64, buf: &mut Vec<u8>) {
        let big = self.big;
        let entry = |buf: &mut Vec<u8>, tag: u16, typ: u16, count: u64, value: u64| {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&typ.to_le_bytes());
            let field_len = if big {
                buf.extend_from_slice(&count.to_le_bytes());
                8
            } else {
                buf.extend_from_slice(&(count as u32).to_le_bytes());
                4
            };
            let mut field = [0u8; 8];
            match typ {
                ty::SHORT => field[..2].copy_from_slice(&(value as u16).to_le_bytes()),
                ty::LONG => field[..4].copy_from_slice(&(value as u32).to_le_bytes()),
                _ if big => field.copy_from_slice(&value.to_le_bytes()),
                _ => field[..4].copy_from_slice(&(value as u32).to_le_bytes()),
            }
            buf.extend_from_slice(&field[..field_len]);
        };
        let offset_type = if big { ty::LONG8 } else { ty::LONG };
        let (bits, format) = match self.sample {
            TiffSample::F32 => (32, 3),
            TiffSample::U16 => (16, 1),
        };
        let n = if page == 0 { TAGS_PAGE0 } else { TAGS_OTHER };
        buf.clear();
        if big {
            buf.extend_from_slice(&n.to_le_bytes());
        } else {
            buf.extend_from_slice(&(n as u16).to_le_bytes());
        }
        entry(buf, tag::NEW_SUBFILE_TYPE, ty::LONG, 1, 0); // a full-resolution page
        entry(buf, tag::IMAGE_WIDTH, ty::LONG, 1, u64::from(self.width));
        entry(buf, tag::IMAGE_LENGTH, ty::LONG, 1, u64::from(self.height));
        entry(buf, tag::BITS_PER_SAMPLE, ty::SHORT, 1, bits);
        entry(buf, tag::COMPRESSION, ty::SHORT, 1, 1);
        entry(buf, tag::PHOTOMETRIC, ty::SHORT, 1, 1); // BlackIsZero
        if page == 0 {
            entry(buf, tag::IMAGE_DESCRIPTION, ty::ASCII, self.desc_len, self.desc_offset);
        }
        entry(buf, tag::STRIP_OFFSETS, offset_type, 1, self.data_start + page * self.page_bytes);
        entry(buf, tag::SAMPLES_PER_PIXEL, ty::SHORT, 1, 1);
        entry(buf, tag::ROWS_PER_STRIP, ty::LONG, 1, u64::from(self.height));
        entry(buf, tag::STRIP_BYTE_COUNTS, offset_type, 1, self.page_bytes);
        entry(buf, tag::PLANAR_CONFIGURATION, ty::SHORT, 1, 1);
        entry(buf, tag::SAMPLE_FORMAT, ty::SHORT, 1, format);
        let next = if page + 1 < self.pages { self.ifd_offset(page + 1) } else { 0 };
        if big {
            buf.extend_from_slice(&next.to_le_bytes());
        } else {
            buf.extend_from_slice(&(next as u32).to_le_bytes());
        }
        debug_assert_eq!(
            buf.len() as u64,
            if page == 0 { self.desc_offset - self.ifd_offset(0) } else { self.ifd_len }
        );
    }

    /// Header, IFD 0, description and padding: everything before the pixels.
    fn head(&self, description: &str) -> Vec<u8> {
        let mut b = self.header();
        let mut ifd = Vec::new();
        self.ifd(0, &mut ifd);
        b.extend_from_slice(&ifd);
        debug_assert_eq!(b.len() as u64, self.desc_offset);
        b.extend_from_slice(description.as_bytes());
        b.push(0);
        b.resize(self.data_start as usize, 0);
        b
    }
}

/// tifffile's shape description, plus the frame rate.
fn shape_description(shape: Shape, fr: f64) -> String {
    let d = shape.dims;
    let dims = if d.d3 > 1 {
        format!("{}, {}, {}, {}", shape.frames, d.d1, d.d2, d.d3)
    } else {
        format!("{}, {}, {}", shape.frames, d.d1, d.d2)
    };
    if fr.is_finite() && fr > 0.0 {
        format!("{{\"shape\": [{dims}], \"fps\": {fr:?}}}")
    } else {
        format!("{{\"shape\": [{dims}]}}")
    }
}

/// `v` rounded half to even (as numpy) and clamped to `0..=65535`; NaN gives 0.
#[inline]
fn to_u16(v: f32) -> u16 {
    // Adding and subtracting 2^23 rounds any value in 0..2^23 to an integer, ties to even, in
    // the default rounding mode: the same result as `round_ties_even`, without a libm call on
    // targets lacking a rounding instruction.
    const MAGIC: f32 = 8_388_608.0;
    ((v.clamp(0.0, 65535.0) + MAGIC) - MAGIC) as u16
}

/// Streaming writer of an uncompressed TIFF / BigTIFF movie (see the [module docs](self)).
///
/// Frames are converted and appended as they come; the IFDs of pages after the first are written
/// by [`MovieWriter::finish`], which then renames the temporary file into place. A writer dropped
/// before `finish` leaves no file behind.
#[derive(Debug)]
pub struct TiffWriter {
    file: AtomicFile,
    out: BufWriter<File>,
    count: FrameCounter,
    plan: WritePlan,
    scratch: Vec<u8>,
    /// An earlier write failed: the file is incomplete and must not be committed.
    broken: bool,
}

impl TiffWriter {
    /// Create the (temporary) file for a movie of `shape` and write everything before the pixels.
    ///
    /// Uses `opts.tiff_sample`, `opts.bigtiff` and `opts.fr` (stored as `"fps"` in the
    /// description).
    pub fn create(path: &Path, shape: Shape, opts: &WriteOptions) -> Result<TiffWriter> {
        if shape.frames == 0 {
            return Err(Error::Empty { path: path.to_path_buf() });
        }
        if shape.dims.pixels() == 0 {
            return Err(Error::invalid(path, format!("cannot write frames of size {}", shape.dims)));
        }
        if path.is_dir() {
            return Err(Error::IsDirectory { path: path.to_path_buf() });
        }
        let description = shape_description(shape, opts.fr);
        let plan = WritePlan::new(path, shape, opts, &description)?;
        let file = AtomicFile::new(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file.create_file()?);
        out.write_all(&plan.head(&description)).at(file.tmp_path())?;
        Ok(TiffWriter { file, out, count: FrameCounter::new(shape), plan, scratch: Vec::new(), broken: false })
    }

    fn write_values(&mut self, frames: &[f32]) -> io::Result<()> {
        for chunk in frames.chunks(CHUNK_VALUES / 4) {
            self.scratch.clear();
            match self.plan.sample {
                TiffSample::F32 => self.scratch.extend(chunk.iter().flat_map(|v| v.to_le_bytes())),
                TiffSample::U16 => self.scratch.extend(chunk.iter().flat_map(|&v| to_u16(v).to_le_bytes())),
            }
            self.out.write_all(&self.scratch)?;
        }
        Ok(())
    }
}

impl MovieWriter for TiffWriter {
    fn shape(&self) -> Shape {
        self.count.shape
    }

    fn write_frames(&mut self, frames: &[f32]) -> Result<()> {
        if self.broken {
            return Err(Error::invalid(self.file.dest(), "an earlier write to this file failed"));
        }
        self.count.take(self.file.dest(), frames.len())?;
        let r = self.write_values(frames).at(self.file.tmp_path());
        self.broken = r.is_err();
        r
    }

    fn finish(self: Box<Self>) -> Result<PathBuf> {
        let TiffWriter { file, mut out, count, plan, mut scratch, broken } = *self;
        if broken {
            return Err(Error::invalid(file.dest(), "an earlier write to this file failed"));
        }
        count.check_complete(file.dest())?;
        if plan.pages > 1 {
            let pad = plan.tail - (plan.data_start + plan.pages * plan.page_bytes);
            out.write_all(&vec![0; pad as usize]).at(file.tmp_path())?;
        }
        for page in 1..plan.pages {
            plan.ifd(page, &mut scratch);
            out.write_all(&scratch).at(file.tmp_path())?;
        }
        let f = out.into_inner().map_err(|e| Error::io(file.tmp_path(), e.into_error()))?;
        f.sync_data().at(file.tmp_path())?;
        drop(f);
        file.commit()
    }
}
