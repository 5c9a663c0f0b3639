//! `caiman motion-correct IN… -o OUT`: NoRMCorre on any movie, with CaImAn's parameters, on any
//! execution backend; writes the corrected movie, an HDF5 file of CaImAn's `MotionCorrect`
//! results, and optionally a JSON summary on stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use caiman_motion::{MotionJob, MotionParams, MotionResult, motion_correct};
use caiman_parallel::AnyExecutor;
use serde::Serialize;

use crate::exec_args::ExecArgs;
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie(s); several are chained into one movie.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Corrected movie. `.mmap` gives CaImAn's F-order memmap (named with its shape); any other
    /// extension writes that format.
    #[arg(short, long)]
    output: PathBuf,
    /// Results file (HDF5, CaImAn's `MotionCorrect` names). Default: `<output stem>_motion.h5`.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Piecewise-rigid correction after the rigid pass (overrides the params file).
    #[arg(long)]
    pw_rigid: bool,
    /// CaImAn parameter JSON; its `motion` group is used (unknown keys are reported).
    #[arg(long)]
    params: Option<PathBuf>,
    /// HDF5 dataset of the input (default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    #[command(flatten)]
    exec: ExecArgs,
    /// Print a JSON summary (frames/s, peak RSS, metrics) on stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` summary.
#[derive(Serialize)]
struct Summary<'a> {
    output: &'a Path,
    results: &'a Path,
    frames: usize,
    dims: String,
    pw_rigid: bool,
    backend: String,
    workers: usize,
    seconds: f64,
    frames_per_second: f64,
    peak_rss_mib: f64,
    min_mov: f64,
    border_to_0: usize,
    crispness: f64,
    mean_correlation: f64,
    max_abs_shift: f64,
    passes: &'a [caiman_motion::batch::PassStats],
}

/// CaImAn's `motion` group from a params file (defaults without one), with the warnings of the
/// load (unknown keys, consistency changes).
pub(crate) fn load_params(file: Option<&Path>) -> Result<(MotionParams, Vec<String>)> {
    let Some(f) = file else { return Ok((MotionParams::default(), Vec::new())) };
    let text = std::fs::read_to_string(f).with_context(|| format!("reading parameters {}", f.display()))?;
    let (p, warnings) = MotionParams::from_caiman_json(&text).with_context(|| format!("parameters {}", f.display()))?;
    Ok((p, warnings))
}

/// Runs motion correction on `exec` with a progress bar; returns the result and its seconds.
pub(crate) fn run_motion(job: &MotionJob, exec: &AnyExecutor, ui: &Ui) -> Result<(MotionResult, f64)> {
    let bar = ui.frames_bar(0, "motion");
    let started = Instant::now();
    let res = motion_correct(job, exec, &mut |pass, done, total| {
        bar.set_message(pass.to_string());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("motion correction of {}", job.inputs[0].display()))?;
    bar.finish_and_clear();
    Ok((res, started.elapsed().as_secs_f64()))
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let (mut params, warnings) = load_params(args.params.as_deref())?;
    if let Some(f) = &args.params {
        for w in warnings {
            tracing::warn!("{}: {w}", f.display());
        }
    }
    if args.pw_rigid {
        params.pw_rigid = true;
    }
    let backend = args.exec.backend();
    let job = MotionJob {
        inputs: args.inputs.clone(),
        open: caiman_io::OpenOptions { dataset: args.dataset.clone(), ..Default::default() },
        output: args.output.clone(),
        params: params.clone(),
        template: None,
        direct_io: true,
        template_memory: caiman_motion::template::DEFAULT_TEMPLATE_MEMORY,
    };
    let exec = backend.build()?;
    let (res, seconds) = run_motion(&job, &exec, ui)?;
    drop(exec);
    let results = args.results.clone().unwrap_or_else(|| {
        let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "mc".into());
        args.output.with_file_name(format!("{stem}_motion.h5"))
    });
    let results = res.save_hdf5(&results)?;
    let max_abs_shift = res.shifts_rig.iter().fold(0f64, |m, v| m.max(v.abs()));
    let peak = res.passes.iter().map(|p| p.peak_rss_kib).max().unwrap_or(0);
    let summary = Summary {
        output: &res.output,
        results: &results,
        frames: res.shape.frames,
        dims: res.shape.dims.to_string(),
        pw_rigid: params.pw_rigid,
        backend: backend.to_string(),
        workers: backend.workers(),
        seconds,
        frames_per_second: res.shape.frames as f64 / seconds,
        peak_rss_mib: peak as f64 / 1024.0,
        min_mov: res.min_mov,
        border_to_0: res.border_to_0,
        crispness: res.metrics.crispness,
        mean_correlation: res.metrics.mean_correlation,
        max_abs_shift,
        passes: &res.passes,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        println!(
            "corrected {} frames of {} in {:.1} s ({:.0} frames/s, {}); max |shift| {:.2} px, crispness {:.1}",
            summary.frames,
            summary.dims,
            seconds,
            summary.frames_per_second,
            summary.backend,
            max_abs_shift,
            summary.crispness
        );
        println!("{}\n{}", res.output.display(), results.display());
    }
    Ok(())
}
