"""Snippets as they travel to a rank that does not read the prepared file.

With ``data.delivery = "scatter"`` only rank 0 (and, fed by it, the
gradient collectors) holds the dataset; every task a worker is given comes
with its snippets' stored bytes in one *packet*: a raw ``uint8`` buffer,
no pickle.  This module is the packet's layout and what both ends do with
it -- no MPI, no files:

* :class:`DatasetInfo` -- what a rank needs to know about the dataset
  without opening it (feature shape and stored dtype, classes,
  normalisation, how snippets tile each split); rank 0 reads it from the
  file and hands it out with the configuration.
* :func:`pack` -- the sender's side: rows for the task's snippets, the
  bytes of those the receiver does not already hold.
* :class:`PacketView` -- the receiver's side: the rows, zero-copy views of
  each snippet's features and labels, and :meth:`PacketView.verify`, which
  checks every snippet with the checksum the reader uses
  (:func:`~raven_hpc.data.layout.snippet_checksum`).
* :class:`TaskData` -- a task's snippets on the receiver, read like a
  :class:`~raven_hpc.data.reader.Split` (``read_snippets``, normalised by
  the reader's :class:`~raven_hpc.data.layout.Normalizer`), so a task
  computes the same float32 batch as on a rank that reads the file.

Layout (all fields little-endian int64 unless stated)::

    header   [MAGIC, step, task, split index, rows, gen, kind, included samples]
    rows     rows x [snippet id, samples, checksum, offset]
             offset: the snippet's first sample in the included data, or
             HELD (-1): its bytes are not in the packet -- the receiver
             holds them (its cache, see raven_hpc.protocol.scatter)
    features included samples x feature_shape, the stored dtype (uint8
             stays uint8), in row order; padded to 8 bytes
    labels   included samples, int64

``gen`` is the generation of the sender's record of the receiver's cache
(a receiver clears its cache when the generation changes); ``kind`` is 0
for a gradient task, 1 for an evaluation task.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import LABEL_DTYPE, Normalizer, snippet_bounds, snippet_checksum, stored_dtype

__all__ = ["DatasetInfo", "PacketError", "PacketView", "TaskData", "pack", "packet_nbytes", "HELD", "MAGIC",
           "HEADER_FIELDS"]

MAGIC = 0x52564E31   # "RVN1"
HELD = -1
HEADER_FIELDS = ("magic", "step", "task", "split", "rows", "gen", "kind", "samples")
_H = {name: i for i, name in enumerate(HEADER_FIELDS)}
_HEADER_BYTES = 8 * len(HEADER_FIELDS)
_ROW = 4


class PacketError(ValueError):
    """A packet whose layout does not hold together (damaged in transit)."""


@dataclass
class DatasetInfo:
    """What a rank knows of the dataset without opening it."""

    feature_shape: tuple
    feature_dtype: str
    num_classes: int
    normalization: dict
    snippet_size: int
    splits: dict                      # name -> {"samples": N, "snippets": S}, in file order
    _counts: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        # asked for on every packet: computed once
        self._names = list(self.splits)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._stored = stored_dtype(np.dtype(self.feature_dtype))
        self._sample_nbytes = (int(np.prod(self.feature_shape, dtype=np.int64)) * self._stored.itemsize
                               + LABEL_DTYPE.itemsize)

    @classmethod
    def from_dataset(cls, ds) -> "DatasetInfo":
        """From an open :class:`~raven_hpc.data.reader.PreparedDataset`."""
        return cls(tuple(int(d) for d in ds.feature_shape), np.dtype(ds.feature_dtype).str, int(ds.num_classes),
                   {k: float(v) for k, v in ds.normalization.items()}, int(ds.snippet_size),
                   {name: {"samples": int(ds.split(name).num_samples), "snippets": int(ds.split(name).num_snippets)}
                    for name in ds.split_names})

    def to_dict(self) -> dict:
        return {"feature_shape": list(self.feature_shape), "feature_dtype": self.feature_dtype,
                "num_classes": self.num_classes, "normalization": dict(self.normalization),
                "snippet_size": self.snippet_size, "splits": {k: dict(v) for k, v in self.splits.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(tuple(int(x) for x in d["feature_shape"]), str(d["feature_dtype"]), int(d["num_classes"]),
                   dict(d["normalization"]), int(d["snippet_size"]), {k: dict(v) for k, v in d["splits"].items()})

    @property
    def split_names(self) -> list[str]:
        return self._names

    def split_index(self, name: str) -> int:
        return self._index[name]

    @property
    def stored(self) -> np.dtype:
        return self._stored

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample as stored (features) plus its label."""
        return self._sample_nbytes

    def counts(self, split: str) -> np.ndarray:
        """Samples per snippet of ``split`` (snippets tile it in order)."""
        c = self._counts.get(split)
        if c is None:
            c = snippet_bounds(int(self.splits[split]["samples"]), self.snippet_size)[1]
            c.flags.writeable = False
            self._counts[split] = c
        return c

    def normalizer(self) -> Normalizer:
        n = self.normalization
        return Normalizer(float(n["scale"]), float(n["mean"]), float(n["std"]))


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def packet_nbytes(info: DatasetInfo, rows: int, samples: int) -> int:
    """Bytes of a packet of ``rows`` snippets carrying ``samples`` samples."""
    feat = samples * (info.sample_nbytes - LABEL_DTYPE.itemsize)
    return _HEADER_BYTES + 8 * _ROW * rows + _pad8(feat) + 8 * samples


def pack(info: DatasetInfo, *, step: int, task: int, split: str, gen: int, kind: int, ids, checksums,
         held, data) -> np.ndarray:
    """A packet for the snippets ``ids`` (in the task's order) of ``split``.

    ``checksums``: each snippet's stored checksum; ``held``: for each,
    whether the receiver already holds it (its bytes are left out);
    ``data``: ``{id: (features in the stored dtype, int64 labels)}`` for the
    snippets whose bytes go in.  Returns a new ``uint8`` buffer."""
    ids = [int(i) for i in ids]
    counts = info.counts(split)
    samples = sum(int(counts[i]) for i, h in zip(ids, held) if not h)
    buf = np.zeros(packet_nbytes(info, len(ids), samples), np.uint8)
    view = PacketView(buf, info, check=False)
    h = view.header
    h[:] = (MAGIC, step, task, info.split_index(split), len(ids), gen, kind, samples)
    view._layout()
    rows = view.rows
    off = 0
    feats, labels = view.features_all, view.labels_all
    for k, (sid, crc, is_held) in enumerate(zip(ids, checksums, held)):
        c = int(counts[sid])
        rows[k] = (sid, c, int(crc), HELD if is_held else off)
        if not is_held:
            x, y = data[sid]
            feats[off:off + c] = x
            labels[off:off + c] = y
            off += c
    return buf


class PacketView:
    """Zero-copy views of a received packet (see the module docstring).

    Raises :class:`PacketError` when the header or the rows do not fit the
    buffer or the dataset (a packet damaged in transit)."""

    def __init__(self, buf: np.ndarray, info: DatasetInfo, check: bool = True):
        self.buf = buf
        self.info = info
        if buf.dtype != np.uint8 or buf.ndim != 1 or buf.nbytes < _HEADER_BYTES:
            raise PacketError(f"a snippet packet of {buf.nbytes} bytes is shorter than its header")
        self.header = buf[:_HEADER_BYTES].view(np.int64)
        if check:
            self._layout()

    def field(self, name: str) -> int:
        return int(self.header[_H[name]])

    def _layout(self) -> None:
        info, h = self.info, self.header
        n, samples = int(h[_H["rows"]]), int(h[_H["samples"]])
        if int(h[_H["magic"]]) != MAGIC or n < 0 or samples < 0:
            raise PacketError("not a snippet packet (damaged header)")
        if not 0 <= int(h[_H["split"]]) < len(info.splits):
            raise PacketError(f"split index {int(h[_H['split']])} is not one of the dataset's")
        if packet_nbytes(info, n, samples) != self.buf.nbytes:
            raise PacketError(f"a packet of {n} snippets and {samples} samples cannot be {self.buf.nbytes} bytes")
        a = _HEADER_BYTES
        b = a + 8 * _ROW * n
        self.rows = self.buf[a:b].view(np.int64).reshape(n, _ROW)
        fb = samples * (info.sample_nbytes - LABEL_DTYPE.itemsize)
        self.features_all = self.buf[b:b + fb].view(info.stored).reshape((samples,) + tuple(info.feature_shape))
        c = b + _pad8(fb)
        self.labels_all = self.buf[c:c + 8 * samples].view(LABEL_DTYPE)
        #: the snippets' bytes (features and labels): what a transit fault corrupts
        self.payload = self.buf[b:]

    @property
    def split(self) -> str:
        return self.info.split_names[self.field("split")]

    @property
    def ids(self) -> list[int]:
        return self.rows[:, 0].tolist()

    def held(self, k: int) -> bool:
        return int(self.rows[k, 3]) == HELD

    def snippet(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``k``'s features and labels (views into the buffer)."""
        off, c = int(self.rows[k, 3]), int(self.rows[k, 1])
        return self.features_all[off:off + c], self.labels_all[off:off + c]

    def check_rows(self, ids) -> list[int]:
        """The rows that do not fit: ids other than the task's ``ids`` (in
        order), sample counts other than the split's, or bytes outside the
        packet.  Returns the ids named by the task at the rows that differ."""
        ids = [int(i) for i in ids]
        counts = self.info.counts(self.split)
        total = self.field("samples")
        if len(ids) != self.rows.shape[0]:
            return ids
        bad = []
        nxt = 0
        for k, sid in enumerate(ids):
            rid, c, _, off = (int(v) for v in self.rows[k])
            ok = rid == sid and 0 <= sid < len(counts) and c == int(counts[sid])
            if off != HELD:
                ok = ok and off == nxt and 0 <= c and off + c <= total
                nxt = off + max(c, 0)
            if not ok:
                bad.append(sid)
        if not bad and nxt != total:
            bad = ids
        return bad

    def verify(self) -> list[int]:
        """The ids of the included snippets whose bytes fail their checksum
        (the function the reader uses).  Call :meth:`check_rows` first."""
        bad = []
        for k in range(self.rows.shape[0]):
            if self.held(k):
                continue
            x, y = self.snippet(k)
            if snippet_checksum(x, y) != (int(self.rows[k, 2]) & 0xFFFFFFFF):
                bad.append(int(self.rows[k, 0]))
        return bad


class TaskData:
    """A task's snippets on a rank that was sent them, read like a
    :class:`~raven_hpc.data.reader.Split`: ``read_snippets(ids)`` gives
    ``(x float32 normalised, y int64)``; ``snippets["count"]`` the samples
    per snippet of the whole split."""

    def __init__(self, info: DatasetInfo, split: str, data: dict, normalizer: Normalizer | None = None,
                 checksums: dict | None = None):
        self.info = info
        self.name = split
        self.data = data                       # id -> (stored features, int64 labels)
        self.checksums = checksums or {}       # id -> the checksum the packet carried (to send them on)
        self.snippets = {"count": info.counts(split)}
        self._norm = normalizer or info.normalizer()

    def read_snippets(self, ids) -> tuple[np.ndarray, np.ndarray]:
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        missing = [i for i in ids if i not in self.data]
        if missing:
            raise KeyError(f"snippets {missing} of split {self.name!r} were not sent with this task")
        counts = [self.data[i][1].shape[0] for i in ids]
        n = sum(counts)
        x = np.empty((n,) + tuple(self.info.feature_shape), np.float32)
        y = np.empty(n, np.int64)
        o = 0
        for sid, c in zip(ids, counts):
            raw, lab = self.data[sid]
            self._norm(raw, x[o:o + c])
            y[o:o + c] = lab
            o += c
        return x, y
