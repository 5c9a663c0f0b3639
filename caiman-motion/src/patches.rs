//! The piecewise-rigid patch grid and the shift-field machinery around it (catalog §2.5–2.6):
//! CaImAn's `get_patch_edges` / `get_patch_centers`, the OpenCV `cv2.resize` upsampling of a
//! patch-shift grid (bilinear to a dense per-pixel field; cubic to the finer grid of the FFT
//! path), scipy's cubic `interpn` variant (`shifts_interpolate`), the blending weights of the FFT
//! path (`create_weight_matrix_for_blending`) and its `max_shear` rule.
//!
//! Grids are per axis; patches are enumerated in row-major grid order (axis-0 index outer), which
//! is the column order of CaImAn's `x_shifts_els` / `y_shifts_els`.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, ParamsError, Result};

/// Patch windows `strides + overlaps` laid over an image: starts `0, s, 2s, … < dim − w` plus a
/// last window flush with the end (`dim − w`), per axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    dims: [usize; 2],
    window: [usize; 2],
    starts: [Vec<usize>; 2],
}

impl PatchGrid {
    /// CaImAn's `get_patch_edges(dims, overlaps, strides)`.
    ///
    /// # Errors
    /// [`ParamsError`] for a zero stride; [`Error::PatchLargerThanImage`] if `dim < strides +
    /// overlaps` on some axis (CaImAn would produce negative starts).
    pub fn new(dims: [usize; 2], strides: [usize; 2], overlaps: [usize; 2]) -> Result<Self> {
        if strides.contains(&0) {
            return Err(ParamsError::invalid("strides", "strides must be positive").into());
        }
        let window = [strides[0] + overlaps[0], strides[1] + overlaps[1]];
        if dims[0] < window[0] || dims[1] < window[1] {
            return Err(Error::PatchLargerThanImage { dims: dims.to_vec(), window: window.to_vec() });
        }
        let starts = [0, 1].map(|a| {
            let last = dims[a] - window[a];
            let mut v: Vec<usize> = (0..last).step_by(strides[a]).collect();
            v.push(last);
            v
        });
        Ok(Self { dims, window, starts })
    }

    /// Image size the grid was laid over.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Patch size (`strides + overlaps`).
    pub fn window(&self) -> [usize; 2] {
        self.window
    }

    /// Patch starts along `axis` (CaImAn's patch "edges").
    pub fn starts(&self, axis: usize) -> &[usize] {
        &self.starts[axis]
    }

    /// Number of patches per axis.
    pub fn grid_shape(&self) -> [usize; 2] {
        [self.starts[0].len(), self.starts[1].len()]
    }

    /// Total number of patches.
    pub fn len(&self) -> usize {
        self.starts[0].len() * self.starts[1].len()
    }

    /// Always false: a grid has at least one patch.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Patch centres along `axis`: `start + (window − 1)/2` (CaImAn's `get_patch_centers`).
    pub fn centers(&self, axis: usize) -> Vec<f64> {
        self.starts[axis].iter().map(|&s| s as f64 + (self.window[axis] as f64 - 1.0) / 2.0).collect()
    }

    /// `(grid index, start)` of every patch in row-major grid order.
    pub fn iter(&self) -> impl Iterator<Item = ([usize; 2], [usize; 2])> + '_ {
        self.starts[0]
            .iter()
            .enumerate()
            .flat_map(move |(i, &r)| self.starts[1].iter().enumerate().map(move |(j, &c)| ([i, j], [r, c])))
    }

    /// The patch at `start` of `img` (a view).
    pub fn patch<'a, T>(&self, img: &'a ArrayView2<'_, T>, start: [usize; 2]) -> ArrayView2<'a, T> {
        img.slice(ndarray::s![start[0]..start[0] + self.window[0], start[1]..start[1] + self.window[1]])
    }
}

/// `numpy.round(strides / upsample_factor_grid)` (half to even): the strides of the FFT path's
/// finer grid.
pub fn upsampled_strides(strides: [usize; 2], upsample_factor_grid: usize) -> [usize; 2] {
    strides.map(|s| (s as f64 / upsample_factor_grid as f64).round_ties_even() as usize)
}

/// OpenCV `resize` source coordinate of destination index `d`: `(sx, fx)` in float32 as OpenCV.
fn cv_resize_coord(d: usize, scale: f64) -> (i64, f32) {
    let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
    let s = f.floor();
    (s as i64, f - s)
}

/// OpenCV's float32 linear interpolation step, `fma(y − x, b, x)`: the difference is rounded to
/// float32, product and sum are fused. Established on CaImAn's reference outputs (300 frames of
/// piecewise-rigid output and its template are reproduced bit for bit only with this form; a
/// one-ulp difference in the field flips OpenCV's 1/32-pixel rounding). The fused step is
/// evaluated in `f64` (the product is exact there; the sum may double-round with probability
/// ~2⁻²⁹), avoiding a slow software `fmaf` on targets without FMA.
#[inline]
fn lerp2(x: f32, _a: f32, y: f32, b: f32) -> f32 {
    (f64::from(y - x) * f64::from(b) + f64::from(x)) as f32
}

/// OpenCV `cv2.resize(src, (W, H), INTER_LINEAR)` of float32 grids of one size to another, with
/// the coordinate tables precomputed (half-pixel-centre convention: the grid values are treated
/// as equal-size cells covering the image). Reuse it across frames; [`Self::apply`] does not
/// allocate.
#[derive(Clone, Debug)]
pub struct LinearResizer {
    src: [usize; 2],
    dst: [usize; 2],
    xs: Vec<(usize, f32, bool)>,
    ys: Vec<(usize, usize, f32)>,
    rows: Array2<f32>,
}

impl LinearResizer {
    /// Tables for resizing `src = [h, w]` grids to `dst = [H, W]`.
    ///
    /// # Panics
    /// If a size is zero.
    pub fn new(src: [usize; 2], dst: [usize; 2]) -> Self {
        let [sh, sw] = src;
        let [dh, dw] = dst;
        assert!(sh > 0 && sw > 0 && dh > 0 && dw > 0, "resize of an empty grid");
        let sx_scale = 1.0 / (dw as f64 / sw as f64);
        let sy_scale = 1.0 / (dh as f64 / sh as f64);
        let xs = (0..dw)
            .map(|dx| {
                let (mut sx, mut fx) = cv_resize_coord(dx, sx_scale);
                if sx < 0 {
                    sx = 0;
                    fx = 0.0;
                }
                let single = sx + 1 >= sw as i64;
                if sx >= sw as i64 - 1 {
                    sx = sw as i64 - 1;
                    fx = 0.0;
                }
                (sx as usize, fx, single)
            })
            .collect();
        // Vertical taps: rows clamped, coefficients not (as OpenCV).
        let ys = (0..dh)
            .map(|dy| {
                let (sy, fy) = cv_resize_coord(dy, sy_scale);
                let r0 = sy.clamp(0, sh as i64 - 1) as usize;
                let r1 = (sy + 1).clamp(0, sh as i64 - 1) as usize;
                (r0, r1, fy)
            })
            .collect();
        Self { src, dst, xs, ys, rows: Array2::zeros((sh, dw)) }
    }

    /// Resizes `src` into `dst`.
    ///
    /// # Panics
    /// If the shapes differ from the ones given to [`Self::new`].
    pub fn apply(&mut self, src: ArrayView2<'_, f32>, mut dst: ArrayViewMut2<'_, f32>) {
        assert_eq!(src.dim(), (self.src[0], self.src[1]), "LinearResizer: source shape");
        assert_eq!(dst.dim(), (self.dst[0], self.dst[1]), "LinearResizer: destination shape");
        for (s, mut row) in src.rows().into_iter().zip(self.rows.rows_mut()) {
            for (d, &(sx, fx, single)) in row.iter_mut().zip(&self.xs) {
                let a0 = 1.0 - fx;
                *d = if single { s[sx] * a0 } else { lerp2(s[sx], a0, s[sx + 1], fx) };
            }
        }
        for (mut drow, &(r0, r1, fy)) in dst.rows_mut().into_iter().zip(&self.ys) {
            let (h0, h1) = (self.rows.row(r0), self.rows.row(r1));
            for ((d, &a), &b) in drow.iter_mut().zip(h0.iter()).zip(h1.iter()) {
                *d = lerp2(a, 1.0 - fy, b, fy);
            }
        }
    }
}

/// One-shot [`LinearResizer`]: `cv2.resize(src, dst.shape, INTER_LINEAR)` for float32.
///
/// # Panics
/// If `src` or `dst` is empty.
pub fn resize_linear(src: ArrayView2<'_, f32>, dst: ArrayViewMut2<'_, f32>) {
    let (s, d) = (src.dim(), dst.dim());
    LinearResizer::new([s.0, s.1], [d.0, d.1]).apply(src, dst);
}

/// OpenCV `interpolateCubic` (float32), duplicated here for `resize`.
fn cubic_coeffs(x: f32) -> [f32; 4] {
    let a = -0.75f32;
    let c0 = ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a;
    let c1 = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let c2 = ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// OpenCV `cv2.resize(src, (W, H), INTER_CUBIC)` of a float64 grid (float32 coefficients,
/// float64 sums, edge-replicated taps, horizontal pass first), as the FFT path upsamples its
/// shift grids. Evaluated pixel by pixel without allocation (the grids are small).
///
/// # Panics
/// If `src` or `dst` is empty.
pub fn resize_cubic(src: ArrayView2<'_, f64>, mut dst: ArrayViewMut2<'_, f64>) {
    let (sh, sw) = src.dim();
    let (dh, dw) = dst.dim();
    assert!(sh > 0 && sw > 0 && dh > 0 && dw > 0, "resize of an empty grid");
    let taps = |d: usize, scale: f64, n: usize| -> ([usize; 4], [f64; 4]) {
        let (s, f) = cv_resize_coord(d, scale);
        let c = cubic_coeffs(f);
        let idx = std::array::from_fn(|k| (s - 1 + k as i64).clamp(0, n as i64 - 1) as usize);
        (idx, c.map(f64::from))
    };
    let (sx_scale, sy_scale) = (1.0 / (dw as f64 / sw as f64), 1.0 / (dh as f64 / sh as f64));
    for dy in 0..dh {
        let (iy, b) = taps(dy, sy_scale, sh);
        for dx in 0..dw {
            let (ix, a) = taps(dx, sx_scale, sw);
            let hrow = |r: usize| {
                src[[r, ix[0]]] * a[0] + src[[r, ix[1]]] * a[1] + src[[r, ix[2]]] * a[2] + src[[r, ix[3]]] * a[3]
            };
            dst[[dy, dx]] = hrow(iy[0]) * b[0] + hrow(iy[1]) * b[1] + hrow(iy[2]) * b[2] + hrow(iy[3]) * b[3];
        }
    }
}

/// Not-a-knot cubic spline through `(x[i], y[i])` (strictly increasing `x`, at least 4 points),
/// as scipy's `make_interp_spline(k=3)`; returns the second derivatives at the knots.
fn not_a_knot_second_derivatives(x: &[f64], y: &[f64]) -> Vec<f64> {
    let n = x.len();
    let h: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let mut a = vec![vec![0.0; n]; n];
    let mut rhs = vec![0.0; n];
    // Not-a-knot: the third derivative is continuous at x[1] and x[n-2].
    a[0][0] = h[1];
    a[0][1] = -(h[0] + h[1]);
    a[0][2] = h[0];
    for i in 1..n - 1 {
        a[i][i - 1] = h[i - 1];
        a[i][i] = 2.0 * (h[i - 1] + h[i]);
        a[i][i + 1] = h[i];
        rhs[i] = 6.0 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1]);
    }
    a[n - 1][n - 3] = h[n - 2];
    a[n - 1][n - 2] = -(h[n - 3] + h[n - 2]);
    a[n - 1][n - 1] = h[n - 3];
    // Gaussian elimination with partial pivoting (n is a handful of patches).
    for col in 0..n {
        let piv = (col..n).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs())).expect("non-empty range");
        a.swap(col, piv);
        rhs.swap(col, piv);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (k, row) in lower.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                rhs[col + 1 + k] -= f * rhs[col];
            }
        }
    }
    let mut m = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * m[c]).sum();
        m[r] = (rhs[r] - s) / a[r][r];
    }
    m
}

/// A 1-D not-a-knot cubic spline.
struct Spline1d<'a> {
    x: &'a [f64],
    y: Vec<f64>,
    m: Vec<f64>,
}

impl<'a> Spline1d<'a> {
    fn new(x: &'a [f64], y: Vec<f64>) -> Self {
        let m = not_a_knot_second_derivatives(x, &y);
        Self { x, y, m }
    }

    fn eval(&self, t: f64) -> f64 {
        let n = self.x.len();
        let i = match self.x.partition_point(|&v| v <= t) {
            0 => 0,
            p => (p - 1).min(n - 2),
        };
        let h = self.x[i + 1] - self.x[i];
        let (a, b) = ((self.x[i + 1] - t) / h, (t - self.x[i]) / h);
        a * self.y[i]
            + b * self.y[i + 1]
            + ((a * a * a - a) * self.m[i] + (b * b * b - b) * self.m[i + 1]) * h * h / 6.0
    }
}

/// CaImAn's `interpolate_shifts`: scipy `interpn(method='cubic')` of `values` (on the grid
/// `coords_orig[0] × coords_orig[1]`, e.g. patch centres) at `coords_new[0] × coords_new[1]`,
/// after clipping the new coordinates to the range of the old ones (constant extrapolation).
///
/// # Errors
/// [`Error::Unsupported`] if an axis has fewer than 4 points (scipy raises too).
///
/// # Panics
/// If the shapes of `values`/`out` and the coordinate vectors disagree.
pub fn interpolate_shifts(
    values: ArrayView2<'_, f64>,
    coords_orig: [&[f64]; 2],
    coords_new: [&[f64]; 2],
    mut out: ArrayViewMut2<'_, f64>,
) -> Result<()> {
    assert_eq!(values.dim(), (coords_orig[0].len(), coords_orig[1].len()), "interpolate_shifts");
    assert_eq!(out.dim(), (coords_new[0].len(), coords_new[1].len()), "interpolate_shifts");
    if coords_orig.iter().any(|c| c.len() < 4) {
        return Err(Error::Unsupported(format!(
            "shifts_interpolate needs at least 4 patches per axis (cubic interpn), grid is {}x{}",
            coords_orig[0].len(),
            coords_orig[1].len()
        )));
    }
    let clip = |c: &[f64], o: &[f64]| -> Vec<f64> {
        let (lo, hi) = (o[0], o[o.len() - 1]);
        c.iter().map(|v| v.clamp(lo, hi)).collect()
    };
    let new0 = clip(coords_new[0], coords_orig[0]);
    let new1 = clip(coords_new[1], coords_orig[1]);
    // Interpolate along axis 1 for every original row, then along axis 0.
    let mut tmp = Array2::<f64>::zeros((coords_orig[0].len(), new1.len()));
    for r in 0..coords_orig[0].len() {
        let s = Spline1d::new(coords_orig[1], values.row(r).to_vec());
        for (c, &t) in new1.iter().enumerate() {
            tmp[[r, c]] = s.eval(t);
        }
    }
    for c in 0..new1.len() {
        let s = Spline1d::new(coords_orig[0], tmp.column(c).to_vec());
        for (r, &t) in new0.iter().enumerate() {
            out[[r, c]] = s.eval(t);
        }
    }
    Ok(())
}

/// Dense per-pixel field (float32, `grid.dims()`) from per-patch values in row-major grid order,
/// as CaImAn's OpenCV path builds it: `cv2.resize` (bilinear) of the patch grid, or with
/// `interpolate` the cubic [`interpolate_shifts`] from the true patch centres.
///
/// # Errors
/// As [`interpolate_shifts`].
///
/// # Panics
/// If `values.len() != grid.len()` or `field` does not have the image shape.
pub fn dense_field(
    grid: &PatchGrid,
    values: impl IntoIterator<Item = f64>,
    interpolate: bool,
    mut field: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let [gh, gw] = grid.grid_shape();
    let vals: Vec<f64> = values.into_iter().collect();
    assert_eq!(vals.len(), gh * gw, "dense_field: one value per patch");
    assert_eq!(field.dim(), (grid.dims[0], grid.dims[1]), "dense_field: field shape");
    if interpolate {
        let v = ArrayView2::from_shape((gh, gw), &vals).expect("grid shape");
        let c0 = grid.centers(0);
        let c1 = grid.centers(1);
        let p0: Vec<f64> = (0..grid.dims[0]).map(|i| i as f64).collect();
        let p1: Vec<f64> = (0..grid.dims[1]).map(|i| i as f64).collect();
        let mut out = Array2::<f64>::zeros((grid.dims[0], grid.dims[1]));
        interpolate_shifts(v, [&c0, &c1], [&p0, &p1], out.view_mut())?;
        field.zip_mut_with(&out, |f, &v| *f = v as f32);
    } else {
        let g = Array2::from_shape_vec((gh, gw), vals.iter().map(|&v| v as f32).collect()).expect("grid shape");
        resize_linear(g.view(), field);
    }
    Ok(())
}

/// `numpy.linspace(start, stop, n)` exactly (`k * step + start`, last element = `stop`).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|k| k as f64 * step + start).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// CaImAn's `create_weight_matrix_for_blending` for one patch of `shape` with `overlaps`, given
/// whether it is first/last along each axis. Reproduces CaImAn exactly, including that the
/// row ramps are *assigned* (the falling ramp overwrites the rising one when the patch is
/// shorter than two overlaps) while the column ramps *multiply*.
pub fn blend_weights(shape: [usize; 2], overlaps: [usize; 2], first: [bool; 2], last: [bool; 2]) -> Array2<f64> {
    let mut w = Array2::<f64>::ones((shape[0], shape[1]));
    let (o0, o1) = (overlaps[0].min(shape[0]), overlaps[1].min(shape[1]));
    if !first[0] {
        let up = linspace(0.0, 1.0, overlaps[0]);
        for (r, &v) in up.iter().enumerate().take(o0) {
            w.row_mut(r).fill(v);
        }
    }
    if !last[0] {
        let down = linspace(1.0, 0.0, overlaps[0]);
        for (k, r) in (shape[0] - o0..shape[0]).enumerate() {
            w.row_mut(r).fill(down[k + overlaps[0] - o0]);
        }
    }
    if !first[1] {
        let up = linspace(0.0, 1.0, overlaps[1]);
        for mut row in w.rows_mut() {
            for c in 0..o1 {
                row[c] *= up[c];
            }
        }
    }
    if !last[1] {
        let down = linspace(1.0, 0.0, overlaps[1]);
        for mut row in w.rows_mut() {
            for (k, c) in (shape[1] - o1..shape[1]).enumerate() {
                row[c] *= down[k + overlaps[1] - o1];
            }
        }
    }
    w
}

/// CaImAn's `max_shear`: the 75th percentile (linear interpolation) of the largest absolute
/// neighbour difference of the two upsampled shift fields along each axis. Axes of length 1
/// contribute 0 (CaImAn raises on the empty difference).
pub fn max_shear(field_0: ArrayView2<'_, f64>, field_1: ArrayView2<'_, f64>) -> f64 {
    let max_diff = |f: &ArrayView2<'_, f64>, axis: usize| -> f64 {
        let (h, w) = f.dim();
        let mut m = 0.0f64;
        if axis == 0 {
            for r in 1..h {
                for c in 0..w {
                    m = m.max((f[[r, c]] - f[[r - 1, c]]).abs());
                }
            }
        } else {
            for r in 0..h {
                for c in 1..w {
                    m = m.max((f[[r, c]] - f[[r, c - 1]]).abs());
                }
            }
        }
        m
    };
    let mut v = [max_diff(&field_0, 0), max_diff(&field_0, 1), max_diff(&field_1, 0), max_diff(&field_1, 1)];
    v.sort_by(f64::total_cmp);
    v[2] + (v[3] - v[2]) * 0.25
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_matches_caiman_examples() {
        let g = PatchGrid::new([128, 128], [32, 32], [16, 16]).unwrap();
        assert_eq!(g.starts(0), [0, 32, 64, 80]);
        assert_eq!(g.centers(1), [23.5, 55.5, 87.5, 103.5]);
        let g = PatchGrid::new([512, 512], [96, 96], [32, 32]).unwrap();
        assert_eq!(g.starts(0), [0, 96, 192, 288, 384]);
        let g = PatchGrid::new([128, 128], [8, 8], [16, 16]).unwrap();
        assert_eq!(g.starts(0).len(), 14);
        assert_eq!(*g.starts(0).last().unwrap(), 104);
        let g = PatchGrid::new([48, 60], [32, 32], [16, 16]).unwrap();
        assert_eq!(g.starts(0), [0]);
        assert_eq!(g.starts(1), [0, 12]);
        assert!(matches!(PatchGrid::new([40, 60], [32, 32], [16, 16]), Err(Error::PatchLargerThanImage { .. })));
        assert_eq!(upsampled_strides([32, 30], 4), [8, 8]);
        assert_eq!(upsampled_strides([96, 10], 4), [24, 2]);
    }

    #[test]
    fn linspace_like_numpy() {
        assert_eq!(linspace(0.0, 1.0, 3), [0.0, 0.5, 1.0]);
        assert_eq!(linspace(1.0, 0.0, 1), [1.0]);
        assert!(linspace(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn spline_reproduces_cubics() {
        let x = [0.0, 1.0, 2.5, 4.0, 5.0];
        let f = |t: f64| 0.5 * t * t * t - t * t + 2.0 * t - 1.0;
        let s = Spline1d::new(&x, x.iter().map(|&t| f(t)).collect());
        for t in [0.0, 0.3, 1.7, 3.3, 5.0] {
            assert!((s.eval(t) - f(t)).abs() < 1e-10);
        }
    }

    #[test]
    fn blend_weights_interior_patch() {
        let w = blend_weights([24, 24], [16, 16], [false; 2], [false; 2]);
        assert_eq!(w[[0, 10]], 0.0);
        assert_eq!(w[[8, 8]], 1.0 * (8.0 / 15.0));
        assert_eq!(w[[23, 12]], 0.0);
        let w = blend_weights([24, 24], [16, 16], [true; 2], [true; 2]);
        assert!(w.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn resize_linear_half_pixel_convention() {
        let g = Array2::from_shape_vec((1, 2), vec![0.0f32, 1.0]).unwrap();
        let mut out = Array2::<f32>::zeros((1, 8));
        resize_linear(g.view(), out.view_mut());
        // Cell centres at 1.5 and 5.5: clamped outside, linear in between.
        assert_eq!(out.row(0).to_vec(), [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0]);
    }
}
