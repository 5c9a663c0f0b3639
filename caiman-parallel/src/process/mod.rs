//! The process pool: [`Processes`] (parent side), [`Registry`] (worker side) and the wire
//! protocol between them.

mod pool;
mod registry;
mod wire;

pub use pool::Processes;
pub use registry::{Registry, WORKER_ENV, WORKER_FLAG};
