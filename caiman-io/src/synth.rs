//! Synthetic two-photon calcium-imaging movies with exact, known ground truth.
//!
//! What it is: a deterministic generator of realistic-looking two-photon movies for tests,
//! benchmarks and demos, together with everything that went into them ([`GroundTruth`]):
//!
//! * **neurons** — elliptical Gaussian footprints (peak 1, random size, elongation and orientation,
//!   truncated at 4 σ, i.e. where the Mahalanobis distance² exceeds 16), centres drawn uniformly
//!   over the field of view widened by [`SynthParams::border`], so some neurons are only partly
//!   visible ([`GroundTruth::in_fov`], [`GroundTruth::frac_in_fov`]);
//! * **activity** — Poisson spike counts per frame at a per-neuron rate, each spike with a random
//!   amplitude, turned into calcium by an AR(1) or AR(2) model with per-neuron time constants
//!   (CaImAn's `c[t] = g₁c[t-1] (+ g₂c[t-2]) + s[t]`); traces `C` are in **photons per frame at the
//!   footprint peak** and include a resting baseline;
//! * **background** — `nb = 2` spatially smooth components (tissue/illumination and neuropil),
//!   each `level·(1 + Σ amp·sin(plane wave))`; the tissue component fluctuates slowly, the
//!   neuropil follows the low-passed mean activity, and both bleach exponentially;
//! * **noise** — Poisson photon noise, gain (photons → counts), Gaussian read noise, offset, and
//!   optional rounding/clamping to the `u16` range as a camera/digitiser would;
//! * **motion** — a smooth random-walk rigid translation (rms amplitude, hard clip) plus a smooth
//!   non-rigid displacement field made of low-frequency sinusoidal modes.
//!
//! Rendering gives exact motion ground truth: each frame is the analytic scene evaluated at the
//! pixel coordinates displaced by the content displacement, `frame_t(p) = scene_t(p − d(p,t))`,
//! with `d(p,t) = rigid(t) + Σ_m coef[t,m]·sin(2π(ky_m·row/d1 + kx_m·col/d2) + phase_m)` — no
//! interpolation anywhere. Content at reference position `q` appears at `q + d` in frame `t`;
//! CaImAn's motion correction stores the shift to apply, `−d` ([`GroundTruth::shift_to_apply`]).
//! With zero displacement a frame is exactly `offset + gain·noise(A·C + b·f)` with the stored
//! `A` (f32), `C`, `b`, `f`, evaluated in f64.
//!
//! Everything is deterministic per [`SynthParams::seed`] on every platform: the generator uses
//! its own PRNG (SplitMix64 seeding, xoshiro256**), its own `exp`/`ln`/`sin`/`cos` (plain IEEE
//! arithmetic, no platform `libm`), Marsaglia's polar method for normals and Knuth's method /
//! Hörmann's PTRS for Poisson variates. Independent streams are used for layout, spikes,
//! background, motion and the noise of each frame, so switching motion or noise off leaves the
//! neurons and their activity unchanged.
//!
//! Movies are streamed frame by frame ([`write_movie`], [`stream_frames`]) with one frame buffer,
//! so 512×512×10⁴ movies never sit in memory; [`generate`] renders small movies in memory with
//! the same numbers, and [`FrameRenderer`] renders any frame on its own (frames are independent,
//! so callers may render in parallel). Cost on one core: about 25 ms per 512×512 frame with 500
//! neurons without motion, about 60 ms with non-rigid motion (the displaced scene is evaluated
//! analytically at every pixel); the ground truth alone ([`ground_truth`]) takes O(K·T).
//!
//! What it is not: a biophysical simulator (no dendrites, no scanning artefacts, no z-motion, no
//! volumetric movies), and not bit-compatible with CaImAn's or the reference `make_movie.py`
//! random streams — it follows the same model and conventions, not the same draws.
//!
//! The defaults are not `make_movie.py`'s. They give dimmer resting neurons (4 photons above the
//! background against ≈ 12), lower firing rates (0.3 Hz against 0.5) and more non-rigid motion. A
//! perfect rigid correction leaves 0.72 px rms of non-rigid displacement here, against 0.31 px in
//! CaImAn's benchmark movie. `docs/perf/pipeline/accuracy/synth_caiman_like.json` sets the light
//! levels, rates, footprint size and residual motion to `make_movie.py`'s. The test
//! `caiman_like_preset_matches_the_reference_generator` checks this against its ground truths. Our
//! `nonrigid_amp` 0.22 corresponds to `make_movie.py`'s `--nonrigid-amp 1.0`.
//!
//! The default [`SynthParams`] (256×256 px, 1000 frames at 30 Hz, 120 neurons, σ ≈ 3.5 px) gives
//! about 12 photons/pixel/frame of background, neurons resting 4 photons above it at their peak,
//! single spikes of 10 photons at the peak (single-pixel SNR ≈ 2.4 against the ≈ 4.2-photon shot
//! noise at a resting neuron's peak; much higher summed over the footprint), 2 counts per photon,
//! 2 counts of read noise on an offset of 100 counts, ≈ 1.5 px rms rigid motion and ≈ 0.5 px rms
//! non-rigid motion.
//!
//! ```no_run
//! use caiman_io::synth::{self, SynthParams};
//! use caiman_io::WriteOptions;
//! let params = SynthParams { frames: 300, seed: 7, ..SynthParams::default() };
//! let path = std::path::Path::new("demo.tif");
//! let truth = synth::write_movie(&params, path, &WriteOptions::default(), &mut |_, _| {})?;
//! truth.save(&synth::truth_path(path))?;
//! # Ok::<(), caiman_io::Error>(())
//! ```

use std::collections::HashMap;
use std::f64::consts::{PI, TAU};
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::movie::{Dims, Movie, MovieMeta, Shape};
use crate::npy::{NpyArray, NpyData};
use crate::write::WriteOptions;

use self::detmath::{exp, ln, sin, sin_cos};
use self::rng::Rng;

/// Number of background components (CaImAn's `nb`).
pub const NB: usize = 2;
/// Plane waves per background component.
pub const BG_WAVES: usize = 4;
/// Footprints are truncated where the squared Mahalanobis distance exceeds this (4 σ).
pub const SUPPORT_Q: f64 = 16.0;

/// Largest value of a quantised (`u16`) output.
const U16_MAX: f64 = 65535.0;
/// The "path" named in errors of in-memory generation.
const IN_MEMORY: &str = "<synthetic movie>";

// Random stream identifiers (one independent stream per purpose).
const STREAM_LAYOUT: u64 = 1;
const STREAM_SPIKES: u64 = 2;
const STREAM_BACKGROUND: u64 = 3;
const STREAM_MOTION: u64 = 4;
const STREAM_NOISE: u64 = 5;

/// Parameters of a synthetic movie. Every field has a realistic two-photon default
/// (`#[serde(default)]`: a JSON object may name any subset of the fields).
///
/// Units: pixels (px) for lengths, seconds (s) for times, Hz for rates, **photons per pixel per
/// frame** for light levels, counts (digitiser units) for the output values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthParams {
    /// Frame size `[d1, d2]` (rows, columns) in px. Default `[256, 256]`.
    pub dims: [usize; 2],
    /// Number of frames `T`. Default 1000.
    pub frames: usize,
    /// Frame rate in Hz. Default 30.
    pub fr: f64,
    /// Seed of every random draw. Default 0.
    pub seed: u64,

    /// Number of neurons `K`, including those whose centre falls in the border outside the field
    /// of view. Default 120.
    pub n_neurons: usize,
    /// Width in px of the band around the field of view where centres may also fall. Default 4.
    pub border: f64,
    /// Minimum distance between centres in units of `gsig` (best effort: after 100 rejected
    /// draws a centre is accepted anyway). Default 1.5.
    pub min_distance: f64,
    /// Mean Gaussian footprint sigma in px (geometric mean of the two axes; CaImAn's `gSig`).
    /// Default 3.5.
    pub gsig: f64,
    /// Coefficient of variation of the per-neuron sigma (log-normal). Default 0.15.
    pub gsig_cv: f64,
    /// Largest ratio of the major to the minor sigma; each neuron draws one uniformly in
    /// `[1, max_elongation]`; orientations are uniform. Default 1.6.
    pub max_elongation: f64,

    /// Mean firing rate in Hz over neurons. Default 0.3.
    pub rate: f64,
    /// Coefficient of variation of the per-neuron rate (log-normal, mean `rate`). Default 0.5.
    pub rate_cv: f64,
    /// Order `p` of the autoregressive calcium model: 1 (instantaneous rise) or 2. Default 1.
    pub ar_order: usize,
    /// Mean calcium decay time constant in s. Default 0.4 (GCaMP6f-like).
    pub tau_decay: f64,
    /// Mean calcium rise time constant in s (used when `ar_order == 2`). Default 0.05.
    pub tau_rise: f64,
    /// Coefficient of variation of the per-neuron time constants (log-normal). Default 0.1.
    pub tau_cv: f64,
    /// Mean peak response to one spike, in photons per frame at the footprint peak. Default 10.
    pub spike_amp: f64,
    /// Coefficient of variation of the amplitude of individual spikes (log-normal). Default 0.3.
    pub spike_amp_cv: f64,
    /// Coefficient of variation of the per-neuron brightness, which scales both the spike
    /// amplitude and the resting baseline of a neuron (log-normal). Default 0.3.
    pub brightness_cv: f64,
    /// Mean resting fluorescence of a neuron in photons per frame at its footprint peak
    /// (included in `C`, see [`GroundTruth::baseline`]). Default 4.
    pub neuron_baseline: f64,

    /// Mean level of background component 0 (tissue / illumination) in photons. Default 8.
    pub bg_level: f64,
    /// Relative spatial modulation of background 0, in `[0, 1)`: its values lie in
    /// `bg_level·[1 − contrast, 1 + contrast]`. Default 0.5.
    pub bg_contrast: f64,
    /// Mean level of background component 1 (neuropil) in photons. Default 4.
    pub neuropil_level: f64,
    /// Relative spatial modulation of the neuropil, in `[0, 1)`. Default 0.5.
    pub neuropil_contrast: f64,
    /// Fraction of the neuropil that follows the (1 s low-passed) mean neural activity, in
    /// `[0, 1]`; the rest is constant. Default 0.5.
    pub neuropil_coupling: f64,
    /// Relative amplitude of the slow (20–200 s periods) fluctuation of background 0, in
    /// `[0, 1)`. Default 0.05.
    pub bg_fluctuation: f64,
    /// Fraction of the background lost to bleaching over the movie (exponential decay of `f`
    /// from 1 at the first frame to `1 − bleach` at the last), in `[0, 1)`. Default 0.1.
    pub bleach: f64,

    /// Draw Poisson photon noise (`false`: the expected photon count is used). Default true.
    pub poisson: bool,
    /// Counts per photon. Default 2.
    pub gain: f64,
    /// Standard deviation of the Gaussian read noise in counts (0: none). Default 2.
    pub read_sd: f64,
    /// Offset added to every value, in counts. Default 100.
    pub offset: f64,
    /// Round values to integers and clamp them to `[0, 65535]`, like real camera/digitiser data
    /// (the movie stays f32). Default true.
    pub quantize: bool,

    /// Root-mean-square rigid displacement per axis in px (0: no rigid motion). Default 1.5.
    pub rigid_amp: f64,
    /// The rigid displacement is clipped to `±rigid_max` px per axis. Default 6.
    pub rigid_max: f64,
    /// Correlation time of the motion random walks in s (0: independent frames). Default 0.5.
    pub motion_tau: f64,
    /// Approximate root-mean-square non-rigid displacement per axis in px (0: rigid motion
    /// only). Each mode coefficient is clipped at 3 times its rms. Default 0.5.
    pub nonrigid_amp: f64,
    /// Number of sinusoidal non-rigid modes (spatial frequency 0.5–1.5 cycles per field of
    /// view, random direction and phase). Default 3.
    pub nonrigid_modes: usize,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            dims: [256, 256],
            frames: 1000,
            fr: 30.0,
            seed: 0,
            n_neurons: 120,
            border: 4.0,
            min_distance: 1.5,
            gsig: 3.5,
            gsig_cv: 0.15,
            max_elongation: 1.6,
            rate: 0.3,
            rate_cv: 0.5,
            ar_order: 1,
            tau_decay: 0.4,
            tau_rise: 0.05,
            tau_cv: 0.1,
            spike_amp: 10.0,
            spike_amp_cv: 0.3,
            brightness_cv: 0.3,
            neuron_baseline: 4.0,
            bg_level: 8.0,
            bg_contrast: 0.5,
            neuropil_level: 4.0,
            neuropil_contrast: 0.5,
            neuropil_coupling: 0.5,
            bg_fluctuation: 0.05,
            bleach: 0.1,
            poisson: true,
            gain: 2.0,
            read_sd: 2.0,
            offset: 100.0,
            quantize: true,
            rigid_amp: 1.5,
            rigid_max: 6.0,
            motion_tau: 0.5,
            nonrigid_amp: 0.5,
            nonrigid_modes: 3,
        }
    }
}

impl SynthParams {
    /// Frame size as [`Dims`] (planar).
    pub fn frame_dims(&self) -> Dims {
        Dims::planar(self.dims[0], self.dims[1])
    }

    /// Frames and frame size of the movie.
    pub fn shape(&self) -> Shape {
        Shape::new(self.frames, self.frame_dims())
    }

    /// The same parameters without any noise and without quantisation: every value is
    /// `offset + gain·(expected photons)`.
    pub fn without_noise(mut self) -> Self {
        self.poisson = false;
        self.read_sd = 0.0;
        self.quantize = false;
        self
    }

    /// The same parameters without rigid or non-rigid motion (same neurons and activity).
    pub fn without_motion(mut self) -> Self {
        self.rigid_amp = 0.0;
        self.nonrigid_amp = 0.0;
        self
    }

    /// Check every parameter; errors are [`Error::InvalidRequest`] naming `path` (the output
    /// file, or `<synthetic movie>`) and the offending parameter.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(path, format!("synthetic movie: {msg}")));
        let [d1, d2] = self.dims;
        if d1 == 0 || d2 == 0 || d1 > 65536 || d2 > 65536 {
            return bad(format!("dims {:?} must be between 1 and 65536 pixels each", self.dims));
        }
        if d1 * d2 > i32::MAX as usize {
            return bad(format!("dims {:?}: frames of more than 2^31 pixels are not supported", self.dims));
        }
        if self.frames == 0 {
            return bad("frames must be at least 1".into());
        }
        if self.frames.checked_mul(d1 * d2).is_none_or(|n| n > isize::MAX as usize / 4) {
            return bad(format!("{} frames of {d1}×{d2} pixels do not fit in memory addresses", self.frames));
        }
        if self.n_neurons > 1_000_000 {
            return bad(format!("n_neurons = {} exceeds 1000000", self.n_neurons));
        }
        if self.n_neurons.checked_mul(self.frames).is_none_or(|n| n > 1 << 32) {
            return bad(format!("n_neurons × frames = {} × {} exceeds 2^32 trace values", self.n_neurons, self.frames));
        }
        if !(self.ar_order == 1 || self.ar_order == 2) {
            return bad(format!("ar_order = {} must be 1 or 2", self.ar_order));
        }
        if self.nonrigid_modes > 64 {
            return bad(format!("nonrigid_modes = {} exceeds 64", self.nonrigid_modes));
        }
        // (name, value, lowest, highest, whether the highest is excluded)
        let ranges: [(&str, f64, f64, f64, bool); 31] = [
            ("fr", self.fr, 1e-3, 1e5, false),
            ("border", self.border, 0.0, 1e4, false),
            ("min_distance", self.min_distance, 0.0, 100.0, false),
            ("gsig", self.gsig, 0.3, 100.0, false),
            ("gsig_cv", self.gsig_cv, 0.0, 2.0, false),
            ("max_elongation", self.max_elongation, 1.0, 10.0, false),
            ("rate", self.rate, 0.0, 1e5, false),
            ("rate_cv", self.rate_cv, 0.0, 10.0, false),
            ("tau_decay", self.tau_decay, 1e-6, 1e4, false),
            ("tau_rise", self.tau_rise, 1e-6, 1e4, false),
            ("tau_cv", self.tau_cv, 0.0, 2.0, false),
            ("spike_amp", self.spike_amp, 0.0, 1e6, false),
            ("spike_amp_cv", self.spike_amp_cv, 0.0, 10.0, false),
            ("brightness_cv", self.brightness_cv, 0.0, 10.0, false),
            ("neuron_baseline", self.neuron_baseline, 0.0, 1e6, false),
            ("bg_level", self.bg_level, 0.0, 1e6, false),
            ("bg_contrast", self.bg_contrast, 0.0, 1.0, true),
            ("neuropil_level", self.neuropil_level, 0.0, 1e6, false),
            ("neuropil_contrast", self.neuropil_contrast, 0.0, 1.0, true),
            ("neuropil_coupling", self.neuropil_coupling, 0.0, 1.0, false),
            ("bg_fluctuation", self.bg_fluctuation, 0.0, 1.0, true),
            ("bleach", self.bleach, 0.0, 1.0, true),
            ("gain", self.gain, 1e-6, 1e4, false),
            ("read_sd", self.read_sd, 0.0, 1e6, false),
            ("offset", self.offset, -1e9, 1e9, false),
            ("rigid_amp", self.rigid_amp, 0.0, 1e4, false),
            ("rigid_max", self.rigid_max, 0.0, 1e4, false),
            ("motion_tau", self.motion_tau, 0.0, 1e4, false),
            ("nonrigid_amp", self.nonrigid_amp, 0.0, 1e3, false),
            // Derived bounds, so that no sampler sees absurd arguments.
            ("rate / fr (spikes per frame)", self.rate / self.fr, 0.0, 5.0, false),
            ("motion_tau × fr (frames)", self.motion_tau * self.fr, 0.0, 1e5, false),
        ];
        for (name, v, lo, hi, open) in ranges {
            let ok = v.is_finite() && v >= lo && if open { v < hi } else { v <= hi };
            if !ok {
                let upper = if open { format!("< {hi}") } else { format!("<= {hi}") };
                return bad(format!("{name} = {v} must be a finite number >= {lo} and {upper}"));
            }
        }
        if self.ar_order == 2 && self.tau_rise >= self.tau_decay {
            return bad(format!(
                "tau_rise = {} must be smaller than tau_decay = {} for ar_order 2",
                self.tau_rise, self.tau_decay
            ));
        }
        Ok(())
    }
}

/// A sparse matrix in compressed sparse column (CSC) form, as scipy and CaImAn store footprints.
///
/// For [`GroundTruth::a`] rows are pixels in **Fortran order** (`p = row + d1·col`), columns are
/// neurons, and row indices are sorted within each column.
#[derive(Debug, Clone, PartialEq)]
pub struct CscMatrix {
    /// `[rows, columns]`.
    pub shape: [usize; 2],
    /// Non-zero values, column after column.
    pub data: Vec<f32>,
    /// Row index of each value.
    pub indices: Vec<i32>,
    /// Column `k` holds entries `indptr[k]..indptr[k + 1]` (`columns + 1` values).
    pub indptr: Vec<i32>,
}

impl CscMatrix {
    /// Number of stored (non-zero) values.
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Row indices and values of column `k`.
    ///
    /// # Panics
    /// If `k` is not a column.
    pub fn column(&self, k: usize) -> (&[i32], &[f32]) {
        let (lo, hi) = (self.indptr[k] as usize, self.indptr[k + 1] as usize);
        (&self.indices[lo..hi], &self.data[lo..hi])
    }

    /// The dense `rows × columns` matrix (mind the size: `d × K`).
    pub fn to_dense(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.shape[0], self.shape[1]));
        for k in 0..self.shape[1] {
            let (rows, vals) = self.column(k);
            for (&r, &v) in rows.iter().zip(vals) {
                out[[r as usize, k]] = v;
            }
        }
        out
    }

    /// Check the structure (lengths, monotone `indptr`, indices in range and sorted).
    fn check(&self) -> std::result::Result<(), String> {
        let [rows, cols] = self.shape;
        if self.indptr.len() != cols + 1 || self.indices.len() != self.data.len() {
            return Err(format!(
                "CSC parts disagree: {} indptr for {cols} columns, {} indices, {} values",
                self.indptr.len(),
                self.indices.len(),
                self.data.len()
            ));
        }
        if self.indptr[0] != 0 || self.indptr[cols] as usize != self.data.len() {
            return Err("CSC indptr must start at 0 and end at the number of values".into());
        }
        for k in 0..cols {
            let (lo, hi) = (self.indptr[k], self.indptr[k + 1]);
            if lo > hi {
                return Err(format!("CSC indptr decreases at column {k}"));
            }
            let idx = &self.indices[lo as usize..hi as usize];
            if idx.iter().any(|&r| r < 0 || r as usize >= rows) || idx.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("CSC column {k} has row indices out of range or unsorted"));
            }
        }
        Ok(())
    }
}

/// Everything that went into a synthetic movie.
///
/// Pixel vectors (`a`'s rows, `b`'s rows) use CaImAn's **Fortran order** `p = row + d1·col`;
/// temporal matrices are components × time. Displacements are `[row, col]` pairs in px, with the
/// *content displacement* convention: content at reference position `q` appears at `q + d`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// The parameters the movie was made from.
    pub params: SynthParams,
    /// Footprints `A`, `d × K`, peak 1, truncated at 4 σ, restricted to the field of view.
    pub a: CscMatrix,
    /// Neuron centres `K × 2` (`[row, col]`, px; may lie outside the field of view).
    pub centers: Array2<f64>,
    /// Footprint sigmas `K × 2`: `[major, minor]` in px.
    pub sigmas: Array2<f64>,
    /// Orientation of each major axis in radians, measured from the row axis towards the column
    /// axis, in `[0, π)`.
    pub angles: Vec<f64>,
    /// Whether each centre lies in the field of view (within half a pixel of a pixel centre).
    pub in_fov: Vec<bool>,
    /// Fraction of each (truncated) footprint's mass that falls in the field of view.
    pub frac_in_fov: Vec<f32>,
    /// Calcium traces `C`, `K × T`, in photons per frame at the footprint peak, including the
    /// resting [`baseline`](Self::baseline).
    pub c: Array2<f32>,
    /// Resting fluorescence of each neuron (photons at its footprint peak): `C − baseline`
    /// follows the AR model exactly (up to f32 rounding).
    pub baseline: Vec<f32>,
    /// AR innovations `S`, `K × T`, in the units of `C`: `C[t] − bl = Σᵢ gᵢ·(C[t−i] − bl) + S[t]`,
    /// as CaImAn's deconvolution estimates them.
    pub s: Array2<f32>,
    /// Spike counts per frame, `K × T`.
    pub spike_counts: Array2<u8>,
    /// AR coefficients `K × p` (CaImAn's `g`).
    pub g: Array2<f64>,
    /// Firing rate of each neuron in Hz (the Poisson intensity the spikes were drawn with).
    pub rates: Vec<f64>,
    /// Spatial background `b`, `d × nb`, photons (Fortran pixel order).
    pub b: Array2<f32>,
    /// Temporal background `f`, `nb × T` (dimensionless, about 1).
    pub f: Array2<f32>,
    /// Mean level of each background component in photons (`nb`).
    pub bg_level: Vec<f64>,
    /// Background plane waves `nb × BG_WAVES × 4`, each `[amp, ky, kx, phase]`: component `m` is
    /// `bg_level[m]·(1 + Σ amp·sin(2π(ky·row/d1 + kx·col/d2) + phase))`.
    pub bg_waves: Array3<f64>,
    /// Rigid content displacement per frame, `T × 2` (`[row, col]`, px).
    pub shifts_rigid: Array2<f64>,
    /// Non-rigid modes `M × 3`, each `[ky, kx, phase]` (cycles per field of view, radians).
    pub nr_modes: Array2<f64>,
    /// Non-rigid mode coefficients `T × M × 2` (px, `[row, col]`).
    pub nr_coef: Array3<f64>,
    /// Mean displacement over all pixels of each frame, `T × 2` (the reference's
    /// `shifts_fov_mean`).
    pub shifts_fov_mean: Array2<f64>,
}

impl GroundTruth {
    /// Frame size.
    pub fn dims(&self) -> Dims {
        self.params.frame_dims()
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.params.frames
    }

    /// Number of neurons `K`.
    pub fn n_neurons(&self) -> usize {
        self.centers.nrows()
    }

    /// The rigid shift CaImAn's motion correction should find and apply to frame `t`, `[row,
    /// col]` = `−shifts_rigid[t]`.
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn shift_to_apply(&self, t: usize) -> [f64; 2] {
        [-self.shifts_rigid[[t, 0]], -self.shifts_rigid[[t, 1]]]
    }

    /// Content displacement `d(p, t)` (rigid + non-rigid, `[row, col]`, px) at frame position
    /// `(row, col)` of frame `t`: the pixel shows the scene at `(row, col) − d`.
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn displacement_at(&self, t: usize, row: f64, col: f64) -> [f64; 2] {
        let modes = mode_waves(self);
        let mut d = [self.shifts_rigid[[t, 0]], self.shifts_rigid[[t, 1]]];
        for (m, w) in modes.iter().enumerate() {
            let s = sin(w.theta(row, col));
            d[0] += self.nr_coef[[t, m, 0]] * s;
            d[1] += self.nr_coef[[t, m, 1]] * s;
        }
        d
    }

    /// Mean content displacement over all pixels of frame `t` (`[row, col]`, px).
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn fov_mean_shift(&self, t: usize) -> [f64; 2] {
        [self.shifts_fov_mean[[t, 0]], self.shifts_fov_mean[[t, 1]]]
    }

    /// Expected photons of the motion-free scene of frame `t` at reference position
    /// `(row, col)` (any real coordinates): `Σ_m b_m(row, col)·f[m,t] + Σ_k a_k(row, col)·C[k,t]`,
    /// with footprint and background values rounded to f32 exactly as in `A` and `b`.
    /// This is the ideal motion-corrected frame. Costs O(K) per call.
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn scene_photons(&self, t: usize, row: f64, col: f64) -> f64 {
        let mut v = 0.0;
        for (m, field) in bg_fields(self).iter().enumerate() {
            v += field.eval(row, col) as f64 * self.f[[m, t]] as f64;
        }
        for (k, e) in ellipses(self).iter().enumerate() {
            let a = e.value(row, col);
            if a > 0.0 {
                v += a as f64 * self.c[[k, t]] as f64;
            }
        }
        v
    }

    /// Expected photons of frame `t` at frame pixel `(row, col)`, motion included:
    /// `scene_photons(t, (row, col) − displacement_at(t, row, col))`. Costs O(K) per call.
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn frame_photons(&self, t: usize, row: f64, col: f64) -> f64 {
        let d = self.displacement_at(t, row, col);
        self.scene_photons(t, row - d[0], col - d[1])
    }

    /// Write the ground truth as an `.npz` (atomically). Entries: `params_json` (u8, the
    /// [`SynthParams`] as JSON), `dims`, `A_data`/`A_indices`/`A_indptr`/`A_shape` (CSC parts),
    /// `centers`, `sigmas`, `angles`, `in_fov`, `frac_in_fov`, `C`, `baseline`, `S`, `spikes`,
    /// `g`, `rates`, `b`, `f`, `bg_level`, `bg_waves`, `shifts_rigid`, `nr_modes`, `nr_coef`,
    /// `shifts_fov_mean`. By convention the file sits next to the movie: [`truth_path`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(&self.params)
            .map_err(|e| Error::invalid(path, format!("cannot serialise parameters: {e}")))?;
        let k = self.n_neurons();
        let t = self.frames();
        let d = self.dims().pixels();
        let entries: Vec<(&str, NpyArray)> = vec![
            ("params_json", arr(vec![json.len()], NpyData::U8(json))),
            ("dims", arr(vec![2], NpyData::I64(vec![self.params.dims[0] as i64, self.params.dims[1] as i64]))),
            ("A_data", arr(vec![self.a.nnz()], NpyData::F32(self.a.data.clone()))),
            ("A_indices", arr(vec![self.a.nnz()], NpyData::I32(self.a.indices.clone()))),
            ("A_indptr", arr(vec![k + 1], NpyData::I32(self.a.indptr.clone()))),
            ("A_shape", arr(vec![2], NpyData::I64(vec![d as i64, k as i64]))),
            ("centers", arr(vec![k, 2], NpyData::F64(flat(&self.centers)))),
            ("sigmas", arr(vec![k, 2], NpyData::F64(flat(&self.sigmas)))),
            ("angles", arr(vec![k], NpyData::F64(self.angles.clone()))),
            ("in_fov", arr(vec![k], NpyData::Bool(self.in_fov.clone()))),
            ("frac_in_fov", arr(vec![k], NpyData::F32(self.frac_in_fov.clone()))),
            ("C", arr(vec![k, t], NpyData::F32(flat(&self.c)))),
            ("baseline", arr(vec![k], NpyData::F32(self.baseline.clone()))),
            ("S", arr(vec![k, t], NpyData::F32(flat(&self.s)))),
            ("spikes", arr(vec![k, t], NpyData::U8(flat(&self.spike_counts)))),
            ("g", arr(vec![k, self.g.ncols()], NpyData::F64(flat(&self.g)))),
            ("rates", arr(vec![k], NpyData::F64(self.rates.clone()))),
            ("b", arr(vec![d, NB], NpyData::F32(flat(&self.b)))),
            ("f", arr(vec![NB, t], NpyData::F32(flat(&self.f)))),
            ("bg_level", arr(vec![NB], NpyData::F64(self.bg_level.clone()))),
            ("bg_waves", arr(self.bg_waves.shape().to_vec(), NpyData::F64(flat3(&self.bg_waves)))),
            ("shifts_rigid", arr(vec![t, 2], NpyData::F64(flat(&self.shifts_rigid)))),
            ("nr_modes", arr(vec![self.nr_modes.nrows(), 3], NpyData::F64(flat(&self.nr_modes)))),
            ("nr_coef", arr(self.nr_coef.shape().to_vec(), NpyData::F64(flat3(&self.nr_coef)))),
            ("shifts_fov_mean", arr(vec![t, 2], NpyData::F64(flat(&self.shifts_fov_mean)))),
        ];
        crate::npy::write_npz(path, &entries)
    }

    /// Read a ground truth written by [`GroundTruth::save`].
    pub fn load(path: &Path) -> Result<GroundTruth> {
        let entries: HashMap<String, NpyArray> = crate::npy::read_npz(path)?.into_iter().collect();
        let r = NpzReader { path, entries };
        let json = r.u8("params_json", None)?;
        let params: SynthParams = serde_json::from_slice(&json).map_err(|e| {
            Error::malformed(path, "NPZ", format!("params_json is not valid synthetic-movie parameters: {e}"))
        })?;
        params.validate(path)?;
        let (t, d) = (params.frames, params.frame_dims().pixels());
        let k = r.shape("centers")?.first().copied().unwrap_or(0);
        let p = params.ar_order;
        let m = params.nonrigid_modes;
        let a_shape = r.i64("A_shape", Some(&[2]))?;
        if a_shape != [d as i64, k as i64] {
            return Err(Error::malformed(path, "NPZ", format!("A_shape {a_shape:?} is not [{d}, {k}]")));
        }
        let nnz = r.shape("A_data")?.first().copied().unwrap_or(0);
        let a = CscMatrix {
            shape: [d, k],
            data: r.f32("A_data", Some(&[nnz]))?,
            indices: r.i32("A_indices", Some(&[nnz]))?,
            indptr: r.i32("A_indptr", Some(&[k + 1]))?,
        };
        a.check().map_err(|msg| Error::malformed(path, "NPZ", msg))?;
        let bad_shape = |e: ndarray::ShapeError| Error::malformed(path, "NPZ", e.to_string());
        let a2 = |name: &str, rows: usize, cols: usize| -> Result<Array2<f64>> {
            let v = r.f64(name, Some(&[rows, cols]))?;
            Array2::from_shape_vec((rows, cols), v).map_err(bad_shape)
        };
        let a2f = |name: &str, rows: usize, cols: usize| -> Result<Array2<f32>> {
            let v = r.f32(name, Some(&[rows, cols]))?;
            Array2::from_shape_vec((rows, cols), v).map_err(bad_shape)
        };
        let a3 = |name: &str, s: [usize; 3]| -> Result<Array3<f64>> {
            let v = r.f64(name, Some(&s))?;
            Array3::from_shape_vec((s[0], s[1], s[2]), v).map_err(bad_shape)
        };
        let spikes = r.u8("spikes", Some(&[k, t]))?;
        Ok(GroundTruth {
            a,
            centers: a2("centers", k, 2)?,
            sigmas: a2("sigmas", k, 2)?,
            angles: r.f64("angles", Some(&[k]))?,
            in_fov: r.bool("in_fov", Some(&[k]))?,
            frac_in_fov: r.f32("frac_in_fov", Some(&[k]))?,
            c: a2f("C", k, t)?,
            baseline: r.f32("baseline", Some(&[k]))?,
            s: a2f("S", k, t)?,
            spike_counts: Array2::from_shape_vec((k, t), spikes).map_err(bad_shape)?,
            g: a2("g", k, p)?,
            rates: r.f64("rates", Some(&[k]))?,
            b: a2f("b", d, NB)?,
            f: a2f("f", NB, t)?,
            bg_level: r.f64("bg_level", Some(&[NB]))?,
            bg_waves: a3("bg_waves", [NB, BG_WAVES, 4])?,
            shifts_rigid: a2("shifts_rigid", t, 2)?,
            nr_modes: a2("nr_modes", m, 3)?,
            nr_coef: a3("nr_coef", [t, m, 2])?,
            shifts_fov_mean: a2("shifts_fov_mean", t, 2)?,
            params,
        })
    }
}

fn arr(shape: Vec<usize>, data: NpyData) -> NpyArray {
    NpyArray { shape, data }
}

fn flat<T: Clone>(a: &Array2<T>) -> Vec<T> {
    a.iter().cloned().collect()
}

fn flat3<T: Clone>(a: &Array3<T>) -> Vec<T> {
    a.iter().cloned().collect()
}

/// Typed access to the entries of a ground-truth `.npz`.
struct NpzReader<'a> {
    path: &'a Path,
    entries: HashMap<String, NpyArray>,
}

impl NpzReader<'_> {
    fn get(&self, name: &str, shape: Option<&[usize]>) -> Result<&NpyArray> {
        let a = self
            .entries
            .get(name)
            .ok_or_else(|| Error::malformed(self.path, "NPZ", format!("ground truth lacks the array {name:?}")))?;
        if let Some(s) = shape
            && a.shape != s
        {
            return Err(Error::malformed(self.path, "NPZ", format!("{name} has shape {:?}, expected {s:?}", a.shape)));
        }
        Ok(a)
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name, None)?.shape.clone())
    }

    fn wrong(&self, name: &str, want: &str) -> Error {
        Error::malformed(self.path, "NPZ", format!("{name} should hold {want} values"))
    }

    fn f64(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f64>> {
        match &self.get(name, shape)?.data {
            NpyData::F64(v) => Ok(v.clone()),
            NpyData::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
            _ => Err(self.wrong(name, "float")),
        }
    }

    fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>> {
        match &self.get(name, shape)?.data {
            NpyData::F32(v) => Ok(v.clone()),
            _ => Err(self.wrong(name, "float32")),
        }
    }

    fn i64(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<i64>> {
        match &self.get(name, shape)?.data {
            NpyData::I64(v) => Ok(v.clone()),
            NpyData::I32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            _ => Err(self.wrong(name, "integer")),
        }
    }

    fn i32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<i32>> {
        match &self.get(name, shape)?.data {
            NpyData::I32(v) => Ok(v.clone()),
            NpyData::I64(v) => {
                v.iter().map(|&x| i32::try_from(x).map_err(|_| self.wrong(name, "32-bit integer"))).collect()
            }
            _ => Err(self.wrong(name, "integer")),
        }
    }

    fn u8(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<u8>> {
        match &self.get(name, shape)?.data {
            NpyData::U8(v) => Ok(v.clone()),
            _ => Err(self.wrong(name, "uint8")),
        }
    }

    fn bool(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<bool>> {
        match &self.get(name, shape)?.data {
            NpyData::Bool(v) => Ok(v.clone()),
            NpyData::U8(v) => Ok(v.iter().map(|&x| x != 0).collect()),
            _ => Err(self.wrong(name, "bool")),
        }
    }
}

/// The conventional ground-truth file of a movie: `<movie stem>_gt.npz` in the same directory.
pub fn truth_path(movie: &Path) -> PathBuf {
    let stem = movie.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    movie.with_file_name(format!("{stem}_gt.npz"))
}

/// Draw the ground truth (layout, activity, background, motion) without rendering any frame.
/// Cheap: O(K·T + d) work and memory.
pub fn ground_truth(params: &SynthParams) -> Result<GroundTruth> {
    build_truth(params, Path::new(IN_MEMORY))
}

/// Render the movie frame by frame, handing each frame (C order, `d1·d2` values) with its index
/// to `sink`, and return the ground truth. One frame buffer is reused; an error from `sink`
/// stops the rendering and is returned.
pub fn stream_frames(params: &SynthParams, mut sink: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<GroundTruth> {
    let truth = ground_truth(params)?;
    let mut renderer = FrameRenderer::new(&truth);
    let mut frame = vec![0.0f32; truth.dims().pixels()];
    for t in 0..truth.frames() {
        renderer.render(t, &mut frame);
        sink(t, &frame)?;
    }
    Ok(truth)
}

/// Render a whole movie in memory (for small movies; same values as [`write_movie`]).
pub fn generate(params: &SynthParams) -> Result<(Movie, GroundTruth)> {
    let truth = ground_truth(params)?;
    let meta = MovieMeta { fr: params.fr, start_time: 0.0, source: None };
    let mut movie = Movie::zeros(params.shape()).with_meta(meta);
    let d = truth.dims().pixels();
    let mut renderer = FrameRenderer::new(&truth);
    for (t, frame) in movie.as_slice_mut().chunks_exact_mut(d).enumerate() {
        renderer.render(t, frame);
    }
    Ok((movie, truth))
}

/// Render the movie straight into a file (format from the extension, see [`crate::create`]),
/// frame by frame with one reused buffer, calling `progress(frames_done, frames_total)` after
/// every frame. The frame rate written is `params.fr` (overriding `opts.fr`). The ground truth is
/// returned, not saved: call [`GroundTruth::save`] with [`truth_path`] to keep it.
pub fn write_movie(
    params: &SynthParams,
    path: &Path,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GroundTruth> {
    write_movie_to(params, path, opts, progress).map(|(_, truth)| truth)
}

/// As [`write_movie`], also returning the final file name (it differs from `path` for `.mmap`
/// files, whose name encodes the shape).
pub fn write_movie_to(
    params: &SynthParams,
    path: &Path,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(PathBuf, GroundTruth)> {
    let truth = build_truth(params, path)?;
    let opts = WriteOptions { fr: params.fr, ..opts.clone() };
    let mut writer = crate::write::create(path, params.shape(), &opts)?;
    let mut renderer = FrameRenderer::new(&truth);
    let mut frame = vec![0.0f32; truth.dims().pixels()];
    let total = truth.frames();
    for t in 0..total {
        renderer.render(t, &mut frame);
        writer.write_frames(&frame)?;
        progress(t + 1, total);
    }
    let written = writer.finish()?;
    tracing::debug!(path = %written.display(), shape = %params.shape(), neurons = truth.n_neurons(), "synthetic movie written");
    Ok((written, truth))
}

// ---------------------------------------------------------------------------------------------
// Scene geometry shared by the truth builder, the renderer and the GroundTruth methods, so that
// every evaluation of the scene performs the same floating-point operations.

/// A truncated elliptical Gaussian footprint.
#[derive(Debug, Clone, Copy)]
struct Ellipse {
    cy: f64,
    cx: f64,
    cos: f64,
    sin: f64,
    inv1: f64,
    inv2: f64,
    /// Half extents of the q ≤ 16 ellipse along rows and columns.
    hy: f64,
    hx: f64,
}

impl Ellipse {
    fn new(center: [f64; 2], sigmas: [f64; 2], angle: f64) -> Self {
        let (s, c) = sin_cos(angle);
        let (v1, v2) = (sigmas[0] * sigmas[0], sigmas[1] * sigmas[1]);
        let r = SUPPORT_Q.sqrt();
        Ellipse {
            cy: center[0],
            cx: center[1],
            cos: c,
            sin: s,
            inv1: 1.0 / v1,
            inv2: 1.0 / v2,
            hy: r * (v1 * c * c + v2 * s * s).sqrt(),
            hx: r * (v1 * s * s + v2 * c * c).sqrt(),
        }
    }

    /// Squared Mahalanobis distance of `(y, x)` from the centre.
    #[inline]
    fn q(&self, y: f64, x: f64) -> f64 {
        let dy = y - self.cy;
        let dx = x - self.cx;
        let u = dy * self.cos + dx * self.sin;
        let v = dx * self.cos - dy * self.sin;
        u * u * self.inv1 + v * v * self.inv2
    }

    /// Footprint value at `(y, x)`, rounded to f32 (0 outside the support).
    #[inline]
    fn value(&self, y: f64, x: f64) -> f32 {
        let q = self.q(y, x);
        if q <= SUPPORT_Q { exp(-0.5 * q) as f32 } else { 0.0 }
    }

    /// Inclusive row and column ranges (unclipped) of pixels that may lie in the support when
    /// the footprint is displaced by `shift ± spread`.
    fn bbox(&self, shift: [f64; 2], spread: [f64; 2]) -> [(i64, i64); 2] {
        let lo = |c: f64, h: f64, s: f64, w: f64| (c - h + s - w).floor() as i64;
        let hi = |c: f64, h: f64, s: f64, w: f64| (c + h + s + w).ceil() as i64;
        [
            (lo(self.cy, self.hy, shift[0], spread[0]), hi(self.cy, self.hy, shift[0], spread[0])),
            (lo(self.cx, self.hx, shift[1], spread[1]), hi(self.cx, self.hx, shift[1], spread[1])),
        ]
    }
}

/// Clip an inclusive range to `0..n`; `None` when empty.
fn clip(range: (i64, i64), n: usize) -> Option<std::ops::RangeInclusive<usize>> {
    let lo = range.0.max(0);
    let hi = range.1.min(n as i64 - 1);
    (lo <= hi).then_some(lo as usize..=hi as usize)
}

/// A plane wave `sin(wy·y + wx·x + phase)` with `wy = 2π·ky/d1`, `wx = 2π·kx/d2`.
#[derive(Debug, Clone, Copy)]
struct Wave {
    wy: f64,
    wx: f64,
    phase: f64,
}

impl Wave {
    fn new(ky: f64, kx: f64, phase: f64, dims: [usize; 2]) -> Self {
        Wave { wy: TAU * ky / dims[0] as f64, wx: TAU * kx / dims[1] as f64, phase }
    }

    #[inline]
    fn theta(&self, y: f64, x: f64) -> f64 {
        self.wy * y + self.wx * x + self.phase
    }
}

/// One analytic background component.
#[derive(Debug, Clone)]
struct BgField {
    level: f64,
    waves: Vec<(f64, Wave)>,
}

impl BgField {
    /// Value at `(y, x)` in photons, rounded to f32.
    #[inline]
    fn eval(&self, y: f64, x: f64) -> f32 {
        let mut s = 1.0;
        for (amp, w) in &self.waves {
            s += amp * sin(w.theta(y, x));
        }
        (self.level * s) as f32
    }
}

fn bg_fields(gt: &GroundTruth) -> Vec<BgField> {
    (0..NB)
        .map(|m| BgField {
            level: gt.bg_level[m],
            waves: (0..gt.bg_waves.shape()[1])
                .map(|j| {
                    let w = |i| gt.bg_waves[[m, j, i]];
                    (w(0), Wave::new(w(1), w(2), w(3), gt.params.dims))
                })
                .collect(),
        })
        .collect()
}

fn mode_waves(gt: &GroundTruth) -> Vec<Wave> {
    gt.nr_modes.rows().into_iter().map(|r| Wave::new(r[0], r[1], r[2], gt.params.dims)).collect()
}

fn ellipses(gt: &GroundTruth) -> Vec<Ellipse> {
    (0..gt.n_neurons())
        .map(|k| {
            Ellipse::new([gt.centers[[k, 0]], gt.centers[[k, 1]]], [gt.sigmas[[k, 0]], gt.sigmas[[k, 1]]], gt.angles[k])
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ground-truth construction.

fn build_truth(params: &SynthParams, path: &Path) -> Result<GroundTruth> {
    params.validate(path)?;
    let [d1, d2] = params.dims;
    let d = d1 * d2;
    let t_len = params.frames;
    let k_len = params.n_neurons;
    let fr = params.fr;

    // --- Layout: centres, shapes, brightness, rates, time constants.
    let mut rng = Rng::stream(params.seed, STREAM_LAYOUT, 0);
    let min_d2 = (params.min_distance * params.gsig).powi(2);
    let mut centers = Array2::<f64>::zeros((k_len, 2));
    let mut sigmas = Array2::<f64>::zeros((k_len, 2));
    let mut angles = Vec::with_capacity(k_len);
    let mut brightness = Vec::with_capacity(k_len);
    let mut rates = Vec::with_capacity(k_len);
    let mut taus = Vec::with_capacity(k_len);
    let (lo, hi) = (-params.border, [d1 as f64 - 1.0 + params.border, d2 as f64 - 1.0 + params.border]);
    for k in 0..k_len {
        let mut c = [0.0; 2];
        for _ in 0..100 {
            c = [rng.uniform_in(lo, hi[0]), rng.uniform_in(lo, hi[1])];
            let far = (0..k).all(|j| {
                let (dy, dx) = (centers[[j, 0]] - c[0], centers[[j, 1]] - c[1]);
                dy * dy + dx * dx >= min_d2
            });
            if far {
                break;
            }
        }
        centers[[k, 0]] = c[0];
        centers[[k, 1]] = c[1];
        let sig = params.gsig * rng.lognormal_mean1(params.gsig_cv);
        let elong = rng.uniform_in(1.0, params.max_elongation).sqrt();
        sigmas[[k, 0]] = sig * elong;
        sigmas[[k, 1]] = sig / elong;
        angles.push(rng.uniform_in(0.0, PI));
        brightness.push(rng.lognormal_mean1(params.brightness_cv));
        rates.push(params.rate * rng.lognormal_mean1(params.rate_cv));
        let tau_d = params.tau_decay * rng.lognormal_mean1(params.tau_cv);
        let tau_r = (params.tau_rise * rng.lognormal_mean1(params.tau_cv)).min(0.9 * tau_d);
        taus.push((tau_d, tau_r));
    }

    // --- Footprints (CSC, Fortran pixel order).
    let mut a = CscMatrix { shape: [d, k_len], data: Vec::new(), indices: Vec::new(), indptr: vec![0] };
    let mut in_fov = Vec::with_capacity(k_len);
    let mut frac_in_fov = Vec::with_capacity(k_len);
    for k in 0..k_len {
        let e = Ellipse::new([centers[[k, 0]], centers[[k, 1]]], [sigmas[[k, 0]], sigmas[[k, 1]]], angles[k]);
        let [rows, cols] = e.bbox([0.0; 2], [0.0; 2]);
        let (mut total, mut inside) = (0.0f64, 0.0f64);
        for j in cols.0..=cols.1 {
            for i in rows.0..=rows.1 {
                let v = e.value(i as f64, j as f64);
                if v > 0.0 {
                    total += v as f64;
                    if (0..d1 as i64).contains(&i) && (0..d2 as i64).contains(&j) {
                        inside += v as f64;
                        a.indices.push((i as usize + d1 * j as usize) as i32);
                        a.data.push(v);
                    }
                }
            }
        }
        let nnz = i32::try_from(a.data.len()).map_err(|_| {
            Error::invalid(path, "synthetic movie: footprints hold more than 2^31 values; use fewer or smaller neurons")
        })?;
        a.indptr.push(nnz);
        frac_in_fov.push(if total > 0.0 { (inside / total) as f32 } else { 0.0 });
        let inside_axis = |c: f64, n: usize| c >= -0.5 && c < n as f64 - 0.5;
        in_fov.push(inside_axis(e.cy, d1) && inside_axis(e.cx, d2));
    }

    // --- Activity: spikes → innovations → calcium.
    let p = params.ar_order;
    let mut g = Array2::<f64>::zeros((k_len, p));
    let mut c = Array2::<f32>::zeros((k_len, t_len));
    let mut s = Array2::<f32>::zeros((k_len, t_len));
    let mut spike_counts = Array2::<u8>::zeros((k_len, t_len));
    let mut baseline = Vec::with_capacity(k_len);
    let mut activity = vec![0.0f64; t_len]; // mean unit-amplitude calcium, for the neuropil
    let mut rng = Rng::stream(params.seed, STREAM_SPIKES, 0);
    for k in 0..k_len {
        let (tau_d, tau_r) = taus[k];
        let dcy = exp(-1.0 / (tau_d * fr));
        let (g1, g2) = if p == 1 {
            (dcy, 0.0)
        } else {
            let rise = exp(-1.0 / (tau_r * fr));
            (dcy + rise, -dcy * rise)
        };
        g[[k, 0]] = g1;
        if p == 2 {
            g[[k, 1]] = g2;
        }
        let scale = params.spike_amp * brightness[k] / kernel_peak(g1, g2);
        let bl = (params.neuron_baseline * brightness[k]) as f32;
        baseline.push(bl);
        let lam = rates[k] / fr;
        let (mut c1, mut c2) = (0.0f64, 0.0f64);
        for t in 0..t_len {
            let n = rng.poisson(lam);
            let mut amp = 0.0;
            for _ in 0..n {
                amp += rng.lognormal_mean1(params.spike_amp_cv);
            }
            let st = scale * amp;
            let ct = g1 * c1 + g2 * c2 + st;
            (c2, c1) = (c1, ct);
            spike_counts[[k, t]] = n.min(u8::MAX as u64) as u8;
            s[[k, t]] = st as f32;
            c[[k, t]] = (bl as f64 + ct) as f32;
            if scale > 0.0 {
                activity[t] += ct / scale / k_len as f64;
            }
        }
    }

    // --- Background: spatial fields, temporal components.
    let mut rng = Rng::stream(params.seed, STREAM_BACKGROUND, 0);
    let bg_level = vec![params.bg_level, params.neuropil_level];
    let mut bg_waves = Array3::<f64>::zeros((NB, BG_WAVES, 4));
    for (m, (contrast, kmin, kmax)) in
        [(params.bg_contrast, 0.3, 1.5), (params.neuropil_contrast, 1.0, 4.0)].into_iter().enumerate()
    {
        let mut weights = [0.0; BG_WAVES];
        for j in 0..BG_WAVES {
            weights[j] = rng.uniform_in(0.5, 1.0);
            let kn = rng.uniform_in(kmin, kmax);
            let (sd, cd) = sin_cos(rng.uniform_in(0.0, TAU));
            bg_waves[[m, j, 1]] = kn * cd;
            bg_waves[[m, j, 2]] = kn * sd;
            bg_waves[[m, j, 3]] = rng.uniform_in(0.0, TAU);
        }
        let sum: f64 = weights.iter().sum();
        for (j, w) in weights.iter().enumerate() {
            bg_waves[[m, j, 0]] = contrast * w / sum;
        }
    }
    let slow: Vec<(f64, f64)> = (0..3).map(|_| (rng.uniform_in(20.0, 200.0), rng.uniform_in(0.0, TAU))).collect();
    let bleach_rate = if t_len > 1 { ln(1.0 - params.bleach) / (t_len - 1) as f64 } else { 0.0 };
    let alpha = 1.0 - exp(-1.0 / fr); // 1 s low-pass of the activity
    let mut smoothed = Vec::with_capacity(t_len);
    let mut acc = activity.first().copied().unwrap_or(0.0);
    for &x in &activity {
        acc += alpha * (x - acc);
        smoothed.push(acc);
    }
    let mean_act = smoothed.iter().sum::<f64>() / t_len as f64;
    let mut f = Array2::<f32>::zeros((NB, t_len));
    for t in 0..t_len {
        let bleach = exp(bleach_rate * t as f64);
        let time = t as f64 / fr;
        let wobble = slow.iter().map(|&(period, ph)| sin(TAU * time / period + ph)).sum::<f64>() / 3.0;
        f[[0, t]] = (bleach * (1.0 + params.bg_fluctuation * wobble)) as f32;
        let act = if mean_act > 0.0 { smoothed[t] / mean_act } else { 1.0 };
        let w = params.neuropil_coupling;
        f[[1, t]] = (bleach * ((1.0 - w) + w * act)) as f32;
    }

    // --- Motion.
    let mut rng = Rng::stream(params.seed, STREAM_MOTION, 0);
    let tau_frames = params.motion_tau * fr;
    let mut shifts_rigid = Array2::<f64>::zeros((t_len, 2));
    for axis in 0..2 {
        let x = smooth_process(&mut rng, t_len, tau_frames);
        for t in 0..t_len {
            let v = params.rigid_amp * x[t];
            shifts_rigid[[t, axis]] =
                if params.rigid_amp > 0.0 { v.clamp(-params.rigid_max, params.rigid_max) } else { 0.0 };
        }
    }
    let m_len = params.nonrigid_modes;
    let mut nr_modes = Array2::<f64>::zeros((m_len, 3));
    for m in 0..m_len {
        let kn = rng.uniform_in(0.5, 1.5);
        let (sd, cd) = sin_cos(rng.uniform_in(0.0, TAU));
        nr_modes[[m, 0]] = kn * cd;
        nr_modes[[m, 1]] = kn * sd;
        nr_modes[[m, 2]] = rng.uniform_in(0.0, TAU);
    }
    let mut nr_coef = Array3::<f64>::zeros((t_len, m_len, 2));
    let mode_scale = if m_len > 0 { params.nonrigid_amp * (2.0 / m_len as f64).sqrt() } else { 0.0 };
    for m in 0..m_len {
        for axis in 0..2 {
            let x = smooth_process(&mut rng, t_len, tau_frames);
            for t in 0..t_len {
                nr_coef[[t, m, axis]] = if mode_scale > 0.0 { mode_scale * x[t].clamp(-3.0, 3.0) } else { 0.0 };
            }
        }
    }

    let mut truth = GroundTruth {
        params: params.clone(),
        a,
        centers,
        sigmas,
        angles,
        in_fov,
        frac_in_fov,
        c,
        baseline,
        s,
        spike_counts,
        g,
        rates,
        b: Array2::zeros((d, NB)),
        f,
        bg_level,
        bg_waves,
        shifts_rigid,
        nr_modes,
        nr_coef,
        shifts_fov_mean: Array2::zeros((t_len, 2)),
    };

    // Spatial background table (Fortran pixel order) and FOV-mean displacement.
    let fields = bg_fields(&truth);
    for j in 0..d2 {
        for i in 0..d1 {
            for (m, field) in fields.iter().enumerate() {
                truth.b[[i + d1 * j, m]] = field.eval(i as f64, j as f64);
            }
        }
    }
    let mode_mean: Vec<f64> = mode_waves(&truth)
        .iter()
        .map(|w| {
            let mut sum = 0.0;
            for i in 0..d1 {
                for j in 0..d2 {
                    sum += sin(w.theta(i as f64, j as f64));
                }
            }
            sum / d as f64
        })
        .collect();
    for t in 0..t_len {
        for axis in 0..2 {
            let mut v = truth.shifts_rigid[[t, axis]];
            for (m, mean) in mode_mean.iter().enumerate() {
                v += truth.nr_coef[[t, m, axis]] * mean;
            }
            truth.shifts_fov_mean[[t, axis]] = v;
        }
    }
    Ok(truth)
}

/// Peak of the impulse response of `c[t] = g1·c[t−1] + g2·c[t−2] + s[t]` (1 for AR(1)).
fn kernel_peak(g1: f64, g2: f64) -> f64 {
    let (mut h1, mut h2) = (1.0f64, 0.0f64);
    let mut peak = 1.0f64;
    for _ in 0..100_000 {
        let h = g1 * h1 + g2 * h2;
        if h <= peak {
            break;
        }
        peak = h;
        (h2, h1) = (h1, h);
    }
    peak
}

/// A smooth random process of `n` samples: white noise through a critically damped
/// second-order low-pass with time constant `tau` frames (after a burn-in of `5·tau` samples),
/// normalised to zero mean and unit standard deviation (all zeros when that is impossible).
fn smooth_process(rng: &mut Rng, n: usize, tau: f64) -> Vec<f64> {
    let rho = if tau > 0.0 { exp(-1.0 / tau) } else { 0.0 };
    let burn = (5.0 * tau).ceil() as usize;
    let (mut x1, mut x2) = (0.0f64, 0.0f64);
    let mut out = Vec::with_capacity(n);
    for i in 0..burn + n {
        let x = 2.0 * rho * x1 - rho * rho * x2 + rng.normal();
        (x2, x1) = (x1, x);
        if i >= burn {
            out.push(x);
        }
    }
    let mean = out.iter().sum::<f64>() / n as f64;
    let var = out.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    if n < 2 || var.is_nan() || var <= 0.0 {
        return vec![0.0; n];
    }
    let sd = var.sqrt();
    out.iter_mut().for_each(|x| *x = (*x - mean) / sd);
    out
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/// Renders the frames of a [`GroundTruth`] one at a time into caller buffers, allocating nothing
/// per frame.
///
/// Frames are independent (each draws its noise from its own random stream), so several
/// renderers — say one per thread — may render disjoint frames of one movie in any order and
/// produce exactly the values of [`generate`] and [`write_movie`]. A renderer holds about
/// `(3 + M)·d` f64 values of scratch space (`M` non-rigid modes, `d` pixels).
pub struct FrameRenderer<'a> {
    gt: &'a GroundTruth,
    ellipses: Vec<Ellipse>,
    fields: Vec<BgField>,
    /// `nb × d` background table in C pixel order (the values of `b`).
    bg_static: Vec<Vec<f64>>,
    /// C-order pixel index of every stored value of `A`.
    a_cidx: Vec<u32>,
    /// `M × d` values of the non-rigid modes at every pixel (C order).
    mode_sin: Vec<Vec<f64>>,
    src_y: Vec<f64>,
    src_x: Vec<f64>,
    photons: Vec<f64>,
    /// Take the general (displaced) path even for motion-free frames (tests).
    force_displaced: bool,
}

impl std::fmt::Debug for FrameRenderer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRenderer").field("shape", &self.gt.params.shape()).finish_non_exhaustive()
    }
}

impl<'a> FrameRenderer<'a> {
    /// A renderer for the movie described by `gt`.
    pub fn new(gt: &'a GroundTruth) -> Self {
        let [d1, d2] = gt.params.dims;
        let d = d1 * d2;
        let mut bg_static = vec![vec![0.0; d]; NB];
        for (m, table) in bg_static.iter_mut().enumerate() {
            for i in 0..d1 {
                for j in 0..d2 {
                    table[i * d2 + j] = gt.b[[i + d1 * j, m]] as f64;
                }
            }
        }
        let a_cidx =
            gt.a.indices
                .iter()
                .map(|&pf| {
                    let pf = pf as usize;
                    ((pf % d1) * d2 + pf / d1) as u32
                })
                .collect();
        let mode_sin = mode_waves(gt)
            .iter()
            .map(|w| {
                let mut v = Vec::with_capacity(d);
                for i in 0..d1 {
                    for j in 0..d2 {
                        v.push(sin(w.theta(i as f64, j as f64)));
                    }
                }
                v
            })
            .collect();
        FrameRenderer {
            gt,
            ellipses: ellipses(gt),
            fields: bg_fields(gt),
            bg_static,
            a_cidx,
            mode_sin,
            src_y: vec![0.0; d],
            src_x: vec![0.0; d],
            photons: vec![0.0; d],
            force_displaced: false,
        }
    }

    /// Render frame `t` (noise included) into `out`, C order, `d1·d2` values.
    ///
    /// # Panics
    /// If `t` is not a frame or `out` does not hold exactly one frame.
    pub fn render(&mut self, t: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.photons.len(), "render: the buffer must hold exactly one frame");
        self.expected_photons(t);
        let p = &self.gt.params;
        let mut rng = Rng::stream(p.seed, STREAM_NOISE, t as u64);
        for (o, &lam) in out.iter_mut().zip(&self.photons) {
            let lam = lam.max(0.0);
            let n = if p.poisson { rng.poisson(lam) as f64 } else { lam };
            let mut v = p.offset + p.gain * n;
            if p.read_sd > 0.0 {
                v += p.read_sd * rng.normal();
            }
            if p.quantize {
                v = v.round().clamp(0.0, U16_MAX);
            }
            *o = v as f32;
        }
    }

    /// The expected photon counts of frame `t` (motion included, before any noise), C order:
    /// `(value − offset)/gain` of the noise-free movie.
    ///
    /// # Panics
    /// If `t` is not a frame.
    pub fn photons(&mut self, t: usize) -> &[f64] {
        self.expected_photons(t);
        &self.photons
    }

    /// Fill `self.photons` with the expected photon counts of frame `t` (C order).
    fn expected_photons(&mut self, t: usize) {
        let gt = self.gt;
        let [d1, d2] = gt.params.dims;
        let rigid = [gt.shifts_rigid[[t, 0]], gt.shifts_rigid[[t, 1]]];
        let n_modes = self.mode_sin.len();
        let coef = |m: usize, axis: usize| gt.nr_coef[[t, m, axis]];
        let still = rigid == [0.0, 0.0] && (0..n_modes).all(|m| coef(m, 0) == 0.0 && coef(m, 1) == 0.0);
        if still && !self.force_displaced {
            for (c, v) in self.photons.iter_mut().enumerate() {
                let mut x = 0.0;
                for (m, table) in self.bg_static.iter().enumerate() {
                    x += table[c] * gt.f[[m, t]] as f64;
                }
                *v = x;
            }
            for k in 0..gt.n_neurons() {
                let ck = gt.c[[k, t]] as f64;
                let (lo, hi) = (gt.a.indptr[k] as usize, gt.a.indptr[k + 1] as usize);
                for e in lo..hi {
                    self.photons[self.a_cidx[e] as usize] += gt.a.data[e] as f64 * ck;
                }
            }
            return;
        }
        let mut spread = [0.0f64; 2];
        for m in 0..n_modes {
            spread[0] += coef(m, 0).abs();
            spread[1] += coef(m, 1).abs();
        }
        for i in 0..d1 {
            for j in 0..d2 {
                let c = i * d2 + j;
                let (mut dy, mut dx) = (rigid[0], rigid[1]);
                for (m, table) in self.mode_sin.iter().enumerate() {
                    let s = table[c];
                    dy += coef(m, 0) * s;
                    dx += coef(m, 1) * s;
                }
                let (y, x) = (i as f64 - dy, j as f64 - dx);
                self.src_y[c] = y;
                self.src_x[c] = x;
                let mut v = 0.0;
                for (m, field) in self.fields.iter().enumerate() {
                    v += field.eval(y, x) as f64 * gt.f[[m, t]] as f64;
                }
                self.photons[c] = v;
            }
        }
        for (k, e) in self.ellipses.iter().enumerate() {
            let ck = gt.c[[k, t]] as f64;
            let [rows, cols] = e.bbox(rigid, spread);
            let (Some(rows), Some(cols)) = (clip(rows, d1), clip(cols, d2)) else { continue };
            for i in rows {
                for j in cols.clone() {
                    let c = i * d2 + j;
                    let a = e.value(self.src_y[c], self.src_x[c]);
                    if a > 0.0 {
                        self.photons[c] += a as f64 * ck;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Elementary functions from IEEE `+ − × ÷ √` only, so that results are identical on every
/// platform (the platform `libm` is not). Accuracy is a few ulp over the ranges used here.
mod detmath {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const INV_LN2: f64 = std::f64::consts::LOG2_E;

    /// Multiply `x` by `2^k` (`k` in −1100..=1100).
    fn scale2(x: f64, k: i64) -> f64 {
        let pow = |e: i64| f64::from_bits(((e + 1023) as u64) << 52);
        if k > 1023 {
            x * pow(1023) * pow(k - 1023)
        } else if k < -1022 {
            x * pow(-1022) * pow((k + 1022).max(-1022))
        } else {
            x * pow(k)
        }
    }

    /// `Σ c[i]·x^i` by Estrin's scheme (short dependency chains; `c.len() <= 16`).
    #[inline(always)]
    fn estrin(x: f64, c: &[f64]) -> f64 {
        let mut pairs = [0.0f64; 8];
        let n = c.len().div_ceil(2);
        for (i, p) in pairs.iter_mut().enumerate().take(n) {
            *p = if 2 * i + 1 < c.len() { c[2 * i] + c[2 * i + 1] * x } else { c[2 * i] };
        }
        let mut pw = x * x;
        let mut len = n;
        while len > 1 {
            let half = len.div_ceil(2);
            for i in 0..half {
                pairs[i] = if 2 * i + 1 < len { pairs[2 * i] + pairs[2 * i + 1] * pw } else { pairs[2 * i] };
            }
            pw *= pw;
            len = half;
        }
        pairs[0]
    }

    /// 1/n! for n = 0..=13: Taylor series of `e^r`.
    const EXP_C: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];

    /// `e^x`.
    pub(super) fn exp(x: f64) -> f64 {
        if x.is_nan() {
            return x;
        }
        if x > 709.782_712_893_384 {
            return f64::INFINITY;
        }
        if x < -745.2 {
            return 0.0;
        }
        let k = (x * INV_LN2).round();
        let r = (x - k * LN2_HI) - k * LN2_LO;
        // |r| <= 0.35: degree 13 leaves a truncation error below 1e-17.
        scale2(estrin(r, &EXP_C), k as i64)
    }

    /// 1/(2n+1) for n = 0..=11: `atanh(s)/s = Σ s^(2n)/(2n+1)`.
    const ATANH_C: [f64; 12] = [
        1.0,
        1.0 / 3.0,
        1.0 / 5.0,
        1.0 / 7.0,
        1.0 / 9.0,
        1.0 / 11.0,
        1.0 / 13.0,
        1.0 / 15.0,
        1.0 / 17.0,
        1.0 / 19.0,
        1.0 / 21.0,
        1.0 / 23.0,
    ];

    /// Natural logarithm (`-inf` at 0, NaN below).
    pub(super) fn ln(x: f64) -> f64 {
        if x.is_nan() || x < 0.0 {
            return f64::NAN;
        }
        if x == 0.0 {
            return f64::NEG_INFINITY;
        }
        if x.is_infinite() {
            return x;
        }
        let (mut x, mut e) = (x, 0i64);
        if x < f64::MIN_POSITIVE {
            x *= 18_014_398_509_481_984.0; // 2^54
            e -= 54;
        }
        let bits = x.to_bits();
        e += ((bits >> 52) & 0x7ff) as i64 - 1023;
        let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
        if m > std::f64::consts::SQRT_2 {
            m *= 0.5;
            e += 1;
        }
        // ln m = 2·atanh(s), s = (m−1)/(m+1), |s| <= 0.1716 (truncation below 1e-19).
        let s = (m - 1.0) / (m + 1.0);
        let ef = e as f64;
        ef * LN2_HI + (2.0 * s * estrin(s * s, &ATANH_C) + ef * LN2_LO)
    }

    const PIO2_1: f64 = 1.570_796_326_734_125_6; // first 33 bits of π/2
    const PIO2_2: f64 = 6.077_100_506_303_966e-11; // next 33 bits
    const PIO2_3: f64 = 2.022_266_248_711_166_5e-21; // next 33 bits
    const TWO_OVER_PI: f64 = std::f64::consts::FRAC_2_PI;

    /// (−1)^n/(2n+1)! for n = 0..=8: `sin(r)/r` in powers of `r²`.
    const SIN_C: [f64; 9] = [
        1.0,
        -1.0 / 6.0,
        1.0 / 120.0,
        -1.0 / 5040.0,
        1.0 / 362_880.0,
        -1.0 / 39_916_800.0,
        1.0 / 6_227_020_800.0,
        -1.0 / 1_307_674_368_000.0,
        1.0 / 355_687_428_096_000.0,
    ];
    /// (−1)^n/(2n)! for n = 0..=9: `cos(r)` in powers of `r²`.
    const COS_C: [f64; 10] = [
        1.0,
        -1.0 / 2.0,
        1.0 / 24.0,
        -1.0 / 720.0,
        1.0 / 40_320.0,
        -1.0 / 3_628_800.0,
        1.0 / 479_001_600.0,
        -1.0 / 87_178_291_200.0,
        1.0 / 20_922_789_888_000.0,
        -1.0 / 6_402_373_705_728_000.0,
    ];

    /// `(sin x, cos x)`, accurate for `|x|` up to about 10⁶.
    pub(super) fn sin_cos(x: f64) -> (f64, f64) {
        if !x.is_finite() {
            return (f64::NAN, f64::NAN);
        }
        let k = (x * TWO_OVER_PI).round();
        let r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
        let r2 = r * r;
        // |r| <= π/4: sin to r^17, cos to r^18 (truncation below 1e-18).
        let s = r * estrin(r2, &SIN_C);
        let c = estrin(r2, &COS_C);
        match (k as i64).rem_euclid(4) {
            0 => (s, c),
            1 => (c, -s),
            2 => (-s, -c),
            _ => (-c, s),
        }
    }

    /// `sin x`.
    #[inline]
    pub(super) fn sin(x: f64) -> f64 {
        sin_cos(x).0
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn close(a: f64, b: f64, rel: f64) -> bool {
            (a - b).abs() <= rel * b.abs().max(1e-300)
        }

        #[test]
        fn exp_matches_std() {
            let mut x = -740.0;
            while x < 709.0 {
                assert!(close(exp(x), x.exp(), 8e-16), "exp({x}) = {} vs {}", exp(x), x.exp());
                x += 0.0137;
            }
            for x in [0.0, -0.0, 1e-300, -1e-10, 0.5, -0.5, 1.0, 700.0] {
                assert!(close(exp(x), x.exp(), 8e-16), "exp({x})");
            }
            assert_eq!(exp(1000.0), f64::INFINITY);
            assert_eq!(exp(-1000.0), 0.0);
            assert!(exp(f64::NAN).is_nan());
        }

        #[test]
        fn ln_matches_std() {
            let mut x = 1e-310;
            while x < 1e300 {
                assert!((ln(x) - x.ln()).abs() <= 4e-16 * x.ln().abs().max(1.0), "ln({x}) = {} vs {}", ln(x), x.ln());
                x *= 1.0173;
            }
            for x in [1.0, 0.999_999_9, 1.000_000_1, 2.0, 0.5, std::f64::consts::E] {
                assert!((ln(x) - x.ln()).abs() <= 2e-16 * x.ln().abs().max(1e-16) + 1e-300, "ln({x})");
            }
            assert_eq!(ln(0.0), f64::NEG_INFINITY);
            assert!(ln(-1.0).is_nan());
        }

        #[test]
        fn sin_cos_match_std() {
            let mut x = -2000.0;
            while x < 2000.0 {
                let (s, c) = sin_cos(x);
                assert!((s - x.sin()).abs() < 2e-15, "sin({x}) = {s} vs {}", x.sin());
                assert!((c - x.cos()).abs() < 2e-15, "cos({x}) = {c} vs {}", x.cos());
                x += 0.0731;
            }
            assert_eq!(sin(0.0), 0.0);
        }
    }
}

/// Random numbers: SplitMix64 seeding, xoshiro256** generator, and the distributions the
/// generator needs, all platform independent.
mod rng {
    use super::detmath::{exp, ln};

    /// Means below this use Knuth's method (O(λ) uniforms, but cheaper than PTRS's logarithms up
    /// to about here), larger ones PTRS (O(1)).
    pub(super) const KNUTH_BELOW: f64 = 30.0;

    /// SplitMix64 (Steele, Lea & Flood 2014), used to expand seeds.
    #[derive(Debug, Clone)]
    pub(super) struct SplitMix64(u64);

    impl SplitMix64 {
        pub(super) fn new(seed: u64) -> Self {
            SplitMix64(seed)
        }

        pub(super) fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// xoshiro256** (Blackman & Vigna 2018) with a cached second normal deviate.
    #[derive(Debug, Clone)]
    pub(super) struct Rng {
        s: [u64; 4],
        spare: Option<f64>,
    }

    impl Rng {
        /// A generator from a raw xoshiro state (must not be all zeros).
        pub(super) fn from_state(s: [u64; 4]) -> Self {
            Rng { s, spare: None }
        }

        /// A generator seeded by SplitMix64 from `seed`.
        pub(super) fn from_seed(seed: u64) -> Self {
            let mut sm = SplitMix64::new(seed);
            let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
            Rng::from_state(if s == [0; 4] { [1, 2, 3, 4] } else { s })
        }

        /// Independent stream `index` of purpose `stream` under `seed`.
        pub(super) fn stream(seed: u64, stream: u64, index: u64) -> Self {
            let mut key = SplitMix64::new(seed).next_u64();
            key = SplitMix64::new(key ^ stream).next_u64();
            key = SplitMix64::new(key ^ index).next_u64();
            Rng::from_seed(key)
        }

        pub(super) fn next_u64(&mut self) -> u64 {
            let s = &mut self.s;
            let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            result
        }

        /// Uniform in `[0, 1)` with 53 random bits.
        pub(super) fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
        }

        /// Uniform in `[lo, hi)`.
        pub(super) fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.uniform()
        }

        /// Standard normal (Marsaglia's polar method).
        pub(super) fn normal(&mut self) -> f64 {
            if let Some(v) = self.spare.take() {
                return v;
            }
            loop {
                let u = 2.0 * self.uniform() - 1.0;
                let v = 2.0 * self.uniform() - 1.0;
                let s = u * u + v * v;
                if s > 0.0 && s < 1.0 {
                    let f = (-2.0 * ln(s) / s).sqrt();
                    self.spare = Some(v * f);
                    return u * f;
                }
            }
        }

        /// Log-normal with mean 1 and coefficient of variation `cv` (exactly 1 when `cv == 0`,
        /// still consuming one normal deviate).
        pub(super) fn lognormal_mean1(&mut self, cv: f64) -> f64 {
            let z = self.normal();
            if cv == 0.0 {
                return 1.0;
            }
            let var = ln(1.0 + cv * cv);
            exp(-0.5 * var + var.sqrt() * z)
        }

        /// Poisson deviate of mean `lam >= 0`: Knuth's multiplication method below
        /// [`KNUTH_BELOW`], Hörmann's transformed rejection with squeeze (PTRS, 1993) above.
        pub(super) fn poisson(&mut self, lam: f64) -> u64 {
            if lam.is_nan() || lam <= 0.0 {
                return 0;
            }
            if lam < KNUTH_BELOW {
                let limit = exp(-lam);
                let mut k = 0;
                let mut prod = self.uniform();
                while prod > limit {
                    k += 1;
                    prod *= self.uniform();
                }
                return k;
            }
            let b = 0.931 + 2.53 * lam.sqrt();
            let a = -0.059 + 0.02483 * b;
            let vr = 0.9277 - 3.6224 / (b - 2.0);
            // Needed only when the quick acceptance fails (rarely): computed on first use.
            let mut slow: Option<(f64, f64)> = None;
            loop {
                let u = self.uniform() - 0.5;
                let v = self.uniform();
                let us = 0.5 - u.abs();
                let k = ((2.0 * a / us + b) * u + lam + 0.43).floor();
                if us >= 0.07 && v <= vr {
                    return k as u64;
                }
                if k < 0.0 || (us < 0.013 && v > us) {
                    continue;
                }
                let (log_alpha_inv, loglam) = *slow.get_or_insert_with(|| (ln(1.1239 + 1.1328 / (b - 3.4)), ln(lam)));
                if ln(v) + log_alpha_inv - ln(a / (us * us) + b) <= -lam + k * loglam - log_factorial(k) {
                    return k as u64;
                }
            }
        }
    }

    /// `ln k!` for a whole number `k >= 0`, from a table of [`log_gamma`] values below 1024.
    fn log_factorial(k: f64) -> f64 {
        static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
        let table = TABLE.get_or_init(|| (0..1024).map(|k| log_gamma(k as f64 + 1.0)).collect());
        if k < 1024.0 { table[k as usize] } else { log_gamma(k + 1.0) }
    }

    /// `ln Γ(x)` for `x >= 1` (Stirling series after shifting `x` to at least 7, as numpy's
    /// `random_loggam`).
    pub(super) fn log_gamma(x: f64) -> f64 {
        const A: [f64; 10] = [
            8.333_333_333_333_333e-2,
            -2.777_777_777_777_778e-3,
            7.936_507_936_507_937e-4,
            -5.952_380_952_380_952e-4,
            8.417_508_417_508_418e-4,
            -1.917_526_917_526_918e-3,
            6.410_256_410_256_41e-3,
            -2.955_065_359_477_124e-2,
            1.796_443_723_688_307e-1,
            -1.392_432_216_905_9,
        ];
        if x == 1.0 || x == 2.0 {
            return 0.0;
        }
        let n = if x < 7.0 { (7.0 - x) as i64 } else { 0 };
        let mut x0 = x + n as f64;
        let x2 = (1.0 / x0) * (1.0 / x0);
        let mut gl0 = A[9];
        for &c in A[..9].iter().rev() {
            gl0 = gl0 * x2 + c;
        }
        let mut gl = gl0 / x0 + 0.5 * ln(std::f64::consts::TAU) + (x0 - 0.5) * ln(x0) - x0;
        for _ in 0..n {
            gl -= ln(x0 - 1.0);
            x0 -= 1.0;
        }
        gl
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn splitmix_and_xoshiro_reference_vectors() {
            let mut sm = SplitMix64::new(0);
            assert_eq!(sm.next_u64(), 0xe220_a839_7b1d_cdaf);
            assert_eq!(sm.next_u64(), 0x6e78_9e6a_a1b9_65f4);
            let mut r = Rng::from_state([1, 2, 3, 4]);
            let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
            assert_eq!(got, [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240, 1_216_172_134_540_287_360]);
        }

        #[test]
        fn streams_differ() {
            let a = Rng::stream(1, 2, 3).next_u64();
            assert_ne!(a, Rng::stream(1, 2, 4).next_u64());
            assert_ne!(a, Rng::stream(1, 3, 3).next_u64());
            assert_ne!(a, Rng::stream(2, 2, 3).next_u64());
            assert_eq!(a, Rng::stream(1, 2, 3).next_u64());
        }

        fn moments(xs: impl Iterator<Item = f64>) -> (f64, f64, usize) {
            let v: Vec<f64> = xs.collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var, v.len())
        }

        #[test]
        fn uniform_and_normal_moments() {
            let mut r = Rng::from_seed(11);
            let (m, v, _) = moments((0..200_000).map(|_| r.uniform()));
            assert!((m - 0.5).abs() < 0.003 && (v - 1.0 / 12.0).abs() < 0.001, "uniform {m} {v}");
            let (m, v, n) = moments((0..200_000).map(|_| r.normal()));
            let se = (1.0 / n as f64).sqrt();
            assert!(m.abs() < 5.0 * se, "normal mean {m}");
            assert!((v - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "normal var {v}");
            let (m, v, _) = moments((0..200_000).map(|_| r.lognormal_mean1(0.4)));
            assert!((m - 1.0).abs() < 0.005 && (v.sqrt() - 0.4).abs() < 0.01, "lognormal {m} {v}");
        }

        #[test]
        fn poisson_mean_and_variance() {
            let mut r = Rng::from_seed(5);
            for lam in [0.05, 0.5, 3.0, 9.99, 10.0, 15.0, 29.9, 30.0, 47.5, 1000.0, 1e5] {
                let (m, v, n) = moments((0..200_000).map(|_| r.poisson(lam) as f64));
                let n = n as f64;
                assert!((m - lam).abs() < 5.0 * (lam / n).sqrt(), "λ={lam}: mean {m}");
                // var of the sample variance ≈ (λ + 2λ²)/n
                assert!((v - lam).abs() < 5.0 * ((lam + 2.0 * lam * lam) / n).sqrt(), "λ={lam}: var {v}");
            }
            assert_eq!(r.poisson(0.0), 0);
        }

        #[test]
        fn poisson_matches_pmf_on_both_sides_of_the_switch() {
            let n = 400_000;
            let mut r = Rng::from_seed(9);
            for lam in [20.0, 60.0] {
                assert!((lam < KNUTH_BELOW) != (lam == 60.0));
                let mut hist = [0usize; 160];
                for _ in 0..n {
                    hist[(r.poisson(lam) as usize).min(159)] += 1;
                }
                for (k, &count) in hist.iter().enumerate().take(150) {
                    let pmf = exp(-lam + k as f64 * ln(lam) - log_gamma(k as f64 + 1.0));
                    let expect = pmf * n as f64;
                    assert!(
                        (count as f64 - expect).abs() < 5.0 * expect.sqrt() + 2.0,
                        "λ={lam}, k={k}: {count} drawn, {expect:.1} expected"
                    );
                }
            }
        }

        #[test]
        fn log_gamma_values() {
            let mut lf = 0.0f64;
            for k in 1..60 {
                lf += (k as f64).ln();
                assert!((log_gamma(k as f64 + 1.0) - lf).abs() < 1e-12 * lf.max(1.0), "ln {k}!");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthParams {
        SynthParams { dims: [40, 36], frames: 12, n_neurons: 8, ..SynthParams::default() }
    }

    #[test]
    fn displaced_path_equals_static_path_without_motion() {
        let truth = ground_truth(&small().without_motion()).unwrap();
        let mut a = FrameRenderer::new(&truth);
        let mut b = FrameRenderer::new(&truth);
        b.force_displaced = true;
        for t in 0..truth.frames() {
            a.expected_photons(t);
            b.expected_photons(t);
            assert_eq!(a.photons, b.photons, "frame {t}");
        }
    }

    #[test]
    fn renderer_agrees_with_point_evaluation() {
        let truth = ground_truth(&small()).unwrap();
        let mut r = FrameRenderer::new(&truth);
        let [d1, d2] = truth.params.dims;
        for t in [0, 5, 11] {
            r.expected_photons(t);
            for i in (0..d1).step_by(3) {
                for j in (0..d2).step_by(5) {
                    assert_eq!(r.photons[i * d2 + j], truth.frame_photons(t, i as f64, j as f64), "t {t} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn kernel_peak_of_ar2() {
        assert_eq!(kernel_peak(0.9, 0.0), 1.0);
        let (d, r) = (0.92f64, 0.5f64);
        let peak = kernel_peak(d + r, -d * r);
        let brute = (0..200).map(|n| (d.powi(n + 1) - r.powi(n + 1)) / (d - r)).fold(0.0, f64::max);
        assert!((peak - brute).abs() < 1e-12);
    }
}
