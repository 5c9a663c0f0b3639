//! PNG pictures of images: summary images, footprints, overlays.
//!
//! [`RgbImage`] is an 8-bit RGB raster with the few drawing operations result pictures need
//! (pixels, lines, rectangles, nearest-neighbour upscaling); [`RgbImage::from_scalar`] maps a
//! float image through a [`Colormap`] with percentile [`Scaling`] (NaN drawn black);
//! [`RgbImage::save`] writes it through [`AtomicFile`], so a PNG is never half-written.
//!
//! What it is not: a plotting library — no axes, no fonts. Plots built from these pieces live
//! with the tool that draws them.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::write::AtomicFile;
use crate::{Error, Result};

/// How scalar values become colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colormap {
    /// Black to white.
    #[default]
    Gray,
    /// Matplotlib's perceptually uniform `viridis` (dark blue → green → yellow).
    Viridis,
}

/// Viridis at 9 evenly spaced points (matplotlib's table at 0, 1/8, …, 1).
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

impl Colormap {
    /// The colour of `x ∈ [0, 1]` (clamped).
    pub fn color(self, x: f32) -> [u8; 3] {
        let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        match self {
            Colormap::Gray => {
                let v = (x * 255.0).round() as u8;
                [v, v, v]
            }
            Colormap::Viridis => {
                let pos = x * (VIRIDIS.len() - 1) as f32;
                let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
                let w = pos - i as f32;
                let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
                std::array::from_fn(|c| (a[c] + w * (b[c] - a[c])).round() as u8)
            }
        }
    }
}

/// Which value range maps onto the colormap: the `lo`-th to `hi`-th percentiles of the finite
/// values (0 and 100 give min–max).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Lower percentile (0–100).
    pub lo: f64,
    /// Upper percentile (0–100).
    pub hi: f64,
}

impl Default for Scaling {
    /// 1st to 99.5th percentile, robust to a few hot pixels.
    fn default() -> Self {
        Scaling { lo: 1.0, hi: 99.5 }
    }
}

impl Scaling {
    /// Min–max scaling.
    pub const MIN_MAX: Scaling = Scaling { lo: 0.0, hi: 100.0 };

    /// The value range `(vmin, vmax)` this scaling picks for `values` (NaN ignored); `None`
    /// when no value is finite.
    pub fn range(&self, values: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
        let mut v: Vec<f32> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable_by(f32::total_cmp);
        let at = |p: f64| {
            let pos = p.clamp(0.0, 100.0) / 100.0 * (v.len() - 1) as f64;
            let (i, w) = (pos.floor() as usize, pos.fract());
            let j = (i + 1).min(v.len() - 1);
            (f64::from(v[i]) * (1.0 - w) + f64::from(v[j]) * w) as f32
        };
        Some((at(self.lo), at(self.hi)))
    }
}

/// An 8-bit RGB raster, row-major, `height × width`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<[u8; 3]>,
}

impl RgbImage {
    /// A `height × width` image filled with `color`.
    pub fn new(height: usize, width: usize, color: [u8; 3]) -> Self {
        RgbImage { width, height, pixels: vec![color; width * height] }
    }

    /// Maps a scalar image (row `i`, column `j`) through `cmap` after `scaling`; NaN pixels are
    /// black. A constant image maps to the colormap's lowest colour.
    pub fn from_scalar(img: ArrayView2<'_, f32>, cmap: Colormap, scaling: Scaling) -> Self {
        let (h, w) = img.dim();
        let (lo, hi) = scaling.range(img.iter().copied()).unwrap_or((0.0, 1.0));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let pixels = img.iter().map(|&v| if v.is_finite() { cmap.color((v - lo) / span) } else { [0, 0, 0] }).collect();
        RgbImage { width: w, height: h, pixels }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The colour at row `i`, column `j`.
    ///
    /// # Panics
    /// If the pixel is outside the image.
    pub fn get(&self, i: usize, j: usize) -> [u8; 3] {
        assert!(i < self.height && j < self.width, "pixel ({i}, {j}) outside {}×{}", self.height, self.width);
        self.pixels[i * self.width + j]
    }

    /// Sets row `i`, column `j` (ignored outside the image, so shapes may be clipped).
    pub fn set(&mut self, i: isize, j: isize, color: [u8; 3]) {
        if i >= 0 && j >= 0 && (i as usize) < self.height && (j as usize) < self.width {
            self.pixels[i as usize * self.width + j as usize] = color;
        }
    }

    /// Draws a line from `(i0, j0)` to `(i1, j1)` (Bresenham; clipped to the image).
    pub fn line(&mut self, (i0, j0): (isize, isize), (i1, j1): (isize, isize), color: [u8; 3]) {
        let (di, dj) = ((i1 - i0).abs(), -(j1 - j0).abs());
        let (si, sj) = (if i0 < i1 { 1 } else { -1 }, if j0 < j1 { 1 } else { -1 });
        let (mut i, mut j, mut err) = (i0, j0, di + dj);
        loop {
            self.set(i, j, color);
            if i == i1 && j == j1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dj {
                err += dj;
                i += si;
            }
            if e2 <= di {
                err += di;
                j += sj;
            }
        }
    }

    /// Fills the rectangle of rows `i0..i1` and columns `j0..j1` (clipped).
    pub fn fill_rect(&mut self, (i0, j0): (isize, isize), (i1, j1): (isize, isize), color: [u8; 3]) {
        for i in i0.max(0)..i1.min(self.height as isize) {
            for j in j0.max(0)..j1.min(self.width as isize) {
                self.set(i, j, color);
            }
        }
    }

    /// Each pixel becomes a `factor × factor` block (`factor` 0 is treated as 1).
    pub fn upscale(&self, factor: usize) -> RgbImage {
        let f = factor.max(1);
        let (w, h) = (self.width * f, self.height * f);
        let pixels = (0..h).flat_map(|i| (0..w).map(move |j| (i, j))).map(|(i, j)| self.get(i / f, j / f)).collect();
        RgbImage { width: w, height: h, pixels }
    }

    /// Writes the image as an 8-bit RGB PNG, atomically (temporary name, then rename).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written; [`Error::InvalidRequest`] for an empty
    /// image.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        if self.width == 0 || self.height == 0 {
            return Err(Error::invalid(path, "cannot write an empty image as PNG"));
        }
        let atomic = AtomicFile::new(path)?;
        {
            let file = atomic.create_file()?;
            let enc_err = |e: ::png::EncodingError| Error::io(path, std::io::Error::other(e.to_string()));
            let mut enc = ::png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
            enc.set_color(::png::ColorType::Rgb);
            enc.set_depth(::png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(enc_err)?;
            let bytes: Vec<u8> = self.pixels.iter().flatten().copied().collect();
            writer.write_image_data(&bytes).map_err(enc_err)?;
            writer.finish().map_err(enc_err)?;
        }
        atomic.commit()
    }
}

/// Writes a scalar image as a PNG (see [`RgbImage::from_scalar`]), each pixel upscaled to a
/// `zoom × zoom` block.
///
/// # Errors
/// As [`RgbImage::save`].
pub fn save_scalar(
    path: impl AsRef<Path>,
    img: ArrayView2<'_, f32>,
    cmap: Colormap,
    scaling: Scaling,
    zoom: usize,
) -> Result<PathBuf> {
    RgbImage::from_scalar(img, cmap, scaling).upscale(zoom).save(path)
}

/// Reads an 8-bit RGB or grayscale PNG back (for tests and tools).
///
/// # Errors
/// [`Error::Io`] or [`Error::Malformed`] naming the file.
pub fn read_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).at(path)?;
    let bad = |e: ::png::DecodingError| Error::malformed(path, "PNG", e.to_string());
    let mut reader = ::png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(bad)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::malformed(path, "PNG", "image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    if info.bit_depth != ::png::BitDepth::Eight {
        return Err(Error::unsupported(path, "PNG", format!("bit depth {:?}", info.bit_depth)));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let pixels = match info.color_type {
        ::png::ColorType::Rgb => buf[..w * h * 3].chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
        ::png::ColorType::Grayscale => buf[..w * h].iter().map(|&v| [v, v, v]).collect(),
        other => return Err(Error::unsupported(path, "PNG", format!("colour type {other:?}"))),
    };
    Ok(RgbImage { width: w, height: h, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scalar_image_roundtrips_through_png() {
        let img = array![[0.0f32, 1.0, 2.0], [3.0, f32::NAN, 4.0]];
        let rgb = RgbImage::from_scalar(img.view(), Colormap::Gray, Scaling::MIN_MAX);
        assert_eq!(rgb.get(0, 0), [0, 0, 0]);
        assert_eq!(rgb.get(1, 2), [255, 255, 255]);
        assert_eq!(rgb.get(1, 1), [0, 0, 0]);
        assert_eq!(rgb.get(0, 2), [128, 128, 128]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let big = rgb.upscale(3);
        big.save(&p).unwrap();
        let back = read_rgb(&p).unwrap();
        assert_eq!(back, big);
        assert_eq!((back.height(), back.width()), (6, 9));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn colormap_ends_and_drawing() {
        assert_eq!(Colormap::Viridis.color(0.0), [68, 1, 84]);
        assert_eq!(Colormap::Viridis.color(1.0), [253, 231, 37]);
        assert_eq!(Colormap::Viridis.color(2.0), [253, 231, 37]);
        let mut im = RgbImage::new(5, 5, [0, 0, 0]);
        im.line((0, 0), (4, 4), [255, 0, 0]);
        for k in 0..5 {
            assert_eq!(im.get(k, k), [255, 0, 0]);
        }
        im.line((-3, 2), (10, 2), [0, 255, 0]);
        assert_eq!(im.get(0, 2), [0, 255, 0]);
        im.fill_rect((3, 0), (9, 2), [0, 0, 255]);
        assert_eq!(im.get(4, 1), [0, 0, 255]);
        assert_eq!(Scaling::default().range([f32::NAN].into_iter()), None);
        let dir = tempfile::tempdir().unwrap();
        assert!(RgbImage::new(0, 3, [0; 3]).save(dir.path().join("e.png")).is_err());
    }
}
