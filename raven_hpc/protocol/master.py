"""The master (rank 0): owns the model, the optimizer and the schedule.

One loop drives everything: it asks the :class:`Scheduler` what to send,
sends it without blocking, matches whatever arrives from any rank
(``Improbe`` on any source and tag), receives it with ``Message.Irecv``, and
feeds results back to the scheduler.  It never blocks on one rank, and when
nothing happens it sleeps a little longer each round instead of spinning.
It runs the tasks of one step (or one evaluation) to completion: the step's
accepted results end in a :class:`~raven_hpc.protocol.step.StepSum`; the
training loop (:mod:`raven_hpc.protocol.training`) applies it and asks for
the next step.  The MPI mechanics (matching, pooled receives, parameter
sends, failed processes) live in :class:`~raven_hpc.protocol.pump.Pump`.

When it is the only rank (or ``cluster.master_computes = "yes"``) the master
also appears in the scheduler as a worker and runs its tasks inline with the
same :class:`TaskRunner` the workers use.
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np

from ..errors import ConfigError, ProtocolError
from ..ledger_schema import ACCEPTED, COPY, EV, EXCLUDE as LEDGER_EXCLUDE, GRAD, REJECTED, TRANSIT
from ..kernels.reduce import FP_SIZE, fingerprint, warm_up
from .messages import KIND_EVAL, TAG_CTRL, TAG_RESULT, ResultBuffer, check_hello, hello_backends
from .housekeeping import Housekeeper
from .pump import Pump
from .scheduler import EXCLUDED, Scheduler, Task
from .topology import Tree, build_tree
from .state import RollBack, StopRequested, TrainingDiverged, TrainState
from .step import NormScreen, StepSum, fp_seed
from .transport import Backoff, hostname, raise_remote
from .worker import TaskRunner

__all__ = ["Master"]

STARTUP_TIMEOUT_S = 600.0   # workers compile kernels and cache data before saying hello
STOP_TIMEOUT_S = 30.0
STOP_QUIET_S = 0.05


class Master:
    """Runs tasks on the workers through the scheduler (see the module docstring).

    ``state`` is the training position, shared with the training loop
    (which moves it on); ``splits`` the open dataset splits the tasks name.
    """

    def __init__(self, comm, cfg: dict, model, splits: dict, recorder, state: TrainState,
                 clock: Callable[[], float] = time.monotonic, tree: Tree | None = None):
        self.comm = comm
        self.cfg = cfg
        self.model = model
        self.splits = splits
        self.rec = recorder
        self.state = state
        self.clock = clock
        cl = cfg["cluster"]
        self.size = comm.Get_size()
        # the ranks this master leads: every worker, or the top of a collector tree
        self.tree = tree if tree is not None else build_tree(self.size, 0)
        self.worker_ranks = self.tree.children_of(0)
        self.collectors = {r for r in self.worker_ranks if self.tree.children_of(r)}
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
        below = [r for r in poc.get("trusted", ()) if r < self.size and r not in self.worker_ranks]
        if below:
            raise ConfigError(f"[poc] trusted names rank{'s' if len(below) > 1 else ''} "
                              f"{', '.join(map(str, below))}, which rank 0 does not lead with collectors on "
                              f"({self.tree.describe()}): name ranks among {self.worker_ranks}, or set "
                              "[cluster] collectors = 0")
        if not self.worker_ranks:
            # alone: nobody to compare with, the master trusts itself
            poc = dict(poc, redundancy=1, quorum=1, verify=0.0)
        self.sched = Scheduler(ranks, redundancy=poc["redundancy"], quorum=poc["quorum"], verify=poc["verify"],
                               rtol=poc["rtol"], max_strikes=poc["max_strikes"],
                               probation_steps=poc["probation_steps"], backup_factor=poc["backup_factor"],
                               prefetch=cl["prefetch"], seed=cfg["train"]["seed"],
                               max_chunk=self._max_chunk(cl["max_chunk"], model.sample_independent),
                               trusted=poc.get("trusted", ()))
        for r in self.collectors:
            self.sched.set_slots(r, self.tree.workers_under(r, cl["collector_computes"]))
        # backups, hung ranks (a collector after one timeout per level below
        # it: its own workers' timeouts come first), the drain file
        self.keeper = Housekeeper(self.sched, backups=bool(poc["backup"]), timeout_s=poc["worker_timeout_s"],
                                  drain_file=poc["drain_file"], remove=self._remove,
                                  patience={r: 1 + self.tree.depth(r) for r in self.collectors})
        self._held: dict[int, dict[int, ResultBuffer]] = {}   # task -> rank -> result waiting for a quorum
        self._fp = np.zeros(FP_SIZE, np.float64)
        self.screen = NormScreen(poc["screen"])   # gradient norms per sample that are outliers
        self.interrupted: int | None = None       # signal number once told to stop
        self.backoff = Backoff(cl["poll_min_us"] * 1e-6, cl["poll_max_us"] * 1e-6)
        # data.delivery = "scatter": the master reads the snippets (ahead of
        # the schedule, when it would otherwise sleep) and sends each copy's
        # with the copy (scatter.py); its own computations read them the same way
        self.scatter = self.feeder = None
        if cfg["data"]["delivery"] == "scatter" and self.worker_ranks:
            from .scatter import FEEDER_MIN_BYTES, FEEDER_STEPS, MIB, Feeder, Scatter, dataset_info

            info = dataset_info(cfg)
            self.scatter = Scatter(info, int(cl["worker_cache_mb"] * MIB))
            step_bytes = (cfg["train"]["batch_size"] + info.snippet_size) * info.sample_nbytes
            self.feeder = Feeder(splits, info, max(FEEDER_MIN_BYTES, FEEDER_STEPS * step_bytes))
            splits = {name: self.feeder.split(name) for name in splits}
        self.runner = TaskRunner(model, splits)
        self.hosts = {0: hostname()}
        self.backends = {0: model.backend.label()}   # what each rank computes on (from the hellos)
        self.sched.set_host(0, self.hosts[0])
        self.n = model.num_params
        # the step's accepted results: float64 sum, or the one received buffer
        # when a single result settles the step (no copy on the critical path)
        self.step_sum = StepSum(self.n)
        self.pump = Pump(comm, self.n, self.backoff, in_use=self._held_buffers, on_dead=self._on_dead)
        # the model's parameters live in the pump's send buffer
        model.bind_params(self.pump.params_buf.params)
        self._wait_s: float | None = None   # EWMA of a result's time from assignment to arrival
        self._local: list[Task] = []
        self._next_task_id = 1
        # parameter version: grows by one whenever the parameters change (every
        # applied update, every rollback; :meth:`new_version`).  Every task
        # carries the version it is computed on, and a rank skips a task of
        # an older version than the parameters it holds: a copy still queued
        # anywhere (a redundant copy, a backup, prefetch) when a later
        # version arrives is never computed on parameters that are not its
        # own.  Every rank of a run starts without parameters, so a run
        # (fresh or resumed) may start the count anywhere.
        self.version = 0
        # trusted audits: which accepted results the master recomputes, drawn
        # with randomness the workers cannot predict
        self.audit_rate = float(poc.get("audit", 0.0))
        self.sched.audit_exclusions = self.audit_rate > 0.0
        self._audit_rng = random.SystemRandom()
        self.audit_step: int | None = None      # a step whose every result is audited (a suspect)
        self._nonfinite: dict[int, set] = {}
        self._proven: set[tuple[int, int]] = set()   # (collector, task): its sum proven wrong by the master
        self.stats = self.pump.stats     # messages and bytes; audits, arbitrations, rollbacks are added
        warm_up()

    def _max_chunk(self, max_chunk: int, sample_independent: bool) -> int:
        """Most tasks merged for one child: a collector stands for its whole
        group, so it may take that many times more."""
        if not sample_independent:
            return 1
        if max_chunk == 1 or self.tree.flat:
            return max_chunk
        group = max(len(self.tree.subtree(r)) - 1 for r in self.worker_ranks)
        return max_chunk * max(1, group)

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
                if not self._read_ahead():
                    self.backoff.idle()
            else:
                self.backoff.busy()
        self._say_backends()
        self._say_delivery()
        self.send_params()

    def _say_delivery(self) -> None:
        """One start-up line on how the workers get the data (nothing when
        each reads the file, as configured)."""
        note = self.cfg.get("meta", {}).get("delivery_note")
        if note is None and self.scatter is not None:
            mb = self.cfg["cluster"]["worker_cache_mb"]
            note = (f"data delivery: scatter: only rank 0 opens data.path; each task's snippets travel with it "
                    f"(checksums verified on arrival; workers keep up to {mb:g} MiB of them)")
        if note:
            self.rec.notice(note)

    # -- scattered data -----------------------------------------------------------
    def want_data(self, units) -> None:
        """The snippets the next steps (or an evaluation) need, in order:
        read ahead of the schedule (scatter only)."""
        if self.feeder is not None:
            self.feeder.want(units)

    def _read_ahead(self) -> bool:
        """Read one snippet the schedule needs next (instead of sleeping)."""
        return self.feeder is not None and self.feeder.read_ahead()

    def _send_data(self, rank: int, msg: dict) -> None:
        """The copy ``msg``'s snippets go to ``rank`` right before it (the
        bytes it does not hold already)."""
        split = self.splits[msg["split"]]
        crc = split.snippets["checksum"][list(msg["snippets"])]
        self.pump.send_data(rank, self.scatter.packet(rank, msg, crc, self.feeder.fetch))
        msg["data"] = True

    def _bad_data(self, src: int, obj: dict) -> None:
        """``src`` found snippets of a copy damaged on arrival: it computed
        nothing; the copy is rejected (no strike: the bytes were corrupted
        in transit, not by the rank) and the task computed elsewhere."""
        self.scatter.report(src, obj.get("gen"))
        tid, ids = obj["task"], obj.get("snippets") or []
        host = self.hosts.get(src, obj.get("host", "?"))
        named = f"snippet{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
        self.stats["transit_errors"] = self.stats.get("transit_errors", 0) + 1
        self.rec.notice(f"rank {src} ({host}): {named} of task {tid} {obj.get('why', 'damaged')} ({TRANSIT}): "
                        "the copy is rejected and computed again")
        if self.sched.task(tid) is not None:
            self.sched.complete(src, tid, self.clock(), ok=False, strike=False,
                                reason=f"{TRANSIT}: {named} {obj.get('why', 'damaged')} at rank {src} ({host}); "
                                       "not computed, no strike")

    def drain_events(self) -> list[dict]:
        """Ledger records since the last call: the scheduler's, then (scatter)
        which snippets went to which rank."""
        events = self.sched.drain_events()
        if self.scatter is not None:
            events += self.scatter.drain_sent(self.state.step)
        return events

    def _say_backends(self) -> None:
        """One start-up line naming the ranks that compute on something else
        than the CPU (nothing when every rank is on the CPU)."""
        other = {r: b for r, b in sorted(self.backends.items()) if b != "cpu"}
        if not other:
            return
        by = {}
        for r, b in other.items():
            by.setdefault(b, []).append(r)
        cpu = len(self.backends) - len(other)
        parts = [f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} on {b}" for b, rs in by.items()]
        self.rec.notice("backends: " + "; ".join(parts) + (f"; {cpu} rank{'s' if cpu != 1 else ''} on the cpu"
                                                            if cpu else ""))

    def stop(self) -> bool:
        """Tell every worker to leave; True when all stop messages were delivered
        (what the workers still send meanwhile is received and dropped)."""
        msg = {"type": "stop", "peer_failed": bool(self.pump.dead), "interrupted": self.resumable_stop}
        return self.pump.stop(self.worker_ranks, msg, STOP_TIMEOUT_S, STOP_QUIET_S, self.clock)

    # -- messages -------------------------------------------------------------
    @property
    def dead(self) -> set[int]:
        """Processes MPI reported failed (fault-tolerant MPI)."""
        return self.pump.dead

    def _held_buffers(self):
        """Result buffers the step still holds (the pump does not reuse them)."""
        yield from self.step_sum.held()
        for held in self._held.values():
            yield from held.values()

    def _on_dead(self, rank: int) -> None:
        if rank == 0:
            raise ProtocolError("MPI reports the master itself as failed")
        # a rank below a collector is its collector's to handle
        self.sched.mark_dead(rank, self.clock(), "process failed (reported dead by MPI)")

    def writable_params(self) -> None:
        """Point the model at a parameter buffer no send is still reading."""
        if self.pump.writable_params():
            self.model.bind_params(self.pump.params_buf.params, copy=True)

    def new_version(self) -> None:
        """The parameters changed (an update, a rollback): they go out as a new
        version, and the copies of older versions still queued on workers
        and collectors are skipped there (``skipped``), not computed on them."""
        self.version += 1

    def send_params(self, only: int | None = None) -> None:
        """The current parameter version to ``only``, or to every live worker."""
        ranks = [only] if only is not None else self.sched.live_workers()
        self.pump.send_params([r for r in ranks if r != 0], self.version)

    def _poll(self, hello: set | None = None) -> list[tuple[int, ResultBuffer]]:
        """Match everything that has arrived; return completed results."""
        for msg, src, tag, nbytes in self.pump.arrivals():
            self.stats["messages"] += 1
            if hello is None and self.sched.is_lost(src):
                self._readmit(src, "answered again after it was given up on")
            if tag == TAG_RESULT:
                self.pump.receive_result(msg, src, nbytes)
            elif tag == TAG_CTRL:
                self._control(src, msg.recv(), hello)
            else:
                raise ProtocolError(f"unexpected message tag {tag} from rank {src}")
        return [(p.rank, p.buf) for p in self.pump.completed()]

    # -- signals -----------------------------------------------------------------
    #: set when a signal stopped training: the stop message tells the workers,
    #: and every rank exits with EXIT_RESUMABLE
    resumable_stop = False

    def _on_signal(self, signum, frame) -> None:
        if self.interrupted is None:
            self.interrupted = signum

    def _check_interrupt(self) -> None:
        """Told to stop (SIGUSR1 / SIGTERM, here or during start-up): the
        training loop writes a checkpoint of the last applied step, then stops."""
        from . import signals

        if self.interrupted is None:
            self.interrupted = signals.received
        if self.interrupted is None:
            return
        if self.sched.evaluating():
            return   # the epoch's evaluation first: its record belongs to the epoch the checkpoint is at
        raise StopRequested(self.interrupted)

    def _control(self, src: int, obj: dict, hello: set | None) -> None:
        kind = obj.get("type")
        if kind == "error":
            raise_remote(obj)
        elif kind == "ready":
            self.hosts.update(check_hello(obj, src, self.n, "the master"))
            self.backends.update(hello_backends(obj, src))
            self.sched.set_host(src, obj["host"])
            if hello is not None:
                hello.discard(src)
            elif obj.get("reattach"):
                self._adopt(src, obj)
        elif kind == "skipped":
            reason = None
            if obj.get("missing") is not None and self.scatter is not None:
                # its cache lacked snippets the master counted on: both start afresh
                self.scatter.report(src, obj.get("gen"))
                reason = f"snippets {obj['missing']} it was to hold were not in its cache: sent again"
            if self.sched.task(obj["task"]) is not None:
                self.sched.skipped(src, obj["task"], self.clock(), reason=reason)
        elif kind == "bad_data" and self.scatter is not None:
            self._bad_data(src, obj)
        elif kind == "notice":
            # a collector's note (e.g. a damaged packet within its group)
            if obj.get("transit"):
                self.stats["transit_errors"] = self.stats.get("transit_errors", 0) + 1
            self.rec.notice(str(obj.get("text", "")))
        elif kind == "convicted":
            self._convicted(src, obj)
        else:
            raise ProtocolError(f"unknown control message {kind!r} from rank {src}")

    # -- running a batch of tasks ---------------------------------------------
    def begin_step(self, step: int) -> None:
        """A new step starts: ranks the scheduler lets back in get the parameters."""
        for r in self.sched.begin_step(step, self.clock()):
            self.send_params(only=r)

    def new_tasks(self, groups, kind: str, split: str) -> list[Task]:
        """Tasks of the current step (or evaluation) over ``split``'s snippet ``groups``."""
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
                if task.version != self.version:
                    # a copy of an earlier version (a redundant copy of a
                    # finished step): its parameters are gone
                    self.sched.skipped(0, task.task_id, now)
                    continue
                buf = self.pump.result_buffer(ResultBuffer.nbytes_for(self.n if task.kind == GRAD else 0))
                self.runner.run(task.message(), buf)
                results = [(0, buf)]
            for rank, buf in results:
                self._take(rank, buf, open_ids, total)
            if results:
                self.backoff.busy()
            self._housekeeping(open_ids, total)
            if not results and not self._local:
                if not self._audit_next(race=not open_ids) and not self._read_ahead():
                    self._idle()
        while self._audit_next():
            pass
        self.step_sum.undo.clear()
        if tasks and tasks[0].kind == GRAD:
            self.sched.record_applied((t.task_id for t in tasks), self.state.step)
        self.sched.forget(t.task_id for t in tasks)
        if self.audit_rate > 0.0 and tasks and tasks[0].kind == GRAD:
            doubt = self.sched.distrusted_since()
            if doubt is not None:
                step, ranks = doubt
                raise RollBack(step, f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
                                     f"excluded: the results only they vouched for since step {step} are undone",
                               guilty=ranks)
        events = self.drain_events()
        self._tell_collectors(events)
        if tasks and tasks[0].kind == GRAD:
            step = self.state.step
            mine = [e for e in events if e.get(EV) == COPY and e["state"] == ACCEPTED and e["step"] == step]
            total["accepted_copies"] = len(mine)
            total["snippets"] = sum(len(e["snippets"]) for e in mine)
        self.rec.ledger(events, self.hosts)
        return total

    def roll_back(self, rb: RollBack) -> None:
        """Training went back to :attr:`state` (already restored): drop the
        open tasks and held results, move the parameter version on (workers
        skip the tasks they still hold) and record the scheduler's events."""
        self.sched.rollback(self.state.step, self.clock(), reason=f"rolled back: {rb.reason}")
        self._held.clear()
        self._local.clear()
        self._nonfinite.clear()
        self.step_sum.reset()
        self.audit_step = self.state.step if rb.audit_step else None
        self.new_version()
        self.stats["rollbacks"] = self.stats.get("rollbacks", 0) + 1
        events = self.drain_events()
        self._tell_collectors(events)
        self.rec.ledger(events, self.hosts)

    def _convicted(self, src: int, obj: dict) -> None:
        """A collector's answer to "wrong": the workers of its group it
        proved wrong (a rank of them that has re-attached to the master since
        is excluded here too).  None of them, and every part checked against
        its whole fingerprint, while the master's own computation proved the
        sum wrong: the collector's sum itself is wrong, and the collector is
        excluded (its group is released, :meth:`_release_groups`)."""
        ranks = [int(r) for r in obj.get("ranks") or []]
        task = obj["task"]
        proven = (src, task) in self._proven
        self._proven.discard((src, task))
        now = self.clock()
        if ranks:
            them = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
            self.sched.pardon(src, now, f"collector {src} proved {them} of its group wrong (task {task}) and "
                                        f"excluded {'them' if len(ranks) > 1 else 'it'}")
            self.rec.notice(f"collector {src} excluded {them}: proven wrong by its recomputation")
            for r in ranks:
                self.rec.member(r, LEDGER_EXCLUDE)
            for r in ranks:
                if self.sched.is_worker(r) and self.sched.status(r) != EXCLUDED:
                    self.sched.convict(r, now, f"collector {src}'s recomputation proved its part of task {task} "
                                               "wrong (it re-attached to the master since)")
        elif proven and obj.get("checked") and obj.get("full") and self.sched.status(src) != EXCLUDED:
            self.sched.convict(src, now, f"its sum for task {task} disagreed with the master's computation, while "
                                         "its own recomputation found every part from its group right")
            self._release_groups()

    def _release_groups(self) -> None:
        """Collectors the master gives no more work to (excluded, or drained
        with nothing left out) release their groups: told so, each passes it
        on to its children, which re-attach to the master (:meth:`_adopt`) as
        when their collector fails.  Readmitted, such a rank is a worker of
        its own."""
        for r, why in self.keeper.to_release(self.collectors):
            self.collectors.discard(r)
            self.pump.send_ctrl(r, {"type": "release", "why": why})
            self.rec.notice(f"collector {r} ({self.hosts.get(r, '?')}) {why}: its group re-attaches to the master")

    def _tell_collectors(self, events: list[dict], guilty=(), task_id: int | None = None) -> None:
        """A collector's result was rejected (outvoted, arbitrated, failed an
        audit): it finds and names the wrong worker of its group (while it
        still holds the parameters: this goes out before the next version)."""
        if not self.collectors:
            return
        wrong = {(e["rank"], e["task"]) for e in events
                 if e.get(EV) == COPY and e.get("state") == REJECTED and e.get("kind") == GRAD
                 and e.get("rank") in self.collectors}
        wrong.update((r, task_id) for r in guilty if r in self.collectors)
        for rank, tid in sorted(wrong):
            self.pump.send_ctrl(rank, {"type": "wrong", "task": tid})

    def _send_tasks(self, assignments) -> None:
        for rank, task in assignments:
            if rank == 0:
                self._local.append(task)
            else:
                msg = task.message()
                msg["type"] = "task"
                if rank in self.collectors and self.sched.compared(task):
                    msg["compared"] = True   # its collector fingerprints every part (see collector.py)
                if self.scatter is not None:
                    self._send_data(rank, msg)
                self.pump.send_ctrl(rank, msg)

    # -- Proof-of-Calculation: stragglers, hung workers, arbitration, drain ---------
    def _housekeeping(self, open_ids: set, total: dict) -> None:
        backups = self.keeper.tick(self.clock())
        if backups is None:
            return
        self._send_tasks(backups)
        self._release_groups()
        for task in self.sched.stuck():
            self._arbitrate(task, open_ids, total)

    def _adopt(self, rank: int, obj: dict) -> None:
        """A rank whose collector failed, or released its group (excluded or
        drained), attaches to this master."""
        why = obj.get("why") or "its collector failed"
        if rank not in self.worker_ranks:
            self.worker_ranks.append(rank)
        members = obj.get("members") or {}
        if len(members) > 1:
            self.collectors.add(rank)
            self.sched.set_slots(rank, len(members) - 1)
        self.sched.add_worker(rank, self.clock(), f"re-attached: {why}")
        if self.scatter is not None:
            self.scatter.reset(rank)   # it emptied its cache before saying hello again
        self.keeper.joined()
        self.rec.notice(f"rank {rank} ({obj['host']}) re-attached to the master: {why}")
        self.send_params(only=rank)

    def _remove(self, rank: int, reason: str) -> None:
        self.sched.remove_worker(rank, self.clock(), reason)

    def _readmit(self, rank: int, reason: str) -> None:
        self.sched.add_worker(rank, self.clock(), reason)
        self.send_params(only=rank)

    def _fp_seed(self, task: Task) -> int:
        return fp_seed(self.cfg["train"]["seed"], task.step)

    def _arbitrate(self, task: Task, open_ids: set, total: dict) -> None:
        """No quorum can form for ``task``: the master computes it itself."""
        if task.kind != GRAD or task.version != self.version or task.step != self.state.step:
            return   # its parameters are gone (a later step, a rollback): the dispute stays on record
        buf = self.pump.result_buffer(ResultBuffer.nbytes_for(self.n))
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
        before = self.sched.rejected(task.task_id)
        apply = self.sched.arbitrate(task.task_id, fp, self.clock(), replace=wrong is not None)
        # a collector's sum the master's computation proved wrong: if its
        # recomputation finds every part right, the sum itself is (_convicted)
        self._proven.update((r, task.task_id) for r in self.sched.rejected(task.task_id) - before
                            if r in self.collectors)
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
        of a suspect step (:attr:`audit_step`) is.  The draw comes from the
        operating system's randomness, so no worker can tell which of its
        results will be checked."""
        if self.audit_step == task.step:
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
        buf = self.pump.result_buffer(ResultBuffer.nbytes_for(self.n))
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
        self._tell_collectors([], guilty=v.guilty, task_id=v.task_id)
        to = self.state.step if v.rollback_to is None else min(v.rollback_to, self.state.step)
        raise RollBack(to, f"an audit of task {v.task_id} proved rank{'s' if len(v.guilty) > 1 else ''} "
                           f"{', '.join(map(str, v.guilty))} wrong at step {self.state.step}", guilty=v.guilty)

    def _idle(self) -> None:
        """Nothing arrived: sleep until a result is due, else back off.

        Sleeping through the predictable part of the wait leaves the CPU to
        the workers (on a node the master shares with them, that is their
        compute time) and costs no latency at the arrival itself.
        """
        self.pump.idle(self.sched.next_expected(), self.clock())

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
        self._learn_wait()
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

    def _learn_wait(self) -> None:
        """Bound the idle sleep by a fraction of how long results take to
        arrive (assignment to arrival): a worker that sleeps, or waits on its
        network, reports little compute but still keeps the master waiting."""
        lat = self.sched.last_latency_s
        if lat is not None:
            self._wait_s = lat if self._wait_s is None else 0.9 * self._wait_s + 0.1 * lat
            self.backoff.cap_for(self._wait_s)

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
        if task is not None and task.kind == GRAD:
            if self.sched.is_open(task):
                self._arbitrate(task, open_ids, total)
            if self.sched.is_done(task):
                return    # a finite result of the task stands: those ranks are wrong, not the model
        raise TrainingDiverged(
            f"training diverged at step {self.state.step}: the loss or gradients are NaN/inf on "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, sorted(ranks)))}; "
            "lower [optimizer] lr or check the data")
