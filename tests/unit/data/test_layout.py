"""The HDF5 layout both sides agree on: root attributes, snippet table, checksums."""
from __future__ import annotations

import zlib

import h5py
import numpy as np

from raven_hpc.data import FORMAT_NAME, SNIPPET_DTYPE, snippet_checksum
from raven_hpc.data.layout import first_nonfinite, snippet_bounds, split_order


def test_layout_attrs_and_checksums(small):
    path, x, y, *_ = small
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == 1
        for key in ("source", "feature_shape", "feature_dtype", "num_classes", "norm_scale",
                    "norm_mean", "norm_std", "created", "snippet_size"):
            assert key in f.attrs
        assert f["train/features"].dtype == np.uint8
        assert f["train/labels"].dtype == np.dtype("<i8")
        table = f["train/snippets"][()]
        assert table.dtype == SNIPPET_DTYPE
    for s in table:
        a, c = int(s["start"]), int(s["count"])
        want = zlib.crc32(y[a:a + c].astype("<i8").tobytes(), zlib.crc32(x[a:a + c].tobytes()))
        assert int(s["checksum"]) == want == snippet_checksum(x[a:a + c], y[a:a + c])


def test_snippets_tile_the_split_in_order():
    starts, counts = snippet_bounds(70, 32)
    assert starts.tolist() == [0, 32, 64] and counts.tolist() == [32, 32, 6]
    assert split_order(["valid", "test", "extra", "train"]) == ["train", "test", "extra", "valid"]


def test_first_nonfinite_names_the_first_bad_sample():
    x = np.zeros((10, 3, 2), np.float32)
    assert first_nonfinite(x) is None
    x[7, 1, 0], x[4, 2, 1] = np.inf, np.nan
    assert first_nonfinite(x) == 4
    assert first_nonfinite(np.zeros((5, 2), np.uint8)) is None
