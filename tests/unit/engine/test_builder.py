"""The Python model builder (``builder.py``): the same spec and model as TOML,
errors at the call that makes them, TOML output.
"""
from __future__ import annotations

import tomllib

import pytest

from raven_hpc.engine import ModelBuilder, build_model, validate_model_spec
from raven_hpc.engine.builder import spec_to_toml
from raven_hpc.errors import ModelError

from .graphs import builder_residual, graph_data, residual


def test_builder_and_toml_give_the_same_model():
    b = builder_residual()
    toml_model = residual()
    assert b.spec() == toml_model.spec
    py_model = b.build()
    assert py_model.params.tobytes() == toml_model.params.tobytes()
    x, y = graph_data(16, seed=3)
    assert py_model.loss_and_grad(x, y, accumulate=False) == toml_model.loss_and_grad(x, y, accumulate=False)
    assert py_model.grads.tobytes() == toml_model.grads.tobytes()


def test_builder_with_state_and_dropout_matches_toml():
    b = ModelBuilder((12,), 4, loss="softmax_cross_entropy", init="xavier", seed=2)
    h = b.dense(32, "relu")                      # chain: reads the input
    h = b.batchnorm(momentum=0.2)
    h = b.dropout(rate=0.3)
    skip = b.dense(b.input, 32, name="skip")
    b.concat(h, skip, name="cat")
    b.layernorm()
    b.dense(4)
    text = b.toml()
    spec = validate_model_spec(tomllib.loads(text)["model"], (12,), 4)
    assert spec == b.spec()
    assert spec["layers"][0] == {"type": "dense", "units": 32, "activation": "relu"}
    a, t = b.build(), build_model(spec, (12,), 4)
    assert a.params.tobytes() == t.params.tobytes() and a.num_state == t.num_state == 64
    x, y = graph_data(16, seed=4)
    for m in (a, t):
        m.zero_grad()
        m.loss_and_grad(x, y, key=(3, 0))
        m.loss_and_grad(x, y, key=(3, 1))
    assert a.grads.tobytes() == t.grads.tobytes()
    assert a.evaluate(x, y) == t.evaluate(x, y)


def test_builder_chain_equals_plain_layer_list():
    b = ModelBuilder((28, 28), 10)
    b.flatten()
    b.dense(64, activation="relu")
    b.dense(10)
    assert b.spec() == validate_model_spec({"layers": [{"type": "flatten"}, {"type": "dense", "units": 64,
                                                       "activation": "relu"}, {"type": "dense", "units": 10}]},
                                           (28, 28), 10)
    assert b.output.name == "dense_2" and b.output.shape == (10,)


def test_builder_errors_surface_at_the_call():
    b = ModelBuilder((12,), 4)
    h = b.dense(8)
    r = b.dense(b.input, 6)
    with pytest.raises(ModelError, match=r"model.layers\[2\] \(add\): inputs must all have the same shape"):
        b.add(h, r)
    with pytest.raises(ModelError, match=r"model.layers\[2\] \(dense\): units must be a positive integer"):
        b.dense(h, 0)
    with pytest.raises(ModelError, match="positional values for keys units, activation"):
        b.dense(h, 4, "relu", 3)
    with pytest.raises(ModelError, match="duplicate layer name 'dense_0'"):
        b.dense(h, 4, name="dense_0")
    with pytest.raises(ModelError, match="belongs to another ModelBuilder"):
        b.dense(ModelBuilder((12,), 4).input, 4)
    with pytest.raises(ModelError, match="unknown layer type 'conv9'"):
        b.layer("conv9")
    with pytest.raises(AttributeError, match="layer types: "):
        b.conv9
    with pytest.raises(ModelError, match="'inputs' is set by the builder; pass input nodes"):
        b.dense(4, inputs=["input"])
    # failed calls added nothing: the two good layers are still all there is
    assert len(b.raw_spec()["layers"]) == 2
    with pytest.raises(ModelError, match=r"model.layers\[0\] \(dense\): the output of layer 'dense_0' is never used"):
        b.spec()
    b.dense(b.add(h, b.dense(r, 8)), 4)
    assert b.build().num_params > 0


def test_builder_reaches_every_registered_layer_type():
    b = ModelBuilder((12,), 4)
    assert b.layernorm().shape == (12,)
    assert getattr(b, "flatten")().shape == (12,)
    h = b.layer("dense", 4)
    assert h.name == "dense_2"


def test_spec_to_toml_values():
    text = spec_to_toml({"loss": {"name": "softmax_cross_entropy"}, "seed": 1,
                         "layers": [{"type": "dropout", "rate": 0.5, "name": "d\"q"}]})
    back = tomllib.loads(text)["model"]
    assert back == {"loss": {"name": "softmax_cross_entropy"}, "seed": 1,
                    "layers": [{"type": "dropout", "rate": 0.5, "name": "d\"q"}]}
