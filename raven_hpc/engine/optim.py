"""Optimizers over the flat parameter vector.

``make_optimizer(cfg, num_params)`` builds one from the config's
``[optimizer]`` table, e.g.
``{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
"weight_decay": 0.0}``.  An optimizer is a class registered under its name
with :func:`register_optimizer`; it declares its keys and defaults
(:attr:`Optimizer.DEFAULTS`), updates ``params`` in place with one fused
Numba kernel per step, and exposes its state as a flat dict of arrays and
numbers for checkpoints.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Dict, Mapping, Type, Union

import numpy as np

from raven_hpc.errors import CheckpointError, ConfigError
from raven_hpc.kernels import get_kernel

__all__ = [
    "OPTIMIZERS",
    "Optimizer",
    "SGD",
    "make_optimizer",
    "register_optimizer",
    "validate_optimizer_config",
]

State = Dict[str, Union[np.ndarray, float, int]]

#: optimizer name -> class
OPTIMIZERS: Dict[str, Type["Optimizer"]] = {}


def register_optimizer(cls: Type["Optimizer"]) -> Type["Optimizer"]:
    OPTIMIZERS[cls.NAME] = cls
    return cls


def _number(cfg: Mapping[str, Any], key: str, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf) -> float:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ConfigError(f"optimizer.{key} must be a finite number, got {v!r}")
    v = float(v)
    if v < lo or (lo_open and v == lo) or v > hi:
        bound = f"> {lo}" if lo_open else f">= {lo}"
        if hi != math.inf:
            bound += f" and <= {hi}"
        raise ConfigError(f"optimizer.{key} must be {bound}, got {v!r}")
    return v


def validate_optimizer_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Check an optimizer table; return it normalised (name + every key).

    Raises :class:`~raven_hpc.errors.ConfigError` naming the bad key.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"optimizer config must be a table/dict, got {type(cfg).__name__}")
    name = cfg.get("name", "sgd")
    cls = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"optimizer.name: unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    return cls.validate(cfg)


def make_optimizer(cfg: Mapping[str, Any], num_params: int) -> "Optimizer":
    """Validate ``cfg`` and build the optimizer for ``num_params`` parameters."""
    norm = validate_optimizer_config(cfg)
    return OPTIMIZERS[norm["name"]](norm, num_params)


class Optimizer(abc.ABC):
    """Base class: ``step(params, grad_mean)`` updates flat ``params`` in place."""

    NAME = ""
    #: config key -> default (``name`` implied)
    DEFAULTS: Dict[str, Any] = {}

    def __init__(self, cfg: Mapping[str, Any], num_params: int):
        if isinstance(num_params, bool) or not isinstance(num_params, (int, np.integer)) or num_params < 0:
            raise ValueError(f"num_params must be a non-negative integer, got {num_params!r}")
        self.config: Dict[str, Any] = self.validate(cfg)
        self.num_params = int(num_params)
        self.steps = 0

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        allowed = {"name", *cls.DEFAULTS}
        for key in cfg:
            if key not in allowed:
                raise ConfigError(
                    f"optimizer: unknown key {key!r} for {cls.NAME}; valid keys: {', '.join(sorted(allowed))}"
                )
        out = {"name": cls.NAME}
        for key, default in cls.DEFAULTS.items():
            out[key] = cfg.get(key, default)
        return out

    @property
    def lr(self) -> float:
        return self.config["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.config["lr"] = _number({"lr": value}, "lr", lo=0.0)

    def _check(self, params: np.ndarray, grad: np.ndarray) -> None:
        if not (isinstance(params, np.ndarray) and params.dtype == np.float32 and params.ndim == 1
                and params.flags.c_contiguous and params.flags.writeable and params.size == self.num_params):
            raise ValueError(
                f"params must be a writable contiguous 1-D float32 array of {self.num_params} elements"
            )
        if not (isinstance(grad, np.ndarray) and grad.dtype in (np.float32, np.float64)
                and grad.shape == params.shape):
            raise ValueError(f"grad must be a 1-D float32/float64 array of {self.num_params} elements")

    @abc.abstractmethod
    def step(self, params: np.ndarray, grad_mean: np.ndarray, scale: float = 1.0) -> None:
        """Update ``params`` in place from ``scale * grad_mean``."""

    @abc.abstractmethod
    def state_dict(self) -> State:
        """The optimizer state as arrays and scalars (for checkpoints)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@register_optimizer
class SGD(Optimizer):
    """Stochastic gradient descent, same update as ``torch.optim.SGD``.

    Keys: ``lr`` (> 0, default 0.01), ``momentum`` (>= 0, default 0),
    ``dampening`` (default 0), ``nesterov`` (bool, needs momentum > 0 and
    dampening 0), ``weight_decay`` (L2, >= 0, default 0).
    """

    NAME = "sgd"
    DEFAULTS = {"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}

    _kernel = staticmethod(get_kernel("sgd_step"))

    @classmethod
    def validate(cls, cfg):
        out = super().validate(cfg)
        out["lr"] = _number(out, "lr", lo=0.0, lo_open=True)
        out["momentum"] = _number(out, "momentum", lo=0.0)
        out["dampening"] = _number(out, "dampening", lo=0.0, hi=1.0)
        out["weight_decay"] = _number(out, "weight_decay", lo=0.0)
        if not isinstance(out["nesterov"], (bool, np.bool_)):
            raise ConfigError(f"optimizer.nesterov must be true or false, got {out['nesterov']!r}")
        out["nesterov"] = bool(out["nesterov"])
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ConfigError("optimizer.nesterov needs momentum > 0 and dampening = 0")
        return out

    def __init__(self, cfg, num_params):
        super().__init__(cfg, num_params)
        size = self.num_params if self.config["momentum"] != 0 else 0
        self.momentum_buffer = np.zeros(size, dtype=np.float32)

    def step(self, params: np.ndarray, grad_mean: np.ndarray, scale: float = 1.0) -> None:
        """``params -= lr * update(scale * grad_mean)``, in place, one pass."""
        self._check(params, grad_mean)
        c = self.config
        self._kernel(
            params, grad_mean, self.momentum_buffer, c["lr"], c["momentum"], c["dampening"],
            c["weight_decay"], c["nesterov"], self.steps == 0, float(scale),
        )
        self.steps += 1

    def state_dict(self) -> State:
        c = self.config
        return {
            "steps": self.steps,
            "lr": c["lr"],
            "momentum": c["momentum"],
            "dampening": c["dampening"],
            "weight_decay": c["weight_decay"],
            "nesterov": int(c["nesterov"]),
            "momentum_buffer": self.momentum_buffer.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (hyper-parameters included)."""
        try:
            buf = np.asarray(state["momentum_buffer"], dtype=np.float32).reshape(-1)
            cfg = {k: state[k] for k in ("lr", "momentum", "dampening", "weight_decay")}
            cfg["nesterov"] = bool(int(state["nesterov"]))
            steps = int(state["steps"])
        except KeyError as exc:
            raise CheckpointError(f"optimizer state lacks {exc.args[0]!r}") from None
        try:
            cfg = self.validate(cfg)
        except ConfigError as exc:
            raise CheckpointError(f"optimizer state is invalid: {exc}") from exc
        want = self.num_params if cfg["momentum"] != 0 else 0
        if buf.size != want:
            raise CheckpointError(
                f"optimizer momentum buffer has {buf.size} elements, expected {want} for this model"
            )
        self.config = cfg
        self.steps = steps
        self.momentum_buffer = buf.copy()
