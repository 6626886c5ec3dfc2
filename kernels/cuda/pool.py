"""CUDA kernels of 2-D pooling (NCHW): max pooling with kept argmax, average pooling.

Each launcher has the signature, argument meaning and in-place outputs of
its CPU counterpart in :mod:`raven_hpc.kernels.pool`: ``kh x kw`` windows,
strides ``sh, sw``, ``ph, pw`` implicit padding on each side, floor mode;
max pooling ignores padded positions and keeps, per output, the flat index
``h * W + w`` of its maximum inside the input plane (first maximum in
row-major order; the first NaN wins, so NaNs propagate); average pooling
divides by ``kh * kw`` whatever the padding (``count_include_pad=True``).

Every kernel runs one thread per *output* element in a grid-stride loop
over the output in memory order (coalesced writes, no two threads writing
one element).  The backward passes are gathers, not scatters, so they are
deterministic and need no float atomics:

* :func:`avg_pool_backward`: an input element sums the gradients of the
  windows that hold it, found from the window geometry;
* :func:`max_pool_backward` gets no window geometry (the CPU signature is
  ``(g, idx, dx)``), so it first finds, for every input row ``h``, the range
  of output rows whose argmax lies in row ``h`` (and likewise for columns)
  with integer atomic min / max over ``idx``.  All windows holding row
  ``h`` are consecutive, so that range spans at most ``ceil(kh / sh)``
  output rows; an input element then scans only those outputs and sums
  the ones whose ``idx`` is its position, in ascending output order --
  the order the CPU adds them in, so the sums agree bit for bit.

Kernels carry no explicit signatures (float32 and float64 both compile).
Sums the CPU takes in float64 (window sums of the average pooling) are
float64 here; those it takes in the array's dtype start here from a zero of
that dtype passed by the launcher.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .._registry import register
from . import _launch

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"]


# -- kernels --------------------------------------------------------------------------
@cuda.jit(device=True)
def _window(o, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    """The window of flat output ``o``: ``(plane, hs, he, ws, we)``, the offset
    of its input plane and its rows ``[hs, he)`` and columns ``[ws, we)``
    clipped to the input (the padding cut off)."""
    ow = o % OW
    t = o // OW
    oh = t % OH
    q = t // OH
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    return q * H * W, max(h0, 0), min(h0 + kh, H), max(w0, 0), min(w0 + kw, W)


@cuda.jit
def _max_fwd_kernel(xf, H, W, kh, kw, sh, sw, ph, pw, OH, OW, yf, idf, total):
    for o in range(cuda.grid(1), total, cuda.gridsize(1)):
        plane, hs, he, ws, we = _window(o, H, W, kh, kw, sh, sw, ph, pw, OH, OW)
        best_at = hs * W + ws
        best = xf[plane + best_at]
        nan_at = -1
        for h in range(hs, he):
            for w in range(ws, we):
                v = xf[plane + h * W + w]
                if v > best:
                    best = v
                    best_at = h * W + w
                if v != v and nan_at < 0:
                    nan_at = h * W + w
        if nan_at >= 0:
            best = xf[plane + nan_at]
            best_at = nan_at
        yf[o] = best
        idf[o] = best_at


@cuda.jit
def _bounds_init_kernel(bnd, H, W, OH, OW):
    """``bnd`` = [row lo (H) | row hi (H) | col lo (W) | col hi (W)], set to empty ranges."""
    n = 2 * (H + W)
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        if e < H:
            bnd[e] = OH
        elif e < 2 * H:
            bnd[e] = -1
        elif e < 2 * H + W:
            bnd[e] = OW
        else:
            bnd[e] = -1


@cuda.jit
def _bounds_kernel(idf, H, W, OH, OW, bnd, total):
    """Per input row / column: the lowest and highest output row / column whose argmax lies there."""
    HW = H * W
    for o in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = o % OW
        oh = (o // OW) % OH
        p = idf[o]
        if p < 0 or p >= HW:
            continue
        hr = p // W
        wc = p - hr * W
        cuda.atomic.min(bnd, hr, oh)
        cuda.atomic.max(bnd, H + hr, oh)
        cuda.atomic.min(bnd, 2 * H + wc, ow)
        cuda.atomic.max(bnd, 2 * H + W + wc, ow)


@cuda.jit
def _max_bwd_kernel(gf, idf, bnd, H, W, OH, OW, dxf, zero, total):
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = e % W
        t = e // W
        h = t % H
        q = t // H
        at = h * W + w
        acc = zero
        for oh in range(bnd[h], bnd[H + h] + 1):
            row = (q * OH + oh) * OW
            for ow in range(bnd[2 * H + w], bnd[2 * H + W + w] + 1):
                if idf[row + ow] == at:
                    acc += gf[row + ow]
        dxf[e] = acc


@cuda.jit
def _avg_fwd_kernel(xf, H, W, kh, kw, sh, sw, ph, pw, OH, OW, yf, total):
    inv = 1.0 / (kh * kw)
    for o in range(cuda.grid(1), total, cuda.gridsize(1)):
        plane, hs, he, ws, we = _window(o, H, W, kh, kw, sh, sw, ph, pw, OH, OW)
        s = 0.0
        for h in range(hs, he):
            for w in range(ws, we):
                s += xf[plane + h * W + w]
        yf[o] = s * inv


@cuda.jit
def _avg_bwd_kernel(gf, H, W, kh, kw, sh, sw, ph, pw, OH, OW, dxf, total):
    inv = 1.0 / (kh * kw)
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = e % W
        t = e // W
        h = t % H
        q = t // H
        # windows holding row h: oh * sh - ph <= h < oh * sh - ph + kh
        a = h + ph - kh + 1
        oh_lo = 0 if a <= 0 else (a + sh - 1) // sh
        oh_hi = min((h + ph) // sh, OH - 1)
        b = w + pw - kw + 1
        ow_lo = 0 if b <= 0 else (b + sw - 1) // sw
        ow_hi = min((w + pw) // sw, OW - 1)
        s = 0.0
        for oh in range(oh_lo, oh_hi + 1):
            row = (q * OH + oh) * OW
            for ow in range(ow_lo, ow_hi + 1):
                s += gf[row + ow] * inv
        dxf[e] = s


# -- launchers ------------------------------------------------------------------------
def _geom(kh, kw, sh, sw, ph, pw):
    return int(kh), int(kw), int(sh), int(sw), int(ph), int(pw)


@register("max_pool_forward", "cuda")
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, idx):
    """``y`` (N, C, OH, OW) = window maxima of ``x`` (N, C, H, W); ``idx`` (int32, same shape as ``y``) their positions."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    total = N * C * OH * OW
    if total <= 0:
        return
    _max_fwd_kernel[_launch.grid(total)](x.reshape(-1), H, W, *_geom(kh, kw, sh, sw, ph, pw), OH, OW,
                                         y.reshape(-1), idx.reshape(-1), total)


@register("max_pool_backward", "cuda")
def max_pool_backward(g, idx, dx):
    """``dx`` (N, C, H, W) = ``g`` (N, C, OH, OW) summed at the positions in ``idx`` (overwrites).

    A gather per ``dx`` element over the outputs that can point at it
    (found from ``idx`` itself, see the module notes): deterministic,
    without float atomics.
    """
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    total = N * C * H * W
    if total <= 0:
        return
    dxf = dx.reshape(-1)
    gf, idf = g.reshape(-1), idx.reshape(-1)
    bnd = _empty_bounds(H, W, OH, OW)
    n_out = N * C * OH * OW
    if n_out > 0:
        _bounds_kernel[_launch.grid(n_out)](idf, H, W, OH, OW, bnd, n_out)
    else:  # no outputs: every range stays empty; stand-ins for the empty arrays, never read
        gf, idf = dxf, bnd
    _max_bwd_kernel[_launch.grid(total)](gf, idf, bnd, H, W, OH, OW, dxf, dx.dtype.type(0), total)


def _empty_bounds(H, W, OH, OW):
    """Device int32 array of per-row / per-column output ranges, all empty."""
    bnd = cuda.device_array(2 * (H + W), dtype=np.int32)
    _bounds_init_kernel[_launch.grid(2 * (H + W))](bnd, H, W, OH, OW)
    return bnd


@register("avg_pool_forward", "cuda")
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """``y`` (N, C, OH, OW) = window sums of ``x`` / ``(kh * kw)`` (padding counts as zeros)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    total = N * C * OH * OW
    if total <= 0:
        return
    _avg_fwd_kernel[_launch.grid(total)](x.reshape(-1), H, W, *_geom(kh, kw, sh, sw, ph, pw), OH, OW,
                                         y.reshape(-1), total)


@register("avg_pool_backward", "cuda")
def avg_pool_backward(g, kh, kw, sh, sw, ph, pw, dx):
    """Adjoint of :func:`avg_pool_forward`: ``dx`` (N, C, H, W) (overwritten)."""
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    total = N * C * H * W
    if total <= 0:
        return
    _avg_bwd_kernel[_launch.grid(total)](g.reshape(-1), H, W, *_geom(kh, kw, sh, sw, ph, pw), OH, OW,
                                         dx.reshape(-1), total)
