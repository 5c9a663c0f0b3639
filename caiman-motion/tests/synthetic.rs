//! Synthetic checks: CaImAn's own motion tests (catalog §2.11, ported to a synthetic image since
//! skimage's `lfw_subset` face is not available), 3-D registration, and property tests (injected
//! sub-pixel Fourier shifts are recovered; a shift followed by its inverse restores the image).

mod common;

use caiman_motion::fft::Fft3d;
use caiman_motion::legacy::motion_correct_iteration_fast;
use caiman_motion::register::{Registrar, SearchWindow, VolumeRegistrar, register_translation};
use caiman_motion::shift::{BorderMode, CubicWarper, DftShifter, apply_shifts_dft_3d};
use caiman_motion::{CorrectionOptions, FrameCorrector};
use common::{corr, smooth_image, textured_image};

/// A smooth, band-limited, periodic `n × n` image with an isotropic amplitude spectrum
/// (`exp(−ρ²/2σ²)`, σ = 0.06 cycles/px, random phases from `seed`), content displaced by `d`:
/// `img(x) = 100 + Σ_k A(|k|) cos(2π k·(x − d)/n + φ_k)` over a half plane of frequencies.
fn isotropic_image(n: usize, d: [f64; 2], seed: u64) -> Array2<f32> {
    let mut rng = common::Lcg(seed.wrapping_mul(7919).wrapping_add(3));
    let half = (n / 2) as i64;
    let mut terms = Vec::new();
    for k0 in -half..=half {
        for k1 in 0..=half {
            if k1 == 0 && k0 <= 0 {
                continue;
            }
            let (f0, f1) = (k0 as f64 / n as f64, k1 as f64 / n as f64);
            let a = 40.0 * (-(f0 * f0 + f1 * f1) / (2.0 * 0.06 * 0.06)).exp();
            // A radial cut-off keeps the spectrum isotropic.
            if a > 1e-4 {
                terms.push((f0, f1, a, 2.0 * std::f64::consts::PI * rng.next_f64()));
            }
        }
    }
    let tau = 2.0 * std::f64::consts::PI;
    // cos(θ0(i) + θ1(j)) = cos θ0 cos θ1 − sin θ0 sin θ1, with per-axis tables.
    let mut img = Array2::<f64>::from_elem((n, n), 100.0);
    for &(f0, f1, a, ph) in &terms {
        let t0: Vec<(f64, f64)> = (0..n).map(|i| (tau * f0 * (i as f64 - d[0]) + ph).sin_cos()).collect();
        let t1: Vec<(f64, f64)> = (0..n).map(|j| (tau * f1 * (j as f64 - d[1])).sin_cos()).collect();
        for ((i, j), v) in img.indexed_iter_mut() {
            *v += a * (t0[i].1 * t1[j].1 - t0[i].0 * t1[j].0);
        }
    }
    img.mapv(|v| v as f32)
}
use ndarray::{Array2, Array3, s};
use proptest::prelude::*;

/// CaImAn's test geometry: template = img[4:20, 4:24], frame = img[2:18, 0:20] (true shift (2, 4)).
fn caiman_pair() -> (Array2<f32>, Array2<f32>) {
    let img = textured_image(25, 25, 7);
    (img.slice(s![2..18, 0..20]).to_owned(), img.slice(s![4..20, 4..24]).to_owned())
}

#[test]
fn integer_shift_is_recovered_exactly() {
    let (frame, templ) = caiman_pair();
    let r = register_translation(frame.view(), templ.view(), 1, &SearchWindow::MaxShifts([10, 10])).unwrap();
    assert_eq!(r.shift, [2.0, 4.0]);
}

#[test]
fn fourier_unshift_has_exact_nan_mask_and_equals_template() {
    let (frame, templ) = caiman_pair();
    let mut reg = Registrar::<f64>::new([16, 20], 1);
    let tspec = reg.spectrum(templ.view(), 0.0);
    let r = reg.register(frame.view(), 0.0, &tspec, &SearchWindow::MaxShifts([10, 10])).unwrap();
    let mut out = Array2::<f64>::zeros((16, 20));
    DftShifter::new([16, 20]).shift_spectrum(reg.frame_spectrum(), r.shift.map(|v| -v), r.phasediff, out.view_mut());
    caiman_motion::shift::fix_border(out.view_mut(), r.shift.map(|v| -v), BorderMode::Nan, 0.0);
    for ((i, j), &v) in out.indexed_iter() {
        let masked = i >= 14 || j >= 16;
        assert_eq!(v.is_nan(), masked, "({i}, {j})");
        if !masked {
            let t = f64::from(templ[[i, j]]);
            assert!((v - t).abs() <= 1e-5 * t.abs(), "({i}, {j}): {v} vs {t}");
        }
    }
}

#[test]
fn rigid_tile_and_correct_recovers_shift() {
    let (frame, templ) = caiman_pair();
    let opts = CorrectionOptions {
        max_shifts: [4, 4],
        max_deviation_rigid: 0,
        strides: [96, 96],
        overlaps: [32, 32],
        border: BorderMode::Nan,
        ..common::reference_options()
    };
    let mut c = FrameCorrector::new(templ.view(), &opts).unwrap();
    let mut out = Array2::zeros(frame.dim());
    let sh = c.correct(frame.view(), out.view_mut()).unwrap();
    assert!((sh.rigid[0] + 2.0).abs() <= 0.2 * 2.0 && (sh.rigid[1] + 4.0).abs() <= 0.2 * 4.0, "{:?}", sh.rigid);
    assert!(corr(out.view(), templ.view()) >= 0.94);
}

#[test]
fn legacy_matcher_integer_shift_and_exact_warp() {
    let (frame, templ) = caiman_pair();
    let mut out = Array2::zeros(frame.dim());
    let shift = motion_correct_iteration_fast(frame.view(), templ.view(), [4, 4], out.view_mut()).unwrap();
    assert_eq!(shift, [-2.0, -4.0]);
    // An integer cubic warp is an exact copy: the valid region equals the template.
    let valid = out.slice(s![..14, ..16]);
    assert_eq!(valid, templ.slice(s![..14, ..16]));
    assert!((corr(valid, templ.slice(s![..14, ..16])) - 1.0).abs() < 1e-7);
}

#[test]
fn volume_registration_recovers_shift() {
    // CaImAn's 3-D test stacks 2-D images along axis 2 with a z-shift of 1.
    let planes: Vec<Array2<f32>> = (0..6).map(|k| textured_image(25, 25, 100 + k)).collect();
    let vol = Array3::from_shape_fn((25, 25, 6), |(i, j, k)| planes[k][[i, j]]);
    let templ = vol.slice(s![4..20, 4..24, 1..5]).to_owned();
    let frame = vol.slice(s![2..18, 0..20, 0..4]).to_owned();
    let mut reg = VolumeRegistrar::new(templ.view(), 0.0, 1).unwrap();
    let r = reg.register(frame.view(), 0.0, [4, 4, 1]).unwrap();
    assert_eq!(r.shift, [2.0, 4.0, 1.0]);
    // Sub-pixel recovery of an exact Fourier shift of a smooth volume (odd sizes, see below).
    let mut rng = common::Lcg(3);
    let blobs: Vec<[f64; 4]> = (0..10)
        .map(|_| [rng.next_f64() * 25.0, rng.next_f64() * 21.0, rng.next_f64() * 9.0, 1.5 + rng.next_f64()])
        .collect();
    let base = Array3::from_shape_fn((25, 21, 9), |(i, j, k)| {
        let p = [i as f64, j as f64, k as f64];
        10.0 + blobs
            .iter()
            .map(|b| {
                50.0 * (-((p[0] - b[0]).powi(2) + (p[1] - b[1]).powi(2) + (p[2] - b[2]).powi(2)) / (2.0 * b[3] * b[3]))
                    .exp()
            })
            .sum::<f64>() as f32
    });
    let mut fft = Fft3d::new([25, 21, 9]);
    let mut spec = Array3::zeros((25, 21, 9));
    fft.forward(base.view(), 0.0, spec.view_mut());
    let mut moved = Array3::<f64>::zeros((25, 21, 9));
    let d = [1.3, -2.6, 0.4];
    apply_shifts_dft_3d(&mut fft, spec.view(), d, 0.0, BorderMode::None, moved.view_mut());
    let moved = moved.mapv(|v| v as f32);
    let mut reg = VolumeRegistrar::new(base.view(), 0.0, 10).unwrap();
    let r = reg.register(moved.view(), 0.0, [5, 5, 3]).unwrap();
    for (got, want) in r.shift.iter().zip(d) {
        assert!((got - want).abs() < 0.06, "{:?}", r.shift);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// An injected sub-pixel shift `d` of a smooth image is recovered within 0.05 px per axis, by
    /// both arithmetics. The 0.1 px grid alone guarantees that only where the correlation peak
    /// is isotropic: the argmax over a 2-D grid of an elongated, tilted peak is not per-axis
    /// rounding (blob images gave up to 0.053 px). So the images here are band-limited with a
    /// radially symmetric amplitude spectrum and random phases on a square grid (isotropic
    /// autocorrelation), and the shift is injected exactly (each cosine evaluated at `x − d`,
    /// no interpolation). 0.05 px is the half grid step, reached at ties; the 1e-4 px above it
    /// covers tie-breaking by f32 rounding (3000 random cases, `injected_shift_worst_case`:
    /// worst 0.049995 px in f64, 0.050044 px in f32; blob images gave 0.053 px).
    #[test]
    fn injected_shift_is_recovered_within_005_px(d0 in -4.5f64..4.5, d1 in -4.5f64..4.5, seed in 0u64..1000) {
        let n = 65;
        let img = isotropic_image(n, [0.0, 0.0], seed);
        let moved = isotropic_image(n, [d0, d1], seed);
        let r = register_translation(moved.view(), img.view(), 10, &SearchWindow::MaxShifts([6, 6])).unwrap();
        let tol = 0.05 + 1e-4;
        prop_assert!((r.shift[0] - d0).abs() <= tol && (r.shift[1] - d1).abs() <= tol, "f64 {:?} vs {:?}", r.shift, [d0, d1]);
        let mut fast = Registrar::<f32>::new([n, n], 10);
        let spec = fast.spectrum(img.view(), 0.0);
        let r = fast.register(moved.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
        prop_assert!((r.shift[0] - d0).abs() <= tol && (r.shift[1] - d1).abs() <= tol, "f32 {:?} vs {:?}", r.shift, [d0, d1]);
    }

    /// Fourier shift then inverse shift restores the image (circular, exact for odd sizes: an
    /// even size loses the imaginary part of the Nyquist bins, as in CaImAn); cubic shift then
    /// inverse restores the interior to interpolation accuracy (5% of the range for this smooth
    /// image).
    #[test]
    fn shift_then_unshift_restores(d0 in -3.0f64..3.0, d1 in -3.0f64..3.0, seed in 0u64..1000) {
        let odd = smooth_image(47, 39, 8, seed);
        let range = odd.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let mut dft = DftShifter::new([47, 39]);
        let (mut a, mut b) = (Array2::<f64>::zeros((47, 39)), Array2::<f64>::zeros((47, 39)));
        dft.shift_image(odd.view(), 0.0, [d0, d1], 0.0, BorderMode::None, a.view_mut());
        dft.shift_image(a.view(), 0.0, [-d0, -d1], 0.0, BorderMode::None, b.view_mut());
        for (x, y) in b.iter().zip(odd.iter()) {
            prop_assert!((x - f64::from(*y)).abs() < 1e-9 * range);
        }
        let img = smooth_image(48, 40, 8, seed);
        let mut w = CubicWarper::new();
        let (mut c, mut e) = (Array2::<f32>::zeros((48, 40)), Array2::<f32>::zeros((48, 40)));
        w.translate(img.view(), 0.0, [d0, d1], BorderMode::Nan, c.view_mut());
        w.translate(c.view(), 0.0, [-d0, -d1], BorderMode::Nan, e.view_mut());
        let m = 8;
        let interior = e.slice(s![m..48 - m, m..40 - m]);
        let orig = img.slice(s![m..48 - m, m..40 - m]);
        for (x, y) in interior.iter().zip(orig.iter()) {
            prop_assert!(x.is_finite());
            prop_assert!((f64::from(*x) - f64::from(*y)).abs() < 0.05 * range, "{x} vs {y}");
        }
    }
}

/// The worst case of [`injected_shift_is_recovered_within_005_px`] over many random shifts (run
/// with `--ignored --nocapture`; measured: see the module report).
#[test]
#[ignore = "statistics over 3000 cases"]
#[allow(clippy::print_stderr)]
fn injected_shift_worst_case() {
    let n = 65;
    let mut rng = common::Lcg(99);
    let (mut worst64, mut worst32) = (0.0f64, 0.0f64);
    for case in 0..3000u64 {
        let d = [rng.next_f64() * 9.0 - 4.5, rng.next_f64() * 9.0 - 4.5];
        let img = isotropic_image(n, [0.0, 0.0], case % 50);
        let moved = isotropic_image(n, d, case % 50);
        let r = register_translation(moved.view(), img.view(), 10, &SearchWindow::MaxShifts([6, 6])).unwrap();
        worst64 = worst64.max((r.shift[0] - d[0]).abs()).max((r.shift[1] - d[1]).abs());
        let mut fast = Registrar::<f32>::new([n, n], 10);
        let spec = fast.spectrum(img.view(), 0.0);
        let r = fast.register(moved.view(), 0.0, &spec, &SearchWindow::MaxShifts([6, 6])).unwrap();
        worst32 = worst32.max((r.shift[0] - d[0]).abs()).max((r.shift[1] - d[1]).abs());
    }
    eprintln!("worst error over 3000 cases: f64 {worst64:.6} px, f32 {worst32:.6} px");
}
