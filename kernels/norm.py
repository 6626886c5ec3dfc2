"""Kernels of the normalisation, dropout and embedding layers.

* **batch norm** works on ``x`` viewed as ``(n, C, L)`` (``L = 1`` for
  ``(n, C)`` inputs, ``H*W`` for images): per-channel statistics in one pass
  (float64 accumulators, shifted by the channel's first value so that a
  large mean does not cancel the variance away), then one pass applying
  ``(x - mean) * gamma / std + beta``.  Backward is two passes: the
  per-channel sums ``sum(g)`` and ``sum(g * (x - mean))`` (which *are* the
  gradients of ``beta`` and ``gamma`` up to a factor), then ``dx``.
* **layer norm** works on ``x`` viewed as ``(n, D)``, one row at a time
  while it sits in cache: forward is one pass for the row's moments (shifted
  like batch norm's) and one applying them; backward two passes per row.
* **dropout** applies and back-propagates a mask given as float32 uniforms
  ``u``: kept where ``u >= rate``, scaled by ``1 / (1 - rate)``.
* **embedding** turns float token ids into checked int64 row indices, and
  scatter-adds the output gradient into the table's gradient.

Per-channel / per-row statistics are float64 whatever the data dtype;
outputs have the data dtype.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._registry import register

__all__ = [
    "batchnorm_stats",
    "batchnorm_apply",
    "batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
    "dropout_forward",
    "dropout_backward",
    "embedding_indices",
    "embedding_backward",
]


# -- batch norm --------------------------------------------------------------------
# Long reductions (over spatial positions, over a layer-norm row) use four
# independent float64 accumulators: without ``fastmath`` the compiler may not
# reorder a sum, so a single accumulator runs serially; four fixed lanes
# vectorise and the result stays deterministic.


@njit(cache=True)
def _lane_sums(x, i, c, L, k):
    """``(sum(x[i, c, :] - k), sum((x[i, c, :] - k)**2))`` in float64."""
    a0 = a1 = a2 = a3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    L4 = L - L % 4
    for l in range(0, L4, 4):
        v0 = x[i, c, l] - k
        v1 = x[i, c, l + 1] - k
        v2 = x[i, c, l + 2] - k
        v3 = x[i, c, l + 3] - k
        a0 += v0
        a1 += v1
        a2 += v2
        a3 += v3
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
    for l in range(L4, L):
        v0 = x[i, c, l] - k
        a0 += v0
        q0 += v0 * v0
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@njit(cache=True)
def _lane_dots(g, x, i, c, L, m):
    """``(sum(g[i, c, :]), sum(g[i, c, :] * (x[i, c, :] - m)))`` in float64."""
    a0 = a1 = a2 = a3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    L4 = L - L % 4
    for l in range(0, L4, 4):
        g0 = np.float64(g[i, c, l])
        g1 = np.float64(g[i, c, l + 1])
        g2 = np.float64(g[i, c, l + 2])
        g3 = np.float64(g[i, c, l + 3])
        a0 += g0
        a1 += g1
        a2 += g2
        a3 += g3
        q0 += g0 * (x[i, c, l] - m)
        q1 += g1 * (x[i, c, l + 1] - m)
        q2 += g2 * (x[i, c, l + 2] - m)
        q3 += g3 * (x[i, c, l + 3] - m)
    for l in range(L4, L):
        g0 = np.float64(g[i, c, l])
        a0 += g0
        q0 += g0 * (x[i, c, l] - m)
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@register("batchnorm_stats")
@njit(cache=True)
def batchnorm_stats(x, mean, var):
    """Per-channel mean and biased variance of ``x`` (n, C, L) into float64 ``mean``, ``var`` (C,)."""
    n, C, L = x.shape
    shift = np.empty(C, np.float64)
    s1 = np.zeros(C, np.float64)
    s2 = np.zeros(C, np.float64)
    for c in range(C):
        shift[c] = x[0, c, 0]
    if L == 1:  # (n, C): channels innermost, so the loop vectorises
        for i in range(n):
            for c in range(C):
                d = x[i, c, 0] - shift[c]
                s1[c] += d
                s2[c] += d * d
    else:
        for i in range(n):
            for c in range(C):
                a1, a2 = _lane_sums(x, i, c, L, shift[c])
                s1[c] += a1
                s2[c] += a2
    count = n * L
    for c in range(C):
        m = s1[c] / count
        mean[c] = shift[c] + m
        v = s2[c] / count - m * m
        var[c] = v if v > 0.0 else 0.0


@register("batchnorm_apply")
@njit(cache=True)
def batchnorm_apply(x, mean, scale, beta, y):
    """``y = (x - mean[c]) * scale[c] + beta[c]`` over ``x``, ``y`` (n, C, L).

    ``mean``, ``scale`` (= gamma / std) and ``beta`` are (C,) in the data
    dtype; ``y`` may be ``x``.
    """
    n, C, L = x.shape
    if L == 1:
        for i in range(n):
            for c in range(C):
                y[i, c, 0] = (x[i, c, 0] - mean[c]) * scale[c] + beta[c]
    else:
        for i in range(n):
            for c in range(C):
                m = mean[c]
                s = scale[c]
                b = beta[c]
                for l in range(L):
                    y[i, c, l] = (x[i, c, l] - m) * s + b


@register("batchnorm_backward")
@njit(cache=True)
def batchnorm_backward(g, x, mean, invstd, gamma, training, sum_g, sum_gxhat, dx):
    """Gradients of batch norm given the output gradient ``g`` (n, C, L).

    ``mean``/``invstd`` (C,) float64 are what the forward pass normalised
    with (batch statistics when ``training``, running ones otherwise).
    Writes ``sum_g = dbeta`` and ``sum_gxhat = dgamma`` (C,), and -- unless
    ``dx`` is empty (the input needs no gradient) -- ``dx`` (n, C, L)::

        training: dx = gamma*invstd * (g - mean_c(g) - xhat * mean_c(g*xhat))
        eval:     dx = gamma*invstd * g
    """
    n, C, L = x.shape
    s1 = np.zeros(C, np.float64)
    s2 = np.zeros(C, np.float64)
    if L == 1:
        for i in range(n):
            for c in range(C):
                gv = g[i, c, 0]
                s1[c] += gv
                s2[c] += gv * (x[i, c, 0] - mean[c])
    else:
        for i in range(n):
            for c in range(C):
                a1, a2 = _lane_dots(g, x, i, c, L, mean[c])
                s1[c] += a1
                s2[c] += a2
    for c in range(C):
        sum_g[c] = s1[c]
        sum_gxhat[c] = s2[c] * invstd[c]
    if dx.size == 0:
        return
    count = n * L
    # dx = k1 * g - k2 - k3 * (x - mean), per channel
    k1 = np.empty(C, dx.dtype)
    k2 = np.empty(C, dx.dtype)
    k3 = np.empty(C, dx.dtype)
    mu = np.empty(C, dx.dtype)
    for c in range(C):
        a = gamma[c] * invstd[c]
        k1[c] = a
        mu[c] = mean[c]
        if training:
            k2[c] = a * s1[c] / count
            k3[c] = a * invstd[c] * invstd[c] * s2[c] / count
        else:
            k2[c] = 0.0
            k3[c] = 0.0
    if L == 1:
        for i in range(n):
            for c in range(C):
                dx[i, c, 0] = k1[c] * g[i, c, 0] - k2[c] - k3[c] * (x[i, c, 0] - mu[c])
    else:
        for i in range(n):
            for c in range(C):
                a = k1[c]
                b = k2[c]
                d = k3[c]
                m = mu[c]
                for l in range(L):
                    dx[i, c, l] = a * g[i, c, l] - b - d * (x[i, c, l] - m)


# -- layer norm --------------------------------------------------------------------


@njit(cache=True)
def _row_moments(x, i, D):
    """(mean, biased variance) of row ``i`` of ``x`` in one pass, shifted by its first value."""
    k = np.float64(x[i, 0])
    a0 = a1 = a2 = a3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    D4 = D - D % 4
    for d in range(0, D4, 4):
        v0 = x[i, d] - k
        v1 = x[i, d + 1] - k
        v2 = x[i, d + 2] - k
        v3 = x[i, d + 3] - k
        a0 += v0
        a1 += v1
        a2 += v2
        a3 += v3
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
    for d in range(D4, D):
        v0 = x[i, d] - k
        a0 += v0
        q0 += v0 * v0
    s = ((a0 + a1) + (a2 + a3)) / D
    v = ((q0 + q1) + (q2 + q3)) / D - s * s
    return k + s, (v if v > 0.0 else 0.0)


@register("layernorm_forward")
@njit(cache=True)
def layernorm_forward(x, gamma, beta, affine, eps, y, mean, invstd):
    """Normalise each row of ``x`` (n, D) into ``y``; per-row ``mean``/``invstd`` (n,) float64 out.

    ``y = (x - mean) * invstd * gamma + beta`` (``gamma``/``beta`` (D,) used
    only when ``affine``); the variance is the biased one, as in torch.
    Statistics are float64; the normalisation runs in the data dtype.
    """
    n, D = x.shape
    mr = np.empty(2, y.dtype)  # mean and invstd in the data dtype
    for i in range(n):
        m, v = _row_moments(x, i, D)
        r = 1.0 / math.sqrt(v + eps)
        mean[i] = m
        invstd[i] = r
        mr[0] = m
        mr[1] = r
        mt = mr[0]
        rt = mr[1]
        if affine:
            for d in range(D):
                y[i, d] = (x[i, d] - mt) * rt * gamma[d] + beta[d]
        else:
            for d in range(D):
                y[i, d] = (x[i, d] - mt) * rt


@register("layernorm_backward")
@njit(cache=True)
def layernorm_backward(g, x, mean, invstd, gamma, affine, dx, dgamma, dbeta):
    """Gradients of layer norm given the output gradient ``g`` (n, D).

    ``dx`` (n, D) is written unless empty; ``dgamma``/``dbeta`` (D,) are
    written when ``affine``::

        gg = g * gamma;  dx = invstd * (gg - mean_d(gg) - xhat * mean_d(gg * xhat))
    """
    n, D = x.shape
    want_dx = dx.size > 0
    if affine:
        for d in range(D):
            dgamma[d] = 0
            dbeta[d] = 0
    gg = np.empty(D, x.dtype)
    xh = np.empty(D, x.dtype)
    mr = np.empty(2, x.dtype)
    D4 = D - D % 4
    for i in range(n):
        mr[0] = mean[i]
        mr[1] = invstd[i]
        mt = mr[0]
        rt = mr[1]
        for d in range(D):
            xh[d] = (x[i, d] - mt) * rt
        if affine:
            for d in range(D):
                gv = g[i, d]
                dbeta[d] += gv
                dgamma[d] += gv * xh[d]
                gg[d] = gv * gamma[d]
        else:
            for d in range(D):
                gg[d] = g[i, d]
        if not want_dx:
            continue
        a0 = a1 = a2 = a3 = 0.0
        b0 = b1 = b2 = b3 = 0.0
        for d in range(0, D4, 4):
            a0 += gg[d]
            a1 += gg[d + 1]
            a2 += gg[d + 2]
            a3 += gg[d + 3]
            b0 += gg[d] * np.float64(xh[d])
            b1 += gg[d + 1] * np.float64(xh[d + 1])
            b2 += gg[d + 2] * np.float64(xh[d + 2])
            b3 += gg[d + 3] * np.float64(xh[d + 3])
        for d in range(D4, D):
            a0 += gg[d]
            b0 += gg[d] * np.float64(xh[d])
        mr[0] = ((a0 + a1) + (a2 + a3)) / D
        mr[1] = ((b0 + b1) + (b2 + b3)) / D
        a = mr[0]
        b = mr[1]
        for d in range(D):
            dx[i, d] = rt * (gg[d] - a - xh[d] * b)


# -- dropout -----------------------------------------------------------------------
@register("dropout_forward")
@njit(cache=True)
def dropout_forward(x, u, rate, scale, y):
    """``y = x * scale`` where ``u >= rate``, else 0 (1-D arrays; ``y`` may be ``x``)."""
    s = x.dtype.type(scale)
    r = u.dtype.type(rate)
    for i in range(x.shape[0]):
        y[i] = x[i] * s if u[i] >= r else 0


@register("dropout_backward")
@njit(cache=True)
def dropout_backward(g, u, rate, scale, dx):
    """``dx = g * scale`` where ``u >= rate``, else 0 (the same mask as forward)."""
    s = g.dtype.type(scale)
    r = u.dtype.type(rate)
    for i in range(g.shape[0]):
        dx[i] = g[i] * s if u[i] >= r else 0


# -- embedding ---------------------------------------------------------------------
@register("embedding_indices")
@njit(cache=True)
def embedding_indices(x, num, idx):
    """Checked ``idx = int64(x)`` for 1-D float token ids ``x``.

    Returns -1 when every value is an integer in ``[0, num)``, otherwise the
    position of the first that is not (NaN included); ``idx`` is then
    only partly written.
    """
    for i in range(x.shape[0]):
        v = x[i]
        if not (v >= 0 and v < num):
            return i
        j = np.int64(v)
        if j != v:
            return i
        idx[i] = j
    return -1


@register("embedding_backward")
@njit(cache=True)
def embedding_backward(idx, g, dW):
    """``dW = 0; dW[idx[i]] += g[i]`` (``g`` (m, dim), ``dW`` (V, dim))."""
    V, dim = dW.shape
    for r in range(V):
        for d in range(dim):
            dW[r, d] = 0
    for i in range(idx.shape[0]):
        r = idx[i]
        for d in range(dim):
            dW[r, d] += g[i, d]
