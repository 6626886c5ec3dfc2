"""Activations: the name -> code table, scalar rules and their kernels.

An elementwise activation is an integer **code**, so fused kernels (``dense.py``
and any layer that fuses a bias with an activation) take it as a plain
argument.  Up to two real **parameters** ride along as ``p0``/``p1``
(:data:`ACTIVATION_PARAMS` says which, in order); ``NaN`` -- the default of
every kernel -- selects the activation's standard value, so
``act_forward(x, out, code)`` is always the textbook function.

Backward works from one **saved** array per activation, chosen to keep memory
low (:data:`SAVES_INPUT`):

* the *output* ``y`` -- nothing beyond the result has to be kept:
  ``relu`` (``y > 0``), ``leaky_relu`` (``y > 0 ? 1 : slope``, needs
  ``slope >= 0``), ``elu`` / ``selu`` (``y + alpha`` on the negative side,
  needs ``alpha >= 0``), ``sigmoid`` (``y (1 - y)``), ``tanh`` (``1 - y^2``),
  ``softsign`` (``(1 - |y|)^2``), ``hardtanh`` (``min < y < max``);
* the *input* (pre-activation) ``x`` where ``y`` does not determine the
  slope: ``gelu`` and ``silu`` (not monotonic), ``softplus`` (its linear
  branch above ``threshold`` makes it non-invertible near the threshold).
  A fused caller must keep the pre-activation for these
  (:func:`raven_hpc.kernels.dense.bias_act_forward_keep`).

Values are computed in float64 and rounded once to the array's dtype, with
the formulas torch uses (exact erf GELU; softplus with ``beta``/``threshold``;
ELU via ``expm1``), so float32 results agree with torch to round-off.

Speed: each activation has its own loop (:func:`forward_loop`,
:func:`backward_loop`).  The piecewise-linear ones (relu, leaky_relu,
hardtanh, softsign) vectorise and beat torch on one core; the transcendental
ones are bound by scalar libm calls (``exp``/``erf``/``tanh``: numba
vectorises those only with Intel SVML) and slower than torch's SIMD
versions -- still small next to the GEMMs of a dense layer.

``softmax_forward`` / ``softmax_backward`` (last axis, optionally log) live
here too; they are not elementwise, hence not codes.

Adding an activation: a code and name below, its scalar rule and slope, one
branch in :func:`forward_loop` and :func:`backward_loop`, a reference in
``tests/unit/_naive.py`` and an ``OpCase`` row in ``tests/unit/engine/cases_act.py``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._registry import register

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_PARAMS",
    "SAVES_INPUT",
    "LINEAR",
    "RELU",
    "LEAKY_RELU",
    "ELU",
    "SELU",
    "GELU",
    "SILU",
    "SIGMOID",
    "TANH",
    "SOFTPLUS",
    "SOFTSIGN",
    "HARDTANH",
    "SELU_ALPHA",
    "SELU_SCALE",
    "act_params",
    "forward_loop",
    "backward_loop",
    "act_forward",
    "act_backward",
    "softmax_forward",
    "softmax_backward",
]

LINEAR = 0
RELU = 1
LEAKY_RELU = 2
ELU = 3
SELU = 4
GELU = 5
SILU = 6
SIGMOID = 7
TANH = 8
SOFTPLUS = 9
SOFTSIGN = 10
HARDTANH = 11
_NUM_CODES = 12

#: activation name -> kernel code.  ``"linear"`` is the normalised "none";
#: ``"swish"`` is another name of ``"silu"``.
ACTIVATIONS = {
    "linear": LINEAR,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "elu": ELU,
    "selu": SELU,
    "gelu": GELU,
    "silu": SILU,
    "swish": SILU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "softplus": SOFTPLUS,
    "softsign": SOFTSIGN,
    "hardtanh": HARDTANH,
}

#: parameterised activations: name -> {parameter: default}, in ``p0, p1``
#: order (torch's parameter names and defaults).
ACTIVATION_PARAMS = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
}

#: codes whose backward needs the activation's input; all others use its output
SAVES_INPUT = frozenset({GELU, SILU, SOFTPLUS})

#: SELU constants (Klambauer et al. 2017; the values torch uses)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_INV_SQRT2 = 0.70710678118654752440  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.39894228040143267794  # 1 / sqrt(2 pi)


def _default_table(slot: int) -> np.ndarray:
    out = np.full(_NUM_CODES, np.nan)
    for name, params in ACTIVATION_PARAMS.items():
        values = list(params.values())
        if slot < len(values):
            out[ACTIVATIONS[name]] = values[slot]
    return out


# frozen into the compiled kernels as constants
_P0_DEFAULT = _default_table(0)
_P1_DEFAULT = _default_table(1)


@njit(cache=True)
def act_params(act, p0, p1):
    """``(p0, p1)`` with ``NaN`` replaced by the activation's defaults."""
    if p0 != p0:
        p0 = _P0_DEFAULT[act]
    if p1 != p1:
        p1 = _P1_DEFAULT[act]
    return p0, p1


@njit(cache=True)
def _sigmoid(v):
    """Logistic function without overflow for large ``|v|`` (branch-free)."""
    e = math.exp(-abs(v))
    return (1.0 if v >= 0.0 else e) / (1.0 + e)


# -- scalar rules: f(v) and f'(saved) per activation, float64 -------------------------
# Slopes take what the activation saves (SAVES_INPUT: input, else output).  At
# kinks the slope is torch's choice: 0 for relu at 0, slope/alpha for
# leaky_relu/elu at 0, 0 at hardtanh's ends.


@njit(cache=True)
def _leaky_relu(v, slope):
    return v if v > 0.0 else v * slope


@njit(cache=True)
def _leaky_relu_slope(y, slope):
    return 1.0 if y > 0.0 else slope


@njit(cache=True)
def _elu(v, alpha):
    return v if v > 0.0 else alpha * math.expm1(v)


@njit(cache=True)
def _elu_slope(y, alpha):
    return 1.0 if y > 0.0 else y + alpha  # alpha e^x = y + alpha


@njit(cache=True)
def _selu(v):
    return SELU_SCALE * v if v > 0.0 else SELU_SCALE * SELU_ALPHA * math.expm1(v)


@njit(cache=True)
def _selu_slope(y):
    return SELU_SCALE if y > 0.0 else y + SELU_SCALE * SELU_ALPHA


@njit(cache=True)
def _gelu(v):
    return v * 0.5 * (1.0 + math.erf(v * _INV_SQRT2))


@njit(cache=True)
def _gelu_slope(x):
    return 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@njit(cache=True)
def _silu(v):
    return v * _sigmoid(v)


@njit(cache=True)
def _silu_slope(x):
    sg = _sigmoid(x)
    return sg * (1.0 + x * (1.0 - sg))


@njit(cache=True)
def _softplus(v, beta, threshold):
    bv = v * beta
    if bv > threshold:
        return v
    # log(1 + e^bv) without overflow: max(bv, 0) + log1p(e^-|bv|)
    return (max(bv, 0.0) + math.log1p(math.exp(-abs(bv)))) / beta


@njit(cache=True)
def _softplus_slope(x, beta, threshold):
    bx = x * beta
    return 1.0 if bx > threshold else _sigmoid(bx)


@njit(cache=True)
def _softsign(v):
    return v / (1.0 + abs(v))


@njit(cache=True)
def _softsign_slope(y):
    a = 1.0 - abs(y)  # 1 / (1 + |x|)
    return a * a


@njit(cache=True)
def _hardtanh(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@njit(cache=True)
def _hardtanh_slope(y, lo, hi):
    return 1.0 if lo < y < hi else 0.0


# -- loops over 1-D arrays: one per activation ------------------------------------------
@njit(cache=True)
def forward_loop(x, out, act, p0, p1):
    """``out[i] = act(x[i])`` over 1-D arrays for any code; parameters resolved."""
    n = x.shape[0]
    if act == RELU:
        for i in range(n):
            v = x[i]
            out[i] = v if v > 0 else 0
    elif act == LEAKY_RELU:
        for i in range(n):
            out[i] = _leaky_relu(np.float64(x[i]), p0)
    elif act == ELU:
        for i in range(n):
            out[i] = _elu(np.float64(x[i]), p0)
    elif act == SELU:
        for i in range(n):
            out[i] = _selu(np.float64(x[i]))
    elif act == GELU:
        for i in range(n):
            out[i] = _gelu(np.float64(x[i]))
    elif act == SILU:
        for i in range(n):
            out[i] = _silu(np.float64(x[i]))
    elif act == SIGMOID:
        for i in range(n):
            out[i] = _sigmoid(np.float64(x[i]))
    elif act == TANH:
        for i in range(n):
            out[i] = math.tanh(np.float64(x[i]))
    elif act == SOFTPLUS:
        for i in range(n):
            out[i] = _softplus(np.float64(x[i]), p0, p1)
    elif act == SOFTSIGN:
        for i in range(n):
            out[i] = _softsign(np.float64(x[i]))
    elif act == HARDTANH:
        for i in range(n):
            out[i] = _hardtanh(np.float64(x[i]), p0, p1)
    else:
        for i in range(n):
            out[i] = x[i]


@njit(cache=True)
def backward_loop(gy, s, out, act, p0, p1):
    """``out[i] = gy[i] * act'(s[i])`` over 1-D arrays for any code; parameters resolved."""
    n = gy.shape[0]
    if act == RELU:
        for i in range(n):
            out[i] = gy[i] if s[i] > 0 else 0
    elif act == LEAKY_RELU:
        for i in range(n):
            out[i] = gy[i] * _leaky_relu_slope(np.float64(s[i]), p0)
    elif act == ELU:
        for i in range(n):
            out[i] = gy[i] * _elu_slope(np.float64(s[i]), p0)
    elif act == SELU:
        for i in range(n):
            out[i] = gy[i] * _selu_slope(np.float64(s[i]))
    elif act == GELU:
        for i in range(n):
            out[i] = gy[i] * _gelu_slope(np.float64(s[i]))
    elif act == SILU:
        for i in range(n):
            out[i] = gy[i] * _silu_slope(np.float64(s[i]))
    elif act == SIGMOID:
        for i in range(n):
            y = np.float64(s[i])
            out[i] = gy[i] * (y * (1.0 - y))
    elif act == TANH:
        for i in range(n):
            y = np.float64(s[i])
            out[i] = gy[i] * (1.0 - y * y)
    elif act == SOFTPLUS:
        for i in range(n):
            out[i] = gy[i] * _softplus_slope(np.float64(s[i]), p0, p1)
    elif act == SOFTSIGN:
        for i in range(n):
            out[i] = gy[i] * _softsign_slope(np.float64(s[i]))
    elif act == HARDTANH:
        for i in range(n):
            out[i] = gy[i] * _hardtanh_slope(np.float64(s[i]), p0, p1)
    else:
        for i in range(n):
            out[i] = gy[i]


@register("act_forward")
@njit(cache=True)
def act_forward(x, out, act, p0=np.nan, p1=np.nan):
    """``out[i] = act(x[i])`` over 1-D arrays (``out`` may be ``x``)."""
    p0, p1 = act_params(act, p0, p1)
    forward_loop(x, out, act, p0, p1)


@register("act_backward")
@njit(cache=True)
def act_backward(gy, s, out, act, p0=np.nan, p1=np.nan):
    """``out[i] = gy[i] * act'(.)`` over 1-D arrays (``out`` may be ``gy``).

    ``s`` is what the activation saved: its input for codes in
    :data:`SAVES_INPUT`, its output otherwise.
    """
    p0, p1 = act_params(act, p0, p1)
    backward_loop(gy, s, out, act, p0, p1)


@register("softmax_forward")
@njit(cache=True)
def softmax_forward(x, out, log):
    """Row-wise ``softmax`` (or ``log_softmax`` when ``log``) of 2-D ``x``.

    Stable: works from ``x - max(row)``; sums in float64.  ``out`` may be
    ``x``.
    """
    n, c = x.shape
    if c == 0:
        return
    for i in range(n):
        m = np.float64(x[i, 0])
        for j in range(1, c):
            v = np.float64(x[i, j])
            if v > m:
                m = v
        s = 0.0
        if log:
            for j in range(c):
                s += math.exp(np.float64(x[i, j]) - m)
            lse = m + math.log(s)
            for j in range(c):
                out[i, j] = np.float64(x[i, j]) - lse
        else:
            for j in range(c):
                e = math.exp(np.float64(x[i, j]) - m)
                out[i, j] = e
                s += e
            inv = 1.0 / s
            for j in range(c):
                out[i, j] = out[i, j] * inv


@register("softmax_backward")
@njit(cache=True)
def softmax_backward(gy, y, out, log):
    """Gradient of row-wise (log-)softmax from its output ``y``.

    softmax: ``gx = y * (gy - sum(gy * y))``; log_softmax:
    ``gx = gy - exp(y) * sum(gy)``.  ``out`` may be ``gy``.
    """
    n, c = gy.shape
    for i in range(n):
        s = 0.0
        if log:
            for j in range(c):
                s += gy[i, j]
            for j in range(c):
                out[i, j] = gy[i, j] - math.exp(np.float64(y[i, j])) * s
        else:
            for j in range(c):
                s += np.float64(gy[i, j]) * y[i, j]
            for j in range(c):
                out[i, j] = y[i, j] * (gy[i, j] - s)
