//! `caiman synth OUT`: a synthetic two-photon movie with its ground truth (`<stem>_gt.npz`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use caiman_io::synth::{SynthParams, truth_path, write_movie_to};
use caiman_io::{TiffSample, WriteOptions};

use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Output movie; the format follows the extension (.tif, .h5, .npy, .npz, .mmap).
    output: PathBuf,
    /// Movie size `D1xD2xT` (rows × columns × frames).
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize, usize)>,
    /// Random seed (the same seed gives the same movie, bit for bit).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of neurons.
    #[arg(long)]
    neurons: Option<usize>,
    /// All generator parameters as JSON (keys of `SynthParams`; flags above override).
    #[arg(long)]
    params: Option<PathBuf>,
    /// No motion (rigid and non-rigid amplitudes 0).
    #[arg(long)]
    no_motion: bool,
    /// Byte order of `.mmap` output: F (frame-major, CaImAn's default) or C (pixel-major, what
    /// `caiman cnmf` reads in place, without a copy).
    #[arg(long, default_value = "F")]
    order: caiman_io::Order,
    /// No noise (no Poisson or read noise, no quantisation).
    #[arg(long)]
    no_noise: bool,
    /// Write a TIFF as uint16 (exact for the default, quantised movie) instead of float32.
    #[arg(long)]
    u16: bool,
}

pub(crate) fn parse_size(s: &str) -> std::result::Result<(usize, usize, usize), String> {
    let parts: Vec<usize> = s
        .split(['x', 'X', '×'])
        .map(|p| p.parse().map_err(|_| format!("bad size {s:?}")))
        .collect::<std::result::Result<_, _>>()?;
    match parts.as_slice() {
        [d1, d2, t] => Ok((*d1, *d2, *t)),
        _ => Err(format!("expected D1xD2xT (e.g. 512x512x2000), got {s:?}")),
    }
}

/// Generator parameters from a JSON file and flags.
pub(crate) fn params_from(
    file: Option<&PathBuf>,
    size: Option<(usize, usize, usize)>,
    seed: Option<u64>,
    neurons: Option<usize>,
) -> Result<SynthParams> {
    let mut p = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid synthesis parameters", f.display()))?
        }
        None => SynthParams::default(),
    };
    if let Some((d1, d2, t)) = size {
        p.dims = [d1, d2];
        p.frames = t;
    }
    if let Some(s) = seed {
        p.seed = s;
    }
    if let Some(n) = neurons {
        p.n_neurons = n;
    }
    Ok(p)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let mut params = params_from(args.params.as_ref(), args.size, args.seed, args.neurons)?;
    if args.no_motion {
        params = params.without_motion();
    }
    if args.no_noise {
        params = params.without_noise();
    }
    let opts = WriteOptions {
        tiff_sample: if args.u16 { TiffSample::U16 } else { TiffSample::F32 },
        order: args.order,
        ..Default::default()
    };
    let bar = ui.frames_bar(params.frames, "synth");
    let (movie, truth) = write_movie_to(&params, &args.output, &opts, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let gt = truth_path(&movie);
    truth.save(&gt)?;
    tracing::info!(neurons = truth.n_neurons(), "wrote {} and {}", movie.display(), gt.display());
    if !ui.quiet() {
        println!("{}\n{}", movie.display(), gt.display());
    }
    Ok(())
}
