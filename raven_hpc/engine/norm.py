"""Dropout, batch norm, layer norm and embedding: ops, gradient rules, layers.

Ops (functional, like :mod:`.ops`; heavy lifting in :mod:`raven_hpc.kernels.norm`):

* :func:`dropout` -- inverted dropout with a mask drawn from a given
  generator (float32 uniforms ``u``; kept where ``u >= rate``);
* :func:`batch_norm` -- per-channel normalisation (channel = the first
  per-sample axis) with batch statistics (training) or running ones;
* :func:`layer_norm` -- per-sample normalisation over all per-sample axes
  (torch's ``LayerNorm(normalized_shape=sample shape)``);
* :func:`embedding` -- rows of a table picked by float token ids.

Layers (spec ``type``): ``dropout``, ``batchnorm``, ``layernorm``,
``embedding``.  Dropout and batch norm depend on the run mode
(:class:`~raven_hpc.engine.layers.RunContext`).

**Batch norm in a data-parallel run.**  Each task normalises with its own
batch statistics (like PyTorch DDP without SyncBatchNorm: the batch is what
one worker computes at once).  The running statistics are state: the
training pass *adds* to its gradient slots, per channel,

* ``running_mean`` slot: ``sum(x - running_mean)``,
* ``running_var`` slot:  ``sum((x - running_mean)**2)``,

over the task's samples (and spatial positions).  Sums over tasks add up
to the step's sums; :meth:`BatchNorm.update_state` turns them into the
step's mean and unbiased variance (count = samples x spatial size, known
from the sample count) and moves the running statistics torch-style.
Shifting by the running mean -- the same on every worker of a step --
keeps the float32 sums from cancelling the variance away when a channel's
mean is large against its spread.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from raven_hpc.errors import DatasetError, ModelError

from .arrays import contiguous, from_host, xp_of
from .layers import REQUIRED, Layer, RunContext, register_layer
from .ops import ArrayLike
from .tensor import Tensor, as_tensor, gradient_rule, grad_target
from .validation import is_int
from .workspace import Workspace, buffer, kernels_of

__all__ = [
    "BatchNorm",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "MAX_EMBEDDINGS",
    "batch_norm",
    "dropout",
    "embedding",
    "layer_norm",
]

#: largest embedding table: token ids travel as float32 model inputs, which
#: hold every integer exactly only up to 2**24
MAX_EMBEDDINGS = 2**24

def _affine(gamma, beta, what: str, shape: Tuple[int, ...]):
    if (gamma is None) != (beta is None):
        raise ValueError(f"{what}: give both gamma and beta or neither")
    if gamma is None:
        return None, None
    gamma, beta = as_tensor(gamma), as_tensor(beta)
    if gamma.shape != shape or beta.shape != shape:
        raise ValueError(f"{what}: gamma {gamma.shape} and beta {beta.shape} must have shape {shape}")
    return gamma, beta


# -- dropout ---------------------------------------------------------------------------
def dropout(x: ArrayLike, rate: float, rng: np.random.Generator, *, ws: Optional[Workspace] = None) -> Tensor:
    """Inverted dropout: ``x * (u >= rate) / (1 - rate)``, ``u`` uniform on [0, 1).

    ``u`` is drawn from ``rng`` as float32 in C order over ``x``'s shape
    (``rng.random(x.shape, dtype=np.float32)``), so a generator state fixes
    the mask.  ``rate == 0`` returns ``x`` and draws nothing.
    """
    x = as_tensor(x)
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return x
    xd = contiguous(x.data)
    u = buffer(ws, "u", xd.shape, np.float32)
    # the uniforms are drawn on the host (the same numbers on every backend)
    u_host = u if isinstance(u, np.ndarray) else np.empty(u.shape, np.float32)
    if isinstance(rng, np.random.Generator):
        rng.random(out=u_host, dtype=np.float32)
    else:
        rng.uniform_into(u_host)   # a RunContext: one stream per snippet of the batch
    if u_host is not u:
        from_host(u, u_host)
    y = buffer(ws, "y", xd.shape, xd.dtype)
    scale = 1.0 / (1.0 - rate)
    kernels_of(ws).dropout_forward(xd.reshape(-1), u.reshape(-1), rate, scale, y.reshape(-1))
    return Tensor.from_op(y, "dropout", (x,), (u, rate, scale, ws))


@gradient_rule("dropout")
def _dropout_grad(g, node):
    u, rate, scale, ws = node.ctx
    g = contiguous(g)
    dx = buffer(ws, "dx", g.shape, g.dtype)
    kernels_of(ws).dropout_backward(g.reshape(-1), u.reshape(-1), rate, scale, dx.reshape(-1))
    return (dx,)


# -- batch norm --------------------------------------------------------------------------
def batch_norm(
    x: ArrayLike,
    gamma: Optional[ArrayLike] = None,
    beta: Optional[ArrayLike] = None,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    *,
    training: bool,
    eps: float = 1e-5,
    stats: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    ws: Optional[Workspace] = None,
) -> Tensor:
    """Per-channel normalisation of ``x`` (n, C, *spatial).

    ``training``: normalise with the batch's mean and biased variance per
    channel (over samples and spatial positions); otherwise with
    ``running_mean``/``running_var`` (C,).  Then ``* gamma + beta`` (C,) if
    given.  Same as ``torch.nn.functional.batch_norm``.

    ``stats`` (training only): two (C,) arrays to which the op *adds*
    ``sum(x - running_mean)`` and ``sum((x - running_mean)**2)`` per
    channel (``running_mean`` defaults to 0) -- what a model's state
    gradient collects.  Nothing in ``running_*`` is modified.
    """
    x = as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm needs (n, C, ...) input, got {x.shape}")
    n, C = x.shape[0], x.shape[1]
    L = math.prod(x.shape[2:])
    gamma, beta = _affine(gamma, beta, "batch_norm", (C,))
    dtype = x.dtype if gamma is None else np.result_type(x.dtype, gamma.dtype)
    xd = contiguous(x.data, dtype=dtype)
    x3 = xd.reshape(n, C, L)
    xp = xp_of(xd)
    k = kernels_of(ws)
    if training:
        if n * L < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, got input {x.shape}")
        mean = k.empty(C, np.float64)
        var = k.empty(C, np.float64)
        k.batchnorm_stats(x3, mean, var)
        if stats is not None:
            shift = xp.zeros(C) if running_mean is None else xp.asarray(running_mean, np.float64)
            d = mean - shift
            count = n * L
            stats[0][...] += count * d
            stats[1][...] += count * (var + d * d)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in evaluation needs running_mean and running_var")
        mean = xp.asarray(running_mean, np.float64).reshape(C)
        var = xp.asarray(running_var, np.float64).reshape(C)
    invstd = 1.0 / xp.sqrt(var + eps)
    g64 = xp.ones(C) if gamma is None else gamma.data.astype(np.float64)
    b = xp.zeros(C, dtype) if beta is None else beta.data.astype(dtype, copy=False)
    y = buffer(ws, "y", x.shape, dtype)
    k.batchnorm_apply(x3, mean.astype(dtype), (g64 * invstd).astype(dtype), b, y.reshape(n, C, L))
    parents = (x,) if gamma is None else (x, gamma, beta)
    return Tensor.from_op(y, "batch_norm", parents, (x3, mean, invstd, bool(training), ws))


@gradient_rule("batch_norm")
def _batch_norm_grad(g, node):
    x3, mean, invstd, training, ws = node.ctx
    x = node.parents[0]
    affine = len(node.parents) == 3
    n, C, L = x3.shape
    dtype = node.data.dtype
    g3 = contiguous(g, dtype=dtype).reshape(n, C, L)
    gamma_arr = node.parents[1].data if affine else xp_of(g3).ones(C, dtype)
    dgamma = dbeta = None
    if affine and node.parents[1].requires_grad:
        dgamma = grad_target(node.parents[1])
    if affine and node.parents[2].requires_grad:
        dbeta = grad_target(node.parents[2])
    sum_gx = dgamma if dgamma is not None and dgamma.dtype == dtype else buffer(ws, "dgamma", (C,), dtype)
    sum_g = dbeta if dbeta is not None and dbeta.dtype == dtype else buffer(ws, "dbeta", (C,), dtype)
    dx = buffer(ws, "dx", x.shape, dtype) if x.requires_grad else None
    k = kernels_of(ws)
    k.batchnorm_backward(g3, x3, mean, invstd, gamma_arr, training, sum_g, sum_gx,
                         dx.reshape(n, C, L) if dx is not None else k.empty((0, 0, 0), dtype))
    if not affine:
        return (dx,)
    return (dx, sum_gx if node.parents[1].requires_grad else None, sum_g if node.parents[2].requires_grad else None)


# -- layer norm --------------------------------------------------------------------------
def layer_norm(
    x: ArrayLike,
    gamma: Optional[ArrayLike] = None,
    beta: Optional[ArrayLike] = None,
    *,
    eps: float = 1e-5,
    ws: Optional[Workspace] = None,
) -> Tensor:
    """Normalise each sample of ``x`` (n, *shape) over all its values.

    ``(x - mean) / sqrt(var + eps) * gamma + beta`` with the per-sample mean
    and biased variance; ``gamma``/``beta`` have the sample shape.  Same as
    ``torch.nn.functional.layer_norm(x, x.shape[1:], gamma, beta, eps)``.
    """
    x = as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"layer_norm needs (n, ...) input, got {x.shape}")
    n = x.shape[0]
    D = math.prod(x.shape[1:])
    gamma, beta = _affine(gamma, beta, "layer_norm", tuple(x.shape[1:]))
    dtype = x.dtype if gamma is None else np.result_type(x.dtype, gamma.dtype)
    x2 = contiguous(x.data, dtype=dtype).reshape(n, D)
    y = buffer(ws, "y", x.shape, dtype)
    mean = buffer(ws, "mean", (n,), np.float64)
    invstd = buffer(ws, "invstd", (n,), np.float64)
    k = kernels_of(ws)
    if gamma is None:
        g_arr = b_arr = k.empty(0, dtype)
    else:
        g_arr = contiguous(gamma.data, dtype=dtype).reshape(D)
        b_arr = contiguous(beta.data, dtype=dtype).reshape(D)
    k.layernorm_forward(x2, g_arr, b_arr, gamma is not None, float(eps), y.reshape(n, D), mean, invstd)
    parents = (x,) if gamma is None else (x, gamma, beta)
    return Tensor.from_op(y, "layer_norm", parents, (x2, mean, invstd, g_arr, ws))


@gradient_rule("layer_norm")
def _layer_norm_grad(g, node):
    x2, mean, invstd, g_arr, ws = node.ctx
    x = node.parents[0]
    affine = len(node.parents) == 3
    n, D = x2.shape
    dtype = node.data.dtype
    g2 = contiguous(g, dtype=dtype).reshape(n, D)
    k = kernels_of(ws)
    dx = buffer(ws, "dx", x.shape, dtype) if x.requires_grad else None
    if affine:
        gamma, beta = node.parents[1], node.parents[2]
        shape = gamma.shape
        dgamma = grad_target(gamma) if gamma.requires_grad else None
        if dgamma is None or dgamma.dtype != dtype:
            dgamma = buffer(ws, "dgamma", shape, dtype)
        dbeta = grad_target(beta) if beta.requires_grad else None
        if dbeta is None or dbeta.dtype != dtype:
            dbeta = buffer(ws, "dbeta", shape, dtype)
        dg_flat, db_flat = dgamma.reshape(D), dbeta.reshape(D)
    else:
        dg_flat = db_flat = k.empty(0, dtype)
    k.layernorm_backward(g2, x2, mean, invstd, g_arr, affine,
                         dx.reshape(n, D) if dx is not None else k.empty((0, 0), dtype), dg_flat, db_flat)
    if not affine:
        return (dx,)
    return (dx, dgamma if gamma.requires_grad else None, dbeta if beta.requires_grad else None)


# -- embedding ---------------------------------------------------------------------------
def embedding(ids: ArrayLike, W: ArrayLike, *, ws: Optional[Workspace] = None, where: str = "embedding") -> Tensor:
    """Rows of ``W`` (V, dim) picked by token ids: ``(n, *seq) -> (n, *seq, dim)``.

    ``ids`` holds float values (the model's input is float32) that must be
    integers in ``[0, V)``; anything else raises
    :class:`~raven_hpc.errors.DatasetError` naming ``where``, the value and
    its position.  The ids get no gradient; ``W``'s gradient is a
    scatter-add of the output gradient.
    """
    ids_arr = ids.data if isinstance(ids, Tensor) else xp_of(ids).asarray(ids)
    W = as_tensor(W)
    if W.ndim != 2:
        raise ValueError(f"embedding table must be (num_embeddings, dim), got {W.shape}")
    if ids_arr.ndim < 1:
        raise ValueError("embedding ids need a batch axis")
    V, dim = W.shape
    flat = contiguous(ids_arr).reshape(-1)
    if flat.dtype.kind not in "f":
        flat = flat.astype(np.float64)
    idx = buffer(ws, "idx", (flat.size,), np.int64)
    bad = kernels_of(ws).embedding_indices(flat, V, idx)
    if bad >= 0:
        per = max(1, flat.size // max(1, ids_arr.shape[0]))
        row, pos = divmod(int(bad), per)
        at = f"batch row {row}"
        if ids_arr.ndim > 1:
            at += f", position {tuple(int(i) for i in np.unravel_index(pos, ids_arr.shape[1:]))}"
        raise DatasetError(
            f"{where}: input value {flat[bad].item()!r} at {at} is not a token id: ids must be integers in [0, {V})"
        )
    y = buffer(ws, "y", tuple(ids_arr.shape) + (dim,), W.dtype)
    xp_of(y).take(W.data, idx, axis=0, out=y.reshape(-1, dim), mode="clip")
    return Tensor.from_op(y, "embedding", (W,), (idx, ws))


@gradient_rule("embedding")
def _embedding_grad(g, node):
    idx, ws = node.ctx
    W = node.parents[0]
    dtype = W.data.dtype
    dW = grad_target(W)
    if dW is None or dW.dtype != dtype:
        dW = buffer(ws, "dW", W.shape, dtype)
    kernels_of(ws).embedding_backward(idx, contiguous(g, dtype=dtype).reshape(-1, W.shape[1]), dW)
    return (dW,)


# -- layers ------------------------------------------------------------------------------
def _number(cls, index: int, cfg: Mapping[str, Any], key: str, lo: float, hi: float,
            lo_open: bool = False, hi_open: bool = False) -> float:
    v = cfg[key]
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if ok:
        v = float(v)
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {'inf' if hi == math.inf else format(hi, 'g')}" \
                   f"{')' if hi_open or hi == math.inf else ']'}"
        raise ModelError(f"{cls.where(index)}: {key} must be a number in {interval}, got {cfg[key]!r}")
    return v


def _flag(cls, index: int, cfg: Mapping[str, Any], key: str) -> bool:
    v = cfg[key]
    if not isinstance(v, (bool, np.bool_)):
        raise ModelError(f"{cls.where(index)}: {key} must be true or false, got {v!r}")
    return bool(v)


@register_layer
class Dropout(Layer):
    """Inverted dropout while training, the identity in evaluation.

    Spec keys: ``rate`` (fraction dropped, in [0, 1); default 0.5 as in
    torch).  The mask comes from the pass's :class:`RunContext` generator.
    """

    TYPE = "dropout"
    KEYS = {"rate": 0.5}
    USES_CONTEXT = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        out["rate"] = _number(cls, index, out, "rate", 0.0, 1.0, hi_open=True)
        return out, tuple(in_shape)

    def describe(self) -> str:
        return f"dropout ({self.cfg['rate']:g})"

    def __call__(self, x, ws=None, ctx: Optional[RunContext] = None):
        if ctx is None or not ctx.training or self.cfg["rate"] == 0.0:
            return x
        return dropout(x, self.cfg["rate"], ctx, ws=ws)


@register_layer
class BatchNorm(Layer):
    """Batch normalisation per channel (the first per-sample axis).

    ``(F,)`` inputs are torch's BatchNorm1d, ``(C, L)`` too, ``(C, H, W)``
    BatchNorm2d.  Spec keys: ``momentum`` (0.1), ``eps`` (1e-5), ``affine``
    (true: learn ``gamma``, ``beta``).  State: ``running_mean`` (0 at
    start), ``running_var`` (1), updated by :meth:`update_state` (see the
    module docstring for what a training pass contributes).
    """

    TYPE = "batchnorm"
    KEYS = {"momentum": 0.1, "eps": 1e-5, "affine": True}
    USES_CONTEXT = True
    BATCH_COUPLED = True   # normalises with statistics across the batch

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        out["momentum"] = _number(cls, index, out, "momentum", 0.0, 1.0)
        out["eps"] = _number(cls, index, out, "eps", 0.0, math.inf, lo_open=True)
        out["affine"] = _flag(cls, index, out, "affine")
        return out, tuple(in_shape)

    @classmethod
    def shapes_of_params(cls, cfg, in_shape):
        return [("gamma", (in_shape[0],)), ("beta", (in_shape[0],))] if cfg["affine"] else []

    @classmethod
    def shapes_of_state(cls, cfg, in_shape):
        return [("running_mean", (in_shape[0],)), ("running_var", (in_shape[0],))]

    def __init__(self, cfg, index, in_shape):
        super().__init__(cfg, index, in_shape)
        #: values per channel per sample (spatial size)
        self.spatial = int(np.prod(self.in_shape[1:], dtype=np.int64))

    def init_params(self, views, rng, init):
        if self.cfg["affine"]:
            views["gamma"].fill(1)
            views["beta"].fill(0)

    def init_state(self, views):
        views["running_mean"].fill(0)
        views["running_var"].fill(1)

    def __call__(self, x, ws=None, ctx: Optional[RunContext] = None):
        training = ctx is not None and ctx.training
        rm, rv = self.state["running_mean"], self.state["running_var"]
        if training and x.shape[0] * self.spatial < 2:
            raise ModelError(
                f"{self.where(self.index)}: training needs more than one value per channel, got a batch of "
                f"{x.shape[0]} sample(s) of shape {self.in_shape}; give each task at least 2 samples "
                "(train.task_snippets, snippet size)"
            )
        stats = (rm.grad, rv.grad) if training and rm.grad is not None else None
        return batch_norm(x, self.params.get("gamma"), self.params.get("beta"), rm.data, rv.data,
                          training=training, eps=self.cfg["eps"], stats=stats, ws=ws)

    def update_state(self, state, sums, num_samples):
        count = int(num_samples) * self.spatial
        if count <= 0:
            return
        rm, rv = state["running_mean"], state["running_var"]
        d = np.asarray(sums["running_mean"], np.float64) / count
        mean = rm.astype(np.float64) + d
        var = np.maximum(np.asarray(sums["running_var"], np.float64) / count - d * d, 0.0)
        if count > 1:
            var *= count / (count - 1)  # unbiased, as torch keeps it
        m = self.cfg["momentum"]
        rm[...] = (1.0 - m) * rm + m * mean
        rv[...] = (1.0 - m) * rv + m * var


@register_layer
class LayerNorm(Layer):
    """Layer normalisation over all per-sample axes.

    torch's ``LayerNorm(normalized_shape = sample shape)``: each sample is
    normalised with its own mean and variance; ``gamma``/``beta`` have the
    sample shape.  Spec keys: ``eps`` (1e-5), ``affine`` (true).
    """

    TYPE = "layernorm"
    KEYS = {"eps": 1e-5, "affine": True}

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        out["eps"] = _number(cls, index, out, "eps", 0.0, math.inf, lo_open=True)
        out["affine"] = _flag(cls, index, out, "affine")
        return out, tuple(in_shape)

    @classmethod
    def shapes_of_params(cls, cfg, in_shape):
        return [("gamma", tuple(in_shape)), ("beta", tuple(in_shape))] if cfg["affine"] else []

    def init_params(self, views, rng, init):
        if self.cfg["affine"]:
            views["gamma"].fill(1)
            views["beta"].fill(0)

    def __call__(self, x, ws=None):
        return layer_norm(x, self.params.get("gamma"), self.params.get("beta"), eps=self.cfg["eps"], ws=ws)


@register_layer
class Embedding(Layer):
    """Token ids ``(seq...)`` -> vectors ``(seq..., dim)``.

    Spec keys: ``num_embeddings`` (table rows, at most 2**24 because ids
    arrive as float32), ``dim``.  Inputs must be integer-valued in
    ``[0, num_embeddings)`` (a :class:`~raven_hpc.errors.DatasetError`
    otherwise).  The table ``W`` starts standard normal, as in
    ``torch.nn.Embedding``, whatever the model's ``init``.
    """

    TYPE = "embedding"
    KEYS = {"num_embeddings": REQUIRED, "dim": REQUIRED}

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        for key in ("num_embeddings", "dim"):
            v = out[key]
            if not is_int(v) or v <= 0:
                raise ModelError(f"{cls.where(index)}: {key} must be a positive integer, got {v!r}")
            out[key] = int(v)
        if out["num_embeddings"] > MAX_EMBEDDINGS:
            raise ModelError(
                f"{cls.where(index)}: num_embeddings = {out['num_embeddings']} is more than {MAX_EMBEDDINGS} "
                "(2**24): token ids reach the model as float32, which cannot hold larger integers exactly"
            )
        return out, tuple(in_shape) + (out["dim"],)

    @classmethod
    def shapes_of_params(cls, cfg, in_shape):
        return [("W", (cfg["num_embeddings"], cfg["dim"]))]

    def init_params(self, views, rng, init):
        w = views["W"]
        rng.standard_normal(out=w, dtype=w.dtype)

    def __call__(self, x, ws=None):
        return embedding(x, self.params["W"], ws=ws, where=self.where(self.index))
