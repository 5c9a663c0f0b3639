//! The movie vocabulary: [`Dims`], [`Shape`], [`Movie`] and CaImAn's pixel-by-time matrix `Yr`.
//!
//! Axis conventions (the same in every crate of the workspace):
//! * a movie is `frames × d1 × d2 (× d3)`, time first, then rows (`d1`, "height", "x" in CaImAn's
//!   motion code), columns (`d2`, "width"), planes (`d3`, 1 for planar movies);
//! * one frame is stored contiguously in C order over `(d1, d2, d3)`;
//! * `Yr` is `d × T` with `d = d1·d2·d3` and the pixel index in **Fortran order**,
//!   `p = i + d1·j + d1·d2·k`, exactly as CaImAn flattens images.

use ndarray::{Array2, Array4, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};

/// Spatial size of one frame: rows `d1`, columns `d2`, planes `d3` (1 for planar movies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    /// Rows (height).
    pub d1: usize,
    /// Columns (width).
    pub d2: usize,
    /// Planes (depth); 1 for a planar movie.
    pub d3: usize,
}

impl Dims {
    /// A planar frame of `d1` rows and `d2` columns.
    pub const fn planar(d1: usize, d2: usize) -> Self {
        Dims { d1, d2, d3: 1 }
    }

    /// A volume `d1 × d2 × d3`.
    pub const fn volume(d1: usize, d2: usize, d3: usize) -> Self {
        Dims { d1, d2, d3 }
    }

    /// Pixels (voxels) per frame, `d1·d2·d3`.
    pub const fn pixels(&self) -> usize {
        self.d1 * self.d2 * self.d3
    }

    /// Whether the frame has more than one plane.
    pub const fn is_volume(&self) -> bool {
        self.d3 > 1
    }

    /// Index into a C-ordered frame buffer of pixel `(i, j, k)`.
    #[inline]
    pub const fn c_index(&self, i: usize, j: usize, k: usize) -> usize {
        (i * self.d2 + j) * self.d3 + k
    }

    /// CaImAn's Fortran-order pixel index of `(i, j, k)`: `i + d1·j + d1·d2·k`.
    #[inline]
    pub const fn f_index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.d1 * (j + self.d2 * k)
    }
}

impl std::fmt::Display for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.d3 == 1 {
            write!(f, "{}×{}", self.d1, self.d2)
        } else {
            write!(f, "{}×{}×{}", self.d1, self.d2, self.d3)
        }
    }
}

/// Frames and frame size of a movie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Number of frames `T`.
    pub frames: usize,
    /// Size of one frame.
    pub dims: Dims,
}

impl Shape {
    /// A shape of `frames` frames of `dims`.
    pub const fn new(frames: usize, dims: Dims) -> Self {
        Shape { frames, dims }
    }

    /// Total number of values, `T·d`.
    pub const fn len(&self) -> usize {
        self.frames * self.dims.pixels()
    }

    /// Whether the movie holds no value.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.frames, self.dims)
    }
}

/// Metadata travelling with a movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieMeta {
    /// Frame rate in Hz (CaImAn's `fr`, default 30).
    pub fr: f64,
    /// Time of the first frame in seconds (CaImAn's `start_time`).
    pub start_time: f64,
    /// Where the movie came from, if anywhere.
    pub source: Option<std::path::PathBuf>,
}

impl Default for MovieMeta {
    fn default() -> Self {
        MovieMeta { fr: 30.0, start_time: 0.0, source: None }
    }
}

/// An in-memory movie: `frames × d1 × d2 × d3` f32 values, C order (each frame contiguous).
///
/// Planar movies have `d3 == 1`; [`Movie::view`] gives them as a 3-D `T × d1 × d2` view.
#[derive(Debug, Clone, PartialEq)]
pub struct Movie {
    data: Array4<f32>,
    /// Frame rate, start time and source.
    pub meta: MovieMeta,
}

impl Movie {
    /// A movie of zeros.
    pub fn zeros(shape: Shape) -> Self {
        let Shape { frames, dims } = shape;
        Movie { data: Array4::zeros((frames, dims.d1, dims.d2, dims.d3)), meta: MovieMeta::default() }
    }

    /// Wrap a `T × d1 × d2 × d3` array (converted to standard C layout if it is not).
    pub fn from_array4(data: Array4<f32>) -> Self {
        let data = if data.is_standard_layout() { data } else { data.as_standard_layout().into_owned() };
        Movie { data, meta: MovieMeta::default() }
    }

    /// Wrap a planar `T × d1 × d2` array.
    pub fn from_array3(data: ndarray::Array3<f32>) -> Self {
        Self::from_array4(data.insert_axis(Axis(3)))
    }

    /// Build from a flat C-ordered buffer of `shape.len()` values.
    ///
    /// # Panics
    /// If `values.len() != shape.len()`.
    #[track_caller]
    pub fn from_vec(shape: Shape, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), shape.len(), "buffer length does not match shape {shape}");
        let d = shape.dims;
        let data = Array4::from_shape_vec((shape.frames, d.d1, d.d2, d.d3), values).expect("length checked above");
        Movie { data, meta: MovieMeta::default() }
    }

    /// Set the metadata (builder style).
    pub fn with_meta(mut self, meta: MovieMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Frames and frame size.
    pub fn shape(&self) -> Shape {
        let s = self.data.shape();
        Shape::new(s[0], Dims::volume(s[1], s[2], s[3]))
    }

    /// Frame size.
    pub fn dims(&self) -> Dims {
        self.shape().dims
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.data.shape()[0]
    }

    /// The 4-D `T × d1 × d2 × d3` array.
    pub fn view4(&self) -> ArrayView4<'_, f32> {
        self.data.view()
    }

    /// The planar `T × d1 × d2` view.
    ///
    /// # Panics
    /// If the movie is volumetric (`d3 > 1`).
    #[track_caller]
    pub fn view(&self) -> ArrayView3<'_, f32> {
        assert_eq!(self.data.shape()[3], 1, "view() needs a planar movie; use view4() for volumes");
        self.data.index_axis(Axis(3), 0)
    }

    /// Mutable planar view.
    ///
    /// # Panics
    /// If the movie is volumetric (`d3 > 1`).
    #[track_caller]
    pub fn view_mut(&mut self) -> ArrayViewMut3<'_, f32> {
        assert_eq!(self.data.shape()[3], 1, "view_mut() needs a planar movie");
        self.data.index_axis_mut(Axis(3), 0)
    }

    /// All values, C order (frame after frame).
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice().expect("Movie is always in standard layout")
    }

    /// All values, mutable.
    pub fn as_slice_mut(&mut self) -> &mut [f32] {
        self.data.as_slice_mut().expect("Movie is always in standard layout")
    }

    /// Frame `t` as a flat C-ordered slice.
    pub fn frame(&self, t: usize) -> &[f32] {
        let d = self.dims().pixels();
        &self.as_slice()[t * d..(t + 1) * d]
    }

    /// The owned 4-D array.
    pub fn into_array4(self) -> Array4<f32> {
        self.data
    }

    /// CaImAn's `Yr = reshape(movie, (T, d), order='F').T`: pixels (Fortran order) × time.
    pub fn to_yr(&self) -> Array2<f32> {
        let s = self.shape();
        let mut yr = Array2::zeros((s.dims.pixels(), s.frames));
        for t in 0..s.frames {
            let frame = self.frame(t);
            let mut col = yr.column_mut(t);
            frame_c_to_f(s.dims, frame, |p, v| col[p] = v);
        }
        yr
    }

    /// Inverse of [`Movie::to_yr`]: `reshape(Yr.T, [T] + dims, order='F')`.
    ///
    /// # Panics
    /// If `yr.nrows() != dims.pixels()`.
    #[track_caller]
    pub fn from_yr(yr: ArrayView2<'_, f32>, dims: Dims) -> Self {
        assert_eq!(
            yr.nrows(),
            dims.pixels(),
            "Yr has {} rows but dims {dims} have {} pixels",
            yr.nrows(),
            dims.pixels()
        );
        let t_len = yr.ncols();
        let mut m = Movie::zeros(Shape::new(t_len, dims));
        let d = dims.pixels();
        let buf = m.as_slice_mut();
        for t in 0..t_len {
            let col = yr.column(t);
            let frame = &mut buf[t * d..(t + 1) * d];
            frame_f_to_c(dims, |p| col[p], frame);
        }
        m
    }
}

/// Visit every value of a C-ordered frame with its Fortran-order pixel index.
#[inline]
pub fn frame_c_to_f(dims: Dims, frame: &[f32], mut put: impl FnMut(usize, f32)) {
    let mut c = 0;
    for i in 0..dims.d1 {
        for j in 0..dims.d2 {
            for k in 0..dims.d3 {
                put(dims.f_index(i, j, k), frame[c]);
                c += 1;
            }
        }
    }
}

/// Fill a C-ordered frame from a function of the Fortran-order pixel index.
#[inline]
pub fn frame_f_to_c(dims: Dims, get: impl Fn(usize) -> f32, frame: &mut [f32]) {
    let mut c = 0;
    for i in 0..dims.d1 {
        for j in 0..dims.d2 {
            for k in 0..dims.d3 {
                frame[c] = get(dims.f_index(i, j, k));
                c += 1;
            }
        }
    }
}

/// Element type of the values stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// Unsigned 64-bit.
    U64,
    /// Signed 64-bit.
    I64,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

impl DType {
    /// Bytes per value.
    pub const fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// numpy-style name (`uint16`, `float32`, …).
    pub const fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Convert raw little- or big-endian values of `dtype` to f32, appending nothing: `out.len()` values
/// are decoded from the front of `raw`.
///
/// # Panics
/// If `raw` is shorter than `out.len() · dtype.size()`.
pub fn decode_into_f32(dtype: DType, little_endian: bool, raw: &[u8], out: &mut [f32]) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            for (o, c) in out.iter_mut().zip(raw.chunks_exact($n)) {
                let b: [u8; $n] = c.try_into().expect("chunk size");
                *o = (if little_endian { <$t>::from_le_bytes(b) } else { <$t>::from_be_bytes(b) }) as f32;
            }
        }};
    }
    assert!(raw.len() >= out.len() * dtype.size(), "raw buffer too short");
    match dtype {
        DType::U8 => out.iter_mut().zip(raw).for_each(|(o, &b)| *o = b as f32),
        DType::I8 => out.iter_mut().zip(raw).for_each(|(o, &b)| *o = b as i8 as f32),
        DType::U16 => conv!(u16, 2),
        DType::I16 => conv!(i16, 2),
        DType::U32 => conv!(u32, 4),
        DType::I32 => conv!(i32, 4),
        DType::U64 => conv!(u64, 8),
        DType::I64 => conv!(i64, 8),
        DType::F32 => conv!(f32, 4),
        DType::F64 => conv!(f64, 8),
    }
}
