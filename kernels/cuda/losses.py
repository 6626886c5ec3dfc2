"""CUDA kernels: losses, with the signatures and results of :mod:`raven_hpc.kernels.losses`.

Each launcher takes the model output ``out`` (n, c), integer ``labels``
(n,), ``grad`` (n, c; may be empty without ``want_grad``) and
``want_grad`` -- all device arrays but the flag -- and returns
``(loss_sum, n_correct, bad_row)`` as Python scalars, like the CPU kernel:
the loss summed over samples (float64), the rows whose first maximum is
the label, and the first row whose label is outside ``[0, c)`` (-1 when
none).  As on the CPU, rows from ``bad_row`` on are neither counted nor
given a gradient.

Three launches per call, one thread per row:

1. one block finds ``bad_row`` (each thread's first bad row, then a
   shared-memory minimum) and leaves it on the device;
2. the row kernel handles rows below it: argmax, the row's loss (float64)
   and, with ``want_grad``, its gradient row, with the CPU's arithmetic;
   each block writes its loss and correct-count sums to a partials row;
3. one block sums the partials in a fixed order
   (:func:`~raven_hpc.kernels.cuda.reduce.sum_partials`).

No atomics: the sums are deterministic for a given shape and block size.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64

from .._registry import register
from . import _launch
from ._blocks import MAX_THREADS, block_min, block_sum
from .reduce import dummy, read_partials

__all__ = ["bce_logits_onehot", "huber_onehot", "mse_onehot", "softmax_xent"]


@cuda.jit
def _first_bad_label(labels, c, bad):
    """One block: ``bad[0]`` = the first row whose label is outside ``[0, c)``, else ``n``."""
    sh = cuda.shared.array(MAX_THREADS, int64)
    n = labels.shape[0]
    first = n
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        lab = labels[i]
        if lab < 0 or lab >= c:
            first = i  # a thread visits its rows in increasing order
            break
    low = block_min(sh, first)
    if cuda.threadIdx.x == 0:
        bad[0] = low


@cuda.jit(device=True)
def _argmax_row(out, i):
    """Column of the first maximum of row ``i`` (NaNs never win, as on the CPU)."""
    m = out[i, 0]
    arg = 0
    for j in range(1, out.shape[1]):
        v = out[i, j]
        if v > m:
            m = v
            arg = j
    return arg


@cuda.jit(device=True)
def _xent_row(out, grad, want_grad, smoothing, i, lab, arg):
    """Softmax cross-entropy of row ``i`` with label smoothing; the gradient
    ``softmax - target`` goes to ``grad`` (stored exponentials rescaled in
    place, the CPU's order of roundings)."""
    c = out.shape[1]
    m = np.float64(out[i, arg])
    s = 0.0
    if want_grad:
        for j in range(c):
            e = math.exp(np.float64(out[i, j]) - m)
            grad[i, j] = e
            s += e
        inv = 1.0 / s
        if smoothing > 0.0:
            off = smoothing / c
            for j in range(c):
                grad[i, j] = np.float64(grad[i, j]) * inv - off
            grad[i, lab] = np.float64(grad[i, lab]) - (1.0 - smoothing)
        else:
            for j in range(c):
                grad[i, j] = np.float64(grad[i, j]) * inv
            grad[i, lab] = np.float64(grad[i, lab]) - 1.0
    else:
        for j in range(c):
            s += math.exp(np.float64(out[i, j]) - m)
    if smoothing > 0.0:
        zsum = 0.0
        for j in range(c):
            zsum += np.float64(out[i, j])
        return math.log(s) + m - (1.0 - smoothing) * np.float64(out[i, lab]) - smoothing * (zsum / c)
    return math.log(s) + m - np.float64(out[i, lab])


@cuda.jit(device=True)
def _mse_row(out, grad, want_grad, unused, i, lab, arg):
    """``sum_j (out_ij - t_ij)^2`` for row ``i``; gradient ``2 (out - t)``."""
    total = 0.0
    for j in range(out.shape[1]):
        d = np.float64(out[i, j]) - (1.0 if j == lab else 0.0)
        total += d * d
        if want_grad:
            grad[i, j] = 2.0 * d
    return total


@cuda.jit(device=True)
def _bce_row(out, grad, want_grad, unused, i, lab, arg):
    """Binary cross-entropy of sigmoid(row ``i``) against its one-hot target,
    ``max(z, 0) - z t + log1p(exp(-|z|))``; gradient ``sigmoid(z) - t``."""
    total = 0.0
    for j in range(out.shape[1]):
        z = np.float64(out[i, j])
        t = 1.0 if j == lab else 0.0
        e = math.exp(-abs(z))
        total += max(z, 0.0) - z * t + math.log1p(e)
        if want_grad:
            sg = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
            grad[i, j] = sg - t
    return total


@cuda.jit(device=True)
def _huber_row(out, grad, want_grad, delta, i, lab, arg):
    """Huber loss of row ``i`` against its one-hot target; gradient ``clip(d, -delta, delta)``."""
    total = 0.0
    for j in range(out.shape[1]):
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
    return total


def _rows_kernel(row_loss):
    """The row kernel of one loss: rows ``i < bad[0]`` in a grid-stride loop,
    ``row_loss(out, grad, want_grad, param, i, label, argmax)`` per row,
    block sums of the loss and the correct count into ``parts[block]``."""

    @cuda.jit
    def kernel(out, labels, grad, want_grad, param, bad, parts):
        sh = cuda.shared.array(MAX_THREADS, float64)
        limit = bad[0]
        loss = 0.0
        correct = 0.0
        for i in range(cuda.grid(1), limit, cuda.gridsize(1)):
            lab = labels[i]
            arg = _argmax_row(out, i)
            if arg == lab:
                correct += 1.0
            loss += row_loss(out, grad, want_grad, param, i, lab, arg)
        loss = block_sum(sh, loss)
        correct = block_sum(sh, correct)
        if cuda.threadIdx.x == 0:
            parts[cuda.blockIdx.x, 0] = loss
            parts[cuda.blockIdx.x, 1] = correct

    return kernel


_XENT = _rows_kernel(_xent_row)
_MSE = _rows_kernel(_mse_row)
_BCE = _rows_kernel(_bce_row)
_HUBER = _rows_kernel(_huber_row)


def _run(kernel, out, labels, grad, want_grad, param):
    n, c = out.shape
    bad = cuda.device_array(1, np.int64)
    _first_bad_label[1, _launch.threads()](labels, c, bad)
    blocks, t = _launch.grid(n)
    parts = cuda.device_array((blocks, 2), np.float64)
    want = bool(want_grad)
    kernel[blocks, t](out, labels, grad if want else dummy(out.dtype, 2), want, float(param), bad, parts)
    loss, correct = read_partials(parts)
    first = int(bad.copy_to_host()[0])
    return float(loss), int(correct), (first if first < n else -1)


@register("softmax_xent", "cuda")
def softmax_xent(logits, labels, grad, want_grad, smoothing=0.0):
    """Softmax cross-entropy, *sum* reduction, label smoothing ``smoothing``
    (target ``(1 - eps) onehot + eps / c``); as the CPU ``softmax_xent``."""
    return _run(_XENT, logits, labels, grad, want_grad, smoothing)


@register("mse_onehot", "cuda")
def mse_onehot(out, labels, grad, want_grad):
    """Squared error against one-hot targets, summed; as the CPU ``mse_onehot``."""
    return _run(_MSE, out, labels, grad, want_grad, 0.0)


@register("bce_logits_onehot", "cuda")
def bce_logits_onehot(out, labels, grad, want_grad):
    """Binary cross-entropy with logits against one-hot targets, summed; as the CPU kernel."""
    return _run(_BCE, out, labels, grad, want_grad, 0.0)


@register("huber_onehot", "cuda")
def huber_onehot(out, labels, grad, want_grad, delta):
    """Huber loss (threshold ``delta``) against one-hot targets, summed; as the CPU kernel."""
    return _run(_HUBER, out, labels, grad, want_grad, delta)
