//! `caiman pipeline MOVIE… [--params FILE.json] -o results.hdf5`: CaImAn's batch pipeline
//! (`demos/general/demo_pipeline.py`) from a raw movie to results and pictures, in one command.
//!
//! Stages:
//! 1. motion correction (NoRMCorre with the params' `motion` group; piecewise rigid when
//!    `pw_rigid` says so) into an F-order `.mmap` in a hidden per-run scratch directory
//!    (`--no-motion` skips it);
//! 2. one C-order copy for CNMF, a pixel-block transpose of the corrected movie with bounded
//!    memory (one block of pixel rows plus a tile of frames) — CaImAn's
//!    `save_memmap(order='C', border_to_0=…)` without its `+0.0001` and without its F-order
//!    intermediate copy. As CaImAn, the `border_to_0` pixels at the frame edges are zeroed unless
//!    `border_nan` is `'copy'`;
//! 3. summary images of the corrected movie (the correlation image, for the contour picture);
//! 4. CNMF (`fit` — on patches when `rf` is set —, `refit`, `evaluate_components`, `detrend_df_f`),
//!    saved in CaImAn's `CNMF.save` layout, and the motion results next to it
//!    (`<stem>_motion.h5`);
//! 5. pictures next to the output: `<stem>_contours.png`, `<stem>_traces.png`,
//!    `<stem>_shifts.png` (see [`crate::figures`]).
//!
//! The scratch directory (`--scratch`, else `$CAIMAN_TEMP`, else the output's directory) holds a
//! hidden `.caiman-pipeline-*` subdirectory that is removed when the run ends, successfully or not,
//! unless `--keep-intermediates`. The C-order copy is written with positioned writes of whole
//! pixel rows (contiguous in order C) into a [`PendingMmap`] rather than through a writable
//! memory map, so a fresh file's pages are not faulted in one by one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use caiman_cnmf::cnmf::{FitReport, StageReport};
use caiman_cnmf::estimates::Estimates;
use caiman_cnmf::results::save_cnmf;
use caiman_cnmf::summary::{SummaryOptions, summary_images};
use caiman_io::{ChainSource, Dims, FrameSource, OpenOptions, Shape};
use caiman_motion::template::DEFAULT_TEMPLATE_MEMORY;
use caiman_motion::{BorderNan, MotionJob};
use caiman_parallel::Executor;
use ndarray::{Array2, Axis};
use serde::Serialize;

use crate::cnmf::{MovieYr, c_order_memmap, load_params, run_cnmf, transpose_block_bytes};
use crate::exec_args::{ExecArgs, MemoryArgs};
use crate::figures;
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie(s) (any readable format); several are chained into one movie.
    #[arg(required = true)]
    movies: Vec<PathBuf>,
    /// CaImAn parameter JSON: its `motion` group drives motion correction, the other groups CNMF
    /// (unknown keys are reported and ignored). Default: CaImAn's defaults.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Output results file (`.hdf5` or `.h5`, CaImAn's `CNMF.save` layout); the motion results
    /// and the pictures go next to it.
    #[arg(short, long)]
    output: PathBuf,
    /// Where the intermediate memmaps go (a hidden per-run subdirectory). Default: `$CAIMAN_TEMP`
    /// if set, else the output's directory.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Skip motion correction (the movie is already registered).
    #[arg(long)]
    no_motion: bool,
    /// Keep the intermediate memmaps (their directory is printed and recorded in the results).
    #[arg(long)]
    keep_intermediates: bool,
    /// HDF5 dataset of the input (default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    /// Memory for one block of pixel rows of the C-order copy, in MiB (at most an eighth of
    /// `--memory-budget`).
    #[arg(long, default_value_t = 256)]
    transpose_mib: usize,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    memory: MemoryArgs,
    /// Print a JSON summary (per-stage time and peak memory, component counts, output paths) on
    /// stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` summary.
#[derive(Serialize)]
struct Summary {
    output: PathBuf,
    motion_results: Option<PathBuf>,
    pngs: Vec<PathBuf>,
    intermediates: Option<PathBuf>,
    movies: Vec<PathBuf>,
    frames: usize,
    dims: String,
    backend: String,
    pw_rigid: bool,
    components: usize,
    accepted: Option<usize>,
    rejected: Option<usize>,
    seconds: f64,
    peak_rss_mib: f64,
    stages: Vec<StageReport>,
    warnings: Vec<String>,
}

/// `<stem><suffix>` next to `output`.
fn beside(output: &Path, suffix: &str) -> PathBuf {
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "results".into());
    output.with_file_name(format!("{stem}{suffix}"))
}

/// The directory the hidden scratch subdirectory goes in.
fn scratch_base(arg: Option<&Path>, output: &Path) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("CAIMAN_TEMP").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

/// The three pictures (two without motion shifts), written next to `output`.
pub(crate) fn write_figures(
    output: &Path,
    cn: &ndarray::Array3<f64>,
    est: &Estimates,
    shifts: Option<&Array2<f64>>,
) -> Result<Vec<PathBuf>> {
    let dims: Dims = est.dims;
    let plane = dims.d3 / 2;
    let cn2 = cn.index_axis(Axis(2), plane.min(cn.dim().2.saturating_sub(1))).mapv(|v| v as f32);
    let accepted: Vec<usize> = est.idx_components.clone().unwrap_or_else(|| (0..est.n_components()).collect());
    let is_acc = {
        let mut v = vec![false; est.n_components()];
        for &k in &accepted {
            if k < v.len() {
                v[k] = true;
            }
        }
        v
    };
    let masks: Vec<(Array2<bool>, bool)> =
        (0..est.n_components()).map(|k| (figures::footprint_mask(&est.a, k, dims, plane, 0.2), is_acc[k])).collect();
    let zoom = figures::zoom_for(dims.d1, dims.d2);
    let mut out = Vec::new();
    let p = beside(output, "_contours.png");
    out.push(figures::contours(cn2.view(), &masks, zoom).save(&p).with_context(|| format!("writing {}", p.display()))?);
    // Up to 12 accepted components with the highest SNR (CaImAn's `SNR_comp`; index order without).
    let mut ranked = accepted.clone();
    if let Some(snr) = &est.snr_comp {
        ranked.sort_by(|&a, &b| snr[b].total_cmp(&snr[a]).then(a.cmp(&b)));
    }
    ranked.truncate(12);
    let src = est.f_dff.as_ref().unwrap_or(&est.c);
    let rows = src.select(Axis(0), &ranked);
    let width = est.frames().clamp(400, 1600);
    let p = beside(output, "_traces.png");
    out.push(figures::traces(rows.view(), width, 60).save(&p).with_context(|| format!("writing {}", p.display()))?);
    if let Some(s) = shifts {
        let p = beside(output, "_shifts.png");
        let w = s.nrows().clamp(400, 1600);
        out.push(figures::shifts(s.view(), w, 240).save(&p).with_context(|| format!("writing {}", p.display()))?);
    }
    Ok(out)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let started = Instant::now();
    let ext = args.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "hdf5" | "h5") {
        bail!("{}: the results file must end in .hdf5 or .h5 (CaImAn's CNMF.save layout)", args.output.display());
    }
    if let Some(dir) = args.output.parent().filter(|p| !p.as_os_str().is_empty())
        && !dir.is_dir()
    {
        bail!("{}: the output directory does not exist", dir.display());
    }
    let open = OpenOptions { dataset: args.dataset.clone(), ..Default::default() };
    // Check the inputs and both parameter groups before any work.
    let shape: Shape = ChainSource::open(&args.movies, &open)
        .with_context(|| format!("opening {}", args.movies[0].display()))?
        .info()
        .shape;
    let (mparams, mwarn) = crate::motion::load_params(args.params.as_deref())?;
    let mut warnings: Vec<String> = mwarn.into_iter().map(|w| format!("motion: {w}")).collect();
    let (cparams, cwarn) = load_params(args.params.as_deref(), shape.dims, shape.frames)?;
    warnings.extend(cwarn);
    let base = scratch_base(args.scratch.as_deref(), &args.output);
    let tmp = tempfile::Builder::new()
        .prefix(".caiman-pipeline-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch directory in {}", base.display()))?;
    let scratch = tmp.path().to_path_buf();
    let backend = args.exec.backend();
    let exec = backend.build()?;
    let mut report = FitReport::default();
    let budget = args.memory.memory_budget;
    let block_bytes = transpose_block_bytes(args.transpose_mib.max(1) << 20, budget);

    // 1. Motion correction, 2. the C-order copy.
    let (motion, c_path, input_is_c) = if args.no_motion {
        let t0 = Instant::now();
        let (path, is_input) = c_order_memmap(&args.movies, &open, &scratch.join("movie"), block_bytes, ui)?;
        report.record("transpose", t0, 0, None);
        (None, path, is_input)
    } else {
        let t0 = Instant::now();
        let job = MotionJob {
            inputs: args.movies.clone(),
            open: open.clone(),
            output: scratch.join("corrected.mmap"),
            params: mparams.clone(),
            template: None,
            direct_io: false,
            // The motion stage's share of the budget: an eighth for its chunk templates.
            template_memory: budget.map_or(DEFAULT_TEMPLATE_MEMORY, |b| {
                usize::try_from(b / 8).unwrap_or(usize::MAX).min(DEFAULT_TEMPLATE_MEMORY)
            }),
        };
        let (res, _) = crate::motion::run_motion(&job, &exec, ui)?;
        report.record("motion", t0, 0, None);
        let t0 = Instant::now();
        let border = if mparams.border_nan == BorderNan::Copy { 0 } else { res.border_to_0 };
        let bar = ui.items_bar(0, "transpose", "blocks");
        let path = caiman_io::mmap::transpose_f_to_c(
            &res.output,
            &scratch.join("movie"),
            border,
            block_bytes,
            &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        report.record("transpose", t0, 0, None);
        (Some(res), path, false)
    };

    // 3. Summary images of the corrected movie (the correlation image).
    let t0 = Instant::now();
    let bar = ui.items_bar(1, "summary", "passes");
    // Frame-major files serve the frame passes of summary images; the pixel-major C-order copy
    // only when it is the input itself (or several inputs were chained into it).
    let (summary_src, summary_open) = match (&motion, args.movies.as_slice()) {
        (Some(m), _) => (m.output.clone(), OpenOptions::default()),
        (None, [single]) if !input_is_c => (single.clone(), open.clone()),
        (None, _) => (c_path.clone(), OpenOptions::default()),
    };
    let opts = SummaryOptions { fft: false, median_window: None, ..Default::default() };
    let images = summary_images(&summary_src, &summary_open, &opts, &exec)
        .with_context(|| format!("summary images of {}", summary_src.display()))?;
    bar.finish_and_clear();
    report.record("summary", t0, 0, None);

    // 4. CNMF on the C-order copy, then the results files.
    let movie = MovieYr::open(&c_path, None, false, &scratch, budget, ui)?;
    let fov = movie.fov()?;
    let mmap_file = (input_is_c || args.keep_intermediates).then(|| c_path.display().to_string());
    let run = run_cnmf(&fov, cparams, false, &exec, ui, mmap_file)?;
    report.extend(run.report.clone());
    let workers = exec.workers();
    drop(movie);
    drop(exec);
    let t0 = Instant::now();
    save_cnmf(&args.output, &run.results).with_context(|| format!("saving {}", args.output.display()))?;
    let motion_results = match &motion {
        Some(m) => {
            let p = beside(&args.output, "_motion.h5");
            Some(m.save_hdf5(&p).with_context(|| format!("saving {}", p.display()))?)
        }
        None => None,
    };
    let est = &run.results.estimates;
    report.record("save", t0, est.n_components(), None);

    // 5. Pictures.
    let t0 = Instant::now();
    let bar = ui.items_bar(1, "figures", "pages");
    let pngs = write_figures(&args.output, &images.cn, est, motion.as_ref().map(|m| &m.shifts_rig))?;
    bar.finish_and_clear();
    report.record("figures", t0, est.n_components(), None);

    let intermediates = if args.keep_intermediates {
        Some(tmp.keep())
    } else {
        tmp.close().with_context(|| format!("removing the scratch directory {}", scratch.display()))?;
        None
    };
    let summary = Summary {
        output: args.output.clone(),
        motion_results,
        pngs,
        intermediates,
        movies: args.movies.clone(),
        frames: shape.frames,
        dims: shape.dims.to_string(),
        backend: format!("{backend} ({workers} workers)"),
        pw_rigid: !args.no_motion && mparams.pw_rigid,
        components: est.n_components(),
        accepted: est.idx_components.as_ref().map(Vec::len),
        rejected: est.idx_components_bad.as_ref().map(Vec::len),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: caiman_parallel::peak_rss_kib() as f64 / 1024.0,
        stages: report.stages.clone(),
        warnings,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        let acc = match (summary.accepted, summary.rejected) {
            (Some(a), Some(r)) => format!(", {a} accepted, {r} rejected"),
            _ => String::new(),
        };
        println!(
            "pipeline on {} frames of {}: {} components{acc} in {:.2} s ({}), peak {:.0} MiB",
            summary.frames, summary.dims, summary.components, summary.seconds, summary.backend, summary.peak_rss_mib
        );
        for s in &summary.stages {
            println!("  {:<18} {:>8.3} s  {:>4} components", s.stage, s.seconds, s.components);
        }
        println!("{}", summary.output.display());
        for p in summary.motion_results.iter().chain(&summary.pngs).chain(&summary.intermediates) {
            println!("{}", p.display());
        }
    }
    Ok(())
}
