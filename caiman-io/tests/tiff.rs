//! Integration tests of the TIFF reader and writer (`caiman_io::tiff`): CaImAn's reference file,
//! files written by the `tiff` crate, hand-built files (big-endian, BigTIFF, multi-strip, ImageJ,
//! irregular layouts), writer round trips and interop, and malformed input.
#![allow(clippy::print_stderr, reason = "tests skip with a note when an optional reference file is absent")]

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use caiman_io::tiff::{TiffSource, TiffWriter};
use caiman_io::write::TiffSample;
use caiman_io::{DType, Dims, Error, FrameSource, Movie, MovieWriter, OpenOptions, Shape, WriteOptions};
use proptest::prelude::*;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::encoder::colortype::{self, ColorType};
use tiff::encoder::compression::DeflateLevel;
use tiff::encoder::{Compression, TiffEncoder, TiffKind, TiffValue};
use tiff::tags::Predictor;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/tiff")
}

/// A tiny `.npy` reader: version 1 header, `<f4`, C order.
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(bytes[6], 1, "npy version 1");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let inner = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        inner.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data: Vec<f32> =
        bytes[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn read_all(src: &mut TiffSource) -> Vec<f32> {
    let mut v = vec![0.0; src.frames() * src.dims().pixels()];
    src.read_frames(0, &mut v).unwrap();
    v
}

fn read_frame(src: &mut TiffSource, t: usize) -> Vec<f32> {
    let mut v = vec![0.0; src.dims().pixels()];
    src.read_frames(t, &mut v).unwrap();
    v
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Page `k` of `path` decoded by the `tiff` crate, as f32.
fn crate_page(path: &Path, k: usize) -> Vec<f32> {
    let mut dec = Decoder::new(File::open(path).unwrap()).unwrap().with_limits(Limits::unlimited());
    dec.seek_to_image(k).unwrap();
    match dec.read_image().unwrap() {
        DecodingResult::U8(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::U16(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::U32(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::I8(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::I16(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::I32(v) => v.iter().map(|&x| x as f32).collect(),
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.iter().map(|&x| x as f32).collect(),
        other => panic!("unexpected sample type {other:?}"),
    }
}

/// Number of pages the `tiff` crate finds.
fn crate_page_count(path: &Path) -> usize {
    let mut dec = Decoder::new(File::open(path).unwrap()).unwrap();
    let mut n = 1;
    while dec.more_images() {
        dec.next_image().unwrap();
        n += 1;
    }
    n
}

/// Deterministic test value of frame `t`, pixel `i`, exact in `dtype` and in f32.
fn value(dtype: DType, t: usize, i: usize) -> f64 {
    let x = ((t * 7919 + i * 104_729 + 13) % 1000) as f64;
    match dtype {
        DType::U8 => x % 256.0,
        DType::I8 => x % 256.0 - 128.0,
        DType::U16 => x * 65.0,
        DType::I16 => x * 65.0 - 32_768.0,
        DType::U32 | DType::U64 => x * 16_000.0,
        DType::I32 | DType::I64 => x * 16_000.0 - 8_000_000.0,
        DType::F32 => x * 0.25 - 100.0,
        DType::F64 => x * 0.125 - 50.0,
    }
}

/// `values` as raw samples of `dtype` in the given byte order.
fn raw_bytes(dtype: DType, le: bool, values: &[f64]) -> Vec<u8> {
    macro_rules! enc {
        ($t:ty) => {
            values.iter().flat_map(|&v| if le { (v as $t).to_le_bytes() } else { (v as $t).to_be_bytes() }).collect()
        };
    }
    match dtype {
        DType::U8 => enc!(u8),
        DType::I8 => enc!(i8),
        DType::U16 => enc!(u16),
        DType::I16 => enc!(i16),
        DType::U32 => enc!(u32),
        DType::I32 => enc!(i32),
        DType::U64 => enc!(u64),
        DType::I64 => enc!(i64),
        DType::F32 => enc!(f32),
        DType::F64 => enc!(f64),
    }
}

fn bits_and_format(dtype: DType) -> (u64, u64) {
    let format = match dtype {
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => 1,
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => 2,
        DType::F32 | DType::F64 => 3,
    };
    (8 * dtype.size() as u64, format)
}

/// `v` as `size` bytes in the given byte order.
fn uint(v: u64, size: usize, le: bool) -> Vec<u8> {
    if le { v.to_le_bytes()[..size].to_vec() } else { v.to_be_bytes()[8 - size..].to_vec() }
}

fn patch(bytes: &mut [u8], pos: usize, v: u64, size: usize, le: bool) {
    bytes[pos..pos + size].copy_from_slice(&uint(v, size, le));
}

/// One IFD entry for the hand-built files: tag, type, count, value bytes (file byte order).
type RawEntry = (u16, u16, u64, Vec<u8>);

/// An IFD placed at byte `at`, its out-of-line values right after it. Returns the bytes and the
/// position of the next-IFD pointer within them.
fn ifd_bytes(le: bool, big: bool, entries: &[RawEntry], at: u64, next: u64) -> (Vec<u8>, usize) {
    let (cl, el, ol) = if big { (8, 20, 8) } else { (2, 12, 4) };
    let n = entries.len();
    let ool_start = at as usize + cl + n * el + ol;
    let mut b = uint(n as u64, cl, le);
    let mut ool = Vec::new();
    for (tag, typ, count, value) in entries {
        b.extend(uint(u64::from(*tag), 2, le));
        b.extend(uint(u64::from(*typ), 2, le));
        b.extend(uint(*count, if big { 8 } else { 4 }, le));
        if value.len() <= ol {
            let mut field = value.clone();
            field.resize(ol, 0);
            b.extend(field);
        } else {
            b.extend(uint((ool_start + ool.len()) as u64, ol, le));
            ool.extend_from_slice(value);
            if ool.len() % 2 == 1 {
                ool.push(0);
            }
        }
    }
    let next_pos = b.len();
    b.extend(uint(next, ol, le));
    b.extend(ool);
    (b, next_pos)
}

/// Recipe of a hand-built grayscale TIFF: pixel data of every page first, then the IFDs.
#[derive(Debug, Clone)]
struct Spec {
    le: bool,
    big: bool,
    width: usize,
    height: usize,
    dtype: DType,
    rows_per_strip: usize,
    /// Junk bytes after each strip (strips not contiguous).
    strip_gap: usize,
    description: Option<String>,
    /// Only the first page has an IFD (ImageJ > 4 GB).
    first_ifd_only: bool,
    /// Order in which the IFDs are placed in the file (default: page order).
    ifd_order: Option<Vec<usize>>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            le: true,
            big: false,
            width: 7,
            height: 5,
            dtype: DType::U16,
            rows_per_strip: 5,
            strip_gap: 0,
            description: None,
            first_ifd_only: false,
            ifd_order: None,
        }
    }
}

/// A hand-built file, the f32 values of its pages, and where its IFDs and next pointers are.
struct Built {
    bytes: Vec<u8>,
    pages: Vec<Vec<f32>>,
    ifd_pos: Vec<usize>,
    next_pos: Vec<usize>,
    strip_offsets: Vec<Vec<usize>>,
}

impl Built {
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.bytes).unwrap();
        p
    }
}

fn build(spec: &Spec, n_pages: usize) -> Built {
    let Spec { le, big, width: w, height: h, dtype, rows_per_strip: rps, .. } = *spec;
    let size = dtype.size();
    let ol = if big { 8 } else { 4 };
    let mut f: Vec<u8> = if le { b"II".to_vec() } else { b"MM".to_vec() };
    if big {
        f.extend(uint(43, 2, le));
        f.extend(uint(8, 2, le));
        f.extend(uint(0, 2, le));
        f.extend(uint(0, 8, le));
    } else {
        f.extend(uint(42, 2, le));
        f.extend(uint(0, 4, le));
    }
    let strips = h.div_ceil(rps);
    let mut pages = Vec::new();
    let mut strip_offsets = vec![Vec::new(); n_pages];
    for (t, offsets) in strip_offsets.iter_mut().enumerate() {
        let vals: Vec<f64> = (0..w * h).map(|i| value(dtype, t, i)).collect();
        pages.push(vals.iter().map(|&v| v as f32).collect());
        let raw = raw_bytes(dtype, le, &vals);
        for s in 0..strips {
            offsets.push(f.len());
            f.extend_from_slice(&raw[s * rps * w * size..(h.min((s + 1) * rps)) * w * size]);
            f.extend(std::iter::repeat_n(0xAB, spec.strip_gap));
        }
    }
    if f.len() % 2 == 1 {
        f.push(0);
    }
    let order: Vec<usize> =
        if spec.first_ifd_only { vec![0] } else { spec.ifd_order.clone().unwrap_or_else(|| (0..n_pages).collect()) };
    let (bits, format) = bits_and_format(dtype);
    let (off_type, off_size) = if big { (16, 8) } else { (4, 4) };
    let mut ifd_pos = vec![0; n_pages];
    let mut next_pos = vec![0; n_pages];
    for &p in &order {
        let mut entries: Vec<RawEntry> = vec![
            (256, 4, 1, uint(w as u64, 4, le)),
            (257, 3, 1, uint(h as u64, 2, le)),
            (258, 3, 1, uint(bits, 2, le)),
            (259, 3, 1, uint(1, 2, le)),
            (262, 3, 1, uint(1, 2, le)),
        ];
        if p == 0
            && let Some(d) = &spec.description
        {
            let mut text = d.as_bytes().to_vec();
            text.push(0);
            entries.push((270, 2, text.len() as u64, text));
        }
        let offs: Vec<u8> = strip_offsets[p].iter().flat_map(|&o| uint(o as u64, off_size, le)).collect();
        let counts: Vec<u8> = (0..strips)
            .flat_map(|s| uint(((h.min((s + 1) * rps) - s * rps) * w * size) as u64, off_size, le))
            .collect();
        entries.extend([
            (273, off_type, strips as u64, offs),
            (277, 3, 1, uint(1, 2, le)),
            (278, 4, 1, uint(rps as u64, 4, le)),
            (279, off_type, strips as u64, counts),
            (339, 3, 1, uint(format, 2, le)),
        ]);
        let at = f.len();
        let (b, np) = ifd_bytes(le, big, &entries, at as u64, 0);
        ifd_pos[p] = at;
        next_pos[p] = at + np;
        f.extend(b);
    }
    patch(&mut f, if big { 8 } else { 4 }, ifd_pos[0] as u64, ol, le);
    if !spec.first_ifd_only {
        for p in 0..n_pages.saturating_sub(1) {
            patch(&mut f, next_pos[p], ifd_pos[p + 1] as u64, ol, le);
        }
    }
    Built { bytes: f, pages, ifd_pos, next_pos, strip_offsets }
}

/// Write pages with the `tiff` crate's encoder.
fn encode<K: TiffKind, C: ColorType>(mut enc: TiffEncoder<File, K>, w: u32, h: u32, pages: &[Vec<C::Inner>])
where
    [C::Inner]: TiffValue,
{
    for p in pages {
        enc.write_image::<C>(w, h, p).unwrap();
    }
}

fn encode_file<C: ColorType>(
    path: &Path,
    big: bool,
    compression: Compression,
    predictor: Predictor,
    w: u32,
    h: u32,
    pages: &[Vec<C::Inner>],
) where
    [C::Inner]: TiffValue,
{
    let f = File::create(path).unwrap();
    if big {
        let enc = TiffEncoder::new_big(f).unwrap().with_compression(compression).with_predictor(predictor);
        encode::<_, C>(enc, w, h, pages);
    } else {
        let enc = TiffEncoder::new(f).unwrap().with_compression(compression).with_predictor(predictor);
        encode::<_, C>(enc, w, h, pages);
    }
}

/// Read every frame in several orders (all at once, last first, one by one backwards, strided)
/// and compare with `pages` (one entry per frame).
#[track_caller]
fn check_reads(src: &mut TiffSource, frames: &[Vec<f32>]) {
    let t = frames.len();
    assert_eq!(src.frames(), t);
    assert_eq!(bits(&read_all(src)), bits(&frames.concat()));
    for k in (0..t).rev() {
        assert_eq!(bits(&read_frame(src, k)), bits(&frames[k]), "frame {k}");
    }
    let d = src.dims().pixels();
    if t >= 3 {
        let mut buf = vec![0.0; 2 * d];
        src.read_frames_strided(t - 3, 2, &mut buf).unwrap();
        assert_eq!(bits(&buf), bits(&[frames[t - 3].clone(), frames[t - 1].clone()].concat()));
        src.read_frames(1, &mut buf).unwrap();
        assert_eq!(bits(&buf), bits(&[frames[1].clone(), frames[2].clone()].concat()));
    }
}

fn open(path: &Path) -> TiffSource {
    TiffSource::open(path, None).unwrap_or_else(|e| panic!("{e}"))
}

fn planar_frames(built: &Built) -> Vec<Vec<f32>> {
    built.pages.clone()
}

// ---------------------------------------------------------------------------------------------
// Reference files
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_caiman_reference_tif_bit_exactly() {
    let path = data_dir().join("mov.tif");
    let (shape, expected) = read_npy_f32(&data_dir().join("mov_source.npy"));
    assert_eq!(shape, [7, 10, 13]);
    let mut src = open(&path);
    let info = src.info().clone();
    assert_eq!(info.shape, Shape::new(7, Dims::planar(10, 13)));
    // CaImAn's `save` wrote this file with 64-bit float samples.
    assert_eq!(info.dtype, DType::F64);
    assert_eq!(info.fr, None);
    assert!(info.detail.starts_with("BigTIFF, uncompressed"), "{}", info.detail);
    assert!(info.detail.contains("regular layout"), "{}", info.detail);
    let frames: Vec<Vec<f32>> = expected.chunks(130).map(<[f32]>::to_vec).collect();
    check_reads(&mut src, &frames);

    // Through the format dispatch too.
    let movie = caiman_io::load(&path, &OpenOptions::default()).unwrap();
    assert_eq!(bits(movie.as_slice()), bits(&expected));
}

#[test]
fn reads_motion_movie_like_the_tiff_crate() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/motion/motion_movie.tif"));
    if !path.exists() {
        eprintln!("skipping: {} is absent", path.display());
        return;
    }
    let mut src = open(path);
    let info = src.info().clone();
    assert_eq!(info.shape, Shape::new(300, Dims::planar(128, 128)));
    assert_eq!(info.dtype, DType::F32);
    assert!(info.detail.contains("deflate"), "{}", info.detail);
    assert_eq!(bits(&read_frame(&mut src, 0)), bits(&crate_page(path, 0)));
    assert_eq!(bits(&read_frame(&mut src, 299)), bits(&crate_page(path, 299)));
    let mut buf = vec![0.0; 3 * 128 * 128];
    src.read_frames_strided(10, 97, &mut buf).unwrap();
    for (i, t) in [10, 107, 204].into_iter().enumerate() {
        assert_eq!(bits(&buf[i * 128 * 128..(i + 1) * 128 * 128]), bits(&read_frame(&mut src, t)));
    }
    // Integer-valued photon counts.
    assert!(buf.iter().all(|v| v.fract() == 0.0 && *v >= 0.0));
}

// ---------------------------------------------------------------------------------------------
// Files written by the `tiff` crate (compressed pages go through its decoder)
// ---------------------------------------------------------------------------------------------

/// Write 5 pages of 7×5 with the encoder, read them back in several orders.
fn crate_round_trip<C: ColorType>(
    dtype: DType,
    compression: Compression,
    predictor: Predictor,
    big: bool,
    conv: impl Fn(f64) -> C::Inner,
) where
    [C::Inner]: TiffValue,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crate.tif");
    let (w, h, t) = (7u32, 5u32, 5usize);
    let values: Vec<Vec<f64>> = (0..t).map(|k| (0..35).map(|i| value(dtype, k, i)).collect()).collect();
    let pages: Vec<Vec<C::Inner>> = values.iter().map(|p| p.iter().map(|&v| conv(v)).collect()).collect();
    encode_file::<C>(&path, big, compression, predictor, w, h, &pages);
    let mut src = open(&path);
    assert_eq!(src.info().shape, Shape::new(t, Dims::planar(5, 7)));
    assert_eq!(src.info().dtype, dtype);
    let frames: Vec<Vec<f32>> = values.iter().map(|p| p.iter().map(|&v| v as f32).collect()).collect();
    check_reads(&mut src, &frames);
}

#[test]
fn reads_tiff_crate_files_of_every_sample_type_and_compression() {
    let deflate = || Compression::Deflate(DeflateLevel::Balanced);
    crate_round_trip::<colortype::Gray8>(DType::U8, Compression::Lzw, Predictor::None, false, |v| v as u8);
    crate_round_trip::<colortype::GrayI8>(DType::I8, deflate(), Predictor::None, false, |v| v as i8);
    crate_round_trip::<colortype::Gray16>(DType::U16, deflate(), Predictor::None, false, |v| v as u16);
    crate_round_trip::<colortype::Gray16>(DType::U16, Compression::Lzw, Predictor::Horizontal, false, |v| v as u16);
    crate_round_trip::<colortype::GrayI16>(DType::I16, Compression::Packbits, Predictor::None, false, |v| v as i16);
    crate_round_trip::<colortype::Gray32>(DType::U32, Compression::Lzw, Predictor::None, true, |v| v as u32);
    crate_round_trip::<colortype::GrayI32>(DType::I32, Compression::Uncompressed, Predictor::None, false, |v| v as i32);
    crate_round_trip::<colortype::Gray32Float>(DType::F32, Compression::Uncompressed, Predictor::None, false, |v| {
        v as f32
    });
    crate_round_trip::<colortype::Gray32Float>(DType::F32, deflate(), Predictor::None, true, |v| v as f32);
    crate_round_trip::<colortype::GrayI16>(DType::I16, deflate(), Predictor::Horizontal, true, |v| v as i16);
    crate_round_trip::<colortype::Gray64Float>(DType::F64, deflate(), Predictor::None, false, |v| v);
    crate_round_trip::<colortype::Gray64Float>(DType::F64, Compression::Uncompressed, Predictor::None, true, |v| v);
}

// ---------------------------------------------------------------------------------------------
// Hand-built files: byte orders, strips, layouts, ImageJ, volumes
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_big_endian_and_bigtiff_with_scattered_strips() {
    let dir = tempfile::tempdir().unwrap();
    for le in [false, true] {
        for big in [false, true] {
            for dtype in [DType::U8, DType::I16, DType::U16, DType::I32, DType::U32, DType::F32, DType::F64] {
                let spec = Spec { le, big, dtype, rows_per_strip: 2, strip_gap: 3, ..Spec::default() };
                let built = build(&spec, 4);
                let path = built.write(dir.path(), "hand.tif");
                let mut src = open(&path);
                assert_eq!(src.info().dtype, dtype);
                assert_eq!(src.info().shape, Shape::new(4, Dims::planar(5, 7)));
                assert_eq!(src.info().detail.contains("big-endian"), !le, "{}", src.info().detail);
                assert_eq!(src.info().detail.starts_with("BigTIFF"), big);
                check_reads(&mut src, &planar_frames(&built));
                // The tiff crate agrees (it reads big-endian files too).
                assert_eq!(bits(&crate_page(&path, 3)), bits(&built.pages[3]), "{spec:?}");
            }
        }
    }
}

#[test]
fn regular_layout_is_located_arithmetically() {
    let dir = tempfile::tempdir().unwrap();
    for (le, big) in [(true, true), (false, false)] {
        let spec = Spec {
            le,
            big,
            dtype: DType::F32,
            description: Some(r#"{"shape": [9, 5, 7], "fps": 12.5}"#.into()),
            ..Spec::default()
        };
        let built = build(&spec, 9);
        let path = built.write(dir.path(), "regular.tif");
        let mut src = open(&path);
        assert!(src.info().detail.contains("regular layout"), "{}", src.info().detail);
        assert!(src.info().detail.contains("tifffile shape"), "{}", src.info().detail);
        assert_eq!(src.info().fr, Some(12.5));
        // Last frame first: checked against its own IFD.
        assert_eq!(bits(&read_frame(&mut src, 8)), bits(&built.pages[8]));
        assert_eq!(bits(&read_frame(&mut src, 5)), bits(&built.pages[5]));
        check_reads(&mut src, &planar_frames(&built));
    }
}

#[test]
fn irregular_layouts_fall_back_to_the_ifd_chain() {
    let dir = tempfile::tempdir().unwrap();
    let desc = Some(r#"{"shape": [8, 5, 7]}"#.to_string());
    // Pages 0, 1, 2 and 7 are where a regular layout puts them, pages 4 and 5 are swapped: the
    // prediction only fails when page 4 or 5 is first read.
    let spec = Spec { description: desc.clone(), ifd_order: Some(vec![0, 1, 2, 3, 5, 4, 6, 7]), ..Spec::default() };
    let built = build(&spec, 8);
    let path = built.write(dir.path(), "swapped.tif");
    let mut src = open(&path);
    assert!(src.info().detail.contains("regular layout"), "{}", src.info().detail);
    assert_eq!(bits(&read_frame(&mut src, 5)), bits(&built.pages[5]));
    check_reads(&mut src, &planar_frames(&built));

    // Irregular already at open (the last page is elsewhere): the chain is walked.
    let spec = Spec { description: desc, ifd_order: Some(vec![0, 1, 2, 3, 4, 5, 7, 6]), ..Spec::default() };
    let built = build(&spec, 8);
    let path = built.write(dir.path(), "irregular.tif");
    let mut src = open(&path);
    assert!(!src.info().detail.contains("regular"), "{}", src.info().detail);
    check_reads(&mut src, &planar_frames(&built));

    // Without a description the chain is always walked.
    let built = build(&Spec::default(), 6);
    let path = built.write(dir.path(), "plain.tif");
    let mut src = open(&path);
    assert_eq!(src.info().detail, "TIFF, uncompressed, 1 IFD/page");
    check_reads(&mut src, &planar_frames(&built));
}

#[test]
fn description_may_name_fewer_pages_than_the_file_has() {
    // tifffile's first series only: the pages after it belong to other series.
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec { description: Some(r#"{"shape": [4, 5, 7]}"#.into()), ..Spec::default() };
    let built = build(&spec, 6);
    let path = built.write(dir.path(), "series.tif");
    let mut src = open(&path);
    check_reads(&mut src, &built.pages[..4]);
}

#[test]
fn reads_imagej_contiguous_files() {
    let dir = tempfile::tempdir().unwrap();
    // ImageJ over 4 GB: one IFD, `images=N`, pixel data contiguous. ImageJ writes big-endian.
    let spec = Spec {
        le: false,
        dtype: DType::U16,
        description: Some("ImageJ=1.54f\nimages=6\nframes=6\nfinterval=0.05\nloop=false\n".into()),
        first_ifd_only: true,
        ..Spec::default()
    };
    let built = build(&spec, 6);
    let path = built.write(dir.path(), "imagej.tif");
    let mut src = open(&path);
    assert_eq!(src.info().detail, "TIFF, big-endian, uncompressed, ImageJ contiguous");
    assert_eq!(src.info().fr, Some(20.0));
    check_reads(&mut src, &planar_frames(&built));
    // The tiff crate sees only one page.
    assert_eq!(crate_page_count(&path), 1);

    // Under 4 GB every page has an IFD; the data is still contiguous.
    let spec = Spec { first_ifd_only: false, description: Some("ImageJ=1.54f\nimages=6\nfps=7.5\n".into()), ..spec };
    let built = build(&spec, 6);
    let path = built.write(dir.path(), "imagej_small.tif");
    let mut src = open(&path);
    assert!(src.info().detail.ends_with("ImageJ contiguous"), "{}", src.info().detail);
    assert_eq!(src.info().fr, Some(7.5));
    check_reads(&mut src, &planar_frames(&built));
}

#[test]
fn imagej_hyperstacks() {
    let dir = tempfile::tempdir().unwrap();
    let hyper = |desc: &str| Spec {
        description: Some(desc.into()),
        first_ifd_only: true,
        dtype: DType::F32,
        ..Spec::default()
    };
    let built = build(&hyper("ImageJ=1.54f\nimages=6\nslices=3\nframes=2\nhyperstack=true\n"), 6);
    let path = built.write(dir.path(), "zstack.tif");
    let mut src = open(&path);
    assert_eq!(src.info().shape, Shape::new(2, Dims::volume(3, 5, 7)));
    let volumes: Vec<Vec<f32>> = built.pages.chunks(3).map(<[Vec<f32>]>::concat).collect();
    assert_eq!(bits(&read_all(&mut src)), bits(&volumes.concat()));
    assert_eq!(bits(&read_frame(&mut src, 1)), bits(&volumes[1]));

    let built = build(&hyper("ImageJ=1.54f\nimages=6\nchannels=2\nframes=3\nhyperstack=true\n"), 6);
    let path = built.write(dir.path(), "channels.tif");
    let err = TiffSource::open(&path, None).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");

    // Description promising more images than the file holds.
    let built = build(&hyper("ImageJ=1.54f\nimages=60\n"), 6);
    let path = built.write(dir.path(), "short.tif");
    let err = TiffSource::open(&path, None).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("short.tif"), "{err}");
}

#[test]
fn volumes_from_planes_or_a_4d_shape() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(&Spec::default(), 6);
    let path = built.write(dir.path(), "pages.tif");
    let mut src = TiffSource::open(&path, Some(3)).unwrap();
    assert_eq!(src.info().shape, Shape::new(2, Dims::volume(3, 5, 7)));
    assert!(src.info().detail.contains("volumes of 3 pages"), "{}", src.info().detail);
    let volumes: Vec<Vec<f32>> = built.pages.chunks(3).map(<[Vec<f32>]>::concat).collect();
    check_reads(&mut src, &volumes);
    for planes in [0, 4] {
        let err = TiffSource::open(&path, Some(planes)).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    }

    let spec = Spec { description: Some(r#"{"shape": [3, 2, 5, 7]}"#.into()), ..Spec::default() };
    let built = build(&spec, 6);
    let path = built.write(dir.path(), "vol.tif");
    let mut src = open(&path);
    assert_eq!(src.info().shape, Shape::new(3, Dims::volume(2, 5, 7)));
    let volumes: Vec<Vec<f32>> = built.pages.chunks(2).map(<[Vec<f32>]>::concat).collect();
    check_reads(&mut src, &volumes);
    assert!(TiffSource::open(&path, Some(2)).is_ok());
    let err = TiffSource::open(&path, Some(3)).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    // Through `open` with `tiff_planes`.
    let opts = OpenOptions { tiff_planes: Some(2), ..OpenOptions::default() };
    assert_eq!(caiman_io::open(&path, &opts).unwrap().dims(), Dims::volume(2, 5, 7));
}

#[test]
fn shape_with_a_samples_axis_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec { description: Some(r#"{"shape": [3, 5, 7, 3]}"#.into()), ..Spec::default() };
    let path = build(&spec, 3).write(dir.path(), "rgb_shape.tif");
    let err = TiffSource::open(&path, None).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("rgb_shape.tif"), "{err}");

    // Multi-sample pages.
    let path = dir.path().join("rgb.tif");
    let mut enc = TiffEncoder::new(File::create(&path).unwrap()).unwrap();
    enc.write_image::<colortype::RGB8>(4, 3, &[7u8; 36]).unwrap();
    let err = TiffSource::open(&path, None).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

/// Open must take milliseconds and read only a few IFDs, whatever the file size: a sparse
/// 20 GiB BigTIFF in tifffile's layout (pixels first, then 20 480 IFDs).
#[test]
fn last_frame_of_a_20_gb_file_is_found_without_walking() {
    let (h, w, pages) = (512u64, 512u64, 20_480u64);
    let page_bytes = h * w * 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.tif");
    let entries = |strip: u64, desc: Option<(u64, Vec<u8>)>| {
        let mut e: Vec<RawEntry> = vec![
            (256, 4, 1, uint(w, 4, true)),
            (257, 4, 1, uint(h, 4, true)),
            (258, 3, 1, uint(32, 2, true)),
            (259, 3, 1, uint(1, 2, true)),
            (262, 3, 1, uint(1, 2, true)),
        ];
        if let Some((n, text)) = desc {
            e.push((270, 2, n, text));
        }
        e.extend([
            (273, 16, 1, uint(strip, 8, true)),
            (277, 3, 1, uint(1, 2, true)),
            (278, 4, 1, uint(h, 4, true)),
            (279, 16, 1, uint(page_bytes, 8, true)),
            (339, 3, 1, uint(3, 2, true)),
        ]);
        e
    };
    let mut text = format!(r#"{{"shape": [{pages}, {h}, {w}]}}"#).into_bytes();
    text.push(0);
    let data_start = 1024;
    let tail = data_start + pages * page_bytes;
    let ifd_len = ifd_bytes(true, true, &entries(0, None), 0, 0).0.len() as u64;
    let mut f = BufWriter::new(File::create(&path).unwrap());
    let mut head = b"II".to_vec();
    head.extend(uint(43, 2, true));
    head.extend(uint(8, 2, true));
    head.extend(uint(0, 2, true));
    head.extend(uint(16, 8, true));
    head.extend(ifd_bytes(true, true, &entries(data_start, Some((text.len() as u64, text))), 16, tail).0);
    assert!(head.len() as u64 <= data_start);
    f.write_all(&head).unwrap();
    // Last page: a recognisable ramp; the others stay sparse zeros.
    let last: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
    f.seek(SeekFrom::Start(data_start + (pages - 1) * page_bytes)).unwrap();
    f.write_all(&last.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    for p in 1..pages {
        let at = tail + (p - 1) * ifd_len;
        let next = if p + 1 < pages { at + ifd_len } else { 0 };
        f.write_all(&ifd_bytes(true, true, &entries(data_start + p * page_bytes, None), at, next).0).unwrap();
    }
    drop(f);
    assert!(std::fs::metadata(&path).unwrap().len() > 20 << 30);

    // Speed is a benchmark matter (caiman-bench io_last_frame); here the "regular layout" detail
    // proves the reader located the last page arithmetically instead of walking 20 480 IFDs.
    let mut src = open(&path);
    let mut frame = vec![0.0; (h * w) as usize];
    src.read_frames(pages as usize - 1, &mut frame).unwrap();
    assert!(src.info().detail.contains("regular layout"), "{}", src.info().detail);
    assert_eq!(src.frames(), pages as usize);
    assert_eq!(bits(&frame), bits(&last));
    src.read_frames(pages as usize / 2, &mut frame).unwrap();
    assert!(frame.iter().all(|&v| v == 0.0));
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

fn random_movie(shape: Shape, seed: u64) -> Movie {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let values = (0..shape.len())
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 200.0
        })
        .collect();
    Movie::from_vec(shape, values)
}

fn write_movie(path: &Path, movie: &Movie, opts: &WriteOptions) -> PathBuf {
    let mut w = TiffWriter::create(path, movie.shape(), opts).unwrap();
    // Stream in uneven batches.
    let d = movie.dims().pixels();
    let mut t = 0;
    for batch in [1, 2, 3].into_iter().cycle() {
        if t == movie.frames() {
            break;
        }
        let n = batch.min(movie.frames() - t);
        w.write_frames(&movie.as_slice()[t * d..(t + n) * d]).unwrap();
        t += n;
    }
    Box::new(w).finish().unwrap()
}

#[test]
fn writer_round_trips_f32_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.tif");
    let mut movie = random_movie(Shape::new(5, Dims::planar(6, 9)), 1);
    let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MIN_POSITIVE / 4.0, f32::MAX];
    movie.as_slice_mut()[..special.len()].copy_from_slice(&special);
    let opts = WriteOptions { fr: 15.0, ..WriteOptions::default() };
    assert_eq!(write_movie(&path, &movie, &opts), path);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"II*\0", "small files are classic TIFF");
    let mut src = open(&path);
    let info = src.info().clone();
    assert_eq!(info.shape, movie.shape());
    assert_eq!(info.dtype, DType::F32);
    assert_eq!(info.fr, Some(15.0));
    assert_eq!(info.detail, "TIFF, uncompressed, 1 IFD/page, regular layout, tifffile shape");
    let frames: Vec<Vec<f32>> = (0..5).map(|t| movie.frame(t).to_vec()).collect();
    check_reads(&mut src, &frames);

    // Through `save` / `load`.
    let path2 = dir.path().join("saved.tiff");
    caiman_io::save(&path2, &movie, &WriteOptions::default()).unwrap();
    let back = caiman_io::load(&path2, &OpenOptions::default()).unwrap();
    assert_eq!(bits(back.as_slice()), bits(movie.as_slice()));
    assert_eq!(back.meta.fr, 30.0);
}

#[test]
fn writer_u16_rounds_and_clamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u16.tif");
    let values = vec![-5.0, 0.4, 0.5, 1.5, 2.5, 3.7, 65_534.6, 70_000.0, f32::NAN, 1234.0];
    let movie = Movie::from_vec(Shape::new(2, Dims::planar(1, 5)), values);
    let opts = WriteOptions { tiff_sample: TiffSample::U16, ..WriteOptions::default() };
    write_movie(&path, &movie, &opts);
    let mut src = open(&path);
    assert_eq!(src.info().dtype, DType::U16);
    assert_eq!(read_all(&mut src), [0.0, 0.0, 0.0, 2.0, 2.0, 4.0, 65_535.0, 65_535.0, 0.0, 1234.0]);
    assert_eq!(crate_page(&path, 1), [4.0, 65_535.0, 65_535.0, 0.0, 1234.0]);

    // Every quarter step over the whole range: ties go to even, as numpy rounds.
    let values: Vec<f32> = (-40..262_200).map(|k| k as f32 * 0.25).collect();
    let n = values.len();
    let movie = Movie::from_vec(Shape::new(1, Dims::planar(1, n)), values.clone());
    write_movie(&path, &movie, &opts);
    let expected: Vec<f32> = values.iter().map(|v| v.round_ties_even().clamp(0.0, 65_535.0)).collect();
    assert_eq!(read_all(&mut open(&path)), expected);
}

#[test]
fn writer_forced_bigtiff_and_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.btf");
    let movie = random_movie(Shape::new(4, Dims::planar(3, 5)), 2);
    write_movie(&path, &movie, &WriteOptions { bigtiff: Some(true), ..WriteOptions::default() });
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"II+\0");
    let mut src = open(&path);
    assert!(src.info().detail.starts_with("BigTIFF"), "{}", src.info().detail);
    assert_eq!(bits(&read_all(&mut src)), bits(movie.as_slice()));

    let path = dir.path().join("vol.tif");
    let movie = random_movie(Shape::new(3, Dims::volume(4, 5, 6)), 3);
    write_movie(&path, &movie, &WriteOptions::default());
    let mut src = open(&path);
    assert_eq!(src.info().shape, movie.shape());
    assert!(src.info().detail.contains("volumes of 4 pages"), "{}", src.info().detail);
    let frames: Vec<Vec<f32>> = (0..3).map(|t| movie.frame(t).to_vec()).collect();
    check_reads(&mut src, &frames);
    // Page 4·t + i is plane i of volume t, a 5×6 image.
    assert_eq!(crate_page_count(&path), 12);
    assert_eq!(bits(&crate_page(&path, 6)), bits(&movie.frame(1)[2 * 30..3 * 30]));

    // A single volume stays a volume, and so do volumes of one plane.
    for shape in [Shape::new(1, Dims::volume(3, 2, 4)), Shape::new(2, Dims::volume(1, 2, 4))] {
        let path = dir.path().join("vol1.tif");
        let movie = random_movie(shape, 4);
        write_movie(&path, &movie, &WriteOptions::default());
        let mut src = open(&path);
        assert_eq!(src.info().shape, shape);
        assert_eq!(bits(&read_all(&mut src)), bits(movie.as_slice()));
    }
}

#[test]
fn written_files_are_read_by_the_tiff_crate() {
    let dir = tempfile::tempdir().unwrap();
    for (sample, big) in [(TiffSample::F32, Some(false)), (TiffSample::F32, Some(true)), (TiffSample::U16, None)] {
        let path = dir.path().join("interop.tif");
        let movie = random_movie(Shape::new(3, Dims::planar(4, 6)), 5).into_array4().mapv(|v| v.abs().round());
        let movie = Movie::from_array4(movie);
        write_movie(&path, &movie, &WriteOptions { tiff_sample: sample, bigtiff: big, ..WriteOptions::default() });
        assert_eq!(crate_page_count(&path), 3);
        for t in 0..3 {
            assert_eq!(bits(&crate_page(&path, t)), bits(movie.frame(t)), "{sample:?} {big:?} page {t}");
        }
        let mut dec = Decoder::new(File::open(&path).unwrap()).unwrap();
        let desc = dec.get_tag_ascii_string(tiff::tags::Tag::ImageDescription).unwrap();
        assert_eq!(desc, r#"{"shape": [3, 4, 6], "fps": 30.0}"#);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn writer_round_trip_random_shapes(
        frames in 1usize..5,
        d1 in 1usize..7,
        d2 in 1usize..7,
        d3 in 1usize..3,
        bigtiff in prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prop.tif");
        let shape = Shape::new(frames, Dims::volume(d1, d2, d3));
        let movie = random_movie(shape, seed);
        write_movie(&path, &movie, &WriteOptions { bigtiff, ..WriteOptions::default() });
        let mut src = open(&path);
        prop_assert_eq!(src.info().shape, shape);
        prop_assert_eq!(bits(&read_all(&mut src)), bits(movie.as_slice()));
        let last = read_frame(&mut src, frames - 1);
        prop_assert_eq!(bits(&last), bits(movie.frame(frames - 1)));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn open_err(path: &Path) -> Error {
    match TiffSource::open(path, None) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            assert_eq!(e.path(), path, "{e}");
            e
        }
    }
}

/// Open and read everything; the first error, if any.
fn try_read(path: &Path) -> caiman_io::Result<Vec<f32>> {
    let mut src = TiffSource::open(path, None)?;
    let mut v = vec![0.0; src.frames() * src.dims().pixels()];
    src.read_frames(0, &mut v)?;
    Ok(v)
}

#[test]
fn rejects_what_is_not_a_tiff() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("text.tif");
    std::fs::write(&p, "this is not a TIFF file at all").unwrap();
    assert!(matches!(open_err(&p), Error::Malformed { .. }));
    std::fs::write(&p, "II*").unwrap();
    assert!(matches!(open_err(&p), Error::Malformed { .. }));
    std::fs::write(&p, b"II\x2b\x00\x08\x00\x00\x00").unwrap();
    assert!(matches!(open_err(&p), Error::Malformed { .. }), "truncated BigTIFF header");
    assert!(matches!(open_err(dir.path()), Error::IsDirectory { .. }));
    assert!(matches!(open_err(&dir.path().join("missing.tif")), Error::Io { .. }));
    // A TIFF with no image.
    std::fs::write(&p, b"II\x2a\x00\x00\x00\x00\x00").unwrap();
    assert!(matches!(open_err(&p), Error::Empty { .. }));
}

#[test]
fn rejects_bogus_ifd_offsets_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(&Spec::default(), 4);
    let le = true;

    let mut bytes = built.bytes.clone();
    patch(&mut bytes, 4, 1 << 30, 4, le);
    let p = dir.path().join("first.tif");
    std::fs::write(&p, &bytes).unwrap();
    let err = open_err(&p);
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    let mut bytes = built.bytes.clone();
    let beyond = bytes.len() as u64 + 100;
    patch(&mut bytes, built.next_pos[1], beyond, 4, le);
    let p = dir.path().join("next.tif");
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(open_err(&p), Error::Malformed { .. }));

    // Page 2 points back to page 1, with and without a page count in the description.
    for description in [None, Some(r#"{"shape": [9, 5, 7]}"#.to_string())] {
        let built = build(&Spec { description, ..Spec::default() }, 4);
        let mut bytes = built.bytes.clone();
        patch(&mut bytes, built.next_pos[2], built.ifd_pos[1] as u64, 4, le);
        let p = dir.path().join("loop.tif");
        std::fs::write(&p, &bytes).unwrap();
        let err = open_err(&p);
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }

    // An IFD declaring an absurd entry count.
    let mut bytes = built.bytes.clone();
    patch(&mut bytes, built.ifd_pos[0], 60_000, 2, le);
    let p = dir.path().join("count.tif");
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(open_err(&p), Error::Malformed { .. }));
}

#[test]
fn rejects_strips_outside_the_file_and_inconsistent_pages() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(&Spec::default(), 4);
    // Single-strip pages: the offset is inline in the StripOffsets entry of page 2.
    let ifd = built.ifd_pos[2];
    let entry = (0..10).map(|i| ifd + 2 + 12 * i).find(|&e| built.bytes[e..e + 2] == 273u16.to_le_bytes()).unwrap();
    let mut bytes = built.bytes.clone();
    assert_eq!(
        u32::from_le_bytes(bytes[entry + 8..entry + 12].try_into().unwrap()) as usize,
        built.strip_offsets[2][0]
    );
    let near_end = bytes.len() as u64 - 10;
    patch(&mut bytes, entry + 8, near_end, 4, true);
    let p = dir.path().join("strip.tif");
    std::fs::write(&p, &bytes).unwrap();
    let mut src = open(&p);
    assert_eq!(read_frame(&mut src, 1), built.pages[1]);
    let mut buf = vec![0.0; 35];
    let err = src.read_frames(2, &mut buf).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("strip"), "{err}");

    // Pages of different sizes.
    let p = dir.path().join("sizes.tif");
    let mut enc = TiffEncoder::new(File::create(&p).unwrap()).unwrap();
    enc.write_image::<colortype::Gray16>(4, 5, &[1u16; 20]).unwrap();
    enc.write_image::<colortype::Gray16>(6, 5, &[2u16; 30]).unwrap();
    drop(enc);
    let mut src = open(&p);
    assert_eq!(read_frame(&mut src, 0), [1.0; 20]);
    let err = src.read_frames(1, &mut [0.0; 20]).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    // Out-of-range requests.
    let err = src.read_frames(2, &mut [0.0; 20]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    let err = src.read_frames(0, &mut [0.0; 21]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
}

#[test]
fn truncated_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("w.tif");
    write_movie(&written, &random_movie(Shape::new(3, Dims::planar(4, 5)), 6), &WriteOptions::default());
    let compressed = dir.path().join("c.tif");
    let pages: Vec<Vec<u16>> = (0..3).map(|t| (0..35).map(|i| value(DType::U16, t, i) as u16).collect()).collect();
    encode_file::<colortype::Gray16>(&compressed, false, Compression::Lzw, Predictor::None, 7, 5, &pages);
    let hand =
        build(&Spec { le: false, big: true, rows_per_strip: 2, ..Spec::default() }, 3).write(dir.path(), "h.tif");
    let cut = dir.path().join("cut.tif");
    for full in [written, compressed, hand] {
        let bytes = std::fs::read(&full).unwrap();
        assert!(try_read(&full).is_ok());
        for len in 0..bytes.len() {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            match try_read(&cut) {
                Err(Error::Malformed { .. } | Error::Empty { .. }) => {}
                other => panic!("{} cut to {len} bytes: {other:?}", full.display()),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Corrupted bytes anywhere: an error or some values, never a panic or a hang.
    #[test]
    fn corrupted_files_never_panic(
        le in any::<bool>(),
        big in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let spec = Spec {
            le,
            big,
            rows_per_strip: 2,
            description: Some(r#"{"shape": [4, 5, 7]}"#.into()),
            ..Spec::default()
        };
        let mut bytes = build(&spec, 4).bytes;
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("corrupt.tif");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(mut src) = TiffSource::open(&p, None) {
            let d = src.dims().pixels();
            if d <= 1 << 20 {
                let mut buf = vec![0.0; d];
                for t in (0..src.frames().min(8)).rev() {
                    let _ = src.read_frames(t, &mut buf);
                }
            }
        }
    }
}

#[test]
fn writer_errors_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("movie.tif");
    let shape = Shape::new(3, Dims::planar(4, 5));
    let frame = [1.0f32; 20];

    // Zero frames.
    let err = TiffWriter::create(&dest, Shape::new(0, Dims::planar(4, 5)), &WriteOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let err = caiman_io::create(&dest, Shape::new(0, Dims::planar(4, 5)), &WriteOptions::default()).err().unwrap();
    assert!(matches!(err, Error::Empty { .. }), "{err}");

    // Abandoned after one frame.
    let mut w = TiffWriter::create(&dest, shape, &WriteOptions::default()).unwrap();
    w.write_frames(&frame).unwrap();
    drop(w);
    assert!(!dest.exists());

    // Too many frames, partial frames, then finishing short.
    let mut w = TiffWriter::create(&dest, shape, &WriteOptions::default()).unwrap();
    let err = w.write_frames(&[0.0; 80]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    let err = w.write_frames(&[0.0; 19]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    w.write_frames(&frame).unwrap();
    let err = Box::new(w).finish().unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    assert!(!dest.exists());

    // A classic TIFF cannot hold 100 GB; nothing is created.
    let huge = Shape::new(100_000, Dims::planar(512, 512));
    let err =
        TiffWriter::create(&dest, huge, &WriteOptions { bigtiff: Some(false), ..WriteOptions::default() }).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    // Into a directory that does not exist.
    let err = TiffWriter::create(&dir.path().join("no/such/dir.tif"), shape, &WriteOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Onto a directory.
    let err = TiffWriter::create(dir.path(), shape, &WriteOptions::default()).unwrap_err();
    assert!(matches!(err, Error::IsDirectory { .. }), "{err}");

    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left");
}
