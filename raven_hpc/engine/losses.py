"""Losses: the fused loss ops and the ``model.loss`` registry.

Every loss takes the model output tensor (n, c), int64 labels and an
optional workspace (``ws=``), and returns ``(loss_sum_tensor, n_correct)``:
the loss **summed over samples** (the master divides by the global sample
count) and how many rows' argmax equals the label.  Loss, accuracy and
gradient come from one Numba pass (:mod:`raven_hpc.kernels.losses`).

============================  ==============================================  =====================
``model.loss``                per sample (``t`` = one-hot of the label)        torch equivalent
============================  ==============================================  =====================
``softmax_cross_entropy``     ``-sum_j q_j log softmax(z)_j``,                ``cross_entropy``
                              ``q = (1 - eps) t + eps / c``
``mse``                       ``sum_j (z_j - t_j)^2``                          ``mse_loss``
``bce_with_logits``           ``sum_j BCE(sigmoid(z_j), t_j)`` (multi-label)   ``binary_cross_entropy_with_logits``
``huber``                     ``sum_j huber_delta(z_j - t_j)``                 ``huber_loss``
============================  ==============================================  =====================

All with ``reduction="sum"``: the regression-style losses sum over classes
as well as samples, so a sample's loss does not shrink with the number of
classes (torch's default ``"mean"`` would divide by ``n * c``).

Options (``model.loss = {name = "...", option = value}``):
``softmax_cross_entropy``: ``label_smoothing`` in [0, 1) (default 0);
``huber``: ``delta`` > 0 (default 1).  :func:`resolve_loss` checks them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from raven_hpc.errors import ModelError

from . import ops
from .tensor import Tensor, gradient_rule
from .validation import check_real
from .workspace import Workspace

__all__ = ["LOSSES", "LossSpec", "LossOption", "bce_with_logits", "huber_loss", "mse_loss", "resolve_loss"]

def _check_delta(where: str, value: Any) -> float:
    return check_real(where, "delta", value, 0.0, low_open=True)


# -- ops ----------------------------------------------------------------------------
def mse_loss(output: ops.ArrayLike, labels: Any, *, ws: Optional[Workspace] = None) -> Tuple[Tensor, int]:
    """Squared error of ``output`` (n, c) against one-hot labels, summed.

    ``sum_ij (output_ij - onehot_ij)^2`` -- torch's
    ``mse_loss(output, one_hot(labels), reduction="sum")``.
    """
    return ops.fused_loss("mse", "mse_onehot", output, labels, ws=ws)


def bce_with_logits(output: ops.ArrayLike, labels: Any, *, ws: Optional[Workspace] = None) -> Tuple[Tensor, int]:
    """Binary cross-entropy of ``sigmoid(output)`` against one-hot labels, summed.

    Every class is an independent yes/no (multi-label style) -- torch's
    ``binary_cross_entropy_with_logits(output, one_hot(labels), reduction="sum")``.
    Stable for any logit.
    """
    return ops.fused_loss("bce_with_logits", "bce_logits_onehot", output, labels, ws=ws)


def huber_loss(output: ops.ArrayLike, labels: Any, *, delta: float = 1.0,
               ws: Optional[Workspace] = None) -> Tuple[Tensor, int]:
    """Huber loss of ``output`` against one-hot labels, summed.

    Quadratic for residuals up to ``delta``, linear beyond -- torch's
    ``huber_loss(output, one_hot(labels), reduction="sum", delta=delta)``.
    """
    d = _check_delta("huber", delta)
    return ops.fused_loss("huber", "huber_onehot", output, labels, d, ws=ws)


for _op in ("mse", "bce_with_logits", "huber"):
    gradient_rule(_op)(ops.fused_loss_grad)
del _op


# -- registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class LossOption:
    """One option of a loss: its default and ``check(where, value) -> value``."""

    default: Any
    check: Callable[[str, Any], Any]
    doc: str = ""


@dataclass(frozen=True)
class LossSpec:
    fn: Callable
    output_shape: Callable[[int], Tuple[int, ...]]
    doc: str = ""
    options: Mapping[str, LossOption] = field(default_factory=dict)


def _classes(num_classes: int) -> Tuple[int, ...]:
    return (num_classes,)


LOSSES: Dict[str, LossSpec] = {
    "softmax_cross_entropy": LossSpec(
        ops.softmax_cross_entropy, _classes,
        "summed softmax cross-entropy over integer class labels",
        {"label_smoothing": LossOption(0.0, ops.check_label_smoothing,
                                       "mix eps / classes into every target (torch's label_smoothing)")},
    ),
    "mse": LossSpec(mse_loss, _classes, "summed squared error against one-hot labels"),
    "bce_with_logits": LossSpec(bce_with_logits, _classes,
                                "summed per-class binary cross-entropy of sigmoid(output) vs one-hot labels"),
    "huber": LossSpec(huber_loss, _classes, "summed Huber loss against one-hot labels",
                      {"delta": LossOption(1.0, _check_delta, "where the loss turns from quadratic to linear")}),
}


def resolve_loss(spec: Any) -> Tuple[Any, LossSpec, Dict[str, Any]]:
    """Check a ``model.loss`` value; return ``(normalised, LossSpec, options)``.

    ``spec`` is a loss name or a table ``{name = ..., **options}``; the loss
    is then called as ``fn(output, labels, ws=ws, **options)``.  Options are
    checked per loss (unknown ones and bad values raise
    :class:`~raven_hpc.errors.ModelError` naming the loss and the option).
    The normalised form is the bare name when there are no options, else
    the table with the checked values.
    """
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ModelError("model.loss: a loss table needs a 'name', e.g. {name = \"softmax_cross_entropy\"}")
        name, given = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ModelError(f"model.loss must be a loss name or a table, got {spec!r}")
    if not isinstance(name, str) or name not in LOSSES:
        raise ModelError(f"model.loss: unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    loss = LOSSES[name]
    where = f"model.loss ({name})"
    options: Dict[str, Any] = {}
    for key, value in given.items():
        opt = loss.options.get(key)
        if opt is None:
            valid = f"valid options: {', '.join(sorted(loss.options))}" if loss.options else "it takes no options"
            raise ModelError(f"{where}: unknown option {key!r}; {valid}")
        options[key] = opt.check(where, value)
    return (name if not options else {"name": name, **options}), loss, options

