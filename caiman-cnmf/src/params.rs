//! CaImAn's complete parameter system: `caiman/source_extraction/cnmf/params.py`, class
//! `CNMFParams` (catalog §0.3, defaults §4.11, §6.1, §8.1, motion §2.1).
//!
//! [`CnmfParams`] holds one serde struct per CaImAn group — `data`, `init`, `merging`, `motion`
//! (the [`caiman_motion::MotionParams`] of `caiman-motion`), `online`, `patch`, `preprocess`,
//! `ring_CNN`, `quality`, `spatial`, `temporal` — with every key under CaImAn's exact name, type
//! and default (the code value where CaImAn's docstring disagrees: `temporal.bas_nonneg = false`,
//! `patch.remove_very_bad_comps = false`, `motion.overlaps = (32, 32)`,
//! `online.movie_name_online = 'online_movie.mp4'`, the six accepted `method_init` spellings).
//!
//! * [`CnmfParams::default`] is the state of CaImAn's constructor *before* its first
//!   `check_consistency()`: the derived keys `init.gSiz`, `online.N_samples_exceptionality` and
//!   `online.thresh_fitness_raw` are `None`, `data.last_commit` is `None`.
//!   [`CnmfParams::new`] runs [`CnmfParams::check_consistency`] on it and equals
//!   `CNMFParams().to_json()` value by value except the machine-dependent `data.caiman_version`
//!   (here `caiman-rs <version>`), `data.last_commit` (here `caiman-rs-<version>`) and the data
//!   directory in `online.path_to_model` (see [`caiman_datadir`]).
//! * [`CnmfParams::from_caiman_json`] / [`CnmfParams::change_params`] reproduce
//!   `CNMFParams(params_from_file=...)` / `change_params(dict)`: nested group dicts, legacy flat
//!   keys (copied into every group that has the key; `nb` only into `init`), unknown keys
//!   reported as warnings, wrong types as [`ParamsError::WrongType`] naming `group.key`, then
//!   `check_consistency()` and [`CnmfParams::validate`].
//! * [`CnmfParams::to_caiman_json`] writes CaImAn's nested `to_json()` layout (same group and key
//!   order, Python's `", "`/`": "` separators) with the non-standard `Infinity` token for the two
//!   infinite online defaults, exactly as Python's `json.dumps` does, so CaImAn reads them back
//!   as floats. [`CnmfParams::to_strict_json`] writes strict JSON with the strings
//!   `"Infinity"`/`"-Infinity"`/`"NaN"` instead. Loading accepts both spellings.
//!
//! Differences from CaImAn (decided, see catalog \[Q\] markers):
//! * **\[Q\] `max_shifts_online` is not divided in place.** CaImAn's `check_consistency()` runs
//!   `max_shifts_online = int(max_shifts_online / ds_factor)` on every call, so each
//!   `change_params` with `ds_factor > 1` divides again and a saved-then-loaded file is divided
//!   twice. Here the stored value is the user's; [`CnmfParams::max_shifts_online`] gives the
//!   effective `int(max_shifts_online / ds_factor)`. With `ds_factor = 1` (every CaImAn demo)
//!   both agree.
//! * **\[Q\] `movie_name_online` is moved next to the data file only while it is a bare file
//!   name**; CaImAn prefixes the directory again on every call.
//! * **\[Q\] `rf ≤ gSiz[0]`**: CaImAn logs that it changes `rf` to `2·gSiz[0]` but does not; here
//!   the warning says truthfully that `rf` is kept (behaviour reproduced, message fixed).
//! * `spatial.nb` and `temporal.nb` are copies of `init.nb` (CaImAn 1.12.1: `nb` may only be set
//!   under `init`); a different value given for them is overwritten with a warning.
//! * `check_consistency` needs the movie length for `motion.splits_rig/els`; it takes it as an
//!   argument ([`CnmfParams::check_consistency_with_files`] reads it from `data.fnames[0]`).
//! * `decay_time == 0` is rejected by `check_consistency`/`validate` (CaImAn: constructor).
//! * Flat keys are applied before nested groups (CaImAn applies the dict in insertion order; the
//!   two only differ for a file that sets the same key both ways).
//! * `init.gSig` is real-valued (`[-1, -1]` = CaImAn's "unset" sentinel); a derived `gSiz` is
//!   `round(2·gSig + 1)`, then made odd as in CaImAn.
//! * Callables and free-form objects CaImAn may hold (`ring_CNN.lr_scheduler`,
//!   `init.options_local_NMF`) are kept as JSON values; arrays (`spatial.expandCore`, `se`, `ss`,
//!   `init.kernel`) as [`NdArray`] (nested lists of any depth).
//!
//! The structs use flexible JSON forms (scalar-or-list, bool-or-int) and are meant for JSON, not
//! for postcard task payloads: tasks should carry the individual values they need.

use std::io;
use std::path::{Path, PathBuf};

use caiman_motion::MotionParams;
use caiman_motion::params::{IndexSlice, normalize_nonfinite_tokens};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// CaImAn's group names in `to_json()` order.
pub const GROUP_NAMES: [&str; 11] = [
    "data",
    "init",
    "merging",
    "motion",
    "online",
    "patch",
    "preprocess",
    "ring_CNN",
    "quality",
    "spatial",
    "temporal",
];

/// An invalid parameter set.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// The text is not JSON (or not a JSON object).
    #[error("parameter JSON could not be parsed: {0}")]
    Syntax(String),
    /// A key holds a value of the wrong JSON type (`key` is `group.key`).
    #[error("parameter `{key}` has the wrong type: {message}")]
    WrongType {
        /// CaImAn's `group.key`.
        key: String,
        /// What was expected and found.
        message: String,
    },
    /// A key holds a value outside its domain (`key` is `group.key`).
    #[error("invalid value for parameter `{key}`: {reason}")]
    Invalid {
        /// CaImAn's `group.key`.
        key: String,
        /// Why the value was rejected.
        reason: String,
    },
}

impl ParamsError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Self::Invalid { key: key.to_owned(), reason: reason.into() }
    }

    /// CaImAn's `group.key` the error is about (`<root>` for a syntax error).
    pub fn key(&self) -> &str {
        match self {
            Self::Syntax(_) => "<root>",
            Self::WrongType { key, .. } | Self::Invalid { key, .. } => key,
        }
    }
}

impl From<ParamsError> for crate::Error {
    fn from(e: ParamsError) -> Self {
        crate::Error::InvalidParam(e.to_string())
    }
}

/// CaImAn's data directory (`caiman.paths.caiman_datadir()`): `$CAIMAN_DATA`, else
/// `$HOME/caiman_data`.
pub fn caiman_datadir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIMAN_DATA") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("caiman_data"), |h| PathBuf::from(h).join("caiman_data"))
}

// ------------------------------------------------------------------------------------------
// Value types
// ------------------------------------------------------------------------------------------

/// A CaImAn array parameter (a numpy array, written as nested lists): C-order data and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray<T> {
    /// Shape (numpy order).
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<T>,
}

impl<T: Clone> NdArray<T> {
    /// A `rows × cols` array from rows.
    ///
    /// # Panics
    /// If the rows have different lengths.
    pub fn from_rows(rows: &[&[T]]) -> Self {
        let cols = rows.first().map_or(0, |r| r.len());
        assert!(rows.iter().all(|r| r.len() == cols), "ragged rows");
        Self { shape: vec![rows.len(), cols], data: rows.iter().flat_map(|r| r.iter().cloned()).collect() }
    }
}

struct Nested<'a, T> {
    shape: &'a [usize],
    data: &'a [T],
}

impl<T: Serialize> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let Some((&n, rest)) = self.shape.split_first() else {
            return match self.data.first() {
                Some(v) => v.serialize(s),
                None => s.serialize_none(),
            };
        };
        let stride: usize = rest.iter().product();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            let lo = (i * stride).min(self.data.len());
            let hi = ((i + 1) * stride).min(self.data.len());
            seq.serialize_element(&Nested { shape: rest, data: &self.data[lo..hi] })?;
        }
        seq.end()
    }
}

impl<T: Serialize> Serialize for NdArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Nested { shape: &self.shape, data: &self.data }.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for NdArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = Value::deserialize(d)?;
        let mut shape = Vec::new();
        let mut cur = &v;
        while let Value::Array(a) = cur {
            shape.push(a.len());
            match a.first() {
                Some(x) => cur = x,
                None => break,
            }
        }
        let mut data = Vec::with_capacity(shape.iter().product());
        fn walk<T: DeserializeOwned>(v: &Value, shape: &[usize], out: &mut Vec<T>) -> Result<(), String> {
            match (shape.split_first(), v) {
                (Some((&n, rest)), Value::Array(a)) => {
                    if a.len() != n {
                        return Err(format!("ragged nested list: expected {n} entries, got {}", a.len()));
                    }
                    a.iter().try_for_each(|x| walk(x, rest, out))
                }
                (Some(_), other) => Err(format!("ragged nested list: expected a list, got {other}")),
                (None, Value::Array(_)) => Err("ragged nested list: unexpected extra nesting".to_owned()),
                (None, leaf) => {
                    out.push(T::deserialize(leaf).map_err(|e| e.to_string())?);
                    Ok(())
                }
            }
        }
        walk(&v, &shape, &mut data).map_err(D::Error::custom)?;
        Ok(Self { shape, data })
    }
}

/// A per-axis size given either as one number for every axis or as one number per axis
/// (CaImAn's `rf` and `stride` accept both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerAxis {
    /// The same value on every axis.
    All(usize),
    /// One value per axis.
    Each(Vec<usize>),
}

impl PerAxis {
    /// The value on `axis` (the last given value for an axis beyond the list).
    pub fn get(&self, axis: usize) -> usize {
        match self {
            Self::All(v) => *v,
            Self::Each(v) => v.get(axis).or(v.last()).copied().unwrap_or(0),
        }
    }

    fn values(&self) -> Vec<usize> {
        match self {
            Self::All(v) => vec![*v],
            Self::Each(v) => v.clone(),
        }
    }
}

impl Serialize for PerAxis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All(v) => v.serialize(s),
            Self::Each(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PerAxis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(d)? {
            v @ Value::Number(_) => usize::deserialize(v).map(Self::All).map_err(D::Error::custom),
            v @ Value::Array(_) => Vec::<usize>::deserialize(v).map(Self::Each).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("invalid type: {other}, expected an integer or a list of integers"))),
        }
    }
}

/// f64 that may be non-finite: read from numbers or the strings `"Infinity"`, `"-Infinity"`,
/// `"NaN"` (what [`normalize_nonfinite_tokens`] makes of Python's tokens); written as a number
/// when finite, else as that string.
mod nonfinite_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Str(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(v),
            Repr::Str(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" | "inf" => Ok(f64::INFINITY),
                "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("invalid type: string \"{other}\", expected a number"))),
            },
        }
    }
}

/// `usize` that also accepts Python booleans (`False` = 0, `True` = 1); 0 is written as
/// `false` (CaImAn's default spelling of `optimize_g`).
mod bool_or_usize {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
        if *v == 0 { s.serialize_bool(false) } else { s.serialize_u64(*v as u64) }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bool(bool),
            Int(u64),
            Other(serde_json::Value),
        }
        match Repr::deserialize(d)? {
            Repr::Bool(b) => Ok(usize::from(b)),
            Repr::Int(v) => Ok(v as usize),
            Repr::Other(v) => Err(serde::de::Error::custom(format!(
                "invalid type: {v}, expected a boolean or a non-negative integer"
            ))),
        }
    }
}

/// `Option<Vec<String>>` that also accepts one string (CaImAn turns `fnames: str` into a list).
mod string_or_list {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(String),
            Many(Vec<String>),
            Other(serde_json::Value),
        }
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::One(s)) => Ok(Some(vec![s])),
            Some(Repr::Many(v)) => Ok(Some(v)),
            Some(Repr::Other(v)) => Err(serde::de::Error::custom(format!(
                "invalid type: {v}, expected a file name or a list of file names"
            ))),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Enumerated strings
// ------------------------------------------------------------------------------------------

/// PSD averaging of the noise estimate (`noise_method`): the kernels' own enum (`'mean'`,
/// `'median'`, `'logmexp'`). CNMF's groups set `'mean'` explicitly.
pub use crate::noise::NoiseMethod;

/// Initialisation method (`init.method_init`; the six spellings CaImAn's code accepts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodInit {
    /// `'greedy_roi'` (default, 2p).
    #[default]
    GreedyRoi,
    /// `'corr_pnr'` (CNMF-E, 1p).
    CorrPnr,
    /// `'sparse_nmf'`.
    SparseNmf,
    /// `'compressed_nmf'`.
    CompressedNmf,
    /// `'graph_nmf'`.
    GraphNmf,
    /// `'pca_ica'`.
    PcaIca,
}

/// Graph-NMF affinity kernel (`init.SC_kernel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScKernel {
    /// `'heat'` (default).
    #[default]
    Heat,
    /// `'cos'`.
    Cos,
    /// `'binary'`.
    Binary,
}

/// CNMF-E seed selection (`init.seed_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedMethod {
    /// `'auto'` (default).
    #[default]
    Auto,
    /// `'manual'`.
    Manual,
    /// `'semi'`.
    Semi,
}

/// Footprint thresholding (`spatial.thr_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrMethod {
    /// `'nrg'`: keep the pixels holding `nrgthr` of the energy (default).
    #[default]
    Nrg,
    /// `'max'`: keep pixels above `maxthr · max`.
    Max,
}

/// Footprint support expansion (`spatial.method_exp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodExp {
    /// `'dilate'` (default).
    #[default]
    Dilate,
    /// `'ellipse'`.
    Ellipse,
}

/// Spatial regression (`spatial.method_ls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MethodLs {
    /// `'lasso_lars'` (default).
    #[default]
    #[serde(rename = "lasso_lars")]
    LassoLars,
    /// `'nnls_L0'`.
    #[serde(rename = "nnls_L0")]
    NnlsL0,
}

/// Deconvolution solver (`temporal.method_deconvolution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodDeconvolution {
    /// `'oasis'` (default).
    #[default]
    Oasis,
    /// `'cvxpy'`.
    Cvxpy,
    /// `'cvx'`.
    Cvx,
}

/// OnACID initialisation (`online.init_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnlineInitMethod {
    /// `'bare'` (default).
    #[default]
    Bare,
    /// `'cnmf'`.
    Cnmf,
    /// `'seeded'`.
    Seeded,
}

/// Ring-CNN loss (`ring_CNN.loss_fn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossFn {
    /// `'pct'`: quantile loss (default).
    #[default]
    Pct,
    /// `'mse'`.
    Mse,
}

// ------------------------------------------------------------------------------------------
// Groups
// ------------------------------------------------------------------------------------------

/// `CNMFParams.data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataParams {
    /// Movie files (`fnames`, default `None`; one string is read as a one-element list).
    #[serde(deserialize_with = "string_or_list::deserialize")]
    pub fnames: Option<Vec<String>>,
    /// Field of view in pixels (`dims`, default `None`: from the files).
    pub dims: Option<Vec<usize>>,
    /// Frame rate in Hz (`fr`, default 30).
    pub fr: f64,
    /// Typical transient length in s (`decay_time`, default 0.4).
    pub decay_time: f64,
    /// Resolution in pixels per µm (`dxy`, default `(1, 1)`; stored, never read).
    pub dxy: Vec<f64>,
    /// HDF5 dataset name (`var_name_hdf5`, default `'mov'`).
    pub var_name_hdf5: String,
    /// Version of the software (`caiman_version`; here `caiman-rs <version>`).
    pub caiman_version: String,
    /// Build identification (`last_commit`; set by `check_consistency`).
    pub last_commit: Option<String>,
}

impl Default for DataParams {
    fn default() -> Self {
        Self {
            fnames: None,
            dims: None,
            fr: 30.0,
            decay_time: 0.4,
            dxy: vec![1.0, 1.0],
            var_name_hdf5: "mov".to_owned(),
            caiman_version: concat!("caiman-rs ", env!("CARGO_PKG_VERSION")).to_owned(),
            last_commit: None,
        }
    }
}

/// `CNMFParams.init`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InitParams {
    /// Components per patch or FOV (`K`, default 30; `None` for CNMF-E's unbounded search).
    #[serde(rename = "K")]
    pub k: Option<usize>,
    /// Graph-NMF kernel (`SC_kernel`, default `'heat'`).
    #[serde(rename = "SC_kernel")]
    pub sc_kernel: ScKernel,
    /// Graph-NMF kernel width (`SC_sigma`, default 1).
    #[serde(rename = "SC_sigma")]
    pub sc_sigma: f64,
    /// Affinity threshold (`SC_thr`, default 0).
    #[serde(rename = "SC_thr")]
    pub sc_thr: f64,
    /// Standardise before the affinity (`SC_normalize`, default true).
    #[serde(rename = "SC_normalize")]
    pub sc_normalize: bool,
    /// Nearest-neighbour affinity (`SC_use_NN`, default false).
    #[serde(rename = "SC_use_NN")]
    pub sc_use_nn: bool,
    /// Neighbours (`SC_nnn`, default 20).
    #[serde(rename = "SC_nnn")]
    pub sc_nnn: usize,
    /// Sparse-NMF sparsity weight (`alpha_snmf`, default 0.5).
    pub alpha_snmf: f64,
    /// 1p processing mode (`center_psf`, default false).
    pub center_psf: bool,
    /// Neuron half-size (`gSig`, default `[5, 5]`; `None` → `[-1, -1]` in `check_consistency`).
    #[serde(rename = "gSig")]
    pub gsig: Option<Vec<f64>>,
    /// Neuron bounding box (`gSiz`; derived `2·gSig + 1`, forced odd).
    #[serde(rename = "gSiz")]
    pub gsiz: Option<Vec<i64>>,
    /// sklearn NMF initialisation inside greedy ROI (`greedyroi_nmf_init_method`, default
    /// `'nndsvdar'`).
    pub greedyroi_nmf_init_method: String,
    /// NMF iterations inside greedy ROI (`greedyroi_nmf_max_iter`, default 200).
    pub greedyroi_nmf_max_iter: usize,
    /// CNMF-E initialisation iterations (`init_iter`, default 2).
    pub init_iter: usize,
    /// User template for greedy ROI (`kernel`, default `None`).
    pub kernel: Option<NdArray<f64>>,
    /// Graph-NMF regularisation (`lambda_gnmf`, default 1).
    pub lambda_gnmf: f64,
    /// Sparse-NMF l1 ratio (`snmf_l1_ratio`, default 0).
    pub snmf_l1_ratio: f64,
    /// HALS iterations (`maxIter`, default 5).
    #[serde(rename = "maxIter")]
    pub max_iter: usize,
    /// Sparse-NMF iterations (`max_iter_snmf`, default 500).
    pub max_iter_snmf: usize,
    /// Initialisation method (`method_init`, default `'greedy_roi'`).
    pub method_init: MethodInit,
    /// CNMF-E minimum local correlation (`min_corr`, default 0.85).
    pub min_corr: f64,
    /// CNMF-E minimum peak-to-noise ratio (`min_pnr`, default 20).
    pub min_pnr: f64,
    /// Greedy-ROI rank-1 refinement iterations (`nIter`, default 5).
    #[serde(rename = "nIter")]
    pub n_iter: usize,
    /// Global background components (`nb`, default 1; 0 / −1 have special meanings).
    pub nb: i64,
    /// Equalise the movie during initialisation (`normalize_init`, default true).
    pub normalize_init: bool,
    /// Options of the local-NMF initialiser (`options_local_NMF`, default `None`).
    #[serde(rename = "options_local_NMF")]
    pub options_local_nmf: Option<Value>,
    /// Sparse-NMF baseline percentile (`perc_baseline_snmf`, default 20).
    pub perc_baseline_snmf: f64,
    /// CNMF-E ring radius in units of gSig (`ring_size_factor`, default 1.5).
    pub ring_size_factor: Option<f64>,
    /// Rolling-sum window (`rolling_length`, default 100).
    pub rolling_length: usize,
    /// Rolling sum for greedy ROI (`rolling_sum`, default true).
    pub rolling_sum: bool,
    /// CNMF-E seeding (`seed_method`, default `'auto'`).
    pub seed_method: SeedMethod,
    /// Sparse-NMF smoothing (`sigma_smooth_snmf`, default `(0.5, 0.5, 0.5)`).
    pub sigma_smooth_snmf: Vec<f64>,
    /// Spatial downsampling (`ssub`, default 2).
    pub ssub: usize,
    /// CNMF-E background downsampling (`ssub_B`, default 2).
    #[serde(rename = "ssub_B")]
    pub ssub_b: usize,
    /// Temporal downsampling (`tsub`, default 2).
    pub tsub: usize,
}

impl Default for InitParams {
    fn default() -> Self {
        Self {
            k: Some(30),
            sc_kernel: ScKernel::Heat,
            sc_sigma: 1.0,
            sc_thr: 0.0,
            sc_normalize: true,
            sc_use_nn: false,
            sc_nnn: 20,
            alpha_snmf: 0.5,
            center_psf: false,
            gsig: Some(vec![5.0, 5.0]),
            gsiz: None,
            greedyroi_nmf_init_method: "nndsvdar".to_owned(),
            greedyroi_nmf_max_iter: 200,
            init_iter: 2,
            kernel: None,
            lambda_gnmf: 1.0,
            snmf_l1_ratio: 0.0,
            max_iter: 5,
            max_iter_snmf: 500,
            method_init: MethodInit::GreedyRoi,
            min_corr: 0.85,
            min_pnr: 20.0,
            n_iter: 5,
            nb: 1,
            normalize_init: true,
            options_local_nmf: None,
            perc_baseline_snmf: 20.0,
            ring_size_factor: Some(1.5),
            rolling_length: 100,
            rolling_sum: true,
            seed_method: SeedMethod::Auto,
            sigma_smooth_snmf: vec![0.5, 0.5, 0.5],
            ssub: 2,
            ssub_b: 2,
            tsub: 2,
        }
    }
}

/// `CNMFParams.merging`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MergingParams {
    /// Merge components (`do_merge`, default true).
    pub do_merge: bool,
    /// Trace correlation threshold (`merge_thr`, default 0.8).
    pub merge_thr: f64,
    /// Merge in parallel (`merge_parallel`, default false).
    pub merge_parallel: bool,
}

impl Default for MergingParams {
    fn default() -> Self {
        Self { do_merge: true, merge_thr: 0.8, merge_parallel: false }
    }
}

/// `CNMFParams.online` (OnACID, catalog §8.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineParams {
    /// Exceptionality window (`N_samples_exceptionality`; derived `ceil(fr·decay_time)`).
    #[serde(rename = "N_samples_exceptionality")]
    pub n_samples_exceptionality: Option<usize>,
    /// Mini-batch sufficient statistics (`batch_update_suff_stat`, default false).
    pub batch_update_suff_stat: bool,
    /// Distributed shape updates (`dist_shape_update`, default false).
    pub dist_shape_update: bool,
    /// Spatial downsampling (`ds_factor`, default 1).
    pub ds_factor: f64,
    /// Passes over the data (`epochs`, default 1).
    pub epochs: usize,
    /// Preallocated components (`expected_comps`, default 500).
    pub expected_comps: usize,
    /// Full XXᵀ for 1p ring statistics (`full_XXt`, default false).
    #[serde(rename = "full_XXt")]
    pub full_xxt: bool,
    /// Frames used for initialisation (`init_batch`, default 200).
    pub init_batch: usize,
    /// Initialisation (`init_method`, default `'bare'`).
    pub init_method: OnlineInitMethod,
    /// BCD sweeps per shape update (`iters_shape`, default 5).
    pub iters_shape: usize,
    /// Above this many components only rarely updated ones are updated
    /// (`max_comp_update_shape`, default ∞).
    #[serde(with = "nonfinite_f64")]
    pub max_comp_update_shape: f64,
    /// Allocation bound for new components per frame (`max_num_added`, default 5).
    pub max_num_added: usize,
    /// Maximum online rigid shift before downsampling (`max_shifts_online`, default 10; see
    /// [`CnmfParams::max_shifts_online`]).
    pub max_shifts_online: usize,
    /// Trace SNR threshold for new components (`min_SNR`, default 2.5).
    #[serde(rename = "min_SNR")]
    pub min_snr: f64,
    /// Candidates tested per frame (`min_num_trial`, default 5).
    pub min_num_trial: usize,
    /// Residual buffer length (`minibatch_shape`, default 100).
    pub minibatch_shape: usize,
    /// Sufficient-statistics lag (`minibatch_suff_stat`, default 5).
    pub minibatch_suff_stat: usize,
    /// Correct motion frame by frame (`motion_correct`, default true).
    pub motion_correct: bool,
    /// Output movie name (`movie_name_online`, default `'online_movie.mp4'`).
    pub movie_name_online: String,
    /// Normalise frames (`normalize`, default false).
    pub normalize: bool,
    /// OASIS pools to refit (`n_refit`, default 0).
    pub n_refit: usize,
    /// Update-count bound (`num_times_comp_updated`, default ∞).
    #[serde(with = "nonfinite_f64")]
    pub num_times_comp_updated: f64,
    /// FourCC codec of the saved movie (`opencv_codec`, default `'H264'`).
    pub opencv_codec: String,
    /// Online CNN model (`path_to_model`, default `<caiman_data>/model/cnn_model_online.h5`).
    pub path_to_model: Option<String>,
    /// Ring-CNN background (`ring_CNN`, default false).
    #[serde(rename = "ring_CNN")]
    pub ring_cnn: bool,
    /// Space-correlation threshold for candidates (`rval_thr`, default 0.8).
    pub rval_thr: f64,
    /// Save the online movie (`save_online_movie`, default false).
    pub save_online_movie: bool,
    /// Show the movie (`show_movie`, default false).
    pub show_movie: bool,
    /// Demix and deconvolve jointly (`simultaneously`, default false).
    pub simultaneously: bool,
    /// Screen candidates with the CNN (`sniper_mode`, default false).
    pub sniper_mode: bool,
    /// Stop detection in the last epoch (`stop_detection`, default false).
    pub stop_detection: bool,
    /// Use both CNN and rval (`test_both`, default false).
    pub test_both: bool,
    /// Online CNN acceptance threshold (`thresh_CNN_noisy`, default 0.5).
    #[serde(rename = "thresh_CNN_noisy")]
    pub thresh_cnn_noisy: f64,
    /// Derivative trace test threshold (`thresh_fitness_delta`, default −50).
    pub thresh_fitness_delta: f64,
    /// Trace test threshold (`thresh_fitness_raw`; derived `log Φ(−min_SNR)·N`).
    pub thresh_fitness_raw: Option<f64>,
    /// Duplicate-overlap threshold (`thresh_overlap`, default 0.5).
    pub thresh_overlap: f64,
    /// Shape update period (`update_freq`, default 200).
    pub update_freq: usize,
    /// Search for new components (`update_num_comps`, default true).
    pub update_num_comps: bool,
    /// Correlation × PNR score image (`use_corr_img`, default false).
    pub use_corr_img: bool,
    /// Dense copy of the footprints (`use_dense`, default true).
    pub use_dense: bool,
    /// Candidates at local peaks (`use_peak_max`, default true).
    pub use_peak_max: bool,
    /// W update period factor (`W_update_factor`, default 1).
    #[serde(rename = "W_update_factor")]
    pub w_update_factor: usize,
}

impl Default for OnlineParams {
    fn default() -> Self {
        Self {
            n_samples_exceptionality: None,
            batch_update_suff_stat: false,
            dist_shape_update: false,
            ds_factor: 1.0,
            epochs: 1,
            expected_comps: 500,
            full_xxt: false,
            init_batch: 200,
            init_method: OnlineInitMethod::Bare,
            iters_shape: 5,
            max_comp_update_shape: f64::INFINITY,
            max_num_added: 5,
            max_shifts_online: 10,
            min_snr: 2.5,
            min_num_trial: 5,
            minibatch_shape: 100,
            minibatch_suff_stat: 5,
            motion_correct: true,
            movie_name_online: "online_movie.mp4".to_owned(),
            normalize: false,
            n_refit: 0,
            num_times_comp_updated: f64::INFINITY,
            opencv_codec: "H264".to_owned(),
            path_to_model: Some(
                caiman_datadir().join("model").join("cnn_model_online.h5").to_string_lossy().into_owned(),
            ),
            ring_cnn: false,
            rval_thr: 0.8,
            save_online_movie: false,
            show_movie: false,
            simultaneously: false,
            sniper_mode: false,
            stop_detection: false,
            test_both: false,
            thresh_cnn_noisy: 0.5,
            thresh_fitness_delta: -50.0,
            thresh_fitness_raw: None,
            thresh_overlap: 0.5,
            update_freq: 200,
            update_num_comps: true,
            use_corr_img: false,
            use_dense: true,
            use_peak_max: true,
            w_update_factor: 1,
        }
    }
}

/// `CNMFParams.patch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PatchParams {
    /// Pixels excluded at the border (`border_pix`, default 0).
    pub border_pix: usize,
    /// Delete duplicates in overlaps instead of merging (`del_duplicates`, default false).
    pub del_duplicates: bool,
    /// Load patches in memory (`in_memory`, default true).
    pub in_memory: bool,
    /// Low-rank background (`low_rank_background`, default true; `None` when `nb ≤ 0`).
    pub low_rank_background: Option<bool>,
    /// Memory scaling (`memory_fact`, default 1).
    pub memory_fact: f64,
    /// Processes for the patches (`n_processes`, default 1).
    pub n_processes: usize,
    /// Background components per patch (`nb_patch`, default 1).
    pub nb_patch: i64,
    /// Run only the initialisation in patches (`only_init`, default true).
    pub only_init: bool,
    /// AR order inside patches (`p_patch`, default 0).
    pub p_patch: usize,
    /// Remove very bad components in patches (`remove_very_bad_comps`, default false — the
    /// code value; the docstring says true).
    pub remove_very_bad_comps: bool,
    /// Patch half-size (`rf`, default `None` = no patches).
    pub rf: Option<PerAxis>,
    /// Skip refinement (`skip_refinement`, default false).
    pub skip_refinement: bool,
    /// Spatial downsampling (`p_ssub`, default 2; stored, never read).
    pub p_ssub: f64,
    /// Patch overlap (`stride`, default `None`).
    pub stride: Option<PerAxis>,
    /// Temporal downsampling (`p_tsub`, default 2; stored, never read).
    pub p_tsub: f64,
}

impl Default for PatchParams {
    fn default() -> Self {
        Self {
            border_pix: 0,
            del_duplicates: false,
            in_memory: true,
            low_rank_background: Some(true),
            memory_fact: 1.0,
            n_processes: 1,
            nb_patch: 1,
            only_init: true,
            p_patch: 0,
            remove_very_bad_comps: false,
            rf: None,
            skip_refinement: false,
            p_ssub: 2.0,
            stride: None,
            p_tsub: 2.0,
        }
    }
}

/// `CNMFParams.preprocess`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessParams {
    /// Check for NaNs (`check_nan`, default true).
    pub check_nan: bool,
    /// Estimate a global time constant (`compute_g`, default false).
    pub compute_g: bool,
    /// Use noise values when estimating g (`include_noise`, default false).
    pub include_noise: bool,
    /// Autocovariance lags (`lags`, default 5).
    pub lags: usize,
    /// PSD chunk size (`max_num_samples_fft`, default 3072).
    pub max_num_samples_fft: usize,
    /// Pixels per process (`n_pixels_per_process`, default `None`).
    pub n_pixels_per_process: Option<usize>,
    /// PSD averaging (`noise_method`, default `'mean'`).
    pub noise_method: NoiseMethod,
    /// Normalised frequency range of the PSD (`noise_range`, default `[0.25, 0.5]`).
    pub noise_range: Vec<f64>,
    /// AR order (`p`, default 2).
    pub p: usize,
    /// Pixels excluded for saturation (`pixels`, default `None`).
    pub pixels: Option<Vec<usize>>,
    /// Per-pixel noise (`sn`, default `None`).
    pub sn: Option<Vec<f64>>,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        Self {
            check_nan: true,
            compute_g: false,
            include_noise: false,
            lags: 5,
            max_num_samples_fft: 3 * 1024,
            n_pixels_per_process: None,
            noise_method: NoiseMethod::Mean,
            noise_range: vec![0.25, 0.5],
            p: 2,
            pixels: None,
            sn: None,
        }
    }
}

/// `CNMFParams.ring_CNN`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RingCnnParams {
    /// Ring kernels (`n_channels`, default 2).
    pub n_channels: usize,
    /// Bias in the convolutions (`use_bias`, default false).
    pub use_bias: bool,
    /// Additive layer (`use_add`, default false).
    pub use_add: bool,
    /// Quantile of the loss (`pct`, default 0.01).
    pub pct: f64,
    /// Early-stopping patience (`patience`, default 3).
    pub patience: usize,
    /// Maximum epochs (`max_epochs`, default 100).
    pub max_epochs: usize,
    /// Ring width (`width`, default 5).
    pub width: usize,
    /// Loss (`loss_fn`, default `'pct'`).
    pub loss_fn: LossFn,
    /// Learning rate (`lr`, default 1e-3).
    pub lr: f64,
    /// Learning-rate scheduler (`lr_scheduler`, default `None`; a Python callable in CaImAn).
    pub lr_scheduler: Option<Value>,
    /// Saved weights (`path_to_model`, default `None`).
    pub path_to_model: Option<String>,
    /// Remove the last frame's activity first (`remove_activity`, default false).
    pub remove_activity: bool,
    /// Reuse a trained model (`reuse_model`, default false).
    pub reuse_model: bool,
}

impl Default for RingCnnParams {
    fn default() -> Self {
        Self {
            n_channels: 2,
            use_bias: false,
            use_add: false,
            pct: 0.01,
            patience: 3,
            max_epochs: 100,
            width: 5,
            loss_fn: LossFn::Pct,
            lr: 1e-3,
            lr_scheduler: None,
            path_to_model: None,
            remove_activity: false,
            reuse_model: false,
        }
    }
}

/// `CNMFParams.quality` (catalog §6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityParams {
    /// Reject below this SNR whatever else (`SNR_lowest`, default 0.5).
    #[serde(rename = "SNR_lowest")]
    pub snr_lowest: f64,
    /// Reject below this CNN score (`cnn_lowest`, default 0.1).
    pub cnn_lowest: f64,
    /// gSig scales for the CNN (`gSig_range`, default `None`).
    #[serde(rename = "gSig_range")]
    pub gsig_range: Option<Vec<f64>>,
    /// Accept above this SNR (`min_SNR`, default 2.5).
    #[serde(rename = "min_SNR")]
    pub min_snr: f64,
    /// Accept above this CNN score (`min_cnn_thr`, default 0.9).
    pub min_cnn_thr: f64,
    /// Reject below this space correlation (`rval_lowest`, default −1).
    pub rval_lowest: f64,
    /// Accept above this space correlation (`rval_thr`, default 0.8).
    pub rval_thr: f64,
    /// Use the CNN (`use_cnn`, default true).
    pub use_cnn: bool,
    /// Eccentricity filter (`use_ecc`, default false).
    pub use_ecc: bool,
    /// Maximum eccentricity (`max_ecc`, default 3).
    pub max_ecc: f64,
}

impl Default for QualityParams {
    fn default() -> Self {
        Self {
            snr_lowest: 0.5,
            cnn_lowest: 0.1,
            gsig_range: None,
            min_snr: 2.5,
            min_cnn_thr: 0.9,
            rval_lowest: -1.0,
            rval_thr: 0.8,
            use_cnn: true,
            use_ecc: false,
            max_ecc: 3.0,
        }
    }
}

/// `CNMFParams.spatial`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpatialParams {
    /// Ellipse expansion factor (`dist`, default 3).
    pub dist: f64,
    /// Dilation element (`expandCore`, default the 5×5 diamond
    /// `iterate_structure(generate_binary_structure(2, 1), 2)`).
    #[serde(rename = "expandCore")]
    pub expand_core: Option<NdArray<i64>>,
    /// Keep connected components only (`extract_cc`, default true).
    pub extract_cc: bool,
    /// Max threshold (`maxthr`, default 0.1).
    pub maxthr: f64,
    /// Median filter window (`medw`, default `None`: `(3,)·ndim` in `fit`).
    pub medw: Option<Vec<usize>>,
    /// Support expansion (`method_exp`, default `'dilate'`).
    pub method_exp: MethodExp,
    /// Regression (`method_ls`, default `'lasso_lars'`).
    pub method_ls: MethodLs,
    /// Pixels per process (`n_pixels_per_process`, default `None`).
    pub n_pixels_per_process: Option<usize>,
    /// Background components (`nb`; a copy of `init.nb`).
    pub nb: i64,
    /// Normalise so that diag(CCᵀ) = 1 (`normalize_yyt_one`, default true).
    pub normalize_yyt_one: bool,
    /// Energy threshold (`nrgthr`, default 0.9999).
    pub nrgthr: f64,
    /// Blocks per run (`num_blocks_per_run_spat`, default 20).
    pub num_blocks_per_run_spat: usize,
    /// Closing element (`se`, default `None`: ones((3,)·ndim) in `fit`).
    pub se: Option<NdArray<i64>>,
    /// Connectivity element (`ss`, default `None`: ones((3,)·ndim) in `fit`).
    pub ss: Option<NdArray<i64>>,
    /// Thresholding (`thr_method`, default `'nrg'`).
    pub thr_method: ThrMethod,
    /// Update the background in the spatial step (`update_background_components`, default true).
    pub update_background_components: bool,
}

/// CaImAn's default `spatial.expandCore`: the 5×5 diamond.
fn diamond5() -> NdArray<i64> {
    let mut data = vec![0; 25];
    for i in 0..5i64 {
        for j in 0..5i64 {
            if (i - 2).abs() + (j - 2).abs() <= 2 {
                data[(i * 5 + j) as usize] = 1;
            }
        }
    }
    NdArray { shape: vec![5, 5], data }
}

impl Default for SpatialParams {
    fn default() -> Self {
        Self {
            dist: 3.0,
            expand_core: Some(diamond5()),
            extract_cc: true,
            maxthr: 0.1,
            medw: None,
            method_exp: MethodExp::Dilate,
            method_ls: MethodLs::LassoLars,
            n_pixels_per_process: None,
            nb: 1,
            normalize_yyt_one: true,
            nrgthr: 0.9999,
            num_blocks_per_run_spat: 20,
            se: None,
            ss: None,
            thr_method: ThrMethod::Nrg,
            update_background_components: true,
        }
    }
}

/// `CNMFParams.temporal`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TemporalParams {
    /// Block coordinate descent iterations (`ITER`, default 2).
    #[serde(rename = "ITER")]
    pub iter: usize,
    /// Non-negative baseline (`bas_nonneg`, default **false** — the code value; the docstring
    /// says true).
    pub bas_nonneg: bool,
    /// Pixels per block (`block_size_temp`, default 5000).
    pub block_size_temp: usize,
    /// Bias correction of the time constants (`fudge_factor`, default 0.96).
    pub fudge_factor: f64,
    /// Autocovariance lags (`lags`, default 5).
    pub lags: usize,
    /// Events used to optimise g (`optimize_g`, default `False` = 0; booleans accepted).
    #[serde(with = "bool_or_usize")]
    pub optimize_g: usize,
    /// Solver (`method_deconvolution`, default `'oasis'`).
    pub method_deconvolution: MethodDeconvolution,
    /// Background components (`nb`; a copy of `init.nb`).
    pub nb: i64,
    /// PSD averaging (`noise_method`, default `'mean'`).
    pub noise_method: NoiseMethod,
    /// Normalised frequency range of the PSD (`noise_range`, default `[0.25, 0.5]`).
    pub noise_range: Vec<f64>,
    /// Blocks per run (`num_blocks_per_run_temp`, default 20).
    pub num_blocks_per_run_temp: usize,
    /// AR order (`p`, default 2).
    pub p: usize,
    /// Minimum spike size (`s_min`, default `None`).
    pub s_min: Option<f64>,
    /// cvxpy solvers (`solvers`, default `['ECOS', 'SCS']`).
    pub solvers: Vec<String>,
    /// Verbose solver (`verbosity`, default false).
    pub verbosity: bool,
}

impl Default for TemporalParams {
    fn default() -> Self {
        Self {
            iter: 2,
            bas_nonneg: false,
            block_size_temp: 5000,
            fudge_factor: 0.96,
            lags: 5,
            optimize_g: 0,
            method_deconvolution: MethodDeconvolution::Oasis,
            nb: 1,
            noise_method: NoiseMethod::Mean,
            noise_range: vec![0.25, 0.5],
            num_blocks_per_run_temp: 20,
            p: 2,
            s_min: None,
            solvers: vec!["ECOS".to_owned(), "SCS".to_owned()],
            verbosity: false,
        }
    }
}

/// CaImAn's `CNMFParams`: every parameter group (fields in `to_json()` order).
///
/// `Default` is CaImAn's constructor state *before* `check_consistency()` (derived keys unset);
/// [`CnmfParams::new`] is what `CNMFParams()` returns. Consumers that may get either use the
/// derived accessors ([`CnmfParams::gsiz`], [`CnmfParams::n_samples_exceptionality`],
/// [`CnmfParams::thresh_fitness_raw`], [`CnmfParams::max_shifts_online`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CnmfParams {
    /// `data` group.
    pub data: DataParams,
    /// `init` group.
    pub init: InitParams,
    /// `merging` group.
    pub merging: MergingParams,
    /// `motion` group (shared with `caiman-motion`).
    pub motion: MotionParams,
    /// `online` group.
    pub online: OnlineParams,
    /// `patch` group.
    pub patch: PatchParams,
    /// `preprocess` group.
    pub preprocess: PreprocessParams,
    /// `ring_CNN` group.
    #[serde(rename = "ring_CNN")]
    pub ring_cnn: RingCnnParams,
    /// `quality` group.
    pub quality: QualityParams,
    /// `spatial` group.
    pub spatial: SpatialParams,
    /// `temporal` group.
    pub temporal: TemporalParams,
}

// ------------------------------------------------------------------------------------------
// JSON in and out
// ------------------------------------------------------------------------------------------

/// Python `json.dumps` layout: `", "` between items and `": "` after keys.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Keys whose values may be non-finite floats (written as Python tokens by `to_caiman_json`).
const NONFINITE_KEYS: [&str; 2] = ["max_comp_update_shape", "num_times_comp_updated"];

fn to_value<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        // The group structs always serialise to objects (plain fields, string-keyed).
        _ => Map::new(),
    }
}

/// Classifies a serde error for `key`: "invalid value" (right type, wrong domain, e.g. a
/// negative count) → [`ParamsError::Invalid`], anything else → [`ParamsError::WrongType`].
fn classify(e: &serde_json::Error, key: &str) -> ParamsError {
    let msg = e.to_string();
    if msg.starts_with("invalid value") || msg.starts_with("unknown variant") {
        ParamsError::Invalid { key: key.to_owned(), reason: msg }
    } else {
        ParamsError::WrongType { key: key.to_owned(), message: msg }
    }
}

/// Applies `updates` (known keys only) to one group, naming the offending key on failure.
fn update_group<T: Serialize + DeserializeOwned>(
    group: &mut T,
    name: &str,
    updates: &Map<String, Value>,
) -> Result<(), ParamsError> {
    if updates.is_empty() {
        return Ok(());
    }
    let base = to_value(group);
    let mut merged = base.clone();
    for (k, v) in updates {
        merged.insert(k.clone(), v.clone());
    }
    match serde_json::from_value::<T>(Value::Object(merged)) {
        Ok(g) => {
            *group = g;
            Ok(())
        }
        Err(e) => {
            for (k, v) in updates {
                let mut one = base.clone();
                one.insert(k.clone(), v.clone());
                if let Err(e1) = serde_json::from_value::<T>(Value::Object(one)) {
                    return Err(classify(&e1, &format!("{name}.{k}")));
                }
            }
            Err(classify(&e, name))
        }
    }
}

impl CnmfParams {
    /// CaImAn's `CNMFParams()`: the defaults after `check_consistency()` (derived `gSiz`,
    /// `N_samples_exceptionality`, `thresh_fitness_raw`, `last_commit` filled in).
    pub fn new() -> Self {
        let mut p = Self::default();
        // The defaults are consistent: no error and no warning can come out.
        let _ = p.check_consistency(None);
        p
    }

    /// The key → value map of one group (`None` for an unknown group name).
    pub fn group(&self, name: &str) -> Option<Value> {
        let m = match name {
            "data" => to_value(&self.data),
            "init" => to_value(&self.init),
            "merging" => to_value(&self.merging),
            "motion" => to_value(&self.motion),
            "online" => to_value(&self.online),
            "patch" => to_value(&self.patch),
            "preprocess" => to_value(&self.preprocess),
            "ring_CNN" => to_value(&self.ring_cnn),
            "quality" => to_value(&self.quality),
            "spatial" => to_value(&self.spatial),
            "temporal" => to_value(&self.temporal),
            _ => return None,
        };
        Some(Value::Object(m))
    }

    /// CaImAn's `CNMFParams(params_from_file=...)`: the defaults changed by a parameter JSON —
    /// nested groups (`to_json()` files, CaImAn's `params_demo_*.json`) and/or legacy flat
    /// keys — then `check_consistency()` and [`Self::validate`]. Accepts Python's non-finite
    /// tokens (`Infinity`, `NaN`) and their strict string spellings.
    ///
    /// Returns the parameters and the warnings (unknown keys, legacy flat keys, consistency
    /// adjustments), which are also logged through `tracing`.
    ///
    /// # Errors
    /// [`ParamsError::Syntax`] for text that is not a JSON object, [`ParamsError::WrongType`] /
    /// [`ParamsError::Invalid`] naming `group.key` for a bad value.
    pub fn from_caiman_json(json: &str) -> Result<(Self, Vec<String>), ParamsError> {
        let v: Value =
            serde_json::from_str(&normalize_nonfinite_tokens(json)).map_err(|e| ParamsError::Syntax(e.to_string()))?;
        if !v.is_object() {
            return Err(ParamsError::Syntax("the parameter JSON must be an object".to_owned()));
        }
        let mut p = Self::default();
        let warnings = p.change_params(&v)?;
        Ok((p, warnings))
    }

    /// CaImAn's `change_params(params_dict)`: applies a dict of nested groups and/or legacy flat
    /// keys, then `check_consistency()` (without a movie length) and [`Self::validate`]. On error
    /// `self` is left unchanged.
    ///
    /// Nested group entries set that key of that group; a flat key (a top-level key that is not
    /// a group holding an object) is copied into every group that has it, as CaImAn does, except
    /// `nb`, which goes to `init` only (and reaches `spatial`/`temporal` through consistency).
    /// Unknown keys are ignored with a warning.
    ///
    /// # Errors
    /// As [`Self::from_caiman_json`].
    pub fn change_params(&mut self, updates: &Value) -> Result<Vec<String>, ParamsError> {
        let Some(top) = updates.as_object() else {
            return Err(ParamsError::WrongType {
                key: "<root>".to_owned(),
                message: "the parameter dict must be a JSON object".to_owned(),
            });
        };
        let mut warnings = Vec::new();
        let known: Vec<(&str, Map<String, Value>)> = GROUP_NAMES
            .iter()
            .map(|&g| (g, self.group(g).and_then(|v| v.as_object().cloned()).unwrap_or_default()))
            .collect();
        let mut per_group: Vec<Map<String, Value>> = vec![Map::new(); GROUP_NAMES.len()];
        // Legacy flat keys first, then nested groups (which are more specific).
        for (k, v) in top {
            if GROUP_NAMES.contains(&k.as_str()) && v.is_object() {
                continue;
            }
            let targets: Vec<usize> = if k == "nb" {
                vec![1]
            } else {
                known.iter().enumerate().filter(|(_, (_, m))| m.contains_key(k)).map(|(i, _)| i).collect()
            };
            if targets.is_empty() {
                if GROUP_NAMES.contains(&k.as_str()) {
                    return Err(ParamsError::WrongType {
                        key: k.clone(),
                        message: format!("a parameter group must be an object, got {v}"),
                    });
                }
                warnings.push(format!("unknown parameter `{k}` ignored"));
                continue;
            }
            let names: Vec<&str> = targets.iter().map(|&i| GROUP_NAMES[i]).collect();
            warnings.push(format!("legacy flat key `{k}` (deprecated in CaImAn) applied to group(s) {names:?}"));
            for i in targets {
                per_group[i].insert(k.clone(), v.clone());
            }
        }
        for (gi, (g, keys)) in known.iter().enumerate() {
            let Some(Value::Object(obj)) = top.get(*g) else { continue };
            for (k, v) in obj {
                if keys.contains_key(k) {
                    per_group[gi].insert(k.clone(), v.clone());
                } else {
                    warnings.push(format!("unknown parameter `{g}.{k}` ignored"));
                }
            }
        }
        let mut next = self.clone();
        update_group(&mut next.data, "data", &per_group[0])?;
        update_group(&mut next.init, "init", &per_group[1])?;
        update_group(&mut next.merging, "merging", &per_group[2])?;
        update_group(&mut next.motion, "motion", &per_group[3])?;
        update_group(&mut next.online, "online", &per_group[4])?;
        update_group(&mut next.patch, "patch", &per_group[5])?;
        update_group(&mut next.preprocess, "preprocess", &per_group[6])?;
        update_group(&mut next.ring_cnn, "ring_CNN", &per_group[7])?;
        update_group(&mut next.quality, "quality", &per_group[8])?;
        update_group(&mut next.spatial, "spatial", &per_group[9])?;
        update_group(&mut next.temporal, "temporal", &per_group[10])?;
        if next.motion.use_cuda {
            warnings.push("`motion.use_cuda` is deprecated and ignored".to_owned());
        }
        for w in &warnings {
            tracing::warn!("CNMF parameters: {w}");
        }
        warnings.extend(next.check_consistency(None)?);
        next.validate()?;
        *self = next;
        Ok(warnings)
    }

    /// CaImAn's `to_json()`: the nested layout (groups and keys in CaImAn's order, Python's
    /// separators), non-finite floats as Python's non-standard tokens `Infinity`, `-Infinity`,
    /// `NaN` (what `json.dumps` writes, so CaImAn reads them back as floats). Integral floats
    /// are written as `30.0` where CaImAn may have `30`.
    pub fn to_caiman_json(&self) -> String {
        let mut out = self.to_json_with(PyFormatter);
        for key in NONFINITE_KEYS {
            for tok in ["Infinity", "-Infinity", "NaN"] {
                out = out.replace(&format!("\"{key}\": \"{tok}\""), &format!("\"{key}\": {tok}"));
            }
        }
        out
    }

    /// Strict, pretty-printed JSON of the same layout, with non-finite floats as the strings
    /// `"Infinity"`, `"-Infinity"`, `"NaN"` (as `cnmf_params_default_strict.json`).
    pub fn to_strict_json(&self) -> String {
        self.to_json_with(serde_json::ser::PrettyFormatter::with_indent(b" "))
    }

    fn to_json_with<F: serde_json::ser::Formatter>(&self, f: F) -> String {
        let mut buf = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, f);
        // Serialising plain structs with string keys into memory cannot fail.
        if self.serialize(&mut ser).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    // --------------------------------------------------------------------------------------
    // Derived values
    // --------------------------------------------------------------------------------------

    /// `init.gSig`, with CaImAn's `None` → `[-1, -1]`.
    pub fn gsig(&self) -> Vec<f64> {
        self.init.gsig.clone().unwrap_or_else(|| vec![-1.0, -1.0])
    }

    /// `init.gSiz`, derived as in `check_consistency` when unset (`round(2·gSig + 1)`), every
    /// entry made odd.
    pub fn gsiz(&self) -> Vec<i64> {
        let raw = self
            .init
            .gsiz
            .clone()
            .unwrap_or_else(|| self.gsig().iter().map(|g| (2.0 * g + 1.0).round() as i64).collect());
        raw.into_iter().map(|g| if g.rem_euclid(2) == 0 { g + 1 } else { g }).collect()
    }

    /// `online.N_samples_exceptionality`, or `ceil(fr · decay_time)` when unset.
    pub fn n_samples_exceptionality(&self) -> usize {
        self.online
            .n_samples_exceptionality
            .unwrap_or_else(|| (self.data.fr * self.data.decay_time).ceil().max(0.0) as usize)
    }

    /// `online.thresh_fitness_raw`, or `log Φ(−min_SNR) · N_samples_exceptionality` when unset.
    pub fn thresh_fitness_raw(&self) -> f64 {
        self.online
            .thresh_fitness_raw
            .unwrap_or_else(|| crate::stats::log_ndtr(-self.online.min_snr) * self.n_samples_exceptionality() as f64)
    }

    /// The effective online rigid shift bound `int(max_shifts_online / ds_factor)` (what
    /// CaImAn stores after its first `check_consistency`).
    pub fn max_shifts_online(&self) -> usize {
        let v = self.online.max_shifts_online as f64 / self.online.ds_factor;
        if v.is_finite() && v > 0.0 { v.trunc() as usize } else { 0 }
    }

    // --------------------------------------------------------------------------------------
    // Consistency and validation
    // --------------------------------------------------------------------------------------

    /// CaImAn's `check_consistency()` (catalog §0.3). `frames` is the length `T` of the first
    /// movie (CaImAn reads it from `data.fnames`); with `data.fnames` set and `frames` given,
    /// `motion.splits_rig = motion.splits_els = max(T // max(num_frames_split, 10), 1)`.
    ///
    /// Derives `data.last_commit`, `online.N_samples_exceptionality` and
    /// `online.thresh_fitness_raw` (when unset), `init.gSig`/`init.gSiz` (unset → defaults,
    /// `gSiz` made odd), copies `init.nb` into `spatial.nb`/`temporal.nb`, applies the `nb ≤ 0`,
    /// `nb = −1`, `corr_pnr` and `update_num_comps` rules, places a bare `movie_name_online` next
    /// to the first data file, and expands `motion.indices/max_shifts/strides/overlaps` to three
    /// entries for `is3D`. Idempotent (see the module doc for the fixed \[Q\] quirks). Returns
    /// the warnings (also logged).
    ///
    /// # Errors
    /// `data.decay_time == 0` (or a non-positive/non-finite `fr` or `decay_time`), an `is3D` per-axis
    /// value that cannot be expanded, `online.ds_factor ≤ 0`.
    pub fn check_consistency(&mut self, frames: Option<usize>) -> Result<Vec<String>, ParamsError> {
        let mut warnings = Vec::new();
        if self.data.decay_time == 0.0 {
            return Err(ParamsError::invalid("data.decay_time", "a decay time of zero is not permitted"));
        }
        if !(self.data.fr.is_finite() && self.data.fr > 0.0) {
            return Err(ParamsError::invalid("data.fr", format!("must be positive and finite, got {}", self.data.fr)));
        }
        if !(self.data.decay_time.is_finite() && self.data.decay_time > 0.0) {
            return Err(ParamsError::invalid(
                "data.decay_time",
                format!("must be positive and finite, got {}", self.data.decay_time),
            ));
        }
        if !(self.online.ds_factor.is_finite() && self.online.ds_factor > 0.0) {
            return Err(ParamsError::invalid(
                "online.ds_factor",
                format!("must be positive and finite, got {}", self.online.ds_factor),
            ));
        }
        self.data.last_commit = Some(concat!("caiman-rs-", env!("CARGO_PKG_VERSION")).to_owned());
        if let Some(first) = self.data.fnames.as_ref().and_then(|f| f.first()) {
            if let Some(t) = frames {
                let splits = (t / self.motion.num_frames_split.max(10)).max(1);
                self.motion.splits_rig = splits;
                self.motion.splits_els = splits;
            }
            let name = Path::new(&self.online.movie_name_online);
            let bare = name.parent().is_none_or(|p| p.as_os_str().is_empty());
            if bare && let Some(dir) = Path::new(first).parent() {
                self.online.movie_name_online = dir.join(name).to_string_lossy().into_owned();
            }
        }
        if self.online.n_samples_exceptionality.is_none() {
            self.online.n_samples_exceptionality = Some(self.n_samples_exceptionality());
        }
        if self.online.thresh_fitness_raw.is_none() {
            self.online.thresh_fitness_raw = Some(self.thresh_fitness_raw());
        }
        if self.init.gsig.is_none() {
            self.init.gsig = Some(self.gsig());
        }
        self.init.gsiz = Some(self.gsiz());
        let gsiz0 = self.gsiz().first().copied().unwrap_or(0);
        if let Some(rf) = &self.patch.rf
            && rf.values().iter().any(|&r| (r as i64) <= gsiz0)
        {
            warnings.push(format!(
                "patch.rf = {rf:?} is not larger than gSiz[0] = {gsiz0}; CaImAn announces a change to rf = {} \
                 but keeps rf, and so does this port",
                2 * gsiz0
            ));
        }
        for (name, nb) in [("spatial", &mut self.spatial.nb), ("temporal", &mut self.temporal.nb)] {
            if *nb != self.init.nb {
                warnings
                    .push(format!("{name}.nb = {nb} replaced by init.nb = {} (nb is set under init)", self.init.nb));
                *nb = self.init.nb;
            }
        }
        if self.init.nb <= 0 && (self.patch.nb_patch != self.init.nb || self.patch.low_rank_background.is_some()) {
            warnings.push(format!(
                "gnb={}, hence setting keys nb_patch and low_rank_background in group patch automatically",
                self.init.nb
            ));
            self.patch.nb_patch = self.init.nb;
            self.patch.low_rank_background = None;
        }
        if self.init.nb == -1 && self.spatial.update_background_components {
            warnings
                .push("gnb=-1, hence setting key update_background_components in group spatial to false".to_owned());
            self.spatial.update_background_components = false;
        }
        if self.init.method_init == MethodInit::CorrPnr
            && self.init.ring_size_factor.is_some()
            && self.init.normalize_init
        {
            warnings
                .push("CNMF-E ring model for the background, hence setting init.normalize_init to false".to_owned());
            self.init.normalize_init = false;
        }
        if self.motion.is_3d {
            fn expand<T: Copy + PartialEq + std::fmt::Debug>(
                key: &str,
                v: &mut Vec<T>,
                warnings: &mut Vec<String>,
            ) -> Result<(), ParamsError> {
                if v.len() == 3 {
                    return Ok(());
                }
                if v.len() >= 2 && v[0] == v[1] {
                    *v = vec![v[0]; 3];
                    warnings.push(format!("is3D=True, hence setting key motion.{key} to {v:?}"));
                    Ok(())
                } else {
                    Err(ParamsError::invalid(
                        &format!("motion.{key}"),
                        format!("has to be of length 3 for volumetric 3D data, got {v:?}"),
                    ))
                }
            }
            expand::<IndexSlice>("indices", &mut self.motion.indices, &mut warnings)?;
            expand("max_shifts", &mut self.motion.max_shifts, &mut warnings)?;
            expand("strides", &mut self.motion.strides, &mut warnings)?;
            expand("overlaps", &mut self.motion.overlaps, &mut warnings)?;
        }
        for (key, v) in [("max_num_added", self.online.max_num_added), ("min_num_trial", self.online.min_num_trial)] {
            if v == 0 && self.online.update_num_comps {
                warnings.push(format!("online.{key}=0, hence setting online.update_num_comps to false"));
                self.online.update_num_comps = false;
            }
        }
        for w in &warnings {
            tracing::warn!("CNMF parameters: {w}");
        }
        Ok(warnings)
    }

    /// [`Self::check_consistency`] with the movie read from `data.fnames[0]` (CaImAn's
    /// `get_file_size`): sets `data.dims` when unset (`[d1, d2]`, or `[d1, d2, d3]` for volumes)
    /// and derives the motion splits from the first file's frame count. Without `fnames` it is
    /// `check_consistency(None)`.
    ///
    /// # Errors
    /// The movie cannot be opened, or [`Self::check_consistency`] fails.
    pub fn check_consistency_with_files(&mut self) -> crate::Result<Vec<String>> {
        let Some(first) = self.data.fnames.as_ref().and_then(|f| f.first()).cloned() else {
            return Ok(self.check_consistency(None)?);
        };
        let opts = caiman_io::OpenOptions { dataset: Some(self.data.var_name_hdf5.clone()), ..Default::default() };
        let src = caiman_io::open(&first, &opts)?;
        let shape = src.info().shape;
        if self.data.dims.is_none() {
            let d = shape.dims;
            self.data.dims = Some(if d.d3 > 1 { vec![d.d1, d.d2, d.d3] } else { vec![d.d1, d.d2] });
        }
        Ok(self.check_consistency(Some(shape.frames))?)
    }

    /// Rejects nonsensical values, naming `group.key`: non-positive rates and decay times,
    /// `merge_thr` outside [0, 1], AR orders above 2, noise ranges outside [0, 0.5], zero
    /// down-sampling factors or block sizes, thresholds outside their ranges, `nb < −1`,
    /// malformed `gSig`/`gSiz`/`dims`/`rf`/`stride`, non-finite values, and the motion group's
    /// own rules ([`MotionParams::validate`]).
    ///
    /// # Errors
    /// [`ParamsError::Invalid`] for the first offending key.
    pub fn validate(&self) -> Result<(), ParamsError> {
        fn inv(key: &str, reason: impl Into<String>) -> ParamsError {
            ParamsError::invalid(key, reason)
        }
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(inv(key, format!("must be positive and finite, got {v}")))
            }
        };
        let finite =
            |key: &str, v: f64| if v.is_finite() { Ok(()) } else { Err(inv(key, format!("must be finite, got {v}"))) };
        let within = |key: &str, v: f64, lo: f64, hi: f64| {
            if (lo..=hi).contains(&v) { Ok(()) } else { Err(inv(key, format!("must be in [{lo}, {hi}], got {v}"))) }
        };
        let at_least_one = |key: &str, v: usize| if v >= 1 { Ok(()) } else { Err(inv(key, "must be at least 1")) };
        let ar_order = |key: &str, p: usize| {
            if p <= 2 { Ok(()) } else { Err(inv(key, format!("AR order must be 0, 1 or 2, got {p}"))) }
        };
        let noise_range = |key: &str, r: &[f64]| {
            if r.len() == 2 && r.iter().all(|v| (0.0..=0.5).contains(v)) && r[0] < r[1] {
                Ok(())
            } else {
                Err(inv(key, format!("must be [lo, hi] with 0 ≤ lo < hi ≤ 0.5 (normalised frequencies), got {r:?}")))
            }
        };
        let nb_ok =
            |key: &str, nb: i64| if nb >= -1 { Ok(()) } else { Err(inv(key, format!("must be ≥ −1, got {nb}"))) };
        let some_at_least_one = |key: &str, v: Option<usize>| {
            if v == Some(0) { Err(inv(key, "must be at least 1 (or null)")) } else { Ok(()) }
        };

        // data
        let d = &self.data;
        positive("data.fr", d.fr)?;
        positive("data.decay_time", d.decay_time)?;
        if d.dxy.is_empty() || d.dxy.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(inv("data.dxy", format!("entries must be positive, got {:?}", d.dxy)));
        }
        if let Some(dims) = &d.dims
            && (!(2..=3).contains(&dims.len()) || dims.contains(&0))
        {
            return Err(inv("data.dims", format!("must be 2 or 3 positive sizes, got {dims:?}")));
        }
        if let Some(f) = &d.fnames
            && f.is_empty()
        {
            return Err(inv("data.fnames", "must not be an empty list (use null)"));
        }

        // init
        let i = &self.init;
        if let Some(g) = &i.gsig
            && (!(2..=3).contains(&g.len()) || g.iter().any(|&v| !(v == -1.0 || (v.is_finite() && v > 0.0))))
        {
            return Err(inv("init.gSig", format!("must be 2 or 3 positive values (or -1), got {g:?}")));
        }
        if let Some(g) = &i.gsiz
            && (!(2..=3).contains(&g.len()) || g.iter().any(|&v| v != -1 && v <= 0))
        {
            return Err(inv("init.gSiz", format!("must be 2 or 3 positive sizes (or -1), got {g:?}")));
        }
        positive("init.SC_sigma", i.sc_sigma)?;
        finite("init.SC_thr", i.sc_thr)?;
        if !(i.alpha_snmf.is_finite() && i.alpha_snmf >= 0.0) {
            return Err(inv("init.alpha_snmf", format!("must be non-negative, got {}", i.alpha_snmf)));
        }
        within("init.snmf_l1_ratio", i.snmf_l1_ratio, 0.0, 1.0)?;
        within("init.perc_baseline_snmf", i.perc_baseline_snmf, 0.0, 100.0)?;
        if i.sigma_smooth_snmf.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(inv(
                "init.sigma_smooth_snmf",
                format!("entries must be non-negative, got {:?}", i.sigma_smooth_snmf),
            ));
        }
        if !(i.lambda_gnmf.is_finite() && i.lambda_gnmf >= 0.0) {
            return Err(inv("init.lambda_gnmf", format!("must be non-negative, got {}", i.lambda_gnmf)));
        }
        within("init.min_corr", i.min_corr, -1.0, 1.0)?;
        finite("init.min_pnr", i.min_pnr)?;
        if let Some(r) = i.ring_size_factor {
            positive("init.ring_size_factor", r)?;
        }
        at_least_one("init.ssub", i.ssub)?;
        at_least_one("init.tsub", i.tsub)?;
        at_least_one("init.ssub_B", i.ssub_b)?;
        at_least_one("init.rolling_length", i.rolling_length)?;
        nb_ok("init.nb", i.nb)?;
        if let Some(k) = &i.kernel
            && (!(2..=3).contains(&k.shape.len()) || k.data.iter().any(|v| !v.is_finite()))
        {
            return Err(inv("init.kernel", "must be a finite 2-D or 3-D array"));
        }

        // merging
        within("merging.merge_thr", self.merging.merge_thr, 0.0, 1.0)?;

        // online
        let o = &self.online;
        positive("online.ds_factor", o.ds_factor)?;
        at_least_one("online.epochs", o.epochs)?;
        at_least_one("online.init_batch", o.init_batch)?;
        at_least_one("online.iters_shape", o.iters_shape)?;
        at_least_one("online.minibatch_shape", o.minibatch_shape)?;
        at_least_one("online.update_freq", o.update_freq)?;
        at_least_one("online.W_update_factor", o.w_update_factor)?;
        at_least_one("online.expected_comps", o.expected_comps)?;
        some_at_least_one("online.N_samples_exceptionality", o.n_samples_exceptionality)?;
        if o.max_comp_update_shape.is_nan() || o.max_comp_update_shape < 0.0 {
            return Err(inv(
                "online.max_comp_update_shape",
                format!("must be ≥ 0 (or Infinity), got {}", o.max_comp_update_shape),
            ));
        }
        if o.num_times_comp_updated.is_nan() || o.num_times_comp_updated < 0.0 {
            return Err(inv(
                "online.num_times_comp_updated",
                format!("must be ≥ 0 (or Infinity), got {}", o.num_times_comp_updated),
            ));
        }
        finite("online.min_SNR", o.min_snr)?;
        within("online.rval_thr", o.rval_thr, -1.0, 1.0)?;
        within("online.thresh_overlap", o.thresh_overlap, 0.0, 1.0)?;
        within("online.thresh_CNN_noisy", o.thresh_cnn_noisy, 0.0, 1.0)?;
        finite("online.thresh_fitness_delta", o.thresh_fitness_delta)?;
        if let Some(t) = o.thresh_fitness_raw {
            finite("online.thresh_fitness_raw", t)?;
        }

        // patch
        let pa = &self.patch;
        positive("patch.memory_fact", pa.memory_fact)?;
        at_least_one("patch.n_processes", pa.n_processes)?;
        ar_order("patch.p_patch", pa.p_patch)?;
        nb_ok("patch.nb_patch", pa.nb_patch)?;
        if let Some(rf) = &pa.rf
            && (rf.values().is_empty() || rf.values().contains(&0))
        {
            return Err(inv("patch.rf", format!("patch half-sizes must be positive, got {rf:?}")));
        }
        if let Some(s) = &pa.stride
            && s.values().is_empty()
        {
            return Err(inv("patch.stride", "must not be an empty list"));
        }

        // preprocess
        let pr = &self.preprocess;
        ar_order("preprocess.p", pr.p)?;
        noise_range("preprocess.noise_range", &pr.noise_range)?;
        at_least_one("preprocess.max_num_samples_fft", pr.max_num_samples_fft)?;
        some_at_least_one("preprocess.n_pixels_per_process", pr.n_pixels_per_process)?;
        if let Some(sn) = &pr.sn
            && sn.iter().any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return Err(inv("preprocess.sn", "noise levels must be finite and non-negative"));
        }

        // ring_CNN
        let r = &self.ring_cnn;
        if !(r.pct > 0.0 && r.pct < 1.0) {
            return Err(inv("ring_CNN.pct", format!("must be in (0, 1), got {}", r.pct)));
        }
        positive("ring_CNN.lr", r.lr)?;
        at_least_one("ring_CNN.n_channels", r.n_channels)?;
        at_least_one("ring_CNN.width", r.width)?;

        // quality
        let q = &self.quality;
        finite("quality.min_SNR", q.min_snr)?;
        finite("quality.SNR_lowest", q.snr_lowest)?;
        within("quality.rval_thr", q.rval_thr, -1.0, 1.0)?;
        within("quality.rval_lowest", q.rval_lowest, -1.0, 1.0)?;
        within("quality.min_cnn_thr", q.min_cnn_thr, 0.0, 1.0)?;
        within("quality.cnn_lowest", q.cnn_lowest, 0.0, 1.0)?;
        positive("quality.max_ecc", q.max_ecc)?;
        if let Some(g) = &q.gsig_range
            && g.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(inv("quality.gSig_range", format!("entries must be positive, got {g:?}")));
        }

        // spatial
        let s = &self.spatial;
        positive("spatial.dist", s.dist)?;
        within("spatial.maxthr", s.maxthr, 0.0, 1.0)?;
        if !(s.nrgthr > 0.0 && s.nrgthr <= 1.0) {
            return Err(inv("spatial.nrgthr", format!("must be in (0, 1], got {}", s.nrgthr)));
        }
        nb_ok("spatial.nb", s.nb)?;
        at_least_one("spatial.num_blocks_per_run_spat", s.num_blocks_per_run_spat)?;
        some_at_least_one("spatial.n_pixels_per_process", s.n_pixels_per_process)?;
        if let Some(m) = &s.medw
            && (m.is_empty() || m.contains(&0))
        {
            return Err(inv("spatial.medw", format!("window sizes must be positive, got {m:?}")));
        }
        for (key, el) in [("spatial.expandCore", &s.expand_core), ("spatial.se", &s.se), ("spatial.ss", &s.ss)] {
            if let Some(el) = el
                && (!(2..=3).contains(&el.shape.len()) || el.data.is_empty())
            {
                return Err(inv(key, format!("must be a non-empty 2-D or 3-D array, got shape {:?}", el.shape)));
            }
        }

        // temporal
        let t = &self.temporal;
        ar_order("temporal.p", t.p)?;
        noise_range("temporal.noise_range", &t.noise_range)?;
        if !(t.fudge_factor > 0.0 && t.fudge_factor <= 1.0) {
            return Err(inv("temporal.fudge_factor", format!("must be in (0, 1], got {}", t.fudge_factor)));
        }
        at_least_one("temporal.block_size_temp", t.block_size_temp)?;
        at_least_one("temporal.num_blocks_per_run_temp", t.num_blocks_per_run_temp)?;
        nb_ok("temporal.nb", t.nb)?;
        if let Some(smin) = t.s_min {
            finite("temporal.s_min", smin)?;
        }

        // motion
        self.motion.validate().map_err(|e| match e {
            caiman_motion::ParamsError::Invalid { key, reason } => inv(&format!("motion.{key}"), reason),
            other => inv("motion", other.to_string()),
        })
    }
}
