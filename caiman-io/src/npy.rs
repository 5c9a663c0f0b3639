//! NumPy `.npy` (format versions 1–3) and `.npz` archives, read and write.
//!
//! Movies: a C-order `T×d1×d2` (or `T×d1×d2×d3`) array is a movie; a Fortran-order one too
//! (read through its strides); a 2-D `d × T` array is CaImAn's `Yr` when a frame size is given
//! ([`crate::OpenOptions::npy_dims`]) and a single frame otherwise (CaImAn's rule). `.npz` movies
//! are CaImAn's `timeseries.save` archives: the movie is the member `input_arr`, `fr` and
//! `start_time` are scalar members. Uncompressed members are memory-mapped in place; deflated ones
//! are inflated into memory.
//!
//! Also a small general array API ([`NpyArray`], [`read_npy`], [`write_npy`], [`read_npz`],
//! [`write_npz`]) for ground truth and test fixtures. Object (pickled) arrays are refused: numpy
//! itself needs `allow_pickle=True` for them.

use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::movie::{DType, Dims, Shape};
use crate::raw::{Bytes, Layout, RawMovie, map_file};
use crate::source::{Format, FrameSource, SourceInfo, check_request};
use crate::write::{AtomicFile, FrameCounter, MovieWriter, WriteOptions};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element type of an `.npy` array as far as this module understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    /// A numeric type.
    Num(DType),
    /// `?`/`b1` booleans.
    Bool,
    /// Fixed-width UTF-32 strings `<Un`.
    Unicode(usize),
    /// Fixed-width byte strings `|Sn`.
    Bytes(usize),
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyDType,
    /// Whether values are little-endian.
    pub little_endian: bool,
    /// Column-major storage.
    pub fortran_order: bool,
    /// Array shape.
    pub shape: Vec<usize>,
    /// Offset of the first value from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Bytes per element.
    pub fn item_size(&self) -> usize {
        match self.dtype {
            NpyDType::Num(d) => d.size(),
            NpyDType::Bool => 1,
            NpyDType::Unicode(n) => 4 * n,
            NpyDType::Bytes(n) => n,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_descr(path: &Path, d: &str) -> Result<(NpyDType, bool)> {
    let bad = || Error::malformed(path, "NPY", format!("unknown dtype descriptor {d:?}"));
    if d.len() < 2 {
        return Err(bad());
    }
    let (endian, code) = d.split_at(1);
    let little = match endian {
        "<" | "|" | "=" => true,
        ">" => false,
        _ => return Err(bad()),
    };
    let (kind, size) = code.split_at(1);
    if kind == "O" {
        return Err(Error::unsupported(
            path,
            "NPY",
            "object (pickled) arrays are not read; numpy needs allow_pickle for them",
        ));
    }
    let size: usize = size.parse().map_err(|_| bad())?;
    let dt = match (kind, size) {
        ("f", 4) => NpyDType::Num(DType::F32),
        ("f", 8) => NpyDType::Num(DType::F64),
        ("i", 1) => NpyDType::Num(DType::I8),
        ("i", 2) => NpyDType::Num(DType::I16),
        ("i", 4) => NpyDType::Num(DType::I32),
        ("i", 8) => NpyDType::Num(DType::I64),
        ("u", 1) => NpyDType::Num(DType::U8),
        ("u", 2) => NpyDType::Num(DType::U16),
        ("u", 4) => NpyDType::Num(DType::U32),
        ("u", 8) => NpyDType::Num(DType::U64),
        ("b", 1) => NpyDType::Bool,
        ("U", n) => NpyDType::Unicode(n),
        ("S", n) => NpyDType::Bytes(n),
        _ => return Err(Error::unsupported(path, "NPY", format!("dtype {d:?}"))),
    };
    Ok((dt, little))
}

/// Parse the header at the start of `bytes` (which must hold at least the whole header).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let mal = |m: &str| Error::malformed(path, "NPY", m.to_string());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(mal("missing \\x93NUMPY magic (not an .npy file)"));
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(mal("truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(Error::unsupported(path, "NPY", format!("format version {v}"))),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| mal("truncated header"))?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| mal("header is not text"))?;
    let descr = dict_value(text, "descr").ok_or_else(|| mal("header lacks 'descr'"))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let (dtype, little_endian) = parse_descr(path, descr)?;
    let fortran = dict_value(text, "fortran_order").ok_or_else(|| mal("header lacks 'fortran_order'"))?;
    let fortran_order = match fortran.trim() {
        "True" => true,
        "False" => false,
        other => return Err(mal(&format!("bad fortran_order {other:?}"))),
    };
    let shape_txt = dict_value(text, "shape").ok_or_else(|| mal("header lacks 'shape'"))?;
    let inner = shape_txt.trim().strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| mal("bad shape"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let n: usize = part.trim_end_matches('L').parse().map_err(|_| mal(&format!("bad shape entry {part:?}")))?;
        shape.push(n);
    }
    shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(|| mal("shape overflows"))?;
    Ok(NpyHeader { dtype, little_endian, fortran_order, shape, data_offset: end })
}

/// The text of the value of `key` in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let at = text.find(&pat1).map(|i| i + pat1.len()).or_else(|| text.find(&pat2).map(|i| i + pat2.len()))?;
    let rest = text[at..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn header_bytes(descr: &str, fortran: bool, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_txt}, }}",
        if fortran { "True" } else { "False" }
    );
    // Version 1 unless the header needs more than 65535 bytes; total length a multiple of 64.
    let (version, prefix) = if dict.len() + 11 < 65536 { (1u8, 10) } else { (2u8, 12) };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Values of a general array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8`.
    F64(Vec<f64>),
    /// `<i4`.
    I32(Vec<i32>),
    /// `<i8`.
    I64(Vec<i64>),
    /// `|u1`.
    U8(Vec<u8>),
    /// `|b1`.
    Bool(Vec<bool>),
    /// `<Un` strings.
    Str(Vec<String>),
}

/// A general n-dimensional array in C order, as read from or written to `.npy`/`.npz`.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: NpyData,
}

macro_rules! ctor {
    ($name:ident, $t:ty, $v:ident) => {
        /// An array of this element type.
        ///
        /// # Panics
        /// If `data.len()` is not the product of `shape`.
        #[track_caller]
        pub fn $name(shape: impl Into<Vec<usize>>, data: Vec<$t>) -> Self {
            let shape = shape.into();
            assert_eq!(shape.iter().product::<usize>(), data.len(), "data length does not match shape");
            NpyArray { shape, data: NpyData::$v(data) }
        }
    };
}

impl NpyArray {
    ctor!(f32, f32, F32);
    ctor!(f64, f64, F64);
    ctor!(i32, i32, I32);
    ctor!(i64, i64, I64);
    ctor!(u8, u8, U8);
    ctor!(bool, bool, Bool);
    ctor!(strings, String, Str);

    /// Values converted to f64 (numbers and booleans; `None` for strings).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match &self.data {
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
            NpyData::Str(_) => return None,
        })
    }

    /// Values converted to f32.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.data {
            NpyData::F32(v) => Some(v.clone()),
            _ => self.to_f64().map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (descr, body): (String, Vec<u8>) = match &self.data {
            NpyData::F32(v) => ("<f4".into(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::F64(v) => ("<f8".into(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::I32(v) => ("<i4".into(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::I64(v) => ("<i8".into(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::U8(v) => ("|u1".into(), v.clone()),
            NpyData::Bool(v) => ("|b1".into(), v.iter().map(|&b| b as u8).collect()),
            NpyData::Str(v) => {
                let w = v.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(1);
                let mut body = Vec::with_capacity(v.len() * w * 4);
                for s in v {
                    let mut n = 0;
                    for ch in s.chars() {
                        body.extend_from_slice(&(ch as u32).to_le_bytes());
                        n += 1;
                    }
                    body.resize(body.len() + (w - n) * 4, 0);
                }
                (format!("<U{w}"), body)
            }
        };
        let mut out = header_bytes(&descr, false, &self.shape);
        out.extend_from_slice(&body);
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
        let h = parse_header(path, bytes)?;
        let n = h.len();
        let need = n.checked_mul(h.item_size()).and_then(|b| b.checked_add(h.data_offset));
        if need != Some(bytes.len()) {
            return Err(Error::malformed(
                path,
                "NPY",
                format!(
                    "header promises shape {:?} ({} bytes of data) but {} bytes follow",
                    h.shape,
                    n * h.item_size(),
                    bytes.len().saturating_sub(h.data_offset)
                ),
            ));
        }
        let raw = &bytes[h.data_offset..];
        let data = match h.dtype {
            NpyDType::Num(DType::F64) => {
                NpyData::F64(num::<8, f64>(raw, h.little_endian, f64::from_le_bytes, f64::from_be_bytes))
            }
            NpyDType::Num(DType::I64) => {
                NpyData::I64(num::<8, i64>(raw, h.little_endian, i64::from_le_bytes, i64::from_be_bytes))
            }
            NpyDType::Num(DType::I32) => {
                NpyData::I32(num::<4, i32>(raw, h.little_endian, i32::from_le_bytes, i32::from_be_bytes))
            }
            NpyDType::Num(DType::U8) => NpyData::U8(raw.to_vec()),
            NpyDType::Num(dt @ (DType::U64 | DType::U32)) => {
                let mut v = vec![0f64; n];
                for (o, c) in v.iter_mut().zip(raw.chunks_exact(dt.size())) {
                    *o = match (dt, h.little_endian) {
                        (DType::U64, true) => u64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
                        (DType::U64, false) => u64::from_be_bytes(c.try_into().expect("8 bytes")) as f64,
                        (_, true) => u32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
                        (_, false) => u32::from_be_bytes(c.try_into().expect("4 bytes")) as f64,
                    };
                }
                NpyData::F64(v)
            }
            NpyDType::Num(dt) => {
                let mut v = vec![0f32; n];
                crate::movie::decode_into_f32(dt, h.little_endian, raw, &mut v);
                NpyData::F32(v)
            }
            NpyDType::Bool => NpyData::Bool(raw.iter().map(|&b| b != 0).collect()),
            NpyDType::Unicode(w) => {
                let mut v = Vec::with_capacity(n);
                for item in raw.chunks_exact(4 * w.max(1)).take(n) {
                    let s: String = item
                        .chunks_exact(4)
                        .map(|c| {
                            let b = [c[0], c[1], c[2], c[3]];
                            if h.little_endian { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
                        })
                        .take_while(|&u| u != 0)
                        .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                        .collect();
                    v.push(s);
                }
                if w == 0 {
                    v.resize(n, String::new());
                }
                NpyData::Str(v)
            }
            NpyDType::Bytes(w) => {
                let v = if w == 0 {
                    vec![String::new(); n]
                } else {
                    raw.chunks_exact(w)
                        .map(|c| {
                            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                            String::from_utf8_lossy(&c[..end]).into_owned()
                        })
                        .collect()
                };
                NpyData::Str(v)
            }
        };
        let shape = if h.fortran_order && h.shape.len() > 1 {
            // Return C order: transpose the column-major values.
            return Ok(fortran_to_c(NpyArray { shape: h.shape.clone(), data }));
        } else {
            h.shape
        };
        Ok(NpyArray { shape, data })
    }
}

fn num<const N: usize, T>(raw: &[u8], le: bool, from_le: fn([u8; N]) -> T, from_be: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let b: [u8; N] = c.try_into().expect("chunk of N bytes");
            if le { from_le(b) } else { from_be(b) }
        })
        .collect()
}

/// Permute column-major values into row-major order.
fn fortran_to_c(a: NpyArray) -> NpyArray {
    let shape = a.shape.clone();
    let n: usize = shape.iter().product();
    // index map: C position -> F position
    let nd = shape.len();
    let mut fstrides = vec![1usize; nd];
    for k in 1..nd {
        fstrides[k] = fstrides[k - 1] * shape[k - 1];
    }
    let mut map = Vec::with_capacity(n);
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        map.push(idx.iter().zip(&fstrides).map(|(i, s)| i * s).sum::<usize>());
        for k in (0..nd).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    fn perm<T: Clone>(v: &[T], map: &[usize]) -> Vec<T> {
        map.iter().map(|&m| v[m].clone()).collect()
    }
    let data = match &a.data {
        NpyData::F32(v) => NpyData::F32(perm(v, &map)),
        NpyData::F64(v) => NpyData::F64(perm(v, &map)),
        NpyData::I32(v) => NpyData::I32(perm(v, &map)),
        NpyData::I64(v) => NpyData::I64(perm(v, &map)),
        NpyData::U8(v) => NpyData::U8(perm(v, &map)),
        NpyData::Bool(v) => NpyData::Bool(perm(v, &map)),
        NpyData::Str(v) => NpyData::Str(perm(v, &map)),
    };
    NpyArray { shape, data }
}

/// Read a whole `.npy` file (any supported dtype), values returned in C order.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).at(path)?;
    NpyArray::decode(path, &bytes)
}

/// Write an array as `.npy` (version 1, little-endian, C order), atomically.
pub fn write_npy(path: impl AsRef<Path>, array: &NpyArray) -> Result<()> {
    let path = path.as_ref();
    let af = AtomicFile::new(path)?;
    let mut f = af.create_file()?;
    f.write_all(&array.encode()).at(af.tmp_path())?;
    f.sync_data().at(af.tmp_path())?;
    drop(f);
    af.commit()?;
    Ok(())
}

/// Read every member of an `.npz` archive (names without the `.npy` suffix), in archive order.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, NpyArray)>> {
    let path = path.as_ref();
    let f = std::fs::File::open(path).at(path)?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::malformed(path, "NPZ", e.to_string()))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| Error::malformed(path, "NPZ", e.to_string()))?;
        let name = member
            .name()
            .map_err(|e| Error::malformed(path, "NPZ", e.to_string()))?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut bytes).map_err(|e| Error::malformed(path, "NPZ", format!("member {name}: {e}")))?;
        let member_path = path.join(&name);
        let arr = NpyArray::decode(&member_path, &bytes)
            .map_err(|e| Error::malformed(path, "NPZ", format!("member {name}: {e}")))?;
        out.push((name, arr));
    }
    Ok(out)
}

/// Write arrays into an uncompressed `.npz` archive (as `np.savez`), atomically.
pub fn write_npz(path: impl AsRef<Path>, entries: &[(&str, NpyArray)]) -> Result<()> {
    let path = path.as_ref();
    let af = AtomicFile::new(path)?;
    let f = af.create_file()?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(f));
    let opts = zip_options();
    for (name, arr) in entries {
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| zip_err(af.tmp_path(), e))?;
        zip.write_all(&arr.encode()).at(af.tmp_path())?;
    }
    let w = zip.finish().map_err(|e| zip_err(af.tmp_path(), e))?;
    w.into_inner().map_err(|e| Error::io(af.tmp_path(), e.into_error()))?.sync_data().at(af.tmp_path())?;
    af.commit()?;
    Ok(())
}

fn zip_options() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true)
}

fn zip_err(path: &Path, e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => Error::io(path, io),
        other => Error::malformed(path, "NPZ", other.to_string()),
    }
}

fn movie_layout(path: &Path, h: &NpyHeader, dims_hint: Option<Dims>) -> Result<(Shape, Layout)> {
    let s = &h.shape;
    let (shape, layout) = match (s.len(), dims_hint) {
        (2, Some(dims)) => {
            if s[0] != dims.pixels() {
                return Err(Error::invalid(
                    path,
                    format!(
                        "2-D array {}×{} is not d×T for the given frame size {dims} ({} pixels)",
                        s[0],
                        s[1],
                        dims.pixels()
                    ),
                ));
            }
            let layout = if h.fortran_order { Layout::FramesF } else { Layout::PixelMajorF };
            (Shape::new(s[1], dims), layout)
        }
        // A single image, as CaImAn loads a 2-D array without a shape.
        (2, None) => {
            (Shape::new(1, Dims::planar(s[0], s[1])), if h.fortran_order { Layout::FramesF } else { Layout::FramesC })
        }
        (3, _) => (
            Shape::new(s[0], Dims::planar(s[1], s[2])),
            if h.fortran_order { Layout::PixelMajorF } else { Layout::FramesC },
        ),
        (4, _) => (
            Shape::new(s[0], Dims::volume(s[1], s[2], s[3])),
            if h.fortran_order { Layout::PixelMajorF } else { Layout::FramesC },
        ),
        (n, _) => {
            return Err(Error::unsupported(
                path,
                "NPY",
                format!("a {n}-D array is not a movie (expected T×d1×d2, T×d1×d2×d3, or d×T with a frame size)"),
            ));
        }
    };
    Ok((shape, layout))
}

/// Streaming reader of an `.npy` movie (memory-mapped).
#[derive(Debug)]
pub struct NpySource {
    raw: RawMovie,
    info: SourceInfo,
}

impl NpySource {
    /// Open `path`; `dims` is the frame size of a 2-D `d × T` array (CaImAn's `shape=`).
    pub fn open(path: &Path, dims: Option<Dims>) -> Result<Self> {
        let map = map_file(path)?;
        let h = parse_header(path, &map)?;
        let NpyDType::Num(dtype) = h.dtype else {
            return Err(Error::unsupported(path, "NPY", format!("a {:?} array is not a movie", h.dtype)));
        };
        let (shape, layout) = movie_layout(path, &h, dims)?;
        let file_bytes = map.len() as u64;
        let raw = RawMovie::new(path, "NPY", Bytes::Mapped(map), h.data_offset, shape, dtype, h.little_endian, layout)?;
        let info = SourceInfo {
            path: path.to_path_buf(),
            format: Format::Npy,
            shape,
            dtype,
            file_bytes,
            fr: None,
            detail: format!("shape {:?}, {} order", h.shape, if h.fortran_order { "Fortran" } else { "C" }),
        };
        Ok(NpySource { raw, info })
    }
}

impl FrameSource for NpySource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        check_request(&self.info, start, 1, buf.len())?;
        self.raw.read_frames(start, buf);
        Ok(())
    }
}

/// Streaming reader of a CaImAn `.npz` movie (member `input_arr`).
#[derive(Debug)]
pub struct NpzSource {
    raw: RawMovie,
    info: SourceInfo,
}

impl NpzSource {
    /// Open `path`. Stored members are memory-mapped; compressed ones are inflated into memory.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).at(path)?;
        let file_bytes = f.metadata().at(path)?.len();
        let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::malformed(path, "NPZ", e.to_string()))?;
        let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
        let mut scalar = |name: &str| -> Option<f64> {
            let mut m = zip.by_name(name).ok()?;
            let mut b = Vec::new();
            m.read_to_end(&mut b).ok()?;
            NpyArray::decode(path, &b).ok()?.to_f64()?.first().copied()
        };
        let fr = scalar("fr.npy");
        let member = zip.by_name("input_arr.npy").map_err(|_| Error::MissingDataset {
            path: path.to_path_buf(),
            name: "input_arr".into(),
            found: names.join(", "),
        })?;
        let (bytes, base) = if member.compression() == zip::CompressionMethod::Stored {
            let start = member
                .data_start()
                .ok_or_else(|| Error::malformed(path, "NPZ", "member input_arr has no data offset"))?
                as usize;
            let len = member.size() as usize;
            drop(member);
            let map = map_file(path)?;
            if start + len > map.len() {
                return Err(Error::malformed(path, "NPZ", "member input_arr runs past the end of the file"));
            }
            (Bytes::Mapped(map), Some((start, len)))
        } else {
            let mut m = member;
            let mut v = Vec::with_capacity(m.size() as usize);
            m.read_to_end(&mut v).map_err(|e| Error::malformed(path, "NPZ", format!("member input_arr: {e}")))?;
            (Bytes::Owned(v), None)
        };
        let (start, len) = base.unwrap_or((
            0,
            match &bytes {
                Bytes::Owned(v) => v.len(),
                Bytes::Mapped(m) => m.len(),
            },
        ));
        let slice = match &bytes {
            Bytes::Owned(v) => &v[start..start + len],
            Bytes::Mapped(m) => &m[start..start + len],
        };
        let h = parse_header(path, slice)?;
        let NpyDType::Num(dtype) = h.dtype else {
            return Err(Error::unsupported(path, "NPZ", "input_arr is not numeric"));
        };
        let (shape, layout) = movie_layout(path, &h, None)?;
        let bytes = match bytes {
            Bytes::Mapped(m) if start + len != m.len() => {
                // Other members follow input_arr: copy the member out so RawMovie's length check holds.
                Bytes::Owned(m[start..start + len].to_vec())
            }
            b => b,
        };
        let offset = match &bytes {
            Bytes::Owned(_) => h.data_offset,
            Bytes::Mapped(_) => start + h.data_offset,
        };
        let raw = RawMovie::new(path, "NPZ", bytes, offset, shape, dtype, h.little_endian, layout)?;
        let info = SourceInfo {
            path: path.to_path_buf(),
            format: Format::Npz,
            shape,
            dtype,
            file_bytes,
            fr,
            detail: format!("member input_arr, shape {:?}", h.shape),
        };
        Ok(NpzSource { raw, info })
    }
}

impl FrameSource for NpzSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> Result<()> {
        check_request(&self.info, start, 1, buf.len())?;
        self.raw.read_frames(start, buf);
        Ok(())
    }
}

fn shape_vec(shape: Shape) -> Vec<usize> {
    let d = shape.dims;
    if d.d3 == 1 { vec![shape.frames, d.d1, d.d2] } else { vec![shape.frames, d.d1, d.d2, d.d3] }
}

fn write_f32s(w: &mut impl Write, path: &Path, frames: &[f32], scratch: &mut Vec<u8>) -> Result<()> {
    scratch.clear();
    scratch.extend(frames.iter().flat_map(|v| v.to_le_bytes()));
    w.write_all(scratch).at(path)
}

/// Streaming `.npy` writer: `<f4`, C order, shape `T×d1×d2` (or `×d3`).
pub struct NpyWriter {
    file: AtomicFile,
    out: BufWriter<std::fs::File>,
    count: FrameCounter,
    scratch: Vec<u8>,
}

impl NpyWriter {
    /// Create the (temporary) file and write the header.
    pub fn create(path: &Path, shape: Shape) -> Result<Self> {
        let file = AtomicFile::new(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file.create_file()?);
        out.write_all(&header_bytes("<f4", false, &shape_vec(shape))).at(file.tmp_path())?;
        Ok(NpyWriter { file, out, count: FrameCounter::new(shape), scratch: Vec::new() })
    }
}

impl MovieWriter for NpyWriter {
    fn shape(&self) -> Shape {
        self.count.shape
    }

    fn write_frames(&mut self, frames: &[f32]) -> Result<()> {
        self.count.take(self.file.dest(), frames.len())?;
        write_f32s(&mut self.out, self.file.tmp_path(), frames, &mut self.scratch)
    }

    fn finish(self: Box<Self>) -> Result<PathBuf> {
        let me = *self;
        me.count.check_complete(me.file.dest())?;
        let f = me.out.into_inner().map_err(|e| Error::io(me.file.tmp_path(), e.into_error()))?;
        f.sync_data().at(me.file.tmp_path())?;
        me.file.commit()
    }
}

/// Streaming `.npz` writer in the layout of CaImAn's `timeseries.save`: members `input_arr`,
/// `start_time`, `fr`, `meta_data` (empty) and `file_name`.
pub struct NpzWriter {
    file: AtomicFile,
    zip: zip::ZipWriter<BufWriter<std::fs::File>>,
    count: FrameCounter,
    fr: f64,
    scratch: Vec<u8>,
}

impl NpzWriter {
    /// Create the (temporary) archive and start the `input_arr` member.
    pub fn create(path: &Path, shape: Shape, opts: &WriteOptions) -> Result<Self> {
        let file = AtomicFile::new(path)?;
        let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file.create_file()?));
        zip.start_file("input_arr.npy", zip_options()).map_err(|e| zip_err(file.tmp_path(), e))?;
        zip.write_all(&header_bytes("<f4", false, &shape_vec(shape))).at(file.tmp_path())?;
        Ok(NpzWriter { file, zip, count: FrameCounter::new(shape), fr: opts.fr, scratch: Vec::new() })
    }
}

impl MovieWriter for NpzWriter {
    fn shape(&self) -> Shape {
        self.count.shape
    }

    fn write_frames(&mut self, frames: &[f32]) -> Result<()> {
        self.count.take(self.file.dest(), frames.len())?;
        write_f32s(&mut self.zip, self.file.tmp_path(), frames, &mut self.scratch)
    }

    fn finish(self: Box<Self>) -> Result<PathBuf> {
        let mut me = *self;
        me.count.check_complete(me.file.dest())?;
        let tmp = me.file.tmp_path().to_path_buf();
        let stem = me.file.dest().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let members = [
            ("start_time", NpyArray::f64(Vec::new(), vec![0.0])),
            ("fr", NpyArray::f64(Vec::new(), vec![me.fr])),
            ("meta_data", NpyArray::f64(vec![0], Vec::new())),
            ("file_name", NpyArray::strings(vec![1], vec![stem])),
        ];
        for (name, arr) in members {
            me.zip.start_file(format!("{name}.npy"), zip_options()).map_err(|e| zip_err(&tmp, e))?;
            me.zip.write_all(&arr.encode()).at(&tmp)?;
        }
        let w = me.zip.finish().map_err(|e| zip_err(&tmp, e))?;
        let mut f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.flush().at(&tmp)?;
        f.seek(std::io::SeekFrom::Start(0)).at(&tmp)?;
        f.sync_data().at(&tmp)?;
        me.file.commit()
    }
}
