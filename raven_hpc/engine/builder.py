"""Build model specs in Python: a functional builder over the layer registry.

The builder writes the same ``[model]`` spec a TOML file would, so a model
built in Python and one built from the equivalent TOML table are the same
model (same normalised spec, same initial parameters)::

    b = ModelBuilder((784,), 10, loss="softmax_cross_entropy", init="he", seed=0)
    x = b.input
    h = b.dense(x, 128, activation="relu")
    r = b.dense(x, 128)                      # a second branch from the input
    h = b.add(h, r)                          # residual connection
    h = b.dropout(h, rate=0.1)
    b.dense(h, 10)                           # the last layer is the output
    model = b.build()                        # or spec = b.spec(); b.toml()

Every method adds one layer and returns its output :class:`Node`.  Leading
``Node`` arguments are the layer's inputs; without any, the layer reads the
previous layer (the model input for the first), as a TOML layer without
``inputs`` does -- so a plain chain is ``b.dense(128, activation="relu");
b.dense(10)``.  Further positional arguments fill the layer's keys in
their declared order (``dense``: units, activation; ``embedding``:
num_embeddings, dim); ``name=`` names the layer.  Any registered layer
type is a method, also those added by other modules (``b.conv2d(...)``),
or call :meth:`ModelBuilder.layer` with the type name.

Each layer is checked as it is added (keys, wiring, shapes), so a mistake
raises :class:`~raven_hpc.errors.ModelError` at the line that made it.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from raven_hpc.errors import ModelError

from .layers import LAYERS
from .model import Model, build_model
from .spec import INPUT, MODEL_KEYS, check_shape, plan_layers, validate_model_spec
from .validation import is_int

__all__ = ["ModelBuilder", "Node", "spec_to_toml"]


class Node:
    """The output of one layer (or the model input) inside a :class:`ModelBuilder`.

    ``name`` is what later layers list in their ``inputs``; ``shape`` is
    the per-sample output shape; ``index`` the layer's position (-1 for the
    input).
    """

    __slots__ = ("builder", "name", "index", "shape")

    def __init__(self, builder: "ModelBuilder", name: str, index: int, shape: Tuple[int, ...]):
        self.builder = builder
        self.name = name
        self.index = index
        self.shape = shape

    def __repr__(self) -> str:
        return f"Node({self.name!r}, shape={self.shape})"


class ModelBuilder:
    """Assemble a model spec layer by layer (see the module docstring).

    ``input_shape``: per-sample shape; ``num_classes``; ``loss``, ``init``,
    ``seed``: as the ``[model]`` keys of the same names.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, *,
                 loss: Any = MODEL_KEYS["loss"], init: str = MODEL_KEYS["init"], seed: int = MODEL_KEYS["seed"]):
        self.input_shape = check_shape(input_shape)
        if not is_int(num_classes) or num_classes < 2:
            raise ModelError(f"number of classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.loss = loss
        self.init = init
        self.seed = seed
        self._layers: List[Dict[str, Any]] = []
        self._nodes: List[Node] = []
        #: the model input, for the first layers' inputs
        self.input = Node(self, INPUT, -1, self.input_shape)

    # -- adding layers -----------------------------------------------------------------
    def layer(self, type: str, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """Add a layer of registered ``type``; returns its output node.

        ``args``: input nodes first (default: the previous layer), then
        values for the layer's keys in declared order; ``keys`` by name.
        """
        cls = LAYERS.get(type) if isinstance(type, str) else None
        if cls is None:
            raise ModelError(f"unknown layer type {type!r}; known types: {', '.join(sorted(LAYERS))}")
        for key in ("type", "inputs"):
            if key in keys:
                raise ModelError(f"{type}: {key!r} is set by the builder; pass input nodes as the first arguments")
        k = 0
        while k < len(args) and isinstance(args[k], Node):
            k += 1
        inputs, values = list(args[:k]), args[k:]
        for v in values:
            if isinstance(v, Node):
                raise ModelError(f"{type}: input nodes must come before the other arguments, got {v!r} after a value")
        index = len(self._layers)
        where = f"model.layers[{index}] ({type})"
        positional = [key for key in cls.KEYS if key not in keys]
        if len(values) > len(positional):
            raise ModelError(
                f"{where}: {len(values)} positional values for keys {', '.join(positional) or '(none)'}; "
                "pass the rest by name"
            )
        cfg: Dict[str, Any] = {"type": type}
        if name is not None:
            cfg["name"] = name
        if not inputs:
            inputs = [self._nodes[-1] if self._nodes else self.input]
        for node in inputs:
            if node.builder is not self:
                raise ModelError(f"{where}: input {node!r} belongs to another ModelBuilder")
        cfg["inputs"] = [node.name for node in inputs]
        cfg.update(zip(positional, values))
        cfg.update(keys)
        plan, _, _ = plan_layers(self._layers + [cfg], self.input_shape, check_unused=False)
        p = plan[-1]
        self._layers.append(cfg)
        node = Node(self, p.name, index, p.out_shape)
        self._nodes.append(node)
        return node

    def __getattr__(self, attr: str):
        # any registered layer type is a method (layers other modules add included)
        if not attr.startswith("_") and attr in LAYERS:
            return functools.partial(self.layer, attr)
        raise AttributeError(
            f"{type(self).__name__} has no attribute {attr!r}; layer types: {', '.join(sorted(LAYERS))}"
        )

    def dense(self, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """``dense([x], units, activation="linear")``: fully connected, flattens its input."""
        return self.layer("dense", *args, name=name, **keys)

    def flatten(self, *args: Any, name: Optional[str] = None) -> Node:
        """``flatten([x])``: ``(n, *shape) -> (n, prod(shape))``."""
        return self.layer("flatten", *args, name=name)

    def dropout(self, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """``dropout([x], rate=0.5)``: inverted dropout while training."""
        return self.layer("dropout", *args, name=name, **keys)

    def batchnorm(self, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """``batchnorm([x], momentum=0.1, eps=1e-5, affine=True)``: per-channel batch norm."""
        return self.layer("batchnorm", *args, name=name, **keys)

    def layernorm(self, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """``layernorm([x], eps=1e-5, affine=True)``: per-sample layer norm."""
        return self.layer("layernorm", *args, name=name, **keys)

    def embedding(self, *args: Any, name: Optional[str] = None, **keys: Any) -> Node:
        """``embedding([ids], num_embeddings, dim)``: token ids -> vectors."""
        return self.layer("embedding", *args, name=name, **keys)

    def add(self, *inputs: Node, name: Optional[str] = None) -> Node:
        """``add(a, b, ...)``: elementwise sum of two or more nodes of one shape."""
        return self.layer("add", *inputs, name=name)

    def mul(self, *inputs: Node, name: Optional[str] = None) -> Node:
        """``mul(a, b, ...)``: elementwise product of two or more nodes of one shape."""
        return self.layer("mul", *inputs, name=name)

    def concat(self, *inputs: Node, axis: int = -1, name: Optional[str] = None) -> Node:
        """``concat(a, b, ..., axis=-1)``: join along a per-sample axis."""
        return self.layer("concat", *inputs, name=name, axis=axis)

    # -- results -------------------------------------------------------------------------
    @property
    def output(self) -> Node:
        """The last layer's node (the model output)."""
        if not self._nodes:
            raise ModelError("the builder has no layers yet")
        return self._nodes[-1]

    def raw_spec(self) -> Dict[str, Any]:
        """The spec as written (every layer's ``inputs`` explicit), not yet normalised."""
        return {"layers": [dict(c) for c in self._layers], "loss": self.loss, "init": self.init, "seed": self.seed}

    def spec(self) -> Dict[str, Any]:
        """The normalised ``[model]`` spec -- what the equivalent TOML table normalises to."""
        if not self._layers:
            raise ModelError("model.layers must be a non-empty list of layer tables; add layers first")
        return validate_model_spec(self.raw_spec(), self.input_shape, self.num_classes)

    def build(self) -> Model:
        """A freshly initialised :class:`~raven_hpc.engine.Model` of :meth:`spec`."""
        return build_model(self.spec(), self.input_shape, self.num_classes)

    def toml(self) -> str:
        """:meth:`spec` as a TOML ``[model]`` section to paste into a config file."""
        return spec_to_toml(self.spec())

    def __repr__(self) -> str:
        return f"ModelBuilder(input {self.input_shape}, {len(self._layers)} layers, {self.num_classes} classes)"


# -- TOML output -------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else json.dumps(k)


def spec_to_toml(spec: Mapping[str, Any]) -> str:
    """A model spec as a TOML ``[model]`` section (``[[model.layers]]`` tables)."""
    lines = ["[model]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.items() if k != "layers"]
    for layer in spec.get("layers", []):
        lines += ["", "[[model.layers]]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in layer.items()]
    return "\n".join(lines) + "\n"
