"""Launch geometry and small device helpers shared by the CUDA kernel modules.

Every CUDA kernel of raven-hpc is written as a grid-stride loop, so any
grid covers any size; :func:`grid` picks one from the element count and
the block size.  The block size is a setting (``cluster.cuda_threads``, or
the ``RAVEN_CUDA_THREADS`` environment variable), defaulting to 256 threads
on a GPU and 32 under the simulator (``NUMBA_ENABLE_CUDASIM=1``), where each
thread is a Python thread and fewer threads per launch run far faster.

Launchers receive arrays in the backend's memory: CuPy arrays on a GPU
(numba launches kernels on them through ``__cuda_array_interface__``),
NumPy arrays under the simulator.  They never call NumPy on them; scalar
results come back through :func:`scalar_buffer` / :func:`read_scalar`.
"""
from __future__ import annotations

import os

from numba import config as _numba_config
from numba import cuda

__all__ = ["MAX_BLOCKS", "grid", "grid_2d", "read_scalar", "scalar_buffer", "set_threads", "simulated", "threads"]

#: more blocks than this only add scheduling; the grid-stride loop covers the rest
MAX_BLOCKS = 4096


def simulated() -> bool:
    """Whether numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(_numba_config.ENABLE_CUDASIM)


_THREADS = int(os.environ.get("RAVEN_CUDA_THREADS", "0") or 0) or (32 if simulated() else 256)


def threads() -> int:
    """The block size (threads per block) kernels are launched with."""
    return _THREADS


def set_threads(n: int) -> None:
    """Set the block size: a multiple of 32 from 32 to 1024."""
    global _THREADS
    n = int(n)
    if n < 32 or n > 1024 or n % 32:
        raise ValueError(f"CUDA block size must be a multiple of 32 in [32, 1024], got {n}")
    _THREADS = n


def grid(n: int, block: int = 0) -> tuple:
    """``(blocks, threads)`` for a grid-stride loop over ``n`` elements."""
    t = block or _THREADS
    return max(1, min(MAX_BLOCKS, (int(n) + t - 1) // t)), t


def grid_2d(rows: int, cols: int, tile: int = 16) -> tuple:
    """``((bx, by), (tile, tile))`` covering a ``rows x cols`` output once
    (x runs over columns, y over rows); kernels still guard the edges."""
    return ((max(1, (int(cols) + tile - 1) // tile), max(1, (int(rows) + tile - 1) // tile)), (tile, tile))


def scalar_buffer(dtype, n: int = 1):
    """A zeroed device array of ``n`` scalars for a kernel's reduced result."""
    import numpy as np

    return cuda.to_device(np.zeros(n, dtype=dtype))


def read_scalar(buf, i: int = 0) -> float:
    """Element ``i`` of a :func:`scalar_buffer`, copied to the host."""
    return buf.copy_to_host()[i].item()
