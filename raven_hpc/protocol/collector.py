"""A gradient collector: a worker to its parent, a master to its group.

To its parent (rank 0 or a collector one level up) a collector is a worker:
it says hello, takes parameter versions and tasks, and returns one result
per task.  To its group it is a master: it cuts each task it is given into
sub-tasks of ``train.task_snippets`` snippets, runs its own
:class:`~raven_hpc.protocol.scheduler.Scheduler` over its children (earliest
finish by measured speed, chunks, backups for stragglers, hung workers,
strikes for non-finite results, failed processes), checks every result
(finite, the expected size) and sums the accepted ones in float64.  When
every sub-task of a task is accepted, one float32 sum goes up -- so a
parent receives one message per task from the whole group, however large
the group is.  Parameters go down the same way: received once, sent on
from the same buffer to every child.

Which results count is decided at the top: a task is accepted exactly once
in the group's scheduler, and the group's sum is a result the parent's
scheduler accepts, compares (copies of a voted task go to distinct groups,
which sit on distinct nodes) or audits like any worker's.  For every
sub-task the collector keeps which child computed it and a check value of
its result: the full fingerprint when the parent will compare the task's
copies (the task message says so), else the squared norm, loss and correct
count the finiteness check computes anyway (a fingerprint costs several
times a dot product per result).  When the parent rejects a group's result ("wrong"), the
collector recomputes the task's sub-tasks itself -- it is trusted like the
master, and still holds the parameters they were computed on -- excludes
every child whose fingerprint differs from its own ("proven wrong") and
tells the parent whom it convicted, so the wrong worker is named and only
it leaves, not its group.

The reported compute time of a task is its children's compute time divided
by the number of children, so the parent learns the group's throughput.

When the parent stops giving the collector work -- excluded (its sum proven
wrong while its recomputation found every part right, or too many strikes)
or drained -- it tells it to *release* its group: the collector drops its
open tasks and tells each child (but those it excluded) to re-attach to the
collector's parent, as when a collector fails.  The collector then serves on
as a worker of its own: idle until the stop, which it still passes to the
children it kept; readmitted, it computes its tasks itself.  A collector
leading collectors releases them the same way.

``[faults]`` rules naming a collector: ``sleep``, ``hang`` and ``crash`` act
when a task arrives from the parent; ``scale``, ``bitflip`` and ``nan``
corrupt the sum it sends up.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ProtocolError
from ..kernels.reduce import FP_SIZE, accumulate, fingerprint
from ..ledger_schema import COLLECTOR, COPY, EV, GRAD, GROUP_SUM, collector_ledger_name
from . import signals
from .faults import FaultInjector
from .messages import (KIND_EVAL, KIND_GRAD, TAG_CTRL, TAG_DATA, TAG_PARAMS, TAG_RESULT, ResultBuffer, check_hello,
                       hello_backends)
from .housekeeping import Housekeeper
from .pump import Pump
from .scheduler import EXCLUDED, FP_CORRECT, FP_LOSS, FP_SQ, MOVED, Scheduler, Task, agree
from .step import fp_seed
from .transport import Backoff, hostname, send_error
from .worker import TaskRunner

__all__ = ["Collector", "run_collector"]

STARTUP_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
STOP_QUIET_S = 0.05


@dataclass
class _Open:
    """A task from the parent whose sub-tasks are being computed."""

    msg: dict
    subs: set                               # sub-task ids not yet accepted
    acc: np.ndarray | None                  # float64 gradient sum (None: evaluation)
    samples: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    compute_s: float = 0.0
    finite: bool = True
    by: dict = field(default_factory=dict)  # sub-task id -> (snippets, rank, fingerprint) of the accepted result
    data: object = None                     # scatter: the task's snippets as the parent sent them (TaskData)


class Collector:
    """Leads ``children`` for ``parent`` (see the module docstring)."""

    def __init__(self, comm, cfg: dict, ancestors, children: list[int], model, splits: dict,
                 clock=time.monotonic, slots: dict | None = None):
        self.comm = comm
        self.cfg = cfg
        self.rank = comm.Get_rank()
        self.ancestors = list(ancestors)     # parent first, up to rank 0
        self.parent = self.ancestors[0]
        self.children = list(children)
        self.model = model
        self.n = int(model.num_params)
        self.splits = splits
        self.counts = {name: np.asarray(sp.snippets["count"]) for name, sp in splits.items()}
        self.runner = TaskRunner(model, splits)     # recomputes sub-tasks of a rejected result
        # data.delivery = "scatter": fed by its parent, it never opens the
        # file; it checks what it is sent like a worker (its own cache, the
        # parent's mirror) and sends each piece's snippets on to the child
        # that computes it, like rank 0 (a mirror of each child's cache)
        cl = cfg["cluster"]
        self.inbox = self.scatter = self.info = None
        self._packet = None
        if cfg["data"]["delivery"] == "scatter":
            from .scatter import MIB, Inbox, Scatter, dataset_info

            self.info = dataset_info(cfg)
            self.counts = {name: self.info.counts(name) for name in self.info.split_names}
            self.inbox = Inbox(self.info, int(cl["worker_cache_mb"] * MIB))
            self.scatter = Scatter(self.info, int(cl["worker_cache_mb"] * MIB))
        self._fp = np.zeros(FP_SIZE, np.float64)
        self.rtol = cfg["poc"]["rtol"]
        self.clock = clock
        cl, poc = cfg["cluster"], cfg["poc"]
        # Within a group every sub-task is computed once; comparing copies,
        # sampled verification and audits happen at the top, across groups.
        # With collector_computes the collector is one of its group's workers.
        self.computes = bool(cl["collector_computes"])
        self._local: list[Task] = []
        self.sched = Scheduler(self.children + ([self.rank] if self.computes else []), redundancy=1, quorum=1, verify=0.0, rtol=poc["rtol"],
                               max_strikes=poc["max_strikes"], probation_steps=poc["probation_steps"],
                               backup_factor=poc["backup_factor"], prefetch=cl["prefetch"],
                               seed=cfg["train"]["seed"] + self.rank, max_chunk=1)
        # the group's scheduler never merges sub-tasks (a merge could join
        # sub-tasks of two parent tasks, whose sums must stay apart); the
        # collector cuts a parent task into pieces of several tasks instead
        self.max_piece = cl["max_chunk"] if model.sample_independent else 1
        # a child that leads a group takes work for all of it, and is given up
        # on only after its own workers could have been (patience: its levels)
        for r, (k, _) in (slots or {}).items():
            self.sched.set_slots(r, k)
        self.leaders = {r for r, (_, levels) in (slots or {}).items() if levels}   # children that lead groups
        self.keeper = Housekeeper(self.sched, backups=bool(poc["backup"]), timeout_s=poc["worker_timeout_s"],
                                  drain_file=poc["drain_file"],
                                  remove=lambda r, why: self.sched.remove_worker(r, self.clock(), why),
                                  patience={r: 1 + levels for r, (_, levels) in (slots or {}).items() if levels})
        self.backoff = Backoff(cl["poll_min_us"] * 1e-6, cl["poll_max_us"] * 1e-6)
        self.pump = Pump(comm, self.n, self.backoff, in_use=self._held_buffers, on_dead=self._on_dead)
        self.hosts = {self.rank: hostname()}
        self.backends = {self.rank: model.backend.label()}   # what each rank of the group computes on
        self.sched.set_host(self.rank, self.hosts[self.rank])
        self.version = -1
        self.step = -1
        self._wait_s: float | None = None
        self.open: dict[int, _Open] = {}       # parent task id -> its sums
        self.done: dict[int, _Open] = {}       # this step's parent tasks sent up (for a "wrong" verdict)
        self.sub_of: dict[int, int] = {}       # sub-task id -> parent task id
        self._next_sub = 1
        self._up: list[ResultBuffer] = []      # result buffers going up
        self.parent_dead = False
        self.stop_message: dict | None = None
        # [faults] rules naming a collector: crash, hang or sleep when a task
        # arrives; scale, bitflip or nan on the sum it sends up
        self.faults = FaultInjector(cfg["faults"]["rules"], self.rank)
        self._ledger = None
        self.t0 = clock()
        if poc["ledger"]:
            run_dir = Path(cfg["run"]["dir"])
            self._ledger = open(run_dir / collector_ledger_name(self.rank), "a", buffering=1 << 16)

    # -- plumbing ---------------------------------------------------------------
    def _held_buffers(self):
        return ()

    def _on_dead(self, rank: int) -> None:
        if rank in self.ancestors:
            self.parent_dead = True
        elif self.sched.is_worker(rank):
            self.sched.mark_dead(rank, self.clock(), "process failed (reported dead by MPI)")

    def _up_buffer(self, nbytes: int) -> ResultBuffer:
        for b in self._up:
            if b.raw.nbytes == nbytes and not self.pump.outbox.holds(b):
                return b
        b = ResultBuffer.for_nbytes(nbytes)
        self._up.append(b)
        return b

    def _send_params(self, ranks) -> None:
        """The current parameters to those of ``ranks`` that are children
        (a computing collector is in its own scheduler, and has them)."""
        self.pump.send_params([r for r in ranks if r != self.rank], self.version)

    def _to_parent(self, obj: dict) -> None:
        self.pump.send_ctrl(self.parent, obj)

    # -- life ---------------------------------------------------------------------
    def run(self) -> dict:
        """Serve the parent until it says stop; returns the stop message."""
        self._hello()
        while self.stop_message is None:
            now = self.clock()
            self._send_tasks(self.sched.assign(now))
            got = self._poll()
            if not got and self._local:
                got = self._compute_one()
            self._housekeeping()
            if self.parent_dead:
                self._reattach()
            if got:
                self.backoff.busy()
            else:
                self.pump.idle(self.sched.next_expected(), self.clock())
        self._write_events()
        return self.stop_message

    def _reattach(self, ancestors=None, why: str | None = None) -> None:
        """The parent's process failed, or it released its group (then
        ``ancestors`` are its own and ``why`` says why): attach, with the
        whole group, to the nearest live ancestor.  The parent's tasks are
        gone with it."""
        self.parent_dead = False
        if ancestors is not None:
            self.ancestors = [int(r) for r in ancestors]
        while self.ancestors and self.ancestors[0] in self.pump.dead:
            if self.ancestors[0] == 0:
                raise ProtocolError(f"collector {self.rank}: the master (rank 0) failed")
            self.ancestors.pop(0)
        self.parent = self.ancestors[0]
        for pid in list(self.open):
            self._drop(pid)
        if self.inbox is not None:
            self.inbox.reset()      # the new parent knows nothing of its cache
            self._packet = None
        self._to_parent(self._hello_message(reattach=True, why=why))

    def _hello_message(self, reattach: bool = False, why: str | None = None) -> dict:
        msg = {"type": "ready", "rank": self.rank, "host": self.hosts[self.rank], "num_params": self.n,
               "members": {str(r): h for r, h in self.hosts.items()},
               "backend": self.backends[self.rank], "backends": {str(r): b for r, b in self.backends.items()}}
        if reattach:
            msg["reattach"] = True
            if why:
                msg["why"] = why
        return msg

    def _release(self, why: str) -> None:
        """The parent gives this collector no more work (``why``: "excluded"
        or "drained"): every child but those it excluded (and the dead)
        re-attaches to the parent, and the collector goes on as a worker of
        its own (see the module docstring)."""
        now = self.clock()
        for pid in list(self.open):
            self._drop(pid)
        self._local.clear()
        if not self.computes:
            self.computes = True
            self.sched.add_worker(self.rank, now)
            self.sched.set_host(self.rank, self.hosts[self.rank])
            # kernels compiled (or loaded) now, while it has nothing to do,
            # not in the first result it may be timed on
            self.runner.warm_up(self.cfg["data"]["train_split"], ResultBuffer(self.n), self.info)
        told = f"its collector (rank {self.rank}) was {why}"
        keep = []
        for r in self.children:
            if r in self.pump.dead or self.sched.status(r) == EXCLUDED:
                keep.append(r)      # an excluded child stays out of work; its stop comes from here
                continue
            self.sched.release(r, now, f"re-attached to rank {self.parent}: {told}")
            self.pump.send_ctrl(r, {"type": "reattach", "ancestors": self.ancestors, "why": told})
        self.children = keep
        self.leaders.clear()
        self._write_events()

    def close(self, message: dict) -> bool:
        """Pass the stop on to the children and wait until they took it."""
        ok = self.pump.stop(self.children, message, STOP_TIMEOUT_S, STOP_QUIET_S, self.clock)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        return ok

    def _hello(self) -> None:
        """Wait for every child's hello, then say hello to the parent for the group."""
        waiting = set(self.children)
        t0 = self.clock()
        while waiting:
            got = self._poll(hello=waiting)
            if self.stop_message is not None:
                return
            if not got:
                if self.clock() - t0 > STARTUP_TIMEOUT_S:
                    raise ProtocolError(f"collector {self.rank}: ranks {sorted(waiting)} did not start within "
                                        f"{STARTUP_TIMEOUT_S:.0f} s")
                self.backoff.idle()
            else:
                self.backoff.busy()
        self._to_parent(self._hello_message())
        self._record({EV: COLLECTOR, "collector": self.rank, "parent": self.parent, "children": self.children,
                      "hosts": {str(r): h for r, h in sorted(self.hosts.items())}, "unix_time": time.time()})

    # -- messages -------------------------------------------------------------------
    def _poll(self, hello: set | None = None) -> bool:
        got = False
        for msg, src, tag, nbytes in self.pump.arrivals():
            got = True
            if src == self.parent:
                try:
                    self._from_parent(msg, tag, nbytes)
                except self.pump.MPI.Exception as exc:   # the parent died mid-message
                    self.pump.process_failed(exc)
                    return True
                if self.stop_message is not None:
                    return True
            elif tag == TAG_RESULT:
                if hello is None and self.sched.is_lost(src):
                    self._readmit(src, "answered again after it was given up on")
                self.pump.receive_result(msg, src, nbytes)
            elif tag == TAG_CTRL:
                self._control(src, msg.recv(), hello)
            else:
                raise ProtocolError(f"collector {self.rank}: unexpected message tag {tag} from rank {src}")
        for p in self.pump.completed():
            got = True
            if p.buf is not None:
                self._take(p.rank, p.buf)
        return got

    def _from_parent(self, msg, tag: int, nbytes: int) -> None:
        MPI = self.pump.MPI
        if tag == TAG_PARAMS:
            if self.pump.writable_params():
                pass   # the previous version is still being sent: the next goes to another buffer
            buf = self.pump.params_buf
            msg.Recv([buf.raw, MPI.BYTE])
            version = int(buf.header[0])
            if version > self.version and self.version >= 0:
                self._drop_older(version)
            self.version = version
            self.model.bind_params(buf.params, copy=False)   # the received values are the parameters
            self._send_params(self.sched.live_workers())
        elif tag == TAG_DATA:
            self._packet = np.empty(nbytes, np.uint8)
            msg.Recv([self._packet, MPI.BYTE])
        elif tag == TAG_CTRL:
            obj = msg.recv()
            kind = obj.get("type")
            if kind == "task":
                data = self._delivered(obj) if obj.get("data") else None
                if data is not False:
                    self._submit(obj, data)
            elif kind == "wrong":
                self._check_wrong(obj)
            elif kind == "release":
                self._release(str(obj.get("why", "removed")))
            elif kind == "reattach":
                self._reattach(obj["ancestors"], obj.get("why"))
            elif kind == "stop":
                self.stop_message = obj
            else:
                raise ProtocolError(f"collector {self.rank}: unknown control message {kind!r} from its parent")
        else:
            raise ProtocolError(f"collector {self.rank}: unexpected message tag {tag} from its parent")

    def _control(self, src: int, obj: dict, hello: set | None) -> None:
        kind = obj.get("type")
        if kind == "ready":
            self.hosts.update(check_hello(obj, src, self.n, f"collector {self.rank}"))
            self.backends.update(hello_backends(obj, src))
            self.sched.set_host(src, obj["host"])
            if hello is not None:
                hello.discard(src)
            elif obj.get("reattach"):
                # a rank whose own collector failed, or released its group, joins this group
                if src not in self.children:
                    self.children.append(src)
                members = obj.get("members") or {}
                if len(members) > 1:
                    self.leaders.add(src)
                    self.sched.set_slots(src, len(members) - 1)
                self.sched.add_worker(src, self.clock(), f"re-attached: {obj.get('why') or 'its collector failed'}")
                if self.scatter is not None:
                    self.scatter.reset(src)
                self.keeper.joined()
                self.pump.send_params([src], self.version)
        elif kind == "skipped":
            reason = None
            if obj.get("missing") is not None and self.scatter is not None:
                self.scatter.report(src, obj.get("gen"))
                reason = f"snippets {obj['missing']} it was to hold were not in its cache: sent again"
            if self.sched.task(obj["task"]) is not None:
                self.sched.skipped(src, obj["task"], self.clock(), reason=reason)
        elif kind == "bad_data" and self.scatter is not None:
            self._bad_data(src, obj)
        elif kind == "error":
            # errors go to rank 0 directly; one reaching a collector is passed on
            self.pump.send_ctrl(0, obj)
        else:
            raise ProtocolError(f"collector {self.rank}: unknown control message {kind!r} from rank {src}")

    # -- tasks ------------------------------------------------------------------------
    def _delivered(self, msg: dict):
        """The snippets that came with the parent's task ``msg`` (scatter):
        checked on arrival like a worker's.  Their :class:`TaskData`, or
        False when the task cannot be run here (the parent is told why)."""
        from .worker import _delivered

        packet, self._packet = self._packet, None
        got = _delivered(msg, packet, self.inbox, self.faults, self.comm, self.pump.outbox, self.parent, self.rank)
        return False if got is None else got.pop("_data")

    def _submit(self, msg: dict, data=None) -> None:
        """A task from the parent: cut into sub-tasks for the group (one of
        an older version than the parameters held is skipped).  ``data``:
        its snippets (scatter)."""
        if int(msg["version"]) < self.version:
            self._to_parent({"type": "skipped", "task": int(msg["task"])})
            return
        step = int(msg["step"])
        if self.faults.active and msg["kind"] == GRAD:
            self.faults.before(step, int(msg["task"]))
        if step > self.step:
            self.step = step
            self.done.clear()
            for r in self.sched.begin_step(step, self.clock()):
                self._send_params([r])
        tr = self.cfg["train"]
        per = tr["task_snippets"] if msg["kind"] == GRAD else tr["eval_task_snippets"]
        snippets = list(msg["snippets"])
        # pieces of whole tasks, about two per child, at most max_chunk tasks
        tasks = -(-len(snippets) // per)
        children = max(1, len(self.sched.live_workers()))
        per *= max(1, min(self.max_piece, -(-tasks // (2 * children))))
        counts = self.counts[msg["split"]]
        acc = np.zeros(self.n, np.float64) if msg["kind"] == GRAD else None
        entry = _Open(msg, set(), acc, data=data)
        subs = []
        for i in range(0, max(len(snippets), 1), per):
            part = tuple(snippets[i:i + per])
            sid = self._next_sub
            self._next_sub += 1
            subs.append(Task(sid, step, part, kind=msg["kind"], split=msg["split"], version=int(msg["version"]),
                             samples=int(counts[list(part)].sum()) if part else 0))
            entry.subs.add(sid)
            self.sub_of[sid] = int(msg["task"])
        self.open[int(msg["task"])] = entry
        self.sched.submit(subs)

    def _compute_one(self) -> bool:
        """Compute one piece given to the collector itself (collector_computes);
        a piece of an older version than the parameters held is skipped."""
        task = self._local.pop(0)
        if self.sched.task(task.task_id) is None:
            return False
        if task.version < self.version:
            self.sched.skipped(self.rank, task.task_id, self.clock())
            return False
        buf = self.pump.result_buffer(ResultBuffer.nbytes_for(self.n if task.kind == GRAD else 0))
        msg = task.message()
        entry = self.open.get(self.sub_of.get(task.task_id))
        if entry is not None:
            msg["_data"] = entry.data
        self.runner.run(msg, buf)
        self._take(self.rank, buf)
        return True

    def _send_tasks(self, assignments) -> None:
        for rank, task in assignments:
            if rank == self.rank:
                self._local.append(task)
                continue
            msg = task.message()
            msg["type"] = "task"
            if self.scatter is not None:
                entry = self.open.get(self.sub_of.get(task.task_id))
                if entry is None or entry.data is None:
                    # its parent task is gone (dropped): nothing to send it with
                    self.sched.skipped(rank, task.task_id, self.clock(), reason="its parent's task was dropped")
                    continue
                data = entry.data
                crc = [data.checksums[int(i)] for i in msg["snippets"]]
                fetch = lambda split, ids, d=data.data: {i: d[i] for i in ids}   # noqa: E731
                self.pump.send_data(rank, self.scatter.packet(rank, msg, crc, fetch))
                msg["data"] = True
            self.pump.send_ctrl(rank, msg)

    def _bad_data(self, src: int, obj: dict) -> None:
        """A child found the snippets of a piece damaged on arrival (see
        Master._bad_data): the copy is rejected without a strike and the
        piece computed by another child; rank 0 hears of it (a notice)."""
        from ..ledger_schema import TRANSIT

        self.scatter.report(src, obj.get("gen"))
        sid, ids = obj["task"], obj.get("snippets") or []
        host = self.hosts.get(src, obj.get("host", "?"))
        named = f"snippet{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
        why = obj.get("why", "damaged")
        if self.sched.task(sid) is not None:
            self.sched.complete(src, sid, self.clock(), ok=False, strike=False,
                                reason=f"{TRANSIT}: {named} {why} at rank {src} ({host}); not computed, no strike")
        self.pump.send_ctrl(0, {"type": "notice", "transit": True,
                                "text": f"rank {src} ({host}): {named} of a piece of task "
                                        f"{self.sub_of.get(sid, '?')} {why} ({TRANSIT}) on its way from collector "
                                        f"{self.rank}: the piece is rejected and computed again"})

    def _take(self, rank: int, buf: ResultBuffer) -> None:
        sid = int(buf.get("task"))
        task = self.sched.task(sid)
        if task is None:
            return   # a late copy of a sub-task already settled
        is_grad = int(buf.get("kind")) != KIND_EVAL
        finite = bool(buf.get("finite")) and np.isfinite(buf.get("loss_sum"))
        fp = None
        if is_grad:
            if buf.grad.shape[0] != self.n:
                raise ProtocolError(f"rank {rank} sent a gradient of {buf.grad.shape[0]} values, expected {self.n}")
            # a check value that names the child if the parent later rejects
            # the group's sum (one pass, which also finds NaN/inf)
            parent = self.open.get(self.sub_of.get(sid))
            if parent is not None and parent.msg.get("compared"):
                finite = finite and fingerprint(buf.grad, fp_seed(self.cfg["train"]["seed"], task.step), self._fp)
                fp = (*self._fp, buf.get("loss_sum"), buf.get("correct"))
            else:
                sq = float(np.dot(buf.grad, buf.grad))
                finite = finite and bool(np.isfinite(sq))
                fp = (sq, buf.get("loss_sum"), buf.get("correct"))
        verdict = self.sched.complete(rank, sid, self.clock(), ok=finite,
                                      reason="" if finite else "non-finite result", compute_s=buf.get("compute_s"))
        lat = self.sched.last_latency_s
        if lat is not None:   # sleep at most a fraction of how long results take (see Master._learn_wait)
            self._wait_s = lat if self._wait_s is None else 0.9 * self._wait_s + 0.1 * lat
            self.backoff.cap_for(self._wait_s)
        if not verdict.accept:
            return
        parent_id = self.sub_of.get(sid)
        entry = self.open.get(parent_id)
        if entry is None:
            return
        entry.subs.discard(sid)
        entry.by[sid] = (task.snippets, rank, fp)
        if is_grad:
            accumulate(entry.acc, buf.grad)
        entry.samples += int(buf.get("samples"))
        entry.loss_sum += buf.get("loss_sum")
        entry.correct += buf.get("correct")
        entry.compute_s += buf.get("compute_s")
        if not entry.subs:
            self._finish(parent_id, entry)

    def _finish(self, parent_id: int, entry: _Open) -> None:
        """Every sub-task of a parent task is accepted: send the sum up."""
        msg = entry.msg
        is_grad = msg["kind"] == GRAD
        out = self._up_buffer(ResultBuffer.nbytes_for(self.n if is_grad else 0))
        if is_grad:
            np.copyto(out.grad, entry.acc, casting="same_kind")
            if self.faults.active:
                self.faults.corrupt(msg["step"], parent_id, out.grad)
        workers = max(1, len(self.sched.live_workers()))
        out.set(kind=KIND_GRAD if is_grad else KIND_EVAL, step=msg["step"], task=parent_id, version=msg["version"],
                samples=entry.samples, loss_sum=entry.loss_sum, correct=entry.correct,
                compute_s=entry.compute_s / workers, finite=1.0, recv_wait_s=0.0)
        try:
            self.pump.outbox.add(self.comm.Isend([out.raw, self.pump.MPI.BYTE], dest=self.parent, tag=TAG_RESULT),
                                 out)
        except self.pump.MPI.Exception as exc:
            self.pump.process_failed(exc)
        self.pump.stats["bytes_out"] += out.raw.nbytes
        subs = [s for s, p in self.sub_of.items() if p == parent_id]
        self._write_events()
        self._record({EV: GROUP_SUM, "collector": self.rank, "step": int(msg["step"]), "task": parent_id,
                      "kind": msg["kind"], "subs": sorted(entry.by), "samples": entry.samples,
                      "t": round(self.clock() - self.t0, 6)})
        if self._ledger is not None:
            self._ledger.flush()   # what went up is on record (the kernel has it) before more is done
        for s in subs:
            del self.sub_of[s]
        self.sched.forget(subs)
        del self.open[parent_id]
        entry.acc = None
        self.done[parent_id] = entry

    def _drop_older(self, version: int) -> None:
        """A new parameter version (the parent applied an update, or rolled
        back): the tasks of older versions still open here can no longer be
        computed on their own parameters.  Each is dropped and the parent
        told ``skipped`` (the copy was never finished); the children skip
        the pieces they still hold, and pieces already computed come back
        late."""
        for pid in [pid for pid, e in self.open.items() if int(e.msg["version"]) < version]:
            self._drop(pid)
            self._to_parent({"type": "skipped", "task": pid})

    def _drop(self, pid: int) -> None:
        """Forget an open parent task and its sub-tasks."""
        subs = [s for s, p in self.sub_of.items() if p == pid]
        for s in subs:
            del self.sub_of[s]
        self.sched.close(subs, self.clock())
        self.sched.forget(subs)
        del self.open[pid]

    def _check_wrong(self, obj: dict) -> None:
        """The parent rejected the group's result for ``obj["task"]``:
        recompute its sub-tasks, convict the children whose results differ,
        and tell the parent whom (none: the parts were right).  ``full``
        says every part was checked against its whole fingerprint: only then
        may the parent, having proven the sum wrong, blame the collector's
        own sum (a short check value -- norm, loss, correct count -- does not
        rule out a wrong part)."""
        pid = int(obj["task"])
        entry = self.done.get(pid)
        guilty: list[int] = []
        checked = full = False
        if entry is not None and int(entry.msg["version"]) == self.version and entry.msg["kind"] == GRAD:
            checked = True
            full = all(fp is not None and len(fp) == FP_SIZE + 2 for _, _, fp in entry.by.values())
            now = self.clock()
            out = ResultBuffer(self.n)
            seed = fp_seed(self.cfg["train"]["seed"], int(entry.msg["step"]))
            for snippets, rank, fp in entry.by.values():
                if rank in guilty:
                    continue
                self.runner.run({"task": pid, "step": entry.msg["step"], "kind": GRAD, "split": entry.msg["split"],
                                 "version": self.version, "snippets": list(snippets), "_data": entry.data}, out)
                fingerprint(out.grad, seed, self._fp)
                mine = (*self._fp, out.get("loss_sum"), out.get("correct"))
                if fp is None or not self._same(fp, mine):
                    guilty.append(rank)
                    if self.sched.status(rank) == MOVED:
                        continue    # it re-attached to the parent since: the parent excludes it
                    self.sched.convict(rank, now, f"its result for snippets {list(snippets)} of step "
                                                  f"{entry.msg['step']} differs from collector {self.rank}'s "
                                                  f"recomputation (the parent rejected the group's task {pid})")
            self._write_events()
        self._to_parent({"type": "convicted", "task": pid, "ranks": guilty, "checked": checked, "full": full})

    def _same(self, kept: tuple, mine: tuple) -> bool:
        """Does a child's kept check value match the collector's own
        recomputation?  A full fingerprint is compared in full; a short one
        (squared norm, loss, correct) with the same tolerances."""
        if len(kept) == len(mine):
            return agree(kept, mine, self.rtol)[0]
        short = (0.0,) * (len(mine) - 3) + tuple(kept)
        full = (0.0,) * (len(mine) - 3) + (mine[FP_SQ], mine[FP_LOSS], mine[FP_CORRECT])
        return agree(short, full, self.rtol)[0]

    # -- membership ------------------------------------------------------------------
    def _housekeeping(self) -> None:
        backups = self.keeper.tick(self.clock())
        if backups is not None:
            self._send_tasks(backups)
            # child collectors this one gives no more work to release their groups
            for r, why in self.keeper.to_release(self.leaders):
                self.leaders.discard(r)
                self.pump.send_ctrl(r, {"type": "release", "why": why})
            self._write_events()

    def _readmit(self, rank: int, reason: str) -> None:
        self.sched.add_worker(rank, self.clock(), reason)
        self._send_params([rank])

    def _write_events(self) -> None:
        events = self.sched.drain_events()
        if self.scatter is not None:
            events += self.scatter.drain_sent(self.step)
        if self._ledger is None or not events:
            return
        out = []
        for e in events:
            e["host"] = self.hosts.get(e.get("rank"), "?")
            e["collector"] = self.rank
            if e.get(EV) == COPY:
                e["parent_task"] = self.sub_of.get(e.get("task"))
                for k in ("assigned", "finished"):
                    if e.get(k) is not None:
                        e[k] = round(e[k] - self.t0, 6)
            out.append(json.dumps(e))
        self._ledger.write("\n".join(out) + "\n")
        if any(e.get(EV) != COPY for e in events):
            self._ledger.flush()

    def _record(self, rec: dict) -> None:
        if self._ledger is not None:
            self._ledger.write(json.dumps(rec) + "\n")


def run_collector(comm, cfg: dict, ancestors, children: list[int], slots: dict | None = None) -> None:
    """A collector rank's whole life (exceptions reach rank 0, then are re-raised)."""
    coll = None
    try:
        from ..engine import build_model
        from .worker import open_splits

        if cfg["data"]["delivery"] == "scatter":
            from .scatter import dataset_info

            info = dataset_info(cfg)    # fed by its parent: it never opens data.path
            ds, splits, shape, classes = None, {}, info.feature_shape, info.num_classes
        else:
            cfg_c = json.loads(json.dumps(cfg))
            if not cfg["cluster"]["collector_computes"]:
                cfg_c["data"]["cache"] = False      # it reads only the snippet tables (and a rejected task's pieces)
            info = None
            ds, splits = open_splits(cfg_c)
            shape, classes = ds.feature_shape, ds.num_classes
        model = build_model(cfg["model"], tuple(shape), int(classes), backend=cfg["cluster"]["backend"])
        coll = Collector(comm, cfg, ancestors, children, model, splits, slots=slots)
        if coll.computes:   # compile (or load) the kernels before the first timed piece, as workers do
            coll.runner.warm_up(cfg["data"]["train_split"], ResultBuffer(model.num_params), info)
        coll.ds = ds
        stop = coll.run()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the master
        send_error(comm, exc)
        exc.parent = coll.parent if coll is not None else ancestors[0]
        if coll is not None:
            exc.collector = coll
        raise
    coll.close(stop)
    coll.pump.outbox.flush(coll.backoff, timeout_s=STOP_TIMEOUT_S)
    if coll.ds is not None:
        coll.ds.close()
    signals.stop_received(bool(stop.get("interrupted")))
    if stop.get("peer_failed"):
        from . import transport

        transport.peer_failed = True
