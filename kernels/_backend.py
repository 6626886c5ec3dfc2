"""Backend objects: one per device kind, picked once and handed to the engine.

A backend bundles what the engine needs from a device: array allocation,
GEMM, the kernel table and host<->device copies.  :class:`CpuBackend` serves
NumPy arrays and the Numba CPU kernels; a GPU backend is a class of the same
shape (``cuda.CudaBackend``).
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from ._registry import BACKENDS, lookup

__all__ = ["CpuBackend", "get_backend"]


class CpuBackend:
    """NumPy arrays and the Numba CPU kernels; copies are no-ops."""

    name = "cpu"

    def __init__(self) -> None:
        self._table: Dict[str, Callable] = {}

    def kernel(self, op: str) -> Callable:
        """The kernel of ``op``; callers bind it once, outside inner loops."""
        fn = self._table.get(op)
        if fn is None:
            fn = self._table[op] = lookup(op, "cpu")
        return fn

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray = None) -> np.ndarray:
        """``a @ b`` (BLAS through NumPy), into ``out`` when given."""
        return np.matmul(a, b, out=out)

    def to_device(self, host: np.ndarray) -> np.ndarray:
        return host

    def to_host(self, arr: np.ndarray) -> np.ndarray:
        return arr


def get_backend(name: str = "cpu"):
    """The backend object for ``name``; CUDA raises only when asked for here."""
    if name == "cpu":
        return CpuBackend()
    if name == "cuda":
        from . import cuda

        return cuda.CudaBackend()
    from raven_hpc.errors import ConfigError

    raise ConfigError(f"unknown kernel backend {name!r}; known backends: {', '.join(BACKENDS)}")
