//! Summary images: CaImAn reference images (`Cn.npy`, `Cn_4nb.npy`, `Cn_fft.npy`, mean and max
//! images of `cnmf_movie.tif`), brute-force Pearson correlations with explicit border neighbour
//! counts, chunked maxima, `bin_median`, `correlation_pnr`, 3-D neighbourhoods, executors and
//! bad input.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};

use caiman_cnmf::Error;
use caiman_cnmf::summary::{
    self, BackgroundFilter, Chunking, CorrOptions, Neighbours, PnrOptions, SummaryOptions, correlation_pnr,
    local_correlations, local_correlations_fft, local_correlations_fft_volume, local_correlations_volume,
    summary_images, summary_images_movie, summary_images_view,
};
use caiman_io::{Dims, Movie, OpenOptions, Shape, WriteOptions};
use caiman_parallel::{Linear, Threads};
use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis};
use proptest::prelude::*;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/summary").join(name)
}

fn reference_movie() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/cnmf/cnmf_movie.tif");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: reference movie {} is absent", p.display());
        None
    }
}

fn npy(name: &str) -> (Vec<usize>, Vec<f64>) {
    let a = caiman_io::npy::read_npy(test_data(name)).unwrap();
    (a.shape.clone(), a.to_f64().unwrap())
}

/// Deterministic pseudo-random numbers (xorshift64*), uniform in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A movie with spatially correlated structure: a few shared signals plus noise.
fn random_movie(t: usize, d1: usize, d2: usize, seed: u64) -> Array3<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let shared: Vec<f64> = (0..t).map(|_| rng.normal()).collect();
    Array3::from_shape_fn((t, d1, d2), |(k, i, j)| {
        let w = ((i + j) % 3) as f64 * 0.7;
        (10.0 + w * shared[k] + rng.normal() + (i as f64) * 0.5) as f32
    })
}

/// Population Pearson correlation, two-pass f64; NaN when a variance is zero.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (sab / n) / ((saa / n).sqrt() * (sbb / n).sqrt())
}

fn trace3(m: ArrayView3<'_, f32>, i: usize, j: usize) -> Vec<f64> {
    m.iter().skip(i * m.dim().2 + j).step_by(m.dim().1 * m.dim().2).map(|&v| f64::from(v)).collect()
}

/// Brute-force CaImAn `local_correlations` of a planar movie: explicit neighbour lists. With
/// `quirk` (8 neighbours), CaImAn's misplaced diagonals: pixel `(a,b)` gets the pair
/// `(a,b−1)–(a−1,b)` for its up-left term and `(a,b−1)–(a+1,b)` for its down-left term.
fn brute_cn(m: ArrayView3<'_, f32>, eight: bool, order_mean: f64, fft: bool, quirk: bool) -> Vec<f64> {
    let (_, d1, d2) = m.dim();
    let offsets: Vec<(isize, isize)> = if eight {
        vec![(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    } else {
        vec![(-1, 0), (1, 0), (0, -1), (0, 1)]
    };
    let mut out = Vec::with_capacity(d1 * d2);
    for i in 0..d1 {
        for j in 0..d2 {
            let a = trace3(m, i, j);
            let mut rhos = Vec::new();
            for &(di, dj) in &offsets {
                let (ii, jj) = (i as isize + di, j as isize + dj);
                if ii < 0 || jj < 0 || ii >= d1 as isize || jj >= d2 as isize {
                    continue;
                }
                let r = match (quirk && eight, di, dj) {
                    (true, -1 | 1, -1) => pearson(&trace3(m, i, j - 1), &trace3(m, ii as usize, j)),
                    _ => pearson(&a, &trace3(m, ii as usize, jj as usize)),
                };
                rhos.push(if fft && r.is_nan() { 0.0 } else { r });
            }
            out.push(aggregate(&rhos, order_mean));
        }
    }
    out
}

fn aggregate(rhos: &[f64], order_mean: f64) -> f64 {
    let n = rhos.len() as f64;
    if order_mean == 0.0 {
        rhos.iter().product::<f64>().powf(1.0 / n)
    } else {
        (rhos.iter().map(|r| r.powf(order_mean)).sum::<f64>() / n).powf(1.0 / order_mean)
    }
}

/// Brute-force correlation image of a volume `T × d1 × d2 × d3` over the given neighbour offsets.
fn brute_cn_volume(m: ArrayView4<'_, f32>, offsets: &[(isize, isize, isize)], fft: bool) -> Vec<f64> {
    let (_, d1, d2, d3) = m.dim();
    let tr = |i: usize, j: usize, k: usize| -> Vec<f64> {
        m.index_axis(Axis(3), k).index_axis(Axis(2), j).index_axis(Axis(1), i).iter().map(|&v| f64::from(v)).collect()
    };
    let mut out = Vec::new();
    for i in 0..d1 {
        for j in 0..d2 {
            for k in 0..d3 {
                let a = tr(i, j, k);
                let mut rhos = Vec::new();
                for &(di, dj, dk) in offsets {
                    let (ii, jj, kk) = (i as isize + di, j as isize + dj, k as isize + dk);
                    if ii < 0 || jj < 0 || kk < 0 || ii >= d1 as isize || jj >= d2 as isize || kk >= d3 as isize {
                        continue;
                    }
                    let r = pearson(&a, &tr(ii as usize, jj as usize, kk as usize));
                    rhos.push(if fft && r.is_nan() { 0.0 } else { r });
                }
                out.push(aggregate(&rhos, 1.0));
            }
        }
    }
    out
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn flat(a: &Array3<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

fn write_npy_movie(dir: &Path, name: &str, m: &Array3<f32>) -> PathBuf {
    let path = dir.join(name);
    let (t, d1, d2) = m.dim();
    let a = caiman_io::npy::NpyArray::f32(vec![t, d1, d2], m.iter().copied().collect());
    caiman_io::npy::write_npy(&path, &a).unwrap();
    path
}

// ------------------------------------------------------------------------------------------------
// CaImAn reference (cnmf_movie.tif, 1000 × 128 × 128)
// ------------------------------------------------------------------------------------------------

#[test]
fn reference_local_correlations_match_caiman() {
    let Some(path) = reference_movie() else { return };
    let movie = caiman_io::load(&path, &OpenOptions::default()).unwrap();
    for (neighbours, file) in [(Neighbours::Eight, "Cn.npy"), (Neighbours::Four, "Cn_4nb.npy")] {
        let (shape, want) = npy(file);
        assert_eq!(shape, vec![128, 128]);
        let cn = local_correlations(movie.view(), &CorrOptions { neighbours, ..CorrOptions::default() }).unwrap();
        let got: Vec<f64> = cn.iter().copied().collect();
        let diff = max_abs_diff(&got, &want);
        eprintln!("{file}: max |Δ| = {diff:.3e}");
        // Issue requirement: 1e-5 (CaImAn computes in float32; this port in f64).
        assert!(diff <= 1e-5, "{file}: max abs diff {diff}");
    }
}

#[test]
fn reference_streamed_summary_matches_caiman() {
    let Some(path) = reference_movie() else { return };
    let opts = SummaryOptions { median_window: Some(10), ..SummaryOptions::default() };
    let img = summary_images(&path, &OpenOptions::default(), &opts, &Linear::new()).unwrap();
    assert_eq!((img.frames, img.dims), (1000, Dims::planar(128, 128)));
    assert_eq!(img.chunks, vec![0..1000]);
    let cn = flat(&img.cn);
    let d = max_abs_diff(&cn, &npy("Cn.npy").1);
    eprintln!("streamed Cn: max |Δ| = {d:.3e}");
    assert!(d <= 1e-5);

    // local_correlations_fft: CaImAn's reference is float32 throughout (standardised movie,
    // filter2D, products and a sequential float32 mean over 1000 frames): its rounding is
    // ~1e-7 per operation and accumulates over the frames (measured: 2.9e-6); 1e-5 bounds it.
    let fft = flat(img.cn_fft.as_ref().unwrap());
    let (_, want_fft) = npy("Cn_fft.npy");
    let d = max_abs_diff(&fft, &want_fft);
    eprintln!("streamed Cn_fft vs float32 reference: max |Δ| = {d:.3e}");
    assert!(d <= 1e-5);

    // Mean: exact f64 reference (integer-valued movie: all sums exact).
    let mean = flat(&img.mean);
    let (_, want64) = npy("mean_image_f64.npy");
    let d = max_abs_diff(&mean, &want64);
    eprintln!("mean vs float64 mean: max |Δ| = {d:.3e}");
    assert!(d <= 1e-12);
    // The float32-accumulated numpy mean: relative error of a float32 sum of 1000 values ≲ 1000·2⁻²⁴.
    let (_, want32) = npy("mean_image.npy");
    let rel = mean.iter().zip(&want32).map(|(g, w)| ((g - w) / w).abs()).fold(0.0, f64::max);
    eprintln!("mean vs float32-accumulated mean: max relative |Δ| = {rel:.3e}");
    assert!(rel <= 1e-4);
    // Max: exact.
    let (_, want_max) = npy("max_image.npy");
    let got_max: Vec<f64> = img.max.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(got_max, want_max);
    assert!(img.median.is_some());
}

// ------------------------------------------------------------------------------------------------
// Brute force
// ------------------------------------------------------------------------------------------------

fn movie_strategy() -> impl Strategy<Value = Array3<f32>> {
    (2usize..24, 1usize..6, 1usize..6).prop_flat_map(|(t, d1, d2)| {
        proptest::collection::vec(-50.0f32..50.0, t * d1 * d2)
            .prop_map(move |v| Array3::from_shape_vec((t, d1, d2), v).unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Direct and FFT correlation images against explicit per-pixel neighbour lists (border
    /// counts included), for 4/8 neighbours (CaImAn's or true diagonals) and order_mean 1, 2, 3
    /// and 0 (geometric).
    #[test]
    fn matches_brute_force(
        m in movie_strategy(),
        eight in any::<bool>(),
        quirk in any::<bool>(),
        order in prop::sample::select(vec![1.0, 2.0, 3.0, 0.0]),
    ) {
        let neighbours = if eight { Neighbours::Eight } else { Neighbours::Four };
        let opts = CorrOptions { neighbours, order_mean: order, chunking: None, caiman_diagonals: quirk };
        let cn = local_correlations(m.view(), &opts).unwrap();
        let want = brute_cn(m.view(), eight, order, false, quirk);
        assert_close(&cn.iter().copied().collect::<Vec<_>>(), &want, 1e-9, "direct");
        let fft = local_correlations_fft(m.view(), neighbours).unwrap();
        let want = brute_cn(m.view(), eight, 1.0, true, false);
        assert_close(&fft.iter().copied().collect::<Vec<_>>(), &want, 1e-9, "fft");
    }

    /// Mean, max and bin_median against direct formulas (median: CaImAn's interleaved windows).
    #[test]
    fn mean_max_median_match_brute_force(m in movie_strategy(), window in 1usize..12) {
        let (t, d1, d2) = m.dim();
        let opts = SummaryOptions { median_window: Some(window), frames_per_task: 3, ..SummaryOptions::default() };
        let img = summary_images_view(m.view(), &opts).unwrap();
        let w = window.min(t);
        let n = t / w;
        for i in 0..d1 {
            for j in 0..d2 {
                let tr = trace3(m.view(), i, j);
                let mean = tr.iter().sum::<f64>() / t as f64;
                prop_assert!((img.mean[[i, j, 0]] - mean).abs() <= 1e-12 * (1.0 + mean.abs()));
                let mx = tr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                prop_assert_eq!(f64::from(img.max[[i, j, 0]]), mx);
                let mut means: Vec<f64> = (0..n)
                    .map(|k| (0..w).map(|r| tr[r * n + k]).sum::<f64>() / w as f64)
                    .map(|v| f64::from(v as f32))
                    .collect();
                means.sort_by(f64::total_cmp);
                let med = if n % 2 == 1 { means[n / 2] } else { (means[n / 2 - 1] + means[n / 2]) / 2.0 };
                let got = img.median.as_ref().unwrap()[[i, j, 0]];
                prop_assert!((got - med).abs() <= 1e-6 * (1.0 + med.abs()), "median {} vs {}", got, med);
            }
        }
    }
}

#[test]
fn shared_signal_gives_rho_one() {
    // 1 × 2 image: each pixel has one neighbour, so Cn is that pair's ρ.
    let mut rng = Rng(7);
    let s: Vec<f64> = (0..200).map(|_| rng.normal()).collect();
    let m =
        Array3::from_shape_fn((200, 1, 2), |(t, _, j)| if j == 0 { s[t] as f32 } else { (3.0 * s[t] + 5.0) as f32 });
    let cn = local_correlations(m.view(), &CorrOptions::default()).unwrap();
    assert!((cn[[0, 0]] - 1.0).abs() < 1e-6 && (cn[[0, 1]] - 1.0).abs() < 1e-6, "{cn:?}");
    let anti = m.mapv(|v| v) * Array3::from_shape_fn((1, 1, 2), |(_, _, j)| if j == 0 { 1.0 } else { -1.0 });
    let cn = local_correlations(anti.view(), &CorrOptions::default()).unwrap();
    assert!((cn[[0, 0]] + 1.0).abs() < 1e-6, "{cn:?}");

    // In a larger noisy movie, two neighbouring pixels sharing a signal (their Pearson ρ is 1):
    // the image still matches the brute force that averages that ρ = 1 with the others.
    let mut m = random_movie(300, 5, 6, 3);
    for t in 0..300 {
        let v = m[[t, 2, 2]];
        m[[t, 2, 3]] = v;
    }
    let cn = local_correlations(m.view(), &CorrOptions::default()).unwrap();
    let want = brute_cn(m.view(), true, 1.0, false, true);
    assert_close(&cn.iter().copied().collect::<Vec<_>>(), &want, 1e-9, "shared");
    assert!((pearson(&trace3(m.view(), 2, 2), &trace3(m.view(), 2, 3)) - 1.0).abs() < 1e-12);
}

#[test]
fn zero_variance_pixels_are_nan_direct_and_zero_fft() {
    let mut m = random_movie(50, 4, 5, 11);
    for t in 0..50 {
        m[[t, 1, 1]] = 42.0;
    }
    // With true diagonals the constant pixel and its 8 neighbours are NaN (CaImAn: 0/0 in the
    // standardisation).
    let cn = local_correlations(m.view(), &CorrOptions { caiman_diagonals: false, ..CorrOptions::default() }).unwrap();
    for i in 0..4 {
        for j in 0..5 {
            let near = i <= 2 && j <= 2;
            assert_eq!(cn[[i, j]].is_nan(), near, "({i},{j}) = {}", cn[[i, j]]);
        }
    }
    // CaImAn's diagonals spread the NaN to the pixels that receive pairs involving it.
    let cn = local_correlations(m.view(), &CorrOptions::default()).unwrap();
    assert_close(&cn.iter().copied().collect::<Vec<_>>(), &brute_cn(m.view(), true, 1.0, false, true), 1e-9, "quirk");
    // (2,2)'s up-left term is the pair (2,1)–(1,2), not (2,2)–(1,1): finite.
    assert!(cn[[1, 1]].is_nan() && cn[[1, 2]].is_nan() && cn[[2, 2]].is_finite() && cn[[3, 3]].is_finite());
    let fft = local_correlations_fft(m.view(), Neighbours::Eight).unwrap();
    assert!(fft.iter().all(|v| v.is_finite()));
    assert_close(&fft.iter().copied().collect::<Vec<_>>(), &brute_cn(m.view(), true, 1.0, true, false), 1e-9, "fft");
    assert_eq!(fft[[1, 1]], 0.0);
}

#[test]
fn fft_equals_direct_without_zero_variance() {
    let m = random_movie(80, 7, 9, 5);
    for nb in [Neighbours::Four, Neighbours::Eight] {
        let opts = CorrOptions { neighbours: nb, caiman_diagonals: false, ..CorrOptions::default() };
        let a = local_correlations(m.view(), &opts).unwrap();
        let b = local_correlations_fft(m.view(), nb).unwrap();
        assert_close(&a.iter().copied().collect::<Vec<_>>(), &b.iter().copied().collect::<Vec<_>>(), 1e-12, "fft");
    }
}

// ------------------------------------------------------------------------------------------------
// Chunked maximum (movie.local_correlations, T > 3000)
// ------------------------------------------------------------------------------------------------

/// Brute force of CaImAn's chunk loop: `Cn = zeros; Cn = maximum(Cn, rho(chunk))`.
fn brute_chunked(m: ArrayView3<'_, f32>, chunks: &[std::ops::Range<usize>], eight: bool) -> Vec<f64> {
    let mut cn = vec![0.0f64; m.dim().1 * m.dim().2];
    for c in chunks {
        let rho = brute_cn(m.slice(ndarray::s![c.clone(), .., ..]), eight, 1.0, false, true);
        for (a, b) in cn.iter_mut().zip(rho) {
            *a = if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) };
        }
    }
    cn
}

#[test]
fn chunked_max_matches_brute_force() {
    // The shared signal fades in and out so that chunks differ; some pixels anti-correlated.
    let (t, d1, d2) = (3700, 3, 4);
    let mut rng = Rng(99);
    let s: Vec<f64> = (0..t).map(|_| rng.normal()).collect();
    let m = Array3::from_shape_fn((t, d1, d2), |(k, i, j)| {
        let w = if k < 1500 { 1.0 } else { 0.2 } * if (i + j) % 2 == 0 { 1.0 } else { -1.0 };
        (w * s[k] + rng.normal()) as f32
    });
    let opts = CorrOptions { chunking: Some(Chunking::default()), ..CorrOptions::default() };
    let cn = local_correlations(m.view(), &opts).unwrap();
    let want = brute_chunked(m.view(), &[0..1500, 1500..3700], true);
    assert_close(&cn.iter().copied().collect::<Vec<_>>(), &want, 1e-9, "chunked 1500");
    // Negative correlations are clipped at 0 by CaImAn's zero start ([Q] kept).
    assert!(cn.iter().all(|&v| v >= 0.0));

    // Chunk size is an option; the last chunk extends to the end.
    let opts = CorrOptions { chunking: Some(Chunking { min_frames: 3000, frames_per_chunk: 1000 }), ..opts };
    let cn = local_correlations(m.view(), &opts).unwrap();
    let want = brute_chunked(m.view(), &[0..1000, 1000..2000, 2000..3700], true);
    assert_close(&cn.iter().copied().collect::<Vec<_>>(), &want, 1e-9, "chunked 1000");

    // Streamed with tasks: the chunk boundaries are respected and reported.
    let dir = tempfile::tempdir().unwrap();
    let path = write_npy_movie(dir.path(), "long.npy", &m);
    let so = SummaryOptions { corr: opts, frames_per_task: 700, ..SummaryOptions::default() };
    let img = summary_images(&path, &OpenOptions::default(), &so, &Threads::new(2).unwrap()).unwrap();
    assert_eq!(img.chunks, vec![0..1000, 1000..2000, 2000..3700]);
    assert_close(&flat(&img.cn), &want, 1e-9, "streamed chunked");
    // The FFT image is over the whole movie.
    let whole = brute_cn(m.view(), true, 1.0, true, false);
    assert_close(&flat(img.cn_fft.as_ref().unwrap()), &whole, 1e-9, "whole-movie fft");

    // T ≤ min_frames: no chunking.
    let short = m.slice(ndarray::s![..3000, .., ..]);
    let cn = local_correlations(short, &CorrOptions { chunking: Some(Chunking::default()), ..CorrOptions::default() })
        .unwrap();
    assert_close(&cn.iter().copied().collect::<Vec<_>>(), &brute_cn(short, true, 1.0, false, true), 1e-9, "3000");
}

// ------------------------------------------------------------------------------------------------
// Streaming, executors, in-memory
// ------------------------------------------------------------------------------------------------

#[test]
fn streamed_equals_in_memory_and_executors_agree() {
    let m = random_movie(257, 9, 11, 21);
    let dir = tempfile::tempdir().unwrap();
    let npy_path = write_npy_movie(dir.path(), "m.npy", &m);
    let tif_path = dir.path().join("m.tif");
    caiman_io::save(&tif_path, &Movie::from_array3(m.clone()), &WriteOptions::default()).unwrap();
    for median_window in [None, Some(10)] {
        let opts = SummaryOptions { median_window, frames_per_task: 60, ..SummaryOptions::default() };
        let mem = summary_images_view(m.view(), &opts).unwrap();
        let lin = summary_images(&npy_path, &OpenOptions::default(), &opts, &Linear::new()).unwrap();
        let thr = summary_images(&tif_path, &OpenOptions::default(), &opts, &Threads::new(2).unwrap()).unwrap();
        assert!(lin.stats.as_ref().unwrap().tasks >= 4);
        for other in [&lin, &thr] {
            // Bit-identical: the same plan, sums added in the same order.
            assert_eq!(
                flat(&mem.cn).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                flat(&other.cn).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(mem.cn_fft, other.cn_fft);
            assert_eq!(mem.mean, other.mean);
            assert_eq!(mem.max, other.max);
            assert_eq!(mem.median, other.median);
        }
        let via_movie = summary_images_movie(&Movie::from_array3(m.clone()), &opts).unwrap();
        assert_eq!(
            via_movie.cn.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            mem.cn.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_close(&flat(&mem.cn), &brute_cn(m.view(), true, 1.0, false, true), 1e-9, "vs brute");
    }
    // The task split does not change the result beyond rounding.
    let a = summary_images_view(m.view(), &SummaryOptions { frames_per_task: 1, ..SummaryOptions::default() }).unwrap();
    let b = summary_images_view(m.view(), &SummaryOptions { frames_per_task: 10_000, ..SummaryOptions::default() })
        .unwrap();
    assert_close(&flat(&a.cn), &flat(&b.cn), 1e-12, "task split");
}

#[test]
fn task_registry_accepts_the_task() {
    let _ = summary::register_tasks(caiman_parallel::Registry::new());
}

// ------------------------------------------------------------------------------------------------
// Volumes
// ------------------------------------------------------------------------------------------------

#[test]
fn volume_six_and_twenty_six_neighbours() {
    let (t, d1, d2, d3) = (60, 3, 4, 5);
    let mut rng = Rng(1234);
    let s: Vec<f64> = (0..t).map(|_| rng.normal()).collect();
    let m = Array4::from_shape_fn((t, d1, d2, d3), |(k, i, j, l)| {
        (((i + 2 * j + l) % 4) as f64 * 0.5 * s[k] + rng.normal()) as f32
    });
    let six = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)];
    for nb in [Neighbours::Four, Neighbours::Eight] {
        // Direct: always 6 neighbours (CaImAn).
        let cn =
            local_correlations_volume(m.view(), &CorrOptions { neighbours: nb, ..CorrOptions::default() }).unwrap();
        assert_eq!(cn.dim(), (d1, d2, d3));
        assert_close(&flat(&cn), &brute_cn_volume(m.view(), &six, false), 1e-9, "6-nbh");
    }
    let mut all26 = Vec::new();
    for a in -1isize..=1 {
        for b in -1isize..=1 {
            for c in -1isize..=1 {
                if (a, b, c) != (0, 0, 0) {
                    all26.push((a, b, c));
                }
            }
        }
    }
    let fft = local_correlations_fft_volume(m.view(), Neighbours::Eight).unwrap();
    assert_close(&flat(&fft), &brute_cn_volume(m.view(), &all26, true), 1e-9, "26-nbh fft");
    let fft6 = local_correlations_fft_volume(m.view(), Neighbours::Four).unwrap();
    assert_close(&flat(&fft6), &brute_cn_volume(m.view(), &six, true), 1e-9, "6-nbh fft");

    // The same through a volumetric Movie (summary_images_movie).
    let movie = Movie::from_array4(m.clone());
    let img = summary_images_movie(&movie, &SummaryOptions::default()).unwrap();
    assert_close(&flat(&img.cn), &brute_cn_volume(m.view(), &six, false), 1e-9, "movie volume");
}

// ------------------------------------------------------------------------------------------------
// correlation_pnr
// ------------------------------------------------------------------------------------------------

/// OpenCV getGaussianKernel(n, σ, CV_32F).
fn gk(n: usize, sigma: f64) -> Vec<f32> {
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = i as f64 - (n as f64 - 1.0) / 2.0;
            (-x * x / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let s: f64 = v.iter().map(|&x| f64::from(x)).sum();
    v.iter().map(|&x| (f64::from(x) / s) as f32).collect()
}

/// Brute-force correlation_pnr (symmetric gSig, 'disk' filter or none).
fn brute_pnr(m: ArrayView3<'_, f32>, g_sig: Option<f64>) -> (Vec<f64>, Vec<f64>) {
    let (t, d1, d2) = m.dim();
    let mut filt = m.to_owned();
    if let Some(g) = g_sig {
        let k = (2.0 * g) as usize * 2 + 1;
        let g1 = gk(k, g);
        let psf: Vec<Vec<f32>> = (0..k).map(|i| (0..k).map(|j| g1[i] * g1[j]).collect()).collect();
        let thr = psf[0].iter().copied().fold(f32::MIN, f32::max);
        let inside: Vec<(usize, usize)> =
            (0..k).flat_map(|i| (0..k).map(move |j| (i, j))).filter(|&(i, j)| psf[i][j] >= thr).collect();
        let mean = inside.iter().map(|&(i, j)| f64::from(psf[i][j])).sum::<f64>() / inside.len() as f64;
        let r = (k / 2) as isize;
        for f in 0..t {
            for i in 0..d1 {
                for j in 0..d2 {
                    let mut acc = 0.0;
                    for &(u, v) in &inside {
                        let ii = (i as isize + u as isize - r).clamp(0, d1 as isize - 1) as usize;
                        let jj = (j as isize + v as isize - r).clamp(0, d2 as isize - 1) as usize;
                        acc += (f64::from(psf[u][v]) - mean) * f64::from(m[[f, ii, jj]]);
                    }
                    filt[[f, i, j]] = acc as f32;
                }
            }
        }
    }
    let mut pnr = vec![0.0; d1 * d2];
    let mut tmp = Array3::<f32>::zeros((t, d1, d2));
    for i in 0..d1 {
        for j in 0..d2 {
            let mean = (0..t).map(|f| f64::from(filt[[f, i, j]])).sum::<f64>() / t as f64;
            let y: Vec<f64> = (0..t).map(|f| f64::from((f64::from(filt[[f, i, j]]) - mean) as f32)).collect();
            let mx = y.iter().copied().fold(f64::MIN, f64::max);
            // Naive DFT; 'mean' of |X_k|²/T over 0.25 < k/T ≤ 0.5.
            let mut acc = 0.0;
            let mut cnt = 0;
            for k in 0..=t / 2 {
                let fk = k as f64 * (1.0 / t as f64);
                if fk > 0.25 && fk <= 0.5 {
                    let (mut re, mut im) = (0.0, 0.0);
                    for (n, v) in y.iter().enumerate() {
                        let ang = -2.0 * std::f64::consts::PI * (k * n) as f64 / t as f64;
                        re += v * ang.cos();
                        im += v * ang.sin();
                    }
                    acc += (re * re + im * im) / t as f64;
                    cnt += 1;
                }
            }
            let sn = (acc / cnt as f64).sqrt();
            pnr[i * d2 + j] = if sn > 0.0 { (mx / sn).max(0.0) } else { 0.0 };
            for f in 0..t {
                let z = if sn > 0.0 { (y[f] / sn) as f32 } else { 0.0 };
                tmp[[f, i, j]] = if z < 3.0 { 0.0 } else { z };
            }
        }
    }
    (brute_cn(tmp.view(), true, 1.0, true, false), pnr)
}

#[test]
fn correlation_pnr_matches_brute_force() {
    // Sparse bright transients on a smooth background.
    let (t, d1, d2) = (64, 12, 14);
    let mut rng = Rng(42);
    let events: Vec<f64> = (0..t).map(|_| if rng.next() < 0.1 { 8.0 } else { 0.0 }).collect();
    let m = Array3::from_shape_fn((t, d1, d2), |(f, i, j)| {
        let blob = (-(((i as f64 - 6.0).powi(2) + (j as f64 - 7.0).powi(2)) / 6.0)).exp();
        (20.0 + 0.3 * i as f64 + blob * events[f] + 0.5 * rng.normal()) as f32
    });
    for g in [None, Some(1.5), Some(2.0)] {
        let opts = PnrOptions { g_sig: g.map(|v| [v, v]), ..PnrOptions::default() };
        let out = correlation_pnr(m.view(), &opts).unwrap();
        let (cn, pnr) = brute_pnr(m.view(), g);
        let got_pnr: Vec<f64> = out.pnr.iter().copied().collect();
        assert_close(&got_pnr, &pnr, 1e-9, "pnr");
        let got_cn: Vec<f64> = out.cn.iter().copied().collect();
        let d = max_abs_diff(&got_cn, &cn);
        assert!(d <= 1e-5, "cn max |Δ| {d} (g {g:?})");
        assert!(got_cn.iter().any(|&v| v > 0.1), "the blob should correlate");
    }
    // 'box' and plain Gaussian run and give finite images.
    for (center_psf, bf) in [(true, BackgroundFilter::Box), (false, BackgroundFilter::Disk)] {
        let opts = PnrOptions { g_sig: Some([2.0, 2.0]), center_psf, background_filter: bf };
        let out = correlation_pnr(m.view(), &opts).unwrap();
        assert!(out.pnr.iter().chain(out.cn.iter()).all(|v| v.is_finite()));
    }
}

// ------------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------------

#[test]
fn bad_input_is_a_typed_error() {
    let m = random_movie(20, 4, 4, 1);
    let empty = Array3::<f32>::zeros((0, 4, 4));
    assert!(matches!(local_correlations(empty.view(), &CorrOptions::default()), Err(Error::Empty { .. })));
    let no_pixels = Array3::<f32>::zeros((5, 0, 4));
    assert!(matches!(local_correlations(no_pixels.view(), &CorrOptions::default()), Err(Error::Empty { .. })));
    let mut nan = m.clone();
    nan[[3, 1, 2]] = f32::NAN;
    assert!(matches!(local_correlations(nan.view(), &CorrOptions::default()), Err(Error::NonFinite { .. })));
    let mut inf = m.clone();
    inf[[0, 0, 0]] = f32::INFINITY;
    assert!(matches!(summary_images_view(inf.view(), &SummaryOptions::default()), Err(Error::NonFinite { .. })));
    let bad = CorrOptions { order_mean: f64::NAN, ..CorrOptions::default() };
    assert!(matches!(local_correlations(m.view(), &bad), Err(Error::InvalidParam(_))));
    let bad = CorrOptions { chunking: Some(Chunking { min_frames: 0, frames_per_chunk: 0 }), ..CorrOptions::default() };
    assert!(matches!(local_correlations(m.view(), &bad), Err(Error::InvalidParam(_))));
    let bad = SummaryOptions { frames_per_task: 0, ..SummaryOptions::default() };
    assert!(matches!(summary_images_view(m.view(), &bad), Err(Error::InvalidParam(_))));
    let bad = SummaryOptions { median_window: Some(0), ..SummaryOptions::default() };
    assert!(matches!(summary_images_view(m.view(), &bad), Err(Error::InvalidParam(_))));
    for g in [[-1.0, 2.0], [f64::NAN, 1.0], [0.0, 0.0]] {
        let o = PnrOptions { g_sig: Some(g), ..PnrOptions::default() };
        assert!(matches!(correlation_pnr(m.view(), &o), Err(Error::InvalidParam(_))));
    }
    let one = m.slice(ndarray::s![..1, .., ..]);
    assert!(matches!(correlation_pnr(one, &PnrOptions::default()), Err(Error::InvalidParam(_))));
    assert!(matches!(correlation_pnr(nan.view(), &PnrOptions::default()), Err(Error::NonFinite { .. })));
    // Files: missing, and NaN inside a streamed movie.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.tif");
    let r = summary_images(&missing, &OpenOptions::default(), &SummaryOptions::default(), &Linear::new());
    assert!(matches!(r, Err(Error::Io(_))));
    let path = write_npy_movie(dir.path(), "nan.npy", &nan);
    let r = summary_images(&path, &OpenOptions::default(), &SummaryOptions::default(), &Threads::new(2).unwrap());
    assert!(matches!(r, Err(Error::NonFinite { .. })));
}

// ------------------------------------------------------------------------------------------------
// Throughput (report only)
// ------------------------------------------------------------------------------------------------

/// Compares the streamed pass with plain reading of a 512 × 512 × 2000 f32 movie (2 GiB):
/// `cargo test -p caiman-cnmf --release --test summary -- --ignored --nocapture throughput`.
#[test]
#[ignore = "writes a 2 GiB file; timing report only"]
fn throughput_vs_plain_reading() {
    let (t, d1, d2) = (2000, 512, 512);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.npy");
    let shape = Shape::new(t, Dims::planar(d1, d2));
    let mut w = caiman_io::create(&path, shape, &WriteOptions::default()).unwrap();
    let mut rng = Rng(5);
    let frame: Vec<f32> = (0..d1 * d2).map(|_| (100.0 * rng.next()) as f32).collect();
    for k in 0..t {
        let f: Vec<f32> = frame.iter().map(|&v| v + (k % 7) as f32).collect();
        w.write_frames(&f).unwrap();
    }
    w.finish().unwrap();

    let read_pass = || {
        let start = std::time::Instant::now();
        let mut src = caiman_io::open(&path, &OpenOptions::default()).unwrap();
        let mut buf = vec![0f32; 32 * d1 * d2];
        let mut s = 0.0f32;
        for k in (0..t).step_by(32) {
            let n = 32.min(t - k);
            src.read_frames(k, &mut buf[..n * d1 * d2]).unwrap();
            s += buf[0];
        }
        std::hint::black_box(s);
        start.elapsed()
    };
    let _ = read_pass(); // warm the page cache
    let read = read_pass();
    let gb = (t * d1 * d2 * 4) as f64 / 1e9;
    for workers in [1, 2] {
        let exec = Threads::new(workers).unwrap();
        let start = std::time::Instant::now();
        let img = summary_images(&path, &OpenOptions::default(), &SummaryOptions::default(), &exec).unwrap();
        let el = start.elapsed();
        eprintln!(
            "read {:.2} GB/s ({read:.2?}); summary_images threads({workers}) {:.2} GB/s ({el:.2?}) = {:.0}% of read; {}",
            gb / read.as_secs_f64(),
            gb / el.as_secs_f64(),
            100.0 * read.as_secs_f64() / el.as_secs_f64(),
            img.stats.as_ref().unwrap()
        );
    }
}
