"""The message pump of a rank that leads others (the master, a collector).

It owns the MPI side of leading: matching whatever arrived from any rank
(``improbe`` on any source and tag), receiving results into pooled buffers
with ``Message.Irecv``, sending parameter versions from a pool of send
buffers without a packing copy, and turning a fault-tolerant MPI's "process
failed" errors into a set of dead ranks.  It decides nothing: the owner asks
it what arrived and tells it what to send.  Stopping the led ranks (and
draining what they still send, so ``MPI_Finalize`` finds no unmatched
message) is one loop here, used whether or not training ever started.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import ProtocolError
from . import transport
from .messages import TAG_CTRL, TAG_DATA, TAG_PARAMS, ParamsBuffer, ResultBuffer
from .transport import Backoff, Outbox

__all__ = ["Pending", "Pump", "stop_ranks", "failed_ranks"]

#: drive a parameter send's progress this long after posting it, then just poll
TRANSFER_FRESH_S = 0.005


def failed_ranks(comm, exc) -> list[int] | None:
    """The ranks a fault-tolerant MPI (Open MPI ``--with-ft ulfm``) reports
    failed, acknowledged so later calls go on; None when ``exc`` is not a
    process failure (then it is the caller's to re-raise)."""
    from mpi4py import MPI

    try:
        cls = exc.Get_error_class()
    except AttributeError:
        return None
    if cls not in (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING):
        return None
    comm.Ack_failed()
    group = comm.Get_failed()
    world = comm.Get_group()
    failed = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world)
    group.Free()
    world.Free()
    return [r for r in failed if r != MPI.UNDEFINED]


@dataclass
class Pending:
    """A result being received."""

    request: object
    buf: ResultBuffer
    rank: int


class Pump:
    """Nonblocking receives and sends for a rank that leads ``n``-parameter work.

    ``in_use()`` names the result buffers the owner still holds (a step's
    accepted results, copies waiting for a quorum): the pool never hands
    those out again.  ``on_dead(rank)`` is called once per process MPI
    reports failed.
    """

    def __init__(self, comm, n: int, backoff: Backoff, *, in_use: Callable[[], Iterable] = tuple,
                 on_dead: Callable[[int], None] = lambda r: None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.n = n
        self.backoff = backoff
        self.outbox = Outbox()
        self.in_use = in_use
        self.on_dead = on_dead
        self.dead: set[int] = set()          # processes MPI reported failed (ULFM)
        self.receiving: list[Pending] = []
        self._result_pool: dict[int, list[ResultBuffer]] = {}
        self._status = MPI.Status()
        # the parameters live in a send buffer: no packing copy per version
        self.param_pool: list[ParamsBuffer] = [ParamsBuffer(n)]
        self.params_buf = self.param_pool[0]
        self.stats = {"messages": 0, "bytes_in": 0, "bytes_out": 0}

    # -- receiving ---------------------------------------------------------------
    def arrivals(self):
        """Yield ``(message, source, tag, nbytes)`` for everything that has
        arrived from any rank (a failed process is handled on the way)."""
        MPI, st = self.MPI, self._status
        while True:
            try:
                msg = self.comm.improbe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
            except MPI.Exception as exc:
                self.process_failed(exc)
                continue
            if msg is None:
                return
            yield msg, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)

    def result_buffer(self, nbytes: int) -> ResultBuffer:
        """A pooled result buffer of ``nbytes`` that nobody holds."""
        pool = self._result_pool.setdefault(nbytes, [])
        busy = {id(p.buf) for p in self.receiving}
        busy.update(id(b) for b in self.in_use())
        for b in pool:
            if id(b) not in busy:
                return b
        b = ResultBuffer.for_nbytes(nbytes)
        pool.append(b)
        return b

    def receive_result(self, msg, src: int, nbytes: int) -> None:
        """Start receiving a matched result message into a pooled buffer."""
        buf = self.result_buffer(nbytes)
        self.receiving.append(Pending(msg.Irecv([buf.raw, self.MPI.BYTE]), buf, src))
        self.stats["bytes_in"] += nbytes

    def completed(self) -> list[Pending]:
        """Receives that finished (those from a failed process are dropped);
        also drives the sends' progress."""
        done, still = [], []
        for p in self.receiving:
            try:
                (done if p.request.Test() else still).append(p)
            except self.MPI.Exception as exc:   # its sender died mid-transfer
                self.process_failed(exc)
        self.receiving = [p for p in still if p.rank not in self.dead]
        self.outbox.progress()
        while self.outbox.errors:
            self.process_failed(self.outbox.errors.pop())
        return done

    def discard_incoming(self) -> bool:
        """Receive and drop every message that has arrived (shutting down)."""
        got = False
        for msg, src, tag, nbytes in self.arrivals():
            got = True
            if tag == TAG_CTRL:
                msg.recv()
            else:
                raw = np.empty(nbytes, np.uint8)
                self.receiving.append(Pending(msg.Irecv([raw, self.MPI.BYTE]), None, src))
        self.completed()
        return got

    # -- sending -----------------------------------------------------------------
    def send_ctrl(self, rank: int, obj: dict) -> None:
        """A control message (pickled), tracked until delivered."""
        try:
            self.outbox.add(self.comm.isend(obj, dest=rank, tag=TAG_CTRL))
        except self.MPI.Exception as exc:
            self.process_failed(exc)

    def send_data(self, rank: int, buf: np.ndarray) -> None:
        """A task's snippet packet (``data.delivery = "scatter"``), raw
        bytes, kept alive until delivered; sent right before the task's
        control message, so the receiver takes them in that order."""
        if rank in self.dead:
            return
        try:
            self.outbox.add(self.comm.Isend([buf, self.MPI.BYTE], dest=rank, tag=TAG_DATA), buf)
        except self.MPI.Exception as exc:
            self.process_failed(exc)
            return
        self.stats["bytes_out"] += buf.nbytes

    def send_params(self, ranks: Iterable[int], version: int) -> None:
        """Send the current parameter buffer, as ``version``, to ``ranks``."""
        buf = self.params_buf
        buf.header[0] = version
        buf.header[1] = self.n
        for r in ranks:
            if r in self.dead:
                continue
            try:
                self.outbox.add(self.comm.Isend([buf.raw, self.MPI.BYTE], dest=r, tag=TAG_PARAMS), buf)
            except self.MPI.Exception as exc:
                self.process_failed(exc)
                continue
            self.stats["bytes_out"] += buf.raw.nbytes

    def writable_params(self) -> bool:
        """Make sure no send still reads the buffer the next version goes into.

        Sends read the buffer until the receiver matched them (with
        single-copy transports, the receiver copies from our memory), so
        while one is in flight the next version goes to another buffer.
        True when :attr:`params_buf` changed (the owner re-binds its
        parameters to it, copying the current values)."""
        cur = self.params_buf
        if not self.outbox.holds(cur):
            return False
        buf = next((b for b in self.param_pool if b is not cur and not self.outbox.holds(b)), None)
        if buf is None:
            buf = ParamsBuffer(self.n)
            self.param_pool.append(buf)
        self.params_buf = buf
        return True

    def idle(self, due: float | None, now: float) -> None:
        """Nothing arrived: sleep until ``due`` (a predicted arrival), else back off.

        Sleeping through the predictable part of a wait leaves the CPU to
        the ranks that compute (on a node shared with them, that is their
        compute time) and costs no latency at the arrival itself.  While a
        large transfer of ours is in flight, progress is driven instead.
        """
        if self.receiving or self.outbox.transferring(fresh_s=TRANSFER_FRESH_S):
            self.backoff.transfer()
            return
        if due is None or not self.backoff.sleep_until(due, now):
            self.backoff.idle()

    # -- failures ----------------------------------------------------------------
    def process_failed(self, exc) -> None:
        """An MPI call failed: if a process died (fault-tolerant MPI: Open MPI
        ``--with-ft ulfm``), record it and tell the owner; any other MPI
        error is re-raised."""
        failed = failed_ranks(self.comm, exc)
        if failed is None:
            raise exc
        me = self.comm.Get_rank()
        for r in failed:
            if r in self.dead:
                continue
            if r == me:
                raise ProtocolError("MPI reports this rank itself as failed")
            self.dead.add(r)
            transport.peer_failed = True
            self.on_dead(r)
        self.receiving = [p for p in self.receiving if p.rank not in self.dead]

    # -- stopping ----------------------------------------------------------------
    def stop(self, ranks: Iterable[int], message: dict, timeout_s: float, quiet_s: float,
             clock: Callable[[], float] = time.monotonic) -> bool:
        """Send ``message`` (a stop) to every live rank of ``ranks``; True
        when all were delivered.

        Meanwhile whatever the ranks still send (a hello, an error report,
        results nobody needs any more) is received and dropped: a rank can
        only leave once its own sends are complete, and a message left
        unreceived makes ``MPI_Finalize`` fail here ("unmatched messages").
        Done once every stop is delivered and nothing arrived for
        ``quiet_s`` (that covers only messages already in flight: a rank
        sends nothing after it took its stop).
        """
        for r in ranks:
            if r not in self.dead:
                try:
                    self.outbox.add(self.comm.issend(message, dest=r, tag=TAG_CTRL))
                except self.MPI.Exception as exc:
                    self.process_failed(exc)
        deadline = clock() + timeout_s
        quiet_since = None
        while True:
            got = self.discard_incoming()
            pending = self.outbox.progress()
            now = clock()
            if pending or self.receiving or got:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > quiet_s:
                return True
            if now > deadline:
                self.outbox.cancel_all()
                return False
            if got:
                self.backoff.busy()
            else:
                self.backoff.idle()


def stop_ranks(comm, ranks: Iterable[int], timeout_s: float, quiet_s: float) -> bool:
    """Stop ``ranks`` when no leader was built (set-up failed before training)."""
    return Pump(comm, 0, Backoff(1e-4, 5e-3)).stop(ranks, {"type": "stop"}, timeout_s, quiet_s)
