//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// Pearson correlation of two equally long series (two-pass, f64); NaN when a variance is zero.
pub(crate) fn corr(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// A small deterministic generator (SplitMix64) with uniform and normal (Box–Muller) draws, for
/// synthetic test data.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A CSC matrix stored as CaImAn's `<prefix>_data/indices/indptr/shape.npy` in `dir`.
pub(crate) fn npy_csc(dir: &std::path::Path, prefix: &str) -> caiman_cnmf::sparse::CscMatrix {
    let v = |s: &str| caiman_io::npy::read_npy(dir.join(format!("{prefix}_{s}.npy"))).unwrap().to_f64().unwrap();
    let shape = v("shape");
    caiman_cnmf::sparse::CscMatrix::from_parts(
        shape[0] as usize,
        shape[1] as usize,
        v("indptr").iter().map(|&x| x as usize).collect(),
        v("indices").iter().map(|&x| x as usize).collect(),
        v("data").iter().map(|&x| x as f32).collect(),
    )
    .unwrap()
}

/// `Yr` (pixels in Fortran order × frames) of a movie file as CaImAn's pipeline memmap holds it:
/// the movie plus `float32(0.0001)`, which `save_memmap` adds.
pub(crate) fn caiman_memmap_yr(path: &std::path::Path) -> (caiman_io::Dims, ndarray::Array2<f32>) {
    let mut src = caiman_io::open(path, &caiman_io::OpenOptions::default()).expect("open the movie");
    let dims = src.info().shape.dims;
    let mut yr = caiman_io::read_yr(src.as_mut()).expect("read the movie");
    yr.mapv_inplace(|v| v + 0.0001f32);
    (dims, yr)
}
