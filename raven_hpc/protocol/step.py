"""One step's arithmetic on the master, apart from the MPI pump: the sum of
the accepted gradient results, the checks a result must pass before it is
compared or used, and the loss watch.  Pure numpy: no MPI, no clock, no
files, so it is unit-tested in one process.

* :class:`StepSum` -- the float64 sum of a step's accepted results, with
  the first-result fast path (a step settled by one result steps the
  optimizer straight from the received float32 buffer), and the results a
  later copy may still dispute kept aside so a wrong one can be taken out.
* :class:`NormScreen` -- is a gradient's norm per sample an outlier?
* :class:`LossWatch` -- has a step's loss exploded?
* :func:`fp_seed` -- the seed of a step's gradient fingerprints.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ProtocolError
from ..kernels.reduce import accumulate, assign

__all__ = ["StepSum", "NormScreen", "LossWatch", "UNDO_BYTES", "LOSS_EXPLOSION", "fp_seed"]

#: accepted results kept per step in case a later copy disputes them
UNDO_BYTES = 256 * 2**20

#: a step whose mean loss is this many times the lowest smoothed loss of the
#: run so far is a suspect: its results are audited before it is applied
LOSS_EXPLOSION = 10.0


def fp_seed(train_seed: int, step: int) -> int:
    """The seed of the fingerprint projections of ``step``'s gradients: the
    same on the master and on every collector, different every step (a
    wrong worker cannot tune its result to one fixed projection)."""
    return (int(train_seed) * 1_000_003 + int(step) * 7919 + 17) % 2**63


class StepSum:
    """The accepted results of one step: their gradient sum and totals.

    A result's buffer is any object with ``grad`` (float32 vector), ``raw``
    (its bytes) and ``get(name)`` for the header fields ``loss_sum``,
    ``correct``, ``samples``, ``compute_s``, ``recv_wait_s`` (a
    :class:`~raven_hpc.protocol.messages.ResultBuffer`).
    """

    def __init__(self, num_params: int):
        self.acc = np.zeros(int(num_params), np.float64)
        self._empty = True
        self._first = None          # the step's only result so far, used as it is
        self.undo: dict = {}        # task id -> accepted result a later copy may dispute
        self.totals: dict = {}
        self.reset()

    def reset(self) -> None:
        """A new step (or the current one again, after a rollback)."""
        self._empty = True
        self._first = None
        self.undo.clear()
        self.totals = {"loss_sum": 0.0, "correct": 0.0, "samples": 0, "compute_s": 0.0, "idle_s": 0.0}

    def add(self, buf, grad: bool, more_coming: bool) -> None:
        """Add an accepted result (exactly once per task).  ``more_coming``:
        other tasks of the step are still open -- the first result is then
        copied into the float64 sum at once, while the others compute; the
        step's only result is kept as it is (no copy on the critical path)."""
        if grad:
            if not self._empty:
                accumulate(self.acc, buf.grad)
            elif more_coming:
                assign(self.acc, buf.grad)
                self._empty = False
            else:
                self._first = buf
        t = self.totals
        t["loss_sum"] += buf.get("loss_sum")
        t["correct"] += buf.get("correct")
        t["samples"] += int(buf.get("samples"))
        t["compute_s"] += buf.get("compute_s")
        t["idle_s"] += buf.get("recv_wait_s")

    def keep_for_dispute(self, task_id: int, buf) -> bool:
        """Keep ``buf`` until the step ends (a later copy may prove it wrong),
        within :data:`UNDO_BYTES`; False when there is no room."""
        if sum(b.raw.nbytes for b in self.undo.values()) + buf.raw.nbytes > UNDO_BYTES:
            return False
        self.undo[task_id] = buf
        return True

    def swap(self, wrong, right) -> None:
        """Replace an accepted result already in the sum by another of the
        same task (the master's own computation)."""
        if self._empty:
            raise ProtocolError("internal: a result to take out of an empty step sum")
        self.acc -= wrong.grad
        accumulate(self.acc, right.grad)
        t = self.totals
        t["loss_sum"] += right.get("loss_sum") - wrong.get("loss_sum")
        t["correct"] += right.get("correct") - wrong.get("correct")

    def gradient(self) -> np.ndarray:
        """The step's gradient sum: the float64 sum, or the one received
        buffer when a single result settled the step."""
        if self._first is not None:
            return self._first.grad
        if self._empty:
            self.acc.fill(0.0)
        return self.acc

    def held(self) -> list:
        """Buffers the sum still reads (not to be reused for receiving)."""
        out = list(self.undo.values())
        if self._first is not None:
            out.append(self._first)
        return out

    def release(self) -> None:
        """The update has read the gradient: let go of the received buffer."""
        self._first = None
        self.undo.clear()


class NormScreen:
    """Flags a gradient whose norm per sample is ``factor`` times the running
    typical one (0: off); learns from the results that pass."""

    def __init__(self, factor: float):
        self.factor = float(factor)
        self.log_norm: float | None = None   # running typical log(|g| / samples)

    def suspicious(self, sq: float, samples: float) -> bool:
        if self.factor <= 0 or samples <= 0:
            return False
        x = 0.5 * math.log(max(sq, 1e-300)) - math.log(samples)
        if self.log_norm is not None and x > self.log_norm + math.log(self.factor):
            return True
        self.log_norm = x if self.log_norm is None else 0.95 * self.log_norm + 0.05 * x
        return False


class LossWatch:
    """Has a step's mean loss exploded (:data:`LOSS_EXPLOSION` x the lowest
    smoothed loss so far, and at least 1% of the first step's loss)?
    Learns from the steps that pass; a step confirmed by audits becomes the
    new reference."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.ewma: float | None = None
        self.floor: float | None = None
        self.start: float | None = None

    def exploded(self, loss: float, audited: bool) -> bool:
        """``audited``: every result of this step was checked by the master
        (a jump then is real)."""
        if not math.isfinite(loss):
            return True
        if self.ewma is None:
            self.ewma = self.floor = self.start = loss
            return False
        if audited:
            self.ewma = self.floor = loss
            return False
        if loss > LOSS_EXPLOSION * max(self.floor, 1e-2 * self.start):
            return True
        self.ewma = 0.9 * self.ewma + 0.1 * loss
        self.floor = min(self.floor, self.ewma)
        return False
