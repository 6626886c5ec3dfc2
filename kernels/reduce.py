"""Master-side reductions: checking and accumulating gradient sums.

The master adds every accepted gradient sum (float32) into a float64
accumulator, so the result does not depend on the order results arrive in
(to far below float32 round-off); and it checks each one is finite first.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["all_finite", "accumulate", "assign", "fingerprint", "FP_PROJECTIONS", "FP_SIZE"]

#: random +-1 projections in a fingerprint; then the sum of squares
FP_PROJECTIONS = 4
FP_SIZE = FP_PROJECTIONS + 1


@njit(cache=True)
def all_finite(x):
    """True when no element of the 1-D array is NaN or infinite."""
    bad = False
    for i in range(x.shape[0]):
        v = x[i]
        bad |= (v - v) != 0.0  # NaN - NaN and inf - inf are NaN; vectorises
    return not bad


@njit(cache=True)
def accumulate(acc, x):
    """acc[i] += x[i] (acc float64, x float32)."""
    for i in range(x.shape[0]):
        acc[i] += x[i]


@njit(cache=True)
def assign(acc, x):
    """acc[i] = x[i] (acc float64, x float32): the first result of a step."""
    for i in range(x.shape[0]):
        acc[i] = x[i]


@njit(cache=True, fastmath={"reassoc", "contract"})
def fingerprint(x, seed, out):
    """A gradient's fingerprint for comparing copies computed by different ranks.

    ``out[k] = sum_i s_k(i) * x[i]`` for ``k < FP_PROJECTIONS``, with signs
    ``s_k(i) = +-1`` drawn from a counter-based hash of ``(seed, i // 16)`` (no
    projection matrix is stored: every rank and the master derive the same
    signs), and ``out[FP_PROJECTIONS] = sum_i x[i]**2``; all in float64.
    Returns False when ``x`` holds a NaN or inf: they reach the sum of squares
    (float32 values cannot overflow it), so one pass also does
    :func:`all_finite`'s job.

    The sums may be reassociated (``fastmath`` "reassoc" only: NaN and inf
    keep their meaning), which lets the loop vectorise.

    Two honest copies differ only by float32 round-off, so their projections
    differ by ~1e-7..1e-5 x ||x||; a scaled, bit-flipped or otherwise wrong
    gradient moves at least one projection by far more (a change ``d`` moves
    each projection by ``sum s_k(i) d_i``, of size ~||d||, and is missed by
    all four only with probability ~2**-4 when ||d|| is at the tolerance,
    vanishing fast above it).
    """
    p0 = 0.0
    p1 = 0.0
    p2 = 0.0
    p3 = 0.0
    sq = 0.0
    n = x.shape[0]
    base = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    one = np.uint64(1)
    # one splitmix64 hash of (seed, block) gives the 4 signs of 16 elements
    for blk in range((n + 15) // 16):
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
    out[0] = p0
    out[1] = p1
    out[2] = p2
    out[3] = p3
    out[4] = sq
    return math.isfinite(sq) and math.isfinite(p0 + p1 + p2 + p3)


def warm_up() -> None:
    """Compile (or load from cache) with the signatures the master uses."""
    a = np.zeros(4, np.float64)
    x = np.ones(4, np.float32)
    all_finite(x)
    accumulate(a, x)
    assign(a, x)
    fingerprint(x, 0, np.zeros(FP_SIZE, np.float64))
