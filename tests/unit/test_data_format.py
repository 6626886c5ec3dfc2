"""The prepared-dataset HDF5 format: write, open, read, verify, refuse bad input."""
from __future__ import annotations

import os
import time
import zlib

import h5py
import numpy as np
import pytest

from raven_hpc.data import (
    FORMAT_NAME,
    MNIST_NORMALIZATION,
    SNIPPET_DTYPE,
    open_dataset,
    snippet_checksum,
    write_dataset,
)
from raven_hpc.data import format as fmt
from raven_hpc.errors import DatasetError

NORM = MNIST_NORMALIZATION


def _images(n, seed=0, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 10, n)


def _reference(x, norm=NORM):
    return ((x.astype(np.float64) * norm["scale"] - norm["mean"]) / norm["std"]).astype(np.float32)


def _rows(split, ids):
    return np.concatenate([np.arange(s["start"], s["start"] + s["count"])
                           for s in split.snippets[ids]])


@pytest.fixture
def small(tmp_path):
    x, y = _images(1000)
    tx, ty = _images(100, seed=1)
    path = tmp_path / "d.h5"
    write_dataset(path, {"train": (x, y), "test": (tx, ty)}, snippet_size=32,
                  source="unit", num_classes=10, normalization=NORM)
    return path, x, y, tx, ty


def _write(path, splits, **kw):
    args = dict(snippet_size=8, source="unit", num_classes=10, normalization=NORM)
    args.update(kw)
    return write_dataset(path, splits, **args)


# ---------------------------------------------------------------- round trip

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
        np.testing.assert_allclose(xs, _reference(x[rows]), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ys, y[rows])
        xa, ya = ds.split("test").load_all()
        np.testing.assert_allclose(xa, _reference(tx), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ya, ty)


def test_cache_all_then_reads_come_from_memory(small):
    path, x, y, *_ = small
    ds = open_dataset(path)
    tr = ds.split("train").cache_all()
    assert tr.cached
    ds.close()  # the cache keeps serving after the file is closed
    xs, ys = tr.read_snippets(np.array([5, 6, 7]))
    np.testing.assert_allclose(xs, _reference(x[160:256]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ys, y[160:256])
    with pytest.raises(DatasetError, match="closed"):
        ds.split("test").read_snippets([0])


def test_float_features_and_normalisation(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, (50, 3, 4)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    norm = {"scale": 1.0, "mean": 5.0, "std": 2.0}
    _write(tmp_path / "f.h5", {"train": (x, y)}, num_classes=3, normalization=norm, snippet_size=7)
    with open_dataset(tmp_path / "f.h5") as ds:
        assert ds.attrs["feature_dtype"] == "float32"
        xa, ya = ds.split("train").load_all()
        np.testing.assert_allclose(xa, _reference(x, norm), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ya, y)
        assert ds.split("train").snippets["count"].tolist() == [7] * 7 + [1]


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


def test_chunks_are_one_snippet(small, tmp_path):
    path, *_ = small
    with h5py.File(path, "r") as f:
        assert f["train/features"].chunks == (32, 28, 28)
        assert f["train/labels"].chunks == (32,)
        assert f["train/features"].compression is None
    x, y = _images(5)  # fewer samples than snippet_size: one short snippet, one chunk
    _write(tmp_path / "tiny.h5", {"train": (x, y)}, snippet_size=32, compression="gzip")
    with h5py.File(tmp_path / "tiny.h5", "r") as f:
        assert f["train/features"].chunks == (5, 28, 28)
        assert f["train/features"].compression == "gzip"
    with open_dataset(tmp_path / "tiny.h5") as ds:
        np.testing.assert_array_equal(ds.split("train").read_snippets([0])[1], y)


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


# ---------------------------------------------------------------- checksums

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


# ---------------------------------------------------------------- writing safely

def test_no_overwrite_without_force(small):
    path, x, y, *_ = small
    before = path.read_bytes()
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        _write(path, {"train": (x[:10], y[:10])})
    assert path.read_bytes() == before
    _write(path, {"train": (x[:10], y[:10])}, force=True)
    with open_dataset(path) as ds:
        assert ds.split_names == ["train"] and ds.split("train").num_samples == 10


def test_failed_write_leaves_old_file_and_no_temp(small, monkeypatch):
    path, x, y, *_ = small
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fmt, "_write_split", boom)
    with pytest.raises(RuntimeError):
        _write(path, {"train": (x, y)}, force=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.h5"]


def test_write_creates_parent_and_refuses_directory(tmp_path):
    x, y = _images(3)
    _write(tmp_path / "a" / "b.h5", {"train": (x, y)})
    assert (tmp_path / "a" / "b.h5").is_file()
    with pytest.raises(DatasetError, match="is a directory"):
        _write(tmp_path / "a", {"train": (x, y)})


@pytest.mark.parametrize("splits,kw,match", [
    (lambda x, y: {"train": (x, y[:-1])}, {}, "10 feature rows but 9 labels"),
    (lambda x, y: {"train": (x[:0], y[:0])}, {}, "no samples"),
    (lambda x, y: {"train": (x, y + 5)}, {}, r"label of sample \d+ is 1\d, outside \[0, 10\)"),
    (lambda x, y: {"train": (x, y - 10)}, {}, r"outside \[0, 10\)"),
    (lambda x, y: {"train": (x, y + 0.5)}, {}, "labels must be integers"),
    (lambda x, y: {"train": (x, y.astype(str))}, {}, "must be integers"),
    (lambda x, y: {"train": (x.reshape(-1), np.zeros(10 * 784, int))}, {}, r"shape \(N, \.\.\.\)"),
    (lambda x, y: {"train": (x, y), "test": (x[:, :5], y)}, {}, "share one sample shape"),
    (lambda x, y: {"train": (x, y)}, {"snippet_size": 0}, "snippet_size must be an integer >= 1"),
    (lambda x, y: {"train": (x, y)}, {"normalization": {"scale": 1, "mean": 0, "std": 0}},
     "std > 0"),
    (lambda x, y: {"train": (x, y)}, {"normalization": {"scale": 1}}, "normalization must be"),
    (lambda x, y: {"train": (x, y)}, {"compression": "zstd"}, "unknown compression"),
    (lambda x, y: {}, {}, "no splits"),
])
def test_write_rejects_bad_input(tmp_path, splits, kw, match):
    x, y = _images(10)
    with pytest.raises(DatasetError, match=match):
        _write(tmp_path / "bad.h5", splits(x, y), **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_write_rejects_non_finite_features(tmp_path, bad):
    x = np.zeros((20, 4), np.float32)
    x[13, 2] = bad
    with pytest.raises(DatasetError, match=r"split 'train': sample 13 has NaN or infinite"):
        _write(tmp_path / "nan.h5", {"train": (x, np.zeros(20, int))})


# ---------------------------------------------------------------- opening bad files

def test_open_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.h5: no such file; create it with"):
        open_dataset(tmp_path / "missing.h5")


def test_open_not_hdf5(tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="text.h5 is not an HDF5 file"):
        open_dataset(p)


def _mutate(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


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
    _mutate(path, mutate)
    with pytest.raises(DatasetError, match=match) as e:
        open_dataset(path)
    assert str(path) in str(e.value)


def test_open_rejects_out_of_range_label_in_file(tmp_path):
    # a file whose checksums are consistent but whose labels exceed num_classes
    x, y = _images(40)
    path = tmp_path / "d.h5"
    _write(path, {"train": (x, y)})
    _mutate(path, lambda f: f.attrs.__setitem__("num_classes", 2))
    with open_dataset(path) as ds:
        with pytest.raises(DatasetError, match=r"outside \[0, 2\)"):
            ds.split("train").load_all()


def test_writer_does_not_import_engine_or_mpi():
    import subprocess
    import sys
    code = ("import sys, raven_hpc.data; "
            "bad=[m for m in sys.modules if m.startswith(('mpi4py', 'raven_hpc.engine'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stdout + r.stderr
