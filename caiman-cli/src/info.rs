//! `caiman info FILE…`: format, dimensions, frames, dtype and bytes of movie files.

use std::path::PathBuf;

use anyhow::Result;
use caiman_io::{OpenOptions, open};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Movie files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// HDF5 dataset (CaImAn's var_name_hdf5; default `mov`, or the file's only dataset).
    #[arg(long)]
    dataset: Option<String>,
    /// Print one JSON object per file instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let opts = OpenOptions { dataset: args.dataset.clone(), ..Default::default() };
    let mut failed = Vec::new();
    if !args.json {
        println!(
            "{:<40} {:>6} {:>16} {:>8} {:>8} {:>14}  detail",
            "file", "format", "dims", "frames", "dtype", "bytes"
        );
    }
    for f in &args.files {
        match open(f, &opts) {
            Ok(src) => {
                let i = src.info();
                if args.json {
                    println!("{}", serde_json::to_string(i)?);
                } else {
                    println!(
                        "{:<40} {:>6} {:>16} {:>8} {:>8} {:>14}  {}",
                        f.display(),
                        i.format,
                        i.shape.dims.to_string(),
                        i.shape.frames,
                        i.dtype,
                        i.file_bytes,
                        i.detail
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(e);
            }
        }
    }
    match failed.last() {
        Some(_) => Err(anyhow::anyhow!("{} of {} files could not be read", failed.len(), args.files.len())),
        None => Ok(()),
    }
}
