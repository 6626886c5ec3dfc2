"""The runtime model: a validated spec (:mod:`.spec`) with its parameters.

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
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from raven_hpc.errors import ModelError

from . import ops
from .arrays import from_host, on_host, xp_of
from .layers import Layer, RunContext
from .losses import resolve_loss
from .spec import INPUT, Shape, plan_model, shape_size
from .tensor import Tensor, enable_grad, no_grad
from .validation import is_int
from .workspace import CPU_BACKEND, Workspace

__all__ = ["EVAL_CHUNK", "Model", "build_model", "owner_with_state"]

#: rows per chunk in evaluate()/predict()
EVAL_CHUNK = 1024

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
        norm, plan, in_shape, num_classes = plan_model(spec, input_shape, num_classes)
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
                num_trainable = offset + shape_size(shape)
            info.append((f"{layer.name}.{pname}", shape, offset))
            offset += shape_size(shape)
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
            size = shape_size(shape)
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
        # On a device backend the tensors view device mirrors of the flat
        # vectors: params go in at each computation, gradients come out
        # after it (see _params_in / loss_and_grad); the host vectors stay
        # what callers bind and read.
        self.on_device: bool = getattr(self.backend, "name", "cpu") != "cpu"
        self._dparams, self._dgrads = self._params, self._grads
        if self.on_device:
            self._dparams = self.backend.to_device(self._params)
            self._dgrads = self.backend.zeros(offset, np.float32)
            self._point_tensors(self._dparams, self._dgrads)
        self._ws: List[Workspace] = [Workspace(self.backend) for _ in self.layers]
        self._loss_ws = Workspace(self.backend)
        self._fresh_ws = Workspace(self.backend, reuse=False)   # forward(): results own their arrays
        self.eval_chunk: int = EVAL_CHUNK
        self._in_size = shape_size(in_shape)
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
        if self.on_device:
            self._dgrads.fill(0)

    def _point_tensors(self, data=None, grad=None) -> None:
        """Re-point every parameter and state tensor's ``data`` and/or ``grad`` at views of flat vectors."""
        tensors = self._all_tensors()
        for name, shape, off in self.param_info:
            if data is not None:
                tensors[name].data = data[off:off + shape_size(shape)].reshape(shape)
            if grad is not None:
                tensors[name].grad = grad[off:off + shape_size(shape)].reshape(shape)

    def _params_in(self) -> None:
        """On a device backend, copy the host parameters to the device mirror the tensors view."""
        if self.on_device:
            from_host(self._dparams, self._params)

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
        if not self.on_device:
            self._point_tensors(data=flat)
            self._dparams = flat
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
        if not self.on_device:
            self._point_tensors(grad=flat)
            self._dgrads = flat
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
                size = shape_size(shp)
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
        arr = on_host(x.data if isinstance(x, Tensor) else x)
        if arr.ndim < 1:
            raise ModelError("input must have a batch axis, got a scalar")
        sample = arr.shape[1:]
        if sample != self.input_shape:
            if not (self._input_flattens and shape_size(sample) == self._in_size):
                raise ModelError(
                    f"input samples have shape {sample} but the model was built for {self.input_shape}"
                )
            arr = arr.reshape((arr.shape[0],) + self.input_shape)
        if arr.dtype != np.float32:
            if arr.dtype.kind not in "fiub":
                raise ModelError(f"input must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
        return self.backend.to_device(np.ascontiguousarray(arr)) if self.on_device else np.ascontiguousarray(arr)

    def _labels(self, y: Any, n: int) -> np.ndarray:
        y = ops.as_labels(on_host(y))
        if y.shape != (n,):
            raise ModelError(f"labels have shape {y.shape} but the batch has {n} samples")
        return self.backend.to_device(y) if self.on_device else y

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
        self._params_in()
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
            self._dgrads[self.num_trainable:] = 0
        if n == 0:
            if not accumulate:
                self.zero_grad()
            return 0.0, 0
        self._params_in()
        if accumulate and self.on_device:
            from_host(self._dgrads, self._grads)
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
        if self.on_device:   # the gradient sum travels to the host (for MPI)
            self.backend.to_host(self._dgrads, out=self._grads)
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
        self._params_in()
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
        self._params_in()
        with no_grad():
            for s in range(0, n, step):
                logits = self._forward(Tensor(xa[s : s + step]), use_ws=True, ctx=ctx)
                out[s : s + step] = on_host(xp_of(logits.data).argmax(logits.data, axis=1))
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
