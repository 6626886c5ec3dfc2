"""The array module of an array: NumPy on the host, CuPy on a GPU.

The engine's glue between kernels -- contiguous copies, adds, splits,
concatenations, argmax -- runs where the arrays live: :func:`xp_of` gives
NumPy for host arrays (the CPU backend, and the CUDA backend under numba's
simulator, whose "device" arrays are host arrays) and CuPy for CuPy
arrays.  Kernels, GEMMs and scratch arrays come from the backend
(:mod:`raven_hpc.engine.workspace`); this module only keeps the glue from
pulling device arrays to the host.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["contiguous", "from_host", "on_host", "xp_of"]


def xp_of(*arrays: Any):
    """``numpy``, or ``cupy`` when any of ``arrays`` is a CuPy array."""
    for a in arrays:
        if a is not None and not isinstance(a, (np.ndarray, np.generic, int, float)) \
                and hasattr(a, "__cuda_array_interface__"):
            import cupy

            return cupy
    return np


def contiguous(a: Any, dtype=None):
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one), where it lives."""
    return xp_of(a).ascontiguousarray(a, dtype=dtype)


def on_host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array (copied from the device when it is a CuPy array)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__") and hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def from_host(dst: Any, host: np.ndarray) -> None:
    """Copy the host array ``host`` into ``dst``, a host or device array of its shape."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, host)
    else:
        dst.set(host)
