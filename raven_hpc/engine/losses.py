"""Loss registry: spec ``loss`` name -> fused loss op.

A loss takes the model output tensor, int64 labels and an optional
workspace, and returns ``(loss_sum_tensor, n_correct)``.  ``output_shape``
says what the last layer must produce for ``num_classes`` classes, so the
model spec can be checked before anything is allocated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from . import ops

__all__ = ["LOSSES", "LossSpec"]


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
