"""Plain NumPy reference versions of the Numba kernels (slow, obvious).

Each returns new arrays instead of working in place; tests compare the
kernels in ``raven_hpc.kernels`` against these.
"""
from __future__ import annotations

import numpy as np

LINEAR, RELU = 0, 1


def act_forward(x, act):
    return np.maximum(x, 0) if act == RELU else x.copy()


def act_backward(gy, y, act):
    return gy * (y > 0) if act == RELU else gy.copy()


def bias_act_forward(z, b, act):
    return act_forward(z + b, act)


def bias_act_backward(gy, y, act):
    gz = act_backward(gy, y, act)
    return gz, gz.sum(axis=0)


def col_sum(g):
    return g.sum(axis=0)


def softmax_xent(logits, labels):
    """(loss_sum, n_correct, grad) of summed softmax cross-entropy, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-(np.log(p[np.arange(n), labels])).sum())
    correct = int((np.argmax(logits, axis=1) == labels).sum())
    grad = p.copy()
    grad[np.arange(n), labels] -= 1.0
    return loss, correct, grad


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD's update in float64; returns (new params, new buffer)."""
    p = p.astype(np.float64)
    d = g.astype(np.float64) + weight_decay * p
    if momentum != 0:
        buf = d.copy() if first else momentum * buf.astype(np.float64) + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf
