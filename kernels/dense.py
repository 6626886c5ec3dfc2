"""Fused elementwise kernels of the dense (fully connected) layer.

The GEMMs stay in BLAS (numpy ``@`` with ``out=``); these kernels fuse what
sits around them into one pass over the ``(n, m)`` activations:

* forward:  ``z += b; z = act(z)`` in place on the GEMM output;
* backward: ``gz = gy * act'(y)`` and ``db = sum_rows(gz)`` together.
"""
from __future__ import annotations

from numba import njit

from ._registry import register
from .activations import RELU

__all__ = ["bias_act_forward", "bias_act_backward", "col_sum"]


@register("bias_act_forward")
@njit(cache=True)
def bias_act_forward(z, b, act):
    """In place on C-contiguous ``z`` (n, m): ``z = act(z + b)``."""
    n, m = z.shape
    if act == RELU:
        for i in range(n):
            for j in range(m):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else 0
    else:
        for i in range(n):
            for j in range(m):
                z[i, j] += b[j]


@register("bias_act_backward")
@njit(cache=True)
def bias_act_backward(gy, y, act, gz, db):
    """``gz = gy * act'(y)`` and ``db = gz.sum(axis=0)`` in one pass.

    ``y`` is the layer output (after the activation); ``gz`` may be ``gy``.
    ``db`` is overwritten.
    """
    n, m = gy.shape
    for j in range(m):
        db[j] = 0
    if act == RELU:
        for i in range(n):
            for j in range(m):
                v = gy[i, j] if y[i, j] > 0 else 0
                gz[i, j] = v
                db[j] += v
    else:
        for i in range(n):
            for j in range(m):
                v = gy[i, j]
                gz[i, j] = v
                db[j] += v


@register("col_sum")
@njit(cache=True)
def col_sum(g, out):
    """``out = g.sum(axis=0)`` for 2-D ``g`` (row order, no temporaries)."""
    n, m = g.shape
    for j in range(m):
        out[j] = 0
    for i in range(n):
        for j in range(m):
            out[j] += g[i, j]
