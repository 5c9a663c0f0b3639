//! One frame of NoRMCorre: CaImAn's `tile_and_correct` (catalog §2.3 step 4 and §2.6), rigid and
//! piecewise-rigid, behind a per-template, per-worker [`FrameCorrector`].
//!
//! [`FrameCorrector::new`] does everything that depends only on the template and the options:
//! FFT plans, the template spectrum (`template + add_to_movie`, whole frame and every patch), the
//! patch grids, blending weights and scratch buffers. [`FrameCorrector::correct`] then registers
//! one frame and writes the corrected frame into a caller buffer without allocating (except with
//! `shifts_interpolate`, whose cubic splines use small temporary buffers).
//!
//! Per frame, as CaImAn:
//! 1. the frame (high-pass filtered if `gsig_filt`) plus `add_to_movie` is registered against the
//!    template within `max_shifts` → rigid content displacement `s`;
//! 2. rigid (`max_deviation_rigid == 0`): apply `−s` by OpenCV-exact cubic translation
//!    (`shifts_opencv`) or by a Fourier shift of the already computed frame spectrum;
//! 3. piecewise rigid: register every patch within the *inclusive* bounds
//!    `ceil(s − d) … floor(s + d)` (`d = max_deviation_rigid`); then either (OpenCV path) build a
//!    dense field by `cv2.resize` (or cubic `interpn` with `shifts_interpolate`) of the patch shifts
//!    and remap the frame with OpenCV-exact cubic interpolation, or (FFT path) upsample the shift
//!    and phase grids to a finer patch grid (`round(strides / upsample_factor_grid)`), Fourier-shift
//!    every fine patch and blend them with CaImAn's weights (or paste them without blending when
//!    `max_shear ≥ 0.5`);
//! 4. subtract `add_to_movie` again.
//!
//! Reported shifts are the shifts **applied** (`−s`), CaImAn's stored convention.
//!
//! Arithmetic: [`CorrectionOptions::precision`] selects CaImAn's `f64` kernels
//! ([`Precision::F64`], bit-for-bit decisions) or the fast `f32` kernels ([`Precision::F32`]:
//! `f32` registration, separable `f32` cubic translation, `f32` remap). The Fourier-shift paths
//! (`shifts_opencv = false`) always run in `f64`.
//!
//! CaImAn quirk kept on purpose: with `gsig_filt`, CaImAn warps the *unfiltered* frame without
//! `add_to_movie` but still subtracts `add_to_movie` at the end, so the output is offset by
//! `−add_to_movie` relative to the unfiltered case. This is reproduced so that saved movies match.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};
use crate::fft::{Real, Sample, Spectrum};
use crate::filter::HighPassFilter;
use crate::params::{MotionParams, Precision};
use crate::patches::{
    LinearResizer, PatchGrid, blend_weights, dense_field, interpolate_shifts, max_shear, resize_cubic,
    upsampled_strides,
};
use crate::register::{Registrar, Registration, SearchWindow};
use crate::shift::{BorderMode, CubicWarper, DftShifter, fix_border_after_dft};

/// The maths options of one `tile_and_correct` call (what `MotionCorrect` passes per frame).
#[derive(Clone, Debug, PartialEq)]
pub struct CorrectionOptions {
    /// Maximum rigid shift per axis (symmetric window `−m … m`).
    pub max_shifts: [usize; 2],
    /// 0 for rigid correction; otherwise patches may deviate this much from the rigid shift.
    pub max_deviation_rigid: usize,
    /// Patch strides (piecewise rigid only).
    pub strides: [usize; 2],
    /// Patch overlaps (piecewise rigid only).
    pub overlaps: [usize; 2],
    /// FFT path: strides of the fine grid (default `round(strides / upsample_factor_grid)`).
    pub newstrides: Option<[usize; 2]>,
    /// FFT path: overlaps of the fine grid (default `overlaps`).
    pub newoverlaps: Option<[usize; 2]>,
    /// Sub-pixel resolution `1/upsample_factor_fft` (CaImAn: 10).
    pub upsample_factor_fft: usize,
    /// FFT path: grid refinement factor.
    pub upsample_factor_grid: usize,
    /// Apply shifts by cubic interpolation (true) or Fourier shifts (false).
    pub shifts_opencv: bool,
    /// OpenCV path: interpolate patch shifts from patch centres (cubic) instead of `cv2.resize`;
    /// FFT path: the same for the fine grid.
    pub shifts_interpolate: bool,
    /// Border handling.
    pub border: BorderMode,
    /// High-pass filter the frame before registration (1p data).
    pub gsig_filt: Option<[u32; 2]>,
    /// Constant added to frame and template before registration and shifting, subtracted after
    /// (CaImAn: `−min_mov`).
    pub add_to_movie: f64,
    /// Kernel arithmetic (see [`Precision`]; Fourier shifting always uses `f64`).
    pub precision: Precision,
}

impl CorrectionOptions {
    /// Options of CaImAn's rigid pass (`max_deviation_rigid = 0`, `upsample_factor_fft = 10`).
    ///
    /// # Errors
    /// If the parameters are invalid or 3-D.
    pub fn rigid(params: &MotionParams, add_to_movie: f64) -> Result<Self> {
        let mut o = Self::piecewise(params, add_to_movie)?;
        o.max_deviation_rigid = 0;
        Ok(o)
    }

    /// Options of CaImAn's piecewise-rigid pass.
    ///
    /// # Errors
    /// If the parameters are invalid or 3-D.
    pub fn piecewise(params: &MotionParams, add_to_movie: f64) -> Result<Self> {
        params.validate()?;
        if params.is_3d {
            return Err(Error::Unsupported("FrameCorrector is 2-D; use VolumeRegistrar".into()));
        }
        let two = |v: Vec<usize>| [v[0], v[1]];
        Ok(Self {
            max_shifts: two(params.max_shifts_per_axis()?),
            max_deviation_rigid: params.max_deviation_rigid,
            strides: two(params.strides_per_axis()?),
            overlaps: two(params.overlaps_per_axis()?),
            newstrides: None,
            newoverlaps: None,
            upsample_factor_fft: 10,
            upsample_factor_grid: params.upsample_factor_grid,
            shifts_opencv: params.shifts_opencv,
            shifts_interpolate: params.shifts_interpolate,
            border: params.border_nan.into(),
            gsig_filt: params.gsig_filt.as_ref().map(|g| [g[0], *g.get(1).unwrap_or(&g[0])]),
            add_to_movie,
            precision: params.precision,
        })
    }

    /// The arithmetic actually used: [`Self::precision`], except `f64` for Fourier shifting.
    pub fn effective_precision(&self) -> Precision {
        if self.shifts_opencv { self.precision } else { Precision::F64 }
    }

    fn check(&self) -> Result<()> {
        if self.upsample_factor_fft == 0 || self.upsample_factor_grid == 0 {
            return Err(Error::Unsupported("upsample factors must be at least 1".into()));
        }
        if !self.add_to_movie.is_finite() {
            return Err(Error::NonFinite { what: "add_to_movie" });
        }
        if self.gsig_filt.is_some() && !self.shifts_opencv {
            return Err(Error::Unsupported("high-pass filtering with Fourier shifting (CaImAn raises too)".into()));
        }
        if self.gsig_filt.is_some_and(|g| g[0] == 0) {
            return Err(Error::Unsupported("gSig_filt must be positive".into()));
        }
        Ok(())
    }
}

/// Shifts found for one frame, borrowed from the corrector (copy them out before the next frame).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameShifts<'a> {
    /// Rigid shift applied (rigid mode) or estimated (piecewise mode): `−s`, `[rows, cols]`.
    pub rigid: [f64; 2],
    /// Phase difference of the rigid registration.
    pub rigid_phasediff: f64,
    /// Piecewise mode: the shift applied to every patch of [`FrameCorrector::shift_grid`], row-major
    /// (CaImAn's `x_shifts_els[t]`, `y_shifts_els[t]` pairs). Empty in rigid mode.
    pub patches: &'a [[f64; 2]],
}

/// A registrar with its template spectra (one per patch, or one for the whole frame) in the
/// chosen arithmetic.
#[derive(Debug)]
enum Reg {
    F64(Registrar<f64>, Vec<Spectrum<f64>>),
    F32(Registrar<f32>, Vec<Spectrum<f32>>),
}

fn build_reg<'a, T: Real>(
    shape: [usize; 2],
    upsample: usize,
    images: impl Iterator<Item = ArrayView2<'a, f32>>,
    add: f64,
) -> (Registrar<T>, Vec<Spectrum<T>>) {
    let mut reg = Registrar::<T>::new(shape, upsample);
    let specs = images.map(|img| reg.spectrum(img, add)).collect();
    (reg, specs)
}

impl Reg {
    fn new<'a>(
        precision: Precision,
        shape: [usize; 2],
        upsample: usize,
        images: impl Iterator<Item = ArrayView2<'a, f32>>,
        add: f64,
    ) -> Self {
        match precision {
            Precision::F64 => {
                let (r, s) = build_reg(shape, upsample, images, add);
                Self::F64(r, s)
            }
            Precision::F32 => {
                let (r, s) = build_reg(shape, upsample, images, add);
                Self::F32(r, s)
            }
        }
    }

    /// Registers `img + add` against template spectrum `k`.
    fn register<S: Sample>(
        &mut self,
        k: usize,
        img: ArrayView2<'_, S>,
        add: f64,
        window: &SearchWindow,
    ) -> Result<Registration> {
        match self {
            Self::F64(r, s) => r.register(img, add, &s[k], window),
            Self::F32(r, s) => r.register(img, add, &s[k], window),
        }
    }

    /// The spectrum of the last registered frame (`f64` registrars only).
    fn frame_spectrum(&self) -> Option<&Spectrum<f64>> {
        match self {
            Self::F64(r, _) => Some(r.frame_spectrum()),
            Self::F32(..) => None,
        }
    }
}

/// Scratch of the FFT (Fourier-shift) piecewise path.
#[derive(Debug)]
struct FftPath {
    grid: PatchGrid,
    centers: [Vec<f64>; 2],
    shifter: DftShifter,
    coarse: [Array2<f64>; 3],
    fine: [Array2<f64>; 3],
    weights: Vec<Option<Array2<f64>>>,
    patch_out: Array2<f64>,
    acc: Array2<f64>,
    norm: Array2<f64>,
}

fn weight_slot(first: [bool; 2], last: [bool; 2]) -> usize {
    (first[0] as usize) | (last[0] as usize) << 1 | (first[1] as usize) << 2 | (last[1] as usize) << 3
}

#[derive(Debug)]
struct Piecewise {
    grid: PatchGrid,
    centers: [Vec<f64>; 2],
    reg: Reg,
    resizer: LinearResizer,
    grid_buf: Array2<f32>,
    found: Vec<Registration>,
    applied: Vec<[f64; 2]>,
    field_y: Array2<f32>,
    field_x: Array2<f32>,
    fft: Option<FftPath>,
}

/// Per-template, per-worker state of `tile_and_correct` (see the module docs).
#[derive(Debug)]
pub struct FrameCorrector {
    opts: CorrectionOptions,
    dims: [usize; 2],
    precision: Precision,
    reg: Reg,
    hpf: Option<(HighPassFilter, Array2<f32>)>,
    warper: CubicWarper,
    dft: Option<(DftShifter, Array2<f64>)>,
    pw: Option<Piecewise>,
    rigid: Registration,
}

impl FrameCorrector {
    /// Prepares the correction of frames against `template` (`d1 × d2`, finite).
    ///
    /// # Errors
    /// [`Error::Empty`] / [`Error::NonFinite`] for an empty or non-finite template,
    /// [`Error::PatchLargerThanImage`] if a patch does not fit, [`Error::Unsupported`] for option
    /// combinations CaImAn refuses (filtering + Fourier shifts) or a `shifts_interpolate` grid
    /// with fewer than 4 patches per axis.
    pub fn new(template: ArrayView2<'_, f32>, opts: &CorrectionOptions) -> Result<Self> {
        opts.check()?;
        let (h, w) = template.dim();
        if h == 0 || w == 0 {
            return Err(Error::Empty { what: "template" });
        }
        if template.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "template" });
        }
        let dims = [h, w];
        let add = opts.add_to_movie;
        let precision = opts.effective_precision();
        let reg = Reg::new(precision, dims, opts.upsample_factor_fft, std::iter::once(template), add);
        let hpf = opts.gsig_filt.map(|g| (HighPassFilter::new(g), Array2::zeros((h, w))));
        let dft = (!opts.shifts_opencv && opts.max_deviation_rigid == 0)
            .then(|| (DftShifter::new(dims), Array2::zeros((h, w))));
        let pw = if opts.max_deviation_rigid > 0 { Some(Self::build_piecewise(template, opts)?) } else { None };
        tracing::debug!(
            d1 = h,
            d2 = w,
            piecewise = opts.max_deviation_rigid > 0,
            shifts_opencv = opts.shifts_opencv,
            registration_patches = pw.as_ref().map_or(0, |p| p.grid.len()),
            shift_patches = pw.as_ref().map_or(0, |p| p.fft.as_ref().map_or(p.grid.len(), |f| f.grid.len())),
            "FrameCorrector ready"
        );
        Ok(Self {
            opts: opts.clone(),
            dims,
            precision,
            reg,
            hpf,
            warper: CubicWarper::new(),
            dft,
            pw,
            rigid: Registration { shift: [0.0; 2], phasediff: 0.0 },
        })
    }

    fn build_piecewise(template: ArrayView2<'_, f32>, opts: &CorrectionOptions) -> Result<Piecewise> {
        let dims = [template.nrows(), template.ncols()];
        let grid = PatchGrid::new(dims, opts.strides, opts.overlaps)?;
        let reg = Reg::new(
            opts.effective_precision(),
            grid.window(),
            opts.upsample_factor_fft,
            grid.iter().map(|(_, start)| grid.patch(&template, start)),
            opts.add_to_movie,
        );
        let [gh, gw] = grid.grid_shape();
        if opts.shifts_interpolate && (gh < 4 || gw < 4) {
            return Err(Error::Unsupported(format!(
                "shifts_interpolate needs at least 4 patches per axis (cubic interpn), grid is {gh}x{gw}"
            )));
        }
        let fft = if opts.shifts_opencv {
            None
        } else {
            let ns = opts.newstrides.unwrap_or_else(|| upsampled_strides(opts.strides, opts.upsample_factor_grid));
            let no = opts.newoverlaps.unwrap_or(opts.overlaps);
            let fine = PatchGrid::new(dims, ns, no)?;
            let [fh, fw] = fine.grid_shape();
            let window = fine.window();
            let mut weights: Vec<Option<Array2<f64>>> = vec![None; 16];
            for ([i, j], _) in fine.iter() {
                let first = [i == 0, j == 0];
                let last = [i == fh - 1, j == fw - 1];
                let slot = &mut weights[weight_slot(first, last)];
                if slot.is_none() {
                    *slot = Some(blend_weights(window, no, first, last));
                }
            }
            let coarse = std::array::from_fn(|_| Array2::zeros((gh, gw)));
            let finez = std::array::from_fn(|_| Array2::zeros((fh, fw)));
            Some(FftPath {
                centers: [fine.centers(0), fine.centers(1)],
                shifter: DftShifter::new(window),
                patch_out: Array2::zeros((window[0], window[1])),
                grid: fine,
                coarse,
                fine: finez,
                weights,
                acc: Array2::zeros((dims[0], dims[1])),
                norm: Array2::zeros((dims[0], dims[1])),
            })
        };
        let n = grid.len();
        Ok(Piecewise {
            centers: [grid.centers(0), grid.centers(1)],
            resizer: LinearResizer::new([gh, gw], dims),
            grid_buf: Array2::zeros((gh, gw)),
            reg,
            found: vec![Registration { shift: [0.0; 2], phasediff: 0.0 }; n],
            applied: Vec::with_capacity(n),
            field_y: Array2::zeros((dims[0], dims[1])),
            field_x: Array2::zeros((dims[0], dims[1])),
            grid,
            fft,
        })
    }

    /// The options this corrector was built with.
    pub fn options(&self) -> &CorrectionOptions {
        &self.opts
    }

    /// Frame size `[d1, d2]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Piecewise mode: the grid on which patch shifts are *estimated* (`strides + overlaps`).
    pub fn registration_grid(&self) -> Option<&PatchGrid> {
        self.pw.as_ref().map(|p| &p.grid)
    }

    /// Piecewise mode: the grid [`FrameShifts::patches`] refers to (the registration grid on the
    /// OpenCV path, the finer upsampled grid on the FFT path; CaImAn's `coord_shifts_els`).
    pub fn shift_grid(&self) -> Option<&PatchGrid> {
        self.pw.as_ref().map(|p| p.fft.as_ref().map_or(&p.grid, |f| &f.grid))
    }

    /// Registers `frame` and writes the corrected frame into `out`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a frame or buffer of the wrong shape, [`Error::NonFinite`]
    /// for a frame with NaN/inf.
    pub fn correct(&mut self, frame: ArrayView2<'_, f32>, out: ArrayViewMut2<'_, f32>) -> Result<FrameShifts<'_>> {
        if out.dim() != frame.dim() {
            return Err(Error::ShapeMismatch {
                what: "output buffer vs frame",
                expected: vec![frame.nrows(), frame.ncols()],
                got: vec![out.nrows(), out.ncols()],
            });
        }
        self.estimate_impl(frame)?;
        self.apply_impl(frame, out)?;
        Ok(self.shifts())
    }

    /// Registers `frame` without producing the corrected frame (shifts only).
    ///
    /// # Errors
    /// As [`Self::correct`].
    pub fn estimate(&mut self, frame: ArrayView2<'_, f32>) -> Result<FrameShifts<'_>> {
        self.estimate_impl(frame)?;
        Ok(self.shifts())
    }

    /// The shifts of the last frame passed to [`Self::correct`] or [`Self::estimate`] (all zero
    /// before the first frame).
    pub fn last_shifts(&self) -> FrameShifts<'_> {
        self.shifts()
    }

    fn shifts(&self) -> FrameShifts<'_> {
        FrameShifts {
            rigid: self.rigid.shift.map(|v| -v),
            rigid_phasediff: self.rigid.phasediff,
            patches: self.pw.as_ref().map_or(&[], |p| &p.applied[..]),
        }
    }

    fn estimate_impl(&mut self, frame: ArrayView2<'_, f32>) -> Result<()> {
        if frame.dim() != (self.dims[0], self.dims[1]) {
            return Err(Error::ShapeMismatch {
                what: "frame vs template",
                expected: self.dims.to_vec(),
                got: vec![frame.nrows(), frame.ncols()],
            });
        }
        let add = self.opts.add_to_movie;
        let input = match &mut self.hpf {
            Some((f, buf)) => {
                f.apply(frame, buf.view_mut());
                buf.view()
            }
            None => frame,
        };
        let window = SearchWindow::MaxShifts(self.opts.max_shifts);
        self.rigid = self.reg.register(0, input, add, &window)?;
        let Some(pw) = &mut self.pw else { return Ok(()) };
        let dev = self.opts.max_deviation_rigid as f64;
        let s = self.rigid.shift;
        let bounds = SearchWindow::Bounds {
            lower: s.map(|v| (v - dev).ceil() as i64),
            upper: s.map(|v| (v + dev).floor() as i64),
        };
        for (k, (_, start)) in pw.grid.iter().enumerate() {
            let patch = pw.grid.patch(&input, start);
            pw.found[k] = pw.reg.register(k, patch, add, &bounds)?;
        }
        pw.applied.clear();
        match &mut pw.fft {
            None => pw.applied.extend(pw.found.iter().map(|r| r.shift.map(|v| -v))),
            Some(fp) => {
                let [gh, gw] = pw.grid.grid_shape();
                for (k, r) in pw.found.iter().enumerate() {
                    let (i, j) = (k / gw, k % gw);
                    fp.coarse[0][[i, j]] = r.shift[0];
                    fp.coarse[1][[i, j]] = r.shift[1];
                    fp.coarse[2][[i, j]] = r.phasediff;
                }
                debug_assert_eq!(gh * gw, pw.found.len());
                for c in 0..3 {
                    if self.opts.shifts_interpolate {
                        let (c0, c1) = (&pw.centers[0], &pw.centers[1]);
                        let (n0, n1) = (&fp.centers[0], &fp.centers[1]);
                        interpolate_shifts(fp.coarse[c].view(), [c0, c1], [n0, n1], fp.fine[c].view_mut())?;
                    } else {
                        resize_cubic(fp.coarse[c].view(), fp.fine[c].view_mut());
                    }
                }
                pw.applied.extend(fp.fine[0].iter().zip(fp.fine[1].iter()).map(|(&a, &b)| [-a, -b]));
            }
        }
        Ok(())
    }

    fn apply_impl(&mut self, frame: ArrayView2<'_, f32>, out: ArrayViewMut2<'_, f32>) -> Result<()> {
        let add = self.opts.add_to_movie;
        // CaImAn warps the unfiltered frame *without* add_to_movie when filtering (see module docs).
        let add_in = if self.hpf.is_some() { 0.0 } else { add };
        let border = self.opts.border;
        let applied = self.rigid.shift.map(|v| -v);
        let Some(pw) = &mut self.pw else {
            match &mut self.dft {
                None if self.precision == Precision::F32 => {
                    self.warper.translate_fast_offsets(frame, add_in, add, applied, border, out)
                }
                None => self.warper.translate_offsets(frame, add_in, add, applied, border, out),
                Some((shifter, buf)) => {
                    let spec = self.reg.frame_spectrum().expect("Fourier shifting registers in f64");
                    shifter.shift_spectrum(spec, applied, self.rigid.phasediff, buf.view_mut());
                    fix_border_after_dft(buf.view_mut(), applied, border);
                    write_minus(buf.view(), add, out);
                }
            }
            return Ok(());
        };
        match &mut pw.fft {
            None => {
                if self.opts.shifts_interpolate {
                    // Cubic interpolation from the patch centres (allocates small spline buffers).
                    dense_field(&pw.grid, pw.applied.iter().map(|a| a[0]), true, pw.field_y.view_mut())?;
                    dense_field(&pw.grid, pw.applied.iter().map(|a| a[1]), true, pw.field_x.view_mut())?;
                } else {
                    // cv2.resize of the float32 patch grid (CaImAn resizes `s`; `−s` gives exactly
                    // the negated field).
                    for axis in 0..2 {
                        for (g, a) in pw.grid_buf.iter_mut().zip(&pw.applied) {
                            *g = a[axis] as f32;
                        }
                        let field = if axis == 0 { &mut pw.field_y } else { &mut pw.field_x };
                        pw.resizer.apply(pw.grid_buf.view(), field.view_mut());
                    }
                }
                let (fy, fx) = (pw.field_y.view(), pw.field_x.view());
                match self.precision {
                    Precision::F32 => self.warper.remap_fast_offsets(frame, (add_in, add), (fy, fx), border, out),
                    Precision::F64 => self.warper.remap_offsets(frame, (add_in, add), (fy, fx), border, out),
                }
            }
            Some(fp) => {
                let shear = max_shear(fp.fine[0].view(), fp.fine[1].view());
                let [fh, fw] = fp.grid.grid_shape();
                let window = fp.grid.window();
                let newoverlaps = self.opts.newoverlaps.unwrap_or(self.opts.overlaps);
                fp.acc.fill(0.0);
                fp.norm.fill(0.0);
                let blend = shear < 0.5;
                if !blend {
                    fp.acc.fill(f64::NAN);
                }
                for (k, ([i, j], start)) in fp.grid.iter().enumerate() {
                    let patch = fp.grid.patch(&frame, start);
                    let sh = pw.applied[k];
                    let phase = fp.fine[2][[i, j]];
                    fp.shifter.shift_image(patch, add, sh, phase, border, fp.patch_out.view_mut());
                    let region = ndarray::s![start[0]..start[0] + window[0], start[1]..start[1] + window[1]];
                    if blend {
                        let first = [i == 0, j == 0];
                        let last = [i == fh - 1, j == fw - 1];
                        let wts =
                            fp.weights[weight_slot(first, last)].as_ref().expect("weights built for every patch class");
                        let mut acc = fp.acc.slice_mut(region);
                        let mut norm = fp.norm.slice_mut(region);
                        ndarray::Zip::from(&mut acc).and(&mut norm).and(&fp.patch_out).and(wts).for_each(
                            |a, n, &v, &wt| {
                                if !v.is_nan() {
                                    *a += v * wt;
                                    *n += wt;
                                }
                            },
                        );
                    } else {
                        let r0 = if i == 0 { 0 } else { newoverlaps[0] / 2 };
                        let c0 = if j == 0 { 0 } else { newoverlaps[1] / 2 };
                        let src = fp.patch_out.slice(ndarray::s![r0.., c0..]);
                        fp.acc
                            .slice_mut(ndarray::s![
                                start[0] + r0..start[0] + window[0],
                                start[1] + c0..start[1] + window[1]
                            ])
                            .assign(&src);
                    }
                }
                if blend {
                    fp.acc.zip_mut_with(&fp.norm, |a, &n| *a /= n);
                }
                write_minus(fp.acc.view(), add, out);
            }
        }
        Ok(())
    }
}

/// `FrameCorrector` moves into worker threads (one per worker).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<FrameCorrector>();
};

fn write_minus(src: ArrayView2<'_, f64>, add: f64, mut out: ArrayViewMut2<'_, f32>) {
    out.zip_mut_with(&src, |o, &v| *o = (v - add) as f32);
}
