"""Model specs: checking and planning a JSON-serialisable chain or graph of layers.

``spec`` is the config's ``[model]`` table::

    {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                {"type": "dense", "units": 10}],
     "loss": "softmax_cross_entropy", "init": "he", "seed": 0}

**Graphs.**  Every layer table may also have a ``name`` (unique; default
``<type>_<index>``) and ``inputs``: a list of earlier layers' names or
``"input"`` (default: the previous layer, ``"input"`` for the first).
Merge layers (``add``, ``mul``, ``concat``) take two or more inputs, every
other layer exactly one.  The model's output is the last layer's; every
other layer's output must be used.  A residual block::

    [{type = "dense", units = 64, activation = "relu", name = "h"},
     {type = "dense", units = 64, inputs = ["input"], name = "r"},
     {type = "add", inputs = ["h", "r"]},
     {type = "dense", units = 10}]

Layers run in list order (a valid spec is already topologically sorted).
The normalised spec is canonical: ``name`` and ``inputs`` appear only
where they differ from the defaults, so a chain's spec has neither.

:func:`validate_model_spec` checks a spec completely -- layer types, keys,
values, wiring, shapes, loss -- before a single parameter is allocated,
raising :class:`~raven_hpc.errors.ModelError` naming the layer index and type.

:func:`plan_model` returns what :class:`~raven_hpc.engine.model.Model` is built
from: the normalised spec and one :class:`Planned` entry per layer.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from raven_hpc.errors import ModelError

from .layers import GRAPH_KEYS, INITIALIZERS, LAYERS
from .losses import resolve_loss
from .validation import is_int

__all__ = ["INPUT", "MAX_PARAMS", "MODEL_KEYS", "Planned", "Shape", "check_shape", "min_train_batch", "plan_layers",
           "plan_model", "shape_size", "validate_model_spec"]

Shape = Tuple[int, ...]

#: top-level spec keys and their defaults (``layers`` has none)
MODEL_KEYS: Dict[str, Any] = {"layers": None, "loss": "softmax_cross_entropy", "init": "he", "seed": 0}

#: one MPI message carries at most 2**31 - 1 elements (32-bit counts)
MAX_PARAMS = 2**31 - 1

#: the name layers use in ``inputs`` for the model input
INPUT = "input"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def check_shape(input_shape: Any) -> Shape:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}") from None
    if not shape or not all(is_int(s) and s > 0 for s in shape):
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def shape_size(shape: Shape) -> int:
    """Number of elements of an array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64))


class Planned(NamedTuple):
    """One validated layer: class, normalised keys, wiring and shapes."""

    cls: type
    cfg: Dict[str, Any]       # the layer's own keys (no name/inputs)
    name: str
    sources: Tuple[int, ...]  # indices of the input layers, -1 = the model input
    in_shape: Any             # a shape, or a tuple of shapes for merge layers
    out_shape: Shape


def _where(i: int, cfg: Mapping[str, Any]) -> str:
    t = cfg.get("type")
    return f"model.layers[{i}] ({t})" if isinstance(t, str) else f"model.layers[{i}]"


def _layer_names(layers: Sequence[Any]) -> List[str]:
    """Each layer's class check and name; duplicate and malformed names raise."""
    names: List[str] = []
    seen: Dict[str, int] = {}
    for i, cfg in enumerate(layers):
        if not isinstance(cfg, Mapping):
            raise ModelError(f"model.layers[{i}]: must be a table/dict, got {type(cfg).__name__}")
        ltype = cfg.get("type")
        if ltype is None:
            raise ModelError(f"model.layers[{i}]: missing key 'type'; known types: {', '.join(sorted(LAYERS))}")
        if not isinstance(ltype, str) or ltype not in LAYERS:
            raise ModelError(
                f"model.layers[{i}]: unknown layer type {ltype!r}; known types: {', '.join(sorted(LAYERS))}"
            )
        name = cfg.get("name", f"{ltype}_{i}")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == INPUT:
            raise ModelError(
                f"{_where(i, cfg)}: name must be a string of letters, digits, '_' and '-' not starting with a "
                f"digit, and not {INPUT!r} (which names the model input); got {name!r}"
            )
        if name in seen:
            raise ModelError(
                f"{_where(i, cfg)}: duplicate layer name {name!r} (model.layers[{seen[name]}] has it); "
                "names must be unique"
            )
        seen[name] = i
        names.append(name)
    return names


def _resolve_inputs(i: int, cfg: Mapping[str, Any], names: List[str], index_of: Dict[str, int]) -> List[str]:
    raw = cfg.get("inputs")
    if raw is None:
        return [names[i - 1] if i else INPUT]
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(s, str) for s in raw):
        raise ModelError(
            f"{_where(i, cfg)}: inputs must be a non-empty list of layer names or {INPUT!r}, got {raw!r}"
        )
    for src in raw:
        if src == INPUT:
            continue
        j = index_of.get(src)
        if j is None:
            known = [INPUT] + names[:i]
            raise ModelError(
                f"{_where(i, cfg)}: unknown input {src!r}; known names here: {', '.join(map(repr, known))}"
            )
        if j >= i:
            what = "is this layer itself" if j == i else f"is model.layers[{j}], defined later"
            raise ModelError(
                f"{_where(i, cfg)}: input {src!r} {what}; inputs must name earlier layers (or {INPUT!r})"
            )
    return list(raw)


def plan_model(spec: Mapping[str, Any], input_shape: Any, num_classes: Any):
    """Validate ``spec``; return (normalised spec, [:class:`Planned`], input shape, classes)."""
    if not isinstance(spec, Mapping):
        raise ModelError(f"model spec must be a table/dict, got {type(spec).__name__}")
    in_shape = check_shape(input_shape)
    if not is_int(num_classes) or num_classes < 2:
        raise ModelError(f"number of classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    for key in spec:
        if key not in MODEL_KEYS:
            raise ModelError(f"model: unknown key {key!r}; valid keys: {', '.join(sorted(MODEL_KEYS))}")
    layers = spec.get("layers")
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ModelError("model.layers must be a non-empty list of layer tables, e.g. "
                         '[{type = "dense", units = 10}]')
    loss, loss_spec, _ = resolve_loss(spec.get("loss", MODEL_KEYS["loss"]))
    init = spec.get("init", MODEL_KEYS["init"])
    if init not in INITIALIZERS:
        raise ModelError(f"model.init: unknown initialiser {init!r}; known: {', '.join(sorted(INITIALIZERS))}")
    seed = spec.get("seed", MODEL_KEYS["seed"])
    if not is_int(seed) or seed < 0:
        raise ModelError(f"model.seed must be a non-negative integer, got {seed!r}")

    plan, norm_layers, total = plan_layers(layers, in_shape)
    shape = plan[-1].out_shape
    want = loss_spec.output_shape(num_classes)
    if shape != want:
        last = len(layers) - 1
        cls = plan[-1].cls
        hint = f"; set units = {num_classes}" if "units" in cls.KEYS and len(want) == 1 else ""
        raise ModelError(
            f"{cls.where(last)}: the last layer outputs shape {shape} but loss {loss!r} needs "
            f"{want} for {num_classes} classes{hint}"
        )
    if total > MAX_PARAMS:
        raise ModelError(
            f"model has {total} parameters, more than {MAX_PARAMS} (the most one MPI message can "
            "carry); make the layers smaller"
        )
    norm = {"layers": norm_layers, "loss": loss, "init": init, "seed": int(seed)}
    return norm, plan, in_shape, num_classes


def plan_layers(layers: Sequence[Any], in_shape: Shape, check_unused: bool = True):
    """Validate the layer list for ``in_shape``: ``([Planned], normalised layers, total size)``.

    ``check_unused=False`` skips the "output never used" check (a builder
    validates each prefix of the list as it grows).
    """
    names = _layer_names(layers)
    index_of = {n: i for i, n in enumerate(names)}
    plan: List[Planned] = []
    norm_layers = []
    used = [False] * len(layers)
    total = 0
    for i, cfg in enumerate(layers):
        cls = LAYERS[cfg["type"]]
        inputs = _resolve_inputs(i, cfg, names, index_of)
        sources = tuple(-1 if s == INPUT else index_of[s] for s in inputs)
        shapes = [in_shape if j < 0 else plan[j].out_shape for j in sources]
        if cls.MERGE:
            if len(sources) < 2:
                raise ModelError(
                    f"{cls.where(i)}: a merge layer needs at least 2 inputs, got {len(sources)} ({inputs}); "
                    "list them in inputs, e.g. inputs = [\"a\", \"b\"]"
                )
            layer_in: Any = tuple(shapes)
        else:
            if len(sources) != 1:
                raise ModelError(
                    f"{cls.where(i)}: takes exactly 1 input, got {len(sources)} ({inputs}); combine several "
                    "with a merge layer (add, mul, concat) first"
                )
            layer_in = shapes[0]
        body = {k: v for k, v in cfg.items() if k not in GRAPH_KEYS}
        try:
            ncfg, out_shape = cls.plan(body, i, layer_in)
        except ModelError as exc:
            if not cls.MERGE:
                raise
            wiring = ", ".join(f"{s!r} {shp}" for s, shp in zip(inputs, shapes))
            raise ModelError(f"{exc}; inputs: {wiring}") from None
        out_shape = tuple(out_shape)
        for j in sources:
            if j >= 0:
                used[j] = True
        total += sum(shape_size(s) for _, s in cls.shapes_of_params(ncfg, layer_in))
        total += sum(shape_size(s) for _, s in cls.shapes_of_state(ncfg, layer_in))
        plan.append(Planned(cls, ncfg, names[i], sources, layer_in, out_shape))
        # canonical form: type, then name/inputs only where they are not the defaults
        canon: Dict[str, Any] = {"type": ncfg["type"]}
        if names[i] != f"{cls.TYPE}_{i}":
            canon["name"] = names[i]
        if inputs != [names[i - 1] if i else INPUT]:
            canon["inputs"] = inputs
        canon.update((k, v) for k, v in ncfg.items() if k != "type")
        norm_layers.append(canon)
    for j in range(len(layers) - 1 if check_unused else 0):
        if not used[j]:
            raise ModelError(
                f"{plan[j].cls.where(j)}: the output of layer {names[j]!r} is never used -- only the last layer "
                "is the model output, so a layer no later layer lists in its inputs is almost surely a config "
                "mistake; feed it into a later layer or remove it"
            )
    return plan, norm_layers, total


def validate_model_spec(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> Dict[str, Any]:
    """Check ``spec`` for this input shape and class count without allocating.

    Returns the normalised spec (defaults filled, JSON-serialisable).
    Raises :class:`~raven_hpc.errors.ModelError` naming the problem.
    """
    return plan_model(spec, input_shape, num_classes)[0]


def min_train_batch(spec: Mapping[str, Any], input_shape: Sequence[int],
                    num_classes: int) -> Tuple[int, Optional[str]]:
    """The fewest samples one training pass of this model accepts, and the
    layer that needs them (``(1, None)`` when any batch will do).

    A layer with statistics across the batch (batch norm) needs at least two
    values per channel: ``ceil(2 / spatial)`` samples, ``spatial`` being the
    size of its per-sample input after the channel axis (1 for 1-d batch
    norm, so 2 samples; a 2-d batch norm over 3x3 maps takes one sample).
    In a data-parallel run each task is one such pass.  Validates ``spec``
    like :func:`validate_model_spec`.
    """
    plan = plan_model(spec, input_shape, num_classes)[1]
    need, where = 1, None
    for i, p in enumerate(plan):
        if p.cls.BATCH_COUPLED and not p.cls.MERGE:
            n = -(-2 // max(1, shape_size(tuple(p.in_shape)[1:])))
            if n > need:
                need, where = n, p.cls.where(i)
    return need, where
