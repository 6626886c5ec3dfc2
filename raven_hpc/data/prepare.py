"""Turn a dataset source into a prepared raven-hpc HDF5 file (``raven-hpc prepare``).

The sources and how each is read are described in :mod:`.sources`.

Without a test split in the source, ``test_fraction`` (default 0.1) of the
samples is set aside as the test split.  The train split is shuffled with
``shuffle_seed`` (so snippets are not class-sorted); the test split keeps its
order.  ``limit`` keeps the first N samples of each split (after shuffling).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .layout import MNIST_NORMALIZATION, first_nonfinite
from .sources import KINDS, load_logged, load_source, read_idx
from .writer import check_output_path, write_dataset

__all__ = ["prepare", "read_idx", "load_source", "KINDS", "MAX_CLASSES"]

#: most classes a prepared file may have (labels are class indices 0..K-1)
MAX_CLASSES = 1_000_000
#: labels up to this many classes are accepted however sparse they are; above
#: it, the largest label + 1 may be at most SPARSE_FACTOR x the distinct labels
SPARSE_MIN_CLASSES = 1000
SPARSE_FACTOR = 10


def _refuse_source_as_output(out: Path, files) -> None:
    """Raise when ``out`` exists and is one of ``files`` (same path, a symbolic
    link to it or a hard link of it): replacing it would lose the source."""
    try:
        st = os.stat(out)
    except OSError:
        return
    for f in files:
        try:
            fs = os.stat(f)
        except OSError:
            continue
        if (fs.st_dev, fs.st_ino) == (st.st_dev, st.st_ino):
            same = os.path.abspath(out) == os.path.abspath(f)
            how = "" if same else f" (the same file: {'a link to it' if out.is_symlink() else 'a hard link or a linked folder'})"
            raise DatasetError(
                f"{out} is the source file {f}{how}; writing the prepared file there would destroy the "
                "source, so choose another output name (e.g. out.h5)"
            )


def _check_classes(labels: dict, num_classes, where: str) -> None:
    """Check that the labels are class indices for ``num_classes`` (given, or
    the largest label + 1).

    ``labels`` maps split name -> int64 labels in source order (so sample
    numbers in messages are the source's).  Labels are class indices, so a
    class count above :data:`MAX_CLASSES`, or a largest label far above the
    number of distinct labels (ids rather than indices), is refused before
    anything is allocated per class.
    """
    ys = {k: v for k, v in labels.items() if v.size}
    top_split, top = max(((k, int(v.max())) for k, v in ys.items()), key=lambda kv: kv[1])
    i = int(np.argmax(ys[top_split]))
    remap = "remap them to 0..K-1 (e.g. numpy.unique(y, return_inverse=True)[1])"
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or not 1 <= num_classes <= MAX_CLASSES:
            raise DatasetError(f"num_classes must be an integer in [1, {MAX_CLASSES:,}], got {num_classes!r}")
        if top >= num_classes:
            raise DatasetError(
                f"{where}: {top_split} sample {i} has label {top}, outside [0, {num_classes}) for "
                f"num_classes={num_classes}; fix the labels or num_classes"
            )
        return
    if top + 1 > MAX_CLASSES:
        raise DatasetError(
            f"{where}: {top_split} sample {i} has label {top}; labels are class indices 0..K-1 and at most "
            f"{MAX_CLASSES:,} classes are supported; {remap}"
        )
    if top + 1 > SPARSE_MIN_CLASSES:
        distinct = int(np.unique(np.concatenate(list(ys.values()))).size)
        if top + 1 > SPARSE_FACTOR * distinct:
            raise DatasetError(
                f"{where}: {top_split} sample {i} has label {top}, which would make {top + 1:,} classes, but "
                f"the labels take only {distinct:,} distinct values; labels must be class indices 0..K-1: "
                f"{remap}, or give the class count (num_classes, --num-classes)"
            )


def _check_labels(name, y, where):
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{where}: {name} labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        ok = np.isfinite(y) & (y == np.round(np.nan_to_num(y)))
        if not ok.all():
            i = int(np.argmin(ok))
            raise DatasetError(f"{where}: {name} label {i} is {y[i]!r}; labels must be integers")
    elif y.dtype.kind not in "iub":
        raise DatasetError(f"{where}: {name} labels have dtype {y.dtype}; expected integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise DatasetError(f"{where}: {name} label {i} is {int(y[i])}; labels must be >= 0")
    return y


def _stats(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of all feature values (float64, blockwise)."""
    if x.dtype == np.uint8:
        h = np.bincount(np.ascontiguousarray(x).reshape(-1), minlength=256).astype(np.float64)
        v = np.arange(256, dtype=np.float64)
        n = h.sum()
        mean = float(h @ v / n)
        return mean, float(np.sqrt(h @ (v - mean) ** 2 / n))
    flat = x.reshape(x.shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    n = flat.size
    s = sum(float(flat[a:a + step].sum(dtype=np.float64)) for a in range(0, len(flat), step))
    mean = s / n
    ss = sum(float(((flat[a:a + step].astype(np.float64) - mean) ** 2).sum())
             for a in range(0, len(flat), step))
    return mean, float(np.sqrt(ss / n))


def _normalization(spec, kind: str, x: np.ndarray) -> dict:
    if spec is None or spec == "auto":
        spec = "mnist" if kind == "mnist" else "train"
    if isinstance(spec, dict):
        return {k: float(spec[k]) for k in ("scale", "mean", "std")}
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    if spec == "mnist":
        return dict(MNIST_NORMALIZATION)
    if spec == "none":
        return {"scale": scale, "mean": 0.0, "std": 1.0}
    if spec == "train":
        mean, std = _stats(x)
        std = std * scale if std > 0 else 1.0
        return {"scale": scale, "mean": mean * scale, "std": std}
    raise DatasetError(
        f"unknown normalization {spec!r}; use 'auto', 'mnist', 'train', 'none' or a dict "
        "with scale, mean, std"
    )


def prepare(
    source,
    out,
    *,
    kind: str = "auto",
    snippet_size: int = 32,
    force: bool = False,
    shuffle_seed: int | None = 0,
    test_fraction: float | None = None,
    limit: int | None = None,
    normalization=None,
    num_classes: int | None = None,
    compression: str | None = None,
) -> dict:
    """Read ``source``, arrange its splits and write the prepared HDF5 file ``out``.

    ``test_fraction``: share of the samples set aside as the test split when the
    source has none (default 0.1; 0 for no test split); giving it for a source
    with its own test split is an error.  ``normalization``: ``"auto"``/None
    (MNIST constants for kind ``mnist``, else train statistics), ``"mnist"``,
    ``"train"``, ``"none"`` or ``{"scale", "mean", "std"}``.  ``num_classes``
    defaults to the largest label + 1.  Returns a summary dict for the CLI:
    path, source, kind, splits ({name: {samples, snippets}}), feature_shape,
    feature_dtype, num_classes, snippet_size, normalization, bytes, seconds.
    """
    t0 = time.perf_counter()
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise DatasetError(f"limit must be a positive integer, got {limit!r}")
    if test_fraction is not None and not (0.0 <= float(test_fraction) < 1.0):
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    out = Path(out)
    # fail before the (possibly slow) read
    if Path(source).is_file():
        _refuse_source_as_output(out, [Path(source)])
    if out.exists() and not force:
        raise DatasetError(f"{out} already exists; pass --force (force=True) to overwrite it")
    check_output_path(out)
    kind, splits, read = load_logged(source, kind)
    _refuse_source_as_output(out, read)
    where = str(source)
    for name, (sx, _) in splits.items():  # indices as in the source, before shuffling
        bad = first_nonfinite(np.asarray(sx)) if np.ndim(sx) >= 2 else None
        if bad is not None:
            raise DatasetError(
                f"{where}: {name} sample {bad} has NaN or infinite features; clean the data "
                "before preparing"
            )
    x, y = splits["train"]
    y = _check_labels("train", y, where)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{where}: {x.shape[0]} training samples but {y.shape[0]} labels; they must match"
        )
    n = x.shape[0]
    if n == 0:
        raise DatasetError(f"{where}: the training data has no samples")
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    order = rng.permutation(n) if rng is not None else np.arange(n)
    test = None
    if "test" in splits:
        if test_fraction:
            raise DatasetError(
                f"{where}: the source already has a test split; leave test_fraction unset"
            )
        tx, ty = splits["test"]
        test = (tx, _check_labels("test", ty, where))
        _check_classes({"train": y, "test": test[1]}, num_classes, where)
    else:
        _check_classes({"train": y}, num_classes, where)
        frac = 0.1 if test_fraction is None else float(test_fraction)
        n_test = int(round(n * frac))
        if frac > 0 and n_test == 0:
            n_test = 1
        if n_test >= n:
            raise DatasetError(
                f"{where}: {n} samples are too few to set aside test_fraction={frac}; "
                "use test_fraction=0 or more data"
            )
        if n_test:
            if rng is not None:
                test_idx, order = np.sort(order[:n_test]), order[n_test:]
            else:
                test_idx, order = order[n - n_test:], order[:n - n_test]
            test = (x[test_idx], y[test_idx])
    if limit is not None:
        order = order[:int(limit)]
        if test is not None:
            test = (test[0][:int(limit)], test[1][:int(limit)])
    arranged = {"train": (np.ascontiguousarray(x[order]), y[order])}
    if test is not None:
        arranged["test"] = (np.ascontiguousarray(test[0]), test[1])
    max_label = max(int(v[1].max()) for v in arranged.values())
    if num_classes is None:
        num_classes = max_label + 1
    norm = _normalization(normalization, kind, arranged["train"][0])
    info = write_dataset(
        out, arranged, snippet_size=snippet_size, source=f"{kind}:{source}",
        num_classes=num_classes, normalization=norm, force=force, compression=compression,
    )
    return {
        "path": str(out),
        "source": str(source),
        "kind": kind,
        "splits": info["splits"],
        "feature_shape": list(arranged["train"][0].shape[1:]),
        "feature_dtype": np.dtype(arranged["train"][0].dtype).name,
        "num_classes": int(num_classes),
        "snippet_size": int(snippet_size),
        "normalization": norm,
        "bytes": info["bytes"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
