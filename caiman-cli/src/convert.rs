//! `caiman convert IN OUT`: any readable format to any writable one, streamed in bounded chunks.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use caiman_io::{ChainSource, FrameSource, Order, Shape, TiffSample, WriteOptions, copy_frames, create, open};

use crate::progress::Ui;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Input movie(s) then the output movie. Several inputs are chained in order into one movie
    /// (they must share a frame size). Inputs: .tif/.tiff/.btf, .h5/.hdf5/.nwb/.mat, .npy, .npz,
    /// .mmap. The output format follows its extension; a `.mmap` output gets CaImAn's name
    /// encoding its shape and order (e.g. `out_d1_512_d2_512_d3_1_order_C_frames_2000.mmap`).
    #[arg(required = true, num_args = 2.., value_names = ["IN", "OUT"])]
    paths: Vec<PathBuf>,
    /// Frames to convert, `A..B` (B exclusive), `A..` or `..B`.
    #[arg(long, value_parser = parse_range)]
    frames: Option<(Option<usize>, Option<usize>)>,
    /// HDF5 dataset to read, and to write (default `mov`).
    #[arg(long)]
    dataset: Option<String>,
    /// Byte order of `.mmap` output: F (frame-major, CaImAn's default) or C (pixel-major, what CNMF reads).
    #[arg(long, default_value = "F")]
    order: Order,
    /// Sample type of TIFF output.
    #[arg(long, value_enum, default_value = "f32")]
    tiff_dtype: TiffDtype,
    /// Write BigTIFF even below 4 GB.
    #[arg(long)]
    bigtiff: bool,
    /// Deflate level of HDF5 output (0 = none).
    #[arg(long, default_value_t = 4)]
    compression: u32,
    /// Frame size `D1xD2` for a 2-D `.npy` input holding CaImAn's `Yr` (pixels × time).
    #[arg(long, value_parser = parse_dims)]
    npy_dims: Option<caiman_io::Dims>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TiffDtype {
    F32,
    U16,
}

fn parse_range(s: &str) -> std::result::Result<(Option<usize>, Option<usize>), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let num = |x: &str| -> std::result::Result<Option<usize>, String> {
        if x.is_empty() { Ok(None) } else { x.parse().map(Some).map_err(|_| format!("{x:?} is not a frame number")) }
    };
    Ok((num(a)?, num(b)?))
}

pub(crate) fn parse_dims(s: &str) -> std::result::Result<caiman_io::Dims, String> {
    let parts: Vec<usize> = s
        .split(['x', 'X', '×'])
        .map(|p| p.parse().map_err(|_| format!("bad size {s:?}")))
        .collect::<std::result::Result<_, _>>()?;
    match parts.as_slice() {
        [d1, d2] => Ok(caiman_io::Dims::planar(*d1, *d2)),
        [d1, d2, d3] => Ok(caiman_io::Dims::volume(*d1, *d2, *d3)),
        _ => Err(format!("expected D1xD2 or D1xD2xD3, got {s:?}")),
    }
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let open_opts =
        caiman_io::OpenOptions { dataset: args.dataset.clone(), npy_dims: args.npy_dims, ..Default::default() };
    let (output, inputs) = args.paths.split_last().expect("clap requires two paths");
    let input = &inputs[0];
    let mut src: Box<dyn FrameSource> =
        if inputs.len() == 1 { open(input, &open_opts)? } else { Box::new(ChainSource::open(inputs, &open_opts)?) };
    let total = src.frames();
    let (a, b) = args.frames.unwrap_or((None, None));
    let range: Range<usize> = a.unwrap_or(0)..b.unwrap_or(total);
    if range.start >= range.end || range.end > total {
        bail!(
            "{}: frame range {}..{} is empty or outside the movie's {total} frames",
            input.display(),
            range.start,
            range.end
        );
    }
    let wopts = WriteOptions {
        dataset: args.dataset.unwrap_or_else(|| "mov".into()),
        order: args.order,
        tiff_sample: match args.tiff_dtype {
            TiffDtype::F32 => TiffSample::F32,
            TiffDtype::U16 => TiffSample::U16,
        },
        bigtiff: args.bigtiff.then_some(true),
        compression: args.compression,
        fr: src.info().fr.unwrap_or(30.0),
    };
    let shape = Shape::new(range.len(), src.dims());
    let mut dst = create(output, shape, &wopts)?;
    let bar = ui.frames_bar(range.len(), "convert");
    copy_frames(src.as_mut(), range.clone(), dst.as_mut(), &mut |n| bar.set_position(n as u64))
        .with_context(|| format!("converting {} to {}", input.display(), output.display()))?;
    let out = dst.finish()?;
    bar.finish_and_clear();
    tracing::info!(frames = range.len(), "wrote {}", out.display());
    if !ui.quiet() {
        println!("{}", out.display());
    }
    Ok(())
}
