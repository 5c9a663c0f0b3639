//! OnACID's initialisation on the first `init_batch` frames (CaImAn's `initialize_online`,
//! `bare_initialization`, `seeded_initialization`, `HALS4shapes`): down-sampling, motion
//! correction and normalisation of the batch, then `bare` (greedy ROI + HALS), `cnmf` (a full
//! CNMF fit of the batch) or `seeded` (binary masks), then [`OnAcid::from_estimates`].
//!
//! Two details make the `bare` initialisation CaImAn's to float rounding (on CaImAn's reference
//! movie the batch traces `[f; C + YrA]` agree with CaImAn's to 4·10⁻⁵ relative RMS, and the
//! whole online run follows: `tests/reference.rs`):
//! * the residual traces are CaImAn's `bare_initialization` formula, \[Q\] reproduced (see
//!   `init_residuals`; the batch `compute_residuals` differs for overlapping components, by up to
//!   23 % of a trace's RMS on that movie); the `seeded` path uses the same formula, as CaImAn's
//!   `seeded_initialization` does;
//! * the background NMF inside greedy ROI: scikit-learn's `'nndsvdar'` (CaImAn's default
//!   `greedyroi_nmf_init_method`) fills the zeros of the NNDSVD factors with `|N(0, 1)|·mean/100`
//!   from numpy's global RNG; caiman-cnmf maps it to the deterministic `'nndsvda'` (zeros ← the
//!   mean, 100 times larger), which leads the rank-`nb` NMF to another local optimum (on the
//!   reference movie a background that absorbs part of an undetected neuron, which then was
//!   detected 133 frames late). OnACID asks for `'nndsvd'` instead (zeros kept: the nearest
//!   deterministic start to `'nndsvdar'`), which converges to CaImAn's background. Explicit
//!   `'nndsvd'`/`'nndsvda'` are passed through unchanged.

use caiman_cnmf::cnmf::main_thread_par;
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::init::{HalsFactors, HalsOptions, hals, initialize_components, seeded_initialization};
use caiman_cnmf::params::{CnmfParams, OnlineInitMethod};
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::Dims;
use caiman_parallel::Executor;
use ndarray::{Array2, ArrayView3};

use crate::error::{Error, Result};
use crate::onacid::OnAcid;
use crate::preprocess::{FramePrep, correct_batch, working_dims};

/// CaImAn's `HALS4shapes(Yr, A, C, iters)`: block-coordinate descent on the footprints,
/// each restricted to its initial support (`A > 0`). `yr_res` is `Y − b·f` (pixels × frames).
fn hals4shapes(yr_res: &Array2<f32>, a: &mut Array2<f32>, c: &Array2<f64>, iters: usize) {
    let k = a.ncols();
    let support: Vec<Vec<usize>> = (0..k).map(|m| (0..a.nrows()).filter(|&p| a[[p, m]] > 0.0).collect()).collect();
    let v = c.dot(&c.t());
    let vdiag: Vec<f64> = (0..k).map(|m| v[[m, m]] + f64::EPSILON).collect();
    // U[m, p] = C[m]·Y[p] on the support only.
    let u: Vec<Vec<f64>> = (0..k)
        .map(|m| {
            support[m]
                .iter()
                .map(|&p| yr_res.row(p).iter().zip(c.row(m)).map(|(&y, &cc)| f64::from(y) * cc).sum())
                .collect()
        })
        .collect();
    for _ in 0..iters {
        for m in 0..k {
            for (s, &p) in support[m].iter().enumerate() {
                let dot: f64 = (0..k).map(|j| v[[m, j]] * f64::from(a[[p, j]])).sum();
                a[[p, m]] = (f64::from(a[[p, m]]) + (u[m][s] - dot) / vdiag[m]).max(0.0) as f32;
            }
        }
    }
}

/// CaImAn's residual traces of `bare_initialization` and `seeded_initialization` (\[Q\]
/// reproduced): `YrA_k = a_kᵀ(Y − b·f)/‖a_k‖² − Σ_j (a_kᵀa_j)·c_j/‖a_j‖²` — the overlap
/// matrix scaled by `1/‖a_k‖²` row by row and then transposed, so that the neighbour `j`'s
/// trace is weighted by `1/‖a_j‖²` (the batch `compute_residuals` divides both terms by
/// `‖a_k‖²`). The two agree for non-overlapping components; for overlapping ones this is the
/// trace CaImAn's OnACID starts from (`noisyC = C + YrA` of the batch, on which the OASIS
/// instances are fitted).
fn init_residuals(est: &mut Estimates, yr: &Array2<f32>, par: caiman_parallel::Par) -> Result<()> {
    let a = &est.a;
    let k = a.ncols();
    let ya = caiman_cnmf::passes::mt_y_view(a, yr.view(), par)?;
    let atb = a.t_dot(est.b.view())?; // K × nb
    // 1/‖a_k‖² (an all-zero footprint, for which CaImAn divides by zero, gets a zero trace).
    let inv: Vec<f64> = a.col_norms().iter().map(|n| if *n > 0.0 { 1.0 / (n * n) } else { 0.0 }).collect();
    let gram = caiman_cnmf::estimates::ab_gram(a); // K × K overlaps a_iᵀa_j
    let t = ya.ncols();
    let mut r = Array2::<f64>::zeros((k, t));
    for i in 0..k {
        let mut row = r.row_mut(i);
        row.assign(&ya.row(i));
        for m in 0..est.f.nrows() {
            row.scaled_add(-atb[[i, m]], &est.f.row(m));
        }
        row.mapv_inplace(|v| v * inv[i]);
        for j in 0..k {
            let w = gram[[i, j]] * inv[j];
            if w != 0.0 {
                row.scaled_add(-w, &est.c.row(j));
            }
        }
    }
    est.yr_a = Some(r);
    Ok(())
}

/// The initial batch as OnACID sees it: `yr` (pixels × frames, Fortran order, working size),
/// `img_min`, `img_norm`, the batch shifts.
struct Batch {
    yr: Array2<f32>,
    dims: Dims,
    img_min: f32,
    img_norm: Vec<f32>,
    shifts: Vec<[f64; 2]>,
}

fn prepare_batch(params: &CnmfParams, frames: ArrayView3<'_, f32>) -> Result<Batch> {
    let (t, d1, d2) = frames.dim();
    let input = Dims::planar(d1, d2);
    let dims = working_dims(input, params.online.ds_factor)?;
    let d = dims.pixels();
    let mut prep = FramePrep::new(input, dims);
    let mut yr = Array2::<f32>::zeros((d, t));
    let mut buf = vec![0f32; d];
    let mut frame = Vec::with_capacity(d1 * d2);
    for k in 0..t {
        frame.clear();
        frame.extend(frames.index_axis(ndarray::Axis(0), k).iter().copied());
        if frame.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { source_name: "initial batch".into(), frame: k });
        }
        prep.prepare(&frame, &mut buf);
        yr.column_mut(k).iter_mut().zip(&buf).for_each(|(o, &v)| *o = v);
    }
    let shifts = if params.online.motion_correct {
        correct_batch(&mut yr, dims, params.max_shifts_online())?
    } else {
        Vec::new()
    };
    let img_min = yr.iter().copied().fold(f32::INFINITY, f32::min);
    let normalize = params.online.normalize;
    if normalize {
        yr.mapv_inplace(|v| v - img_min);
    }
    let std: Vec<f64> = yr.rows().into_iter().map(|r| r.mapv(f64::from).std(0.0)).collect();
    let med = caiman_cnmf::stats::median(&std).unwrap_or(f64::NAN);
    let img_norm: Vec<f32> = std.iter().map(|&s| (s + med) as f32).collect();
    if normalize {
        if img_norm.iter().any(|&v| v.is_nan() || v <= 0.0) {
            return Err(Error::InvalidParam(
                "normalize: the initial batch is constant (zero standard deviation)".into(),
            ));
        }
        for (mut row, &n) in yr.rows_mut().into_iter().zip(&img_norm) {
            row.mapv_inplace(|v| v / n);
        }
    }
    Ok(Batch { yr, dims, img_min, img_norm, shifts })
}

/// Initialises OnACID on the first frames (`T × d1 × d2`, C order as a `FrameSource` delivers
/// them; `T` is normally `online.init_batch`): CaImAn's `initialize_online` with
/// `online.init_method`:
/// * `bare`: `initialize_components` (greedy ROI + HALS, the `init` group) on the batch;
/// * `cnmf`: `cnmf::fit` of the batch (patches when `patch.rf` is set), deconvolution results
///   taken over;
/// * `seeded`: `masks` (pixels × K, non-zero = in the mask, at the working size) → background
///   NMF, mask-restricted `HALS4shapes` (5 sweeps) and `hals` (8 iterations).
///
/// # Errors
/// [`Error::InvalidParam`] for `seeded` without masks, masks of the wrong size, `nb < 0`, and the
/// checks of [`OnAcid::from_estimates`]; [`Error::NonFinite`] for NaN frames; kernel errors.
pub fn initialize<E: Executor>(
    params: &CnmfParams,
    frames: ArrayView3<'_, f32>,
    masks: Option<&CscMatrix>,
    exec: &E,
) -> Result<OnAcid> {
    crate::check_params(params)?;
    if frames.dim().0 == 0 {
        return Err(Error::InvalidParam("the initial batch has no frames".into()));
    }
    if params.init.nb < 0 {
        return Err(Error::InvalidParam(format!("init.nb must be ≥ 0 for OnACID, got {}", params.init.nb)));
    }
    let nb = params.init.nb as usize;
    let b = prepare_batch(params, frames)?;
    let par = main_thread_par(exec);
    let dims = b.dims;
    let yr = &b.yr;
    let est = match params.online.init_method {
        OnlineInitMethod::Bare => {
            let mut init_params = params.init.clone();
            init_params.nb = nb as i64;
            if init_params.greedyroi_nmf_init_method == "nndsvdar" {
                // scikit-learn's 'nndsvdar' fills the zeros of NNDSVD with |N(0, 1)|·mean/100;
                // caiman-cnmf maps it to 'nndsvda' (fills with the mean), which leads the
                // background NMF to another local optimum. Zeros kept ('nndsvd') give CaImAn's.
                init_params.greedyroi_nmf_init_method = "nndsvd".to_owned();
            }
            let r = initialize_components(yr.view(), dims, &init_params, true, par)?;
            let mut est = Estimates::new(dims, r.a, r.c, r.b, r.f)?;
            init_residuals(&mut est, yr, par)?;
            est.center = Some(r.center);
            est
        }
        OnlineInitMethod::Cnmf => {
            let fov = Fov::new(dims, yr.view())?;
            let (mut est, _report) = caiman_cnmf::cnmf::fit(&fov, params, exec)?;
            if est.yr_a.is_none() {
                est.compute_residuals(yr.view(), par)?;
            }
            est
        }
        OnlineInitMethod::Seeded => {
            let masks = masks.ok_or_else(|| Error::InvalidParam("init_method 'seeded' needs masks".into()))?;
            if masks.nrows() != dims.pixels() {
                return Err(Error::ShapeMismatch {
                    what: "seed masks (pixels of the working frame)",
                    expected: vec![dims.pixels()],
                    got: vec![masks.nrows()],
                });
            }
            let r = seeded_initialization(yr.view(), dims, masks, nb, par)?;
            // Masks L1-normalised, C = max(0, AᵀY − (Aᵀb)f), then HALS4shapes and hals.
            let k = masks.ncols();
            let mut a = Array2::<f32>::zeros((dims.pixels(), k));
            for m in 0..k {
                let (rows, vals) = masks.col(m);
                let cnt = vals.iter().filter(|&&v| v != 0.0).count().max(1) as f32;
                rows.iter().zip(vals).filter(|&(_, &v)| v != 0.0).for_each(|(&p, _)| a[[p, m]] = 1.0 / cnt);
            }
            let bf = r.b.mapv(f64::from).dot(&r.f);
            let yr_res: Array2<f32> = yr.mapv(f64::from).zip_map_ok(&bf);
            let mut c = a.t().mapv(f64::from).dot(&yr_res.mapv(f64::from));
            c.mapv_inplace(|v| v.max(0.0));
            hals4shapes(&yr_res, &mut a, &c, 5);
            let f = hals(
                yr.view(),
                dims,
                &HalsFactors { a, c, b: r.b, f: r.f },
                HalsOptions { b_siz: None, max_iter: 8 },
                par,
            )?;
            let mut est = Estimates::new(dims, CscMatrix::from_dense(f.a.view()), f.c, f.b, f.f)?;
            init_residuals(&mut est, yr, par)?;
            est
        }
    };
    let mut s = OnAcid::from_estimates(params, est, yr.view())?;
    s.in_dims = Dims::planar(frames.dim().1, frames.dim().2);
    s.img_min = b.img_min;
    s.img_norm = b.img_norm;
    s.shifts = b.shifts;
    Ok(s)
}

/// `Y − b·f` as f32 (helper trait to keep the seeded branch readable).
trait ZipMapOk {
    fn zip_map_ok(&self, bf: &Array2<f64>) -> Array2<f32>;
}

impl ZipMapOk for Array2<f64> {
    fn zip_map_ok(&self, bf: &Array2<f64>) -> Array2<f32> {
        let mut out = Array2::<f32>::zeros(self.dim());
        ndarray::Zip::from(&mut out).and(self).and(bf).for_each(|o, &y, &b| *o = (y - b) as f32);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For data that the model explains exactly (`Y = A·C + b·f`), CaImAn's bare residual is
    /// `YrA_k = Σ_j (a_kᵀa_j)·c_j·(1/‖a_k‖² − 1/‖a_j‖²)`: zero for isolated components, not for
    /// overlapping ones of different norms (where the batch formula gives 0).
    #[test]
    fn init_residuals_follow_caimans_bare_formula() {
        let dims = Dims::planar(4, 1);
        // a1 = [1, 1, 0, 0] (‖a1‖² = 2), a2 = [0, 2, 2, 0] (8), a3 = [0, 0, 0, 3] (9, isolated);
        // a1·a2 = 2. Background b = [1, 1, 1, 1] with f = [10, 20].
        let dense = ndarray::arr2(&[[1f32, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]);
        let c = ndarray::arr2(&[[3.0, 1.0], [5.0, 2.0], [7.0, 4.0]]);
        let b = Array2::from_elem((4, 1), 1f32);
        let f = ndarray::arr2(&[[10.0, 20.0]]);
        let y = dense.mapv(f64::from).dot(&c) + b.mapv(f64::from).dot(&f);
        let yr = y.mapv(|v| v as f32);
        let mut est = Estimates::new(dims, CscMatrix::from_dense(dense.view()), c.clone(), b, f).unwrap();
        init_residuals(&mut est, &yr, caiman_parallel::Par::Seq).unwrap();
        let r = est.yr_a.unwrap();
        for t in 0..2 {
            let want1 = 2.0 * c[[1, t]] * (1.0 / 2.0 - 1.0 / 8.0);
            let want2 = 2.0 * c[[0, t]] * (1.0 / 8.0 - 1.0 / 2.0);
            assert!((r[[0, t]] - want1).abs() < 1e-9, "{} vs {want1}", r[[0, t]]);
            assert!((r[[1, t]] - want2).abs() < 1e-9, "{} vs {want2}", r[[1, t]]);
            assert!(r[[2, t]].abs() < 1e-9);
        }
    }
}
