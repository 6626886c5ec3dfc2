"""Backend objects: one per device kind, picked once and handed to the engine.

A backend bundles what the engine needs from a device: array allocation,
GEMM, the kernel table and host<->device copies.  :class:`CpuBackend` serves
NumPy arrays and the Numba CPU kernels; a GPU backend is a class of the same
shape (``cuda.CudaBackend``).
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from ._registry import BACKENDS, BackendUnavailableError, lookup

__all__ = ["CpuBackend", "auto_reason", "get_backend"]


class CpuBackend:
    """NumPy arrays and the Numba CPU kernels; copies are no-ops."""

    name = "cpu"

    def __init__(self, note: str = "") -> None:
        self._table: Dict[str, Callable] = {}
        self.note = note   # why "auto" gave this rank the CPU on a node with a GPU

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

    #: arrays live in host memory: the engine's glue is NumPy
    xp = np

    def label(self) -> str:
        """What this rank computes on, in a word (start-up lines, hello messages)."""
        return f"cpu ({self.note})" if self.note else "cpu"

    def to_host(self, arr: np.ndarray, out: np.ndarray = None) -> np.ndarray:
        if out is None or out is arr:
            return arr
        np.copyto(out, arr)
        return out


def get_backend(name: str = "cpu"):
    """The backend object for ``name``: ``"cpu"``, ``"cuda"`` (raises
    :class:`BackendUnavailableError` with the reason when this node cannot
    run it) or ``"auto"`` (this rank's GPU when its node has one, else the
    CPU; see :func:`auto_reason`).  A rank's GPU is its local rank modulo
    the GPUs it sees (:func:`raven_hpc.kernels.cuda.set_local_rank`)."""
    global _AUTO_REASON
    if name == "cpu":
        return CpuBackend()
    if name in ("cuda", "auto"):
        from . import cuda

        if name == "cuda":
            return cuda.CudaBackend(device=cuda.local_device())
        if cuda.device_count() == 0:
            _AUTO_REASON = "no CUDA GPU on this node" + (" (the simulator is only used when asked for)"
                                                         if cuda.simulated() else "")
            return CpuBackend()
        try:
            return cuda.CudaBackend(device=cuda.local_device())
        except BackendUnavailableError as exc:   # a GPU it cannot use: the start-up line says why
            _AUTO_REASON = str(exc)
            return CpuBackend(note=f"auto, the GPU unusable: {exc}")
    from raven_hpc.errors import ConfigError

    raise ConfigError(f"unknown kernel backend {name!r}; known backends: {', '.join(BACKENDS)}, auto")


_AUTO_REASON = ""


def auto_reason() -> str:
    """Why ``"auto"`` last gave this rank the CPU ("" when it did not)."""
    return _AUTO_REASON
