"""Convolution and pooling (NCHW): ops, their gradient rules, and layers.

Ops (tensors are ``(n, channels, height, width)``; weights ``(filters,
channels, kh, kw)`` as in torch):

* :func:`conv2d` -- ``act(conv(x, W) + b)`` as one node; stride, zero
  padding (symmetric, per axis, or ``"same"``/``"valid"``);
* :func:`max_pool2d`, :func:`avg_pool2d` -- window size, stride, padding.

Layers (registered with :func:`~raven_hpc.engine.layers.register_layer`;
shapes are per sample, ``(C, H, W)``): ``conv2d``, ``max_pool2d``,
``avg_pool2d`` and ``reshape``, which turns flat or 2-D samples into
images (``{type = "reshape", shape = [1, 28, 28]}``).

How ``conv2d`` runs (kernels in ``kernels/conv.py``): samples are taken in
blocks of ``nb`` so that a block's patch matrix (``C*kh*kw x nb*OH*OW``)
is about :data:`BLOCK_BYTES` and stays in cache.  Per block: im2col, one
BLAS GEMM ``W2 @ col``, one pass that moves the result to NCHW and adds the
bias, and the activation kernel over the block while it is still in cache.
Backward per block: the activation's backward kernel, one pass back to
channel-major that also sums the bias gradient, im2col again, ``dW +=
gz @ col.T`` (GEMM) and -- only when the input needs a gradient, so never
for the first layer -- ``dcol = W2.T @ gz`` (GEMM, into the patch buffer)
and col2im.  Rebuilding a block's patches is cheaper than keeping the
whole batch's: scratch memory is bounded by the block size, not the batch,
and every pass works from cache.  Activations are the shared elementwise
kernels and codes (:func:`raven_hpc.engine.ops.resolve_activation`), so
every activation the engine knows works in ``conv2d``, with parameters when
given an :class:`~raven_hpc.engine.ops.ActFn`.

:data:`BLOCK_BYTES` is a cache-sized target, not a tuned constant: the
blocked passes are faster than working on the whole batch at once, block
sizes around a core's L2 behave alike, and much smaller blocks pay the
per-block overhead (eight kernel and BLAS calls).  ``bench/bench_engine.py``
compares the whole LeNet-5 with torch.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from raven_hpc.errors import ModelError
from raven_hpc.kernels.activations import LINEAR

from .arrays import contiguous
from . import ops
from .layers import INITIALIZERS, REQUIRED, Layer, register_layer
from .tensor import Tensor, as_tensor, gradient_rule, grad_target
from .validation import is_int
from .workspace import Workspace, buffer, kernels_of

__all__ = [
    "BLOCK_BYTES",
    "AvgPool2D",
    "Conv2D",
    "MaxPool2D",
    "Reshape",
    "avg_pool2d",
    "conv2d",
    "conv_geometry",
    "max_pool2d",
    "pool_geometry",
]

ArrayLike = Union[Tensor, np.ndarray, float]
Pair = Tuple[int, int]

#: target size of one block's patch matrix in bytes (see the module docstring)
BLOCK_BYTES = 1 << 20


# -- geometry -------------------------------------------------------------------
def _pair(v: Any, what: str, minimum: int) -> Pair:
    """``v`` (int or two ints) as ``(h, w)``; ValueError naming ``what`` otherwise."""
    if is_int(v):
        p = (int(v), int(v))
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(e) for e in v):
        p = (int(v[0]), int(v[1]))
    else:
        raise ValueError(f"{what} must be an integer or a pair [h, w] of integers, got {v!r}")
    if min(p) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {v!r}")
    return p


def _same_pad(size: int, k: int, s: int) -> Tuple[int, int]:
    """(before, after) padding so the output has ``ceil(size / s)`` positions."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_geometry(in_hw: Sequence[int], kernel: Any, stride: Any = 1, padding: Any = 0):
    """Output size and padding of a convolution window sweep.

    ``padding`` is an int, a pair ``[ph, pw]`` (symmetric per axis),
    ``"valid"`` (none) or ``"same"`` (output ``ceil(in / stride)``, the extra
    row/column of an odd total going below/right -- torch's ``padding="same"``
    for stride 1, TensorFlow's for any stride).  Returns
    ``((OH, OW), (top, bottom, left, right))``; ValueError when the window
    does not fit.
    """
    H, W = int(in_hw[0]), int(in_hw[1])
    kh, kw = _pair(kernel, "kernel size", 1)
    sh, sw = _pair(stride, "stride", 1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = _same_pad(H, kh, sh) + _same_pad(W, kw, sw)
        else:
            raise ValueError(f'padding must be an integer, a pair, "same" or "valid", got {padding!r}')
    else:
        ph, pw = _pair(padding, "padding", 0)
        pads = (ph, ph, pw, pw)
    OH = (H + pads[0] + pads[1] - kh) // sh + 1
    OW = (W + pads[2] + pads[3] - kw) // sw + 1
    if OH < 1 or OW < 1:
        raise ValueError(
            f"a {kh}x{kw} window does not fit a {H}x{W} input with padding {padding!r}"
        )
    return (OH, OW), pads


def pool_geometry(in_hw: Sequence[int], pool: Any, stride: Any = None, padding: Any = 0):
    """``((OH, OW), (kh, kw), (sh, sw), (ph, pw))`` of a pooling layer (floor mode).

    ``stride`` defaults to the window; padding may be at most half the
    window (as in torch), so every window holds an input element.
    """
    kh, kw = _pair(pool, "pool size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {padding!r} is more than half the {kh}x{kw} pool window")
    H, W = int(in_hw[0]), int(in_hw[1])
    OH = (H + 2 * ph - kh) // sh + 1
    OW = (W + 2 * pw - kw) // sw + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"a {kh}x{kw} pool window does not fit a {H}x{W} input with padding {padding!r}")
    return (OH, OW), (kh, kw), (sh, sw), (ph, pw)


def _check_nchw(x: Tensor, op: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op} needs a 4-D (n, channels, height, width) input, got shape {x.shape}")


def _contig(a: np.ndarray, dtype) -> np.ndarray:
    return contiguous(a, dtype=dtype)


def _block(n: int, per_sample: int, itemsize: int) -> int:
    """Samples per block so one block's patch matrix is about :data:`BLOCK_BYTES`."""
    return max(1, min(n, BLOCK_BYTES // max(1, per_sample * itemsize)))


# -- conv2d -----------------------------------------------------------------------
def conv2d(
    x: ArrayLike,
    W: ArrayLike,
    b: Optional[ArrayLike] = None,
    stride: Any = 1,
    padding: Any = 0,
    activation: Union[str, ops.ActFn, None] = None,
    *,
    ws: Optional[Workspace] = None,
) -> Tensor:
    """``act(conv2d(x, W) + b)`` as one node (cross-correlation, as in torch).

    ``x`` (n, C, H, W), ``W`` (F, C, kh, kw), ``b`` (F,) or ``None``;
    ``stride`` an int or ``(sh, sw)``; ``padding`` an int, ``(ph, pw)``,
    ``"same"`` or ``"valid"`` (see :func:`conv_geometry`); ``activation`` an
    elementwise activation name (default parameters) or a resolved
    :class:`~raven_hpc.engine.ops.ActFn`.  Returns ``(n, F, OH, OW)``.  With
    ``ws`` the output and all scratch live in reused buffers.

    Memory: activations whose backward needs the pre-activation (``gelu``,
    ``silu``, ``softplus``) keep it in a second output-sized buffer; all
    others keep only the output.
    """
    fn = activation if isinstance(activation, ops.ActFn) else ops.resolve_activation(activation, where="conv2d")
    act = fn.code
    x, W = as_tensor(x), as_tensor(W)
    _check_nchw(x, "conv2d")
    if W.ndim != 4 or W.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d: W {W.shape} does not fit x {x.shape} (need (filters, {x.shape[1]}, kh, kw))")
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (OH, OW), (pt, pb, pl, pr) = conv_geometry((H, Wd), (kh, kw), stride, padding)
    sh, sw = _pair(stride, "stride", 1)
    dtype = np.result_type(x.dtype, W.dtype)
    k = kernels_of(ws)
    xd = _contig(x.data, dtype)
    W2 = _contig(W.data, dtype).reshape(F, C * kh * kw)
    parents: Tuple[Tensor, ...] = (x, W)
    if b is not None:
        b = as_tensor(b)
        if b.shape != (F,):
            raise ValueError(f"conv2d: bias shape {b.shape} != ({F},)")
        bias = _contig(b.data, dtype)
        parents = (x, W, b)
    else:
        bias = k.empty(0, dtype)

    P = OH * OW
    K = C * kh * kw
    y = buffer(ws, "y", (N, F, OH, OW), dtype)
    y3 = y.reshape(N, F, P)
    # the bias pass writes the pre-activation here; the activation then maps it to y
    pre3 = buffer(ws, "pre", (N, F, OH, OW), dtype).reshape(N, F, P) if fn.saves_input else y3
    geom = (kh, kw, sh, sw, pt, pl, OH, OW)
    if N:
        nb = _block(N, K * P, dtype.itemsize)
        col = buffer(ws, "col", (K * nb * P,), dtype)
        z = buffer(ws, "z", (F * nb * P,), dtype)
        im2col, gemm, bias_out, act_forward = k.im2col, k.gemm, k.conv_bias_out, k.act_forward
        for n0 in range(0, N, nb):
            m = min(nb, N - n0)
            L = m * P
            im2col(xd, n0, n0 + m, *geom, col)
            gemm(W2, col[: K * L].reshape(K, L), z[: F * L].reshape(F, L))
            bias_out(z, bias, pre3, n0, m)
            if act != LINEAR:
                act_forward(pre3[n0 : n0 + m].reshape(-1), y3[n0 : n0 + m].reshape(-1), act, fn.p0, fn.p1)
    saved = pre3 if fn.saves_input else None
    return Tensor.from_op(y, "conv2d", parents, (xd, W2, geom, fn, saved, ws))


@gradient_rule("conv2d")
def _conv2d_grad(g, node):
    x, W = node.parents[0], node.parents[1]
    b = node.parents[2] if len(node.parents) == 3 else None
    xd, W2, geom, fn, saved, ws = node.ctx
    k = kernels_of(ws)
    act = fn.code
    N, F, OH, OW = node.data.shape
    K = W2.shape[1]
    P = OH * OW
    dtype = node.data.dtype
    g3 = _contig(g, dtype).reshape(N, F, P)
    s3 = node.data.reshape(N, F, P) if saved is None else saved  # what act' is computed from

    db = None
    if b is not None and b.requires_grad:
        db = grad_target(b)
        if db is None or db.dtype != dtype:
            db = buffer(ws, "db", (F,), dtype)
        db.fill(0)
    dW = dW2 = None
    if W.requires_grad:
        dW = grad_target(W)
        if dW is None or dW.dtype != dtype:
            dW = buffer(ws, "dW", W.shape, dtype)
        dW2 = dW.reshape(F, K)
        dW_blk = buffer(ws, "dW_blk", (F, K), dtype)
        if N == 0:  # no block writes it
            dW2.fill(0)
    dx = buffer(ws, "dx", x.shape, dtype) if x.requires_grad else None

    nb = _block(N, K * P, dtype.itemsize)
    col = buffer(ws, "col", (K * nb * P,), dtype)  # also holds dcol
    gz = buffer(ws, "gz", (F * nb * P,), dtype)
    ga = buffer(ws, "z", (nb * F * P,), dtype) if act != LINEAR else None  # act' applied, NCHW block
    no_bias = k.empty(0, dtype)
    im2col, col2im, gemm, grad_in, act_backward = k.im2col, k.col2im, k.gemm, k.conv_grad_in, k.act_backward
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        L = m * P
        if act != LINEAR:
            act_backward(g3[n0 : n0 + m].reshape(-1), s3[n0 : n0 + m].reshape(-1), ga[: m * F * P],
                       act, fn.p0, fn.p1)
            src, start = ga[: m * F * P].reshape(m, F, P), 0
        else:
            src, start = g3, n0
        grad_in(src, gz, no_bias if db is None else db, start, m)
        gz2 = gz[: F * L].reshape(F, L)
        col2 = col[: K * L].reshape(K, L)
        if dW2 is not None:
            im2col(xd, n0, n0 + m, *geom, col)
            if n0 == 0:
                gemm(gz2, col2.T, dW2)
            else:
                gemm(gz2, col2.T, dW_blk)
                dW2 += dW_blk
        if dx is not None:
            gemm(W2.T, gz2, col2)
            col2im(col, n0, n0 + m, *geom, dx)
    if dx is not None and dx.dtype != x.dtype:
        dx = dx.astype(x.dtype)
    return (dx, dW, db) if b is not None else (dx, dW)


# -- pooling ------------------------------------------------------------------------
def _pool_setup(x: Tensor, op: str, pool_size: Any, stride: Any, padding: Any):
    _check_nchw(x, op)
    N, C, H, W = x.shape
    (OH, OW), (kh, kw), (sh, sw), (ph, pw) = pool_geometry((H, W), pool_size, stride, padding)
    return (N, C, OH, OW), (kh, kw, sh, sw, ph, pw)


def max_pool2d(
    x: ArrayLike, pool_size: Any, stride: Any = None, padding: Any = 0, *, ws: Optional[Workspace] = None
) -> Tensor:
    """Window maxima of ``x`` (n, C, H, W); the argmax is kept for the backward pass.

    ``pool_size``, ``stride`` (default: ``pool_size``) and ``padding`` are
    ints or ``(h, w)`` pairs; padding is at most half the window and never
    wins the max.  Where a window holds several equal maxima the gradient
    goes to the first (row-major).
    """
    x = as_tensor(x)
    shape, geom = _pool_setup(x, "max_pool2d", pool_size, stride, padding)
    xd = contiguous(x.data)
    y = buffer(ws, "y", shape, xd.dtype)
    idx = buffer(ws, "idx", shape, np.int32)
    kernels_of(ws).max_pool_forward(xd, *geom, y, idx)
    return Tensor.from_op(y, "max_pool2d", (x,), (idx, ws))


@gradient_rule("max_pool2d")
def _max_pool2d_grad(g, node):
    idx, ws = node.ctx
    x = node.parents[0]
    dx = buffer(ws, "dx", x.shape, node.data.dtype)
    kernels_of(ws).max_pool_backward(_contig(g, node.data.dtype), idx, dx)
    return (dx,)


def avg_pool2d(
    x: ArrayLike, pool_size: Any, stride: Any = None, padding: Any = 0, *, ws: Optional[Workspace] = None
) -> Tensor:
    """Window means of ``x`` (n, C, H, W); padded positions count as zeros
    (torch's ``count_include_pad=True``).  Arguments as :func:`max_pool2d`.
    """
    x = as_tensor(x)
    shape, geom = _pool_setup(x, "avg_pool2d", pool_size, stride, padding)
    xd = contiguous(x.data)
    y = buffer(ws, "y", shape, xd.dtype)
    kernels_of(ws).avg_pool_forward(xd, *geom, y)
    return Tensor.from_op(y, "avg_pool2d", (x,), (geom, ws))


@gradient_rule("avg_pool2d")
def _avg_pool2d_grad(g, node):
    geom, ws = node.ctx
    x = node.parents[0]
    dx = buffer(ws, "dx", x.shape, node.data.dtype)
    kernels_of(ws).avg_pool_backward(_contig(g, node.data.dtype), *geom, dx)
    return (dx,)


# -- layers ---------------------------------------------------------------------------
def _image_shape(cls, index: int, in_shape) -> Tuple[int, int, int]:
    """``in_shape`` as (C, H, W) or the ModelError that says how to get there."""
    if len(in_shape) != 3:
        hint = list(in_shape) if len(in_shape) == 2 else None
        target = f"[1, {hint[0]}, {hint[1]}]" if hint else "[channels, height, width]"
        raise ModelError(
            f"{cls.where(index)}: needs (channels, height, width) input, got per-sample shape "
            f"{tuple(in_shape)}; put {{type = \"reshape\", shape = {target}}} first"
        )
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


def _layer_pair(cls, index: int, cfg, key: str, minimum: int) -> list:
    try:
        return list(_pair(cfg[key], key, minimum))
    except ValueError as exc:
        raise ModelError(f"{cls.where(index)}: {exc}") from None


def _activation(cls, index: int, act: Any) -> str:
    """The spec's activation name, checked (``None``/``"none"`` -> ``"linear"``)."""
    if act is None or act == "none":
        act = "linear"
    ops.resolve_activation(act, where=cls.where(index))
    return act


@register_layer
class Conv2D(Layer):
    """2-D convolution ``act(conv(x, W) + b)`` on (C, H, W) samples.

    Spec keys: ``filters`` (positive int, required), ``kernel_size`` (int or
    ``[kh, kw]``, required), ``stride`` (int or pair, default 1),
    ``padding`` (int, pair, ``"same"`` or ``"valid"``, default 0),
    ``activation`` (default ``"linear"``), ``use_bias`` (default true).
    ``W`` is (filters, C, kh, kw), ``b`` (filters,); initialisers use
    ``fan_in = C*kh*kw`` and ``fan_out = filters*kh*kw``.
    """

    TYPE = "conv2d"
    KEYS = {"filters": REQUIRED, "kernel_size": REQUIRED, "stride": 1, "padding": 0,
            "activation": "linear", "use_bias": True}

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        C, H, W = _image_shape(cls, index, in_shape)
        filters = out["filters"]
        if not is_int(filters) or filters <= 0:
            raise ModelError(f"{cls.where(index)}: filters must be a positive integer, got {filters!r}")
        out["filters"] = int(filters)
        out["kernel_size"] = _layer_pair(cls, index, out, "kernel_size", 1)
        out["stride"] = _layer_pair(cls, index, out, "stride", 1)
        pad = out["padding"]
        if isinstance(pad, str):
            if pad not in ("same", "valid"):
                raise ModelError(f'{cls.where(index)}: padding must be an integer, a pair, "same" or "valid", '
                                 f"got {pad!r}")
        else:
            out["padding"] = _layer_pair(cls, index, out, "padding", 0)
        if not isinstance(out["use_bias"], (bool, np.bool_)):
            raise ModelError(f"{cls.where(index)}: use_bias must be true or false, got {out['use_bias']!r}")
        out["use_bias"] = bool(out["use_bias"])
        out["activation"] = _activation(cls, index, out["activation"])
        try:
            (OH, OW), _ = conv_geometry((H, W), out["kernel_size"], out["stride"], out["padding"])
        except ValueError as exc:
            raise ModelError(f"{cls.where(index)}: {exc}") from None
        return out, (out["filters"], OH, OW)

    @classmethod
    def shapes_of_params(cls, cfg, in_shape):
        kh, kw = cfg["kernel_size"]
        shapes = [("W", (cfg["filters"], int(in_shape[0]), kh, kw))]
        if cfg["use_bias"]:
            shapes.append(("b", (cfg["filters"],)))
        return shapes

    def init_params(self, views, rng, init):
        F, C, kh, kw = views["W"].shape
        INITIALIZERS[init](rng, views["W"], C * kh * kw, F * kh * kw)
        if "b" in views:
            views["b"].fill(0)

    def __init__(self, cfg, index, in_shape):
        super().__init__(cfg, index, in_shape)
        self.act_fn = ops.resolve_activation(self.cfg["activation"], where=self.where(index))

    def __call__(self, x, ws=None):
        c = self.cfg
        return conv2d(x, self.params["W"], self.params.get("b"), c["stride"], c["padding"], self.act_fn, ws=ws)


class _Pool(Layer):
    """Shared spec handling of the pooling layers."""

    KEYS = {"pool_size": REQUIRED, "stride": None, "padding": 0}

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        C, H, W = _image_shape(cls, index, in_shape)
        out["pool_size"] = _layer_pair(cls, index, out, "pool_size", 1)
        out["stride"] = (list(out["pool_size"]) if out["stride"] is None
                         else _layer_pair(cls, index, out, "stride", 1))
        out["padding"] = _layer_pair(cls, index, out, "padding", 0)
        try:
            (OH, OW), *_ = pool_geometry((H, W), out["pool_size"], out["stride"], out["padding"])
        except ValueError as exc:
            raise ModelError(f"{cls.where(index)}: {exc}") from None
        return out, (C, OH, OW)


@register_layer
class MaxPool2D(_Pool):
    """Max pooling on (C, H, W) samples.  Keys: ``pool_size`` (int or pair,
    required), ``stride`` (default ``pool_size``), ``padding`` (default 0, at
    most half the window)."""

    TYPE = "max_pool2d"

    def __call__(self, x, ws=None):
        c = self.cfg
        return max_pool2d(x, c["pool_size"], c["stride"], c["padding"], ws=ws)


@register_layer
class AvgPool2D(_Pool):
    """Average pooling on (C, H, W) samples (padding counts as zeros).  Keys
    as :class:`MaxPool2D`."""

    TYPE = "avg_pool2d"

    def __call__(self, x, ws=None):
        c = self.cfg
        return avg_pool2d(x, c["pool_size"], c["stride"], c["padding"], ws=ws)


@register_layer
class Reshape(Layer):
    """Per-sample reshape (a view): ``{type = "reshape", shape = [1, 28, 28]}``.

    ``shape`` is a list of positive integers with at most one ``-1``
    (inferred); the element count must match the input's.  As the first
    layer it accepts any input whose per-sample size matches.
    """

    TYPE = "reshape"
    KEYS = {"shape": REQUIRED}
    FLATTENS_INPUT = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        shape = out["shape"]
        if (not isinstance(shape, (list, tuple)) or not shape
                or not all(is_int(s) and (s > 0 or s == -1) for s in shape)
                or sum(1 for s in shape if s == -1) > 1):
            raise ModelError(f"{cls.where(index)}: shape must be a non-empty list of positive integers "
                             f"with at most one -1, got {shape!r}")
        shape = [int(s) for s in shape]
        size = int(np.prod(in_shape, dtype=np.int64))
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if -1 in shape:
            if size % known:
                raise ModelError(f"{cls.where(index)}: cannot reshape {tuple(in_shape)} ({size} elements) "
                                 f"to {shape}: {size} is not a multiple of {known}")
            target = tuple(size // known if s == -1 else s for s in shape)
        else:
            if known != size:
                raise ModelError(f"{cls.where(index)}: cannot reshape {tuple(in_shape)} ({size} elements) "
                                 f"to {shape} ({known} elements)")
            target = tuple(shape)
        out["shape"] = shape
        return out, target

    def __call__(self, x, ws=None):
        target = (x.shape[0],) + self.out_shape
        return x if x.shape == target else ops.reshape(x, target)
