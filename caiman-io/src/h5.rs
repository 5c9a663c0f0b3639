//! A small HDF5 layer: the only module of the workspace that names the HDF5 backend.
//!
//! What it is:
//! * [`H5File`], a read-only view of an HDF5 file: the whole tree ([`H5File::tree`]) with the
//!   kind, element type and shape of every object; numeric datasets read whole with type
//!   conversion ([`H5File::read_f64`], [`H5File::read_f32`], [`H5File::read_i64`],
//!   [`H5File::read_bool`]); hyperslabs of whole rows along axis 0 straight into a caller
//!   buffer ([`H5File::read_rows_f32`], [`H5File::read_rows_strided_f32`]); string datasets
//!   (fixed-length byte strings like h5py's `|S32` and variable-length strings,
//!   [`H5File::read_strings`]); string and numeric attributes;
//! * [`H5Writer`], which builds a new file under a temporary name ([`AtomicFile`]) and renames it
//!   into place on [`H5Writer::finish`]: nested groups, numeric / boolean datasets of any shape
//!   (scalars included), fixed- and variable-length strings, string and numeric attributes, and
//!   appendable chunked (optionally deflate-compressed) `f32` datasets for frames. The types
//!   written are the ones h5py writes, so files read back the same in Python.
//!
//! Paths are `/`-separated, with or without a leading `/`; `/` (or the empty string) is the
//! root group. Every error is a [`crate::Error`] naming the file.
//!
//! ```no_run
//! use caiman_io::h5::{H5File, H5Writer};
//! use std::path::Path;
//!
//! let mut w = H5Writer::create(Path::new("results.hdf5"))?;
//! w.write_i64("dims", &[2], &[512, 512])?;
//! w.write_f64("estimates/sn", &[3], &[0.5, 0.7, 0.6])?; // creates the group `estimates`
//! w.write_none("mmap_file")?;
//! w.set_attr_str("estimates", "method", "greedy_roi")?;
//! w.finish()?;
//!
//! let f = H5File::open(Path::new("results.hdf5"))?;
//! let (shape, sn) = f.read_f64("/estimates/sn")?;
//! assert_eq!(shape, [3]);
//! assert_eq!(f.read_strings("/mmap_file")?, ["NoneType"]);
//! # Ok::<(), caiman_io::Error>(())
//! ```
//!
//! What it is not: a general HDF5 binding. Compound, enumerated (other than h5py's `bool`),
//! reference, opaque and array element types are listed by [`H5File::tree`] but not read; links
//! are followed only as the backend resolves them; files are never modified in place.
//!
//! The backend is the pure-Rust `rust-hdf5` crate, so no system `libhdf5` is needed. Its
//! limitations, and how this module works around them:
//! * file handles are reference counted without atomics, so they are not `Send`; [`H5File`] and
//!   [`H5Writer`] keep every handle they derive from the file inside themselves and are declared
//!   `Send` (never `Sync`), see the safety notes there;
//! * attributes of *groups* can be read only as strings ([`H5File::attr_f64`] on a group is
//!   [`Error::Unsupported`]); dataset attributes of every numeric type are read;
//! * a variable-length string dataset can only be written one-dimensional, so a scalar string
//!   dataset (CaImAn's `None`, stored as the string `'NoneType'`) is written as a scalar
//!   fixed-length byte string, which h5py reads back as the same `bytes` value
//!   ([`H5Writer::write_none`]);
//! * the converting reads of the backend refuse integer → float and `f64` → `f32`, so the
//!   conversions are done here, element by element, with `as` semantics (numpy's `astype`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rust_hdf5 as backend;
use rust_hdf5::{ByteOrder, DatatypeMessage, Hdf5Error};

use crate::error::{Error, Result};
use crate::movie::DType;
use crate::write::AtomicFile;

/// Format name used in errors.
const FORMAT: &str = "HDF5";

/// How many dataset names an error message lists before eliding the rest.
const MAX_LISTED: usize = 40;

/// Element type of an HDF5 dataset, in the terms numpy / h5py use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// Integer of `bytes` bytes (1, 2, 4 or 8).
    Int {
        /// Width in bytes.
        bytes: usize,
        /// Whether the integer is signed.
        signed: bool,
    },
    /// IEEE float of `bytes` bytes (2, 4 or 8).
    Float {
        /// Width in bytes.
        bytes: usize,
    },
    /// h5py's boolean: an enumeration `FALSE = 0, TRUE = 1` over a one-byte integer.
    Bool,
    /// Fixed-length byte string of `len` bytes (numpy `|S<len>`).
    FixedString {
        /// Width in bytes.
        len: usize,
    },
    /// Variable-length string (h5py `str`; numpy `object`).
    VarString,
    /// Any other type (compound, reference, opaque, …), described in words.
    Other(String),
}

impl ElemType {
    fn from_datatype(dt: &DatatypeMessage) -> ElemType {
        match dt {
            DatatypeMessage::FixedPoint { size, signed, bit_offset: 0, bit_precision, .. }
                if matches!(size, 1 | 2 | 4 | 8) && u32::from(*bit_precision) == size * 8 =>
            {
                ElemType::Int { bytes: *size as usize, signed: *signed }
            }
            DatatypeMessage::FloatingPoint { size, .. } if matches!(size, 2 | 4 | 8) && dt.ieee_format().is_some() => {
                ElemType::Float { bytes: *size as usize }
            }
            DatatypeMessage::Enum { base, members } if is_h5py_bool(base, members) => ElemType::Bool,
            DatatypeMessage::FixedString { size, .. } => ElemType::FixedString { len: *size as usize },
            DatatypeMessage::VarLenString { .. } => ElemType::VarString,
            other => ElemType::Other(other.to_string()),
        }
    }

    /// numpy's name of the type as h5py shows it: `int64`, `float32`, `bool`, `|S32`, `object`
    /// (variable-length strings), or a description for other types.
    pub fn numpy_name(&self) -> String {
        match self {
            ElemType::Int { bytes, signed } => {
                format!("{}int{}", if *signed { "" } else { "u" }, bytes * 8)
            }
            ElemType::Float { bytes } => format!("float{}", bytes * 8),
            ElemType::Bool => "bool".into(),
            ElemType::FixedString { len } => format!("|S{len}"),
            ElemType::VarString => "object".into(),
            ElemType::Other(s) => s.clone(),
        }
    }

    /// Whether values of this type convert to numbers (integers, floats, booleans).
    pub fn is_numeric(&self) -> bool {
        matches!(self, ElemType::Int { .. } | ElemType::Float { .. } | ElemType::Bool)
    }

    /// Whether this is a string type (fixed or variable length).
    pub fn is_string(&self) -> bool {
        matches!(self, ElemType::FixedString { .. } | ElemType::VarString)
    }

    /// The movie element type with the same values, if any (booleans count as `u8`).
    pub fn to_dtype(&self) -> Option<DType> {
        Some(match self {
            ElemType::Int { bytes: 1, signed: false } | ElemType::Bool => DType::U8,
            ElemType::Int { bytes: 1, signed: true } => DType::I8,
            ElemType::Int { bytes: 2, signed: false } => DType::U16,
            ElemType::Int { bytes: 2, signed: true } => DType::I16,
            ElemType::Int { bytes: 4, signed: false } => DType::U32,
            ElemType::Int { bytes: 4, signed: true } => DType::I32,
            ElemType::Int { bytes: 8, signed: false } => DType::U64,
            ElemType::Int { bytes: 8, signed: true } => DType::I64,
            ElemType::Float { bytes: 4 } => DType::F32,
            ElemType::Float { bytes: 8 } => DType::F64,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.numpy_name())
    }
}

/// h5py's boolean: an enumeration over a one-byte integer with exactly the members
/// `FALSE = 0` and `TRUE = 1`.
fn is_h5py_bool(base: &DatatypeMessage, members: &[backend::format::messages::datatype::EnumMember]) -> bool {
    let one_byte = matches!(base, DatatypeMessage::FixedPoint { size: 1, .. });
    let value = |name: &str| members.iter().find(|m| m.name == name).map(|m| m.value.as_slice());
    one_byte && members.len() == 2 && value("FALSE") == Some(&[0][..]) && value("TRUE") == Some(&[1][..])
}

/// What is known about a dataset without reading its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Element type.
    pub dtype: ElemType,
    /// Shape, slowest axis first; empty for a scalar.
    pub shape: Vec<usize>,
    /// Chunk shape, for chunked datasets.
    pub chunks: Option<Vec<usize>>,
}

impl DatasetInfo {
    /// Number of elements (1 for a scalar; `usize::MAX` if the shape overflows).
    pub fn len(&self) -> usize {
        checked_len(&self.shape).unwrap_or(usize::MAX)
    }

    /// Whether the dataset holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kind of an object in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A group.
    Group,
    /// A dataset.
    Dataset(DatasetInfo),
}

/// One object of the file, as listed by [`H5File::tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path (`/`, `/estimates`, `/estimates/A/data`, …).
    pub path: String,
    /// Group or dataset (with its type and shape).
    pub kind: EntryKind,
}

/// Trim a user path to the backend's form: no leading or trailing `/`, empty for the root.
fn trim(path: &str) -> &str {
    path.trim_matches('/')
}

/// The absolute display form of a trimmed path.
fn display(path: &str) -> String {
    format!("/{}", trim(path))
}

/// Join a group path and a child name into a trimmed path.
fn join(group: &str, name: &str) -> String {
    if group.is_empty() { name.to_string() } else { format!("{group}/{name}") }
}

/// Map a backend error met while reading `file` (doing `what`) into a [`crate::Error`].
///
/// A read past the end of the file is [`Error::Malformed`] (truncated) whatever the backend
/// calls it: it may report one while decoding an object header as an unsupported object.
fn read_err(file: &Path, what: &str, e: Hdf5Error) -> Error {
    const TRUNCATED: [&str; 3] = ["read past end", "failed to fill whole buffer", "buffer too short"];
    let msg = e.to_string();
    match e {
        Hdf5Error::Io(io) if io.kind() != std::io::ErrorKind::UnexpectedEof => Error::io(file, io),
        _ if TRUNCATED.iter().any(|t| msg.contains(t)) => {
            Error::malformed(file, FORMAT, format!("{what}: file is truncated or corrupt: {msg}"))
        }
        Hdf5Error::TypeMismatch(m) | Hdf5Error::Unsupported(m) => {
            Error::unsupported(file, FORMAT, format!("{what}: {m}"))
        }
        _ if msg.contains("invalid HDF5 signature") => {
            Error::malformed(file, FORMAT, format!("{what}: not an HDF5 file ({msg})"))
        }
        _ => Error::malformed(file, FORMAT, format!("{what}: {msg}")),
    }
}

/// Map a backend error met while writing `file` (doing `what`) into a [`crate::Error`].
fn write_err(file: &Path, what: &str, e: Hdf5Error) -> Error {
    match e {
        Hdf5Error::Io(io) => Error::io(file, io),
        Hdf5Error::Unsupported(m) => Error::unsupported(file, FORMAT, format!("{what}: {m}")),
        other => Error::invalid(file, format!("{what}: {other}")),
    }
}

/// Number of elements of `shape`, or `None` on overflow.
fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Values read from a dataset in their stored type (host byte order).
enum Column {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<i8>),
}

/// Dispatch `$body` over every variant of [`Column`], binding the vector to `$v`.
macro_rules! each_column {
    ($col:expr, $v:ident => $body:expr) => {
        match $col {
            Column::U8($v) => $body,
            Column::I8($v) => $body,
            Column::U16($v) => $body,
            Column::I16($v) => $body,
            Column::U32($v) => $body,
            Column::I32($v) => $body,
            Column::U64($v) => $body,
            Column::I64($v) => $body,
            Column::F32($v) => $body,
            Column::F64($v) => $body,
            Column::Bool($v) => $body,
        }
    };
}

impl Column {
    fn len(&self) -> usize {
        each_column!(self, v => v.len())
    }

    // `as` is the conversion for every stored type; for `f64` (and `f32` below) it is the identity.
    #[allow(clippy::unnecessary_cast)]
    fn to_f64(&self) -> Vec<f64> {
        each_column!(self, v => v.iter().map(|&x| x as f64).collect())
    }

    #[allow(clippy::unnecessary_cast)]
    fn fill_f32(&self, out: &mut [f32]) {
        each_column!(self, v => out.iter_mut().zip(v).for_each(|(o, &x)| *o = x as f32))
    }

    /// Integers (and booleans as 0/1) widened to `i64`; `Err` names the first value that does
    /// not fit, or says the values are floats.
    fn to_i64(&self) -> std::result::Result<Vec<i64>, String> {
        fn conv<T: Copy + TryInto<i64> + std::fmt::Display>(v: &[T]) -> std::result::Result<Vec<i64>, String> {
            v.iter().map(|&x| x.try_into().map_err(|_| format!("value {x} does not fit in i64"))).collect()
        }
        match self {
            Column::U8(v) => conv(v),
            Column::I8(v) | Column::Bool(v) => conv(v),
            Column::U16(v) => conv(v),
            Column::I16(v) => conv(v),
            Column::U32(v) => conv(v),
            Column::I32(v) => conv(v),
            Column::U64(v) => conv(v),
            Column::I64(v) => Ok(v.clone()),
            Column::F32(_) | Column::F64(_) => Err("values are floating point, not integers".into()),
        }
    }

    /// Booleans, or integers read as `value != 0`; floats are refused.
    fn to_bool(&self) -> std::result::Result<Vec<bool>, String> {
        match self {
            Column::F32(_) | Column::F64(_) => Err("values are floating point, not booleans".into()),
            Column::U64(v) => Ok(v.iter().map(|&x| x != 0).collect()),
            other => other.to_i64().map(|v| v.into_iter().map(|x| x != 0).collect()),
        }
    }
}

/// Which elements of a dataset to read.
#[derive(Clone, Copy)]
enum Sel<'a> {
    /// Every element.
    All,
    /// The block `starts .. starts + counts`.
    Block(&'a [usize], &'a [usize]),
    /// Along axis 0, `count` rows from `start` every `step`; every element of the other axes.
    Strided { start: usize, step: usize, count: usize, rank: usize, shape: &'a [usize] },
}

/// Read a selection of `ds`, whose elements are of type `ty`, into a [`Column`].
fn read_column(ds: &backend::H5Dataset, ty: &ElemType, sel: Sel<'_>) -> std::result::Result<Column, Hdf5Error> {
    fn get<T: backend::H5Type>(ds: &backend::H5Dataset, sel: Sel<'_>) -> backend::Result<Vec<T>> {
        match sel {
            Sel::All => ds.read_raw::<T>(),
            Sel::Block(starts, counts) => ds.read_slice::<T>(starts, counts),
            Sel::Strided { start, step, count, rank, shape } => {
                // One block of a whole row per selected row: the backend expands a selection
                // into blocks, and refuses selections of more than about a million of them.
                let mut starts = vec![0; rank];
                starts[0] = start;
                let mut stride = vec![1; rank];
                stride[0] = step;
                let mut counts = vec![1; rank];
                counts[0] = count;
                let mut block = shape.to_vec();
                block[0] = 1;
                ds.read_hyperslab::<T>(&starts, &stride, &counts, &block)
            }
        }
    }
    Ok(match ty {
        ElemType::Int { bytes: 1, signed: false } => Column::U8(get(ds, sel)?),
        ElemType::Int { bytes: 1, signed: true } => Column::I8(get(ds, sel)?),
        ElemType::Int { bytes: 2, signed: false } => Column::U16(get(ds, sel)?),
        ElemType::Int { bytes: 2, signed: true } => Column::I16(get(ds, sel)?),
        ElemType::Int { bytes: 4, signed: false } => Column::U32(get(ds, sel)?),
        ElemType::Int { bytes: 4, signed: true } => Column::I32(get(ds, sel)?),
        ElemType::Int { bytes: 8, signed: false } => Column::U64(get(ds, sel)?),
        ElemType::Int { bytes: 8, signed: true } => Column::I64(get(ds, sel)?),
        ElemType::Float { bytes: 4 } => Column::F32(get(ds, sel)?),
        ElemType::Float { bytes: 8 } => Column::F64(get(ds, sel)?),
        ElemType::Bool => Column::Bool(get(ds, sel)?),
        other => {
            return Err(Hdf5Error::TypeMismatch(format!("element type {other} is not read as numbers")));
        }
    })
}

/// Decode the raw value bytes of a numeric attribute of type `dt`.
fn decode_numeric(dt: &DatatypeMessage, raw: &[u8]) -> Option<Vec<f64>> {
    fn order(dt: &DatatypeMessage) -> ByteOrder {
        match dt {
            DatatypeMessage::FixedPoint { byte_order, .. } | DatatypeMessage::FloatingPoint { byte_order, .. } => {
                *byte_order
            }
            DatatypeMessage::Enum { base, .. } => order(base),
            _ => ByteOrder::LittleEndian,
        }
    }
    let ty = ElemType::from_datatype(dt);
    let le = order(dt) == ByteOrder::LittleEndian;
    let (bytes, kind) = match ty {
        ElemType::Int { bytes, signed } => (bytes, if signed { 1 } else { 0 }),
        ElemType::Bool => (1, 1),
        ElemType::Float { bytes: bytes @ (4 | 8) } => (bytes, 2),
        _ => return None,
    };
    let values = raw
        .chunks_exact(bytes)
        .map(|c| {
            let mut b = [0u8; 8];
            if le {
                b[..bytes].copy_from_slice(c);
            } else {
                c.iter().rev().enumerate().for_each(|(i, &x)| b[i] = x);
            }
            let u = u64::from_le_bytes(b);
            match (kind, bytes) {
                (0, _) => u as f64,
                (1, 8) => u as i64 as f64,
                (1, n) => {
                    let shift = 64 - 8 * n as u32;
                    (((u << shift) as i64) >> shift) as f64
                }
                (_, 4) => f32::from_bits(u as u32) as f64,
                _ => f64::from_bits(u),
            }
        })
        .collect();
    Some(values)
}

/// A read-only HDF5 file.
///
/// Opening parses the file's metadata (the object tree); values are read only when asked for.
/// The last dataset opened is kept open, so repeated hyperslab reads of one dataset (a movie
/// read frame range by frame range) do not look it up again.
pub struct H5File {
    path: PathBuf,
    file: backend::H5File,
    /// The last dataset opened: trimmed path and handle.
    cached: RefCell<Option<(String, backend::H5Dataset)>>,
}

// SAFETY: the backend's handles share the file state through `Rc<RefCell<…>>`, which is what
// makes them `!Send`. Every such handle derived from `self.file` — the cached dataset and the
// temporaries inside each method — lives inside this `H5File` or on the stack of one of its
// methods, and none is ever handed out, so all clones of the `Rc` move between threads
// together and are only touched by the thread that owns the `H5File`. The backend keeps no
// per-file state in thread-locals (its two thread-locals are scratch space restored on exit).
// `H5File` is deliberately not `Sync`.
unsafe impl Send for H5File {}

impl std::fmt::Debug for H5File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H5File").field("path", &self.path).finish_non_exhaustive()
    }
}

impl H5File {
    /// Open `path` for reading.
    ///
    /// A directory is [`Error::IsDirectory`], a missing file [`Error::Io`], a file that is not
    /// HDF5 (or is truncated) [`Error::Malformed`].
    pub fn open(path: &Path) -> Result<H5File> {
        let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if md.is_dir() {
            return Err(Error::IsDirectory { path: path.to_path_buf() });
        }
        let file = backend::H5File::open(path).map_err(|e| read_err(path, "cannot open", e))?;
        Ok(H5File { path: path.to_path_buf(), file, cached: RefCell::new(None) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Paths of every dataset in the file, absolute, sorted.
    pub fn dataset_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.file.dataset_names().iter().map(|n| display(n)).collect();
        v.sort();
        v
    }

    /// The datasets found, for error messages: comma separated, long lists elided.
    fn found_list(&self) -> String {
        let all = self.dataset_paths();
        let mut s = all.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join(", ");
        if all.len() > MAX_LISTED {
            s.push_str(&format!(", … ({} in all)", all.len()));
        }
        if s.is_empty() { "none".into() } else { s }
    }

    /// The error for a dataset that is not there.
    fn missing(&self, path: &str) -> Error {
        Error::MissingDataset { path: self.path.clone(), name: display(path), found: self.found_list() }
    }

    fn group_handle(&self, path: &str) -> Result<backend::H5Group> {
        let p = trim(path);
        let root = self.file.root_group();
        if p.is_empty() {
            return Ok(root);
        }
        match root.group(p) {
            Ok(g) => Ok(g),
            Err(Hdf5Error::NotFound(_)) => {
                Err(Error::invalid(&self.path, format!("no group {} in the file", display(p))))
            }
            Err(e) => Err(read_err(&self.path, &format!("cannot open group {}", display(p)), e)),
        }
    }

    /// Run `f` on the (cached) handle of dataset `path`.
    fn with_dataset<R>(&self, path: &str, f: impl FnOnce(&backend::H5Dataset) -> Result<R>) -> Result<R> {
        let p = trim(path);
        let mut cache = self.cached.borrow_mut();
        if cache.as_ref().is_none_or(|(name, _)| name != p) {
            *cache = None;
            let ds = match self.file.dataset(p) {
                Ok(ds) => ds,
                Err(Hdf5Error::NotFound(_)) => return Err(self.missing(p)),
                Err(e) => {
                    return Err(read_err(&self.path, &format!("cannot open dataset {}", display(p)), e));
                }
            };
            *cache = Some((p.to_string(), ds));
        }
        let (_, ds) = cache.as_ref().ok_or_else(|| self.missing(p))?;
        f(ds)
    }

    fn info_of(&self, path: &str, ds: &backend::H5Dataset) -> Result<DatasetInfo> {
        let dt = ds.datatype().map_err(|e| read_err(&self.path, &format!("datatype of {}", display(path)), e))?;
        Ok(DatasetInfo { dtype: ElemType::from_datatype(&dt), shape: ds.shape(), chunks: ds.chunk_dims() })
    }

    /// Whether `path` names a group.
    pub fn is_group(&self, path: &str) -> bool {
        let p = trim(path);
        p.is_empty() || self.file.root_group().group(p).is_ok()
    }

    /// Whether `path` names a dataset.
    pub fn is_dataset(&self, path: &str) -> bool {
        let p = trim(path);
        !p.is_empty() && self.file.dataset_names().iter().any(|n| n == p)
    }

    /// Names (not paths) of the groups directly inside group `path`, sorted.
    pub fn groups_in(&self, path: &str) -> Result<Vec<String>> {
        let g = self.group_handle(path)?;
        let mut v = g.group_names().map_err(|e| read_err(&self.path, &format!("listing {}", display(path)), e))?;
        v.sort();
        Ok(v)
    }

    /// Names (not paths) of the datasets directly inside group `path`, sorted.
    pub fn datasets_in(&self, path: &str) -> Result<Vec<String>> {
        let g = self.group_handle(path)?;
        let mut v = g.dataset_names().map_err(|e| read_err(&self.path, &format!("listing {}", display(path)), e))?;
        v.sort();
        Ok(v)
    }

    /// Every group and dataset of the file, depth first, children in byte order of their names
    /// (the order h5py's `visit` gives), starting with the root group `/`.
    ///
    /// A dataset whose type or shape cannot be read is listed with an [`ElemType::Other`]
    /// holding the reason and an empty shape.
    pub fn tree(&self) -> Result<Vec<Entry>> {
        let mut out = vec![Entry { path: "/".into(), kind: EntryKind::Group }];
        self.walk("", &mut out)?;
        Ok(out)
    }

    fn walk(&self, group: &str, out: &mut Vec<Entry>) -> Result<()> {
        let mut children: Vec<(String, bool)> = self.groups_in(group)?.into_iter().map(|n| (n, true)).collect();
        children.extend(self.datasets_in(group)?.into_iter().map(|n| (n, false)));
        children.sort();
        for (name, is_group) in children {
            let p = join(group, &name);
            if is_group {
                out.push(Entry { path: display(&p), kind: EntryKind::Group });
                self.walk(&p, out)?;
            } else {
                let info = self.dataset_info(&p).unwrap_or_else(|e| DatasetInfo {
                    dtype: ElemType::Other(e.to_string()),
                    shape: Vec::new(),
                    chunks: None,
                });
                out.push(Entry { path: display(&p), kind: EntryKind::Dataset(info) });
            }
        }
        Ok(())
    }

    /// Type, shape and chunking of dataset `path`.
    pub fn dataset_info(&self, path: &str) -> Result<DatasetInfo> {
        self.with_dataset(path, |ds| self.info_of(path, ds))
    }

    /// Read a whole numeric dataset, converted.
    fn read_all(&self, path: &str) -> Result<(Vec<usize>, Column)> {
        self.with_dataset(path, |ds| {
            let info = self.info_of(path, ds)?;
            if checked_len(&info.shape).is_none() {
                return Err(Error::malformed(
                    &self.path,
                    FORMAT,
                    format!("dataset {} has shape {:?}", display(path), info.shape),
                ));
            }
            if !info.dtype.is_numeric() {
                return Err(Error::unsupported(
                    &self.path,
                    FORMAT,
                    format!("dataset {} holds {} values, not numbers", display(path), info.dtype),
                ));
            }
            let col = read_column(ds, &info.dtype, Sel::All)
                .map_err(|e| read_err(&self.path, &format!("reading {}", display(path)), e))?;
            Ok((info.shape, col))
        })
    }

    /// Read a whole numeric (or boolean) dataset as `f64`: its shape (empty for a scalar) and its
    /// values in C order.
    pub fn read_f64(&self, path: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let (shape, col) = self.read_all(path)?;
        Ok((shape, col.to_f64()))
    }

    /// Read a whole numeric (or boolean) dataset as `f32` (`f64` values are rounded to nearest).
    pub fn read_f32(&self, path: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, col) = self.read_all(path)?;
        let mut out = vec![0.0; col.len()];
        col.fill_f32(&mut out);
        Ok((shape, out))
    }

    /// Read a whole integer (or boolean) dataset as `i64`. Floating-point datasets and `u64`
    /// values above `i64::MAX` are [`Error::Unsupported`].
    pub fn read_i64(&self, path: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (shape, col) = self.read_all(path)?;
        let v = col
            .to_i64()
            .map_err(|m| Error::unsupported(&self.path, FORMAT, format!("dataset {}: {m}", display(path))))?;
        Ok((shape, v))
    }

    /// Read a whole boolean dataset (h5py's `bool`; integers read as `value != 0`).
    pub fn read_bool(&self, path: &str) -> Result<(Vec<usize>, Vec<bool>)> {
        let (shape, col) = self.read_all(path)?;
        let v = col
            .to_bool()
            .map_err(|m| Error::unsupported(&self.path, FORMAT, format!("dataset {}: {m}", display(path))))?;
        Ok((shape, v))
    }

    /// Check a row request against dataset `path` and return its shape and element type.
    fn check_rows(
        &self,
        ds: &backend::H5Dataset,
        path: &str,
        start: usize,
        step: usize,
        count: usize,
        out_len: usize,
    ) -> Result<DatasetInfo> {
        let info = self.info_of(path, ds)?;
        if info.shape.is_empty() {
            return Err(Error::invalid(&self.path, format!("dataset {} is a scalar and has no rows", display(path))));
        }
        if !info.dtype.is_numeric() {
            return Err(Error::unsupported(
                &self.path,
                FORMAT,
                format!("dataset {} holds {} values, not numbers", display(path), info.dtype),
            ));
        }
        let row: usize = checked_len(&info.shape[1..]).ok_or_else(|| {
            Error::malformed(&self.path, FORMAT, format!("dataset {} has shape {:?}", display(path), info.shape))
        })?;
        let last = (count.saturating_sub(1)).checked_mul(step).and_then(|x| x.checked_add(start));
        if count > 0 && last.is_none_or(|last| last >= info.shape[0]) {
            return Err(Error::invalid(
                &self.path,
                format!(
                    "rows {start}.. (step {step}, {count} rows) outside the {} rows of {}",
                    info.shape[0],
                    display(path)
                ),
            ));
        }
        if row.checked_mul(count) != Some(out_len) {
            return Err(Error::invalid(
                &self.path,
                format!("buffer of {out_len} values does not hold {count} rows of {row} values of {}", display(path)),
            ));
        }
        Ok(info)
    }

    /// Read rows `start .. start + count` along axis 0 of numeric dataset `path` into `out`,
    /// converted to `f32` (C order; `out.len()` must be `count` times the size of one row).
    ///
    /// Only the selected rows are read from the file. `f32` data lands in `out` directly; other
    /// types go through one temporary buffer of the selection's size.
    pub fn read_rows_f32(&self, path: &str, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
        self.with_dataset(path, |ds| {
            let info = self.check_rows(ds, path, start, 1, count, out.len())?;
            if count == 0 || out.is_empty() {
                return Ok(());
            }
            let mut starts = vec![0; info.shape.len()];
            starts[0] = start;
            let mut counts = info.shape.clone();
            counts[0] = count;
            let what = || format!("reading rows {start}..{} of {}", start + count, display(path));
            if info.dtype == (ElemType::Float { bytes: 4 }) {
                ds.read_slice_into::<f32>(out, &starts, &counts).map_err(|e| read_err(&self.path, &what(), e))
            } else {
                let col = read_column(ds, &info.dtype, Sel::Block(&starts, &counts))
                    .map_err(|e| read_err(&self.path, &what(), e))?;
                if col.len() != out.len() {
                    return Err(Error::malformed(
                        &self.path,
                        FORMAT,
                        format!("{}: got {} values, expected {}", what(), col.len(), out.len()),
                    ));
                }
                col.fill_f32(out);
                Ok(())
            }
        })
    }

    /// Read `count` rows along axis 0, `start, start + step, …`, of numeric dataset `path` into
    /// `out`, converted to `f32` (one strided hyperslab; only those rows are read).
    pub fn read_rows_strided_f32(
        &self,
        path: &str,
        start: usize,
        step: usize,
        count: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if step == 0 {
            return Err(Error::invalid(&self.path, "row step must be at least 1"));
        }
        if step == 1 {
            return self.read_rows_f32(path, start, count, out);
        }
        self.with_dataset(path, |ds| {
            let info = self.check_rows(ds, path, start, step, count, out.len())?;
            if count == 0 || out.is_empty() {
                return Ok(());
            }
            let what = || format!("reading every {step}th row from {start} of {}", display(path));
            let sel = Sel::Strided { start, step, count, rank: info.shape.len(), shape: &info.shape };
            let col = read_column(ds, &info.dtype, sel).map_err(|e| read_err(&self.path, &what(), e))?;
            if col.len() != out.len() {
                return Err(Error::malformed(
                    &self.path,
                    FORMAT,
                    format!("{}: got {} values, expected {}", what(), col.len(), out.len()),
                ));
            }
            col.fill_f32(out);
            Ok(())
        })
    }

    /// Read a string dataset of any shape, flattened in C order: fixed-length byte strings
    /// (h5py's `|S32`, padding removed) and variable-length strings (a scalar one, CaImAn's
    /// `None` = `'NoneType'`, gives one string). Bytes that are not valid UTF-8 are replaced.
    pub fn read_strings(&self, path: &str) -> Result<Vec<String>> {
        self.with_dataset(path, |ds| {
            let info = self.info_of(path, ds)?;
            if !info.dtype.is_string() {
                return Err(Error::unsupported(
                    &self.path,
                    FORMAT,
                    format!("dataset {} holds {} values, not strings", display(path), info.dtype),
                ));
            }
            ds.read_strings_lossy()
                .map_err(|e| read_err(&self.path, &format!("reading strings of {}", display(path)), e))
        })
    }

    /// Names of the attributes of the group or dataset `path`.
    pub fn attr_names(&self, path: &str) -> Result<Vec<String>> {
        let what = || format!("attributes of {}", display(path));
        if self.is_dataset(path) {
            self.with_dataset(path, |ds| ds.attr_names().map_err(|e| read_err(&self.path, &what(), e)))
        } else {
            let g = self.group_handle(path)?;
            g.attr_names().map_err(|e| read_err(&self.path, &what(), e))
        }
    }

    fn check_attr(&self, path: &str, name: &str) -> Result<()> {
        let names = self.attr_names(path)?;
        if names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(Error::invalid(
                &self.path,
                format!("{} has no attribute {name:?} (attributes: {})", display(path), names.join(", ")),
            ))
        }
    }

    /// Read string attribute `name` of the group or dataset `path`: fixed-length (what h5py
    /// writes for `np.bytes_`) or variable-length (h5py `str`).
    ///
    /// On datasets a non-string attribute is [`Error::Unsupported`]; on groups the backend
    /// cannot tell the type, so a numeric attribute gives its bytes as text.
    pub fn attr_string(&self, path: &str, name: &str) -> Result<String> {
        self.check_attr(path, name)?;
        let what = || format!("attribute {name:?} of {}", display(path));
        if self.is_dataset(path) {
            self.with_dataset(path, |ds| {
                let attr = ds.attr(name).map_err(|e| read_err(&self.path, &what(), e))?;
                let dt = attr.datatype().map_err(|e| read_err(&self.path, &what(), e))?;
                if !ElemType::from_datatype(&dt).is_string() {
                    return Err(Error::unsupported(
                        &self.path,
                        FORMAT,
                        format!("{} is of type {dt}, not a string", what()),
                    ));
                }
                attr.read_string().map_err(|e| read_err(&self.path, &what(), e))
            })
        } else {
            let g = self.group_handle(path)?;
            g.attr_string(name).map_err(|e| read_err(&self.path, &what(), e))
        }
    }

    /// Read the numeric attribute `name` of dataset `path` (any integer, float or boolean type;
    /// one element). Attributes of groups cannot be read as numbers by the backend and are
    /// [`Error::Unsupported`].
    pub fn attr_f64(&self, path: &str, name: &str) -> Result<f64> {
        let v = self.attr_f64s(path, name)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(Error::unsupported(
                &self.path,
                FORMAT,
                format!("attribute {name:?} of {} holds {} values, not one", display(path), v.len()),
            )),
        }
    }

    /// Read the numeric attribute `name` of dataset `path`, every element (C order).
    pub fn attr_f64s(&self, path: &str, name: &str) -> Result<Vec<f64>> {
        let what = || format!("attribute {name:?} of {}", display(path));
        self.check_attr(path, name)?;
        if !self.is_dataset(path) {
            return Err(Error::unsupported(
                &self.path,
                FORMAT,
                format!("{}: numeric attributes of groups cannot be read", what()),
            ));
        }
        self.with_dataset(path, |ds| {
            let attr = ds.attr(name).map_err(|e| read_err(&self.path, &what(), e))?;
            let dt = attr.datatype().map_err(|e| read_err(&self.path, &what(), e))?;
            let raw = attr.read_raw().map_err(|e| read_err(&self.path, &what(), e))?;
            decode_numeric(&dt, &raw).ok_or_else(|| {
                Error::unsupported(&self.path, FORMAT, format!("{} is of type {dt}, not numeric", what()))
            })
        })
    }
}

/// An appendable dataset being written.
struct Appendable {
    path: String,
    ds: backend::H5Dataset,
    row: usize,
}

/// A new HDF5 file being written under a temporary name, renamed into place by
/// [`H5Writer::finish`]; dropped without `finish`, it leaves nothing under the final name.
///
/// Datasets and groups are created by path; missing parent groups are created on the way (as
/// h5py's `f["a/b/c"] = x` does). Types follow h5py: booleans are the `FALSE/TRUE` enum over
/// `int8`, strings are fixed-length null-padded ASCII (`np.bytes_`) or variable-length UTF-8
/// (`str`).
pub struct H5Writer {
    dest: PathBuf,
    /// `None` once closed.
    file: Option<backend::H5File>,
    appendables: Vec<Appendable>,
    groups: BTreeSet<String>,
    datasets: BTreeSet<String>,
    /// `None` once committed.
    atomic: Option<AtomicFile>,
}

// SAFETY: as for `H5File`: every backend handle derived from `self.file` (the appendable
// datasets and the temporaries inside each method) stays inside this `H5Writer` or on the stack
// of one of its methods and is never handed out, so all clones of the backend's `Rc` move
// between threads together. `H5Writer` is deliberately not `Sync`.
unsafe impl Send for H5Writer {}

impl std::fmt::Debug for H5Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H5Writer").field("dest", &self.dest).finish_non_exhaustive()
    }
}

impl H5Writer {
    /// Start a new file that [`finish`](Self::finish) will put at `dest` (replacing any file
    /// there). Its directory must exist.
    pub fn create(dest: &Path) -> Result<H5Writer> {
        if dest.is_dir() {
            return Err(Error::IsDirectory { path: dest.to_path_buf() });
        }
        let atomic = AtomicFile::new(dest)?;
        let file = backend::H5File::create(atomic.tmp_path()).map_err(|e| write_err(dest, "cannot create", e))?;
        Ok(H5Writer {
            dest: dest.to_path_buf(),
            file: Some(file),
            appendables: Vec::new(),
            groups: BTreeSet::new(),
            datasets: BTreeSet::new(),
            atomic: Some(atomic),
        })
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    fn file(&self) -> Result<&backend::H5File> {
        self.file.as_ref().ok_or_else(|| Error::invalid(&self.dest, "file is already closed"))
    }

    fn werr(&self, what: &str) -> impl FnOnce(Hdf5Error) -> Error + '_ {
        let what = what.to_string();
        move |e| write_err(&self.dest, &what, e)
    }

    /// Check `p` (trimmed) is a fresh name for a new object.
    fn check_new(&self, p: &str) -> Result<()> {
        if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(Error::invalid(&self.dest, format!("{:?} is not a valid HDF5 object path", display(p))));
        }
        if self.groups.contains(p) || self.datasets.contains(p) {
            return Err(Error::invalid(&self.dest, format!("{} already exists", display(p))));
        }
        Ok(())
    }

    /// Create group `path` and any missing parent; an existing group is left as it is.
    pub fn create_group(&mut self, path: &str) -> Result<()> {
        let p = trim(path);
        if p.is_empty() || self.groups.contains(p) {
            return Ok(());
        }
        if self.datasets.contains(p) {
            return Err(Error::invalid(&self.dest, format!("{} is a dataset, not a group", display(p))));
        }
        self.check_new(p)?;
        let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
        self.create_group(parent)?;
        let what = format!("creating group {}", display(p));
        let file = self.file()?;
        let parent_group = if parent.is_empty() {
            file.root_group()
        } else {
            file.root_group().group(parent).map_err(self.werr(&what))?
        };
        parent_group.create_group(name).map_err(self.werr(&what))?;
        self.groups.insert(p.to_string());
        Ok(())
    }

    /// Prepare a new dataset at `path`: check the name, create the parents, and return the
    /// parent group and the dataset's own name.
    fn new_dataset_slot<'p>(&mut self, p: &'p str) -> Result<(backend::H5Group, &'p str)> {
        self.check_new(p)?;
        let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
        self.create_group(parent)?;
        let file = self.file()?;
        let group = if parent.is_empty() {
            file.root_group()
        } else {
            file.root_group().group(parent).map_err(self.werr(&format!("opening group {}", display(parent))))?
        };
        Ok((group, name))
    }

    fn check_len(&self, p: &str, shape: &[usize], len: usize) -> Result<()> {
        if checked_len(shape) != Some(len) {
            return Err(Error::invalid(
                &self.dest,
                format!("{} values do not fill shape {shape:?} of {}", len, display(p)),
            ));
        }
        Ok(())
    }

    /// Write a numeric dataset of stored type `dt` (or `T`'s own).
    fn write_numeric<T: backend::H5Type>(
        &mut self,
        path: &str,
        shape: &[usize],
        data: &[T],
        dt: Option<DatatypeMessage>,
    ) -> Result<()> {
        let p = trim(path);
        self.check_len(p, shape, data.len())?;
        let (group, name) = self.new_dataset_slot(p)?;
        let what = format!("writing dataset {}", display(p));
        let mut builder = group.new_dataset::<T>().shape(shape);
        if let Some(dt) = dt {
            builder = builder.datatype(dt);
        }
        let ds = builder.create(name).map_err(self.werr(&what))?;
        if !data.is_empty() {
            ds.write_raw(data).map_err(self.werr(&what))?;
        }
        self.datasets.insert(p.to_string());
        Ok(())
    }

    /// Write a `float64` dataset of `shape` (empty for a scalar) from C-ordered `data`.
    pub fn write_f64(&mut self, path: &str, shape: &[usize], data: &[f64]) -> Result<()> {
        self.write_numeric(path, shape, data, None)
    }

    /// Write a `float32` dataset.
    pub fn write_f32(&mut self, path: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        self.write_numeric(path, shape, data, None)
    }

    /// Write an `int64` dataset.
    pub fn write_i64(&mut self, path: &str, shape: &[usize], data: &[i64]) -> Result<()> {
        self.write_numeric(path, shape, data, None)
    }

    /// Write an `int32` dataset (what scipy uses for the `indices` / `indptr` of small sparse
    /// matrices).
    pub fn write_i32(&mut self, path: &str, shape: &[usize], data: &[i32]) -> Result<()> {
        self.write_numeric(path, shape, data, None)
    }

    /// Write a `uint8` dataset.
    pub fn write_u8(&mut self, path: &str, shape: &[usize], data: &[u8]) -> Result<()> {
        self.write_numeric(path, shape, data, None)
    }

    /// Write a boolean dataset with h5py's type (enum `FALSE = 0, TRUE = 1` over `int8`), which
    /// h5py reads back as numpy `bool`.
    pub fn write_bool(&mut self, path: &str, shape: &[usize], data: &[bool]) -> Result<()> {
        let raw: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
        let mut dt = DatatypeMessage::bool_type();
        if let DatatypeMessage::Enum { base, .. } = &mut dt {
            **base = DatatypeMessage::FixedPoint {
                size: 1,
                byte_order: ByteOrder::LittleEndian,
                signed: true,
                bit_offset: 0,
                bit_precision: 8,
            };
        }
        self.write_numeric(path, shape, &raw, Some(dt))
    }

    /// Write a fixed-length byte-string dataset (`len` bytes per element, null padded, ASCII
    /// declared) of `shape`.
    fn write_fixed(&mut self, path: &str, shape: &[usize], values: &[&str]) -> Result<()> {
        let width = values.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        self.write_fixed_width(path, shape, values, width)
    }

    /// [`write_fixed`](Self::write_fixed) with a given width (at least the longest value).
    fn write_fixed_width(&mut self, path: &str, shape: &[usize], values: &[&str], width: usize) -> Result<()> {
        let p = trim(path);
        self.check_len(p, shape, values.len())?;
        let mut raw = Vec::with_capacity(width * values.len());
        for s in values {
            raw.extend_from_slice(s.as_bytes());
            raw.resize(raw.len() + width - s.len(), 0);
        }
        let size = u32::try_from(width).map_err(|_| {
            Error::invalid(&self.dest, format!("string of {width} bytes is too long for {}", display(p)))
        })?;
        let (group, name) = self.new_dataset_slot(p)?;
        let what = format!("writing strings {}", display(p));
        let ds = group
            .new_dataset::<u8>()
            .datatype(DatatypeMessage::FixedString { size, padding: 1, charset: 0 })
            .shape(shape)
            .create(name)
            .map_err(self.werr(&what))?;
        if !raw.is_empty() && !values.is_empty() {
            ds.write_raw_bytes(&raw).map_err(self.werr(&what))?;
        }
        self.datasets.insert(p.to_string());
        Ok(())
    }

    /// Write a 1-D dataset of fixed-length byte strings, as h5py stores a numpy `|S<n>` array
    /// (`n` = the longest value in bytes, at least 1; shorter values null padded). CaImAn
    /// writes lists it cannot store as numbers this way (`estimates/bl`, …).
    pub fn write_strings(&mut self, path: &str, values: &[&str]) -> Result<()> {
        self.write_fixed(path, &[values.len()], values)
    }

    /// Write a 1-D dataset of fixed-length byte strings of exactly `width` bytes (numpy
    /// `|S<width>`, shorter values null padded), what `np.array(values).astype('|S32')` gives
    /// for `width = 32`: CaImAn's fallback for lists it cannot store as numbers. A value longer
    /// than `width` bytes is an [`Error::InvalidRequest`] (numpy would truncate it silently; do
    /// that before calling if wanted).
    pub fn write_strings_width(&mut self, path: &str, width: usize, values: &[&str]) -> Result<()> {
        if let Some(long) = values.iter().find(|s| s.len() > width) {
            return Err(Error::invalid(
                &self.dest,
                format!("string {long:?} is longer than the {width} bytes of {}", display(path)),
            ));
        }
        self.write_fixed_width(path, &[values.len()], values, width.max(1))
    }

    /// Write a scalar fixed-length byte string (numpy `np.bytes_`); h5py reads it as `bytes`.
    pub fn write_string_scalar(&mut self, path: &str, value: &str) -> Result<()> {
        self.write_fixed(path, &[], &[value])
    }

    /// Write CaImAn's `None`: a scalar string dataset holding `NoneType`, which CaImAn's
    /// `load_dict_from_hdf5` reads back as `None`.
    ///
    /// CaImAn (h5py) stores it as a scalar variable-length string; the backend can write
    /// variable-length string datasets only one-dimensional, so this is a scalar fixed-length
    /// string, which h5py reads as the same `b'NoneType'`.
    pub fn write_none(&mut self, path: &str) -> Result<()> {
        self.write_string_scalar(path, "NoneType")
    }

    /// Write a 1-D dataset of variable-length UTF-8 strings (h5py `str`).
    pub fn write_vlen_strings(&mut self, path: &str, values: &[&str]) -> Result<()> {
        let p = trim(path);
        let (group, name) = self.new_dataset_slot(p)?;
        group.write_vlen_strings(name, values).map_err(self.werr(&format!("writing strings {}", display(p))))?;
        self.datasets.insert(p.to_string());
        Ok(())
    }

    /// Create an empty appendable `float32` dataset of rows shaped `row_shape`: its shape grows
    /// from `[0, row_shape…]` with every [`append_f32`](Self::append_f32), unlimited along
    /// axis 0. It is chunked by `chunk_rows` whole rows and deflate-compressed at level
    /// `deflate` (1–9; 0 for none).
    pub fn create_appendable_f32(
        &mut self,
        path: &str,
        row_shape: &[usize],
        chunk_rows: usize,
        deflate: u32,
    ) -> Result<()> {
        let p = trim(path);
        let row = checked_len(row_shape).filter(|&r| r > 0);
        let Some(row) = row else {
            return Err(Error::invalid(
                &self.dest,
                format!("rows of shape {row_shape:?} hold no value ({})", display(p)),
            ));
        };
        if chunk_rows == 0 {
            return Err(Error::invalid(&self.dest, format!("chunks of {} must hold at least one row", display(p))));
        }
        if deflate > 9 {
            return Err(Error::invalid(&self.dest, format!("deflate level {deflate} is not in 0..=9")));
        }
        let mut shape = vec![0];
        shape.extend_from_slice(row_shape);
        let mut chunk = vec![chunk_rows];
        chunk.extend_from_slice(row_shape);
        let mut max: Vec<Option<usize>> = vec![None];
        max.extend(row_shape.iter().map(|&d| Some(d)));
        let (group, name) = self.new_dataset_slot(p)?;
        let mut builder = group.new_dataset::<f32>().shape(&shape).chunk(&chunk).max_shape(&max);
        if deflate > 0 {
            builder = builder.deflate(deflate);
        }
        let ds = builder.create(name).map_err(self.werr(&format!("creating dataset {}", display(p))))?;
        self.datasets.insert(p.to_string());
        self.appendables.push(Appendable { path: p.to_string(), ds, row });
        Ok(())
    }

    /// Append whole rows (C order) to an appendable dataset made by
    /// [`create_appendable_f32`](Self::create_appendable_f32).
    pub fn append_f32(&mut self, path: &str, values: &[f32]) -> Result<()> {
        let p = trim(path);
        let a = self.appendables.iter().find(|a| a.path == p).ok_or_else(|| {
            Error::invalid(&self.dest, format!("{} is not an appendable dataset of this file", display(p)))
        })?;
        if !values.len().is_multiple_of(a.row) {
            return Err(Error::invalid(
                &self.dest,
                format!("{} values are not whole rows of {} values ({})", values.len(), a.row, display(p)),
            ));
        }
        if values.is_empty() {
            return Ok(());
        }
        a.ds.append(values).map_err(|e| write_err(&self.dest, &format!("appending to {}", display(p)), e))
    }

    /// Where an attribute of `path` goes: the root, a group, or a dataset.
    fn attr_target(&self, path: &str) -> Result<AttrTarget> {
        let p = trim(path);
        let file = self.file()?;
        let what = || format!("attribute target {}", display(p));
        if p.is_empty() {
            Ok(AttrTarget::Group(file.root_group()))
        } else if self.groups.contains(p) {
            Ok(AttrTarget::Group(file.root_group().group(p).map_err(self.werr(&what()))?))
        } else if self.datasets.contains(p) {
            Ok(AttrTarget::Dataset(file.dataset_writer(p).map_err(self.werr(&what()))?))
        } else {
            Err(Error::invalid(&self.dest, format!("no group or dataset {} to put an attribute on", display(p))))
        }
    }

    /// Set a scalar attribute of raw type `dt` and value bytes `raw`.
    fn set_attr_typed(&mut self, path: &str, name: &str, dt: DatatypeMessage, raw: Vec<u8>) -> Result<()> {
        let what = format!("setting attribute {name:?} of {}", display(path));
        match self.attr_target(path)? {
            AttrTarget::Group(g) => g.set_attr_typed(name, dt, raw),
            AttrTarget::Dataset(d) => d.set_attr_typed(name, dt, raw),
        }
        .map_err(self.werr(&what))
    }

    /// Set string attribute `name` of group or dataset `path` (`/` for the root) as a
    /// variable-length UTF-8 string, what h5py writes for a Python `str`.
    pub fn set_attr_str(&mut self, path: &str, name: &str, value: &str) -> Result<()> {
        let what = format!("setting attribute {name:?} of {}", display(path));
        match self.attr_target(path)? {
            AttrTarget::Group(g) => g.set_attr_string(name, value),
            AttrTarget::Dataset(d) => {
                d.new_attr::<backend::VarLenUnicode>().shape(()).create(name).and_then(|a| a.write_string(value))
            }
        }
        .map_err(self.werr(&what))
    }

    /// Set string attribute `name` as a fixed-length null-padded ASCII string, what h5py writes
    /// for `np.bytes_`.
    pub fn set_attr_ascii(&mut self, path: &str, name: &str, value: &str) -> Result<()> {
        let len = value.len().max(1);
        let size = u32::try_from(len).map_err(|_| Error::invalid(&self.dest, "attribute string too long"))?;
        let mut raw = value.as_bytes().to_vec();
        raw.resize(len, 0);
        self.set_attr_typed(path, name, DatatypeMessage::FixedString { size, padding: 1, charset: 0 }, raw)
    }

    /// Set a scalar `float64` attribute.
    pub fn set_attr_f64(&mut self, path: &str, name: &str, value: f64) -> Result<()> {
        self.set_attr_typed(path, name, DatatypeMessage::f64_type(), value.to_le_bytes().to_vec())
    }

    /// Set a scalar `int64` attribute.
    pub fn set_attr_i64(&mut self, path: &str, name: &str, value: i64) -> Result<()> {
        let dt = DatatypeMessage::FixedPoint {
            size: 8,
            byte_order: ByteOrder::LittleEndian,
            signed: true,
            bit_offset: 0,
            bit_precision: 64,
        };
        self.set_attr_typed(path, name, dt, value.to_le_bytes().to_vec())
    }

    /// Close the file and move it to its final name, which is returned.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.appendables.clear();
        let file = self.file.take().ok_or_else(|| Error::invalid(&self.dest, "file is already closed"))?;
        file.close().map_err(|e| write_err(&self.dest, "closing", e))?;
        let atomic = self.atomic.take().ok_or_else(|| Error::invalid(&self.dest, "file is already committed"))?;
        atomic.commit()
    }
}

impl Drop for H5Writer {
    fn drop(&mut self) {
        self.appendables.clear();
        if let Some(file) = self.file.take() {
            // Abandoned: close quietly (the temporary file is removed just after, by the
            // `AtomicFile`), so the backend has nothing left to finalize or report on drop.
            let _ = file.close_no_sync();
        }
    }
}

/// The object an attribute is written to.
enum AttrTarget {
    Group(backend::H5Group),
    Dataset(backend::H5Dataset),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_of_fixed_width_read_back_with_their_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.h5");
        let mut w = H5Writer::create(&path).unwrap();
        w.write_strings_width("g/bl", 32, &["-5.208319323266344", "nan", ""]).unwrap();
        w.write_strings_width("empty", 32, &[]).unwrap();
        assert!(w.write_strings_width("long", 3, &["abcd"]).is_err());
        w.finish().unwrap();
        let f = H5File::open(&path).unwrap();
        let info = f.dataset_info("/g/bl").unwrap();
        assert_eq!(info.dtype, ElemType::FixedString { len: 32 });
        assert_eq!(info.shape, [3]);
        assert_eq!(f.read_strings("/g/bl").unwrap(), ["-5.208319323266344", "nan", ""]);
        let info = f.dataset_info("/empty").unwrap();
        assert_eq!((info.dtype, info.shape), (ElemType::FixedString { len: 32 }, vec![0]));
    }
}
