"""Helpers of the data tests: synthetic splits, small prepared files, fake MNIST folders."""
from __future__ import annotations

import gzip

import h5py
import numpy as np

from raven_hpc.data import MNIST_NORMALIZATION, write_dataset

NORM = MNIST_NORMALIZATION


def images(n, seed=0, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 10, n)


def reference(x, norm=NORM):
    return ((x.astype(np.float64) * norm["scale"] - norm["mean"]) / norm["std"]).astype(np.float32)


def write(path, splits, **kw):
    args = dict(snippet_size=8, source="unit", num_classes=10, normalization=NORM)
    args.update(kw)
    return write_dataset(path, splits, **args)


def mutate_file(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def idx_bytes(arr, magic=None):
    magic = magic or (2051 if arr.ndim == 3 else 2049)
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + np.ascontiguousarray(arr, np.uint8).tobytes()


def mnist_dir(folder, n_train=100, n_test=30, gz=True, sep="-", seed=0):
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
            payload = idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(payload) if gz else payload)
    return data
