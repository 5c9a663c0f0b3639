//! The NoRMCorre batch driver: a whole movie through rigid (and optionally piecewise-rigid)
//! correction, chunk by chunk on any [`caiman_parallel::Executor`], into a frame-major (`F`)
//! CaImAn memmap or any other format.
//!
//! The order of operations is CaImAn's `MotionCorrect.motion_correct` (catalog §2.2–2.6):
//! 1. `min_mov`: the minimum of the first 400 frames (high-pass filtered if `gSig_filt`), unless
//!    given, in one [`MovieMin`] task per worker; `add_to_movie = −min_mov`.
//! 2. Initial template from a temporal subsample of about 50 frames (step `T // 50 + 1`,
//!    `T // 10 + 1` for volumes): the legacy matcher and `bin_median`, as CaImAn (volumes:
//!    `bin_median` of the subsample).
//! 3. `niter_rig` rigid passes over `splits_rig = max(T // max(num_frames_split, 10), 1)` chunks;
//!    each chunk returns its shifts and the NaN-mean of its corrected frames; the next template is
//!    the pixel-wise NaN-median of the chunk templates.
//! 4. With `pw_rigid`, one piecewise-rigid pass against the rigid template (volumes:
//!    [`crate::volume::VolumeCorrector`], with `z_shifts_els`).
//! 5. The last pass writes the corrected frames (`+ add_to_movie` when `nonneg_movie`) into one
//!    pre-sized F-order memmap, each chunk its own frame range; `border_to_0 = ceil(max |shift|)`.
//!
//! Arithmetic: `MotionParams::precision` (default `f32`, the fast path; `f64` reproduces CaImAn's
//! decisions bit for bit) selects the kernels of every chunk and of the initial template (see
//! [`crate::params::Precision`]).
//!
//! Memory does not grow with the movie's length beyond the shifts and correlations themselves
//! (16 B per frame, plus 16 B per frame and patch for piecewise runs): tasks are built and
//! mapped a few per worker at a time; each holds two blocks of 16 frames and its corrector; the
//! pass folds each chunk's sum image into one running sum as results arrive; and the chunk
//! templates (CaImAn's `templates_rig`, one frame per chunk) go into a [`TemplateStack`], which
//! moves them to an unnamed scratch file next to the output beyond
//! [`MotionJob::template_memory`] bytes and takes their median block by block.
//!
//! Chunks are [`CorrectChunk`] tasks: they carry file paths, a frame range and the template,
//! never movie pixels, so they run unchanged on threads or in worker processes
//! ([`register_tasks`]). Every strategy gives bit-identical results.
//!
//! Deviations from CaImAn, all deliberate: the symmetric search window (see [`crate::register`]);
//! the output byte order always matches its name; several input files are corrected as one
//! chained movie into one output (CaImAn writes one memmap per file).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use caiman_io::mmap::{MmapRegionWriter, PendingMmap};
use caiman_io::{ChainSource, Dims, FrameSource, OpenOptions, Order, Shape, WriteOptions};
use caiman_parallel::{Executor, Par, Registry, Task, TaskCtx, TaskError};
use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};
use serde::{Deserialize, Serialize};

use crate::correct::{CorrectionOptions, FrameCorrector};
use crate::error::{Error, Result};
use crate::filter::HighPassFilter;
use crate::params::MotionParams;
use crate::patches::{PatchGrid, dense_field};
use crate::shift::{BorderMode, CubicWarper};
use crate::template::{Accumulation, NanMeanAccumulator, TemplateStack, bin_median};
use crate::volume::{VolumeCorrector, VolumeOptions};

/// Frames read per step inside a chunk task.
const READ_BLOCK: usize = 16;

/// Register the tasks of this module with a worker [`Registry`] (for `Processes` executors).
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<CorrectChunk>().register::<MovieMin>()
}

/// The minimum of a range of frames (high-pass filtered first with `gSig_filt`): one part of
/// CaImAn's `min_mov` over the first 400 frames, so that the parts run on every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieMin {
    /// Input files, chained in order.
    pub inputs: Vec<PathBuf>,
    /// How to open them.
    pub open: OpenOptions,
    /// Frames of the chained movie to scan.
    pub frames: Range<usize>,
    /// High-pass filter size (`gSig_filt`, planar movies only).
    pub gsig_filt: Option<[u32; 2]>,
}

impl MovieMin {
    fn execute(&self) -> Result<f64> {
        let mut src = open_inputs(&self.inputs, &self.open)?;
        let dims = src.dims();
        let d = dims.pixels();
        let mut buf = vec![0f32; READ_BLOCK * d];
        let mut filt = self.gsig_filt.filter(|_| !dims.is_volume()).map(HighPassFilter::new);
        let mut tmp = Array2::<f32>::zeros((dims.d1, dims.d2 * dims.d3));
        let mut m = f64::INFINITY;
        let mut t = self.frames.start;
        while t < self.frames.end {
            let k = READ_BLOCK.min(self.frames.end - t);
            src.read_frames(t, &mut buf[..k * d])?;
            for frame in buf[..k * d].chunks_exact(d) {
                let vals: &[f32] = match filt.as_mut() {
                    Some(f) => {
                        f.apply(
                            ArrayView2::from_shape((dims.d1, dims.d2), frame).expect("frame shape"),
                            tmp.view_mut(),
                        );
                        tmp.as_slice().expect("standard layout")
                    }
                    None => frame,
                };
                // `min` ignores NaN (an all-NaN frame leaves m unchanged).
                let lo = vals.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                m = m.min(f64::from(lo));
            }
            t += k;
        }
        Ok(m)
    }
}

impl Task for MovieMin {
    const NAME: &'static str = "caiman_motion.movie_min";
    type Output = f64;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<f64, TaskError> {
        self.execute().map_err(task_err)
    }
}

/// Which kind of pass a chunk runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PassKind {
    /// Rigid correction (`max_deviation_rigid = 0`).
    Rigid,
    /// Piecewise-rigid correction against the rigid template.
    Piecewise,
}

/// Where a chunk writes its corrected frames: the temporary file of a [`PendingMmap`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkOutput {
    /// The pre-sized F-order memmap being filled.
    pub path: PathBuf,
    /// Its shape.
    pub shape: Shape,
    /// Added to every written value (CaImAn's `add_to_movie` when `nonneg_movie`).
    pub add: f64,
    /// Write whole pages with `O_DIRECT` ([`MmapRegionWriter::direct`]); otherwise caiman-io
    /// decides by the file's size.
    #[serde(default)]
    pub direct: bool,
}

/// One chunk of frames to correct against a template: the unit of work of every pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectChunk {
    /// Input files, chained in order.
    pub inputs: Vec<PathBuf>,
    /// How to open them.
    pub open: OpenOptions,
    /// Frames of the chained movie to correct.
    pub frames: Range<usize>,
    /// Template, C order over the frame dims.
    pub template: Vec<f32>,
    /// Motion parameters as CaImAn-style JSON (the `motion` group is self-describing JSON, which
    /// the compact binary task codec cannot carry, while templates need its exact floats and NaNs).
    pub params_json: String,
    /// Rigid or piecewise.
    pub kind: PassKind,
    /// CaImAn's `add_to_movie` (added to frame and template during registration).
    pub add_to_movie: f64,
    /// Where to write the corrected frames, if this pass writes.
    pub output: Option<ChunkOutput>,
}

/// What a chunk returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkResult {
    /// Rigid shift applied per frame (2 or 3 values per frame, row-major).
    pub rigid: Vec<f64>,
    /// Per-patch shifts applied, axis 0 (`x_shifts_els`), `frames × patches` row-major.
    pub patch_x: Vec<f64>,
    /// Per-patch shifts applied, axis 1 (`y_shifts_els`).
    pub patch_y: Vec<f64>,
    /// Per-patch shifts applied, axis 2 (`z_shifts_els`, volumes only).
    #[serde(default)]
    pub patch_z: Vec<f64>,
    /// NaN-mean of the corrected frames (the chunk template). The driver moves it into the
    /// pass's [`TemplateStack`], leaving this empty.
    pub template: Vec<f32>,
    /// Pearson correlation of each corrected frame with the template it was registered to.
    pub correlations: Vec<f64>,
    /// Sum of the corrected frames (NaN counted as 0), for the mean image.
    pub sum: Vec<f64>,
}

fn task_err(e: impl std::fmt::Display) -> TaskError {
    TaskError::msg(e.to_string())
}

fn open_inputs(inputs: &[PathBuf], open: &OpenOptions) -> caiman_io::Result<Box<dyn FrameSource>> {
    if inputs.len() == 1 { caiman_io::open(&inputs[0], open) } else { Ok(Box::new(ChainSource::open(inputs, open)?)) }
}

/// One pass over a corrected frame `a`: adds its finite values to `sum` and returns its Pearson
/// correlation with `b` over the pixels finite in both (single-pass sums in `f64`, eight
/// independent lanes so the loop vectorises; an AVX build of the same loop is picked at run
/// time, with identical results since lanes are independent).
fn sum_and_pearson(a: &[f32], b: &[f32], sum: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above).
        return unsafe { sum_and_pearson_avx(a, b, sum) };
    }
    sum_and_pearson_body(a, b, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn sum_and_pearson_avx(a: &[f32], b: &[f32], sum: &mut [f64]) -> f64 {
    sum_and_pearson_body(a, b, sum)
}

#[inline(always)]
fn sum_and_pearson_body(a: &[f32], b: &[f32], sum: &mut [f64]) -> f64 {
    const L: usize = 8;
    #[derive(Clone, Copy, Default)]
    struct Acc {
        n: [f64; L],
        sa: [f64; L],
        sb: [f64; L],
        sab: [f64; L],
        saa: [f64; L],
        sbb: [f64; L],
    }
    // Branch-free: finiteness by comparison (false for NaN), values selected, not skipped.
    #[inline(always)]
    fn lanes(acc: &mut Acc, xa: &[f32; L], xb: &[f32; L], xs: &mut [f64; L]) {
        for k in 0..L {
            let (x, y) = (xa[k], xb[k]);
            let fx = x.abs() < f32::INFINITY;
            let ok = fx & (y.abs() < f32::INFINITY);
            let (x, y) = (f64::from(x), f64::from(y));
            xs[k] += if fx { x } else { 0.0 };
            let (x, y, one) = if ok { (x, y, 1.0) } else { (0.0, 0.0, 0.0) };
            acc.n[k] += one;
            acc.sa[k] += x;
            acc.sb[k] += y;
            acc.sab[k] += x * y;
            acc.saa[k] += x * x;
            acc.sbb[k] += y * y;
        }
    }
    let mut acc = Acc::default();
    let (ca, cb, cs) = (a.chunks_exact(L), b.chunks_exact(L), sum.chunks_exact_mut(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let tail = a.len() - ra.len();
    for ((xa, xb), xs) in ca.zip(cb).zip(cs) {
        let xa: &[f32; L] = xa.try_into().expect("chunk of L");
        let xb: &[f32; L] = xb.try_into().expect("chunk of L");
        let xs: &mut [f64; L] = xs.try_into().expect("chunk of L");
        lanes(&mut acc, xa, xb, xs);
    }
    // The remainder goes to lane 0, after the chunks (as the lanes' own order).
    for (i, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        let (mut xa, mut xb, mut xs) = ([f32::NAN; L], [f32::NAN; L], [0f64; L]);
        (xa[0], xb[0], xs[0]) = (x, y, sum[tail + i]);
        lanes(&mut acc, &xa, &xb, &mut xs);
        sum[tail + i] = xs[0];
    }
    let t = |v: [f64; L]| v.iter().sum::<f64>();
    let (n, sa, sb, sab, saa, sbb) = (t(acc.n), t(acc.sa), t(acc.sb), t(acc.sab), t(acc.saa), t(acc.sbb));
    if n < 2.0 {
        return f64::NAN;
    }
    let cov = sab - sa * sb / n;
    let (va, vb) = (saa - sa * sa / n, sbb - sb * sb / n);
    cov / (va * vb).sqrt()
}

/// Pearson correlation over the pixels finite in both images (two-pass reference).
#[cfg(test)]
fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut sa, mut sb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_finite() && y.is_finite() {
            n += 1.0;
            sa += f64::from(x);
            sb += f64::from(y);
        }
    }
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (sa / n, sb / n);
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_finite() && y.is_finite() {
            let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
            sab += dx * dy;
            saa += dx * dx;
            sbb += dy * dy;
        }
    }
    sab / (saa * sbb).sqrt()
}

/// Per-frame correction state of a chunk task, planar or volumetric.
enum Corrector {
    Planar(Box<FrameCorrector>),
    Volume(Box<VolumeCorrector>),
}

/// The 3-D options of a pass: per-axis values (a 2-entry value is extended with its second
/// entry, as for `max_shifts` before), `max_deviation_rigid = 0` for rigid passes.
fn volume_options(params: &MotionParams, kind: PassKind, add_to_movie: f64) -> Result<VolumeOptions> {
    let three = |v: &[usize]| [v[0], v[1], *v.get(2).unwrap_or(&v[1])];
    let (ms, st, ov) = if params.is_3d {
        (params.max_shifts_per_axis()?, params.strides_per_axis()?, params.overlaps_per_axis()?)
    } else {
        (params.max_shifts.clone(), params.strides.clone(), params.overlaps.clone())
    };
    Ok(VolumeOptions {
        max_shifts: three(&ms),
        max_deviation_rigid: if kind == PassKind::Piecewise { params.max_deviation_rigid } else { 0 },
        strides: three(&st),
        overlaps: three(&ov),
        upsample_factor_fft: 10,
        border: params.border_nan.into(),
        add_to_movie,
    })
}

impl CorrectChunk {
    fn corrector(&self, dims: Dims, params: &MotionParams) -> Result<Corrector> {
        if dims.is_volume() {
            let tpl = ArrayView3::from_shape((dims.d1, dims.d2, dims.d3), &self.template).map_err(|_| {
                Error::ShapeMismatch { what: "template", expected: vec![dims.pixels()], got: vec![self.template.len()] }
            })?;
            let opts = volume_options(params, self.kind, self.add_to_movie)?;
            Ok(Corrector::Volume(Box::new(VolumeCorrector::new(tpl, &opts)?)))
        } else {
            let tpl = ArrayView2::from_shape((dims.d1, dims.d2), &self.template).map_err(|_| Error::ShapeMismatch {
                what: "template",
                expected: vec![dims.pixels()],
                got: vec![self.template.len()],
            })?;
            let opts = match self.kind {
                PassKind::Rigid => CorrectionOptions::rigid(params, self.add_to_movie)?,
                PassKind::Piecewise => CorrectionOptions::piecewise(params, self.add_to_movie)?,
            };
            Ok(Corrector::Planar(Box::new(FrameCorrector::new(tpl, &opts)?)))
        }
    }

    /// Run the chunk in this thread (what every executor strategy ends up calling).
    pub fn execute(&self) -> std::result::Result<ChunkResult, String> {
        self.execute_inner().map_err(|e| e.to_string())
    }

    /// The motion parameters of this chunk.
    pub fn params(&self) -> std::result::Result<MotionParams, serde_json::Error> {
        serde_json::from_str(&self.params_json)
    }

    fn execute_inner(&self) -> std::result::Result<ChunkResult, Box<dyn std::error::Error>> {
        let params = self.params()?;
        let mut src = open_inputs(&self.inputs, &self.open)?;
        let dims = src.dims();
        let d = dims.pixels();
        let mut corrector = self.corrector(dims, &params)?;
        let mut writer = match &self.output {
            Some(o) => {
                let w = MmapRegionWriter::open(&o.path, o.shape, Order::F)?;
                Some(if o.direct { w.direct() } else { w })
            }
            None => None,
        };
        let n = self.frames.len();
        let mut res = ChunkResult {
            rigid: Vec::with_capacity(n * if dims.is_volume() { 3 } else { 2 }),
            patch_x: Vec::new(),
            patch_y: Vec::new(),
            patch_z: Vec::new(),
            template: vec![0.0; d],
            correlations: Vec::with_capacity(n),
            sum: vec![0.0; d],
        };
        // Template statistics are taken over the 2-D view (d1, d2·d3) of each frame.
        let acc_dims = [dims.d1, dims.d2 * dims.d3];
        let mut acc = NanMeanAccumulator::new(acc_dims, Accumulation::NumpyF32);
        let mut input = vec![0f32; READ_BLOCK * d];
        let mut output = vec![0f32; READ_BLOCK * d];
        let mut t = self.frames.start;
        while t < self.frames.end {
            let k = READ_BLOCK.min(self.frames.end - t);
            src.read_frames(t, &mut input[..k * d])?;
            for f in 0..k {
                let frame = &input[f * d..(f + 1) * d];
                let out = &mut output[f * d..(f + 1) * d];
                match &mut corrector {
                    Corrector::Planar(c) => {
                        let fv = ArrayView2::from_shape((dims.d1, dims.d2), frame)?;
                        let ov = ArrayViewMut2::from_shape((dims.d1, dims.d2), &mut *out)?;
                        let s = c.correct(fv, ov)?;
                        res.rigid.extend_from_slice(&s.rigid);
                        for p in s.patches {
                            res.patch_x.push(p[0]);
                            res.patch_y.push(p[1]);
                        }
                    }
                    Corrector::Volume(c) => {
                        let fv = ArrayView3::from_shape((dims.d1, dims.d2, dims.d3), frame)?;
                        let ov = ArrayViewMut3::from_shape((dims.d1, dims.d2, dims.d3), &mut *out)?;
                        let s = c.correct(fv, ov)?;
                        res.rigid.extend_from_slice(&s.rigid);
                        for p in s.patches {
                            res.patch_x.push(p[0]);
                            res.patch_y.push(p[1]);
                            res.patch_z.push(p[2]);
                        }
                    }
                }
                res.correlations.push(sum_and_pearson(out, &self.template, &mut res.sum));
                acc.add(ArrayView2::from_shape((acc_dims[0], acc_dims[1]), &*out)?);
            }
            if let (Some(w), Some(o)) = (writer.as_mut(), self.output.as_ref()) {
                if o.add != 0.0 {
                    let add = o.add as f32;
                    output[..k * d].iter_mut().for_each(|v| *v += add);
                }
                w.write_frames(t, &output[..k * d])?;
            }
            t += k;
        }
        if let Some(w) = writer {
            w.flush()?;
        }
        acc.finish(ArrayViewMut2::from_shape((acc_dims[0], acc_dims[1]), &mut res.template[..])?);
        Ok(res)
    }
}

impl Task for CorrectChunk {
    const NAME: &'static str = "caiman_motion.correct_chunk";
    type Output = ChunkResult;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<ChunkResult, TaskError> {
        self.execute().map_err(task_err)
    }
}

/// CaImAn's `np.array_split(range(T), splits)`: the first `T % splits` chunks one frame longer.
pub fn split_frames(frames: usize, splits: usize) -> Vec<Range<usize>> {
    let splits = splits.clamp(1, frames.max(1));
    let (base, extra) = (frames / splits, frames % splits);
    let mut out = Vec::with_capacity(splits);
    let mut start = 0;
    for i in 0..splits {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Timing and resources of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassStats {
    /// `rigid 1`, `rigid 2`, …, `piecewise`.
    pub name: String,
    /// Wall seconds.
    pub wall_s: f64,
    /// CPU seconds of the process tree.
    pub cpu_s: f64,
    /// Peak RSS of the process tree, KiB (parent + workers).
    pub peak_rss_kib: u64,
}

/// Quality of a corrected movie (CaImAn's `compute_metrics_motion_correction`, the parts that
/// need no optical flow).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    /// Crispness of the mean image: `sqrt(Σ ‖∇ mean‖²)` with numpy's gradient (higher = sharper).
    pub crispness: f64,
    /// Mean over frames of the frame–template correlation.
    pub mean_correlation: f64,
    /// Per-frame correlation with the final template.
    pub correlations: Vec<f64>,
}

/// Everything a motion-correction run produces (CaImAn's `MotionCorrect` attributes).
#[derive(Debug)]
pub struct MotionResult {
    /// The corrected movie.
    pub output: PathBuf,
    /// Its shape.
    pub shape: Shape,
    /// `shifts_rig`: rigid shift applied per frame, `T × 2` (`T × 3` for volumes).
    pub shifts_rig: Array2<f64>,
    /// `x_shifts_els`: per-patch axis-0 shifts applied, `T × P` (piecewise runs).
    pub x_shifts_els: Option<Array2<f64>>,
    /// `y_shifts_els`: per-patch axis-1 shifts applied, `T × P`.
    pub y_shifts_els: Option<Array2<f64>>,
    /// `z_shifts_els`: per-patch axis-2 shifts applied, `T × P` (piecewise runs on volumes).
    pub z_shifts_els: Option<Array2<f64>>,
    /// Patch centres in pixels, `P × 2` (axis 0, axis 1; `P × 3` for volumes), in the column
    /// order of `*_shifts_els`.
    pub patch_centers: Option<Array2<f64>>,
    /// `templates_rig`: one template per chunk of the last rigid pass (C order frames; in a
    /// scratch file beyond [`MotionJob::template_memory`] bytes).
    pub templates_rig: TemplateStack,
    /// `total_template_rig`.
    pub total_template_rig: Vec<f32>,
    /// `templates_els` (piecewise runs).
    pub templates_els: Option<TemplateStack>,
    /// `total_template_els` (piecewise runs).
    pub total_template_els: Option<Vec<f32>>,
    /// The movie minimum used (`add_to_movie = −min_mov`).
    pub min_mov: f64,
    /// `ceil(max |shift|)` over all frames and patches.
    pub border_to_0: usize,
    /// Quality of the corrected movie.
    pub metrics: Metrics,
    /// Per-pass timing and memory.
    pub passes: Vec<PassStats>,
}

/// How a run reports progress: `(pass name, frames done in this pass, frames in the pass)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Inputs and output of [`motion_correct`].
#[derive(Debug, Clone)]
pub struct MotionJob {
    /// Input movies, chained in order.
    pub inputs: Vec<PathBuf>,
    /// How to open them (HDF5 dataset, …).
    pub open: OpenOptions,
    /// Output movie; `.mmap` gives CaImAn's F-order memmap name, other extensions convert.
    pub output: PathBuf,
    /// Motion parameters (CaImAn's `motion` group).
    pub params: MotionParams,
    /// A template to start from (skips the initial-template step), C order.
    pub template: Option<Vec<f32>>,
    /// Write the corrected memmap's whole pages with `O_DIRECT`, bypassing the page cache: right
    /// when nothing reads the output back at once (`caiman motion-correct`), and about a second
    /// of kernel CPU saved per GB written. `false` leaves the choice to caiman-io, which writes
    /// through the page cache unless the file exceeds half the available memory (the pipeline's
    /// transpose then finds a small movie in memory).
    pub direct_io: bool,
    /// Bytes of chunk templates held in memory per pass before they move to an unnamed scratch
    /// file in the output's directory ([`TemplateStack`]); [`DEFAULT_TEMPLATE_MEMORY`] is
    /// 64 MiB. A pass has `T / num_frames_split` templates of one frame each, so this is what
    /// keeps memory flat in the movie's length.
    ///
    /// [`DEFAULT_TEMPLATE_MEMORY`]: crate::template::DEFAULT_TEMPLATE_MEMORY
    pub template_memory: usize,
}

/// Minimum over the first 400 frames (high-pass filtered first with `gSig_filt`), in one
/// [`MovieMin`] task per worker (the minimum does not depend on the split).
fn movie_min<E: Executor>(exec: &E, job: &MotionJob, frames: usize) -> Result<f64> {
    let n = frames.min(400);
    let gsig_filt = job.params.gsig_filt.as_ref().map(|g| [g[0], *g.get(1).unwrap_or(&g[0])]);
    let tasks: Vec<MovieMin> = split_frames(n, exec.workers().max(1))
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|frames| MovieMin { inputs: job.inputs.clone(), open: job.open.clone(), frames, gsig_filt })
        .collect();
    let (mins, _) = exec.map(tasks)?;
    let m = mins.into_iter().fold(f64::INFINITY, f64::min);
    if !m.is_finite() {
        return Err(Error::NonFinite { what: "movie minimum (first 400 frames)" });
    }
    Ok(m)
}

/// CaImAn's initial template from a temporal subsample.
fn initial_template(src: &mut dyn FrameSource, params: &MotionParams, par: Par) -> Result<Vec<f32>> {
    let dims = src.dims();
    let d = dims.pixels();
    let t_len = src.frames();
    let step = if dims.is_volume() { t_len / 10 + 1 } else { t_len / 50 + 1 };
    let n = t_len.div_ceil(step);
    let mut sub = vec![0f32; n * d];
    src.read_frames_strided(0, step, &mut sub)?;
    let (w, h) = (dims.d1, dims.d2 * dims.d3);
    if let (Some(g), false) = (params.gsig_filt.as_ref(), dims.is_volume()) {
        let mut f = HighPassFilter::new([g[0], *g.get(1).unwrap_or(&g[0])]);
        let mut out = Array2::<f32>::zeros((w, h));
        for frame in sub.chunks_exact_mut(d) {
            f.apply(ArrayView2::from_shape((w, h), &*frame).expect("frame shape"), out.view_mut());
            frame.copy_from_slice(out.as_slice().expect("standard layout"));
        }
    }
    let stack = ArrayView3::from_shape((n, w, h), &sub).expect("subsample shape");
    let tpl = if dims.is_volume() {
        bin_median(stack, 10, true)?
    } else {
        let ms = params.max_shifts_per_axis()?;
        crate::legacy::initial_template_with(stack, [ms[0], ms[1]], params.precision, par)?
    };
    Ok(tpl.as_standard_layout().iter().copied().collect())
}

/// numpy's `gradient` summed: `sqrt(Σ (∂₀m)² + (∂₁m)²)` over a 2-D image (volumes: per plane).
fn crispness(mean: &[f64], dims: Dims) -> f64 {
    let (h, w) = (dims.d1, dims.d2 * dims.d3);
    let at = |i: usize, j: usize| mean[i * w + j];
    let grad = |a: f64, b: f64, span: f64| (b - a) / span;
    let mut s = 0.0;
    for i in 0..h {
        for j in 0..w {
            let g0 = if h < 2 {
                0.0
            } else if i == 0 {
                grad(at(0, j), at(1, j), 1.0)
            } else if i == h - 1 {
                grad(at(h - 2, j), at(h - 1, j), 1.0)
            } else {
                grad(at(i - 1, j), at(i + 1, j), 2.0)
            };
            let g1 = if w < 2 {
                0.0
            } else if j == 0 {
                grad(at(i, 0), at(i, 1), 1.0)
            } else if j == w - 1 {
                grad(at(i, w - 2), at(i, w - 1), 1.0)
            } else {
                grad(at(i, j - 1), at(i, j + 1), 2.0)
            };
            if g0.is_finite() && g1.is_finite() {
                s += g0 * g0 + g1 * g1;
            }
        }
    }
    s.sqrt()
}

struct PassOutcome {
    /// Chunk results, their `sum` fields emptied (folded into `sum` as they arrive) and their
    /// templates moved into `templates`, so memory does not grow with the number of chunks.
    results: Vec<ChunkResult>,
    /// The chunk templates, in chunk order.
    templates: TemplateStack,
    /// Sum of the corrected frames over the pass (NaN counted as 0).
    sum: Vec<f64>,
    stats: PassStats,
}

#[allow(clippy::too_many_arguments)]
fn run_pass<E: Executor>(
    exec: &E,
    job: &MotionJob,
    name: &str,
    kind: PassKind,
    template: &[f32],
    add_to_movie: f64,
    output: Option<&ChunkOutput>,
    chunks: &[Range<usize>],
    (job_dims, spill_dir): (Dims, &Path),
    progress: Progress<'_>,
) -> Result<PassOutcome> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let params_json = serde_json::to_string(&job.params).map_err(crate::error::ParamsError::from)?;
    // Tasks are built per map, so only a few copies of the template exist at once.
    let task = |frames: &Range<usize>| CorrectChunk {
        inputs: job.inputs.clone(),
        open: job.open.clone(),
        frames: frames.clone(),
        template: template.to_vec(),
        params_json: params_json.clone(),
        kind,
        add_to_movie,
        output: output.cloned(),
    };
    let dims = job_dims;
    let mut templates = TemplateStack::new([dims.d1, dims.d2 * dims.d3], job.template_memory, spill_dir);
    // Maps of a few chunks per worker, so progress moves while a long movie is processed (each
    // map ends with a barrier, so not too few either).
    let batch = (exec.workers() * 4).max(1);
    let mut sum = Vec::new();
    let started = Instant::now();
    let mut results = Vec::with_capacity(chunks.len());
    let (mut cpu, mut rss) = (0.0, 0u64);
    let mut done = 0;
    progress(name, 0, total);
    for group in chunks.chunks(batch) {
        let group: Vec<CorrectChunk> = group.iter().map(task).collect();
        done += group.iter().map(|t| t.frames.len()).sum::<usize>();
        let (out, stats) = exec.map(group)?;
        cpu += stats.cpu_total.as_secs_f64();
        rss = rss.max(stats.peak_rss.total_kib);
        for mut r in out {
            if sum.is_empty() {
                sum = std::mem::take(&mut r.sum);
            } else {
                sum.iter_mut().zip(&r.sum).for_each(|(a, b)| *a += b);
                r.sum = Vec::new();
            }
            templates.push(&std::mem::take(&mut r.template))?;
            results.push(r);
        }
        progress(name, done, total);
    }
    let stats = PassStats { name: name.into(), wall_s: started.elapsed().as_secs_f64(), cpu_s: cpu, peak_rss_kib: rss };
    tracing::info!(pass = name, wall_s = stats.wall_s, frames = total, "motion pass done");
    Ok(PassOutcome { results, templates, sum, stats })
}

/// Motion-correct a movie (see the module docs for the order of operations).
pub fn motion_correct<E: Executor>(job: &MotionJob, exec: &E, progress: Progress<'_>) -> Result<MotionResult> {
    job.params.validate()?;
    if job.inputs.is_empty() {
        return Err(Error::Empty { what: "input movie list" });
    }
    let mut src = open_inputs(&job.inputs, &job.open)?;
    let shape = src.info().shape;
    let dims = shape.dims;
    if dims.is_volume() != job.params.is_3d && dims.is_volume() {
        tracing::info!("volumetric input: rigid 3-D correction");
    }
    let started = Instant::now();
    let min_mov = match job.params.min_mov {
        Some(m) => m,
        None => movie_min(exec, job, shape.frames)?,
    };
    tracing::info!(min_mov, seconds = started.elapsed().as_secs_f64(), "movie minimum");
    let add_to_movie = -min_mov;
    let mut template = match &job.template {
        Some(t) if t.len() == dims.pixels() => t.clone(),
        Some(t) => {
            return Err(Error::ShapeMismatch {
                what: "given template",
                expected: vec![dims.pixels()],
                got: vec![t.len()],
            });
        }
        None => {
            let started = Instant::now();
            // The workers are idle meanwhile: the driver may use all of the executor's threads.
            let par = Par::new(exec.workers() * exec.inner_threads().per_task);
            let t = initial_template(src.as_mut(), &job.params, par)?;
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "initial template");
            t
        }
    };
    drop(src);

    let splits = (shape.frames / job.params.num_frames_split.max(10)).max(1);
    let chunks = split_frames(shape.frames, splits);
    // The output: an F-order memmap, filled chunk by chunk by the last pass.
    let is_mmap = job.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("mmap"));
    let mmap_target = if is_mmap {
        job.output.clone()
    } else {
        let stem = job.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "mc".into());
        job.output.with_file_name(format!(".{stem}.scratch.mmap"))
    };
    let pending = PendingMmap::create(&mmap_target, shape, Order::F)?;
    let out = ChunkOutput {
        path: pending.tmp_path().to_path_buf(),
        shape,
        add: if job.params.nonneg_movie { add_to_movie } else { 0.0 },
        direct: job.direct_io,
    };

    let mut passes = Vec::new();
    let mut last = None;
    let mut templates_rig = None;
    let spill_dir = match mmap_target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let niter = job.params.niter_rig.max(1);
    for it in 0..niter {
        let writes = !job.params.pw_rigid && it + 1 == niter;
        let name = format!("rigid {}", it + 1);
        let p = run_pass(
            exec,
            job,
            &name,
            PassKind::Rigid,
            &template,
            add_to_movie,
            writes.then_some(&out),
            &chunks,
            (dims, &spill_dir),
            progress,
        )?;
        template = p.templates.nanmedian()?;
        templates_rig = Some(p.templates);
        passes.push(p.stats);
        last = Some((p.results, p.sum));
    }
    let total_template_rig = template.clone();
    let (rigid_results, rigid_sum) = last.take().expect("at least one rigid pass");
    let mut shifts_rig = Array2::from_shape_vec(
        (shape.frames, if dims.is_volume() { 3 } else { 2 }),
        rigid_results.iter().flat_map(|r| r.rigid.iter().copied()).collect(),
    )
    .map_err(|_| Error::ShapeMismatch { what: "rigid shifts", expected: vec![shape.frames], got: vec![] })?;
    let mut final_results = rigid_results;
    let mut final_sum = rigid_sum;
    let (mut x_els, mut y_els, mut z_els) = (None, None, None);
    let templates_rig = templates_rig.expect("at least one rigid pass");
    let (mut centers, mut templates_els, mut total_els) = (None, None, None);
    if job.params.pw_rigid {
        let p = run_pass(
            exec,
            job,
            "piecewise",
            PassKind::Piecewise,
            &total_template_rig,
            add_to_movie,
            Some(&out),
            &chunks,
            (dims, &spill_dir),
            progress,
        )?;
        // The piecewise pass re-estimates the rigid shift of each frame against the same template.
        let axes = if dims.is_volume() { 3 } else { 2 };
        shifts_rig = Array2::from_shape_vec(
            (shape.frames, axes),
            p.results.iter().flat_map(|r| r.rigid.iter().copied()).collect(),
        )
        .expect("one value per axis and frame");
        let n_patches = p.results.first().map_or(0, |r| r.patch_x.len() / r.correlations.len().max(1));
        let xs: Vec<f64> = p.results.iter().flat_map(|r| r.patch_x.iter().copied()).collect();
        let ys: Vec<f64> = p.results.iter().flat_map(|r| r.patch_y.iter().copied()).collect();
        x_els = Some(Array2::from_shape_vec((shape.frames, n_patches), xs).expect("patch shifts"));
        y_els = Some(Array2::from_shape_vec((shape.frames, n_patches), ys).expect("patch shifts"));
        if dims.is_volume() {
            let zs: Vec<f64> = p.results.iter().flat_map(|r| r.patch_z.iter().copied()).collect();
            z_els = Some(Array2::from_shape_vec((shape.frames, n_patches), zs).expect("patch shifts"));
        }
        centers = Some(patch_centers(&job.params, dims, &total_template_rig, add_to_movie)?);
        total_els = Some(p.templates.nanmedian()?);
        templates_els = Some(p.templates);
        passes.push(p.stats);
        final_results = p.results;
        final_sum = p.sum;
    }

    // Metrics from the pass that wrote the movie.
    let mut mean = final_sum;
    mean.resize(dims.pixels(), 0.0);
    mean.iter_mut().for_each(|m| *m /= shape.frames as f64);
    let correlations: Vec<f64> = final_results.iter().flat_map(|r| r.correlations.iter().copied()).collect();
    let finite: Vec<f64> = correlations.iter().copied().filter(|c| c.is_finite()).collect();
    let metrics = Metrics {
        crispness: crispness(&mean, dims),
        mean_correlation: finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        correlations,
    };
    let max_shift = shifts_rig
        .iter()
        .chain(x_els.iter().flat_map(|a| a.iter()))
        .chain(y_els.iter().flat_map(|a| a.iter()))
        .chain(z_els.iter().flat_map(|a| a.iter()))
        .fold(0f64, |m, v| m.max(v.abs()));
    let written = pending.commit()?;
    let output = if is_mmap {
        written
    } else {
        let conv = convert_output(&written, &job.output, shape);
        let _ = std::fs::remove_file(&written);
        conv?
    };
    Ok(MotionResult {
        output,
        shape,
        shifts_rig,
        x_shifts_els: x_els,
        y_shifts_els: y_els,
        z_shifts_els: z_els,
        patch_centers: centers,
        templates_rig,
        total_template_rig,
        templates_els,
        total_template_els: total_els,
        min_mov,
        border_to_0: max_shift.ceil() as usize,
        metrics,
        passes,
    })
}

/// Patch centres of the grid the piecewise shifts refer to, `P × 2` (`P × 3` for volumes).
fn patch_centers(params: &MotionParams, dims: Dims, template: &[f32], add: f64) -> Result<Array2<f64>> {
    if dims.is_volume() {
        let tpl = ArrayView3::from_shape((dims.d1, dims.d2, dims.d3), template).expect("template shape");
        let c = VolumeCorrector::new(tpl, &volume_options(params, PassKind::Piecewise, add)?)?;
        let pts = c.patch_centers();
        return Ok(Array2::from_shape_fn((pts.len(), 3), |(i, a)| pts[i][a]));
    }
    let tpl = ArrayView2::from_shape((dims.d1, dims.d2), template).expect("template shape");
    let c = FrameCorrector::new(tpl, &CorrectionOptions::piecewise(params, add)?)?;
    let grid = c.shift_grid().or(c.registration_grid()).ok_or(Error::Empty { what: "patch grid" })?;
    let (c0, c1) = (grid.centers(0), grid.centers(1));
    let mut out = Array2::zeros((c0.len() * c1.len(), 2));
    for (i, a) in c0.iter().enumerate() {
        for (j, b) in c1.iter().enumerate() {
            out[[i * c1.len() + j, 0]] = *a;
            out[[i * c1.len() + j, 1]] = *b;
        }
    }
    Ok(out)
}

fn convert_output(from: &Path, to: &Path, shape: Shape) -> Result<PathBuf> {
    let mut src = caiman_io::open(from, &OpenOptions::default())?;
    let mut w = caiman_io::create(to, shape, &WriteOptions::default())?;
    caiman_io::copy_frames(src.as_mut(), 0..shape.frames, w.as_mut(), &mut |_| {})?;
    Ok(w.finish()?)
}

impl MotionResult {
    /// Save in an HDF5 file whose dataset names are CaImAn's `MotionCorrect` attributes:
    /// `shifts_rig`, `x_shifts_els`, `y_shifts_els`, `total_template_rig`, `total_template_els`,
    /// `templates_rig`, `templates_els`, plus `patch_centers` (P × 2), `min_mov`, `border_to_0`,
    /// `mmap_file`, and the metrics (`crispness`, `correlations`).
    pub fn save_hdf5(&self, path: &Path) -> caiman_io::Result<PathBuf> {
        let dims = self.shape.dims;
        let frame_shape: Vec<usize> =
            if dims.is_volume() { vec![dims.d1, dims.d2, dims.d3] } else { vec![dims.d1, dims.d2] };
        let mut w = caiman_io::h5::H5Writer::create(path)?;
        let s = &self.shifts_rig;
        w.write_f64(
            "shifts_rig",
            &[s.nrows(), s.ncols()],
            &s.as_standard_layout().iter().copied().collect::<Vec<_>>(),
        )?;
        for (name, a) in [
            ("x_shifts_els", &self.x_shifts_els),
            ("y_shifts_els", &self.y_shifts_els),
            ("z_shifts_els", &self.z_shifts_els),
            ("patch_centers", &self.patch_centers),
        ] {
            if let Some(a) = a {
                w.write_f64(
                    name,
                    &[a.nrows(), a.ncols()],
                    &a.as_standard_layout().iter().copied().collect::<Vec<_>>(),
                )?;
            }
        }
        w.write_f32("total_template_rig", &frame_shape, &self.total_template_rig)?;
        self.templates_rig.write_hdf5(&mut w, "templates_rig", &frame_shape)?;
        if let Some(t) = &self.total_template_els {
            w.write_f32("total_template_els", &frame_shape, t)?;
        }
        if let Some(t) = &self.templates_els {
            t.write_hdf5(&mut w, "templates_els", &frame_shape)?;
        }
        w.write_f64("min_mov", &[], &[self.min_mov])?;
        w.write_i64("border_to_0", &[], &[self.border_to_0 as i64])?;
        w.write_f64("crispness", &[], &[self.metrics.crispness])?;
        w.write_f64("correlations", &[self.metrics.correlations.len()], &self.metrics.correlations)?;
        w.set_attr_str("/", "mmap_file", &self.output.to_string_lossy())?;
        w.finish()
    }
}

/// Apply stored shifts to another movie of the same frame size (e.g. a second channel), rigid
/// (`x_els`/`y_els` `None`) or piecewise, with cubic interpolation and the parameters' border
/// mode, writing `output` in any format. The movie is streamed; nothing is registered.
pub fn apply_shifts_movie(
    input: &Path,
    open: &OpenOptions,
    output: &Path,
    params: &MotionParams,
    shifts_rig: ArrayView2<'_, f64>,
    patches: Option<(ArrayView2<'_, f64>, ArrayView2<'_, f64>)>,
) -> Result<PathBuf> {
    let mut src = caiman_io::open(input, open)?;
    let shape = src.info().shape;
    let dims = shape.dims;
    if dims.is_volume() {
        return Err(Error::Unsupported("applying stored shifts to volumes".into()));
    }
    if shifts_rig.nrows() != shape.frames {
        return Err(Error::ShapeMismatch {
            what: "shifts vs frames",
            expected: vec![shape.frames],
            got: vec![shifts_rig.nrows()],
        });
    }
    let d = dims.pixels();
    let mut w = caiman_io::create(output, shape, &WriteOptions::default())?;
    let mut frame = Array2::<f32>::zeros((dims.d1, dims.d2));
    let mut out = Array2::<f32>::zeros((dims.d1, dims.d2));
    let border: BorderMode = params.border_nan.into();
    let grid = match patches {
        Some((x, _)) => {
            if !params.shifts_opencv {
                return Err(Error::Unsupported(
                    "re-applying piecewise shifts of the FFT path (shifts_opencv = false)".into(),
                ));
            }
            let strides = params.strides_per_axis()?;
            let overlaps = params.overlaps_per_axis()?;
            let grid = PatchGrid::new([dims.d1, dims.d2], [strides[0], strides[1]], [overlaps[0], overlaps[1]])?;
            if x.ncols() != grid.len() {
                return Err(Error::ShapeMismatch {
                    what: "patch shifts vs patch grid",
                    expected: vec![grid.len()],
                    got: vec![x.ncols()],
                });
            }
            Some(grid)
        }
        None => None,
    };
    let mut warper = CubicWarper::new();
    let mut field_y = Array2::<f32>::zeros((dims.d1, dims.d2));
    let mut field_x = Array2::<f32>::zeros((dims.d1, dims.d2));
    for t in 0..shape.frames {
        src.read_frames(t, frame.as_slice_mut().expect("standard layout"))?;
        match (patches, &grid) {
            (Some((x, y)), Some(grid)) => {
                dense_field(grid, x.row(t).iter().copied(), params.shifts_interpolate, field_y.view_mut())?;
                dense_field(grid, y.row(t).iter().copied(), params.shifts_interpolate, field_x.view_mut())?;
                warper.remap(frame.view(), 0.0, field_y.view(), field_x.view(), border, out.view_mut());
            }
            _ => warper.translate(frame.view(), 0.0, [shifts_rig[[t, 0]], shifts_rig[[t, 1]]], border, out.view_mut()),
        }
        w.write_frames(&out.as_slice().expect("standard layout")[..d])?;
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_stats_match_two_pass_pearson_and_sum() {
        let a: Vec<f32> =
            (0..1001).map(|i| if i % 97 == 5 { f32::NAN } else { 300.0 + (i as f32 * 0.37).sin() * 40.0 }).collect();
        let b: Vec<f32> = (0..1001).map(|i| 290.0 + (i as f32 * 0.37 + 0.2).sin() * 35.0 + (i % 7) as f32).collect();
        let mut sum = vec![1.0f64; 1001];
        let r = sum_and_pearson(&a, &b, &mut sum);
        let want = pearson(&a, &b);
        assert!((r - want).abs() < 1e-10, "{r} vs {want}");
        for (i, (&s, &v)) in sum.iter().zip(&a).enumerate() {
            let expect = if v.is_finite() { 1.0 + f64::from(v) } else { 1.0 };
            assert_eq!(s, expect, "pixel {i}");
        }
    }
}
