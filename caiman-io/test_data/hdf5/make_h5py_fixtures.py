"""Write the h5py_* fixtures of this folder (h5py 3.16, HDF5 2.0.0, numpy 2).

Each `<name>.h5|.nwb` holds a movie written by h5py with a feature the Rust reader must handle;
`<name>.npy` holds the same movie as little-endian float32, C order (what the reader must return).
"""
import h5py
import numpy as np

rng = np.random.default_rng(0)

# uint16 movie, chunked by 3 frames, gzip 4 + shuffle; integer `fr` attribute; fixed-length and
# variable-length string attributes on the root.
m = rng.integers(0, 65535, size=(11, 9, 7), dtype=np.uint16)
with h5py.File("h5py_u16_gzip_shuffle.h5", "w") as f:
    d = f.create_dataset("mov", data=m, chunks=(3, 9, 7), compression="gzip", compression_opts=4, shuffle=True)
    d.attrs["fr"] = np.int32(15)
    f.attrs["note"] = np.bytes_(b"fixed ascii")
    f.attrs["text"] = "vlen str"
np.save("h5py_u16_gzip_shuffle.npy", m.astype(np.float32))

# Big-endian float32 volume (T, d1, d2, d3) next to a second dataset (so it must be named).
b = rng.normal(size=(4, 3, 5, 2)).astype(">f4")
with h5py.File("h5py_be_f4_volume.h5", "w") as f:
    f.create_dataset("vol", data=b)
    f.create_dataset("other", data=np.arange(3))
np.save("h5py_be_f4_volume.npy", b.astype("<f4"))

# NWB-like layout: an int8 series under acquisition/, chunked by frame, gzip.
i8 = rng.integers(-128, 127, size=(5, 4, 4), dtype=np.int8)
with h5py.File("h5py_i8_series.nwb", "w") as f:
    g = f.create_group("acquisition/TwoPhotonSeries")
    g.create_dataset("data", data=i8, chunks=(1, 4, 4), compression="gzip")
    f.create_dataset("x", data=np.zeros(3))
np.save("h5py_i8_series.npy", i8.astype(np.float32))

# float64 movie in a libver='latest' file with creation-order tracking, auto chunks, fletcher32.
m64 = rng.normal(size=(6, 5, 4))
with h5py.File("h5py_f64_latest.h5", "w", track_order=True, libver="latest") as f:
    f.create_dataset("mov", data=m64, chunks=True, fletcher32=True)
    f["mov"].attrs["fr"] = 9.5
np.save("h5py_f64_latest.npy", m64.astype(np.float32))
