//! `caiman-bench`: every criterion benchmark of the workspace lives in `benches/` here (one file
//! per crate, one group per kernel, ids encoding size and strategy), plus the fixtures they share.
//!
//! It is not a dependency of any other crate and holds no algorithm. Run the benches with
//! `cargo bench -p caiman-bench` (`-- --quick` for a short pass).
//!
//! The [`point`] module (and the `caiman-bench-point` binary over it) measures ONE configuration
//! of one pipeline stage in a fresh process — time, CPU, peak memory of the process tree, scratch
//! bytes and accuracy against synthetic ground truth — for `cargo xtask perf-sweep`.

pub mod point;

use std::path::{Path, PathBuf};

use caiman_io::{Dims, MovieWriter, Shape, WriteOptions};

/// Write a deterministic movie of `shape` to `path` (format by extension) without holding it in
/// memory; values are integers in `0..4096` so u16 TIFF holds them exactly. Returns the final path.
pub fn write_fixture(path: &Path, shape: Shape, opts: &WriteOptions) -> caiman_io::Result<PathBuf> {
    let mut w: Box<dyn MovieWriter> = caiman_io::create(path, shape, opts)?;
    let d = shape.dims.pixels();
    let mut frame = vec![0f32; d];
    for t in 0..shape.frames {
        for (p, v) in frame.iter_mut().enumerate() {
            // A cheap hash: looks like noise, reproducible, exact in u16.
            let h = (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            *v = ((h >> 40) % 4096) as f32;
        }
        w.write_frames(&frame)?;
    }
    w.finish()
}

/// The standard two-photon frame size, 512 × 512.
pub const FRAME_512: Dims = Dims::planar(512, 512);
