//! The pictures of `caiman pipeline`: footprint contours over the correlation image, a page of
//! example traces, the rigid motion shifts.
//!
//! These are the three figures CaImAn's demo notebooks draw with matplotlib
//! (`estimates.plot_contours`, `view_components`-style trace plots, `plt.plot(mc.shifts_rig)`),
//! reduced to what a raster without fonts can say: no axes, no labels, no legend. Contours are
//! the outline of each footprint's mask (pixels above 20 % of its peak) rather than CaImAn's
//! energy contour (`thr_method='max'`-like masks are what `nf_match_neurons_in_binary_masks`
//! compares too). Every function takes arrays and returns a [`RgbImage`]; saving is the caller's.

use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use caiman_io::png::{Colormap, RgbImage, Scaling};
use ndarray::{Array2, ArrayView2};

/// Outline colour of accepted components.
pub(crate) const ACCEPTED: [u8; 3] = [0, 230, 0];
/// Outline colour of rejected components.
pub(crate) const REJECTED: [u8; 3] = [230, 0, 0];
/// Colour of the first shift axis (axis 0, rows: matplotlib's first colour, blue).
pub(crate) const AXIS0: [u8; 3] = [31, 119, 180];
/// Colour of the second shift axis (axis 1, columns: matplotlib's second colour, orange).
pub(crate) const AXIS1: [u8; 3] = [255, 127, 14];
const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [200, 200, 200];
/// Trace colours, cycled (matplotlib's `tab10` without its greys and yellows).
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// Mask of footprint `k` of `a` (pixels in Fortran order over `dims`) on plane `plane`: the
/// pixels whose value exceeds `thr · max` of the footprint (all planes' maximum). An all-zero
/// footprint gives an empty mask.
pub(crate) fn footprint_mask(a: &CscMatrix, k: usize, dims: Dims, plane: usize, thr: f32) -> Array2<bool> {
    let mut mask = Array2::from_elem((dims.d1, dims.d2), false);
    let (rows, vals) = a.col(k);
    let peak = vals.iter().copied().filter(|v| v.is_finite()).fold(0f32, f32::max);
    if peak <= 0.0 {
        return mask;
    }
    let plane_px = dims.d1 * dims.d2;
    for (&p, &v) in rows.iter().zip(vals) {
        if v > thr * peak && p / plane_px == plane {
            let q = p % plane_px;
            mask[[q % dims.d1, q / dims.d1]] = true;
        }
    }
    mask
}

/// The outline of a mask: the mask pixels with a 4-neighbour outside the mask (pixels outside
/// the image count as outside).
pub(crate) fn outline(mask: ArrayView2<'_, bool>) -> Array2<bool> {
    let (h, w) = mask.dim();
    Array2::from_shape_fn((h, w), |(i, j)| {
        mask[[i, j]]
            && (i == 0 || j == 0 || i + 1 == h || j + 1 == w || {
                !mask[[i - 1, j]] || !mask[[i + 1, j]] || !mask[[i, j - 1]] || !mask[[i, j + 1]]
            })
    })
}

/// Nearest-neighbour enlargement of a mask by `zoom` (0 counts as 1).
fn upscale_mask(mask: ArrayView2<'_, bool>, zoom: usize) -> Array2<bool> {
    let z = zoom.max(1);
    let (h, w) = mask.dim();
    Array2::from_shape_fn((h * z, w * z), |(i, j)| mask[[i / z, j / z]])
}

/// The correlation image `cn` (row `i`, column `j`) in viridis, enlarged `zoom` times, with the
/// one-pixel outline of every mask drawn on top: green for accepted masks, red for rejected
/// ones (rejected first, so accepted outlines win where they cross). Outlines are traced on the
/// enlarged masks, so they stay thin at any zoom.
pub(crate) fn contours(cn: ArrayView2<'_, f32>, masks: &[(Array2<bool>, bool)], zoom: usize) -> RgbImage {
    let mut img = RgbImage::from_scalar(cn, Colormap::Viridis, Scaling::default()).upscale(zoom);
    for accepted in [false, true] {
        let color = if accepted { ACCEPTED } else { REJECTED };
        for (mask, _) in masks.iter().filter(|(m, a)| *a == accepted && m.dim() == cn.dim()) {
            let edge = outline(upscale_mask(mask.view(), zoom).view());
            for ((i, j), &on) in edge.indexed_iter() {
                if on {
                    img.set(i as isize, j as isize, color);
                }
            }
        }
    }
    img
}

/// Rows (top `top`, `height` pixels, 2-pixel margins) at which the values of `v` sit when the
/// band spans their finite range: the maximum at the top, the minimum at the bottom; a constant
/// trace sits in the middle; non-finite values give `None`.
pub(crate) fn scale_to_band(v: &[f64], top: usize, height: usize) -> Vec<Option<isize>> {
    let margin = if height > 6 { 2 } else { 0 };
    let span_px = height.saturating_sub(2 * margin + 1) as f64;
    let (lo, hi) = v
        .iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let bottom = (top + height.saturating_sub(margin + 1)) as f64;
    v.iter()
        .map(|&x| {
            if !x.is_finite() {
                None
            } else if hi > lo {
                Some((bottom - (x - lo) / (hi - lo) * span_px).round() as isize)
            } else {
                Some((top + height / 2) as isize)
            }
        })
        .collect()
}

/// Column of frame `t` of `frames` on a plot `width` pixels wide.
fn x_of(t: usize, frames: usize, width: usize) -> isize {
    if frames <= 1 { 0 } else { (t as f64 * (width - 1) as f64 / (frames - 1) as f64).round() as isize }
}

/// Draws the polyline of `rows` (one row per frame) across `width` columns.
fn polyline(img: &mut RgbImage, rows: &[Option<isize>], width: usize, color: [u8; 3]) {
    let n = rows.len();
    let mut prev: Option<(isize, isize)> = None;
    for (t, r) in rows.iter().enumerate() {
        match r {
            Some(i) => {
                let p = (*i, x_of(t, n, width));
                img.line(prev.unwrap_or(p), p, color);
                prev = Some(p);
            }
            None => prev = None,
        }
    }
}

/// A page of traces (one per row of `traces`, frames along the columns), stacked top to bottom
/// in bands of `band` pixels on a white background, each scaled to its own range, in cycling
/// colours, with a light grey line between bands. `width` is the plot width in pixels.
pub(crate) fn traces(traces: ArrayView2<'_, f64>, width: usize, band: usize) -> RgbImage {
    let n = traces.nrows();
    let width = width.max(2);
    let band = band.max(4);
    let mut img = RgbImage::new((n * band).max(1), width, WHITE);
    for (k, row) in traces.rows().into_iter().enumerate() {
        let v: Vec<f64> = row.to_vec();
        if k > 0 {
            let y = (k * band) as isize;
            img.line((y, 0), (y, width as isize - 1), GRID);
        }
        let rows = scale_to_band(&v, k * band, band);
        polyline(&mut img, &rows, width, PALETTE[k % PALETTE.len()]);
    }
    img
}

/// The rigid shifts (`T × 2`: axis 0 in blue, axis 1 in orange; further columns ignored) over
/// frames, on a white `height × width` plot whose vertical range is symmetric about zero
/// (± the largest |shift|, at least 1 pixel), with the zero line in light grey.
pub(crate) fn shifts(shifts: ArrayView2<'_, f64>, width: usize, height: usize) -> RgbImage {
    let (width, height) = (width.max(2), height.max(8));
    let mut img = RgbImage::new(height, width, WHITE);
    let amp = shifts.iter().filter(|v| v.is_finite()).fold(1f64, |m, v| m.max(v.abs()));
    let mid = (height / 2) as isize;
    img.line((mid, 0), (mid, width as isize - 1), GRID);
    let half = (height / 2).saturating_sub(2) as f64;
    for (col, color) in [(0, AXIS0), (1, AXIS1)] {
        if col >= shifts.ncols() {
            continue;
        }
        let rows: Vec<Option<isize>> = shifts
            .column(col)
            .iter()
            .map(|&s| s.is_finite().then(|| mid - (s / amp * half).round() as isize))
            .collect();
        polyline(&mut img, &rows, width, color);
    }
    img
}

/// How many times to enlarge a `d1 × d2` frame for a picture: up to 4, so that the larger side
/// reaches about 512 pixels; 1 for frames of 512 pixels or more.
pub(crate) fn zoom_for(d1: usize, d2: usize) -> usize {
    (512 / d1.max(d2).max(1)).clamp(1, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn outline_of_a_square_is_its_ring() {
        let mut m = Array2::from_elem((5, 5), false);
        for i in 1..4 {
            for j in 1..4 {
                m[[i, j]] = true;
            }
        }
        let o = outline(m.view());
        let ring: Vec<(usize, usize)> = o.indexed_iter().filter(|(_, v)| **v).map(|(p, _)| p).collect();
        assert_eq!(ring.len(), 8, "{ring:?}");
        assert!(!o[[2, 2]], "the centre is inside");
        assert!(ring.iter().all(|&(i, j)| m[[i, j]]), "outline pixels belong to the mask");
        // At the image edge the mask's edge pixels are outline too.
        let full = Array2::from_elem((3, 3), true);
        let o = outline(full.view());
        assert_eq!(o.iter().filter(|v| **v).count(), 8);
        assert!(!o[[1, 1]]);
        // A single pixel is its own outline.
        let dot = array![[false, false, false], [false, true, false], [false, false, false]];
        assert_eq!(outline(dot.view()), dot);
    }

    #[test]
    fn footprint_mask_thresholds_at_a_fifth_of_the_peak_in_fortran_order() {
        // 3 × 2 frame, footprint on pixels (0,0)=1.0, (1,1)=0.3, (2,1)=0.1 (F order p = i + 3j).
        let dense = array![[1.0f32], [0.0], [0.0], [0.0], [0.3], [0.1]];
        let a = CscMatrix::from_dense(dense.view());
        let m = footprint_mask(&a, 0, Dims::planar(3, 2), 0, 0.2);
        assert_eq!(m, array![[true, false], [false, true], [false, false]]);
        let zero = CscMatrix::from_dense(Array2::<f32>::zeros((6, 1)).view());
        assert!(!footprint_mask(&zero, 0, Dims::planar(3, 2), 0, 0.2).iter().any(|v| *v));
    }

    #[test]
    fn contours_draw_accepted_green_and_rejected_red() {
        let cn = Array2::from_shape_fn((6, 6), |(i, j)| (i * 6 + j) as f32);
        let mut a = Array2::from_elem((6, 6), false);
        a[[1, 1]] = true;
        let mut r = Array2::from_elem((6, 6), false);
        r[[4, 4]] = true;
        let img = contours(cn.view(), &[(a, true), (r, false)], 2);
        assert_eq!((img.height(), img.width()), (12, 12));
        // The 2 × 2 block of a one-pixel mask is all outline.
        for (i, j) in [(2, 2), (2, 3), (3, 2), (3, 3)] {
            assert_eq!(img.get(i, j), ACCEPTED);
        }
        for (i, j) in [(8, 8), (9, 9)] {
            assert_eq!(img.get(i, j), REJECTED);
        }
        // Elsewhere: the viridis background, dark at low values, bright at high ones.
        let (lo, hi) = (img.get(0, 0), img.get(11, 11));
        assert_eq!(lo, Colormap::Viridis.color(0.0));
        assert!(u32::from(hi[1]) > u32::from(lo[1]) + 100, "{lo:?} {hi:?}");
    }

    #[test]
    fn traces_scale_to_their_band() {
        let rows = scale_to_band(&[0.0, 5.0, 10.0, f64::NAN], 20, 10);
        // max at the top margin, min at the bottom margin, middle in between, NaN skipped.
        assert_eq!(rows, vec![Some(27), Some(25), Some(22), None]);
        assert_eq!(scale_to_band(&[3.0, 3.0], 0, 10), vec![Some(5), Some(5)]);
        let t = array![[0.0, 1.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]];
        let img = traces(t.view(), 4, 10);
        assert_eq!((img.height(), img.width()), (20, 4));
        // First trace: low at column 0, high at column 1, in the first colour.
        assert_eq!(img.get(7, 0), PALETTE[0]);
        assert_eq!(img.get(2, 1), PALETTE[0]);
        // Separator, then the constant second trace mid-band in the second colour.
        assert_eq!(img.get(10, 2), GRID);
        assert_eq!(img.get(15, 3), PALETTE[1]);
        assert_eq!(img.get(9, 3), WHITE);
    }

    #[test]
    fn shifts_plot_both_axes_about_zero() {
        let s = array![[2.0, -1.0], [2.0, -1.0], [-2.0, 1.0]];
        let img = shifts(s.view(), 3, 20);
        assert_eq!((img.height(), img.width()), (20, 3));
        // amp 2, half = 8: +2 → row 2, −1 → row 14, −2 → row 18.
        assert_eq!(img.get(2, 0), AXIS0);
        assert_eq!(img.get(14, 0), AXIS1);
        assert_eq!(img.get(18, 2), AXIS0);
        assert_eq!(img.get(6, 2), AXIS1);
        assert_eq!(img.get(10, 0), GRID, "zero line");
        assert_eq!(zoom_for(64, 64), 4);
        assert_eq!(zoom_for(200, 100), 2);
        assert_eq!(zoom_for(1024, 512), 1);
    }
}
