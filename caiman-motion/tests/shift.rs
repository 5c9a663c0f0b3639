//! Applying shifts, against CaImAn 1.12.1 (`apply_shift_iteration_border_*.npy`,
//! `apply_shifts_dft_border_*.npy`; input `apply_shift_input.npy`, shift (2.3, −1.7)).
//!
//! Tolerances: the cubic warp emulates OpenCV's fixed-point coordinates and float32 weight table
//! exactly; our output is float32, so the comparison allows 1e-7 relative (measured ≤ 6e-8, i.e.
//! float32 rounding of an otherwise bit-identical float64 result). The Fourier shift is compared
//! in float64 at 1e-12 relative (CaImAn's reference is `N ×` the image because it passed an
//! unscaled `np.fft.fft2` spectrum to a function that inverts without scaling).

mod common;

use caiman_motion::fft::Fft2d;
use caiman_motion::fft::Spectrum;
use caiman_motion::shift::{BorderMode, CubicWarper, DftShifter, apply_shift_cubic};
use common::{load2_f32, load2_f64};
use ndarray::Array2;

const SHIFT: [f64; 2] = [2.3, -1.7];

#[track_caller]
fn check<A: Copy + Into<f64>>(ours: &Array2<A>, reference: &Array2<f64>, scale: f64, rtol: f64) {
    assert_eq!(ours.dim(), reference.dim());
    let mut worst = 0.0f64;
    for (&a, &b) in ours.iter().zip(reference.iter()) {
        let a: f64 = a.into() * scale;
        if b.is_nan() {
            assert!(a.is_nan(), "expected NaN, got {a}");
            continue;
        }
        assert!(!a.is_nan(), "unexpected NaN (reference {b})");
        let rel = (a - b).abs() / b.abs().max(1e-12);
        worst = worst.max(rel);
    }
    assert!(worst <= rtol, "max relative error {worst:e} > {rtol:e}");
}

#[test]
fn cubic_translation_matches_caiman_all_border_modes() {
    let input = load2_f32("apply_shift_input.npy");
    for (name, mode) in
        [("True", BorderMode::Nan), ("False", BorderMode::None), ("copy", BorderMode::Copy), ("min", BorderMode::Min)]
    {
        let reference = load2_f64(&format!("apply_shift_iteration_border_{name}.npy"));
        let mut out = Array2::<f32>::zeros(input.dim());
        apply_shift_cubic(input.view(), SHIFT, mode, out.view_mut());
        check(&out, &reference, 1.0, 1e-7);
    }
}

#[test]
fn cubic_translation_with_offset_is_offset_invariant_in_output() {
    // CaImAn warps `img + add_to_movie` and subtracts it again.
    let input = load2_f32("apply_shift_input.npy");
    let reference = load2_f64("apply_shift_iteration_border_copy.npy");
    let mut out = Array2::<f32>::zeros(input.dim());
    CubicWarper::new().translate(input.view(), 6.0, SHIFT, BorderMode::Copy, out.view_mut());
    check(&out, &reference, 1.0, 1e-6);
}

#[test]
fn fourier_shift_matches_caiman() {
    let input = load2_f32("apply_shift_input.npy");
    let (h, w) = input.dim();
    let n = (h * w) as f64;
    for (name, mode) in [("True", BorderMode::Nan), ("copy", BorderMode::Copy)] {
        let reference = load2_f64(&format!("apply_shifts_dft_border_{name}.npy"));
        let mut out = Array2::<f64>::zeros((h, w));
        DftShifter::new([h, w]).shift_image(input.view(), 0.0, SHIFT, 0.0, mode, out.view_mut());
        check(&out, &reference, n, 1e-12);
    }
}

#[test]
fn fourier_shift_from_cached_spectrum_equals_shift_image() {
    let input = load2_f32("apply_shift_input.npy");
    let (h, w) = input.dim();
    let mut spec = Spectrum::zeros([h, w]);
    Fft2d::new([h, w]).forward(input.view(), 0.0, &mut spec);
    let mut s = DftShifter::new([h, w]);
    let mut a = Array2::<f64>::zeros((h, w));
    let mut b = Array2::<f64>::zeros((h, w));
    s.shift_spectrum(&spec, [-0.4, 1.3], 0.2, a.view_mut());
    s.shift_image(input.view(), 0.0, [-0.4, 1.3], 0.2, BorderMode::None, b.view_mut());
    assert_eq!(a, b);
}

/// The fast path's separable `f32` translation against CaImAn's `apply_shift_iteration` (all
/// border modes): the same quantised shift and weights, `f32` sums (measured ≤ 1e-6 relative).
#[test]
fn fast_cubic_translation_matches_caiman_to_f32_rounding() {
    let input = load2_f32("apply_shift_input.npy");
    for (name, mode) in
        [("True", BorderMode::Nan), ("False", BorderMode::None), ("copy", BorderMode::Copy), ("min", BorderMode::Min)]
    {
        let reference = load2_f64(&format!("apply_shift_iteration_border_{name}.npy"));
        let mut out = Array2::<f32>::zeros(input.dim());
        CubicWarper::new().translate_fast(input.view(), 0.0, SHIFT, mode, out.view_mut());
        check(&out, &reference, 1.0, 2e-6);
        // Also through a non-contiguous input and with an offset.
        let t = input.t().to_owned();
        let mut out_t = Array2::<f32>::zeros(input.dim());
        CubicWarper::new().translate_fast(t.t(), 6.0, SHIFT, mode, out_t.view_mut());
        check(&out_t, &reference, 1.0, 5e-6);
    }
}

/// The fast remap against the exact (OpenCV-emulating, `f64`) remap on a smooth random field,
/// every border mode: `f32` rounding only (measured ≤ 2.2e-5 relative, on values near 0).
#[test]
fn fast_remap_matches_exact_remap() {
    let input = load2_f32("apply_shift_input.npy");
    let (h, w) = input.dim();
    let fy = Array2::from_shape_fn((h, w), |(i, j)| 1.7 + 0.8 * (i as f32 * 0.11).sin() - 0.02 * j as f32);
    let fx = Array2::from_shape_fn((h, w), |(i, j)| -2.2 + 0.6 * (j as f32 * 0.07).cos() + 0.03 * i as f32);
    for mode in [BorderMode::Copy, BorderMode::Nan, BorderMode::Min, BorderMode::None] {
        let mut exact = Array2::<f32>::zeros((h, w));
        let mut fast = Array2::<f32>::zeros((h, w));
        let mut warper = CubicWarper::new();
        warper.remap(input.view(), 3.0, fy.view(), fx.view(), mode, exact.view_mut());
        warper.remap_fast(input.view(), 3.0, fy.view(), fx.view(), mode, fast.view_mut());
        let exact = exact.mapv(f64::from);
        check(&fast, &exact, 1.0, 5e-5);
    }
}
