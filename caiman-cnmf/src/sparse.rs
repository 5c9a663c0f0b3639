//! Compressed sparse column (CSC) matrices for spatial footprints.
//!
//! CaImAn keeps the footprints `A` (pixels × components) as a `scipy.sparse.csc_matrix` and
//! stores them in its HDF5 results as the CSC parts `data`, `indices`, `indptr`, `shape`; pixel
//! indices flatten an image in Fortran order (`p = i + d1·j`). [`CscMatrix`] is that layout with
//! `f32` values (CaImAn's dtype) and the handful of products CNMF needs, accumulated in `f64`.
//!
//! What it is not: a general sparse linear-algebra library — only column access, conversion and
//! the products the CNMF algorithms use.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A sparse matrix in compressed sparse column form (`nrows × ncols`).
///
/// Column `k` holds the entries `data[indptr[k]..indptr[k + 1]]` at rows
/// `indices[indptr[k]..indptr[k + 1]]`, rows strictly increasing within a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CscMatrix {
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<usize>,
    data: Vec<f32>,
}

impl CscMatrix {
    /// An `nrows × ncols` matrix without entries.
    pub fn zeros(nrows: usize, ncols: usize) -> Self {
        CscMatrix { nrows, ncols, indptr: vec![0; ncols + 1], indices: Vec::new(), data: Vec::new() }
    }

    /// Builds a matrix from its CSC parts (as stored by scipy and CaImAn), checking them.
    ///
    /// Rows within a column may come in any order (scipy allows unsorted indices); they are
    /// sorted here. Duplicate row indices within a column are summed.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] when the parts are inconsistent (wrong `indptr` length, decreasing
    /// `indptr`, a row index out of range, `data`/`indices` lengths that differ).
    pub fn from_parts(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<Self> {
        let bad = |what: String| Err(Error::InvalidParam(format!("CSC matrix {nrows}×{ncols}: {what}")));
        if indptr.len() != ncols + 1 {
            return bad(format!("indptr has {} entries, expected {}", indptr.len(), ncols + 1));
        }
        if indices.len() != data.len() {
            return bad(format!("{} row indices but {} values", indices.len(), data.len()));
        }
        if indptr[0] != 0 || indptr[ncols] != data.len() || indptr.windows(2).any(|w| w[0] > w[1]) {
            return bad("indptr must start at 0, be non-decreasing and end at the number of values".into());
        }
        if let Some(&r) = indices.iter().find(|&&r| r >= nrows) {
            return bad(format!("row index {r} out of range"));
        }
        let mut m =
            CscMatrix { nrows, ncols, indptr: Vec::with_capacity(ncols + 1), indices: Vec::new(), data: Vec::new() };
        m.indptr.push(0);
        let mut col: Vec<(usize, f32)> = Vec::new();
        for k in 0..ncols {
            col.clear();
            col.extend((indptr[k]..indptr[k + 1]).map(|e| (indices[e], data[e])));
            col.sort_by_key(|&(r, _)| r);
            for &(r, v) in &col {
                if m.indices.len() > m.indptr[k] && *m.indices.last().expect("non-empty") == r {
                    *m.data.last_mut().expect("non-empty") += v;
                } else {
                    m.indices.push(r);
                    m.data.push(v);
                }
            }
            m.indptr.push(m.data.len());
        }
        Ok(m)
    }

    /// Keeps the non-zero entries of a dense `nrows × ncols` matrix.
    pub fn from_dense(dense: ArrayView2<'_, f32>) -> Self {
        let (nrows, ncols) = dense.dim();
        let mut m =
            CscMatrix { nrows, ncols, indptr: Vec::with_capacity(ncols + 1), indices: Vec::new(), data: Vec::new() };
        m.indptr.push(0);
        for k in 0..ncols {
            for (r, &v) in dense.column(k).iter().enumerate() {
                if v != 0.0 {
                    m.indices.push(r);
                    m.data.push(v);
                }
            }
            m.indptr.push(m.data.len());
        }
        m
    }

    /// The dense `nrows × ncols` matrix.
    pub fn to_dense(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.nrows, self.ncols));
        for k in 0..self.ncols {
            let (rows, vals) = self.col(k);
            for (&r, &v) in rows.iter().zip(vals) {
                out[(r, k)] = v;
            }
        }
        out
    }

    /// Number of rows (pixels).
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns (components).
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Column pointers (`ncols + 1` entries).
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Row indices of the stored entries.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Stored values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row indices and values of column `k`.
    ///
    /// # Panics
    /// If `k >= ncols`.
    pub fn col(&self, k: usize) -> (&[usize], &[f32]) {
        let r = self.indptr[k]..self.indptr[k + 1];
        (&self.indices[r.clone()], &self.data[r])
    }

    /// Euclidean norm of every column (f64 accumulation).
    pub fn col_norms(&self) -> Vec<f64> {
        (0..self.ncols).map(|k| self.col(k).1.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()).collect()
    }

    /// `selfᵀ · dense` for a dense `nrows × m` matrix: a `ncols × m` matrix (f64 accumulation).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `dense` does not have `nrows` rows.
    pub fn t_dot<S>(&self, dense: ArrayView2<'_, S>) -> Result<Array2<f64>>
    where
        S: Copy + Into<f64>,
    {
        if dense.nrows() != self.nrows {
            return Err(Error::ShapeMismatch {
                what: "sparse Aᵀ · dense (rows)",
                expected: vec![self.nrows],
                got: vec![dense.nrows()],
            });
        }
        let m = dense.ncols();
        let mut out = Array2::zeros((self.ncols, m));
        for k in 0..self.ncols {
            let (rows, vals) = self.col(k);
            let mut row = out.row_mut(k);
            for (&r, &v) in rows.iter().zip(vals) {
                let v = f64::from(v);
                for (o, &d) in row.iter_mut().zip(dense.row(r)) {
                    *o += v * d.into();
                }
            }
        }
        Ok(out)
    }

    /// Scales column `k` by `factors[k]`.
    ///
    /// # Panics
    /// If `factors.len() != ncols`.
    pub fn scale_cols(&mut self, factors: &[f64]) {
        assert_eq!(factors.len(), self.ncols, "one factor per column");
        for (k, &f) in factors.iter().enumerate() {
            for v in &mut self.data[self.indptr[k]..self.indptr[k + 1]] {
                *v = (f64::from(*v) * f) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn parts_dense_roundtrip_and_products() {
        let dense = array![[1.0f32, 0.0], [0.0, 2.0], [3.0, 4.0]];
        let m = CscMatrix::from_dense(dense.view());
        assert_eq!(m.indptr(), &[0, 2, 4]);
        assert_eq!(m.indices(), &[0, 2, 1, 2]);
        assert_eq!(m.to_dense(), dense);
        let unsorted = CscMatrix::from_parts(3, 2, vec![0, 2, 4], vec![2, 0, 2, 1], vec![3.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!(unsorted, m);
        let norms = m.col_norms();
        assert!((norms[0] - 10f64.sqrt()).abs() < 1e-12 && (norms[1] - 20f64.sqrt()).abs() < 1e-12);
        let b = array![[1.0f64], [1.0], [2.0]];
        let p = m.t_dot(b.view()).unwrap();
        assert_eq!(p, array![[7.0], [10.0]]);
        assert!(m.t_dot(array![[1.0f64]].view()).is_err());
        assert!(CscMatrix::from_parts(3, 2, vec![0, 2], vec![0, 1], vec![1.0, 1.0]).is_err());
        assert!(CscMatrix::from_parts(3, 1, vec![0, 1], vec![5], vec![1.0]).is_err());
        let dup = CscMatrix::from_parts(2, 1, vec![0, 2], vec![1, 1], vec![1.0, 2.0]).unwrap();
        assert_eq!(dup.to_dense(), array![[0.0f32], [3.0]]);
    }
}
