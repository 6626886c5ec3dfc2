"""The raven-hpc prepared-dataset format: one HDF5 layout for every source.

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

and the informational attribute ``class_counts`` (int64[num_classes]).

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

import datetime as _dt
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import DatasetError

try:  # h5py is a hard dependency; keep the import error readable anyway
    import h5py
except ImportError as _exc:  # pragma: no cover - exercised only without h5py
    raise ImportError("raven_hpc.data needs h5py: pip install h5py") from _exc

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SNIPPET_DTYPE",
    "MNIST_NORMALIZATION",
    "snippet_checksum",
    "check_output_path",
    "write_dataset",
    "open_dataset",
    "PreparedDataset",
    "Split",
]

FORMAT_NAME = "raven-hpc-dataset"
FORMAT_VERSION = 1
SNIPPET_DTYPE = np.dtype(
    [("id", "<i8"), ("start", "<i8"), ("count", "<i8"), ("checksum", "<u4")]
)
MNIST_NORMALIZATION = {"scale": 1.0 / 255.0, "mean": 0.1307, "std": 0.3081}

_LABEL_DTYPE = np.dtype("<i8")
_SPLIT_ORDER = ("train", "test")
_MAX_CHUNK_BYTES = 2**32 - 1  # HDF5 limit on one chunk
_COMPRESSIONS = (None, "gzip", "lzf")
_BLOCK_ELEMS = 1 << 22  # elements per block when scanning big arrays


# --------------------------------------------------------------------------
# helpers shared by writer and reader
# --------------------------------------------------------------------------

def snippet_checksum(features: np.ndarray, labels: np.ndarray) -> int:
    """CRC32 of one snippet: feature bytes (C order, little-endian) then labels (int64 LE)."""
    f = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<"))
    y = np.ascontiguousarray(labels, dtype=_LABEL_DTYPE)
    return zlib.crc32(y, zlib.crc32(f)) & 0xFFFFFFFF


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def _snippet_bounds(n: int, snippet_size: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, n, snippet_size, dtype=np.int64)
    counts = np.minimum(snippet_size, n - starts).astype(np.int64)
    return starts, counts


def _split_order(names: Iterable[str]) -> list[str]:
    names = list(names)
    first = [s for s in _SPLIT_ORDER if s in names]
    return first + sorted(s for s in names if s not in _SPLIT_ORDER)


def _first_nonfinite(x: np.ndarray) -> int | None:
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


class _Normalizer:
    """``(x * scale - mean) / std`` into float32 as ``x * a + b`` (a = scale/std, b = -mean/std).

    One multiply from the stored dtype straight into the float32 output, then
    one in-place add; both SIMD, on data that is still in cache, which beats
    a 256-entry lookup table (numbers in docs/decisions.md).
    """

    def __init__(self, scale: float, mean: float, std: float):
        self.a = np.float32(scale / std)
        self.b = np.float32(-mean / std)

    def __call__(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(raw, self.a, out=out, casting="unsafe")
        np.add(out, self.b, out=out)
        return out


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

def _check_normalization(normalization: Mapping, where: str) -> tuple[float, float, float]:
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
    bad = _first_nonfinite(x)
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
    y = y.astype(_LABEL_DTYPE)
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
    scale, mean, std = _check_normalization(normalization, str(path))
    if not splits:
        raise DatasetError(f"{path}: no splits given; need at least one (e.g. 'train')")

    checked = {}
    feature_shape = feature_dtype = None
    for name in _split_order(splits):
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
    stored = _stored_dtype(feature_dtype)
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
                    f, name, x, y, stored, snippet_size, num_classes, compression
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


def _write_split(f, name, x, y, stored, snippet_size, num_classes, compression) -> dict:
    n = x.shape[0]
    chunk_rows = min(snippet_size, n)
    x = np.ascontiguousarray(x, dtype=stored)
    g = f.create_group(name)
    kw = {"compression": compression} if compression else {}
    g.create_dataset("features", data=x, chunks=(chunk_rows,) + x.shape[1:], **kw)
    g.create_dataset("labels", data=y, dtype=_LABEL_DTYPE, chunks=(chunk_rows,), **kw)
    starts, counts = _snippet_bounds(n, snippet_size)
    table = np.empty(starts.shape[0], dtype=SNIPPET_DTYPE)
    table["id"] = np.arange(starts.shape[0])
    table["start"] = starts
    table["count"] = counts
    crc = zlib.crc32
    for i, (a, c) in enumerate(zip(starts.tolist(), counts.tolist())):
        table["checksum"][i] = crc(y[a:a + c], crc(x[a:a + c])) & 0xFFFFFFFF
    g.create_dataset("snippets", data=table)
    g.attrs["class_counts"] = np.bincount(y, minlength=num_classes).astype(np.int64)
    return {"samples": int(n), "snippets": int(starts.shape[0])}


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

def open_dataset(path, *, cache: bool = False) -> "PreparedDataset":
    """Open and validate a prepared file.

    With ``cache=True`` every split keeps what it reads in memory: a snippet
    is read from HDF5 and verified the first time it is asked for, then
    served from memory (see :meth:`Split.enable_cache`).
    """
    return PreparedDataset(path, cache=cache)


_REQUIRED_ATTRS = (
    "format", "format_version", "source", "feature_shape", "feature_dtype",
    "num_classes", "norm_scale", "norm_mean", "norm_std", "snippet_size",
)


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return tuple(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


class PreparedDataset:
    """A prepared raven-hpc HDF5 file, opened read-only and validated.

    Use as a context manager or call :meth:`close`.  ``split(name)`` gives a
    :class:`Split`.
    """

    def __init__(self, path, *, cache: bool = False):
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise DatasetError(
                f"{p}: no such file; create it with `raven-hpc prepare SOURCE {p}`"
            )
        if p.is_dir():
            raise DatasetError(f"{p} is a directory, not a prepared HDF5 file")
        try:
            is_h5 = h5py.is_hdf5(str(p))
        except OSError as exc:
            raise DatasetError(f"{p}: cannot read file: {exc}") from exc
        if not is_h5:
            raise DatasetError(
                f"{p} is not an HDF5 file; give a file made by `raven-hpc prepare`"
            )
        self._file = _open_h5(p)
        try:
            self._load_header()
            self._splits = {}
            names = _split_order(k for k in self._file.keys())
            if not names:
                raise DatasetError(f"{p}: no split groups (expected /train, /test); prepare it again")
            for name in names:
                self._splits[name] = Split(self, name, cache=cache)
        except BaseException:
            self._file.close()
            raise

    def _load_header(self):
        f, p = self._file, self.path
        missing = [a for a in _REQUIRED_ATTRS if a not in f.attrs]
        if "format" not in f.attrs or _attr_value(f.attrs["format"]) != FORMAT_NAME:
            got = _attr_value(f.attrs["format"]) if "format" in f.attrs else None
            raise DatasetError(
                f"{p}: not a raven-hpc dataset (root attribute format={got!r}, expected "
                f"{FORMAT_NAME!r}); create it with `raven-hpc prepare`"
            )
        if missing:
            raise DatasetError(
                f"{p}: missing root attribute(s) {', '.join(missing)}; the file is damaged or "
                "incomplete, prepare it again"
            )
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
        version = attrs["format_version"]
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{p}: format_version {version} is not supported (this raven-hpc reads version "
                f"{FORMAT_VERSION}); prepare the file again with this version"
            )
        try:
            self.feature_shape = tuple(int(d) for d in np.atleast_1d(f.attrs["feature_shape"]))
            self.feature_dtype = np.dtype(attrs["feature_dtype"])
            self.num_classes = int(attrs["num_classes"])
            self.snippet_size = int(attrs["snippet_size"])
            norm = {k: attrs[f"norm_{k}"] for k in ("scale", "mean", "std")}
            self._norm = _check_normalization(norm, str(p))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{p}: malformed root attributes ({exc}); prepare it again") from exc
        if self.num_classes < 1 or self.snippet_size < 1:
            raise DatasetError(
                f"{p}: num_classes={self.num_classes}, snippet_size={self.snippet_size} must be "
                ">= 1; prepare it again"
            )
        attrs["feature_shape"] = self.feature_shape
        self.attrs = attrs
        self.source = attrs["source"]
        self.normalization = dict(zip(("scale", "mean", "std"), self._norm))
        self._normalizer = _Normalizer(*self._norm)

    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def split(self, name: str) -> "Split":
        try:
            return self._splits[name]
        except KeyError:
            raise DatasetError(
                f"{self.path}: no split {name!r}; available: {', '.join(self._splits)}"
            ) from None

    def __getitem__(self, name: str) -> "Split":
        return self.split(name)

    def summary(self) -> dict:
        """Plain dict describing the file (for the CLI)."""
        return {
            "path": str(self.path),
            "source": self.source,
            "created": self.attrs.get("created"),
            "feature_shape": list(self.feature_shape),
            "feature_dtype": self.feature_dtype.name,
            "num_classes": self.num_classes,
            "snippet_size": self.snippet_size,
            "normalization": dict(self.normalization),
            "splits": {n: {"samples": s.num_samples, "snippets": s.num_snippets}
                       for n, s in self._splits.items()},
            "bytes": self.path.stat().st_size,
        }

    @property
    def closed(self) -> bool:
        return not bool(self._file.id.valid)

    def close(self) -> None:
        """Close the HDF5 file (cached splits keep serving from memory)."""
        if not self.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<PreparedDataset {str(self.path)!r} splits={self.split_names} "
                f"shape={self.feature_shape} classes={self.num_classes}>")


def _open_h5(p: Path):
    try:
        try:
            # Files are replaced atomically, never modified in place, so readers need no
            # lock; HDF5 locks fail on some cluster file systems (Lustre/NFS without flock).
            return h5py.File(p, "r", locking=False)
        except (TypeError, ValueError):  # pragma: no cover - old HDF5 without the option
            return h5py.File(p, "r")
    except OSError as exc:
        raise DatasetError(f"{p}: cannot open as HDF5 ({exc}); prepare it again") from exc


class Split:
    """One split (``train``, ``test``) of a :class:`PreparedDataset`.

    ``snippets`` is the snippet table as a numpy structured array
    (fields ``id``, ``start``, ``count``, ``checksum``); snippet ``i`` has id ``i``.
    """

    def __init__(self, ds: PreparedDataset, name: str, *, cache: bool = False):
        self._ds = ds
        self.name = name
        self._where = f"split {name!r} of {ds.path}"
        g = ds._file[name]
        if not isinstance(g, h5py.Group):
            raise DatasetError(f"{ds.path}: /{name} is not a group; prepare the file again")
        missing = [k for k in ("features", "labels", "snippets") if k not in g]
        if missing:
            raise DatasetError(
                f"{self._where}: missing dataset(s) {', '.join(missing)}; prepare the file again"
            )
        self._features, self._labels_ds = g["features"], g["labels"]
        fx, fy = self._features, self._labels_ds
        if not isinstance(fx, h5py.Dataset) or not isinstance(fy, h5py.Dataset) \
                or not isinstance(g["snippets"], h5py.Dataset):
            raise DatasetError(f"{self._where}: features/labels/snippets must be datasets")
        if fx.shape[1:] != ds.feature_shape or fx.ndim < 1:
            raise DatasetError(
                f"{self._where}: features have shape {fx.shape}, expected (N, "
                f"{', '.join(map(str, ds.feature_shape))}) from the feature_shape attribute"
            )
        if fx.dtype.newbyteorder("=") != ds.feature_dtype.newbyteorder("="):
            raise DatasetError(
                f"{self._where}: features are {fx.dtype}, root attribute says {ds.feature_dtype}"
            )
        if fy.ndim != 1 or fy.dtype.kind not in "iu":
            raise DatasetError(
                f"{self._where}: labels must be a 1-D integer dataset, got {fy.dtype} {fy.shape}"
            )
        self.num_samples = int(fx.shape[0])
        if fy.shape[0] != self.num_samples:
            raise DatasetError(
                f"{self._where}: {self.num_samples} feature rows but {fy.shape[0]} labels"
            )
        table = g["snippets"][()]
        names = table.dtype.names or ()
        if not all(k in names for k in SNIPPET_DTYPE.names):
            raise DatasetError(
                f"{self._where}: snippet table has fields {names}, expected "
                f"{SNIPPET_DTYPE.names}; prepare the file again"
            )
        table = np.asarray(table).astype(SNIPPET_DTYPE)
        self._check_table(table)
        self.snippets = table
        self.snippets.flags.writeable = False
        self.num_snippets = int(table.shape[0])
        self.snippet_size = ds.snippet_size
        self._start = table["start"].copy()
        self._count = table["count"].copy()
        self._crc = table["checksum"].astype(np.int64)
        self._stored = _stored_dtype(ds.feature_dtype)
        self._norm = ds._normalizer
        self._raw = None  # memory cache of raw features (stored dtype), when enabled
        self._y = None
        self._have = None
        self._verified = None
        if cache:
            self.enable_cache()

    def _check_table(self, t):
        n, ss, w = self.num_samples, self._ds.snippet_size, self._where
        s = t.shape[0]
        if t.ndim != 1 or s == 0:
            raise DatasetError(f"{w}: empty or malformed snippet table; prepare the file again")
        if not np.array_equal(t["id"], np.arange(s)):
            raise DatasetError(f"{w}: snippet ids must be 0..{s - 1} in order; prepare it again")
        starts, counts = _snippet_bounds(n, ss)
        if s != starts.shape[0] or not np.array_equal(t["start"], starts) \
                or not np.array_equal(t["count"], counts):
            raise DatasetError(
                f"{w}: snippet table ({s} snippets covering {int(t['count'].sum())} samples) "
                f"does not tile the {n} samples in snippets of {ss}; prepare the file again"
            )

    # ---- cache control -------------------------------------------------
    @property
    def cached(self) -> bool:
        return self._raw is not None

    def enable_cache(self) -> "Split":
        """Keep snippets in memory once read (each verified once, when first read)."""
        if self._raw is None:
            self._raw = np.empty((self.num_samples,) + self._ds.feature_shape, self._stored)
            self._y = np.empty(self.num_samples, _LABEL_DTYPE)
            self._have = np.zeros(self.num_snippets, bool)
            self._verified = np.zeros(self.num_snippets, bool)
        return self

    def cache_all(self, verify: bool = True) -> "Split":
        """Read the whole split into memory at once and (by default) verify every checksum."""
        self.enable_cache()
        if not self._have.all():
            self._read_rows(0, self.num_samples, self._raw, self._y)
            self._check_labels(self._y, 0)
            self._have[:] = True
        if verify:
            self._verify_cached(np.flatnonzero(~self._verified))
        return self

    def drop_cache(self) -> None:
        self._raw = self._y = self._have = self._verified = None

    # ---- reading -----------------------------------------------------------
    def _file_check(self):
        if self._ds.closed:
            raise DatasetError(f"{self._where}: the file is closed; open it again to read")

    def _read_rows(self, a, b, xout, yout):
        self._file_check()
        try:
            # Dataset.__getitem__ on a plain row range takes h5py's fast path
            # (~8 us per chunk, against ~70 us for read_direct).
            xout[...] = self._features[a:b]
            yout[...] = self._labels_ds[a:b]
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(
                f"{self._where}: cannot read samples {a}..{b - 1} ({exc}); the file may be "
                "damaged, prepare it again"
            ) from exc

    def _check_labels(self, y, first_row):
        nc = self._ds.num_classes
        if y.size and (int(y.min()) < 0 or int(y.max()) >= nc):
            i = int(np.argmax((y < 0) | (y >= nc)))
            raise DatasetError(
                f"{self._where}: label of sample {first_row + i} is {int(y[i])}, outside "
                f"[0, {nc}); the file is damaged, prepare it again"
            )

    def _mismatch(self, sid, got):
        a, c = int(self._start[sid]), int(self._count[sid])
        return DatasetError(
            f"checksum mismatch in snippet {sid} (samples {a}..{a + c - 1}) of {self._where}: "
            f"stored {int(self._crc[sid]):#010x}, computed {got:#010x}; the file is corrupt, "
            "prepare it again"
        )

    def _verify_cached(self, sids):
        crc, raw, y = zlib.crc32, self._raw, self._y
        for sid in sids.tolist():
            a = int(self._start[sid])
            b = a + int(self._count[sid])
            got = crc(y[a:b], crc(raw[a:b])) & 0xFFFFFFFF
            if got != self._crc[sid]:
                self._have[sid] = False
                raise self._mismatch(sid, got)
            self._verified[sid] = True

    def _ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise DatasetError(f"{self._where}: snippet ids must be a 1-D list of integers")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.num_snippets):
            bad = arr[(arr < 0) | (arr >= self.num_snippets)][0]
            raise DatasetError(
                f"{self._where}: snippet id {int(bad)} out of range [0, {self.num_snippets})"
            )
        return arr

    @staticmethod
    def _runs(ids: np.ndarray):
        """Split ``ids`` into runs of consecutive ids: yields (pos, first_id, length)."""
        if ids.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        pos = np.concatenate(([0], breaks))
        lens = np.diff(np.concatenate((pos, [ids.size])))
        return zip(pos.tolist(), ids[pos].tolist(), lens.tolist())

    def _fill_cache(self, ids, verify):
        need = ids[~self._have[ids]]
        if need.size:
            need = np.unique(need)
            for _, first, length in self._runs(need):
                a = int(self._start[first])
                b = int(self._start[first + length - 1] + self._count[first + length - 1])
                self._read_rows(a, b, self._raw[a:b], self._y[a:b])
                self._check_labels(self._y[a:b], a)
            self._have[need] = True
        if verify:
            todo = ids[~self._verified[ids]]
            if todo.size:
                self._verify_cached(np.unique(todo))

    def read_snippets(self, ids, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Samples of the snippets ``ids``, in that order, as ``(x float32, y int64)``.

        ``x`` is normalised, shape ``(n, *feature_shape)``.  With ``verify``,
        each snippet's CRC32 is checked (once per snippet when caching); a
        mismatch raises :class:`DatasetError` naming the snippet.
        """
        ids = self._ids(ids)
        counts = self._count[ids]
        n = int(counts.sum())
        shape = self._ds.feature_shape
        x = np.empty((n,) + shape, np.float32)
        y = np.empty(n, np.int64)
        norm = self._norm
        if self._raw is not None:
            self._fill_cache(ids, verify)
            raw, lab, start = self._raw, self._y, self._start
            o = 0
            for sid, c in zip(ids.tolist(), counts.tolist()):
                a = int(start[sid])
                norm(raw[a:a + c], x[o:o + c])
                y[o:o + c] = lab[a:a + c]
                o += c
            return x, y
        raw = np.empty((n,) + shape, self._stored)
        y = np.empty(n, _LABEL_DTYPE)  # little-endian, as checksummed
        offs = np.concatenate(([0], np.cumsum(counts))).tolist()
        for pos, first, length in self._runs(ids):
            a = int(self._start[first])
            o0, o1 = offs[pos], offs[pos + length]
            self._read_rows(a, a + (o1 - o0), raw[o0:o1], y[o0:o1])
        if verify:
            crc = zlib.crc32
            for k, sid in enumerate(ids.tolist()):
                o0, o1 = offs[k], offs[k + 1]
                got = crc(y[o0:o1], crc(raw[o0:o1])) & 0xFFFFFFFF
                if got != self._crc[sid]:
                    raise self._mismatch(sid, got)
        self._check_labels(y, 0)
        norm(raw, x)
        return x, y.astype(np.int64, copy=False)

    def load_all(self, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as ``(x float32 normalised, y int64)`` (evaluation, one process)."""
        if self._raw is not None:
            self.cache_all(verify=verify)
            raw, y = self._raw, self._y.astype(np.int64, copy=True)
        else:
            raw = np.empty((self.num_samples,) + self._ds.feature_shape, self._stored)
            y = np.empty(self.num_samples, _LABEL_DTYPE)
            self._read_rows(0, self.num_samples, raw, y)
            if verify:
                crc = zlib.crc32
                for sid, (a, c) in enumerate(zip(self._start.tolist(), self._count.tolist())):
                    got = crc(y[a:a + c], crc(raw[a:a + c])) & 0xFFFFFFFF
                    if got != self._crc[sid]:
                        raise self._mismatch(sid, got)
            self._check_labels(y, 0)
        x = np.empty(raw.shape, np.float32)
        return self._norm(raw, x), y.astype(np.int64, copy=False)

    def labels(self) -> np.ndarray:
        """All labels of the split (int64), unverified; cheap (no features read)."""
        if self._raw is not None and self._have.all():
            return self._y.astype(np.int64, copy=True)
        self._file_check()
        return self._labels_ds[()].astype(np.int64)

    def __repr__(self):
        return (f"<Split {self.name!r} samples={self.num_samples} snippets={self.num_snippets} "
                f"cached={self.cached}>")
