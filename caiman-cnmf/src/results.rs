//! CNMF results in CaImAn's HDF5 layout: `CNMF.save` / `load_CNMF` (`caiman/source_extraction/cnmf/cnmf.py`)
//! over `save_dict_to_hdf5` / `load_dict_from_hdf5` (`caiman/utils/utils.py`), catalog §1.5 and §4.10.
//!
//! [`save_cnmf`] writes what CaImAn 1.12.1's `CNMF.save(filename)` writes for a batch CNMF object,
//! so CaImAn's `load_CNMF` opens our files, and [`load_cnmf`] reads both our files (every stored
//! field back bit for bit, NaN included) and CaImAn's.
//!
//! # Schema (stable)
//!
//! The layout is CaImAn's; it is stable: later versions of this crate keep every path, type and
//! meaning below (they may only add paths CaImAn adds). `K` components, `T` frames, `d` pixels
//! (Fortran order, `p = row + d1·col + d1·d2·plane`), `nb` background components, `p` AR order.
//!
//! | path | meaning | type | shape |
//! |---|---|---|---|
//! | `/dims` | frame dimensions | int64 | `(2,)` or `(3,)` |
//! | `/dview` | CaImAn's cluster handle, always `None` | string `NoneType` | `()` |
//! | `/mmap_file` | the memory-mapped movie (`None` → dataset `NoneType`; a name → string attribute `mmap_file` of `/`) | | |
//! | `/skip_refinement`, `/remove_very_bad_comps` | CNMF flags | bool | `()` |
//! | `/params/<group>` | one group per CaImAn parameter group (`data, init, merging, motion, online, patch, preprocess, ring_CNN, quality, spatial, temporal`) | group | |
//! | `/params/<group>` attributes | every string parameter | string | |
//! | `/params/<group>/<key>` | numbers (int64 / float64), booleans (bool), `None` (`NoneType`), lists (arrays; all-string lists `\|S<n>`, other lists `\|S32` of `str()` of each element, e.g. `motion/indices` = `b'slice(None, None, None)'`), dicts (sub-groups) | | `()` or the list's shape |
//! | `/estimates/A/{data,indices,indptr,shape}` | footprints `A`, CSC parts | float64, int32, int32, int64 | `(nnz,)`, `(nnz,)`, `(K+1,)`, `(2,)` = `[d, K]` |
//! | `/estimates/C`, `/estimates/S`, `/estimates/YrA`, `/estimates/R` (= `YrA`), `/estimates/F_dff` | traces, deconvolved activity, residuals, ΔF/F | float64 | `(K, T)` |
//! | `/estimates/b`, `/estimates/f` | background footprints and traces | float64 | `(d, nb)`, `(nb, T)` |
//! | `/estimates/sn` | pixel noise | float64 | `(d,)` |
//! | `/estimates/g` | AR coefficients (`None` → scalar `0.0`, as CaImAn) | float64 | `(K, p)` |
//! | `/estimates/bl`, `c1`, `neurons_sn`, `lam` | per-component deconvolution results as Python's `str(float)` (`b'-5.208319323266344'`, `b'nan'`) | `\|S32` | `(K,)` |
//! | `/estimates/center` | centres of mass | float64 | `(K, 2)` or `(K, 3)` |
//! | `/estimates/SNR_comp`, `/estimates/r_values` | evaluation metrics | float64 | `(K,)` |
//! | `/estimates/idx_components`, `idx_components_bad` | accepted / rejected component indices (0-based) | int64 | `(n,)` |
//! | `/estimates/dims` | frame dimensions | int64 | `(2,)` or `(3,)` |
//! | `/estimates/nr` | `K` | int64 | `()` |
//! | `/estimates/shifts` | motion shifts (none in batch CNMF) | float64 | `(0,)` |
//! | `/estimates/discarded_components` | an `Estimates` with the same layout (recursively), or `NoneType` | group | |
//! | `/estimates/{A_thr, Ab, Ab_dense, AtA, AtY_buf, CC, CY, C_on, Cf, OASISinstances, W, Yr_buf, b0, cnn_preds, ecc, ind_new, mn, noisyC, psx, rho_buf, sv, vr}` | fields this port does not hold (online-only state, CNN, 1p ring model) | string `NoneType` | `()` |
//!
//! Any unset optional field (`S`, `YrA`/`R`, `F_dff`, `sn`, `bl`…, `center`, the evaluation
//! results, `discarded_components`) is a `NoneType` dataset, as in CaImAn.
//!
//! # Deviations from CaImAn
//! * `None` is a **scalar fixed-length** byte string `b'NoneType'` (`|S8`), not h5py's scalar
//!   variable-length string: the HDF5 backend cannot write scalar variable-length strings. h5py
//!   reads both as the same `bytes` value and CaImAn's loader maps both to `None`.
//! * Python keeps ints and floats apart; our parameter structs hold some integer-valued CaImAn
//!   defaults as `f64` (`data.fr`, `init.gSig`, `spatial.dist`, …, see `INT_KEYS` in the source).
//!   Those keys are written as int64 when their value is integral (what CaImAn writes for its
//!   defaults), float64 otherwise. On load, integral float64 values are accepted for integer
//!   parameters.
//! * Loading goes through [`CnmfParams::change_params`] (unknown keys become warnings, wrong
//!   types are errors naming `group.key`) and therefore its `check_consistency()`, which CaImAn's
//!   `load_CNMF` does not run; `data.last_commit` is then restored to the stored value (it
//!   records who wrote the parameters). For a consistent parameter set (any file CaImAn or this
//!   crate wrote) nothing else changes.
//! * Fields this port does not model (the `NoneType` list above, `nr`, `shifts`, `R` when `YrA`
//!   is present) are skipped on load, with a warning when a CaImAn file holds a value there.
//! * Only `.hdf5` and `.h5` files (CaImAn's `CNMF.save` accepts only `.hdf5`; `load_CNMF`
//!   also reads `.nwb`, which is not supported here).
//! * `A` is written in canonical CSC form (row indices ascending within each column); CaImAn
//!   writes the scipy matrix as the fit left it, possibly unsorted (descending in the toy
//!   reference file). Same matrix, different order of the stored entries.
//! * Element texts of a `|S32` dataset are read back as Python literals (`None`, `True`,
//!   numbers, `slice(a, b, c)` → `[a, b, c]`), since that width is CaImAn's `str()` fallback; an
//!   all-string list whose longest entry has exactly 32 bytes is read the same way.
//! * `A` and `b` are `f32` in memory (CaImAn: float64 after the fit) and written as float64
//!   (exact); CaImAn's float64 footprints are rounded to `f32` on load.

use std::fmt::Write as _;
use std::path::Path;

use caiman_io::Dims;
use caiman_io::h5::{ElemType, H5File, H5Writer};
use ndarray::Array2;
use serde_json::{Map, Number, Value};

use crate::estimates::Estimates;
use crate::params::{CnmfParams, GROUP_NAMES};
use crate::sparse::CscMatrix;
use crate::{Error, Result};

/// Format name used in errors.
const FORMAT: &str = "CaImAn CNMF HDF5";

/// Width of CaImAn's string fallback for lists (`astype('|S32')`).
const S32: usize = 32;

/// Everything `CNMF.save` writes: params, estimates, dims, mmap_file, skip_refinement,
/// remove_very_bad_comps (and `dview`, always `None`). `dims` is `estimates.dims`.
#[derive(Debug, Clone, PartialEq)]
pub struct CnmfResults {
    /// The parameters of the fit.
    pub params: CnmfParams,
    /// The fit.
    pub estimates: Estimates,
    /// The memory-mapped movie the fit ran on, if any.
    pub mmap_file: Option<String>,
    /// CaImAn's `CNMF.skip_refinement`.
    pub skip_refinement: bool,
    /// CaImAn's `CNMF.remove_very_bad_comps`.
    pub remove_very_bad_comps: bool,
}

impl CnmfResults {
    /// Results of a fit with `params`, no memory-mapped movie and CaImAn's flags taken from
    /// `params.patch`.
    pub fn new(params: CnmfParams, estimates: Estimates) -> Self {
        let skip_refinement = params.patch.skip_refinement;
        let remove_very_bad_comps = params.patch.remove_very_bad_comps;
        CnmfResults { params, estimates, mmap_file: None, skip_refinement, remove_very_bad_comps }
    }
}

/// `Estimates` attributes CaImAn saves that this port does not hold: always `NoneType` here.
pub const UNMODELLED_ESTIMATES_FIELDS: [&str; 22] = [
    "A_thr",
    "Ab",
    "Ab_dense",
    "AtA",
    "AtY_buf",
    "CC",
    "CY",
    "C_on",
    "Cf",
    "OASISinstances",
    "W",
    "Yr_buf",
    "b0",
    "cnn_preds",
    "ecc",
    "ind_new",
    "mn",
    "noisyC",
    "psx",
    "rho_buf",
    "sv",
    "vr",
];

/// Parameters whose CaImAn default is a Python `int` (or a list of ints) but which this port
/// holds as `f64`: written as int64 when integral.
const INT_KEYS: [(&str, &str); 16] = [
    ("data", "fr"),
    ("data", "dxy"),
    ("init", "SC_sigma"),
    ("init", "SC_thr"),
    ("init", "gSig"),
    ("init", "lambda_gnmf"),
    ("init", "min_pnr"),
    ("init", "perc_baseline_snmf"),
    ("online", "ds_factor"),
    ("online", "thresh_fitness_delta"),
    ("patch", "memory_fact"),
    ("patch", "p_ssub"),
    ("patch", "p_tsub"),
    ("quality", "rval_lowest"),
    ("quality", "max_ecc"),
    ("spatial", "dist"),
];

// ------------------------------------------------------------------------------------------
// Python float text
// ------------------------------------------------------------------------------------------

/// Python's `repr(float)` (= `str(float)`, and numpy's `str(np.float64)`): the shortest text
/// that reads back to the same value, positional for `1e-4 ≤ |x| < 1e16` (with `.0` for
/// integral values), else scientific with a signed, at least two-digit exponent (`1e-07`,
/// `1.5e+16`); `nan`, `inf`, `-inf`.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let mut out = String::new();
    if x.is_sign_negative() {
        out.push('-');
    }
    if x == 0.0 {
        out.push_str("0.0");
        return out;
    }
    // Rust's `{:e}` without precision gives the shortest round-trip digits: `d[.ddd]e<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let n = digits.len() as i32;
    // Position of the decimal point relative to the digit string (CPython's `decpt`).
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else if decpt >= n {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
        out.push_str(".0");
    } else {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    }
    out
}

/// Parses Python's text of a float (`repr`/`str`: `-5.2`, `1e-07`, `nan`, `inf`, `-inf`; also
/// integers). `None` for anything else.
pub fn parse_python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t {
        "nan" | "NaN" => Some(f64::NAN),
        "inf" | "Infinity" => Some(f64::INFINITY),
        "-inf" | "-Infinity" => Some(f64::NEG_INFINITY),
        _ if t.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')) && !t.is_empty() => {
            t.parse().ok()
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

fn malformed(path: &Path, msg: impl Into<String>) -> Error {
    Error::Io(caiman_io::Error::malformed(path, FORMAT, msg))
}

fn check_extension(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "hdf5" || ext == "h5" {
        Ok(())
    } else {
        Err(Error::Io(caiman_io::Error::invalid(
            path,
            format!(
                "CNMF results are stored in .hdf5 or .h5 files (CaImAn's CNMF.save accepts only .hdf5), \
                 not {:?}",
                if ext.is_empty() { "no extension".to_string() } else { format!(".{ext}") }
            ),
        )))
    }
}

// ------------------------------------------------------------------------------------------
// Saving
// ------------------------------------------------------------------------------------------

/// Writes `results` to `path` in CaImAn's `CNMF.save` layout (see the module doc).
///
/// The file is built under a temporary name and renamed into place when complete, so a failed
/// save leaves neither a partial file nor a changed old one.
///
/// # Errors
/// [`Error::Io`] naming the file for an extension other than `.hdf5`/`.h5`, a directory that
/// does not exist or cannot be written; [`Error::InvalidParam`] / [`Error::ShapeMismatch`] for
/// estimates that cannot be stored (ragged AR coefficients, per-component fields of the wrong
/// length).
pub fn save_cnmf(path: &Path, results: &CnmfResults) -> Result<()> {
    check_extension(path)?;
    let mut w = H5Writer::create(path)?;
    write_params(&mut w, &results.params)?;
    write_estimates(&mut w, "estimates", &results.estimates)?;
    w.write_i64("dims", &[dims_vec(results.estimates.dims).len()], &dims_vec(results.estimates.dims))?;
    w.write_none("dview")?;
    match &results.mmap_file {
        Some(name) => w.set_attr_str("/", "mmap_file", name)?,
        None => w.write_none("mmap_file")?,
    }
    w.write_bool("skip_refinement", &[], &[results.skip_refinement])?;
    w.write_bool("remove_very_bad_comps", &[], &[results.remove_very_bad_comps])?;
    w.finish()?;
    Ok(())
}

fn dims_vec(d: Dims) -> Vec<i64> {
    if d.is_volume() { vec![d.d1 as i64, d.d2 as i64, d.d3 as i64] } else { vec![d.d1 as i64, d.d2 as i64] }
}

fn write_params(w: &mut H5Writer, params: &CnmfParams) -> Result<()> {
    for g in GROUP_NAMES {
        let path = format!("params/{g}");
        w.create_group(&path)?;
        if let Some(Value::Object(m)) = params.group(g) {
            write_map(w, &path, g, &m)?;
        }
    }
    Ok(())
}

fn write_map(w: &mut H5Writer, path: &str, group: &str, m: &Map<String, Value>) -> Result<()> {
    for (k, v) in m {
        write_value(w, path, group, k, v)?;
    }
    Ok(())
}

fn is_nonfinite_token(s: &str) -> Option<f64> {
    match s {
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => None,
    }
}

/// Whether `f` should be written as an integer for `(group, key)`.
fn as_int(group: &str, key: &str, f: f64) -> Option<i64> {
    let hinted = INT_KEYS.iter().any(|&(g, k)| g == group && k == key);
    (hinted && f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// Python's `str()` of a JSON value (for CaImAn's `|S32` fallback of mixed lists).
fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => python_float_repr(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let inner: Vec<String> =
                a.iter().map(|x| if let Value::String(s) = x { format!("'{s}'") } else { python_str(x) }).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(m) => {
            let inner: Vec<String> = m.iter().map(|(k, x)| format!("'{k}': {}", python_str(x))).collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `str(slice(start, stop, step))` of a `[start, stop, step]` triple.
fn slice_str(v: &Value) -> Option<String> {
    let a = v.as_array().filter(|a| a.len() == 3)?;
    let part = |x: &Value| match x {
        Value::Null => Some("None".to_string()),
        Value::Number(n) => n.as_i64().map(|i| i.to_string()),
        _ => None,
    };
    Some(format!("slice({}, {}, {})", part(&a[0])?, part(&a[1])?, part(&a[2])?))
}

/// Truncates `s` to at most `n` bytes on a character boundary (numpy's `astype('|S32')` cut).
fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A rectangular nested list: its shape and leaves in C order.
fn flatten(v: &Value) -> Option<(Vec<usize>, Vec<&Value>)> {
    fn shape_of(v: &Value) -> Vec<usize> {
        let mut shape = Vec::new();
        let mut cur = v;
        while let Value::Array(a) = cur {
            shape.push(a.len());
            match a.first() {
                Some(x) => cur = x,
                None => break,
            }
        }
        shape
    }
    fn walk<'v>(v: &'v Value, shape: &[usize], out: &mut Vec<&'v Value>) -> bool {
        match (shape.split_first(), v) {
            (Some((&n, rest)), Value::Array(a)) => a.len() == n && a.iter().all(|x| walk(x, rest, out)),
            (None, Value::Array(_)) | (Some(_), _) => false,
            (None, leaf) => {
                out.push(leaf);
                true
            }
        }
    }
    let shape = shape_of(v);
    let mut leaves = Vec::new();
    walk(v, &shape, &mut leaves).then_some((shape, leaves))
}

fn write_value(w: &mut H5Writer, group_path: &str, group: &str, key: &str, v: &Value) -> Result<()> {
    let path = format!("{group_path}/{key}");
    match v {
        Value::Null => w.write_none(&path)?,
        Value::Bool(b) => w.write_bool(&path, &[], &[*b])?,
        Value::Number(n) => match (n.as_i64(), as_int(group, key, n.as_f64().unwrap_or(f64::NAN))) {
            (Some(i), _) | (None, Some(i)) => w.write_i64(&path, &[], &[i])?,
            (None, None) => w.write_f64(&path, &[], &[n.as_f64().unwrap_or(f64::NAN)])?,
        },
        Value::String(s) => match is_nonfinite_token(s) {
            Some(f) => w.write_f64(&path, &[], &[f])?,
            None => w.set_attr_str(group_path, key, s)?,
        },
        Value::Object(m) => {
            w.create_group(&path)?;
            write_map(w, &path, group, m)?;
        }
        Value::Array(a) => {
            if group == "motion"
                && key == "indices"
                && let Some(strs) = a.iter().map(slice_str).collect::<Option<Vec<String>>>()
            {
                let refs: Vec<&str> = strs.iter().map(|s| truncate(s, S32)).collect();
                return Ok(w.write_strings_width(&path, S32, &refs)?);
            }
            write_array(w, &path, group, key, v, a)?;
        }
    }
    Ok(())
}

fn write_array(w: &mut H5Writer, path: &str, group: &str, key: &str, v: &Value, a: &[Value]) -> Result<()> {
    if a.is_empty() {
        // np.array([]) is float64.
        return Ok(w.write_f64(path, &[0], &[])?);
    }
    if let Some((shape, leaves)) = flatten(v) {
        if leaves.iter().all(|x| x.is_number()) {
            let ints: Option<Vec<i64>> = leaves
                .iter()
                .map(|x| {
                    x.as_i64().or_else(|| match x.as_f64() {
                        Some(f) => as_int(group, key, f),
                        None => None,
                    })
                })
                .collect();
            match ints {
                Some(iv) => w.write_i64(path, &shape, &iv)?,
                None => {
                    let fv: Vec<f64> = leaves.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
                    w.write_f64(path, &shape, &fv)?;
                }
            }
            return Ok(());
        }
        if leaves.iter().all(|x| x.is_boolean()) {
            let bv: Vec<bool> = leaves.iter().map(|x| x.as_bool().unwrap_or(false)).collect();
            return Ok(w.write_bool(path, &shape, &bv)?);
        }
        if shape.len() == 1 && leaves.iter().all(|x| x.is_string()) {
            let sv: Vec<&str> = leaves.iter().map(|x| x.as_str().unwrap_or("")).collect();
            return Ok(w.write_strings(path, &sv)?);
        }
    }
    // Mixed / object lists: CaImAn falls back to `astype('|S32')` of each element's str().
    let strs: Vec<String> = a.iter().map(python_str).collect();
    let refs: Vec<&str> = strs.iter().map(|s| truncate(s, S32)).collect();
    Ok(w.write_strings_width(path, S32, &refs)?)
}

fn flat(m: &Array2<f64>) -> Vec<f64> {
    m.iter().copied().collect()
}

fn write_matrix(w: &mut H5Writer, path: &str, m: Option<&Array2<f64>>) -> Result<()> {
    match m {
        Some(m) => w.write_f64(path, &[m.nrows(), m.ncols()], &flat(m))?,
        None => w.write_none(path)?,
    }
    Ok(())
}

fn write_f64_list(w: &mut H5Writer, path: &str, v: Option<&Vec<f64>>) -> Result<()> {
    match v {
        Some(v) => w.write_f64(path, &[v.len()], v)?,
        None => w.write_none(path)?,
    }
    Ok(())
}

fn write_str_list(w: &mut H5Writer, path: &str, v: Option<&Vec<f64>>) -> Result<()> {
    match v {
        Some(v) => {
            let strs: Vec<String> = v.iter().map(|&x| python_float_repr(x)).collect();
            let refs: Vec<&str> = strs.iter().map(String::as_str).collect();
            w.write_strings_width(path, S32, &refs)?;
        }
        None => w.write_none(path)?,
    }
    Ok(())
}

fn write_index_list(w: &mut H5Writer, path: &str, v: Option<&Vec<usize>>) -> Result<()> {
    match v {
        Some(v) => {
            let iv: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            w.write_i64(path, &[iv.len()], &iv)?;
        }
        None => w.write_none(path)?,
    }
    Ok(())
}

fn check_len(what: &'static str, len: Option<usize>, k: usize) -> Result<()> {
    match len {
        Some(n) if n != k => Err(Error::ShapeMismatch { what, expected: vec![k], got: vec![n] }),
        _ => Ok(()),
    }
}

fn write_estimates(w: &mut H5Writer, base: &str, e: &Estimates) -> Result<()> {
    let k = e.n_components();
    for (what, len) in [
        ("estimates.bl", e.bl.as_ref().map(Vec::len)),
        ("estimates.c1", e.c1.as_ref().map(Vec::len)),
        ("estimates.lam", e.lam.as_ref().map(Vec::len)),
        ("estimates.neurons_sn", e.neurons_sn.as_ref().map(Vec::len)),
        ("estimates.g", e.g.as_ref().map(Vec::len)),
        ("estimates.SNR_comp", e.snr_comp.as_ref().map(Vec::len)),
        ("estimates.r_values", e.r_values.as_ref().map(Vec::len)),
        ("estimates.center (rows)", e.center.as_ref().map(Array2::nrows)),
    ] {
        check_len(what, len, k)?;
    }
    let t = e.c.ncols();
    for (what, m) in [("estimates.S", &e.s), ("estimates.YrA", &e.yr_a), ("estimates.F_dff", &e.f_dff)] {
        if let Some(m) = m
            && m.dim() != (k, t)
        {
            return Err(Error::ShapeMismatch { what, expected: vec![k, t], got: vec![m.nrows(), m.ncols()] });
        }
    }
    w.create_group(base)?;
    let p = |name: &str| format!("{base}/{name}");
    // A: scipy's CSC parts (int32 indices while they fit, as scipy).
    let a = &e.a;
    let data: Vec<f64> = a.data().iter().map(|&x| f64::from(x)).collect();
    w.write_f64(&p("A/data"), &[data.len()], &data)?;
    let fits_i32 = a.nnz() <= i32::MAX as usize && a.nrows() <= i32::MAX as usize;
    if fits_i32 {
        let idx: Vec<i32> = a.indices().iter().map(|&i| i as i32).collect();
        let ptr: Vec<i32> = a.indptr().iter().map(|&i| i as i32).collect();
        w.write_i32(&p("A/indices"), &[idx.len()], &idx)?;
        w.write_i32(&p("A/indptr"), &[ptr.len()], &ptr)?;
    } else {
        let idx: Vec<i64> = a.indices().iter().map(|&i| i as i64).collect();
        let ptr: Vec<i64> = a.indptr().iter().map(|&i| i as i64).collect();
        w.write_i64(&p("A/indices"), &[idx.len()], &idx)?;
        w.write_i64(&p("A/indptr"), &[ptr.len()], &ptr)?;
    }
    w.write_i64(&p("A/shape"), &[2], &[a.nrows() as i64, a.ncols() as i64])?;
    write_matrix(w, &p("C"), Some(&e.c))?;
    write_matrix(w, &p("S"), e.s.as_ref())?;
    write_matrix(w, &p("YrA"), e.yr_a.as_ref())?;
    write_matrix(w, &p("R"), e.yr_a.as_ref())?;
    write_matrix(w, &p("F_dff"), e.f_dff.as_ref())?;
    let b: Vec<f64> = e.b.iter().map(|&x| f64::from(x)).collect();
    w.write_f64(&p("b"), &[e.b.nrows(), e.b.ncols()], &b)?;
    write_matrix(w, &p("f"), Some(&e.f))?;
    write_f64_list(w, &p("sn"), e.sn.as_ref())?;
    match &e.g {
        Some(g) => {
            let order = g.first().map_or(0, Vec::len);
            if let Some((i, row)) = g.iter().enumerate().find(|(_, r)| r.len() != order) {
                return Err(Error::InvalidParam(format!(
                    "estimates.g: component {i} has {} AR coefficients, component 0 has {order}; \
                     CaImAn stores g as a K × p array",
                    row.len()
                )));
            }
            let gv: Vec<f64> = g.iter().flatten().copied().collect();
            w.write_f64(&p("g"), &[g.len(), order], &gv)?;
        }
        // CaImAn's save_dict_to_hdf5 turns g = None into 0.
        None => w.write_f64(&p("g"), &[], &[0.0])?,
    }
    write_str_list(w, &p("bl"), e.bl.as_ref())?;
    write_str_list(w, &p("c1"), e.c1.as_ref())?;
    write_str_list(w, &p("lam"), e.lam.as_ref())?;
    write_str_list(w, &p("neurons_sn"), e.neurons_sn.as_ref())?;
    write_matrix(w, &p("center"), e.center.as_ref())?;
    write_f64_list(w, &p("SNR_comp"), e.snr_comp.as_ref())?;
    write_f64_list(w, &p("r_values"), e.r_values.as_ref())?;
    write_index_list(w, &p("idx_components"), e.idx_components.as_ref())?;
    write_index_list(w, &p("idx_components_bad"), e.idx_components_bad.as_ref())?;
    let dims = dims_vec(e.dims);
    w.write_i64(&p("dims"), &[dims.len()], &dims)?;
    w.write_i64(&p("nr"), &[], &[k as i64])?;
    w.write_f64(&p("shifts"), &[0], &[])?;
    match &e.discarded {
        Some(d) => write_estimates(w, &p("discarded_components"), d)?,
        None => w.write_none(&p("discarded_components"))?,
    }
    for name in UNMODELLED_ESTIMATES_FIELDS {
        w.write_none(&p(name))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Loading
// ------------------------------------------------------------------------------------------

/// Reads CNMF results written by [`save_cnmf`] or by CaImAn's `CNMF.save`.
///
/// Returns the results and warnings: parameters CaImAn's file holds that this port does not
/// know, fields of the file this port does not model but which hold a value, per-component
/// fields of the wrong length (dropped), consistency adjustments of the parameters. A file
/// without `/params` gets the default parameters (with a warning).
///
/// # Errors
/// [`Error::Io`] naming the file when it does not exist, is not HDF5, is not `.hdf5`/`.h5`,
/// has no `/estimates` group, or lacks / garbles a required field (`A`, `C`, `dims`, …);
/// [`Error::InvalidParam`] for a parameter of the wrong type (naming `group.key`);
/// [`Error::ShapeMismatch`] when `A`, `C`, `b`, `f` disagree in shape.
pub fn load_cnmf(path: &Path) -> Result<(CnmfResults, Vec<String>)> {
    check_extension(path)?;
    let f = H5File::open(path)?;
    if !f.is_group("/estimates") {
        return Err(malformed(path, "no /estimates group: not a CNMF results file (CaImAn's CNMF.save layout)"));
    }
    let mut warnings = Vec::new();
    let params = if f.is_group("/params") {
        read_params(&f, &mut warnings)?
    } else {
        warnings.push("no /params group: default parameters used".to_string());
        CnmfParams::new()
    };
    let top_dims = if f.is_dataset("/dims") { Some(read_dims(&f, "/dims")?) } else { None };
    let estimates = read_estimates(&f, "/estimates", top_dims, &mut warnings)?;
    let mmap_file = if f.attr_names("/")?.iter().any(|n| n == "mmap_file") {
        Some(f.attr_string("/", "mmap_file")?)
    } else if f.is_dataset("/mmap_file") {
        match read_value(&f, "/mmap_file", false)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => {
                warnings.push(format!("/mmap_file holds {other}, not a file name: ignored"));
                None
            }
        }
    } else {
        None
    };
    let flag = |name: &str, default: bool| -> Result<bool> {
        let p = format!("/{name}");
        if !f.is_dataset(&p) {
            return Ok(default);
        }
        match read_value(&f, &p, false)? {
            Value::Bool(b) => Ok(b),
            Value::Number(n) => Ok(n.as_f64().is_some_and(|x| x != 0.0)),
            Value::Null => Ok(default),
            other => Err(malformed(path, format!("{p} holds {other}, not a boolean"))),
        }
    };
    let skip_refinement = flag("skip_refinement", params.patch.skip_refinement)?;
    let remove_very_bad_comps = flag("remove_very_bad_comps", params.patch.remove_very_bad_comps)?;
    for w in &warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok((CnmfResults { params, estimates, mmap_file, skip_refinement, remove_very_bad_comps }, warnings))
}

fn read_params(f: &H5File, warnings: &mut Vec<String>) -> Result<CnmfParams> {
    let groups = read_group(f, "/params")?;
    let last_commit = groups.get("data").and_then(|d| d.get("last_commit")).and_then(Value::as_str).map(str::to_owned);
    let mut params = CnmfParams::default();
    let w = params
        .change_params(&Value::Object(groups))
        .map_err(|e| Error::InvalidParam(format!("{}: /params: {e}", f.path().display())))?;
    warnings.extend(w);
    if last_commit.is_some() {
        params.data.last_commit = last_commit;
    }
    Ok(params)
}

/// A group as a JSON object: string attributes, datasets (decoded) and sub-groups.
fn read_group(f: &H5File, path: &str) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let in_motion = path.trim_end_matches('/').ends_with("/motion");
    for name in f.attr_names(path)? {
        let s = f.attr_string(path, &name)?;
        m.insert(name, Value::String(s));
    }
    for name in f.datasets_in(path)? {
        let p = format!("{path}/{name}");
        let v = read_value(f, &p, in_motion && name == "indices")?;
        m.insert(name, v);
    }
    for name in f.groups_in(path)? {
        let p = format!("{path}/{name}");
        m.insert(name, Value::Object(read_group(f, &p)?));
    }
    Ok(m)
}

/// A float as JSON: integral values as integers (so integer parameters accept them), non-finite
/// ones as the strings the parameter structs read.
fn float_json(x: f64) -> Value {
    if x.is_nan() {
        Value::String("NaN".into())
    } else if x.is_infinite() {
        Value::String(if x > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else if x.fract() == 0.0 && x.abs() < 9.0e15 && !(x == 0.0 && x.is_sign_negative()) {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Python literal text (an element of CaImAn's `|S32` fallback) back to JSON.
fn python_literal(s: &str, slices: bool) -> Value {
    match s {
        "None" => return Value::Null,
        "True" => return Value::Bool(true),
        "False" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(Number::from(i));
    }
    if let Some(x) = parse_python_float(s) {
        return float_json(x);
    }
    if slices && let Some(inner) = s.strip_prefix("slice(").and_then(|r| r.strip_suffix(')')) {
        let parts: Vec<Value> = inner.split(',').map(|x| python_literal(x.trim(), false)).collect();
        if parts.len() == 3 && parts.iter().all(|p| p.is_null() || p.is_i64()) {
            return Value::Array(parts);
        }
    }
    Value::String(s.to_string())
}

/// Nested JSON lists of `shape` from C-ordered leaves.
fn nest(shape: &[usize], leaves: &mut impl Iterator<Item = Value>) -> Value {
    match shape.split_first() {
        None => leaves.next().unwrap_or(Value::Null),
        Some((&n, rest)) => Value::Array((0..n).map(|_| nest(rest, leaves)).collect()),
    }
}

/// One dataset as JSON: `'NoneType'` → null, strings, numbers, booleans, arrays as nested lists.
/// `slices`: decode `slice(a, b, c)` texts (CaImAn's `motion.indices`) to `[a, b, c]`.
fn read_value(f: &H5File, path: &str, slices: bool) -> Result<Value> {
    let info = f.dataset_info(path)?;
    let shape = info.shape.clone();
    let leaves: Vec<Value> = match &info.dtype {
        t if t.is_string() => {
            let strs = f.read_strings(path)?;
            if shape.is_empty() {
                let s = strs.into_iter().next().unwrap_or_default();
                return Ok(if s == "NoneType" { Value::Null } else { Value::String(s) });
            }
            let literal = slices || matches!(info.dtype, ElemType::FixedString { len: S32 });
            strs.into_iter().map(|s| if literal { python_literal(&s, true) } else { Value::String(s) }).collect()
        }
        ElemType::Bool => f.read_bool(path)?.1.into_iter().map(Value::Bool).collect(),
        ElemType::Int { bytes: 8, signed: false } => f.read_f64(path)?.1.into_iter().map(float_json).collect(),
        ElemType::Int { .. } => f.read_i64(path)?.1.into_iter().map(|i| Value::Number(Number::from(i))).collect(),
        ElemType::Float { .. } => f.read_f64(path)?.1.into_iter().map(float_json).collect(),
        other => {
            return Err(malformed(
                f.path(),
                format!("{path} holds values of type {other}, which CaImAn does not write"),
            ));
        }
    };
    Ok(nest(&shape, &mut leaves.into_iter()))
}

/// Whether dataset `path` is CaImAn's `None` (a scalar string `NoneType`).
fn is_none(f: &H5File, path: &str) -> Result<bool> {
    let info = f.dataset_info(path)?;
    Ok(info.dtype.is_string()
        && info.shape.is_empty()
        && f.read_strings(path)?.first().is_some_and(|s| s == "NoneType"))
}

fn read_dims(f: &H5File, path: &str) -> Result<Dims> {
    let (_, v) = f.read_i64(path)?;
    let u = |x: i64| usize::try_from(x).map_err(|_| malformed(f.path(), format!("{path}: negative dimension {x}")));
    match v.as_slice() {
        [d1, d2] => Ok(Dims::planar(u(*d1)?, u(*d2)?)),
        [d1, d2, d3] => Ok(Dims::volume(u(*d1)?, u(*d2)?, u(*d3)?)),
        _ => Err(malformed(f.path(), format!("{path} has {} entries, expected 2 or 3", v.len()))),
    }
}

/// A float dataset as a matrix: 2-D as is, 1-D as one row (`row_vector`) or one column.
fn read_matrix(f: &H5File, path: &str, row_vector: bool) -> Result<Array2<f64>> {
    let (shape, v) = f.read_f64(path)?;
    let (r, c) = match shape.as_slice() {
        [r, c] => (*r, *c),
        [n] if row_vector => (1, *n),
        [n] => (*n, 1),
        _ => return Err(malformed(f.path(), format!("{path} has shape {shape:?}, expected a matrix"))),
    };
    Array2::from_shape_vec((r, c), v).map_err(|e| malformed(f.path(), format!("{path}: {e}")))
}

/// Per-component floats: numbers or CaImAn's `|S32` texts.
fn read_floats(f: &H5File, path: &str) -> Result<std::result::Result<Vec<f64>, String>> {
    let info = f.dataset_info(path)?;
    if info.dtype.is_string() {
        let strs = f.read_strings(path)?;
        Ok(strs.iter().map(|s| parse_python_float(s).ok_or_else(|| format!("{path}: {s:?} is not a number"))).collect())
    } else {
        Ok(Ok(f.read_f64(path)?.1))
    }
}

fn read_csc(f: &H5File, path: &str) -> Result<CscMatrix> {
    let (_, shape) = f.read_i64(&format!("{path}/shape"))?;
    let bad = |msg: String| malformed(f.path(), format!("{path}: {msg}"));
    let to_usize = |v: Vec<i64>, what: &str| -> Result<Vec<usize>> {
        v.into_iter().map(|x| usize::try_from(x).map_err(|_| bad(format!("negative {what} {x}")))).collect()
    };
    let shape = to_usize(shape, "dimension")?;
    let [nrows, ncols] = shape[..] else {
        return Err(bad(format!("shape has {} entries, expected 2", shape.len())));
    };
    let indptr = to_usize(f.read_i64(&format!("{path}/indptr"))?.1, "indptr")?;
    let indices = to_usize(f.read_i64(&format!("{path}/indices"))?.1, "index")?;
    let data = f.read_f32(&format!("{path}/data"))?.1;
    CscMatrix::from_parts(nrows, ncols, indptr, indices, data).map_err(|e| bad(e.to_string()))
}

fn read_estimates(f: &H5File, base: &str, top_dims: Option<Dims>, warnings: &mut Vec<String>) -> Result<Estimates> {
    let p = |name: &str| format!("{base}/{name}");
    // A field that holds a value (present and not `None`).
    let has = |name: &str| -> Result<bool> {
        let q = p(name);
        Ok((f.is_dataset(&q) && !is_none(f, &q)?) || f.is_group(&q))
    };
    let dims = if has("dims")? {
        read_dims(f, &p("dims"))?
    } else {
        top_dims.ok_or_else(|| malformed(f.path(), format!("{base}/dims and /dims are missing")))?
    };
    let d = dims.pixels();
    let a = if f.is_group(&p("A")) {
        read_csc(f, &p("A"))?
    } else if has("A")? {
        // A dense footprint matrix (d × K).
        let m = read_matrix(f, &p("A"), false)?;
        CscMatrix::from_dense(m.mapv(|x| x as f32).view())
    } else {
        CscMatrix::zeros(d, 0)
    };
    let k = a.ncols();
    let f_bg = if has("f")? { Some(read_matrix(f, &p("f"), true)?) } else { None };
    let c = if has("C")? {
        read_matrix(f, &p("C"), true)?
    } else {
        Array2::zeros((k, f_bg.as_ref().map_or(0, |m| m.ncols())))
    };
    let t = c.ncols();
    let b = if has("b")? { read_matrix(f, &p("b"), false)?.mapv(|x| x as f32) } else { Array2::zeros((d, 0)) };
    let f_bg = f_bg.unwrap_or_else(|| Array2::zeros((b.ncols(), t)));
    let mut e = Estimates::new(dims, a, c, b, f_bg)?;

    let mut warn = |msg: String| warnings.push(msg);
    // Per-component K × T matrices.
    let kt = |name: &str, warn: &mut dyn FnMut(String)| -> Result<Option<Array2<f64>>> {
        if !has(name)? {
            return Ok(None);
        }
        let m = read_matrix(f, &p(name), true)?;
        if m.dim() == (k, t) {
            Ok(Some(m))
        } else {
            warn(format!("{base}/{name} has shape {:?}, expected ({k}, {t}): dropped", m.dim()));
            Ok(None)
        }
    };
    e.s = kt("S", &mut warn)?;
    e.yr_a = match kt("YrA", &mut warn)? {
        Some(m) => Some(m),
        None => kt("R", &mut warn)?,
    };
    e.f_dff = kt("F_dff", &mut warn)?;
    let per_comp = |name: &str, warn: &mut dyn FnMut(String)| -> Result<Option<Vec<f64>>> {
        if !has(name)? {
            return Ok(None);
        }
        match read_floats(f, &p(name))? {
            Ok(v) if v.len() == k => Ok(Some(v)),
            Ok(v) => {
                warn(format!("{base}/{name} has {} entries, expected {k}: dropped", v.len()));
                Ok(None)
            }
            Err(msg) => {
                warn(format!("{msg}: field dropped"));
                Ok(None)
            }
        }
    };
    e.bl = per_comp("bl", &mut warn)?;
    e.c1 = per_comp("c1", &mut warn)?;
    e.lam = per_comp("lam", &mut warn)?;
    e.neurons_sn = per_comp("neurons_sn", &mut warn)?;
    e.snr_comp = per_comp("SNR_comp", &mut warn)?;
    e.r_values = per_comp("r_values", &mut warn)?;
    if has("sn")? {
        let v = f.read_f64(&p("sn"))?.1;
        if v.len() == d {
            e.sn = Some(v);
        } else {
            warn(format!("{base}/sn has {} entries, expected {d} pixels: dropped", v.len()));
        }
    }
    if has("g")? {
        let (shape, v) = f.read_f64(&p("g"))?;
        e.g = match shape.as_slice() {
            // CaImAn's `g = None` is saved as 0.
            [] => None,
            [n] if *n == k => Some(v.into_iter().map(|x| vec![x]).collect()),
            [n, 0] if *n == k => Some(vec![Vec::new(); k]),
            [n, order] if *n == k => Some(v.chunks(*order).map(<[f64]>::to_vec).collect()),
            _ => {
                warn(format!("{base}/g has shape {shape:?}, expected ({k}, p): dropped"));
                None
            }
        };
    }
    if has("center")? {
        let m = read_matrix(f, &p("center"), true)?;
        if m.nrows() == k {
            e.center = Some(m);
        } else {
            warn(format!("{base}/center has {} rows, expected {k}: dropped", m.nrows()));
        }
    }
    let indices = |name: &str, warn: &mut dyn FnMut(String)| -> Result<Option<Vec<usize>>> {
        if !has(name)? {
            return Ok(None);
        }
        let v = f.read_i64(&p(name))?.1;
        match v.iter().map(|&i| usize::try_from(i).ok().filter(|&u| u < k)).collect::<Option<Vec<usize>>>() {
            Some(u) => Ok(Some(u)),
            None => {
                warn(format!("{base}/{name} holds indices outside 0..{k}: dropped"));
                Ok(None)
            }
        }
    };
    e.idx_components = indices("idx_components", &mut warn)?;
    e.idx_components_bad = indices("idx_components_bad", &mut warn)?;
    if f.is_group(&p("discarded_components")) {
        let mut inner = Vec::new();
        let disc = read_estimates(f, &p("discarded_components"), Some(dims), &mut inner)?;
        warnings.extend(inner);
        e.discarded = Some(Box::new(disc));
    }
    // Fields not modelled here: warn when the file holds a value there.
    const READ: [&str; 22] = [
        "A",
        "C",
        "S",
        "YrA",
        "R",
        "F_dff",
        "b",
        "f",
        "sn",
        "g",
        "bl",
        "c1",
        "lam",
        "neurons_sn",
        "center",
        "SNR_comp",
        "r_values",
        "idx_components",
        "idx_components_bad",
        "dims",
        "nr",
        "discarded_components",
    ];
    let mut names = f.datasets_in(base)?;
    names.extend(f.groups_in(base)?);
    for name in names {
        if READ.contains(&name.as_str()) || !has(&name)? {
            continue;
        }
        if name == "shifts" && f.dataset_info(&p("shifts"))?.is_empty() {
            continue;
        }
        let why = if UNMODELLED_ESTIMATES_FIELDS.contains(&name.as_str()) || name == "shifts" {
            "not modelled by this port"
        } else {
            "unknown field"
        };
        warnings.push(format!("{base}/{name} holds a value but is ignored ({why})"));
    }
    Ok(e)
}
