"""``prepare``: arranging a source's splits (shuffle, test split, limit,
normalisation, class checks) and writing them safely, and its errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from raven_hpc.data import MNIST_NORMALIZATION, open_dataset, prepare
from raven_hpc.errors import DatasetError
from tests.unit.data.datasets import mnist_dir


def test_idx_normalisation_from_train_stats(tmp_path):
    data = mnist_dir(tmp_path / "src")
    s = prepare(tmp_path / "src", tmp_path / "o.h5")
    x = data["train"][0] / 255.0
    assert s["normalization"]["scale"] == pytest.approx(1 / 255)
    assert s["normalization"]["mean"] == pytest.approx(x.mean())
    assert s["normalization"]["std"] == pytest.approx(x.std())
    s = prepare(tmp_path / "src", tmp_path / "m.h5", kind="mnist")
    assert s["normalization"] == pytest.approx(MNIST_NORMALIZATION)


def test_idx_shuffle_seed_limit_and_single_file(tmp_path):
    data = mnist_dir(tmp_path / "src")
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
