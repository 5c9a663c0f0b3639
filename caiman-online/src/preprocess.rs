//! What happens to a raw frame before [`crate::OnAcid::fit_next`]: C → Fortran pixel order,
//! `ds_factor` down-sampling, normalisation, and online rigid or piecewise-rigid motion correction
//! against the current model (CaImAn's `mc_next`, catalog §8.5); plus the up-sampling of the
//! footprints back to the input size at the end.

use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use caiman_motion::shift::CubicWarper;
use caiman_motion::{BorderMode, CorrectionOptions, FrameCorrector, MotionParams, Registrar, SearchWindow};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};

use crate::error::{Error, Result};
use crate::filters::{area_weights, linear_weights, resize_area, resize_linear};

/// The working frame size for `ds_factor` (`int(n / ds)` per axis, CaImAn's `movie.resize`).
///
/// # Errors
/// [`Error::InvalidParam`] for `ds_factor < 1`, non-finite, or a factor that leaves no pixel.
pub fn working_dims(input: Dims, ds_factor: f64) -> Result<Dims> {
    if !(ds_factor.is_finite() && ds_factor >= 1.0) {
        if ds_factor.is_finite() && ds_factor > 0.0 {
            return Ok(input); // CaImAn: max(ds_factor, 1)
        }
        return Err(Error::InvalidParam(format!("ds_factor must be positive, got {ds_factor}")));
    }
    let d1 = (input.d1 as f64 / ds_factor) as usize;
    let d2 = (input.d2 as f64 / ds_factor) as usize;
    if d1 == 0 || d2 == 0 {
        return Err(Error::InvalidParam(format!("ds_factor {ds_factor} leaves no pixel of {}×{}", input.d1, input.d2)));
    }
    Ok(Dims::planar(d1, d2))
}

/// Converts a C-order frame (as `FrameSource`s deliver) into Fortran pixel order and down-samples
/// it (OpenCV `INTER_AREA`) to the working size.
#[derive(Clone, Debug)]
pub(crate) struct FramePrep {
    input: Dims,
    work: Dims,
    fortran: Vec<f32>,
    w0: Vec<Vec<(usize, f64)>>,
    w1: Vec<Vec<(usize, f64)>>,
}

impl FramePrep {
    pub(crate) fn new(input: Dims, work: Dims) -> Self {
        let resize = input != work;
        FramePrep {
            input,
            work,
            fortran: vec![0.0; if resize { input.pixels() } else { 0 }],
            w0: if resize { area_weights(input.d1, work.d1) } else { Vec::new() },
            w1: if resize { area_weights(input.d2, work.d2) } else { Vec::new() },
        }
    }

    /// `out` (working size, Fortran order) from the C-order `frame` (input size).
    pub(crate) fn prepare(&mut self, frame: &[f32], out: &mut [f32]) {
        let (d1, d2) = (self.input.d1, self.input.d2);
        let dst: &mut [f32] = if self.input == self.work { out } else { &mut self.fortran };
        // C order (d1 rows of d2) → Fortran order (d2 columns of d1): a blocked transpose.
        transpose::transpose(frame, dst, d2, d1);
        if self.input != self.work {
            resize_area(&self.fortran, d1, &self.w0, &self.w1, out);
        }
    }
}

/// Up-samples footprints from the working size back to the input size (OpenCV `INTER_LINEAR`,
/// as CaImAn's final `cv2.resize` of `A` and `b`); exact zeros are dropped from `A`.
pub(crate) fn upsample_footprints(
    a: &CscMatrix,
    b: &Array2<f32>,
    from: Dims,
    to: Dims,
) -> Result<(CscMatrix, Array2<f32>)> {
    let w0 = linear_weights(from.d1, to.d1);
    let w1 = linear_weights(from.d2, to.d2);
    let mut src = vec![0f32; from.pixels()];
    let mut dst = vec![0f32; to.pixels()];
    let (mut indptr, mut indices, mut data) = (vec![0usize], Vec::new(), Vec::new());
    for k in 0..a.ncols() {
        src.fill(0.0);
        let (r, v) = a.col(k);
        r.iter().zip(v).for_each(|(&p, &x)| src[p] = x);
        resize_linear(&src, from.d1, &w0, &w1, &mut dst);
        for (p, &x) in dst.iter().enumerate() {
            if x != 0.0 {
                indices.push(p);
                data.push(x);
            }
        }
        indptr.push(indices.len());
    }
    let a2 = CscMatrix::from_parts(to.pixels(), a.ncols(), indptr, indices, data)?;
    let mut b2 = Array2::<f32>::zeros((to.pixels(), b.ncols()));
    for k in 0..b.ncols() {
        src.iter_mut().zip(b.column(k)).for_each(|(o, &v)| *o = v);
        resize_linear(&src, from.d1, &w0, &w1, &mut dst);
        b2.column_mut(k).iter_mut().zip(&dst).for_each(|(o, &v)| *o = v);
    }
    Ok((a2, b2))
}

/// Online motion correction of single frames against a template that changes every frame.
#[derive(Debug)]
pub(crate) struct OnlineMotion {
    dims: [usize; 2],
    max_shift: usize,
    reg: Registrar<f32>,
    /// Tukey taper along axis 0 and axis 1 (see [`OnlineMotion::correct`]).
    taper0: Vec<f32>,
    taper1: Vec<f32>,
    /// The tapered frame and template.
    fw: Vec<f32>,
    tw: Vec<f32>,
    warper: CubicWarper,
    piecewise: Option<CorrectionOptions>,
}

fn fview(buf: &[f32], [d1, d2]: [usize; 2]) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((d1, d2).f(), buf).expect("buffer of d1·d2 values")
}

fn fview_mut(buf: &mut [f32], [d1, d2]: [usize; 2]) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((d1, d2).f(), buf).expect("buffer of d1·d2 values")
}

impl OnlineMotion {
    /// Rigid correction within `±max_shift` px (`max_shifts_online`), or piecewise rigid with the
    /// `motion` group's patches when `pw_rigid` (CaImAn's `mc_next` settings: cubic shifts,
    /// `border_nan='copy'`, `upsample_factor_grid=4`, 0.1 px).
    pub(crate) fn new(dims: Dims, max_shift: usize, motion: &MotionParams) -> Result<Self> {
        let shape = [dims.d1, dims.d2];
        if dims.d1 <= 2 * max_shift || dims.d2 <= 2 * max_shift {
            return Err(Error::InvalidParam(format!(
                "max_shifts_online {max_shift} too large for a {}×{} frame",
                dims.d1, dims.d2
            )));
        }
        let piecewise = if motion.pw_rigid {
            let mut o = CorrectionOptions::piecewise(motion, 0.0)?;
            o.shifts_opencv = true;
            o.border = BorderMode::Copy;
            o.upsample_factor_grid = 4;
            o.upsample_factor_fft = 10;
            o.gsig_filt = None;
            Some(o)
        } else {
            None
        };
        Ok(OnlineMotion {
            dims: shape,
            max_shift,
            reg: Registrar::new([dims.d2, dims.d1], 10),
            taper0: tukey(dims.d1, max_shift + 2),
            taper1: tukey(dims.d2, max_shift + 2),
            fw: vec![0.0; dims.pixels()],
            tw: vec![0.0; dims.pixels()],
            warper: CubicWarper::new(),
            piecewise,
        })
    }

    /// Registers `frame` (Fortran order) on `template` and writes the corrected frame into `out`;
    /// returns the rigid shift applied (`[rows, cols]`). A template without structure (all
    /// equal, e.g. before any component) leaves the frame as it is.
    pub(crate) fn correct(&mut self, frame: &[f32], template: &[f32], out: &mut [f32]) -> Result<[f64; 2]> {
        let first = template.first().copied().unwrap_or(0.0);
        if template.iter().all(|&v| v == first) {
            out.copy_from_slice(frame);
            return Ok([0.0, 0.0]);
        }
        if let Some(opts) = &self.piecewise {
            let (fv, tv) = (fview(frame, self.dims), fview(template, self.dims));
            let mut fc = FrameCorrector::new(tv, opts)?;
            let sh = fc.correct(fv, fview_mut(out, self.dims))?;
            return Ok(sh.rigid);
        }
        // The f32 fast path of caiman-motion (means removed in f64 before single-precision
        // transforms; the same decisions as f64 up to near ties), on the transposed image: the
        // Fortran-order buffer read as a C-order `d2 × d1` array is contiguous by rows, which
        // the row transforms and the separable warp want; axes are swapped back after.
        //
        // Both images are registered after removing their means and tapering the borders to zero
        // (a Tukey window over `max_shift + 2` px): the circular cross-correlation of untapered
        // frames is pulled towards zero shift by the wrap-around edges, which single frames of
        // a scene with a strong smooth background (the model template includes `b·f`) show as
        // shifts shrunk by up to half on one axis. CaImAn's `matchTemplate` has no wrap-around.
        let [d1, d2] = self.dims;
        taper(frame, &self.taper0, &self.taper1, &mut self.fw);
        taper(template, &self.taper0, &self.taper1, &mut self.tw);
        let tt = ArrayView2::from_shape((d2, d1), &self.tw[..]).expect("buffer of d1·d2 values");
        let spec = self.reg.spectrum(tt, 0.0);
        let ft = ArrayView2::from_shape((d2, d1), &self.fw[..]).expect("buffer of d1·d2 values");
        let m = self.max_shift;
        let r = self.reg.register(ft, 0.0, &spec, &SearchWindow::MaxShifts([m, m]))?;
        let shift_t = [-r.shift[0], -r.shift[1]];
        let ft = ArrayView2::from_shape((d2, d1), frame).expect("buffer of d1·d2 values");
        let ot = ArrayViewMut2::from_shape((d2, d1), out).expect("buffer of d1·d2 values");
        self.warper.translate_fast(ft, 0.0, shift_t, BorderMode::None, ot);
        Ok([shift_t[1], shift_t[0]])
    }
}

/// A Tukey window of `n` samples: 1 inside, a raised cosine over `edge` samples at each end
/// (`edge` at most `n / 4`).
fn tukey(n: usize, edge: usize) -> Vec<f32> {
    let e = edge.min(n / 4).max(1) as f64;
    (0..n)
        .map(|x| {
            let d = x.min(n - 1 - x) as f64;
            if d >= e { 1.0 } else { (0.5 - 0.5 * (std::f64::consts::PI * (d + 0.5) / e).cos()) as f32 }
        })
        .collect()
}

/// `out = (img − mean(img))·w0[i]·w1[j]` (Fortran order; the mean in f64).
fn taper(img: &[f32], w0: &[f32], w1: &[f32], out: &mut [f32]) {
    let d1 = w0.len();
    let mut acc = [0f64; 8];
    let chunks = img.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += f64::from(c[k]);
        }
    }
    let mean = ((acc.iter().sum::<f64>() + tail) / img.len().max(1) as f64) as f32;
    for ((col, o), &b) in img.chunks_exact(d1).zip(out.chunks_exact_mut(d1)).zip(w1) {
        for ((o, &v), &a) in o.iter_mut().zip(col).zip(w0) {
            *o = (v - mean) * (a * b);
        }
    }
}

/// Motion correction of the initial batch (`T` frames in Fortran order, `yr` = pixels × frames):
/// CaImAn's `movie.motion_correct(max_shifts_online, max_shifts_online)` — a template from the
/// batch (`initial_template`), then every frame registered on it and shifted (cubic). Returns the
/// shifts.
pub(crate) fn correct_batch(yr: &mut Array2<f32>, dims: Dims, max_shift: usize) -> Result<Vec<[f64; 2]>> {
    let (d1, d2) = (dims.d1, dims.d2);
    let t = yr.ncols();
    let mut mov = ndarray::Array3::<f32>::zeros((t, d1, d2));
    for k in 0..t {
        let col = yr.column(k);
        for j in 0..d2 {
            for i in 0..d1 {
                mov[[k, i, j]] = col[i + d1 * j];
            }
        }
    }
    let template = caiman_motion::legacy::initial_template(mov.view(), [max_shift, max_shift])?;
    let tf: Vec<f32> = {
        let mut v = vec![0f32; d1 * d2];
        for j in 0..d2 {
            for i in 0..d1 {
                v[i + d1 * j] = template[[i, j]];
            }
        }
        v
    };
    let mut mc = OnlineMotion::new(dims, max_shift, &MotionParams::default())?;
    let mut frame = vec![0f32; d1 * d2];
    let mut out = vec![0f32; d1 * d2];
    let mut shifts = Vec::with_capacity(t);
    for k in 0..t {
        frame.iter_mut().zip(yr.column(k)).for_each(|(o, &v)| *o = v);
        shifts.push(mc.correct(&frame, &tf, &mut out)?);
        yr.column_mut(k).iter_mut().zip(&out).for_each(|(o, &v)| *o = v);
    }
    Ok(shifts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blobs on a 40 × 48 frame (Fortran order), centred at `(r0 + dr, c0 + dc)`.
    fn scene(dr: f64, dc: f64) -> Vec<f32> {
        let (d1, d2) = (40, 48);
        let centres = [(10.0, 12.0), (25.0, 30.0), (30.0, 10.0), (15.0, 38.0), (20.0, 22.0)];
        let mut v = vec![0f32; d1 * d2];
        for j in 0..d2 {
            for i in 0..d1 {
                let mut s = 10.0;
                for (k, &(r, c)) in centres.iter().enumerate() {
                    let (y, x) = (i as f64 - r - dr, j as f64 - c - dc);
                    s += (5.0 + k as f64) * (-(y * y + x * x) / 8.0).exp();
                }
                v[i + d1 * j] = s as f32;
            }
        }
        v
    }

    #[test]
    fn online_registration_finds_known_shifts_on_both_axes() {
        let dims = Dims::planar(40, 48);
        let mut mc = OnlineMotion::new(dims, 6, &MotionParams::default()).unwrap();
        let template = scene(0.0, 0.0);
        let mut out = vec![0f32; dims.pixels()];
        for (dr, dc) in [(2.0, 0.0), (0.0, -3.0), (1.5, 2.5), (-2.7, 0.4)] {
            let frame = scene(dr, dc);
            let s = mc.correct(&frame, &template, &mut out).unwrap();
            assert!(
                (s[0] + dr).abs() <= 0.1 + 1e-9 && (s[1] + dc).abs() <= 0.1 + 1e-9,
                "moved by ({dr}, {dc}), applied {s:?}"
            );
            // The corrected frame is close to the template away from the borders.
            let err: f64 = (8..32)
                .flat_map(|i| (8..40).map(move |j| (i, j)))
                .map(|(i, j)| (f64::from(out[i + 40 * j]) - f64::from(template[i + 40 * j])).abs())
                .fold(0.0, f64::max);
            // Integer shifts are exact; fractional ones carry the cubic interpolation error.
            let tol = if dr.fract() == 0.0 && dc.fract() == 0.0 { 1e-4 } else { 0.6 };
            assert!(err < tol, "corrected frame differs by {err}");
        }
    }
}
