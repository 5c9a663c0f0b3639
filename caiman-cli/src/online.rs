//! `caiman online`: OnACID (CaImAn's `fit_online`) over one or more movies, frame by frame, with
//! CaImAn's `online` parameters; results in the batch HDF5 layout and the batch pictures.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use caiman_cnmf::results::{CnmfResults, save_cnmf};
use caiman_cnmf::summary::{SummaryOptions, summary_images};
use caiman_io::{ChainSource, FrameSource, OpenOptions};
use caiman_online::{FitOnlineOptions, OnlineOutput, fit_online};
use caiman_parallel::{AnyExecutor, Executor};
use serde::Serialize;

use crate::exec_args::ExecArgs;
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie(s), fitted one after the other as one recording (any readable format).
    #[arg(required = true)]
    movies: Vec<PathBuf>,
    /// CaImAn parameter JSON: the `online` group (`init_batch`, `init_method`, `epochs`,
    /// `motion_correct`, `ds_factor`, …) plus `init`, `preprocess`, `temporal`, `motion`, `data`.
    /// Default: CaImAn's defaults.
    #[arg(long, short)]
    params: Option<PathBuf>,
    /// Output results file (`.hdf5` or `.h5`, CaImAn's `CNMF.save` layout); pictures go next to it.
    #[arg(short, long)]
    output: PathBuf,
    /// Overlap reading and motion correction of the next frames with demixing of the current ones.
    #[arg(long)]
    pipelined: bool,
    /// Frames read (and overlapped, with `--pipelined`) at a time.
    #[arg(long, default_value_t = 16)]
    block: usize,
    /// HDF5 dataset of the input (default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    #[command(flatten)]
    exec: ExecArgs,
    /// Print a JSON summary (frames/s, per-stage time, peak memory, component counts) on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    output: PathBuf,
    pngs: Vec<PathBuf>,
    movies: Vec<PathBuf>,
    frames: usize,
    dims: String,
    components_init: usize,
    components: usize,
    seconds_init: f64,
    seconds_online: f64,
    frames_per_second: f64,
    peak_rss_mib: f64,
    warnings: Vec<String>,
}

/// Runs OnACID on `movies` with `params` (see [`fit_online`]), a progress bar showing frames/s.
pub(crate) fn run_online(
    movies: &[PathBuf],
    open: &OpenOptions,
    params: &caiman_cnmf::params::CnmfParams,
    opts: &FitOnlineOptions,
    exec: &AnyExecutor,
    ui: &Ui,
) -> Result<OnlineOutput> {
    let mut sources: Vec<Box<dyn FrameSource>> = Vec::with_capacity(movies.len());
    for m in movies {
        sources.push(caiman_io::open(m, open).with_context(|| format!("opening {}", m.display()))?);
    }
    let bar = ui.frames_bar(0, "online");
    let out = fit_online(&mut sources, params, exec, opts, &mut |p| {
        bar.set_length(p.frames_total as u64);
        bar.set_position(p.frames_done as u64);
        bar.set_message(format!(
            "{} neurons, {:.0} frames/s",
            p.components,
            p.frames_done as f64 / p.seconds.max(1e-9)
        ));
    })
    .context("OnACID")?;
    bar.finish_and_clear();
    Ok(out)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let ext = args.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "hdf5" | "h5") {
        bail!("{}: the results file must end in .hdf5 or .h5 (CaImAn's CNMF.save layout)", args.output.display());
    }
    if args.block == 0 {
        bail!("--block must be at least 1");
    }
    let open = OpenOptions { dataset: args.dataset.clone(), ..Default::default() };
    let shape = ChainSource::open(&args.movies, &open)
        .with_context(|| format!("opening {}", args.movies[0].display()))?
        .info()
        .shape;
    let (params, warnings) = crate::cnmf::load_params(args.params.as_deref(), shape.dims, shape.frames)?;
    let exec = args.exec.backend().build()?;
    let opts = FitOnlineOptions { pipelined: args.pipelined, block: args.block, masks: None };
    let out = run_online(&args.movies, &open, &params, &opts, &exec, ui)?;
    let est = out.estimates;
    let results = CnmfResults::new(params, est);
    save_cnmf(&args.output, &results).with_context(|| format!("saving {}", args.output.display()))?;
    // The correlation image of the (first) movie under the contours, as the batch pipeline draws.
    let images = summary_images(
        &args.movies[0],
        &open,
        &SummaryOptions { fft: false, median_window: None, ..Default::default() },
        &exec,
    )
    .with_context(|| format!("summary images of {}", args.movies[0].display()))?;
    let shifts = shifts_array(out.model.shifts());
    let pngs = crate::pipeline::write_figures(&args.output, &images.cn, &results.estimates, shifts.as_ref())?;
    let r = &out.report;
    let summary = Summary {
        output: args.output.clone(),
        pngs,
        movies: args.movies.clone(),
        frames: shape.frames,
        dims: shape.dims.to_string(),
        components_init: r.components_init,
        components: r.components_final,
        seconds_init: r.seconds_init,
        seconds_online: r.seconds_online,
        frames_per_second: r.frames_per_second,
        peak_rss_mib: caiman_parallel::peak_rss_kib() as f64 / 1024.0,
        warnings,
    };
    let workers = exec.workers();
    drop(exec);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        println!(
            "OnACID on {} frames of {} ({} workers): {} → {} components; online {:.0} frames/s ({:.2} s, init {:.2} s), \
             peak {:.0} MiB",
            summary.frames,
            summary.dims,
            workers,
            summary.components_init,
            summary.components,
            summary.frames_per_second,
            summary.seconds_online,
            summary.seconds_init,
            summary.peak_rss_mib
        );
        println!("{}", summary.output.display());
        for p in &summary.pngs {
            println!("{}", p.display());
        }
    }
    Ok(())
}

/// The online rigid shifts as a `T × 2` array for the shifts picture (`None` without motion
/// correction).
pub(crate) fn shifts_array(s: &[[f64; 2]]) -> Option<ndarray::Array2<f64>> {
    (!s.is_empty()).then(|| ndarray::Array2::from_shape_fn((s.len(), 2), |(t, ax)| s[t][ax]))
}
