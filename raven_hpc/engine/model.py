"""Sequential models built from a JSON-serialisable spec.

``spec`` is the config's ``[model]`` table::

    {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                {"type": "dense", "units": 10}],
     "loss": "softmax_cross_entropy", "init": "he", "seed": 0}

:func:`validate_model_spec` checks it completely -- layer types, keys,
values, shapes, loss -- before a single parameter is allocated, raising
:class:`~raven_hpc.errors.ModelError` that names the layer index and type.

A :class:`Model` keeps all parameters in **one flat contiguous float32
vector** (:attr:`Model.params`) and their gradients in another
(:attr:`Model.grads`); every parameter tensor is a view into them, which is
what lets workers receive parameters and send gradients as single MPI
buffers.  The graph is built anew on each call (define-by-run).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from raven_hpc.errors import ModelError

from . import ops
from .layers import INITIALIZERS, LAYERS, Layer
from .losses import resolve_loss
from .tensor import Tensor, Workspace, enable_grad, no_grad

__all__ = ["Model", "build_model", "validate_model_spec", "MODEL_KEYS", "MAX_PARAMS"]

Shape = Tuple[int, ...]

#: top-level spec keys and their defaults (``layers`` has none)
MODEL_KEYS: Dict[str, Any] = {"layers": None, "loss": "softmax_cross_entropy", "init": "he", "seed": 0}

#: one MPI message carries at most 2**31 - 1 elements (32-bit counts)
MAX_PARAMS = 2**31 - 1

#: rows per chunk in evaluate()/predict()
EVAL_CHUNK = 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_shape(input_shape: Any) -> Shape:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}") from None
    if not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise ModelError(f"input shape must be a tuple of positive integers, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _plan(spec: Mapping[str, Any], input_shape: Any, num_classes: Any):
    """Validate ``spec``; return (normalised spec, [(layer class, cfg, in, out)])."""
    if not isinstance(spec, Mapping):
        raise ModelError(f"model spec must be a table/dict, got {type(spec).__name__}")
    in_shape = _check_shape(input_shape)
    if not _is_int(num_classes) or num_classes < 2:
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
    if not _is_int(seed) or seed < 0:
        raise ModelError(f"model.seed must be a non-negative integer, got {seed!r}")

    plan = []
    norm_layers = []
    shape = in_shape
    total = 0
    for i, cfg in enumerate(layers):
        if not isinstance(cfg, Mapping):
            raise ModelError(f"model.layers[{i}]: must be a table/dict, got {type(cfg).__name__}")
        ltype = cfg.get("type")
        if ltype is None:
            raise ModelError(f"model.layers[{i}]: missing key 'type'; known types: {', '.join(sorted(LAYERS))}")
        cls = LAYERS.get(ltype) if isinstance(ltype, str) else None
        if cls is None:
            raise ModelError(
                f"model.layers[{i}]: unknown layer type {ltype!r}; known types: {', '.join(sorted(LAYERS))}"
            )
        ncfg, out_shape = cls.plan(cfg, i, shape)
        total += sum(int(np.prod(s, dtype=np.int64)) for _, s in cls.shapes_of_params(ncfg, shape))
        plan.append((cls, ncfg, shape, out_shape))
        norm_layers.append(ncfg)
        shape = out_shape
    want = loss_spec.output_shape(num_classes)
    if shape != want:
        last = len(layers) - 1
        cls = plan[-1][0]
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


def validate_model_spec(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> Dict[str, Any]:
    """Check ``spec`` for this input shape and class count without allocating.

    Returns the normalised spec (defaults filled, JSON-serialisable).
    Raises :class:`~raven_hpc.errors.ModelError` naming the problem.
    """
    return _plan(spec, input_shape, num_classes)[0]


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> "Model":
    """Validate ``spec`` and build a freshly initialised :class:`Model`.

    The same spec (incl. ``seed``) gives bit-identical parameters everywhere
    the same numpy version runs.
    """
    return Model(spec, input_shape, num_classes)


class Model:
    """A sequential model with flat parameter and gradient vectors.

    Attributes: ``params``, ``grads`` (flat float32), ``param_info``
    (``[(name, shape, offset)]``), ``num_params``, ``spec`` (normalised),
    ``input_shape``, ``num_classes``, ``layers``.
    """

    def __init__(self, spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int):
        norm, plan, in_shape, num_classes = _plan(spec, input_shape, num_classes)
        self.spec: Dict[str, Any] = norm
        self.input_shape: Shape = in_shape
        self.num_classes: int = num_classes
        self.layers: List[Layer] = [cls(cfg, i, shp) for i, (cls, cfg, shp, _) in enumerate(plan)]
        _, loss_spec, loss_options = resolve_loss(norm["loss"])
        self._loss = functools.partial(loss_spec.fn, **loss_options)

        info: List[Tuple[str, Shape, int]] = []
        offset = 0
        for layer in self.layers:
            for pname, shape in layer.param_shapes():
                info.append((f"{layer.name}.{pname}", tuple(shape), offset))
                offset += int(np.prod(shape, dtype=np.int64))
        self.param_info: List[Tuple[str, Shape, int]] = info
        self.num_params: int = offset
        self._params = np.zeros(offset, dtype=np.float32)
        self._grads = np.zeros(offset, dtype=np.float32)

        rng = np.random.default_rng(norm["seed"])
        self._tensors: Dict[str, Tensor] = {}
        k = 0
        for layer in self.layers:
            views, tensors = {}, {}
            for pname, _ in layer.param_shapes():
                name, shape, off = info[k]
                k += 1
                size = int(np.prod(shape, dtype=np.int64))
                view = self._params[off : off + size].reshape(shape)
                t = Tensor(view, requires_grad=True, name=name)
                t.grad = self._grads[off : off + size].reshape(shape)
                views[pname] = view
                tensors[pname] = t
                self._tensors[name] = t
            layer.init_params(views, rng, norm["init"])
            layer.bind(tensors)

        self._ws: List[Workspace] = [Workspace() for _ in self.layers]
        self._loss_ws = Workspace()
        self.eval_chunk: int = EVAL_CHUNK
        self._in_size = int(np.prod(in_shape, dtype=np.int64))

    # -- flat vectors ------------------------------------------------------------
    @property
    def params(self) -> np.ndarray:
        """All parameters, one flat float32 vector (write into it, do not rebind)."""
        return self._params

    @property
    def grads(self) -> np.ndarray:
        """All gradients, one flat float32 vector matching :attr:`params`."""
        return self._grads

    def zero_grad(self) -> None:
        self._grads.fill(0)

    def _check_flat(self, flat: np.ndarray, what: str) -> None:
        if not (isinstance(flat, np.ndarray) and flat.dtype == np.float32 and flat.ndim == 1
                and flat.size == self.num_params and flat.flags.c_contiguous and flat.flags.writeable):
            raise ValueError(f"{what} must be a writable contiguous 1-D float32 array of {self.num_params} elements")

    def bind_params(self, flat: np.ndarray, copy: bool = True) -> None:
        """Make ``flat`` the parameter storage (e.g. an MPI receive buffer).

        With ``copy`` the current values are copied into it first; without,
        its contents become the parameters.  Every parameter tensor is
        re-pointed at a view of ``flat``; no layer holds the old storage.
        """
        self._check_flat(flat, "params")
        if flat is self._params:
            return
        if copy:
            np.copyto(flat, self._params)
        for name, shape, off in self.param_info:
            size = int(np.prod(shape, dtype=np.int64))
            self._tensors[name].data = flat[off:off + size].reshape(shape)
        self._params = flat

    def bind_grads(self, flat: np.ndarray) -> None:
        """Make ``flat`` the gradient storage (e.g. an MPI send buffer); contents are kept."""
        self._check_flat(flat, "grads")
        if flat is self._grads:
            return
        for name, shape, off in self.param_info:
            size = int(np.prod(shape, dtype=np.int64))
            self._tensors[name].grad = flat[off:off + size].reshape(shape)
        self._grads = flat

    def named_parameters(self) -> List[Tuple[str, Tensor]]:
        """``[(name, tensor)]``; tensors' ``data``/``grad`` view the flat vectors."""
        return list(self._tensors.items())

    def param(self, name: str) -> np.ndarray:
        """The parameter ``name`` (e.g. ``"dense_0.W"``) as a view of :attr:`params`."""
        return self._tensors[name].data

    # -- inputs ----------------------------------------------------------------
    def _input(self, x: Any) -> np.ndarray:
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        if arr.ndim < 1:
            raise ModelError("input must have a batch axis, got a scalar")
        sample = arr.shape[1:]
        if sample != self.input_shape:
            size = int(np.prod(sample, dtype=np.int64))
            if not (self.layers[0].FLATTENS_INPUT and size == self._in_size):
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

    # -- compute -----------------------------------------------------------------
    def _forward(self, x: Tensor, use_ws: bool) -> Tensor:
        h = x
        if use_ws:
            for layer, ws in zip(self.layers, self._ws):
                h = layer(h, ws)
        else:
            for layer in self.layers:
                h = layer(h)
        return h

    def forward(self, x: Any) -> Tensor:
        """Model output (logits) for batch ``x``, recording the graph.

        The result owns fresh arrays (no reused buffers), so it stays valid.
        """
        arr = self._input(x)
        return self._forward(Tensor(arr), use_ws=False)

    __call__ = forward

    def loss_and_grad(self, x: Any, y: Any, accumulate: bool = True) -> Tuple[float, int]:
        """Loss summed over the batch and the number of correct predictions.

        **Adds** the gradient of the summed loss into :attr:`grads` (call
        :meth:`zero_grad` first to start from zero).  With
        ``accumulate=False`` the gradient *replaces* :attr:`grads` instead:
        same result as ``zero_grad()`` first, but without the extra passes
        over the vector (GEMMs write straight into it) -- what a worker
        computing one task at a time wants.

        ``x`` is ``(n, *input_shape)`` (float32 preferred: other dtypes are
        copied), ``y`` ``(n,)`` integer labels.  Scratch buffers are reused
        between calls.
        """
        xa = self._input(x)
        n = xa.shape[0]
        ya = self._labels(y, n)
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
                logits = self._forward(Tensor(xa), use_ws=True)
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
        """``(loss_sum, n_correct)`` over ``x``, ``y`` without building a graph.

        Runs in chunks of ``chunk`` rows (default :attr:`eval_chunk`) so
        memory stays bounded; :attr:`grads` is not touched.
        """
        xa = self._input(x)
        n = xa.shape[0]
        ya = self._labels(y, n)
        step = int(chunk or self.eval_chunk)
        total, correct = 0.0, 0
        with no_grad():
            for s in range(0, n, step):
                logits = self._forward(Tensor(xa[s : s + step]), use_ws=True)
                loss, c = self._loss(logits, ya[s : s + step], ws=self._loss_ws)
                total += float(loss.data)
                correct += c
        return total, correct

    def predict(self, x: Any, chunk: Optional[int] = None) -> np.ndarray:
        """Predicted class (argmax of the output) per sample, int64."""
        xa = self._input(x)
        n = xa.shape[0]
        step = int(chunk or self.eval_chunk)
        out = np.empty(n, dtype=np.int64)
        with no_grad():
            for s in range(0, n, step):
                logits = self._forward(Tensor(xa[s : s + step]), use_ws=True)
                out[s : s + step] = np.argmax(logits.data, axis=1)
        return out

    # -- description -------------------------------------------------------------
    def summary(self) -> List[Dict[str, Any]]:
        """One dict per layer: ``name``, ``type``, ``output_shape``, ``params``."""
        return [
            {"name": l.name, "type": l.TYPE, "output_shape": tuple(l.out_shape), "params": l.num_params()}
            for l in self.layers
        ]

    def format_summary(self) -> str:
        """:meth:`summary` as a text table with the total."""
        rows = [("layer", "type", "output shape", "params")]
        rows.append(("input", "input", str(self.input_shape), "0"))
        for r in self.summary():
            extra = ""
            cfg = self.layers[int(r["name"].rsplit("_", 1)[1])].cfg
            if cfg.get("activation", "linear") != "linear":
                extra = f" ({cfg['activation']})"
            rows.append((r["name"], r["type"] + extra, str(r["output_shape"]), f"{r['params']:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        fmt = lambda r: "  ".join(
            c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        out = [fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [line]
        out.append(f"total parameters: {self.num_params:,}  ({self.num_params * 4 / 2**20:.2f} MiB float32)")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"Model({len(self.layers)} layers, {self.num_params} params, input {self.input_shape})"
