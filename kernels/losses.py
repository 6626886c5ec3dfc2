"""Loss kernels: forward and gradient fused in one pass."""
from __future__ import annotations

import math

from numba import njit

from ._registry import register

__all__ = ["softmax_xent"]


@register("softmax_xent")
@njit(cache=True)
def softmax_xent(logits, labels, grad, want_grad):
    """Softmax cross-entropy with *sum* reduction.

    ``logits`` (n, c), ``labels`` (n,) int64.  Returns
    ``(loss_sum, n_correct, bad_row)``: the summed loss (float64), the number
    of rows whose argmax (first maximum) equals the label, and the first row
    whose label is outside ``[0, c)`` (or -1).  When ``want_grad`` the
    gradient of the summed loss, ``softmax(logits) - onehot(labels)``, is
    written to ``grad`` (n, c).  Stable: works from ``logits - max``.
    """
    n, c = logits.shape
    total = 0.0
    correct = 0
    for i in range(n):
        lab = labels[i]
        if lab < 0 or lab >= c:
            return total, correct, i
        m = logits[i, 0]
        arg = 0
        for j in range(1, c):
            v = logits[i, j]
            if v > m:
                m = v
                arg = j
        if arg == lab:
            correct += 1
        s = 0.0
        if want_grad:
            for j in range(c):
                e = math.exp(float(logits[i, j]) - m)
                grad[i, j] = e
                s += e
            inv = 1.0 / s
            for j in range(c):
                grad[i, j] = grad[i, j] * inv
            grad[i, lab] -= 1.0
        else:
            for j in range(c):
                s += math.exp(float(logits[i, j]) - m)
        total += math.log(s) + m - logits[i, lab]
    return total, correct, -1
