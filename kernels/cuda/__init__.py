"""CUDA backend (``numba.cuda``): the package its kernels belong in; none exist yet.

No CUDA kernel is registered.  :func:`get_kernel` raises
:class:`~raven_hpc.kernels.BackendUnavailableError` with the reason, never an
ImportError; :func:`is_available` is ``False`` until kernels exist *and* a
GPU is visible.  ``numba.cuda`` is imported lazily, only to probe the device.

The shape a CUDA backend takes: one module per op family mirroring the CPU
ones (``cuda/dense.py``, ``cuda/conv.py``, ...), each registering its
kernels under ``(op, "cuda")``, and :class:`CudaBackend` offering what
:class:`~raven_hpc.kernels.CpuBackend` does (``kernel``, ``empty``,
``zeros``, ``gemm``, ``to_device``, ``to_host``).  The engine takes every
kernel, GEMM and scratch array from the model's backend, so nothing in the
engine changes for it.
"""
from __future__ import annotations

from typing import Callable

from .._registry import BackendUnavailableError, lookup, ops

__all__ = ["CudaBackend", "get_kernel", "is_available", "device_available"]


def device_available() -> bool:
    """Whether numba sees a usable CUDA device (False on any error)."""
    try:
        from numba import cuda
    except Exception:  # pragma: no cover - numba without its cuda module
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def is_available() -> bool:
    """Whether ``get_kernel(op, "cuda")`` can succeed on this node."""
    return bool(ops("cuda")) and device_available()


def get_kernel(op: str) -> Callable:
    if not ops("cuda"):
        raise BackendUnavailableError(
            "CUDA backend not available: this version of raven-hpc has no CUDA "
            "kernels yet; use backend = \"cpu\""
        )
    if not device_available():
        raise BackendUnavailableError(
            "CUDA backend not available: numba found no usable CUDA GPU/driver on "
            "this node; use backend = \"cpu\" or run on a GPU node"
        )
    return lookup(op, "cuda")


class CudaBackend:
    """The CUDA backend object; it raises the reason it cannot run on creation."""

    name = "cuda"

    def __init__(self) -> None:
        get_kernel("")  # raises BackendUnavailableError with the reason

    def kernel(self, op: str) -> Callable:
        return get_kernel(op)
