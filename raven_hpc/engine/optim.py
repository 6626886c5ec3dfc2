"""Optimizers over the flat parameter vector, and gradient clipping.

``make_optimizer(cfg, num_params)`` builds one from the config's
``[optimizer]`` table, e.g.::

    [optimizer]
    name = "adamw"
    lr = 1e-3
    betas = [0.9, 0.999]
    weight_decay = 0.01
    clip_norm = 1.0            # clip the gradient to global L2 norm 1 (0: off)
    schedule = "cosine"        # learning-rate schedule, see raven_hpc.engine.schedule
    warmup_steps = 200

Every optimizer updates the same way as its ``torch.optim`` namesake, with
one fused Numba kernel per step (``raven_hpc.kernels.optim``): one pass reads
the gradient, scales it, updates the state and writes the parameters.

===========  ==============================================================
name         keys (default)
===========  ==============================================================
``sgd``      ``lr`` (0.01), ``momentum`` (0), ``dampening`` (0, in [0, 1]),
             ``nesterov`` (false; needs momentum > 0 and dampening 0),
             ``weight_decay`` (0, L2)
``adam``     ``lr`` (0.001), ``betas`` ([0.9, 0.999], each in [0, 1)),
             ``eps`` (1e-8, > 0), ``weight_decay`` (0, L2 added to the
             gradient), ``amsgrad`` (false)
``adamw``    as ``adam`` but ``weight_decay`` (0.01) is decoupled: the
             parameters shrink by ``lr * weight_decay`` each step
``rmsprop``  ``lr`` (0.01), ``alpha`` (0.99, in [0, 1)), ``eps`` (1e-8,
             > 0), ``momentum`` (0), ``centered`` (false),
             ``weight_decay`` (0, L2)
===========  ==============================================================

Keys every optimizer takes: ``clip_norm`` (0 = off; else clip by global
norm like ``torch.nn.utils.clip_grad_norm_``) and the schedule keys of
:mod:`raven_hpc.engine.schedule` (``schedule``, ``warmup_steps``, ...).
Unknown keys are rejected with the list of valid ones.  ``eps`` must be
positive (torch allows 0, which turns a parameter whose gradient is always
0 into NaN).

``Optimizer.step(params, grad, scale=1.0, lr=None)`` updates ``params`` in
place from ``scale * grad``: the master passes its float64 gradient *sum*
and ``scale = 1 / samples``.  ``lr`` overrides the configured rate for this
step (the master passes ``schedule.lr_at(step)``).  With ``clip_norm`` set,
the step first computes the global norm of ``scale * grad`` and shrinks
``scale`` to bring it to at most ``clip_norm``; the norm (before clipping)
is left in :attr:`Optimizer.last_grad_norm` for logging.  For a model,
build the optimizer with ``make_optimizer(cfg, model)`` (sized for its
trainable parameters) and step with ``model.apply_gradient(opt, grad_sum,
samples, lr=...)``, which also updates the model's state; ``step`` refuses
the whole parameter vector of a model with state (batch norm), whose tail
holds running statistics, not parameters.

``state_dict()`` returns arrays (float32 state) and plain scalars for
checkpoints; ``load_state_dict()`` restores the step count, the buffers and
the optimizer's hyper-parameters (as ``torch.optim`` does).  ``clip_norm``
and the schedule belong to the run configuration and are not restored.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Dict, Mapping, Optional, Tuple, Type, Union

import numpy as np

from raven_hpc.errors import CheckpointError, ConfigError
from .model import owner_with_state
from .schedule import SCHEDULE_KEYS, Schedule, validate_schedule_config
from .workspace import CPU_BACKEND, CPU_KERNELS

__all__ = [
    "OPTIMIZERS",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "SGD",
    "clip_scale",
    "grad_norm",
    "make_optimizer",
    "make_schedule",
    "register_optimizer",
    "validate_optimizer_config",
]

State = Dict[str, Union[np.ndarray, float, int, str]]

#: optimizer name -> class
OPTIMIZERS: Dict[str, Type["Optimizer"]] = {}

#: keys every optimizer takes besides its own and the schedule's -> default
COMMON_DEFAULTS: Dict[str, Any] = {"clip_norm": 0.0}

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
_CLIP_EPS = 1e-6


def register_optimizer(cls: Type["Optimizer"]) -> Type["Optimizer"]:
    """Class decorator: make ``cls`` buildable under ``cls.NAME``."""
    OPTIMIZERS[cls.NAME] = cls
    return cls


def _number(cfg: Mapping[str, Any], key: str, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf,
            hi_open: bool = False) -> float:
    v = cfg[key]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v):
        raise ConfigError(f"optimizer.{key} must be a finite number, got {v!r}")
    v = float(v)
    if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        if hi != math.inf:
            bound += f" and < {hi}" if hi_open else f" and <= {hi}"
        raise ConfigError(f"optimizer.{key} must be {bound}, got {v!r}")
    return v


def _flag(cfg: Mapping[str, Any], key: str) -> bool:
    v = cfg[key]
    if not isinstance(v, (bool, np.bool_)):
        raise ConfigError(f"optimizer.{key} must be true or false, got {v!r}")
    return bool(v)


def _betas(cfg: Mapping[str, Any]) -> Tuple[float, float]:
    v = cfg["betas"]
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ConfigError(f"optimizer.betas must be two numbers [beta1, beta2], got {v!r}")
    return tuple(_number({f"betas[{i}]": b}, f"betas[{i}]", lo=0.0, hi=1.0, hi_open=True)
                 for i, b in enumerate(v))


def _norm_with(sum_squares, grad: np.ndarray, scale: float) -> float:
    if not (isinstance(grad, np.ndarray) and grad.ndim == 1 and grad.dtype in (np.float32, np.float64)):
        raise ValueError("grad must be a 1-D float32/float64 array")
    return math.sqrt(sum_squares(grad, float(scale)))


def grad_norm(grad: np.ndarray, scale: float = 1.0) -> float:
    """Global L2 norm of ``scale * grad`` (float64 sum of squares, one pass, CPU kernel)."""
    return _norm_with(CPU_KERNELS.sum_squares, grad, scale)


def _clip_factor(norm: float, max_norm: float) -> float:
    if not math.isfinite(norm):
        raise FloatingPointError(f"gradient norm is {norm}: the gradient is not finite, nothing to clip")
    return min(1.0, max_norm / (norm + _CLIP_EPS))


def clip_scale(grad: np.ndarray, scale: float, max_norm: float) -> float:
    """The gradient scale after clipping ``scale * grad`` to norm ``max_norm``.

    Returns ``scale * min(1, max_norm / (norm + 1e-6))`` where ``norm`` is
    the global L2 norm of ``scale * grad``: stepping with the returned scale
    is stepping from the gradient ``torch.nn.utils.clip_grad_norm_`` leaves.
    Use :func:`grad_norm` for the norm itself.  Raises
    ``FloatingPointError`` when the gradient is not finite.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)) \
            or not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    return float(scale) * _clip_factor(grad_norm(grad, scale), float(max_norm))


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


def make_optimizer(cfg: Mapping[str, Any], num_params: Any) -> "Optimizer":
    """Validate ``cfg`` and build the optimizer for ``num_params`` parameters.

    ``num_params`` may be a :class:`~raven_hpc.engine.Model`: the optimizer
    then updates its ``num_trainable`` trainable parameters with the model's
    kernel backend (use :meth:`Model.apply_gradient` to step it and the
    model's state together) -- on the CPU for a model on a device backend,
    whose update steps the host vectors (:attr:`Model.params`).
    """
    norm = validate_optimizer_config(cfg)
    backend = None
    if hasattr(num_params, "num_trainable") and hasattr(num_params, "params"):
        if not getattr(num_params, "on_device", False):
            backend = getattr(num_params, "backend", None)
        num_params = num_params.num_trainable
    return OPTIMIZERS[norm["name"]](norm, num_params, backend=backend)


def make_schedule(opt_cfg: Mapping[str, Any], total_steps: Optional[int] = None) -> Schedule:
    """Build the learning-rate schedule of an ``[optimizer]`` table.

    ``opt_cfg`` is validated like at config load (the optimizer's default
    ``lr`` applies when the table has none); see :meth:`Schedule.from_config`
    for ``total_steps`` (required by ``cosine`` and ``linear``) and the
    errors.
    """
    return Schedule.from_config(validate_optimizer_config(opt_cfg), total_steps)


class Optimizer(abc.ABC):
    """Base class: :meth:`step` updates flat float32 ``params`` in place.

    A subclass declares its ``NAME``, its hyper-parameters with defaults
    (``DEFAULTS``), checks them in :meth:`_check_hyper`, names its state
    arrays (``BUFFERS``) and their sizes (:meth:`_buffer_sizes`), names its
    kernel (``KERNEL``) and runs it in :meth:`_update`.  Validation,
    clipping, the learning-rate override, step counting and checkpoint state
    are done here.  ``backend`` (default: CPU) is the kernel backend of the
    model the optimizer serves: its kernels are bound and its state arrays
    allocated once, here.
    """

    NAME = ""
    #: hyper-parameter -> default (``name``, ``clip_norm`` and the schedule keys implied)
    DEFAULTS: Dict[str, Any] = {}
    #: names of the float32 state arrays (attributes of the instance)
    BUFFERS: Tuple[str, ...] = ()
    #: the op name of the update kernel
    KERNEL = ""

    def __init__(self, cfg: Mapping[str, Any], num_params: int, backend: Any = None):
        if isinstance(num_params, bool) or not isinstance(num_params, (int, np.integer)) or num_params < 0:
            raise ValueError(f"num_params must be a non-negative integer, got {num_params!r}")
        self.config: Dict[str, Any] = self.validate(cfg)
        self.num_params = int(num_params)
        #: optimizer steps taken (restored from checkpoints)
        self.steps = 0
        #: global gradient norm of the last step, before clipping (None unless clipping is on)
        self.last_grad_norm: Optional[float] = None
        #: learning rate the last step used
        self.last_lr: Optional[float] = None
        #: the kernel backend: update kernel, norm kernel and state arrays come from it
        self.backend = CPU_BACKEND if backend is None else backend
        self._kernel = self.backend.kernel(self.KERNEL)
        self._sum_squares = self.backend.kernel("sum_squares")
        for name, size in self._buffer_sizes(self.config, self.num_params).items():
            setattr(self, name, self.backend.zeros(size, dtype=np.float32))

    # -- configuration -------------------------------------------------------

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        """Check ``cfg`` for this optimizer; return it with every default."""
        allowed = {"name", *cls.DEFAULTS, *COMMON_DEFAULTS, *SCHEDULE_KEYS}
        for key in cfg:
            if key not in allowed:
                raise ConfigError(
                    f"optimizer: unknown key {key!r} for {cls.NAME}; valid keys: {', '.join(sorted(allowed))}"
                )
        if cfg.get("name", cls.NAME) != cls.NAME:
            raise ConfigError(f"optimizer.name is {cfg['name']!r}, expected {cls.NAME!r}")
        hyper = cls._check_hyper({k: cfg.get(k, d) for k, d in cls.DEFAULTS.items()})
        out = {"name": cls.NAME, **hyper}
        out["clip_norm"] = _number({"clip_norm": cfg.get("clip_norm", COMMON_DEFAULTS["clip_norm"])}, "clip_norm")
        out.update(validate_schedule_config(cfg, out["lr"]))
        return out

    @classmethod
    @abc.abstractmethod
    def _check_hyper(cls, hyper: Dict[str, Any]) -> Dict[str, Any]:
        """Check and normalise the ``DEFAULTS`` keys (all present)."""

    @classmethod
    @abc.abstractmethod
    def _buffer_sizes(cls, hyper: Mapping[str, Any], num_params: int) -> Dict[str, int]:
        """Size of each ``BUFFERS`` array (0 for one the configuration does not use)."""

    @property
    def lr(self) -> float:
        """The configured learning rate (a step's ``lr`` argument overrides it)."""
        return self.config["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.config["lr"] = _number({"lr": value}, "lr", lo=0.0, lo_open=True)

    @property
    def clip_norm(self) -> Optional[float]:
        """Maximum global gradient norm, or ``None`` when clipping is off."""
        return self.config["clip_norm"] or None

    # -- the update ----------------------------------------------------------

    def _check(self, params: np.ndarray, grad: np.ndarray) -> None:
        owner = owner_with_state(params)
        if owner is not None:
            raise ValueError(
                f"params is a whole Model.params vector: {owner.num_trainable} trainable parameters "
                f"(num_trainable) and then {owner.num_state} state values (batch-norm running statistics) that "
                "are not to be stepped; use model.apply_gradient(optimizer, grad_sum, samples) with an "
                "optimizer built by make_optimizer(cfg, model), or step params[:model.num_trainable]"
            )
        if not (isinstance(params, np.ndarray) and params.dtype == np.float32 and params.ndim == 1
                and params.flags.c_contiguous and params.flags.writeable and params.size == self.num_params):
            size = f"; got {params.size}" if isinstance(params, np.ndarray) else ""
            raise ValueError(
                f"params must be a writable contiguous 1-D float32 array of {self.num_params} elements{size} "
                "(for a Model: its num_trainable trainable parameters, params[:num_trainable]; "
                "model.apply_gradient steps them and the model's state)"
            )
        if not (isinstance(grad, np.ndarray) and grad.dtype in (np.float32, np.float64)
                and grad.shape == params.shape):
            raise ValueError(f"grad must be a 1-D float32/float64 array of {self.num_params} elements")

    def step(self, params: np.ndarray, grad: np.ndarray, scale: float = 1.0, lr: Optional[float] = None) -> None:
        """Update ``params`` in place from the gradient ``scale * grad``.

        ``grad`` is float32 or float64 (the master's sum, with
        ``scale = 1 / samples``).  ``lr`` overrides the configured learning
        rate for this step only.  With ``clip_norm`` configured, ``scale`` is
        first reduced so the gradient's global norm is at most ``clip_norm``
        and the norm before clipping is kept in :attr:`last_grad_norm`.
        """
        self._check(params, grad)
        scale = float(scale)
        if lr is None:
            lr = self.config["lr"]
        elif isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)) \
                or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        lr = float(lr)
        max_norm = self.config["clip_norm"]
        if max_norm:
            norm = _norm_with(self._sum_squares, grad, scale)
            self.last_grad_norm = norm
            scale *= _clip_factor(norm, max_norm)
        self._update(params, grad, scale, lr)
        self.steps += 1
        self.last_lr = lr

    @abc.abstractmethod
    def _update(self, params: np.ndarray, grad: np.ndarray, scale: float, lr: float) -> None:
        """Run the kernel for step number ``self.steps + 1``."""

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> State:
        """The optimizer state as arrays and scalars (for checkpoints).

        ``name``, ``steps``, every hyper-parameter (booleans as 0/1, tuples
        as float64 arrays) and the state arrays (copies).
        """
        out: State = {"name": self.NAME, "steps": self.steps}
        for key in self.DEFAULTS:
            v = self.config[key]
            if isinstance(v, bool):
                v = int(v)
            elif isinstance(v, tuple):
                v = np.asarray(v, dtype=np.float64)
            out[key] = v
        for name in self.BUFFERS:
            out[name] = self.backend.to_host(getattr(self, name)).copy()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (hyper-parameters included).

        Raises :class:`~raven_hpc.errors.CheckpointError` when the state is
        incomplete, for another optimizer, invalid, or sized for another
        model.
        """
        name = state.get("name", self.NAME)
        if name != self.NAME:
            raise CheckpointError(
                f"the checkpoint holds {name!r} optimizer state but [optimizer] name is {self.NAME!r}; "
                f"set name = {name!r} or start a new run"
            )
        try:
            steps = state["steps"]
            hyper = {k: state[k] for k in self.DEFAULTS}
            buffers = {b: np.asarray(state[b], dtype=np.float32).reshape(-1) for b in self.BUFFERS}
        except KeyError as exc:
            raise CheckpointError(f"optimizer state lacks {exc.args[0]!r}") from None
        for key, default in self.DEFAULTS.items():
            if isinstance(default, bool) and isinstance(hyper[key], (int, np.integer)):
                hyper[key] = bool(hyper[key])
        try:
            hyper = self._check_hyper(hyper)
        except ConfigError as exc:
            raise CheckpointError(f"optimizer state is invalid: {exc}") from exc
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise CheckpointError(f"optimizer state is invalid: steps = {steps!r}")
        for b, size in self._buffer_sizes(hyper, self.num_params).items():
            if buffers[b].size != size:
                raise CheckpointError(
                    f"optimizer {b.replace('_', ' ')} has {buffers[b].size} elements, "
                    f"expected {size} for this model"
                )
        self.config.update(hyper)
        self.steps = int(steps)
        for b, arr in buffers.items():
            setattr(self, b, self.backend.to_device(arr.copy()))


@register_optimizer
class SGD(Optimizer):
    """Stochastic gradient descent, same update as ``torch.optim.SGD``.

    Keys: ``lr`` (> 0, default 0.01), ``momentum`` (>= 0, default 0),
    ``dampening`` (default 0), ``nesterov`` (bool, needs momentum > 0 and
    dampening 0), ``weight_decay`` (L2, >= 0, default 0).
    """

    NAME = "sgd"
    DEFAULTS = {"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}
    BUFFERS = ("momentum_buffer",)

    KERNEL = "sgd_step"

    @classmethod
    def _check_hyper(cls, hyper):
        hyper["lr"] = _number(hyper, "lr", lo=0.0, lo_open=True)
        hyper["momentum"] = _number(hyper, "momentum", lo=0.0)
        hyper["dampening"] = _number(hyper, "dampening", lo=0.0, hi=1.0)
        hyper["weight_decay"] = _number(hyper, "weight_decay", lo=0.0)
        hyper["nesterov"] = _flag(hyper, "nesterov")
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ConfigError("optimizer.nesterov needs momentum > 0 and dampening = 0")
        return hyper

    @classmethod
    def _buffer_sizes(cls, hyper, num_params):
        return {"momentum_buffer": num_params if hyper["momentum"] != 0 else 0}

    def _update(self, params, grad, scale, lr):
        c = self.config
        self._kernel(params, grad, self.momentum_buffer, lr, c["momentum"], c["dampening"],
                     c["weight_decay"], c["nesterov"], self.steps == 0, scale)


@register_optimizer
class Adam(Optimizer):
    """Adam, same update as ``torch.optim.Adam``.

    Keys: ``lr`` (> 0, default 0.001), ``betas`` (two numbers in [0, 1),
    default [0.9, 0.999]), ``eps`` (> 0, default 1e-8), ``weight_decay``
    (>= 0, default 0; L2: added to the gradient), ``amsgrad`` (bool,
    default false: keep the running maximum of the second moment).
    """

    NAME = "adam"
    DEFAULTS = {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    #: weight decay applied to the parameters directly (AdamW) instead of the gradient
    DECOUPLED = False

    KERNEL = "adam_step"

    @classmethod
    def _check_hyper(cls, hyper):
        hyper["lr"] = _number(hyper, "lr", lo=0.0, lo_open=True)
        hyper["betas"] = _betas(hyper)
        hyper["eps"] = _number(hyper, "eps", lo=0.0, lo_open=True)
        hyper["weight_decay"] = _number(hyper, "weight_decay", lo=0.0)
        hyper["amsgrad"] = _flag(hyper, "amsgrad")
        return hyper

    @classmethod
    def _buffer_sizes(cls, hyper, num_params):
        return {"exp_avg": num_params, "exp_avg_sq": num_params,
                "max_exp_avg_sq": num_params if hyper["amsgrad"] else 0}

    def _update(self, params, grad, scale, lr):
        c = self.config
        beta1, beta2 = c["betas"]
        self._kernel(params, grad, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq, lr, beta1, beta2,
                     c["eps"], c["weight_decay"], self.DECOUPLED, c["amsgrad"], self.steps + 1, scale)


@register_optimizer
class AdamW(Adam):
    """Adam with decoupled weight decay, same update as ``torch.optim.AdamW``.

    Keys as :class:`Adam`; ``weight_decay`` defaults to 0.01 and shrinks
    the parameters by ``lr * weight_decay`` each step instead of being added
    to the gradient.
    """

    NAME = "adamw"
    DEFAULTS = {**Adam.DEFAULTS, "weight_decay": 0.01}
    DECOUPLED = True


@register_optimizer
class RMSprop(Optimizer):
    """RMSprop, same update as ``torch.optim.RMSprop``.

    Keys: ``lr`` (> 0, default 0.01), ``alpha`` (smoothing of the squared
    gradient, in [0, 1), default 0.99), ``eps`` (> 0, default 1e-8),
    ``momentum`` (>= 0, default 0), ``centered`` (bool, default false:
    normalise by the gradient's variance instead of its second moment),
    ``weight_decay`` (>= 0, default 0; L2).
    """

    NAME = "rmsprop"
    DEFAULTS = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0}
    BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")

    KERNEL = "rmsprop_step"

    @classmethod
    def _check_hyper(cls, hyper):
        hyper["lr"] = _number(hyper, "lr", lo=0.0, lo_open=True)
        hyper["alpha"] = _number(hyper, "alpha", lo=0.0, hi=1.0, hi_open=True)
        hyper["eps"] = _number(hyper, "eps", lo=0.0, lo_open=True)
        hyper["momentum"] = _number(hyper, "momentum", lo=0.0)
        hyper["centered"] = _flag(hyper, "centered")
        hyper["weight_decay"] = _number(hyper, "weight_decay", lo=0.0)
        return hyper

    @classmethod
    def _buffer_sizes(cls, hyper, num_params):
        return {"square_avg": num_params,
                "grad_avg": num_params if hyper["centered"] else 0,
                "momentum_buffer": num_params if hyper["momentum"] > 0 else 0}

    def _update(self, params, grad, scale, lr):
        c = self.config
        self._kernel(params, grad, self.square_avg, self.grad_avg, self.momentum_buffer, lr, c["alpha"],
                     c["eps"], c["weight_decay"], c["momentum"], c["centered"], scale)
