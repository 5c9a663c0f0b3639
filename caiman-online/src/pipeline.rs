//! From raw frames to fitted frames: [`OnlinePipeline`] (one frame at a time, from any source)
//! and [`fit_online`] (CaImAn's `fit_online` over one or more `FrameSource`s, with `epochs`,
//! `stop_detection`, progress reports and an optional pipelined mode).
//!
//! Pipelined mode: frames are processed in blocks; while block `j` is demixed, block `j + 1` is
//! read, down-sampled, normalised and motion corrected, the two stages running side by side on
//! an inner pool of two threads of `caiman-parallel` ([`Par::map_indices`]). Without motion
//! correction the result is identical to the sequential mode. With motion correction the
//! template of a frame in block `j + 1` is the model after block `j − 1` (a lag of `block + 1` to
//! `2·block` frames instead of CaImAn's 1 frame).

use std::sync::Mutex;
use std::time::Instant;

use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::{Dims, FrameSource};
use caiman_parallel::{Executor, Par};
use ndarray::Array3;

use crate::error::{Error, Result};
use crate::init::initialize;
use crate::onacid::{FrameReport, OnAcid, StageTimes};
use crate::preprocess::{FramePrep, OnlineMotion};

/// The per-frame work before demixing: order, size, normalisation, motion correction.
#[derive(Debug)]
pub(crate) struct FrameStage {
    input: Dims,
    prep: FramePrep,
    motion: Option<OnlineMotion>,
    normalize: bool,
    img_min: f32,
    img_norm: Vec<f32>,
    work: Vec<f32>,
    template: Vec<f32>,
    /// Scratch of the template's medians.
    vals: Vec<f32>,
}

impl FrameStage {
    fn new(model: &OnAcid) -> Result<Self> {
        let p = model.params();
        let motion = if p.online.motion_correct {
            Some(OnlineMotion::new(model.dims, p.max_shifts_online(), &p.motion)?)
        } else {
            None
        };
        let d = model.dims.pixels();
        Ok(FrameStage {
            input: model.in_dims,
            prep: FramePrep::new(model.in_dims, model.dims),
            motion,
            normalize: p.online.normalize,
            img_min: model.img_min,
            img_norm: model.img_norm.clone(),
            work: vec![0.0; d],
            template: vec![0.0; d],
            vals: Vec::with_capacity(50),
        })
    }

    /// Takes the model's motion template (`Ab·median(C_on[:, t−51..t−1])`, times `img_norm` when
    /// normalising).
    fn set_template(&mut self, model: &OnAcid) {
        if self.motion.is_some() {
            model.motion_template(&mut self.template, &mut self.vals);
            if self.normalize {
                self.template.iter_mut().zip(&self.img_norm).for_each(|(t, &n)| *t *= n);
            }
        }
    }

    /// Raw C-order frame → the frame `fit_next` takes (`out`), and the shift applied.
    fn prepare(&mut self, frame: &[f32], index: usize, name: &str, out: &mut [f32]) -> Result<Option<[f64; 2]>> {
        if frame.len() != self.input.pixels() {
            return Err(Error::ShapeMismatch {
                what: "frame (pixels of the input movie)",
                expected: vec![self.input.d1, self.input.d2],
                got: vec![frame.len()],
            });
        }
        if !crate::detect::all_finite(frame) {
            return Err(Error::NonFinite { source_name: name.to_owned(), frame: index });
        }
        self.prep.prepare(frame, &mut self.work);
        if self.normalize {
            let m = self.img_min;
            self.work.iter_mut().for_each(|v| *v -= m);
        }
        let shift = match &mut self.motion {
            Some(mc) => Some(mc.correct(&self.work, &self.template, out)?),
            None => {
                out.copy_from_slice(&self.work);
                None
            }
        };
        if self.normalize {
            out.iter_mut().zip(&self.img_norm).for_each(|(v, &n)| *v /= n);
        }
        Ok(shift)
    }
}

/// An [`OnAcid`] model with its frame stage: feed raw frames (C order, the input movie's size) one
/// at a time from any source — a file, a live acquisition loop, a queue — with
/// [`OnlinePipeline::fit_frame`], and read the results at any moment with
/// [`OnlinePipeline::estimates`].
#[derive(Debug)]
pub struct OnlinePipeline {
    model: OnAcid,
    stage: FrameStage,
    buf: Vec<f32>,
}

impl OnlinePipeline {
    /// Wraps an initialised model (see [`crate::initialize`]).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] when `max_shifts_online` does not fit the frame (motion
    /// correction on); motion parameter errors for `pw_rigid`.
    pub fn new(model: OnAcid) -> Result<Self> {
        let stage = FrameStage::new(&model)?;
        let buf = vec![0.0; model.dims.pixels()];
        Ok(OnlinePipeline { model, stage, buf })
    }

    /// Initialises on `frames` (`T × d1 × d2`, C order) and wraps the model
    /// ([`crate::initialize`] then [`OnlinePipeline::new`]).
    ///
    /// # Errors
    /// As [`crate::initialize`] and [`OnlinePipeline::new`].
    pub fn initialize<E: Executor>(
        params: &CnmfParams,
        frames: ndarray::ArrayView3<'_, f32>,
        masks: Option<&CscMatrix>,
        exec: &E,
    ) -> Result<Self> {
        Self::new(initialize(params, frames, masks, exec)?)
    }

    /// Fits the next frame: `frame` holds `d1·d2` values in C order (rows of the image one after
    /// the other, as `FrameSource::read_frames` delivers them). NaN/infinite values, down-sampling,
    /// normalisation and motion correction are handled as CaImAn's `fit_online` loop does.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`] (nothing changes then), motion and kernel
    /// errors.
    pub fn fit_frame(&mut self, frame: &[f32]) -> Result<FrameReport> {
        let t = self.model.frames_seen();
        let clock = Instant::now();
        self.stage.set_template(&self.model);
        let shift = self.stage.prepare(frame, t, "frame", &mut self.buf)?;
        self.model.times.motion += clock.elapsed().as_secs_f64();
        let r = self.model.fit_next(&self.buf)?;
        if let Some(s) = shift {
            self.model.shifts.push(s);
        }
        Ok(r)
    }

    /// The model.
    pub fn model(&self) -> &OnAcid {
        &self.model
    }

    /// The model, mutable (e.g. to stop the search for new components).
    pub fn model_mut(&mut self) -> &mut OnAcid {
        &mut self.model
    }

    /// The model, without the frame stage.
    pub fn into_model(self) -> OnAcid {
        self.model
    }

    /// The results over all frames so far ([`OnAcid::estimates`]).
    ///
    /// # Errors
    /// As [`OnAcid::estimates`].
    pub fn estimates(&self) -> Result<Estimates> {
        self.model.estimates()
    }
}

/// How [`fit_online`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOnlineOptions {
    /// Overlap reading/pre-processing/motion correction of the next block with demixing of the
    /// current one (see the module docs).
    pub pipelined: bool,
    /// Frames per block: the unit of reading in both modes and of overlap in the pipelined mode.
    pub block: usize,
    /// Masks for `init_method = 'seeded'` (pixels × K at the working frame size).
    pub masks: Option<CscMatrix>,
}

impl Default for FitOnlineOptions {
    fn default() -> Self {
        FitOnlineOptions { pipelined: false, block: 16, masks: None }
    }
}

/// Where [`fit_online`] stands (given to the progress callback after every block).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Frames fitted, initial batch and earlier epochs included.
    pub frames_done: usize,
    /// Frames to fit in all (all files × epochs).
    pub frames_total: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Neurons now.
    pub components: usize,
    /// Seconds since the online loop started (initialisation excluded).
    pub seconds: f64,
}

/// What [`fit_online`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineReport {
    /// Seconds spent initialising (reading the batch included).
    pub seconds_init: f64,
    /// Seconds of the online loop.
    pub seconds_online: f64,
    /// Frames fitted online (after the initial batch, all epochs).
    pub frames_online: usize,
    /// `frames_online / seconds_online`.
    pub frames_per_second: f64,
    /// Neurons after initialisation.
    pub components_init: usize,
    /// Neurons at the end.
    pub components_final: usize,
    /// Per-stage wall time.
    pub stages: StageTimes,
}

/// The result of [`fit_online`].
#[derive(Debug)]
pub struct OnlineOutput {
    /// CaImAn's estimates after `fit_online`: traces over the last epoch (`t // epochs` frames).
    pub estimates: Estimates,
    /// The model (for `noisyC`, `time_neuron_added`, shifts, or to go on fitting).
    pub model: OnAcid,
    /// Timings and counts.
    pub report: OnlineReport,
}

/// Reads `n` frames from `src` starting at `start` into `buf` (resized).
fn read_block(src: &mut dyn FrameSource, start: usize, n: usize, buf: &mut Vec<f32>) -> Result<()> {
    let d = src.dims().pixels();
    buf.resize(n * d, 0.0);
    src.read_frames(start, &mut buf[..n * d])?;
    Ok(())
}

/// The frames of one epoch: `(source, first frame, end)` per file.
fn epoch_plan(sources: &[Box<dyn FrameSource>], first_epoch: bool, init_batch: usize) -> Vec<(usize, usize, usize)> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| (i, if first_epoch && i == 0 { init_batch.min(s.frames()) } else { 0 }, s.frames()))
        .collect()
}

/// CaImAn's `OnACID.fit_online`: initialises on the first `online.init_batch` frames of the first
/// source, then feeds every frame of every source (`epochs` times; the first epoch skips the
/// initial batch; `stop_detection` turns the search for new components off in the last epoch)
/// through the per-frame path. `progress` is called after every block of frames.
///
/// All sources must have the first one's frame size. The per-frame passes use the executor's
/// inner threads (`exec.inner_threads().per_task`, see [`OnAcid::set_par`]; results do not
/// depend on them); in the pipelined mode the two stages occupy two threads and the passes run
/// inline in the demixing thread.
///
/// # Errors
/// [`Error::InvalidParam`] without sources, for sources of another frame size, `epochs = 0`,
/// `block = 0` or a first movie shorter than `init_batch`; read errors, NaN frames
/// ([`Error::NonFinite`] naming the file and frame) and the errors of the stages.
pub fn fit_online<E: Executor>(
    sources: &mut [Box<dyn FrameSource>],
    params: &CnmfParams,
    exec: &E,
    opts: &FitOnlineOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<OnlineOutput> {
    let Some(first) = sources.first() else {
        return Err(Error::InvalidParam("no movie to process".into()));
    };
    let dims = first.dims();
    if dims.is_volume() {
        return Err(Error::Unsupported("volumetric (3-D) movies: OnACID here is planar".into()));
    }
    if let Some(s) = sources.iter().find(|s| s.dims() != dims) {
        return Err(Error::InvalidParam(format!(
            "{}: frame size {:?} differs from the first movie's {:?}",
            s.info().path.display(),
            s.dims(),
            dims
        )));
    }
    let epochs = params.online.epochs;
    if epochs == 0 || opts.block == 0 {
        return Err(Error::InvalidParam("epochs and block must be positive".into()));
    }
    let init_batch = params.online.init_batch;
    if first.frames() < init_batch {
        return Err(Error::InvalidParam(format!(
            "{}: {} frames, fewer than init_batch = {init_batch}",
            first.info().path.display(),
            first.frames()
        )));
    }
    let clock = Instant::now();
    let mut batch = Vec::new();
    read_block(sources[0].as_mut(), 0, init_batch, &mut batch)?;
    let frames = Array3::from_shape_vec((init_batch, dims.d1, dims.d2), batch)
        .map_err(|e| Error::InvalidParam(format!("initial batch: {e}")))?;
    let mut pipe = OnlinePipeline::initialize(params, frames.view(), opts.masks.as_ref(), exec)?;
    drop(frames);
    pipe.model.set_par(Par::new(exec.inner_threads().per_task));
    let seconds_init = clock.elapsed().as_secs_f64();
    let components_init = pipe.model.n_components();
    let per_epoch: usize = sources.iter().map(|s| s.frames()).sum();
    let frames_total = per_epoch * epochs;
    let names: Vec<String> = sources.iter().map(|s| s.info().path.display().to_string()).collect();
    let clock = Instant::now();
    let detect_default = pipe.model.detecting();
    for epoch in 0..epochs {
        if epoch + 1 == epochs && params.online.stop_detection {
            pipe.model.set_detecting(false);
        } else {
            pipe.model.set_detecting(detect_default);
        }
        for (si, start, end) in epoch_plan(sources, epoch == 0, init_batch) {
            let mut report = |pipe: &OnlinePipeline| {
                progress(&Progress {
                    frames_done: pipe.model.frames_seen(),
                    frames_total,
                    epoch,
                    components: pipe.model.n_components(),
                    seconds: clock.elapsed().as_secs_f64(),
                });
            };
            let src = sources[si].as_mut();
            if opts.pipelined {
                run_pipelined(&mut pipe, src, &names[si], start, end, opts.block, &mut report)?;
            } else {
                let mut buf = Vec::new();
                let d = dims.pixels();
                let mut k = start;
                while k < end {
                    let n = opts.block.min(end - k);
                    read_block(src, k, n, &mut buf)?;
                    for (i, frame) in buf.chunks_exact(d).enumerate() {
                        fit_one(&mut pipe, frame, k + i, &names[si])?;
                    }
                    k += n;
                    report(&pipe);
                }
            }
        }
    }
    let seconds_online = clock.elapsed().as_secs_f64();
    let model = pipe.into_model();
    let t = model.frames_seen();
    let estimates = model.estimates_over(t - t / epochs, t)?;
    let frames_online = t - init_batch;
    let report = OnlineReport {
        seconds_init,
        seconds_online,
        frames_online,
        frames_per_second: frames_online as f64 / seconds_online.max(1e-12),
        components_init,
        components_final: model.n_components(),
        stages: model.stage_times().clone(),
    };
    Ok(OnlineOutput { estimates, model, report })
}

/// [`OnlinePipeline::fit_frame`] with the file name and frame index in NaN errors.
fn fit_one(pipe: &mut OnlinePipeline, frame: &[f32], index: usize, name: &str) -> Result<FrameReport> {
    let clock = Instant::now();
    pipe.stage.set_template(&pipe.model);
    let shift = pipe.stage.prepare(frame, index, name, &mut pipe.buf)?;
    pipe.model.times.motion += clock.elapsed().as_secs_f64();
    let r = pipe.model.fit_next(&pipe.buf)?;
    if let Some(s) = shift {
        pipe.model.shifts.push(s);
    }
    Ok(r)
}

/// Frames of one block after the frame stage, with their shifts.
#[derive(Default)]
struct Prepared {
    frames: Vec<f32>,
    shifts: Vec<Option<[f64; 2]>>,
    seconds: f64,
}

/// Reads and prepares frames `k..k+n` of `src` into `out`.
fn prepare_block(
    src: &mut dyn FrameSource,
    stage: &mut FrameStage,
    name: &str,
    k: usize,
    n: usize,
    raw: &mut Vec<f32>,
    out: &mut Prepared,
) -> Result<()> {
    let clock = Instant::now();
    read_block(src, k, n, raw)?;
    let d_in = stage.input.pixels();
    let d = stage.work.len();
    out.frames.resize(n * d, 0.0);
    out.shifts.clear();
    for i in 0..n {
        let s = stage.prepare(&raw[i * d_in..(i + 1) * d_in], k + i, name, &mut out.frames[i * d..(i + 1) * d])?;
        out.shifts.push(s);
    }
    out.seconds = clock.elapsed().as_secs_f64();
    Ok(())
}

/// The pipelined loop over frames `start..end` of one source (see the module docs).
fn run_pipelined(
    pipe: &mut OnlinePipeline,
    src: &mut dyn FrameSource,
    name: &str,
    start: usize,
    end: usize,
    block: usize,
    report: &mut dyn FnMut(&OnlinePipeline),
) -> Result<()> {
    if start >= end {
        return Ok(());
    }
    let d = pipe.model.dims.pixels();
    let mut raw = Vec::new();
    let mut cur = Prepared::default();
    pipe.stage.set_template(&pipe.model);
    prepare_block(src, &mut pipe.stage, name, start, block.min(end - start), &mut raw, &mut cur)?;
    let mut k = start;
    let par = Par::new(2);
    while k < end {
        let n = block.min(end - k);
        let next_k = k + n;
        let next_n = block.min(end.saturating_sub(next_k));
        pipe.stage.set_template(&pipe.model);
        let mut next = Prepared::default();
        {
            let reader = Mutex::new((&mut *src, &mut pipe.stage, &mut raw, &mut next));
            let fitter = Mutex::new((&mut pipe.model, &cur));
            let results: Vec<Result<()>> = par.map_indices(2, |i| {
                if i == 0 {
                    if next_n == 0 {
                        return Ok(());
                    }
                    let mut g = reader.lock().map_err(|_| Error::InvalidParam("reader stage poisoned".into()))?;
                    let (s, st, r, nx) = &mut *g;
                    prepare_block(&mut **s, st, name, next_k, next_n, r, nx)
                } else {
                    let mut g = fitter.lock().map_err(|_| Error::InvalidParam("fit stage poisoned".into()))?;
                    let (model, prepared) = &mut *g;
                    for (i, fr) in prepared.frames.chunks_exact(d).take(n).enumerate() {
                        model.fit_next(fr)?;
                        if let Some(s) = prepared.shifts[i] {
                            model.shifts.push(s);
                        }
                    }
                    model.times.motion += prepared.seconds;
                    Ok(())
                }
            });
            for r in results {
                r?;
            }
        }
        cur = next;
        k = next_k;
        report(pipe);
    }
    Ok(())
}
