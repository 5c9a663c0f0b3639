//! Frames per second and peak memory of OnACID on a synthetic movie.
//!
//! ```sh
//! cargo run --release -p caiman-online --example throughput -- [SIZE] [FRAMES] [MOVIE_DIR] [--pipelined] [--motion] [--neurons N] [--threads N]
//! ```
//! Defaults: 512 px, 2000 frames, the movie written once to `MOVIE_DIR` (default the system
//! temporary directory) as `.npy` and reused. `--loop N` feeds `N` frames by looping over the
//! movie (frame `t` is frame `t mod FRAMES` of the file), for long runs that would not fit on
//! disk (a 20 000-frame 512² movie is 21 GB); `--threads N` sets the inner threads of the
//! per-frame passes. Parameters: bare init on 200 frames, K 10, gSig 4,
//! nb 2, p 1, min_SNR 2, rval_thr 0.85 (CaImAn's reference OnACID run), motion correction off unless
//! `--motion`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use caiman_cnmf::params::CnmfParams;
use caiman_io::synth::{SynthParams, write_movie};
use caiman_io::{FrameSource, OpenOptions, SourceInfo, WriteOptions, open};
use caiman_online::{FitOnlineOptions, fit_online};
use caiman_parallel::Linear;

/// A movie looped to `frames` frames: frame `t` is frame `t mod n` of the inner source.
struct Looped {
    inner: Box<dyn FrameSource>,
    info: SourceInfo,
}

impl Looped {
    fn new(inner: Box<dyn FrameSource>, frames: usize) -> Self {
        let mut info = inner.info().clone();
        info.shape = caiman_io::Shape::new(frames, inner.dims());
        Looped { inner, info }
    }
}

impl FrameSource for Looped {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, start: usize, buf: &mut [f32]) -> caiman_io::Result<()> {
        let (d, n) = (self.inner.dims().pixels(), self.inner.frames());
        for (i, fr) in buf.chunks_exact_mut(d).enumerate() {
            self.inner.read_frames((start + i) % n, fr)?;
        }
        Ok(())
    }
}

/// Current resident set (VmRSS, KiB) from `/proc/self/status`; 0 where unavailable.
fn rss_now_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let valued = ["--neurons", "--threads", "--loop"];
    let pos: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !valued.contains(&args[i - 1].as_str())))
        .map(|(_, a)| a)
        .collect();
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
    let looped: Option<usize> = args.iter().position(|a| a == "--loop").map(|i| args[i + 1].parse().unwrap());
    let src = open(&path, &OpenOptions::default()).expect("movie");
    let mut srcs: Vec<Box<dyn FrameSource>> = match looped {
        Some(n) => vec![Box::new(Looped::new(src, n))],
        None => vec![src],
    };
    let frames = looped.unwrap_or(frames);
    let threads: usize = args.iter().position(|a| a == "--threads").map_or(1, |i| args[i + 1].parse().unwrap());
    let opts = FitOnlineOptions { pipelined: flag("--pipelined"), ..FitOnlineOptions::default() };
    let exec = Linear::with_inner_threads(Some(threads));
    // Resident memory of the online state after 1000 online frames and at the end.
    let mut rss_marks: Vec<(usize, u64)> = Vec::new();
    let mut next_mark = 1200;
    let mut on_progress = |p: &caiman_online::Progress| {
        if p.frames_done >= next_mark {
            rss_marks.push((p.frames_done, rss_now_kib()));
            next_mark = next_mark.max(p.frames_done) * 2;
        }
    };
    let out = fit_online(&mut srcs, &params, &exec, &opts, &mut on_progress).expect("fit_online");
    rss_marks.push((out.model.frames_seen(), rss_now_kib()));
    let marks: Vec<String> = rss_marks.iter().map(|(t, k)| format!("t={t}: {:.0} MiB", *k as f64 / 1024.0)).collect();
    eprintln!("RSS during the online loop: {}", marks.join(", "));
    let r = &out.report;
    let rss = caiman_parallel::peak_rss_kib();
    let a = &out.estimates.a;
    let nnz: Vec<usize> = (0..a.ncols()).map(|k| a.col(k).0.len()).collect();
    eprintln!(
        "support sizes: max {:?}, mean {:.0}",
        nnz.iter().max(),
        nnz.iter().sum::<usize>() as f64 / nnz.len().max(1) as f64
    );
    println!(
        "{size}x{size}x{frames} ({neurons} neurons){}{} threads {threads}: init {:.2} s, online {} frames in {:.2} s = {:.1} frames/s; \
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
