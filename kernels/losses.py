"""Loss kernels: loss, accuracy and gradient fused in one pass over the rows.

Every kernel takes the model output ``out`` (n, c), int64 ``labels`` (n,),
a gradient array ``grad`` (n, c) and ``want_grad``, and returns
``(loss_sum, n_correct, bad_row)``:

* ``loss_sum`` -- the loss **summed over samples** (float64; the master
  divides by the global sample count);
* ``n_correct`` -- rows whose argmax (first maximum) equals the label;
* ``bad_row`` -- the first row whose label is outside ``[0, c)``, or -1
  (the kernel stops there; the caller raises).

When ``want_grad`` the gradient of ``loss_sum`` w.r.t. ``out`` is written to
``grad`` (otherwise ``grad`` may be empty).  Sums are float64.  The
regression-style losses compare ``out`` with the one-hot encoding ``t`` of
the labels and sum over classes too (torch's ``reduction="sum"``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._registry import register

__all__ = ["softmax_xent", "mse_onehot", "bce_logits_onehot", "huber_onehot"]


@njit(cache=True)
def _argmax_row(out, i):
    c = out.shape[1]
    m = out[i, 0]
    arg = 0
    for j in range(1, c):
        v = out[i, j]
        if v > m:
            m = v
            arg = j
    return arg


@register("softmax_xent")
@njit(cache=True)
def softmax_xent(logits, labels, grad, want_grad, smoothing=0.0):
    """Softmax cross-entropy with *sum* reduction and label smoothing.

    With smoothing ``eps`` the target is ``(1 - eps) onehot + eps / c``
    (torch's ``cross_entropy(..., label_smoothing=eps)``): the row's loss is
    ``lse - (1 - eps) z[label] - eps mean(z)`` and its gradient
    ``softmax(z) - target``.  Stable: works from ``logits - max``.
    """
    n, c = logits.shape
    total = 0.0
    correct = 0
    off = smoothing / c
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return total, correct, i
        arg = _argmax_row(logits, i)
        m = float(logits[i, arg])
        if arg == lab:
            correct += 1
        s = 0.0
        if want_grad:
            for j in range(c):
                e = math.exp(float(logits[i, j]) - m)
                grad[i, j] = e
                s += e
            inv = 1.0 / s
            if smoothing > 0.0:
                for j in range(c):
                    grad[i, j] = grad[i, j] * inv - off
                grad[i, lab] -= 1.0 - smoothing
            else:
                for j in range(c):
                    grad[i, j] = grad[i, j] * inv
                grad[i, lab] -= 1.0
        else:
            for j in range(c):
                s += math.exp(float(logits[i, j]) - m)
        if smoothing > 0.0:
            zsum = 0.0
            for j in range(c):
                zsum += logits[i, j]
            total += math.log(s) + m - (1.0 - smoothing) * logits[i, lab] - smoothing * (zsum / c)
        else:
            total += math.log(s) + m - logits[i, lab]
    return total, correct, -1


@register("mse_onehot")
@njit(cache=True)
def mse_onehot(out, labels, grad, want_grad):
    """Squared error against one-hot targets: ``sum_ij (out_ij - t_ij)^2``.

    Gradient ``2 (out - t)``.
    """
    n, c = out.shape
    total = 0.0
    correct = 0
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return total, correct, i
        if _argmax_row(out, i) == lab:
            correct += 1
        for j in range(c):
            d = np.float64(out[i, j]) - (1.0 if j == lab else 0.0)
            total += d * d
            if want_grad:
                grad[i, j] = 2.0 * d
    return total, correct, -1


@register("bce_logits_onehot")
@njit(cache=True)
def bce_logits_onehot(out, labels, grad, want_grad):
    """Binary cross-entropy of sigmoid(out) against one-hot targets, summed.

    Per element ``max(z, 0) - z t + log1p(exp(-|z|))`` (stable for any
    ``z``); gradient ``sigmoid(z) - t``.
    """
    n, c = out.shape
    total = 0.0
    correct = 0
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return total, correct, i
        if _argmax_row(out, i) == lab:
            correct += 1
        for j in range(c):
            z = np.float64(out[i, j])
            t = 1.0 if j == lab else 0.0
            e = math.exp(-abs(z))
            total += max(z, 0.0) - z * t + math.log1p(e)
            if want_grad:
                sg = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
                grad[i, j] = sg - t
    return total, correct, -1


@register("huber_onehot")
@njit(cache=True)
def huber_onehot(out, labels, grad, want_grad, delta):
    """Huber loss against one-hot targets, summed (torch's ``huber_loss``).

    With ``d = out - t``: ``d^2 / 2`` where ``|d| <= delta``, else
    ``delta (|d| - delta / 2)``; gradient ``clip(d, -delta, delta)``.
    """
    n, c = out.shape
    total = 0.0
    correct = 0
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return total, correct, i
        if _argmax_row(out, i) == lab:
            correct += 1
        for j in range(c):
            d = np.float64(out[i, j]) - (1.0 if j == lab else 0.0)
            a = abs(d)
            if a <= delta:
                total += 0.5 * d * d
                g = d
            else:
                total += delta * (a - 0.5 * delta)
                g = delta if d > 0.0 else -delta
            if want_grad:
                grad[i, j] = g
    return total, correct, -1
