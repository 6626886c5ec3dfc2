"""Models: flat parameter layout, gradients vs torch, sums, graphs of layers,
summaries, external buffers, the backend.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from raven_hpc.engine import Model, Tensor, build_model, validate_model_spec
from raven_hpc.errors import DatasetError, ModelError

from .graphs import builder_residual, graph_data, residual


MLP = {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                  {"type": "dense", "units": 128, "activation": "relu"},
                  {"type": "dense", "units": 10}]}


def _data(n, seed=0, shape=(28, 28), classes=10):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n).astype(np.int64)


@pytest.fixture(scope="module")
def mlp():
    return build_model(MLP, (28, 28), 10)


def _torch_mlp(torch, model):
    mods = []
    for layer in model.layers:
        lin = torch.nn.Linear(*model.param(f"{layer.name}.W").shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(model.param(f"{layer.name}.W").T.copy()))
            lin.bias.copy_(torch.from_numpy(model.param(f"{layer.name}.b").copy()))
        mods.append(lin)
        if layer.activation == "relu":
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(torch.nn.Flatten(), *mods)


def _torch_flat_grads(torch, net):
    out = []
    for m in net:
        if isinstance(m, torch.nn.Linear):
            out += [m.weight.grad.numpy().T.reshape(-1), m.bias.grad.numpy().reshape(-1)]
    return np.concatenate(out)


@pytest.mark.parametrize("accumulate", [True, False])
def test_mlp_loss_and_grad_matches_torch(mlp, torch, accumulate):
    x, y = _data(64)
    net = _torch_mlp(torch, mlp)
    loss_t = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y), reduction="sum")
    loss_t.backward()
    mlp.zero_grad()
    if not accumulate:
        mlp.grads[:] = np.nan  # must be overwritten everywhere
    loss, correct = mlp.loss_and_grad(x, y, accumulate=accumulate)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    ref = _torch_flat_grads(torch, net)
    assert np.all(np.isfinite(mlp.grads))
    np.testing.assert_allclose(mlp.grads, ref, rtol=1e-3, atol=2e-5)
    assert correct == int((net(torch.from_numpy(x)).argmax(1).numpy() == y).sum())


def test_sum_semantics_and_accumulation(mlp):
    x, y = _data(96, seed=1)
    mlp.zero_grad()
    loss_all, c_all = mlp.loss_and_grad(x, y)
    g_all = mlp.grads.copy()
    mlp.zero_grad()
    l1, c1 = mlp.loss_and_grad(x[:40], y[:40])
    l2, c2 = mlp.loss_and_grad(x[40:], y[40:])
    np.testing.assert_allclose(l1 + l2, loss_all, rtol=1e-5)
    assert c1 + c2 == c_all
    np.testing.assert_allclose(mlp.grads, g_all, rtol=1e-4, atol=1e-5)
    # a sum, not a mean: per-sample losses add up
    per = sum(mlp.evaluate(x[i:i + 1], y[i:i + 1])[0] for i in range(8))
    np.testing.assert_allclose(mlp.evaluate(x[:8], y[:8])[0], per, rtol=1e-5)
    # accumulate=False replaces whatever was there
    mlp.loss_and_grad(x[:40], y[:40], accumulate=False)
    g1 = mlp.grads.copy()
    mlp.zero_grad()
    mlp.loss_and_grad(x[:40], y[:40])
    np.testing.assert_array_equal(mlp.grads, g1)


def test_batch_size_changes_reuse_buffers_correctly():
    m = build_model(MLP, (28, 28), 10)
    fresh = build_model(MLP, (28, 28), 10)
    x, y = _data(50, seed=2)
    for n in (50, 17, 50, 3):
        m.zero_grad()
        fresh_loss = build_model(MLP, (28, 28), 10).loss_and_grad(x[:n], y[:n])
        assert m.loss_and_grad(x[:n], y[:n]) == fresh_loss
    fresh.zero_grad()
    fresh.loss_and_grad(x[:3], y[:3])
    np.testing.assert_array_equal(m.grads, fresh.grads)


def test_forward_graph_backward_equals_loss_and_grad(mlp):
    from raven_hpc.engine import softmax_cross_entropy

    x, y = _data(16, seed=3)
    mlp.zero_grad()
    ref = mlp.loss_and_grad(x, y)
    g_ref = mlp.grads.copy()
    mlp.zero_grad()
    logits = mlp.forward(x)
    assert isinstance(logits, Tensor) and logits.shape == (16, 10) and logits.op == "dense"
    loss, correct = softmax_cross_entropy(logits, y)
    loss.backward()
    assert (float(loss.data), correct) == ref
    np.testing.assert_array_equal(mlp.grads, g_ref)
    # forward() outputs stay valid across calls (no shared buffers)
    a = mlp.forward(x)
    b = mlp.forward(x[::-1].copy())
    np.testing.assert_array_equal(a.data, logits.data)
    assert not np.array_equal(a.data, b.data)


def test_evaluate_and_predict(mlp):
    x, y = _data(300, seed=4)
    mlp.zero_grad()
    ref = mlp.loss_and_grad(x, y)
    mlp.zero_grad()
    mlp.grads[0] = 123.0
    for chunk in (None, 7, 1000):
        loss, correct = mlp.evaluate(x, y, chunk=chunk)
        np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
        assert correct == ref[1]
    assert mlp.grads[0] == 123.0 and not np.any(mlp.grads[1:])
    pred = mlp.predict(x, chunk=64)
    assert pred.dtype == np.int64 and pred.shape == (300,)
    assert int((pred == y).sum()) == ref[1]
    assert mlp.evaluate(x[:0], y[:0]) == (0.0, 0)


def test_input_shapes_and_dtypes(mlp):
    x, y = _data(8, seed=5)
    ref = mlp.evaluate(x, y)
    assert mlp.evaluate(x.reshape(8, 1, 28, 28), y) == ref
    assert mlp.evaluate(x.reshape(8, 784), y) == ref
    assert mlp.evaluate(x.astype(np.float64), y.astype(np.int32)) == ref
    with pytest.raises(ModelError, match=r"input samples have shape \(27, 27\)"):
        mlp.evaluate(np.zeros((2, 27, 27), np.float32), y[:2])
    with pytest.raises(ModelError, match="labels have shape"):
        mlp.evaluate(x, y[:3])
    with pytest.raises(DatasetError, match="outside"):
        mlp.loss_and_grad(x, np.full(8, 10))
    mlp.zero_grad()
    assert mlp.loss_and_grad(x[:0], y[:0], accumulate=False) == (0.0, 0) and not mlp.grads.any()


def test_failed_overwrite_call_leaves_no_stale_flags():
    m = build_model(MLP, (28, 28), 10)
    x, y = _data(4, seed=6)
    with pytest.raises(DatasetError):
        m.loss_and_grad(x, np.array([0, 1, 99, 2]), accumulate=False)
    assert not any(t.overwrite_grad for _, t in m.named_parameters())
    m.zero_grad()
    m.loss_and_grad(x, y)
    g = m.grads.copy()
    m.loss_and_grad(x, y)  # accumulates: twice the gradient
    np.testing.assert_allclose(m.grads, 2 * g, rtol=1e-6)


def test_flat_layout(mlp):
    assert mlp.params.dtype == np.float32 and mlp.params.flags.c_contiguous
    assert mlp.grads.shape == mlp.params.shape == (mlp.num_params,)
    assert mlp.num_params == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    off = 0
    names = []
    for name, shape, offset in mlp.param_info:
        assert offset == off
        off += int(np.prod(shape))
        names.append(name)
    assert off == mlp.num_params
    assert names == ["dense_0.W", "dense_0.b", "dense_1.W", "dense_1.b", "dense_2.W", "dense_2.b"]
    for name, t in mlp.named_parameters():
        assert np.shares_memory(t.data, mlp.params) and np.shares_memory(t.grad, mlp.grads)
    # writing into the flat vector is what the model computes with
    m = build_model(MLP, (28, 28), 10)
    x, y = _data(4)
    before = m.evaluate(x, y)
    m.params[:] = 0
    assert m.evaluate(x, y)[0] == pytest.approx(4 * np.log(10), rel=1e-6)
    assert before[0] != m.evaluate(x, y)[0]


def test_seed_gives_bit_identical_params():
    a = build_model(dict(MLP, seed=7), (28, 28), 10)
    b = build_model(dict(MLP, seed=7), (28, 28), 10)
    c = build_model(dict(MLP, seed=8), (28, 28), 10)
    d = build_model(dict(MLP, seed=7, init="xavier"), (28, 28), 10)
    assert a.params.tobytes() == b.params.tobytes()
    assert not np.array_equal(a.params, c.params)
    assert not np.array_equal(a.params, d.params)
    W = a.param("dense_0.W")
    assert abs(W.std() - np.sqrt(2 / 784)) < 0.05 * np.sqrt(2 / 784)
    assert not a.param("dense_0.b").any()
    Wx = d.param("dense_0.W")
    lim = np.sqrt(6 / (784 + 256))
    assert Wx.max() <= lim and Wx.min() >= -lim and abs(Wx.std() - lim / np.sqrt(3)) < 0.05 * lim


def test_spec_normalised_and_json(mlp):
    spec = mlp.spec
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {
        "layers": [{"type": "dense", "units": 256, "activation": "relu"},
                   {"type": "dense", "units": 128, "activation": "relu"},
                   {"type": "dense", "units": 10, "activation": "linear"}],
        "loss": "softmax_cross_entropy", "init": "he", "seed": 0,
    }
    assert validate_model_spec(spec, (28, 28), 10) == spec
    assert build_model(spec, (28, 28), 10).params.tobytes() == mlp.params.tobytes()


def test_flatten_layer_and_1x28x28_input():
    spec = {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": None}]}
    m = build_model(spec, (1, 28, 28), 10)
    assert m.spec["layers"][1]["activation"] == "linear"
    x, y = _data(5)
    assert m.evaluate(x, y) == m.evaluate(x.reshape(5, 1, 28, 28), y)
    assert [r["output_shape"] for r in m.summary()] == [(784,), (10,)]


def test_summary(mlp):
    rows = mlp.summary()
    assert rows[0] == {"name": "dense_0", "type": "dense", "inputs": ["input"], "output_shape": (256,),
                       "params": 784 * 256 + 256, "state": 0}
    assert rows[1]["inputs"] == ["dense_0"]
    assert sum(r["params"] for r in rows) == mlp.num_params
    text = mlp.format_summary()
    assert "dense_2" in text and f"{mlp.num_params:,}" in text and "relu" in text
    # a chain without state: no inputs or state columns
    assert "inputs" not in text.splitlines()[0] and "state" not in text
    assert mlp.num_trainable == mlp.num_params and mlp.num_state == 0 and mlp.state_info == []


def test_model_is_constructible_directly():
    assert isinstance(build_model(MLP, [28, 28], np.int64(10)), Model)


def test_bind_params_and_grads_to_external_buffers():
    """Workers receive parameters straight into an MPI buffer and compute
    gradients straight into their send buffer: rebinding must change nothing."""
    spec = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 3}]}
    a = build_model(spec, (5,), 3)
    b = build_model(spec, (5,), 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    pbuf = np.zeros(b.num_params, np.float32)
    b.bind_params(pbuf)                       # copies current values in
    assert np.array_equal(pbuf, a.params) and b.params is pbuf
    gbuf = np.full(b.num_params, 7.0, np.float32)
    b.bind_grads(gbuf)
    a.loss_and_grad(x, y, accumulate=False)
    b.loss_and_grad(x, y, accumulate=False)
    assert np.array_equal(gbuf, a.grads) and b.grads is gbuf
    pbuf[:] = 0.5                             # new values arrive in the buffer
    assert np.all(b.param("dense_0.W") == 0.5)
    other = np.zeros(b.num_params, np.float32)
    other[:] = 0.25
    b.bind_params(other, copy=False)
    assert np.all(b.param("dense_1.b") == 0.25)
    with pytest.raises(ValueError):
        b.bind_grads(np.zeros(3, np.float32))


def test_build_model_resolves_the_backend_once(monkeypatch):
    import raven_hpc.kernels as kernels
    from raven_hpc.engine.model import build_model as _build
    from raven_hpc.kernels import CpuBackend

    calls = []
    real = kernels.get_backend

    def counting(name="cpu"):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(kernels, "get_backend", counting)
    spec = {"layers": [{"type": "dense", "units": 2}], "loss": "softmax_cross_entropy"}
    m = _build(spec, (3,), 2)
    assert calls == ["cpu"]
    assert isinstance(m.backend, CpuBackend)
    fake = CpuBackend()
    m2 = _build(spec, (3,), 2, backend=fake)
    assert m2.backend is fake and calls == ["cpu"]


def _t(torch, m, name):
    return (torch.tensor(m.param(f"{name}.W").copy(), requires_grad=True),
            torch.tensor(m.param(f"{name}.b").copy(), requires_grad=True))


def _xent(torch, out, y):
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="sum")


def test_residual_block_matches_torch(torch):
    m = residual()
    assert [n for n, _, _ in m.param_info] == ["h.W", "h.b", "r.W", "r.b", "dense_3.W", "dense_3.b"]
    assert m.inputs == [["input"], ["input"], ["h", "r"], ["add_2"]]
    x, y = graph_data(20)
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
    x, y = graph_data(10, (6,), 3, seed=1)
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


def test_input_read_by_several_flattening_layers():
    spec = {"layers": [{"type": "dense", "units": 8, "name": "a"},
                       {"type": "dense", "units": 8, "inputs": ["input"], "name": "b"},
                       {"type": "add", "inputs": ["a", "b"]}, {"type": "dense", "units": 4}]}
    m = build_model(spec, (3, 4), 4)
    x, y = graph_data(5, (3, 4))
    assert m.evaluate(x.reshape(5, 12), y) == m.evaluate(x, y)
    spec["layers"][1] = {"type": "layernorm", "inputs": ["input"], "name": "b"}  # does not flatten
    spec["layers"][0]["units"] = 12
    spec["layers"].insert(2, {"type": "flatten", "inputs": ["b"], "name": "bf"})
    spec["layers"][3]["inputs"] = ["a", "bf"]
    m = build_model(spec, (3, 4), 4)
    with pytest.raises(ModelError, match=r"input samples have shape \(12,\)"):
        m.evaluate(x.reshape(5, 12), y)


def test_graph_summary():
    m = builder_residual().build()
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
