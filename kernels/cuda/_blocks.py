"""Block-wide reductions in shared memory, shared by the CUDA kernel modules.

:func:`block_sum`, :func:`block_max` and :func:`block_min` combine one
value per thread of the block and return the result to every thread.  All
three walk the same tree: thread ``t`` combines slot ``t + s`` into slot
``t`` for ``s`` halving from the largest power of two below the block size
(which need not be a power of two itself), with a barrier after every step.
The pairing depends only on the block size, so a sum is added up in the
same order on every run -- deterministic, no atomics.

Rules for callers: every thread of the block calls the function (it
synchronises); ``sh`` is a shared array of at least ``blockDim.x`` slots
(:data:`MAX_THREADS` covers any block) whose dtype holds the values; it is
free for reuse on return, so one scratch array serves consecutive
reductions.
"""
from __future__ import annotations

from numba import cuda

__all__ = ["MAX_THREADS", "block_max", "block_min", "block_sum"]

#: the largest block CUDA allows; shared scratch for a block reduction has this many slots
MAX_THREADS = 1024


@cuda.jit(device=True)
def _add(a, b):
    return a + b


@cuda.jit(device=True)
def _larger(a, b):
    """``b`` when it is larger, else ``a`` (a NaN ``b`` never replaces ``a``)."""
    return b if b > a else a


@cuda.jit(device=True)
def _smaller(a, b):
    """``b`` when it is smaller, else ``a``."""
    return b if b < a else a


def _tree(combine):
    """The block reduction that folds with the device function ``combine(kept, other)``."""

    @cuda.jit(device=True)
    def reduce(sh, v):
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh[tid] = v
        cuda.syncthreads()
        s = 1
        while s < nt:
            s *= 2
        s //= 2
        while s > 0:
            # slots >= s are only read in this step, slots < s only written
            if tid < s and tid + s < nt:
                sh[tid] = combine(sh[tid], sh[tid + s])
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        cuda.syncthreads()  # every thread has read sh[0] before anyone writes sh again
        return r

    return reduce


#: ``block_sum(sh, v)``: the sum of ``v`` over the block's threads, to every thread
block_sum = _tree(_add)
#: ``block_max(sh, v)``: the maximum of ``v`` over the block's threads, to every thread
block_max = _tree(_larger)
#: ``block_min(sh, v)``: the minimum of ``v`` over the block's threads, to every thread
block_min = _tree(_smaller)
