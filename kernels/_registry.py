"""The (op, backend) -> kernel registry and its errors.

Kept apart from ``__init__`` so that backend packages (``cuda/``) can
register into it without importing the CPU modules (and numba) twice.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from raven_hpc.errors import ConfigError

__all__ = ["BackendUnavailableError", "BACKENDS", "register", "lookup"]

#: Every backend name raven-hpc knows about, available or not.
BACKENDS = ("cpu", "cuda")

_KERNELS: Dict[Tuple[str, str], Callable] = {}


class BackendUnavailableError(ConfigError):
    """A kernel backend was asked for that this node cannot run."""


def register(op: str, backend: str = "cpu") -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` the kernel of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")

    def deco(fn: Callable) -> Callable:
        key = (op, backend)
        if key in _KERNELS and _KERNELS[key] is not fn:
            raise ValueError(f"kernel {op!r} already registered for backend {backend!r}")
        _KERNELS[key] = fn
        return fn

    return deco


def lookup(op: str, backend: str) -> Callable:
    try:
        return _KERNELS[(op, backend)]
    except KeyError:
        known = sorted(o for (o, b) in _KERNELS if b == backend)
        raise KeyError(
            f"no kernel {op!r} for backend {backend!r}; registered: {', '.join(known) or 'none'}"
        ) from None


def ops(backend: str) -> list:
    return sorted(o for (o, b) in _KERNELS if b == backend)
