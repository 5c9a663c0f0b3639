//! The `pipeline` stage end to end: `cargo xtask perf-sweep`'s library sweeps the real
//! `caiman-bench-point` binary over the whole batch pipeline (motion correction → F → C transpose
//! → CNMF) on a small synthetic movie with motion, at 1 and 2 worker processes, next to the
//! `motion-rigid` stage alone. Checked: the parts name the motion passes, the transpose and CNMF's
//! stages and add up to the wall time; CPU and memory figures are plausible; both intermediate
//! memmaps were in scratch; accuracy against the generator's ground truth (F1 of the accepted
//! components at the template's offset, trace correlation, shift error) is within stated
//! tolerances and identical at 1 and 2 workers; the pipeline's shifts are those of the motion
//! stage alone. A second test runs a piecewise-rigid pipeline point directly.
// The tests start the binary under test.
#![allow(clippy::disallowed_methods)]

use caiman_bench::point::PointResult;

mod common;

use common::POINT_BIN;
const D: usize = 96;
const T: usize = 300;

#[test]
fn a_pipeline_sweep_at_1_and_2_workers_times_every_stage_and_scores_both_halves() {
    let dir = common::sweep_dir("pipeline-point-test-");
    let (o, out, log) = common::run_sweep(
        dir.path(),
        &format!(
            r#"
movie = "synthetic:{D}x{D}x{T}"
repeats = 1
warmup = 0
[axes]
stages = ["pipeline", "motion-rigid"]
strategies = ["processes"]
workers = [1, 2]
inner_threads = [1]
cnmf_patches = [{{ rf = 12, stride = 5 }}]
"#
        ),
    );
    assert_eq!(o.points.len(), 4, "{log:#?}");
    let find = |stage: &str, w: usize| {
        let p = o.points.iter().find(|p| p.spec.stage == stage && p.spec.workers == w).unwrap();
        assert!(p.ok(), "{}: {:?}", p.id, p.error);
        p
    };
    for w in [1, 2] {
        let p = find("pipeline", w);
        let r = &p.runs[0];
        let names: Vec<&str> = r.rest["parts"].as_array().unwrap().iter().map(|x| x[0].as_str().unwrap()).collect();
        let secs: f64 = r.rest["parts"].as_array().unwrap().iter().map(|x| x[1].as_f64().unwrap()).sum();
        let want = ["motion setup", "motion rigid 1", "transpose", "patches", "spatial", "temporal", "evaluate", "dff"];
        for part in want {
            assert!(names.contains(&part), "{}: part {part:?} missing from {names:?}", p.id);
        }
        // The parts tile the timed region: only the executor's start/stop and glue are outside.
        assert!(secs <= r.wall_s * 1.001 && secs >= 0.6 * r.wall_s, "{}: parts {secs} s, wall {} s", p.id, r.wall_s);
        assert!(r.cpu_s > 0.0 && r.cpu_s <= r.wall_s * o.meta.cores as f64 + 0.5, "{}: {r:?}", p.id);
        assert!(r.rest["cpu_children_s"].as_f64().unwrap() > 0.0, "{}: workers' CPU must be counted", p.id);
        assert!(r.parent_peak_rss_kib > 1024 && r.workers_peak_rss_kib > 1024, "{}: {r:?}", p.id);
        assert_eq!(r.peak_rss_kib, r.parent_peak_rss_kib + r.workers_peak_rss_kib);
        // The corrected F-order movie and its C-order copy were both in scratch.
        assert_eq!(r.scratch_bytes, 2 * (D * D * T * 4) as u64, "{}", p.id);
        assert_eq!(r.params["motion"]["pw_rigid"], serde_json::json!(false), "rigid by default");
        assert_eq!(r.params["patch"]["rf"], serde_json::json!(12));
        // Against the ground truth (16 neurons centred in the field of view). Measured: F1 0.80
        // (precision 0.86, recall 0.75), median trace r 0.978, shift RMS 0.69 px (the rigid shifts
        // against the true rigid shifts of a movie that also moves non-rigidly; the motion-rigid
        // stage's test allows 1.5 px). CNMF on the motion-free copy scores F1 0.90.
        let a = &p.accuracy;
        assert!(a["f1"] >= 0.7, "{}: {a:?}", p.id);
        assert!(a["recall"] >= 0.6 && a["precision"] >= 0.6, "{}: {a:?}", p.id);
        assert!(a["median_trace_corr"] >= 0.9, "{}: {a:?}", p.id);
        assert!(a["shift_rms_px"] > 0.0 && a["shift_rms_px"] < 1.0, "{}: {a:?}", p.id);
        assert!(a["gt_neurons"] >= 10.0, "{}: {a:?}", p.id);
        assert_eq!(p.accurate, Some(true), "{}", p.id);
        // The pipeline's motion correction is the motion stage's: the same shifts, so the same error.
        let m = find("motion-rigid", w);
        assert!((m.accuracy["shift_rms_px"] - a["shift_rms_px"]).abs() < 1e-12, "{:?} vs {a:?}", m.accuracy);
    }
    // The strategy never changes results: 1 and 2 workers agree exactly.
    let (one, two) = (find("pipeline", 1), find("pipeline", 2));
    assert_eq!(one.accuracy, two.accuracy);
    assert_eq!(one.runs[0].rest["components"], two.runs[0].rest["components"]);
    assert_eq!(one.runs[0].rest["accepted"], two.runs[0].rest["accepted"]);
    assert!(two.runs[0].workers_peak_rss_kib >= one.runs[0].workers_peak_rss_kib);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("pipeline"), "{md}");
}

#[test]
fn a_piecewise_rigid_pipeline_point_runs_the_patch_pass() {
    let dir = common::sweep_dir("pipeline-point-test-");
    let cfg = serde_json::json!({
        "stage": "pipeline",
        "input": {"kind": "synthetic", "d1": D, "d2": D, "frames": T, "seed": 1},
        "cache_dir": dir.path().join("cache"),
        "scratch_dir": dir.path().join("scratch"),
        "backend": {"kind": "threads", "workers": 2},
        "motion": {"pw_rigid": true, "strides": 48, "overlaps": 24},
        "cnmf": {"rf": 12, "stride": 5}
    });
    let out = std::process::Command::new(POINT_BIN).args(["run", &cfg.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: PointResult = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.parts.iter().any(|(p, _)| p == "motion piecewise"), "{:?}", r.parts);
    assert_eq!(r.params["motion"]["pw_rigid"], serde_json::json!(true));
    let a = &r.accuracy;
    // Measured: per-patch shift RMS 0.78 px, F1 0.73, median trace r 0.979.
    assert!(a.shift_rms_px.unwrap() < 1.2, "{a:?}");
    assert!(a.f1.unwrap() >= 0.6, "{a:?}");
    assert!(a.median_trace_corr.unwrap() >= 0.9, "{a:?}");
    assert!(r.crispness.is_some_and(|c| c > 0.0));
    assert!(r.components.unwrap() >= r.accepted.unwrap() && r.accepted.unwrap() >= 5, "{r:?}");
    assert_eq!(std::fs::read_dir(dir.path().join("scratch")).unwrap().count(), 0, "scratch removed");
}
