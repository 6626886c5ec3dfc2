"""Learning-rate schedules: torch.optim.lr_scheduler parity, purity, config validation.

torch steps its schedulers in Python floats (float64), some recursively
(lr *= gamma), ours in closed form: they agree to ``rtol = 1e-12``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from raven_hpc.config import load_config
from raven_hpc.engine import SCHEDULES, Schedule, make_optimizer, make_schedule, validate_optimizer_config
from raven_hpc.errors import ConfigError

TOTAL = 300
LR = 0.1


def torch_lrs(torch, main, steps, warmup=0, start_factor=1.0 / 3.0):
    """The lr torch uses at each of ``steps`` optimizer steps."""
    L = torch.optim.lr_scheduler
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's internal step(0) is deprecated API
        if warmup:
            first = L.LinearLR(opt, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
            sched = L.SequentialLR(opt, [first, main(opt, L)], milestones=[warmup])
        else:
            sched = main(opt, L)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.array(out)


# (our keys, torch's scheduler given the decay length T)
CASES = {
    "constant": ({}, lambda T: lambda o, L: L.ConstantLR(o, factor=1.0, total_iters=0)),
    "step": ({"step_size": 30, "gamma": 0.5}, lambda T: lambda o, L: L.StepLR(o, step_size=30, gamma=0.5)),
    "step-default-gamma": ({"step_size": 7}, lambda T: lambda o, L: L.StepLR(o, step_size=7)),
    "multistep": ({"milestones": [40, 100, 101], "gamma": 0.3},
                  lambda T: lambda o, L: L.MultiStepLR(o, milestones=[40, 100, 101], gamma=0.3)),
    "exponential": ({"gamma": 0.99}, lambda T: lambda o, L: L.ExponentialLR(o, gamma=0.99)),
    "cosine": ({}, lambda T: lambda o, L: L.CosineAnnealingLR(o, T_max=T)),
    "cosine-min": ({"min_lr": 1e-3}, lambda T: lambda o, L: L.CosineAnnealingLR(o, T_max=T, eta_min=1e-3)),
    "linear": ({}, lambda T: lambda o, L: L.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=T)),
    "linear-min": ({"min_lr": 0.02},
                   lambda T: lambda o, L: L.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=T)),
}


@pytest.mark.parametrize("warmup,start_factor", [(0, None), (50, 0.1), (1, 0.5), (20, None)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_matches_torch(case, warmup, start_factor, torch):
    keys, main = CASES[case]
    cfg = {"name": "sgd", "lr": LR, "schedule": case.split("-")[0], **keys}
    if warmup:
        cfg["warmup_steps"] = warmup
    if start_factor is not None:
        cfg["warmup_start_factor"] = start_factor
    sched = make_schedule(cfg, TOTAL)
    ours = np.array([sched.lr_at(s) for s in range(TOTAL)])
    ref = torch_lrs(torch, main(TOTAL - warmup), TOTAL, warmup,
                    1.0 / 3.0 if start_factor is None else start_factor)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_lr_at_is_pure_and_resumable():
    sched = make_schedule({"name": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 10}, 100)
    forward = [sched.lr_at(s) for s in range(100)]
    backward = [sched.lr_at(s) for s in reversed(range(100))][::-1]
    assert forward == backward
    # a "resumed" run rebuilds the schedule and asks for step 37 first
    again = make_schedule({"name": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 10}, 100)
    assert [again.lr_at(s) for s in range(37, 100)] == forward[37:]
    assert again == sched and hash(again) == hash(sched)


def test_shapes_of_the_curves():
    cos = make_schedule({"lr": 1.0, "schedule": "cosine", "min_lr": 0.1, "warmup_steps": 4,
                         "warmup_start_factor": 0.0}, 14)
    assert cos.decay_steps == 10
    assert [cos.lr_at(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cos.lr_at(9) == pytest.approx(0.55)  # half way down
    assert cos.lr_at(14) == cos.lr_at(1000) == pytest.approx(0.1)  # stays at min_lr past the end
    lin = make_schedule({"lr": 1.0, "schedule": "linear"}, 4)
    assert [lin.lr_at(s) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    const = make_schedule({"lr": 0.5, "warmup_steps": 2, "warmup_start_factor": 0.5})
    assert [const.lr_at(s) for s in range(4)] == [0.25, 0.375, 0.5, 0.5]
    step = make_schedule({"lr": 1.0, "schedule": "step", "step_size": 2, "gamma": 0.5, "warmup_steps": 1,
                          "warmup_start_factor": 1.0})
    assert [step.lr_at(s) for s in range(6)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="non-negative integer"):
        step.lr_at(-1)
    with pytest.raises(ValueError, match="non-negative integer"):
        step.lr_at(1.5)


def test_schedule_drives_the_optimizer_like_torch(torch):
    """The master's use: opt.step(..., lr=schedule.lr_at(step)) vs AdamW + SequentialLR."""
    n, total, warmup = 300, 40, 8
    cfg = {"name": "adamw", "lr": 1e-2, "schedule": "cosine", "min_lr": 1e-4, "warmup_steps": warmup,
           "warmup_start_factor": 0.2}
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.AdamW([tp], lr=1e-2)
    L = torch.optim.lr_scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = L.SequentialLR(topt, [L.LinearLR(topt, start_factor=0.2, total_iters=warmup),
                                       L.CosineAnnealingLR(topt, T_max=total - warmup, eta_min=1e-4)],
                                milestones=[warmup])
        opt, sched = make_optimizer(cfg, n), make_schedule(cfg, total)
        for step in range(total):
            g = rng.standard_normal(n).astype(np.float32)
            opt.step(p, g, lr=sched.lr_at(step))
            tp.grad = torch.from_numpy(g.copy())
            topt.step()
            tsched.step()
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {step}")


def test_validated_keys_and_defaults():
    common = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
              "weight_decay": 0.0, "clip_norm": 0.0}
    warm = {"warmup_steps": 0, "warmup_start_factor": 1.0 / 3.0}
    v = validate_optimizer_config
    assert v({"lr": 0.1, "schedule": "step", "step_size": 5}) == {
        **common, "schedule": "step", "step_size": 5, "gamma": 0.1, **warm}
    assert v({"lr": 0.1, "schedule": "multistep", "milestones": [3, 9]}) == {
        **common, "schedule": "multistep", "milestones": [3, 9], "gamma": 0.1, **warm}
    assert v({"lr": 0.1, "schedule": "cosine", "warmup_steps": 3}) == {
        **common, "schedule": "cosine", "min_lr": 0.0, "warmup_steps": 3, "warmup_start_factor": 1.0 / 3.0}
    assert v({"lr": 0.1, "schedule": "exponential", "gamma": 1}) == {
        **common, "schedule": "exponential", "gamma": 1.0, **warm}
    assert set(SCHEDULES) == {"constant", "step", "multistep", "exponential", "cosine", "linear"}
    assert isinstance(make_schedule({"lr": 0.1}), Schedule)


@pytest.mark.parametrize("cfg,message", [
    ({"schedule": 1}, "optimizer.schedule: unknown schedule 1; known: constant, step, multistep, exponential, "
                      "cosine, linear"),
    ({"schedule": "cosine", "gamma": 0.5}, "optimizer.gamma is not used by schedule 'cosine' "
                                           r"\(only by step, multistep, exponential\); keys of 'cosine': min_lr, "
                                           "warmup_steps, warmup_start_factor"),
    ({"step_size": 10}, "optimizer.step_size is not used by schedule 'constant'"),
    ({"schedule": "step", "min_lr": 0.0}, "optimizer.min_lr is not used by schedule 'step'"),
    ({"schedule": "step"}, "optimizer.step_size is required by schedule 'step'"),
    ({"schedule": "multistep"}, "optimizer.milestones is required by schedule 'multistep'"),
    ({"schedule": "exponential"}, "optimizer.gamma is required by schedule 'exponential'"),
    ({"schedule": "step", "step_size": 2.5}, "optimizer.step_size must be an integer, got 2.5"),
    ({"schedule": "step", "step_size": "10"}, "optimizer.step_size must be an integer, got '10'"),
    ({"schedule": "step", "step_size": True}, "optimizer.step_size must be an integer, got True"),
    ({"schedule": "step", "step_size": 0}, "optimizer.step_size must be >= 1, got 0"),
    ({"schedule": "step", "step_size": 5, "gamma": 0}, "optimizer.gamma must be > 0 and <= 1, got 0.0"),
    ({"schedule": "step", "step_size": 5, "gamma": 1.5}, "optimizer.gamma must be > 0 and <= 1, got 1.5"),
    ({"schedule": "exponential", "gamma": "0.9"}, "optimizer.gamma must be a finite number, got '0.9'"),
    ({"schedule": "multistep", "milestones": []}, "optimizer.milestones must be a non-empty list of integers"),
    ({"schedule": "multistep", "milestones": 30}, "optimizer.milestones must be a non-empty list of integers"),
    ({"schedule": "multistep", "milestones": [30, 20]}, "optimizer.milestones must be increasing steps >= 1"),
    ({"schedule": "multistep", "milestones": [0, 20]}, "optimizer.milestones must be increasing steps >= 1"),
    ({"schedule": "multistep", "milestones": [10, 20.0]}, "optimizer.milestones must be a non-empty list of int"),
    ({"schedule": "cosine", "min_lr": 0.2}, r"optimizer.min_lr must be >= 0 and <= 0.1, got 0.2"),
    ({"schedule": "linear", "min_lr": -1e-5}, r"optimizer.min_lr must be >= 0 and <= 0.1"),
    ({"schedule": "linear", "min_lr": float("inf")}, r"optimizer.min_lr must be a finite number"),
    ({"warmup_steps": -1}, "optimizer.warmup_steps must be >= 0, got -1"),
    ({"warmup_steps": 1.0}, "optimizer.warmup_steps must be an integer, got 1.0"),
    ({"warmup_start_factor": 1.5}, "optimizer.warmup_start_factor must be >= 0 and <= 1, got 1.5"),
    ({"warmup_start_factor": None}, "optimizer.warmup_start_factor must be a finite number, got None"),
])
def test_bad_schedule_config(cfg, message):
    cfg = {"lr": 0.1, **cfg}
    with pytest.raises(ConfigError, match=message):
        validate_optimizer_config(cfg)
    with pytest.raises(ConfigError, match=message):
        make_schedule(cfg, 100)


def test_make_schedule_needs_steps_to_decay_over():
    cfg = {"name": "adam", "schedule": "cosine", "warmup_steps": 100}
    with pytest.raises(ConfigError, match="schedule 'cosine' needs the run's total number of steps"):
        make_schedule(cfg)
    with pytest.raises(ConfigError, match="warmup_steps = 100 leaves no step for schedule 'cosine' to decay over: "
                                          "the run has 100 steps; lower warmup_steps"):
        make_schedule(cfg, 100)
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        make_schedule({"schedule": "linear"}, 0)
    assert make_schedule(cfg, 101).decay_steps == 1
    # the optimizer's own default lr is the peak when the table has none
    assert make_schedule({"name": "adam"}).lr_at(5) == 1e-3
    # schedules that do not decay over the run need no total
    assert make_schedule({"schedule": "step", "step_size": 3, "warmup_steps": 100}).lr_at(103) == pytest.approx(1e-3)


def test_schedule_keys_through_the_config_file(tmp_path):
    text = """
[data]
path = "d.h5"
[model]
layers = [{type = "dense", units = 10}]
[optimizer]
name = "adamw"
lr = 3e-3
schedule = "cosine"
min_lr = 1e-5
warmup_steps = 10
warmup_start_factor = 0.1
clip_norm = 1.0
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load_config(path, environ={})
    norm = validate_optimizer_config(cfg["optimizer"])
    assert norm["clip_norm"] == 1.0 and norm["warmup_steps"] == 10 and norm["weight_decay"] == 0.01
    sched = make_schedule(cfg["optimizer"], 110)
    assert sched.lr_at(0) == pytest.approx(3e-4) and sched.lr_at(10) == pytest.approx(3e-3)
    assert sched.lr_at(110) == pytest.approx(1e-5)
    assert make_optimizer(cfg["optimizer"], 5).clip_norm == 1.0
    # a command-line override with a key the schedule does not use
    cfg = load_config(path, ["optimizer.gamma=0.5"], environ={})
    with pytest.raises(ConfigError, match="optimizer.gamma is not used by schedule 'cosine'"):
        validate_optimizer_config(cfg["optimizer"])
    cfg = load_config(path, ["optimizer.schedule=step", "optimizer.step_size=5", "optimizer.min_lr=0"], environ={})
    with pytest.raises(ConfigError, match="optimizer.min_lr is not used by schedule 'step'"):
        validate_optimizer_config(cfg["optimizer"])
    step = make_schedule({k: v for k, v in cfg["optimizer"].items() if k != "min_lr"})
    assert step.kind == "step" and step.warmup_steps == 10  # step_size counts from the end of warmup
    assert step.lr_at(14) == pytest.approx(3e-3) and step.lr_at(15) == pytest.approx(3e-4)
