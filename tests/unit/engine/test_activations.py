"""Activations: fused == unfused, what backward keeps, op errors, the
``activation`` layer (spec, errors, models vs torch).

Kernel checks are in ``tests/unit/kernels/test_activations.py``; op-level
gradients (finite differences and torch) are rows in ``cases_act.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from raven_hpc.engine import (
    ACTIVATION_FNS,
    Tensor,
    Workspace,
    activation,
    build_model,
    dense,
    leaky_relu,
    log_softmax,
    no_grad,
    softmax,
    validate_model_spec,
)
from raven_hpc.engine.ops import resolve_activation
from raven_hpc.errors import ModelError
from raven_hpc.kernels import ACTIVATIONS
from raven_hpc.kernels.activations import ACTIVATION_PARAMS, SAVES_INPUT


DTYPES = [np.float32, np.float64]

ELEMENTWISE = sorted(n for n in ACTIVATIONS if n not in ("linear",))


def test_tables_are_consistent():
    codes = set(ACTIVATIONS.values())
    assert codes == set(range(len(codes))), "codes must be 0..n-1 (defaults are indexed by code)"
    assert set(ACTIVATION_PARAMS) <= set(ACTIVATIONS)
    assert all(len(p) <= 2 for p in ACTIVATION_PARAMS.values())
    assert SAVES_INPUT == {ACTIVATIONS[n] for n in ("gelu", "silu", "softplus")}
    assert len(ELEMENTWISE) >= 12 and {"softmax", "log_softmax"} <= set(ACTIVATION_FNS)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_dense_equals_dense_then_activation(name):
    rng = np.random.default_rng(5)
    x, W, b = rng.standard_normal((6, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    g = rng.standard_normal((6, 4))
    grads = []
    for fused in (True, False):
        ts = [Tensor(a.copy(), requires_grad=True) for a in (x, W, b)]
        out = dense(*ts, name) if fused else activation(dense(*ts), name)
        out.backward(g)
        grads.append([out.data.copy()] + [t.grad for t in ts])
    for a, r in zip(*grads):
        np.testing.assert_allclose(a, r, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_backward_keeps_output_or_input_as_documented(name):
    """Output-based activations keep no second (n, m) array; input-based ones do."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((8, 3)).astype(np.float32), requires_grad=True)
    W = Tensor(rng.standard_normal((3, 5)).astype(np.float32), requires_grad=True)
    ws = Workspace()
    y = dense(x, W, None, name, ws=ws)
    fn, pre, _ = y.ctx
    needs_input = ACTIVATIONS[name] in SAVES_INPUT
    assert (pre is not None) == needs_input and ("z" in ws.keys()) == needs_input
    # the standalone op references its input instead of copying it
    a = activation(x, name)
    assert (a.ctx[1] is x.data) if needs_input else (a.ctx[1] is None)


def test_activation_dtypes_and_no_grad():
    for dtype in DTYPES:
        x = Tensor(np.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4), requires_grad=True)
        for fn in (f for f in ACTIVATION_FNS if f != "linear"):
            out = activation(x, fn)
            assert out.dtype == dtype and out.shape == x.shape, fn
            with no_grad():
                quiet = activation(x, fn)
            assert quiet.ctx is None and not quiet.requires_grad
            np.testing.assert_array_equal(quiet.data, out.data)
    assert activation(x, "linear") is x


def test_activation_workspace_reuse_across_batch_sizes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    ws = Workspace()
    for fn in ("gelu", "tanh", "softmax"):
        ref = activation(x, fn).data.copy()
        for n in (8, 3, 8):
            np.testing.assert_array_equal(activation(x[:n], fn, ws=ws).data, ref[:n])


def test_softmax_is_stable_and_normalised():
    x = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 0.0], [3.0, 3.0, 3.0]], np.float32)
    p = softmax(x).data
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-7)
    lp = log_softmax(x).data
    np.testing.assert_allclose(lp[0], [0.0, -2e4, -1e4], rtol=1e-6)
    np.testing.assert_allclose(lp[2], [-math.log(3)] * 3, rtol=1e-6)
    assert softmax(np.zeros((2, 0), np.float32)).shape == (2, 0)
    with pytest.raises(ValueError, match="at least one axis"):
        softmax(np.float32(1.0))


def test_large_inputs_stay_finite():
    x = Tensor(np.array([-1e4, -100.0, 100.0, 1e4], np.float32), requires_grad=True)
    for name in ELEMENTWISE:
        x.grad = None
        y = activation(x, name)
        y.backward(np.ones(4, np.float32))
        assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(x.grad)), name


def test_op_parameter_errors():
    x = np.ones((2, 2))
    with pytest.raises(ModelError, match=r"leaky_relu negative_slope must be >= 0"):
        leaky_relu(x, -0.1)
    with pytest.raises(ModelError, match=r"activation 'gelu' has no parameter 'alpha'; it takes none"):
        activation(x, "gelu", alpha=1.0)
    with pytest.raises(ModelError, match=r"'elu' has no parameter 'slope'; its parameters: alpha"):
        activation(x, "elu", slope=1.0)
    with pytest.raises(ModelError, match=r"hardtanh needs min_val < max_val"):
        activation(x, "hardtanh", min_val=1.0, max_val=1.0)
    with pytest.raises(ModelError, match=r"softplus beta must be > 0"):
        activation(x, "softplus", beta=0.0)
    with pytest.raises(ModelError, match=r"elu alpha must be a number \(finite\), got nan"):
        activation(x, "elu", alpha=float("nan"))
    with pytest.raises(ModelError, match=r"got True"):
        activation(x, "elu", alpha=True)
    with pytest.raises(ModelError, match=r"softmax takes no parameters"):
        activation(x, "softmax", alpha=1.0)
    assert resolve_activation("swish") == resolve_activation("silu")
    assert resolve_activation("leaky_relu", {"negative_slope": 1}).params == {"negative_slope": 1.0}


def test_unknown_activation_in_dense_lists_the_known_ones():
    with pytest.raises(ModelError) as info:
        dense(np.ones((1, 2)), np.ones((2, 2)), None, "swishh")
    msg = str(info.value)
    assert "dense: unknown activation 'swishh'" in msg
    assert all(name in msg for name in ACTIVATIONS)
    spec = {"layers": [{"type": "dense", "units": 4, "activation": "gelus"}, {"type": "dense", "units": 3}]}
    with pytest.raises(ModelError, match=r"model.layers\[0\] \(dense\): unknown activation 'gelus'; "
                                         r"known activations: .*gelu.*softplus"):
        validate_model_spec(spec, (5,), 3)


def _spec(*layers, loss="softmax_cross_entropy"):
    return {"layers": list(layers), "loss": loss, "seed": 3}


def test_layer_spec_is_normalised_with_parameters():
    spec = _spec({"type": "dense", "units": 8},
                 {"type": "activation", "fn": "leaky_relu", "negative_slope": 0.2},
                 {"type": "activation", "fn": "hardtanh", "max_val": 2},
                 {"type": "activation", "fn": "gelu"},
                 {"type": "dense", "units": 3})
    norm = validate_model_spec(spec, (5,), 3)
    assert norm["layers"][1] == {"type": "activation", "fn": "leaky_relu", "negative_slope": 0.2}
    assert norm["layers"][2] == {"type": "activation", "fn": "hardtanh", "min_val": -1.0, "max_val": 2.0}
    assert norm["layers"][3] == {"type": "activation", "fn": "gelu"}
    model = build_model(norm, (5,), 3)
    assert model.num_params == 5 * 8 + 8 + 8 * 3 + 3
    assert model.layers[1].describe() == "activation (leaky_relu, negative_slope=0.2)"
    assert model.layers[3].describe() == "activation (gelu)"
    assert build_model(norm, (5,), 3).spec == norm  # the normalised spec rebuilds itself


@pytest.mark.parametrize("layer, match", [
    ({"type": "activation"}, r"model.layers\[1\] \(activation\): missing required key 'fn'"),
    ({"type": "activation", "fn": "gelus"},
     r"model.layers\[1\] \(activation\): unknown fn 'gelus'; known activations: .*log_softmax.*softmax"),
    ({"type": "activation", "fn": "gelu", "alpha": 1.0},
     r"model.layers\[1\] \(activation\): activation 'gelu' has no parameter 'alpha'"),
    ({"type": "activation", "fn": "leaky_relu", "negative_slope": -1},
     r"model.layers\[1\] \(activation\): leaky_relu negative_slope must be >= 0"),
    ({"type": "activation", "fn": "elu", "alpha": "big"},
     r"model.layers\[1\] \(activation\): elu alpha must be a number \(finite\), got 'big'"),
    ({"type": "activation", "fn": "softmax", "beta": 2.0},
     r"model.layers\[1\] \(activation\): softmax takes no parameters"),
    ({"type": "activation", "fn": "relu", "slope": 2.0},
     r"model.layers\[1\] \(activation\): unknown key 'slope'"),
])
def test_layer_spec_errors(layer, match):
    with pytest.raises(ModelError, match=match):
        validate_model_spec(_spec({"type": "dense", "units": 4}, layer, {"type": "dense", "units": 3}), (5,), 3)


def _torch_act(torch, name, params):
    F = torch.nn.functional
    return {
        "relu": lambda x: torch.relu(x), "leaky_relu": lambda x: F.leaky_relu(x, **params),
        "elu": lambda x: F.elu(x, **params), "selu": F.selu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu,
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": lambda x: F.softplus(x, **params),
        "softsign": F.softsign, "hardtanh": lambda x: F.hardtanh(x, **params),
        "softmax": lambda x: torch.softmax(x, -1), "log_softmax": lambda x: torch.log_softmax(x, -1),
        "linear": lambda x: x,
    }[name]


def _torch_model(torch, model):
    """The model as a torch function plus its Linear modules (same parameters)."""
    steps, linears = [], []
    for layer in model.layers:
        if layer.TYPE == "dense":
            W, b = model.param(f"{layer.name}.W"), model.param(f"{layer.name}.b")
            lin = torch.nn.Linear(*W.shape).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.astype(np.float64)))
                lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
            linears.append(lin)
            steps += [lin, _torch_act(torch, layer.activation, {})]
        else:
            params = {k: v for k, v in layer.cfg.items() if k not in ("type", "fn")}
            steps.append(_torch_act(torch, layer.cfg["fn"], params))

    def forward(x):
        for s in steps:
            x = s(x)
        return x
    return forward, linears


@pytest.mark.parametrize("layers, loss", [
    ([{"type": "dense", "units": 16, "activation": "gelu"},
      {"type": "dense", "units": 12, "activation": "tanh"},
      {"type": "dense", "units": 10}], "softmax_cross_entropy"),
    ([{"type": "dense", "units": 16},
      {"type": "activation", "fn": "leaky_relu", "negative_slope": 0.2},
      {"type": "dense", "units": 12, "activation": "swish"},
      {"type": "activation", "fn": "softplus", "beta": 2.0, "threshold": 5.0},
      {"type": "dense", "units": 12, "activation": "selu"},
      {"type": "activation", "fn": "hardtanh", "min_val": -0.5, "max_val": 0.75},
      {"type": "dense", "units": 10, "activation": "elu"}], "softmax_cross_entropy"),
    ([{"type": "dense", "units": 16, "activation": "softsign"},
      {"type": "dense", "units": 10, "activation": "sigmoid"}], "mse"),
    ([{"type": "dense", "units": 16, "activation": "relu"},
      {"type": "dense", "units": 10},
      {"type": "activation", "fn": "softmax"}], "huber"),
])
def test_models_with_activations_match_torch(torch, layers, loss):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, 2)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int64)
    model = build_model(_spec(*layers, loss=loss), (6, 2), 10)
    forward, linears = _torch_model(torch, model)
    out = forward(torch.from_numpy(x.reshape(32, -1).astype(np.float64)))
    F = torch.nn.functional
    ty = torch.from_numpy(y)
    if loss == "softmax_cross_entropy":
        loss_t = F.cross_entropy(out, ty, reduction="sum")
    else:
        target = F.one_hot(ty, 10).double()
        loss_t = (F.mse_loss if loss == "mse" else F.huber_loss)(out, target, reduction="sum")
    loss_t.backward()
    ref = np.concatenate([a for lin in linears for a in (lin.weight.grad.numpy().T.reshape(-1),
                                                          lin.bias.grad.numpy())])
    value, correct = model.loss_and_grad(x, y, accumulate=False)
    np.testing.assert_allclose(value, loss_t.item(), rtol=1e-5)
    np.testing.assert_allclose(model.grads, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())
    assert correct == int((out.argmax(1).numpy() == y).sum())
    ev_loss, ev_correct = model.evaluate(x, y, chunk=7)
    np.testing.assert_allclose(ev_loss, value, rtol=1e-5)
    assert ev_correct == correct
