//! Templates: CaImAn's `bin_median` (interleaved block means, then the pixel-wise median), the
//! NaN-aware median of chunk templates, and a streaming NaN-mean of corrected frames (the chunk
//! template of `tile_and_correct_wrapper`).
//!
//! numpy semantics are reproduced exactly for float32 data: block means and frame means sum in
//! float32 in frame order (numpy reduces a non-contiguous axis sequentially) and divide with a
//! correctly rounded quotient; a median of an even count is `(lo + hi) / 2` in float32. So these
//! functions give CaImAn's templates bit for bit on identical input. A more accurate `f64`
//! accumulation is available for the frame mean ([`Accumulation::F64`]).

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2};

use crate::error::{Error, Result};

/// Median of `v` (NaNs must already be removed); `NaN` for an empty slice. Reorders `v`.
fn median_f32(v: &mut [f32]) -> f32 {
    let n = v.len();
    if n == 0 {
        return f32::NAN;
    }
    v.sort_unstable_by(f32::total_cmp);
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Pixel-wise median over the first axis of `stack` (`K × d1 × d2`). With `ignore_nan`, NaNs are
/// skipped (`np.nanmedian`, all-NaN pixels give NaN); otherwise any NaN gives NaN (`np.median`).
fn median_over_stack(stack: ArrayView3<'_, f32>, ignore_nan: bool) -> Array2<f32> {
    let (k, d1, d2) = stack.dim();
    let mut buf = Vec::with_capacity(k);
    Array2::from_shape_fn((d1, d2), |(i, j)| {
        buf.clear();
        let mut has_nan = false;
        for t in 0..k {
            let v = stack[[t, i, j]];
            if v.is_nan() {
                has_nan = true;
            } else {
                buf.push(v);
            }
        }
        if has_nan && !ignore_nan { f32::NAN } else { median_f32(&mut buf) }
    })
}

/// CaImAn's `bin_median(mat, window, exclude_nans)` for a `T × d1 × d2` movie: block `j` is the
/// mean of frames `j, j + n, j + 2n, …` (`n = T / window`, **interleaved**, trailing frames
/// dropped; `window = T` when `T < window`), then the pixel-wise median of the block means.
/// With `exclude_nans` the means and the median skip NaNs (`nanmean`, `nanmedian`).
///
/// # Errors
/// [`Error::Empty`] for a movie without frames or a zero window.
pub fn bin_median(mat: ArrayView3<'_, f32>, window: usize, exclude_nans: bool) -> Result<Array2<f32>> {
    let (t, d1, d2) = mat.dim();
    if t == 0 || window == 0 {
        return Err(Error::Empty { what: "bin_median input (frames or window)" });
    }
    let window = window.min(t);
    let nw = t / window;
    let mut blocks = ndarray::Array3::<f32>::zeros((nw, d1, d2));
    for j in 0..nw {
        for p in 0..d1 {
            for q in 0..d2 {
                let (mut sum, mut cnt) = (0.0f32, 0usize);
                for i in 0..window {
                    let v = mat[[i * nw + j, p, q]];
                    if exclude_nans {
                        if !v.is_nan() {
                            sum += v;
                            cnt += 1;
                        }
                    } else {
                        sum += v;
                        cnt += 1;
                    }
                }
                blocks[[j, p, q]] = (f64::from(sum) / cnt as f64) as f32;
            }
        }
    }
    Ok(median_over_stack(blocks.view(), exclude_nans))
}

/// Pixel-wise `np.nanmedian` of chunk templates (how CaImAn combines them into the new template).
///
/// # Errors
/// [`Error::Empty`] without templates; [`Error::ShapeMismatch`] if their shapes differ.
pub fn nanmedian_templates(templates: &[ArrayView2<'_, f32>]) -> Result<Array2<f32>> {
    let first = templates.first().ok_or(Error::Empty { what: "template list" })?;
    let (d1, d2) = first.dim();
    let mut stack = ndarray::Array3::<f32>::zeros((templates.len(), d1, d2));
    for (k, t) in templates.iter().enumerate() {
        if t.dim() != (d1, d2) {
            return Err(Error::ShapeMismatch {
                what: "chunk templates",
                expected: vec![d1, d2],
                got: vec![t.nrows(), t.ncols()],
            });
        }
        stack.index_axis_mut(ndarray::Axis(0), k).assign(t);
    }
    Ok(median_over_stack(stack.view(), true))
}

/// How [`NanMeanAccumulator`] sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulation {
    /// float32, frame by frame: numpy's `np.nanmean(frames, axis=0)` bit for bit (default).
    #[default]
    NumpyF32,
    /// float64 sums, rounded once at the end (more accurate, differs from CaImAn by float32
    /// rounding).
    F64,
}

/// Streaming `np.nanmean` of frames, finished as CaImAn's chunk template (pixels that were NaN in
/// every frame get the template's nanmin). Add corrected frames one by one; no per-frame
/// allocation.
#[derive(Clone, Debug)]
pub struct NanMeanAccumulator {
    dims: [usize; 2],
    mode: Accumulation,
    sum32: Vec<f32>,
    sum64: Vec<f64>,
    count: Vec<u32>,
    frames: usize,
}

impl NanMeanAccumulator {
    /// An empty accumulator for frames of `dims = [d1, d2]`.
    pub fn new(dims: [usize; 2], mode: Accumulation) -> Self {
        let n = dims[0] * dims[1];
        let (s32, s64) = match mode {
            Accumulation::NumpyF32 => (vec![0.0; n], Vec::new()),
            Accumulation::F64 => (Vec::new(), vec![0.0; n]),
        };
        Self { dims, mode, sum32: s32, sum64: s64, count: vec![0; n], frames: 0 }
    }

    /// Number of frames added so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Adds one frame (NaNs are skipped).
    ///
    /// # Panics
    /// If the frame shape differs from the accumulator's.
    pub fn add(&mut self, frame: ArrayView2<'_, f32>) {
        assert_eq!(frame.dim(), (self.dims[0], self.dims[1]), "NanMeanAccumulator: frame shape");
        self.frames += 1;
        if let Some(sl) = frame.as_slice() {
            // Contiguous fast path (branch-free, vectorisable). Adding 0.0 for a NaN is the same
            // as skipping it: a sum that starts at +0.0 can never be −0.0.
            match self.mode {
                Accumulation::NumpyF32 => {
                    for ((s, c), &v) in self.sum32.iter_mut().zip(&mut self.count).zip(sl) {
                        let ok = !v.is_nan();
                        *s += if ok { v } else { 0.0 };
                        *c += u32::from(ok);
                    }
                }
                Accumulation::F64 => {
                    for ((s, c), &v) in self.sum64.iter_mut().zip(&mut self.count).zip(sl) {
                        let ok = !v.is_nan();
                        *s += if ok { f64::from(v) } else { 0.0 };
                        *c += u32::from(ok);
                    }
                }
            }
            return;
        }
        let w = self.dims[1];
        for (i, row) in frame.rows().into_iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let k = i * w + j;
                self.count[k] += 1;
                match self.mode {
                    Accumulation::NumpyF32 => self.sum32[k] += v,
                    Accumulation::F64 => self.sum64[k] += f64::from(v),
                }
            }
        }
    }

    /// The NaN-mean into `out`; pixels without any finite sample are set to the nanmin of the
    /// result (CaImAn: `new_temp[np.isnan(new_temp)] = np.nanmin(new_temp)`).
    ///
    /// # Panics
    /// If `out` has the wrong shape.
    pub fn finish(&self, mut out: ArrayViewMut2<'_, f32>) {
        assert_eq!(out.dim(), (self.dims[0], self.dims[1]), "NanMeanAccumulator: output shape");
        let w = self.dims[1];
        let mut lo = f32::NAN;
        for ((i, j), o) in out.indexed_iter_mut() {
            let k = i * w + j;
            let sum = match self.mode {
                Accumulation::NumpyF32 => f64::from(self.sum32[k]),
                Accumulation::F64 => self.sum64[k],
            };
            let v = (sum / f64::from(self.count[k])) as f32;
            if !v.is_nan() && (lo.is_nan() || v < lo) {
                lo = v;
            }
            *o = v;
        }
        out.mapv_inplace(|v| if v.is_nan() { lo } else { v });
    }
}

/// Bytes of chunk templates a [`TemplateStack`] keeps in memory before it moves them to a
/// scratch file (64 MiB: 64 templates of 512 × 512).
pub const DEFAULT_TEMPLATE_MEMORY: usize = 64 << 20;

/// The chunk templates of one pass (CaImAn's `templates_rig` / `templates_els`): one
/// `d1 × d2` image (C order) per chunk, in chunk order.
///
/// A pass over a movie of `T` frames has `T / num_frames_split` chunks, so for long movies the
/// templates alone outgrow memory (10⁵ frames of 512 × 512: 1250 templates, 1.3 GB). The stack
/// keeps them in memory up to a byte cap, then moves them all to an unnamed scratch file in a
/// directory the caller chooses (deleted by the operating system when the stack is dropped)
/// and appends there. [`nanmedian`](Self::nanmedian) reads the templates one block of pixels at
/// a time, with a block buffer of at most about the cap, and gives the same bits as
/// [`nanmedian_templates`] on the same templates.
#[derive(Debug)]
pub struct TemplateStack {
    dims: [usize; 2],
    len: usize,
    mem: Vec<f32>,
    cap_bytes: usize,
    spill_dir: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl TemplateStack {
    /// An empty stack of `d1 × d2` templates that holds up to `cap_bytes` in memory and then
    /// spills to an unnamed file in `spill_dir`.
    pub fn new(dims: [usize; 2], cap_bytes: usize, spill_dir: impl Into<std::path::PathBuf>) -> TemplateStack {
        TemplateStack { dims, len: 0, mem: Vec::new(), cap_bytes, spill_dir: spill_dir.into(), file: None }
    }

    /// Template shape `[d1, d2]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` without templates.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `true` once the templates live in the scratch file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    fn pixels(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    fn spill_err(&self, e: std::io::Error) -> caiman_io::Error {
        caiman_io::Error::io(self.spill_dir.join("<template scratch file>"), e)
    }

    /// Append one template.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a template of another size; [`Error::Io`] if the scratch
    /// file cannot be created or written (the error names its directory).
    pub fn push(&mut self, template: &[f32]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let d = self.pixels();
        if template.len() != d {
            return Err(Error::ShapeMismatch { what: "chunk template", expected: vec![d], got: vec![template.len()] });
        }
        if self.file.is_none() && (self.len + 1) * d * 4 > self.cap_bytes {
            let f = tempfile::tempfile_in(&self.spill_dir).map_err(|e| Error::Io(self.spill_err(e)))?;
            f.write_all_at(as_bytes(&self.mem), 0).map_err(|e| Error::Io(self.spill_err(e)))?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &self.file {
            Some(f) => f
                .write_all_at(as_bytes(template), (self.len * d * 4) as u64)
                .map_err(|e| Error::Io(self.spill_err(e)))?,
            None => self.mem.extend_from_slice(template),
        }
        self.len += 1;
        Ok(())
    }

    /// Copy pixels `p0 .. p0 + out.len()` of template `k` into `out`.
    fn read_pixels(&self, k: usize, p0: usize, out: &mut [f32]) -> caiman_io::Result<()> {
        use std::os::unix::fs::FileExt;
        let start = k * self.pixels() + p0;
        match &self.file {
            Some(f) => {
                let bytes = as_bytes_mut(out);
                f.read_exact_at(bytes, (start * 4) as u64).map_err(|e| self.spill_err(e))
            }
            None => {
                out.copy_from_slice(&self.mem[start..start + out.len()]);
                Ok(())
            }
        }
    }

    /// Template `k` (C order).
    ///
    /// # Errors
    /// [`Error::Empty`] for an index past the end; [`Error::Io`] if the scratch file cannot be read.
    pub fn get(&self, k: usize) -> Result<Vec<f32>> {
        if k >= self.len {
            return Err(Error::Empty { what: "chunk template index past the end" });
        }
        let mut out = vec![0f32; self.pixels()];
        self.read_pixels(k, 0, &mut out)?;
        Ok(out)
    }

    /// Pixel-wise `np.nanmedian` over the templates (C order), as [`nanmedian_templates`]:
    /// pixels are taken in blocks so that a block of every template fits in about the byte cap.
    ///
    /// # Errors
    /// [`Error::Empty`] without templates; [`Error::Io`] if the scratch file cannot be read.
    pub fn nanmedian(&self) -> Result<Vec<f32>> {
        if self.len == 0 {
            return Err(Error::Empty { what: "template list" });
        }
        let d = self.pixels();
        let block = (self.cap_bytes / (4 * self.len)).clamp(1024, d.max(1));
        let mut buf = vec![0f32; block * self.len];
        let mut vals = Vec::with_capacity(self.len);
        let mut out = vec![0f32; d];
        let mut p0 = 0;
        while p0 < d {
            let n = block.min(d - p0);
            for k in 0..self.len {
                self.read_pixels(k, p0, &mut buf[k * n..(k + 1) * n])?;
            }
            for (i, o) in out[p0..p0 + n].iter_mut().enumerate() {
                vals.clear();
                vals.extend((0..self.len).map(|k| buf[k * n + i]).filter(|v| !v.is_nan()));
                *o = median_f32(&mut vals);
            }
            p0 += n;
        }
        Ok(out)
    }

    /// Write the stack as the `float32` dataset `name` of shape `[len, frame_shape…]`; a
    /// spilled stack is streamed template by template (chunked by one template).
    ///
    /// # Errors
    /// Whatever writing the dataset or reading the scratch file returns, naming the file.
    pub fn write_hdf5(
        &self,
        w: &mut caiman_io::h5::H5Writer,
        name: &str,
        frame_shape: &[usize],
    ) -> caiman_io::Result<()> {
        if self.file.is_none() {
            let mut shape = vec![self.len];
            shape.extend_from_slice(frame_shape);
            return w.write_f32(name, &shape, &self.mem);
        }
        w.create_appendable_f32(name, frame_shape, 1, 0)?;
        let mut buf = vec![0f32; self.pixels()];
        for k in 0..self.len {
            self.read_pixels(k, 0, &mut buf)?;
            w.append_f32(name, &buf)?;
        }
        Ok(())
    }
}

fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 plain bytes; the length is the slice's byte size.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid f32; the length is the slice's byte size.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median_f32(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f32(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median_f32(&mut []).is_nan());
    }

    #[test]
    fn accumulator_fills_all_nan_pixels_with_min() {
        let mut acc = NanMeanAccumulator::new([1, 3], Accumulation::NumpyF32);
        acc.add(ndarray::arr2(&[[1.0, f32::NAN, 5.0]]).view());
        acc.add(ndarray::arr2(&[[3.0, f32::NAN, 7.0]]).view());
        let mut out = Array2::zeros((1, 3));
        acc.finish(out.view_mut());
        assert_eq!(out, ndarray::arr2(&[[2.0, 2.0, 6.0]]));
    }

    /// Deterministic pseudo-random templates with NaNs (including an all-NaN pixel).
    fn templates(n: usize, d1: usize, d2: usize) -> Vec<Vec<f32>> {
        let mut x = 0x2545_f491_u64;
        (0..n)
            .map(|k| {
                (0..d1 * d2)
                    .map(|p| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let v = (x % 10_000) as f32 / 37.0;
                        if p == 3 || (p + k) % 11 == 0 { f32::NAN } else { v }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn template_stack_median_and_reads_match_in_memory_nanmedian_whether_spilled_or_not() {
        let (d1, d2) = (37, 53);
        let dir = tempfile::tempdir().unwrap();
        for n in [1, 2, 7, 12] {
            let ts = templates(n, d1, d2);
            let views: Vec<ArrayView2<'_, f32>> =
                ts.iter().map(|t| ArrayView2::from_shape((d1, d2), &t[..]).unwrap()).collect();
            let want: Vec<f32> = nanmedian_templates(&views).unwrap().iter().copied().collect();
            assert!(want[3].is_nan(), "the all-NaN pixel stays NaN");
            // Caps: never spill, spill at the first template, spill part-way (with pixel blocks
            // smaller than the frame, since the block is cap / (4·n) ≥ 1024 pixels).
            for cap in [usize::MAX, 0, 3 * d1 * d2 * 4] {
                let mut st = TemplateStack::new([d1, d2], cap, dir.path());
                for t in &ts {
                    st.push(t).unwrap();
                }
                assert_eq!(st.len(), n);
                assert_eq!(st.is_spilled(), cap < n * d1 * d2 * 4, "cap {cap}, n {n}");
                let got = st.nanmedian().unwrap();
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "median differs (n {n}, cap {cap})");
                for (k, t) in ts.iter().enumerate() {
                    let g = st.get(k).unwrap();
                    assert!(g.iter().zip(t).all(|(a, b)| a.to_bits() == b.to_bits()), "template {k}");
                }
                assert!(st.get(n).is_err());
                // Written to HDF5 (spilled: streamed), read back identical.
                let h5 = dir.path().join(format!("t{n}_{}.h5", cap.min(1 << 40)));
                let mut w = caiman_io::h5::H5Writer::create(&h5).unwrap();
                st.write_hdf5(&mut w, "templates_rig", &[d1, d2]).unwrap();
                w.finish().unwrap();
                let (shape, vals) = caiman_io::h5::H5File::open(&h5).unwrap().read_f32("templates_rig").unwrap();
                assert_eq!(shape, vec![n, d1, d2]);
                let flat: Vec<f32> = ts.iter().flatten().copied().collect();
                assert!(vals.iter().zip(&flat).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
        // The scratch file is unnamed: nothing but the HDF5 files is left in the directory.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| n.to_string_lossy().ends_with(".h5")), "{left:?}");
        // A template of the wrong size is an error, not a panic.
        let mut st = TemplateStack::new([d1, d2], 0, dir.path());
        assert!(matches!(st.push(&[0.0; 5]), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(st.nanmedian(), Err(Error::Empty { .. })));
    }
}
