"""Optimizers and clipping: torch.optim equivalence, state round trip, config validation.

Tolerances: parameters are float32; torch computes every intermediate in
float32 while the kernels compute in float64 and round once per stored
value, so trajectories agree to float32 round-off accumulated over the
steps: ``rtol = atol = 1e-5`` on parameters and state after 20 steps (a
wrong formula -- a missing bias correction, coupled instead of decoupled
decay, a dropped ``scale`` -- moves them by 1e-3 or more).  The kernels'
float64 runs are checked in ``tests/unit/kernels/test_optim.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from raven_hpc.checkpoint import load_checkpoint, save_checkpoint
from raven_hpc.engine import (
    OPTIMIZERS,
    SGD,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    clip_scale,
    grad_norm,
    make_optimizer,
    validate_optimizer_config,
)
from raven_hpc.errors import CheckpointError, ConfigError
from raven_hpc.kernels import get_kernel


RTOL = ATOL = 1e-5

STEPS = 20

CONFIGS = [
    {"name": "sgd", "lr": 0.1},
    {"name": "sgd", "lr": 0.05, "weight_decay": 1e-2},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "sgd", "lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 5e-4},
    {"name": "sgd", "lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-3},
    {"name": "adam", "lr": 1e-2},
    {"name": "adam", "lr": 1e-2, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 1e-2},
    {"name": "adam", "lr": 1e-2, "amsgrad": True},
    {"name": "adam", "lr": 5e-3, "amsgrad": True, "weight_decay": 1e-3, "betas": [0.5, 0.9]},
    {"name": "adamw", "lr": 1e-2},
    {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1, "amsgrad": True},
    {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0, "eps": 1e-4},
    {"name": "rmsprop", "lr": 1e-3},
    {"name": "rmsprop", "lr": 1e-3, "alpha": 0.9, "weight_decay": 1e-2},
    {"name": "rmsprop", "lr": 1e-3, "momentum": 0.9},
    {"name": "rmsprop", "lr": 1e-3, "centered": True},
    {"name": "rmsprop", "lr": 1e-3, "centered": True, "momentum": 0.5, "weight_decay": 1e-3, "eps": 1e-6},
]

TORCH_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}

# our state array -> torch's state key
TORCH_STATE = {"momentum_buffer": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
               "max_exp_avg_sq": "max_exp_avg_sq", "square_avg": "square_avg", "grad_avg": "grad_avg"}


def cfg_id(cfg):
    return ",".join([cfg["name"]] + [f"{k}={v}" for k, v in cfg.items() if k not in ("name", "lr")])


def torch_optimizer(torch, cfg, param):
    kw = {k: (tuple(v) if k == "betas" else v) for k, v in cfg.items()
          if k not in ("name", "clip_norm", "schedule", "warmup_steps", "warmup_start_factor")}
    return getattr(torch.optim, TORCH_NAMES[cfg["name"]])([param], **kw)


def compare_state(opt, topt, tp, step):
    tstate = topt.state[tp]
    for ours in opt.BUFFERS:
        arr = getattr(opt, ours)
        if arr.size == 0:
            continue
        ref = tstate[TORCH_STATE[ours]].numpy()
        scale = max(1e-12, float(np.abs(ref).max()))
        np.testing.assert_allclose(arr / scale, ref / scale, rtol=RTOL, atol=ATOL, err_msg=f"{ours}, step {step}")


@pytest.mark.parametrize("grad_kind", ["float32", "float64-sum"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_optimizer_matches_torch(cfg, grad_kind, torch):
    """20 steps with random gradients; an lr override from step 10 on both sides.

    ``float64-sum``: the master's path, a float64 sum over 64 samples with
    ``scale = 1/64``; torch steps from the float32 mean.
    """
    rng = np.random.default_rng(0)
    n = 1003  # not a multiple of a vector width
    p = rng.standard_normal(n).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch_optimizer(torch, cfg, tp)
    opt = make_optimizer(cfg, n)
    for step in range(STEPS):
        lr = None
        if step >= 10:  # a schedule halving the rate
            lr = cfg["lr"] / 2
            for group in topt.param_groups:
                group["lr"] = lr
        if grad_kind == "float32":
            g = rng.standard_normal(n).astype(np.float32)
            opt.step(p, g, lr=lr)
            tg = g.copy()
        else:
            total = rng.standard_normal(n) * 64.0
            opt.step(p, total, scale=1.0 / 64, lr=lr)
            tg = (total * (1.0 / 64)).astype(np.float32)
        tp.grad = torch.from_numpy(tg)
        topt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"step {step}")
        compare_state(opt, topt, tp, step)
    assert opt.steps == STEPS
    assert opt.lr == cfg["lr"] and opt.last_lr == cfg["lr"] / 2  # the override is for its step only


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_lr_override_is_one_step_only(name):
    rng = np.random.default_rng(5)
    n = 64
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    cfg = {"name": name, "lr": 0.01}
    a, b = make_optimizer(cfg, n), make_optimizer({"name": name, "lr": 0.5}, n)
    pa, pb = p0.copy(), p0.copy()
    for g in grads:
        a.step(pa, g)
        b.step(pb, g, lr=0.01)
    assert pa.tobytes() == pb.tobytes()
    assert b.lr == 0.5 and b.last_lr == 0.01
    for bad in (-1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            b.step(pb, grads[0], lr=bad)
    assert b.steps == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 4096])
def test_grad_norm_matches_numpy(dtype, n):
    g = np.random.default_rng(n).standard_normal(n).astype(dtype)
    ref = math.sqrt(float(np.sum((g.astype(np.float64) * 0.25) ** 2)))
    assert grad_norm(g, 0.25) == pytest.approx(ref, rel=1e-13, abs=0.0)
    assert get_kernel("sum_squares")(g, 0.25) == pytest.approx(ref * ref, rel=1e-13, abs=0.0)


@pytest.mark.parametrize("multiplier", [1e-3, 0.1, 1.0, 10.0])
def test_clip_scale_matches_clip_grad_norm(multiplier, torch):
    rng = np.random.default_rng(2)
    total = rng.standard_normal(5000) * 32.0 * multiplier  # a float64 sum over 32 samples
    scale, max_norm = 1.0 / 32, 1.0
    tg = torch.from_numpy((total * scale).astype(np.float32))
    tp = torch.zeros_like(tg, requires_grad=True)
    tp.grad = tg.clone()
    tnorm = float(torch.nn.utils.clip_grad_norm_([tp], max_norm))
    new = clip_scale(total, scale, max_norm)
    assert grad_norm(total, scale) == pytest.approx(tnorm, rel=1e-6)
    np.testing.assert_allclose(total * new, tp.grad.numpy(), rtol=1e-6, atol=1e-9)
    clipped = math.sqrt(float(np.sum((total * new) ** 2)))
    if tnorm > max_norm:
        assert new < scale and clipped == pytest.approx(max_norm, rel=1e-5)
    else:
        assert new == scale


def test_clip_scale_rejects_bad_input():
    with pytest.raises(FloatingPointError, match="gradient norm is nan"):
        clip_scale(np.array([1.0, np.nan]), 1.0, 1.0)
    with pytest.raises(FloatingPointError, match="gradient norm is inf"):
        clip_scale(np.array([np.inf], np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        clip_scale(np.ones(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="1-D float32/float64"):
        grad_norm(np.ones((2, 2)))


@pytest.mark.parametrize("cfg", [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "clip_norm": 3.0},
    {"name": "adamw", "lr": 1e-2, "clip_norm": 3.0},
    {"name": "rmsprop", "lr": 1e-3, "centered": True, "clip_norm": 3.0},
], ids=cfg_id)
def test_step_with_clip_norm_matches_torch(cfg, torch):
    """clip_grad_norm_ then step, in torch; norms from 0.3 to 30 so some steps clip."""
    rng = np.random.default_rng(4)
    n = 1000
    p = rng.standard_normal(n).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch_optimizer(torch, cfg, tp)
    opt = make_optimizer(cfg, n)
    assert opt.clip_norm == 3.0 and opt.last_grad_norm is None
    clipped = 0
    for step in range(STEPS):
        total = rng.standard_normal(n) * 16.0 * 10.0 ** rng.uniform(-2, 0)
        opt.step(p, total, scale=1.0 / 16)
        tp.grad = torch.from_numpy((total / 16).astype(np.float32))
        tnorm = float(torch.nn.utils.clip_grad_norm_([tp], cfg["clip_norm"]))
        topt.step()
        assert opt.last_grad_norm == pytest.approx(tnorm, rel=1e-6)
        clipped += tnorm > cfg["clip_norm"]
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"step {step}")
    assert 0 < clipped < STEPS


def test_clipping_off_by_default():
    opt = make_optimizer({"name": "adam"}, 4)
    assert opt.clip_norm is None and opt.config["clip_norm"] == 0.0
    opt.step(np.zeros(4, np.float32), np.full(4, 1e6))
    assert opt.last_grad_norm is None


ROUND_TRIP = [
    {"name": "sgd", "lr": 0.1},  # no momentum: an empty buffer
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"name": "adam", "lr": 1e-2, "amsgrad": True, "betas": [0.8, 0.95]},
    {"name": "adamw", "lr": 1e-2, "clip_norm": 1.0, "schedule": "cosine"},
    {"name": "rmsprop", "lr": 1e-3, "centered": True, "momentum": 0.9},
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=cfg_id)
def test_state_round_trips_through_a_checkpoint(cfg, tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    grads = [rng.standard_normal(n) * 8.0 for _ in range(8)]
    p_a = rng.standard_normal(n).astype(np.float32)
    a = make_optimizer(cfg, n)
    for g in grads[:4]:
        a.step(p_a, g, scale=0.125, lr=a.lr * 0.5)
    state = a.state_dict()
    assert state["name"] == cfg["name"] and state["steps"] == 4
    assert all(isinstance(v, (np.ndarray, float, int, str)) and not isinstance(v, bool) for v in state.values())
    path = save_checkpoint(tmp_path / "checkpoint.h5", params=p_a, param_info=[("w", (n,), 0)],
                           optimizer_state=state, train_state={"step": 4}, config={"optimizer": cfg},
                           model_spec={})
    ck = load_checkpoint(path)
    loaded = ck["optimizer_state"]
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            assert loaded[k].dtype == v.dtype and loaded[k].tobytes() == v.tobytes(), k
        else:
            assert loaded[k] == v, k
    # a fresh optimizer from other hyper-parameters: the checkpoint's come back
    other = {**cfg, "lr": 0.5}
    b = make_optimizer(other, n)
    b.load_state_dict(loaded)
    assert b.config == {**a.config} and b.steps == 4
    p_b = ck["params"].copy()
    for g in grads[4:]:
        a.step(p_a, g, scale=0.125, lr=a.lr * 0.5)
        b.step(p_b, g, scale=0.125, lr=b.lr * 0.5)
    assert p_a.tobytes() == p_b.tobytes()


def test_load_state_dict_errors():
    n = 10
    a = make_optimizer({"name": "adam", "amsgrad": True}, n)
    good = a.state_dict()
    with pytest.raises(CheckpointError, match="holds 'adam' optimizer state but \\[optimizer\\] name is 'sgd'"):
        make_optimizer({"name": "sgd"}, n).load_state_dict(good)
    with pytest.raises(CheckpointError, match="lacks 'steps'"):
        a.load_state_dict({k: v for k, v in good.items() if k != "steps"})
    with pytest.raises(CheckpointError, match="lacks 'max_exp_avg_sq'"):
        a.load_state_dict({k: v for k, v in good.items() if k != "max_exp_avg_sq"})
    with pytest.raises(CheckpointError, match="exp avg sq has 3 elements, expected 10"):
        a.load_state_dict({**good, "exp_avg_sq": good["exp_avg_sq"][:3]})
    with pytest.raises(CheckpointError, match="max exp avg sq has 10 elements, expected 0"):
        a.load_state_dict({**good, "amsgrad": 0})
    with pytest.raises(CheckpointError, match="optimizer state is invalid: optimizer.betas"):
        a.load_state_dict({**good, "betas": np.array([0.9, 1.0])})
    with pytest.raises(CheckpointError, match="steps = -1"):
        a.load_state_dict({**good, "steps": -1})
    a.load_state_dict(good)  # still loads after the failures, unchanged
    assert a.config["amsgrad"] is True and a.config["betas"] == (0.9, 0.999)


def test_sgd_state_without_name_still_loads():
    """An optimizer state without a ``name`` entry loads: the name is optional."""
    a = make_optimizer({"name": "sgd", "momentum": 0.9}, 5)
    state = a.state_dict()
    del state["name"]
    make_optimizer({"name": "sgd", "momentum": 0.9}, 5).load_state_dict(state)


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
    with pytest.raises(ValueError):
        opt.step(p, np.ones(3, np.int64))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_from_a_float64_sum_with_scale_equals_step_from_the_mean(name):
    """The master steps from its float64 gradient sum and 1/samples."""
    rng = np.random.default_rng(3)
    n = 257
    p0 = rng.standard_normal(n).astype(np.float32)
    cfg = {"name": name, "weight_decay": 1e-3}
    a, b = make_optimizer(cfg, n), make_optimizer(cfg, n)
    pa, pb = p0.copy(), p0.copy()
    for _ in range(3):
        total = rng.standard_normal(n) * 64.0
        a.step(pa, total / 64.0)
        b.step(pb, total, scale=1.0 / 64.0)
        np.testing.assert_allclose(pb, pa, rtol=1e-6, atol=1e-7)


def test_defaults_and_lr_setter():
    common = {"clip_norm": 0.0, "schedule": "constant", "warmup_steps": 0, "warmup_start_factor": 1.0 / 3.0}
    assert validate_optimizer_config({}) == {
        "name": "sgd", "lr": 0.01, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0,
        **common}
    assert validate_optimizer_config({"name": "adam"}) == {
        "name": "adam", "lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
        **common}
    assert validate_optimizer_config({"name": "adamw", "betas": [0.5, 0.6]})["weight_decay"] == 0.01
    assert validate_optimizer_config({"name": "rmsprop"}) == {
        "name": "rmsprop", "lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False,
        "weight_decay": 0.0, **common}
    opt = make_optimizer({"lr": 1}, 10)
    assert isinstance(opt, SGD) and isinstance(opt, Optimizer) and opt.lr == 1.0
    assert opt.momentum_buffer.size == 0
    opt.lr = 0.25
    assert opt.lr == 0.25 and opt.state_dict()["lr"] == 0.25
    with pytest.raises(ConfigError, match="optimizer.lr"):
        opt.lr = -1


@pytest.mark.parametrize("cfg,cls,sizes", [
    ({"name": "adam"}, Adam, {"exp_avg": 7, "exp_avg_sq": 7, "max_exp_avg_sq": 0}),
    ({"name": "adamw", "amsgrad": True}, AdamW, {"exp_avg": 7, "exp_avg_sq": 7, "max_exp_avg_sq": 7}),
    ({"name": "rmsprop"}, RMSprop, {"square_avg": 7, "grad_avg": 0, "momentum_buffer": 0}),
    ({"name": "rmsprop", "centered": True, "momentum": 0.1}, RMSprop,
     {"square_avg": 7, "grad_avg": 7, "momentum_buffer": 7}),
])
def test_state_is_allocated_only_where_used(cfg, cls, sizes):
    opt = make_optimizer(cfg, 7)
    assert type(opt) is cls
    assert {b: getattr(opt, b).size for b in opt.BUFFERS} == sizes
    assert all(getattr(opt, b).dtype == np.float32 for b in opt.BUFFERS)


SGD_KEYS = ("clip_norm, dampening, gamma, lr, milestones, min_lr, momentum, name, nesterov, schedule, step_size, "
            "warmup_start_factor, warmup_steps, weight_decay")


@pytest.mark.parametrize("cfg,message", [
    ({"name": "adamx"}, "optimizer.name: unknown optimizer 'adamx'; known: adam, adamw, rmsprop, sgd"),
    ({"name": 3}, "optimizer.name: unknown optimizer 3"),
    ({"lr": 0.1, "momentun": 0.9}, f"optimizer: unknown key 'momentun' for sgd; valid keys: {SGD_KEYS}"),
    ({"name": "adam", "momentum": 0.9}, "optimizer: unknown key 'momentum' for adam; valid keys: amsgrad, betas, "),
    ({"lr": 0}, r"optimizer.lr must be > 0.0"),
    ({"lr": -0.1}, r"optimizer.lr must be > 0.0"),
    ({"name": "adam", "lr": -1e-3}, r"optimizer.lr must be > 0.0"),
    ({"lr": "0.1"}, r"optimizer.lr must be a finite number"),
    ({"lr": float("nan")}, r"optimizer.lr must be a finite number"),
    ({"lr": True}, r"optimizer.lr must be a finite number"),
    ({"momentum": -0.5}, r"optimizer.momentum must be >= 0.0"),
    ({"dampening": 2.0}, r"optimizer.dampening must be >= 0.0 and <= 1.0"),
    ({"weight_decay": -1e-4}, r"optimizer.weight_decay must be >= 0.0"),
    ({"nesterov": "yes"}, r"optimizer.nesterov must be true or false"),
    ({"nesterov": True}, r"optimizer.nesterov needs momentum > 0"),
    ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, r"optimizer.nesterov needs momentum > 0 and dampening = 0"),
    ({"name": "adam", "betas": [0.9, 1.0]}, r"optimizer.betas\[1\] must be >= 0.0 and < 1.0, got 1.0"),
    ({"name": "adamw", "betas": [-0.1, 0.9]}, r"optimizer.betas\[0\] must be >= 0.0 and < 1.0"),
    ({"name": "adam", "betas": [0.9]}, r"optimizer.betas must be two numbers \[beta1, beta2\], got \[0.9\]"),
    ({"name": "adam", "betas": 0.9}, r"optimizer.betas must be two numbers"),
    ({"name": "adam", "betas": ["0.9", 0.99]}, r"optimizer.betas\[0\] must be a finite number"),
    ({"name": "adam", "eps": 0.0}, r"optimizer.eps must be > 0.0"),
    ({"name": "adam", "amsgrad": 1}, r"optimizer.amsgrad must be true or false"),
    ({"name": "rmsprop", "alpha": 1.0}, r"optimizer.alpha must be >= 0.0 and < 1.0"),
    ({"name": "rmsprop", "centered": "no"}, r"optimizer.centered must be true or false"),
    ({"name": "rmsprop", "momentum": -1}, r"optimizer.momentum must be >= 0.0"),
    ({"clip_norm": -1.0}, r"optimizer.clip_norm must be >= 0.0"),
    ({"name": "adam", "clip_norm": "1"}, r"optimizer.clip_norm must be a finite number"),
    ({"schedule": "cosin"}, r"optimizer.schedule: unknown schedule 'cosin'; known: constant, step, multistep"),
    ([("lr", 0.1)], "must be a table"),
])
def test_bad_optimizer_config(cfg, message):
    with pytest.raises(ConfigError, match=message):
        validate_optimizer_config(cfg)
    with pytest.raises(ConfigError, match=message):
        make_optimizer(cfg, 10)


BN_SPEC = {"layers": [{"type": "dense", "units": 8}, {"type": "batchnorm"},
                      {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 3}], "seed": 2}


def _bn_batches(steps=5, n=16):
    rng = np.random.default_rng(0)
    return [(10 * rng.random((n, 5), dtype=np.float32), rng.integers(0, 3, n)) for _ in range(steps)]


def test_step_refuses_the_whole_parameter_vector_of_a_model_with_state():
    """Stepping Model.params of a batch-norm model would turn its running
    statistics into garbage (NaN in evaluation): refused, nothing changed."""
    from raven_hpc.engine import build_model

    m = build_model(BN_SPEC, (5,), 3)
    opt = make_optimizer({"name": "sgd", "lr": 0.1}, m.num_params)   # the wrong size, but it fits the vector
    before = m.params.copy()
    x, y = _bn_batches(1)[0]
    m.loss_and_grad(x, y, accumulate=False)
    with pytest.raises(ValueError, match=r"whole Model\.params vector: .*num_trainable.*model\.apply_gradient"):
        opt.step(m.params, m.grads, scale=1.0 / len(y))
    np.testing.assert_array_equal(m.params, before)
    # a model built for the trainable part refuses a vector of the wrong length, naming num_trainable
    opt = make_optimizer({"name": "sgd", "lr": 0.1}, m)
    assert opt.num_params == m.num_trainable < m.num_params
    with pytest.raises(ValueError, match=rf"array of {m.num_trainable} elements; got {m.num_params} .*num_trainable"):
        opt.step(m.params.copy(), m.grads)
    with pytest.raises(ValueError, match=rf"num_trainable = {m.num_trainable}"):
        m.apply_gradient(make_optimizer({"name": "sgd"}, m.num_params), m.grads, len(y))
    # a model without state: its whole vector is its trainable part, stepping it is fine
    plain = build_model({"layers": [{"type": "dense", "units": 3}]}, (5,), 3)
    plain.loss_and_grad(x, y, accumulate=False)
    make_optimizer({"name": "sgd"}, plain.num_params).step(plain.params, plain.grads)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_apply_gradient_is_the_masters_update(name):
    """model.apply_gradient = the optimizer on the trainable part + update_state
    on the statistics, as protocol.master applies a step; the running
    statistics stay finite and evaluation works."""
    from raven_hpc.engine import build_model

    cfg = {"name": name, "lr": 0.05}
    a, b = build_model(BN_SPEC, (5,), 3), build_model(BN_SPEC, (5,), 3)
    oa, ob = make_optimizer(cfg, a), make_optimizer(cfg, b.num_trainable)
    nt = b.num_trainable
    for i, (x, y) in enumerate(_bn_batches()):
        acc = np.zeros(a.num_params, np.float64)   # a float64 sum over two tasks, as the master keeps
        for lo, hi in ((0, 8), (8, 16)):
            a.loss_and_grad(x[lo:hi], y[lo:hi], accumulate=False)
            acc += a.grads
        a.apply_gradient(oa, acc, len(y), lr=0.05 / (i + 1))
        ob.step(b.params[:nt], acc[:nt], scale=1.0 / len(y), lr=0.05 / (i + 1))
        b.update_state(b.params, acc[nt:], len(y))
        np.testing.assert_array_equal(a.params, b.params)
    rv = a.param("batchnorm_1.running_var")
    assert np.isfinite(a.params).all() and (rv > 0).all()
    x, y = _bn_batches(1)[0]
    assert np.isfinite(a.evaluate(x, y)[0])
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        a.apply_gradient(oa, acc, 0)
    with pytest.raises(ValueError, match=rf"grad_sum must be a flat float32/float64 vector of {a.num_params}"):
        a.apply_gradient(oa, acc[:nt], 16)
