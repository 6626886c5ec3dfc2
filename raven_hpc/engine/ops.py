"""Functional ops and their gradient rules.

Each op is a forward function here plus **one row** in the gradient table
(:data:`raven_hpc.engine.tensor.GRADIENTS`), registered with :func:`~raven_hpc.engine.tensor.gradient_rule`
next to it.  Adding an op means writing both, nothing else.

Ops take :class:`Tensor` (or arrays, wrapped as constants) and return
tensors.  The heavy ops accept ``ws=`` a :class:`Workspace`: outputs and
gradient scratch then live in reused buffers instead of fresh allocations
(the model does this; results are only valid until the next call with the
same workspace).  Without ``ws`` everything is freshly allocated.

Kernels and scratch memory come from the workspace's backend
(:mod:`.workspace`): ``ws.kernels`` is that backend's kernel table, GEMMs
go through its ``gemm``.  Without ``ws`` the CPU backend serves.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from raven_hpc.errors import DatasetError, ModelError
from raven_hpc.kernels import ACTIVATIONS
from raven_hpc.kernels.activations import ACTIVATION_PARAMS, LINEAR, SAVES_INPUT

from .arrays import contiguous, xp_of
from .tensor import Tensor, as_tensor, gradient_rule, grad_target, is_grad_enabled
from .validation import check_real
from .workspace import Workspace, buffer, kernels_of

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_PARAMS",
    "ActFn",
    "activation_code",
    "add",
    "apply_activation",
    "as_labels",
    "check_real",
    "dense",
    "fused_loss",
    "fused_loss_grad",
    "matmul",
    "relu",
    "reshape",
    "resolve_activation",
    "softmax_cross_entropy",
]

ArrayLike = Union[Tensor, np.ndarray, float]

# -- activations: names, parameters, kernel codes ---------------------------------
class ActFn(NamedTuple):
    """A resolved elementwise activation, what the kernels need.

    ``name`` is the canonical name (also the op name of its graph nodes),
    ``code`` the kernel code, ``p0``/``p1`` its parameters (NaN where
    unused), ``saves_input`` whether backward needs the pre-activation
    (otherwise it works from the output; see :mod:`raven_hpc.kernels.activations`).
    """

    name: str
    code: int
    p0: float
    p1: float
    saves_input: bool

    @property
    def params(self) -> Dict[str, float]:
        """The parameters by name, e.g. ``{"negative_slope": 0.01}``."""
        return dict(zip(ACTIVATION_PARAMS.get(self.name, {}), (self.p0, self.p1)))


#: other names of an activation -> its canonical name
_ALIASES = {"swish": "silu"}


def _check_activation_params(where: str, name: str, p: Dict[str, float]) -> None:
    """Ranges the kernels rely on (output-based backward needs slope/alpha >= 0)."""
    if name == "leaky_relu" and p["negative_slope"] < 0:
        raise ModelError(f"{where}: leaky_relu negative_slope must be >= 0 (its gradient is computed from "
                         f"the output, which needs a non-negative slope), got {p['negative_slope']!r}")
    if name == "elu" and p["alpha"] < 0:
        raise ModelError(f"{where}: elu alpha must be >= 0 (its gradient is computed from the output), "
                         f"got {p['alpha']!r}")
    if name == "hardtanh" and not p["min_val"] < p["max_val"]:
        raise ModelError(f"{where}: hardtanh needs min_val < max_val, got min_val = {p['min_val']!r}, "
                         f"max_val = {p['max_val']!r}")
    if name == "softplus" and not p["beta"] > 0:
        raise ModelError(f"{where}: softplus beta must be > 0, got {p['beta']!r}")


def _make_actfn(where: str, name: str, params: Mapping[str, Any]) -> ActFn:
    canon = _ALIASES.get(name, name)
    defaults = ACTIVATION_PARAMS.get(canon, {})
    for key in params:
        if key not in defaults:
            takes = f"its parameters: {', '.join(defaults)}" if defaults else "it takes none"
            raise ModelError(f"{where}: activation {name!r} has no parameter {key!r}; {takes}")
    values = {k: check_real(where, f"{canon} {k}", params.get(k, d)) for k, d in defaults.items()}
    _check_activation_params(where, canon, values)
    p = list(values.values()) + [math.nan] * (2 - len(values))
    code = ACTIVATIONS[canon]
    return ActFn(canon, code, p[0], p[1], code in SAVES_INPUT)


#: every activation name with its default parameters (what ``dense`` uses)
_DEFAULT_FNS: Dict[str, ActFn] = {name: _make_actfn("activation", name, {}) for name in ACTIVATIONS}


def resolve_activation(name: Optional[str], params: Optional[Mapping[str, Any]] = None,
                       where: str = "activation") -> ActFn:
    """Check an activation name and its parameters; return the :class:`ActFn`.

    ``None``/``"none"`` mean ``"linear"``.  Parameters not given take their
    defaults (:data:`ACTIVATION_PARAMS`).  Raises
    :class:`~raven_hpc.errors.ModelError` (prefixed with ``where``) for an
    unknown name -- listing the known ones -- an unknown parameter or a
    value out of range.
    """
    if name is None or name == "none":
        name = "linear"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ModelError(f"{where}: unknown activation {name!r}; known activations: {', '.join(sorted(ACTIVATIONS))}")
    if not params:
        return _DEFAULT_FNS[name]
    return _make_actfn(where, name, params)


def activation_code(activation: Optional[str]) -> int:
    """Kernel code of an activation name (``None``/``"none"`` = linear)."""
    return resolve_activation(activation).code


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
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul needs 2-D operands, got {a.shape} and {b.shape}")
    return Tensor.from_op(kernels_of(None).gemm(a.data, b.data), "matmul", (a, b))


@gradient_rule("matmul")
def _matmul_grad(g, node):
    a, b = node.parents
    gemm = kernels_of(None).gemm
    ga = gemm(g, b.data.T) if a.requires_grad else None
    gb = gemm(a.data.T, g) if b.requires_grad else None
    return ga, gb


# -- add ----------------------------------------------------------------------
def add(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``a + b`` with numpy broadcasting."""
    a, b = as_tensor(a), as_tensor(b)
    return Tensor.from_op(a.data + b.data, "add", (a, b))


@gradient_rule("add")
def _add_grad(g, node):
    a, b = node.parents
    return (
        _unbroadcast(g, a.shape) if a.requires_grad else None,
        _unbroadcast(g, b.shape) if b.requires_grad else None,
    )


def _rmatmul(b: Tensor, a: ArrayLike) -> Tensor:
    return matmul(a, b)


# the Tensor operators are these ops (tensor.py imports no op module)
Tensor.__add__ = Tensor.__radd__ = add
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = _rmatmul


# -- reshape ------------------------------------------------------------------
def reshape(a: ArrayLike, shape: Sequence[int]) -> Tensor:
    """A reshaped view of ``a`` (a copy only when numpy needs one)."""
    a = as_tensor(a)
    return Tensor.from_op(a.data.reshape(tuple(shape)), "reshape", (a,))


@gradient_rule("reshape")
def _reshape_grad(g, node):
    return (g.reshape(node.parents[0].shape),)


# -- elementwise activations ------------------------------------------------
def apply_activation(x: ArrayLike, fn: ActFn, *, ws: Optional[Workspace] = None) -> Tensor:
    """``fn`` applied elementwise to ``x``, as one node named ``fn.name``.

    ``linear`` returns ``x`` itself.  Backward works from the output, or --
    for activations in ``SAVES_INPUT`` -- from the input, which the node
    references (no copy when ``x`` is contiguous).  With ``ws`` the output
    and the input gradient live in its buffers ``"y"`` and ``"gx"``.
    """
    x = as_tensor(x)
    if fn.code == LINEAR:
        return x
    xs = contiguous(x.data)
    y = buffer(ws, "y", xs.shape, xs.dtype)
    kernels_of(ws).act_forward(xs.reshape(-1), y.reshape(-1), fn.code, fn.p0, fn.p1)
    return Tensor.from_op(y, fn.name, (x,), (fn, xs if fn.saves_input else None, ws))


def _activation_grad(g, node):
    fn, saved_input, ws = node.ctx
    s = node.data if saved_input is None else saved_input
    g = contiguous(g, dtype=node.data.dtype)
    gx = buffer(ws, "gx", g.shape, g.dtype)
    kernels_of(ws).act_backward(g.reshape(-1), s.reshape(-1), gx.reshape(-1), fn.code, fn.p0, fn.p1)
    return (gx,)


# one rule serves every elementwise activation; its nodes are named after it
for _name in sorted(set(_ALIASES.get(n, n) for n in ACTIVATIONS) - {"linear"}):
    gradient_rule(_name)(_activation_grad)
del _name


def relu(a: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``max(a, 0)``."""
    return apply_activation(a, _DEFAULT_FNS["relu"], ws=ws)


# -- dense (fused) ------------------------------------------------------------
def dense(
    x: ArrayLike,
    W: ArrayLike,
    b: Optional[ArrayLike] = None,
    activation: Union[str, ActFn, None] = None,
    *,
    ws: Optional[Workspace] = None,
) -> Tensor:
    """``act(x @ W + b)`` as one node.

    ``x`` (n, k), ``W`` (k, m), ``b`` (m,) or ``None``; ``activation`` a
    name (default parameters) or a resolved :class:`ActFn`.  The GEMM
    writes into the output buffer (BLAS); one Numba pass then adds the bias
    and applies the activation in place.  Backward fuses ``act'`` with the
    bias gradient in one pass, then ``dW = x.T @ gz`` and -- only when ``x``
    requires grad (not for the input layer) -- ``dx = gz @ W.T``.

    Memory: activations whose backward needs the pre-activation
    (``gelu``, ``silu``, ``softplus``) keep it in a second (n, m) buffer;
    all others keep only the output.
    """
    fn = activation if isinstance(activation, ActFn) else resolve_activation(activation, where="dense")
    act = fn.code
    x, W = as_tensor(x), as_tensor(W)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"dense: x {x.shape} and W {W.shape} do not fit (need (n, k) and (k, m))")
    n, m = x.shape[0], W.shape[1]
    dtype = np.result_type(x.dtype, W.dtype)
    if b is not None:
        b = as_tensor(b)
        if b.shape != (m,):
            raise ValueError(f"dense: bias shape {b.shape} != ({m},)")
        parents = (x, W, b)
    else:
        parents = (x, W)
    k = kernels_of(ws)
    pre = None
    if fn.saves_input:
        pre = buffer(ws, "z", (n, m), dtype)
        k.gemm(x.data, W.data, pre)
        y = buffer(ws, "y", (n, m), dtype)
        if b is not None:
            k.bias_act_forward_keep(pre, b.data, y, act, fn.p0, fn.p1)
        else:
            k.act_forward(pre.reshape(-1), y.reshape(-1), act, fn.p0, fn.p1)
    else:
        y = buffer(ws, "y", (n, m), dtype)
        k.gemm(x.data, W.data, y)
        if b is not None:
            k.bias_act_forward(y, b.data, act, fn.p0, fn.p1)
        elif act != LINEAR:
            flat = y.reshape(-1)
            k.act_forward(flat, flat, act, fn.p0, fn.p1)
    return Tensor.from_op(y, "dense", parents, (fn, pre, ws))


@gradient_rule("dense")
def _dense_grad(g, node):
    x, W = node.parents[0], node.parents[1]
    b = node.parents[2] if len(node.parents) == 3 else None
    fn, pre, ws = node.ctx
    k = kernels_of(ws)
    act = fn.code
    saved = node.data if pre is None else pre  # what act' is computed from
    n, m = g.shape
    dtype = node.data.dtype
    g = contiguous(g, dtype=dtype)
    db = None
    if b is not None and b.requires_grad:
        db = grad_target(b)
        if db is None or db.dtype != dtype:
            db = buffer(ws, "db", (m,), dtype)
        if act != LINEAR:
            gz = buffer(ws, "gz", (n, m), dtype)
            k.bias_act_backward(g, saved, act, gz, db, fn.p0, fn.p1)
        else:
            gz = g
            k.col_sum(g, db)
    elif act != LINEAR:
        gz = buffer(ws, "gz", (n, m), dtype)
        k.act_backward(g.reshape(-1), saved.reshape(-1), gz.reshape(-1), act, fn.p0, fn.p1)
    else:
        gz = g
    dW = None
    if W.requires_grad:
        dW = grad_target(W)
        if dW is None or dW.dtype != dtype:
            dW = buffer(ws, "dW", W.shape, dtype)
        k.gemm(x.data.T, gz, dW)
    dx = None
    if x.requires_grad:
        dx = buffer(ws, "dx", x.shape, dtype)
        k.gemm(gz, W.data.T, dx)
    return (dx, dW, db) if b is not None else (dx, dW)


# -- losses -------------------------------------------------------------------
# A loss op takes the model output (n, c) and int labels and returns
# ``(loss_sum, n_correct)``; its kernel computes loss, accuracy and gradient
# in one pass (:func:`fused_loss`).  ``softmax_cross_entropy`` lives here, the
# other losses and the ``model.loss`` registry in :mod:`.losses`.
def as_labels(labels: Any) -> np.ndarray:
    """Integer class labels as a contiguous int64 array (DatasetError otherwise)."""
    labels = xp_of(labels).asarray(labels)
    if labels.dtype != np.int64:
        if labels.dtype.kind not in "iu":
            raise DatasetError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    return contiguous(labels)


def fused_loss(op: str, kernel_op: str, output: ArrayLike, labels: Any, *args: Any,
               ws: Optional[Workspace] = None) -> Tuple[Tensor, int]:
    """Run a fused loss kernel; return ``(loss_sum tensor, n_correct)``.

    ``kernel_op`` names the kernel, ``kernel(out, labels, grad, want_grad,
    *args) -> (loss_sum, correct, bad_row)`` (see
    :mod:`raven_hpc.kernels.losses`), taken from ``ws``'s backend.  The gradient is
    computed only when a graph is recorded, into ``ws``'s ``"dlogits"``
    buffer when given; the loss node (op ``op``) keeps it for
    :func:`fused_loss_grad`.  Labels outside ``[0, c)`` raise
    :class:`~raven_hpc.errors.DatasetError`.
    """
    output = as_tensor(output)
    if output.ndim != 2:
        raise ValueError(f"{op} needs (n, classes) outputs, got {output.shape}")
    n, c = output.shape
    labels = as_labels(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match outputs {output.shape}")
    z = contiguous(output.data)
    want = is_grad_enabled() and output.requires_grad
    k = kernels_of(ws)
    grad = buffer(ws, "dlogits", (n, c), z.dtype) if want else k.empty((0, 0), z.dtype)
    total, correct, bad = getattr(k, kernel_op)(z, labels, grad, want, *args)
    if bad >= 0:
        raise DatasetError(
            f"label {int(labels[bad])} at batch row {int(bad)} is outside [0, {c}) "
            f"for a model with {c} classes"
        )
    loss = Tensor.from_op(np.array(total, dtype=z.dtype), op, (output,), grad)
    return loss, int(correct)


def fused_loss_grad(g, node):
    """Gradient rule shared by every :func:`fused_loss` op: scale the kept gradient."""
    grad = node.ctx
    s = float(g)
    return (grad if s == 1.0 else grad * grad.dtype.type(s),)


def check_label_smoothing(where: str, value: Any) -> float:
    """``label_smoothing`` as a float in [0, 1) (ModelError otherwise)."""
    return check_real(where, "label_smoothing", value, 0.0, 1.0, high_open=True)


def softmax_cross_entropy(
    logits: ArrayLike, labels: np.ndarray, *, label_smoothing: float = 0.0, ws: Optional[Workspace] = None
) -> Tuple[Tensor, int]:
    """Summed softmax cross-entropy of ``logits`` (n, c) against int labels.

    Returns ``(loss, n_correct)``: a 0-d tensor holding the *sum* over the
    batch, and how many rows' argmax equals the label.  With
    ``label_smoothing`` ``eps`` in [0, 1) the target is
    ``(1 - eps) onehot + eps / c``, as in torch's
    ``cross_entropy(..., label_smoothing=eps, reduction="sum")``.  Forward
    and the gradient (``softmax - target``) come from one fused Numba pass;
    the gradient is skipped when no graph is recorded.  Labels outside
    ``[0, c)`` raise :class:`~raven_hpc.errors.DatasetError`.
    """
    eps = check_label_smoothing("softmax_cross_entropy", label_smoothing)
    return fused_loss("softmax_cross_entropy", "softmax_xent", logits, labels, eps, ws=ws)


gradient_rule("softmax_cross_entropy")(fused_loss_grad)
