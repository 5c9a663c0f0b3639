//! `caiman demo`: synthesise a movie with ground truth and run every stage that exists on it.
//!
//! Today's stages: synthesis (streamed to a u16 TIFF, as microscopes write); conversion of that movie
//! to every other format and a full read-back of each, checked bit for bit against the TIFF; rigid
//! motion correction, its shifts compared with the ground truth; summary images of the corrected
//! movie (HDF5 + PNG), with the correlation image's contrast at the true neuron centres; OASIS
//! deconvolution of traces read through the true footprints, compared with the true calcium and
//! spikes; CNMF on the whole corrected field of view (fit, refit, evaluation, ΔF/F, CaImAn HDF5
//! results), its accepted components matched to the ground truth.
//! Each later stage (motion correction, CNMF, …) adds itself here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use caiman_io::synth::{truth_path, write_movie_to};
use caiman_io::{FrameSource, OpenOptions, Order, Shape, TiffSample, WriteOptions, copy_frames, create, open};

use caiman_cnmf::stats::pearson;

use crate::progress::Ui;
use crate::synth::{params_from, parse_size};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory for the demo's files (kept). Default: a temporary directory, removed at the end.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Movie size `D1xD2xT`.
    #[arg(long, value_parser = parse_size, default_value = "256x256x1000")]
    size: (usize, usize, usize),
    /// Random seed of the synthetic movie.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the temporary directory (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Run OnACID (online, frame by frame, with online motion correction) on the synthetic movie
    /// instead of the batch pipeline, and score it against the ground truth.
    #[arg(long)]
    online: bool,
}

struct Row {
    format: String,
    path: PathBuf,
    bytes: u64,
    write_s: Option<f64>,
    read_s: f64,
    identical: bool,
}

/// Read a whole movie chunk by chunk, comparing with the reference frames.
fn read_and_compare(path: &Path, reference: &mut dyn FrameSource) -> Result<bool> {
    let mut src = open(path, &OpenOptions::default())?;
    if src.info().shape != reference.info().shape {
        return Ok(false);
    }
    let d = src.dims().pixels();
    let chunk = (16 << 20) / (4 * d).max(1);
    let chunk = chunk.clamp(1, src.frames());
    let (mut a, mut b) = (vec![0f32; chunk * d], vec![0f32; chunk * d]);
    let mut same = true;
    let mut t = 0;
    while t < src.frames() {
        let n = chunk.min(src.frames() - t);
        src.read_frames(t, &mut a[..n * d])?;
        reference.read_frames(t, &mut b[..n * d])?;
        same &= a[..n * d].iter().zip(&b[..n * d]).all(|(x, y)| x.to_bits() == y.to_bits());
        t += n;
    }
    Ok(same)
}

pub(crate) fn run(args: Args, ui: &Ui) -> Result<()> {
    let tmp;
    let dir: &Path = match &args.out {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            tmp = tempfile::Builder::new().prefix("caiman-demo-").tempdir()?;
            tmp.path()
        }
    };
    // Keep the default neuron density (120 per 256×256) whatever the frame size.
    let neurons = ((args.size.0 * args.size.1) as f64 * 120.0 / 65536.0).round().max(1.0) as usize;
    let params = params_from(None, Some(args.size), Some(args.seed), Some(neurons))?;
    let shape = params.shape();
    let say = |s: String| {
        if !ui.quiet() {
            println!("{s}");
        }
    };
    say(format!(
        "caiman demo: synthetic {} movie, {} neurons, seed {}, in {}",
        shape,
        params.n_neurons,
        params.seed,
        dir.display()
    ));

    // 1. Synthesis, streamed to a u16 TIFF (the default movie is quantised to camera counts).
    let started = Instant::now();
    let bar = ui.frames_bar(shape.frames, "synth");
    let tiff_opts = WriteOptions { tiff_sample: TiffSample::U16, fr: params.fr, ..Default::default() };
    let (tiff, truth) =
        write_movie_to(&params, &dir.join("demo.tif"), &tiff_opts, &mut |d, _| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    truth.save(&truth_path(&tiff))?;
    let synth_s = started.elapsed().as_secs_f64();
    let max_shift = (0..shape.frames)
        .map(|t| {
            let s = truth.shift_to_apply(t);
            s[0].abs().max(s[1].abs())
        })
        .fold(0.0, f64::max);
    say(format!(
        "synthesis: {:.1} s ({:.0} frames/s); {} neurons ({} centred in the field of view), max rigid shift {:.2} px; truth in {}",
        synth_s,
        shape.frames as f64 / synth_s,
        truth.n_neurons(),
        truth.in_fov.iter().filter(|&&b| b).count(),
        max_shift,
        truth_path(&tiff).display()
    ));

    if args.online {
        return demo_online(&tiff, &params, &truth, &say, ui, dir, &args);
    }

    // 2. Conversion to every format, read back and compared with the TIFF.
    let mut reference = open(&tiff, &OpenOptions::default())?;
    let mut rows = Vec::new();
    let tiff_bytes = reference.info().file_bytes;
    let t0 = Instant::now();
    let identical = read_and_compare(&tiff, reference.as_mut())?;
    rows.push(Row {
        format: "tiff u16".into(),
        path: tiff.clone(),
        bytes: tiff_bytes,
        write_s: None,
        read_s: t0.elapsed().as_secs_f64(),
        identical,
    });
    let targets = [
        ("hdf5 deflate", "demo.h5", WriteOptions::default()),
        ("npy", "demo.npy", WriteOptions::default()),
        ("npz", "demo.npz", WriteOptions::default()),
        ("mmap F", "demo_F.mmap", WriteOptions { order: Order::F, ..Default::default() }),
        ("mmap C", "demo_C.mmap", WriteOptions { order: Order::C, ..Default::default() }),
        ("tiff f32", "demo_f32.tif", WriteOptions::default()),
    ];
    for (label, name, opts) in targets {
        let started = Instant::now();
        let mut w = create(dir.join(name), Shape::new(shape.frames, shape.dims), &opts)?;
        let bar = ui.frames_bar(shape.frames, label);
        copy_frames(reference.as_mut(), 0..shape.frames, w.as_mut(), &mut |n| bar.set_position(n as u64))?;
        let path = w.finish()?;
        bar.finish_and_clear();
        let write_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let identical = read_and_compare(&path, reference.as_mut())?;
        let read_s = started.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&path)?.len();
        rows.push(Row { format: label.into(), path, bytes, write_s: Some(write_s), read_s, identical });
    }
    say(format!("\n{:<13} {:>9} {:>10} {:>10} {:>9}  file", "format", "MB", "write MB/s", "read MB/s", "identical"));
    let raw_mb = (shape.len() * 4) as f64 / 1e6;
    for r in &rows {
        say(format!(
            "{:<13} {:>9.1} {:>10} {:>10.0} {:>9}  {}",
            r.format,
            r.bytes as f64 / 1e6,
            r.write_s.map_or("(synth)".to_string(), |s| format!("{:.0}", raw_mb / s)),
            raw_mb / r.read_s,
            if r.identical { "yes" } else { "NO" },
            r.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
    }
    say("(MB/s counts the movie as float32, frames × pixels × 4 bytes.)".into());

    // 3. Motion correction (rigid, CaImAn's defaults) and its error against the ground truth.
    let job = caiman_motion::MotionJob {
        inputs: vec![tiff.clone()],
        open: OpenOptions::default(),
        output: dir.join("demo_mc.mmap"),
        params: caiman_motion::MotionParams::default(),
        template: None,
        direct_io: false,
        template_memory: caiman_motion::template::DEFAULT_TEMPLATE_MEMORY,
    };
    let backend = crate::exec_args::backend_from(None, None, None);
    let exec = backend.build()?;
    let (mc, secs) = crate::motion::run_motion(&job, &exec, ui)?;
    let truth_shifts: Vec<[f64; 2]> = (0..shape.frames).map(|t| truth.shift_to_apply(t)).collect();
    let err = shift_rms_error(&mc.shifts_rig, &truth_shifts);
    say(format!(
        "\nmotion correction (rigid, {backend}): {:.1} s, {:.0} frames/s; shift RMS error vs ground truth {:.3} px \
         (after removing the template's offset); crispness {:.1}; {}",
        secs,
        shape.frames as f64 / secs,
        err,
        mc.metrics.crispness,
        mc.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    mc.save_hdf5(&dir.join("demo_mc_motion.h5"))?;

    // 4. Summary images of the corrected movie, and OASIS on traces read through the true footprints.
    let offset = template_offset(&mc.shifts_rig, &truth_shifts);
    let summary_opts = caiman_cnmf::summary::SummaryOptions::default();
    let images = crate::summary::compute(&mc.output, &OpenOptions::default(), &summary_opts, 1 << 30, &exec, &|_| {})?;
    let pngs = crate::summary::write_pngs(&dir.join("demo_summary.h5"), &images)?;
    crate::summary::write_hdf5(&dir.join("demo_summary.h5"), &images)?;
    let (cn_in, cn_out) = cn_contrast(&images.summary, &truth, offset);
    say(format!(
        "\nsummary images: {:.2} s streamed + {:.2} s pixel noise; correlation image median {:.2} at neuron \
         centres vs {:.2} elsewhere; {} PNGs ({})",
        images.seconds_images,
        images.seconds_noise,
        cn_in,
        cn_out,
        pngs.len(),
        pngs.iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (traces, which) = footprint_traces(&mc.output, &truth, offset)?;
    let started = Instant::now();
    let opts = caiman_cnmf::foopsi::FoopsiOptions { p: 1, ..Default::default() };
    let (fits, _) = caiman_cnmf::foopsi::deconvolve_traces(traces.view(), &opts, &exec)?;
    let deconv_s = started.elapsed().as_secs_f64();
    let (mut corr_c, mut corr_s) = (Vec::new(), Vec::new());
    for (fit, &k) in fits.iter().zip(&which) {
        let true_c: Vec<f64> = truth.c.row(k).iter().map(|&v| f64::from(v)).collect();
        let true_s: Vec<f64> = truth.s.row(k).iter().map(|&v| f64::from(v)).collect();
        corr_c.push(pearson(&fit.c, &true_c));
        corr_s.push(pearson(&fit.s, &true_s));
    }
    say(format!(
        "deconvolution (OASIS AR(1), g and sn estimated) of {} traces read through the true footprints: {:.2} s; \
         median correlation with the true calcium {:.3}, with the true spikes {:.3}",
        which.len(),
        deconv_s,
        median(&mut corr_c),
        median(&mut corr_s)
    ));

    // 5. CNMF on overlapping patches of the corrected movie (read from its C-order copy), then refit
    // on the whole field of view, evaluation and ΔF/F — CaImAn's demo_pipeline — matched to the
    // ground truth by mask IoU (CaImAn's nf_match_neurons_in_binary_masks).
    let movie = crate::cnmf::MovieYr::open(&mc.output, None, false, dir, None, ui)?;
    let fov = movie.fov()?;
    let cnmf_params = demo_cnmf_params(&params, fov.dims, fov.frames())?;
    let started = Instant::now();
    let run = crate::cnmf::run_cnmf(&fov, cnmf_params, false, &exec, ui, Some(mc.output.display().to_string()))?;
    let cnmf_s = started.elapsed().as_secs_f64();
    let results_path = dir.join("demo_cnmf.hdf5");
    caiman_cnmf::results::save_cnmf(&results_path, &run.results)?;
    let est = &run.results.estimates;
    let accepted = est.idx_components.clone().unwrap_or_default();
    let (f1, precision, recall, n_gt, corr) = cnmf_vs_truth(est, &accepted, &truth, offset)?;
    let stages =
        run.report.stages.iter().map(|s| format!("{} {:.2}", s.stage, s.seconds)).collect::<Vec<_>>().join(", ");
    say(format!(
        "\nCNMF on patches, refit on the corrected field of view ({backend}): {:.1} s ({stages} s); {} components, {} accepted; \
         vs the {} ground-truth neurons: F1 {:.3} (precision {:.3}, recall {:.3}), median trace correlation of \
         matched neurons {:.3}; peak memory {:.0} MiB; {}",
        cnmf_s,
        est.n_components(),
        accepted.len(),
        n_gt,
        f1,
        precision,
        recall,
        corr,
        caiman_parallel::peak_rss_kib() as f64 / 1024.0,
        results_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    drop(movie);

    if args.keep && args.out.is_none() {
        let kept = tmp_keep(dir)?;
        say(format!("kept {}", kept.display()));
    }
    if rows.iter().any(|r| !r.identical) {
        bail!("some formats did not read back identically (see the table)");
    }
    Ok(())
}

/// RMS over frames and axes of `ours − truth` after removing the per-axis median difference (the
/// template's position is arbitrary, so a constant offset is not an error).
fn shift_rms_error(ours: &ndarray::Array2<f64>, truth: &[[f64; 2]]) -> f64 {
    let mut total = 0.0;
    for ax in 0..2 {
        let d: Vec<f64> = truth.iter().enumerate().map(|(t, s)| ours[[t, ax]] - s[ax]).collect();
        let mut sorted = d.clone();
        sorted.sort_by(f64::total_cmp);
        let med = sorted[sorted.len() / 2];
        total += d.iter().map(|v| (v - med).powi(2)).sum::<f64>() / d.len() as f64;
    }
    (total / 2.0).sqrt()
}

/// Where the ground-truth scene sits in the corrected movie, in whole pixels: the corrected frames
/// are aligned to the template, whose position is the median of `ours − truth` (shifts to apply),
/// so a neuron at reference position `q` appears at `q + offset`.
fn template_offset(ours: &ndarray::Array2<f64>, truth: &[[f64; 2]]) -> [isize; 2] {
    std::array::from_fn(|ax| {
        let mut d: Vec<f64> = truth.iter().enumerate().map(|(t, s)| ours[[t, ax]] - s[ax]).collect();
        median(&mut d).round() as isize
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Median of the correlation image at the (offset) centres of neurons inside the field of view,
/// and median over pixels farther than 2 σ from every neuron.
fn cn_contrast(
    s: &caiman_cnmf::summary::SummaryImages,
    truth: &caiman_io::synth::GroundTruth,
    off: [isize; 2],
) -> (f64, f64) {
    let (d1, d2) = (s.dims.d1, s.dims.d2);
    let mut near = vec![false; d1 * d2];
    let mut at_centres = Vec::new();
    for k in 0..truth.n_neurons() {
        let (ci, cj) = (truth.centers[[k, 0]] + off[0] as f64, truth.centers[[k, 1]] + off[1] as f64);
        let r = 2.0 * truth.sigmas[[k, 0]];
        for i in 0..d1 {
            for j in 0..d2 {
                if (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2) <= r * r {
                    near[i * d2 + j] = true;
                }
            }
        }
        let (i, j) = (ci.round(), cj.round());
        if i >= 0.0 && j >= 0.0 && (i as usize) < d1 && (j as usize) < d2 {
            at_centres.push(s.cn[[i as usize, j as usize, 0]]);
        }
    }
    let mut away: Vec<f64> =
        (0..d1 * d2).filter(|&p| !near[p]).map(|p| s.cn[[p / d2, p % d2, 0]]).filter(|v| v.is_finite()).collect();
    at_centres.retain(|v| v.is_finite());
    (median(&mut at_centres), median(&mut away))
}

/// Traces of the neurons whose footprint lies wholly in the field of view, read from the corrected
/// movie through their true footprints (moved by `off`): `aᵀy / aᵀa` per frame.
fn footprint_traces(
    movie: &Path,
    truth: &caiman_io::synth::GroundTruth,
    off: [isize; 2],
) -> Result<(ndarray::Array2<f64>, Vec<usize>)> {
    let mut src = open(movie, &OpenOptions::default())?;
    let (dims, frames) = (src.dims(), src.frames());
    let mut weights: Vec<(usize, Vec<(usize, f64)>)> = Vec::new();
    for k in 0..truth.n_neurons() {
        if truth.frac_in_fov[k] < 0.99 {
            continue;
        }
        let (rows, vals) = truth.a.column(k);
        let mut w = Vec::with_capacity(rows.len());
        for (&p, &v) in rows.iter().zip(vals) {
            // Fortran pixel order in the ground truth, C order in the frames.
            let (i, j) = ((p as usize % dims.d1) as isize + off[0], (p as usize / dims.d1) as isize + off[1]);
            if i >= 0 && j >= 0 && (i as usize) < dims.d1 && (j as usize) < dims.d2 {
                w.push((i as usize * dims.d2 + j as usize, f64::from(v)));
            }
        }
        if !w.is_empty() {
            weights.push((k, w));
        }
    }
    let mut traces = ndarray::Array2::zeros((weights.len(), frames));
    let d = dims.pixels();
    let chunk = ((32 << 20) / (4 * d)).clamp(1, frames);
    let mut buf = vec![0f32; chunk * d];
    for start in (0..frames).step_by(chunk) {
        let n = chunk.min(frames - start);
        src.read_frames(start, &mut buf[..n * d])?;
        for (row, (_, w)) in weights.iter().enumerate() {
            let norm: f64 = w.iter().map(|(_, v)| v * v).sum();
            for t in 0..n {
                let frame = &buf[t * d..(t + 1) * d];
                traces[[row, start + t]] = w.iter().map(|&(p, v)| v * f64::from(frame[p])).sum::<f64>() / norm;
            }
        }
    }
    Ok((traces, weights.into_iter().map(|(k, _)| k).collect()))
}

/// CaImAn's parameters for the demo movie: defaults with `K` = the number of synthetic neurons,
/// `gSig` = their size, two background components, AR(1), the movie's frame rate and decay time.
fn demo_cnmf_params(
    p: &caiman_io::synth::SynthParams,
    dims: caiman_io::Dims,
    frames: usize,
) -> Result<caiman_cnmf::params::CnmfParams> {
    let gsig = p.gsig.round().max(1.0);
    // CaImAn's batch demo settings for two-photon data: overlapping patches (rf 20 → 41 × 41 px,
    // 8 px overlap, 4 components each), two background components, AR(1), CaImAn's merge
    // threshold and evaluation defaults (min_SNR 2.5, rval_thr 0.8).
    let json = serde_json::json!({
        "data": {"fr": p.fr, "decay_time": p.tau_decay},
        "init": {"K": 4, "gSig": [gsig, gsig], "nb": 2},
        "patch": {"rf": 20, "stride": 8},
        "preprocess": {"p": 1},
        "temporal": {"p": 1},
        "merging": {"merge_thr": 0.8},
        "quality": {"min_SNR": 2.5, "rval_thr": 0.8, "use_cnn": false}
    });
    let (mut params, _) = caiman_cnmf::params::CnmfParams::from_caiman_json(&json.to_string())?;
    params.data.dims = Some(vec![dims.d1, dims.d2]);
    params.check_consistency(Some(frames))?;
    Ok(params)
}

/// `caiman demo --online`: OnACID with CaImAn's online defaults for two-photon data (bare
/// initialisation on the first 200 frames, online rigid motion correction) on the synthetic movie,
/// scored against the ground truth.
fn demo_online(
    tiff: &Path,
    p: &caiman_io::synth::SynthParams,
    truth: &caiman_io::synth::GroundTruth,
    say: &dyn Fn(String),
    ui: &Ui,
    dir: &Path,
    args: &Args,
) -> Result<()> {
    let gsig = p.gsig.round().max(1.0);
    let json = serde_json::json!({
        "data": {"fr": p.fr, "decay_time": p.tau_decay},
        "init": {"K": 4, "gSig": [gsig, gsig], "nb": 2},
        "preprocess": {"p": 1},
        "online": {"init_batch": 200, "init_method": "bare", "motion_correct": true, "min_SNR": 2.5}
    });
    let shape = p.shape();
    let (mut params, _) = caiman_cnmf::params::CnmfParams::from_caiman_json(&json.to_string())?;
    params.data.dims = Some(vec![shape.dims.d1, shape.dims.d2]);
    params.check_consistency(Some(shape.frames))?;
    let backend = crate::exec_args::backend_from(None, None, None);
    let exec = backend.build()?;
    let opts = caiman_online::FitOnlineOptions { pipelined: true, ..Default::default() };
    let out = crate::online::run_online(&[tiff.to_path_buf()], &OpenOptions::default(), &params, &opts, &exec, ui)?;
    let truth_shifts: Vec<[f64; 2]> = (0..shape.frames).map(|t| truth.shift_to_apply(t)).collect();
    let offset = match crate::online::shifts_array(out.model.shifts()) {
        Some(s) if s.nrows() == truth_shifts.len() => template_offset(&s, &truth_shifts),
        _ => [0, 0],
    };
    let est = &out.estimates;
    let all: Vec<usize> = (0..est.n_components()).collect();
    let (f1, precision, recall, n_gt, corr) = cnmf_vs_truth(est, &all, truth, offset)?;
    let results_path = dir.join("demo_online.hdf5");
    caiman_cnmf::results::save_cnmf(&results_path, &caiman_cnmf::results::CnmfResults::new(params, est.clone()))?;
    let r = &out.report;
    say(format!(
        "\nOnACID ({backend}, pipelined, online motion correction): init {:.1} s, online {:.1} s = {:.0} frames/s; \
         {} → {} components; vs the {} ground-truth neurons: F1 {:.3} (precision {:.3}, recall {:.3}), median trace \
         correlation of matched neurons {:.3}; peak memory {:.0} MiB; {}",
        r.seconds_init,
        r.seconds_online,
        r.frames_per_second,
        r.components_init,
        r.components_final,
        n_gt,
        f1,
        precision,
        recall,
        corr,
        caiman_parallel::peak_rss_kib() as f64 / 1024.0,
        results_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    if args.keep && args.out.is_none() {
        let kept = tmp_keep(dir)?;
        say(format!("kept {}", kept.display()));
    }
    Ok(())
}

/// F1, precision, recall of the accepted components against the ground-truth neurons centred in
/// the field of view (`caiman_cnmf::matching::score_against_truth`), the number of such neurons,
/// and the median correlation of matched traces.
fn cnmf_vs_truth(
    est: &caiman_cnmf::estimates::Estimates,
    accepted: &[usize],
    truth: &caiman_io::synth::GroundTruth,
    off: [isize; 2],
) -> Result<(f64, f64, f64, usize, f64)> {
    let ours = est.subset(accepted);
    let s = caiman_cnmf::matching::score_against_truth(&ours.a, ours.c.view(), truth, off)?;
    let m = &s.matching;
    Ok((m.f1, m.precision, m.recall, s.gt_neurons.len(), s.median_trace_corr))
}

/// Move the demo files out of the temporary directory (which is removed on return).
fn tmp_keep(dir: &Path) -> Result<PathBuf> {
    let dest = std::env::temp_dir().join(format!("caiman-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dest)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        std::fs::rename(e.path(), dest.join(e.file_name()))?;
    }
    Ok(dest)
}
