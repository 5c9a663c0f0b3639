//! `caiman-io`: the movie vocabulary of caiman-rs and every movie format CaImAn reads and writes.
//!
//! What it is:
//! * the types every crate speaks — [`Dims`], [`Shape`], [`Movie`] (frames × d1 × d2 × d3 f32,
//!   C order) and CaImAn's pixel-by-time matrix `Yr` (pixels in **Fortran order** × time,
//!   [`Movie::to_yr`] / [`Movie::from_yr`]);
//! * streaming readers behind one trait, [`FrameSource`]: shape without reading pixels, any frame
//!   range or every k-th frame into a caller buffer, several files chained ([`ChainSource`]);
//! * readers and writers for TIFF/BigTIFF ([`tiff`]), HDF5 and NWB ([`hdf5`]), NPY/NPZ ([`npy`])
//!   and CaImAn's `.mmap` ([`mmap`]), each with CaImAn's conventions; writers never leave a
//!   half-written file ([`write::AtomicFile`]);
//! * a small HDF5 layer ([`h5`]) over a pure-Rust HDF5 implementation, so the build needs no
//!   system library;
//! * a synthetic two-photon movie generator with ground truth ([`synth`]);
//! * trace matrices (components × time) from `.npy`, CSV and HDF5 ([`matrix`]);
//! * PNG pictures of images with colormaps and simple drawing ([`png`]).
//!
//! What it is not: no algorithm (motion correction, CNMF, … live in their own crates), no threads
//! (parallelism belongs to `caiman-parallel`), no printing (it logs with `tracing`).
//!
//! ```no_run
//! use caiman_io::{open, OpenOptions};
//! let mut src = open("movie.tif", &OpenOptions::default())?;
//! let d = src.dims().pixels();
//! let mut last = vec![0.0f32; d];
//! let t = src.frames() - 1;
//! src.read_frames(t, &mut last)?;
//! # Ok::<(), caiman_io::Error>(())
//! ```

pub mod error;
pub mod h5;
pub mod hdf5;
pub mod matrix;
pub mod mmap;
pub mod movie;
pub mod npy;
pub mod png;
mod raw;
pub mod source;
pub mod synth;
pub mod tiff;
pub mod write;

pub use error::{Error, Result};
pub use movie::{DType, Dims, Movie, MovieMeta, Shape};
pub use source::{ChainSource, Format, FrameSource, OpenOptions, SourceInfo, load, open, read_movie, read_yr};
pub use write::{MovieWriter, Order, TiffSample, WriteOptions, copy_frames, create, save};
