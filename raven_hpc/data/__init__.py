"""Prepared datasets: the HDF5 format (:mod:`.format`) and ``prepare`` (:mod:`.prepare`).

Never imports the engine or MPI.
"""
from __future__ import annotations

from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MNIST_NORMALIZATION,
    SNIPPET_DTYPE,
    PreparedDataset,
    Split,
    open_dataset,
    snippet_checksum,
    write_dataset,
)
from .prepare import KINDS, load_source, prepare, read_idx

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
