"""Elementwise activations: the name -> code table and 1-D kernels.

An activation is an integer code so fused kernels (``dense.py``) can take it
as a plain argument; adding one means a new code here plus one branch in
:func:`act_forward` / :func:`act_backward` (and in the fused dense kernels).
Backward rules are written in terms of the activation's *output* ``y`` so the
pre-activation never has to be kept.
"""
from __future__ import annotations

from numba import njit

from ._registry import register

__all__ = ["ACTIVATIONS", "LINEAR", "RELU", "act_forward", "act_backward"]

LINEAR = 0
RELU = 1

#: activation name -> kernel code.  ``"linear"`` is the normalised "none".
ACTIVATIONS = {"linear": LINEAR, "relu": RELU}


@register("act_forward")
@njit(cache=True)
def act_forward(x, out, act):
    """``out[i] = act(x[i])`` over 1-D arrays (``out`` may be ``x``)."""
    n = x.shape[0]
    if act == RELU:
        for i in range(n):
            v = x[i]
            out[i] = v if v > 0 else 0
    else:
        for i in range(n):
            out[i] = x[i]


@register("act_backward")
@njit(cache=True)
def act_backward(gy, y, out, act):
    """``out[i] = gy[i] * act'(.)`` given the activation output ``y``."""
    n = gy.shape[0]
    if act == RELU:
        for i in range(n):
            out[i] = gy[i] if y[i] > 0 else 0
    else:
        for i in range(n):
            out[i] = gy[i]
