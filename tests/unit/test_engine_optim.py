"""Optimizers: torch.optim equivalence, state round trip, config validation."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import SGD, Optimizer, make_optimizer, validate_optimizer_config
from raven_hpc.errors import CheckpointError, ConfigError

SGD_CONFIGS = [
    {"name": "sgd", "lr": 0.1},
    {"name": "sgd", "lr": 0.05, "weight_decay": 1e-2},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "sgd", "lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 5e-4},
    {"name": "sgd", "lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-3},
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "name"))
def test_sgd_matches_torch(cfg, torch):
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.standard_normal(n).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    kw = {k: v for k, v in cfg.items() if k != "name"}
    topt = torch.optim.SGD([tp], **kw)
    opt = make_optimizer(cfg, n)
    for step in range(6):
        g = rng.standard_normal(n).astype(np.float32)
        if step == 3:  # a schedule changing lr on both sides
            opt.lr = cfg["lr"] / 2
            for group in topt.param_groups:
                group["lr"] = cfg["lr"] / 2
        opt.step(p, g)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_state_dict_round_trip_continues_identically():
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    rng = np.random.default_rng(1)
    n = 500
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(6)]
    p_a = rng.standard_normal(n).astype(np.float32)
    a = make_optimizer(cfg, n)
    for g in grads[:3]:
        a.step(p_a, g)
    state = a.state_dict()
    assert state["steps"] == 3 and state["momentum_buffer"].shape == (n,)
    assert all(isinstance(v, (np.ndarray, float, int)) for v in state.values())
    p_b = p_a.copy()
    b = make_optimizer({"name": "sgd", "lr": 0.5}, n)  # hyper-parameters come from the state
    b.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
    assert b.config == a.config
    for g in grads[3:]:
        a.step(p_a, g)
        b.step(p_b, g)
    assert p_a.tobytes() == p_b.tobytes()
    state["momentum_buffer"] = state["momentum_buffer"][:10]
    with pytest.raises(CheckpointError, match="momentum buffer has 10 elements"):
        b.load_state_dict(state)
    with pytest.raises(CheckpointError, match="lacks 'steps'"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "steps"})


def test_first_step_uses_gradient_as_buffer_with_dampening():
    # torch semantics: buf = g on the first step, dampened only later
    opt = make_optimizer({"lr": 1.0, "momentum": 0.5, "dampening": 0.5}, 1)
    p = np.zeros(1, np.float32)
    opt.step(p, np.ones(1, np.float32))
    assert p[0] == -1.0
    opt.step(p, np.ones(1, np.float32))
    assert p[0] == -2.0  # buf = 0.5 * 1 + 0.5 * 1


def test_grad_float64_and_shape_checks():
    opt = make_optimizer({"lr": 0.5}, 3)
    p = np.ones(3, np.float32)
    opt.step(p, np.ones(3, np.float64))
    np.testing.assert_array_equal(p, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError):
        opt.step(p, np.ones(4, np.float32))
    with pytest.raises(ValueError):
        opt.step(np.ones(3, np.float64), np.ones(3, np.float32))


def test_defaults_and_lr_setter():
    cfg = validate_optimizer_config({})
    assert cfg == {"name": "sgd", "lr": 0.01, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                   "weight_decay": 0.0}
    opt = make_optimizer({"lr": 1}, 10)
    assert isinstance(opt, SGD) and isinstance(opt, Optimizer) and opt.lr == 1.0
    assert opt.momentum_buffer.size == 0
    opt.lr = 0.25
    assert opt.lr == 0.25 and opt.state_dict()["lr"] == 0.25
    with pytest.raises(ConfigError, match="optimizer.lr"):
        opt.lr = -1


@pytest.mark.parametrize("cfg,message", [
    ({"name": "adamw"}, "optimizer.name: unknown optimizer 'adamw'; known: sgd"),
    ({"name": 3}, "optimizer.name: unknown optimizer 3"),
    ({"lr": 0.1, "momentun": 0.9}, "optimizer: unknown key 'momentun' for sgd; valid keys: dampening, lr, momentum, name, nesterov, weight_decay"),
    ({"lr": 0}, r"optimizer.lr must be > 0.0"),
    ({"lr": -0.1}, r"optimizer.lr must be > 0.0"),
    ({"lr": "0.1"}, r"optimizer.lr must be a finite number"),
    ({"lr": float("nan")}, r"optimizer.lr must be a finite number"),
    ({"lr": True}, r"optimizer.lr must be a finite number"),
    ({"momentum": -0.5}, r"optimizer.momentum must be >= 0.0"),
    ({"dampening": 2.0}, r"optimizer.dampening must be >= 0.0 and <= 1.0"),
    ({"weight_decay": -1e-4}, r"optimizer.weight_decay must be >= 0.0"),
    ({"nesterov": "yes"}, r"optimizer.nesterov must be true or false"),
    ({"nesterov": True}, r"optimizer.nesterov needs momentum > 0"),
    ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, r"optimizer.nesterov needs momentum > 0 and dampening = 0"),
    ([("lr", 0.1)], "must be a table"),
])
def test_bad_optimizer_config(cfg, message):
    with pytest.raises(ConfigError, match=message):
        validate_optimizer_config(cfg)
    with pytest.raises(ConfigError, match=message):
        make_optimizer(cfg, 10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_step_from_a_float64_sum_with_scale_equals_step_from_the_mean(nesterov):
    """The master steps from its float64 gradient sum and 1/samples."""
    rng = np.random.default_rng(3)
    n = 257
    p0 = rng.standard_normal(n).astype(np.float32)
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 1e-3}
    a, b = make_optimizer(cfg, n), make_optimizer(cfg, n)
    pa, pb = p0.copy(), p0.copy()
    for _ in range(3):
        total = rng.standard_normal(n) * 64.0
        a.step(pa, (total / 64.0).astype(np.float32))
        b.step(pb, total, scale=1.0 / 64.0)
        np.testing.assert_allclose(pb, pa, rtol=1e-6, atol=1e-7)
