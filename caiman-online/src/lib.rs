//! `caiman-online`: CaImAn's OnACID — streaming source extraction, one frame at a time, with
//! memory bounded in the movie length except for the traces themselves (`K × T` floats).
//!
//! What it is (catalog §8):
//! * [`initialize`]: OnACID's initialisation on the first `init_batch` frames — `bare` (greedy ROI
//!   and HALS), `cnmf` (a full CNMF fit of the batch, patches when `patch.rf` is set) or `seeded`
//!   (binary masks) — after `ds_factor` down-sampling, motion correction and normalisation of the
//!   batch as CaImAn's `initialize_online`;
//! * [`OnAcid`]: the online state (footprints `Ab = [b | A]` with their supports, `C_on`,
//!   `noisyC`, one incremental OASIS per neuron, the sufficient statistics `CY`, `CC`, the
//!   residual ring buffers, greedy non-overlapping groups, capacity growth) and
//!   [`OnAcid::fit_next`]: demixing by HALS on the new frame, deconvolution, residual buffers,
//!   detection of new components (score image, peak candidates, rank-1 NMF, space correlation,
//!   duplicate and exceptionality tests), lagged sufficient statistics, shape updates every
//!   `update_freq` frames and removal of vanished components;
//! * [`OnlinePipeline`]: the per-frame path from a raw frame of any source (C order, input size):
//!   NaN check, down-sampling, normalisation, online rigid or piecewise-rigid motion correction
//!   against the current model (`mc_next`), then `fit_next`; results readable at any moment;
//! * [`fit_online`]: CaImAn's `fit_online` over one or more `caiman_io::FrameSource`s with
//!   `epochs` and `stop_detection`, a progress callback, and a pipelined mode that overlaps reading
//!   and motion correction of the next block with demixing of the current one on two inner threads
//!   of `caiman-parallel`.
//!
//! Results are `caiman_cnmf::estimates::Estimates` (so `caiman_cnmf::results::save_cnmf` writes
//! them in the batch HDF5 layout); `noisyC`, `C_on`, `time_neuron_added` and the shifts are on the
//! model. Parameters are CaImAn's, from `caiman_cnmf::params::CnmfParams` (`online` group plus
//! `init`, `preprocess.p`, `temporal.s_min`, `motion`, `data.fr`/`decay_time`).
//!
//! Speed: the dense per-frame work (residual, its running moments, the residual buffers, the
//! blurred squared residual `rho`, its running sum `sv`, the score image, its maximum filter and
//! peaks, the background's `Aᵀy` and `CY`) runs in a few fused passes over strips of columns,
//! split over the explicit inner parallelism `caiman_parallel::Par` ([`OnAcid::set_par`]; in
//! [`fit_online`], the executor's inner threads); results are bit-identical for any number of
//! inner threads and between the sequential, pipelined and frame-by-frame modes (tested). The
//! candidates of a frame are evaluated side by side on the same `Par`. Measured on 512×512×2000
//! synthetic movies (262 neurons; bare init on 200 frames, CaImAn's reference OnACID
//! parameters; `examples/throughput.rs`) on the 2-core development machine with another job
//! using about one core (load 1.2–1.4), online frames/s: without motion correction 210 with one
//! inner thread, 259 with two, 234 pipelined (the code before these passes, same run: 158, 171
//! pipelined); with motion correction 118 with one inner thread, 120 with two (registration is
//! sequential), 221 pipelined (before: 83, 148 pipelined). CaImAn 1.12.1: ≈ 32 frames/s without
//! motion correction. Peak RSS 747 MiB (reached in the initialisation) at both 2000 and 20 000
//! frames; the online state grows by 16 bytes per component and frame (`C_on`, `noisyC` in f32
//! and the OASIS spike train in f64): 376 MiB after 1200 frames, 452 MiB after 19 448.
//!
//! Accuracy on CaImAn's reference movie (`tests/reference.rs`, CaImAn's OnACID parameters): the
//! run is CaImAn's, component for component — the same 37 components detected at the same
//! frames (every `time_neuron_added` equal), footprints and traces correlating with CaImAn's to
//! 1 − 10⁻⁸, the initial batch traces equal to 4·10⁻⁵ relative RMS — hence F1 0.6857 and a
//! median correlation of the matched traces with the truth of 0.971500, against CaImAn's 0.6857
//! and 0.971503 (the difference is f64 here against CaImAn's float32). Getting there took the
//! two initialisation details of `init.rs` (CaImAn's bare residual formula, and an NMF start for
//! the background equivalent to `'nndsvdar'`); before them the detections drifted from CaImAn's
//! from frame 208 on (one neuron 133 frames late, its background having absorbed part of it) and
//! the figures were F1 0.704, median 0.9653.
//!
//! What it is not: no file formats (frames come through `caiman-io`), no threads of its own (the
//! pipelined mode and the strip passes run on `caiman_parallel::Par`), no printing. Not implemented: 1-photon
//! (CNMF-E ring model, `method_init='corr_pnr'`), volumes, the online CNN (`sniper_mode` /
//! `test_both`: the CNN weights are not available; candidates are screened by the space
//! correlation only and a warning is logged), the ring-CNN background, `use_corr_img`, the
//! simultaneous demix-and-deconvolve mode (`simultaneously`), distributed shape updates
//! (`dist_shape_update`), showing or saving the online movie. These settings are rejected or
//! logged by [`check_params`].
//!
//! Deliberate deviations from CaImAn 1.12.1 (catalog §8; \[Q\] marks the catalogue's quirks):
//! * Reproduced on purpose: \[Q\] the bare/seeded initialisation residuals `YrA` weight a
//!   neighbour's trace by `1/‖a_j‖²` (CaImAn's transposed scaled overlap matrix), not `1/‖a_k‖²` as
//!   the batch `compute_residuals`; the fixed formula gave other initial traces for overlapping
//!   components (up to 23 % of a trace's RMS on the reference movie) and other detections.
//! * Bare initialisation: `greedyroi_nmf_init_method = 'nndsvdar'` (random fill of the NNDSVD
//!   zeros, `|N(0, 1)|·mean/100`) is run as `'nndsvd'` (zeros kept), the nearest deterministic
//!   start; caiman-cnmf's own mapping to `'nndsvda'` (fill with the mean) converged to another
//!   background (see `init.rs`).
//! * \[Q\] `use_peak_max = False` takes the arg-max of the score once, instead of
//!   `min_num_trial` copies of the same pixel.
//! * Reproduced on purpose (measured on CaImAn's reference movie: they matter for which
//!   candidates are found): after a component is added, `rho_buf`/`sv` around it are recomputed
//!   from the blurred *signed* residuals (elsewhere from their positive part), and `sv` there sums
//!   all `mbs` buffered frames (elsewhere the newest `mbs − 1`). The consistent variants found more
//!   duplicate components (F1 0.667 and 0.694 against 0.704 with CaImAn's rule).
//! * `s_min < 0` is converted to an absolute threshold per candidate (CaImAn overwrites its
//!   variable with the first candidate's value).
//! * Frames after the initial batch are down-sampled with `INTER_AREA` like the batch (CaImAn
//!   uses `cv2.resize`'s default bilinear there).
//! * `init_method='cnmf'` does not divide `A`, `b` by `img_norm` again after fitting normalised
//!   frames (CaImAn does so on its patch path only).
//! * Online motion correction registers each frame on CaImAn's template `Ab·median(C_on[:,
//!   t−51..t−1])` (times `img_norm` when normalising: CaImAn 1.12 has that factor commented out,
//!   which compares normalised template and raw frame) with caiman-motion's f32 FFT
//!   registration (0.1 px) and a cubic shift, instead of OpenCV's `matchTemplate`-based
//!   `motion_correct_iteration_fast`; the initial batch is registered the same way on
//!   `initial_template` of the batch. `min_mov` is not subtracted. Frame and template are
//!   registered with their means removed and their borders tapered (Tukey window over
//!   `max_shifts_online + 2` px): the FFT's circular correlation otherwise favours zero shift
//!   through the wrap-around edges (`matchTemplate` has no wrap-around), which showed as an
//!   axis-0 "drift" of 0.98 px rms on a synthetic movie (0.198 px after; test in
//!   `tests/synthetic.rs`).
//! * The score image's box filter sums its columns directly (f32) instead of OpenCV's running
//!   sum across the image (sequential by nature, with rounding drift); along each column the
//!   window sum is exact in f64 as OpenCV's running sum up to f64 rounding. The `Aᵀy` of a
//!   full-support (background) component is summed per strip of columns, then over strips.
//! * Component removal after a shape update only removes neurons (a vanished background column
//!   would make CaImAn delete the wrong OASIS instance); `time_neuron_added` follows the removals.
//! * Storage: `CY` only on each component's support (the only entries CaImAn reads), no dense
//!   `Ab_dense` copy (`d × expected_comps`); sums in f64. After a component is added only the
//!   window's pixels of `mean_buff` are recomputed (the rest of the buffer did not change).
//! * `Ab_epoch` (footprints after each epoch) is not kept.

mod detect;
mod error;
mod filters;
mod init;
mod onacid;
mod pipeline;
mod preprocess;
mod ring;

pub use error::{Error, Result};
pub use init::initialize;
pub use onacid::{FrameReport, OnAcid, StageTimes};
pub use pipeline::{FitOnlineOptions, OnlineOutput, OnlinePipeline, OnlineReport, Progress, fit_online};
pub use preprocess::working_dims;

use caiman_cnmf::params::CnmfParams;

/// Checks what OnACID here cannot honour: returns the warnings for settings that are ignored
/// (`sniper_mode`, `test_both`, `show_movie`, `save_online_movie`, `dist_shape_update`) and logs
/// them.
///
/// # Errors
/// [`Error::Unsupported`] for `ring_CNN`, `use_corr_img`, `simultaneously` and 1-photon
/// initialisation (`method_init='corr_pnr'`), which would change the results.
pub fn check_params(params: &CnmfParams) -> Result<Vec<String>> {
    let on = &params.online;
    if on.ring_cnn {
        return Err(Error::Unsupported("online.ring_CNN (TensorFlow background model)".into()));
    }
    if on.use_corr_img {
        return Err(Error::Unsupported("online.use_corr_img (correlation × PNR score image)".into()));
    }
    if on.simultaneously {
        return Err(Error::Unsupported("online.simultaneously (joint demixing and deconvolution)".into()));
    }
    if params.init.method_init != caiman_cnmf::params::MethodInit::GreedyRoi {
        return Err(Error::Unsupported(format!("init.method_init {:?} (1-photon OnACID)", params.init.method_init)));
    }
    let mut w = Vec::new();
    if on.sniper_mode || on.test_both {
        w.push("online.sniper_mode/test_both: no online CNN here; candidates are screened by rval_thr only".to_owned());
    }
    if on.show_movie || on.save_online_movie {
        w.push("online.show_movie/save_online_movie: no movie is shown or written".to_owned());
    }
    if on.dist_shape_update {
        w.push("online.dist_shape_update: shapes are updated in bulk every update_freq frames".to_owned());
    }
    for m in &w {
        tracing::warn!("{m}");
    }
    Ok(w)
}
