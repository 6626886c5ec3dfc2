"""CUDA kernels: master-side reductions, and the fixed-order sum of per-block partials.

Registers ``all_finite``, ``accumulate``, ``assign`` and ``fingerprint``
for ``"cuda"`` with the signatures and return values of
:mod:`raven_hpc.kernels.reduce` (whose functions are plain ``njit``
functions, not registered for the CPU).

Every reduction here is deterministic: no float atomics.  Each thread
accumulates its grid-stride elements in index order, each block sums its
threads in shared memory along a fixed tree
(:func:`~raven_hpc.kernels.cuda._blocks.block_sum`) and writes one row of a
``partials`` array, and a one-block kernel (:func:`sum_partials`) sums
those rows in a fixed order.  The result depends only on the launch
geometry (element count and block size), never on scheduling, so the same
input gives the same bits on every call.

The fingerprint derives the CPU's +-1 signs exactly (the same splitmix64
hash of ``(seed, i // 16)`` in uint64 arithmetic); its sums differ from the
CPU ones only by float64 round-off (a different summation order).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from numba import cuda, float64

from .._registry import register
from ..reduce import FP_PROJECTIONS, FP_SIZE
from . import _launch
from ._blocks import MAX_THREADS, block_sum

__all__ = ["accumulate", "all_finite", "assign", "dummy", "fingerprint", "read_partials", "sum_partials"]


@cuda.jit(device=True)
def _column_total(sh, parts, k):
    """Sum of column ``k`` of ``parts`` by one block: thread ``t`` adds rows
    ``t, t + blockDim, ...`` in order, then :func:`~._blocks.block_sum`."""
    tid = cuda.threadIdx.x
    acc = 0.0
    for b in range(tid, parts.shape[0], cuda.blockDim.x):
        acc += parts[b, k]
    return block_sum(sh, acc)


@cuda.jit
def _sum_partials_kernel(parts, res):
    sh = cuda.shared.array(MAX_THREADS, float64)
    for k in range(parts.shape[1]):
        total = _column_total(sh, parts, k)
        if cuda.threadIdx.x == 0:
            res[k] = total


def sum_partials(parts):
    """A device array of the column sums of the float64 ``(blocks, k)``
    ``parts``, in a fixed order (one block of :func:`_launch.threads`)."""
    res = cuda.device_array(parts.shape[1], np.float64)
    _sum_partials_kernel[1, _launch.threads()](parts, res)
    return res


def read_partials(parts) -> np.ndarray:
    """The column sums of ``parts`` (:func:`sum_partials`), copied to the host."""
    return sum_partials(parts).copy_to_host()


def dummy(dtype, ndim: int = 1):
    """A one-element device array standing in for an argument a kernel will
    not touch (an unused state array, or ``grad`` without ``want_grad``):
    the caller may pass those empty, and an empty array has no device
    pointer to hand to a kernel."""
    return cuda.device_array((1,) * ndim, dtype)


# -- all_finite -------------------------------------------------------------------------------

@cuda.jit
def _count_nonfinite(x, parts):
    sh = cuda.shared.array(MAX_THREADS, float64)
    bad = 0.0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        if not math.isfinite(x[i]):
            bad += 1.0
    total = block_sum(sh, bad)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x, 0] = total


@register("all_finite", "cuda")
def all_finite(x):
    """True when no element of the 1-D device array ``x`` is NaN or infinite."""
    blocks, t = _launch.grid(x.shape[0])
    parts = cuda.device_array((blocks, 1), np.float64)
    _count_nonfinite[blocks, t](x, parts)
    return bool(read_partials(parts)[0] == 0.0)


# -- accumulate / assign ----------------------------------------------------------------------

@cuda.jit
def _accumulate_kernel(acc, x):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc[i] += x[i]


@cuda.jit
def _assign_kernel(acc, x):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc[i] = x[i]


@register("accumulate", "cuda")
def accumulate(acc, x):
    """acc[i] += x[i] over ``x``'s length (acc float64, x float32), in place."""
    blocks, t = _launch.grid(x.shape[0])
    _accumulate_kernel[blocks, t](acc, x)


@register("assign", "cuda")
def assign(acc, x):
    """acc[i] = x[i] over ``x``'s length (acc float64, x float32), in place."""
    blocks, t = _launch.grid(x.shape[0])
    _assign_kernel[blocks, t](acc, x)


# -- fingerprint ------------------------------------------------------------------------------

_GOLDEN = 0x9E3779B97F4A7C15
_U64 = 2 ** 64


@cuda.jit
def _fingerprint_kernel(x, base, parts):
    """Per-block sums of the projections and the sum of squares.

    Thread ``t`` takes 16-element chunks ``t, t + gridsize, ...``; one
    splitmix64 hash of ``(seed, chunk)`` gives the signs of the chunk's 16
    elements, 4 bits each (bit ``k`` of nibble ``j``: projection ``k`` of
    element ``16 chunk + j``), exactly as on the CPU.
    """
    sh = cuda.shared.array(MAX_THREADS, float64)
    n = x.shape[0]
    p0 = 0.0
    p1 = 0.0
    p2 = 0.0
    p3 = 0.0
    sq = 0.0
    one = np.uint64(1)
    for blk in range(cuda.grid(1), (n + 15) // 16, cuda.gridsize(1)):
        h = base + np.uint64(blk) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
        lo = blk * 16
        for j in range(min(16, n - lo)):
            v = np.float64(x[lo + j])
            b = h >> np.uint64(4 * j)
            p0 += v * (2.0 * np.float64(b & one) - 1.0)
            p1 += v * (2.0 * np.float64((b >> one) & one) - 1.0)
            p2 += v * (2.0 * np.float64((b >> np.uint64(2)) & one) - 1.0)
            p3 += v * (2.0 * np.float64((b >> np.uint64(3)) & one) - 1.0)
            sq += v * v
    p0 = block_sum(sh, p0)
    p1 = block_sum(sh, p1)
    p2 = block_sum(sh, p2)
    p3 = block_sum(sh, p3)
    sq = block_sum(sh, sq)
    if cuda.threadIdx.x == 0:
        row = cuda.blockIdx.x
        parts[row, 0] = p0
        parts[row, 1] = p1
        parts[row, 2] = p2
        parts[row, 3] = p3
        parts[row, 4] = sq


@cuda.jit
def _fingerprint_finish(parts, out, finite):
    """One block: ``out[k]`` = column ``k`` of ``parts`` summed in a fixed
    order; ``finite[0]`` = 1 when the sum of squares and the projections'
    sum are finite (the CPU's test), else 0."""
    sh = cuda.shared.array(MAX_THREADS, float64)
    p0 = _column_total(sh, parts, 0)
    p1 = _column_total(sh, parts, 1)
    p2 = _column_total(sh, parts, 2)
    p3 = _column_total(sh, parts, 3)
    sq = _column_total(sh, parts, 4)
    if cuda.threadIdx.x == 0:
        out[0] = p0
        out[1] = p1
        out[2] = p2
        out[3] = p3
        out[4] = sq
        finite[0] = 1 if (math.isfinite(sq) and math.isfinite(p0 + p1 + p2 + p3)) else 0


@register("fingerprint", "cuda")
def fingerprint(x, seed, out):
    """:func:`raven_hpc.kernels.reduce.fingerprint` on the device.

    Writes the ``FP_PROJECTIONS`` +-1 projections of the 1-D device array
    ``x`` and its sum of squares (float64) to the device array ``out``
    (``FP_SIZE`` elements) and returns False when ``x`` holds a NaN or inf.
    The signs are the CPU's bit for bit; the sums agree with the CPU's to
    float64 round-off and are deterministic (fixed-order block sums).
    """
    n = x.shape[0]
    # the CPU's np.uint64(seed) * 0x9E3779B97F4A7C15, wrapping mod 2**64
    base = np.uint64((int(seed) % _U64) * _GOLDEN % _U64)
    blocks, t = _launch.grid((n + 15) // 16)
    parts = cuda.device_array((blocks, FP_SIZE), np.float64)
    finite = cuda.device_array(1, np.int64)
    if _launch.simulated():
        # the simulator runs the hash on NumPy uint64 scalars, which warn
        # when they wrap; wrapping mod 2**64 is the hash's meaning
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            _fingerprint_kernel[blocks, t](x, base, parts)
    else:
        _fingerprint_kernel[blocks, t](x, base, parts)
    _fingerprint_finish[1, _launch.threads()](parts, out, finite)
    return bool(finite.copy_to_host()[0])


if (FP_PROJECTIONS, FP_SIZE) != (4, 5):
    raise RuntimeError("the CUDA fingerprint kernels hold 4 projections and the sum of squares; "
                       f"kernels.reduce has {FP_PROJECTIONS} and {FP_SIZE}")
