//! A tiny line/scatter plotter for the sweep report: axes with ticks, series drawn as lines and/or
//! markers, a legend, text in a built-in 3 × 5 pixel font (drawn at 2×), PNG output.
//!
//! What it is not: a plotting library. No anti-aliasing, no log axes, ASCII text only (letters are
//! drawn upper-case). It exists so that xtask needs no plotting crate and no system library.

use std::path::Path;

use anyhow::{Context, Result};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Distinguishable series colours (Tableau 10).
pub const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Points joined by lines, with filled markers.
    LineMarkers,
    /// Filled markers only.
    Markers,
    /// Hollow markers only (secondary values such as minima).
    Hollow,
}

/// One series of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text (empty: not in the legend).
    pub name: String,
    /// `(x, y)` points; lines join them in the given order.
    pub points: Vec<(f64, f64)>,
    /// Drawing style.
    pub style: Style,
    /// Colour.
    pub color: Rgb,
}

/// A chart: title, axis labels, series and an optional horizontal reference line.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// Title, drawn above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// A horizontal line at `y` with a label (a memory budget).
    pub h_line: Option<(f64, String)>,
    /// Start the y axis at zero.
    pub y_from_zero: bool,
}

/// An RGB raster.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.w
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.h
    }

    /// The colour at `(x, y)`.
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A line `width` pixels thick (Bresenham, square pen).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, width: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let r = (width - 1) / 2;
        loop {
            self.rect(x - r, y - r, x + r + (width - 1) % 2, y + r + (width - 1) % 2, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn marker(&mut self, x: i64, y: i64, c: Rgb, hollow: bool) {
        for dy in -4i64..=4 {
            for dx in -4i64..=4 {
                let d2 = dx * dx + dy * dy;
                if d2 <= 16 && (!hollow || d2 >= 7) {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels.
    pub fn text(&mut self, x: i64, y: i64, text: &str, c: Rgb, scale: i64) {
        let mut cx = x;
        for ch in text.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        let (px, py) = (cx + col * scale, y + row as i64 * scale);
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
            cx += 4 * scale;
        }
    }

    /// Draws `text` rotated a quarter turn (reading bottom to top), bottom-left at `(x, y)`.
    pub fn text_vertical(&mut self, x: i64, y: i64, text: &str, c: Rgb, scale: i64) {
        let mut cy = y;
        for ch in text.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3i64 {
                    if bits & (0b100 >> col) != 0 {
                        let (px, py) = (x + row as i64 * scale, cy - col * scale);
                        self.rect(px, py - scale + 1, px + scale - 1, py, c);
                    }
                }
            }
            cy -= 4 * scale;
        }
    }

    /// Writes the canvas as an 8-bit RGB PNG (to a temporary name, then renamed).
    ///
    /// # Errors
    /// I/O and encoding errors naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("png.partial");
        {
            let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut enc = png::Encoder::new(std::io::BufWriter::new(f), self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().with_context(|| format!("writing {}", tmp.display()))?;
            w.write_image_data(&self.px).with_context(|| format!("writing {}", tmp.display()))?;
            w.finish().with_context(|| format!("writing {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}

/// Width in pixels of `text` at `scale`.
fn text_width(text: &str, scale: i64) -> i64 {
    (text.chars().count() as i64 * 4 - 1).max(0) * scale
}

/// "Nice" tick positions covering `[lo, hi]` (about `n` of them).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    // Steps in half-magnitude units (so 2.5 is an integer), and values computed from integers, so
    // that ticks print as 0.6 rather than 0.6000000000000001.
    let units = [2u64, 4, 5, 10, 20].into_iter().find(|u| *u as f64 * mag / 2.0 >= raw).unwrap_or(20);
    let value = |k: i64| -> f64 {
        let num = k as f64 * units as f64;
        if mag < 1.0 { num / (2.0 * (1.0 / mag).round()) } else { num * mag / 2.0 }
    };
    let step = units as f64 * mag / 2.0;
    let mut k = (lo / step).ceil() as i64;
    let mut out = Vec::new();
    while value(k) <= hi + step * 1e-9 {
        out.push(value(k));
        k += 1;
    }
    out
}

/// A tick label: few digits, no trailing zeros.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 1e4 || (a > 0.0 && a < 1e-3) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') && !s.contains('e') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

impl Chart {
    /// Renders the chart on a `w × h` canvas.
    pub fn render(&self, w: usize, h: usize) -> Canvas {
        let mut c = Canvas::new(w, h);
        let (left, right, top, bottom) = (78i64, 16i64, 40i64, 56i64);
        let legend_rows = self.series.iter().filter(|s| !s.name.is_empty()).count() as i64;
        let bottom = bottom + (legend_rows + 1) / 2 * 16;
        let (pw, ph) = (w as i64 - left - right, h as i64 - top - bottom);
        c.text(left, 12, &self.title, BLACK, 2);
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(a, b, c, d), &(x, y)| {
                (a.min(x), b.max(x), c.min(y), d.max(y))
            });
        if let Some((y, _)) = &self.h_line
            && y.is_finite()
            && (y1.is_finite() && *y <= y1 * 1.5)
        {
            y1 = y1.max(*y);
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.y_from_zero {
            y0 = y0.min(0.0);
        }
        let pad = |lo: f64, hi: f64| {
            if hi - lo < 1e-12 {
                let d = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
                (lo - d, hi + d)
            } else {
                let d = (hi - lo) * 0.06;
                (lo - d, hi + d)
            }
        };
        let (x0, x1) = pad(x0, x1);
        let (mut y0, y1) = pad(y0, y1);
        if self.y_from_zero {
            y0 = y0.max(0.0);
        }
        let sx = |x: f64| left + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
        let sy = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;
        // Integer data (worker counts, patch sides) get integer ticks.
        let x_integral = all.iter().all(|(x, _)| x.fract() == 0.0);
        for t in ticks(x0, x1, 6).into_iter().filter(|t| !x_integral || t.fract() == 0.0) {
            let x = sx(t);
            c.line((x, top), (x, top + ph), GRID, 1);
            let l = tick_label(t);
            c.text(x - text_width(&l, 2) / 2, top + ph + 8, &l, BLACK, 2);
        }
        for t in ticks(y0, y1, 5) {
            let y = sy(t);
            c.line((left, y), (left + pw, y), GRID, 1);
            let l = tick_label(t);
            c.text(left - 8 - text_width(&l, 2), y - 5, &l, BLACK, 2);
        }
        c.line((left, top), (left, top + ph), BLACK, 1);
        c.line((left, top + ph), (left + pw, top + ph), BLACK, 1);
        c.text(left + pw / 2 - text_width(&self.x_label, 2) / 2, top + ph + 26, &self.x_label, BLACK, 2);
        c.text_vertical(6, top + ph / 2 + text_width(&self.y_label, 2) / 2, &self.y_label, BLACK, 2);
        if let Some((y, label)) = &self.h_line
            && *y >= y0
            && *y <= y1
        {
            let yy = sy(*y);
            let mut x = left;
            while x < left + pw {
                c.line((x, yy), ((x + 6).min(left + pw), yy), [200, 0, 0], 1);
                x += 12;
            }
            c.text(left + pw - text_width(label, 2) - 4, yy - 14, label, [200, 0, 0], 2);
        }
        for s in &self.series {
            let pts: Vec<(i64, i64)> =
                s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| (sx(x), sy(y))).collect();
            if s.style == Style::LineMarkers {
                for w2 in pts.windows(2) {
                    c.line(w2[0], w2[1], s.color, 2);
                }
            }
            for &(x, y) in &pts {
                c.marker(x, y, s.color, s.style == Style::Hollow);
            }
        }
        for (i, s) in self.series.iter().filter(|s| !s.name.is_empty()).enumerate() {
            let (col, row) = (i as i64 % 2, i as i64 / 2);
            let (x, y) = (left + col * (pw / 2), h as i64 - bottom + 48 + row * 16);
            c.marker(x + 6, y + 4, s.color, s.style == Style::Hollow);
            c.text(x + 16, y, &s.name, BLACK, 2);
        }
        c
    }
}

/// The 3 × 5 glyph of `ch` (rows top to bottom, bit 2 = left column); unknown characters → `?`.
fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ' ' => [0, 0, 0, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        ';' => [0, 2, 0, 2, 4],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '=' => [0, 7, 0, 7, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '[' => [3, 2, 2, 2, 3],
        ']' => [6, 2, 2, 2, 6],
        '<' => [1, 2, 4, 2, 1],
        '>' => [4, 2, 1, 2, 4],
        '%' => [5, 1, 2, 4, 5],
        '_' => [0, 0, 0, 0, 7],
        '*' => [0, 5, 2, 5, 0],
        '\'' => [2, 2, 0, 0, 0],
        '"' => [5, 5, 0, 0, 0],
        '!' => [2, 2, 2, 0, 2],
        '#' => [5, 7, 5, 7, 5],
        '×' => [0, 5, 2, 5, 0],
        _ => [7, 1, 2, 0, 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.87, 4);
        assert_eq!(t, vec![0.2, 0.4, 0.6, 0.8]);
        assert_eq!(tick_label(2.50), "2.5");
        assert_eq!(tick_label(300.0), "300");
    }

    #[test]
    fn a_chart_draws_its_series_where_the_data_are() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                style: Style::LineMarkers,
                color: PALETTE[0],
            }],
            ..Chart::default()
        };
        let c = chart.render(400, 300);
        let blue = (0..c.height())
            .flat_map(|y| (0..c.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == PALETTE[0]);
        let (mut lo, mut hi) = ((usize::MAX, 0), (0, usize::MAX));
        for (x, y) in blue {
            if x < lo.0 {
                lo = (x, y);
            }
            if x > hi.0 {
                hi = (x, y);
            }
        }
        // The line rises from bottom-left to top-right (image y grows downwards).
        assert!(lo.0 < hi.0 && lo.1 > hi.1, "{lo:?} {hi:?}");
    }
}
