"""Convolution and pooling ops and layers: blocks, workspaces, validation,
models with conv layers.

Kernel checks are in ``tests/unit/kernels/test_conv.py``; op-level gradients
(finite differences and torch, every variant) are rows in ``cases_conv.py``,
run by ``test_ops.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import Tensor, Workspace, build_model, make_optimizer, validate_model_spec
from raven_hpc.engine import conv as conv_mod
from raven_hpc.engine.conv import avg_pool2d, conv2d, max_pool2d
from raven_hpc.engine.ops import resolve_activation
from raven_hpc.errors import ModelError
from raven_hpc.kernels import ACTIVATIONS, get_kernel

from .._gradcheck import OpCase, check_finite_differences


LENET = {"layers": [
    {"type": "reshape", "shape": [1, 28, 28]},
    {"type": "conv2d", "filters": 6, "kernel_size": 5, "padding": 2, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 16, "kernel_size": 5, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "dense", "units": 120, "activation": "relu"},
    {"type": "dense", "units": 84, "activation": "relu"},
    {"type": "dense", "units": 10},
], "seed": 0}

#: a small conv net with every layer type and option in play
SMALL = {"layers": [
    {"type": "reshape", "shape": [2, 6, -1]},
    {"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "padding": "same", "activation": "relu"},
    {"type": "avg_pool2d", "pool_size": 2, "stride": 1},
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": 1, "use_bias": False},
    {"type": "max_pool2d", "pool_size": [2, 1], "padding": [1, 0]},
    {"type": "dense", "units": 5},
], "seed": 1}


def _data(n, shape=(28, 28), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n).astype(np.int64)


@pytest.mark.parametrize("pool, stride, padding", [(2, 2, 0), (3, 2, 1), (2, 1, 0), ((2, 3), 1, (1, 1))])
def test_max_pool_nan_and_inf(pool, stride, padding):
    """NaN propagates (first NaN of a window wins, and gets the gradient); +-inf are ordinary values."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    x[0, 0, 2, 3] = x[0, 0, 3, 3] = np.nan
    x[0, 1, 4, 4], x[0, 1, 4, 5] = np.inf, -np.inf
    x[1, 0, 5, 5] = -np.inf
    t = Tensor(x, requires_grad=True)
    y = max_pool2d(t, pool, stride, padding)
    (OH, OW), (kh, kw), (sh, sw), (ph, pw) = conv_mod.pool_geometry((7, 8), pool, stride, padding)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    for n in range(2):
        for c in range(2):
            for i in range(OH):
                for j in range(OW):
                    win = xp[n, c, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    want = np.nan if np.isnan(win).any() else win.max()
                    np.testing.assert_array_equal(y.data[n, c, i, j], want)
    y.backward(np.ones_like(y.data))
    assert np.isfinite(t.grad).all()
    assert t.grad[0, 0, 2, 3] > 0  # a window holding both NaNs sends its gradient to the first
    if (pool, stride, padding) == (2, 2, 0):
        assert t.grad[0, 0, 3, 3] == 0


def test_conv_blocks_give_the_same_result_as_one_block(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 3, 10, 9)).astype(np.float32)
    W = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    R = rng.standard_normal((13, 5, 10, 9)).astype(np.float32)

    def run():
        ts = [Tensor(a, requires_grad=True) for a in (x, W, b)]
        y = conv2d(*ts, 1, "same", "relu")
        y.backward(R)
        return [y.data.copy()] + [t.grad.copy() for t in ts]

    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 1 << 30)
    one = run()
    for block in (1, 4 * 27 * 90 * 2, 4 * 27 * 90 * 5):  # 1, 2 and 5 samples per block
        monkeypatch.setattr(conv_mod, "BLOCK_BYTES", block)
        for got, ref in zip(run(), one):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_workspace_reuse_gives_same_results():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 2, 9, 9)).astype(np.float32)
    W = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    R = rng.standard_normal((8, 4, 4, 4)).astype(np.float32)

    def grads(n, wsc=None, wsp=None):
        ts = [Tensor(x[:n], requires_grad=True), Tensor(W, requires_grad=True), Tensor(b, requires_grad=True)]
        y = max_pool2d(conv2d(*ts, 1, 1, "relu", ws=wsc), 2, ws=wsp)
        y.backward(R[:n])
        return [y.data.copy()] + [t.grad.copy() for t in ts]

    ref = grads(8)
    wsc, wsp = Workspace(), Workspace()
    for n in (8, 3, 8, 1):
        for got, want in zip(grads(n, wsc, wsp), [ref[0][:n], ref[1][:n]]):
            np.testing.assert_array_equal(got, want)
        fresh = grads(n)
        for got, want in zip(grads(n, wsc, wsp)[2:], fresh[2:]):
            np.testing.assert_array_equal(got, want)
    assert wsc.nbytes() > 0 and wsp.nbytes() > 0


def test_conv_memory_does_not_grow_with_the_batch():
    """The patch matrix is built per block: scratch is bounded by BLOCK_BYTES."""
    rng = np.random.default_rng(2)
    W = Tensor(rng.standard_normal((6, 1, 5, 5)).astype(np.float32), requires_grad=True)
    sizes = {}
    for n in (64, 512):
        ws = Workspace()
        x = Tensor(rng.standard_normal((n, 1, 28, 28)).astype(np.float32))
        y = conv2d(x, W, None, 1, 2, "relu", ws=ws)
        y.backward(np.ones_like(y.data))
        sizes[n] = ws.nbytes() - y.data.nbytes
    assert sizes[512] == sizes[64] <= 3 * conv_mod.BLOCK_BYTES + 4096


def test_empty_batch():
    ts = [Tensor(np.ones((0, 2, 5, 5)), requires_grad=True), Tensor(np.ones((3, 2, 3, 3)), requires_grad=True),
          Tensor(np.ones(3), requires_grad=True)]
    y = max_pool2d(conv2d(*ts, 1, 1, "relu"), 2)
    assert y.shape == (0, 3, 2, 2)
    y.backward(np.ones(y.shape))
    assert ts[0].grad.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(ts[1].grad, 0)
    np.testing.assert_array_equal(ts[2].grad, 0)


@pytest.mark.parametrize("act_name", sorted(ACTIVATIONS))
def test_every_activation_works_in_conv(act_name):
    """Fused activations are the shared kernel codes: whatever the engine knows, conv2d knows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 5))
    W = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    lin = conv2d(x, W, b, 1, 1).data
    want = np.empty_like(lin)
    get_kernel("act_forward")(lin.reshape(-1), want.reshape(-1), ACTIVATIONS[act_name])
    np.testing.assert_allclose(conv2d(x, W, b, 1, 1, act_name).data, want, rtol=1e-12, atol=1e-12)
    case = OpCase(f"conv2d_{act_name}", lambda x, W, b: conv2d(x, W, b, 1, 1, act_name), None,
                  lambda rng: ([rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((3, 2, 3, 3)),
                                rng.standard_normal(3)], {}))
    check_finite_differences(case, seed=0)


def test_activation_with_parameters():
    fn = resolve_activation("leaky_relu", {"negative_slope": 0.2})
    rng = np.random.default_rng(6)
    x, W = rng.standard_normal((2, 1, 5, 5)), rng.standard_normal((2, 1, 3, 3))
    lin = conv2d(x, W).data
    np.testing.assert_allclose(conv2d(x, W, None, 1, 0, fn).data, np.where(lin > 0, lin, 0.2 * lin), rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: conv2d(np.ones((2, 3, 5, 5)), np.ones((4, 2, 3, 3))), "does not fit"),
    (lambda: conv2d(np.ones((3, 5, 5)), np.ones((4, 3, 3, 3))), "4-D"),
    (lambda: conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), np.ones(3)), "bias shape"),
    (lambda: conv2d(np.ones((1, 1, 2, 2)), np.ones((2, 1, 3, 3))), "does not fit a 2x2"),
    (lambda: conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), padding="full"), "padding"),
    (lambda: conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), stride=0), "stride"),
    (lambda: max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2), "more than half"),
    (lambda: avg_pool2d(np.ones((1, 1, 4, 4)), 5), "does not fit"),
])
def test_op_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_unknown_activation_in_op():
    with pytest.raises(ModelError, match="unknown activation"):
        conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), activation="swishy")


def _spec(*layers):
    return {"layers": list(layers) + [{"type": "dense", "units": 10}]}


CONV = {"type": "conv2d", "filters": 4, "kernel_size": 3}

IMG = {"type": "reshape", "shape": [1, 28, 28]}


@pytest.mark.parametrize("layers, message", [
    ([CONV], r'model.layers\[0\] \(conv2d\): needs \(channels, height, width\) input.*'
             r'put \{type = "reshape", shape = \[1, 28, 28\]\} first'),
    ([{"type": "max_pool2d", "pool_size": 2}], r"layers\[0\] \(max_pool2d\): needs \(channels, height, width\)"),
    ([IMG, {"type": "conv2d", "kernel_size": 3}], r"layers\[1\] \(conv2d\): missing required key 'filters'"),
    ([IMG, {"type": "conv2d", "filters": 4}], r"missing required key 'kernel_size'"),
    ([IMG, dict(CONV, filters=0)], r"layers\[1\] \(conv2d\): filters must be a positive integer"),
    ([IMG, dict(CONV, filters=2.5)], "filters must be a positive integer"),
    ([IMG, dict(CONV, kernel_size=[3])], "kernel_size must be an integer or a pair"),
    ([IMG, dict(CONV, kernel_size=0)], "kernel_size must be >= 1"),
    ([IMG, dict(CONV, kernel_size=29)], r"layers\[1\] \(conv2d\): a 29x29 window does not fit a 28x28 input"),
    ([IMG, dict(CONV, stride=0)], "stride must be >= 1"),
    ([IMG, dict(CONV, padding="full")], r'padding must be an integer, a pair, "same" or "valid"'),
    ([IMG, dict(CONV, padding=-1)], "padding must be >= 0"),
    ([IMG, dict(CONV, use_bias="yes")], "use_bias must be true or false"),
    ([IMG, dict(CONV, activation="swishy")], r"layers\[1\] \(conv2d\): unknown activation 'swishy'"),
    ([IMG, dict(CONV, dilation=2)], r"unknown key 'dilation'; valid keys: activation, filters"),
    ([IMG, {"type": "max_pool2d"}], r"layers\[1\] \(max_pool2d\): missing required key 'pool_size'"),
    ([IMG, {"type": "max_pool2d", "pool_size": 3, "padding": 2}], "more than half the 3x3 pool window"),
    ([IMG, {"type": "avg_pool2d", "pool_size": 30}], r"layers\[1\] \(avg_pool2d\): a 30x30 pool window"),
    ([IMG, {"type": "avg_pool2d", "pool_size": 2, "stride": [1, 0]}], "stride must be >= 1"),
    ([{"type": "reshape", "shape": [1, 27, 28]}], r"layers\[0\] \(reshape\): cannot reshape \(28, 28\) "
                                                   r"\(784 elements\) to \[1, 27, 28\] \(756 elements\)"),
    ([{"type": "reshape", "shape": [5, -1]}], "784 is not a multiple of 5"),
    ([{"type": "reshape", "shape": [-1, -1]}], "at most one -1"),
    ([{"type": "reshape", "shape": [0, 784]}], "positive integers"),
    ([{"type": "reshape", "shape": 784}], "must be a non-empty list"),
    ([{"type": "reshape"}], "missing required key 'shape'"),
])
def test_layer_validation_errors(layers, message):
    with pytest.raises(ModelError, match=message):
        validate_model_spec(_spec(*layers), (28, 28), 10)


def test_hint_for_flat_input_names_the_layer():
    with pytest.raises(ModelError, match=r"layers\[0\] \(conv2d\).*got per-sample shape \(784,\).*"
                                         r"shape = \[channels, height, width\]"):
        validate_model_spec(_spec(CONV), (784,), 10)


def test_normalised_spec_is_canonical_and_stable():
    norm = validate_model_spec(SMALL, (12, 6), 5)
    conv0, pool0, conv1, pool1 = norm["layers"][1:5]
    assert conv0 == {"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "stride": [1, 1], "padding": "same",
                     "activation": "relu", "use_bias": True}
    assert pool0["stride"] == [1, 1] and pool1 == {"type": "max_pool2d", "pool_size": [2, 1], "stride": [2, 1],
                                                   "padding": [1, 0]}
    assert conv1["padding"] == [1, 1] and conv1["use_bias"] is False
    assert validate_model_spec(norm, (12, 6), 5) == norm  # idempotent (checkpoints re-validate)


def test_lenet_builds_with_expected_shapes_params_and_init():
    m = build_model(LENET, (28, 28), 10)
    shapes = [r["output_shape"] for r in m.summary()]
    assert shapes == [(1, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120,), (84,), (10,)]
    assert m.num_params == (6 * 25 + 6) + (16 * 150 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert [n for n, _, _ in m.param_info[:4]] == ["conv2d_1.W", "conv2d_1.b", "conv2d_3.W", "conv2d_3.b"]
    W = m.param("conv2d_3.W")
    assert W.shape == (16, 6, 5, 5) and np.shares_memory(W, m.params)
    np.testing.assert_allclose(W.std(), np.sqrt(2 / 150), rtol=0.1)  # He, fan_in = C*kh*kw
    assert not m.param("conv2d_3.b").any()
    assert "conv2d (relu)" in m.format_summary()
    m2 = build_model(dict(LENET, init="xavier"), (28, 28), 10)
    a = np.sqrt(6 / (150 + 16 * 25))  # fan_out = filters*kh*kw
    W2 = m2.param("conv2d_3.W")
    assert np.abs(W2).max() <= a and np.abs(W2).max() > 0.9 * a


def _torch_lenet(torch, model):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    ours = [l for l in model.layers if l.params]
    theirs = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for l, t in zip(ours, theirs):
            W = l.params["W"].data
            t.weight.copy_(torch.from_numpy(W.T.copy() if W.ndim == 2 else W.copy()))
            t.bias.copy_(torch.from_numpy(l.params["b"].data.copy()))
    return net, theirs


def test_lenet_loss_and_grad_matches_torch(torch):
    m = build_model(LENET, (28, 28), 10)
    x, y = _data(37)
    net, theirs = _torch_lenet(torch, m)
    loss_t = torch.nn.functional.cross_entropy(net(torch.from_numpy(x).reshape(37, 1, 28, 28)),
                                               torch.from_numpy(y), reduction="sum")
    loss_t.backward()
    m.grads[:] = np.nan
    loss, _ = m.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    ref = np.concatenate([g for t in theirs for g in
                          ((t.weight.grad.numpy().T if t.weight.ndim == 2 else t.weight.grad.numpy()).reshape(-1),
                           t.bias.grad.numpy())])
    np.testing.assert_allclose(m.grads, ref, rtol=1e-3, atol=1e-4)


def test_small_net_trains_on_random_data():
    """Every layer type in one model: SGD memorises a fixed random batch."""
    m = build_model(SMALL, (12, 6), 5)
    x, y = _data(32, (12, 6), 5, seed=4)
    opt = make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9}, m.num_params)
    losses = []
    for _ in range(60):
        loss, _ = m.loss_and_grad(x, y, accumulate=False)
        losses.append(loss)
        opt.step(m.params, m.grads, scale=1.0 / len(y))
    assert np.isfinite(losses).all()
    loss, correct = m.evaluate(x, y)
    assert loss < 0.25 * losses[0] and correct >= 28


def _blobs(n, seed):
    """28x28 noise with a bright 7x7 square in one of four places; the place is the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int64)
    x = 0.5 * rng.random((n, 28, 28), dtype=np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 3 + 14 * r : 10 + 14 * r, 3 + 14 * q : 10 + 14 * q] += 1.0
    return x, y


def test_lenet_learns_a_spatial_task_in_a_few_steps():
    m = build_model(LENET, (28, 28), 10)
    x, y = _blobs(64, seed=0)
    opt = make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}, m.num_params)
    for _ in range(20):
        m.loss_and_grad(x, y, accumulate=False)
        opt.step(m.params, m.grads, scale=1.0 / len(y))
    xt, yt = _blobs(256, seed=1)  # held out
    assert m.evaluate(xt, yt)[1] >= 0.95 * 256


def test_flat_vectors_bind_and_accumulate():
    m = build_model(SMALL, (12, 6), 5)
    x, y = _data(9, (12, 6), 5, seed=2)
    m.zero_grad()
    loss_ref, correct_ref = m.loss_and_grad(x, y)
    g_ref = m.grads.copy()
    # accumulate=True adds, accumulate=False overwrites (NaN-filled first)
    m.loss_and_grad(x, y)
    np.testing.assert_allclose(m.grads, 2 * g_ref, rtol=1e-6, atol=1e-7)
    m.grads[:] = np.nan
    m.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_array_equal(m.grads, g_ref)
    # new storage for params and grads (what workers do with MPI buffers)
    params, grads = np.empty_like(m.params), np.full_like(m.grads, np.nan)
    m.bind_params(params)
    m.bind_grads(grads)
    assert m.loss_and_grad(x, y, accumulate=False) == (loss_ref, correct_ref)
    np.testing.assert_array_equal(grads, g_ref)
    # the layers read the bound vector: changing it changes the output
    params *= 0.5
    assert m.evaluate(x, y)[0] != pytest.approx(loss_ref)
    # flat input and a (n, 12, 6) input give the same thing through the reshape layer
    assert m.evaluate(x.reshape(9, -1), y) == m.evaluate(x, y)


def test_evaluate_in_chunks_matches_one_pass_and_gradients():
    m = build_model(LENET, (28, 28), 10)
    x, y = _data(50, seed=3)
    loss, correct = m.loss_and_grad(x, y, accumulate=False)
    l1, c1 = m.evaluate(x, y)
    l2, c2 = m.evaluate(x, y, chunk=7)
    assert c1 == c2 == correct
    np.testing.assert_allclose([l1, l2], loss, rtol=1e-5)
    assert m.predict(x, chunk=16).shape == (50,)
