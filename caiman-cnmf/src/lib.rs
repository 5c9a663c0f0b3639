//! `caiman-cnmf`: CaImAn's CNMF source extraction — on overlapping patches or one field of view:
//! initialisation (greedy ROI,
//! HALS, NMF background), spatial and temporal updates, merging, component evaluation (trace SNR,
//! spatial consistency, CaImAn's decision rule), ΔF/F, CaImAn's parameters and its `CNMF.save`
//! HDF5 results — and the kernels under them: pixel and trace noise, AR estimation, OASIS
//! deconvolution (batch and incremental), summary images, component matching.
//!
//! Entry points: [`cnmf::fit`] (patches when `patch.rf` is set, see [`patches`]), [`cnmf::refit`],
//! [`cnmf::run_pipeline`] on a [`pixels::Fov`];
//! [`results::save_cnmf`] / [`results::load_cnmf`].
//!
//! What it is not: no movie formats (movies come through `caiman-io` frame sources), no threads
//! (work over many traces or pixel blocks is mapped through a `caiman-parallel` executor), no
//! printing (logs go through `tracing`).

pub mod cnmf;
pub mod dff;
pub mod error;
pub mod estimates;
pub mod evaluation;
pub mod foopsi;
pub mod init;
pub mod matching;
pub mod merging;
pub mod noise;
pub mod oasis;
pub mod online_oasis;
pub mod params;
pub mod passes;
pub mod patches;
pub mod pixels;
pub mod quality;
pub mod results;
pub mod sparse;
pub mod spatial;
pub mod stats;
pub mod summary;
pub mod temporal;

pub use error::{Error, Result};

/// Registers every task type of this crate with a worker registry (for the `processes`
/// strategy: a worker program must know the tasks it may be sent).
pub fn register_tasks(r: caiman_parallel::Registry) -> caiman_parallel::Registry {
    let r = noise::register_tasks(r);
    let r = summary::register_tasks(r);
    let r = foopsi::register_tasks(r);
    let r = online_oasis::register_tasks(r);
    let r = dff::register_tasks(r);
    let r = spatial::register_tasks(r);
    let r = quality::register_tasks(r);
    let r = cnmf::register_tasks(r);
    let r = patches::register_tasks(r);
    let r = passes::register_tasks(r);
    evaluation::register_tasks(r)
}
