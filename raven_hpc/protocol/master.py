"""The master (rank 0): owns the model, the optimizer and the schedule.

One loop drives everything: it asks the :class:`Scheduler` what to send,
sends it without blocking, matches whatever arrives from any rank
(``Improbe`` on any source and tag), receives it with ``Message.Irecv``, and
feeds results back to the scheduler.  It never blocks on one rank, and when
nothing happens it sleeps a little longer each round instead of spinning.
When every task of a step is accepted it averages the float64 accumulator,
takes an optimizer step and sends the new parameter version to every worker.

When it is the only rank (or ``cluster.master_computes = "yes"``) the master
also appears in the scheduler as a worker and runs its tasks inline with the
same :class:`TaskRunner` the workers use.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError, Interrupted, ProtocolError, RavenError
from ..kernels.reduce import FP_SIZE, fingerprint, warm_up
from .messages import KIND_EVAL, TAG_CTRL, TAG_PARAMS, TAG_RESULT, ParamsBuffer, ResultBuffer
from .plan import eval_tasks, make_plan
from .scheduler import Scheduler, Task
from .step import LossWatch, NormScreen, StepSum
from . import transport
from .transport import Backoff, Outbox, hostname, raise_remote
from .worker import TaskRunner

__all__ = ["Master", "TrainState", "stop_workers"]

STARTUP_TIMEOUT_S = 600.0   # workers compile kernels and cache data before saying hello
STOP_TIMEOUT_S = 30.0
STOP_QUIET_S = 0.05
HOUSEKEEPING_S = 0.001      # backups and stuck tasks are looked at this often (at most)
TRANSFER_FRESH_S = 0.005    # drive a parameter send's progress this long after posting it, then just poll


def stop_workers(comm, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Send every worker the stop message (used when no Master could be built)."""
    outbox = Outbox()
    for r in range(1, comm.Get_size()):
        outbox.add(comm.issend({"type": "stop"}, dest=r, tag=TAG_CTRL))
    ok = outbox.flush(Backoff(1e-4, 5e-3), timeout_s)
    if not ok:
        outbox.cancel_all()
    return ok


class TrainingDiverged(RavenError):
    """The loss or gradients became non-finite on every rank that tried."""


class RollBack(Exception):
    """Control flow of the master: training must go back to ``to_step``
    (the start of the current step, or a checkpoint before it)."""

    def __init__(self, to_step: int, reason: str, guilty=(), audit_step: bool = False):
        super().__init__(reason)
        self.to_step = to_step
        self.reason = reason
        self.guilty = tuple(guilty)
        self.audit_step = audit_step    # audit every result of the step that is redone


@dataclass
class TrainState:
    """Where training stands; saved in checkpoints."""

    epoch: int = 0              # epoch in progress (or next to start)
    step_in_epoch: int = 0      # steps of that epoch already applied
    step: int = 0               # steps applied in total (= parameter version)
    samples: int = 0            # training samples applied in total
    history: list = field(default_factory=list)   # per-epoch metric dicts


@dataclass
class _Pending:
    """A result being received."""

    request: object
    buf: ResultBuffer
    rank: int


class Master:
    def __init__(self, comm, cfg: dict, model, optimizer, ds, splits: dict, recorder,
                 state: TrainState | None = None, clock: Callable[[], float] = time.monotonic):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.cfg = cfg
        self.model = model
        self.opt = optimizer
        self.ds = ds
        self.splits = splits
        self.rec = recorder
        self.state = state or TrainState()
        self.clock = clock
        cl = cfg["cluster"]
        self.size = comm.Get_size()
        self.worker_ranks = list(range(1, self.size))
        mode = cl["master_computes"]
        self.master_computes = mode == "yes" or (mode == "auto" and self.size == 1)
        ranks = self.worker_ranks + ([0] if self.master_computes else [])
        if not ranks:
            raise ProtocolError("no rank computes: set cluster.master_computes = \"yes\" or run more ranks")
        poc = cfg["poc"]
        self.poc = poc
        beyond = [r for r in poc.get("trusted", ()) if r >= self.size]
        if beyond:
            raise ConfigError(f"[poc] trusted names rank{'s' if len(beyond) > 1 else ''} "
                              f"{', '.join(map(str, beyond))}, but the job has {self.size} ranks (0..{self.size - 1})")
        if not self.worker_ranks:
            # alone: nobody to compare with, the master trusts itself
            poc = dict(poc, redundancy=1, quorum=1, verify=0.0)
        self.sched = Scheduler(ranks, redundancy=poc["redundancy"], quorum=poc["quorum"], verify=poc["verify"],
                               rtol=poc["rtol"], max_strikes=poc["max_strikes"],
                               probation_steps=poc["probation_steps"], backup_factor=poc["backup_factor"],
                               prefetch=cl["prefetch"], seed=cfg["train"]["seed"],
                               max_chunk=cl["max_chunk"] if model.sample_independent else 1,
                               trusted=poc.get("trusted", ()))
        self.backups_on = bool(poc["backup"])
        self._held: dict[int, dict[int, ResultBuffer]] = {}   # task -> rank -> result waiting for a quorum
        self._fp = np.zeros(FP_SIZE, np.float64)
        self._next_check = 0.0
        self._next_backup_check = 0.0
        self.screen = NormScreen(poc["screen"])   # gradient norms per sample that are outliers
        self._drain_mtime: float | None = None
        self._drained: set[int] = set()
        self.dead: set[int] = set()               # processes MPI reported failed (ULFM)
        self.interrupted: int | None = None       # signal number once told to stop
        self.backoff = Backoff(cl["poll_min_us"] * 1e-6, cl["poll_max_us"] * 1e-6)
        self.outbox = Outbox()
        self.runner = TaskRunner(model, splits)
        self.hosts = {0: hostname()}
        self.sched.set_host(0, self.hosts[0])
        self.n = model.num_params
        # the step's accepted results: float64 sum, or the one received buffer
        # when a single result settles the step (no copy on the critical path)
        self.step_sum = StepSum(self.n)
        # The model's parameters live in a send buffer: no packing copy per step.
        self._param_pool: list[ParamsBuffer] = [ParamsBuffer(self.n)]
        self._params_buf = self._param_pool[0]
        model.bind_params(self._params_buf.params)
        self._task_s: float | None = None   # EWMA of a task's compute time
        self._result_pool: dict[int, list[ResultBuffer]] = {}
        self._receiving: list[_Pending] = []
        self._local: list[Task] = []
        self._next_task_id = 1
        # parameter version: grows with every update and every rollback, so a
        # worker never computes a task on parameters of the same step number
        # from before a rollback
        self.version = self.state.step
        # trusted audits: which accepted results the master recomputes, drawn
        # with randomness the workers cannot predict
        self.audit_rate = float(poc.get("audit", 0.0))
        self.sched.audit_exclusions = self.audit_rate > 0.0
        self._audit_rng = random.SystemRandom()
        self._audit_step: int | None = None     # a step whose every result is audited (a suspect)
        self.loss_watch = LossWatch()
        self._status = MPI.Status()
        self._nonfinite: dict[int, set] = {}
        self.stats = {"messages": 0, "bytes_in": 0, "bytes_out": 0}
        # Where a step's time goes (seconds, summed over steps): waiting for the
        # last result, the master's own update (mean + optimizer + sending), and
        # the compute time the workers reported.
        self.timing = {"steps": 0, "wait_s": 0.0, "update_s": 0.0, "worker_compute_s": 0.0,
                       "worker_idle_s": 0.0}
        warm_up()

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Wait for every worker's hello, then send the first parameters."""
        import signal

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:   # not the main thread (tests driving a Master directly)
                pass
        waiting = set(self.worker_ranks)
        t0 = self.clock()
        while waiting:
            got = self._poll(hello=waiting)
            if not got:
                if self.clock() - t0 > STARTUP_TIMEOUT_S:
                    raise ProtocolError(
                        f"ranks {sorted(waiting)} did not start within {STARTUP_TIMEOUT_S:.0f} s")
                self.backoff.idle()
            else:
                self.backoff.busy()
        self._send_params()

    def stop(self) -> bool:
        """Tell every worker to leave; True when all stop messages were delivered.

        Meanwhile whatever the workers still send (results of copies nobody
        needs any more) is received and dropped: a worker can only leave once
        its own sends are complete.
        """
        for r in self.worker_ranks:
            if r not in self.dead:
                self.outbox.add(self.comm.issend({"type": "stop", "peer_failed": bool(self.dead),
                                                  "interrupted": self.resumable_stop}, dest=r, tag=TAG_CTRL))
        deadline = self.clock() + STOP_TIMEOUT_S
        quiet_since = None
        while True:
            got = self._discard_incoming()
            pending = self.outbox.progress()
            now = self.clock()
            if pending or self._receiving or got:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > STOP_QUIET_S:
                # every stop delivered, and nothing more in flight for a while: a
                # result a worker sent just before it read its stop has arrived
                return True
            if now > deadline:
                self.outbox.cancel_all()
                return False
            if not got:
                self.backoff.idle()

    def _discard_incoming(self) -> bool:
        """Receive and drop every message that has arrived (shutting down)."""
        MPI = self.MPI
        got = False
        for msg, src, tag, nbytes in self._arrivals():
            got = True
            if tag == TAG_CTRL:
                msg.recv()
            else:
                buf = self._result_buffer(nbytes) if tag == TAG_RESULT else None
                raw = buf.raw if buf is not None else np.empty(nbytes, np.uint8)
                self._receiving.append(_Pending(msg.Irecv([raw, MPI.BYTE]), buf, src))
        self._completed_receives()
        return got

    # -- messages -------------------------------------------------------------
    def _writable_params(self) -> None:
        """Make sure no send still reads the buffer the optimizer will write.

        Sends read the buffer until the receiver matched them (with
        single-copy transports, the receiver copies from our memory), so
        while one is in flight the update goes to another buffer.
        """
        cur = self._params_buf
        if not self.outbox.holds(cur):
            return
        buf = next((b for b in self._param_pool if b is not cur and not self.outbox.holds(b)), None)
        if buf is None:
            buf = ParamsBuffer(self.n)
            self._param_pool.append(buf)
        self.model.bind_params(buf.params, copy=True)
        self._params_buf = buf

    def _send_params(self, only: int | None = None) -> None:
        buf = self._params_buf
        buf.header[0] = self.version
        buf.header[1] = self.n
        for r in ([only] if only is not None else self.sched.live_workers()):
            if r != 0 and r not in self.dead:
                try:
                    self.outbox.add(self.comm.Isend([buf.raw, self.MPI.BYTE], dest=r, tag=TAG_PARAMS), buf)
                except self.MPI.Exception as exc:
                    self._process_failed(exc)
                    continue
                self.stats["bytes_out"] += buf.raw.nbytes

    def _result_buffer(self, nbytes: int) -> ResultBuffer:
        pool = self._result_pool.setdefault(nbytes, [])
        busy = {id(p.buf) for p in self._receiving}
        busy.update(id(b) for b in self.step_sum.held())
        busy.update(id(b) for held in self._held.values() for b in held.values())
        for b in pool:
            if id(b) not in busy:
                return b
        b = ResultBuffer.for_nbytes(nbytes)
        pool.append(b)
        return b

    def _arrivals(self):
        """Yield ``(message, source, tag, nbytes)`` for everything that has
        arrived from any rank (a failed process is handled on the way)."""
        MPI, st = self.MPI, self._status
        while True:
            try:
                msg = self.comm.improbe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
            except MPI.Exception as exc:
                self._process_failed(exc)
                continue
            if msg is None:
                return
            yield msg, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)

    def _completed_receives(self) -> list[_Pending]:
        """Receives that finished (those from a failed process are dropped)."""
        done, still = [], []
        for p in self._receiving:
            try:
                (done if p.request.Test() else still).append(p)
            except self.MPI.Exception as exc:   # its sender died mid-transfer
                self._process_failed(exc)
        self._receiving = [p for p in still if p.rank not in self.dead]
        self.outbox.progress()
        while self.outbox.errors:
            self._process_failed(self.outbox.errors.pop())
        return done

    def _poll(self, hello: set | None = None) -> list[tuple[int, ResultBuffer]]:
        """Match everything that has arrived; return completed results."""
        MPI = self.MPI
        for msg, src, tag, nbytes in self._arrivals():
            self.stats["messages"] += 1
            if hello is None and self.sched.is_lost(src):
                self._readmit(src, "answered again after it was given up on")
            if tag == TAG_RESULT:
                buf = self._result_buffer(nbytes)
                self._receiving.append(_Pending(msg.Irecv([buf.raw, MPI.BYTE]), buf, src))
                self.stats["bytes_in"] += nbytes
            elif tag == TAG_CTRL:
                self._control(src, msg.recv(), hello)
            else:
                raise ProtocolError(f"unexpected message tag {tag} from rank {src}")
        return [(p.rank, p.buf) for p in self._completed_receives()]

    # -- fault tolerance (ULFM) and signals -------------------------------------
    def _process_failed(self, exc) -> None:
        """An MPI call failed: if a process died (fault-tolerant MPI: Open MPI
        ``--with-ft ulfm``), take it out of the schedule and go on; any other
        MPI error is re-raised."""
        MPI = self.MPI
        try:
            cls = exc.Get_error_class()
        except AttributeError:
            raise exc from None
        if cls not in (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING):
            raise exc
        self.comm.Ack_failed()
        group = self.comm.Get_failed()
        world = self.comm.Get_group()
        failed = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world)
        group.Free()
        world.Free()
        for r in failed:
            if r in self.dead or r == MPI.UNDEFINED:
                continue
            if r == 0:
                raise ProtocolError("MPI reports the master itself as failed")
            self.dead.add(r)
            transport.peer_failed = True
            self.sched.mark_dead(r, self.clock(), "process failed (reported dead by MPI)")
        self._receiving = [p for p in self._receiving if p.rank not in self.dead]

    #: set when a signal stopped training: the stop message tells the workers,
    #: and every rank exits with EXIT_RESUMABLE
    resumable_stop = False

    def _on_signal(self, signum, frame) -> None:
        if self.interrupted is None:
            self.interrupted = signum

    def _check_interrupt(self) -> None:
        """Told to stop (SIGUSR1 / SIGTERM, here or during start-up): write a
        checkpoint of the last applied step, then stop."""
        from . import signals

        if self.interrupted is None:
            self.interrupted = signals.received
        if self.interrupted is None:
            return
        if self.sched.evaluating():
            return   # the epoch's evaluation first: its record belongs to the epoch the checkpoint is at
        import signal

        name = signal.Signals(self.interrupted).name
        path = self.rec.checkpoint(self)
        self.resumable_stop = True
        raise Interrupted(f"stopped by {name} at step {self.state.step} (epoch {self.state.epoch}); checkpoint "
                          f"written to {path}; continue with --resume (or --resume auto)")

    def _control(self, src: int, obj: dict, hello: set | None) -> None:
        kind = obj.get("type")
        if kind == "error":
            raise_remote(obj)
        elif kind == "ready":
            self.hosts[src] = obj["host"]
            self.sched.set_host(src, obj["host"])
            if obj["num_params"] != self.n:
                raise ProtocolError(f"rank {src} built a model with {obj['num_params']} parameters, "
                                    f"the master has {self.n}")
            if hello is not None:
                hello.discard(src)
        elif kind == "skipped":
            if self.sched.task(obj["task"]) is not None:
                self.sched.skipped(src, obj["task"], self.clock())
        else:
            raise ProtocolError(f"unknown control message {kind!r} from rank {src}")

    # -- running a batch of tasks ---------------------------------------------
    def _new_tasks(self, groups, kind: str, split: str) -> list[Task]:
        sizes = self.splits[split].snippets["count"]
        tasks = []
        for g in groups:
            tasks.append(Task(self._next_task_id, self.state.step, g, kind=kind, split=split,
                              version=self.version, samples=int(sizes[list(g)].sum())))
            self._next_task_id += 1
        return tasks

    def run_tasks(self, tasks: list[Task]) -> dict:
        """Run tasks to completion; returns summed loss, correct, samples (and
        leaves the gradient sum of grad tasks in :meth:`step_gradient`)."""
        self.step_sum.reset()
        total = self.step_sum.totals
        open_ids = {t.task_id for t in tasks}
        self.sched.submit(tasks)
        while open_ids or self.sched.audits_out():
            self._check_interrupt()
            now = self.clock()
            self._send_tasks(self.sched.assign(now))
            results = self._poll()
            if not results and self._local:
                task = self._local.pop(0)
                buf = self._result_buffer(ResultBuffer.nbytes_for(self.n if task.kind == "grad" else 0))
                self.runner.run(task.message(), buf)
                results = [(0, buf)]
            for rank, buf in results:
                self._take(rank, buf, open_ids, total)
            if results:
                self.backoff.busy()
            self._housekeeping(open_ids, total)
            if not results and not self._local:
                if not self._audit_next(race=not open_ids):
                    self._idle()
        while self._audit_next():
            pass
        self.step_sum.undo.clear()
        if tasks and tasks[0].kind == "grad":
            self.sched.record_applied((t.task_id for t in tasks), self.state.step)
        self.sched.forget(t.task_id for t in tasks)
        if self.audit_rate > 0.0 and tasks and tasks[0].kind == "grad":
            doubt = self.sched.distrusted_since()
            if doubt is not None:
                step, ranks = doubt
                raise RollBack(step, f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
                                     f"excluded: the results only they vouched for since step {step} are undone",
                               guilty=ranks)
        events = self.sched.drain_events()
        if tasks and tasks[0].kind == "grad":
            step = self.state.step
            mine = [e for e in events if e.get("ev") == "copy" and e["state"] == "accepted" and e["step"] == step]
            total["accepted_copies"] = len(mine)
            total["snippets"] = sum(len(e["snippets"]) for e in mine)
        self.rec.ledger(events, self.hosts)
        return total

    def _send_tasks(self, assignments) -> None:
        for rank, task in assignments:
            if rank == 0:
                self._local.append(task)
            else:
                msg = task.message()
                msg["type"] = "task"
                try:
                    self.outbox.add(self.comm.isend(msg, dest=rank, tag=TAG_CTRL))
                except self.MPI.Exception as exc:
                    self._process_failed(exc)

    # -- Proof-of-Calculation: stragglers, hung workers, arbitration, drain ---------
    def _housekeeping(self, open_ids: set, total: dict) -> None:
        now = self.clock()
        if now < self._next_backup_check:
            return
        self._next_backup_check = now + HOUSEKEEPING_S
        if self.backups_on:
            self._send_tasks(self.sched.backups(now))
        for task in self.sched.stuck():
            self._arbitrate(task, open_ids, total)
        if now < self._next_check:
            return
        self._next_check = now + 0.25
        timeout = self.poc["worker_timeout_s"]
        for r in self.sched.hung(now, timeout):
            self._remove(r, f"no result for {timeout:g} s (hung)")
        self._poll_drain_file(now)

    def _remove(self, rank: int, reason: str) -> None:
        self.sched.remove_worker(rank, self.clock(), reason)

    def _readmit(self, rank: int, reason: str) -> None:
        self.sched.add_worker(rank, self.clock(), reason)
        self._send_params(only=rank)

    def _poll_drain_file(self, now: float) -> None:
        path = self.poc["drain_file"]
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            mtime = None
        if mtime == self._drain_mtime:
            return
        self._drain_mtime = mtime
        ranks: set[int] = set()
        if mtime is not None:
            try:
                text = open(path).read()
            except OSError:
                text = ""
            from ..report import parse_drain

            ranks = {r for r in parse_drain(text)[0] if self.sched.is_worker(r)}
        for r in sorted(ranks - self._drained):
            self.sched.drain(r, now, f"listed in {path}")
        for r in sorted(self._drained - ranks):
            self.sched.undrain(r, now, f"no longer listed in {path}")
        self._drained = ranks

    def _fp_seed(self, task: Task) -> int:
        return (self.cfg["train"]["seed"] * 1_000_003 + task.step * 7919 + 17) % 2**63

    def _arbitrate(self, task: Task, open_ids: set, total: dict) -> None:
        """No quorum can form for ``task``: the master computes it itself."""
        if task.kind != "grad" or task.version != self.version:
            return   # its parameters are gone: the dispute stays on record
        buf = self._result_buffer(ResultBuffer.nbytes_for(self.n))
        self.runner.run(task.message(), buf)
        if not fingerprint(buf.grad, self._fp_seed(task), self._fp):
            bad = sorted(self._nonfinite.get(task.task_id, ()))
            also = (f" (as are the results of rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))})"
                    if bad else "")
            raise TrainingDiverged(f"training diverged at step {self.state.step}: the master's own computation "
                                   f"of task {task.task_id} is NaN/inf{also}; lower [optimizer] lr or check the data")
        fp = (*self._fp, buf.get("loss_sum"), buf.get("correct"))
        self.stats["arbitrations"] = self.stats.get("arbitrations", 0) + 1
        done = self.sched.is_done(task)
        wrong = self.step_sum.undo.get(task.task_id) if done else None
        apply = self.sched.arbitrate(task.task_id, fp, self.clock(), replace=wrong is not None)
        self._held.pop(task.task_id, None)
        if apply and done:
            self.step_sum.swap(wrong, buf)        # the applied result was wrong: take it out
            self.step_sum.undo.pop(task.task_id, None)
        elif apply:
            self._apply(buf, task.task_id, open_ids, total)

    # -- trusted audits ---------------------------------------------------------
    def _maybe_audit(self, task: Task, buf: ResultBuffer) -> None:
        """Draw whether the master recomputes this accepted result: a chunk
        of k tasks is chosen with probability 1 - (1 - audit)^k, every result
        of a suspect step (:attr:`_audit_step`) is.  The draw comes from the
        operating system's randomness, so no worker can tell which of its
        results will be checked."""
        if self._audit_step == task.step:
            p = 1.0
        elif self.audit_rate > 0.0:
            p = 1.0 - (1.0 - self.audit_rate) ** (1 + len(task.merged))
        else:
            return
        if p < 1.0 and self._audit_rng.random() >= p:
            return
        fp = None
        if task.accepted_fp is None:
            fingerprint(buf.grad, self._fp_seed(task), self._fp)
            fp = (*self._fp, buf.get("loss_sum"), buf.get("correct"))
        self.sched.mark_audit(task.task_id, fp)

    def _audit_next(self, race: bool = False) -> bool:
        """Recompute one result chosen for an audit (False: none is due).

        Audits run while the master would otherwise wait for results, and
        the rest before the step's update: the parameters are still those the
        result was computed on.  A wrong result makes training go back
        (:class:`RollBack`) to before the first update that a guilty rank's
        unproven results entered.  ``race``: the step waits only for audits,
        so the master also races trusted ranks that are overdue."""
        task = self.sched.next_audit(race=race, now=self.clock())
        if task is None:
            return False
        buf = self._result_buffer(ResultBuffer.nbytes_for(self.n))
        self.runner.run(task.message(), buf)
        fingerprint(buf.grad, self._fp_seed(task), self._fp)
        self._audited(self.sched.audit(task.task_id, (*self._fp, buf.get("loss_sum"), buf.get("correct")),
                                       self.clock()))
        return True

    def _audited(self, v) -> None:
        """An audit's verdict (by the master or a trusted rank): a wrong
        result rolls training back (:class:`RollBack`)."""
        self.stats["audits"] = self.stats.get("audits", 0) + 1
        if v.ok:
            return
        self.stats["audits_failed"] = self.stats.get("audits_failed", 0) + 1
        to = self.state.step if v.rollback_to is None else min(v.rollback_to, self.state.step)
        raise RollBack(to, f"an audit of task {v.task_id} proved rank{'s' if len(v.guilty) > 1 else ''} "
                           f"{', '.join(map(str, v.guilty))} wrong at step {self.state.step}", guilty=v.guilty)

    def _idle(self) -> None:
        """Nothing arrived: sleep until a result is due, else back off.

        Sleeping through the predictable part of the wait leaves the CPU to
        the workers (on a node the master shares with them, that is their
        compute time) and costs no latency at the arrival itself.
        """
        if self._receiving or self.outbox.transferring(fresh_s=TRANSFER_FRESH_S):
            self.backoff.transfer()
            return
        due = self.sched.next_expected()
        if due is None or not self.backoff.sleep_until(due, self.clock()):
            self.backoff.idle()

    def _take(self, rank: int, buf: ResultBuffer, open_ids: set, total: dict) -> None:
        tid = int(buf.get("task"))
        task = self.sched.task(tid)
        if task is None:
            return   # a late copy of a task already settled and forgotten
        is_grad = int(buf.get("kind")) != KIND_EVAL
        loss, correct = buf.get("loss_sum"), buf.get("correct")
        finite = bool(buf.get("finite")) and np.isfinite(loss)
        fp = None
        suspicious = False
        if is_grad:
            if buf.grad.shape[0] != self.n:
                raise ProtocolError(f"rank {rank} sent a gradient of {buf.grad.shape[0]} values, expected {self.n}")
            if self.sched.compared(task):
                # compared with other copies: fingerprint (and finiteness) in one pass
                finite = finite and fingerprint(buf.grad, self._fp_seed(task), self._fp)
                fp = (*self._fp, loss, correct)
                sq = self._fp[-1]
            else:
                # BLAS dot: vectorised, and NaN/inf anywhere makes it non-finite
                sq = float(np.dot(buf.grad, buf.grad))
                finite = finite and math.isfinite(sq)
            if finite:
                suspicious = self.screen.suspicious(sq, buf.get("samples"))
                if suspicious and fp is None:
                    fingerprint(buf.grad, self._fp_seed(task), self._fp)
                    fp = (*self._fp, loss, correct)
        verdict = self.sched.complete(rank, tid, self.clock(), ok=finite,
                                      reason="" if finite else "non-finite result",
                                      compute_s=buf.get("compute_s"), fp=fp, suspicious=suspicious)
        if verdict.audit is not None:
            self._audited(verdict.audit)
        if not finite:
            self._diverged_check(tid, rank, open_ids, total)
        if verdict.hold:
            self._held.setdefault(tid, {})[rank] = buf
        if verdict.accept:
            self._held.pop(tid, None)
            self._apply(buf, tid, open_ids, total)
        elif verdict.arbitrate:
            self._arbitrate(task, open_ids, total)

    def _apply(self, buf: ResultBuffer, tid: int, open_ids: set, total: dict) -> None:
        """Add an accepted result to the step (exactly once per task)."""
        is_grad = int(buf.get("kind")) != KIND_EVAL
        open_ids.discard(tid)
        task = self.sched.task(tid)
        if task is not None and task.merged:
            open_ids.difference_update(task.merged)   # a chunk settles the tasks it absorbed
        if is_grad:
            if task is not None:
                self._maybe_audit(task, buf)
            if open_ids and task is not None and self.sched.disputable(task):
                # other copies of this unverified result are out: if one
                # disputes it and the master finds it wrong while the step is
                # open, it is taken out again (StepSum.swap)
                self.step_sum.keep_for_dispute(tid, buf)
        self.step_sum.add(buf, is_grad, more_coming=bool(open_ids))
        if is_grad:
            c = buf.get("compute_s")
            self._task_s = c if self._task_s is None else 0.9 * self._task_s + 0.1 * c
            self.backoff.cap_for(self._task_s)

    def _diverged_check(self, tid: int, rank: int, open_ids: set, total: dict) -> None:
        """Non-finite results: a fault of one rank (a strike), or divergence.

        When two ranks got NaN/inf for the same task, or every live worker
        did (a lone worker, or the last one left), the master computes the
        task itself before it calls it a divergence: a finite result of its
        own proves those ranks wrong (they keep their strikes, the master's
        result is applied); a non-finite one is a divergence."""
        ranks = self._nonfinite.setdefault(tid, set())
        ranks.add(rank)
        live = set(self.sched.live_workers())
        if not (len(ranks) >= 2 or (live and live <= ranks)):
            return
        task = self.sched.task(tid)
        if task is not None and task.kind == "grad":
            if self.sched.is_open(task):
                self._arbitrate(task, open_ids, total)
            if self.sched.is_done(task):
                return    # a finite result of the task stands: those ranks are wrong, not the model
        raise TrainingDiverged(
            f"training diverged at step {self.state.step}: the loss or gradients are NaN/inf on "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, sorted(ranks)))}; "
            "lower [optimizer] lr or check the data")

    # -- training -------------------------------------------------------------
    def train(self) -> TrainState:
        cfg = self.cfg
        tr = cfg["train"]
        train = self.splits[cfg["data"]["train_split"]]
        self._snippet_size = int(self.ds.attrs.get("snippet_size", int(train.snippets["count"].max())))
        max_steps = tr["max_steps"]
        from ..engine import make_schedule

        steps_per_epoch = self._plan(0).num_steps
        total_steps = tr["epochs"] * steps_per_epoch
        if max_steps:
            total_steps = min(total_steps, max_steps)
        self.rec.begin(self, {"train_snippets": int(train.num_snippets), "steps_per_epoch": steps_per_epoch,
                              "epochs": tr["epochs"], "max_steps": max_steps})
        self.lr_schedule = make_schedule(dict(cfg["optimizer"]), total_steps)
        # the state training starts from is kept as a checkpoint: the point a
        # rollback returns to when every later result is in doubt
        self.rec.checkpoint(self, keep_only=True)
        while True:
            try:
                self._train_epochs()
                return self.state
            except RollBack as rb:
                self._roll_back(rb)

    def _plan(self, epoch: int):
        tr = self.cfg["train"]
        return make_plan(self.splits[self.cfg["data"]["train_split"]].num_snippets, epoch, seed=tr["seed"],
                         batch_size=tr["batch_size"], snippet_size=self._snippet_size,
                         task_snippets=tr["task_snippets"])

    def _train_epochs(self) -> None:
        """Train from :attr:`state` to the end (raises :class:`RollBack`)."""
        cfg, st = self.cfg, self.state
        tr = cfg["train"]
        train = self.splits[cfg["data"]["train_split"]]
        max_steps = tr["max_steps"]
        while st.epoch < tr["epochs"]:
            plan = self._plan(st.epoch)
            window = {"loss_sum": 0.0, "samples": 0, "correct": 0.0}
            while st.step_in_epoch < plan.num_steps:
                if max_steps and st.step >= max_steps:
                    break
                for r in self.sched.begin_step(st.step, self.clock()):
                    self._send_params(only=r)
                tasks = self._new_tasks(plan.step_tasks(st.step_in_epoch), "grad", train.name)
                t0 = time.perf_counter()
                total = self.run_tasks(tasks)
                self._check_loss(total)
                t1 = time.perf_counter()
                self.apply_update(total["samples"])
                self.rec.step_record(st, total)
                tm = self.timing
                tm["steps"] += 1
                tm["wait_s"] += t1 - t0
                tm["update_s"] += time.perf_counter() - t1
                tm["worker_compute_s"] += total["compute_s"]
                tm["worker_idle_s"] += total.get("idle_s", 0.0)
                for k in window:
                    window[k] += total[k]
                if st.step % tr["log_every"] == 0 or st.step_in_epoch == plan.num_steps:
                    self.rec.on_step(st, window, plan.num_steps,
                                     {"lr": self.opt.last_lr, "grad_norm": self.opt.last_grad_norm})
                    window = {"loss_sum": 0.0, "samples": 0, "correct": 0.0}
                ck = cfg["run"]["checkpoint_every_steps"]
                if ck and st.step % ck == 0 and st.step_in_epoch < plan.num_steps:
                    self.rec.checkpoint(self)
            stopped_early = bool(max_steps and st.step >= max_steps and st.step_in_epoch < plan.num_steps)
            if not stopped_early:
                st.epoch += 1
                st.step_in_epoch = 0
            last = stopped_early or st.epoch >= tr["epochs"]
            ev = tr["eval_every"]
            metrics = {"epoch": st.epoch, "step": st.step}
            if last or (ev and st.epoch % ev == 0):
                metrics.update(self.evaluate())
            st.history.append(metrics)
            self.rec.on_epoch(st, metrics)
            self.rec.checkpoint(self)
            if stopped_early:
                break

    def _check_loss(self, total: dict) -> None:
        """A step whose loss exploded is audited before it is applied: it is
        redone with every result recomputed by the master (a wrong one rolls
        training back); if they are all right the jump is real."""
        if not self.worker_ranks or total["samples"] <= 0:
            return
        loss = total["loss_sum"] / total["samples"]
        step = self.state.step
        if not self.loss_watch.exploded(loss, audited=self._audit_step == step):
            return
        if self._audit_step == step:
            raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss:.3g} although the "
                                   "master's audit confirmed every result of the step; lower [optimizer] lr "
                                   "or check the data")
        raise RollBack(step, f"the loss jumped to {loss:.3g} at step {step}: every result of the step is "
                             "audited before it is applied", audit_step=True)

    def _roll_back(self, rb: RollBack) -> None:
        """Go back to ``rb.to_step``: the start of the current step (its
        results are dropped and computed again), or the newest kept
        checkpoint at or before it (parameters, optimizer state and position
        restored).  Open tasks are dropped, the parameter version moves on
        (workers skip the tasks they still hold) and every live worker gets
        the parameters to go on from."""
        from .. import checkpoint as ckpt

        now = self.clock()
        was = self.state.step
        path = None
        if rb.to_step < was:
            path = self.rec.checkpoint_at_or_before(rb.to_step)
            if path is None:
                raise RavenError(f"{rb.reason}; their unproven results reach back to step {rb.to_step}, and no "
                                 f"checkpoint from before it is kept in {self.rec.dir}: the run stops (raise "
                                 "[run] keep_checkpoints or restart it without those ranks)")
            ck = ckpt.load_checkpoint(path)
            self._writable_params()
            self.model.params[:] = ck["params"]
            self.opt.load_state_dict(ck["optimizer_state"])
            self.state = TrainState(**ck["train_state"])
        self.sched.rollback(self.state.step, now, reason=f"rolled back: {rb.reason}")
        self._held.clear()
        self._local.clear()
        self._nonfinite.clear()
        self.step_sum.reset()
        self._audit_step = self.state.step if rb.audit_step else None
        if path is not None:
            self.loss_watch.reset()   # the loss is judged afresh from the restored point
        self.version += 1
        self.stats["rollbacks"] = self.stats.get("rollbacks", 0) + 1
        self.rec.ledger(self.sched.drain_events(), self.hosts)
        self.rec.rollback(was, self.state.step, rb.reason, rb.guilty, path, self.state.samples)
        self._send_params()

    def apply_update(self, samples: int) -> None:
        if samples <= 0:
            raise ProtocolError(f"step {self.state.step} finished with no samples")
        self._writable_params()
        nt = self.model.num_trainable
        grad = self.step_gradient()
        # the optimizer sees the trainable parameters; the rest of the vector
        # is layer state (batch-norm running statistics), updated from the
        # statistics the workers summed into the tail of their gradients
        self.opt.step(self.model.params[:nt], grad[:nt], scale=1.0 / samples,
                      lr=self.lr_schedule.lr_at(self.state.step))
        if self.model.num_state:
            self.model.update_state(self.model.params, grad[nt:], samples)
        self.step_sum.release()
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.state.samples += samples
        self._send_params()

    def step_gradient(self) -> np.ndarray:
        """The gradient sum of the tasks :meth:`run_tasks` just ran: the
        float64 accumulator, or the one received buffer when only one result
        was applied."""
        return self.step_sum.gradient()

    def evaluate(self) -> dict:
        name = self.cfg["data"]["test_split"]
        if not name:
            return {}
        split = self.splits[name]
        groups = eval_tasks(split.num_snippets, self.cfg["train"]["eval_task_snippets"])
        total = self.run_tasks(self._new_tasks(groups, "eval", name))
        n = max(1, total["samples"])
        return {"test_loss": total["loss_sum"] / n, "test_accuracy": total["correct"] / n,
                "test_samples": total["samples"]}
