"""Models built from a JSON-serialisable spec: chains or graphs of layers.

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

**Flat vectors.**  A :class:`Model` keeps everything it learns in **one
flat contiguous float32 vector** (:attr:`Model.params`), trainable
parameters first (layer-list order), then non-trainable *state* (batch
norm's running statistics); :attr:`Model.grads` has the same layout.  Every
tensor is a view into them, which is what lets workers receive parameters
and send gradients as single MPI buffers.  In training, the state part of
the gradient receives each task's statistics (sums, so tasks add up); the
master folds the step's sums into the state with :meth:`Model.update_state`
after the optimizer stepped the trainable part.  :meth:`Model.apply_gradient`
does both in one call (the optimizer is sized for :attr:`Model.num_trainable`:
``make_optimizer(cfg, model)``); an optimizer handed the whole vector of a
model with state refuses it.

**Modes.**  :meth:`Model.loss_and_grad` trains (dropout on, batch norm on
batch statistics); :meth:`Model.evaluate` and :meth:`Model.predict`
evaluate.  Dropout masks come from ``np.random.default_rng([seed, *key])``
with the ``key`` a caller passes (e.g. ``(step, task)``), so the same task
draws the same masks on any rank.  The graph is built anew on each call
(define-by-run).
"""
from __future__ import annotations

import functools
import re
import weakref
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from raven_hpc.errors import ModelError

from . import ops
from .layers import GRAPH_KEYS, INITIALIZERS, LAYERS, Layer, RunContext
from .losses import resolve_loss
from .tensor import Tensor, enable_grad, no_grad
from .validation import is_int
from .workspace import CPU_BACKEND, Workspace

__all__ = ["Model", "build_model", "validate_model_spec", "min_train_batch", "owner_with_state", "MODEL_KEYS", "MAX_PARAMS", "INPUT"]

Shape = Tuple[int, ...]

#: top-level spec keys and their defaults (``layers`` has none)
MODEL_KEYS: Dict[str, Any] = {"layers": None, "loss": "softmax_cross_entropy", "init": "he", "seed": 0}

#: one MPI message carries at most 2**31 - 1 elements (32-bit counts)
MAX_PARAMS = 2**31 - 1

#: rows per chunk in evaluate()/predict()
EVAL_CHUNK = 1024

#: the name layers use in ``inputs`` for the model input
INPUT = "input"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")

# id(params vector) -> the Model it belongs to, for models with state: an
# optimizer handed such a whole vector refuses it (see owner_with_state)
_WITH_STATE: "weakref.WeakValueDictionary[int, Model]" = weakref.WeakValueDictionary()


def owner_with_state(params: Any) -> Optional["Model"]:
    """The :class:`Model` whose whole parameter vector ``params`` is, when that
    model has state (batch-norm running statistics); else None.

    Stepping an optimizer over such a vector would treat the state part of
    the gradient (the batch statistics' sums) as a gradient and wreck the
    running statistics, so :meth:`Optimizer.step` asks this first.
    """
    m = _WITH_STATE.get(id(params))
    return m if m is not None and m._params is params else None


def check_shape(input_shape: Any) -> Shape:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}") from None
    if not shape or not all(is_int(s) and s > 0 for s in shape):
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _size(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class _Planned(NamedTuple):
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


def _plan(spec: Mapping[str, Any], input_shape: Any, num_classes: Any):
    """Validate ``spec``; return (normalised spec, [_Planned], input shape, classes)."""
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
    """Validate the layer list for ``in_shape``: ``([_Planned], normalised layers, total size)``.

    ``check_unused=False`` skips the "output never used" check (a builder
    validates each prefix of the list as it grows).
    """
    names = _layer_names(layers)
    index_of = {n: i for i, n in enumerate(names)}
    plan: List[_Planned] = []
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
        total += sum(_size(s) for _, s in cls.shapes_of_params(ncfg, layer_in))
        total += sum(_size(s) for _, s in cls.shapes_of_state(ncfg, layer_in))
        plan.append(_Planned(cls, ncfg, names[i], sources, layer_in, out_shape))
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
    return _plan(spec, input_shape, num_classes)[0]


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
    plan = _plan(spec, input_shape, num_classes)[1]
    need, where = 1, None
    for i, p in enumerate(plan):
        if p.cls.BATCH_COUPLED and not p.cls.MERGE:
            n = -(-2 // max(1, _size(tuple(p.in_shape)[1:])))
            if n > need:
                need, where = n, p.cls.where(i)
    return need, where


def build_model(
    spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, backend: Any = "cpu"
) -> "Model":
    """Validate ``spec`` and build a freshly initialised :class:`Model`.

    The same spec (incl. ``seed``) gives bit-identical parameters everywhere
    the same numpy version runs.  ``backend`` is a backend name (the
    cluster's ``backend``) or a backend object; it is resolved here, once,
    and kept as ``model.backend``.
    """
    if isinstance(backend, str):
        from raven_hpc.kernels import get_backend

        backend = get_backend(backend)
    return Model(spec, input_shape, num_classes, backend=backend)


def _as_key(key: Any) -> Tuple[int, ...]:
    try:
        out = tuple(key)
    except TypeError:
        raise ValueError(f"key must be a sequence of non-negative integers, got {key!r}") from None
    if not all(is_int(k) and k >= 0 for k in out):
        raise ValueError(f"key must be a sequence of non-negative integers, got {key!r}")
    return tuple(int(k) for k in out)


class Model:
    """A chain or graph of layers with flat parameter and gradient vectors.

    Attributes:

    * ``params``, ``grads``: flat float32 vectors, ``num_params`` long:
      ``[trainable (num_trainable) | state (num_state)]``;
    * ``param_info``: ``[(name, shape, offset)]`` for *every* entry of the
      vector, trainable first; ``state_info``: the state entries among them
      (those at ``offset >= num_trainable``), e.g. ``batchnorm_1.running_mean``;
    * ``spec`` (normalised), ``input_shape``, ``num_classes``, ``layers``,
      ``inputs`` (per layer, the names it reads);
    * ``backend``: the kernel backend object (default: CPU).  Every layer's
      :class:`~raven_hpc.engine.workspace.Workspace` carries it, so every op
      of the model takes its kernels, GEMMs and scratch arrays from it.
    """

    def __init__(self, spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                 backend: Any = None):
        norm, plan, in_shape, num_classes = _plan(spec, input_shape, num_classes)
        self.spec: Dict[str, Any] = norm
        self.input_shape: Shape = in_shape
        self.num_classes: int = num_classes
        self.layers: List[Layer] = []
        for i, p in enumerate(plan):
            layer = p.cls(p.cfg, i, p.in_shape)
            layer.name = p.name
            self.layers.append(layer)
        self._sources: List[Tuple[int, ...]] = [p.sources for p in plan]
        names = [p.name for p in plan]
        self.inputs: List[List[str]] = [[INPUT if j < 0 else names[j] for j in p.sources] for p in plan]
        _, loss_spec, loss_options = resolve_loss(norm["loss"])
        self._loss = functools.partial(loss_spec.fn, **loss_options)

        # layout: every layer's trainable parameters, then every layer's state
        entries: List[Tuple[Layer, str, Shape, bool]] = []
        for layer in self.layers:
            entries += [(layer, pn, tuple(s), False) for pn, s in layer.param_shapes()]
        for layer in self.layers:
            entries += [(layer, sn, tuple(s), True) for sn, s in layer.state_shapes()]
        info: List[Tuple[str, Shape, int]] = []
        offset = 0
        num_trainable = 0
        for layer, pname, shape, is_state in entries:
            if not is_state:
                num_trainable = offset + _size(shape)
            info.append((f"{layer.name}.{pname}", shape, offset))
            offset += _size(shape)
        self.param_info: List[Tuple[str, Shape, int]] = info
        self.num_params: int = offset
        self.num_trainable: int = num_trainable
        self.num_state: int = offset - num_trainable
        self.state_info: List[Tuple[str, Shape, int]] = [e for e, ent in zip(info, entries) if ent[3]]
        self._params = np.zeros(offset, dtype=np.float32)
        self._grads = np.zeros(offset, dtype=np.float32)
        if self.num_state:
            _WITH_STATE[id(self._params)] = self

        self._tensors: Dict[str, Tensor] = {}   # trainable
        self._state: Dict[str, Tensor] = {}     # non-trainable
        per_layer: Dict[int, Tuple[dict, dict, dict, dict]] = {id(l): ({}, {}, {}, {}) for l in self.layers}
        for (layer, pname, shape, is_state), (name, _, off) in zip(entries, info):
            size = _size(shape)
            view = self._params[off:off + size].reshape(shape)
            t = Tensor(view, requires_grad=not is_state, name=name)
            t.grad = self._grads[off:off + size].reshape(shape)
            views, tensors, sviews, stensors = per_layer[id(layer)]
            if is_state:
                sviews[pname], stensors[pname] = view, t
                self._state[name] = t
            else:
                views[pname], tensors[pname] = view, t
                self._tensors[name] = t
        rng = np.random.default_rng(norm["seed"])
        for layer in self.layers:
            views, tensors, sviews, stensors = per_layer[id(layer)]
            layer.init_params(views, rng, norm["init"])
            layer.bind(tensors)
            layer.init_state(sviews)
            layer.bind_state(stensors)

        self.backend = CPU_BACKEND if backend is None else backend
        self._ws: List[Workspace] = [Workspace(self.backend) for _ in self.layers]
        self._loss_ws = Workspace(self.backend)
        self._fresh_ws = Workspace(self.backend, reuse=False)   # forward(): results own their arrays
        self.eval_chunk: int = EVAL_CHUNK
        self._in_size = _size(in_shape)
        self._input_flattens = all(l.FLATTENS_INPUT for l, src in zip(self.layers, self._sources) if -1 in src)
        self._keyless_calls = 0

    # -- flat vectors ------------------------------------------------------------
    @property
    def params(self) -> np.ndarray:
        """Parameters then state, one flat float32 vector (write into it, do not rebind)."""
        return self._params

    @property
    def grads(self) -> np.ndarray:
        """Gradients then state statistics, one flat float32 vector matching :attr:`params`."""
        return self._grads

    def zero_grad(self) -> None:
        self._grads.fill(0)

    def _check_flat(self, flat: np.ndarray, what: str) -> None:
        if not (isinstance(flat, np.ndarray) and flat.dtype == np.float32 and flat.ndim == 1
                and flat.size == self.num_params and flat.flags.c_contiguous and flat.flags.writeable):
            raise ValueError(f"{what} must be a writable contiguous 1-D float32 array of {self.num_params} elements")

    def _all_tensors(self) -> Dict[str, Tensor]:
        return {**self._tensors, **self._state}

    def bind_params(self, flat: np.ndarray, copy: bool = True) -> None:
        """Make ``flat`` the parameter (and state) storage, e.g. an MPI receive buffer.

        With ``copy`` the current values are copied into it first; without,
        its contents become the parameters.  Every parameter and state
        tensor is re-pointed at a view of ``flat``; no layer holds the old
        storage.
        """
        self._check_flat(flat, "params")
        if flat is self._params:
            return
        if copy:
            np.copyto(flat, self._params)
        tensors = self._all_tensors()
        for name, shape, off in self.param_info:
            tensors[name].data = flat[off:off + _size(shape)].reshape(shape)
        if self.num_state:
            if _WITH_STATE.get(id(self._params)) is self:
                del _WITH_STATE[id(self._params)]
            _WITH_STATE[id(flat)] = self
        self._params = flat

    def bind_grads(self, flat: np.ndarray) -> None:
        """Make ``flat`` the gradient storage (e.g. an MPI send buffer); contents are kept."""
        self._check_flat(flat, "grads")
        if flat is self._grads:
            return
        tensors = self._all_tensors()
        for name, shape, off in self.param_info:
            tensors[name].grad = flat[off:off + _size(shape)].reshape(shape)
        self._grads = flat

    def named_parameters(self) -> List[Tuple[str, Tensor]]:
        """``[(name, tensor)]`` of the trainable parameters; ``data``/``grad`` view the flat vectors."""
        return list(self._tensors.items())

    def named_state(self) -> List[Tuple[str, Tensor]]:
        """``[(name, tensor)]`` of the non-trainable state (e.g. running statistics).

        ``data`` views :attr:`params`, ``grad`` views :attr:`grads`, where a
        training pass adds its statistics.
        """
        return list(self._state.items())

    def param(self, name: str) -> np.ndarray:
        """The parameter or state ``name`` (e.g. ``"dense_0.W"``) as a view of :attr:`params`."""
        t = self._tensors.get(name, self._state.get(name))
        if t is None:
            raise KeyError(f"no parameter {name!r}; known: {', '.join(n for n, _, _ in self.param_info)}")
        return t.data

    def update_state(self, params: np.ndarray, stat_sums: np.ndarray, num_samples: int) -> None:
        """Fold one step's statistics into the state part of ``params`` (in place).

        ``params``: a flat vector in this model's layout (usually
        :attr:`params`; only its state part changes).  ``stat_sums``: the
        state part of the step's *summed* gradient -- ``(num_state,)``, or a
        whole ``(num_params,)`` accumulator whose tail is used; float32 or
        float64.  ``num_samples``: the step's sample count.  The sums must
        come from training passes on these same ``params`` (the shift batch
        norm uses is its running mean), so call this after the optimizer
        step, which leaves the state alone.  A model without state does
        nothing.
        """
        if self.num_state == 0:
            return
        params = np.asarray(params)
        sums = np.asarray(stat_sums)
        if params.ndim != 1 or params.size != self.num_params:
            raise ValueError(f"params must be a flat vector of {self.num_params} elements, got shape {params.shape}")
        if sums.ndim != 1 or sums.size not in (self.num_state, self.num_params):
            raise ValueError(f"stat_sums must have {self.num_state} (state) or {self.num_params} elements, "
                             f"got shape {sums.shape}")
        base = self.num_trainable if sums.size == self.num_params else 0
        off0 = self.num_trainable
        names = {name: (shape, off) for name, shape, off in self.state_info}
        for layer in self.layers:
            views, part = {}, {}
            for sname, shape in layer.state_shapes():
                shp, off = names[f"{layer.name}.{sname}"]
                size = _size(shp)
                views[sname] = params[off:off + size].reshape(shp)
                part[sname] = sums[base + off - off0: base + off - off0 + size].reshape(shp)
            if views:
                layer.update_state(views, part, int(num_samples))

    def apply_gradient(self, optimizer: Any, grad_sum: np.ndarray, samples: int,
                       lr: Optional[float] = None) -> None:
        """One training update of :attr:`params` from a step's summed gradient.

        ``grad_sum``: a flat vector in :attr:`grads`' layout (float32 or
        float64), summed over ``samples`` samples: the trainable part is a
        gradient, the state part batch statistics.  The optimizer -- built
        for :attr:`num_trainable` parameters, e.g. ``make_optimizer(cfg,
        model)`` -- steps the trainable part from ``grad_sum / samples``
        (``lr`` overrides its rate for this step); then :meth:`update_state`
        folds the statistics into the state.  This is the update the master
        makes each step; an optimizer stepped over the whole vector would
        treat the statistics as gradients and wreck the running statistics.
        """
        nt = self.num_trainable
        if getattr(optimizer, "num_params", None) != nt:
            raise ValueError(
                f"the optimizer updates {getattr(optimizer, 'num_params', '?')} parameters but this model has "
                f"num_trainable = {nt} trainable ones (and {self.num_state} state values); build it with "
                "make_optimizer(cfg, model)"
            )
        g = np.asarray(grad_sum)
        if g.ndim != 1 or g.size != self.num_params or g.dtype not in (np.float32, np.float64):
            raise ValueError(f"grad_sum must be a flat float32/float64 vector of {self.num_params} elements "
                             f"(the layout of model.grads), got {g.dtype} {g.shape}")
        if not is_int(samples) or samples < 1:
            raise ValueError(f"samples must be a positive integer (the samples grad_sum sums over), got {samples!r}")
        optimizer.step(self._params[:nt], g[:nt], scale=1.0 / int(samples), lr=lr)
        if self.num_state:
            self.update_state(self._params, g[nt:], int(samples))

    # -- inputs ----------------------------------------------------------------
    def _input(self, x: Any) -> np.ndarray:
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        if arr.ndim < 1:
            raise ModelError("input must have a batch axis, got a scalar")
        sample = arr.shape[1:]
        if sample != self.input_shape:
            if not (self._input_flattens and _size(sample) == self._in_size):
                raise ModelError(
                    f"input samples have shape {sample} but the model was built for {self.input_shape}"
                )
            arr = arr.reshape((arr.shape[0],) + self.input_shape)
        if arr.dtype != np.float32:
            if arr.dtype.kind not in "fiub":
                raise ModelError(f"input must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
        return np.ascontiguousarray(arr)

    def _labels(self, y: Any, n: int) -> np.ndarray:
        y = ops.as_labels(y)
        if y.shape != (n,):
            raise ModelError(f"labels have shape {y.shape} but the batch has {n} samples")
        return y

    def _context(self, training: bool, key: Any, segments: Any = None) -> RunContext:
        if not training:
            return RunContext(False, self.spec["seed"])
        if key is None:
            key = (self._keyless_calls,)
            self._keyless_calls += 1
        if segments is not None:
            segments = [(_as_key((i,))[0], int(n)) for i, n in segments]
        return RunContext(True, self.spec["seed"], _as_key(key), segments)

    # -- compute -----------------------------------------------------------------
    def _forward(self, x: Tensor, use_ws: bool, ctx: RunContext) -> Tensor:
        outs: List[Optional[Tensor]] = [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            src = self._sources[i]
            if layer.MERGE:
                arg: Any = [x if j < 0 else outs[j] for j in src]
            else:
                arg = x if src[0] < 0 else outs[src[0]]
            ws = self._ws[i] if use_ws else self._fresh_ws
            outs[i] = layer(arg, ws, ctx) if layer.USES_CONTEXT else layer(arg, ws)
        return outs[-1]

    def forward(self, x: Any, *, training: bool = False, key: Optional[Sequence[int]] = None) -> Tensor:
        """Model output (logits) for batch ``x``, recording the graph.

        Evaluation mode by default; ``training=True`` runs as
        :meth:`loss_and_grad` does (dropout masks from ``key``, batch
        statistics added to the state part of :attr:`grads`).  The result
        owns fresh arrays (no reused buffers), so it stays valid.
        """
        arr = self._input(x)
        return self._forward(Tensor(arr), use_ws=False, ctx=self._context(training, key))

    __call__ = forward

    def loss_and_grad(self, x: Any, y: Any, accumulate: bool = True,
                      key: Optional[Sequence[int]] = None,
                      segments: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[float, int]:
        """Loss summed over the batch and the number of correct predictions, in training mode.

        **Adds** the gradient of the summed loss into :attr:`grads` (call
        :meth:`zero_grad` first to start from zero), and the batch's state
        statistics into the state part (see :meth:`update_state`).  With
        ``accumulate=False`` both *replace* :attr:`grads` instead: same
        result as ``zero_grad()`` first, but without the extra passes over
        the vector (GEMMs write straight into it) -- what a worker computing
        one task at a time wants.

        ``key``: a sequence of non-negative ints naming this computation,
        e.g. ``(step, task)``; dropout masks are drawn from
        ``np.random.default_rng([seed, *key])``, so the same key gives the
        same masks on every rank.  ``None`` uses ``(n,)`` with ``n``
        counting this model's keyless training calls (reproducible within
        one process).  ``segments``: ``((snippet id, rows), ...)`` covering
        the batch in order; each snippet's rows then get their dropout masks
        from ``default_rng([seed, *key, id])``, whatever else is in the batch
        (a worker passes ``key = (step,)`` and one segment per snippet).

        ``x`` is ``(n, *input_shape)`` (float32 preferred: other dtypes are
        copied), ``y`` ``(n,)`` integer labels.  Scratch buffers are reused
        between calls.
        """
        xa = self._input(x)
        n = xa.shape[0]
        ya = self._labels(y, n)
        ctx = self._context(True, key, segments)
        if not accumulate and self.num_state:
            self._grads[self.num_trainable:] = 0
        if n == 0:
            if not accumulate:
                self.zero_grad()
            return 0.0, 0
        tensors = self._tensors.values()
        if not accumulate:
            for t in tensors:
                t.overwrite_grad = True
        try:
            with enable_grad():
                logits = self._forward(Tensor(xa), use_ws=True, ctx=ctx)
                loss, correct = self._loss(logits, ya, ws=self._loss_ws)
                loss.backward()
        finally:
            if not accumulate:
                for t in tensors:
                    if t.overwrite_grad:  # got no gradient: it is zero
                        t.grad.fill(0)
                        t.overwrite_grad = False
        return float(loss.data), correct

    def evaluate(self, x: Any, y: Any, chunk: Optional[int] = None) -> Tuple[float, int]:
        """``(loss_sum, n_correct)`` over ``x``, ``y`` in evaluation mode, without a graph.

        Runs in chunks of ``chunk`` rows (default :attr:`eval_chunk`) so
        memory stays bounded; :attr:`grads` is not touched.
        """
        xa = self._input(x)
        n = xa.shape[0]
        ya = self._labels(y, n)
        step = int(chunk or self.eval_chunk)
        ctx = self._context(False, None)
        total, correct = 0.0, 0
        with no_grad():
            for s in range(0, n, step):
                logits = self._forward(Tensor(xa[s : s + step]), use_ws=True, ctx=ctx)
                loss, c = self._loss(logits, ya[s : s + step], ws=self._loss_ws)
                total += float(loss.data)
                correct += c
        return total, correct

    def predict(self, x: Any, chunk: Optional[int] = None) -> np.ndarray:
        """Predicted class (argmax of the output) per sample, int64, in evaluation mode."""
        xa = self._input(x)
        n = xa.shape[0]
        step = int(chunk or self.eval_chunk)
        ctx = self._context(False, None)
        out = np.empty(n, dtype=np.int64)
        with no_grad():
            for s in range(0, n, step):
                logits = self._forward(Tensor(xa[s : s + step]), use_ws=True, ctx=ctx)
                out[s : s + step] = np.argmax(logits.data, axis=1)
        return out

    # -- description -------------------------------------------------------------
    @property
    def sample_independent(self) -> bool:
        """Whether a batch's summed gradient equals the sum over any split of
        it (no layer in training looks across samples or at the pass's key:
        no batch norm; dropout draws its masks per snippet, see
        :class:`RunContext`).  Then tasks can be merged into larger batches
        without changing the result beyond float32 round-off."""
        return not any(l.BATCH_COUPLED for l in self.layers)

    @property
    def is_sequential(self) -> bool:
        """Whether every layer reads just the previous one (a plain chain)."""
        return all(src == (i - 1,) for i, src in enumerate(self._sources))

    def summary(self) -> List[Dict[str, Any]]:
        """One dict per layer: ``name``, ``type``, ``inputs``, ``output_shape``,
        ``params`` (trainable) and ``state`` (non-trainable) counts."""
        return [
            {"name": l.name, "type": l.TYPE, "inputs": list(ins), "output_shape": tuple(l.out_shape),
             "params": l.num_params(), "state": l.num_state()}
            for l, ins in zip(self.layers, self.inputs)
        ]

    def format_summary(self) -> str:
        """:meth:`summary` as a text table with the totals.

        The ``inputs`` column appears for graphs, the ``state`` column for
        models with non-trainable state.
        """
        graph = not self.is_sequential
        stateful = self.num_state > 0
        head = ["layer", "type"] + (["inputs"] if graph else []) + ["output shape", "params"]
        head += ["state"] if stateful else []
        numeric = {len(head) - 1, len(head) - 2} if stateful else {len(head) - 1}
        rows = [head]
        rows.append([INPUT, "input"] + ([""] if graph else []) + [str(self.input_shape), "0"]
                    + (["0"] if stateful else []))
        for layer, r in zip(self.layers, self.summary()):
            row = [r["name"], layer.describe()]
            if graph:
                row.append(", ".join(r["inputs"]))
            row += [str(r["output_shape"]), f"{r['params']:,}"]
            if stateful:
                row.append(f"{r['state']:,}")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        line = "  ".join("-" * w for w in widths)

        def fmt(r):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        out = [fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [line]
        mib = self.num_params * 4 / 2**20
        if stateful:
            out.append(f"trainable parameters: {self.num_trainable:,}")
            out.append(f"state (non-trainable): {self.num_state:,}")
            out.append(f"total: {self.num_params:,}  ({mib:.2f} MiB float32)")
        else:
            out.append(f"total parameters: {self.num_params:,}  ({mib:.2f} MiB float32)")
        return "\n".join(out)

    def __repr__(self) -> str:
        kind = "layers" if self.is_sequential else "layers in a graph"
        state = f" + {self.num_state} state" if self.num_state else ""
        return f"Model({len(self.layers)} {kind}, {self.num_trainable} params{state}, input {self.input_shape})"
