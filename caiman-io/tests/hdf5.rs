//! HDF5 / NWB movies and the small HDF5 layer: files written by CaImAn / h5py, round trips,
//! and bad input.

use std::path::{Path, PathBuf};

use caiman_io::h5::{ElemType, EntryKind, H5File, H5Writer};
use caiman_io::hdf5::{Hdf5Source, Hdf5Writer};
use caiman_io::write::MovieWriter;
use caiman_io::{Dims, Error, FrameSource, OpenOptions, Shape, WriteOptions};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/hdf5").join(name)
}

/// A little-endian `<f4` C-order `.npy` (format 1.0): shape and values.
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(bytes[6], 1, "npy version 1.0");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_txt.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let values: Vec<f32> =
        bytes[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn read_all(src: &mut dyn FrameSource) -> Vec<f32> {
    let mut buf = vec![0.0; src.info().shape.len()];
    src.read_frames(0, &mut buf).unwrap();
    buf
}

/// Deterministic pseudo-random values (including negatives, fractions and large numbers).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as i32 as f32) / 1024.0
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Movies written by CaImAn
// ---------------------------------------------------------------------------------------------

#[test]
fn caiman_mov_h5_reads_bit_exactly() {
    let (shape, expected) = read_npy_f32(&data("mov_source.npy"));
    assert_eq!(shape, [7, 10, 13]);
    for name in [None, Some("mov")] {
        let mut src = Hdf5Source::open(&data("mov.h5"), name).unwrap();
        let info = src.info().clone();
        assert_eq!(info.shape, Shape::new(7, Dims::planar(10, 13)));
        assert_eq!(info.dtype, caiman_io::DType::F32);
        assert_eq!(info.fr, Some(30.0));
        assert_eq!(info.format, caiman_io::Format::Hdf5);
        assert_eq!(src.dataset(), "/mov");
        assert_eq!(bits(&read_all(&mut src)), bits(&expected));
    }
    // Through the format-neutral entry points.
    let movie = caiman_io::load(data("mov.h5"), &OpenOptions::default()).unwrap();
    assert_eq!(bits(movie.as_slice()), bits(&expected));
    assert_eq!(movie.meta.fr, 30.0);
}

#[test]
fn caiman_custom_dataset_name_and_single_dataset_rule() {
    let (_, expected) = read_npy_f32(&data("mov_source.npy"));
    for name in [Some("my_dataset"), Some("wrong_name"), Some("mov"), None] {
        let mut src = Hdf5Source::open(&data("mov_custom_name.h5"), name).unwrap();
        assert_eq!(src.dataset(), "/my_dataset", "asked for {name:?}");
        assert_eq!(src.info().fr, Some(30.0));
        assert_eq!(bits(&read_all(&mut src)), bits(&expected), "asked for {name:?}");
    }
    let opts = OpenOptions { dataset: Some("wrong_name".into()), ..Default::default() };
    let movie = caiman_io::load(data("mov_custom_name.h5"), &opts).unwrap();
    assert_eq!(bits(movie.as_slice()), bits(&expected));
}

#[test]
fn caiman_mov_h5_hyperslabs_and_strides() {
    let (_, expected) = read_npy_f32(&data("mov_source.npy"));
    let d = 130;
    let mut src = Hdf5Source::open(&data("mov.h5"), None).unwrap();
    // Last frame first, then the others in a scrambled order.
    for t in [6, 0, 3, 5, 1, 4, 2] {
        let mut frame = vec![0.0; d];
        src.read_frames(t, &mut frame).unwrap();
        assert_eq!(bits(&frame), bits(&expected[t * d..(t + 1) * d]), "frame {t}");
    }
    let mut two = vec![0.0; 2 * d];
    src.read_frames(5, &mut two).unwrap();
    assert_eq!(bits(&two), bits(&expected[5 * d..7 * d]));
    let mut strided = vec![0.0; 3 * d];
    src.read_frames_strided(1, 2, &mut strided).unwrap();
    let want: Vec<f32> = [1, 3, 5].iter().flat_map(|&t| expected[t * d..(t + 1) * d].to_vec()).collect();
    assert_eq!(bits(&strided), bits(&want));
    // Out of range and wrong buffer sizes are typed errors.
    assert!(matches!(src.read_frames(7, &mut vec![0.0; d]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(src.read_frames(6, &mut vec![0.0; 2 * d]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(src.read_frames(0, &mut vec![0.0; d + 1]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(src.read_frames_strided(0, 4, &mut vec![0.0; 3 * d]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(src.read_frames_strided(0, 0, &mut vec![0.0; d]), Err(Error::InvalidRequest { .. })));
    src.read_frames(3, &mut []).unwrap();
}

#[test]
fn h5py_written_movies_with_other_types_and_layouts() {
    /// File, dataset name, shape, stored type, frame rate.
    type Case = (&'static str, Option<&'static str>, Shape, caiman_io::DType, Option<f64>);
    let cases: [Case; 4] = [
        ("h5py_u16_gzip_shuffle.h5", None, Shape::new(11, Dims::planar(9, 7)), caiman_io::DType::U16, Some(15.0)),
        ("h5py_be_f4_volume.h5", Some("vol"), Shape::new(4, Dims::volume(3, 5, 2)), caiman_io::DType::F32, None),
        ("h5py_i8_series.nwb", None, Shape::new(5, Dims::planar(4, 4)), caiman_io::DType::I8, None),
        ("h5py_f64_latest.h5", None, Shape::new(6, Dims::planar(5, 4)), caiman_io::DType::F64, Some(9.5)),
    ];
    for (file, name, shape, dtype, fr) in cases {
        let (npy_shape, expected) = read_npy_f32(&data(&file.replace(".h5", ".npy").replace(".nwb", ".npy")));
        assert_eq!(npy_shape.iter().product::<usize>(), shape.len());
        let mut src = Hdf5Source::open(&data(file), name).unwrap();
        assert_eq!((src.info().shape, src.info().dtype, src.info().fr), (shape, dtype, fr), "{file}");
        assert_eq!(bits(&read_all(&mut src)), bits(&expected), "{file}");
        let d = shape.dims.pixels();
        let mut frame = vec![0.0; d];
        for t in (0..shape.frames).rev() {
            src.read_frames(t, &mut frame).unwrap();
            assert_eq!(bits(&frame), bits(&expected[t * d..(t + 1) * d]), "{file} frame {t}");
        }
        let mut two = vec![0.0; 2 * d];
        src.read_frames_strided(1, 2, &mut two).unwrap();
        let want: Vec<f32> = [1, 3].iter().flat_map(|&t| expected[t * d..(t + 1) * d].to_vec()).collect();
        assert_eq!(bits(&two), bits(&want), "{file} strided");
    }
    // The big-endian volume must be named: its file holds two datasets.
    assert!(matches!(Hdf5Source::open(&data("h5py_be_f4_volume.h5"), None), Err(Error::MissingDataset { .. })));
    let f = H5File::open(&data("h5py_u16_gzip_shuffle.h5")).unwrap();
    assert_eq!(f.attr_string("/", "note").unwrap(), "fixed ascii");
    assert_eq!(f.attr_string("/", "text").unwrap(), "vlen str");
    assert_eq!(f.attr_f64("/mov", "fr").unwrap(), 15.0);
    assert_eq!(f.dataset_info("/mov").unwrap().chunks, Some(vec![3, 9, 7]));
}

// ---------------------------------------------------------------------------------------------
// cnmf_toy_result.hdf5 (CNMF.save): the tree and values of the reference README table
// ---------------------------------------------------------------------------------------------

fn cnmf() -> H5File {
    H5File::open(&data("cnmf_toy_result.hdf5")).unwrap()
}

fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Numbers of a Python repr of a scalar or a (nested) list: `4`, `0.4`, `inf`, `True`,
/// `[[0.85], [0.84]]`.
fn parse_numbers(repr: &str) -> Vec<f64> {
    repr.split(['[', ']', ',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "True" => 1.0,
            "False" => 0.0,
            s => s.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {s:?} in {repr:?}")),
        })
        .collect()
}

/// Items of a Python repr of a list of bytes: `[b'ECOS', b'SCS']`.
fn parse_bytes_list(repr: &str) -> Vec<String> {
    let inner = repr
        .strip_prefix("[b'")
        .and_then(|r| r.strip_suffix("']"))
        .unwrap_or_else(|| panic!("not a bytes list: {repr}"));
    inner.split("', b'").map(str::to_string).collect()
}

#[test]
fn cnmf_result_tree_matches_reference_listing() {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("cnmf_toy_result_hdf5_tree.json")).unwrap()).unwrap();
    let reference = reference.as_array().unwrap();
    let tree = cnmf().tree().unwrap();
    let got: Vec<&str> = tree.iter().map(|e| e.path.as_str()).collect();
    let want: Vec<&str> = reference.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(tree.len(), 238);
    for (entry, r) in tree.iter().zip(reference) {
        match &entry.kind {
            EntryKind::Group => assert_eq!(r["kind"], "group", "{}", entry.path),
            EntryKind::Dataset(info) => {
                assert_eq!(r["kind"], "dataset", "{}", entry.path);
                assert_eq!(info.dtype.numpy_name(), r["dtype"].as_str().unwrap(), "{}", entry.path);
                assert_eq!(shape_repr(&info.shape), r["shape"].as_str().unwrap(), "{}", entry.path);
            }
        }
    }
    let datasets = tree.iter().filter(|e| matches!(e.kind, EntryKind::Dataset(_))).count();
    assert_eq!(datasets, 223);
    assert_eq!(cnmf().dataset_paths().len(), 223);
}

#[test]
fn cnmf_result_every_listed_value_and_attribute() {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("cnmf_toy_result_hdf5_tree.json")).unwrap()).unwrap();
    let f = cnmf();
    let mut checked = 0;
    for r in reference.as_array().unwrap() {
        let path = r["path"].as_str().unwrap();
        let value = r["value"].as_str().unwrap();
        let dtype = r["dtype"].as_str().unwrap();
        if !value.is_empty() {
            match dtype {
                "object" => {
                    assert_eq!(f.read_strings(path).unwrap(), [value.trim_matches('\'')], "{path}")
                }
                d if d.starts_with("|S") => {
                    assert_eq!(f.read_strings(path).unwrap(), parse_bytes_list(value), "{path}")
                }
                _ => {
                    let (_, got) = f.read_f64(path).unwrap();
                    let want = parse_numbers(value);
                    assert_eq!(got.len(), want.len(), "{path}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g.to_bits(), w.to_bits(), "{path}: {got:?} vs {value}");
                    }
                }
            }
            checked += 1;
        }
        let attrs = r["attrs"].as_str().unwrap();
        if !attrs.is_empty() {
            let mut names = f.attr_names(path).unwrap();
            names.sort();
            let mut want_names = Vec::new();
            for kv in attrs.split("; ") {
                let (k, v) = kv.split_once('=').unwrap();
                assert_eq!(f.attr_string(path, k).unwrap(), v.trim_matches('\''), "{path}@{k}");
                want_names.push(k.to_string());
            }
            want_names.sort();
            assert_eq!(names, want_names, "{path}");
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} values checked");
}

#[test]
fn cnmf_result_values_named_in_the_readme() {
    let f = cnmf();
    assert_eq!(f.read_i64("/dims").unwrap(), (vec![2], vec![20, 30]));
    assert_eq!(f.read_i64("estimates/A/shape").unwrap(), (vec![2], vec![600, 4]));
    let a = f.dataset_info("/estimates/A/data").unwrap();
    assert_eq!((a.dtype.clone(), a.shape.clone()), (ElemType::Float { bytes: 8 }, vec![405]));
    assert_eq!(f.read_f64("/estimates/A/data").unwrap().1.len(), 405);
    let indptr = f.dataset_info("/estimates/A/indptr").unwrap();
    assert_eq!((indptr.dtype, indptr.shape), (ElemType::Int { bytes: 4, signed: true }, vec![5]));
    let (_, indptr) = f.read_i64("/estimates/A/indptr").unwrap();
    assert_eq!((indptr[0], indptr[4]), (0, 405));
    let (_, indices) = f.read_i64("/estimates/A/indices").unwrap();
    assert!(indices.iter().all(|&i| (0..600).contains(&i)));
    let (shape, g) = f.read_f64("/estimates/g").unwrap();
    assert_eq!(shape, [4, 1]);
    assert_eq!(g, [0.8514792919158936, 0.8488235473632812, 0.861710250377655, 0.8990617990493774]);
    assert_eq!(
        f.read_strings("/estimates/bl").unwrap(),
        ["-5.208319323266344", "-4.3348097149088725", "-4.046811840382332", "-3.028612171765866"]
    );
    assert_eq!(f.dataset_info("/estimates/bl").unwrap().dtype, ElemType::FixedString { len: 32 });
    assert_eq!(f.read_strings("/params/temporal/solvers").unwrap(), ["ECOS", "SCS"]);
    assert_eq!(f.read_strings("/dview").unwrap(), ["NoneType"]);
    assert_eq!(f.dataset_info("/dview").unwrap().dtype, ElemType::VarString);
    assert_eq!(f.attr_string("/params/data", "var_name_hdf5").unwrap(), "mov");
    assert_eq!(f.attr_string("params/init", "method_init").unwrap(), "greedy_roi");
    assert_eq!(f.read_f64("/params/online/max_comp_update_shape").unwrap(), (vec![], vec![f64::INFINITY]));
    assert_eq!(f.read_i64("/estimates/nr").unwrap(), (vec![], vec![4]));
    assert_eq!(f.read_bool("/params/init/SC_normalize").unwrap(), (vec![], vec![true]));
    assert_eq!(f.read_bool("/params/init/SC_use_NN").unwrap(), (vec![], vec![false]));
    assert_eq!(f.dataset_info("/params/init/SC_normalize").unwrap().dtype, ElemType::Bool);
    assert_eq!(f.read_f64("/estimates/shifts").unwrap(), (vec![0], vec![]));
    let (shape, c) = f.read_f32("/estimates/C").unwrap();
    assert_eq!((shape, c.len()), (vec![4, 300], 1200));
    let mut row = vec![0.0f32; 300];
    f.read_rows_f32("/estimates/C", 3, 1, &mut row).unwrap();
    assert_eq!(bits(&row), bits(&c[900..]));
    // Directory-like listings.
    assert_eq!(f.groups_in("/").unwrap(), ["estimates", "params"]);
    assert_eq!(f.datasets_in("/").unwrap(), ["dims", "dview", "mmap_file", "remove_very_bad_comps", "skip_refinement"]);
    assert!(f.is_group("/params/motion") && !f.is_dataset("/params/motion"));
    assert!(f.is_dataset("/params/motion/strides") && !f.is_group("/params/motion/strides"));
}

#[test]
fn cnmf_result_typed_errors() {
    let f = cnmf();
    match f.read_f64("/estimates/nope") {
        Err(Error::MissingDataset { name, found, .. }) => {
            assert_eq!(name, "/estimates/nope");
            assert!(found.contains("/dims"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.read_f64("/estimates/bl"), Err(Error::Unsupported { .. })));
    assert!(matches!(f.read_i64("/estimates/g"), Err(Error::Unsupported { .. })));
    assert!(matches!(f.read_strings("/dims"), Err(Error::Unsupported { .. })));
    assert!(matches!(f.attr_string("/params/data", "nope"), Err(Error::InvalidRequest { .. })));
    assert!(matches!(f.groups_in("/nope"), Err(Error::InvalidRequest { .. })));
    assert!(matches!(f.read_rows_f32("/dims", 0, 3, &mut [0.0; 3]), Err(Error::InvalidRequest { .. })));
    // Absurd requests are refused, without overflow.
    let mut row = vec![0.0f32; 300];
    assert!(matches!(f.read_rows_f32("/estimates/C", usize::MAX, 1, &mut row), Err(Error::InvalidRequest { .. })));
    assert!(matches!(
        f.read_rows_strided_f32("/estimates/C", 1, usize::MAX, 2, &mut vec![0.0; 600]),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(f.read_rows_strided_f32("/estimates/C", 0, 0, 1, &mut row), Err(Error::InvalidRequest { .. })));
    assert!(matches!(f.read_rows_f32("/estimates/nr", 0, 1, &mut [0.0; 1]), Err(Error::InvalidRequest { .. })));
    // The CNMF result is not a movie: no `mov` dataset, and the error lists what is there.
    match Hdf5Source::open(&data("cnmf_toy_result.hdf5"), None) {
        Err(Error::MissingDataset { name, found, .. }) => {
            assert_eq!(name, "/mov");
            assert!(found.contains("/estimates/A/data"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    let e = Hdf5Source::open(&data("cnmf_toy_result.hdf5"), Some("estimates/sn")).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // A 2-D numeric dataset is one frame.
    let mut src = Hdf5Source::open(&data("cnmf_toy_result.hdf5"), Some("/estimates/C")).unwrap();
    assert_eq!(src.info().shape, Shape::new(1, Dims::planar(4, 300)));
    assert_eq!(src.info().dtype, caiman_io::DType::F64);
    let frame = read_all(&mut src);
    assert_eq!(bits(&frame), bits(&f.read_f32("/estimates/C").unwrap().1));
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn write_movie(path: &Path, shape: Shape, values: &[f32], opts: &WriteOptions, pieces: &[usize]) -> PathBuf {
    let mut w: Box<dyn MovieWriter> = Box::new(Hdf5Writer::create(path, shape, opts).unwrap());
    assert_eq!(w.shape(), shape);
    let d = shape.dims.pixels();
    let mut t = 0;
    for &n in pieces.iter().chain(std::iter::once(&usize::MAX)) {
        let n = n.min(shape.frames - t);
        w.write_frames(&values[t * d..(t + n) * d]).unwrap();
        t += n;
        if t == shape.frames {
            break;
        }
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_planar_and_volume_with_and_without_compression() {
    let dir = tempfile::tempdir().unwrap();
    // 64×64 f32 frames are 16 KiB, so 64 frames fill a 1 MiB chunk: 150 frames span three chunks
    // (the last one partial).
    let cases = [
        (Shape::new(150, Dims::planar(64, 64)), 0u32),
        (Shape::new(150, Dims::planar(64, 64)), 4),
        (Shape::new(9, Dims::volume(5, 4, 3)), 0),
        (Shape::new(9, Dims::volume(5, 4, 3)), 4),
        (Shape::new(1, Dims::planar(3, 2)), 9),
    ];
    for (i, (shape, compression)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("movie_{i}.h5"));
        let vals = values(shape.len(), i as u64);
        let opts = WriteOptions { compression, fr: 12.5, ..Default::default() };
        let out = write_movie(&path, shape, &vals, &opts, &[1, 0, 2, 61, 7]);
        assert_eq!(out, path);
        let mut src = Hdf5Source::open(&path, None).unwrap();
        assert_eq!(src.info().shape, shape, "case {i}");
        assert_eq!(src.info().fr, Some(12.5));
        assert_eq!(bits(&read_all(&mut src)), bits(&vals), "case {i}");
        // Random access: last frame first, then every frame backwards.
        let d = shape.dims.pixels();
        let mut frame = vec![0.0; d];
        for t in (0..shape.frames).rev() {
            src.read_frames(t, &mut frame).unwrap();
            assert_eq!(bits(&frame), bits(&vals[t * d..(t + 1) * d]), "case {i} frame {t}");
        }
        if shape.frames >= 9 {
            let (start, step, n) = (shape.frames - 9, 4, 3);
            let mut buf = vec![0.0; n * d];
            src.read_frames_strided(start, step, &mut buf).unwrap();
            let want: Vec<f32> =
                (0..n).flat_map(|k| vals[(start + k * step) * d..(start + k * step + 1) * d].to_vec()).collect();
            assert_eq!(bits(&buf), bits(&want), "case {i} strided");
        }
        // The layout CaImAn writes: float32 (T, d1, d2[, d3]) with fr and start_time.
        let f = H5File::open(&path).unwrap();
        let info = f.dataset_info("/mov").unwrap();
        assert_eq!(info.dtype, ElemType::Float { bytes: 4 });
        let want_shape: Vec<usize> = if shape.dims.is_volume() {
            vec![shape.frames, shape.dims.d1, shape.dims.d2, shape.dims.d3]
        } else {
            vec![shape.frames, shape.dims.d1, shape.dims.d2]
        };
        assert_eq!(info.shape, want_shape);
        let chunks = info.chunks.clone().unwrap();
        assert_eq!(chunks[1..], want_shape[1..], "chunks hold whole frames");
        assert!(chunks[0] >= 1 && chunks[0] * d * 4 <= 1 << 20);
        assert_eq!(f.attr_f64("/mov", "fr").unwrap(), 12.5);
        assert_eq!(f.attr_f64("/mov", "start_time").unwrap(), 0.0);
        if compression > 0 && shape.frames == 150 {
            assert!(std::fs::metadata(&path).unwrap().len() < (shape.len() * 4) as u64, "deflate shrinks the file");
        }
    }
    // Nothing but the finished files is left in the directory.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, (0..5).map(|i| format!("movie_{i}.h5")).collect::<Vec<_>>());
}

#[test]
fn round_trip_through_save_and_load_with_custom_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.hdf5");
    let shape = Shape::new(5, Dims::planar(6, 7));
    let movie = caiman_io::Movie::from_vec(shape, values(shape.len(), 99));
    let opts = WriteOptions { dataset: "my_dataset".into(), ..Default::default() };
    assert_eq!(caiman_io::save(&path, &movie, &opts).unwrap(), path);
    // Only one dataset in the file: any name reads it.
    for name in [None, Some("my_dataset".to_string()), Some("other".to_string())] {
        let back = caiman_io::load(&path, &OpenOptions { dataset: name, ..Default::default() }).unwrap();
        assert_eq!(bits(back.as_slice()), bits(movie.as_slice()));
    }
    // A nested dataset name creates its groups.
    let nested = dir.path().join("nested.h5");
    let opts = WriteOptions { dataset: "a/b/frames".into(), compression: 0, ..Default::default() };
    caiman_io::save(&nested, &movie, &opts).unwrap();
    let mut src = Hdf5Source::open(&nested, Some("a/b/frames")).unwrap();
    assert_eq!(src.dataset(), "/a/b/frames");
    assert_eq!(bits(&read_all(&mut src)), bits(movie.as_slice()));
}

#[test]
fn nwb_layout_opens_with_and_without_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::new(4, Dims::planar(3, 5));
    let vals = values(shape.len(), 7);
    let make = |name: &str, dataset: &str| -> PathBuf {
        let path = dir.path().join(name);
        let mut w = H5Writer::create(&path).unwrap();
        w.write_f32(dataset, &[4, 3, 5], &vals).unwrap();
        w.set_attr_str("/", "nwb_version", "2.5.0").unwrap();
        w.write_vlen_strings("/general/notes", &["written by the caiman-io tests"]).unwrap();
        w.finish().unwrap()
    };
    let acq = make("acq.nwb", "acquisition/mov/data");
    for name in [None, Some("mov")] {
        let mut src = Hdf5Source::open(&acq, name).unwrap();
        assert_eq!(src.dataset(), "/acquisition/mov/data");
        assert_eq!(src.info().shape, shape);
        assert_eq!(bits(&read_all(&mut src)), bits(&vals));
    }
    assert!(matches!(Hdf5Source::open(&acq, Some("other")), Err(Error::MissingDataset { .. })));
    // A series of another name is found when it is the only one and no name is given.
    let series = make("series.nwb", "acquisition/TwoPhotonSeries/data");
    let mut src = Hdf5Source::open(&series, None).unwrap();
    assert_eq!(src.dataset(), "/acquisition/TwoPhotonSeries/data");
    assert_eq!(bits(&read_all(&mut src)), bits(&vals));
    assert_eq!(
        Hdf5Source::open(&series, Some("TwoPhotonSeries")).unwrap().dataset(),
        "/acquisition/TwoPhotonSeries/data"
    );
    match Hdf5Source::open(&series, Some("mov")) {
        Err(Error::MissingDataset { name, found, .. }) => {
            assert_eq!(name, "/mov/data or /acquisition/mov/data");
            assert!(found.contains("/acquisition/TwoPhotonSeries/data"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    // `<name>/data` at the top level.
    let top = make("top.nwb", "mov/data");
    let mut src = caiman_io::open(&top, &OpenOptions::default()).unwrap();
    assert_eq!(bits(&read_all(src.as_mut())), bits(&vals));
}

#[test]
fn integer_and_double_datasets_convert_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.h5");
    let mut w = H5Writer::create(&path).unwrap();
    let u8s: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
    let i32s: Vec<i32> = (0..24).map(|i| i * 1000 - 7000).collect();
    let f64s: Vec<f64> = (0..24).map(|i| i as f64 / 3.0).collect();
    let i64s: Vec<i64> = (0..24).map(|i| -(1 << 40) + i).collect();
    w.write_u8("u8", &[2, 3, 4], &u8s).unwrap();
    w.write_i32("i32", &[2, 3, 4], &i32s).unwrap();
    w.write_f64("f64", &[2, 3, 4], &f64s).unwrap();
    w.write_i64("i64", &[2, 3, 4], &i64s).unwrap();
    w.write_bool("bool", &[2, 3, 4], &(0..24).map(|i| i % 3 == 0).collect::<Vec<_>>()).unwrap();
    w.finish().unwrap();
    let check = |name: &str, want: Vec<f32>, dtype: caiman_io::DType| {
        let mut src = Hdf5Source::open(&path, Some(name)).unwrap();
        assert_eq!(src.info().dtype, dtype, "{name}");
        assert_eq!(src.info().shape, Shape::new(2, Dims::planar(3, 4)));
        assert_eq!(bits(&read_all(&mut src)), bits(&want), "{name}");
        let mut last = vec![0.0; 12];
        src.read_frames(1, &mut last).unwrap();
        assert_eq!(bits(&last), bits(&want[12..]), "{name}");
        let mut strided = vec![0.0; 12];
        src.read_frames_strided(1, 5, &mut strided).unwrap();
        assert_eq!(bits(&strided), bits(&want[12..]), "{name}");
    };
    check("u8", u8s.iter().map(|&v| v as f32).collect(), caiman_io::DType::U8);
    check("i32", i32s.iter().map(|&v| v as f32).collect(), caiman_io::DType::I32);
    check("f64", f64s.iter().map(|&v| v as f32).collect(), caiman_io::DType::F64);
    check("i64", i64s.iter().map(|&v| v as f32).collect(), caiman_io::DType::I64);
    check("bool", (0..24).map(|i| if i % 3 == 0 { 1.0 } else { 0.0 }).collect(), caiman_io::DType::U8);
    // Strided reads of a converted type with more than one frame.
    let f = H5File::open(&path).unwrap();
    let mut rows = vec![0.0f32; 2 * 4];
    assert!(matches!(f.read_rows_strided_f32("/f64", 0, 1, 2, &mut rows), Err(Error::InvalidRequest { .. })));
    let mut two = vec![0.0f32; 2 * 12];
    f.read_rows_strided_f32("/i32", 0, 1, 2, &mut two).unwrap();
    assert_eq!(two, i32s.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(f.read_i64("/i64").unwrap().1, i64s);
    assert_eq!(f.read_f64("/u8").unwrap().1, u8s.iter().map(|&v| v as f64).collect::<Vec<_>>());
}

#[test]
fn h5_writer_general_tree_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.hdf5");
    let mut w = H5Writer::create(&path).unwrap();
    assert_eq!(w.dest(), path);
    w.create_group("params/data").unwrap();
    w.create_group("params/data").unwrap(); // idempotent
    w.create_group("/params/init/").unwrap();
    w.write_i64("dims", &[2], &[20, 30]).unwrap();
    w.write_f64("params/data/decay_time", &[], &[0.4]).unwrap();
    w.write_i64("params/data/fr", &[], &[30]).unwrap();
    w.write_bool("params/init/SC_normalize", &[], &[true]).unwrap();
    w.write_bool("params/init/flags", &[3], &[true, false, true]).unwrap();
    w.write_f64("params/online/max_comp_update_shape", &[], &[f64::INFINITY]).unwrap(); // makes `params/online`
    w.write_f64("estimates/C", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, f64::NAN]).unwrap();
    w.write_f32("estimates/b", &[3, 1], &[0.5, 0.25, -1.0]).unwrap();
    w.write_f64("estimates/shifts", &[0], &[]).unwrap();
    w.write_i32("estimates/A/indptr", &[3], &[0, 2, 5]).unwrap();
    w.write_strings("estimates/bl", &["-5.208319323266344", "0.0", ""]).unwrap();
    w.write_strings("params/temporal/solvers", &["ECOS", "SCS"]).unwrap();
    w.write_none("dview").unwrap();
    w.write_string_scalar("name", "héllo").unwrap();
    w.write_vlen_strings("notes", &["a", "ünïcode", ""]).unwrap();
    w.set_attr_str("params/data", "var_name_hdf5", "mov").unwrap();
    w.set_attr_str("params/data", "caiman_version", "1.12.1").unwrap();
    w.set_attr_ascii("params/init", "method_init", "greedy_roi").unwrap();
    w.set_attr_str("/", "created_by", "caiman-rs").unwrap();
    w.set_attr_f64("estimates/C", "scale", 2.5).unwrap();
    w.set_attr_i64("estimates/C", "count", -3).unwrap();
    w.set_attr_str("estimates/C", "units", "a.u.").unwrap();
    w.set_attr_ascii("estimates/C", "kind", "dense").unwrap();
    w.set_attr_f64("params", "group_number", 1.0).unwrap();
    // Mistakes are typed errors and leave the writer usable.
    assert!(matches!(w.write_f64("dims", &[1], &[1.0]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.write_f64("x", &[2, 2], &[1.0]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.create_group("dims/sub"), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.set_attr_f64("nope", "a", 1.0), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.append_f32("dims", &[1.0]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.write_f64("a//b", &[], &[1.0]), Err(Error::InvalidRequest { .. })));
    w.finish().unwrap();

    let f = H5File::open(&path).unwrap();
    let listing: Vec<(String, String, Vec<usize>)> = f
        .tree()
        .unwrap()
        .into_iter()
        .map(|e| match e.kind {
            EntryKind::Group => (e.path, "group".into(), vec![]),
            EntryKind::Dataset(i) => (e.path, i.dtype.numpy_name(), i.shape),
        })
        .collect();
    let s = |p: &str, k: &str, sh: &[usize]| (p.to_string(), k.to_string(), sh.to_vec());
    assert_eq!(
        listing,
        [
            s("/", "group", &[]),
            s("/dims", "int64", &[2]),
            s("/dview", "|S8", &[]),
            s("/estimates", "group", &[]),
            s("/estimates/A", "group", &[]),
            s("/estimates/A/indptr", "int32", &[3]),
            s("/estimates/C", "float64", &[2, 3]),
            s("/estimates/b", "float32", &[3, 1]),
            s("/estimates/bl", "|S18", &[3]),
            s("/estimates/shifts", "float64", &[0]),
            s("/name", "|S6", &[]),
            s("/notes", "object", &[3]),
            s("/params", "group", &[]),
            s("/params/data", "group", &[]),
            s("/params/data/decay_time", "float64", &[]),
            s("/params/data/fr", "int64", &[]),
            s("/params/init", "group", &[]),
            s("/params/init/SC_normalize", "bool", &[]),
            s("/params/init/flags", "bool", &[3]),
            s("/params/online", "group", &[]),
            s("/params/online/max_comp_update_shape", "float64", &[]),
            s("/params/temporal", "group", &[]),
            s("/params/temporal/solvers", "|S4", &[2]),
        ]
    );
    assert_eq!(f.read_i64("dims").unwrap(), (vec![2], vec![20, 30]));
    assert_eq!(f.read_f64("/params/data/decay_time").unwrap(), (vec![], vec![0.4]));
    assert_eq!(f.read_i64("/params/data/fr").unwrap(), (vec![], vec![30]));
    assert_eq!(f.read_bool("/params/init/SC_normalize").unwrap(), (vec![], vec![true]));
    assert_eq!(f.read_bool("/params/init/flags").unwrap(), (vec![3], vec![true, false, true]));
    assert_eq!(f.read_f64("/params/online/max_comp_update_shape").unwrap().1, [f64::INFINITY]);
    let (shape, c) = f.read_f64("/estimates/C").unwrap();
    assert_eq!(shape, [2, 3]);
    assert_eq!(c[..5], [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(c[5].is_nan());
    assert_eq!(f.read_f32("/estimates/b").unwrap(), (vec![3, 1], vec![0.5, 0.25, -1.0]));
    assert_eq!(f.read_f64("/estimates/shifts").unwrap(), (vec![0], vec![]));
    assert_eq!(f.read_i64("/estimates/A/indptr").unwrap().1, [0, 2, 5]);
    assert_eq!(f.read_strings("/estimates/bl").unwrap(), ["-5.208319323266344", "0.0", ""]);
    assert_eq!(f.read_strings("/params/temporal/solvers").unwrap(), ["ECOS", "SCS"]);
    assert_eq!(f.read_strings("/dview").unwrap(), ["NoneType"]);
    assert_eq!(f.read_strings("/name").unwrap(), ["héllo"]);
    assert_eq!(f.read_strings("/notes").unwrap(), ["a", "ünïcode", ""]);
    assert_eq!(f.attr_string("/params/data", "var_name_hdf5").unwrap(), "mov");
    assert_eq!(f.attr_string("/params/data", "caiman_version").unwrap(), "1.12.1");
    assert_eq!(f.attr_string("/params/init", "method_init").unwrap(), "greedy_roi");
    assert_eq!(f.attr_string("/", "created_by").unwrap(), "caiman-rs");
    assert_eq!(f.attr_f64("/estimates/C", "scale").unwrap(), 2.5);
    assert_eq!(f.attr_f64("/estimates/C", "count").unwrap(), -3.0);
    assert_eq!(f.attr_string("/estimates/C", "units").unwrap(), "a.u.");
    assert_eq!(f.attr_string("/estimates/C", "kind").unwrap(), "dense");
    assert!(matches!(f.attr_string("/estimates/C", "scale"), Err(Error::Unsupported { .. })));
    assert!(matches!(f.attr_f64("/estimates/C", "units"), Err(Error::Unsupported { .. })));
    let mut names = f.attr_names("/estimates/C").unwrap();
    names.sort();
    assert_eq!(names, ["count", "kind", "scale", "units"]);
    // Numeric attributes of groups are written (h5py reads them) but the backend reads group
    // attributes only as strings.
    assert_eq!(f.attr_names("/params").unwrap(), ["group_number"]);
    assert!(matches!(f.attr_f64("/params", "group_number"), Err(Error::Unsupported { .. })));
}

#[test]
fn appendable_dataset_grows_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("append.h5");
    let mut w = H5Writer::create(&path).unwrap();
    w.create_appendable_f32("frames/raw", &[2, 3], 4, 1).unwrap();
    w.create_appendable_f32("plain", &[5], 3, 0).unwrap();
    let vals = values(6 * 11, 3);
    for k in 0..11 {
        w.append_f32("frames/raw", &vals[k * 6..(k + 1) * 6]).unwrap();
    }
    w.append_f32("plain", &[1.0; 10]).unwrap();
    w.append_f32("plain", &[]).unwrap();
    assert!(matches!(w.append_f32("plain", &[1.0; 4]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.create_appendable_f32("bad", &[0, 3], 4, 0), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.create_appendable_f32("bad", &[3], 0, 0), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.create_appendable_f32("bad", &[3], 1, 10), Err(Error::InvalidRequest { .. })));
    w.finish().unwrap();
    let f = H5File::open(&path).unwrap();
    let info = f.dataset_info("/frames/raw").unwrap();
    assert_eq!((info.shape, info.chunks), (vec![11, 2, 3], Some(vec![4, 2, 3])));
    assert_eq!(bits(&f.read_f32("/frames/raw").unwrap().1), bits(&vals));
    assert_eq!(f.read_f32("/plain").unwrap(), (vec![2, 5], vec![1.0; 10]));
}

#[test]
fn strided_reads_of_many_rows() {
    // More than 2^20 elements selected at once: the hyperslab is one block per row.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.h5");
    let shape = Shape::new(200, Dims::planar(128, 128));
    let vals = values(shape.len(), 5);
    write_movie(&path, shape, &vals, &WriteOptions { compression: 1, ..Default::default() }, &[37]);
    let mut src = Hdf5Source::open(&path, None).unwrap();
    let d = shape.dims.pixels();
    let mut buf = vec![0.0; 100 * d];
    src.read_frames_strided(1, 2, &mut buf).unwrap();
    for k in 0..100 {
        let t = 1 + 2 * k;
        assert!(bits(&buf[k * d..(k + 1) * d]) == bits(&vals[t * d..(t + 1) * d]), "frame {t}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(
        t in 1usize..7, d1 in 1usize..6, d2 in 1usize..6, d3 in 1usize..3,
        level in prop::sample::select(vec![0u32, 1, 6]),
        seed in any::<u64>(),
        piece in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.h5");
        let shape = Shape::new(t, Dims::volume(d1, d2, d3));
        let mut vals = values(shape.len(), seed);
        if let Some(v) = vals.first_mut() { *v = f32::from_bits(0x7fc0_1234); } // a NaN payload survives
        let opts = WriteOptions { compression: level, ..Default::default() };
        write_movie(&path, shape, &vals, &opts, &[piece; 8]);
        let mut src = Hdf5Source::open(&path, None).unwrap();
        prop_assert_eq!(src.info().shape, shape);
        prop_assert_eq!(bits(&read_all(&mut src)), bits(&vals));
        let d = shape.dims.pixels();
        let mut frame = vec![0.0; d];
        src.read_frames(t - 1, &mut frame).unwrap();
        prop_assert_eq!(bits(&frame), bits(&vals[(t - 1) * d..]));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn not_hdf5_truncated_directory_and_missing_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.h5");
    std::fs::write(&text, b"this is not an HDF5 file, just some text that is long enough to look at").unwrap();
    assert!(matches!(Hdf5Source::open(&text, None), Err(Error::Malformed { .. })));
    assert!(matches!(H5File::open(&text), Err(Error::Malformed { .. })));
    let empty = dir.path().join("empty.h5");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Hdf5Source::open(&empty, None), Err(Error::Malformed { .. })));
    assert!(matches!(Hdf5Source::open(dir.path(), None), Err(Error::IsDirectory { .. })));
    assert!(matches!(caiman_io::open(dir.path().join("x.h5"), &OpenOptions::default()), Err(Error::Io { .. })));
    assert!(matches!(Hdf5Source::open(&dir.path().join("missing.h5"), None), Err(Error::Io { .. })));

    // Truncated copies of both reference files, at many lengths: every open or read fails with a
    // typed error (or, where the cut spares what is read, succeeds) — never a panic.
    for name in ["mov.h5", "cnmf_toy_result.hdf5"] {
        let full = std::fs::read(data(name)).unwrap();
        let mut lens: Vec<usize> = (0..full.len()).step_by(full.len() / 97 + 1).collect();
        lens.extend([1, 8, 100, 512, full.len() - 1]);
        for len in lens {
            let cut = dir.path().join(format!("cut_{len}_{name}"));
            std::fs::write(&cut, &full[..len]).unwrap();
            let result = std::panic::catch_unwind(|| match Hdf5Source::open(&cut, None) {
                Ok(mut src) => read_frames_all(&mut src).map(|_| ()),
                Err(e) => Err(e),
            });
            let result = result.unwrap_or_else(|_| panic!("panic on {name} cut to {len} bytes"));
            match (name, result) {
                // The movie's values are at the end of the file: every cut loses some.
                ("mov.h5", r) => {
                    assert!(matches!(r, Err(Error::Malformed { .. })), "{name} cut to {len}: {r:?}")
                }
                // The CNMF result has no movie: the cut shows, or the dataset is missing.
                (_, r) => assert!(
                    matches!(r, Err(Error::Malformed { .. } | Error::MissingDataset { .. })),
                    "{name} cut to {len}: {r:?}"
                ),
            }
            let result = std::panic::catch_unwind(|| H5File::open(&cut).and_then(|f| f.tree().map(|_| ())));
            assert!(result.is_ok(), "panic listing {name} cut to {len} bytes");
        }
    }
}

fn read_frames_all(src: &mut Hdf5Source) -> caiman_io::Result<Vec<f32>> {
    let mut buf = vec![0.0; src.info().shape.len()];
    src.read_frames(0, &mut buf)?;
    Ok(buf)
}

#[test]
fn missing_dataset_lists_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.h5");
    let mut w = H5Writer::create(&path).unwrap();
    w.write_f32("a", &[2, 2, 2], &[0.0; 8]).unwrap();
    w.write_f32("b", &[2, 2, 2], &[0.0; 8]).unwrap();
    w.write_f32("__DATA_TYPES__", &[1], &[0.0]).unwrap();
    w.finish().unwrap();
    match Hdf5Source::open(&path, None) {
        Err(Error::MissingDataset { name, found, path: p }) => {
            assert_eq!(p, path);
            assert_eq!(name, "/mov");
            assert_eq!(found, "/__DATA_TYPES__, /a, /b");
        }
        other => panic!("{other:?}"),
    }
    assert!(Hdf5Source::open(&path, Some("b")).is_ok());
    // `__DATA_TYPES__` does not count against the single-dataset rule.
    let path = dir.path().join("one.h5");
    let mut w = H5Writer::create(&path).unwrap();
    w.write_f32("only", &[2, 2, 2], &[1.0; 8]).unwrap();
    w.write_f32("__DATA_TYPES__", &[1], &[0.0]).unwrap();
    w.finish().unwrap();
    assert_eq!(Hdf5Source::open(&path, Some("whatever")).unwrap().dataset(), "/only");
    // A lone group is not a dataset: the name is needed.
    let path = dir.path().join("group.h5");
    let mut w = H5Writer::create(&path).unwrap();
    w.write_f32("g/mov", &[2, 2, 2], &[1.0; 8]).unwrap();
    w.finish().unwrap();
    assert!(matches!(Hdf5Source::open(&path, None), Err(Error::MissingDataset { .. })));
    assert_eq!(Hdf5Source::open(&path, Some("g/mov")).unwrap().dataset(), "/g/mov");
}

#[test]
fn zero_frames_and_wrong_ranks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.h5");
    let mut w = H5Writer::create(&path).unwrap();
    w.write_f32("zero", &[0, 4, 5], &[]).unwrap();
    w.write_f32("flat", &[0, 0, 5], &[]).unwrap();
    w.write_f32("line", &[6], &[0.0; 6]).unwrap();
    w.write_f32("five", &[1, 1, 1, 1, 1], &[0.0]).unwrap();
    w.write_strings("text", &["a", "b"]).unwrap();
    w.create_appendable_f32("never_appended", &[2, 2], 1, 0).unwrap();
    w.finish().unwrap();
    assert!(matches!(Hdf5Source::open(&path, Some("zero")), Err(Error::Empty { .. })));
    assert!(matches!(Hdf5Source::open(&path, Some("flat")), Err(Error::Empty { .. })));
    assert!(matches!(Hdf5Source::open(&path, Some("never_appended")), Err(Error::Empty { .. })));
    assert!(matches!(Hdf5Source::open(&path, Some("line")), Err(Error::Unsupported { .. })));
    assert!(matches!(Hdf5Source::open(&path, Some("five")), Err(Error::Unsupported { .. })));
    assert!(matches!(Hdf5Source::open(&path, Some("text")), Err(Error::Unsupported { .. })));
    let opts = OpenOptions { dataset: Some("zero".into()), ..Default::default() };
    assert!(matches!(caiman_io::open(&path, &opts), Err(Error::Empty { .. })));
    // Writers refuse empty movies too.
    let out = dir.path().join("none.h5");
    let empty = Shape::new(0, Dims::planar(2, 2));
    assert!(matches!(Hdf5Writer::create(&out, empty, &WriteOptions::default()), Err(Error::Empty { .. })));
    assert!(matches!(caiman_io::create(&out, empty, &WriteOptions::default()), Err(Error::Empty { .. })));
    let bad = WriteOptions { compression: 10, ..Default::default() };
    assert!(matches!(
        Hdf5Writer::create(&out, Shape::new(1, Dims::planar(2, 2)), &bad),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        Hdf5Writer::create(dir.path(), Shape::new(1, Dims::planar(2, 2)), &WriteOptions::default()),
        Err(Error::IsDirectory { .. })
    ));
    assert!(!out.exists());
}

#[test]
fn abandoned_or_incomplete_writers_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::new(5, Dims::planar(4, 4));
    let listing = || std::fs::read_dir(dir.path()).unwrap().count();

    // Dropped after some frames.
    let path = dir.path().join("dropped.h5");
    let mut w = Hdf5Writer::create(&path, shape, &WriteOptions::default()).unwrap();
    w.write_frames(&[1.0; 32]).unwrap();
    drop(w);
    assert!(!path.exists());
    assert_eq!(listing(), 0);

    // Finished too early.
    let mut w: Box<dyn MovieWriter> = Box::new(Hdf5Writer::create(&path, shape, &WriteOptions::default()).unwrap());
    w.write_frames(&[1.0; 48]).unwrap();
    assert!(matches!(w.finish(), Err(Error::InvalidRequest { .. })));
    assert!(!path.exists());
    assert_eq!(listing(), 0);

    // Too many frames, or not whole frames.
    let mut w = Hdf5Writer::create(&path, shape, &WriteOptions::default()).unwrap();
    assert!(matches!(w.write_frames(&[1.0; 17]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(w.write_frames(&[1.0; 96]), Err(Error::InvalidRequest { .. })));
    w.write_frames(&[1.0; 80]).unwrap();
    assert!(matches!(w.write_frames(&[1.0; 16]), Err(Error::InvalidRequest { .. })));
    Box::new(w).finish().unwrap();
    assert!(path.exists());
    assert_eq!(listing(), 1);

    // An abandoned general writer; an existing file under the name is left as it was.
    let before = std::fs::read(&path).unwrap();
    let mut w = H5Writer::create(&path).unwrap();
    w.write_f64("x", &[2], &[1.0, 2.0]).unwrap();
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(listing(), 1);
    let missing_dir = dir.path().join("no/such/dir/x.h5");
    assert!(matches!(H5Writer::create(&missing_dir), Err(Error::Io { .. })));
}

#[test]
fn sources_and_writers_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Hdf5Source>();
    is_send::<Hdf5Writer>();
    is_send::<H5File>();
    is_send::<H5Writer>();
    // Reading on another thread works.
    let mut src = Hdf5Source::open(&data("mov.h5"), None).unwrap();
    let values = std::thread::scope(|s| s.spawn(move || read_all(&mut src)).join().unwrap());
    let (_, expected) = read_npy_f32(&data("mov_source.npy"));
    assert_eq!(bits(&values), bits(&expected));
}
