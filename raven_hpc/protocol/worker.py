"""Worker ranks: receive the model spec once and parameter versions as they
come, compute the tasks they are given, send back gradient sums.

A worker talks to its *parent*: rank 0, or the gradient collector of its
group (:mod:`raven_hpc.protocol.topology`), which looks the same to it.
The loop reads the parent's messages in the order they were sent (one
``Improbe`` on any tag from the parent), so a parameter version always
arrives before the tasks that need it.  Versions change with every update
and rollback: a queued task of an older version than the parameters held
(a redundant copy of a finished step, prefetch) is skipped, never computed
on parameters that are not its own.

A worker changes parent in two ways, both to the nearest live ancestor:
when MPI reports its collector's process failed, and when its collector,
excluded or drained by its own parent, releases its group (a ``reattach``
message naming the ancestors).  Either way the tasks it held are dropped
and it says hello again, with the reason, to the new parent, which sends
parameters, then tasks.

With ``data.delivery = "scatter"`` a worker never opens ``data.path``: each
task comes right after a packet of its snippets' stored bytes (``TAG_DATA``,
:mod:`raven_hpc.data.packet`).  It checks every snippet's checksum on
arrival (:class:`~raven_hpc.protocol.scatter.Inbox`), keeps what it was
sent within ``cluster.worker_cache_mb`` (its parent leaves out the bytes it
still holds), and computes from them exactly as from the file.  Snippets
that fail their checksum are named to the parent (``bad_data``); the task
is not computed.  A new parent means an empty cache.
"""
from __future__ import annotations

import os
import time
from collections import deque

import numpy as np

from ..errors import ProtocolError
from .messages import KIND_EVAL, KIND_GRAD, TAG_CTRL, TAG_DATA, TAG_PARAMS, TAG_RESULT, ParamsBuffer, ResultBuffer
from . import signals
from .faults import FaultInjector
from .transport import Backoff, Outbox, hostname, send_error

__all__ = ["TaskRunner", "run_worker", "await_stop"]


class TaskRunner:
    """Computes one task on a model and fills a :class:`ResultBuffer`.

    Shared by worker ranks and by the master when it trains alone, so both
    compute exactly the same thing.
    """

    def __init__(self, model, splits: dict):
        self.model = model
        self.splits = splits

    def warm_up(self, split: str, out: ResultBuffer, info=None) -> None:
        """Compute one snippet's gradient and evaluation once, so kernels are
        compiled (or loaded from cache) before the first timed task.  A rank
        that is sent its data (``info``: the dataset's description) warms up
        on zeros of a snippet's shape."""
        params = self.model.params.copy()
        data = None
        if info is not None:
            from ..data.packet import TaskData

            c = int(info.counts(split)[0])
            data = TaskData(info, split, {0: (np.zeros((c,) + tuple(info.feature_shape), info.stored),
                                              np.zeros(c, np.int64))})
        for kind in ("grad", "eval"):
            self.run({"task": 0, "step": -1, "kind": kind, "split": split, "version": -1, "snippets": [0],
                      "_data": data}, out if kind == "grad" else ResultBuffer(0))
        self.model.params[:] = params

    def _split(self, task: dict):
        """Where the task's snippets are read from: the data sent with it
        (``_data``, scatter), else the split this rank opened."""
        split = task.get("_data") or self.splits.get(task["split"])
        if split is None:
            raise ProtocolError(f"task {task['task']} names split {task['split']!r}, which this rank has not opened")
        return split

    def run(self, task: dict, out: ResultBuffer) -> None:
        split = self._split(task)
        t0 = time.perf_counter()
        x, y = split.read_snippets(task["snippets"])
        if task["kind"] == "eval":
            loss_sum, correct = self.model.evaluate(x, y)
            kind = KIND_EVAL
        else:
            # The gradient is written straight into the send buffer (no copy).
            self.model.bind_grads(out.grad)
            # dropout masks are drawn per snippet from (step, snippet id): the
            # same on whichever rank computes it, in whatever chunk, and after
            # a resume
            ids = [int(s) for s in task["snippets"]]
            counts = split.snippets["count"][ids] if ids else []
            segments = list(zip(ids, (int(c) for c in counts)))
            loss_sum, correct = self.model.loss_and_grad(x, y, accumulate=False, key=(max(int(task["step"]), 0),),
                                                         segments=segments)
            kind = KIND_GRAD
        out.set(kind=kind, step=task["step"], task=task["task"], version=task["version"],
                samples=len(y), loss_sum=loss_sum, correct=correct,
                compute_s=time.perf_counter() - t0, finite=float(np.isfinite(loss_sum)))

    def emulate(self, task: dict, out: ResultBuffer, faults) -> bool:
        """Fill ``out`` with the fault injector's emulated result of gradient
        task ``task`` (an ``emulate`` rule, for benchmarks) instead of
        computing it; False when no such rule fires."""
        split = task.get("_data") or self.splits.get(task["split"])
        if not faults.emulating or split is None:
            return False
        ids = [int(s) for s in task["snippets"]]
        counts = split.snippets["count"][ids] if ids else []
        got = faults.emulate(task["step"], task["task"], ids, counts, out.grad)
        if got is None:
            return False
        out.set(kind=KIND_GRAD, step=task["step"], task=task["task"], version=task["version"], finite=1.0, **got)
        return True


def open_splits(cfg: dict):
    """Open the dataset and the splits this run uses (cached if configured)."""
    from ..data import open_dataset

    ds = open_dataset(cfg["data"]["path"])
    splits = {}
    for key in ("train_split", "test_split"):
        name = cfg["data"][key]
        if name:
            s = ds.split(name)
            if cfg["data"]["cache"]:
                s.cache_all()
            splits[name] = s
    return ds, splits


def run_worker(comm, cfg: dict, ancestors=(0,)) -> None:
    """The worker's whole life.  Exceptions are sent to the master, then re-raised.

    ``ancestors``: its parent first, then the parent's parent ... up to rank
    0.  When the parent's process fails (fault-tolerant MPI), the worker
    attaches to the nearest live ancestor and goes on."""
    ancestors = list(ancestors)
    try:
        _worker_loop(comm, cfg, ancestors)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the master
        send_error(comm, exc)
        exc.parent = ancestors[0]   # the rank whose stop it then waits for
        raise


def _reattach(comm, exc, ancestors: list, dead: set) -> bool:
    """An MPI call failed: if the parent's process died, make the nearest
    live ancestor the parent (``ancestors`` is changed in place).  False when
    this is not a parent failure (the caller re-raises)."""
    from .pump import failed_ranks

    failed = failed_ranks(comm, exc)
    if failed is None:
        return False
    dead.update(failed)
    from . import transport

    transport.peer_failed = True
    while ancestors and ancestors[0] in dead:
        if ancestors[0] == 0:
            raise ProtocolError("the master (rank 0) failed")
        ancestors.pop(0)
    return True


def _worker_loop(comm, cfg: dict, ancestors: list) -> None:
    from mpi4py import MPI

    # SIGUSR1 / SIGTERM (Slurm's warning before a time limit, scancel) are the
    # master's cue to checkpoint and stop; a worker keeps working until the
    # master's stop message comes (see signals.py).
    signals.install_worker()

    from ..engine import build_model

    rank = comm.Get_rank()
    cl = cfg["cluster"]
    backoff = Backoff(cl["poll_min_us"] * 1e-6, cl["poll_max_us"] * 1e-6)
    outbox = Outbox()

    inbox = None
    if cfg["data"]["delivery"] == "scatter":
        # it never opens data.path: every task comes with its snippets
        from .scatter import MIB, Inbox, dataset_info

        info = dataset_info(cfg)
        inbox = Inbox(info, int(cl["worker_cache_mb"] * MIB))
        splits, shape, classes = {}, info.feature_shape, info.num_classes
    else:
        info = None
        ds, splits = open_splits(cfg)
        shape, classes = ds.feature_shape, ds.num_classes
    model = build_model(cfg["model"], tuple(shape), int(classes), backend=cl["backend"])
    runner = TaskRunner(model, splits)
    faults = FaultInjector(cfg["faults"]["rules"], rank)
    pbuf = ParamsBuffer(model.num_params)
    model.bind_params(pbuf.params)   # parameters are received straight into the model
    grad_bufs = [ResultBuffer(model.num_params) for _ in range(cl["prefetch"] + 1)]
    eval_bufs = [ResultBuffer(0) for _ in range(cl["prefetch"] + 1)]
    runner.warm_up(cfg["data"]["train_split"], grad_bufs[-1], info)
    packet = None   # the last snippet packet: it belongs to the task message that follows it
    t_sent = 0.0   # when the last result left: the next task's wait starts there
    version = -1
    queue: deque = deque()
    status = MPI.Status()
    dead: set = set()
    hello = {"type": "ready", "rank": rank, "host": hostname(), "pid": os.getpid(), "num_params": model.num_params,
             "backend": model.backend.label()}
    parent = ancestors[0]
    outbox.add(comm.isend(hello, dest=parent, tag=TAG_CTRL))
    while True:
        # 1. Read everything the parent sent, in order.
        progressed = False
        while True:
            try:
                msg = comm.improbe(source=parent, tag=MPI.ANY_TAG, status=status)
                if msg is not None:
                    tag = status.Get_tag()
                    if tag == TAG_PARAMS:
                        msg.Recv([pbuf.raw, MPI.BYTE])
                        version = pbuf.version
                    elif tag == TAG_CTRL:
                        obj = msg.recv()
                    elif tag == TAG_DATA:
                        packet = np.empty(status.Get_count(MPI.BYTE), np.uint8)
                        msg.Recv([packet, MPI.BYTE])
            except MPI.Exception as exc:
                if not _reattach(comm, exc, ancestors, dead):
                    raise
                if ancestors[0] != parent:
                    # its collector failed: the tasks it gave are gone (and
                    # the parameters it was sending may be torn); the new
                    # parent sends parameters, then tasks
                    parent = ancestors[0]
                    queue.clear()
                    version = -1
                    packet = None
                    if inbox is not None:
                        inbox.reset()   # the new parent knows nothing of its cache
                    outbox.add(comm.isend(dict(hello, reattach=True), dest=parent, tag=TAG_CTRL))
                continue
            if msg is None:
                break
            progressed = True
            if tag in (TAG_PARAMS, TAG_DATA):
                pass
            elif tag == TAG_CTRL:
                if obj["type"] == "task":
                    if obj.get("data"):
                        obj = _delivered(obj, packet, inbox, faults, comm, outbox, parent, rank)
                        packet = None
                    if obj is not None:
                        queue.append(obj)
                elif obj["type"] == "reattach":
                    # its collector released its group: its tasks are gone
                    ancestors[:] = [int(r) for r in obj["ancestors"]]
                    while len(ancestors) > 1 and ancestors[0] in dead:
                        ancestors.pop(0)
                    parent = ancestors[0]
                    queue.clear()
                    version = -1
                    packet = None
                    if inbox is not None:
                        inbox.reset()
                    outbox.add(comm.isend(dict(hello, reattach=True, why=obj.get("why")), dest=parent, tag=TAG_CTRL))
                elif obj["type"] == "stop":
                    signals.stop_received(bool(obj.get("interrupted")))
                    if obj.get("peer_failed"):
                        from . import transport

                        transport.peer_failed = True
                    outbox.flush(backoff, timeout_s=30.0)
                    return
                else:
                    raise ProtocolError(f"rank {rank}: unknown control message {obj['type']!r}")
            else:
                raise ProtocolError(f"rank {rank}: unexpected message tag {tag} from the master")
        outbox.progress()
        # 2. Compute the oldest task whose parameters are here.
        if queue and queue[0]["version"] <= version:
            task = queue.popleft()
            if task["version"] < version:
                # Its parameters are gone (replaced by a later step's update
                # or a rollback): computing it on these would be a wrong
                # result, so the parent hears it was skipped.
                outbox.add(comm.isend({"type": "skipped", "task": task["task"]}, dest=parent, tag=TAG_CTRL))
                continue
            pool = eval_bufs if task["kind"] == "eval" else grad_bufs
            buf = next((b for b in pool if not outbox.holds(b)), None)
            while buf is None:  # every buffer still in flight: wait for one
                backoff.idle()
                outbox.progress()
                buf = next((b for b in pool if not outbox.holds(b)), None)
            t_start = time.perf_counter()
            if faults.active and task["kind"] == "grad":
                faults.before(task["step"], task["task"])
                if not runner.emulate(task, buf, faults):
                    runner.run(task, buf)
                extra = faults.after(task["step"], task["task"], buf.get("compute_s"))
                buf.set(compute_s=buf.get("compute_s") + extra)
                faults.corrupt(task["step"], task["task"], buf.grad)
            else:
                runner.run(task, buf)
            buf.set(recv_wait_s=t_start - t_sent if t_sent else 0.0)
            outbox.add(comm.Isend([buf.raw, MPI.BYTE], dest=parent, tag=TAG_RESULT), buf)
            t_sent = time.perf_counter()
            backoff.busy()
            backoff.cap_for(buf.get("compute_s"))
        elif progressed:
            backoff.busy()
        elif outbox.transferring():
            backoff.transfer()
        else:
            backoff.idle()


def _delivered(task: dict, packet, inbox, faults, comm, outbox, parent: int, rank: int) -> dict | None:
    """A task whose snippets came in ``packet`` (the message before it):
    check them on arrival.  Returns the task with its data (``_data``), or
    None when it cannot be computed -- snippets that fail their checksum
    (named to the parent, which has the copy computed elsewhere) or that the
    parent believed cached here (the parent sends them again)."""
    if inbox is None or packet is None:
        raise ProtocolError(f"rank {rank}: task {task['task']} says its snippets came with it, but "
                            + ("this rank reads the file itself" if inbox is None else "no snippets came"))
    if faults.active and task["kind"] == "grad":
        from ..data.packet import PacketError, PacketView

        try:
            payload = PacketView(packet, inbox.info).payload
        except PacketError:
            payload = None
        if payload is not None:
            faults.transit(task["step"], task["task"], payload)
    got = inbox.receive(packet, task)
    if got.ok:
        task["_data"] = got.data
        return task
    if got.bad:
        msg = {"type": "bad_data", "task": task["task"], "snippets": got.bad, "why": got.reason, "gen": got.gen,
               "rank": rank, "host": hostname()}
    else:
        msg = {"type": "skipped", "task": task["task"], "missing": got.missing, "gen": got.gen}
    outbox.add(comm.isend(msg, dest=parent, tag=TAG_CTRL))
    return None


def await_stop(comm, timeout_s: float = 60.0, parent: int = 0) -> bool:
    """After a worker failed: discard its parent's messages until it says stop.

    Keeps the failed rank alive (and polite to MPI) while the master reports
    the error and stops the others; True if the stop came in time.
    """
    from mpi4py import MPI

    backoff = Backoff(1e-4, 5e-3)
    status = MPI.Status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = comm.improbe(source=parent, tag=MPI.ANY_TAG, status=status)
        if msg is None:
            backoff.idle()
            continue
        backoff.busy()
        if status.Get_tag() == TAG_CTRL:
            if msg.recv().get("type") == "stop":
                return True
        else:
            msg.Recv([np.empty(status.Get_count(MPI.BYTE), np.uint8), MPI.BYTE])
    return False
