//! The `caiman` binary end to end: demo, synth, info, convert, and one-line errors on bad input.

// Running the binary under test is the point of this file.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::{assert_error_lines, caiman, stderr, stdout};

#[test]
fn demo_runs_and_every_format_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = caiman(&["demo", "--size", "48x40x60", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let text = stdout(&o);
    for fmt in ["tiff u16", "hdf5 deflate", "npy", "npz", "mmap F", "mmap C", "tiff f32"] {
        let line = text.lines().find(|l| l.starts_with(fmt)).unwrap_or_else(|| panic!("no row for {fmt} in\n{text}"));
        assert!(line.contains(" yes "), "{line}");
    }
    assert!(out.join("demo_gt.npz").exists());
    assert!(out.join("demo_C_d1_48_d2_40_d3_1_order_C_frames_60.mmap").exists());
}

#[test]
fn synth_then_convert_a_frame_range_then_info() {
    let dir = tempfile::tempdir().unwrap();
    let tif = dir.path().join("s.tif");
    let o = caiman(&["--quiet", "synth", tif.to_str().unwrap(), "--size", "32x24x30", "--seed", "3", "--neurons", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("s_gt.npz").exists());
    let h5 = dir.path().join("s.h5");
    let o =
        caiman(&["convert", tif.to_str().unwrap(), h5.to_str().unwrap(), "--frames", "10..25", "--dataset", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = caiman(&["info", "--json", "--dataset", "data", h5.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["shape"]["frames"], 15);
    assert_eq!(v["shape"]["dims"]["d1"], 32);
    assert_eq!(v["shape"]["dims"]["d2"], 24);
    assert_eq!(v["format"], "hdf5");
    // The converted frames equal frames 10..25 of the source.
    let mut a = caiman_io::open(&tif, &Default::default()).unwrap();
    let b =
        caiman_io::load(&h5, &caiman_io::OpenOptions { dataset: Some("data".into()), ..Default::default() }).unwrap();
    let mut want = vec![0f32; 15 * 32 * 24];
    a.read_frames(10, &mut want).unwrap();
    assert_eq!(b.as_slice(), want.as_slice());
    // `--order C` writes the pixel-major memmap CNMF reads in place: the same movie.
    let mm = dir.path().join("s.mmap");
    let o = caiman(&[
        "--quiet",
        "synth",
        mm.to_str().unwrap(),
        "--size",
        "32x24x30",
        "--seed",
        "3",
        "--neurons",
        "5",
        "--order",
        "C",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = dir.path().join("s_d1_32_d2_24_d3_1_order_C_frames_30.mmap");
    assert_eq!(caiman_io::mmap::MmapName::decode(&c).unwrap().order, caiman_io::Order::C);
    let c = caiman_io::load(&c, &Default::default()).unwrap();
    let mut all = vec![0f32; 30 * 32 * 24];
    a.read_frames(0, &mut all).unwrap();
    assert_eq!(c.as_slice(), all.as_slice());
}

#[test]
fn bad_inputs_give_one_clear_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("trunc.tif"), b"II*\0\x08\0\0\0\x10\0").unwrap();
    std::fs::write(p("movie.xyz"), b"?").unwrap();
    std::fs::write(p("x_d1_4_d2_4_d3_1_order_C_frames_9.mmap"), [0u8; 40]).unwrap();
    std::fs::create_dir(p("folder.tif")).unwrap();
    for (file, needle) in [
        ("trunc.tif", "trunc.tif"),
        ("movie.xyz", "unknown movie format"),
        ("x_d1_4_d2_4_d3_1_order_C_frames_9.mmap", "its name says"),
        ("folder.tif", "is a directory"),
        ("missing.h5", "missing.h5"),
    ] {
        let src = p(file);
        let o = caiman(&["info", src.to_str().unwrap()]);
        assert_error_lines(&o, needle);
        let out = p("out.npy");
        let o = caiman(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
        assert_error_lines(&o, needle);
        assert!(!out.exists());
    }
    // Nothing but our inputs remains: no temporary or partial file.
    let mut names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["folder.tif", "movie.xyz", "trunc.tif", "x_d1_4_d2_4_d3_1_order_C_frames_9.mmap"]);
}

#[test]
fn convert_rejects_a_frame_range_outside_the_movie() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.npy");
    let o = caiman(&["--quiet", "synth", src.to_str().unwrap(), "--size", "8x8x5", "--neurons", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("o.tif");
    let o = caiman(&["convert", src.to_str().unwrap(), out.to_str().unwrap(), "--frames", "3..9"]);
    assert_error_lines(&o, "outside the movie");
    assert!(!out.exists());
}

#[test]
fn motion_correct_is_identical_on_threads_and_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let tif = dir.path().join("m.tif");
    let o =
        caiman(&["--quiet", "synth", tif.to_str().unwrap(), "--size", "48x48x40", "--neurons", "12", "--seed", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut outs = Vec::new();
    for (backend, name) in [("threads:2", "t.mmap"), ("processes:2", "p.mmap"), ("linear", "l.h5")] {
        let out = dir.path().join(name);
        let o = caiman(&[
            "motion-correct",
            tif.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--json",
            "--pw-rigid",
            "--params",
            &params_file(dir.path()),
        ]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["frames"], 40);
        assert!(v["frames_per_second"].as_f64().unwrap() > 0.0);
        let res = caiman_io::h5::H5File::open(Path::new(v["results"].as_str().unwrap())).unwrap();
        let shifts = res.read_f64("shifts_rig").unwrap();
        let x_els = res.read_f64("x_shifts_els").unwrap();
        let centers = res.read_f64("patch_centers").unwrap();
        assert_eq!(centers.0[1], 2);
        assert_eq!(x_els.0[1], centers.0[0], "one column per patch");
        let movie = caiman_io::load(Path::new(v["output"].as_str().unwrap()), &Default::default()).unwrap();
        outs.push((shifts.1, x_els.1, movie.as_slice().to_vec()));
    }
    assert_eq!(outs[0], outs[1], "threads vs processes");
    assert_eq!(outs[0], outs[2], "threads vs linear");
}

/// A CaImAn-style params file whose `motion` group fits a 48×48 movie.
fn params_file(dir: &Path) -> String {
    let p = dir.join("params.json");
    std::fs::write(
        &p,
        r#"{"motion": {"strides": [16, 16], "overlaps": [8, 8], "max_shifts": [4, 4], "num_frames_split": 10}}"#,
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn motion_correct_reports_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mmap");
    let o = caiman(&["motion-correct", dir.path().join("none.tif").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_error_lines(&o, "none.tif");
    let bad = dir.path().join("p.json");
    std::fs::write(&bad, r#"{"motion": {"max_shifts": "lots"}}"#).unwrap();
    let o = caiman(&["motion-correct", "x.tif", "-o", out.to_str().unwrap(), "--params", bad.to_str().unwrap()]);
    assert_error_lines(&o, "p.json");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
