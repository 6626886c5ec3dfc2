"""Master-side reductions: checking and accumulating gradient sums.

The master adds every accepted gradient sum (float32) into a float64
accumulator, so the result does not depend on the order results arrive in
(to far below float32 round-off); and it checks each one is finite first.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["all_finite", "accumulate", "assign"]


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


def warm_up() -> None:
    """Compile (or load from cache) with the signatures the master uses."""
    a = np.zeros(4, np.float64)
    x = np.ones(4, np.float32)
    all_finite(x)
    accumulate(a, x)
    assign(a, x)
