"""Optimizer update kernels: one fused pass over the flat parameter vector.

Every update kernel reads the gradient once, multiplies it by ``scale``
inside the pass (the master hands over its float64 gradient *sum* and
``1 / samples``, so no pass is spent forming the mean), updates the state
and the parameters in place, and writes each stored value once.  ``p`` and
the state arrays are float32 in training and float64 in gradient checks;
``g`` may be float32 or float64.  Arithmetic is done in float64 and rounded
once per stored value.  State arrays a configuration does not use are
passed empty and never touched.  Kernels that divide use
``error_model="numpy"``: Python's zero-division check in every iteration
would keep LLVM from vectorising the loop (the divisors are ``>= eps > 0``).

==================  ========================================================
op                  update (same as)
==================  ========================================================
``sgd_step``        ``torch.optim.SGD``: momentum, dampening, Nesterov, L2
``adam_step``       ``torch.optim.Adam`` (L2 weight decay) and
                    ``torch.optim.AdamW`` (``decoupled=True``), AMSGrad
``rmsprop_step``    ``torch.optim.RMSprop``: centered, momentum, L2
``sum_squares``     ``sum((g * scale) ** 2)`` in float64, for clipping by
                    global norm (``torch.nn.utils.clip_grad_norm_``)
==================  ========================================================
"""
from __future__ import annotations

import math

from numba import njit

from ._registry import register

__all__ = ["adam_step", "rmsprop_step", "sgd_step", "sum_squares"]


@register("sgd_step")
@njit(cache=True)
def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first, scale=1.0):
    """SGD with weight decay, momentum, dampening and Nesterov, in place.

    Same update as ``torch.optim.SGD``::

        d = g + weight_decay * p
        buf = d                              (first step)
        buf = momentum * buf + (1 - dampening) * d   (later steps)
        d = d + momentum * buf  if nesterov  else  buf
        p -= lr * d

    ``g`` is multiplied by ``scale`` first (the master passes its float64
    gradient *sum* and ``1 / samples``, saving a pass to form the mean).
    ``buf`` is ignored (may be empty) when ``momentum == 0``.  Arithmetic is
    done in float64 and rounded once per stored value.
    """
    n = p.shape[0]
    if momentum == 0.0:
        for i in range(n):
            d = g[i] * scale + weight_decay * p[i]
            p[i] = p[i] - lr * d
        return
    keep = 1.0 - dampening
    for i in range(n):
        d = g[i] * scale + weight_decay * p[i]
        if first:
            bi = d
        else:
            bi = momentum * buf[i] + keep * d
        buf[i] = bi
        if nesterov:
            d = d + momentum * bi
        else:
            d = bi
        p[i] = p[i] - lr * d


@register("adam_step")
@njit(cache=True, error_model="numpy")
def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
              decoupled, amsgrad, step, scale=1.0):
    """Adam / AdamW step number ``step`` (1 for the first), in place.

    Same update as ``torch.optim.Adam`` (``decoupled=False``: weight decay
    is L2, added to the gradient) and ``torch.optim.AdamW``
    (``decoupled=True``: the parameters shrink by ``lr * weight_decay``
    before the update)::

        d = g * scale (+ weight_decay * p)          (Adam)
        p = p * (1 - lr * weight_decay)             (AdamW)
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d * d
        vmax = max(vmax, v)                          (amsgrad)
        p -= lr / (1 - beta1**step) * m / (sqrt(v or vmax) / sqrt(1 - beta2**step) + eps)

    ``max_exp_avg_sq`` is ignored (may be empty) unless ``amsgrad``.
    """
    n = p.shape[0]
    step_size = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)  # a product in the loop, not a division
    keep1 = 1.0 - beta1
    keep2 = 1.0 - beta2
    if decoupled:
        shrink = 1.0 - lr * weight_decay
        l2 = 0.0
    else:
        shrink = 1.0
        l2 = weight_decay
    if amsgrad:
        for i in range(n):
            d = g[i] * scale + l2 * p[i]
            mi = beta1 * exp_avg[i] + keep1 * d
            vi = beta2 * exp_avg_sq[i] + keep2 * d * d
            exp_avg[i] = mi
            exp_avg_sq[i] = vi
            vmax = max(max_exp_avg_sq[i], vi)
            max_exp_avg_sq[i] = vmax
            p[i] = p[i] * shrink - step_size * mi / (math.sqrt(vmax) * inv_bc2_sqrt + eps)
        return
    for i in range(n):
        d = g[i] * scale + l2 * p[i]
        mi = beta1 * exp_avg[i] + keep1 * d
        vi = beta2 * exp_avg_sq[i] + keep2 * d * d
        exp_avg[i] = mi
        exp_avg_sq[i] = vi
        p[i] = p[i] * shrink - step_size * mi / (math.sqrt(vi) * inv_bc2_sqrt + eps)


@register("rmsprop_step")
@njit(cache=True, error_model="numpy")
def rmsprop_step(p, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                 centered, scale=1.0):
    """RMSprop, in place; same update as ``torch.optim.RMSprop``::

        d = g * scale + weight_decay * p
        s = alpha * s + (1 - alpha) * d * d
        a = alpha * a + (1 - alpha) * d                       (centered)
        r = sqrt(s - a * a) + eps  if centered  else  sqrt(s) + eps
        buf = momentum * buf + d / r;  p -= lr * buf          (momentum > 0)
        p -= lr * d / r                                       (momentum = 0)

    ``grad_avg`` is ignored (may be empty) unless ``centered``, and
    ``momentum_buffer`` unless ``momentum > 0``.  The centered variance is
    clamped at 0 before the square root (rounding of the stored averages can
    take it a hair below; torch would produce NaN there).
    """
    n = p.shape[0]
    keep = 1.0 - alpha
    for i in range(n):
        d = g[i] * scale + weight_decay * p[i]
        si = alpha * square_avg[i] + keep * d * d
        square_avg[i] = si
        if centered:
            ai = alpha * grad_avg[i] + keep * d
            grad_avg[i] = ai
            var = si - ai * ai
            r = math.sqrt(var if var > 0.0 else 0.0) + eps
        else:
            r = math.sqrt(si) + eps
        if momentum > 0.0:
            bi = momentum * momentum_buffer[i] + d / r
            momentum_buffer[i] = bi
            p[i] = p[i] - lr * bi
        else:
            p[i] = p[i] - lr * d / r


@register("sum_squares")
@njit(cache=True)
def sum_squares(g, scale=1.0):
    """``sum((g * scale) ** 2)`` accumulated in float64 (four partial sums)."""
    n = g.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    m = n - n % 4
    for i in range(0, m, 4):
        a = g[i] * scale
        b = g[i + 1] * scale
        c = g[i + 2] * scale
        d = g[i + 3] * scale
        s0 += a * a
        s1 += b * b
        s2 += c * c
        s3 += d * d
    for i in range(m, n):
        a = g[i] * scale
        s0 += a * a
    return (s0 + s1) + (s2 + s3)
