//! CaImAn's `motion` parameter group (`CNMFParams.motion`, catalog §2.1) as a serde struct with
//! CaImAn's key names and defaults, a lenient loader for full CaImAn parameter JSON, and
//! validation.
//!
//! `Default` equals `CNMFParams().motion` of CaImAn 1.12.1 (checked against
//! `cnmf_params_default.json`). Serialising writes CaImAn's JSON shapes back (`border_nan` as
//! `true`/`false`/`"copy"`/`"min"`, `indices` as `[start, stop, step]` per axis).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParamsError;
use crate::shift::BorderMode;

/// CaImAn's `border_nan`: `True`, `False`, `'copy'` or `'min'`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BorderNan {
    /// `'copy'` (default).
    #[default]
    Copy,
    /// `'min'`.
    Min,
    /// `True`.
    Nan,
    /// `False`.
    None,
}

impl From<BorderNan> for BorderMode {
    fn from(b: BorderNan) -> Self {
        match b {
            BorderNan::Copy => BorderMode::Copy,
            BorderNan::Min => BorderMode::Min,
            BorderNan::Nan => BorderMode::Nan,
            BorderNan::None => BorderMode::None,
        }
    }
}

impl Serialize for BorderNan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Copy => s.serialize_str("copy"),
            Self::Min => s.serialize_str("min"),
            Self::Nan => s.serialize_bool(true),
            Self::None => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for BorderNan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bool(bool),
            Str(String),
        }
        match Repr::deserialize(d)? {
            Repr::Bool(true) => Ok(Self::Nan),
            Repr::Bool(false) => Ok(Self::None),
            Repr::Str(s) if s == "copy" => Ok(Self::Copy),
            Repr::Str(s) if s == "min" => Ok(Self::Min),
            Repr::Str(s) => Err(serde::de::Error::custom(format!(
                "border_nan must be true, false, \"copy\" or \"min\", got \"{s}\""
            ))),
        }
    }
}

/// The arithmetic of the per-frame kernels (registration FFTs, upsampled DFT, cubic warps) and
/// of the legacy matcher of the initial template. A caiman-rs extension (key `precision`, not
/// one of CaImAn's; written only when it differs from the default).
///
/// * [`Precision::F32`] (default, the fast path): single-precision real-to-complex FFTs and
///   upsampled DFT, a separable `f32` cubic translation and an `f32` cubic remap (OpenCV's
///   1/32-pixel weights), an FFT-based normalised cross-correlation for the initial template.
///   The image means are removed (in `f64`) before the single-precision transforms and the DC
///   term is added back in `f64`, so the 0.1 px decisions agree with the exact path except at
///   near ties (CaImAn's reference movie: RMS distance to CaImAn's rigid shifts 0.0041 px, error
///   vs truth 0.0859 px vs CaImAn's 0.0860 px; see `tests/batch.rs`).
/// * [`Precision::F64`]: CaImAn's float64 arithmetic, every shift, template and corrected frame
///   identical to CaImAn 1.12.1 on its reference movie.
///
/// Fourier shifting (`shifts_opencv = false`) always runs in `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single-precision fast path (default).
    #[default]
    F32,
    /// CaImAn's double-precision arithmetic, bit-for-bit decisions.
    F64,
}

impl Precision {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One entry of CaImAn's `indices`: a Python slice `[start, stop, step]` (each nullable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[Option<i64>; 3]", into = "[Option<i64>; 3]")]
pub struct IndexSlice {
    /// Slice start (`None` = from the beginning).
    pub start: Option<i64>,
    /// Slice stop (`None` = to the end).
    pub stop: Option<i64>,
    /// Slice step (`None` = 1).
    pub step: Option<i64>,
}

impl From<[Option<i64>; 3]> for IndexSlice {
    fn from(v: [Option<i64>; 3]) -> Self {
        Self { start: v[0], stop: v[1], step: v[2] }
    }
}

impl From<IndexSlice> for [Option<i64>; 3] {
    fn from(s: IndexSlice) -> Self {
        [s.start, s.stop, s.step]
    }
}

impl IndexSlice {
    /// The index range this slice selects on an axis of length `n` (Python semantics for
    /// positive steps; negative steps are rejected by validation).
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        let n = n as i64;
        let norm = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let start = self.start.map_or(0, norm);
        let stop = self.stop.map_or(n, norm);
        start as usize..stop.max(start) as usize
    }
}

/// `Option<f64>` that also accepts CaImAn's non-finite spellings `"NaN"`, `"Infinity"`,
/// `"-Infinity"` (strings after [`normalize_nonfinite_tokens`]).
mod lenient_f64 {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Str(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Num(v)) => Ok(Some(v)),
            Some(Repr::Str(s)) => match s.as_str() {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                other => Err(serde::de::Error::custom(format!("expected a number, got \"{other}\""))),
            },
        }
    }
}

/// CaImAn's `motion` parameter group. Field names follow Rust style; the serde names are
/// CaImAn's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotionParams {
    /// Border handling after shifting (`border_nan`, default `'copy'`).
    pub border_nan: BorderNan,
    /// High-pass filter size for 1p data (`gSig_filt`, default `None`; only the first entry is
    /// used by the filter, as in CaImAn).
    #[serde(rename = "gSig_filt")]
    pub gsig_filt: Option<Vec<u32>>,
    /// Volumetric data (`is3D`, default false).
    #[serde(rename = "is3D")]
    pub is_3d: bool,
    /// Patch shifts stay within rigid ± this many pixels (default 3).
    pub max_deviation_rigid: usize,
    /// Maximum rigid shift per axis (default `[6, 6]`).
    pub max_shifts: Vec<usize>,
    /// Movie minimum; computed from the data when `None` (default).
    #[serde(deserialize_with = "lenient_f64::deserialize")]
    pub min_mov: Option<f64>,
    /// Iterations of rigid template refinement (default 1).
    pub niter_rig: usize,
    /// Add `−min_mov` to the saved movie (default true).
    pub nonneg_movie: bool,
    /// Frames per chunk (default 80); CaImAn derives `splits_*` from it.
    pub num_frames_split: usize,
    /// Process only this many random chunks in the pw pass (default `None` = all).
    pub num_splits_to_process_els: Option<usize>,
    /// Process only this many random chunks per rigid iteration (default `None` = all).
    pub num_splits_to_process_rig: Option<usize>,
    /// Patch overlap per axis (default `[32, 32]`).
    pub overlaps: Vec<usize>,
    /// Piecewise-rigid correction after the rigid pass (default false).
    pub pw_rigid: bool,
    /// Cubic interpolation of patch shifts from patch centres instead of `cv2.resize`
    /// (default false).
    pub shifts_interpolate: bool,
    /// Apply shifts by cubic interpolation (true, default) or in the Fourier domain.
    pub shifts_opencv: bool,
    /// Number of temporal chunks of the pw pass (default 14; derived from the movie length).
    pub splits_els: usize,
    /// Number of temporal chunks of the rigid pass (default 14; derived from the movie length).
    pub splits_rig: usize,
    /// Patch stride per axis (default `[96, 96]`).
    pub strides: Vec<usize>,
    /// Refinement of the patch grid for Fourier shifting (default 4).
    pub upsample_factor_grid: usize,
    /// Deprecated and ignored (default false).
    pub use_cuda: bool,
    /// Sub-field of view to correct, one slice per spatial axis (default: everything).
    pub indices: Vec<IndexSlice>,
    /// Kernel arithmetic (caiman-rs extension key `precision`: `"f32"` or `"f64"`; see
    /// [`Precision`]). Not serialised when it has its default value, so CaImAn-shaped JSON stays
    /// CaImAn's.
    #[serde(skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
}

impl Default for MotionParams {
    fn default() -> Self {
        Self {
            border_nan: BorderNan::Copy,
            gsig_filt: None,
            is_3d: false,
            max_deviation_rigid: 3,
            max_shifts: vec![6, 6],
            min_mov: None,
            niter_rig: 1,
            nonneg_movie: true,
            num_frames_split: 80,
            num_splits_to_process_els: None,
            num_splits_to_process_rig: None,
            overlaps: vec![32, 32],
            pw_rigid: false,
            shifts_interpolate: false,
            shifts_opencv: true,
            splits_els: 14,
            splits_rig: 14,
            strides: vec![96, 96],
            upsample_factor_grid: 4,
            use_cuda: false,
            indices: vec![IndexSlice::default(); 2],
            precision: Precision::default(),
        }
    }
}

/// CaImAn's key names of the `motion` group, in `to_json()` order.
pub const MOTION_KEYS: [&str; 21] = [
    "border_nan",
    "gSig_filt",
    "is3D",
    "max_deviation_rigid",
    "max_shifts",
    "min_mov",
    "niter_rig",
    "nonneg_movie",
    "num_frames_split",
    "num_splits_to_process_els",
    "num_splits_to_process_rig",
    "overlaps",
    "pw_rigid",
    "shifts_interpolate",
    "shifts_opencv",
    "splits_els",
    "splits_rig",
    "strides",
    "upsample_factor_grid",
    "use_cuda",
    "indices",
];

/// Keys of the motion group that caiman-rs adds to CaImAn's (accepted by the loader).
pub const EXTENSION_KEYS: [&str; 1] = ["precision"];

/// The parameter groups of CaImAn's `CNMFParams`.
const GROUPS: [&str; 11] = [
    "data",
    "patch",
    "preprocess",
    "init",
    "spatial",
    "temporal",
    "merging",
    "quality",
    "online",
    "motion",
    "ring_CNN",
];

/// Rewrites the non-standard JSON tokens Python's `json` writes for non-finite floats
/// (`NaN`, `Infinity`, `-Infinity`) into strings, leaving string contents untouched.
pub fn normalize_nonfinite_tokens(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    let mut chars = json.char_indices().peekable();
    let mut in_str = false;
    let mut escaped = false;
    while let Some((i, c)) = chars.next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
            out.push(c);
            continue;
        }
        let rest = &json[i..];
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            for _ in 1..t.chars().count() {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl MotionParams {
    /// Reads the `motion` group of a full CaImAn parameter JSON (`CNMFParams.to_json()`, a
    /// `params_from_file` demo file, or strict JSON with `"Infinity"` strings). Missing keys get
    /// CaImAn's defaults. Returns warnings for unknown motion keys, legacy flat keys (top-level
    /// motion keys outside any group, which CaImAn copies into the group), a missing `motion`
    /// group and the deprecated `use_cuda`.
    ///
    /// # Errors
    /// [`ParamsError::Json`] for unparsable JSON or a value of the wrong type;
    /// [`ParamsError::Invalid`] if [`Self::validate`] rejects the result.
    pub fn from_caiman_json(json: &str) -> Result<(Self, Vec<String>), ParamsError> {
        let value: serde_json::Value = serde_json::from_str(&normalize_nonfinite_tokens(json))?;
        let Some(top) = value.as_object() else {
            return Err(ParamsError::invalid("<root>", "parameter JSON must be an object"));
        };
        let mut warnings = Vec::new();
        let mut motion = serde_json::Map::new();
        for (k, v) in top {
            if !GROUPS.contains(&k.as_str()) && MOTION_KEYS.contains(&k.as_str()) {
                warnings.push(format!("legacy flat key `{k}` applied to the motion group"));
                motion.insert(k.clone(), v.clone());
            }
        }
        match top.get("motion") {
            Some(serde_json::Value::Object(group)) => {
                for (k, v) in group {
                    if MOTION_KEYS.contains(&k.as_str()) || EXTENSION_KEYS.contains(&k.as_str()) {
                        motion.insert(k.clone(), v.clone());
                    } else {
                        warnings.push(format!("unknown motion parameter `{k}` ignored"));
                    }
                }
            }
            Some(_) => return Err(ParamsError::invalid("motion", "the motion group must be an object")),
            None => warnings.push("no `motion` group: CaImAn's defaults are used".to_owned()),
        }
        let params: Self = serde_json::from_value(serde_json::Value::Object(motion))?;
        if params.use_cuda {
            warnings.push("`use_cuda` is deprecated and ignored".to_owned());
        }
        params.validate()?;
        for w in &warnings {
            tracing::warn!("motion parameters: {w}");
        }
        Ok((params, warnings))
    }

    /// Number of spatial axes (2, or 3 with `is3D`).
    pub fn spatial_dims(&self) -> usize {
        if self.is_3d { 3 } else { 2 }
    }

    /// The per-axis values of `v` for this dimensionality (a 2-entry value with equal entries is
    /// expanded for 3-D data, as CaImAn's `check_consistency`).
    fn per_axis(&self, key: &'static str, v: &[usize]) -> Result<Vec<usize>, ParamsError> {
        let d = self.spatial_dims();
        match (v.len(), d) {
            (n, d) if n == d => Ok(v.to_vec()),
            (2, 3) if v[0] == v[1] => Ok(vec![v[0]; 3]),
            _ => Err(ParamsError::invalid(key, format!("expected {d} entries, got {v:?}"))),
        }
    }

    /// `max_shifts` per axis.
    ///
    /// # Errors
    /// If the length does not fit the dimensionality.
    pub fn max_shifts_per_axis(&self) -> Result<Vec<usize>, ParamsError> {
        self.per_axis("max_shifts", &self.max_shifts)
    }

    /// `strides` per axis.
    ///
    /// # Errors
    /// If the length does not fit the dimensionality.
    pub fn strides_per_axis(&self) -> Result<Vec<usize>, ParamsError> {
        self.per_axis("strides", &self.strides)
    }

    /// `overlaps` per axis.
    ///
    /// # Errors
    /// If the length does not fit the dimensionality.
    pub fn overlaps_per_axis(&self) -> Result<Vec<usize>, ParamsError> {
        self.per_axis("overlaps", &self.overlaps)
    }

    /// Rejects nonsensical values: wrong lengths of per-axis values, zero strides, zero counts
    /// (`niter_rig`, `num_frames_split`, `splits_*`, `upsample_factor_grid`), non-positive or
    /// ill-shaped `gSig_filt`, non-finite `min_mov`, zero/negative slice steps, and the
    /// combination CaImAn refuses at run time (high-pass filtering with Fourier shifting).
    ///
    /// # Errors
    /// [`ParamsError::Invalid`] naming the first offending key.
    pub fn validate(&self) -> Result<(), ParamsError> {
        self.max_shifts_per_axis()?;
        if self.strides_per_axis()?.contains(&0) {
            return Err(ParamsError::invalid("strides", "strides must be positive"));
        }
        self.overlaps_per_axis()?;
        for (key, v) in [
            ("niter_rig", self.niter_rig),
            ("num_frames_split", self.num_frames_split),
            ("splits_rig", self.splits_rig),
            ("splits_els", self.splits_els),
            ("upsample_factor_grid", self.upsample_factor_grid),
        ] {
            if v == 0 {
                return Err(ParamsError::invalid(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            ("num_splits_to_process_rig", self.num_splits_to_process_rig),
            ("num_splits_to_process_els", self.num_splits_to_process_els),
        ] {
            if v == Some(0) {
                return Err(ParamsError::invalid(key, "must be at least 1 (or null)"));
            }
        }
        if let Some(g) = &self.gsig_filt {
            if g.len() != self.spatial_dims() && g.len() != 2 {
                return Err(ParamsError::invalid("gSig_filt", format!("expected 2 entries, got {g:?}")));
            }
            if g.contains(&0) {
                return Err(ParamsError::invalid("gSig_filt", "entries must be positive"));
            }
            if !self.shifts_opencv {
                return Err(ParamsError::invalid(
                    "gSig_filt",
                    "high-pass filtering requires shifts_opencv = true (CaImAn raises otherwise)",
                ));
            }
        }
        if let Some(m) = self.min_mov
            && !m.is_finite()
        {
            return Err(ParamsError::invalid("min_mov", format!("must be finite, got {m}")));
        }
        if self.indices.len() != self.spatial_dims() {
            return Err(ParamsError::invalid(
                "indices",
                format!("expected {} slices, got {}", self.spatial_dims(), self.indices.len()),
            ));
        }
        if self.indices.iter().any(|s| s.step.is_some_and(|st| st <= 0)) {
            return Err(ParamsError::invalid("indices", "slice steps must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_tokens_outside_strings_only() {
        let s = r#"{"a": NaN, "b": -Infinity, "c": "NaN Infinity", "d": [Infinity, 1]}"#;
        let n = normalize_nonfinite_tokens(s);
        assert_eq!(n, r#"{"a": "NaN", "b": "-Infinity", "c": "NaN Infinity", "d": ["Infinity", 1]}"#);
        let s = r#"{"e": "a \" NaN", "f": NaN}"#;
        assert_eq!(normalize_nonfinite_tokens(s), r#"{"e": "a \" NaN", "f": "NaN"}"#);
    }

    #[test]
    fn border_nan_roundtrip() {
        for (json, b) in [
            ("true", BorderNan::Nan),
            ("false", BorderNan::None),
            ("\"copy\"", BorderNan::Copy),
            ("\"min\"", BorderNan::Min),
        ] {
            let v: BorderNan = serde_json::from_str(json).unwrap();
            assert_eq!(v, b);
            assert_eq!(serde_json::to_string(&v).unwrap(), json);
        }
        assert!(serde_json::from_str::<BorderNan>("\"max\"").is_err());
    }

    #[test]
    fn slice_ranges() {
        let s = IndexSlice { start: Some(2), stop: Some(-3), step: None };
        assert_eq!(s.range(10), 2..7);
        assert_eq!(IndexSlice::default().range(5), 0..5);
    }
}
