//! The result of a CNMF fit: CaImAn's `Estimates`.
//!
//! The model is `Y ≈ A·C + b·f + E` on a field of view of `d` pixels and `T` frames:
//! * `a` — spatial footprints `A`, `d × K` sparse, pixels in Fortran order (`p = row + d1·col`);
//! * `c` — temporal traces `C`, `K × T`, **including** each trace's baseline `bl` and initial
//!   transient `c1·γᵗ` (as CaImAn's `estimates.C`);
//! * `b`, `f` — background footprints (`d × nb`) and traces (`nb × T`);
//! * `yr_a` — residual traces `YrA` (`K × T`): `C + YrA` is the raw trace of each component;
//! * per-component deconvolution results `s`, `g`, `bl`, `c1`, `neurons_sn`, `lam`;
//! * per-pixel noise `sn` (length `d`);
//! * evaluation results `snr_comp`, `r_values`, `idx_components`, `idx_components_bad`;
//! * ΔF/F `f_dff`.
//!
//! Storage: footprints in `f32` (CaImAn's dtype for `A`), traces in `f64` (the deconvolution and
//! the block-coordinate updates need it; traces are `K × T`, small next to the movie).
//!
//! What it is not: the fitting algorithms (see [`crate::cnmf`]) or the file format
//! (see [`crate::results`]).

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use serde::{Deserialize, Serialize};

use caiman_io::Dims;

use crate::sparse::CscMatrix;
use crate::{Error, Result};

/// `eps` of `float32`, which CaImAn adds to squared footprint norms before dividing by them.
pub const EPS_F32: f64 = f32::EPSILON as f64;

/// CaImAn's `Estimates`: footprints, traces, background, deconvolution and evaluation results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Frame dimensions of the field of view.
    pub dims: Dims,
    /// Spatial footprints `A` (`d × K`, Fortran pixel order).
    pub a: CscMatrix,
    /// Temporal traces `C` (`K × T`), baseline and initial transient included.
    pub c: Array2<f64>,
    /// Deconvolved activity `S` (`K × T`), when the traces were deconvolved.
    pub s: Option<Array2<f64>>,
    /// Background footprints `b` (`d × nb`).
    pub b: Array2<f32>,
    /// Background traces `f` (`nb × T`).
    pub f: Array2<f64>,
    /// Residual traces `YrA` (`K × T`), when computed.
    pub yr_a: Option<Array2<f64>>,
    /// Per-pixel noise standard deviation (length `d`), when estimated.
    pub sn: Option<Vec<f64>>,
    /// Per-component AR coefficients (`K` rows of `p` values), when deconvolved.
    pub g: Option<Vec<Vec<f64>>>,
    /// Per-component baseline, when deconvolved.
    pub bl: Option<Vec<f64>>,
    /// Per-component initial value of the transient, when deconvolved.
    pub c1: Option<Vec<f64>>,
    /// Per-component noise level of the trace, when deconvolved.
    pub neurons_sn: Option<Vec<f64>>,
    /// Per-component sparsity penalty, when deconvolved.
    pub lam: Option<Vec<f64>>,
    /// Centre of mass of each footprint (`K × 2`, or `K × 3` for volumes; row, column, plane).
    pub center: Option<Array2<f64>>,
    /// Trace SNR of each component (component evaluation; NaN stored as 0).
    pub snr_comp: Option<Vec<f64>>,
    /// Spatial consistency of each component (component evaluation; NaN stored as −1).
    pub r_values: Option<Vec<f64>>,
    /// Indices of the accepted components (0-based), after evaluation.
    pub idx_components: Option<Vec<usize>>,
    /// Indices of the rejected components (0-based), after evaluation.
    pub idx_components_bad: Option<Vec<usize>>,
    /// ΔF/F of every trace (`K × T`), when computed.
    pub f_dff: Option<Array2<f64>>,
    /// The components removed by [`Estimates::select_components`], restorable.
    pub discarded: Option<Box<Estimates>>,
}

impl Estimates {
    /// Estimates from footprints and traces, everything else unset.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes disagree (`A` must have `dims.pixels()` rows and as
    /// many columns as `C` has rows; `b`/`f` likewise; `C` and `f` the same number of frames).
    pub fn new(dims: Dims, a: CscMatrix, c: Array2<f64>, b: Array2<f32>, f: Array2<f64>) -> Result<Self> {
        let d = dims.pixels();
        check(a.nrows() == d, "A (rows = pixels)", vec![d], vec![a.nrows()])?;
        check(a.ncols() == c.nrows(), "C (rows = components of A)", vec![a.ncols()], vec![c.nrows()])?;
        check(b.nrows() == d, "b (rows = pixels)", vec![d], vec![b.nrows()])?;
        check(b.ncols() == f.nrows(), "f (rows = columns of b)", vec![b.ncols()], vec![f.nrows()])?;
        if c.nrows() > 0 && f.nrows() > 0 {
            check(c.ncols() == f.ncols(), "f (frames = frames of C)", vec![c.ncols()], vec![f.ncols()])?;
        }
        Ok(Estimates {
            dims,
            a,
            c,
            s: None,
            b,
            f,
            yr_a: None,
            sn: None,
            g: None,
            bl: None,
            c1: None,
            neurons_sn: None,
            lam: None,
            center: None,
            snr_comp: None,
            r_values: None,
            idx_components: None,
            idx_components_bad: None,
            f_dff: None,
            discarded: None,
        })
    }

    /// Number of components `K`.
    pub fn n_components(&self) -> usize {
        self.a.ncols()
    }

    /// Number of frames `T` (from `C`, or `f` when there are no components).
    pub fn frames(&self) -> usize {
        if self.c.nrows() > 0 { self.c.ncols() } else { self.f.ncols() }
    }

    /// Number of background components `nb`.
    pub fn n_background(&self) -> usize {
        self.b.ncols()
    }

    /// CaImAn's `normalize_components`: every column of `A` gets unit L2 norm and `C`, `S`,
    /// `YrA`, `bl`, `c1`, `neurons_sn` are multiplied by the old norm; likewise every column of `b`
    /// gets unit norm and `f` is scaled. Columns of norm 0 are left as they are.
    pub fn normalize_components(&mut self) {
        let norms = self.a.col_norms();
        let inv: Vec<f64> = norms.iter().map(|&n| if n > 0.0 { 1.0 / n } else { 1.0 }).collect();
        let fac: Vec<f64> = norms.iter().map(|&n| if n > 0.0 { n } else { 1.0 }).collect();
        self.a.scale_cols(&inv);
        for (k, &m) in fac.iter().enumerate() {
            self.c.row_mut(k).mapv_inplace(|v| v * m);
            if let Some(s) = &mut self.s {
                s.row_mut(k).mapv_inplace(|v| v * m);
            }
            if let Some(y) = &mut self.yr_a {
                y.row_mut(k).mapv_inplace(|v| v * m);
            }
            for v in [&mut self.bl, &mut self.c1, &mut self.neurons_sn].into_iter().flatten() {
                if let Some(x) = v.get_mut(k) {
                    *x *= m;
                }
            }
        }
        for m in 0..self.b.ncols() {
            let n = self.b.column(m).iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            if n > 0.0 {
                self.b.column_mut(m).mapv_inplace(|v| (f64::from(v) / n) as f32);
                self.f.row_mut(m).mapv_inplace(|v| v * n);
            }
        }
    }

    /// CaImAn's `compute_residuals`: `YrA = ((Abᵀ Y)ᵀ·diag(1/nA) − ((AbᵀAb·diag(1/nA))ᵀ Cf)ᵀ)`
    /// restricted to the neurons, with `Ab = [A | b]`, `Cf = [C; f]`, `nA = ‖ab_k‖² + eps(f32)`.
    ///
    /// The product `AbᵀY` is a pass over the movie by pixel blocks ([`crate::passes::mt_y`]:
    /// out of core for a memmapped field of view; the result does not depend on `exec`), whose
    /// run statistics are returned.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the movie is not `d × T`; [`Error::Exec`] when a worker fails.
    pub fn compute_residuals_fov<E: caiman_parallel::Executor>(
        &mut self,
        fov: &crate::pixels::Fov<'_>,
        exec: &E,
    ) -> Result<Option<caiman_parallel::RunStats>> {
        self.check_movie(fov.pixels(), fov.frames())?;
        let ab = self.ab();
        let (ya, stats) = crate::passes::mt_y(fov, &ab, exec)?;
        self.residuals_from(&ab, &ya);
        Ok(stats)
    }

    /// [`compute_residuals_fov`](Self::compute_residuals_fov) for a movie in memory (`yr`:
    /// pixels × frames, Fortran pixel order), `AbᵀY` on up to `par` threads (same blocks, same
    /// bits).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `yr` is not `d × T`.
    pub fn compute_residuals(&mut self, yr: ArrayView2<'_, f32>, par: caiman_parallel::Par) -> Result<()> {
        self.check_movie(yr.nrows(), yr.ncols())?;
        let ab = self.ab();
        let ya = crate::passes::mt_y_view(&ab, yr, par)?;
        self.residuals_from(&ab, &ya);
        Ok(())
    }

    /// Checks a movie of `d` pixels and `t` frames against the estimates.
    fn check_movie(&self, d: usize, t: usize) -> Result<()> {
        check(d == self.a.nrows(), "Y (rows = pixels)", vec![self.a.nrows()], vec![d])?;
        check(t == self.frames(), "Y (columns = frames)", vec![self.frames()], vec![t])
    }

    /// `YrA` from `ya = AbᵀY` (`(K + nb) × T`).
    fn residuals_from(&mut self, ab: &CscMatrix, ya: &Array2<f64>) {
        let t = ya.ncols();
        let k_all = ab.ncols();
        let na: Vec<f64> = ab.col_norms().iter().map(|n| n * n + EPS_F32).collect();
        let aa = ab_gram(ab); // (K+nb)²
        let cf = self.cf();
        let k = self.n_components();
        let mut r = Array2::<f64>::zeros((k, t));
        for i in 0..k {
            let mut row = r.row_mut(i);
            row.assign(&ya.row(i));
            for j in 0..k_all {
                let w = aa[[j, i]];
                if w != 0.0 {
                    row.scaled_add(-w, &cf.row(j));
                }
            }
            row.mapv_inplace(|v| v / na[i]);
        }
        self.yr_a = Some(r);
    }

    /// `[A | b]` as one sparse matrix (background columns last).
    pub fn ab(&self) -> CscMatrix {
        hstack_dense(&self.a, self.b.view())
    }

    /// `[C; f]` (background rows last).
    pub fn cf(&self) -> Array2<f64> {
        let (k, nb) = (self.c.nrows(), self.f.nrows());
        let t = self.frames();
        let mut cf = Array2::zeros((k + nb, t));
        if k > 0 {
            cf.slice_mut(s![..k, ..]).assign(&self.c);
        }
        if nb > 0 {
            cf.slice_mut(s![k.., ..]).assign(&self.f);
        }
        cf
    }

    /// Centre of mass of every footprint (`K × 2`, or `K × 3` for volumes), rows then columns
    /// then planes, as CaImAn's `com`.
    pub fn centers_of_mass(&self) -> Array2<f64> {
        centers_of_mass(&self.a, self.dims)
    }

    /// CaImAn's `select_components(idx, use_object=True, save_discarded_components=True)`:
    /// keeps the components listed in `keep` (in that order; `None` keeps `idx_components`) and
    /// moves the others into [`discarded`](Self::discarded), appending to components discarded
    /// earlier. Evaluation indices are reset.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] if an index is out of range or repeated, or if `keep` is `None`
    /// and the components were not evaluated.
    pub fn select_components(&mut self, keep: Option<&[usize]>) -> Result<()> {
        let k = self.n_components();
        let keep: Vec<usize> = match keep {
            Some(v) => v.to_vec(),
            None => self
                .idx_components
                .clone()
                .ok_or_else(|| Error::InvalidParam("select_components: components were not evaluated".into()))?,
        };
        let mut seen = vec![false; k];
        for &i in &keep {
            if i >= k || seen[i] {
                return Err(Error::InvalidParam(format!(
                    "select_components: index {i} out of range or repeated ({k} components)"
                )));
            }
            seen[i] = true;
        }
        let drop: Vec<usize> = (0..k).filter(|&i| !seen[i]).collect();
        let mut gone = self.subset(&drop);
        gone.discarded = None;
        let mut kept = self.subset(&keep);
        kept.discarded = match self.discarded.take() {
            Some(mut old) => {
                old.append(&gone)?;
                Some(old)
            }
            None if drop.is_empty() => None,
            None => Some(Box::new(gone)),
        };
        kept.idx_components = None;
        kept.idx_components_bad = None;
        *self = kept;
        Ok(())
    }

    /// CaImAn's `restore_discarded_components`: appends the discarded components back.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the discarded set does not fit (different dims or frames).
    pub fn restore_discarded_components(&mut self) -> Result<()> {
        if let Some(old) = self.discarded.take() {
            self.append(&old)?;
            self.idx_components = None;
            self.idx_components_bad = None;
        }
        Ok(())
    }

    /// The components `idx` (in that order), with every per-component field; background,
    /// pixel noise and dims are shared.
    pub fn subset(&self, idx: &[usize]) -> Estimates {
        let rows = |m: &Array2<f64>| m.select(Axis(0), idx);
        let pick = |v: &Vec<f64>| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let d = self.a.nrows();
        let mut indptr = vec![0usize];
        let mut indices = Vec::new();
        let mut data = Vec::new();
        for &i in idx {
            let (r, v) = self.a.col(i);
            indices.extend_from_slice(r);
            data.extend_from_slice(v);
            indptr.push(indices.len());
        }
        let a = CscMatrix::from_parts(d, idx.len(), indptr, indices, data).expect("columns of a valid matrix");
        Estimates {
            dims: self.dims,
            a,
            c: rows(&self.c),
            s: self.s.as_ref().map(rows),
            b: self.b.clone(),
            f: self.f.clone(),
            yr_a: self.yr_a.as_ref().map(rows),
            sn: self.sn.clone(),
            g: self.g.as_ref().map(|g| idx.iter().map(|&i| g[i].clone()).collect()),
            bl: self.bl.as_ref().map(pick),
            c1: self.c1.as_ref().map(pick),
            neurons_sn: self.neurons_sn.as_ref().map(pick),
            lam: self.lam.as_ref().map(pick),
            center: self.center.as_ref().map(rows),
            snr_comp: self.snr_comp.as_ref().map(pick),
            r_values: self.r_values.as_ref().map(pick),
            idx_components: None,
            idx_components_bad: None,
            f_dff: self.f_dff.as_ref().map(rows),
            discarded: None,
        }
    }

    /// Appends the components of `other` (same dims and frames) after this one's. Optional
    /// per-component fields stay set only where both sides have them.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if dims or frames differ.
    pub fn append(&mut self, other: &Estimates) -> Result<()> {
        check(
            self.dims == other.dims,
            "appended components (dims)",
            vec![self.dims.d1, self.dims.d2, self.dims.d3],
            vec![other.dims.d1, other.dims.d2, other.dims.d3],
        )?;
        if other.n_components() == 0 {
            return Ok(());
        }
        if self.n_components() > 0 {
            check(
                self.frames() == other.frames(),
                "appended components (frames)",
                vec![self.frames()],
                vec![other.frames()],
            )?;
        }
        let cat = |a: &Array2<f64>, b: &Array2<f64>| -> Array2<f64> {
            if a.nrows() == 0 {
                b.clone()
            } else {
                ndarray::concatenate(Axis(0), &[a.view(), b.view()]).expect("same number of columns")
            }
        };
        let cat_opt = |a: &Option<Array2<f64>>, b: &Option<Array2<f64>>| match (a, b) {
            (Some(a), Some(b)) => Some(cat(a, b)),
            _ => None,
        };
        let vcat = |a: &Option<Vec<f64>>, b: &Option<Vec<f64>>| match (a, b) {
            (Some(a), Some(b)) => Some([a.as_slice(), b.as_slice()].concat()),
            _ => None,
        };
        let mut indptr = self.a.indptr().to_vec();
        let mut indices = self.a.indices().to_vec();
        let mut data = self.a.data().to_vec();
        let base = data.len();
        indptr.extend(other.a.indptr()[1..].iter().map(|&p| p + base));
        indices.extend_from_slice(other.a.indices());
        data.extend_from_slice(other.a.data());
        self.a = CscMatrix::from_parts(self.a.nrows(), self.a.ncols() + other.a.ncols(), indptr, indices, data)?;
        self.c = cat(&self.c, &other.c);
        self.s = cat_opt(&self.s, &other.s);
        self.yr_a = cat_opt(&self.yr_a, &other.yr_a);
        self.center = cat_opt(&self.center, &other.center);
        self.f_dff = cat_opt(&self.f_dff, &other.f_dff);
        self.g = match (&self.g, &other.g) {
            (Some(a), Some(b)) => Some(a.iter().chain(b).cloned().collect()),
            _ => None,
        };
        self.bl = vcat(&self.bl, &other.bl);
        self.c1 = vcat(&self.c1, &other.c1);
        self.neurons_sn = vcat(&self.neurons_sn, &other.neurons_sn);
        self.lam = vcat(&self.lam, &other.lam);
        self.snr_comp = vcat(&self.snr_comp, &other.snr_comp);
        self.r_values = vcat(&self.r_values, &other.r_values);
        Ok(())
    }
}

fn check(ok: bool, what: &'static str, expected: Vec<usize>, got: Vec<usize>) -> Result<()> {
    if ok { Ok(()) } else { Err(Error::ShapeMismatch { what, expected, got }) }
}

/// `[A | B]` for a sparse `A` and a dense `B` with the same number of rows (zeros of `B` dropped).
///
/// # Panics
/// If the row counts differ.
pub fn hstack_dense(a: &CscMatrix, b: ArrayView2<'_, f32>) -> CscMatrix {
    assert_eq!(a.nrows(), b.nrows(), "same number of rows");
    let mut indptr = a.indptr().to_vec();
    let mut indices = a.indices().to_vec();
    let mut data = a.data().to_vec();
    for col in b.columns() {
        for (r, &v) in col.iter().enumerate() {
            if v != 0.0 {
                indices.push(r);
                data.push(v);
            }
        }
        indptr.push(data.len());
    }
    CscMatrix::from_parts(a.nrows(), a.ncols() + b.ncols(), indptr, indices, data).expect("valid parts")
}

/// `AᵀA` of a sparse matrix (dense, `ncols × ncols`, f64 accumulation).
pub fn ab_gram(a: &CscMatrix) -> Array2<f64> {
    let n = a.ncols();
    let mut dense = vec![0f64; a.nrows()];
    let mut g = Array2::zeros((n, n));
    for i in 0..n {
        let (ri, vi) = a.col(i);
        for (&r, &v) in ri.iter().zip(vi) {
            dense[r] = f64::from(v);
        }
        for j in i..n {
            let (rj, vj) = a.col(j);
            let dot: f64 = rj.iter().zip(vj).map(|(&r, &v)| dense[r] * f64::from(v)).sum();
            g[[i, j]] = dot;
            g[[j, i]] = dot;
        }
        for &r in ri {
            dense[r] = 0.0;
        }
    }
    g
}

/// Centre of mass of every column of `a` as an image of `dims` (Fortran pixel order): `K × 2`
/// (row, column) for planar frames, `K × 3` for volumes. An all-zero column gives NaN.
pub fn centers_of_mass(a: &CscMatrix, dims: Dims) -> Array2<f64> {
    let nd = if dims.is_volume() { 3 } else { 2 };
    let mut out = Array2::zeros((a.ncols(), nd));
    for k in 0..a.ncols() {
        let (rows, vals) = a.col(k);
        let mut acc = Array1::<f64>::zeros(nd);
        let mut tot = 0.0;
        for (&p, &v) in rows.iter().zip(vals) {
            let v = f64::from(v);
            let i = p % dims.d1;
            let j = (p / dims.d1) % dims.d2;
            let z = p / (dims.d1 * dims.d2);
            acc[0] += v * i as f64;
            acc[1] += v * j as f64;
            if nd == 3 {
                acc[2] += v * z as f64;
            }
            tot += v;
        }
        out.row_mut(k).assign(&acc.mapv(|x| x / tot));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn toy() -> Estimates {
        let a = CscMatrix::from_dense(array![[1.0f32, 0.0, 0.0], [2.0, 0.0, 3.0], [0.0, 4.0, 4.0]].view());
        let c = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let b = array![[1.0f32], [1.0], [1.0]];
        let f = array![[2.0, 2.0]];
        Estimates::new(Dims::planar(3, 1), a, c, b, f).unwrap()
    }

    #[test]
    fn normalize_scales_a_and_traces_consistently() {
        let mut e = toy();
        let before = e.a.to_dense().mapv(f64::from).dot(&e.c);
        let bg_before = e.b.mapv(f64::from).dot(&e.f);
        e.normalize_components();
        for n in e.a.col_norms() {
            assert!((n - 1.0).abs() < 1e-6);
        }
        let after = e.a.to_dense().mapv(f64::from).dot(&e.c);
        let bg_after = e.b.mapv(f64::from).dot(&e.f);
        assert!((&before - &after).iter().all(|v| v.abs() < 1e-5));
        assert!((&bg_before - &bg_after).iter().all(|v| v.abs() < 1e-5));
    }

    #[test]
    fn residuals_of_exact_model_are_zero() {
        let mut e = toy();
        let y = (e.a.to_dense().mapv(f64::from).dot(&e.c) + e.b.mapv(f64::from).dot(&e.f)).mapv(|v| v as f32);
        e.compute_residuals(y.view(), caiman_parallel::Par::Seq).unwrap();
        let in_memory = e.yr_a.take().unwrap();
        assert!(in_memory.iter().all(|v| v.abs() < 1e-5));
        let lin = caiman_parallel::Linear::new();
        let shared = std::sync::Arc::new(y.clone());
        e.compute_residuals_fov(&crate::pixels::Fov::from_shared(e.dims, &shared).unwrap(), &lin).unwrap();
        assert_eq!(e.yr_a.take().unwrap(), in_memory);
        let mut e = toy();
        assert!(e.compute_residuals(Array2::<f32>::zeros((2, 2)).view(), caiman_parallel::Par::Seq).is_err());
        let z = Array2::<f32>::zeros((2, 2));
        let fov = crate::pixels::Fov::new(caiman_io::Dims::planar(1, 2), z.view()).unwrap();
        assert!(e.compute_residuals_fov(&fov, &lin).is_err());
    }

    #[test]
    fn select_and_restore() {
        let mut e = toy();
        e.bl = Some(vec![1.0, 2.0, 3.0]);
        e.select_components(Some(&[2, 0])).unwrap();
        assert_eq!(e.n_components(), 2);
        assert_eq!(e.c.row(0).to_vec(), vec![5.0, 6.0]);
        assert_eq!(e.bl, Some(vec![3.0, 1.0]));
        assert_eq!(e.discarded.as_ref().unwrap().n_components(), 1);
        e.restore_discarded_components().unwrap();
        assert_eq!(e.n_components(), 3);
        assert_eq!(e.bl, Some(vec![3.0, 1.0, 2.0]));
        assert!(e.select_components(Some(&[0, 0])).is_err());
        assert!(e.select_components(None).is_err());
    }

    #[test]
    fn centre_of_mass() {
        let e = toy();
        let c = e.centers_of_mass();
        assert!((c[[0, 0]] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c[[1, 0]], 2.0);
        assert_eq!(c[[0, 1]], 0.0);
    }
}
