//! Frames per second and peak memory of OnACID on a synthetic movie.
//!
//! ```sh
//! cargo run --release -p caiman-online --example throughput -- [SIZE] [FRAMES] [MOVIE_DIR] [--pipelined] [--motion] [--neurons N]
//! ```
//! Defaults: 512 px, 2000 frames, the movie written once to `MOVIE_DIR` (default the system
//! temporary directory) as `.npy` and reused. Parameters: bare init on 200 frames, K 10, gSig 4,
//! nb 2, p 1, min_SNR 2, rval_thr 0.85 (CaImAn's reference OnACID run), motion correction off unless
//! `--motion`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use caiman_cnmf::params::CnmfParams;
use caiman_io::synth::{SynthParams, write_movie};
use caiman_io::{OpenOptions, WriteOptions, open};
use caiman_online::{FitOnlineOptions, fit_online};
use caiman_parallel::Linear;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let size: usize = pos.first().map_or(512, |s| s.parse().expect("SIZE"));
    let frames: usize = pos.get(1).map_or(2000, |s| s.parse().expect("FRAMES"));
    let dir = pos.get(2).map_or_else(std::env::temp_dir, PathBuf::from);
    let neurons: usize =
        args.iter().position(|a| a == "--neurons").map_or(size * size / 1000, |i| args[i + 1].parse().unwrap());
    let motion = flag("--motion");
    let sp = SynthParams { dims: [size, size], frames, n_neurons: neurons, seed: 7, ..SynthParams::default() };
    let sp = if motion { sp } else { sp.without_motion() };
    let path =
        dir.join(format!("onacid_synth_{size}x{size}x{frames}_{neurons}{}.npy", if motion { "_mc" } else { "" }));
    if !path.exists() {
        eprintln!("writing {}", path.display());
        write_movie(&sp, &path, &WriteOptions::default(), &mut |_, _| {}).expect("synthetic movie");
    }
    let json = serde_json::json!({
        "data": {"fr": 30, "decay_time": 0.5},
        "init": {"K": 10, "gSig": [4, 4], "nb": 2},
        "preprocess": {"p": 1},
        "temporal": {"p": 1},
        "online": {"init_batch": 200, "init_method": "bare", "motion_correct": motion, "min_SNR": 2,
                   "rval_thr": 0.85, "max_shifts_online": 10}
    });
    let (params, _) = CnmfParams::from_caiman_json(&json.to_string()).expect("params");
    let mut srcs = vec![open(&path, &OpenOptions::default()).expect("movie")];
    let opts = FitOnlineOptions { pipelined: flag("--pipelined"), ..FitOnlineOptions::default() };
    let out = fit_online(&mut srcs, &params, &Linear::new(), &opts, &mut |_| {}).expect("fit_online");
    let r = &out.report;
    let rss = caiman_parallel::peak_rss_kib();
    println!(
        "{size}x{size}x{frames} ({neurons} neurons){}{}: init {:.2} s, online {} frames in {:.2} s = {:.1} frames/s; \
         components {} -> {}; stages (s): demix {:.2}, detect {:.2}, stats {:.2}, shapes {:.2}, motion {:.2}; peak RSS {:.0} MiB",
        if opts.pipelined { " pipelined" } else { "" },
        if motion { " with motion correction" } else { "" },
        r.seconds_init,
        r.frames_online,
        r.seconds_online,
        r.frames_per_second,
        r.components_init,
        r.components_final,
        r.stages.demix,
        r.stages.detect,
        r.stages.stats,
        r.stages.shapes,
        r.stages.motion,
        rss as f64 / 1024.0
    );
}
