"""Reading a prepared file: round trip, cache, checksums, refusing damaged files."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from raven_hpc.data import open_dataset
from raven_hpc.errors import DatasetError
from tests.unit.data.datasets import NORM, images, mutate_file, reference, write


def _rows(split, ids):
    return np.concatenate([np.arange(s["start"], s["start"] + s["count"])
                           for s in split.snippets[ids]])


@pytest.mark.parametrize("cache", [False, True])
def test_round_trip_read_snippets(small, cache):
    path, x, y, tx, ty = small
    with open_dataset(path, cache=cache) as ds:
        assert ds.split_names == ["train", "test"]
        assert ds.feature_shape == (28, 28) and ds.num_classes == 10
        tr = ds.split("train")
        assert (tr.num_samples, tr.num_snippets) == (1000, 32)
        ids = [31, 3, 0, 3, 17]  # any order, duplicates allowed, last one short (8 samples)
        xs, ys = tr.read_snippets(ids)
        rows = _rows(tr, ids)
        assert xs.dtype == np.float32 and ys.dtype == np.int64
        assert xs.shape == (len(rows), 28, 28) and len(rows) == 4 * 32 + 8
        np.testing.assert_allclose(xs, reference(x[rows]), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ys, y[rows])
        xa, ya = ds.split("test").load_all()
        np.testing.assert_allclose(xa, reference(tx), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ya, ty)


def test_cache_all_then_reads_come_from_memory(small):
    path, x, y, *_ = small
    ds = open_dataset(path)
    tr = ds.split("train").cache_all()
    assert tr.cached
    ds.close()  # the cache keeps serving after the file is closed
    xs, ys = tr.read_snippets(np.array([5, 6, 7]))
    np.testing.assert_allclose(xs, reference(x[160:256]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ys, y[160:256])
    with pytest.raises(DatasetError, match="closed"):
        ds.split("test").read_snippets([0])


def test_float_features_and_normalisation(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, (50, 3, 4)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    norm = {"scale": 1.0, "mean": 5.0, "std": 2.0}
    write(tmp_path / "f.h5", {"train": (x, y)}, num_classes=3, normalization=norm, snippet_size=7)
    with open_dataset(tmp_path / "f.h5") as ds:
        assert ds.attrs["feature_dtype"] == "float32"
        xa, ya = ds.split("train").load_all()
        np.testing.assert_allclose(xa, reference(x, norm), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ya, y)
        assert ds.split("train").snippets["count"].tolist() == [7] * 7 + [1]


def test_summary_and_unknown_split(small):
    path, *_ = small
    with open_dataset(path) as ds:
        s = ds.summary()
        assert s["splits"] == {"train": {"samples": 1000, "snippets": 32},
                               "test": {"samples": 100, "snippets": 4}}
        assert s["normalization"] == pytest.approx(NORM)
        with pytest.raises(DatasetError, match=r"no split 'valid'; available: train, test"):
            ds.split("valid")
        with pytest.raises(DatasetError, match="snippet id 32 out of range"):
            ds.split("train").read_snippets([1, 32])


def test_read_speed_from_cache(small):
    path, *_ = small
    with open_dataset(path) as ds:
        tr = ds.split("train").cache_all()
        ids = [4, 9, 2, 17]
        tr.read_snippets(ids)
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            tr.read_snippets(ids)
        per_call = (time.perf_counter() - t0) / n
    assert per_call < 5e-3  # far above a normal read: generous for a loaded machine


def _flip(path, dataset, index):
    with h5py.File(path, "r+") as f:
        d = f[dataset]
        v = d[index]
        d[index] = v ^ 1 if d.dtype.kind in "iu" else v + 1


@pytest.mark.parametrize("cache", [False, True])
def test_flipped_feature_byte_is_caught(small, cache):
    path, *_ = small
    _flip(path, "train/features", (70, 3, 4))  # sample 70 is in snippet 2
    with open_dataset(path, cache=cache) as ds:
        tr = ds.split("train")
        tr.read_snippets([0, 1, 3])  # untouched snippets still read
        with pytest.raises(DatasetError, match=r"checksum mismatch in snippet 2 .*'train'") as e:
            tr.read_snippets([1, 2])
        assert str(path) in str(e.value)
        tr.read_snippets([2], verify=False)  # the caller may opt out
        with pytest.raises(DatasetError, match="snippet 2"):
            tr.load_all()


def test_flipped_label_is_caught(small):
    path, *_ = small
    _flip(path, "test/labels", 99)  # last sample of the last (short) snippet
    with open_dataset(path) as ds:
        with pytest.raises(DatasetError, match=r"snippet 3 .*'test'"):
            ds.split("test").cache_all()


def test_open_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.h5: no such file; create it with"):
        open_dataset(tmp_path / "missing.h5")


def test_open_not_hdf5(tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="text.h5 is not an HDF5 file"):
        open_dataset(p)


def _set_labels_short(f):
    y = f["train/labels"][:-1]
    del f["train/labels"]
    f["train/labels"] = y


def _bad_table(f):
    t = f["train/snippets"][()]
    t["count"][3] = 31
    f["train/snippets"][...] = t


def _bad_ids(f):
    t = f["train/snippets"][()]
    t["id"][[0, 1]] = [1, 0]
    f["train/snippets"][...] = t


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f.attrs.__delitem__("format"), "not a raven-hpc dataset"),
    (lambda f: f.attrs.__setitem__("format", "other"), r"format='other'"),
    (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99 is not supported"),
    (lambda f: f.attrs.__delitem__("norm_std"), "missing root attribute.*norm_std"),
    (lambda f: f.attrs.__setitem__("norm_std", 0.0), "std > 0"),
    (lambda f: f.attrs.__setitem__("feature_shape", [784]), r"features have shape \(1000, 28, 28\)"),
    (lambda f: f.attrs.__setitem__("feature_dtype", "float32"), "features are uint8"),
    (lambda f: f["train"].__delitem__("snippets"), r"split 'train' .*missing dataset\(s\) snippets"),
    (lambda f: f["test"].__delitem__("features"), r"split 'test' .*missing dataset\(s\) features"),
    (_set_labels_short, "1000 feature rows but 999 labels"),
    (_bad_table, "does not tile the 1000 samples"),
    (_bad_ids, "snippet ids must be 0..31 in order"),
    (lambda f: [f.__delitem__(k) for k in list(f.keys())], "no split groups"),
])
def test_open_rejects_wrong_layout(small, mutate, match):
    path, *_ = small
    mutate_file(path, mutate)
    with pytest.raises(DatasetError, match=match) as e:
        open_dataset(path)
    assert str(path) in str(e.value)


def test_open_rejects_out_of_range_label_in_file(tmp_path):
    # a file whose checksums are consistent but whose labels exceed num_classes
    x, y = images(40)
    path = tmp_path / "d.h5"
    write(path, {"train": (x, y)})
    mutate_file(path, lambda f: f.attrs.__setitem__("num_classes", 2))
    with open_dataset(path) as ds:
        with pytest.raises(DatasetError, match=r"outside \[0, 2\)"):
            ds.split("train").load_all()


def test_files_with_a_class_counts_attribute_still_load(small):
    path, x, y, tx, ty = small
    mutate_file(path, lambda f: [f[s].attrs.__setitem__("class_counts", np.bincount(v, minlength=10))
                                 for s, v in (("train", y), ("test", ty))])
    with open_dataset(path) as ds:
        xa, ya = ds.split("test").load_all()
        np.testing.assert_array_equal(ya, ty)
        np.testing.assert_allclose(xa, reference(tx), rtol=1e-6, atol=1e-6)
