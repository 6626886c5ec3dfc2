"""CUDA kernels: elementwise activations and row-wise (log-)softmax.

The launchers registered here take the arguments of the CPU kernels of
:mod:`raven_hpc.kernels.activations` (same names, order, defaults and
in-place outputs) and compute the same values:

* activations are the CPU module's integer codes, with ``p0``/``p1``
  resolved by its :func:`~raven_hpc.kernels.activations.act_params`
  (``NaN``: the activation's default), so both backends read one table;
* every value is computed in float64 and rounded once to the array's dtype,
  with the CPU's formulas (exact erf GELU, softplus with ``beta`` and
  ``threshold``, ELU/SELU via ``expm1``, overflow-free sigmoid) and the
  CPU's slopes at kinks.

:func:`act_value` and :func:`act_grad` are device functions, so fused
kernels elsewhere (``cuda/dense.py``) apply an activation to a value they
already hold in a register.

Elementwise kernels are grid-stride loops over the flat index (adjacent
threads touch adjacent elements).  Softmax gives one block per row: each
thread folds a strided slice of the row, then the shared-memory trees of
:mod:`._blocks` combine the partials in a fixed order, so results do not
depend on timing.
"""
from __future__ import annotations

import math

from numba import cuda, float64

from .._registry import register
from ..activations import (
    _INV_SQRT2,
    _INV_SQRT_2PI,
    ELU,
    GELU,
    HARDTANH,
    LEAKY_RELU,
    RELU,
    SELU,
    SELU_ALPHA,
    SELU_SCALE,
    SIGMOID,
    SILU,
    SOFTPLUS,
    SOFTSIGN,
    TANH,
    act_params,
)
from . import _launch
from ._blocks import MAX_THREADS, block_max, block_sum

__all__ = [
    "act_value",
    "act_grad",
    "row_block",
    "act_forward",
    "act_backward",
    "softmax_forward",
    "softmax_backward",
]

# -- scalar rules (device functions, float64 in and out) --------------------------------
@cuda.jit(device=True)
def _sigmoid(v):
    """Logistic function without overflow for large ``|v|``."""
    e = math.exp(-abs(v))
    num = 1.0 if v >= 0.0 else e
    return num / (1.0 + e)


@cuda.jit(device=True)
def act_value(v, act, p0, p1):
    """``act(v)`` for a float64 ``v``; ``p0``/``p1`` already resolved."""
    if act == RELU:
        return v if v > 0.0 else 0.0
    if act == LEAKY_RELU:
        return v if v > 0.0 else v * p0
    if act == ELU:
        return v if v > 0.0 else p0 * math.expm1(v)
    if act == SELU:
        return SELU_SCALE * v if v > 0.0 else SELU_SCALE * SELU_ALPHA * math.expm1(v)
    if act == GELU:
        return v * 0.5 * (1.0 + math.erf(v * _INV_SQRT2))
    if act == SILU:
        return v * _sigmoid(v)
    if act == SIGMOID:
        return _sigmoid(v)
    if act == TANH:
        return math.tanh(v)
    if act == SOFTPLUS:
        bv = v * p0
        if bv > p1:
            return v
        return (max(bv, 0.0) + math.log1p(math.exp(-abs(bv)))) / p0
    if act == SOFTSIGN:
        return v / (1.0 + abs(v))
    if act == HARDTANH:
        if v < p0:
            return p0
        if v > p1:
            return p1
        return v
    return v


@cuda.jit(device=True)
def act_grad(g, s, act, p0, p1):
    """``g * act'(.)`` for float64 ``g`` and the saved ``s`` (input for
    ``SAVES_INPUT`` codes, output otherwise); ``p0``/``p1`` resolved."""
    if act == RELU:
        return g if s > 0.0 else 0.0
    if act == LEAKY_RELU:
        return g * (1.0 if s > 0.0 else p0)
    if act == ELU:
        return g * (1.0 if s > 0.0 else s + p0)
    if act == SELU:
        return g * (SELU_SCALE if s > 0.0 else s + SELU_SCALE * SELU_ALPHA)
    if act == GELU:
        return g * (0.5 * (1.0 + math.erf(s * _INV_SQRT2)) + s * _INV_SQRT_2PI * math.exp(-0.5 * s * s))
    if act == SILU:
        sg = _sigmoid(s)
        return g * (sg * (1.0 + s * (1.0 - sg)))
    if act == SIGMOID:
        return g * (s * (1.0 - s))
    if act == TANH:
        return g * (1.0 - s * s)
    if act == SOFTPLUS:
        bx = s * p0
        return g * (1.0 if bx > p1 else _sigmoid(bx))
    if act == SOFTSIGN:
        a = 1.0 - abs(s)
        return g * (a * a)
    if act == HARDTANH:
        return g * (1.0 if (p0 < s and s < p1) else 0.0)
    return g


# -- kernels --------------------------------------------------------------------------------
@cuda.jit
def _act_forward_kernel(x, out, act, p0, p1):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        out[i] = act_value(float64(x[i]), act, p0, p1)


@cuda.jit
def _act_backward_kernel(gy, s, out, act, p0, p1):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, gy.shape[0], stride):
        out[i] = act_grad(float64(gy[i]), float64(s[i]), act, p0, p1)


@cuda.jit
def _softmax_forward_kernel(x, out, log):
    sm = cuda.shared.array(MAX_THREADS, float64)
    n, c = x.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        mx = -math.inf
        for j in range(tid, c, nt):
            v = float64(x[i, j])
            if v > mx:
                mx = v
        mx = block_max(sm, mx)
        acc = 0.0
        for j in range(tid, c, nt):
            acc += math.exp(float64(x[i, j]) - mx)
        total = block_sum(sm, acc)
        # each thread reads x[i, j] before writing out[i, j]: in place is safe
        if log:
            lse = mx + math.log(total)
            for j in range(tid, c, nt):
                out[i, j] = float64(x[i, j]) - lse
        else:
            inv = 1.0 / total
            for j in range(tid, c, nt):
                out[i, j] = math.exp(float64(x[i, j]) - mx) * inv


@cuda.jit
def _softmax_backward_kernel(gy, y, out, log):
    sm = cuda.shared.array(MAX_THREADS, float64)
    n, c = gy.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        acc = 0.0
        if log:
            for j in range(tid, c, nt):
                acc += float64(gy[i, j])
        else:
            for j in range(tid, c, nt):
                acc += float64(gy[i, j]) * float64(y[i, j])
        s = block_sum(sm, acc)
        if log:
            for j in range(tid, c, nt):
                out[i, j] = float64(gy[i, j]) - math.exp(float64(y[i, j])) * s
        else:
            for j in range(tid, c, nt):
                out[i, j] = float64(y[i, j]) * (float64(gy[i, j]) - s)


def row_block(c: int) -> int:
    """Threads per block for one-block-per-row kernels over rows of ``c``:
    the configured block size, cut to the row rounded up to a warp."""
    return max(32, min(_launch.threads(), (int(c) + 31) // 32 * 32))


# -- launchers (the CPU kernels' signatures) ----------------------------------------------
@register("act_forward", "cuda")
def act_forward(x, out, act, p0=float("nan"), p1=float("nan")):
    """``out[i] = act(x[i])`` over 1-D arrays (``out`` may be ``x``)."""
    n = x.shape[0]
    if n == 0:
        return
    act = int(act)
    p0, p1 = act_params(act, float(p0), float(p1))
    blocks, tpb = _launch.grid(n)
    _act_forward_kernel[blocks, tpb](x, out, act, float(p0), float(p1))


@register("act_backward", "cuda")
def act_backward(gy, s, out, act, p0=float("nan"), p1=float("nan")):
    """``out[i] = gy[i] * act'(.)`` over 1-D arrays (``out`` may be ``gy``).

    ``s`` is what the activation saved: its input for codes in
    ``SAVES_INPUT``, its output otherwise.
    """
    n = gy.shape[0]
    if n == 0:
        return
    act = int(act)
    p0, p1 = act_params(act, float(p0), float(p1))
    blocks, tpb = _launch.grid(n)
    _act_backward_kernel[blocks, tpb](gy, s, out, act, float(p0), float(p1))


@register("softmax_forward", "cuda")
def softmax_forward(x, out, log):
    """Row-wise ``softmax`` (or ``log_softmax`` when ``log``) of 2-D ``x``;
    ``out`` may be ``x``.  Stable (works from ``x - max(row)``), float64 sums."""
    n, c = x.shape
    if n == 0 or c == 0:
        return
    blocks = min(_launch.MAX_BLOCKS, n)
    _softmax_forward_kernel[blocks, row_block(c)](x, out, 1 if log else 0)


@register("softmax_backward", "cuda")
def softmax_backward(gy, y, out, log):
    """Gradient of row-wise (log-)softmax from its output ``y``.

    softmax: ``gx = y * (gy - sum(gy * y))``; log_softmax:
    ``gx = gy - exp(y) * sum(gy)``.  ``out`` may be ``gy``.
    """
    n, c = gy.shape
    if n == 0 or c == 0:
        return
    blocks = min(_launch.MAX_BLOCKS, n)
    _softmax_backward_kernel[blocks, row_block(c)](gy, y, out, 1 if log else 0)
