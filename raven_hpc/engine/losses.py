"""Loss registry: spec ``loss`` name -> fused loss op.

A loss takes the model output tensor, int64 labels and an optional
workspace, and returns ``(loss_sum_tensor, n_correct)``.  ``output_shape``
says what the last layer must produce for ``num_classes`` classes, so the
model spec can be checked before anything is allocated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple

from raven_hpc.errors import ModelError

from . import ops

__all__ = ["LOSSES", "LossSpec", "resolve_loss"]


@dataclass(frozen=True)
class LossSpec:
    fn: Callable
    output_shape: Callable[[int], Tuple[int, ...]]
    doc: str = ""


LOSSES: Dict[str, LossSpec] = {
    "softmax_cross_entropy": LossSpec(
        ops.softmax_cross_entropy,
        lambda num_classes: (num_classes,),
        "summed softmax cross-entropy over integer class labels",
    ),
}


def resolve_loss(spec: Any) -> Tuple[Any, LossSpec, Dict[str, Any]]:
    """Check a ``model.loss`` value; return ``(normalised, LossSpec, options)``.

    ``spec`` is a loss name or a table ``{name = ..., **options}``; the loss
    is then called as ``fn(output, labels, ws=ws, **options)``.  The
    normalised form is the bare name when there are no options.
    """
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ModelError("model.loss: a loss table needs a 'name', e.g. {name = \"softmax_cross_entropy\"}")
        name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ModelError(f"model.loss must be a loss name or a table, got {spec!r}")
    if name not in LOSSES:
        raise ModelError(f"model.loss: unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    if options:
        raise ModelError(f"model.loss: loss {name!r} takes no options, got {', '.join(sorted(options))}")
    return (name if not options else {"name": name, **options}), LOSSES[name], options
