"""Non-sequential models: named layers, ``inputs``, merge layers; the Python
builder (same spec and model as TOML); the summary of graphs."""
from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from raven_hpc.engine import ModelBuilder, build_model, validate_model_spec
from raven_hpc.engine.builder import spec_to_toml
from raven_hpc.errors import ModelError

RESIDUAL_TOML = """
[model]
seed = 5

[[model.layers]]
type = "dense"
units = 16
activation = "relu"
name = "h"

[[model.layers]]
type = "dense"
units = 16
name = "r"
inputs = ["input"]

[[model.layers]]
type = "add"
inputs = ["h", "r"]

[[model.layers]]
type = "dense"
units = 4
"""


def _data(n, shape=(12,), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n).astype(np.int64)


def _residual():
    return build_model(tomllib.loads(RESIDUAL_TOML)["model"], (12,), 4)


def _t(torch, m, name):
    return (torch.tensor(m.param(f"{name}.W").copy(), requires_grad=True),
            torch.tensor(m.param(f"{name}.b").copy(), requires_grad=True))


def _xent(torch, out, y):
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="sum")


def test_residual_block_matches_torch(torch):
    m = _residual()
    assert [n for n, _, _ in m.param_info] == ["h.W", "h.b", "r.W", "r.b", "dense_3.W", "dense_3.b"]
    assert m.inputs == [["input"], ["input"], ["h", "r"], ["add_2"]]
    x, y = _data(20)
    Wh, bh = _t(torch, m, "h")
    Wr, br = _t(torch, m, "r")
    Wo, bo = _t(torch, m, "dense_3")
    xt = torch.from_numpy(x)
    out = (torch.relu(xt @ Wh + bh) + (xt @ Wr + br)) @ Wo + bo
    loss_t = _xent(torch, out, y)
    loss_t.backward()
    m.grads[:] = np.nan
    loss, correct = m.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    ref = np.concatenate([t.grad.numpy().reshape(-1) for t in (Wh, bh, Wr, br, Wo, bo)])
    np.testing.assert_allclose(m.grads, ref, rtol=1e-4, atol=1e-5)
    assert correct == int((out.argmax(1).numpy() == y).sum())
    assert m.evaluate(x, y) == pytest.approx((loss, correct), rel=1e-6)
    np.testing.assert_array_equal(m.predict(x), out.argmax(1).numpy())


def test_gated_concat_graph_matches_torch(torch):
    spec = {"layers": [
        {"type": "dense", "units": 8, "activation": "relu", "name": "a"},
        {"type": "dense", "units": 8, "name": "gate", "inputs": ["input"]},
        {"type": "mul", "inputs": ["a", "gate"], "name": "gated"},
        {"type": "concat", "inputs": ["gated", "a", "input"]},
        {"type": "layernorm"},
        {"type": "dense", "units": 3},
    ]}
    m = build_model(spec, (6,), 3)
    assert m.layers[3].out_shape == (22,)
    x, y = _data(10, (6,), 3, seed=1)
    Wa, ba = _t(torch, m, "a")
    Wg, bg = _t(torch, m, "gate")
    Wo, bo = _t(torch, m, "dense_5")
    xt = torch.from_numpy(x)
    a = torch.relu(xt @ Wa + ba)
    h = torch.cat([a * (xt @ Wg + bg), a, xt], -1)
    h = torch.nn.functional.layer_norm(h, (22,))
    loss_t = _xent(torch, h @ Wo + bo, y)
    loss_t.backward()
    loss, _ = m.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    got = {n: m.grads[o:o + int(np.prod(s))] for n, s, o in m.param_info}
    for name, t in [("a.W", Wa), ("a.b", ba), ("gate.W", Wg), ("gate.b", bg), ("dense_5.W", Wo), ("dense_5.b", bo)]:
        np.testing.assert_allclose(got[name], t.grad.numpy().reshape(-1), rtol=1e-3, atol=1e-5, err_msg=name)


def test_normalised_spec_is_canonical():
    explicit = {"layers": [
        {"type": "dense", "units": 16, "activation": "relu", "name": "dense_0", "inputs": ["input"]},
        {"type": "dense", "units": 4, "inputs": "dense_0"},
    ]}
    plain = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 4}]}
    norm = validate_model_spec(explicit, (12,), 4)
    assert norm == validate_model_spec(plain, (12,), 4)
    assert all("name" not in l and "inputs" not in l for l in norm["layers"])
    res = _residual().spec
    assert json.loads(json.dumps(res)) == res and validate_model_spec(res, (12,), 4) == res
    assert res["layers"][1] == {"type": "dense", "name": "r", "inputs": ["input"], "units": 16, "activation": "linear"}
    assert res["layers"][2] == {"type": "add", "inputs": ["h", "r"]}
    assert res["layers"][3] == {"type": "dense", "units": 4, "activation": "linear"}


def test_input_read_by_several_flattening_layers():
    spec = {"layers": [{"type": "dense", "units": 8, "name": "a"},
                       {"type": "dense", "units": 8, "inputs": ["input"], "name": "b"},
                       {"type": "add", "inputs": ["a", "b"]}, {"type": "dense", "units": 4}]}
    m = build_model(spec, (3, 4), 4)
    x, y = _data(5, (3, 4))
    assert m.evaluate(x.reshape(5, 12), y) == m.evaluate(x, y)
    spec["layers"][1] = {"type": "layernorm", "inputs": ["input"], "name": "b"}  # does not flatten
    spec["layers"][0]["units"] = 12
    spec["layers"].insert(2, {"type": "flatten", "inputs": ["b"], "name": "bf"})
    spec["layers"][3]["inputs"] = ["a", "bf"]
    m = build_model(spec, (3, 4), 4)
    with pytest.raises(ModelError, match=r"input samples have shape \(12,\)"):
        m.evaluate(x.reshape(5, 12), y)


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


# -- builder ---------------------------------------------------------------------------------


def _builder_residual():
    b = ModelBuilder((12,), 4, seed=5)
    x = b.input
    h = b.dense(x, 16, activation="relu", name="h")
    r = b.dense(x, 16, name="r")
    b.dense(b.add(h, r), 4)
    return b


def test_builder_and_toml_give_the_same_model():
    b = _builder_residual()
    toml_model = _residual()
    assert b.spec() == toml_model.spec
    py_model = b.build()
    assert py_model.params.tobytes() == toml_model.params.tobytes()
    x, y = _data(16, seed=3)
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
    x, y = _data(16, seed=4)
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


# -- summary ------------------------------------------------------------------------------------


def test_graph_summary():
    m = _builder_residual().build()
    rows = m.summary()
    assert rows[2] == {"name": "add_2", "type": "add", "inputs": ["h", "r"], "output_shape": (16,), "params": 0,
                       "state": 0}
    text = m.format_summary()
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "inputs", "output", "shape", "params"]
    add_line = next(l for l in lines if l.startswith("add_2"))
    assert "h, r" in add_line
    assert next(l for l in lines if l.startswith("h ")).split()[1:3] == ["dense", "(relu)"]
    assert f"total parameters: {m.num_params:,}" in text
    assert "graph" in repr(m)


def test_stateful_summary_shows_trainable_and_state():
    m = build_model({"layers": [{"type": "batchnorm"}, {"type": "dropout", "rate": 0.25},
                                {"type": "dense", "units": 4}]}, (12,), 4)
    text = m.format_summary()
    assert text.splitlines()[0].split()[-1] == "state"
    assert "dropout (0.25)" in text
    assert f"trainable parameters: {m.num_trainable:,}" in text
    assert f"state (non-trainable): {m.num_state:,}" in text
    assert f"total: {m.num_params:,}" in text and "MiB" in text
    assert m.summary()[0]["state"] == 24 and m.summary()[0]["params"] == 24
