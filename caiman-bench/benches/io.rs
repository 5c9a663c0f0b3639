//! Reading 512×512 frames from u16 TIFF, f32 `.mmap` (both byte orders), chunked HDF5 and NPY,
//! each beside a plain `std::fs::read` of the same file (and a `read_exact` into a reused buffer)
//! in the same run, so the ratio to the raw read throughput is measured side by side. Files live
//! in the system temp dir (page cache warm after the first iteration, as for any repeated read).

use std::hint::black_box;
use std::path::Path;

use caiman_bench::{FRAME_512, write_fixture};
use caiman_io::{OpenOptions, Order, Shape, TiffSample, WriteOptions};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const FRAMES: usize = 200;

fn read_all(path: &Path, buf: &mut [f32]) {
    let mut src = caiman_io::open(path, &OpenOptions::default()).expect("open fixture");
    let d = src.dims().pixels();
    let chunk = buf.len() / d;
    let mut t = 0;
    while t < src.frames() {
        let n = chunk.min(src.frames() - t);
        src.read_frames(t, &mut buf[..n * d]).expect("read");
        t += n;
    }
    black_box(&buf);
}

fn io_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = Shape::new(FRAMES, FRAME_512);
    let fixtures = [
        ("tiff_u16", "m.tif", WriteOptions { tiff_sample: TiffSample::U16, ..Default::default() }),
        ("mmap_f32_F", "m.mmap", WriteOptions { order: Order::F, ..Default::default() }),
        ("mmap_f32_C", "c.mmap", WriteOptions { order: Order::C, ..Default::default() }),
        ("hdf5_chunked_deflate0", "m0.h5", WriteOptions { compression: 0, ..Default::default() }),
        ("hdf5_chunked_deflate4", "m4.h5", WriteOptions { compression: 4, ..Default::default() }),
        ("npy_f32", "m.npy", WriteOptions::default()),
    ];
    let mut group = c.benchmark_group("io_read");
    group.sample_size(10);
    let mut buf = vec![0f32; 16 * FRAME_512.pixels()];
    for (name, file, opts) in fixtures {
        let path = write_fixture(&dir.path().join(file), shape, &opts).expect("write fixture");
        let bytes = std::fs::metadata(&path).expect("stat").len();
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new(name, format!("512x512x{FRAMES}")), |b| {
            b.iter(|| read_all(&path, &mut buf))
        });
        group.bench_function(BenchmarkId::new(format!("{name}_fs_read"), format!("512x512x{FRAMES}")), |b| {
            b.iter(|| black_box(std::fs::read(&path).expect("read")))
        });
        // The same bytes into a reused buffer: raw read throughput without allocation costs.
        let mut raw = vec![0u8; bytes as usize];
        group.bench_function(BenchmarkId::new(format!("{name}_read_exact"), format!("512x512x{FRAMES}")), |b| {
            b.iter(|| {
                let mut f = std::fs::File::open(&path).expect("open");
                std::io::Read::read_exact(&mut f, &mut raw).expect("read");
                black_box(&raw);
            })
        });
    }
    group.finish();

    // Random access: the last frame of a long movie, as a streaming reader seeks it.
    let mut group = c.benchmark_group("io_last_frame");
    let long = Shape::new(2000, caiman_io::Dims::planar(64, 64));
    for (name, file, opts) in [
        ("tiff_u16", "long.tif", WriteOptions { tiff_sample: TiffSample::U16, ..Default::default() }),
        ("mmap_f32_F", "long.mmap", WriteOptions::default()),
        ("hdf5", "long.h5", WriteOptions::default()),
    ] {
        let path = write_fixture(&dir.path().join(file), long, &opts).expect("write fixture");
        let mut frame = vec![0f32; long.dims.pixels()];
        group.bench_function(BenchmarkId::new(name, "open+last_of_2000"), |b| {
            b.iter(|| {
                let mut src = caiman_io::open(&path, &OpenOptions::default()).expect("open");
                src.read_frames(long.frames - 1, &mut frame).expect("read");
                black_box(&frame);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, io_read);
criterion_main!(benches);
