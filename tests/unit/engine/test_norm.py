"""Dropout, batch norm, layer norm and embedding inside models.

Op-level forward/backward checks are rows in cases_norm.py, kernel checks in
``tests/unit/kernels/test_norm.py``; here: training
vs evaluation mode, dropout's statistics and seeding, batch norm's state in
the flat vectors and its update from summed task statistics (vs torch),
and whole models vs torch.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import Tensor, build_model, dropout
from raven_hpc.errors import DatasetError, ModelError



def _data(n, shape, classes, seed=0, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n,) + shape) * scale + offset).astype(np.float32)
    return x, rng.integers(0, classes, n).astype(np.int64)


def _linear(torch, model, name):
    W = model.param(f"{name}.W")
    lin = torch.nn.Linear(*W.shape)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W.T.copy()))
        lin.bias.copy_(torch.from_numpy(model.param(f"{name}.b").copy()))
    return lin


def _copy_norm(torch, mod, model, name):
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(model.param(f"{name}.gamma").copy()))
        mod.bias.copy_(torch.from_numpy(model.param(f"{name}.beta").copy()))
    return mod


def _xent(torch, out, y):
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="sum")


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_statistics(rate):
    n = 200_000
    x = np.full((n // 100, 100), 3.0, np.float32)
    y = dropout(x, rate, np.random.default_rng(11)).data
    kept = y != 0
    frac = kept.mean()
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(frac - (1 - rate)) < 5 * sigma
    np.testing.assert_allclose(y[kept], 3.0 / (1 - rate), rtol=1e-6)   # inverted: survivors scaled up
    assert abs(y.mean() - 3.0) < 5 * 3.0 / (1 - rate) * sigma          # so the mean is kept
    # masks are independent of the values and of position (no stripes)
    assert abs(kept[:, :50].mean() - kept[:, 50:].mean()) < 10 * sigma


def test_dropout_mask_is_the_generators_and_backward_uses_it():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((6, 7)), requires_grad=True)
    y = dropout(x, 0.4, np.random.default_rng(5))
    u = np.random.default_rng(5).random((6, 7), dtype=np.float32)
    keep = u >= np.float32(0.4)
    np.testing.assert_array_equal(y.data, np.where(keep, x.data / 0.6, 0.0))
    y.backward(np.ones((6, 7)))
    np.testing.assert_array_equal(x.grad, np.where(keep, 1 / 0.6, 0.0))


def test_dropout_rate_zero_and_bad_rates():
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    x = Tensor(np.ones((2, 3)))
    assert dropout(x, 0.0, rng) is x and rng.bit_generator.state == state  # draws nothing
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate"):
            dropout(x, rate, rng)


DROP = {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                   {"type": "dropout", "rate": 0.5},
                   {"type": "dense", "units": 16, "activation": "relu"},
                   {"type": "dropout", "rate": 0.25},
                   {"type": "dense", "units": 4}], "seed": 3}


def test_dropout_masks_follow_seed_and_key_in_layer_order():
    m = build_model(DROP, (10,), 4)
    x, _ = _data(8, (10,), 4)
    out = m.forward(x, training=True, key=(7, 2)).data
    # the documented contract, by hand: one stream per call, layers draw in list order
    rng = np.random.default_rng([3, 7, 2])
    relu = lambda v: np.maximum(v, 0)
    p = m.param
    h = relu(x @ p("dense_0.W") + p("dense_0.b"))
    h = h * (rng.random(h.shape, dtype=np.float32) >= np.float32(0.5)) / np.float32(0.5)
    h = relu(h @ p("dense_2.W") + p("dense_2.b"))
    h = h * (rng.random(h.shape, dtype=np.float32) >= np.float32(0.25)) / np.float32(0.75)
    ref = h @ p("dense_4.W") + p("dense_4.b")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_same_key_same_gradient_on_any_model_instance():
    """What a worker computes for (step, task) is what any other rank, or a
    single process, computes for it."""
    x, y = _data(16, (10,), 4, seed=1)
    a, b = build_model(DROP, (10,), 4), build_model(DROP, (10,), 4)
    la = a.loss_and_grad(x, y, accumulate=False, key=(4, 1))
    b.loss_and_grad(x, y, accumulate=False, key=(9, 9))       # other work in between
    lb = b.loss_and_grad(x, y, accumulate=False, key=(4, 1))
    assert la == lb and a.grads.tobytes() == b.grads.tobytes()
    b.loss_and_grad(x, y, accumulate=False, key=(4, 2))
    assert not np.array_equal(a.grads, b.grads)
    # training differs from evaluation, which is deterministic and mask-free
    assert a.evaluate(x, y) == b.evaluate(x, y)
    assert a.evaluate(x, y)[0] != pytest.approx(la[0])


def test_keyless_training_calls_are_reproducible_per_model():
    x, y = _data(16, (10,), 4, seed=2)
    a, b = build_model(DROP, (10,), 4), build_model(DROP, (10,), 4)
    seq_a = [a.loss_and_grad(x, y, accumulate=False)[0] for _ in range(3)]
    seq_b = [b.loss_and_grad(x, y, accumulate=False)[0] for _ in range(3)]
    assert seq_a == seq_b and len(set(seq_a)) == 3


def test_per_snippet_masks_make_a_chunk_the_sum_of_its_snippets():
    """With segments, each snippet's rows draw their dropout masks from
    (seed, step, snippet id): a batch of three snippets gives the sum of the
    three computed alone -- merging tasks into chunks changes nothing beyond
    round-off -- and one segment is exactly the key (step, id)."""
    x, y = _data(24, (10,), 4, seed=3)
    parts = [(11, 8), (4, 10), (30, 6)]            # (snippet id, rows)
    m = build_model(DROP, (10,), 4)
    loss, correct = m.loss_and_grad(x, y, accumulate=False, key=(5,), segments=parts)
    chunk = m.grads.copy()
    total, loss_sum, correct_sum, r0 = np.zeros_like(chunk, dtype=np.float64), 0.0, 0, 0
    for sid, n in parts:
        l1, c1 = m.loss_and_grad(x[r0:r0 + n], y[r0:r0 + n], accumulate=False, key=(5,), segments=[(sid, n)])
        g1 = m.grads.copy()
        l2, _ = m.loss_and_grad(x[r0:r0 + n], y[r0:r0 + n], accumulate=False, key=(5, sid))
        assert l1 == l2 and g1.tobytes() == m.grads.tobytes()
        total += g1
        loss_sum += l1
        correct_sum += c1
        r0 += n
    np.testing.assert_allclose(chunk, total, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(loss_sum, rel=1e-5) and correct == correct_sum
    # the same rows in another chunk order, or other snippet ids, give other masks
    m.loss_and_grad(x, y, accumulate=False, key=(5,), segments=[(11, 8), (4, 10), (31, 6)])
    assert not np.allclose(m.grads, chunk)
    with pytest.raises(ValueError, match="segments cover"):
        m.loss_and_grad(x, y, key=(5,), segments=[(11, 8)])


def test_models_with_batch_norm_are_not_merged_but_dropout_models_are():
    assert build_model(DROP, (10,), 4).sample_independent
    bn = {"layers": [{"type": "dense", "units": 8}, {"type": "batchnorm"}, {"type": "dense", "units": 4}]}
    assert not build_model(bn, (10,), 4).sample_independent


@pytest.mark.parametrize("key", [(-1,), (1.5,), 3, ("a",)])
def test_bad_keys(key):
    m = build_model(DROP, (10,), 4)
    x, y = _data(2, (10,), 4)
    with pytest.raises(ValueError, match="key"):
        m.loss_and_grad(x, y, key=key)


def test_dropout_is_identity_in_evaluation():
    no_drop = {"layers": [l for l in DROP["layers"] if l["type"] != "dropout"], "seed": 3}
    a, b = build_model(DROP, (10,), 4), build_model(no_drop, (10,), 4)
    assert a.params.tobytes() == b.params.tobytes()
    x, y = _data(20, (10,), 4, seed=3)
    assert a.evaluate(x, y) == b.evaluate(x, y)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    np.testing.assert_array_equal(a.forward(x).data, b.forward(x).data)


BN1 = {"layers": [{"type": "dense", "units": 24, "activation": "relu"},
                  {"type": "batchnorm"},
                  {"type": "dense", "units": 5}]}

BN2 = {"layers": [{"type": "batchnorm", "momentum": 0.2}, {"type": "flatten"}, {"type": "dense", "units": 5}]}


def _torch_bn1(torch, m):
    bn = _copy_norm(torch, torch.nn.BatchNorm1d(24, momentum=0.1, eps=1e-5), m, "batchnorm_1")
    return torch.nn.Sequential(_linear(torch, m, "dense_0"), torch.nn.ReLU(), bn, _linear(torch, m, "dense_2"))


def _torch_bn2(torch, m):
    bn = _copy_norm(torch, torch.nn.BatchNorm2d(3, momentum=0.2, eps=1e-5), m, "batchnorm_0")
    return torch.nn.Sequential(bn, torch.nn.Flatten(), _linear(torch, m, "dense_2"))


def _torch_flat(torch, net):
    out = []
    for mod in net:
        if isinstance(mod, torch.nn.Linear):
            out += [mod.weight.grad.numpy().T.reshape(-1), mod.bias.grad.numpy()]
        elif isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            out += [mod.weight.grad.numpy(), mod.bias.grad.numpy()]
    return np.concatenate(out)


def _order_like_model(m, torch_flat, names_in_torch_order):
    """Re-order torch's flat gradient (module order) into the model's layout."""
    sizes = {n: int(np.prod(s)) for n, s, _ in m.param_info}
    parts, off = {}, 0
    for n in names_in_torch_order:
        parts[n] = torch_flat[off:off + sizes[n]]
        off += sizes[n]
    return np.concatenate([parts[n] for n, _, _ in m.param_info if n in parts])


@pytest.mark.parametrize("which", ["1d", "2d"])
def test_batchnorm_model_matches_torch_in_training_and_evaluation(torch, which):
    if which == "1d":
        m, shape, make = build_model(BN1, (12,), 5), (12,), _torch_bn1
        order = ["dense_0.W", "dense_0.b", "batchnorm_1.gamma", "batchnorm_1.beta", "dense_2.W", "dense_2.b"]
    else:
        m, shape, make = build_model(BN2, (3, 4, 4), 5), (3, 4, 4), _torch_bn2
        order = ["batchnorm_0.gamma", "batchnorm_0.beta", "dense_2.W", "dense_2.b"]
    rng = np.random.default_rng(0)
    m.params[:m.num_trainable] += rng.standard_normal(m.num_trainable).astype(np.float32) * 0.1  # gamma != 1
    net = make(torch, m)
    x, y = _data(32, shape, 5, seed=4, scale=2.0, offset=0.5)
    # training: batch statistics
    net.train()
    loss_t = _xent(torch, net(torch.from_numpy(x)), y)
    loss_t.backward()
    m.grads[:] = np.nan
    loss, _ = m.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    ref = _order_like_model(m, _torch_flat(torch, net), order)
    np.testing.assert_allclose(m.grads[:m.num_trainable], ref, rtol=1e-3, atol=1e-4)
    # evaluation: running statistics (give them non-trivial values first)
    bn = [mod for mod in net if "BatchNorm" in type(mod).__name__][0]
    rm = rng.standard_normal(bn.num_features).astype(np.float32)
    rv = (rng.random(bn.num_features) + 0.5).astype(np.float32)
    name = [n for n, _ in m.named_state()][0].split(".")[0]
    m.param(f"{name}.running_mean")[:] = rm
    m.param(f"{name}.running_var")[:] = rv
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rm))
        bn.running_var.copy_(torch.from_numpy(rv))
    net.eval()
    with torch.no_grad():
        out_t = net(torch.from_numpy(x))
    before = m.grads.copy()
    loss_e, correct = m.evaluate(x, y)
    np.testing.assert_allclose(loss_e, _xent(torch, out_t, y).item(), rtol=1e-5)
    assert correct == int((out_t.argmax(1).numpy() == y).sum())
    np.testing.assert_array_equal(m.grads, before)  # evaluation writes no statistics


@pytest.mark.parametrize("which", ["1d", "2d"])
def test_summed_task_statistics_update_running_stats_like_torch(torch, which):
    """Two tasks' state gradients, summed as the master sums them and passed
    to update_state, give torch's running statistics after one forward over
    the concatenated batch; and again over several steps."""
    spec, shape, make = (BN1, (12,), _torch_bn1) if which == "1d" else (BN2, (3, 4, 4), _torch_bn2)
    m = build_model(spec, shape, 5)
    net = make(torch, m)
    net.train()
    name = [n for n, _ in m.named_state()][0].split(".")[0]
    bn = [mod for mod in net if "BatchNorm" in type(mod).__name__][0]
    for step in range(3):
        x, y = _data(40, shape, 5, seed=10 + step, scale=1.5, offset=2.0 + step)
        acc = np.zeros(m.num_params, np.float64)   # the master's accumulator
        for part in (slice(0, 15), slice(15, 40)):  # two tasks of different size
            m.loss_and_grad(x[part], y[part], accumulate=False, key=(step, part.start))
            acc += m.grads
        m.update_state(m.params, acc[m.num_trainable:], num_samples=40)
        with torch.no_grad():
            net(torch.from_numpy(x))
        np.testing.assert_allclose(m.param(f"{name}.running_mean"), bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.param(f"{name}.running_var"), bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_large_channel_mean_keeps_variance_accurate():
    """The state gradient holds sums shifted by the running mean, so float32
    sums do not cancel the variance when a channel's mean dwarfs its spread."""
    m = build_model({"layers": [{"type": "batchnorm", "momentum": 1.0}, {"type": "dense", "units": 2}]}, (3,), 2)
    x, y = _data(256, (3,), 2, seed=5, scale=0.5, offset=1000.0)
    m.param("batchnorm_0.running_mean")[:] = 999.5  # a running mean near the data's, as after a few steps
    m.loss_and_grad(x, y, accumulate=False)
    m.update_state(m.params, m.grads, 256)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(m.param("batchnorm_0.running_mean"), x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(m.param("batchnorm_0.running_var"), x64.var(0, ddof=1), rtol=1e-4)


def test_state_layout_and_accumulation():
    m = build_model(BN1, (12,), 5)
    assert m.num_state == 48 and m.num_trainable == 12 * 24 + 24 + 48 + 24 * 5 + 5
    assert m.num_params == m.num_trainable + m.num_state == m.params.size == m.grads.size
    names = [n for n, _, _ in m.param_info]
    assert names[-2:] == ["batchnorm_1.running_mean", "batchnorm_1.running_var"]
    assert m.state_info == m.param_info[-2:] and m.state_info[0][2] == m.num_trainable
    assert [n for n, _ in m.named_state()] == names[-2:]
    assert all(not n.endswith(("running_mean", "running_var")) for n, _ in m.named_parameters())
    np.testing.assert_array_equal(m.params[m.num_trainable:], [0] * 24 + [1] * 24)
    x, y = _data(10, (12,), 5)
    m.grads[:] = 5.0
    m.loss_and_grad(x, y, accumulate=False)
    once = m.grads.copy()
    m.loss_and_grad(x, y)                      # accumulates: state statistics too
    np.testing.assert_allclose(m.grads, 2 * once, rtol=1e-5, atol=1e-6)
    # sum(x - 0) over the batch, per channel, in the running_mean slot
    h = np.maximum(x @ m.param("dense_0.W") + m.param("dense_0.b"), 0)
    np.testing.assert_allclose(once[m.num_trainable:m.num_trainable + 24], h.sum(0), rtol=1e-5)
    np.testing.assert_allclose(once[m.num_trainable + 24:], (h ** 2).sum(0), rtol=1e-5)


def test_update_state_inputs():
    m = build_model(BN1, (12,), 5)
    x, y = _data(10, (12,), 5)
    m.loss_and_grad(x, y, accumulate=False)
    full = m.grads.astype(np.float64)
    a = build_model(BN1, (12,), 5)
    a.update_state(a.params, full, 10)                         # the whole accumulator
    b = build_model(BN1, (12,), 5)
    b.update_state(b.params, m.grads[m.num_trainable:], 10)    # the state part, float32
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6)
    assert not np.array_equal(a.params, m.params)
    np.testing.assert_array_equal(a.params[:a.num_trainable], m.params[:m.num_trainable])  # trainable untouched
    with pytest.raises(ValueError, match="stat_sums"):
        a.update_state(a.params, np.zeros(7), 10)
    with pytest.raises(ValueError, match="params"):
        a.update_state(a.params[:-1], full, 10)
    plain = build_model({"layers": [{"type": "dense", "units": 5}]}, (12,), 5)
    before = plain.params.copy()
    plain.update_state(plain.params, np.zeros(0), 10)           # no state: nothing to do
    np.testing.assert_array_equal(plain.params, before)


def test_bound_buffers_carry_state():
    m = build_model(BN1, (12,), 5)
    x, y = _data(10, (12,), 5)
    buf = np.zeros(m.num_params, np.float32)
    m.bind_params(buf)
    gbuf = np.zeros(m.num_params, np.float32)
    m.bind_grads(gbuf)
    m.loss_and_grad(x, y, accumulate=False)
    assert gbuf[m.num_trainable:].any()                          # statistics land in the send buffer
    m.update_state(buf, gbuf, 10)
    assert np.shares_memory(m.param("batchnorm_1.running_mean"), buf)
    fresh = build_model(BN1, (12,), 5)
    fresh.params[:] = buf
    assert fresh.evaluate(x, y) == m.evaluate(x, y)


def test_batchnorm_errors():
    m = build_model(BN1, (12,), 5)
    x, y = _data(1, (12,), 5)
    with pytest.raises(ModelError, match=r"model.layers\[1\] \(batchnorm\): training needs more than one value"):
        m.loss_and_grad(x, y)
    m.evaluate(x, y)  # one sample is fine in evaluation
    # 2d: one image still has H*W values per channel
    build_model(BN2, (3, 4, 4), 5).loss_and_grad(*_data(1, (3, 4, 4), 5))
    for key, value, msg in [("momentum", 1.5, r"momentum must be a number in \[0, 1\]"),
                            ("momentum", True, "momentum must be a number"),
                            ("eps", 0, r"eps must be a number in \(0, inf\)"),
                            ("affine", 1, "affine must be true or false")]:
        spec = {"layers": [{"type": "batchnorm", key: value}, {"type": "dense", "units": 5}]}
        with pytest.raises(ModelError, match=r"model.layers\[0\] \(batchnorm\): " + msg):
            build_model(spec, (12,), 5)


def test_batchnorm_without_affine_has_only_state():
    m = build_model({"layers": [{"type": "batchnorm", "affine": False}, {"type": "dense", "units": 5}]}, (12,), 5)
    assert m.num_trainable == 12 * 5 + 5 and m.num_state == 24
    assert "batchnorm_0.gamma" not in [n for n, _, _ in m.param_info]


EMB = {"layers": [{"type": "embedding", "num_embeddings": 30, "dim": 6},
                  {"type": "layernorm"},
                  {"type": "dense", "units": 4}]}


def test_embedding_layernorm_model_matches_torch(torch):
    m = build_model(EMB, (7,), 4)
    rng = np.random.default_rng(2)
    m.params[:] += rng.standard_normal(m.num_params).astype(np.float32) * 0.1
    emb = torch.nn.Embedding(30, 6)
    ln = _copy_norm(torch, torch.nn.LayerNorm((7, 6)), m, "layernorm_1")
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(m.param("embedding_0.W").copy()))
    net = torch.nn.Sequential(emb, ln, torch.nn.Flatten(), _linear(torch, m, "dense_2"))
    ids = rng.integers(0, 30, (9, 7))
    ids[0, :3] = 4                                             # repeated ids: the table gradient adds up
    y = rng.integers(0, 4, 9)
    loss_t = _xent(torch, net(torch.from_numpy(ids)), y)
    loss_t.backward()
    loss, _ = m.loss_and_grad(ids.astype(np.float32), y, accumulate=False)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-5)
    ref = np.concatenate([emb.weight.grad.numpy().reshape(-1), ln.weight.grad.numpy().reshape(-1),
                          ln.bias.grad.numpy().reshape(-1), net[3].weight.grad.numpy().T.reshape(-1),
                          net[3].bias.grad.numpy()])
    np.testing.assert_allclose(m.grads, ref, rtol=1e-3, atol=1e-5)
    # ids may come as any numeric dtype
    assert m.evaluate(ids, y) == m.evaluate(ids.astype(np.float64), y)


def test_embedding_init_and_shapes():
    m = build_model(dict(EMB, seed=4), (7,), 4)
    W = m.param("embedding_0.W")
    assert W.shape == (30, 6) and abs(W.std() - 1.0) < 0.2         # N(0, 1) as torch
    assert [r["output_shape"] for r in m.summary()] == [(7, 6), (7, 6), (4,)]


@pytest.mark.parametrize("value,msg", [
    (2.5, r"input value 2.5 at batch row 1, position \(3,\) is not a token id: ids must be integers in \[0, 30\)"),
    (30.0, r"input value 30.0 at batch row 1"),
    (-1.0, r"input value -1.0 at batch row 1"),
    (np.nan, r"input value nan at batch row 1"),
])
def test_embedding_rejects_bad_ids(value, msg):
    m = build_model(EMB, (7,), 4)
    ids = np.zeros((3, 7), np.float32)
    ids[1, 3] = value
    for call in (lambda: m.evaluate(ids, np.zeros(3, np.int64)), lambda: m.loss_and_grad(ids, np.zeros(3, np.int64))):
        with pytest.raises(DatasetError, match=r"model.layers\[0\] \(embedding\): " + msg):
            call()


def test_embedding_spec_errors():
    for keys, msg in [({"num_embeddings": 0, "dim": 4}, "num_embeddings must be a positive integer"),
                      ({"num_embeddings": 10, "dim": 2.0}, "dim must be a positive integer"),
                      ({"num_embeddings": 10}, "missing required key 'dim'"),
                      ({"num_embeddings": 2**24 + 1, "dim": 1},
                       r"num_embeddings = 16777217 is more than 16777216 \(2\*\*24\): token ids")]:
        spec = {"layers": [{"type": "embedding", **keys}, {"type": "dense", "units": 4}]}
        with pytest.raises(ModelError, match=r"model.layers\[0\] \(embedding\): " + msg):
            build_model(spec, (7,), 4)


def test_layernorm_over_all_sample_axes():
    m = build_model({"layers": [{"type": "layernorm", "affine": False}, {"type": "dense", "units": 3}]}, (2, 3, 4), 3)
    assert m.num_params == 24 * 3 + 3
    x, _ = _data(5, (2, 3, 4), 3, scale=3.0, offset=7.0)
    h = m.layers[0](Tensor(x)).data.reshape(5, -1)
    np.testing.assert_allclose(h.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(h.var(1), 1, rtol=1e-3)
