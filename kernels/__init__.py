"""Numba kernels of raven-hpc, installed as ``raven_hpc.kernels``.

One op family per module (``dense``, ``activations``, ``losses``, ``optim``,
``conv``, ``pool``, ``norm``, ``reduce``); each kernel registers itself under
``(op, backend)``.  A rank picks its backend once and binds kernels from it
(the engine does this per model: ``build_model(..., backend=)``)::

    from raven_hpc.kernels import get_backend, get_kernel
    backend = get_backend("cpu")          # allocation, GEMM, kernels, copies
    sgd = backend.kernel("sgd_step")
    sgd = get_kernel("sgd_step", "cpu")   # the same kernel, looked up directly

CPU kernels are ``@njit(cache=True)``, compiled lazily on first call for the
dtypes they meet (float32 in training, float64 in gradient checks).  The CUDA
backend lives in ``cuda/`` and is imported only when asked for, so importing
this package never fails on a node without CUDA.
"""
from __future__ import annotations

from typing import Callable, List

from ._registry import BACKENDS, BackendUnavailableError, lookup, ops
from . import activations, dense, losses, optim  # noqa: F401  (registration)
from . import conv, pool  # noqa: F401  (registration)
from . import norm  # noqa: F401  (registration)
from .activations import ACTIVATIONS
from ._backend import CpuBackend, auto_reason, get_backend

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "BackendUnavailableError",
    "CpuBackend",
    "auto_reason",
    "available_backends",
    "get_backend",
    "get_kernel",
    "kernel_ops",
]


def get_kernel(op: str, backend: str = "cpu") -> Callable:
    """The kernel implementing ``op`` on ``backend``.

    Raises :class:`~raven_hpc.errors.ConfigError` for an unknown backend,
    :class:`BackendUnavailableError` (a ``ConfigError``) when the backend
    cannot run here, and ``KeyError`` for an op the backend does not have.
    """
    if backend == "cpu":
        return lookup(op, "cpu")
    if backend == "cuda":
        from . import cuda

        return cuda.get_kernel(op)
    from raven_hpc.errors import ConfigError

    raise ConfigError(f"unknown kernel backend {backend!r}; known backends: {', '.join(BACKENDS)}")


def kernel_ops(backend: str = "cpu") -> List[str]:
    """Names of the ops registered for ``backend``."""
    return ops(backend)


def available_backends() -> List[str]:
    """Backends usable on this node, ``"cpu"`` first."""
    out = ["cpu"]
    from . import cuda

    if cuda.is_available():
        out.append("cuda")
    return out
