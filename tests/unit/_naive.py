"""Plain NumPy reference versions of the Numba kernels (slow, obvious).

Each returns new arrays instead of working in place; tests compare the
kernels in ``raven_hpc.kernels`` against these.
"""
from __future__ import annotations

import math

import numpy as np

from raven_hpc.kernels.activations import (
    ACTIVATION_PARAMS,
    ACTIVATIONS,
    ELU,
    GELU,
    HARDTANH,
    LEAKY_RELU,
    RELU,
    SELU,
    SIGMOID,
    SILU,
    SOFTPLUS,
    SOFTSIGN,
    TANH,
)

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _defaults(act):
    for name, params in ACTIVATION_PARAMS.items():
        if ACTIVATIONS[name] == act:
            return list(params.values()) + [math.nan] * (2 - len(params))
    return [math.nan, math.nan]


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _value(v, act, p0, p1):
    """act(v) from the textbook definitions (torch's parameter conventions)."""
    if act == RELU:
        return max(v, 0.0)
    if act == LEAKY_RELU:
        return v if v > 0 else v * p0
    if act == ELU:
        return v if v > 0 else p0 * math.expm1(v)
    if act == SELU:
        return _SELU_SCALE * v if v > 0 else _SELU_SCALE * _SELU_ALPHA * math.expm1(v)
    if act == GELU:
        return v * 0.5 * (1.0 + math.erf(v * 0.70710678118654752440))
    if act == SILU:
        return v * _sig(v)
    if act == SIGMOID:
        return _sig(v)
    if act == TANH:
        return math.tanh(v)
    if act == SOFTPLUS:
        return v if v * p0 > p1 else (max(v * p0, 0.0) + math.log1p(math.exp(-abs(v * p0)))) / p0
    if act == SOFTSIGN:
        return v / (1.0 + abs(v))
    if act == HARDTANH:
        return min(max(v, p0), p1)
    return v


def _slope(s, act, p0, p1):
    """act' from the saved value: the input for gelu/silu/softplus, else the output."""
    if act == RELU:
        return float(s > 0)
    if act == LEAKY_RELU:
        return 1.0 if s > 0 else p0
    if act == ELU:
        return 1.0 if s > 0 else s + p0
    if act == SELU:
        return _SELU_SCALE if s > 0 else s + _SELU_SCALE * _SELU_ALPHA
    if act == GELU:
        return 0.5 * (1.0 + math.erf(s * 0.70710678118654752440)) + s * 0.39894228040143267794 * math.exp(-0.5 * s * s)
    if act == SILU:
        return _sig(s) * (1.0 + s * (1.0 - _sig(s)))
    if act == SIGMOID:
        return s * (1.0 - s)
    if act == TANH:
        return 1.0 - s * s
    if act == SOFTPLUS:
        return 1.0 if s * p0 > p1 else _sig(s * p0)
    if act == SOFTSIGN:
        return (1.0 - abs(s)) ** 2
    if act == HARDTANH:
        return float(p0 < s < p1)
    return 1.0


def act_forward(x, act, p0=None, p1=None):
    """act(x) elementwise, computed in float64 and rounded to x's dtype."""
    d0, d1 = _defaults(act)
    p0, p1 = (d0 if p0 is None else p0), (d1 if p1 is None else p1)
    flat = x.astype(np.float64).reshape(-1)
    return np.array([_value(v, act, p0, p1) for v in flat]).reshape(x.shape).astype(x.dtype)


def act_backward(gy, s, act, p0=None, p1=None):
    """gy * act'(.) given the saved array ``s`` (see kernels/activations.py)."""
    d0, d1 = _defaults(act)
    p0, p1 = (d0 if p0 is None else p0), (d1 if p1 is None else p1)
    slope = np.array([_slope(v, act, p0, p1) for v in s.astype(np.float64).reshape(-1)]).reshape(s.shape)
    return (gy.astype(np.float64) * slope).astype(gy.dtype)


def bias_act_forward(z, b, act):
    return act_forward(z + b, act)


def bias_act_backward(gy, y, act):
    gz = act_backward(gy, y, act)
    return gz, gz.sum(axis=0)


def col_sum(g):
    return g.sum(axis=0)


def softmax_xent(logits, labels, smoothing=0.0):
    """(loss_sum, n_correct, grad) of summed softmax cross-entropy, in float64.

    The target is ``(1 - smoothing) onehot + smoothing / c``.
    """
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n, c = logits.shape
    target = np.full((n, c), smoothing / c)
    target[np.arange(n), labels] += 1.0 - smoothing
    loss = float(-(target * logp).sum())
    correct = int((np.argmax(logits, axis=1) == labels).sum())
    return loss, correct, np.exp(logp) - target


def softmax(x, log=False):
    """Row-wise (log-)softmax over the last axis, float64."""
    z = x.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return logp if log else np.exp(logp)


def onehot_loss(out, labels, kind, delta=1.0):
    """(loss_sum, n_correct, grad) of ``mse`` / ``bce_with_logits`` / ``huber``
    against one-hot targets, summed over samples and classes, float64."""
    z = out.astype(np.float64)
    t = np.zeros_like(z)
    t[np.arange(len(labels)), labels] = 1.0
    d = z - t
    if kind == "mse":
        loss, grad = (d * d).sum(), 2 * d
    elif kind == "bce_with_logits":
        p = 1.0 / (1.0 + np.exp(-z))
        loss = -(t * np.log(p) + (1 - t) * np.log1p(-p)).sum()
        grad = p - t
    elif kind == "huber":
        small = np.abs(d) <= delta
        loss = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta)).sum()
        grad = np.clip(d, -delta, delta)
    else:  # pragma: no cover
        raise ValueError(kind)
    correct = int((np.argmax(out, axis=1) == labels).sum())
    return float(loss), correct, grad


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD's update in float64; returns (new params, new buffer)."""
    p = p.astype(np.float64)
    d = g.astype(np.float64) + weight_decay * p
    if momentum != 0:
        buf = d.copy() if first else momentum * buf.astype(np.float64) + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf
