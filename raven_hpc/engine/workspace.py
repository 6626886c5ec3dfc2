"""Where ops get their kernels and memory: kernel tables and workspaces.

A kernel backend (:mod:`raven_hpc.kernels`: ``CpuBackend``, later a CUDA
one of the same shape) is chosen once per model -- ``build_model(...,
backend=)`` -- and reaches the ops through the :class:`Workspace` each op
application is given: ``ws.kernels`` is a :class:`KernelTable` of that
backend (``ws.kernels.act_forward(...)``, ``ws.kernels.gemm(a, b, out)``)
and ``ws.buf`` allocates with it.  Ops called without a workspace
(stand-alone, e.g. in tests) use the CPU backend, or the one
:func:`use_backend` sets: :func:`kernels_of` and :func:`buffer` make that
choice in one place.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from raven_hpc.kernels import CpuBackend

__all__ = ["CPU_BACKEND", "CPU_KERNELS", "KernelTable", "Workspace", "buffer", "kernels_of", "use_backend"]


class KernelTable:
    """The kernels of one backend as attributes: ``table.im2col(...)``.

    Each op's kernel is looked up in the backend once, on first use, and
    then kept as a plain attribute, so calls cost no registry lookup.  The
    backend's ``gemm`` and allocation (``empty``, ``zeros``) are attributes
    too.  An op the backend lacks raises the backend's error on first use.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.gemm: Callable = backend.gemm
        self.empty: Callable = backend.empty
        self.zeros: Callable = backend.zeros

    def __getattr__(self, op: str) -> Callable:
        if op.startswith("__"):  # copy/pickle probes are not kernels
            raise AttributeError(op)
        fn = self.backend.kernel(op)
        self.__dict__[op] = fn
        return fn

    def __repr__(self) -> str:
        return f"KernelTable({getattr(self.backend, 'name', self.backend)!r})"


CPU_BACKEND = CpuBackend()
CPU_KERNELS = KernelTable(CPU_BACKEND)
#: the kernel table of ops called without a workspace (innermost use_backend last)
_DEFAULT: List[KernelTable] = [CPU_KERNELS]


@contextlib.contextmanager
def use_backend(backend: Any) -> Iterator[KernelTable]:
    """Within the block, ops called without a workspace take their kernels
    and arrays from ``backend`` (e.g. to run stand-alone ops on a GPU)."""
    table = CPU_KERNELS if backend is None or backend is CPU_BACKEND else KernelTable(backend)
    _DEFAULT.append(table)
    try:
        yield table
    finally:
        _DEFAULT.pop()


class Workspace:
    """Scratch arrays reused across calls, keyed by name, and the kernels to fill them.

    ``buf(key, shape, dtype)`` returns an uninitialised C-contiguous array
    allocated by the backend.  Arrays whose first axis is the batch are kept
    at the largest batch seen and handed out as leading-row views, so
    alternating batch sizes do not reallocate.  One workspace belongs to one
    op application per forward pass: a layer applied twice in one graph
    needs two workspaces.  With ``reuse=False`` every ``buf`` call returns a
    fresh array (results stay valid; one such workspace may serve any number
    of ops).  ``backend`` defaults to the CPU backend.
    """

    __slots__ = ("_arrays", "backend", "kernels", "reuse")

    def __init__(self, backend: Any = None, reuse: bool = True) -> None:
        self._arrays: Dict[str, np.ndarray] = {}
        if backend is None or backend is CPU_BACKEND:
            self.backend, self.kernels = CPU_BACKEND, CPU_KERNELS
        else:
            self.backend, self.kernels = backend, KernelTable(backend)
        self.reuse = bool(reuse)

    def buf(self, key: str, shape: Tuple[int, ...], dtype=np.float32) -> np.ndarray:
        if not self.reuse:
            return self.kernels.empty(shape, dtype)
        a = self._arrays.get(key)
        if a is not None and a.dtype == dtype and a.ndim == len(shape) and a.shape[1:] == shape[1:] and shape:
            if a.shape[0] == shape[0]:
                return a
            if a.shape[0] > shape[0]:
                return a[: shape[0]]
        a = self.kernels.empty(shape, dtype)
        self._arrays[key] = a
        return a

    def clear(self) -> None:
        self._arrays.clear()

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def keys(self) -> Iterable[str]:
        return self._arrays.keys()


def kernels_of(ws: Optional[Workspace]) -> KernelTable:
    """The kernel table an op uses: its workspace's, else the default (CPU unless :func:`use_backend`)."""
    return _DEFAULT[-1] if ws is None else ws.kernels


def buffer(ws: Optional[Workspace], key: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
    """``ws.buf(key, shape, dtype)``, or a fresh array of the default backend without a workspace."""
    return _DEFAULT[-1].empty(shape, dtype) if ws is None else ws.buf(key, shape, dtype)
