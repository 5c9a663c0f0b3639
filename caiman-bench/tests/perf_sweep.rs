//! End to end: `cargo xtask perf-sweep`'s library runs a two-point sweep of the real
//! `caiman-bench-point` binary on a tiny synthetic movie; the outputs must exist and parse, and the
//! CPU and memory figures must be plausible (non-zero; the tree with 2 worker processes holds at
//! least as much memory as with 1). Also one CNMF point scored against the ground truth.
// The tests start the binary under test.
#![allow(clippy::disallowed_methods)]

use caiman_bench::point::PointResult;

mod common;

use common::POINT_BIN;

/// The fields of one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[test]
fn a_two_point_sweep_writes_parsable_outputs_with_plausible_figures() {
    let dir = common::sweep_dir("perf-sweep-test-");
    let (o, out, log) = common::run_sweep(
        dir.path(),
        r#"
movie = "synthetic:48x48x120"
repeats = 1
warmup = 0
[axes]
stages = ["motion-rigid"]
strategies = ["processes"]
workers = [1, 2]
inner_threads = [1]
"#,
    );
    assert_eq!(o.points.len(), 2, "{log:#?}");
    for p in &o.points {
        assert!(p.ok(), "{}: {:?}", p.id, p.error);
        let r = &p.runs[0];
        assert!(r.wall_s > 0.0 && r.cpu_s > 0.0, "{}: wall {} cpu {}", p.id, r.wall_s, r.cpu_s);
        // CPU of the tree cannot exceed what the cores could give in the wall time (+ start-up slack).
        assert!(r.cpu_s <= r.wall_s * o.meta.cores as f64 + 0.5, "{}: cpu {} wall {}", p.id, r.cpu_s, r.wall_s);
        let children = r.rest["cpu_children_s"].as_f64().unwrap();
        assert!(children > 0.0, "{}: the workers' CPU time must be counted", p.id);
        assert!(r.parent_peak_rss_kib > 1024 && r.workers_peak_rss_kib > 1024, "{}: {r:?}", p.id);
        assert_eq!(r.peak_rss_kib, r.parent_peak_rss_kib + r.workers_peak_rss_kib);
        // The corrected movie (48 × 48 × 120 f32) is what the stage leaves in scratch.
        assert_eq!(r.scratch_bytes, 48 * 48 * 120 * 4);
        let shift = p.accuracy["shift_rms_px"];
        assert!(shift > 0.0 && shift < 1.5, "{}: shift RMS error {shift} px against the ground truth", p.id);
    }
    let one = o.points.iter().find(|p| p.spec.workers == 1).unwrap();
    let two = o.points.iter().find(|p| p.spec.workers == 2).unwrap();
    assert!(
        two.runs[0].workers_peak_rss_kib >= one.runs[0].workers_peak_rss_kib,
        "2 workers {} KiB < 1 worker {} KiB",
        two.runs[0].workers_peak_rss_kib,
        one.runs[0].workers_peak_rss_kib
    );
    assert!(two.peak_rss_median_kib >= one.peak_rss_median_kib);

    // Every output exists and parses.
    let csv = std::fs::read_to_string(out.join("points.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(csv_fields(lines[0]), xtask::report::POINT_COLUMNS);
    for l in &lines[1..] {
        let f = csv_fields(l);
        assert_eq!(f.len(), xtask::report::POINT_COLUMNS.len(), "{l}");
        assert!(f[6].starts_with("processes:"), "backend column: {l}");
        assert!(f[9].parse::<f64>().unwrap() > 0.0, "wall_median_s: {l}");
    }
    assert_eq!(std::fs::read_to_string(out.join("runs.csv")).unwrap().lines().count(), 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    for key in ["host", "cores", "rustc", "git_rev", "cpu"] {
        assert!(json["meta"].get(key).is_some_and(|v| !v.is_null()), "meta.{key}");
    }
    assert_eq!(json["points"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Recommendation") && md.contains("motion-rigid"), "{md}");
    let pngs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert!(pngs.len() >= 2, "{pngs:?}");
    for p in &pngs {
        let img = caiman_io::png::read_rgb(p).unwrap();
        assert!(img.width() >= 400 && img.height() >= 300, "{}", p.display());
        assert!(md.contains(&*p.file_name().unwrap().to_string_lossy()), "report links {}", p.display());
    }
    // The recommended files go back into caiman's own parameter loaders and backend parser.
    let params = std::fs::read_to_string(out.join("recommended_params.json")).unwrap();
    let (motion, _) = caiman_motion::MotionParams::from_caiman_json(&params).unwrap();
    assert!(!motion.pw_rigid);
    caiman_cnmf::params::CnmfParams::from_caiman_json(&params).unwrap();
    let backend: caiman_parallel::Backend =
        std::fs::read_to_string(out.join("recommended_backend.txt")).unwrap().trim().parse().unwrap();
    assert_eq!(backend.strategy(), caiman_parallel::Strategy::Processes);
}

#[test]
fn a_cnmf_point_finds_the_synthetic_neurons() {
    let dir = common::sweep_dir("perf-sweep-test-");
    let cfg = serde_json::json!({
        "stage": "cnmf",
        "input": {"kind": "synthetic", "d1": 64, "d2": 64, "frames": 200, "seed": 1},
        "cache_dir": dir.path().join("cache"),
        "scratch_dir": dir.path().join("scratch"),
        "backend": {"kind": "threads", "workers": 2},
        "cnmf": {"rf": 12, "stride": 5}
    });
    let out = std::process::Command::new(POINT_BIN).args(["run", &cfg.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: PointResult = serde_json::from_slice(&out.stdout).unwrap();
    let a = &r.accuracy;
    // Against the generator's ground truth (IoU matching, CaImAn's thresholds).
    assert!(a.f1.unwrap() >= 0.6, "{a:?}");
    assert!(a.median_trace_corr.unwrap() >= 0.9, "{a:?}");
    assert!(a.gt_neurons.unwrap() >= 3, "{a:?}");
    assert!(r.components.unwrap() >= r.accepted.unwrap());
    // The C-order copy is what CNMF leaves in scratch; the scratch directory itself is gone.
    assert_eq!(r.scratch_bytes, 64 * 64 * 200 * 4);
    assert_eq!(std::fs::read_dir(dir.path().join("scratch")).unwrap().count(), 0);
    assert!(r.cpu_s > 0.0 && r.peak_rss_kib > 1024);
}

#[test]
fn an_online_point_runs_onacid_and_scores_it() {
    let dir = common::sweep_dir("perf-sweep-test-");
    let cfg = serde_json::json!({
        "stage": "online",
        "input": {"kind": "synthetic", "d1": 64, "d2": 64, "frames": 300, "seed": 1},
        "cache_dir": dir.path().join("cache"),
        "scratch_dir": dir.path().join("scratch"),
        "backend": {"kind": "threads", "workers": 1}
    });
    let out = std::process::Command::new(POINT_BIN).args(["run", &cfg.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: PointResult = serde_json::from_slice(&out.stdout).unwrap();
    let a = &r.accuracy;
    assert!(r.components.unwrap() >= 1, "{r:?}");
    assert!(a.recall.unwrap() >= 0.5, "{a:?}");
    assert!(a.median_trace_corr.unwrap() >= 0.8, "{a:?}");
    assert!(r.parts.iter().any(|(p, _)| p == "online"), "{:?}", r.parts);
}
