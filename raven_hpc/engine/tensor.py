"""The autograd core: :class:`Tensor`, :func:`no_grad`, backward.

A tensor holds ``data`` (a numpy array), ``grad``, whether it
``requires_grad``, and -- when an op made it -- its ``parents``, the op name
and the context the op saved for its gradient rule.  The graph is built as
the ops run (define-by-run).  :meth:`Tensor.backward` orders the graph
topologically with an explicit stack (no recursion, so deep graphs are fine)
and walks it in reverse, calling the rule registered for each op name in
:data:`GRADIENTS` (filled by :mod:`raven_hpc.engine.ops` and the other op
modules).  The operators ``+`` and ``@`` are ops too: :mod:`.ops` installs
them on :class:`Tensor`, so this module imports no op.

Gradient accumulation:

* a *leaf* (no op) accumulates **in place** into its ``grad`` array; a model
  presets every parameter's ``grad`` to a view of its flat gradient vector,
  so backward adds straight into it.  A leaf with ``overwrite_grad`` set
  takes its next gradient by overwriting ``grad`` instead (the flag then
  clears) -- this saves zero-filling and re-reading the gradient vector;
  rules ask :func:`grad_target` for such a leaf's ``grad`` array so a GEMM
  can write the gradient straight into it;
* an intermediate tensor's ``grad`` may alias an array another rule still
  reads, so a second contribution makes a new array instead of adding in
  place.  Rules never modify the incoming gradient.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .arrays import xp_of

__all__ = ["Tensor", "as_tensor", "no_grad", "enable_grad", "is_grad_enabled", "grad_target", "gradient_rule",
           "GRADIENTS"]

#: op name -> rule(grad_out, node) -> tuple of gradients, one per parent
#: (``None`` where the parent needs none).
GRADIENTS: Dict[str, Callable[[np.ndarray, "Tensor"], Tuple[Optional[np.ndarray], ...]]] = {}

_state = threading.local()


def gradient_rule(op: str):
    """Decorator: register ``fn(grad_out, node)`` as the gradient rule of ``op``."""
    def deco(fn):
        if op in GRADIENTS:  # pragma: no cover
            raise ValueError(f"gradient rule for {op!r} registered twice")
        GRADIENTS[op] = fn
        return fn

    return deco


def is_grad_enabled() -> bool:
    """Whether ops record the graph (False inside :class:`no_grad`)."""
    return getattr(_state, "enabled", True)


class _GradMode:
    _mode = True

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False


class no_grad(_GradMode):
    """Context manager: ops run without recording a graph."""

    _mode = False


class enable_grad(_GradMode):
    """Context manager: ops record the graph (undoes an outer ``no_grad``)."""

    _mode = True


def _as_float_array(data: Any) -> np.ndarray:
    arr = xp_of(data).asarray(data)
    if arr.dtype != np.float32 and arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-d float array that remembers how it was made.

    ``data`` keeps float32 or float64 (float64 is used by the gradient
    checks); anything else is converted to float32.  No copy is made when
    ``data`` already is such an array.
    """

    __slots__ = ("data", "grad", "requires_grad", "parents", "op", "ctx", "name", "overwrite_grad", "__weakref__")

    def __init__(self, data: Any, requires_grad: bool = False, name: Optional[str] = None):
        self.data: np.ndarray = _as_float_array(data)
        self.grad: Optional[np.ndarray] = None
        self.requires_grad: bool = bool(requires_grad)
        self.parents: Tuple[Tensor, ...] = ()
        self.op: Optional[str] = None
        self.ctx: Any = None
        self.name = name
        self.overwrite_grad: bool = False

    # -- construction by ops --------------------------------------------
    @classmethod
    def from_op(cls, data: np.ndarray, op: str, parents: Tuple["Tensor", ...], ctx: Any = None) -> "Tensor":
        """Result of op ``op``; records the graph only when a parent needs it."""
        t = cls.__new__(cls)
        t.data = data
        t.grad = None
        t.name = None
        t.overwrite_grad = False
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            t.requires_grad = True
            t.parents = parents
            t.op = op
            t.ctx = ctx
        else:
            t.requires_grad = False
            t.parents = ()
            t.op = None
            t.ctx = None
        return t

    # -- conveniences -----------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.data.size == 1 else self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def zero_grad(self) -> None:
        if self.grad is not None:
            self.grad.fill(0)

    def __repr__(self) -> str:
        op = f", op={self.op}" if self.op else ""
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.data.shape}, dtype={self.data.dtype}{op}{rg})"

    # -- autograd ----------------------------------------------------------
    def backward(self, grad: Optional[np.ndarray] = None) -> None:
        """Accumulate d(self)/d(leaf) * ``grad`` into every leaf that needs it.

        ``grad`` defaults to ones for a one-element tensor.  Each call adds
        to leaf gradients (zero them yourself between steps); gradients of
        intermediate tensors are recomputed from scratch on each call.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a one-element tensor, got shape {self.data.shape}"
                )
            grad = xp_of(self.data).ones_like(self.data)
        else:
            grad = xp_of(self.data).asarray(grad, dtype=self.data.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"gradient shape {grad.shape} != tensor shape {self.data.shape}")
        order = _toposort(self)
        for node in order:  # intermediate gradients belong to one backward pass
            if node.op is not None:
                node.grad = None
        _accumulate(self, grad)
        for node in reversed(order):
            if node.op is None or node.grad is None:
                continue
            grads = GRADIENTS[node.op](node.grad, node)
            for parent, g in zip(node.parents, grads):
                if g is not None and parent.requires_grad:
                    _accumulate(parent, g)


def _toposort(root: Tensor) -> List[Tensor]:
    """Nodes reachable from ``root`` through ``requires_grad`` edges, parents first."""
    order: List[Tensor] = []
    seen = set()
    stack: List[Tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node.parents:
            if p.requires_grad and id(p) not in seen:
                stack.append((p, False))
    return order


def as_tensor(x: Any) -> Tensor:
    """``x`` itself if it is a :class:`Tensor`, else a constant tensor of it."""
    return x if isinstance(x, Tensor) else Tensor(x)


def grad_target(t: Tensor) -> Optional[np.ndarray]:
    """``t.grad`` if the next gradient of leaf ``t`` may be *written* there.

    A rule that gets an array here computes the gradient straight into it
    and returns that same array; :func:`_accumulate` then sees it is
    already in place.  ``None`` means: return a gradient array as usual.
    """
    g = t.grad
    if t.overwrite_grad and g is not None and t.op is None and g.flags.c_contiguous:
        return g
    return None


def _accumulate(t: Tensor, g: np.ndarray) -> None:
    if g.shape != t.data.shape:  # pragma: no cover - a rule bug
        raise RuntimeError(f"gradient of shape {g.shape} for tensor of shape {t.data.shape} (op {t.op})")
    if t.op is None:
        if t.grad is None:
            t.grad = xp_of(g).array(g, dtype=t.data.dtype, copy=True)
        elif t.overwrite_grad:
            if g is not t.grad:
                xp_of(t.grad).copyto(t.grad, g)
        else:
            xp_of(t.grad).add(t.grad, g, out=t.grad)
        t.overwrite_grad = False
    elif t.grad is None:
        t.grad = g
    else:
        t.grad = t.grad + g

