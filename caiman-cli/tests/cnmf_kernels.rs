//! `caiman summary` and `caiman deconvolve` end to end: the files they write hold what the library
//! computes, every backend (worker processes included) gives identical numbers, and bad input is
//! one clear line.

// Running the binary under test is the point of this file.
#![allow(clippy::disallowed_methods)]

mod common;

use caiman_cnmf::foopsi::{FoopsiOptions, constrained_foopsi};
use caiman_cnmf::summary::{SummaryOptions, summary_images_movie};
use caiman_io::h5::H5File;
use common::{assert_one_line_error, caiman, stderr, stdout};

#[test]
fn summary_writes_the_library_images_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let tif = dir.path().join("m.tif");
    let o =
        caiman(&["--quiet", "synth", tif.to_str().unwrap(), "--size", "40x36x120", "--neurons", "10", "--seed", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let movie = caiman_io::load(&tif, &Default::default()).unwrap();
    let lib = summary_images_movie(&movie, &SummaryOptions::default()).unwrap();

    let mut results = Vec::new();
    for backend in ["linear", "threads:2", "processes:2"] {
        let out = dir.path().join(format!("s_{}.h5", backend.replace(':', "_")));
        let o =
            caiman(&["summary", tif.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", backend, "--json"]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["frames"], 120);
        let f = H5File::open(&out).unwrap();
        let (shape, cn) = f.read_f64("Cn").unwrap();
        assert_eq!(shape, vec![40, 36]);
        let lib_cn: Vec<f64> = lib.cn.iter().copied().collect();
        assert_eq!(cn.len(), lib_cn.len());
        for (a, b) in cn.iter().zip(&lib_cn) {
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "Cn differs: {a} vs {b}");
        }
        let (_, mean) = f.read_f64("mean").unwrap();
        assert_eq!(mean, lib.mean.iter().copied().collect::<Vec<_>>());
        let (_, max) = f.read_f32("max").unwrap();
        assert_eq!(max, lib.max.iter().copied().collect::<Vec<_>>());
        let (_, sn) = f.read_f64("sn").unwrap();
        assert!(sn.iter().all(|s| s.is_finite() && *s > 0.0), "pixel noise must be positive");
        results.push((cn, sn));
    }
    assert!(results.windows(2).all(|w| w[0].1 == w[1].1), "sn differs between backends");

    let out = dir.path().join("pics.h5");
    let o = caiman(&["--quiet", "summary", tif.to_str().unwrap(), "-o", out.to_str().unwrap(), "--png"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["Cn", "mean", "max", "sn"] {
        let png = caiman_io::png::read_rgb(dir.path().join(format!("pics_{name}.png"))).unwrap();
        assert_eq!((png.height(), png.width()), (40 * 4, 36 * 4), "{name}");
    }
}

/// An AR(1) calcium trace with spikes, baseline 2 and white noise (deterministic generator).
fn ar1_trace(seed: u64, t: usize, g: f64, sn: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut c = 0.0;
    (0..t)
        .map(|_| {
            let spike = if uni() < 0.03 { 1.0 } else { 0.0 };
            c = g * c + spike;
            let noise = (-2.0 * uni().ln()).sqrt() * (2.0 * std::f64::consts::PI * uni()).cos();
            2.0 + c + sn * noise
        })
        .collect()
}

#[test]
fn deconvolve_writes_caiman_names_and_matches_the_library_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (k, t) = (7, 600);
    let traces: Vec<Vec<f64>> = (0..k).map(|i| ar1_trace(i as u64 + 1, t, 0.9, 0.2)).collect();
    let npy = dir.path().join("traces.npy");
    caiman_io::npy::write_npy(&npy, &caiman_io::npy::NpyArray::f64(vec![k, t], traces.concat())).unwrap();
    let csv = dir.path().join("traces.csv");
    let text: String =
        traces.iter().map(|r| r.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(",") + "\n").collect();
    std::fs::write(&csv, text).unwrap();

    let opts = FoopsiOptions { p: 1, ..FoopsiOptions::default() };
    let lib: Vec<_> = traces.iter().map(|y| constrained_foopsi(y, &opts).unwrap()).collect();
    for (input, backend) in [(&npy, "linear"), (&csv, "threads:2"), (&npy, "processes:2")] {
        let out = dir.path().join(format!("d_{}.h5", backend.replace(':', "_")));
        let o = caiman(&[
            "deconvolve",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--p",
            "1",
            "--backend",
            backend,
            "--json",
        ]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["traces"], k);
        let f = H5File::open(&out).unwrap();
        let (shape, c) = f.read_f64("c").unwrap();
        assert_eq!(shape, vec![k, t]);
        let (_, s) = f.read_f64("s").unwrap();
        let (gshape, g) = f.read_f64("g").unwrap();
        assert_eq!(gshape, vec![k, 1]);
        for (name, want) in [("bl", 0), ("c1", 1), ("sn", 2), ("lam", 3)] {
            let (sh, vals) = f.read_f64(name).unwrap();
            assert_eq!(sh, vec![k], "{name}");
            for (i, r) in lib.iter().enumerate() {
                let expect = [r.bl, r.c1, r.sn, r.lam.unwrap_or(f64::NAN)][want];
                assert_eq!(vals[i].to_bits(), expect.to_bits(), "{name}[{i}] via {backend}");
            }
        }
        for (i, r) in lib.iter().enumerate() {
            assert_eq!(&c[i * t..(i + 1) * t], r.c.as_slice(), "c[{i}] via {backend}");
            assert_eq!(&s[i * t..(i + 1) * t], r.s.as_slice(), "s[{i}] via {backend}");
            assert_eq!(g[i], r.g[0]);
        }
    }

    // Given g and sn, every trace uses them.
    let out = dir.path().join("known.h5");
    let o = caiman(&[
        "--quiet",
        "deconvolve",
        npy.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--g",
        "0.9",
        "--sn",
        "0.2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = H5File::open(&out).unwrap();
    assert!(f.read_f64("g").unwrap().1.iter().all(|&g| g == 0.9));
    assert!(f.read_f64("sn").unwrap().1.iter().all(|&s| s == 0.2));
}

#[test]
fn cnmf_kernel_commands_reject_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.h5");
    let o = caiman(&["deconvolve", "/nonexistent/t.npy", "-o", out.to_str().unwrap()]);
    assert_one_line_error(&o, "t.npy");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "1,2,3\n4,five,6\n").unwrap();
    let o = caiman(&["deconvolve", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_one_line_error(&o, "bad.csv");
    let ok = dir.path().join("ok.csv");
    std::fs::write(&ok, "1,2,3,4,5,6,7,8\n").unwrap();
    let o = caiman(&["deconvolve", ok.to_str().unwrap(), "-o", out.to_str().unwrap(), "--p", "3"]);
    assert_one_line_error(&o, "--p 3");
    let o = caiman(&["deconvolve", ok.to_str().unwrap(), "-o", out.to_str().unwrap(), "--p", "2", "--g", "0.9"]);
    assert_one_line_error(&o, "--g");
    let o = caiman(&["summary", "/nonexistent/m.tif", "-o", out.to_str().unwrap()]);
    assert_one_line_error(&o, "m.tif");
    assert!(!out.exists(), "no output after a failure");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary files left");
}
