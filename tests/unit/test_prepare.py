"""``prepare``: sources (IDX, npz, npy, CSV) into the HDF5 format, and their errors."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

from raven_hpc.data import MNIST_NORMALIZATION, open_dataset, prepare, read_idx
from raven_hpc.errors import DatasetError

ROOT = Path(__file__).parents[2]
SMALL = ROOT / "data" / "mnist-small"
FULL = Path(__file__).parents[2].parent / "shared/data/mnist"


def _idx(arr, magic=None):
    magic = magic or (2051 if arr.ndim == 3 else 2049)
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + np.ascontiguousarray(arr, np.uint8).tobytes()


def _mnist_dir(folder, n_train=100, n_test=30, gz=True, sep="-", seed=0):
    """A fake MNIST folder with class-sorted train labels (so shuffling is visible)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {
        "train": (rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
                  np.sort(rng.integers(0, 10, n_train)).astype(np.uint8)),
        "t10k": (rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
                 rng.integers(0, 10, n_test).astype(np.uint8)),
    }
    for stem, (x, y) in data.items():
        for role, arr, idx in (("images", x, "idx3"), ("labels", y, "idx1")):
            name = f"{stem}-{role}{sep}{idx}-ubyte" + (".gz" if gz else "")
            payload = _idx(arr)
            (folder / name).write_bytes(gzip.compress(payload) if gz else payload)
    return data


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz,sep", [(True, "-"), (False, "-"), (False, ".")])
def test_idx_folder(tmp_path, gz, sep):
    data = _mnist_dir(tmp_path / "src", gz=gz, sep=sep)
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


def test_idx_normalisation_from_train_stats(tmp_path):
    data = _mnist_dir(tmp_path / "src")
    s = prepare(tmp_path / "src", tmp_path / "o.h5")
    x = data["train"][0] / 255.0
    assert s["normalization"]["scale"] == pytest.approx(1 / 255)
    assert s["normalization"]["mean"] == pytest.approx(x.mean())
    assert s["normalization"]["std"] == pytest.approx(x.std())
    s = prepare(tmp_path / "src", tmp_path / "m.h5", kind="mnist")
    assert s["normalization"] == pytest.approx(MNIST_NORMALIZATION)


def test_idx_shuffle_seed_limit_and_single_file(tmp_path):
    data = _mnist_dir(tmp_path / "src")
    ty = data["train"][1]
    s = prepare(tmp_path / "src" / "train-images-idx3-ubyte.gz", tmp_path / "a.h5",
                shuffle_seed=None, limit=10, snippet_size=4)
    assert s["splits"] == {"train": {"samples": 10, "snippets": 3},
                           "test": {"samples": 10, "snippets": 3}}
    with open_dataset(tmp_path / "a.h5") as ds:
        np.testing.assert_array_equal(ds.split("train").load_all()[1], ty[:10])
    prepare(tmp_path / "src", tmp_path / "b.h5", shuffle_seed=7)
    prepare(tmp_path / "src", tmp_path / "c.h5", shuffle_seed=7)
    with open_dataset(tmp_path / "b.h5") as b, open_dataset(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(b.split("train").load_all()[0],
                                      c.split("train").load_all()[0])
        assert (b.split("train").snippets["checksum"]
                == c.split("train").snippets["checksum"]).all()


def _rewrite(path, payload, gz):
    path.write_bytes(gzip.compress(payload) if gz else payload)


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
    data = _mnist_dir(tmp_path / "src", gz=False)
    x, y = data["train"]
    img = tmp_path / "src" / "train-images-idx3-ubyte"
    lab = tmp_path / "src" / "train-labels-idx1-ubyte"
    if case == "magic":
        img.write_bytes((1234).to_bytes(4, "big") + img.read_bytes()[4:])
    elif case == "swapped":
        img.write_bytes(_idx(y))
    elif case == "truncated":
        img.write_bytes(img.read_bytes()[:-7])
    elif case == "trailing":
        img.write_bytes(img.read_bytes() + b"\0")
    elif case == "count":
        lab.write_bytes(_idx(y[:99]))
    elif case == "missing":
        lab.unlink()
    elif case == "short":
        img.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match=match):
        prepare(tmp_path / "src", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_idx_truncated_gzip(tmp_path):
    _mnist_dir(tmp_path / "src")
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


# ---------------------------------------------------------------- numpy sources

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


def test_npz_single_pair_splits_off_test(tmp_path):
    x, y = np.arange(200 * 3).reshape(200, 3).astype(np.float64), np.arange(200) % 4
    np.savez(tmp_path / "d.npz", X=x, y=y)
    s = prepare(tmp_path / "d.npz", tmp_path / "o.h5")
    assert s["splits"]["train"]["samples"] == 180 and s["splits"]["test"]["samples"] == 20
    with open_dataset(tmp_path / "o.h5") as ds:
        tr, te = ds.split("train").labels(), ds.split("test").labels()
    assert sorted(np.concatenate([tr, te]).tolist()) == sorted(y.tolist())
    s = prepare(tmp_path / "d.npz", tmp_path / "o.h5", force=True, test_fraction=0)
    assert list(s["splits"]) == ["train"]
    s = prepare(tmp_path / "d.npz", tmp_path / "o.h5", force=True, test_fraction=0.25,
                shuffle_seed=None)
    with open_dataset(tmp_path / "o.h5") as ds:  # unshuffled: the last quarter is the test
        np.testing.assert_array_equal(ds.split("test").labels(), y[150:])


@pytest.mark.parametrize("arrays,kw,match", [
    ({"a": np.zeros((3, 2)), "b": np.zeros(3)}, {}, r"cannot find features and labels among \['a', 'b'\]"),
    ({"x_train": np.zeros((3, 2))}, {}, "has x_train but not its labels"),
    ({"X": np.where(np.arange(60).reshape(30, 2) == 35, np.nan, 0.0), "y": np.zeros(30, int)},
     {}, "train sample 17 has NaN or infinite"),
    ({"X": np.zeros((30, 2)), "y": np.arange(30)}, {"num_classes": 10}, r"outside \[0, 10\)"),
    ({"X": np.zeros((30, 2)), "y": -np.ones(30)}, {}, "labels must be >= 0"),
    ({"X": np.zeros((30, 2)), "y": np.ones(30) / 3}, {}, "labels must be integers"),
    ({"X": np.zeros((30, 2)), "y": np.zeros(29)}, {}, "30 training samples but 29 labels"),
    ({"X": np.zeros((1, 2)), "y": np.zeros(1)}, {}, "too few to set aside"),
])
def test_npz_errors(tmp_path, arrays, kw, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=match):
        prepare(tmp_path / "d.npz", tmp_path / "o.h5", **kw)


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


# ---------------------------------------------------------------- CSV

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


# ---------------------------------------------------------------- embedded and real MNIST

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


# ---------------------------------------------------------------- output location, source safety, labels

def _npz(path, n=40, y=None):
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.random((n, 3)).astype(np.float32), y=np.arange(n) % 3 if y is None else y)
    return path


def _cli(*argv):
    """raven-hpc's main() in this process: (exit code, stderr)."""
    import contextlib
    import io

    from raven_hpc.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.mark.parametrize("where, match", [
    ("afile/out.h5", r"cannot write .*afile/out\.h5: .*afile is a file, not a folder"),
    ("afile/deeper/out.h5", r"afile is a file, not a folder"),
    ("/proc/raven-x.h5", r"cannot write /proc/raven-x\.h5: cannot create a file in /proc"),
])
def test_unwritable_output_is_one_clear_error(tmp_path, where, match):
    src = _npz(tmp_path / "a.npz")
    (tmp_path / "afile").write_text("not a folder")
    out = Path(where) if where.startswith("/") else tmp_path / where
    with pytest.raises(DatasetError, match=match):
        prepare(src, out, force=True)
    rc, err = _cli("prepare", src, out, "--force")
    assert rc == 2 and err.count("raven-hpc: error:") == 1 and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path):
    src = _npz(tmp_path / "a.npz")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DatasetError, match=r"cannot write .*ro/o\.h5: cannot create a file in .*ro"):
            prepare(src, ro / "o.h5")
    finally:
        ro.chmod(0o755)


def test_output_that_is_the_source_is_refused(tmp_path):
    """--force never replaces a source file: the same path, a symlink to it,
    a hard link of it, the file through a linked folder, or a sibling file
    the loader reads (an .npy's labels)."""
    src = _npz(tmp_path / "a.npz")
    want = src.read_bytes()
    (tmp_path / "sym.npz").symlink_to(src)
    os.link(src, tmp_path / "hard.npz")
    (tmp_path / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    for out in (src, tmp_path / "sym.npz", tmp_path / "hard.npz", tmp_path / "linkdir" / "a.npz"):
        with pytest.raises(DatasetError, match=r"is the source file .*a\.npz.*destroy the source"):
            prepare(src, out, force=True)
        rc, err = _cli("prepare", src, out, "--force")
        assert rc == 2 and "is the source file" in err and "Traceback" not in err, err
        assert src.read_bytes() == want
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "X.npy", np.ones((10, 2), np.float32))
    np.save(npy / "y.npy", np.arange(10) % 2)
    labels = (npy / "y.npy").read_bytes()
    for source in (npy, npy / "X.npy"):
        with pytest.raises(DatasetError, match=r"y\.npy is the source file"):
            prepare(source, npy / "y.npy", force=True)
        assert (npy / "y.npy").read_bytes() == labels
    prepare(src, tmp_path / "fine.h5")  # an ordinary output next to the source is fine


def test_huge_label_is_refused_before_anything_is_allocated_per_class(tmp_path):
    import time

    y = np.arange(100) % 3
    y[57] = 10**9
    src = _npz(tmp_path / "big.npz", n=100, y=y)
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match=r"train sample 57 has label 1000000000; labels are class indices"):
        prepare(src, tmp_path / "o.h5")
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "o.h5").exists()
    rc, err = _cli("prepare", src, tmp_path / "o.h5")
    assert rc == 2 and "sample 57 has label 1000000000" in err and "Traceback" not in err


def test_sparse_labels_are_refused_unless_num_classes_is_given(tmp_path):
    y = np.arange(200) % 4
    y[3] = 5000
    src = _npz(tmp_path / "s.npz", n=200, y=y)
    with pytest.raises(DatasetError, match=r"train sample 3 has label 5000, which would make 5,001 classes, but "
                                           r"the labels take only 5 distinct values"):
        prepare(src, tmp_path / "o.h5")
    assert prepare(src, tmp_path / "o.h5", num_classes=5001)["num_classes"] == 5001
    rc, _ = _cli("prepare", src, tmp_path / "o2.h5", "--num-classes", "5001")
    assert rc == 0
    with pytest.raises(DatasetError, match=r"train sample 3 has label 5000, outside \[0, 10\)"):
        prepare(src, tmp_path / "o3.h5", num_classes=10)
    dense = _npz(tmp_path / "d.npz", n=3000, y=np.arange(3000) % 2000)  # 2000 classes, all used: fine
    assert prepare(dense, tmp_path / "d.h5")["num_classes"] == 2000


def test_test_split_labels_are_checked_too(tmp_path):
    rng = np.random.default_rng(0)
    yt = np.zeros(10, np.int64)
    yt[4] = 2**40
    np.savez(tmp_path / "t.npz", x_train=rng.random((20, 2)), y_train=np.arange(20) % 2,
             x_test=rng.random((10, 2)), y_test=yt)
    with pytest.raises(DatasetError, match=r"test sample 4 has label 1099511627776"):
        prepare(tmp_path / "t.npz", tmp_path / "o.h5")


@pytest.mark.parametrize("argv, match", [
    (["imagse", "SRC", "OUT"], "unknown source kind 'imagse'; valid kinds: auto, mnist, idx, npz, npy, csv, images"),
    (["a", "b", "c", "d"], "got 4 argument(s): a b c d"),
    (["a"], "got 1 argument(s): a"),
])
def test_prepare_usage_errors_name_the_bad_word(tmp_path, argv, match):
    rc, err = _cli("prepare", *argv)
    assert rc == 2 and match in err and err.count("raven-hpc: error:") == 1, err


def test_prepare_accepts_the_images_kind_word(tmp_path):
    src = _npz(tmp_path / "a.npz")
    rc, err = _cli("prepare", "images", src, tmp_path / "o.h5")
    # the kind is taken (not a usage error): the images loader says what is wrong with the source
    assert rc == 2 and ("give the folder of class folders" in err or "needs Pillow" in err), err
