//! `caiman cnmf MOVIE [--params FILE.json] -o results.hdf5 [--json]`: CaImAn's CNMF — fit (on
//! overlapping patches when the params set `patch.rf`, else on the whole field of view), refit
//! (spatial/temporal updates and merging on the whole field of view), component evaluation, ΔF/F
//! — saved in CaImAn's `CNMF.save` HDF5 layout (CaImAn's `load_CNMF` opens it).
//!
//! The movie is read into memory as `Yr` (pixels × frames). A C-order CaImAn `.mmap` is mapped
//! instead of read, and worker processes (`--backend processes`) read their pixel blocks from it;
//! for other inputs with that backend the movie is streamed into a temporary C-order memmap next
//! to the output ([`c_order_memmap`], which `caiman pipeline` uses too), removed afterwards (as
//! CaImAn's `save_memmap`, without its `+0.0001`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use caiman_cnmf::cnmf::{FitReport, StageReport, fit, run_pipeline_with};
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::results::{CnmfResults, save_cnmf};
use caiman_io::mmap::{CopyStep, MmapName, MmapSource};
use caiman_io::{Dims, FrameSource, OpenOptions, Order};
use caiman_parallel::{AnyExecutor, Executor, Strategy};
use ndarray::Array2;
use serde::Serialize;

use crate::exec_args::{ExecArgs, MemoryArgs};
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie (any readable format; a C-order CaImAn `.mmap` is mapped, not copied).
    movie: PathBuf,
    /// CaImAn parameter JSON (`CNMFParams.to_json` output or a `params_dict`); unknown keys are
    /// reported and ignored. Default: CaImAn's defaults. `quality.use_cnn` is ignored (CaImAn's CNN
    /// weights are not available): components are accepted by SNR and spatial consistency alone.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Output results file (`.hdf5` or `.h5`), CaImAn's `CNMF.save` layout.
    #[arg(short, long)]
    output: PathBuf,
    /// HDF5 dataset of the input (default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    /// Stop after the fit (no refit, evaluation or ΔF/F), as `CNMF.fit` alone.
    #[arg(long)]
    no_refit: bool,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    memory: MemoryArgs,
    /// Print a JSON summary (per-stage time, peak memory, component counts) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    output: PathBuf,
    movie: PathBuf,
    frames: usize,
    dims: String,
    backend: String,
    components: usize,
    accepted: Option<usize>,
    rejected: Option<usize>,
    seconds: f64,
    peak_rss_mib: f64,
    stages: Vec<StageReport>,
    warnings: Vec<String>,
}

/// Loads CaImAn parameters (or defaults), reporting unknown keys and consistency changes.
pub(crate) fn load_params(path: Option<&Path>, dims: Dims, frames: usize) -> Result<(CnmfParams, Vec<String>)> {
    let (mut params, mut warnings) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading parameters {}", p.display()))?;
            CnmfParams::from_caiman_json(&text).with_context(|| format!("parameters {}", p.display()))?
        }
        None => (CnmfParams::new(), Vec::new()),
    };
    let mut dims_v = vec![dims.d1, dims.d2];
    if dims.is_volume() {
        dims_v.push(dims.d3);
    }
    params.data.dims = Some(dims_v);
    // check_consistency logs each change it makes; the list also goes into the JSON summary.
    warnings.extend(params.check_consistency(Some(frames)).context("parameters")?);
    Ok((params, warnings))
}

/// The movie as `Yr`, mapped or in memory, plus a temporary memmap to remove afterwards.
pub(crate) struct MovieYr {
    dims: Dims,
    mapped: Option<(MmapSource, PathBuf)>,
    memory: Option<std::sync::Arc<Array2<f32>>>,
    temp: Option<PathBuf>,
    budget: Option<u64>,
}

/// Bytes of one pixel block of a C-order copy: 256 MiB, or an eighth of the memory budget.
pub(crate) fn transpose_block_bytes(max: usize, budget: Option<u64>) -> usize {
    let by_budget = budget.map_or(usize::MAX, |b| usize::try_from(b / 8).unwrap_or(usize::MAX));
    max.min(by_budget).max(1 << 20)
}

impl MovieYr {
    /// Opens `movie`: maps a C-order `.mmap`; otherwise, when `need_file` (worker processes read
    /// their rows by path) or the movie is more than half the memory `budget`, streams it into a
    /// temporary C-order memmap in `scratch_dir` (removed when this is dropped) and maps that,
    /// else reads it into memory. The field of view carries the budget.
    pub(crate) fn open(
        movie: &Path,
        dataset: Option<String>,
        need_file: bool,
        scratch_dir: &Path,
        budget: Option<u64>,
        ui: &Ui,
    ) -> Result<Self> {
        let open = caiman_io::OpenOptions { dataset, ..Default::default() };
        let is_c_mmap = MmapName::decode(movie).is_ok_and(|n| n.order == Order::C);
        let mut src = caiman_io::open(movie, &open)?;
        let shape = src.info().shape;
        let bytes = (shape.frames * shape.dims.pixels()) as u64 * 4;
        let too_big = budget.is_some_and(|b| bytes > b / 2);
        if is_c_mmap || need_file || too_big {
            drop(src);
            let base = scratch_dir.join(format!(".caiman_cnmf_{}", std::process::id()));
            let block = transpose_block_bytes(256 << 20, budget);
            let (path, is_input) = c_order_memmap(&[movie.to_path_buf()], &open, &base, block, ui)?;
            let temp = (!is_input).then(|| path.clone());
            let src = MmapSource::open(&path)?;
            let dims = src.info().shape.dims;
            return Ok(MovieYr { dims, mapped: Some((src, path)), memory: None, temp, budget });
        }
        let dims = shape.dims;
        let yr = caiman_io::read_yr(src.as_mut()).with_context(|| format!("reading {}", movie.display()))?;
        Ok(MovieYr { dims, mapped: None, memory: Some(std::sync::Arc::new(yr)), temp: None, budget })
    }

    /// The field of view.
    pub(crate) fn fov(&self) -> Result<Fov<'_>> {
        let fov = match (&self.mapped, &self.memory) {
            (Some((src, path)), _) => Fov { mmap: Some(path.as_path()), ..Fov::new(self.dims, src.yr())? },
            (None, Some(yr)) => Fov::from_shared(self.dims, yr)?,
            (None, None) => unreachable!("one of the two is always set"),
        };
        Ok(fov.with_budget(self.budget))
    }
}

impl Drop for MovieYr {
    fn drop(&mut self) {
        self.mapped = None;
        if let Some(p) = self.temp.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What a CNMF run produced.
pub(crate) struct CnmfRun {
    pub(crate) results: CnmfResults,
    pub(crate) report: FitReport,
    pub(crate) warnings: Vec<String>,
}

/// Fits (and unless `no_refit` refits, evaluates and computes ΔF/F) the field of view.
pub(crate) fn run_cnmf(
    fov: &Fov<'_>,
    params: CnmfParams,
    no_refit: bool,
    exec: &AnyExecutor,
    ui: &Ui,
    mmap_file: Option<String>,
) -> Result<CnmfRun> {
    let steps = if no_refit { 1 } else { 4 };
    let bar = ui.items_bar(steps, "cnmf", "steps");
    let (est, params, report) = if no_refit {
        let (est, report) = fit(fov, &params, exec).context("CNMF fit")?;
        (est, params, report)
    } else {
        let out = run_pipeline_with(fov, &params, exec, &mut |_| bar.inc(1))
            .context("CNMF (fit, refit, evaluation, ΔF/F)")?;
        (out.estimates, out.params, out.report)
    };
    bar.finish_and_clear();
    let results = CnmfResults { mmap_file, ..CnmfResults::new(params, est) };
    Ok(CnmfRun { results, report, warnings: Vec::new() })
}

/// [`caiman_io::mmap::c_order_memmap`] with progress bars.
pub(crate) fn c_order_memmap(
    movies: &[PathBuf],
    open: &OpenOptions,
    base: &Path,
    block_bytes: usize,
    ui: &Ui,
) -> Result<(PathBuf, bool)> {
    let mut bar: Option<(CopyStep, indicatif::ProgressBar)> = None;
    let out = caiman_io::mmap::c_order_memmap(movies, open, base, block_bytes, &mut |step, done, total| {
        let (_, b) = bar.get_or_insert_with(|| match step {
            CopyStep::Transpose => (step, ui.items_bar(total, "transpose", "blocks")),
            CopyStep::Copy => (step, ui.frames_bar(total, "copy")),
        });
        b.set_position(done as u64);
    })
    .with_context(|| format!("making a C-order memmap of {}", movies[0].display()))?;
    if let Some((_, b)) = bar {
        b.finish_and_clear();
    }
    Ok(out)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let ext = args.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "hdf5" | "h5") {
        bail!("{}: the results file must end in .hdf5 or .h5 (CaImAn's CNMF.save layout)", args.output.display());
    }
    let backend = args.exec.backend();
    let exec = backend.build()?;
    let scratch = args.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let movie = MovieYr::open(
        &args.movie,
        args.dataset.clone(),
        exec.strategy() == Strategy::Processes,
        scratch,
        args.memory.memory_budget,
        ui,
    )?;
    let fov = movie.fov()?;
    let (params, warnings) = load_params(args.params.as_deref(), fov.dims, fov.frames())?;
    let started = Instant::now();
    let mmap_file = movie.mapped.as_ref().filter(|_| movie.temp.is_none()).map(|(_, p)| p.display().to_string());
    let mut run = run_cnmf(&fov, params, args.no_refit, &exec, ui, mmap_file)?;
    run.warnings = warnings;
    let seconds = started.elapsed().as_secs_f64();
    let frames = fov.frames();
    let dims = fov.dims;
    let workers = exec.workers();
    drop(exec);
    save_cnmf(&args.output, &run.results).with_context(|| format!("saving {}", args.output.display()))?;
    let est = &run.results.estimates;
    let summary = Summary {
        output: args.output.clone(),
        movie: args.movie.clone(),
        frames,
        dims: dims.to_string(),
        backend: format!("{backend} ({workers} workers)"),
        components: est.n_components(),
        accepted: est.idx_components.as_ref().map(Vec::len),
        rejected: est.idx_components_bad.as_ref().map(Vec::len),
        seconds,
        peak_rss_mib: caiman_parallel::peak_rss_kib() as f64 / 1024.0,
        stages: run.report.stages.clone(),
        warnings: run.warnings.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        let acc = match (summary.accepted, summary.rejected) {
            (Some(a), Some(r)) => format!(", {a} accepted, {r} rejected"),
            _ => String::new(),
        };
        println!(
            "CNMF on {} frames of {}: {} components{acc} in {:.2} s ({}), peak {:.0} MiB",
            frames, summary.dims, summary.components, seconds, summary.backend, summary.peak_rss_mib
        );
        for s in &summary.stages {
            println!("  {:<18} {:>8.3} s  {:>4} components", s.stage, s.seconds, s.components);
        }
        println!("{}", args.output.display());
    }
    Ok(())
}
