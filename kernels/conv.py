"""2-D convolution kernels (NCHW): im2col / col2im and the fused passes around the GEMMs.

The convolution is computed as im2col + GEMM, one block of ``nb`` samples at a
time (the engine's ``conv2d`` drives the blocks; see
:mod:`raven_hpc.engine.conv`).  For a block the patch matrix has the layout

    col[r, m, p]   r = (c * kh + i) * kw + j   (C*kh*kw rows)
                   m = sample within the block, p = oh * OW + ow

so that every product is **one** BLAS GEMM with a long inner dimension:

* forward   ``z  = W2 @ col``                (F, nb*P), ``W2 = W.reshape(F, C*kh*kw)``
* backward  ``dW += gz @ col.T``              (F, C*kh*kw)
            ``dcol = W2.T @ gz``              (C*kh*kw, nb*P), then col2im into ``dx``

``z`` and ``gz`` are "channel-major" (F, nb, P); the kernels here move them to
and from the NCHW tensors in the same pass that adds the bias
(:func:`conv_bias_out`) or sums the bias gradient (:func:`conv_grad_in`).  The
block is sized so ``col`` stays in cache: the patch matrix is never
materialised for the whole batch (a worker's memory does not grow with it),
and the backward pass rebuilds a block's patches instead of keeping them.

Why im2col + GEMM rather than a direct convolution (a loop nest over the
padded input): the direct weight gradient is a reduction that does not
vectorise without ``fastmath``, and a loop nest reuses nothing across
filters, while the GEMMs run at BLAS speed.  A direct loop nest is faster
only in the forward pass of a single-channel first layer, and not by
enough to keep a second code path.

All index arithmetic in the inner loops is done in ``uint64``: with signed
indices Numba inserts a negative-index wrap-around test on every access, which
blocks vectorisation.

All kernels work for float32 and float64 (the gradient checks run float64).
"""
from __future__ import annotations

from numba import njit, uint64

from ._registry import register

__all__ = ["im2col", "col2im", "conv_bias_out", "conv_grad_in"]


@njit(cache=True)
def _valid_range(n_out, stride, offset, size):
    """Output positions ``o`` in ``[lo, hi)`` with ``0 <= o * stride + offset < size``."""
    # o >= ceil(-offset / stride) and o <= floor((size - 1 - offset) / stride)
    lo = -(offset // stride)
    if lo < 0:
        lo = 0
    hi = (size - 1 - offset) // stride + 1
    if hi > n_out:
        hi = n_out
    if hi < lo:
        hi = lo
    return lo, hi


@register("im2col")
@njit(cache=True)
def im2col(x, n0, n1, kh, kw, sh, sw, pt, pl, OH, OW, col):
    """Patches of samples ``n0 .. n1-1`` of ``x`` into ``col`` (layout ``(C*kh*kw, nb, OH*OW)``).

    ``x`` (N, C, H, W) C-contiguous; ``col`` a C-contiguous 1-D array of at
    least ``C*kh*kw * (n1-n0) * OH*OW`` elements.  ``pt``/``pl`` are the
    padding above / left of the input (the padding below / right only shows
    in ``OH``/``OW``); padded positions read as zero.
    """
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    nb = n1 - n0
    uOW = uint64(OW)
    usw = uint64(sw)
    k = uint64(0)
    for c in range(C):
        for i in range(kh):
            oh_lo, oh_hi = _valid_range(OH, sh, i - pt, H)
            for j in range(kw):
                ow_lo, ow_hi = _valid_range(OW, sw, j - pl, W)
                for m in range(nb):
                    plane = uint64(((n0 + m) * C + c) * H * W)
                    for oh in range(OH):
                        if oh < oh_lo or oh >= oh_hi:
                            for ow in range(uOW):
                                col[k + ow] = 0
                        else:
                            # input column of ow is ow * sw + j - pl >= 0 for ow >= ow_lo
                            src = plane + uint64((oh * sh + i - pt) * W + ow_lo * sw + j - pl)
                            dst = k + uint64(ow_lo)
                            for ow in range(uint64(ow_lo)):
                                col[k + ow] = 0
                            if sw == 1:
                                for t in range(uint64(ow_hi - ow_lo)):
                                    col[dst + t] = xf[src + t]
                            else:
                                for t in range(uint64(ow_hi - ow_lo)):
                                    col[dst + t] = xf[src + t * usw]
                            for ow in range(uint64(ow_hi), uOW):
                                col[k + ow] = 0
                        k += uOW


@register("col2im")
@njit(cache=True)
def col2im(dcol, n0, n1, kh, kw, sh, sw, pt, pl, OH, OW, dx):
    """Adjoint of :func:`im2col`: ``dx[n0:n1] = sum of dcol's patches`` (overwrites).

    ``dcol`` 1-D in the layout :func:`im2col` writes; ``dx`` (N, C, H, W)
    C-contiguous.  Only samples ``n0 .. n1-1`` of ``dx`` are written.
    Contributions landing in the padding are dropped.
    """
    N, C, H, W = dx.shape
    dxf = dx.reshape(-1)
    nb = n1 - n0
    plane_size = uint64(H * W)
    start = uint64(n0 * C) * plane_size
    stop = uint64(n1 * C) * plane_size
    for t in range(start, stop):
        dxf[t] = 0
    uOW = uint64(OW)
    usw = uint64(sw)
    for c in range(C):
        for i in range(kh):
            oh_lo, oh_hi = _valid_range(OH, sh, i - pt, H)
            for j in range(kw):
                ow_lo, ow_hi = _valid_range(OW, sw, j - pl, W)
                cnt = uint64(ow_hi - ow_lo)
                r = (c * kh + i) * kw + j
                for m in range(nb):
                    plane = uint64(((n0 + m) * C + c) * H * W)
                    row0 = uint64((r * nb + m) * OH) * uOW
                    for oh in range(oh_lo, oh_hi):
                        dst = plane + uint64((oh * sh + i - pt) * W + ow_lo * sw + j - pl)
                        src = row0 + uint64(oh) * uOW + uint64(ow_lo)
                        if sw == 1:
                            for t in range(cnt):
                                dxf[dst + t] += dcol[src + t]
                        else:
                            for t in range(cnt):
                                dxf[dst + t * usw] += dcol[src + t]


@register("conv_bias_out")
@njit(cache=True)
def conv_bias_out(z, b, y, n0, nb):
    """``y[n0+m, f, :] = z[f, m, :] + b[f]`` for ``m < nb``: GEMM result to NCHW, with bias.

    ``z`` 1-D in the layout (F, nb, P); ``y`` (N, F, P) C-contiguous; ``b``
    (F,) or empty (no bias).
    """
    N, F, P = y.shape
    yf = y.reshape(-1)
    uP = uint64(P)
    has_bias = b.shape[0] > 0
    for m in range(nb):
        for f in range(F):
            src = uint64(f * nb + m) * uP
            dst = uint64((n0 + m) * F + f) * uP
            if has_bias:
                bf = b[f]
                for p in range(uP):
                    yf[dst + p] = z[src + p] + bf
            else:
                for p in range(uP):
                    yf[dst + p] = z[src + p]


@register("conv_grad_in")
@njit(cache=True)
def conv_grad_in(g, gz, db, n0, nb):
    """``gz[f, m, :] = g[n0+m, f, :]`` for ``m < nb``, and ``db[f] += sum(gz[f])``.

    The backward counterpart of :func:`conv_bias_out`.  ``g`` (N, F, P) (or
    a block of ``nb`` samples with ``n0 = 0``), ``gz`` 1-D in the layout
    (F, nb, P); ``db`` (F,) is *added to* (empty: no bias).  Row sums are
    taken in float64 with four independent accumulators (a single one makes
    the pass latency-bound).
    """
    N, F, P = g.shape
    gf = g.reshape(-1)
    uP = uint64(P)
    one, two, three, four = uint64(1), uint64(2), uint64(3), uint64(4)
    P4 = uP - uP % four
    has_bias = db.shape[0] > 0
    for m in range(nb):
        for f in range(F):
            src = uint64((n0 + m) * F + f) * uP
            dst = uint64(f * nb + m) * uP
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for p in range(uint64(0), P4, four):
                v0 = gf[src + p]
                v1 = gf[src + p + one]
                v2 = gf[src + p + two]
                v3 = gf[src + p + three]
                gz[dst + p] = v0
                gz[dst + p + one] = v1
                gz[dst + p + two] = v2
                gz[dst + p + three] = v3
                s0 += v0
                s1 += v1
                s2 += v2
                s3 += v3
            for p in range(P4, uP):
                v = gf[src + p]
                gz[dst + p] = v
                s0 += v
            if has_bias:
                db[f] += (s0 + s1) + (s2 + s3)
