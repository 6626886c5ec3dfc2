"""Writing a prepared file: chunking, atomic replacement, refusing bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from raven_hpc.data import open_dataset
from raven_hpc.data import writer as writer_mod
from raven_hpc.errors import DatasetError
from tests.unit.data.datasets import images, write

ROOT = Path(__file__).resolve().parents[3]


def test_chunks_are_one_snippet(small, tmp_path):
    path, *_ = small
    with h5py.File(path, "r") as f:
        assert f["train/features"].chunks == (32, 28, 28)
        assert f["train/labels"].chunks == (32,)
        assert f["train/features"].compression is None
    x, y = images(5)  # fewer samples than snippet_size: one short snippet, one chunk
    write(tmp_path / "tiny.h5", {"train": (x, y)}, snippet_size=32, compression="gzip")
    with h5py.File(tmp_path / "tiny.h5", "r") as f:
        assert f["train/features"].chunks == (5, 28, 28)
        assert f["train/features"].compression == "gzip"
    with open_dataset(tmp_path / "tiny.h5") as ds:
        np.testing.assert_array_equal(ds.split("train").read_snippets([0])[1], y)


def test_no_overwrite_without_force(small):
    path, x, y, *_ = small
    before = path.read_bytes()
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        write(path, {"train": (x[:10], y[:10])})
    assert path.read_bytes() == before
    write(path, {"train": (x[:10], y[:10])}, force=True)
    with open_dataset(path) as ds:
        assert ds.split_names == ["train"] and ds.split("train").num_samples == 10


def test_failed_write_leaves_old_file_and_no_temp(small, monkeypatch):
    path, x, y, *_ = small
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writer_mod, "_write_split", boom)
    with pytest.raises(RuntimeError):
        write(path, {"train": (x, y)}, force=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.h5"]


def test_write_creates_parent_and_refuses_directory(tmp_path):
    x, y = images(3)
    write(tmp_path / "a" / "b.h5", {"train": (x, y)})
    assert (tmp_path / "a" / "b.h5").is_file()
    with pytest.raises(DatasetError, match="is a directory"):
        write(tmp_path / "a", {"train": (x, y)})


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
    x, y = images(10)
    with pytest.raises(DatasetError, match=match):
        write(tmp_path / "bad.h5", splits(x, y), **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_write_rejects_non_finite_features(tmp_path, bad):
    x = np.zeros((20, 4), np.float32)
    x[13, 2] = bad
    with pytest.raises(DatasetError, match=r"split 'train': sample 13 has NaN or infinite"):
        write(tmp_path / "nan.h5", {"train": (x, np.zeros(20, int))})


def test_writer_does_not_import_engine_or_mpi():
    code = ("import sys, raven_hpc.data; "
            "bad=[m for m in sys.modules if m.startswith(('mpi4py', 'raven_hpc.engine'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
