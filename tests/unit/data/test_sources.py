"""Sources (IDX, npz, npy, CSV, image folders, the embedded MNIST subset) read
through ``prepare``, and their errors."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from raven_hpc.data import open_dataset, prepare, read_idx
from raven_hpc.errors import DatasetError
from tests.unit.data.datasets import idx_bytes, mnist_dir

ROOT = Path(__file__).parents[3]
SMALL = ROOT / "data" / "mnist-small"
FULL = ROOT.parent / "shared/data/mnist"


@pytest.mark.parametrize("gz,sep", [(True, "-"), (False, "-"), (False, ".")])
def test_idx_folder(tmp_path, gz, sep):
    data = mnist_dir(tmp_path / "src", gz=gz, sep=sep)
    s = prepare(tmp_path / "src", tmp_path / "out.h5")
    assert s["kind"] == "idx"
    assert s["splits"] == {"train": {"samples": 100, "snippets": 4},
                           "test": {"samples": 30, "snippets": 1}}
    assert s["feature_shape"] == [6, 5] and s["num_classes"] == 10
    assert s["bytes"] > 0 and s["seconds"] >= 0
    tx, ty = data["train"]
    with open_dataset(tmp_path / "out.h5") as ds:
        x, y = ds.split("train").load_all()
        assert not np.array_equal(y, ty)  # shuffled, not class-sorted
        np.testing.assert_array_equal(np.sort(y), ty.astype(np.int64))
        perm = np.random.default_rng(0).permutation(100)
        np.testing.assert_array_equal(y, ty[perm])
        norm = ds.normalization
        np.testing.assert_allclose(
            x, ((tx[perm] * norm["scale"] - norm["mean"]) / norm["std"]), rtol=1e-5, atol=1e-5)
        xt, yt = ds.split("test").load_all()  # test keeps its order
        np.testing.assert_array_equal(yt, data["t10k"][1])


@pytest.mark.parametrize("case,match", [
    ("magic", r"train-images-idx3-ubyte: wrong magic number 1234 .* starts with 2051"),
    ("swapped", r"magic number 2049 \(IDX labels\), expected 2051 .* swapped"),
    ("truncated", r"declares 100 images of shape \(6, 5\) .* truncated"),
    ("trailing", "has trailing bytes"),
    ("count", "has 100 images but train-labels-idx1-ubyte has 99 labels"),
    ("missing", r"found train-images-idx3-ubyte but no train labels file .*train-labels-idx1"),
    ("short", "too short for an IDX header"),
])
def test_idx_errors(tmp_path, case, match):
    data = mnist_dir(tmp_path / "src", gz=False)
    x, y = data["train"]
    img = tmp_path / "src" / "train-images-idx3-ubyte"
    lab = tmp_path / "src" / "train-labels-idx1-ubyte"
    if case == "magic":
        img.write_bytes((1234).to_bytes(4, "big") + img.read_bytes()[4:])
    elif case == "swapped":
        img.write_bytes(idx_bytes(y))
    elif case == "truncated":
        img.write_bytes(img.read_bytes()[:-7])
    elif case == "trailing":
        img.write_bytes(img.read_bytes() + b"\0")
    elif case == "count":
        lab.write_bytes(idx_bytes(y[:99]))
    elif case == "missing":
        lab.unlink()
    elif case == "short":
        img.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match=match):
        prepare(tmp_path / "src", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_idx_truncated_gzip(tmp_path):
    mnist_dir(tmp_path / "src")
    p = tmp_path / "src" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz: broken gzip data"):
        prepare(tmp_path / "src", tmp_path / "out.h5")


def test_source_errors(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such file or directory"):
        prepare(tmp_path / "nowhere", tmp_path / "o.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="found no IDX, .npy, CSV files or class folders"):
        prepare(tmp_path / "empty", tmp_path / "o.h5")
    with pytest.raises(DatasetError, match="no MNIST-style IDX files found"):
        prepare(tmp_path / "empty", tmp_path / "o.h5", kind="mnist")
    with pytest.raises(DatasetError, match="unknown source kind 'parquet'"):
        prepare(tmp_path / "empty", tmp_path / "o.h5", kind="parquet")
    (tmp_path / "o.h5").write_bytes(b"keep")
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        prepare(tmp_path / "empty", tmp_path / "o.h5")
    assert (tmp_path / "o.h5").read_bytes() == b"keep"


def test_npz_with_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50)
    xt, yt = rng.normal(size=(20, 8)).astype(np.float32), rng.integers(0, 3, 20)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    s = prepare(tmp_path / "d.npz", tmp_path / "o.h5", snippet_size=16)
    assert s["kind"] == "npz" and s["feature_dtype"] == "float32" and s["num_classes"] == 3
    assert s["splits"] == {"train": {"samples": 50, "snippets": 4},
                           "test": {"samples": 20, "snippets": 2}}
    assert s["normalization"]["scale"] == 1.0
    assert s["normalization"]["mean"] == pytest.approx(x.mean(), abs=1e-6)
    assert s["normalization"]["std"] == pytest.approx(x.std(), rel=1e-5)
    with open_dataset(tmp_path / "o.h5") as ds:
        xa, ya = ds.split("test").load_all()
        np.testing.assert_array_equal(ya, yt)
        np.testing.assert_allclose(xa, (xt - x.mean()) / x.std(), rtol=1e-4, atol=1e-5)
    with pytest.raises(DatasetError, match="already has a test split"):
        prepare(tmp_path / "d.npz", tmp_path / "o.h5", force=True, test_fraction=0.2)


def test_not_an_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="d.npz: cannot read as .npz"):
        prepare(tmp_path / "d.npz", tmp_path / "o.h5")


def test_npy_folder_and_file(tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "arrays"
    d.mkdir()
    x, y = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8), rng.integers(0, 5, 40)
    np.save(d / "X.npy", x)
    np.save(d / "y.npy", y)
    s = prepare(d, tmp_path / "a.h5", test_fraction=0.25)
    assert s["kind"] == "npy" and s["feature_dtype"] == "uint8"
    assert s["splits"]["train"]["samples"] == 30 and s["splits"]["test"]["samples"] == 10
    assert s["normalization"]["scale"] == pytest.approx(1 / 255)

    np.save(d / "x_train.npy", x)
    np.save(d / "y_train.npy", y)
    np.save(d / "x_test.npy", x[:7])
    np.save(d / "y_test.npy", y[:7])
    s = prepare(d / "x_train.npy", tmp_path / "b.h5")
    assert s["splits"]["test"]["samples"] == 7 and s["splits"]["train"]["samples"] == 40
    s = prepare(d, tmp_path / "c.h5", kind="npy")  # x_train/x_test win over X/y in a folder
    assert s["splits"]["test"]["samples"] == 7

    np.save(tmp_path / "features.npy", x)
    with pytest.raises(DatasetError, match="cannot find its labels file .*labels.npy"):
        prepare(tmp_path / "features.npy", tmp_path / "d.h5")


def test_csv_with_header_and_test_sibling(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (25, 6))
    y = rng.integers(0, 3, 25)
    rows = ["a,b,c,label,d,e,f"] + [",".join(map(str, list(r[:3]) + [l] + list(r[3:])))
                                     for r, l in zip(x, y)]
    (tmp_path / "mnist_train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "mnist_test.csv").write_text("\n".join(rows[:6]) + "\n")
    s = prepare(tmp_path / "mnist_train.csv", tmp_path / "o.h5")
    assert s["kind"] == "csv" and s["feature_dtype"] == "uint8" and s["feature_shape"] == [6]
    assert s["splits"]["test"]["samples"] == 5
    with open_dataset(tmp_path / "o.h5") as ds:
        np.testing.assert_array_equal(ds.split("test").labels(), y[:5])
    s = prepare(tmp_path, tmp_path / "p.h5", kind="csv")
    assert s["splits"]["train"]["samples"] == 25


def test_csv_without_header_float(tmp_path):
    data = np.column_stack([np.arange(20) % 2, np.linspace(0, 1, 40).reshape(20, 2)])
    np.savetxt(tmp_path / "d.csv", data, delimiter=",")
    s = prepare(tmp_path / "d.csv", tmp_path / "o.h5", test_fraction=0)
    assert s["feature_dtype"] == "float32" and s["num_classes"] == 2
    (tmp_path / "bad.csv").write_text("1,2,3\n0,x,4\n")
    with pytest.raises(DatasetError, match="bad.csv: cannot parse as numeric CSV"):
        prepare(tmp_path / "bad.csv", tmp_path / "b.h5")
    (tmp_path / "nan.csv").write_text("1,2,3\n0,nan,4\n1,1,1\n")
    with pytest.raises(DatasetError, match="nan.csv: train sample 1 has NaN or infinite"):
        prepare(tmp_path / "nan.csv", tmp_path / "n.h5")


def test_image_folder(tmp_path):
    try:
        from PIL import Image
    except ImportError:
        (tmp_path / "imgs" / "cat").mkdir(parents=True)
        with pytest.raises(DatasetError, match="needs Pillow"):
            prepare(tmp_path / "imgs", tmp_path / "o.h5")
        return
    rng = np.random.default_rng(5)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    s = prepare(tmp_path / "imgs", tmp_path / "o.h5", test_fraction=0.2)
    assert s["kind"] == "images" and s["feature_shape"] == [8, 8] and s["num_classes"] == 2


def _provenance_counts(text):
    out = {}
    for split in ("train", "test"):
        m = re.search(rf"^\| {split} \| ([\d | ]+) \| (\d+) \|$", text, re.M)
        out[split] = ([int(v) for v in m.group(1).split(" | ")], int(m.group(2)))
    return out


def test_embedded_mnist_small(tmp_path):
    prov = (SMALL / "PROVENANCE.md").read_text()
    files = sorted(SMALL.glob("*.gz"))
    assert len(files) == 4 and sum(p.stat().st_size for p in files) <= 2_100_000
    for p in files:  # the files are the ones the provenance describes
        assert hashlib.sha256(p.read_bytes()).hexdigest() in prov
    counts = _provenance_counts(prov)
    s = prepare(SMALL, tmp_path / "small.h5", kind="mnist")
    assert s["splits"]["train"]["samples"] == counts["train"][1] == 8000
    assert s["splits"]["test"]["samples"] == counts["test"][1] == 2000
    assert s["feature_shape"] == [28, 28] and s["num_classes"] == 10
    with open_dataset(tmp_path / "small.h5") as ds:
        for split in ("train", "test"):
            y = ds.split(split).labels()
            assert np.bincount(y, minlength=10).tolist() == counts[split][0]
        x, _ = ds.split("train").read_snippets([0])
        assert -0.5 < float(x.mean()) < 0.5  # normalised


@pytest.mark.skipif(not FULL.is_dir(), reason="full MNIST not present (../shared/data/mnist)")
def test_full_mnist(tmp_path):
    s = prepare(FULL, tmp_path / "mnist.h5", kind="mnist")
    assert s["splits"] == {"train": {"samples": 60000, "snippets": 1875},
                           "test": {"samples": 10000, "snippets": 313}}
    with open_dataset(tmp_path / "mnist.h5") as ds:
        assert np.bincount(ds.split("train").labels()).tolist() == [
            5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        assert np.bincount(ds.split("test").labels()).tolist() == [
            980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        tr = ds.split("train").cache_all()  # verifies every checksum
        assert tr.read_snippets([0, 1874])[0].shape == (32 + 32, 28, 28)
    x = read_idx(FULL / "train-images-idx3-ubyte.gz")
    assert x.shape == (60000, 28, 28) and round(float(x.mean()), 3) == 33.318
