//! The `caiman` binary end to end: demo, synth, info, convert, and one-line errors on bad input.

// Running the binary under test is the point of this file.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Output};

fn caiman(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caiman")).args(args).env("RUST_LOG", "warn").output().expect("run caiman")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
}

fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let err = stderr(o);
    let lines: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(!lines.is_empty() && err.contains(needle), "expected an error mentioning {needle:?}, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
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
        assert_one_line_error(&o, needle);
        let out = p("out.npy");
        let o = caiman(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
        assert_one_line_error(&o, needle);
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
    assert_one_line_error(&o, "outside the movie");
    assert!(!out.exists());
}
