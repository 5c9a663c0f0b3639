//! `caiman`: the command-line face of caiman-rs.
//!
//! Subcommands: `info` (what a movie file holds), `convert` (any format to any format, streamed),
//! `motion-correct` (NoRMCorre), `deconvolve` (OASIS on trace matrices), `summary` (correlation,
//! mean, max and noise images), `cnmf` (CNMF source extraction, on patches or the whole field of view, CaImAn HDF5
//! results), `pipeline` (motion correction, C-order copy, CNMF, results and pictures in one run), `synth` (a
//! synthetic two-photon movie with ground truth) and `demo` (the whole pipeline that exists, on a synthetic
//! movie). This crate is glue: parsing flags, progress bars, printing
//! results. The work happens in the library crates.
// A command-line tool's job is to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cnmf;
mod convert;
mod deconvolve;
mod demo;
mod exec_args;
mod figures;
mod info;
mod motion;
mod online;
mod pipeline;
mod progress;
mod summary;
mod synth;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// CaImAn's calcium-imaging pipeline, in Rust.
#[derive(Debug, Parser)]
#[command(name = "caiman", version, about, long_about = None)]
struct Cli {
    /// No progress bars and no log output below warnings.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show format, dimensions, frames, dtype and size of movie files, without reading pixels.
    Info(info::Args),
    /// Convert a movie between formats (TIFF, HDF5, NPY, NPZ, CaImAn .mmap), streaming.
    Convert(convert::Args),
    /// NoRMCorre motion correction (rigid, or piecewise rigid with --pw-rigid).
    MotionCorrect(motion::Args),
    /// OASIS deconvolution (CaImAn's constrained_foopsi) of every trace in a matrix.
    Deconvolve(deconvolve::Args),
    /// Summary images: correlation image, mean, max, pixel noise (HDF5 and PNG).
    Summary(summary::Args),
    /// CNMF (patches when `rf` is set): fit, refit, evaluation, ΔF/F; CaImAn's HDF5 results.
    Cnmf(cnmf::Args),
    /// OnACID: online source extraction frame by frame; CaImAn's HDF5 results and pictures.
    Online(online::Args),
    /// The batch pipeline: motion correction, C-order memmap, CNMF, results HDF5 and PNG pictures.
    Pipeline(pipeline::Args),
    /// Write a synthetic two-photon movie and its ground truth.
    Synth(synth::Args),
    /// Run the whole available pipeline on a synthetic movie and report against ground truth.
    Demo(demo::Args),
}

fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn main() -> ExitCode {
    // Worker processes of a `processes` backend are this executable started again: serve tasks.
    caiman_parallel::Registry::new()
        .with(caiman_motion::register_tasks)
        .with(caiman_cnmf::register_tasks)
        .serve_if_worker();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    let ui = progress::Ui::new(cli.quiet);
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Convert(a) => convert::run(a, &ui),
        Command::MotionCorrect(a) => motion::run(a, &ui),
        Command::Deconvolve(a) => deconvolve::run(a, &ui),
        Command::Summary(a) => summary::run(a, &ui),
        Command::Cnmf(a) => cnmf::run(a, &ui),
        Command::Online(a) => online::run(a, &ui),
        Command::Pipeline(a) => pipeline::run(a, &ui),
        Command::Synth(a) => synth::run(a, &ui),
        Command::Demo(a) => demo::run(a, &ui),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the outermost context, then its causes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
