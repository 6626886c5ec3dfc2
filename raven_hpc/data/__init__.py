"""Prepared datasets: the HDF5 layout (:mod:`.layout`), its writer (:mod:`.writer`)
and reader (:mod:`.reader`), and ``prepare`` (:mod:`.prepare`), which reads a
source (:mod:`.sources`) and writes the prepared file.

Never imports the engine or MPI.
"""
from __future__ import annotations

try:  # h5py is a hard dependency; keep the import error readable anyway (the
    # package runs first, so this covers reader and writer imported directly)
    import h5py
except ImportError as _exc:  # pragma: no cover - exercised only without h5py
    raise ImportError("raven_hpc.data needs h5py: pip install h5py") from _exc
del h5py

from .layout import FORMAT_NAME, FORMAT_VERSION, MNIST_NORMALIZATION, SNIPPET_DTYPE, snippet_checksum
from .prepare import prepare
from .reader import PreparedDataset, Split, open_dataset
from .sources import KINDS, load_source, read_idx
from .writer import write_dataset

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MNIST_NORMALIZATION",
    "SNIPPET_DTYPE",
    "KINDS",
    "PreparedDataset",
    "Split",
    "open_dataset",
    "write_dataset",
    "snippet_checksum",
    "prepare",
    "load_source",
    "read_idx",
]
