"""Functional ops and their gradient rules.

Each op is a forward function here plus **one row** in the gradient table
(:data:`raven_hpc.engine.tensor.GRADIENTS`), registered with :func:`_rule`
next to it.  Adding an op means writing both, nothing else.

Ops take :class:`Tensor` (or arrays, wrapped as constants) and return
tensors.  The heavy ops accept ``ws=`` a :class:`Workspace`: outputs and
gradient scratch then live in reused buffers instead of fresh allocations
(the model does this; results are only valid until the next call with the
same workspace).  Without ``ws`` everything is freshly allocated.

Kernels come from the registry, picked once at import
(:func:`raven_hpc.kernels.get_kernel`, CPU backend).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from raven_hpc.errors import DatasetError, ModelError
from raven_hpc.kernels import ACTIVATIONS, get_kernel

from .tensor import GRADIENTS, Tensor, Workspace, grad_target, is_grad_enabled

__all__ = [
    "ACTIVATIONS",
    "activation_code",
    "add",
    "dense",
    "matmul",
    "relu",
    "reshape",
    "softmax_cross_entropy",
]

ArrayLike = Union[Tensor, np.ndarray, float]

_k_bias_act_fwd = get_kernel("bias_act_forward")
_k_bias_act_bwd = get_kernel("bias_act_backward")
_k_col_sum = get_kernel("col_sum")
_k_act_fwd = get_kernel("act_forward")
_k_act_bwd = get_kernel("act_backward")
_k_softmax_xent = get_kernel("softmax_xent")


def _rule(op: str):
    def deco(fn):
        if op in GRADIENTS:  # pragma: no cover
            raise ValueError(f"gradient rule for {op!r} registered twice")
        GRADIENTS[op] = fn
        return fn

    return deco


def _t(x: ArrayLike) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _buf(ws: Optional[Workspace], key: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype) if ws is None else ws.buf(key, shape, dtype)


def activation_code(activation: Optional[str]) -> int:
    """Kernel code of an activation name (``None``/``"none"`` = linear)."""
    if activation is None or activation == "none":
        activation = "linear"
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ModelError(
            f"unknown activation {activation!r}; known activations: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def _unbroadcast(g: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes along which ``shape`` was broadcast to ``g.shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
    )
    return g.sum(axis=axes).reshape(shape)


# -- matmul -------------------------------------------------------------------
def matmul(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``a @ b`` for 2-D operands."""
    a, b = _t(a), _t(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul needs 2-D operands, got {a.shape} and {b.shape}")
    return Tensor._from_op(a.data @ b.data, "matmul", (a, b))


@_rule("matmul")
def _matmul_grad(g, node):
    a, b = node.parents
    ga = g @ b.data.T if a.requires_grad else None
    gb = a.data.T @ g if b.requires_grad else None
    return ga, gb


# -- add ----------------------------------------------------------------------
def add(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``a + b`` with numpy broadcasting."""
    a, b = _t(a), _t(b)
    return Tensor._from_op(a.data + b.data, "add", (a, b))


@_rule("add")
def _add_grad(g, node):
    a, b = node.parents
    return (
        _unbroadcast(g, a.shape) if a.requires_grad else None,
        _unbroadcast(g, b.shape) if b.requires_grad else None,
    )


# -- reshape ------------------------------------------------------------------
def reshape(a: ArrayLike, shape: Sequence[int]) -> Tensor:
    """A reshaped view of ``a`` (a copy only when numpy needs one)."""
    a = _t(a)
    return Tensor._from_op(a.data.reshape(tuple(shape)), "reshape", (a,))


@_rule("reshape")
def _reshape_grad(g, node):
    return (g.reshape(node.parents[0].shape),)


# -- elementwise activations ------------------------------------------------
def relu(a: ArrayLike) -> Tensor:
    """``max(a, 0)``."""
    a = _t(a)
    x = np.ascontiguousarray(a.data)
    out = np.empty_like(x)
    _k_act_fwd(x.reshape(-1), out.reshape(-1), ACTIVATIONS["relu"])
    return Tensor._from_op(out, "relu", (a,))


@_rule("relu")
def _relu_grad(g, node):
    g = np.ascontiguousarray(g)
    out = np.empty_like(g)
    _k_act_bwd(g.reshape(-1), node.data.reshape(-1), out.reshape(-1), ACTIVATIONS["relu"])
    return (out,)


# -- dense (fused) ------------------------------------------------------------
def dense(
    x: ArrayLike,
    W: ArrayLike,
    b: Optional[ArrayLike] = None,
    activation: Optional[str] = None,
    *,
    ws: Optional[Workspace] = None,
) -> Tensor:
    """``act(x @ W + b)`` as one node.

    ``x`` (n, k), ``W`` (k, m), ``b`` (m,) or ``None``.  The GEMM writes
    into the output buffer (BLAS); one Numba pass then adds the bias and
    applies the activation in place.  Backward fuses ``act'`` with the bias
    gradient in one pass, then ``dW = x.T @ gz`` and -- only when ``x``
    requires grad (not for the input layer) -- ``dx = gz @ W.T``.
    """
    act = activation_code(activation)
    x, W = _t(x), _t(W)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"dense: x {x.shape} and W {W.shape} do not fit (need (n, k) and (k, m))")
    n, m = x.shape[0], W.shape[1]
    dtype = np.result_type(x.dtype, W.dtype)
    y = _buf(ws, "y", (n, m), dtype)
    np.matmul(x.data, W.data, out=y)
    if b is not None:
        b = _t(b)
        if b.shape != (m,):
            raise ValueError(f"dense: bias shape {b.shape} != ({m},)")
        _k_bias_act_fwd(y, b.data, act)
        parents = (x, W, b)
    else:
        if act:
            flat = y.reshape(-1)
            _k_act_fwd(flat, flat, act)
        parents = (x, W)
    return Tensor._from_op(y, "dense", parents, (act, ws))


@_rule("dense")
def _dense_grad(g, node):
    x, W = node.parents[0], node.parents[1]
    b = node.parents[2] if len(node.parents) == 3 else None
    act, ws = node.ctx
    n, m = g.shape
    dtype = node.data.dtype
    g = np.ascontiguousarray(g, dtype=dtype)
    db = None
    if b is not None and b.requires_grad:
        db = grad_target(b)
        if db is None or db.dtype != dtype:
            db = _buf(ws, "db", (m,), dtype)
        if act:
            gz = _buf(ws, "gz", (n, m), dtype)
            _k_bias_act_bwd(g, node.data, act, gz, db)
        else:
            gz = g
            _k_col_sum(g, db)
    elif act:
        gz = _buf(ws, "gz", (n, m), dtype)
        _k_act_bwd(g.reshape(-1), node.data.reshape(-1), gz.reshape(-1), act)
    else:
        gz = g
    dW = None
    if W.requires_grad:
        dW = grad_target(W)
        if dW is None or dW.dtype != dtype:
            dW = _buf(ws, "dW", W.shape, dtype)
        np.matmul(x.data.T, gz, out=dW)
    dx = None
    if x.requires_grad:
        dx = _buf(ws, "dx", x.shape, dtype)
        np.matmul(gz, W.data.T, out=dx)
    return (dx, dW, db) if b is not None else (dx, dW)


# -- losses -------------------------------------------------------------------
def as_labels(labels: Any) -> np.ndarray:
    """Integer class labels as a contiguous int64 array (DatasetError otherwise)."""
    labels = np.asarray(labels)
    if labels.dtype != np.int64:
        if labels.dtype.kind not in "iu":
            raise DatasetError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    return np.ascontiguousarray(labels)


def softmax_cross_entropy(
    logits: ArrayLike, labels: np.ndarray, *, ws: Optional[Workspace] = None
) -> Tuple[Tensor, int]:
    """Summed softmax cross-entropy of ``logits`` (n, c) against int labels.

    Returns ``(loss, n_correct)``: a 0-d tensor holding the *sum* over the
    batch, and how many rows' argmax equals the label.  Forward and the
    gradient (``softmax - onehot``) come from one fused Numba pass; the
    gradient is skipped when no graph is recorded.  Labels outside
    ``[0, c)`` raise :class:`~raven_hpc.errors.DatasetError`.
    """
    logits = _t(logits)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy needs (n, classes) logits, got {logits.shape}")
    n, c = logits.shape
    labels = as_labels(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match logits {logits.shape}")
    z = np.ascontiguousarray(logits.data)
    want = is_grad_enabled() and logits.requires_grad
    grad = _buf(ws, "dlogits", (n, c), z.dtype) if want else np.empty((0, 0), z.dtype)
    total, correct, bad = _k_softmax_xent(z, labels, grad, want)
    if bad >= 0:
        raise DatasetError(
            f"label {int(labels[bad])} at batch row {int(bad)} is outside [0, {c}) "
            f"for a model with {c} classes"
        )
    loss = Tensor._from_op(np.array(total, dtype=z.dtype), "softmax_cross_entropy", (logits,), grad)
    return loss, int(correct)


@_rule("softmax_cross_entropy")
def _softmax_xent_grad(g, node):
    grad = node.ctx
    s = float(g)
    return (grad if s == 1.0 else grad * np.asarray(s, dtype=grad.dtype),)
