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

Beyond that a layer may

* keep **state**: non-trainable values that live in the flat parameter
  vector after all trainable ones (batch norm's running statistics); it
  lists them with :meth:`Layer.shapes_of_state`, and folds a step's summed
  statistics into them with :meth:`Layer.update_state` (see
  :meth:`raven_hpc.engine.Model.update_state`);
* take **several inputs** (``MERGE = True``: ``add``, ``mul``, ``concat``):
  its ``plan`` gets a tuple of input shapes and ``__call__`` a list of
  tensors;
* depend on the **run mode** (``USES_CONTEXT = True``: dropout, batch norm):
  its ``__call__`` then also takes a :class:`RunContext` saying whether the
  model trains and where random numbers come from.  Layers that do not care
  keep the plain ``__call__(x, ws=None)``.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from raven_hpc.errors import ModelError

from . import ops
from .tensor import Tensor
from .validation import is_int
from .workspace import Workspace

__all__ = [
    "INITIALIZERS",
    "LAYERS",
    "Dense",
    "Flatten",
    "Layer",
    "REQUIRED",
    "RunContext",
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


REQUIRED = object()

#: spec keys every layer table may have; the model handles them (graph wiring)
GRAPH_KEYS = ("name", "inputs")


class RunContext:
    """How one forward pass runs, for the layers that care (``USES_CONTEXT``).

    ``training``: dropout drops and batch norm normalises with the batch's
    statistics (and adds them to its state gradient); otherwise dropout is
    the identity and batch norm uses its running statistics.

    ``rng``: the pass's random stream, ``np.random.default_rng([seed,
    *key])``, created on first use.  Layers draw from it in layer-list order,
    so a ``(seed, key)`` pair fixes every dropout mask of the pass -- the
    same on any rank.

    ``segments``: optional ``((id, rows), ...)`` cutting the batch into
    consecutive row ranges (a worker's chunk: one per snippet).  Then
    :meth:`uniform_into` fills each range from its own stream,
    ``default_rng([seed, *key, id])``, so a sample's dropout masks depend on
    its snippet, not on which other snippets share the batch: merging tasks
    into chunks leaves the result unchanged.  A single segment draws exactly
    what ``key + (id,)`` without segments would.
    """

    __slots__ = ("training", "seed", "key", "segments", "_rng", "_seg_rngs")

    def __init__(self, training: bool = False, seed: int = 0, key: Sequence[int] = (),
                 segments: Optional[Sequence[Tuple[int, int]]] = None):
        self.training = bool(training)
        self.seed = int(seed)
        self.key = tuple(int(k) for k in key)
        self.segments = None if segments is None else tuple((int(i), int(n)) for i, n in segments)
        self._rng: Optional[np.random.Generator] = None
        self._seg_rngs: Optional[list] = None

    def uniform_into(self, u: np.ndarray) -> None:
        """Fill ``u`` (float32, batch first) with uniform [0, 1) numbers."""
        if self.segments is None:
            self.rng.random(out=u, dtype=np.float32)
            return
        if sum(n for _, n in self.segments) != u.shape[0]:
            raise ValueError(f"segments cover {sum(n for _, n in self.segments)} rows, the batch has {u.shape[0]}")
        if self._seg_rngs is None:
            self._seg_rngs = [np.random.default_rng([self.seed, *self.key, i]) for i, _ in self.segments]
        r0 = 0
        for g, (_, n) in zip(self._seg_rngs, self.segments):
            g.random(out=u[r0:r0 + n], dtype=np.float32)
            r0 += n

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, *self.key])
        return self._rng

    def __repr__(self) -> str:
        mode = "training" if self.training else "eval"
        return f"RunContext({mode}, seed={self.seed}, key={self.key})"



class Layer(abc.ABC):
    """Base class.  Subclasses set ``TYPE`` and ``KEYS`` and override hooks.

    ``in_shape`` is the per-sample input shape -- for a ``MERGE`` layer a
    tuple of them, one per input.  The model sets :attr:`name` (the spec's
    ``name``, default ``<type>_<index>``) before binding parameters.
    """

    TYPE = ""
    #: spec key -> default (``REQUIRED`` for keys without one); ``type`` implied
    KEYS: Dict[str, Any] = {}
    #: whether the layer accepts any input whose per-sample size matches
    #: (it flattens), rather than an exact shape
    FLATTENS_INPUT = False
    #: takes two or more inputs (``plan`` gets a tuple of shapes, ``__call__`` a list)
    MERGE = False
    #: ``__call__(x, ws, ctx)`` gets the pass's :class:`RunContext`
    USES_CONTEXT = False
    #: in training, a sample's output depends on the other samples of the batch
    #: (batch norm): such models are never computed in merged chunks
    BATCH_COUPLED = False

    def __init__(self, cfg: Mapping[str, Any], index: int, in_shape: Shape):
        self.index = index
        self.name = f"{self.TYPE}_{index}"
        self.in_shape = tuple(in_shape)
        self.cfg, self.out_shape = self.plan(cfg, index, self.in_shape)
        self.params: Dict[str, Tensor] = {}
        self.state: Dict[str, Tensor] = {}

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
                valid = ", ".join(sorted(allowed | set(GRAPH_KEYS)))
                raise ModelError(f"{cls.where(index)}: unknown key {key!r}; valid keys: {valid}")
        out: Dict[str, Any] = {"type": cls.TYPE}
        for key, default in cls.KEYS.items():
            if key in cfg:
                out[key] = cfg[key]
            elif default is REQUIRED:
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

    # -- state (non-trainable) ---------------------------------------------------
    @classmethod
    def shapes_of_state(cls, cfg: Mapping[str, Any], in_shape: Shape) -> List[Tuple[str, Shape]]:
        """``[(name, shape), ...]`` of non-trainable state, in flat-vector order."""
        return []

    def state_shapes(self) -> List[Tuple[str, Shape]]:
        return self.shapes_of_state(self.cfg, self.in_shape)

    def init_state(self, views: Mapping[str, np.ndarray]) -> None:
        """Fill this layer's state views in place (called once, at build)."""

    def bind_state(self, tensors: Mapping[str, Tensor]) -> None:
        """Take the state tensors: ``data`` views the parameters, ``grad``
        the gradient vector, where a training pass *adds* its statistics."""
        self.state = dict(tensors)

    def num_state(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.state_shapes())

    def update_state(self, state: Mapping[str, np.ndarray], sums: Mapping[str, np.ndarray], num_samples: int) -> None:
        """Fold one step's summed statistics into ``state`` (views, in place).

        ``sums[name]`` is the sum over the step's tasks of what training
        passes added to ``name``'s gradient slot; ``num_samples`` is the
        step's sample count.  Layers with state must override this.
        """
        if self.state_shapes():  # pragma: no cover - a layer bug
            raise NotImplementedError(f"{type(self).__name__} has state but no update_state")

    # -- description --------------------------------------------------------------
    def describe(self) -> str:
        """Type label for summaries, e.g. ``dense (relu)``."""
        act = self.cfg.get("activation")
        return f"{self.TYPE} ({act})" if isinstance(act, str) and act not in ("linear", "none") else self.TYPE

    # -- compute ---------------------------------------------------------------
    @abc.abstractmethod
    def __call__(self, x: Tensor, ws: Optional[Workspace] = None) -> Tensor:
        """The layer's output for ``x``, recorded on the graph.

        ``MERGE`` layers get a list of tensors; ``USES_CONTEXT`` layers get a
        third argument, the :class:`RunContext` (``None`` means evaluation).
        """


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
    KEYS = {"units": REQUIRED, "activation": "linear"}
    FLATTENS_INPUT = True

    @classmethod
    def plan(cls, cfg, index, in_shape):
        out = cls.normalise(cfg, index)
        units = out["units"]
        if not is_int(units) or units <= 0:
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
