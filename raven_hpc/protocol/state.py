"""Where training stands, and the ways a step can end other than applied.

Shared by the master (which runs a step's tasks) and the training loop
(which applies steps, evaluates, checkpoints and rolls back).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RavenError

__all__ = ["TrainState", "RollBack", "StopRequested", "TrainingDiverged"]


@dataclass
class TrainState:
    """Where training stands; saved in checkpoints."""

    epoch: int = 0              # epoch in progress (or next to start)
    step_in_epoch: int = 0      # steps of that epoch already applied
    step: int = 0               # steps applied in total
    samples: int = 0            # training samples applied in total
    history: list = field(default_factory=list)   # per-epoch metric dicts

    def restore(self, saved: dict) -> None:
        """Take the values of a checkpoint's ``train_state`` (in place: the
        master and the training loop share this object)."""
        fresh = TrainState(**saved)
        self.epoch, self.step_in_epoch, self.step = fresh.epoch, fresh.step_in_epoch, fresh.step
        self.samples, self.history = fresh.samples, fresh.history


class TrainingDiverged(RavenError):
    """The loss or gradients became non-finite on every rank that tried."""


class RollBack(Exception):
    """Training must go back to ``to_step`` (the start of the current step,
    or a checkpoint before it)."""

    def __init__(self, to_step: int, reason: str, guilty=(), audit_step: bool = False):
        super().__init__(reason)
        self.to_step = to_step
        self.reason = reason
        self.guilty = tuple(guilty)
        self.audit_step = audit_step    # audit every result of the step that is redone


class StopRequested(Exception):
    """A signal asked the job to stop; raised at a point where the last
    applied step can be checkpointed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
