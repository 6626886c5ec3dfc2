"""2-D pooling kernels (NCHW): max pooling with kept argmax, average pooling.

Windows are ``kh x kw`` with strides ``sh, sw`` and ``ph, pw`` implicit
padding on each side (floor mode, as ``torch.nn.MaxPool2d`` /
``AvgPool2d`` with ``ceil_mode=False``):

* max pooling ignores padded positions (they act as ``-inf``) and keeps, per
  output, the flat index ``h * W + w`` of the maximum inside its input plane
  (first maximum in row-major order; the first NaN wins, so NaNs
  propagate as in torch).  The backward pass scatters the gradient there;
* average pooling divides by ``kh * kw`` whatever the padding
  (``count_include_pad=True``, torch's default).

One plane (sample, channel) at a time, so a window's rows are in L1; all
inner-loop indexing is ``uint64`` (no wrap-around tests, see ``conv.py``).
Works for float32 and float64.

The 2x2 window without padding (stride any) -- most CNNs' pooling -- has an
unrolled path: with runtime window sizes the two-iteration window loops and
the clipping cost more than the comparisons.  Comparisons are selects, not
branches (on real data the winner of a window is unpredictable), and NaNs
are handled on a separate, rarely taken branch.
"""
from __future__ import annotations

from numba import njit, uint64

from ._registry import register

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"]


@register("max_pool_forward")
@njit(cache=True)
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, idx):
    """``y`` (N, C, OH, OW) = window maxima of ``x`` (N, C, H, W); ``idx`` (int32, same shape as ``y``) their positions."""
    if kh == 2 and kw == 2 and ph == 0 and pw == 0:
        _max_pool_2x2(x, sh, sw, y, idx)
        return
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    idf = idx.reshape(-1)
    uW = uint64(W)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                best_at = uint64(hs) * uW + uint64(ws)
                best = xf[plane + best_at]
                nan_at = best_at
                has_nan = False
                for h in range(uint64(hs), uint64(he)):
                    row = h * uW
                    for w in range(uint64(ws), uint64(we)):
                        v = xf[plane + row + w]
                        take = v > best  # a select, not a branch: data-dependent
                        best = v if take else best
                        best_at = (row + w) if take else best_at
                        if v != v and not has_nan:  # rare: predictable
                            has_nan = True
                            nan_at = row + w
                if has_nan:
                    best = xf[plane + nan_at]
                    best_at = nan_at
                yf[o] = best
                idf[o] = best_at
                o += uint64(1)


@njit(cache=True)
def _max_pool_2x2(x, sh, sw, y, idx):
    """:func:`max_pool_forward` for a 2x2 window without padding, unrolled."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    idf = idx.reshape(-1)
    uW = uint64(W)
    one = uint64(1)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for oh in range(OH):
            r = uint64(oh * sh) * uW
            for ow in range(OW):
                at0 = r + uint64(ow * sw)
                p = plane + at0
                a0 = xf[p]
                a1 = xf[p + one]
                a2 = xf[p + uW]
                a3 = xf[p + uW + one]
                best = a0
                at = at0
                take = a1 > best
                best = a1 if take else best
                at = (at0 + one) if take else at
                take = a2 > best
                best = a2 if take else best
                at = (at0 + uW) if take else at
                take = a3 > best
                best = a3 if take else best
                at = (at0 + uW + one) if take else at
                if (a0 + a1) + (a2 + a3) != (a0 + a1) + (a2 + a3):  # NaN in the window (or +-inf)
                    if a0 != a0:
                        best, at = a0, at0
                    elif a1 != a1:
                        best, at = a1, at0 + one
                    elif a2 != a2:
                        best, at = a2, at0 + uW
                    elif a3 != a3:
                        best, at = a3, at0 + uW + one
                yf[o] = best
                idf[o] = at
                o += one


@register("max_pool_backward")
@njit(cache=True)
def max_pool_backward(g, idx, dx):
    """``dx`` (N, C, H, W) = ``g`` (N, C, OH, OW) scattered to the positions in ``idx`` (overwrites, adds where windows overlap)."""
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    gf = g.reshape(-1)
    idf = idx.reshape(-1)
    dxf = dx.reshape(-1)
    for t in range(uint64(dxf.shape[0])):
        dxf[t] = 0
    per = uint64(OH * OW)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for t in range(per):
            dxf[plane + uint64(idf[o + t])] += gf[o + t]
        o += per


@register("avg_pool_forward")
@njit(cache=True)
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """``y`` (N, C, OH, OW) = window sums of ``x`` / ``(kh * kw)`` (padding counts as zeros)."""
    if kh == 2 and kw == 2 and ph == 0 and pw == 0:
        _avg_pool_2x2(x, sh, sw, y)
        return
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    uW = uint64(W)
    inv = 1.0 / (kh * kw)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                s = 0.0
                for h in range(uint64(hs), uint64(he)):
                    row = plane + h * uW
                    for w in range(uint64(ws), uint64(we)):
                        s += xf[row + w]
                yf[o] = s * inv
                o += uint64(1)


@njit(cache=True)
def _avg_pool_2x2(x, sh, sw, y):
    """:func:`avg_pool_forward` for a 2x2 window without padding, unrolled."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    uW = uint64(W)
    one = uint64(1)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for oh in range(OH):
            r = plane + uint64(oh * sh) * uW
            for ow in range(OW):
                p = r + uint64(ow * sw)
                s = 0.0 + xf[p]  # float64, in the generic path's order
                s += xf[p + one]
                s += xf[p + uW]
                s += xf[p + uW + one]
                yf[o] = s * 0.25
                o += one


@register("avg_pool_backward")
@njit(cache=True)
def avg_pool_backward(g, kh, kw, sh, sw, ph, pw, dx):
    """Adjoint of :func:`avg_pool_forward`: ``dx`` (N, C, H, W) (overwritten)."""
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    gf = g.reshape(-1)
    dxf = dx.reshape(-1)
    for t in range(uint64(dxf.shape[0])):
        dxf[t] = 0
    uW = uint64(W)
    inv = 1.0 / (kh * kw)
    o = uint64(0)
    for q in range(N * C):
        plane = uint64(q) * uint64(H * W)
        for oh in range(OH):
            h0 = oh * sh - ph
            hs = max(h0, 0)
            he = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws = max(w0, 0)
                we = min(w0 + kw, W)
                v = gf[o] * inv
                for h in range(uint64(hs), uint64(he)):
                    row = plane + h * uW
                    for w in range(uint64(ws), uint64(we)):
                        dxf[row + w] += v
                o += uint64(1)
