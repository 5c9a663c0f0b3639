//! `cargo xtask`: developer tasks for caiman-rs (see the `xtask` library). Today: `perf-sweep`.
// A command-line tool's job is to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::sweep::{self, SweepOptions};

/// Developer tasks for caiman-rs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Map time, CPU, peak memory and accuracy over a grid of stages, strategies, workers, inner
    /// threads, thread variables, patch sizes and chunk sizes; recommend a configuration.
    #[command(after_long_help = GRID_HELP)]
    PerfSweep(PerfSweep),
}

/// `cargo xtask perf-sweep` flags.
#[derive(Debug, clap::Args)]
struct PerfSweep {
    /// Grid file (TOML; format below). Default: the built-in default grid (docs/perf/grids/default.toml).
    #[arg(long, conflicts_with = "quick")]
    grid: Option<PathBuf>,
    /// The built-in quick grid (docs/perf/grids/quick.toml): 256×256×1000 synthetic, about 25 points,
    /// under 10 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Sweep this movie instead of the grid's (any format caiman reads; `<stem>_gt.npz` next to it is
    /// used as ground truth).
    #[arg(long, conflicts_with = "synthetic")]
    movie: Option<PathBuf>,
    /// Sweep a synthetic movie of this size, D1xD2xT (generated once, cached).
    #[arg(long, value_name = "D1xD2xT")]
    synthetic: Option<String>,
    /// Only these stages (comma-separated): motion-rigid, motion-pw, cnmf, online, pipeline.
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<String>>,
    /// Memory budget (e.g. 16G, 512M): points whose median peak exceeds it are not recommended,
    /// and points whose single patch/chunk exceeds it are refused. Default: the machine's memory.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Measured runs per point (after the warm-up runs).
    #[arg(long)]
    repeats: Option<usize>,
    /// Warm-up runs per point (not measured).
    #[arg(long)]
    warmup: Option<usize>,
    /// Output directory (created).
    #[arg(long, default_value = "target/perf-sweep")]
    out: PathBuf,
    /// Use this caiman-bench-point binary instead of building it in release mode.
    #[arg(long)]
    point_bin: Option<PathBuf>,
    /// Cache of synthetic movies. Default: target/perf-sweep-cache.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Where the points write their intermediate files. Default: the cache directory.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// List the points and the refused ones, run nothing.
    #[arg(long)]
    dry_run: bool,
}

const GRID_HELP: &str = "\
GRID FILE (TOML)
  Top-level settings (all optional):
    movie = \"synthetic:256x256x1000\"   # or a path; --movie/--synthetic override
    seed = 1                           # synthetic movie seed
    params = \"base.json\"               # CaImAn params JSON the points start from (relative to the grid)
    repeats = 3                        # measured runs per point (--repeats)
    warmup = 1                         # unmeasured runs first (--warmup)
    memory_budget = \"16G\"              # --memory-budget; default: the machine's memory
    max_threads = 4                    # refuse workers × inner threads above this (default 2 × cores)
    timeout_s = 1800                   # kill a run after this
    f1_tolerance = 0.02                # CNMF: F1 a setting may lose vs the best and count as accurate
    trace_corr_tolerance = 0.02        # CNMF: median trace correlation it may lose
    shift_tolerance_px = 0.05          # motion: shift RMS error (px) it may add
  Axes, in [axes] (defaults for every block) and in [[sweep]] blocks (name = \"…\" plus axes);
  each block is a Cartesian product, the sweep is the union of the blocks:
    stages = [\"motion-rigid\", \"motion-pw\", \"cnmf\"]      # default motion-rigid, cnmf; also online, pipeline
    strategies = [\"linear\", \"threads\", \"processes\"]    # default threads
    workers = [1, 2]                                    # default max(cores - 1, 1); linear is always 1
    inner_threads = [\"auto\", 1, 2]                      # default auto
    thread_env = [{}, { OMP_NUM_THREADS = \"1\" }]        # RAYON/OMP/OPENBLAS/MKL/VECLIB variables
    num_frames_split = [80, 200]                        # motion chunk size (motion stages, pipeline)
    motion_patches = [{ strides = 48, overlaps = 24 }]  # motion-pw; pipeline (then piecewise rigid)
    cnmf_patches = [{ rf = 15, stride = 6 }, { rf = 0 }] # cnmf, pipeline; rf = 0: whole field of view;
                                                        # optional K = components per patch
  Missing stage-specific axes keep the base parameters' values. See docs/perf/README.md.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.task {
        Task::PerfSweep(a) => {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default();
            let opts = SweepOptions {
                grid: a.grid,
                quick: a.quick,
                movie: a.movie,
                synthetic: a.synthetic,
                stages: a.stages,
                memory_budget: a.memory_budget,
                repeats: a.repeats,
                warmup: a.warmup,
                out: a.out,
                point_bin: a.point_bin,
                cache_dir: a.cache_dir,
                scratch_dir: a.scratch,
                dry_run: a.dry_run,
                workspace,
            };
            match sweep::run(&opts, &mut |line| eprintln!("perf-sweep: {line}")) {
                Ok(o) => {
                    if !opts.dry_run {
                        println!("{}", opts.out.join("report.md").display());
                        if let Some(r) = &o.recommendation {
                            let env: String = r.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
                            println!(
                                "recommended: {env}caiman pipeline … --params {} --backend {}",
                                opts.out.join("recommended_params.json").display(),
                                r.backend
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
