//! `cargo xtask`: developer tasks for caiman-rs (being written; see issue 9).

fn main() {}
