"""Merge ops and layers: ``add``, ``mul``, ``concat`` of two or more inputs.

These are what make a model a graph rather than a chain: a layer table with
``inputs = ["h", "r"]`` and ``type = "add"`` sums two earlier layers'
outputs (a residual connection).  ``add`` and ``mul`` need inputs of the
same shape (no broadcasting: a shape mismatch in a model spec is almost
always a mistake); ``concat`` joins along one per-sample axis.

Each op is a single graph node however many inputs it has.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from raven_hpc.errors import ModelError

from .arrays import xp_of
from .layers import Layer, register_layer
from .ops import ArrayLike
from .tensor import Tensor, as_tensor, gradient_rule
from .validation import is_int
from .workspace import Workspace, buffer

__all__ = ["Add", "Concat", "MergeLayer", "Mul", "add_n", "concat", "mul_n"]


def _operands(xs: Sequence[ArrayLike], what: str, same_shape: bool = True) -> List[Tensor]:
    ts = [as_tensor(x) for x in xs]
    if len(ts) < 2:
        raise ValueError(f"{what} needs at least 2 inputs, got {len(ts)}")
    if same_shape and any(t.shape != ts[0].shape for t in ts):
        raise ValueError(f"{what} needs inputs of one shape, got {', '.join(str(t.shape) for t in ts)}")
    return ts


# -- ops -------------------------------------------------------------------------------
def add_n(xs: Sequence[ArrayLike], *, ws: Optional[Workspace] = None) -> Tensor:
    """Elementwise sum of two or more tensors of one shape."""
    ts = _operands(xs, "add_n")
    dtype = np.result_type(*(t.dtype for t in ts))
    y = buffer(ws, "y", ts[0].shape, dtype)
    xp = xp_of(y)
    xp.add(ts[0].data, ts[1].data, out=y)
    for t in ts[2:]:
        xp.add(y, t.data, out=y)
    return Tensor.from_op(y, "add_n", tuple(ts))


@gradient_rule("add_n")
def _add_n_grad(g, node):
    # every input gets the incoming gradient itself (rules never modify it)
    return tuple(g if p.requires_grad else None for p in node.parents)


def mul_n(xs: Sequence[ArrayLike], *, ws: Optional[Workspace] = None) -> Tensor:
    """Elementwise product of two or more tensors of one shape."""
    ts = _operands(xs, "mul_n")
    dtype = np.result_type(*(t.dtype for t in ts))
    y = buffer(ws, "y", ts[0].shape, dtype)
    xp = xp_of(y)
    xp.multiply(ts[0].data, ts[1].data, out=y)
    for t in ts[2:]:
        xp.multiply(y, t.data, out=y)
    return Tensor.from_op(y, "mul_n", tuple(ts))


@gradient_rule("mul_n")
def _mul_n_grad(g, node):
    # d/dx_i = g * prod_{j != i} x_j, formed directly (no division: inputs may be 0)
    out = []
    for i, p in enumerate(node.parents):
        if not p.requires_grad:
            out.append(None)
            continue
        gi = None
        for j, q in enumerate(node.parents):
            if j != i:
                gi = g * q.data if gi is None else xp_of(gi).multiply(gi, q.data, out=gi)
        out.append(gi)
    return tuple(out)


def concat(xs: Sequence[ArrayLike], axis: int = -1, *, ws: Optional[Workspace] = None) -> Tensor:
    """Join two or more tensors along ``axis`` (an axis of the full tensors, batch included)."""
    ts = _operands(xs, "concat", same_shape=False)
    ndim = ts[0].ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"concat axis {axis} out of range for {ndim}-d inputs")
    ax = axis % ndim
    for t in ts:
        if t.ndim != ndim or t.shape[:ax] + t.shape[ax + 1:] != ts[0].shape[:ax] + ts[0].shape[ax + 1:]:
            raise ValueError(f"concat along axis {axis}: shapes {', '.join(str(t.shape) for t in ts)} do not fit")
    shape = list(ts[0].shape)
    shape[ax] = sum(t.shape[ax] for t in ts)
    dtype = np.result_type(*(t.dtype for t in ts))
    y = buffer(ws, "y", tuple(shape), dtype)
    xp_of(y).concatenate([t.data for t in ts], axis=ax, out=y)
    return Tensor.from_op(y, "concat", tuple(ts), ax)


@gradient_rule("concat")
def _concat_grad(g, node):
    ax = node.ctx
    bounds = np.cumsum([p.shape[ax] for p in node.parents])[:-1]
    parts = xp_of(g).split(g, [int(b) for b in bounds], axis=ax)  # views of g
    return tuple(part if p.requires_grad else None for part, p in zip(parts, node.parents))


# -- layers ------------------------------------------------------------------------------
class MergeLayer(Layer):
    """Base of layers that combine two or more inputs (``MERGE = True``).

    ``plan`` gets the tuple of input shapes; ``__call__`` the list of tensors.
    """

    MERGE = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        shapes = tuple(tuple(s) for s in in_shape)
        if len(shapes) < 2:
            raise ModelError(f"{cls.where(index)}: needs at least 2 inputs, got {len(shapes)}")
        return out, cls.output_shape(out, index, shapes)

    @classmethod
    def output_shape(cls, cfg, index, shapes):
        if any(s != shapes[0] for s in shapes):
            raise ModelError(
                f"{cls.where(index)}: inputs must all have the same shape, got {', '.join(map(str, shapes))}"
            )
        return shapes[0]


@register_layer
class Add(MergeLayer):
    """Elementwise sum of the inputs (same shapes), e.g. a residual connection."""

    TYPE = "add"

    def __call__(self, xs, ws=None):
        return add_n(xs, ws=ws)


@register_layer
class Mul(MergeLayer):
    """Elementwise product of the inputs (same shapes), e.g. a gate."""

    TYPE = "mul"

    def __call__(self, xs, ws=None):
        return mul_n(xs, ws=ws)


@register_layer
class Concat(MergeLayer):
    """Inputs joined along ``axis``, a per-sample axis (default -1, the last).

    All other axes must match.
    """

    TYPE = "concat"
    KEYS = {"axis": -1}

    @classmethod
    def output_shape(cls, cfg, index, shapes):
        axis = cfg["axis"]
        ndim = len(shapes[0])
        if not is_int(axis) or not -ndim <= axis < ndim:
            raise ModelError(
                f"{cls.where(index)}: axis must be an integer in [{-ndim}, {ndim - 1}] "
                f"(a per-sample axis of {ndim}-d inputs), got {axis!r}"
            )
        cfg["axis"] = int(axis)
        ax = int(axis) % ndim
        rest = [s[:ax] + s[ax + 1:] for s in shapes]
        if any(len(s) != ndim for s in shapes) or any(r != rest[0] for r in rest):
            raise ModelError(
                f"{cls.where(index)}: inputs must match on every axis but axis {axis}, got "
                f"{', '.join(map(str, shapes))}"
            )
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out)

    def __call__(self, xs, ws=None):
        axis = self.cfg["axis"]
        return concat(xs, axis + 1 if axis >= 0 else axis, ws=ws)
