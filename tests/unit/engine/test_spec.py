"""Model specs (``spec.py``): validation messages for layers, graphs, shapes and
classes; the canonical normalised spec.
"""
from __future__ import annotations

import json

import pytest

from raven_hpc.engine import build_model, validate_model_spec
from raven_hpc.errors import ModelError

from .graphs import residual


D = {"type": "dense", "units": 10}

BAD_SPECS = [
    ({"layers": []}, "non-empty list"),
    ({"layers": "dense"}, "non-empty list"),
    ({"layers": [D], "optimizer": "sgd"}, "model: unknown key 'optimizer'"),
    ({"layers": [{"type": "conv9", "units": 3}, D]}, r"model.layers\[0\]: unknown layer type 'conv9'; known types: .*dense, .*flatten"),
    ({"layers": [{"units": 3}, D]}, r"model.layers\[0\]: missing key 'type'"),
    ({"layers": [7, D]}, r"model.layers\[0\]: must be a table"),
    ({"layers": [{"type": "dense", "units": 64, "activation": "tanhh"}, D]},
     r"model.layers\[0\] \(dense\): unknown activation 'tanhh'"),
    ({"layers": [{"type": "dense", "units": 64}, {"type": "dense", "unit": 10}]},
     r"model.layers\[1\] \(dense\): unknown key 'unit'; valid keys: activation, inputs, name, type, units"),
    ({"layers": [{"type": "dense"}]}, r"model.layers\[0\] \(dense\): missing required key 'units'"),
    ({"layers": [{"type": "dense", "units": 0}, D]}, r"model.layers\[0\] \(dense\): units must be a positive integer, got 0"),
    ({"layers": [{"type": "dense", "units": -3}, D]}, r"units must be a positive integer, got -3"),
    ({"layers": [{"type": "dense", "units": 2.5}, D]}, r"units must be a positive integer, got 2.5"),
    ({"layers": [{"type": "dense", "units": True}, D]}, r"units must be a positive integer, got True"),
    ({"layers": [{"type": "dense", "units": "64"}, D]}, r"units must be a positive integer, got '64'"),
    ({"layers": [{"type": "dense", "units": 64}, {"type": "dense", "units": 5}]},
     r"model.layers\[1\] \(dense\): the last layer outputs shape \(5,\) .* for 10 classes; set units = 10"),
    ({"layers": [D, {"type": "flatten"}, {"type": "dense", "units": 10, "kernel": 3}]},
     r"model.layers\[2\] \(dense\): unknown key 'kernel'"),
    ({"layers": [D], "loss": "hinge"}, r"model.loss: unknown loss 'hinge'; known losses: bce_with_logits, huber, "
                                       r"mse, softmax_cross_entropy"),
    ({"layers": [D], "init": "orthogonal"}, r"model.init: unknown initialiser 'orthogonal'"),
    ({"layers": [D], "seed": -1}, r"model.seed must be a non-negative integer"),
    ({"layers": [D], "seed": 1.5}, r"model.seed must be a non-negative integer"),
    # validated before allocation: a huge first layer must not be allocated
    ({"layers": [{"type": "dense", "units": 10**9}, {"type": "dense", "units": 10, "activation": "x"}]},
     r"model.layers\[1\] \(dense\): unknown activation 'x'"),
    ({"layers": [{"type": "dense", "units": 10**7}, D]}, r"more than 2147483647"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS, ids=[m[:40] for _, m in BAD_SPECS])
def test_bad_spec_messages(spec, message):
    with pytest.raises(ModelError, match=message):
        validate_model_spec(spec, (28, 28), 10)
    with pytest.raises(ModelError, match=message):
        build_model(spec, (28, 28), 10)


@pytest.mark.parametrize("shape,classes,message", [
    ((), 10, "input shape"), ((28, 0), 10, "input shape"), ((28, 28), 1, "classes"), ((28, 28), 2.0, "classes"),
])
def test_bad_shape_or_classes(shape, classes, message):
    with pytest.raises(ModelError, match=message):
        validate_model_spec({"layers": [D]}, shape, classes)


def test_normalised_spec_is_canonical():
    explicit = {"layers": [
        {"type": "dense", "units": 16, "activation": "relu", "name": "dense_0", "inputs": ["input"]},
        {"type": "dense", "units": 4, "inputs": "dense_0"},
    ]}
    plain = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 4}]}
    norm = validate_model_spec(explicit, (12,), 4)
    assert norm == validate_model_spec(plain, (12,), 4)
    assert all("name" not in l and "inputs" not in l for l in norm["layers"])
    res = residual().spec
    assert json.loads(json.dumps(res)) == res and validate_model_spec(res, (12,), 4) == res
    assert res["layers"][1] == {"type": "dense", "name": "r", "inputs": ["input"], "units": 16, "activation": "linear"}
    assert res["layers"][2] == {"type": "add", "inputs": ["h", "r"]}
    assert res["layers"][3] == {"type": "dense", "units": 4, "activation": "linear"}


D4 = {"type": "dense", "units": 4}

BAD_GRAPHS = [
    ([{"type": "dense", "units": 4, "inputs": ["nope"]}],
     r"model.layers\[0\] \(dense\): unknown input 'nope'; known names here: 'input'"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "dense", "units": 4, "inputs": ["b"]}],
     r"model.layers\[1\] \(dense\): unknown input 'b'; known names here: 'input', 'a'"),
    ([{"type": "dense", "units": 8, "inputs": ["later"]}, {"type": "dense", "units": 4, "name": "later"}],
     r"model.layers\[0\] \(dense\): input 'later' is model.layers\[1\], defined later; inputs must name earlier"),
    ([{"type": "dense", "units": 4, "name": "me", "inputs": ["me"]}],
     r"model.layers\[0\] \(dense\): input 'me' is this layer itself"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "dense", "units": 4, "name": "a"}],
     r"model.layers\[1\] \(dense\): duplicate layer name 'a' \(model.layers\[0\] has it\)"),
    ([{"type": "dense", "units": 8, "name": "dense_1"}, D4],
     r"model.layers\[1\] \(dense\): duplicate layer name 'dense_1'"),
    ([{"type": "dense", "units": 8, "name": "input"}, D4], r"model.layers\[0\] \(dense\): name must be .*got 'input'"),
    ([{"type": "dense", "units": 8, "name": "a.b"}, D4], r"name must be .*got 'a.b'"),
    ([{"type": "dense", "units": 8, "name": 3}, D4], r"name must be .*got 3"),
    ([{"type": "dense", "units": 4, "inputs": [1]}], r"inputs must be a non-empty list of layer names"),
    ([{"type": "dense", "units": 4, "inputs": []}], r"inputs must be a non-empty list of layer names"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "dense", "units": 6, "name": "b", "inputs": ["input"]},
      {"type": "add", "inputs": ["a", "b"]}, D4],
     r"model.layers\[2\] \(add\): inputs must all have the same shape, got \(8,\), \(6,\); "
     r"inputs: 'a' \(8,\), 'b' \(6,\)"),
    ([{"type": "dense", "units": 8}, {"type": "add"}, D4],
     r"model.layers\[1\] \(add\): a merge layer needs at least 2 inputs, got 1"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "dense", "units": 4, "inputs": ["a", "input"]}],
     r"model.layers\[1\] \(dense\): takes exactly 1 input, got 2 .* with a merge layer \(add, mul, concat\)"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "dense", "units": 4, "inputs": ["input"]}],
     r"model.layers\[0\] \(dense\): the output of layer 'a' is never used .* almost surely a config mistake"),
    ([{"type": "dense", "units": 8, "name": "a"}, {"type": "concat", "inputs": ["a", "input"], "axis": 1}, D4],
     r"model.layers\[1\] \(concat\): axis must be an integer in \[-1, 0\]"),
    ([{"type": "layernorm", "name": "a"}, {"type": "dense", "units": 3, "inputs": ["input"], "name": "b"},
      {"type": "concat", "inputs": ["a", "b"]}, D4],
     r"model.layers\[2\] \(concat\): inputs must match on every axis but axis -1, got \(2, 6\), \(3,\)"),
]


@pytest.mark.parametrize("layers,message", BAD_GRAPHS, ids=[m[:50] for _, m in BAD_GRAPHS])
def test_bad_graph_messages(layers, message):
    shape = (2, 6) if layers[0]["type"] == "layernorm" else (12,)
    with pytest.raises(ModelError, match=message):
        validate_model_spec({"layers": layers}, shape, 4)
