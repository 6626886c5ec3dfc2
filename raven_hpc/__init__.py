"""raven-hpc: data-parallel neural-network training over MPI.

Rank 0 (the master) holds a define-by-run model, the optimizer, the data
schedule and the ledger; worker ranks compute gradients of identified
micro-snippets of an HDF5 dataset with Numba kernels.
"""
from __future__ import annotations

from .errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    ModelError,
    ProtocolError,
    RavenError,
    WorkerError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "RavenError",
    "ConfigError",
    "DatasetError",
    "ModelError",
    "CheckpointError",
    "ProtocolError",
    "WorkerError",
]
