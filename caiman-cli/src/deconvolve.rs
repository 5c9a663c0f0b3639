//! `caiman deconvolve TRACES -o OUT.h5`: CaImAn's `constrained_foopsi` (OASIS) on every row of a
//! trace matrix, on any execution backend; writes `c, s, bl, c1, g, sn, lam` with CaImAn's names.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use caiman_cnmf::foopsi::{FoopsiOptions, FoopsiResult, deconvolve_traces};
use caiman_parallel::Executor;
use serde::Serialize;

use crate::exec_args::ExecArgs;
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Traces, one per row (components × time): `.npy`, `.csv`/`.tsv`/`.txt`, or an HDF5 dataset.
    traces: PathBuf,
    /// Output HDF5 file: datasets `c`, `s` (K × T), `bl`, `c1`, `sn`, `lam` (K; NaN for `--p 0`),
    /// `g` (K × p).
    #[arg(short, long)]
    output: PathBuf,
    /// HDF5 dataset holding the traces (default: the file's only 1-D/2-D dataset).
    #[arg(long)]
    dataset: Option<String>,
    /// Order of the autoregressive model (0: no deconvolution, 1 or 2). Default 1, as CaImAn's demo
    /// pipelines (`CNMFParams` defaults to 2).
    #[arg(long, default_value_t = 1)]
    p: usize,
    /// AR coefficients (comma separated, `p` values) for every trace; estimated per trace if absent.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    g: Option<Vec<f64>>,
    /// Noise standard deviation for every trace; estimated per trace (Welch PSD) if absent.
    #[arg(long)]
    sn: Option<f64>,
    /// Minimal spike size: negative = multiple of the noise level (`|s_min|·sn·sqrt(1−g)`), 0 = L0
    /// search, positive = absolute threshold. Absent: L1 penalty (CaImAn's default).
    #[arg(long, allow_negative_numbers = true)]
    s_min: Option<f64>,
    /// Re-estimate g from the largest isolated events (CaImAn's `optimize_g`, number of events).
    #[arg(long, num_args = 0..=1, default_missing_value = "5")]
    optimize_g: Option<usize>,
    /// Allow a negative baseline (CaImAn's pipeline passes `bas_nonneg=False`).
    #[arg(long)]
    allow_negative_baseline: bool,
    /// CaImAn's `fudge_factor` applied to the estimated time constants.
    #[arg(long)]
    fudge_factor: Option<f64>,
    #[command(flatten)]
    exec: ExecArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    output: PathBuf,
    traces: usize,
    samples: usize,
    p: usize,
    backend: String,
    seconds: f64,
    traces_per_second: f64,
    mean_sn: f64,
    mean_lam: f64,
    total_spikes: f64,
}

pub(crate) fn options(args: &Args) -> Result<FoopsiOptions> {
    if args.p > 2 {
        bail!("--p {}: only AR orders 0, 1 and 2 are supported (as in CaImAn)", args.p);
    }
    if let Some(g) = &args.g
        && g.len() != args.p
    {
        bail!("--g has {} values but --p is {}", g.len(), args.p);
    }
    let mut opts = FoopsiOptions { p: args.p, g: args.g.clone(), sn: args.sn, s_min: args.s_min, ..Default::default() };
    if let Some(k) = args.optimize_g {
        opts.optimize_g = k;
    }
    if args.allow_negative_baseline {
        opts.bas_nonneg = false;
    }
    if let Some(f) = args.fudge_factor {
        opts.fudge_factor = f;
    }
    Ok(opts)
}

fn write_results(path: &std::path::Path, res: &[FoopsiResult], t: usize, p: usize) -> Result<PathBuf> {
    let k = res.len();
    let mut w = caiman_io::h5::H5Writer::create(path)?;
    let rows = |f: &dyn Fn(&FoopsiResult) -> &[f64]| -> Vec<f64> { res.iter().flat_map(|r| f(r).to_vec()).collect() };
    w.write_f64("c", &[k, t], &rows(&|r| &r.c))?;
    w.write_f64("s", &[k, t], &rows(&|r| &r.s))?;
    let g: Vec<f64> = res.iter().flat_map(|r| (0..p).map(|i| r.g.get(i).copied().unwrap_or(0.0))).collect();
    w.write_f64("g", &[k, p], &g)?;
    for (name, f) in [
        ("bl", (|r: &FoopsiResult| r.bl) as fn(&FoopsiResult) -> f64),
        ("c1", |r| r.c1),
        ("sn", |r| r.sn),
        ("lam", |r| r.lam.unwrap_or(f64::NAN)),
    ] {
        w.write_f64(name, &[k], &res.iter().map(f).collect::<Vec<_>>())?;
    }
    Ok(w.finish()?)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let opts = options(&args)?;
    let traces = caiman_io::matrix::read_matrix(&args.traces, args.dataset.as_deref())?;
    let (k, t) = traces.dim();
    let backend = args.exec.backend();
    let exec = backend.build()?;
    let bar = ui.items_bar(k, "deconvolve", "traces");
    let started = Instant::now();
    // Blocks of rows between progress updates, each block spread over the workers.
    let block = (k / 20).max(16 * exec.workers());
    let mut res = Vec::with_capacity(k);
    for start in (0..k).step_by(block) {
        let rows = traces.slice(ndarray::s![start..(start + block).min(k), ..]);
        let (part, _stats) = deconvolve_traces(rows, &opts, &exec)
            .with_context(|| format!("deconvolving {} (rows {start}…)", args.traces.display()))?;
        res.extend(part);
        bar.set_position(res.len() as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let workers = exec.workers();
    drop(exec);
    let out = write_results(&args.output, &res, t, args.p)?;
    let summary = Summary {
        output: out.clone(),
        traces: k,
        samples: t,
        p: args.p,
        backend: format!("{backend} ({workers} workers)"),
        seconds,
        traces_per_second: k as f64 / seconds.max(1e-9),
        mean_sn: res.iter().map(|r| r.sn).sum::<f64>() / k as f64,
        mean_lam: res.iter().filter_map(|r| r.lam).sum::<f64>() / k as f64,
        total_spikes: res.iter().map(|r| r.s.iter().sum::<f64>()).sum(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        println!(
            "deconvolved {k} traces of {t} samples (AR({})) in {:.2} s ({:.0} traces/s, {}); mean sn {:.4}",
            args.p, seconds, summary.traces_per_second, summary.backend, summary.mean_sn
        );
        println!("{}", out.display());
    }
    Ok(())
}
