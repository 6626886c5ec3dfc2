"""Activation ops and the standalone ``activation`` layer.

Elementwise activations (all of :data:`~raven_hpc.kernels.ACTIVATIONS`);
definitions, parameter names and defaults follow torch::

    name        f(x)                                   parameters (default)         backward from
    linear      x                                      -                            -
    relu        max(x, 0)                              -                            output
    leaky_relu  x if x > 0 else s x                    negative_slope (0.01, >= 0)  output
    elu         x if x > 0 else a (exp(x) - 1)         alpha (1.0, >= 0)            output
    selu        scale * elu(x, alpha), torch's consts  -                            output
    gelu        x Phi(x), exact (erf)                  -                            input
    silu        x sigmoid(x)  (alias: swish)           -                            input
    sigmoid     1 / (1 + exp(-x))                      -                            output
    tanh        tanh(x)                                -                            output
    softplus    log(1 + exp(b x)) / b; x if b x > t    beta (1.0, > 0),             input
                                                       threshold (20.0)
    softsign    x / (1 + |x|)                          -                            output
    hardtanh    clip(x, min_val, max_val)              min_val (-1.0),              output
                                                       max_val (1.0)

"backward from" says what the gradient is computed from (see
:mod:`raven_hpc.kernels.activations`): *output* costs no memory beyond the
result; *input* keeps a reference to the op's input (standalone op: no copy)
or, fused in ``dense``, a second buffer with the pre-activation.

Every elementwise activation is usable fused in ``dense`` (and any layer
taking an ``activation`` name) with its default parameters; the standalone
layer ``{type = "activation", fn = "leaky_relu", negative_slope = 0.2}``
takes parameters.  ``softmax`` and ``log_softmax`` (over the last axis,
numerically stable) are not elementwise: separate ops, usable as the layer's
``fn`` but not fused.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union


from raven_hpc.errors import ModelError
from raven_hpc.kernels import ACTIVATIONS

from .arrays import contiguous
from .layers import REQUIRED, Layer, register_layer
from .ops import ACTIVATION_PARAMS, ActFn, ArrayLike, apply_activation, relu, resolve_activation
from .tensor import Tensor, as_tensor, gradient_rule
from .workspace import Workspace, buffer, kernels_of

__all__ = [
    "ACTIVATION_FNS",
    "Activation",
    "activation",
    "elu",
    "gelu",
    "hardtanh",
    "leaky_relu",
    "log_softmax",
    "relu",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "softsign",
    "swish",
    "tanh",
]

#: the activations that work on the last axis as a whole (not fusable)
_AXIS_FNS = ("softmax", "log_softmax")

#: every ``fn`` the activation op and layer accept
ACTIVATION_FNS = tuple(sorted([*ACTIVATIONS, *_AXIS_FNS]))


# -- softmax / log_softmax ----------------------------------------------------------
def _softmax_op(x: ArrayLike, log: bool, ws: Optional[Workspace]) -> Tensor:
    op = "log_softmax" if log else "softmax"
    x = as_tensor(x)
    if x.ndim == 0:
        raise ValueError(f"{op} needs at least one axis, got a scalar")
    xs = contiguous(x.data)
    c = xs.shape[-1]
    rows = xs.size // c if c else 0
    y = buffer(ws, "y", xs.shape, xs.dtype)
    kernels_of(ws).softmax_forward(xs.reshape(rows, c), y.reshape(rows, c), log)
    return Tensor.from_op(y, op, (x,), ws)


def softmax(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` over the last axis (stable: from ``x - max``)."""
    return _softmax_op(x, False, ws)


def log_softmax(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``x - logsumexp(x)`` over the last axis (stable: from ``x - max``)."""
    return _softmax_op(x, True, ws)


def _softmax_grad_rule(log: bool):
    def rule(g, node):
        ws = node.ctx
        y = node.data
        c = y.shape[-1]
        rows = y.size // c if c else 0
        g = contiguous(g, dtype=y.dtype)
        gx = buffer(ws, "gx", y.shape, y.dtype)
        kernels_of(ws).softmax_backward(g.reshape(rows, c), y.reshape(rows, c), gx.reshape(rows, c), log)
        return (gx,)

    return rule


gradient_rule("softmax")(_softmax_grad_rule(False))
gradient_rule("log_softmax")(_softmax_grad_rule(True))


# -- elementwise, by name -----------------------------------------------------------
def activation(x: ArrayLike, name: str = "relu", *, ws: Optional[Workspace] = None, **params: Any) -> Tensor:
    """Activation ``name`` (any of :data:`ACTIVATION_FNS`) applied to ``x``.

    ``params`` are the activation's parameters (e.g. ``negative_slope`` of
    ``leaky_relu``); unknown names, parameters and out-of-range values raise
    :class:`~raven_hpc.errors.ModelError`.
    """
    if name in _AXIS_FNS:
        if params:
            raise ModelError(f"activation: {name} takes no parameters, got {', '.join(sorted(params))}")
        return _softmax_op(x, name == "log_softmax", ws)
    return apply_activation(x, resolve_activation(name, params), ws=ws)


def leaky_relu(x: ArrayLike, negative_slope: float = 0.01, *, ws: Optional[Workspace] = None) -> Tensor:
    """``x if x > 0 else negative_slope * x`` (``negative_slope >= 0``)."""
    return activation(x, "leaky_relu", ws=ws, negative_slope=negative_slope)


def elu(x: ArrayLike, alpha: float = 1.0, *, ws: Optional[Workspace] = None) -> Tensor:
    """``x if x > 0 else alpha * (exp(x) - 1)`` (``alpha >= 0``)."""
    return activation(x, "elu", ws=ws, alpha=alpha)


def selu(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """Scaled ELU with the self-normalising constants (torch's ``selu``)."""
    return activation(x, "selu", ws=ws)


def gelu(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """Exact GELU, ``x * Phi(x)`` with the normal CDF via ``erf`` (torch's default)."""
    return activation(x, "gelu", ws=ws)


def silu(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``x * sigmoid(x)`` (also called swish)."""
    return activation(x, "silu", ws=ws)


swish = silu


def sigmoid(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``1 / (1 + exp(-x))``, stable for any ``x``."""
    return activation(x, "sigmoid", ws=ws)


def tanh(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """Hyperbolic tangent."""
    return activation(x, "tanh", ws=ws)


def softplus(x: ArrayLike, beta: float = 1.0, threshold: float = 20.0, *,
             ws: Optional[Workspace] = None) -> Tensor:
    """``log(1 + exp(beta x)) / beta``, and ``x`` itself where ``beta x > threshold``."""
    return activation(x, "softplus", ws=ws, beta=beta, threshold=threshold)


def softsign(x: ArrayLike, *, ws: Optional[Workspace] = None) -> Tensor:
    """``x / (1 + |x|)``."""
    return activation(x, "softsign", ws=ws)


def hardtanh(x: ArrayLike, min_val: float = -1.0, max_val: float = 1.0, *,
             ws: Optional[Workspace] = None) -> Tensor:
    """``x`` clipped to ``[min_val, max_val]`` (``min_val < max_val``)."""
    return activation(x, "hardtanh", ws=ws, min_val=min_val, max_val=max_val)


# -- the layer ----------------------------------------------------------------------
_PARAM_KEYS = tuple(dict.fromkeys(k for params in ACTIVATION_PARAMS.values() for k in params))


@register_layer
class Activation(Layer):
    """A standalone activation: ``{type = "activation", fn = "gelu"}``.

    Spec keys: ``fn`` (required; any of :data:`ACTIVATION_FNS`) and the
    parameters of that ``fn`` (``negative_slope`` for ``leaky_relu``,
    ``alpha`` for ``elu``, ``min_val``/``max_val`` for ``hardtanh``,
    ``beta``/``threshold`` for ``softplus``).  The normalised spec lists
    every parameter of ``fn`` with its value.  Output shape = input shape;
    no parameters.  Prefer ``activation = "..."`` on the preceding ``dense``
    layer where the defaults do: it is fused there (one pass less).
    """

    TYPE = "activation"
    KEYS: Dict[str, Any] = {"fn": REQUIRED, **{k: None for k in _PARAM_KEYS}}

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        where = cls.where(index)
        given = {k: out.pop(k) for k in _PARAM_KEYS}
        given = {k: v for k, v in given.items() if v is not None}
        fn = out["fn"]
        if not isinstance(fn, str) or fn not in ACTIVATION_FNS:
            raise ModelError(f"{where}: unknown fn {fn!r}; known activations: {', '.join(ACTIVATION_FNS)}")
        if fn in _AXIS_FNS:
            if given:
                raise ModelError(f"{where}: {fn} takes no parameters, got {', '.join(sorted(given))}")
            return out, tuple(in_shape)
        out.update(resolve_activation(fn, given, where).params)
        return out, tuple(in_shape)

    def __init__(self, cfg, index, in_shape):
        super().__init__(cfg, index, in_shape)
        fn = self.cfg["fn"]
        params = {k: v for k, v in self.cfg.items() if k not in ("type", "fn")}
        self.fn: Union[str, ActFn] = fn if fn in _AXIS_FNS else resolve_activation(fn, params, self.where(index))

    def describe(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.cfg.items() if k not in ("type", "fn"))
        return f"{self.TYPE} ({self.cfg['fn']}{', ' + params if params else ''})"

    def __call__(self, x, ws=None):
        if isinstance(self.fn, ActFn):
            return apply_activation(x, self.fn, ws=ws)
        return _softmax_op(x, self.fn == "log_softmax", ws)
