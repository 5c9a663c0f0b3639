//! Format-independent reader behaviour: chains of files, strided reads, whole loads.

use caiman_io::{
    ChainSource, Dims, Error, FrameSource, Movie, OpenOptions, Order, Shape, WriteOptions, load, open, read_movie,
    read_yr, save,
};

fn movie(frames: usize, dims: Dims, seed: f32) -> Movie {
    let shape = Shape::new(frames, dims);
    Movie::from_vec(shape, (0..shape.len()).map(|i| seed + i as f32 * 0.5).collect())
}

#[test]
fn chain_reads_across_file_boundaries_like_one_movie() {
    let dir = tempfile::tempdir().unwrap();
    let dims = Dims::planar(6, 5);
    let parts = [movie(4, dims, 0.0), movie(1, dims, 1000.0), movie(7, dims, 2000.0)];
    let names = ["a.npy", "b.mmap", "c.npz"];
    let mut paths = Vec::new();
    for (m, n) in parts.iter().zip(names) {
        paths.push(save(dir.path().join(n), m, &WriteOptions { order: Order::C, ..Default::default() }).unwrap());
    }
    let mut chain = ChainSource::open(&paths, &OpenOptions::default()).unwrap();
    assert_eq!(chain.info().shape, Shape::new(12, dims));
    let whole: Vec<f32> = parts.iter().flat_map(|m| m.as_slice().to_vec()).collect();
    // every range, including ones spanning two or three files
    let d = dims.pixels();
    for start in 0..12 {
        for n in 1..=(12 - start) {
            let mut buf = vec![0.0; n * d];
            chain.read_frames(start, &mut buf).unwrap();
            assert_eq!(buf, whole[start * d..(start + n) * d], "start {start} n {n}");
        }
    }
    let mut every3 = vec![0.0; 4 * d];
    chain.read_frames_strided(1, 3, &mut every3).unwrap();
    for (k, f) in every3.chunks(d).enumerate() {
        let t = 1 + 3 * k;
        assert_eq!(f, &whole[t * d..(t + 1) * d]);
    }
    let m = read_movie(&mut chain, 3..9).unwrap();
    assert_eq!(m.as_slice(), &whole[3 * d..9 * d]);
    assert!(matches!(chain.read_frames(11, &mut vec![0.0; 2 * d]), Err(Error::InvalidRequest { .. })));
    assert!(matches!(read_movie(&mut chain, 5..13), Err(Error::InvalidRequest { .. })));
}

#[test]
fn chain_refuses_files_of_different_frame_size() {
    let dir = tempfile::tempdir().unwrap();
    let a = save(dir.path().join("a.npy"), &movie(2, Dims::planar(4, 4), 0.0), &WriteOptions::default()).unwrap();
    let b = save(dir.path().join("b.npy"), &movie(2, Dims::planar(4, 5), 0.0), &WriteOptions::default()).unwrap();
    let e = ChainSource::open(&[&a, &b], &OpenOptions::default()).err().unwrap();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("b.npy"), "{e}");
}

#[test]
fn strided_reads_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let m = movie(10, Dims::volume(3, 4, 2), 7.0);
    let p = save(dir.path().join("v.mmap"), &m, &WriteOptions::default()).unwrap();
    let mut src = open(&p, &OpenOptions::default()).unwrap();
    let d = m.dims().pixels();
    let mut buf = vec![0.0; 5 * d];
    src.read_frames_strided(0, 2, &mut buf).unwrap();
    for k in 0..5 {
        assert_eq!(&buf[k * d..(k + 1) * d], m.frame(2 * k));
    }
    assert!(matches!(src.read_frames_strided(0, 0, &mut buf), Err(Error::InvalidRequest { .. })));
    src.read_frames_strided(1, 2, &mut buf).unwrap(); // frames 1,3,5,7,9
    assert!(matches!(src.read_frames_strided(2, 2, &mut buf), Err(Error::InvalidRequest { .. })));
    assert_eq!(load(&p, &OpenOptions::default()).unwrap().as_slice(), m.as_slice());
}

#[test]
fn read_yr_equals_the_loaded_movie_in_fortran_pixel_order() {
    let dir = tempfile::tempdir().unwrap();
    for (dims, frames) in [(Dims::planar(6, 5), 300), (Dims::volume(3, 4, 2), 7), (Dims::planar(2, 3), 1)] {
        let m = movie(frames, dims, 1.0);
        let path = save(dir.path().join(format!("m{}.npy", dims.d3)), &m, &WriteOptions::default()).unwrap();
        let mut src = open(&path, &OpenOptions::default()).unwrap();
        let yr = read_yr(src.as_mut()).unwrap();
        assert_eq!(yr, m.to_yr(), "{dims} × {frames}");
        // Pixel (i, j) is row i + d1·j: check one by hand.
        assert_eq!(yr[[1 + dims.d1 * 2, 0]], m.frame(0)[dims.c_index(1, 2, 0)]);
    }
}
