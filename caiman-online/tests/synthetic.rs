//! OnACID on synthetic movies with ground truth (`caiman_io::synth`): agreement with batch CNMF,
//! online motion correction, multiple files, epochs and `stop_detection`, the `seeded` and `cnmf`
//! initialisations and `ds_factor`.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};

use caiman_cnmf::matching::{binary_masks, nf_match_neurons_in_binary_masks, score_against_truth, truth_masks};
use caiman_cnmf::params::CnmfParams;
use caiman_cnmf::pixels::Fov;
use caiman_cnmf::sparse::CscMatrix;
use caiman_io::synth::{GroundTruth, SynthParams, generate};
use caiman_io::{FrameSource, Movie, OpenOptions, Shape, WriteOptions, open, save};
use caiman_online::{FitOnlineOptions, OnlineOutput, fit_online};
use caiman_parallel::{Linear, Threads};

fn synth(dims: [usize; 2], frames: usize, n: usize, seed: u64, motion: bool) -> SynthParams {
    let p = SynthParams { dims, frames, n_neurons: n, seed, rate: 0.6, ..SynthParams::default() };
    if motion {
        // Bright resting neurons (as caiman-motion's synthetic test): single frames must carry
        // enough structure to be registered.
        SynthParams { rigid_amp: 1.5, rigid_max: 4.0, nonrigid_amp: 0.0, neuron_baseline: 30.0, spike_amp: 20.0, ..p }
    } else {
        p.without_motion()
    }
}

fn params(p: &SynthParams, k: usize, extra: serde_json::Value) -> CnmfParams {
    let g = p.gsig.round();
    let json = serde_json::json!({
        "data": {"fr": p.fr, "decay_time": p.tau_decay},
        "init": {"K": k, "gSig": [g, g], "nb": 2},
        "preprocess": {"p": 1},
        "temporal": {"p": 1},
        "merging": {"merge_thr": 0.85},
        "quality": {"min_SNR": 2.0, "rval_thr": 0.85, "use_cnn": false},
        "patch": {"rf": null, "only_init": false},
        "online": {"init_batch": 200, "motion_correct": false, "min_SNR": 2.0, "rval_thr": 0.85, "update_freq": 200}
    });
    let (mut params, _) = CnmfParams::from_caiman_json(&json.to_string()).unwrap();
    params.change_params(&extra).unwrap();
    params.check_consistency(Some(p.frames)).unwrap();
    params
}

/// Writes `movie` (or its frames `range`) as `.npy` in `dir`.
fn write(dir: &Path, name: &str, movie: &Movie, range: std::ops::Range<usize>) -> PathBuf {
    let dims = movie.dims();
    let d = dims.pixels();
    let vals = movie.as_slice()[range.start * d..range.end * d].to_vec();
    let m = Movie::from_vec(Shape::new(range.len(), dims), vals);
    let path = dir.join(name);
    save(&path, &m, &WriteOptions::default()).unwrap();
    path
}

fn run(paths: &[PathBuf], params: &CnmfParams, opts: &FitOnlineOptions) -> OnlineOutput {
    let mut srcs: Vec<Box<dyn FrameSource>> = paths.iter().map(|p| open(p, &OpenOptions::default()).unwrap()).collect();
    fit_online(&mut srcs, params, &Linear::new(), opts, &mut |_| {}).unwrap()
}

fn f1(out: &OnlineOutput, truth: &GroundTruth) -> (f64, f64) {
    let s = score_against_truth(&out.estimates.a, out.estimates.c.view(), truth, [0, 0]).unwrap();
    (s.matching.f1, s.median_trace_corr)
}

#[test]
fn online_components_match_batch_cnmf_components() {
    let sp = synth([80, 80], 1200, 16, 11, false);
    let (movie, truth) = generate(&sp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.npy", &movie, 0..1200);
    let params = params(&sp, 10, serde_json::json!({}));
    let out = run(&[path], &params, &FitOnlineOptions::default());
    // Batch: CNMF fit on the whole movie (greedy init with K = number of neurons, full updates).
    let yr = movie.to_yr();
    let dims = movie.dims();
    let batch_params = params_for_batch(&sp);
    let (batch, _) =
        caiman_cnmf::cnmf::fit(&Fov::new(dims, yr.view()).unwrap(), &batch_params, &Threads::new(2).unwrap()).unwrap();
    // Batch components that are neurons (matched to the truth), as masks.
    let sb = score_against_truth(&batch.a, batch.c.view(), &truth, [0, 0]).unwrap();
    let bm = binary_masks(&batch.a, 0.2);
    let batch_masks: Vec<Vec<bool>> = sb.matching.tp_comp.iter().map(|&k| bm[k].clone()).collect();
    let om = binary_masks(&out.estimates.a, 0.2);
    let m = nf_match_neurons_in_binary_masks(&batch_masks, &om, dims, 0.5, 10.0).unwrap();
    let frac = m.tp_gt.len() as f64 / batch_masks.len() as f64;
    let (f1_on, corr_on) = f1(&out, &truth);
    eprintln!(
        "batch: {} components, {} match the truth (F1 {:.3}); online: {} components (F1 {:.3}, median trace corr \
         {corr_on:.3}); {:.0} % of the batch neurons have an online component with IoU ≥ 0.5",
        batch.n_components(),
        batch_masks.len(),
        sb.matching.f1,
        out.estimates.n_components(),
        f1_on,
        100.0 * frac
    );
    assert!(batch_masks.len() >= 10, "the batch fit found the neurons");
    assert!(frac >= 0.8, "only {:.0} % of batch components found online", 100.0 * frac);
    assert!(f1_on >= 0.7, "online F1 {f1_on:.3}");
}

fn params_for_batch(sp: &SynthParams) -> CnmfParams {
    let (idx, _) = truth_masks(&generate_truth(sp), [0, 0], 0.2);
    params(sp, idx.len(), serde_json::json!({}))
}

fn generate_truth(sp: &SynthParams) -> GroundTruth {
    caiman_io::synth::ground_truth(sp).unwrap()
}

#[test]
fn online_motion_correction_recovers_the_shifts() {
    let sp = synth([64, 72], 600, 30, 11, true);
    let (movie, truth) = generate(&sp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.npy", &movie, 0..600);
    let p = params(&sp, 10, serde_json::json!({"online": {"motion_correct": true, "max_shifts_online": 6}}));
    let out = run(std::slice::from_ref(&path), &p, &FitOnlineOptions::default());
    let shifts = out.model.shifts();
    assert_eq!(shifts.len(), 600, "one shift per frame (batch included)");
    // Shifts are relative to a template whose position is arbitrary: compare after removing the
    // mean difference.
    let mut diff = [Vec::new(), Vec::new()];
    for (t, s) in shifts.iter().enumerate() {
        let want = truth.shift_to_apply(t);
        diff[0].push(s[0] - want[0]);
        diff[1].push(s[1] - want[1]);
    }
    let mut rms = [0.0; 2];
    let mut corr = [0.0; 2];
    let mut amp = 0.0f64;
    for ax in 0..2 {
        let m = diff[ax].iter().sum::<f64>() / 600.0;
        rms[ax] = (diff[ax].iter().map(|d| (d - m).powi(2)).sum::<f64>() / 600.0).sqrt();
        amp = amp.max((0..600).map(|t| truth.shift_to_apply(t)[ax].abs()).fold(0.0, f64::max));
        let ours: Vec<f64> = shifts.iter().map(|s| s[ax]).collect();
        let want: Vec<f64> = (0..600).map(|t| truth.shift_to_apply(t)[ax]).collect();
        corr[ax] = caiman_cnmf::stats::pearson(&ours, &want);
    }
    let (f1_mc, _) = {
        let off = (0..2).map(|ax| (diff[ax].iter().sum::<f64>() / 600.0).round() as isize).collect::<Vec<_>>();
        let s = score_against_truth(&out.estimates.a, out.estimates.c.view(), &truth, [-off[0], -off[1]]).unwrap();
        (s.matching.f1, s.median_trace_corr)
    };
    let q = params(&sp, 10, serde_json::json!({}));
    let plain = run(&[path], &q, &FitOnlineOptions::default());
    let (f1_plain, _) = f1(&plain, &truth);
    eprintln!(
        "motion: true shifts up to {amp:.2} px, error rms {:.3}/{:.3} px, correlation with the truth {:.3}/{:.3}; \
         F1 with online correction {f1_mc:.3}, without {f1_plain:.3}",
        rms[0], rms[1], corr[0], corr[1]
    );
    assert!(amp > 1.5, "the movie moves");
    // Measured: error rms 0.198/0.157 px, correlation 0.998/0.996 (F1 0.784). Before the frames and
    // templates were tapered (see `preprocess.rs`) the circular cross-correlation's wrap-around
    // edges pulled the shifts towards 0 (axis-0 shifts shrunk by up to half: rms 0.98/0.35 px,
    // correlation 0.86/0.98, F1 0.691), which looked like a slow drift of axis 0.
    assert!(corr[0] > 0.99 && corr[1] > 0.99, "shift correlation {corr:?}");
    assert!(rms[0] < 0.3 && rms[1] < 0.3, "shift error rms {rms:?}");
    assert!(f1_mc >= f1_plain, "motion correction does not help: {f1_mc:.3} < {f1_plain:.3}");
}

#[test]
fn two_files_equal_one_and_epochs_with_stop_detection() {
    let sp = synth([64, 64], 500, 12, 21, false);
    let (movie, _truth) = generate(&sp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let whole = write(dir.path(), "w.npy", &movie, 0..500);
    let a = write(dir.path(), "a.npy", &movie, 0..260);
    let b = write(dir.path(), "b.npy", &movie, 260..500);
    let p = params(&sp, 6, serde_json::json!({"online": {"update_freq": 100}}));
    let one = run(std::slice::from_ref(&whole), &p, &FitOnlineOptions::default());
    let two = run(&[a, b], &p, &FitOnlineOptions::default());
    assert_eq!(one.estimates.a, two.estimates.a);
    assert_eq!(one.estimates.c, two.estimates.c);
    assert_eq!(two.estimates.c.ncols(), 500);
    assert_eq!(two.report.frames_online, 300);

    let p2 = params(&sp, 6, serde_json::json!({"online": {"update_freq": 100, "epochs": 2, "stop_detection": true}}));
    let ep = run(&[whole], &p2, &FitOnlineOptions::default());
    assert_eq!(ep.model.frames_seen(), 1000);
    assert_eq!(ep.estimates.c.ncols(), 500, "traces of the last epoch");
    let last_added = ep.model.time_neuron_added().iter().map(|x| x.1).max().unwrap();
    eprintln!(
        "epochs: {} components after 1 epoch, {} after 2 (last added at frame {last_added})",
        one.estimates.n_components(),
        ep.estimates.n_components()
    );
    assert!(last_added < 500, "stop_detection: nothing added in the last epoch");
    assert!(ep.estimates.n_components() >= one.estimates.n_components() - 1);
}

#[test]
fn seeded_cnmf_init_and_downsampling() {
    let sp = synth([64, 64], 500, 12, 31, false);
    let (movie, truth) = generate(&sp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.npy", &movie, 0..500);
    // Seeded with the true masks, no search for new components.
    let (_, masks) = truth_masks(&truth, [0, 0], 0.2);
    let d = movie.dims().pixels();
    let (mut indptr, mut indices, mut data) = (vec![0usize], Vec::new(), Vec::new());
    for m in &masks {
        for (p, _) in m.iter().enumerate().filter(|x| *x.1) {
            indices.push(p);
            data.push(1.0f32);
        }
        indptr.push(indices.len());
    }
    let seeds = CscMatrix::from_parts(d, masks.len(), indptr, indices, data).unwrap();
    let p = params(&sp, 6, serde_json::json!({"online": {"init_method": "seeded", "update_num_comps": false}}));
    let opts = FitOnlineOptions { masks: Some(seeds), ..FitOnlineOptions::default() };
    let seeded = run(std::slice::from_ref(&path), &p, &opts);
    assert_eq!(seeded.estimates.n_components(), masks.len());
    let (f1_seeded, corr_seeded) = f1(&seeded, &truth);
    // CNMF initialisation of the batch.
    let p = params(&sp, 6, serde_json::json!({"online": {"init_method": "cnmf"}}));
    let cnmf = run(std::slice::from_ref(&path), &p, &FitOnlineOptions::default());
    let (f1_cnmf, _) = f1(&cnmf, &truth);
    eprintln!("cnmf init: {} components after the batch", cnmf.report.components_init);
    // ds_factor 2: the footprints come back at the input size.
    let p = params(&sp, 6, serde_json::json!({"online": {"ds_factor": 2.0}, "init": {"gSig": [2, 2]}}));
    let ds = run(&[path], &p, &FitOnlineOptions::default());
    assert_eq!(ds.estimates.dims, movie.dims());
    assert_eq!(ds.model.dims().d1, 32);
    let (f1_ds, _) = f1(&ds, &truth);
    eprintln!(
        "seeded ({} masks): F1 {f1_seeded:.3}, median trace corr {corr_seeded:.3}; cnmf init: {} components, F1 \
         {f1_cnmf:.3}; ds_factor 2: {} components, F1 {f1_ds:.3}",
        masks.len(),
        cnmf.estimates.n_components(),
        ds.estimates.n_components()
    );
    assert!(f1_seeded >= 0.9, "seeded F1 {f1_seeded:.3}");
    assert!(corr_seeded >= 0.9, "seeded trace correlation {corr_seeded:.3}");
    // The CNMF fit of 200 frames finds 6 neurons (K 6); online detection adds few after it here
    // (measured: 7 components, F1 0.59), as in CaImAn, whose `C_on` leaves the fitted baselines
    // `bl` (negative here) and the L1 shrinkage `lam` of the CNMF fit in the residual at every
    // initial neuron, where candidates are then rejected as duplicates.
    assert!(cnmf.report.components_init >= 5, "the CNMF initialisation found the neurons");
    assert!(f1_cnmf >= 0.5, "cnmf-initialised F1 {f1_cnmf:.3}");
    assert!(f1_ds >= 0.5, "ds_factor 2 F1 {f1_ds:.3}");
}
