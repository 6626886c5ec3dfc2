"""CUDA kernels of the 2-D convolution (NCHW): im2col / col2im and the passes around the GEMMs.

Each launcher has the signature, argument meaning and in-place outputs of
its CPU counterpart in :mod:`raven_hpc.kernels.conv` (see there for the
patch-matrix layout ``col[r, m, p]``, ``r = (c * kh + i) * kw + j``,
``p = oh * OW + ow``, and the channel-major ``(F, nb, P)`` GEMM results).

Apart from the bias-gradient sum, the kernels run one thread per *output*
element in a grid-stride loop over the output in memory order, so consecutive threads write consecutive
addresses (coalesced) and no two threads write the same element:

* :func:`im2col`: one thread per patch-matrix entry, reading the input
  pixel it copies (zero in the padding);
* :func:`col2im`: one thread per input-gradient element, *gathering* the
  patch-matrix entries that came from that pixel -- at most one per
  ``(i, j)`` kernel offset -- in ascending ``(i, j)`` order, the order the
  CPU kernel adds them in.  No scatter, no atomics: the result is
  deterministic and equal to the CPU's bit for bit;
* :func:`conv_bias_out`: one thread per NCHW output element;
* :func:`conv_grad_in`: without bias, one thread per channel-major element.
  With bias, the copy and the bias-gradient sum share one pass: each
  filter's row is split among :data:`_BIAS_CHUNKS` threads that copy
  elements ``k, k + chunks, ...`` (adjacent threads, adjacent elements) and
  sum them in float64, as the CPU does; one thread per filter then adds
  its partial sums in order.  A fixed order, so deterministic; no atomics.

Kernels carry no explicit signatures: numba compiles one per dtype met
(float32 in training, float64 in gradient checks).  Accumulators that the
CPU keeps in the array's dtype start from a zero of that dtype passed in
by the launcher, so the rounding is the same.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .._registry import register
from . import _launch

__all__ = ["im2col", "col2im", "conv_bias_out", "conv_grad_in"]

#: chunks per filter in the first stage of the bias-gradient sum
_BIAS_CHUNKS = 256


# -- kernels --------------------------------------------------------------------------
@cuda.jit
def _im2col_kernel(x, n0, nb, kh, kw, sh, sw, pt, pl, OH, OW, col, total):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for k in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = k % OW
        t = k // OW
        oh = t % OH
        t = t // OH
        m = t % nb
        r = t // nb
        j = r % kw
        r = r // kw
        i = r % kh
        c = r // kh
        h = oh * sh + i - pt
        w = ow * sw + j - pl
        if h >= 0 and h < H and w >= 0 and w < W:
            col[k] = x[n0 + m, c, h, w]
        else:
            col[k] = 0


@cuda.jit
def _col2im_kernel(dcol, n0, nb, kh, kw, sh, sw, pt, pl, OH, OW, dx, zero, total):
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = e % W
        t = e // W
        h = t % H
        t = t // H
        c = t % C
        m = t // C
        acc = zero
        # kernel row i sees input row h from output row oh = (h + pt - i) / sh,
        # when that is a whole number in [0, OH); i runs up in steps of sh
        hp = h + pt
        wp = w + pl
        for i in range(hp % sh, kh, sh):
            if i > hp:
                break
            oh = (hp - i) // sh
            if oh >= OH:
                continue
            for j in range(wp % sw, kw, sw):
                if j > wp:
                    break
                ow = (wp - j) // sw
                if ow >= OW:
                    continue
                r = (c * kh + i) * kw + j
                acc += dcol[((r * nb + m) * OH + oh) * OW + ow]
        dx[n0 + m, c, h, w] = acc


@cuda.jit
def _bias_out_kernel(z, b, has_bias, y, n0, nb, total):
    F, P = y.shape[1], y.shape[2]
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = e % P
        t = e // P
        f = t % F
        m = t // F
        v = z[(f * nb + m) * P + p]
        if has_bias:
            v += b[f]
        y[n0 + m, f, p] = v


@cuda.jit
def _grad_in_kernel(g, gz, n0, nb, total):
    F, P = g.shape[1], g.shape[2]
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = e % P
        t = e // P
        m = t % nb
        f = t // nb
        gz[e] = g[n0 + m, f, p]


@cuda.jit
def _grad_in_bias_kernel(g, gz, n0, nb, chunks, part, total):
    """Thread ``(f, k)`` copies elements ``k, k + chunks, ...`` of filter
    ``f``'s row of ``gz`` (adjacent threads: adjacent elements) and leaves
    their float64 sum in ``part[f * chunks + k]``."""
    F, P = g.shape[1], g.shape[2]
    L = nb * P
    for u in range(cuda.grid(1), total, cuda.gridsize(1)):
        k = u % chunks
        f = u // chunks
        s = 0.0
        for e in range(k, L, chunks):
            m = e // P
            p = e - m * P
            v = g[n0 + m, f, p]
            gz[f * L + e] = v
            s += v
        part[u] = s


@cuda.jit
def _bias_sum_kernel(part, chunks, db, F):
    for f in range(cuda.grid(1), F, cuda.gridsize(1)):
        s = 0.0
        for k in range(chunks):
            s += part[f * chunks + k]
        db[f] += s


# -- launchers ------------------------------------------------------------------------
@register("im2col", "cuda")
def im2col(x, n0, n1, kh, kw, sh, sw, pt, pl, OH, OW, col):
    """Patches of samples ``n0 .. n1-1`` of ``x`` into ``col`` (layout ``(C*kh*kw, nb, OH*OW)``).

    ``x`` (N, C, H, W); ``col`` 1-D with at least ``C*kh*kw * (n1-n0) * OH*OW``
    elements (only those are written).  ``pt``/``pl``: padding above / left
    (the padding below / right only shows in ``OH``/``OW``); padded
    positions read as zero.
    """
    nb = int(n1) - int(n0)
    total = x.shape[1] * kh * kw * nb * OH * OW
    if total <= 0:
        return
    _im2col_kernel[_launch.grid(total)](x, int(n0), nb, int(kh), int(kw), int(sh), int(sw),
                                        int(pt), int(pl), int(OH), int(OW), col, total)


@register("col2im", "cuda")
def col2im(dcol, n0, n1, kh, kw, sh, sw, pt, pl, OH, OW, dx):
    """Adjoint of :func:`im2col`: ``dx[n0:n1] = sum of dcol's patches`` (overwrites).

    ``dcol`` 1-D in the layout :func:`im2col` writes; ``dx`` (N, C, H, W).
    Only samples ``n0 .. n1-1`` of ``dx`` are written; entries that came
    from the padding are dropped.  One thread per ``dx`` element gathers
    its entries (deterministic, no atomics).
    """
    nb = int(n1) - int(n0)
    N, C, H, W = dx.shape
    total = nb * C * H * W
    if total <= 0:
        return
    _col2im_kernel[_launch.grid(total)](dcol, int(n0), nb, int(kh), int(kw), int(sh), int(sw),
                                        int(pt), int(pl), int(OH), int(OW), dx, dx.dtype.type(0), total)


@register("conv_bias_out", "cuda")
def conv_bias_out(z, b, y, n0, nb):
    """``y[n0+m, f, :] = z[f, m, :] + b[f]`` for ``m < nb``: GEMM result to NCHW, with bias.

    ``z`` 1-D in the layout (F, nb, P); ``y`` (N, F, P); ``b`` (F,) or
    empty (no bias).
    """
    N, F, P = y.shape
    total = int(nb) * F * P
    if total <= 0:
        return
    has_bias = b.shape[0] > 0
    # a zero-length array is not passed to the kernel: z stands in, unread
    _bias_out_kernel[_launch.grid(total)](z, b if has_bias else z, has_bias, y, int(n0), int(nb), total)


@register("conv_grad_in", "cuda")
def conv_grad_in(g, gz, db, n0, nb):
    """``gz[f, m, :] = g[n0+m, f, :]`` for ``m < nb``, and ``db[f] += sum(gz[f])``.

    The backward counterpart of :func:`conv_bias_out`.  ``g`` (N, F, P) (or
    a block of ``nb`` samples with ``n0 = 0``), ``gz`` 1-D in the layout
    (F, nb, P); ``db`` (F,) is *added to* (empty: no bias).  The bias sums
    are taken in float64, in a fixed order (deterministic).
    """
    N, F, P = g.shape
    nb = int(nb)
    L = nb * P
    if F * L <= 0:
        return
    if db.shape[0] == 0:
        _grad_in_kernel[_launch.grid(F * L)](g, gz, int(n0), nb, F * L)
        return
    chunks = min(_BIAS_CHUNKS, L)
    part = cuda.device_array(F * chunks, dtype=np.float64)
    _grad_in_bias_kernel[_launch.grid(F * chunks)](g, gz, int(n0), nb, chunks, part, F * chunks)
    _bias_sum_kernel[_launch.grid(F)](part, chunks, db, F)
