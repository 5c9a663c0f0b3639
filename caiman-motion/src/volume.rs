//! Piecewise-rigid registration of volumes: CaImAn's `tile_and_correct_3d` (catalog §2.8) behind
//! a per-template, per-worker [`VolumeCorrector`].
//!
//! Per volume: rigid registration within `max_shifts` (symmetric window, as in 2-D); with
//! `max_deviation_rigid == 0` the rigid shift is applied by a Fourier shift (CaImAn's 3-D rigid
//! path). Otherwise every patch of the 3-D grid (`strides + overlaps` per axis, CaImAn's
//! `get_patch_edges` on each axis, the last patch flush with the end) is registered with the
//! integer search bounded to `ceil(s − d) … floor(s + d)` around the rigid shift `s`
//! (`d = max_deviation_rigid`), the patch shifts are interpolated to a dense per-voxel field
//! and the volume is resampled at `p − shift(p)`.
//!
//! What it is not — deliberate, documented differences from CaImAn's 3-D piecewise path (which
//! resizes the shift grids with scikit-image and warps with `skimage.transform.warp`, order 3):
//! * the field is **trilinear** between patch centres (constant beyond the outermost centres),
//!   not a resize of the patch grid to the volume size;
//! * resampling is **tricubic Keys** (a = −0.75, OpenCV's kernel, as the 2-D remap) instead of
//!   scikit-image's cubic B-spline; the border modes act on the sample position: `Copy` clamps
//!   it into the volume, `Nan`/`Min`/`None` give NaN / the volume minimum / 0 where it falls
//!   outside;
//! * computed in `f64` (volumes are small), one [`VolumeRegistrar`] per patch.
//!
//! Reported shifts are the shifts **applied** (`−s`), axis 0, 1, 2.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, s};

use crate::error::{Error, Result};
use crate::fft::Fft3d;
use crate::register::VolumeRegistrar;
use crate::shift::{BorderMode, apply_shifts_dft_3d};

/// The options of one `tile_and_correct_3d` call.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeOptions {
    /// Maximum rigid shift per axis (symmetric window `−m … m`).
    pub max_shifts: [usize; 3],
    /// 0 for rigid correction; otherwise patches may deviate this much from the rigid shift.
    pub max_deviation_rigid: usize,
    /// Patch strides per axis.
    pub strides: [usize; 3],
    /// Patch overlaps per axis.
    pub overlaps: [usize; 3],
    /// Sub-voxel resolution `1/upsample_factor_fft` (CaImAn: 10).
    pub upsample_factor_fft: usize,
    /// Border handling.
    pub border: BorderMode,
    /// Constant added before registration and shifting, subtracted after (CaImAn: `−min_mov`).
    pub add_to_movie: f64,
}

/// Patch starts along one axis: `0, s, 2s, … < n − w` plus `n − w` (CaImAn's `get_patch_edges`).
fn starts(n: usize, stride: usize, window: usize) -> Vec<usize> {
    let last = n - window;
    let mut v: Vec<usize> = (0..last).step_by(stride).collect();
    v.push(last);
    v
}

/// Linear-interpolation taps `(i0, i1, t)` of every coordinate `0..n` between `centers`
/// (clamped beyond the first and last centre).
fn lerp_taps(n: usize, centers: &[f64]) -> Vec<(usize, usize, f64)> {
    (0..n)
        .map(|x| {
            let x = x as f64;
            let k = centers.len();
            if k == 1 || x <= centers[0] {
                return (0, 0, 0.0);
            }
            if x >= centers[k - 1] {
                return (k - 1, k - 1, 0.0);
            }
            let i = centers.partition_point(|&c| c <= x) - 1;
            (i, i + 1, (x - centers[i]) / (centers[i + 1] - centers[i]))
        })
        .collect()
}

/// Keys cubic kernel weights (a = −0.75) for fractional offset `t ∈ [0, 1)`, taps −1 … 2.
fn keys(t: f64) -> [f64; 4] {
    let a = -0.75;
    let w = |x: f64| {
        let x = x.abs();
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    [w(1.0 + t), w(t), w(1.0 - t), w(2.0 - t)]
}

/// Shifts found for one volume, borrowed from the corrector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VolumeShifts<'a> {
    /// Rigid shift applied (rigid mode) or estimated (piecewise mode), axes 0, 1, 2.
    pub rigid: [f64; 3],
    /// Piecewise mode: the shift applied to every patch, patches in C order of the grid
    /// (axis 0 outermost). Empty in rigid mode.
    pub patches: &'a [[f64; 3]],
}

#[derive(Debug)]
struct Patches {
    window: [usize; 3],
    starts: [Vec<usize>; 3],
    regs: Vec<VolumeRegistrar>,
    taps: [Vec<(usize, usize, f64)>; 3],
    applied: Vec<[f64; 3]>,
    padded: Vec<f64>,
}

/// Per-template, per-worker state of `tile_and_correct_3d` (see the module docs).
#[derive(Debug)]
pub struct VolumeCorrector {
    opts: VolumeOptions,
    dims: [usize; 3],
    reg: VolumeRegistrar,
    fft: Fft3d,
    rigid: [f64; 3],
    shifted: Array3<f64>,
    pw: Option<Patches>,
}

impl VolumeCorrector {
    /// Prepares the correction of volumes against `template` (finite).
    ///
    /// # Errors
    /// [`Error::Empty`] / [`Error::NonFinite`] for an empty or non-finite template,
    /// [`Error::PatchLargerThanImage`] if a patch does not fit, [`Error::Unsupported`] for a zero
    /// stride or upsampling factor.
    pub fn new(template: ArrayView3<'_, f32>, opts: &VolumeOptions) -> Result<Self> {
        let dims: [usize; 3] = template.dim().into();
        if opts.upsample_factor_fft == 0 {
            return Err(Error::Unsupported("upsample_factor_fft must be at least 1".into()));
        }
        let reg = VolumeRegistrar::new(template, opts.add_to_movie, opts.upsample_factor_fft)?;
        let pw = if opts.max_deviation_rigid > 0 {
            if opts.strides.contains(&0) {
                return Err(Error::Unsupported("strides must be positive".into()));
            }
            let window: [usize; 3] = std::array::from_fn(|a| opts.strides[a] + opts.overlaps[a]);
            if (0..3).any(|a| dims[a] < window[a]) {
                return Err(Error::PatchLargerThanImage { dims: dims.to_vec(), window: window.to_vec() });
            }
            let st: [Vec<usize>; 3] = std::array::from_fn(|a| starts(dims[a], opts.strides[a], window[a]));
            let mut regs = Vec::new();
            for &i in &st[0] {
                for &j in &st[1] {
                    for &k in &st[2] {
                        let patch = template.slice(s![i..i + window[0], j..j + window[1], k..k + window[2]]);
                        regs.push(VolumeRegistrar::new(patch, opts.add_to_movie, opts.upsample_factor_fft)?);
                    }
                }
            }
            let taps = std::array::from_fn(|a| {
                let centers: Vec<f64> = st[a].iter().map(|&s| s as f64 + (window[a] as f64 - 1.0) / 2.0).collect();
                lerp_taps(dims[a], &centers)
            });
            let n = regs.len();
            Some(Patches {
                window,
                starts: st,
                regs,
                taps,
                applied: Vec::with_capacity(n),
                padded: vec![0.0; dims.iter().product()],
            })
        } else {
            None
        };
        Ok(Self {
            opts: opts.clone(),
            dims,
            reg,
            fft: Fft3d::new(dims),
            rigid: [0.0; 3],
            shifted: Array3::zeros(dims),
            pw,
        })
    }

    /// Piecewise mode: patch starts along `axis` and the patch size.
    pub fn patch_grid(&self, axis: usize) -> Option<(&[usize], usize)> {
        self.pw.as_ref().map(|p| (&p.starts[axis][..], p.window[axis]))
    }

    /// Piecewise mode: patch centres (axes 0, 1, 2) in the order of [`VolumeShifts::patches`].
    pub fn patch_centers(&self) -> Vec<[f64; 3]> {
        let Some(p) = &self.pw else { return Vec::new() };
        let c = |a: usize, s: usize| s as f64 + (p.window[a] as f64 - 1.0) / 2.0;
        let mut out = Vec::new();
        for &i in &p.starts[0] {
            for &j in &p.starts[1] {
                for &k in &p.starts[2] {
                    out.push([c(0, i), c(1, j), c(2, k)]);
                }
            }
        }
        out
    }

    /// Registers `vol` and writes the corrected volume into `out`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a volume or buffer of the wrong shape, [`Error::NonFinite`]
    /// for a volume with NaN/inf.
    pub fn correct(&mut self, vol: ArrayView3<'_, f32>, mut out: ArrayViewMut3<'_, f32>) -> Result<VolumeShifts<'_>> {
        let shape: [usize; 3] = vol.dim().into();
        let oshape: [usize; 3] = out.dim().into();
        if shape != self.dims || oshape != self.dims {
            return Err(Error::ShapeMismatch {
                what: "volume or output vs template",
                expected: self.dims.to_vec(),
                got: if shape != self.dims { shape.to_vec() } else { oshape.to_vec() },
            });
        }
        let add = self.opts.add_to_movie;
        let r = self.reg.register(vol, add, self.opts.max_shifts)?;
        self.rigid = r.shift.map(|v| -v);
        let Some(pw) = &mut self.pw else {
            apply_shifts_dft_3d(
                &mut self.fft,
                self.reg.frame_spectrum().view(),
                self.rigid,
                r.phasediff,
                self.opts.border,
                self.shifted.view_mut(),
            );
            out.zip_mut_with(&self.shifted, |o, &v| *o = (v - add) as f32);
            return Ok(VolumeShifts { rigid: self.rigid, patches: &[] });
        };
        let dev = self.opts.max_deviation_rigid as f64;
        let bounds: [(i64, i64); 3] =
            std::array::from_fn(|a| ((r.shift[a] - dev).ceil() as i64, (r.shift[a] + dev).floor() as i64));
        pw.applied.clear();
        let w = pw.window;
        let mut k = 0;
        for &i in &pw.starts[0] {
            for &j in &pw.starts[1] {
                for &l in &pw.starts[2] {
                    let patch = vol.slice(s![i..i + w[0], j..j + w[1], l..l + w[2]]);
                    let found = pw.regs[k].register_bounded(patch, add, bounds)?;
                    pw.applied.push(found.shift.map(|v| -v));
                    k += 1;
                }
            }
        }
        // The volume + add, contiguous, and its minimum (for BorderMode::Min).
        let [d0, d1, d2] = self.dims;
        for (p, &v) in pw.padded.iter_mut().zip(vol.iter()) {
            *p = f64::from(v) + add;
        }
        let vmin = pw.padded.iter().copied().fold(f64::INFINITY, f64::min);
        let [n1, n2] = [pw.starts[1].len(), pw.starts[2].len()];
        let grid = |a: usize, b: usize, c: usize, axis: usize| pw.applied[(a * n1 + b) * n2 + c][axis];
        let at = |x: i64, y: i64, z: i64| -> f64 { pw.padded[(x as usize * d1 + y as usize) * d2 + z as usize] };
        for x in 0..d0 {
            let (a0, a1, ta) = pw.taps[0][x];
            for y in 0..d1 {
                let (b0, b1, tb) = pw.taps[1][y];
                for z in 0..d2 {
                    let (c0, c1, tc) = pw.taps[2][z];
                    // Trilinear shift field at (x, y, z).
                    let field = |axis: usize| {
                        let l = |a: usize, b: usize| grid(a, b, c0, axis) * (1.0 - tc) + grid(a, b, c1, axis) * tc;
                        let m = |a: usize| l(a, b0) * (1.0 - tb) + l(a, b1) * tb;
                        m(a0) * (1.0 - ta) + m(a1) * ta
                    };
                    let p = [x as f64 - field(0), y as f64 - field(1), z as f64 - field(2)];
                    let dims = [d0, d1, d2];
                    let inside = (0..3).all(|a| p[a] >= 0.0 && p[a] <= (dims[a] - 1) as f64);
                    let v = if !inside && self.opts.border != BorderMode::Copy {
                        match self.opts.border {
                            BorderMode::Nan => f64::NAN,
                            BorderMode::Min => vmin,
                            _ => 0.0,
                        }
                    } else {
                        // Tricubic Keys interpolation, taps clamped into the volume.
                        let q: [f64; 3] = std::array::from_fn(|a| p[a].clamp(0.0, (dims[a] - 1) as f64));
                        let base: [i64; 3] = std::array::from_fn(|a| q[a].floor() as i64);
                        let wts: [[f64; 4]; 3] = std::array::from_fn(|a| keys(q[a] - base[a] as f64));
                        let idx = |a: usize, t: usize| (base[a] - 1 + t as i64).clamp(0, dims[a] as i64 - 1);
                        let mut acc = 0.0;
                        for (t0, w0) in wts[0].iter().enumerate() {
                            let mut acc1 = 0.0;
                            for (t1, w1) in wts[1].iter().enumerate() {
                                let mut acc2 = 0.0;
                                for (t2, w2) in wts[2].iter().enumerate() {
                                    acc2 += w2 * at(idx(0, t0), idx(1, t1), idx(2, t2));
                                }
                                acc1 += w1 * acc2;
                            }
                            acc += w0 * acc1;
                        }
                        acc
                    };
                    out[[x, y, z]] = (v - add) as f32;
                }
            }
        }
        Ok(VolumeShifts { rigid: self.rigid, patches: &pw.applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_weights_interpolate() {
        let w = keys(0.0);
        assert_eq!(w, [0.0, 1.0, 0.0, 0.0]);
        let w = keys(0.3);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Symmetric: the weights of 1 − t are those of t reversed.
        let mut r = keys(0.7);
        r.reverse();
        for (a, b) in w.iter().zip(&r) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn lerp_taps_clamp_and_interpolate() {
        let t = lerp_taps(10, &[2.0, 6.0]);
        assert_eq!(t[0], (0, 0, 0.0));
        assert_eq!(t[4], (0, 1, 0.5));
        assert_eq!(t[9], (1, 1, 0.0));
        assert_eq!(starts(20, 6, 10), [0, 6, 10]);
    }
}
