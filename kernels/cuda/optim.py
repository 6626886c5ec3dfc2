"""CUDA kernels: optimizer updates, with the signatures and results of :mod:`raven_hpc.kernels.optim`.

Each update is one elementwise grid-stride pass over the flat parameter
vector, in place: the gradient is multiplied by ``scale`` inside the pass,
arithmetic is float64 (every array element is widened explicitly, so the
simulator computes as the GPU does) and each stored value is rounded once.
State arrays a configuration does not use may be passed empty, as on the
CPU; the launchers hand the kernel a one-element stand-in for them, which it
never touches.

``sum_squares`` returns ``sum((g * scale) ** 2)`` as a Python float: each
block sums its threads' float64 partial sums along a fixed shared-memory
tree and a one-block kernel sums the blocks in a fixed order, so the result
is deterministic (no atomics) and agrees with the CPU to float64 round-off.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .._registry import register
from . import _launch
from ._blocks import MAX_THREADS, block_sum
from .reduce import dummy, read_partials

__all__ = ["adam_step", "rmsprop_step", "sgd_step", "sum_squares"]


@cuda.jit
def _sgd_kernel(p, g, buf, lr, momentum, keep, weight_decay, nesterov, first, scale):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        pi = np.float64(p[i])
        d = np.float64(g[i]) * scale + weight_decay * pi
        if momentum != 0.0:
            if first:
                bi = d
            else:
                bi = momentum * np.float64(buf[i]) + keep * d
            buf[i] = bi
            if nesterov:
                d = d + momentum * bi
            else:
                d = bi
        p[i] = pi - lr * d


@register("sgd_step", "cuda")
def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first, scale=1.0):
    """SGD with weight decay, momentum, dampening and Nesterov, in place; as
    the CPU ``sgd_step`` (``torch.optim.SGD``).  ``buf`` is ignored (may be
    empty) when ``momentum == 0``."""
    n = p.shape[0]
    momentum = float(momentum)
    if momentum == 0.0:
        buf = dummy(p.dtype)
    blocks, t = _launch.grid(n)
    _sgd_kernel[blocks, t](p, g, buf, float(lr), momentum, 1.0 - float(dampening), float(weight_decay),
                           bool(nesterov), bool(first), float(scale))


@cuda.jit
def _adam_kernel(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, inv_bc2_sqrt, beta1, beta2, eps,
                 shrink, l2, amsgrad, scale):
    keep1 = 1.0 - beta1
    keep2 = 1.0 - beta2
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        pi = np.float64(p[i])
        d = np.float64(g[i]) * scale + l2 * pi
        mi = beta1 * np.float64(exp_avg[i]) + keep1 * d
        vi = beta2 * np.float64(exp_avg_sq[i]) + keep2 * d * d
        exp_avg[i] = mi
        exp_avg_sq[i] = vi
        if amsgrad:
            vi = max(np.float64(max_exp_avg_sq[i]), vi)
            max_exp_avg_sq[i] = vi
        p[i] = pi * shrink - step_size * mi / (math.sqrt(vi) * inv_bc2_sqrt + eps)


@register("adam_step", "cuda")
def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
              decoupled, amsgrad, step, scale=1.0):
    """Adam (L2 weight decay) / AdamW (``decoupled``) step number ``step``,
    optionally AMSGrad, in place; as the CPU ``adam_step``.
    ``max_exp_avg_sq`` is ignored (may be empty) unless ``amsgrad``."""
    n = p.shape[0]
    lr = float(lr)
    beta1 = float(beta1)
    beta2 = float(beta2)
    weight_decay = float(weight_decay)
    step = int(step)
    step_size = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    if decoupled:
        shrink, l2 = 1.0 - lr * weight_decay, 0.0
    else:
        shrink, l2 = 1.0, weight_decay
    if not amsgrad:
        max_exp_avg_sq = dummy(p.dtype)
    blocks, t = _launch.grid(n)
    _adam_kernel[blocks, t](p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, inv_bc2_sqrt, beta1, beta2,
                            float(eps), shrink, l2, bool(amsgrad), float(scale))


@cuda.jit
def _rmsprop_kernel(p, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                    centered, scale):
    keep = 1.0 - alpha
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        pi = np.float64(p[i])
        d = np.float64(g[i]) * scale + weight_decay * pi
        si = alpha * np.float64(square_avg[i]) + keep * d * d
        square_avg[i] = si
        if centered:
            ai = alpha * np.float64(grad_avg[i]) + keep * d
            grad_avg[i] = ai
            var = si - ai * ai
            r = math.sqrt(var if var > 0.0 else 0.0) + eps
        else:
            r = math.sqrt(si) + eps
        if momentum > 0.0:
            bi = momentum * np.float64(momentum_buffer[i]) + d / r
            momentum_buffer[i] = bi
            p[i] = pi - lr * bi
        else:
            p[i] = pi - lr * d / r


@register("rmsprop_step", "cuda")
def rmsprop_step(p, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                 centered, scale=1.0):
    """RMSprop (centered, momentum, L2 weight decay), in place; as the CPU
    ``rmsprop_step``.  ``grad_avg`` is ignored (may be empty) unless
    ``centered``, ``momentum_buffer`` unless ``momentum > 0``."""
    n = p.shape[0]
    momentum = float(momentum)
    if not centered:
        grad_avg = dummy(p.dtype)
    if not momentum > 0.0:
        momentum_buffer = dummy(p.dtype)
    blocks, t = _launch.grid(n)
    _rmsprop_kernel[blocks, t](p, g, square_avg, grad_avg, momentum_buffer, float(lr), float(alpha), float(eps),
                               float(weight_decay), momentum, bool(centered), float(scale))


@cuda.jit
def _sum_squares_kernel(g, scale, parts):
    sh = cuda.shared.array(MAX_THREADS, float64)
    s = 0.0
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        a = np.float64(g[i]) * scale
        s += a * a
    total = block_sum(sh, s)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x, 0] = total


@register("sum_squares", "cuda")
def sum_squares(g, scale=1.0):
    """``sum((g * scale) ** 2)`` accumulated in float64, as a Python float."""
    blocks, t = _launch.grid(g.shape[0])
    parts = cuda.device_array((blocks, 1), np.float64)
    _sum_squares_kernel[blocks, t](g, float(scale), parts)
    return float(read_partials(parts)[0])
