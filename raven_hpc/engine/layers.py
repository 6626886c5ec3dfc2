"""Layers, their registry, and parameter initialisers.

A layer type is one class registered under its spec name with
:func:`register_layer`.  The class says which spec keys it takes
(:attr:`Layer.KEYS`, with defaults), checks and normalises its spec entry
and computes its output shape *without allocating anything*
(:meth:`Layer.plan`), lists its parameter shapes, initialises them in place,
and applies itself to a :class:`Tensor`.

Input shapes: ``dense`` flattens every non-batch axis of its input (so an
``(n, 28, 28)`` or ``(n, 1, 28, 28)`` image batch feeds it directly); an
explicit ``{"type": "flatten"}`` layer is available for readability and for
layer types that will not flatten implicitly.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

import numpy as np

from raven_hpc.errors import ModelError

from . import ops
from .tensor import Tensor, Workspace

__all__ = [
    "INITIALIZERS",
    "LAYERS",
    "Dense",
    "Flatten",
    "Layer",
    "register_layer",
]

Shape = Tuple[int, ...]

# -- initialisers ---------------------------------------------------------------
# name -> fn(rng, out, fan_in, fan_out): fill ``out`` (a float32 view) in place.


def _he_normal(rng: np.random.Generator, out: np.ndarray, fan_in: int, fan_out: int) -> None:
    rng.standard_normal(out=out, dtype=out.dtype)
    out *= out.dtype.type(math.sqrt(2.0 / fan_in))


def _xavier_uniform(rng: np.random.Generator, out: np.ndarray, fan_in: int, fan_out: int) -> None:
    a = math.sqrt(6.0 / (fan_in + fan_out))
    rng.random(out=out, dtype=out.dtype)
    out *= out.dtype.type(2.0 * a)
    out -= out.dtype.type(a)


#: ``init`` name -> weight initialiser (biases start at zero).
INITIALIZERS: Dict[str, Callable[[np.random.Generator, np.ndarray, int, int], None]] = {
    "he": _he_normal,
    "xavier": _xavier_uniform,
}

# -- registry -----------------------------------------------------------------

#: layer ``type`` -> class
LAYERS: Dict[str, Type["Layer"]] = {}


def register_layer(cls: Type["Layer"]) -> Type["Layer"]:
    if cls.TYPE in LAYERS:  # pragma: no cover
        raise ValueError(f"layer type {cls.TYPE!r} registered twice")
    LAYERS[cls.TYPE] = cls
    return cls


_REQUIRED = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class Layer(abc.ABC):
    """Base class.  Subclasses set ``TYPE`` and ``KEYS`` and override hooks."""

    TYPE = ""
    #: spec key -> default (``_REQUIRED`` for keys without one); ``type`` implied
    KEYS: Dict[str, Any] = {}
    #: whether the layer accepts any input whose per-sample size matches
    #: (it flattens), rather than an exact shape
    FLATTENS_INPUT = False

    def __init__(self, cfg: Mapping[str, Any], index: int, in_shape: Shape):
        self.index = index
        self.name = f"{self.TYPE}_{index}"
        self.in_shape = tuple(in_shape)
        self.cfg, self.out_shape = self.plan(cfg, index, self.in_shape)
        self.params: Dict[str, Tensor] = {}

    # -- validation (class-level, no allocation) ---------------------------
    @classmethod
    def where(cls, index: int) -> str:
        return f"model.layers[{index}] ({cls.TYPE})"

    @classmethod
    def normalise(cls, cfg: Mapping[str, Any], index: int) -> Dict[str, Any]:
        """Check keys, fill defaults; returns ``{"type": ..., **keys}``."""
        allowed = {"type", *cls.KEYS}
        for key in cfg:
            if key not in allowed:
                raise ModelError(
                    f"{cls.where(index)}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}"
                )
        out: Dict[str, Any] = {"type": cls.TYPE}
        for key, default in cls.KEYS.items():
            if key in cfg:
                out[key] = cfg[key]
            elif default is _REQUIRED:
                raise ModelError(f"{cls.where(index)}: missing required key {key!r}")
            else:
                out[key] = default
        return out

    @classmethod
    def plan(cls, cfg: Mapping[str, Any], index: int, in_shape: Shape) -> Tuple[Dict[str, Any], Shape]:
        """Normalised config and output shape for input ``in_shape`` (raises ModelError)."""
        return cls.normalise(cfg, index), tuple(in_shape)

    # -- parameters ----------------------------------------------------------
    @classmethod
    def shapes_of_params(cls, cfg: Mapping[str, Any], in_shape: Shape) -> List[Tuple[str, Shape]]:
        """``[(name, shape), ...]`` for a normalised ``cfg``, in flat-vector order."""
        return []

    def param_shapes(self) -> List[Tuple[str, Shape]]:
        return self.shapes_of_params(self.cfg, self.in_shape)

    def init_params(self, views: Mapping[str, np.ndarray], rng: np.random.Generator, init: str) -> None:
        """Fill this layer's parameter views in place."""

    def bind(self, tensors: Mapping[str, Tensor]) -> None:
        self.params = dict(tensors)

    def num_params(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.param_shapes())

    # -- compute ---------------------------------------------------------------
    @abc.abstractmethod
    def __call__(self, x: Tensor, ws: Optional[Workspace] = None) -> Tensor:
        """The layer's output for ``x``, recorded on the graph."""


@register_layer
class Flatten(Layer):
    """``(n, *shape) -> (n, prod(shape))`` (a view)."""

    TYPE = "flatten"
    FLATTENS_INPUT = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        return cls.normalise(cfg, index), (int(np.prod(in_shape, dtype=np.int64)),)

    def __call__(self, x, ws=None):
        return ops.reshape(x, (x.shape[0], -1)) if x.ndim != 2 else x


@register_layer
class Dense(Layer):
    """Fully connected: ``act(flatten(x) @ W + b)``, ``W`` of shape (in, units).

    Spec keys: ``units`` (positive int, required), ``activation``
    (``"relu"`` or ``"linear"``; ``None``/``"none"`` mean linear).
    """

    TYPE = "dense"
    KEYS = {"units": _REQUIRED, "activation": "linear"}
    FLATTENS_INPUT = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        units = out["units"]
        if not _is_int(units) or units <= 0:
            raise ModelError(f"{cls.where(index)}: units must be a positive integer, got {units!r}")
        out["units"] = int(units)
        act = out["activation"]
        if act is None or act == "none":
            act = "linear"
        if not isinstance(act, str) or act not in ops.ACTIVATIONS:
            raise ModelError(
                f"{cls.where(index)}: unknown activation {act!r}; "
                f"known activations: {', '.join(sorted(ops.ACTIVATIONS))}"
            )
        out["activation"] = act
        return out, (out["units"],)

    def __init__(self, cfg, index, in_shape):
        super().__init__(cfg, index, in_shape)
        self.units = self.cfg["units"]
        self.activation = self.cfg["activation"]
        self.fan_in = int(np.prod(self.in_shape, dtype=np.int64))

    @classmethod
    def shapes_of_params(cls, cfg, in_shape):
        fan_in = int(np.prod(in_shape, dtype=np.int64))
        return [("W", (fan_in, cfg["units"])), ("b", (cfg["units"],))]

    def init_params(self, views, rng, init):
        INITIALIZERS[init](rng, views["W"], self.fan_in, self.units)
        views["b"].fill(0)

    def __call__(self, x, ws=None):
        if x.ndim != 2:
            x = ops.reshape(x, (x.shape[0], -1))
        return ops.dense(x, self.params["W"], self.params["b"], self.activation, ws=ws)
