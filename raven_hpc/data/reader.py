"""Reading a prepared-dataset file: open, validate, read snippets, verify checksums.

:func:`open_dataset` gives a :class:`PreparedDataset` whose root attributes
and split layouts have been checked against :mod:`.layout`; each
:class:`Split` reads snippets as normalised float32 features and int64
labels, verifying each snippet's checksum, optionally keeping what it read
in memory.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import DatasetError
from .layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_DTYPE,
    REQUIRED_ATTRS,
    Normalizer,
    SNIPPET_DTYPE,
    check_normalization,
    snippet_bounds,
    snippet_checksum,
    split_order,
    stored_dtype,
)

__all__ = ["open_dataset", "PreparedDataset", "Split"]


def open_dataset(path, *, cache: bool = False) -> "PreparedDataset":
    """Open and validate a prepared file.

    With ``cache=True`` every split keeps what it reads in memory: a snippet
    is read from HDF5 and verified the first time it is asked for, then
    served from memory (see :meth:`Split.enable_cache`).
    """
    return PreparedDataset(path, cache=cache)


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
            names = split_order(k for k in self._file.keys())
            if not names:
                raise DatasetError(f"{p}: no split groups (expected /train, /test); prepare it again")
            for name in names:
                self._splits[name] = Split(self, name, cache=cache)
        except BaseException:
            self._file.close()
            raise

    def _load_header(self):
        f, p = self._file, self.path
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
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
            self._norm = check_normalization(norm, str(p))
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
        self._normalizer = Normalizer(*self._norm)

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
        self._stored = stored_dtype(ds.feature_dtype)
        self._norm = ds._normalizer
        self._raw = None  # memory cache of raw features (stored dtype), when enabled
        self._labels_mem = None  # every label, when kept in memory (keep_labels)
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
        starts, counts = snippet_bounds(n, ss)
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
            self._y = np.empty(self.num_samples, LABEL_DTYPE)
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

    def keep_labels(self) -> "Split":
        """Read every label once and serve labels from memory (8 bytes a
        sample); features are still read per snippet.  One HDF5 read per
        snippet instead of two, for a rank that reads many small ones
        (rank 0 scattering the data)."""
        if self._labels_mem is None:
            self._file_check()
            self._labels_mem = np.asarray(self._labels_ds[()], LABEL_DTYPE)
        return self

    # ---- reading -----------------------------------------------------------
    def _file_check(self):
        if self._ds.closed:
            raise DatasetError(f"{self._where}: the file is closed; open it again to read")

    def _read_rows(self, a, b, xout, yout):
        self._file_check()
        try:
            # Dataset.__getitem__ on a plain row range takes h5py's fast path,
            # cheaper per chunk than read_direct.
            xout[...] = self._features[a:b]
            yout[...] = self._labels_ds[a:b] if self._labels_mem is None else self._labels_mem[a:b]
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
        raw, y = self._raw, self._y
        for sid in sids.tolist():
            a = int(self._start[sid])
            b = a + int(self._count[sid])
            got = snippet_checksum(raw[a:b], y[a:b])
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
        if ids.size <= 64:     # a task's few snippets: plain Python is cheaper than numpy's calls
            lst = ids.tolist()
            out, pos = [], 0
            for k in range(1, len(lst) + 1):
                if k == len(lst) or lst[k] != lst[k - 1] + 1:
                    out.append((pos, lst[pos], k - pos))
                    pos = k
            return out
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
        x = np.empty((n,) + self._ds.feature_shape, np.float32)
        if self._raw is not None:
            self._fill_cache(ids, verify)
            raw, lab, start = self._raw, self._y, self._start
            y = np.empty(n, np.int64)
            o = 0
            for sid, c in zip(ids.tolist(), counts.tolist()):
                a = int(start[sid])
                self._norm(raw[a:a + c], x[o:o + c])
                y[o:o + c] = lab[a:a + c]
                o += c
            return x, y
        raw, y = self._read_uncached(ids, counts, verify)
        self._norm(raw, x)
        return x, y.astype(np.int64, copy=False)

    def read_raw(self, ids, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The stored bytes of the snippets ``ids``, in that order: features
        in the stored dtype (not normalised), shape ``(n, *feature_shape)``,
        and labels as little-endian int64 -- exactly what each snippet's
        checksum covers.  Checksums are verified as in :meth:`read_snippets`.
        What rank 0 sends a worker that does not read the file
        (:mod:`raven_hpc.data.packet`)."""
        ids = self._ids(ids)
        counts = self._count[ids]
        if self._raw is None:
            return self._read_uncached(ids, counts, verify)
        self._fill_cache(ids, verify)
        n = int(counts.sum())
        raw = np.empty((n,) + self._ds.feature_shape, self._stored)
        y = np.empty(n, LABEL_DTYPE)
        o = 0
        for sid, c in zip(ids.tolist(), counts.tolist()):
            a = int(self._start[sid])
            raw[o:o + c] = self._raw[a:a + c]
            y[o:o + c] = self._y[a:a + c]
            o += c
        return raw, y

    def _read_uncached(self, ids, counts, verify):
        """Read ``ids`` from the file (runs of consecutive ids in one read each)."""
        n = int(counts.sum())
        raw = np.empty((n,) + self._ds.feature_shape, self._stored)
        y = np.empty(n, LABEL_DTYPE)  # little-endian, as checksummed
        offs = [0]
        for c in counts.tolist():
            offs.append(offs[-1] + c)
        for pos, first, length in self._runs(ids):
            a = int(self._start[first])
            o0, o1 = offs[pos], offs[pos + length]
            self._read_rows(a, a + (o1 - o0), raw[o0:o1], y[o0:o1])
        if verify:
            for k, sid in enumerate(ids.tolist()):
                o0, o1 = offs[k], offs[k + 1]
                got = snippet_checksum(raw[o0:o1], y[o0:o1])
                if got != self._crc[sid]:
                    raise self._mismatch(sid, got)
        self._check_labels(y, 0)
        return raw, y

    def load_all(self, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as ``(x float32 normalised, y int64)`` (evaluation, one process)."""
        if self._raw is not None:
            self.cache_all(verify=verify)
            raw, y = self._raw, self._y.astype(np.int64, copy=True)
        else:
            raw = np.empty((self.num_samples,) + self._ds.feature_shape, self._stored)
            y = np.empty(self.num_samples, LABEL_DTYPE)
            self._read_rows(0, self.num_samples, raw, y)
            if verify:
                for sid, (a, c) in enumerate(zip(self._start.tolist(), self._count.tolist())):
                    got = snippet_checksum(raw[a:a + c], y[a:a + c])
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
