//! `caiman-motion`: the per-frame kernels of NoRMCorre motion correction (CaImAn's
//! `caiman.motion_correction`), rigid and piecewise rigid, with sub-pixel accuracy.
//!
//! What it is:
//! * [`register`]: sub-pixel translation registration (`register_translation`, 2-D and 3-D) with
//!   the template spectrum computed once, a pruned inverse FFT and a local 15 × 15 upsampled DFT;
//! * [`shift`]: applying shifts — OpenCV-exact cubic translation and remap (`warpAffine` /
//!   `remap` with `INTER_CUBIC`, including OpenCV's 1/32-pixel coordinate quantisation), Fourier
//!   shifts, CaImAn's border modes;
//! * [`patches`]: the patch grid, shift-field upsampling (`cv2.resize` bilinear/cubic, cubic
//!   `interpn`), blending weights and the `max_shear` rule;
//! * [`correct`]: one frame of `tile_and_correct` behind [`FrameCorrector`], built once per
//!   template and worker, writing into caller buffers without per-frame allocation;
//! * [`filter`], [`template`], [`legacy`]: the 1p high-pass filter, `bin_median` and template
//!   statistics, the legacy normalised-cross-correlation matcher used for CaImAn's initial
//!   template;
//! * [`params`]: CaImAn's `motion` parameter group ([`MotionParams`]) with its JSON loader;
//! * [`fft`]: the hand-composed 2-D real FFT (rows with `realfft`, transpose, columns with
//!   `rustfft`) and a simple 3-D FFT.
//!
//! * [`volume`]: piecewise-rigid registration of volumes (`tile_and_correct_3d`) behind
//!   [`VolumeCorrector`];
//! * [`batch`]: the whole-movie driver ([`motion_correct`]): templates, rigid passes,
//!   piecewise pass, chunks as [`caiman_parallel::Task`]s on any executor, F-order memmap output,
//!   results in CaImAn's `MotionCorrect` names.
//!
//! What it is not: no file formats (movies are read and written through `caiman-io`), no threads (every kernel is single-threaded;
//! parallelise across frames or chunks), no printing (logs go through `tracing`).
//!
//! Conventions: frames are `d1 × d2` `f32` views (any strides). Arithmetic is chosen by
//! [`Precision`]: `f32` (default, the fast path: single-precision FFTs with the image means
//! removed, separable `f32` cubic translation, `f32` remap, FFT-based initial-template matcher —
//! about twice as fast, same accuracy against ground truth) or `f64` (CaImAn's arithmetic, so
//! that decisions on the 0.1 px grid match CaImAn's exactly). A
//! [`register::Registration::shift`] is the content displacement `s` (`frame(p) ≈
//! template(p − s)`); every shift that is *applied* or *reported by a corrector* is `−s`
//! (catalog §0.2). Search windows are symmetric (`−m … m`), a documented fix of CaImAn's
//! asymmetric `−m … m−1`.
//!
//! ```
//! use caiman_motion::{CorrectionOptions, FrameCorrector, MotionParams};
//! use ndarray::Array2;
//!
//! let template = Array2::from_shape_fn((64, 64), |(i, j)| {
//!     ((i as f32 * 0.3).sin() + (j as f32 * 0.2).cos()) * 10.0 + 20.0
//! });
//! let opts = CorrectionOptions::rigid(&MotionParams::default(), 0.0)?;
//! let mut corrector = FrameCorrector::new(template.view(), &opts)?;
//! let mut out = Array2::zeros((64, 64));
//! let shifts = corrector.correct(template.view(), out.view_mut())?;
//! assert_eq!(shifts.rigid, [0.0, 0.0]);
//! # Ok::<(), caiman_motion::Error>(())
//! ```

pub mod batch;
pub mod correct;
pub mod error;
pub mod fft;
pub mod filter;
pub mod legacy;
pub mod params;
pub mod patches;
pub mod register;
pub mod shift;
pub mod template;
pub mod volume;

pub use batch::{MotionJob, MotionResult, apply_shifts_movie, motion_correct, register_tasks};
pub use correct::{CorrectionOptions, FrameCorrector, FrameShifts};
pub use error::{Error, ParamsError, Result};
pub use params::{BorderNan, MotionParams, Precision};
pub use patches::PatchGrid;
pub use register::{Registrar, Registration, SearchWindow, register_translation};
pub use shift::BorderMode;
pub use template::TemplateStack;
pub use volume::{VolumeCorrector, VolumeOptions, VolumeShifts};
