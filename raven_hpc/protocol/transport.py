"""The thin layer over mpi4py: polling without burning a core, sends that
are tracked until complete, and ending a job cleanly from any rank.

MPI implementations busy-poll inside a blocking call, so a rank waiting in
``Recv``/``Wait`` burns a full core -- taking it from the ranks that share the
node.
Every wait here is ``Improbe``/``Test`` plus a short sleep that grows from
``poll_min_us`` to ``poll_max_us`` while nothing happens (and goes back to
the minimum as soon as something does).
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from typing import Any

from ..errors import RavenError, WorkerError
from .messages import TAG_CTRL

__all__ = ["Backoff", "Outbox", "hostname", "error_message", "raise_remote", "abort"]

#: set once this rank knows a process of the job failed (fault-tolerant MPI):
#: it then leaves without ``MPI_Finalize``, which after a failure can hang
#: (see :func:`raven_hpc.cli._finalize_mpi`)
peer_failed = False


def hostname() -> str:
    return socket.gethostname()


class Backoff:
    """Sleep a little longer each idle round, up to a ceiling.

    The first ``spins`` idle rounds do not sleep at all (a result that is
    about to land costs no latency); then the sleep starts at ``min_s`` and
    doubles up to the cap: ``max_s``, or less after :meth:`cap_for`.
    ``busy()`` resets it.
    """

    def __init__(self, min_s: float = 50e-6, max_s: float = 1e-3, spins: int = 2, latency_fraction: float = 0.05):
        self.min_s = max(0.0, float(min_s))
        self.max_s = max(self.min_s, float(max_s))
        self.cap_s = self.max_s
        self.spins = int(spins)
        self.latency_fraction = float(latency_fraction)
        self._idle = 0
        self._delay = self.min_s
        self.slept_s = 0.0
        self.transfer_spin_s = 0.02
        self._spun = 0.0

    def cap_for(self, work_s: float) -> None:
        """Bound the sleep by a fraction of the work being waited for.

        A sleep a quarter as long as the work waited for can add a quarter
        to its latency; capped at ``latency_fraction`` of the work, the added
        latency stays about that fraction while an idle rank still sleeps
        between polls (no core is burnt).
        """
        self.cap_s = min(self.max_s, max(self.min_s, self.latency_fraction * float(work_s)))

    def sleep_until(self, t: float, now: float) -> bool:
        """Sleep in one stretch until shortly before ``t`` (a predicted
        arrival).  Returns False, without sleeping, when ``t`` is too close."""
        span = (t - now) * (1.0 - 2 * self.latency_fraction)
        if span <= 2 * self.cap_s:
            return False
        time.sleep(span)
        self.slept_s += span
        return True

    def transfer(self) -> None:
        """An idle round while one of our large transfers is in flight.

        Without a single-copy transport (CMA/XPMEM disabled, as on many
        clusters) a large message moves through shared memory only while
        *both* sides call into MPI: sleeping here stalls it for far longer
        than the transfer takes.  So drive progress, yielding
        the CPU rather than sleeping, for up to ``transfer_spin_s`` per
        stretch; past that (the peer is busy, not transferring) back off.
        """
        if self._spun < self.transfer_spin_s:
            t = time.perf_counter()
            time.sleep(0)
            self._spun += time.perf_counter() - t + 2e-6
        else:
            self.idle()

    def busy(self) -> None:
        self._idle = 0
        self._delay = self.min_s
        self._spun = 0.0

    def idle(self) -> None:
        self._idle += 1
        if self._idle <= self.spins:
            return
        if self._delay > 0:
            time.sleep(self._delay)
            self.slept_s += self._delay
        self._delay = min(self.cap_s, max(self._delay * 2, 1e-6))


class Outbox:
    """Nonblocking sends kept alive (request + buffer) until they complete."""

    def __init__(self):
        self._pending: list[tuple[Any, Any, float]] = []   # (request, buffer kept alive, posted at)
        #: MPI errors of sends that failed (e.g. to a dead process under ULFM)
        self.errors: list[Exception] = []

    def add(self, request, keepalive=None) -> None:
        self._pending.append((request, keepalive, time.monotonic()))

    def progress(self) -> int:
        """Complete what can be completed; returns how many are still pending.

        A send that fails (its peer died, with a fault-tolerant MPI) is
        dropped and its error kept in :attr:`errors`."""
        if self._pending:
            still = []
            for entry in self._pending:
                try:
                    if not entry[0].Test():
                        still.append(entry)
                except Exception as exc:  # noqa: BLE001 - MPI.Exception; mpi4py is not imported here
                    self.errors.append(exc)
            self._pending = still
        return len(self._pending)

    def transferring(self, fresh_s: float | None = None) -> bool:
        """True while a send of a (large) numpy buffer is still in flight --
        with ``fresh_s``, only one posted less than that long ago.

        A send to a rank that is computing (or asleep) cannot progress until
        that rank calls into MPI again, so spinning for it only takes CPU from
        the ranks that share the node; right after posting, the receiver is
        usually waiting for it, and driving progress is what makes it fast."""
        if fresh_s is None:
            return any(k is not None for _, k, _ in self._pending)
        now = time.monotonic()
        return any(k is not None and now - t < fresh_s for _, k, t in self._pending)

    def holds(self, buffer) -> bool:
        return any(k is buffer for _, k, _ in self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self, backoff: Backoff, timeout_s: float) -> bool:
        """Wait (without spinning) until every send completed; False on timeout."""
        start = time.monotonic()
        while self.progress():
            if time.monotonic() - start > timeout_s:
                return False
            backoff.idle()
        return True

    def cancel_all(self) -> None:
        for r, _, _ in self._pending:
            try:
                r.Cancel()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self._pending.clear()


def error_message(rank: int, exc: BaseException) -> dict:
    """A worker's exception as a control message for the master."""
    return {
        "type": "error",
        "rank": rank,
        "host": hostname(),
        "kind": type(exc).__name__,
        "message": str(exc),
        "detail": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "user_error": isinstance(exc, RavenError),
    }


def raise_remote(msg: dict) -> None:
    """Re-raise a worker's error (a control message) on the master."""
    raise WorkerError(msg["rank"], msg["host"], msg["kind"], msg["message"], msg.get("detail", ""))


def send_error(comm, exc: BaseException) -> None:
    """Best effort: tell the master about an exception, without blocking forever."""
    try:
        req = comm.issend(error_message(comm.Get_rank(), exc), dest=0, tag=TAG_CTRL)
        deadline = time.monotonic() + 10.0
        while not req.Test():
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
    except Exception:  # noqa: BLE001 - the error path must not raise
        pass


def abort(comm, code: int) -> None:  # pragma: no cover - ends the process
    """End every rank of the job now (used only when a clean stop failed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # The launcher forwards our output asynchronously and stops forwarding
    # when the abort tears the job down: give it a moment, or the one message
    # that says why the job ended can be lost (docs/decisions.md).
    time.sleep(0.25)
    try:
        comm.Abort(code)
    finally:
        os._exit(code)
