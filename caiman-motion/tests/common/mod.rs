//! Shared helpers of the integration tests: fixture paths and `.npy` loading.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use caiman_io::npy::{NpyData, read_npy};
use ndarray::{Array2, Array3, ArrayD, IxDyn};

/// A file in this crate's `test_data/`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data").join(name)
}

/// A file of the shared CaImAn reference tree (may be absent on some machines).
pub fn shared(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/motion").join(name);
    p.exists().then_some(p)
}

/// Loads any numeric `.npy` as `f64`.
pub fn load_f64(path: impl AsRef<std::path::Path>) -> ArrayD<f64> {
    let arr = read_npy(path.as_ref()).expect("read npy");
    let v = arr.to_f64().expect("numeric npy");
    ArrayD::from_shape_vec(IxDyn(&arr.shape), v).expect("npy shape")
}

/// Loads a float32 `.npy` exactly.
pub fn load_f32(path: impl AsRef<std::path::Path>) -> ArrayD<f32> {
    let arr = read_npy(path.as_ref()).expect("read npy");
    let v = match arr.data {
        NpyData::F32(v) => v,
        _ => arr.to_f32().expect("numeric npy"),
    };
    ArrayD::from_shape_vec(IxDyn(&arr.shape), v).expect("npy shape")
}

pub fn load2_f32(name: &str) -> Array2<f32> {
    load_f32(data(name)).into_dimensionality().expect("2-D")
}

pub fn load2_f64(name: &str) -> Array2<f64> {
    load_f64(data(name)).into_dimensionality().expect("2-D")
}

pub fn load3_f32(name: &str) -> Array3<f32> {
    load_f32(data(name)).into_dimensionality().expect("3-D")
}

/// Reads a JSON file of `test_data/`.
pub fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).expect("read json")).expect("json")
}

/// Deterministic 64-bit LCG for test images (no external RNG needed).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` random blobs `(row, col, sigma, amplitude)` in an `h × w` image, sigma uniform in
/// `lo..lo + span` and amplitude likewise.
fn draw_blobs(
    rng: &mut Lcg,
    n: usize,
    [h, w]: [usize; 2],
    sigma: (f64, f64),
    amp: (f64, f64),
) -> Vec<(f64, f64, f64, f64)> {
    (0..n)
        .map(|_| {
            (
                rng.next_f64() * h as f64,
                rng.next_f64() * w as f64,
                sigma.0 + sigma.1 * rng.next_f64(),
                amp.0 + amp.1 * rng.next_f64(),
            )
        })
        .collect()
}

/// A smooth synthetic image: `n_blobs` Gaussian blobs (σ 1.5–4) on a slow gradient, offset 10.
pub fn smooth_image(h: usize, w: usize, n_blobs: usize, seed: u64) -> Array2<f32> {
    let mut rng = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
    let blobs = draw_blobs(&mut rng, n_blobs, [h, w], (1.5, 2.5), (20.0, 80.0));
    Array2::from_shape_fn((h, w), |(i, j)| {
        let mut v = 10.0 + 0.05 * i as f64 + 0.03 * j as f64;
        for &(ci, cj, s, a) in &blobs {
            let d2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
            v += a * (-d2 / (2.0 * s * s)).exp();
        }
        v as f32
    })
}

/// Pearson correlation of the pairs where both values are finite.
pub fn corr(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f64 {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(&x, &y)| (f64::from(x), f64::from(y)))
        .collect();
    let n = pairs.len() as f64;
    let (ma, mb) = (pairs.iter().map(|p| p.0).sum::<f64>() / n, pairs.iter().map(|p| p.1).sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// A textured image (white noise over a few blobs), for tests on non-circular crops where a
/// smooth image's broad correlation peak is biased by the missing overlap.
pub fn textured_image(h: usize, w: usize, seed: u64) -> Array2<f32> {
    let mut rng = Lcg(seed.wrapping_mul(31).wrapping_add(17));
    let smooth = smooth_image(h, w, 3, seed);
    smooth.mapv(|v| v + 100.0 * rng.next_f64() as f32)
}

/// A "neuron field": many small Gaussian blobs (σ 1–2.2) on a flat background, no gradient —
/// for patch-wise registration, where ramps and wrap-arounds bias correlation peaks.
pub fn blob_field(h: usize, w: usize, seed: u64) -> Array2<f32> {
    let mut rng = Lcg(seed ^ 0xA5A5_5A5A);
    let n = h * w / 25;
    let blobs = draw_blobs(&mut rng, n, [h, w], (1.0, 1.2), (10.0, 40.0));
    Array2::from_shape_fn((h, w), |(i, j)| {
        let mut v = 5.0;
        for &(ci, cj, s, a) in &blobs {
            let d2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
            if d2 < 36.0 * s * s {
                v += a * (-d2 / (2.0 * s * s)).exp();
            }
        }
        v as f32
    })
}

/// The options of CaImAn's reference runs (`motion_params.json`): max_shifts 6, max_deviation_rigid
/// 3, strides 32, overlaps 16, OpenCV shifting, border `copy`, no offset. Tests override fields.
#[allow(dead_code)]
pub fn reference_options() -> caiman_motion::CorrectionOptions {
    caiman_motion::CorrectionOptions {
        max_shifts: [6, 6],
        max_deviation_rigid: 3,
        strides: [32, 32],
        overlaps: [16, 16],
        newstrides: None,
        newoverlaps: None,
        upsample_factor_fft: 10,
        upsample_factor_grid: 4,
        shifts_opencv: true,
        shifts_interpolate: false,
        border: caiman_motion::BorderMode::Copy,
        gsig_filt: None,
        add_to_movie: 0.0,
        precision: caiman_motion::Precision::F64,
    }
}
