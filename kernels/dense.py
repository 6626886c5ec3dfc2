"""Fused elementwise kernels of the dense (fully connected) layer.

The GEMMs stay in BLAS (numpy ``@`` with ``out=``); these kernels fuse what
sits around them into one pass over the ``(n, m)`` activations:

* forward:  ``z += b; z = act(z)`` in place on the GEMM output
  (:func:`bias_act_forward`), or -- for activations whose backward needs
  the pre-activation (:data:`~raven_hpc.kernels.activations.SAVES_INPUT`)
  -- ``z += b; y = act(z)`` keeping ``z`` (:func:`bias_act_forward_keep`);
* backward: ``gz = gy * act'(s)`` and ``db = sum_rows(gz)`` together, where
  ``s`` is what the forward saved (output or pre-activation).

Activations are the integer codes of :mod:`.activations`, with optional
parameters ``p0``/``p1`` (``NaN``: the activation's default).  ``relu`` and
``linear`` keep dedicated loops (the MLP's hot path); every other code runs
row by row through :func:`~.activations.forward_loop` /
:func:`~.activations.backward_loop` (one loop per activation, float64 math).

Numba's on-disk cache does not notice edits to *other* modules: after
changing the scalar rules in ``activations.py``, delete this module's
``__pycache__/dense.*.nbi``/``.nbc`` files (an installed release is fine:
installing rewrites every file).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._registry import register
from .activations import LINEAR, RELU, act_params, backward_loop, forward_loop

__all__ = ["bias_act_forward", "bias_act_forward_keep", "bias_act_backward", "col_sum"]


@register("bias_act_forward")
@njit(cache=True)
def bias_act_forward(z, b, act, p0=np.nan, p1=np.nan):
    """In place on C-contiguous ``z`` (n, m): ``z = act(z + b)``."""
    n, m = z.shape
    if act == RELU:
        for i in range(n):
            for j in range(m):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else 0
    elif act == LINEAR:
        for i in range(n):
            for j in range(m):
                z[i, j] += b[j]
    else:
        p0, p1 = act_params(act, p0, p1)
        for i in range(n):  # row by row: the row is still in L1 for the second pass
            for j in range(m):
                z[i, j] += b[j]
            forward_loop(z[i], z[i], act, p0, p1)


@register("bias_act_forward_keep")
@njit(cache=True)
def bias_act_forward_keep(z, b, y, act, p0=np.nan, p1=np.nan):
    """``z += b`` in place (``z`` keeps the pre-activation) and ``y = act(z)``.

    For activations whose backward needs their input; ``y`` (n, m) must not
    be ``z``.
    """
    n, m = z.shape
    p0, p1 = act_params(act, p0, p1)
    for i in range(n):
        for j in range(m):
            z[i, j] += b[j]
        forward_loop(z[i], y[i], act, p0, p1)


@register("bias_act_backward")
@njit(cache=True)
def bias_act_backward(gy, s, act, gz, db, p0=np.nan, p1=np.nan):
    """``gz = gy * act'(s)`` and ``db = gz.sum(axis=0)`` in one pass.

    ``s`` is what the forward saved: the layer output (after the
    activation), or the pre-activation for codes in ``SAVES_INPUT``.
    ``gz`` may be ``gy``.  ``db`` is overwritten.
    """
    n, m = gy.shape
    for j in range(m):
        db[j] = 0
    if act == RELU:
        for i in range(n):
            for j in range(m):
                v = gy[i, j] if s[i, j] > 0 else 0
                gz[i, j] = v
                db[j] += v
    elif act == LINEAR:
        for i in range(n):
            for j in range(m):
                v = gy[i, j]
                gz[i, j] = v
                db[j] += v
    else:
        p0, p1 = act_params(act, p0, p1)
        for i in range(n):
            backward_loop(gy[i], s[i], gz[i], act, p0, p1)
            for j in range(m):
                db[j] += gz[i, j]


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
