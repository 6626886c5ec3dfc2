"""Writing a prepared-dataset file in the layout of :mod:`.layout`.

:func:`write_dataset` checks the splits (shapes, dtypes, finite features,
labels within ``num_classes``) before anything is written, then writes a
temporary file in the destination folder and moves it into place with
:func:`os.replace`.  :func:`check_output_path` lets a caller that reads a slow
source fail on an unwritable output before reading it.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import zlib
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..errors import DatasetError
from .layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_DTYPE,
    SNIPPET_DTYPE,
    check_normalization,
    first_nonfinite,
    snippet_bounds,
    split_order,
    stored_dtype,
)

__all__ = ["check_output_path", "write_dataset"]

_MAX_CHUNK_BYTES = 2**32 - 1  # HDF5 limit on one chunk
_COMPRESSIONS = (None, "gzip", "lzf")


def _check_split(path: Path, name: str, x, y, num_classes: int):
    where = f"{path}: split {name!r}"
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise DatasetError(f"{path}: invalid split name {name!r}; use a plain name like 'train'")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DatasetError(
            f"{where}: features must have shape (N, ...) with one row per sample, got {x.shape}; "
            "reshape 1-D data to (N, 1)"
        )
    if y.ndim != 1:
        raise DatasetError(f"{where}: labels must be a 1-D array (N,), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{where}: {x.shape[0]} feature rows but {y.shape[0]} labels; they must match"
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{where}: no samples; a split needs at least one sample")
    if x.dtype.kind == "b":
        x = x.astype(np.uint8)
    if x.dtype.kind not in "iuf" or x.dtype.itemsize > 8:
        raise DatasetError(
            f"{where}: features have dtype {x.dtype}; use an integer or float dtype"
        )
    bad = first_nonfinite(x)
    if bad is not None:
        raise DatasetError(
            f"{where}: sample {bad} has NaN or infinite features; clean the data before preparing"
        )
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            i = int(np.argmax(~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))))
            raise DatasetError(
                f"{where}: label of sample {i} is {y[i]!r}; labels must be integers"
            )
    elif y.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels have dtype {y.dtype}; they must be integers")
    y = y.astype(LABEL_DTYPE)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        i = int(np.argmax(out))
        raise DatasetError(
            f"{where}: label of sample {i} is {int(y[i])}, outside [0, {num_classes}); "
            "fix the labels or num_classes"
        )
    return x, y


def check_output_path(path) -> None:
    """Fail early, with one message, when ``path`` cannot be written.

    Checks that ``path`` is not a folder, that its nearest existing ancestor
    is a folder, and that a file can be created there (a probe file is made
    and removed again: permissions, read-only and pseudo file systems such as
    ``/proc`` all show up).  Missing folders below that ancestor are created
    by :func:`write_dataset`.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; give a file name such as {path / 'data.h5'}")
    anc = path.parent
    while not anc.exists() and not anc.is_symlink() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise DatasetError(
            f"cannot write {path}: {anc} is a file, not a folder; choose another output path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=anc)
    except OSError as exc:
        raise DatasetError(
            f"cannot write {path}: cannot create a file in {anc} ({exc.strerror or exc}); "
            "choose a writable output folder"
        ) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def write_dataset(
    path,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    snippet_size: int,
    source: str,
    num_classes: int,
    normalization: Mapping,
    force: bool = False,
    compression: str | None = None,
) -> dict:
    """Write ``splits`` ({name: (X, y)}) to ``path`` in the raven-hpc layout.

    The file appears atomically (temp file in the same folder, then
    :func:`os.replace`).  An existing file is refused unless ``force``.
    Returns ``{"path", "bytes", "splits": {name: {"samples", "snippets"}}}``.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; give a file name such as {path / 'data.h5'}")
    if path.exists() and not force:
        raise DatasetError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if isinstance(snippet_size, bool) or not isinstance(snippet_size, (int, np.integer)) \
            or snippet_size < 1:
        raise DatasetError(f"{path}: snippet_size must be an integer >= 1, got {snippet_size!r}")
    snippet_size = int(snippet_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise DatasetError(f"{path}: num_classes must be an integer >= 1, got {num_classes!r}")
    num_classes = int(num_classes)
    if compression not in _COMPRESSIONS:
        raise DatasetError(
            f"{path}: unknown compression {compression!r}; choose none, 'gzip' or 'lzf'"
        )
    scale, mean, std = check_normalization(normalization, str(path))
    if not splits:
        raise DatasetError(f"{path}: no splits given; need at least one (e.g. 'train')")

    checked = {}
    feature_shape = feature_dtype = None
    for name in split_order(splits):
        x, y = _check_split(path, name, *splits[name], num_classes)
        if feature_shape is None:
            feature_shape, feature_dtype = x.shape[1:], x.dtype
        elif x.shape[1:] != feature_shape:
            raise DatasetError(
                f"{path}: split {name!r} has samples of shape {x.shape[1:]} but the first split "
                f"has {feature_shape}; all splits must share one sample shape"
            )
        elif x.dtype != feature_dtype:
            raise DatasetError(
                f"{path}: split {name!r} has dtype {x.dtype} but the first split has "
                f"{feature_dtype}; convert them to one dtype"
            )
        checked[name] = (x, y)
    stored = stored_dtype(feature_dtype)
    row_bytes = int(np.prod(feature_shape, dtype=np.int64)) * stored.itemsize
    if row_bytes * snippet_size > _MAX_CHUNK_BYTES:
        raise DatasetError(
            f"{path}: a snippet of {snippet_size} samples is {row_bytes * snippet_size} bytes, "
            "over HDF5's 4 GiB chunk limit; use a smaller snippet_size"
        )

    check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or path.parent})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    info = {"path": str(path), "splits": {}}
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["source"] = str(source)
            f.attrs["feature_shape"] = np.asarray(feature_shape, dtype=np.int64)
            f.attrs["feature_dtype"] = np.dtype(feature_dtype).name
            f.attrs["num_classes"] = np.int64(num_classes)
            f.attrs["norm_scale"] = np.float64(scale)
            f.attrs["norm_mean"] = np.float64(mean)
            f.attrs["norm_std"] = np.float64(std)
            f.attrs["snippet_size"] = np.int64(snippet_size)
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for name, (x, y) in checked.items():
                info["splits"][name] = _write_split(
                    f, name, x, y, stored, snippet_size, compression
                )
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DatasetError(f"cannot write {path}: {exc}") from exc
        raise
    info["bytes"] = path.stat().st_size
    return info


def _write_split(f, name, x, y, stored, snippet_size, compression) -> dict:
    n = x.shape[0]
    chunk_rows = min(snippet_size, n)
    x = np.ascontiguousarray(x, dtype=stored)
    g = f.create_group(name)
    kw = {"compression": compression} if compression else {}
    g.create_dataset("features", data=x, chunks=(chunk_rows,) + x.shape[1:], **kw)
    g.create_dataset("labels", data=y, dtype=LABEL_DTYPE, chunks=(chunk_rows,), **kw)
    starts, counts = snippet_bounds(n, snippet_size)
    table = np.empty(starts.shape[0], dtype=SNIPPET_DTYPE)
    table["id"] = np.arange(starts.shape[0])
    table["start"] = starts
    table["count"] = counts
    crc = zlib.crc32
    for i, (a, c) in enumerate(zip(starts.tolist(), counts.tolist())):
        table["checksum"][i] = crc(y[a:a + c], crc(x[a:a + c])) & 0xFFFFFFFF
    g.create_dataset("snippets", data=table)
    return {"samples": int(n), "snippets": int(starts.shape[0])}
