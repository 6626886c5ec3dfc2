"""Losses: sums and accuracy, label checks, option validation
(``resolve_loss``), the ``model.loss`` config key, models vs torch.

Kernel checks are in ``tests/unit/kernels/test_losses.py``; op-level
gradients (finite differences and torch) are rows in ``cases_act.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.checks import validate
from raven_hpc.config import load_config, to_toml
from raven_hpc.engine import (
    LOSSES,
    Tensor,
    bce_with_logits,
    build_model,
    huber_loss,
    mse_loss,
    no_grad,
    resolve_loss,
    softmax_cross_entropy,
)
from raven_hpc.errors import ConfigError, DatasetError, ModelError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

#: loss name -> its op
OPS = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "mse": mse_loss,
    "bce_with_logits": bce_with_logits,
    "huber": huber_loss,
}


def _batch(n=37, c=7, seed=0, scale=3.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c)) * scale).astype(dtype), rng.integers(0, c, n).astype(np.int64)


@pytest.mark.parametrize("name", sorted(OPS))
def test_losses_are_sums_with_accuracy(name):
    op = OPS[name]
    z, y = _batch(n=50, c=5, seed=1)
    z[np.arange(50), y] += np.where(np.arange(50) % 3 == 0, 10.0, 0.0)  # some rows surely right
    whole, correct = op(z, y)
    a, ca = op(z[:20], y[:20])
    b, cb = op(z[20:], y[20:])
    np.testing.assert_allclose(float(whole.data), float(a.data) + float(b.data), rtol=1e-12)
    assert correct == ca + cb == int((np.argmax(z, 1) == y).sum())
    assert correct >= 17
    assert whole.shape == () and whole.dtype == np.float64


@pytest.mark.parametrize("name", sorted(OPS))
def test_loss_gradient_only_when_recorded(name):
    op = OPS[name]
    z, y = _batch(n=6, c=4, dtype=np.float32)
    t = Tensor(z, requires_grad=True)
    with no_grad():
        quiet, qc = op(t, y)
    assert quiet.ctx is None and not quiet.requires_grad
    loud, lc = op(t, y)
    assert loud.requires_grad and loud.ctx.shape == z.shape
    assert float(quiet.data) == float(loud.data) and qc == lc
    loud.backward(np.float32(0.5))  # the rule scales the kept gradient
    full = op(Tensor(z, requires_grad=True), y)[0].ctx
    np.testing.assert_allclose(t.grad, 0.5 * full, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(OPS))
def test_losses_check_labels(name):
    op = OPS[name]
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(DatasetError, match=r"label 3 at batch row 2 is outside \[0, 3\)"):
        op(z, np.array([0, 1, 3, 0]))
    with pytest.raises(DatasetError, match="label -1 at batch row 0"):
        op(z, np.array([-1, 1, 2, 0]))
    with pytest.raises(DatasetError, match="integers"):
        op(z, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="does not match"):
        op(z, np.array([0, 1]))


def test_losses_stay_finite_for_extreme_outputs():
    """exp-based losses never overflow (a squared 1e30 does, in torch too)."""
    for name, op in OPS.items():
        big = 1e30 if name in ("softmax_cross_entropy", "bce_with_logits") else 1e4
        z = np.array([[1e4, -1e4, 0.0], [-big, big, 0.0]], np.float32)
        t = Tensor(z, requires_grad=True)
        loss, _ = op(t, np.array([1, 1]))
        loss.backward()
        assert np.isfinite(loss.data) and np.all(np.isfinite(t.grad)), name


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 0.9])
def test_label_smoothing_matches_torch_float64(torch, eps):
    z, y = _batch(n=40, c=9, seed=4, scale=4.0)
    t = Tensor(z, requires_grad=True)
    loss, _ = softmax_cross_entropy(t, y, label_smoothing=eps)
    loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tz, torch.from_numpy(y), reduction="sum", label_smoothing=eps)
    ref.backward()
    np.testing.assert_allclose(float(loss.data), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(t.grad, tz.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_op_option_errors():
    z, y = _batch(n=3, c=3)
    for bad in (1.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ModelError, match=r"softmax_cross_entropy: label_smoothing must be a number in \[0, 1\)"):
            softmax_cross_entropy(z, y, label_smoothing=bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ModelError, match=r"huber: delta must be a number > 0"):
            huber_loss(z, y, delta=bad)


def test_resolve_loss_options():
    assert set(LOSSES) == {"softmax_cross_entropy", "mse", "bce_with_logits", "huber"}
    norm, spec, opts = resolve_loss({"name": "softmax_cross_entropy", "label_smoothing": 0.1})
    assert norm == {"name": "softmax_cross_entropy", "label_smoothing": 0.1} and opts == {"label_smoothing": 0.1}
    assert spec.fn is softmax_cross_entropy
    norm, _, opts = resolve_loss({"name": "huber", "delta": 2})
    assert opts == {"delta": 2.0} and isinstance(opts["delta"], float)
    assert resolve_loss({"name": "mse"})[0] == "mse"
    assert resolve_loss("bce_with_logits")[2] == {}


@pytest.mark.parametrize("spec, match", [
    ({"name": "softmax_cross_entropy", "label_smoothing": 1.0},
     r"model.loss \(softmax_cross_entropy\): label_smoothing must be a number in \[0, 1\), got 1.0"),
    ({"name": "softmax_cross_entropy", "smoothing": 0.1},
     r"model.loss \(softmax_cross_entropy\): unknown option 'smoothing'; valid options: label_smoothing"),
    ({"name": "huber", "delta": 0},
     r"model.loss \(huber\): delta must be a number > 0, got 0"),
    ({"name": "mse", "delta": 1.0}, r"model.loss \(mse\): unknown option 'delta'; it takes no options"),
    ({"name": "nope"}, r"unknown loss 'nope'; known losses: bce_with_logits, huber, mse, softmax_cross_entropy"),
    ({"label_smoothing": 0.1}, r"a loss table needs a 'name'"),
    (3, r"model.loss must be a loss name or a table"),
])
def test_resolve_loss_errors(spec, match):
    with pytest.raises(ModelError, match=match):
        resolve_loss(spec)


CONFIG = """
[data]
path = "d.h5"
[model]
layers = [{{type = "dense", units = 16, activation = "gelu"}}, {{type = "dense", units = 4}}]
loss = {loss}
"""


def _config(tmp_path, loss):
    p = tmp_path / "c.toml"
    p.write_text(CONFIG.format(loss=loss))
    return load_config(p, environ={})


def test_config_accepts_a_loss_table(tmp_path, torch):
    cfg = _config(tmp_path, '{name = "softmax_cross_entropy", label_smoothing = 0.1}')
    assert cfg["model"]["loss"] == {"name": "softmax_cross_entropy", "label_smoothing": 0.1}
    validate(cfg, (5,), 4)
    assert tomllib.loads(to_toml(cfg))["model"]["loss"] == cfg["model"]["loss"]  # resolved config round-trips
    model = build_model(cfg["model"], (5,), 4)
    x, y = _batch(n=12, c=5, seed=2, dtype=np.float32)
    y %= 4
    loss, _ = model.loss_and_grad(x, y, accumulate=False)
    with torch.no_grad():
        W0, b0, W1, b1 = (torch.from_numpy(model.param(n)) for n in ("dense_0.W", "dense_0.b", "dense_1.W", "dense_1.b"))
        out = torch.nn.functional.gelu(torch.from_numpy(x) @ W0 + b0) @ W1 + b1
        ref = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="sum", label_smoothing=0.1)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    assert _config(tmp_path, '"mse"')["model"]["loss"] == "mse"


def test_config_bad_loss_option_names_loss_and_option(tmp_path):
    cfg = _config(tmp_path, '{name = "softmax_cross_entropy", label_smoothing = 1.5}')
    with pytest.raises(ModelError, match=r"model.loss \(softmax_cross_entropy\): label_smoothing must be"):
        validate(cfg, (5,), 4)
    cfg = _config(tmp_path, '{name = "huber", label_smoothing = 0.1}')
    with pytest.raises(ModelError, match=r"model.loss \(huber\): unknown option 'label_smoothing'; "
                                         r"valid options: delta"):
        validate(cfg, (5,), 4)
    with pytest.raises(ConfigError, match=r"\[model\] loss must be str or dict"):
        _config(tmp_path, "3")


@pytest.mark.parametrize("loss", [
    "mse", "bce_with_logits", {"name": "huber", "delta": 0.5},
    {"name": "softmax_cross_entropy", "label_smoothing": 0.2},
])
def test_model_loss_and_grad_matches_torch(torch, loss):
    spec = {"layers": [{"type": "dense", "units": 16, "activation": "tanh"}, {"type": "dense", "units": 6}],
            "loss": loss, "seed": 1}
    model = build_model(spec, (5,), 6)
    x, y = _batch(n=30, c=5, seed=3, dtype=np.float32)
    y %= 6
    W0, b0, W1, b1 = (torch.tensor(model.param(n).astype(np.float64), requires_grad=True)
                      for n in ("dense_0.W", "dense_0.b", "dense_1.W", "dense_1.b"))
    out = torch.tanh(torch.from_numpy(x.astype(np.float64)) @ W0 + b0) @ W1 + b1
    F, ty = torch.nn.functional, torch.from_numpy(y)
    target = F.one_hot(ty, 6).double()
    name = loss if isinstance(loss, str) else loss["name"]
    ref = {
        "mse": lambda: F.mse_loss(out, target, reduction="sum"),
        "bce_with_logits": lambda: F.binary_cross_entropy_with_logits(out, target, reduction="sum"),
        "huber": lambda: F.huber_loss(out, target, reduction="sum", delta=0.5),
        "softmax_cross_entropy": lambda: F.cross_entropy(out, ty, reduction="sum", label_smoothing=0.2),
    }[name]()
    ref.backward()
    value, correct = model.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(value, ref.item(), rtol=1e-5)
    grads = np.concatenate([t.grad.numpy().reshape(-1) for t in (W0, b0, W1, b1)])
    np.testing.assert_allclose(model.grads, grads, rtol=1e-4, atol=1e-5 * np.abs(grads).max())
    assert correct == int((out.argmax(1).numpy() == y).sum())
    assert model.evaluate(x, y)[1] == correct
