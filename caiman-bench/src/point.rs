//! One point of a performance sweep: one pipeline stage, one configuration, one movie, measured.
//!
//! What it is: the library behind the `caiman-bench-point` binary, which `cargo xtask perf-sweep`
//! starts afresh for every run of every point. [`run_point`] runs a [`Stage`] (rigid or
//! piecewise-rigid motion correction, CNMF, OnACID, or the whole batch pipeline) with a [`PointConfig`] (movie, backend, patch and
//! chunk settings) and returns a [`PointResult`]: wall time, CPU time of the process tree
//! (`getrusage` of this process and of its reaped children), peak resident memory of the tree (this
//! process's `VmHWM` plus every worker process's `VmHWM`, read just before the executor is
//! dropped), frames per second, bytes left in the scratch directory, and accuracy against the
//! ground truth when the movie is synthetic ([`Accuracy`]).
//!
//! Movies: [`prepare`] turns an [`Input`] into the files a stage reads. A synthetic movie
//! (`caiman_io::synth`, the neuron density of `caiman demo`) is generated once into a cache
//! directory and reused: a `u16` TIFF with rigid and non-rigid motion for the motion stages, and
//! the same neurons and activity without motion as an F-order memmap for CNMF — the layout motion
//! correction hands to CNMF in `caiman pipeline`. A given movie file is used by every stage, and
//! its ground truth is used when `<stem>_gt.npz` (what `caiman synth` writes) sits next to it.
//!
//! What each stage times (the region between building the executor and dropping it, so a process
//! pool's start-up and shutdown are included):
//! * `motion-rigid`, `motion-pw`: `caiman_motion::motion_correct` into an F-order memmap in the
//!   scratch directory, as `caiman motion-correct`;
//! * `cnmf`: the one C-order copy CNMF reads (the pixel-block transpose of an F-order memmap, a
//!   streamed copy of any other format, nothing for a C-order memmap) into the scratch directory,
//!   then `caiman_cnmf::cnmf::run_pipeline` (fit — on patches when `rf` is set —, refit, component
//!   evaluation, ΔF/F), as `caiman cnmf`/`caiman pipeline` without saving results;
//! * `pipeline`: the batch pipeline as `caiman pipeline` runs it, on the movie with motion, as one
//!   region: motion correction (rigid unless the parameters or the point ask for piecewise rigid)
//!   into an F-order memmap in scratch (`MotionJob::direct_io` false, so the transpose finds the
//!   corrected movie in the page cache; the default template memory), the F → C pixel-block
//!   transpose of the CORRECTED movie (with CaImAn's `border_to_0` zeroing unless `border_nan` is
//!   `'copy'`), then CNMF (fit, refit, evaluation, ΔF/F). Its `parts` are `motion setup` (the
//!   movie's minimum and the initial template), each motion pass (`motion rigid 1`, …,
//!   `motion piecewise`), `transpose`, and CNMF's report stages. Deliberately left out, as in the
//!   `cnmf` stage: the summary images, the results files and the pictures `caiman pipeline`
//!   writes (output, not computation). Accuracy is both the motion shift error and the CNMF
//!   scores; components are matched to the truth at the template's offset (the median over frames
//!   of the applied rigid shift minus the true shift to apply, rounded), because the corrected
//!   movie sits wherever the template put it.
//!
//! What it is not: a timer of anything outside that region (movie synthesis, ground-truth scoring
//! and results files are excluded), and not a statistics tool — repeats, medians and the choice of
//! a configuration belong to `cargo xtask perf-sweep`. The `online` stage times OnACID
//! (`caiman_online::fit_online`, initialisation included) and scores all its components.
//!
//! Deliberate differences from CaImAn's own measurements (the eLife Fig. 8d script): peak memory
//! is the sum of per-process high-water marks (an upper bound of the tree's simultaneous peak,
//! where `memory_profiler` samples the sum), and CPU time counts only children that were reaped,
//! which every worker is once the executor is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caiman_cnmf::cnmf::run_pipeline;
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::pixels::Fov;
use caiman_io::mmap::MmapSource;
use caiman_io::synth::{GroundTruth, SynthParams, truth_path, write_movie_to};
use caiman_io::{FrameSource, OpenOptions, Order, TiffSample, WriteOptions};
use caiman_motion::{BorderNan, MotionJob, MotionParams, MotionResult, motion_correct};
use caiman_parallel::{AnyExecutor, Backend, Executor, THREAD_ENV_VARS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Bytes of one block of pixel rows in the F → C transpose (as `caiman pipeline`'s default).
const TRANSPOSE_BLOCK_BYTES: usize = 256 << 20;

/// A pipeline stage the sweep can measure. The list is open: a new stage is a variant here, a
/// branch in [`run_point`] and a name in [`Stage::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Rigid NoRMCorre (`pw_rigid = false`).
    MotionRigid,
    /// Piecewise-rigid NoRMCorre (`pw_rigid = true`: the rigid pass, then the patch pass).
    MotionPw,
    /// CNMF: C-order copy, fit (patches when `rf` is set), refit, evaluation, ΔF/F.
    Cnmf,
    /// OnACID (`caiman_online::fit_online`) on the motion-free movie.
    Online,
    /// The batch pipeline on the movie with motion: motion correction, the F → C transpose of the
    /// corrected movie, CNMF (fit, refit, evaluation, ΔF/F), timed as one region.
    Pipeline,
}

impl Stage {
    /// Every stage, in sweep order.
    pub const ALL: [Stage; 5] = [Stage::MotionRigid, Stage::MotionPw, Stage::Cnmf, Stage::Online, Stage::Pipeline];

    /// The stage's name on command lines and in grid files.
    pub fn name(self) -> &'static str {
        match self {
            Stage::MotionRigid => "motion-rigid",
            Stage::MotionPw => "motion-pw",
            Stage::Cnmf => "cnmf",
            Stage::Online => "online",
            Stage::Pipeline => "pipeline",
        }
    }

    /// Parses a stage name (`motion` is accepted for `motion-rigid`).
    ///
    /// # Errors
    /// [`PointError::Config`] naming the known stages.
    pub fn from_name(s: &str) -> Result<Stage, PointError> {
        match s.trim() {
            "motion" => Ok(Stage::MotionRigid),
            name => Stage::ALL.into_iter().find(|st| st.name() == name).ok_or_else(|| {
                let known: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                PointError::Config(format!("unknown stage {name:?} (known: {})", known.join(", ")))
            }),
        }
    }

    /// Whether this is a motion-correction stage (motion correction alone).
    pub fn is_motion(self) -> bool {
        matches!(self, Stage::MotionRigid | Stage::MotionPw)
    }

    /// Whether the stage runs motion correction (and so reads the `motion` group).
    pub fn uses_motion(self) -> bool {
        self.is_motion() || self == Stage::Pipeline
    }

    /// Whether the stage runs CNMF or OnACID (and so reads the CNMF groups).
    pub fn uses_cnmf(self) -> bool {
        matches!(self, Stage::Cnmf | Stage::Online | Stage::Pipeline)
    }
}

/// The movie a point runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Input {
    /// A movie file (any format caiman-io reads); its ground truth is `<stem>_gt.npz` if present.
    File {
        /// The movie.
        path: PathBuf,
    },
    /// A synthetic movie (`caiman_io::synth` defaults at `caiman demo`'s neuron density: 120
    /// neurons per 256 × 256 pixels), generated once into the cache directory.
    Synthetic {
        /// Rows.
        d1: usize,
        /// Columns.
        d2: usize,
        /// Frames.
        frames: usize,
        /// Seed of the generator.
        seed: u64,
    },
}

impl Input {
    /// Parses `D1xD2xT` into a synthetic input.
    ///
    /// # Errors
    /// [`PointError::Config`] for anything else.
    pub fn synthetic(size: &str, seed: u64) -> Result<Input, PointError> {
        let parts: Vec<usize> = size.split(['x', 'X', '×']).map(|p| p.trim().parse().unwrap_or(0)).collect();
        match parts.as_slice() {
            &[d1, d2, frames] if d1 >= 8 && d2 >= 8 && frames >= 10 => Ok(Input::Synthetic { d1, d2, frames, seed }),
            _ => Err(PointError::Config(format!(
                "synthetic size {size:?}: expected D1xD2xT with at least 8×8 pixels and 10 frames (e.g. 256x256x1000)"
            ))),
        }
    }
}

/// Motion-correction settings a point may override (CaImAn's `motion` group); `None` keeps the
/// base parameters' value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionKnobs {
    /// Frames per chunk (`num_frames_split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_frames_split: Option<usize>,
    /// Patch stride on both axes (`strides`), piecewise runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strides: Option<usize>,
    /// Patch overlap on both axes (`overlaps`), piecewise runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlaps: Option<usize>,
    /// Piecewise rigid (`pw_rigid`), `pipeline` points only (the motion stages are rigid or
    /// piecewise by name); `None` keeps the base parameters' value, else rigid (CaImAn's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pw_rigid: Option<bool>,
}

/// CNMF settings a point may override; `None` keeps the base parameters' value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnmfKnobs {
    /// Patch half-size (`patch.rf`); `Some(0)` means no patches (the whole field of view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rf: Option<usize>,
    /// Patch overlap (`patch.stride`, CaImAn's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// Components per patch (`init.K`); for a synthetic movie without a base parameter file,
    /// the default is twice the expected neurons per patch (at least 2), and all neurons without
    /// patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
}

/// Everything one point needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// The stage.
    pub stage: Stage,
    /// The movie.
    pub input: Input,
    /// Where synthetic movies are cached.
    pub cache_dir: PathBuf,
    /// Where the point's intermediate files go (a per-run subdirectory, removed afterwards).
    pub scratch_dir: PathBuf,
    /// The execution backend.
    #[serde(default)]
    pub backend: Backend,
    /// A CaImAn parameter JSON to start from (its `motion` group and the CNMF groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<PathBuf>,
    /// Motion overrides.
    #[serde(default)]
    pub motion: MotionKnobs,
    /// CNMF overrides.
    #[serde(default)]
    pub cnmf: CnmfKnobs,
}

/// The files a stage reads, and what is known about them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedMovie {
    /// The movie the motion stages correct.
    pub motion_movie: PathBuf,
    /// Its ground truth, if any.
    pub motion_truth: Option<PathBuf>,
    /// The movie CNMF runs on (registered, or without motion).
    pub cnmf_movie: PathBuf,
    /// Its ground truth, if any.
    pub cnmf_truth: Option<PathBuf>,
    /// Rows, columns, planes.
    pub dims: [usize; 3],
    /// Frames.
    pub frames: usize,
    /// Whether the movie was synthesised here.
    pub synthetic: bool,
    /// Generator parameters of a synthetic movie (or of the truth found next to a file).
    pub synth: Option<SynthParams>,
}

impl PreparedMovie {
    /// Pixels per frame.
    pub fn pixels(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Accuracy against the ground truth (all `None` without one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Motion: RMS error of the applied shifts against the true shifts to apply, in pixels, after
    /// removing the median offset per axis (the template's position is arbitrary): the rigid shifts
    /// for `motion-rigid` (and a rigid `pipeline`); every patch's shifts against the true
    /// displacement at the patch centre (median removed per patch and axis) for `motion-pw` (and a
    /// piecewise-rigid `pipeline`).
    pub shift_rms_px: Option<f64>,
    /// CNMF: F1 of the accepted components against the neurons centred in the field of view
    /// (CaImAn's `nf_match_neurons_in_binary_masks`, IoU cost 0.7); for `pipeline`, with the truth
    /// placed at the motion template's offset.
    pub f1: Option<f64>,
    /// CNMF: precision of that matching.
    pub precision: Option<f64>,
    /// CNMF: recall of that matching.
    pub recall: Option<f64>,
    /// CNMF: median Pearson correlation of matched traces with the true calcium.
    pub median_trace_corr: Option<f64>,
    /// CNMF: ground-truth neurons scored against.
    pub gt_neurons: Option<usize>,
}

/// What one run of one point measured: the JSON line `caiman-bench-point` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// The stage.
    pub stage: Stage,
    /// The backend, in its short form (`processes:2,inner=1`).
    pub backend: String,
    /// `linear`, `threads` or `processes`.
    pub strategy: String,
    /// Workers of the executor.
    pub workers: usize,
    /// Inner threads each task got.
    pub inner_threads: usize,
    /// Where that number came from (explicit, share of the cores, an environment variable).
    pub inner_source: String,
    /// The thread variables (`OMP_NUM_THREADS`, …) set in this process's environment.
    pub thread_env: BTreeMap<String, String>,
    /// Cores available to this process.
    pub cores: usize,
    /// The movie the stage read.
    pub movie: PathBuf,
    /// Rows, columns, planes.
    pub dims: [usize; 3],
    /// Frames.
    pub frames: usize,
    /// Wall seconds of the stage (executor built → executor dropped).
    pub wall_s: f64,
    /// User + system CPU seconds of this process and its reaped children during the stage.
    pub cpu_s: f64,
    /// The part of [`cpu_s`](Self::cpu_s) spent in child processes (workers).
    pub cpu_children_s: f64,
    /// Peak resident memory of the process tree, KiB: [`parent_peak_rss_kib`](Self::parent_peak_rss_kib)
    /// + [`workers_peak_rss_kib`](Self::workers_peak_rss_kib).
    pub peak_rss_kib: u64,
    /// This process's `VmHWM`, KiB.
    pub parent_peak_rss_kib: u64,
    /// Sum over worker processes of their `VmHWM`, KiB (0 without worker processes).
    pub workers_peak_rss_kib: u64,
    /// Peak of the process tree as the library's own run statistics reported it, KiB (the largest
    /// per-pass or per-stage figure), for comparison.
    pub reported_peak_rss_kib: u64,
    /// Frames per second of wall time.
    pub frames_per_s: f64,
    /// Bytes of the files the stage left in its scratch directory (corrected movie, C-order
    /// copy), measured before the directory is removed.
    pub scratch_bytes: u64,
    /// Accuracy against the ground truth.
    pub accuracy: Accuracy,
    /// Seconds of the stage's parts (passes of motion correction; transpose and CNMF steps; all of
    /// them, motion parts prefixed `motion `, for `pipeline`).
    pub parts: Vec<(String, f64)>,
    /// Motion: crispness of the corrected mean image (CaImAn's metric; higher is sharper).
    pub crispness: Option<f64>,
    /// CNMF: components found.
    pub components: Option<usize>,
    /// CNMF: components accepted by the evaluation.
    pub accepted: Option<usize>,
    /// The effective CaImAn parameters of the run (base file or synthetic defaults, with the
    /// point's overrides), nested groups as `CNMFParams.to_json()` has them; only the groups the
    /// point set.
    pub params: Value,
    /// Whether the synthetic movie had to be generated inside this run (the memory peak then
    /// includes the generator unless it could be reset).
    pub prepared_in_process: bool,
}

/// Why a point could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PointError {
    /// A bad configuration (the message says what and why).
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a movie failed.
    #[error("{context}: {source}")]
    Movie {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: caiman_io::Error,
    },
    /// Motion correction failed.
    #[error("motion correction: {0}")]
    Motion(#[from] caiman_motion::Error),
    /// CNMF failed.
    #[error("CNMF: {0}")]
    Cnmf(#[from] caiman_cnmf::Error),
    /// The executor failed.
    #[error("executor: {0}")]
    Exec(#[from] caiman_parallel::ExecError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PointError + '_ {
    move |source| PointError::Io { path: path.to_path_buf(), source }
}

fn movie_err(context: String) -> impl FnOnce(caiman_io::Error) -> PointError {
    move |source| PointError::Movie { context, source }
}

/// `caiman demo`'s neuron density: 120 neurons per 256 × 256 pixels.
fn neurons_for(d1: usize, d2: usize) -> usize {
    ((d1 * d2) as f64 * 120.0 / 65536.0).round().max(1.0) as usize
}

/// The generator parameters of a synthetic input.
pub fn synth_params(d1: usize, d2: usize, frames: usize, seed: u64) -> SynthParams {
    SynthParams { dims: [d1, d2], frames, seed, n_neurons: neurons_for(d1, d2), ..SynthParams::default() }
}

/// Turns `input` into the files the stages read, generating a synthetic movie into
/// `cache_dir/synth_<d1>x<d2>x<T>_seed<s>/` unless it is already there (`prepared.json`, written
/// last, marks a complete cache entry). Returns the record and whether it generated anything.
///
/// # Errors
/// I/O and movie errors naming the file.
pub fn prepare(input: &Input, cache_dir: &Path) -> Result<(PreparedMovie, bool), PointError> {
    match input {
        Input::File { path } => {
            let src = caiman_io::open(path, &OpenOptions::default())
                .map_err(movie_err(format!("opening {}", path.display())))?;
            let shape = src.info().shape;
            let gt = truth_path(path);
            let truth = gt.is_file().then_some(gt);
            let synth = match &truth {
                Some(p) => {
                    Some(GroundTruth::load(p).map_err(movie_err(format!("ground truth {}", p.display())))?.params)
                }
                None => None,
            };
            let prepared = PreparedMovie {
                motion_movie: path.clone(),
                motion_truth: truth.clone(),
                cnmf_movie: path.clone(),
                cnmf_truth: truth,
                dims: [shape.dims.d1, shape.dims.d2, shape.dims.d3],
                frames: shape.frames,
                synthetic: false,
                synth,
            };
            Ok((prepared, false))
        }
        &Input::Synthetic { d1, d2, frames, seed } => {
            let dir = cache_dir.join(format!("synth_{d1}x{d2}x{frames}_seed{seed}"));
            let marker = dir.join("prepared.json");
            if let Ok(text) = std::fs::read_to_string(&marker)
                && let Ok(p) = serde_json::from_str::<PreparedMovie>(&text)
                && [&p.motion_movie, &p.cnmf_movie].iter().all(|f| f.is_file())
            {
                return Ok((p, false));
            }
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let params = synth_params(d1, d2, frames, seed);
            // The motion stages read what a microscope writes: u16 TIFF, with motion.
            let tiff_opts = WriteOptions { tiff_sample: TiffSample::U16, ..Default::default() };
            let (motion_movie, truth) = write_movie_to(&params, &dir.join("motion.tif"), &tiff_opts, &mut |_, _| {})
                .map_err(movie_err(format!("synthesising into {}", dir.display())))?;
            let motion_truth = truth_path(&motion_movie);
            truth.save(&motion_truth).map_err(movie_err(format!("writing {}", motion_truth.display())))?;
            // CNMF reads what motion correction hands it: an F-order memmap, here of the same
            // neurons and activity without motion (so the truth's masks apply as they are).
            let still = params.clone().without_motion();
            let f_opts = WriteOptions { order: Order::F, ..Default::default() };
            let (cnmf_movie, truth) = write_movie_to(&still, &dir.join("static.mmap"), &f_opts, &mut |_, _| {})
                .map_err(movie_err(format!("synthesising into {}", dir.display())))?;
            let cnmf_truth = dir.join("static_gt.npz");
            truth.save(&cnmf_truth).map_err(movie_err(format!("writing {}", cnmf_truth.display())))?;
            let prepared = PreparedMovie {
                motion_movie,
                motion_truth: Some(motion_truth),
                cnmf_movie,
                cnmf_truth: Some(cnmf_truth),
                dims: [d1, d2, 1],
                frames,
                synthetic: true,
                synth: Some(params),
            };
            let text = serde_json::to_string_pretty(&prepared).map_err(|e| PointError::Config(e.to_string()))?;
            let tmp = dir.join(format!(".prepared.json.{}", std::process::id()));
            std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
            Ok((prepared, true))
        }
    }
}

/// The CaImAn parameters a point starts from: the `params` file if given, else CNMF settings for
/// the synthetic movie as `caiman demo` chooses them (its frame rate and decay time, `gSig` = the
/// neurons' size, two background components, AR(1), `merge_thr` 0.85, `min_SNR` 2, `rval_thr`
/// 0.85, no CNN), else CaImAn's defaults.
///
/// # Errors
/// An unreadable or non-object parameter file.
pub fn base_params(params: Option<&Path>, prepared: &PreparedMovie) -> Result<Value, PointError> {
    if let Some(p) = params {
        let text = std::fs::read_to_string(p).map_err(io_err(p))?;
        let text = caiman_motion::params::normalize_nonfinite_tokens(&text);
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| PointError::Config(format!("{}: not a parameter JSON: {e}", p.display())))?;
        if !v.is_object() {
            return Err(PointError::Config(format!("{}: the parameter JSON must be an object", p.display())));
        }
        return Ok(v);
    }
    Ok(match &prepared.synth {
        Some(s) => {
            let gsig = s.gsig.round().max(1.0);
            json!({
                "data": {"fr": s.fr, "decay_time": s.tau_decay},
                "init": {"gSig": [gsig, gsig], "nb": 2},
                "preprocess": {"p": 1},
                "spatial": {"nb": 2},
                "temporal": {"p": 1, "nb": 2},
                "merging": {"merge_thr": 0.85},
                "quality": {"min_SNR": 2.0, "rval_thr": 0.85, "use_cnn": false},
            })
        }
        None => json!({}),
    })
}

/// Sets `group.key = value` in a nested parameter object.
fn set(v: &mut Value, group: &str, key: &str, value: Value) {
    if !v.get(group).is_some_and(Value::is_object) {
        v[group] = json!({});
    }
    v[group][key] = value;
}

/// The point's effective parameters: `base` with the point's overrides applied — the `motion`
/// group for the stages that run motion correction, the CNMF groups for those that run CNMF or
/// OnACID (both for `pipeline`).
pub fn effective_params(cfg: &PointConfig, prepared: &PreparedMovie, base: &Value) -> Value {
    let mut v = base.clone();
    if cfg.stage.uses_motion() {
        let pw = match cfg.stage {
            Stage::MotionPw => true,
            Stage::Pipeline => cfg
                .motion
                .pw_rigid
                .or_else(|| base.pointer("/motion/pw_rigid").and_then(Value::as_bool))
                .unwrap_or(false),
            _ => false,
        };
        set(&mut v, "motion", "pw_rigid", json!(pw));
        if let Some(n) = cfg.motion.num_frames_split {
            set(&mut v, "motion", "num_frames_split", json!(n));
        }
        if let Some(s) = cfg.motion.strides {
            set(&mut v, "motion", "strides", json!([s, s]));
        }
        if let Some(o) = cfg.motion.overlaps {
            set(&mut v, "motion", "overlaps", json!([o, o]));
        }
    }
    if cfg.stage.uses_cnmf() {
        let rf = cfg.cnmf.rf.or_else(|| base.pointer("/patch/rf").and_then(Value::as_u64).map(|r| r as usize));
        match rf {
            Some(0) => {
                set(&mut v, "patch", "rf", Value::Null);
                set(&mut v, "patch", "stride", Value::Null);
            }
            Some(r) => {
                set(&mut v, "patch", "rf", json!(r));
                if let Some(s) = cfg.cnmf.stride {
                    set(&mut v, "patch", "stride", json!(s));
                }
            }
            None => {}
        }
        let k = cfg.cnmf.k.or_else(|| {
            // Only without a base file: a user's file keeps its own K.
            if cfg.params.is_some() {
                return None;
            }
            let s = prepared.synth.as_ref()?;
            Some(match rf {
                Some(r) if r > 0 => {
                    let area = ((2 * r + 1) as f64).powi(2);
                    let density = s.n_neurons as f64 / (s.dims[0] * s.dims[1]) as f64;
                    ((2.0 * density * area).ceil() as usize).max(2)
                }
                _ => s.n_neurons,
            })
        });
        if let Some(k) = k {
            set(&mut v, "init", "K", json!(k));
        }
    }
    v
}

/// CPU seconds (user + system) of this process and of its reaped children.
fn rusage_s() -> (f64, f64) {
    fn get(who: libc::c_int) -> f64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a complete `rusage` through the pointer when it returns 0.
        let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
        if rc != 0 {
            return 0.0;
        }
        // SAFETY: initialised by the successful call above.
        let r = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(r.ru_utime) + tv(r.ru_stime)
    }
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

/// `VmHWM` of process `pid` in KiB (0 if unreadable).
fn vm_hwm_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak-RSS mark to its current RSS (Linux `clear_refs` value 5), so that
/// generating a movie in-process does not count in the point's peak. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The thread variables set in this process's environment.
fn thread_env() -> BTreeMap<String, String> {
    THREAD_ENV_VARS.iter().filter_map(|&k| std::env::var(k).ok().map(|v| (k.to_owned(), v))).collect()
}

/// Sum of the worker processes' `VmHWM` (KiB), read while they are alive.
fn workers_peak_kib(exec: &AnyExecutor) -> u64 {
    match exec {
        AnyExecutor::Processes(p) => p.worker_pids().iter().map(|pid| vm_hwm_kib(&pid.to_string())).sum(),
        _ => 0,
    }
}

/// What the timed region of a stage hands back.
struct StageOutcome {
    parts: Vec<(String, f64)>,
    reported_peak_kib: u64,
    accuracy: Accuracy,
    crispness: Option<f64>,
    components: Option<usize>,
    accepted: Option<usize>,
    /// Scoring runs after the timing: kept here until then.
    score: Option<Scorer>,
}

/// Runs one point and measures it.
///
/// # Errors
/// Configuration, movie, stage and executor errors.
pub fn run_point(cfg: &PointConfig) -> Result<PointResult, PointError> {
    let (prepared, generated) = prepare(&cfg.input, &cfg.cache_dir)?;
    if generated {
        reset_peak_rss();
    }
    let base = base_params(cfg.params.as_deref(), &prepared)?;
    let params = effective_params(cfg, &prepared, &base);
    let params_text = params.to_string();
    std::fs::create_dir_all(&cfg.scratch_dir).map_err(io_err(&cfg.scratch_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix(".caiman-bench-point-")
        .tempdir_in(&cfg.scratch_dir)
        .map_err(io_err(&cfg.scratch_dir))?;

    let movie = if cfg.stage.uses_motion() { prepared.motion_movie.clone() } else { prepared.cnmf_movie.clone() };
    // Check the parameters before the clock starts.
    let motion_params = if cfg.stage.uses_motion() {
        let (p, _) = MotionParams::from_caiman_json(&params_text)
            .map_err(|e| PointError::Config(format!("motion parameters: {e}")))?;
        Some(p)
    } else {
        None
    };
    let cnmf_params = if cfg.stage.uses_cnmf() {
        let (mut p, _) = CnmfParams::from_caiman_json(&params_text)
            .map_err(|e| PointError::Config(format!("CNMF parameters: {e}")))?;
        let mut dims = vec![prepared.dims[0], prepared.dims[1]];
        if prepared.dims[2] > 1 {
            dims.push(prepared.dims[2]);
        }
        p.data.dims = Some(dims);
        p.check_consistency(Some(prepared.frames)).map_err(|e| PointError::Config(format!("CNMF parameters: {e}")))?;
        Some(p)
    } else {
        None
    };

    let (cpu0_self, cpu0_children) = rusage_s();
    let started = Instant::now();
    let exec = cfg.backend.build()?;
    let inner = exec.inner_threads().clone();
    let outcome = match (cfg.stage, motion_params, cnmf_params) {
        (Stage::Pipeline, Some(m), Some(c)) => run_batch_pipeline(&movie, m, c, &prepared, scratch.path(), &exec)?,
        (Stage::MotionRigid | Stage::MotionPw, Some(p), _) => run_motion(&movie, p, &prepared, scratch.path(), &exec)?,
        (Stage::Online, _, Some(p)) => run_online(&movie, p, &prepared, &exec)?,
        (Stage::Cnmf, _, Some(p)) => run_cnmf(&movie, p, &prepared, scratch.path(), &exec)?,
        (stage, _, _) => return Err(PointError::Config(format!("stage {} has no runner", stage.name()))),
    };
    let workers_peak = workers_peak_kib(&exec);
    let workers = exec.workers();
    let strategy = exec.strategy().to_string();
    drop(exec);
    let wall = started.elapsed();
    let (cpu1_self, cpu1_children) = rusage_s();
    let scratch_bytes = dir_bytes(scratch.path());
    let parent_peak = caiman_parallel::peak_rss_kib();

    let mut accuracy = outcome.accuracy;
    if let Some(score) = outcome.score {
        accuracy = score()?;
    }
    scratch.close().map_err(io_err(&cfg.scratch_dir))?;
    let cpu_children = (cpu1_children - cpu0_children).max(0.0);
    Ok(PointResult {
        stage: cfg.stage,
        backend: cfg.backend.to_string(),
        strategy,
        workers,
        inner_threads: inner.per_task,
        inner_source: inner.to_string(),
        thread_env: thread_env(),
        cores: caiman_parallel::available_cores(),
        movie,
        dims: prepared.dims,
        frames: prepared.frames,
        wall_s: secs(wall),
        cpu_s: (cpu1_self - cpu0_self).max(0.0) + cpu_children,
        cpu_children_s: cpu_children,
        peak_rss_kib: parent_peak + workers_peak,
        parent_peak_rss_kib: parent_peak,
        workers_peak_rss_kib: workers_peak,
        reported_peak_rss_kib: outcome.reported_peak_kib,
        frames_per_s: prepared.frames as f64 / secs(wall).max(1e-9),
        scratch_bytes,
        accuracy,
        parts: outcome.parts,
        crispness: outcome.crispness,
        components: outcome.components,
        accepted: outcome.accepted,
        params,
        prepared_in_process: generated,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run_motion(
    movie: &Path,
    params: MotionParams,
    prepared: &PreparedMovie,
    scratch: &Path,
    exec: &AnyExecutor,
) -> Result<StageOutcome, PointError> {
    let pw = params.pw_rigid;
    // As `caiman motion-correct`: nothing reads the output back, so it bypasses the page cache.
    let res = correct_into_scratch(movie, params, scratch, exec, true)?;
    let parts = res.passes.iter().map(|p| (p.name.clone(), p.wall_s)).collect();
    let reported_peak_kib = res.passes.iter().map(|p| p.peak_rss_kib).max().unwrap_or(0);
    let crispness = Some(res.metrics.crispness);
    let truth = prepared.motion_truth.clone();
    let score: Option<Scorer> = truth.map(|t| {
        Box::new(move || {
            let truth = GroundTruth::load(&t).map_err(movie_err(format!("ground truth {}", t.display())))?;
            Ok(Accuracy { shift_rms_px: Some(motion_error(&res, &truth, pw)?), ..Accuracy::default() })
        }) as Scorer
    });
    Ok(StageOutcome {
        parts,
        reported_peak_kib,
        accuracy: Accuracy::default(),
        crispness,
        components: None,
        accepted: None,
        score,
    })
}

/// Motion-corrects `movie` into `scratch/corrected.mmap` (F order), `direct_io` as
/// [`MotionJob::direct_io`].
fn correct_into_scratch(
    movie: &Path,
    params: MotionParams,
    scratch: &Path,
    exec: &AnyExecutor,
    direct_io: bool,
) -> Result<MotionResult, PointError> {
    let job = MotionJob {
        inputs: vec![movie.to_path_buf()],
        open: OpenOptions::default(),
        output: scratch.join("corrected.mmap"),
        params,
        template: None,
        direct_io,
        template_memory: caiman_motion::template::DEFAULT_TEMPLATE_MEMORY,
    };
    Ok(motion_correct(&job, exec, &mut |_, _, _| {})?)
}

/// RMS of `d − median(d)` over a sample.
fn centred_sq_sum(d: &mut [f64]) -> f64 {
    let mut sorted = d.to_vec();
    sorted.sort_by(f64::total_cmp);
    let med = if sorted.is_empty() { 0.0 } else { sorted[sorted.len() / 2] };
    d.iter().map(|v| (v - med).powi(2)).sum()
}

/// The shift error of a motion result against the ground truth (see [`Accuracy::shift_rms_px`]).
///
/// # Errors
/// [`PointError::Config`] when the truth does not describe this movie.
pub fn motion_error(res: &MotionResult, truth: &GroundTruth, pw: bool) -> Result<f64, PointError> {
    let frames = res.shape.frames;
    if truth.frames() != frames || res.shifts_rig.nrows() != frames {
        return Err(PointError::Config(format!(
            "ground truth has {} frames, the corrected movie {frames}",
            truth.frames()
        )));
    }
    let (mut total, mut n) = (0.0, 0usize);
    match (pw, &res.x_shifts_els, &res.y_shifts_els, &res.patch_centers) {
        (true, Some(xs), Some(ys), Some(centres)) => {
            for p in 0..centres.nrows() {
                let (row, col) = (centres[[p, 0]], centres[[p, 1]]);
                let want: Vec<[f64; 2]> = (0..frames)
                    .map(|t| {
                        let d = truth.displacement_at(t, row, col);
                        [-d[0], -d[1]]
                    })
                    .collect();
                for (ax, ours) in [xs, ys].into_iter().enumerate() {
                    let mut d: Vec<f64> = (0..frames).map(|t| ours[[t, p]] - want[t][ax]).collect();
                    total += centred_sq_sum(&mut d);
                    n += frames;
                }
            }
        }
        _ => {
            for ax in 0..2 {
                let mut d: Vec<f64> =
                    (0..frames).map(|t| res.shifts_rig[[t, ax]] - truth.shift_to_apply(t)[ax]).collect();
                total += centred_sq_sum(&mut d);
                n += frames;
            }
        }
    }
    Ok((total / n.max(1) as f64).sqrt())
}

/// A C-order memmap of `movie` for CNMF in `scratch` (or `movie` itself when it is one): the
/// pixel-block transpose of an F-order memmap, else a streamed copy.
///
/// # Errors
/// Movie errors naming the file.
pub fn c_order_copy(movie: &Path, scratch: &Path) -> Result<PathBuf, PointError> {
    let (path, _) = caiman_io::mmap::c_order_memmap(
        &[movie.to_path_buf()],
        &OpenOptions::default(),
        &scratch.join("movie"),
        TRANSPOSE_BLOCK_BYTES,
        &mut |_, _, _| {},
    )
    .map_err(movie_err(format!("making a C-order memmap of {}", movie.display())))?;
    Ok(path)
}

/// The deferred scoring of `est` (the components to score) against the synthetic ground truth
/// (none for a given movie): F1, precision, recall and the median correlation of matched traces.
fn truth_score(prepared: &PreparedMovie, est: caiman_cnmf::estimates::Estimates) -> Option<Scorer> {
    let t = prepared.cnmf_truth.clone()?;
    Some(Box::new(move || {
        let truth = GroundTruth::load(&t).map_err(movie_err(format!("ground truth {}", t.display())))?;
        cnmf_accuracy(&est, &truth, [0, 0])
    }))
}

/// F1, precision, recall and the median correlation of matched traces of `est` against the
/// ground truth moved by `offset` pixels.
fn cnmf_accuracy(
    est: &caiman_cnmf::estimates::Estimates,
    truth: &GroundTruth,
    offset: [isize; 2],
) -> Result<Accuracy, PointError> {
    let s = caiman_cnmf::matching::score_against_truth(&est.a, est.c.view(), truth, offset)?;
    let m = &s.matching;
    Ok(Accuracy {
        f1: Some(m.f1),
        precision: Some(m.precision),
        recall: Some(m.recall),
        median_trace_corr: Some(s.median_trace_corr).filter(|v| v.is_finite()),
        gt_neurons: Some(s.gt_neurons.len()),
        ..Accuracy::default()
    })
}

/// What a CNMF run on a C-order memmap hands back to a stage.
struct CnmfRun {
    /// CNMF's stages and their seconds.
    parts: Vec<(String, f64)>,
    /// Largest per-stage peak RSS (parent + workers) CNMF reported, KiB.
    peak_kib: u64,
    /// Components after refit.
    components: usize,
    /// The accepted components (all when nothing was evaluated).
    accepted: caiman_cnmf::estimates::Estimates,
}

/// CNMF (patches when `rf` is set) → refit → evaluation → ΔF/F on the C-order memmap `c_path`.
fn cnmf_on_memmap(c_path: &Path, params: &CnmfParams, exec: &AnyExecutor) -> Result<CnmfRun, PointError> {
    let src = MmapSource::open(c_path).map_err(movie_err(format!("mapping {}", c_path.display())))?;
    let dims = src.info().shape.dims;
    let fov = Fov { mmap: Some(c_path), ..Fov::new(dims, src.yr())? };
    let out = run_pipeline(&fov, params, exec)?;
    drop(src);
    let parts = out.report.stages.iter().map(|s| (s.stage.clone(), s.seconds)).collect();
    let peak_kib = out.report.stages.iter().map(|s| s.peak_rss_kib + s.worker_peak_rss_kib).max().unwrap_or(0);
    let est = out.estimates;
    let keep: Vec<usize> = est.idx_components.clone().unwrap_or_else(|| (0..est.n_components()).collect());
    Ok(CnmfRun { parts, peak_kib, components: est.n_components(), accepted: est.subset(&keep) })
}

/// A deferred accuracy computation (run after the clock stops).
type Scorer = Box<dyn FnOnce() -> Result<Accuracy, PointError>>;

/// OnACID (`caiman_online::fit_online`, sequential) on the movie; every component is scored (OnACID
/// does not evaluate its components).
fn run_online(
    movie: &Path,
    params: CnmfParams,
    prepared: &PreparedMovie,
    exec: &AnyExecutor,
) -> Result<StageOutcome, PointError> {
    let mut sources = vec![
        caiman_io::open(movie, &OpenOptions::default()).map_err(movie_err(format!("opening {}", movie.display())))?,
    ];
    let opts = caiman_online::FitOnlineOptions::default();
    let out = caiman_online::fit_online(&mut sources, &params, exec, &opts, &mut |_| {})
        .map_err(|e| PointError::Config(format!("OnACID: {e}")))?;
    let r = &out.report;
    let parts = vec![("init".to_owned(), r.seconds_init), ("online".to_owned(), r.seconds_online)];
    let est = out.estimates;
    let components = Some(est.n_components());
    let score = truth_score(prepared, est);
    Ok(StageOutcome {
        parts,
        reported_peak_kib: 0,
        accuracy: Accuracy::default(),
        crispness: None,
        components,
        accepted: components,
        score,
    })
}

fn run_cnmf(
    movie: &Path,
    params: CnmfParams,
    prepared: &PreparedMovie,
    scratch: &Path,
    exec: &AnyExecutor,
) -> Result<StageOutcome, PointError> {
    let t0 = Instant::now();
    let c_path = c_order_copy(movie, scratch)?;
    let mut parts = vec![("c-order copy".to_owned(), secs(t0.elapsed()))];
    let run = cnmf_on_memmap(&c_path, &params, exec)?;
    parts.extend(run.parts);
    Ok(StageOutcome {
        parts,
        reported_peak_kib: run.peak_kib,
        accuracy: Accuracy::default(),
        crispness: None,
        components: Some(run.components),
        accepted: Some(run.accepted.n_components()),
        score: truth_score(prepared, run.accepted),
    })
}

/// Where the ground-truth scene sits in the motion-corrected movie: per axis, the median over
/// frames of (the applied rigid shift − the true shift to apply), rounded (a neuron at reference
/// position `q` appears at `q + offset`).
fn template_offset(res: &MotionResult, truth: &GroundTruth) -> [isize; 2] {
    std::array::from_fn(|ax| {
        let mut d: Vec<f64> =
            (0..res.shifts_rig.nrows()).map(|t| res.shifts_rig[[t, ax]] - truth.shift_to_apply(t)[ax]).collect();
        d.sort_by(f64::total_cmp);
        let med = match d.len() {
            0 => 0.0,
            n if n % 2 == 1 => d[n / 2],
            n => 0.5 * (d[n / 2 - 1] + d[n / 2]),
        };
        med.round() as isize
    })
}

/// The batch pipeline as `caiman pipeline` runs it (without summary images and output files):
/// motion correction into an F-order memmap, the F → C transpose of the corrected movie, CNMF.
fn run_batch_pipeline(
    movie: &Path,
    mparams: MotionParams,
    cparams: CnmfParams,
    prepared: &PreparedMovie,
    scratch: &Path,
    exec: &AnyExecutor,
) -> Result<StageOutcome, PointError> {
    let pw = mparams.pw_rigid;
    let border_copy = mparams.border_nan == BorderNan::Copy;
    let t0 = Instant::now();
    // As `caiman pipeline`: through the page cache, where the transpose finds the movie.
    let res = correct_into_scratch(movie, mparams, scratch, exec, false)?;
    let motion_s = secs(t0.elapsed());
    let passes_s: f64 = res.passes.iter().map(|p| p.wall_s).sum();
    let mut parts = vec![("motion setup".to_owned(), (motion_s - passes_s).max(0.0))];
    parts.extend(res.passes.iter().map(|p| (format!("motion {}", p.name), p.wall_s)));
    let motion_peak = res.passes.iter().map(|p| p.peak_rss_kib).max().unwrap_or(0);

    let t0 = Instant::now();
    let border = if border_copy { 0 } else { res.border_to_0 };
    let c_path = caiman_io::mmap::transpose_f_to_c(
        &res.output,
        &scratch.join("movie"),
        border,
        TRANSPOSE_BLOCK_BYTES,
        &mut |_, _| {},
    )
    .map_err(movie_err(format!("transposing {}", res.output.display())))?;
    parts.push(("transpose".to_owned(), secs(t0.elapsed())));

    let run = cnmf_on_memmap(&c_path, &cparams, exec)?;
    parts.extend(run.parts);
    let (components, accepted) = (Some(run.components), Some(run.accepted.n_components()));
    let crispness = Some(res.metrics.crispness);
    let est = run.accepted;
    let score: Option<Scorer> = prepared.motion_truth.clone().map(|t| {
        Box::new(move || {
            let truth = GroundTruth::load(&t).map_err(movie_err(format!("ground truth {}", t.display())))?;
            let shift = motion_error(&res, &truth, pw)?;
            // The corrected movie sits where the motion template put it.
            let acc = cnmf_accuracy(&est, &truth, template_offset(&res, &truth))?;
            Ok(Accuracy { shift_rms_px: Some(shift), ..acc })
        }) as Scorer
    });
    Ok(StageOutcome {
        parts,
        reported_peak_kib: motion_peak.max(run.peak_kib),
        accuracy: Accuracy::default(),
        crispness,
        components,
        accepted,
        score,
    })
}

/// The binary's command line: `caiman-bench-point run CONFIG.json` (or `-` for stdin, or the JSON
/// itself), `caiman-bench-point prepare INPUT.json CACHE_DIR` (the [`PreparedMovie`]),
/// `caiman-bench-point stages` (each stage's name → `null`, or why it cannot run). Returns the
/// JSON line to print.
///
/// # Errors
/// Usage errors and the errors of [`run_point`] / [`prepare`].
pub fn main_with_args(args: &[String]) -> Result<String, PointError> {
    let read_json = |arg: &str| -> Result<String, PointError> {
        let t = arg.trim_start();
        if t.starts_with('{') {
            return Ok(arg.to_owned());
        }
        if arg == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(io_err(Path::new("<stdin>")))?;
            return Ok(s);
        }
        std::fs::read_to_string(arg).map_err(io_err(Path::new(arg)))
    };
    let bad_json = |what: &str, e: serde_json::Error| PointError::Config(format!("{what}: {e}"));
    match args {
        [cmd, cfg] if cmd == "run" => {
            let cfg: PointConfig = serde_json::from_str(&read_json(cfg)?).map_err(|e| bad_json("point config", e))?;
            let r = run_point(&cfg)?;
            serde_json::to_string(&r).map_err(|e| bad_json("result", e))
        }
        [cmd] if cmd == "stages" => {
            let m: BTreeMap<&str, Option<String>> = Stage::ALL.iter().map(|s| (s.name(), None)).collect();
            serde_json::to_string(&m).map_err(|e| bad_json("stages", e))
        }
        [cmd, input, cache] if cmd == "prepare" => {
            let input: Input = serde_json::from_str(&read_json(input)?).map_err(|e| bad_json("input", e))?;
            let (p, _) = prepare(&input, Path::new(cache))?;
            serde_json::to_string(&p).map_err(|e| bad_json("prepared movie", e))
        }
        _ => Err(PointError::Config(
            "usage: caiman-bench-point run CONFIG.json|-|'{…}'  |  caiman-bench-point prepare INPUT.json|'{…}' CACHE_DIR  \
             |  caiman-bench-point stages"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()).unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        assert!(Stage::from_name("bogus").is_err());
    }

    #[test]
    fn synthetic_sizes_parse_or_are_refused() {
        assert_eq!(
            Input::synthetic("64x48x100", 3).unwrap(),
            Input::Synthetic { d1: 64, d2: 48, frames: 100, seed: 3 }
        );
        for bad in ["64x48", "axbxc", "4x4x100", "64x64x2"] {
            assert!(Input::synthetic(bad, 1).is_err(), "{bad}");
        }
    }

    fn prepared_synth(d: usize) -> PreparedMovie {
        PreparedMovie {
            motion_movie: "m.tif".into(),
            motion_truth: None,
            cnmf_movie: "c.mmap".into(),
            cnmf_truth: None,
            dims: [d, d, 1],
            frames: 100,
            synthetic: true,
            synth: Some(synth_params(d, d, 100, 1)),
        }
    }

    #[test]
    fn overrides_land_in_caiman_groups() {
        let prepared = prepared_synth(256);
        let mut cfg = PointConfig {
            stage: Stage::MotionPw,
            input: Input::Synthetic { d1: 256, d2: 256, frames: 100, seed: 1 },
            cache_dir: "c".into(),
            scratch_dir: "s".into(),
            backend: Backend::threads(2),
            params: None,
            motion: MotionKnobs { num_frames_split: Some(50), strides: Some(48), overlaps: Some(24), pw_rigid: None },
            cnmf: CnmfKnobs { rf: Some(15), stride: Some(6), k: None },
        };
        let base = base_params(None, &prepared).unwrap();
        let v = effective_params(&cfg, &prepared, &base);
        let (m, _) = MotionParams::from_caiman_json(&v.to_string()).unwrap();
        assert!(m.pw_rigid);
        assert_eq!((m.num_frames_split, m.strides.clone(), m.overlaps.clone()), (50, vec![48, 48], vec![24, 24]));
        assert!(v.get("patch").is_none(), "a motion point leaves the CNMF groups alone");

        cfg.stage = Stage::Cnmf;
        let v = effective_params(&cfg, &prepared, &base);
        // 120 neurons per 256²: 31² px hold 1.76 neurons on average → K = ceil(3.5) = 4.
        assert_eq!(v.pointer("/init/K"), Some(&json!(4)));
        assert_eq!(v.pointer("/patch/rf"), Some(&json!(15)));
        let (p, _) = CnmfParams::from_caiman_json(&v.to_string()).unwrap();
        assert_eq!(p.patch.rf.as_ref().map(|r| r.get(0)), Some(15));
        assert!(!p.quality.use_cnn);

        cfg.cnmf = CnmfKnobs { rf: Some(0), stride: None, k: None };
        let v = effective_params(&cfg, &prepared, &base);
        assert_eq!(v.pointer("/patch/rf"), Some(&Value::Null));
        assert_eq!(v.pointer("/init/K"), Some(&json!(120)), "whole field of view: every neuron");

        // The pipeline takes both groups: rigid by default (CaImAn's `pw_rigid = False`) …
        cfg.stage = Stage::Pipeline;
        cfg.cnmf = CnmfKnobs { rf: Some(20), stride: Some(8), k: Some(4) };
        let v = effective_params(&cfg, &prepared, &base);
        let (m, _) = MotionParams::from_caiman_json(&v.to_string()).unwrap();
        assert!(!m.pw_rigid);
        assert_eq!(m.num_frames_split, 50);
        let (p, _) = CnmfParams::from_caiman_json(&v.to_string()).unwrap();
        assert_eq!((p.patch.rf.as_ref().map(|r| r.get(0)), p.init.k), (Some(20), Some(4)));
        // … piecewise rigid when the point or the base parameters ask.
        cfg.motion.pw_rigid = Some(true);
        assert_eq!(effective_params(&cfg, &prepared, &base).pointer("/motion/pw_rigid"), Some(&json!(true)));
        cfg.motion.pw_rigid = None;
        let mut pw_base = base.clone();
        pw_base["motion"] = json!({"pw_rigid": true});
        assert_eq!(effective_params(&cfg, &prepared, &pw_base).pointer("/motion/pw_rigid"), Some(&json!(true)));
        assert!(Stage::Pipeline.uses_motion() && Stage::Pipeline.uses_cnmf() && !Stage::Pipeline.is_motion());
    }

    #[test]
    fn config_json_is_strict() {
        let text = r#"{"stage": "cnmf", "input": {"kind": "synthetic", "d1": 32, "d2": 32, "frames": 50, "seed": 1},
            "cache_dir": "c", "scratch_dir": "s", "backend": {"kind": "processes", "workers": 2},
            "cnmf": {"rf": 8, "stride": 4}}"#;
        let cfg: PointConfig = serde_json::from_str(text).unwrap();
        assert_eq!(cfg.backend, Backend::processes(2));
        assert_eq!(cfg.cnmf.rf, Some(8));
        let typo = text.replace("\"rf\"", "\"rff\"");
        assert!(serde_json::from_str::<PointConfig>(&typo).is_err());
    }

    #[test]
    fn centred_error_ignores_a_constant_offset() {
        let mut d = vec![2.0, 2.0, 2.0, 2.5];
        // Median 2.0 (upper median of four) → only the 0.5 counts.
        assert!((centred_sq_sum(&mut d) - 0.25).abs() < 1e-12);
    }
}
