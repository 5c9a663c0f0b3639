//! `caiman summary MOVIE -o OUT.h5 [--png]`: the summary images of a movie — local correlation
//! image `Cn`, mean, max, pixel noise `sn` (and optionally `Cn_fft`, bin median) — streamed from
//! the file on any backend, written as HDF5 datasets and, with `--png`, as pictures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use caiman_cnmf::noise::{NoiseFftOptions, pixel_noise};
use caiman_cnmf::summary::{Neighbours, SummaryImages, SummaryOptions, summary_images};
use caiman_io::png::{Colormap, Scaling, save_scalar};
use caiman_parallel::{AnyExecutor, Executor};
use ndarray::{Array2, ArrayView3};
use serde::Serialize;

use crate::exec_args::ExecArgs;
use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie(s) (any readable format).
    movie: PathBuf,
    /// Output HDF5 file with datasets `Cn`, `mean`, `max`, `sn` (d1 × d2, or d1 × d2 × d3 for
    /// volumes), plus `Cn_fft` / `median` when asked for.
    #[arg(short, long)]
    output: PathBuf,
    /// Also write `<output stem>_<image>.png` pictures next to the output.
    #[arg(long)]
    png: bool,
    /// HDF5 dataset of the input (default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    /// Four neighbours for the correlation image instead of CaImAn's default eight.
    #[arg(long)]
    four_neighbours: bool,
    /// Also compute `local_correlations_fft` (`Cn_fft`).
    #[arg(long)]
    fft: bool,
    /// Also compute the bin median image over windows of this many frames (CaImAn: 10).
    #[arg(long)]
    median_window: Option<usize>,
    /// Memory the pixel-noise pass may use for pixel traces, in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: usize,
    #[command(flatten)]
    exec: ExecArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    output: PathBuf,
    pngs: Vec<PathBuf>,
    frames: usize,
    dims: String,
    backend: String,
    seconds_images: f64,
    seconds_noise: f64,
    mean_cn: f64,
    median_sn: f64,
}

/// The images of one run, as f32 arrays `d1 × d2 × d3` with their dataset names.
pub(crate) struct Images {
    pub(crate) summary: SummaryImages,
    pub(crate) sn: Vec<f64>,
    pub(crate) seconds_images: f64,
    pub(crate) seconds_noise: f64,
}

impl Images {
    fn named(&self) -> Vec<(&'static str, ArrayView3<'_, f64>, Colormap)> {
        let s = &self.summary;
        let d = s.dims;
        let sn = ArrayView3::from_shape((d.d1, d.d2, d.d3), &self.sn).expect("sn has one value per pixel");
        let mut v = vec![("Cn", s.cn.view(), Colormap::Viridis), ("mean", s.mean.view(), Colormap::Gray)];
        if let Some(f) = &s.cn_fft {
            v.push(("Cn_fft", f.view(), Colormap::Viridis));
        }
        if let Some(m) = &s.median {
            v.push(("median", m.view(), Colormap::Gray));
        }
        v.push(("sn", sn, Colormap::Viridis));
        v
    }
}

/// Computes the summary images and the pixel noise of `movie` (two passes; `passes_done` hears
/// when the first is over).
pub(crate) fn compute(
    movie: &Path,
    open: &caiman_io::OpenOptions,
    opts: &SummaryOptions,
    memory_bytes: usize,
    exec: &AnyExecutor,
    passes_done: &dyn Fn(u64),
) -> Result<Images> {
    let started = Instant::now();
    let summary =
        summary_images(movie, open, opts, exec).with_context(|| format!("summary images of {}", movie.display()))?;
    let seconds_images = started.elapsed().as_secs_f64();
    passes_done(1);
    let started = Instant::now();
    let noise = pixel_noise(movie, open, &NoiseFftOptions::default(), memory_bytes, exec)
        .with_context(|| format!("pixel noise of {}", movie.display()))?;
    Ok(Images { summary, sn: noise.sn, seconds_images, seconds_noise: started.elapsed().as_secs_f64() })
}

fn shape_of(a: &ArrayView3<'_, f64>) -> Vec<usize> {
    let (d1, d2, d3) = a.dim();
    if d3 == 1 { vec![d1, d2] } else { vec![d1, d2, d3] }
}

/// Writes the images as HDF5 datasets (f32 `max` as is, the rest f64).
pub(crate) fn write_hdf5(path: &Path, images: &Images) -> Result<PathBuf> {
    let mut w = caiman_io::h5::H5Writer::create(path)?;
    for (name, a, _) in images.named() {
        w.write_f64(name, &shape_of(&a), &a.iter().copied().collect::<Vec<_>>())?;
    }
    let max = &images.summary.max;
    let (d1, d2, d3) = max.dim();
    let shape = if d3 == 1 { vec![d1, d2] } else { vec![d1, d2, d3] };
    w.write_f32("max", &shape, &max.iter().copied().collect::<Vec<_>>())?;
    Ok(w.finish()?)
}

/// Writes `<stem>_<name>.png` for every image (the middle plane of a volume), 4× enlarged when
/// the frame is small.
pub(crate) fn write_pngs(base: &Path, images: &Images) -> Result<Vec<PathBuf>> {
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "summary".into());
    let plane = |a: ArrayView3<'_, f64>| -> Array2<f32> {
        let k = a.dim().2 / 2;
        a.index_axis(ndarray::Axis(2), k).mapv(|v| v as f32)
    };
    let max = images.summary.max.mapv(f64::from);
    let mut all = images.named();
    all.push(("max", max.view(), Colormap::Gray));
    let mut out = Vec::new();
    for (name, a, cmap) in all {
        let img = plane(a);
        let zoom = (512 / img.dim().0.max(img.dim().1).max(1)).clamp(1, 4);
        let p = base.with_file_name(format!("{stem}_{name}.png"));
        out.push(save_scalar(&p, img.view(), cmap, Scaling::default(), zoom)?);
    }
    Ok(out)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let backend = args.exec.backend();
    let exec = backend.build()?;
    let open = caiman_io::OpenOptions { dataset: args.dataset.clone(), ..Default::default() };
    let mut opts = SummaryOptions { fft: args.fft, median_window: args.median_window, ..Default::default() };
    if args.four_neighbours {
        opts.corr.neighbours = Neighbours::Four;
    }
    let bar = ui.items_bar(2, "summary", "passes");
    let images = compute(&args.movie, &open, &opts, args.memory_mib.max(1) << 20, &exec, &|n| bar.set_position(n))?;
    bar.finish_and_clear();
    let workers = exec.workers();
    drop(exec);
    let out = write_hdf5(&args.output, &images)?;
    let pngs = if args.png { write_pngs(&args.output, &images)? } else { Vec::new() };
    let s = &images.summary;
    let finite_mean = |v: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = v.filter(|x| x.is_finite()).fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        sum / n.max(1) as f64
    };
    let mut sorted: Vec<f64> = images.sn.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let summary = Summary {
        output: out.clone(),
        pngs: pngs.clone(),
        frames: s.frames,
        dims: s.dims.to_string(),
        backend: format!("{backend} ({workers} workers)"),
        seconds_images: images.seconds_images,
        seconds_noise: images.seconds_noise,
        mean_cn: finite_mean(&mut s.cn.iter().copied()),
        median_sn: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !ui.quiet() {
        println!(
            "summary images of {} frames of {}: images {:.2} s, noise {:.2} s ({}); mean Cn {:.3}, median sn {:.3}",
            summary.frames,
            summary.dims,
            summary.seconds_images,
            summary.seconds_noise,
            summary.backend,
            summary.mean_cn,
            summary.median_sn
        );
        println!("{}", out.display());
        for p in &pngs {
            println!("{}", p.display());
        }
    }
    Ok(())
}
