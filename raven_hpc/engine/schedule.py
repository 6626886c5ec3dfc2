"""Learning-rate schedules, configured inside the ``[optimizer]`` table.

A schedule maps an optimizer step (0 for the first update) to a learning
rate.  It is pure and stateless: resuming from a checkpoint taken after
``s`` steps just asks for :meth:`Schedule.lr_at` ``(s)``; nothing about the
schedule needs saving.  The master builds one with
``make_schedule(cfg["optimizer"], total_steps)`` (``total_steps`` = epochs x
steps per epoch, or ``max_steps``; :func:`raven_hpc.engine.optim.make_schedule`
validates the whole ``[optimizer]`` table, then calls
:meth:`Schedule.from_config`) and passes ``lr=schedule.lr_at(step)`` to every
``Optimizer.step``.

Keys (all optional; ``lr`` is the optimizer's learning rate)::

    [optimizer]
    lr = 0.1
    schedule = "cosine"        # constant | step | multistep | exponential | cosine | linear
    min_lr = 0.0               # cosine, linear: lr reached at the last step
    warmup_steps = 500         # any schedule: linear warmup first
    warmup_start_factor = 0.1  # warmup starts at this fraction of lr

Schedules, with ``u = t - warmup_steps`` the step counted from the end of
the warmup and ``T = total_steps - warmup_steps``:

``constant``
    ``lr``.
``step``: ``step_size`` (required), ``gamma`` (0.1)
    ``lr * gamma ** (u // step_size)``.
``multistep``: ``milestones`` (required, increasing), ``gamma`` (0.1)
    ``lr * gamma ** (number of milestones <= u)``.
``exponential``: ``gamma`` (required)
    ``lr * gamma ** u``.
``cosine``: ``min_lr`` (0)
    ``min_lr + (lr - min_lr) * (1 + cos(pi * u / T)) / 2``.
``linear``: ``min_lr`` (0)
    ``lr + (min_lr - lr) * u / T``.

``cosine`` and ``linear`` stay at ``min_lr`` from ``u = T`` on (torch's
cosine would rise again).  Warmup (``warmup_steps`` W > 0, default 0;
``warmup_start_factor`` f in [0, 1], default 1/3 as in torch) runs before
any schedule: ``lr * (f + (1 - f) * t / W)`` for ``t < W``; the schedule
then starts from its own step 0 at ``t = W``.  Ranges: ``step_size`` >= 1,
``0 < gamma <= 1``, ``0 <= min_lr <= lr``, ``warmup_steps`` >= 0.

These match ``torch.optim.lr_scheduler``: ``StepLR``, ``MultiStepLR``,
``ExponentialLR``, ``CosineAnnealingLR(T_max=T, eta_min=min_lr)``,
``LinearLR(start_factor=1, end_factor=min_lr / lr, total_iters=T)``, and
warmup = ``LinearLR(start_factor=f, total_iters=W)`` followed by the schedule
through ``SequentialLR(milestones=[W])``.  Keys that the chosen schedule does
not use are rejected, so a typo such as ``gamma`` with ``cosine`` cannot go
unnoticed.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from raven_hpc.errors import ConfigError

from .validation import is_int

__all__ = [
    "SCHEDULES",
    "SCHEDULE_KEYS",
    "Schedule",
    "validate_schedule_config",
]

#: schedule name -> the keys it uses besides the warmup keys
SCHEDULES: Dict[str, Tuple[str, ...]] = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "multistep": ("milestones", "gamma"),
    "exponential": ("gamma",),
    "cosine": ("min_lr",),
    "linear": ("min_lr",),
}
_WARMUP_KEYS = ("warmup_steps", "warmup_start_factor")

#: every ``[optimizer]`` key that belongs to the schedule
SCHEDULE_KEYS: Tuple[str, ...] = ("schedule", "step_size", "gamma", "milestones", "min_lr", *_WARMUP_KEYS)

# Defaults of optional keys; keys absent here are required where used.
_DEFAULTS: Dict[str, Any] = {
    "gamma": 0.1,  # step, multistep (torch's default); exponential requires it
    "min_lr": 0.0,
    "warmup_steps": 0,
    "warmup_start_factor": 1.0 / 3.0,  # torch.optim.lr_scheduler.LinearLR's default
}
REQUIRED = {("step", "step_size"), ("multistep", "milestones"), ("exponential", "gamma")}

# Schedules that decay over the run and so need its total number of steps.
_NEEDS_TOTAL = ("cosine", "linear")


def _int(key: str, v: Any, lo: int) -> int:
    if not is_int(v):
        raise ConfigError(f"optimizer.{key} must be an integer, got {v!r}")
    if v < lo:
        raise ConfigError(f"optimizer.{key} must be >= {lo}, got {v!r}")
    return int(v)


def _float(key: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v):
        raise ConfigError(f"optimizer.{key} must be a finite number, got {v!r}")
    v = float(v)
    if v < lo or (lo_open and v == lo) or v > hi:
        raise ConfigError(f"optimizer.{key} must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {v!r}")
    return v


def validate_schedule_config(cfg: Mapping[str, Any], lr: float) -> Dict[str, Any]:
    """Check the schedule keys of an ``[optimizer]`` table.

    ``lr`` is the optimizer's (validated) learning rate, the schedule's
    peak.  Keys that are not schedule keys are ignored (the optimizer checks
    them).  Returns ``schedule``, the keys it uses and the warmup keys, with
    defaults filled in.  Raises :class:`~raven_hpc.errors.ConfigError`
    naming the key for an unknown schedule, a key the schedule does not use,
    a missing required key, a wrong type or an out-of-range value.
    """
    kind = cfg.get("schedule", "constant")
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule: unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    used = SCHEDULES[kind] + _WARMUP_KEYS
    for key in SCHEDULE_KEYS[1:]:
        if key in cfg and key not in used:
            users = [name for name, keys in SCHEDULES.items() if key in keys]
            raise ConfigError(
                f"optimizer.{key} is not used by schedule {kind!r} (only by {', '.join(users)}); "
                f"keys of {kind!r}: {', '.join(used)}"
            )
    out: Dict[str, Any] = {"schedule": kind}
    for key in used:
        if key in cfg:
            v = cfg[key]
        elif (kind, key) in REQUIRED:
            raise ConfigError(f"optimizer.{key} is required by schedule {kind!r}")
        else:
            v = _DEFAULTS[key]
        if key == "step_size":
            out[key] = _int(key, v, 1)
        elif key == "warmup_steps":
            out[key] = _int(key, v, 0)
        elif key == "gamma":
            out[key] = _float(key, v, 0.0, 1.0, lo_open=True)
        elif key == "min_lr":
            out[key] = _float(key, v, 0.0, lr)
        elif key == "warmup_start_factor":
            out[key] = _float(key, v, 0.0, 1.0)
        elif key == "milestones":
            if not isinstance(v, (list, tuple)) or not v or not all(is_int(m) for m in v):
                raise ConfigError(f"optimizer.milestones must be a non-empty list of integers, got {v!r}")
            ms = [int(m) for m in v]
            if ms[0] < 1 or any(b <= a for a, b in zip(ms, ms[1:])):
                raise ConfigError(f"optimizer.milestones must be increasing steps >= 1, got {v!r}")
            out[key] = ms
    return out


@dataclass(frozen=True)
class Schedule:
    """A learning rate for every optimizer step: :meth:`lr_at`.

    Build it with :func:`make_schedule`; the fields are the validated keys
    (see the module docstring).  ``decay_steps`` is ``T``, the number of
    steps ``cosine`` and ``linear`` decay over (``None`` for the others).
    """

    kind: str
    lr: float
    warmup_steps: int = 0
    warmup_start_factor: float = 1.0 / 3.0
    step_size: int = 1
    gamma: float = 0.1
    milestones: Tuple[int, ...] = ()
    min_lr: float = 0.0
    decay_steps: Optional[int] = None

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0 for the first)."""
        if not is_int(step) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        t = int(step)
        w = self.warmup_steps
        if t < w:
            f = self.warmup_start_factor
            return self.lr * (f + (1.0 - f) * t / w)
        u = t - w
        kind = self.kind
        if kind == "constant":
            return self.lr
        if kind == "step":
            return self.lr * self.gamma ** (u // self.step_size)
        if kind == "multistep":
            return self.lr * self.gamma ** bisect.bisect_right(self.milestones, u)
        if kind == "exponential":
            return self.lr * self.gamma ** u
        frac = min(u, self.decay_steps) / self.decay_steps
        if kind == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * frac)) / 2.0
        if kind == "linear":
            return self.lr + (self.min_lr - self.lr) * frac
        raise AssertionError(f"unhandled schedule {kind!r}")  # SCHEDULES and lr_at disagree

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], total_steps: Optional[int] = None) -> "Schedule":
        """The schedule of a *validated* ``[optimizer]`` table (``lr`` and the
        schedule keys filled in, as ``validate_optimizer_config`` returns it).

        ``total_steps``, the number of optimizer steps of the whole run, is
        required by ``cosine`` and ``linear`` (which decay over ``total_steps
        - warmup_steps``) and ignored by the others.  Raises
        :class:`~raven_hpc.errors.ConfigError` when it is missing or leaves no
        step to decay over.
        """
        kind = cfg["schedule"]
        decay = None
        if kind in _NEEDS_TOTAL:
            if total_steps is None:
                raise ConfigError(f"optimizer.schedule {kind!r} needs the run's total number of steps")
            if not is_int(total_steps) or total_steps < 1:
                raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
            decay = int(total_steps) - cfg["warmup_steps"]
            if decay < 1:
                raise ConfigError(
                    f"optimizer.warmup_steps = {cfg['warmup_steps']} leaves no step for schedule {kind!r} to "
                    f"decay over: the run has {int(total_steps)} steps; lower warmup_steps"
                )
        kw = {k: cfg[k] for k in SCHEDULES[kind] + _WARMUP_KEYS}
        if "milestones" in kw:
            kw["milestones"] = tuple(kw["milestones"])
        return cls(kind=kind, lr=cfg["lr"], decay_steps=decay, **kw)
