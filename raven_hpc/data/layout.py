"""The raven-hpc prepared-dataset format: one HDF5 layout for every source.

This module holds what the writer (:mod:`.writer`) and the reader
(:mod:`.reader`) must agree on: the names, the root attributes, the snippet
table and how snippets tile a split, the checksum, and the checks of values
both sides accept.  Writing and reading live in their own modules so each can
change without touching the other, and neither holds a copy of the layout.

Layout (format version 1)
-------------------------
Root attributes::

    format          "raven-hpc-dataset"
    format_version  1
    source          str    where the data came from (e.g. "mnist-idx:/path")
    feature_shape   int64[]  shape of one sample, e.g. [28, 28]
    feature_dtype   str    stored dtype of ``features`` ("uint8", "float32", ...)
    num_classes     int    labels lie in [0, num_classes)
    norm_scale      float  \\
    norm_mean       float   } x_float = (x * norm_scale - norm_mean) / norm_std,
    norm_std        float  /  applied on read (MNIST: 1/255, 0.1307, 0.3081)
    snippet_size    int    samples per snippet (the last one may be shorter)
    created         str    ISO-8601 UTC time of writing

One group per split (``/train``, ``/test``; any other name is allowed), with::

    features   (N, *feature_shape)  stored dtype, little-endian (uint8 stays uint8)
    labels     (N,)                 int64 little-endian
    snippets   (S,)  compound {id: int64, start: int64, count: int64,
                                checksum: uint32}

Readers ignore attributes they do not know (files written with a per-split
``class_counts`` attribute load as any other).

Snippet ``i`` has ``id == i`` and covers samples ``[start, start + count)``;
snippets tile the split in order: ``start[0] == 0``, each starts where the
previous one ends, every count equals ``snippet_size`` except the last
(``1 <= count <= snippet_size``).  ``checksum`` is ``zlib.crc32`` over the
snippet's feature bytes (C order, stored dtype, little-endian) followed by its
label bytes (int64 little-endian).  ``features`` and ``labels`` are chunked
along axis 0 by exactly ``snippet_size`` rows, so reading one snippet reads
one chunk.  Compression is off by default (speed); gzip or lzf may be chosen
when writing and is transparent to readers.

Files are written to a temporary file in the destination folder and moved into
place with :func:`os.replace`, so a reader never sees a half-written file.
"""
from __future__ import annotations

import math
import zlib
from typing import Iterable, Mapping

import numpy as np

from ..errors import DatasetError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SNIPPET_DTYPE",
    "MNIST_NORMALIZATION",
    "LABEL_DTYPE",
    "REQUIRED_ATTRS",
    "snippet_checksum",
    "stored_dtype",
    "snippet_bounds",
    "split_order",
    "first_nonfinite",
    "check_normalization",
    "Normalizer",
]

FORMAT_NAME = "raven-hpc-dataset"
FORMAT_VERSION = 1
SNIPPET_DTYPE = np.dtype(
    [("id", "<i8"), ("start", "<i8"), ("count", "<i8"), ("checksum", "<u4")]
)
MNIST_NORMALIZATION = {"scale": 1.0 / 255.0, "mean": 0.1307, "std": 0.3081}

LABEL_DTYPE = np.dtype("<i8")
#: root attributes a reader needs; ``created`` is informational
REQUIRED_ATTRS = (
    "format", "format_version", "source", "feature_shape", "feature_dtype",
    "num_classes", "norm_scale", "norm_mean", "norm_std", "snippet_size",
)
_SPLIT_ORDER = ("train", "test")
_BLOCK_ELEMS = 1 << 22  # elements per block when scanning big arrays


def snippet_checksum(features: np.ndarray, labels: np.ndarray) -> int:
    """CRC32 of one snippet: feature bytes (C order, little-endian) then labels (int64 LE)."""
    f = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<"))
    y = np.ascontiguousarray(labels, dtype=LABEL_DTYPE)
    return zlib.crc32(y, zlib.crc32(f)) & 0xFFFFFFFF


class Normalizer:
    """``(x * scale - mean) / std`` into float32 as ``x * a + b`` (a = scale/std, b = -mean/std).

    One multiply from the stored dtype straight into the float32 output, then
    one in-place add; both SIMD, on data that is still in cache, which beats
    a 256-entry lookup table (numbers in docs/decisions.md).  Elementwise, so
    normalising snippets one by one or a batch at once gives the same values:
    the reader and a rank that is sent the stored bytes (:mod:`.packet`)
    share this class.
    """

    def __init__(self, scale: float, mean: float, std: float):
        self.a = np.float32(scale / std)
        self.b = np.float32(-mean / std)

    def __call__(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(raw, self.a, out=out, casting="unsafe")
        np.add(out, self.b, out=out)
        return out


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype ``features`` of ``dtype`` are stored in (little-endian)."""
    return np.dtype(dtype).newbyteorder("<")


def snippet_bounds(n: int, snippet_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, counts)`` of the snippets tiling ``n`` samples."""
    starts = np.arange(0, n, snippet_size, dtype=np.int64)
    counts = np.minimum(snippet_size, n - starts).astype(np.int64)
    return starts, counts


def split_order(names: Iterable[str]) -> list[str]:
    """Split names in file order: ``train``, ``test``, then the others sorted."""
    names = list(names)
    first = [s for s in _SPLIT_ORDER if s in names]
    return first + sorted(s for s in names if s not in _SPLIT_ORDER)


def first_nonfinite(x: np.ndarray) -> int | None:
    """Index (along axis 0) of the first sample with NaN/inf, or None; blockwise."""
    if x.dtype.kind != "f" or x.shape[0] == 0:
        return None
    per = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_ELEMS // per)
    for a in range(0, x.shape[0], step):
        block = x[a:a + step].reshape(min(step, x.shape[0] - a), -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            return a + int(np.argmin(ok))
    return None


def check_normalization(normalization: Mapping, where: str) -> tuple[float, float, float]:
    """``(scale, mean, std)`` of ``normalization``; raises unless finite, scale != 0, std > 0."""
    try:
        scale = float(normalization["scale"])
        mean = float(normalization["mean"])
        std = float(normalization["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{where}: normalization must be a dict with numeric 'scale', 'mean' and "
            f"'std' (got {normalization!r})"
        ) from exc
    if not all(math.isfinite(v) for v in (scale, mean, std)) or std <= 0 or scale == 0:
        raise DatasetError(
            f"{where}: normalization needs finite values, scale != 0 and std > 0 "
            f"(got scale={scale}, mean={mean}, std={std})"
        )
    return scale, mean, std
