"""Optimizer update kernels: one fused pass over the flat parameter vector."""
from __future__ import annotations

from numba import njit

from ._registry import register

__all__ = ["sgd_step"]


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
