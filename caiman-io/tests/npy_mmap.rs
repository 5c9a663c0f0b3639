//! NPY/NPZ and CaImAn `.mmap` readers and writers against files written by real CaImAn 1.12.1
//! (copied from `shared/reference/io` into `test_data/io`), plus round trips and bad input.

use std::path::{Path, PathBuf};

use caiman_io::mmap::{MmapName, MmapRegionWriter, MmapSource, PendingMmap, PixelRowReader};
use caiman_io::npy::{NpyArray, NpyData, read_npy, read_npz, write_npy, write_npz};
use caiman_io::{Dims, Error, Movie, OpenOptions, Order, Shape, WriteOptions, load, open, save};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/io").join(name)
}

fn f32s(a: &NpyArray) -> Vec<f32> {
    match &a.data {
        NpyData::F32(v) => v.clone(),
        other => panic!("expected f32 data, got {other:?}"),
    }
}

/// The reference movie `mov_source.npy` (7×10×13) as a `Movie`.
fn mov_source() -> Movie {
    let a = read_npy(data("mov_source.npy")).unwrap();
    assert_eq!(a.shape, vec![7, 10, 13]);
    Movie::from_vec(Shape::new(7, Dims::planar(10, 13)), f32s(&a))
}

fn mov3d_source() -> Movie {
    let a = read_npy(data("mov3d_source.npy")).unwrap();
    assert_eq!(a.shape, vec![5, 4, 3, 6]);
    Movie::from_vec(Shape::new(5, Dims::volume(4, 3, 6)), f32s(&a))
}

#[track_caller]
fn assert_bits_eq(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "value {i}: {x} vs {y}");
    }
}

#[test]
fn yr_conversion_matches_caiman_fortran_flattening() {
    let mov = mov_source();
    let yr = read_npy(data("Yr_source.npy")).unwrap();
    assert_eq!(yr.shape, vec![130, 7]);
    let ours = mov.to_yr();
    assert_bits_eq(ours.as_slice().unwrap(), &f32s(&yr));
    let back = Movie::from_yr(ours.view(), mov.dims());
    assert_bits_eq(back.as_slice(), mov.as_slice());

    let mov3 = mov3d_source();
    let yr3 = read_npy(data("Yr3d_source.npy")).unwrap();
    assert_bits_eq(mov3.to_yr().as_slice().unwrap(), &f32s(&yr3));
}

#[test]
fn caiman_npz_reads_bit_exactly() {
    let m = load(data("mov.npz"), &OpenOptions::default()).unwrap();
    assert_eq!(m.shape(), Shape::new(7, Dims::planar(10, 13)));
    assert_bits_eq(m.as_slice(), mov_source().as_slice());
    let src = open(data("mov.npz"), &OpenOptions::default()).unwrap();
    assert_eq!(src.info().fr, Some(30.0));
    let members = read_npz(data("mov.npz")).unwrap();
    let names: Vec<_> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["input_arr", "start_time", "fr", "meta_data", "file_name"]);
    let file_name = &members[4].1;
    assert_eq!(file_name.data, NpyData::Str(vec!["io_movie".into()]));
}

#[test]
fn caiman_mmap_files_read_bit_exactly() {
    let mov = mov_source();
    // movie.save(order=C / F): true byte orders, no offset.
    for name in
        ["movie_save_d1_10_d2_13_d3_1_order_C_frames_7.mmap", "movie_save_d1_10_d2_13_d3_1_order_F_frames_7.mmap"]
    {
        let m = load(data(name), &OpenOptions::default()).unwrap();
        assert_bits_eq(m.as_slice(), mov.as_slice());
    }
    // save_memmap(order=C) adds float32(0.0001).
    let expected = read_npy(data("save_memmap_expected_Yr.npy")).unwrap();
    let src = MmapSource::open(&data("save_memmap_orderC_d1_10_d2_13_d3_1_order_C_frames_7.mmap")).unwrap();
    assert_eq!(src.order(), Order::C);
    assert_bits_eq(src.yr().as_standard_layout().as_slice().unwrap(), &f32s(&expected));
    // The mislabelled CaImAn file (order_F name, C bytes): we trust the name as CaImAn does, so
    // the matrix differs from the expected Yr, exactly as CaImAn's load_memmap misreads it.
    let bad = MmapSource::open(&data("save_memmap_orderF_d1_10_d2_13_d3_1_order_F_frames_7.mmap")).unwrap();
    assert_ne!(bad.yr().as_standard_layout().as_slice().unwrap(), f32s(&expected).as_slice());
    // Its raw bytes are the C order of Yr: reading them as such gives the expected values.
    let raw = std::fs::read(data("save_memmap_orderF_d1_10_d2_13_d3_1_order_F_frames_7.mmap")).unwrap();
    let vals: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_bits_eq(&vals, &f32s(&expected));

    // 3-D: F-order movie.save, C-order save_memmap (+0.0001).
    let mov3 = mov3d_source();
    let m = load(data("movie_save_3d_d1_4_d2_3_d3_6_order_F_frames_5.mmap"), &OpenOptions::default()).unwrap();
    assert_eq!(m.dims(), Dims::volume(4, 3, 6));
    assert_bits_eq(m.as_slice(), mov3.as_slice());
    let m = load(data("save_memmap_3d_d1_4_d2_3_d3_6_order_C_frames_5.mmap"), &OpenOptions::default()).unwrap();
    let plus: Vec<f32> = mov3.as_slice().iter().map(|v| v + 0.0001f32).collect();
    assert_bits_eq(m.as_slice(), &plus);
}

#[test]
fn pixel_row_reader_reads_caiman_rows_and_refuses_bad_requests() {
    // CaImAn's own C-order file: every run of rows equals the mapped Yr.
    let path = data("save_memmap_orderC_d1_10_d2_13_d3_1_order_C_frames_7.mmap");
    let src = MmapSource::open(&path).unwrap();
    let yr = src.yr();
    let rdr = PixelRowReader::open(&path).unwrap();
    assert_eq!((rdr.pixels(), rdr.frames()), (130, 7));
    for (first, n) in [(0, 1), (0, 130), (17, 5), (129, 1), (64, 0)] {
        let mut out = vec![f32::NAN; n * 7];
        rdr.read_rows(first, &mut out).unwrap();
        let want: Vec<f32> = yr.slice(ndarray::s![first..first + n, ..]).iter().copied().collect();
        assert_bits_eq(&out, &want);
    }
    // Rows past the end, a buffer that is not whole rows: typed errors naming the file.
    for (first, len) in [(129, 14), (130, 7), (usize::MAX, 7), (0, 6)] {
        let e = rdr.read_rows(first, &mut vec![0.0; len]).unwrap_err();
        assert!(matches!(e, caiman_io::Error::InvalidRequest { .. }), "{e}");
        assert_eq!(e.path(), path.as_path());
    }
    // F-order files are refused (their rows are not contiguous); so is a file whose size
    // does not match its name.
    let e = PixelRowReader::open(&data("movie_save_d1_10_d2_13_d3_1_order_F_frames_7.mmap")).unwrap_err();
    assert!(matches!(e, caiman_io::Error::Unsupported { .. }), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("s_d1_10_d2_13_d3_1_order_C_frames_7.mmap");
    std::fs::write(&short, vec![0u8; 130 * 7 * 4 - 4]).unwrap();
    let e = PixelRowReader::open(&short).unwrap_err();
    assert!(matches!(e, caiman_io::Error::Malformed { .. }), "{e}");
}

#[test]
fn mmap_name_decoding_matches_caiman_table() {
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("decode_mmap_filename_table.json")).unwrap()).unwrap();
    for case in table.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ours = MmapName::decode(Path::new(name));
        let result = &case["result"];
        let complete =
            result.is_object() && ["d1", "d2", "d3", "order", "frames", "T"].iter().all(|k| result.get(k).is_some());
        if complete {
            let n = ours.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                n.dims,
                Dims::volume(
                    result["d1"].as_u64().unwrap() as usize,
                    result["d2"].as_u64().unwrap() as usize,
                    result["d3"].as_u64().unwrap() as usize,
                ),
                "{name}"
            );
            assert_eq!(n.order.to_string(), result["order"].as_str().unwrap(), "{name}");
            assert_eq!(n.frames as u64, result["frames"].as_u64().unwrap(), "{name}");
            assert_eq!(n.t as u64, result["T"].as_u64().unwrap(), "{name}");
        } else {
            // CaImAn raised, or returned a dict lacking a key load_memmap needs.
            assert!(matches!(ours, Err(Error::Malformed { .. })), "{name}: expected an error, got {ours:?}");
        }
    }
}

#[test]
fn mmap_name_encoding_matches_caiman_examples() {
    assert_eq!(
        MmapName::file_name("Yr", Dims::planar(512, 512), 3000, Order::C),
        "Yr_d1_512_d2_512_d3_1_order_C_frames_3000.mmap"
    );
    assert_eq!(
        MmapName::file_name("mov_rig_", Dims::planar(60, 80), 2000, Order::F),
        "mov_rig__d1_60_d2_80_d3_1_order_F_frames_2000.mmap"
    );
    assert_eq!(
        MmapName::file_name("vol", Dims::volume(12, 14, 16), 300, Order::F),
        "vol_d1_12_d2_14_d3_16_order_F_frames_300.mmap"
    );
    let p = MmapName::path_for(Path::new("/x/out.mmap"), Shape::new(7, Dims::planar(10, 13)), Order::C);
    assert_eq!(p, Path::new("/x/out_d1_10_d2_13_d3_1_order_C_frames_7.mmap"));
    let keep = Path::new("/x/a_d1_10_d2_13_d3_1_order_C_frames_7.mmap");
    assert_eq!(MmapName::path_for(keep, Shape::new(7, Dims::planar(10, 13)), Order::C), keep);
}

#[test]
fn mmap_byte_offsets_follow_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    let yr = mov.to_yr();
    let (d, t_len) = (130, 7);
    for order in [Order::C, Order::F] {
        let opts = WriteOptions { order, ..Default::default() };
        let path = save(dir.path().join("o.mmap"), &mov, &opts).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for (p, t) in [(0, 0), (17, 3), (129, 6), (64, 1)] {
            let off = match order {
                Order::C => 4 * (p * t_len + t),
                Order::F => 4 * (t * d + p),
            };
            let v = f32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
            assert_eq!(v.to_bits(), yr[[p, t]].to_bits(), "order {order} p {p} t {t}");
        }
        // CaImAn's own file with the same order has identical bytes.
        let caiman = std::fs::read(data(&format!("movie_save_d1_10_d2_13_d3_1_order_{order}_frames_7.mmap"))).unwrap();
        assert_eq!(bytes, caiman, "order {order}");
    }
}

#[test]
fn c_order_writer_blocks_of_any_size_give_caimans_bytes() {
    // One frame per block, 3 (7 frames: a partial last block), and the default (one block):
    // every pixel's runs land where CaImAn's C-order file has them.
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    let caiman = std::fs::read(data("movie_save_d1_10_d2_13_d3_1_order_C_frames_7.mmap")).unwrap();
    for block in [0, 130 * 4 * 3, 1 << 30] {
        let w = caiman_io::mmap::MmapWriter::create(&dir.path().join(format!("b{block}.mmap")), mov.shape(), Order::C)
            .unwrap()
            .with_block_bytes(block);
        let mut w: Box<dyn caiman_io::MovieWriter> = Box::new(w);
        // Frames arrive one, then four, then two at a time.
        for r in [0..1, 1..5, 5..7] {
            w.write_frames(&mov.as_slice()[r.start * 130..r.end * 130]).unwrap();
        }
        let path = w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), caiman, "block {block}");
    }
}

#[test]
fn parallel_region_writers_fill_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    let yr = mov.to_yr();
    for order in [Order::C, Order::F] {
        let pending = PendingMmap::create(&dir.path().join("par.mmap"), mov.shape(), order).unwrap();
        std::thread::scope(|s| {
            // frames 0..3 by frames, pixels by rows for the rest of the file in another writer
            let tmp = pending.tmp_path().to_path_buf();
            let shape = mov.shape();
            let m = &mov;
            s.spawn(move || {
                let mut w = MmapRegionWriter::open(&tmp, shape, order).unwrap();
                w.write_frames(0, &m.as_slice()[..3 * 130]).unwrap();
                w.flush().unwrap();
            });
            let tmp = pending.tmp_path().to_path_buf();
            let yr = &yr;
            s.spawn(move || {
                let mut w = MmapRegionWriter::open(&tmp, shape, order).unwrap();
                w.write_frames(3, &m.as_slice()[3 * 130..]).unwrap();
                // rewrite pixel rows 10..20 with their full series (same values): must not conflict
                let rows: Vec<f32> = (10..20).flat_map(|p| yr.row(p).to_vec()).collect();
                w.write_pixels(10, &rows).unwrap();
                w.flush().unwrap();
            });
        });
        assert!(!pending.dest().exists(), "nothing under the final name before commit");
        let out = pending.commit().unwrap();
        let back = load(&out, &OpenOptions::default()).unwrap();
        assert_bits_eq(back.as_slice(), mov.as_slice());
    }
}

#[test]
fn npy_layouts_read_as_caiman() {
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    // C-order T×d1×d2
    let p = dir.path().join("c.npy");
    write_npy(&p, &NpyArray::f32(vec![7, 10, 13], mov.as_slice().to_vec())).unwrap();
    assert_bits_eq(load(&p, &OpenOptions::default()).unwrap().as_slice(), mov.as_slice());
    // 2-D d×T Yr with a frame size hint (C-order bytes of Yr = pixel-major)
    let yr = mov.to_yr();
    let p = dir.path().join("yr.npy");
    write_npy(&p, &NpyArray::f32(vec![130, 7], yr.as_slice().unwrap().to_vec())).unwrap();
    let opts = OpenOptions { npy_dims: Some(Dims::planar(10, 13)), ..Default::default() };
    assert_bits_eq(load(&p, &opts).unwrap().as_slice(), mov.as_slice());
    // without the hint: one 130×7 image (CaImAn's rule)
    let one = load(&p, &OpenOptions::default()).unwrap();
    assert_eq!(one.shape(), Shape::new(1, Dims::planar(130, 7)));
    // wrong hint
    let bad = OpenOptions { npy_dims: Some(Dims::planar(10, 12)), ..Default::default() };
    assert!(matches!(open(&p, &bad), Err(Error::InvalidRequest { .. })));
}

/// Hand-written Fortran-order and big-endian, u16 and version-2/3 headers.
#[test]
fn npy_header_variants() {
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    let write = |name: &str, version: u8, descr: &str, fortran: bool, body: Vec<u8>| {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': (7, 10, 13), }}",
            if fortran { "True" } else { "False" }
        );
        let mut out = b"\x93NUMPY".to_vec();
        out.push(version);
        out.push(0);
        let pre = if version == 1 { 10 } else { 12 };
        let total = (pre + dict.len() + 1).div_ceil(64) * 64;
        if version == 1 {
            out.extend_from_slice(&((total - pre) as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&((total - pre) as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out.extend(body);
        let p = dir.path().join(name);
        std::fs::write(&p, out).unwrap();
        p
    };
    // Fortran order: element (t,i,j) at t + 7*(i + 10*j) = Yr in C order
    let yr = mov.to_yr();
    let body: Vec<u8> = yr.as_slice().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = write("f.npy", 1, "<f4", true, body);
    assert_bits_eq(load(&p, &OpenOptions::default()).unwrap().as_slice(), mov.as_slice());
    // big-endian f4, version 2
    let body: Vec<u8> = mov.as_slice().iter().flat_map(|v| v.to_be_bytes()).collect();
    let p = write("be.npy", 2, ">f4", false, body);
    assert_bits_eq(load(&p, &OpenOptions::default()).unwrap().as_slice(), mov.as_slice());
    // u16, version 3
    let ints: Vec<u16> = (0..910u16).map(|i| i * 71).collect();
    let body: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = write("u16.npy", 3, "<u2", false, body);
    let m = load(&p, &OpenOptions::default()).unwrap();
    assert_eq!(m.as_slice(), ints.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice());
    // lying header: shape promises more data than the file has
    let mut body: Vec<u8> = mov.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    body.truncate(body.len() - 4);
    let p = write("lie.npy", 1, "<f4", false, body);
    let e = open(&p, &OpenOptions::default()).err().unwrap();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("lie.npy"), "{e}");
    // object arrays are refused
    let p = write("obj.npy", 1, "|O", false, vec![0; 8]);
    assert!(matches!(open(&p, &OpenOptions::default()), Err(Error::Unsupported { .. })));
}

#[test]
fn general_arrays_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [
        ("a", NpyArray::f64(vec![2, 3], vec![1.0, -2.5, f64::NAN, 4.0, 5.0, f64::INFINITY])),
        ("b", NpyArray::i32(vec![3], vec![1, -2, 3])),
        ("c", NpyArray::i64(vec![], vec![42])),
        ("d", NpyArray::bool(vec![2], vec![true, false])),
        ("e", NpyArray::strings(vec![2], vec!["héllo".into(), "x".into()])),
        ("f", NpyArray::u8(vec![0], vec![])),
    ];
    let p = dir.path().join("all.npz");
    write_npz(&p, &entries).unwrap();
    let back = read_npz(&p).unwrap();
    assert_eq!(back.len(), entries.len());
    for ((n0, a0), (n1, a1)) in entries.iter().zip(&back) {
        assert_eq!(*n0, n1.as_str());
        assert_eq!(a0.shape, a1.shape);
        match (&a0.data, &a1.data) {
            (NpyData::F64(x), NpyData::F64(y)) => {
                assert!(x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()))
            }
            (x, y) => assert_eq!(x, y),
        }
    }
    let p = dir.path().join("one.npy");
    write_npy(&p, &entries[0].1).unwrap();
    assert_eq!(read_npy(&p).unwrap().shape, vec![2, 3]);
}

#[test]
fn writers_round_trip_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for mov in [mov_source(), mov3d_source()] {
        for (name, order) in [("m.npy", Order::F), ("m.npz", Order::F), ("m.mmap", Order::C), ("m.mmap", Order::F)] {
            let opts = WriteOptions { order, fr: 15.0, ..Default::default() };
            let out = save(dir.path().join(name), &mov, &opts).unwrap();
            let back = load(&out, &OpenOptions::default()).unwrap();
            assert_eq!(back.shape(), mov.shape(), "{name} {order}");
            assert_bits_eq(back.as_slice(), mov.as_slice());
            // random access: last frame first, then strided
            let mut src = open(&out, &OpenOptions::default()).unwrap();
            let d = mov.dims().pixels();
            let t = mov.frames();
            let mut last = vec![0.0; d];
            src.read_frames(t - 1, &mut last).unwrap();
            assert_bits_eq(&last, mov.frame(t - 1));
            let mut every2 = vec![0.0; d * t.div_ceil(2)];
            src.read_frames_strided(0, 2, &mut every2).unwrap();
            for (k, f) in every2.chunks(d).enumerate() {
                assert_bits_eq(f, mov.frame(2 * k));
            }
        }
    }
}

#[test]
fn bad_requests_and_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mov = mov_source();
    let out = save(dir.path().join("x.mmap"), &mov, &WriteOptions::default()).unwrap();
    let mut src = open(&out, &OpenOptions::default()).unwrap();
    let mut buf = vec![0.0; 130 * 2];
    assert!(matches!(src.read_frames(6, &mut buf), Err(Error::InvalidRequest { .. })));
    assert!(matches!(src.read_frames(0, &mut buf[..7]), Err(Error::InvalidRequest { .. })));
    // .mmap whose size disagrees with its name
    let short = dir.path().join("s_d1_10_d2_13_d3_1_order_C_frames_8.mmap");
    std::fs::copy(&out, &short).unwrap();
    let e = open(&short, &OpenOptions::default()).err().unwrap();
    assert!(matches!(e, Error::Malformed { .. }) && e.to_string().contains("s_d1_10"), "{e}");
    // name without the fields
    let plain = dir.path().join("plain.mmap");
    std::fs::write(&plain, [0u8; 16]).unwrap();
    assert!(matches!(open(&plain, &OpenOptions::default()), Err(Error::Malformed { .. })));
    // zero frames in the name
    let zero = dir.path().join("z_d1_10_d2_13_d3_1_order_C_frames_0.mmap");
    std::fs::write(&zero, []).unwrap();
    assert!(matches!(open(&zero, &OpenOptions::default()), Err(Error::Empty { .. })));
    // a directory, an unknown extension, a missing file
    let d = dir.path().join("dir.npy");
    std::fs::create_dir(&d).unwrap();
    assert!(matches!(open(&d, &OpenOptions::default()), Err(Error::IsDirectory { .. })));
    assert!(matches!(open(dir.path().join("a.avi"), &OpenOptions::default()), Err(Error::UnknownFormat { .. })));
    assert!(matches!(open(dir.path().join("nope.npy"), &OpenOptions::default()), Err(Error::Io { .. })));
    // npz without input_arr
    let p = dir.path().join("other.npz");
    write_npz(&p, &[("x", NpyArray::f32(vec![1], vec![1.0]))]).unwrap();
    assert!(matches!(open(&p, &OpenOptions::default()), Err(Error::MissingDataset { .. })));
    // truncated npz / garbage npy
    let p = dir.path().join("trunc.npz");
    let full = std::fs::read(data("mov.npz")).unwrap();
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    assert!(matches!(open(&p, &OpenOptions::default()), Err(Error::Malformed { .. })));
    let p = dir.path().join("garbage.npy");
    std::fs::write(&p, b"not numpy at all").unwrap();
    assert!(matches!(open(&p, &OpenOptions::default()), Err(Error::Malformed { .. })));
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape::new(3, Dims::planar(4, 5));
    for name in ["a.npy", "a.npz", "a.mmap"] {
        let mut w = caiman_io::create(dir.path().join(name), shape, &WriteOptions::default()).unwrap();
        w.write_frames(&[1.0; 20]).unwrap();
        // too many frames
        assert!(matches!(w.write_frames(&[1.0; 60]), Err(Error::InvalidRequest { .. })));
        // finishing an incomplete movie fails, and removes the temporary file
        assert!(matches!(w.finish(), Err(Error::InvalidRequest { .. })));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
    assert!(matches!(
        caiman_io::create(dir.path().join("z.npy"), Shape::new(0, Dims::planar(2, 2)), &WriteOptions::default()),
        Err(Error::Empty { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip_random_shapes(t in 1usize..6, d1 in 1usize..9, d2 in 1usize..9, d3 in 1usize..3, fmt in 0usize..4, seed in any::<u32>()) {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::new(t, Dims::volume(d1, d2, d3));
        let vals: Vec<f32> = (0..shape.len()).map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / 7.0 - 1e6).collect();
        let mov = Movie::from_vec(shape, vals);
        let (name, order) = [("p.npy", Order::F), ("p.npz", Order::F), ("p.mmap", Order::C), ("p.mmap", Order::F)][fmt];
        let out = save(dir.path().join(name), &mov, &WriteOptions { order, ..Default::default() }).unwrap();
        let back = load(&out, &OpenOptions::default()).unwrap();
        prop_assert_eq!(back.shape(), shape);
        prop_assert!(back.as_slice().iter().zip(mov.as_slice()).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn mmap_name_round_trip(base in "[a-z]{1,6}(_[A-Z][a-z0-9]{0,5}){0,2}_?", d1 in 1usize..5000, d2 in 1usize..5000, d3 in 1usize..50, t in 0usize..1_000_000, c in any::<bool>()) {
        let order = if c { Order::C } else { Order::F };
        let name = MmapName::file_name(&base, Dims::volume(d1, d2, d3), t, order);
        let n = MmapName::decode(Path::new(&name)).unwrap();
        prop_assert_eq!(n.dims, Dims::volume(d1, d2, d3));
        prop_assert_eq!(n.order, order);
        prop_assert_eq!(n.frames, t);
        prop_assert_eq!(n.t, t);
    }
}

/// The transpose against the F-order file's own `Yr` view, with blocks and tiles that do not
/// divide the movie, and the border zeroed.
#[test]
fn transpose_f_to_c_copies_every_pixel_row() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2, t) = (7usize, 5usize, 131usize);
    let shape = Shape::new(t, Dims::planar(d1, d2));
    let mut w =
        caiman_io::create(dir.path().join("f.mmap"), shape, &WriteOptions { order: Order::F, ..Default::default() })
            .unwrap();
    let frames: Vec<f32> = (0..t * d1 * d2).map(|i| (i as f32 * 0.37).sin() * 100.0 + i as f32).collect();
    w.write_frames(&frames).unwrap();
    let f_path = w.finish().unwrap();
    for (block, border) in [(4 * t * 3, 0), (4 * t * 35, 1), (1, 2)] {
        let c_path = caiman_io::mmap::transpose_f_to_c(
            &f_path,
            &dir.path().join(format!("c{block}")),
            border,
            block,
            &mut |_, _| {},
        )
        .unwrap();
        let (f, c) = (MmapSource::open(&f_path).unwrap(), MmapSource::open(&c_path).unwrap());
        assert_eq!(c.order(), Order::C);
        let (fy, cy) = (f.yr(), c.yr());
        assert_eq!(fy.dim(), cy.dim());
        for p in 0..d1 * d2 {
            let (i, j) = (p % d1, p / d1);
            let edge = border > 0 && (i < border || j < border || i + border >= d1 || j + border >= d2);
            for s in 0..t {
                let want = if edge { 0.0 } else { fy[[p, s]] };
                assert_eq!(cy[[p, s]].to_bits(), want.to_bits(), "pixel {p} frame {s} block {block}");
            }
        }
    }
    // A C-order file is not a source for the transpose; a truncated file is an error naming it.
    let c_src = dir.path().join(MmapName::file_name("c", Dims::planar(d1, d2), t, Order::C));
    std::fs::write(&c_src, vec![0u8; 4 * d1 * d2 * t]).unwrap();
    assert!(caiman_io::mmap::transpose_f_to_c(&c_src, &dir.path().join("x"), 0, 1 << 20, &mut |_, _| {}).is_err());
    let short = dir.path().join(MmapName::file_name("s", Dims::planar(d1, d2), t, Order::F));
    std::fs::write(&short, vec![0u8; 8]).unwrap();
    let err = caiman_io::mmap::transpose_f_to_c(&short, &dir.path().join("y"), 0, 1 << 20, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("s_d1_"), "{err}");
}

/// Frame-major writes whose regions start and end inside pages: the page-aligned interior goes
/// through `O_DIRECT` (where the file system allows it), the partial pages through the page
/// cache, and neighbouring writers share those partial pages. The file must hold every value,
/// for both paths (`direct()` and `buffered()`).
#[test]
fn frame_major_writes_at_unaligned_offsets_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // 37×29 f32 = 4292 bytes per frame: no frame boundary is page-aligned except frame 0.
    let shape = Shape::new(300, Dims::planar(37, 29));
    let d = shape.dims.pixels();
    let data: Vec<f32> = (0..shape.len()).map(|i| (i as f32 * 0.37).sin() * 1000.0 + i as f32).collect();
    let mov = Movie::from_vec(shape, data);
    for buffered in [false, true] {
        let pending = PendingMmap::create(&dir.path().join(format!("odd{buffered}.mmap")), shape, Order::F).unwrap();
        // two writers, interleaved chunks of 1, 7, 13 … frames
        let bounds: Vec<usize> = (0..)
            .scan(0, |t, i| {
                let s = *t;
                *t = (s + 1 + 6 * (i % 3)).min(300);
                (s < 300).then_some(s)
            })
            .chain([300])
            .collect();
        std::thread::scope(|s| {
            for w_id in 0..2 {
                let tmp = pending.tmp_path().to_path_buf();
                let (bounds, m) = (&bounds, &mov);
                s.spawn(move || {
                    let mut w = MmapRegionWriter::open(&tmp, shape, Order::F).unwrap();
                    w = if buffered { w.buffered() } else { w.direct() };
                    for (_, win) in bounds.windows(2).enumerate().filter(|(i, _)| i % 2 == w_id) {
                        w.write_frames(win[0], &m.as_slice()[win[0] * d..win[1] * d]).unwrap();
                    }
                    w.flush().unwrap();
                });
            }
        });
        let out = pending.commit().unwrap();
        let back = load(&out, &OpenOptions::default()).unwrap();
        assert_bits_eq(back.as_slice(), mov.as_slice());
    }
}
