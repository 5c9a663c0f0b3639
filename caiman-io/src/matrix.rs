//! Reading and writing 2-D numeric matrices — fluorescence traces (components × time) and other
//! tables a user hands to a tool — from `.npy`, `.csv`/`.txt` and HDF5 datasets.
//!
//! A 1-D array or a single CSV line is one row. CSV: one row per line, values separated by
//! commas, semicolons, tabs or spaces; blank lines and lines starting with `#` are skipped; a
//! first line that does not parse as numbers is taken as a header and skipped. `nan`, `inf` are
//! accepted (Rust's float syntax).
//!
//! What it is not: a movie reader (see [`crate::open`]) or a general table library.

use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::error::IoContext;
use crate::h5::H5File;
use crate::npy::{NpyArray, read_npy, write_npy};
use crate::write::AtomicFile;
use crate::{Error, Result};

/// File kinds [`read_matrix`] understands, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixFormat {
    /// `.npy`.
    Npy,
    /// `.csv`, `.tsv`, `.txt`.
    Csv,
    /// `.h5`, `.hdf5`, `.hdf`.
    Hdf5,
}

impl MatrixFormat {
    /// The format named by `path`'s extension.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for any other extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "npy" => Ok(MatrixFormat::Npy),
            "csv" | "tsv" | "txt" => Ok(MatrixFormat::Csv),
            "h5" | "hdf5" | "hdf" => Ok(MatrixFormat::Hdf5),
            _ => Err(Error::unsupported(
                path,
                "matrix",
                format!("extension {ext:?}; use .npy, .csv/.tsv/.txt or .h5/.hdf5"),
            )),
        }
    }
}

fn as_2d(path: &Path, shape: &[usize], data: Vec<f64>, what: &'static str) -> Result<Array2<f64>> {
    let (r, c) = match *shape {
        [n] => (1, n),
        [r, c] => (r, c),
        _ => return Err(Error::unsupported(path, what, format!("expected a 1-D or 2-D array, found shape {shape:?}"))),
    };
    Array2::from_shape_vec((r, c), data).map_err(|e| Error::malformed(path, what, e.to_string()))
}

/// Reads a matrix (rows × columns, f64).
///
/// `dataset` selects the HDF5 dataset; without it, a file holding exactly one 1-D/2-D numeric
/// dataset uses that one. Ignored for other formats.
///
/// # Errors
/// [`Error::Io`], [`Error::Malformed`] (unparsable CSV cell with its line and column, ragged
/// rows), [`Error::MissingDataset`], [`Error::Unsupported`] (other extensions, 3-D arrays,
/// strings), [`Error::Empty`] for a matrix without values.
pub fn read_matrix(path: impl AsRef<Path>, dataset: Option<&str>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let m = match MatrixFormat::from_path(path)? {
        MatrixFormat::Npy => {
            let a = read_npy(path)?;
            let data = a.to_f64().ok_or_else(|| Error::unsupported(path, "NPY", "string arrays are not numeric"))?;
            as_2d(path, &a.shape, data, "NPY")?
        }
        MatrixFormat::Csv => read_csv(path)?,
        MatrixFormat::Hdf5 => {
            let f = H5File::open(path)?;
            let name = match dataset {
                Some(d) => d.to_string(),
                None => {
                    let candidates: Vec<String> = f
                        .dataset_paths()
                        .into_iter()
                        .filter(|p| f.dataset_info(p).is_ok_and(|i| i.shape.len() <= 2 && i.dtype.is_numeric()))
                        .collect();
                    match candidates.as_slice() {
                        [one] => one.clone(),
                        _ => {
                            return Err(Error::MissingDataset {
                                path: path.to_path_buf(),
                                name: "(none given; the file does not hold exactly one 1-D/2-D numeric dataset)".into(),
                                found: f.dataset_paths().join(", "),
                            });
                        }
                    }
                }
            };
            if !f.is_dataset(&name) {
                return Err(Error::MissingDataset {
                    path: path.to_path_buf(),
                    name,
                    found: f.dataset_paths().join(", "),
                });
            }
            let (shape, data) = f.read_f64(&name)?;
            as_2d(path, &shape, data, "HDF5")?
        }
    };
    if m.is_empty() {
        return Err(Error::Empty { path: path.to_path_buf() });
    }
    Ok(m)
}

fn read_csv(path: &Path) -> Result<Array2<f64>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split([',', ';', '\t', ' ']).map(str::trim).filter(|c| !c.is_empty()).collect();
        let parsed: std::result::Result<Vec<f64>, (usize, &str)> =
            cells.iter().enumerate().map(|(j, c)| c.parse::<f64>().map_err(|_| (j, *c))).collect();
        match parsed {
            Ok(row) => {
                if let Some(prev) = rows.first()
                    && prev.len() != row.len()
                {
                    return Err(Error::malformed(
                        path,
                        "CSV",
                        format!("line {}: {} values, but the first row has {}", n + 1, row.len(), prev.len()),
                    ));
                }
                rows.push(row);
            }
            Err(_) if first => {}
            Err((j, cell)) => {
                return Err(Error::malformed(
                    path,
                    "CSV",
                    format!("line {}, column {}: {cell:?} is not a number", n + 1, j + 1),
                ));
            }
        }
        first = false;
    }
    let cols = rows.first().map_or(0, Vec::len);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    Array2::from_shape_vec((rows.len(), cols), data).map_err(|e| Error::malformed(path, "CSV", e.to_string()))
}

/// Writes a matrix as `.npy` (f64) or `.csv` (shortest round-trip decimals), atomically.
///
/// # Errors
/// [`Error::Unsupported`] for other extensions (HDF5 results are written by the tools that own
/// their layout), [`Error::Io`].
pub fn write_matrix(path: impl AsRef<Path>, m: &Array2<f64>) -> Result<PathBuf> {
    let path = path.as_ref();
    match MatrixFormat::from_path(path)? {
        MatrixFormat::Npy => {
            let data: Vec<f64> = m.as_standard_layout().iter().copied().collect();
            write_npy(path, &NpyArray::f64(vec![m.nrows(), m.ncols()], data))?;
            Ok(path.to_path_buf())
        }
        MatrixFormat::Csv => {
            let mut s = String::with_capacity(m.len() * 12);
            for row in m.rows() {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                s.push_str(&cells.join(","));
                s.push('\n');
            }
            let atomic = AtomicFile::new(path)?;
            std::fs::write(atomic.tmp_path(), s).at(path)?;
            atomic.commit()
        }
        MatrixFormat::Hdf5 => Err(Error::unsupported(path, "matrix", "write HDF5 results with their tool's writer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn csv_npy_hdf5_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = array![[1.0, 2.5, -3.0], [0.1, 1e-300, 7.0]];
        for name in ["m.csv", "m.npy"] {
            let p = dir.path().join(name);
            write_matrix(&p, &m).unwrap();
            assert_eq!(read_matrix(&p, None).unwrap(), m, "{name}");
        }
        let p = dir.path().join("h.csv");
        std::fs::write(&p, "# comment\nt0,t1\n1, 2\n\n3;4\n").unwrap();
        assert_eq!(read_matrix(&p, None).unwrap(), array![[1.0, 2.0], [3.0, 4.0]]);
        std::fs::write(&p, "1,2\n3\n").unwrap();
        let e = read_matrix(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("h.csv"), "{e}");
        std::fs::write(&p, "1,2\n3,x\n").unwrap();
        assert!(read_matrix(&p, None).unwrap_err().to_string().contains("\"x\""));
        std::fs::write(&p, "").unwrap();
        assert!(matches!(read_matrix(&p, None), Err(Error::Empty { .. })));
        assert!(matches!(read_matrix(dir.path().join("m.xyz"), None), Err(Error::Unsupported { .. })));

        let h = dir.path().join("t.h5");
        let mut w = crate::h5::H5Writer::create(&h).unwrap();
        w.write_f64("traces", &[2, 3], &m.iter().copied().collect::<Vec<_>>()).unwrap();
        w.write_f64("other", &[3], &[1.0, 2.0, 3.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_matrix(&h, Some("traces")).unwrap(), m);
        assert_eq!(read_matrix(&h, Some("other")).unwrap(), array![[1.0, 2.0, 3.0]]);
        assert!(matches!(read_matrix(&h, None), Err(Error::MissingDataset { .. })));
        assert!(matches!(read_matrix(&h, Some("nope")), Err(Error::MissingDataset { .. })));
    }
}
